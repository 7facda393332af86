/* Kernel tests: the scalar reference against naive formulas, and every SIMD variant this CPU
 * supports against the scalar reference (bit for bit for everything integer-derived; to a
 * tight relative tolerance for float reductions, whose summation order differs by design).
 * Fixed seeds; no timings asserted. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/half.h"
#include "kernels/kernels.h"
#include "kernels/kimpl.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------------- */

/* BN_VALGRIND (CI's valgrind pass): the shape tests below run a reduced set there; valgrind
 * also hides AVX512 from CPUID, so those variants are skipped (and reported) under it. */
static int vg;

/* BN_EXPECT_MSG's terse form (tests/testutil.h: why not ck_assert in long loops). */
#define EXPECT(expr) \
    do { if (!(expr)) ck_abort_msg("Assertion '%s' failed (line %d)", #expr, __LINE__); } while (0)

enum tern_kind { TK_RANDOM, TK_ALL_POS, TK_ALL_NEG, TK_ZERO, TK_SPARSE };
static void fill_tern(int8_t *t, size_t n, enum tern_kind k)
{
    for (size_t i = 0; i < n; i++) {
        switch (k) {
        case TK_RANDOM: t[i] = (int8_t)bn_test_rng_int(-1, 1); break;
        case TK_ALL_POS: t[i] = 1; break;
        case TK_ALL_NEG: t[i] = -1; break;
        case TK_ZERO: t[i] = 0; break;
        case TK_SPARSE: t[i] = (int8_t)(bn_test_rng_int(0, 9) == 0 ? bn_test_rng_int(-1, 1) : 0); break;
        }
    }
}

enum act_kind { AK_RANDOM, AK_MAX_POS, AK_MIN_NEG, AK_ZERO, AK_ALT };
static void fill_act(int8_t *q, size_t n, size_t n_p, enum act_kind k)
{
    for (size_t i = 0; i < n; i++) {
        switch (k) {
        case AK_RANDOM: q[i] = (int8_t)bn_test_rng_int(-128, 127); break;
        case AK_MAX_POS: q[i] = 127; break;
        case AK_MIN_NEG: q[i] = -128; break;
        case AK_ZERO: q[i] = 0; break;
        case AK_ALT: q[i] = (int8_t)(i & 1 ? -128 : 127); break;
        }
    }
    for (size_t i = n; i < n_p; i++) q[i] = 0;
}

static int y_equal(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof(float)) == 0;
}


/* SIMD variants only: comparing the scalar reference with itself proves nothing. */
#define FOR_EACH_ISA(isa) \
    for (int isa = 1; isa < BN_ISA_COUNT; isa++) if (bn_test_isa_ok("test_kernels", isa))

static const bn_tern_fmt fmts[2] = {BN_TERN_I2, BN_TERN_T5};

/* ---- dispatch ------------------------------------------------------------------------ */

START_TEST(test_isa_names)
{
    for (int i = 0; i < BN_ISA_COUNT; i++) ck_assert_int_eq(bn_isa_parse(bn_isa_name((bn_isa)i)), i);
    ck_assert_int_eq(bn_isa_parse("sse9"), -1);
    ck_assert_int_eq(bn_isa_parse(NULL), -1);
    EXPECT(bn_kernels_isa_supported(BN_ISA_SCALAR));
    EXPECT(!bn_kernels_isa_supported(BN_ISA_COUNT));
    ck_assert_int_eq(bn_kernels_force(BN_ISA_COUNT), -1);
    bn_isa best = bn_kernels_isa();
    EXPECT(bn_kernels_isa_supported(best));
    printf("test_kernels: default variant %s\n", bn_isa_name(best));
    /* forced back before asserting (the case's fixture would also restore it) */
    const int forced = bn_kernels_force(BN_ISA_SCALAR);
    const bn_isa now = bn_kernels_isa();
    const int back = bn_kernels_force(best);
    ck_assert_int_eq(forced, 0);
    ck_assert_int_eq(now, BN_ISA_SCALAR);
    ck_assert_int_eq(back, 0);
}
END_TEST

/* BITNET_ISA is read once per process, so probe it in a fresh process: this binary re-executed
 * with --isa-probe prints the variant it chose. */
static void probe_isa(const char *env, char *out, size_t n)
{
    char self[400], cmd[512];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    ck_assert_int_gt(len, 0);
    self[len] = 0;
    snprintf(cmd, sizeof cmd, "BITNET_ISA='%s' '%s' --isa-probe", env, self);
    FILE *f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    out[0] = 0;
    if (!fgets(out, (int)n, f)) out[0] = 0;
    out[strcspn(out, "\n")] = 0;
    pclose(f);
}

START_TEST(test_isa_env)
{
    char got[64];
    probe_isa("scalar", got, sizeof got);
    ck_assert_str_eq(got, "scalar");
    /* unknown names fall back to the best variant (the child may see other CPU features than
     * this process, e.g. under valgrind, so only check that it chose a real one) */
    probe_isa("nonsense", got, sizeof got);
    BN_EXPECT_MSG(bn_isa_parse(got) >= 0, "BITNET_ISA=nonsense chose '%s'", got);
    if (!bn_kernels_isa_supported(BN_ISA_AVX2)) BN_TEST_SKIP("no AVX2 here: BITNET_ISA=avx2 not probed");
    probe_isa("avx2", got, sizeof got);
    ck_assert_str_eq(got, "avx2");
}
END_TEST

/* ---- packing ------------------------------------------------------------------------- */

static void roundtrip(bn_tern_fmt fmt, size_t rows, size_t cols, enum tern_kind k)
{
    int8_t *t = bn_test_xmalloc(rows * cols), *u = bn_test_xmalloc(cols + 1);
    size_t sz = bn_tern_packed_size(fmt, rows, cols);
    uint8_t *p = bn_test_xmalloc(sz);
    fill_tern(t, rows * cols, k);
    memset(p, 0xAA, sz);
    bn_tern_pack(fmt, t, rows, cols, p);
    for (size_t r = 0; r < rows; r++) {
        u[cols] = 77;
        bn_tern_unpack_row(fmt, p, rows, cols, r, u);
        BN_EXPECT_MSG(memcmp(u, t + r * cols, cols) == 0, "fmt %d %zux%zu row %zu", fmt, rows, cols, r);
        EXPECT(u[cols] == 77);
    }
    free(t), free(u), free(p);
}

START_TEST(test_pack_roundtrip)
{
    bn_test_rng_seed(1);
    for (int f = 0; f < 2; f++) {
        size_t sizes[][2] = {{1, 1}, {1, 20}, {16, 64}, {17, 65}, {33, 99}, {5, 321}, {48, 640}, {3, 7}};
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
            for (int k = 0; k < 5; k++) roundtrip(fmts[f], sizes[i][0], sizes[i][1], (enum tern_kind)k);
        for (int it = 0; it < 20; it++) roundtrip(fmts[f], (size_t)bn_test_rng_int(1, 70), (size_t)bn_test_rng_int(1, 300), TK_RANDOM);
    }
}
END_TEST

START_TEST(test_pack_geometry)
{
    ck_assert_int_eq(bn_tern_row_tile(BN_TERN_I2), 16);
    ck_assert_int_eq(bn_tern_row_tile(BN_TERN_T5), 16);
    ck_assert_uint_eq(bn_tern_cols_padded(BN_TERN_I2, 2560), 2560);
    ck_assert_uint_eq(bn_tern_cols_padded(BN_TERN_T5, 6912), 6920);
    /* 2 bits and 1.6 bits per weight on the model shapes */
    ck_assert_uint_eq(bn_tern_packed_size(BN_TERN_I2, 2560, 2560), 2560u * 2560 / 4);
    ck_assert_uint_eq(bn_tern_packed_size(BN_TERN_T5, 2560, 2560), 2560u * 2560 / 5);
    ck_assert_uint_eq(bn_tern_packed_size(BN_TERN_I2, 17, 1), 32u * 64 / 4);
    for (int f = 0; f < 2; f++)
        for (size_t c = 1; c < 200; c++) {
            size_t cp = bn_tern_cols_padded(fmts[f], c);
            EXPECT(cp >= c && cp % (size_t)bn_tern_col_block(fmts[f]) == 0 && cp - c < (size_t)bn_tern_col_block(fmts[f]));
        }
}
END_TEST

/* Every 5-digit base-3 value survives the ceil(v*256/243) encoding and the multiply decode. */
START_TEST(test_t5_all_values)
{
    for (unsigned v = 0; v < 243; v++) {
        unsigned byte = (v * 256 + 242) / 243, y = byte, w = 0;
        ck_assert_uint_le(byte, 255);
        for (int p = 0; p < 5; p++) {
            unsigned d = (3 * y) >> 8;
            ck_assert_uint_eq(d, (unsigned)((y >= BN_T5_THR1) + (y >= BN_T5_THR2)));
            w = w * 3 + d;
            y = (3 * y) & 0xff;
        }
        ck_assert_uint_eq(w, v);
    }
}
END_TEST

/* ---- activation quantization ---------------------------------------------------------- */

START_TEST(test_quant_act_naive)
{
    /* max 127 -> s = 1: x*s is x, so the ties show ties-to-even directly */
    const float x[] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.49f, -126.5f, 0.0f, -127.0f};
    const int8_t want[] = {127, 0, 2, 2, 0, -2, -2, 3, -126, 0, -127};
    size_t n = sizeof x / sizeof x[0];
    int8_t q[16];
    memset(q, 99, sizeof q);
    float s = bn_quant_act_scalar(x, n, 16, q);
    EXPECT(s == 1.0f);
    ck_assert_mem_eq(q, want, n);
    for (size_t i = n; i < 16; i++) ck_assert_int_eq(q[i], 0);
    /* all-zero input: the 1e-5 floor */
    float z[5] = {0};
    s = bn_quant_act_scalar(z, 5, 5, q);
    EXPECT(s == (float)(127.0 / 1e-5));
    for (int i = 0; i < 5; i++) ck_assert_int_eq(q[i], 0);
    /* random: against the formula written out */
    bn_test_rng_seed(2);
    float xr[777];
    int8_t qr[800];
    for (int i = 0; i < 777; i++) xr[i] = bn_test_rng_float(-3.0f, 3.0f);
    s = bn_quant_act_scalar(xr, 777, 800, qr);
    double m = 1e-5;
    for (int i = 0; i < 777; i++) m = fmax(m, fabs((double)xr[i]));
    EXPECT(s == (float)(127.0 / m));
    for (int i = 0; i < 777; i++) {
        float v = nearbyintf(xr[i] * s);
        v = v > 127 ? 127 : v < -128 ? -128 : v;
        EXPECT(qr[i] == (int)v);
    }
}
END_TEST

