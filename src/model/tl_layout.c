/* bitnet.cpp's TL1/TL2 weight layouts (see the header), read from microsoft/BitNet @16da220:
 * utils/convert-hf-to-gguf-bitnet.py (process_tl1 l.469, preprocess_weights_tl1 l.483,
 * preprocess_two_weights_tl2 l.527, preprocess_three_weights_tl2 l.553, preprocess_weights_tl2
 * l.601, transform_to_tl1/tl2 l.730-740), setup_env.py gen_code (the codegen tile arguments) and
 * the ggml fork's type ids (ggml.h GGML_TYPE_TL1 = 38, GGML_TYPE_TL2 = 39).
 *
 * Both layouts cut the M x K matrix (rows = out, cols = in) into BM x BK tiles, each tile into
 * bm-row blocks, each block into by-col slices (the codegen's BM/BK/bm; by = 256/bm for TL1,
 * 192/bm for TL2). File order: row tile, col tile, bm block, by slice, then the rows of the
 * block (with the sub-orders below). Codes:
 *   pair   (TL1, TL2's remainder): 4 bits = 3*t[k] + t[k+1] + 4, in 0..8.
 *   triple (TL2): v = 9*t[k] + 3*t[k+1] + t[k+2]; a 4-bit |v| (0..13) plus a sign bit (v < 0).
 * A byte holds two codes of one row, high nibble first (cols k.. then the next group).
 *
 * TL1 file bytes (M*K/4), in order (i0, k0, i1, k1, i2, k2, i3) over
 *   (M/BM, K/BK, BM/bm, BK/by, bm/16, by/4, 16): row i0*BM + i1*bm + i2*16 + i3,
 *   cols k0*BK + k1*by + k2*4 + 0..3 (process_tl1's six transposes).
 * TL2 splits K into K3 = K - K % BK cols of triples and K2 = K % BK cols of pairs:
 *   [triple magnitudes M*K3/6][triple signs M*K3/24][pairs M*K2/4][zeros to the size below].
 *   Magnitudes: rows of 32 bytes, one per (i0, k0, i1, k1) over (M/BM, K3/BK, BM/32, BK/6);
 *     byte p is row i1*32 + perm[p/8]*8 + p%8 (the "[0, 2, 1, 3]" 8-byte chunk swap), its high
 *     nibble cols k0*BK + k1*6 + 0..2, low nibble the next 3.
 *   Signs: rows of 32 bytes, one per (i0, k0, i1, k1) over (M/BM, K3/BK, BM/32, BK/24): 16
 *     little-endian uint16 words r; bit 15-q of word r is the sign of the triple of row
 *     i1*32 + 16*(q%2) + r at cols k0*BK + k1*24 + 3*(q/2) (q = 0..15).
 *   Pairs: the magnitude walk with BK = 32, by = 4 (preprocess_weights_tl2 passes 32, 32, 4) and
 *     pair codes, at cols K3 + ...
 *   Size: (K - 256)*M/3*5/8 + 256*M/2*4/8 in integer steps (np.pad in preprocess_weights_tl2),
 *     which covers the payload when K2 <= 256. The fork's ggml_nbytes uses the same formula
 *     rounded up to 32, plus 32 (TL1: M*K/4 + 32): those 32 bytes are the next tensor's.
 * The scale is not in these bytes: the converter writes max|W| as the F32 tensor "<name>_scale"
 * right after, which the fork's kernels read at the 32-aligned end of the data. */
#include "model/tl_layout.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define GGML_TYPE_TL1 38u
#define GGML_TYPE_TL2 39u

struct tl_tiles {
    uint8_t kind;           /* enum bn_tl_kind */
    uint32_t m, k;          /* rows (out) x cols (in) */
    uint16_t BM, BK, bm;    /* codegen --BM --BK --bm */
    const char *model;      /* the setup_env.py model whose codegen call lists the shape */
};

/* The tiles setup_env.py's gen_code passes to utils/codegen_tl{1,2}.py (the codegen always runs
 * and rewrites include/kernel_config.ini, which the converter reads, so these win over the
 * preset_kernels/ copies; unchanged since the initial commit 6cfd883). The Falcon3 models reuse
 * the Llama3-8B list, whose shapes none of them has; 2B-4T reuses the 3B list likewise. So those
 * families have no TL file bitnet.cpp can write. No shape appears twice, so (kind, M, K) finds
 * the tiles. */
