/* AVX2 ternary kernels and activation quantization. A 64-byte chunk is two ymm: rows 0-7 and
 * rows 8-15 of the tile. Digits d = t+1 in {0,1,2} times int8 activations go through
 * vpmaddubsw (pair sums <= 512; at most 5 planes = 2560 summed in int16, no saturation) and
 * vpmaddwd, then sum(q) is subtracted once: exact, so equal to the scalar reference bit for bit.
 * The GEMM decodes each chunk in registers for all of 2..4 tokens, or for more tokens a K slice
 * of one tile to u8 digits once and runs up to 64 tokens over it; its integer sums are the
 * GEMV's exactly. */
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
        _mm_prefetch((const char *)(t + BN_PF_DIST), _MM_HINT_T0);
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
        _mm_prefetch((const char *)(t + BN_PF_DIST), _MM_HINT_T0);
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

/* ---- GEMM: decode a K slice of one tile to u8 digits once, reuse it for many tokens ---- */
/* Slices of at most 32 groups of 4 columns keep the int16 partial sums of vpmaddubsw
 * (<= 512 per group) below 32 * 512 = 16384 before they are widened into accb. */
#define G2_SLICE_I2 8 /* chunks: 128 columns, 32 groups */
#define G2_SLICE_T5 6 /* chunks: 120 columns, 30 groups */
#define G2_NB 64      /* tokens per decode of a slice */

static void decode_i2_256(const uint8_t *src, size_t nch, uint8_t *dst)
{
    const __m256i m3 = _mm256_set1_epi8(3);
    for (size_t g = 0; g < nch; g++, src += BN_CHUNK_BYTES)
        for (int h = 0; h < 2; h++) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(src + 32 * h));
            for (int p = 0; p < 4; p++)
                _mm256_store_si256((__m256i *)(dst + (g * 4 + p) * 64 + 32 * h),
                                   _mm256_and_si256(_mm256_srli_epi16(x, 2 * p), m3));
        }
}

static void decode_t5_256(const uint8_t *src, size_t nch, uint8_t *dst)
{
    const __m256i x80 = _mm256_set1_epi8((char)0x80);
    for (size_t g = 0; g < nch; g++, src += BN_CHUNK_BYTES)
        for (int h = 0; h < 2; h++) {
            __m256i z = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(src + 32 * h)), x80);
            for (int p = 0; p < 5; p++) {
                _mm256_store_si256((__m256i *)(dst + (g * 5 + p) * 64 + 32 * h), t5_digits_256(z));
                z = _mm256_add_epi8(z, _mm256_add_epi8(z, z));
            }
        }
}

/* Named-register repetition: REP2_n(X) is X(0) .. X(n-1). */
#define REP2_1(X) X(0)
#define REP2_2(X) REP2_1(X) X(1)
#define REP2_3(X) REP2_2(X) X(2)
#define REP2_4(X) REP2_3(X) X(3)

/* acc += t in int16 lanes. Through asm so that GCC cannot reassociate the sums of a kernel
 * into trees, which needs more live registers than ymm0-15 and spills the accumulators. */
static inline __attribute__((always_inline)) void acc16(__m256i *acc, __m256i t)
{
    __asm__("vpaddw %1, %0, %0" : "+x"(*acc) : "x"(t));
}

/* Kernel mk2_NT: accb[t][0..15] += sum over nk4 groups of codes x q_t for NT tokens, with the
 * 2*NT int16 partials in named registers (an array of them would live in memory at -O2). */
