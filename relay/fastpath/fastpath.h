/* The SATP fast data plane: per-packet crypto, replay windows and batched IO threads.
 *
 * Python reaches this through cffi (relay/fastpath/build.py declares the same API); the
 * control plane (options, keys, devices, learning, status) stays in Python. Everything here is
 * byte-identical to relay/satp (docs: ../shared/spec/satp.md) and tested against the captured
 * vectors and the Python core.
 */
#ifndef FASTPATH_H
#define FASTPATH_H

#include <stddef.h>
#include <stdint.h>

#define FP_HEADER_LEN 8   /* seq, sender ID, MUX in clear */
#define FP_PTYPE_LEN 2    /* payload type, encrypted */
#define FP_MAX_TAG 20

/* ---- crypto: one connection direction pair ------------------------------------------------ */

typedef struct fp_suite {
    int cipher_key_len; /* 0 = null cipher, else 16/24/32 (AES-CTR) */
    int kd_key_len;     /* 0 = null key derivation (all-zero values), else 16/24/32 */
    int auth;           /* 0 = null auth, 1 = HMAC-SHA1 */
    int tag_len;        /* 0..20 bytes, the right-most bytes of the MAC */
} fp_suite;

typedef struct fp_satp fp_satp;

typedef struct fp_hdr {
    uint32_t seq;
    uint16_t sender_id;
    uint16_t mux;
    uint16_t payload_type;
} fp_hdr;

enum fp_open_error { FP_ERR_SHORT = -1, FP_ERR_AUTH = -2, FP_ERR_SPACE = -3 };

/* role: 0 = left (alice, server), 1 = right (bob, client). master_key may be NULL when
 * kd_key_len is 0. Returns NULL with a message in err on a bad suite or key. */
fp_satp *fp_satp_new(const fp_suite *suite, const uint8_t *master_key, size_t master_key_len,
                     const uint8_t *master_salt, int role, char *err, size_t errlen);
void fp_satp_free(fp_satp *s);
size_t fp_satp_overhead(const fp_satp *s);

/* Seal: payload (len bytes) -> datagram in out (needs len + overhead bytes). Returns the
 * datagram length, or FP_ERR_SPACE. */
long fp_seal(fp_satp *s, uint32_t seq, uint16_t sender_id, uint16_t mux, uint16_t ptype,
             const uint8_t *payload, size_t len, uint8_t *out, size_t outcap);

/* Open: datagram -> payload in out (needs len bytes). Returns the payload length (header in
 * *hdr) or FP_ERR_SHORT / FP_ERR_AUTH / FP_ERR_SPACE. Replay checks are separate. */
long fp_open(fp_satp *s, const uint8_t *dgram, size_t len, uint8_t *out, size_t outcap,
             fp_hdr *hdr);

/* The raw PRF (tests): length keystream bytes for (label, seq). */
int fp_prf(fp_satp *s, uint32_t label, uint32_t seq, uint8_t *out, size_t length);

/* The crypto implementation of connections made from now on: FP_CRYPTO_AUTO (AES-NI/SHA-NI
 * when the CPU has them, else OpenSSL), FP_CRYPTO_BUILTIN or FP_CRYPTO_OPENSSL. Returns the
 * one chosen, or -1 with a message in err (the previous choice stays). */
enum fp_crypto_impl { FP_CRYPTO_AUTO = 0, FP_CRYPTO_BUILTIN = 1, FP_CRYPTO_OPENSSL = 2 };
int fp_crypto_use(int impl, char *err, size_t errlen);
/* "aes-ni/sha-ni" or "openssl": what fp_crypto_use chose (auto until it is called). */
const char *fp_crypto_name(void);

/* ---- replay window per sender ID (semantics of relay/satp/replay.py) ----------------------- */

enum fp_verdict {
    FP_FRESH = 0, FP_IN_WINDOW = 1, FP_STALE = 2, FP_RESTART = 3, FP_REPLAY = 4, FP_TOO_OLD = 5
};

