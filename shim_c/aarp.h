/* Public API of libaarp.so: the aarp_* functions Python reaches through cffi (ABI mode), for
 * `aarp-resolve --via-shim`, cache inspection and the tests. Everything not declared AARP_API
 * is hidden (-fvisibility=hidden). The build installs this header beside
 * libaarp.so, and aarp/shim.py hands it to cffi: keep it plain declarations and integer
 * #defines. */
#ifndef AARP_H
#define AARP_H

#include <stddef.h>

#define AARP_API __attribute__((visibility("default")))

/* Library version as "MAJOR.MINOR.PATCH". */
AARP_API const char *aarp_version(void);

/* What the library does for a destination (aarp_resolve status). */
#define AARP_PASS 0      /* outside the anycast prefixes: untouched */
#define AARP_PINNED 1    /* connections go to `address`, the server's unicast address */
#define AARP_NEGATIVE 2  /* AA answers but does not resolve: used unchanged */
#define AARP_FAILED 3    /* no valid answer in time: used unchanged (fail open) */
#define AARP_DISABLED 4  /* library disabled (configuration or AARP_DISABLE) */
#define AARP_BAD_ADDRESS -1

/* How an answer was obtained. */
#define AARP_HOW_NONE 0
#define AARP_HOW_ICMP_SOURCE 1 /* echo reply from UA itself (kernel anycast) */
#define AARP_HOW_ICMP_ANSWER 2 /* in-band answer in an echo reply from AA */
#define AARP_HOW_UDP_ANSWER 3  /* in-band answer over UDP from AA */

/* How an answer was verified. */
#define AARP_VERIFIED_NONE 0   /* believed (policy any) */
#define AARP_VERIFIED_PREFIX 1 /* UA inside the allowed prefixes */
#define AARP_VERIFIED_TAG 2    /* valid HMAC tag */

struct aarp_result {
    int status;
    int cached;        /* 1: served from the cache, 0: probed now */
    int how;
    int verified;
    unsigned ttl;      /* seconds the answer stays cached (remaining when cached) */
    char address[64];  /* the address a connect() would use */
};

/* Resolve one address exactly as a hooked connect() would (cache, probe, policy). */
AARP_API int aarp_resolve(const char *address, struct aarp_result *out);

struct aarp_cache_entry {
    char anycast[64];
    char unicast[64];  /* "" unless pinned */
    int status;        /* AARP_PINNED, AARP_NEGATIVE or AARP_FAILED */
    int how;
    long long expires_in_ms;
};

/* Copy up to `max` live cache entries; returns how many. */
AARP_API int aarp_cache_entries(struct aarp_cache_entry *out, int max);
AARP_API void aarp_cache_flush(void);

/* Re-read the configuration (path NULL: $AARP_CONF or /etc/aarp.conf, plus AARP_*).
 * 0, or -1 with the one-line reason in err (the library is then disabled). */
AARP_API int aarp_config_reload(const char *path, char *err, size_t errlen);
/* Use the configuration `text` (named `name` in messages) as is, without the environment,
 * e.g. one the Python side already merged. 0, or -1 with the reason (library disabled). */
AARP_API int aarp_config_use(const char *text, size_t len, const char *name, char *err,
                             size_t errlen);
/* The active configuration as JSON (config.json's shape) and why it is disabled ("" if not). */
AARP_API size_t aarp_config_json(char *out, size_t len);
AARP_API const char *aarp_config_error(void);
/* Parse `text` as file `name` with the environment `env` ("KEY=value" strings, NULL-ended):
 * 0 with JSON in out, or -1 with the error line in out. Touches nothing global. */
AARP_API int aarp_config_check(const char *text, size_t len, const char *name,
                               const char *const *env, char *out, size_t outlen);
/* The same for a file read as the library reads it: `path` (NULL: AARP_CONF of `env`, else
 * /etc/aarp.conf), then `env`. */
AARP_API int aarp_config_check_load(const char *path, const char *const *env, char *out,
                                    size_t outlen);

/* The host cache (docs/shim.md): one daemon per host probes for every process; the processes
 * read its file lock-free. The daemon's side opens it (creating DIR/cache), probes with this
 * process's configuration and stores; aarp_hostcache_read shows a cache whole. */
