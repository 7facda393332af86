/* Text layer: byte-level BPE (Llama-3 exactly as Hugging Face tokenizers; Falcon3 with its
 * three-regex pre-tokenizer), SentencePiece BPE (vocab->model == BN_TOKM_SPM: Llama-2 /
 * 1bitLLM, as llama.cpp runs it, see text/spm.c), streaming decode, stop strings and chat
 * templates.
 *
 * Lifetimes and threads:
 *  - A bn_tokenizer BORROWS its bn_vocab: the vocab must outlive the tokenizer and must not be
 *    modified while the tokenizer exists (it is typically model->vocab).
 *  - A bn_tokenizer is immutable after bn_tokenizer_new(): every const function below may be
 *    called from many threads at once on the same tokenizer.
 *  - Stream decoders and stop matchers hold per-request state: one per generation, one thread.
 *
 * Special (control) tokens such as <|eot_id|> are never produced from text by bn_tokenize():
 * the same characters in user text are ordinary text. Control token ids come only from the chat
 * renderer (which emits them directly) or from bn_tokenize_special_append(), for trusted
 * text (debugging, tests).
 *
 * SentencePiece vocabularies: USER_DEFINED tokens (</line>, <pad>) ARE matched in any text (as
 * llama.cpp and HF do; they are not template markers); CONTROL and UNKNOWN ones (<s>, </s>,
 * <unk>) follow the rule above. Every raw fragment (the text, or each piece of it between
 * special tokens) gets one " " prepended when vocab->space_prefix; bn_detokenize drops that one
 * space again (at the start and after each special token), so it stays the exact inverse of
 * bn_tokenize. The stream decoder does not: it decodes a continuation, whose leading space is
 * real text. */
#ifndef BN_TEXT_TOKENIZER_H
#define BN_TEXT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "text/vocab.h"

typedef struct bn_tokenizer bn_tokenizer;

/* Builds the merge table, byte tables, its own token index and the compiled pre-tokenizer for v.
 * The vocab is borrowed (see above) and never written. Returns NULL with err set on failure
 * (e.g. a merge whose result is not a token, or a missing single-byte token). */
bn_tokenizer *bn_tokenizer_new(const bn_vocab *v, bn_error *err);
void bn_tokenizer_free(bn_tokenizer *tk);
const bn_vocab *bn_tokenizer_vocab(const bn_tokenizer *tk);

/* ---- Encoding ------------------------------------------------------------------------ */

/* A growable array of token ids. Zero-initialise ({0}); bn_tokens_free releases ids. */
typedef struct bn_tokens {
    int32_t *ids;
    size_t n, cap;
} bn_tokens;

int bn_tokens_push(bn_tokens *t, int32_t id, bn_error *err);
void bn_tokens_free(bn_tokens *t);

/* Encodes raw text (any bytes; no BOS, no template, special-token strings are plain text) and
 * APPENDS the ids to out. Invalid UTF-8 is accepted: each maximal run of bytes that is not valid
 * UTF-8 becomes its own pre-token, so decoding still gives the input back byte for byte. */
int bn_tokenize_append(const bn_tokenizer *tk, const char *text, size_t len, bn_tokens *out,
                       bn_error *err);

/* Same, into a fresh malloc'd array (*ids, *n; caller frees *ids; *ids may be NULL if n == 0). */
int bn_tokenize(const bn_tokenizer *tk, const char *text, size_t len, int32_t **ids, size_t *n,
                bn_error *err);

/* Like bn_tokenize_append, but control-token strings in text (e.g. "<|eot_id|>") become their
 * ids, as HF does for a rendered template. For TRUSTED text only (tests, `bitnet tokenize
 * --special`); never for user content. */
int bn_tokenize_special_append(const bn_tokenizer *tk, const char *text, size_t len,
                               bn_tokens *out, bn_error *err);

/* ---- Decoding ------------------------------------------------------------------------ */

/* The raw bytes a token stands for (byte-level mapping undone; control tokens give their text,
 * e.g. "<|eot_id|>"). Not NUL-terminated; valid while the tokenizer lives. NULL (and *len = 0)
 * for an id outside the vocabulary. The bytes may be a partial UTF-8 sequence. */
const char *bn_token_bytes(const bn_tokenizer *tk, int32_t id, size_t *len);

