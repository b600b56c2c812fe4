/* libaarp's addresses (shim_c/addr.c): text addresses and prefixes round-trip through their
 * formatting; sockaddrs of any length and shape are read and rewritten without reading past
 * the caller's buffer, and a rewrite changes the address only. */
#include <arpa/inet.h>
#include <netinet/in.h>

#include "../../shim_c/internal.h"
#include "common.h"

static void text_forms(const uint8_t *data, size_t size) {
    char *text = exact_string(data, size);
    struct ipaddr ip, again;
    if (ip_parse(text, &ip) == 0) {
        char buf[INET6_ADDRSTRLEN];
        ip_format(&ip, buf, sizeof buf);
        CHECK(ip_parse(buf, &again) == 0 && ip_equal(&ip, &again));
        (void)ip_is_usable_unicast(&ip);
    }
    struct prefix p, q;
    int rc = prefix_parse(text, &p);
    CHECK(rc == 0 || rc == -1 || rc == -2);
    if (rc == 0) {
        char buf[INET6_ADDRSTRLEN + 8];
        prefix_format(&p, buf, sizeof buf);
        CHECK(prefix_parse(buf, &q) == 0 && q.len == p.len && ip_equal(&p.ip, &q.ip));
        CHECK(prefix_contains(&p, &p.ip));
    }
    free(text);
}

static void sockaddrs(const uint8_t *data, size_t size) {
    if (size > sizeof(struct sockaddr_storage) + 8)
        size = sizeof(struct sockaddr_storage) + 8;
    uint8_t *sa = exact_copy(data, size);
    struct sockaddr_view v;
    if (sockaddr_read((const struct sockaddr *)sa, (socklen_t)size, &v) == 0) {
        CHECK(v.ip.af == AF_INET || v.ip.af == AF_INET6);
        CHECK(v.sa_family == AF_INET || v.sa_family == AF_INET6);
        static const struct ipaddr targets[2] = {
            {AF_INET, {10, 1, 2, 3}},
            {AF_INET6, {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9}},
        };
        for (int i = 0; i < 2; i++) {
            struct sockaddr_storage out;
            if (sockaddr_rewrite((const struct sockaddr *)sa, (socklen_t)size, &targets[i],
                                 &out) != 0)
                continue;
            struct sockaddr_view w;
            CHECK(sockaddr_read((const struct sockaddr *)&out, (socklen_t)size, &w) == 0);
            CHECK(ip_equal(&w.ip, &targets[i]) && w.port == v.port);
            CHECK(w.sa_family == v.sa_family && w.mapped == v.mapped);
        }
    }
    free(sa);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size)
        return 0;
    if (data[0] & 1)
        sockaddrs(data + 1, size - 1);
    else
        text_forms(data + 1, size - 1);
    return 0;
}
