/* A Hugging Face BitNet checkpoint directory as a conversion source.
 *
 * config.json's architectures[0] and model_type name the family (family.h; facts in
 * ../shared/docs/bitnet-families.md s.1-3, 7):
 *  - BitNetForCausalLM / model_type bitnet (2B-4T): BitNet block (sub-norms, relu2), tied.
 *  - BitnetForCausalLM / model_type llama (1bitLLM): latent float weights (f32 or f16 on disk),
 *    always ternarized per tensor with the absmean rule (its utils_quant.py weight_quant);
 *    sub-norms named self_attn.inner_attn_ln and mlp.ffn_layernorm; SiLU; tied.
 *  - LlamaForCausalLM with quantization_config.quant_method bitnet (HF1BitLLM Llama3-8B-1.58,
 *    Falcon3-*-1.58bit, Falcon-E): plain Llama block (no sub-norms, SiLU), untied lm_head.
 *    Llama-3 and Falcon3 differ only in the vocabulary, which tells them apart (load_vocab).
 * Linear weights come in two forms:
 *  - "hf-packed": uint8 [out/4, in] (row-block packing) + a one-element weight_scale (F32, F16
 *    or BF16): linear_class autobitlinear multiplies (W = t * ws), anything else (bitlinear,
 *    the transformers default) divides (scale = 1.0f / ws, in f32).
 *  - "hf-bf16" / "hf-f16" / "hf-f32": float linears, ternarized here. With quantization_mode
 *    online (or for 1bitLLM) they are latent weights and go through the absmean rule exactly
 *    as HF's WeightQuant does on every forward; a 2B-4T float export without a
 *    quantization_config keeps already-ternary values' exact scale (bn_ternarize_auto).
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
#include "model/family.h"
#include "model/hf_write.h"
#include "model/safetensors.h"
#include "model/source.h"
#include "model/tensor_table.h"
#include "model/ternarize.h"
#include "text/spm_model.h"
#include "text/tokenizer.h"

#define CONFIG "config.json"
#define GENCONFIG "generation_config.json"

typedef struct hf_tensor {
    char canon[48];               /* "blk.3.attn_q" */
    char hf[112];                 /* "model.layers.3.self_attn.q_proj.weight" */
    int ternary;                  /* a BitLinear weight */
    uint64_t rows, cols;          /* logical shape, out x in (vectors: 1 x n) */
    const bn_st_tensor *t;
    const char *file;             /* the shard holding it (owned by the set) */
    float scale;                  /* packed form: the resolved multiplier */
} hf_tensor;

typedef struct hf_source {
    bn_source base;
    const bn_family_info *fam;    /* LLAMA3 until the vocabulary says FALCON3 */
    bn_st_set *set;
    hf_tensor *tensors;
    size_t n;
    int packed;                   /* uint8 + weight_scale form */
    int absmean_only;             /* float form: latent weights (HF WeightQuant) */
    int noted_auto;               /* the "already ternary" note was written */
    hf_tensor *last;              /* last lookup: the packer reads the embedding in many bands */
} hf_source;

/* What config.json (and generation_config.json) say beyond bn_config. */
typedef struct hf_meta {
    int have_quant;               /* quantization_config present */
    int bitlinear;                /* weight_scale divides (linear_class not autobitlinear) */
    int online;                   /* quantization_mode online */
    int tie;                      /* tie_word_embeddings: 1, 0, or -1 when absent */
    int64_t bos, eos, eot;        /* -1 when absent; eot from a list-valued eos_token_id */
} hf_meta;

static int is_llama_arch(const bn_family_info *f) { return f->hf_weights == BN_HFW_PACKED_DIV; }

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

/* bos_token_id / eos_token_id: an id, or a list of ids ([128001, 128009]: eos, then eot).
 * Absent or null: -1 each. Anything else is an error naming file and key. */
static int cfg_token_ids(const json_t *root, const char *file, const char *key, int64_t *first, int64_t *second,
                         bn_error *err)
{
    const json_t *j = json_object_get(root, key);
    *first = *second = -1;
    if (!j || json_is_null(j)) return 0;
    size_t n = json_is_array(j) ? json_array_size(j) : 1;
    if (json_is_array(j) && (n < 1 || n > 2)) return bn_err(err, "%s: %s: a list of %zu ids (1 or 2 expected)", file, key, n);
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_is_array(j) ? json_array_get(j, i) : j;
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX)
            return bn_err(err, "%s: %s: not a token id (or a list of 1-2 ids)", file, key);
        *(i ? second : first) = json_integer_value(e);
    }
    return 0;
}