/* Sender IDs with a window per connection (relay/satp/replay.py MAX_SENDERS). */
#define FP_REPLAY_MAX_SENDERS 256

typedef struct fp_replay_params {
    uint32_t size;           /* window size, 0..1048576 */
    uint32_t restart_after;  /* consecutive candidates that make a restart */
    double restart_quiet;    /* seconds without fresh packets of the old stream */
    uint32_t restart_max_seq;
    uint32_t restart_gap;
} fp_replay_params;

typedef struct fp_replay fp_replay;

fp_replay *fp_replay_new(const fp_replay_params *p);
void fp_replay_free(fp_replay *r);
int fp_replay_accept(fp_replay *r, uint16_t sender_id, uint32_t seq, double now);
/* Highest accepted seq of a sender: 1 and *high if known, else 0. */
int fp_replay_high(const fp_replay *r, uint16_t sender_id, uint32_t *high);
/* Adopt a high-water mark from elsewhere (cluster sync); never moves backwards. */
void fp_replay_advance(fp_replay *r, uint16_t sender_id, uint32_t high, double now);
/* Sender IDs known, up to max; returns how many were written. */
size_t fp_replay_senders(const fp_replay *r, uint16_t *ids, uint32_t *highs, size_t max);

/* ---- IO engine: worker threads between a TUN/TAP fd and a UDP socket ---------------------- */

typedef struct fp_engine_config {
    int dev_fd;          /* TUN/TAP fd (IFF_NO_PI); set to non-blocking by the engine */
    int dev_tap;         /* 1 for TAP (payload type 0x6558), 0 for TUN */
    int dev_vnet_hdr;    /* the fd was opened with IFF_VNET_HDR: use TSO/USO offloads */
    int sock_fd;         /* UDP or UDP-Lite socket, bound; set to non-blocking */
    int sock_fd2;        /* a second one (the other address family), or -1 */
    uint16_t sender_id;
    uint16_t mux;
    uint32_t first_seq;  /* next send seq */
    int max_payload;     /* largest inner packet that may be sent (0: 1600 - overhead) */
    int roam;            /* 1: follow the peer's source address (authenticated, fresh) */
    int gso;             /* 1: UDP GSO/GRO when the kernel offers them */
    fp_replay_params replay;
    uint8_t remote[28];  /* where to send from the start: sockaddr_in/_in6, or remote_len 0 */
    uint32_t remote_len;
} fp_engine_config;

typedef struct fp_engine_stats {
    uint64_t tx_packets, tx_bytes;        /* inner packets sealed and sent */
    uint64_t tx_datagrams_batched;        /* datagrams that left in a batch of more than one */
    uint64_t tx_no_remote, tx_oversize, tx_error, tx_segmented;
    uint64_t rx_packets, rx_bytes;        /* inner packets written to the device */
    uint64_t rx_short, rx_auth, rx_replay, rx_too_old, rx_restart, rx_bad_mux, rx_bad_type;
    uint64_t rx_dev_error, rx_coalesced;
    uint64_t tx_syscalls, rx_syscalls;
    uint64_t slow_packets;                /* handed to Python (oversized) */
    uint32_t next_seq;
    uint32_t offloads;                    /* FP_OFF_* negotiated at start */
} fp_engine_stats;

enum fp_offload { FP_OFF_TUN = 1, FP_OFF_TUN_USO = 2, FP_OFF_UDP_GSO = 4, FP_OFF_UDP_GRO = 8 };

enum fp_event_kind { FP_EV_REMOTE = 1, FP_EV_SLOW = 2, FP_EV_RESTART = 3 };

typedef struct fp_event {
    int kind;
    uint16_t sender_id;
    uint32_t seq;
    uint8_t addr[28];    /* struct sockaddr_in / sockaddr_in6 of the new remote */
    uint32_t addr_len;
} fp_event;

typedef struct fp_engine fp_engine;