#define MK2_ZERO(t) __m256i l##t = _mm256_setzero_si256(), h##t = l##t;
#define MK2_DOT(t)                                                      \
    {                                                                   \
        const __m256i b = bcast4_256(q + (t) * qstride + 4 * k);        \
        acc16(&l##t, _mm256_maddubs_epi16(cl, b));                      \
        acc16(&h##t, _mm256_maddubs_epi16(ch, b));                      \
    }
#define MK2_FLUSH(t) flush_256(accb + (t) * 16, l##t, h##t);
#define MK2_DEF(NT)                                                                              \
    static void mk2_##NT(const uint8_t *codes, size_t nk4, const int8_t *q, size_t qstride,      \
                         int32_t *accb)                                                          \
    {                                                                                            \
        REP2_##NT(MK2_ZERO)                                                                      \
        for (size_t k = 0; k < nk4; k++) {                                                       \
            const __m256i cl = _mm256_load_si256((const __m256i *)(codes + k * 64));             \
            const __m256i ch = _mm256_load_si256((const __m256i *)(codes + k * 64 + 32));        \
            REP2_##NT(MK2_DOT)                                                                   \
        }                                                                                        \
        REP2_##NT(MK2_FLUSH)                                                                     \
    }

/* accb[0..7] += widened lo, accb[8..15] += widened hi. */
static inline void flush_256(int32_t *accb, __m256i lo, __m256i hi)
{
    const __m256i one16 = _mm256_set1_epi16(1);
    __m256i *a = (__m256i *)accb;
    _mm256_store_si256(a, _mm256_add_epi32(_mm256_load_si256(a), _mm256_madd_epi16(lo, one16)));
    _mm256_store_si256(a + 1, _mm256_add_epi32(_mm256_load_si256(a + 1), _mm256_madd_epi16(hi, one16)));
}

MK2_DEF(1) MK2_DEF(2) MK2_DEF(3) MK2_DEF(4)

typedef void (*mk2_fn)(const uint8_t *, size_t, const int8_t *, size_t, int32_t *);
#define G2_NT 4
/* The fused path takes 2..G2_NT tokens (T5), or 2..G2_SMALL_I2 in passes of <= G2_NT (I2, whose
 * decode is cheap enough to repeat: measured faster than the decoded path up to 8). */
#define G2_SMALL_I2 8
static const mk2_fn mk2_tab[G2_NT + 1] = {NULL, mk2_1, mk2_2, mk2_3, mk2_4};

/* ---- 2..G2_NT tokens: fused decode, no code buffer ------------------------------------- */
/* Each chunk is decoded in registers and used for every token at once; the int16 partials
 * are widened into accb once per slice (the same bound as the decoded path). */

/* Digit plane p of the half-chunk *x (T5: carried xor 0x80, advanced by *3 per plane). */
static inline __attribute__((always_inline)) __m256i plane_256(int t5, __m256i *x, int p)
{
    if (t5) {
        const __m256i d = t5_digits_256(*x);
        *x = _mm256_add_epi8(*x, _mm256_add_epi8(*x, *x));
        return d;
    }
    return _mm256_and_si256(_mm256_srli_epi16(*x, 2 * p), _mm256_set1_epi8(3));
}

#define SK2_DOT(t)                                                               \
    {                                                                            \
        const __m256i b = bcast4_256(q + (t) * qstride + g * cc + 4 * (size_t)p); \
        acc16(&l##t, _mm256_maddubs_epi16(dl, b));                               \
        acc16(&h##t, _mm256_maddubs_epi16(dh, b));                               \
    }
#define SK2_DEF(NT)                                                                              \
    static inline __attribute__((always_inline)) void sk2_##NT(                                  \
        int t5, const uint8_t *tile, size_t nch, const int8_t *q, size_t qstride, int32_t *accb) \
    {                                                                                            \
        const size_t cc = t5 ? BN_T5_CHUNK_COLS : BN_I2_CHUNK_COLS;                              \
        const size_t slice = t5 ? G2_SLICE_T5 : G2_SLICE_I2;                                     \
        const int np = t5 ? 5 : 4;                                                               \
        const __m256i bias = _mm256_set1_epi8(t5 ? (char)0x80 : 0);                              \
        for (size_t ch0 = 0; ch0 < nch; ch0 += slice) {                                          \
            const size_t ch1 = nch - ch0 < slice ? nch : ch0 + slice;                            \
            REP2_##NT(MK2_ZERO)                                                                  \
            for (size_t g = ch0; g < ch1; g++) {                                                 \
                const uint8_t *src = tile + g * BN_CHUNK_BYTES;                                  \
                _mm_prefetch((const char *)(src + BN_PF_DIST), _MM_HINT_T0);                     \
                __m256i xl = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)src), bias);   \
                __m256i xh = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(src + 32)), bias); \
                _Pragma("GCC unroll 5") for (int p = 0; p < np; p++) {                           \
                    const __m256i dl = plane_256(t5, &xl, p), dh = plane_256(t5, &xh, p);        \
                    REP2_##NT(SK2_DOT)                                                           \
                }                                                                                \
            }                                                                                    \
            REP2_##NT(MK2_FLUSH)                                                                 \
        }                                                                                        \
    }
