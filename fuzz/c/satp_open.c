/* The fast path's SATP open (relay/fastpath/satp.c): any datagram under any of a set of
 * suites either fails cleanly ("short"/"auth") or opens, and what opens seals back into the
 * very same bytes under the sender's role. The first input byte picks the suite and keys
 * (the same table as fuzz/cases.py, which the initial inputs are made with). */
#include "../../relay/fastpath/internal.h"
#include "common.h"

static const uint8_t KEY_SECRET[16] = {0xbd, 0xe0, 0xea, 0xcd, 0x71, 0x62, 0xfe, 0xf6,
                                       0xa2, 0x5f, 0xe9, 0x7b, 0xf5, 0x27, 0xa2, 0x5b};
static const uint8_t SALT_SECRET[14] = {0xcd, 0x1a, 0xe8, 0x4f, 0x75, 0xca, 0xaa,
                                        0x47, 0x4f, 0x3a, 0x66, 0x3f, 0x05, 0xf4};
static const uint8_t KEY_COUNT[32] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                                      0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
                                      0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe,
                                      0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};
static const uint8_t SALT_COUNT[14] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};

/* cipher key length, kd key length, auth, tag length, master key, receiver role */
typedef struct cfg {
    fp_suite suite;
    const uint8_t *key, *salt;
    int role;
} cfg;

#define CFG(c, k, a, t, key, salt) \
    {{c, k, a, t}, key, salt, 0}, {{c, k, a, t}, key, salt, 1}
static const cfg CONFIGS[] = {
    CFG(16, 16, 1, 10, KEY_SECRET, SALT_SECRET), /* 0, 1: anytun's defaults, -E secret */
    CFG(0, 0, 0, 0, NULL, NULL),                 /* 2, 3: null / null */
    CFG(16, 16, 1, 10, KEY_COUNT, SALT_COUNT),   /* 4, 5: -K / -A */
    CFG(16, 0, 1, 10, NULL, NULL),               /* 6, 7: null kd (all-zero session keys) */
    CFG(32, 32, 1, 20, KEY_COUNT, SALT_COUNT),   /* 8, 9: AES-256, full tag */
    CFG(32, 16, 1, 4, KEY_COUNT, SALT_COUNT),    /* 10, 11: cipher and kd lengths differ */
    CFG(0, 16, 1, 10, KEY_COUNT, SALT_COUNT),    /* 12, 13: auth without encryption */
    CFG(24, 24, 0, 0, KEY_COUNT, SALT_COUNT),    /* 14, 15: encryption without auth */
};
#define NCONFIGS (sizeof CONFIGS / sizeof CONFIGS[0])

static fp_satp *rx[NCONFIGS], *tx[NCONFIGS];

static void setup(void) {
    char err[200];
    for (size_t i = 0; i < NCONFIGS; i++) {
        const cfg *c = &CONFIGS[i];
        size_t klen = (size_t)c->suite.kd_key_len;
        rx[i] = fp_satp_new(&c->suite, c->key, klen, c->salt, c->role, err, sizeof err);
        tx[i] = fp_satp_new(&c->suite, c->key, klen, c->salt, 1 - c->role, err, sizeof err);
        CHECK(rx[i] && tx[i]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!rx[0])
        setup();
    if (!size)
        return 0;
    size_t i = data[0] % NCONFIGS;
    const uint8_t *dgram = data + 1;
    size_t len = size - 1;
    uint8_t *in = exact_copy(dgram, len);
    uint8_t *out = malloc(len + 1);
    CHECK(out != NULL);
    fp_hdr h;
    CHECK(fp_open(rx[i], in, len, out, len ? len - 1 : 0, &h) == FP_ERR_SPACE || len == 0);
    long n = fp_open(rx[i], in, len, out, len, &h);
    CHECK(n == FP_ERR_SHORT || n == FP_ERR_AUTH || n >= 0);
    CHECK(!memcmp(in, dgram, len)); /* the input is never written */
    if (n == FP_ERR_SHORT)
        CHECK(len < FP_HEADER_LEN + FP_PTYPE_LEN + (size_t)CONFIGS[i].suite.tag_len);
    if (n == FP_ERR_AUTH)
        CHECK(CONFIGS[i].suite.auth);
    if (n >= 0) {
        CHECK((size_t)n + fp_satp_overhead(rx[i]) == len);
        CHECK(h.seq == rd32(dgram) && h.sender_id == rd16(dgram + 4) && h.mux == rd16(dgram + 6));
        uint8_t *again = malloc(len);
        CHECK(again != NULL);
        CHECK(fp_seal(tx[i], h.seq, h.sender_id, h.mux, h.payload_type, out, (size_t)n, again,
                      len - 1) == FP_ERR_SPACE);
        long m = fp_seal(tx[i], h.seq, h.sender_id, h.mux, h.payload_type, out, (size_t)n,
                         again, len);
        CHECK(m == (long)len && !memcmp(again, dgram, len));
        /* in place gives the same answer */
        memcpy(again, dgram, len);
        fp_hdr h2;
        CHECK(fp_open_inplace(rx[i], again, len, &h2) == n);
        CHECK(!memcmp(again + FP_DATA_OFF, out, (size_t)n) && h2.payload_type == h.payload_type);
        free(again);
    }
    free(out);
    free(in);
    return 0;
}
