/* AES and HMAC-SHA1 with OpenSSL's libcrypto, loaded at run time when this implementation is
 * chosen: a process on the builtin one never maps the library. Contexts are made once per
 * connection and re-keyed per packet; HMAC-SHA1 is built from SHA1_* directly because the auth
 * key changes with every packet (OpenSSL's HMAC objects cost several times more to re-key than
 * the two pad blocks do). */
#define OPENSSL_API_COMPAT 10101 /* the SHA1_* functions: the cheapest per-packet HMAC */
#include <dlfcn.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cipher.h"

#define STR_(x) #x
#define STR(x) STR_(x)
#define LIBCRYPTO "libcrypto.so." STR(OPENSSL_SHLIB_VERSION)

#define FN(name) __typeof__(&name) name
static struct {
    FN(EVP_CIPHER_fetch);
    FN(EVP_CIPHER_free);
    FN(EVP_CIPHER_CTX_new);
    FN(EVP_CIPHER_CTX_free);
    FN(EVP_CIPHER_CTX_set_padding);
    FN(EVP_EncryptInit_ex);
    FN(EVP_EncryptUpdate);
    FN(SHA1_Init);
    FN(SHA1_Update);
    FN(SHA1_Final);
} ssl;
#undef FN

static const char *aes_name(int key_len, int ctr) {
    switch (key_len) {
    case 16: return ctr ? "AES-128-CTR" : "AES-128-ECB";
    case 24: return ctr ? "AES-192-CTR" : "AES-192-ECB";
    case 32: return ctr ? "AES-256-CTR" : "AES-256-ECB";
    default: return NULL;
    }
}

typedef struct evp {
    EVP_CIPHER *cipher;
    EVP_CIPHER_CTX *ctx;
} evp;

static void evp_free(void *p) {
    evp *e = p;
    if (!e)
        return;
    ssl.EVP_CIPHER_CTX_free(e->ctx);
    ssl.EVP_CIPHER_free(e->cipher);
    free(e);
}

static evp *evp_new(int key_len, int ctr, const uint8_t *key) {
    static const uint8_t zero[32];
    const char *name = aes_name(key_len, ctr);
    evp *e = name ? calloc(1, sizeof(*e)) : NULL;
    if (!e)
        return NULL;
    e->cipher = ssl.EVP_CIPHER_fetch(NULL, name, NULL);
    e->ctx = ssl.EVP_CIPHER_CTX_new();
    if (!e->cipher || !e->ctx ||
        !ssl.EVP_EncryptInit_ex(e->ctx, e->cipher, NULL, key ? key : zero, ctr ? zero : NULL) ||
        (!ctr && !ssl.EVP_CIPHER_CTX_set_padding(e->ctx, 0))) {
        evp_free(e);
        return NULL;
    }
    return e;
}

static void *ecb_new(const uint8_t *key, int key_len) { return evp_new(key_len, 0, key); }

static int ecb(void *k, const uint8_t *in, uint8_t *out, int blocks) {
    int outl = 0;
    return ssl.EVP_EncryptUpdate(((evp *)k)->ctx, out, &outl, in, 16 * blocks) ? 0 : -1;
}

static void *ctr_new(int key_len) { return evp_new(key_len, 1, NULL); }

static void ctr(void *c, const uint8_t *key, int key_len, const uint8_t iv[16], uint8_t *data,
                size_t len) {
    (void)key_len; /* the context was made for it */
    EVP_CIPHER_CTX *ctx = ((evp *)c)->ctx;
    int outl = 0;
    ssl.EVP_EncryptInit_ex(ctx, NULL, NULL, key, iv);
    ssl.EVP_EncryptUpdate(ctx, data, &outl, data, (int)len);
}

static void hmac_sha1(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t len,
                      uint8_t mac[FP_SHA1_LEN]) {
    uint8_t pad[64];
    SHA_CTX c;
    memset(pad, 0x36, sizeof(pad));
    for (size_t i = 0; i < key_len; i++)
        pad[i] ^= key[i];
    ssl.SHA1_Init(&c);
    ssl.SHA1_Update(&c, pad, sizeof(pad));
    ssl.SHA1_Update(&c, msg, len);
    ssl.SHA1_Final(mac, &c);
    for (size_t i = 0; i < sizeof(pad); i++)
        pad[i] ^= 0x36 ^ 0x5c;
    ssl.SHA1_Init(&c);
    ssl.SHA1_Update(&c, pad, sizeof(pad));
    ssl.SHA1_Update(&c, mac, FP_SHA1_LEN);
    ssl.SHA1_Final(mac, &c);
    fp_wipe(pad, sizeof(pad));
    fp_wipe(&c, sizeof(c));
}

static const fp_cipher_ops OPS = {
    .name = "openssl",
    .ecb_new = ecb_new,
    .ecb_free = evp_free,
    .ecb = ecb,
    .ctr_new = ctr_new,
    .ctr_free = evp_free,
    .ctr = ctr,
    .hmac_sha1 = hmac_sha1,
};

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static int loaded; /* 1 once every symbol was found */

const fp_cipher_ops *fp_cipher_openssl(char *err, size_t errlen) {
    pthread_mutex_lock(&load_lock);
    if (!loaded) {
        void *h = dlopen(LIBCRYPTO, RTLD_NOW | RTLD_LOCAL);
        const char *missing = NULL;
        if (!h) {
            snprintf(err, errlen, "cannot load %s: %s", LIBCRYPTO, dlerror());
            pthread_mutex_unlock(&load_lock);
            return NULL;
        }
#define LOAD(name)                                                                             \
    if (!missing && !(*(void **)&ssl.name = dlsym(h, #name)))                                  \
        missing = #name;
        LOAD(EVP_CIPHER_fetch) LOAD(EVP_CIPHER_free) LOAD(EVP_CIPHER_CTX_new)
        LOAD(EVP_CIPHER_CTX_free) LOAD(EVP_CIPHER_CTX_set_padding) LOAD(EVP_EncryptInit_ex)
        LOAD(EVP_EncryptUpdate) LOAD(SHA1_Init) LOAD(SHA1_Update) LOAD(SHA1_Final)
#undef LOAD
        if (missing) {
            snprintf(err, errlen, "%s has no %s", LIBCRYPTO, missing);
            dlclose(h);
            pthread_mutex_unlock(&load_lock);
            return NULL;
        }
        loaded = 1;
    }
    pthread_mutex_unlock(&load_lock);
    return &OPS;
}
