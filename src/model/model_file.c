/* Opening a packed model: map it, validate every header field and directory entry against
 * the file size and the config (the file is untrusted input), resolve the tensors the forward
 * pass needs. Tensor data is never read here, so opening a 2B model costs milliseconds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "base/checked.h"
#include "base/file.h"
#include "model/model.h"
#include "model/model_format.h"
#include "model/model_tokenizer.h"
#include "model/model_write.h"
#include "model/tensor_table.h"

int bn_config_validate(const bn_config *c, bn_error *err)
{
    if (!c->n_embd || c->n_embd > 65536) return bn_err(err, "n_embd %u out of range (1..65536)", c->n_embd);
    if (!c->n_layer || c->n_layer > 1024) return bn_err(err, "n_layer %u out of range (1..1024)", c->n_layer);
    if (!c->n_head || c->n_head > c->n_embd) return bn_err(err, "n_head %u out of range (1..n_embd)", c->n_head);
    /* head_dim is its own field (96, 100, 128, 256 occur), but every family has
     * n_head * head_dim == n_embd, which the attention's output projection relies on. */
    if (!c->head_dim || c->head_dim % 2 || (uint64_t)c->n_head * c->head_dim != c->n_embd)
        return bn_err(err, "n_head %u x head_dim %u must equal n_embd %u with head_dim even", c->n_head,
                      c->head_dim, c->n_embd);
    if (!c->n_head_kv || c->n_head % c->n_head_kv)
        return bn_err(err, "n_head_kv %u does not divide n_head %u", c->n_head_kv, c->n_head);
    if (!c->n_ff || c->n_ff > 262144) return bn_err(err, "n_ff %u out of range (1..262144)", c->n_ff);
    if (!c->n_vocab || c->n_vocab > (1u << 24)) return bn_err(err, "n_vocab %u out of range", c->n_vocab);
    if (!c->n_ctx_max || c->n_ctx_max > (1u << 20)) return bn_err(err, "n_ctx_max %u out of range", c->n_ctx_max);
    if (!isfinite(c->rope_theta) || !(c->rope_theta > 0)) return bn_err(err, "rope_theta %g is not positive", c->rope_theta);
    if (!isfinite(c->norm_eps) || !(c->norm_eps > 0) || c->norm_eps >= 1) return bn_err(err, "norm_eps %g out of range", c->norm_eps);
    if (c->act != BN_ACT_RELU2 && c->act != BN_ACT_SILU) return bn_err(err, "unknown activation %u", c->act);
    if (c->tied > 1 || c->no_sub_norms > 1)
        return bn_err(err, "tied %u / no_sub_norms %u must be 0 or 1", c->tied, c->no_sub_norms);
    const int32_t ids[3] = {c->bos, c->eos, c->eot};
    static const char *names[3] = {"bos", "eos", "eot"};
    for (int i = 0; i < 3; i++)
        if (ids[i] < -1 || ids[i] >= (int32_t)c->n_vocab) return bn_err(err, "%s id %d outside the vocabulary", names[i], ids[i]);
    return 0;
}

static int dtype_bytes(uint32_t dt, bn_tern_fmt fmt, uint64_t rows, uint64_t cols, uint64_t *out)
{
    uint64_t n;
    if (!bn_mul_ok(rows, cols, &n) || rows > (1ull << 32) || cols > (1ull << 32)) return -1;
    switch (dt) {
    case BN_DT_F32: return bn_mul_ok(n, 4, out) ? 0 : -1;
    case BN_DT_F16: return bn_mul_ok(n, 2, out) ? 0 : -1;
    case BN_DT_I8: *out = n; return 0;
    case BN_DT_TERN_I2:
    case BN_DT_TERN_T5:
        if ((dt == BN_DT_TERN_I2) != (fmt == BN_TERN_I2)) return -1;
        *out = bn_tern_packed_size(fmt, rows, cols);
        return 0;
    }
    return -1;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(((const bn_tensor *)a)->name, ((const bn_tensor *)b)->name);
}

