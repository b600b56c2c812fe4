/* The library's own descriptors (probe sockets, host cache requests): opened and closed
 * under one lock, so that a close_range()/closefrom()/close() of the program, which the hooks
 * narrow around them, can never close one under a thread that still uses it, nor let the
 * program's next socket take its number while the library still writes to it. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"

#define MAX_OWN 256

static int own[MAX_OWN]; /* fd + 1; 0 = free */
static int n_own;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

int ownfd_any(void)
{
    return __atomic_load_n(&n_own, __ATOMIC_ACQUIRE) != 0;
}

void ownfd_lock(void)
{
    pthread_mutex_lock(&lock);
}

void ownfd_unlock(void)
{
    pthread_mutex_unlock(&lock);
}

int ownfd_socket(int domain, int type, int proto)
{
    ownfd_lock();
    int fd = real.socket(domain, type | SOCK_CLOEXEC, proto);
    if (fd >= 0) {
        int i;
        for (i = 0; i < MAX_OWN && own[i]; i++)
            ;
        if (i == MAX_OWN) { /* cannot guard it: do without */
            real.close(fd);
            fd = -1;
            errno = EMFILE;
        } else {
            own[i] = fd + 1;
            __atomic_add_fetch(&n_own, 1, __ATOMIC_RELEASE);
        }
    }
    ownfd_unlock();
    return fd;
}

void ownfd_close(int fd)
{
    if (fd < 0)
        return;
    ownfd_lock();
    for (int i = 0; i < MAX_OWN; i++)
        if (own[i] == fd + 1) {
            own[i] = 0;
            __atomic_sub_fetch(&n_own, 1, __ATOMIC_RELEASE);
            break;
        }
    real.close(fd);
    ownfd_unlock();
}

int ownfd_has_locked(int fd)
{
    for (int i = 0; i < MAX_OWN; i++)
        if (own[i] == fd + 1)
            return 1;
    return 0;
}

int ownfd_has(int fd)
{
    if (!ownfd_any())
        return 0;
    ownfd_lock();
    int has = ownfd_has_locked(fd);
    ownfd_unlock();
    return has;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Our descriptors inside [first, last], sorted; the lock must be held. */
int ownfd_in_range_locked(unsigned first, unsigned last, int *out)
{
    int n = 0;
    for (int i = 0; i < MAX_OWN; i++)
        if (own[i] && (unsigned)(own[i] - 1) >= first && (unsigned)(own[i] - 1) <= last)
            out[n++] = own[i] - 1;
    qsort(out, (size_t)n, sizeof *out, cmp_int);
    return n;
}

void ownfd_fork_prepare(void)
{
    pthread_mutex_lock(&lock);
}

void ownfd_fork_parent(void)
{
    pthread_mutex_unlock(&lock);
}

/* In a fork()ed child: the threads that used these are gone; close the copies. */
void ownfd_fork_child(void)
{
    for (int i = 0; i < MAX_OWN; i++)
        if (own[i]) {
            real.close(own[i] - 1);
            own[i] = 0;
        }
    n_own = 0;
    pthread_mutex_init(&lock, NULL);
}
