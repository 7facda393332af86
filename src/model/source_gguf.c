/* GGUF as a conversion source: bitnet.cpp's files (arch bitnet-b1.58 / bitnet-25, I2_S) and
 * upstream ternary files (TQ1_0 / TQ2_0), plus F32/F16/BF16 exports.
 *
 * Open validates everything that does not need tensor data: config keys, tokenizer, and the
 * presence, shape and type of every tensor the packer will ask for. Tensor data is decoded on
 * demand from the mapping, one tensor (or a band of embedding rows) at a time. */
#include "model/source.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/checked.h"
#include "base/file.h"
#include "kernels/half.h"
#include "model/gguf.h"
#include "model/ternarize.h"

typedef struct gguf_source {
    bn_source base;        /* first: a bn_source * is a gguf_source * */
    bn_gguf *g;
} gguf_source;

static const struct bn_source_ops gguf_ops;

/* ---- tensors ----------------------------------------------------------------------------- */

static int is_float_type(uint32_t t) { return t == BN_GGML_F32 || t == BN_GGML_F16 || t == BN_GGML_BF16; }
static int is_ternary_type(uint32_t t)
{
    return t == BN_GGML_I2_S || t == BN_GGML_TQ1_0 || t == BN_GGML_TQ2_0 || is_float_type(t);
}

/* Canonical names are GGUF's without ".weight". */
static const bn_gguf_tensor *tensor_of(const bn_gguf *g, const char *name)
{
    char full[128];
    if ((size_t)snprintf(full, sizeof full, "%s.weight", name) >= sizeof full) return NULL;
    return bn_gguf_tensor_find(g, full);
}

/* Does t have shape [rows][cols] (ggml: ne0 = cols, ne1 = rows, every other dim 1)? */
static int shape_is(const bn_gguf_tensor *t, uint64_t rows, uint64_t cols)
{
    return t->ne[0] == cols && t->ne[1] == rows && t->ne[2] == 1 && t->ne[3] == 1;
}

static int shape_error(const bn_gguf *g, const char *name, const bn_gguf_tensor *t, uint64_t rows, uint64_t cols,
                       bn_error *err)
{
    return bn_err(err, "%s: tensor '%s.weight': shape [ne0=%llu, ne1=%llu, ne2=%llu, ne3=%llu] disagrees with the "
                  "expected [ne0=%llu (in), ne1=%llu (out)]", g->path, name, (unsigned long long)t->ne[0],
                  (unsigned long long)t->ne[1], (unsigned long long)t->ne[2], (unsigned long long)t->ne[3],
                  (unsigned long long)cols, (unsigned long long)rows);
}

/* The tensor must exist, have the shape the config implies and a type we can read as wanted. */
static int expect_tensor(const bn_gguf *g, const char *name, uint64_t rows, uint64_t cols, int ternary, bn_error *err)
{
    const bn_gguf_tensor *t = tensor_of(g, name);
    if (!t) return bn_err(err, "%s: tensor '%s.weight': missing", g->path, name);
    if (!shape_is(t, rows, cols)) return shape_error(g, name, t, rows, cols, err);
    char tb[16];
    if (ternary ? !is_ternary_type(t->type) : !is_float_type(t->type))
        return bn_err(err, "%s: tensor '%s.weight': type %s cannot be read as %s", g->path, name,
                      bn_ggml_type_name(t->type, tb), ternary ? "a ternary matrix" : "floats (F32, F16 or BF16)");
    return 0;
}

/* Per-layer tensors and their shapes; r/c: 0 = n_embd, 1 = q dim, 2 = kv dim, 3 = n_ff,
 * 4 = one row (vectors). tern: read through ternary() (else floats()). */
static const struct { const char *n; int r, c, tern; } lt[] = {
    {"attn_norm", 4, 0, 0}, {"attn_q", 1, 0, 1}, {"attn_k", 2, 0, 1}, {"attn_v", 2, 0, 1},
    {"attn_sub_norm", 4, 1, 0}, {"attn_output", 0, 1, 1}, {"ffn_norm", 4, 0, 0}, {"ffn_gate", 3, 0, 1},
    {"ffn_up", 3, 0, 1}, {"ffn_sub_norm", 4, 3, 0}, {"ffn_down", 0, 3, 1},
};

static int is_layer_tensor(const char *suffix)
{
    for (size_t i = 0; i < sizeof lt / sizeof lt[0]; i++)
        if (!strcmp(lt[i].n, suffix)) return 1;
    return 0;
}

