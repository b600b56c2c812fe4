/* The IO engine: two threads per tunnel, outside the GIL, between a TUN/TAP fd and a UDP
 * socket.
 *
 *   tx: device read (many per wake-up; with offloads one read is up to 64 KiB of TCP/UDP)
 *       -> segment -> seal in place -> one sendmmsg per batch, equal-sized datagrams as
 *       UDP GSO trains (UDP_SEGMENT)
 *   rx: recvmmsg (with UDP_GRO one message is a train of datagrams) -> open in place ->
 *       MUX and replay checks -> roaming -> device write (with offloads, TCP/UDP flows are
 *       coalesced into GSO writes)
 *
 * What the control plane needs (remote endpoint learned, packets too big for the tunnel,
 * restarted peers) is queued as events behind an eventfd that Python's loop watches.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#define TUN_F_USO6 0x40
#endif
#ifndef IPPROTO_UDPLITE
#define IPPROTO_UDPLITE 136
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define TX_ARENA (512 * 1024)
#define TX_MAX_MSGS 128
#define TX_BUDGET 256        /* datagrams per batch before sending */
#define GSO_MAX_SEGS 64
#define GSO_MAX_BYTES 65000
#define RX_MSGS_GRO 32
#define RX_BUF_GRO 65536
#define RX_MSGS 64
#define RX_BUF 2048
#define EVENT_SLOTS 64
#define SLOW_SLOTS 64
#define MAX_INNER 65536

typedef struct counters {
    _Atomic uint64_t v[24];
} counters;

enum {
    C_TX_PACKETS, C_TX_BYTES, C_TX_BATCHED, C_TX_NO_REMOTE, C_TX_OVERSIZE, C_TX_ERROR,
    C_TX_SEGMENTED, C_RX_PACKETS, C_RX_BYTES, C_RX_SHORT, C_RX_AUTH, C_RX_REPLAY, C_RX_TOO_OLD,
    C_RX_RESTART, C_RX_BAD_MUX, C_RX_BAD_TYPE, C_RX_DEV_ERROR, C_RX_COALESCED, C_TX_SYSCALLS,
    C_RX_SYSCALLS, C_SLOW
};

static inline void count(counters *c, int k, uint64_t n) {
    atomic_fetch_add_explicit(&c->v[k], n, memory_order_relaxed);
}

typedef struct slow_pkt {
    size_t len;
    uint8_t *data;
} slow_pkt;

struct fp_engine {
    fp_engine_config cfg;
    fp_satp *tx_crypto, *rx_crypto, *inj_crypto;
    fp_replay *replay;
    size_t overhead;
    int max_payload;
    int tun_offload, tun_uso; /* negotiated TUNSETOFFLOAD */
    _Atomic int udp_gso; /* the tx thread turns it off if the path refuses trains */
    int udp_gro;
    int socks[2], sock_family[2], nsocks;
    int dev_flags0, sock_flags0[2];

    _Atomic uint32_t seq;
    counters c;

    pthread_mutex_t lock; /* remote, events, slow queue, replay, injection */
    struct sockaddr_storage remote;
    socklen_t remote_len;
    _Atomic uint32_t remote_gen;

    fp_event events[EVENT_SLOTS];
    int ev_head, ev_count;
    slow_pkt slow[SLOW_SLOTS];
    int slow_head, slow_count;
    int ev_fd, stop_fd;
    _Atomic int stopping;

    pthread_t tx, rx;
    int tx_started, rx_started;
};

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void signal_python(fp_engine *e) {
    uint64_t one = 1;
    ssize_t r = write(e->ev_fd, &one, sizeof(one));
    (void)r; /* a full counter is still readable: nothing lost */
}

static void push_event(fp_engine *e, const fp_event *ev) {
    pthread_mutex_lock(&e->lock);
    if (e->ev_count < EVENT_SLOTS) {
        e->events[(e->ev_head + e->ev_count) % EVENT_SLOTS] = *ev;
        e->ev_count++;
    } else if (ev->kind == FP_EV_REMOTE) {
        /* keep the newest remote: it is the one that matters */
        e->events[(e->ev_head + e->ev_count - 1) % EVENT_SLOTS] = *ev;
    }
    pthread_mutex_unlock(&e->lock);
    signal_python(e);
}

