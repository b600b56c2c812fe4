/* TUN offloads: what lets one read or write carry many packets.
 *
 * Out of the device (IFF_VNET_HDR + TSO/USO): the kernel hands over TCP or UDP super-packets
 * of up to 64 KiB; fp_segment cuts them into the packets the wire carries (the peers expect
 * one inner IP packet per datagram), completing the checksums the kernel left to "hardware".
 *
 * Into the device: fp_coalescer merges consecutive TCP segments (and equal-sized UDP
 * datagrams, when the kernel takes USO) of one flow into one GSO write, the way the kernel's
 * own GRO would: same headers, contiguous sequence numbers, checksums verified first.
 * Anything unusual (IP options, extension headers, SYN/FIN/RST/URG/ECN flags, bad checksums,
 * fragments) is written on its own, unchanged. Packets of one flow keep their order; packets
 * of different flows may pass each other, as with the kernel's GRO.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"

#define PROTO_TCP 6
#define PROTO_UDP 17

/* ---- checksums ------------------------------------------------------------------------------ */

uint32_t fp_csum_add(uint32_t sum, const uint8_t *p, size_t len) {
    uint64_t acc = sum;
    while (len >= 8) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        acc += (uint64_t)a + b; /* native-order sums fold to the same 16-bit result */
        p += 8;
        len -= 8;
    }
    if (len >= 4) {
        uint32_t a;
        memcpy(&a, p, 4);
        acc += a;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t a;
        memcpy(&a, p, 2);
        acc += a;
        p += 2;
        len -= 2;
    }
    if (len) {
        uint16_t a = 0;
        memcpy(&a, p, 1); /* an odd last byte is summed as if followed by a zero byte */
        acc += a;
    }
    while (acc >> 32)
        acc = (acc & 0xffffffffu) + (acc >> 32);
    return (uint32_t)acc;
}

