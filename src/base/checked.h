/* Overflow-checked size arithmetic for parsers of untrusted files: every product or sum
 * that sizes an allocation or an offset goes through these. */
#ifndef BN_BASE_CHECKED_H
#define BN_BASE_CHECKED_H

#include <stdbool.h>
#include <stdint.h>

static inline bool bn_mul_ok(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline bool bn_add_ok(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_add_overflow(a, b, out); }
/* Is [off, off+len) inside [0, size)? */
static inline bool bn_range_ok(uint64_t off, uint64_t len, uint64_t size)
{
    return off <= size && len <= size - off;
}
static inline uint64_t bn_align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

#endif
