/* Scalar reference for activation quantization and the ternary GEMV/GEMM. Every SIMD variant
 * is tested bit for bit against these functions. Integer accumulation is exact (int32 holds
 * 2*128*cols for any cols < 2^23), and the float epilogue is bn_tern_out(). */
#include "kimpl.h"

#include <math.h>

float bn_act_scale_from_max(float amax)
{
    /* bitnet.cpp takes the max in double with a 1e-5 floor; max|x| of floats is itself a
     * float, so only the floor and the division happen in double. */
    double m = (double)amax;
    if (!(m >= 1e-5)) m = 1e-5;
    return (float)(127.0 / m);
}

float bn_quant_act_scalar(const float *x, size_t n, size_t n_padded, int8_t *q)
{
    float amax = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) amax = a; /* inputs are finite; NaN handling is unspecified */
    }
    float s = bn_act_scale_from_max(amax);
    for (size_t i = 0; i < n; i++) q[i] = bn_quant_one(x[i] * s);
    for (size_t i = n; i < n_padded; i++) q[i] = 0;
    return s;
}

/* Integer dot products of the 16 rows of one tile against q; acc[r] = sum_c t[r][c]*q[c]. */
static void tile_dot_i2(const uint8_t *tile, size_t cols_p, const int8_t *q, int32_t acc[16])
{
    for (int r = 0; r < 16; r++) acc[r] = 0;
    for (size_t g = 0; g < cols_p / BN_I2_CHUNK_COLS; g++, tile += BN_CHUNK_BYTES) {
        const int8_t *qg = q + g * BN_I2_CHUNK_COLS;
        for (int b = 0; b < BN_CHUNK_BYTES; b++) {
            unsigned byte = tile[b];
            int j = b & 3;
            for (int p = 0; p < 4; p++)
                acc[b >> 2] += ((int)((byte >> (2 * p)) & 3) - 1) * qg[4 * p + j];
        }
    }
}

static void tile_dot_t5(const uint8_t *tile, size_t cols_p, const int8_t *q, int32_t acc[16])
{
    for (int r = 0; r < 16; r++) acc[r] = 0;
    for (size_t g = 0; g < cols_p / BN_T5_CHUNK_COLS; g++, tile += BN_CHUNK_BYTES) {
        const int8_t *qg = q + g * BN_T5_CHUNK_COLS;
        for (int b = 0; b < BN_CHUNK_BYTES; b++) {
            unsigned y = tile[b];
            int j = b & 3;
            for (int p = 0; p < 5; p++) {
                unsigned y3 = 3 * y;
                acc[b >> 2] += ((int)(y3 >> 8) - 1) * qg[4 * p + j];
                y = y3 & 0xff;
            }
        }
    }
}

typedef void (*tile_dot_fn)(const uint8_t *, size_t, const int8_t *, int32_t[16]);

static void gemv_generic(tile_dot_fn dot, size_t tb, size_t cols_p, const uint8_t *w,
                         const int8_t *q, float act_scale, float w_scale, float *y, size_t r0,
                         size_t r1)
{
    int32_t acc[16];
    for (size_t T = r0 / BN_TILE_ROWS; T * BN_TILE_ROWS < r1; T++) {
        dot(w + T * tb, cols_p, q, acc);
        for (size_t r = T * BN_TILE_ROWS; r < (T + 1) * BN_TILE_ROWS && r < r1; r++)
            if (r >= r0) y[r] = bn_tern_out(acc[r % BN_TILE_ROWS], act_scale, w_scale);
    }
}

void bn_tern_gemv_i2_scalar(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                            float act_scale, float w_scale, float *y, size_t r0, size_t r1)
{
    (void)rows;
    size_t cols_p = bn_tern_cols_padded(BN_TERN_I2, cols);
    gemv_generic(tile_dot_i2, bn_i2_tile_bytes(cols_p), cols_p, w, q, act_scale, w_scale, y, r0, r1);
}

void bn_tern_gemv_t5_scalar(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                            float act_scale, float w_scale, float *y, size_t r0, size_t r1)
{
    (void)rows;
    size_t cols_p = bn_tern_cols_padded(BN_TERN_T5, cols);
    gemv_generic(tile_dot_t5, bn_t5_tile_bytes(cols_p), cols_p, w, q, act_scale, w_scale, y, r0, r1);
}

/* The reference GEMM is literally n GEMVs, which is what "must equal n GEMV calls" means. */
void bn_tern_gemm_i2_scalar(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                            const float *act_scale, size_t n, float w_scale, float *y,
                            size_t ldy, size_t r0, size_t r1)
{
    size_t cols_p = bn_tern_cols_padded(BN_TERN_I2, cols);
    for (size_t i = 0; i < n; i++)
        bn_tern_gemv_i2_scalar(w, rows, cols, q + i * cols_p, act_scale[i], w_scale, y + i * ldy, r0, r1);
}

void bn_tern_gemm_t5_scalar(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                            const float *act_scale, size_t n, float w_scale, float *y,
                            size_t ldy, size_t r0, size_t r1)
{
    size_t cols_p = bn_tern_cols_padded(BN_TERN_T5, cols);
    for (size_t i = 0; i < n; i++)
        bn_tern_gemv_t5_scalar(w, rows, cols, q + i * cols_p, act_scale[i], w_scale, y + i * ldy, r0, r1);
}
