/* The server-mode workers: one thread per core, each with an epoll set over its own UDP /
 * UDP-Lite sockets (members of SO_REUSEPORT groups, so the kernel keeps each client's
 * datagrams on one worker), its own queue of a multi-queue TUN/TAP device, and the streams
 * given to it. Per wake-up: read batches (recvmmsg with UDP GRO, device reads with TUN
 * offloads, stream reads), decide (hub_core.c), and send what accumulated: one sendmmsg per
 * socket with UDP GSO trains for runs of equal-sized datagrams to one peer, coalesced device
 * writes, one write per stream.
 *
 * A worker sends on any worker's socket (sendmmsg is thread-safe) and appends to any stream
 * (under the stream's output lock); only the owner reads a stream and serves its EPOLLOUT.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include "hub.h"

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

#define GSO_MAX_SEGS 64
#define GSO_MAX_BYTES 65000
#define RX_MSGS_GRO 32
#define RX_BUF_GRO 65536
#define RX_MSGS 64
#define RX_BUF 2048
#define READ_BUDGET 128    /* device packets per wake-up before the other fds get a turn */
#define STREAM_IN_MAX (HUB_MAX_INNER + 64)
#define SBUF_HEAD 16       /* room for a framing's header in front of a stream datagram */

/* epoll tags in the low bits of epoll_data.u64 (streams: the pointer, tag 0) */
enum { TAG_STREAM = 0, TAG_DEVICE = 1, TAG_SOCKET = 2, TAG_WAKE = 3 };

typedef union rx_ctl {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
} rx_ctl;

struct hub_rxbufs {
    int n;
    size_t size;
    uint8_t *arena;
    struct mmsghdr *mm;
    struct iovec *iov;
    struct sockaddr_storage *from;
    rx_ctl *ctl;
};


/* ---- sinks ----------------------------------------------------------------------------- */

static int capture(hub_worker *w, uint32_t kind, const fp_remote *to, const uint8_t *d,
                   size_t len) {
    if (w->cap_n == w->cap_max || w->cap_used + len > w->cap_size) {
        w->cap_overflow = 1;
        return 0;
    }
    fp_hub_out *o = &w->cap_outs[w->cap_n++];
    memset(o, 0, sizeof(*o));
    o->kind = kind;
    if (to)
        o->remote = *to;
    o->off = (uint32_t)w->cap_used;
    o->len = (uint32_t)len;
    if (d != w->cap_buf + w->cap_used)
        memmove(w->cap_buf + w->cap_used, d, len);
    w->cap_used += len;
    return 1;
}

static int udp_sock(hub_worker *w, const fp_remote *to) {
    fp_hub *h = w->h;
    int k = to->kind == FP_RK_UDPLITE;
    const struct sockaddr *sa = (const void *)to->addr;
    int f = to->addr_len >= sizeof(sa_family_t) && sa->sa_family == AF_INET6;
    if (w->socks[k][f] >= 0)
        return w->socks[k][f];
    if (h->any_sock[k][f] >= 0)
        return h->any_sock[k][f];
    /* like the Python endpoint: no transport of this kind, or no socket of this family */
    hub_nc(w, h->any_sock[k][!f] >= 0 ? FP_NC_SEND_ERROR : FP_NC_NO_TRANSPORT, 1);
    return -1;
}

uint8_t *hub_out_room(hub_worker *w, const fp_remote *to, size_t need) {
    if (w->cap_buf) {
        if (w->cap_used + need > w->cap_size) {
            w->cap_overflow = 1;
            return NULL;
        }
        return w->cap_buf + w->cap_used;
    }
    if (to->kind == FP_RK_STREAM) {
        if (need + SBUF_HEAD <= HUB_SCRATCH)
            return w->sbuf + SBUF_HEAD;
        hub_nc(w, FP_NC_STREAM_DROPPED, 1);
        return NULL;
    }
    int sock = udp_sock(w, to);
    if (sock < 0)
        return NULL;
    if (w->used + need > HUB_TX_ARENA || w->nmsgs == HUB_TX_MSGS)
        hub_flush(w);
    w->room_sock = sock;
    return w->arena + w->used;
}

static int stream_append(hub_worker *w, hub_stream *s, const uint8_t *hdr, size_t hl,
                         const uint8_t *d, size_t len);