static void check_quant_variants(const float *x, size_t n, size_t n_p)
{
    int8_t *ref = bn_test_xmalloc(n_p), *got = bn_test_xmalloc(n_p);
    float sref = bn_quant_act_scalar(x, n, n_p, ref);
    FOR_EACH_ISA(isa) {
        memset(got, 0x5a, n_p);
        float s = bn_ktab_get((bn_isa)isa)->quant_act(x, n, n_p, got);
        BN_EXPECT_MSG(memcmp(&s, &sref, 4) == 0, "%s n=%zu scale", bn_isa_name((bn_isa)isa), n);
        BN_EXPECT_MSG(memcmp(got, ref, n_p) == 0, "%s n=%zu", bn_isa_name((bn_isa)isa), n);
    }
    free(ref), free(got);
}

START_TEST(test_quant_act_variants)
{
    bn_test_rng_seed(3);
    for (int it = 0; it < 200; it++) {
        size_t n = (size_t)bn_test_rng_int(1, 3000), n_p = n + (size_t)bn_test_rng_int(0, 70);
        float *x = bn_test_xmalloc(n * sizeof(float));
        float amp = (float)pow(10.0, bn_test_rng_int(-7, 4));
        for (size_t i = 0; i < n; i++) x[i] = bn_test_rng_float(-amp, amp);
        if (it % 7 == 0) /* ties: a max of 127 makes s == 1 exactly */
            for (size_t i = 0; i < n; i++) x[i] = (float)bn_test_rng_int(-254, 254) * 0.5f;
        if (it % 11 == 0) memset(x, 0, n * sizeof(float));
        check_quant_variants(x, n, n_p);
        free(x);
    }
}
END_TEST

/* ---- ternary GEMV / GEMM --------------------------------------------------------------- */

typedef struct tcase {
    bn_tern_fmt fmt;
    size_t rows, cols, cols_p;
    int8_t *t;
    uint8_t *w;
} tcase;

static tcase tcase_make(bn_tern_fmt fmt, size_t rows, size_t cols, enum tern_kind k)
{
    tcase c = {fmt, rows, cols, bn_tern_cols_padded(fmt, cols), NULL, NULL};
    c.t = bn_test_xmalloc(rows * cols);
    fill_tern(c.t, rows * cols, k);
    c.w = bn_test_xmalloc(bn_tern_packed_size(fmt, rows, cols));
    bn_tern_pack(fmt, c.t, rows, cols, c.w);
    return c;
}
static void tcase_free(tcase *c) { free(c->t), free(c->w); }

static void gemv_ref(const bn_ktab *k, const tcase *c, const int8_t *q, float as, float ws, float *y,
                     size_t r0, size_t r1)
{
    (c->fmt == BN_TERN_T5 ? k->gemv_t5 : k->gemv_i2)(c->w, c->rows, c->cols, q, as, ws, y, r0, r1);
}

START_TEST(test_gemv_scalar_naive)
{
    bn_test_rng_seed(4);
    for (int f = 0; f < 2; f++)
        for (int it = 0; it < 30; it++) {
            tcase c = tcase_make(fmts[f], (size_t)bn_test_rng_int(1, 40), (size_t)bn_test_rng_int(1, 400), (enum tern_kind)(it % 5));
            int8_t *q = bn_test_xmalloc(c.cols_p);
            fill_act(q, c.cols, c.cols_p, (enum act_kind)(it % 5));
            float *y = bn_test_xmalloc(c.rows * sizeof(float));
            float as = bn_test_rng_float(0.5f, 100.0f), ws = bn_test_rng_float(0.01f, 2.0f);
            gemv_ref(&bn_ktab_scalar, &c, q, as, ws, y, 0, c.rows);
            for (size_t r = 0; r < c.rows; r++) {
                int32_t acc = 0;
                for (size_t j = 0; j < c.cols; j++) acc += c.t[r * c.cols + j] * q[j];
                float want = (float)acc / as * ws;
                BN_EXPECT_MSG(memcmp(&want, &y[r], 4) == 0, "row %zu", r);
            }
            free(q), free(y);
            tcase_free(&c);
        }
}
END_TEST

/* One variant against scalar for one matrix: gemv on full and sub ranges, and gemm. */
static void check_tern_variant(int isa, const tcase *c, enum act_kind ak, size_t n)
{
    const bn_ktab *ref = &bn_ktab_scalar, *k = bn_ktab_get((bn_isa)isa);
    int8_t *q = bn_test_xmalloc(n * c->cols_p);
    float *as = bn_test_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        fill_act(q + i * c->cols_p, c->cols, c->cols_p, ak);
        as[i] = bn_test_rng_float(0.1f, 300.0f);
    }
    float ws = bn_test_rng_float(0.01f, 3.0f);
    size_t ldy = c->rows + 3;
    float *y0 = bn_test_xmalloc(n * ldy * sizeof(float)), *y1 = bn_test_xmalloc(n * ldy * sizeof(float));
    /* sub-ranges on tile boundaries, or ending at rows */
    size_t tiles = (c->rows + 15) / 16;
    size_t t0 = tiles > 1 ? (size_t)bn_test_rng_int(0, (int)tiles - 1) : 0;
    size_t r0s[3] = {0, t0 * 16, 0}, r1s[3] = {c->rows, c->rows, tiles > 1 ? 16 : c->rows};
    for (int s = 0; s < 3; s++) {
        size_t r0 = r0s[s], r1 = r1s[s];
        for (size_t i = 0; i < n * ldy; i++) y0[i] = y1[i] = -7.0f;
        gemv_ref(ref, c, q, as[0], ws, y0, r0, r1);
        gemv_ref(k, c, q, as[0], ws, y1, r0, r1);
        BN_EXPECT_MSG(y_equal(y0, y1, ldy), "gemv %s fmt %d %zux%zu [%zu,%zu)", bn_isa_name((bn_isa)isa),
                      c->fmt, c->rows, c->cols, r0, r1);
        for (size_t i = 0; i < n * ldy; i++) y1[i] = -7.0f;
        (c->fmt == BN_TERN_T5 ? k->gemm_t5 : k->gemm_i2)(c->w, c->rows, c->cols, q, as, n, ws, y1, ldy, r0, r1);
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < ldy; j++) y0[i * ldy + j] = -7.0f;
            gemv_ref(ref, c, q + i * c->cols_p, as[i], ws, y0 + i * ldy, r0, r1);
        }
        BN_EXPECT_MSG(y_equal(y0, y1, n * ldy), "gemm %s fmt %d %zux%zu n=%zu [%zu,%zu)",
                      bn_isa_name((bn_isa)isa), c->fmt, c->rows, c->cols, n, r0, r1);
    }
    free(q), free(as), free(y0), free(y1);
}

