/* What the GSO and GRO harnesses both need: checks of inner IP packets. */
#ifndef FUZZ_OFFLOAD_COMMON_H
#define FUZZ_OFFLOAD_COMMON_H

#include "../../relay/fastpath/internal.h"
#include "common.h"

/* The L4 (TCP/UDP) checksum of a plain IPv4/IPv6 packet is valid. */
static inline int l4_checksum_valid(const uint8_t *p, size_t len, int v6, size_t iphl,
                                    uint8_t proto) {
    uint8_t tail[8] = {0};
    uint32_t s;
    size_t l4len = len - iphl;
    if (v6) {
        s = fp_csum_add(0, p + 8, 32);
        wr32(tail, (uint32_t)l4len);
        tail[7] = proto;
        s = fp_csum_add(s, tail, 8);
    } else {
        s = fp_csum_add(0, p + 12, 8);
        tail[1] = proto;
        wr16(tail + 2, (uint16_t)l4len);
        s = fp_csum_add(s, tail, 4);
    }
    return fp_csum_fold(fp_csum_add(s, p + iphl, l4len)) == 0xffff;
}

static inline int ipv4_header_valid(const uint8_t *p, size_t ihl) {
    return fp_csum_fold(fp_csum_add(0, p, ihl)) == 0xffff;
}

#endif