static int check_tensors(const bn_gguf *g, const bn_config *c, bn_error *err)
{
    uint64_t E = c->n_embd, F = c->n_ff, V = c->n_vocab;
    uint64_t Q = (uint64_t)c->n_head * c->head_dim, KV = (uint64_t)c->n_head_kv * c->head_dim;
    if (expect_tensor(g, "token_embd", V, E, 0, err) || expect_tensor(g, "output_norm", 1, E, 0, err)) return -1;
    if (!c->tied && expect_tensor(g, "output", V, E, 0, err)) return -1;
    const uint64_t dim[5] = {E, Q, KV, F, 1};
    for (uint32_t l = 0; l < c->n_layer; l++)
        for (size_t i = 0; i < sizeof lt / sizeof lt[0]; i++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%u.%s", l, lt[i].n);
            if (expect_tensor(g, name, dim[lt[i].r], dim[lt[i].c], lt[i].tern, err) != 0) return -1;
        }
    return 0;
}

/* Tensors we do not use are reported, not fatal (bitnet.cpp's loader also tolerates extras). */
static void note_unknown_tensors(gguf_source *s)
{
    const bn_gguf *g = s->g;
    uint64_t n = 0;
    char first[96] = "";
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        bn_gguf_str nm = g->tensors[i].name;
        char buf[96];
        bn_gguf_str_show(nm, buf, sizeof buf);
        int known = 0;
        unsigned l;
        char rest[64];
        if (!strcmp(buf, "token_embd.weight") || !strcmp(buf, "output_norm.weight") || !strcmp(buf, "output.weight"))
            known = 1;
        else if (sscanf(buf, "blk.%u.%63[a-z_].weight", &l, rest) == 2 && l < s->base.cfg.n_layer) {
            char canon[96];
            snprintf(canon, sizeof canon, "blk.%u.%s.weight", l, rest);
            known = !strcmp(canon, buf) && is_layer_tensor(rest);
        }
        if (!known && n++ == 0) memcpy(first, buf, sizeof first);
    }
    if (n) bn_source_note(&s->base, "ignored %llu tensor(s) bitnetd does not use, e.g. '%s'", (unsigned long long)n, first);
}

/* ---- config ------------------------------------------------------------------------------ */

static int key_u32(const bn_gguf *g, const char *arch, const char *k, int req, uint32_t *out, bn_error *err)
{
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, k);
    return bn_gguf_get_u32(g, key, req, out, err);
}

static int key_f32(const bn_gguf *g, const char *arch, const char *k, int req, float *out, bn_error *err)
{
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, k);
    return bn_gguf_get_f32(g, key, req, out, err);
}

/* The FFN activation. bitnet-b1.58 / bitnet-25 are ReLU² by definition (bitnet.cpp's
 * build_bitnet_158); plain "bitnet" is the 2024 1bitLLM graph unless a key says relu2. */
static int read_activation(const bn_gguf *g, bn_config *c, bn_error *err)
{
    const char *keys[4] = {"hidden_act", "hidden_activation", NULL, NULL};
    char k0[96], k1[96];
    snprintf(k0, sizeof k0, "%s.hidden_act", g->arch);
    snprintf(k1, sizeof k1, "%s.hidden_activation", g->arch);
    keys[2] = k0;
    keys[3] = k1;
    int found = 0;
    for (int i = 0; i < 4; i++) {
        bn_gguf_str v;
        int r = bn_gguf_get_str(g, keys[i], 0, &v, err);
        if (r < 0) return -1;
        if (r == 0) continue;
        char val[40];
        if (!(v.len == 5 && !memcmp(v.p, "relu2", 5)))
            return bn_err(err, "%s: metadata key '%s': activation '%s' is not relu2 (ReLU²), the only one bitnetd "
                          "implements", g->path, keys[i], bn_gguf_str_show(v, val, sizeof val));
        found = 1;
    }
    if (!strcmp(g->arch, "bitnet") && !found)
        return bn_err(err, "%s: metadata key 'general.architecture': 'bitnet' without a hidden_act = relu2 key is the "
                      "2024 1bitLLM graph (SiLU FFN, llama.cpp's build_bitnet), which bitnetd does not implement; "
                      "BitNet b1.58 2B-4T files use 'bitnet-b1.58'", g->path);
    c->act = BN_ACT_RELU2;
    return 0;
}

