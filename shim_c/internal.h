/* Internal declarations shared by the files of libaarp.so; nothing here is exported. */
#ifndef AARP_INTERNAL_H
#define AARP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

/* ---- addresses (addr.c) ------------------------------------------------------------------ */

/* An IPv4 (b[0..3]) or IPv6 address; IPv4-mapped IPv6 destinations are stored as IPv4. */
struct ipaddr {
    int af; /* AF_INET or AF_INET6 */
    uint8_t b[16];
};

struct prefix {
    struct ipaddr ip;
    int len;
};

int ip_len(const struct ipaddr *a);
int ip_equal(const struct ipaddr *a, const struct ipaddr *b);
int ip_parse(const char *text, struct ipaddr *out);
int prefix_parse(const char *text, struct prefix *out);
int prefix_contains(const struct prefix *p, const struct ipaddr *a);
int ip_is_usable_unicast(const struct ipaddr *a);
void ip_format(const struct ipaddr *a, char *buf, size_t size);
void prefix_format(const struct prefix *p, char *buf, size_t size);

/* What a sockaddr holds: the address (mapped IPv6 folded to IPv4), the port, and its shape. */
struct sockaddr_view {
    struct ipaddr ip;
    uint16_t port;     /* network order */
    int sa_family;     /* AF_INET or AF_INET6 as the caller wrote it */
    int mapped;        /* AF_INET6 holding ::ffff:a.b.c.d */
};

/* 0 when `sa` is an AF_INET/AF_INET6 address of a plausible length, else -1. */
int sockaddr_read(const struct sockaddr *sa, socklen_t len, struct sockaddr_view *out);
/* Rewrite the address inside a copy of `sa` (same family/shape, port kept) to `ip`.
 * `out` must hold `len` bytes. Returns 0, or -1 if `ip` cannot be expressed in that shape. */
int sockaddr_rewrite(const struct sockaddr *sa, socklen_t len, const struct ipaddr *ip,
                     struct sockaddr_storage *out);

/* ---- configuration (config.c) ------------------------------------------------------------ */

enum { LOG_OFF = 0, LOG_ERROR = 1, LOG_INFO = 2, LOG_DEBUG = 3 };
enum { POLICY_ANY = 0, POLICY_PREFIX = 1, POLICY_KEY = 2 };
enum { METHOD_AUTO = 0, METHOD_ICMP = 1, METHOD_UDP = 2 };

struct allow_rule {
    struct prefix anycast;
    int n;
    struct prefix *unicast;
};

struct aarp_config {
    int disabled;
    int log;
    int n_anycast;
    struct prefix *anycast;
    int n_allow;
    struct allow_rule *allow;
    int policy;
    int method;
    int port;
    int timeout_ms;
    int retries;
    int grace_ms;
    unsigned ttl_min, ttl_max, negative_ttl, failure_ttl;
    int key_len;
    uint8_t key[64];
    int key_id;
    int nonblock_wait_ms;  /* the longest a non-blocking call waits for an answer */
    char host_cache[128];  /* directory of the host cache, "" when off */
    char source[4096];     /* the file read, or "" */
    struct aarp_config *retired; /* configs this one replaced (kept alive) */
    char error[4400];            /* why it is disabled, when broken */
};

/* Parse the file named by AARP_CONF (or /etc/aarp.conf) plus the environment. Returns a new
 * config (never NULL unless out of memory); on a mistake it is disabled and `err` holds the
 * one-line reason. `env` is a getenv-like lookup so tests can feed their own. */
struct aarp_config *config_load(const char *path_override, char *err, size_t errlen);
void config_free(struct aarp_config *c);
/* Like config_load, with the environment `env` ("KEY=value" strings) instead of the real one. */
struct aarp_config *config_load_env(const char *path, const char *const *env, char *err,
                                    size_t errlen);
struct aarp_config *config_parse_text(const char *text, size_t len, const char *name,
                                      const char *const *env, char *err, size_t errlen);