void hub_out_commit(hub_worker *w, const fp_remote *to, uint8_t *d, size_t len) {
    if (w->cap_buf) {
        capture(w, 2, to, d, len);
        return;
    }
    if (to->kind == FP_RK_STREAM) {
        hub_stream *s = hub_stream_get(w->h, to->stream);
        if (!s || atomic_load_explicit(&s->dead, memory_order_relaxed)) {
            hub_nc(w, FP_NC_STREAM_DROPPED, 1);
            return;
        }
        uint8_t hdr[SBUF_HEAD];
        size_t hl = s->framing->encode(s->fstate, hdr, len);
        if (!hl && s->framing->header_len) { /* does not fit a frame */
            hub_nc(w, FP_NC_STREAM_DROPPED, 1);
            return;
        }
        if (stream_append(w, s, hdr, hl, d, len))
            hub_nc(w, s->nc_tx, 1);
        return;
    }
    hub_msg *m = w->nmsgs ? &w->msgs[w->nmsgs - 1] : NULL;
    if (w->h->udp_gso && to->kind == FP_RK_UDP && m && !m->closed && m->sock == w->room_sock &&
        m->off + m->len == w->used && len <= m->seg && m->count < GSO_MAX_SEGS &&
        m->len + len <= GSO_MAX_BYTES && hub_remote_equal(&m->to, to)) {
        m->len += len;
        m->count++;
        if (len < m->seg)
            m->closed = 1;
    } else {
        m = &w->msgs[w->nmsgs++];
        *m = (hub_msg){w->used, len, len, 1, 0, w->room_sock, *to};
    }
    w->used += len;
    if (++w->ndgrams >= HUB_TX_BUDGET)
        hub_flush(w);
}

void hub_out_dev(hub_worker *w, const uint8_t *pkt, size_t len) {
    fp_hub *h = w->h;
    if (w->cap_buf) {
        capture(w, 1, NULL, pkt, len);
        return;
    }
    if (w->co) {
        fp_coalescer_add(w->co, pkt, len);
        return;
    }
    int fd = w->dev_fd >= 0 ? w->dev_fd : h->any_dev;
    if (fd < 0) {
        hub_nc(w, FP_NC_DEVICE_WRITE, 1);
        return;
    }
    static const uint8_t zero_vh[sizeof(fp_vnet_hdr)];
    struct iovec iov[2] = {{(void *)zero_vh, sizeof(zero_vh)}, {(void *)pkt, len}};
    int vh = h->cfg.vnet_hdr != 0;
    ssize_t r;
    do
        r = writev(fd, iov + !vh, 1 + vh);
    while (r < 0 && errno == EINTR);
    hub_nc(w, FP_NC_TX_SYSCALLS, 1);
    if (r < 0)
        hub_nc(w, FP_NC_DEVICE_WRITE, 1);
}

/* ---- sending ------------------------------------------------------------------------------ */

static void send_run(hub_worker *w, int first, int end) {
    int n = end - first;
    struct mmsghdr mm[HUB_TX_MSGS];
    struct iovec iov[HUB_TX_MSGS];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl[HUB_TX_MSGS];
    memset(mm, 0, sizeof(struct mmsghdr) * (size_t)n);
    for (int i = 0; i < n; i++) {
        hub_msg *m = &w->msgs[first + i];
        iov[i] = (struct iovec){w->arena + m->off, m->len};
        struct msghdr *hd = &mm[i].msg_hdr;
        hd->msg_iov = &iov[i];
        hd->msg_iovlen = 1;
        hd->msg_name = m->to.addr;
        hd->msg_namelen = m->to.addr_len;
        if (m->count > 1) {
            memset(ctl[i].buf, 0, sizeof(ctl[i].buf));
            hd->msg_control = ctl[i].buf;
            hd->msg_controllen = sizeof(ctl[i].buf);
            struct cmsghdr *cm = CMSG_FIRSTHDR(hd);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = (uint16_t)m->seg;
            memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
        }
        if (m->count > 1 || n > 1)
            hub_nc(w, FP_NC_TX_BATCHED, (uint64_t)m->count);
    }
    int sock = w->msgs[first].sock, done = 0, retries = 0;
    while (done < n) {
        int r = sendmmsg(sock, mm + done, (unsigned)(n - done), 0);
        hub_nc(w, FP_NC_TX_SYSCALLS, 1);
        if (r > 0) {
            done += r;
            continue;
        }
        if (errno == EINTR)
            continue;
        hub_msg *m = &w->msgs[first + done];
        if (errno == EAGAIN && retries++ < 4) {
            struct pollfd p = {sock, POLLOUT, 0};
            poll(&p, 1, 5);
            continue;
        }
        if ((errno == EIO || errno == EINVAL) && m->count > 1) {
            /* the path refuses trains: this one datagram by datagram, no trains from now on */
            w->h->udp_gso = 0;
            for (size_t off = 0; off < m->len; off += m->seg) {
                size_t dl = m->len - off < m->seg ? m->len - off : m->seg;
                if (sendto(sock, w->arena + m->off + off, dl, 0, (void *)m->to.addr,
                           m->to.addr_len) < 0)
                    hub_nc(w, FP_NC_SEND_ERROR, 1);
            }
        } else {
            hub_nc(w, FP_NC_SEND_ERROR, (uint64_t)m->count);
        }
        done++;
    }
}

