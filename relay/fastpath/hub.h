/* Internal interfaces of the server-mode data plane (hub*.c, lpm.c, mactab.c, stream.c).
 *
 * Memory layout and concurrency, in one place (docs/server.md tells the operator's side):
 *
 * * Tables are written only by the control thread (Python, through cffi, serialised by
 *   fp_hub.ctl_lock) and read by the workers without locks. Anything a worker may hold a
 *   pointer to is replaced, never changed in place: the writer publishes the new object with
 *   one atomic store and *retires* the old one; it is freed once every worker has passed a
 *   quiescent point (epoch-based reclamation: a worker announces the global epoch at the start
 *   of each batch and 0 while it sleeps in epoll_wait). So a reload, a controld dump or a
 *   cluster record never pauses other clients' traffic, and no worker ever waits for Python.
 * * Connections: a direct array of 65536 pointers indexed by MUX (O(1), no hash to flood;
 *   the untouched pages of the array cost no memory). A configured connection is a hub_conn
 *   (256 bytes: remote, send seq, counters) plus an immutable hub_keys (keys, suite, window).
 *   The crypto contexts and the replay window are created on first use, per direction
 *   (hub_rx, hub_tx), each behind its own mutex held for one packet's crypto; the kernel keeps
 *   a client's datagrams on one worker (SO_REUSEPORT hashes the 4-tuple), so the receive
 *   mutex is practically uncontended. New keys = a new hub_keys (new contexts, new window).
 * * The remote endpoint is a seqlock-protected value inside hub_conn: workers roam it in the
 *   data path (authenticated fresh packets), the control thread sets it from the table.
 * * Routes: an immutable LPM table (one keyed hash per prefix length in use), rebuilt and
 *   swapped as a whole per burst of changes. MACs: an open-addressing table of 64-bit words
 *   (MAC << 16 | MUX) updated in place by the control thread with atomic stores, grown by
 *   swap. Both hash with SipHash under a random key and bound every probe sequence by the
 *   longest one inserted, so attacker-chosen addresses cannot make lookups longer.
 */
#ifndef FASTPATH_HUB_H
#define FASTPATH_HUB_H

#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

#include "internal.h"

/* ---- keyed hash (SipHash-1-3 over 64-bit words) ------------------------------------------- */

