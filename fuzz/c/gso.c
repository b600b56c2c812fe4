/* GSO segmentation (relay/fastpath/offload.c fp_segment): any vnet header and packet read
 * from a TUN device. A malformed super-packet is refused; the pieces of a good one each fit
 * the tunnel, carry valid lengths and checksums, and together carry exactly its payload.
 * Input: 10-byte virtio_net_hdr, 2 bytes of largest piece, the packet. */
#include "offload_common.h"

#define SCRATCH 65600

typedef struct seen {
    const uint8_t *orig;
    size_t orig_len, hl, max_piece, payload, pieces;
    int gso;
} seen;

static void on_piece(void *ctx, uint8_t *pkt, size_t len) {
    seen *s = ctx;
    s->pieces++;
    if (!s->gso) {
        CHECK(len == s->orig_len);
        return;
    }
    CHECK(len <= s->max_piece && len > s->hl);
    int v6 = pkt[0] >> 4 == 6;
    size_t iphl = v6 ? 40 : (size_t)(pkt[0] & 15) * 4;
    if (v6) {
        CHECK((size_t)rd16(pkt + 4) + 40 == len);
    } else {
        CHECK(rd16(pkt + 2) == len && ipv4_header_valid(pkt, iphl));
    }
    uint8_t proto = v6 ? pkt[6] : pkt[9];
    CHECK(proto == 6 || proto == 17);
    CHECK(l4_checksum_valid(pkt, len, v6, iphl, proto));
    /* the payload continues where the previous piece stopped */
    CHECK(!memcmp(pkt + s->hl, s->orig + s->hl + s->payload, len - s->hl));
    s->payload += len - s->hl;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    reader r = {data, size};
    fp_vnet_hdr vh;
    size_t got;
    const uint8_t *h = rd_bytes(&r, sizeof vh, &got);
    if (got < sizeof vh)
        return 0;
    memcpy(&vh, h, sizeof vh);
    size_t max_piece = rd_u16(&r);
    const uint8_t *orig = r.p;
    size_t len = r.n;
    uint8_t *pkt = exact_copy(orig, len);
    static uint8_t scratch[SCRATCH];
    seen s = {orig, len, 0, max_piece, 0, 0, (vh.gso_type & ~FP_GSO_ECN) != FP_GSO_NONE};
    if (s.gso && len >= 20) {
        /* header length as fp_segment computes it, for the checks in on_piece */
        int v6 = orig[0] >> 4 == 6;
        size_t iphl = v6 ? 40 : (size_t)(orig[0] & 15) * 4;
        uint8_t proto = v6 ? (len > 6 ? orig[6] : 0) : orig[9];
        size_t l4hl = proto == 6 && len >= iphl + 13 ? (size_t)(orig[iphl + 12] >> 4) * 4 : 8;
        s.hl = iphl + l4hl;
    }
    int n = fp_segment(&vh, pkt, len, scratch, sizeof scratch, max_piece, on_piece, &s);
    CHECK(n == -1 || n == -2 || (n >= 1 && (size_t)n == s.pieces));
    if (n < 0)
        CHECK(s.pieces == 0);
    if (n > 0 && s.gso)
        CHECK(s.payload == len - s.hl); /* every byte, once, in order */
    free(pkt);
    return 0;
}
