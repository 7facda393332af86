/* Template for the AVX512 ternary GEMV/GEMM, included twice by ternary_avx512.c:
 *   SFX = avx512      BN_VNNI = 0: products by vpmaddubsw (u8 x s8 -> s16 pairs) + vpmaddwd
 *   SFX = avx512vnni  BN_VNNI = 1: products by vpdpbusd (u8 x s8 summed by 4 into s32)
 * Both consume digits d = t+1 in {0,1,2} as the unsigned operand and int8 activations as the
 * signed one, then subtract sum(q) once per token: sum(t*q) = sum(d*q) - sum(q). Every step is
 * exact integer arithmetic, so results equal the scalar reference bit for bit.
 * Overflow: vpmaddubsw pair sums are <= 2*2*128 = 512, and at most 5 planes (2560) are summed
 * in int16 before widening, far from saturation. */

#define BN_CAT_(a, b) a##_##b
#define BN_CAT(a, b) BN_CAT_(a, b)
#define FN(name) BN_CAT(name, SFX)

/* acc += 4-wide dot products of u8 codes c with s8 activations b, per 32-bit lane. */
static inline __m512i FN(dot4)(__m512i acc, __m512i c, __m512i b)
{
#if BN_VNNI
    /* Inline asm, not _mm512_dpbusd_epi32: (1) this file is built without -mavx512vnni so no
     * VNNI code can leak into the plain variant; (2) with the builtins, GCC 12 keeps a memory
     * copy of every GEMM accumulator (a store per update, measured 2.2x slower); an in-place
     * asm update keeps all 24 in registers. */
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(c), "v"(b));
    return acc;
#else
    /* the accumulation goes through asm for the register-allocation reason above */
    const __m512i t = _mm512_madd_epi16(_mm512_maddubs_epi16(c, b), _mm512_set1_epi16(1));
    __asm__("vpaddd %1, %0, %0" : "+v"(acc) : "v"(t));
    return acc;
#endif
}

/* ---- GEMV ------------------------------------------------------------------------------ */

static void FN(gemv_i2_rows)(const uint8_t *w, size_t cols_p, const int8_t *q, float as, float ws,
                             float *y, size_t r0, size_t r1)
{
    const size_t tb = bn_i2_tile_bytes(cols_p), nch = cols_p / BN_I2_CHUNK_COLS;
    const int32_t sq = sum_q_512(q, cols_p);
    const __m512i m3 = _mm512_set1_epi8(3);
    for (size_t T = r0 / BN_TILE_ROWS; T * BN_TILE_ROWS < r1; T++) {
        const uint8_t *t = w + T * tb;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t g = 0; g < nch; g++) {
            const __m512i x = _mm512_loadu_si512(t + g * BN_CHUNK_BYTES);
            const int8_t *qg = q + g * BN_I2_CHUNK_COLS;
            _mm_prefetch((const char *)(t + g * BN_CHUNK_BYTES + BN_PF_DIST), _MM_HINT_T0);
            const __m512i p0 = _mm512_and_si512(x, m3);
            const __m512i p1 = _mm512_and_si512(_mm512_srli_epi16(x, 2), m3);
            const __m512i p2 = _mm512_and_si512(_mm512_srli_epi16(x, 4), m3);
            const __m512i p3 = _mm512_and_si512(_mm512_srli_epi16(x, 6), m3);
#if BN_VNNI
            /* one accumulator per plane: four independent dependency chains */
            a0 = FN(dot4)(a0, p0, bcast4(qg));
            a1 = FN(dot4)(a1, p1, bcast4(qg + 4));
            a2 = FN(dot4)(a2, p2, bcast4(qg + 8));
            a3 = FN(dot4)(a3, p3, bcast4(qg + 12));
#else
            __m512i s = _mm512_add_epi16(_mm512_maddubs_epi16(p0, bcast4(qg)),
                                         _mm512_maddubs_epi16(p1, bcast4(qg + 4)));
            s = _mm512_add_epi16(s, _mm512_maddubs_epi16(p2, bcast4(qg + 8)));
            s = _mm512_add_epi16(s, _mm512_maddubs_epi16(p3, bcast4(qg + 12)));
            if (g & 1) a1 = _mm512_add_epi32(a1, _mm512_madd_epi16(s, _mm512_set1_epi16(1)));
            else a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(s, _mm512_set1_epi16(1)));
#endif
        }
        __m512i acc = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
        store_tile_512(y, acc, sq, as, ws, T * BN_TILE_ROWS, r0, r1);
    }
}

