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

/* Writes synthetic model s with vocabulary v into directory dir (created if needed; files in it
 * are replaced atomically, one by one). latent = 0: linears are packed uint8 [out/4, in] plus a
 * one-element bf16 weight_scale (quantization_mode offline, as microsoft/bitnet-b1.58-2B-4T);
 * latent = 1: bf16 latent weights (quantization_mode online, as the -bf16 repo). shards = 1
 * writes model.safetensors; shards > 1 writes model-0000i-of-0000n.safetensors and
 * model.safetensors.index.json. Peak memory is one tensor. */
int bn_hf_write_synth(const bn_synth *s, const bn_vocab *v, const char *dir, int latent, int shards,
                      bn_error *err);

/* Writes v as a standard Hugging Face tokenizer.json (BPE, byte-level, Llama-3 Split regex when
 * v->pre is LLAMA3) that bn_vocab_load_hf() reads back into the same vocabulary. Control tokens
 * go to added_tokens (special), user-defined ones to added_tokens (not special), all others to
 * model.vocab (they read back as normal tokens). */
int bn_vocab_write_hf_json(const bn_vocab *v, const char *path, bn_error *err);

/* The HF packed layout (transformers integrations/bitnet.py pack_weights): t[rows][cols] in
 * {-1,0,1}, rows a multiple of 4, packed into p[rows/4][cols]; with P = rows/4, bits 2i..2i+1
 * of p[r][c] hold code t+1 of row i*P + r. */
void bn_hf_pack_rows(const int8_t *t, uint64_t rows, uint64_t cols, uint8_t *p);
/* The inverse. Code 3 (never written by HF) becomes 0, as llama.cpp's converter maps it; the
 * number of such codes is returned so the caller can report them. */
uint64_t bn_hf_unpack_rows(const uint8_t *p, uint64_t rows, uint64_t cols, int8_t *t);

#endif
