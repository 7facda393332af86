/* A Hugging Face BitNet checkpoint directory as a conversion source.
 *
 * Two forms are read (model facts 3.3, 3.4):
 *  - "hf-packed": every linear is uint8 [out/4, in] (row-block packing) + a one-element
 *    weight_scale; autobitlinear multiplies by weight_scale, bitlinear divides by it.
 *  - "hf-bf16" / "hf-f16" / "hf-f32": float linears, ternarized here. With quantization_mode
 *    online they are latent weights and go through the absmean rule exactly as HF's WeightQuant
 *    does on every forward; without a quantization_config (a float export) already-ternary values
 *    keep their exact scale (bn_ternarize_auto).
 * Everything is validated at open (config, every tensor's presence, dtype and shape, every
 * scale), so the packer's later calls can only fail on I/O-free conditions such as a wrong name.
 * Tensor data is read on demand from the mappings: the embedding is never loaded whole. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/checked.h"
#include "base/file.h"
#include "model/hf_write.h"
#include "model/safetensors.h"
#include "model/source.h"
#include "model/ternarize.h"
#include "text/tokenizer.h"

#define CONFIG "config.json"

typedef struct hf_tensor {
    char canon[48];               /* "blk.3.attn_q" */
    char hf[96];                  /* "model.layers.3.self_attn.q_proj.weight" */
    int ternary;                  /* a BitLinear weight */
    uint64_t rows, cols;          /* logical shape, out x in (vectors: 1 x n) */
    const bn_st_tensor *t;
    const char *file;             /* the shard holding it (owned by the set) */
    float scale;                  /* packed form: the resolved multiplier */
} hf_tensor;

typedef struct hf_source {
    bn_source base;
    bn_st_set *set;
    hf_tensor *tensors;
    size_t n;
    int packed;                   /* uint8 + weight_scale form */
    int absmean_only;             /* float form: online latent weights (HF WeightQuant) */
    int noted_auto;               /* the "already ternary" note was written */
    hf_tensor *last;              /* last lookup: the packer reads the embedding in many bands */
} hf_source;

/* What config.json says beyond bn_config. */
typedef struct hf_meta {
    int have_quant;               /* quantization_config present */
    int bitlinear;                /* weight_scale divides (linear_class bitlinear) */
    int online;                   /* quantization_mode online */
    int tie;                      /* tie_word_embeddings: 1, 0, or -1 when absent */
    int64_t bos, eos;             /* -1 when absent */
} hf_meta;

/* ---- config.json -------------------------------------------------------------------- */

