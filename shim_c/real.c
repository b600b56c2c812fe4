/* The libc functions our hooks stand in front of, found once with dlsym(RTLD_NEXT). If the
 * dynamic linker cannot find one (unusual link orders), a direct system call stands in, so a
 * hook never calls through NULL and never calls itself. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

struct real_fns real;

static int sys_socket(int d, int t, int p)
{
    return (int)syscall(SYS_socket, d, t, p);
}
static int sys_connect(int fd, const struct sockaddr *a, socklen_t l)
{
    return (int)syscall(SYS_connect, fd, a, l);
}
static ssize_t sys_sendto(int fd, const void *b, size_t n, int f, const struct sockaddr *a,
                          socklen_t l)
{
    return syscall(SYS_sendto, fd, b, n, f, a, l);
}
static ssize_t sys_sendmsg(int fd, const struct msghdr *m, int f)
{
    return syscall(SYS_sendmsg, fd, m, f);
}
static int sys_sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int f)
{
    return (int)syscall(SYS_sendmmsg, fd, v, n, f);
}
static ssize_t sys_recvfrom(int fd, void *b, size_t n, int f, struct sockaddr *a, socklen_t *l)
{
    return syscall(SYS_recvfrom, fd, b, n, f, a, l);
}
static ssize_t sys_recvmsg(int fd, struct msghdr *m, int f)
{
    return syscall(SYS_recvmsg, fd, m, f);
}
static int sys_recvmmsg(int fd, struct mmsghdr *v, unsigned int n, int f, struct timespec *t)
{
    return (int)syscall(SYS_recvmmsg, fd, v, n, f, t);
}
static int sys_getpeername(int fd, struct sockaddr *a, socklen_t *l)
{
    return (int)syscall(SYS_getpeername, fd, a, l);
}
static int sys_close(int fd)
{
    return (int)syscall(SYS_close, fd);
}
static int sys_close_range(unsigned int a, unsigned int b, int f)
{
    return (int)syscall(SYS_close_range, a, b, f);
}
static int sys_dup2(int a, int b)
{
    if (a == b) { /* dup2 semantics: check `a` is open, change nothing */
        return (int)syscall(SYS_fcntl, a, F_GETFD) < 0 ? -1 : b;
    }
    return (int)syscall(SYS_dup3, a, b, 0);
}
static int sys_dup3(int a, int b, int f)
{
    return (int)syscall(SYS_dup3, a, b, f);
}

#define FIND(name, fallback)                                        \
    do {                                                            \
        void *p = dlsym(RTLD_NEXT, #name);                          \
        if (p)                                                      \
            *(void **)&real.name = p;                               \
        else                                                        \
            real.name = fallback;                                   \
    } while (0)

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void find_all(void)
{
    int saved = errno;
    FIND(socket, sys_socket);
    FIND(connect, sys_connect);
    FIND(sendto, sys_sendto);
    FIND(sendmsg, sys_sendmsg);
    FIND(sendmmsg, sys_sendmmsg);
    FIND(recvfrom, sys_recvfrom);
    FIND(recvmsg, sys_recvmsg);
    FIND(recvmmsg, sys_recvmmsg);
    FIND(getpeername, sys_getpeername);
    FIND(close, sys_close);
    FIND(close_range, sys_close_range);
    FIND(dup2, sys_dup2);
    FIND(dup3, sys_dup3);
    *(void **)&real.closefrom = dlsym(RTLD_NEXT, "closefrom");
    errno = saved;
}

void real_init(void)
{
    pthread_once(&once, find_all);
}

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