static void stream_flush(hub_worker *w, hub_stream *s);

void hub_flush(hub_worker *w) {
    int first = 0;
    for (int i = 1; i <= w->nmsgs; i++)
        if (i == w->nmsgs || w->msgs[i].sock != w->msgs[first].sock) {
            send_run(w, first, i);
            first = i;
        }
    w->nmsgs = w->ndgrams = 0;
    w->used = 0;
    if (w->co) {
        fp_coalescer_flush(w->co);
        hub_nc(w, FP_NC_COALESCED, fp_coalescer_take_merged(w->co));
        hub_nc(w, FP_NC_DEVICE_WRITE, fp_coalescer_take_errors(w->co));
        hub_nc(w, FP_NC_TX_SYSCALLS, fp_coalescer_take_writes(w->co));
    }
    for (int i = 0; i < w->nflush; i++)
        stream_flush(w, w->flush[i]);
    w->nflush = 0;
}

/* ---- streams ------------------------------------------------------------------------------ */

void hub_stream_free(void *p) {
    hub_stream *s = p;
    if (s->fd >= 0)
        close(s->fd);
    free(s->fstate);
    free(s->in);
    free(s->out);
    pthread_mutex_destroy(&s->out_lock);
    free(s);
}

static int epoll_mod(fp_hub *h, hub_stream *s, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = s};
    return epoll_ctl(h->w[s->worker]->epfd, EPOLL_CTL_MOD, s->fd, &ev);
}