static int cfg_u32(const json_t *root, const char *key, int required, uint32_t def, uint32_t *out, bn_error *err)
{
    const json_t *j = json_object_get(root, key);
    if (!j || json_is_null(j)) {
        if (required) return bn_err(err, CONFIG ": %s: missing (required; transformers' defaults are not assumed)", key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(j) || json_integer_value(j) < 1 || json_integer_value(j) > UINT32_MAX)
        return bn_err(err, CONFIG ": %s: not a positive 32-bit integer", key);
    *out = (uint32_t)json_integer_value(j);
    return 0;
}

/* A number that may be absent (def, noted) or integer-valued in the JSON. */
static int cfg_float(bn_source *s, const json_t *root, const char *key, double def, float *out, bn_error *err)
{
    const json_t *j = json_object_get(root, key);
    if (!j || json_is_null(j)) {
        bn_source_note(s, CONFIG ": %s absent: using transformers' default %g", key, def);
        *out = (float)def;
        return 0;
    }
    if (!json_is_number(j) || !isfinite(json_number_value(j)) || !(json_number_value(j) > 0))
        return bn_err(err, CONFIG ": %s: not a positive number", key);
    *out = (float)json_number_value(j);
    return 0;
}

static int64_t cfg_token_id(const json_t *j)
{
    if (json_is_array(j)) j = json_array_get(j, 0); /* eos_token_id: [128001, 128009] */
    return json_is_integer(j) && json_integer_value(j) >= 0 ? json_integer_value(j) : -1;
}

static int check_arch(const json_t *root, bn_error *err)
{
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    if (mt && !strcmp(mt, "bitnet")) return 0;
    const json_t *archs = json_object_get(root, "architectures");
    size_t i;
    const json_t *a;
    json_array_foreach(archs, i, a)
        if (json_is_string(a) && !strcmp(json_string_value(a), "BitNetForCausalLM")) return 0;
    return bn_err(err, CONFIG ": model_type '%.60s' is not 'bitnet' (and architectures does not list BitNetForCausalLM)",
                  mt ? mt : "(missing)");
}

static int parse_act(bn_source *s, const json_t *root, uint32_t *act, bn_error *err)
{
    const json_t *j = json_object_get(root, "hidden_act");
    const char *a = json_string_value(j);
    if (!j) {
        bn_source_note(s, CONFIG ": hidden_act absent: using transformers' BitNet default relu2");
        *act = BN_ACT_RELU2;
    } else if (a && !strcmp(a, "relu2")) *act = BN_ACT_RELU2;
    else if (a && !strcmp(a, "silu")) *act = BN_ACT_SILU;
    else return bn_err(err, CONFIG ": hidden_act '%.40s' is not supported (relu2 or silu)", a ? a : "(not a string)");
    return 0;
}

/* quantization_config: absent keys take BitNetQuantConfig's defaults (linear_class bitlinear,
 * quantization_mode offline), and say so. */
static int parse_quant(bn_source *s, const json_t *root, hf_meta *m, bn_error *err)
{
    const json_t *q = json_object_get(root, "quantization_config");
    if (!q || json_is_null(q)) return 0;
    if (!json_is_object(q)) return bn_err(err, CONFIG ": quantization_config: not an object");
    m->have_quant = 1;
    const char *method = json_string_value(json_object_get(q, "quant_method"));
    if (!method || strcmp(method, "bitnet"))
        return bn_err(err, CONFIG ": quantization_config.quant_method '%.40s' is not 'bitnet'", method ? method : "(missing)");
    const char *cls = json_string_value(json_object_get(q, "linear_class"));
    if (!cls) bn_source_note(s, CONFIG ": quantization_config.linear_class absent: transformers' default bitlinear (weight_scale divides)");
    else if (strcmp(cls, "autobitlinear") && strcmp(cls, "bitlinear"))
        return bn_err(err, CONFIG ": quantization_config.linear_class '%.40s' is not autobitlinear or bitlinear", cls);
    m->bitlinear = !cls || !strcmp(cls, "bitlinear");
    const char *mode = json_string_value(json_object_get(q, "quantization_mode"));
    if (!mode) bn_source_note(s, CONFIG ": quantization_config.quantization_mode absent: transformers' default offline");
    else if (strcmp(mode, "offline") && strcmp(mode, "online"))
        return bn_err(err, CONFIG ": quantization_config.quantization_mode '%.40s' is not offline or online", mode);
    m->online = mode && !strcmp(mode, "online");
    if (json_is_true(json_object_get(q, "use_rms_norm")))
        return bn_err(err, CONFIG ": quantization_config.use_rms_norm: an RMSNorm inside BitLinear is not supported");
    return 0;
}

/* Architecture features bitnetd does not implement are refused, never silently dropped. */
static int check_unsupported(const json_t *root, bn_error *err)
{
    const json_t *rs = json_object_get(root, "rope_scaling");
    if (rs && !json_is_null(rs)) return bn_err(err, CONFIG ": rope_scaling: not supported (must be absent or null)");
    if (json_is_true(json_object_get(root, "attention_bias")))
        return bn_err(err, CONFIG ": attention_bias: biases are not supported");
    return 0;
}

static int parse_dims(const json_t *root, bn_config *c, bn_error *err)
{
    if (cfg_u32(root, "hidden_size", 1, 0, &c->n_embd, err) || cfg_u32(root, "num_hidden_layers", 1, 0, &c->n_layer, err) ||
        cfg_u32(root, "num_attention_heads", 1, 0, &c->n_head, err) ||
        cfg_u32(root, "intermediate_size", 1, 0, &c->n_ff, err) || cfg_u32(root, "vocab_size", 1, 0, &c->n_vocab, err) ||
        cfg_u32(root, "max_position_embeddings", 1, 0, &c->n_ctx_max, err) ||
        cfg_u32(root, "num_key_value_heads", 0, c->n_head, &c->n_head_kv, err))
        return -1;
    /* num_key_value_heads absent means no GQA (transformers: defaults to num_attention_heads). */
    c->head_dim = c->n_embd / c->n_head;
    uint32_t hd;
    if (cfg_u32(root, "head_dim", 0, c->head_dim, &hd, err)) return -1;
    if (hd != c->head_dim || c->n_embd % c->n_head)
        return bn_err(err, CONFIG ": head_dim %u is not hidden_size / num_attention_heads (%u / %u)", hd, c->n_embd, c->n_head);
    return 0;
}

static int parse_config_json(bn_source *s, const json_t *root, hf_meta *m, bn_error *err)
{
    bn_config *c = &s->cfg;
    if (!json_is_object(root)) return bn_err(err, CONFIG ": the top level is not an object");
    if (check_arch(root, err) || check_unsupported(root, err) || parse_dims(root, c, err)) return -1;
    if (cfg_float(s, root, "rope_theta", 10000.0, &c->rope_theta, err) ||
        cfg_float(s, root, "rms_norm_eps", 1e-5, &c->norm_eps, err) || parse_act(s, root, &c->act, err) ||
        parse_quant(s, root, m, err))
        return -1;
    const json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie)) return bn_err(err, CONFIG ": tie_word_embeddings: not a boolean");
    m->tie = tie ? json_is_true(tie) : -1;
    m->bos = cfg_token_id(json_object_get(root, "bos_token_id"));
    m->eos = cfg_token_id(json_object_get(root, "eos_token_id"));
    if (bn_config_validate(c, err)) return bn_err_prefix(err, CONFIG);
    return 0;
}

