/* The packed model file: round trips, checksums, every class of bad input, cross-format
 * identity of conversions, and the conversion cache. */
#include <check.h>
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
    tiny.seed = 7;
    ck_assert_int_eq(bn_synth_shape("tiny", &tiny.cfg, &err), 0);
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
    bn_pack_opts po = {fmt, lm_i8};
    ck_assert_int_eq(bn_source_open_synth(&tiny, tiny_vocab, &src, &err), 0);
    ck_assert_msg(bn_pack_write(src, path, &po, &err) == 0, "%s", err.msg);
    bn_source_close(src);
}

static void check_layer_tensor(const bn_model *m, const bn_tensor *t, const char *name)
{
    size_t rows = t->rows, cols = t->cols;
    int8_t *want = malloc(rows * cols), *row = malloc(bn_tern_cols_padded(m->tern_fmt, cols));
    float scale;
    bn_synth_ternary(&tiny, name, rows, cols, want, &scale);
    ck_assert_float_eq(t->scale, scale);
    for (size_t r = 0; r < rows; r++) {
        bn_tern_unpack_row(m->tern_fmt, t->data, rows, cols, r, row);
        ck_assert_msg(memcmp(row, want + r * cols, cols) == 0, "%s row %zu differs", name, r);
    }
    free(want);
    free(row);
}

static void check_roundtrip(bn_tern_fmt fmt)
{
    const char *path = bn_test_path("roundtrip.bnpk");
    write_packed(path, fmt, 1);
    bn_model *m;
    bn_error err;
    ck_assert_msg(bn_model_open(path, &m, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(memcmp(&m->cfg, &tiny.cfg, sizeof m->cfg), 0);
    ck_assert_int_eq(m->tern_fmt, fmt);
    ck_assert_msg(bn_model_verify(m, &err) == 0, "%s", err.msg);
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
        for (int i = 0; i < 7; i++) check_layer_tensor(m, mats[i], mats[i]->name);
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
    write_packed(path, BN_TERN_T5, 0);
    bn_model *m;
    bn_error err;
    ck_assert_msg(bn_model_open(path, &m, &err) == 0, "%s", err.msg);
    ck_assert_ptr_null(m->lm_head_i8);
    ck_assert_ptr_null(bn_model_tensor(m, "output_q8"));
    bn_model_close(m);
    unlink(path);
}
END_TEST

START_TEST(test_deterministic)
{
    const char *a = bn_test_path("det_a.bnpk"), *b = bn_test_path("det_b.bnpk");
    write_packed(a, BN_TERN_T5, 1);
    write_packed(b, BN_TERN_T5, 1);
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
};

START_TEST(test_bad_fields)
{
    const char *good = bn_test_path("good.bnpk"), *bad = bn_test_path("bad.bnpk");
    write_packed(good, BN_TERN_T5, 1);
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
    write_packed(good, BN_TERN_T5, 1);
    size_t len;
    uint8_t *orig = load(good, &len);
    /* Every prefix of the metadata, then a stride through the data, then len - 1. */
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
    write_packed(path, BN_TERN_T5, 1);
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
    /* And `bitnet inspect --verify` exits non-zero on it. */
    const char *bitnet = getenv("BN_BITNET");
    if (bitnet) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "'%s' inspect --verify '%s' >/dev/null 2>&1", bitnet, path);
        ck_assert_int_eq(bn_test_sh(cmd), 1);
    }
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
    write_packed(ref, BN_TERN_T5, 1);
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

/* The same with Meta's Llama-3 tokenizer (the 2B-4T vocabulary): GGUF metadata, tokenizer.json
 * and the packed section must carry it identically, so whole files are byte-identical. */
START_TEST(test_cross_format_identity_llama3)
{
    const char *fx = getenv("BN_FIXTURES_DIR");
    char tok[1024];
    snprintf(tok, sizeof tok, "%s/tokenizer/llama3-tokenizer.json", fx ? fx : "");
    if (!fx || !*fx || access(tok, R_OK) != 0) {
        printf("SKIPPED: test_cross_format_identity_llama3: fixtures not found (BN_FIXTURES_DIR=%s)\n", fx ? fx : "");
        return;
    }
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
    if (!bitnet) {
        printf("SKIPPED: test_cli_errors: BN_BITNET not set (run through make check)\n");
        return;
    }
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
    if (!bitnet) {
        printf("SKIPPED: test_cli_every_format: BN_BITNET not set (run through make check)\n");
        return;
    }
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

int main(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("packed");
    tcase_add_checked_fixture(tc, setup_tiny, teardown_tiny);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_roundtrip_t5);
    tcase_add_test(tc, test_roundtrip_i2);
    tcase_add_test(tc, test_without_i8_lm_head);
    tcase_add_test(tc, test_deterministic);
    tcase_add_test(tc, test_bad_fields);
    tcase_add_test(tc, test_truncated);
    tcase_add_test(tc, test_flipped_byte_detected);
    tcase_add_test(tc, test_atomic_write_leaves_nothing_on_failure);
    tcase_add_test(tc, test_cross_format_identity);
    tcase_add_test(tc, test_cross_format_identity_llama3);
    tcase_add_test(tc, test_convert_cache);
    tcase_add_test(tc, test_synth_exact_ternarization);
    tcase_add_test(tc, test_ternarize_rules);
    tcase_add_test(tc, test_shapes);
    tcase_add_test(tc, test_cli_errors);
    tcase_add_test(tc, test_cli_every_format);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
