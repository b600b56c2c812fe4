/* The hooks: the socket calls a preloaded libaarp.so stands in front of.
 *
 * Outbound calls (connect, sendto, sendmsg, sendmmsg) to an address inside the configured
 * anycast prefixes go to the unicast address of the server that answers it; inbound calls
 * (recvfrom, recvmsg, recvmmsg, getpeername) on sockets that did so show AA again where the
 * kernel reports UA. Everything else goes straight to libc: the cost for other destinations is
 * a sockaddr check and a short prefix scan. On any trouble the caller's own address is used
 * (fail open), and errno is always what libc left. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aarp.h"
#include "internal.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

__thread int aarp_busy __attribute__((tls_model("initial-exec")));

static void fork_prepare(void)
{
    cache_fork_prepare();
    fdstate_fork_prepare();
    ownfd_fork_prepare();
}

static void fork_parent(void)
{
    ownfd_fork_parent();
    fdstate_fork_parent();
    cache_fork_parent();
}

static void fork_child(void)
{
    ownfd_fork_child();
    fdstate_fork_child();
    cache_fork_child();
    hostcache_fork_child();
}

__attribute__((constructor)) static void aarp_init(void)
{
    int saved = errno;
    real_init();
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    errno = saved;
}

/* TCP, SCTP, MPTCP, UDP and UDP-Lite sockets are pinned; ICMP ping sockets, raw sockets
 * (ping AA must stay ping AA) and everything else are not. */
int pinnable_kind(int type, int proto)
{
    type &= 0xf; /* without SOCK_NONBLOCK / SOCK_CLOEXEC */
    if (type == SOCK_STREAM || type == SOCK_SEQPACKET)
        return proto == 0 || proto == IPPROTO_TCP || proto == IPPROTO_SCTP || proto == 262;
    if (type == SOCK_DGRAM)
        return proto == 0 || proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE;
    return 0;
}

static int pinnable_socket(int fd)
{
    int kind = fdkind_get(fd);
    if (kind != KIND_UNKNOWN)
        return kind == KIND_PINNABLE;
    int type = 0, proto = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
        return 0;
    len = sizeof proto;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) != 0)
        return 0;
    kind = pinnable_kind(type, proto) ? KIND_PINNABLE : KIND_OTHER;
    fdkind_set(fd, kind);
    return kind == KIND_PINNABLE;
}

static const char *how_text(const struct resolution *r, int cached, int pinned)
{
    if (pinned)
        return "this socket's server";
    if (cached == CACHED_HOST)
        return "host cache";
    if (cached)
        return "cache hit";
    switch (r->how) {
    case HOW_ICMP_SOURCE: return "probe: ICMP source";
    case HOW_ICMP_ANSWER: return "probe: ICMP answer";
    case HOW_UDP_ANSWER: return "probe: UDP answer";
    }
    return "probe";
}

/* The address to use instead of `sa`: 1 with `out` filled, or 0 to use `sa` unchanged.
 * `connecting` makes a non-anycast destination drop what this fd remembered. */
