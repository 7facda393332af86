/* kernels/: pure compute for BitNet b1.58 inference. No I/O, no allocation, no globals
 * besides the dispatch table chosen once at startup.
 *
 * Numerics follow ../docs/model-format.md and the BitNet reference:
 *   activation quant (per token): s = 127 / max(max|x|, 1e-5); q = clamp(round_half_even(x*s), -128, 127)
 *   ternary linear:               y[r] = (sum_c t[r][c] * q[c]) / s * w_scale
 * The integer part is exact in every variant, so SIMD variants must agree with the scalar
 * reference bit for bit on integer results and on everything derived from them in the same
 * float operation order (y = (float)acc / s * w_scale, computed as ((float)acc * (1/s)) is NOT
 * allowed: divide exactly as written).
 *
 * Threading: kernels are single-threaded over a row range [r0, r1); the engine splits rows
 * across its OpenMP threads. r0 and r1 must be multiples of bn_tern_row_tile(fmt) (or r1 == rows).
 */
#ifndef BN_KERNELS_H
#define BN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- instruction-set variants and run-time dispatch ---------------------------------- */

typedef enum bn_isa {
    BN_ISA_SCALAR = 0,   /* portable C: the reference every variant is tested against */
    BN_ISA_AVX2 = 1,     /* AVX2 + FMA + F16C */
    BN_ISA_AVX512 = 2,   /* AVX512F/BW/VL (+DQ) */
    BN_ISA_AVX512VNNI = 3, /* AVX512 + VNNI (vpdpbusd) */
    BN_ISA_COUNT
} bn_isa;

/* Best variant this CPU supports (CPUID), unless the environment variable BITNET_ISA
 * (scalar|avx2|avx512|avx512vnni) or bn_kernels_force() chose one. Called once, cheaply cached. */
bn_isa bn_kernels_isa(void);
/* Is variant isa usable on this CPU (and compiled into this binary)? */
int bn_kernels_isa_supported(bn_isa isa);
/* Force a variant (tests, --isa flag). Returns -1 if unsupported on this CPU. */
int bn_kernels_force(bn_isa isa);
const char *bn_isa_name(bn_isa isa);
/* Parses "scalar", "avx2", "avx512", "avx512vnni"; returns -1 if unknown. */
int bn_isa_parse(const char *name);

/* ---- ternary weight packings --------------------------------------------------------- */
/* A packing is owned by kernels/: the converter calls bn_tern_pack() and stores the bytes
 * verbatim in the model file; the GEMV/GEMM read them in place from the mmap. */
typedef enum bn_tern_fmt {
    BN_TERN_I2 = 1,   /* 2 bits per weight, SIMD-friendly layout (see kernels/ternary_pack.c) */
    BN_TERN_T5 = 2,   /* 5 trits per byte (1.6 bits per weight), base-3 */
} bn_tern_fmt;

/* Rows are processed in tiles of this many rows (packings may interleave rows of a tile). */
int bn_tern_row_tile(bn_tern_fmt fmt);
/* Columns are padded with zero weights up to this multiple; activation buffers passed to
 * gemv/gemm must hold bn_tern_cols_padded() int8 values, the padding zero. */
int bn_tern_col_block(bn_tern_fmt fmt);
size_t bn_tern_cols_padded(bn_tern_fmt fmt, size_t cols);
/* Bytes of a packed rows x cols matrix (rows padded to the row tile, cols to the block). */
size_t bn_tern_packed_size(bn_tern_fmt fmt, size_t rows, size_t cols);
/* Packs t (rows x cols, row-major, values in {-1,0,1}) into out (bn_tern_packed_size bytes). */
void bn_tern_pack(bn_tern_fmt fmt, const int8_t *t, size_t rows, size_t cols, uint8_t *out);
/* Unpacks one row back to cols trits (tests, inspection, format conversion). */
void bn_tern_unpack_row(bn_tern_fmt fmt, const uint8_t *packed, size_t rows, size_t cols,
                        size_t row, int8_t *out);

/* ---- activation quantization -------------------------------------------------------- */
/* Quantizes n floats to int8 as in the header comment; writes zeros to q[n..n_padded).
 * Returns s = 127/max(|x|, 1e-5) (the divisor used to dequantize). */
float bn_quant_act(const float *x, size_t n, size_t n_padded, int8_t *q);