/* Starts the workers. tx and rx get their own crypto contexts made from the same inputs. */
fp_engine *fp_engine_start(const fp_engine_config *cfg, const fp_suite *suite,
                           const uint8_t *master_key, size_t master_key_len,
                           const uint8_t *master_salt, int role, char *err, size_t errlen);
/* Stops and joins the workers, frees everything; the fds stay open (they are the caller's). */
void fp_engine_stop(fp_engine *e);
void fp_engine_stats_get(fp_engine *e, fp_engine_stats *out);
/* Where to send; addr_len 0 forgets the remote (nothing is sent until one is learned). */
int fp_engine_set_remote(fp_engine *e, const uint8_t *addr, uint32_t addr_len);
/* An eventfd that is readable while events or slow-path packets wait. */
int fp_engine_event_fd(fp_engine *e);
/* Next event: 1 and *ev, or 0 when none waits. */
int fp_engine_next_event(fp_engine *e, fp_event *ev);
/* Next inner packet the data plane did not handle itself (too big for the tunnel): its
 * length, 0 when none waits; buffer must hold 65536 bytes. */
long fp_engine_next_slow(fp_engine *e, uint8_t *buf, size_t cap);
/* Seal and send one inner packet from the caller's thread (ICMP errors, fragments). */
int fp_engine_send(fp_engine *e, uint16_t ptype, const uint8_t *payload, size_t len);
/* The next send seq moves forward to `seq` (another node sent up to there); never back. */
void fp_engine_advance_seq(fp_engine *e, uint32_t seq);
/* Replay state for the cluster sync. */
size_t fp_engine_replay_senders(fp_engine *e, uint16_t *ids, uint32_t *highs, size_t max);
void fp_engine_replay_advance(fp_engine *e, uint16_t sender_id, uint32_t high);

/* ---- relay mode: RTP/RTCP forwarding between relay sockets (rtp.c) ------------------------- */

/* Packets from a leg's accepted source are forwarded at once. Other sources: dropped (NONE),
 * accepted if they come from one of two hosts (HOSTS: the signalled address, the host whose
 * RTP was learned) or from anywhere (ANY); a sticky leg then accepts only that source. */
enum fp_ask { FP_ASK_NONE = 0, FP_ASK_HOSTS = 1, FP_ASK_ANY = 2 };

typedef struct fp_rtp_counters {
    int id;
    uint64_t got, relayed, dropped, bytes_in, bytes_out;
    uint64_t last_ns; /* CLOCK_MONOTONIC of the last packet */
} fp_rtp_counters;

typedef struct fp_rtp fp_rtp;

fp_rtp *fp_rtp_start(int workers, char *err, size_t errlen);
void fp_rtp_stop(fp_rtp *r);
/* Registers a relay socket; returns the leg id (>= 0) or -errno. Until fp_rtp_leg_set
 * nothing is forwarded. */
int fp_rtp_leg_add(fp_rtp *r, int fd);
int fp_rtp_leg_set(fp_rtp *r, int id, int out_fd, const uint8_t *dest, uint32_t dest_len,
                   const uint8_t *src, uint32_t src_len, int ask, int sticky,
                   const uint8_t *ask1, uint32_t ask1_len, const uint8_t *ask2,
                   uint32_t ask2_len);
/* After it returns no worker touches the fd any more (the caller closes it). */
int fp_rtp_leg_remove(fp_rtp *r, int id);
/* Counters of the legs that saw packets since the last call. */
size_t fp_rtp_collect(fp_rtp *r, fp_rtp_counters *out, size_t max);
int fp_rtp_event_fd(fp_rtp *r);
/* Next source a leg accepted on first sight (Python records the latch): 1 and the leg id
 * and source, or 0 when none waits. */
int fp_rtp_next_event(fp_rtp *r, int *id, uint8_t *src, uint32_t *src_len);
/* Accept events lost because Python fell behind (it resynchronises on the next re-wiring). */
uint64_t fp_rtp_overflow(fp_rtp *r);
/* Recording: with `on`, the leg copies every packet it accepts into a bounded ring (the packet
 * is forwarded either way; a copy that finds the ring full is counted as lost). */
