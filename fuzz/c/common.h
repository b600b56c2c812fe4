/* Shared by the libFuzzer harnesses: a reader over the fuzzer's bytes and a check that
 * aborts (so libFuzzer keeps the input) when a property of the code under test fails. */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                                    \
        }                                                                               \
    } while (0)

typedef struct reader {
    const uint8_t *p;
    size_t n;
} reader;

static inline uint8_t rd_u8(reader *r) {
    if (!r->n)
        return 0;
    r->n--;
    return *r->p++;
}

static inline uint16_t rd_u16(reader *r) {
    uint16_t hi = rd_u8(r);
    return (uint16_t)(hi << 8 | rd_u8(r));
}

static inline uint32_t rd_u32(reader *r) {
    uint32_t hi = rd_u16(r);
    return hi << 16 | rd_u16(r);
}

/* Up to `want` bytes (fewer at the end of the input); *got says how many. */
static inline const uint8_t *rd_bytes(reader *r, size_t want, size_t *got) {
    const uint8_t *p = r->p;
    *got = want < r->n ? want : r->n;
    r->p += *got;
    r->n -= *got;
    return p;
}

/* A heap copy of exactly n bytes, so AddressSanitizer sees any read past the end. */
static inline uint8_t *exact_copy(const uint8_t *p, size_t n) {
    uint8_t *c = malloc(n ? n : 1);
    CHECK(c != NULL);
    if (n)
        memcpy(c, p, n);
    return c;
}

/* The same as a NUL-terminated string (parsers that take text). */
static inline char *exact_string(const uint8_t *p, size_t n) {
    char *c = malloc(n + 1);
    CHECK(c != NULL);
    memcpy(c, p, n);
    c[n] = '\0';
    return c;
}

#endif
