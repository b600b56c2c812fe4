/* The primitives SATP needs -- AES (ECB for the key derivation, CTR for the payload) and
 * HMAC-SHA1 -- behind one table of functions, with two implementations:
 *   builtin  AES-NI and SHA-NI instructions (cipher_x86.c): no library in the process;
 *   openssl  libcrypto, loaded only when chosen (cipher_openssl.c): CPUs without those
 *            instructions, or an operator who wants OpenSSL (ANYTUN_RELAY_CRYPTO=openssl).
 * Both are constant-time: no table lookups indexed by key or data. */
#ifndef FASTPATH_CIPHER_H
#define FASTPATH_CIPHER_H

#include <stddef.h>
#include <stdint.h>

#include "fastpath.h"

#define FP_SHA1_LEN 20

typedef struct fp_cipher_ops {
    const char *name;
    /* `ecb_new`: an AES key schedule for ECB (NULL when out of memory or unsupported). */
    void *(*ecb_new)(const uint8_t *key, int key_len);
    void (*ecb_free)(void *k);
    int (*ecb)(void *k, const uint8_t *in, uint8_t *out, int blocks);   /* 0, or -1 */
    /* CTR under a key that changes with every packet; `ctr_new`, where the implementation
     * keeps per-connection state, makes it (NULL when out of memory). */
    void *(*ctr_new)(int key_len);
    void (*ctr_free)(void *c);
    void (*ctr)(void *c, const uint8_t *key, int key_len, const uint8_t iv[16], uint8_t *data,
                size_t len);
    void (*hmac_sha1)(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t len,
                      uint8_t mac[FP_SHA1_LEN]);
} fp_cipher_ops;

/* The implementation new connections use (chosen with fp_crypto_use, auto by default). */
const fp_cipher_ops *fp_cipher_current(void);

/* NULL when this CPU lacks the instructions (or is not x86-64). */
const fp_cipher_ops *fp_cipher_builtin(void);
/* NULL with a message in err when libcrypto cannot be loaded. */
const fp_cipher_ops *fp_cipher_openssl(char *err, size_t errlen);

/* Wipes secrets; the compiler may not drop it. */
void fp_wipe(void *p, size_t n);
/* 0 when equal; the time depends on n only. */
int fp_memcmp_ct(const void *a, const void *b, size_t n);

#endif
