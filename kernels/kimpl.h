/* Internal to kernels/: the dispatch table every ISA variant fills, and the packing geometry
 * shared by the packer and the kernels. Not for use outside kernels/ (tests and the bench
 * include it only to reach individual variants). */
#ifndef BN_KERNELS_KIMPL_H
#define BN_KERNELS_KIMPL_H

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "kernels.h"

#include <float.h>
#include <math.h>

/* ---- packing geometry (see ternary_pack.c for the full layout description) ------------ */
/* Both formats tile 16 rows: one 64-byte "chunk" holds 16 rows x 4 columns per decoded plane,
 * i.e. exactly one zmm (or two ymm) whose dword r belongs to row r. */
#define BN_TILE_ROWS 16
#define BN_CHUNK_BYTES 64
/* I2: a chunk holds 4 planes (2 bits each) = 16 columns; column block is 64 (4 chunks). */
#define BN_I2_CHUNK_COLS 16
#define BN_I2_COL_BLOCK 64
/* T5: a chunk holds 5 planes (one base-3 digit each) = 20 columns; column block is 20. */
#define BN_T5_CHUNK_COLS 20
#define BN_T5_COL_BLOCK 20

static inline size_t bn_round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

/* Bytes of one 16-row tile for a padded column count. */
static inline size_t bn_i2_tile_bytes(size_t cols_p) { return cols_p / BN_I2_CHUNK_COLS * BN_CHUNK_BYTES; }
static inline size_t bn_t5_tile_bytes(size_t cols_p) { return cols_p / BN_T5_CHUNK_COLS * BN_CHUNK_BYTES; }

/* Software prefetch distance of the streaming GEMVs, in bytes ahead of the current chunk.
 * Measured on the target (Zen, 1 core): 1 KB -> 29 GB/s, 4 KB -> 33, 8 KB -> 36, 16 KB -> 35. */
#define BN_PF_DIST 8192

/* T5 decode thresholds: digit = (3*y) >> 8 == (y >= 86) + (y >= 171) for a byte y. */
#define BN_T5_THR1 86
#define BN_T5_THR2 171

/* 2-bit planes of the int8 lm_head (kernels.h): the offset of plane k of row r in the tiled
 * layout, and that row. */
static inline size_t bn_u2_row_off(size_t cols_padded, size_t r, int k)
{
    return r / BN_U2_TILE * BN_U2_TILE * cols_padded +
           ((size_t)k * BN_U2_TILE + r % BN_U2_TILE) * (cols_padded / 4);
}
static inline const uint8_t *bn_u2_row(const uint8_t *planes, size_t cols_padded, size_t r, int k)
{
    return planes + bn_u2_row_off(cols_padded, r, k);
}
/* The plane step's update 4 * acc + dot, in unsigned arithmetic: the documented bounds keep
 * it exact in int32, and a caller's garbage accumulator wraps instead of being UB. */
static inline int32_t bn_u2_step(int32_t acc, int32_t dot)
{
    return (int32_t)(4u * (uint32_t)acc + (uint32_t)dot);
}

/* The SIMD variants' row loop over the live rows of [r0, r1) (live NULL: all rows). The dot
 * product of a row also prefetches the row about BN_U2_PF_BYTES of live rows ahead, one line
 * per 64 bytes it reads: once the screen has pruned rows they are no longer one sequential
 * stream, and the hardware prefetcher stalls at the gaps and at every tile (where the other
 * planes sit). Measured on one Sapphire Rapids core, 2B-model head (128256 x 2560 codes),
 * VNNI, plane bytes per second: all rows live 8.5 -> 12.8 GB/s (the int8 GEMV on as many
 * bytes: 12-16), half 5.2 -> 8.5, a tenth 3.7 -> 9.7; from L1 35 -> 30. Prefetching whole
 * rows in a burst instead was slower; 2.5 to 40 KB ahead were alike within the noise. */