int hub_stream_register(fp_hub *h, hub_stream *s) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = s};
    int fl = fcntl(s->fd, F_GETFL);
    if (fl < 0 || fcntl(s->fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -1;
    return epoll_ctl(h->w[s->worker]->epfd, EPOLL_CTL_ADD, s->fd, &ev);
}

static void stream_end(hub_worker *w, hub_stream *s, int err) {
    if (atomic_exchange(&s->dead, 1))
        return;
    epoll_ctl(w->epfd, EPOLL_CTL_DEL, s->fd, NULL);
    fp_hub_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.kind = FP_HEV_STREAM_CLOSED;
    ev.error = err;
    ev.remote = s->peer;
    hub_push_event(w->h, &ev);
}

static void stream_flush(hub_worker *w, hub_stream *s) {
    atomic_store(&s->pending, 0); /* appends from now on list it again */
    pthread_mutex_lock(&s->out_lock);
    while (s->out_len && !atomic_load_explicit(&s->dead, memory_order_relaxed)) {
        ssize_t n = write(s->fd, s->out + s->out_off, s->out_len);
        hub_nc(w, FP_NC_TX_SYSCALLS, 1);
        if (n > 0) {
            s->out_off += (size_t)n;
            s->out_len -= (size_t)n;
            atomic_store_explicit(&s->last_tx_ns, w->now_ns, memory_order_relaxed);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN && !s->out_armed &&
            epoll_mod(w->h, s, EPOLLIN | EPOLLRDHUP | EPOLLOUT) == 0)
            s->out_armed = 1;
        break; /* EAGAIN: EPOLLOUT resumes; an error: the owner's read reports it */
    }
    if (!s->out_len) {
        s->out_off = 0;
        if (s->out_armed && epoll_mod(w->h, s, EPOLLIN | EPOLLRDHUP) == 0)
            s->out_armed = 0;
        if (s->out_cap > 256 * 1024) { /* a burst is over: give the memory back */
            free(s->out);
            s->out = NULL;
            s->out_cap = 0;
        }
    }
    pthread_mutex_unlock(&s->out_lock);
}

/* 1: queued; 0: dropped (counted) */
static int stream_append(hub_worker *w, hub_stream *s, const uint8_t *hdr, size_t hl,
                         const uint8_t *d, size_t len) {
    size_t need = hl + len;
    pthread_mutex_lock(&s->out_lock);
    if (s->out_len + need > HUB_STREAM_OUT_MAX) {
        pthread_mutex_unlock(&s->out_lock);
        hub_nc(w, FP_NC_STREAM_DROPPED, 1); /* like a full queue (Python: MAX_BUFFERED) */
        return 0;
    }
    if (s->out_off + s->out_len + need > s->out_cap) {
        if (s->out_off) {
            memmove(s->out, s->out + s->out_off, s->out_len);
            s->out_off = 0;
        }
        if (s->out_len + need > s->out_cap) {
            size_t cap = s->out_cap ? s->out_cap : 16384;
            while (cap < s->out_len + need)
                cap *= 2;
            uint8_t *grown = realloc(s->out, cap);
            if (!grown) {
                pthread_mutex_unlock(&s->out_lock);
                hub_nc(w, FP_NC_STREAM_DROPPED, 1);
                return 0;
            }
            s->out = grown;
            s->out_cap = cap;
        }
    }
    uint8_t *at = s->out + s->out_off + s->out_len;
    memcpy(at, hdr, hl);
    if (len)
        memcpy(at + hl, d, len);
    s->out_len += need;
    pthread_mutex_unlock(&s->out_lock);
    if (!atomic_exchange(&s->pending, 1)) {
        if (w->nflush == (int)(sizeof(w->flush) / sizeof(w->flush[0]))) {
            stream_flush(w, s);
            return 1;
        }
        w->flush[w->nflush++] = s;
    }
    return 1;
}

/* For resynchronising framings: does a candidate datagram authenticate? (no replay check,
 * nothing learned) 1 yes, 0 no, -1 cannot tell: no such connection or null auth, as the
 * Python plane's Endpoint.authentic. */
static int frame_check(void *ctx, const uint8_t *d, size_t len) {
    hub_worker *w = ctx;
    if (len < FP_HEADER_LEN || len > HUB_MAX_INNER)
        return 0;
    hub_conn *c = hub_conn_at(w->h, rd16(d + 6));
    hub_keys *k = c ? atomic_load(&c->keys) : NULL;
    if (!k || !k->spec.suite.auth || !k->spec.suite.tag_len)
        return -1;
    hub_rx *rx = hub_rx_of(w->h, k);
    if (!rx)
        return -1;
    memcpy(w->scratch, d, len);
    fp_hdr hdr;
    pthread_mutex_lock(&rx->lock);
    long n = fp_open_inplace(rx->satp, w->scratch, len, &hdr);
    pthread_mutex_unlock(&rx->lock);
    return n >= 0;
}

static void stream_read(hub_worker *w, hub_stream *s) {
    for (int round = 0; round < 16 && !atomic_load(&s->dead); round++) {
        if (s->in_len == s->in_cap) {
            if (s->in_cap >= STREAM_IN_MAX) { /* cannot happen with a sane framing */
                stream_end(w, s, EMSGSIZE);
                return;
            }
            size_t cap = s->in_cap * 2 < STREAM_IN_MAX ? s->in_cap * 2 : STREAM_IN_MAX;
            uint8_t *grown = realloc(s->in, cap);
            if (!grown) {
                stream_end(w, s, ENOMEM);
                return;
            }
            s->in = grown;
            s->in_cap = cap;
        }
        ssize_t n = read(s->fd, s->in + s->in_len, s->in_cap - s->in_len);
        hub_nc(w, FP_NC_RX_SYSCALLS, 1);
        if (n == 0) {
            stream_end(w, s, 0);
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                stream_end(w, s, errno);
            return;
        }
        s->in_len += (size_t)n;
        atomic_store_explicit(&s->last_rx_ns, w->now_ns, memory_order_relaxed);
        size_t off = 0;
        for (;;) {
            fp_frame f = {0, 0, 0, 0};
            int r = s->framing->decode(s->fstate, s->in + off, s->in_len - off, &f, frame_check,
                                       w);
            if (f.events & FP_FEV_RESYNC)
                hub_nc(w, FP_NC_STREAM_RESYNCS, 1);
            if (f.events & FP_FEV_KEEPALIVE)
                hub_nc(w, FP_NC_STREAM_KEEPALIVES_RX, 1);
            if (r == FP_FRAME_MORE || !f.consumed)
                break;
            if (r == FP_FRAME_OK) {
                hub_nc(w, s->nc_rx, 1);
                hub_from_net(w, s->in + off + f.off, f.len, &s->peer);
            }
            else if (r == FP_FRAME_SKIP)
                hub_nc(w, FP_NC_STREAM_SKIPPED, f.consumed);
            off += f.consumed;
        }
        hub_flush(w); /* device writes may point into the buffer we are about to move */
        if (off) {
            memmove(s->in, s->in + off, s->in_len - off);
            s->in_len -= off;
        }
    }
}

void hub_idle_streams(hub_worker *w) {
    fp_hub *h = w->h;
    for (size_t i = 0; i < HUB_MAX_STREAMS; i++) {
        hub_stream *s = atomic_load_explicit(&h->streams[i], memory_order_acquire);
        if (!s || s->worker != w->index || !s->framing->idle || atomic_load(&s->dead))
            continue;
        uint8_t out[256];
        size_t n = s->framing->idle(s->fstate, w->now_ns,
                                    atomic_load_explicit(&s->last_tx_ns, memory_order_relaxed),
                                    out, sizeof(out));
        if (n) {
            /* counts as sent now, so a blocked stream does not queue one per call */
            atomic_store_explicit(&s->last_tx_ns, w->now_ns, memory_order_relaxed);
            stream_append(w, s, out, n, NULL, 0);
            hub_nc(w, FP_NC_STREAM_KEEPALIVES_TX, 1);
        }
    }
}

/* ---- receiving ---------------------------------------------------------------------------- */

static void sock_drain(hub_worker *w, int fd, int lite) {
    struct hub_rxbufs *b = w->rxb;
    int gro = w->h->udp_gro && !lite;
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < b->n; i++) {
            b->iov[i] = (struct iovec){b->arena + (size_t)i * b->size, b->size};
            b->mm[i].msg_hdr = (struct msghdr){
                .msg_name = &b->from[i],
                .msg_namelen = sizeof(b->from[i]),
                .msg_iov = &b->iov[i],
                .msg_iovlen = 1,
                .msg_control = gro ? b->ctl[i].buf : NULL,
                .msg_controllen = gro ? sizeof(b->ctl[i].buf) : 0};
        }
        int n = recvmmsg(fd, b->mm, (unsigned)b->n, MSG_DONTWAIT, NULL);
        hub_nc(w, FP_NC_RX_SYSCALLS, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        for (int i = 0; i < n; i++) {
            struct msghdr *hd = &b->mm[i].msg_hdr;
            size_t len = b->mm[i].msg_len, seg = len;
            if (hd->msg_flags & MSG_TRUNC) {
                hub_nc(w, FP_NC_SHORT, 1);
                continue;
            }
            if (gro)
                for (struct cmsghdr *cm = CMSG_FIRSTHDR(hd); cm; cm = CMSG_NXTHDR(hd, cm))
                    if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                        int g;
                        memcpy(&g, CMSG_DATA(cm), sizeof(g));
                        if (g > 0)
                            seg = (size_t)g;
                    }
            fp_remote from;
            from.kind = lite ? FP_RK_UDPLITE : FP_RK_UDP;
            from.stream = 0;
            from.addr_len = hd->msg_namelen <= sizeof(from.addr) ? hd->msg_namelen : 0;
            memset(from.addr, 0, sizeof(from.addr));
            memcpy(from.addr, &b->from[i], from.addr_len);
            uint8_t *base = b->arena + (size_t)i * b->size;
            if (!len)
                hub_nc(w, FP_NC_SHORT, 1);
            for (size_t off = 0; off < len; off += seg) {
                size_t dl = len - off < seg ? len - off : seg;
                hub_from_net(w, base + off, dl, &from);
            }
        }
        hub_flush(w); /* before the buffers are reused */
        if (n < b->n)
            return;
    }
}

