/* A small built-in byte-level vocabulary, for synthetic models (bitnet mkmodel) and tests that
 * must run without the 9 MB Llama-3 tokenizer.
 *
 * Layout, for a requested n_vocab:
 *   ids 0..255        one token per byte, id == byte value, in GPT-2 byte-to-unicode form
 *   then              merge results, built by spelling each word of a fixed English list left to
 *                     right ("Ġt"+"h" -> "Ġth", "Ġth"+"e" -> "Ġthe"), as many as fit
 *   then              <|begin_of_text|> <|end_of_text|> <|eot_id|> <|start_header_id|>
 *                     <|end_header_id|>  (control tokens)
 *   then              <|reserved_special_token_N|> up to n_vocab (control tokens)
 * Everything is a pure function of n_vocab, so a synthetic model's tokenizer is reproducible. */
#include "text/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/text_internal.h"

/* Words spelled with a leading space ("Ġword") and bare; a fixed list, in rank order. */
static const char *const words[] = {
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "she", "other", "its",
    "may", "these", "what", "them", "than", "some", "him", "time", "into", "only", "do", "could",
    "new", "about", "two", "first", "after", "also", "made", "like", "over", "such", "people",
    "how", "most", "any", "my", "our", "out", "up", "said", "me", "your", "model", "token", "text",
    "hello", "world", "user", "system", "assistant", "help", "ing", "ed", "er", "ly", "tion", "es",
};
static const char *const specials[] = {
    "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
};
#define N_SPECIALS (sizeof specials / sizeof specials[0])

/* The byte-level form of byte b, as UTF-8. */
static size_t byte_form(uint8_t b, char out[4]) { return bn_utf8_encode(bn_byte_to_cp(b), out); }

/* Token strings and merges while the list is being built. */
typedef struct {
    char **str;
    uint32_t n, cap;
    uint32_t *merges;   /* pairs */
    uint32_t n_merges;
} builder;

static int32_t find(const builder *b, const char *s)
{
    for (uint32_t i = b->n; i-- > 0;)
        if (!strcmp(b->str[i], s)) return (int32_t)i;
    return -1;
}

static int add(builder *b, const char *s)
{
    if (b->n == b->cap) return -1;
    return (b->str[b->n++] = strdup(s)) ? 0 : -1;
}

/* Adds the merges that spell word (with the "Ġ" prefix if spaced) while room remains. */
static int add_word(builder *b, const char *word, int spaced, uint32_t room)
{
    char cur[64] = "", next[64], piece[4];
    size_t pl;
    if (spaced) {
        pl = byte_form(' ', piece);
        memcpy(cur, piece, pl);
        cur[pl] = 0;
    }
    for (const char *c = word; *c; c++) {
        pl = byte_form((uint8_t)*c, piece);
        piece[pl] = 0;
        if (!cur[0]) {
            strcpy(cur, piece);
            continue;
        }
        snprintf(next, sizeof next, "%s%s", cur, piece);
        if (find(b, next) < 0) {
            if (b->n >= room) return 1;   /* full */
            b->merges[2 * b->n_merges] = (uint32_t)find(b, cur);
            b->merges[2 * b->n_merges + 1] = (uint32_t)find(b, piece);
            b->n_merges++;
            if (add(b, next)) return -1;
        }
        strcpy(cur, next);
    }
    return 0;
}

uint32_t bn_vocab_builtin_min(void) { return 256 + N_SPECIALS; }

static bn_vocab *to_vocab(const builder *b, uint32_t n_vocab)
{
    size_t text = 0;
    char name[64];
    for (uint32_t i = 0; i < b->n; i++) text += strlen(b->str[i]);
    for (uint32_t i = b->n; i < n_vocab; i++)
        text += (size_t)snprintf(name, sizeof name, "<|reserved_special_token_%u|>", i - b->n);
    bn_vocab *v = bn_vocab_alloc(n_vocab, text, b->n_merges);
    if (!v) return NULL;
    uint32_t o = 0;
    for (uint32_t i = 0; i < n_vocab; i++) {
        v->tok_off[i] = o;
        const char *s = i < b->n ? b->str[i] : name;
        if (i >= b->n) snprintf(name, sizeof name, "<|reserved_special_token_%u|>", i - b->n);
        memcpy(v->text + o, s, strlen(s));
        o += (uint32_t)strlen(s);
        v->type[i] = i < b->n - N_SPECIALS ? BN_TOK_NORMAL : BN_TOK_CONTROL;
    }
    v->tok_off[n_vocab] = o;
    memcpy(v->merges, b->merges, (size_t)b->n_merges * 2 * sizeof *v->merges);
    uint32_t first_special = b->n - N_SPECIALS;
    v->bos = (int32_t)first_special;
    v->eos = (int32_t)first_special + 1;
    v->eot = (int32_t)first_special + 2;
    v->pre = BN_PRE_LLAMA3;
    v->chat = BN_CHAT_BITNET;
    /* Llama-3 semantics, like every route a Llama-3 vocabulary can take (tokenizer.json says so,
     * GGUF readers imply it): the same model must pack to the same bytes whatever its source. */
    v->ignore_merges = 1;
    return v;
}

bn_vocab *bn_vocab_builtin(uint32_t n_vocab, bn_error *err)
{
    if (n_vocab < bn_vocab_builtin_min() || n_vocab > (1u << 24)) {
        bn_err(err, "built-in vocabulary: %u tokens requested, it needs %u to %u", n_vocab,
               bn_vocab_builtin_min(), 1u << 24);
        return NULL;
    }
    builder b = {0};
    b.cap = n_vocab;
    b.str = calloc(n_vocab, sizeof *b.str);
    b.merges = calloc((size_t)n_vocab * 2, sizeof *b.merges);
    bn_vocab *v = NULL;
    int rc = !b.str || !b.merges;
    for (uint32_t i = 0; i < 256 && !rc; i++) {
        char s[5];
        s[byte_form((uint8_t)i, s)] = 0;
        rc = add(&b, s);
    }
    uint32_t room = n_vocab - N_SPECIALS;   /* merge results stop here */
    for (size_t w = 0; w < sizeof words / sizeof words[0] && !rc; w++)
        for (int spaced = 1; spaced >= 0 && !rc; spaced--) {
            int r = add_word(&b, words[w], spaced, room);
            if (r < 0) rc = 1;
            if (r > 0) goto full;
        }
full:
    for (size_t i = 0; i < N_SPECIALS && !rc; i++) rc = add(&b, specials[i]);
    if (!rc) v = to_vocab(&b, n_vocab);
    for (uint32_t i = 0; i < b.n; i++) free(b.str[i]);
    free(b.str);
    free(b.merges);
    if (!v) bn_err(err, "built-in vocabulary: out of memory for %u tokens", n_vocab);
    return v;
}
