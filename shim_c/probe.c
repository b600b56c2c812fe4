/* The AARP client of spec/aarp.md: one probe = the same query over ICMP echo (ping socket,
 * else raw socket) and UDP, then the first valid answer wins. Every socket call here goes to
 * the real libc functions, never to our hooks. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "internal.h"

#define MAX_ATTEMPTS 11
/* Source-only answers (kernel anycast) carry no ttl; this one is clamped like any other. */
#define SOURCE_TTL 60
#define BUF 1600
#ifndef ICMP_FILTER
#define ICMP_FILTER 1
#endif

struct attempt {
    uint8_t nonce[MSG_NONCE_LEN];
    uint16_t seq;
    uint8_t query[MSG_QUERY_LEN];
};

struct probe {
    const struct aarp_config *c;
    const struct ipaddr *aa;
    char aa_text[64];
    int icmp_fd, icmp_raw, udp_fd;
    uint16_t ident; /* echo identifier (raw sockets; ping sockets get the kernel's) */
    struct attempt at[MAX_ATTEMPTS];
    int n_at;
    int plain_seen;  /* AA answered but did not resolve */
    struct resolution *r;
};

static int random_bytes(void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = getrandom(p, len, GRND_NONBLOCK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        p += n;
        len -= (size_t)n;
    }
    if (!len)
        return 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        p += n;
        len -= (size_t)n;
    }
    real.close(fd);
    return len ? -1 : 0;
}

