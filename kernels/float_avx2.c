/* AVX2 + FMA + F16C float kernels, the int8/f16 lm_head GEMVs, and the AVX2 dispatch table.
 * Reductions (sums of squares, dot products, softmax sums) run in 8 lanes and then a tree, so
 * they differ from the sequential scalar sums in the last bits; elementwise steps use the same
 * operations in the same order as the scalar code (silu's vector exp aside: a few ulp from
 * expf, bounded by the tests). The int8 lm_head is exact. */
#include "simd_x86.h"
#include "float_x86.h"
#include "half.h"

#include <immintrin.h>
#include <float.h>
#include <math.h>
#include <string.h>

static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax256(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int32_t hsum256_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* The shared part of the exp kernels below: n = round(x / ln 2), r = x - n ln 2 (in two
 * steps, Cephes), and the degree-5 polynomial P(r) with e^r ~ 1 + r + r^2 P(r). */
static inline __m256 exp256_poly(__m256 x, __m256 *n_out, __m256 *r_out)
{
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    *n_out = n;
    *r_out = r;
    return p;
}

/* exp(x) for x <= 0 (softmax arguments), within ~2 ulp of expf: x = n*ln2 + r, |r| <= ln2/2,
 * degree-6 polynomial for e^r (Cephes coefficients), scaled by 2^n through the exponent bits.
 * Below -87.3 the result flushes to 0, like expf underflowing. */
static inline __m256 exp256(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-87.33654f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 n, r;
    __m256 p = exp256_poly(x, &n, &r);
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* n >= -126 here, so 2^n is a normal float */
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* exp(x) over the whole float range, for silu: the reduction and polynomial of exp256, with x
 * clamped to [-80, 89] and 2^n applied as 2^(n-1) * 2 so that n = 128 (x up to ln(FLT_MAX))
 * stays finite and larger x overflow to inf as expf does. Below -80 the result (< 2^-115) is
 * too small to change 1 + exp(x), which is all silu uses it for. NaN stays NaN. */
static inline __m256 exp256_wide(__m256 x)
{
    x = _mm256_min_ps(_mm256_set1_ps(89.0f), _mm256_max_ps(_mm256_set1_ps(-80.0f), x));
    __m256 n, r;
    __m256 p = exp256_poly(x, &n, &r);
    /* (r + r^2 P(r)) + 1, as Cephes: adding 1 last rounds once, near the result */
    p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    /* n in [-115, 128]: the biased exponent of 2^(n-1) is in [11, 254] */
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126)), 23);
    return _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), _mm256_set1_ps(2.0f));
}

/* silu(g) = x / (1 + exp(-x)), x = max(g, -FLT_MAX), as bn_silu_one (max_ps returns its second
 * operand when either is NaN, so NaN passes through). */
static inline __m256 silu256(__m256 g)
{
    const __m256 x = _mm256_max_ps(_mm256_set1_ps(-FLT_MAX), g);
    const __m256 e = exp256_wide(_mm256_xor_ps(x, _mm256_set1_ps(-0.0f)));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

void bn_rmsnorm_avx2(float *out, const float *x, const float *w, size_t n, float eps)
{
    __m256d a0 = _mm256_setzero_pd(), a1 = a0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256d l = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), h = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        a0 = _mm256_fmadd_pd(l, l, a0);
        a1 = _mm256_fmadd_pd(h, h, a1);
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(a0, a1));
    double ss = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (; i < n; i++) ss += (double)x[i] * (double)x[i];
    const float mean = (float)(ss / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    const __m256 vs = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), _mm256_loadu_ps(w + i)));
    for (; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

void bn_relu2_mul_avx2(float *out, const float *g, const float *u, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 r = _mm256_max_ps(_mm256_loadu_ps(g + i), _mm256_setzero_ps());
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(r, r), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) {
        const float r = g[i] > 0.0f ? g[i] : 0.0f;
        out[i] = (r * r) * u[i];
    }
}

