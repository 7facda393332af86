/* GGUF as a conversion source, every BitNet family in the form bitnet.cpp writes it
 * (../shared/docs/bitnet-families.md): arch "bitnet-b1.58" / "bitnet-25" (2B-4T; 1bitLLM since
 * bitnet.cpp HEAD), "bitnet" (2024: 1bitLLM) and "llama" (Llama3-8B-1.58, Falcon3, Falcon-E),
 * with I2_S, TL1/TL2, upstream TQ1_0 / TQ2_0, or F32/F16/BF16 linears, and a gpt2 (byte-level
 * BPE) or "llama" (SentencePiece) vocabulary.
 *
 * A llama-arch file's q/k rows are in llama.cpp's permuted order (its converter permutes them
 * so that adjacent-pair RoPE equals HF's rotate_half): they are un-permuted here, so the HF and
 * GGUF forms of a model give the same codes and pack to byte-identical files.
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
#include "model/family.h"
#include "model/gguf.h"
#include "model/tensor_table.h"
#include "model/ternarize.h"
#include "model/tl_layout.h"

typedef struct gguf_source {
    bn_source base;        /* first: a bn_source * is a gguf_source * */
    bn_gguf *g;
    int llama;             /* arch "llama": q/k rows permuted, no sub-norms */
    int spm;               /* tokenizer.ggml.model = llama (SentencePiece) */
    int pre_falcon;        /* tokenizer.ggml.pre falcon3 / falcon_e */
} gguf_source;

static const struct bn_source_ops gguf_ops;

static int str_is(bn_gguf_str s, const char *z) { return s.len == strlen(z) && !memcmp(s.p, z, s.len); }

/* ---- tensors ----------------------------------------------------------------------------- */

static int is_float_type(uint32_t t) { return t == BN_GGML_F32 || t == BN_GGML_F16 || t == BN_GGML_BF16; }
static int is_tl_type(uint32_t t) { return t == BN_GGML_TL1 || t == BN_GGML_TL2; }
static int is_ternary_type(uint32_t t)
{
    return t == BN_GGML_I2_S || t == BN_GGML_TQ1_0 || t == BN_GGML_TQ2_0 || is_tl_type(t) || is_float_type(t);
}

/* Canonical names are GGUF's without ".weight"; suffix: "" or "_scale" (TL scales). */
static const bn_gguf_tensor *tensor_of2(const bn_gguf *g, const char *name, const char *suffix)
{
    char full[128];
    if ((size_t)snprintf(full, sizeof full, "%s.weight%s", name, suffix) >= sizeof full) return NULL;
    return bn_gguf_tensor_find(g, full);
}

static const bn_gguf_tensor *tensor_of(const bn_gguf *g, const char *name) { return tensor_of2(g, name, ""); }

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

/* A TL tensor's per-tensor scale: the F32 scalar "<name>.weight_scale" bitnet.cpp's converter
 * writes after it (gguf-py stores a numpy scalar as a 0-dimensional tensor). */
static int expect_tl_scale(const bn_gguf *g, const char *name, bn_error *err)
{
    const bn_gguf_tensor *t = tensor_of2(g, name, "_scale");
    char tb[16];
    if (!t) return bn_err(err, "%s: tensor '%s.weight_scale': missing (the per-tensor scale of a TL tensor)", g->path, name);
    if (t->type != BN_GGML_F32 || t->n_elements != 1)
        return bn_err(err, "%s: tensor '%s.weight_scale': a TL scale must be one F32 value, found %s with %llu elements",
                      g->path, name, bn_ggml_type_name(t->type, tb), (unsigned long long)t->n_elements);
    return 0;
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
    /* bitnet.cpp's I2_S kernels take whole 128-element blocks per row (bitnet-families.md s.0:
     * why 1bitLLM-3B, K = 8640, ships as TL only). */
    if (t->type == BN_GGML_I2_S && cols % 128)
        return bn_err(err, "%s: tensor '%s.weight': I2_S needs the input dimension (ne0 = %llu) to be a multiple of "
                      "128; bitnet.cpp stores such shapes as TL1/TL2 only", g->path, name, (unsigned long long)cols);
    if (is_tl_type(t->type)) return expect_tl_scale(g, name, err);
    return 0;
}