START_TEST(test_tern_variants_random)
{
    bn_test_rng_seed(5);
    for (int f = 0; f < 2; f++)
        for (int it = 0; it < 40; it++) {
            size_t rows = (size_t)bn_test_rng_int(1, 80), cols = (size_t)bn_test_rng_int(1, 700);
            if (it % 4 == 0) rows = (size_t)bn_test_rng_int(1, 6) * 16;
            tcase c = tcase_make(fmts[f], rows, cols, TK_RANDOM);
            size_t n = it % 3 == 0 ? 1 : (size_t)bn_test_rng_int(1, 19);
            FOR_EACH_ISA(isa) check_tern_variant(isa, &c, AK_RANDOM, n);
            tcase_free(&c);
        }
}
END_TEST

/* Extremes: +-1 everywhere against +-128/127 activations saturate any int16 shortcut. */
START_TEST(test_tern_variants_extremes)
{
    bn_test_rng_seed(6);
    const size_t shapes[][2] = {{16, 700}, {64, 333}, {1, 1}, {17, 20}, {48, 64}};
    for (int f = 0; f < 2; f++) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int tk = 0; tk < 5; tk++) {
                tcase c = tcase_make(fmts[f], shapes[s][0], shapes[s][1], (enum tern_kind)tk);
                for (int ak = 0; ak < 5; ak++) {
                    if (tk != TK_RANDOM && ak == AK_RANDOM) continue;
                    size_t n = (ak + tk) % 2 ? 1 : 7;
                    FOR_EACH_ISA(isa) check_tern_variant(isa, &c, (enum act_kind)ak, n);
                }
                tcase_free(&c);
            }
        /* the model's longest row (down_proj, 6912): extreme sums over many int16 partials */
        for (int tk = TK_ALL_POS; tk <= TK_ALL_NEG; tk++) {
            tcase c = tcase_make(fmts[f], 17, 6912, (enum tern_kind)tk);
            FOR_EACH_ISA(isa) {
                check_tern_variant(isa, &c, AK_MIN_NEG, 2);
                check_tern_variant(isa, &c, AK_MAX_POS, 1);
                check_tern_variant(isa, &c, AK_MIN_NEG, 4); /* the fused small-n kernels */
                check_tern_variant(isa, &c, AK_MAX_POS, 8);
            }
            tcase_free(&c);
        }
    }
}
END_TEST

/* The GEMM blocking: more tokens than one decoded block (64), token counts that leave tails
 * of the 6- and 4-token micro-kernels, several K slices, and row-tile group tails. */
START_TEST(test_tern_gemm_many_tokens)
{
    bn_test_rng_seed(7);
    for (int f = 0; f < 2; f++) {
        tcase c = tcase_make(fmts[f], 80, 2560, TK_RANDOM);
        FOR_EACH_ISA(isa) check_tern_variant(isa, &c, AK_RANDOM, 13);
        tcase_free(&c);
        c = tcase_make(fmts[f], 40, 555, TK_RANDOM);
        FOR_EACH_ISA(isa) check_tern_variant(isa, &c, AK_RANDOM, 135);
        tcase_free(&c);
    }
}
END_TEST

/* Every token count 1..70 (the fused small-n kernels for 2..8 tokens and every tile-group
 * tail, the decoded path's balanced token pieces and its 60-token blocks), every variant and
 * format, bit for bit against n scalar GEMVs, on the full row range and an inner one. */
START_TEST(test_tern_gemm_every_n)
{
    bn_test_rng_seed(9);
    enum { NMAX = 70, ROWS = 16 * 5 + 3 };
    for (int f = 0; f < 2; f++) {
        tcase c = tcase_make(fmts[f], ROWS, 300, TK_RANDOM); /* 2 K slices in each path */
        int8_t *q = bn_test_xmalloc(NMAX * c.cols_p);
        float as[NMAX], ws = bn_test_rng_float(0.01f, 3.0f);
        for (size_t i = 0; i < NMAX; i++) {
            fill_act(q + i * c.cols_p, c.cols, c.cols_p, AK_RANDOM);
            as[i] = bn_test_rng_float(0.1f, 300.0f);
        }
        const size_t ldy = ROWS + 1, r0s[2] = {0, 16}, r1s[2] = {ROWS, 48};
        float *y0 = bn_test_xmalloc(NMAX * ldy * sizeof(float)), *y1 = bn_test_xmalloc(NMAX * ldy * sizeof(float));
        for (size_t n = 1; n <= NMAX; n++)
            for (int s = 0; s < 2; s++) {
                for (size_t i = 0; i < n * ldy; i++) y0[i] = -7.0f;
                for (size_t i = 0; i < n; i++)
                    gemv_ref(&bn_ktab_scalar, &c, q + i * c.cols_p, as[i], ws, y0 + i * ldy, r0s[s], r1s[s]);
                FOR_EACH_ISA(isa) {
                    const bn_ktab *k = bn_ktab_get((bn_isa)isa);
                    for (size_t i = 0; i < n * ldy; i++) y1[i] = -7.0f;
                    (c.fmt == BN_TERN_T5 ? k->gemm_t5 : k->gemm_i2)(c.w, c.rows, c.cols, q, as, n, ws, y1,
                                                                    ldy, r0s[s], r1s[s]);
                    BN_EXPECT_MSG(y_equal(y0, y1, n * ldy), "gemm %s fmt %d n=%zu [%zu,%zu)",
                               bn_isa_name((bn_isa)isa), c.fmt, n, r0s[s], r1s[s]);
                }
            }
        free(q), free(y0), free(y1);
        tcase_free(&c);
    }
}
END_TEST

/* Any K and any row count, as the 1bitLLM and Falcon3 shapes need: K = 8640 and 5460 (not
 * multiples of 128, 5460 not even of 64), 96, 100, 200 (tiny); rows 100, 5460, 8640 (not
 * multiples of 16 but 8640). Both packings, every variant: the GEMV, the fused 2..8-token
 * GEMM and the decoded GEMM (9 tokens), bit for bit against scalar GEMVs per token, on row
 * ranges that start on row-tile boundaries and end on one or at rows (inside the last,
 * partial tile): the first tile, tiles 1-2, two tiles in the middle, the last two tiles and
 * the last one, plus the full range for 100 rows. Rows outside a range are never written.
 * The scalar result itself is checked against the naive sum on the first and the last tile.
 * Only the tiles some range reads are filled and packed (tile by tile, which gives the same
 * bytes as packing the whole matrix: tiles are independent), so 8640 x 8640 stays cheap.
 * Under valgrind: the small shapes only. */
static void fill_tern_fast(int8_t *t, size_t n)
{
    static const int8_t map[4] = {-1, 0, 1, 0}; /* 2 random bits per weight, zero-heavy */
    for (size_t i = 0; i < n; i += 16) {
        uint32_t r = bn_test_rng_u32() ^ bn_test_rng_u32() << 8;
        for (size_t j = i; j < i + 16 && j < n; j++, r >>= 2) t[j] = map[r & 3];
    }
}

