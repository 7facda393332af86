/* bitnet.cpp's TL1/TL2 layouts (src/model/tl_layout.c): the preset shapes and their sizes, a
 * random round trip per shape, hand-derived bytes that pin the layout to bitnet.cpp's converter,
 * and the rejection of unknown shapes, wrong sizes, invalid codes and non-ternary input. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tl_layout.h"
#include "testutil.h"

/* Every shape bitnet.cpp's setup_env.py generates TL kernels for, with the data size its
 * converter writes (TL1: M*K/4; TL2: the np.pad formula in preprocess_weights_tl2). The sizes
 * were cross-checked against the converter's own Python functions run on these shapes. */
static const struct {
    enum bn_tl_kind kind;
    uint64_t rows, cols;
    size_t nbytes;
    int small;   /* in the reduced set run under BN_VALGRIND */
} shapes[] = {
    { BN_TL1, 1536, 4096, 1572864, 0 },   { BN_TL1, 1536, 1536, 589824, 1 },
    { BN_TL1, 4096, 1536, 1572864, 0 },   { BN_TL1, 3200, 8640, 6912000, 0 },
    { BN_TL1, 3200, 3200, 2560000, 0 },   { BN_TL1, 8640, 3200, 6912000, 0 },
    { BN_TL1, 14336, 4096, 14680064, 0 }, { BN_TL1, 4096, 14336, 14680064, 0 },
    { BN_TL1, 1024, 4096, 1048576, 1 },   { BN_TL1, 4096, 4096, 4194304, 0 },
    { BN_TL2, 1536, 4096, 1327104, 1 },   { BN_TL2, 1536, 1536, 507904, 1 },
    { BN_TL2, 4096, 1536, 1354410, 0 },   { BN_TL2, 3200, 8640, 5794133, 0 },
    { BN_TL2, 3200, 3200, 2167466, 1 },   { BN_TL2, 8640, 3200, 5852160, 0 },
    { BN_TL2, 14336, 4096, 12386304, 0 }, { BN_TL2, 4096, 14336, 12277077, 0 },
    { BN_TL2, 1024, 4096, 884736, 0 },    { BN_TL2, 4096, 4096, 3538944, 0 },
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

static int has(const char *msg, const char *part) { return strstr(msg, part) != NULL; }

START_TEST(test_ggml_types)
{
    ck_assert_int_eq(bn_tl_ggml_type(BN_TL1), 38);
    ck_assert_int_eq(bn_tl_ggml_type(BN_TL2), 39);
    ck_assert_int_eq(bn_tl_kind_of_ggml(38), BN_TL1);
    ck_assert_int_eq(bn_tl_kind_of_ggml(39), BN_TL2);
    ck_assert_int_eq(bn_tl_kind_of_ggml(36), 0);   /* I2_S */
    ck_assert_int_eq(bn_tl_kind_of_ggml(37), 0);   /* I8_S */
    ck_assert_int_eq(bn_tl_kind_of_ggml(0), 0);
    ck_assert_int_eq(bn_tl_kind_of_ggml(40), 0);
    ck_assert_str_eq(bn_tl_name(BN_TL1), "TL1");
    ck_assert_str_eq(bn_tl_name(BN_TL2), "TL2");
}
END_TEST

START_TEST(test_preset_sizes)
{
    bn_error err;
    for (size_t i = 0; i < N_SHAPES; i++)
        ck_assert_msg(bn_tl_nbytes(shapes[i].kind, shapes[i].rows, shapes[i].cols, &err) ==
                      shapes[i].nbytes, "%s %llux%llu", bn_tl_name(shapes[i].kind),
                      (unsigned long long)shapes[i].rows, (unsigned long long)shapes[i].cols);
}
END_TEST

/* Uniform codes in {-1, 0, 1}: 2 bits per code from each draw, the value 3 redrawn. */
static void fill_ternary(int8_t *t, size_t n)
{
    uint32_t bits = 0;
    int left = 0;
    for (size_t j = 0; j < n;) {
        if (left == 0) {
            bits = bn_test_rng_u32();
            left = 16;
        }
        unsigned c = bits & 3;
        bits >>= 2;
        left--;
        if (c < 3) t[j++] = (int8_t)c - 1;
    }
}

/* Random ternary matrix -> encode -> decode into a buffer pre-filled with a non-ternary value,
 * so a position the decoder misses (or one the walks map twice) shows up. Under BN_VALGRIND
 * only the shapes marked small run (every code path: TL1 with bm 64 and 32, TL2 with K2 = 0,
 * 32 and 64). */
START_TEST(test_roundtrip_every_preset)
{
    int vg = getenv("BN_VALGRIND") != NULL;
    size_t ran = 0;
    bn_test_rng_seed(10);
    for (size_t i = 0; i < N_SHAPES; i++) {
        if (vg && !shapes[i].small) continue;
        size_t n = (size_t)(shapes[i].rows * shapes[i].cols), nb = shapes[i].nbytes;
        int8_t *t = bn_test_xmalloc(n), *back = bn_test_xmalloc(n);
        uint8_t *d = bn_test_xmalloc(nb);
        fill_ternary(t, n);
        memset(back, 5, n);
        bn_error err;
        ck_assert_msg(bn_tl_encode(shapes[i].kind, t, shapes[i].rows, shapes[i].cols, d, nb,
                                   &err) == 0, "%s", err.msg);
        ck_assert_msg(bn_tl_decode(shapes[i].kind, d, nb, shapes[i].rows, shapes[i].cols, back,
                                   &err) == 0, "%s", err.msg);
        ck_assert_msg(memcmp(t, back, n) == 0, "%s %llux%llu round trip differs",
                      bn_tl_name(shapes[i].kind), (unsigned long long)shapes[i].rows,
                      (unsigned long long)shapes[i].cols);
        free(t);
        free(back);
        free(d);
        ran++;
    }
    ck_assert_uint_eq(ran, vg ? 5 : N_SHAPES);
}
END_TEST

/* An all-zero matrix plus a few set weights, against bytes derived by hand from the converter's
 * steps. `set` lists (row, col, weights...) runs; `want` lists (offset, byte) exceptions to the
 * all-zero pattern `base(offset)`. Both directions are checked. */
struct put { uint32_t r, c; int8_t w[3]; int n; };
struct byte_at { size_t off; uint8_t v; };

static void check_hand(enum bn_tl_kind k, uint64_t rows, uint64_t cols, const struct put *set,
                       size_t nset, const struct byte_at *want, size_t nwant,
                       uint8_t (*base)(size_t))
{
    bn_error err;
    size_t n = (size_t)(rows * cols), nb = bn_tl_nbytes(k, rows, cols, &err);
    ck_assert_msg(nb > 0, "%s", err.msg);
    int8_t *t = calloc(n, 1), *back = bn_test_xmalloc(n);
    uint8_t *d = bn_test_xmalloc(nb), *exp = bn_test_xmalloc(nb);
    ck_assert_ptr_nonnull(t);
    for (size_t i = 0; i < nset; i++)
        memcpy(t + (size_t)set[i].r * cols + set[i].c, set[i].w, (size_t)set[i].n);
    for (size_t o = 0; o < nb; o++) exp[o] = base(o);
    for (size_t i = 0; i < nwant; i++) exp[want[i].off] = want[i].v;

    ck_assert_msg(bn_tl_encode(k, t, rows, cols, d, nb, &err) == 0, "%s", err.msg);
    size_t o = 0;
    while (o < nb && d[o] == exp[o]) o++;
    ck_assert_msg(o == nb, "%s byte %zu: 0x%02x, want 0x%02x", bn_tl_name(k), o, d[o], exp[o]);
    memset(back, 5, n);
    ck_assert_msg(bn_tl_decode(k, exp, nb, rows, cols, back, &err) == 0, "%s", err.msg);
    ck_assert_msg(memcmp(back, t, n) == 0, "%s decode of the hand-built bytes differs",
                  bn_tl_name(k));
    free(t);
    free(back);
    free(d);
    free(exp);
}

static uint8_t tl1_zero(size_t off) { (void)off; return 0x44; }

/* TL1 1536x1536 (bitnet_b1_58-large attn; tiles BM 128, BK 64, bm 64 so by = 256/64 = 4).
 * preprocess_weights_tl1: pairs along a row, code = 3*t[2j] + t[2j+1] + 4 (zero pair: 4).
 * process_tl1's transposes leave the byte axes (i0, k0, i1, k1, i2, k2, i3) over
 * (M/BM = 12, K/BK = 24, BM/bm = 2, BK/by = 16, bm/16 = 4, by/4 = 1, 16): row
 * i0*128 + i1*64 + i2*16 + i3, cols k0*64 + k1*4 + k2*4 + 0..3, with the first pair
 * (weight_0 << 4) in the high nibble. Offset = ((((k0 + 24*i0)*2 + i1)*16 + k1)*4 + i2)*16 + i3.
 *  - t[0][0..1] = 1, -1: pair 3 - 1 + 4 = 6, row 0 cols 0..3 -> offset 0, byte 0x64.
 *  - t[1][2..3] = -1, -1: second pair -4 + 4 = 0, row 1 (i3 = 1) -> offset 1, byte 0x40.
 *  - t[16][4] = 1: pair 7, row 16 (i2 = 1), col 4 (k1 = 1) -> (1*4 + 1)*16 = 80, byte 0x74.
 *  - t[64][64] = -1: pair 1, row 64 (i1 = 1), col 64 (k0 = 1) -> ((1*2 + 1)*16*4)*16 = 3072,
 *    byte 0x14. */
START_TEST(test_tl1_hand_worked)
{
    static const struct put set[] = {
        { 0, 0, { 1, -1 }, 2 }, { 1, 2, { -1, -1 }, 2 }, { 16, 4, { 1 }, 1 }, { 64, 64, { -1 }, 1 },
    };
    static const struct byte_at want[] = { { 0, 0x64 }, { 1, 0x40 }, { 80, 0x74 }, { 3072, 0x14 } };
    check_hand(BN_TL1, 1536, 1536, set, 4, want, 4, tl1_zero);
}
END_TEST

/* TL2 1536x4096 (bitnet_b1_58-large ffn_down; BM 256, BK 96, bm 32, so by = 192/32 = 6).
 * K % BK = 64: K3 = 4032 cols of triples, K2 = 64 cols of pairs. Regions:
 * magnitudes [0, 1536*4032/6 = 1032192), signs [1032192, +1536*4032/24 = 1290240), pairs
 * [1290240, +1536*64/4 = 1314816), zeros up to (4096-256)*1536/3*5/8 + 256*1536/2*4/8 = 1327104.
 * Zero weights: magnitude 0x00, sign 0x00, pair byte 0x44, padding 0x00.
 * preprocess_three_weights_tl2: v = 9a + 3b + c per triple, magnitude |v|, sign 1 iff v < 0.
 * Magnitude bytes: 32-byte rows over (i0, k0, i1, k1) = (M/BM = 6, K3/BK = 42, BM/32 = 8,
 * BK/6 = 16); the row's byte p is row i0*256 + i1*32 + perm[p/8]*8 + p%8, perm = {0,2,1,3}
 * (weight[:, [0,1,2,3], :] = weight[:, [0,2,1,3], :]); high nibble cols k0*96 + k1*6 + 0..2.
 *  - t[0][0..2] = 1, 0, -1: v = 8, row 0 -> p 0, high nibble -> offset 0, 0x80.
 *  - t[8][3..5] = -1, 1, 1: v = -5, row 8 (chunk 1, stored as chunk 2) -> p 16, low nibble
 *    (cols 3..5) -> offset 16, 0x05.
 *  - t[16][0..2] = 0, 0, -1: v = -1, row 16 (chunk 2, stored as chunk 1) -> p 8, 0x10.
 *  - t[300][102..104] = -1, -1, -1: v = -13, row 300 = 256 + 32 + 12 (i0 1, i1 1, p 16 + 4),
 *    col 102 = 96 + 6 (k0 1, k1 1, high) -> ((((1*42 + 1)*8 + 1)*16 + 1)*32 + 20 = 176692, 0xd0.
 * Sign bytes: 32-byte rows over (i0, k0, i1, k1) = (6, 42, 8, BK/24 = 4), 16 uint16 words
 * (little-endian, from the .view(np.uint8)); bit 15-q of word r is the triple of row
 * i1*32 + (q%2)*16 + r at col k1*24 + (q/2)*3.
 *  - row 8, col 3: r 8, q = 1*2 + 0 = 2, bit 13 of word 8 = bit 5 of byte 17 -> 1032209, 0x20.
 *  - row 16, col 0: r 0, q = 0 + 1 = 1, bit 14 of word 0 = bit 6 of byte 1 -> 1032193, 0x40.
 *  - row 300, col 102: i0 1, k0 1, i1 1, k1 0, r 12, q = 2*2 + 0 = 4, bit 11 of word 12 = bit 3
 *    of byte 25; row ((1*42 + 1)*8 + 1)*4 = 1380 -> 1032192 + 1380*32 + 25 = 1076377, 0x08.
 * Pair bytes (preprocess_two_weights_tl2 with BK 32, bm 32, by 4): rows over (i0, k0, i1, k1) =
 * (6, K2/32 = 2, 8, 8), byte p as above, high nibble cols 4032 + k0*32 + k1*4 + 0..1.
 *  - t[0][4032..4033] = 1, 1: pair 3 + 1 + 4 = 8, high -> 1290240, 0x84.
 *  - t[40][4036] = -1: pair 1; row 40 = 32 + 8 (i1 1, p 16), col +4 (k1 1) ->
 *    1290240 + ((1*8 + 1)*32 + 16) = 1290544, 0x14. */
static uint8_t tl2_zero(size_t off) { return off >= 1290240 && off < 1314816 ? 0x44 : 0; }

START_TEST(test_tl2_hand_worked)
{
    static const struct put set[] = {
        { 0, 0, { 1, 0, -1 }, 3 },       { 8, 3, { -1, 1, 1 }, 3 }, { 16, 0, { 0, 0, -1 }, 3 },
        { 300, 102, { -1, -1, -1 }, 3 }, { 0, 4032, { 1, 1 }, 2 },  { 40, 4036, { -1 }, 1 },
    };
    static const struct byte_at want[] = {
        { 0, 0x80 },       { 16, 0x05 },      { 8, 0x10 },       { 176692, 0xd0 },
        { 1032209, 0x20 }, { 1032193, 0x40 }, { 1076377, 0x08 }, { 1290240, 0x84 },
        { 1290544, 0x14 },
    };
    check_hand(BN_TL2, 1536, 4096, set, 6, want, 9, tl2_zero);
}
END_TEST

START_TEST(test_unknown_shapes)
{
    bn_error err;
    ck_assert_uint_eq(bn_tl_nbytes(BN_TL2, 1000, 2560, &err), 0);
    ck_assert_msg(has(err.msg, "TL2 has no tile configuration for 1000x2560") &&
                  has(err.msg, "needs BM dividing 1000") && has(err.msg, "2560 mod BK"), "%s",
                  err.msg);
    /* Falcon3-1B's ffn_up: bitnet.cpp has no tiles for any Falcon3 shape. */
    ck_assert_uint_eq(bn_tl_nbytes(BN_TL1, 8192, 2048, &err), 0);
    ck_assert_msg(has(err.msg, "TL1 has no tile configuration for 8192x2048") &&
                  has(err.msg, "BK dividing 2048") && has(err.msg, "Llama3-8B-1.58"), "%s",
                  err.msg);
    /* 2B-4T's attention shape. */
    ck_assert_uint_eq(bn_tl_nbytes(BN_TL2, 2560, 2560, &err), 0);
    ck_assert_msg(has(err.msg, "2560x2560"), "%s", err.msg);
    /* A transposed preset shape gets a hint. */
    ck_assert_uint_eq(bn_tl_nbytes(BN_TL1, 4096, 1024, &err), 0);
    ck_assert_msg(has(err.msg, "swapped"), "%s", err.msg);
    /* Huge dimensions from an untrusted header: an error, no overflow. */
    ck_assert_uint_eq(bn_tl_nbytes(BN_TL2, UINT64_MAX, UINT64_MAX, &err), 0);
    ck_assert_msg(has(err.msg, "18446744073709551615x18446744073709551615"), "%s", err.msg);
    ck_assert_uint_eq(bn_tl_nbytes((enum bn_tl_kind)3, 1536, 1536, &err), 0);
    ck_assert_msg(has(err.msg, "unknown TL layout kind 3"), "%s", err.msg);

    uint8_t d[64] = { 0 };
    int8_t t[64] = { 0 };
    ck_assert_int_eq(bn_tl_decode(BN_TL2, d, sizeof d, 8, 8, t, &err), -1);
    ck_assert_msg(has(err.msg, "TL2 has no tile configuration for 8x8"), "%s", err.msg);
    ck_assert_int_eq(bn_tl_encode(BN_TL1, t, 8, 8, d, sizeof d, &err), -1);
    ck_assert_msg(has(err.msg, "TL1 has no tile configuration for 8x8"), "%s", err.msg);
}
END_TEST

/* Sizes one byte off (or zero) are rejected before any byte is read or written. */
START_TEST(test_wrong_sizes)
{
    const uint64_t rows = 1536, cols = 1536;
    const size_t n = (size_t)(rows * cols);
    int8_t *t = calloc(n, 1);
    ck_assert_ptr_nonnull(t);
    for (int k = BN_TL1; k <= BN_TL2; k++) {
        bn_error err;
        size_t nb = bn_tl_nbytes(k, rows, cols, &err);
        ck_assert_msg(nb > 0, "%s", err.msg);
        uint8_t *d = bn_test_xmalloc(nb + 1);
        const size_t bad[] = { 0, nb - 1, nb + 1 };
        for (size_t i = 0; i < 3; i++) {
            ck_assert_int_eq(bn_tl_decode(k, d, bad[i], rows, cols, t, &err), -1);
            char want[96];
            snprintf(want, sizeof want, "has %zu bytes of data, expected %zu", bad[i], nb);
            ck_assert_msg(has(err.msg, want) && has(err.msg, "1536x1536"), "%s", err.msg);
            ck_assert_int_eq(bn_tl_encode(k, t, rows, cols, d, bad[i], &err), -1);
            ck_assert_msg(has(err.msg, want), "%s", err.msg);
        }
        free(d);
    }
    free(t);
}
END_TEST

/* Bytes no encoder writes: TL1 and TL2-pair nibbles above 8, TL2 magnitudes above 13. The error
 * names the byte. A sign bit on a zero magnitude is tolerated (it decodes to zeros). */
START_TEST(test_invalid_codes)
{
    bn_error err;
    const uint64_t M = 1536, K = 4096;
    size_t n = (size_t)(M * K);
    int8_t *t = calloc(n, 1), *back = bn_test_xmalloc(n);
    ck_assert_ptr_nonnull(t);

    size_t nb1 = bn_tl_nbytes(BN_TL1, M, K, &err);
    uint8_t *d1 = bn_test_xmalloc(nb1);
    ck_assert_int_eq(bn_tl_encode(BN_TL1, t, M, K, d1, nb1, &err), 0);
    d1[700000] = 0xf4;   /* a later row tile too: the first bad byte is the one named */
    d1[777] = 0x49;
    ck_assert_int_eq(bn_tl_decode(BN_TL1, d1, nb1, M, K, back, &err), -1);
    ck_assert_msg(has(err.msg, "byte 777 (0x49) is not a valid code"), "%s", err.msg);
    d1[777] = 0xa4;
    ck_assert_int_eq(bn_tl_decode(BN_TL1, d1, nb1, M, K, back, &err), -1);
    ck_assert_msg(has(err.msg, "byte 777 (0xa4)"), "%s", err.msg);
    d1[777] = 0x44;
    ck_assert_int_eq(bn_tl_decode(BN_TL1, d1, nb1, M, K, back, &err), -1);
    ck_assert_msg(has(err.msg, "byte 700000 (0xf4)"), "%s", err.msg);
    free(d1);

    size_t nb2 = bn_tl_nbytes(BN_TL2, M, K, &err);
    uint8_t *d2 = bn_test_xmalloc(nb2);
    ck_assert_int_eq(bn_tl_encode(BN_TL2, t, M, K, d2, nb2, &err), 0);
    d2[100] = 0xd0;   /* magnitude 13: valid */
    ck_assert_msg(bn_tl_decode(BN_TL2, d2, nb2, M, K, back, &err) == 0, "%s", err.msg);
    d2[100] = 0x0e;   /* magnitude 14 */
    ck_assert_int_eq(bn_tl_decode(BN_TL2, d2, nb2, M, K, back, &err), -1);
    ck_assert_msg(has(err.msg, "TL2 1536x4096 tensor: byte 100 (0x0e)"), "%s", err.msg);
    d2[100] = 0;
    d2[1290240 + 5] = 0x94;   /* pair region: code 9 */
    ck_assert_int_eq(bn_tl_decode(BN_TL2, d2, nb2, M, K, back, &err), -1);
    ck_assert_msg(has(err.msg, "byte 1290245 (0x94)"), "%s", err.msg);
    d2[1290240 + 5] = 0x44;
    memset(d2 + 1032192, 0xff, 32);   /* every sign bit of one row, magnitudes all zero */
    ck_assert_msg(bn_tl_decode(BN_TL2, d2, nb2, M, K, back, &err) == 0, "%s", err.msg);
    ck_assert_msg(memcmp(back, t, n) == 0, "a sign on a zero magnitude changed a weight");
    free(d2);
    free(t);
    free(back);
}
END_TEST

START_TEST(test_encode_rejects_non_ternary)
{
    bn_error err;
    const uint64_t M = 1536, K = 1536;
    int8_t *t = calloc((size_t)(M * K), 1);
    ck_assert_ptr_nonnull(t);
    size_t nb2 = bn_tl_nbytes(BN_TL2, M, K, &err), nb1 = bn_tl_nbytes(BN_TL1, M, K, &err);
    uint8_t *d = bn_test_xmalloc(nb1 > nb2 ? nb1 : nb2);
    t[12345] = 2;
    ck_assert_int_eq(bn_tl_encode(BN_TL2, t, M, K, d, nb2, &err), -1);
    ck_assert_msg(has(err.msg, "TL2 encode: weight 12345 is 2, not a ternary code"), "%s", err.msg);
    t[12345] = -2;
    ck_assert_int_eq(bn_tl_encode(BN_TL1, t, M, K, d, nb1, &err), -1);
    ck_assert_msg(has(err.msg, "TL1 encode: weight 12345 is -2"), "%s", err.msg);
    free(d);
    free(t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tl");
    TCase *tc = tcase_create("layout");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_ggml_types);
    tcase_add_test(tc, test_preset_sizes);
    tcase_add_test(tc, test_roundtrip_every_preset);
    tcase_add_test(tc, test_tl1_hand_worked);
    tcase_add_test(tc, test_tl2_hand_worked);
    tcase_add_test(tc, test_unknown_shapes);
    tcase_add_test(tc, test_wrong_sizes);
    tcase_add_test(tc, test_invalid_codes);
    tcase_add_test(tc, test_encode_rejects_non_ternary);
    suite_add_tcase(s, tc);
    return bn_test_exit("test_tl", s);
}