static int pin(int fd, const struct sockaddr *sa, socklen_t len, struct sockaddr_storage *out,
               const char *call, int connecting, int flags)
{
    struct sockaddr_view v;
    if (aarp_busy || sockaddr_read(sa, len, &v) != 0)
        return 0;
    const struct aarp_config *c = config_get();
    if (c->disabled || !c->n_anycast)
        return 0;
    if (!config_is_anycast(c, &v.ip)) {
        if (connecting)
            fdstate_forget(fd);
        if (aarp_log_level >= LOG_DEBUG) {
            char text[64];
            ip_format(&v.ip, text, sizeof text);
            aarp_logf(LOG_DEBUG, "%s fd %d: %s is outside the anycast prefixes: unchanged",
                      call, fd, text);
        }
        return 0;
    }
    aarp_busy = 1;
    int done = 0;
    char aa_text[64] = "", ua_text[64] = "";
    if (aarp_log_level >= LOG_DEBUG)
        ip_format(&v.ip, aa_text, sizeof aa_text);
    struct resolution r = {0};
    int cached = 0, pinned = 0;
    if (fdstate_pinned(fd, &v.ip, &r.ua)) {
        pinned = 1;
    } else if (!pinnable_socket(fd)) {
        LOGD("%s fd %d: %s: not a TCP/UDP socket: unchanged", call, fd, aa_text);
        goto out;
    } else if (!resolve_address(c, &v.ip, &r, &cached, fd, flags)) {
        /* Late for a non-blocking call: this socket stays with AA, so a connect() called
         * again while the handshake runs, or the next datagram, does not wait again. */
        if (cached == CACHED_LATE)
            fdstate_remember(fd, &v.ip, &v.ip);
        LOGD("%s fd %d: %s: %s: unchanged", call, fd, aa_text,
             cached == CACHED_LATE ? "non-blocking, no answer within nonblock_wait_ms "
                                     "(the probe goes on)"
             : r.state == RES_NEGATIVE ? (cached ? "cached: does not resolve" : "does not resolve")
                                       : (cached ? "cached failure (fail open)"
                                                 : "no answer (fail open)"));
        goto out;
    }
    if (sockaddr_rewrite(sa, len, &r.ua, out) != 0) {
        LOGD("%s fd %d: %s: answer of another family: unchanged", call, fd, aa_text);
        goto out;
    }
    fdstate_remember(fd, &v.ip, &r.ua);
    if (aarp_log_level >= LOG_DEBUG) {
        ip_format(&r.ua, ua_text, sizeof ua_text);
        aarp_logf(LOG_DEBUG, "%s fd %d: %s -> %s (%s)", call, fd, aa_text, ua_text,
                  how_text(&r, cached, pinned));
    }
    done = 1;
out:
    aarp_busy = 0;
    return done;
}

/* Show AA where the kernel wrote UA: `sa` holds `actual` bytes of a `cap`-byte buffer. */
static void unmap(int fd, struct sockaddr *sa, socklen_t cap, socklen_t actual)
{
    if (!sa || actual > cap || !fdstate_any())
        return; /* a truncated address cannot be read back */
    struct sockaddr_view v;
    struct ipaddr aa;
    struct sockaddr_storage out;
    if (sockaddr_read(sa, actual, &v) != 0 || !fdstate_unmap(fd, &v.ip, &aa))
        return;
    if (sockaddr_rewrite(sa, actual, &aa, &out) == 0)
        memcpy(sa, &out, actual);
}

/* Only remembers what kind of socket a descriptor is; see pinnable_socket(). */
AARP_API int socket(int domain, int type, int proto)
{
    real_init();
    int fd = real.socket(domain, type, proto);
    if (fd >= 0)
        fdkind_set(fd, (domain == AF_INET || domain == AF_INET6) && pinnable_kind(type, proto)
                           ? KIND_PINNABLE : KIND_OTHER);
    return fd;
}

AARP_API int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
    real_init();
    int saved = errno;
    struct sockaddr_storage alt;
    if (pin(fd, sa, len, &alt, "connect", 1, 0)) {
        errno = saved;
        return real.connect(fd, (struct sockaddr *)&alt, len);
    }
    errno = saved;
    return real.connect(fd, sa, len);
}

AARP_API ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa,
                        socklen_t len)
{
    real_init();
    if (sa) {
        int saved = errno;
        struct sockaddr_storage alt;
        if (pin(fd, sa, len, &alt, "sendto", 0, flags)) {
            errno = saved;
            return real.sendto(fd, buf, n, flags, (struct sockaddr *)&alt, len);
        }
        errno = saved;
    }
    return real.sendto(fd, buf, n, flags, sa, len);
}

