/* Replay windows per sender ID, with exactly the semantics of relay/satp/replay.py (see its
 * docstring for the restart policy); the cross-check tests feed both the same sequences.
 *
 * The "seen" flags live in a ring of 2^k bits indexed by seq, k chosen so the ring holds the
 * window: moving the top forward clears the flags of the seqs it skips. A handful of sender
 * IDs is normal (one per anycast node), so they sit in a small open-addressing table of at
 * most FP_REPLAY_MAX_SENDERS; a new one beyond it evicts the sender with the oldest fresh
 * packet (ties: the lowest ID), as the Python window does. Only authenticated packets get
 * here, so only a holder of the connection's key can make that happen.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_WINDOW (1u << 20)

typedef struct sender {
    uint32_t high;
    double last_fresh;
    uint32_t run_last;
    uint32_t run_len;
    uint64_t *ring; /* nbits flags, bit (seq & (nbits - 1)) */
} sender;

typedef struct slot {
    uint32_t used;
    uint16_t id;
    sender st;
} slot;

struct fp_replay {
    fp_replay_params p;
    uint32_t nbits; /* power of two >= size, at least 64 */
    slot *slots;
    size_t cap, count;
};

fp_replay *fp_replay_new(const fp_replay_params *p) {
    if (p->size > MAX_WINDOW)
        return NULL;
    fp_replay *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->p = *p;
    r->nbits = 64;
    while (r->nbits < p->size)
        r->nbits <<= 1;
    r->cap = 8;
    r->slots = calloc(r->cap, sizeof(slot));
    if (!r->slots) {
        free(r);
        return NULL;
    }
    return r;
}

void fp_replay_free(fp_replay *r) {
    if (!r)
        return;
    for (size_t i = 0; i < r->cap; i++)
        free(r->slots[i].st.ring);
    free(r->slots);
    free(r);
}

static slot *find(const fp_replay *r, uint16_t id) {
    size_t mask = r->cap - 1;
    for (size_t i = id & mask;; i = (i + 1) & mask) {
        slot *s = &r->slots[i];
        if (!s->used || s->id == id)
            return s;
    }
}

/* Remove a slot; later slots of its probe run move back (linear probing, no tombstones). */
static void erase(fp_replay *r, slot *gone) {
    size_t mask = r->cap - 1;
    size_t i = (size_t)(gone - r->slots);
    for (size_t j = (i + 1) & mask; r->slots[j].used; j = (j + 1) & mask) {
        size_t home = r->slots[j].id & mask;
        /* slot j may fill the hole at i unless its home lies cyclically in (i, j] */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            r->slots[i] = r->slots[j];
            i = j;
        }
    }
    memset(&r->slots[i], 0, sizeof(slot));
    r->count--;
}

/* At the bound: evict the sender with the oldest fresh packet; its ring is reused. */
static uint64_t *evict_oldest(fp_replay *r) {
    slot *victim = NULL;
    for (size_t i = 0; i < r->cap; i++) {
        slot *s = &r->slots[i];
        if (s->used && (!victim || s->st.last_fresh < victim->st.last_fresh ||
                        (s->st.last_fresh == victim->st.last_fresh && s->id < victim->id)))
            victim = s;
    }
    uint64_t *ring = victim->st.ring;
    memset(ring, 0, r->nbits / 8);
    erase(r, victim);
    return ring;
}

static sender *insert(fp_replay *r, uint16_t id) {
    uint64_t *ring = r->count >= FP_REPLAY_MAX_SENDERS ? evict_oldest(r) : NULL;
    if ((r->count + 1) * 2 > r->cap) {
        size_t old_cap = r->cap;
        slot *old = r->slots;
        slot *grown = calloc(old_cap * 2, sizeof(slot));
        if (!grown)
            return NULL;
        r->slots = grown;
        r->cap = old_cap * 2;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].used)
                *find(r, old[i].id) = old[i];
        free(old);
    }
    if (!ring)
        ring = calloc(r->nbits / 64, sizeof(uint64_t));
    if (!ring)
        return NULL;
    slot *s = find(r, id);
    s->used = 1;
    s->id = id;
    memset(&s->st, 0, sizeof(s->st));
    s->st.ring = ring;
    r->count++;
    return &s->st;
}

static inline void set_bit(const fp_replay *r, sender *st, uint32_t seq) {
    uint32_t b = seq & (r->nbits - 1);
    st->ring[b / 64] |= 1ull << (b % 64);
}

