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

/* ---- GEMM, 2..GS_NT tokens: fused decode ------------------------------------------------ */
/* Batched decode of a few sequences: each 64-byte chunk of MT tiles is loaded once, its digit
 * planes are decoded in registers and every one of the NT tokens is run over them, with all
 * MT x NT accumulators in named registers (no decode buffer, no accumulators in memory).
 * Per (tile, plane) the decode costs about as much as 3-6 products, so it is paid once per
 * call for all tokens instead of once per token as in the GEMV. */

/* Product of one digit plane d with a broadcast activation group b into tile/token (a, s).
 * VNNI: vpdpbusd straight into the int32 accumulator. Plain: vpmaddubsw into an int16 partial
 * s (<= 5 planes x 512 per chunk, see the top of the file), widened once per chunk by flush. */
#if BN_VNNI
static inline __attribute__((always_inline)) void FN(pdot)(__m512i *a, __m512i *s, __m512i d, __m512i b)
{
    (void)s;
    __asm__("vpdpbusd %2, %1, %0" : "+v"(*a) : "v"(d), "v"(b));
}
static inline __attribute__((always_inline)) void FN(pflush)(__m512i *a, __m512i *s) { (void)a, (void)s; }
#else
static inline __attribute__((always_inline)) void FN(pdot)(__m512i *a, __m512i *s, __m512i d, __m512i b)
{
    (void)a;
    const __m512i t = _mm512_maddubs_epi16(d, b);
    __asm__("vpaddw %1, %0, %0" : "+v"(*s) : "v"(t));
}
static inline __attribute__((always_inline)) void FN(pflush)(__m512i *a, __m512i *s)
{
    const __m512i t = _mm512_madd_epi16(*s, _mm512_set1_epi16(1));
    __asm__("vpaddd %1, %0, %0" : "+v"(*a) : "v"(t));
    *s = _mm512_setzero_si512();
}
#endif

/* Digit plane p of a chunk x (T5: x advances by *3 each plane, planes taken in order). */
static inline __attribute__((always_inline)) __m512i FN(plane)(int t5, __m512i *x, int p)
{
    if (t5) {
        const __m512i d = t5_digits_512(*x);
        *x = _mm512_add_epi8(*x, _mm512_add_epi8(*x, *x));
        return d;
    }
    return _mm512_and_si512(_mm512_srli_epi16(*x, 2 * p), _mm512_set1_epi8(3));
}

/* Kernel sk_MTxNT: tiles T..T+MT-1 (tile stride tb) x NT tokens (row stride qs) over nch
 * chunks, results stored for the rows of [r0, r1). */