static int check_arch(const bn_gguf *g, bn_error *err)
{
    if (bn_gguf_arch_is_bitnet(g->arch)) return 0;
    if (!strcmp(g->arch, "llama"))
        return bn_err(err, "%s: metadata key 'general.architecture': Llama-architecture ternary models (e.g. "
                      "Llama3-8B-1.58) are out of scope: bitnetd runs the BitNet b1.58 graph only", g->path);
    return bn_err(err, "%s: metadata key 'general.architecture': unknown architecture '%s' (supported: bitnet-b1.58, "
                  "bitnet-25, bitnet with hidden_act = relu2)", g->path, g->arch);
}

static int read_config(gguf_source *s, bn_error *err)
{
    const bn_gguf *g = s->g;
    bn_config *c = &s->base.cfg;
    const char *a = g->arch;
    memset(c, 0, sizeof *c);
    if (key_u32(g, a, "context_length", 1, &c->n_ctx_max, err) < 0 ||
        key_u32(g, a, "embedding_length", 1, &c->n_embd, err) < 0 ||
        key_u32(g, a, "block_count", 1, &c->n_layer, err) < 0 ||
        key_u32(g, a, "feed_forward_length", 1, &c->n_ff, err) < 0 ||
        key_u32(g, a, "attention.head_count", 1, &c->n_head, err) < 0 ||
        key_f32(g, a, "attention.layer_norm_rms_epsilon", 1, &c->norm_eps, err) < 0)
        return -1;
    int r = key_u32(g, a, "attention.head_count_kv", 0, &c->n_head_kv, err);
    if (r < 0) return -1;
    if (r == 0) c->n_head_kv = c->n_head; /* llama.cpp's default: no GQA */
    char key[160];
    snprintf(key, sizeof key, "%s.attention.head_count", a);
    if (c->n_head == 0 || c->n_embd % c->n_head)
        return bn_err(err, "%s: metadata key '%s': %u heads do not divide embedding_length %u", g->path, key, c->n_head,
                      c->n_embd);
    c->head_dim = c->n_embd / c->n_head;
    snprintf(key, sizeof key, "%s.attention.head_count_kv", a);
    if (c->n_head_kv == 0 || c->n_head % c->n_head_kv)
        return bn_err(err, "%s: metadata key '%s': %u KV heads do not divide %u query heads", g->path, key,
                      c->n_head_kv, c->n_head);
    uint32_t rot = c->head_dim;
    if (key_u32(g, a, "rope.dimension_count", 0, &rot, err) < 0) return -1;
    if (rot != c->head_dim)
        return bn_err(err, "%s: metadata key '%s.rope.dimension_count': %u differs from head_dim %u (partial RoPE is "
                      "not supported)", g->path, a, rot, c->head_dim);
    r = key_f32(g, a, "rope.freq_base", 0, &c->rope_theta, err);
    if (r < 0) return -1;
    if (r == 0) {
        /* llama.cpp's default, so we compute what bitnet.cpp would with this file. */
        c->rope_theta = 10000.0f;
        bn_source_note(&s->base, "%s.rope.freq_base missing: using llama.cpp's default 10000 (BitNet b1.58 2B-4T "
                       "uses 500000)", a);
    }
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
        return bn_err(err, "%s: metadata key '%s.rope.freq_base': %g is not a positive number", g->path, a, c->rope_theta);
    if (!(c->norm_eps > 0) || !isfinite(c->norm_eps))
        return bn_err(err, "%s: metadata key '%s.attention.layer_norm_rms_epsilon': %g is not a positive number",
                      g->path, a, c->norm_eps);
    c->tied = bn_gguf_tensor_find(g, "output.weight") == NULL;
    return read_activation(g, c, err);
}

/* ---- tokenizer ----------------------------------------------------------------------------- */

