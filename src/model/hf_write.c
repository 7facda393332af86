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
#include "model/family.h"
#include "model/safetensors.h"
#include "model/tensor_table.h"
#include "text/spm_model.h"

/* The chat template of microsoft/bitnet-b1.58-2B-4T's tokenizer_config.json (model facts 5). */
static const char bitnet_chat_template[] =
    "{% for message in messages %}{{ message['role'] | capitalize + ': ' + message['content'] | trim + "
    "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}";

/* Meta-Llama-3-8B-Instruct's template (what HF1BitLLM's card loads). */
static const char llama3_chat_template[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/* Falcon3's format as the fork renders it (facts s.3; the HF template itself was not read). */
static const char falcon3_chat_template[] =
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}";

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

/* Llama-3: Meta's Split + ByteLevel. Falcon3: tiiuae's Punctuation, ByteLevel, single Digits
 * sequence (the shape source_hf reads as BN_PRE_FALCON3). Otherwise GPT-2's ByteLevel split. */
static json_t *pre_tokenizer_json(uint32_t pre)
{
    if (pre == BN_PRE_FALCON3)
        return json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:b, s:b, s:b}, {s:s, s:b}]}", "type", "Sequence", "pretokenizers",
                         "type", "Punctuation", "behavior", "Contiguous", "type", "ByteLevel", "add_prefix_space", 0,
                         "trim_offsets", 1, "use_regex", 1, "type", "Digits", "individual_digits", 1);
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
    if (v->model != BN_TOKM_BPE) return bn_err(err, "%s: only byte-level BPE vocabularies are written as tokenizer.json", path);
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

/* JSON objects built key by key: set() records any failure (out of memory) in *bad. */
static void set(json_t *o, const char *key, json_t *value, int *bad)
{
    if (!o || !value) {
        json_decref(value);
        *bad = 1;
    } else if (json_object_set_new(o, key, value)) { /* consumes value either way */
        *bad = 1;
    }
}

/* The chat template a tokenizer_config.json of this vocabulary carries: the vocabulary's own
 * text, else the family's format (NULL for base models without one). */
static const char *chat_template_of(const bn_vocab *v, const bn_family_info *fam)
{
    if (v->chat_template) return v->chat_template;
    uint32_t chat = fam->id == BN_FAM_BITNET ? v->chat : fam->chat;
    return chat == BN_CHAT_LLAMA3 ? llama3_chat_template : chat == BN_CHAT_FALCON3 ? falcon3_chat_template
           : chat == BN_CHAT_NONE ? NULL : bitnet_chat_template;
}

static int write_tokenizer_config(const bn_vocab *v, const bn_synth *s, const bn_family_info *fam, const char *dir,
                                  bn_error *err)
{
    const bn_config *c = &s->cfg;
    int spm = v->model == BN_TOKM_SPM, bad = 0;
    json_t *root = json_object();
    /* add_bos_token is the prompt's BOS rule (cfg.bos = -1: none, as Falcon3). */
    set(root, "add_bos_token", json_boolean(c->bos >= 0), &bad);
    set(root, "add_eos_token", json_false(), &bad);
    set(root, "bos_token", token_json(v, v->bos), &bad);
    const char *tmpl = chat_template_of(v, fam);
    if (tmpl) set(root, "chat_template", json_string(tmpl), &bad);
    set(root, "clean_up_tokenization_spaces", json_boolean(!spm), &bad);
    set(root, "eos_token", token_json(v, v->eos), &bad);
    if (spm) set(root, "legacy", json_false(), &bad);
    set(root, "model_input_names", json_pack("[s, s]", "input_ids", "attention_mask"), &bad);
    set(root, "model_max_length", json_integer((json_int_t)c->n_ctx_max), &bad);
    if (v->pad >= 0) set(root, "pad_token", token_json(v, v->pad), &bad);
    if (spm) set(root, "sp_model_kwargs", json_object(), &bad);
    set(root, "tokenizer_class", json_string(!spm ? "PreTrainedTokenizerFast"
                                             : fam->id == BN_FAM_1BITLLM ? "BitnetTokenizer" : "LlamaTokenizer"), &bad);
    for (uint32_t id = 0; spm && id < v->n_tokens; id++)
        if (v->type[id] == BN_TOK_UNKNOWN) {
            set(root, "unk_token", token_json(v, (int32_t)id), &bad);
            break;
        }
    if (bad) {
        json_decref(root);
        return bn_err(err, "tokenizer_config.json: out of memory (or a token that is not UTF-8)");
    }
    return write_json_in(dir, "tokenizer_config.json", root, JSON_INDENT(2), err);
}

