/* AVX512 (F/BW/VL/DQ) ternary kernels and activation quantization, in two variants generated
 * from ternary_avx512_tmpl.h: plain AVX512 (vpmaddubsw) and AVX512-VNNI (vpdpbusd). This file
 * is compiled without -mavx512vnni, so the compiler can never emit a VNNI instruction into
 * the plain variant (which must run on Skylake-X); the VNNI variant issues vpdpbusd through
 * inline asm only (see dot4 in the template), which works with GCC and clang alike. */
#include "simd_x86.h"

#include <immintrin.h>
#include <string.h>

/* GEMM blocking: GM_MT row tiles (16 rows each) x GM_NT tokens of zmm accumulators (24 of
 * 32 registers); K is cut into slices so the decoded codes (GM_MT * slice * 16 bytes) stay
 * in L1; GM_NB tokens share one decode of a slice. */
#define GM_MT 4
#define GM_NT 6
#define GM_NB 60 /* a multiple of GM_NT: only the last block has a token tail */
#define GM_SLICE_I2 16 /* chunks: 256 columns, 64 groups of 4 */
#define GM_SLICE_T5 13 /* chunks: 260 columns, 65 groups of 4 */
#define GM_SLICE_MAXK4 65

static inline __m512i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* sum of n int8 values (n arbitrary). */
static inline int32_t sum_q_512(const int8_t *q, size_t n)
{
    const __m512i one8 = _mm512_set1_epi8(1), one16 = _mm512_set1_epi16(1);
    __m512i acc = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m512i v = _mm512_loadu_si512(q + i);
        acc = _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(one8, v), one16));
    }
    if (i < n) {
        const __m512i v = _mm512_maskz_loadu_epi8((__mmask64)(~0ull >> (64 - (n - i))), q + i);
        acc = _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(one8, v), one16));
    }
    return _mm512_reduce_add_epi32(acc);
}

/* y[rbase + i] = bn_tern_out(acc[i] - sq) for the rows of [r0, r1) inside this tile.
 * cvtepi32_ps, div and mul are each correctly rounded, exactly like the scalar epilogue. */
static inline void store_tile_512(float *y, __m512i acc, int32_t sq, float as, float ws,
                                  size_t rbase, size_t r0, size_t r1)
{
    acc = _mm512_sub_epi32(acc, _mm512_set1_epi32(sq));
    const __m512 v = _mm512_mul_ps(_mm512_div_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(as)),
                                   _mm512_set1_ps(ws));
    const size_t lo = r0 > rbase ? r0 - rbase : 0;
    const size_t hi = r1 - rbase < BN_TILE_ROWS ? r1 - rbase : BN_TILE_ROWS;
    if (lo == 0 && hi == BN_TILE_ROWS) {
        _mm512_storeu_ps(y + rbase, v);
    } else {
        const __mmask16 k = (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
        _mm512_mask_storeu_ps(y + rbase, k, v);
    }
}

/* Digits of one T5 plane: (3y) >> 8 == (y >= 86) + (y >= 171). */
static inline __m512i t5_digits_512(__m512i y)
{
    const __m512i one = _mm512_set1_epi8(1);
    const __mmask64 k1 = _mm512_cmpge_epu8_mask(y, _mm512_set1_epi8((char)BN_T5_THR1));
    const __mmask64 k2 = _mm512_cmpge_epu8_mask(y, _mm512_set1_epi8((char)BN_T5_THR2));
    const __m512i d = _mm512_maskz_mov_epi8(k1, one);
    return _mm512_mask_add_epi8(d, k2, d, one);
}

/* Decodes nch chunks of one tile into planes of u8 digits, 64 bytes per group of 4 columns. */
static void decode_i2_512(const uint8_t *src, size_t nch, uint8_t *dst)
{
    const __m512i m3 = _mm512_set1_epi8(3);
    for (size_t g = 0; g < nch; g++, dst += 4 * 64) {
        const __m512i x = _mm512_loadu_si512(src + g * BN_CHUNK_BYTES);
        _mm512_store_si512(dst, _mm512_and_si512(x, m3));
        _mm512_store_si512(dst + 64, _mm512_and_si512(_mm512_srli_epi16(x, 2), m3));
        _mm512_store_si512(dst + 128, _mm512_and_si512(_mm512_srli_epi16(x, 4), m3));
        _mm512_store_si512(dst + 192, _mm512_and_si512(_mm512_srli_epi16(x, 6), m3));
    }
}

static void decode_t5_512(const uint8_t *src, size_t nch, uint8_t *dst)
{
    for (size_t g = 0; g < nch; g++) {
        __m512i x = _mm512_loadu_si512(src + g * BN_CHUNK_BYTES);
        for (int p = 0; p < 5; p++, dst += 64) {
            _mm512_store_si512(dst, t5_digits_512(x));
            x = _mm512_add_epi8(x, _mm512_add_epi8(x, x));
        }
    }
}

/* ---- activation quantization (shared by both variants) -------------------------------- */

float bn_quant_act_avx512(const float *x, size_t n, size_t n_padded, int8_t *q)
{
    const __m512 absm = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    __m512 mx = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) mx = _mm512_max_ps(mx, _mm512_and_ps(_mm512_loadu_ps(x + i), absm));
    const __mmask16 tail = (__mmask16)((1u << (n - i)) - 1);
    mx = _mm512_max_ps(mx, _mm512_and_ps(_mm512_maskz_loadu_ps(tail, x + i), absm));
    const float s = bn_act_scale_from_max(_mm512_reduce_max_ps(mx));
    const __m512 vs = _mm512_set1_ps(s);
    /* cvtps rounds to nearest even under the default MXCSR, and the signed-saturating
     * down-conversion clamps to [-128, 127]: the same as bn_quant_one(). */
    for (i = 0; i + 16 <= n; i += 16)
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), vs))));
    if (i < n) {
        const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + i), vs));
        _mm512_mask_cvtsepi32_storeu_epi8(q + i, tail, v);
    }
    if (n_padded > n) memset(q + n, 0, n_padded - n);
    return s;
}

/* ---- the two instantiations ------------------------------------------------------------ */

#define SFX avx512
#define BN_VNNI 0
#include "ternary_avx512_tmpl.h"
#undef SFX
#undef BN_VNNI

#define SFX avx512vnni
#define BN_VNNI 1
#include "ternary_avx512_tmpl.h"
#undef SFX
#undef BN_VNNI

float bn_quant_act_avx512vnni(const float *x, size_t n, size_t n_padded, int8_t *q)
{
    return bn_quant_act_avx512(x, n, n_padded, q);
}
