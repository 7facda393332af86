/* SentencePiece BPE (vocab->model == BN_TOKM_SPM): the tokenizer of Llama-2 and 1bitLLM, as
 * llama.cpp runs it (bitnet-families.md s.6; fork llama-vocab.cpp llm_tokenizer_spm):
 *
 *  1. Special partition: the text is cut at every occurrence of a special token's string, the
 *     longest special first over all fragments (then the next longest, ...). USER_DEFINED tokens
 *     (e.g. </line>, <pad>) are always matched, as llama.cpp and HF do; CONTROL and UNKNOWN ones
 *     (<s>, </s>, <unk>) only from bn_tokenize_special_append: in user text they are plain text,
 *     the rule of the whole text layer.
 *  2. Every raw fragment (each one is first or follows a special) gets " " prepended when
 *     space_prefix (add_dummy_prefix).
 *  3. ' ' -> U+2581, the text is split into UTF-8 characters, and the adjacent pair whose
 *     concatenation is a piece with the highest score is merged, again and again (ties: the
 *     leftmost pair). A max-heap of candidate pairs keeps this O(n log n).
 *  4. A final symbol that is not a piece becomes its bytes' <0xXX> tokens (byte fallback).
 *
 * Exactness (decode(encode(s)) == s for every byte string) needs two choices llama.cpp does not
 * make, both for inputs no real text has:
 *  - a literal U+2581 in the input would decode as a space: it is byte-fallback encoded
 *    instead (<0xE2><0x96><0x81>, never merged), so it comes back as itself;
 *  - bytes that are not valid UTF-8 are one raw symbol each, byte-fallback encoded (llama.cpp
 *    does the same in effect: no piece contains them);
 *  - a space whose U+2581 is not a piece (no real vocabulary) falls back to <0x20>, not to the
 *    three bytes of U+2581.
 * Merges only produce ordinary pieces (NORMAL, or UNDEFINED from sources without types): never a
 * control, byte or unused token, so "<s>" typed by a user can never merge into BOS. */
#include <stdlib.h>
#include <string.h>

#include "text/text_internal.h"

struct bn_spm {
    const bn_vocab *v;
    bn_str_index pieces;        /* ordinary pieces by their text (with U+2581) */
    size_t max_piece;           /* longest ordinary piece, bytes: longer pairs cannot merge */
    int32_t byte_tok[256];      /* <0xXX> */
    int32_t *specials;          /* partition order: longest first, then lower id */
    size_t n_specials;
};

static const char SP[3] = {(char)0xe2, (char)0x96, (char)0x81};   /* U+2581, the space marker */

static int is_ordinary(uint8_t type) { return type == BN_TOK_NORMAL || type == BN_TOK_UNDEFINED; }

int bn_spm_is_special(const bn_vocab *v, uint32_t id)
{
    uint8_t t = v->type[id];
    return t == BN_TOK_CONTROL || t == BN_TOK_USER_DEFINED || t == BN_TOK_UNKNOWN;
}