static int check_tensors(const bn_gguf *g, const bn_config *c, bn_error *err)
{
    if (expect_tensor(g, "token_embd", c->n_vocab, c->n_embd, 0, err) ||
        expect_tensor(g, "output_norm", 1, c->n_embd, 0, err))
        return -1;
    if (!c->tied && expect_tensor(g, "output", c->n_vocab, c->n_embd, 0, err)) return -1;
    for (uint32_t l = 0; l < c->n_layer; l++)
        for (int i = 0; i < BN_LT_COUNT; i++) {
            const bn_layer_tensor_def *d = &bn_layer_tensors[i];
            if (!bn_layer_tensor_present(c, d)) continue;
            char name[64];
            uint64_t rows, cols;
            snprintf(name, sizeof name, "blk.%u.%s", l, d->canon);
            bn_layer_tensor_shape(c, d, &rows, &cols);
            if (expect_tensor(g, name, rows, cols, d->ternary, err) != 0) return -1;
        }
    return 0;
}

/* Is `name` (a full GGUF tensor name) one this source reads? */
static int is_used_tensor(const bn_config *c, const char *name)
{
    if (!strcmp(name, "token_embd.weight") || !strcmp(name, "output_norm.weight")) return 1;
    if (!strcmp(name, "output.weight")) return !c->tied;
    char canon[96];
    size_t n = strlen(name), w = strlen(".weight"), ws = strlen(".weight_scale");
    int scale = n > ws && !strcmp(name + n - ws, ".weight_scale");
    if (!scale && !(n > w && !strcmp(name + n - w, ".weight"))) return 0;
    if (n >= sizeof canon) return 0;
    memcpy(canon, name, n - (scale ? ws : w));
    canon[n - (scale ? ws : w)] = 0;
    uint32_t l = 0;
    const bn_layer_tensor_def *d = bn_layer_tensor_parse(canon, &l);
    char again[96];
    snprintf(again, sizeof again, "blk.%u.%s", l, d ? d->canon : ""); /* "blk.01.x" is not canonical */
    return d && l < c->n_layer && !strcmp(again, canon) && bn_layer_tensor_present(c, d) && (!scale || d->ternary);
}

