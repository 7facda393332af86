/* The packed model file: round trips, checksums, every class of bad input, cross-format
 * identity of conversions, the conversion cache, every family's synthetic preset (format 1.2
 * flags, untied heads), the int8 head's 2-bit planes (1.3), the per-layer tensor table and the
 * synthetic shape parser. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>
#include <fcntl.h>

#include "base/file.h"
#include "kernels/half.h"
#include "model/convert_cache.h"
#include "model/gguf.h"
#include "model/hf_write.h"
#include "model/model.h"
#include "model/model_format.h"
#include "model/model_write.h"
#include "model/family.h"
#include "model/tensor_table.h"
#include "model/source_synth.h"
#include "model/synth.h"
#include "model/ternarize.h"
#include "text/tokenizer.h"
#include "testutil.h"

static bn_synth tiny;
static bn_vocab *tiny_vocab;

static void setup_tiny(void)
{
    bn_error err;
    tiny = (bn_synth){.seed = 7}; /* CK_FORK=no: a test's changes must not reach the next */
    ck_assert_int_eq(bn_synth_parse("tiny", &tiny, &err), 0);
    tiny_vocab = bn_vocab_builtin(tiny.cfg.n_vocab, &err);
    ck_assert_msg(tiny_vocab != NULL, "%s", err.msg);
    tiny.cfg.bos = tiny_vocab->bos;
    tiny.cfg.eos = tiny_vocab->eos;
    tiny.cfg.eot = tiny_vocab->eot;
}

static void teardown_tiny(void) { bn_vocab_free(tiny_vocab); }

static void write_packed(const char *path, bn_tern_fmt fmt, int lm_i8)
{
    bn_error err;
    bn_source *src;
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    po.tern = fmt;
    po.lm_head_i8 = lm_i8;
    ck_assert_int_eq(bn_source_open_synth(&tiny, tiny_vocab, &src, &err), 0);
    ck_assert_msg(bn_pack_write(src, path, &po, &err) == 0, "%s", err.msg);
    bn_source_close(src);
}

static void check_layer_tensor(const bn_synth *sy, const bn_model *m, const bn_tensor *t, const char *name)
{
    size_t rows = t->rows, cols = t->cols;
    int8_t *want = malloc(rows * cols), *row = malloc(bn_tern_cols_padded(m->tern_fmt, cols));
    float scale;
    bn_synth_ternary(sy, name, rows, cols, want, &scale);
    ck_assert_float_eq(t->scale, scale);
    for (size_t r = 0; r < rows; r++) {
        bn_tern_unpack_row(m->tern_fmt, t->data, rows, cols, r, row);
        ck_assert_msg(memcmp(row, want + r * cols, cols) == 0, "%s row %zu differs", name, r);
    }
    free(want);
    free(row);
}

/* ---- the int8 head's 2-bit planes (format 1.3) ------------------------------------------ */

/* Digit k of element c of row r, read by the layout kernels.h documents (not through the
 * kernels' unpacker, so that the packer is checked against the document). */
static unsigned plane_digit(const uint8_t *planes, size_t cols, size_t r, int k, size_t c)
{
    const size_t T = BN_U2_TILE;
    const uint8_t *row = planes + r / T * T * cols + ((size_t)k * T + r % T) * (cols / 4);
    return (row[c / BN_U2_COLS * 32 + c % 32] >> (2 * (c % BN_U2_COLS / 32))) & 3u;
}

/* The value stage j stands for in place of code q, from its definition: the known high bits of
 * p = q + 128 and the centre of its 6 - 2j unknown low bits, minus 128. */
static double stage_value(int q, int j)
{
    int step = 1 << (6 - 2 * j), p = q + 128;
    return (double)(p / step * step) + (step - 1) / 2.0 - 128;
}

/* A stored bound b of an exact value x: never below it, above it by a float rounding at most. */
static void check_bound(float b, double x, const char *what, size_t r, int j)
{
    ck_assert_msg(b >= x, "%s[%d][%zu] = %.9g is below the exact %.17g", what, j, r, b, x);
    ck_assert_msg(b <= x * (1 + 1e-6) + FLT_MIN, "%s[%d][%zu] = %.9g is loose (exact %.17g)", what, j, r, b, x);
}

/* The planes hold exactly output_q8's codes + 128 (128 in every padding row and column), and
 * each stage bound is its value recomputed in double from the f16 head rows, rounded up. */
static void check_planes(const bn_model *m)
{
    const size_t V = m->cfg.n_vocab, D = m->cfg.n_embd, Dp = m->lm_head_cols_padded, cols = bn_u2_cols_padded(D);
    ck_assert_ptr_nonnull(m->lm_head_planes);
    ck_assert_ptr_nonnull(m->lm_head_i8_err);
    ck_assert_uint_eq(m->lm_head_planes_cols, cols);
    const bn_tensor *t = bn_model_tensor(m, "output_q8.planes");
    ck_assert_ptr_nonnull(t);
    ck_assert_ptr_eq(t->data, m->lm_head_planes);
    ck_assert_uint_eq(t->dtype, BN_DT_I8);
    ck_assert_uint_eq(t->rows, (V + BN_U2_TILE - 1) / BN_U2_TILE * BN_U2_TILE);
    ck_assert_uint_eq(t->cols, cols);
    ck_assert_uint_eq(t->nbytes, bn_u2_size(V, cols));
    uint8_t *dig = malloc(cols);
    for (size_t r = 0; r < t->rows; r++) {
        for (size_t i = 0; i < cols; i++) {
            unsigned p = 0;
            for (int k = 0; k < BN_U2_PLANES; k++) p = p << 2 | plane_digit(m->lm_head_planes, cols, r, k, i);
            int want = r < V && i < Dp ? m->lm_head_i8[r * Dp + i] : 0;
            ck_assert_msg(p == (unsigned)(want + 128), "row %zu col %zu: planes hold %u, output_q8 %d", r, i, p, want);
        }
        if (r % 61 && r != t->rows - 1) continue; /* the kernels' unpacker reads the same digits */
        for (int k = 0; k < BN_U2_PLANES; k++) {
            bn_u2_unpack_row(m->lm_head_planes, cols, r, k, dig);
            for (size_t i = 0; i < cols; i++) ck_assert_uint_eq(dig[i], plane_digit(m->lm_head_planes, cols, r, k, i));
        }
    }
    for (int q = -127; q <= 127; q++)
        for (int j = 0; j < 3; j++) ck_assert((double)bn_u2_stage_value((int8_t)q, j) == stage_value(q, j));
    for (size_t r = 0; r < V; r++) {
        const int8_t *q = m->lm_head_i8 + r * Dp;
        double s = m->lm_head_i8_scale[r];
        for (int j = 0; j < 3; j++) {
            double e2 = 0, n2 = 0;
            for (size_t i = 0; i < D; i++) {
                double v = stage_value(q[i], j) * s, d = (double)bn_f16_to_f32(m->lm_head_f16[r * D + i]) - v;
                e2 += d * d;
                n2 += v * v;
            }
            check_bound(m->lm_head_plane_err[j][r], sqrt(e2), "plane_err", r, j);
            check_bound(m->lm_head_plane_norm[j][r], sqrt(n2), "plane_norm", r, j);
        }
    }
    free(dig);
}

