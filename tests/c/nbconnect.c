/* Non-blocking connect through libaarp.so, the way curl does it, and errno preservation.
 *   nbconnect ADDR PORT EXPECT CLOSED_PORT */
#include "common.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/time.h>

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: nbconnect ADDR PORT EXPECT CLOSED_PORT\n");
        return 2;
    }
    struct sockaddr_storage ss, peer;
    char want[64], got[64];
    canonical(argv[1], want, sizeof want);

    /* 1. non-blocking: EINPROGRESS, then poll, SO_ERROR, getpeername, the server's name */
    socklen_t len = parse_sockaddr(argv[1], atoi(argv[2]), &ss);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    CHECK(fd >= 0, "socket: %s", strerror(errno));
    errno = 0;
    int rc = connect(fd, (struct sockaddr *)&ss, len);
    CHECK(rc == -1 && errno == EINPROGRESS, "non-blocking connect: rc=%d errno=%s", rc,
          strerror(errno));
    struct pollfd p = {fd, POLLOUT, 0};
    CHECK(poll(&p, 1, 5000) == 1, "connect did not complete");
    int err = -1;
    socklen_t elen = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
    CHECK(err == 0, "SO_ERROR %s", strerror(err));
    socklen_t plen = sizeof peer;
    CHECK(getpeername(fd, (struct sockaddr *)&peer, &plen) == 0, "getpeername");
    CHECK(strcmp(sockaddr_text(&peer, got, sizeof got), want) == 0, "peer %s, want %s", got, want);
    p.events = POLLIN;
    CHECK(poll(&p, 1, 5000) == 1, "no data");
    char name[64] = {0};
    CHECK(read(fd, name, sizeof name - 1) > 0 && strcmp(name, argv[3]) == 0, "server '%s'", name);
    close(fd);

    /* 2. a blocking connect that succeeds leaves errno alone */
    fd = socket(ss.ss_family, SOCK_STREAM, 0);
    errno = EBADMSG;
    CHECK(connect(fd, (struct sockaddr *)&ss, len) == 0, "blocking connect: %s", strerror(errno));
    CHECK(errno == EBADMSG, "errno changed to %s by a successful connect", strerror(errno));
    close(fd);

    /* 3. a refused connect reports ECONNREFUSED, not something of ours */
    len = parse_sockaddr(argv[1], atoi(argv[4]), &ss);
    fd = socket(ss.ss_family, SOCK_STREAM, 0);
    errno = 0;
    rc = connect(fd, (struct sockaddr *)&ss, len);
    CHECK(rc == -1 && errno == ECONNREFUSED, "closed port: rc=%d errno=%s", rc, strerror(errno));
    close(fd);

    /* 4. odd lengths pass through to the kernel, which judges them */
    fd = socket(ss.ss_family, SOCK_STREAM, 0);
    errno = 0;
    rc = connect(fd, (struct sockaddr *)&ss, 3);
    CHECK(rc == -1 && errno == EINVAL, "short sockaddr: rc=%d errno=%s", rc, strerror(errno));
    close(fd);
    /* 5. a 24-byte IPv6 sockaddr (RFC 2133, no scope id) is pinned like a full one */
    len = parse_sockaddr(argv[1], atoi(argv[2]), &ss);
    if (ss.ss_family == AF_INET6 && memcmp(((struct sockaddr_in6 *)&ss)->sin6_addr.s6_addr,
                                           "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) != 0) {
        fd = socket(AF_INET6, SOCK_STREAM, 0);
        struct timeval tv = {3, 0}; /* unpinned kernel anycast would hang: bound it */
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        CHECK(connect(fd, (struct sockaddr *)&ss, 24) == 0, "24-byte sockaddr: %s",
              strerror(errno));
        memset(name, 0, sizeof name);
        CHECK(read(fd, name, sizeof name - 1) > 0 && strcmp(name, argv[3]) == 0,
              "24-byte sockaddr: server '%s'", name);
        close(fd);
    }
    printf("ok\n");
    return 0;
}
