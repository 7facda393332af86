/* BitNet b1.58 model families (../shared/docs/bitnet-families.md): what differs between them,
 * as one table that the HF and GGUF readers and writers and the synthetic shapes all consult.
 * A family is a property of a checkpoint's form, not of the packed file: once packed, a model
 * is just its bn_config (act, tied, no_sub_norms, eps, theta, ...) and its vocabulary. */
#ifndef BN_MODEL_FAMILY_H
#define BN_MODEL_FAMILY_H

#include <stdint.h>

#include "text/tokenizer.h"

enum bn_family {
    BN_FAM_BITNET = 1,    /* microsoft/BitNet-b1.58-2B-4T */
    BN_FAM_1BITLLM = 2,   /* 1bitLLM/bitnet_b1_58-{large,3B,xl} */
    BN_FAM_LLAMA3 = 3,    /* HF1BitLLM/Llama3-8B-1.58-100B-tokens */
    BN_FAM_FALCON3 = 4,   /* tiiuae/Falcon3-*-1.58bit */
    BN_FAM_FALCON_E = 5,  /* tiiuae/Falcon-E-* (same form as Falcon3; sizes unconfirmed) */
};

/* How an HF checkpoint stores its BitLinear weights. */
enum bn_hf_weights {
    BN_HFW_PACKED_MUL = 1, /* uint8 codes + weight_scale, W = t * weight_scale (autobitlinear: 2B-4T) */
    BN_HFW_PACKED_DIV = 2, /* uint8 codes + weight_scale, W = t / weight_scale (bitlinear: Llama3, Falcon) */
    BN_HFW_LATENT = 3,     /* full-precision latent weights, absmean-ternarized at convert (1bitLLM) */
};

typedef struct bn_family_info {
    enum bn_family id;
    const char *name;          /* "bitnet", "1bitllm", "llama3", "falcon3", "falcon-e" */
    const char *hf_arch;       /* config.json architectures[0] */
    const char *hf_model_type; /* config.json model_type */
    enum bn_hf_weights hf_weights;
    const char *hf_attn_sub_norm, *hf_ffn_sub_norm; /* per-layer HF names, NULL without sub-norms */
    const char *gguf_arch;     /* what bitnet.cpp 2025 writes: "bitnet-b1.58", "bitnet", "llama" */
    uint32_t gguf_qk_permuted; /* 1: q/k rows in llama.cpp's permuted order (arch "llama") */
    uint32_t act;              /* enum bn_act */
    uint32_t no_sub_norms, tied;
    enum bn_vocab_kind vocab;  /* built-in vocabulary of synthetic models */
    uint32_t chat;             /* enum bn_chat_kind */
} bn_family_info;

const bn_family_info *bn_family_get(enum bn_family f);      /* 0 = BN_FAM_BITNET; NULL if unknown */
const bn_family_info *bn_family_find(const char *name);     /* by name; NULL if unknown */

/* The permutation llama.cpp's converter applies to q/k rows for arch "llama" (so that its
 * adjacent-pair RoPE equals HF's rotate_half): within each head of head_dim rows, HF row
 * h*hd + s*hd/2 + j lands at GGUF row h*hd + 2j + s. Returns the GGUF row of HF row r. */
static inline uint64_t bn_qk_permuted_row(uint64_t r, uint32_t head_dim)
{
    uint64_t h = r / head_dim, i = r % head_dim, half = head_dim / 2;
    return h * head_dim + 2 * (i % half) + i / half;
}

#endif
