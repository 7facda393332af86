/* Writers for Hugging Face checkpoint directories (see hf_write.h). Safetensors files are
 * streamed: every tensor's size follows from the config, so each file's header is computed
 * before any data and the data is then generated and written one tensor at a time. */
#include "model/hf_write.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/checked.h"
#include "base/file.h"
#include "kernels/half.h"
#include "model/safetensors.h"

/* The chat template of microsoft/bitnet-b1.58-2B-4T's tokenizer_config.json (model facts 5). */
static const char bitnet_chat_template[] =
    "{% for message in messages %}{{ message['role'] | capitalize + ': ' + message['content'] | trim + "
    "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}";

/* The Llama-3 pre-tokenizer regex, exactly as Meta's tokenizer.json spells it. */
static const char llama3_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

void bn_hf_pack_rows(const int8_t *t, uint64_t rows, uint64_t cols, uint8_t *p)
{
    uint64_t P = rows / 4;
    for (uint64_t r = 0; r < P; r++)
        for (uint64_t c = 0; c < cols; c++) {
            unsigned b = 0;
            for (unsigned i = 0; i < 4; i++) b |= (unsigned)(t[(i * P + r) * cols + c] + 1) << (2 * i);
            p[r * cols + c] = (uint8_t)b;
        }
}

/* ---- small files -------------------------------------------------------------------- */

static int write_file(const char *path, const char *text, size_t len, bn_error *err)
{
    bn_atomic_file f;
    if (bn_atomic_open(&f, path, err)) return -1;
    if (bn_atomic_write(&f, text, len, err)) {
        bn_atomic_abort(&f);
        return -1;
    }
    return bn_atomic_commit(&f, err);
}

/* Dumps root (consumed) to path. */
static int write_json(const char *path, json_t *root, size_t flags, bn_error *err)
{
    if (!root) return bn_err(err, "%s: out of memory (or a string that is not UTF-8)", path);
    char *text = json_dumps(root, flags);
    json_decref(root);
    if (!text) return bn_err(err, "%s: cannot serialize JSON", path);
    size_t len = strlen(text);
    int rc = write_file(path, text, len, err);
    free(text);
    return rc;
}

static int write_json_in(const char *dir, const char *name, json_t *root, size_t flags, bn_error *err)
{
    char *path = bn_path_join(dir, name);
    if (!path) {
        json_decref(root);
        return bn_err(err, "out of memory");
    }
    int rc = write_json(path, root, flags, err);
    free(path);
    return rc;
}

/* The shortest decimal that reads back as f, so config.json says 1e-05, not 9.99999975e-06. */
static json_t *json_float(float f)
{
    double d = f;
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        if ((float)strtod(buf, NULL) == f) {
            d = strtod(buf, NULL);
            break;
        }
    }
    return json_real(d);
}

static json_t *token_json(const bn_vocab *v, int32_t id)
{
    if (id < 0 || (uint32_t)id >= v->n_tokens) return json_null();
    size_t len;
    const char *s = bn_vocab_token(v, (uint32_t)id, &len);
    return json_stringn(s, len);
}

/* ---- tokenizer.json ------------------------------------------------------------------- */

static json_t *pre_tokenizer_json(uint32_t pre)
{
    if (pre != BN_PRE_LLAMA3)
        return json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1,
                         "use_regex", 1);
    return json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}", "type", "Sequence", "pretokenizers",
                     "type", "Split", "pattern", "Regex", llama3_regex, "behavior", "Isolated", "invert", 0, "type",
                     "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0);
}

static int is_added(uint8_t type) { return type == BN_TOK_CONTROL || type == BN_TOK_USER_DEFINED; }

/* model.vocab (ordinary tokens) and added_tokens (control and user-defined), as Meta's file
 * splits them. */
