/* Packet generator and sink for the benchmarks.
 *
 *   blast send DST PORT PAYLOAD SECONDS [PPS]   flood UDP datagrams (sendmmsg batches);
 *                                               PPS > 0 paces to that rate
 *   blast sink PORT SECONDS                     count datagrams arriving (recvmmsg)
 *   blast echo PORT SECONDS                     send every datagram back to its source
 *   blast rtp SPEC SECONDS PPS SIZE             RTP-like streams: SPEC has one line per
 *                                               socket "LOCAL_IP LOCAL_PORT DST_IP DST_PORT";
 *                                               each sends PPS datagrams/s of SIZE bytes
 *                                               carrying its send time, and every socket
 *                                               counts what it receives and the delay
 *
 * sink and echo stop early on SIGTERM/SIGINT and still print their counts.
 * Prints one line "sent N" / "received N BYTES" / "echoed N" on exit. IPv4 or IPv6 by the
 * address syntax. Used instead of iperf3 -u because iperf3 sends one datagram per syscall and
 * would measure itself rather than the tunnel.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAXLEN 65536

static volatile sig_atomic_t stop_now;

static void on_signal(int sig) {
    (void)sig;
    stop_now = 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_addr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        *len = sizeof(*s4);
        return AF_INET;
    }
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*s6);
        return AF_INET6;
    }
    return -1;
}

static int do_send(const char *host, int port, size_t size, double secs, double pps) {
    struct sockaddr_storage ss;
    socklen_t slen;
    int fam = parse_addr(host, port, &ss, &slen);
    if (fam < 0 || size < 1 || size > MAXLEN) {
        fprintf(stderr, "blast: bad address or size\n");
        return 2;
    }
    int fd = socket(fam, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&ss, slen) < 0) {
        perror("blast: socket/connect");
        return 1;
    }
    static char buf[MAXLEN];
    memset(buf, 0xa5, size);
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = buf;
        iov[i].iov_len = size;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned long long sent = 0;
    double t0 = now(), end = t0 + secs;
    for (;;) {
        double t = now();
        if (t >= end)
            break;
        unsigned batch = BATCH;
        if (pps > 0) {
            double due = (t - t0) * pps - (double)sent;
            if (due < 1) {
                struct timespec ts = {0, 20000};
                nanosleep(&ts, NULL);
                continue;
            }
            if (due < batch)
                batch = (unsigned)due;
        }
        int n = sendmmsg(fd, msgs, batch, 0);
        if (n > 0)
            sent += (unsigned)n;
        else if (n < 0 && errno != ENOBUFS && errno != EAGAIN && errno != ECONNREFUSED &&
                 errno != EINTR) {
            perror("blast: sendmmsg");
            return 1;
        }
    }
    printf("sent %llu\n", sent);
    return 0;
}

static int do_sink(int port, double secs, int echo) {
    struct sockaddr_in6 sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin6_family = AF_INET6;
    sa.sin6_port = htons((uint16_t)port);
    int fd = socket(AF_INET6, SOCK_DGRAM, 0);
    int off = 0, rcv = 4 << 20;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        perror("blast: socket/bind");
        return 1;
    }
    struct timeval tv = {0, 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    static char bufs[BATCH][2048];
    struct iovec iov[BATCH];
    struct sockaddr_in6 from[BATCH];
    struct mmsghdr msgs[BATCH];
    unsigned long long count = 0, bytes = 0;
    struct sigaction act;
    memset(&act, 0, sizeof(act));
    act.sa_handler = on_signal; /* no SA_RESTART: the receive returns at once */
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGINT, &act, NULL);
    double end = now() + secs;
    while (!stop_now && now() < end) {
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = sizeof(bufs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &from[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n <= 0)
            continue;
        count += (unsigned)n;
        for (int i = 0; i < n; i++) {
            bytes += msgs[i].msg_len;
            iov[i].iov_len = msgs[i].msg_len;
        }
        if (echo)
            sendmmsg(fd, msgs, (unsigned)n, 0);
    }
    printf(echo ? "echoed %llu %llu\n" : "received %llu %llu\n", count, bytes);
    return 0;
}

/* ---- rtp: many paced streams, one-way delay measured in the same process --------------- */

#define HIST_US 200000 /* delays up to 200 ms in 1 us buckets; longer ones go in the last */

typedef struct stream {
    int fd;
    struct sockaddr_storage dst;
    socklen_t dstlen;
} stream;

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The streams send in turn, evenly spread: send number g (of all streams) is due at
 * g / (n * pps) seconds, from stream g % n. */
