/* The host cache: one probe per host for every process that uses the library.
 *
 * A daemon (aarp-shim --cache-daemon) owns DIR/cache, a file of fixed-size slots that every
 * process maps read-only and reads lock-free (a sequence counter per slot: odd while the
 * daemon writes it). On a miss a process asks the daemon over DIR/cache.sock (SOCK_SEQPACKET)
 * and waits, within its own bound, for the daemon to probe and store the answer. Near the end
 * of an entry's life, a process that still uses it sends a refresh hint.
 *
 * Trust: only the file is believed, and only if root or this process's own user owns it and
 * nobody else may write it; the socket merely triggers probes, its peer must be the file's
 * owner. An unprivileged local user can therefore ask for probes but never write an answer.
 * The daemon records its network namespace: a process in another one ignores the file. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"

#define HC_MAGIC "AARPHC1"
#define HC_SLOTS 4096 /* power of two */
#define HC_RUN 16
#define HC_RETRY_MS 1000 /* a missing file or daemon is looked for again after this */

struct hc_slot {
    uint32_t seq; /* odd: being written */
    uint8_t state, how, verified, af;
    uint8_t aa[16], ua[16];
    uint32_t ttl;
    uint32_t probes;
    int64_t learned_ms, expires_ms; /* CLOCK_MONOTONIC */
    uint8_t keyfp[8];               /* the daemon's key, when `verified` is a tag */
};

struct hc_header {
    char magic[8];
    uint32_t version, slots, slot_size, port;
    uint64_t netns;
    int32_t policy, pid;
    uint8_t keyfp[8];
    uint64_t requests, probes, refreshes, refused;
    int64_t started_ms;
    uint8_t reserved[40];
};

struct hc_file {
    struct hc_header h;
    struct hc_slot slot[HC_SLOTS];
};

/* ---- shared helpers -------------------------------------------------------------------- */

static unsigned hc_hash(const struct ipaddr *a)
{
    uint32_t h = 2166136261u ^ (uint32_t)a->af;
    for (int i = 0; i < ip_len(a); i++)
        h = (h ^ a->b[i]) * 16777619u;
    return h ^ (h >> 13);
}

static void key_fingerprint(const struct aarp_config *c, uint8_t out[8])
{
    memset(out, 0, 8);
    if (c->key_len) {
        uint8_t d[32];
        sha256(c->key, (size_t)c->key_len, d);
        memcpy(out, d, 8);
    }
}

static uint64_t netns_id(void)
{
    struct stat st;
    return stat("/proc/self/ns/net", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

static int path_in(const char *dir, const char *name, char *out, size_t size)
{
    return snprintf(out, size, "%s/%s", dir, name) < (int)size ? 0 : -1;
}

/* A consistent copy of `s`, or 0 if it is being written (seqlock read). */
static int slot_read(const struct hc_slot *s, struct hc_slot *out)
{
    for (int tries = 0; tries < 4; tries++) {
        uint32_t a = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
        if (a & 1)
            continue;
        memcpy(out, (const void *)s, sizeof *out);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) == a)
            return 1;
    }
    return 0;
}

static int slot_is(const struct hc_slot *s, const struct ipaddr *aa)
{
    return s->state != RES_NONE && s->af == (aa->af == AF_INET ? 4 : 6) &&
           memcmp(s->aa, aa->b, (size_t)ip_len(aa)) == 0;
}

/* The live entry for `aa`, copied; 0 if none. */
static int file_lookup(const struct hc_file *f, const struct ipaddr *aa, struct hc_slot *out,
                       int64_t now)
{
    unsigned h = hc_hash(aa);
    for (int i = 0; i < HC_RUN; i++) {
        struct hc_slot copy;
        if (!slot_read(&f->slot[(h + (unsigned)i) & (HC_SLOTS - 1)], &copy))
            continue;
        if (slot_is(&copy, aa)) {
            *out = copy;
            return copy.expires_ms > now;
        }
    }
    return 0;
}

/* ---- the library's side: read, ask, hint ------------------------------------------------ */

struct hc_view {
    const struct hc_file *f;
    char dir[128];
    uid_t owner;
};

static struct hc_view view;        /* the mapped file (never unmapped once used) */
static int64_t view_retry_at;      /* when to look for a missing file again */
static pthread_mutex_t view_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t last_hint[64];      /* per hash bucket: refresh hints at most once a second */