#define SK_ZERO(m, t) __m512i a##m##t = _mm512_setzero_si512(), s##m##t = a##m##t;
#define SK_QPTR(t) const int8_t *q##t = q + (t) * qs;
#define SK_LOADX(m)                                                                      \
    __m512i x##m = _mm512_loadu_si512(w##m + g * BN_CHUNK_BYTES);                        \
    _mm_prefetch((const char *)(w##m + g * BN_CHUNK_BYTES + BN_PF_DIST), _MM_HINT_T0);
#define SK_WPTR(m) const uint8_t *w##m = w + (m) * tb;
#define SK_DEC(m) const __m512i d##m = FN(plane)(t5, &x##m, p);
#define SK_DOT(m, t) FN(pdot)(&a##m##t, &s##m##t, d##m, bcast4(q##t + qo));
#define SK_FLUSH(m, t) FN(pflush)(&a##m##t, &s##m##t);
#define SK_OUT(m, t) out[(t) * (MT_) + (m)] = a##m##t;
#define SK_DEF(MT, NT)                                                                           \
    static inline __attribute__((always_inline)) void FN(sk_##MT##x##NT)(                        \
        int t5, const uint8_t *w, size_t tb, size_t nch, const int8_t *q, size_t qs,             \
        const int32_t *sq, const float *as, float ws, float *y, size_t ldy, size_t rbase,        \
        size_t r0, size_t r1)                                                                    \
    {                                                                                            \
        const int np = t5 ? 5 : 4;                                                               \
        const size_t cc = t5 ? BN_T5_CHUNK_COLS : BN_I2_CHUNK_COLS;                              \
        BN_REP##MT(SK_WPTR)                                                                      \
        BN_REP##NT(SK_QPTR)                                                                      \
        BN_GRID(MT, NT, SK_ZERO)                                                                 \
        for (size_t g = 0; g < nch; g++) {                                                       \
            BN_REP##MT(SK_LOADX)                                                                 \
            _Pragma("GCC unroll 5") for (int p = 0; p < np; p++) {                               \
                const size_t qo = g * cc + 4 * (size_t)p;                                        \
                BN_REP##MT(SK_DEC)                                                               \
                BN_GRID(MT, NT, SK_DOT)                                                          \
            }                                                                                    \
            BN_GRID(MT, NT, SK_FLUSH)                                                            \
        }                                                                                        \
        enum { MT_ = MT };                                                                       \
        __m512i out[MT * NT];                                                                    \
        BN_GRID(MT, NT, SK_OUT)                                                                  \
        store_block_512(out, MT, NT, sq, as, ws, y, ldy, rbase, r0, r1);                         \
    }
/* Tile groups: enough independent accumulator chains to hide the product latency, within
 * the 32 registers (plain AVX512 also holds an int16 partial per accumulator). */
#if BN_VNNI
SK_DEF(4, 2) SK_DEF(4, 3) SK_DEF(4, 4) SK_DEF(3, 5) SK_DEF(3, 6) SK_DEF(2, 7) SK_DEF(2, 8)
#define SK_MT2 4
#define SK_MT3 4
#define SK_MT4 4
#define SK_MT5 3
#define SK_MT6 3
#define SK_MT7 2
#define SK_MT8 2
#else
SK_DEF(4, 2) SK_DEF(2, 3) SK_DEF(2, 4) SK_DEF(1, 5) SK_DEF(1, 6) SK_DEF(1, 7) SK_DEF(1, 8)
#define SK_MT2 4
#define SK_MT3 2
#define SK_MT4 2
#define SK_MT5 1
#define SK_MT6 1
#define SK_MT7 1
#define SK_MT8 1
#endif
SK_DEF(1, 2) SK_DEF(1, 3) SK_DEF(1, 4)
#if BN_VNNI
SK_DEF(1, 5) SK_DEF(1, 6) SK_DEF(1, 7) SK_DEF(1, 8)
#endif
#undef SK_DEF
#undef SK_OUT
#undef SK_FLUSH
#undef SK_DOT
#undef SK_DEC
#undef SK_WPTR
#undef SK_LOADX
#undef SK_QPTR
#undef SK_ZERO

/* Whole groups of SK_MT<n> tiles, then single tiles for the rest of [r0, r1). */
#define SK_CASE_(NT, MT)                                                                          \
    case NT:                                                                                      \
        for (; T + MT <= T1; T += MT)                                                             \
            FN(sk_##MT##x##NT)(t5, w + T * tb, tb, nch, q, cols_p, sq, as, ws, y, ldy, T * BN_TILE_ROWS, r0, r1); \
        for (; T < T1; T++)                                                                       \
            FN(sk_1x##NT)(t5, w + T * tb, tb, nch, q, cols_p, sq, as, ws, y, ldy, T * BN_TILE_ROWS, r0, r1); \
        break;
#define SK_CASE(NT, MT) SK_CASE_(NT, MT)
static inline __attribute__((always_inline)) void
FN(gemm_small)(int t5, const uint8_t *w, size_t cols_p, const int8_t *q, const float *as, size_t n,
               float ws, float *y, size_t ldy, size_t r0, size_t r1)
{
    const size_t tb = t5 ? bn_t5_tile_bytes(cols_p) : bn_i2_tile_bytes(cols_p);
    const size_t nch = cols_p / (t5 ? BN_T5_CHUNK_COLS : BN_I2_CHUNK_COLS);
    int32_t sq[GS_NT];
    for (size_t t = 0; t < n; t++) sq[t] = sum_q_512(q + t * cols_p, cols_p);
    size_t T = r0 / BN_TILE_ROWS;
    const size_t T1 = (r1 + BN_TILE_ROWS - 1) / BN_TILE_ROWS;
    switch (n) {
        SK_CASE(2, SK_MT2) SK_CASE(3, SK_MT3) SK_CASE(4, SK_MT4) SK_CASE(5, SK_MT5)
        SK_CASE(6, SK_MT6) SK_CASE(7, SK_MT7) SK_CASE(8, SK_MT8)
    default: break; /* callers pass 2 <= n <= GS_NT */
    }
}
#undef SK_CASE
#undef SK_CASE_
#undef SK_MT2
#undef SK_MT3
#undef SK_MT4
#undef SK_MT5
#undef SK_MT6
#undef SK_MT7
#undef SK_MT8

static void FN(gemm_small_i2)(const uint8_t *w, size_t cols_p, const int8_t *q, const float *as,
                              size_t n, float ws, float *y, size_t ldy, size_t r0, size_t r1)
{
    FN(gemm_small)(0, w, cols_p, q, as, n, ws, y, ldy, r0, r1);
}

static void FN(gemm_small_t5)(const uint8_t *w, size_t cols_p, const int8_t *q, const float *as,
                              size_t n, float ws, float *y, size_t ldy, size_t r0, size_t r1)
{
    FN(gemm_small)(1, w, cols_p, q, as, n, ws, y, ldy, r0, r1);
}

/* ---- GEMM, more tokens: decode to L1 once per token block ------------------------------- */
/* Weights are decoded once per (row-tile group, K slice, token block) into u8 digit planes in
 * an L1-resident buffer, then register-blocked micro-kernels run MT tiles x NT tokens of
 * accumulators over it: each 64-byte code vector is reused NT times, each broadcast
 * activation MT times. Partial int32 sums live in accb between K slices. */

/* Kernel mk_MTxNT (MT = GM_MT or 1, NT = 1..GM_NT): acc[m][t] over nk4 groups of 4 columns,
 * codes of tile m at codes + m*cstride, accumulator (m, t) at accb + (t*GM_MT + m)*16. Named
 * accumulators, so that all of them stay in registers at -O2 (GCC does not unroll loops over
 * an accumulator array before register allocation, and then keeps the array in memory). */
#define MK_ACC(m, t) ((t) * GM_MT + (m)) * 16
#define MK_INIT(m, t) __m512i a##m##t = first ? _mm512_setzero_si512() : _mm512_load_si512(accb + MK_ACC(m, t));
#define MK_QPTR(t) const int8_t *q##t = q + (t) * qstride;
#define MK_LOADC(m) const __m512i c##m = _mm512_load_si512(codes + (m) * cstride + k * 64);
#define MK_DOT(m, t) a##m##t = FN(dot4)(a##m##t, c##m, bcast4(q##t + 4 * k));
#define MK_STORE(m, t) _mm512_store_si512(accb + MK_ACC(m, t), a##m##t);
#define MK_DEF(MT, NT)                                                                           \
    static void FN(mk_##MT##x##NT)(const uint8_t *codes, size_t cstride, size_t nk4,             \
                                   const int8_t *q, size_t qstride, int32_t *accb, int first)    \
    {                                                                                            \
        (void)cstride;                                                                           \
        BN_GRID(MT, NT, MK_INIT)                                                                 \
        BN_REP##NT(MK_QPTR)                                                                      \
        for (size_t k = 0; k < nk4; k++) {                                                       \
            BN_REP##MT(MK_LOADC)                                                                 \
            BN_GRID(MT, NT, MK_DOT)                                                              \
        }                                                                                        \
        BN_GRID(MT, NT, MK_STORE)                                                                \
    }
MK_DEF(4, 1) MK_DEF(4, 2) MK_DEF(4, 3) MK_DEF(4, 4) MK_DEF(4, 5) MK_DEF(4, 6)
MK_DEF(1, 1) MK_DEF(1, 2) MK_DEF(1, 3) MK_DEF(1, 4) MK_DEF(1, 5) MK_DEF(1, 6)
#undef MK_DEF
#undef MK_STORE
#undef MK_DOT
#undef MK_LOADC
#undef MK_QPTR
#undef MK_INIT
#undef MK_ACC

typedef void (*FN(mk_fn))(const uint8_t *, size_t, size_t, const int8_t *, size_t, int32_t *, int);
static const FN(mk_fn) FN(mk_tab)[2][GM_NT + 1] = {
    {NULL, FN(mk_1x1), FN(mk_1x2), FN(mk_1x3), FN(mk_1x4), FN(mk_1x5), FN(mk_1x6)},
    {NULL, FN(mk_4x1), FN(mk_4x2), FN(mk_4x3), FN(mk_4x4), FN(mk_4x5), FN(mk_4x6)},
};

/* Runs the micro-kernels over nb tokens for mt tiles (mt == GM_MT, or one tile at a time).
 * The tokens are cut into the fewest pieces of at most GM_NT, as equal as possible (8 = 4+4,
 * 13 = 4+4+5), so no piece is a slow narrow one. */
static void FN(mk_block)(size_t mt, const uint8_t *codes, size_t cstride, size_t nk4,
                         const int8_t *q, size_t qstride, size_t nb, int32_t *accb, int first)
{
    const size_t pieces = (nb + GM_NT - 1) / GM_NT;
    for (size_t i = 0, t = 0; i < pieces; i++) {
        const size_t len = (nb - t) / (pieces - i);
        const int8_t *qt = q + t * qstride;
        if (mt == GM_MT) {
            FN(mk_tab)[1][len](codes, cstride, nk4, qt, qstride, accb + t * GM_MT * 16, first);
        } else {
            for (size_t m = 0; m < mt; m++)
                FN(mk_tab)[0][len](codes + m * cstride, cstride, nk4, qt, qstride,
                                   accb + (t * GM_MT + m) * 16, first);
        }
        t += len;
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
    if (n <= GS_NT)
        FN(gemm_small_i2)(w, bn_tern_cols_padded(BN_TERN_I2, cols), q, act_scale, n, w_scale, y, ldy, r0, r1);
    else
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
    if (n <= GS_NT)
        FN(gemm_small_t5)(w, bn_tern_cols_padded(BN_TERN_T5, cols), q, act_scale, n, w_scale, y, ldy, r0, r1);
    else
        FN(gemm_common)(BN_TERN_T5, w, cols, q, act_scale, n, w_scale, y, ldy, r0, r1);
}

#undef FN
#undef BN_CAT
#undef BN_CAT_