AARP_API ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    real_init();
    if (msg && msg->msg_name) {
        int saved = errno;
        struct sockaddr_storage alt;
        if (pin(fd, msg->msg_name, msg->msg_namelen, &alt, "sendmsg", 0, flags)) {
            struct msghdr copy = *msg;
            copy.msg_name = &alt;
            errno = saved;
            return real.sendmsg(fd, &copy, flags);
        }
        errno = saved;
    }
    return real.sendmsg(fd, msg, flags);
}

AARP_API int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
    real_init();
    if (!vec || !vlen)
        return real.sendmmsg(fd, vec, vlen, flags);
    int saved = errno;
    unsigned int n = vlen > 1024 ? 1024 : vlen; /* the kernel sends at most UIO_MAXIOV */
    struct mmsghdr *copy = NULL;
    struct sockaddr_storage *alts = NULL, one;
    for (unsigned int i = 0; i < n; i++) {
        struct msghdr *m = &vec[i].msg_hdr;
        if (!m->msg_name || !pin(fd, m->msg_name, m->msg_namelen, &one, "sendmmsg", 0, flags))
            continue;
        if (!copy) {
            copy = malloc(sizeof *copy * n);
            alts = malloc(sizeof *alts * n);
            if (!copy || !alts) { /* fail open: send as asked */
                free(copy);
                free(alts);
                errno = saved;
                return real.sendmmsg(fd, vec, vlen, flags);
            }
            memcpy(copy, vec, sizeof *copy * n);
        }
        alts[i] = one;
        copy[i].msg_hdr.msg_name = &alts[i];
    }
    errno = saved;
    if (!copy)
        return real.sendmmsg(fd, vec, vlen, flags);
    int sent = real.sendmmsg(fd, copy, n, flags);
    saved = errno;
    for (int i = 0; i < sent; i++)
        vec[i].msg_len = copy[i].msg_len;
    free(copy);
    free(alts);
    errno = saved;
    return sent;
}

AARP_API ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *sa,
                          socklen_t *len)
{
    real_init();
    socklen_t cap = sa && len ? *len : 0;
    ssize_t got = real.recvfrom(fd, buf, n, flags, sa, len);
    if (got >= 0 && sa && len && fdstate_any()) {
        int saved = errno;
        unmap(fd, sa, cap, *len);
        errno = saved;
    }
    return got;
}

AARP_API ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    real_init();
    socklen_t cap = msg && msg->msg_name ? msg->msg_namelen : 0;
    ssize_t got = real.recvmsg(fd, msg, flags);
    if (got >= 0 && msg && msg->msg_name && fdstate_any()) {
        int saved = errno;
        unmap(fd, msg->msg_name, cap, msg->msg_namelen);
        errno = saved;
    }
    return got;
}

AARP_API int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags,
                      struct timespec *timeout)
{
    real_init();
    if (!vec || !vlen || !fdstate_any())
        return real.recvmmsg(fd, vec, vlen, flags, timeout);
    unsigned int n = vlen > 1024 ? 1024 : vlen;
    socklen_t caps[64];
    socklen_t *cap = n <= 64 ? caps : malloc(sizeof *cap * n);
    if (!cap)
        return real.recvmmsg(fd, vec, vlen, flags, timeout);
    for (unsigned int i = 0; i < n; i++)
        cap[i] = vec[i].msg_hdr.msg_name ? vec[i].msg_hdr.msg_namelen : 0;
    int got = real.recvmmsg(fd, vec, vlen, flags, timeout);
    int saved = errno;
    for (int i = 0; i < got && (unsigned)i < n; i++)
        if (vec[i].msg_hdr.msg_name)
            unmap(fd, vec[i].msg_hdr.msg_name, cap[i], vec[i].msg_hdr.msg_namelen);
    if (cap != caps)
        free(cap);
    errno = saved;
    return got;
}

AARP_API int getpeername(int fd, struct sockaddr *sa, socklen_t *len)
{
    real_init();
    socklen_t cap = sa && len ? *len : 0;
    int rc = real.getpeername(fd, sa, len);
    if (rc == 0 && sa && len && fdstate_any()) {
        int saved = errno;
        unmap(fd, sa, cap, *len);
        errno = saved;
    }
    return rc;
}