static const char *arch0(const json_t *root)
{
    return json_string_value(json_array_get(json_object_get(root, "architectures"), 0));
}

/* architectures[0] + model_type -> family. Llama3 and Falcon3 share their config form: the
 * vocabulary decides later (load_vocab). */
static int detect_family(const json_t *root, const bn_family_info **fam, bn_error *err)
{
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    const char *arch = arch0(root);
    enum bn_family f = 0;
    if (mt && !strcmp(mt, "bitnet")) f = BN_FAM_BITNET;
    else if (arch && (!strcmp(arch, "BitnetForCausalLM") || !strcmp(arch, "BitNetForCausalLM")))
        f = !mt ? BN_FAM_BITNET : !strcmp(mt, "llama") ? BN_FAM_1BITLLM : 0; /* 1bitLLM states llama */
    else if (arch && !strcmp(arch, "LlamaForCausalLM") && mt && !strcmp(mt, "llama")) f = BN_FAM_LLAMA3;
    if (!f)
        return bn_err(err, CONFIG ": architectures[0] '%.60s' with model_type '%.40s' is not a supported BitNet "
                           "checkpoint (BitNetForCausalLM/bitnet, BitnetForCausalLM/llama, or LlamaForCausalLM/llama "
                           "with quantization_config.quant_method bitnet)", arch ? arch : "(missing)", mt ? mt : "(missing)");
    *fam = bn_family_get(f);
    return 0;
}

static int parse_act(bn_source *s, const json_t *root, const bn_family_info *fam, uint32_t *act, bn_error *err)
{
    const json_t *j = json_object_get(root, "hidden_act");
    const char *a = json_string_value(j);
    if (!j) {
        bn_source_note(s, CONFIG ": hidden_act absent: using the %s default %s", fam->hf_arch,
                       fam->act == BN_ACT_SILU ? "silu" : "relu2");
        *act = fam->act;
    } else if (a && !strcmp(a, "relu2")) *act = BN_ACT_RELU2;
    else if (a && !strcmp(a, "silu")) *act = BN_ACT_SILU;
    else return bn_err(err, CONFIG ": hidden_act '%.40s' is not supported (relu2 or silu)", a ? a : "(not a string)");
    return 0;
}

/* modules_to_not_convert: null or names; one that is inside a layer would leave a linear in
 * float, which the packed form cannot hold. */
static int check_not_convert(const json_t *q, bn_error *err)
{
    const json_t *l = json_object_get(q, "modules_to_not_convert");
    if (!l || json_is_null(l)) return 0;
    if (!json_is_array(l)) return bn_err(err, CONFIG ": quantization_config.modules_to_not_convert: not a list");
    size_t i;
    const json_t *e;
    json_array_foreach(l, i, e) {
        const char *m = json_string_value(e);
        if (!m) return bn_err(err, CONFIG ": quantization_config.modules_to_not_convert[%zu]: not a string", i);
        if (strstr(m, "layers") || strstr(m, "_proj"))
            return bn_err(err, CONFIG ": quantization_config.modules_to_not_convert[%zu] '%.60s': an unquantized "
                               "linear inside a layer is not supported", i, m);
    }
    return 0;
}

/* quantization_config: absent keys take BitNetQuantConfig's defaults (linear_class bitlinear,
 * quantization_mode offline), and say so. 1bitLLM has none (its weights are latent). */
static int parse_quant(bn_source *s, const json_t *root, const bn_family_info *fam, hf_meta *m, bn_error *err)
{
    const json_t *q = json_object_get(root, "quantization_config");
    if (!q || json_is_null(q)) {
        if (is_llama_arch(fam))
            return bn_err(err, CONFIG ": quantization_config: missing; LlamaForCausalLM is read only as a BitNet "
                               "checkpoint (quantization_config.quant_method bitnet)");
        return 0;
    }
    if (!json_is_object(q)) return bn_err(err, CONFIG ": quantization_config: not an object");
    if (fam->hf_weights == BN_HFW_LATENT)
        return bn_err(err, CONFIG ": quantization_config: unexpected for BitnetForCausalLM (model_type llama), whose "
                           "weights are latent floats");
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
    return check_not_convert(q, err);
}

