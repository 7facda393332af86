/* Packing a model: plan every tensor (name, type, shape, size) from the config, lay out the
 * file, then pull each tensor from the source, pack it and write it with its checksum. */
#include "config.h"
#include "model/model_write.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "base/checked.h"
#include "base/file.h"
#include "kernels/half.h"
#include "model/model_format.h"
#include "model/model_tokenizer.h"
#include "model/tensor_table.h"
#include "model/ternarize.h"

/* Rows of the embedding converted per band: bounds memory to ~1024 x n_embd floats. */
#define EMBD_BAND_ROWS 1024
static_assert(EMBD_BAND_ROWS % BN_U2_TILE == 0, "the planes are packed in bands of whole tiles");

/* The screen's stages before the full int8 code (planes 0..j read, j < LM_STAGES). */
#define LM_STAGES (BN_U2_PLANES - 1)

enum plan_kind {
    PK_EMBD_F16, PK_NORM_F32, PK_TERNARY, PK_LM_I8, PK_LM_I8_SCALE, PK_LM_I8_ERR, PK_LM_I8_NORM,
    PK_LM_PLANES, PK_LM_PLANES_ERR, PK_LM_PLANES_NORM
};

/* Per-row outputs of the int8 pass, written by the three small tensors after output_q8, and of
 * the planes pass (LM_STAGES x n_vocab each, stage j's row at j * n_vocab), written after the
 * planes. */
typedef struct lm_rows {
    float *scale, *err, *norm;
    float *plane_err, *plane_norm;
} lm_rows;

typedef struct plan_entry {
    char name[BN_NAME_MAX];
    enum plan_kind kind;
    uint32_t dtype;
    uint64_t rows, cols;
    uint64_t nbytes, offset;
    float scale;
    uint64_t checksum;
} plan_entry;

typedef struct plan {
    plan_entry *e;
    uint32_t n, cap;
} plan;

void bn_pack_opts_default(bn_pack_opts *o)
{
    o->tern = BN_TERN_T5;
    o->lm_head_i8 = BN_PACK_LM_PLANES;
    o->progress = NULL;
    o->progress_user = NULL;
}

void bn_layer_tensor_name(char *buf, size_t len, uint32_t layer, const char *kind)
{
    snprintf(buf, len, "blk.%u.%s", layer, kind);
}

