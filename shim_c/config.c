/* The configuration of docs/config.md: /etc/aarp.conf (or $AARP_CONF) plus AARP_* variables.
 * It must accept and reject exactly what aarp/config.py does, with the same messages
 * (tests/vectors/aarp/config.json runs through both). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "internal.h"

#define DEFAULT_PATH "/etc/aarp.conf"
#define DEFAULT_HOST_CACHE "/run/aarp"
/* The limits of docs/config.md; aarp/config.py has the same numbers and messages. */
#define MAX_LINE 1023
#define MAX_FILE (1 << 20)       /* bytes of a configuration file */
#define MAX_VALUE 65536          /* bytes of one environment value */
#define MAX_PATH 4095            /* bytes of AARP_CONF */
#define MAX_PREFIXES 4096        /* anycast prefixes, and allow lines */
#define MAX_SHOWN 64             /* bytes of a value quoted in a message */
#define MAX_PROBE_MS 10000       /* timeout_ms x (1 + retries) */
#define MAX_HOST_CACHE 100       /* bytes of the host cache directory */
#define LOC_LEN (MAX_PATH + 32)

enum key {
    K_ANYCAST, K_ALLOW, K_POLICY, K_METHOD, K_PORT, K_TIMEOUT_MS, K_RETRIES, K_GRACE_MS,
    K_TTL_MIN, K_TTL_MAX, K_NEGATIVE_TTL, K_FAILURE_TTL, K_KEY, K_KEY_ID, K_LOG, K_DISABLE,
    K_NONBLOCK_WAIT_MS, K_HOST_CACHE, K_COUNT
};

static const char *const KEY_NAMES[K_COUNT] = {
    "anycast", "allow", "policy", "method", "port", "timeout_ms", "retries", "grace_ms",
    "ttl_min", "ttl_max", "negative_ttl", "failure_ttl", "key", "key_id", "log", "disable",
    "nonblock_wait_ms", "host_cache",
};

static const struct { int key; long lo, hi; } INT_RANGES[] = {
    {K_PORT, 1, 65535}, {K_TIMEOUT_MS, 1, MAX_PROBE_MS}, {K_RETRIES, 0, 10},
    {K_GRACE_MS, 0, MAX_PROBE_MS}, {K_TTL_MIN, 0, 86400}, {K_TTL_MAX, 0, 86400},
    {K_NEGATIVE_TTL, 0, 86400}, {K_FAILURE_TTL, 0, 86400}, {K_KEY_ID, 0, 255},
    {K_NONBLOCK_WAIT_MS, 0, 1000},
};

static const struct { const char *var; int key; } ENV_KEYS[] = {
    {"AARP_ANYCAST", K_ANYCAST}, {"AARP_TIMEOUT_MS", K_TIMEOUT_MS}, {"AARP_METHOD", K_METHOD},
    {"AARP_PORT", K_PORT}, {"AARP_LOG", K_LOG}, {"AARP_DISABLE", K_DISABLE},
    {"AARP_NONBLOCK_WAIT_MS", K_NONBLOCK_WAIT_MS}, {"AARP_HOST_CACHE", K_HOST_CACHE},
};

static const char *const POLICIES[] = {"any", "prefix", "key", NULL};
static const char *const METHODS[] = {"auto", "icmp", "udp", NULL};
static const char *const LOGS[] = {"off", "error", "info", "debug", NULL};

/* Everything a parse collects: values, where each key was set, and the first error. */
struct parse {
    struct aarp_config *c;
    int set[K_COUNT];
    char where[K_COUNT][LOC_LEN];
    int log_bad; /* a log level was given but is not one: report the error anyway */
    char *err;
    size_t errlen;
};

static int fail(struct parse *p, const char *loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct parse *p, const char *loc, const char *fmt, ...)
{
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(p->err, p->errlen, "%s: %s", loc, msg);
    return -1;
}

/* Python's str.isspace() for the ASCII range, which is what str.strip() and \s remove. */
static int is_space(unsigned char ch)
{
    return ch == ' ' || (ch >= '\t' && ch <= '\r') || (ch >= 0x1c && ch <= 0x1f);
}