static void check_tern_shape(bn_tern_fmt fmt, size_t rows, size_t cols)
{
    enum { NTOK = 9, NR = 6 };
    const size_t last = (rows - 1) / 16 * 16, mid = rows / 32 * 16;
    const size_t r0s[NR] = {0, 0, 16, mid, last >= 16 ? last - 16 : 0, last};
    const size_t r1s[NR] = {rows, 16 < rows ? 16 : rows, 48 < rows ? 48 : rows,
                            mid + 32 < rows ? mid + 32 : rows, rows, rows};
    const size_t first = rows > 100 ? 1 : 0; /* the full range of a big matrix is not packed */
    tcase c = {fmt, rows, cols, bn_tern_cols_padded(fmt, cols), NULL, NULL};
    c.t = bn_test_xmalloc(rows * cols);
    c.w = bn_test_xmalloc(bn_tern_packed_size(fmt, rows, cols));
    const size_t tb = bn_tern_packed_size(fmt, 16, cols);
    for (size_t T = 0; T * 16 < rows; T++) {
        int used = 0;
        for (size_t s = first; s < NR; s++) used |= T * 16 < r1s[s] && (T + 1) * 16 > r0s[s];
        if (!used) continue;
        const size_t nr = rows - T * 16 < 16 ? rows - T * 16 : 16;
        fill_tern_fast(c.t + T * 16 * cols, nr * cols);
        bn_tern_pack(fmt, c.t + T * 16 * cols, nr, cols, c.w + T * tb);
    }
    int8_t *q = bn_test_xmalloc(NTOK * c.cols_p);
    float as[NTOK], ws = bn_test_rng_float(0.01f, 3.0f);
    for (size_t i = 0; i < NTOK; i++) {
        fill_act(q + i * c.cols_p, cols, c.cols_p, i == 3 ? AK_MIN_NEG : AK_RANDOM);
        as[i] = bn_test_rng_float(0.1f, 300.0f);
    }
    const size_t ns[] = {1, 2, 3, 4, 5, 8, 9};
    const size_t ldy = rows + 5;
    float *y0 = bn_test_xmalloc(NTOK * ldy * 4), *y1 = bn_test_xmalloc(NTOK * ldy * 4);
    for (size_t s = first; s < NR; s++) {
        const size_t r0 = r0s[s], r1 = r1s[s];
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            const size_t n = ns[ni];
            for (size_t i = 0; i < n * ldy; i++) y0[i] = -7.0f;
            for (size_t i = 0; i < n; i++)
                gemv_ref(&bn_ktab_scalar, &c, q + i * c.cols_p, as[i], ws, y0 + i * ldy, r0, r1);
            if (n == 1 && (s == 1 || s == 5))
                for (size_t r = r0; r < r1; r++) {
                    int32_t acc = 0;
                    for (size_t j = 0; j < cols; j++) acc += c.t[r * cols + j] * q[j];
                    const float want = (float)acc / as[0] * ws;
                    BN_EXPECT_MSG(memcmp(&want, &y0[r], 4) == 0, "scalar fmt %d %zux%zu row %zu", fmt, rows, cols, r);
                }
            FOR_EACH_ISA(isa) {
                const bn_ktab *k = bn_ktab_get((bn_isa)isa);
                if (n == 1) {
                    for (size_t i = 0; i < ldy; i++) y1[i] = -7.0f;
                    gemv_ref(k, &c, q, as[0], ws, y1, r0, r1);
                    BN_EXPECT_MSG(y_equal(y0, y1, ldy), "gemv %s fmt %d %zux%zu [%zu,%zu)", bn_isa_name((bn_isa)isa),
                                  fmt, rows, cols, r0, r1);
                }
                for (size_t i = 0; i < n * ldy; i++) y1[i] = -7.0f;
                (fmt == BN_TERN_T5 ? k->gemm_t5 : k->gemm_i2)(c.w, rows, cols, q, as, n, ws, y1, ldy, r0, r1);
                BN_EXPECT_MSG(y_equal(y0, y1, n * ldy), "gemm %s fmt %d %zux%zu n=%zu [%zu,%zu)",
                              bn_isa_name((bn_isa)isa), fmt, rows, cols, n, r0, r1);
            }
        }
    }
    free(q), free(y0), free(y1);
    tcase_free(&c);
}

START_TEST(test_tern_any_k)
{
    bn_test_rng_seed(34);
    const size_t colss[] = {8640, 5460, 96, 100, 200}, rowss[] = {100, 5460, 8640};
    for (int f = 0; f < 2; f++)
        for (size_t ri = 0; ri < sizeof rowss / sizeof rowss[0]; ri++)
            for (size_t ci = 0; ci < sizeof colss / sizeof colss[0]; ci++) {
                if (vg && (rowss[ri] > 100 ? colss[ci] != 100 : colss[ci] > 5460)) continue;
                check_tern_shape(fmts[f], rowss[ri], colss[ci]);
            }
}
END_TEST

/* The public entry points route through the forced variant. */
START_TEST(test_tern_dispatch_public)
{
    bn_test_rng_seed(8);
    tcase c = tcase_make(BN_TERN_T5, 40, 333, TK_RANDOM);
    int8_t *q = bn_test_xmalloc(c.cols_p);
    fill_act(q, c.cols, c.cols_p, AK_RANDOM);
    float y0[40], y1[40];
    gemv_ref(&bn_ktab_scalar, &c, q, 3.0f, 0.5f, y0, 0, 40);
    /* failures are collected and asserted after the variant is restored */
    const bn_isa saved = bn_kernels_isa();
    int bad = -1;
    FOR_EACH_ISA(isa) {
        if (bn_kernels_force((bn_isa)isa) != 0) { bad = isa; break; }
        memset(y1, 0, sizeof y1);
        bn_tern_gemv(BN_TERN_T5, c.w, c.rows, c.cols, q, 3.0f, 0.5f, y1, 0, 40);
        if (!y_equal(y0, y1, 40)) { bad = isa; break; }
    }
    bn_kernels_force(saved);
    BN_EXPECT_MSG(bad < 0, "bn_tern_gemv under %s", bn_isa_name((bn_isa)bad));
    free(q);
    tcase_free(&c);
}
END_TEST

/* ---- float kernels ---------------------------------------------------------------------- */

/* Float reductions in SIMD sum in lanes and then a tree, so the last bits differ from the
 * sequential scalar sum; 1e-5 relative (+1e-6 absolute for values near zero) is far tighter
 * than any real bug and far looser than reordering noise on these sizes. */
static void assert_close(const float *a, const float *b, size_t n, double rel, double abs_tol, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        BN_EXPECT_MSG(d <= abs_tol + rel * fabs((double)a[i]), "%s [%zu]: %.9g vs %.9g", what, i, a[i], b[i]);
    }
}

START_TEST(test_rmsnorm_naive)
{
    bn_test_rng_seed(9);
    float x[2560], w[2560], out[2560];
    for (int i = 0; i < 2560; i++) x[i] = bn_test_rng_float(-4, 4), w[i] = bn_test_rng_float(0, 2);
    bn_rmsnorm_scalar(out, x, w, 2560, 1e-5f);
    double ss = 0;
    for (int i = 0; i < 2560; i++) ss += (double)x[i] * x[i];
    double sc = 1.0 / sqrt(ss / 2560 + 1e-5);
    for (int i = 0; i < 2560; i++) EXPECT(fabs(out[i] - x[i] * sc * w[i]) <= 1e-5 * fabs(x[i] * sc * w[i]) + 1e-7);
}
END_TEST

/* NeoX RoPE for every family's head_dim (one scalar kernel serves every ISA): inv_freq
 * against the formula, position 0 is the identity, other positions against the rotation of
 * the pairs (i, i + head_dim/2) written out in double, on 3 heads back to back. */
START_TEST(test_rope_neox)
{
    bn_test_rng_seed(10);
    const int hds[] = {64, 96, 100, 128, 256, 640}; /* 640: more than one 256-entry cos/sin block */
    for (size_t h = 0; h < sizeof hds / sizeof hds[0]; h++) {
        const int hd = hds[h], half = hd / 2, nh = 3;
        float inv[320], x[3 * 640], x0[3 * 640];
        bn_rope_inv_freq(inv, hd, 500000.0f);
        EXPECT(inv[0] == 1.0f);
        for (int i = 0; i < half; i++)
            BN_EXPECT_MSG(inv[i] == (float)(1.0 / pow(500000.0, 2.0 * i / hd)), "inv_freq hd=%d [%d]", hd, i);
        for (int i = 0; i < nh * hd; i++) x0[i] = x[i] = bn_test_rng_float(-1, 1);
        bn_rope_neox(x, nh, hd, 0, inv); /* position 0 is the identity */
        ck_assert_mem_eq(x, x0, (size_t)nh * hd * 4);
        const int poss[] = {1, 777, 4095};
        for (size_t pi = 0; pi < 3; pi++) {
            const int pos = poss[pi];
            memcpy(x, x0, (size_t)nh * hd * 4);
            bn_rope_neox(x, nh, hd, pos, inv);
            for (int hh = 0; hh < nh; hh++)
                for (int i = 0; i < half; i++) {
                    /* pairs are (i, i + head_dim/2), not adjacent elements */
                    const float *a0 = x0 + hh * hd;
                    double a = (double)(float)((float)pos * inv[i]);
                    double e0 = a0[i] * cos(a) - a0[i + half] * sin(a);
                    double e1 = a0[i] * sin(a) + a0[i + half] * cos(a);
                    BN_EXPECT_MSG(fabs(x[hh * hd + i] - e0) < 1e-5 && fabs(x[hh * hd + i + half] - e1) < 1e-5,
                                  "rope hd=%d pos=%d head %d pair %d", hd, pos, hh, i);
                }
        }
    }
}
END_TEST