static int tokens_json(const bn_vocab *v, json_t *vocab, json_t *added, const char *path, bn_error *err)
{
    for (uint32_t id = 0; id < v->n_tokens; id++) {
        size_t len;
        const char *s = bn_vocab_token(v, id, &len);
        if (memchr(s, 0, len)) return bn_err(err, "%s: token %u contains a NUL byte", path, id);
        json_t *str = json_stringn(s, len);
        if (!str) return bn_err(err, "%s: token %u is not valid UTF-8", path, id);
        int rc;
        if (is_added(v->type[id])) {
            int special = v->type[id] == BN_TOK_CONTROL;
            rc = json_array_append_new(added, json_pack("{s:I, s:o, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)id,
                                                        "content", str, "single_word", 0, "lstrip", 0, "rstrip", 0,
                                                        "normalized", !special, "special", special));
        } else {
            rc = json_object_set_new(vocab, json_string_value(str), json_integer(id));
            json_decref(str);
        }
        if (rc) return bn_err(err, "%s: out of memory", path);
    }
    return 0;
}

/* "left right", or a [left, right] pair when a side contains a space (the string form would be
 * ambiguous; the loader reads both). */
static int merges_json(const bn_vocab *v, json_t *merges, const char *path, bn_error *err)
{
    for (uint32_t m = 0; m < v->n_merges; m++) {
        size_t la, lb;
        const char *a = bn_vocab_token(v, v->merges[2 * m], &la), *b = bn_vocab_token(v, v->merges[2 * m + 1], &lb);
        json_t *item;
        if (memchr(a, ' ', la) || memchr(b, ' ', lb)) {
            item = json_pack("[s%, s%]", a, la, b, lb);
        } else {
            char *s = malloc(la + lb + 2);
            if (!s) return bn_err(err, "%s: out of memory", path);
            memcpy(s, a, la);
            s[la] = ' ';
            memcpy(s + la + 1, b, lb);
            item = json_stringn(s, la + lb + 1);
            free(s);
        }
        if (!item || json_array_append_new(merges, item))
            return bn_err(err, "%s: merge %u cannot be written (not UTF-8?)", path, m);
    }
    return 0;
}

int bn_vocab_write_hf_json(const bn_vocab *v, const char *path, bn_error *err)
{
    json_t *vocab = json_object(), *added = json_array(), *merges = json_array();
    json_t *model = json_pack("{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:b, s:o, s:o}", "type", "BPE", "dropout",
                              "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 0,
                              "byte_fallback", 0, "ignore_merges", v->ignore_merges ? 1 : 0, "vocab", vocab, "merges",
                              merges);
    json_t *root = json_pack("{s:s, s:n, s:n, s:o, s:n, s:o, s:{s:s, s:b, s:b, s:b}, s:{s:s, s:b, s:b, s:b}, s:o}",
                             "version", "1.0", "truncation", "padding", "added_tokens", added, "normalizer",
                             "pre_tokenizer", pre_tokenizer_json(v->pre), "post_processor", "type", "ByteLevel",
                             "add_prefix_space", 1, "trim_offsets", 0, "use_regex", 1, "decoder", "type",
                             "ByteLevel", "add_prefix_space", 1, "trim_offsets", 1, "use_regex", 1, "model", model);
    if (!root) {
        json_decref(root);
        return bn_err(err, "%s: out of memory", path);
    }
    if (tokens_json(v, vocab, added, path, err) || merges_json(v, merges, path, err)) {
        json_decref(root);
        return -1;
    }
    return write_json(path, root, JSON_INDENT(2), err);
}

static int write_tokenizer_config(const bn_vocab *v, const bn_config *c, const char *dir, bn_error *err)
{
    json_t *root = json_pack("{s:b, s:b, s:o, s:s, s:b, s:o, s:[s, s], s:I, s:s}", "add_bos_token", 1,
                             "add_eos_token", 0, "bos_token", token_json(v, v->bos), "chat_template",
                             v->chat_template ? v->chat_template : bitnet_chat_template,
                             "clean_up_tokenization_spaces", 1, "eos_token", token_json(v, v->eos),
                             "model_input_names", "input_ids", "attention_mask", "model_max_length",
                             (json_int_t)c->n_ctx_max, "tokenizer_class", "PreTrainedTokenizerFast");
    if (root && v->pad >= 0) json_object_set_new(root, "pad_token", token_json(v, v->pad));
    return write_json_in(dir, "tokenizer_config.json", root, JSON_INDENT(2), err);
}

/* ---- config.json ---------------------------------------------------------------------- */

