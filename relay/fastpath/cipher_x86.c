/* AES and HMAC-SHA1 with the x86-64 AES-NI and SHA-NI instructions (FIPS 197, FIPS 180-4,
 * RFC 2104). Keeping libcrypto out of the process saves its relocations and OpenSSL 3's
 * provider tables, ~3.5 MiB of every node's RSS; the instructions are constant-time.
 *
 * The key schedule runs once per packet for the payload cipher (SATP re-keys per packet):
 * AESKEYGENASSIST four words at a time for AES-128 and AES-256, word by word for AES-192.
 */
#include <stdlib.h>
#include <string.h>

#include "cipher.h"
#include "internal.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

#define X86 __attribute__((target("aes,sha,ssse3,sse4.1")))
#define MAX_ROUNDS 14

typedef struct aes_key {
    __m128i rk[MAX_ROUNDS + 1];
    int rounds;
} aes_key;

static const uint8_t RCON[10] = {0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36};

X86 static uint32_t sub_word(uint32_t w) {
    /* AESKEYGENASSIST puts SubWord(dword 1) in dword 0 */
    __m128i v = _mm_aeskeygenassist_si128(_mm_set_epi32(0, 0, (int)w, 0), 0);
    return (uint32_t)_mm_cvtsi128_si32(v);
}

/* AES-192's schedule word by word, as FIPS 197 states it: words as they lie in memory
 * (little-endian loads), so RotWord is a right rotation by 8. */
X86 static void expand_words(aes_key *k, const uint8_t *key, int key_len) {
    int nk = key_len / 4, words = 4 * (nk + 7);
    uint32_t w[4 * (MAX_ROUNDS + 1)];
    memcpy(w, key, (size_t)key_len);
    for (int i = nk; i < words; i++) {
        uint32_t t = w[i - 1];
        if (i % nk == 0)
            t = sub_word((t >> 8) | (t << 24)) ^ RCON[i / nk - 1];
        else if (nk == 8 && i % nk == 4)
            t = sub_word(t);
        w[i] = w[i - nk] ^ t;
    }
    for (int r = 0; r <= k->rounds; r++)
        k->rk[r] = _mm_loadu_si128((const __m128i *)&w[4 * r]);
    fp_wipe(w, sizeof(w));
}

/* The next four words from the previous four and T (the transformed word in every dword):
 * w0 ^= T, w1 ^= w0, ... as prefix XORs. */
X86 static __m128i next_words(__m128i k, __m128i t) {
    k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
    k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
    k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
    return _mm_xor_si128(k, t);
}

/* AESKEYGENASSIST gives RotWord(SubWord(w3)) ^ rcon in dword 3 and SubWord(w3) in dword 2. */
#define ROT_SUB(k, rcon) _mm_shuffle_epi32(_mm_aeskeygenassist_si128(k, rcon), 0xff)
#define SUB(k) _mm_shuffle_epi32(_mm_aeskeygenassist_si128(k, 0), 0xaa)

X86 static void expand(aes_key *k, const uint8_t *key, int key_len) {
    __m128i *rk = k->rk;
    k->rounds = key_len / 4 + 6;
    if (key_len == 24) {
        expand_words(k, key, key_len);
        return;
    }
    rk[0] = _mm_loadu_si128((const __m128i *)key);
    if (key_len == 16) {
#define R128(i, rcon) rk[i] = next_words(rk[i - 1], ROT_SUB(rk[i - 1], rcon))
        R128(1, 0x01); R128(2, 0x02); R128(3, 0x04); R128(4, 0x08); R128(5, 0x10);
        R128(6, 0x20); R128(7, 0x40); R128(8, 0x80); R128(9, 0x1b); R128(10, 0x36);
#undef R128
        return;
    }
    rk[1] = _mm_loadu_si128((const __m128i *)(key + 16));
#define R256(i, rcon)                                                                          \
    rk[i] = next_words(rk[i - 2], ROT_SUB(rk[i - 1], rcon));                                   \
    if (i < 14)                                                                                \
        rk[i + 1] = next_words(rk[i - 1], SUB(rk[i]))
    R256(2, 0x01); R256(4, 0x02); R256(6, 0x04); R256(8, 0x08); R256(10, 0x10);
    R256(12, 0x20); R256(14, 0x40);
#undef R256
}

X86 static __m128i encrypt_block(const aes_key *k, __m128i b) {
    b = _mm_xor_si128(b, k->rk[0]);
    for (int r = 1; r < k->rounds; r++)
        b = _mm_aesenc_si128(b, k->rk[r]);
    return _mm_aesenclast_si128(b, k->rk[k->rounds]);
}

static void *ecb_new(const uint8_t *key, int key_len) {
    aes_key *k = aligned_alloc(16, sizeof(aes_key));
    if (k)
        expand(k, key, key_len);
    return k;
}

static void ecb_free(void *k) {
    if (k) {
        fp_wipe(k, sizeof(aes_key));
        free(k);
    }
}

