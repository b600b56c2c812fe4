/* A minimal HTTP/1.0 client, built static by the tests (no dynamic loader: LD_PRELOAD cannot
 * reach it).   fetch ADDR PORT PATH OUTFILE   -> writes the body, exit 0 when complete. */
#include "common.h"

#include <fcntl.h>

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: fetch ADDR PORT PATH OUTFILE\n");
        return 2;
    }
    struct sockaddr_storage ss, peer;
    socklen_t len = parse_sockaddr(argv[1], atoi(argv[2]), &ss), plen = sizeof peer;
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    CHECK(fd >= 0 && connect(fd, (struct sockaddr *)&ss, len) == 0, "connect: %s",
          strerror(errno));
    char want[64], got[64], req[512];
    CHECK(getpeername(fd, (struct sockaddr *)&peer, &plen) == 0, "getpeername");
    fprintf(stderr, "peer %s\n", sockaddr_text(&peer, got, sizeof got));
    (void)want;
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", argv[3]);
    CHECK(write(fd, req, (size_t)n) == n, "write");
    int out = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(out >= 0, "open %s", argv[4]);
    char buf[65536];
    size_t have = 0, body = 0, length = 0;
    int in_body = 0;
    ssize_t r;
    while ((r = read(fd, buf + (in_body ? 0 : have), sizeof buf - (in_body ? 0 : have))) > 0) {
        if (in_body) {
            CHECK(write(out, buf, (size_t)r) == r, "write out");
            body += (size_t)r;
            continue;
        }
        have += (size_t)r;
        buf[have < sizeof buf ? have : sizeof buf - 1] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        char *cl = strcasestr(buf, "Content-Length:");
        CHECK(cl && cl < end, "no Content-Length");
        length = strtoul(cl + 15, NULL, 10);
        size_t head = (size_t)(end + 4 - buf);
        CHECK(write(out, end + 4, have - head) == (ssize_t)(have - head), "write out");
        body = have - head;
        in_body = 1;
    }
    CHECK(r == 0, "read: %s", strerror(errno));
    CHECK(in_body && body == length, "got %zu of %zu bytes", body, length);
    close(out);
    close(fd);
    return 0;
}