int fp_rtp_leg_record(fp_rtp *r, int id, int on);
/* Becomes readable when a quarter of the ring waits to be drained. */
int fp_rtp_record_fd(fp_rtp *r);
/* The next recorded packet: 1 with leg id, CLOCK_REALTIME ns, source and payload (cut to
 * `cap`), or 0 when none waits. */
int fp_rtp_record_next(fp_rtp *r, int *id, uint64_t *ts_ns, uint8_t *src, uint32_t *src_len,
                       uint8_t *data, uint32_t cap, uint32_t *len);
uint64_t fp_rtp_record_lost(fp_rtp *r);

/* ---- anycast-tcp framing (semantics of relay/transport/anycast_framing.py) ----------------- */

/* 0xA7 | type | length (u16) | body: type 'S' a SATP datagram, 'K' a keep-alive whose body is
 * the sender's interval in ms (u32). A receiver that lost the frame boundary searches for a
 * candidate whose datagram authenticates (check returns 1; 0 = no, -1 = cannot tell) or,
 * when that cannot be told, whose next frame's header is valid too. */
#define FP_ATCP_HEADER 4
#define FP_ATCP_KEEPALIVE_LEN 8
enum fp_atcp_result { FP_ATCP_MORE = 0, FP_ATCP_DATAGRAM = 1, FP_ATCP_KEEPALIVE = 2,
                      FP_ATCP_SKIP = 3 };

typedef int (*fp_atcp_check_fn)(void *ctx, const uint8_t *dgram, size_t len);

typedef struct fp_atcp {
    int synced;
    size_t max_body;
    uint64_t resyncs, skipped, keepalives, frames;
    uint32_t peer_interval_ms;
} fp_atcp;

void fp_atcp_init(fp_atcp *st, int synced, size_t max_body);
/* The header in front of a datagram of dglen bytes (FP_ATCP_HEADER bytes), or 0 when dglen
 * does not fit a frame. */
size_t fp_atcp_encode(uint8_t *hdr, size_t dglen);
size_t fp_atcp_keepalive(uint8_t *out, uint32_t interval_ms);
/* One step over buf[0..avail): MORE (keep the bytes, wait); DATAGRAM (the datagram at
 * buf + *off, *len bytes); KEEPALIVE; SKIP (no frame: drop the bytes). *consumed = bytes of
 * buf used up. At most one check per marker byte; never reads past avail. */
int fp_atcp_decode(fp_atcp *st, const uint8_t *buf, size_t avail, size_t *off, size_t *len,
                   size_t *consumed, fp_atcp_check_fn check, void *ctx);

/* ---- offloads, reachable for tests ------------------------------------------------------ */

/* Coalesce n inner packets (concatenated in buf, lengths in lens) into vnet-hdr writes to fd,
 * as the engine does for a TUN with offloads. Returns how many packets were merged into
 * others. */
long fp_offload_coalesce(int fd, int tcp, int uso, const uint8_t *buf, const uint32_t *lens,
                         size_t n);

/* ---- server mode: many connections, routes, MAC learning, streams (hub*.c) ---------------- */

/* The semantics are those of relay/tunnel/dataplane.py (the reference, property-tested
 * against this); concurrency and memory layout are described in hub.h. All fp_hub_* calls
 * except the workers' own come from one control thread at a time (they take a lock). */

#define FP_HUB_MAX_WORKERS 32
#define FP_CD_COUNT 8
#define FP_NC_COUNT 35

enum fp_remote_kind { FP_RK_NONE = 0, FP_RK_UDP = 1, FP_RK_UDPLITE = 2, FP_RK_STREAM = 3 };
/* FP_FRAMING_LENGTH: 2-byte length + datagram (--transport tcp); FP_FRAMING_ANYCAST: the
 * anycast-tcp frames above, resynchronising, with keep-alives (--transport anycast-tcp) */
