/* SATP per-packet crypto with OpenSSL libcrypto, contexts made once and reused.
 *
 * Per packet: one AES-ECB call under the master key turns all counter blocks of the PRF into
 * the session key, salt and auth key; one AES-CTR re-key encrypts payload type + payload;
 * HMAC-SHA1 is built from SHA-1 directly because the auth key changes with every packet
 * (OpenSSL's HMAC objects cost several times more to re-key than the two pad blocks do).
 */
#define OPENSSL_API_COMPAT 10101 /* the SHA1_* functions: the cheapest per-packet HMAC */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define AUTH_KEY_LEN 20
#define SALT_LEN 14
#define MAX_KD_BLOCKS 5 /* session key (<= 2) + salt (1) + auth key (2) */

/* (session key, session salt, auth key) labels by the sender's role. */
static const uint32_t LABELS[2][3] = {
    {0x356A192B, 0x77DE68DA, 0xAC3478D6}, /* left */
    {0xDA4B9237, 0x1B645389, 0xC1DFD96E}, /* right */
};

struct fp_satp {
    fp_suite suite;
    int role;
    uint8_t salt_block[16]; /* master salt || 00 00 */
    EVP_CIPHER_CTX *kd;     /* AES-ECB under the master key; NULL for null kd */
    EVP_CIPHER_CTX *ctr;    /* AES-CTR, re-keyed per packet; NULL for the null cipher */
    EVP_CIPHER *kd_cipher, *ctr_cipher;
};

static const char *aes_name(int key_len, int ctr) {
    switch (key_len) {
    case 16: return ctr ? "AES-128-CTR" : "AES-128-ECB";
    case 24: return ctr ? "AES-192-CTR" : "AES-192-ECB";
    case 32: return ctr ? "AES-256-CTR" : "AES-256-ECB";
    default: return NULL;
    }
}

void fp_satp_free(fp_satp *s) {
    if (!s)
        return;
    EVP_CIPHER_CTX_free(s->kd);
    EVP_CIPHER_CTX_free(s->ctr);
    EVP_CIPHER_free(s->kd_cipher);
    EVP_CIPHER_free(s->ctr_cipher);
    OPENSSL_cleanse(s, sizeof(*s));
    free(s);
}

fp_satp *fp_satp_new(const fp_suite *suite, const uint8_t *master_key, size_t master_key_len,
                     const uint8_t *master_salt, int role, char *err, size_t errlen) {
    const char *why = NULL;
    if (suite->cipher_key_len && !aes_name(suite->cipher_key_len, 1))
        why = "cipher key length must be 0, 16, 24 or 32";
    else if (suite->kd_key_len && !aes_name(suite->kd_key_len, 0))
        why = "kd key length must be 0, 16, 24 or 32";
    else if (suite->tag_len < 0 || suite->tag_len > FP_MAX_TAG || (!suite->auth && suite->tag_len))
        why = "tag length must be 0..20, and 0 without auth";
    else if (role != 0 && role != 1)
        why = "role must be 0 (left) or 1 (right)";
    else if (suite->kd_key_len && (!master_key || master_key_len != (size_t)suite->kd_key_len))
        why = "the master key length must equal the kd key length";
    else if (suite->kd_key_len && !master_salt)
        why = "a master salt is needed";
    if (why) {
        snprintf(err, errlen, "%s", why);
        return NULL;
    }
    fp_satp *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->suite = *suite;
    s->role = role;
    if (suite->kd_key_len) {
        memcpy(s->salt_block, master_salt, SALT_LEN);
        s->kd_cipher = EVP_CIPHER_fetch(NULL, aes_name(suite->kd_key_len, 0), NULL);
        s->kd = EVP_CIPHER_CTX_new();
        if (!s->kd_cipher || !s->kd ||
            !EVP_EncryptInit_ex(s->kd, s->kd_cipher, NULL, master_key, NULL) ||
            !EVP_CIPHER_CTX_set_padding(s->kd, 0))
            goto fail;
    }
    if (suite->cipher_key_len) {
        static const uint8_t zero[32];
        s->ctr_cipher = EVP_CIPHER_fetch(NULL, aes_name(suite->cipher_key_len, 1), NULL);
        s->ctr = EVP_CIPHER_CTX_new();
        if (!s->ctr_cipher || !s->ctr ||
            !EVP_EncryptInit_ex(s->ctr, s->ctr_cipher, NULL, zero, zero))
            goto fail;
    }
    return s;
fail:
    snprintf(err, errlen, "OpenSSL could not set up AES (is libcrypto complete?)");
    fp_satp_free(s);
    return NULL;
}

