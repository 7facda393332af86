/* The tokenizer: assembles the pre-tokenizer, the byte-level tables and the BPE merge table for
 * one vocabulary, and encodes / decodes with them. See tokenizer.h for the contract.
 * SentencePiece vocabularies (vocab->model == BN_TOKM_SPM) are encoded by spm.c instead; the
 * decoding side (token bytes, streams, stops) is shared.
 *
 * Encoding a text = split it into pre-tokens (pretokenize.c); for each pre-token, if the model
 * sets ignore_merges and the pre-token's bytes are a whole token, that token; else start from
 * one byte token per byte and apply merges by rank (bpe.c). Byte-level BPE needs no UTF-8
 * awareness past the split: every byte has a token. */
#include "text/tokenizer.h"

#include <stdlib.h>
#include <string.h>

#include "text/text_internal.h"

struct bn_tokenizer {
    const bn_vocab *v;             /* borrowed */
    char *bytes;                   /* each token's raw bytes, back to back */
    uint32_t *bytes_off;           /* n_tokens + 1 offsets into bytes */
    bn_str_index bytes_ix;         /* raw bytes -> id, ordinary (non-control) tokens only */
    int32_t byte_tok[256];         /* the single-byte token of each byte */
    bn_merge_table merges;
    bn_pretok *pre;
    bn_spm *spm;                   /* SentencePiece encoder (model SPM), else NULL */
    int32_t *controls;             /* ids of control tokens, for bn_tokenize_special_append */
    size_t n_controls;
    uint8_t control_first[256];    /* is some control token's first byte this byte? */
};

/* ---- token ids array ---- */

int bn_tokens_push(bn_tokens *t, int32_t id, bn_error *err)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        int32_t *ids = realloc(t->ids, cap * sizeof *ids);
        if (!ids) return bn_err(err, "out of memory for %zu token ids", cap);
        t->ids = ids;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
    return 0;
}

void bn_tokens_free(bn_tokens *t)
{
    free(t->ids);
    memset(t, 0, sizeof *t);
}

/* ---- construction ---- */

static int token_is_verbatim(const bn_vocab *v, uint32_t id)
{
    /* Control and user-defined (added) tokens are stored as plain text, not in byte-level form. */
    return v->type[id] == BN_TOK_CONTROL || v->type[id] == BN_TOK_USER_DEFINED;
}

/* Undoes the byte-level mapping of every token. A character outside GPT-2's 256 (which a
 * well-formed byte-level token never has) is kept as its own UTF-8 bytes. */
static int build_token_bytes(bn_tokenizer *tk, bn_error *err)
{
    const bn_vocab *v = tk->v;
    size_t total = v->tok_off[v->n_tokens];   /* unmapping never makes a token longer */
    tk->bytes = malloc(total ? total : 1);
    tk->bytes_off = malloc(((size_t)v->n_tokens + 1) * sizeof *tk->bytes_off);
    if (!tk->bytes || !tk->bytes_off) return bn_err(err, "out of memory decoding %u tokens", v->n_tokens);
    uint32_t o = 0;
    for (uint32_t id = 0; id < v->n_tokens; id++) {
        tk->bytes_off[id] = o;
        size_t len;
        const uint8_t *s = (const uint8_t *)bn_vocab_token(v, id, &len);
        if (v->model == BN_TOKM_SPM) {
            o += (uint32_t)bn_spm_piece_bytes(v, id, tk->bytes + o);
            continue;
        }
        if (token_is_verbatim(v, id)) {
            memcpy(tk->bytes + o, s, len);
            o += (uint32_t)len;
            continue;
        }
        for (size_t i = 0; i < len;) {
            uint32_t cp;
            size_t n = bn_utf8_decode(s + i, len - i, &cp);
            int b = n ? bn_cp_to_byte(cp) : -1;
            if (b >= 0) {
                tk->bytes[o++] = (char)b;
            } else {
                if (!n) n = 1;   /* invalid UTF-8 in a token string: copy the byte */
                memcpy(tk->bytes + o, s + i, n);
                o += (uint32_t)n;
            }
            i += n;
        }
    }
    tk->bytes_off[v->n_tokens] = o;
    return 0;
}

