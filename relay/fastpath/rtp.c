/* Relay mode's media path in C: worker threads forward RTP/RTCP between relay sockets.
 *
 * A leg is one relay socket (the RTP or RTCP port of one party): what arrives from an
 * accepted source goes out of the peer's socket (`out_fd`) to the peer's destination. Per
 * wake-up a worker reads up to BATCH datagrams of a leg with recvmmsg and sends them with one
 * sendmmsg; nothing is allocated per packet and Python is never on the packet path.
 *
 * Which sources to accept is Python's latching policy (relay/rtpproxy/sessions.admit), given
 * to each leg as: the accepted source, plus the sources the policy would accept on first
 * sight (one or two hosts, or any). A packet from such a source is forwarded at once, its
 * source becomes the accepted one ("sticky" legs: symmetric parties latch) and Python hears of
 * it through an event queue to do the bookkeeping (record, log, tell the cluster, re-wire).
 * Everything else is dropped here. Counters per leg are collected in bulk.
 *
 * Recording: a leg with `record` set also copies each packet it accepts (before forwarding it)
 * into one bounded ring that Python drains into the call's pcap file. A full ring costs the
 * copy, never the packet: it is forwarded and the lost copy counted. Legs that do not record
 * pay one test of a flag per packet; the ring is allocated when the first leg records.
 *
 * Legs live in pages that are never moved, so workers read them without a table lock; each
 * leg has its own mutex (held by a worker while it processes the leg, so removal waits for a
 * batch in flight) and a generation that stale epoll events are checked against.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fastpath.h"

#define BATCH 64
#define BUF 2048
#define PAGE 256
#define MAX_PAGES 1024 /* 262144 legs */
#define EVENT_SLOTS 4096
#define MAX_WORKERS 8
#define REC_SLOTS 4096
#define REC_WAKE (REC_SLOTS / 4) /* Python is woken when this many copies wait */

typedef struct rleg {
    pthread_mutex_t mu;
    uint32_t gen;
    int used;
    int fd;
    int worker;
    int out_fd; /* -1: not wired */
    struct sockaddr_storage dest;
    socklen_t dest_len; /* 0: nowhere to send (hold, unknown) */
    struct sockaddr_storage src; /* accepted source: forwarded at once */
    socklen_t src_len;
    int ask;                      /* other sources: FP_ASK_* */
    int sticky;                   /* the first source accepted becomes the only one */
    int record;                   /* copy accepted packets into the recording ring */
    struct sockaddr_storage ask_host[2];
    socklen_t ask_len[2];
    _Atomic uint64_t got, relayed, dropped, bytes_in, bytes_out, last_ns;
    _Atomic int dirty;
} rleg;

typedef struct accept_event {
    int id;
    uint32_t gen;
    socklen_t src_len;
    struct sockaddr_storage src;
} accept_event;

typedef struct rec_slot {
    int id;
    uint32_t gen;
    uint64_t ts_ns; /* CLOCK_REALTIME */
    socklen_t src_len;
    struct sockaddr_storage src;
    uint32_t len;
    uint8_t data[BUF];
} rec_slot;

typedef struct worker {
    pthread_t th;
    int ep;
    int started;
    struct fp_rtp *r;
} worker;

struct fp_rtp {
    int nworkers;
    worker w[MAX_WORKERS];
    int stop_fd, ev_fd;
    _Atomic int stopping;
    pthread_mutex_t table_mu; /* adding/removing legs, the free list */
    rleg *pages[MAX_PAGES];
    int npages;
    int *free_ids;
    int nfree, free_cap;
    int next_worker;
    pthread_mutex_t ev_mu;
    accept_event *events;
    int ev_head, ev_count;
    _Atomic uint64_t ev_overflow;
    pthread_mutex_t rec_mu;
    rec_slot *rec;
    int rec_head, rec_count, rec_fd;
    _Atomic uint64_t rec_lost;
};

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static rleg *leg_at(fp_rtp *r, int id) {
    if (id < 0 || id / PAGE >= r->npages)
        return NULL;
    return &r->pages[id / PAGE][id % PAGE];
}

/* Same host (and port, if `port`) as `want` (want_len 0 never matches). */
static int same(const struct sockaddr_storage *a, socklen_t alen,
                const struct sockaddr_storage *want, socklen_t want_len, int port) {
    if (!want_len || a->ss_family != want->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)want;
        return x->sin_addr.s_addr == y->sin_addr.s_addr && (!port || x->sin_port == y->sin_port);
    }
    if (a->ss_family == AF_INET6 && alen >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)want;
        return !memcmp(&x->sin6_addr, &y->sin6_addr, 16) &&
               (!port || x->sin6_port == y->sin6_port);
    }
    return 0;
}