static const struct tl_tiles presets[] = {
    /* TL1: codegen_tl1.py, ARM */
    { BN_TL1, 1536, 4096, 256, 128, 32, "bitnet_b1_58-large" },   /* ffn_down */
    { BN_TL1, 1536, 1536, 128, 64, 64, "bitnet_b1_58-large" },    /* attn q/k/v/o */
    { BN_TL1, 4096, 1536, 256, 128, 32, "bitnet_b1_58-large" },   /* ffn gate/up */
    { BN_TL1, 3200, 8640, 160, 64, 32, "bitnet_b1_58-3B" },
    { BN_TL1, 3200, 3200, 320, 128, 64, "bitnet_b1_58-3B" },
    { BN_TL1, 8640, 3200, 320, 64, 32, "bitnet_b1_58-3B" },
    { BN_TL1, 14336, 4096, 256, 128, 32, "Llama3-8B-1.58" },
    { BN_TL1, 4096, 14336, 128, 64, 64, "Llama3-8B-1.58" },
    { BN_TL1, 1024, 4096, 256, 128, 32, "Llama3-8B-1.58" },       /* attn k/v */
    { BN_TL1, 4096, 4096, 128, 64, 64, "Llama3-8B-1.58" },        /* attn q/o */
    /* TL2: codegen_tl2.py, x86 */
    { BN_TL2, 1536, 4096, 256, 96, 32, "bitnet_b1_58-large" },    /* K2 = 64 */
    { BN_TL2, 1536, 1536, 128, 192, 32, "bitnet_b1_58-large" },
    { BN_TL2, 4096, 1536, 256, 96, 32, "bitnet_b1_58-large" },
    { BN_TL2, 3200, 8640, 160, 96, 32, "bitnet_b1_58-3B" },
    { BN_TL2, 3200, 3200, 320, 96, 32, "bitnet_b1_58-3B" },       /* K2 = 32 */
    { BN_TL2, 8640, 3200, 320, 96, 32, "bitnet_b1_58-3B" },       /* K2 = 32 */
    { BN_TL2, 14336, 4096, 256, 96, 32, "Llama3-8B-1.58" },       /* K2 = 64 */
    { BN_TL2, 4096, 14336, 128, 96, 32, "Llama3-8B-1.58" },       /* K2 = 32 */
    { BN_TL2, 1024, 4096, 256, 96, 32, "Llama3-8B-1.58" },        /* K2 = 64 */
    { BN_TL2, 4096, 4096, 128, 96, 32, "Llama3-8B-1.58" },        /* K2 = 64 */
};

/* TL2's 8-byte chunk swap inside each 32-byte row (its own inverse). */
static const uint8_t chunk_perm[4] = { 0, 2, 1, 3 };

enum bn_tl_kind bn_tl_kind_of_ggml(uint32_t ggml_type)
{
    return ggml_type == GGML_TYPE_TL1 ? BN_TL1 : ggml_type == GGML_TYPE_TL2 ? BN_TL2 : 0;
}

uint32_t bn_tl_ggml_type(enum bn_tl_kind k)
{
    return k == BN_TL1 ? GGML_TYPE_TL1 : k == BN_TL2 ? GGML_TYPE_TL2 : 0;
}

const char *bn_tl_name(enum bn_tl_kind k)
{
    return k == BN_TL1 ? "TL1" : k == BN_TL2 ? "TL2" : "TL?";
}

static const struct tl_tiles *find_tiles(enum bn_tl_kind k, uint64_t rows, uint64_t cols)
{
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (presets[i].kind == k && presets[i].m == rows && presets[i].k == cols)
            return &presets[i];
    return NULL;
}

/* The error for a shape without tiles: what a kernel for it would need (the layout's
 * divisibility rules), which models do have tiles, and a hint when the transpose has them. */