static int fill_tokens(const bn_gguf *g, const bn_gguf_kv *toks, const bn_gguf_kv *merges, bn_vocab **out, bn_error *err)
{
    uint64_t pos = 0, total = 0;
    for (uint64_t i = 0; i < toks->arr_n; i++) total += bn_gguf_arr_next_str(toks, &pos).len; /* <= file size */
    if (toks->arr_n == 0 || toks->arr_n > (1u << 24) || total > UINT32_MAX || merges->arr_n > (1u << 24))
        return bn_err(err, "%s: metadata key 'tokenizer.ggml.tokens': %llu tokens (%llu bytes) and %llu merges are "
                      "outside the supported range (1..2^24 tokens and merges, < 4 GiB text)", g->path,
                      (unsigned long long)toks->arr_n, (unsigned long long)total, (unsigned long long)merges->arr_n);
    bn_vocab *v = bn_vocab_alloc((uint32_t)toks->arr_n, (size_t)total, (uint32_t)merges->arr_n);
    if (!v) return bn_err(err, "%s: out of memory for the vocabulary", g->path);
    pos = 0;
    uint32_t off = 0;
    for (uint32_t i = 0; i < v->n_tokens; i++) {
        bn_gguf_str t = bn_gguf_arr_next_str(toks, &pos);
        memcpy(v->text + off, t.p, t.len);
        off += (uint32_t)t.len;
        v->tok_off[i + 1] = off;
        v->type[i] = BN_TOK_NORMAL;
    }
    *out = v;
    return 0;
}

static int fill_types_and_merges(const bn_gguf *g, bn_vocab *v, const bn_gguf_kv *merges, bn_error *err)
{
    const bn_gguf_kv *tt;
    int r = bn_gguf_get_arr(g, "tokenizer.ggml.token_type", 0, BN_GGUF_ARRAY_ANY_INT, &tt, err);
    if (r < 0) return -1;
    if (r == 1) {
        if (tt->arr_n != v->n_tokens)
            return bn_err(err, "%s: metadata key 'tokenizer.ggml.token_type': %llu entries for %u tokens", g->path,
                          (unsigned long long)tt->arr_n, v->n_tokens);
        for (uint32_t i = 0; i < v->n_tokens; i++) {
            int64_t x = bn_gguf_arr_int(tt, i);
            if (x < 0 || x > BN_TOK_BYTE)
                return bn_err(err, "%s: metadata key 'tokenizer.ggml.token_type': token %u has unknown type %lld",
                              g->path, i, (long long)x);
            v->type[i] = (uint8_t)x;
        }
    }
    if (bn_vocab_index(v, err) != 0) return bn_err_prefix(err, "%s: metadata key 'tokenizer.ggml.tokens'", g->path);
    uint64_t pos = 0;
    for (uint32_t i = 0; i < v->n_merges; i++) {
        bn_gguf_str m = bn_gguf_arr_next_str(merges, &pos);
        if (bn_vocab_set_merge(v, i, m.p, (size_t)m.len, err) != 0)
            return bn_err_prefix(err, "%s: metadata key 'tokenizer.ggml.merges'", g->path);
    }
    return 0;
}

static int special_id(const bn_gguf *g, const bn_vocab *v, const char *key, int32_t *id, bn_error *err)
{
    uint32_t x;
    int r = bn_gguf_get_u32(g, key, 0, &x, err);
    if (r <= 0) return r;
    if (x >= v->n_tokens)
        return bn_err(err, "%s: metadata key '%s': token id %u is outside the vocabulary of %u", g->path, key, x,
                      v->n_tokens);
    *id = (int32_t)x;
    return 1;
}

static int read_specials(const bn_gguf *g, bn_vocab *v, bn_error *err)
{
    if (special_id(g, v, "tokenizer.ggml.bos_token_id", &v->bos, err) < 0 ||
        special_id(g, v, "tokenizer.ggml.eos_token_id", &v->eos, err) < 0 ||
        special_id(g, v, "tokenizer.ggml.padding_token_id", &v->pad, err) < 0)
        return -1;
    int r = special_id(g, v, "tokenizer.ggml.eot_token_id", &v->eot, err);
    if (r < 0) return -1;
    if (r == 0) v->eot = bn_vocab_find(v, "<|eot_id|>", 10); /* as bitnet.cpp detects it: by text */
    return 0;
}