static void push_slow(fp_engine *e, const uint8_t *pkt, size_t len) {
    uint8_t *copy = malloc(len); /* rare: packets too big for the tunnel */
    if (!copy)
        return;
    memcpy(copy, pkt, len);
    pthread_mutex_lock(&e->lock);
    if (e->slow_count < SLOW_SLOTS) {
        e->slow[(e->slow_head + e->slow_count) % SLOW_SLOTS] = (slow_pkt){len, copy};
        e->slow_count++;
        copy = NULL;
    }
    pthread_mutex_unlock(&e->lock);
    if (copy) {
        free(copy);
        count(&e->c, C_TX_OVERSIZE, 1);
        return;
    }
    count(&e->c, C_SLOW, 1);
    signal_python(e);
}

/* Waits until one of fds is ready for `events` or the engine stops. Returns a bit mask of
 * the ready fds, 0 when stopping. */
static int wait_fds(fp_engine *e, const int *fds, int n, short events) {
    for (;;) {
        if (atomic_load(&e->stopping))
            return 0;
        struct pollfd p[3];
        for (int i = 0; i < n; i++)
            p[i] = (struct pollfd){fds[i], events, 0};
        p[n] = (struct pollfd){e->stop_fd, POLLIN, 0};
        int r = poll(p, (nfds_t)n + 1, 1000);
        if (r < 0 && errno != EINTR)
            return 0;
        if (p[n].revents)
            return 0;
        int mask = 0;
        for (int i = 0; i < n; i++)
            if (p[i].revents)
                mask |= 1 << i;
        if (r > 0 && mask)
            return mask;
    }
}

static int wait_fd(fp_engine *e, int fd, short events) { return wait_fds(e, &fd, 1, events); }

/* The socket for a remote of this address family, -1 if there is none. */
static int sock_for(const fp_engine *e, int family) {
    for (int i = 0; i < e->nsocks; i++)
        if (e->sock_family[i] == family)
            return e->socks[i];
    return -1;
}

/* ---- tx ------------------------------------------------------------------------------------ */

typedef struct tx_msg {
    size_t off, seg, len;
    int count;
    int closed; /* a shorter datagram ended the train */
} tx_msg;

typedef struct tx_state {
    fp_engine *e;
    uint8_t *arena;
    size_t used;
    tx_msg msgs[TX_MAX_MSGS];
    int nmsgs, ndgrams;
    struct sockaddr_storage remote;
    socklen_t remote_len;
    uint32_t remote_gen;
    int sock; /* the socket for the remote's family */
    uint8_t *rdbuf; /* vnet header + packet, for offload reads */
} tx_state;

static void tx_flush(tx_state *t) {
    fp_engine *e = t->e;
    if (!t->nmsgs)
        return;
    struct mmsghdr mm[TX_MAX_MSGS];
    struct iovec iov[TX_MAX_MSGS];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl[TX_MAX_MSGS];
    memset(mm, 0, sizeof(struct mmsghdr) * (size_t)t->nmsgs);
    for (int i = 0; i < t->nmsgs; i++) {
        tx_msg *m = &t->msgs[i];
        iov[i] = (struct iovec){t->arena + m->off, m->len};
        struct msghdr *h = &mm[i].msg_hdr;
        h->msg_iov = &iov[i];
        h->msg_iovlen = 1;
        h->msg_name = &t->remote;
        h->msg_namelen = t->remote_len;
        if (m->count > 1) {
            memset(ctl[i].buf, 0, sizeof(ctl[i].buf));
            h->msg_control = ctl[i].buf;
            h->msg_controllen = sizeof(ctl[i].buf);
            struct cmsghdr *cm = CMSG_FIRSTHDR(h);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = (uint16_t)m->seg;
            memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
            count(&e->c, C_TX_BATCHED, (uint64_t)m->count);
        } else if (t->nmsgs > 1) {
            count(&e->c, C_TX_BATCHED, 1);
        }
    }
    int done = 0, retries = 0;
    while (done < t->nmsgs) {
        int n = sendmmsg(t->sock, mm + done, (unsigned)(t->nmsgs - done), 0);
        count(&e->c, C_TX_SYSCALLS, 1);
        if (n > 0) {
            done += n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN && wait_fd(e, t->sock, POLLOUT))
            continue;
        tx_msg *m = &t->msgs[done];
        if ((errno == EIO || errno == EINVAL) && m->count > 1) {
            /* the path refuses this train (outer MTU below a datagram, no checksum offload):
             * send it datagram by datagram, and no trains from now on */
            e->udp_gso = 0;
            for (size_t off = 0; off < m->len; off += m->seg) {
                size_t dl = m->len - off < m->seg ? m->len - off : m->seg;
                if (sendto(t->sock, t->arena + m->off + off, dl, 0,
                           (struct sockaddr *)&t->remote, t->remote_len) < 0)
                    count(&e->c, C_TX_ERROR, 1);
            }
        } else {
            /* lost (an ICMP error remembered by the socket, no route, ...) */
            count(&e->c, C_TX_ERROR, (uint64_t)m->count);
        }
        done++;
        if (++retries > 8) { /* the socket keeps failing: count the rest as lost */
            for (; done < t->nmsgs; done++)
                count(&e->c, C_TX_ERROR, (uint64_t)t->msgs[done].count);
            break;
        }
    }
    t->nmsgs = 0;
    t->ndgrams = 0;
    t->used = 0;
}

