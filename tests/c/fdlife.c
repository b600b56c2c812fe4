/* Per-socket state follows the descriptors: dup2/dup3 copy it, close and close_range drop it,
 * so a new socket that reuses the number never sees another one's mapping.
 *   fdlife ADDR PORT EXPECT UA     (UA: the unicast address ADDR is pinned to) */
#include "common.h"

#include <fcntl.h>
#include <poll.h>
#include <linux/close_range.h>

static const char *g_addr, *g_expect, *g_ua;
static int g_port;

static int tcp_to(const char *addr, char *name, size_t n)
{
    struct sockaddr_storage ss;
    socklen_t len = parse_sockaddr(addr, g_port, &ss);
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    CHECK(connect(fd, (struct sockaddr *)&ss, len) == 0, "connect %s: %s", addr, strerror(errno));
    memset(name, 0, n);
    CHECK(read(fd, name, n - 1) > 0, "read");
    return fd;
}

static void peer_is(int fd, const char *want_addr)
{
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    char want[64], got[64];
    CHECK(getpeername(fd, (struct sockaddr *)&peer, &plen) == 0, "getpeername(%d): %s", fd,
          strerror(errno));
    CHECK(strcmp(sockaddr_text(&peer, got, sizeof got), canonical(want_addr, want, sizeof want)) == 0,
          "fd %d: peer %s, want %s", fd, got, want);
}

/* A fresh UDP socket talks to UA directly: its replies must read UA, not ADDR. */
static int udp_to_ua_reads_ua(void)
{
    struct sockaddr_storage ss, from;
    socklen_t len = parse_sockaddr(g_ua, g_port, &ss), flen = sizeof from;
    int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
    CHECK(sendto(fd, "q", 1, 0, (struct sockaddr *)&ss, len) == 1, "sendto UA");
    struct pollfd p = {fd, POLLIN, 0};
    CHECK(poll(&p, 1, 5000) == 1, "no reply from UA");
    char buf[64], got[64], want[64];
    CHECK(recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen) > 0, "recvfrom");
    CHECK(strcmp(sockaddr_text(&from, got, sizeof got), canonical(g_ua, want, sizeof want)) == 0,
          "fd %d reused: reply from %s reads %s (stale mapping)", fd, want, got);
    return fd;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: fdlife ADDR PORT EXPECT UA\n");
        return 2;
    }
    g_addr = argv[1];
    g_port = atoi(argv[2]);
    g_expect = argv[3];
    g_ua = argv[4];
    char name[64];

    int s = tcp_to(g_addr, name, sizeof name);
    CHECK(strcmp(name, g_expect) == 0, "server %s", name);
    peer_is(s, g_addr);
    CHECK(dup2(s, 50) == 50 && dup3(s, 51, O_CLOEXEC) == 51, "dup2/dup3");
    peer_is(50, g_addr);
    peer_is(51, g_addr);

    /* close(): the number comes back for a socket that talks to UA itself */
    close(s);
    int u = udp_to_ua_reads_ua();
    CHECK(u == s, "expected fd %d to be reused, got %d", s, u);
    close(u);

    /* close_range() closes everything above stderr, our sockets included */
    s = tcp_to(g_addr, name, sizeof name);
    CHECK(close_range(3, ~0U, 0) == 0, "close_range: %s", strerror(errno));
    CHECK(fcntl(50, F_GETFD) == -1 && errno == EBADF, "fd 50 still open");
    u = udp_to_ua_reads_ua();
    CHECK(u == 3, "fd 3 not reused (%d)", u);
    CHECK(dup2(u, 50) == 50, "dup2 after close_range");
    close(u);
    close(50);

    /* and the process keeps working through the library */
    s = tcp_to(g_addr, name, sizeof name);
    CHECK(strcmp(name, g_expect) == 0, "after close_range: server %s", name);
    peer_is(s, g_addr);
    close(s);
    printf("ok\n");
    return 0;
}
