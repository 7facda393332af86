/* AVX512 lm_head GEMVs and conversions, and the AVX512 / AVX512-VNNI dispatch tables. The
 * small elementwise kernels (rmsnorm, relu2_mul) reuse the AVX2 versions. */
#include "simd_x86.h"
#include "float_x86.h"
#include "half.h"

#include <float.h>
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
            _mm_prefetch((const char *)(wr + c) + BN_PF_DIST, _MM_HINT_T0);
            _mm_prefetch((const char *)(wr + c) + BN_PF_DIST + 64, _MM_HINT_T0);
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

/* The shared part of the exp kernels below: n = round(x / ln 2), r = x - n ln 2 (in two
 * steps, Cephes), and the degree-5 polynomial P(r) with e^r ~ 1 + r + r^2 P(r). */
static inline __m512 exp512_poly(__m512 x, __m512 *n_out, __m512 *r_out)
{
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
    *n_out = n;
    *r_out = r;
    return p;
}

/* exp(x) for softmax arguments (x <= 0): the same range reduction and Cephes polynomial as
 * exp256 in float_avx2.c, 16 lanes wide. */
static inline __m512 exp512(__m512 x)
{
    const __m512 lo = _mm512_set1_ps(-87.33654f);
    const __mmask16 ok = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    x = _mm512_max_ps(x, lo);
    __m512 n, r;
    __m512 p = exp512_poly(x, &n, &r);
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(ok, p, _mm512_castsi512_ps(e));
}

/* exp over the whole float range for silu: exp256_wide in float_avx2.c, 16 lanes wide. */
static inline __m512 exp512_wide(__m512 x)
{
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-80.0f), x));
    __m512 n, r;
    __m512 p = exp512_poly(x, &n, &r);
    /* (r + r^2 P(r)) + 1, as Cephes: adding 1 last rounds once, near the result */
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(126)), 23);
    return _mm512_mul_ps(_mm512_mul_ps(p, _mm512_castsi512_ps(e)), _mm512_set1_ps(2.0f));
}

/* silu(g) = x / (1 + exp(-x)), x = max(g, -FLT_MAX): as bn_silu_one and silu256. */
static inline __m512 silu512(__m512 g)
{
    const __m512 x = _mm512_max_ps(_mm512_set1_ps(-FLT_MAX), g);
    const __m512 e = exp512_wide(_mm512_xor_ps(x, _mm512_set1_ps(-0.0f)));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

/* The tail is one masked vector (masked-off lanes load 0: silu(0) * 0, never stored). */
static void silu_mul_avx512(float *out, const float *g, const float *u, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_mul_ps(silu512(_mm512_loadu_ps(g + i)), _mm512_loadu_ps(u + i)));
    if (i < n) {
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        const __m512 v = _mm512_mul_ps(silu512(_mm512_maskz_loadu_ps(k, g + i)), _mm512_maskz_loadu_ps(k, u + i));
        _mm512_mask_storeu_ps(out + i, k, v);
    }
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

/* f16 row segment of n <= 16 values (the rest of the lanes 0): head_dim tails. */
static inline __m512 ld_h16_n(const uint16_t *p, __mmask16 m)
{
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

/* q . k for one position, any head_dim: whole 16-lane blocks, then one masked block. */
static inline __m512 dot_any_512(const float *q, const uint16_t *kp, int nfull, __mmask16 mt)
{
    __m512 a = _mm512_setzero_ps();
    for (int j = 0; j < nfull; j++) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * j), ld_h16(kp + 16 * j), a);
    if (mt) a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mt, q + 16 * nfull), ld_h16_n(kp + 16 * nfull, mt), a);
    return a;
}

/* out[d0 .. d0 + 16*NR) (the last register masked by ml) = sum_p scratch[p] * v_p, even and
 * odd positions in two accumulator sets; NR is a constant at every call (registers). */