/* Room for one more datagram of up to `len` bytes at t->arena + t->used. */
static void tx_reserve(tx_state *t, size_t len) {
    if (t->used + len > TX_ARENA || t->nmsgs == TX_MAX_MSGS)
        tx_flush(t);
}

/* The datagram of `len` bytes just written at t->arena + t->used joins the batch. */
static void tx_commit(tx_state *t, size_t len) {
    fp_engine *e = t->e;
    tx_msg *m = t->nmsgs ? &t->msgs[t->nmsgs - 1] : NULL;
    if (e->udp_gso && m && !m->closed && m->off + m->len == t->used && len <= m->seg &&
        m->count < GSO_MAX_SEGS && m->len + len <= GSO_MAX_BYTES) {
        m->len += len;
        m->count++;
        if (len < m->seg)
            m->closed = 1;
    } else {
        m = &t->msgs[t->nmsgs++];
        *m = (tx_msg){t->used, len, len, 1, 0};
    }
    t->used += len;
    t->ndgrams++;
}

static uint16_t ptype_of(const fp_engine *e, const uint8_t *pkt, size_t len) {
    if (e->cfg.dev_tap)
        return len >= 14 ? FP_PT_ETHERNET : 0;
    if (!len)
        return 0;
    return pkt[0] >> 4 == 4 ? FP_PT_IPV4 : pkt[0] >> 4 == 6 ? FP_PT_IPV6 : 0;
}

/* Seal the payload already at t->arena + t->used + FP_DATA_OFF. */
static void tx_seal_here(tx_state *t, size_t len, uint16_t ptype) {
    fp_engine *e = t->e;
    uint32_t seq = atomic_fetch_add_explicit(&e->seq, 1, memory_order_relaxed);
    size_t n = fp_seal_inplace(e->tx_crypto, t->arena + t->used, len, seq, e->cfg.sender_id,
                               e->cfg.mux, ptype);
    tx_commit(t, n);
    count(&e->c, C_TX_PACKETS, 1);
    count(&e->c, C_TX_BYTES, len);
}

static void tx_emit(void *ctx, uint8_t *pkt, size_t len) {
    tx_state *t = ctx;
    fp_engine *e = t->e;
    uint16_t ptype = ptype_of(e, pkt, len);
    if (!ptype) {
        count(&e->c, C_TX_ERROR, 1);
        return;
    }
    if (len > (size_t)e->max_payload) {
        push_slow(e, pkt, len);
        return;
    }
    tx_reserve(t, len + e->overhead);
    memcpy(t->arena + t->used + FP_DATA_OFF, pkt, len);
    tx_seal_here(t, len, ptype);
}

static int tx_refresh_remote(tx_state *t) {
    fp_engine *e = t->e;
    uint32_t gen = atomic_load_explicit(&e->remote_gen, memory_order_acquire);
    if (gen != t->remote_gen) {
        tx_flush(t); /* what was sealed so far goes to the old remote */
        pthread_mutex_lock(&e->lock);
        t->remote = e->remote;
        t->remote_len = e->remote_len;
        t->remote_gen = atomic_load(&e->remote_gen);
        pthread_mutex_unlock(&e->lock);
        t->sock = t->remote_len ? sock_for(e, t->remote.ss_family) : -1;
    }
    return t->remote_len != 0 && t->sock >= 0;
}