#define BN_U2_PF_BYTES 10240
typedef int32_t (*bn_u2_dot_fn)(const uint8_t *row, const uint8_t *pf, const int8_t *qx, size_t n_groups);
static inline size_t bn_u2_next_live(const uint8_t *live, size_t r, size_t r1)
{
    if (live)
        while (r < r1 && !live[r]) r++;
    return r;
}
static inline __attribute__((always_inline)) void
bn_u2_sweep(const uint8_t *planes, size_t cols_padded, int k, const int8_t *qx, const uint8_t *live,
            int32_t *acc, size_t r0, size_t r1, bn_u2_dot_fn dot)
{
    const size_t ng = cols_padded / BN_U2_COLS, rb = cols_padded / 4;
    const size_t depth = rb < BN_U2_PF_BYTES ? BN_U2_PF_BYTES / rb : 1;
    size_t r = bn_u2_next_live(live, r0, r1), pf = r;   /* pf: depth live rows past r, or r1 */
    for (size_t d = 0; d < depth && pf < r1; d++) pf = bn_u2_next_live(live, pf + 1, r1);
    for (; r < r1; r = bn_u2_next_live(live, r + 1, r1)) {
        const uint8_t *row = bn_u2_row(planes, cols_padded, r, k);
        acc[r] = bn_u2_step(acc[r], dot(row, pf < r1 ? bn_u2_row(planes, cols_padded, pf, k) : row, qx, ng));
        if (pf < r1) pf = bn_u2_next_live(live, pf + 1, r1);
    }
}

/* ---- dispatch table ------------------------------------------------------------------ */
typedef void (*bn_tern_gemv_fn)(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                                float act_scale, float w_scale, float *y, size_t r0, size_t r1);
typedef void (*bn_tern_gemm_fn)(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                                const float *act_scale, size_t n, float w_scale, float *y,
                                size_t ldy, size_t r0, size_t r1);

typedef void (*bn_u2_gemv_fn)(const uint8_t *planes, size_t cols_padded, int k, const int8_t *qx,
                              const uint8_t *live, int32_t *acc, size_t r0, size_t r1);

typedef struct bn_ktab {
    float (*quant_act)(const float *x, size_t n, size_t n_padded, int8_t *q);
    bn_tern_gemv_fn gemv_i2, gemv_t5;
    bn_tern_gemm_fn gemm_i2, gemm_t5;
    void (*rmsnorm)(float *out, const float *x, const float *w, size_t n, float eps);
    void (*softmax)(float *x, size_t n);
    void (*relu2_mul)(float *out, const float *g, const float *u, size_t n);
    void (*attn_head)(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                      size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch);
    void (*attn_group)(float *out, const float *q, int n_q, const uint16_t *k, const uint16_t *v,
                       size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch);
    void (*gemv_f16)(const uint16_t *w, size_t cols, const float *x, float *y, size_t r0, size_t r1);
    void (*gemv_i8row)(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                       const int8_t *qx, float x_scale, float *y, size_t r0, size_t r1);
    void (*gemm_i8row)(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                       const int8_t *qx, size_t ldq, const float *x_scale, size_t m,
                       float *y, size_t ldy, size_t r0, size_t r1);
    void (*f16_to_f32)(const uint16_t *in, float *out, size_t n);
    void (*f32_to_f16)(const float *in, uint16_t *out, size_t n);
    void (*silu_mul)(float *out, const float *g, const float *u, size_t n);
    bn_u2_gemv_fn u2_gemv;   /* last: tables built before it existed still line up */
} bn_ktab;

extern const bn_ktab bn_ktab_scalar;
#ifdef BN_X86_64
extern const bn_ktab bn_ktab_avx2;
extern const bn_ktab bn_ktab_avx512;
extern const bn_ktab bn_ktab_avx512vnni;
#endif

/* The table of a given variant (NULL if not compiled in); ignores CPU support. */
const bn_ktab *bn_ktab_get(bn_isa isa);

