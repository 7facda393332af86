/* Private to the text layer: the pieces tokenizer.c assembles (pre-tokenizer split, byte-level
 * mapping, BPE merge table). Nothing outside src/text includes this, except the
 * text layer's own unit tests (tests/test_spm.c tests the pre-tokenizer directly). */
#ifndef BN_TEXT_INTERNAL_H
#define BN_TEXT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "text/tokenizer.h"
#include "text/vocab.h"

/* ---- pretokenize.c: the regex split before BPE ---- */

typedef struct bn_pretok bn_pretok;

bn_pretok *bn_pretok_new(enum bn_pre_kind kind, bn_error *err);
void bn_pretok_free(bn_pretok *p);

/* Called once per pre-token, in order; the pre-tokens tile the input exactly. Non-zero stops. */
typedef int (*bn_pretok_fn)(void *ctx, const char *piece, size_t len);

/* Splits text. Thread-safe on a shared bn_pretok (per-call match data). Returns 0, -1 with err
 * set on a regex engine failure, or the callback's non-zero value. */
int bn_pretok_split(const bn_pretok *p, const char *text, size_t len, bn_pretok_fn fn, void *ctx,
                    bn_error *err);

/* ---- bpe.c: byte-level mapping and merges ---- */

/* GPT-2's bytes_to_unicode(): every byte has a printable code point; token strings in the
 * vocabulary are written with these. */
uint32_t bn_byte_to_cp(uint8_t b);
/* Inverse: the byte a code point stands for, or -1 if cp is not one of the 256. */
int bn_cp_to_byte(uint32_t cp);

/* Decodes one UTF-8 sequence at s[0..len): returns its length (1-4) and sets *cp, or 0 if the
 * bytes there are not a valid (shortest-form, non-surrogate) sequence. */
size_t bn_utf8_decode(const uint8_t *s, size_t len, uint32_t *cp);
/* Encodes cp (<= 0x10FFFF) into out[0..4); returns the length. */
size_t bn_utf8_encode(uint32_t cp, char *out);

/* A string -> id hash over a string table (text + offsets, as in bn_vocab). Ids whose keep[]
 * entry is 0 are left out; when two ids have the same string the lower one wins. */
typedef struct bn_str_index {
    const char *text;
    const uint32_t *off;
    uint32_t *slots;     /* ids; UINT32_MAX = empty */
    uint32_t cap;        /* power of two */
} bn_str_index;

int bn_str_index_build(bn_str_index *ix, const char *text, const uint32_t *off, uint32_t n,
                       const uint8_t *keep, bn_error *err);
void bn_str_index_free(bn_str_index *ix);
int32_t bn_str_index_find(const bn_str_index *ix, const char *s, size_t len);

/* (left, right) -> (rank, merged id), an open-addressing hash built from vocab->merges. */
typedef struct bn_merge_table {
    uint64_t *keys;      /* (left << 32 | right) + 1; 0 = empty slot */
    uint32_t *rank;
    int32_t *merged;
    uint32_t cap;        /* power of two */
} bn_merge_table;

/* Builds the table from v->merges. bytes_ix maps a token's raw bytes to its id, and is how the
 * merged token is found (its bytes are left's bytes followed by right's). As in HF, a merge whose
 * result is not a token is an error, and a repeated pair keeps its last rank. */
int bn_merge_table_build(bn_merge_table *mt, const bn_vocab *v, const bn_str_index *bytes_ix,
                         bn_error *err);
void bn_merge_table_free(bn_merge_table *mt);
/* Looks a pair up: returns 1 and sets rank/merged if it merges, else 0. */
int bn_merge_lookup(const bn_merge_table *mt, int32_t left, int32_t right, uint32_t *rank,
                    int32_t *merged);

/* Runs BPE on syms[0..n) (token ids, initially one per byte) in place; returns the new count.
 * Exactly HF's order: lowest rank first, leftmost among equal ranks. scratch must hold 3*n
 * uint32 plus n heap entries (bn_bpe_scratch_size). */
size_t bn_bpe_scratch_size(size_t n);
size_t bn_bpe_merge(const bn_merge_table *mt, int32_t *syms, size_t n, void *scratch);

/* ---- spm.c: SentencePiece BPE (vocab->model == BN_TOKM_SPM) ---- */

typedef struct bn_spm bn_spm;

/* Indexes v's ordinary pieces, byte-fallback tokens (all 256 <0xXX> BYTE tokens are required)
 * and specials. v is borrowed. */
bn_spm *bn_spm_new(const bn_vocab *v, bn_error *err);
void bn_spm_free(bn_spm *s);
/* Encodes text and appends the ids. USER_DEFINED strings are always matched; CONTROL and
 * UNKNOWN ones only if parse_control. Thread-safe on a shared bn_spm. */
int bn_spm_encode(const bn_spm *s, const char *text, size_t len, int parse_control, bn_tokens *out,
                  bn_error *err);
/* Writes the raw bytes token id stands for into out (never more than its string's length):
 * U+2581 -> ' ', <0xXX> BYTE tokens -> the byte, specials verbatim. Returns the count. */
size_t bn_spm_piece_bytes(const bn_vocab *v, uint32_t id, char *out);
/* Is id a token the special partition splits on (CONTROL, USER_DEFINED, UNKNOWN)? After one,
 * the encoder starts a new fragment (with its space prefix). */
int bn_spm_is_special(const bn_vocab *v, uint32_t id);

/* ---- tokenizer.c ---- */

/* The id of the control token whose text is name, or -1. */
int32_t bn_tokenizer_control_id(const bn_tokenizer *tk, const char *name);
/* Same, but a non-control token whose raw bytes are exactly name also counts (a vocabulary that
 * ships template markers such as <|user|> as ordinary added tokens). */
int32_t bn_tokenizer_marker_id(const bn_tokenizer *tk, const char *name);

#endif