SK2_DEF(2) SK2_DEF(3) SK2_DEF(4)
#undef SK2_DEF
#undef SK2_DOT
#undef MK2_DEF
#undef MK2_FLUSH
#undef MK2_DOT
#undef MK2_ZERO

static inline __attribute__((always_inline)) void
gemm_small_256(int t5, const uint8_t *w, size_t cols_p, const int8_t *q, const float *as, size_t n,
               float ws, float *y, size_t ldy, size_t r0, size_t r1)
{
    const size_t tb = t5 ? bn_t5_tile_bytes(cols_p) : bn_i2_tile_bytes(cols_p);
    const size_t nch = cols_p / (t5 ? BN_T5_CHUNK_COLS : BN_I2_CHUNK_COLS);
    _Alignas(32) int32_t accb[G2_NT * 16];
    int32_t sq[G2_SMALL_I2];
    for (size_t t = 0; t < n; t++) sq[t] = sum_q_256(q + t * cols_p, cols_p);
    for (size_t T = r0 / BN_TILE_ROWS; T * BN_TILE_ROWS < r1; T++) {
        const uint8_t *tile = w + T * tb;
        /* n > G2_NT (I2 only): balanced passes of <= G2_NT tokens, each decoding the tile again */
        const size_t pieces = (n + G2_NT - 1) / G2_NT;
        for (size_t i = 0, t0 = 0; i < pieces; i++) {
            const size_t len = (n - t0) / (pieces - i);
            const int8_t *qt = q + t0 * cols_p;
            memset(accb, 0, sizeof accb);
            if (len == 2) /* n >= 2, so every piece has 2..G2_NT tokens */ sk2_2(t5, tile, nch, qt, cols_p, accb);
            else if (len == 3) sk2_3(t5, tile, nch, qt, cols_p, accb);
            else sk2_4(t5, tile, nch, qt, cols_p, accb);
            for (size_t t = 0; t < len; t++)
                store_tile_256(y + (t0 + t) * ldy, _mm256_load_si256((const __m256i *)(accb + t * 16)),
                               _mm256_load_si256((const __m256i *)(accb + t * 16 + 8)), sq[t0 + t],
                               as[t0 + t], ws, T * BN_TILE_ROWS, r0, r1);
            t0 += len;
        }
    }
}

static void gemm_small_i2_256(const uint8_t *w, size_t cols_p, const int8_t *q, const float *as,
                              size_t n, float ws, float *y, size_t ldy, size_t r0, size_t r1)
{
    gemm_small_256(0, w, cols_p, q, as, n, ws, y, ldy, r0, r1);
}

static void gemm_small_t5_256(const uint8_t *w, size_t cols_p, const int8_t *q, const float *as,
                              size_t n, float ws, float *y, size_t ldy, size_t r0, size_t r1)
{
    gemm_small_256(1, w, cols_p, q, as, n, ws, y, ldy, r0, r1);
}

/* ---- more tokens: decode a K slice once per token block -------------------------------- */