static void *tx_main(void *arg) {
    fp_engine *e = arg;
    tx_state t;
    memset(&t, 0, sizeof(t));
    t.e = e;
    t.remote_gen = (uint32_t)-1;
    t.arena = malloc(TX_ARENA);
    t.rdbuf = malloc(sizeof(fp_vnet_hdr) + MAX_INNER);
    uint8_t *scratch = malloc(MAX_INNER);
    if (!t.arena || !t.rdbuf || !scratch)
        goto out;
    int fd = e->cfg.dev_fd;
    while (wait_fd(e, fd, POLLIN)) {
        for (;;) {
            ssize_t n;
            fp_vnet_hdr vh;
            int have_remote = tx_refresh_remote(&t); /* may flush: before reading into arena */
            if (e->cfg.dev_vnet_hdr) {
                n = read(fd, t.rdbuf, sizeof(fp_vnet_hdr) + MAX_INNER);
                if (n >= (ssize_t)sizeof(vh)) {
                    memcpy(&vh, t.rdbuf, sizeof(vh));
                    n -= (ssize_t)sizeof(vh);
                } else if (n >= 0) {
                    continue;
                }
            } else {
                tx_reserve(&t, MAX_INNER + e->overhead);
                n = read(fd, t.arena + t.used + FP_DATA_OFF, MAX_INNER);
            }
            count(&e->c, C_TX_SYSCALLS, 1);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                break; /* EAGAIN: drained */
            }
            if (!have_remote) {
                count(&e->c, C_TX_NO_REMOTE, 1);
                continue; /* like the real programs: nothing is sent before a remote is known */
            }
            if (e->cfg.dev_vnet_hdr) {
                uint8_t *pkt = t.rdbuf + sizeof(vh);
                int pieces = fp_segment(&vh, pkt, (size_t)n, scratch, MAX_INNER,
                                        (size_t)e->max_payload, tx_emit, &t);
                if (pieces == -2)
                    push_slow(e, pkt, (size_t)n);
                else if (pieces < 0)
                    count(&e->c, C_TX_ERROR, 1);
                else if (pieces > 1)
                    count(&e->c, C_TX_SEGMENTED, (uint64_t)pieces);
            } else {
                uint8_t *pkt = t.arena + t.used + FP_DATA_OFF;
                uint16_t ptype = ptype_of(e, pkt, (size_t)n);
                if (!ptype)
                    count(&e->c, C_TX_ERROR, 1);
                else if (n > e->max_payload)
                    push_slow(e, pkt, (size_t)n);
                else
                    tx_seal_here(&t, (size_t)n, ptype);
            }
            if (t.ndgrams >= TX_BUDGET)
                tx_flush(&t);
        }
        tx_flush(&t);
    }
out:
    free(scratch);
    free(t.rdbuf);
    free(t.arena);
    return NULL;
}

/* ---- rx ------------------------------------------------------------------------------------ */

static int same_addr(const struct sockaddr_storage *a, socklen_t alen,
                     const struct sockaddr_storage *b, socklen_t blen) {
    if (a->ss_family != b->ss_family || !alen || !blen)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr));
    }
    return 0;
}

typedef struct rx_state {
    fp_engine *e;
    fp_coalescer *co;
    double now;
} rx_state;

static void rx_deliver(rx_state *r, uint8_t *payload, size_t len) {
    fp_engine *e = r->e;
    if (r->co) {
        fp_coalescer_add(r->co, payload, len);
    } else {
        ssize_t w;
        do
            w = write(e->cfg.dev_fd, payload, len);
        while (w < 0 && errno == EINTR);
        count(&e->c, C_RX_SYSCALLS, 1);
        if (w < 0) {
            count(&e->c, C_RX_DEV_ERROR, 1);
            return;
        }
    }
    count(&e->c, C_RX_PACKETS, 1);
    count(&e->c, C_RX_BYTES, len);
}

