/* Addresses, prefixes and sockaddr shapes (AF_INET, AF_INET6, IPv4-mapped IPv6). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const uint8_t MAPPED_PREFIX[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

int ip_len(const struct ipaddr *a)
{
    return a->af == AF_INET ? 4 : 16;
}

int ip_equal(const struct ipaddr *a, const struct ipaddr *b)
{
    return a->af == b->af && memcmp(a->b, b->b, (size_t)ip_len(a)) == 0;
}

int ip_parse(const char *text, struct ipaddr *out)
{
    memset(out, 0, sizeof *out);
    if (strchr(text, ':')) {
        if (inet_pton(AF_INET6, text, out->b) != 1)
            return -1;
        out->af = AF_INET6;
        return 0;
    }
    if (inet_pton(AF_INET, text, out->b) != 1)
        return -1;
    out->af = AF_INET;
    return 0;
}

/* "addr" or "addr/len" like the Python reader: digits only after '/', no scope, host bits
 * cleared. 0, or -1 "not a prefix", or -2 "length above the maximum". */
int prefix_parse(const char *text, struct prefix *out)
{
    char buf[128];
    size_t n = strlen(text);
    if (n == 0 || n >= sizeof buf || strchr(text, '%'))
        return -1;
    memcpy(buf, text, n + 1);
    char *slash = strchr(buf, '/');
    long len = -1;
    if (slash) {
        *slash = '\0';
        const char *d = slash + 1;
        if (*d == '\0')
            return -1;
        len = 0;
        for (; *d; d++) {
            if (*d < '0' || *d > '9')
                return -1;
            if (len < 1000)
                len = len * 10 + (*d - '0');
        }
    }
    if (ip_parse(buf, &out->ip) != 0)
        return -1;
    int max = ip_len(&out->ip) * 8;
    if (len < 0)
        len = max;
    if (len > max)
        return -2;
    out->len = (int)len;
    for (int bit = (int)len; bit < max; bit++)
        out->ip.b[bit / 8] &= (uint8_t)~(0x80 >> (bit % 8));
    return 0;
}

int prefix_contains(const struct prefix *p, const struct ipaddr *a)
{
    if (p->ip.af != a->af)
        return 0;
    int full = p->len / 8, rest = p->len % 8;
    if (memcmp(p->ip.b, a->b, (size_t)full) != 0)
        return 0;
    if (rest) {
        uint8_t mask = (uint8_t)(0xff << (8 - rest));
        if ((p->ip.b[full] & mask) != (a->b[full] & mask))
            return 0;
    }
    return 1;
}

/* A usable unicast destination, by the rules of aarp/policy.py (usable_unicast), and never an
 * IPv4-mapped address standing in for an IPv6 one. */
int ip_is_usable_unicast(const struct ipaddr *a)
{
    static const uint8_t zero[16];
    if (a->af == AF_INET) {
        static const uint8_t bcast[4] = {255, 255, 255, 255};
        if (memcmp(a->b, zero, 4) == 0 || a->b[0] == 127 || (a->b[0] & 0xf0) == 224 ||
            (a->b[0] == 169 && a->b[1] == 254) || memcmp(a->b, bcast, 4) == 0)
            return 0;
        return 1;
    }
    if (memcmp(a->b, zero, 16) == 0 || a->b[0] == 0xff)
        return 0;
    if (memcmp(a->b, zero, 15) == 0 && a->b[15] == 1)
        return 0;
    if (a->b[0] == 0xfe && (a->b[1] & 0xc0) == 0x80)
        return 0;
    if (memcmp(a->b, MAPPED_PREFIX, 12) == 0)
        return 0;
    return 1;
}

void ip_format(const struct ipaddr *a, char *buf, size_t size)
{
    if (!inet_ntop(a->af, a->b, buf, (socklen_t)size) && size)
        snprintf(buf, size, "?");
}

void prefix_format(const struct prefix *p, char *buf, size_t size)
{
    char ip[INET6_ADDRSTRLEN];
    ip_format(&p->ip, ip, sizeof ip);
    snprintf(buf, size, "%s/%d", ip, p->len);
}

int sockaddr_read(const struct sockaddr *sa, socklen_t len, struct sockaddr_view *out)
{
    if (!sa || len < (socklen_t)sizeof(sa_family_t))
        return -1;
    sa_family_t fam;
    memcpy(&fam, sa, sizeof fam); /* the caller's buffer may be unaligned */
    memset(out, 0, sizeof *out);
    if (fam == AF_INET) {
        struct sockaddr_in in;
        if (len < (socklen_t)sizeof in)
            return -1;
        memcpy(&in, sa, sizeof in);
        out->ip.af = AF_INET;
        memcpy(out->ip.b, &in.sin_addr, 4);
        out->port = in.sin_port;
        out->sa_family = AF_INET;
        return 0;
    }
    if (fam == AF_INET6) {
        /* 24 bytes (RFC 2133, no scope id) is still a valid IPv6 sockaddr for the kernel. */
        struct sockaddr_in6 in6 = {0};
        if (len < 24)
            return -1;
        memcpy(&in6, sa, len < (socklen_t)sizeof in6 ? len : sizeof in6);
        out->sa_family = AF_INET6;
        out->port = in6.sin6_port;
        if (memcmp(in6.sin6_addr.s6_addr, MAPPED_PREFIX, 12) == 0) {
            out->ip.af = AF_INET;
            memcpy(out->ip.b, in6.sin6_addr.s6_addr + 12, 4);
            out->mapped = 1;
        } else {
            out->ip.af = AF_INET6;
            memcpy(out->ip.b, in6.sin6_addr.s6_addr, 16);
        }
        return 0;
    }
    return -1;
}

int sockaddr_rewrite(const struct sockaddr *sa, socklen_t len, const struct ipaddr *ip,
                     struct sockaddr_storage *out)
{
    struct sockaddr_view v;
    if (sockaddr_read(sa, len, &v) != 0 || len > (socklen_t)sizeof *out)
        return -1;
    memcpy(out, sa, len);
    if (v.sa_family == AF_INET) {
        if (ip->af != AF_INET)
            return -1;
        struct sockaddr_in *in = (struct sockaddr_in *)out;
        memcpy(&in->sin_addr, ip->b, 4);
        return 0;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
    if (v.mapped) {
        if (ip->af != AF_INET)
            return -1;
        memcpy(in6->sin6_addr.s6_addr, MAPPED_PREFIX, 12);
        memcpy(in6->sin6_addr.s6_addr + 12, ip->b, 4);
        return 0;
    }
    if (ip->af != AF_INET6)
        return -1;
    memcpy(in6->sin6_addr.s6_addr, ip->b, 16);
    /* UA is global: a scope id meant for AA's link would be wrong for it. */
    in6->sin6_scope_id = 0;
    return 0;
}