/* Map DIR/cache if it can be trusted; NULL if not (yet). */
static const struct hc_file *hc_map(const struct aarp_config *c, uid_t *owner)
{
    const struct hc_file *f = __atomic_load_n(&view.f, __ATOMIC_ACQUIRE);
    if (f && strcmp(view.dir, c->host_cache) == 0) {
        *owner = view.owner;
        return f;
    }
    int64_t now = now_ms();
    if (now < __atomic_load_n(&view_retry_at, __ATOMIC_RELAXED))
        return NULL;
    pthread_mutex_lock(&view_lock);
    f = view.f;
    if (!f || strcmp(view.dir, c->host_cache) != 0) {
        f = NULL;
        char path[256];
        int fd = path_in(c->host_cache, "cache", path, sizeof path) == 0
                     ? open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
                     : -1;
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
            (st.st_uid == 0 || st.st_uid == geteuid()) && !(st.st_mode & 022) &&
            st.st_size >= (off_t)sizeof(struct hc_file)) {
            void *m = mmap(NULL, sizeof(struct hc_file), PROT_READ, MAP_SHARED, fd, 0);
            if (m != MAP_FAILED) {
                const struct hc_file *cand = m;
                if (memcmp(cand->h.magic, HC_MAGIC, 8) == 0 && cand->h.version == 1 &&
                    cand->h.slots == HC_SLOTS && cand->h.slot_size == sizeof(struct hc_slot) &&
                    (!cand->h.netns || cand->h.netns == netns_id())) {
                    snprintf(view.dir, sizeof view.dir, "%s", c->host_cache);
                    view.owner = st.st_uid;
                    f = cand;
                    __atomic_store_n(&view.f, f, __ATOMIC_RELEASE);
                    LOGD("host cache %s: mapped (daemon pid %d)", c->host_cache, cand->h.pid);
                } else {
                    munmap(m, sizeof(struct hc_file));
                    LOGI("host cache %s: not a cache of this version and network namespace: "
                         "not used", c->host_cache);
                }
            }
        } else if (fd >= 0) {
            LOGI("host cache %s/cache: not owned by root or this user, or writable by others: "
                 "not trusted", c->host_cache);
        }
        if (fd >= 0)
            real.close(fd);
        if (!f)
            __atomic_store_n(&view_retry_at, now + HC_RETRY_MS, __ATOMIC_RELAXED);
    }
    *owner = view.owner;
    pthread_mutex_unlock(&view_lock);
    return f;
}

/* Whether this process's policy may use a shared entry (the daemon may run with another). */
static int acceptable(const struct aarp_config *c, const struct hc_file *f,
                      const struct hc_slot *s, const struct ipaddr *aa, struct resolution *r)
{
    uint8_t fp[8];
    key_fingerprint(c, fp);
    memset(r, 0, sizeof *r);
    r->state = s->state;
    r->how = s->how;
    r->verified = s->verified;
    r->from_host = 1;
    int64_t bound;
    if (s->state == RES_POSITIVE) {
        r->ua.af = aa->af;
        memcpy(r->ua.b, s->ua, 16);
        if (c->policy == POLICY_PREFIX && !config_unicast_allowed(c, aa, &r->ua))
            return 0;
        if (c->policy == POLICY_KEY &&
            (s->verified != VERIFIED_TAG || memcmp(s->keyfp, fp, 8) != 0))
            return 0;
        if (c->policy == POLICY_PREFIX && r->verified == VERIFIED_NONE)
            r->verified = VERIFIED_PREFIX;
        bound = c->ttl_max;
    } else {
        /* "No answer" under another policy or key may mean something else to us. */
        if (f->h.policy != c->policy || memcmp(f->h.keyfp, fp, 8) != 0)
            return 0;
        bound = s->state == RES_NEGATIVE ? c->negative_ttl : c->failure_ttl;
    }
    r->expires = s->expires_ms;
    if (s->learned_ms + bound * 1000 < r->expires)
        r->expires = s->learned_ms + bound * 1000;
    r->ttl = s->ttl < bound ? s->ttl : (uint32_t)bound; /* what it was stored for */
    return r->expires > now_ms();
}

enum { ASK_STORED = 0, ASK_NOT_MINE = 1, ASK_REFUSED = 2 };
#define REQ_RESOLVE 1
#define REQ_REFRESH 2