struct aarp_host_entry {
    char anycast[64];
    char unicast[64];  /* "" unless pinned */
    int status;        /* AARP_PINNED, AARP_NEGATIVE or AARP_FAILED */
    int how;
    int verified;
    unsigned ttl;      /* seconds it was stored for */
    unsigned probes;   /* times the daemon probed this address */
    long long expires_in_ms;
};

struct aarp_host_info {
    unsigned owner;    /* uid owning the file, and its mode */
    unsigned mode;
    int pid;           /* the daemon that last opened it */
    int port;
    int policy;
    int same_netns;    /* 1 if it serves this process's network namespace */
    int slots;
    unsigned long long requests, probes, refreshes, refused;
    long long uptime_ms;
};

AARP_API void *aarp_hostcache_open(const char *dir, char *err, size_t errlen);
/* Probe `address` now and store the answer: its status (AARP_PASS: outside the prefixes or
 * disabled, not probed), or AARP_BAD_ADDRESS, or -2 when interrupted. */
AARP_API int aarp_hostcache_probe(void *cache, const char *address, struct aarp_host_entry *out);
/* 1 and `out` filled if the cache holds a live entry for `address`. */
AARP_API int aarp_hostcache_lookup(void *cache, const char *address,
                                   struct aarp_host_entry *out);
AARP_API void aarp_hostcache_count(void *cache, int counter); /* 0 requests 1 refreshes 2 refused */
AARP_API void aarp_hostcache_close(void *cache);
/* Up to `max` live entries of DIR/cache and its header; -1 with the reason in err. */
AARP_API int aarp_hostcache_read(const char *dir, struct aarp_host_info *info,
                                 struct aarp_host_entry *out, int max, char *err, size_t errlen);

/* Run argv[0] (searched in PATH) under seccomp supervision (docs/shim.md): its connect,
 * sendto, sendmsg and getpeername calls to anycast addresses are rewritten from outside.
 * Returns the program's exit status (128 + signal when killed), or -1 with the reason in err
 * when it could not be started that way (nothing was run). */
AARP_API int aarp_supervise(const char *const *argv, char *err, size_t errlen);
/* 1 if this kernel can do it, else 0 with the reason in err. */
AARP_API int aarp_supervise_available(char *err, size_t errlen);

/* The message codec (spec/aarp.md), shared vectors: tests/vectors/aarp/messages.json. */
struct aarp_message {
    int kind;          /* 1 query, 2 answer */
    int flags;
    unsigned char nonce[16];
    int has_unicast6, has_unicast4, has_key_id, has_tag;
    unsigned char unicast6[16];
    unsigned char unicast4[4];
    unsigned ttl;
    int anycast_len;   /* 4 or 16 (answers) */
    unsigned char anycast[16];
    int key_id;
    unsigned char tag[16];
    size_t signed_len; /* bytes the tag covers */
};

/* 0, or a negative code whose name aarp_message_error() gives ("short", "magic", ...). */
AARP_API int aarp_message_decode(const unsigned char *buf, size_t len, struct aarp_message *out);
AARP_API const char *aarp_message_error(int code);
/* A query of exactly `size` bytes into out (>= size bytes); 0 if the size is impossible. */
AARP_API size_t aarp_message_query(const unsigned char *nonce16, size_t size, unsigned char *out);
/* An answer in canonical TLV order into out (>= 512 bytes); unicast6/unicast4/key may be
 * NULL/""; anycast is text. 0 on bad input. */
AARP_API size_t aarp_message_answer(const unsigned char *nonce16, const char *anycast,
                                    const char *unicast6, const char *unicast4,
                                    unsigned ttl, const unsigned char *key, size_t key_len,
                                    int key_id, unsigned char *out);
AARP_API int aarp_message_tag_valid(const unsigned char *buf, size_t len,
                                    const unsigned char *key, size_t key_len);
AARP_API void aarp_hmac_sha256(const unsigned char *key, size_t key_len,
                               const unsigned char *data, size_t len, unsigned char *out32);

#endif
