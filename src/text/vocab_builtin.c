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

/* A builder with room for n_vocab tokens and merges; 0, or -1 out of memory. */
static int builder_init(builder *b, uint32_t n_vocab)
{
    *b = (builder){0};
    b->cap = n_vocab;
    b->str = calloc(n_vocab, sizeof *b->str);
    b->merges = calloc((size_t)n_vocab * 2, sizeof *b->merges);
    return b->str && b->merges ? 0 : -1;
}

static void builder_free(builder *b)
{
    for (uint32_t i = 0; i < b->n; i++) free(b->str[i]);
    free(b->str);
    free(b->merges);
}

/* The 256 single-byte tokens, in byte order, in GPT-2's byte-to-unicode form. */
static int add_byte_tokens(builder *b)
{
    int rc = 0;
    for (uint32_t i = 0; i < 256 && !rc; i++) {
        char s[5];
        s[byte_form((uint8_t)i, s)] = 0;
        rc = add(b, s);
    }
    return rc;
}

/* Every word of the list, spaced then bare, while merge results fit below room. */
static int add_words(builder *b, uint32_t room)
{
    for (size_t w = 0; w < sizeof words / sizeof words[0]; w++)
        for (int spaced = 1; spaced >= 0; spaced--) {
            int r = add_word(b, words[w], spaced, room);
            if (r) return r < 0 ? -1 : 0;
        }
    return 0;
}

bn_vocab *bn_vocab_builtin(uint32_t n_vocab, bn_error *err)
{
    if (n_vocab < bn_vocab_builtin_min() || n_vocab > (1u << 24)) {
        bn_err(err, "built-in vocabulary: %u tokens requested, it needs %u to %u", n_vocab,
               bn_vocab_builtin_min(), 1u << 24);
        return NULL;
    }
    builder b;
    bn_vocab *v = NULL;
    int rc = builder_init(&b, n_vocab);
    if (!rc) rc = add_byte_tokens(&b);
    if (!rc) rc = add_words(&b, n_vocab - N_SPECIALS);   /* merge results stop there */
    for (size_t i = 0; i < N_SPECIALS && !rc; i++) rc = add(&b, specials[i]);
    if (!rc) v = to_vocab(&b, n_vocab);
    builder_free(&b);
    if (!v) bn_err(err, "built-in vocabulary: out of memory for %u tokens", n_vocab);
    return v;
}

/* ---- family-shaped vocabularies (bn_vocab_builtin_kind) ---------------------------------- */

/* Falcon3's first ids (Falcon's convention: <|endoftext|> = 11), then the chat markers. */
static const char *const falcon3_specials[] = {
    ">>TITLE<<", ">>ABSTRACT<<", ">>INTRODUCTION<<", ">>SUMMARY<<", ">>COMMENT<<", ">>ANSWER<<",
    ">>QUESTION<<", ">>DOMAIN<<", ">>EMAIL_ADDRESS<<", ">>IP_ADDRESS<<", "<|startoftext|>",
    "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>",
};
#define N_FALCON3_SPECIALS (sizeof falcon3_specials / sizeof falcon3_specials[0])
#define FALCON3_EOS 11

/* Falcon3 layout: the specials above (control), 256 byte tokens, word merges as many as fit, then
 * >>UNUSED_N<< control tokens up to n_vocab. */
