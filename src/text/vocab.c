#include "text/vocab.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

bn_vocab *bn_vocab_alloc(uint32_t n_tokens, size_t text_bytes, uint32_t n_merges)
{
    if (n_tokens == 0 || n_tokens > (1u << 24) || text_bytes > UINT32_MAX || n_merges > (1u << 24))
        return NULL;
    bn_vocab *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->n_tokens = n_tokens;
    v->n_merges = n_merges;
    v->tok_off = calloc((size_t)n_tokens + 1, sizeof *v->tok_off);
    v->text = malloc(text_bytes ? text_bytes : 1);
    v->type = calloc(n_tokens, 1);
    v->merges = calloc((size_t)n_merges * 2 + 1, sizeof *v->merges);
    v->bos = v->eos = v->eot = v->pad = -1;
    v->pre = BN_PRE_LLAMA3;
    if (!v->tok_off || !v->text || !v->type || !v->merges) {
        bn_vocab_free(v);
        return NULL;
    }
    return v;
}

float *bn_vocab_scores_alloc(bn_vocab *v)
{
    if (!v->scores) v->scores = calloc(v->n_tokens, sizeof *v->scores);
    return v->scores;
}

void bn_vocab_free(bn_vocab *v)
{
    if (!v) return;
    free(v->tok_off);
    free(v->text);
    free(v->type);
    free(v->merges);
    free(v->chat_template);
    free(v->scores);
    free(v->index_slots);
    free(v);
}

static uint32_t slot_of(uint64_t h, uint32_t cap) { return (uint32_t)(h & (cap - 1)); }

int bn_vocab_index(bn_vocab *v, bn_error *err)
{
    if (v->index_slots) return 0;
    uint32_t cap = 16;
    while (cap < v->n_tokens * 2u) cap <<= 1;
    uint32_t *slots = malloc((size_t)cap * sizeof *slots);
    if (!slots) return bn_err(err, "out of memory indexing %u tokens", v->n_tokens);
    memset(slots, 0xff, (size_t)cap * sizeof *slots);
    for (uint32_t id = 0; id < v->n_tokens; id++) {
        size_t len;
        const char *s = bn_vocab_token(v, id, &len);
        uint32_t i = slot_of(XXH3_64bits(s, len), cap);
        for (;; i = (i + 1) & (cap - 1)) {
            if (slots[i] == UINT32_MAX) { slots[i] = id; break; }
            size_t olen;
            const char *o = bn_vocab_token(v, slots[i], &olen);
            if (olen == len && memcmp(o, s, len) == 0) {
                uint32_t first = slots[i];   /* read before the free */
                free(slots);
                return bn_err(err, "tokens %u and %u are the same string '%.*s'",
                              first, id, (int)(len > 40 ? 40 : len), s);
            }
        }
    }
    v->index_slots = slots;
    v->index_cap = cap;
    return 0;
}

int32_t bn_vocab_find(const bn_vocab *v, const char *s, size_t len)
{
    if (!v->index_slots) return -1;
    uint32_t cap = v->index_cap;
    for (uint32_t i = slot_of(XXH3_64bits(s, len), cap);; i = (i + 1) & (cap - 1)) {
        uint32_t id = v->index_slots[i];
        if (id == UINT32_MAX) return -1;
        size_t olen;
        const char *o = bn_vocab_token(v, id, &olen);
        if (olen == len && memcmp(o, s, len) == 0) return (int32_t)id;
    }
}

int bn_vocab_set_merge(bn_vocab *v, uint32_t rank, const char *m, size_t len, bn_error *err)
{
    if (rank >= v->n_merges) return bn_err(err, "merge %u out of range", rank);
    /* Split on the single space that separates the two sides; neither side contains a raw
     * space in byte-level BPE (space is "Ġ"). */
    const char *sp = memchr(m, ' ', len);
    if (!sp || sp == m || sp == m + len - 1 || memchr(sp + 1, ' ', (size_t)(m + len - sp - 1)))
        return bn_err(err, "merge %u '%.*s' is not two tokens separated by one space", rank,
                      (int)(len > 60 ? 60 : len), m);
    int32_t l = bn_vocab_find(v, m, (size_t)(sp - m));
    int32_t r = bn_vocab_find(v, sp + 1, (size_t)(m + len - sp - 1));
    if (l < 0 || r < 0)
        return bn_err(err, "merge %u '%.*s' names a token missing from the vocabulary", rank,
                      (int)(len > 60 ? 60 : len), m);
    v->merges[2 * rank] = (uint32_t)l;
    v->merges[2 * rank + 1] = (uint32_t)r;
    return 0;
}

