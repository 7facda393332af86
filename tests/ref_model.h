/* A naive reference forward pass for the tests: plain loops in float and double, written from
 * the model facts (docs/bitnet-model.md s.2-3; the families' switches in docs/models.md), not
 * from the engine. It reads a packed model's own tensors: the ternary codes through
 * bn_tern_unpack_row and the tensor's scale, the f32 norms and f16 rows as stored, so it runs
 * any packed file (synthetic or converted); test_forward separately checks a synthetic file's
 * codes against their definition (bn_synth_*).
 *
 * What it computes, per token and layer, as the official implementations do:
 *   every BitLinear input quantized per token to int8 (absmax, round half even, clamp), the
 *   integer sum exact, y = (float)sum / s * scale; RMSNorm with the sum of squares in double;
 *   RoPE angles in double; attention in double over K and V rounded to f16 (the cache's type);
 *   ReLU^2 or SiLU gating; the sub-norms when the model has them; the f16 head (tied embedding
 *   or the untied "output" tensor) as a double dot product, or the file's int8 copy. */
#ifndef BN_TEST_REF_MODEL_H
#define BN_TEST_REF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

typedef struct ref_opts {
    int lm_i8;       /* 1: the file's int8 head copy (output_q8) against the final hidden state
                      * quantized per token; 0: the f16 head rows */
    int rope_norm;   /* 1: adjacent-pair ("NORM", llama.cpp) RoPE; 0: NeoX (rotate_half) */
    int qk_permuted; /* 1: q/k weight rows moved as bn_qk_permuted_row moves them, as a llama-arch
                      * GGUF stores them. NORM on permuted rows must equal NeoX on the stored
                      * (HF-order) rows; NORM on unpermuted rows is the wrong pairing. */
} ref_opts;

/* Per layer, per token: RMS and max|h| of the residual stream after the layer. */
typedef struct ref_stats {
    double *rms, *maxabs;   /* [n_layer][T] */
} ref_stats;

/* Forward of ids[0..T) from position 0 (o NULL: f16 head, NeoX): logits [T][n_vocab] if
 * non-NULL, stats if non-NULL. Aborts on out-of-memory (tests only). */
void ref_forward(const bn_model *m, const ref_opts *o, const int32_t *ids, int T, float *logits,
                 ref_stats *st);

/* llama.cpp's perplexity spelled out: windows of ctx tokens, each from an empty context with
 * bos first (when bos >= 0), scoring the predictions at positions [ctx/2, ctx-1). */
double ref_perplexity(const bn_model *m, const ref_opts *o, const int32_t *ids, size_t n, int ctx,
                      int32_t bos);

/* The index of the largest value, the lowest index on ties (the engine's greedy rule). */
int32_t ref_argmax(const float *l, size_t n);

#endif
