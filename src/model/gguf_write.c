/* GGUF v3 writer for synthetic models, in the form bitnet.cpp's converters produce for each
 * family (bitnet-families.md s.1-3; model facts 4.1): arch "bitnet-b1.58" for 2B-4T with
 * convert-ms-to-gguf-bitnet.py's keys and placeholder chat template; "bitnet" for 1bitLLM
 * (BitnetModel: SPM vocabulary, linear RoPE scaling 1.0, no rope.dimension_count); "llama" for
 * Llama3-8B-1.58 and Falcon3 (LlamaModel: q/k rows permuted, untied "output", vocab_size and
 * rope.dimension_count). Linears are written as llama-quantize / the TL converter leaves them.
 *
 * The header (metadata + tensor infos, a few MB at most for a 128k vocabulary) is built in
 * memory; tensor data is then streamed one tensor (or one embedding row) at a time through the
 * atomic writer, so a crash never leaves a half-written file under the final name. */
#include "model/gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/checked.h"
#include "base/file.h"
#include "kernels/half.h"
#include "model/family.h"
#include "model/synth.h"
#include "model/tensor_table.h"
#include "model/tl_layout.h"
#include "text/vocab.h"

/* convert-ms-to-gguf-bitnet.py's hard-coded template (not the trained format; model facts 5). */
const char bn_gguf_bitnet_placeholder_template[] =
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\\n\\nBITNETAssistant: ' + eos_token }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";

/* Minimal templates that name a chat format for a vocabulary without a template of its own
 * whose format is not the family's default (the reader recognizes them by these markers). */