static int read_pre(gguf_source *s, bn_vocab *v, bn_error *err)
{
    const bn_gguf *g = s->g;
    bn_gguf_str p;
    int r = bn_gguf_get_str(g, "tokenizer.ggml.pre", 0, &p, err);
    if (r < 0) return -1;
    if (r == 0) {
        /* bitnet.cpp's official file lacks the key; its tokenizer is Llama-3's (model facts 6.4). */
        v->pre = BN_PRE_LLAMA3;
        v->ignore_merges = 1; /* Llama-3 semantics, as llama.cpp applies them; GGUF has no key for it */
        bn_source_note(&s->base, "tokenizer.ggml.pre missing: using llama3");
        return 0;
    }
    static const char *llama3[] = {"llama-bpe", "llama3", "llama-v3"};
    for (size_t i = 0; i < 3; i++)
        if (p.len == strlen(llama3[i]) && !memcmp(p.p, llama3[i], p.len)) {
            v->pre = BN_PRE_LLAMA3;
            v->ignore_merges = 1;
            return 0;
        }
    if ((p.len == 4 && !memcmp(p.p, "gpt2", 4)) || (p.len == 5 && !memcmp(p.p, "gpt-2", 5))) {
        v->pre = BN_PRE_GPT2;
        return 0;
    }
    char val[48];
    return bn_err(err, "%s: metadata key 'tokenizer.ggml.pre': pre-tokenizer '%s' is not supported (llama-bpe, gpt2)",
                  g->path, bn_gguf_str_show(p, val, sizeof val));
}

static int contains(bn_gguf_str hay, const char *needle)
{
    size_t n = strlen(needle);
    for (uint64_t i = 0; hay.len >= n && i <= hay.len - n; i++)
        if (!memcmp(hay.p + i, needle, n)) return 1;
    return 0;
}

static int read_chat(gguf_source *s, bn_vocab *v, bn_error *err)
{
    const bn_gguf *g = s->g;
    bn_gguf_str t;
    int r = bn_gguf_get_str(g, "tokenizer.chat_template", 0, &t, err);
    if (r < 0) return -1;
    v->chat = BN_CHAT_BITNET; /* a BitNet arch: its trained format unless the file says otherwise */
    if (r == 0) return 0;
    if (!(v->chat_template = malloc(t.len + 1))) return bn_err(err, "%s: out of memory", g->path);
    memcpy(v->chat_template, t.p, t.len);
    v->chat_template[t.len] = 0;
    if (contains(t, "BITNETAssistant"))
        bn_source_note(&s->base, "tokenizer.chat_template is bitnet.cpp's converter placeholder (Human: ... "
                       "BITNETAssistant:): using the trained BitNet format (System:/User:/Assistant: ...<|eot_id|>)");
    else if (contains(t, "<|start_header_id|>"))
        v->chat = BN_CHAT_LLAMA3;
    else
        bn_source_note(&s->base, "tokenizer.chat_template not recognized: using the trained BitNet format");
    return 0;
}

static int read_vocab(gguf_source *s, bn_error *err)
{
    const bn_gguf *g = s->g;
    bn_gguf_str model;
    if (bn_gguf_get_str(g, "tokenizer.ggml.model", 1, &model, err) < 0) return -1;
    if (!(model.len == 4 && !memcmp(model.p, "gpt2", 4))) {
        char val[48];
        return bn_err(err, "%s: metadata key 'tokenizer.ggml.model': tokenizer '%s' is not supported (only gpt2 "
                      "byte-level BPE)", g->path, bn_gguf_str_show(model, val, sizeof val));
    }
    const bn_gguf_kv *toks, *merges;
    if (bn_gguf_get_arr(g, "tokenizer.ggml.tokens", 1, BN_GGUF_STRING, &toks, err) < 0 ||
        bn_gguf_get_arr(g, "tokenizer.ggml.merges", 1, BN_GGUF_STRING, &merges, err) < 0)
        return -1;
    bn_vocab *v = NULL;
    if (fill_tokens(g, toks, merges, &v, err) != 0) return -1;
    s->base.vocab = v; /* owned by the source from here on */
    if (fill_types_and_merges(g, v, merges, err) != 0 || read_specials(g, v, err) != 0 || read_pre(s, v, err) != 0 ||
        read_chat(s, v, err) != 0)
        return -1;
    if (bn_vocab_validate(v, err) != 0) return bn_err_prefix(err, "%s: tokenizer", g->path);
    return 0;
}

/* vocab_size may be absent (then the token count decides); if present both must agree. */
static int settle_vocab_size(gguf_source *s, bn_error *err)
{
    bn_config *c = &s->base.cfg;
    const bn_gguf *g = s->g;
    uint32_t n = s->base.vocab->n_tokens;
    int r = key_u32(g, g->arch, "vocab_size", 0, &c->n_vocab, err);
    if (r < 0) return -1;
    if (r == 1 && c->n_vocab != n)
        return bn_err(err, "%s: metadata key '%s.vocab_size': %u disagrees with the %u entries of tokenizer.ggml.tokens",
                      g->path, g->arch, c->n_vocab, n);
    c->n_vocab = n;
    c->bos = s->base.vocab->bos;
    c->eos = s->base.vocab->eos;
    c->eot = s->base.vocab->eot;
    return 0;
}

