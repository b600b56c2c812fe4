/* Many threads connecting to an anycast address through libaarp.so at once.
 *
 *   stress ADDR PORT THREADS ITERATIONS EXPECT
 *       every connection must reach the server named EXPECT (pinning) and getpeername()
 *       must show ADDR again; prints "first" after the first connection, then
 *       "connections=N wrong=W errors=E child_failures=F"; exit 0 when all good.
 *   stress --forks ADDR PORT THREADS FORKS EXPECT
 *       the same threads keep connecting while the main thread forks FORKS times; each child
 *       connects once and must finish (alarm: 10 s), proving no lock is inherited held.
 *   STRESS_NONBLOCK=1 in the environment: non-blocking connects (EINPROGRESS, poll), with the
 *       library's cache flushed now and then, so background probes run all the time; a
 *       connection that went to AA unpinned must still reach a server ("wrong" only when the
 *       peer does not read ADDR).
 */
#include "common.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>

static const char *g_addr, *g_expect;
static int g_port, g_iterations;
static atomic_int g_ok, g_wrong, g_errors, g_stop, g_running, g_calls;
static int g_nonblock;
static void (*g_flush)(void);

/* One connection: 0 right server, 1 wrong server or address, -1 error. */
static int one_connection(void)
{
    struct sockaddr_storage ss, peer;
    socklen_t len = parse_sockaddr(g_addr, g_port, &ss), plen = sizeof peer;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | (g_nonblock ? SOCK_NONBLOCK : 0),
                    0);
    if (fd < 0)
        return -1;
    if (g_nonblock && g_flush && atomic_fetch_add(&g_calls, 1) % 7 == 0)
        g_flush();
    int rc0 = connect(fd, (struct sockaddr *)&ss, len);
    if (rc0 != 0 && g_nonblock && errno == EINPROGRESS) {
        struct pollfd p = {fd, POLLOUT, 0};
        int err = -1;
        socklen_t elen = sizeof err;
        if (poll(&p, 1, 5000) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 &&
            err == 0)
            rc0 = 0;
        fcntl(fd, F_SETFL, 0);
    }
    if (rc0 != 0) {
        close(fd);
        return -1;
    }
    int rc = 0;
    char want[64], got[64], name[128] = {0};
    if (getpeername(fd, (struct sockaddr *)&peer, &plen) != 0 ||
        strcmp(sockaddr_text(&peer, got, sizeof got), canonical(g_addr, want, sizeof want)) != 0)
        rc = 1;
    size_t have = 0;
    ssize_t n;
    while (have < sizeof name - 1 && (n = read(fd, name + have, sizeof name - 1 - have)) > 0)
        have += (size_t)n;
    if (strcmp(name, g_expect) != 0 && !(g_nonblock && have))
        rc = have ? 1 : -1;
    close(fd);
    return rc;
}

static void count(int rc)
{
    if (rc > 0) {
        atomic_fetch_add(&g_wrong, 1);
    } else if (rc < 0) {
        atomic_fetch_add(&g_errors, 1);
    } else if (atomic_fetch_add(&g_ok, 1) == 0) {
        printf("first\n"); /* lets a test move the route while we run */
        fflush(stdout);
    }
}

static void *worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < g_iterations && !atomic_load(&g_stop); i++)
        count(one_connection());
    return NULL;
}

static void *forever(void *arg)
{
    (void)arg;
    atomic_fetch_add(&g_running, 1);
    while (!atomic_load(&g_stop))
        count(one_connection());
    return NULL;
}

int main(int argc, char **argv)
{
    int forks = 0;
    if (argc == 7 && strcmp(argv[1], "--forks") == 0) {
        argv++;
        argc--;
        forks = 1;
    }
    if (argc != 6) {
        fprintf(stderr, "usage: stress [--forks] ADDR PORT THREADS ITERATIONS|FORKS EXPECT\n");
        return 2;
    }
    g_addr = argv[1];
    g_port = atoi(argv[2]);
    int threads = atoi(argv[3]);
    g_iterations = atoi(argv[4]);
    g_expect = argv[5];
    g_nonblock = getenv("STRESS_NONBLOCK") != NULL;
    *(void **)&g_flush = dlsym(RTLD_DEFAULT, "aarp_cache_flush");
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    for (int i = 0; i < threads; i++)
        pthread_create(&tids[i], NULL, forks ? forever : worker, NULL);
    int child_failures = 0;
    if (forks) {
        /* Fork only once every thread runs and connections flow: a child forked while a thread
         * is still being created can deadlock inside the sanitizer runtimes (their thread
         * registry lock), which is not what this test is about. */
        for (int waited = 0; waited < 1000 && (atomic_load(&g_running) < threads ||
                                               atomic_load(&g_ok) < threads); waited++)
            usleep(10000);
        for (int i = 0; i < g_iterations; i++) {
            pid_t pid = fork();
            if (pid == 0) {
                alarm(10);
                _exit(one_connection() == 0 ? 0 : 3);
            }
            int status = 0;
            waitpid(pid, &status, 0);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                child_failures++;
                fprintf(stderr, "child %d: %s %d\n", i, WIFEXITED(status) ? "exit" : "signal",
                        WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
            }
        }
        atomic_store(&g_stop, 1);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(tids[i], NULL);
    free(tids);
    printf("connections=%d wrong=%d errors=%d child_failures=%d\n", atomic_load(&g_ok),
           atomic_load(&g_wrong), atomic_load(&g_errors), child_failures);
    return atomic_load(&g_wrong) || atomic_load(&g_errors) || child_failures ? 1 : 0;
}