static int read_config(bn_source *s, const char *dir, hf_meta *m, bn_error *err)
{
    char *path = bn_path_join(dir, CONFIG), *text = NULL;
    size_t len;
    if (!path) return bn_err(err, "out of memory");
    int rc = bn_read_file(path, (size_t)16 << 20, &text, &len, err);
    free(path);
    if (rc) return -1;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!root) return bn_err(err, CONFIG ": not valid JSON (line %d, column %d): %s", je.line, je.column, je.text);
    rc = parse_config_json(s, root, m, err);
    json_decref(root);
    return rc;
}

/* ---- tensor table -------------------------------------------------------------------- */

enum dim { D_EMBD, D_KV, D_FF };

static const struct {
    const char *canon, *hf;
    int ternary;
    enum dim rows, cols;          /* vectors: rows ignored (1), cols = length */
} layer_tensors[] = {
    {"attn_norm", "input_layernorm", 0, D_EMBD, D_EMBD},
    {"attn_q", "self_attn.q_proj", 1, D_EMBD, D_EMBD},
    {"attn_k", "self_attn.k_proj", 1, D_KV, D_EMBD},
    {"attn_v", "self_attn.v_proj", 1, D_KV, D_EMBD},
    {"attn_sub_norm", "self_attn.attn_sub_norm", 0, D_EMBD, D_EMBD},
    {"attn_output", "self_attn.o_proj", 1, D_EMBD, D_EMBD},
    {"ffn_norm", "post_attention_layernorm", 0, D_EMBD, D_EMBD},
    {"ffn_gate", "mlp.gate_proj", 1, D_FF, D_EMBD},
    {"ffn_up", "mlp.up_proj", 1, D_FF, D_EMBD},
    {"ffn_sub_norm", "mlp.ffn_sub_norm", 0, D_FF, D_FF},
    {"ffn_down", "mlp.down_proj", 1, D_EMBD, D_FF},
};
#define N_LAYER_TENSORS (sizeof layer_tensors / sizeof layer_tensors[0])

