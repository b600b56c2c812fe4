/* Framings of SATP datagrams on byte streams, looked up by id (FP_FRAMING_*, fastpath.h).
 *
 * A framing only cuts the stream into datagrams and writes the bytes in front of each one;
 * the stream's buffers, socket and lifetime belong to the hub (hub_io.c). Another framing
 * plugs in by adding its fp_framing (hub.h) to FRAMINGS: a resynchronising one gets the
 * `check` callback to test whether a candidate frame authenticates, and `idle` to send
 * keep-alives on a quiet stream.
 */
#include <stddef.h>

#include "hub.h"

#define NS_PER_MS 1000000ull
#define MIN_INTERVAL_MS 100 /* a peer's announced interval is honoured down to this */

/* --transport tcp: a 2-byte big-endian length, then the datagram (relay/transport/framing.py). */
static size_t length_encode(void *state, uint8_t *hdr, size_t dglen) {
    (void)state;
    wr16(hdr, (uint16_t)dglen);
    return 2;
}

static int length_decode(void *state, const uint8_t *buf, size_t avail, fp_frame *f,
                         fp_frame_check_fn check, void *check_ctx) {
    (void)state;
    (void)check;
    (void)check_ctx;
    if (avail < 2)
        return FP_FRAME_MORE;
    size_t n = rd16(buf);
    if (avail < 2 + n)
        return FP_FRAME_MORE;
    f->off = 2;
    f->len = n;
    f->consumed = 2 + n;
    return FP_FRAME_OK;
}

static const fp_framing LENGTH = {
    .name = "length",
    .header_len = 2,
    .state_size = 0,
    .init = NULL,
    .encode = length_encode,
    .decode = length_decode,
    .idle = NULL,
    .stats = NULL,
};

/* --transport anycast-tcp: the frames of anycast_framing.c (relay/transport/anycast_framing.py
 * is the reference). A taken-over stream starts unsynced and searches for a frame whose SATP
 * datagram authenticates (check), or with null auth one followed by a valid header. Both
 * ends send a keep-alive when they sent nothing for the shorter of their two intervals. */
typedef struct anycast_state {
    fp_atcp codec;
    uint32_t own_ms;
    int announced; /* the first keep-alive (our interval) went out */
} anycast_state;

static void anycast_init(void *state, const fp_stream_opts *o) {
    anycast_state *st = state;
    fp_atcp_init(&st->codec, o->synced, o->max_body);
    st->own_ms = o->keepalive_ms;
}

static size_t anycast_encode(void *state, uint8_t *hdr, size_t dglen) {
    (void)state;
    /* dglen is at least a SATP header and at most the hub's max_datagram (<= 65535) */
    return fp_atcp_encode(hdr, dglen);
}

static int anycast_decode(void *state, const uint8_t *buf, size_t avail, fp_frame *f,
                          fp_frame_check_fn check, void *check_ctx) {
    anycast_state *st = state;
    uint64_t resyncs = st->codec.resyncs;
    int r = fp_atcp_decode(&st->codec, buf, avail, &f->off, &f->len, &f->consumed, check,
                           check_ctx);
    if (st->codec.resyncs != resyncs)
        f->events |= FP_FEV_RESYNC;
    switch (r) {
    case FP_ATCP_DATAGRAM:
        return FP_FRAME_OK;
    case FP_ATCP_KEEPALIVE:
        f->events |= FP_FEV_KEEPALIVE;
        return FP_FRAME_CONTROL;
    case FP_ATCP_SKIP:
        return FP_FRAME_SKIP;
    default:
        return FP_FRAME_MORE;
    }
}

static size_t anycast_idle(void *state, uint64_t now_ns, uint64_t last_tx_ns, uint8_t *out,
                           size_t cap) {
    anycast_state *st = state;
    if (!st->own_ms || cap < FP_ATCP_KEEPALIVE_LEN)
        return 0;
    uint64_t ms = st->own_ms;
    uint32_t peer = st->codec.peer_interval_ms;
    if (peer) {
        uint64_t p = peer < MIN_INTERVAL_MS ? MIN_INTERVAL_MS : peer;
        if (p < ms)
            ms = p;
    }
    if (st->announced && now_ns - last_tx_ns < ms * NS_PER_MS)
        return 0; /* the first one announces the interval at once, as the Python plane */
    st->announced = 1;
    return fp_atcp_keepalive(out, st->own_ms);
}

static int anycast_stats(const void *state, uint64_t *out, size_t n) {
    const anycast_state *st = state;
    uint64_t v[4] = {st->codec.resyncs, st->codec.skipped, st->codec.keepalives,
                     st->codec.peer_interval_ms};
    size_t k = 0;
    for (; k < n && k < 4; k++)
        out[k] = v[k];
    return (int)k;
}

static const fp_framing ANYCAST = {
    .name = "anycast",
    .header_len = FP_ATCP_HEADER,
    .state_size = sizeof(anycast_state),
    .init = anycast_init,
    .encode = anycast_encode,
    .decode = anycast_decode,
    .idle = anycast_idle,
    .stats = anycast_stats,
};

static const fp_framing *const FRAMINGS[] = {
    [FP_FRAMING_LENGTH] = &LENGTH,
    [FP_FRAMING_ANYCAST] = &ANYCAST,
};

const fp_framing *fp_framing_get(int id) {
    if (id < 0 || (size_t)id >= sizeof(FRAMINGS) / sizeof(FRAMINGS[0]))
        return NULL;
    return FRAMINGS[id];
}
