/* Learned MAC addresses of a tap hub: MAC -> MUX, the semantics of the connection table's
 * `macs` (relay/tunnel/table.py, which decides what is learned; this is the data plane's copy).
 *
 * One writer (the control thread), lock-free readers: every entry is one 64-bit word
 * (MAC << 16 | MUX; 0 = empty, 1 = deleted; the all-zero MAC has a slot of its own), stored
 * and loaded atomically, so a reader sees
 * either the old or the new entry. Open addressing at load <= 1/2 under SipHash with a random
 * key; readers probe no further than the longest sequence the writer ever needed. When
 * deleted and live entries fill half of the table the writer builds a bigger copy and the hub
 * swaps it in.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "hub.h"

#define EMPTY 0ull
#define DELETED 1ull

struct fp_mactab {
    uint64_t key[2];
    uint32_t mask;
    _Atomic uint32_t max_probe;
    _Atomic int32_t zero_mux; /* 00:00:00:00:00:00 (the empty word can't hold it), -1 */
    size_t used, live; /* used counts deleted slots too */
    _Atomic uint64_t *slots;
};

static inline uint64_t mac48(const uint8_t m[6]) {
    return (uint64_t)m[0] << 40 | (uint64_t)m[1] << 32 | (uint64_t)m[2] << 24 |
           (uint64_t)m[3] << 16 | (uint64_t)m[4] << 8 | m[5];
}

static inline uint32_t home(const fp_mactab *t, uint64_t mac) {
    return (uint32_t)fp_siphash(t->key, &mac, 1) & t->mask;
}

fp_mactab *fp_mactab_new(size_t capacity) {
    size_t cap = 64;
    while (cap < capacity)
        cap <<= 1;
    fp_mactab *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->slots = calloc(cap, sizeof(*t->slots));
    if (!t->slots) {
        free(t);
        return NULL;
    }
    fp_random_key(t->key);
    t->mask = (uint32_t)(cap - 1);
    atomic_init(&t->zero_mux, -1);
    return t;
}

void fp_mactab_free(fp_mactab *t) {
    if (t) {
        free((void *)t->slots);
        free(t);
    }
}

int fp_mactab_get(const fp_mactab *t, const uint8_t mac[6]) {
    uint64_t m = mac48(mac);
    if (!t)
        return -1;
    if (!m)
        return atomic_load_explicit(&t->zero_mux, memory_order_acquire);
    uint32_t s = home(t, m), limit = atomic_load_explicit(&t->max_probe, memory_order_acquire);
    for (uint32_t p = 0; p <= limit; p++) {
        uint64_t w = atomic_load_explicit(&t->slots[(s + p) & t->mask], memory_order_acquire);
        if (w == EMPTY)
            return -1;
        if (w != DELETED && w >> 16 == m)
            return (int)(w & 0xffff);
    }
    return -1;
}

int fp_mactab_set(fp_mactab *t, const uint8_t mac[6], uint16_t mux) {
    uint64_t m = mac48(mac);
    if (!m) {
        if (atomic_load_explicit(&t->zero_mux, memory_order_relaxed) < 0)
            t->live++;
        atomic_store_explicit(&t->zero_mux, mux, memory_order_release);
        return 0;
    }
    uint64_t word = m << 16 | mux;
    uint32_t s = home(t, m), limit = atomic_load_explicit(&t->max_probe, memory_order_relaxed);
    int64_t free_at = -1;
    uint32_t p;
    for (p = 0; p <= limit; p++) {
        uint32_t i = (s + p) & t->mask;
        uint64_t w = atomic_load_explicit(&t->slots[i], memory_order_relaxed);
        if (w == EMPTY)
            break;
        if (w == DELETED) {
            if (free_at < 0)
                free_at = i;
            continue;
        }
        if (w >> 16 == m) {
            atomic_store_explicit(&t->slots[i], word, memory_order_release);
            return 0;
        }
    }
    if (free_at >= 0) {
        atomic_store_explicit(&t->slots[free_at], word, memory_order_release);
        t->live++;
        return 0;
    }
    if ((t->used + 1) * 2 > (size_t)t->mask + 1)
        return 1;
    for (;; p++) { /* the first empty slot past the known sequences */
        uint32_t i = (s + p) & t->mask;
        if (atomic_load_explicit(&t->slots[i], memory_order_relaxed) == EMPTY) {
            atomic_store_explicit(&t->slots[i], word, memory_order_release);
            if (p > limit) /* after the entry: a reader that sees the new limit finds it */
                atomic_store_explicit(&t->max_probe, p, memory_order_release);
            t->used++;
            t->live++;
            return 0;
        }
    }
}

void fp_mactab_remove_mux(fp_mactab *t, uint16_t mux) {
    if (atomic_load_explicit(&t->zero_mux, memory_order_relaxed) == mux) {
        atomic_store_explicit(&t->zero_mux, -1, memory_order_release);
        t->live--;
    }
    for (size_t i = 0; i <= t->mask; i++) {
        uint64_t w = atomic_load_explicit(&t->slots[i], memory_order_relaxed);
        if (w != EMPTY && w != DELETED && (w & 0xffff) == mux) {
            atomic_store_explicit(&t->slots[i], DELETED, memory_order_release);
            t->live--;
        }
    }
}

fp_mactab *fp_mactab_grow(const fp_mactab *t) {
    fp_mactab *g = fp_mactab_new(t->live * 4 > 64 ? t->live * 4 : 64);
    if (!g)
        return NULL;
    int32_t z = atomic_load_explicit(&t->zero_mux, memory_order_relaxed);
    if (z >= 0) {
        static const uint8_t zero[6];
        fp_mactab_set(g, zero, (uint16_t)z);
    }
    for (size_t i = 0; i <= t->mask; i++) {
        uint64_t w = atomic_load_explicit(&t->slots[i], memory_order_relaxed);
        if (w != EMPTY && w != DELETED) {
            uint8_t mac[6];
            for (int k = 0; k < 6; k++)
                mac[k] = (uint8_t)(w >> (56 - 8 * k));
            fp_mactab_set(g, mac, (uint16_t)(w & 0xffff));
        }
    }
    return g;
}

size_t fp_mactab_count(const fp_mactab *t) { return t ? t->live : 0; }

size_t fp_mactab_bytes(const fp_mactab *t) {
    return t ? sizeof(*t) + ((size_t)t->mask + 1) * sizeof(uint64_t) : 0;
}