/* "<0xHH>" (upper- or lower-case hex) -> HH, or -1. */
static int byte_piece_value(const char *s, size_t len)
{
    if (len != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

size_t bn_spm_piece_bytes(const bn_vocab *v, uint32_t id, char *out)
{
    size_t len;
    const char *s = bn_vocab_token(v, id, &len);
    if (v->type[id] == BN_TOK_BYTE) {
        int b = byte_piece_value(s, len);
        if (b >= 0) {
            out[0] = (char)b;
            return 1;
        }
    }
    if (bn_spm_is_special(v, id)) {   /* verbatim, as the partition matched it */
        memcpy(out, s, len);
        return len;
    }
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        if (len - i >= 3 && memcmp(s + i, SP, 3) == 0) {
            out[o++] = ' ';
            i += 3;
        } else {
            out[o++] = s[i++];
        }
    }
    return o;
}

/* Specials in partition order, longest first (llama.cpp's cache_special_tokens), ties by id:
 * sorted as keys (UINT32_MAX - length) << 32 | id. */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int sort_specials(bn_spm *s)
{
    uint64_t *keys = malloc((s->n_specials ? s->n_specials : 1) * sizeof *keys);
    if (!keys) return -1;
    for (size_t i = 0; i < s->n_specials; i++) {
        uint32_t id = (uint32_t)s->specials[i];
        uint64_t len = s->v->tok_off[id + 1] - s->v->tok_off[id];
        keys[i] = (UINT32_MAX - len) << 32 | id;
    }
    qsort(keys, s->n_specials, sizeof *keys, cmp_u64);
    for (size_t i = 0; i < s->n_specials; i++) s->specials[i] = (int32_t)(uint32_t)keys[i];
    free(keys);
    return 0;
}

bn_spm *bn_spm_new(const bn_vocab *v, bn_error *err)
{
    bn_spm *s = calloc(1, sizeof *s);
    uint8_t *keep = malloc(v->n_tokens);
    if (s) s->specials = malloc((size_t)v->n_tokens * sizeof *s->specials);
    if (!s || !keep || !s->specials) {
        free(keep);
        bn_spm_free(s);
        bn_err(err, "out of memory");
        return NULL;
    }
    s->v = v;
    for (int b = 0; b < 256; b++) s->byte_tok[b] = -1;
    for (uint32_t id = 0; id < v->n_tokens; id++) {
        size_t len;
        const char *t = bn_vocab_token(v, id, &len);
        keep[id] = is_ordinary(v->type[id]);
        if (keep[id] && len > s->max_piece) s->max_piece = len;
        int b = v->type[id] == BN_TOK_BYTE ? byte_piece_value(t, len) : -1;
        if (b >= 0 && s->byte_tok[b] < 0) s->byte_tok[b] = (int32_t)id;
        if (bn_spm_is_special(v, id) && len) s->specials[s->n_specials++] = (int32_t)id;
    }
    int rc = bn_str_index_build(&s->pieces, v->text, v->tok_off, v->n_tokens, keep, err);
    free(keep);
    for (int b = 0; b < 256 && !rc; b++)
        if (s->byte_tok[b] < 0)
            rc = bn_err(err, "the SentencePiece vocabulary has no byte-fallback token <0x%02X> (all 256 are needed)", b);
    if (!rc && sort_specials(s)) rc = bn_err(err, "out of memory");
    if (rc) {
        bn_spm_free(s);
        return NULL;
    }
    return s;
}

void bn_spm_free(bn_spm *s)
{
    if (!s) return;
    bn_str_index_free(&s->pieces);
    free(s->specials);
    free(s);
}

/* ---- one raw fragment ---- */

typedef struct {
    uint32_t start, n;     /* bytes buf[start..start+n); n == 0 once merged into its left */
    int32_t prev, next;
    uint8_t raw;           /* byte-fallback only, never merged */
} sym;

typedef struct {
    float score;
    uint32_t left, right, size;
} bigram;

typedef struct {
    const bn_spm *s;
    char *buf;
    sym *syms;
    bigram *heap;
    size_t n_heap, cap_heap;
    bn_error *err;
} frag_ctx;

/* Heap order: higher score first; equal scores, the leftmost pair. */
static int above(const bigram *a, const bigram *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int heap_push(frag_ctx *c, bigram b)
{
    if (c->n_heap == c->cap_heap) {
        size_t cap = c->cap_heap ? c->cap_heap * 2 : 64;
        bigram *h = realloc(c->heap, cap * sizeof *h);
        if (!h) return bn_err(c->err, "out of memory in the SentencePiece encoder");
        c->heap = h;
        c->cap_heap = cap;
    }
    size_t i = c->n_heap++;
    while (i > 0 && above(&b, &c->heap[(i - 1) / 2])) {
        c->heap[i] = c->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    c->heap[i] = b;
    return 0;
}

static bigram heap_pop(frag_ctx *c)
{
    bigram top = c->heap[0], last = c->heap[--c->n_heap];
    size_t i = 0, n = c->n_heap;
    for (;;) {
        size_t l = 2 * i + 1, best = i;
        const bigram *bv = &last;
        if (l < n && above(&c->heap[l], bv)) best = l, bv = &c->heap[l];
        if (l + 1 < n && above(&c->heap[l + 1], bv)) best = l + 1;
        if (best == i) break;
        c->heap[i] = c->heap[best];
        i = best;
    }
    if (n) c->heap[i] = last;
    return top;
}

static int try_pair(frag_ctx *c, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) return 0;
    const sym *a = &c->syms[l], *b = &c->syms[r];
    if (a->raw || b->raw || a->n + b->n > c->s->max_piece) return 0;
    int32_t id = bn_str_index_find(&c->s->pieces, c->buf + a->start, a->n + b->n);
    if (id < 0) return 0;
    return heap_push(c, (bigram){c->s->v->scores[id], (uint32_t)l, (uint32_t)r, a->n + b->n});
}

/* Escapes text into buf as symbols; returns the symbol count. */
static int32_t split_symbols(frag_ctx *c, const char *text, size_t len, int prefix)
{
    uint32_t o = 0;
    int32_t n = 0;
#define ADD(p, l, israw) do { memcpy(c->buf + o, (p), (l)); \
        c->syms[n] = (sym){o, (uint32_t)(l), n - 1, n + 1, (israw)}; o += (uint32_t)(l); n++; } while (0)
    if (prefix) ADD(SP, 3, 0);
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = text[i] == ' ' ? 1 : bn_utf8_decode((const uint8_t *)text + i, len - i, &cp);
        if (text[i] == ' ') {
            ADD(SP, 3, 0);
        } else if (k == 0) {
            ADD(text + i, 1, 1);
            k = 1;
        } else if (cp == 0x2581) {
            for (int j = 0; j < 3; j++) ADD(text + i + j, 1, 1);
        } else {
            ADD(text + i, k, 0);
        }
        i += k;
    }
#undef ADD
    if (n) c->syms[n - 1].next = -1;
    return n;
}

