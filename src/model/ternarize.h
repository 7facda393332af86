/* Turning float weights into ternary codes + one per-tensor scale, exactly as the references do. */
#ifndef BN_MODEL_TERNARIZE_H
#define BN_MODEL_TERNARIZE_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

/* The BitNet b1.58 absmean rule (HF WeightQuant, model facts 3.1), for latent weights:
 *   s = 1 / max(mean|W|, 1e-5) in fp32;  t = clamp(round_half_even(W * s), -1, 1);
 *   scale = 1 / s = mean|W| (clamped).  The mean is accumulated in double. */
void bn_ternarize_absmean(const float *w, size_t n, int8_t *t, float *scale);

/* Weights that are already ternary-valued (bitnet.cpp's f32/f16 GGUFs store t * mean|W|):
 * every nonzero has the same magnitude a. Returns 1 and sets t = sign(W), scale = a if so
 * (bitnet.cpp's quantize_i2_s: scale = max|W|; |W| < 1e-6 is zero); 0 if not ternary-valued. */
int bn_ternarize_if_ternary(const float *w, size_t n, int8_t *t, float *scale);

/* Float weights of unknown kind: already-ternary values keep their exact scale, anything else
 * goes through the absmean rule. Returns 1 if the weights were already ternary, 0 otherwise. */
int bn_ternarize_auto(const float *w, size_t n, int8_t *t, float *scale);

/* Rejects NaN/Inf and non-positive scales. `what` names the tensor in the message. */
int bn_check_scale(float scale, const char *file, const char *what, bn_error *err);

#endif