int config_is_anycast(const struct aarp_config *c, const struct ipaddr *a);
int config_unicast_allowed(const struct aarp_config *c, const struct ipaddr *aa, const struct ipaddr *ua);
/* Canonical one-key-per-line text of a config (for cross-checking with the Python reader). */
size_t config_describe(const struct aarp_config *c, char *buf, size_t size);

/* The process-wide config, loaded on first need; never NULL. */
const struct aarp_config *config_get(void);
/* Replace the process-wide config (API only): read `path` (NULL: the usual place) plus the
 * environment, or parse `text` (named `path`) alone. Returns 0, or -1 with `err` filled. */
int config_replace(const char *path, const char *text, size_t len, char *err, size_t errlen);

/* ---- logging (log.c) --------------------------------------------------------------------- */

extern int aarp_log_level;
void aarp_logf(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define LOGD(...) do { if (aarp_log_level >= LOG_DEBUG) aarp_logf(LOG_DEBUG, __VA_ARGS__); } while (0)
#define LOGI(...) do { if (aarp_log_level >= LOG_INFO) aarp_logf(LOG_INFO, __VA_ARGS__); } while (0)
#define LOGE(...) do { if (aarp_log_level >= LOG_ERROR) aarp_logf(LOG_ERROR, __VA_ARGS__); } while (0)

/* ---- SHA-256 / HMAC (sha256.c) ----------------------------------------------------------- */

void sha256(const uint8_t *data, size_t len, uint8_t out[32]);
void hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len,
                 uint8_t out[32]);
int const_time_equal(const uint8_t *a, const uint8_t *b, size_t n);

/* ---- messages (message.c) ---------------------------------------------------------------- */

#define MSG_HEADER_LEN 24
#define MSG_NONCE_LEN 16
#define MSG_TAG_LEN 16
#define MSG_MAX_LEN 512
#define MSG_QUERY_LEN 96
#define MSG_KIND_QUERY 1
#define MSG_KIND_ANSWER 2

struct msg {
    int kind;
    int flags;
    uint8_t nonce[MSG_NONCE_LEN];
    int has_unicast6, has_unicast4, has_key_id, has_tag;
    uint8_t unicast6[16];
    uint8_t unicast4[4];
    uint32_t ttl;
    struct ipaddr anycast;
    int key_id;
    size_t signed_len; /* bytes before the tag TLV: what the tag covers */
    uint8_t tag[MSG_TAG_LEN];
};

/* Rejection codes, the same names as aarp/message.py's MalformedMessage.code. */
enum {
    MSG_OK = 0, MSG_E_SHORT = -1, MSG_E_OVERSIZED = -2, MSG_E_MAGIC = -3, MSG_E_VERSION = -4,
    MSG_E_KIND = -5, MSG_E_TRUNCATED = -6, MSG_E_AFTER_TAG = -7, MSG_E_PAD = -8,
    MSG_E_QUERY_FIELD = -9, MSG_E_LENGTH = -10, MSG_E_DUPLICATE = -11,
    MSG_E_NO_UNICAST = -12, MSG_E_NO_TTL = -13, MSG_E_NO_ANYCAST = -14,
    MSG_E_TAG_NO_KEY_ID = -15, MSG_E_KEY_ID_NO_TAG = -16,
};
const char *msg_code_name(int code);

int msg_decode(const uint8_t *buf, size_t len, struct msg *out);
/* A query of exactly `size` bytes (24, or 26..512); 0 if the size is impossible. */
size_t msg_encode_query(const uint8_t nonce[MSG_NONCE_LEN], size_t size, uint8_t *out);
/* An answer in canonical order; ua6/ua4 may be NULL (not both); key may be NULL.
 * `out` needs MSG_MAX_LEN bytes. Returns the length, 0 on bad input. */
