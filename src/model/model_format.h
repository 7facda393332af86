/* On-disk layout of the packed model file, version 1.3 (docs/model-format.md is the prose
 * version of this header; keep the two in step). Everything is little-endian; structs are
 * written as-is, so their sizes are pinned by static asserts.
 *
 *   [0, 256)                 bn_file_header
 *   [256, ...)               tensor directory: n_tensors x bn_tensor_entry (128 bytes each)
 *   64-aligned               tokenizer section (bn_tok_header + arrays)
 *   64-aligned               source/provenance text (NUL-terminated)
 *   page-aligned data_offset tensor data: each tensor 64-aligned, tensors >= 1 MiB page-aligned
 *
 * header_checksum = XXH3-64 of bytes [0, data_offset) with the checksum field read as zero;
 * every tensor entry carries the XXH3-64 of its data. */
#ifndef BN_MODEL_FORMAT_H
#define BN_MODEL_FORMAT_H

#include <assert.h>
#include <stdint.h>

#define BN_FILE_MAGIC "BITNETPK"
#define BN_FILE_VERSION_MAJOR 1 /* incompatible layout changes bump this; readers reject others */
#define BN_FILE_VERSION_MINOR 3 /* additive changes (new optional tensors, reserved fields);
                                 * 1.1: output_q8.err and output_q8.norm;
                                 * 1.2: header flags (BN_FILE_FLAG_*), SentencePiece tokenizers
                                 * (bn_tok_header.model_flags, scores);
                                 * 1.3: output_q8.planes and output_q8.planes.err / .norm */
#define BN_TENSOR_ALIGN 64
#define BN_PAGE_ALIGN 4096
#define BN_PAGE_ALIGN_MIN_BYTES (1u << 20)
#define BN_NAME_MAX 64

typedef struct bn_disk_hparams {
    uint32_t n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx_max;
    float rope_theta, norm_eps;
    uint32_t act;       /* enum bn_act */
    uint32_t tied;      /* 1: lm_head is token_embd */
    int32_t bos, eos, eot;
    uint32_t rope_type; /* 1 = NeoX (rotate_half); the only kind BitNet uses */
} bn_disk_hparams;
static_assert(sizeof(bn_disk_hparams) == 64, "hparams layout");

/* bn_file_header.flags (1.2). A file with none set reads as 1.1 did. */
#define BN_FILE_FLAG_NO_SUB_NORMS 1u  /* no blk.N.attn_sub_norm / ffn_sub_norm (bn_config.no_sub_norms) */
#define BN_FILE_FLAGS_KNOWN BN_FILE_FLAG_NO_SUB_NORMS

typedef struct bn_file_header {
    char magic[8];
    uint32_t version_major, version_minor;
    uint64_t header_checksum;
    uint64_t file_size;
    uint64_t data_offset;
    uint64_t tensors_offset;
    uint32_t n_tensors, tensor_entry_size;
    uint64_t tokenizer_offset, tokenizer_size;
    uint64_t source_offset, source_size;
    uint32_t tern_fmt;  /* enum bn_tern_fmt of every ternary tensor */
    uint32_t flags;     /* BN_FILE_FLAG_*; readers reject unknown bits */
    bn_disk_hparams hp;
    uint8_t reserved[96];
} bn_file_header;
static_assert(sizeof(bn_file_header) == 256, "header layout");

typedef struct bn_tensor_entry {
    char name[BN_NAME_MAX]; /* NUL-padded */
    uint32_t dtype;         /* enum bn_dtype */
    uint32_t reserved0;
    uint64_t rows, cols;
    uint64_t offset, nbytes; /* absolute file offset of the data */
    float scale;
    uint32_t reserved1;
    uint64_t checksum;
    uint8_t reserved2[8];
} bn_tensor_entry;
static_assert(sizeof(bn_tensor_entry) == 128, "tensor entry layout");

/* Tokenizer section: this header, then u32 tok_off[n_tokens+1], u8 type[n_tokens] (padded
 * to 4 bytes), u32 merges[2*n_merges], text[text_bytes], chat_template[template_len], and
 * (1.2, model kind SPM only) padding to 4 bytes then f32 scores[n_tokens]: at the end, so
 * that a 1.1 reader still finds everything it knows at the same offsets. */
typedef struct bn_tok_header {
    uint32_t n_tokens, n_merges, pre, chat;
    int32_t bos, eos, eot, pad;
    uint32_t ignore_merges, template_len, text_bytes;
    uint32_t model_flags; /* 1.2 (0 in 1.1): bits 0-7 enum bn_tok_model, bits 8+ BN_TOKF_* */
} bn_tok_header;
#define BN_TOKF_SPACE_PREFIX (1u << 8) /* SPM: prepend " " to the text (add_dummy_prefix) */
static_assert(sizeof(bn_tok_header) == 48, "tokenizer header layout");

#endif
