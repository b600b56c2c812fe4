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
    .encode = length_encode,
    .decode = length_decode,
    .idle = NULL,
};

static const fp_framing *const FRAMINGS[] = {
    [FP_FRAMING_LENGTH] = &LENGTH,
};

const fp_framing *fp_framing_get(int id) {
    if (id < 0 || (size_t)id >= sizeof(FRAMINGS) / sizeof(FRAMINGS[0]))
        return NULL;
    return FRAMINGS[id];
}