enum fp_framing_id { FP_FRAMING_LENGTH = 1, FP_FRAMING_ANYCAST = 2 };
enum fp_hub_fd_kind { FP_FD_DEVICE = 0, FP_FD_UDP = 1, FP_FD_UDPLITE = 2 };

/* Where a peer is: a UDP / UDP-Lite address, or a stream (its id; addr is the stream's peer). */
typedef struct fp_remote {
    uint32_t kind;
    uint32_t stream;
    uint32_t addr_len;
    uint8_t addr[28];    /* struct sockaddr_in / sockaddr_in6 */
} fp_remote;

typedef struct fp_route {
    uint8_t version;     /* 4 or 6 */
    uint8_t length;      /* prefix length */
    uint16_t mux;
    uint8_t addr[16];    /* network address, network byte order (IPv4: first 4 bytes) */
} fp_route;

typedef struct fp_hub_config {
    int tap;             /* TAP device: Ethernet frames, MAC learning */
    int routing;         /* several connections: routes / MACs pick one (else default_mux) */
    int tunneling;       /* with routing: client-to-client packets go straight across */
    uint16_t sender_id;
    uint16_t default_mux;
    int max_datagram;    /* largest datagram sent (the peers read 1600) */
    int vnet_hdr;        /* the device fds carry virtio-net headers (TUN offloads) */
    int gso;             /* UDP GSO/GRO on UDP sockets where the kernel offers them */
    int workers;         /* worker threads, 1..FP_HUB_MAX_WORKERS */
    fp_replay_params replay; /* the restart policy; the window size is per connection */
} fp_hub_config;

typedef struct fp_hub_conn_spec {
    uint16_t mux;
    int role;            /* 0 left, 1 right */
    fp_suite suite;
    uint32_t window;
    uint32_t key_len;    /* = suite.kd_key_len (0 for null kd) */
    uint8_t key[32];
    uint8_t salt[14];
} fp_hub_conn_spec;

/* Connection drops, in this order; the names are the Python plane's. */
enum fp_conn_drop {
    FP_CD_SHORT = 0, FP_CD_AUTH = 1, FP_CD_REPLAY = 2, FP_CD_TOO_OLD = 3,
    FP_CD_PAYLOAD_TYPE = 4, FP_CD_NO_REMOTE = 5, FP_CD_OVERSIZE = 6, FP_CD_SEND_ERROR = 7
};

/* Node counters, in this order (rx/tx/relayed and drops as the Python plane, then the C
 * plane's own). */
enum fp_node_counter {
    FP_NC_RX = 0, FP_NC_TX = 1, FP_NC_RELAYED = 2, FP_NC_SHORT = 3, FP_NC_UNKNOWN_MUX = 4,
    FP_NC_AUTH = 5, FP_NC_REPLAY = 6, FP_NC_TOO_OLD = 7, FP_NC_PAYLOAD_TYPE = 8,
    FP_NC_MALFORMED = 9, FP_NC_NO_ROUTE = 10, FP_NC_NO_CONNECTION = 11, FP_NC_NO_REMOTE = 12,
    FP_NC_OVERSIZE = 13, FP_NC_NO_TRANSPORT = 14, FP_NC_SEND_ERROR = 15,
    FP_NC_DEVICE_WRITE = 16, FP_NC_STREAM_DROPPED = 17, FP_NC_STREAM_SKIPPED = 18,
    FP_NC_NO_MEMORY = 19, FP_NC_RX_SYSCALLS = 20, FP_NC_TX_SYSCALLS = 21,
    FP_NC_TX_BATCHED = 22, FP_NC_SLOW = 23, FP_NC_SEGMENTED = 24, FP_NC_COALESCED = 25,
    FP_NC_RESTART = 26, FP_NC_EVENTS_LOST = 27, FP_NC_STREAM_RESYNCS = 28,
    FP_NC_STREAM_KEEPALIVES_RX = 29, FP_NC_STREAM_KEEPALIVES_TX = 30,
    /* datagrams carried on streams, per framing: the transports' received / sent */
    FP_NC_TCP_RX = 31, FP_NC_TCP_TX = 32, FP_NC_ANYCAST_RX = 33, FP_NC_ANYCAST_TX = 34
};

