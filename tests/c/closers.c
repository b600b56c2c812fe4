/* The program closes descriptors wholesale while the library probes in another thread:
 * close_range(), closefrom() or a close() loop from just above its own socket. The library's
 * probe sockets must survive it, so the connection still ends up pinned.
 *   closers ADDR PORT EXPECT close_range|closefrom|close */
#include "common.h"

#include <pthread.h>
#include <linux/close_range.h>

static const char *g_addr, *g_expect;
static int g_port, g_fd = -1;
static volatile int g_ready;

static void *connector(void *arg)
{
    (void)arg;
    struct sockaddr_storage ss;
    socklen_t len = parse_sockaddr(g_addr, g_port, &ss);
    g_fd = socket(ss.ss_family, SOCK_STREAM, 0);
    g_ready = 1;
    CHECK(connect(g_fd, (struct sockaddr *)&ss, len) == 0, "connect: %s", strerror(errno));
    char name[64] = {0};
    CHECK(read(g_fd, name, sizeof name - 1) > 0, "read");
    CHECK(strcmp(name, g_expect) == 0, "server '%s', want '%s'", name, g_expect);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: closers ADDR PORT EXPECT close_range|closefrom|close\n");
        return 2;
    }
    g_addr = argv[1];
    g_port = atoi(argv[2]);
    g_expect = argv[3];
    pthread_t t;
    pthread_create(&t, NULL, connector, NULL);
    while (!g_ready)
        usleep(1000);
    usleep(150000); /* the probe is under way now */
    unsigned first = (unsigned)g_fd + 1;
    if (strcmp(argv[4], "close_range") == 0) {
        CHECK(close_range(first, ~0U, 0) == 0, "close_range: %s", strerror(errno));
    } else if (strcmp(argv[4], "closefrom") == 0) {
        closefrom((int)first);
    } else {
        for (unsigned fd = first; fd < 1024; fd++)
            close((int)fd);
    }
    pthread_join(t, NULL);
    printf("ok\n");
    return 0;
}