static void rx_one(rx_state *r, uint8_t *d, size_t len, const struct sockaddr_storage *from,
                   socklen_t fromlen) {
    fp_engine *e = r->e;
    fp_hdr h;
    if (len >= FP_HEADER_LEN && rd16(d + 6) != e->cfg.mux) {
        count(&e->c, C_RX_BAD_MUX, 1); /* not our connection: no crypto spent on it */
        return;
    }
    long n = fp_open_inplace(e->rx_crypto, d, len, &h);
    if (n < 0) {
        count(&e->c, n == FP_ERR_SHORT ? C_RX_SHORT : C_RX_AUTH, 1);
        return;
    }
    const uint8_t *pl = d + FP_DATA_OFF;
    int ok = e->cfg.dev_tap ? h.payload_type == FP_PT_ETHERNET && n >= 14
             : n > 0 && ((h.payload_type == FP_PT_IPV4 && pl[0] >> 4 == 4) ||
                         (h.payload_type == FP_PT_IPV6 && pl[0] >> 4 == 6));
    if (!ok) {
        count(&e->c, C_RX_BAD_TYPE, 1);
        return;
    }
    pthread_mutex_lock(&e->lock);
    int v = fp_replay_accept(e->replay, h.sender_id, h.seq, r->now);
    int roam = 0;
    if ((v == FP_FRESH || v == FP_IN_WINDOW || v == FP_RESTART) &&
        (e->cfg.roam || !e->remote_len) && !same_addr(&e->remote, e->remote_len, from, fromlen)) {
        memcpy(&e->remote, from, fromlen);
        e->remote_len = fromlen;
        atomic_fetch_add_explicit(&e->remote_gen, 1, memory_order_release);
        roam = 1;
    }
    pthread_mutex_unlock(&e->lock);
    if (v == FP_REPLAY || v == FP_TOO_OLD) {
        count(&e->c, v == FP_REPLAY ? C_RX_REPLAY : C_RX_TOO_OLD, 1);
        return;
    }
    if (roam || v == FP_RESTART) {
        fp_event ev;
        memset(&ev, 0, sizeof(ev));
        ev.kind = roam ? FP_EV_REMOTE : FP_EV_RESTART;
        ev.sender_id = h.sender_id;
        ev.seq = h.seq;
        if (fromlen <= sizeof(ev.addr)) {
            memcpy(ev.addr, from, fromlen);
            ev.addr_len = fromlen;
        }
        push_event(e, &ev);
        if (roam && v == FP_RESTART) {
            ev.kind = FP_EV_RESTART;
            push_event(e, &ev);
        }
    }
    if (v == FP_RESTART)
        count(&e->c, C_RX_RESTART, 1);
    rx_deliver(r, d + FP_DATA_OFF, (size_t)n);
}

typedef union rx_ctl {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
} rx_ctl;

typedef struct rx_bufs {
    int n;
    size_t size;
    uint8_t *arena;
    struct mmsghdr *mm;
    struct iovec *iov;
    struct sockaddr_storage *from;
    rx_ctl *ctl;
} rx_bufs;

/* Reads everything waiting on one socket, batch by batch. */
static void rx_drain(rx_state *r, rx_bufs *b, int fd) {
    fp_engine *e = r->e;
    for (;;) {
        for (int i = 0; i < b->n; i++) {
            b->iov[i] = (struct iovec){b->arena + (size_t)i * b->size, b->size};
            b->mm[i].msg_hdr = (struct msghdr){
                .msg_name = &b->from[i],
                .msg_namelen = sizeof(b->from[i]),
                .msg_iov = &b->iov[i],
                .msg_iovlen = 1,
                .msg_control = e->udp_gro ? b->ctl[i].buf : NULL,
                .msg_controllen = e->udp_gro ? sizeof(b->ctl[i].buf) : 0};
        }
        int n = recvmmsg(fd, b->mm, (unsigned)b->n, MSG_DONTWAIT, NULL);
        count(&e->c, C_RX_SYSCALLS, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* EAGAIN: drained (an ICMP error reported on the socket ends it too) */
        r->now = mono_now();
        for (int i = 0; i < n; i++) {
            struct msghdr *h = &b->mm[i].msg_hdr;
            size_t len = b->mm[i].msg_len, seg = len;
            if (h->msg_flags & MSG_TRUNC) {
                count(&e->c, C_RX_SHORT, 1);
                continue;
            }
            if (e->udp_gro)
                for (struct cmsghdr *cm = CMSG_FIRSTHDR(h); cm; cm = CMSG_NXTHDR(h, cm))
                    if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                        int g;
                        memcpy(&g, CMSG_DATA(cm), sizeof(g));
                        if (g > 0)
                            seg = (size_t)g; /* a train of datagrams of this size */
                    }
            uint8_t *base = b->arena + (size_t)i * b->size;
            if (!len)
                count(&e->c, C_RX_SHORT, 1);
            for (size_t off = 0; off < len; off += seg) {
                size_t dl = len - off < seg ? len - off : seg;
                rx_one(r, base + off, dl, &b->from[i], h->msg_namelen);
            }
        }
        if (r->co)
            fp_coalescer_flush(r->co); /* before the arena is reused */
        if (n < b->n)
            return;
    }
}

