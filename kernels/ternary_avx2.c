/* AVX2 ternary kernels and activation quantization. A 64-byte chunk is two ymm: rows 0-7 and
 * rows 8-15 of the tile. Digits d = t+1 in {0,1,2} times int8 activations go through
 * vpmaddubsw (pair sums <= 512; at most 5 planes = 2560 summed in int16, no saturation) and
 * vpmaddwd, then sum(q) is subtracted once: exact, so equal to the scalar reference bit for bit.
 * The GEMM keeps one tile's packed weights in L1 and runs all tokens over it, which gives
 * exactly the GEMV's integer sums. */
#include "simd_x86.h"

#include <immintrin.h>
#include <string.h>

static inline __m256i bcast4_256(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

static int32_t sum_q_256(const int8_t *q, size_t n)
{
    const __m256i one8 = _mm256_set1_epi8(1), one16 = _mm256_set1_epi16(1);
    __m256i acc = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(one8, _mm256_loadu_si256((const __m256i *)(q + i))), one16));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    int32_t r = _mm_cvtsi128_si32(s);
    for (; i < n; i++) r += q[i];
    return r;
}

static inline void store_tile_256(float *y, __m256i lo, __m256i hi, int32_t sq, float as, float ws,
                                  size_t rbase, size_t r0, size_t r1)
{
    const __m256i vsq = _mm256_set1_epi32(sq);
    const __m256 vas = _mm256_set1_ps(as), vws = _mm256_set1_ps(ws);
    const __m256 flo = _mm256_mul_ps(_mm256_div_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(lo, vsq)), vas), vws);
    const __m256 fhi = _mm256_mul_ps(_mm256_div_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(hi, vsq)), vas), vws);
    if (rbase >= r0 && rbase + BN_TILE_ROWS <= r1) {
        _mm256_storeu_ps(y + rbase, flo);
        _mm256_storeu_ps(y + rbase + 8, fhi);
        return;
    }
    float tmp[BN_TILE_ROWS];
    _mm256_storeu_ps(tmp, flo);
    _mm256_storeu_ps(tmp + 8, fhi);
    for (size_t i = 0; i < BN_TILE_ROWS; i++)
        if (rbase + i >= r0 && rbase + i < r1) y[rbase + i] = tmp[i];
}

/* sum_c d[r][c]*q[c] for the 16 rows of one tile (rows 0-7 in *lo, 8-15 in *hi). */
static inline void tile_i2_256(const uint8_t *t, size_t nch, const int8_t *q, __m256i *lo, __m256i *hi)
{
    const __m256i m3 = _mm256_set1_epi8(3), one16 = _mm256_set1_epi16(1);
    __m256i alo = _mm256_setzero_si256(), ahi = alo;
    for (size_t g = 0; g < nch; g++, t += BN_CHUNK_BYTES, q += BN_I2_CHUNK_COLS) {
        const __m256i xl = _mm256_loadu_si256((const __m256i *)t);
        const __m256i xh = _mm256_loadu_si256((const __m256i *)(t + 32));
        __m256i sl = _mm256_setzero_si256(), sh = sl;
        for (int p = 0; p < 4; p++) {
            const __m256i b = bcast4_256(q + 4 * p);
            sl = _mm256_add_epi16(sl, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(xl, 2 * p), m3), b));
            sh = _mm256_add_epi16(sh, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(xh, 2 * p), m3), b));
        }
        alo = _mm256_add_epi32(alo, _mm256_madd_epi16(sl, one16));
        ahi = _mm256_add_epi32(ahi, _mm256_madd_epi16(sh, one16));
    }
    *lo = alo, *hi = ahi;
}

/* T5 digits: bytes are carried xor 0x80 so that signed compares act as unsigned ones
 * (3*(y^0x80) == (3y)^0x80 mod 256, so the xor survives the *3 recurrence). */
static inline __m256i t5_digits_256(__m256i z)
{
    const __m256i m1 = _mm256_cmpgt_epi8(z, _mm256_set1_epi8((char)((BN_T5_THR1 - 1) ^ 0x80)));
    const __m256i m2 = _mm256_cmpgt_epi8(z, _mm256_set1_epi8((char)((BN_T5_THR2 - 1) ^ 0x80)));
    return _mm256_sub_epi8(_mm256_setzero_si256(), _mm256_add_epi8(m1, m2));
}

static inline void tile_t5_256(const uint8_t *t, size_t nch, const int8_t *q, __m256i *lo, __m256i *hi)
{
    const __m256i x80 = _mm256_set1_epi8((char)0x80), one16 = _mm256_set1_epi16(1);
    __m256i alo = _mm256_setzero_si256(), ahi = alo;
    for (size_t g = 0; g < nch; g++, t += BN_CHUNK_BYTES, q += BN_T5_CHUNK_COLS) {
        __m256i zl = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)t), x80);
        __m256i zh = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(t + 32)), x80);
        __m256i sl = _mm256_setzero_si256(), sh = sl;
        for (int p = 0; p < 5; p++) {
            const __m256i b = bcast4_256(q + 4 * p);
            sl = _mm256_add_epi16(sl, _mm256_maddubs_epi16(t5_digits_256(zl), b));
            sh = _mm256_add_epi16(sh, _mm256_maddubs_epi16(t5_digits_256(zh), b));
            zl = _mm256_add_epi8(zl, _mm256_add_epi8(zl, zl));
            zh = _mm256_add_epi8(zh, _mm256_add_epi8(zh, zh));
        }
        alo = _mm256_add_epi32(alo, _mm256_madd_epi16(sl, one16));
        ahi = _mm256_add_epi32(ahi, _mm256_madd_epi16(sh, one16));
    }
    *lo = alo, *hi = ahi;
}

