/* The int8 lm_head as 2-bit planes (kernels.h, "the int8 lm_head as 2-bit planes"): the
 * packer against the header's layout formula (spelled out here, independently of the kernels'
 * own helper), bands packed alone, bn_u2_gemv in every variant this CPU runs against the
 * scalar reference and against a direct int64 computation from the codes, Horner over the
 * planes, and the stage values with their identity. Fixed seeds; no timings asserted. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/kimpl.h"
#include "testutil.h"

#define T BN_U2_TILE

/* BN_VALGRIND (CI's valgrind pass): fewer shapes and masks; valgrind also hides AVX512 from
 * CPUID, so those variants are skipped (and reported) there. */
static int vg;

#define EXPECT(expr) \
    do { if (!(expr)) ck_abort_msg("Assertion '%s' failed (line %d)", #expr, __LINE__); } while (0)

/* ---- helpers ------------------------------------------------------------------------- */


/* rows x cp codes with row stride ldq: columns [0, cols) uniform in [lo, hi], padding columns
 * 0, and the stride's bytes past cp garbage that the packer must not read as codes. */
static int8_t *make_codes(size_t rows, size_t cols, size_t cp, size_t ldq, int lo, int hi)
{
    int8_t *q = bn_test_xmalloc(rows * ldq);
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < ldq; c++)
            q[r * ldq + c] = (int8_t)(c < cols ? bn_test_rng_int(lo, hi) : c < cp ? 0 : bn_test_rng_int(-128, 127));
    return q;
}

static uint8_t *pack(const int8_t *q, size_t ldq, size_t rows, size_t cp)
{
    uint8_t *p = bn_test_xmalloc(bn_u2_size(rows, cp));
    bn_u2_pack(q, ldq, rows, cp, p);
    return p;
}

/* Digit k of element (r, c) by the header's formula. */
static unsigned digit_at(const uint8_t *planes, size_t cp, size_t r, size_t c, int k)
{
    const size_t off = r / T * T * cp + ((size_t)k * T + r % T) * (cp / 4) + c / 128 * 32 + c % 32;
    return (planes[off] >> (2 * (c % 128 / 32))) & 3u;
}

/* sum_c (p >> sh) * qx[c] over row r of the codes, p = q + 128, with only digit k when one
 * is true: the definition, from the codes, in int64. */
static int64_t ref_dot(const int8_t *q, size_t ldq, size_t cp, const int8_t *qx, size_t r, int sh, int one)
{
    int64_t s = 0;
    for (size_t c = 0; c < cp; c++) {
        const int p = q[r * ldq + c] + 128;
        s += (int64_t)(one ? (p >> sh) & 3 : p >> sh) * qx[c];
    }
    return s;
}

enum qx_kind { QX_RANDOM, QX_MAX, QX_MIN, QX_ALT, QX_COUNT };
static const char *const qx_names[QX_COUNT] = {"random", "+127", "-128", "+-127"};
static void fill_qx(int8_t *qx, size_t cols, size_t cp, enum qx_kind kind)
{
    for (size_t c = 0; c < cp; c++) {
        int v = 0;
        switch (kind) {
        case QX_RANDOM: v = bn_test_rng_int(-128, 127); break;
        case QX_MAX: v = 127; break;
        case QX_MIN: v = -128; break;
        default: v = c & 1 ? -127 : 127; break;
        }
        qx[c] = (int8_t)(c < cols ? v : 0);
    }
}

/* ---- layout -------------------------------------------------------------------------- */

START_TEST(test_geometry)
{
    EXPECT(bn_u2_cols_padded(1) == 128 && bn_u2_cols_padded(128) == 128);
    EXPECT(bn_u2_cols_padded(129) == 256 && bn_u2_cols_padded(2560) == 2560);
    EXPECT(bn_u2_cols_padded(2561) == 2688);
    EXPECT(bn_u2_size(0, 256) == 0);
    EXPECT(bn_u2_size(1, 256) == (size_t)T * 256);
    EXPECT(bn_u2_size(T, 256) == (size_t)T * 256);
    EXPECT(bn_u2_size(T + 1, 2560) == 2 * (size_t)T * 2560);
    /* four planes of cp / 4 bytes per row: the int8 copy's size per whole tile */
    EXPECT(bn_u2_size(128256, 2560) == 128256u * 2560u);
    for (int isa = 0; isa < BN_ISA_COUNT; isa++) {
        const bn_ktab *t = bn_ktab_get((bn_isa)isa);
        EXPECT(!t || t->u2_gemv);   /* every compiled table has the entry */
    }
}
END_TEST

/* Digits reconstruct p = q + 128 exactly: real codes (every value of [-127, 127] on row 0),
 * padding columns (code 0, p = 128), the padding rows of the last tile (code 0); nothing is
 * written past bn_u2_size; bn_u2_unpack_row agrees with the formula. */
START_TEST(test_pack_roundtrip)
{
    bn_test_rng_seed(1);
    const size_t rows = 2 * T + 37, cols = 300, cp = bn_u2_cols_padded(cols), ldq = cp + 16;
    int8_t *q = make_codes(rows, cols, cp, ldq, -127, 127);
    for (size_t c = 0; c < 255; c++) q[c] = (int8_t)(c - 127);
    const size_t size = bn_u2_size(rows, cp), guard = 64;
    uint8_t *planes = bn_test_xmalloc(size + guard);
    memset(planes, 0x5a, size + guard);
    bn_u2_pack(q, ldq, rows, cp, planes);
    for (size_t i = size; i < size + guard; i++) EXPECT(planes[i] == 0x5a);
    uint8_t *dig = bn_test_xmalloc(cp);
    const size_t rows_p = size / cp;
    EXPECT(rows_p == 3 * T);
    for (size_t r = 0; r < rows_p; r++) {
        for (size_t c = 0; c < cp; c++) {
            unsigned p = 0;
            for (int k = 0; k < BN_U2_PLANES; k++) p |= digit_at(planes, cp, r, c, k) << (6 - 2 * k);
            const unsigned want = r < rows ? (unsigned)(q[r * ldq + c] + 128) : 128;
            BN_EXPECT_MSG(p == want, "row %zu col %zu: p %u, want %u", r, c, p, want);
        }
        for (int k = 0; k < BN_U2_PLANES; k++) {
            bn_u2_unpack_row(planes, cp, r, k, dig);
            for (size_t c = 0; c < cp; c++)
                BN_EXPECT_MSG(dig[c] == digit_at(planes, cp, r, c, k), "unpack row %zu plane %d col %zu", r, k, c);
        }
    }
    free(dig), free(planes), free(q);
}
END_TEST

/* Bands packed alone from a tile boundary are byte-identical to the same rows of the whole
 * matrix, the last partial band included (its padding rows too). */
START_TEST(test_pack_band)
{
    bn_test_rng_seed(2);
    const size_t rows = 3 * T + 5, cp = 256, ldq = cp + 3;
    int8_t *q = make_codes(rows, 200, cp, ldq, -127, 127);
    uint8_t *whole = pack(q, ldq, rows, cp);
    const size_t bands[][2] = {{0, T}, {T, 3 * T}, {3 * T, rows}, {2 * T, rows}};
    for (size_t b = 0; b < sizeof bands / sizeof bands[0]; b++) {
        const size_t r0 = bands[b][0], n = bands[b][1] - r0;
        uint8_t *band = pack(q + r0 * ldq, ldq, n, cp);
        BN_EXPECT_MSG(memcmp(band, whole + r0 * cp, bn_u2_size(n, cp)) == 0, "band [%zu, %zu)", r0, r0 + n);
        free(band);
    }
    EXPECT(bn_u2_size(T, cp) + bn_u2_size(2 * T, cp) + bn_u2_size(5, cp) == bn_u2_size(rows, cp));
    free(whole), free(q);
}
END_TEST

/* ---- the plane step ------------------------------------------------------------------ */

enum mask_kind { MASK_NONE, MASK_HALF, MASK_SPARSE, MASK_EMPTY, MASK_COUNT };
static const char *const mask_names[MASK_COUNT] = {"NULL", "half", "sparse", "empty"};
static void fill_live(uint8_t *live, size_t rows, enum mask_kind kind)
{
    for (size_t r = 0; r < rows; r++)
        live[r] = kind == MASK_HALF ? bn_test_rng_int(0, 1) != 0
                : kind == MASK_SPARSE ? bn_test_rng_int(0, 9) == 0 : 0;
}

/* One shape: every plane k, qx kind and live mask, for every variant here: bn_u2_gemv (the
 * public entry, variant forced) from random accumulators equals the scalar reference and
 * 4 acc + the direct digit dot from the codes; rows outside [r0, r1) and dead rows keep
 * their value. */
static void check_shape(size_t cp, size_t cols, size_t rows, size_t r0, size_t r1, int n_masks)
{
    const size_t ldq = cp;
    int8_t *q = make_codes(rows, cols, cp, ldq, -127, 127), *qx = bn_test_xmalloc(cp);
    /* two extreme rows: digits 3 in every plane (code 127), and code -127 (p = 1) */
    if (rows > 2)
        for (size_t c = 0; c < cols; c++) q[1 * ldq + c] = 127, q[2 * ldq + c] = -127;
    uint8_t *planes = pack(q, ldq, rows, cp), *live = bn_test_xmalloc(rows);
    int32_t *a0 = bn_test_xmalloc(rows * 4), *ref = bn_test_xmalloc(rows * 4), *got = bn_test_xmalloc(rows * 4);
    for (size_t r = 0; r < rows; r++) a0[r] = bn_test_rng_int(-(1 << 20), 1 << 20);
    const bn_isa saved = bn_kernels_isa();
    for (int qk = 0; qk < QX_COUNT; qk++) {
        fill_qx(qx, cols, cp, (enum qx_kind)qk);
        for (int mk = 0; mk < n_masks; mk++) {
            fill_live(live, rows, (enum mask_kind)mk);
            const uint8_t *lv = mk == MASK_NONE ? NULL : live;
            for (int k = 0; k < BN_U2_PLANES; k++) {
                memcpy(ref, a0, rows * 4);
                bn_u2_gemv_scalar(planes, cp, k, qx, lv, ref, r0, r1);
                for (size_t r = 0; r < rows; r++) {
                    const int on = r >= r0 && r < r1 && (!lv || lv[r]);
                    const int64_t want = on ? 4 * (int64_t)a0[r] + ref_dot(q, ldq, cp, qx, r, 6 - 2 * k, 1) : a0[r];
                    BN_EXPECT_MSG(ref[r] == want, "scalar cp %zu row %zu plane %d qx %s mask %s: %d, want %lld",
                                  cp, r, k, qx_names[qk], mask_names[mk], ref[r], (long long)want);
                }
                for (int isa = 0; isa < BN_ISA_COUNT; isa++) {
                    if (!bn_test_isa_ok("test_u2plane", isa)) continue;
                    ck_assert_int_eq(bn_kernels_force((bn_isa)isa), 0);
                    memcpy(got, a0, rows * 4);
                    bn_u2_gemv(planes, cp, k, qx, lv, got, r0, r1);
                    for (size_t r = 0; r < rows; r++)
                        BN_EXPECT_MSG(got[r] == ref[r], "%s cp %zu rows [%zu, %zu) row %zu plane %d qx %s mask %s: %d, want %d",
                                      bn_isa_name((bn_isa)isa), cp, r0, r1, r, k, qx_names[qk], mask_names[mk], got[r], ref[r]);
                }
                bn_kernels_force(saved);
            }
        }
    }
    free(got), free(ref), free(a0), free(live), free(planes), free(qx), free(q);
}

START_TEST(test_gemv_shapes)
{
    bn_test_rng_seed(3);
    /* cp: 1, 2, 3 and 5 groups (the kernels' 4-group blocks and their remainders), the 2B
     * model's width, a multiple of the blocks, and the int32 limit (fewer rows) */
    const struct { size_t cp, cols, rows, r0, r1; } shapes[] = {
        {128, 100, 2 * T + 7, 3, 2 * T + 5},
        {256, 256, T + 9, 1, T + 8},
        {384, 300, 2 * T + 1, T - 1, 2 * T + 1},
        {640, 640, T + 3, 0, T + 3},
        {2560, 2560, 2 * T + 11, 5, 2 * T + 2},
        {4096, 4000, T + 2, T - 3, T + 1},
        {65536, 65536, 5, 1, 4},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        if (vg && (shapes[i].cp == 4096 || shapes[i].cp == 640)) continue;
        const size_t rows = vg && shapes[i].rows > T ? shapes[i].rows - T : shapes[i].rows;
        const size_t r1 = shapes[i].r1 < rows ? shapes[i].r1 : rows - 1;
        const size_t r0 = shapes[i].r0 < r1 ? shapes[i].r0 : 0;
        check_shape(shapes[i].cp, shapes[i].cols, rows, r0, r1, vg && shapes[i].cp > 256 ? 2 : MASK_COUNT);
    }
}
END_TEST

/* Planes 0..j applied in order from acc = 0 leave sum_c (p >> (6 - 2j)) qx[c]; after the last
 * plane, sum_c (q + 128) qx[c] exactly. At cols_padded = 65536 with every code 127 this is
 * 255 * 127 * 65536 and -255 * 128 * 65536: the int32 edge the header promises. */
static void check_horner(size_t cp, size_t rows, const int8_t *q, const int8_t *qx)
{
    uint8_t *planes = pack(q, cp, rows, cp);
    int32_t *acc = bn_test_xmalloc(rows * 4);
    const bn_isa saved = bn_kernels_isa();
    for (int isa = 0; isa < BN_ISA_COUNT; isa++) {
        if (!bn_test_isa_ok("test_u2plane", isa)) continue;
        ck_assert_int_eq(bn_kernels_force((bn_isa)isa), 0);
        memset(acc, 0, rows * 4);
        for (int j = 0; j < BN_U2_PLANES; j++) {
            bn_u2_gemv(planes, cp, j, qx, NULL, acc, 0, rows);
            for (size_t r = 0; r < rows; r++) {
                const int64_t want = ref_dot(q, cp, cp, qx, r, 6 - 2 * j, 0);
                EXPECT(want >= INT32_MIN && want <= INT32_MAX);
                BN_EXPECT_MSG(acc[r] == want, "%s cp %zu row %zu after plane %d: %d, want %lld",
                              bn_isa_name((bn_isa)isa), cp, r, j, acc[r], (long long)want);
            }
        }
        int64_t full = 0;
        for (size_t c = 0; c < cp; c++) full += (int64_t)(q[c] + 128) * qx[c];
        EXPECT(acc[0] == full);
    }
    bn_kernels_force(saved);
    free(acc), free(planes);
}

START_TEST(test_horner)
{
    bn_test_rng_seed(4);
    const size_t cp = 2560, rows = vg ? 9 : T + 9;
    int8_t *q = make_codes(rows, cp, cp, cp, -127, 127), *qx = bn_test_xmalloc(cp);
    fill_qx(qx, cp, cp, QX_RANDOM);
    check_horner(cp, rows, q, qx);
    free(qx), free(q);
}
END_TEST

START_TEST(test_horner_int32_edge)
{
    const size_t cp = 65536, rows = 2;
    int8_t *q = bn_test_xmalloc(rows * cp), *qx = bn_test_xmalloc(cp);
    memset(q, 127, rows * cp);
    for (int qk = QX_MAX; qk <= QX_MIN; qk++) {
        fill_qx(qx, cp, cp, (enum qx_kind)qk);
        check_horner(cp, rows, q, qx);
    }
    free(qx), free(q);
}
END_TEST

/* ---- stage values -------------------------------------------------------------------- */

/* bn_u2_stage_value is the known high bits of p plus the centre of the unknown low bits,
 * minus 128, for every code; so it is within (2^sh - 1) / 2 of the code. */
START_TEST(test_stage_value_definition)
{
    for (int j = 0; j < BN_U2_PLANES - 1; j++) {
        const int sh = 6 - 2 * j;
        for (int qv = -127; qv <= 127; qv++) {
            const int p = qv + 128;
            const double want = (double)((p >> sh) << sh) + ((1 << sh) - 1) / 2.0 - 128.0;
            const float v = bn_u2_stage_value((int8_t)qv, j);
            BN_EXPECT_MSG((double)v == want, "q %d stage %d: %g, want %g", qv, j, (double)v, want);
            EXPECT(fabs((double)v - qv) <= ((1 << sh) - 1) / 2.0);
        }
    }
}
END_TEST

/* sum_c stage_value(q, j) qx == 2^sh acc_j + ((2^sh - 1) / 2 - 128) sum_c qx, exactly in
 * double (every term is a multiple of 1/2 below 2^40), acc_j from bn_u2_gemv. */
START_TEST(test_stage_value_identity)
{
    bn_test_rng_seed(5);
    const size_t sizes[][2] = {{2560, 2500}, {65536, 65536}};
    for (size_t s = 0; s < 2; s++) {
        const size_t cp = sizes[s][0], cols = sizes[s][1], rows = vg ? 3 : cp > 4096 ? 4 : T + 1;
        int8_t *q = make_codes(rows, cols, cp, cp, -127, 127), *qx = bn_test_xmalloc(cp);
        uint8_t *planes = pack(q, cp, rows, cp);
        int32_t *acc = bn_test_xmalloc(rows * 4);
        for (int qk = 0; qk < QX_COUNT; qk++) {
            fill_qx(qx, cols, cp, (enum qx_kind)qk);
            double sum_qx = 0;
            for (size_t c = 0; c < cp; c++) sum_qx += qx[c];
            memset(acc, 0, rows * 4);
            for (int j = 0; j < BN_U2_PLANES - 1; j++) {
                bn_u2_gemv(planes, cp, j, qx, NULL, acc, 0, rows);
                const int sh = 6 - 2 * j;
                for (size_t r = 0; r < rows; r++) {
                    double lhs = 0;
                    for (size_t c = 0; c < cp; c++) lhs += (double)bn_u2_stage_value(q[r * cp + c], j) * qx[c];
                    const double rhs = (double)(1 << sh) * acc[r] + (((1 << sh) - 1) / 2.0 - 128.0) * sum_qx;
                    BN_EXPECT_MSG(lhs == rhs, "cp %zu row %zu stage %d qx %s: %.1f != %.1f", cp, r, j,
                                  qx_names[qk], lhs, rhs);
                }
            }
        }
        free(acc), free(planes), free(qx), free(q);
    }
}
END_TEST

static Suite *u2plane_suite(void)
{
    const struct { const char *name; const TTest *tests[4]; } cases[] = {
        {"layout", {test_geometry, test_pack_roundtrip, test_pack_band}},
        {"gemv", {test_gemv_shapes, test_horner, test_horner_int32_edge}},
        {"stage", {test_stage_value_definition, test_stage_value_identity}},
    };
    Suite *s = suite_create("u2plane");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_set_timeout(tc, 300);   /* generous for valgrind; natively well under 10 s */
        bn_test_isa_fixture(tc);      /* a failed test never leaves a forced variant behind */
        for (int j = 0; j < 4 && cases[i].tests[j]; j++) tcase_add_test(tc, cases[i].tests[j]);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    vg = getenv("BN_VALGRIND") != NULL;
    return bn_test_exit("test_u2plane", u2plane_suite());
}