static int do_rtp(const char *spec, double secs, double pps, size_t size) {
    FILE *f = fopen(spec, "r");
    if (!f || size < 20 || size > 1400 || pps <= 0) {
        fprintf(stderr, "blast: bad spec file, size (20..1400) or rate\n");
        return 2;
    }
    size_t cap = 64, n = 0;
    stream *st = calloc(cap, sizeof(*st));
    char lip[64], dip[64];
    int lport, dport;
    int ep = epoll_create1(0);
    while (fscanf(f, "%63s %d %63s %d", lip, &lport, dip, &dport) == 4) {
        if (n == cap) {
            cap *= 2;
            st = realloc(st, cap * sizeof(*st));
        }
        struct sockaddr_storage la;
        socklen_t ll;
        int fam = parse_addr(lip, lport, &la, &ll);
        if (fam < 0 || parse_addr(dip, dport, &st[n].dst, &st[n].dstlen) != fam) {
            fprintf(stderr, "blast: bad spec line %zu\n", n + 1);
            return 2;
        }
        int fd = socket(fam, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        int one = 1, rcv = 1 << 20;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
        if (fd < 0 || bind(fd, (struct sockaddr *)&la, ll) < 0) {
            perror("blast: rtp socket/bind");
            return 1;
        }
        st[n].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data = {.u64 = n}};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        n++;
    }
    fclose(f);
    if (!n) {
        fprintf(stderr, "blast: empty spec\n");
        return 2;
    }
    uint32_t *hist = calloc(HIST_US + 1, sizeof(uint32_t));
    unsigned long long sent = 0, received = 0, send_err = 0, skipped = 0, g = 0;
    char buf[2048];
    memset(buf, 0, sizeof(buf));
    buf[0] = (char)0x80; /* RTP version 2 */
    buf[1] = 8;          /* PCMA */
    double rate = (double)n * pps;
    double t0 = now(), end = t0 + secs, drain_end = end + 0.5;
    struct epoll_event evs[256];
    for (;;) {
        double t = now();
        if (t >= drain_end)
            break;
        if (t < end) {
            double since = t - t0;
            if ((double)g / rate < since - 0.05) { /* overloaded: skip, never burst */
                unsigned long long g2 = (unsigned long long)(since * rate);
                skipped += g2 - g;
                g = g2;
            }
            while ((double)g / rate <= since) {
                stream *s = &st[g % n];
                uint64_t ns = mono_ns();
                memcpy(buf + 12, &ns, sizeof(ns));
                if (sendto(s->fd, buf, size, 0, (struct sockaddr *)&s->dst, s->dstlen) >= 0)
                    sent++;
                else
                    send_err++;
                g++;
            }
        }
        double wait = t < end ? t0 + (double)g / rate - now() : 0.05;
        if (wait < 0)
            wait = 0;
        struct timespec to = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
        int k = epoll_pwait2(ep, evs, 256, &to, NULL);
        for (int j = 0; j < k; j++) {
            int fd = st[evs[j].data.u64].fd;
            for (;;) {
                ssize_t r = recv(fd, buf + 1024, 1000, MSG_DONTWAIT);
                if (r < 0)
                    break;
                received++;
                if (r >= 20) {
                    uint64_t ns, now_ns = mono_ns();
                    memcpy(&ns, buf + 1024 + 12, sizeof(ns));
                    uint64_t us = now_ns > ns ? (now_ns - ns) / 1000 : 0;
                    hist[us > HIST_US ? HIST_US : us]++;
                }
            }
        }
    }
    double pct[3] = {0.5, 0.9, 0.99};
    long long res[3] = {-1, -1, -1};
    unsigned long long acc = 0, total = 0;
    for (int i = 0; i <= HIST_US; i++)
        total += hist[i];
    for (int i = 0, p = 0; i <= HIST_US && p < 3; i++) {
        acc += hist[i];
        while (p < 3 && total && (double)acc >= pct[p] * (double)total)
            res[p++] = i;
    }
    printf("rtp sent %llu received %llu send_errors %llu skipped %llu p50_us %lld p90_us %lld "
           "p99_us %lld\n", sent, received, send_err, skipped, res[0], res[1], res[2]);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 6 && strcmp(argv[1], "send") == 0)
        return do_send(argv[2], atoi(argv[3]), (size_t)atol(argv[4]), atof(argv[5]),
                       argc > 6 ? atof(argv[6]) : 0);
    if (argc >= 4 && (strcmp(argv[1], "sink") == 0 || strcmp(argv[1], "echo") == 0))
        return do_sink(atoi(argv[2]), atof(argv[3]), argv[1][0] == 'e');
    if (argc >= 6 && strcmp(argv[1], "rtp") == 0)
        return do_rtp(argv[2], atof(argv[3]), atof(argv[4]), (size_t)atol(argv[5]));
    fprintf(stderr, "usage: blast send DST PORT PAYLOAD SECONDS [PPS] | blast sink|echo PORT "
                    "SECONDS | blast rtp SPEC SECONDS PPS SIZE\n");
    return 2;
}