size_t msg_encode_answer(const uint8_t nonce[MSG_NONCE_LEN], const struct ipaddr *anycast,
                         const uint8_t *ua6, const uint8_t *ua4, uint32_t ttl,
                         const uint8_t *key, size_t key_len, int key_id, uint8_t *out);
int msg_tag_valid(const uint8_t *buf, const struct msg *m, const uint8_t *key, size_t key_len);

/* ---- the real libc functions (real.c) ---------------------------------------------------- */

struct mmsghdr;
struct real_fns {
    int (*socket)(int, int, int);
    int (*connect)(int, const struct sockaddr *, socklen_t);
    ssize_t (*sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    ssize_t (*sendmsg)(int, const struct msghdr *, int);
    int (*sendmmsg)(int, struct mmsghdr *, unsigned int, int);
    ssize_t (*recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
    ssize_t (*recvmsg)(int, struct msghdr *, int);
    int (*recvmmsg)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
    int (*getpeername)(int, struct sockaddr *, socklen_t *);
    int (*close)(int);
    int (*close_range)(unsigned int, unsigned int, int);
    int (*dup2)(int, int);
    int (*dup3)(int, int, int);
    void (*closefrom)(int); /* NULL where libc has none */
};
extern struct real_fns real;
void real_init(void);

/* ---- time -------------------------------------------------------------------------------- */
int64_t now_ms(void);

/* ---- cache (cache.c) --------------------------------------------------------------------- */

enum { RES_NONE = 0, RES_PENDING = 1, RES_POSITIVE = 2, RES_NEGATIVE = 3, RES_FAILED = 4 };
enum { VERIFIED_NONE = 0, VERIFIED_PREFIX = 1, VERIFIED_TAG = 2 };
enum { HOW_NONE = 0, HOW_ICMP_SOURCE = 1, HOW_ICMP_ANSWER = 2, HOW_UDP_ANSWER = 3 };

struct resolution {
    int state;        /* RES_POSITIVE / RES_NEGATIVE / RES_FAILED */
    int how;
    int verified;     /* VERIFIED_* */
    struct ipaddr ua;
    uint32_t ttl;     /* seconds to keep */
    int64_t expires;  /* monotonic ms */
    int from_host;    /* taken from the host cache */
};

enum { CACHE_HIT = 0, CACHE_CLAIMED = 1, CACHE_TIMEOUT = 2 };
/* A live entry (HIT), or the claim to probe (CLAIMED), or TIMEOUT when another thread's probe
 * has not finished by `wait_until` (monotonic ms; 0: do not wait at all). */
int cache_acquire(const struct ipaddr *aa, struct resolution *out, int64_t wait_until);
void cache_complete(const struct ipaddr *aa, const struct resolution *r);
void cache_abandon(const struct ipaddr *aa);
void cache_flush(void);
int cache_snapshot(struct ipaddr *aa, struct resolution *r, int max);
void cache_fork_prepare(void);
void cache_fork_parent(void);
void cache_fork_child(void);

/* ---- probing (probe.c) ------------------------------------------------------------------- */

/* Resolve `aa` on the wire; fills r (state, how, ua, ttl). Returns 0, or -1 when interrupted
 * by a signal (r->state is RES_FAILED then, and the result should not be cached). */
int probe_resolve(const struct aarp_config *c, const struct ipaddr *aa, struct resolution *r);

/* ---- the library's own descriptors (ownfd.c) --------------------------------------------- */

/* A socket of the library's own (always close-on-exec), guarded against the program's
 * close/close_range/closefrom/dup2; close it with ownfd_close. */
int ownfd_socket(int domain, int type, int proto);
void ownfd_close(int fd);
int ownfd_any(void);
int ownfd_has(int fd);
void ownfd_lock(void);
void ownfd_unlock(void);
int ownfd_has_locked(int fd);
int ownfd_in_range_locked(unsigned first, unsigned last, int *out); /* out: 256 ints */
void ownfd_fork_prepare(void);
void ownfd_fork_parent(void);
void ownfd_fork_child(void);

/* ---- the host cache (hostcache.c) -------------------------------------------------------- */

enum { HOST_ABSENT = 0, HOST_FOUND = 1, HOST_LATE = 2 };
/* The host cache's answer for `aa`, asking its daemon (waiting until `deadline`) on a miss:
 * HOST_FOUND (r filled), HOST_LATE (the daemon is still probing), HOST_ABSENT (no daemon, not
 * served by it, or its answer does not meet our policy: probe ourselves). */
int hostcache_resolve(const struct aarp_config *c, const struct ipaddr *aa,
                      struct resolution *r, int64_t deadline);
/* A hit from the host cache near its expiry: ask the daemon to refresh it (rate-limited). */
void hostcache_maybe_refresh(const struct aarp_config *c, const struct ipaddr *aa,
                             const struct resolution *r);
void hostcache_fork_child(void);
/* The daemon's side (the only writer); the probe uses the process configuration. */
void *hostcache_open_writer(const char *dir, char *err, size_t errlen);
int hostcache_probe_store(void *w, const struct ipaddr *aa, struct resolution *r);
int hostcache_writer_lookup(void *w, const struct ipaddr *aa, struct resolution *r);
void hostcache_count(void *w, int which); /* 0 requests, 1 refreshes, 2 refused */
void hostcache_close_writer(void *w);
struct hostcache_info {
    unsigned owner, mode;
    int pid, port, policy, same_netns, slots;
    uint64_t requests, probes, refreshes, refused;
    int64_t uptime_ms;
};
int hostcache_snapshot(const char *dir, struct hostcache_info *info, struct ipaddr *aa,
                       struct resolution *r, uint32_t *probes, int max, char *err,
                       size_t errlen);

/* ---- resolution front end (resolve.c) ---------------------------------------------------- */

enum { CACHED_NO = 0, CACHED_PROCESS = 1, CACHED_HOST = 2, CACHED_LATE = 3 };
/* Whether a call on `fd` with send `flags` must not block (O_NONBLOCK or MSG_DONTWAIT). */
int call_is_nonblocking(int fd, int flags);
/* What to use instead of `aa`: returns 1 and fills r->ua when pinned, 0 to use aa unchanged.
 * `cached`: CACHED_NO (probed now), _PROCESS, _HOST, or _LATE (a non-blocking caller's answer
 * was not there in time: unchanged, the probe goes on). `fd`/`flags` tell whether the caller
 * may block (fd -1: it may). */
int resolve_address(const struct aarp_config *c, const struct ipaddr *aa, struct resolution *r,
                    int *cached, int fd, int flags);

/* ---- per-socket state (fdstate.c) -------------------------------------------------------- */

void fdstate_remember(int fd, const struct ipaddr *aa, const struct ipaddr *ua);
int fdstate_pinned(int fd, const struct ipaddr *aa, struct ipaddr *ua);
int fdstate_unmap(int fd, const struct ipaddr *ua, struct ipaddr *aa);
int fdstate_any(void);
void fdstate_forget(int fd);
void fdstate_forget_range(unsigned int first, unsigned int last);
void fdstate_copy(int from, int to);
enum { KIND_UNKNOWN = 0, KIND_PINNABLE = 1, KIND_OTHER = 2 };
void fdkind_set(int fd, int kind);
int fdkind_get(int fd);
void fdkind_clear_range(unsigned int first, unsigned int last);
void fdstate_fork_prepare(void);
void fdstate_fork_parent(void);
void fdstate_fork_child(void);

/* TCP, SCTP, MPTCP, UDP and UDP-Lite (SO_TYPE, SO_PROTOCOL): the sockets that get pinned. */
int pinnable_kind(int type, int proto);

/* Thread-local guard: set while the library works for a caller, so nothing re-enters it. */
extern __thread int aarp_busy __attribute__((tls_model("initial-exec")));

#endif
