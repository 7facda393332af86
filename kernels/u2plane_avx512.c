/* AVX512 plane steps of the screened lm_head (bn_u2_gemv; layout in kernels.h): plain
 * AVX512BW (vpmaddubsw) and AVX512-VNNI (vpdpbusd, inline asm only: this file is built
 * without -mavx512vnni, so no VNNI instruction can reach the plain variant).
 *
 * A 32-byte group is loaded into both halves of a zmm (a broadcast: a load-port uop, no
 * shuffle), and the two halves take different digits, so that the activation operand is one
 * contiguous 64-byte load: with M = 0x03 (low half) | 0x0c (high half), x & M holds digits 0
 * and 1 against q[0..63], and the same of x >> 4 (AVX512) or x & (M << 4) (VNNI) digits 2
 * and 3 against q[64..127]. Digits are masked in place, not shifted down: each lane carries
 * a known power-of-4 scale, removed exactly once per row (every lane is a multiple of it).
 * From L1 this ran ~1.4x the ymm form (four masks per group; one Sapphire Rapids core), and
 * unlike 64-byte loads of two groups it needs no per-call permuted copy of qx. Bounds, |qx| <= 128: AVX512 int16 lanes
 * <= 2 * 12 * 128 = 3072 per product (scale 4), two products per group, 4 groups: 24576;
 * VNNI int32 lanes <= 64 * 3 * 128 * 16384 < 2^29 (scale 64, cols_padded <= 65536). */
#include "simd_x86.h"

#include <immintrin.h>

/* 0x03 in the low 32 bytes, 0x0c in the high 32. */
static inline __m512i mask_lo_hi(void)
{
    return _mm512_inserti64x4(_mm512_set1_epi8(0x03), _mm256_set1_epi8(0x0c), 1);
}

static inline __m512i bcast_group(const uint8_t *b)
{
    return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b));
}

/* ---- AVX512BW ---------------------------------------------------------------------------- */

/* One group into s: the low half of every lane at scale 1, the high half at scale 4. */
static inline __m512i group_bw(const uint8_t *b, const int8_t *q, __m512i s, __m512i m)
{
    const __m512i x = bcast_group(b);
    const __m512i p01 = _mm512_maddubs_epi16(_mm512_and_si512(x, m), _mm512_loadu_si512(q));
    const __m512i p23 = _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(x, 4), m),
                                             _mm512_loadu_si512(q + 64));
    return _mm512_add_epi16(s, _mm512_add_epi16(p01, p23));
}

static inline int32_t row_dot_bw(const uint8_t *b, const uint8_t *pf, const int8_t *q, size_t ng)
{
    const __m512i m = mask_lo_hi();
    /* widening multiplies the low half by 4 too: then the whole sum is at scale 4 */
    const __m512i w = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(1), 1);
    __m512i acc = _mm512_setzero_si512();
    for (size_t g = 0; g < ng;) {
        __m512i s = _mm512_setzero_si512();
        if (g + 4 <= ng) {
            _mm_prefetch((const char *)pf + 32 * g, _MM_HINT_T0);
            _mm_prefetch((const char *)pf + 32 * g + 64, _MM_HINT_T0);
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) s = group_bw(b + 32 * (g + u), q + BN_U2_COLS * (g + u), s, m);
            g += 4;
        } else {
            _mm_prefetch((const char *)pf + 32 * g, _MM_HINT_T0);
            _mm_prefetch((const char *)pf + 32 * ng - 1, _MM_HINT_T0);
            for (; g < ng; g++) s = group_bw(b + 32 * g, q + BN_U2_COLS * g, s, m);
        }
        acc = _mm512_add_epi32(acc, _mm512_madd_epi16(s, w));
    }
    return _mm512_reduce_add_epi32(acc) / 4;
}

void bn_u2_gemv_avx512(const uint8_t *planes, size_t cols_padded, int k, const int8_t *qx,
                       const uint8_t *live, int32_t *acc, size_t r0, size_t r1)
{
    bn_u2_sweep(planes, cols_padded, k, qx, live, acc, r0, r1, row_dot_bw);
}

/* ---- AVX512-VNNI ------------------------------------------------------------------------- */

/* acc += vpdpbusd(u8 u, s8 64 bytes at s), the load folded in; in-place asm keeps every
 * accumulator in a register (see ternary_avx512_tmpl.h). */
static inline __m512i dpbusd(__m512i acc, __m512i u, const int8_t *s)
{
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "m"(*(const __m512i_u *)s));
    return acc;
}

/* Two groups per step, each with its own pair of accumulators: four dependency chains. a*
 * lanes are at scale 1 (low half) and 4 (high), c* lanes at 16 and 64. */
static inline int32_t row_dot_vnni(const uint8_t *b, const uint8_t *pf, const int8_t *q, size_t ng)
{
    const __m512i m = mask_lo_hi(), m4 = _mm512_slli_epi16(m, 4);
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, c0 = a0, c1 = a0;
    size_t g = 0;
    for (; g + 2 <= ng; g += 2, b += 64, pf += 64, q += 2 * BN_U2_COLS) {
        _mm_prefetch((const char *)pf, _MM_HINT_T0);
        const __m512i x0 = bcast_group(b), x1 = bcast_group(b + 32);
        a0 = dpbusd(a0, _mm512_and_si512(x0, m), q);
        c0 = dpbusd(c0, _mm512_and_si512(x0, m4), q + 64);
        a1 = dpbusd(a1, _mm512_and_si512(x1, m), q + 128);
        c1 = dpbusd(c1, _mm512_and_si512(x1, m4), q + 192);
    }
    if (g < ng) {
        _mm_prefetch((const char *)pf + 31, _MM_HINT_T0);
        const __m512i x0 = bcast_group(b);
        a0 = dpbusd(a0, _mm512_and_si512(x0, m), q);
        c0 = dpbusd(c0, _mm512_and_si512(x0, m4), q + 64);
    }
    const __m512i sa = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi32(2), 1);
    const __m512i sc = _mm512_add_epi32(sa, _mm512_set1_epi32(4));
    const __m512i t = _mm512_add_epi32(_mm512_srav_epi32(_mm512_add_epi32(a0, a1), sa),
                                       _mm512_srav_epi32(_mm512_add_epi32(c0, c1), sc));
    return _mm512_reduce_add_epi32(t);
}

void bn_u2_gemv_avx512vnni(const uint8_t *planes, size_t cols_padded, int k, const int8_t *qx,
                           const uint8_t *live, int32_t *acc, size_t r0, size_t r1)
{
    bn_u2_sweep(planes, cols_padded, k, qx, live, acc, r0, r1, row_dot_vnni);
}
