/* libaarp's configuration with its environment variables (AARP_*): the input is a file's text
 * and then, after each NUL byte, one variable (first byte: which name, the rest: its value).
 * The names are those of fuzz/cases.py AARP_ENV_NAMES. */
#include "../../shim_c/internal.h"
#include "common.h"

static const char *const NAMES[] = {
    "AARP_ANYCAST", "AARP_TIMEOUT_MS", "AARP_METHOD", "AARP_PORT", "AARP_LOG",
    "AARP_DISABLE", "AARP_CONF", "AARP_NONBLOCK_WAIT_MS", "AARP_HOST_CACHE", "AARP_OTHER",
};
#define NNAMES (sizeof NAMES / sizeof NAMES[0])
#define MAX_VARS 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *end = data + size;
    const uint8_t *nul = memchr(data, '\0', size);
    size_t text_len = nul ? (size_t)(nul - data) : size;
    char *vars[MAX_VARS + 1] = {0};
    int nvars = 0;
    for (const uint8_t *p = nul ? nul + 1 : end; p < end && nvars < MAX_VARS;) {
        const uint8_t *next = memchr(p, '\0', (size_t)(end - p));
        size_t len = next ? (size_t)(next - p) : (size_t)(end - p);
        if (len) {
            const char *name = NAMES[p[0] % NNAMES];
            size_t nlen = strlen(name);
            char *v = malloc(nlen + len + 1);
            CHECK(v != NULL);
            memcpy(v, name, nlen);
            v[nlen] = '=';
            memcpy(v + nlen + 1, p + 1, len - 1);
            v[nlen + len] = '\0';
            vars[nvars++] = v;
        }
        p += len + 1;
    }
    char *text = (char *)exact_copy(data, text_len);
    char err[700];
    struct aarp_config *c = config_parse_text(text, text_len, "fuzz.conf",
                                              (const char *const *)vars, err, sizeof err);
    free(text);
    CHECK(c != NULL);
    CHECK(!err[0] == (c->disabled != -1));
    CHECK(c->port >= 1 && c->port <= 65535 && c->timeout_ms >= 1 && c->timeout_ms <= 60000);
    CHECK(!err[0] || c->log >= -1);
    if (!err[0])
        CHECK(c->ttl_min <= c->ttl_max && c->grace_ms <= c->timeout_ms);
    config_free(c);
    for (int i = 0; i < nvars; i++)
        free(vars[i]);
    return 0;
}