static const char *kind_of(const bn_gguf *g)
{
    const bn_gguf_tensor *t = tensor_of(g, "blk.0.attn_q");
    switch (t ? t->type : UINT32_MAX) {
    case BN_GGML_I2_S: return "gguf-i2_s";
    case BN_GGML_TQ2_0: return "gguf-tq2_0";
    case BN_GGML_TQ1_0: return "gguf-tq1_0";
    case BN_GGML_F16: return "gguf-f16";
    case BN_GGML_BF16: return "gguf-bf16";
    case BN_GGML_F32: return "gguf-f32";
    default: return "gguf";
    }
}

/* ---- open -------------------------------------------------------------------------------- */

static int open_parts(gguf_source *s, bn_error *err)
{
    if (check_arch(s->g, err) != 0 || read_config(s, err) != 0 || read_vocab(s, err) != 0 ||
        settle_vocab_size(s, err) != 0)
        return -1;
    if (bn_config_validate(&s->base.cfg, err) != 0) return bn_err_prefix(err, "%s: config", s->g->path);
    if (check_tensors(s->g, &s->base.cfg, err) != 0) return -1;
    note_unknown_tensors(s);
    if (!(s->base.kind = strdup(kind_of(s->g)))) return bn_err(err, "%s: out of memory", s->g->path);
    return 0;
}

static int open_source(bn_gguf *g, bn_source **out, bn_error *err)
{
    gguf_source *s = calloc(1, sizeof *s);
    if (!s || !(s->base.path = strdup(g->path))) {
        free(s);
        bn_gguf_close(g);
        return bn_err(err, "%s: out of memory", g->path);
    }
    s->base.ops = &gguf_ops;
    s->g = g;
    if (open_parts(s, err) != 0) {
        gguf_ops.close(&s->base);
        return -1;
    }
    *out = &s->base;
    return 0;
}

int bn_source_open_gguf(const char *path, bn_source **out, bn_error *err)
{
    *out = NULL;
    bn_gguf *g;
    if (bn_gguf_open(path, &g, err) != 0) return -1;
    return open_source(g, out, err);
}

int bn_source_open_gguf_mem(const void *data, size_t len, const char *name, bn_source **out, bn_error *err)
{
    *out = NULL;
    bn_gguf *g;
    if (bn_gguf_open_mem(data, len, name, &g, err) != 0) return -1;
    return open_source(g, out, err);
}

/* ---- data access ------------------------------------------------------------------------- */

/* Finds `name` and checks the caller's idea of its shape. */
static const bn_gguf_tensor *get_tensor(gguf_source *s, const char *name, uint64_t rows, uint64_t cols, bn_error *err)
{
    const bn_gguf_tensor *t = tensor_of(s->g, name);
    if (!t) {
        bn_err(err, "%s: tensor '%s.weight': missing", s->g->path, name);
        return NULL;
    }
    if (!shape_is(t, rows, cols)) {
        shape_error(s->g, name, t, rows, cols, err);
        return NULL;
    }
    return t;
}

/* out[i] = element first+i of a float tensor; the type is resolved per element but the branch
 * is uniform, so the loop vectorizes poorly yet runs in parallel. Returns the index of a
 * non-finite value, or -1. */
static int64_t floats_at(const uint8_t *p, uint32_t type, uint64_t first, uint64_t count, float *out)
{
    int64_t bad = -1;
#pragma omp parallel for schedule(static) reduction(max : bad) if (count > 65536)
    for (uint64_t i = 0; i < count; i++) {
        float f;
        if (type == BN_GGML_F32) {
            memcpy(&f, p + 4 * (first + i), 4);
        } else {
            uint16_t h;
            memcpy(&h, p + 2 * (first + i), 2);
            f = type == BN_GGML_F16 ? bn_f16_to_f32(h) : bn_bf16_to_f32(h);
        }
        out[i] = f;
        if (!isfinite(f)) bad = (int64_t)i > bad ? (int64_t)i : bad;
    }
    return bad;
}