static void dev_emit(void *ctx, uint8_t *pkt, size_t len) { hub_from_dev(ctx, pkt, len); }

static void dev_drain(hub_worker *w) {
    fp_hub *h = w->h;
    int vh = h->cfg.vnet_hdr != 0;
    for (int i = 0; i < READ_BUDGET; i++) {
        ssize_t n = read(w->dev_fd, w->rdbuf, sizeof(fp_vnet_hdr) + HUB_MAX_INNER);
        hub_nc(w, FP_NC_RX_SYSCALLS, 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        if (!vh) {
            hub_from_dev(w, w->rdbuf, (size_t)n);
            continue;
        }
        if (n < (ssize_t)sizeof(fp_vnet_hdr))
            continue;
        fp_vnet_hdr v;
        memcpy(&v, w->rdbuf, sizeof(v));
        int pieces = fp_segment(&v, w->rdbuf + sizeof(v), (size_t)n - sizeof(v), w->segbuf,
                                HUB_MAX_INNER, HUB_MAX_INNER, dev_emit, w);
        if (pieces < 0)
            hub_nc(w, FP_NC_MALFORMED, 1);
        else if (pieces > 1)
            hub_nc(w, FP_NC_SEGMENTED, (uint64_t)pieces);
    }
}

void *hub_worker_main(void *arg) {
    hub_worker *w = arg;
    fp_hub *h = w->h;
    struct epoll_event evs[64];
    uint64_t next_idle = 0;
    while (!atomic_load(&h->stopping)) {
        atomic_store(&w->epoch, 0); /* quiescent: holds no table pointer while it sleeps */
        int n = epoll_wait(w->epfd, evs, 64, 100);
        atomic_store(&w->epoch, atomic_load(&h->epoch));
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load(&h->stopping))
            break;
        w->now = hub_mono();
        w->now_ns = (uint64_t)(w->now * 1e9);
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64 & 3;
            if (tag == TAG_STREAM) {
                hub_stream *s = evs[i].data.ptr;
                if (atomic_load(&s->dead))
                    continue;
                if (evs[i].events & EPOLLOUT)
                    stream_flush(w, s);
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))
                    stream_read(w, s);
            } else if (tag == TAG_DEVICE) {
                dev_drain(w);
            } else if (tag == TAG_SOCKET) {
                int k = (int)(evs[i].data.u64 >> 2 & 1), f = (int)(evs[i].data.u64 >> 3 & 1);
                sock_drain(w, w->socks[k][f], k);
            } else {
                uint64_t v;
                if (read(w->wake_fd, &v, sizeof(v)) < 0) {
                    /* nothing waited */
                }
            }
        }
        hub_flush(w);
        if (w->now_ns >= next_idle) {
            hub_idle_streams(w);
            hub_flush(w);
            next_idle = w->now_ns + 100000000ull;
        }
    }
    atomic_store(&w->epoch, 0);
    return NULL;
}