void bn_silu_mul_avx2(float *out, const float *g, const float *u, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(silu256(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
    for (; i < n; i++) out[i] = bn_silu_one(g[i]) * u[i];
}

void bn_softmax_avx2(float *x, size_t n)
{
    if (n == 0) return;
    __m256 vm = _mm256_set1_ps(x[0]);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
    float mx = hmax256(vm);
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    vm = _mm256_set1_ps(mx);
    __m256 vsum = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    double sum = hsum256(vsum);
    for (; i < n; i++) sum += (x[i] = expf(x[i] - mx));
    const float inv = (float)(1.0 / sum);
    const __m256 vi = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vi));
    for (; i < n; i++) x[i] *= inv;
}

static inline __m256 ld_h8(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* q . k_p for one position, any head_dim: 16 dimensions per step in two FMA chains, then one
 * step of 8, then the last head_dim % 8 in scalar. */
static inline float dot_f16_256(const float *q, const uint16_t *k, int hd)
{
    __m256 a = _mm256_setzero_ps(), b = a;
    int d = 0;
    for (; d + 16 <= hd; d += 16) {
        a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), ld_h8(k + d), a);
        b = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), ld_h8(k + d + 8), b);
    }
    if (d + 8 <= hd) {
        a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), ld_h8(k + d), a);
        d += 8;
    }
    float s = hsum256(_mm256_add_ps(a, b));
    for (; d < hd; d++) s += q[d] * bn_f16_to_f32(k[d]);
    return s;
}

/* out[d0 .. d0 + 8*NR) = sum_p scratch[p] * v_p over all positions, NR registers (a constant
 * at every call, so the accumulators stay in registers). */
static inline __attribute__((always_inline)) void attn_v_block_256(float *out, const float *scratch,
                                                                   const uint16_t *v, size_t n_pos,
                                                                   size_t kv_stride, int d0, int NR)
{
    __m256 acc[8];
    _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) acc[j] = _mm256_setzero_ps();
    for (size_t p = 0; p < n_pos; p++) {
        const __m256 a = _mm256_broadcast_ss(scratch + p);
        const uint16_t *vp = v + p * kv_stride + d0;
        _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) acc[j] = _mm256_fmadd_ps(a, ld_h8(vp + 8 * j), acc[j]);
    }
    _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) _mm256_storeu_ps(out + d0 + 8 * j, acc[j]);
}

/* Any head_dim: V in blocks of 64 dimensions (8 registers), then 32, then 8, then the last
 * head_dim % 8 dimensions in scalar (1bitLLM-3B's 100 = 64 + 32 + 4). */
void bn_attn_head_avx2(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                       size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch)
{
    for (size_t p = 0; p < n_pos; p++) scratch[p] = dot_f16_256(q, k + p * kv_stride, head_dim) * scale;
    bn_softmax_avx2(scratch, n_pos);
    int d0 = 0;
    for (; d0 + 64 <= head_dim; d0 += 64) attn_v_block_256(out, scratch, v, n_pos, kv_stride, d0, 8);
    if (d0 + 32 <= head_dim) attn_v_block_256(out, scratch, v, n_pos, kv_stride, d0, 4), d0 += 32;
    for (; d0 + 8 <= head_dim; d0 += 8) attn_v_block_256(out, scratch, v, n_pos, kv_stride, d0, 1);
    if (d0 < head_dim) {
        for (int d = d0; d < head_dim; d++) out[d] = 0.0f;
        for (size_t p = 0; p < n_pos; p++) {
            const uint16_t *vp = v + p * kv_stride;
            for (int d = d0; d < head_dim; d++) out[d] += scratch[p] * bn_f16_to_f32(vp[d]);
        }
    }
}

/* 256-bit code is not the target; the group is simply n_q heads, which is exact by design. */
void bn_attn_group_avx2(float *out, const float *q, int n_q, const uint16_t *k, const uint16_t *v,
                        size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch)
{
    for (int h = 0; h < n_q; h++)
        bn_attn_head_avx2(out + (size_t)h * head_dim, q + (size_t)h * head_dim, k, v, n_pos,
                          kv_stride, head_dim, scale, scratch + (size_t)h * n_pos);
}