/* Folds a native-order sum; the result is in network byte order, ready to store. */
uint16_t fp_csum_fold(uint32_t sum) {
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

static uint32_t pseudo_sum(const uint8_t *ip, int v6, uint8_t proto, uint32_t l4len) {
    uint8_t tail[8] = {0};
    uint32_t s;
    if (v6) {
        s = fp_csum_add(0, ip + 8, 32);
        wr32(tail, l4len);
        tail[7] = proto;
        return fp_csum_add(s, tail, 8);
    }
    s = fp_csum_add(0, ip + 12, 8);
    tail[1] = proto;
    wr16(tail + 2, (uint16_t)l4len);
    return fp_csum_add(s, tail, 4);
}

static void store_csum(uint8_t *field, uint16_t folded_native, int udp) {
    uint16_t v = (uint16_t)~folded_native;
    if (udp && v == 0)
        v = 0xffff;
    memcpy(field, &v, 2);
}

static void ipv4_fix_csum(uint8_t *ip, size_t ihl) {
    ip[10] = ip[11] = 0;
    store_csum(ip + 10, fp_csum_fold(fp_csum_add(0, ip, ihl)), 0);
}

/* ---- parsing ------------------------------------------------------------------------------- */

typedef struct l4info {
    int v6;
    size_t iphl;   /* IP header length */
    uint8_t proto;
    size_t l4hl;   /* TCP header length, or 8 for UDP */
} l4info;

/* A plain IPv4 (any IHL) or IPv6 (no extension headers) packet carrying TCP or UDP, not a
 * fragment: returns 1 and fills *li. */
static int parse_l4(const uint8_t *p, size_t len, l4info *li) {
    if (len < 20)
        return 0;
    if (p[0] >> 4 == 4) {
        size_t ihl = (size_t)(p[0] & 15) * 4;
        if (ihl < 20 || len < ihl || rd16(p + 2) != len || (rd16(p + 6) & 0x3fff))
            return 0;
        li->v6 = 0;
        li->iphl = ihl;
        li->proto = p[9];
    } else if (p[0] >> 4 == 6) {
        if (len < 40 || (size_t)rd16(p + 4) + 40 != len)
            return 0;
        li->v6 = 1;
        li->iphl = 40;
        li->proto = p[6];
    } else {
        return 0;
    }
    if (li->proto == PROTO_TCP) {
        if (len < li->iphl + 20)
            return 0;
        li->l4hl = (size_t)(p[li->iphl + 12] >> 4) * 4;
        if (li->l4hl < 20 || len < li->iphl + li->l4hl)
            return 0;
    } else if (li->proto == PROTO_UDP) {
        if (len < li->iphl + 8 || rd16(p + li->iphl + 4) != len - li->iphl)
            return 0;
        li->l4hl = 8;
    } else {
        return 0;
    }
    return 1;
}

/* ---- out of the device: segmentation -------------------------------------------------------- */

static void complete_csum(uint8_t *pkt, size_t len, const fp_vnet_hdr *vh) {
    size_t start = vh->csum_start, off = vh->csum_offset;
    if (start + off + 2 > len)
        return;
    uint16_t folded = fp_csum_fold(fp_csum_add(0, pkt + start, len - start));
    l4info li;
    int udp = parse_l4(pkt, len, &li) && li.proto == PROTO_UDP;
    store_csum(pkt + start + off, folded, udp);
}

int fp_segment(const fp_vnet_hdr *vh, uint8_t *pkt, size_t len, uint8_t *scratch,
               size_t scratch_cap, size_t max_piece, fp_emit_fn emit, void *ctx) {
    uint8_t gso = vh->gso_type & (uint8_t)~FP_GSO_ECN;
    if (gso == FP_GSO_NONE) {
        if (vh->flags & FP_VNET_F_NEEDS_CSUM)
            complete_csum(pkt, len, vh);
        emit(ctx, pkt, len);
        return 1;
    }
    l4info li;
    if (!parse_l4(pkt, len, &li))
        return -1;
    int tcp = li.proto == PROTO_TCP;
    if ((gso == FP_GSO_UDP_L4) == tcp || (gso == FP_GSO_TCPV6) != (tcp && li.v6) ||
        (gso == FP_GSO_TCPV4) != (tcp && !li.v6))
        return -1;
    size_t hl = li.iphl + li.l4hl, mss = vh->gso_size;
    if (!mss || len <= hl || hl + mss > scratch_cap)
        return -1;
    if (hl + mss > max_piece)
        return -2; /* segments too big for the tunnel: the sender must learn a smaller MTU */
    size_t payload = len - hl;
    uint16_t id = li.v6 ? 0 : rd16(pkt + 4);
    uint32_t seq = tcp ? rd32(pkt + li.iphl + 4) : 0;
    uint8_t tflags = tcp ? pkt[li.iphl + 13] : 0;
    int n = 0;
    for (size_t off = 0; off < payload; off += mss, n++) {
        size_t chunk = payload - off < mss ? payload - off : mss;
        int last = off + chunk >= payload;
        uint8_t *p = scratch;
        memcpy(p, pkt, hl);
        memcpy(p + hl, pkt + hl + off, chunk);
        size_t plen = hl + chunk;
        uint8_t *l4 = p + li.iphl;
        if (li.v6) {
            wr16(p + 4, (uint16_t)(plen - 40));
        } else {
            wr16(p + 2, (uint16_t)plen);
            wr16(p + 4, (uint16_t)(id + n));
            ipv4_fix_csum(p, li.iphl);
        }
        if (tcp) {
            wr32(l4 + 4, seq + (uint32_t)off);
            uint8_t f = tflags;
            if (!last)
                f &= (uint8_t) ~(0x01 | 0x08); /* FIN, PSH only on the last segment */
            if (n)
                f &= (uint8_t)~0x80; /* CWR only on the first */
            l4[13] = f;
            l4[16] = l4[17] = 0;
        } else {
            wr16(l4 + 4, (uint16_t)(plen - li.iphl));
            l4[6] = l4[7] = 0;
        }
        uint32_t s = pseudo_sum(p, li.v6, li.proto, (uint32_t)(plen - li.iphl));
        s = fp_csum_add(s, l4, plen - li.iphl);
        store_csum(l4 + (tcp ? 16 : 6), fp_csum_fold(s), !tcp);
        emit(ctx, p, plen);
    }
    return n;
}

/* ---- into the device: coalescing ------------------------------------------------------------ */

#define CO_MAX_ENTRIES 512 /* writes per flush */
#define CO_MAX_SEGS 64     /* packets per super-packet (the kernel's UDP GSO limit) */
#define CO_MAX_OPEN 8      /* flows that may grow at once */
#define CO_MAX_HDR 120     /* IPv4 with options + TCP with options */

typedef struct entry {
    const uint8_t *first;  /* the first packet, header template */
    size_t first_len;
    l4info li;
    int kind;              /* 0: alone, 1: TCP super-packet, 2: UDP super-packet */
    int verified;          /* checksum checked (may tell the kernel DATA_VALID) */
    int count;
    size_t seg;            /* payload bytes per segment */
    size_t payload;        /* payload bytes of all segments */
    uint32_t next_seq;
    uint16_t next_id;
    uint8_t psh;
    struct iovec segs[CO_MAX_SEGS];
} entry;

struct fp_coalescer {
    int fd;
    bool tcp, uso;
    int n;
    int open[CO_MAX_OPEN]; /* indexes of entries that may still grow */
    int nopen;
    uint64_t merged, errors, writes;
    entry e[CO_MAX_ENTRIES];
};

fp_coalescer *fp_coalescer_new(int dev_fd, bool tcp, bool uso) {
    fp_coalescer *c = calloc(1, sizeof(*c));
    if (c) {
        c->fd = dev_fd;
        c->tcp = tcp;
        c->uso = uso;
    }
    return c;
}

void fp_coalescer_free(fp_coalescer *c) { free(c); }

uint64_t fp_coalescer_take_merged(fp_coalescer *c) {
    uint64_t v = c->merged;
    c->merged = 0;
    return v;
}

uint64_t fp_coalescer_take_errors(fp_coalescer *c) {
    uint64_t v = c->errors;
    c->errors = 0;
    return v;
}

uint64_t fp_coalescer_take_writes(fp_coalescer *c) {
    uint64_t v = c->writes;
    c->writes = 0;
    return v;
}

static int l4_csum_ok(const uint8_t *p, size_t len, const l4info *li) {
    const uint8_t *l4 = p + li->iphl;
    if (li->proto == PROTO_UDP && !li->v6 && l4[6] == 0 && l4[7] == 0)
        return 1; /* IPv4 UDP without a checksum */
    uint32_t s = pseudo_sum(p, li->v6, li->proto, (uint32_t)(len - li->iphl));
    return fp_csum_fold(fp_csum_add(s, l4, len - li->iphl)) == 0xffff;
}

/* Same flow and same header fields that must not change inside one super-packet. */
static int same_headers(const entry *e, const uint8_t *p, const l4info *li) {
    const uint8_t *f = e->first;
    if (li->v6 != e->li.v6 || li->proto != e->li.proto || li->iphl != e->li.iphl ||
        li->l4hl != e->li.l4hl)
        return 0;
    if (li->v6) {
        if (memcmp(f, p, 4) || f[7] != p[7] || memcmp(f + 8, p + 8, 32))
            return 0; /* version/class/flow label, hop limit, addresses */
    } else {
        if (f[1] != p[1] || f[8] != p[8] || memcmp(f + 6, p + 6, 2) || memcmp(f + 12, p + 12, 8)
            || memcmp(f + 20, p + 20, li->iphl - 20))
            return 0; /* TOS, TTL, DF, addresses, options */
    }
    const uint8_t *a = f + li->iphl, *b = p + li->iphl;
    if (memcmp(a, b, 4))
        return 0; /* ports */
    if (li->proto == PROTO_TCP)
        /* ack, data offset, window, options; flags are checked by the caller */
        return !memcmp(a + 8, b + 8, 5) && !memcmp(a + 14, b + 14, 2) &&
               !memcmp(a + 20, b + 20, li->l4hl - 20);
    return 1;
}

static void write_entry(fp_coalescer *c, entry *e) {
    fp_vnet_hdr vh;
    memset(&vh, 0, sizeof(vh));
    uint8_t hdr[CO_MAX_HDR];
    struct iovec iov[CO_MAX_SEGS + 2];
    int niov = 0;
    iov[niov++] = (struct iovec){&vh, sizeof(vh)};
    if (e->count <= 1) {
        if (e->verified)
            vh.flags = FP_VNET_F_DATA_VALID;
        iov[niov++] = (struct iovec){(void *)e->first, e->first_len};
    } else {
        size_t hl = e->li.iphl + e->li.l4hl, total = hl + e->payload;
        memcpy(hdr, e->first, hl);
        uint8_t *l4 = hdr + e->li.iphl;
        if (e->li.v6) {
            wr16(hdr + 4, (uint16_t)(total - 40));
        } else {
            wr16(hdr + 2, (uint16_t)total);
            ipv4_fix_csum(hdr, e->li.iphl);
        }
        int tcp = e->kind == 1;
        if (tcp) {
            l4[13] |= e->psh;
            l4[16] = l4[17] = 0;
        } else {
            wr16(l4 + 4, (uint16_t)(total - e->li.iphl));
            l4[6] = l4[7] = 0;
        }
        /* partial checksum: the pseudo header only, not complemented (CHECKSUM_PARTIAL) */
        uint16_t partial = fp_csum_fold(pseudo_sum(hdr, e->li.v6, e->li.proto,
                                                   (uint32_t)(total - e->li.iphl)));
        memcpy(l4 + (tcp ? 16 : 6), &partial, 2);
        vh.flags = FP_VNET_F_NEEDS_CSUM;
        vh.gso_type = tcp ? (e->li.v6 ? FP_GSO_TCPV6 : FP_GSO_TCPV4) : FP_GSO_UDP_L4;
        vh.gso_size = (uint16_t)e->seg;
        vh.hdr_len = (uint16_t)hl;
        vh.csum_start = (uint16_t)e->li.iphl;
        vh.csum_offset = tcp ? 16 : 6;
        iov[niov++] = (struct iovec){hdr, hl};
        for (int i = 0; i < e->count; i++)
            iov[niov++] = e->segs[i];
        c->merged += (uint64_t)(e->count - 1);
    }
    ssize_t w;
    do
        w = writev(c->fd, iov, niov);
    while (w < 0 && errno == EINTR);
    if (w < 0)
        c->errors++;
    else
        c->writes++;
}

void fp_coalescer_flush(fp_coalescer *c) {
    for (int i = 0; i < c->n; i++)
        write_entry(c, &c->e[i]);
    c->n = 0;
    c->nopen = 0;
}

static void close_open(fp_coalescer *c, int k) {
    c->open[k] = c->open[--c->nopen];
}

static entry *new_entry(fp_coalescer *c, const uint8_t *pkt, size_t len) {
    if (c->n == CO_MAX_ENTRIES)
        fp_coalescer_flush(c);
    entry *e = &c->e[c->n++];
    e->first = pkt;
    e->first_len = len;
    e->kind = 0;
    e->verified = 0;
    e->count = 1;
    e->psh = 0;
    return e;
}

/* The open super-packet of p's flow (addresses, protocol, ports), or -1. */
static int open_of_flow(const fp_coalescer *c, const uint8_t *p, const l4info *li) {
    for (int k = 0; k < c->nopen; k++) {
        const entry *e = &c->e[c->open[k]];
        const uint8_t *f = e->first;
        if (li->v6 == e->li.v6 && li->proto == e->li.proto &&
            !(li->v6 ? memcmp(f + 8, p + 8, 32) : memcmp(f + 12, p + 12, 8)) &&
            !memcmp(f + e->li.iphl, p + li->iphl, 4))
            return k;
    }
    return -1;
}

/* A packet that is written on its own. Nothing queued later may join a super-packet queued
 * before it if that would reorder them: one of an unknown shape (fragment, not TCP/UDP,
 * inconsistent lengths) ends every open super-packet, one of a known flow ends its flow's. */
static void add_alone(fp_coalescer *c, const uint8_t *pkt, size_t len, const l4info *li) {
    if (!li)
        c->nopen = 0;
    else {
        int k = open_of_flow(c, pkt, li);
        if (k >= 0)
            close_open(c, k);
    }
    new_entry(c, pkt, len);
}

void fp_coalescer_add(fp_coalescer *c, const uint8_t *pkt, size_t len) {
    l4info li;
    if (!parse_l4(pkt, len, &li)) {
        add_alone(c, pkt, len, NULL);
        return;
    }
    int tcp = li.proto == PROTO_TCP;
    const uint8_t *l4 = pkt + li.iphl;
    size_t hl = li.iphl + li.l4hl, pay = len - hl;
    uint8_t flags = tcp ? l4[13] : 0;
    /* ACK required; PSH allowed (it ends the super-packet); nothing else. Checksums first,
     * as the kernel's GRO does: a damaged packet goes through unchanged (the kernel drops it
     * and counts the error), never inside a super-packet with fresh checksums. */
    int mergeable = (tcp ? c->tcp : c->uso) && pay > 0 &&
                    (!tcp || (flags & ~0x08) == 0x10) && (li.v6 || (pkt[6] & 0x40) || !tcp) &&
                    (li.v6 || fp_csum_fold(fp_csum_add(0, pkt, li.iphl)) == 0xffff) &&
                    l4_csum_ok(pkt, len, &li);
    if (!mergeable) {
        add_alone(c, pkt, len, &li);
        return;
    }
    uint16_t id = li.v6 ? 0 : rd16(pkt + 4);
    uint32_t seq = tcp ? rd32(l4 + 4) : 0;
    int k = open_of_flow(c, pkt, &li);
    if (k >= 0) {
        /* this flow's open super-packet: join it, or close it and start afresh */
        entry *e = &c->e[c->open[k]];
        int fits = same_headers(e, pkt, &li) && (!tcp || seq == e->next_seq) &&
                   (li.v6 || id == e->next_id) && pay <= e->seg && e->count < CO_MAX_SEGS &&
                   e->payload + pay + hl <= 65535;
        if (fits) {
            e->segs[e->count++] = (struct iovec){(void *)(pkt + hl), pay};
            e->payload += pay;
            e->next_seq += (uint32_t)pay;
            e->next_id++;
            if (tcp && (flags & 0x08)) {
                e->psh = 0x08;
                close_open(c, k);
            } else if (pay < e->seg) {
                close_open(c, k);
            }
            return;
        }
        close_open(c, k);
    }
    entry *e = new_entry(c, pkt, len);
    e->li = li;
    e->verified = 1;
    if (tcp && (flags & 0x08))
        return; /* PSH on the first segment: nothing may follow it */
    e->kind = tcp ? 1 : 2;
    e->seg = pay;
    e->payload = pay;
    e->segs[0] = (struct iovec){(void *)(pkt + hl), pay};
    e->next_seq = seq + (uint32_t)pay;
    e->next_id = (uint16_t)(id + 1);
    if (c->nopen == CO_MAX_OPEN)
        close_open(c, 0);
    c->open[c->nopen++] = (int)(e - c->e);
}

long fp_offload_coalesce(int fd, int tcp, int uso, const uint8_t *buf, const uint32_t *lens,
                         size_t n) {
    fp_coalescer *c = fp_coalescer_new(fd, tcp != 0, uso != 0);
    if (!c)
        return -1;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        fp_coalescer_add(c, buf + off, lens[i]);
        off += lens[i];
    }
    fp_coalescer_flush(c);
    long merged = (long)fp_coalescer_take_merged(c);
    fp_coalescer_free(c);
    return merged;
}
