/* Test server: answers every TCP connection and every UDP datagram on PORT with NAME.
 * UDP replies leave from the address the datagram was sent to (IP(V6)_PKTINFO), like a
 * proper anycast service. Usage: whoami NAME PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int listener(int af, int type, int port)
{
    int fd = socket(af, type, 0), one = 1;
    if (fd < 0) {
        perror("socket");
        exit(1);
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_storage ss = {0};
    socklen_t len;
    if (af == AF_INET6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        len = sizeof *a;
        if (type == SOCK_DGRAM)
            setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        len = sizeof *a;
        if (type == SOCK_DGRAM)
            setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 ||
        (type == SOCK_STREAM && listen(fd, 4096) != 0)) {
        perror("bind/listen");
        exit(1);
    }
    return fd;
}

static void answer_udp(int fd, const char *name)
{
    char buf[2048], cbuf[256];
    struct sockaddr_storage from;
    struct iovec iov = {buf, sizeof buf};
    struct msghdr m = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov,
                       .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    if (recvmsg(fd, &m, 0) < 0)
        return;
    /* Reply from the destination address: keep only the pktinfo control message. */
    char out_cbuf[256] = {0};
    struct msghdr r = {.msg_name = &from, .msg_namelen = m.msg_namelen};
    struct iovec riov = {(void *)name, strlen(name)};
    r.msg_iov = &riov;
    r.msg_iovlen = 1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if ((c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) ||
            (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO)) {
            memcpy(out_cbuf, c, c->cmsg_len);
            if (c->cmsg_level == IPPROTO_IP) {
                struct in_pktinfo *pi = (struct in_pktinfo *)CMSG_DATA((struct cmsghdr *)out_cbuf);
                pi->ipi_spec_dst = pi->ipi_addr;
                pi->ipi_ifindex = 0;
            } else {
                struct in6_pktinfo *pi = (struct in6_pktinfo *)CMSG_DATA((struct cmsghdr *)out_cbuf);
                pi->ipi6_ifindex = 0;
            }
            r.msg_control = out_cbuf;
            r.msg_controllen = CMSG_SPACE(c->cmsg_len - CMSG_LEN(0));
            break;
        }
    }
    sendmsg(fd, &r, 0);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: whoami NAME PORT\n");
        return 2;
    }
    const char *name = argv[1];
    int port = atoi(argv[2]);
    struct pollfd fds[4] = {
        {listener(AF_INET6, SOCK_STREAM, port), POLLIN, 0},
        {listener(AF_INET, SOCK_STREAM, port), POLLIN, 0},
        {listener(AF_INET6, SOCK_DGRAM, port), POLLIN, 0},
        {listener(AF_INET, SOCK_DGRAM, port), POLLIN, 0},
    };
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        if (poll(fds, 4, -1) < 0 && errno != EINTR)
            return 1;
        for (int i = 0; i < 2; i++)
            if (fds[i].revents & POLLIN) {
                int c = accept(fds[i].fd, NULL, NULL);
                if (c >= 0) {
                    if (write(c, name, strlen(name)) < 0) {
                    }
                    close(c);
                }
            }
        for (int i = 2; i < 4; i++)
            if (fds[i].revents & POLLIN)
                answer_udp(fds[i].fd, name);
    }
}