/* ---- scalar reference entry points (also used by SIMD variants for tails) ------------ */
float bn_quant_act_scalar(const float *x, size_t n, size_t n_padded, int8_t *q);
/* s = 127/max(max|x|, 1e-5) with the max in double, rounded once to float. */
float bn_act_scale_from_max(float amax);
/* The per-row epilogue every variant must use, so results agree bit for bit. */
static inline float bn_tern_out(int32_t acc, float act_scale, float w_scale)
{
    return (float)acc / act_scale * w_scale;
}
/* Round to nearest, ties to even, for |v| <= 2^22: adding 1.5*2^23 lands in a binade whose
 * ulp is 1, so the FPU's default rounding does the work (ggml's nearest_int trick; cheaper
 * than nearbyintf, which saves and restores the FP environment). */
static inline float bn_round_even(float v)
{
    return (v + 12582912.0f) - 12582912.0f;
}
static inline int8_t bn_quant_one(float v)
{
    /* Clamping before rounding gives the same result as cvtps_epi32 + signed saturation in
     * the SIMD variants (127.5 -> 128 -> 127 there, 127 here). NaN maps to -128 in both. */
    if (v > 127.0f) v = 127.0f;
    if (!(v >= -128.0f)) v = -128.0f;
    return (int8_t)bn_round_even(v);
}

void bn_tern_gemv_i2_scalar(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                            float act_scale, float w_scale, float *y, size_t r0, size_t r1);
void bn_tern_gemv_t5_scalar(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                            float act_scale, float w_scale, float *y, size_t r0, size_t r1);
void bn_tern_gemm_i2_scalar(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                            const float *act_scale, size_t n, float w_scale, float *y,
                            size_t ldy, size_t r0, size_t r1);
void bn_tern_gemm_t5_scalar(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                            const float *act_scale, size_t n, float w_scale, float *y,
                            size_t ldy, size_t r0, size_t r1);

void bn_rmsnorm_scalar(float *out, const float *x, const float *w, size_t n, float eps);
void bn_softmax_scalar(float *x, size_t n);
void bn_relu2_mul_scalar(float *out, const float *g, const float *u, size_t n);
void bn_silu_mul_scalar(float *out, const float *g, const float *u, size_t n);
/* silu(g) = g / (1 + expf(-g)), the reference every variant is tested against (SIMD variants
 * use it for their scalar tails). g is clamped to -FLT_MAX first so that g = -inf gives
 * -FLT_MAX / (1 + inf) = -0, the limit, instead of -inf / inf = NaN; below -88.7 expf(-g)
 * overflows to inf and the quotient is -0 as well. g = +inf gives inf; NaN stays NaN. */
static inline float bn_silu_one(float g)
{
    const float x = g < -FLT_MAX ? -FLT_MAX : g;
    return x / (1.0f + expf(-x));
}
void bn_attn_head_scalar(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                         size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch);
void bn_attn_group_scalar(float *out, const float *q, int n_q, const uint16_t *k, const uint16_t *v,
                          size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch);
void bn_gemv_f16_scalar(const uint16_t *w, size_t cols, const float *x, float *y, size_t r0, size_t r1);
void bn_gemv_i8row_scalar(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                          const int8_t *qx, float x_scale, float *y, size_t r0, size_t r1);
void bn_gemm_i8row_scalar(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                          const int8_t *qx, size_t ldq, const float *x_scale, size_t m,
                          float *y, size_t ldy, size_t r0, size_t r1);
void bn_u2_gemv_scalar(const uint8_t *planes, size_t cols_padded, int k, const int8_t *qx,
                       const uint8_t *live, int32_t *acc, size_t r0, size_t r1);
void bn_f16_to_f32_scalar(const uint16_t *in, float *out, size_t n);
void bn_f32_to_f16_scalar(const float *in, uint16_t *out, size_t n);

#endif