/* Is id a control token (BN_TOK_CONTROL)? False for ids out of range. */
int bn_token_is_control(const bn_tokenizer *tk, int32_t id);
/* Does id end generation: the vocab's eos or eot (for BitNet-b1.58-2B-4T: 128001, 128009;
 * Llama3-8B-1.58: 128009; Falcon3: 11; 1bitLLM: </s> 2)? */
int bn_token_is_eog(const bn_tokenizer *tk, int32_t id);

enum {
    BN_DECODE_SKIP_CONTROL = 1, /* control tokens produce no text */
};

/* Concatenates the bytes of ids into a malloc'd, NUL-terminated buffer (*text, *len excludes the
 * NUL). Exact: no replacement of invalid sequences, so decode(encode(s)) == s for any bytes s
 * (SentencePiece: with the space-prefix rule above). Fails on an out-of-range id. */
int bn_detokenize(const bn_tokenizer *tk, const int32_t *ids, size_t n, unsigned flags,
                  char **text, size_t *len, bn_error *err);

/* Streaming decode: fed one token at a time, emits only complete, valid UTF-8. Bytes that may
 * still become a valid character are held back; bytes that can no longer become one are replaced
 * by U+FFFD at once (one U+FFFD per maximal invalid subpart, the Unicode-recommended practice). */
typedef struct bn_stream_decoder bn_stream_decoder;

bn_stream_decoder *bn_stream_decoder_new(const bn_tokenizer *tk, unsigned flags /* BN_DECODE_* */);
void bn_stream_decoder_free(bn_stream_decoder *sd);
/* Feeds one token. *text and *len: the text completed by it (possibly empty); the pointer stays
 * valid until the next call on sd. Fails only on an out-of-range id or out of memory. */
int bn_stream_decoder_feed(bn_stream_decoder *sd, int32_t id, const char **text, size_t *len,
                           bn_error *err);
/* End of stream: emits what is held back (an incomplete sequence becomes U+FFFD) and resets. */
void bn_stream_decoder_flush(bn_stream_decoder *sd, const char **text, size_t *len);

/* Stop strings, matched on the decoded text across token boundaries. Text that might be the
 * start of a stop string is held back, and released as soon as it cannot be. */
typedef struct bn_stop_matcher bn_stop_matcher;

#define BN_STOP_MAX 16  /* at most this many stop strings */

/* Copies the n stop strings (each non-empty, NUL-terminated). n may be 0 (nothing ever stops). */
bn_stop_matcher *bn_stop_matcher_new(const char *const *stops, size_t n, bn_error *err);
void bn_stop_matcher_free(bn_stop_matcher *sm);
/* Feeds decoded text. *out and *out_len: text safe to emit now (valid until the next call on sm).
 * Returns the index (>= 0) of the stop string that matched (earliest end, then longest; *out is
 * then everything before it and the matcher discards the rest), or -1 if none matched yet,
 * or -2 on out of memory. After a match, further feeds return the same index and emit nothing. */
int bn_stop_matcher_feed(bn_stop_matcher *sm, const char *text, size_t len, const char **out,
                         size_t *out_len);
/* End of generation without a stop: releases the held-back text. */
void bn_stop_matcher_flush(bn_stop_matcher *sm, const char **out, size_t *out_len);

/* ---- Chat templates ------------------------------------------------------------------ */

typedef struct bn_chat_msg {
    const char *role;     /* "system", "user", "assistant" (other roles are rendered the same way) */
    const char *content;  /* NUL-terminated UTF-8; trimmed of surrounding whitespace when rendered
                           * (except by FALCON3, whose reference renderer does not trim) */
} bn_chat_msg;

/* Renders msgs to token ids: BOS, then per message the template's control tokens as ids and the
 * template text + content encoded as raw text (so "<|eot_id|>" typed by a user stays text), then
 * the generation prompt if add_generation_prompt. The ids APPEND to out.
 *   BN_CHAT_BITNET: <|begin_of_text|>System: {c}<|eot_id|>User: {c}<|eot_id|>Assistant: {c}<|eot_id|>
 *                   ... generation prompt "Assistant: " (role capitalized, content trimmed)
 *   BN_CHAT_LLAMA3: <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{c}<|eot_id|>
 *                   ... generation prompt <|start_header_id|>assistant<|end_header_id|>\n\n
 *   BN_CHAT_FALCON3: no BOS; <|{role}|>\n{c}\n per message (content untrimmed; the markers of
 *                   system/user/assistant are ids), generation prompt <|assistant|>\n; the model
 *                   stops on eos 11
 *   BN_CHAT_NONE:   (base models) BOS, then the contents, trimmed, joined by "\n"; no roles, no
 *                   generation prompt */