typedef struct fp_hub_conn_stats {
    uint16_t mux;
    uint32_t gen;        /* instance: a removed and re-added MUX gets a new one */
    uint32_t next_seq;
    uint64_t rx_packets, rx_bytes, tx_packets, tx_bytes, restarts;
    uint64_t drops[FP_CD_COUNT];
    uint32_t nsenders;   /* replay senders known; the first 4 follow */
    uint16_t sender_ids[4];
    uint32_t sender_highs[4];
    fp_remote remote;    /* where it sends to now (roaming included) */
} fp_hub_conn_stats;

enum fp_hub_event_kind {
    FP_HEV_REMOTE = 1,        /* mux's peer learned or moved (remote) */
    FP_HEV_RESTART = 2,       /* mux's sender restarted its seqs (sender_id, seq) */
    FP_HEV_MAC = 3,           /* a frame from mux came from mac: learn it? (Python decides) */
    FP_HEV_STREAM_CLOSED = 4  /* stream remote.stream ended (error: 0 or errno) */
};

typedef struct fp_hub_event {
    uint32_t kind;
    uint16_t mux;
    uint16_t sender_id;
    uint32_t gen;
    uint32_t seq;
    int32_t error;
    uint8_t mac[6];
    fp_remote remote;
} fp_hub_event;

typedef struct fp_hub_info {
    uint32_t workers, connections, streams;
    uint32_t offloads;   /* FP_OFF_* */
    uint64_t table_bytes;      /* connection, key, route and MAC tables */
    uint64_t index_bytes;      /* of which the fixed MUX index (65536 pointers) */
    uint64_t active_bytes;     /* crypto contexts and replay windows of active connections */
    uint32_t active_rx, active_tx;
} fp_hub_info;

typedef struct fp_hub_out {
    uint32_t kind;       /* 1: to the device, 2: to the network (remote) */
    fp_remote remote;
    uint32_t off, len;   /* in the caller's buffer */
} fp_hub_out;

typedef struct fp_hub fp_hub;

fp_hub *fp_hub_new(const fp_hub_config *cfg, char *err, size_t errlen);
/* Gives worker `worker` an fd to serve (FP_FD_*), before fp_hub_start. The fds stay the
 * caller's and must be non-blocking; every worker may send on every UDP socket. */
int fp_hub_attach(fp_hub *h, int worker, int kind, int fd);
int fp_hub_start(fp_hub *h, char *err, size_t errlen);
/* Stops and joins the workers and frees everything (closing the streams' fds). */
void fp_hub_free(fp_hub *h);
void fp_hub_info_get(fp_hub *h, fp_hub_info *out);

/* Adds or updates connections. Unchanged: nothing happens. New keys, role or algorithms: a
 * new sequence space (next seq = seqs[i]) and window. Only the window: a new window. Returns
 * how many were applied, or -1 (err names the entry; the ones before it stay applied). */
long fp_hub_conn_put(fp_hub *h, const fp_hub_conn_spec *specs, const uint32_t *seqs, size_t n,
                     char *err, size_t errlen);
int fp_hub_conn_remove(fp_hub *h, uint16_t mux);
/* NULL or kind FP_RK_NONE forgets the remote. */
int fp_hub_conn_set_remote(fp_hub *h, uint16_t mux, const fp_remote *r);
/* forward_only: only if `seq` is ahead (another node sent up to there). */
int fp_hub_conn_set_seq(fp_hub *h, uint16_t mux, uint32_t seq, int forward_only);
int fp_hub_conn_replay_advance(fp_hub *h, uint16_t mux, uint16_t sender_id, uint32_t high);
size_t fp_hub_conn_replay(fp_hub *h, uint16_t mux, uint16_t *ids, uint32_t *highs, size_t max);
/* 1 and the stats and remote of mux, 0 if there is no such connection. */
int fp_hub_conn_get(fp_hub *h, uint16_t mux, fp_hub_conn_stats *st, fp_remote *remote);

