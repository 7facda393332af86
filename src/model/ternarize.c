#include "model/ternarize.h"

#include <math.h>

void bn_ternarize_absmean(const float *w, size_t n, int8_t *t, float *scale)
{
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += fabs((double)w[i]);
    float mean = n ? (float)(sum / (double)n) : 0.0f;
    if (!(mean >= 1e-5f)) mean = 1e-5f; /* also catches NaN */
    float s = 1.0f / mean;
    for (size_t i = 0; i < n; i++) {
        float r = nearbyintf(w[i] * s); /* default rounding mode: ties to even, as torch.round */
        t[i] = (int8_t)(r > 1.0f ? 1 : r < -1.0f ? -1 : r);
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