static char *strip(char *s)
{
    while (is_space((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && is_space((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* Split a list value at commas and whitespace; empty items are skipped. Returns the item
 * count and a malloc'd array in *items (pointing into `value`, which is modified), or -1. */
static int split_items(char *value, char ***items)
{
    size_t cap = strlen(value) / 2 + 1;
    char **out = malloc(sizeof *out * cap);
    if (!out)
        return -1;
    int n = 0;
    char *s = value;
    while (*s) {
        while (*s && (*s == ',' || is_space((unsigned char)*s)))
            *s++ = '\0';
        if (!*s)
            break;
        out[n++] = s;
        while (*s && *s != ',' && !is_space((unsigned char)*s))
            s++;
    }
    *items = out;
    return n;
}

/* A value as quoted in a message: at most MAX_SHOWN bytes, then "...". */
static const char *shown(const char *value, char *buf, size_t size)
{
    size_t n = strlen(value);
    if (n <= MAX_SHOWN)
        return value;
    snprintf(buf, size, "%.*s...", MAX_SHOWN, value);
    return buf;
}

/* Only printable ASCII and whitespace in a value: the same bytes mean the same to both
 * readers, and messages quote them the same way. 0, or the offending byte + 1. */
static int bad_byte(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch < 0x20 || ch >= 0x7f) && !is_space(ch))
            return ch + 1;
    }
    return 0;
}

static int bad_prefix(struct parse *p, const char *loc, const char *item, int code)
{
    char buf[MAX_SHOWN + 4];
    if (code == -2)
        return fail(p, loc, "'%s': prefix length above %d", shown(item, buf, sizeof buf),
                    strchr(item, ':') ? 128 : 32);
    return fail(p, loc, "'%s' is not a prefix", shown(item, buf, sizeof buf));
}

static int add_prefix(struct prefix **list, int *n, const struct prefix *pfx)
{
    struct prefix *grown = realloc(*list, sizeof **list * (size_t)(*n + 1));
    if (!grown)
        return -1;
    grown[(*n)++] = *pfx;
    *list = grown;
    return 0;
}

static int choice(struct parse *p, const char *loc, int key, const char *value,
                  const char *const *choices)
{
    for (int i = 0; choices[i]; i++)
        if (strcmp(value, choices[i]) == 0)
            return i;
    char list[64] = "", buf[MAX_SHOWN + 4];
    for (int i = 0; choices[i]; i++) {
        strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
        strncat(list, choices[i], sizeof list - strlen(list) - 1);
    }
    if (key == K_LOG)
        p->log_bad = 1;
    return fail(p, loc, "'%s' must be one of %s, not '%s'", KEY_NAMES[key], list,
                shown(value, buf, sizeof buf));
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Prefixes of a list value into a new array; 0, or -1 with the error set (allow: fewer than
 * two items is its own mistake, found before any item is judged). */
static int prefix_list(struct parse *p, const char *loc, char *value, int allow,
                       struct prefix **out, int *count)
{
    char **items;
    int n = split_items(value, &items);
    if (n < 0)
        return fail(p, loc, "out of memory");
    if (allow && n < 2) {
        free(items);
        return fail(p, loc, "'allow' needs an anycast prefix and at least one unicast prefix");
    }
    struct prefix *list = NULL;
    int got = 0;
    for (int k = 0; k < n; k++) {
        struct prefix pfx;
        int rc = prefix_parse(items[k], &pfx);
        if (rc != 0) {
            free(list);
            rc = bad_prefix(p, loc, items[k], rc);
            free(items);
            return rc;
        }
        if (add_prefix(&list, &got, &pfx) != 0) {
            free(list);
            free(items);
            return fail(p, loc, "out of memory");
        }
    }
    free(items);
    *out = list;
    *count = got;
    return 0;
}

/* One occurrence of `key` with its (stripped) value; `loc` names where it came from.
 * `replace_anycast` makes anycast replace rather than extend the list (AARP_ANYCAST). */
static int apply_value(struct parse *p, const char *loc, int key, char *value,
                       int replace_anycast)
{
    struct aarp_config *c = p->c;
    char buf[MAX_SHOWN + 4];
    if (!*value)
        return fail(p, loc, "'%s' has no value", KEY_NAMES[key]);
    for (size_t i = 0; i < sizeof INT_RANGES / sizeof INT_RANGES[0]; i++) {
        if (INT_RANGES[i].key != key)
            continue;
        long v = 0;
        int ok = 1;
        for (const char *d = value; *d; d++) {
            if (*d < '0' || *d > '9') {
                ok = 0;
                break;
            }
            if (v <= 1000000)
                v = v * 10 + (*d - '0');
        }
        if (!ok || v < INT_RANGES[i].lo || v > INT_RANGES[i].hi)
            return fail(p, loc, "'%s' must be an integer %ld-%ld, not '%s'", KEY_NAMES[key],
                        INT_RANGES[i].lo, INT_RANGES[i].hi, shown(value, buf, sizeof buf));
        switch (key) {
        case K_PORT: c->port = (int)v; break;
        case K_TIMEOUT_MS: c->timeout_ms = (int)v; break;
        case K_RETRIES: c->retries = (int)v; break;
        case K_GRACE_MS: c->grace_ms = (int)v; break;
        case K_TTL_MIN: c->ttl_min = (unsigned)v; break;
        case K_TTL_MAX: c->ttl_max = (unsigned)v; break;
        case K_NEGATIVE_TTL: c->negative_ttl = (unsigned)v; break;
        case K_FAILURE_TTL: c->failure_ttl = (unsigned)v; break;
        case K_KEY_ID: c->key_id = (int)v; break;
        case K_NONBLOCK_WAIT_MS: c->nonblock_wait_ms = (int)v; break;
        }
        return 0;
    }
    int i;
    switch (key) {
    case K_ANYCAST: {
        struct prefix *list;
        int count;
        if (prefix_list(p, loc, value, 0, &list, &count) != 0)
            return -1;
        if (replace_anycast) {
            free(c->anycast);
            c->anycast = NULL;
            c->n_anycast = 0;
        }
        if (c->n_anycast + count > MAX_PREFIXES) {
            free(list);
            return fail(p, loc, "more than %d anycast prefixes", MAX_PREFIXES);
        }
        for (int k = 0; k < count; k++)
            if (add_prefix(&c->anycast, &c->n_anycast, &list[k]) != 0) {
                free(list);
                return fail(p, loc, "out of memory");
            }
        free(list);
        return 0;
    }
    case K_ALLOW: {
        struct prefix *list;
        int count;
        if (prefix_list(p, loc, value, 1, &list, &count) != 0)
            return -1;
        if (c->n_allow >= MAX_PREFIXES) {
            free(list);
            return fail(p, loc, "more than %d 'allow' lines", MAX_PREFIXES);
        }
        struct allow_rule rule = {.anycast = list[0], .n = count - 1};
        rule.unicast = malloc(sizeof *rule.unicast * (size_t)rule.n);
        struct allow_rule *grown = realloc(c->allow, sizeof *grown * (size_t)(c->n_allow + 1));
        if (grown)
            c->allow = grown;
        if (!grown || !rule.unicast) {
            free(list);
            free(rule.unicast);
            return fail(p, loc, "out of memory");
        }
        memcpy(rule.unicast, list + 1, sizeof *rule.unicast * (size_t)rule.n);
        free(list);
        c->allow[c->n_allow++] = rule;
        return 0;
    }
    case K_POLICY:
        if ((i = choice(p, loc, key, value, POLICIES)) < 0)
            return -1;
        c->policy = i;
        return 0;
    case K_METHOD:
        if ((i = choice(p, loc, key, value, METHODS)) < 0)
            return -1;
        c->method = i;
        return 0;
    case K_LOG:
        if ((i = choice(p, loc, key, value, LOGS)) < 0)
            return -1;
        c->log = i;
        return 0;
    case K_DISABLE:
        if (!strcmp(value, "yes") || !strcmp(value, "1") || !strcmp(value, "true"))
            c->disabled = 1;
        else if (!strcmp(value, "no") || !strcmp(value, "0") || !strcmp(value, "false"))
            c->disabled = 0;
        else
            return fail(p, loc, "'disable' must be yes/no, 1/0 or true/false, not '%s'",
                        shown(value, buf, sizeof buf));
        return 0;
    case K_HOST_CACHE: {
        if (strcmp(value, "off") == 0) {
            c->host_cache[0] = '\0';
            return 0;
        }
        size_t n = strlen(value);
        int ok = value[0] == '/' && n <= MAX_HOST_CACHE;
        for (size_t k = 0; ok && k < n; k++)
            ok = !is_space((unsigned char)value[k]) && value[k] != ',';
        if (!ok)
            return fail(p, loc, "'host_cache' must be off or an absolute directory path of "
                        "at most %d bytes, not '%s'", MAX_HOST_CACHE,
                        shown(value, buf, sizeof buf));
        memcpy(c->host_cache, value, n + 1);
        return 0;
    }
    case K_KEY: {
        size_t n = strlen(value);
        int ok = n % 2 == 0 && n / 2 >= 16 && n / 2 <= 64;
        for (size_t k = 0; ok && k < n; k++)
            ok = hexval(value[k]) >= 0;
        if (!ok)
            return fail(p, loc, "'key' must be 16-64 bytes in hex (32-128 hex digits)");
        for (size_t k = 0; k < n / 2; k++)
            c->key[k] = (uint8_t)(hexval(value[2 * k]) << 4 | hexval(value[2 * k + 1]));
        c->key_len = (int)(n / 2);
        return 0;
    }
    }
    return fail(p, loc, "unknown key '%s'", KEY_NAMES[key]);
}

static int parse_line(struct parse *p, const char *name, int number, char *line, size_t len)
{
    char loc[LOC_LEN], buf[MAX_SHOWN + 4];
    snprintf(loc, sizeof loc, "%s:%d", name, number);
    char *hash = memchr(line, '#', len);
    if (hash) {
        *hash = '\0';
        len = (size_t)(hash - line);
    }
    int bad = bad_byte(line, len);
    if (bad)
        return fail(p, loc, "byte 0x%02x is not printable ASCII", bad - 1);
    char *text = strip(line);
    if (!*text)
        return 0;
    char shown_line[MAX_SHOWN + 4];
    shown(text, shown_line, sizeof shown_line);
    const char *quoted = strlen(text) > MAX_SHOWN ? shown_line : NULL;
    char copy[MAX_LINE + 1];
    if (!quoted) {
        snprintf(copy, sizeof copy, "%s", text);
        quoted = copy;
    }
    char *eq = strchr(text, '=');
    if (eq)
        *eq = '\0';
    char *key = strip(text);
    if (!eq || !*key)
        return fail(p, loc, "expected 'key = value', got '%s'", quoted);
    char *value = strip(eq + 1);
    int k;
    for (k = 0; k < K_COUNT; k++)
        if (strcmp(key, KEY_NAMES[k]) == 0)
            break;
    if (k == K_COUNT)
        return fail(p, loc, "unknown key '%s'", shown(key, buf, sizeof buf));
    if (p->set[k] && k != K_ANYCAST && k != K_ALLOW) {
        const char *first = strrchr(p->where[k], ':');
        return fail(p, loc, "duplicate key '%s' (first on line %s)", key, first ? first + 1 : "?");
    }
    if (apply_value(p, loc, k, value, 0) != 0)
        return -1;
    if (!p->set[k]) {
        p->set[k] = 1;
        snprintf(p->where[k], sizeof p->where[k], "%s", loc);
    }
    return 0;
}

static int parse_text(struct parse *p, char *data, size_t len, const char *name)
{
    size_t pos = 0;
    int number = 0;
    while (pos < len) {
        char *start = data + pos;
        char *nl = memchr(start, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - start) : len - pos;
        pos += n + (nl ? 1 : 0);
        number++;
        size_t visible = n;
        while (visible && start[visible - 1] == '\r')
            visible--;
        if (visible > MAX_LINE) {
            char loc[LOC_LEN];
            snprintf(loc, sizeof loc, "%s:%d", name, number);
            return fail(p, loc, "line longer than %d bytes", MAX_LINE);
        }
        char line[MAX_LINE + 1]; /* trailing CRs are whitespace: left out */
        memcpy(line, start, visible);
        line[visible] = '\0';
        if (parse_line(p, name, number, line, visible) != 0)
            return -1;
    }
    return 0;
}

typedef const char *(*env_lookup)(const char *name, void *ctx);

static int parse_env(struct parse *p, env_lookup get, void *ctx)
{
    for (size_t i = 0; i < sizeof ENV_KEYS / sizeof ENV_KEYS[0]; i++) {
        const char *raw = get(ENV_KEYS[i].var, ctx);
        if (!raw)
            continue;
        size_t n = strlen(raw);
        if (n > MAX_VALUE) {
            if (ENV_KEYS[i].key == K_LOG)
                p->log_bad = 1;
            return fail(p, ENV_KEYS[i].var, "longer than %d bytes", MAX_VALUE);
        }
        int bad = bad_byte(raw, n);
        if (bad) {
            if (ENV_KEYS[i].key == K_LOG)
                p->log_bad = 1;
            return fail(p, ENV_KEYS[i].var, "byte 0x%02x is not printable ASCII", bad - 1);
        }
        char *buf = malloc(n + 1);
        if (!buf)
            return fail(p, ENV_KEYS[i].var, "out of memory");
        memcpy(buf, raw, n + 1);
        char *value = strip(buf);
        int empty = !*value; /* empty counts as unset */
        int rc = empty ? 0 : apply_value(p, ENV_KEYS[i].var, ENV_KEYS[i].key, value, 1);
        free(buf);
        if (rc != 0)
            return -1;
        if (empty)
            continue;
        p->set[ENV_KEYS[i].key] = 1;
        snprintf(p->where[ENV_KEYS[i].key], sizeof p->where[0], "%s", ENV_KEYS[i].var);
    }
    return 0;
}

/* Rules between keys, checked once file and environment are merged. */
static int finish(struct parse *p)
{
    struct aarp_config *c = p->c;
    if (!p->set[K_POLICY])
        c->policy = c->key_len ? POLICY_KEY : POLICY_ANY;
    if (c->ttl_min > c->ttl_max) {
        const char *loc = p->set[K_TTL_MIN] ? p->where[K_TTL_MIN]
                          : p->set[K_TTL_MAX] ? p->where[K_TTL_MAX] : "configuration";
        return fail(p, loc, "ttl_min (%u) is above ttl_max (%u)", c->ttl_min, c->ttl_max);
    }
    if (c->policy == POLICY_KEY && !c->key_len)
        return fail(p, p->set[K_POLICY] ? p->where[K_POLICY] : "configuration",
                    "policy 'key' needs a 'key'");
    if ((long)c->timeout_ms * (1 + c->retries) > MAX_PROBE_MS) {
        const char *loc = p->set[K_TIMEOUT_MS] ? p->where[K_TIMEOUT_MS]
                          : p->set[K_RETRIES] ? p->where[K_RETRIES] : "configuration";
        return fail(p, loc, "timeout_ms (%d) x (1 + retries (%d)) is above %d ms",
                    c->timeout_ms, c->retries, MAX_PROBE_MS);
    }
    if (c->grace_ms > c->timeout_ms) {
        if (!p->set[K_GRACE_MS])
            c->grace_ms = c->timeout_ms;
        else
            return fail(p, p->where[K_GRACE_MS], "grace_ms (%d) is above timeout_ms (%d)",
                        c->grace_ms, c->timeout_ms);
    }
    return 0;
}

static struct aarp_config *config_new(void)
{
    struct aarp_config *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->log = -1; /* unset: the component's default */
    c->policy = POLICY_ANY;
    c->method = METHOD_AUTO;
    c->port = 4445;
    c->timeout_ms = 300;
    c->retries = 1;
    c->grace_ms = 50;
    c->ttl_min = 1;
    c->ttl_max = 3600;
    c->negative_ttl = 30;
    c->failure_ttl = 5;
    c->nonblock_wait_ms = 20;
    snprintf(c->host_cache, sizeof c->host_cache, "%s", DEFAULT_HOST_CACHE);
    return c;
}

void config_free(struct aarp_config *c)
{
    if (!c)
        return;
    free(c->anycast);
    for (int i = 0; i < c->n_allow; i++)
        free(c->allow[i].unicast);
    free(c->allow);
    free(c);
}

/* The level a broken configuration reports at: AARP_LOG if it is valid; error when a log
 * level was asked for but is not one (logging was clearly wanted); else the default. */
static void broken_log_level(struct parse *p, env_lookup get, void *ctx)
{
    const char *raw = get("AARP_LOG", ctx);
    char buf[64];
    if (raw && strlen(raw) < sizeof buf) {
        snprintf(buf, sizeof buf, "%s", raw);
        char *v = strip(buf);
        for (int i = 0; LOGS[i]; i++)
            if (strcmp(v, LOGS[i]) == 0) {
                p->c->log = i;
                return;
            }
        if (*v)
            p->log_bad = 1;
    } else if (raw) {
        p->log_bad = 1;
    }
    p->c->log = p->log_bad ? LOG_ERROR : -1;
}

/* Parse `data` as file `name` and then the environment; on error the returned config is
 * disabled and `err` names the mistake. NULL only when out of memory. */
static struct aarp_config *parse_all(char *data, size_t len, const char *name, env_lookup get,
                                     void *ctx, char *err, size_t errlen)
{
    struct parse *p = calloc(1, sizeof *p);
    struct aarp_config *c = config_new();
    if (!p || !c) {
        free(p);
        config_free(c);
        return NULL;
    }
    p->c = c;
    p->err = err;
    p->errlen = errlen;
    if (errlen)
        err[0] = '\0';
    int rc = parse_text(p, data, len, name);
    if (rc == 0)
        rc = parse_env(p, get, ctx);
    if (rc == 0)
        rc = finish(p);
    if (rc != 0) {
        c->disabled = -1; /* broken: pass everything through */
        broken_log_level(p, get, ctx);
    }
    free(p);
    return c;
}

static const char *real_getenv(const char *name, void *ctx)
{
    (void)ctx;
    return getenv(name);
}

/* Read a configuration file with plain syscalls, never blocking: O_NONBLOCK so a FIFO
 * without a writer opens at once, only regular files (and /dev/null, the usual "nothing")
 * are read, and at most MAX_FILE bytes. 0, or -1 with `why` filled. */
static int read_file(const char *path, char **data, size_t *len, int *missing, char *why,
                     size_t whylen)
{
    *missing = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT) {
            *missing = 1;
            snprintf(why, whylen, "%s: no such file", path);
        } else if (errno == EISDIR) {
            snprintf(why, whylen, "%s: is a directory", path);
        } else {
            snprintf(why, whylen, "%s: cannot read: %s", path, strerror(errno));
        }
        return -1;
    }
    struct stat st;
    int rc = -1;
    char *buf = NULL;
    if (fstat(fd, &st) != 0) {
        snprintf(why, whylen, "%s: cannot read: %s", path, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        snprintf(why, whylen, "%s: is a directory", path);
    } else if (S_ISCHR(st.st_mode) && major(st.st_rdev) == 1 && minor(st.st_rdev) == 3) {
        *data = NULL; /* /dev/null */
        *len = 0;
        rc = 0;
    } else if (!S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "%s: not a regular file", path);
    } else if (st.st_size > MAX_FILE) {
        snprintf(why, whylen, "%s: larger than %d bytes", path, MAX_FILE);
    } else if (!(buf = malloc(MAX_FILE + 2))) {
        snprintf(why, whylen, "%s: cannot read: %s", path, strerror(ENOMEM));
    } else {
        size_t n = 0;
        for (;;) {
            ssize_t r = read(fd, buf + n, MAX_FILE + 1 - n);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0) {
                snprintf(why, whylen, "%s: cannot read: %s", path, strerror(errno));
                break;
            }
            n += (size_t)r;
            if (n > MAX_FILE) { /* grew while we read */
                snprintf(why, whylen, "%s: larger than %d bytes", path, MAX_FILE);
                break;
            }
            if (r == 0) {
                buf[n] = '\0';
                *data = buf;
                *len = n;
                buf = NULL;
                rc = 0;
                break;
            }
        }
    }
    free(buf);
    real.close(fd);
    return rc;
}

static struct aarp_config *load_with(const char *path_override, env_lookup get, void *ctx,
                                     char *err, size_t errlen)
{
    char ioerr[LOC_LEN + 200] = "";
    char *pathbuf = NULL;
    const char *env_path = get("AARP_CONF", ctx);
    int named = path_override != NULL;
    const char *path = path_override;
    if (!path && env_path) {
        if (strlen(env_path) > MAX_PATH) {
            snprintf(ioerr, sizeof ioerr, "AARP_CONF: longer than %d bytes", MAX_PATH);
        } else if ((pathbuf = strdup(env_path))) {
            char *stripped = strip(pathbuf);
            if (*stripped) {
                path = stripped;
                named = 1;
            }
        }
    }
    if (!path)
        path = DEFAULT_PATH;
    char *data = NULL;
    size_t len = 0;
    const char *source = path;
    int missing = 0;
    if (!ioerr[0] && read_file(path, &data, &len, &missing, ioerr, sizeof ioerr) != 0 &&
        missing && !named) {
        ioerr[0] = '\0'; /* no /etc/aarp.conf: nothing configured, which is fine */
        source = "";
    }
    struct aarp_config *c;
    if (ioerr[0]) {
        /* Still read the environment, so AARP_LOG can say why we are disabled. */
        char ignored[LOC_LEN + 200];
        c = parse_all((char[]){0}, 0, path, get, ctx, ignored, sizeof ignored);
        if (c)
            c->disabled = -1;
        snprintf(err, errlen, "%s", ioerr);
    } else {
        c = parse_all(data ? data : (char[]){0}, len, path, get, ctx, err, errlen);
    }
    free(data);
    if (c) {
        snprintf(c->source, sizeof c->source, "%s", source);
        snprintf(c->error, sizeof c->error, "%s", err);
    }
    free(pathbuf);
    return c;
}

struct aarp_config *config_load(const char *path_override, char *err, size_t errlen)
{
    return load_with(path_override, real_getenv, NULL, err, errlen);
}

/* For the API: parse text as file `name` with an explicit environment ("K=V" strings). */
struct env_list {
    const char *const *vars;
};

static const char *list_getenv(const char *name, void *ctx)
{
    const struct env_list *l = ctx;
    size_t n = strlen(name);
    for (const char *const *v = l->vars; v && *v; v++)
        if (strncmp(*v, name, n) == 0 && (*v)[n] == '=')
            return *v + n + 1;
    return NULL;
}

struct aarp_config *config_parse_text(const char *text, size_t len, const char *name,
                                      const char *const *env, char *err, size_t errlen)
{
    char *copy = malloc(len + 1);
    if (!copy)
        return NULL;
    memcpy(copy, text, len);
    copy[len] = '\0';
    struct env_list l = {env};
    struct aarp_config *c = parse_all(copy, len, name, list_getenv, &l, err, errlen);
    free(copy);
    return c;
}

struct aarp_config *config_load_env(const char *path, const char *const *env, char *err,
                                    size_t errlen)
{
    struct env_list l = {env};
    return load_with(path, list_getenv, &l, err, errlen);
}

/* ---- queries ------------------------------------------------------------------------------ */

int config_is_anycast(const struct aarp_config *c, const struct ipaddr *a)
{
    for (int i = 0; i < c->n_anycast; i++)
        if (prefix_contains(&c->anycast[i], a))
            return 1;
    return 0;
}

/* Policy "prefix": UA must lie in a unicast prefix of the longest allow line covering AA. */
int config_unicast_allowed(const struct aarp_config *c, const struct ipaddr *aa, const struct ipaddr *ua)
{
    const struct allow_rule *best = NULL;
    for (int i = 0; i < c->n_allow; i++)
        if (prefix_contains(&c->allow[i].anycast, aa) &&
            (!best || c->allow[i].anycast.len > best->anycast.len))
            best = &c->allow[i];
    if (!best)
        return 0;
    for (int i = 0; i < best->n; i++)
        if (prefix_contains(&best->unicast[i], ua))
            return 1;
    return 0;
}

static size_t append(char *buf, size_t size, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static size_t append(char *buf, size_t size, size_t at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(at < size ? buf + at : NULL, at < size ? size - at : 0, fmt, ap);
    va_end(ap);
    return at + (n > 0 ? (size_t)n : 0);
}

/* The effective values as JSON with the keys and shapes of config.json's "config". */
size_t config_describe(const struct aarp_config *c, char *buf, size_t size)
{
    char text[64];
    size_t at = append(buf, size, 0, "{\"anycast\": [");
    for (int i = 0; i < c->n_anycast; i++) {
        prefix_format(&c->anycast[i], text, sizeof text);
        at = append(buf, size, at, "%s\"%s\"", i ? ", " : "", text);
    }
    at = append(buf, size, at, "], \"allow\": [");
    for (int i = 0; i < c->n_allow; i++) {
        prefix_format(&c->allow[i].anycast, text, sizeof text);
        at = append(buf, size, at, "%s[\"%s\", [", i ? ", " : "", text);
        for (int k = 0; k < c->allow[i].n; k++) {
            prefix_format(&c->allow[i].unicast[k], text, sizeof text);
            at = append(buf, size, at, "%s\"%s\"", k ? ", " : "", text);
        }
        at = append(buf, size, at, "]]");
    }
    at = append(buf, size, at,
                "], \"policy\": \"%s\", \"method\": \"%s\", \"port\": %d, \"timeout_ms\": %d, "
                "\"retries\": %d, \"grace_ms\": %d, \"ttl_min\": %u, \"ttl_max\": %u, "
                "\"negative_ttl\": %u, \"failure_ttl\": %u, \"key\": ",
                POLICIES[c->policy], METHODS[c->method], c->port, c->timeout_ms, c->retries,
                c->grace_ms, c->ttl_min, c->ttl_max, c->negative_ttl, c->failure_ttl);
    if (c->key_len) {
        at = append(buf, size, at, "\"");
        for (int i = 0; i < c->key_len; i++)
            at = append(buf, size, at, "%02x", c->key[i]);
        at = append(buf, size, at, "\"");
    } else {
        at = append(buf, size, at, "null");
    }
    at = append(buf, size, at, ", \"key_id\": %d, \"log\": ", c->key_id);
    if (c->log >= 0)
        at = append(buf, size, at, "\"%s\"", LOGS[c->log]);
    else
        at = append(buf, size, at, "null");
    at = append(buf, size, at, ", \"disable\": %s, \"nonblock_wait_ms\": %d, \"host_cache\": ",
                c->disabled > 0 ? "true" : "false", c->nonblock_wait_ms);
    if (c->host_cache[0])
        at = append(buf, size, at, "\"%s\"}", c->host_cache);
    else
        at = append(buf, size, at, "null}");
    return at;
}

/* ---- the process-wide config ---------------------------------------------------------------- */

static struct aarp_config *current;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t replace_lock = PTHREAD_MUTEX_INITIALIZER;
static struct aarp_config fallback = {.disabled = -1, .log = -1};

static void install(struct aarp_config *c, const char *err)
{
    if (!c) {
        c = &fallback;
        err = "out of memory reading the configuration";
    }
    int level = c->log >= 0 ? c->log : LOG_OFF;
    __atomic_store_n(&aarp_log_level, level, __ATOMIC_RELAXED);
    if (err && *err)
        LOGE("%s (libaarp disabled: connections pass through unchanged)", err);
    else if (c->disabled > 0)
        LOGI("disabled by configuration");
    else
        LOGD("configuration %s: %d anycast prefix(es), method %s, timeout %d ms, retries %d, "
             "policy %s", c->source[0] ? c->source : "(none)", c->n_anycast, METHODS[c->method],
             c->timeout_ms, c->retries, POLICIES[c->policy]);
    __atomic_store_n(&current, c, __ATOMIC_RELEASE);
}

static void load_once(void)
{
    real_init();
    char err[sizeof current->error] = "";
    int saved = errno;
    struct aarp_config *c = config_load(NULL, err, sizeof err);
    install(c, err);
    errno = saved;
}

const struct aarp_config *config_get(void)
{
    struct aarp_config *c = __atomic_load_n(&current, __ATOMIC_ACQUIRE);
    if (__builtin_expect(c != NULL, 1))
        return c;
    pthread_once(&once, load_once);
    return __atomic_load_n(&current, __ATOMIC_ACQUIRE);
}

static const char *no_getenv(const char *name, void *ctx)
{
    (void)name;
    (void)ctx;
    return NULL;
}

int config_replace(const char *path, const char *text, size_t len, char *err, size_t errlen)
{
    pthread_once(&once, load_once);
    if (errlen)
        err[0] = '\0';
    struct aarp_config *c;
    if (text) {
        /* A configuration given whole (already merged with its environment elsewhere). */
        char *copy = malloc(len + 1);
        c = NULL;
        if (copy) {
            memcpy(copy, text, len);
            copy[len] = '\0';
            c = parse_all(copy, len, path ? path : "aarp.conf", no_getenv, NULL, err, errlen);
            free(copy);
            if (c)
                snprintf(c->error, sizeof c->error, "%s", err);
        }
    } else {
        c = config_load(path, err, errlen);
    }
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pthread_mutex_lock(&replace_lock);
    struct aarp_config *old = __atomic_load_n(&current, __ATOMIC_ACQUIRE);
    install(c, err);
    /* Replaced configs stay alive and reachable: a hook in another thread may still use one. */
    if (old && old != &fallback)
        c->retired = old;
    pthread_mutex_unlock(&replace_lock);
    return err[0] ? -1 : 0;
}
