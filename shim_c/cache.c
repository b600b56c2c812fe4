/* The process-wide answer cache: fixed-size open addressing (no allocation, so nothing can
 * leak or fail), one mutex, and "pending" entries so concurrent connects to the same AA wait
 * for one probe instead of sending many. Fork safety: the lock is taken around fork() and the
 * child forgets probes that only its parent's threads could finish. */
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define SLOTS 1024 /* power of two */
#define PROBE_RUN 16

struct slot {
    struct ipaddr aa;
    int state; /* RES_NONE, RES_PENDING, RES_POSITIVE, RES_NEGATIVE, RES_FAILED */
    struct resolution r;
};

static struct slot slots[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done;
static pthread_once_t cond_once = PTHREAD_ONCE_INIT;

static void cond_init(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&done, &attr);
    pthread_condattr_destroy(&attr);
}

static unsigned hash(const struct ipaddr *a)
{
    uint32_t h = 2166136261u ^ (uint32_t)a->af;
    for (int i = 0; i < ip_len(a); i++)
        h = (h ^ a->b[i]) * 16777619u;
    return h ^ (h >> 15);
}

static int live(const struct slot *s, int64_t now)
{
    return s->state == RES_PENDING || (s->state != RES_NONE && s->r.expires > now);
}

/* The slot holding `aa`, or NULL. */
static struct slot *find(const struct ipaddr *aa, int64_t now)
{
    unsigned h = hash(aa);
    for (int i = 0; i < PROBE_RUN; i++) {
        struct slot *s = &slots[(h + (unsigned)i) & (SLOTS - 1)];
        if (s->state != RES_NONE && ip_equal(&s->aa, aa))
            return live(s, now) ? s : NULL;
    }
    return NULL;
}

/* A slot for `aa`: its own, a free or expired one, else the entry closest to expiry. */
static struct slot *place(const struct ipaddr *aa, int64_t now)
{
    unsigned h = hash(aa);
    struct slot *victim = NULL;
    for (int i = 0; i < PROBE_RUN; i++) {
        struct slot *s = &slots[(h + (unsigned)i) & (SLOTS - 1)];
        if (s->state != RES_NONE && ip_equal(&s->aa, aa))
            return s;
    }
    for (int i = 0; i < PROBE_RUN; i++) {
        struct slot *s = &slots[(h + (unsigned)i) & (SLOTS - 1)];
        if (!live(s, now))
            return s;
        if (s->state != RES_PENDING && (!victim || s->r.expires < victim->r.expires))
            victim = s;
    }
    return victim;
}

static void ms_to_abs(int64_t ms, struct timespec *ts)
{
    ts->tv_sec = ms / 1000;
    ts->tv_nsec = (long)(ms % 1000) * 1000000L;
}

int cache_acquire(const struct ipaddr *aa, struct resolution *out, int64_t wait_until)
{
    pthread_once(&cond_once, cond_init);
    pthread_mutex_lock(&lock);
    for (;;) {
        int64_t now = now_ms();
        struct slot *s = find(aa, now);
        if (s && s->state != RES_PENDING) {
            *out = s->r;
            pthread_mutex_unlock(&lock);
            return CACHE_HIT;
        }
        if (!s) {
            s = place(aa, now);
            if (s) {
                s->aa = *aa;
                s->state = RES_PENDING;
                memset(&s->r, 0, sizeof s->r);
            }
            pthread_mutex_unlock(&lock);
            return CACHE_CLAIMED;
        }
        if (now >= wait_until) {
            pthread_mutex_unlock(&lock);
            return CACHE_TIMEOUT;
        }
        struct timespec ts;
        ms_to_abs(wait_until, &ts);
        pthread_cond_timedwait(&done, &lock, &ts);
    }
}

void cache_complete(const struct ipaddr *aa, const struct resolution *r)
{
    pthread_once(&cond_once, cond_init);
    pthread_mutex_lock(&lock);
    int64_t now = now_ms();
    struct slot *s = place(aa, now);
    if (s) {
        s->aa = *aa;
        if (r->expires > now) {
            s->state = r->state;
            s->r = *r;
        } else {
            s->state = RES_NONE; /* ttl 0: use once, keep nothing */
        }
    }
    pthread_cond_broadcast(&done);
    pthread_mutex_unlock(&lock);
}

void cache_abandon(const struct ipaddr *aa)
{
    pthread_once(&cond_once, cond_init);
    pthread_mutex_lock(&lock);
    struct slot *s = find(aa, now_ms());
    if (s && s->state == RES_PENDING)
        s->state = RES_NONE;
    pthread_cond_broadcast(&done);
    pthread_mutex_unlock(&lock);
}

void cache_flush(void)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].state != RES_PENDING)
            slots[i].state = RES_NONE;
    pthread_mutex_unlock(&lock);
}

int cache_snapshot(struct ipaddr *aa, struct resolution *r, int max)
{
    int n = 0;
    pthread_mutex_lock(&lock);
    int64_t now = now_ms();
    for (int i = 0; i < SLOTS && n < max; i++) {
        struct slot *s = &slots[i];
        if (s->state == RES_NONE || s->state == RES_PENDING || s->r.expires <= now)
            continue;
        aa[n] = s->aa;
        r[n] = s->r;
        n++;
    }
    pthread_mutex_unlock(&lock);
    return n;
}

void cache_fork_prepare(void)
{
    pthread_once(&cond_once, cond_init);
    pthread_mutex_lock(&lock);
}

void cache_fork_parent(void)
{
    pthread_mutex_unlock(&lock);
}

void cache_fork_child(void)
{
    /* The threads probing in the parent do not exist here: their entries would never end. */
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].state == RES_PENDING)
            slots[i].state = RES_NONE;
    pthread_mutex_init(&lock, NULL);
    cond_init();
}
