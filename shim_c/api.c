/* The exported aarp_* API: what the library would do for an address, the cache, the
 * configuration and the message codec, for aarp-resolve --via-shim and the tests. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aarp.h"
#include "internal.h"

static int status_of(int state)
{
    switch (state) {
    case RES_POSITIVE: return AARP_PINNED;
    case RES_NEGATIVE: return AARP_NEGATIVE;
    }
    return AARP_FAILED;
}

int aarp_resolve(const char *address, struct aarp_result *out)
{
    int saved = errno;
    memset(out, 0, sizeof *out);
    struct ipaddr ip;
    if (!address || ip_parse(address, &ip) != 0) {
        out->status = AARP_BAD_ADDRESS;
        return out->status;
    }
    /* Through a sockaddr, so IPv4-mapped text folds and comes back mapped like in a hook. */
    struct sockaddr_storage ss, alt;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (ip.af == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, ip.b, 4);
        len = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, ip.b, 16);
        len = sizeof *in6;
    }
    struct sockaddr_view v;
    sockaddr_read((struct sockaddr *)&ss, len, &v);
    snprintf(out->address, sizeof out->address, "%s", address);
    const struct aarp_config *c = config_get();
    if (c->disabled) {
        out->status = AARP_DISABLED;
    } else if (!config_is_anycast(c, &v.ip)) {
        out->status = AARP_PASS;
    } else {
        struct resolution r;
        int cached = 0;
        aarp_busy = 1;
        int ok = resolve_address(c, &v.ip, &r, &cached, -1, 0);
        aarp_busy = 0;
        out->status = status_of(r.state);
        out->cached = cached;
        out->how = r.how;
        out->verified = r.verified;
        int64_t left = r.expires - now_ms();
        out->ttl = cached ? (unsigned)(left > 0 ? (left + 999) / 1000 : 0) : r.ttl;
        if (ok && sockaddr_rewrite((struct sockaddr *)&ss, len, &r.ua, &alt) == 0) {
            const void *a = alt.ss_family == AF_INET
                                ? (const void *)&((struct sockaddr_in *)&alt)->sin_addr
                                : (const void *)&((struct sockaddr_in6 *)&alt)->sin6_addr;
            inet_ntop(alt.ss_family, a, out->address, sizeof out->address);
        } else if (ok) {
            out->status = AARP_FAILED;
        }
    }
    errno = saved;
    return out->status;
}

static void host_entry(const struct ipaddr *aa, const struct resolution *r, uint32_t probes,
                       struct aarp_host_entry *out)
{
    memset(out, 0, sizeof *out);
    ip_format(aa, out->anycast, sizeof out->anycast);
    if (r->state == RES_POSITIVE)
        ip_format(&r->ua, out->unicast, sizeof out->unicast);
    out->status = status_of(r->state);
    out->how = r->how;
    out->verified = r->verified;
    out->ttl = r->ttl;
    out->probes = probes;
    out->expires_in_ms = r->expires - now_ms();
}

void *aarp_hostcache_open(const char *dir, char *err, size_t errlen)
{
    return hostcache_open_writer(dir, err, errlen);
}

int aarp_hostcache_probe(void *cache, const char *address, struct aarp_host_entry *out)
{
    struct ipaddr aa;
    memset(out, 0, sizeof *out);
    if (!address || ip_parse(address, &aa) != 0)
        return AARP_BAD_ADDRESS;
    const struct aarp_config *c = config_get();
    if (c->disabled || !config_is_anycast(c, &aa))
        return AARP_PASS;
    struct resolution r;
    aarp_busy = 1;
    int rc = hostcache_probe_store(cache, &aa, &r);
    aarp_busy = 0;
    if (rc != 0)
        return -2;
    host_entry(&aa, &r, 0, out);
    return out->status;
}

int aarp_hostcache_lookup(void *cache, const char *address, struct aarp_host_entry *out)
{
    struct ipaddr aa;
    struct resolution r;
    memset(out, 0, sizeof *out);
    if (!address || ip_parse(address, &aa) != 0 || !hostcache_writer_lookup(cache, &aa, &r))
        return 0;
    host_entry(&aa, &r, 0, out);
    return 1;
}

void aarp_hostcache_count(void *cache, int counter)
{
    hostcache_count(cache, counter);
}

void aarp_hostcache_close(void *cache)
{
    hostcache_close_writer(cache);
}

int aarp_hostcache_read(const char *dir, struct aarp_host_info *info,
                        struct aarp_host_entry *out, int max, char *err, size_t errlen)
{
    if (max < 0)
        max = 0;
    struct ipaddr *aa = malloc(sizeof *aa * (size_t)(max + 1));
    struct resolution *r = malloc(sizeof *r * (size_t)(max + 1));
    uint32_t *probes = malloc(sizeof *probes * (size_t)(max + 1));
    struct hostcache_info hi;
    int n = -1;
    if (aa && r && probes) {
        n = hostcache_snapshot(dir, &hi, aa, r, probes, max, err, errlen);
        for (int i = 0; i < n; i++)
            host_entry(&aa[i], &r[i], probes[i], &out[i]);
        if (n >= 0) {
            info->owner = hi.owner;
            info->mode = hi.mode;
            info->pid = hi.pid;
            info->port = hi.port;
            info->policy = hi.policy;
            info->same_netns = hi.same_netns;
            info->slots = hi.slots;
            info->requests = hi.requests;
            info->probes = hi.probes;
            info->refreshes = hi.refreshes;
            info->refused = hi.refused;
            info->uptime_ms = hi.uptime_ms;
        }
    } else {
        snprintf(err, errlen, "out of memory");
    }
    free(aa);
    free(r);
    free(probes);
    return n;
}

