/* The packed model file: one self-contained, mmap-able file per model (docs/model-format.md).
 * bn_model_open() maps it and validates the header and tensor directory without touching
 * tensor data; the engine then reads weights in place through bn_layer_weights. */
#ifndef BN_MODEL_H
#define BN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "kernels/kernels.h"
#include "text/vocab.h"

enum bn_act { BN_ACT_RELU2 = 1, BN_ACT_SILU = 2 };

/* Hyper-parameters: everything the forward pass needs. */
typedef struct bn_config {
    uint32_t n_embd;       /* hidden size (2560) */
    uint32_t n_layer;      /* 30 */
    uint32_t n_head;       /* 20 */
    uint32_t n_head_kv;    /* 5 */
    uint32_t head_dim;     /* n_embd / n_head (128) */
    uint32_t n_ff;         /* 6912 */
    uint32_t n_vocab;      /* 128256 */
    uint32_t n_ctx_max;    /* 4096 */
    float rope_theta;      /* 500000 */
    float norm_eps;        /* 1e-5 */
    uint32_t act;          /* enum bn_act */
    uint32_t tied;         /* lm_head == token embedding */
    int32_t bos, eos, eot; /* -1 when absent; bos is the id prepended to prompts, -1 = none */
    uint32_t no_sub_norms; /* 1: plain Llama block, no attn_sub_norm/ffn_sub_norm (Llama3-8B-1.58,
                            * Falcon3); 0: BitNet block with both (2B-4T, 1bitLLM). Negative so
                            * that a zeroed or older config means today's BitNet block. */
} bn_config;

/* Checks the config for sanity and overflow (dims > 0, divisibility, sizes that fit). */
int bn_config_validate(const bn_config *c, bn_error *err);

/* Tensor element types stored in the packed file. */
enum bn_dtype {
    BN_DT_F32 = 0,
    BN_DT_F16 = 1,
    BN_DT_I8 = 2,         /* int8 matrix, with a companion "<name>.scale" F32 per-row tensor */
    BN_DT_TERN_I2 = 16,   /* kernels' BN_TERN_I2 packing; per-tensor scale in the entry */
    BN_DT_TERN_T5 = 17,   /* kernels' BN_TERN_T5 packing */
};

typedef struct bn_tensor {
    const char *name;
    uint32_t dtype;       /* enum bn_dtype */
    uint64_t rows, cols;  /* logical shape (vectors: rows = 1); out x in for matrices */
    float scale;          /* ternary per-tensor weight scale (W = t * scale), else 1 */
    const void *data;     /* in the mapping, 64-byte aligned */
    uint64_t nbytes;
    uint64_t checksum;    /* XXH3-64 of the data */
} bn_tensor;

/* Per-layer weights, resolved once at open. attn_sub_norm/ffn_sub_norm are NULL when
 * cfg.no_sub_norms. */
typedef struct bn_layer_weights {
    const float *attn_norm, *attn_sub_norm, *ffn_norm, *ffn_sub_norm;
    const bn_tensor *wq, *wk, *wv, *wo, *wgate, *wup, *wdown;
} bn_layer_weights;

typedef struct bn_model {
    char *path;
    bn_config cfg;
    uint32_t version_major, version_minor;
    bn_tern_fmt tern_fmt;              /* packing of every ternary tensor in this file */
    uint32_t n_tensors;
    bn_tensor *tensors;
    bn_layer_weights *layers;          /* n_layer entries */
    const uint16_t *tok_embd;          /* f16 [n_vocab][n_embd] */
    const float *output_norm;          /* [n_embd] */
    const int8_t *lm_head_i8;          /* optional int8 [n_vocab][lm_head_cols_padded] */
    const float *lm_head_i8_scale;     /* [n_vocab] */
    uint32_t lm_head_cols_padded;
    bn_vocab *vocab;                   /* decoded from the tokenizer section; owned */
    char *source;                      /* provenance text written by the converter; owned */

    /* private */
    void *map;
    size_t map_len;
    int owns_map;                      /* bn_model_open's own mapping (unmapped at close) */

    /* optional (format 1.1), with output_q8: per-row bounds of the int8 copy as a screen,
     * each rounded up: err[r] >= ||w_r - s_r q_r||_2 (w_r the f16 row), norm[r] >= ||s_r q_r||_2.
     * Last in the struct so that code built against 1.0's layout still reads the rest right. */
    const float *lm_head_i8_err, *lm_head_i8_norm;
    /* f16 [n_vocab][n_embd]: the head rows the model uses, "output" when untied, else tok_embd
     * (the rows output_q8 was quantized from). */
    const uint16_t *lm_head_f16;
    /* optional (format 1.3), with output_q8 and its bounds: the same int8 codes as 2-bit planes
     * (bn_u2_pack layout, kernels.h; lm_head_planes_cols = bn_u2_cols_padded(n_embd)), and the
     * bounds of the screen's stages j = 0..2 (planes 0..j read), rounded up:
     *   plane_err[j][r]  >= ||w_r - s_r v_j(q_r)||_2,  plane_norm[j][r] >= ||s_r v_j(q_r)||_2
     * with v_j = bn_u2_stage_value elementwise over the n_embd real columns (stage 3 is the int8
     * code itself: lm_head_i8_err / _norm). NULL when the file has no planes. */
    const uint8_t *lm_head_planes;
    const float *lm_head_plane_err[3], *lm_head_plane_norm[3];
    uint32_t lm_head_planes_cols;
} bn_model;

/* Opens and maps a packed model file. No tensor data is read. */
int bn_model_open(const char *path, bn_model **out, bn_error *err);
/* Like bn_model_open, but reads the file into this process's own memory (bn_copy_file) instead
 * of mapping the page cache: what `bitnet run/bench/perplexity` do unless --mmap. */
int bn_model_load(const char *path, bn_model **out, bn_error *err);
/* Opens a packed model held in memory the caller owns (e.g. a shared memfd copy): the same
 * validation as bn_model_open, with name in messages. data must be 64-byte aligned (BN_TENSOR_ALIGN)
 * and outlive the model; bn_model_close does not unmap it. */
int bn_model_open_region(const char *name, const void *data, size_t len, bn_model **out, bn_error *err);
void bn_model_close(bn_model *m);
/* Reads every tensor and checks its checksum (and the header's). */
int bn_model_verify(const bn_model *m, bn_error *err);
const bn_tensor *bn_model_tensor(const bn_model *m, const char *name);

#endif
