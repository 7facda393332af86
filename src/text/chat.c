/* Chat templates, rendered in C rather than by a Jinja interpreter: bitnetd knows a few formats
 * and writes each down once here (docs: model facts section 5, bitnet-families.md s.3).
 *
 * A template is a sequence of control tokens and text. In id mode the control tokens go out as
 * their ids and the text between two control tokens is encoded as ONE raw-text segment (as HF
 * does when it tokenizes the rendered string), so "User: " + content encodes exactly as the
 * reference would, while "<|eot_id|>" typed inside content stays ordinary text. In text mode
 * everything is written out, for debugging and tests. */
#include "text/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/text_internal.h"

typedef struct {
    char *s;
    size_t len, cap;
} strbuf;

static int sb_add(strbuf *b, const char *s, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len + 1) cap *= 2;
        char *n = realloc(b->s, cap);
        if (!n) return -1;
        b->s = n;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, len);
    b->len += len;
    b->s[b->len] = 0;
    return 0;
}

/* Where rendered pieces go: ids (tk != NULL) or text. */
typedef struct {
    const bn_tokenizer *tk;
    bn_tokens *ids;
    strbuf text;      /* text mode: the whole rendering; id mode: the pending raw-text segment */
    bn_error *err;
} sink;

static int put_text(sink *k, const char *s, size_t len)
{
    return sb_add(&k->text, s, len) ? bn_err(k->err, "out of memory rendering a chat") : 0;
}

/* Encodes the pending text segment (id mode). */
static int flush_segment(sink *k)
{
    if (!k->tk || !k->text.len) return 0;
    int rc = bn_tokenize_append(k->tk, k->text.s, k->text.len, k->ids, k->err);
    k->text.len = 0;
    return rc;
}

/* A control token by its text. id mode: the vocabulary must have it (as a control token, or as
 * an added token with exactly that text). */
static int put_control(sink *k, const char *name, int32_t known_id)
{
    if (!k->tk) return put_text(k, name, strlen(name));
    int32_t id = known_id >= 0 ? known_id : bn_tokenizer_marker_id(k->tk, name);
    if (id < 0) return bn_err(k->err, "chat template: the vocabulary has no control token %s", name);
    if (flush_segment(k)) return -1;
    return bn_tokens_push(k->ids, id, k->err);
}

/* Python's str.isspace() set (what Jinja's trim strips). */
static size_t space_len(const char *s, size_t len)
{
    static const uint32_t extra[] = {0x85, 0xa0, 0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000};
    uint32_t cp;
    size_t n = bn_utf8_decode((const uint8_t *)s, len, &cp);
    if (!n) return 0;
    if ((cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || (cp >= 0x2000 && cp <= 0x200a)) return n;
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++)
        if (cp == extra[i]) return n;
    return 0;
}

static void trim(const char *s, const char **out, size_t *out_len)
{
    size_t len = strlen(s), n;
    while (len && (n = space_len(s, len)) > 0) s += n, len -= n;
    /* From the right: find the last non-space character by scanning forward. */
    size_t end = 0;
    for (size_t i = 0; i < len;) {
        n = space_len(s + i, len - i);
        if (n) { i += n; continue; }
        uint32_t cp;
        size_t c = bn_utf8_decode((const uint8_t *)s + i, len - i, &cp);
        i += c ? c : 1;
        end = i;
    }
    *out = s;
    *out_len = end;
}

static int put_content(sink *k, const char *content)
{
    const char *c;
    size_t len;
    trim(content ? content : "", &c, &len);
    return put_text(k, c, len);
}

/* "{Role}: {content}<|eot_id|>" with Jinja's capitalize (first letter up, the rest down; ASCII). */
static int render_bitnet(sink *k, int32_t eot, const bn_chat_msg *m, size_t n, int gen)
{
    for (size_t i = 0; i < n; i++) {
        const char *role = m[i].role ? m[i].role : "";
        char first = role[0] >= 'a' && role[0] <= 'z' ? (char)(role[0] - 32) : role[0];
        if (role[0] && put_text(k, &first, 1)) return -1;
        for (const char *r = role[0] ? role + 1 : role; *r; r++) {
            char c = *r >= 'A' && *r <= 'Z' ? (char)(*r + 32) : *r;
            if (put_text(k, &c, 1)) return -1;
        }
        if (put_text(k, ": ", 2) || put_content(k, m[i].content) || put_control(k, "<|eot_id|>", eot)) return -1;
    }
    return gen ? put_text(k, "Assistant: ", 11) : 0;
}

static int render_llama3(sink *k, int32_t eot, const bn_chat_msg *m, size_t n, int gen)
{
    for (size_t i = 0; i < n; i++) {
        const char *role = m[i].role ? m[i].role : "";
        if (put_control(k, "<|start_header_id|>", -1) || put_text(k, role, strlen(role)) ||
            put_control(k, "<|end_header_id|>", -1) || put_text(k, "\n\n", 2) ||
            put_content(k, m[i].content) || put_control(k, "<|eot_id|>", eot))
            return -1;
    }
    if (gen && (put_control(k, "<|start_header_id|>", -1) || put_text(k, "assistant", 9) ||
                put_control(k, "<|end_header_id|>", -1) || put_text(k, "\n\n", 2)))
        return -1;
    return 0;
}

/* The fork's falcon3 template: "<|role|>\n" + content + "\n" per message, then "<|assistant|>\n".
 * Content is NOT trimmed (the fork's renderer does not). <|system|>, <|user|>, <|assistant|> are
 * token ids; any other role is spelled <|role|> as text. */
