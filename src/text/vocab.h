/* The tokenizer's data, independent of where it came from (tokenizer.json, GGUF metadata or
 * the packed model file). Token strings are kept exactly as those files store them: byte-level
 * BPE tokens in GPT-2's byte-to-unicode form ("Ġthe"), special tokens verbatim ("<|eot_id|>").
 *
 * Ownership: a bn_vocab owns every array it points to; bn_vocab_free() releases all of it. */
#ifndef BN_TEXT_VOCAB_H
#define BN_TEXT_VOCAB_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

/* Token types, numbered as GGUF's tokenizer.ggml.token_type (llama.cpp's enum). */
enum bn_token_type {
    BN_TOK_UNDEFINED = 0,
    BN_TOK_NORMAL = 1,
    BN_TOK_UNKNOWN = 2,
    BN_TOK_CONTROL = 3,      /* special tokens: produced by templates only */
    BN_TOK_USER_DEFINED = 4,
    BN_TOK_UNUSED = 5,
    BN_TOK_BYTE = 6,
};

/* Pre-tokenizer (the regex split before BPE). */
enum bn_pre_kind {
    BN_PRE_LLAMA3 = 1,   /* Llama-3 / tiktoken cl100k-style split (BitNet-b1.58-2B-4T) */
    BN_PRE_GPT2 = 2,     /* GPT-2's original split */
    BN_PRE_FALCON3 = 3,  /* Falcon3 / Falcon-E: punctuation runs, GPT-2 split, single digits,
                          * applied in sequence (bitnet-families.md s.3); unused for SPM */
};

/* Tokenizer model. */
enum bn_tok_model {
    BN_TOKM_BPE = 0,     /* byte-level BPE with ranked merges (Llama-3, Falcon3) */
    BN_TOKM_SPM = 1,     /* SentencePiece BPE: score-ordered pieces, U+2581 for space, byte
                          * fallback <0xXX> (1bitLLM's Llama-2 tokenizer.model) */
};

/* Chat template families (text/chat_template.c renders them). */
enum bn_chat_kind {
    BN_CHAT_NONE = 0,
    BN_CHAT_BITNET = 1,  /* "System: ...<|eot_id|>User: ...<|eot_id|>Assistant: " (model facts s.5) */
    BN_CHAT_LLAMA3 = 2,  /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    BN_CHAT_FALCON3 = 3, /* "<|role|>\n" content "\n" per message, then "<|assistant|>\n" */
};

typedef struct bn_vocab {
    uint32_t n_tokens;
    uint32_t *tok_off;      /* n_tokens + 1 offsets into text; token i is text[tok_off[i]..tok_off[i+1]) */
    char *text;             /* all token strings back to back (not NUL-separated) */
    uint8_t *type;          /* enum bn_token_type per token */
    uint32_t n_merges;
    uint32_t *merges;       /* 2 * n_merges token ids: (left, right) pairs in rank order (rank 0 first) */
    int32_t bos, eos, eot, pad;   /* -1 when absent */
    uint32_t pre;           /* enum bn_pre_kind */
    uint32_t chat;          /* enum bn_chat_kind: the model's own chat format */
    uint32_t ignore_merges; /* tokenizer.json model.ignore_merges: whole pre-token in vocab wins */
    char *chat_template;    /* the source's template text, NUL-terminated, may be NULL */
    uint32_t model;         /* enum bn_tok_model (0 = byte-level BPE, as before) */
    uint32_t space_prefix;  /* SPM: prepend " " before the first fragment (add_dummy_prefix) */
    float *scores;          /* SPM: n_tokens piece scores (merge priority), else NULL; owned */

    /* private: string -> id index, built by bn_vocab_index() */
    uint32_t *index_slots;
    uint32_t index_cap;
} bn_vocab;

/* Allocates a vocab with room for n_tokens tokens totalling text_bytes and n_merges merges.
 * Arrays are zeroed; the caller fills tok_off/text/type/merges. Returns NULL on overflow/OOM. */
bn_vocab *bn_vocab_alloc(uint32_t n_tokens, size_t text_bytes, uint32_t n_merges);
void bn_vocab_free(bn_vocab *v);
/* Gives v zeroed scores[n_tokens] (owned by v, freed by bn_vocab_free) unless it has them;
 * returns v->scores, NULL on OOM. */
float *bn_vocab_scores_alloc(bn_vocab *v);

static inline const char *bn_vocab_token(const bn_vocab *v, uint32_t id, size_t *len)
{
    *len = v->tok_off[id + 1] - v->tok_off[id];
    return v->text + v->tok_off[id];
}

/* Builds the string -> id index (idempotent). Fails if two tokens share a string. */
int bn_vocab_index(bn_vocab *v, bn_error *err);
/* Id of the token whose string is s[0..len), or -1. Requires bn_vocab_index(). */
int32_t bn_vocab_find(const bn_vocab *v, const char *s, size_t len);

/* Fills merges from "left right" strings (as tokenizer.json and GGUF store them).
 * Both sides must be tokens; v->merges must have room for n (bn_vocab_alloc's n_merges). */
int bn_vocab_set_merge(bn_vocab *v, uint32_t rank, const char *merge, size_t len, bn_error *err);

/* Checks internal consistency (offsets monotone, ids in range, merges valid, specials typed). */
int bn_vocab_validate(const bn_vocab *v, bn_error *err);

/* Deep copy. */
bn_vocab *bn_vocab_clone(const bn_vocab *v);

#endif
