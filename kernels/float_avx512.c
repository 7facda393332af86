/* AVX512 lm_head GEMVs and conversions, and the AVX512 / AVX512-VNNI dispatch tables. The
 * small elementwise kernels (rmsnorm, relu2_mul) reuse the AVX2 versions. */
#include "simd_x86.h"
#include "float_x86.h"
#include "half.h"

#include <immintrin.h>

static inline __m512 ld_h16(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

/* f32 accumulation in 4 x 16 lanes: differs from the sequential scalar sum in the last bits. */
static void gemv_f16_avx512(const uint16_t *w, size_t cols, const float *x, float *y, size_t r0, size_t r1)
{
    for (size_t r = r0; r < r1; r++) {
        const uint16_t *wr = w + r * cols;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        size_t c = 0;
        for (; c + 64 <= cols; c += 64) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + c), ld_h16(wr + c), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + c + 16), ld_h16(wr + c + 16), a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + c + 32), ld_h16(wr + c + 32), a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + c + 48), ld_h16(wr + c + 48), a3);
        }
        for (; c + 16 <= cols; c += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + c), ld_h16(wr + c), a0);
        if (c < cols) {
            const __mmask16 k = (__mmask16)((1u << (cols - c)) - 1);
            const __m512 xv = _mm512_maskz_loadu_ps(k, x + c);
            const __m512 wv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, wr + c));
            a1 = _mm512_fmadd_ps(xv, wv, a1);
        }
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    }
}

static void f16_to_f32_avx512(const uint16_t *in, float *out, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, ld_h16(in + i));
    bn_f16_to_f32_avx2(in + i, out + i, n - i);
}

static void f32_to_f16_avx512(const float *in, uint16_t *out, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    bn_f32_to_f16_avx2(in + i, out + i, n - i);
}

/* exp(x) for softmax arguments (x <= 0): the same range reduction and Cephes polynomial as
 * exp256 in float_avx2.c, 16 lanes wide. */
static inline __m512 exp512(__m512 x)
{
    const __m512 lo = _mm512_set1_ps(-87.33654f);
    const __mmask16 ok = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    x = _mm512_max_ps(x, lo);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(ok, p, _mm512_castsi512_ps(e));
}

static void softmax_avx512(float *x, size_t n)
{
    if (n == 0) return;
    __m512 vm = _mm512_set1_ps(x[0]);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + i));
    const __mmask16 tail = (__mmask16)((1u << (n - i)) - 1);
    vm = _mm512_mask_max_ps(vm, tail, vm, _mm512_maskz_loadu_ps(tail, x + i));
    vm = _mm512_set1_ps(_mm512_reduce_max_ps(vm));
    __m512 vs0 = _mm512_setzero_ps(), vs1 = vs0;
    for (i = 0; i + 32 <= n; i += 32) {
        const __m512 e0 = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
        const __m512 e1 = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vm));
        _mm512_storeu_ps(x + i, e0);
        _mm512_storeu_ps(x + i + 16, e1);
        vs0 = _mm512_add_ps(vs0, e0);
        vs1 = _mm512_add_ps(vs1, e1);
    }
    for (; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 e = _mm512_maskz_mov_ps(k, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm)));
        _mm512_mask_storeu_ps(x + i, k, e);
        vs0 = _mm512_add_ps(vs0, e);
    }
    const __m512 vi = _mm512_set1_ps((float)(1.0 / (double)_mm512_reduce_add_ps(_mm512_add_ps(vs0, vs1))));
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), vi));
    if (i < n) _mm512_mask_storeu_ps(x + i, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + i), vi));
}

