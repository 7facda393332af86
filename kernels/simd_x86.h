/* Internal to kernels/: entry points of the x86 SIMD variants (defined in the *_avx2.c and
 * *_avx512.c files, each compiled with its own -m flags). */
#ifndef BN_KERNELS_SIMD_X86_H
#define BN_KERNELS_SIMD_X86_H

#include "kimpl.h"

#define BN_DECL_TERN(sfx)                                                                        \
    float bn_quant_act_##sfx(const float *x, size_t n, size_t n_padded, int8_t *q);              \
    void bn_tern_gemv_i2_##sfx(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,      \
                               float act_scale, float w_scale, float *y, size_t r0, size_t r1);  \
    void bn_tern_gemv_t5_##sfx(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,      \
                               float act_scale, float w_scale, float *y, size_t r0, size_t r1);  \
    void bn_tern_gemm_i2_##sfx(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,      \
                               const float *act_scale, size_t n, float w_scale, float *y,        \
                               size_t ldy, size_t r0, size_t r1);                                \
    void bn_tern_gemm_t5_##sfx(const uint8_t *w, size_t rows, size_t cols, const int8_t *q,      \
                               const float *act_scale, size_t n, float w_scale, float *y,        \
                               size_t ldy, size_t r0, size_t r1);

#define BN_DECL_U2(sfx)                                                                          \
    void bn_u2_gemv_##sfx(const uint8_t *planes, size_t cols_padded, int k, const int8_t *qx,    \
                          const uint8_t *live, int32_t *acc, size_t r0, size_t r1);

BN_DECL_TERN(avx2)
BN_DECL_TERN(avx512)
BN_DECL_TERN(avx512vnni)
BN_DECL_U2(avx2)
BN_DECL_U2(avx512)
BN_DECL_U2(avx512vnni)

#endif