static uint64_t dim_of(const bn_config *c, enum dim d)
{
    return d == D_EMBD ? c->n_embd : d == D_KV ? (uint64_t)c->head_dim * c->n_head_kv : c->n_ff;
}

static void add_tensor(hf_source *h, const char *canon, const char *hf, int ternary, uint64_t rows, uint64_t cols)
{
    hf_tensor *e = &h->tensors[h->n++];
    snprintf(e->canon, sizeof e->canon, "%s", canon);
    snprintf(e->hf, sizeof e->hf, "%s", hf);
    e->ternary = ternary;
    e->rows = rows;
    e->cols = cols;
}

/* The expected tensors, in the order the packer reads them. n_layer <= 1024 (validated), so the
 * names fit their buffers. */
static int build_table(hf_source *h, int with_output, bn_error *err)
{
    const bn_config *c = &h->base.cfg;
    h->tensors = calloc(3 + (size_t)c->n_layer * N_LAYER_TENSORS, sizeof *h->tensors);
    if (!h->tensors) return bn_err(err, "out of memory");
    add_tensor(h, "token_embd", "model.embed_tokens.weight", 0, c->n_vocab, c->n_embd);
    if (with_output) add_tensor(h, "output", "lm_head.weight", 0, c->n_vocab, c->n_embd);
    add_tensor(h, "output_norm", "model.norm.weight", 0, 1, c->n_embd);
    for (uint32_t l = 0; l < c->n_layer; l++)
        for (size_t k = 0; k < N_LAYER_TENSORS; k++) {
            char canon[48], hf[96];
            snprintf(canon, sizeof canon, "blk.%u.%s", l, layer_tensors[k].canon);
            snprintf(hf, sizeof hf, "model.layers.%u.%s.weight", l, layer_tensors[k].hf);
            uint64_t rows = layer_tensors[k].ternary ? dim_of(c, layer_tensors[k].rows) : 1;
            add_tensor(h, canon, hf, layer_tensors[k].ternary, rows, dim_of(c, layer_tensors[k].cols));
        }
    return 0;
}