static socklen_t make_sockaddr(const struct ipaddr *a, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (a->af == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        memcpy(&in->sin_addr, a->b, 4);
        return sizeof *in;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    memcpy(&in6->sin6_addr, a->b, 16);
    return sizeof *in6;
}

static void open_icmp(struct probe *p)
{
    int af = p->aa->af;
    int proto = af == AF_INET ? IPPROTO_ICMP : IPPROTO_ICMPV6;
    p->icmp_fd = ownfd_socket(af, SOCK_DGRAM | SOCK_NONBLOCK, proto);
    if (p->icmp_fd >= 0) {
        LOGD("probe %s: ICMP over a ping socket", p->aa_text);
        return;
    }
    int ping_errno = errno;
    p->icmp_fd = ownfd_socket(af, SOCK_RAW | SOCK_NONBLOCK, proto);
    if (p->icmp_fd < 0) {
        LOGD("probe %s: no ICMP socket (ping socket: %s; raw socket: %s): UDP only",
             p->aa_text, strerror(ping_errno), strerror(errno));
        return;
    }
    p->icmp_raw = 1;
    /* Only echo replies reach us: less work, fewer strangers' packets to reject. */
    if (af == AF_INET6) {
        struct icmp6_filter f;
        ICMP6_FILTER_SETBLOCKALL(&f);
        ICMP6_FILTER_SETPASS(ICMP6_ECHO_REPLY, &f);
        setsockopt(p->icmp_fd, IPPROTO_ICMPV6, ICMP6_FILTER, &f, sizeof f);
    } else {
        uint32_t mask = ~(1u << ICMP_ECHOREPLY);
        setsockopt(p->icmp_fd, SOL_RAW, ICMP_FILTER, &mask, sizeof mask);
    }
    LOGD("probe %s: ICMP over a raw socket", p->aa_text);
}

static void open_udp(struct probe *p)
{
    p->udp_fd = ownfd_socket(p->aa->af, SOCK_DGRAM | SOCK_NONBLOCK, IPPROTO_UDP);
    if (p->udp_fd < 0) {
        LOGD("probe %s: no UDP socket: %s", p->aa_text, strerror(errno));
        return;
    }
    /* Connected: the kernel drops datagrams from anyone but AA:port, and a missing responder
     * shows up as ECONNREFUSED. */
    struct sockaddr_storage ss;
    socklen_t len = make_sockaddr(p->aa, (uint16_t)p->c->port, &ss);
    if (real.connect(p->udp_fd, (struct sockaddr *)&ss, len) != 0) {
        LOGD("probe %s: UDP connect: %s", p->aa_text, strerror(errno));
        ownfd_close(p->udp_fd);
        p->udp_fd = -1;
    }
}

static uint16_t inet_checksum(const uint8_t *data, size_t len)
{
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)data[i] << 8 | data[i + 1];
    if (len % 2)
        sum += (uint32_t)data[len - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* Send attempt `a` on every open socket; returns how many copies left. */
static int send_attempt(struct probe *p, struct attempt *a)
{
    int sent = 0;
    if (p->icmp_fd >= 0) {
        uint8_t pkt[8 + MSG_QUERY_LEN];
        pkt[0] = p->aa->af == AF_INET ? ICMP_ECHO : ICMP6_ECHO_REQUEST;
        pkt[1] = 0;
        pkt[2] = pkt[3] = 0;
        pkt[4] = (uint8_t)(p->ident >> 8);
        pkt[5] = (uint8_t)p->ident;
        pkt[6] = (uint8_t)(a->seq >> 8);
        pkt[7] = (uint8_t)a->seq;
        memcpy(pkt + 8, a->query, MSG_QUERY_LEN);
        if (p->aa->af == AF_INET && p->icmp_raw) {
            uint16_t sum = inet_checksum(pkt, sizeof pkt);
            pkt[2] = (uint8_t)(sum >> 8);
            pkt[3] = (uint8_t)sum;
        }
        struct sockaddr_storage ss;
        socklen_t len = make_sockaddr(p->aa, 0, &ss);
        if (real.sendto(p->icmp_fd, pkt, sizeof pkt, 0, (struct sockaddr *)&ss, len) >= 0)
            sent++;
        else
            LOGD("probe %s: ICMP send: %s", p->aa_text, strerror(errno));
    }
    if (p->udp_fd >= 0) {
        if (real.sendto(p->udp_fd, a->query, MSG_QUERY_LEN, 0, NULL, 0) >= 0)
            sent++;
        else
            LOGD("probe %s: UDP send: %s", p->aa_text, strerror(errno));
    }
    return sent;
}

static const struct attempt *attempt_by_nonce(const struct probe *p, const uint8_t *nonce)
{
    for (int i = 0; i < p->n_at; i++)
        if (memcmp(p->at[i].nonce, nonce, MSG_NONCE_LEN) == 0)
            return &p->at[i];
    return NULL;
}

static const struct attempt *attempt_by_seq(const struct probe *p, uint16_t seq)
{
    for (int i = 0; i < p->n_at; i++)
        if (p->at[i].seq == seq)
            return &p->at[i];
    return NULL;
}

/* Checks every accepted UA passes, whatever carried it. */
static int ua_acceptable(const struct probe *p, const struct ipaddr *ua, const char *what)
{
    char text[64];
    ip_format(ua, text, sizeof text);
    if (!ip_is_usable_unicast(ua) || ip_equal(ua, p->aa)) {
        LOGD("probe %s: ignored %s: %s is not a usable unicast address", p->aa_text, what, text);
        return 0;
    }
    if (p->c->policy == POLICY_PREFIX && !config_unicast_allowed(p->c, p->aa, ua)) {
        LOGI("probe %s: ignored %s: %s is outside the allowed prefixes", p->aa_text, what, text);
        return 0;
    }
    return 1;
}

static void accept_ua(struct probe *p, const struct ipaddr *ua, int how, uint32_t ttl,
                      int signed_ok)
{
    const struct aarp_config *c = p->c;
    p->r->state = RES_POSITIVE;
    p->r->how = how;
    p->r->verified = signed_ok ? VERIFIED_TAG
                     : c->policy == POLICY_PREFIX ? VERIFIED_PREFIX : VERIFIED_NONE;
    p->r->ua = *ua;
    if (ttl < c->ttl_min)
        ttl = c->ttl_min;
    if (ttl > c->ttl_max)
        ttl = c->ttl_max;
    p->r->ttl = ttl;
}

/* A payload that is an AARP message from AA (ICMP echo reply or UDP datagram). */
static void consider_answer(struct probe *p, const uint8_t *buf, size_t len, int how,
                            const struct attempt *by_seq)
{
    const char *what = how == HOW_UDP_ANSWER ? "UDP answer" : "ICMP answer";
    struct msg m;
    int rc = msg_decode(buf, len, &m);
    if (rc != MSG_OK) {
        LOGD("probe %s: ignored %s: malformed (%s)", p->aa_text, what, msg_code_name(rc));
        return;
    }
    if (m.kind != MSG_KIND_ANSWER) {
        LOGD("probe %s: ignored %s: a query, not an answer", p->aa_text, what);
        return;
    }
    const struct attempt *by_nonce = attempt_by_nonce(p, m.nonce);
    if (!by_nonce || (by_seq && by_seq != by_nonce)) {
        LOGD("probe %s: ignored %s: wrong nonce", p->aa_text, what);
        return;
    }
    if (!ip_equal(&m.anycast, p->aa)) {
        LOGD("probe %s: ignored %s: it is for another anycast address", p->aa_text, what);
        return;
    }
    /* Same rules as aarp/policy.py: a signed answer is checked whenever we hold the key. */
    int signed_ok = 0;
    if (m.has_tag && p->c->key_len) {
        if (m.key_id != p->c->key_id ||
            !msg_tag_valid(buf, &m, p->c->key, (size_t)p->c->key_len)) {
            LOGI("probe %s: ignored %s: key-id %d or tag does not match our key", p->aa_text,
                 what, m.key_id);
            return;
        }
        signed_ok = 1;
    }
    if (p->c->policy == POLICY_KEY && !signed_ok) {
        LOGI("probe %s: ignored %s: unsigned, and policy is key", p->aa_text, what);
        return;
    }
    struct ipaddr ua = {.af = p->aa->af};
    if (p->aa->af == AF_INET6 && m.has_unicast6)
        memcpy(ua.b, m.unicast6, 16);
    else if (p->aa->af == AF_INET && m.has_unicast4)
        memcpy(ua.b, m.unicast4, 4);
    else {
        LOGD("probe %s: ignored %s: no unicast address of this family", p->aa_text, what);
        return;
    }
    if (!ua_acceptable(p, &ua, what))
        return;
    accept_ua(p, &ua, how, m.ttl, signed_ok);
}

static void read_icmp(struct probe *p)
{
    uint8_t buf[BUF];
    for (;;) {
        struct sockaddr_storage from;
        socklen_t flen = sizeof from;
        ssize_t n = real.recvfrom(p->icmp_fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                LOGD("probe %s: ICMP receive: %s", p->aa_text, strerror(errno));
            return;
        }
        struct sockaddr_view src;
        if (sockaddr_read((struct sockaddr *)&from, flen, &src) != 0)
            continue;
        const uint8_t *icmp = buf;
        size_t len = (size_t)n;
        if (p->aa->af == AF_INET && p->icmp_raw) { /* raw IPv4 sockets include the IP header */
            size_t ihl = (size_t)(buf[0] & 0x0f) * 4;
            if (len < 20 || (buf[0] >> 4) != 4 || ihl < 20 || len < ihl)
                continue;
            icmp += ihl;
            len -= ihl;
        }
        if (len < 8)
            continue;
        int reply_type = p->aa->af == AF_INET ? ICMP_ECHOREPLY : ICMP6_ECHO_REPLY;
        if (icmp[0] != reply_type || icmp[1] != 0)
            continue;
        uint16_t ident = (uint16_t)(icmp[4] << 8 | icmp[5]);
        uint16_t seq = (uint16_t)(icmp[6] << 8 | icmp[7]);
        if (p->icmp_raw && ident != p->ident)
            continue; /* someone else's ping */
        const struct attempt *a = attempt_by_seq(p, seq);
        char from_text[64];
        ip_format(&src.ip, from_text, sizeof from_text);
        if (!a) {
            LOGD("probe %s: ignored echo reply from %s: unknown sequence", p->aa_text, from_text);
            continue;
        }
        const uint8_t *payload = icmp + 8;
        size_t plen = len - 8;
        int echoed = plen == MSG_QUERY_LEN && memcmp(payload, a->query, MSG_QUERY_LEN) == 0;
        if (!ip_equal(&src.ip, p->aa)) {
            /* The draft's answer: kernel anycast replies from the unicast address. */
            if (!echoed) {
                LOGD("probe %s: ignored echo reply from %s: payload is not our query",
                     p->aa_text, from_text);
                continue;
            }
            if (p->c->policy == POLICY_KEY) {
                LOGI("probe %s: ignored source-only answer from %s: policy key needs a tag",
                     p->aa_text, from_text);
                continue;
            }
            if (!ua_acceptable(p, &src.ip, "source-only answer"))
                continue;
            accept_ua(p, &src.ip, HOW_ICMP_SOURCE, SOURCE_TTL, 0);
            return;
        }
        if (echoed) {
            if (!p->plain_seen)
                LOGD("probe %s: plain echo reply from AA (it does not resolve); waiting %d ms "
                     "for an in-band answer", p->aa_text, p->c->grace_ms);
            p->plain_seen = 1;
            continue;
        }
        consider_answer(p, payload, plen, HOW_ICMP_ANSWER, a);
        if (p->r->state == RES_POSITIVE)
            return;
    }
}

static void read_udp(struct probe *p)
{
    uint8_t buf[BUF];
    for (;;) {
        ssize_t n = real.recvfrom(p->udp_fd, buf, sizeof buf, 0, NULL, NULL);
        if (n < 0) {
            if (errno == ECONNREFUSED) {
                if (!p->plain_seen)
                    LOGD("probe %s: UDP port %d unreachable (no responder); waiting %d ms",
                         p->aa_text, p->c->port, p->c->grace_ms);
                p->plain_seen = 1;
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                LOGD("probe %s: UDP receive: %s", p->aa_text, strerror(errno));
            return;
        }
        consider_answer(p, buf, (size_t)n, HOW_UDP_ANSWER, NULL);
        if (p->r->state == RES_POSITIVE)
            return;
    }
}

int probe_resolve(const struct aarp_config *c, const struct ipaddr *aa, struct resolution *r)
{
    struct probe p = {.c = c, .aa = aa, .icmp_fd = -1, .udp_fd = -1, .r = r};
    memset(r, 0, sizeof *r);
    r->state = RES_FAILED;
    ip_format(aa, p.aa_text, sizeof p.aa_text);
    int rc = 0;
    if (c->method != METHOD_UDP)
        open_icmp(&p);
    if (c->method != METHOD_ICMP)
        open_udp(&p);
    if (p.icmp_fd < 0 && p.udp_fd < 0) {
        LOGI("probe %s: no socket to probe with", p.aa_text);
        goto out;
    }
    if (random_bytes(&p.ident, sizeof p.ident) != 0) {
        LOGE("probe %s: no random numbers for a nonce", p.aa_text);
        goto out;
    }
    int64_t start = now_ms(), plain_deadline = -1;
    for (int i = 0; i <= c->retries && i < MAX_ATTEMPTS; i++) {
        struct attempt *a = &p.at[p.n_at];
        if (random_bytes(a->nonce, sizeof a->nonce) != 0 ||
            random_bytes(&a->seq, sizeof a->seq) != 0) {
            LOGE("probe %s: no random numbers for a nonce", p.aa_text);
            goto out;
        }
        msg_encode_query(a->nonce, MSG_QUERY_LEN, a->query);
        p.n_at++;
        if (send_attempt(&p, a) == 0)
            goto out; /* nowhere to send (no route...): waiting would only delay */
        LOGD("probe %s: query %d sent", p.aa_text, i + 1);
        int64_t deadline = now_ms() + c->timeout_ms;
        for (;;) {
            int64_t now = now_ms();
            if (p.plain_seen && plain_deadline < 0)
                plain_deadline = now + c->grace_ms;
            int64_t until = plain_deadline >= 0 && plain_deadline < deadline ? plain_deadline
                                                                               : deadline;
            if (now >= until)
                break;
            struct pollfd fds[2];
            int nfds = 0;
            if (p.icmp_fd >= 0)
                fds[nfds++] = (struct pollfd){.fd = p.icmp_fd, .events = POLLIN};
            if (p.udp_fd >= 0)
                fds[nfds++] = (struct pollfd){.fd = p.udp_fd, .events = POLLIN};
            int ready = poll(fds, (nfds_t)nfds, (int)(until - now));
            if (ready < 0 && errno == EINTR) {
                LOGI("probe %s: interrupted by a signal: fail open", p.aa_text);
                rc = -1;
                goto out;
            }
            if (ready < 0) {
                LOGI("probe %s: poll: %s: fail open", p.aa_text, strerror(errno));
                goto out;
            }
            if (ready == 0)
                continue;
            for (int k = 0; k < nfds && r->state != RES_POSITIVE; k++) {
                if (!fds[k].revents)
                    continue;
                if (fds[k].fd == p.icmp_fd)
                    read_icmp(&p);
                else
                    read_udp(&p);
            }
            if (r->state == RES_POSITIVE) {
                char ua[64];
                ip_format(&r->ua, ua, sizeof ua);
                LOGD("probe %s: answer %s (%s) after %lld ms, ttl %u s", p.aa_text, ua,
                     r->how == HOW_ICMP_SOURCE ? "ICMP source" :
                     r->how == HOW_ICMP_ANSWER ? "ICMP in-band" : "UDP in-band",
                     (long long)(now_ms() - start), r->ttl);
                goto out;
            }
        }
        if (p.plain_seen)
            break; /* AA answered: retrying would get the same plain reply */
    }
    if (p.plain_seen) {
        r->state = RES_NEGATIVE;
        r->ttl = c->negative_ttl;
        LOGD("probe %s: AA answers but does not resolve: use it unchanged for %u s",
             p.aa_text, r->ttl);
    } else {
        r->ttl = c->failure_ttl;
        LOGI("probe %s: no answer after %lld ms: fail open for %u s", p.aa_text,
             (long long)(now_ms() - start), r->ttl);
    }
out:
    if (r->state == RES_FAILED && !r->ttl)
        r->ttl = c->failure_ttl;
    if (p.icmp_fd >= 0)
        ownfd_close(p.icmp_fd);
    if (p.udp_fd >= 0)
        ownfd_close(p.udp_fd);
    r->expires = now_ms() + (int64_t)r->ttl * 1000;
    return rc;
}