static inline __attribute__((always_inline)) void attn_v_block_512(float *out, const float *scratch,
                                                                   const uint16_t *v, size_t n_pos,
                                                                   size_t kv_stride, int d0, int NR,
                                                                   __mmask16 ml)
{
    __m512 o[8], o2[8];
    _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) o[j] = o2[j] = _mm512_setzero_ps();
    size_t p = 0;
    for (; p + 2 <= n_pos; p += 2) {
        const __m512 w0 = _mm512_set1_ps(scratch[p]), w1 = _mm512_set1_ps(scratch[p + 1]);
        const uint16_t *v0 = v + p * kv_stride + d0, *v1 = v0 + kv_stride;
        _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) {
            const __mmask16 m = j == NR - 1 ? ml : (__mmask16)0xffff;
            o[j] = _mm512_fmadd_ps(w0, ld_h16_n(v0 + 16 * j, m), o[j]);
            o2[j] = _mm512_fmadd_ps(w1, ld_h16_n(v1 + 16 * j, m), o2[j]);
        }
    }
    if (p < n_pos) {
        const __m512 w0 = _mm512_set1_ps(scratch[p]);
        _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) {
            const __mmask16 m = j == NR - 1 ? ml : (__mmask16)0xffff;
            o[j] = _mm512_fmadd_ps(w0, ld_h16_n(v + p * kv_stride + d0 + 16 * j, m), o[j]);
        }
    }
    _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) {
        const __mmask16 m = j == NR - 1 ? ml : (__mmask16)0xffff;
        _mm512_mask_storeu_ps(out + d0 + 16 * j, m, _mm512_add_ps(o[j], o2[j]));
    }
}

/* Any head_dim other than 128 (64, 96, 100, 256, ...): QK for 4 positions per step as below
 * with q re-read from L1, the head_dim % 16 tail by masked loads; V in blocks of up to 128
 * dimensions (8 registers per position set), the last register of a block masked. */
static __attribute__((noinline)) void attn_head_any_avx512(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                                 size_t n_pos, size_t kv_stride, int hd, float scale, float *scratch)
{
    const int nfull = hd / 16;
    const __mmask16 mt = (__mmask16)((1u << (hd % 16)) - 1);
    const __m128 vscale = _mm_set1_ps(scale);
    size_t p = 0;
    for (; p + 4 <= n_pos; p += 4) { /* four positions: four independent FMA chains */
        const uint16_t *k0 = k + p * kv_stride, *k1 = k0 + kv_stride, *k2 = k1 + kv_stride, *k3 = k2 + kv_stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int j = 0; j < nfull; j++) {
            const __m512 qj = _mm512_loadu_ps(q + 16 * j);
            a0 = _mm512_fmadd_ps(qj, ld_h16(k0 + 16 * j), a0);
            a1 = _mm512_fmadd_ps(qj, ld_h16(k1 + 16 * j), a1);
            a2 = _mm512_fmadd_ps(qj, ld_h16(k2 + 16 * j), a2);
            a3 = _mm512_fmadd_ps(qj, ld_h16(k3 + 16 * j), a3);
        }
        if (mt) {
            const int j = nfull;
            const __m512 qj = _mm512_maskz_loadu_ps(mt, q + 16 * j);
            a0 = _mm512_fmadd_ps(qj, ld_h16_n(k0 + 16 * j, mt), a0);
            a1 = _mm512_fmadd_ps(qj, ld_h16_n(k1 + 16 * j, mt), a1);
            a2 = _mm512_fmadd_ps(qj, ld_h16_n(k2 + 16 * j, mt), a2);
            a3 = _mm512_fmadd_ps(qj, ld_h16_n(k3 + 16 * j, mt), a3);
        }
        _mm_storeu_ps(scratch + p, _mm_mul_ps(hsum4x512(a0, a1, a2, a3), vscale));
    }
    for (; p < n_pos; p++)
        scratch[p] = _mm512_reduce_add_ps(dot_any_512(q, k + p * kv_stride, nfull, mt)) * scale;
    softmax_avx512(scratch, n_pos);
    for (int d0 = 0; d0 < hd; d0 += 128) {
        const int w = hd - d0 < 128 ? hd - d0 : 128, nr = (w + 15) / 16;
        const __mmask16 ml = w % 16 ? (__mmask16)((1u << (w % 16)) - 1) : (__mmask16)0xffff;
        switch (nr) {
        case 1: attn_v_block_512(out, scratch, v, n_pos, kv_stride, d0, 1, ml); break;
        case 2: attn_v_block_512(out, scratch, v, n_pos, kv_stride, d0, 2, ml); break;
        case 3: attn_v_block_512(out, scratch, v, n_pos, kv_stride, d0, 3, ml); break;
        case 4: attn_v_block_512(out, scratch, v, n_pos, kv_stride, d0, 4, ml); break;
        case 5: attn_v_block_512(out, scratch, v, n_pos, kv_stride, d0, 5, ml); break;
        case 6: attn_v_block_512(out, scratch, v, n_pos, kv_stride, d0, 6, ml); break;
        case 7: attn_v_block_512(out, scratch, v, n_pos, kv_stride, d0, 7, ml); break;
        default: attn_v_block_512(out, scratch, v, n_pos, kv_stride, d0, 8, ml); break;
        }
    }
}