/* Ask the daemon; the reply code, or -1 (no daemon) or -2 (no reply before `deadline`). */
static int hc_ask(const struct aarp_config *c, uid_t owner, const struct ipaddr *aa, int kind,
                  int64_t deadline)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    char path[256];
    if (path_in(c->host_cache, "cache.sock", path, sizeof path) != 0 ||
        strlen(path) >= sizeof sun.sun_path)
        return -1;
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int fd = ownfd_socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    int rc = -1;
    struct ucred peer;
    socklen_t plen = sizeof peer;
    uint8_t req[24] = {'A', 'A', 'R', 'Q', 1, (uint8_t)kind, aa->af == AF_INET ? 4 : 6, 0};
    memcpy(req + 8, aa->b, 16);
    if (real.connect(fd, (struct sockaddr *)&sun, sizeof sun) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &plen) != 0 || peer.uid != owner ||
        real.sendto(fd, req, sizeof req, MSG_NOSIGNAL, NULL, 0) != (ssize_t)sizeof req)
        goto out;
    if (kind == REQ_REFRESH) {
        rc = ASK_STORED;
        goto out;
    }
    for (;;) {
        int64_t now = now_ms();
        if (now >= deadline) {
            rc = -2;
            break;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int ready = poll(&p, 1, (int)(deadline - now));
        if (ready < 0 && errno == EINTR) {
            rc = -2;
            break;
        }
        if (ready <= 0)
            continue;
        uint8_t rep[8];
        ssize_t n = real.recvfrom(fd, rep, sizeof rep, 0, NULL, NULL);
        if (n == (ssize_t)sizeof rep && memcmp(rep, "AARA", 4) == 0)
            rc = rep[4];
        break;
    }
out:
    ownfd_close(fd);
    return rc;
}

int hostcache_resolve(const struct aarp_config *c, const struct ipaddr *aa,
                      struct resolution *r, int64_t deadline)
{
    if (!c->host_cache[0])
        return HOST_ABSENT;
    uid_t owner;
    const struct hc_file *f = hc_map(c, &owner);
    if (!f || (int)f->h.port != c->port)
        return HOST_ABSENT;
    struct hc_slot s;
    if (file_lookup(f, aa, &s, now_ms()) && acceptable(c, f, &s, aa, r))
        return HOST_FOUND;
    char text[64] = "";
    if (aarp_log_level >= LOG_DEBUG)
        ip_format(aa, text, sizeof text);
    int rc = hc_ask(c, owner, aa, REQ_RESOLVE, deadline);
    if (rc == ASK_STORED && file_lookup(f, aa, &s, now_ms())) {
        if (acceptable(c, f, &s, aa, r)) {
            LOGD("host cache: %s probed by the daemon", text);
            return HOST_FOUND;
        }
        LOGD("host cache: %s: the daemon's answer does not meet our policy: probing", text);
        return HOST_ABSENT;
    }
    if (rc == -2) {
        LOGD("host cache: %s: the daemon's answer is not there yet", text);
        return HOST_LATE;
    }
    if (rc == -1)
        LOGD("host cache %s: no daemon answers: probing ourselves", c->host_cache);
    else
        LOGD("host cache: %s: the daemon does not serve it (%d): probing ourselves", text, rc);
    return HOST_ABSENT;
}

void hostcache_maybe_refresh(const struct aarp_config *c, const struct ipaddr *aa,
                             const struct resolution *r)
{
    int64_t now = now_ms();
    int64_t left = r->expires - now;
    /* The last fifth of its life (at least 2 s): still in use, so worth probing again. */
    int64_t window = (int64_t)r->ttl * 200 > 2000 ? (int64_t)r->ttl * 200 : 2000;
    if (left > window || !c->host_cache[0])
        return;
    int64_t *last = &last_hint[hc_hash(aa) % 64];
    int64_t was = __atomic_load_n(last, __ATOMIC_RELAXED);
    if (now - was < 1000 || !__atomic_compare_exchange_n(last, &was, now, 0, __ATOMIC_RELAXED,
                                                         __ATOMIC_RELAXED))
        return;
    uid_t owner;
    const struct hc_file *f = hc_map(c, &owner);
    struct hc_slot s;
    struct resolution fresh;
    /* Someone may have refreshed it already: take the newer answer. */
    if (f && file_lookup(f, aa, &s, now) && acceptable(c, f, &s, aa, &fresh) &&
        fresh.expires > r->expires + 1000) {
        cache_complete(aa, &fresh);
        return;
    }
    if (f && hc_ask(c, owner, aa, REQ_REFRESH, now) >= 0)
        LOGD("host cache: refresh asked for an entry in use");
}

/* ---- the daemon's side: the only writer --------------------------------------------------- */

struct hc_writer {
    struct hc_file *f;
    int fd;
    pthread_mutex_t lock;
    char dir[128];
};