static void shape_str(const bn_st_tensor *t, char *buf, size_t n)
{
    size_t o = (size_t)snprintf(buf, n, "[");
    for (uint32_t d = 0; d < t->n_dims && o < n; d++)
        o += (size_t)snprintf(buf + o, n - o, "%s%llu", d ? ", " : "", (unsigned long long)t->shape[d]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

static int is_float_dtype(uint32_t dt) { return dt == BN_ST_F32 || dt == BN_ST_F16 || dt == BN_ST_BF16; }

/* Is t exactly [r, c] (vectors: [c])? */
static int shape_is(const bn_st_tensor *t, int vector, uint64_t r, uint64_t c)
{
    if (vector) return t->n_dims == 1 && t->shape[0] == c;
    return t->n_dims == 2 && t->shape[0] == r && t->shape[1] == c;
}

static int shape_error(const hf_tensor *e, const char *want, bn_error *err)
{
    char got[128];
    shape_str(e->t, got, sizeof got);
    return bn_err(err, "%s: tensor '%s': shape %s disagrees with " CONFIG " (expected %s)", e->file, e->hf, got, want);
}

/* A one-element float weight_scale, turned into the multiplier W = t * scale. */
static int resolve_scale(hf_source *h, hf_tensor *e, int bitlinear, bn_error *err)
{
    char name[112];
    snprintf(name, sizeof name, "%.*sweight_scale", (int)(strlen(e->hf) - strlen("weight")), e->hf);
    const bn_st_tensor *ws;
    const char *file;
    if (bn_st_set_get(h->set, name, &ws, &file, err)) return -1;
    if (!ws) return bn_err(err, "%s: tensor '%s' is missing (packed uint8 weights need their scale)", file, name);
    if (!is_float_dtype(ws->dtype) || ws->n_elem != 1)
        return bn_err(err, "%s: tensor '%s': expected one F32/F16/BF16 element, got %llu of %s", file, name,
                      (unsigned long long)ws->n_elem, bn_st_dtype_name(ws->dtype));
    float raw = bn_st_float_at(ws, 0);
    if (bn_check_scale(raw, file, name, err)) return -1;
    e->scale = bitlinear ? 1.0f / raw : raw; /* model facts 3.3: bitlinear divides */
    return bn_check_scale(e->scale, file, name, err);
}

static int check_linear(hf_source *h, hf_tensor *e, const hf_meta *m, uint32_t first_dtype, bn_error *err)
{
    char want[96];
    if (h->packed) {
        if (e->t->dtype != BN_ST_U8)
            return bn_err(err, "%s: tensor '%s': dtype %s, but the other linears are packed U8", e->file, e->hf,
                          bn_st_dtype_name(e->t->dtype));
        snprintf(want, sizeof want, "[%llu, %llu]: uint8 packs 4 rows per byte", (unsigned long long)e->rows / 4,
                 (unsigned long long)e->cols);
        if (e->rows % 4 || !shape_is(e->t, 0, e->rows / 4, e->cols)) return shape_error(e, want, err);
        return resolve_scale(h, e, m->bitlinear, err);
    }
    if (e->t->dtype != first_dtype)
        return bn_err(err, "%s: tensor '%s': dtype %s, but the other linears are %s", e->file, e->hf,
                      bn_st_dtype_name(e->t->dtype), bn_st_dtype_name(first_dtype));
    snprintf(want, sizeof want, "[%llu, %llu]", (unsigned long long)e->rows, (unsigned long long)e->cols);
    return shape_is(e->t, 0, e->rows, e->cols) ? 0 : shape_error(e, want, err);
}

static int check_float(hf_tensor *e, bn_error *err)
{
    if (!is_float_dtype(e->t->dtype))
        return bn_err(err, "%s: tensor '%s': dtype %s is not F32, F16 or BF16", e->file, e->hf,
                      bn_st_dtype_name(e->t->dtype));
    char want[64];
    if (e->rows == 1) snprintf(want, sizeof want, "[%llu]", (unsigned long long)e->cols);
    else snprintf(want, sizeof want, "[%llu, %llu]", (unsigned long long)e->rows, (unsigned long long)e->cols);
    return shape_is(e->t, e->rows == 1 && strcmp(e->canon, "token_embd") && strcmp(e->canon, "output"), e->rows,
                    e->cols) ? 0 : shape_error(e, want, err);
}

/* The form follows the first linear's dtype; quantization_config must agree with it. */
static int pick_form(hf_source *h, const hf_meta *m, const hf_tensor *e, bn_error *err)
{
    const bn_st_tensor *first = e->t;
    h->packed = first->dtype == BN_ST_U8;
    if (!h->packed && !is_float_dtype(first->dtype))
        return bn_err(err, "%s: tensor '%s': dtype %s is neither packed U8 nor float", e->file, e->hf,
                      bn_st_dtype_name(first->dtype));
    if (h->packed && !m->have_quant)
        return bn_err(err, CONFIG ": quantization_config: missing, but the linears are packed U8: whether weight_scale "
                           "multiplies (autobitlinear) or divides (bitlinear) is unknown");
    if (m->have_quant && h->packed == m->online)
        return bn_err(err, CONFIG ": quantization_config.quantization_mode is %s but the linears are %s",
                      m->online ? "online" : "offline", h->packed ? "packed U8" : "float (latent)");
    h->absmean_only = !h->packed && m->online;
    const char *kind = h->packed ? "hf-packed" : first->dtype == BN_ST_BF16 ? "hf-bf16" : first->dtype == BN_ST_F16 ? "hf-f16" : "hf-f32";
    if (!(h->base.kind = strdup(kind))) return bn_err(err, "out of memory");
    if (h->absmean_only)
        bn_source_note(&h->base, "linears are %s latent weights (quantization_mode online): ternarized with the absmean "
                                 "rule, as HF's WeightQuant does", bn_st_dtype_name(first->dtype));
    else if (!h->packed)
        bn_source_note(&h->base, "linears are %s without quantization_config: already-ternary tensors keep their exact "
                                 "scale, others are ternarized with the absmean rule", bn_st_dtype_name(first->dtype));
    return 0;
}

static int resolve_tensors(hf_source *h, const hf_meta *m, bn_error *err)
{
    uint32_t first_dtype = 0;
    for (size_t i = 0; i < h->n; i++) {
        hf_tensor *e = &h->tensors[i];
        if (bn_st_set_get(h->set, e->hf, &e->t, &e->file, err)) return -1;
        if (!e->t) return bn_err(err, "%s: tensor '%s' is missing", e->file, e->hf);
        if (e->ternary && !first_dtype) {
            if (pick_form(h, m, e, err)) return -1;
            first_dtype = e->t->dtype;
        }
        if (e->ternary ? check_linear(h, e, m, first_dtype, err) : check_float(e, err)) return -1;
    }
    return 0;
}

/* ---- extras, tying, tokenizer --------------------------------------------------------- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Tensors the checkpoint has and bitnetd does not use (rotary inv_freq, a tied lm_head, ...)
 * are reported, not fatal: HF itself ignores them. */
static int note_extras(hf_source *h, bn_error *err)
{
    const char **known = malloc(h->n * sizeof *known);
    if (!known) return bn_err(err, "out of memory");
    for (size_t i = 0; i < h->n; i++) known[i] = h->tensors[i].hf;
    qsort(known, h->n, sizeof *known, cmp_str);
    size_t extras = 0, n = bn_st_set_count(h->set);
    char first[3][100];
    for (size_t i = 0; i < n; i++) {
        const char *name = bn_st_set_name(h->set, i);
        size_t len = strlen(name);
        if (bsearch(&name, known, h->n, sizeof *known, cmp_str)) continue;
        if (h->packed && len > 13 && !strcmp(name + len - 13, ".weight_scale")) continue;
        if (extras < 3) snprintf(first[extras], sizeof first[0], "%.90s", name);
        extras++;
    }
    free(known);
    if (extras)
        bn_source_note(&h->base, "%zu unused tensor(s) ignored: %s%s%s%s%s%s", extras, first[0],
                       extras > 1 ? ", " : "", extras > 1 ? first[1] : "", extras > 2 ? ", " : "",
                       extras > 2 ? first[2] : "", extras > 3 ? ", ..." : "");
    return 0;
}

/* transformers' default is untied, but a checkpoint without lm_head.weight can only be tied
 * (the 2B-4T configs say true explicitly). An explicit false without lm_head is an error. */
static int decide_tie(hf_source *h, const hf_meta *m, int *with_output, bn_error *err)
{
    const bn_st_tensor *t;
    const char *file;
    if (bn_st_set_get(h->set, "lm_head.weight", &t, &file, err)) return -1;
    if (m->tie == 1) {
        if (t) bn_source_note(&h->base, "lm_head.weight ignored: tie_word_embeddings is true");
        *with_output = 0;
    } else if (t) {
        *with_output = 1;
    } else if (m->tie == 0) {
        return bn_err(err, CONFIG ": tie_word_embeddings is false but %s has no lm_head.weight", file);
    } else {
        bn_source_note(&h->base, CONFIG ": tie_word_embeddings absent and no lm_head.weight: tied");
        *with_output = 0;
    }
    h->base.cfg.tied = !*with_output;
    return 0;
}

static int load_vocab(hf_source *h, const char *dir, bn_error *err)
{
    char *tj = bn_path_join(dir, "tokenizer.json"), *tc = bn_path_join(dir, "tokenizer_config.json");
    struct stat st;
    int rc;
    if (!tj || !tc) rc = bn_err(err, "out of memory");
    else if (stat(tj, &st) != 0) rc = bn_err(err, "%s: tokenizer.json is missing", dir);
    else rc = bn_vocab_load_hf(tj, stat(tc, &st) == 0 ? tc : NULL, &h->base.vocab, err);
    free(tj);
    free(tc);
    if (rc) return -1;
    bn_vocab *v = h->base.vocab;
    if (v->n_tokens > h->base.cfg.n_vocab)
        return bn_err(err, "tokenizer.json: %u tokens, more than " CONFIG " vocab_size %u", v->n_tokens, h->base.cfg.n_vocab);
    if (v->n_tokens < h->base.cfg.n_vocab)
        bn_source_note(&h->base, "tokenizer.json has %u tokens; embedding rows %u..%u are padding", v->n_tokens,
                       v->n_tokens, h->base.cfg.n_vocab - 1);
    /* BitNet's own format unless the template is Llama-3's (model facts 5). */
    if (!v->chat_template) bn_source_note(&h->base, "no chat_template in tokenizer_config.json: BitNet chat format");
    v->chat = bn_chat_kind_of_vocab(v);
    return 0;
}

/* Special ids: config.json's, else the tokenizer's; eot always from the tokenizer. */
static int set_special_ids(hf_source *h, const hf_meta *m, bn_error *err)
{
    bn_config *c = &h->base.cfg;
    const bn_vocab *v = h->base.vocab;
    if ((m->bos >= 0 && m->bos >= c->n_vocab) || (m->eos >= 0 && m->eos >= c->n_vocab))
        return bn_err(err, CONFIG ": bos_token_id/eos_token_id outside vocab_size %u", c->n_vocab);
    c->bos = m->bos >= 0 ? (int32_t)m->bos : v->bos;
    c->eos = m->eos >= 0 ? (int32_t)m->eos : v->eos;
    c->eot = v->eot;
    if (m->bos >= 0 && v->bos >= 0 && v->bos != c->bos)
        bn_source_note(&h->base, CONFIG ": bos_token_id %d differs from the tokenizer's %d: using " CONFIG "'s", c->bos, v->bos);
    if (m->eos >= 0 && v->eos >= 0 && v->eos != c->eos)
        bn_source_note(&h->base, CONFIG ": eos_token_id %d differs from the tokenizer's %d: using " CONFIG "'s", c->eos, v->eos);
    return 0;
}

/* ---- ops ------------------------------------------------------------------------------ */

static hf_tensor *lookup(hf_source *h, const char *name)
{
    if (h->last && !strcmp(h->last->canon, name)) return h->last;
    for (size_t i = 0; i < h->n; i++)
        if (!strcmp(h->tensors[i].canon, name)) return h->last = &h->tensors[i];
    return NULL;
}

static int ternarize_float(hf_source *h, hf_tensor *e, int8_t *t, float *scale, bn_error *err)
{
    uint64_t n = e->t->n_elem;
    float *w = malloc(n * sizeof *w);
    if (!w) return bn_err(err, "%s: tensor '%s': out of memory for %llu floats", e->file, e->hf, (unsigned long long)n);
    bn_st_floats(e->t, 0, n, w);
    bn_st_release(e->t, 0, n);
    if (h->absmean_only) bn_ternarize_absmean(w, n, t, scale);
    else if (bn_ternarize_auto(w, n, t, scale) && !h->noted_auto) {
        bn_source_note(&h->base, "%s and possibly others were already ternary-valued: exact scale kept", e->hf);
        h->noted_auto = 1;
    }
    free(w);
    return bn_check_scale(*scale, e->file, e->hf, err);
}

static int hf_ternary(bn_source *s, const char *name, uint64_t rows, uint64_t cols, int8_t *t, float *scale,
                      bn_error *err)
{
    hf_source *h = (hf_source *)s;
    hf_tensor *e = lookup(h, name);
    if (!e || !e->ternary) return bn_err(err, "%s: no ternary tensor '%s'", s->path, name);
    if (rows != e->rows || cols != e->cols)
        return bn_err(err, "%s: tensor '%s' is %llux%llu, not %llux%llu", e->file, e->hf, (unsigned long long)e->rows,
                      (unsigned long long)e->cols, (unsigned long long)rows, (unsigned long long)cols);
    if (!h->packed) return ternarize_float(h, e, t, scale, err);
    uint64_t bad = bn_hf_unpack_rows(e->t->data, rows, cols, t);
    bn_st_release(e->t, 0, e->t->n_elem);
    if (bad)
        bn_source_note(s, "%s: tensor '%s': %llu codes of 3 (unused by HF) read as 0, as llama.cpp does", e->file, e->hf,
                       (unsigned long long)bad);
    *scale = e->scale;
    return 0;
}

static int hf_floats(bn_source *s, const char *name, uint64_t rows, uint64_t cols, uint64_t row0, uint64_t n,
                     float *out, bn_error *err)
{
    hf_source *h = (hf_source *)s;
    hf_tensor *e = lookup(h, name);
    if (!e || e->ternary) return bn_err(err, "%s: no float tensor '%s'", s->path, name);
    uint64_t end;
    if (rows != e->rows || cols != e->cols || !bn_add_ok(row0, n, &end) || end > rows)
        return bn_err(err, "%s: tensor '%s': rows [%llu, +%llu) of %llux%llu requested, tensor is %llux%llu", e->file,
                      e->hf, (unsigned long long)row0, (unsigned long long)n, (unsigned long long)rows,
                      (unsigned long long)cols, (unsigned long long)e->rows, (unsigned long long)e->cols);
    bn_st_floats(e->t, row0 * cols, n * cols, out); /* in range: shape checked at open, rows above */
    bn_st_release(e->t, row0 * cols, n * cols);
    return 0;
}

static void hf_close(bn_source *s)
{
    hf_source *h = (hf_source *)s;
    bn_st_set_close(h->set);
    free(h->tensors);
    bn_source_base_free(s);
    free(h);
}

static const struct bn_source_ops hf_ops = {hf_ternary, hf_floats, hf_close};

/* ---- packed layout --------------------------------------------------------------------- */

uint64_t bn_hf_unpack_rows(const uint8_t *p, uint64_t rows, uint64_t cols, int8_t *t)
{
    uint64_t P = rows / 4, bad = 0;
    for (uint64_t r = 0; r < P; r++)
        for (uint64_t c = 0; c < cols; c++) {
            uint8_t b = p[r * cols + c];
            for (int i = 0; i < 4; i++) {
                int code = (b >> (2 * i)) & 3;
                bad += code == 3;
                t[((uint64_t)i * P + r) * cols + c] = (int8_t)(code == 3 ? 0 : code - 1);
            }
        }
    return bad;
}

/* ---- open ------------------------------------------------------------------------------ */

static int open_hf(hf_source *h, const char *dir, bn_error *err)
{
    hf_meta m = {.tie = -1, .bos = -1, .eos = -1};
    int with_output = 0;
    if (read_config(&h->base, dir, &m, err) || bn_st_set_open(dir, &h->set, err) || decide_tie(h, &m, &with_output, err) ||
        build_table(h, with_output, err) || resolve_tensors(h, &m, err) || note_extras(h, err) ||
        load_vocab(h, dir, err) || set_special_ids(h, &m, err))
        return -1;
    if (bn_config_validate(&h->base.cfg, err)) return bn_err_prefix(err, "%s", dir);
    return 0;
}

int bn_source_open_hf(const char *dir, bn_source **out, bn_error *err)
{
    *out = NULL;
    hf_source *h = calloc(1, sizeof *h);
    if (!h) return bn_err(err, "out of memory");
    h->base.ops = &hf_ops;
    if (!(h->base.path = strdup(dir))) {
        hf_close(&h->base);
        return bn_err(err, "out of memory");
    }
    if (open_hf(h, dir, err)) {
        hf_close(&h->base);
        return -1;
    }
    *out = &h->base;
    return 0;
}