/* Would Python's latching policy accept a packet from `a` (not the accepted source)? */
static int acceptable(const rleg *l, const struct sockaddr_storage *a, socklen_t alen) {
    if (l->ask == FP_ASK_ANY)
        return 1;
    if (l->ask != FP_ASK_HOSTS)
        return 0;
    return same(a, alen, &l->ask_host[0], l->ask_len[0], 0) ||
           same(a, alen, &l->ask_host[1], l->ask_len[1], 0);
}

/* Tell Python a new source was accepted (it records the latch, logs, re-wires). */
static void push_event(fp_rtp *r, int id, uint32_t gen, const struct sockaddr_storage *src,
                       socklen_t src_len) {
    int queued = 0;
    pthread_mutex_lock(&r->ev_mu);
    if (r->ev_count < EVENT_SLOTS) {
        accept_event *it = &r->events[(r->ev_head + r->ev_count) % EVENT_SLOTS];
        it->id = id;
        it->gen = gen;
        memcpy(&it->src, src, src_len);
        it->src_len = src_len;
        r->ev_count++;
        queued = 1;
    }
    pthread_mutex_unlock(&r->ev_mu);
    if (queued) {
        uint64_t one = 1;
        ssize_t w = write(r->ev_fd, &one, sizeof(one));
        (void)w;
    } else {
        /* Python does not learn of this latch; its next re-wiring resets the leg to its own
         * view and the next packet is accepted (and announced) again */
        atomic_fetch_add(&r->ev_overflow, 1);
    }
}

/* A copy of an accepted packet for the recording (called with the leg's mutex held). */
static void record_push(fp_rtp *r, int id, uint32_t gen, const struct sockaddr_storage *src,
                        socklen_t src_len, const uint8_t *data, size_t len) {
    int wake = 0, queued = 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    pthread_mutex_lock(&r->rec_mu);
    if (r->rec && r->rec_count < REC_SLOTS) {
        rec_slot *it = &r->rec[(r->rec_head + r->rec_count) % REC_SLOTS];
        it->id = id;
        it->gen = gen;
        it->ts_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        memcpy(&it->src, src, src_len);
        it->src_len = src_len;
        it->len = (uint32_t)len;
        memcpy(it->data, data, len);
        wake = ++r->rec_count == REC_WAKE;
        queued = 1;
    }
    pthread_mutex_unlock(&r->rec_mu);
    if (!queued)
        atomic_fetch_add(&r->rec_lost, 1);
    if (wake) {
        uint64_t one = 1;
        ssize_t w = write(r->rec_fd, &one, sizeof(one));
        (void)w;
    }
}

typedef struct wbufs {
    uint8_t data[BATCH][BUF];
    struct iovec iov[BATCH], out_iov[BATCH];
    struct sockaddr_storage from[BATCH];
    struct mmsghdr in[BATCH], out[BATCH];
} wbufs;