/* Architecture features bitnetd does not implement are refused, never silently dropped. */
static int check_unsupported(const json_t *root, bn_error *err)
{
    static const char *const biases[] = {"attention_bias", "mlp_bias"};
    const json_t *rs = json_object_get(root, "rope_scaling");
    if (rs && !json_is_null(rs)) return bn_err(err, CONFIG ": rope_scaling: not supported (must be absent or null)");
    for (size_t i = 0; i < 2; i++)
        if (json_is_true(json_object_get(root, biases[i])))
            return bn_err(err, CONFIG ": %s: biases are not supported", biases[i]);
    if (json_is_true(json_object_get(root, "rope_interleaved")))
        return bn_err(err, CONFIG ": rope_interleaved: interleaved RoPE is not supported (rotate_half only)");
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
    /* num_key_value_heads absent means no GQA (transformers: defaults to num_attention_heads);
     * head_dim absent means hidden_size / num_attention_heads (Falcon3 states 256). */
    if (cfg_u32(root, "head_dim", 0, c->n_embd / c->n_head, &c->head_dim, err)) return -1;
    if ((uint64_t)c->head_dim * c->n_head != c->n_embd || c->head_dim % 2)
        return bn_err(err, CONFIG ": head_dim %u x num_attention_heads %u is not hidden_size %u (or head_dim is odd)",
                      c->head_dim, c->n_head, c->n_embd);
    return 0;
}

static int parse_config_json(hf_source *h, const json_t *root, hf_meta *m, bn_error *err)
{
    bn_source *s = &h->base;
    bn_config *c = &s->cfg;
    if (!json_is_object(root)) return bn_err(err, CONFIG ": the top level is not an object");
    if (detect_family(root, &h->fam, err) || check_unsupported(root, err) || parse_dims(root, c, err)) return -1;
    c->no_sub_norms = h->fam->no_sub_norms;
    if (cfg_float(s, root, "rope_theta", 10000.0, &c->rope_theta, err) ||
        cfg_float(s, root, "rms_norm_eps", 1e-5, &c->norm_eps, err) || parse_act(s, root, h->fam, &c->act, err) ||
        parse_quant(s, root, h->fam, m, err))
        return -1;
    const json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie)) return bn_err(err, CONFIG ": tie_word_embeddings: not a boolean");
    m->tie = tie ? json_is_true(tie) : -1;
    int64_t unused;
    if (cfg_token_ids(root, CONFIG, "bos_token_id", &m->bos, &unused, err) ||
        cfg_token_ids(root, CONFIG, "eos_token_id", &m->eos, &m->eot, err))
        return -1;
    if (bn_config_validate(c, err)) return bn_err_prefix(err, CONFIG);
    return 0;
}

/* Reads dir/name as JSON; *root NULL (and 0 returned) when optional and absent. */
static int read_json(const char *dir, const char *name, int optional, json_t **root, bn_error *err)
{
    char *path = bn_path_join(dir, name), *text = NULL;
    size_t len;
    struct stat st;
    *root = NULL;
    if (!path) return bn_err(err, "out of memory");
    if (optional && stat(path, &st) != 0) {
        free(path);
        return 0;
    }
    int rc = bn_read_file(path, (size_t)16 << 20, &text, &len, err);
    free(path);
    if (rc) return -1;
    json_error_t je;
    *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!*root) return bn_err(err, "%s: not valid JSON (line %d, column %d): %s", name, je.line, je.column, je.text);
    return 0;
}

static int read_config(hf_source *h, const char *dir, hf_meta *m, bn_error *err)
{
    json_t *root;
    if (read_json(dir, CONFIG, 0, &root, err)) return -1;
    int rc = parse_config_json(h, root, m, err);
    json_decref(root);
    return rc;
}

/* generation_config.json, when present, states the ids generation uses: they win over
 * config.json's (HF's generate() reads them), and a list-valued eos gives eos + eot. */