/* ---- set-up ------------------------------------------------------------------------------- */

static struct hub_rxbufs *rxbufs_new(int gro) {
    struct hub_rxbufs *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->n = gro ? RX_MSGS_GRO : RX_MSGS;
    b->size = gro ? RX_BUF_GRO : RX_BUF;
    b->arena = malloc((size_t)b->n * b->size);
    b->mm = calloc((size_t)b->n, sizeof(*b->mm));
    b->iov = calloc((size_t)b->n, sizeof(*b->iov));
    b->from = calloc((size_t)b->n, sizeof(*b->from));
    b->ctl = calloc((size_t)b->n, sizeof(*b->ctl));
    if (!b->arena || !b->mm || !b->iov || !b->from || !b->ctl) {
        free(b->arena);
        free(b->mm);
        free(b->iov);
        free(b->from);
        free(b->ctl);
        free(b);
        return NULL;
    }
    return b;
}

static void rxbufs_free(struct hub_rxbufs *b) {
    if (!b)
        return;
    free(b->arena);
    free(b->mm);
    free(b->iov);
    free(b->from);
    free(b->ctl);
    free(b);
}

int hub_worker_init(hub_worker *w, fp_hub *h, int index, int thread) {
    w->h = h;
    w->index = index;
    w->epfd = w->wake_fd = w->dev_fd = -1;
    for (int k = 0; k < 2; k++)
        w->socks[k][0] = w->socks[k][1] = -1;
    w->arena = malloc(HUB_TX_ARENA);
    w->scratch = malloc(HUB_SCRATCH);
    w->sbuf = malloc(HUB_SCRATCH);
    if (!w->arena || !w->scratch || !w->sbuf)
        return -1;
    if (!thread)
        return 0;
    w->rdbuf = malloc(sizeof(fp_vnet_hdr) + HUB_MAX_INNER);
    w->segbuf = malloc(HUB_MAX_INNER);
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!w->rdbuf || !w->segbuf || w->epfd < 0 || w->wake_fd < 0)
        return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_WAKE};
    return epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->wake_fd, &ev);
}

