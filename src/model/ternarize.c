#include "model/ternarize.h"

#include <math.h>
#include <stdlib.h>

/* Partial sums over fixed blocks, combined in block order: the mean (and so every code) is
 * the same whatever the number of threads. */
#define SUM_BLOCK 65536

static double sum_abs(const float *w, size_t n)
{
    size_t nb = (n + SUM_BLOCK - 1) / SUM_BLOCK;
    double stack[64], *part = nb <= 64 ? stack : malloc(nb * sizeof *part);
    if (!part) { /* out of memory: the sequential sum is the same value */
        double total = 0;
        for (size_t i = 0; i < n; i++) total += fabs((double)w[i]);
        return total;
    }
#pragma omp parallel for schedule(static) if (nb > 4)
    for (size_t b = 0; b < nb; b++) {
        size_t end = (b + 1) * SUM_BLOCK < n ? (b + 1) * SUM_BLOCK : n;
        double p = 0;
        for (size_t i = b * SUM_BLOCK; i < end; i++) p += fabs((double)w[i]);
        part[b] = p;
    }
    double total = 0;
    for (size_t b = 0; b < nb; b++) total += part[b];
    if (part != stack) free(part);
    return total;
}

/* Round half to even for |x| <= 2, without a libm call: adding and subtracting 1.5 * 2^23
 * leaves the nearest integer under the default rounding mode (ties to even, as torch.round). */
static inline float round_even_small(float x)
{
    /* Not folded away: without -ffast-math the compiler must honour IEEE rounding here. */
    const float magic = 12582912.0f;
    return (x + magic) - magic;
}

void bn_ternarize_absmean(const float *w, size_t n, int8_t *t, float *scale)
{
    float mean = n ? (float)(sum_abs(w, n) / (double)n) : 0.0f;
    if (!(mean >= 1e-5f)) mean = 1e-5f; /* also catches NaN */
    float s = 1.0f / mean;
#pragma omp parallel for schedule(static) if (n > 4 * SUM_BLOCK)
    for (size_t i = 0; i < n; i++) {
        float x = w[i] * s;
        x = x > 2.0f ? 2.0f : x < -2.0f ? -2.0f : x; /* NaN stays NaN and becomes 0 below */
        float r = round_even_small(x);
        t[i] = (int8_t)(r >= 1.0f ? 1 : r <= -1.0f ? -1 : 0);
    }
    *scale = mean;
}

int bn_ternarize_if_ternary(const float *w, size_t n, int8_t *t, float *scale)
{
    float a = 0;
    for (size_t i = 0; i < n; i++) {
        float m = fabsf(w[i]);
        if (m < 1e-6f) continue;
        if (a == 0) a = m;
        else if (m != a) return 0;
    }
    if (a == 0) return 0; /* all zero: let the absmean rule pick its floor scale */
    for (size_t i = 0; i < n; i++)
        t[i] = (int8_t)(fabsf(w[i]) < 1e-6f ? 0 : w[i] > 0 ? 1 : -1);
    *scale = a;
    return 1;
}

int bn_ternarize_auto(const float *w, size_t n, int8_t *t, float *scale)
{
    if (bn_ternarize_if_ternary(w, n, t, scale)) return 1;
    bn_ternarize_absmean(w, n, t, scale);
    return 0;
}

int bn_check_scale(float scale, const char *file, const char *what, bn_error *err)
{
    if (!isfinite(scale) || !(scale > 0))
        return bn_err(err, "%s: tensor %s: weight scale %g is not a positive finite number", file, what, scale);
    return 0;
}