size_t fp_satp_overhead(const fp_satp *s) {
    return FP_HEADER_LEN + FP_PTYPE_LEN + (size_t)s->suite.tag_len;
}

/* Counter block for (label, seq), then `n` consecutive blocks (128-bit big-endian +1). */
static void counter_blocks(const fp_satp *s, uint32_t label, uint32_t seq, uint8_t *out, int n) {
    uint8_t b[16];
    memcpy(b, s->salt_block, 16);
    for (int i = 0; i < 4; i++) {
        b[6 + i] ^= (uint8_t)(label >> (24 - 8 * i));
        b[10 + i] ^= (uint8_t)(seq >> (24 - 8 * i));
    }
    for (int k = 0; k < n; k++) {
        memcpy(out + 16 * k, b, 16);
        for (int i = 15; i >= 0 && ++b[i] == 0; i--)
            ;
    }
}

typedef struct session {
    uint8_t key[32];
    uint8_t salt[16];
    uint8_t auth[AUTH_KEY_LEN];
} session;

static void derive(fp_satp *s, int sender_role, uint32_t seq, session *out) {
    if (!s->kd) {
        memset(out, 0, sizeof(*out));
        return;
    }
    const uint32_t *lab = LABELS[sender_role];
    uint8_t blocks[16 * MAX_KD_BLOCKS], stream[16 * MAX_KD_BLOCKS];
    int n = 0, key_blocks = (s->suite.cipher_key_len + 15) / 16;
    if (key_blocks) {
        counter_blocks(s, lab[0], seq, blocks, key_blocks);
        n += key_blocks;
    }
    counter_blocks(s, lab[1], seq, blocks + 16 * n, 1);
    int salt_at = n++;
    int auth_at = n;
    if (s->suite.auth) {
        counter_blocks(s, lab[2], seq, blocks + 16 * n, 2);
        n += 2;
    }
    int outl = 0;
    EVP_EncryptUpdate(s->kd, stream, &outl, blocks, 16 * n);
    memcpy(out->key, stream, (size_t)s->suite.cipher_key_len);
    memcpy(out->salt, stream + 16 * salt_at, SALT_LEN);
    if (s->suite.auth)
        memcpy(out->auth, stream + 16 * auth_at, AUTH_KEY_LEN);
    OPENSSL_cleanse(stream, sizeof(stream));
}

static void crypt_payload(fp_satp *s, const session *k, uint32_t seq, uint16_t sid,
                          uint16_t mux, uint8_t *data, size_t len) {
    if (!s->ctr || !len)
        return;
    uint8_t iv[16];
    memcpy(iv, k->salt, SALT_LEN);
    iv[14] = iv[15] = 0;
    iv[4] ^= (uint8_t)(mux >> 8);
    iv[5] ^= (uint8_t)mux;
    iv[6] ^= (uint8_t)(sid >> 8);
    iv[7] ^= (uint8_t)sid;
    for (int i = 0; i < 4; i++)
        iv[10 + i] ^= (uint8_t)(seq >> (24 - 8 * i));
    int outl = 0;
    EVP_EncryptInit_ex(s->ctr, NULL, NULL, k->key, iv);
    EVP_EncryptUpdate(s->ctr, data, &outl, data, (int)len);
}

static void hmac_sha1(const uint8_t key[AUTH_KEY_LEN], const uint8_t *msg, size_t len,
                      uint8_t mac[20]) {
    uint8_t pad[64];
    SHA_CTX c;
    memset(pad, 0x36, sizeof(pad));
    for (int i = 0; i < AUTH_KEY_LEN; i++)
        pad[i] ^= key[i];
    SHA1_Init(&c);
    SHA1_Update(&c, pad, sizeof(pad));
    SHA1_Update(&c, msg, len);
    SHA1_Final(mac, &c);
    memset(pad, 0x5c, sizeof(pad));
    for (int i = 0; i < AUTH_KEY_LEN; i++)
        pad[i] ^= key[i];
    SHA1_Init(&c);
    SHA1_Update(&c, pad, sizeof(pad));
    SHA1_Update(&c, mac, 20);
    SHA1_Final(mac, &c);
    OPENSSL_cleanse(pad, sizeof(pad));
}