/* ---- ternary matrix x int8 activations ------------------------------------------------- */
/* Decode: one token. y[r] for r in [r0, r1). q has bn_tern_cols_padded(cols) entries. */
void bn_tern_gemv(bn_tern_fmt fmt, const uint8_t *w, size_t rows, size_t cols,
                  const int8_t *q, float act_scale, float w_scale,
                  float *y, size_t r0, size_t r1);
/* Prefill: n tokens. q is n x cols_padded (row stride cols_padded), act_scale[n],
 * y is n x rows (row stride ldy). Rows [r0, r1). Must equal n calls of bn_tern_gemv exactly. */
void bn_tern_gemm(bn_tern_fmt fmt, const uint8_t *w, size_t rows, size_t cols,
                  const int8_t *q, const float *act_scale, size_t n, float w_scale,
                  float *y, size_t ldy, size_t r0, size_t r1);

/* ---- float kernels ------------------------------------------------------------------ */
/* out = x / sqrt(mean(x^2) + eps) * w. Sum of squares accumulated in double (as ggml). */
void bn_rmsnorm(float *out, const float *x, const float *w, size_t n, float eps);
/* NeoX (rotate_half) RoPE on n_heads heads of head_dim at position pos, in place.
 * inv_freq[i] = theta^(-2i/head_dim), i < head_dim/2, precomputed by bn_rope_inv_freq(). */
void bn_rope_inv_freq(float *inv_freq, int head_dim, float theta);
void bn_rope_neox(float *x, int n_heads, int head_dim, int pos, const float *inv_freq);
/* In-place numerically stable softmax. */
void bn_softmax(float *x, size_t n);
/* out[i] = relu(g[i])^2 * u[i] */
void bn_relu2_mul(float *out, const float *g, const float *u, size_t n);
/* out[i] = silu(g[i]) * u[i] = g[i] / (1 + exp(-g[i])) * u[i] (the Llama FFN); SIMD variants
 * agree with the scalar one to a few ulps (tests bound it), and each is deterministic. */
void bn_silu_mul(float *out, const float *g, const float *u, size_t n);

/* ---- attention over an f16 KV cache --------------------------------------------------- */
/* One query head over n_past+1 cached positions (causal), head_dim dims:
 *   out = softmax(q . K^T * scale) V, K/V rows f16 with row stride kv_stride (elements).
 * scratch holds n_pos floats. */
void bn_attn_head(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                  size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch);

/* All n_q query heads of one GQA group (sharing one KV head) in one pass over K and V:
 * q and out hold n_q heads of head_dim floats back to back; scratch holds n_q * n_pos floats.
 * Bit for bit equal to n_q calls of bn_attn_head with the same variant, but K/V are read and
 * converted once instead of n_q times (the 2B model has n_q = 4). */
void bn_attn_group(float *out, const float *q, int n_q, const uint16_t *k, const uint16_t *v,
                   size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch);

/* ---- lm_head and embeddings ---------------------------------------------------------- */
/* f16 rows: logits[r] = dot(x, W[r]) for r in [r0,r1), W rows x cols f16 row-major. Exact f32 accumulate. */
void bn_gemv_f16(const uint16_t *w, size_t cols, const float *x, float *y, size_t r0, size_t r1);
/* int8 rows with one f32 scale per row: logits[r] = row_scale[r] * sum_c w[r][c]*qx[c] / x_scale,
 * evaluated exactly as (float)isum / x_scale * row_scale[r] (isum exact in every variant).
 * qx is x quantized by bn_quant_act (cols padded to 64). W rows have stride cols_padded, the
 * padding zero, and values in [-127, 127] as bn_quant_rows_i8 writes them (the AVX2 kernel
 * negates weights with vpsignb, which cannot represent -(-128)). */
void bn_gemv_i8row(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                   const int8_t *qx, float x_scale, float *y, size_t r0, size_t r1);
/* The same for m tokens at once: qx holds m activation rows of stride ldq (each as above),
 * x_scale[m], y holds m rows of logits of stride ldy. Each weight chunk is loaded once for
 * all m tokens. Bit-identical to m calls of bn_gemv_i8row (the integer sums are exact). */
void bn_gemm_i8row(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                   const int8_t *qx, size_t ldq, const float *x_scale, size_t m,
                   float *y, size_t ldy, size_t r0, size_t r1);
/* Quantizes one f32 row to int8: q = round_half_even(row[c] * (127 / max|row|)) clamped to
 * [-127, 127], *scale = max|row| / 127 (0 for an all-zero row); zeros in [cols, cols_padded).
 * Called per row at convert time. */