static int write_config(const bn_config *c, int latent, const char *dir, bn_error *err)
{
    json_t *q = json_pack("{s:s, s:s, s:s}", "linear_class", "autobitlinear", "quant_method", "bitnet",
                          "quantization_mode", latent ? "online" : "offline");
    json_t *root = json_pack(
        "{s:[s], s:b, s:f, s:o, s:o, s:s, s:I, s:f, s:I, s:I, s:s, s:I, s:I, s:I, s:o, s:o, s:o, s:b, s:s, s:s, s:b, s:I}",
        "architectures", "BitNetForCausalLM", "attention_bias", 0, "attention_dropout", 0.0, "bos_token_id",
        c->bos >= 0 ? json_integer(c->bos) : json_null(), "eos_token_id",
        c->eos >= 0 ? json_integer(c->eos) : json_null(), "hidden_act", c->act == BN_ACT_SILU ? "silu" : "relu2",
        "hidden_size", (json_int_t)c->n_embd, "initializer_range", 0.02, "intermediate_size", (json_int_t)c->n_ff,
        "max_position_embeddings", (json_int_t)c->n_ctx_max, "model_type", "bitnet", "num_attention_heads",
        (json_int_t)c->n_head, "num_hidden_layers", (json_int_t)c->n_layer, "num_key_value_heads",
        (json_int_t)c->n_head_kv, "quantization_config", q, "rms_norm_eps", json_float(c->norm_eps), "rope_theta",
        json_float(c->rope_theta), "tie_word_embeddings", c->tied ? 1 : 0, "torch_dtype", "bfloat16",
        "transformers_version", "4.52.0", "use_cache", 1, "vocab_size", (json_int_t)c->n_vocab);
    return write_json_in(dir, "config.json", root, JSON_INDENT(2) | JSON_REAL_PRECISION(9), err);
}

/* ---- tensor plan ---------------------------------------------------------------------- */

enum src { S_EMBD, S_NORM, S_PACKED, S_SCALE, S_LATENT };

typedef struct st_entry {
    char name[112];          /* HF name */
    char canon[48];          /* synth name */
    enum src src;
    uint32_t dtype;
    uint32_t n_dims;
    uint64_t shape[2];
    uint64_t rows, cols;     /* logical (synth) shape */
    uint64_t nbytes;
    uint64_t offset;         /* within its shard's data section */
    int shard;
    float scale;             /* S_SCALE: set when its weight (the entry before) is written */
} st_entry;

typedef struct plan {
    st_entry *e;
    size_t n;
} plan;