START_TEST(test_softmax_naive)
{
    bn_test_rng_seed(11);
    float x[1000], y[1000];
    for (int i = 0; i < 1000; i++) x[i] = bn_test_rng_float(-30, 30);
    memcpy(y, x, sizeof x);
    bn_softmax_scalar(y, 1000);
    double mx = -INFINITY, sum = 0, tot = 0;
    for (int i = 0; i < 1000; i++) mx = fmax(mx, x[i]);
    for (int i = 0; i < 1000; i++) sum += exp((double)x[i] - mx);
    for (int i = 0; i < 1000; i++) {
        double e = exp((double)x[i] - mx) / sum;
        EXPECT(fabs(y[i] - e) <= 1e-6 * e + 1e-12);
        tot += y[i];
    }
    EXPECT(fabs(tot - 1.0) < 1e-5);
    float one = 5.0f;
    bn_softmax_scalar(&one, 1);
    EXPECT(one == 1.0f);
}
END_TEST

START_TEST(test_f16_all_halves)
{
    uint16_t h[65536], back[65536];
    float f[65536];
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    FOR_EACH_ISA(isa) {
        const bn_ktab *k = bn_ktab_get((bn_isa)isa);
        k->f16_to_f32(h, f, 65536);
        k->f32_to_f16(f, back, 65536);
        for (int i = 0; i < 65536; i++) {
            int nan = (i & 0x7c00) == 0x7c00 && (i & 0x3ff);
            if (nan) {
                EXPECT(isnan(f[i]));
                EXPECT((back[i] & 0x7c00) == 0x7c00 && (back[i] & 0x3ff));
                continue;
            }
            BN_EXPECT_MSG(back[i] == h[i], "%s half %04x -> %g -> %04x", bn_isa_name((bn_isa)isa), i, f[i], back[i]);
            EXPECT(bn_f32_bits(f[i]) == bn_f32_bits(bn_f16_to_f32((uint16_t)i)));
        }
    }
}
END_TEST

START_TEST(test_f32_to_f16_rounding)
{
    /* ties to even and overflow, scalar vs SIMD on random bit patterns */
    bn_test_rng_seed(12);
    enum { N = 4099 };
    float *f = bn_test_xmalloc(N * sizeof(float));
    uint16_t *a = bn_test_xmalloc(N * 2), *b = bn_test_xmalloc(N * 2);
    for (int i = 0; i < N; i++) {
        uint32_t u = bn_test_rng_u32() << 1 ^ bn_test_rng_u32();
        if ((u & 0x7f800000u) == 0x7f800000u) u &= ~0x00800000u; /* no NaN/inf here */
        if (i % 3 == 0) u = (u & 0x8fffffffu) | 0x38000000u;     /* around half range */
        f[i] = bn_f32_from_bits(u);
    }
    f[0] = 65519.0f, f[1] = 65520.0f, f[2] = 1.0f + 1.0f / 2048, f[3] = 1.0f + 3.0f / 2048;
    bn_f32_to_f16_scalar(f, a, N);
    ck_assert_uint_eq(a[0], 0x7bff);
    ck_assert_uint_eq(a[1], 0x7c00);
    ck_assert_uint_eq(a[2], 0x3c00);
    ck_assert_uint_eq(a[3], 0x3c02);
    FOR_EACH_ISA(isa) {
        bn_ktab_get((bn_isa)isa)->f32_to_f16(f, b, N);
        ck_assert_mem_eq(a, b, N * 2);
    }
    free(f), free(a), free(b);
}
END_TEST

START_TEST(test_float_variants)
{
    bn_test_rng_seed(13);
    FOR_EACH_ISA(isa) {
        const bn_ktab *k = bn_ktab_get((bn_isa)isa);
        for (int it = 0; it < 20; it++) {
            size_t n = (size_t)bn_test_rng_int(1, 7000);
            float *x = bn_test_xmalloc(n * 4), *w = bn_test_xmalloc(n * 4), *a = bn_test_xmalloc(n * 4), *b = bn_test_xmalloc(n * 4);
            for (size_t i = 0; i < n; i++) x[i] = bn_test_rng_float(-5, 5), w[i] = bn_test_rng_float(-2, 2);
            bn_rmsnorm_scalar(a, x, w, n, 1e-5f);
            k->rmsnorm(b, x, w, n, 1e-5f);
            assert_close(a, b, n, 1e-5, 1e-6, "rmsnorm");
            bn_relu2_mul_scalar(a, x, w, n);
            k->relu2_mul(b, x, w, n);
            EXPECT(y_equal(a, b, n)); /* elementwise, same operation order: exact */
            memcpy(a, x, n * 4), memcpy(b, x, n * 4);
            bn_softmax_scalar(a, n);
            k->softmax(b, n);
            assert_close(a, b, n, 1e-5, 1e-9, "softmax");
            free(x), free(w), free(a), free(b);
        }
    }
}
END_TEST

/* ---- SiLU ------------------------------------------------------------------------------ */

/* Distance in units in the last place between two floats of the same sign class (+0 and -0
 * are 0 apart); infinities and NaN must match exactly (returned as 0 or INT64_MAX). */
static int64_t ulp_dist(float a, float b)
{
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b) ? 0 : INT64_MAX;
    if (isinf(a) || isinf(b)) return a == b ? 0 : INT64_MAX;
    int64_t ia = (int32_t)bn_f32_bits(a), ib = (int32_t)bn_f32_bits(b);
    if (ia < 0) ia = (int64_t)INT32_MIN - ia;
    if (ib < 0) ib = (int64_t)INT32_MIN - ib;
    return ia > ib ? ia - ib : ib - ia;
}

/* The SIMD silu bound: within SILU_ULP ulp of the scalar reference, or within 1e-30 * |u|
 * absolutely (only where |silu(g)| < 3e-37, i.e. g near -88.7 where exp(-g) may overflow to
 * inf one float earlier or later in the vector exp than in expf). Measured: at most 4 ulp
 * over 2^24 arguments in [-89, 89] (a 2-ulp exp error doubles where 1 + exp(-g) and the
 * quotient sit at opposite ends of their binades); the test prints the maximum it saw. */
#define SILU_ULP 6
static int silu_close(float ref, float got, float u)
{
    return ulp_dist(ref, got) <= SILU_ULP || fabs((double)ref - (double)got) <= 1e-30 * fabs((double)u);
}

/* The silu arguments that stress the vector exp: both sides of its clamps (-80, 89), of the
 * overflow of exp(-g) (g = -88.72), of 1 + exp(-g) == 1 (g = 16.6), zeros, denormals, huge
 * magnitudes, infinities and NaN (which stays NaN). */
static const float silu_special[] = {
    0.0f, -0.0f, 1e-40f, -1e-40f, 1e-7f, -1e-7f, 0.5f, -0.5f, 1.0f, -1.0f, 16.5f, 16.7f, -16.6f,
    17.0f, 79.9f, -79.9f, 80.0f, -80.0f, 80.1f, -80.1f, 87.0f, -87.0f, -87.4f, -88.0f, -88.5f,
    -88.72f, -88.7228f, -88.723f, -88.73f, 88.72f, -89.0f, 89.0f, -89.5f, 89.5f, -100.0f,
    100.0f, -1e4f, 1e4f, -1e30f, 1e30f, -FLT_MAX, FLT_MAX, -INFINITY, INFINITY, NAN,
};
#define N_SILU_SPECIAL (sizeof silu_special / sizeof silu_special[0])

START_TEST(test_silu_scalar_naive)
{
    /* against the formula in double: sigmoid's rounding, expf and the two products, a few ulp */
    bn_test_rng_seed(30);
    enum { N = 2000 };
    float g[N], u[N], out[N];
    for (int i = 0; i < N; i++) g[i] = bn_test_rng_float(-30, 30), u[i] = bn_test_rng_float(-4, 4);
    bn_silu_mul_scalar(out, g, u, N);
    for (int i = 0; i < N; i++) {
        const double e = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        BN_EXPECT_MSG(fabs(out[i] - e) <= 4 * FLT_EPSILON * fabs(e) + 1e-37, "silu(%g)*%g = %.9g, want %.9g",
                      g[i], u[i], out[i], e);
    }
    /* the limits: g -> -inf gives 0, g -> +inf gives g * u, never NaN */
    const float one = 1.0f;
    float r;
    float big[] = {-INFINITY, -FLT_MAX, -1e30f, -100.0f, -89.0f};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        bn_silu_mul_scalar(&r, &big[i], &one, 1);
        BN_EXPECT_MSG(r == 0.0f, "silu(%g) = %g", big[i], r);
    }
    float pos[] = {INFINITY, FLT_MAX, 1e30f, 100.0f, 20.0f};
    const float three = 3.0f;
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++) {
        bn_silu_mul_scalar(&r, &pos[i], &one, 1);
        BN_EXPECT_MSG(r == pos[i], "silu(%g) = %g", pos[i], r);
        if (i >= 2) { /* not FLT_MAX * 3 = inf */
            bn_silu_mul_scalar(&r, &pos[i], &three, 1);
            BN_EXPECT_MSG(r == pos[i] * 3.0f, "silu(%g) * 3 = %g", pos[i], r);
        }
    }
    float z = 0.0f;
    bn_silu_mul_scalar(&r, &z, &three, 1);
    EXPECT(r == 0.0f);
    float nan = NAN;
    bn_silu_mul_scalar(&r, &nan, &one, 1);
    EXPECT(isnan(r));
}
END_TEST