static int read_generation_config(hf_source *h, const char *dir, hf_meta *m, bn_error *err)
{
    json_t *root;
    if (read_json(dir, GENCONFIG, 1, &root, err)) return -1;
    if (!root) return 0;
    int64_t bos, eos, eot, unused;
    int rc = !json_is_object(root) ? bn_err(err, GENCONFIG ": the top level is not an object")
             : cfg_token_ids(root, GENCONFIG, "bos_token_id", &bos, &unused, err) ||
                     cfg_token_ids(root, GENCONFIG, "eos_token_id", &eos, &eot, err) ? -1 : 0;
    json_decref(root);
    if (rc) return -1;
    if (bos >= 0) m->bos = bos;
    if (eos >= 0) {
        if (m->eos >= 0 && m->eos != eos)
            bn_source_note(&h->base, GENCONFIG ": eos_token_id %lld differs from " CONFIG "'s %lld: using " GENCONFIG "'s",
                           (long long)eos, (long long)m->eos);
        m->eos = eos;
        m->eot = eot;
    }
    return 0;
}

/* ---- tensor table -------------------------------------------------------------------- */

static void add_tensor(hf_source *h, const char *canon, const char *hf, int ternary, uint64_t rows, uint64_t cols)
{
    hf_tensor *e = &h->tensors[h->n++];
    snprintf(e->canon, sizeof e->canon, "%s", canon);
    snprintf(e->hf, sizeof e->hf, "%s", hf);
    e->ternary = ternary;
    e->rows = rows;
    e->cols = cols;
}

/* The HF name stem of a layer tensor in family f ("self_attn.q_proj"); sub-norms are named
 * per family. */
static const char *hf_stem(const bn_family_info *f, const bn_layer_tensor_def *d)
{
    if (d->hf) return d->hf;
    return d->id == BN_LT_ATTN_SUB_NORM ? f->hf_attn_sub_norm : f->hf_ffn_sub_norm;
}

/* The expected tensors, in the order the packer reads them. n_layer <= 1024 (validated), so the
 * names fit their buffers. */