static int emit_symbol(frag_ctx *c, const sym *y, bn_tokens *out)
{
    const bn_spm *s = c->s;
    const char *p = c->buf + y->start;
    if (!y->raw) {
        int32_t id = bn_str_index_find(&s->pieces, p, y->n);
        if (id >= 0) return bn_tokens_push(out, id, c->err);
        /* Not a piece: merged symbols always are, so this is one character. */
        if (y->n == 3 && memcmp(p, SP, 3) == 0) return bn_tokens_push(out, s->byte_tok[' '], c->err);
    }
    for (uint32_t i = 0; i < y->n; i++)
        if (bn_tokens_push(out, s->byte_tok[(uint8_t)p[i]], c->err)) return -1;
    return 0;
}

static int encode_fragment(frag_ctx *c, const char *text, size_t len, bn_tokens *out)
{
    if (len == 0) return 0;
    /* Each input byte becomes at most 3 bytes and one symbol; the prefix adds 3 and one. */
    if (len > (SIZE_MAX - 3) / 3 || 3 * len + 3 > UINT32_MAX)
        return bn_err(c->err, "a %zu-byte text is too long for the SentencePiece encoder", len);
    c->buf = malloc(3 * len + 3);
    c->syms = malloc((len + 1) * sizeof *c->syms);
    c->n_heap = 0;
    int rc = (!c->buf || !c->syms) ? bn_err(c->err, "out of memory encoding %zu bytes", len) : 0;
    int32_t n = rc ? 0 : split_symbols(c, text, len, c->s->v->space_prefix != 0);
    for (int32_t i = 1; i < n && !rc; i++) rc = try_pair(c, i - 1, i);
    while (c->n_heap && !rc) {
        bigram b = heap_pop(c);
        sym *l = &c->syms[b.left], *r = &c->syms[b.right];
        /* Stale: a side was merged away or grew since the pair was queued. */
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) c->syms[r->next].prev = (int32_t)b.left;
        rc = try_pair(c, l->prev, (int32_t)b.left) || try_pair(c, (int32_t)b.left, l->next);
    }
    for (int32_t i = 0; n && i >= 0 && !rc; i = c->syms[i].next) rc = emit_symbol(c, &c->syms[i], out);
    free(c->buf);
    free(c->syms);
    c->buf = NULL;
    c->syms = NULL;
    return rc ? -1 : 0;
}

