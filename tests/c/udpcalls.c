/* Every datagram call libaarp.so hooks, against a server that answers with its name:
 * the reply's source must read ADDR again (mapped back from the server's unicast address).
 *   udpcalls ADDR PORT EXPECT */
#include "common.h"

#include <poll.h>

static const char *g_want, *g_expect;

static void wait_readable(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    CHECK(poll(&p, 1, 5000) == 1, "no reply within 5 s");
}

static void check_reply(const char *call, const struct sockaddr_storage *from, socklen_t flen,
                        const char *buf, ssize_t n)
{
    char got[64];
    CHECK(n > 0 && (size_t)n == strlen(g_expect) && memcmp(buf, g_expect, (size_t)n) == 0,
          "%s: reply '%.*s', want '%s'", call, (int)(n > 0 ? n : 0), buf, g_expect);
    CHECK(flen > 0 && strcmp(sockaddr_text(from, got, sizeof got), g_want) == 0,
          "%s: reply from %s, want %s", call, got, g_want);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: udpcalls ADDR PORT EXPECT\n");
        return 2;
    }
    char want[64], buf[256];
    g_want = canonical(argv[1], want, sizeof want);
    g_expect = argv[3];
    struct sockaddr_storage to, orig, from;
    socklen_t tlen = parse_sockaddr(argv[1], atoi(argv[2]), &to), flen;
    orig = to;

    /* sendto / recvfrom */
    int fd = socket(to.ss_family, SOCK_DGRAM, 0);
    CHECK(sendto(fd, "q", 1, 0, (struct sockaddr *)&to, tlen) == 1, "sendto: %s", strerror(errno));
    wait_readable(fd);
    flen = sizeof from;
    ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen);
    check_reply("recvfrom", &from, flen, buf, n);
    close(fd);

    /* sendmsg / recvmsg; the caller's msghdr and sockaddr stay as they were */
    fd = socket(to.ss_family, SOCK_DGRAM, 0);
    struct iovec iov = {"q", 1};
    struct msghdr m = {.msg_name = &to, .msg_namelen = tlen, .msg_iov = &iov, .msg_iovlen = 1};
    CHECK(sendmsg(fd, &m, 0) == 1, "sendmsg: %s", strerror(errno));
    CHECK(m.msg_name == &to && memcmp(&to, &orig, tlen) == 0, "sendmsg changed the caller's msghdr");
    wait_readable(fd);
    struct iovec riov = {buf, sizeof buf};
    struct msghdr r = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &riov,
                       .msg_iovlen = 1};
    n = recvmsg(fd, &r, 0);
    check_reply("recvmsg", &from, r.msg_namelen, buf, n);
    close(fd);

    /* sendmmsg / recvmmsg, two datagrams each */
    fd = socket(to.ss_family, SOCK_DGRAM, 0);
    struct mmsghdr out[2] = {0}, in[2] = {0};
    struct sockaddr_storage froms[2];
    char bufs[2][256];
    struct iovec oiov[2] = {{"a", 1}, {"b", 1}}, iiov[2] = {{bufs[0], 256}, {bufs[1], 256}};
    for (int i = 0; i < 2; i++) {
        out[i].msg_hdr = (struct msghdr){.msg_name = &to, .msg_namelen = tlen,
                                         .msg_iov = &oiov[i], .msg_iovlen = 1};
        in[i].msg_hdr = (struct msghdr){.msg_name = &froms[i], .msg_namelen = sizeof froms[i],
                                        .msg_iov = &iiov[i], .msg_iovlen = 1};
    }
    CHECK(sendmmsg(fd, out, 2, 0) == 2, "sendmmsg: %s", strerror(errno));
    CHECK(out[0].msg_len == 1 && out[1].msg_len == 1, "sendmmsg msg_len not reported");
    CHECK(out[0].msg_hdr.msg_name == &to && memcmp(&to, &orig, tlen) == 0,
          "sendmmsg changed the caller's vector");
    int got = 0;
    while (got < 2) {
        wait_readable(fd);
        int k = recvmmsg(fd, in + got, (unsigned)(2 - got), MSG_DONTWAIT, NULL);
        CHECK(k > 0, "recvmmsg: %s", strerror(errno));
        for (int i = got; i < got + k; i++)
            check_reply("recvmmsg", &froms[i], in[i].msg_hdr.msg_namelen, bufs[i],
                        (ssize_t)in[i].msg_len);
        got += k;
    }
    close(fd);

    /* connected UDP: send/recv, getpeername, recvfrom's source */
    fd = socket(to.ss_family, SOCK_DGRAM, 0);
    CHECK(connect(fd, (struct sockaddr *)&to, tlen) == 0, "connect: %s", strerror(errno));
    flen = sizeof from;
    CHECK(getpeername(fd, (struct sockaddr *)&from, &flen) == 0, "getpeername");
    char text[64];
    CHECK(strcmp(sockaddr_text(&from, text, sizeof text), g_want) == 0, "getpeername %s", text);
    CHECK(send(fd, "q", 1, 0) == 1, "send: %s", strerror(errno));
    wait_readable(fd);
    flen = sizeof from;
    n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen);
    check_reply("connected recvfrom", &from, flen, buf, n);
    /* a too-small address buffer: truncated by the kernel, left alone by us, no overflow */
    CHECK(send(fd, "q", 1, 0) == 1, "send: %s", strerror(errno));
    wait_readable(fd);
    struct {
        struct sockaddr_in6 small;
        char guard[64];
    } t;
    memset(&t, 0x5a, sizeof t);
    flen = 8;
    n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&t.small, &flen);
    CHECK(n > 0, "recvfrom with a short buffer");
    for (size_t i = 8; i < sizeof t.small; i++)
        CHECK(((unsigned char *)&t.small)[i] == 0x5a, "wrote past the caller's address length");
    close(fd);
    printf("ok\n");
    return 0;
}