static void *rx_main(void *arg) {
    fp_engine *e = arg;
    rx_bufs b;
    b.n = e->udp_gro ? RX_MSGS_GRO : RX_MSGS;
    b.size = e->udp_gro ? RX_BUF_GRO : RX_BUF;
    b.arena = malloc((size_t)b.n * b.size);
    b.mm = calloc((size_t)b.n, sizeof(*b.mm));
    b.iov = calloc((size_t)b.n, sizeof(*b.iov));
    b.from = calloc((size_t)b.n, sizeof(*b.from));
    b.ctl = calloc((size_t)b.n, sizeof(*b.ctl));
    rx_state r = {e, NULL, 0};
    if (e->cfg.dev_vnet_hdr)
        r.co = fp_coalescer_new(e->cfg.dev_fd, e->tun_offload, e->tun_uso);
    if (b.arena && b.mm && b.iov && b.from && b.ctl && (!e->cfg.dev_vnet_hdr || r.co)) {
        int ready;
        while ((ready = wait_fds(e, e->socks, e->nsocks, POLLIN))) {
            for (int i = 0; i < e->nsocks; i++)
                if (ready & (1 << i))
                    rx_drain(&r, &b, e->socks[i]);
            if (r.co) {
                count(&e->c, C_RX_COALESCED, fp_coalescer_take_merged(r.co));
                count(&e->c, C_RX_DEV_ERROR, fp_coalescer_take_errors(r.co));
                count(&e->c, C_RX_SYSCALLS, fp_coalescer_take_writes(r.co));
            }
        }
    }
    fp_coalescer_free(r.co);
    free(b.ctl);
    free(b.from);
    free(b.iov);
    free(b.mm);
    free(b.arena);
    return NULL;
}

/* ---- life cycle ---------------------------------------------------------------------------- */

static void set_nonblock(int fd, int *saved) {
    int fl = fcntl(fd, F_GETFL);
    *saved = fl;
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void negotiate(fp_engine *e) {
    if (e->cfg.dev_vnet_hdr && !e->cfg.dev_tap) {
        unsigned base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        if (ioctl(e->cfg.dev_fd, TUNSETOFFLOAD, base | TUN_F_USO4 | TUN_F_USO6) == 0) {
            e->tun_offload = e->tun_uso = 1;
        } else if (ioctl(e->cfg.dev_fd, TUNSETOFFLOAD, base) == 0) {
            e->tun_offload = 1;
        }
    }
    int gso = e->cfg.gso, gro = e->cfg.gso;
    for (int i = 0; i < e->nsocks; i++) {
        int proto = 0, one = 1, seg = 0;
        socklen_t pl = sizeof(proto), sl = sizeof(seg);
        getsockopt(e->socks[i], SOL_SOCKET, SO_PROTOCOL, &proto, &pl);
        /* UDP_SEGMENT readable means the kernel does UDP GSO; UDP-Lite has neither */
        gso = gso && proto == IPPROTO_UDP &&
              getsockopt(e->socks[i], SOL_UDP, UDP_SEGMENT, &seg, &sl) == 0;
        gro = gro && proto == IPPROTO_UDP &&
              setsockopt(e->socks[i], SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0;
    }
    e->udp_gso = gso;
    e->udp_gro = gro;
}

void fp_engine_stop(fp_engine *e) {
    if (!e)
        return;
    atomic_store(&e->stopping, 1);
    uint64_t one = 1;
    if (e->stop_fd >= 0 && write(e->stop_fd, &one, sizeof(one)) < 0) {
        /* the poll timeout ends the workers anyway */
    }
    if (e->tx_started)
        pthread_join(e->tx, NULL);
    if (e->rx_started)
        pthread_join(e->rx, NULL);
    for (int i = 0; i < e->nsocks; i++) {
        int zero = 0; /* the sockets go back to Python: no trains from now on */
        if (e->cfg.gso)
            setsockopt(e->socks[i], SOL_UDP, UDP_GRO, &zero, sizeof(zero));
        if (e->sock_flags0[i] >= 0)
            fcntl(e->socks[i], F_SETFL, e->sock_flags0[i]);
    }
    if (e->tun_offload)
        ioctl(e->cfg.dev_fd, TUNSETOFFLOAD, 0u);
    if (e->dev_flags0 >= 0)
        fcntl(e->cfg.dev_fd, F_SETFL, e->dev_flags0);
    for (int i = 0; i < e->slow_count; i++)
        free(e->slow[(e->slow_head + i) % SLOW_SLOTS].data);
    if (e->ev_fd >= 0)
        close(e->ev_fd);
    if (e->stop_fd >= 0)
        close(e->stop_fd);
    fp_satp_free(e->tx_crypto);
    fp_satp_free(e->rx_crypto);
    fp_satp_free(e->inj_crypto);
    fp_replay_free(e->replay);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

fp_engine *fp_engine_start(const fp_engine_config *cfg, const fp_suite *suite,
                           const uint8_t *master_key, size_t master_key_len,
                           const uint8_t *master_salt, int role, char *err, size_t errlen) {
    fp_engine *e = calloc(1, sizeof(*e));
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->cfg = *cfg;
    e->ev_fd = e->stop_fd = -1;
    e->dev_flags0 = e->sock_flags0[0] = e->sock_flags0[1] = -1;
    pthread_mutex_init(&e->lock, NULL);
    atomic_store(&e->seq, cfg->first_seq);
    e->tx_crypto = fp_satp_new(suite, master_key, master_key_len, master_salt, role, err, errlen);
    if (!e->tx_crypto)
        goto fail;
    e->rx_crypto = fp_satp_new(suite, master_key, master_key_len, master_salt, role, err, errlen);
    e->inj_crypto = fp_satp_new(suite, master_key, master_key_len, master_salt, role, err,
                                errlen);
    e->replay = fp_replay_new(&cfg->replay);
    if (!e->rx_crypto || !e->inj_crypto || !e->replay) {
        if (!e->replay)
            snprintf(err, errlen, "bad replay window size or out of memory");
        goto fail;
    }
    e->overhead = fp_satp_overhead(e->tx_crypto);
    e->max_payload = cfg->max_payload > 0 ? cfg->max_payload : 1600 - (int)e->overhead;
    if (e->max_payload > MAX_INNER - (int)e->overhead - 64) {
        snprintf(err, errlen, "max_payload too large");
        goto fail;
    }
    for (int i = 0; i < 2; i++) {
        int fd = i ? cfg->sock_fd2 : cfg->sock_fd, type = 0, dom = 0;
        socklen_t tl = sizeof(type), dl = sizeof(dom);
        if (fd < 0)
            continue;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_DGRAM ||
            getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &dl) < 0) {
            snprintf(err, errlen, "fd %d is not a datagram socket", fd);
            goto fail;
        }
        e->socks[e->nsocks] = fd;
        e->sock_family[e->nsocks++] = dom;
    }
    if (!e->nsocks) {
        snprintf(err, errlen, "no socket");
        goto fail;
    }
    e->ev_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->ev_fd < 0 || e->stop_fd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        goto fail;
    }
    if (cfg->remote_len > sizeof(e->remote) || cfg->remote_len > sizeof(cfg->remote)) {
        snprintf(err, errlen, "bad remote address");
        goto fail;
    }
    memcpy(&e->remote, cfg->remote, cfg->remote_len); /* before any worker runs */
    e->remote_len = cfg->remote_len;
    negotiate(e);
    set_nonblock(cfg->dev_fd, &e->dev_flags0);
    for (int i = 0; i < e->nsocks; i++)
        set_nonblock(e->socks[i], &e->sock_flags0[i]);
    if (pthread_create(&e->rx, NULL, rx_main, e) == 0)
        e->rx_started = 1;
    if (e->rx_started && pthread_create(&e->tx, NULL, tx_main, e) == 0)
        e->tx_started = 1;
    if (!e->tx_started) {
        snprintf(err, errlen, "cannot start worker threads");
        goto fail;
    }
    return e;
fail:
    fp_engine_stop(e);
    return NULL;
}