/* One batch of one leg; called with the leg's mutex held. */
static void forward_batch(fp_rtp *r, rleg *l, int id, wbufs *b) {
    for (int i = 0; i < BATCH; i++) {
        b->iov[i] = (struct iovec){b->data[i], BUF};
        b->in[i].msg_hdr = (struct msghdr){.msg_name = &b->from[i],
                                           .msg_namelen = sizeof(b->from[i]),
                                           .msg_iov = &b->iov[i],
                                           .msg_iovlen = 1};
    }
    int n = recvmmsg(l->fd, b->in, BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0)
        return;
    int nout = 0, failed = 0;
    uint64_t bytes_in = 0, bytes_out = 0, dropped = 0;
    int wired = l->out_fd >= 0 && l->dest_len;
    for (int i = 0; i < n; i++) {
        size_t len = b->in[i].msg_len;
        bytes_in += len;
        if (b->in[i].msg_hdr.msg_flags & MSG_TRUNC) {
            dropped++;
            continue;
        }
        socklen_t fl = b->in[i].msg_hdr.msg_namelen;
        if (!same(&b->from[i], fl, &l->src, l->src_len, 1)) {
            if (!acceptable(l, &b->from[i], fl)) {
                dropped++; /* Python's admit would say "drop" */
                continue;
            }
            memcpy(&l->src, &b->from[i], fl); /* following packets take the fast test */
            l->src_len = fl;
            if (l->sticky)
                l->ask = FP_ASK_NONE;
            push_event(r, id, l->gen, &b->from[i], fl);
        }
        if (l->record)
            record_push(r, id, l->gen, &b->from[i], fl, b->data[i], len);
        if (!wired) {
            dropped++;
            continue;
        }
        b->out_iov[nout] = (struct iovec){b->data[i], len};
        b->out[nout].msg_hdr = (struct msghdr){.msg_name = &l->dest,
                                               .msg_namelen = l->dest_len,
                                               .msg_iov = &b->out_iov[nout],
                                               .msg_iovlen = 1};
        bytes_out += len;
        nout++;
    }
    int sent = 0;
    while (sent < nout) {
        int k = sendmmsg(l->out_fd, b->out + sent, (unsigned)(nout - sent), MSG_DONTWAIT);
        if (k > 0) {
            sent += k;
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        /* buffer full or an error remembered by the socket: this packet is lost */
        bytes_out -= b->out[sent].msg_hdr.msg_iov->iov_len;
        failed++;
        sent++;
    }
    dropped += (uint64_t)failed;
    atomic_fetch_add_explicit(&l->got, (uint64_t)n, memory_order_relaxed);
    atomic_fetch_add_explicit(&l->relayed, (uint64_t)(nout - failed), memory_order_relaxed);
    atomic_fetch_add_explicit(&l->dropped, dropped, memory_order_relaxed);
    atomic_fetch_add_explicit(&l->bytes_in, bytes_in, memory_order_relaxed);
    atomic_fetch_add_explicit(&l->bytes_out, bytes_out, memory_order_relaxed);
    atomic_store_explicit(&l->last_ns, mono_ns(), memory_order_relaxed);
    atomic_store_explicit(&l->dirty, 1, memory_order_release);
}

static void *worker_main(void *arg) {
    worker *w = arg;
    fp_rtp *r = w->r;
    wbufs *b = malloc(sizeof(*b));
    struct epoll_event evs[64];
    while (b && !atomic_load(&r->stopping)) {
        int n = epoll_wait(w->ep, evs, 64, 1000);
        for (int i = 0; i < n; i++) {
            uint64_t key = evs[i].data.u64;
            if (key == UINT64_MAX)
                continue; /* the stop eventfd */
            int id = (int)(key & 0xffffffffu);
            uint32_t gen = (uint32_t)(key >> 32);
            rleg *l = leg_at(r, id);
            if (!l)
                continue;
            pthread_mutex_lock(&l->mu);
            if (l->used && l->gen == gen)
                forward_batch(r, l, id, b);
            pthread_mutex_unlock(&l->mu);
        }
    }
    free(b);
    return NULL;
}

void fp_rtp_stop(fp_rtp *r) {
    if (!r)
        return;
    atomic_store(&r->stopping, 1);
    uint64_t one = 1;
    if (r->stop_fd >= 0 && write(r->stop_fd, &one, sizeof(one)) < 0) {
        /* the epoll timeout ends the workers anyway */
    }
    for (int i = 0; i < r->nworkers; i++) {
        if (r->w[i].started)
            pthread_join(r->w[i].th, NULL);
        if (r->w[i].ep >= 0)
            close(r->w[i].ep);
    }
    for (int p = 0; p < r->npages; p++) {
        for (int k = 0; k < PAGE; k++)
            pthread_mutex_destroy(&r->pages[p][k].mu);
        free(r->pages[p]);
    }
    if (r->stop_fd >= 0)
        close(r->stop_fd);
    if (r->ev_fd >= 0)
        close(r->ev_fd);
    if (r->rec_fd >= 0)
        close(r->rec_fd);
    free(r->free_ids);
    free(r->events);
    free(r->rec);
    pthread_mutex_destroy(&r->table_mu);
    pthread_mutex_destroy(&r->ev_mu);
    pthread_mutex_destroy(&r->rec_mu);
    free(r);
}

fp_rtp *fp_rtp_start(int workers, char *err, size_t errlen) {
    if (workers < 1 || workers > MAX_WORKERS) {
        snprintf(err, errlen, "workers must be 1..%d", MAX_WORKERS);
        return NULL;
    }
    fp_rtp *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&r->table_mu, NULL);
    pthread_mutex_init(&r->ev_mu, NULL);
    pthread_mutex_init(&r->rec_mu, NULL);
    r->nworkers = workers;
    r->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->ev_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->rec_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->events = calloc(EVENT_SLOTS, sizeof(accept_event));
    for (int i = 0; i < workers; i++)
        r->w[i].ep = -1;
    if (r->stop_fd < 0 || r->ev_fd < 0 || r->rec_fd < 0 || !r->events) {
        snprintf(err, errlen, "cannot set up: %s", strerror(errno));
        fp_rtp_stop(r);
        return NULL;
    }
    for (int i = 0; i < workers; i++) {
        worker *w = &r->w[i];
        w->r = r;
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data = {.u64 = UINT64_MAX}};
        if (w->ep < 0 || epoll_ctl(w->ep, EPOLL_CTL_ADD, r->stop_fd, &ev) < 0 ||
            pthread_create(&w->th, NULL, worker_main, w) != 0) {
            snprintf(err, errlen, "cannot start worker threads");
            fp_rtp_stop(r);
            return NULL;
        }
        w->started = 1;
    }
    return r;
}