/* ---- SentencePiece: tokenizer.model + added_tokens.json ---------------------------------- */

/* Removes dir/name if present: a directory rewritten with another tokenizer kind must not keep
 * the old one (the reader prefers tokenizer.json). */
static int remove_stale(const char *dir, const char *name, bn_error *err)
{
    char *p = bn_path_join(dir, name);
    if (!p) return bn_err(err, "out of memory");
    int bad = unlink(p) != 0 && errno != ENOENT;
    free(p);
    return bad ? bn_err(err, "%s: cannot remove the stale %s: %s", dir, name, strerror(errno)) : 0;
}

/* tokenizer.model (the pieces) + added_tokens.json (the trailing USER_DEFINED tokens, as
 * 1bitLLM's <pad> and </line>), split as spm_model.h's bn_spm_model_write_hf() does. */
static int write_spm_files(const bn_vocab *v, const char *dir, bn_error *err)
{
    uint8_t *model = NULL;
    char *added = NULL;
    size_t mlen = 0, alen = 0;
    if (bn_spm_model_write_hf(v, &model, &mlen, &added, &alen, err)) return -1;
    char *mp = bn_path_join(dir, "tokenizer.model"), *ap = bn_path_join(dir, "added_tokens.json");
    int rc = !mp || !ap ? bn_err(err, "out of memory") : write_file(mp, (const char *)model, mlen, err);
    if (!rc) rc = added ? write_file(ap, added, alen, err) : remove_stale(dir, "added_tokens.json", err);
    free(mp);
    free(ap);
    free(model);
    free(added);
    return rc;
}

static int write_tokenizer(const bn_vocab *v, const bn_synth *s, const bn_family_info *fam, const char *dir,
                           bn_error *err)
{
    int rc;
    if (v->model == BN_TOKM_SPM) {
        rc = write_spm_files(v, dir, err) || remove_stale(dir, "tokenizer.json", err);
    } else {
        char *tok = bn_path_join(dir, "tokenizer.json");
        rc = !tok ? bn_err(err, "out of memory")
                  : bn_vocab_write_hf_json(v, tok, err) || remove_stale(dir, "tokenizer.model", err) ||
                        remove_stale(dir, "added_tokens.json", err);
        free(tok);
    }
    return rc || write_tokenizer_config(v, s, fam, dir, err) ? -1 : 0;
}

/* ---- config.json, generation_config.json -------------------------------------------------- */

static json_t *id_or_null(int32_t id) { return id >= 0 ? json_integer(id) : json_null(); }

/* quantization_config as each family's checkpoints state it; latent forms say online (for
 * Llama/Falcon with autobitlinear: transformers runs only that class online). */
static json_t *quant_json(const bn_family_info *fam, int latent)
{
    if (fam->hf_weights == BN_HFW_LATENT) return NULL;
    if (fam->hf_weights == BN_HFW_PACKED_MUL)
        return json_pack("{s:s, s:s, s:s}", "linear_class", "autobitlinear", "quant_method", "bitnet",
                         "quantization_mode", latent ? "online" : "offline");
    json_t *q = json_pack("{s:o, s:s}", "modules_to_not_convert",
                          fam->id == BN_FAM_LLAMA3 ? json_null() : json_pack("[s]", "lm_head"), "quant_method", "bitnet");
    if (q && latent && (json_object_set_new(q, "linear_class", json_string("autobitlinear")) ||
                        json_object_set_new(q, "quantization_mode", json_string("online")))) {
        json_decref(q);
        return NULL;
    }
    return q;
}

