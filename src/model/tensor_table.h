/* The one table of per-layer tensors. Every reader and writer of every form (packed file,
 * HF safetensors, GGUF, synthetic) walks this table instead of keeping its own list, so a new
 * tensor or family is one row or one column here.
 *
 * Names: the canonical (packed-file) name of layer l's tensor is "blk.<l>.<canon>"; GGUF adds
 * ".weight" (and "_scale" companions for TL files); HF is "model.layers.<l>.<hf>.weight", where
 * the sub-norms' hf name comes from the family (bn_family_info.hf_*_sub_norm). Rows are in
 * forward-pass order, which is also the order the packer writes them. */
#ifndef BN_MODEL_TENSOR_TABLE_H
#define BN_MODEL_TENSOR_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

/* What a dimension of a layer tensor is, in terms of the config. */
enum bn_dim_role {
    BN_DIM_ONE = 0,  /* 1 (the rows of a vector) */
    BN_DIM_EMBD,     /* n_embd */
    BN_DIM_Q,        /* n_head * head_dim */
    BN_DIM_KV,       /* n_head_kv * head_dim */
    BN_DIM_FF,       /* n_ff */
};

enum bn_layer_tensor {
    BN_LT_ATTN_NORM, BN_LT_ATTN_Q, BN_LT_ATTN_K, BN_LT_ATTN_V, BN_LT_ATTN_SUB_NORM,
    BN_LT_ATTN_OUTPUT, BN_LT_FFN_NORM, BN_LT_FFN_GATE, BN_LT_FFN_UP, BN_LT_FFN_SUB_NORM,
    BN_LT_FFN_DOWN,
    BN_LT_COUNT
};

typedef struct bn_layer_tensor_def {
    enum bn_layer_tensor id;
    const char *canon;        /* "attn_q": packed and GGUF name stem */
    const char *hf;           /* "self_attn.q_proj"; NULL for sub-norms (family-specific) */
    enum bn_dim_role rows, cols;
    uint8_t ternary;          /* a BitLinear weight (else an f32 norm vector) */
    uint8_t sub_norm;         /* present only when !cfg.no_sub_norms */
    uint8_t qk_rope;          /* q or k: rows permuted in llama-arch GGUF files */
} bn_layer_tensor_def;

extern const bn_layer_tensor_def bn_layer_tensors[BN_LT_COUNT];

/* The def whose canon is `canon` ("attn_q"), or NULL. */
const bn_layer_tensor_def *bn_layer_tensor_find(const char *canon);
/* Splits a canonical name "blk.<l>.<canon>" into its layer and def; NULL if not a layer tensor. */
const bn_layer_tensor_def *bn_layer_tensor_parse(const char *name, uint32_t *layer);
/* The size of a dimension role under c. */
uint64_t bn_dim_size(const bn_config *c, enum bn_dim_role r);
/* [rows][cols] of d under c. */
void bn_layer_tensor_shape(const bn_config *c, const bn_layer_tensor_def *d, uint64_t *rows,
                           uint64_t *cols);
/* Does a model with config c have this tensor (sub-norms only without no_sub_norms)? */
int bn_layer_tensor_present(const bn_config *c, const bn_layer_tensor_def *d);

#endif
