/* The hub's stream framings (relay/fastpath/stream.c: --transport tcp's length framing and
 * anycast-tcp's resynchronising one, anycast_framing.c) driven the way a stream owner drives
 * them (hub_io.c stream_read): bytes arrive in chunks of any size, the owner keeps what a call
 * did not use up and drops what it is told. The check callback's verdict is a function of the
 * candidate's bytes (yes, no, cannot tell), so an attacker-chosen stream steers every branch.
 * Properties: every datagram lies inside the buffer and fits the limits; each call uses up
 * something or waits; what waits is bounded by one frame (no stream can make the owner hold
 * more than a frame and a header); the keep-alive hook writes a whole keep-alive or nothing. */
#include "../../relay/fastpath/hub.h"
#include "common.h"

#define HOLD_MAX (2 * 4 + 0xFFFF)

static int verdict(void *ctx, const uint8_t *d, size_t len) {
    (void)ctx;
    CHECK(len >= 10);
    return (int)(d[len - 1] % 3) - 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    reader r = {data, size};
    uint8_t opts = rd_u8(&r);
    const fp_framing *f = fp_framing_get(opts & 1 ? FP_FRAMING_ANYCAST : FP_FRAMING_LENGTH);
    CHECK(f != NULL);
    size_t max_body = 16 + rd_u16(&r);
    fp_stream_opts so = {.synced = !(opts & 2), .keepalive_ms = rd_u16(&r),
                         .max_body = max_body > 0xFFFF ? 0xFFFF : max_body};
    uint8_t state[256] = {0};
    CHECK(f->state_size <= sizeof(state));
    if (f->init)
        f->init(state, &so);
    static uint8_t buf[HOLD_MAX + 256];
    size_t have = 0;
    uint64_t now = 0, last_tx = 0;
    while (r.n) {
        size_t chunk = rd_u8(&r) + 1;
        if (chunk > r.n)
            chunk = r.n;
        CHECK(have + chunk <= sizeof(buf));
        memcpy(buf + have, r.p, chunk);
        r.p += chunk;
        r.n -= chunk;
        have += chunk;
        size_t off = 0;
        for (;;) {
            fp_frame fr = {0, 0, 0, 0};
            int res = f->decode(state, buf + off, have - off, &fr, verdict, NULL);
            CHECK(res >= FP_FRAME_MORE && res <= FP_FRAME_CONTROL);
            CHECK(fr.consumed <= have - off);
            if (res == FP_FRAME_MORE || !fr.consumed) {
                CHECK(res == FP_FRAME_MORE);
                break;
            }
            if (res == FP_FRAME_OK) {
                CHECK(fr.off + fr.len <= fr.consumed);
                CHECK(fr.len <= 0xFFFF);
                if (f == fp_framing_get(FP_FRAMING_ANYCAST))
                    CHECK(fr.len >= 10 && fr.len <= so.max_body);
                uint8_t hdr[16];
                size_t hl = f->encode(state, hdr, fr.len);
                CHECK(hl == f->header_len);
            }
            off += fr.consumed;
        }
        memmove(buf, buf + off, have - off);
        have -= off;
        CHECK(have <= HOLD_MAX);
        now += (uint64_t)rd_u8(&r) * 10000000ull; /* up to 2.55 s between chunks */
        if (f->idle) {
            uint8_t out[64];
            size_t n = f->idle(state, now, last_tx, out, sizeof(out));
            CHECK(n == 0 || n == 8);
            if (n) {
                CHECK(out[0] == 0xA7 && out[1] == 0x4B && out[2] == 0 && out[3] == 4);
                last_tx = now;
            }
        }
    }
    return 0;
}
