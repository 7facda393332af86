/* The family table (family.h); facts and sources in ../shared/docs/bitnet-families.md. */
#include "model/family.h"

#include <string.h>

#include "model/model.h"

static const bn_family_info families[] = {
    {BN_FAM_BITNET, "bitnet", "BitNetForCausalLM", "bitnet", BN_HFW_PACKED_MUL,
     "self_attn.attn_sub_norm", "mlp.ffn_sub_norm", "bitnet-b1.58", 0, BN_ACT_RELU2, 0, 1,
     BN_VOCAB_LLAMA3, BN_CHAT_BITNET},
    /* latent weights; sub-norms under their own names; GGUF "bitnet" as bitnet.cpp 2025 writes */
    {BN_FAM_1BITLLM, "1bitllm", "BitnetForCausalLM", "llama", BN_HFW_LATENT,
     "self_attn.inner_attn_ln", "mlp.ffn_layernorm", "bitnet", 0, BN_ACT_SILU, 0, 1,
     BN_VOCAB_SPM, BN_CHAT_NONE},
    {BN_FAM_LLAMA3, "llama3", "LlamaForCausalLM", "llama", BN_HFW_PACKED_DIV, NULL, NULL, "llama", 1,
     BN_ACT_SILU, 1, 0, BN_VOCAB_LLAMA3, BN_CHAT_LLAMA3},
    {BN_FAM_FALCON3, "falcon3", "LlamaForCausalLM", "llama", BN_HFW_PACKED_DIV, NULL, NULL, "llama", 1,
     BN_ACT_SILU, 1, 0, BN_VOCAB_FALCON3, BN_CHAT_FALCON3},
    {BN_FAM_FALCON_E, "falcon-e", "LlamaForCausalLM", "llama", BN_HFW_PACKED_DIV, NULL, NULL, "llama", 1,
     BN_ACT_SILU, 1, 0, BN_VOCAB_FALCON3, BN_CHAT_FALCON3},
};
#define N_FAMILIES (sizeof families / sizeof families[0])

const bn_family_info *bn_family_get(enum bn_family f)
{
    if (f == 0) f = BN_FAM_BITNET;   /* a zeroed bn_synth means today's 2B-4T family */
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (families[i].id == f) return &families[i];
    return NULL;
}

const bn_family_info *bn_family_find(const char *name)
{
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (!strcmp(families[i].name, name)) return &families[i];
    return NULL;
}