/* ---- special partition ---- */

typedef struct {
    size_t off, len;
    int32_t id;            /* -1: raw text */
} frag;

typedef struct {
    frag *f;
    size_t n, cap;
} frag_list;

static int frag_add(frag_list *l, size_t off, size_t len, int32_t id)
{
    if (id < 0 && len == 0) return 0;   /* llama.cpp never makes empty raw fragments */
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        frag *f = realloc(l->f, cap * sizeof *f);
        if (!f) return -1;
        l->f = f;
        l->cap = cap;
    }
    l->f[l->n++] = (frag){off, len, id};
    return 0;
}

/* The first occurrence of t[0..tl) (tl >= 1) in s[0..n), or NULL. */
static const char *find_bytes(const char *s, size_t n, const char *t, size_t tl)
{
    for (const char *end = s + n; (size_t)(end - s) >= tl;) {
        const char *p = memchr(s, t[0], (size_t)(end - s) - tl + 1);
        if (!p) return NULL;
        if (memcmp(p, t, tl) == 0) return p;
        s = p + 1;
    }
    return NULL;
}

/* Splits every raw fragment of *cur at each occurrence of token id's string. */
static int split_at(const bn_vocab *v, const char *text, int32_t id, frag_list *cur, frag_list *next)
{
    size_t tl;
    const char *t = bn_vocab_token(v, (uint32_t)id, &tl);
    next->n = 0;
    for (size_t k = 0; k < cur->n; k++) {
        frag f = cur->f[k];
        if (f.id >= 0 || f.len < tl) {
            if (frag_add(next, f.off, f.len, f.id)) return -1;
            continue;
        }
        size_t pos = f.off, end = f.off + f.len;
        for (;;) {
            const char *hit = find_bytes(text + pos, end - pos, t, tl);
            if (!hit) break;
            size_t at = (size_t)(hit - text);
            if (frag_add(next, pos, at - pos, -1) || frag_add(next, at, tl, id)) return -1;
            pos = at + tl;
        }
        if (frag_add(next, pos, end - pos, -1)) return -1;
    }
    frag_list tmp = *cur;
    *cur = *next;
    *next = tmp;
    return 0;
}

int bn_spm_encode(const bn_spm *s, const char *text, size_t len, int parse_control, bn_tokens *out,
                  bn_error *err)
{
    frag_list cur = {0}, next = {0};
    frag_ctx c = {.s = s, .err = err};
    int rc = frag_add(&cur, 0, len, -1);
    for (size_t i = 0; i < s->n_specials && !rc; i++) {
        int32_t id = s->specials[i];
        if (!parse_control && s->v->type[id] != BN_TOK_USER_DEFINED) continue;
        rc = split_at(s->v, text, id, &cur, &next);
    }
    if (rc) rc = bn_err(err, "out of memory splitting special tokens");
    for (size_t k = 0; k < cur.n && !rc; k++)
        rc = cur.f[k].id >= 0 ? bn_tokens_push(out, cur.f[k].id, err)
                              : encode_fragment(&c, text + cur.f[k].off, cur.f[k].len, out);
    free(cur.f);
    free(next.f);
    free(c.heap);
    return rc ? -1 : 0;
}
