/* Relay mode's media path (relay/fastpath/rtp.c) with real UDP sockets on the loopback of a
 * network namespace of its own: any leg wiring Python could hand over (including lengths and
 * policies it must refuse) and any sequence of datagrams from a few sources. Checked against
 * the latching rules the leg was given: which datagrams are forwarded (byte for byte, in
 * order), which source is announced, and the counters. Needs root (unshare CLONE_NEWNET). */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../../relay/fastpath/fastpath.h"
#include "common.h"

#define NSENDERS 3
#define MAX_DGRAMS 32

static fp_rtp *rtp;
static int leg_fd, out_fd, dest_fd, senders[NSENDERS];
static struct sockaddr_in leg_addr, dest_addr, sender_addr[NSENDERS];
static int leg_id = -1;

static int udp_socket(const char *host, struct sockaddr_in *bound) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    CHECK(inet_pton(AF_INET, host, &a.sin_addr) == 1);
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    socklen_t len = sizeof a;
    CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    if (bound)
        *bound = a;
    return fd;
}

static void setup(void) {
    if (unshare(CLONE_NEWNET) != 0) {
        fprintf(stderr, "rtp harness: needs root for a network namespace of its own (%s)\n",
                strerror(errno));
        exit(1);
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    CHECK(s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0);
    ifr.ifr_flags |= IFF_UP;
    CHECK(ioctl(s, SIOCSIFFLAGS, &ifr) == 0);
    close(s);
    char err[200];
    rtp = fp_rtp_start(1, err, sizeof err);
    CHECK(rtp != NULL);
    leg_fd = udp_socket("127.0.0.1", &leg_addr);
    out_fd = udp_socket("127.0.0.1", NULL);
    dest_fd = udp_socket("127.0.0.1", &dest_addr);
    static const char *const hosts[NSENDERS] = {"127.0.0.2", "127.0.0.2", "127.0.0.3"};
    for (int i = 0; i < NSENDERS; i++)
        senders[i] = udp_socket(hosts[i], &sender_addr[i]);
}

/* A source as the leg settings describe it: one of the senders, another host, garbage. */
static uint32_t address_of(reader *r, struct sockaddr_storage *out) {
    memset(out, 0, sizeof *out);
    uint8_t how = rd_u8(r);
    switch (how % 6) {
    case 0:
        return 0;
    case 1: case 2: case 3:
        memcpy(out, &sender_addr[how % 6 - 1], sizeof sender_addr[0]);
        return sizeof sender_addr[0];
    case 4: { /* an IPv6 host: never one of ours */
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
        a->sin6_family = AF_INET6;
        a->sin6_addr.s6_addr[0] = 0xfd;
        return sizeof *a;
    }
    default: { /* raw bytes and any length, up to too long */
        size_t got;
        uint32_t len = rd_u8(r);
        const uint8_t *p = rd_bytes(r, len < sizeof *out ? len : sizeof *out, &got);
        memcpy(out, p, got);
        return len;
    }
    }
}

static int same(const struct sockaddr_in *a, const struct sockaddr_storage *want,
                uint32_t want_len, int port) {
    const struct sockaddr_in *w = (const struct sockaddr_in *)want;
    return want_len && want->ss_family == AF_INET && w->sin_addr.s_addr == a->sin_addr.s_addr &&
           (!port || w->sin_port == a->sin_port);
}

/* The leg's counters (they only grow; collect reports a leg only when it changed). */
static uint64_t got_n, relayed_n, dropped_n;

static void collect(void) {
    fp_rtp_counters c[4];
    size_t n = fp_rtp_collect(rtp, c, 4);
    for (size_t i = 0; i < n; i++)
        if (c[i].id == leg_id) {
            got_n = c[i].got;
            relayed_n = c[i].relayed;
            dropped_n = c[i].dropped;
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!rtp)
        setup();
    reader r = {data, size};
    if (leg_id >= 0)
        CHECK(fp_rtp_leg_remove(rtp, leg_id) == 0);
    leg_id = fp_rtp_leg_add(rtp, leg_fd);
    CHECK(leg_id >= 0);
    collect(); /* the old leg's last counters, if any */
    got_n = relayed_n = dropped_n = 0;

    uint8_t opts = rd_u8(&r);
    int ask = opts % 4 == 3 ? -1 : opts % 4; /* -1: a value Python must never send */
    int sticky = opts >> 2 & 1, wired = opts >> 3 & 1;
    struct sockaddr_storage src, ask1, ask2;
    uint32_t src_len = address_of(&r, &src);
    uint32_t ask1_len = address_of(&r, &ask1);
    uint32_t ask2_len = address_of(&r, &ask2);
    int rc = fp_rtp_leg_set(rtp, leg_id, wired ? out_fd : -1, (const uint8_t *)&dest_addr,
                            wired ? sizeof dest_addr : 0, (const uint8_t *)&src, src_len, ask,
                            sticky, (const uint8_t *)&ask1, ask1_len, (const uint8_t *)&ask2,
                            ask2_len);
    int valid = ask >= 0 && src_len <= sizeof src && ask1_len <= sizeof ask1 &&
                ask2_len <= sizeof ask2;
    CHECK(valid ? rc == 0 : rc == -EINVAL);
    if (!valid) {
        src_len = ask1_len = ask2_len = 0;
        ask = FP_ASK_NONE;
        wired = 0;
    }

    /* send, and decide by the rules what must come out */
    uint8_t expect[MAX_DGRAMS];
    size_t nexpect = 0, sent = 0, events = 0;
    struct sockaddr_in announced[MAX_DGRAMS];
    uint8_t payload[64];
    while (r.n && sent < MAX_DGRAMS) {
        uint8_t b = rd_u8(&r);
        int who = b % NSENDERS;
        size_t got;
        const uint8_t *p = rd_bytes(&r, b >> 2 & 15, &got);
        payload[0] = (uint8_t)sent;
        memcpy(payload + 1, p, got);
        CHECK(sendto(senders[who], payload, got + 1, 0, (struct sockaddr *)&leg_addr,
                     sizeof leg_addr) == (ssize_t)(got + 1));
        sent++;
        const struct sockaddr_in *from = &sender_addr[who];
        int forward = 0;
        if (same(from, &src, src_len, 1)) {
            forward = 1;
        } else if (ask == FP_ASK_ANY ||
                   (ask == FP_ASK_HOSTS && (same(from, &ask1, ask1_len, 0) ||
                                            same(from, &ask2, ask2_len, 0)))) {
            memset(&src, 0, sizeof src);
            memcpy(&src, from, sizeof *from);
            src_len = sizeof *from;
            if (sticky)
                ask = FP_ASK_NONE;
            announced[events++] = *from;
            forward = 1;
        }
        if (forward && wired)
            expect[nexpect++] = payload[0];
    }
    uint8_t buf[128];

    /* a worker updates a leg's counters one after the other: wait until they add up */
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (collect(); got_n < sent || relayed_n + dropped_n < got_n; collect()) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        CHECK(now.tv_sec - start.tv_sec < 5); /* every datagram is read */
        usleep(50);
    }
    CHECK(got_n == sent && relayed_n == nexpect && dropped_n == sent - nexpect);
    for (size_t i = 0; i < nexpect; i++) {
        struct pollfd pf = {dest_fd, POLLIN, 0};
        CHECK(poll(&pf, 1, 2000) == 1);
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(dest_fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        CHECK(n >= 1 && buf[0] == expect[i]); /* in order, nothing else */
    }
    CHECK(recv(dest_fd, buf, sizeof buf, 0) < 0 && errno == EAGAIN);
    for (size_t i = 0; i < events; i++) {
        int id;
        struct sockaddr_storage a;
        uint32_t alen;
        CHECK(fp_rtp_next_event(rtp, &id, (uint8_t *)&a, &alen) == 1);
        CHECK(id == leg_id && alen == sizeof(struct sockaddr_in));
        CHECK(!memcmp(&((struct sockaddr_in *)&a)->sin_addr, &announced[i].sin_addr, 4) &&
              ((struct sockaddr_in *)&a)->sin_port == announced[i].sin_port);
    }
    int id;
    struct sockaddr_storage a;
    uint32_t alen;
    CHECK(fp_rtp_next_event(rtp, &id, (uint8_t *)&a, &alen) == 0);
    return 0;
}