static void gemm_decoded_256(int t5, const uint8_t *w, size_t cols_p, const int8_t *q, const float *as,
                             size_t n, float ws, float *y, size_t ldy, size_t r0, size_t r1)
{
    const size_t tb = t5 ? bn_t5_tile_bytes(cols_p) : bn_i2_tile_bytes(cols_p);
    const size_t ccols = t5 ? BN_T5_CHUNK_COLS : BN_I2_CHUNK_COLS, k4pc = ccols / 4;
    const size_t nch = cols_p / ccols, slice = t5 ? G2_SLICE_T5 : G2_SLICE_I2;
    _Alignas(32) uint8_t codes[32 * 64];
    _Alignas(32) int32_t accb[G2_NB * 16];
    int32_t sq[G2_NB];
    for (size_t T = r0 / BN_TILE_ROWS; T * BN_TILE_ROWS < r1; T++)
        for (size_t tok0 = 0; tok0 < n; tok0 += G2_NB) {
            const size_t nb = n - tok0 < G2_NB ? n - tok0 : G2_NB;
            const int8_t *qb = q + tok0 * cols_p;
            memset(accb, 0, nb * 16 * sizeof(int32_t));
            for (size_t t = 0; t < nb; t++) sq[t] = sum_q_256(qb + t * cols_p, cols_p);
            for (size_t ch0 = 0; ch0 < nch; ch0 += slice) {
                const size_t sc = nch - ch0 < slice ? nch - ch0 : slice, nk4 = sc * k4pc;
                const uint8_t *src = w + T * tb + ch0 * BN_CHUNK_BYTES;
                if (t5) decode_t5_256(src, sc, codes);
                else decode_i2_256(src, sc, codes);
                const int8_t *qs = qb + ch0 * ccols;
                /* the fewest pieces of <= G2_NT tokens, as equal as possible (7 = 3+4) */
                const size_t pieces = (nb + G2_NT - 1) / G2_NT;
                for (size_t i = 0, t = 0; i < pieces; i++) {
                    const size_t len = (nb - t) / (pieces - i);
                    mk2_tab[len](codes, nk4, qs + t * cols_p, cols_p, accb + t * 16);
                    t += len;
                }
            }
            for (size_t t = 0; t < nb; t++)
                store_tile_256(y + (tok0 + t) * ldy, _mm256_load_si256((const __m256i *)(accb + t * 16)),
                               _mm256_load_si256((const __m256i *)(accb + t * 16 + 8)), sq[t], as[tok0 + t], ws,
                               T * BN_TILE_ROWS, r0, r1);
        }
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
    if (n == 1) gemm_256(tile_i2_256, bn_i2_tile_bytes(cp), cp / BN_I2_CHUNK_COLS, cp, w, q, act_scale, n,
                         w_scale, y, ldy, r0, r1);
    else if (n <= G2_SMALL_I2) gemm_small_i2_256(w, cp, q, act_scale, n, w_scale, y, ldy, r0, r1);
    else gemm_decoded_256(0, w, cp, q, act_scale, n, w_scale, y, ldy, r0, r1);
}

void bn_tern_gemm_t5_avx2(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                          const float *act_scale, size_t n, float w_scale, float *y, size_t ldy,
                          size_t r0, size_t r1)
{
    (void)rows;
    const size_t cp = bn_tern_cols_padded(BN_TERN_T5, cols);
    if (n == 1) gemm_256(tile_t5_256, bn_t5_tile_bytes(cp), cp / BN_T5_CHUNK_COLS, cp, w, q, act_scale, n,
                         w_scale, y, ldy, r0, r1);
    else if (n <= G2_NT) gemm_small_t5_256(w, cp, q, act_scale, n, w_scale, y, ldy, r0, r1);
    else gemm_decoded_256(1, w, cp, q, act_scale, n, w_scale, y, ldy, r0, r1);
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
