/* The anycast-tcp framing in C (relay/transport/anycast_framing.py is the reference; the
 * property test in tests/unit/test_fastpath_anycast_framing.py holds both to the same
 * answers). A pure codec: the caller owns the stream's buffer and drops what it is told. */
#include <string.h>

#include "fastpath.h"

#define MARKER 0xA7
#define T_SATP 0x53
#define T_KEEPALIVE 0x4B
#define MIN_SATP 10
#define MAX_BODY 0xFFFF

void fp_atcp_init(fp_atcp *st, int synced, size_t max_body) {
    memset(st, 0, sizeof(*st));
    st->synced = synced;
    st->max_body = max_body < MAX_BODY ? max_body : MAX_BODY;
}

size_t fp_atcp_encode(uint8_t *hdr, size_t dglen) {
    if (dglen < MIN_SATP || dglen > MAX_BODY)
        return 0;
    hdr[0] = MARKER;
    hdr[1] = T_SATP;
    hdr[2] = (uint8_t)(dglen >> 8);
    hdr[3] = (uint8_t)dglen;
    return FP_ATCP_HEADER;
}

size_t fp_atcp_keepalive(uint8_t *out, uint32_t interval_ms) {
    out[0] = MARKER;
    out[1] = T_KEEPALIVE;
    out[2] = 0;
    out[3] = 4;
    out[4] = (uint8_t)(interval_ms >> 24);
    out[5] = (uint8_t)(interval_ms >> 16);
    out[6] = (uint8_t)(interval_ms >> 8);
    out[7] = (uint8_t)interval_ms;
    return FP_ATCP_KEEPALIVE_LEN;
}

/* Body length of a valid header at p (4 bytes there), or -1. */
static long header_ok(const fp_atcp *st, const uint8_t *p) {
    if (p[0] != MARKER)
        return -1;
    size_t size = ((size_t)p[2] << 8) | p[3];
    if (size > st->max_body)
        return -1;
    if (p[1] == T_SATP && size >= MIN_SATP)
        return (long)size;
    if (p[1] == T_KEEPALIVE && size == 4)
        return 4;
    return -1;
}

/* The first acceptable frame at or after 0: 1 and *at; 0 and *at = where the bytes that may
 * still become a frame begin (everything before is no frame). */
static int search(const fp_atcp *st, const uint8_t *buf, size_t n, size_t *at,
                  fp_atcp_check_fn check, void *ctx) {
    const uint8_t *p = memchr(buf, MARKER, n);
    while (p != NULL) {
        size_t i = (size_t)(p - buf);
        if (n - i < FP_ATCP_HEADER) {
            *at = i;
            return 0;
        }
        long size = header_ok(st, p);
        if (size >= 0) {
            size_t end = i + FP_ATCP_HEADER + (size_t)size;
            if (end > n) {
                *at = i;
                return 0;
            }
            int verdict = -1;
            if (p[1] == T_SATP && check != NULL)
                verdict = check(ctx, p + FP_ATCP_HEADER, (size_t)size);
            if (verdict == 1) {
                *at = i;
                return 1;
            }
            if (verdict < 0) {
                if (n - end < FP_ATCP_HEADER) {
                    *at = i;
                    return 0;
                }
                if (header_ok(st, buf + end) >= 0) {
                    *at = i;
                    return 1;
                }
            }
        }
        p = memchr(p + 1, MARKER, n - i - 1);
    }
    *at = n;
    return 0;
}

int fp_atcp_decode(fp_atcp *st, const uint8_t *buf, size_t avail, size_t *off, size_t *len,
                   size_t *consumed, fp_atcp_check_fn check, void *ctx) {
    *consumed = *off = *len = 0;
    for (;;) {
        if (!st->synced) {
            size_t at;
            int found = search(st, buf, avail, &at, check, ctx);
            if (found) {
                st->synced = 1;
                st->resyncs++;
            }
            if (at > 0) {          /* drop what precedes the candidate first */
                st->skipped += at;
                *consumed = at;
                return FP_ATCP_SKIP;
            }
            if (!found)
                return FP_ATCP_MORE;
        }
        if (avail < FP_ATCP_HEADER)
            return FP_ATCP_MORE;
        long size = header_ok(st, buf);
        if (size < 0) {
            st->synced = 0;
            continue;
        }
        if (avail - FP_ATCP_HEADER < (size_t)size)
            return FP_ATCP_MORE;
        st->frames++;
        *consumed = FP_ATCP_HEADER + (size_t)size;
        if (buf[1] == T_SATP) {
            *off = FP_ATCP_HEADER;
            *len = (size_t)size;
            return FP_ATCP_DATAGRAM;
        }
        const uint8_t *b = buf + FP_ATCP_HEADER;
        st->peer_interval_ms = ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) |
                               ((uint32_t)b[2] << 8) | b[3];
        st->keepalives++;
        return FP_ATCP_KEEPALIVE;
    }
}