int aarp_cache_entries(struct aarp_cache_entry *out, int max)
{
    if (max <= 0)
        return 0;
    struct ipaddr *aa = malloc(sizeof *aa * (size_t)max);
    struct resolution *r = malloc(sizeof *r * (size_t)max);
    int n = 0;
    if (aa && r) {
        n = cache_snapshot(aa, r, max);
        int64_t now = now_ms();
        for (int i = 0; i < n; i++) {
            memset(&out[i], 0, sizeof out[i]);
            ip_format(&aa[i], out[i].anycast, sizeof out[i].anycast);
            if (r[i].state == RES_POSITIVE)
                ip_format(&r[i].ua, out[i].unicast, sizeof out[i].unicast);
            out[i].status = status_of(r[i].state);
            out[i].how = r[i].how;
            out[i].expires_in_ms = r[i].expires - now;
        }
    }
    free(aa);
    free(r);
    return n;
}

void aarp_cache_flush(void)
{
    cache_flush();
}

int aarp_config_reload(const char *path, char *err, size_t errlen)
{
    return config_replace(path, NULL, 0, err, errlen);
}

int aarp_config_use(const char *text, size_t len, const char *name, char *err, size_t errlen)
{
    return config_replace(name, text ? text : "", text ? len : 0, err, errlen);
}

size_t aarp_config_json(char *out, size_t len)
{
    return config_describe(config_get(), out, len);
}

const char *aarp_config_error(void)
{
    return config_get()->error;
}

static int check_result(struct aarp_config *c, const char *err, char *out, size_t outlen);

int aarp_config_check(const char *text, size_t len, const char *name, const char *const *env,
                      char *out, size_t outlen)
{
    char err[sizeof ((struct aarp_config *)0)->error];
    struct aarp_config *c = config_parse_text(text ? text : "", text ? len : 0,
                                              name ? name : "aarp.conf", env, err, sizeof err);
    return check_result(c, err, out, outlen);
}

int aarp_config_check_load(const char *path, const char *const *env, char *out, size_t outlen)
{
    char err[sizeof ((struct aarp_config *)0)->error];
    return check_result(config_load_env(path, env, err, sizeof err), err, out, outlen);
}

static int check_result(struct aarp_config *c, const char *err, char *out, size_t outlen)
{
    if (!c) {
        snprintf(out, outlen, "out of memory");
        return -1;
    }
    int rc = 0;
    if (err[0]) {
        snprintf(out, outlen, "%s", err);
        rc = -1;
    } else {
        config_describe(c, out, outlen);
    }
    config_free(c);
    return rc;
}

int aarp_message_decode(const unsigned char *buf, size_t len, struct aarp_message *out)
{
    struct msg m;
    int rc = msg_decode(buf, len, &m);
    memset(out, 0, sizeof *out);
    if (rc != MSG_OK)
        return rc;
    out->kind = m.kind;
    out->flags = m.flags;
    memcpy(out->nonce, m.nonce, 16);
    out->has_unicast6 = m.has_unicast6;
    out->has_unicast4 = m.has_unicast4;
    out->has_key_id = m.has_key_id;
    out->has_tag = m.has_tag;
    memcpy(out->unicast6, m.unicast6, 16);
    memcpy(out->unicast4, m.unicast4, 4);
    out->ttl = m.ttl;
    out->anycast_len = m.kind == MSG_KIND_ANSWER ? ip_len(&m.anycast) : 0;
    memcpy(out->anycast, m.anycast.b, 16);
    out->key_id = m.key_id;
    memcpy(out->tag, m.tag, 16);
    out->signed_len = m.signed_len;
    return 0;
}

const char *aarp_message_error(int code)
{
    return msg_code_name(code);
}

size_t aarp_message_query(const unsigned char *nonce16, size_t size, unsigned char *out)
{
    return msg_encode_query(nonce16, size, out);
}

size_t aarp_message_answer(const unsigned char *nonce16, const char *anycast,
                           const char *unicast6, const char *unicast4, unsigned ttl,
                           const unsigned char *key, size_t key_len, int key_id,
                           unsigned char *out)
{
    struct ipaddr aa, u6, u4;
    if (!anycast || ip_parse(anycast, &aa) != 0)
        return 0;
    int has6 = unicast6 && *unicast6, has4 = unicast4 && *unicast4;
    if ((has6 && (ip_parse(unicast6, &u6) != 0 || u6.af != AF_INET6)) ||
        (has4 && (ip_parse(unicast4, &u4) != 0 || u4.af != AF_INET)))
        return 0;
    return msg_encode_answer(nonce16, &aa, has6 ? u6.b : NULL, has4 ? u4.b : NULL, ttl,
                             key && key_len ? key : NULL, key_len, key_id, out);
}

int aarp_message_tag_valid(const unsigned char *buf, size_t len, const unsigned char *key,
                           size_t key_len)
{
    struct msg m;
    if (msg_decode(buf, len, &m) != MSG_OK)
        return 0;
    return msg_tag_valid(buf, &m, key, key_len);
}

void aarp_hmac_sha256(const unsigned char *key, size_t key_len, const unsigned char *data,
                      size_t len, unsigned char *out32)
{
    hmac_sha256(key, key_len, data, len, out32);
}