/* One variant against scalar on g[0..n): within the bound, n == 0 writes nothing, elements
 * past n are never written, and in place (out == g, as the engine calls it) gives the same
 * bits as out of place. */
static void check_silu_variant(int isa, const float *g, const float *u, size_t n, int64_t *max_ulp)
{
    const bn_ktab *k = bn_ktab_get((bn_isa)isa);
    float *ref = bn_test_xmalloc((n + 1) * 4), *got = bn_test_xmalloc((n + 1) * 4), *inpl = bn_test_xmalloc((n + 1) * 4);
    bn_silu_mul_scalar(ref, g, u, n);
    got[n] = -7.0f;
    k->silu_mul(got, g, u, n);
    EXPECT(got[n] == -7.0f);
    for (size_t i = 0; i < n; i++) {
        BN_EXPECT_MSG(silu_close(ref[i], got[i], u[i]), "silu %s n=%zu [%zu]: g=%.9g u=%.9g: %.9g vs %.9g",
                      bn_isa_name((bn_isa)isa), n, i, g[i], u[i], ref[i], got[i]);
        if (ulp_dist(ref[i], got[i]) > *max_ulp) *max_ulp = ulp_dist(ref[i], got[i]);
    }
    memcpy(inpl, g, n * 4);
    inpl[n] = -7.0f;
    k->silu_mul(inpl, inpl, u, n);
    EXPECT(inpl[n] == -7.0f);
    BN_EXPECT_MSG(memcmp(inpl, got, n * 4) == 0, "silu %s n=%zu in place", bn_isa_name((bn_isa)isa), n);
    free(ref), free(got), free(inpl);
}

START_TEST(test_silu_variants)
{
    bn_test_rng_seed(31);
    /* every tail length of both vector widths, and the engine's FFN widths */
    const size_t ns[] = {0, 1, 2, 7, 8, 9, 15, 16, 17, 23, 31, 32, 33, 47, 100, 1000, 5460, 8640 + 3};
    const size_t nmax = 8640 + 3 + N_SILU_SPECIAL;
    float *g = bn_test_xmalloc(nmax * 4), *u = bn_test_xmalloc(nmax * 4);
    FOR_EACH_ISA(isa) {
        int64_t max_ulp = 0;
        for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
            const size_t n = ns[t];
            for (size_t i = 0; i < n; i++) g[i] = bn_test_rng_float(-20, 20), u[i] = bn_test_rng_float(-4, 4);
            check_silu_variant(isa, g, u, n, &max_ulp);
            /* large magnitudes: g up to +-1e4 against u up to +-1e30 */
            for (size_t i = 0; i < n; i++) {
                g[i] = bn_test_rng_float(-1.0f, 1.0f) * (float)pow(10.0, bn_test_rng_int(-3, 4));
                u[i] = bn_test_rng_float(-1.0f, 1.0f) * (float)pow(10.0, bn_test_rng_int(-30, 30));
            }
            check_silu_variant(isa, g, u, n, &max_ulp);
        }
        /* the special arguments, at every lane position of a vector and in the scalar tails */
        for (size_t sh = 0; sh < 17; sh++) {
            const size_t n = sh + N_SILU_SPECIAL;
            for (size_t i = 0; i < n; i++) g[i] = bn_test_rng_float(-3, 3), u[i] = bn_test_rng_float(-2, 2);
            for (size_t i = 0; i < N_SILU_SPECIAL; i++) g[sh + i] = silu_special[i];
            check_silu_variant(isa, g, u, n, &max_ulp);
        }
        printf("test_kernels: silu %s: at most %lld ulp from scalar\n", bn_isa_name((bn_isa)isa), (long long)max_ulp);
    }
    /* the limits hold in every variant too (not only "close to scalar") */
    FOR_EACH_ISA(isa) {
        float ones[N_SILU_SPECIAL], out[N_SILU_SPECIAL];
        for (size_t i = 0; i < N_SILU_SPECIAL; i++) ones[i] = 1.0f;
        bn_ktab_get((bn_isa)isa)->silu_mul(out, silu_special, ones, N_SILU_SPECIAL);
        for (size_t i = 0; i < N_SILU_SPECIAL; i++) {
            const float x = silu_special[i];
            BN_EXPECT_MSG(isnan(out[i]) == isnan(x), "%s silu(%g) = %g", bn_isa_name((bn_isa)isa), x, out[i]);
            if (x <= -89.0f) BN_EXPECT_MSG(out[i] == 0.0f, "%s silu(%g) = %g", bn_isa_name((bn_isa)isa), x, out[i]);
            if (x >= 17.0f) BN_EXPECT_MSG(out[i] == x, "%s silu(%g) = %g", bn_isa_name((bn_isa)isa), x, out[i]);
        }
    }
    free(g), free(u);
}
END_TEST

/* The public entry point routes through the forced variant (restored before asserting). */
START_TEST(test_silu_dispatch_public)
{
    bn_test_rng_seed(32);
    enum { N = 77 };
    float g[N], u[N], ref[N], got[N];
    for (int i = 0; i < N; i++) g[i] = bn_test_rng_float(-10, 10), u[i] = bn_test_rng_float(-1, 1);
    const bn_isa saved = bn_kernels_isa();
    int bad = -1;
    for (int isa = 0; isa < BN_ISA_COUNT && bad < 0; isa++) {
        if (!bn_test_isa_ok("test_kernels", isa)) continue;
        if (bn_kernels_force((bn_isa)isa) != 0) { bad = isa; break; }
        bn_silu_mul(got, g, u, N);
        bn_ktab_get((bn_isa)isa)->silu_mul(ref, g, u, N);
        if (memcmp(ref, got, sizeof got) != 0) bad = isa;
    }
    bn_kernels_force(saved);
    BN_EXPECT_MSG(bad < 0, "bn_silu_mul under %s is not that variant's kernel", bn_isa_name((bn_isa)bad));
}
END_TEST

START_TEST(test_attn_variants)
{
    bn_test_rng_seed(14);
    const int hd = 128;
    const size_t stride = 640, maxpos = 1100;
    uint16_t *k = bn_test_xmalloc(maxpos * stride * 2), *v = bn_test_xmalloc(maxpos * stride * 2);
    for (size_t i = 0; i < maxpos * stride; i++) {
        k[i] = bn_f32_to_f16(bn_test_rng_float(-2, 2));
        v[i] = bn_f32_to_f16(bn_test_rng_float(-2, 2));
    }
    float q[128], o0[128], o1[128], *sc = bn_test_xmalloc(maxpos * 4);
    for (int i = 0; i < hd; i++) q[i] = bn_test_rng_float(-2, 2);
    size_t npos[] = {1, 2, 7, 16, 33, 1100};
    /* naive in double for the scalar reference */
    for (size_t t = 0; t < sizeof npos / sizeof npos[0]; t++) {
        size_t np = npos[t];
        bn_attn_head_scalar(o0, q, k, v, np, stride, hd, 0.0883883f, sc);
        double *p = bn_test_xmalloc(np * sizeof(double)), mx = -INFINITY, sum = 0;
        for (size_t j = 0; j < np; j++) {
            double s = 0;
            for (int d = 0; d < hd; d++) s += (double)q[d] * bn_f16_to_f32(k[j * stride + d]);
            p[j] = s * 0.0883883f;
            mx = fmax(mx, p[j]);
        }
        for (size_t j = 0; j < np; j++) sum += (p[j] = exp(p[j] - mx));
        for (int d = 0; d < hd; d++) {
            double e = 0;
            for (size_t j = 0; j < np; j++) e += p[j] / sum * bn_f16_to_f32(v[j * stride + d]);
            BN_EXPECT_MSG(fabs(e - o0[d]) < 1e-4, "attn naive %zu %d", np, d);
        }
        free(p);
        FOR_EACH_ISA(isa) {
            bn_ktab_get((bn_isa)isa)->attn_head(o1, q, k + 128, v + 128, np, stride, hd, 0.0883883f, sc);
            bn_attn_head_scalar(o0, q, k + 128, v + 128, np, stride, hd, 0.0883883f, sc);
            assert_close(o0, o1, hd, 1e-4, 1e-5, "attn");
        }
    }
    /* the GQA group entry point: n_q single-head calls of the same variant, bit for bit */
    float qg[5 * 128], og[5 * 128], oh[5 * 128], *scg = bn_test_xmalloc(5 * maxpos * 4);
    for (int i = 0; i < 5 * 128; i++) qg[i] = bn_test_rng_float(-2, 2);
    for (int isa = 0; isa < BN_ISA_COUNT; isa++) {
        if (!bn_test_isa_ok("test_kernels", isa)) continue;
        const bn_ktab *kt = bn_ktab_get((bn_isa)isa);
        for (size_t t = 0; t < sizeof npos / sizeof npos[0]; t++)
            for (int nq = 1; nq <= 5; nq += 3) {
                size_t np = npos[t];
                kt->attn_group(og, qg, nq, k + 256, v + 256, np, stride, hd, 0.0883883f, scg);
                for (int h = 0; h < nq; h++)
                    kt->attn_head(oh + h * 128, qg + h * 128, k + 256, v + 256, np, stride, hd, 0.0883883f, sc);
                BN_EXPECT_MSG(memcmp(og, oh, (size_t)nq * 128 * 4) == 0, "attn_group %s n_q=%d n_pos=%zu",
                           bn_isa_name((bn_isa)isa), nq, np);
            }
    }
    free(scg);
    free(k), free(v), free(sc);
}
END_TEST