static int src_floats(bn_source *bs, const char *name, uint64_t rows, uint64_t cols, uint64_t row0, uint64_t n,
                      float *out, bn_error *err)
{
    gguf_source *s = (gguf_source *)bs;
    const bn_gguf_tensor *t = get_tensor(s, name, rows, cols, err);
    if (!t) return -1;
    char tb[16];
    if (!is_float_type(t->type))
        return bn_err(err, "%s: tensor '%s.weight': type %s is not a float type", s->g->path, name,
                      bn_ggml_type_name(t->type, tb));
    if (!bn_range_ok(row0, n, rows))
        return bn_err(err, "%s: tensor '%s.weight': rows [%llu, %llu+%llu) outside its %llu rows", s->g->path, name,
                      (unsigned long long)row0, (unsigned long long)row0, (unsigned long long)n, (unsigned long long)rows);
    const uint64_t first = row0 * cols, count = n * cols; /* <= n_elements: no overflow */
    (void)floats_at(t->data, t->type, first, count, out); /* the packer rejects non-finite values */
    size_t esize = t->type == BN_GGML_F32 ? 4 : 2;
    if (s->g->map.data) bn_release_pages(t->data + first * esize, count * esize); /* file mappings only */
    return 0;
}

/* I2_S (model facts 4.3): 128-element blocks of 32 bytes; byte j of a block holds elements
 * j, j+32, j+64, j+96 in bits 7-6, 5-4, 3-2, 1-0; code = t + 1 (3 decodes as 0); the f32
 * scale follows the packed bytes. */
static int decode_i2s(const bn_gguf *g, const char *name, const bn_gguf_tensor *t, int8_t *out, float *scale,
                      bn_error *err)
{
    static const int8_t val[4] = {-1, 0, 1, 0};
    const uint64_t n = t->n_elements;
    for (uint64_t b = 0; b < n / 128; b++) {
        const uint8_t *p = t->data + b * 32;
        int8_t *o = out + b * 128;
        for (int j = 0; j < 32; j++) {
            o[j] = val[p[j] >> 6];
            o[j + 32] = val[(p[j] >> 4) & 3];
            o[j + 64] = val[(p[j] >> 2) & 3];
            o[j + 96] = val[p[j] & 3];
        }
    }
    memcpy(scale, t->data + n / 4, 4);
    char what[96];
    snprintf(what, sizeof what, "'%s.weight'", name);
    return bn_check_scale(*scale, g->path, what, err);
}

/* Block scales of TQ types. BitNet has one scale per tensor, so every block holding a nonzero
 * must carry the same |d|; a negative d flips the block's signs. Returns the sign to apply, or
 * 0 if the block is all zero (its d is then irrelevant), or -2 on error. */
static int tq_block_scale(const bn_gguf *g, const char *name, uint64_t b, uint16_t dh, int any_nonzero,
                          float *common, bn_error *err)
{
    if (!any_nonzero) return 0;
    float d = bn_f16_to_f32(dh);
    if (!isfinite(d)) {
        bn_err(err, "%s: tensor '%s.weight': block %llu scale d = %g is not finite", g->path, name, (unsigned long long)b, d);
        return -2;
    }
    if (d == 0) return 0;
    float a = fabsf(d);
    if (*common == 0) *common = a;
    else if (a != *common) {
        bn_err(err, "%s: tensor '%s.weight': block %llu has scale d = %g but earlier blocks have %g; a per-tensor "
               "ternary weight (one scale, as BitNet has) cannot represent per-block scales", g->path, name,
               (unsigned long long)b, a, *common);
        return -2;
    }
    return d < 0 ? -1 : 1;
}

static void tq2_block(const uint8_t *q, int8_t *o)
{
    /* byte c*32+m, bits 2n: element c*128 + n*32 + m */
    for (int c = 0; c < 2; c++)
        for (int n = 0; n < 4; n++)
            for (int m = 0; m < 32; m++) {
                int code = (q[c * 32 + m] >> (2 * n)) & 3;
                o[c * 128 + n * 32 + m] = (int8_t)(code == 3 ? 0 : code - 1); /* code 3 never written; as I2_S */
            }
}

/* Trit n (0 = most significant) of a byte in the ·256/243 fixed-point base-3 encoding. */
static int trit(uint8_t byte, int n)
{
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    uint8_t q = (uint8_t)(byte * pow3[n]); /* drop the higher trits (mod 256) */
    return ((uint16_t)q * 3) >> 8;
}