/* Sum of 4 vectors each, as 4 floats: dot products of 4 positions at once. */
static inline __m128 hsum4x512(__m512 a, __m512 b, __m512 c, __m512 d)
{
    const __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    const __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    const __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    const __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* head_dim == 128 (the model's): q and the output accumulators live in 8 zmm each.
 * QK: 4 positions per step, so four independent FMA chains hide the latency. */
static void attn_head_avx512(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                             size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch)
{
    if (head_dim != 128) {
        bn_attn_head_avx2(out, q, k, v, n_pos, kv_stride, head_dim, scale, scratch);
        return;
    }
    __m512 qv[8];
    for (int j = 0; j < 8; j++) qv[j] = _mm512_loadu_ps(q + 16 * j);
    size_t p = 0;
    const __m128 vscale = _mm_set1_ps(scale);
    for (; p + 4 <= n_pos; p += 4) {
        const uint16_t *k0 = k + p * kv_stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int j = 0; j < 8; j++) {
            a0 = _mm512_fmadd_ps(qv[j], ld_h16(k0 + 16 * j), a0);
            a1 = _mm512_fmadd_ps(qv[j], ld_h16(k0 + kv_stride + 16 * j), a1);
            a2 = _mm512_fmadd_ps(qv[j], ld_h16(k0 + 2 * kv_stride + 16 * j), a2);
            a3 = _mm512_fmadd_ps(qv[j], ld_h16(k0 + 3 * kv_stride + 16 * j), a3);
        }
        _mm_storeu_ps(scratch + p, _mm_mul_ps(hsum4x512(a0, a1, a2, a3), vscale));
    }
    for (; p < n_pos; p++) {
        const uint16_t *kp = k + p * kv_stride;
        __m512 a = _mm512_setzero_ps();
        for (int j = 0; j < 8; j++) a = _mm512_fmadd_ps(qv[j], ld_h16(kp + 16 * j), a);
        scratch[p] = _mm512_reduce_add_ps(a) * scale;
    }
    softmax_avx512(scratch, n_pos);
    __m512 o[8], o2[8];
    for (int j = 0; j < 8; j++) o[j] = o2[j] = _mm512_setzero_ps();
    /* two positions per step into two accumulator sets: 16 independent chains */
    for (p = 0; p + 2 <= n_pos; p += 2) {
        const __m512 w0 = _mm512_set1_ps(scratch[p]), w1 = _mm512_set1_ps(scratch[p + 1]);
        const uint16_t *v0 = v + p * kv_stride, *v1 = v0 + kv_stride;
        for (int j = 0; j < 8; j++) {
            o[j] = _mm512_fmadd_ps(w0, ld_h16(v0 + 16 * j), o[j]);
            o2[j] = _mm512_fmadd_ps(w1, ld_h16(v1 + 16 * j), o2[j]);
        }
    }
    if (p < n_pos) {
        const __m512 w0 = _mm512_set1_ps(scratch[p]);
        for (int j = 0; j < 8; j++) o[j] = _mm512_fmadd_ps(w0, ld_h16(v + p * kv_stride + 16 * j), o[j]);
    }
    for (int j = 0; j < 8; j++) _mm512_storeu_ps(out + 16 * j, _mm512_add_ps(o[j], o2[j]));
}

#pragma GCC push_options
#pragma GCC target("avx512vnni")
/* vpdpbusd needs an unsigned operand: with u = q + 128 (q ^ 0x80),
 * sum(w*q) = sum(w*u) - 128*sum(w), the second term by another vpdpbusd against 0x80 bytes.
 * Exact for any int8 weights (-128 included). Four rows share each activation vector. */
static inline __m512i i8row_tail_load(const void *p, size_t n)
{
    return _mm512_maskz_loadu_epi8((__mmask64)(~0ull >> (64 - n)), p);
}

static void gemv_i8row_vnni(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                            const int8_t *qx, float x_scale, float *y, size_t r0, size_t r1)
{
    (void)cols;
    const __m512i x80 = _mm512_set1_epi8((char)0x80);
    const size_t cv = cols_padded / 64 * 64, tail = cols_padded - cv;
    for (size_t r = r0; r < r1; r += 4) {
        const size_t nr = r1 - r < 4 ? r1 - r : 4;
        __m512i a[4], s[4];
        for (int j = 0; j < 4; j++) a[j] = s[j] = _mm512_setzero_si512();
        const int8_t *w0 = w + r * cols_padded;
        if (nr == 4) {
            for (size_t c = 0; c < cv; c += 64) {
                const __m512i u = _mm512_xor_si512(_mm512_loadu_si512(qx + c), x80);
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    const __m512i wv = _mm512_loadu_si512(w0 + j * cols_padded + c);
                    a[j] = _mm512_dpbusd_epi32(a[j], u, wv);
                    s[j] = _mm512_dpbusd_epi32(s[j], x80, wv);
                }
            }
        } else {
            for (size_t c = 0; c < cv; c += 64) {
                const __m512i u = _mm512_xor_si512(_mm512_loadu_si512(qx + c), x80);
                for (size_t j = 0; j < nr; j++) {
                    const __m512i wv = _mm512_loadu_si512(w0 + j * cols_padded + c);
                    a[j] = _mm512_dpbusd_epi32(a[j], u, wv);
                    s[j] = _mm512_dpbusd_epi32(s[j], x80, wv);
                }
            }
        }
        if (tail) {
            /* masked-off bytes are 0 in both w and q^0x80-of-0 = 0x80: 128*0 adds nothing */
            const __m512i u = _mm512_xor_si512(i8row_tail_load(qx + cv, tail), x80);
            for (size_t j = 0; j < nr; j++) {
                const __m512i wv = i8row_tail_load(w0 + j * cols_padded + cv, tail);
                a[j] = _mm512_dpbusd_epi32(a[j], u, wv);
                s[j] = _mm512_dpbusd_epi32(s[j], x80, wv);
            }
        }
        for (size_t j = 0; j < nr; j++) {
            const int32_t acc = _mm512_reduce_add_epi32(_mm512_sub_epi32(a[j], s[j]));
            y[r + j] = bn_tern_out(acc, x_scale, row_scale[r + j]);
        }
    }
}
#pragma GCC pop_options

const bn_ktab bn_ktab_avx512 = {
    .quant_act = bn_quant_act_avx512,
    .gemv_i2 = bn_tern_gemv_i2_avx512,
    .gemv_t5 = bn_tern_gemv_t5_avx512,
    .gemm_i2 = bn_tern_gemm_i2_avx512,
    .gemm_t5 = bn_tern_gemm_t5_avx512,
    .rmsnorm = bn_rmsnorm_avx2,
    .softmax = softmax_avx512,
    .relu2_mul = bn_relu2_mul_avx2,
    .attn_head = attn_head_avx512,
    .gemv_f16 = gemv_f16_avx512,
    .gemv_i8row = bn_gemv_i8row_avx2,
    .f16_to_f32 = f16_to_f32_avx512,
    .f32_to_f16 = f32_to_f16_avx512,
};

const bn_ktab bn_ktab_avx512vnni = {
    .quant_act = bn_quant_act_avx512vnni,
    .gemv_i2 = bn_tern_gemv_i2_avx512vnni,
    .gemv_t5 = bn_tern_gemv_t5_avx512vnni,
    .gemm_i2 = bn_tern_gemm_i2_avx512vnni,
    .gemm_t5 = bn_tern_gemm_t5_avx512vnni,
    .rmsnorm = bn_rmsnorm_avx2,
    .softmax = softmax_avx512,
    .relu2_mul = bn_relu2_mul_avx2,
    .attn_head = attn_head_avx512,
    .gemv_f16 = gemv_f16_avx512,
    .gemv_i8row = gemv_i8row_vnni,
    .f16_to_f32 = f16_to_f32_avx512,
    .f32_to_f16 = f32_to_f16_avx512,
};