static int no_tiles(bn_error *err, enum bn_tl_kind k, uint64_t rows, uint64_t cols)
{
    char need[200], hint[96] = "";
    if (k == BN_TL1)
        snprintf(need, sizeof need, "BM dividing %" PRIu64 " and a multiple of bm (32 or 64), "
                 "BK dividing %" PRIu64 " and a multiple of 256/bm", rows, cols);
    else
        snprintf(need, sizeof need, "BM dividing %" PRIu64 " and a multiple of 32 (bm = 32), "
                 "BK a multiple of 24 with %" PRIu64 " mod BK a multiple of 32 and at most 256",
                 rows, cols);
    if (find_tiles(k, cols, rows))
        snprintf(hint, sizeof hint, "; %" PRIu64 "x%" PRIu64 " has tiles: rows and cols swapped?",
                 cols, rows);
    return bn_err(err, "%s has no tile configuration for %" PRIu64 "x%" PRIu64 " (rows x cols; "
                  "needs %s); bitnet.cpp ships %s tiles only for the bitnet_b1_58-large, "
                  "bitnet_b1_58-3B and Llama3-8B-1.58 shapes%s", bn_tl_name(k), rows, cols, need,
                  bn_tl_name(k), hint);
}

static int check_kind(enum bn_tl_kind k, bn_error *err)
{
    if (k == BN_TL1 || k == BN_TL2) return 0;
    return bn_err(err, "unknown TL layout kind %d (TL1 = %d, TL2 = %d)", (int)k, BN_TL1, BN_TL2);
}

/* TL2 cols of triples (K3) and of pairs (K2). */
static uint64_t tl2_k3(const struct tl_tiles *p) { return p->k - p->k % p->BK; }

static size_t tl2_payload(const struct tl_tiles *p)
{
    uint64_t m = p->m, k3 = tl2_k3(p), k2 = p->k - k3;
    return (size_t)(m * k3 / 6 + m * k3 / 24 + m * k2 / 4);
}

static size_t tiles_nbytes(const struct tl_tiles *p)
{
    uint64_t m = p->m, k = p->k;
    if (p->kind == BN_TL1) return (size_t)(m * k / 4);
    return (size_t)((k - 256) * m / 3 * 5 / 8 + 256 * m / 2 * 4 / 8);
}

size_t bn_tl_nbytes(enum bn_tl_kind k, uint64_t rows, uint64_t cols, bn_error *err)
{
    if (check_kind(k, err)) return 0;
    const struct tl_tiles *p = find_tiles(k, rows, cols);
    if (!p) {
        no_tiles(err, k, rows, cols);
        return 0;
    }
    return tiles_nbytes(p);
}

/* ---- codes ------------------------------------------------------------------------------ */

static unsigned pair_code(const int8_t *w) { return (unsigned)(3 * w[0] + w[1] + 4); }

static int pair_put(int8_t *w, unsigned c)
{
    if (c > 8) return -1;
    w[0] = (int8_t)(c / 3) - 1;
    w[1] = (int8_t)(c % 3) - 1;
    return 0;
}

static int triple_value(const int8_t *w) { return 9 * w[0] + 3 * w[1] + w[2]; }

static unsigned triple_mag(const int8_t *w)
{
    int v = triple_value(w);
    return (unsigned)(v < 0 ? -v : v);
}

/* Magnitude c (0..13) with the sign walk_tl2_signs left in w[0] (0 or 1). */
static int triple_put(int8_t *w, unsigned c)
{
    if (c > 13) return -1;
    int v = w[0] ? -(int)c : (int)c, u = v + 13;   /* u's base-3 digits are t + 1 */
    w[0] = (int8_t)(u / 9 - 1);
    w[1] = (int8_t)(u / 3 % 3 - 1);
    w[2] = (int8_t)(u % 3 - 1);
    return 0;
}

/* ---- walks: one per region, shared by encode (enc = 1) and decode ---------------------------
 * Each region is a sequence of row tiles (BM rows, bytes contiguous), walked in parallel: tiles
 * touch disjoint rows. Decoding returns the offset in the region of the first invalid byte,
 * else -1 (INT64_MAX inside, for the min reduction). d points at the region, t at the full
 * row-major matrix (row stride K), col0 at the region's first col. */
#define NO_BAD INT64_MAX
/* Worth the threads above ~1M weights; the result is the same either way. */
#define PAR_MIN (1u << 20)

