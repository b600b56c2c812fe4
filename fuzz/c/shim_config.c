/* libaarp's configuration reader (shim_c/config.c) on arbitrary file contents: a config or a
 * one-line error, never a crash; a broken config is disabled; what it describes stays sane. */
#include "../../shim_c/internal.h"
#include "common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = (char *)exact_copy(data, size);
    char err[700];
    memset(err, 'x', sizeof err);
    struct aarp_config *c = config_parse_text(text, size, "fuzz.conf", NULL, err, sizeof err);
    free(text);
    CHECK(c != NULL);
    CHECK(memchr(err, '\0', sizeof err) != NULL);
    CHECK(!err[0] == (c->disabled != -1)); /* an error always disables, and only an error */
    CHECK(!strchr(err, '\n'));
    char json[1 << 16];
    size_t n = config_describe(c, json, sizeof json);
    CHECK(n >= sizeof json || json[n] == '\0');
    for (int i = 0; i < c->n_anycast; i++) {
        CHECK(c->anycast[i].len >= 0 && c->anycast[i].len <= ip_len(&c->anycast[i].ip) * 8);
        CHECK(config_is_anycast(c, &c->anycast[i].ip));
    }
    for (int i = 0; i < c->n_allow; i++)
        for (int k = 0; k < c->allow[i].n; k++)
            (void)config_unicast_allowed(c, &c->allow[i].anycast.ip, &c->allow[i].unicast[k].ip);
    config_free(c);
    return 0;
}
