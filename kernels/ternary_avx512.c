/* AVX512 (F/BW/VL/DQ) ternary kernels and activation quantization, in two variants generated
 * from ternary_avx512_tmpl.h: plain AVX512 (vpmaddubsw) and AVX512-VNNI (vpdpbusd). This file
 * is compiled without -mavx512vnni, so the compiler can never emit a VNNI instruction into
 * the plain variant (which must run on Skylake-X); the VNNI variant issues vpdpbusd through
 * inline asm only (see dot4 in the template), which works with GCC and clang alike. */
#include "simd_x86.h"

#include <immintrin.h>
#include <string.h>

/* GEMM blocking (more than GS_NT tokens): GM_MT row tiles (16 rows each) x GM_NT tokens of
 * zmm accumulators (24 of 32 registers); K is cut into slices so the decoded codes (GM_MT * slice * 16 bytes) stay
 * in L1; GM_NB tokens share one decode of a slice. */
#define GM_MT 4
#define GM_NT 6
#define GM_NB 60 /* a multiple of GM_NT: only the last block has a token tail */
#define GM_SLICE_I2 16 /* chunks: 256 columns, 64 groups of 4 */
#define GM_SLICE_T5 13 /* chunks: 260 columns, 65 groups of 4 */
#define GM_SLICE_MAXK4 65
/* Up to GS_NT tokens (batched decode) take the fused path instead: no decode buffer. */
#define GS_NT 8

/* Named-register repetition for the micro-kernels: BN_REPn(X) is X(0) .. X(n-1);
 * BN_GRID(MT, NT, X) is X(m, t) for every token t (outer) and tile m (inner). */
#define BN_REP1(X) X(0)
#define BN_REP2(X) BN_REP1(X) X(1)
#define BN_REP3(X) BN_REP2(X) X(2)
#define BN_REP4(X) BN_REP3(X) X(3)
#define BN_REP5(X) BN_REP4(X) X(4)
#define BN_REP6(X) BN_REP5(X) X(5)
#define BN_REP7(X) BN_REP6(X) X(6)
#define BN_REP8(X) BN_REP7(X) X(7)
#define BN_COL1(X, t) X(0, t)
#define BN_COL2(X, t) BN_COL1(X, t) X(1, t)
#define BN_COL3(X, t) BN_COL2(X, t) X(2, t)
#define BN_COL4(X, t) BN_COL3(X, t) X(3, t)
#define BN_ROWS1(C, X) C(X, 0)
#define BN_ROWS2(C, X) BN_ROWS1(C, X) C(X, 1)
#define BN_ROWS3(C, X) BN_ROWS2(C, X) C(X, 2)
#define BN_ROWS4(C, X) BN_ROWS3(C, X) C(X, 3)
#define BN_ROWS5(C, X) BN_ROWS4(C, X) C(X, 4)
#define BN_ROWS6(C, X) BN_ROWS5(C, X) C(X, 5)
#define BN_ROWS7(C, X) BN_ROWS6(C, X) C(X, 6)
#define BN_ROWS8(C, X) BN_ROWS7(C, X) C(X, 7)
#define BN_GRID(MT, NT, X) BN_ROWS##NT(BN_COL##MT, X)

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

/* The epilogue of a micro-kernel: acc[t*mt + m] is tile m (rows rbase + 16m ..) of token t.
 * Out of line on purpose: inlined, GCC hoists the per-token broadcasts of sq/as out of the
 * tile loop and the kernel's accumulators no longer fit in the registers. */
static __attribute__((noinline)) void store_block_512(const __m512i *acc, int mt, int nt,
                                                      const int32_t *sq, const float *as, float ws,
                                                      float *y, size_t ldy, size_t rbase,
                                                      size_t r0, size_t r1)
{
    for (int t = 0; t < nt; t++)
        for (int m = 0; m < mt; m++)
            store_tile_512(y + (size_t)t * ldy, acc[t * mt + m], sq[t], as[t], ws,
                           rbase + (size_t)m * BN_TILE_ROWS, r0, r1);
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