static bn_vocab *builtin_falcon3(uint32_t n_vocab, bn_error *err)
{
    const uint32_t min = N_FALCON3_SPECIALS + 256;
    if (n_vocab < min || n_vocab > (1u << 24)) {
        bn_err(err, "built-in Falcon3 vocabulary: %u tokens requested, it needs %u to %u", n_vocab, min, 1u << 24);
        return NULL;
    }
    builder b;
    bn_vocab *v = NULL;
    int rc = builder_init(&b, n_vocab);
    for (size_t i = 0; i < N_FALCON3_SPECIALS && !rc; i++) rc = add(&b, falcon3_specials[i]);
    if (!rc) rc = add_byte_tokens(&b);
    if (!rc) rc = add_words(&b, n_vocab);
    uint32_t n_real = b.n;
    char name[64];
    for (uint32_t i = n_real; i < n_vocab && !rc; i++) {
        snprintf(name, sizeof name, ">>UNUSED_%u<<", i - n_real);
        rc = add(&b, name);
    }
    size_t text = 0;
    for (uint32_t i = 0; i < b.n && !rc; i++) text += strlen(b.str[i]);
    if (!rc && (v = bn_vocab_alloc(n_vocab, text, b.n_merges))) {
        uint32_t o = 0;
        for (uint32_t i = 0; i < n_vocab; i++) {
            v->tok_off[i] = o;
            memcpy(v->text + o, b.str[i], strlen(b.str[i]));
            o += (uint32_t)strlen(b.str[i]);
            v->type[i] = i < N_FALCON3_SPECIALS || i >= n_real ? BN_TOK_CONTROL : BN_TOK_NORMAL;
        }
        v->tok_off[n_vocab] = o;
        memcpy(v->merges, b.merges, (size_t)b.n_merges * 2 * sizeof *v->merges);
        v->bos = -1;   /* Falcon3 forces no BOS */
        v->eos = FALCON3_EOS;
        v->pre = BN_PRE_FALCON3;
        v->chat = BN_CHAT_FALCON3;
        v->ignore_merges = 0;   /* the fork's FALCON_3: merges always run */
    }
    builder_free(&b);
    if (!v) bn_err(err, "built-in Falcon3 vocabulary: out of memory for %u tokens", n_vocab);
    return v;
}

/* SentencePiece (Llama-2 / 1bitLLM) layout:
 *   0 <unk> (UNKNOWN), 1 <s>, 2 </s> (CONTROL), 3..258 <0x00>..<0xFF> (BYTE), then the single
 *   characters U+2581 and '!'..'~', then the prefixes of each word of the list, spaced
 *   ("\u2581t", "\u2581th", "\u2581the") and bare ("th", "the"), as many as fit, scored in list
 *   order (-1, -2, ...: earlier merges win), then <unused_N> (UNUSED) fillers, then the added
 *   <pad> and </line> (USER_DEFINED, score -1000 as the converter writes) as the last two ids.
 * Every word piece is an earlier piece plus one character, so the SPM merge reaches it. */
#define SPM_FIXED (3 + 256 + 95)
#define SPM_MIN (SPM_FIXED + 2)

typedef struct {
    char *text;
    size_t len, cap;
    uint32_t *off;
    uint8_t *type;
    float *score;
    uint32_t n, room;
} spm_builder;

static int spm_add(spm_builder *b, const char *s, uint8_t type, float score)
{
    size_t l = strlen(s);
    if (b->len + l > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1 << 16;
        while (cap < b->len + l) cap *= 2;
        char *t = realloc(b->text, cap);
        if (!t) return -1;
        b->text = t;
        b->cap = cap;
    }
    memcpy(b->text + b->len, s, l);
    b->off[b->n] = (uint32_t)b->len;
    b->len += l;
    b->type[b->n] = type;
    b->score[b->n] = score;
    b->n++;
    b->off[b->n] = (uint32_t)b->len;
    return 0;
}

static int spm_has(const spm_builder *b, const char *s, uint32_t from)
{
    size_t l = strlen(s);
    for (uint32_t i = from; i < b->n; i++)
        if (b->off[i + 1] - b->off[i] == l && !memcmp(b->text + b->off[i], s, l)) return 1;
    return 0;
}

/* Adds the prefixes (two characters and longer) of word, spaced or bare; 1 when full. */
static int spm_add_word(spm_builder *b, const char *word, int spaced, float *next_score)
{
    char cur[80];
    size_t cl = 0;
    if (spaced) memcpy(cur, "\xe2\x96\x81", 3), cl = 3;
    for (const char *c = word; *c; c++) {
        cur[cl++] = *c;
        cur[cl] = 0;
        if (!spaced && cl < 2) continue;   /* single characters are pieces already */
        if (spm_has(b, cur, 3 + 256)) continue;
        if (b->n >= b->room) return 1;
        if (spm_add(b, cur, BN_TOK_NORMAL, *next_score)) return -1;
        *next_score -= 1.0f;
    }
    return 0;
}