/* Tensors we do not use are reported, not fatal (bitnet.cpp's loader also tolerates extras). */
static void note_unknown_tensors(gguf_source *s)
{
    const bn_gguf *g = s->g;
    uint64_t n = 0;
    char first[96] = "";
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        char buf[96];
        bn_gguf_str_show(g->tensors[i].name, buf, sizeof buf);
        if (!is_used_tensor(&s->base.cfg, buf) && n++ == 0) memcpy(first, buf, sizeof first);
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

/* The rule for the FFN activation, which the arch string alone does not settle (bitnet.cpp HEAD
 * writes 1bitLLM's SiLU model as bitnet-b1.58, the name of 2B-4T's ReLU² graph: facts s.1). */
#define ACT_RULE "explicit <arch>.hidden_act/hidden_activation key, else arch llama or bitnet -> silu, " \
                 "bitnet-b1.58/bitnet-25 with an SPM vocabulary -> silu, with a gpt2 vocabulary -> relu2"

static int parse_act(const bn_gguf *g, const char *key, bn_gguf_str v, uint32_t *act, bn_error *err)
{
    char val[40];
    if (str_is(v, "relu2")) *act = BN_ACT_RELU2;
    else if (str_is(v, "silu") || str_is(v, "swish")) *act = BN_ACT_SILU;
    else
        return bn_err(err, "%s: metadata key '%s': activation '%s' is not one bitnetd implements (relu2, silu)",
                      g->path, key, bn_gguf_str_show(v, val, sizeof val));
    return 0;
}

static int read_activation(gguf_source *s, bn_error *err)
{
    const bn_gguf *g = s->g;
    bn_config *c = &s->base.cfg;
    char keys[4][96];
    snprintf(keys[0], sizeof keys[0], "%s.hidden_act", g->arch);
    snprintf(keys[1], sizeof keys[1], "%s.hidden_activation", g->arch);
    snprintf(keys[2], sizeof keys[2], "hidden_act");
    snprintf(keys[3], sizeof keys[3], "hidden_activation");
    const char *found = NULL;
    for (int i = 0; i < 4; i++) {
        bn_gguf_str v;
        uint32_t act;
        int r = bn_gguf_get_str(g, keys[i], 0, &v, err);
        if (r < 0) return -1;
        if (r == 0) continue;
        if (parse_act(g, keys[i], v, &act, err) != 0) return -1;
        if (found && act != c->act)
            return bn_err(err, "%s: metadata key '%s': disagrees with '%s'", g->path, keys[i], found);
        c->act = act;
        found = keys[i];
    }
    const char *why = found;
    if (!found) {
        int silu = s->llama || !strcmp(g->arch, "bitnet") || s->spm;
        c->act = silu ? BN_ACT_SILU : BN_ACT_RELU2;
        why = s->llama ? "arch llama" : !strcmp(g->arch, "bitnet") ? "arch bitnet (2024 1bitLLM graph)"
              : s->spm ? "SPM vocabulary (1bitLLM)" : "gpt2 vocabulary (2B-4T)";
    }
    bn_source_note(&s->base, "activation: %s (from %s; rule: " ACT_RULE ")",
                   c->act == BN_ACT_SILU ? "silu" : "relu2", why);
    return 0;
}

static int check_arch(gguf_source *s, bn_error *err)
{
    const bn_gguf *g = s->g;
    s->llama = !strcmp(g->arch, "llama");
    if (bn_gguf_arch_is_bitnet(g->arch) || s->llama) return 0;
    return bn_err(err, "%s: metadata key 'general.architecture': unknown architecture '%s' (supported: bitnet-b1.58, "
                  "bitnet-25, bitnet, llama)", g->path, g->arch);
}

/* head_dim: attention.key_length, else rope.dimension_count, else n_embd / n_head (llama.cpp's
 * order); every family has full RoPE (n_rot = head_dim), which llama.cpp requires for llama. */
static int read_head_dim(const bn_gguf *g, bn_config *c, bn_error *err)
{
    const char *a = g->arch;
    uint32_t kl = 0, vl = 0, rot = 0;
    int rk = key_u32(g, a, "attention.key_length", 0, &kl, err), rv, rr;
    if (rk < 0 || (rv = key_u32(g, a, "attention.value_length", 0, &vl, err)) < 0 ||
        (rr = key_u32(g, a, "rope.dimension_count", 0, &rot, err)) < 0)
        return -1;
    if (rk == 1 && rv == 1 && kl != vl)
        return bn_err(err, "%s: metadata key '%s.attention.value_length': %u differs from key_length %u", g->path, a, vl, kl);
    if (rk == 0 && rv == 1) { kl = vl; rk = 1; }
    if (rk == 1) c->head_dim = kl;
    else if (rr == 1) c->head_dim = rot;
    else if (c->n_embd % c->n_head)
        return bn_err(err, "%s: metadata key '%s.attention.head_count': %u heads do not divide embedding_length %u "
                      "(and neither attention.key_length nor rope.dimension_count gives head_dim)", g->path, a,
                      c->n_head, c->n_embd);
    else c->head_dim = c->n_embd / c->n_head;
    if (rr == 1 && rot != c->head_dim)
        return bn_err(err, "%s: metadata key '%s.rope.dimension_count': %u differs from head_dim %u (partial RoPE is "
                      "not supported)", g->path, a, rot, c->head_dim);
    if (c->head_dim == 0 || c->head_dim % 2)
        return bn_err(err, "%s: metadata key '%s.%s': head_dim %u is not a positive even number (RoPE rotates pairs)",
                      g->path, a, rk == 1 ? "attention.key_length" : "rope.dimension_count", c->head_dim);
    return 0;
}

static int read_rope(gguf_source *s, bn_error *err)
{
    const bn_gguf *g = s->g;
    bn_config *c = &s->base.cfg;
    const char *a = g->arch;
    int r = key_f32(g, a, "rope.freq_base", 0, &c->rope_theta, err);
    if (r < 0) return -1;
    if (r == 0) {
        /* llama.cpp's default, so we compute what bitnet.cpp would with this file. */
        c->rope_theta = 10000.0f;
        bn_source_note(&s->base, "%s.rope.freq_base missing: using llama.cpp's default 10000", a);
    }
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
        return bn_err(err, "%s: metadata key '%s.rope.freq_base': %g is not a positive number", g->path, a, c->rope_theta);
    /* 1bitLLM's converter writes linear scaling with factor 1 (none); anything else changes RoPE. */
    float f = 1.0f;
    if (key_f32(g, a, "rope.scaling.factor", 0, &f, err) < 0) return -1;
    if (f != 1.0f)
        return bn_err(err, "%s: metadata key '%s.rope.scaling.factor': %g; RoPE scaling is not supported", g->path, a, f);
    return 0;
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
    if (c->n_head == 0)
        return bn_err(err, "%s: metadata key '%s.attention.head_count': 0 heads", g->path, a);
    if (c->n_head_kv == 0 || c->n_head % c->n_head_kv)
        return bn_err(err, "%s: metadata key '%s.attention.head_count_kv': %u KV heads do not divide %u query heads",
                      g->path, a, c->n_head_kv, c->n_head);
    if (read_head_dim(g, c, err) != 0 || read_rope(s, err) != 0) return -1;
    if (!(c->norm_eps > 0) || !isfinite(c->norm_eps))
        return bn_err(err, "%s: metadata key '%s.attention.layer_norm_rms_epsilon': %g is not a positive number",
                      g->path, a, c->norm_eps);
    c->tied = bn_gguf_tensor_find(g, "output.weight") == NULL;
    return 0;
}

/* Sub-norms: none in a llama block; a BitNet block has both (2B-4T, 1bitLLM) or, in principle,
 * neither. Layer 0 decides; check_tensors then requires the same of every layer. */
static int read_sub_norms(gguf_source *s, bn_error *err)
{
    const bn_gguf *g = s->g;
    const bn_gguf_tensor *an = tensor_of(g, "blk.0.attn_sub_norm"), *fn = tensor_of(g, "blk.0.ffn_sub_norm");
    if (s->llama) {
        if (an || fn)
            return bn_err(err, "%s: tensor 'blk.0.%s.weight': a llama-architecture block has no sub-norms (bitnet.cpp's "
                          "llama loader rejects the extra tensor)", g->path, an ? "attn_sub_norm" : "ffn_sub_norm");
        s->base.cfg.no_sub_norms = 1;
        return 0;
    }
    if (!an != !fn)
        return bn_err(err, "%s: tensor 'blk.0.%s.weight': missing, while 'blk.0.%s.weight' is present (a BitNet block "
                      "has both sub-norms or neither)", g->path, an ? "ffn_sub_norm" : "attn_sub_norm",
                      an ? "attn_sub_norm" : "ffn_sub_norm");
    s->base.cfg.no_sub_norms = !an;
    return 0;
}

/* ---- tokenizer ----------------------------------------------------------------------------- */

static int fill_tokens(const bn_gguf *g, const bn_gguf_kv *toks, uint64_t n_merges, bn_vocab **out, bn_error *err)
{
    uint64_t pos = 0, total = 0;
    for (uint64_t i = 0; i < toks->arr_n; i++) total += bn_gguf_arr_next_str(toks, &pos).len; /* <= file size */
    if (toks->arr_n == 0 || toks->arr_n > (1u << 24) || total > UINT32_MAX || n_merges > (1u << 24))
        return bn_err(err, "%s: metadata key 'tokenizer.ggml.tokens': %llu tokens (%llu bytes) and %llu merges are "
                      "outside the supported range (1..2^24 tokens and merges, < 4 GiB text)", g->path,
                      (unsigned long long)toks->arr_n, (unsigned long long)total, (unsigned long long)n_merges);
    bn_vocab *v = bn_vocab_alloc((uint32_t)toks->arr_n, (size_t)total, (uint32_t)n_merges);
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

static int fill_types(const bn_gguf *g, bn_vocab *v, bn_error *err)
{
    const bn_gguf_kv *tt;
    int r = bn_gguf_get_arr(g, "tokenizer.ggml.token_type", 0, BN_GGUF_ARRAY_ANY_INT, &tt, err);
    if (r <= 0) return r;
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
    return 0;
}

static int fill_merges(const bn_gguf *g, bn_vocab *v, const bn_gguf_kv *merges, bn_error *err)
{
    uint64_t pos = 0;
    for (uint32_t i = 0; i < v->n_merges; i++) {
        bn_gguf_str m = bn_gguf_arr_next_str(merges, &pos);
        if (bn_vocab_set_merge(v, i, m.p, (size_t)m.len, err) != 0)
            return bn_err_prefix(err, "%s: metadata key 'tokenizer.ggml.merges'", g->path);
    }
    return 0;
}

/* SentencePiece piece scores: one finite f32 per token (merge priority). */
static int fill_scores(const bn_gguf *g, bn_vocab *v, bn_error *err)
{
    const bn_gguf_kv *sc;
    if (bn_gguf_get_arr(g, "tokenizer.ggml.scores", 1, BN_GGUF_F32, &sc, err) < 0) return -1;
    if (sc->arr_n != v->n_tokens)
        return bn_err(err, "%s: metadata key 'tokenizer.ggml.scores': %llu entries for %u tokens", g->path,
                      (unsigned long long)sc->arr_n, v->n_tokens);
    if (!bn_vocab_scores_alloc(v))
        return bn_err(err, "%s: out of memory for the token scores", g->path);
    memcpy(v->scores, sc->arr_data, (size_t)v->n_tokens * sizeof *v->scores);
    for (uint32_t i = 0; i < v->n_tokens; i++)
        if (!isfinite(v->scores[i]))
            return bn_err(err, "%s: metadata key 'tokenizer.ggml.scores': token %u has score %g", g->path, i,
                          v->scores[i]);
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
    int32_t unk = -1;
    if (special_id(g, v, "tokenizer.ggml.bos_token_id", &v->bos, err) < 0 ||
        special_id(g, v, "tokenizer.ggml.eos_token_id", &v->eos, err) < 0 ||
        special_id(g, v, "tokenizer.ggml.padding_token_id", &v->pad, err) < 0 ||
        special_id(g, v, "tokenizer.ggml.unknown_token_id", &unk, err) < 0)
        return -1;
    int r = special_id(g, v, "tokenizer.ggml.eot_token_id", &v->eot, err);
    if (r < 0) return -1;
    /* as bitnet.cpp detects Llama-3's without the key: by text. Falcon3 (<|endoftext|> = eos
     * 11) needs none: generation stops on eos. */
    if (r == 0) v->eot = bn_vocab_find(v, "<|eot_id|>", 10);
    return 0;
}

/* The BPE pre-tokenizer. Our writer sets the key; bitnet.cpp's official 2B-4T file lacks it. */
static int read_pre(gguf_source *s, bn_vocab *v, bn_error *err)
{
    const bn_gguf *g = s->g;
    bn_gguf_str p;
    int r = bn_gguf_get_str(g, "tokenizer.ggml.pre", 0, &p, err);
    if (r < 0) return -1;
    if (r == 0) {
        /* Its tokenizer is Llama-3's (model facts 6.4); bitnet.cpp would use its 'default' regex. */
        v->pre = BN_PRE_LLAMA3;
        v->ignore_merges = 1; /* Llama-3 semantics, as llama.cpp applies them; GGUF has no key for it */
        bn_source_note(&s->base, "tokenizer.ggml.pre missing: using llama3");
        return 0;
    }
    if (str_is(p, "llama-bpe") || str_is(p, "llama3") || str_is(p, "llama-v3")) {
        v->pre = BN_PRE_LLAMA3;
        v->ignore_merges = 1;
        return 0;
    }
    if (str_is(p, "falcon3") || str_is(p, "falcon_e")) {
        /* the fork's 3-regex chain, merges not ignored (facts s.3; upstream's LLAMA3 reading is unconfirmed) */
        v->pre = BN_PRE_FALCON3;
        s->pre_falcon = 1;
        return 0;
    }
    if (str_is(p, "gpt2") || str_is(p, "gpt-2")) {
        v->pre = BN_PRE_GPT2;
        return 0;
    }
    char val[48];
    return bn_err(err, "%s: metadata key 'tokenizer.ggml.pre': pre-tokenizer '%s' is not supported (llama-bpe, "
                  "falcon3, falcon_e, gpt2)", g->path, bn_gguf_str_show(p, val, sizeof val));
}

static int contains(bn_gguf_str hay, const char *needle)
{
    size_t n = strlen(needle);
    for (uint64_t i = 0; hay.len >= n && i <= hay.len - n; i++)
        if (!memcmp(hay.p + i, needle, n)) return 1;
    return 0;
}

/* The chat format: the template's, when recognized, else the family's (SPM: 1bitLLM base
 * models, none; Falcon pre: Falcon3; llama arch: Llama-3; else 2B-4T's BitNet format). */
static int read_chat(gguf_source *s, bn_vocab *v, bn_error *err)
{
    const bn_gguf *g = s->g;
    bn_gguf_str t;
    int r = bn_gguf_get_str(g, "tokenizer.chat_template", 0, &t, err);
    if (r < 0) return -1;
    v->chat = s->spm ? BN_CHAT_NONE : s->pre_falcon ? BN_CHAT_FALCON3 : s->llama ? BN_CHAT_LLAMA3 : BN_CHAT_BITNET;
    if (r == 0) return 0;
    if (!(v->chat_template = malloc(t.len + 1))) return bn_err(err, "%s: out of memory", g->path);
    memcpy(v->chat_template, t.p, t.len);
    v->chat_template[t.len] = 0;
    if (contains(t, "BITNETAssistant")) {
        v->chat = BN_CHAT_BITNET;
        bn_source_note(&s->base, "tokenizer.chat_template is bitnet.cpp's converter placeholder (Human: ... "
                       "BITNETAssistant:): using the trained BitNet format (System:/User:/Assistant: ...<|eot_id|>)");
    } else if (contains(t, "<|start_header_id|>")) {
        v->chat = BN_CHAT_LLAMA3;
    } else if (contains(t, "<|assistant|>") && contains(t, "<|user|>")) {
        v->chat = BN_CHAT_FALCON3; /* the fork's detection of its falcon3 template */
    } else {
        bn_source_note(&s->base, "tokenizer.chat_template not recognized: using the family's format");
    }
    return 0;
}

static int read_tok_model(gguf_source *s, bn_error *err)
{
    const bn_gguf *g = s->g;
    bn_gguf_str model;
    if (bn_gguf_get_str(g, "tokenizer.ggml.model", 1, &model, err) < 0) return -1;
    if (str_is(model, "gpt2")) return 0;
    if (str_is(model, "llama")) {
        s->spm = 1;
        return 0;
    }
    char val[48];
    return bn_err(err, "%s: metadata key 'tokenizer.ggml.model': tokenizer '%s' is not supported (gpt2 byte-level "
                  "BPE, llama SentencePiece)", g->path, bn_gguf_str_show(model, val, sizeof val));
}

/* SentencePiece extras: scores, and add_space_prefix (llama.cpp's default for SPM: true). */
static int read_spm(gguf_source *s, bn_vocab *v, bn_error *err)
{
    v->model = BN_TOKM_SPM;
    v->ignore_merges = 0;
    int sp = 1;
    if (fill_scores(s->g, v, err) != 0 || bn_gguf_get_bool(s->g, "tokenizer.ggml.add_space_prefix", 0, &sp, err) < 0)
        return -1;
    v->space_prefix = (uint32_t)sp;
    return 0;
}

static int read_vocab(gguf_source *s, bn_error *err)
{
    const bn_gguf *g = s->g;
    if (read_tok_model(s, err) != 0) return -1;
    const bn_gguf_kv *toks, *merges = NULL;
    if (bn_gguf_get_arr(g, "tokenizer.ggml.tokens", 1, BN_GGUF_STRING, &toks, err) < 0 ||
        (!s->spm && bn_gguf_get_arr(g, "tokenizer.ggml.merges", 1, BN_GGUF_STRING, &merges, err) < 0))
        return -1;
    bn_vocab *v = NULL;
    if (fill_tokens(g, toks, merges ? merges->arr_n : 0, &v, err) != 0) return -1;
    s->base.vocab = v; /* owned by the source from here on */
    if (fill_types(g, v, err) != 0) return -1;
    if (bn_vocab_index(v, err) != 0) return bn_err_prefix(err, "%s: metadata key 'tokenizer.ggml.tokens'", g->path);
    if ((merges && fill_merges(g, v, merges, err) != 0) || read_specials(g, v, err) != 0 ||
        (s->spm ? read_spm(s, v, err) : read_pre(s, v, err)) != 0 || read_chat(s, v, err) != 0)
        return -1;
    if (bn_vocab_validate(v, err) != 0) return bn_err_prefix(err, "%s: tokenizer", g->path);
    return 0;
}

/* vocab_size may be absent (then the token count decides); if present both must agree. The
 * prompt's BOS follows tokenizer.ggml.add_bos_token, else llama.cpp's default: forced except
 * for the Falcon pre-tokenizers (the fork adds no BOS for them). */
static int settle_vocab(gguf_source *s, bn_error *err)
{
    bn_config *c = &s->base.cfg;
    const bn_gguf *g = s->g;
    const bn_vocab *v = s->base.vocab;
    int r = key_u32(g, g->arch, "vocab_size", 0, &c->n_vocab, err);
    if (r < 0) return -1;
    if (r == 1 && c->n_vocab != v->n_tokens)
        return bn_err(err, "%s: metadata key '%s.vocab_size': %u disagrees with the %u entries of tokenizer.ggml.tokens",
                      g->path, g->arch, c->n_vocab, v->n_tokens);
    c->n_vocab = v->n_tokens;
    int add_bos = !s->pre_falcon;
    if (bn_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", 0, &add_bos, err) < 0) return -1;
    c->bos = add_bos ? v->bos : -1;
    c->eos = v->eos;
    c->eot = v->eot;
    return 0;
}

static const char *kind_of(const bn_gguf *g)
{
    const bn_gguf_tensor *t = tensor_of(g, "blk.0.attn_q");
    switch (t ? t->type : UINT32_MAX) {
    case BN_GGML_I2_S: return "gguf-i2_s";
    case BN_GGML_TL1: return "gguf-tl1";
    case BN_GGML_TL2: return "gguf-tl2";
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
    if (check_arch(s, err) != 0 || read_config(s, err) != 0 || read_sub_norms(s, err) != 0 ||
        read_vocab(s, err) != 0 || read_activation(s, err) != 0 || settle_vocab(s, err) != 0)
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
        bn_err(err, "%s: out of memory", g->path);   /* before g, which owns the path, goes */
        free(s);
        bn_gguf_close(g);
        return -1;
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

/* TL1/TL2 (model/tl_layout.h): codes from the tiled LUT layout, scale from "<name>.weight_scale". */
static int decode_tl(const bn_gguf *g, const char *name, const bn_gguf_tensor *t, int8_t *out, float *scale,
                     bn_error *err)
{
    enum bn_tl_kind k = t->type == BN_GGML_TL1 ? BN_TL1 : BN_TL2;
    if (bn_tl_decode(k, t->data, (size_t)t->nbytes, t->ne[1], t->ne[0], out, err) != 0)
        return bn_err_prefix(err, "%s: tensor '%s.weight'", g->path, name);
    const bn_gguf_tensor *st = tensor_of2(g, name, "_scale"); /* checked at open */
    if (!st) return bn_err(err, "%s: tensor '%s.weight_scale': missing", g->path, name);
    memcpy(scale, st->data, 4);
    char what[96];
    snprintf(what, sizeof what, "'%s.weight_scale'", name);
    return bn_check_scale(*scale, g->path, what, err);
}

/* A llama-arch file holds q/k rows in llama.cpp's permuted order: HF row r is GGUF row
 * bn_qk_permuted_row(r). Restores HF order in place (the permutation is within each head). */
static int unpermute_rows(const bn_gguf *g, const char *name, int8_t *t, uint64_t rows, uint64_t cols,
                          uint32_t head_dim, bn_error *err)
{
    int8_t *tmp = malloc((size_t)(rows * cols));
    if (!tmp) return bn_err(err, "%s: tensor '%s.weight': out of memory", g->path, name);
    memcpy(tmp, t, (size_t)(rows * cols));
    for (uint64_t r = 0; r < rows; r++)
        memcpy(t + r * cols, tmp + bn_qk_permuted_row(r, head_dim) * cols, (size_t)cols);
    free(tmp);
    return 0;
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
    case BN_GGML_TL1:
    case BN_GGML_TL2: rc = decode_tl(s->g, name, x, t, scale, err); break;
    case BN_GGML_TQ1_0:
    case BN_GGML_TQ2_0: rc = decode_tq(s->g, name, x, t, scale, err); break;
    case BN_GGML_F32:
    case BN_GGML_F16:
    case BN_GGML_BF16: rc = decode_float_linear(s->g, name, x, t, scale, err); break;
    default:
        return bn_err(err, "%s: tensor '%s.weight': type %s cannot be read as a ternary matrix", s->g->path, name,
                      bn_ggml_type_name(x->type, tb));
    }
    uint32_t l;
    const bn_layer_tensor_def *d = bn_layer_tensor_parse(name, &l);
    if (rc == 0 && s->llama && d && d->qk_rope)
        rc = unpermute_rows(s->g, name, t, rows, cols, s->base.cfg.head_dim, err);
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
