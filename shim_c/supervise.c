/* Programs a preload cannot reach (static binaries, Go programs): the same rewriting from
 * outside, with seccomp user notification.
 *
 * aarp_supervise() forks; the child installs a filter that hands connect(), sendto() with an
 * address, sendmsg() and getpeername() to us, and execs the program. For each notification we
 * read the destination from the program's memory. Anything not for an anycast address is let
 * through unchanged (SECCOMP_USER_NOTIF_FLAG_CONTINUE: the kernel runs the call as asked). For
 * an anycast address we take a duplicate of the program's socket (pidfd_getfd), resolve as
 * the library does (cache, host cache, probe, the same bounds for non-blocking sockets), make
 * the call ourselves with UA, and answer with its result: the socket is the program's own, so
 * everything after (poll, read, write, close) is between the program and the kernel.
 * getpeername() on such a socket shows AA again. Work that may block (a probe, a blocking
 * connect) runs in a thread of its own, so one slow call never holds up the others.
 *
 * Not a security boundary: the program could change its memory between our read and the
 * kernel's (CONTINUE), which only ever means it connects where it asked to. */
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aarp.h"
#include "internal.h"

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif
#if defined(__x86_64__)
#define AUDIT_ARCH_HERE AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define AUDIT_ARCH_HERE AUDIT_ARCH_AARCH64
#endif

#define MAX_WORKERS 64
#define MAX_DATA (256 * 1024) /* a datagram we copy out of the program and send for it */
#define PINS 4096             /* sockets we connected, by inode (for getpeername) */

static int listener = -1;
static volatile pid_t child_pid;
static int workers;

/* ---- which sockets we pinned ---------------------------------------------------------- */

struct pin_entry {
    uint64_t ino;
    struct ipaddr aa, ua;
};
static struct pin_entry pins[PINS];
static unsigned pin_next;
static pthread_mutex_t pin_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t inode_of(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (uint64_t)st.st_ino : 0;
}

static void pin_remember(int fd, const struct ipaddr *aa, const struct ipaddr *ua)
{
    uint64_t ino = inode_of(fd);
    if (!ino)
        return;
    pthread_mutex_lock(&pin_lock);
    struct pin_entry *e = &pins[pin_next++ % PINS];
    for (unsigned i = 0; i < PINS; i++)
        if (pins[i].ino == ino) {
            e = &pins[i];
            break;
        }
    e->ino = ino;
    e->aa = *aa;
    e->ua = *ua;
    pthread_mutex_unlock(&pin_lock);
}

static int pin_lookup(int fd, struct ipaddr *aa, struct ipaddr *ua)
{
    uint64_t ino = inode_of(fd);
    int found = 0;
    pthread_mutex_lock(&pin_lock);
    for (unsigned i = 0; ino && i < PINS && !found; i++)
        if (pins[i].ino == ino) {
            *aa = pins[i].aa;
            *ua = pins[i].ua;
            found = 1;
        }
    pthread_mutex_unlock(&pin_lock);
    return found;
}

/* ---- the program's memory and descriptors --------------------------------------------- */