static void tq1_block(const uint8_t *qs, const uint8_t *qh, int8_t *o)
{
    /* qs[0..32): 5 trits each, element n*32 + m; qs[32..48): element 160 + n*16 + m;
     * qh[0..4): 4 trits each, element 240 + n*4 + j. */
    for (int n = 0; n < 5; n++)
        for (int m = 0; m < 32; m++) o[n * 32 + m] = (int8_t)(trit(qs[m], n) - 1);
    for (int n = 0; n < 5; n++)
        for (int m = 0; m < 16; m++) o[160 + n * 16 + m] = (int8_t)(trit(qs[32 + m], n) - 1);
    for (int n = 0; n < 4; n++)
        for (int j = 0; j < 4; j++) o[240 + n * 4 + j] = (int8_t)(trit(qh[j], n) - 1);
}

static int decode_tq(const bn_gguf *g, const char *name, const bn_gguf_tensor *t, int8_t *out, float *scale,
                     bn_error *err)
{
    const int tq1 = t->type == BN_GGML_TQ1_0;
    const uint64_t bsz = tq1 ? 54 : 66, nb = t->n_elements / 256;
    float common = 0;
    for (uint64_t b = 0; b < nb; b++) {
        const uint8_t *p = t->data + b * bsz;
        int8_t *o = out + b * 256;
        uint16_t dh;
        if (tq1) tq1_block(p, p + 48, o);
        else tq2_block(p, o);
        memcpy(&dh, p + bsz - 2, 2);
        int nz = 0;
        for (int i = 0; i < 256; i++) nz |= o[i];
        int sign = tq_block_scale(g, name, b, dh, nz != 0, &common, err);
        if (sign == -2) return -1;
        if (sign != 1)
            for (int i = 0; i < 256; i++) o[i] = (int8_t)(o[i] * sign); /* 0: the block is zero */
    }
    /* An all-zero tensor has no scale of its own: use the absmean rule's floor. */
    *scale = common > 0 ? common : 1e-5f;
    char what[96];
    snprintf(what, sizeof what, "'%s.weight'", name);
    return bn_check_scale(*scale, g->path, what, err);
}

static int decode_float_linear(const bn_gguf *g, const char *name, const bn_gguf_tensor *t, int8_t *out, float *scale,
                               bn_error *err)
{
    const uint64_t n = t->n_elements;
    if (n > SIZE_MAX / sizeof(float)) return bn_err(err, "%s: tensor '%s.weight': too large", g->path, name);
    float *w = malloc((size_t)n * sizeof *w);
    if (!w) return bn_err(err, "%s: tensor '%s.weight': out of memory for %llu floats", g->path, name, (unsigned long long)n);
    int64_t bad = floats_at(t->data, t->type, 0, n, w);
    if (bad >= 0) {
        free(w);
        return bn_err(err, "%s: tensor '%s.weight': element %lld is not finite", g->path, name, (long long)bad);
    }
    bn_ternarize_auto(w, (size_t)n, out, scale);
    free(w);
    char what[96];
    snprintf(what, sizeof what, "'%s.weight'", name);
    return bn_check_scale(*scale, g->path, what, err);
}

static int src_ternary(bn_source *bs, const char *name, uint64_t rows, uint64_t cols, int8_t *t, float *scale,
                       bn_error *err)
{
    gguf_source *s = (gguf_source *)bs;
    const bn_gguf_tensor *x = get_tensor(s, name, rows, cols, err);
    if (!x) return -1;
    char tb[16];
    int rc;
    switch (x->type) {
    case BN_GGML_I2_S: rc = decode_i2s(s->g, name, x, t, scale, err); break;
    case BN_GGML_TQ1_0:
    case BN_GGML_TQ2_0: rc = decode_tq(s->g, name, x, t, scale, err); break;
    case BN_GGML_F32:
    case BN_GGML_F16:
    case BN_GGML_BF16: rc = decode_float_linear(s->g, name, x, t, scale, err); break;
    default:
        return bn_err(err, "%s: tensor '%s.weight': type %s cannot be read as a ternary matrix", s->g->path, name,
                      bn_ggml_type_name(x->type, tb));
    }
    /* Each tensor is read once: drop its pages so peak RSS stays one tensor. Only for a file
     * mapping: on memory the caller owns (bn_gguf_open_mem), MADV_DONTNEED would zero it. */
    if (s->g->map.data) bn_release_pages(x->data, x->nbytes);
    return rc;
}

static void src_close(bn_source *bs)
{
    gguf_source *s = (gguf_source *)bs;
    bn_gguf_close(s->g);
    bn_source_base_free(&s->base);
    free(s);
}

static const struct bn_source_ops gguf_ops = {src_ternary, src_floats, src_close};
