/* Synthetic models: deterministic (seeded) weights of any shape, so that tests and benchmarks
 * never download anything. Every value is a pure function of (seed, tensor name, index), so a
 * test can regenerate any tensor independently of how a file packed it.
 *
 * Statistics follow a trained BitNet b1.58 where it matters: ternary weights with 37.5% zeros,
 * per-tensor scales around 1/sqrt(fan_in)-ish, norm weights near 1, embeddings of small
 * magnitude, so activations stay finite and in range through every layer.
 *
 * Exactness across input formats: nonzero latent magnitudes are c/2 and 3c/2 in equal numbers
 * and zeros are +-c/16, exactly 10 nonzeros in every 16 weights, so the absmean scale is
 * exactly 83c/128 in any precision and bf16/f16 represent every value: each route (HF packed,
 * HF bf16 latent, GGUF I2_S/TQ2_0/F16) therefore yields the same ternary codes and scale. */
#ifndef BN_MODEL_SYNTH_H
#define BN_MODEL_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

typedef struct bn_synth {
    bn_config cfg;
    uint64_t seed;
    uint32_t family;     /* enum bn_family (model/family.h); 0 reads as BN_FAM_BITNET */
} bn_synth;

/* Shapes: "tiny" (unit tests), "small" (benchmarks on a laptop), "2b4t" (BitNet-b1.58-2B-4T),
 * optionally followed by ",key=value" overrides (n_embd, n_layer, n_head, n_head_kv, n_ff,
 * n_vocab, n_ctx_max, rope_theta), e.g. "2b4t,n_layer=2". A wrapper of bn_synth_parse: it takes
 * every spec that does, and drops the family. */
int bn_synth_shape(const char *spec, bn_config *cfg, bn_error *err);
/* The same, also giving the shape's family: family presets ("1bitllm-large", "1bitllm-3b",
 * "llama3-8b-1.58", "falcon3-1b-1.58", "falcon3-3b-1.58", ... and "tiny-<family>" for tests)
 * and the overrides family=NAME, head_dim, norm_eps, act=relu2|silu, tied=0|1, sub_norms=0|1.
 * Sets out->cfg and out->family; leaves out->seed alone. */
int bn_synth_parse(const char *spec, bn_synth *out, bn_error *err);

/* Ternary codes t[rows*cols] in {-1,0,1} (row-major, out x in) and the per-tensor scale of
 * the linear tensor `name` (GGUF-style: "blk.3.attn_q"). cols must be a multiple of 16.
 * For families whose HF form divides by weight_scale (BN_HFW_PACKED_DIV) the scale is of the
 * form 1.0f / b with b a bf16 value, so that a bf16 weight_scale = b written by the HF writer
 * reads back (1.0f / b) bit-exactly on every route. */
void bn_synth_ternary(const bn_synth *s, const char *name, size_t rows, size_t cols,
                      int8_t *t, float *scale);
/* The latent ("master", bf16-exact) weights whose absmean ternarization gives exactly the
 * codes of bn_synth_ternary, and its scale too except for divide-rule families (whose scale is
 * 1/b, not the absmean 83c/128: their latent HF forms pack to the same codes, other scales). */
void bn_synth_latent(const bn_synth *s, const char *name, size_t rows, size_t cols, float *w);
/* RMSNorm weight vector of n floats. */
void bn_synth_norm(const bn_synth *s, const char *name, size_t n, float *w);
/* Token embedding row `tok` (n_embd values, each exactly representable in f16 and bf16). */
void bn_synth_embedding_row(const bn_synth *s, uint32_t tok, float *row);
/* Row `tok` of the untied lm_head "output" (cfg.tied == 0): the same statistics as the
 * embedding from its own stream, so a head that wrongly reads token_embd is caught. */
void bn_synth_output_row(const bn_synth *s, uint32_t tok, float *row);

#endif