#if BN_VNNI
/* T5 without decoding digits: with y' = 3y mod 256, 3y = 256*d + y', so
 * sum(d*q) = (3*sum(y*q) - sum(y'*q)) / 256. Two vpdpbusd per plane and two byte adds replace
 * the digit extraction. The int32 sums wrap, but the final value 256*sum(d*q) fits in int32
 * when cols_p < 32768 (checked by the caller), and wrapping arithmetic is exact mod 2^32. */
static void FN(gemv_t5_rows)(const uint8_t *w, size_t cols_p, const int8_t *q, float as, float ws,
                             float *y, size_t r0, size_t r1)
{
    const size_t tb = bn_t5_tile_bytes(cols_p), nch = cols_p / BN_T5_CHUNK_COLS;
    const int32_t sq = sum_q_512(q, cols_p);
    for (size_t T = r0 / BN_TILE_ROWS; T * BN_TILE_ROWS < r1; T++) {
        const uint8_t *t = w + T * tb;
        __m512i s1[5], s2[5];
        for (int p = 0; p < 5; p++) s1[p] = s2[p] = _mm512_setzero_si512();
        for (size_t g = 0; g < nch; g++) {
            __m512i x = _mm512_loadu_si512(t + g * BN_CHUNK_BYTES);
            const int8_t *qg = q + g * BN_T5_CHUNK_COLS;
            _mm_prefetch((const char *)(t + g * BN_CHUNK_BYTES + BN_PF_DIST), _MM_HINT_T0);
#pragma GCC unroll 5
            for (int p = 0; p < 5; p++) {
                const __m512i b = bcast4(qg + 4 * p);
                s1[p] = FN(dot4)(s1[p], x, b);
                x = _mm512_add_epi8(x, _mm512_add_epi8(x, x));
                s2[p] = FN(dot4)(s2[p], x, b);
            }
        }
        __m512i a = _mm512_add_epi32(_mm512_add_epi32(s1[0], s1[1]), _mm512_add_epi32(s1[2], s1[3]));
        __m512i c = _mm512_add_epi32(_mm512_add_epi32(s2[0], s2[1]), _mm512_add_epi32(s2[2], s2[3]));
        a = _mm512_add_epi32(a, s1[4]);
        c = _mm512_add_epi32(c, s2[4]);
        const __m512i acc = _mm512_srai_epi32(_mm512_sub_epi32(_mm512_add_epi32(a, _mm512_add_epi32(a, a)), c), 8);
        store_tile_512(y, acc, sq, as, ws, T * BN_TILE_ROWS, r0, r1);
    }
}
#else
static void FN(gemv_t5_rows)(const uint8_t *w, size_t cols_p, const int8_t *q, float as, float ws,
                             float *y, size_t r0, size_t r1)
{
    const size_t tb = bn_t5_tile_bytes(cols_p), nch = cols_p / BN_T5_CHUNK_COLS;
    const int32_t sq = sum_q_512(q, cols_p);
    const __m512i one16 = _mm512_set1_epi16(1);
    for (size_t T = r0 / BN_TILE_ROWS; T * BN_TILE_ROWS < r1; T++) {
        const uint8_t *t = w + T * tb;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0;
        for (size_t g = 0; g < nch; g++) {
            __m512i x = _mm512_loadu_si512(t + g * BN_CHUNK_BYTES);
            const int8_t *qg = q + g * BN_T5_CHUNK_COLS;
            _mm_prefetch((const char *)(t + g * BN_CHUNK_BYTES + BN_PF_DIST), _MM_HINT_T0);
            __m512i s = _mm512_setzero_si512();
#pragma GCC unroll 5
            for (int p = 0; p < 5; p++) {
                s = _mm512_add_epi16(s, _mm512_maddubs_epi16(t5_digits_512(x), bcast4(qg + 4 * p)));
                x = _mm512_add_epi8(x, _mm512_add_epi8(x, x));
            }
            if (g & 1) a1 = _mm512_add_epi32(a1, _mm512_madd_epi16(s, one16));
            else a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(s, one16));
        }
        store_tile_512(y, _mm512_add_epi32(a0, a1), sq, as, ws, T * BN_TILE_ROWS, r0, r1);
    }
}
#endif

void FN(bn_tern_gemv_i2)(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                         float act_scale, float w_scale, float *y, size_t r0, size_t r1)
{
    (void)rows;
    FN(gemv_i2_rows)(w, bn_tern_cols_padded(BN_TERN_I2, cols), q, act_scale, w_scale, y, r0, r1);
}

void FN(bn_tern_gemv_t5)(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                         float act_scale, float w_scale, float *y, size_t r0, size_t r1)
{
    size_t cols_p = bn_tern_cols_padded(BN_TERN_T5, cols);
    if (BN_VNNI && cols_p >= 32768) { /* beyond the exactness bound of the y*q trick */
        bn_tern_gemv_t5_scalar(w, rows, cols, q, act_scale, w_scale, y, r0, r1);
        return;
    }
    FN(gemv_t5_rows)(w, cols_p, q, act_scale, w_scale, y, r0, r1);
}