void bn_gemv_f16_avx2(const uint16_t *w, size_t cols, const float *x, float *y, size_t r0, size_t r1)
{
    for (size_t r = r0; r < r1; r++) {
        const uint16_t *wr = w + r * cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        size_t c = 0;
        for (; c + 32 <= cols; c += 32) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c), ld_h8(wr + c), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c + 8), ld_h8(wr + c + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c + 16), ld_h8(wr + c + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c + 24), ld_h8(wr + c + 24), a3);
        }
        for (; c + 8 <= cols; c += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c), ld_h8(wr + c), a0);
        float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for (; c < cols; c++) s += x[c] * bn_f16_to_f32(wr[c]);
        y[r] = s;
    }
}

/* maddubs(|q|, sign(w, q)) == q*w pairwise, exact while w != -128 (bn_quant_rows_i8 emits
 * [-127, 127]); pair sums are <= 2*128*127 < 32767. Four rows share each activation load. */
static inline __m256i i8dot32(__m256i acc, __m256i aq, __m256i q, const int8_t *w)
{
    const __m256i p = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)w), q));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

void bn_gemv_i8row_avx2(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                        const int8_t *qx, float x_scale, float *y, size_t r0, size_t r1)
{
    const size_t cv = cols_padded / 32 * 32;
    size_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const int8_t *w0 = w + r * cols_padded;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t c = 0; c < cv; c += 32) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qx + c)), aq = _mm256_abs_epi8(q);
            a0 = i8dot32(a0, aq, q, w0 + c);
            a1 = i8dot32(a1, aq, q, w0 + cols_padded + c);
            a2 = i8dot32(a2, aq, q, w0 + 2 * cols_padded + c);
            a3 = i8dot32(a3, aq, q, w0 + 3 * cols_padded + c);
        }
        int32_t s[4] = {hsum256_epi32(a0), hsum256_epi32(a1), hsum256_epi32(a2), hsum256_epi32(a3)};
        for (int j = 0; j < 4; j++) {
            for (size_t c = cv; c < cols_padded; c++) s[j] += w0[j * cols_padded + c] * qx[c];
            y[r + j] = bn_tern_out(s[j], x_scale, row_scale[r + j]);
        }
    }
    if (r < r1) bn_gemv_i8row_scalar(w, row_scale, cols, cols_padded, qx, x_scale, y, r, r1);
}

/* The batched int8 lm_head: blocks of R rows x NT tokens with every accumulator in a register
 * (R, NT are constants in each instance below). |q| is per token and sign(w, q) per (row,
 * token), so this kernel stays ALU-bound; what it saves is the weight traffic (each 32-byte
 * chunk is loaded once for NT tokens). Columns past the last 32 are summed in scalar. */
static inline __attribute__((always_inline)) void i8mm_avx2(const int8_t *w0, size_t cp, const int8_t *q,
                                                            size_t ldq, int R, int NT, int32_t *out)
{
    const size_t cv = cp / 32 * 32;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[2][4];
    _Pragma("GCC unroll 4") for (int i = 0; i < R; i++)
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) acc[i][t] = _mm256_setzero_si256();
    for (size_t c = 0; c < cv; c += 32) {
        __m256i wv[2];
        _Pragma("GCC unroll 4") for (int i = 0; i < R; i++) wv[i] = _mm256_loadu_si256((const __m256i *)(w0 + i * cp + c));
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(q + t * ldq + c)), aq = _mm256_abs_epi8(qv);
            _Pragma("GCC unroll 4") for (int i = 0; i < R; i++) {
                const __m256i p = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(wv[i], qv));
                acc[i][t] = _mm256_add_epi32(acc[i][t], _mm256_madd_epi16(p, ones));
            }
        }
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < R; i++)
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {
            int32_t s = hsum256_epi32(acc[i][t]);
            for (size_t c = cv; c < cp; c++) s += w0[i * cp + c] * q[t * ldq + c];
            out[i * NT + t] = s;
        }
}