typedef void (*tile_fn)(const uint8_t *, size_t, const int8_t *, __m256i *, __m256i *);

/* Tiles outer, tokens inner: a tile's packed bytes (3.2-4 bytes per column) stay in L1 while
 * every token runs over them. n == 1 is the GEMV. */
static void gemm_256(tile_fn tile, size_t tb, size_t nch, size_t cols_p, const uint8_t *w,
                     const int8_t *q, const float *as, size_t n, float ws, float *y, size_t ldy,
                     size_t r0, size_t r1)
{
    int32_t sq_one = 0;
    if (n == 1) sq_one = sum_q_256(q, cols_p);
    for (size_t T = r0 / BN_TILE_ROWS; T * BN_TILE_ROWS < r1; T++)
        for (size_t i = 0; i < n; i++) {
            const int8_t *qi = q + i * cols_p;
            __m256i lo, hi;
            tile(w + T * tb, nch, qi, &lo, &hi);
            /* sum(q) is recomputed per tile for n > 1: cols/32 adds against 16*cols MACs */
            const int32_t sq = n == 1 ? sq_one : sum_q_256(qi, cols_p);
            store_tile_256(y + i * ldy, lo, hi, sq, as[i], ws, T * BN_TILE_ROWS, r0, r1);
        }
}

void bn_tern_gemv_i2_avx2(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                          float act_scale, float w_scale, float *y, size_t r0, size_t r1)
{
    (void)rows;
    const size_t cp = bn_tern_cols_padded(BN_TERN_I2, cols);
    gemm_256(tile_i2_256, bn_i2_tile_bytes(cp), cp / BN_I2_CHUNK_COLS, cp, w, q, &act_scale, 1,
             w_scale, y, 0, r0, r1);
}

void bn_tern_gemv_t5_avx2(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                          float act_scale, float w_scale, float *y, size_t r0, size_t r1)
{
    (void)rows;
    const size_t cp = bn_tern_cols_padded(BN_TERN_T5, cols);
    gemm_256(tile_t5_256, bn_t5_tile_bytes(cp), cp / BN_T5_CHUNK_COLS, cp, w, q, &act_scale, 1,
             w_scale, y, 0, r0, r1);
}

void bn_tern_gemm_i2_avx2(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                          const float *act_scale, size_t n, float w_scale, float *y, size_t ldy,
                          size_t r0, size_t r1)
{
    (void)rows;
    const size_t cp = bn_tern_cols_padded(BN_TERN_I2, cols);
    gemm_256(tile_i2_256, bn_i2_tile_bytes(cp), cp / BN_I2_CHUNK_COLS, cp, w, q, act_scale, n,
             w_scale, y, ldy, r0, r1);
}

void bn_tern_gemm_t5_avx2(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                          const float *act_scale, size_t n, float w_scale, float *y, size_t ldy,
                          size_t r0, size_t r1)
{
    (void)rows;
    const size_t cp = bn_tern_cols_padded(BN_TERN_T5, cols);
    gemm_256(tile_t5_256, bn_t5_tile_bytes(cp), cp / BN_T5_CHUNK_COLS, cp, w, q, act_scale, n,
             w_scale, y, ldy, r0, r1);
}

/* ---- activation quantization ----------------------------------------------------------- */

float bn_quant_act_avx2(const float *x, size_t n, size_t n_padded, int8_t *q)
{
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 mx = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(x + i), absm));
    float lanes[8], amax = 0.0f;
    _mm256_storeu_ps(lanes, mx);
    for (int l = 0; l < 8; l++) amax = lanes[l] > amax ? lanes[l] : amax;
    for (; i < n; i++) {
        const float a = x[i] < 0 ? -x[i] : x[i];
        amax = a > amax ? a : amax;
    }
    const float s = bn_act_scale_from_max(amax);
    const __m256 vs = _mm256_set1_ps(s);
    /* packs saturate to [-128, 127] like bn_quant_one; the permute undoes the per-lane
     * interleaving of the two pack steps. */
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (i = 0; i + 32 <= n; i += 32) {
        const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
        const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vs));
        const __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), vs));
        const __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), vs));
        const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
        _mm256_storeu_si256((__m256i *)(q + i), _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), perm));
    }
    for (; i < n; i++) q[i] = bn_quant_one(x[i] * s);
    if (n_padded > n) memset(q + n, 0, n_padded - n);
    return s;
}
