/* Internal to kernels/: the x86 float-kernel entry points shared between variant tables (the
 * AVX512 tables reuse the AVX2 versions where 256-bit code already saturates the resource). */
#ifndef BN_KERNELS_FLOAT_X86_H
#define BN_KERNELS_FLOAT_X86_H

#include "kimpl.h"

void bn_rmsnorm_avx2(float *out, const float *x, const float *w, size_t n, float eps);
void bn_relu2_mul_avx2(float *out, const float *g, const float *u, size_t n);
void bn_silu_mul_avx2(float *out, const float *g, const float *u, size_t n);
void bn_softmax_avx2(float *x, size_t n);
void bn_attn_head_avx2(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                       size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch);
void bn_attn_group_avx2(float *out, const float *q, int n_q, const uint16_t *k, const uint16_t *v,
                        size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch);
void bn_gemv_f16_avx2(const uint16_t *w, size_t cols, const float *x, float *y, size_t r0, size_t r1);
void bn_gemv_i8row_avx2(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                        const int8_t *qx, float x_scale, float *y, size_t r0, size_t r1);
void bn_gemm_i8row_avx2(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                        const int8_t *qx, size_t ldq, const float *x_scale, size_t m,
                        float *y, size_t ldy, size_t r0, size_t r1);
void bn_f16_to_f32_avx2(const uint16_t *in, float *out, size_t n);
void bn_f32_to_f16_avx2(const float *in, uint16_t *out, size_t n);

#endif
