/* GRO coalescing (relay/fastpath/offload.c fp_offload_coalesce): any batch of inner packets
 * as the engine receives them. What is written to the device (here a socketpair, one
 * datagram per write) must be, after the kernel's segmentation (here fp_segment), exactly the
 * packets that went in: nothing dropped, added or changed except the checksums a merge
 * recomputes and the urgent pointer of segments without URG; packets of one TCP/UDP flow in
 * their order; a packet of no known flow stays in place relative to every other packet.
 * Input: one byte of options (TCP, USO), then packets as 2-byte length + bytes. */
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "offload_common.h"

#define MAX_PACKETS 200
#define SCRATCH 65600
#define MAX_WRITES (MAX_PACKETS + 1)

typedef struct packet {
    const uint8_t *p;
    size_t len;
    int known; /* a TCP/UDP packet the coalescer may merge (else: "no known flow") */
    int matched;
    size_t barriers; /* packets of no known flow before this one */
} packet;

/* ---- what was written: a reader thread collects the datagrams -------------------------- */

static int sv[2] = {-1, -1};
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static uint8_t *writes[MAX_WRITES + 1];
static size_t write_len[MAX_WRITES + 1], nwrites;
static int done;

static void *collect_writes(void *arg) {
    (void)arg;
    static uint8_t buf[70000];
    for (;;) {
        ssize_t n = recv(sv[1], buf, sizeof buf, 0);
        CHECK(n >= 0);
        pthread_mutex_lock(&mu);
        if (n == 1) { /* the end marker: a write always carries at least a vnet header */
            done = 1;
            pthread_cond_signal(&cv);
        } else {
            CHECK(nwrites < MAX_WRITES);
            writes[nwrites] = exact_copy(buf, (size_t)n);
            write_len[nwrites++] = (size_t)n;
        }
        pthread_mutex_unlock(&mu);
    }
    return NULL;
}

static void setup(void) {
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) == 0);
    int size = 4 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, collect_writes, NULL) == 0);
    pthread_detach(th);
}

/* ---- flows, by the coalescer's rules -------------------------------------------------------- */

/* A TCP/UDP packet of consistent lengths, not a fragment: 1 and its IP header length. */
static int known_flow(const uint8_t *p, size_t len, size_t *iphl_out) {
    size_t iphl;
    uint8_t proto;
    if (len < 20)
        return 0;
    if (p[0] >> 4 == 4) {
        iphl = (size_t)(p[0] & 15) * 4;
        if (iphl < 20 || len < iphl || rd16(p + 2) != len || (rd16(p + 6) & 0x3fff))
            return 0;
        proto = p[9];
    } else if (p[0] >> 4 == 6) {
        if (len < 40 || (size_t)rd16(p + 4) + 40 != len)
            return 0;
        iphl = 40;
        proto = p[6];
    } else {
        return 0;
    }
    if (proto == 6) {
        if (len < iphl + 20 || (size_t)(p[iphl + 12] >> 4) * 4 < 20 ||
            len < iphl + (size_t)(p[iphl + 12] >> 4) * 4)
            return 0;
    } else if (proto != 17 || len < iphl + 8 || rd16(p + iphl + 4) != len - iphl) {
        return 0;
    }
    *iphl_out = iphl;
    return 1;
}

static int same_flow(const uint8_t *a, const uint8_t *b) {
    size_t ia, ib;
    known_flow(a, a[0] >> 4 == 6 ? 40 + (size_t)rd16(a + 4) : rd16(a + 2), &ia);
    known_flow(b, b[0] >> 4 == 6 ? 40 + (size_t)rd16(b + 4) : rd16(b + 2), &ib);
    if (a[0] >> 4 != b[0] >> 4)
        return 0;
    int v6 = a[0] >> 4 == 6;
    if (v6 ? (a[6] != b[6] || memcmp(a + 8, b + 8, 32)) : (a[9] != b[9] || memcmp(a + 12, b + 12, 8)))
        return 0;
    return !memcmp(a + ia, b + ib, 4);
}