int bn_chat_render(const bn_tokenizer *tk, enum bn_chat_kind kind, const bn_chat_msg *msgs,
                   size_t n, int add_generation_prompt, bn_tokens *out, bn_error *err);

/* The same rendering as text (control tokens spelled out), for debugging and tests.
 * *text is malloc'd and NUL-terminated; the caller frees it. */
int bn_chat_render_text(enum bn_chat_kind kind, const bn_chat_msg *msgs, size_t n,
                        int add_generation_prompt, char **text, size_t *len, bn_error *err);

/* The model's chat format: v->chat if set, else guessed from v->chat_template
 * ("<|start_header_id|>" -> LLAMA3; "<|assistant|>" and "<|user|>" -> FALCON3; "BITNETAssistant",
 * "capitalize" or "User: " -> BITNET), else NONE for a SentencePiece vocabulary without a
 * template (1bitLLM), else BITNET (the default for BitNet-b1.58-2B-4T). */
enum bn_chat_kind bn_chat_kind_of_vocab(const bn_vocab *v);
/* "bitnet" / "llama3" (also "llama-3") / "falcon3" / "none" -> kind; -1 for anything else
 * (config override). */
int bn_chat_kind_parse(const char *name);
const char *bn_chat_kind_name(enum bn_chat_kind kind);

/* ---- Vocabulary sources (text/vocab_json.c, text/vocab_builtin.c) -------------------- */

/* Loads a Hugging Face tokenizer.json (and optionally tokenizer_config.json, may be NULL, for
 * chat_template / bos / eos): byte-level BPE (Llama-3, GPT-2, Falcon3 pre-tokenizers) or the
 * SentencePiece kind (Llama-2: byte_fallback + U+2581; scores from merge ranks, vocab_json.c). *out is a new vocab the caller frees with bn_vocab_free. Errors
 * name the file and the field, e.g. "tokenizer.json: model.vocab: token id 5 appears twice". */
int bn_vocab_load_hf(const char *tokenizer_json, const char *tokenizer_config, bn_vocab **out,
                     bn_error *err);
/* Same from memory (config_json may be NULL); name is used in error messages. */
int bn_vocab_load_hf_mem(const char *json, size_t len, const char *config_json, size_t config_len,
                         const char *name, bn_vocab **out, bn_error *err);

/* A small deterministic byte-level vocabulary for synthetic models: ids 0-255 are the bytes (id ==
 * byte value), then the merges of a fixed list of English words (all 410 of them from n_vocab
 * 671 on, as many as fit below), then <|begin_of_text|>, <|end_of_text|>, <|eot_id|>,
 * <|start_header_id|>, <|end_header_id|>, then <|reserved_special_token_N|> up to n_vocab tokens.
 * n_vocab must be at least bn_vocab_builtin_min() (261). chat = BITNET, pre = LLAMA3; bos, eos and
 * eot are set. A pure function of n_vocab. Caller frees with bn_vocab_free. */
bn_vocab *bn_vocab_builtin(uint32_t n_vocab, bn_error *err);
uint32_t bn_vocab_builtin_min(void);

/* Built-in vocabularies in the shape of each family's real one, for synthetic models:
 *  BN_VOCAB_LLAMA3   bn_vocab_builtin() (2B-4T, Llama3-8B-1.58: chat LLAMA3 for the latter is
 *                    set by the caller if needed)
 *  BN_VOCAB_SPM      SentencePiece like Llama-2 / 1bitLLM: <unk> 0, <s> 1, </s> 2, <0x00>..<0xFF>
 *                    3..258, scored pieces with U+2581, then the added <pad> and </line> as the
 *                    last two ids (USER_DEFINED); model SPM, space_prefix 1, chat NONE, bos 1, eos 2
 *  BN_VOCAB_FALCON3  byte-level BPE with Falcon3's specials first (<|endoftext|> = id 11 = eos,
 *                    <|system|>, <|user|>, <|assistant|>), pre FALCON3, chat FALCON3, no bos
 * A pure function of (kind, n_vocab); NULL with err set if n_vocab is too small. */
enum bn_vocab_kind { BN_VOCAB_LLAMA3 = 1, BN_VOCAB_SPM = 2, BN_VOCAB_FALCON3 = 3 };
bn_vocab *bn_vocab_builtin_kind(enum bn_vocab_kind kind, uint32_t n_vocab, bn_error *err);

#endif