int fp_rtp_leg_add(fp_rtp *r, int fd) {
    pthread_mutex_lock(&r->table_mu);
    int id;
    if (r->nfree) {
        id = r->free_ids[--r->nfree];
    } else {
        if (r->npages == MAX_PAGES) {
            pthread_mutex_unlock(&r->table_mu);
            return -ENOSPC;
        }
        rleg *page = calloc(PAGE, sizeof(rleg));
        int *ids = realloc(r->free_ids, sizeof(int) * (size_t)(r->free_cap + PAGE));
        if (!page || !ids) {
            free(page);
            if (ids)
                r->free_ids = ids;
            pthread_mutex_unlock(&r->table_mu);
            return -ENOMEM;
        }
        r->free_ids = ids;
        r->free_cap += PAGE;
        for (int k = 0; k < PAGE; k++)
            pthread_mutex_init(&page[k].mu, NULL);
        int base = r->npages * PAGE;
        r->pages[r->npages++] = page;
        for (int k = PAGE - 1; k >= 1; k--)
            r->free_ids[r->nfree++] = base + k;
        id = base;
    }
    rleg *l = leg_at(r, id);
    int wk = r->next_worker;
    r->next_worker = (r->next_worker + 1) % r->nworkers;
    pthread_mutex_unlock(&r->table_mu);

    pthread_mutex_lock(&l->mu);
    l->gen++;
    l->used = 1;
    l->fd = fd;
    l->worker = wk;
    l->out_fd = -1;
    l->dest_len = l->src_len = 0;
    l->ask = FP_ASK_NONE; /* until Python wires it, nothing is forwarded */
    l->sticky = 1;
    l->record = 0;
    l->ask_len[0] = l->ask_len[1] = 0;
    atomic_store(&l->got, 0);
    atomic_store(&l->relayed, 0);
    atomic_store(&l->dropped, 0);
    atomic_store(&l->bytes_in, 0);
    atomic_store(&l->bytes_out, 0);
    atomic_store(&l->last_ns, 0);
    atomic_store(&l->dirty, 0);
    struct epoll_event ev = {.events = EPOLLIN, .data = {.u64 = (uint64_t)l->gen << 32 |
                                                                  (uint32_t)id}};
    int rc = epoll_ctl(r->w[wk].ep, EPOLL_CTL_ADD, fd, &ev);
    int e = errno;
    if (rc < 0)
        l->used = 0;
    pthread_mutex_unlock(&l->mu);
    if (rc < 0) {
        pthread_mutex_lock(&r->table_mu);
        r->free_ids[r->nfree++] = id;
        pthread_mutex_unlock(&r->table_mu);
        return -e;
    }
    return id;
}

int fp_rtp_leg_set(fp_rtp *r, int id, int out_fd, const uint8_t *dest, uint32_t dest_len,
                   const uint8_t *src, uint32_t src_len, int ask, int sticky,
                   const uint8_t *ask1, uint32_t ask1_len, const uint8_t *ask2,
                   uint32_t ask2_len) {
    rleg *l = leg_at(r, id);
    if (!l || dest_len > sizeof(l->dest) || src_len > sizeof(l->src) || ask < 0 ||
        ask > FP_ASK_ANY || ask1_len > sizeof(l->ask_host[0]) ||
        ask2_len > sizeof(l->ask_host[1]))
        return -EINVAL;
    pthread_mutex_lock(&l->mu);
    int ok = l->used;
    if (ok) {
        l->out_fd = out_fd;
        memset(&l->dest, 0, sizeof(l->dest));
        memcpy(&l->dest, dest, dest_len);
        l->dest_len = dest_len;
        memset(&l->src, 0, sizeof(l->src));
        memcpy(&l->src, src, src_len);
        l->src_len = src_len;
        l->ask = ask;
        l->sticky = sticky;
        memset(l->ask_host, 0, sizeof(l->ask_host));
        memcpy(&l->ask_host[0], ask1, ask1_len);
        memcpy(&l->ask_host[1], ask2, ask2_len);
        l->ask_len[0] = ask1_len;
        l->ask_len[1] = ask2_len;
    }
    pthread_mutex_unlock(&l->mu);
    return ok ? 0 : -ENOENT;
}

