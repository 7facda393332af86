/* Kernel tests: the scalar reference against naive formulas, and every SIMD variant this CPU
 * supports against the scalar reference (bit for bit for everything integer-derived; to a
 * tight relative tolerance for float reductions, whose summation order differs by design).
 * Fixed seeds; no timings asserted. */
#include <check.h>
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
    ck_assert_int_eq(bn_kernels_force(BN_ISA_SCALAR), 0);
    ck_assert_int_eq(bn_kernels_isa(), BN_ISA_SCALAR);
    ck_assert_int_eq(bn_kernels_force(best), 0);
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
    if (bn_kernels_isa_supported(BN_ISA_AVX2)) {
        probe_isa("avx2", got, sizeof got);
        ck_assert_str_eq(got, "avx2");
    }
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

/* The public entry points route through the forced variant. */
START_TEST(test_tern_dispatch_public)
{
    bn_test_rng_seed(8);
    tcase c = tcase_make(BN_TERN_T5, 40, 333, TK_RANDOM);
    int8_t *q = bn_test_xmalloc(c.cols_p);
    fill_act(q, c.cols, c.cols_p, AK_RANDOM);
    float y0[40], y1[40];
    gemv_ref(&bn_ktab_scalar, &c, q, 3.0f, 0.5f, y0, 0, 40);
    bn_isa saved = bn_kernels_isa();
    FOR_EACH_ISA(isa) {
        ck_assert_int_eq(bn_kernels_force((bn_isa)isa), 0);
        memset(y1, 0, sizeof y1);
        bn_tern_gemv(BN_TERN_T5, c.w, c.rows, c.cols, q, 3.0f, 0.5f, y1, 0, 40);
        EXPECT(y_equal(y0, y1, 40));
    }
    bn_kernels_force(saved);
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

START_TEST(test_rope_neox)
{
    float inv[64];
    bn_rope_inv_freq(inv, 128, 500000.0f);
    EXPECT(inv[0] == 1.0f);
    EXPECT(fabs(inv[1] - pow(500000.0, -2.0 / 128)) < 1e-7);
    float x[2 * 128], x0[2 * 128];
    bn_test_rng_seed(10);
    for (int i = 0; i < 256; i++) x0[i] = x[i] = bn_test_rng_float(-1, 1);
    bn_rope_neox(x, 2, 128, 0, inv); /* position 0 is the identity */
    ck_assert_mem_eq(x, x0, sizeof x);
    int pos = 777;
    bn_rope_neox(x, 2, 128, pos, inv);
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 64; i++) {
            /* pairs are (i, i + head_dim/2), not adjacent elements */
            double a = (double)(float)((float)pos * inv[i]);
            double e0 = x0[h * 128 + i] * cos(a) - x0[h * 128 + i + 64] * sin(a);
            double e1 = x0[h * 128 + i] * sin(a) + x0[h * 128 + i + 64] * cos(a);
            EXPECT(fabs(x[h * 128 + i] - e0) < 1e-5);
            EXPECT(fabs(x[h * 128 + i + 64] - e1) < 1e-5);
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
        if (!bn_kernels_isa_supported((bn_isa)isa)) continue;
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

static Suite *kernels_suite(void)
{
    const struct { const char *name; const TTest *tests[8]; } cases[] = {
        {"dispatch", {test_isa_names, test_isa_env, test_tern_dispatch_public}},
        {"pack", {test_pack_geometry, test_pack_roundtrip, test_t5_all_values}},
        {"quant", {test_quant_act_naive, test_quant_act_variants}},
        {"ternary", {test_gemv_scalar_naive, test_tern_variants_random, test_tern_variants_extremes,
                     test_tern_gemm_many_tokens, test_tern_gemm_every_n}},
        {"float", {test_rmsnorm_naive, test_rope_neox, test_softmax_naive, test_float_variants,
                   test_attn_variants}},
        {"half", {test_f16_all_halves, test_f32_to_f16_rounding}},
        {"lm_head", {test_lm_head_variants}},
    };
    Suite *s = suite_create("kernels");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_set_timeout(tc, 300); /* generous for valgrind; natively the suite takes ~1 s */
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
    return bn_test_run(kernels_suite()) ? EXIT_FAILURE : EXIT_SUCCESS;
}