/* Replaces the whole route table. */
int fp_hub_routes_set(fp_hub *h, const fp_route *routes, size_t n, char *err, size_t errlen);
int fp_hub_route_lookup(fp_hub *h, int version, const uint8_t *addr);
int fp_hub_mac_set(fp_hub *h, const uint8_t *mac, uint16_t mux);
void fp_hub_mac_forget(fp_hub *h, uint16_t mux);
int fp_hub_mac_get(fp_hub *h, const uint8_t *mac);

/* Hands a connected stream socket to the hub (which closes it when it ends); returns the
 * stream id (> 0) or 0 (full, bad framing or fd). synced = 0: the stream starts mid-frame (a
 * taken-over connection); keepalive_ms: this end's keep-alive interval (framings with one). */
uint32_t fp_hub_stream_add(fp_hub *h, int fd, int framing, const uint8_t *peer,
                           uint32_t peer_len, int synced, uint32_t keepalive_ms);
int fp_hub_stream_close(fp_hub *h, uint32_t id);
/* Ends a stream without a word to its peer (another node carries the connection on): TCP_REPAIR
 * on, then the socket is closed (no FIN, no RST). */
int fp_hub_stream_drop(fp_hub *h, uint32_t id);
/* A stream's framing figures: resyncs, skipped bytes, keep-alives received, the peer's
 * announced interval (ms, 0 = none); -1 if it is gone. */
int fp_hub_stream_stats(fp_hub *h, uint32_t id, uint64_t *out, size_t n);
/* CLOCK_MONOTONIC seconds of the stream's last received bytes, or -1 if it is gone. */
double fp_hub_stream_last_rx(fp_hub *h, uint32_t id);

/* Connections whose counters or progress moved since the last call (up to max). */
size_t fp_hub_collect(fp_hub *h, fp_hub_conn_stats *out, size_t max);
void fp_hub_node_counters(fp_hub *h, uint64_t *out, size_t n);
/* An eventfd, readable while events or slow packets wait. */
int fp_hub_event_fd(fp_hub *h);
int fp_hub_next_event(fp_hub *h, fp_hub_event *ev);
/* The next packet the data plane left to Python (too big for the tunnel to mux): its length,
 * 0 when none waits. buf must hold 65536 bytes. */
long fp_hub_next_slow(fp_hub *h, uint16_t *mux, uint16_t *ptype, uint8_t *buf, size_t cap);
/* Seal and send one packet to mux from the caller's thread (fragments, ICMP errors). */
int fp_hub_send(fp_hub *h, uint16_t mux, uint16_t ptype, const uint8_t *payload, size_t len);
/* Frees what the workers no longer see, refreshes the flood list, resets learning budgets:
 * call a few times a second. */
void fp_hub_maintain(fp_hub *h);
/* Tests: one packet through the decisions on the calling thread, outputs captured in buf.
 * from_device 0: a datagram from `from`. Returns the number of outputs, or -1 if they did
 * not fit. */
long fp_hub_probe(fp_hub *h, int from_device, const uint8_t *pkt, size_t len,
                  const fp_remote *from, double now, fp_hub_out *outs, size_t maxouts,
                  uint8_t *buf, size_t cap);
/* Tests: fp_hub_send with the output captured as by fp_hub_probe. */
long fp_hub_probe_send(fp_hub *h, uint16_t mux, uint16_t ptype, const uint8_t *payload,
                       size_t len, fp_hub_out *outs, size_t maxouts, uint8_t *buf, size_t cap);

#endif
