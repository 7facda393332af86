/* Writing checkpoints in Hugging Face's exact form (config.json, tokenizer.json,
 * tokenizer_config.json, model.safetensors or shards + index), so that `bitnet mkmodel` can
 * produce test inputs for the HF converter path without downloading anything. Also the HF
 * packed-ternary row-block layout (model facts 3.3), used by both the writer and the reader. */
#ifndef BN_MODEL_HF_WRITE_H
#define BN_MODEL_HF_WRITE_H

#include <stdint.h>

#include "base/error.h"
#include "model/synth.h"
#include "text/vocab.h"

/* The HF forms the writer produces (bitnet mkmodel -f hf, hf-bf16, hf-f16, hf-f32). */
enum bn_hf_form {
    BN_HF_NATIVE = 0,   /* the family's own form (family.h hf_weights): packed uint8 + bf16
                         * weight_scale (2B-4T: W = t * ws, autobitlinear; Llama3/Falcon:
                         * ws = 1/scale, bitlinear divides), or f32 latent weights (1bitLLM) */
    BN_HF_BF16 = 1,     /* latent weights (absmean at convert), bf16 */
    BN_HF_F16 = 2,      /* the same in f16 */
    BN_HF_F32 = 3,      /* the same in f32 */
};
/* "hf" (NATIVE), "hf-bf16", "hf-f16", "hf-f32" -> form; -1 for anything else. */
int bn_hf_form_parse(const char *name);

/* Writes synthetic model s (its family, s->family, picks config.json's keys, the tensor names
 * and the weight rule) with vocabulary v into directory dir (created if needed; files in it are
 * replaced atomically, one by one). Float tensors (embedding, norms) are bf16, f16/f32 in those
 * latent forms, f32 in 1bitLLM's native form; an untied lm_head.weight is bf16 in native forms.
 * The latent forms' config says how HF reads them: 2B-4T and Llama/Falcon quantization_mode
 * online (Llama/Falcon with linear_class autobitlinear, the only class transformers runs
 * online), 1bitLLM no quantization_config. shards = 1 writes model.safetensors; shards > 1
 * writes model-0000i-of-0000n.safetensors and model.safetensors.index.json. Tokenizer:
 * tokenizer.json for byte-level BPE vocabularies, tokenizer.model + added_tokens.json (the
 * trailing USER_DEFINED tokens) for SentencePiece ones; then tokenizer_config.json
 * (add_bos_token = s->cfg.bos >= 0) and generation_config.json (eos_token_id [eos, eot]).
 * Peak memory is one tensor. */
int bn_hf_write_synth_form(const bn_synth *s, const bn_vocab *v, const char *dir, enum bn_hf_form form,
                           int shards, bn_error *err);
/* The same with latent = 0: BN_HF_NATIVE, latent = 1: BN_HF_BF16 (the original API). */
int bn_hf_write_synth(const bn_synth *s, const bn_vocab *v, const char *dir, int latent, int shards,
                      bn_error *err);

/* Writes v as a standard Hugging Face tokenizer.json (BPE, byte-level, Llama-3 Split regex when
 * v->pre is LLAMA3, Falcon's Punctuation/ByteLevel/Digits sequence when FALCON3) that
 * bn_vocab_load_hf() (source_hf for FALCON3) reads back into the same vocabulary. Control tokens
 * go to added_tokens (special), user-defined ones to added_tokens (not special), all others to
 * model.vocab (they read back as normal tokens). */
int bn_vocab_write_hf_json(const bn_vocab *v, const char *path, bn_error *err); /* BPE only */

/* The HF packed layout (transformers integrations/bitnet.py pack_weights): t[rows][cols] in
 * {-1,0,1}, rows a multiple of 4, packed into p[rows/4][cols]; with P = rows/4, bits 2i..2i+1
 * of p[r][c] hold code t+1 of row i*P + r. */
void bn_hf_pack_rows(const int8_t *t, uint64_t rows, uint64_t cols, uint8_t *p);
/* The inverse. Code 3 (never written by HF) becomes 0, as llama.cpp's converter maps it; the
 * number of such codes is returned so the caller can report them. */
uint64_t bn_hf_unpack_rows(const uint8_t *p, uint64_t rows, uint64_t cols, int8_t *t);

#endif