void bn_quant_rows_i8(const float *row, size_t cols, size_t cols_padded, int8_t *out, float *scale);

/* ---- the int8 lm_head as 2-bit planes (the exact screened head's progressive copy) --------
 * The screened head reads the int8 copy most significant bits first, so that rows a coarse
 * look already rules out never cost their low bits. The offset code p = q + 128 of each int8
 * code q (in [-127, 127], so p in [1, 255]) is split into BN_U2_PLANES 2-bit digits, most
 * significant first: digit k of p is (p >> (6 - 2k)) & 3.
 *
 * Layout (bn_u2_pack). cols_padded is a multiple of BN_U2_COLS; a plane row is cols_padded / 4
 * bytes, in which 32-byte group g holds elements 128g + 32i + j at bits 2i+1..2i of byte j
 * (i = 0..3, j = 0..31), so one 256-bit load and four shift-and-masks give 128 digits in
 * element order of four 32-byte activation loads. Rows come in tiles of BN_U2_TILE rows
 * (row count padded up with code 0, p = 128); a tile holds its four planes one after another,
 * each plane its BN_U2_TILE rows back to back:
 *   digit row (r, k) at  planes + (r / T) * T * cols_padded + (k * T + r % T) * (cols_padded / 4),
 * T = BN_U2_TILE. A sweep of one plane thus reads runs of T rows, and a converter can pack and
 * write (and checksum) the planes in bands of whole tiles. */
#define BN_U2_PLANES 4
#define BN_U2_COLS 128
#define BN_U2_TILE 64
static inline size_t bn_u2_cols_padded(size_t cols)
{
    return (cols + BN_U2_COLS - 1) / BN_U2_COLS * BN_U2_COLS;
}
/* Bytes of the planes of rows x cols_padded codes (rows padded up to whole tiles). */
static inline size_t bn_u2_size(size_t rows, size_t cols_padded)
{
    return (rows + BN_U2_TILE - 1) / BN_U2_TILE * BN_U2_TILE * cols_padded;
}
/* Packs rows codes of cols_padded int8 values each (row stride ldq >= cols_padded; the caller
 * zeroes the padding columns) into out, bn_u2_size(rows, cols_padded) bytes; rows past `rows`
 * in the last tile are packed as code 0. A band packed alone is byte-identical to the same rows
 * inside a whole matrix when it starts at a multiple of BN_U2_TILE. */
void bn_u2_pack(const int8_t *q, size_t ldq, size_t rows, size_t cols_padded, uint8_t *out);
/* Digits of plane k of row r (tests, inspection): cols_padded values in [0, 3]. */
void bn_u2_unpack_row(const uint8_t *planes, size_t cols_padded, size_t r, int k, uint8_t *digits);
/* One plane step of the screen against int8 activations qx (cols_padded values, padding zero):
 * for every r in [r0, r1) with live == NULL or live[r] != 0,
 *   acc[r] = 4 * acc[r] + sum_c digit_k(p[r][c]) * qx[c]          (exact int32 arithmetic);
 * other rows are left untouched. Applied for k = 0..j in order from acc = 0, it leaves
 * acc[r] = sum_c (p[r][c] >> (6 - 2j)) * qx[c]. cols_padded <= 65536 keeps it in int32. */
void bn_u2_gemv(const uint8_t *planes, size_t cols_padded, int k, const int8_t *qx,
                const uint8_t *live, int32_t *acc, size_t r0, size_t r1);
/* The value stage j (planes 0..j known, j < BN_U2_PLANES - 1) stands for in place of code q:
 * the known high bits of p plus the centre of the unknown low bits, minus 128. Exact in float.
 * The screen's logit of stage j is s_r / x_scale * sum_c bn_u2_stage_value(q[c], j) * qx[c]
 *   = s_r / x_scale * (2^(6-2j) acc[r] + ((2^(6-2j) - 1) / 2 - 128) * sum_c qx[c]). */
static inline float bn_u2_stage_value(int8_t q, int j)
{
    int sh = 6 - 2 * j, p = q + 128;
    return (float)((p >> sh) << sh) + (float)((1 << sh) - 1) * 0.5f - 128.0f;
}

/* ---- conversions ------------------------------------------------------------------- */
void bn_f16_to_f32_row(const uint16_t *in, float *out, size_t n);
void bn_f32_to_f16_row(const float *in, uint16_t *out, size_t n);

#ifdef __cplusplus
}
#endif
#endif
