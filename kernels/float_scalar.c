/* Scalar reference for the float kernels, the lm_head GEMVs and the f16 conversions.
 * SIMD variants of the float kernels sum in a different order (lanes, then a tree), so they
 * agree with these to a few ulp rather than bit for bit; the int8 lm_head is exact. */
#include "kimpl.h"
#include "half.h"

#include <math.h>

void bn_rmsnorm_scalar(float *out, const float *x, const float *w, size_t n, float eps)
{
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    /* as ggml: mean in float, scale = 1/sqrtf(mean + eps), then (x*scale)*w */
    float mean = (float)(ss / (double)n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (size_t i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

void bn_rope_inv_freq(float *inv_freq, int head_dim, float theta)
{
    /* HF: 1 / theta^(arange(0, d, 2)/d); computed in double and rounded once. */
    for (int i = 0; i < head_dim / 2; i++)
        inv_freq[i] = (float)(1.0 / pow((double)theta, (double)(2 * i) / (double)head_dim));
}

/* RoPE is O(n_heads*head_dim) per token and dominated by cos/sin, so one scalar version
 * serves every ISA (identical results everywhere). */
void bn_rope_neox(float *x, int n_heads, int head_dim, int pos, const float *inv_freq)
{
    int half = head_dim / 2;
    enum { MAXH = 256 };
    float cs[MAXH], sn[MAXH];
    for (int base = 0; base < half; base += MAXH) {
        int m = half - base < MAXH ? half - base : MAXH;
        for (int i = 0; i < m; i++) {
            float a = (float)pos * inv_freq[base + i]; /* f32 angle, as HF */
            cs[i] = cosf(a);
            sn[i] = sinf(a);
        }
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + (size_t)h * head_dim + base;
            for (int i = 0; i < m; i++) {
                float x0 = xh[i], x1 = xh[i + half];
                xh[i] = x0 * cs[i] - x1 * sn[i];
                xh[i + half] = x0 * sn[i] + x1 * cs[i];
            }
        }
    }
}

void bn_softmax_scalar(float *x, size_t n)
{
    if (n == 0) return;
    float mx = x[0];
    for (size_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (size_t i = 0; i < n; i++) x[i] *= inv;
}

void bn_relu2_mul_scalar(float *out, const float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float r = g[i] > 0.0f ? g[i] : 0.0f;
        out[i] = r * r * u[i];
    }
}

void bn_silu_mul_scalar(float *out, const float *g, const float *u, size_t n)
{
    /* g[i] is read before out[i] is written, so out may alias g or u (the engine passes out == g) */
    for (size_t i = 0; i < n; i++) out[i] = bn_silu_one(g[i]) * u[i];
}

void bn_attn_head_scalar(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                         size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch)
{
    for (size_t p = 0; p < n_pos; p++) {
        const uint16_t *kp = k + p * kv_stride;
        float s = 0.0f;
        for (int d = 0; d < head_dim; d++) s += q[d] * bn_f16_to_f32(kp[d]);
        scratch[p] = s * scale;
    }
    bn_softmax_scalar(scratch, n_pos);
    for (int d = 0; d < head_dim; d++) out[d] = 0.0f;
    for (size_t p = 0; p < n_pos; p++) {
        const uint16_t *vp = v + p * kv_stride;
        float a = scratch[p];
        for (int d = 0; d < head_dim; d++) out[d] += a * bn_f16_to_f32(vp[d]);
    }
}

void bn_attn_group_scalar(float *out, const float *q, int n_q, const uint16_t *k, const uint16_t *v,
                          size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch)
{
    for (int h = 0; h < n_q; h++)
        bn_attn_head_scalar(out + (size_t)h * head_dim, q + (size_t)h * head_dim, k, v, n_pos,
                            kv_stride, head_dim, scale, scratch + (size_t)h * n_pos);
}

void bn_gemv_f16_scalar(const uint16_t *w, size_t cols, const float *x, float *y, size_t r0, size_t r1)
{
    for (size_t r = r0; r < r1; r++) {
        const uint16_t *wr = w + r * cols;
        float s = 0.0f;
        for (size_t c = 0; c < cols; c++) s += x[c] * bn_f16_to_f32(wr[c]);
        y[r] = s;
    }
}

void bn_gemv_i8row_scalar(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                          const int8_t *qx, float x_scale, float *y, size_t r0, size_t r1)
{
    (void)cols;
    for (size_t r = r0; r < r1; r++) {
        const int8_t *wr = w + r * cols_padded;
        int32_t acc = 0;
        for (size_t c = 0; c < cols_padded; c++) acc += wr[c] * qx[c];
        y[r] = bn_tern_out(acc, x_scale, row_scale[r]);
    }
}

/* Row-major over tokens: each weight row is read once (from cache) for all m tokens. */
void bn_gemm_i8row_scalar(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                          const int8_t *qx, size_t ldq, const float *x_scale, size_t m,
                          float *y, size_t ldy, size_t r0, size_t r1)
{
    (void)cols;
    for (size_t r = r0; r < r1; r++) {
        const int8_t *wr = w + r * cols_padded;
        for (size_t t = 0; t < m; t++) {
            const int8_t *q = qx + t * ldq;
            int32_t acc = 0;
            for (size_t c = 0; c < cols_padded; c++) acc += wr[c] * q[c];
            y[t * ldy + r] = bn_tern_out(acc, x_scale[t], row_scale[r]);
        }
    }
}

void bn_quant_rows_i8(const float *row, size_t cols, size_t cols_padded, int8_t *out, float *scale)
{
    float amax = 0.0f;
    for (size_t c = 0; c < cols; c++) amax = fabsf(row[c]) > amax ? fabsf(row[c]) : amax;
    /* Symmetric [-127, 127] (never -128), so the SIMD kernels may negate weights freely. */
    float is = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (size_t c = 0; c < cols; c++) {
        float v = row[c] * is;
        v = v > 127.0f ? 127.0f : v;
        v = v >= -127.0f ? v : -127.0f;
        out[c] = (int8_t)bn_round_even(v);
    }
    for (size_t c = cols; c < cols_padded; c++) out[c] = 0;
    *scale = amax / 127.0f;
}

void bn_f16_to_f32_scalar(const uint16_t *in, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = bn_f16_to_f32(in[i]);
}

void bn_f32_to_f16_scalar(const float *in, uint16_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = bn_f32_to_f16(in[i]);
}