size_t fp_seal_inplace(fp_satp *s, uint8_t *d, size_t len, uint32_t seq, uint16_t sid,
                       uint16_t mux, uint16_t ptype) {
    session k;
    derive(s, s->role, seq, &k);
    wr32(d, seq);
    wr16(d + 4, sid);
    wr16(d + 6, mux);
    wr16(d + 8, ptype);
    crypt_payload(s, &k, seq, sid, mux, d + FP_HEADER_LEN, FP_PTYPE_LEN + len);
    size_t n = FP_DATA_OFF + len;
    if (s->suite.tag_len) {
        uint8_t mac[20];
        hmac_sha1(k.auth, d, n, mac);
        memcpy(d + n, mac + 20 - s->suite.tag_len, (size_t)s->suite.tag_len);
        n += (size_t)s->suite.tag_len;
    }
    OPENSSL_cleanse(&k, sizeof(k));
    return n;
}

long fp_open_inplace(fp_satp *s, uint8_t *d, size_t len, fp_hdr *h) {
    size_t tag = (size_t)s->suite.tag_len;
    if (len < FP_DATA_OFF + tag)
        return FP_ERR_SHORT;
    h->seq = rd32(d);
    h->sender_id = rd16(d + 4);
    h->mux = rd16(d + 6);
    session k;
    derive(s, 1 - s->role, h->seq, &k);
    size_t end = len - tag;
    if (tag) {
        uint8_t mac[20];
        hmac_sha1(k.auth, d, end, mac);
        if (CRYPTO_memcmp(mac + 20 - tag, d + end, tag) != 0) {
            OPENSSL_cleanse(&k, sizeof(k));
            return FP_ERR_AUTH;
        }
    }
    crypt_payload(s, &k, h->seq, h->sender_id, h->mux, d + FP_HEADER_LEN, end - FP_HEADER_LEN);
    OPENSSL_cleanse(&k, sizeof(k));
    h->payload_type = rd16(d + FP_HEADER_LEN);
    return (long)(end - FP_DATA_OFF);
}

long fp_seal(fp_satp *s, uint32_t seq, uint16_t sender_id, uint16_t mux, uint16_t ptype,
             const uint8_t *payload, size_t len, uint8_t *out, size_t outcap) {
    if (outcap < len + fp_satp_overhead(s))
        return FP_ERR_SPACE;
    memmove(out + FP_DATA_OFF, payload, len);
    return (long)fp_seal_inplace(s, out, len, seq, sender_id, mux, ptype);
}

long fp_open(fp_satp *s, const uint8_t *dgram, size_t len, uint8_t *out, size_t outcap,
             fp_hdr *hdr) {
    if (outcap < len)
        return FP_ERR_SPACE;
    memmove(out, dgram, len);
    long n = fp_open_inplace(s, out, len, hdr);
    if (n >= 0)
        memmove(out, out + FP_DATA_OFF, (size_t)n);
    return n;
}

int fp_prf(fp_satp *s, uint32_t label, uint32_t seq, uint8_t *out, size_t length) {
    if (!s->kd) {
        memset(out, 0, length);
        return 0;
    }
    uint8_t blocks[64], stream[64];
    for (size_t done = 0; done < length; done += sizeof(stream)) {
        size_t want = length - done < sizeof(stream) ? length - done : sizeof(stream);
        int n = (int)((want + 15) / 16), outl = 0;
        /* the counter continues across chunks: start at block done/16 */
        uint8_t b[16];
        counter_blocks(s, label, seq, blocks, 1);
        memcpy(b, blocks, 16);
        for (size_t k = 0; k < done / 16; k++)
            for (int i = 15; i >= 0 && ++b[i] == 0; i--)
                ;
        for (int k = 0; k < n; k++) {
            memcpy(blocks + 16 * k, b, 16);
            for (int i = 15; i >= 0 && ++b[i] == 0; i--)
                ;
        }
        if (!EVP_EncryptUpdate(s->kd, stream, &outl, blocks, 16 * n))
            return -1;
        memcpy(out + done, stream, want);
    }
    return 0;
}