/* head_dim == 128 (2B-4T, Llama3): q and the output accumulators live in 8 zmm each.
 * QK: 4 positions per step, so four independent FMA chains hide the latency. Every other
 * head_dim takes attn_head_any_avx512. */
static void attn_head_avx512(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                             size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch)
{
    if (head_dim != 128) {
        attn_head_any_avx512(out, q, k, v, n_pos, kv_stride, head_dim, scale, scratch);
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

/* Four heads of one GQA group, sharing every K/V conversion. Per head, each float operation
 * is the one attn_head_avx512 performs, in the same order (same FMA chains per position, same
 * reduction trees, same even/odd V accumulators), so the results are bit-identical to four
 * attn_head_avx512 calls. Accumulators are named variables: GCC 12 keeps arrays of zmm
 * accumulators in memory. */
#define H4(X) X(0) X(1) X(2) X(3)
static void attn_group4_avx512(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                               size_t n_pos, size_t kv_stride, float scale, float *scratch)
{
    const __m128 vscale = _mm_set1_ps(scale);
    float *sc0 = scratch, *sc1 = scratch + n_pos, *sc2 = scratch + 2 * n_pos, *sc3 = scratch + 3 * n_pos;
    const float *q0 = q, *q1 = q + 128, *q2 = q + 256, *q3 = q + 384;
    size_t p = 0;
    for (; p + 4 <= n_pos; p += 4) {
        const uint16_t *kp = k + p * kv_stride;
#define ACC_DECL(h) __m512 a##h##0 = _mm512_setzero_ps(), a##h##1 = a##h##0, a##h##2 = a##h##0, a##h##3 = a##h##0;
        H4(ACC_DECL)
#undef ACC_DECL
        for (int j = 0; j < 8; j++) {
            const __m512 k0 = ld_h16(kp + 16 * j), k1 = ld_h16(kp + kv_stride + 16 * j);
            const __m512 k2 = ld_h16(kp + 2 * kv_stride + 16 * j), k3 = ld_h16(kp + 3 * kv_stride + 16 * j);
#define ACC_FMA(h)                                                   \
    {                                                                \
        const __m512 qj = _mm512_loadu_ps(q##h + 16 * j);            \
        a##h##0 = _mm512_fmadd_ps(qj, k0, a##h##0);                  \
        a##h##1 = _mm512_fmadd_ps(qj, k1, a##h##1);                  \
        a##h##2 = _mm512_fmadd_ps(qj, k2, a##h##2);                  \
        a##h##3 = _mm512_fmadd_ps(qj, k3, a##h##3);                  \
    }
            H4(ACC_FMA)
#undef ACC_FMA
        }
#define ACC_OUT(h) _mm_storeu_ps(sc##h + p, _mm_mul_ps(hsum4x512(a##h##0, a##h##1, a##h##2, a##h##3), vscale));
        H4(ACC_OUT)
#undef ACC_OUT
    }
    for (; p < n_pos; p++) {
        const uint16_t *kp = k + p * kv_stride;
#define TAIL(h)                                                                          \
    {                                                                                    \
        __m512 a = _mm512_setzero_ps();                                                  \
        for (int j = 0; j < 8; j++) a = _mm512_fmadd_ps(_mm512_loadu_ps(q##h + 16 * j), ld_h16(kp + 16 * j), a); \
        sc##h[p] = _mm512_reduce_add_ps(a) * scale;                                      \
    }
        H4(TAIL)
#undef TAIL
    }
#define SOFT(h) softmax_avx512(sc##h, n_pos);
    H4(SOFT)
#undef SOFT
    /* V: 32 dimensions (2 zmm) per pass, even/odd positions in separate accumulators */
    for (int d = 0; d < 128; d += 32) {
#define OACC(h) __m512 o##h##a = _mm512_setzero_ps(), o##h##b = o##h##a, e##h##a = o##h##a, e##h##b = o##h##a;
        H4(OACC)
#undef OACC
        for (p = 0; p + 2 <= n_pos; p += 2) {
            const uint16_t *v0 = v + p * kv_stride + d, *v1 = v0 + kv_stride;
            const __m512 x0a = ld_h16(v0), x0b = ld_h16(v0 + 16), x1a = ld_h16(v1), x1b = ld_h16(v1 + 16);
#define OFMA(h)                                                                          \
    {                                                                                    \
        const __m512 w0 = _mm512_set1_ps(sc##h[p]), w1 = _mm512_set1_ps(sc##h[p + 1]);  \
        o##h##a = _mm512_fmadd_ps(w0, x0a, o##h##a);                                     \
        o##h##b = _mm512_fmadd_ps(w0, x0b, o##h##b);                                     \
        e##h##a = _mm512_fmadd_ps(w1, x1a, e##h##a);                                     \
        e##h##b = _mm512_fmadd_ps(w1, x1b, e##h##b);                                     \
    }
            H4(OFMA)
#undef OFMA
        }
        if (p < n_pos) {
            const uint16_t *v0 = v + p * kv_stride + d;
            const __m512 x0a = ld_h16(v0), x0b = ld_h16(v0 + 16);
#define OTAIL(h)                                                                         \
    {                                                                                    \
        const __m512 w0 = _mm512_set1_ps(sc##h[p]);                                      \
        o##h##a = _mm512_fmadd_ps(w0, x0a, o##h##a);                                     \
        o##h##b = _mm512_fmadd_ps(w0, x0b, o##h##b);                                     \
    }
            H4(OTAIL)
#undef OTAIL
        }
#define OSTORE(h)                                                                        \
    _mm512_storeu_ps(out + h * 128 + d, _mm512_add_ps(o##h##a, e##h##a));                \
    _mm512_storeu_ps(out + h * 128 + d + 16, _mm512_add_ps(o##h##b, e##h##b));
        H4(OSTORE)
#undef OSTORE
    }
}
#undef H4

static void attn_group_avx512(float *out, const float *q, int n_q, const uint16_t *k, const uint16_t *v,
                              size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch)
{
    int h = 0;
    if (head_dim == 128)
        for (; h + 4 <= n_q; h += 4)
            attn_group4_avx512(out + (size_t)h * 128, q + (size_t)h * 128, k, v, n_pos, kv_stride,
                               scale, scratch + (size_t)h * n_pos);
    for (; h < n_q; h++)
        attn_head_avx512(out + (size_t)h * head_dim, q + (size_t)h * head_dim, k, v, n_pos,
                         kv_stride, head_dim, scale, scratch + (size_t)h * n_pos);
}

/* vpdpbusd needs an unsigned operand: with u = q + 128 (q ^ 0x80),
 * sum(w*q) = sum(w*u) - 128*sum(w), the second term by another vpdpbusd against 0x80 bytes.
 * Exact for any int8 weights (-128 included). Here four rows share each activation vector. */
/* vpdpbusd through inline asm: this file is built without -mavx512vnni (so nothing else can
 * become VNNI code), and GCC 12 copies the tied accumulator of the builtin on every update
 * (see ternary_avx512_tmpl.h). Only the VNNI table reaches the functions using it. */
static inline __m512i dpbusd(__m512i acc, __m512i u, __m512i s)
{
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
    return acc;
}

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
                    a[j] = dpbusd(a[j], u, wv);
                    s[j] = dpbusd(s[j], x80, wv);
                }
            }
        } else {
            for (size_t c = 0; c < cv; c += 64) {
                const __m512i u = _mm512_xor_si512(_mm512_loadu_si512(qx + c), x80);
                for (size_t j = 0; j < nr; j++) {
                    const __m512i wv = _mm512_loadu_si512(w0 + j * cols_padded + c);
                    a[j] = dpbusd(a[j], u, wv);
                    s[j] = dpbusd(s[j], x80, wv);
                }
            }
        }
        if (tail) {
            /* masked-off bytes are 0 in both w and q^0x80-of-0 = 0x80: 128*0 adds nothing */
            const __m512i u = _mm512_xor_si512(i8row_tail_load(qx + cv, tail), x80);
            for (size_t j = 0; j < nr; j++) {
                const __m512i wv = i8row_tail_load(w0 + j * cols_padded + cv, tail);
                a[j] = dpbusd(a[j], u, wv);
                s[j] = dpbusd(s[j], x80, wv);
            }
        }
        for (size_t j = 0; j < nr; j++) {
            const int32_t acc = _mm512_reduce_add_epi32(_mm512_sub_epi32(a[j], s[j]));
            y[r + j] = bn_tern_out(acc, x_scale, row_scale[r + j]);
        }
    }
}
/* The lm_head kernel: one row at a time, so the weights are a single sequential stream for
 * the hardware prefetcher (measured faster than interleaving 4 row streams), with q^0x80
 * precomputed once per call. Rows longer than the buffer use the 4-row kernel above. */
static void gemv_i8row_vnni1(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                             const int8_t *qx, float x_scale, float *y, size_t r0, size_t r1)
{
    _Alignas(64) uint8_t ubuf[8192];
    const size_t cv = cols_padded / 64 * 64, tail = cols_padded - cv;
    if (cv > sizeof ubuf) {
        gemv_i8row_vnni(w, row_scale, cols, cols_padded, qx, x_scale, y, r0, r1);
        return;
    }
    const __m512i x80 = _mm512_set1_epi8((char)0x80);
    for (size_t c = 0; c < cv; c += 64)
        _mm512_store_si512(ubuf + c, _mm512_xor_si512(_mm512_loadu_si512(qx + c), x80));
    const __m512i ut = tail ? _mm512_xor_si512(i8row_tail_load(qx + cv, tail), x80) : x80;
    for (size_t r = r0; r < r1; r++) {
        const int8_t *wr = w + r * cols_padded;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, s0 = a0, s1 = a0;
        size_t c = 0;
        for (; c + 128 <= cv; c += 128) {
            _mm_prefetch((const char *)(wr + c + BN_PF_DIST), _MM_HINT_T0);
            _mm_prefetch((const char *)(wr + c + BN_PF_DIST + 64), _MM_HINT_T0);
            const __m512i w0 = _mm512_loadu_si512(wr + c), w1 = _mm512_loadu_si512(wr + c + 64);
            a0 = dpbusd(a0, _mm512_load_si512(ubuf + c), w0);
            s0 = dpbusd(s0, x80, w0);
            a1 = dpbusd(a1, _mm512_load_si512(ubuf + c + 64), w1);
            s1 = dpbusd(s1, x80, w1);
        }
        if (c < cv) {
            const __m512i w0 = _mm512_loadu_si512(wr + c);
            a0 = dpbusd(a0, _mm512_load_si512(ubuf + c), w0);
            s0 = dpbusd(s0, x80, w0);
        }
        if (tail) {
            const __m512i w0 = i8row_tail_load(wr + cv, tail);
            a1 = dpbusd(a1, ut, w0);
            s1 = dpbusd(s1, x80, w0);
        }
        const __m512i d = _mm512_sub_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(s0, s1));
        y[r] = bn_tern_out(_mm512_reduce_add_epi32(d), x_scale, row_scale[r]);
    }
}

/* The batched int8 lm_head: blocks of R rows x NT tokens, every accumulator in a register.
 * Here the weights take the unsigned side: w ^ 0x80 = w + 128, flipped once per chunk and
 * shared by all NT tokens, so sum(w*q) = sum((w+128)*q) - 128*sum(q), the last term once per
 * token per call. Exact for any int8 weights; masked-off tail bytes are q = 0. */
static inline __attribute__((always_inline)) void i8mm_vnni(const int8_t *w0, size_t cp, const int8_t *q,
                                                            size_t ldq, int R, int NT, int32_t *out)
{
    const __m512i x80 = _mm512_set1_epi8((char)0x80);
    const size_t cv = cp / 64 * 64, tail = cp - cv;
    __m512i acc[4][4];
    _Pragma("GCC unroll 4") for (int i = 0; i < R; i++)
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) acc[i][t] = _mm512_setzero_si512();
    for (size_t c = 0; c < cv; c += 64) {
        __m512i wv[4];
        _Pragma("GCC unroll 4") for (int i = 0; i < R; i++) {
            _mm_prefetch((const char *)(w0 + i * cp + c + BN_PF_DIST), _MM_HINT_T0);
            wv[i] = _mm512_xor_si512(_mm512_loadu_si512(w0 + i * cp + c), x80);
        }
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {
            const __m512i qv = _mm512_loadu_si512(q + t * ldq + c);
            _Pragma("GCC unroll 4") for (int i = 0; i < R; i++) acc[i][t] = dpbusd(acc[i][t], wv[i], qv);
        }
    }
    if (tail) {
        __m512i wv[4];
        _Pragma("GCC unroll 4") for (int i = 0; i < R; i++) wv[i] = _mm512_xor_si512(i8row_tail_load(w0 + i * cp + cv, tail), x80);
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {
            const __m512i qv = i8row_tail_load(q + t * ldq + cv, tail);
            _Pragma("GCC unroll 4") for (int i = 0; i < R; i++) acc[i][t] = dpbusd(acc[i][t], wv[i], qv);
        }
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < R; i++)
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) out[i * NT + t] = _mm512_reduce_add_epi32(acc[i][t]);
}

typedef void (*i8mm_fn)(const int8_t *w0, size_t cp, const int8_t *q, size_t ldq, int32_t *out);
#define I8MM_VNNI(R, NT)                                                                       \
    static void i8mm_vnni_##R##x##NT(const int8_t *w0, size_t cp, const int8_t *q, size_t ldq,  \
                                     int32_t *out)                                             \
    {                                                                                          \
        i8mm_vnni(w0, cp, q, ldq, R, NT, out);                                                 \
    }
I8MM_VNNI(1, 1) I8MM_VNNI(1, 2) I8MM_VNNI(1, 3) I8MM_VNNI(1, 4)
I8MM_VNNI(4, 1) I8MM_VNNI(4, 2) I8MM_VNNI(4, 3) I8MM_VNNI(4, 4)
static const i8mm_fn i8mm_vnni_tab[2][4] = {
    {i8mm_vnni_1x1, i8mm_vnni_1x2, i8mm_vnni_1x3, i8mm_vnni_1x4},
    {i8mm_vnni_4x1, i8mm_vnni_4x2, i8mm_vnni_4x3, i8mm_vnni_4x4},
};

/* Tokens are taken I8_TOK_CHUNK at a time (their sum(q) on the stack); inside, row quads
 * (single rows at the end) and token blocks of at most 4, as even as possible (8 = 4+4). */
#define I8_TOK_CHUNK 64
static void gemm_i8row_vnni(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                            const int8_t *qx, size_t ldq, const float *x_scale, size_t m,
                            float *y, size_t ldy, size_t r0, size_t r1)
{
    if (m == 1) {   /* the decode kernel, so a batch of one costs what one token costs */
        gemv_i8row_vnni1(w, row_scale, cols, cols_padded, qx, x_scale[0], y, r0, r1);
        return;
    }
    for (size_t tc = 0; tc < m; tc += I8_TOK_CHUNK) {
        const size_t mc = m - tc < I8_TOK_CHUNK ? m - tc : I8_TOK_CHUNK, nb = (mc + 3) / 4;
        const int8_t *qc = qx + tc * ldq;
        uint32_t qsum128[I8_TOK_CHUNK];
        for (size_t t = 0; t < mc; t++) {
            int32_t s = 0;
            for (size_t c = 0; c < cols_padded; c++) s += qc[t * ldq + c];
            qsum128[t] = (uint32_t)s * 128u;
        }
        for (size_t r = r0; r < r1;) {
            const int R = r1 - r >= 4 ? 4 : 1;
            const int8_t *w0 = w + r * cols_padded;
            for (size_t b = 0, t0 = 0; b < nb; b++) {
                const size_t nt = mc / nb + (b < mc % nb);
                int32_t acc[16];
                i8mm_vnni_tab[R == 4][nt - 1](w0, cols_padded, qc + t0 * ldq, ldq, acc);
                for (int i = 0; i < R; i++)
                    for (size_t t = 0; t < nt; t++) {
                        /* the true sum fits in int32; the lanes wrap, so subtract unsigned */
                        const int32_t a = (int32_t)((uint32_t)acc[i * nt + t] - qsum128[t0 + t]);
                        y[(tc + t0 + t) * ldy + r + i] = bn_tern_out(a, x_scale[tc + t0 + t], row_scale[r + i]);
                    }
                t0 += nt;
            }
            r += (size_t)R;
        }
    }
}

const bn_ktab bn_ktab_avx512 = {
    .quant_act = bn_quant_act_avx512,
    .gemv_i2 = bn_tern_gemv_i2_avx512,
    .gemv_t5 = bn_tern_gemv_t5_avx512,
    .gemm_i2 = bn_tern_gemm_i2_avx512,
    .gemm_t5 = bn_tern_gemm_t5_avx512,
    .rmsnorm = bn_rmsnorm_avx2,
    .softmax = softmax_avx512,
    .relu2_mul = bn_relu2_mul_avx2,
    .silu_mul = silu_mul_avx512,
    .attn_head = attn_head_avx512,
    .attn_group = attn_group_avx512,
    .gemv_f16 = gemv_f16_avx512,
    .gemv_i8row = bn_gemv_i8row_avx2,
    .gemm_i8row = bn_gemm_i8row_avx2,
    .f16_to_f32 = f16_to_f32_avx512,
    .f32_to_f16 = f32_to_f16_avx512,
    .u2_gemv = bn_u2_gemv_avx512,
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
    .silu_mul = silu_mul_avx512,
    .attn_head = attn_head_avx512,
    .attn_group = attn_group_avx512,
    .gemv_f16 = gemv_f16_avx512,
    .gemv_i8row = gemv_i8row_vnni1,
    .gemm_i8row = gemm_i8row_vnni,
    .f16_to_f32 = f16_to_f32_avx512,
    .f32_to_f16 = f32_to_f16_avx512,
    .u2_gemv = bn_u2_gemv_avx512vnni,
};