static int write_config(const bn_synth *s, const bn_vocab *v, const bn_family_info *fam, enum bn_hf_form form,
                        const char *dir, bn_error *err)
{
    const bn_config *c = &s->cfg;
    int llama = fam->hf_weights == BN_HFW_PACKED_DIV, bad = 0;
    json_t *r = json_object();
    set(r, "architectures", json_pack("[s]", fam->hf_arch), &bad);
    set(r, "attention_bias", json_false(), &bad);
    set(r, "attention_dropout", json_real(0.0), &bad);
    set(r, "bos_token_id", id_or_null(c->bos), &bad);
    set(r, "eos_token_id", id_or_null(c->eos), &bad);
    if (llama) set(r, "head_dim", json_integer(c->head_dim), &bad);
    set(r, "hidden_act", json_string(c->act == BN_ACT_SILU ? "silu" : "relu2"), &bad);
    set(r, "hidden_size", json_integer(c->n_embd), &bad);
    set(r, "initializer_range", json_real(0.02), &bad);
    if (fam->hf_weights == BN_HFW_LATENT) set(r, "input_bits", json_integer(8), &bad);
    set(r, "intermediate_size", json_integer(c->n_ff), &bad);
    if (llama) set(r, "is_bitnet_config", json_true(), &bad);
    set(r, "max_position_embeddings", json_integer(c->n_ctx_max), &bad);
    if (llama) set(r, "mlp_bias", json_false(), &bad);
    set(r, "model_type", json_string(fam->hf_model_type), &bad);
    set(r, "num_attention_heads", json_integer(c->n_head), &bad);
    set(r, "num_hidden_layers", json_integer(c->n_layer), &bad);
    set(r, "num_key_value_heads", json_integer(c->n_head_kv), &bad);
    if (fam->hf_weights == BN_HFW_LATENT && v->pad >= 0) set(r, "pad_token_id", json_integer(v->pad), &bad);
    if (fam->id != BN_FAM_BITNET) set(r, "pretraining_tp", json_integer(1), &bad);
    json_t *q = quant_json(fam, form != BN_HF_NATIVE);
    if (q) set(r, "quantization_config", q, &bad);
    else if (fam->hf_weights != BN_HFW_LATENT) bad = 1;
    set(r, "rms_norm_eps", json_float(c->norm_eps), &bad);
    if (fam->id == BN_FAM_LLAMA3) set(r, "rope_interleaved", json_false(), &bad);
    if (fam->id != BN_FAM_BITNET) set(r, "rope_scaling", json_null(), &bad);
    set(r, "rope_theta", json_float(c->rope_theta), &bad);
    set(r, "tie_word_embeddings", json_boolean(c->tied), &bad);
    set(r, "torch_dtype", json_string(fam->hf_weights == BN_HFW_LATENT ? "float16" : "bfloat16"), &bad);
    set(r, "transformers_version", json_string("4.52.0"), &bad);
    set(r, "use_cache", json_true(), &bad);
    set(r, "vocab_size", json_integer(c->n_vocab), &bad);
    if (fam->hf_weights == BN_HFW_LATENT) set(r, "weight_bits", json_integer(1), &bad);
    if (bad) {
        json_decref(r);
        return bn_err(err, "config.json: out of memory");
    }
    return write_json_in(dir, "config.json", r, JSON_INDENT(2) | JSON_REAL_PRECISION(9), err);
}

/* eos_token_id as [eos, eot] (Llama-3's [128001, 128009] shape) whenever there is an eot, so
 * the reader recovers both exactly. */
static int write_generation_config(const bn_config *c, const char *dir, bn_error *err)
{
    int bad = 0;
    json_t *r = json_object();
    set(r, "_from_model_config", json_true(), &bad);
    set(r, "bos_token_id", id_or_null(c->bos), &bad);
    set(r, "eos_token_id", c->eos >= 0 && c->eot >= 0 ? json_pack("[i, i]", c->eos, c->eot) : id_or_null(c->eos), &bad);
    set(r, "transformers_version", json_string("4.52.0"), &bad);
    if (bad) {
        json_decref(r);
        return bn_err(err, "generation_config.json: out of memory");
    }
    return write_json_in(dir, "generation_config.json", r, JSON_INDENT(2), err);
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
    float scale;             /* S_SCALE: the weight_scale value, set when its weight (the entry before) is written */
} st_entry;

typedef struct plan {
    st_entry *e;
    size_t n;
    int divide;              /* weight_scale = 1 / scale (bitlinear) rather than scale */
} plan;