X86 static int ecb(void *key, const uint8_t *in, uint8_t *out, int blocks) {
    const aes_key *k = key;
    for (int i = 0; i < blocks; i++) {
        __m128i b = _mm_loadu_si128((const __m128i *)(in + 16 * i));
        _mm_storeu_si128((__m128i *)(out + 16 * i), encrypt_block(k, b));
    }
    return 0;
}

/* The IV is one 128-bit big-endian number, incremented per block as OpenSSL's CTR does. It is
 * kept as (hi, lo) in a register and byte-reversed into each counter block; when lo would
 * carry within this packet (SATP's counter starts with 16 zero bits: never, short of a 2^64
 * wrap), every block is built on its own. */
X86 static __m128i counter_block(uint64_t hi, uint64_t lo, uint64_t add, __m128i reverse) {
    uint64_t l = lo + add, h = hi + (l < lo);
    return _mm_shuffle_epi8(_mm_set_epi64x((long long)h, (long long)l), reverse);
}

#define LANES 8 /* blocks in flight: hides the AESENC latency */

X86 static void ctr(void *state, const uint8_t *key, int key_len, const uint8_t iv[16],
                    uint8_t *data, size_t len) {
    (void)state;
    const __m128i reverse = _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    aes_key k;
    expand(&k, key, key_len);
    uint64_t hi, lo;
    memcpy(&hi, iv, 8);
    memcpy(&lo, iv + 8, 8);
    hi = __builtin_bswap64(hi);
    lo = __builtin_bswap64(lo);
    uint64_t n = 0, blocks = (len + 15) / 16;
    size_t off = 0;
    if (lo <= UINT64_MAX - blocks) {
        const __m128i base = _mm_set_epi64x((long long)hi, (long long)lo);
        for (; off + 16 * LANES <= len; off += 16 * LANES, n += LANES) {
            uint8_t *p = data + off;
            __m128i b0, b1, b2, b3, b4, b5, b6, b7; /* named, so that they stay in registers */
#define EACH(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7)
#define START(j)                                                                               \
    b##j = _mm_add_epi64(base, _mm_set_epi64x(0, (long long)(n + j)));                         \
    b##j = _mm_xor_si128(_mm_shuffle_epi8(b##j, reverse), k.rk[0]);
#define ROUND(j) b##j = _mm_aesenc_si128(b##j, rk);
#define LAST(j)                                                                                \
    b##j = _mm_aesenclast_si128(b##j, k.rk[k.rounds]);                                         \
    _mm_storeu_si128((__m128i *)(p + 16 * j),                                                  \
                     _mm_xor_si128(_mm_loadu_si128((const __m128i *)(p + 16 * j)), b##j));
            EACH(START)
            for (int r = 1; r < k.rounds; r++) {
                const __m128i rk = k.rk[r];
                EACH(ROUND)
            }
            EACH(LAST)
#undef START
#undef ROUND
#undef LAST
#undef EACH
        }
    }
    for (; off < len; off += 16, n++) {
        __m128i s = encrypt_block(&k, counter_block(hi, lo, n, reverse));
        size_t m = len - off < 16 ? len - off : 16;
        if (m == 16) {
            __m128i *p = (__m128i *)(data + off);
            _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), s));
        } else {
            uint8_t ks[16];
            _mm_storeu_si128((__m128i *)ks, s);
            for (size_t i = 0; i < m; i++)
                data[off + i] ^= ks[i];
            fp_wipe(ks, sizeof(ks));
        }
    }
    fp_wipe(&k, sizeof(k));
}

/* ---- SHA-1 ---------------------------------------------------------------------------------
 * The state as SHA-NI wants it: A..D in one register (A in the top dword), E in the top dword
 * of another. Each SHA1RNDS4 does four rounds; SHA1NEXTE derives the next E (A of four rounds
 * before, rotated) and adds it to the next four message words; SHA1MSG1/2 extend the message
 * schedule four words at a time. */

/* Four rounds with function f on message words w; E comes from A of four rounds before. */
#define ROUNDS(f, w)                                                                           \
    do {                                                                                       \
        __m128i we = _mm_sha1nexte_epu32(prev, w);                                             \
        prev = abcd;                                                                           \
        abcd = _mm_sha1rnds4_epu32(abcd, we, f);                                               \
    } while (0)
/* W[t] = rol1(W[t-3] ^ W[t-8] ^ W[t-14] ^ W[t-16]) for the four words replacing w0 (the
 * oldest), from the three younger groups. */
#define SCHEDULE(w0, w1, w2, w3)                                                               \
    w0 = _mm_sha1msg2_epu32(_mm_xor_si128(_mm_sha1msg1_epu32(w0, w1), w2), w3)
#define STEP(f, w0, w1, w2, w3)                                                                \
    SCHEDULE(w0, w1, w2, w3);                                                                  \
    ROUNDS(f, w0)

