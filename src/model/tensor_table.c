/* The per-layer tensor table (tensor_table.h): the only list of what a layer holds. */
#include "model/tensor_table.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Forward-pass order; the packer writes a layer's tensors in this order. */
const bn_layer_tensor_def bn_layer_tensors[BN_LT_COUNT] = {
    /* id                 canon            hf                           rows         cols        tern sub qk */
    {BN_LT_ATTN_NORM,     "attn_norm",     "input_layernorm",           BN_DIM_ONE,  BN_DIM_EMBD, 0, 0, 0},
    {BN_LT_ATTN_Q,        "attn_q",        "self_attn.q_proj",          BN_DIM_Q,    BN_DIM_EMBD, 1, 0, 1},
    {BN_LT_ATTN_K,        "attn_k",        "self_attn.k_proj",          BN_DIM_KV,   BN_DIM_EMBD, 1, 0, 1},
    {BN_LT_ATTN_V,        "attn_v",        "self_attn.v_proj",          BN_DIM_KV,   BN_DIM_EMBD, 1, 0, 0},
    {BN_LT_ATTN_SUB_NORM, "attn_sub_norm", NULL,                        BN_DIM_ONE,  BN_DIM_Q,    0, 1, 0},
    {BN_LT_ATTN_OUTPUT,   "attn_output",   "self_attn.o_proj",          BN_DIM_EMBD, BN_DIM_Q,    1, 0, 0},
    {BN_LT_FFN_NORM,      "ffn_norm",      "post_attention_layernorm",  BN_DIM_ONE,  BN_DIM_EMBD, 0, 0, 0},
    {BN_LT_FFN_GATE,      "ffn_gate",      "mlp.gate_proj",             BN_DIM_FF,   BN_DIM_EMBD, 1, 0, 0},
    {BN_LT_FFN_UP,        "ffn_up",        "mlp.up_proj",               BN_DIM_FF,   BN_DIM_EMBD, 1, 0, 0},
    {BN_LT_FFN_SUB_NORM,  "ffn_sub_norm",  NULL,                        BN_DIM_ONE,  BN_DIM_FF,   0, 1, 0},
    {BN_LT_FFN_DOWN,      "ffn_down",      "mlp.down_proj",             BN_DIM_EMBD, BN_DIM_FF,   1, 0, 0},
};

const bn_layer_tensor_def *bn_layer_tensor_find(const char *canon)
{
    for (int i = 0; i < BN_LT_COUNT; i++)
        if (!strcmp(bn_layer_tensors[i].canon, canon)) return &bn_layer_tensors[i];
    return NULL;
}

const bn_layer_tensor_def *bn_layer_tensor_parse(const char *name, uint32_t *layer)
{
    if (strncmp(name, "blk.", 4)) return NULL;
    char *end;
    unsigned long l = strtoul(name + 4, &end, 10);
    if (end == name + 4 || *end != '.' || l > UINT32_MAX) return NULL;
    *layer = (uint32_t)l;
    return bn_layer_tensor_find(end + 1);
}

uint64_t bn_dim_size(const bn_config *c, enum bn_dim_role r)
{
    switch (r) {
    case BN_DIM_EMBD: return c->n_embd;
    case BN_DIM_Q: return (uint64_t)c->n_head * c->head_dim;
    case BN_DIM_KV: return (uint64_t)c->n_head_kv * c->head_dim;
    case BN_DIM_FF: return c->n_ff;
    case BN_DIM_ONE: break;
    }
    return 1;
}

void bn_layer_tensor_shape(const bn_config *c, const bn_layer_tensor_def *d, uint64_t *rows,
                           uint64_t *cols)
{
    *rows = bn_dim_size(c, d->rows);
    *cols = bn_dim_size(c, d->cols);
}

int bn_layer_tensor_present(const bn_config *c, const bn_layer_tensor_def *d)
{
    return !d->sub_norm || !c->no_sub_norms;
}