static void check_roundtrip(bn_tern_fmt fmt)
{
    const char *path = bn_test_path("roundtrip.bnpk");
    write_packed(path, fmt, BN_PACK_LM_PLANES);
    bn_model *m;
    bn_error err;
    ck_assert_msg(bn_model_open(path, &m, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(memcmp(&m->cfg, &tiny.cfg, sizeof m->cfg), 0);
    ck_assert_int_eq(m->tern_fmt, fmt);
    ck_assert_msg(bn_model_verify(m, &err) == 0, "%s", err.msg);
    check_planes(m);
    /* vocab */
    ck_assert_uint_eq(m->vocab->n_tokens, tiny_vocab->n_tokens);
    ck_assert_uint_eq(m->vocab->n_merges, tiny_vocab->n_merges);
    ck_assert_int_eq(memcmp(m->vocab->text, tiny_vocab->text, tiny_vocab->tok_off[tiny_vocab->n_tokens]), 0);
    ck_assert_int_eq(memcmp(m->vocab->merges, tiny_vocab->merges, 8ull * tiny_vocab->n_merges), 0);
    ck_assert_int_eq(m->vocab->eot, tiny_vocab->eot);
    /* weights */
    char name[64];
    for (uint32_t l = 0; l < m->cfg.n_layer; l++) {
        const bn_layer_weights *w = &m->layers[l];
        const bn_tensor *mats[7] = {w->wq, w->wk, w->wv, w->wo, w->wgate, w->wup, w->wdown};
        for (int i = 0; i < 7; i++) check_layer_tensor(&tiny, m, mats[i], mats[i]->name);
        float norm[1024];
        snprintf(name, sizeof name, "blk.%u.ffn_sub_norm", l);
        bn_synth_norm(&tiny, name, m->cfg.n_ff, norm);
        ck_assert_int_eq(memcmp(norm, w->ffn_sub_norm, m->cfg.n_ff * 4), 0);
    }
    float row[4096];
    for (uint32_t tok = 0; tok < m->cfg.n_vocab; tok += 37) {
        bn_synth_embedding_row(&tiny, tok, row);
        for (uint32_t i = 0; i < m->cfg.n_embd; i++)
            ck_assert_float_eq(bn_f16_to_f32(m->tok_embd[(size_t)tok * m->cfg.n_embd + i]), row[i]);
        int8_t q[4096];
        float s;
        bn_quant_rows_i8(row, m->cfg.n_embd, m->lm_head_cols_padded, q, &s);
        ck_assert_float_eq(m->lm_head_i8_scale[tok], s);
        ck_assert_int_eq(memcmp(q, m->lm_head_i8 + (size_t)tok * m->lm_head_cols_padded, m->lm_head_cols_padded), 0);
    }
    /* alignment promises of the format */
    for (uint32_t i = 0; i < m->n_tensors; i++) {
        uintptr_t off = (uintptr_t)((const char *)m->tensors[i].data - (const char *)m->map);
        ck_assert_uint_eq(off % 64, 0);
        if (m->tensors[i].nbytes >= (1u << 20)) ck_assert_uint_eq(off % 4096, 0);
    }
    bn_model_close(m);
    unlink(path);
}

START_TEST(test_roundtrip_t5) { check_roundtrip(BN_TERN_T5); }
END_TEST
START_TEST(test_roundtrip_i2) { check_roundtrip(BN_TERN_I2); }
END_TEST

START_TEST(test_without_i8_lm_head)
{
    const char *path = bn_test_path("noi8.bnpk");
    write_packed(path, BN_TERN_T5, BN_PACK_LM_F16);
    bn_model *m;
    bn_error err;
    ck_assert_msg(bn_model_open(path, &m, &err) == 0, "%s", err.msg);
    ck_assert_ptr_null(m->lm_head_i8);
    ck_assert_ptr_null(bn_model_tensor(m, "output_q8"));
    ck_assert_ptr_null(m->lm_head_planes);
    ck_assert_ptr_null(bn_model_tensor(m, "output_q8.planes"));
    bn_model_close(m);
    unlink(path);
}
END_TEST

/* bn_model_load (the CLI's default: the file read into private memory) opens the same bytes
 * and tensors as the in-place mapping, and names the file when it cannot. */
START_TEST(test_load_copy)
{
    const char *path = bn_test_path("load.bnpk");
    write_packed(path, BN_TERN_T5, BN_PACK_LM_PLANES);
    bn_model *a, *b;
    bn_error err;
    ck_assert_msg(bn_model_open(path, &a, &err) == 0, "%s", err.msg);
    ck_assert_msg(bn_model_load(path, &b, &err) == 0, "%s", err.msg);
    ck_assert_ptr_ne(a->map, b->map);
    ck_assert_uint_eq(a->map_len, b->map_len);
    ck_assert_int_eq(memcmp(a->map, b->map, a->map_len), 0);
    ck_assert_uint_eq(a->n_tensors, b->n_tensors);
    ck_assert_int_eq(bn_model_verify(b, &err), 0);
    ck_assert_uint_eq(b->cfg.n_layer, a->cfg.n_layer);
    bn_model_close(a);
    bn_model_close(b);
    unlink(path);
    ck_assert_int_eq(bn_model_load(path, &b, &err), -1);
    ck_assert_ptr_null(b);
    ck_assert_msg(strstr(err.msg, path) && strstr(err.msg, "cannot open"), "%s", err.msg);
}
END_TEST

START_TEST(test_deterministic)
{
    const char *a = bn_test_path("det_a.bnpk"), *b = bn_test_path("det_b.bnpk");
    write_packed(a, BN_TERN_T5, BN_PACK_LM_PLANES);
    write_packed(b, BN_TERN_T5, BN_PACK_LM_PLANES);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", a, b);
    ck_assert_int_eq(bn_test_sh(cmd), 0);
    unlink(a);
    unlink(b);
}
END_TEST

/* ---- corruption: the file is mutated in memory and written back ------------------------ */

static uint8_t *load(const char *path, size_t *len)
{
    char *buf;
    bn_error err;
    ck_assert_msg(bn_read_file(path, 1u << 30, &buf, len, &err) == 0, "%s", err.msg);
    return (uint8_t *)buf;
}

static void store(const char *path, const uint8_t *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    fclose(f);
}

/* Recomputes the header checksum so a test reaches the field check behind it. */
static void fix_checksum(uint8_t *buf)
{
    bn_file_header h;
    memcpy(&h, buf, sizeof h);
    h.header_checksum = 0;
    memcpy(buf, &h, sizeof h);
    uint64_t data_offset = h.data_offset;
    h.header_checksum = XXH3_64bits(buf, data_offset);
    memcpy(buf, &h, sizeof h);
}

static bn_tensor_entry *entry(uint8_t *buf, const char *name)
{
    bn_file_header h;
    memcpy(&h, buf, sizeof h);
    for (uint32_t i = 0; i < h.n_tensors; i++) {
        bn_tensor_entry *e = (bn_tensor_entry *)(buf + h.tensors_offset + i * sizeof *e);
        if (!strcmp(e->name, name)) return e;
    }
    ck_abort_msg("no tensor %s", name);
    return NULL;
}

/* Opens the mutated file and expects failure with every needle in the message. */
static void expect_open_error(const char *path, const uint8_t *buf, size_t len, const char *needle1, const char *needle2)
{
    store(path, buf, len);
    bn_model *m = NULL;
    bn_error err = {{0}};
    int rc = bn_model_open(path, &m, &err);
    if (rc == 0) bn_model_close(m);
    ck_assert_msg(rc != 0, "opening a corrupt file succeeded (expected '%s')", needle1);
    ck_assert_msg(strstr(err.msg, path) != NULL, "message does not name the file: %s", err.msg);
    ck_assert_msg(strstr(err.msg, needle1) != NULL, "message lacks '%s': %s", needle1, err.msg);
    if (needle2) ck_assert_msg(strstr(err.msg, needle2) != NULL, "message lacks '%s': %s", needle2, err.msg);
}

typedef void (*mutator)(uint8_t *buf);

static void mut_magic(uint8_t *b) { b[0] = 'X'; }
static void mut_version(uint8_t *b) { ((bn_file_header *)b)->version_major = 9; }
static void mut_offset_past_eof(uint8_t *b) { entry(b, "blk.1.ffn_down")->offset = 1ull << 40; }
static void mut_overflow(uint8_t *b)
{
    bn_tensor_entry *e = entry(b, "blk.0.attn_q");
    e->rows = 1ull << 62;
    e->cols = 1ull << 62;
}
static void mut_nan_scale(uint8_t *b) { entry(b, "blk.0.ffn_up")->scale = NAN; }
static void mut_inf_scale(uint8_t *b) { entry(b, "blk.1.attn_k")->scale = INFINITY; }
static void mut_missing(uint8_t *b) { memcpy(entry(b, "blk.1.attn_v")->name, "blk.1.attn_w", 13); }
static void mut_duplicate(uint8_t *b) { memcpy(entry(b, "blk.1.attn_v")->name, "blk.1.attn_k", 13); }
static void mut_shape(uint8_t *b)
{
    bn_tensor_entry *e = entry(b, "output_norm");
    e->cols = 64;
    e->nbytes = 256;
}
static void mut_dtype(uint8_t *b) { entry(b, "blk.0.attn_norm")->dtype = 99; }
static void mut_dims(uint8_t *b) { ((bn_file_header *)b)->hp.n_head = 5; }
static void mut_n_tensors(uint8_t *b) { ((bn_file_header *)b)->n_tensors = 0xffffffffu; }
static void mut_tokenizer(uint8_t *b) { ((bn_file_header *)b)->tokenizer_size += 4; }
static void mut_flags_unknown(uint8_t *b) { ((bn_file_header *)b)->flags |= 0x80u; }
/* Sub-norm pairs: one renamed away (either one), or the flag claiming none while both exist. */
static void mut_half_ffn_sub(uint8_t *b) { memcpy(entry(b, "blk.1.ffn_sub_norm")->name, "blk.1.ffn_sub_nrm", 18); }
static void mut_half_attn_sub(uint8_t *b) { memcpy(entry(b, "blk.0.attn_sub_norm")->name, "blk.0.attn_sub_nrm", 19); }
static void mut_flag_no_sub(uint8_t *b) { ((bn_file_header *)b)->flags = BN_FILE_FLAG_NO_SUB_NORMS; }
/* An "output" head in a tied model (the file would have two heads). */
static void mut_output_in_tied(uint8_t *b) { memcpy(entry(b, "output_q8.norm")->name, "output", 7); }
/* The int8 head's planes (1.3): a wrong size or shape, one of the three missing, or the planes
 * without the int8 screen's own bounds. */
static void mut_planes_nbytes(uint8_t *b) { entry(b, "output_q8.planes")->nbytes -= 64; }
static void mut_planes_rows(uint8_t *b)
{
    bn_tensor_entry *e = entry(b, "output_q8.planes");
    e->rows -= BN_U2_TILE;
    e->nbytes -= BN_U2_TILE * e->cols;
}
static void mut_planes_dtype(uint8_t *b)
{
    bn_tensor_entry *e = entry(b, "output_q8.planes");
    e->dtype = BN_DT_F32;
    e->cols /= 4;
}
static void mut_planes_err_shape(uint8_t *b)
{
    bn_tensor_entry *e = entry(b, "output_q8.planes.err");
    e->rows = 1;
    e->nbytes /= 3;
}
static void mut_planes_gone(uint8_t *b) { memcpy(entry(b, "output_q8.planes")->name, "output_q8.planex", 17); }
static void mut_planes_no_err(uint8_t *b) { memcpy(entry(b, "output_q8.planes.err")->name, "output_q8.planes.erx", 21); }
static void mut_planes_no_norm(uint8_t *b) { memcpy(entry(b, "output_q8.planes.norm")->name, "output_q8.planes.norx", 22); }
static void mut_planes_no_q8_bounds(uint8_t *b)
{
    memcpy(entry(b, "output_q8.err")->name, "x.err", 6);
    memcpy(entry(b, "output_q8.norm")->name, "x.norm", 7);
}
static void mut_vocab_ids(uint8_t *b)
{
    bn_file_header *h = (bn_file_header *)b;
    bn_tok_header *t = (bn_tok_header *)(b + h->tokenizer_offset);
    t->n_merges += 1; /* arrays no longer add up to the section size */
}

static const struct {
    mutator fn;
    const char *needle1, *needle2;
} mutations[] = {
    {mut_magic, "magic", NULL},
    {mut_version, "version", NULL},
    {mut_offset_past_eof, "blk.1.ffn_down", "outside"},
    {mut_overflow, "blk.0.attn_q", "shape"},
    {mut_nan_scale, "blk.0.ffn_up", "scale"},
    {mut_inf_scale, "blk.1.attn_k", "scale"},
    {mut_missing, "blk.1.attn_v", "missing"},
    {mut_duplicate, "blk.1.attn_k", "twice"},
    {mut_shape, "output_norm", "shape"},
    {mut_dtype, "blk.0.attn_norm", "dtype"},
    {mut_dims, "hparams", "n_head"},
    {mut_n_tensors, "n_tensors", NULL},
    {mut_tokenizer, "tokenizer", NULL},
    {mut_vocab_ids, "tokenizer section", NULL},
    {mut_flags_unknown, "flags", "unknown bits 0x80"},
    {mut_half_ffn_sub, "'blk.1.ffn_sub_norm' is missing", "blk.1.attn_sub_norm"},
    {mut_half_attn_sub, "'blk.0.attn_sub_norm' is missing", "blk.0.ffn_sub_norm"},
    {mut_flag_no_sub, "'blk.0.attn_sub_norm' is present", "NO_SUB_NORMS"},
    {mut_output_in_tied, "'output' is present", "tied"},
    {mut_planes_nbytes, "'output_q8.planes'", "nbytes"},
    {mut_planes_rows, "'output_q8.planes'", "shape"},
    {mut_planes_dtype, "'output_q8.planes'", "expected int8"},
    {mut_planes_err_shape, "'output_q8.planes.err'", "shape 3x512"},
    {mut_planes_gone, "'output_q8.planes' is missing", "'output_q8.planes.err' is present"},
    {mut_planes_no_err, "'output_q8.planes.err' is missing", "'output_q8.planes' is present"},
    {mut_planes_no_norm, "'output_q8.planes.norm' is missing", "'output_q8.planes' is present"},
    {mut_planes_no_q8_bounds, "'output_q8.planes' is present without", "output_q8.err"},
};

START_TEST(test_bad_fields)
{
    const char *good = bn_test_path("good.bnpk"), *bad = bn_test_path("bad.bnpk");
    write_packed(good, BN_TERN_T5, BN_PACK_LM_PLANES);
    size_t len;
    uint8_t *orig = load(good, &len);
    uint8_t *buf = malloc(len);
    for (size_t i = 0; i < sizeof mutations / sizeof mutations[0]; i++) {
        memcpy(buf, orig, len);
        mutations[i].fn(buf);
        if (mutations[i].fn != mut_magic && mutations[i].fn != mut_version) fix_checksum(buf);
        expect_open_error(bad, buf, len, mutations[i].needle1, mutations[i].needle2);
    }
    /* A field changed without fixing the checksum is caught by the header checksum. */
    memcpy(buf, orig, len);
    mut_nan_scale(buf);
    expect_open_error(bad, buf, len, "header_checksum", NULL);
    free(buf);
    free(orig);
    unlink(good);
    unlink(bad);
}
END_TEST

START_TEST(test_truncated)
{
    const char *good = bn_test_path("trunc_src.bnpk"), *bad = bn_test_path("trunc.bnpk");
    write_packed(good, BN_TERN_T5, BN_PACK_LM_PLANES);
    size_t len;
    uint8_t *orig = load(good, &len);
    /* Prefixes every 97 bytes through the first 8 KiB (header, directory, tokenizer), then
     * every 65521 bytes through the data, then len - 1: each must fail to open. */
    for (size_t n = 0; n < len; n += n < 8192 ? 97 : 65521) expect_open_error(bad, orig, n, "", NULL);
    expect_open_error(bad, orig, len - 1, "file_size", NULL);
    free(orig);
    unlink(good);
    unlink(bad);
}
END_TEST

START_TEST(test_flipped_byte_detected)
{
    const char *path = bn_test_path("flip.bnpk");
    write_packed(path, BN_TERN_T5, BN_PACK_LM_PLANES);
    size_t len;
    uint8_t *buf = load(path, &len);
    bn_tensor_entry *e = entry(buf, "blk.1.ffn_gate");
    buf[e->offset + e->nbytes / 2] ^= 0x10;
    store(path, buf, len);
    bn_model *m;
    bn_error err;
    ck_assert_msg(bn_model_open(path, &m, &err) == 0, "data corruption must not fail open: %s", err.msg);
    ck_assert_int_ne(bn_model_verify(m, &err), 0);
    ck_assert_msg(strstr(err.msg, "blk.1.ffn_gate") && strstr(err.msg, "checksum"), "%s", err.msg);
    bn_model_close(m);
    free(buf);
    unlink(path);
}
END_TEST

/* `bitnet inspect --verify` exits 1 on a file with a flipped data byte, 0 on the intact one. */
START_TEST(test_cli_verify_flipped)
{
    const char *bitnet = getenv("BN_BITNET");
    char path[512], cmd[1200];
    snprintf(path, sizeof path, "%s", bn_test_path("cliflip.bnpk"));
    write_packed(path, BN_TERN_T5, BN_PACK_LM_PLANES);
    snprintf(cmd, sizeof cmd, "'%s' inspect --verify '%s' >/dev/null 2>&1", bitnet, path);
    ck_assert_int_eq(bn_test_sh(cmd), 0);
    size_t len;
    uint8_t *buf = load(path, &len);
    bn_tensor_entry *e = entry(buf, "blk.1.ffn_gate");
    buf[e->offset + e->nbytes / 2] ^= 0x10;
    store(path, buf, len);
    ck_assert_int_eq(bn_test_sh(cmd), 1);
    free(buf);
    unlink(path);
}
END_TEST

START_TEST(test_atomic_write_leaves_nothing_on_failure)
{
    /* A source that fails mid-way: the destination must not exist afterwards. */
    bn_synth broken = tiny;
    broken.cfg.n_ff = 0; /* invalid config: the packer refuses before writing anything */
    bn_error err;
    bn_source *src;
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    ck_assert_int_eq(bn_source_open_synth(&broken, tiny_vocab, &src, &err), 0);
    const char *path = bn_test_path("never.bnpk");
    ck_assert_int_ne(bn_pack_write(src, path, &po, &err), 0);
    bn_source_close(src);
    ck_assert_int_ne(access(path, F_OK), 0);
    /* A directory that cannot be written: error names the path. */
    ck_assert_int_ne(bn_source_open_synth(&tiny, tiny_vocab, &src, &err), -1);
    ck_assert_int_ne(bn_pack_write(src, "/nonexistent-dir/x.bnpk", &po, &err), 0);
    ck_assert_msg(strstr(err.msg, "/nonexistent-dir/x.bnpk") != NULL, "%s", err.msg);
    bn_source_close(src);
}
END_TEST

/* ---- cross-format identity: every route to the same weights gives the same bytes -------- */

static void convert(const char *src_path, const char *out)
{
    bn_error err = {{0}};
    bn_source *src;
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    ck_assert_msg(bn_source_open(src_path, &src, &err) == 0, "%s: %s", src_path, err.msg);
    ck_assert_msg(bn_pack_write(src, out, &po, &err) == 0, "%s: %s", src_path, err.msg);
    bn_source_close(src);
}

/* The provenance text names the source, so compare everything but that section. */
static void assert_same_model(const char *a, const char *b)
{
    size_t la, lb;
    uint8_t *x = load(a, &la), *y = load(b, &lb);
    ck_assert_uint_eq(la, lb);
    bn_file_header hx, hy;
    memcpy(&hx, x, sizeof hx);
    memcpy(&hy, y, sizeof hy);
    ck_assert_msg(hx.data_offset == hy.data_offset, "metadata sizes differ");
    ck_assert_msg(memcmp(x + hx.data_offset, y + hy.data_offset, la - hx.data_offset) == 0, "tensor data differs: %s vs %s", a, b);
    ck_assert_msg(memcmp(x + hx.tensors_offset, y + hy.tensors_offset, hx.source_offset - hx.tensors_offset) == 0,
                  "directory or tokenizer differs: %s vs %s", a, b);
    ck_assert_int_eq(memcmp(&hx.hp, &hy.hp, sizeof hx.hp), 0);
    free(x);
    free(y);
}

START_TEST(test_cross_format_identity)
{
    /* TQ2_0 stores 256-element blocks along each row, as real TQ2_0 files do (2560, 6912):
     * this shape keeps every input dimension a multiple of 256. */
    bn_error err = {{0}};
    ck_assert_int_eq(bn_synth_shape("tiny,n_embd=256,n_ff=512", &tiny.cfg, &err), 0);
    tiny.cfg.bos = tiny_vocab->bos;
    tiny.cfg.eos = tiny_vocab->eos;
    tiny.cfg.eot = tiny_vocab->eot;
    char ref[512]; /* own copies: bn_test_path() reuses its buffers */
    snprintf(ref, sizeof ref, "%s", bn_test_path("xref.bnpk"));
    write_packed(ref, BN_TERN_T5, BN_PACK_LM_PLANES);
    const struct {
        const char *name;
        int hf, arg;
    } routes[] = {{"hf", 1, 0}, {"hf-bf16", 1, 1}, {"hf-sharded", 1, 2}, {"gguf-i2_s", 0, 36}, {"gguf-tq2_0", 0, 35}, {"gguf-f16", 0, 1}};
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        char src[512], out[512];
        snprintf(src, sizeof src, "%s", bn_test_path(routes[i].name));
        snprintf(out, sizeof out, "%s", bn_test_path("xout.bnpk"));
        int rc = routes[i].hf ? bn_hf_write_synth(&tiny, tiny_vocab, src, routes[i].arg == 1, routes[i].arg == 2 ? 3 : 1, &err)
                              : bn_gguf_write_synth(&tiny, tiny_vocab, src, routes[i].arg, &err);
        ck_assert_msg(rc == 0, "%s: %s", routes[i].name, err.msg);
        convert(src, out);
        assert_same_model(ref, out);
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", src, out);
        bn_test_sh(cmd);
    }
    unlink(ref);
}
END_TEST

/* $BN_FIXTURES_DIR/tokenizer/llama3-tokenizer.json if readable, else NULL. */
static const char *llama3_fixture(void)
{
    static char tok[1024];
    const char *fx = getenv("BN_FIXTURES_DIR");
    if (!fx || !*fx) return NULL;
    snprintf(tok, sizeof tok, "%s/tokenizer/llama3-tokenizer.json", fx);
    return access(tok, R_OK) == 0 ? tok : NULL;
}

/* The same with Meta's Llama-3 tokenizer (the 2B-4T vocabulary): GGUF metadata, tokenizer.json
 * and the packed section must carry it identically, so whole files are byte-identical. */
START_TEST(test_cross_format_identity_llama3)
{
    const char *tok = llama3_fixture();
    bn_error err = {{0}};
    bn_vocab *v;
    ck_assert_msg(bn_vocab_load_hf(tok, NULL, &v, &err) == 0, "%s", err.msg);
    bn_synth sy = {.seed = 3};
    ck_assert_int_eq(bn_synth_shape("tiny,n_embd=256,n_ff=512,n_layer=1,n_vocab=128256", &sy.cfg, &err), 0);
    sy.cfg.bos = v->bos;
    sy.cfg.eos = v->eos;
    sy.cfg.eot = v->eot;
    char ref[512], src[512], out[512];
    snprintf(ref, sizeof ref, "%s", bn_test_path("l3ref.bnpk"));
    snprintf(src, sizeof src, "%s", bn_test_path("l3src"));
    snprintf(out, sizeof out, "%s", bn_test_path("l3out.bnpk"));
    bn_source *s;
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    ck_assert_int_eq(bn_source_open_synth(&sy, v, &s, &err), 0);
    ck_assert_msg(bn_pack_write(s, ref, &po, &err) == 0, "%s", err.msg);
    bn_source_close(s);
    for (int route = 0; route < 3; route++) {
        int rc = route == 0 ? bn_gguf_write_synth(&sy, v, src, 36, &err) : bn_hf_write_synth(&sy, v, src, route == 2, 1, &err);
        ck_assert_msg(rc == 0, "route %d: %s", route, err.msg);
        convert(src, out);
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", ref, out);
        ck_assert_msg(bn_test_sh(cmd) == 0, "route %d: packed file is not byte-identical", route);
        snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", src, out);
        bn_test_sh(cmd);
    }
    bn_vocab_free(v);
    unlink(ref);
}
END_TEST

START_TEST(test_convert_cache)
{
    bn_error err = {{0}};
    const char *gguf = bn_test_path("cache_src.gguf"), *dir = bn_test_path("cache_dir");
    /* I2_S needs every input dimension a multiple of 128 (tiny's n_ff 352 is not) */
    ck_assert_int_eq(bn_synth_parse("tiny,n_ff=384", &tiny, &err), 0);
    tiny.cfg.bos = tiny_vocab->bos;
    tiny.cfg.eos = tiny_vocab->eos;
    tiny.cfg.eot = tiny_vocab->eot;
    ck_assert_msg(bn_gguf_write_synth(&tiny, tiny_vocab, gguf, 36, &err) == 0, "%s", err.msg);
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    char *p1, *p2, *p3;
    int conv;
    ck_assert_msg(bn_convert_cached(gguf, dir, &po, &p1, &conv, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(conv, 1);
    ck_assert_msg(bn_convert_cached(gguf, dir, &po, &p2, &conv, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(conv, 0); /* served from the cache */
    ck_assert_str_eq(p1, p2);
    /* A packed file is served as itself. */
    ck_assert_int_eq(bn_convert_cached(p1, dir, &po, &p3, &conv, &err), 0);
    ck_assert_str_eq(p3, p1);
    free(p3);
    /* Touching the source (new mtime, same size) changes its identity: no stale entry. */
    struct timespec ts[2] = {{0, UTIME_OMIT}, {12345, 0}};
    ck_assert_int_eq(utimensat(AT_FDCWD, gguf, ts, 0), 0);
    ck_assert_msg(bn_convert_cached(gguf, dir, &po, &p3, &conv, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(conv, 1);
    ck_assert_str_ne(p3, p1);
    /* Different pack options: a different entry. */
    char key_a[17], key_b[17];
    ck_assert_int_eq(bn_source_identity(gguf, &po, key_a, &err), 0);
    po.tern = BN_TERN_I2;
    ck_assert_int_eq(bn_source_identity(gguf, &po, key_b, &err), 0);
    ck_assert_str_ne(key_a, key_b);
    /* Every cache entry opens (no half-written file under a final name). */
    bn_model *m;
    ck_assert_int_eq(bn_model_open(p3, &m, &err), 0);
    bn_model_close(m);
    free(p1);
    free(p2);
    free(p3);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", gguf, dir);
    bn_test_sh(cmd);
}
END_TEST

START_TEST(test_synth_exact_ternarization)
{
    /* The latent weights ternarize (absmean rule) to exactly the synthetic codes and scale. */
    size_t rows = 64, cols = 352;
    float *w = malloc(rows * cols * sizeof *w);
    int8_t *t = malloc(rows * cols), *t2 = malloc(rows * cols);
    float scale, scale2;
    bn_synth_latent(&tiny, "blk.0.ffn_down", rows, cols, w);
    bn_synth_ternary(&tiny, "blk.0.ffn_down", rows, cols, t, &scale);
    bn_ternarize_absmean(w, rows * cols, t2, &scale2);
    ck_assert_float_eq(scale, scale2);
    ck_assert_int_eq(memcmp(t, t2, rows * cols), 0);
    size_t zeros = 0;
    for (size_t i = 0; i < rows * cols; i++) zeros += t[i] == 0;
    ck_assert_uint_eq(zeros * 8, rows * cols * 3); /* 37.5% zeros */
    ck_assert_float_eq(bn_bf16_to_f32(bn_f32_to_bf16(scale)), scale);
    ck_assert_float_eq(bn_f16_to_f32(bn_f32_to_f16(scale)), scale);
    free(w);
    free(t);
    free(t2);
}
END_TEST

START_TEST(test_ternarize_rules)
{
    /* Already-ternary floats keep their exact magnitude as the scale (bitnet.cpp's f32 GGUFs). */
    float w[8] = {0.25f, -0.25f, 0, 0.25f, 0, 0, -0.25f, 1e-7f};
    int8_t t[8];
    float s;
    ck_assert_int_eq(bn_ternarize_auto(w, 8, t, &s), 1);
    ck_assert_float_eq(s, 0.25f);
    const int8_t want[8] = {1, -1, 0, 1, 0, 0, -1, 0};
    ck_assert_int_eq(memcmp(t, want, 8), 0);
    /* Latent: absmean with ties to even (0.5 * 1/mean rounds to 0, 1.5 to 2 -> clamped 1). */
    float l[4] = {1.0f, -3.0f, 0.5f, 3.5f}; /* mean 2: x/2 = 0.5, -1.5, 0.25, 1.75 */
    ck_assert_int_eq(bn_ternarize_auto(l, 4, t, &s), 0);
    ck_assert_float_eq(s, 2.0f);
    ck_assert_int_eq(t[0], 0);
    ck_assert_int_eq(t[1], -1);
    ck_assert_int_eq(t[2], 0);
    ck_assert_int_eq(t[3], 1);
    /* All zero: floor scale 1e-5, all codes zero. */
    float z[4] = {0};
    bn_ternarize_absmean(z, 4, t, &s);
    ck_assert_float_eq(s, 1e-5f);
    ck_assert_int_eq(t[0] | t[1] | t[2] | t[3], 0);
}
END_TEST

/* The command line: bad input exits non-zero with a message naming the file. */
START_TEST(test_cli_errors)
{
    const char *bitnet = getenv("BN_BITNET");
    char garbage[512], out[512], cmd[2048];
    snprintf(garbage, sizeof garbage, "%s", bn_test_path("garbage.bin"));
    snprintf(out, sizeof out, "%s", bn_test_path("cli-out.txt"));
    store(garbage, (const uint8_t *)"GGUF\x03\0\0\0garbage", 15);
    const char *cmds[] = {"convert '%s' /dev/null", "inspect '%s'", "inspect --verify '%s'", "run -m '%s' -p hi -n 1"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char sub[1024];
        snprintf(sub, sizeof sub, cmds[i], garbage);
        snprintf(cmd, sizeof cmd, "'%s' %s >'%s' 2>&1", bitnet, sub, out);
        ck_assert_msg(bn_test_sh(cmd) != 0, "'bitnet %s' succeeded on garbage", sub);
        size_t len;
        char *msg = (char *)load(out, &len);
        ck_assert_msg(strstr(msg, garbage) != NULL, "'bitnet %s' did not name the file: %s", sub, msg);
        free(msg);
    }
    snprintf(cmd, sizeof cmd, "'%s' mkmodel nosuchshape '%s' >/dev/null 2>&1", bitnet, out);
    ck_assert_int_eq(bn_test_sh(cmd), 1);
    snprintf(cmd, sizeof cmd, "'%s' convert >/dev/null 2>&1", bitnet);
    ck_assert_int_eq(bn_test_sh(cmd), 2);
    unlink(garbage);
    unlink(out);
}
END_TEST

/* `bitnet run` and `bitnet bench` take every synthetic format: non-packed ones are converted
 * once into the cache (BITNET_CACHE) and served from it afterwards. */
START_TEST(test_cli_every_format)
{
    const char *bitnet = getenv("BN_BITNET");
    char cache[512], src[512], cmd[4096];
    snprintf(cache, sizeof cache, "%s", bn_test_path("cli-cache"));
    const char *formats[] = {"packed", "hf", "hf-bf16", "hf-sharded", "gguf-i2_s", "gguf-tq2_0", "gguf-f16"};
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        snprintf(src, sizeof src, "%s", bn_test_path(formats[i]));
        snprintf(cmd, sizeof cmd,
                 "'%s' mkmodel 'tiny,n_embd=256,n_ff=512' '%s' -f %s >/dev/null 2>&1 && "
                 "BITNET_CACHE='%s' '%s' run -m '%s' -p 'Hello' -n 4 --temp 0 -t 1 >/dev/null 2>&1 && "
                 "BITNET_CACHE='%s' '%s' bench -m '%s' -p 8 -n 4 -r 1 -t 1 >/dev/null 2>&1",
                 bitnet, src, formats[i], cache, bitnet, src, cache, bitnet, src);
        ck_assert_msg(bn_test_sh(cmd) == 0, "run/bench failed on format %s", formats[i]);
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", src);
        bn_test_sh(cmd);
    }
    /* six conversions, one cache entry each; the packed file was used in place */
    snprintf(cmd, sizeof cmd, "test $(ls '%s' | grep -c 'bnpk$') -eq 6", cache);
    ck_assert_int_eq(bn_test_sh(cmd), 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", cache);
    bn_test_sh(cmd);
}
END_TEST

START_TEST(test_shapes)
{
    bn_config c;
    bn_error err;
    ck_assert_int_eq(bn_synth_shape("2b4t", &c, &err), 0);
    ck_assert_uint_eq(c.n_embd, 2560);
    ck_assert_uint_eq(c.n_layer, 30);
    ck_assert_uint_eq(c.n_head, 20);
    ck_assert_uint_eq(c.n_head_kv, 5);
    ck_assert_uint_eq(c.n_ff, 6912);
    ck_assert_uint_eq(c.n_vocab, 128256);
    ck_assert_uint_eq(c.n_ctx_max, 4096);
    ck_assert_float_eq(c.rope_theta, 500000.0f);
    ck_assert_int_eq(bn_synth_shape("2b4t,n_layer=3,n_vocab=1024", &c, &err), 0);
    ck_assert_uint_eq(c.n_layer, 3);
    ck_assert_uint_eq(c.n_vocab, 1024);
    ck_assert_int_ne(bn_synth_shape("huge", &c, &err), 0);
    ck_assert_int_ne(bn_synth_shape("tiny,n_head=3", &c, &err), 0);
    ck_assert_int_ne(bn_synth_shape("tiny,bogus=1", &c, &err), 0);
    ck_assert_int_ne(bn_synth_shape("tiny,n_embd=4294967296", &c, &err), 0);
}
END_TEST

/* ---- families: presets, format 1.2 flags, untied heads ---------------------------------- */

/* Packs synthetic s (built-in vocabulary of its n_vocab) to path with ternary packing fmt. */
static void pack_synth(const bn_synth *sy, const char *path, bn_tern_fmt fmt)
{
    bn_error err = {{0}};
    bn_vocab *v = bn_vocab_builtin(sy->cfg.n_vocab, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    bn_source *src;
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    po.tern = fmt;
    ck_assert_int_eq(bn_source_open_synth(sy, v, &src, &err), 0);
    ck_assert_msg(bn_pack_write(src, path, &po, &err) == 0, "%s", err.msg);
    bn_source_close(src);
    bn_vocab_free(v);
}

/* The f16 head rows a model must use: "output" rows when untied, the embedding when tied. */
static void want_head_row(const bn_synth *sy, uint32_t r, float *row)
{
    if (sy->cfg.tied) bn_synth_embedding_row(sy, r, row);
    else bn_synth_output_row(sy, r, row);
    for (uint32_t i = 0; i < sy->cfg.n_embd; i++) row[i] = bn_f16_to_f32(bn_f32_to_f16(row[i]));
}

/* Every family's preset, shrunk by overrides where the real shape is large, keeps the quirks
 * that matter (head_dim 96/100/128/256, GQA 1-4, K not a multiple of 128, untied heads, no
 * sub-norms) and must pack and open with exactly its config and the right header flags. */
static const struct {
    const char *spec;
    enum bn_family family;
    uint32_t head_dim, n_head_kv;
} family_cases[] = {
    {"tiny-1bitllm", BN_FAM_1BITLLM, 48, 8},
    {"tiny-llama3", BN_FAM_LLAMA3, 64, 1},
    {"tiny-falcon3", BN_FAM_FALCON3, 64, 3},
    {"small,n_layer=1,n_vocab=512", BN_FAM_BITNET, 64, 2},
    {"small,family=falcon3,n_layer=1,n_vocab=512", BN_FAM_FALCON3, 64, 2},
    {"2b4t,n_layer=1,n_embd=256,n_head=2,n_head_kv=1,n_ff=256,n_vocab=512,n_ctx_max=256", BN_FAM_BITNET, 128, 1},
    {"1bitllm-large,n_layer=1,n_embd=192,n_head=2,n_head_kv=2,n_ff=256,n_vocab=512,n_ctx_max=256", BN_FAM_1BITLLM, 96, 2},
    {"1bitllm-3b,n_layer=1,n_embd=400,n_head=4,n_head_kv=4,n_ff=432,n_vocab=512,n_ctx_max=256", BN_FAM_1BITLLM, 100, 4},
    {"llama3-8b-1.58,n_layer=1,n_embd=512,n_head=4,n_head_kv=1,n_ff=512,n_vocab=512,n_ctx_max=256", BN_FAM_LLAMA3, 128, 1},
    {"falcon3-1b-1.58,n_layer=1,n_embd=512,n_head=2,n_head_kv=1,n_ff=512,n_vocab=512,n_ctx_max=256", BN_FAM_FALCON3, 256, 1},
    {"falcon3-3b-1.58,n_layer=1,n_embd=768,n_head=3,n_head_kv=1,n_ff=256,n_vocab=512,n_ctx_max=256", BN_FAM_FALCON3, 256, 1},
    {"falcon3-7b-1.58,n_layer=1,n_embd=768,n_head=3,n_head_kv=1,n_ff=512,n_vocab=512,n_ctx_max=256", BN_FAM_FALCON3, 256, 1},
    {"falcon3-10b-1.58,n_layer=2,n_embd=768,n_head=3,n_head_kv=1,n_ff=256,n_vocab=512,n_ctx_max=256", BN_FAM_FALCON3, 256, 1},
};

static void check_family_file(const bn_synth *sy, const char *path)
{
    bn_error err = {{0}};
    bn_model *m;
    ck_assert_msg(bn_model_open(path, &m, &err) == 0, "%s", err.msg);
    const bn_config *c = &sy->cfg;
    ck_assert_int_eq(memcmp(&m->cfg, c, sizeof *c), 0);
    ck_assert_uint_eq(m->version_major, 1);
    ck_assert_uint_eq(m->version_minor, 3);
    bn_file_header h;
    memcpy(&h, m->map, sizeof h);
    ck_assert_uint_eq(h.flags, c->no_sub_norms ? BN_FILE_FLAG_NO_SUB_NORMS : 0);
    ck_assert_msg(bn_model_verify(m, &err) == 0, "%s", err.msg);
    /* token_embd (+ output when untied) + output_norm + output_q8 and its 3 row vectors + its
     * planes and their 2 bounds + layers */
    uint32_t per_layer = c->no_sub_norms ? BN_LT_COUNT - 2 : BN_LT_COUNT;
    ck_assert_uint_eq(m->n_tensors, 1 + !c->tied + 1 + 4 + 3 + c->n_layer * per_layer);
    check_planes(m);
    char name[BN_NAME_MAX];
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const bn_layer_weights *w = &m->layers[l];
        ck_assert_int_eq(w->attn_sub_norm == NULL, (int)c->no_sub_norms);
        ck_assert_int_eq(w->ffn_sub_norm == NULL, (int)c->no_sub_norms);
        bn_layer_tensor_name(name, sizeof name, l, "ffn_sub_norm");
        ck_assert_int_eq(bn_model_tensor(m, name) == NULL, (int)c->no_sub_norms);
        ck_assert_uint_eq(w->wk->rows, (uint64_t)c->n_head_kv * c->head_dim);
        ck_assert_uint_eq(w->wdown->cols, c->n_ff);
        const bn_tensor *mats[7] = {w->wq, w->wk, w->wv, w->wo, w->wgate, w->wup, w->wdown};
        for (int i = 0; i < 7; i++) check_layer_tensor(sy, m, mats[i], mats[i]->name);
    }
    /* The head: its f16 rows, and the int8 copy quantized from those same rows. */
    const bn_tensor *out = bn_model_tensor(m, "output");
    ck_assert_int_eq(out == NULL, (int)c->tied);
    ck_assert_ptr_eq(m->lm_head_f16, c->tied ? (const void *)m->tok_embd : out->data);
    float *row = malloc(c->n_embd * sizeof *row), *emb = malloc(c->n_embd * sizeof *emb);
    int8_t *q = malloc(m->lm_head_cols_padded);
    for (uint32_t r = 0; r < c->n_vocab; r += 61) {
        want_head_row(sy, r, row);
        bn_synth_embedding_row(sy, r, emb);
        if (!c->tied) ck_assert_msg(memcmp(row, emb, c->n_embd * sizeof *row) != 0, "output row %u equals token_embd's", r);
        for (uint32_t i = 0; i < c->n_embd; i++) {
            ck_assert_float_eq(bn_f16_to_f32(m->lm_head_f16[(size_t)r * c->n_embd + i]), row[i]);
            ck_assert_float_eq(bn_f16_to_f32(m->tok_embd[(size_t)r * c->n_embd + i]), emb[i]);
        }
        float s;
        bn_quant_rows_i8(row, c->n_embd, m->lm_head_cols_padded, q, &s);
        ck_assert_float_eq(m->lm_head_i8_scale[r], s);
        ck_assert_int_eq(memcmp(q, m->lm_head_i8 + (size_t)r * m->lm_head_cols_padded, m->lm_head_cols_padded), 0);
    }
    free(row);
    free(emb);
    free(q);
    bn_model_close(m);
}

START_TEST(test_family_presets_pack)
{
    const char *path = bn_test_path("family.bnpk");
    for (size_t i = 0; i < sizeof family_cases / sizeof family_cases[0]; i++) {
        bn_synth sy = {.seed = 11 + i};
        bn_error err = {{0}};
        ck_assert_msg(bn_synth_parse(family_cases[i].spec, &sy, &err) == 0, "%s: %s", family_cases[i].spec, err.msg);
        ck_assert_uint_eq(sy.seed, 11 + i);
        ck_assert_uint_eq(sy.family, family_cases[i].family);
        ck_assert_uint_eq(sy.cfg.head_dim, family_cases[i].head_dim);
        ck_assert_uint_eq(sy.cfg.n_head_kv, family_cases[i].n_head_kv);
        const bn_family_info *f = bn_family_get(sy.family);
        ck_assert_ptr_nonnull(f);
        ck_assert_uint_eq(sy.cfg.act, f->act);
        ck_assert_uint_eq(sy.cfg.tied, f->tied);
        ck_assert_uint_eq(sy.cfg.no_sub_norms, f->no_sub_norms);
        pack_synth(&sy, path, i % 2 ? BN_TERN_I2 : BN_TERN_T5);
        check_family_file(&sy, path);
        unlink(path);
    }
}
END_TEST

/* A file of the plain Llama block whose flag is cleared: the reader wants the sub-norms and
 * names the first one missing. */
START_TEST(test_no_sub_norms_flag_cleared)
{
    const char *good = bn_test_path("nosub.bnpk"), *bad = bn_test_path("nosub_bad.bnpk");
    bn_synth sy = {.seed = 5};
    bn_error err = {{0}};
    ck_assert_int_eq(bn_synth_parse("tiny-llama3", &sy, &err), 0);
    ck_assert_uint_eq(sy.cfg.no_sub_norms, 1);
    pack_synth(&sy, good, BN_TERN_T5);
    size_t len;
    uint8_t *buf = load(good, &len);
    ((bn_file_header *)buf)->flags = 0;
    fix_checksum(buf);
    expect_open_error(bad, buf, len, "'blk.0.attn_sub_norm' is missing", NULL);
    free(buf);
    unlink(good);
    unlink(bad);
}
END_TEST

/* Format 1.0, 1.1 and 1.2 files (flags 0, a BPE tokenizer section with model_flags 0, as their
 * writers left them) still open, with the BitNet block. Made from a 1.3 file by hand, so no
 * fixture is needed; 1.2 and older lack the planes, 1.0 also the screen bounds. */
START_TEST(test_old_versions_open)
{
    const char *good = bn_test_path("v13.bnpk"), *old = bn_test_path("v12.bnpk");
    write_packed(good, BN_TERN_T5, BN_PACK_LM_PLANES);
    size_t len;
    uint8_t *buf = load(good, &len);
    bn_file_header *h = (bn_file_header *)buf;
    ck_assert_uint_eq(h->version_major, 1);
    ck_assert_uint_eq(h->version_minor, 3);
    ck_assert_uint_eq(h->flags, 0);
    /* 1.2 had no planes: hide them under unrelated names */
    memcpy(entry(buf, "output_q8.planes")->name, "x.planes", 9);
    memcpy(entry(buf, "output_q8.planes.err")->name, "x.planes.err", 13);
    memcpy(entry(buf, "output_q8.planes.norm")->name, "x.planes.norm", 14);
    for (uint32_t minor = 3; minor-- > 0;) { /* 1.2, 1.1, then 1.0 */
        h->version_minor = minor;
        if (minor == 0) { /* 1.0 had no output_q8.err/.norm: hide them under unrelated names */
            memcpy(entry(buf, "output_q8.err")->name, "x.err", 6);
            memcpy(entry(buf, "output_q8.norm")->name, "x.norm", 7);
        }
        fix_checksum(buf);
        store(old, buf, len);
        bn_model *m;
        bn_error err = {{0}};
        ck_assert_msg(bn_model_open(old, &m, &err) == 0, "1.%u: %s", minor, err.msg);
        ck_assert_uint_eq(m->version_minor, minor);
        ck_assert_int_eq(memcmp(&m->cfg, &tiny.cfg, sizeof m->cfg), 0);
        ck_assert_ptr_nonnull(m->layers[0].attn_sub_norm);
        ck_assert_ptr_nonnull(m->layers[1].ffn_sub_norm);
        ck_assert_int_eq(m->lm_head_i8_err == NULL, minor == 0);
        ck_assert_ptr_nonnull(m->lm_head_i8);
        ck_assert_ptr_null(m->lm_head_planes);
        ck_assert_uint_eq(m->lm_head_planes_cols, 0);
        for (int j = 0; j < 3; j++) ck_assert(!m->lm_head_plane_err[j] && !m->lm_head_plane_norm[j]);
        bn_model_close(m);
    }
    free(buf);
    unlink(good);
    unlink(old);
}
END_TEST

/* The default packing (1.3) has the planes of output_q8, also when neither n_vocab nor n_embd
 * fills whole tiles and 128-column groups (padding rows and columns); --lm-head i8 writes the
 * 1.2 set, whose int8 copy is byte-identical. */
START_TEST(test_planes_default)
{
    const char *path = bn_test_path("planes.bnpk");
    bn_error err = {{0}};
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    ck_assert_int_eq(po.lm_head_i8, BN_PACK_LM_PLANES);
    const char *specs[] = {"tiny", "tiny,n_embd=192,n_head=6,n_vocab=500"};
    for (size_t i = 0; i < 2; i++) {
        bn_synth sy = {.seed = 9};
        ck_assert_int_eq(bn_synth_parse(specs[i], &sy, &err), 0);
        pack_synth(&sy, path, BN_TERN_T5);
        bn_model *m;
        ck_assert_msg(bn_model_open(path, &m, &err) == 0, "%s: %s", specs[i], err.msg);
        ck_assert_uint_eq(m->version_minor, 3);
        ck_assert_msg(bn_model_verify(m, &err) == 0, "%s", err.msg);
        if (i == 1) ck_assert(m->cfg.n_vocab % BN_U2_TILE && bn_u2_cols_padded(m->cfg.n_embd) > m->lm_head_cols_padded);
        check_planes(m);
        ck_assert_ptr_nonnull(strstr(m->source, "lm_head: planes\n"));
        bn_model_close(m);
    }
    unlink(path);
}
END_TEST

START_TEST(test_planes_i8_only)
{
    char a[512], b[512];
    snprintf(a, sizeof a, "%s", bn_test_path("lm_planes.bnpk"));
    snprintf(b, sizeof b, "%s", bn_test_path("lm_i8.bnpk"));
    write_packed(a, BN_TERN_T5, BN_PACK_LM_PLANES);
    write_packed(b, BN_TERN_T5, BN_PACK_LM_I8);
    bn_model *mp, *mi;
    bn_error err = {{0}};
    ck_assert_msg(bn_model_open(a, &mp, &err) == 0, "%s", err.msg);
    ck_assert_msg(bn_model_open(b, &mi, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(mi->version_minor, 3);
    ck_assert_msg(bn_model_verify(mi, &err) == 0, "%s", err.msg);
    ck_assert_ptr_null(mi->lm_head_planes);
    ck_assert_ptr_null(mi->lm_head_plane_err[0]);
    const char *gone[] = {"output_q8.planes", "output_q8.planes.err", "output_q8.planes.norm"};
    for (int i = 0; i < 3; i++) ck_assert_ptr_null(bn_model_tensor(mi, gone[i]));
    ck_assert_uint_eq(mi->n_tensors + 3, mp->n_tensors);
    ck_assert_ptr_nonnull(strstr(mi->source, "lm_head: i8\n"));
    const char *same[] = {"output_q8", "output_q8.scale", "output_q8.err", "output_q8.norm", "blk.1.ffn_down"};
    for (int i = 0; i < 5; i++) {
        const bn_tensor *x = bn_model_tensor(mp, same[i]), *y = bn_model_tensor(mi, same[i]);
        ck_assert_uint_eq(x->nbytes, y->nbytes);
        ck_assert_msg(memcmp(x->data, y->data, x->nbytes) == 0, "%s differs", same[i]);
    }
    bn_model_close(mp);
    bn_model_close(mi);
    /* an option value outside BN_PACK_LM_* is refused before anything is written */
    bn_source *src;
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    po.lm_head_i8 = 3;
    unlink(b);
    ck_assert_int_eq(bn_source_open_synth(&tiny, tiny_vocab, &src, &err), 0);
    ck_assert_int_ne(bn_pack_write(src, b, &po, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "lm_head_i8 3"));
    bn_source_close(src);
    ck_assert_int_ne(access(b, F_OK), 0);
    unlink(a);
}
END_TEST

/* `--lm-head planes|i8|f16` of mkmodel and convert picks the copies; `bitnet inspect` lists the
 * planes with the other tensors. */
START_TEST(test_cli_lm_head)
{
    const char *bitnet = getenv("BN_BITNET");
    char out[512], hf[512], cmd[4096];
    snprintf(out, sizeof out, "%s", bn_test_path("cli-lm.bnpk"));
    snprintf(hf, sizeof hf, "%s", bn_test_path("cli-lm-hf"));
    static const struct {
        const char *opt;
        int q8, planes;
    } cases[] = {{"", 1, 3}, {"--lm-head planes", 1, 3}, {"--lm-head i8", 1, 0}, {"--lm-head f16", 0, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int conv = 0; conv < 2; conv++) {
            if (conv)
                snprintf(cmd, sizeof cmd, "'%s' mkmodel tiny '%s' -f hf >/dev/null 2>&1 && '%s' convert %s '%s' '%s' >/dev/null 2>&1",
                         bitnet, hf, bitnet, cases[i].opt, hf, out);
            else snprintf(cmd, sizeof cmd, "'%s' mkmodel %s tiny '%s' >/dev/null 2>&1", bitnet, cases[i].opt, out);
            ck_assert_msg(bn_test_sh(cmd) == 0, "%s", cmd);
            snprintf(cmd, sizeof cmd,
                     "o=$('%s' inspect '%s') && test $(echo \"$o\" | grep -c '^output_q8 ') -eq %d && "
                     "test $(echo \"$o\" | grep -c '^output_q8\\.planes') -eq %d && echo \"$o\" | grep -q 'format 1\\.3'",
                     bitnet, out, cases[i].q8, cases[i].planes);
            ck_assert_msg(bn_test_sh(cmd) == 0, "'%s' (%s): inspect shows the wrong lm_head tensors", cases[i].opt,
                          conv ? "convert" : "mkmodel");
        }
    snprintf(cmd, sizeof cmd, "'%s' mkmodel --lm-head bits tiny '%s' >/dev/null 2>&1", bitnet, out);
    ck_assert_int_eq(bn_test_sh(cmd), 2);
    snprintf(cmd, sizeof cmd, "'%s' convert --lm-head bits '%s' '%s' >/dev/null 2>&1", bitnet, hf, out);
    ck_assert_int_eq(bn_test_sh(cmd), 2);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", hf, out);
    bn_test_sh(cmd);
}
END_TEST

/* The packer reports every tensor once, in directory order, with growing byte counts that end
 * at the file's size. */
typedef struct progress_log {
    uint32_t calls, last_i, n;
    uint64_t last_bytes, total;
    char names[64][BN_NAME_MAX];
} progress_log;

static void on_progress(void *user, uint32_t i, uint32_t n, uint64_t done, uint64_t total, const char *name)
{
    progress_log *p = user;
    ck_assert_uint_eq(i, p->last_i + 1);
    ck_assert_uint_ge(done, p->last_bytes);
    ck_assert_uint_le(done, total);
    if (p->calls < 64) snprintf(p->names[p->calls], BN_NAME_MAX, "%s", name);
    p->calls++;
    p->last_i = i;
    p->n = n;
    p->last_bytes = done;
    p->total = total;
}

START_TEST(test_pack_progress)
{
    const char *path = bn_test_path("progress.bnpk");
    bn_error err = {{0}};
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    ck_assert_ptr_null(po.progress);
    ck_assert_ptr_null(po.progress_user);
    progress_log log = {0};
    po.progress = on_progress;
    po.progress_user = &log;
    bn_source *src;
    ck_assert_int_eq(bn_source_open_synth(&tiny, tiny_vocab, &src, &err), 0);
    ck_assert_msg(bn_pack_write(src, path, &po, &err) == 0, "%s", err.msg);
    bn_source_close(src);
    bn_model *m;
    ck_assert_msg(bn_model_open(path, &m, &err) == 0, "%s", err.msg);
    ck_assert_uint_le(m->n_tensors, 64);
    ck_assert_uint_eq(log.calls, m->n_tensors);
    ck_assert_uint_eq(log.n, m->n_tensors);
    for (uint32_t i = 0; i < m->n_tensors; i++) ck_assert_str_eq(log.names[i], m->tensors[i].name);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(log.total, (uint64_t)st.st_size);
    ck_assert_uint_eq(log.last_bytes, (uint64_t)st.st_size);
    bn_model_close(m);
    unlink(path);
}
END_TEST

/* ---- the per-layer tensor table and the family table ------------------------------------- */

START_TEST(test_tensor_table)
{
    int n_tern = 0, n_sub = 0, n_qk = 0;
    for (int i = 0; i < BN_LT_COUNT; i++) {
        const bn_layer_tensor_def *d = &bn_layer_tensors[i];
        ck_assert_int_eq(d->id, i); /* rows indexed by their id */
        ck_assert_ptr_eq(bn_layer_tensor_find(d->canon), d);
        ck_assert_int_eq(d->hf == NULL, d->sub_norm); /* only sub-norms take their HF name from the family */
        ck_assert_int_eq(d->rows == BN_DIM_ONE, !d->ternary);
        n_tern += d->ternary;
        n_sub += d->sub_norm;
        n_qk += d->qk_rope;
    }
    ck_assert_int_eq(n_tern, 7);
    ck_assert_int_eq(n_sub, 2);
    ck_assert_int_eq(n_qk, 2);
    ck_assert_ptr_null(bn_layer_tensor_find("attn_w"));
    uint32_t l = 0;
    const bn_layer_tensor_def *d = bn_layer_tensor_parse("blk.12.ffn_down", &l);
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(d->id, BN_LT_FFN_DOWN);
    ck_assert_uint_eq(l, 12);
    const char *bad[] = {"token_embd", "blk..attn_q", "blk.x.attn_q", "blk.1.", "blk.1attn_q", "blk.1.attn_qq",
                         "blk.99999999999.attn_q", "output_q8.scale"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(bn_layer_tensor_parse(bad[i], &l) == NULL, "'%s' parsed as a layer tensor", bad[i]);
    /* shapes under a GQA config whose q width is n_head * head_dim */
    bn_synth sy = {0};
    bn_error err;
    ck_assert_int_eq(bn_synth_parse("tiny-falcon3", &sy, &err), 0);
    const bn_config *c = &sy.cfg;
    uint64_t rows, cols;
    bn_layer_tensor_shape(c, &bn_layer_tensors[BN_LT_ATTN_K], &rows, &cols);
    ck_assert_uint_eq(rows, 3 * 64);
    ck_assert_uint_eq(cols, 384);
    bn_layer_tensor_shape(c, &bn_layer_tensors[BN_LT_ATTN_OUTPUT], &rows, &cols);
    ck_assert_uint_eq(rows, 384);
    ck_assert_uint_eq(cols, 6 * 64);
    bn_layer_tensor_shape(c, &bn_layer_tensors[BN_LT_FFN_SUB_NORM], &rows, &cols);
    ck_assert_uint_eq(rows, 1);
    ck_assert_uint_eq(cols, c->n_ff);
    ck_assert_uint_eq(bn_dim_size(c, BN_DIM_ONE), 1);
    ck_assert_uint_eq(bn_dim_size(c, BN_DIM_FF), 640);
    ck_assert_int_eq(bn_layer_tensor_present(c, &bn_layer_tensors[BN_LT_ATTN_SUB_NORM]), 0);
    ck_assert_int_eq(bn_layer_tensor_present(c, &bn_layer_tensors[BN_LT_ATTN_Q]), 1);
    ck_assert_int_eq(bn_layer_tensor_present(&tiny.cfg, &bn_layer_tensors[BN_LT_FFN_SUB_NORM]), 1);
    char name[BN_NAME_MAX];
    bn_layer_tensor_name(name, sizeof name, 7, bn_layer_tensors[BN_LT_ATTN_V].canon);
    ck_assert_str_eq(name, "blk.7.attn_v");
    /* families */
    ck_assert_ptr_eq(bn_family_get(0), bn_family_get(BN_FAM_BITNET));
    ck_assert_ptr_null(bn_family_get(99));
    ck_assert_ptr_null(bn_family_find("gpt2"));
    const char *fams[] = {"bitnet", "1bitllm", "llama3", "falcon3", "falcon-e"};
    for (size_t i = 0; i < 5; i++) {
        const bn_family_info *f = bn_family_find(fams[i]);
        ck_assert_ptr_nonnull(f);
        ck_assert_ptr_eq(bn_family_get(f->id), f);
        ck_assert_int_eq(f->hf_attn_sub_norm == NULL, (int)f->no_sub_norms);
        ck_assert_int_eq(f->gguf_qk_permuted, !strcmp(f->gguf_arch, "llama"));
    }
    /* llama.cpp's q/k permutation is a bijection within each head */
    uint8_t seen[256] = {0};
    for (uint64_t r = 0; r < 256; r++) {
        uint64_t p = bn_qk_permuted_row(r, 64);
        ck_assert_uint_lt(p, 256);
        ck_assert_uint_eq(p / 64, r / 64);
        seen[p]++;
    }
    for (int i = 0; i < 256; i++) ck_assert_uint_eq(seen[i], 1);
    ck_assert_uint_eq(bn_qk_permuted_row(32, 64), 1); /* HF row hd/2 (second half's first) -> GGUF row 1 */
}
END_TEST

/* ---- bn_synth_parse ------------------------------------------------------------------------ */

START_TEST(test_synth_parse_presets)
{
    bn_synth s = {.seed = 42};
    bn_error err = {{0}};
    /* real shapes (parsed only: never packed here) */
    ck_assert_int_eq(bn_synth_parse("llama3-8b-1.58", &s, &err), 0);
    ck_assert_uint_eq(s.seed, 42);
    ck_assert_uint_eq(s.family, BN_FAM_LLAMA3);
    bn_config w = {4096, 32, 32, 8, 128, 14336, 128256, 8192, 500000.0f, 1e-5f, BN_ACT_SILU, 0, 128000, 128009, 128009, 1};
    ck_assert_int_eq(memcmp(&s.cfg, &w, sizeof w), 0);
    ck_assert_int_eq(bn_synth_parse("falcon3-1b-1.58", &s, &err), 0);
    w = (bn_config){2048, 18, 8, 4, 256, 8192, 131072, 8192, 1000042.0f, 1e-6f, BN_ACT_SILU, 0, -1, 11, 11, 1};
    ck_assert_int_eq(memcmp(&s.cfg, &w, sizeof w), 0);
    ck_assert_uint_eq(s.family, BN_FAM_FALCON3);
    ck_assert_int_eq(bn_synth_parse("falcon3-3b-1.58", &s, &err), 0);
    ck_assert_uint_eq(s.cfg.n_embd, 3072);
    ck_assert_uint_eq(s.cfg.n_ff, 9216);
    ck_assert_uint_eq(s.cfg.n_layer, 22);
    ck_assert_uint_eq(s.cfg.n_head / s.cfg.n_head_kv, 3);
    ck_assert_int_eq(bn_synth_parse("falcon3-7b-1.58", &s, &err), 0);
    ck_assert_uint_eq(s.cfg.n_ff, 23040);
    ck_assert_uint_eq(s.cfg.n_layer, 28);
    ck_assert_int_eq(bn_synth_parse("falcon3-10b-1.58", &s, &err), 0);
    ck_assert_uint_eq(s.cfg.n_layer, 40);
    ck_assert_uint_eq(s.cfg.n_ctx_max, 32768);
    ck_assert_int_eq(bn_synth_parse("1bitllm-large", &s, &err), 0);
    w = (bn_config){1536, 24, 16, 16, 96, 4096, 32002, 2048, 10000.0f, 1e-5f, BN_ACT_SILU, 1, 1, 2, -1, 0};
    ck_assert_int_eq(memcmp(&s.cfg, &w, sizeof w), 0);
    ck_assert_uint_eq(s.family, BN_FAM_1BITLLM);
    ck_assert_int_eq(bn_synth_parse("1bitllm-3b", &s, &err), 0);
    ck_assert_uint_eq(s.cfg.head_dim, 100);
    ck_assert_uint_eq(s.cfg.n_ff, 8640);
    ck_assert_uint_ne(s.cfg.n_ff % 128, 0);
    ck_assert_int_eq(bn_synth_parse("2b4t", &s, &err), 0);
    ck_assert_uint_eq(s.family, BN_FAM_BITNET);
    ck_assert_uint_eq(s.cfg.act, BN_ACT_RELU2);
    ck_assert_uint_eq(s.cfg.tied, 1);
    ck_assert_uint_eq(s.cfg.no_sub_norms, 0);
    ck_assert_int_eq(bn_synth_parse("tiny-1bitllm", &s, &err), 0);
    ck_assert_uint_eq(s.cfg.head_dim, 48);
    ck_assert_uint_eq(s.cfg.n_head, s.cfg.n_head_kv);
    ck_assert_uint_ne(s.cfg.n_ff % 128, 0);
    ck_assert_uint_eq(s.cfg.n_ff % 16, 0);
    /* the shape wrapper gives the same config */
    bn_config c;
    ck_assert_int_eq(bn_synth_shape("tiny-1bitllm", &c, &err), 0);
    ck_assert_int_eq(memcmp(&c, &s.cfg, sizeof c), 0);
}
END_TEST

START_TEST(test_synth_parse_overrides)
{
    bn_synth s = {0};
    bn_error err = {{0}};
    ck_assert_int_eq(bn_synth_parse("tiny,family=llama3", &s, &err), 0);
    ck_assert_uint_eq(s.family, BN_FAM_LLAMA3);
    ck_assert_uint_eq(s.cfg.act, BN_ACT_SILU);
    ck_assert_uint_eq(s.cfg.tied, 0);
    ck_assert_uint_eq(s.cfg.no_sub_norms, 1);
    ck_assert_uint_eq(s.cfg.n_embd, 128);
    /* family= is applied first wherever it stands: explicit block settings win */
    ck_assert_int_eq(bn_synth_parse("tiny,act=relu2,tied=1,sub_norms=1,family=falcon3", &s, &err), 0);
    ck_assert_uint_eq(s.family, BN_FAM_FALCON3);
    ck_assert_uint_eq(s.cfg.act, BN_ACT_RELU2);
    ck_assert_uint_eq(s.cfg.tied, 1);
    ck_assert_uint_eq(s.cfg.no_sub_norms, 0);
    ck_assert_int_eq(bn_synth_parse("tiny-llama3,sub_norms=1,act=silu,norm_eps=1e-6,rope_theta=1000042", &s, &err), 0);
    ck_assert_uint_eq(s.cfg.no_sub_norms, 0);
    ck_assert_float_eq(s.cfg.norm_eps, 1e-6f);
    ck_assert_float_eq(s.cfg.rope_theta, 1000042.0f);
    /* head_dim: given alone, n_head follows n_embd; given n_embd alone, head_dim follows */
    ck_assert_int_eq(bn_synth_parse("tiny,head_dim=64", &s, &err), 0);
    ck_assert_uint_eq(s.cfg.n_head, 2);
    ck_assert_uint_eq(s.cfg.head_dim, 64);
    ck_assert_int_eq(bn_synth_parse("tiny,n_embd=256", &s, &err), 0);
    ck_assert_uint_eq(s.cfg.head_dim, 64);
    ck_assert_int_eq(bn_synth_parse("tiny,n_embd=384,n_head=4,head_dim=96,n_head_kv=1", &s, &err), 0);
    ck_assert_uint_eq(s.cfg.head_dim, 96);
    ck_assert_int_eq(bn_synth_parse("tiny-falcon3,n_embd=512,n_head=2,n_head_kv=1", &s, &err), 0);
    ck_assert_uint_eq(s.cfg.head_dim, 256);
    /* a vocabulary too small for a preset's ids drops them (the vocabulary sets them) */
    ck_assert_int_eq(bn_synth_parse("llama3-8b-1.58,n_vocab=1024", &s, &err), 0);
    ck_assert_int_eq(s.cfg.bos, -1);
    ck_assert_int_eq(s.cfg.eos, -1);
    ck_assert_int_eq(bn_synth_parse("falcon3-1b-1.58,n_vocab=1024", &s, &err), 0);
    ck_assert_int_eq(s.cfg.eos, 11);
}
END_TEST

START_TEST(test_synth_parse_errors)
{
    static const struct {
        const char *spec, *needle;
    } bad[] = {
        {"huge", "unknown shape 'huge'"},
        {"", "unknown shape"},
        {"llama3-8b", "unknown shape"},
        {"tiny,act=gelu", "act is relu2 or silu"},
        {"tiny,tied=2", "expected 0 or 1"},
        {"tiny,sub_norms=yes", "expected 0 or 1"},
        {"tiny,family=gpt2", "unknown family"},
        {"tiny,family=", "unknown family"},
        {"tiny,n_layer=2.5", "whole number"},
        {"tiny,n_layer=2x", "whole number"},
        {"tiny,n_layer=-1", "whole number"},
        {"tiny,n_embd=4294967296", "whole number"},
        {"tiny,n_layer", "expected key=value"},
        {"tiny,=3", "expected key=value"},
        {"tiny,bogus=1", "unknown key 'bogus'"},
        {"tiny,norm_eps=nan", "expected a number"},
        {"tiny,norm_eps=2", "norm_eps"},
        {"tiny,n_head=3", "head_dim"},
        {"tiny,head_dim=48", "head_dim"},
        {"tiny,n_embd=124,head_dim=31", "even"},
        {"tiny-1bitllm,n_head_kv=3", "n_head_kv 3 does not divide n_head 8"},
        {"tiny-falcon3,n_head_kv=4", "does not divide"},
        {"tiny,n_ff=200", "multiple of 16"},
        {"tiny,n_layer=0", "n_layer"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bn_synth s = {.seed = 9, .family = 77};
        bn_error err = {{0}};
        ck_assert_msg(bn_synth_parse(bad[i].spec, &s, &err) != 0, "'%s' was accepted", bad[i].spec);
        ck_assert_msg(strstr(err.msg, bad[i].needle) != NULL, "'%s': message lacks '%s': %s", bad[i].spec,
                      bad[i].needle, err.msg);
        ck_assert_uint_eq(s.family, 77); /* untouched on error */
        ck_assert_uint_eq(s.seed, 9);
    }
    char longspec[400];
    memset(longspec, 'a', sizeof longspec - 1);
    longspec[sizeof longspec - 1] = 0;
    bn_synth s = {0};
    bn_error err = {{0}};
    ck_assert_int_ne(bn_synth_parse(longspec, &s, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "too long"));
}
END_TEST

/* Divide-rule families: scale s = 1/b for a bf16 b, so bf16(1/s) == b and 1/b == s exactly
 * (the HF writer stores b, the reader divides). The latent weights still ternarize to the same
 * codes; for the latent family (1bitLLM) and 2B-4T also to the same scale. */
START_TEST(test_synth_scale_rules)
{
    const char *specs[] = {"tiny-llama3", "tiny-falcon3", "tiny-1bitllm", "tiny", "small,family=falcon-e"};
    const char *tensors[] = {"blk.0.attn_q", "blk.1.attn_k", "blk.0.ffn_down", "blk.1.ffn_up"};
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        bn_synth s = {.seed = 3};
        bn_error err = {{0}};
        ck_assert_msg(bn_synth_parse(specs[i], &s, &err) == 0, "%s", err.msg);
        int div = bn_family_get(s.family)->hf_weights == BN_HFW_PACKED_DIV;
        ck_assert_int_eq(div, i < 2 || i == 4);
        size_t rows = 32, cols = s.cfg.n_ff;
        float *w = malloc(rows * cols * sizeof *w);
        int8_t *t = malloc(rows * cols), *t2 = malloc(rows * cols);
        for (size_t k = 0; k < sizeof tensors / sizeof tensors[0]; k++) {
            float sc, sc2;
            bn_synth_ternary(&s, tensors[k], rows, cols, t, &sc);
            bn_synth_latent(&s, tensors[k], rows, cols, w);
            bn_ternarize_absmean(w, rows * cols, t2, &sc2);
            ck_assert_msg(memcmp(t, t2, rows * cols) == 0, "%s %s: latent codes differ", specs[i], tensors[k]);
            ck_assert(isfinite(sc) && sc > 0);
            float b = bn_bf16_to_f32(bn_f32_to_bf16(1.0f / sc));
            if (div) {
                ck_assert_msg(1.0f / b == sc, "%s %s: 1/bf16(1/s) = %a != s = %a", specs[i], tensors[k], 1.0f / b, sc);
                ck_assert_float_eq(bn_bf16_to_f32(bn_f32_to_bf16(1.0f / sc)), b);
                ck_assert(fabsf(sc2 - sc) <= 0.01f * sc2); /* near the absmean (~1/sqrt fan_in) */
            } else {
                ck_assert_float_eq(sc, sc2);
                ck_assert_float_eq(bn_bf16_to_f32(bn_f32_to_bf16(sc)), sc);
            }
        }
        free(w);
        free(t);
        free(t2);
    }
}
END_TEST

static void add_family_tests(TCase *tc)
{
    tcase_add_test(tc, test_family_presets_pack);
    tcase_add_test(tc, test_no_sub_norms_flag_cleared);
    tcase_add_test(tc, test_old_versions_open);
    tcase_add_test(tc, test_pack_progress);
    tcase_add_test(tc, test_tensor_table);
    tcase_add_test(tc, test_synth_parse_presets);
    tcase_add_test(tc, test_synth_parse_overrides);
    tcase_add_test(tc, test_synth_parse_errors);
    tcase_add_test(tc, test_synth_scale_rules);
}

int main(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("packed");
    tcase_add_checked_fixture(tc, setup_tiny, teardown_tiny);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_roundtrip_t5);
    tcase_add_test(tc, test_roundtrip_i2);
    tcase_add_test(tc, test_without_i8_lm_head);
    tcase_add_test(tc, test_load_copy);
    tcase_add_test(tc, test_deterministic);
    tcase_add_test(tc, test_bad_fields);
    tcase_add_test(tc, test_truncated);
    tcase_add_test(tc, test_flipped_byte_detected);
    tcase_add_test(tc, test_atomic_write_leaves_nothing_on_failure);
    tcase_add_test(tc, test_cross_format_identity);
    BN_TCASE_ADD_TEST_IF(tc, test_cross_format_identity_llama3,
                         llama3_fixture() ? NULL : "BN_FIXTURES_DIR/tokenizer/llama3-tokenizer.json not found");
    tcase_add_test(tc, test_convert_cache);
    tcase_add_test(tc, test_synth_exact_ternarization);
    tcase_add_test(tc, test_ternarize_rules);
    tcase_add_test(tc, test_shapes);
    BN_TCASE_ADD_TEST_IF(tc, test_cli_errors, bn_test_needs_env("BN_BITNET"));
    BN_TCASE_ADD_TEST_IF(tc, test_cli_every_format, bn_test_needs_env("BN_BITNET"));
    BN_TCASE_ADD_TEST_IF(tc, test_cli_verify_flipped, bn_test_needs_env("BN_BITNET"));
    add_family_tests(tc);
    tcase_add_test(tc, test_planes_default);
    tcase_add_test(tc, test_planes_i8_only);
    BN_TCASE_ADD_TEST_IF(tc, test_cli_lm_head, bn_test_needs_env("BN_BITNET"));
    suite_add_tcase(s, tc);
    return bn_test_exit("test_model", s);
}