/* ---- GEMM ------------------------------------------------------------------------------ */
/* Weights are decoded once per (row-tile group, K slice, token block) into u8 digit planes in
 * an L1-resident buffer, then a register-blocked micro-kernel runs MT tiles x NT tokens of
 * accumulators over it: each 64-byte code vector is reused NT times, each broadcast
 * activation MT times. Partial int32 sums live in accb between K slices. */

/* acc[m][t] over nk4 groups of 4 columns; codes of tile m at codes + m*cstride. */
static inline __attribute__((always_inline)) void
FN(mk)(const int MT, const int NT, const uint8_t *codes, size_t cstride, size_t nk4,
       const int8_t *q, size_t qstride, int32_t *accb, int first)
{
    __m512i acc[GM_MT][GM_NT];
#pragma GCC unroll 4
    for (int m = 0; m < MT; m++)
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++)
            acc[m][t] = first ? _mm512_setzero_si512()
                              : _mm512_load_si512(accb + ((size_t)t * GM_MT + m) * 16);
    for (size_t k = 0; k < nk4; k++) {
        __m512i c[GM_MT];
#pragma GCC unroll 4
        for (int m = 0; m < MT; m++) c[m] = _mm512_load_si512(codes + m * cstride + k * 64);
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) {
            const __m512i b = bcast4(q + t * qstride + 4 * k);
#pragma GCC unroll 4
            for (int m = 0; m < MT; m++) acc[m][t] = FN(dot4)(acc[m][t], c[m], b);
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MT; m++)
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) _mm512_store_si512(accb + ((size_t)t * GM_MT + m) * 16, acc[m][t]);
}

/* The hot 4 x 6 case written out with named accumulators, so that it is fully unrolled with
 * all 24 accumulators in registers at -O2 (GCC does not unroll the generic mk's loops before
 * register allocation, and then keeps its accumulator array in memory). */
#define MK_T(X, m) X(m, 0) X(m, 1) X(m, 2) X(m, 3) X(m, 4) X(m, 5)
#define MK_ALL(X) MK_T(X, 0) MK_T(X, 1) MK_T(X, 2) MK_T(X, 3)
#define MK_ACC(m, t) ((t) * GM_MT + (m)) * 16
static void FN(mk_4x6)(const uint8_t *codes, size_t cstride, size_t nk4, const int8_t *q,
                       size_t qstride, int32_t *accb, int first)
{
#define MK_INIT(m, t) __m512i a##m##t = first ? _mm512_setzero_si512() : _mm512_load_si512(accb + MK_ACC(m, t));
    MK_ALL(MK_INIT)
#undef MK_INIT
    const int8_t *q0 = q, *q1 = q + qstride, *q2 = q + 2 * qstride, *q3 = q + 3 * qstride;
    const int8_t *q4 = q + 4 * qstride, *q5 = q + 5 * qstride;
    for (size_t k = 0; k < nk4; k++) {
        const __m512i c0 = _mm512_load_si512(codes + k * 64);
        const __m512i c1 = _mm512_load_si512(codes + cstride + k * 64);
        const __m512i c2 = _mm512_load_si512(codes + 2 * cstride + k * 64);
        const __m512i c3 = _mm512_load_si512(codes + 3 * cstride + k * 64);
        __m512i b;
#define MK_DOT(m, t) a##m##t = FN(dot4)(a##m##t, c##m, b);
#define MK_TOK(t) b = bcast4(q##t + 4 * k); MK_DOT(0, t) MK_DOT(1, t) MK_DOT(2, t) MK_DOT(3, t)
        MK_TOK(0) MK_TOK(1) MK_TOK(2) MK_TOK(3) MK_TOK(4) MK_TOK(5)
#undef MK_TOK
#undef MK_DOT
    }
#define MK_STORE(m, t) _mm512_store_si512(accb + MK_ACC(m, t), a##m##t);
    MK_ALL(MK_STORE)
#undef MK_STORE
}
#undef MK_ACC
#undef MK_ALL
#undef MK_T