static int render_falcon3(sink *k, const bn_chat_msg *m, size_t n, int gen)
{
    for (size_t i = 0; i < n; i++) {
        const char *role = m[i].role ? m[i].role : "";
        const char *c = m[i].content ? m[i].content : "";
        int known = !strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant");
        char marker[64];
        int ml = snprintf(marker, sizeof marker, "<|%s|>", role);
        if (ml < 0 || (size_t)ml >= sizeof marker) known = 0;
        int rc = known ? put_control(k, marker, -1)
                       : put_text(k, "<|", 2) || put_text(k, role, strlen(role)) || put_text(k, "|>", 2);
        if (rc || put_text(k, "\n", 1) || put_text(k, c, strlen(c)) || put_text(k, "\n", 1)) return -1;
    }
    return gen ? put_control(k, "<|assistant|>", -1) || put_text(k, "\n", 1) : 0;
}

/* No chat format (base models such as 1bitLLM's): BOS, then the messages' contents (trimmed)
 * joined by "\n", as one text; roles and the generation prompt add nothing. */
static int render_none(sink *k, const bn_chat_msg *m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((i && put_text(k, "\n", 1)) || put_content(k, m[i].content)) return -1;
    return 0;
}

static int render(sink *k, enum bn_chat_kind kind, const bn_chat_msg *msgs, size_t n, int gen)
{
    int32_t bos = -1, eot = -1;
    if (k->tk) {
        const bn_vocab *v = bn_tokenizer_vocab(k->tk);
        bos = v->bos;
        eot = v->eot;
    }
    if (kind != BN_CHAT_BITNET && kind != BN_CHAT_LLAMA3 && kind != BN_CHAT_FALCON3 && kind != BN_CHAT_NONE)
        return bn_err(k->err, "chat template kind %d is not one bitnetd renders", (int)kind);
    /* BOS is written by the renderer (the BitNet template itself has none: HF adds it in the
     * post-processor), except for Falcon3, which has no forced BOS. A vocabulary without a BOS
     * token gets none; text mode spells Llama-3's, or SentencePiece's <s> for NONE. */
    const char *bos_text = kind == BN_CHAT_NONE ? "<s>" : "<|begin_of_text|>";
    if (kind != BN_CHAT_FALCON3 && (!k->tk || bos >= 0) && put_control(k, bos_text, bos)) return -1;
    int rc;
    switch (kind) {
    case BN_CHAT_BITNET: rc = render_bitnet(k, eot, msgs, n, gen); break;
    case BN_CHAT_LLAMA3: rc = render_llama3(k, eot, msgs, n, gen); break;
    case BN_CHAT_FALCON3: rc = render_falcon3(k, msgs, n, gen); break;
    default: rc = render_none(k, msgs, n); break;
    }
    return rc ? rc : flush_segment(k);
}

int bn_chat_render(const bn_tokenizer *tk, enum bn_chat_kind kind, const bn_chat_msg *msgs,
                   size_t n, int add_generation_prompt, bn_tokens *out, bn_error *err)
{
    sink k = {.tk = tk, .ids = out, .err = err};
    int rc = render(&k, kind, msgs, n, add_generation_prompt);
    free(k.text.s);
    return rc;
}

int bn_chat_render_text(enum bn_chat_kind kind, const bn_chat_msg *msgs, size_t n,
                        int add_generation_prompt, char **text, size_t *len, bn_error *err)
{
    sink k = {.err = err};
    if (render(&k, kind, msgs, n, add_generation_prompt) || put_text(&k, "", 0)) {
        free(k.text.s);
        return -1;
    }
    *text = k.text.s;
    *len = k.text.len;
    return 0;
}

enum bn_chat_kind bn_chat_kind_of_vocab(const bn_vocab *v)
{
    if (v->chat == BN_CHAT_BITNET || v->chat == BN_CHAT_LLAMA3 || v->chat == BN_CHAT_FALCON3)
        return (enum bn_chat_kind)v->chat;
    const char *t = v->chat_template;
    if (t && strstr(t, "<|start_header_id|>")) return BN_CHAT_LLAMA3;
    /* the fork's auto-detection of its falcon3 template */
    if (t && strstr(t, "<|assistant|>") && strstr(t, "<|user|>")) return BN_CHAT_FALCON3;
    /* SentencePiece models here are 1bitLLM's base models: no chat format */
    if (!t && v->model == BN_TOKM_SPM) return BN_CHAT_NONE;
    /* "BITNETAssistant" marks the GGUF's placeholder template, which is not the trained format:
     * it and the HF template ("capitalize", "User: ") both mean the BitNet format. */
    return BN_CHAT_BITNET;
}

int bn_chat_kind_parse(const char *name)
{
    if (!name) return -1;
    if (!strcmp(name, "bitnet")) return BN_CHAT_BITNET;
    if (!strcmp(name, "llama3") || !strcmp(name, "llama-3")) return BN_CHAT_LLAMA3;
    if (!strcmp(name, "falcon3")) return BN_CHAT_FALCON3;
    if (!strcmp(name, "none")) return BN_CHAT_NONE;
    return -1;
}

const char *bn_chat_kind_name(enum bn_chat_kind kind)
{
    switch (kind) {
    case BN_CHAT_BITNET: return "bitnet";
    case BN_CHAT_LLAMA3: return "llama3";
    case BN_CHAT_FALCON3: return "falcon3";
    default: return "none";
    }
}