static void slot_write(struct hc_slot *s, const struct hc_slot *v)
{
    uint32_t seq = s->seq;
    __atomic_store_n(&s->seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    struct hc_slot copy = *v;
    copy.seq = seq + 1;
    memcpy((uint8_t *)s + sizeof s->seq, (uint8_t *)&copy + sizeof copy.seq,
           sizeof copy - sizeof copy.seq);
    __atomic_store_n(&s->seq, seq + 2, __ATOMIC_RELEASE);
}

static void store(struct hc_writer *w, const struct ipaddr *aa, const struct resolution *r,
                  const uint8_t keyfp[8])
{
    pthread_mutex_lock(&w->lock);
    int64_t now = now_ms();
    unsigned h = hc_hash(aa);
    struct hc_slot *target = NULL, *victim = NULL;
    for (int i = 0; i < HC_RUN && !target; i++) {
        struct hc_slot *s = &w->f->slot[(h + (unsigned)i) & (HC_SLOTS - 1)];
        if (slot_is(s, aa))
            target = s;
    }
    for (int i = 0; i < HC_RUN && !target; i++) {
        struct hc_slot *s = &w->f->slot[(h + (unsigned)i) & (HC_SLOTS - 1)];
        if (s->state == RES_NONE || s->expires_ms <= now)
            target = s;
        else if (!victim || s->expires_ms < victim->expires_ms)
            victim = s;
    }
    if (!target)
        target = victim;
    struct hc_slot v = {0};
    v.state = (uint8_t)r->state;
    v.how = (uint8_t)r->how;
    v.verified = (uint8_t)r->verified;
    v.af = aa->af == AF_INET ? 4 : 6;
    memcpy(v.aa, aa->b, 16);
    if (r->state == RES_POSITIVE)
        memcpy(v.ua, r->ua.b, 16);
    v.ttl = r->ttl;
    v.probes = slot_is(target, aa) ? target->probes + 1 : 1;
    v.learned_ms = now;
    v.expires_ms = now + (int64_t)r->ttl * 1000;
    if (r->verified == VERIFIED_TAG)
        memcpy(v.keyfp, keyfp, 8);
    slot_write(target, &v);
    pthread_mutex_unlock(&w->lock);
}

void *hostcache_open_writer(const char *dir, char *err, size_t errlen)
{
    const struct aarp_config *c = config_get();
    char path[256];
    if (strlen(dir) > 100 || path_in(dir, "cache", path, sizeof path) != 0) {
        snprintf(err, errlen, "%s: directory name too long", dir);
        return NULL;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create: %s", dir, strerror(errno));
        return NULL;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen, "%s: another daemon serves this host cache", path);
        real.close(fd);
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
        fchmod(fd, 0644) != 0 || ftruncate(fd, sizeof(struct hc_file)) != 0) {
        snprintf(err, errlen, "%s: not a regular file of ours, or cannot be sized: %s", path,
                 strerror(errno));
        real.close(fd);
        return NULL;
    }
    void *m = mmap(NULL, sizeof(struct hc_file), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    struct hc_writer *w = m == MAP_FAILED ? NULL : calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "%s: cannot map: %s", path, strerror(errno));
        if (m != MAP_FAILED)
            munmap(m, sizeof(struct hc_file));
        real.close(fd);
        return NULL;
    }
    w->f = m;
    w->fd = fd;
    pthread_mutex_init(&w->lock, NULL);
    snprintf(w->dir, sizeof w->dir, "%s", dir);
    struct hc_header *h = &w->f->h;
    uint8_t fp[8];
    key_fingerprint(c, fp);
    uint64_t ns = netns_id();
    /* The entries of a previous daemon survive its restart when nothing that shaped them
     * changed; otherwise they are dropped. */
    int keep = memcmp(h->magic, HC_MAGIC, 8) == 0 && h->version == 1 && h->slots == HC_SLOTS &&
               h->slot_size == sizeof(struct hc_slot) && h->netns == ns &&
               (int)h->port == c->port && h->policy == c->policy && !memcmp(h->keyfp, fp, 8);
    if (!keep) {
        memset(w->f->slot, 0, sizeof w->f->slot);
        memset(h, 0, sizeof *h);
        h->version = 1;
        h->slots = HC_SLOTS;
        h->slot_size = sizeof(struct hc_slot);
        memcpy(h->keyfp, fp, 8);
        h->netns = ns;
        h->port = (uint32_t)c->port;
        h->policy = c->policy;
    }
    h->pid = getpid();
    h->started_ms = now_ms();
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(h->magic, HC_MAGIC, 8);
    return w;
}