static int read_entries(bn_model *m, const bn_file_header *h, bn_error *err)
{
    const uint8_t *base = m->map;
    const char *f = m->path;
    m->tensors = calloc(h->n_tensors ? h->n_tensors : 1, sizeof *m->tensors);
    if (!m->tensors) return bn_err(err, "%s: out of memory", f);
    for (uint32_t i = 0; i < h->n_tensors; i++) {
        bn_tensor_entry e;
        memcpy(&e, base + h->tensors_offset + (uint64_t)i * sizeof e, sizeof e);
        const char *name = (const char *)(base + h->tensors_offset + (uint64_t)i * sizeof e);
        if (!memchr(e.name, 0, sizeof e.name) || !e.name[0])
            return bn_err(err, "%s: tensor entry %u: name is empty or not NUL-terminated", f, i);
        uint64_t want;
        if (dtype_bytes(e.dtype, m->tern_fmt, e.rows, e.cols, &want) != 0)
            return bn_err(err, "%s: tensor '%s': dtype %u with shape %llux%llu is unsupported in this file", f, name,
                          e.dtype, (unsigned long long)e.rows, (unsigned long long)e.cols);
        if (e.nbytes != want)
            return bn_err(err, "%s: tensor '%s': nbytes %llu but its shape needs %llu", f, name,
                          (unsigned long long)e.nbytes, (unsigned long long)want);
        if (e.offset < h->data_offset || e.offset % BN_TENSOR_ALIGN || !bn_range_ok(e.offset, e.nbytes, m->map_len))
            return bn_err(err, "%s: tensor '%s': data [%llu, +%llu) is misaligned or outside the data region", f, name,
                          (unsigned long long)e.offset, (unsigned long long)e.nbytes);
        if ((e.dtype == BN_DT_TERN_I2 || e.dtype == BN_DT_TERN_T5) && (!isfinite(e.scale) || !(e.scale > 0)))
            return bn_err(err, "%s: tensor '%s': weight scale %g is not a positive finite number", f, name, e.scale);
        m->tensors[i] = (bn_tensor){name, e.dtype, e.rows, e.cols, e.scale, base + e.offset, e.nbytes, e.checksum};
    }
    m->n_tensors = h->n_tensors;
    /* Duplicates: sort a copy by name (O(n log n) even for hostile directories). */
    bn_tensor *sorted = malloc((h->n_tensors ? h->n_tensors : 1) * sizeof *sorted);
    if (!sorted) return bn_err(err, "%s: out of memory", f);
    memcpy(sorted, m->tensors, h->n_tensors * sizeof *sorted);
    qsort(sorted, h->n_tensors, sizeof *sorted, name_cmp);
    for (uint32_t i = 1; i < h->n_tensors; i++)
        if (!strcmp(sorted[i - 1].name, sorted[i].name)) {
            int rc = bn_err(err, "%s: tensor '%s' appears twice in the directory", f, sorted[i].name);
            free(sorted);
            return rc;
        }
    free(sorted);
    return 0;
}

