/* What a hooked call uses for an anycast destination: the process cache first, then the
 * host cache (a daemon that probes once for every process of the host), then a probe of our
 * own. One probe per AA at a time; the others wait for it, but never longer than the caller
 * may wait: a blocking socket the whole probe, a non-blocking one nonblock_wait_ms. A
 * non-blocking caller whose answer is late goes to AA unchanged while the probe goes on in
 * the background (or in the daemon), so the next connection is pinned. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_BACKGROUND 16 /* probe threads at once; beyond that, a late caller fails open */

static int background_running;

struct background {
    const struct aarp_config *c; /* configs are never freed */
    struct ipaddr aa;
};

static void *background_probe(void *arg)
{
    struct background *b = arg;
    aarp_busy = 1;
    struct resolution r;
    if (probe_resolve(b->c, &b->aa, &r) != 0)
        cache_abandon(&b->aa);
    else
        cache_complete(&b->aa, &r);
    free(b);
    __atomic_sub_fetch(&background_running, 1, __ATOMIC_RELAXED);
    return NULL;
}

/* Hand the claimed probe of `aa` to a thread of its own; 0, or -1 if none can be had. */
static int probe_in_background(const struct aarp_config *c, const struct ipaddr *aa)
{
    if (__atomic_add_fetch(&background_running, 1, __ATOMIC_RELAXED) > MAX_BACKGROUND) {
        __atomic_sub_fetch(&background_running, 1, __ATOMIC_RELAXED);
        return -1;
    }
    struct background *b = malloc(sizeof *b);
    pthread_attr_t attr;
    int ok = b && pthread_attr_init(&attr) == 0;
    if (ok) {
        b->c = c;
        b->aa = *aa;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        /* The program's signals are for the program's threads, not for ours. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_t tid;
        ok = pthread_create(&tid, &attr, background_probe, b) == 0;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
    }
    if (!ok) {
        free(b);
        __atomic_sub_fetch(&background_running, 1, __ATOMIC_RELAXED);
        return -1;
    }
    return 0;
}

int call_is_nonblocking(int fd, int flags)
{
    if (flags & MSG_DONTWAIT)
        return 1;
    if (fd < 0)
        return 0;
    int fl = fcntl(fd, F_GETFL);
    return fl >= 0 && (fl & O_NONBLOCK);
}

static int fail_open(struct resolution *r)
{
    memset(r, 0, sizeof *r);
    r->state = RES_FAILED;
    return 0;
}

int resolve_address(const struct aarp_config *c, const struct ipaddr *aa, struct resolution *r,
                    int *cached, int fd, int flags)
{
    *cached = 0;
    int rc = cache_acquire(aa, r, 0);
    if (rc == CACHE_HIT) {
        *cached = r->from_host ? CACHED_HOST : CACHED_PROCESS;
        if (r->from_host)
            hostcache_maybe_refresh(c, aa, r);
        return r->state == RES_POSITIVE;
    }
    int nonblocking = call_is_nonblocking(fd, flags);
    /* The longest a probe can take, plus slack: a waiter never waits longer. */
    int64_t limit = nonblocking ? c->nonblock_wait_ms
                                : (int64_t)c->timeout_ms * (c->retries + 1) + 50;
    int64_t deadline = now_ms() + limit;
    if (rc == CACHE_TIMEOUT) { /* another thread probes: wait for it, within our bound */
        rc = cache_acquire(aa, r, deadline);
        if (rc == CACHE_HIT) {
            *cached = r->from_host ? CACHED_HOST : CACHED_PROCESS;
            return r->state == RES_POSITIVE;
        }
        if (rc == CACHE_TIMEOUT) {
            *cached = CACHED_LATE;
            return fail_open(r);
        }
    }
    /* Claimed: ours to find out. */
    int host = hostcache_resolve(c, aa, r, deadline);
    if (host == HOST_FOUND) {
        cache_complete(aa, r);
        hostcache_maybe_refresh(c, aa, r);
        *cached = CACHED_HOST;
        return r->state == RES_POSITIVE;
    }
    if (host == HOST_LATE) { /* the daemon probes; later calls find its answer */
        cache_abandon(aa);
        *cached = CACHED_LATE;
        return fail_open(r);
    }
    if (nonblocking) {
        if (probe_in_background(c, aa) != 0) {
            cache_abandon(aa);
            *cached = CACHED_LATE;
            return fail_open(r);
        }
        rc = cache_acquire(aa, r, deadline);
        if (rc == CACHE_HIT)
            return r->state == RES_POSITIVE; /* answered within the bound: a probe, not cached */
        if (rc == CACHE_CLAIMED) /* the answer came and was not to be kept (ttl 0) */
            cache_abandon(aa);
        *cached = CACHED_LATE;
        return fail_open(r);
    }
    if (probe_resolve(c, aa, r) != 0) {
        cache_abandon(aa); /* interrupted: nobody's fault, nothing to remember */
        return 0;
    }
    cache_complete(aa, r);
    return r->state == RES_POSITIVE;
}