static int build_indexes(bn_tokenizer *tk, bn_error *err)
{
    const bn_vocab *v = tk->v;
    uint8_t *keep = malloc(v->n_tokens);
    if (!keep) return bn_err(err, "out of memory");
    size_t n_controls = 0;
    for (uint32_t id = 0; id < v->n_tokens; id++) {
        keep[id] = v->type[id] != BN_TOK_CONTROL;
        n_controls += !keep[id];
    }
    int rc = bn_str_index_build(&tk->bytes_ix, tk->bytes, tk->bytes_off, v->n_tokens, keep, err);
    free(keep);
    if (rc) return rc;
    for (int b = 0; b < 256 && v->model == BN_TOKM_BPE; b++) {   /* SPM: bn_spm_new checks <0xXX> */
        char c = (char)b;
        tk->byte_tok[b] = bn_str_index_find(&tk->bytes_ix, &c, 1);
        if (tk->byte_tok[b] < 0)
            return bn_err(err, "the vocabulary has no token for byte 0x%02x (byte-level BPE needs all 256)", b);
    }
    tk->controls = malloc((n_controls ? n_controls : 1) * sizeof *tk->controls);
    if (!tk->controls) return bn_err(err, "out of memory");
    for (uint32_t id = 0; id < v->n_tokens; id++) {
        if (v->type[id] != BN_TOK_CONTROL || tk->bytes_off[id + 1] == tk->bytes_off[id]) continue;
        tk->controls[tk->n_controls++] = (int32_t)id;
        tk->control_first[(uint8_t)tk->bytes[tk->bytes_off[id]]] = 1;
    }
    return 0;
}

bn_tokenizer *bn_tokenizer_new(const bn_vocab *v, bn_error *err)
{
    bn_tokenizer *tk = calloc(1, sizeof *tk);
    if (!tk) {
        bn_err(err, "out of memory");
        return NULL;
    }
    tk->v = v;
    int rc = bn_vocab_validate(v, err) || build_token_bytes(tk, err) || build_indexes(tk, err);
    if (!rc && v->model == BN_TOKM_SPM)   /* no merge table, no regex split */
        rc = !(tk->spm = bn_spm_new(v, err));
    else if (!rc)
        rc = bn_merge_table_build(&tk->merges, v, &tk->bytes_ix, err) ||
             !(tk->pre = bn_pretok_new((enum bn_pre_kind)v->pre, err));
    if (rc) {
        bn_err_prefix(err, "tokenizer");
        bn_tokenizer_free(tk);
        return NULL;
    }
    return tk;
}

void bn_tokenizer_free(bn_tokenizer *tk)
{
    if (!tk) return;
    free(tk->bytes);
    free(tk->bytes_off);
    bn_str_index_free(&tk->bytes_ix);
    bn_merge_table_free(&tk->merges);
    bn_pretok_free(tk->pre);
    bn_spm_free(tk->spm);
    free(tk->controls);
    free(tk);
}

const bn_vocab *bn_tokenizer_vocab(const bn_tokenizer *tk) { return tk->v; }

/* ---- encoding ---- */

/* Per-call state: the output and reusable scratch for the merge loop, so a shared tokenizer is
 * never written to. */
typedef struct encoder {
    const bn_tokenizer *tk;
    bn_tokens *out;
    int32_t *syms;
    void *scratch;
    size_t cap;          /* syms and scratch hold this many symbols */
    bn_error *err;
} encoder;

static int encoder_reserve(encoder *e, size_t n)
{
    if (n <= e->cap) return 0;
    size_t cap = n < 256 ? 256 : n;
    int32_t *syms = realloc(e->syms, cap * sizeof *syms);
    if (syms) e->syms = syms;
    void *scratch = realloc(e->scratch, bn_bpe_scratch_size(cap));
    if (scratch) e->scratch = scratch;
    if (!syms || !scratch) return bn_err(e->err, "out of memory for a %zu-byte pre-token", n);
    e->cap = cap;
    return 0;
}

static int encode_piece(void *ctx, const char *piece, size_t len)
{
    encoder *e = ctx;
    const bn_tokenizer *tk = e->tk;
    if (tk->v->ignore_merges) {
        int32_t id = bn_str_index_find(&tk->bytes_ix, piece, len);
        if (id >= 0) return bn_tokens_push(e->out, id, e->err);
    }
    if (encoder_reserve(e, len)) return -1;
    for (size_t i = 0; i < len; i++) e->syms[i] = tk->byte_tok[(uint8_t)piece[i]];
    size_t n = bn_bpe_merge(&tk->merges, e->syms, len, e->scratch);
    for (size_t i = 0; i < n; i++)
        if (bn_tokens_push(e->out, e->syms[i], e->err)) return -1;
    return 0;
}

int bn_tokenize_append(const bn_tokenizer *tk, const char *text, size_t len, bn_tokens *out,
                       bn_error *err)
{
    if (tk->spm) return bn_spm_encode(tk->spm, text, len, 0, out, err);
    encoder e = {.tk = tk, .out = out, .err = err};
    int rc = bn_pretok_split(tk->pre, text, len, encode_piece, &e, err);
    free(e.syms);
    free(e.scratch);
    return rc ? -1 : 0;
}

int bn_tokenize(const bn_tokenizer *tk, const char *text, size_t len, int32_t **ids, size_t *n,
                bn_error *err)
{
    bn_tokens t = {0};
    if (bn_tokenize_append(tk, text, len, &t, err)) {
        bn_tokens_free(&t);
        return -1;
    }
    *ids = t.ids;
    *n = t.n;
    return 0;
}