const bn_tensor *bn_model_tensor(const bn_model *m, const char *name)
{
    for (uint32_t i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

static const char *dtype_name(uint32_t dt)
{
    return dt == BN_DT_F32 ? "f32" : dt == BN_DT_F16 ? "f16" : dt == BN_DT_I8 ? "int8" : "?";
}

/* Finds a required tensor and checks its type and shape. */
static const bn_tensor *need(const bn_model *m, const char *name, int ternary, uint32_t dtype, uint64_t rows,
                             uint64_t cols, bn_error *err)
{
    const bn_tensor *t = bn_model_tensor(m, name);
    if (!t) {
        bn_err(err, "%s: tensor '%s' is missing", m->path, name);
        return NULL;
    }
    int type_ok = ternary ? (t->dtype == BN_DT_TERN_I2 || t->dtype == BN_DT_TERN_T5) : t->dtype == dtype;
    if (!type_ok || t->rows != rows || t->cols != cols) {
        bn_err(err, "%s: tensor '%s': dtype %u shape %llux%llu, expected %s shape %llux%llu", m->path, name, t->dtype,
               (unsigned long long)t->rows, (unsigned long long)t->cols, ternary ? "ternary" : dtype_name(dtype),
               (unsigned long long)rows, (unsigned long long)cols);
        return NULL;
    }
    return t;
}

#define NEED_F32(name, n) ((t = need(m, name, 0, BN_DT_F32, 1, n, err)) ? (const float *)t->data : NULL)

/* Stores table row d's tensor in its bn_layer_weights field. */
static void set_layer_weight(bn_layer_weights *w, enum bn_layer_tensor id, const bn_tensor *t)
{
    switch (id) {
    case BN_LT_ATTN_NORM: w->attn_norm = t->data; break;
    case BN_LT_ATTN_Q: w->wq = t; break;
    case BN_LT_ATTN_K: w->wk = t; break;
    case BN_LT_ATTN_V: w->wv = t; break;
    case BN_LT_ATTN_SUB_NORM: w->attn_sub_norm = t->data; break;
    case BN_LT_ATTN_OUTPUT: w->wo = t; break;
    case BN_LT_FFN_NORM: w->ffn_norm = t->data; break;
    case BN_LT_FFN_GATE: w->wgate = t; break;
    case BN_LT_FFN_UP: w->wup = t; break;
    case BN_LT_FFN_SUB_NORM: w->ffn_sub_norm = t->data; break;
    case BN_LT_FFN_DOWN: w->wdown = t; break;
    case BN_LT_COUNT: break;
    }
}

/* A sub-norm the header flags say is absent, or one of the pair missing, names the tensor. */
static int check_sub_norm(const bn_model *m, uint32_t l, const bn_layer_tensor_def *d, bn_error *err)
{
    char n[BN_NAME_MAX], other[BN_NAME_MAX];
    bn_layer_tensor_name(n, sizeof n, l, d->canon);
    int has = bn_model_tensor(m, n) != NULL;
    if (m->cfg.no_sub_norms)
        return has ? bn_err(err, "%s: tensor '%s' is present but header flags say NO_SUB_NORMS", m->path, n) : 0;
    const bn_layer_tensor_def *o = &bn_layer_tensors[d->id == BN_LT_ATTN_SUB_NORM ? BN_LT_FFN_SUB_NORM : BN_LT_ATTN_SUB_NORM];
    bn_layer_tensor_name(other, sizeof other, l, o->canon);
    if (!has && bn_model_tensor(m, other))
        return bn_err(err, "%s: tensor '%s' is missing although '%s' is present (sub-norms come in pairs)", m->path,
                      n, other);
    return 0;
}

static int resolve_layer(bn_model *m, uint32_t l, bn_error *err)
{
    const bn_config *c = &m->cfg;
    for (int i = 0; i < BN_LT_COUNT; i++) {
        const bn_layer_tensor_def *d = &bn_layer_tensors[i];
        if (d->sub_norm && check_sub_norm(m, l, d, err) != 0) return -1;
        if (!bn_layer_tensor_present(c, d)) continue;
        char n[BN_NAME_MAX];
        uint64_t rows, cols;
        bn_layer_tensor_name(n, sizeof n, l, d->canon);
        bn_layer_tensor_shape(c, d, &rows, &cols);
        const bn_tensor *t = need(m, n, d->ternary, BN_DT_F32, rows, cols, err);
        if (!t) return -1;
        set_layer_weight(&m->layers[l], d->id, t);
    }
    return 0;
}

/* The int8 head's 2-bit planes and their stage bounds (1.3): all three or none, and only with
 * output_q8's screen bounds, whose last stage they lead up to. The planes hold n_vocab rows up
 * to whole tiles, so that read_entries' rows x cols check is the exact bn_u2_size. */
static int resolve_planes(bn_model *m, bn_error *err)
{
    static const char *names[3] = {"output_q8.planes", "output_q8.planes.err", "output_q8.planes.norm"};
    const bn_tensor *t[3];
    int present = -1;
    for (int i = 3; i-- > 0;)
        if ((t[i] = bn_model_tensor(m, names[i]))) present = i;
    if (present < 0) return 0;
    for (int i = 0; i < 3; i++)
        if (!t[i])
            return bn_err(err, "%s: tensor '%s' is missing although '%s' is present (the planes and their bounds come together)",
                          m->path, names[i], names[present]);
    if (!m->lm_head_i8_err)
        return bn_err(err, "%s: tensor '%s' is present without output_q8 and its bounds output_q8.err/.norm", m->path,
                      names[0]);
    uint64_t V = m->cfg.n_vocab, cols = bn_u2_cols_padded(m->cfg.n_embd);
    if (!need(m, names[0], 0, BN_DT_I8, bn_u2_size(V, cols) / cols, cols, err) ||
        !need(m, names[1], 0, BN_DT_F32, 3, V, err) || !need(m, names[2], 0, BN_DT_F32, 3, V, err))
        return -1;
    m->lm_head_planes = t[0]->data;
    m->lm_head_planes_cols = (uint32_t)cols;
    for (int j = 0; j < 3; j++) {
        m->lm_head_plane_err[j] = (const float *)t[1]->data + j * V;
        m->lm_head_plane_norm[j] = (const float *)t[2]->data + j * V;
    }
    return 0;
}

static int resolve(bn_model *m, bn_error *err)
{
    const bn_config *c = &m->cfg;
    const bn_tensor *t;
    if (!(t = need(m, "token_embd", 0, BN_DT_F16, c->n_vocab, c->n_embd, err))) return -1;
    m->tok_embd = m->lm_head_f16 = t->data;
    if (!c->tied) {
        if (!(t = need(m, "output", 0, BN_DT_F16, c->n_vocab, c->n_embd, err))) return -1;
        m->lm_head_f16 = t->data;
    } else if (bn_model_tensor(m, "output")) {
        return bn_err(err, "%s: tensor 'output' is present but the model is tied (lm_head = token_embd)", m->path);
    }
    if (!(m->output_norm = NEED_F32("output_norm", c->n_embd))) return -1;
    if (bn_model_tensor(m, "output_q8")) {
        uint64_t dp = bn_align_up(c->n_embd, 64);
        if (!(t = need(m, "output_q8", 0, BN_DT_I8, c->n_vocab, dp, err))) return -1;
        m->lm_head_i8 = t->data;
        m->lm_head_cols_padded = (uint32_t)dp;
        if (!(m->lm_head_i8_scale = NEED_F32("output_q8.scale", c->n_vocab))) return -1;
        /* the screen's bounds (1.1): both or neither; an older file simply has no screen */
        if (bn_model_tensor(m, "output_q8.err") || bn_model_tensor(m, "output_q8.norm")) {
            if (!(m->lm_head_i8_err = NEED_F32("output_q8.err", c->n_vocab))) return -1;
            if (!(m->lm_head_i8_norm = NEED_F32("output_q8.norm", c->n_vocab))) return -1;
        }
    }
    if (resolve_planes(m, err) != 0) return -1;
    m->layers = calloc(c->n_layer, sizeof *m->layers);
    if (!m->layers) return bn_err(err, "%s: out of memory", m->path);
    for (uint32_t l = 0; l < c->n_layer; l++)
        if (resolve_layer(m, l, err) != 0) return -1;
    return 0;
}

static int check_header(bn_model *m, bn_file_header *h, bn_error *err)
{
    const char *f = m->path;
    if (m->map_len < sizeof *h) return bn_err(err, "%s: %zu bytes is too short for a packed model header", f, m->map_len);
    memcpy(h, m->map, sizeof *h);
    if (memcmp(h->magic, BN_FILE_MAGIC, 8)) return bn_err(err, "%s: magic: not a packed bitnetd model", f);
    if (h->version_major != BN_FILE_VERSION_MAJOR)
        return bn_err(err, "%s: version: file format %u.%u is not supported (this build reads %u.x)", f,
                      h->version_major, h->version_minor, BN_FILE_VERSION_MAJOR);
    if (h->file_size != m->map_len)
        return bn_err(err, "%s: file_size: header says %llu bytes but the file has %zu (truncated or padded?)", f,
                      (unsigned long long)h->file_size, m->map_len);
    if (h->data_offset > m->map_len || h->data_offset < sizeof *h)
        return bn_err(err, "%s: data_offset %llu is outside the file", f, (unsigned long long)h->data_offset);
    bn_file_header zeroed = *h;
    zeroed.header_checksum = 0;
    XXH3_state_t *st = XXH3_createState();
    if (!st) return bn_err(err, "%s: out of memory", f);
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, &zeroed, sizeof zeroed);
    XXH3_64bits_update(st, (const uint8_t *)m->map + sizeof zeroed, h->data_offset - sizeof zeroed);
    uint64_t sum = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    if (sum != h->header_checksum) return bn_err(err, "%s: header_checksum mismatch: the metadata is corrupt", f);
    uint64_t dir_bytes;
    if (h->tensor_entry_size != sizeof(bn_tensor_entry) || !bn_mul_ok(h->n_tensors, sizeof(bn_tensor_entry), &dir_bytes) ||
        !bn_range_ok(h->tensors_offset, dir_bytes, h->data_offset))
        return bn_err(err, "%s: tensors_offset/n_tensors: directory does not fit before the data", f);
    if (!bn_range_ok(h->tokenizer_offset, h->tokenizer_size, h->data_offset))
        return bn_err(err, "%s: tokenizer_offset/size: section outside the metadata region", f);
    if (!bn_range_ok(h->source_offset, h->source_size, h->data_offset) || h->source_size == 0 ||
        ((const char *)m->map)[h->source_offset + h->source_size - 1] != 0)
        return bn_err(err, "%s: source_offset/size: provenance text outside the metadata region or unterminated", f);
    if (h->tern_fmt != BN_TERN_I2 && h->tern_fmt != BN_TERN_T5) return bn_err(err, "%s: tern_fmt %u is unknown", f, h->tern_fmt);
    /* 1.0/1.1 wrote 0 here (reserved); a bit this build does not know changes the meaning */
    if (h->flags & ~BN_FILE_FLAGS_KNOWN)
        return bn_err(err, "%s: flags 0x%x: unknown bits 0x%x (written by a newer bitnetd?)", f, h->flags,
                      h->flags & ~BN_FILE_FLAGS_KNOWN);
    return 0;
}

static void config_from_disk(bn_config *c, const bn_file_header *h)
{
    const bn_disk_hparams *hp = &h->hp;
    *c = (bn_config){hp->n_embd, hp->n_layer, hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_ff, hp->n_vocab,
                     hp->n_ctx_max, hp->rope_theta, hp->norm_eps, hp->act, hp->tied, hp->bos, hp->eos, hp->eot,
                     (h->flags & BN_FILE_FLAG_NO_SUB_NORMS) != 0};
}

static int open_mapped(bn_model *m, bn_error *err)
{
    bn_file_header h;
    if (check_header(m, &h, err) != 0) return -1;
    m->version_major = h.version_major;
    m->version_minor = h.version_minor;
    m->tern_fmt = (bn_tern_fmt)h.tern_fmt;
    config_from_disk(&m->cfg, &h);
    if (h.hp.rope_type != 1) return bn_err(err, "%s: rope_type %u is unknown (1 = NeoX)", m->path, h.hp.rope_type);
    if (bn_config_validate(&m->cfg, err) != 0) return bn_err_prefix(err, "%s: hparams", m->path);
    if (read_entries(m, &h, err) != 0 || resolve(m, err) != 0) return -1;
    if (bn_tok_section_read((const uint8_t *)m->map + h.tokenizer_offset, h.tokenizer_size, m->path, &m->vocab, err))
        return -1;
    if (m->vocab->n_tokens > m->cfg.n_vocab)
        return bn_err(err, "%s: tokenizer has %u tokens, more than n_vocab %u", m->path, m->vocab->n_tokens, m->cfg.n_vocab);
    if (!(m->source = strdup((const char *)m->map + h.source_offset))) return bn_err(err, "%s: out of memory", m->path);
    return 0;
}

/* The one open path: m takes the region [data, data+len), unmapping it at close iff owns. */
static int open_region(const char *name, void *data, size_t len, int owns, bn_model **out, bn_error *err)
{
    *out = NULL;
    bn_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(name))) {
        free(m);
        bn_mapping map = {data, len};
        if (owns) bn_unmap(&map);
        return bn_err(err, "%s: out of memory", name);
    }
    m->map = data;
    m->map_len = len;
    m->owns_map = owns;
    if ((uintptr_t)data % BN_TENSOR_ALIGN) {
        bn_model_close(m);
        return bn_err(err, "%s: the model's memory is not %d-byte aligned", name, BN_TENSOR_ALIGN);
    }
    if (open_mapped(m, err) != 0) {
        bn_model_close(m);
        return -1;
    }
    *out = m;
    return 0;
}