static int plan_add(plan *p, const char *name, enum plan_kind kind, uint32_t dtype, uint64_t rows,
                    uint64_t cols, uint64_t nbytes)
{
    if (p->n == p->cap) {
        uint32_t cap = p->cap ? p->cap * 2 : 64;
        plan_entry *e = realloc(p->e, cap * sizeof *e);
        if (!e) return -1;
        p->e = e;
        p->cap = cap;
    }
    plan_entry *x = &p->e[p->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    x->kind = kind;
    x->dtype = dtype;
    x->rows = rows;
    x->cols = cols;
    x->nbytes = nbytes;
    x->scale = 1.0f;
    return 0;
}

/* The layer tensors come from the one table (tensor_table.h), in its order. */
static int build_plan(const bn_config *c, const bn_pack_opts *o, plan *p)
{
    uint64_t V = c->n_vocab, D = c->n_embd, Dp = bn_align_up(D, 64);
    int rc = plan_add(p, "token_embd", PK_EMBD_F16, BN_DT_F16, V, D, V * D * 2);
    if (!c->tied) rc |= plan_add(p, "output", PK_EMBD_F16, BN_DT_F16, V, D, V * D * 2);
    rc |= plan_add(p, "output_norm", PK_NORM_F32, BN_DT_F32, 1, D, D * 4);
    if (o->lm_head_i8 != BN_PACK_LM_F16) {
        rc |= plan_add(p, "output_q8", PK_LM_I8, BN_DT_I8, V, Dp, V * Dp);
        rc |= plan_add(p, "output_q8.scale", PK_LM_I8_SCALE, BN_DT_F32, 1, V, V * 4);
        rc |= plan_add(p, "output_q8.err", PK_LM_I8_ERR, BN_DT_F32, 1, V, V * 4);
        rc |= plan_add(p, "output_q8.norm", PK_LM_I8_NORM, BN_DT_F32, 1, V, V * 4);
    }
    if (o->lm_head_i8 == BN_PACK_LM_PLANES) {
        /* rows: n_vocab up to whole tiles, the rows the planes hold, so that rows x cols is the
         * byte count as for every int8 tensor (a 1.2 reader opens the file and ignores them) */
        uint64_t Dpp = bn_u2_cols_padded(D), bytes = bn_u2_size(V, Dpp);
        rc |= plan_add(p, "output_q8.planes", PK_LM_PLANES, BN_DT_I8, bytes / Dpp, Dpp, bytes);
        rc |= plan_add(p, "output_q8.planes.err", PK_LM_PLANES_ERR, BN_DT_F32, LM_STAGES, V, LM_STAGES * V * 4);
        rc |= plan_add(p, "output_q8.planes.norm", PK_LM_PLANES_NORM, BN_DT_F32, LM_STAGES, V, LM_STAGES * V * 4);
    }
    uint32_t tern_dt = o->tern == BN_TERN_I2 ? BN_DT_TERN_I2 : BN_DT_TERN_T5;
    for (uint32_t l = 0; l < c->n_layer && rc == 0; l++) {
        for (int k = 0; k < BN_LT_COUNT; k++) {
            const bn_layer_tensor_def *d = &bn_layer_tensors[k];
            if (!bn_layer_tensor_present(c, d)) continue;
            char name[BN_NAME_MAX];
            uint64_t rows, cols;
            bn_layer_tensor_name(name, sizeof name, l, d->canon);
            bn_layer_tensor_shape(c, d, &rows, &cols);
            if (d->ternary)
                rc |= plan_add(p, name, PK_TERNARY, tern_dt, rows, cols, bn_tern_packed_size(o->tern, rows, cols));
            else
                rc |= plan_add(p, name, PK_NORM_F32, BN_DT_F32, rows, cols, rows * cols * 4);
        }
    }
    return rc;
}

static uint64_t tensor_align(uint64_t nbytes)
{
    return nbytes >= BN_PAGE_ALIGN_MIN_BYTES ? BN_PAGE_ALIGN : BN_TENSOR_ALIGN;
}

/* Writes data and folds it into the tensor's checksum. */
static int put(bn_atomic_file *f, XXH3_state_t *h, const void *buf, size_t len, bn_error *err)
{
    XXH3_64bits_update(h, buf, len);
    return bn_atomic_write(f, buf, len, err);
}

static int write_norm(bn_source *src, bn_atomic_file *f, XXH3_state_t *h, plan_entry *e, bn_error *err)
{
    float *v = malloc(e->cols * sizeof *v);
    if (!v) return bn_err(err, "out of memory");
    int rc = src->ops->floats(src, e->name, 1, e->cols, 0, 1, v, err);
    for (uint64_t i = 0; rc == 0 && i < e->cols; i++)
        if (!isfinite(v[i])) rc = bn_err(err, "%s: tensor %s: element %llu is not finite", src->path, e->name, (unsigned long long)i);
    if (rc == 0) rc = put(f, h, v, e->cols * sizeof *v, err);
    free(v);
    return rc;
}

static int write_ternary(bn_source *src, bn_atomic_file *f, XXH3_state_t *h, plan_entry *e,
                         bn_tern_fmt fmt, bn_error *err)
{
    int8_t *t = malloc(e->rows * e->cols);
    uint8_t *packed = malloc(e->nbytes);
    int rc = (!t || !packed) ? bn_err(err, "out of memory packing %s", e->name) : 0;
    if (rc == 0) rc = src->ops->ternary(src, e->name, e->rows, e->cols, t, &e->scale, err);
    if (rc == 0) rc = bn_check_scale(e->scale, src->path, e->name, err);
    if (rc == 0) {
        bn_tern_pack(fmt, t, e->rows, e->cols, packed);
        rc = put(f, h, packed, e->nbytes, err);
    }
    free(t);
    free(packed);
    return rc;
}

/* f32 -> f16 for n values; returns the index of a non-finite value, or -1. */
static int64_t to_f16_checked(const float *in, uint16_t *out, uint64_t n)
{
    int64_t bad = -1;
#pragma omp parallel for schedule(static) reduction(max : bad)
    for (uint64_t i = 0; i < n; i++) {
        if (!isfinite(in[i])) bad = (int64_t)i > bad ? (int64_t)i : bad;
        out[i] = bn_f32_to_f16(in[i]);
    }
    return bad;
}

/* The embedding (f16) and, optionally, the int8 lm_head are both derived from the same f16
 * values, streamed in bands of rows; the int8 rows are kept for their own pass below. */
static int write_embd_f16(bn_source *src, bn_atomic_file *f, XXH3_state_t *h, plan_entry *e, bn_error *err)
{
    uint64_t band = EMBD_BAND_ROWS;
    float *rows = malloc(band * e->cols * sizeof *rows);
    uint16_t *half = malloc(band * e->cols * sizeof *half);
    int rc = (!rows || !half) ? bn_err(err, "out of memory") : 0;
    for (uint64_t r0 = 0; rc == 0 && r0 < e->rows; r0 += band) {
        uint64_t n = e->rows - r0 < band ? e->rows - r0 : band;
        rc = src->ops->floats(src, e->name, e->rows, e->cols, r0, n, rows, err);
        int64_t bad = -1;
        if (rc == 0) bad = to_f16_checked(rows, half, n * e->cols);
        if (bad >= 0)
            rc = bn_err(err, "%s: tensor %s: row %llu is not finite", src->path, e->name,
                        (unsigned long long)(r0 + (uint64_t)bad / e->cols));
        if (rc == 0) rc = put(f, h, half, n * e->cols * sizeof *half, err);
    }
    free(rows);
    free(half);
    return rc;
}

/* x rounded up to a float: the stored bounds must never be below the exact values. */
static float f32_up(double x)
{
    float f = (float)x;
    return (double)f >= x ? f : nextafterf(f, INFINITY);
}

/* A bound from its square summed in double, whose rounding (~1e-16 relative) the final
 * round-up to float covers with a margin of one float ulp. */
static float bound_up(double sq) { return f32_up(sqrt(sq) * (1 + 1e-12)); }

/* The screen's bounds of one row (docs/model-format.md). */
static void lm_row_bounds(const float *row, const int8_t *q, float scale, uint64_t D, float *err,
                          float *norm)
{
    double e2 = 0, n2 = 0;
    for (uint64_t i = 0; i < D; i++) {
        double w = (double)q[i] * scale, d = (double)row[i] - w;
        e2 += d * d;
        n2 += w * w;
    }
    *err = bound_up(e2);
    *norm = bound_up(n2);
}

/* The same for the progressive screen's stages j < LM_STAGES of one row, with the stage value
 * v_j(q) (bn_u2_stage_value) in place of the code: err[j * stride], norm[j * stride]. */
static void lm_stage_bounds(const float *row, const int8_t *q, float scale, uint64_t D, float *err,
                            float *norm, size_t stride)
{
    double e2[LM_STAGES] = {0}, n2[LM_STAGES] = {0};
    for (uint64_t i = 0; i < D; i++)
        for (int j = 0; j < LM_STAGES; j++) {
            double w = (double)bn_u2_stage_value(q[i], j) * scale, d = (double)row[i] - w;
            e2[j] += d * d;
            n2[j] += w * w;
        }
    for (int j = 0; j < LM_STAGES; j++) {
        err[j * stride] = bound_up(e2[j]);
        norm[j * stride] = bound_up(n2[j]);
    }
}

/* int8 lm_head (+ its row scales and screen bounds, the next plan entries): quantized from the
 * f16-rounded embedding so every route that yields the same f16 yields the same int8. */
static int write_lm_i8(bn_source *src, bn_atomic_file *f, XXH3_state_t *h, plan_entry *e,
                       const lm_rows *lr, const char *lm_name, bn_error *err)
{
    uint64_t band = EMBD_BAND_ROWS, D = src->cfg.n_embd;
    float *rows = malloc(band * D * sizeof *rows);
    int8_t *q = malloc(band * e->cols);
    int rc = (!rows || !q) ? bn_err(err, "out of memory") : 0;
    for (uint64_t r0 = 0; rc == 0 && r0 < e->rows; r0 += band) {
        uint64_t n = e->rows - r0 < band ? e->rows - r0 : band;
        rc = src->ops->floats(src, lm_name, e->rows, D, r0, n, rows, err);
        if (rc == 0) {
#pragma omp parallel for schedule(static)
            for (uint64_t r = 0; r < n; r++) {
                float *row = rows + r * D;
                int8_t *qr = q + r * e->cols;
                for (uint64_t i = 0; i < D; i++) row[i] = bn_f16_to_f32(bn_f32_to_f16(row[i]));
                bn_quant_rows_i8(row, D, e->cols, qr, &lr->scale[r0 + r]);
                lm_row_bounds(row, qr, lr->scale[r0 + r], D, &lr->err[r0 + r], &lr->norm[r0 + r]);
            }
        }
        if (rc == 0) rc = put(f, h, q, n * e->cols, err);
    }
    free(rows);
    free(q);
    return rc;
}

/* output_q8's codes as 2-bit planes (+ the stage bounds, the two plan entries after it), packed
 * in bands of whole tiles, so the stream and its checksum are sequential. The codes are
 * quantized again from the same f16-rounded rows as write_lm_i8's, at the planes' column
 * padding (the codes do not depend on it); a row whose scale differs from that pass's would
 * mean a source that reads differently twice, and fails the write. */
static int write_lm_planes(bn_source *src, bn_atomic_file *f, XXH3_state_t *h, plan_entry *e,
                           const lm_rows *lr, const char *lm_name, bn_error *err)
{
    uint64_t band = EMBD_BAND_ROWS, D = src->cfg.n_embd, V = src->cfg.n_vocab, Dpp = e->cols;
    float *rows = malloc(band * D * sizeof *rows);
    int8_t *q = malloc(band * Dpp);
    uint8_t *packed = malloc(bn_u2_size(band, Dpp));
    int rc = (!rows || !q || !packed) ? bn_err(err, "out of memory") : 0;
    for (uint64_t r0 = 0; rc == 0 && r0 < V; r0 += band) {
        uint64_t n = V - r0 < band ? V - r0 : band;
        int64_t bad = -1;
        rc = src->ops->floats(src, lm_name, V, D, r0, n, rows, err);
        if (rc == 0) {
#pragma omp parallel for schedule(static) reduction(max : bad)
            for (uint64_t r = 0; r < n; r++) {
                float *row = rows + r * D, s;
                int8_t *qr = q + r * Dpp;
                for (uint64_t i = 0; i < D; i++) row[i] = bn_f16_to_f32(bn_f32_to_f16(row[i]));
                bn_quant_rows_i8(row, D, Dpp, qr, &s);
                if (s != lr->scale[r0 + r]) bad = (int64_t)r > bad ? (int64_t)r : bad;
                lm_stage_bounds(row, qr, s, D, lr->plane_err + r0 + r, lr->plane_norm + r0 + r, V);
            }
        }
        if (bad >= 0)
            rc = bn_err(err, "%s: tensor %s: row %llu read back differently for %s", src->path, lm_name,
                        (unsigned long long)(r0 + (uint64_t)bad), e->name);
        if (rc == 0) {
            bn_u2_pack(q, Dpp, n, Dpp, packed);
            rc = put(f, h, packed, bn_u2_size(n, Dpp), err);
        }
    }
    free(rows);
    free(q);
    free(packed);
    return rc;
}

static int write_tensor(bn_source *src, bn_atomic_file *f, plan_entry *e, const bn_pack_opts *o,
                        const lm_rows *lr, bn_error *err)
{
    XXH3_state_t *h = XXH3_createState();
    if (!h) return bn_err(err, "out of memory");
    XXH3_64bits_reset(h);
    int rc = 0;
    const char *lm_name = src->cfg.tied ? "token_embd" : "output";
    switch (e->kind) {
    case PK_EMBD_F16: rc = write_embd_f16(src, f, h, e, err); break;
    case PK_NORM_F32: rc = write_norm(src, f, h, e, err); break;
    case PK_TERNARY: rc = write_ternary(src, f, h, e, o->tern, err); break;
    case PK_LM_I8: rc = write_lm_i8(src, f, h, e, lr, lm_name, err); break;
    case PK_LM_I8_SCALE: rc = put(f, h, lr->scale, e->nbytes, err); break;
    case PK_LM_I8_ERR: rc = put(f, h, lr->err, e->nbytes, err); break;
    case PK_LM_I8_NORM: rc = put(f, h, lr->norm, e->nbytes, err); break;
    case PK_LM_PLANES: rc = write_lm_planes(src, f, h, e, lr, lm_name, err); break;
    case PK_LM_PLANES_ERR: rc = put(f, h, lr->plane_err, e->nbytes, err); break;
    case PK_LM_PLANES_NORM: rc = put(f, h, lr->plane_norm, e->nbytes, err); break;
    }
    e->checksum = XXH3_64bits_digest(h);
    XXH3_freeState(h);
    return rc;
}

/* Layout: header, directory, tokenizer, provenance text, then page-aligned data. */
static void layout(plan *p, bn_file_header *hd, uint64_t tok_size, uint64_t src_size)
{
    hd->tensors_offset = sizeof *hd;
    hd->n_tensors = p->n;
    hd->tensor_entry_size = sizeof(bn_tensor_entry);
    hd->tokenizer_offset = bn_align_up(hd->tensors_offset + (uint64_t)p->n * sizeof(bn_tensor_entry), 64);
    hd->tokenizer_size = tok_size;
    hd->source_offset = bn_align_up(hd->tokenizer_offset + tok_size, 64);
    hd->source_size = src_size;
    hd->data_offset = bn_align_up(hd->source_offset + src_size, BN_PAGE_ALIGN);
    uint64_t off = hd->data_offset;
    for (uint32_t i = 0; i < p->n; i++) {
        off = bn_align_up(off, tensor_align(p->e[i].nbytes));
        p->e[i].offset = off;
        off += p->e[i].nbytes;
    }
    hd->file_size = off;
}

static void fill_header(bn_file_header *hd, const bn_config *c, const bn_pack_opts *o)
{
    memcpy(hd->magic, BN_FILE_MAGIC, 8);
    hd->version_major = BN_FILE_VERSION_MAJOR;
    hd->version_minor = BN_FILE_VERSION_MINOR;
    hd->tern_fmt = o->tern;
    hd->flags = c->no_sub_norms ? BN_FILE_FLAG_NO_SUB_NORMS : 0;
    hd->hp = (bn_disk_hparams){c->n_embd, c->n_layer, c->n_head, c->n_head_kv, c->head_dim, c->n_ff,
                               c->n_vocab, c->n_ctx_max, c->rope_theta, c->norm_eps, c->act, c->tied,
                               c->bos, c->eos, c->eot, 1};
}

/* Builds the metadata region [0, data_offset) with entries and checksum filled in. */
static uint8_t *build_meta(const bn_file_header *hd0, const plan *p, const bn_vocab *v, const char *prov)
{
    bn_file_header hd = *hd0;
    uint8_t *meta = calloc(1, hd.data_offset);
    if (!meta) return NULL;
    for (uint32_t i = 0; i < p->n; i++) {
        const plan_entry *e = &p->e[i];
        bn_tensor_entry te = {0};
        memcpy(te.name, e->name, sizeof te.name);
        te.dtype = e->dtype;
        te.rows = e->rows;
        te.cols = e->cols;
        te.offset = e->offset;
        te.nbytes = e->nbytes;
        te.scale = e->scale;
        te.checksum = e->checksum;
        memcpy(meta + hd.tensors_offset + (uint64_t)i * sizeof te, &te, sizeof te);
    }
    bn_tok_section_write(v, meta + hd.tokenizer_offset);
    memcpy(meta + hd.source_offset, prov, hd.source_size);
    hd.header_checksum = 0;
    memcpy(meta, &hd, sizeof hd);
    hd.header_checksum = XXH3_64bits(meta, hd.data_offset);
    memcpy(meta, &hd, sizeof hd);
    return meta;
}

/* Route-independent on purpose: the same weights reached through any source must give a
 * byte-identical file, so the source's path, kind and notes are reported by `bitnet convert`
 * rather than stored. */
static char *provenance(const bn_pack_opts *o)
{
    static const char *lm[] = {[BN_PACK_LM_F16] = "f16", [BN_PACK_LM_I8] = "i8", [BN_PACK_LM_PLANES] = "planes"};
    char *s = malloc(160);
    if (s) snprintf(s, 160, "writer: %s %s\nternary: %s\nlm_head: %s\n", PACKAGE_NAME, PACKAGE_VERSION,
                    o->tern == BN_TERN_I2 ? "i2" : "t5", lm[o->lm_head_i8]);
    return s;
}

int bn_pack_write(bn_source *src, const char *out_path, const bn_pack_opts *o, bn_error *err)
{
    const bn_config *c = &src->cfg;
    if (bn_config_validate(c, err) != 0) return bn_err_prefix(err, "%s", src->path);
    if (!src->vocab) return bn_err(err, "%s: no tokenizer", src->path);
    if (src->vocab->n_tokens > c->n_vocab)
        return bn_err(err, "%s: tokenizer has %u tokens but the model's vocab_size is %u", src->path,
                      src->vocab->n_tokens, c->n_vocab);
    if (o->lm_head_i8 < BN_PACK_LM_F16 || o->lm_head_i8 > BN_PACK_LM_PLANES)
        return bn_err(err, "lm_head_i8 %d is not one of BN_PACK_LM_F16/_I8/_PLANES", o->lm_head_i8);
    plan p = {0};
    bn_file_header hd = {0};
    bn_atomic_file f;
    char *prov = provenance(o);
    /* one allocation for the per-row arrays of the int8 lm_head (3) and of its planes (2 x 3) */
    size_t V = c->n_vocab, n_lm = o->lm_head_i8 == BN_PACK_LM_PLANES ? 3 + 2 * LM_STAGES : o->lm_head_i8 ? 3 : 0;
    float *lm_buf = n_lm ? malloc(n_lm * V * sizeof *lm_buf) : NULL;
    lm_rows lr = {0};
    if (lm_buf) lr = (lm_rows){lm_buf, lm_buf + V, lm_buf + 2 * V, n_lm > 3 ? lm_buf + 3 * V : NULL,
                               n_lm > 3 ? lm_buf + (3 + LM_STAGES) * V : NULL};
    uint8_t *meta = NULL;
    int rc = (!prov || (n_lm && !lm_buf) || build_plan(c, o, &p) != 0) ? bn_err(err, "out of memory") : 0;
    if (rc == 0) {
        fill_header(&hd, c, o);
        layout(&p, &hd, bn_tok_section_size(src->vocab), strlen(prov) + 1);
        rc = bn_atomic_open(&f, out_path, err);
    }
    if (rc == 0) {
        /* Reserve the metadata region; it is written last, once checksums are known. */
        static const char zeros[BN_PAGE_ALIGN];
        while (rc == 0 && f.off < hd.data_offset) {
            uint64_t left = hd.data_offset - f.off;
            rc = bn_atomic_write(&f, zeros, left < sizeof zeros ? left : sizeof zeros, err);
        }
        for (uint32_t i = 0; rc == 0 && i < p.n; i++) {
            rc = bn_atomic_pad(&f, tensor_align(p.e[i].nbytes), err);
            if (rc == 0) rc = write_tensor(src, &f, &p.e[i], o, &lr, err);
            if (rc == 0 && o->progress)
                o->progress(o->progress_user, i + 1, p.n, p.e[i].offset + p.e[i].nbytes, hd.file_size, p.e[i].name);
        }
        if (rc == 0 && !(meta = build_meta(&hd, &p, src->vocab, prov))) rc = bn_err(err, "out of memory");
        if (rc == 0) rc = bn_atomic_pwrite(&f, meta, hd.data_offset, 0, err);
        if (rc == 0) rc = bn_atomic_commit(&f, err);
        else bn_atomic_abort(&f);
    }
    free(meta);
    free(p.e);
    free(prov);
    free(lm_buf);
    return rc;
}