int hostcache_probe_store(void *handle, const struct ipaddr *aa, struct resolution *r)
{
    struct hc_writer *w = handle;
    const struct aarp_config *c = config_get();
    if (probe_resolve(c, aa, r) != 0)
        return -1;
    uint8_t fp[8];
    key_fingerprint(c, fp);
    store(w, aa, r, fp);
    __atomic_add_fetch(&w->f->h.probes, 1, __ATOMIC_RELAXED);
    return 0;
}

int hostcache_writer_lookup(void *handle, const struct ipaddr *aa, struct resolution *r)
{
    struct hc_writer *w = handle;
    struct hc_slot s;
    if (!file_lookup(w->f, aa, &s, now_ms()))
        return 0;
    memset(r, 0, sizeof *r);
    r->state = s.state;
    r->how = s.how;
    r->verified = s.verified;
    r->ua.af = aa->af;
    memcpy(r->ua.b, s.ua, 16);
    r->ttl = s.ttl;
    r->expires = s.expires_ms;
    return 1;
}

void hostcache_count(void *handle, int which)
{
    struct hc_header *h = &((struct hc_writer *)handle)->f->h;
    uint64_t *ctr = which == 0 ? &h->requests : which == 1 ? &h->refreshes : &h->refused;
    __atomic_add_fetch(ctr, 1, __ATOMIC_RELAXED);
}

void hostcache_close_writer(void *handle)
{
    struct hc_writer *w = handle;
    if (!w)
        return;
    munmap(w->f, sizeof(struct hc_file));
    real.close(w->fd);
    free(w);
}

/* ---- reading it whole (aarp-resolve --cache) ---------------------------------------------- */

int hostcache_snapshot(const char *dir, struct hostcache_info *info, struct ipaddr *aa,
                       struct resolution *r, uint32_t *probes, int max, char *err,
                       size_t errlen)
{
    char path[256];
    if (path_in(dir, "cache", path, sizeof path) != 0) {
        snprintf(err, errlen, "%s: directory name too long", dir);
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        st.st_size < (off_t)sizeof(struct hc_file)) {
        snprintf(err, errlen, "%s: %s", path, fd < 0 ? strerror(errno) : "not a host cache");
        if (fd >= 0)
            real.close(fd);
        return -1;
    }
    void *m = mmap(NULL, sizeof(struct hc_file), PROT_READ, MAP_SHARED, fd, 0);
    real.close(fd);
    if (m == MAP_FAILED) {
        snprintf(err, errlen, "%s: cannot map: %s", path, strerror(errno));
        return -1;
    }
    const struct hc_file *f = m;
    if (memcmp(f->h.magic, HC_MAGIC, 8) != 0 || f->h.version != 1 || f->h.slots != HC_SLOTS) {
        munmap(m, sizeof(struct hc_file));
        snprintf(err, errlen, "%s: not a host cache of this version", path);
        return -1;
    }
    info->owner = st.st_uid;
    info->mode = st.st_mode & 07777;
    info->pid = f->h.pid;
    info->port = (int)f->h.port;
    info->policy = f->h.policy;
    info->same_netns = !f->h.netns || f->h.netns == netns_id();
    info->requests = f->h.requests;
    info->probes = f->h.probes;
    info->refreshes = f->h.refreshes;
    info->refused = f->h.refused;
    info->slots = HC_SLOTS;
    int64_t now = now_ms();
    info->uptime_ms = now - f->h.started_ms;
    int n = 0;
    for (int i = 0; i < HC_SLOTS && n < max; i++) {
        struct hc_slot s;
        if (!slot_read(&f->slot[i], &s) || s.state == RES_NONE || s.expires_ms <= now)
            continue;
        memset(&aa[n], 0, sizeof aa[n]);
        aa[n].af = s.af == 4 ? AF_INET : AF_INET6;
        memcpy(aa[n].b, s.aa, 16);
        memset(&r[n], 0, sizeof r[n]);
        r[n].state = s.state;
        r[n].how = s.how;
        r[n].verified = s.verified;
        r[n].ua.af = aa[n].af;
        memcpy(r[n].ua.b, s.ua, 16);
        r[n].ttl = s.ttl;
        r[n].expires = s.expires_ms;
        probes[n] = s.probes;
        n++;
    }
    munmap(m, sizeof(struct hc_file));
    return n;
}

void hostcache_fork_child(void)
{
    pthread_mutex_init(&view_lock, NULL);
}