int bn_vocab_validate(const bn_vocab *v, bn_error *err)
{
    if (v->tok_off[0] != 0) return bn_err(err, "token offsets do not start at 0");
    for (uint32_t i = 0; i < v->n_tokens; i++) {
        if (v->tok_off[i + 1] < v->tok_off[i])
            return bn_err(err, "token %u has a negative length", i);
        if (v->type[i] > BN_TOK_BYTE) return bn_err(err, "token %u has unknown type %u", i, v->type[i]);
    }
    for (uint64_t i = 0; i < 2ull * v->n_merges; i++)
        if (v->merges[i] >= v->n_tokens) return bn_err(err, "merge %llu names token id %u past the vocabulary",
                                                       (unsigned long long)(i / 2), v->merges[i]);
    const int32_t sp[4] = {v->bos, v->eos, v->eot, v->pad};
    static const char *names[4] = {"bos", "eos", "eot", "pad"};
    for (int i = 0; i < 4; i++)
        if (sp[i] < -1 || sp[i] >= (int32_t)v->n_tokens)
            return bn_err(err, "%s token id %d is outside the vocabulary of %u", names[i], sp[i], v->n_tokens);
    if (v->model != BN_TOKM_BPE && v->model != BN_TOKM_SPM) return bn_err(err, "unknown tokenizer model kind %u", v->model);
    /* SPM has no pre-tokenizer: its pre field is not looked at. */
    if (v->model == BN_TOKM_BPE && v->pre != BN_PRE_LLAMA3 && v->pre != BN_PRE_GPT2 && v->pre != BN_PRE_FALCON3)
        return bn_err(err, "unknown pre-tokenizer kind %u", v->pre);
    if (v->chat > BN_CHAT_FALCON3) return bn_err(err, "unknown chat template kind %u", v->chat);
    if (v->space_prefix > 1) return bn_err(err, "space_prefix is %u, not 0 or 1", v->space_prefix);
    if (v->model == BN_TOKM_SPM) {
        if (!v->scores) return bn_err(err, "a SentencePiece vocabulary needs piece scores");
        for (uint32_t i = 0; i < v->n_tokens; i++)   /* NaN would break the merge order */
            if (isnan(v->scores[i])) return bn_err(err, "token %u has a NaN score", i);
    }
    return 0;
}

bn_vocab *bn_vocab_clone(const bn_vocab *v)
{
    bn_vocab *c = bn_vocab_alloc(v->n_tokens, v->tok_off[v->n_tokens], v->n_merges);
    if (!c) return NULL;
    memcpy(c->tok_off, v->tok_off, ((size_t)v->n_tokens + 1) * sizeof *c->tok_off);
    memcpy(c->text, v->text, v->tok_off[v->n_tokens]);
    memcpy(c->type, v->type, v->n_tokens);
    memcpy(c->merges, v->merges, (size_t)v->n_merges * 2 * sizeof *c->merges);
    c->bos = v->bos; c->eos = v->eos; c->eot = v->eot; c->pad = v->pad;
    c->pre = v->pre; c->chat = v->chat; c->ignore_merges = v->ignore_merges;
    c->model = v->model; c->space_prefix = v->space_prefix;
    if (v->scores) {
        if (!bn_vocab_scores_alloc(c)) {
            bn_vocab_free(c);
            return NULL;
        }
        memcpy(c->scores, v->scores, (size_t)v->n_tokens * sizeof *c->scores);
    }
    if (v->chat_template && !(c->chat_template = strdup(v->chat_template))) {
        bn_vocab_free(c);
        return NULL;
    }
    return c;
}