static inline int get_bit(const fp_replay *r, const sender *st, uint32_t seq) {
    uint32_t b = seq & (r->nbits - 1);
    return (int)(st->ring[b / 64] >> (b % 64) & 1);
}

/* Forget every flag (seqs far away). */
static void clear_all(const fp_replay *r, sender *st) {
    memset(st->ring, 0, r->nbits / 8);
}

static void fill_all(const fp_replay *r, sender *st) {
    memset(st->ring, 0xff, r->nbits / 8);
}

/* The top moves from st->high to seq (ahead > 0): flags of the skipped seqs are cleared. */
static void advance_top(const fp_replay *r, sender *st, uint32_t seq, uint32_t ahead) {
    if (ahead >= r->nbits) {
        clear_all(r, st);
    } else {
        for (uint32_t s = st->high + 1; s != seq + 1; s++) {
            uint32_t b = s & (r->nbits - 1);
            if (b % 64 == 0 && seq - s >= 63) { /* whole words at once */
                st->ring[b / 64] = 0;
                s += 63;
                continue;
            }
            st->ring[b / 64] &= ~(1ull << (b % 64));
        }
    }
    st->high = seq;
    set_bit(r, st, seq);
}

static int restart(fp_replay *r, sender *st, uint32_t seq, double now) {
    uint32_t step = seq - st->run_last;
    if (st->run_len && step > 0 && step <= r->p.restart_gap) {
        st->run_len++;
        st->run_last = seq;
    } else if (seq < r->p.restart_max_seq) {
        st->run_last = seq;
        st->run_len = 1;
    } else {
        st->run_len = 0;
        return 0;
    }
    if (st->run_len >= r->p.restart_after && now - st->last_fresh >= r->p.restart_quiet) {
        clear_all(r, st);
        st->high = seq;
        set_bit(r, st, seq);
        st->last_fresh = now;
        st->run_len = 0;
        return 1;
    }
    return 0;
}

int fp_replay_accept(fp_replay *r, uint16_t sender_id, uint32_t seq, double now) {
    slot *sl = find(r, sender_id);
    if (!sl->used) {
        sender *st = insert(r, sender_id);
        if (!st)
            return FP_TOO_OLD; /* out of memory: fail closed */
        st->high = seq;
        set_bit(r, st, seq);
        st->last_fresh = now;
        return FP_FRESH;
    }
    sender *st = &sl->st;
    uint32_t ahead = seq - st->high;
    if (ahead && ahead < 0x80000000u) {
        if (r->p.size)
            advance_top(r, st, seq, ahead);
        else
            st->high = seq;
        st->last_fresh = now;
        st->run_len = 0;
        return FP_FRESH;
    }
    uint32_t back = st->high - seq; /* 0 for seq == high */
    if (r->p.size && back < r->p.size && !get_bit(r, st, seq)) {
        set_bit(r, st, seq);
        st->last_fresh = now;
        return FP_IN_WINDOW;
    }
    /* seen before or below the window: a replay, or the first packets of a restarted peer
     * (inside the window when it had sent fewer packets than the window holds) */
    if (restart(r, st, seq, now))
        return FP_RESTART;
    if (r->p.size && back < r->p.size)
        return FP_REPLAY;
    return r->p.size ? FP_TOO_OLD : FP_STALE;
}

int fp_replay_high(const fp_replay *r, uint16_t sender_id, uint32_t *high) {
    slot *sl = find(r, sender_id);
    if (!sl->used)
        return 0;
    *high = sl->st.high;
    return 1;
}

void fp_replay_advance(fp_replay *r, uint16_t sender_id, uint32_t high, double now) {
    slot *sl = find(r, sender_id);
    if (!sl->used) {
        sender *st = insert(r, sender_id);
        if (!st)
            return;
        st->high = high;
        st->last_fresh = now;
        if (r->p.size)
            fill_all(r, st);
        else
            set_bit(r, st, high);
        return;
    }
    uint32_t ahead = high - sl->st.high;
    if (ahead && ahead < 0x80000000u) {
        sl->st.high = high;
        if (r->p.size)
            fill_all(r, &sl->st);
    }
}

size_t fp_replay_senders(const fp_replay *r, uint16_t *ids, uint32_t *highs, size_t max) {
    size_t n = 0;
    for (size_t i = 0; i < r->cap && n < max; i++)
        if (r->slots[i].used) {
            ids[n] = r->slots[i].id;
            highs[n] = r->slots[i].st.high;
            n++;
        }
    return n;
}