static bn_vocab *builtin_spm(uint32_t n_vocab, bn_error *err)
{
    if (n_vocab < SPM_MIN || n_vocab > (1u << 24)) {
        bn_err(err, "built-in SentencePiece vocabulary: %u tokens requested, it needs %u to %u", n_vocab, SPM_MIN, 1u << 24);
        return NULL;
    }
    spm_builder b = {0};
    b.off = calloc((size_t)n_vocab + 1, sizeof *b.off);
    b.type = calloc(n_vocab, 1);
    b.score = calloc(n_vocab, sizeof *b.score);
    b.room = n_vocab - 2;
    int rc = !b.off || !b.type || !b.score;
    static const char *const heads[3] = {"<unk>", "<s>", "</s>"};
    static const uint8_t head_types[3] = {BN_TOK_UNKNOWN, BN_TOK_CONTROL, BN_TOK_CONTROL};
    for (int i = 0; i < 3 && !rc; i++) rc = spm_add(&b, heads[i], head_types[i], 0.0f);
    char s[16];
    for (int i = 0; i < 256 && !rc; i++) {
        snprintf(s, sizeof s, "<0x%02X>", i);
        rc = spm_add(&b, s, BN_TOK_BYTE, 0.0f);
    }
    if (!rc) rc = spm_add(&b, "\xe2\x96\x81", BN_TOK_NORMAL, -1e6f);
    for (int c = '!'; c <= '~' && !rc; c++) {
        s[0] = (char)c;
        s[1] = 0;
        rc = spm_add(&b, s, BN_TOK_NORMAL, -1e6f - (float)(c - '!' + 1));
    }
    float score = -1.0f;
    for (size_t w = 0; w < sizeof words / sizeof words[0] && !rc; w++)
        for (int spaced = 1; spaced >= 0 && !rc; spaced--) {
            int r = spm_add_word(&b, words[w], spaced, &score);
            if (r < 0) rc = 1;
            if (r > 0) goto full;
        }
full:
    for (uint32_t i = 0; b.n < b.room && !rc; i++) {
        snprintf(s, sizeof s, "<unused_%u>", i);
        rc = spm_add(&b, s, BN_TOK_UNUSED, 0.0f);
    }
    if (!rc) rc = spm_add(&b, "<pad>", BN_TOK_USER_DEFINED, -1000.0f);
    if (!rc) rc = spm_add(&b, "</line>", BN_TOK_USER_DEFINED, -1000.0f);
    bn_vocab *v = NULL;
    if (!rc && (v = bn_vocab_alloc(n_vocab, b.len, 0)) && bn_vocab_scores_alloc(v)) {
        memcpy(v->tok_off, b.off, ((size_t)n_vocab + 1) * sizeof *v->tok_off);
        memcpy(v->text, b.text, b.len);
        memcpy(v->type, b.type, n_vocab);
        memcpy(v->scores, b.score, (size_t)n_vocab * sizeof *v->scores);
        v->model = BN_TOKM_SPM;
        v->space_prefix = 1;
        v->bos = 1;
        v->eos = 2;
        v->pad = (int32_t)n_vocab - 2;
        v->chat = BN_CHAT_NONE;
    } else if (v) {
        bn_vocab_free(v);
        v = NULL;
    }
    free(b.text);
    free(b.off);
    free(b.type);
    free(b.score);
    if (!v) bn_err(err, "built-in SentencePiece vocabulary: out of memory for %u tokens", n_vocab);
    return v;
}

bn_vocab *bn_vocab_builtin_kind(enum bn_vocab_kind kind, uint32_t n_vocab, bn_error *err)
{
    switch (kind) {
    case BN_VOCAB_LLAMA3: return bn_vocab_builtin(n_vocab, err);
    case BN_VOCAB_SPM: return builtin_spm(n_vocab, err);
    case BN_VOCAB_FALCON3: return builtin_falcon3(n_vocab, err);
    }
    bn_err(err, "built-in vocabulary: unknown kind %d", (int)kind);
    return NULL;
}
