/* A conversion source: any form a user may hold (HF directory, GGUF file, a synthetic model)
 * seen as a config, a vocabulary and tensors that can be read one at a time. The packer
 * (model_write.c) pulls tensors in a fixed order, so conversion streams: only one tensor (or
 * a band of embedding rows) is ever in memory.
 *
 * Canonical tensor names are GGUF's: token_embd, output (untied models only), output_norm,
 * blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_sub_norm, attn_output, ffn_norm, ffn_gate,
 * ffn_up, ffn_sub_norm, ffn_down}. Matrices are [rows = out][cols = in]. */
#ifndef BN_MODEL_SOURCE_H
#define BN_MODEL_SOURCE_H

#include <stdint.h>

#include "model/model.h"

typedef struct bn_source bn_source;

struct bn_source_ops {
    /* Ternary linear `name`: codes t[rows*cols] in {-1,0,1} and the per-tensor scale
     * (W = t * scale). Float sources ternarize here with the model's absmean rule. */
    int (*ternary)(bn_source *s, const char *name, uint64_t rows, uint64_t cols,
                   int8_t *t, float *scale, bn_error *err);
    /* Rows [row0, row0+n) of float tensor `name` of shape [rows][cols] (vectors: rows == 1). */
    int (*floats)(bn_source *s, const char *name, uint64_t rows, uint64_t cols,
                  uint64_t row0, uint64_t n, float *out, bn_error *err);
    void (*close)(bn_source *s);
};

struct bn_source {
    const struct bn_source_ops *ops;
    bn_config cfg;
    bn_vocab *vocab;       /* owned by the source */
    char *kind;            /* "hf-packed", "hf-bf16", "gguf-i2_s", ... (malloc'd) */
    char *path;            /* malloc'd */
    char *notes;           /* corrections made while reading (malloc'd, may be NULL), e.g.
                              "tokenizer.ggml.pre missing: using llama3" */
};

/* Detects the form of path (directory with config.json = HF; file starting with "GGUF" = GGUF)
 * and opens it. */
int bn_source_open(const char *path, bn_source **out, bn_error *err);
int bn_source_open_hf(const char *dir, bn_source **out, bn_error *err);
int bn_source_open_gguf(const char *path, bn_source **out, bn_error *err);
void bn_source_close(bn_source *s);

/* Common base fields: init/free, used by every implementation. */
void bn_source_base_free(bn_source *s);
/* Appends a line to s->notes. */
void bn_source_note(bn_source *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