void fp_engine_stats_get(fp_engine *e, fp_engine_stats *o) {
    uint64_t v[24];
    for (int i = 0; i < 24; i++)
        v[i] = atomic_load_explicit(&e->c.v[i], memory_order_relaxed);
    memset(o, 0, sizeof(*o));
    o->tx_packets = v[C_TX_PACKETS];
    o->tx_bytes = v[C_TX_BYTES];
    o->tx_datagrams_batched = v[C_TX_BATCHED];
    o->tx_no_remote = v[C_TX_NO_REMOTE];
    o->tx_oversize = v[C_TX_OVERSIZE];
    o->tx_error = v[C_TX_ERROR];
    o->tx_segmented = v[C_TX_SEGMENTED];
    o->rx_packets = v[C_RX_PACKETS];
    o->rx_bytes = v[C_RX_BYTES];
    o->rx_short = v[C_RX_SHORT];
    o->rx_auth = v[C_RX_AUTH];
    o->rx_replay = v[C_RX_REPLAY];
    o->rx_too_old = v[C_RX_TOO_OLD];
    o->rx_restart = v[C_RX_RESTART];
    o->rx_bad_mux = v[C_RX_BAD_MUX];
    o->rx_bad_type = v[C_RX_BAD_TYPE];
    o->rx_dev_error = v[C_RX_DEV_ERROR];
    o->rx_coalesced = v[C_RX_COALESCED];
    o->tx_syscalls = v[C_TX_SYSCALLS];
    o->rx_syscalls = v[C_RX_SYSCALLS];
    o->slow_packets = v[C_SLOW];
    o->next_seq = atomic_load(&e->seq);
    o->offloads = (e->tun_offload ? FP_OFF_TUN : 0) | (e->tun_uso ? FP_OFF_TUN_USO : 0) |
                  (e->udp_gso ? FP_OFF_UDP_GSO : 0) | (e->udp_gro ? FP_OFF_UDP_GRO : 0);
}