static int mem_read(pid_t pid, uint64_t addr, void *buf, size_t len)
{
    struct iovec local = {buf, len}, remote = {(void *)(uintptr_t)addr, len};
    return process_vm_readv(pid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

static int mem_write(pid_t pid, uint64_t addr, const void *buf, size_t len)
{
    struct iovec local = {(void *)buf, len}, remote = {(void *)(uintptr_t)addr, len};
    return process_vm_writev(pid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

static int notif_valid(uint64_t id)
{
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0;
}

/* A duplicate of descriptor `fd` of thread `tid`, or -1. */
static int take_fd(pid_t tid, int fd)
{
    int pidfd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
    if (pidfd < 0) { /* kernels before 6.9: the thread group leader's */
        char path[64], line[256];
        snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
        FILE *f = fopen(path, "re");
        pid_t tgid = 0;
        while (f && fgets(line, sizeof line, f))
            if (sscanf(line, "Tgid: %d", &tgid) == 1)
                break;
        if (f)
            fclose(f);
        pidfd = tgid > 0 ? (int)syscall(SYS_pidfd_open, tgid, 0) : -1;
    }
    if (pidfd < 0)
        return -1;
    int mine = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    real.close(pidfd);
    return mine;
}

/* ---- answers ------------------------------------------------------------------------ */

static void respond(uint64_t id, int64_t val, int error, int cont)
{
    struct seccomp_notif_resp resp = {.id = id, .val = val, .error = error};
    if (cont)
        resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    while (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) != 0 && errno == EINTR)
        ;
}

static void let_through(uint64_t id)
{
    respond(id, 0, 0, 1);
}

static void answer(uint64_t id, long rc, int err)
{
    respond(id, rc < 0 ? 0 : rc, rc < 0 ? -err : 0, 0);
}

static int pinnable_fd(int fd, int *stream)
{
    int type = 0, proto = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
        return 0;
    len = sizeof proto;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) != 0)
        return 0;
    *stream = type == SOCK_STREAM || type == SOCK_SEQPACKET;
    return pinnable_kind(type, proto);
}

struct job {
    struct seccomp_notif req;
    int fd;                       /* our duplicate of the program's socket */
    struct sockaddr_storage addr; /* the destination as the program wrote it */
    socklen_t addrlen;
    struct sockaddr_view v;
};

static const char *call_name(int nr)
{
    return nr == SYS_connect ? "connect" : nr == SYS_sendto ? "sendto" : "sendmsg";
}

/* UA in the program's shape of sockaddr, or 0 to let the call through unchanged. */
static int resolve_job(struct job *j, struct sockaddr_storage *alt)
{
    const struct aarp_config *c = config_get();
    char aa_text[64] = "", ua_text[64] = "";
    if (aarp_log_level >= LOG_DEBUG)
        ip_format(&j->v.ip, aa_text, sizeof aa_text);
    struct resolution r;
    int cached = 0;
    int flags = j->req.data.nr == SYS_connect ? 0 : (int)j->req.data.args[3];
    if (!resolve_address(c, &j->v.ip, &r, &cached, j->fd, flags)) {
        LOGD("seccomp %s pid %d fd %d: %s: %s: unchanged", call_name(j->req.data.nr),
             (int)j->req.pid, (int)j->req.data.args[0], aa_text,
             cached == CACHED_LATE ? "non-blocking, no answer within nonblock_wait_ms"
             : r.state == RES_NEGATIVE ? "does not resolve" : "no answer (fail open)");
        return 0;
    }
    if (sockaddr_rewrite((struct sockaddr *)&j->addr, j->addrlen, &r.ua, alt) != 0)
        return 0;
    if (aarp_log_level >= LOG_DEBUG) {
        ip_format(&r.ua, ua_text, sizeof ua_text);
        aarp_logf(LOG_DEBUG, "seccomp %s pid %d fd %d: %s -> %s (%s)", call_name(j->req.data.nr),
                  (int)j->req.pid, (int)j->req.data.args[0], aa_text, ua_text,
                  cached == CACHED_HOST ? "host cache" : cached ? "cache hit" : "probe");
    }
    pin_remember(j->fd, &j->v.ip, &r.ua);
    return 1;
}

static void do_connect(struct job *j)
{
    struct sockaddr_storage alt;
    if (!resolve_job(j, &alt) || !notif_valid(j->req.id)) {
        let_through(j->req.id);
        return;
    }
    int rc = real.connect(j->fd, (struct sockaddr *)&alt, j->addrlen);
    answer(j->req.id, rc, errno);
}

static void do_sendto(struct job *j)
{
    struct sockaddr_storage alt;
    size_t len = (size_t)j->req.data.args[2];
    void *data = len <= MAX_DATA ? malloc(len ? len : 1) : NULL;
    if (!data || mem_read(j->req.pid, j->req.data.args[1], data, len) != 0 ||
        !resolve_job(j, &alt) || !notif_valid(j->req.id)) {
        free(data);
        let_through(j->req.id);
        return;
    }
    /* MSG_NOSIGNAL: an EPIPE must not signal us; the program gets the error. */
    ssize_t rc = real.sendto(j->fd, data, len, (int)j->req.data.args[3] | MSG_NOSIGNAL,
                             (struct sockaddr *)&alt, j->addrlen);
    int err = errno;
    free(data);
    answer(j->req.id, rc, err);
}

/* sendmsg: the message header, its vectors and control data copied out, sent by us. */
static void do_sendmsg(struct job *j, const struct msghdr *m)
{
    struct sockaddr_storage alt;
    size_t n = m->msg_iovlen;
    struct iovec *remote = n <= 1024 ? calloc(n ? n : 1, sizeof *remote) : NULL;
    struct iovec *local = remote ? calloc(n ? n : 1, sizeof *local) : NULL;
    void *control = m->msg_controllen <= 4096 ? malloc(m->msg_controllen + 1) : NULL;
    size_t total = 0;
    int ok = remote && local && control &&
             mem_read(j->req.pid, (uintptr_t)m->msg_iov, remote, n * sizeof *remote) == 0 &&
             (!m->msg_controllen ||
              mem_read(j->req.pid, (uintptr_t)m->msg_control, control, m->msg_controllen) == 0);
    for (size_t i = 0; ok && i < n; i++) {
        total += remote[i].iov_len;
        ok = total <= MAX_DATA && (local[i].iov_base = malloc(remote[i].iov_len + 1)) &&
             mem_read(j->req.pid, (uintptr_t)remote[i].iov_base, local[i].iov_base,
                      remote[i].iov_len) == 0;
        if (ok)
            local[i].iov_len = remote[i].iov_len;
    }
    if (ok && resolve_job(j, &alt) && notif_valid(j->req.id)) {
        struct msghdr copy = *m;
        copy.msg_name = &alt;
        copy.msg_iov = local;
        copy.msg_control = m->msg_controllen ? control : NULL;
        ssize_t rc = real.sendmsg(j->fd, &copy, (int)j->req.data.args[2] | MSG_NOSIGNAL);
        answer(j->req.id, rc, errno);
    } else {
        let_through(j->req.id);
    }
    for (size_t i = 0; local && i < n; i++)
        free(local[i].iov_base);
    free(local);
    free(remote);
    free(control);
}

static void run_job(struct job *j)
{
    if (j->req.data.nr == SYS_sendmsg) {
        struct msghdr m;
        if (mem_read(j->req.pid, j->req.data.args[1], &m, sizeof m) == 0)
            do_sendmsg(j, &m);
        else
            let_through(j->req.id);
    } else if (j->req.data.nr == SYS_connect) {
        do_connect(j);
    } else {
        do_sendto(j);
    }
    real.close(j->fd);
    free(j);
}

static void *worker(void *arg)
{
    aarp_busy = 1;
    run_job(arg);
    __atomic_sub_fetch(&workers, 1, __ATOMIC_RELAXED);
    return NULL;
}

/* getpeername on a socket we connected: show AA where the kernel says UA. */
static void do_getpeername(const struct seccomp_notif *req)
{
    int fd = take_fd(req->pid, (int)req->data.args[0]);
    struct ipaddr aa, ua;
    if (fd < 0 || !pin_lookup(fd, &aa, &ua)) {
        if (fd >= 0)
            real.close(fd);
        let_through(req->id);
        return;
    }
    socklen_t cap;
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    struct sockaddr_view v;
    if (mem_read(req->pid, req->data.args[2], &cap, sizeof cap) != 0 ||
        real.getpeername(fd, (struct sockaddr *)&peer, &len) != 0) {
        real.close(fd);
        let_through(req->id); /* the kernel gives the program its own error */
        return;
    }
    real.close(fd);
    struct sockaddr_storage shown = peer;
    if (sockaddr_read((struct sockaddr *)&peer, len, &v) == 0 && ip_equal(&v.ip, &ua))
        sockaddr_rewrite((struct sockaddr *)&peer, len, &aa, &shown);
    if (!notif_valid(req->id) ||
        mem_write(req->pid, req->data.args[1], &shown, cap < len ? cap : len) != 0 ||
        mem_write(req->pid, req->data.args[2], &len, sizeof len) != 0) {
        let_through(req->id);
        return;
    }
    answer(req->id, 0, 0);
}

static void handle(const struct seccomp_notif *req)
{
    int nr = req->data.nr;
    if (nr == SYS_getpeername) {
        do_getpeername(req);
        return;
    }
    struct job *j = calloc(1, sizeof *j);
    if (!j) {
        let_through(req->id);
        return;
    }
    j->req = *req;
    uint64_t name = 0;
    if (nr == SYS_connect || nr == SYS_sendto) {
        name = nr == SYS_connect ? req->data.args[1] : req->data.args[4];
        j->addrlen = (socklen_t)(nr == SYS_connect ? req->data.args[2] : req->data.args[5]);
    } else { /* sendmsg: msg_name and msg_namelen from the header */
        struct msghdr m;
        if (mem_read(req->pid, req->data.args[1], &m, sizeof m) == 0) {
            name = (uintptr_t)m.msg_name;
            j->addrlen = m.msg_namelen;
        }
    }
    const struct aarp_config *c = config_get();
    int stream = 0;
    if (!name || j->addrlen < sizeof(sa_family_t) || j->addrlen > sizeof j->addr ||
        mem_read(req->pid, name, &j->addr, j->addrlen) != 0 ||
        sockaddr_read((struct sockaddr *)&j->addr, j->addrlen, &j->v) != 0 || c->disabled ||
        !config_is_anycast(c, &j->v.ip) || (j->fd = take_fd(req->pid, (int)req->data.args[0])) < 0) {
        free(j);
        let_through(req->id);
        return;
    }
    /* For a stream socket the kernel ignores sendto/sendmsg's address: nothing to rewrite. */
    if (!pinnable_fd(j->fd, &stream) || (stream && nr != SYS_connect)) {
        real.close(j->fd);
        free(j);
        let_through(req->id);
        return;
    }
    pthread_attr_t attr;
    pthread_t tid;
    if (__atomic_add_fetch(&workers, 1, __ATOMIC_RELAXED) <= MAX_WORKERS &&
        pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int started = pthread_create(&tid, &attr, worker, j) == 0;
        pthread_attr_destroy(&attr);
        if (started)
            return;
    }
    __atomic_sub_fetch(&workers, 1, __ATOMIC_RELAXED);
    run_job(j); /* no thread to be had: here and now */
}

/* ---- the filter and the child ------------------------------------------------------- */

static int install_filter(void)
{
#ifndef AUDIT_ARCH_HERE
    errno = ENOSYS;
    return -1;
#else
    /* Jump offsets count the instructions skipped (little-endian: the low half first). */
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_HERE, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
#ifdef __x86_64__
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1), /* x32 calls: not ours */
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
#endif
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_connect, 8, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sendmsg, 7, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getpeername, 6, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sendto, 0, 4),
        /* sendto without an address (send() on a connected socket) is not ours */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[4])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[4]) + 4),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
    };
    struct sock_fprog prog = {.len = (unsigned short)(sizeof code / sizeof code[0]),
                              .filter = code};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    unsigned long flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    int fd = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
    if (fd < 0 && errno == EINVAL) /* before Linux 5.19 */
        fd = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                          SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    return fd;