void hub_worker_free(hub_worker *w) {
    fp_coalescer_free(w->co);
    rxbufs_free(w->rxb);
    if (w->epfd >= 0)
        close(w->epfd);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    free(w->arena);
    free(w->scratch);
    free(w->sbuf);
    free(w->rdbuf);
    free(w->segbuf);
}

static void negotiate(fp_hub *h) {
    if (h->cfg.vnet_hdr && !h->cfg.tap && h->any_dev >= 0) {
        unsigned base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        if (ioctl(h->any_dev, TUNSETOFFLOAD, base | TUN_F_USO4 | TUN_F_USO6) == 0)
            h->tun_offload = h->tun_uso = 1;
        else if (ioctl(h->any_dev, TUNSETOFFLOAD, base) == 0)
            h->tun_offload = 1;
    }
    int gso = h->cfg.gso, gro = h->cfg.gso, any = 0;
    for (int i = 0; i < h->nworkers; i++)
        for (int f = 0; f < 2; f++) {
            int fd = h->w[i]->socks[0][f], one = 1, seg = 0;
            socklen_t sl = sizeof(seg);
            if (fd < 0)
                continue;
            any = 1;
            gso = gso && getsockopt(fd, SOL_UDP, UDP_SEGMENT, &seg, &sl) == 0;
            gro = gro && setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0;
        }
    h->udp_gso = gso && any;
    h->udp_gro = gro && any;
}

int fp_hub_start(fp_hub *h, char *err, size_t errlen) {
    if (h->started) {
        snprintf(err, errlen, "already started");
        return -1;
    }
    if (h->cfg.vnet_hdr && h->cfg.tap) {
        snprintf(err, errlen, "virtio-net headers are for TUN devices");
        return -1;
    }
    negotiate(h);
    for (int i = 0; i < h->nworkers; i++) {
        hub_worker *w = h->w[i];
        w->rxb = rxbufs_new(h->udp_gro);
        if (!w->rxb) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        if (w->dev_fd >= 0) {
            if (h->cfg.vnet_hdr) {
                w->co = fp_coalescer_new(w->dev_fd, h->tun_offload, h->tun_uso);
                if (!w->co) {
                    snprintf(err, errlen, "out of memory");
                    return -1;
                }
            }
            struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_DEVICE};
            if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->dev_fd, &ev) < 0) {
                snprintf(err, errlen, "epoll on the device: %s", strerror(errno));
                return -1;
            }
        }
        for (int k = 0; k < 2; k++)
            for (int f = 0; f < 2; f++) {
                if (w->socks[k][f] < 0)
                    continue;
                struct epoll_event ev = {.events = EPOLLIN,
                                         .data.u64 = TAG_SOCKET | (uint64_t)k << 2 |
                                                     (uint64_t)f << 3};
                if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->socks[k][f], &ev) < 0) {
                    snprintf(err, errlen, "epoll on a socket: %s", strerror(errno));
                    return -1;
                }
            }
    }
    h->started = 1; /* before the threads: retire() must wait for them from now on */
    for (int i = 0; i < h->nworkers; i++) {
        if (pthread_create(&h->w[i]->thread, NULL, hub_worker_main, h->w[i]) != 0) {
            snprintf(err, errlen, "cannot start worker threads");
            return -1;
        }
        h->w[i]->started = 1;
    }
    return 0;
}

/* Undo what start changed on the caller's fds (they outlive the hub). */
void hub_restore_fds(fp_hub *h) {
    for (int i = 0; i < h->nworkers; i++)
        for (int f = 0; f < 2; f++) {
            int fd = h->w[i]->socks[0][f], zero = 0;
            if (fd >= 0 && h->udp_gro)
                setsockopt(fd, SOL_UDP, UDP_GRO, &zero, sizeof(zero));
        }
    if (h->tun_offload && h->any_dev >= 0)
        ioctl(h->any_dev, TUNSETOFFLOAD, 0u);
}
