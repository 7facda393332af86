/* AVX512 float kernels, and the AVX512 / AVX512-VNNI dispatch tables. */
#include "simd_x86.h"

const bn_ktab bn_ktab_avx512 = {
    .quant_act = bn_quant_act_avx512,
    .gemv_i2 = bn_tern_gemv_i2_avx512,
    .gemv_t5 = bn_tern_gemv_t5_avx512,
    .gemm_i2 = bn_tern_gemm_i2_avx512,
    .gemm_t5 = bn_tern_gemm_t5_avx512,
    .rmsnorm = bn_rmsnorm_scalar,
    .softmax = bn_softmax_scalar,
    .relu2_mul = bn_relu2_mul_scalar,
    .attn_head = bn_attn_head_scalar,
    .gemv_f16 = bn_gemv_f16_scalar,
    .gemv_i8row = bn_gemv_i8row_scalar,
    .f16_to_f32 = bn_f16_to_f32_scalar,
    .f32_to_f16 = bn_f32_to_f16_scalar,
};

const bn_ktab bn_ktab_avx512vnni = {
    .quant_act = bn_quant_act_avx512,
    .gemv_i2 = bn_tern_gemv_i2_avx512vnni,
    .gemv_t5 = bn_tern_gemv_t5_avx512vnni,
    .gemm_i2 = bn_tern_gemm_i2_avx512vnni,
    .gemm_t5 = bn_tern_gemm_t5_avx512vnni,
    .rmsnorm = bn_rmsnorm_scalar,
    .softmax = bn_softmax_scalar,
    .relu2_mul = bn_relu2_mul_scalar,
    .attn_head = bn_attn_head_scalar,
    .gemv_f16 = bn_gemv_f16_scalar,
    .gemv_i8row = bn_gemv_i8row_scalar,
    .f16_to_f32 = bn_f16_to_f32_scalar,
    .f32_to_f16 = bn_f32_to_f16_scalar,
};
