/* SATP per-packet crypto on the implementation cipher.h chose when the connection was made.
 *
 * Per packet: one AES-ECB call under the master key turns all counter blocks of the PRF into
 * the session key, salt and auth key; one AES-CTR under that key encrypts payload type +
 * payload; HMAC-SHA1 under the auth key covers header and ciphertext.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cipher.h"
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
    uint8_t salt_block[16];     /* master salt || 00 00 */
    const fp_cipher_ops *ops;
    void *kd;                   /* AES-ECB under the master key; NULL for null kd */
    void *ctr;                  /* the CTR state the implementation keeps, if any */
};

void fp_satp_free(fp_satp *s) {
    if (!s)
        return;
    if (s->kd)
        s->ops->ecb_free(s->kd);
    if (s->ctr)
        s->ops->ctr_free(s->ctr);
    fp_wipe(s, sizeof(*s));
    free(s);
}

fp_satp *fp_satp_new(const fp_suite *suite, const uint8_t *master_key, size_t master_key_len,
                     const uint8_t *master_salt, int role, char *err, size_t errlen) {
    const char *why = NULL;
    if (suite->cipher_key_len && !fp_aes_key_len_ok(suite->cipher_key_len))
        why = "cipher key length must be 0, 16, 24 or 32";
    else if (suite->kd_key_len && !fp_aes_key_len_ok(suite->kd_key_len))
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
    const fp_cipher_ops *ops = fp_cipher_current();
    if (!ops) {
        snprintf(err, errlen, "no AES implementation: this CPU lacks AES-NI/SHA-NI and "
                              "libcrypto cannot be loaded");
        return NULL;
    }
    fp_satp *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->suite = *suite;
    s->role = role;
    s->ops = ops;
    if (suite->kd_key_len) {
        memcpy(s->salt_block, master_salt, SALT_LEN);
        if (!(s->kd = ops->ecb_new(master_key, suite->kd_key_len)))
            goto fail;
    }
    if (suite->cipher_key_len && ops->ctr_new && !(s->ctr = ops->ctr_new(suite->cipher_key_len)))
        goto fail;
    return s;
fail:
    snprintf(err, errlen, "%s could not set up AES", ops->name);
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
    s->ops->ecb(s->kd, blocks, stream, n);
    memcpy(out->key, stream, (size_t)s->suite.cipher_key_len);
    memcpy(out->salt, stream + 16 * salt_at, SALT_LEN);
    if (s->suite.auth)
        memcpy(out->auth, stream + 16 * auth_at, AUTH_KEY_LEN);
    fp_wipe(stream, sizeof(stream));
}

static void crypt_payload(fp_satp *s, const session *k, uint32_t seq, uint16_t sid,
                          uint16_t mux, uint8_t *data, size_t len) {
    if (!s->suite.cipher_key_len || !len)
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
    s->ops->ctr(s->ctr, k->key, s->suite.cipher_key_len, iv, data, len);
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
        s->ops->hmac_sha1(k.auth, AUTH_KEY_LEN, d, n, mac);
        memcpy(d + n, mac + 20 - s->suite.tag_len, (size_t)s->suite.tag_len);
        n += (size_t)s->suite.tag_len;
    }
    fp_wipe(&k, sizeof(k));
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
        s->ops->hmac_sha1(k.auth, AUTH_KEY_LEN, d, end, mac);
        if (fp_memcmp_ct(mac + 20 - tag, d + end, tag) != 0) {
            fp_wipe(&k, sizeof(k));
            return FP_ERR_AUTH;
        }
    }
    crypt_payload(s, &k, h->seq, h->sender_id, h->mux, d + FP_HEADER_LEN, end - FP_HEADER_LEN);
    fp_wipe(&k, sizeof(k));
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
        int n = (int)((want + 15) / 16);
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
        if (s->ops->ecb(s->kd, blocks, stream, n))
            return -1;
        memcpy(out + done, stream, want);
    }
    return 0;
}