int fp_rtp_leg_remove(fp_rtp *r, int id) {
    rleg *l = leg_at(r, id);
    if (!l)
        return -EINVAL;
    pthread_mutex_lock(&l->mu); /* waits for a batch in flight */
    if (!l->used) {
        pthread_mutex_unlock(&l->mu);
        return -ENOENT;
    }
    epoll_ctl(r->w[l->worker].ep, EPOLL_CTL_DEL, l->fd, NULL);
    l->used = 0;
    l->gen++; /* events already fetched for this leg are ignored */
    pthread_mutex_unlock(&l->mu);
    pthread_mutex_lock(&r->table_mu);
    r->free_ids[r->nfree++] = id;
    pthread_mutex_unlock(&r->table_mu);
    return 0;
}

size_t fp_rtp_collect(fp_rtp *r, fp_rtp_counters *out, size_t max) {
    size_t n = 0;
    pthread_mutex_lock(&r->table_mu);
    int npages = r->npages;
    pthread_mutex_unlock(&r->table_mu);
    for (int p = 0; p < npages && n < max; p++)
        for (int k = 0; k < PAGE && n < max; k++) {
            rleg *l = &r->pages[p][k];
            if (!atomic_exchange_explicit(&l->dirty, 0, memory_order_acquire))
                continue;
            fp_rtp_counters *c = &out[n++];
            c->id = p * PAGE + k;
            c->got = atomic_load(&l->got);
            c->relayed = atomic_load(&l->relayed);
            c->dropped = atomic_load(&l->dropped);
            c->bytes_in = atomic_load(&l->bytes_in);
            c->bytes_out = atomic_load(&l->bytes_out);
            c->last_ns = atomic_load(&l->last_ns);
        }
    return n;
}

int fp_rtp_event_fd(fp_rtp *r) { return r->ev_fd; }

int fp_rtp_next_event(fp_rtp *r, int *id, uint8_t *src, uint32_t *src_len) {
    int got = 0;
    pthread_mutex_lock(&r->ev_mu);
    while (r->ev_count && !got) {
        accept_event *it = &r->events[r->ev_head];
        r->ev_head = (r->ev_head + 1) % EVENT_SLOTS;
        r->ev_count--;
        rleg *l = leg_at(r, it->id);
        if (!l || l->gen != it->gen)
            continue; /* the leg went away meanwhile */
        *id = it->id;
        memcpy(src, &it->src, it->src_len);
        *src_len = it->src_len;
        got = 1;
    }
    pthread_mutex_unlock(&r->ev_mu);
    return got;
}

uint64_t fp_rtp_overflow(fp_rtp *r) { return atomic_load(&r->ev_overflow); }

int fp_rtp_leg_record(fp_rtp *r, int id, int on) {
    rleg *l = leg_at(r, id);
    if (!l)
        return -EINVAL;
    if (on) {
        pthread_mutex_lock(&r->rec_mu);
        if (!r->rec)
            r->rec = malloc(sizeof(rec_slot) * REC_SLOTS);
        int ok = r->rec != NULL;
        pthread_mutex_unlock(&r->rec_mu);
        if (!ok)
            return -ENOMEM;
    }
    pthread_mutex_lock(&l->mu);
    int used = l->used;
    if (used)
        l->record = on ? 1 : 0;
    pthread_mutex_unlock(&l->mu);
    return used ? 0 : -ENOENT;
}

int fp_rtp_record_fd(fp_rtp *r) { return r->rec_fd; }

int fp_rtp_record_next(fp_rtp *r, int *id, uint64_t *ts_ns, uint8_t *src, uint32_t *src_len,
                       uint8_t *data, uint32_t cap, uint32_t *len) {
    int got = 0;
    pthread_mutex_lock(&r->rec_mu);
    while (r->rec_count && !got) {
        rec_slot *it = &r->rec[r->rec_head];
        r->rec_head = (r->rec_head + 1) % REC_SLOTS;
        r->rec_count--;
        rleg *l = leg_at(r, it->id);
        if (!l || l->gen != it->gen)
            continue; /* the leg went away meanwhile */
        *id = it->id;
        *ts_ns = it->ts_ns;
        memcpy(src, &it->src, it->src_len);
        *src_len = it->src_len;
        *len = it->len < cap ? it->len : cap;
        memcpy(data, it->data, *len);
        got = 1;
    }
    pthread_mutex_unlock(&r->rec_mu);
    return got;
}

uint64_t fp_rtp_record_lost(fp_rtp *r) { return atomic_load(&r->rec_lost); }