typedef void (*i8mm_fn)(const int8_t *w0, size_t cp, const int8_t *q, size_t ldq, int32_t *out);
#define I8MM_AVX2(R, NT)                                                                       \
    static void i8mm_avx2_##R##x##NT(const int8_t *w0, size_t cp, const int8_t *q, size_t ldq,  \
                                     int32_t *out)                                             \
    {                                                                                          \
        i8mm_avx2(w0, cp, q, ldq, R, NT, out);                                                 \
    }
I8MM_AVX2(1, 1) I8MM_AVX2(1, 2) I8MM_AVX2(1, 3) I8MM_AVX2(1, 4)
I8MM_AVX2(2, 1) I8MM_AVX2(2, 2) I8MM_AVX2(2, 3) I8MM_AVX2(2, 4)
static const i8mm_fn i8mm_avx2_tab[2][4] = {
    {i8mm_avx2_1x1, i8mm_avx2_1x2, i8mm_avx2_1x3, i8mm_avx2_1x4},
    {i8mm_avx2_2x1, i8mm_avx2_2x2, i8mm_avx2_2x3, i8mm_avx2_2x4},
};

void bn_gemm_i8row_avx2(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                        const int8_t *qx, size_t ldq, const float *x_scale, size_t m,
                        float *y, size_t ldy, size_t r0, size_t r1)
{
    if (m == 1) {
        bn_gemv_i8row_avx2(w, row_scale, cols, cols_padded, qx, x_scale[0], y, r0, r1);
        return;
    }
    /* Token blocks of at most 4, as even as possible (5 = 3+2, 8 = 4+4), inside row pairs. */
    const size_t nb = (m + 3) / 4;
    for (size_t r = r0; r < r1;) {
        const int R = r1 - r >= 2 ? 2 : 1;
        const int8_t *w0 = w + r * cols_padded;
        for (size_t b = 0, t0 = 0; b < nb; b++) {
            const size_t nt = m / nb + (b < m % nb);
            int32_t acc[8];
            i8mm_avx2_tab[R - 1][nt - 1](w0, cols_padded, qx + t0 * ldq, ldq, acc);
            for (int i = 0; i < R; i++)
                for (size_t t = 0; t < nt; t++)
                    y[(t0 + t) * ldy + r + i] = bn_tern_out(acc[i * nt + t], x_scale[t0 + t], row_scale[r + i]);
            t0 += nt;
        }
        r += (size_t)R;
    }
}

void bn_f16_to_f32_avx2(const uint16_t *in, float *out, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, ld_h8(in + i));
    for (; i < n; i++) out[i] = bn_f16_to_f32(in[i]);
}

void bn_f32_to_f16_avx2(const float *in, uint16_t *out, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) out[i] = bn_f32_to_f16(in[i]);
}

const bn_ktab bn_ktab_avx2 = {
    .quant_act = bn_quant_act_avx2,
    .gemv_i2 = bn_tern_gemv_i2_avx2,
    .gemv_t5 = bn_tern_gemv_t5_avx2,
    .gemm_i2 = bn_tern_gemm_i2_avx2,
    .gemm_t5 = bn_tern_gemm_t5_avx2,
    .rmsnorm = bn_rmsnorm_avx2,
    .softmax = bn_softmax_avx2,
    .relu2_mul = bn_relu2_mul_avx2,
    .silu_mul = bn_silu_mul_avx2,
    .attn_head = bn_attn_head_avx2,
    .attn_group = bn_attn_group_avx2,
    .gemv_f16 = bn_gemv_f16_avx2,
    .gemv_i8row = bn_gemv_i8row_avx2,
    .gemm_i8row = bn_gemm_i8row_avx2,
    .f16_to_f32 = bn_f16_to_f32_avx2,
    .f32_to_f16 = bn_f32_to_f16_avx2,
    .u2_gemv = bn_u2_gemv_avx2,
};