/* The library's own descriptors are not the program's to close: close() of one fails with
 * EBADF as if it were not open, close_range()/closefrom() close everything around them. */
AARP_API int close(int fd)
{
    real_init();
    if (ownfd_any() && ownfd_has(fd)) {
        errno = EBADF;
        return -1;
    }
    fdkind_set(fd, KIND_UNKNOWN);
    if (fdstate_any()) {
        int saved = errno;
        fdstate_forget(fd);
        errno = saved;
    }
    return real.close(fd);
}

/* close_range over [first, last] without our descriptors (lock held); the first error. */
static int close_range_around(unsigned first, unsigned last, int flags)
{
    int mine[256];
    int n = ownfd_in_range_locked(first, last, mine);
    int rc = 0, err = 0;
    unsigned long long from = first;
    for (int i = 0; i <= n; i++) {
        /* one past the segment: the next of ours, or past `last` */
        unsigned long long to = i < n ? (unsigned long long)mine[i] : last + 1ULL;
        if (to > from &&
            real.close_range((unsigned)from, (unsigned)(to - 1), flags) != 0 && !rc) {
            rc = -1;
            err = errno;
        }
        if (i < n)
            from = (unsigned long long)mine[i] + 1;
    }
    if (rc)
        errno = err;
    return rc;
}

AARP_API int close_range(unsigned int first, unsigned int last, int flags)
{
    real_init();
    /* Forget first: once closed, another thread may reuse the numbers at once. */
    if (!((unsigned)flags & CLOSE_RANGE_CLOEXEC) && first <= last) {
        int saved = errno;
        fdkind_clear_range(first, last);
        if (fdstate_any())
            fdstate_forget_range(first, last);
        errno = saved;
    }
    if (!ownfd_any() || first > last)
        return real.close_range(first, last, flags);
    ownfd_lock();
    int rc = close_range_around(first, last, flags);
    ownfd_unlock();
    return rc;
}

/* glibc's closefrom() makes the close_range system call itself, behind our hook. */
AARP_API void closefrom(int lowfd)
{
    real_init();
    if (lowfd < 0)
        lowfd = 0;
    int saved = errno;
    fdkind_clear_range((unsigned)lowfd, ~0U);
    if (fdstate_any())
        fdstate_forget_range((unsigned)lowfd, ~0U);
    if (!ownfd_any() && real.closefrom) {
        errno = saved;
        real.closefrom(lowfd);
        return;
    }
    ownfd_lock();
    if (close_range_around((unsigned)lowfd, ~0U, 0) != 0) {
        /* No close_range in this kernel: one by one, ours left alone. */
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = lowfd; fd < (max > 0 ? max : 65536); fd++)
            if (!ownfd_has_locked((int)fd))
                real.close((int)fd);
    }
    ownfd_unlock();
    errno = saved;
}

AARP_API int dup2(int from, int to)
{
    real_init();
    if (from != to && ownfd_any() && ownfd_has(to)) {
        errno = EBUSY; /* what Linux says while the target number is being set up */
        return -1;
    }
    int rc = real.dup2(from, to);
    if (rc >= 0 && from != to) {
        int saved = errno;
        fdkind_set(to, fdkind_get(from));
        if (fdstate_any())
            fdstate_copy(from, to);
        errno = saved;
    }
    return rc;
}

AARP_API int dup3(int from, int to, int flags)
{
    real_init();
    if (ownfd_any() && ownfd_has(to)) {
        errno = EBUSY;
        return -1;
    }
    int rc = real.dup3(from, to, flags);
    if (rc >= 0) {
        int saved = errno;
        fdkind_set(to, fdkind_get(from));
        if (fdstate_any())
            fdstate_copy(from, to);
        errno = saved;
    }
    return rc;
}