static int64_t walk_tl1(const struct tl_tiles *p, uint8_t *d, int8_t *t, int enc)
{
    const uint32_t K = p->k, BM = p->BM, BK = p->BK, bm = p->bm, by = 256 / bm;
    const int64_t ntiles = p->m / BM;
    const size_t tile_bytes = (size_t)BM * K / 4;
    int64_t bad = NO_BAD;
#pragma omp parallel for schedule(static) reduction(min : bad) if ((size_t)p->m * K > PAR_MIN)
    for (int64_t it = 0; it < ntiles; it++) {
        const uint32_t i0 = (uint32_t)it * BM;
        size_t o = (size_t)it * tile_bytes;
        for (uint32_t k0 = 0; k0 < K && bad == NO_BAD; k0 += BK)
            for (uint32_t i1 = 0; i1 < BM; i1 += bm)
                for (uint32_t k1 = 0; k1 < BK; k1 += by)
                    for (uint32_t i2 = 0; i2 < bm; i2 += 16)
                        for (uint32_t k2 = 0; k2 < by; k2 += 4)
                            for (uint32_t i3 = 0; i3 < 16; i3++, o++) {
                                int8_t *w = t + (size_t)(i0 + i1 + i2 + i3) * K + k0 + k1 + k2;
                                if (enc)
                                    d[o] = (uint8_t)(pair_code(w) << 4 | pair_code(w + 2));
                                else if ((pair_put(w, d[o] >> 4) || pair_put(w + 2, d[o] & 15))
                                         && (int64_t)o < bad)
                                    bad = (int64_t)o;
                            }
    }
    return bad;
}

/* TL2's magnitude rows (triples, gk = 6 cols per byte) and pair rows (gk = 4): 32 rows by one
 * byte, chunk-swapped, per (row tile, col tile, 32-row block, gk-col block). */
static int64_t walk_tl2_rows(const struct tl_tiles *p, uint8_t *d, int8_t *t, uint32_t col0,
                             uint32_t ncols, uint32_t BK, uint32_t gk, int enc)
{
    const uint32_t K = p->k, BM = p->BM;
    const int64_t ntiles = p->m / BM;
    const size_t tile_bytes = (size_t)BM * ncols / gk;
    const int pairs = gk == 4;
    int64_t bad = NO_BAD;
#pragma omp parallel for schedule(static) reduction(min : bad) if ((size_t)p->m * ncols > PAR_MIN)
    for (int64_t it = 0; it < ntiles; it++) {
        const uint32_t i0 = (uint32_t)it * BM;
        size_t o = (size_t)it * tile_bytes;
        for (uint32_t k0 = 0; k0 < ncols && bad == NO_BAD; k0 += BK)
            for (uint32_t i1 = 0; i1 < BM; i1 += 32)
                for (uint32_t k1 = 0; k1 < BK; k1 += gk)
                    for (uint32_t b = 0; b < 32; b++, o++) {
                        uint32_t r = i0 + i1 + chunk_perm[b >> 3] * 8u + (b & 7);
                        int8_t *w = t + (size_t)r * K + col0 + k0 + k1;
                        int ok = 1;
                        if (enc && pairs)
                            d[o] = (uint8_t)(pair_code(w) << 4 | pair_code(w + 2));
                        else if (enc)
                            d[o] = (uint8_t)(triple_mag(w) << 4 | triple_mag(w + 3));
                        else if (pairs)
                            ok = !pair_put(w, d[o] >> 4) && !pair_put(w + 2, d[o] & 15);
                        else
                            ok = !triple_put(w, d[o] >> 4) && !triple_put(w + 3, d[o] & 15);
                        if (!ok && (int64_t)o < bad) bad = (int64_t)o;
                    }
    }
    return bad;
}

/* TL2's sign rows. Decoding leaves each triple's sign bit in its first weight, for the
 * magnitude walk that follows. */
static void walk_tl2_signs(const struct tl_tiles *p, uint8_t *d, int8_t *t, int enc)
{
    const uint32_t K = p->k, BM = p->BM, BK = p->BK, K3 = (uint32_t)tl2_k3(p);
    const int64_t ntiles = p->m / BM;
    const size_t tile_bytes = (size_t)BM * K3 / 24;
#pragma omp parallel for schedule(static) if ((size_t)p->m * K3 > PAR_MIN)
    for (int64_t it = 0; it < ntiles; it++) {
        const uint32_t i0 = (uint32_t)it * BM;
        size_t o = (size_t)it * tile_bytes;
        for (uint32_t k0 = 0; k0 < K3; k0 += BK)
            for (uint32_t i1 = 0; i1 < BM; i1 += 32)
                for (uint32_t k1 = 0; k1 < BK; k1 += 24)
                    for (uint32_t b = 0; b < 32; b++, o++) {
                        uint8_t byte = 0;
                        for (uint32_t bit = 0; bit < 8; bit++) {
                            uint32_t q = 15 - ((b & 1) * 8 + bit);   /* little-endian words */
                            uint32_t r = i0 + i1 + (q & 1) * 16 + (b >> 1);
                            int8_t *w = t + (size_t)r * K + k0 + k1 + (q >> 1) * 3;
                            if (enc) byte |= (uint8_t)((triple_value(w) < 0) << bit);
                            else w[0] = (int8_t)(d[o] >> bit & 1);
                        }
                        if (enc) d[o] = byte;
                    }
    }
}

