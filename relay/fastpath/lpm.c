/* Longest prefix match for the server mode's routes (IPv4 and IPv6), the semantics of
 * relay/tunnel/routes.py: one hash table per prefix length in use, looked up from the longest
 * length down; the first hit wins.
 *
 * The table is immutable once built (the hub swaps whole tables, see hub.h). Each length's
 * table is open addressing at load <= 1/2 under SipHash with a random key, and remembers the
 * longest probe sequence any of its prefixes needed: a lookup never probes further, whatever
 * address it is asked for. A lookup costs at most (lengths in use) x (that bound) probes, both
 * fixed by the configuration.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub.h"

typedef struct lpm_slot {
    uint64_t hi, lo;   /* masked prefix (IPv4: lo holds the 32 bits) */
    uint16_t mux;
    uint8_t used;
} lpm_slot;

typedef struct lpm_level {
    uint8_t len;
    uint32_t mask;      /* capacity - 1 */
    uint32_t max_probe; /* longest probe sequence of an inserted prefix */
    lpm_slot *slots;
} lpm_level;

struct fp_lpm {
    uint64_t key[2];
    int nlev[2];            /* [0] IPv4, [1] IPv6 */
    lpm_level *lev[2];      /* longest length first */
    size_t bytes;
};

static void load_addr(int version, const uint8_t *a, uint64_t *hi, uint64_t *lo) {
    if (version == 4) {
        *hi = 0;
        *lo = (uint64_t)rd32(a);
        return;
    }
    uint64_t h = 0, l = 0;
    for (int i = 0; i < 8; i++) {
        h = h << 8 | a[i];
        l = l << 8 | a[8 + i];
    }
    *hi = h;
    *lo = l;
}

static void mask_to(int version, int len, uint64_t *hi, uint64_t *lo) {
    if (version == 4) {
        *lo = len ? *lo & (0xffffffffull << (32 - len)) & 0xffffffffull : 0;
        return;
    }
    if (len <= 64) {
        *hi = len ? *hi & (~0ull << (64 - len)) : 0;
        *lo = 0;
    } else if (len < 128) {
        *lo &= ~0ull << (128 - len);
    }
}

static inline uint32_t slot_of(const fp_lpm *t, uint64_t hi, uint64_t lo, int len) {
    uint64_t m[3] = {hi, lo, (uint64_t)len};
    return (uint32_t)fp_siphash(t->key, m, 3);
}

void fp_lpm_free(fp_lpm *t) {
    if (!t)
        return;
    for (int f = 0; f < 2; f++) {
        for (int i = 0; i < t->nlev[f]; i++)
            free(t->lev[f][i].slots);
        free(t->lev[f]);
    }
    free(t);
}

fp_lpm *fp_lpm_build(const fp_route *routes, size_t n, char *err, size_t errlen) {
    fp_lpm *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    fp_random_key(t->key);
    t->bytes = sizeof(*t);
    size_t count[2][129] = {{0}};
    for (size_t i = 0; i < n; i++) {
        const fp_route *r = &routes[i];
        int f = r->version == 6;
        if ((r->version != 4 && r->version != 6) || r->length > (f ? 128 : 32)) {
            snprintf(err, errlen, "route %zu: bad version %u or length %u", i, r->version,
                     r->length);
            fp_lpm_free(t);
            return NULL;
        }
        count[f][r->length]++;
    }
    for (int f = 0; f < 2; f++) {
        int nl = 0;
        for (int len = 0; len <= 128; len++)
            nl += count[f][len] != 0;
        t->lev[f] = calloc((size_t)(nl ? nl : 1), sizeof(lpm_level));
        if (!t->lev[f])
            goto oom;
        t->bytes += (size_t)(nl ? nl : 1) * sizeof(lpm_level);
        int k = 0;
        for (int len = 128; len >= 0; len--) {
            if (!count[f][len])
                continue;
            uint32_t cap = 4;
            while (cap < 2 * count[f][len])
                cap <<= 1;
            lpm_level *lv = &t->lev[f][k++];
            lv->len = (uint8_t)len;
            lv->mask = cap - 1;
            lv->slots = calloc(cap, sizeof(lpm_slot));
            t->nlev[f] = k;
            if (!lv->slots)
                goto oom;
            t->bytes += cap * sizeof(lpm_slot);
        }
    }
    for (size_t i = 0; i < n; i++) {
        const fp_route *r = &routes[i];
        int f = r->version == 6;
        uint64_t hi, lo;
        load_addr(r->version, r->addr, &hi, &lo);
        mask_to(r->version, r->length, &hi, &lo);
        lpm_level *lv = NULL;
        for (int k = 0; k < t->nlev[f]; k++)
            if (t->lev[f][k].len == r->length)
                lv = &t->lev[f][k];
        uint32_t s = slot_of(t, hi, lo, r->length);
        for (uint32_t p = 0;; p++) {
            lpm_slot *sl = &lv->slots[(s + p) & lv->mask];
            if (!sl->used || (sl->hi == hi && sl->lo == lo)) {
                *sl = (lpm_slot){hi, lo, r->mux, 1};
                if (p > lv->max_probe)
                    lv->max_probe = p;
                break;
            }
        }
    }
    return t;
oom:
    snprintf(err, errlen, "out of memory");
    fp_lpm_free(t);
    return NULL;
}

int fp_lpm_lookup(const fp_lpm *t, int version, const uint8_t *addr) {
    if (!t)
        return -1;
    int f = version == 6;
    uint64_t hi0, lo0;
    load_addr(version, addr, &hi0, &lo0);
    for (int k = 0; k < t->nlev[f]; k++) {
        const lpm_level *lv = &t->lev[f][k];
        uint64_t hi = hi0, lo = lo0;
        mask_to(version, lv->len, &hi, &lo);
        uint32_t s = slot_of(t, hi, lo, lv->len);
        for (uint32_t p = 0; p <= lv->max_probe; p++) {
            const lpm_slot *sl = &lv->slots[(s + p) & lv->mask];
            if (!sl->used)
                break;
            if (sl->hi == hi && sl->lo == lo)
                return sl->mux;
        }
    }
    return -1;
}

size_t fp_lpm_bytes(const fp_lpm *t) { return t ? t->bytes : 0; }