static void plan_add(plan *p, const char *name, const char *canon, enum src src, uint64_t rows, uint64_t cols)
{
    st_entry *e = &p->e[p->n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    snprintf(e->canon, sizeof e->canon, "%s", canon);
    e->src = src;
    e->rows = rows;
    e->cols = cols;
    e->dtype = src == S_PACKED ? BN_ST_U8 : BN_ST_BF16;
    switch (src) {
    case S_NORM: e->n_dims = 1; e->shape[0] = cols; break;
    case S_SCALE: e->n_dims = 1; e->shape[0] = 1; break;
    case S_PACKED: e->n_dims = 2; e->shape[0] = rows / 4; e->shape[1] = cols; break;
    default: e->n_dims = 2; e->shape[0] = rows; e->shape[1] = cols; break;
    }
    e->nbytes = (e->n_dims == 1 ? e->shape[0] : e->shape[0] * e->shape[1]) * bn_st_dtype_size(e->dtype);
}

static const struct {
    const char *canon, *hf;
    int linear;
} layer_names[] = {
    {"attn_norm", "input_layernorm", 0},      {"attn_q", "self_attn.q_proj", 1},
    {"attn_k", "self_attn.k_proj", 1},        {"attn_v", "self_attn.v_proj", 1},
    {"attn_sub_norm", "self_attn.attn_sub_norm", 0}, {"attn_output", "self_attn.o_proj", 1},
    {"ffn_norm", "post_attention_layernorm", 0}, {"ffn_gate", "mlp.gate_proj", 1},
    {"ffn_up", "mlp.up_proj", 1},             {"ffn_sub_norm", "mlp.ffn_sub_norm", 0},
    {"ffn_down", "mlp.down_proj", 1},
};
#define N_LAYER_NAMES (sizeof layer_names / sizeof layer_names[0])

static void layer_shape(const bn_config *c, const char *canon, uint64_t *rows, uint64_t *cols)
{
    uint64_t kv = (uint64_t)c->head_dim * c->n_head_kv;
    *rows = !strcmp(canon, "attn_k") || !strcmp(canon, "attn_v") ? kv
            : !strcmp(canon, "ffn_gate") || !strcmp(canon, "ffn_up") ? c->n_ff : c->n_embd;
    *cols = !strcmp(canon, "ffn_down") || !strcmp(canon, "ffn_sub_norm") ? c->n_ff : c->n_embd;
    if (!strstr(canon, "norm")) return;
    *rows = 1;
}

/* Every tensor, weight_scale right after its weight (the writer carries the scale over). */
static int build_plan(const bn_config *c, int latent, plan *p, bn_error *err)
{
    p->e = calloc(4 + (size_t)c->n_layer * (N_LAYER_NAMES + 7), sizeof *p->e);
    if (!p->e) return bn_err(err, "out of memory");
    plan_add(p, "model.embed_tokens.weight", "token_embd", S_EMBD, c->n_vocab, c->n_embd);
    for (uint32_t l = 0; l < c->n_layer; l++)
        for (size_t k = 0; k < N_LAYER_NAMES; k++) {
            char name[112], canon[48];
            uint64_t rows, cols;
            layer_shape(c, layer_names[k].canon, &rows, &cols);
            snprintf(canon, sizeof canon, "blk.%u.%s", l, layer_names[k].canon);
            snprintf(name, sizeof name, "model.layers.%u.%s.weight", l, layer_names[k].hf);
            if (!layer_names[k].linear) {
                plan_add(p, name, canon, S_NORM, 1, cols);
                continue;
            }
            if (rows % 4 || cols % 16) return bn_err(err, "%s: %llux%llu cannot be packed", canon,
                                                     (unsigned long long)rows, (unsigned long long)cols);
            plan_add(p, name, canon, latent ? S_LATENT : S_PACKED, rows, cols);
            if (latent) continue;
            snprintf(name, sizeof name, "model.layers.%u.%s.weight_scale", l, layer_names[k].hf);
            plan_add(p, name, canon, S_SCALE, 1, 1);
        }
    plan_add(p, "model.norm.weight", "output_norm", S_NORM, 1, c->n_embd);
    if (!c->tied) plan_add(p, "lm_head.weight", "output", S_EMBD, c->n_vocab, c->n_embd);
    return 0;
}

/* Contiguous runs of tensors per shard, balanced by bytes, never an empty shard: the shard
 * index grows by at most one per tensor and must reach shards-1 by the last one. */
static int assign_shards(plan *p, int shards, bn_error *err)
{
    if ((size_t)shards > p->n) return bn_err(err, "cannot split %zu tensors into %d shards", p->n, shards);
    uint64_t total = 0, cum = 0;
    for (size_t i = 0; i < p->n; i++) total += p->e[i].nbytes;
    int prev = 0;
    for (size_t i = 0; i < p->n; i++) {
        int s = (int)((double)cum / (double)total * shards);
        if (s < prev) s = prev;
        if (s > prev + 1) s = prev + 1;
        int must = shards - (int)(p->n - i);
        if (s < must) s = must;
        if (s > shards - 1) s = shards - 1;
        p->e[i].shard = prev = s;
        cum += p->e[i].nbytes;
    }
    return 0;
}

/* ---- safetensors files ------------------------------------------------------------------ */

static char *shard_name(int k, int shards)
{
    char buf[64];
    if (shards == 1) snprintf(buf, sizeof buf, "model.safetensors");
    else snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", k + 1, shards);
    return strdup(buf);
}

/* The header of shard k: offsets are assigned here, in plan order. Returns the JSON text padded
 * with spaces to a multiple of 8 bytes (as the reference writer does), malloc'd. */
static char *shard_header(plan *p, int k, size_t *len)
{
    json_t *root = json_pack("{s:{s:s}}", "__metadata__", "format", "pt");
    uint64_t off = 0;
    for (size_t i = 0; root && i < p->n; i++) {
        st_entry *e = &p->e[i];
        if (e->shard != k) continue;
        e->offset = off;
        json_t *shape = e->n_dims == 1 ? json_pack("[I]", (json_int_t)e->shape[0])
                                       : json_pack("[I, I]", (json_int_t)e->shape[0], (json_int_t)e->shape[1]);
        json_t *t = json_pack("{s:s, s:o, s:[I, I]}", "dtype", bn_st_dtype_name(e->dtype), "shape", shape,
                              "data_offsets", (json_int_t)off, (json_int_t)(off + e->nbytes));
        if (!t || json_object_set_new(root, e->name, t)) {
            json_decref(root);
            return NULL;
        }
        off += e->nbytes;
    }
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (!text) return NULL;
    size_t n = strlen(text), padded = (size_t)bn_align_up(n, 8);
    char *out = realloc(text, padded + 1);
    if (!out) {
        free(text);
        return NULL;
    }
    memset(out + n, ' ', padded - n);
    out[padded] = 0;
    *len = padded;
    return out;
}

static void put_bf16(uint8_t *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t b = bn_f32_to_bf16(src[i]);
        dst[2 * i] = (uint8_t)b;
        dst[2 * i + 1] = (uint8_t)(b >> 8);
    }
}