/* The head_dims of every family: 64, 128 (2B-4T, Llama3), 96 and 100 (1bitLLM large and 3B),
 * 256 (Falcon3). For each: the scalar reference against the formula in double, every SIMD
 * variant against scalar (the float bound of test_attn_variants), and bn_attn_group bit for
 * bit against n_q bn_attn_head calls of the same variant (scalar included), over several n_pos.
 * K/V sit at a kv head offset inside rows of 3 heads plus padding, as in the engine's cache. */
static const int attn_hds[] = {64, 96, 100, 128, 256};

static void attn_naive_check(const float *q, const uint16_t *k, const uint16_t *v, size_t np,
                             size_t stride, int hd, float scale, const float *got)
{
    double *p = bn_test_xmalloc(np * sizeof(double)), mx = -INFINITY, sum = 0;
    for (size_t j = 0; j < np; j++) {
        double s = 0;
        for (int d = 0; d < hd; d++) s += (double)q[d] * bn_f16_to_f32(k[j * stride + d]);
        p[j] = s * scale;
        mx = fmax(mx, p[j]);
    }
    for (size_t j = 0; j < np; j++) sum += (p[j] = exp(p[j] - mx));
    for (int d = 0; d < hd; d++) {
        double e = 0;
        for (size_t j = 0; j < np; j++) e += p[j] / sum * bn_f16_to_f32(v[j * stride + d]);
        BN_EXPECT_MSG(fabs(e - got[d]) < 1e-4, "attn naive hd=%d n_pos=%zu [%d]: %.7g vs %.7g", hd, np, d, got[d], e);
    }
    free(p);
}

START_TEST(test_attn_head_dims)
{
    bn_test_rng_seed(33);
    const size_t npos_all[] = {1, 2, 3, 5, 16, 33, 130}, npos_vg[] = {1, 3, 17};
    const size_t *npos = vg ? npos_vg : npos_all;
    const size_t n_np = vg ? sizeof npos_vg / sizeof npos_vg[0] : sizeof npos_all / sizeof npos_all[0];
    const size_t maxpos = 130;
    const int nqs[] = {1, 2, 3, 4, 5, 8};
    for (size_t h = 0; h < sizeof attn_hds / sizeof attn_hds[0]; h++) {
        const int hd = attn_hds[h];
        const size_t stride = 3 * (size_t)hd + 4;
        const float scale = 1.0f / sqrtf((float)hd);
        uint16_t *k = bn_test_xmalloc(maxpos * stride * 2), *v = bn_test_xmalloc(maxpos * stride * 2);
        for (size_t i = 0; i < maxpos * stride; i++) {
            k[i] = bn_f32_to_f16(bn_test_rng_float(-2, 2));
            v[i] = bn_f32_to_f16(bn_test_rng_float(-2, 2));
        }
        const uint16_t *kh = k + hd, *vh = v + hd; /* the second kv head */
        float *q = bn_test_xmalloc(8 * (size_t)hd * 4), *o0 = bn_test_xmalloc(8 * (size_t)hd * 4);
        float *o1 = bn_test_xmalloc(8 * (size_t)hd * 4), *sc = bn_test_xmalloc(8 * maxpos * 4);
        for (int i = 0; i < 8 * hd; i++) q[i] = bn_test_rng_float(-2, 2);
        for (size_t t = 0; t < n_np; t++) {
            const size_t np = npos[t];
            bn_attn_head_scalar(o0, q, kh, vh, np, stride, hd, scale, sc);
            attn_naive_check(q, kh, vh, np, stride, hd, scale, o0);
            FOR_EACH_ISA(isa) {
                for (int d = 0; d < hd; d++) o1[d] = NAN; /* every output dimension is written */
                bn_ktab_get((bn_isa)isa)->attn_head(o1, q, kh, vh, np, stride, hd, scale, sc);
                for (int d = 0; d < hd; d++)
                    BN_EXPECT_MSG(fabs(o0[d] - o1[d]) <= 1e-5 + 1e-4 * fabs(o0[d]), "attn %s hd=%d n_pos=%zu [%d]: %.7g vs %.7g",
                                  bn_isa_name((bn_isa)isa), hd, np, d, o0[d], o1[d]);
            }
            for (int isa = 0; isa < BN_ISA_COUNT; isa++) {
                if (!bn_test_isa_ok("test_kernels", isa)) continue;
                const bn_ktab *kt = bn_ktab_get((bn_isa)isa);
                for (size_t j = 0; j < sizeof nqs / sizeof nqs[0]; j++) {
                    const int nq = nqs[j];
                    for (int i = 0; i < nq * hd; i++) o1[i] = NAN;
                    kt->attn_group(o1, q, nq, kh, vh, np, stride, hd, scale, sc);
                    for (int i = 0; i < nq; i++)
                        kt->attn_head(o0 + (size_t)i * hd, q + (size_t)i * hd, kh, vh, np, stride, hd, scale, sc + i * np);
                    BN_EXPECT_MSG(memcmp(o0, o1, (size_t)nq * hd * 4) == 0, "attn_group %s hd=%d n_q=%d n_pos=%zu",
                                  bn_isa_name((bn_isa)isa), hd, nq, np);
                }
            }
        }
        free(k), free(v), free(q), free(o0), free(o1), free(sc);
    }
}
END_TEST

START_TEST(test_lm_head_variants)
{
    bn_test_rng_seed(15);
    for (int it = 0; it < 8; it++) {
        size_t rows = (size_t)bn_test_rng_int(1, 40), cols = (size_t)bn_test_rng_int(1, 1500);
        if (it == 0) cols = 2560, rows = 37;
        if (it == 2) cols = 9000, rows = 6; /* beyond the VNNI kernel's activation buffer */
        size_t cp = bn_round_up(cols, 64);
        float *m = bn_test_xmalloc(rows * cols * 4), *sc = bn_test_xmalloc(rows * 4), *x = bn_test_xmalloc(cp * 4);
        int8_t *w = bn_test_xmalloc(rows * cp), *qx = bn_test_xmalloc(cp);
        uint16_t *h = bn_test_xmalloc(rows * cols * 2);
        for (size_t i = 0; i < rows * cols; i++) m[i] = bn_test_rng_float(-1, 1), h[i] = bn_f32_to_f16(m[i]);
        if (it == 1) for (size_t i = 0; i < rows * cols; i++) m[i] = i % 2 ? -1.0f : 1.0f;
        for (size_t r = 0; r < rows; r++) bn_quant_rows_i8(m + r * cols, cols, cp, w + r * cp, sc + r);
        for (size_t r = 0; r < rows; r++)
            for (size_t c = 0; c < cols; c++) {
                EXPECT(w[r * cp + c] >= -127);
                EXPECT(fabs(w[r * cp + c] * sc[r] - m[r * cols + c]) <= sc[r] * 0.5001 + 1e-7);
            }
        for (size_t c = 0; c < cols; c++) x[c] = bn_test_rng_float(-3, 3);
        float xs = bn_quant_act_scalar(x, cols, cp, qx);
        if (it == 1) memset(qx, 0x80, cols); /* -128 everywhere */
        float *y0 = bn_test_xmalloc(rows * 4), *y1 = bn_test_xmalloc(rows * 4);
        bn_gemv_i8row_scalar(w, sc, cols, cp, qx, xs, y0, 0, rows);
        for (size_t r = 0; r < rows; r++) {
            int32_t acc = 0;
            for (size_t c = 0; c < cols; c++) acc += w[r * cp + c] * qx[c];
            float e = (float)acc / xs * sc[r];
            EXPECT(memcmp(&e, &y0[r], 4) == 0);
        }
        float *f16ref = bn_test_xmalloc(rows * 4);
        double *mag = bn_test_xmalloc(rows * sizeof(double));
        bn_gemv_f16_scalar(h, cols, x, f16ref, 0, rows);
        for (size_t r = 0; r < rows; r++) {
            mag[r] = 0;
            for (size_t c = 0; c < cols; c++) mag[r] += fabs(x[c] * bn_f16_to_f32(h[r * cols + c]));
        }
        FOR_EACH_ISA(isa) {
            const bn_ktab *k = bn_ktab_get((bn_isa)isa);
            size_t r0 = rows > 3 ? 2 : 0;
            for (size_t r = 0; r < rows; r++) y1[r] = y0[r];
            y1[r0] = -1;
            k->gemv_i8row(w, sc, cols, cp, qx, xs, y1 + 0, r0, rows);
            BN_EXPECT_MSG(y_equal(y0, y1, rows), "i8row %s", bn_isa_name((bn_isa)isa));
            for (size_t r = 0; r < rows; r++) y1[r] = f16ref[r];
            y1[r0] = -1;
            k->gemv_f16(h, cols, x, y1, r0, rows);
            /* dot products of mixed-sign terms: the error bound scales with sum |terms| */
            for (size_t r = 0; r < rows; r++)
                BN_EXPECT_MSG(fabs(f16ref[r] - y1[r]) <= 1e-6 * mag[r] + 1e-6, "f16 gemv %s row %zu",
                              bn_isa_name((bn_isa)isa), r);
        }
        free(f16ref), free(mag);
        free(m), free(sc), free(x), free(w), free(qx), free(h), free(y0), free(y1);
    }
}
END_TEST