static const char llama3_template[] =
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] + '<|eot_id|>' }}{% endfor %}";
static const char falcon3_template[] =
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}{# <|user|> #}";

/* ---- growable byte buffer for the header -------------------------------------------------- */

typedef struct buf {
    uint8_t *p;
    size_t len, cap;
    int oom;
} buf;

static void put(buf *b, const void *d, size_t n)
{
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_strn(buf *b, const char *s, size_t n) { put_u64(b, n); put(b, s, n); }
static void put_str(buf *b, const char *s) { put_strn(b, s, strlen(s)); }

/* ---- the writer's context ---------------------------------------------------------------- */

typedef struct wctx {
    const bn_synth *s;
    const bn_config *c;
    const bn_vocab *v;
    const bn_family_info *fam;
    const char *arch;     /* fam->gguf_arch */
    uint32_t wt;          /* linears' ggml type */
    int permute;          /* arch llama: q/k rows in llama.cpp's permuted order */
    int spm;              /* SentencePiece vocabulary */
    const char *path;
} wctx;

/* A kv section that counts its entries. */
typedef struct kvbuf {
    buf b;
    uint64_t n;
} kvbuf;

static void kv_key(kvbuf *k, const char *key, uint32_t type) { put_str(&k->b, key); put_u32(&k->b, type); k->n++; }
static void kv_u32(kvbuf *k, const char *key, uint32_t v) { kv_key(k, key, BN_GGUF_U32); put_u32(&k->b, v); }
static void kv_f32(kvbuf *k, const char *key, float v) { kv_key(k, key, BN_GGUF_F32); put(&k->b, &v, 4); }
static void kv_str(kvbuf *k, const char *key, const char *v) { kv_key(k, key, BN_GGUF_STRING); put_str(&k->b, v); }
static void kv_bool(kvbuf *k, const char *key, int v)
{
    uint8_t x = (uint8_t)!!v;
    kv_key(k, key, BN_GGUF_BOOL);
    put(&k->b, &x, 1);
}
static void kv_arr_head(kvbuf *k, const char *key, uint32_t et, uint64_t n)
{
    kv_key(k, key, BN_GGUF_ARRAY);
    put_u32(&k->b, et);
    put_u64(&k->b, n);
}

/* ---- the tensor list -------------------------------------------------------------------- */

enum wkind { W_EMBD, W_OUTPUT, W_NORM, W_LINEAR, W_TL_SCALE };

typedef struct wtensor {
    char name[64];        /* canonical (no ".weight") */
    uint32_t type;
    enum wkind kind;
    uint64_t rows, cols;  /* vectors: rows = 1, written as 1-D; TL scales: a 0-D scalar */
    uint64_t nbytes, offset;
    int qk;               /* q or k of a llama-arch file: rows permuted */
    float scale;          /* linears: the per-tensor scale, set when written (for W_TL_SCALE) */
} wtensor;

static void add(wtensor *t, size_t *n, const char *name, uint32_t type, enum wkind kind, uint64_t rows, uint64_t cols)
{
    wtensor *w = &t[(*n)++];
    memset(w, 0, sizeof *w);
    snprintf(w->name, sizeof w->name, "%s", name);
    w->type = type;
    w->kind = kind;
    w->rows = rows;
    w->cols = cols;
}

/* Per layer, the order bitnet.cpp's converters emit: the HF safetensors order, alphabetical by
 * HF name (the same for 2B-4T's, 1bitLLM's and Llama's names). Readers must not depend on it. */
static const enum bn_layer_tensor layer_order[BN_LT_COUNT] = {
    BN_LT_ATTN_NORM, BN_LT_FFN_DOWN, BN_LT_FFN_SUB_NORM, BN_LT_FFN_GATE, BN_LT_FFN_UP, BN_LT_FFN_NORM,
    BN_LT_ATTN_SUB_NORM, BN_LT_ATTN_K, BN_LT_ATTN_OUTPUT, BN_LT_ATTN_Q, BN_LT_ATTN_V,
};

static int is_tl(uint32_t wt) { return wt == BN_GGML_TL1 || wt == BN_GGML_TL2; }

static size_t list_tensors(const wctx *x, wtensor *t)
{
    const bn_config *c = x->c;
    size_t n = 0;
    add(t, &n, "token_embd", BN_GGML_F16, W_EMBD, c->n_vocab, c->n_embd);
    for (uint32_t l = 0; l < c->n_layer; l++)
        for (int i = 0; i < BN_LT_COUNT; i++) {
            const bn_layer_tensor_def *d = &bn_layer_tensors[layer_order[i]];
            if (!bn_layer_tensor_present(c, d)) continue;
            char nm[64];
            uint64_t rows, cols;
            snprintf(nm, sizeof nm, "blk.%u.%s", l, d->canon);
            bn_layer_tensor_shape(c, d, &rows, &cols);
            add(t, &n, nm, d->ternary ? x->wt : BN_GGML_F32, d->ternary ? W_LINEAR : W_NORM, rows, cols);
            t[n - 1].qk = d->ternary && d->qk_rope && x->permute;
            if (d->ternary && is_tl(x->wt)) add(t, &n, nm, BN_GGML_F32, W_TL_SCALE, 1, 1);
        }
    add(t, &n, "output_norm", BN_GGML_F32, W_NORM, 1, c->n_embd);
    if (!c->tied) add(t, &n, "output", BN_GGML_F16, W_OUTPUT, c->n_vocab, c->n_embd);
    return n;
}

static int size_tensors(const wctx *x, wtensor *t, size_t n, bn_error *err)
{
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const char *why = NULL;
        uint64_t el;
        char tb[16];
        if (!bn_mul_ok(t[i].rows, t[i].cols, &el)) return bn_err(err, "%s: tensor %s: too large", x->path, t[i].name);
        if (is_tl(t[i].type)) {
            enum bn_tl_kind k = t[i].type == BN_GGML_TL1 ? BN_TL1 : BN_TL2;
            if (!(t[i].nbytes = bn_tl_nbytes(k, t[i].rows, t[i].cols, err)))
                return bn_err_prefix(err, "%s: tensor %s", x->path, t[i].name);
        } else if (t[i].type == BN_GGML_I2_S && t[i].cols % 128) {
            why = "I2_S needs the input dimension to be a multiple of 128 (bitnet.cpp stores such shapes as TL1/TL2 "
                  "only)";
        } else {
            t[i].nbytes = bn_ggml_nbytes(t[i].type, el, t[i].cols, &why);
        }
        if (why)
            return bn_err(err, "%s: tensor %s [%llu x %llu]: cannot be stored as %s: %s", x->path, t[i].name,
                          (unsigned long long)t[i].rows, (unsigned long long)t[i].cols,
                          bn_ggml_type_name(t[i].type, tb), why);
        t[i].offset = off;
        off = bn_align_up(off + t[i].nbytes, BN_GGUF_DEFAULT_ALIGNMENT);
    }
    return 0;
}

/* ---- header ------------------------------------------------------------------------------ */

static uint32_t file_type_of(uint32_t wt)
{
    /* llama ftypes of bitnet.cpp's fork (model facts 4.2); the TL converter writes the type id */
    switch (wt) {
    case BN_GGML_I2_S: return 40;
    case BN_GGML_TL1: return 38;
    case BN_GGML_TL2: return 39;
    case BN_GGML_TQ1_0: return 36;
    case BN_GGML_TQ2_0: return 37;
    case BN_GGML_F16: return 1;
    case BN_GGML_BF16: return 32;
    default: return 0;
    }
}

/* What the reader (source_gguf.c's rule) takes the activation to be without a key. */
static uint32_t default_act(const wctx *x)
{
    return strcmp(x->arch, "bitnet-b1.58") || x->spm ? BN_ACT_SILU : BN_ACT_RELU2;
}

static void put_config(kvbuf *k, const wctx *x)
{
    const bn_config *c = x->c;
    const char *a = x->arch;
    const int ms = !strcmp(a, "bitnet-b1.58"), b24 = !strcmp(a, "bitnet");
    char key[96];
#define K(s) (snprintf(key, sizeof key, "%s.%s", a, s), key)
    kv_str(k, "general.architecture", a);
    kv_str(k, "general.name", "bitnet-synthetic");
    if (ms) kv_u32(k, K("vocab_size"), c->n_vocab);
    kv_u32(k, K("context_length"), c->n_ctx_max);
    kv_u32(k, K("embedding_length"), c->n_embd);
    kv_u32(k, K("block_count"), c->n_layer);
    kv_u32(k, K("feed_forward_length"), c->n_ff);
    if (ms) kv_u32(k, K("rope.dimension_count"), c->head_dim);
    kv_u32(k, K("attention.head_count"), c->n_head);
    kv_u32(k, K("attention.head_count_kv"), c->n_head_kv);
    kv_f32(k, K("attention.layer_norm_rms_epsilon"), c->norm_eps);
    kv_f32(k, K("rope.freq_base"), c->rope_theta);
    kv_u32(k, "general.file_type", file_type_of(x->wt));
    if (!ms) kv_u32(k, K("vocab_size"), c->n_vocab); /* Model subclasses add it after the base keys */
    if (!ms && !b24) kv_u32(k, K("rope.dimension_count"), c->head_dim);
    if (b24) {
        kv_str(k, K("rope.scaling.type"), "linear");
        kv_f32(k, K("rope.scaling.factor"), 1.0f);
    }
    /* head_dim other than n_embd / n_head (synthetic shapes): llama.cpp's keys for it */
    if ((uint64_t)c->n_head * c->head_dim != c->n_embd) {
        kv_u32(k, K("attention.key_length"), c->head_dim);
        kv_u32(k, K("attention.value_length"), c->head_dim);
    }
    if (c->act != default_act(x)) kv_str(k, K("hidden_act"), c->act == BN_ACT_RELU2 ? "relu2" : "silu");
#undef K
}

static void put_tokens(kvbuf *k, const bn_vocab *v)
{
    kv_arr_head(k, "tokenizer.ggml.tokens", BN_GGUF_STRING, v->n_tokens);
    for (uint32_t i = 0; i < v->n_tokens; i++) {
        size_t len;
        const char *s = bn_vocab_token(v, i, &len);
        put_strn(&k->b, s, len);
    }
}

static void put_types(kvbuf *k, const bn_vocab *v)
{
    /* bitnet.cpp's numbering is GGUF's (SentencePieceTokenTypes / gguf.TokenType): ours */
    kv_arr_head(k, "tokenizer.ggml.token_type", BN_GGUF_I32, v->n_tokens);
    for (uint32_t i = 0; i < v->n_tokens; i++) put_u32(&k->b, v->type[i]);
}

static void put_merges(kvbuf *k, const bn_vocab *v)
{
    kv_arr_head(k, "tokenizer.ggml.merges", BN_GGUF_STRING, v->n_merges);
    for (uint32_t i = 0; i < v->n_merges; i++) {
        size_t ll, rl;
        const char *l = bn_vocab_token(v, v->merges[2 * i], &ll), *r = bn_vocab_token(v, v->merges[2 * i + 1], &rl);
        put_u64(&k->b, ll + 1 + rl);
        put(&k->b, l, ll);
        put(&k->b, " ", 1);
        put(&k->b, r, rl);
    }
}

/* tokenizer.ggml.pre for the vocabularies we know (issue #10). The official 2B-4T file lacks
 * it, and bitnet.cpp then warns and uses its 'default' regex, which splits contractions off
 * ("I've" -> "I" "'" "ve", "DON'T" -> " DON" "'" "T"); with "llama-bpe" its tokens equal HF's
 * and ours (checked with llama-cli --verbose-prompt and the Llama-3 tokenizer). */
static const char *pre_name(const wctx *x)
{
    switch (x->v->pre) {
    case BN_PRE_LLAMA3: return "llama-bpe";
    case BN_PRE_FALCON3: return x->fam->id == BN_FAM_FALCON_E ? "falcon_e" : "falcon3";
    case BN_PRE_GPT2: return "gpt-2";
    default: return NULL;
    }
}

/* The reader's chat format for a file without a template (source_gguf.c read_chat). */
static uint32_t default_chat(const wctx *x)
{
    if (x->spm) return BN_CHAT_NONE;
    if (x->v->pre == BN_PRE_FALCON3) return BN_CHAT_FALCON3;
    return x->permute ? BN_CHAT_LLAMA3 : BN_CHAT_BITNET;
}

static void put_chat(kvbuf *k, const wctx *x)
{
    const bn_vocab *v = x->v;
    const char *t = v->chat_template;
    if (!t && !strcmp(x->arch, "bitnet-b1.58") && !x->spm && (v->chat == BN_CHAT_BITNET || v->chat == BN_CHAT_NONE))
        t = bn_gguf_bitnet_placeholder_template; /* what bitnet.cpp's 2B-4T file carries */
    else if (!t && v->chat != default_chat(x))
        t = v->chat == BN_CHAT_BITNET ? bn_gguf_bitnet_placeholder_template
            : v->chat == BN_CHAT_LLAMA3 ? llama3_template
            : v->chat == BN_CHAT_FALCON3 ? falcon3_template : NULL;
    if (t) kv_str(k, "tokenizer.chat_template", t);
}

/* The reader's end-of-turn lookup by text (source_gguf.c read_specials): <|eot_id|>'s id. */
static int32_t text_eot(const bn_vocab *v)
{
    for (uint32_t id = 0; id < v->n_tokens; id++) {
        size_t len;
        const char *s = bn_vocab_token(v, id, &len);
        if (len == 10 && !memcmp(s, "<|eot_id|>", 10)) return (int32_t)id;
    }
    return -1;
}

static void put_vocab(kvbuf *k, const wctx *x)
{
    const bn_vocab *v = x->v;
    if (x->spm) {
        /* _set_vocab_sentencepiece: model llama, pre default, tokens, scores, types */
        kv_str(k, "tokenizer.ggml.model", "llama");
        kv_str(k, "tokenizer.ggml.pre", "default");
        put_tokens(k, v);
        kv_arr_head(k, "tokenizer.ggml.scores", BN_GGUF_F32, v->n_tokens);
        put(&k->b, v->scores, (size_t)v->n_tokens * sizeof *v->scores);
        put_types(k, v);
    } else {
        /* _set_vocab_gpt2: model gpt2, pre, tokens, types, then SpecialVocab's merges */
        const char *pre = pre_name(x);
        kv_str(k, "tokenizer.ggml.model", "gpt2");
        if (pre) kv_str(k, "tokenizer.ggml.pre", pre);
        put_tokens(k, v);
        put_types(k, v);
        put_merges(k, v);
    }
    if (v->bos >= 0) kv_u32(k, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
    if (v->eos >= 0) kv_u32(k, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
    if (x->spm)
        for (uint32_t i = 0; i < v->n_tokens; i++)
            if (v->type[i] == BN_TOK_UNKNOWN) {
                kv_u32(k, "tokenizer.ggml.unknown_token_id", i);
                break;
            }
    if (v->pad >= 0) kv_u32(k, "tokenizer.ggml.padding_token_id", (uint32_t)v->pad);
    /* The official files have no eot key (llama.cpp finds <|eot_id|> by text); write one only
     * when that lookup would not find this vocabulary's end of turn. */
    if (v->eot >= 0 && text_eot(v) != v->eot) kv_u32(k, "tokenizer.ggml.eot_token_id", (uint32_t)v->eot);
    kv_bool(k, "tokenizer.ggml.add_bos_token", x->c->bos >= 0);
    if (x->spm) kv_bool(k, "tokenizer.ggml.add_eos_token", 0);
    /* SPM's default is a space prefix; LlamaModel copies tokenizer_config's add_prefix_space */
    if (x->spm && (!v->space_prefix || x->permute)) kv_bool(k, "tokenizer.ggml.add_space_prefix", (int)v->space_prefix);
    put_chat(k, x);
}

static void put_tensor_infos(buf *b, const wtensor *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char nm[80];
        snprintf(nm, sizeof nm, "%s.weight%s", t[i].name, t[i].kind == W_TL_SCALE ? "_scale" : "");
        put_str(b, nm);
        if (t[i].kind == W_TL_SCALE) {
            put_u32(b, 0); /* gguf-py writes the numpy scalar as a 0-dimensional tensor */
        } else if (t[i].kind == W_NORM) {
            put_u32(b, 1);
            put_u64(b, t[i].cols);
        } else {
            put_u32(b, 2);
            put_u64(b, t[i].cols); /* ne0 = in */
            put_u64(b, t[i].rows); /* ne1 = out */
        }
        put_u32(b, t[i].type);
        put_u64(b, t[i].offset);
    }
}

/* ---- tensor data ------------------------------------------------------------------------- */

static void enc_i2s(const int8_t *t, uint64_t n, float scale, uint8_t *out)
{
    for (uint64_t b = 0; b < n / 128; b++)
        for (int j = 0; j < 32; j++) {
            const int8_t *x = t + b * 128 + j;
            out[b * 32 + j] = (uint8_t)((x[0] + 1) << 6 | (x[32] + 1) << 4 | (x[64] + 1) << 2 | (x[96] + 1));
        }
    memset(out + n / 4, 0, 32);
    memcpy(out + n / 4, &scale, 4);
}

static int block_nonzero(const int8_t *t) { for (int i = 0; i < 256; i++) if (t[i]) return 1; return 0; }

static void enc_tq2(const int8_t *t, uint64_t n, uint16_t d, uint8_t *out)
{
    for (uint64_t b = 0; b < n / 256; b++) {
        const int8_t *x = t + b * 256;
        uint8_t *q = out + b * 66;
        for (int c = 0; c < 2; c++)
            for (int m = 0; m < 32; m++) {
                uint8_t v = 0;
                for (int k = 0; k < 4; k++) v |= (uint8_t)((x[c * 128 + k * 32 + m] + 1) << (2 * k));
                q[c * 32 + m] = v;
            }
        uint16_t dd = block_nonzero(x) ? d : 0; /* quantize_row_tq2_0_ref: d = block absmax */
        memcpy(q + 64, &dd, 2);
    }
}

/* k trits (most significant first), then the ·256/243 ceiling that makes trit extraction a
 * multiply-and-shift (ggml's TQ1_0). */
static uint8_t pack_trits(const int8_t *x, int stride, int k)
{
    unsigned q = 0;
    for (int i = 0; i < k; i++) q = q * 3 + (unsigned)(x[i * stride] + 1);
    for (int i = k; i < 5; i++) q *= 3;
    return (uint8_t)((q * 256 + 242) / 243);
}

static void enc_tq1(const int8_t *t, uint64_t n, uint16_t d, uint8_t *out)
{
    for (uint64_t b = 0; b < n / 256; b++) {
        const int8_t *x = t + b * 256;
        uint8_t *q = out + b * 54;
        for (int m = 0; m < 32; m++) q[m] = pack_trits(x + m, 32, 5);
        for (int m = 0; m < 16; m++) q[32 + m] = pack_trits(x + 160 + m, 16, 5);
        for (int j = 0; j < 4; j++) q[48 + j] = pack_trits(x + 240 + j, 4, 4);
        uint16_t dd = block_nonzero(x) ? d : 0;
        memcpy(q + 52, &dd, 2);
    }
}

/* Synthetic scales are exact in every format for the multiply-rule families by construction;
 * a divide-rule family's 1/b (model/synth.h) is exact in f32 only, so its F16/BF16/TQ forms
 * round it as a real converter's would (the codes stay exact). */
static int scale_fits(const wctx *x, const wtensor *w, float scale, bn_error *err)
{
    int inexact = w->type == BN_GGML_BF16 ? bn_bf16_to_f32(bn_f32_to_bf16(scale)) != scale
                  : (w->type == BN_GGML_F16 || w->type == BN_GGML_TQ1_0 || w->type == BN_GGML_TQ2_0) &&
                        bn_f16_to_f32(bn_f32_to_f16(scale)) != scale;
    if (inexact && x->fam->hf_weights != BN_HFW_PACKED_DIV)
        return bn_err(err, "%s: tensor %s: scale %g is not exact in %s", x->path, w->name, scale,
                      w->type == BN_GGML_BF16 ? "bf16" : "f16");
    return 0;
}

static void encode_floats(const int8_t *t, uint64_t n, float scale, uint32_t type, uint8_t *out)
{
    for (uint64_t i = 0; i < n; i++) {
        float v = (float)t[i] * scale;
        if (type == BN_GGML_F32) {
            memcpy(out + 4 * i, &v, 4);
        } else {
            uint16_t h = type == BN_GGML_F16 ? bn_f32_to_f16(v) : bn_f32_to_bf16(v);
            memcpy(out + 2 * i, &h, 2);
        }
    }
}

/* llama.cpp's converter permutes q/k rows (LlamaModel.permute): HF row r goes to GGUF row
 * bn_qk_permuted_row(r). */
static int8_t *permuted(const int8_t *t, uint64_t rows, uint64_t cols, uint32_t head_dim)
{
    int8_t *p = malloc((size_t)(rows * cols));
    if (!p) return NULL;
    for (uint64_t r = 0; r < rows; r++) memcpy(p + bn_qk_permuted_row(r, head_dim) * cols, t + r * cols, (size_t)cols);
    return p;
}

static int encode_linear(const wctx *x, const wtensor *w, const int8_t *t, float scale, uint8_t *out, bn_error *err)
{
    const uint64_t n = w->rows * w->cols;
    uint16_t d = bn_f32_to_f16(scale);
    switch (w->type) {
    case BN_GGML_I2_S: enc_i2s(t, n, scale, out); return 0;
    case BN_GGML_TQ2_0: enc_tq2(t, n, d, out); return 0;
    case BN_GGML_TQ1_0: enc_tq1(t, n, d, out); return 0;
    case BN_GGML_TL1:
    case BN_GGML_TL2:
        if (bn_tl_encode(w->type == BN_GGML_TL1 ? BN_TL1 : BN_TL2, t, w->rows, w->cols, out, (size_t)w->nbytes, err))
            return bn_err_prefix(err, "%s: tensor %s", x->path, w->name);
        return 0;
    default: encode_floats(t, n, scale, w->type, out); return 0;
    }
}

static int write_linear(bn_atomic_file *f, const wctx *x, wtensor *w, bn_error *err)
{
    const uint64_t n = w->rows * w->cols;
    int8_t *t = malloc(n ? n : 1), *tp = NULL;
    uint8_t *out = malloc(w->nbytes ? w->nbytes : 1);
    int rc = -1;
    if (!t || !out) { bn_err(err, "%s: tensor %s: out of memory", x->path, w->name); goto done; }
    bn_synth_ternary(x->s, w->name, w->rows, w->cols, t, &w->scale);
    if (scale_fits(x, w, w->scale, err) != 0) goto done;
    if (w->qk && !(tp = permuted(t, w->rows, w->cols, x->c->head_dim))) {
        bn_err(err, "%s: tensor %s: out of memory", x->path, w->name);
        goto done;
    }
    if (encode_linear(x, w, tp ? tp : t, w->scale, out, err) != 0) goto done;
    rc = bn_atomic_write(f, out, w->nbytes, err);
done:
    free(t);
    free(tp);
    free(out);
    return rc;
}

/* Embedding and untied output rows, one row at a time: F16. */
static int write_rows(bn_atomic_file *f, const wctx *x, const wtensor *w, bn_error *err)
{
    float *row = malloc(w->cols * sizeof *row);
    uint16_t *h = malloc(w->cols * sizeof *h);
    int rc = 0;
    if (!row || !h) rc = bn_err(err, "%s: tensor %s: out of memory", x->path, w->name);
    for (uint64_t r = 0; rc == 0 && r < w->rows; r++) {
        (w->kind == W_EMBD ? bn_synth_embedding_row : bn_synth_output_row)(x->s, (uint32_t)r, row);
        for (uint64_t i = 0; i < w->cols; i++) h[i] = bn_f32_to_f16(row[i]);
        rc = bn_atomic_write(f, h, w->cols * sizeof *h, err);
    }
    free(row);
    free(h);
    return rc;
}

static int write_norm(bn_atomic_file *f, const wctx *x, const wtensor *w, bn_error *err)
{
    float *v = malloc(w->cols * sizeof *v);
    if (!v) return bn_err(err, "%s: tensor %s: out of memory", x->path, w->name);
    bn_synth_norm(x->s, w->name, w->cols, v);
    int rc = bn_atomic_write(f, v, w->cols * sizeof *v, err);
    free(v);
    return rc;
}

static int write_data(bn_atomic_file *f, const wctx *x, wtensor *t, size_t n, uint64_t data_off, bn_error *err)
{
    for (size_t i = 0; i < n; i++) {
        if (f->off != data_off + t[i].offset) return bn_err(err, "%s: internal: tensor %s misplaced", x->path, t[i].name);
        int rc;
        switch (t[i].kind) {
        case W_LINEAR: rc = write_linear(f, x, &t[i], err); break;
        case W_TL_SCALE: rc = bn_atomic_write(f, &t[i - 1].scale, 4, err); break; /* follows its tensor */
        case W_NORM: rc = write_norm(f, x, &t[i], err); break;
        default: rc = write_rows(f, x, &t[i], err); break;
        }
        if (rc != 0 || bn_atomic_pad(f, BN_GGUF_DEFAULT_ALIGNMENT, err) != 0) return -1;
    }
    return 0;
}

static int check_inputs(const wctx *x, int wt, bn_error *err)
{
    const char *path = x->path;
    if (wt != BN_GGML_I2_S && wt != BN_GGML_TQ2_0 && wt != BN_GGML_TQ1_0 && wt != BN_GGML_F16 && wt != BN_GGML_F32 &&
        wt != BN_GGML_BF16 && wt != BN_GGML_TL1 && wt != BN_GGML_TL2)
        return bn_err(err, "%s: weight type %d is not one of 36 (I2_S), 35 (TQ2_0), 34 (TQ1_0), 38 (TL1), 39 (TL2), "
                      "1 (F16), 30 (BF16), 0 (F32)", path, wt);
    if (!x->fam) return bn_err(err, "%s: unknown model family %u", path, x->s->family);
    if (x->v->n_tokens != x->c->n_vocab)
        return bn_err(err, "%s: vocabulary has %u tokens but the model %u", path, x->v->n_tokens, x->c->n_vocab);
    if (x->permute && !x->c->no_sub_norms)
        return bn_err(err, "%s: family %s: GGUF arch llama has no sub-norms, but the model has them", path,
                      x->fam->name);
    if (x->spm && !x->v->scores) return bn_err(err, "%s: SentencePiece vocabulary without scores", path);
    return 0;
}

int bn_gguf_format_type(const char *format)
{
    static const struct { const char *name; int type; } f[] = {
        {"gguf-i2_s", BN_GGML_I2_S}, {"gguf-tq2_0", BN_GGML_TQ2_0}, {"gguf-tq1_0", BN_GGML_TQ1_0},
        {"gguf-tl1", BN_GGML_TL1},   {"gguf-tl2", BN_GGML_TL2},     {"gguf-f16", BN_GGML_F16},
        {"gguf-bf16", BN_GGML_BF16}, {"gguf-f32", BN_GGML_F32},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (!strcmp(f[i].name, format)) return f[i].type;
    return -1;
}

int bn_gguf_write_synth(const bn_synth *s, const bn_vocab *v, const char *path, int weight_type, bn_error *err)
{
    wctx x = {s, &s->cfg, v, bn_family_get((enum bn_family)s->family), NULL, (uint32_t)weight_type, 0,
              v->model == BN_TOKM_SPM, path};
    if (x.fam) {
        x.arch = x.fam->gguf_arch;
        x.permute = x.fam->gguf_qk_permuted != 0;
    }
    if (check_inputs(&x, weight_type, err) != 0) return -1;
    const bn_config *c = &s->cfg;
    size_t cap = 3 + 2 * BN_LT_COUNT * (size_t)c->n_layer;
    wtensor *t = calloc(cap, sizeof *t);
    if (!t) return bn_err(err, "%s: out of memory", path);
    size_t n = list_tensors(&x, t);
    buf b = {0};
    kvbuf k = {{0}, 0};
    bn_atomic_file f;
    int rc = -1, opened = 0;
    if (size_tensors(&x, t, n, err) != 0) goto done;
    put_config(&k, &x);
    put_vocab(&k, &x);
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, n);
    put_u64(&b, k.n);
    put(&b, k.b.p, k.b.len);
    put_tensor_infos(&b, t, n);
    if (b.oom || k.b.oom) { bn_err(err, "%s: out of memory building the header", path); goto done; }
    if (bn_atomic_open(&f, path, err) != 0) goto done;
    opened = 1;
    if (bn_atomic_write(&f, b.p, b.len, err) != 0 || bn_atomic_pad(&f, BN_GGUF_DEFAULT_ALIGNMENT, err) != 0 ||
        write_data(&f, &x, t, n, bn_align_up(b.len, BN_GGUF_DEFAULT_ALIGNMENT), err) != 0)
        goto done;
    opened = 0;
    rc = bn_atomic_commit(&f, err);
done:
    if (opened) bn_atomic_abort(&f);
    free(b.p);
    free(k.b.p);
    free(t);
    return rc;
}