/* bf16 floats f[0..n) through a scratch buffer. */
static int write_bf16(bn_atomic_file *f, const float *v, size_t n, bn_error *err)
{
    uint8_t buf[8192];
    for (size_t i = 0; i < n; i += sizeof buf / 2) {
        size_t k = n - i < sizeof buf / 2 ? n - i : sizeof buf / 2;
        put_bf16(buf, v + i, k);
        if (bn_atomic_write(f, buf, 2 * k, err)) return -1;
    }
    return 0;
}

static int write_embedding(const bn_synth *s, bn_atomic_file *f, const st_entry *e, bn_error *err)
{
    float *row = malloc(e->cols * sizeof *row);
    if (!row) return bn_err(err, "out of memory");
    int rc = 0;
    for (uint64_t r = 0; r < e->rows && !rc; r++) {
        bn_synth_embedding_row(s, (uint32_t)r, row);
        rc = write_bf16(f, row, e->cols, err);
    }
    free(row);
    return rc;
}

static int write_linear(const bn_synth *s, bn_atomic_file *f, st_entry *e, bn_error *err)
{
    size_t n = (size_t)(e->rows * e->cols);
    int rc;
    if (e->src == S_LATENT) {
        float *w = malloc(n * sizeof *w);
        if (!w) return bn_err(err, "out of memory for %s", e->name);
        bn_synth_latent(s, e->canon, e->rows, e->cols, w);
        rc = write_bf16(f, w, n, err);
        free(w);
        return rc;
    }
    int8_t *t = malloc(n);
    uint8_t *p = malloc(n / 4);
    if (!t || !p) rc = bn_err(err, "out of memory for %s", e->name);
    else {
        bn_synth_ternary(s, e->canon, e->rows, e->cols, t, &e[1].scale); /* e[1] is its weight_scale */
        bn_hf_pack_rows(t, e->rows, e->cols, p);
        rc = bn_atomic_write(f, p, n / 4, err);
    }
    free(t);
    free(p);
    return rc;
}

static int write_tensor(const bn_synth *s, bn_atomic_file *f, st_entry *e, bn_error *err)
{
    switch (e->src) {
    case S_EMBD: return write_embedding(s, f, e, err);
    case S_NORM: {
        float *w = malloc(e->cols * sizeof *w);
        if (!w) return bn_err(err, "out of memory");
        bn_synth_norm(s, e->canon, e->cols, w);
        int rc = write_bf16(f, w, e->cols, err);
        free(w);
        return rc;
    }
    case S_SCALE: return write_bf16(f, &e->scale, 1, err); /* set by its weight, written before it */
    default: return write_linear(s, f, e, err);
    }
}