/* The byte ranges a merge may rewrite: L4 checksum, and the urgent pointer without URG. */
static int may_differ(const uint8_t *p, size_t at) {
    int v6 = p[0] >> 4 == 6;
    size_t iphl = v6 ? 40 : (size_t)(p[0] & 15) * 4;
    uint8_t proto = v6 ? p[6] : p[9];
    if (at < iphl)
        return 0;
    size_t off = at - iphl;
    if (proto == 17)
        return off == 6 || off == 7;
    return off == 16 || off == 17 || ((off == 18 || off == 19) && !(p[iphl + 13] & 0x20));
}

typedef struct expect {
    packet *pk;
    size_t n;
    size_t last_rank; /* order of packets of no known flow relative to all others */
} expect;

static void match(expect *ex, const uint8_t *got, size_t len, int rewritten) {
    size_t iphl;
    int known = known_flow(got, len, &iphl);
    packet *want = NULL;
    for (size_t i = 0; i < ex->n && !want; i++)
        if (!ex->pk[i].matched && ex->pk[i].known == known &&
            (!known || same_flow(ex->pk[i].p, got)))
            want = &ex->pk[i]; /* the next unwritten packet of this flow */
    CHECK(want != NULL && want->len == len);
    for (size_t i = 0; i < len; i++)
        CHECK(got[i] == want->p[i] || (rewritten && may_differ(want->p, i)));
    want->matched = 1;
    size_t rank = 2 * want->barriers + !want->known;
    CHECK(rank >= ex->last_rank); /* nothing passed a packet of no known flow */
    ex->last_rank = rank;
}

static void on_segment(void *ctx, uint8_t *pkt, size_t len) {
    match(ctx, pkt, len, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (sv[0] < 0)
        setup();
    reader r = {data, size};
    uint8_t opts = rd_u8(&r);
    static packet pk[MAX_PACKETS];
    static uint32_t lens[MAX_PACKETS];
    size_t n = 0, barriers = 0;
    uint8_t *buf = malloc(size + 1);
    CHECK(buf != NULL);
    size_t used = 0;
    while (r.n >= 2 && n < MAX_PACKETS) {
        size_t got, iphl, want = rd_u16(&r) % 2048;
        const uint8_t *p = rd_bytes(&r, want, &got);
        memcpy(buf + used, p, got);
        int known = known_flow(p, got, &iphl);
        pk[n] = (packet){p, got, known, 0, barriers};
        barriers += !known;
        lens[n++] = (uint32_t)got;
        used += got;
    }
    long merged = fp_offload_coalesce(sv[0], opts & 1, opts & 2, buf, lens, n);
    CHECK(send(sv[0], "", 1, 0) == 1);
    pthread_mutex_lock(&mu);
    while (!done)
        pthread_cond_wait(&cv, &mu);
    done = 0;
    pthread_mutex_unlock(&mu);
    CHECK(merged >= 0 && (size_t)merged < (n ? n : 1));
    CHECK(nwrites + (size_t)merged == n);

    expect ex = {pk, n, 0};
    static uint8_t scratch[SCRATCH];
    for (size_t w = 0; w < nwrites; w++) {
        fp_vnet_hdr vh;
        CHECK(write_len[w] >= sizeof vh);
        memcpy(&vh, writes[w], sizeof vh);
        const uint8_t *p = writes[w] + sizeof vh;
        size_t len = write_len[w] - sizeof vh;
        if (vh.gso_type == FP_GSO_NONE) {
            match(&ex, p, len, 0);
        } else {
            CHECK(len >= 40 && vh.hdr_len < len);
            if (p[0] >> 4 == 4)
                CHECK(ipv4_header_valid(p, (size_t)(p[0] & 15) * 4));
            uint8_t *super = exact_copy(p, len);
            CHECK(fp_segment(&vh, super, len, scratch, sizeof scratch, SCRATCH, on_segment,
                             &ex) >= 2);
            free(super);
        }
        free(writes[w]);
    }
    nwrites = 0;
    for (size_t i = 0; i < n; i++)
        CHECK(pk[i].matched); /* nothing lost */
    free(buf);
    return 0;
}