static int build_table(hf_source *h, int with_output, bn_error *err)
{
    const bn_config *c = &h->base.cfg;
    h->tensors = calloc(3 + (size_t)c->n_layer * BN_LT_COUNT, sizeof *h->tensors);
    if (!h->tensors) return bn_err(err, "out of memory");
    add_tensor(h, "token_embd", "model.embed_tokens.weight", 0, c->n_vocab, c->n_embd);
    if (with_output) add_tensor(h, "output", "lm_head.weight", 0, c->n_vocab, c->n_embd);
    add_tensor(h, "output_norm", "model.norm.weight", 0, 1, c->n_embd);
    for (uint32_t l = 0; l < c->n_layer; l++)
        for (int k = 0; k < BN_LT_COUNT; k++) {
            const bn_layer_tensor_def *d = &bn_layer_tensors[k];
            if (!bn_layer_tensor_present(c, d)) continue;
            const char *stem = hf_stem(h->fam, d);
            if (!stem) return bn_err(err, "%s checkpoints have no HF name for %s", h->fam->hf_arch, d->canon);
            char canon[48], hf[112];
            uint64_t rows, cols;
            snprintf(canon, sizeof canon, "blk.%u.%s", l, d->canon);
            snprintf(hf, sizeof hf, "model.layers.%u.%s.weight", l, stem);
            bn_layer_tensor_shape(c, d, &rows, &cols);
            add_tensor(h, canon, hf, d->ternary, rows, cols);
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
    char name[128];
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
    e->scale = bitlinear ? 1.0f / raw : raw; /* facts s.2: bitlinear divides, in f32 */
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

/* The form follows the first linear's dtype; the config must agree with it. */
static int pick_form(hf_source *h, const hf_meta *m, const hf_tensor *e, bn_error *err)
{
    const bn_st_tensor *first = e->t;
    int latent_family = h->fam->hf_weights == BN_HFW_LATENT;
    h->packed = first->dtype == BN_ST_U8;
    if (!h->packed && !is_float_dtype(first->dtype))
        return bn_err(err, "%s: tensor '%s': dtype %s is neither packed U8 nor float", e->file, e->hf,
                      bn_st_dtype_name(first->dtype));
    if (h->packed && latent_family)
        return bn_err(err, "%s: tensor '%s': dtype U8, but BitnetForCausalLM (model_type llama) checkpoints hold "
                           "latent float weights (" CONFIG " has no quantization_config)", e->file, e->hf);
    if (h->packed && !m->have_quant)
        return bn_err(err, CONFIG ": quantization_config: missing, but the linears are packed U8: whether weight_scale "
                           "multiplies (autobitlinear) or divides (bitlinear) is unknown");
    if (m->have_quant && h->packed == m->online)
        return bn_err(err, CONFIG ": quantization_config.quantization_mode is %s but the linears are %s",
                      m->online ? "online" : "offline", h->packed ? "packed U8" : "float (latent)");
    h->absmean_only = !h->packed && (m->online || latent_family);
    const char *kind = h->packed ? "hf-packed" : first->dtype == BN_ST_BF16 ? "hf-bf16" : first->dtype == BN_ST_F16 ? "hf-f16" : "hf-f32";
    if (!(h->base.kind = strdup(kind))) return bn_err(err, "out of memory");
    if (h->absmean_only)
        bn_source_note(&h->base, "linears are %s latent weights (%s): ternarized with the absmean rule, as HF's "
                                 "WeightQuant does", bn_st_dtype_name(first->dtype),
                       latent_family ? "BitnetForCausalLM" : "quantization_mode online");
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

/* Is name "model.layers.N.<a sub-norm of any family>.weight"? */
static int is_sub_norm_name(const char *name)
{
    const char *p = strncmp(name, "model.layers.", 13) ? NULL : strchr(name + 13, '.');
    if (!p) return 0;
    for (int f = BN_FAM_BITNET; f <= BN_FAM_FALCON_E; f++) {
        const bn_family_info *fi = bn_family_get((enum bn_family)f);
        const char *names[2] = {fi ? fi->hf_attn_sub_norm : NULL, fi ? fi->hf_ffn_sub_norm : NULL};
        for (int k = 0; k < 2; k++) {
            size_t n = names[k] ? strlen(names[k]) : 0;
            if (n && !strncmp(p + 1, names[k], n) && !strcmp(p + 1 + n, ".weight")) return 1;
        }
    }
    return 0;
}

/* Tensors the checkpoint has and bitnetd does not use (rotary inv_freq, a tied lm_head, ...)
 * are reported, not fatal: HF itself ignores them. A sub-norm in a family without them is
 * fatal: dropping it would silently change the block's math. */
static int note_extras(hf_source *h, bn_error *err)
{
    const char **known = malloc(h->n * sizeof *known);
    if (!known) return bn_err(err, "out of memory");
    for (size_t i = 0; i < h->n; i++) known[i] = h->tensors[i].hf;
    qsort(known, h->n, sizeof *known, cmp_str);
    size_t extras = 0, n = bn_st_set_count(h->set);
    char first[3][100];
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        const char *name = bn_st_set_name(h->set, i);
        size_t len = strlen(name);
        if (bsearch(&name, known, h->n, sizeof *known, cmp_str)) continue;
        if (h->packed && len > 13 && !strcmp(name + len - 13, ".weight_scale")) continue;
        if (h->base.cfg.no_sub_norms && is_sub_norm_name(name)) {
            rc = bn_err(err, "%s: tensor '%.90s' is a sub-norm, but %s checkpoints have none (plain Llama block): "
                             "refusing to drop it", bn_st_set_origin(h->set), name, h->fam->hf_arch);
            break;
        }
        if (extras < 3) snprintf(first[extras], sizeof first[0], "%.90s", name);
        extras++;
    }
    free(known);
    if (rc) return -1;
    if (extras)
        bn_source_note(&h->base, "%zu unused tensor(s) ignored: %s%s%s%s%s%s", extras, first[0],
                       extras > 1 ? ", " : "", extras > 1 ? first[1] : "", extras > 2 ? ", " : "",
                       extras > 2 ? first[2] : "", extras > 3 ? ", ..." : "");
    return 0;
}

/* transformers' default is untied, but a checkpoint without lm_head.weight can only be tied
 * (the 2B-4T and 1bitLLM configs say true explicitly). An explicit false without lm_head is an
 * error. */
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

static int path_exists(const char *dir, const char *name, char **path, bn_error *err)
{
    struct stat st;
    *path = bn_path_join(dir, name);
    if (!*path) return bn_err(err, "out of memory");
    return stat(*path, &st) == 0;
}

/* Falcon's tokenizer.json pre-tokenizer shape (tiiuae's tokenizers): a Sequence of Punctuation,
 * ByteLevel and Digits steps. bn_vocab_load_hf() knows only the Llama-3 and GPT-2 splits; such a
 * file is read with its pre_tokenizer replaced by a plain ByteLevel one, and the vocab's pre is
 * set to BN_PRE_FALCON3 afterwards (load_vocab). */
static int is_falcon_pre(const json_t *pt)
{
    const char *type = json_string_value(json_object_get(pt, "type"));
    const json_t *list = json_object_get(pt, "pretokenizers");
    if (!type || strcmp(type, "Sequence") || !json_is_array(list)) return 0;
    int punct = 0, bytelevel = 0;
    size_t i;
    const json_t *p;
    json_array_foreach(list, i, p) {
        const char *t = json_string_value(json_object_get(p, "type"));
        if (!t) return 0;
        if (!strcmp(t, "Punctuation")) punct++;
        else if (!strcmp(t, "ByteLevel")) bytelevel++;
        else if (strcmp(t, "Digits")) return 0;
    }
    return punct == 1 && bytelevel == 1;
}

/* tokenizer.json, as bn_vocab_load_hf() reads it, or with Falcon's pre_tokenizer swapped out
 * when that is what it could not read. */
static int load_tokenizer_json(const char *path, const char *config, bn_vocab **v, int *falcon_pre, bn_error *err)
{
    char *text = NULL, *ctext = NULL, *swapped = NULL;
    size_t len = 0, clen = 0;
    *falcon_pre = 0;
    if (bn_read_file(path, (size_t)1 << 30, &text, &len, err) ||
        (config && bn_read_file(config, (size_t)16 << 20, &ctext, &clen, err))) {
        free(text);
        return -1;
    }
    int rc = bn_vocab_load_hf_mem(text, len, ctext, clen, "tokenizer.json", v, err);
    if (rc) {
        json_t *root = json_loadb(text, len, 0, NULL);
        if (root && is_falcon_pre(json_object_get(root, "pre_tokenizer")) &&
            !json_object_set_new(root, "pre_tokenizer", json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel",
                                                                 "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 1)) &&
            (swapped = json_dumps(root, JSON_COMPACT))) {
            *falcon_pre = 1;
            rc = bn_vocab_load_hf_mem(swapped, strlen(swapped), ctext, clen, "tokenizer.json", v, err);
        }
        json_decref(root);
    }
    free(swapped);
    free(text);
    free(ctext);
    return rc;
}

/* A Falcon vocabulary: <|endoftext|> and no <|begin_of_text|> (Llama-3's). */
static int is_falcon_vocab(const bn_vocab *v)
{
    return bn_vocab_find(v, "<|endoftext|>", 13) >= 0 && bn_vocab_find(v, "<|begin_of_text|>", 17) < 0;
}

/* tokenizer_config.json's add_bos_token: 1, 0, or -1 when absent (or no such file). */
static int read_add_bos(const char *dir, int *add_bos, bn_error *err)
{
    json_t *root;
    *add_bos = -1;
    if (read_json(dir, "tokenizer_config.json", 1, &root, err)) return -1;
    const json_t *j = json_object_get(root, "add_bos_token");
    int rc = 0;
    if (j && !json_is_boolean(j)) rc = bn_err(err, "tokenizer_config.json: add_bos_token: not a boolean");
    else if (j) *add_bos = json_is_true(j);
    json_decref(root);
    return rc;
}

/* The vocabulary: tokenizer.json if present (byte-level BPE; an SPM-kind one is H6's loader's
 * business), else tokenizer.model + added_tokens.json (SentencePiece). Then the family's
 * vocabulary rules: for LlamaForCausalLM a Falcon vocabulary makes the family FALCON3 and its
 * pre-tokenizer the fork's FALCON3 chain, whatever split the file states (the team's decision:
 * bitnet.cpp runs that chain for every Falcon3/Falcon-E checkpoint; upstream's LLAMA3 reading
 * stays unconfirmed, facts s.3). */
static int load_vocab(hf_source *h, const char *dir, bn_error *err)
{
    char *tj = NULL, *tm = NULL, *tc = NULL, *at = NULL;
    int has_tj = path_exists(dir, "tokenizer.json", &tj, err), has_tm = has_tj ? 0 : path_exists(dir, "tokenizer.model", &tm, err);
    int has_tc = path_exists(dir, "tokenizer_config.json", &tc, err), has_at = path_exists(dir, "added_tokens.json", &at, err);
    int rc, falcon_pre = 0;
    if (has_tj < 0 || has_tm < 0 || has_tc < 0 || has_at < 0) rc = -1;
    else if (has_tj) rc = load_tokenizer_json(tj, has_tc ? tc : NULL, &h->base.vocab, &falcon_pre, err);
    else if (has_tm) rc = bn_spm_model_load(tm, has_at ? at : NULL, &h->base.vocab, err);
    else rc = bn_err(err, "%s: tokenizer.json is missing (and there is no tokenizer.model)", dir);
    free(tj);
    free(tm);
    free(tc);
    free(at);
    if (rc) return -1;
    bn_vocab *v = h->base.vocab;
    if (bn_vocab_index(v, err)) return bn_err_prefix(err, "%s", has_tj ? "tokenizer.json" : "tokenizer.model");
    if (v->n_tokens > h->base.cfg.n_vocab)
        return bn_err(err, "%s: %u tokens, more than " CONFIG " vocab_size %u", has_tj ? "tokenizer.json" : "tokenizer.model",
                      v->n_tokens, h->base.cfg.n_vocab);
    if (v->n_tokens < h->base.cfg.n_vocab)
        bn_source_note(&h->base, "the tokenizer has %u tokens; embedding rows %u..%u are padding", v->n_tokens,
                       v->n_tokens, h->base.cfg.n_vocab - 1);
    if (is_llama_arch(h->fam) && v->model == BN_TOKM_BPE && (falcon_pre || is_falcon_vocab(v))) {
        h->fam = bn_family_get(BN_FAM_FALCON3);
        if (!falcon_pre && v->pre != BN_PRE_FALCON3)
            bn_source_note(&h->base, "tokenizer.json: a Falcon vocabulary: its pre-tokenizer read as Falcon3's "
                                     "(punctuation, GPT-2 split, single digits), not the file's");
        v->pre = BN_PRE_FALCON3;
    }
    if (h->fam->id != BN_FAM_BITNET) v->chat = h->fam->chat;
    else {
        /* BitNet's own format unless the template is Llama-3's (model facts 5). */
        if (!v->chat_template) bn_source_note(&h->base, "no chat_template in tokenizer_config.json: BitNet chat format");
        v->chat = bn_chat_kind_of_vocab(v);
    }
    return 0;
}

/* Special ids: config.json's (generation_config.json's when present), else the tokenizer's.
 * cfg.bos is the id prepended to prompts: none when tokenizer_config.json's add_bos_token is
 * false or, absent, for Falcon (the fork forces no BOS, facts s.6). */
static int set_special_ids(hf_source *h, const char *dir, const hf_meta *m, bn_error *err)
{
    bn_config *c = &h->base.cfg;
    const bn_vocab *v = h->base.vocab;
    const int64_t ids[3] = {m->bos, m->eos, m->eot};
    for (int i = 0; i < 3; i++)
        if (ids[i] >= (int64_t)c->n_vocab)
            return bn_err(err, CONFIG ": bos_token_id/eos_token_id %lld outside vocab_size %u", (long long)ids[i], c->n_vocab);
    int add_bos;
    if (read_add_bos(dir, &add_bos, err)) return -1;
    if (add_bos < 0) add_bos = h->fam->id != BN_FAM_FALCON3 && h->fam->id != BN_FAM_FALCON_E;
    int32_t bos = m->bos >= 0 ? (int32_t)m->bos : v->bos;
    c->bos = add_bos ? bos : -1;
    c->eos = m->eos >= 0 ? (int32_t)m->eos : v->eos;
    c->eot = m->eot >= 0 ? (int32_t)m->eot : v->eot;
    if (m->bos >= 0 && v->bos >= 0 && v->bos != bos)
        bn_source_note(&h->base, CONFIG ": bos_token_id %d differs from the tokenizer's %d: using " CONFIG "'s", bos, v->bos);
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
    hf_meta m = {.tie = -1, .bos = -1, .eos = -1, .eot = -1};
    int with_output = 0;
    if (read_config(h, dir, &m, err) || read_generation_config(h, dir, &m, err) || bn_st_set_open(dir, &h->set, err) ||
        decide_tie(h, &m, &with_output, err) || build_table(h, with_output, err) || resolve_tensors(h, &m, err) ||
        note_extras(h, err) || load_vocab(h, dir, err) || set_special_ids(h, dir, &m, err))
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