/* Runs the micro-kernel over nb tokens for mt tiles (mt == GM_MT, or one tile at a time). */
static void FN(mk_block)(size_t mt, const uint8_t *codes, size_t cstride, size_t nk4,
                         const int8_t *q, size_t qstride, size_t nb, int32_t *accb, int first)
{
    size_t t = 0;
    if (mt == GM_MT) {
        for (; t + GM_NT <= nb; t += GM_NT)
            FN(mk_4x6)(codes, cstride, nk4, q + t * qstride, qstride, accb + t * GM_MT * 16, first);
        for (; t < nb; t++)
            FN(mk)(GM_MT, 1, codes, cstride, nk4, q + t * qstride, qstride, accb + t * GM_MT * 16, first);
        return;
    }
    for (size_t m = 0; m < mt; m++) {
        const uint8_t *cm = codes + m * cstride;
        for (t = 0; t + GM_NT <= nb; t += GM_NT)
            FN(mk)(1, GM_NT, cm, cstride, nk4, q + t * qstride, qstride, accb + (t * GM_MT + m) * 16, first);
        for (; t < nb; t++)
            FN(mk)(1, 1, cm, cstride, nk4, q + t * qstride, qstride, accb + (t * GM_MT + m) * 16, first);
    }
}

static void FN(gemm_common)(bn_tern_fmt fmt, const uint8_t *w, size_t cols, const int8_t *q,
                            const float *as, size_t n, float ws, float *y, size_t ldy, size_t r0,
                            size_t r1)
{
    const int t5 = fmt == BN_TERN_T5;
    const size_t cols_p = bn_tern_cols_padded(fmt, cols);
    const size_t tb = t5 ? bn_t5_tile_bytes(cols_p) : bn_i2_tile_bytes(cols_p);
    const size_t nch = cols_p / (t5 ? BN_T5_CHUNK_COLS : BN_I2_CHUNK_COLS);
    const size_t ccols = t5 ? BN_T5_CHUNK_COLS : BN_I2_CHUNK_COLS, k4pc = ccols / 4;
    const size_t slice = t5 ? GM_SLICE_T5 : GM_SLICE_I2;
    const size_t cstride = slice * k4pc * 64;
    _Alignas(64) uint8_t codes[GM_MT * GM_SLICE_MAXK4 * 64];
    _Alignas(64) int32_t accb[GM_NB * GM_MT * 16];
    int32_t sq[GM_NB];
    const size_t T1 = (r1 + BN_TILE_ROWS - 1) / BN_TILE_ROWS;
    for (size_t T = r0 / BN_TILE_ROWS; T < T1; T += GM_MT) {
        const size_t mt = T1 - T < GM_MT ? T1 - T : GM_MT;
        for (size_t tok0 = 0; tok0 < n; tok0 += GM_NB) {
            const size_t nb = n - tok0 < GM_NB ? n - tok0 : GM_NB;
            const int8_t *qb = q + tok0 * cols_p;
            for (size_t t = 0; t < nb; t++) sq[t] = sum_q_512(qb + t * cols_p, cols_p);
            for (size_t ch0 = 0; ch0 < nch; ch0 += slice) {
                const size_t sc = nch - ch0 < slice ? nch - ch0 : slice;
                for (size_t m = 0; m < mt; m++) {
                    const uint8_t *src = w + (T + m) * tb + ch0 * BN_CHUNK_BYTES;
                    if (t5) decode_t5_512(src, sc, codes + m * cstride);
                    else decode_i2_512(src, sc, codes + m * cstride);
                }
                FN(mk_block)(mt, codes, cstride, sc * k4pc, qb + ch0 * ccols, cols_p, nb, accb, ch0 == 0);
            }
            for (size_t t = 0; t < nb; t++)
                for (size_t m = 0; m < mt; m++) {
                    const __m512i a = _mm512_load_si512(accb + (t * GM_MT + m) * 16);
                    store_tile_512(y + (tok0 + t) * ldy, a, sq[t], as[tok0 + t], ws, (T + m) * BN_TILE_ROWS, r0, r1);
                }
        }
    }
}

void FN(bn_tern_gemm_i2)(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                         const float *act_scale, size_t n, float w_scale, float *y, size_t ldy,
                         size_t r0, size_t r1)
{
    if (n == 1) { /* nothing to reuse: the streaming GEMV is faster and gives the same bits */
        FN(bn_tern_gemv_i2)(w, rows, cols, q, act_scale[0], w_scale, y, r0, r1);
        return;
    }
    FN(gemm_common)(BN_TERN_I2, w, cols, q, act_scale, n, w_scale, y, ldy, r0, r1);
}

void FN(bn_tern_gemm_t5)(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                         const float *act_scale, size_t n, float w_scale, float *y, size_t ldy,
                         size_t r0, size_t r1)
{
    if (n == 1) {
        FN(bn_tern_gemv_t5)(w, rows, cols, q, act_scale[0], w_scale, y, r0, r1);
        return;
    }
    FN(gemm_common)(BN_TERN_T5, w, cols, q, act_scale, n, w_scale, y, ldy, r0, r1);
}

#undef FN
#undef BN_CAT
#undef BN_CAT_
