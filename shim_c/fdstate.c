/* Per-socket memory of "this fd talked to AA through UA", used to show AA again where the
 * kernel reports UA (recvfrom/recvmsg/recvmmsg sources, getpeername) and to keep a datagram
 * socket on one server. Lock-free reads for the common case of sockets we never touched:
 * one counter says whether any state exists at all, one flag per slot whether this fd has. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

#define CHUNK 1024
#define CHUNKS 1024 /* fds below 1M are tracked; higher ones simply get no mapping back */
#define PAIRS 4

struct pair {
    struct ipaddr aa, ua;
};

struct fdslot {
    int used;
    int n;
    int next; /* round-robin replacement */
    struct pair pairs[PAIRS];
};

static struct fdslot *chunks[CHUNKS];
static int n_used;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* A signal handler may close() or recv() while its thread holds the lock: it then skips the
 * bookkeeping (at worst one mapping is missed) instead of deadlocking. */
static __thread int holding __attribute__((tls_model("initial-exec")));

static int enter(void)
{
    if (holding)
        return 0;
    holding = 1;
    pthread_mutex_lock(&lock);
    return 1;
}

static void leave(void)
{
    pthread_mutex_unlock(&lock);
    holding = 0;
}

int fdstate_any(void)
{
    return __atomic_load_n(&n_used, __ATOMIC_RELAXED) != 0;
}

static struct fdslot *slot_of(int fd, int create)
{
    if (fd < 0 || fd >= CHUNK * CHUNKS)
        return NULL;
    struct fdslot *c = __atomic_load_n(&chunks[fd / CHUNK], __ATOMIC_ACQUIRE);
    if (!c && create) {
        /* mmap, not malloc: never touches the host's allocator from inside a socket call. */
        void *m = mmap(NULL, sizeof(struct fdslot) * CHUNK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            return NULL;
        c = m;
        __atomic_store_n(&chunks[fd / CHUNK], c, __ATOMIC_RELEASE);
    }
    return c ? &c[fd % CHUNK] : NULL;
}

static void clear_locked(struct fdslot *s)
{
    if (s && s->used) {
        __atomic_store_n(&s->used, 0, __ATOMIC_RELAXED);
        s->n = 0;
        __atomic_sub_fetch(&n_used, 1, __ATOMIC_RELAXED);
    }
}

void fdstate_remember(int fd, const struct ipaddr *aa, const struct ipaddr *ua)
{
    if (!enter())
        return;
    struct fdslot *s = slot_of(fd, 1);
    if (s) {
        if (!s->used) {
            __atomic_store_n(&s->used, 1, __ATOMIC_RELAXED);
            s->n = 0;
            s->next = 0;
            __atomic_add_fetch(&n_used, 1, __ATOMIC_RELAXED);
        }
        int i;
        for (i = 0; i < s->n; i++)
            if (ip_equal(&s->pairs[i].aa, aa))
                break;
        if (i == s->n) {
            if (s->n < PAIRS)
                s->n++;
            else
                i = s->next++ % PAIRS;
        }
        s->pairs[i].aa = *aa;
        s->pairs[i].ua = *ua;
    }
    leave();
}

/* The UA this socket already uses for `aa` (keeps a datagram flow on one server). */
int fdstate_pinned(int fd, const struct ipaddr *aa, struct ipaddr *ua)
{
    if (!fdstate_any())
        return 0;
    int found = 0;
    if (!enter())
        return 0;
    struct fdslot *s = slot_of(fd, 0);
    if (s && s->used)
        for (int i = 0; i < s->n; i++)
            if (ip_equal(&s->pairs[i].aa, aa)) {
                *ua = s->pairs[i].ua;
                found = 1;
                break;
            }
    leave();
    return found;
}

/* The AA this socket reached through `ua`, if any. */
int fdstate_unmap(int fd, const struct ipaddr *ua, struct ipaddr *aa)
{
    if (!fdstate_any())
        return 0;
    struct fdslot *s = slot_of(fd, 0);
    if (!s || !__atomic_load_n(&s->used, __ATOMIC_RELAXED))
        return 0;
    int found = 0;
    if (!enter())
        return 0;
    if (s->used)
        for (int i = 0; i < s->n; i++)
            if (ip_equal(&s->pairs[i].ua, ua)) {
                *aa = s->pairs[i].aa;
                found = 1;
                break;
            }
    leave();
    return found;
}

void fdstate_forget(int fd)
{
    if (!fdstate_any())
        return;
    struct fdslot *s = slot_of(fd, 0);
    if (!s || !__atomic_load_n(&s->used, __ATOMIC_RELAXED))
        return;
    if (!enter())
        return;
    clear_locked(s);
    leave();
}

void fdstate_forget_range(unsigned int first, unsigned int last)
{
    if (!fdstate_any() || !enter())
        return;
    for (int c = (int)(first / CHUNK); c < CHUNKS && (unsigned)c * CHUNK <= last; c++) {
        struct fdslot *chunk = chunks[c];
        if (!chunk)
            continue;
        for (int i = 0; i < CHUNK; i++) {
            unsigned fd = (unsigned)c * CHUNK + (unsigned)i;
            if (fd >= first && fd <= last)
                clear_locked(&chunk[i]);
        }
    }
    leave();
}

/* dup2/dup3: `to` now names the same socket as `from`. */
void fdstate_copy(int from, int to)
{
    if (!fdstate_any() || !enter())
        return;
    struct fdslot *src = slot_of(from, 0);
    struct fdslot *dst = slot_of(to, 0);
    clear_locked(dst);
    if (src && src->used) {
        dst = slot_of(to, 1);
        if (dst) {
            *dst = *src;
            __atomic_add_fetch(&n_used, 1, __ATOMIC_RELAXED);
        }
    }
    leave();
}

/* What socket() told us about each descriptor (KIND_*), so a connect need not ask the kernel:
 * a getsockopt is most of what a cached pin would otherwise cost. Descriptors from elsewhere
 * (accept, inherited, above the table) are KIND_UNKNOWN and get asked. */
#define KINDS 65536
static uint8_t kinds[KINDS];

void fdkind_set(int fd, int kind)
{
    if (fd >= 0 && fd < KINDS)
        __atomic_store_n(&kinds[fd], (uint8_t)kind, __ATOMIC_RELAXED);
}

int fdkind_get(int fd)
{
    return fd >= 0 && fd < KINDS ? __atomic_load_n(&kinds[fd], __ATOMIC_RELAXED) : KIND_UNKNOWN;
}

void fdkind_clear_range(unsigned int first, unsigned int last)
{
    if (first >= KINDS)
        return;
    unsigned int end = last >= KINDS ? KINDS - 1 : last;
    if (end >= first)
        memset(kinds + first, 0, end - first + 1);
}

void fdstate_fork_prepare(void)
{
    pthread_mutex_lock(&lock);
}

void fdstate_fork_parent(void)
{
    pthread_mutex_unlock(&lock);
}

void fdstate_fork_child(void)
{
    pthread_mutex_init(&lock, NULL);
}