#endif
}

static void forward(int sig)
{
    if (child_pid > 0)
        kill(child_pid, sig);
}

int aarp_supervise_available(char *err, size_t errlen)
{
    struct seccomp_notif_sizes sizes;
    if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) {
        snprintf(err, errlen, "no seccomp user notification in this kernel: %s",
                 strerror(errno));
        return 0;
    }
    int fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (fd < 0) {
        snprintf(err, errlen, "no pidfd_open in this kernel: %s", strerror(errno));
        return 0;
    }
    real.close(fd);
#ifndef AUDIT_ARCH_HERE
    snprintf(err, errlen, "not supported on this architecture");
    return 0;
#endif
    return 1;
}

int aarp_supervise(const char *const *argv, char *err, size_t errlen)
{
    real_init();
    err[0] = '\0';
    int ready[2], go[2];
    if (pipe2(ready, O_CLOEXEC) != 0 || pipe2(go, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* The child: filter, tell the parent where the listener is, wait, exec. */
        real.close(ready[0]);
        real.close(go[1]);
        int fd = install_filter();
        int msg[2] = {fd, fd < 0 ? errno : 0};
        if (write(ready[1], msg, sizeof msg) != (ssize_t)sizeof msg || fd < 0)
            _exit(127);
        char ok = 0;
        if (read(go[0], &ok, 1) != 1 || ok != 1)
            _exit(127);
        real.close(fd);
        execvp(argv[0], (char *const *)argv);
        int e = errno;
        dprintf(2, "aarp-shim: cannot run '%s': %s\n", argv[0], strerror(e));
        _exit(e == ENOENT ? 127 : 126);
    }
    real.close(ready[1]);
    real.close(go[0]);
    int msg[2] = {-1, EIO};
    ssize_t got = read(ready[0], msg, sizeof msg);
    real.close(ready[0]);
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (got == (ssize_t)sizeof msg && msg[0] >= 0 && pidfd >= 0)
        listener = (int)syscall(SYS_pidfd_getfd, pidfd, msg[0], 0);
    if (listener < 0) {
        int e = got == (ssize_t)sizeof msg && msg[1] ? msg[1] : errno;
        snprintf(err, errlen, "cannot install the seccomp filter: %s", strerror(e));
        real.close(go[1]);
        waitpid(pid, NULL, 0);
        if (pidfd >= 0)
            real.close(pidfd);
        return -1;
    }
    fcntl(listener, F_SETFD, FD_CLOEXEC);
    child_pid = pid;
    struct sigaction sa = {.sa_handler = forward}, old[4];
    int sigs[4] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int i = 0; i < 4; i++)
        sigaction(sigs[i], &sa, &old[i]);
    char ok = 1;
    if (write(go[1], &ok, 1) != 1)
        kill(pid, SIGKILL);
    real.close(go[1]);
    LOGD("seccomp: supervising pid %d (%s)", (int)pid, argv[0]);
    struct seccomp_notif_sizes sizes;
    syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes);
    size_t req_size = sizes.seccomp_notif > sizeof(struct seccomp_notif)
                          ? sizes.seccomp_notif : sizeof(struct seccomp_notif);
    struct seccomp_notif *req = malloc(req_size);
    int status = 0, exited = 0;
    /* Serve until the program and everything it started with the filter are gone. */
    while (req) {
        struct pollfd p[2] = {{.fd = listener, .events = POLLIN}, {.fd = pidfd, .events = POLLIN}};
        int n = poll(p, exited ? 1 : 2, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        if (!exited && (p[1].revents & POLLIN)) {
            waitpid(pid, &status, 0);
            exited = 1;
        }
        if (p[0].revents & POLLIN) {
            memset(req, 0, req_size);
            if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, req) == 0)
                handle(req);
        } else if (p[0].revents & (POLLHUP | POLLERR)) {
            break;
        }
    }
    if (!exited)
        waitpid(pid, &status, 0);
    free(req);
    child_pid = 0;
    for (int i = 0; i < 4; i++)
        sigaction(sigs[i], &old[i], NULL);
    real.close(listener);
    listener = -1;
    real.close(pidfd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