int fp_engine_set_remote(fp_engine *e, const uint8_t *addr, uint32_t addr_len) {
    if (addr_len > sizeof(struct sockaddr_storage))
        return -1;
    pthread_mutex_lock(&e->lock);
    memset(&e->remote, 0, sizeof(e->remote));
    if (addr_len)
        memcpy(&e->remote, addr, addr_len);
    e->remote_len = addr_len;
    atomic_fetch_add_explicit(&e->remote_gen, 1, memory_order_release);
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int fp_engine_event_fd(fp_engine *e) { return e->ev_fd; }

int fp_engine_next_event(fp_engine *e, fp_event *ev) {
    int got = 0;
    pthread_mutex_lock(&e->lock);
    if (e->ev_count) {
        *ev = e->events[e->ev_head];
        e->ev_head = (e->ev_head + 1) % EVENT_SLOTS;
        e->ev_count--;
        got = 1;
    }
    pthread_mutex_unlock(&e->lock);
    return got;
}

long fp_engine_next_slow(fp_engine *e, uint8_t *buf, size_t cap) {
    slow_pkt p = {0, NULL};
    pthread_mutex_lock(&e->lock);
    if (e->slow_count) {
        p = e->slow[e->slow_head];
        e->slow_head = (e->slow_head + 1) % SLOW_SLOTS;
        e->slow_count--;
    }
    pthread_mutex_unlock(&e->lock);
    if (!p.data)
        return 0;
    size_t n = p.len < cap ? p.len : cap;
    memcpy(buf, p.data, n);
    free(p.data);
    return (long)n;
}

int fp_engine_send(fp_engine *e, uint16_t ptype, const uint8_t *payload, size_t len) {
    if (len > (size_t)e->max_payload)
        return -EMSGSIZE;
    uint8_t d[MAX_INNER];
    pthread_mutex_lock(&e->lock);
    struct sockaddr_storage to = e->remote;
    socklen_t tolen = e->remote_len;
    uint32_t seq = atomic_fetch_add_explicit(&e->seq, 1, memory_order_relaxed);
    memcpy(d + FP_DATA_OFF, payload, len);
    size_t n = fp_seal_inplace(e->inj_crypto, d, len, seq, e->cfg.sender_id, e->cfg.mux, ptype);
    pthread_mutex_unlock(&e->lock);
    int fd = tolen ? sock_for(e, to.ss_family) : -1;
    if (fd < 0) {
        count(&e->c, C_TX_NO_REMOTE, 1);
        return -ENOTCONN;
    }
    for (int tries = 0; tries < 100; tries++) {
        if (sendto(fd, d, n, 0, (struct sockaddr *)&to, tolen) >= 0) {
            count(&e->c, C_TX_PACKETS, 1);
            count(&e->c, C_TX_BYTES, len);
            return 0;
        }
        if (errno != EAGAIN && errno != EINTR)
            break;
        struct pollfd p = {fd, POLLOUT, 0};
        poll(&p, 1, 10);
    }
    int err = errno;
    count(&e->c, C_TX_ERROR, 1);
    return -err;
}

size_t fp_engine_replay_senders(fp_engine *e, uint16_t *ids, uint32_t *highs, size_t max) {
    pthread_mutex_lock(&e->lock);
    size_t n = fp_replay_senders(e->replay, ids, highs, max);
    pthread_mutex_unlock(&e->lock);
    return n;
}

void fp_engine_replay_advance(fp_engine *e, uint16_t sender_id, uint32_t high) {
    pthread_mutex_lock(&e->lock);
    fp_replay_advance(e->replay, sender_id, high, mono_now());
    pthread_mutex_unlock(&e->lock);
}

void fp_engine_advance_seq(fp_engine *e, uint32_t seq) {
    uint32_t cur = atomic_load(&e->seq);
    while (seq - cur - 1 < 0x7fffffffu) /* seq is ahead of cur (serial arithmetic) */
        if (atomic_compare_exchange_weak(&e->seq, &cur, seq))
            break;
}