static int write_shard(const bn_synth *s, plan *p, int k, const char *path, bn_error *err)
{
    size_t hlen;
    char *header = shard_header(p, k, &hlen);
    if (!header) return bn_err(err, "%s: out of memory building the header", path);
    uint8_t lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    bn_atomic_file f;
    int rc = bn_atomic_open(&f, path, err);
    if (rc) {
        free(header);
        return -1;
    }
    rc = bn_atomic_write(&f, lenbuf, 8, err) || bn_atomic_write(&f, header, hlen, err);
    free(header);
    for (size_t i = 0; i < p->n && !rc; i++) {
        st_entry *e = &p->e[i];
        if (e->shard != k) continue;
        rc = write_tensor(s, &f, e, err);
        /* The header promised exactly these offsets: a mismatch is a bug here, not bad input. */
        if (!rc && f.off != 8 + hlen + e->offset + e->nbytes)
            rc = bn_err(err, "%s: tensor %s: wrote %llu bytes, header says %llu", path, e->name,
                        (unsigned long long)f.off, (unsigned long long)(8 + hlen + e->offset + e->nbytes));
    }
    if (rc) {
        bn_atomic_abort(&f);
        return -1;
    }
    return bn_atomic_commit(&f, err);
}

static int write_index(const plan *p, int shards, const char *dir, bn_error *err)
{
    json_t *map = json_object();
    uint64_t total = 0;
    for (size_t i = 0; map && i < p->n; i++) {
        char *name = shard_name(p->e[i].shard, shards);
        if (!name || json_object_set_new(map, p->e[i].name, json_string(name))) {
            free(name);
            json_decref(map);
            return bn_err(err, "out of memory");
        }
        free(name);
        total += p->e[i].nbytes;
    }
    json_t *root = map ? json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total, "weight_map", map) : NULL;
    return write_json_in(dir, "model.safetensors.index.json", root, JSON_INDENT(2) | JSON_SORT_KEYS, err);
}

static int write_weights(const bn_synth *s, int latent, int shards, const char *dir, bn_error *err)
{
    plan p = {0};
    int rc = build_plan(&s->cfg, latent, &p, err) || assign_shards(&p, shards, err);
    for (int k = 0; k < shards && !rc; k++) {
        char *name = shard_name(k, shards), *path = name ? bn_path_join(dir, name) : NULL;
        rc = path ? write_shard(s, &p, k, path, err) : bn_err(err, "out of memory");
        free(name);
        free(path);
    }
    if (!rc && shards > 1) rc = write_index(&p, shards, dir, err);
    free(p.e);
    if (rc) return -1;
    /* A reader prefers model.safetensors over an index: remove the other form's entry point so
     * that a directory rewritten in a new form is read in that form. */
    char *stale = bn_path_join(dir, shards > 1 ? "model.safetensors" : "model.safetensors.index.json");
    if (!stale) return bn_err(err, "out of memory");
    int bad = unlink(stale) != 0 && errno != ENOENT;
    free(stale);
    return bad ? bn_err(err, "%s: cannot remove the stale %s: %s", dir,
                        shards > 1 ? "model.safetensors" : "model.safetensors.index.json", strerror(errno))
               : 0;
}

int bn_hf_write_synth(const bn_synth *s, const bn_vocab *v, const char *dir, int latent, int shards, bn_error *err)
{
    if (shards < 1 || shards > 99999) return bn_err(err, "%s: %d shards is out of range", dir, shards);
    if (v->n_tokens > s->cfg.n_vocab)
        return bn_err(err, "%s: vocabulary of %u tokens exceeds n_vocab %u", dir, v->n_tokens, s->cfg.n_vocab);
    if (mkdir(dir, 0755) != 0 && !(errno == EEXIST && bn_is_dir(dir)))
        return bn_err(err, "%s: cannot create directory: %s", dir, strerror(errno));
    char *tok = bn_path_join(dir, "tokenizer.json");
    if (!tok) return bn_err(err, "out of memory");
    int rc = write_config(&s->cfg, latent, dir, err) || bn_vocab_write_hf_json(v, tok, err) ||
             write_tokenizer_config(v, &s->cfg, dir, err) || write_weights(s, latent, shards, dir, err);
    free(tok);
    return rc ? -1 : 0;
}
