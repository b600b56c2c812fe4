/* Which crypto implementation new connections use (cipher.h), and the helpers both share. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "cipher.h"

static pthread_mutex_t choice_lock = PTHREAD_MUTEX_INITIALIZER;
static const fp_cipher_ops *chosen;

static const fp_cipher_ops *choose(int impl, char *err, size_t errlen) {
    if (impl == FP_CRYPTO_OPENSSL)
        return fp_cipher_openssl(err, errlen);
    const fp_cipher_ops *ops = fp_cipher_builtin();
    if (ops || impl == FP_CRYPTO_BUILTIN) {
        if (!ops)
            snprintf(err, errlen, "this CPU has no AES-NI and SHA-NI instructions");
        return ops;
    }
    return fp_cipher_openssl(err, errlen); /* auto, on a CPU without them */
}

int fp_crypto_use(int impl, char *err, size_t errlen) {
    if (impl != FP_CRYPTO_AUTO && impl != FP_CRYPTO_BUILTIN && impl != FP_CRYPTO_OPENSSL) {
        snprintf(err, errlen, "unknown crypto implementation %d", impl);
        return -1;
    }
    const fp_cipher_ops *ops = choose(impl, err, errlen);
    if (!ops)
        return -1;
    pthread_mutex_lock(&choice_lock);
    chosen = ops;
    pthread_mutex_unlock(&choice_lock);
    return ops == fp_cipher_builtin() ? FP_CRYPTO_BUILTIN : FP_CRYPTO_OPENSSL;
}

const fp_cipher_ops *fp_cipher_current(void) {
    pthread_mutex_lock(&choice_lock);
    if (!chosen) {
        char err[160];
        chosen = choose(FP_CRYPTO_AUTO, err, sizeof(err));
    }
    const fp_cipher_ops *ops = chosen;
    pthread_mutex_unlock(&choice_lock);
    return ops;
}

const char *fp_crypto_name(void) {
    const fp_cipher_ops *ops = fp_cipher_current();
    return ops ? ops->name : "none";
}

void fp_wipe(void *p, size_t n) { explicit_bzero(p, n); }

int fp_memcmp_ct(const void *a, const void *b, size_t n) {
    const volatile uint8_t *x = a, *y = b;
    uint8_t d = 0;
    for (size_t i = 0; i < n; i++)
        d |= x[i] ^ y[i];
    return d != 0;
}