int bn_model_open(const char *path, bn_model **out, bn_error *err)
{
    *out = NULL;
    bn_mapping map;
    if (bn_map_file(path, &map, err) != 0) return -1;
    return open_region(path, map.data, map.len, 1, out, err);
}

int bn_model_load(const char *path, bn_model **out, bn_error *err)
{
    *out = NULL;
    bn_mapping map;
    if (bn_copy_file(path, &map, err) != 0) return -1;
    return open_region(path, map.data, map.len, 1, out, err);
}

int bn_model_open_region(const char *name, const void *data, size_t len, bn_model **out, bn_error *err)
{
    /* Never written through: the model only reads its mapping. */
    return open_region(name, (void *)data, len, 0, out, err);
}

void bn_model_close(bn_model *m)
{
    if (!m) return;
    bn_mapping map = {m->map, m->map_len};
    if (m->owns_map) bn_unmap(&map);
    free(m->tensors);
    free(m->layers);
    bn_vocab_free(m->vocab);
    free(m->source);
    free(m->path);
    free(m);
}

int bn_model_verify(const bn_model *m, bn_error *err)
{
    /* The header checksum was verified at open; here every tensor's data is read. */
    for (uint32_t i = 0; i < m->n_tensors; i++) {
        const bn_tensor *t = &m->tensors[i];
        if (XXH3_64bits(t->data, t->nbytes) != t->checksum)
            return bn_err(err, "%s: tensor '%s': checksum mismatch: data is corrupt", m->path, t->name);
    }
    return 0;
}
