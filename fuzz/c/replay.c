/* The fast path's replay window (relay/fastpath/replay.c) under arbitrary parameters and
 * sequences: huge jumps, wraps, many sender IDs, restarts, adopted high-water marks. The work
 * per packet is bounded by the window size, so libFuzzer's -timeout catches a regression of
 * the "cost grows with the jump" kind; the verdicts obey the rules of spec/satp.md §3. The
 * sender table stays within FP_REPLAY_MAX_SENDERS and every sender it lists is found again
 * (eviction moves slots of the open-addressing table). */
#include "../../relay/fastpath/internal.h"
#include "common.h"

static void check_table(const fp_replay *w) {
    static uint16_t ids[FP_REPLAY_MAX_SENDERS + 1];
    static uint32_t highs[FP_REPLAY_MAX_SENDERS + 1];
    size_t n = fp_replay_senders(w, ids, highs, FP_REPLAY_MAX_SENDERS + 1);
    CHECK(n <= FP_REPLAY_MAX_SENDERS);
    for (size_t i = 0; i < n; i++) {
        uint32_t high;
        CHECK(fp_replay_high(w, ids[i], &high) && high == highs[i]);
    }
}

static const uint32_t SIZES[] = {0, 1, 2, 63, 64, 65, 1000, 1024, 4096, 1u << 20};
#define NSIZES (sizeof SIZES / sizeof SIZES[0])

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    reader r = {data, size};
    fp_replay_params p = {
        .size = SIZES[rd_u8(&r) % NSIZES],
        .restart_after = rd_u8(&r) % 10,
        .restart_quiet = rd_u8(&r) / 16.0,
        .restart_max_seq = rd_u32(&r),
        .restart_gap = rd_u16(&r),
    };
    fp_replay *w = fp_replay_new(&p);
    CHECK(w != NULL);
    double now = 0;
    for (unsigned step = 0; r.n; step++) {
        if (step % 64 == 63)
            check_table(w);
        uint8_t op = rd_u8(&r);
        uint16_t sid = op & 0x40 ? rd_u16(&r) : op & 3; /* a few senders, or churn */
        uint32_t seq = rd_u32(&r);
        now += (op >> 2 & 3) * 0.75;
        uint32_t old;
        int known = fp_replay_high(w, sid, &old);
        if (op & 0x80) {
            fp_replay_advance(w, sid, seq, now);
            uint32_t high;
            CHECK(fp_replay_high(w, sid, &high));
            CHECK(!known || high == old || high == seq);
            continue;
        }
        int v = fp_replay_accept(w, sid, seq, now);
        CHECK(v >= FP_FRESH && v <= FP_TOO_OLD);
        uint32_t high;
        CHECK(fp_replay_high(w, sid, &high));
        uint32_t ahead = seq - old;
        if (!known || (ahead && ahead < 0x80000000u)) {
            CHECK(v == FP_FRESH && high == seq); /* ahead of the highest: fresh (§3) */
            continue;
        }
        CHECK(v != FP_FRESH);
        if (v == FP_RESTART) {
            CHECK(high == seq);
            continue;
        }
        CHECK(high == old);
        uint32_t back = old - seq;
        if (v == FP_IN_WINDOW) {
            CHECK(back > 0 && back < p.size);
            CHECK(fp_replay_accept(w, sid, seq, now) != FP_IN_WINDOW); /* accepted once */
        }
        if (v == FP_REPLAY)
            CHECK(back < p.size);
        if (v == FP_STALE)
            CHECK(p.size == 0);
        if (v == FP_TOO_OLD)
            CHECK(p.size && back >= p.size);
    }
    check_table(w);
    fp_replay_free(w);
    return 0;
}
