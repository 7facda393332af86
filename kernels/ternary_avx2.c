/* AVX2 ternary kernels (stub: scalar for now) */
#include "simd_x86.h"
float bn_quant_act_avx2(const float *x, size_t n, size_t n_padded, int8_t *q) { return bn_quant_act_scalar(x, n, n_padded, q); }
void bn_tern_gemv_i2_avx2(const uint8_t *w, size_t rows, size_t cols, const int8_t *q, float act_scale, float w_scale, float *y, size_t r0, size_t r1) { bn_tern_gemv_i2_scalar(w, rows, cols, q, act_scale, w_scale, y, r0, r1); }
void bn_tern_gemv_t5_avx2(const uint8_t *w, size_t rows, size_t cols, const int8_t *q, float act_scale, float w_scale, float *y, size_t r0, size_t r1) { bn_tern_gemv_t5_scalar(w, rows, cols, q, act_scale, w_scale, y, r0, r1); }
void bn_tern_gemm_i2_avx2(const uint8_t *w, size_t rows, size_t cols, const int8_t *q, const float *act_scale, size_t n, float w_scale, float *y, size_t ldy, size_t r0, size_t r1) { bn_tern_gemm_i2_scalar(w, rows, cols, q, act_scale, n, w_scale, y, ldy, r0, r1); }
void bn_tern_gemm_t5_avx2(const uint8_t *w, size_t rows, size_t cols, const int8_t *q, const float *act_scale, size_t n, float w_scale, float *y, size_t ldy, size_t r0, size_t r1) { bn_tern_gemm_t5_scalar(w, rows, cols, q, act_scale, n, w_scale, y, ldy, r0, r1); }
