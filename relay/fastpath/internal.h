/* Internal interfaces between the fast path's C files (not part of the cffi API). */
#ifndef FASTPATH_INTERNAL_H
#define FASTPATH_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fastpath.h"

#define FP_PT_IPV4 0x0800
#define FP_PT_IPV6 0x86DD
#define FP_PT_ETHERNET 0x6558

/* Datagram layout with the payload already in place at d + FP_DATA_OFF. */
#define FP_DATA_OFF (FP_HEADER_LEN + FP_PTYPE_LEN)

/* Seal in place: d[FP_DATA_OFF .. +len) holds the payload, room for the tag follows.
 * Returns the datagram length. */
size_t fp_seal_inplace(fp_satp *s, uint8_t *d, size_t len, uint32_t seq, uint16_t sid,
                       uint16_t mux, uint16_t ptype);
/* Open in place: returns the payload length (payload at d + FP_DATA_OFF) or an error. */
long fp_open_inplace(fp_satp *s, uint8_t *d, size_t len, fp_hdr *h);

/* AES-128, -192 or -256: the key lengths SATP's cipher and key derivation take. */
static inline bool fp_aes_key_len_ok(int n) { return n == 16 || n == 24 || n == 32; }

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ---- inner packet offloads (offload.c) ----------------------------------------------------- */

/* struct virtio_net_hdr, as TUN with IFF_VNET_HDR reads and writes it (10 bytes). */
typedef struct fp_vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;    /* host byte order (little-endian virtio on x86 and arm64) */
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
} __attribute__((packed)) fp_vnet_hdr;

#define FP_VNET_F_NEEDS_CSUM 1
#define FP_VNET_F_DATA_VALID 2
#define FP_GSO_NONE 0
#define FP_GSO_TCPV4 1
#define FP_GSO_UDP 3
#define FP_GSO_TCPV6 4
#define FP_GSO_UDP_L4 5
#define FP_GSO_ECN 0x80

/* Ones'-complement sum helpers (RFC 1071), folded at the end. */
uint32_t fp_csum_add(uint32_t sum, const uint8_t *p, size_t len);
uint16_t fp_csum_fold(uint32_t sum);

/* Splits a packet read from a vnet-hdr TUN into wire-ready inner packets.
 * `emit(ctx, pkt, len)` is called for each piece with a pointer into scratch memory that is
 * valid only during the call. Checksums left to the device (NEEDS_CSUM) are completed.
 * Returns the number of pieces, -1 for a malformed packet (dropped), or -2 when its segments
 * would not fit max_piece (the caller hands it to the slow path, which answers with ICMP). */
typedef void (*fp_emit_fn)(void *ctx, uint8_t *pkt, size_t len);
int fp_segment(const fp_vnet_hdr *vh, uint8_t *pkt, size_t len, uint8_t *scratch,
               size_t scratch_cap, size_t max_piece, fp_emit_fn emit, void *ctx);

/* Coalescing of received inner packets into GSO super-packets for a vnet-hdr TUN. */
typedef struct fp_coalescer fp_coalescer;
fp_coalescer *fp_coalescer_new(int dev_fd, bool tcp, bool uso);
void fp_coalescer_free(fp_coalescer *c);
/* Queue one inner IP packet by reference (no copy): `pkt` must stay valid and unchanged until
 * the next fp_coalescer_flush, which writes it (a full queue is flushed first, within this
 * call). The engine's packets live in its receive arena, which it flushes before reusing. */
void fp_coalescer_add(fp_coalescer *c, const uint8_t *pkt, size_t len);
/* Write everything queued; afterwards the packets' memory may be reused. */
void fp_coalescer_flush(fp_coalescer *c);
uint64_t fp_coalescer_take_merged(fp_coalescer *c);
uint64_t fp_coalescer_take_errors(fp_coalescer *c);
uint64_t fp_coalescer_take_writes(fp_coalescer *c);

#endif
