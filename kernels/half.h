/* IEEE half and bfloat16 <-> float, scalar and exact (round to nearest even). Header-only so
 * every layer converts the same way. */
#ifndef BN_KERNELS_HALF_H
#define BN_KERNELS_HALF_H

#include <stdint.h>
#include <string.h>

static inline float bn_f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t bn_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float bn_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        if (man == 0) return bn_f32_from_bits(sign);
        /* subnormal: normalize */
        float f = (float)man * (1.0f / 16777216.0f); /* man * 2^-24 */
        return sign ? -f : f;
    }
    if (exp == 31) return bn_f32_from_bits(sign | 0x7f800000u | (man << 13));
    return bn_f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

static inline uint16_t bn_f32_to_f16(float f)
{
    uint32_t x = bn_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (ax < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        /* add 0.5 (as float) so the FPU rounds the mantissa for us (round-to-even) */
        float v = bn_f32_from_bits(ax) + 0.5f;
        return (uint16_t)(sign | (bn_f32_bits(v) - 0x3f000000u));
    }
    uint32_t mant_odd = (ax >> 13) & 1;
    ax += 0xc8000fffu + mant_odd; /* rebias exponent (-112<<23) and round to nearest even */
    return (uint16_t)(sign | (ax >> 13));
}

static inline float bn_bf16_to_f32(uint16_t b) { return bn_f32_from_bits((uint32_t)b << 16); }

static inline uint16_t bn_f32_to_bf16(float f)
{
    uint32_t x = bn_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* quiet nan */
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

#endif