X86 static void sha1_blocks(uint32_t st[5], const uint8_t *p, size_t blocks) {
    const __m128i reverse = _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m128i abcd = _mm_set_epi32((int)st[0], (int)st[1], (int)st[2], (int)st[3]);
    __m128i e0 = _mm_set_epi32((int)st[4], 0, 0, 0);
    for (; blocks; blocks--, p += 64) {
        const __m128i abcd_in = abcd, e_in = e0;
        __m128i m0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)p), reverse);
        __m128i m1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), reverse);
        __m128i m2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), reverse);
        __m128i m3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), reverse);
        __m128i prev = abcd;
        abcd = _mm_sha1rnds4_epu32(abcd, _mm_add_epi32(e0, m0), 0); /* rounds 0-3 */
        ROUNDS(0, m1);
        ROUNDS(0, m2);
        ROUNDS(0, m3);
        STEP(0, m0, m1, m2, m3); /* rounds 16-19 */
        STEP(1, m1, m2, m3, m0);
        STEP(1, m2, m3, m0, m1);
        STEP(1, m3, m0, m1, m2);
        STEP(1, m0, m1, m2, m3);
        STEP(1, m1, m2, m3, m0); /* rounds 36-39 */
        STEP(2, m2, m3, m0, m1);
        STEP(2, m3, m0, m1, m2);
        STEP(2, m0, m1, m2, m3);
        STEP(2, m1, m2, m3, m0);
        STEP(2, m2, m3, m0, m1); /* rounds 56-59 */
        STEP(3, m3, m0, m1, m2);
        STEP(3, m0, m1, m2, m3);
        STEP(3, m1, m2, m3, m0);
        STEP(3, m2, m3, m0, m1);
        STEP(3, m3, m0, m1, m2); /* rounds 76-79 */
        e0 = _mm_sha1nexte_epu32(prev, e_in);
        abcd = _mm_add_epi32(abcd, abcd_in);
    }
    st[0] = (uint32_t)_mm_extract_epi32(abcd, 3);
    st[1] = (uint32_t)_mm_extract_epi32(abcd, 2);
    st[2] = (uint32_t)_mm_extract_epi32(abcd, 1);
    st[3] = (uint32_t)_mm_extract_epi32(abcd, 0);
    st[4] = (uint32_t)_mm_extract_epi32(e0, 3);
}

/* The rest of a message of `total` bytes whose first total-len bytes were hashed already. */
static void sha1_finish(uint32_t st[5], const uint8_t *msg, size_t len, uint64_t total,
                        uint8_t out[FP_SHA1_LEN]) {
    sha1_blocks(st, msg, len / 64);
    uint8_t tail[128] = {0};
    size_t rem = len % 64, n = rem + 9 <= 64 ? 64 : 128;
    memcpy(tail, msg + len - rem, rem);
    tail[rem] = 0x80;
    for (int i = 0; i < 8; i++)
        tail[n - 1 - (size_t)i] = (uint8_t)((total * 8) >> (8 * i));
    sha1_blocks(st, tail, n / 64);
    for (int i = 0; i < 5; i++)
        wr32(out + 4 * i, st[i]);
    fp_wipe(tail, sizeof(tail));
}

static void hmac_sha1(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t len,
                      uint8_t mac[FP_SHA1_LEN]) {
    static const uint32_t init[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    uint8_t pad[64], inner[FP_SHA1_LEN];
    uint32_t st[5];
    /* SATP's auth keys are 20 bytes: never longer than a block, so never hashed first */
    memset(pad, 0x36, sizeof(pad));
    for (size_t i = 0; i < key_len; i++)
        pad[i] ^= key[i];
    memcpy(st, init, sizeof(st));
    sha1_blocks(st, pad, 1);
    sha1_finish(st, msg, len, 64 + (uint64_t)len, inner);
    for (size_t i = 0; i < sizeof(pad); i++)
        pad[i] ^= 0x36 ^ 0x5c;
    memcpy(st, init, sizeof(st));
    sha1_blocks(st, pad, 1);
    sha1_finish(st, inner, sizeof(inner), 64 + sizeof(inner), mac);
    fp_wipe(pad, sizeof(pad));
    fp_wipe(inner, sizeof(inner));
    fp_wipe(st, sizeof(st));
}

static const fp_cipher_ops OPS = {
    .name = "aes-ni/sha-ni",
    .ecb_new = ecb_new,
    .ecb_free = ecb_free,
    .ecb = ecb,
    .ctr = ctr,
    .hmac_sha1 = hmac_sha1,
};

const fp_cipher_ops *fp_cipher_builtin(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return NULL;
    int aes = (c >> 25) & 1, ssse3 = (c >> 9) & 1, sse41 = (c >> 19) & 1;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return NULL;
    int sha = (b >> 29) & 1;
    return aes && ssse3 && sse41 && sha ? &OPS : NULL;
}

#else

const fp_cipher_ops *fp_cipher_builtin(void) { return NULL; }

#endif