static void plan_add(plan *p, const char *name, const char *canon, enum src src, uint32_t fdt, uint64_t rows,
                     uint64_t cols)
{
    st_entry *e = &p->e[p->n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    snprintf(e->canon, sizeof e->canon, "%s", canon);
    e->src = src;
    e->rows = rows;
    e->cols = cols;
    e->dtype = src == S_PACKED ? BN_ST_U8 : src == S_SCALE ? BN_ST_BF16 : fdt;
    switch (src) {
    case S_NORM: e->n_dims = 1; e->shape[0] = cols; break;
    case S_SCALE: e->n_dims = 1; e->shape[0] = 1; break;
    case S_PACKED: e->n_dims = 2; e->shape[0] = rows / 4; e->shape[1] = cols; break;
    default: e->n_dims = 2; e->shape[0] = rows; e->shape[1] = cols; break;
    }
    e->nbytes = (e->n_dims == 1 ? e->shape[0] : e->shape[0] * e->shape[1]) * bn_st_dtype_size(e->dtype);
}

static uint32_t float_dtype(enum bn_hf_form form, const bn_family_info *fam)
{
    if (form == BN_HF_F16) return BN_ST_F16;
    if (form == BN_HF_F32 || (form == BN_HF_NATIVE && fam->hf_weights == BN_HFW_LATENT)) return BN_ST_F32;
    return BN_ST_BF16;
}

/* Every tensor in the table's order, weight_scale right after its weight (the writer carries
 * the scale over). */
static int build_plan(const bn_config *c, const bn_family_info *fam, enum bn_hf_form form, plan *p, bn_error *err)
{
    int latent = form != BN_HF_NATIVE || fam->hf_weights == BN_HFW_LATENT;
    uint32_t fdt = float_dtype(form, fam);
    p->divide = fam->hf_weights == BN_HFW_PACKED_DIV;
    p->e = calloc(3 + (size_t)c->n_layer * (BN_LT_COUNT + 7), sizeof *p->e);
    if (!p->e) return bn_err(err, "out of memory");
    plan_add(p, "model.embed_tokens.weight", "token_embd", S_EMBD, fdt, c->n_vocab, c->n_embd);
    for (uint32_t l = 0; l < c->n_layer; l++)
        for (int k = 0; k < BN_LT_COUNT; k++) {
            const bn_layer_tensor_def *d = &bn_layer_tensors[k];
            if (!bn_layer_tensor_present(c, d)) continue;
            const char *stem = d->hf ? d->hf : d->id == BN_LT_ATTN_SUB_NORM ? fam->hf_attn_sub_norm : fam->hf_ffn_sub_norm;
            if (!stem) return bn_err(err, "family %s: its HF form has no %s (sub_norms must be 0)", fam->name, d->canon);
            char name[112], canon[48];
            uint64_t rows, cols;
            bn_layer_tensor_shape(c, d, &rows, &cols);
            snprintf(canon, sizeof canon, "blk.%u.%s", l, d->canon);
            snprintf(name, sizeof name, "model.layers.%u.%s.weight", l, stem);
            if (!d->ternary) {
                plan_add(p, name, canon, S_NORM, fdt, 1, cols);
                continue;
            }
            if (rows % 4 || cols % 16) return bn_err(err, "%s: %llux%llu cannot be packed", canon,
                                                     (unsigned long long)rows, (unsigned long long)cols);
            plan_add(p, name, canon, latent ? S_LATENT : S_PACKED, fdt, rows, cols);
            if (latent) continue;
            snprintf(name, sizeof name, "model.layers.%u.%s.weight_scale", l, stem);
            plan_add(p, name, canon, S_SCALE, fdt, 1, 1);
        }
    plan_add(p, "model.norm.weight", "output_norm", S_NORM, fdt, 1, c->n_embd);
    /* Untied: HF's lm_head.weight, bf16 as the real checkpoints hold it. */
    if (!c->tied) plan_add(p, "lm_head.weight", "output", S_EMBD, form == BN_HF_NATIVE ? BN_ST_BF16 : fdt, c->n_vocab,
                           c->n_embd);
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

/* Floats v[0..n) in dtype (F32, F16 or BF16, little-endian) through a scratch buffer. */
static int write_floats(bn_atomic_file *f, uint32_t dtype, const float *v, size_t n, bn_error *err)
{
    uint8_t buf[8192];
    size_t es = bn_st_dtype_size(dtype), step = sizeof buf / es;
    for (size_t i = 0; i < n; i += step) {
        size_t k = n - i < step ? n - i : step;
        for (size_t j = 0; j < k; j++) {
            uint32_t b = dtype == BN_ST_F32 ? bn_f32_bits(v[i + j])
                         : dtype == BN_ST_F16 ? bn_f32_to_f16(v[i + j]) : bn_f32_to_bf16(v[i + j]);
            for (size_t q = 0; q < es; q++) buf[j * es + q] = (uint8_t)(b >> (8 * q));
        }
        if (bn_atomic_write(f, buf, k * es, err)) return -1;
    }
    return 0;
}

/* token_embd, or the untied head "output" (its own synthetic rows). */
static int write_embedding(const bn_synth *s, bn_atomic_file *f, const st_entry *e, bn_error *err)
{
    float *row = malloc(e->cols * sizeof *row);
    if (!row) return bn_err(err, "out of memory");
    int rc = 0, head = !strcmp(e->canon, "output");
    for (uint64_t r = 0; r < e->rows && !rc; r++) {
        (head ? bn_synth_output_row : bn_synth_embedding_row)(s, (uint32_t)r, row);
        rc = write_floats(f, e->dtype, row, e->cols, err);
    }
    free(row);
    return rc;
}

/* The bf16 weight_scale that reads back as exactly `scale`: b = scale (autobitlinear) or b with
 * 1.0f / b == scale (bitlinear; bn_synth_ternary makes such scales 1.0f / b). */
static int weight_scale_of(const st_entry *e, float scale, int divide, float *ws, bn_error *err)
{
    float b = bn_bf16_to_f32(bn_f32_to_bf16(divide ? 1.0f / scale : scale));
    if ((divide ? 1.0f / b : b) != scale)
        return bn_err(err, "%s: scale %.9g has no bf16 weight_scale that reads back exactly (%s)", e->canon,
                      (double)scale, divide ? "bitlinear: scale must be 1.0f / b, b bf16" : "must be bf16");
    *ws = b;
    return 0;
}

static int write_linear(const bn_synth *s, bn_atomic_file *f, st_entry *e, int divide, bn_error *err)
{
    size_t n = (size_t)(e->rows * e->cols);
    int rc;
    if (e->src == S_LATENT) {
        float *w = malloc(n * sizeof *w);
        if (!w) return bn_err(err, "out of memory for %s", e->name);
        bn_synth_latent(s, e->canon, e->rows, e->cols, w);
        rc = write_floats(f, e->dtype, w, n, err);
        free(w);
        return rc;
    }
    int8_t *t = malloc(n);
    uint8_t *p = malloc(n / 4);
    float scale;
    if (!t || !p) rc = bn_err(err, "out of memory for %s", e->name);
    else {
        bn_synth_ternary(s, e->canon, e->rows, e->cols, t, &scale);
        rc = weight_scale_of(e, scale, divide, &e[1].scale, err); /* e[1] is its weight_scale */
        bn_hf_pack_rows(t, e->rows, e->cols, p);
        if (!rc) rc = bn_atomic_write(f, p, n / 4, err);
    }
    free(t);
    free(p);
    return rc;
}

static int write_tensor(const bn_synth *s, bn_atomic_file *f, st_entry *e, int divide, bn_error *err)
{
    switch (e->src) {
    case S_EMBD: return write_embedding(s, f, e, err);
    case S_NORM: {
        float *w = malloc(e->cols * sizeof *w);
        if (!w) return bn_err(err, "out of memory");
        bn_synth_norm(s, e->canon, e->cols, w);
        int rc = write_floats(f, e->dtype, w, e->cols, err);
        free(w);
        return rc;
    }
    case S_SCALE: return write_floats(f, e->dtype, &e->scale, 1, err); /* set by its weight, written before it */
    default: return write_linear(s, f, e, divide, err);
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
        rc = write_tensor(s, &f, e, p->divide, err);
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

static int write_weights(const bn_synth *s, const bn_family_info *fam, enum bn_hf_form form, int shards,
                         const char *dir, bn_error *err)
{
    plan p = {0};
    int rc = build_plan(&s->cfg, fam, form, &p, err) || assign_shards(&p, shards, err);
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

int bn_hf_form_parse(const char *name)
{
    static const char *const names[] = {"hf", "hf-bf16", "hf-f16", "hf-f32"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) return i;
    return -1;
}

int bn_hf_write_synth_form(const bn_synth *s, const bn_vocab *v, const char *dir, enum bn_hf_form form, int shards,
                           bn_error *err)
{
    const bn_family_info *fam = bn_family_get((enum bn_family)s->family);
    if (!fam) return bn_err(err, "%s: unknown model family %u", dir, s->family);
    if ((unsigned)form > BN_HF_F32) return bn_err(err, "%s: unknown HF form %d", dir, (int)form);
    if (shards < 1 || shards > 99999) return bn_err(err, "%s: %d shards is out of range", dir, shards);
    if (v->n_tokens > s->cfg.n_vocab)
        return bn_err(err, "%s: vocabulary of %u tokens exceeds n_vocab %u", dir, v->n_tokens, s->cfg.n_vocab);
    if (mkdir(dir, 0755) != 0 && !(errno == EEXIST && bn_is_dir(dir)))
        return bn_err(err, "%s: cannot create directory: %s", dir, strerror(errno));
    return write_config(s, v, fam, form, dir, err) || write_generation_config(&s->cfg, dir, err) ||
                   write_tokenizer(v, s, fam, dir, err) || write_weights(s, fam, form, shards, dir, err)
               ? -1 : 0;
}

int bn_hf_write_synth(const bn_synth *s, const bn_vocab *v, const char *dir, int latent, int shards, bn_error *err)
{
    return bn_hf_write_synth_form(s, v, dir, latent ? BN_HF_BF16 : BN_HF_NATIVE, shards, err);
}