static inline uint64_t fp_rotl64(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

#define FP_SIPROUND                                                                           \
    do {                                                                                      \
        v0 += v1; v1 = fp_rotl64(v1, 13); v1 ^= v0; v0 = fp_rotl64(v0, 32);                   \
        v2 += v3; v3 = fp_rotl64(v3, 16); v3 ^= v2;                                           \
        v0 += v3; v3 = fp_rotl64(v3, 21); v3 ^= v0;                                           \
        v2 += v1; v1 = fp_rotl64(v1, 17); v1 ^= v2; v2 = fp_rotl64(v2, 32);                   \
    } while (0)

static inline uint64_t fp_siphash(const uint64_t key[2], const uint64_t *m, int n) {
    uint64_t v0 = key[0] ^ 0x736f6d6570736575ull, v1 = key[1] ^ 0x646f72616e646f6dull;
    uint64_t v2 = key[0] ^ 0x6c7967656e657261ull, v3 = key[1] ^ 0x7465646279746573ull;
    for (int i = 0; i < n; i++) {
        v3 ^= m[i];
        FP_SIPROUND;
        v0 ^= m[i];
    }
    uint64_t b = (uint64_t)(n * 8) << 56;
    v3 ^= b;
    FP_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    FP_SIPROUND;
    FP_SIPROUND;
    FP_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* A random hash key from the kernel (getrandom); a fixed fallback only if it fails. */
void fp_random_key(uint64_t key[2]);

/* ---- routes: longest prefix match (lpm.c) --------------------------------------------------- */

typedef struct fp_lpm fp_lpm;

/* Builds an immutable table from routes (fp_route, fastpath.h); later duplicates win.
 * NULL on a bad route (err says which) or out of memory. */
fp_lpm *fp_lpm_build(const fp_route *routes, size_t n, char *err, size_t errlen);
void fp_lpm_free(fp_lpm *t);
/* MUX of the longest prefix containing the address (4: addr[0..4), 6: addr[0..16)), or -1. */
int fp_lpm_lookup(const fp_lpm *t, int version, const uint8_t *addr);
size_t fp_lpm_bytes(const fp_lpm *t);

/* ---- learned MACs (mactab.c) ---------------------------------------------------------------- */

typedef struct fp_mactab fp_mactab;

fp_mactab *fp_mactab_new(size_t capacity);
void fp_mactab_free(fp_mactab *t);
/* Readers (any thread): MUX of a unicast MAC, or -1. */
int fp_mactab_get(const fp_mactab *t, const uint8_t mac[6]);
/* Writer only (one thread). 0 on success, 1 when the table must grow first (the writer
 * then builds a bigger copy with fp_mactab_grow, publishes it and retires this one). */
int fp_mactab_set(fp_mactab *t, const uint8_t mac[6], uint16_t mux);
void fp_mactab_remove_mux(fp_mactab *t, uint16_t mux);
fp_mactab *fp_mactab_grow(const fp_mactab *t);
size_t fp_mactab_count(const fp_mactab *t);
size_t fp_mactab_bytes(const fp_mactab *t);

/* ---- stream framings (stream.c) ------------------------------------------------------------- */

enum { FP_FRAME_MORE = 0, FP_FRAME_OK = 1, FP_FRAME_SKIP = 2, FP_FRAME_CONTROL = 3 };
/* What else a decode step saw (fp_frame.events), for the node counters. */
enum { FP_FEV_RESYNC = 1, FP_FEV_KEEPALIVE = 2 };

/* Asks the engine whether a candidate datagram authenticates (for framings that resync
 * mid-stream by verifying candidate frames): 1 yes, 0 no, -1 cannot tell (null auth, no
 * such connection). */
typedef int (*fp_frame_check_fn)(void *ctx, const uint8_t *dgram, size_t len);

typedef struct fp_frame {
    size_t consumed; /* bytes of the stream this call used up (OK and SKIP) */
    size_t off, len; /* OK: the datagram at buf + off */
    unsigned events; /* FP_FEV_* */
} fp_frame;

/* How a stream starts (fp_hub_stream_add's options). */
typedef struct fp_stream_opts {
    int synced;              /* 0: the stream starts mid-frame (a taken-over connection) */
    uint32_t keepalive_ms;   /* this end's keep-alive interval; 0 = none */
    size_t max_body;         /* the longest datagram */
} fp_stream_opts;

/* How SATP datagrams ride on a byte stream. A framing holds no pointers into the stream's
 * buffers; `state` (state_size bytes, zeroed at stream start) is its own per stream. */
typedef struct fp_framing {
    const char *name;
    size_t header_len;       /* bytes encode() writes before each datagram */
    size_t state_size;
    /* Optional: set the state up for a new stream. */
    void (*init)(void *state, const fp_stream_opts *opts);
    size_t (*encode)(void *state, uint8_t *hdr, size_t dglen);
    /* MORE: wait for more bytes; OK: one datagram (f->off/len), f->consumed used up;
     * SKIP: f->consumed bytes are not a frame (resync): dropped and counted; CONTROL: a frame
     * of the framing's own (a keep-alive), f->consumed used up. */
    int (*decode)(void *state, const uint8_t *buf, size_t avail, fp_frame *f,
                  fp_frame_check_fn check, void *check_ctx);
    /* Optional: bytes to send when the stream was quiet (keep-alive); 0 for none. Called by
     * the owning worker about every 100 ms. */
    size_t (*idle)(void *state, uint64_t now_ns, uint64_t last_tx_ns, uint8_t *out, size_t cap);
    /* Optional: the framing's figures for a stream (fp_hub_stream_stats' order); how many
     * were written. */
    int (*stats)(const void *state, uint64_t *out, size_t n);
} fp_framing;

/* The framing registered for an FP_FRAMING_* id, NULL if none. */
const fp_framing *fp_framing_get(int id);

/* ---- the hub's objects (hub.c: tables and control, hub_core.c: decisions, hub_io.c) ------- */

#define HUB_MUXES 65536
#define HUB_MAX_STREAMS 4096        /* power of two */
#define HUB_EVENT_SLOTS 1024
#define HUB_SLOW_SLOTS 256
#define HUB_LEARN_BUDGET 64         /* MAC learning requests per connection per maintain */
#define HUB_STREAM_OUT_MAX (1u << 20)
#define HUB_TX_ARENA (512 * 1024)
#define HUB_TX_MSGS 128
#define HUB_TX_BUDGET 256
#define HUB_MAX_INNER 65536
#define HUB_SCRATCH (HUB_MAX_INNER + 256)

typedef struct hub_rx {            /* receive half of an active connection */
    pthread_mutex_t lock;          /* one packet's open + replay check */
    fp_satp *satp;
    fp_replay *replay;
} hub_rx;

typedef struct hub_tx {            /* send half */
    pthread_mutex_t lock;          /* one packet's seal */
    fp_satp *satp;
} hub_tx;

typedef struct hub_keys {          /* immutable but for the lazily made halves */
    fp_hub_conn_spec spec;
    uint32_t overhead;
    _Atomic(hub_rx *) rx;
    _Atomic(hub_tx *) tx;
} hub_keys;

enum { HUB_RX_PACKETS, HUB_RX_BYTES, HUB_RX_RESTARTS, HUB_RX_SHORT, HUB_RX_AUTH, HUB_RX_REPLAY,
       HUB_RX_TOO_OLD, HUB_RX_PAYLOAD_TYPE, HUB_RXC };
enum { HUB_TX_PACKETS, HUB_TX_BYTES, HUB_TX_NO_REMOTE, HUB_TX_OVERSIZE, HUB_TX_SEND_ERROR,
       HUB_TXC };

#define HUB_REMOTE_WORDS (sizeof(fp_remote) / 8)

typedef struct hub_conn {
    uint16_t mux;
    uint32_t gen;
    _Atomic(hub_keys *) keys;
    _Atomic uint32_t seq;                  /* next send seq */
    _Atomic uint32_t rlock;                /* seqlock over remote */
    _Atomic uint64_t remote[HUB_REMOTE_WORDS];
    _Atomic uint8_t touched;               /* queued for fp_hub_collect */
    _Atomic uint32_t learn_budget;
    /* receive counters (mostly one worker) and send counters (any) on their own lines */
    _Alignas(64) _Atomic uint64_t rxc[HUB_RXC];
    _Alignas(64) _Atomic uint64_t txc[HUB_TXC];
} hub_conn;

typedef struct hub_flood {          /* connections a broadcast frame may reach (tap) */
    size_t n;
    uint16_t mux[];
} hub_flood;

typedef struct hub_stream {
    uint32_t id;
    int fd;
    int worker;                     /* the owner reads it and serves EPOLLOUT */
    const fp_framing *framing;
    void *fstate;
    int nc_rx, nc_tx;               /* the node counters of its datagrams (per framing) */
    fp_remote peer;                 /* kind FP_RK_STREAM, id, the peer's address */
    _Atomic int dead;               /* ended: no more IO; freed by fp_hub_maintain */
    uint8_t *in;                    /* owner only */
    size_t in_len, in_cap;
    pthread_mutex_t out_lock;       /* any worker appends */
    uint8_t *out;
    size_t out_off, out_len, out_cap;
    int out_armed;
    _Atomic int pending;            /* in a worker's flush list */
    _Atomic uint64_t last_rx_ns, last_tx_ns;
} hub_stream;

typedef struct hub_msg {
    size_t off, seg, len;
    int count, closed;
    int sock;
    fp_remote to;
} hub_msg;

typedef struct hub_worker {
    struct fp_hub *h;
    int index;
    pthread_t thread;
    int started;
    int epfd, wake_fd;
    _Atomic uint64_t epoch;         /* 0 while quiescent */
    int dev_fd;                     /* own device queue, -1 */
    int socks[2][2];                /* own [udp, udplite][v4, v6], -1 */
    fp_coalescer *co;
    double now;
    uint64_t now_ns;
    /* capture mode (fp_hub_probe) */
    fp_hub_out *cap_outs;
    size_t cap_n, cap_max, cap_used, cap_size;
    uint8_t *cap_buf;
    int cap_overflow;
    /* outgoing datagram batch */
    uint8_t *arena;
    size_t used;
    hub_msg msgs[HUB_TX_MSGS];
    int nmsgs, ndgrams;
    int room_sock;                  /* the socket hub_out_room chose */
    uint8_t *scratch;               /* probes' packet copy, resync checks */
    uint8_t *sbuf;                  /* datagrams for streams */
    uint8_t *rdbuf, *segbuf;        /* device reads, their segments */
    struct hub_rxbufs *rxb;         /* recvmmsg buffers */
    hub_stream *flush[64];
    int nflush;
    _Atomic uint64_t nc[FP_NC_COUNT];
} hub_worker;

typedef struct hub_retired {
    void *p;
    void (*fn)(void *);
    uint64_t epoch;
} hub_retired;

typedef struct hub_slow {
    uint16_t mux, ptype;
    size_t len;
    uint8_t *data;
} hub_slow;

struct fp_hub {
    fp_hub_config cfg;
    pthread_mutex_t ctl_lock;
    _Atomic(hub_conn *) *conns;     /* [HUB_MUXES] */
    uint32_t nconns, next_gen;
    _Atomic(fp_lpm *) lpm;
    _Atomic(fp_mactab *) macs;
    _Atomic(hub_flood *) flood;
    _Atomic int flood_dirty;
    _Atomic(hub_stream *) streams[HUB_MAX_STREAMS];
    uint32_t stream_seq, nstreams;
    int nworkers;
    hub_worker *w[FP_HUB_MAX_WORKERS + 1];  /* [nworkers]: the control thread's context */
    int any_sock[2][2];             /* a socket of [kind][family] for workers without one */
    int any_dev;
    int udp_gso, udp_gro, tun_offload, tun_uso;
    _Atomic uint64_t epoch;
    hub_retired *retired;
    size_t nretired, retired_cap;
    pthread_mutex_t ev_lock;        /* events, slow packets, touched list */
    fp_hub_event events[HUB_EVENT_SLOTS];
    int ev_head, ev_count;
    hub_slow slow[HUB_SLOW_SLOTS];
    int slow_head, slow_count;
    uint16_t *touched;
    size_t ntouched;
    int ev_fd;
    _Atomic int stopping;
    int started;
    _Atomic uint32_t active_rx, active_tx;
};

/* hub.c */
hub_conn *hub_conn_at(struct fp_hub *h, uint16_t mux);
hub_rx *hub_rx_of(struct fp_hub *h, hub_keys *k);
hub_tx *hub_tx_of(struct fp_hub *h, hub_keys *k);
void hub_remote_load(const hub_conn *c, fp_remote *r);
void hub_remote_store(hub_conn *c, const fp_remote *r);
int hub_remote_equal(const fp_remote *a, const fp_remote *b);
void hub_touch(struct fp_hub *h, hub_conn *c);
void hub_push_event(struct fp_hub *h, const fp_hub_event *ev);
void hub_push_slow(hub_worker *w, uint16_t mux, uint16_t ptype, const uint8_t *p, size_t n);
hub_stream *hub_stream_get(struct fp_hub *h, uint32_t id);
double hub_mono(void);

static inline void hub_nc(hub_worker *w, int k, uint64_t n) {
    /* one writer per worker: a plain add, atomic only so the control thread may read it */
    atomic_store_explicit(&w->nc[k], atomic_load_explicit(&w->nc[k], memory_order_relaxed) + n,
                          memory_order_relaxed);
}
static inline void hub_cc(_Atomic uint64_t *c, uint64_t n) {
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* hub_core.c: the per-packet decisions, the semantics of relay/tunnel/dataplane.py */
void hub_from_net(hub_worker *w, uint8_t *d, size_t len, const fp_remote *from);
void hub_from_dev(hub_worker *w, uint8_t *pkt, size_t len);
/* 1 if sent (or left to Python to fragment), 0 if dropped. */
int hub_seal_to(hub_worker *w, hub_conn *t, uint16_t ptype, const uint8_t *payload, size_t n,
                int slow_ok);

/* hub_io.c: the sinks the decisions write to, and the workers */
uint8_t *hub_out_room(hub_worker *w, const fp_remote *to, size_t need);
void hub_out_commit(hub_worker *w, const fp_remote *to, uint8_t *d, size_t len);
void hub_out_dev(hub_worker *w, const uint8_t *pkt, size_t len);
void hub_flush(hub_worker *w);
int hub_worker_init(hub_worker *w, struct fp_hub *h, int index, int thread);
void hub_worker_free(hub_worker *w);
void *hub_worker_main(void *arg);
int hub_stream_register(struct fp_hub *h, hub_stream *s);
void hub_stream_free(void *p);
void hub_idle_streams(hub_worker *w);
void hub_restore_fds(struct fp_hub *h);

#endif