/* The longest control token starting at s[0..len), or -1. */
static int32_t control_at(const bn_tokenizer *tk, const char *s, size_t len)
{
    int32_t best = -1;
    size_t best_len = 0;
    for (size_t i = 0; i < tk->n_controls; i++) {
        int32_t id = tk->controls[i];
        size_t cl = tk->bytes_off[id + 1] - tk->bytes_off[id];
        if (cl <= len && cl > best_len && memcmp(s, tk->bytes + tk->bytes_off[id], cl) == 0) {
            best = id;
            best_len = cl;
        }
    }
    return best;
}

int32_t bn_tokenizer_control_id(const bn_tokenizer *tk, const char *name)
{
    size_t len = strlen(name);
    int32_t id = control_at(tk, name, len);
    return id >= 0 && tk->bytes_off[id + 1] - tk->bytes_off[id] == len ? id : -1;
}

int32_t bn_tokenizer_marker_id(const bn_tokenizer *tk, const char *name)
{
    int32_t id = bn_tokenizer_control_id(tk, name);
    return id >= 0 ? id : bn_str_index_find(&tk->bytes_ix, name, strlen(name));
}

int bn_tokenize_special_append(const bn_tokenizer *tk, const char *text, size_t len,
                               bn_tokens *out, bn_error *err)
{
    if (tk->spm) return bn_spm_encode(tk->spm, text, len, 1, out, err);
    /* HF extracts added tokens leftmost-longest first and encodes the text between them. */
    size_t seg = 0;
    for (size_t i = 0; i < len; i++) {
        if (!tk->control_first[(uint8_t)text[i]]) continue;
        int32_t id = control_at(tk, text + i, len - i);
        if (id < 0) continue;
        if (bn_tokenize_append(tk, text + seg, i - seg, out, err) || bn_tokens_push(out, id, err))
            return -1;
        i += tk->bytes_off[id + 1] - tk->bytes_off[id] - 1;
        seg = i + 1;
    }
    return bn_tokenize_append(tk, text + seg, len - seg, out, err);
}

/* ---- decoding ---- */

const char *bn_token_bytes(const bn_tokenizer *tk, int32_t id, size_t *len)
{
    if (id < 0 || (uint32_t)id >= tk->v->n_tokens) {
        *len = 0;
        return NULL;
    }
    *len = tk->bytes_off[id + 1] - tk->bytes_off[id];
    return tk->bytes + tk->bytes_off[id];
}

int bn_token_is_control(const bn_tokenizer *tk, int32_t id)
{
    return id >= 0 && (uint32_t)id < tk->v->n_tokens && tk->v->type[id] == BN_TOK_CONTROL;
}

int bn_token_is_eog(const bn_tokenizer *tk, int32_t id)
{
    return id >= 0 && (id == tk->v->eos || id == tk->v->eot);
}

/* SentencePiece with space_prefix: the encoder put one " " before every raw fragment (at the
 * start and after each special token), so decoding drops one leading space of the first
 * ordinary token there; that makes bn_detokenize the exact inverse of bn_tokenize. */
static size_t prefix_drop(const bn_tokenizer *tk, int32_t id, int *at_fragment_start)
{
    const bn_vocab *v = tk->v;
    if (v->model != BN_TOKM_SPM || !v->space_prefix) return 0;
    if (bn_spm_is_special(v, (uint32_t)id)) {
        *at_fragment_start = 1;
        return 0;
    }
    int first = *at_fragment_start;
    *at_fragment_start = 0;
    return first && tk->bytes_off[id + 1] > tk->bytes_off[id] && tk->bytes[tk->bytes_off[id]] == ' ';
}

int bn_detokenize(const bn_tokenizer *tk, const int32_t *ids, size_t n, unsigned flags,
                  char **text, size_t *len, bn_error *err)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        if (!bn_token_bytes(tk, ids[i], &l))
            return bn_err(err, "token id %d at position %zu is outside the vocabulary of %u", ids[i], i,
                          tk->v->n_tokens);
        if (!((flags & BN_DECODE_SKIP_CONTROL) && bn_token_is_control(tk, ids[i]))) total += l;
    }
    char *buf = malloc(total + 1);
    if (!buf) return bn_err(err, "out of memory decoding %zu tokens", n);
    size_t o = 0;
    int at_start = 1;
    for (size_t i = 0; i < n; i++) {
        size_t drop = prefix_drop(tk, ids[i], &at_start);
        if ((flags & BN_DECODE_SKIP_CONTROL) && bn_token_is_control(tk, ids[i])) continue;
        size_t l;
        const char *b = bn_token_bytes(tk, ids[i], &l);
        memcpy(buf + o, b + drop, l - drop);
        o += l - drop;
    }
    buf[o] = 0;
    *text = buf;
    *len = o;
    return 0;
}