/* The int8 lm_head kernels on the families' hidden sizes (1536 1bitLLM-large, 3200 1bitLLM-3B)
 * and a tiny one (100, a tail of every vector width): bn_quant_rows_i8 against its formula,
 * bn_gemv_i8row and bn_gemm_i8row (m = 1..9 and 70, past the VNNI kernel's 64-token chunk) of
 * every variant bit for bit against the scalar GEMV per token, on row ranges that are not
 * multiples of the 4-row blocks; rows outside a range are never written. */
START_TEST(test_i8row_shapes)
{
    bn_test_rng_seed(35);
    const size_t colss[] = {1536, 3200, 100}, rows = 37, ldy = rows + 3, MMAX = 70;
    const size_t r0s[] = {0, 2, 5}, r1s[] = {rows, rows, 34};
    for (size_t ci = 0; ci < sizeof colss / sizeof colss[0]; ci++) {
        const size_t cols = colss[ci], cp = bn_round_up(cols, 64);
        float *m = bn_test_xmalloc(rows * cols * 4), *sc = bn_test_xmalloc(rows * 4), *x = bn_test_xmalloc(cols * 4);
        int8_t *w = bn_test_xmalloc(rows * cp), *qx = bn_test_xmalloc(MMAX * cp);
        float xs[70];
        for (size_t i = 0; i < rows * cols; i++) m[i] = bn_test_rng_float(-1, 1) * (i % 7 == 0 ? 10.0f : 1.0f);
        for (size_t c = 0; c < cols; c++) m[5 * cols + c] = 0.0f; /* an all-zero row: scale 0 */
        for (size_t r = 0; r < rows; r++) {
            memset(w + r * cp, 0x55, cp);
            bn_quant_rows_i8(m + r * cols, cols, cp, w + r * cp, sc + r);
            float amax = 0.0f;
            for (size_t c = 0; c < cols; c++) amax = fmaxf(amax, fabsf(m[r * cols + c]));
            BN_EXPECT_MSG(sc[r] == amax / 127.0f, "i8 scale cols=%zu row %zu", cols, r);
            const float is = amax > 0.0f ? 127.0f / amax : 0.0f;
            for (size_t c = 0; c < cp; c++) {
                float v = c < cols ? nearbyintf(m[r * cols + c] * is) : 0.0f;
                v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
                BN_EXPECT_MSG(w[r * cp + c] == (int)v, "i8 quant cols=%zu [%zu][%zu]", cols, r, c);
            }
        }
        for (size_t t = 0; t < MMAX; t++) {
            for (size_t c = 0; c < cols; c++) x[c] = bn_test_rng_float(-3, 3);
            xs[t] = bn_quant_act_scalar(x, cols, cp, qx + t * cp);
        }
        memset(qx + 2 * cp, 0x80, cols); /* token 2: -128 everywhere */
        float *y0 = bn_test_xmalloc(MMAX * ldy * 4), *y1 = bn_test_xmalloc(MMAX * ldy * 4);
        for (size_t s = 0; s < sizeof r0s / sizeof r0s[0]; s++) {
            const size_t r0 = r0s[s], r1 = r1s[s];
            for (size_t i = 0; i < MMAX * ldy; i++) y0[i] = -7.0f;
            for (size_t t = 0; t < MMAX; t++)
                bn_gemv_i8row_scalar(w, sc, cols, cp, qx + t * cp, xs[t], y0 + t * ldy, r0, r1);
            for (size_t r = r0; r < r1; r++) { /* the scalar reference against the sum written out */
                int32_t acc = 0;
                for (size_t c = 0; c < cols; c++) acc += w[r * cp + c] * qx[c];
                const float e = (float)acc / xs[0] * sc[r];
                BN_EXPECT_MSG(memcmp(&e, &y0[r], 4) == 0, "i8row scalar cols=%zu row %zu", cols, r);
            }
            FOR_EACH_ISA(isa) {
                const bn_ktab *k = bn_ktab_get((bn_isa)isa);
                for (size_t i = 0; i < ldy; i++) y1[i] = -7.0f;
                k->gemv_i8row(w, sc, cols, cp, qx, xs[0], y1, r0, r1);
                BN_EXPECT_MSG(y_equal(y0, y1, ldy), "gemv_i8row %s cols=%zu [%zu,%zu)", bn_isa_name((bn_isa)isa), cols, r0, r1);
                for (size_t mm = 1; mm <= MMAX; mm = mm < 9 ? mm + 1 : mm == 9 ? MMAX : MMAX + 1) {
                    for (size_t i = 0; i < mm * ldy; i++) y1[i] = -7.0f;
                    k->gemm_i8row(w, sc, cols, cp, qx, cp, xs, mm, y1, ldy, r0, r1);
                    BN_EXPECT_MSG(y_equal(y0, y1, mm * ldy), "gemm_i8row %s cols=%zu m=%zu [%zu,%zu)",
                                  bn_isa_name((bn_isa)isa), cols, mm, r0, r1);
                }
            }
        }
        free(m), free(sc), free(x), free(w), free(qx), free(y0), free(y1);
    }
}
END_TEST

static Suite *kernels_suite(void)
{
    const struct { const char *name; const TTest *tests[8]; } cases[] = {
        {"dispatch", {test_isa_names, test_isa_env, test_tern_dispatch_public}},
        {"pack", {test_pack_geometry, test_pack_roundtrip, test_t5_all_values}},
        {"quant", {test_quant_act_naive, test_quant_act_variants}},
        {"ternary", {test_gemv_scalar_naive, test_tern_variants_random, test_tern_variants_extremes,
                     test_tern_gemm_many_tokens, test_tern_gemm_every_n, test_tern_any_k}},
        {"float", {test_rmsnorm_naive, test_rope_neox, test_softmax_naive, test_float_variants,
                   test_attn_variants, test_attn_head_dims}},
        {"silu", {test_silu_scalar_naive, test_silu_variants, test_silu_dispatch_public}},
        {"half", {test_f16_all_halves, test_f32_to_f16_rounding}},
        {"lm_head", {test_lm_head_variants, test_i8row_shapes}},
    };
    Suite *s = suite_create("kernels");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_set_timeout(tc, 300); /* generous for valgrind; natively the suite takes ~2 s */
        bn_test_isa_fixture(tc);    /* a failed test never leaves a forced variant behind */
        for (int j = 0; j < 8 && cases[i].tests[j]; j++) tcase_add_test(tc, cases[i].tests[j]);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--isa-probe") == 0) {
        puts(bn_isa_name(bn_kernels_isa()));
        return 0;
    }
    vg = getenv("BN_VALGRIND") != NULL;
    return bn_test_exit("test_kernels", kernels_suite());
}