/* Encodes (enc = 1) or decodes the whole tensor; returns the bad byte's offset or -1. */
static int64_t walk(const struct tl_tiles *p, uint8_t *d, int8_t *t, int enc)
{
    int64_t bad;
    if (p->kind == BN_TL1) {
        bad = walk_tl1(p, d, t, enc);
        return bad == NO_BAD ? -1 : bad;
    }
    const uint32_t K3 = (uint32_t)tl2_k3(p), K2 = p->k - K3;
    const size_t mag = (size_t)p->m * K3 / 6, sign = (size_t)p->m * K3 / 24;
    walk_tl2_signs(p, d + mag, t, enc);   /* before the magnitudes: see walk_tl2_signs */
    bad = walk_tl2_rows(p, d, t, 0, K3, p->BK, 6, enc);
    if (bad != NO_BAD) return bad;
    if (K2 == 0) return -1;
    bad = walk_tl2_rows(p, d + mag + sign, t, K3, K2, 32, 4, enc);
    return bad == NO_BAD ? -1 : bad + (int64_t)(mag + sign);
}

/* The checks both directions share: kind, tiles, buffer size. */
static const struct tl_tiles *prepare(enum bn_tl_kind k, size_t nbytes, uint64_t rows,
                                      uint64_t cols, bn_error *err)
{
    if (check_kind(k, err)) return NULL;
    const struct tl_tiles *p = find_tiles(k, rows, cols);
    if (!p) {
        no_tiles(err, k, rows, cols);
        return NULL;
    }
    size_t want = tiles_nbytes(p);
    if (p->kind == BN_TL2 && want < tl2_payload(p)) {   /* K2 > 256: a table error */
        bn_err(err, "TL2 tiles for %" PRIu64 "x%" PRIu64 " leave more than 256 cols of pairs",
               rows, cols);
        return NULL;
    }
    if (nbytes != want) {
        bn_err(err, "%s %" PRIu64 "x%" PRIu64 " tensor has %zu bytes of data, expected %zu "
               "(tiles BM %u BK %u bm %u)", bn_tl_name(k), rows, cols, nbytes, want, p->BM,
               p->BK, p->bm);
        return NULL;
    }
    return p;
}

int bn_tl_decode(enum bn_tl_kind k, const uint8_t *data, size_t nbytes, uint64_t rows,
                 uint64_t cols, int8_t *t, bn_error *err)
{
    const struct tl_tiles *p = prepare(k, nbytes, rows, cols, err);
    if (!p) return -1;
    /* The walks only read data when decoding. On an error t is partly written. TL2's padding
     * bytes are not checked: nothing reads them. */
    int64_t bad = walk(p, (uint8_t *)(uintptr_t)data, t, 0);
    if (bad >= 0)
        return bn_err(err, "%s %" PRIu64 "x%" PRIu64 " tensor: byte %" PRId64 " (0x%02x) is not a "
                      "valid code", bn_tl_name(k), rows, cols, bad, data[bad]);
    return 0;
}

int bn_tl_encode(enum bn_tl_kind k, const int8_t *t, uint64_t rows, uint64_t cols,
                 uint8_t *data, size_t nbytes, bn_error *err)
{
    const struct tl_tiles *p = prepare(k, nbytes, rows, cols, err);
    if (!p) return -1;
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        if (t[i] < -1 || t[i] > 1)
            return bn_err(err, "%s encode: weight %zu is %d, not a ternary code", bn_tl_name(k),
                          i, t[i]);
    memset(data, 0, nbytes);   /* TL2's tail padding is zeros (np.pad constant 0) */
    walk(p, data, (int8_t *)(uintptr_t)t, 1);   /* encoding only reads t */
    return 0;
}
