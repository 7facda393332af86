/* Hugging Face checkpoints: the safetensors reader, the HF source and the HF writers.
 *
 * Synthetic checkpoints are written in every HF form (packed uint8, bf16 latent, sharded) and
 * read back: every code, scale and float must equal what bn_synth_* generates, so the forms
 * agree with each other exactly. For every family (2B-4T, 1bitLLM, Llama3-8B-1.58, Falcon3)
 * each HF form, read and packed, gives the same packed file as the synthetic model itself. Every class of bad input must fail with a message naming the
 * file and the field at fault. */
#define _GNU_SOURCE
#include <check.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "kernels/half.h"
#include "model/family.h"
#include "model/hf_write.h"
#include "model/safetensors.h"
#include "model/source.h"
#include "model/source_synth.h"
#include "model/synth.h"
#include "model/tensor_table.h"
#include "model/ternarize.h"
#include "testutil.h"
#include "text/tokenizer.h"

/* ---- helpers --------------------------------------------------------------------------- */

static char *tmp_dir(void)
{
    const char *base = getenv("BN_TEST_TMPDIR");
    if (!base || !*base) base = "/tmp";
    char *t = NULL;
    ck_assert_int_gt(asprintf(&t, "%s/hfXXXXXX", base), 0);
    ck_assert_ptr_nonnull(mkdtemp(t));
    return t;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st; (void)flag; (void)f;
    return remove(p);
}

static void rm_rf(char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

static char *path_in(const char *dir, const char *name)
{
    char *p = bn_path_join(dir, name);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* The tiny synthetic model with the built-in vocabulary, as bitnet mkmodel sets it up. */
typedef struct {
    bn_synth s;
    bn_vocab *v;
} fixture;

static void fixture_init(fixture *f, const char *shape)
{
    bn_error err = {{0}};
    memset(f, 0, sizeof *f);
    f->s.seed = 7;
    ck_assert_msg(bn_synth_shape(shape, &f->s.cfg, &err) == 0, "%s", err.msg);
    f->v = bn_vocab_builtin(f->s.cfg.n_vocab, &err);
    ck_assert_msg(f->v != NULL, "%s", err.msg);
    f->s.cfg.bos = f->v->bos;
    f->s.cfg.eos = f->v->eos;
    f->s.cfg.eot = f->v->eot;
}

/* A fresh HF directory of the fixture in the given form. */
static char *write_hf(const fixture *f, int latent, int shards)
{
    bn_error err = {{0}};
    char *dir = tmp_dir();
    ck_assert_msg(bn_hf_write_synth(&f->s, f->v, dir, latent, shards, &err) == 0, "%s", err.msg);
    return dir;
}

static void vocab_eq(const bn_vocab *a, const bn_vocab *b)
{
    ck_assert_uint_eq(a->n_tokens, b->n_tokens);
    ck_assert_mem_eq(a->tok_off, b->tok_off, (a->n_tokens + 1) * sizeof *a->tok_off);
    ck_assert_mem_eq(a->text, b->text, a->tok_off[a->n_tokens]);
    ck_assert_mem_eq(a->type, b->type, a->n_tokens);
    ck_assert_uint_eq(a->n_merges, b->n_merges);
    if (a->n_merges) ck_assert_mem_eq(a->merges, b->merges, 2 * a->n_merges * sizeof *a->merges);
    ck_assert_int_eq(a->bos, b->bos);
    ck_assert_int_eq(a->eos, b->eos);
    ck_assert_int_eq(a->eot, b->eot);
    ck_assert_uint_eq(a->pre, b->pre);
    ck_assert_uint_eq(a->ignore_merges, b->ignore_merges);
}

static const char *const linears[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
static const char *const norms[] = {"attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm"};

/* [rows][cols] of layer tensor n ("attn_q"), from the shared tensor table. */
static void linear_shape(const bn_config *c, const char *n, uint64_t *rows, uint64_t *cols)
{
    const bn_layer_tensor_def *d = bn_layer_tensor_find(n);
    ck_assert_ptr_nonnull(d);
    bn_layer_tensor_shape(c, d, rows, cols);
}

/* Every tensor of the source equals the synthetic model; scale_mul is 1 except for the
 * bitlinear case, where the stored scale is divided instead of multiplied. */
static void check_source_matches(bn_source *src, const fixture *f, int bitlinear)
{
    bn_error err = {{0}};
    const bn_config *c = &f->s.cfg;
    ck_assert_uint_eq(src->cfg.n_embd, c->n_embd);
    ck_assert_uint_eq(src->cfg.n_layer, c->n_layer);
    ck_assert_uint_eq(src->cfg.n_head, c->n_head);
    ck_assert_uint_eq(src->cfg.n_head_kv, c->n_head_kv);
    ck_assert_uint_eq(src->cfg.head_dim, c->head_dim);
    ck_assert_uint_eq(src->cfg.n_ff, c->n_ff);
    ck_assert_uint_eq(src->cfg.n_vocab, c->n_vocab);
    ck_assert_uint_eq(src->cfg.n_ctx_max, c->n_ctx_max);
    ck_assert(src->cfg.rope_theta == c->rope_theta);
    ck_assert(src->cfg.norm_eps == c->norm_eps);
    ck_assert_uint_eq(src->cfg.act, c->act);
    ck_assert_uint_eq(src->cfg.tied, c->tied);
    ck_assert_int_eq(src->cfg.bos, c->bos);
    ck_assert_int_eq(src->cfg.eos, c->eos);
    ck_assert_int_eq(src->cfg.eot, c->eot);
    vocab_eq(src->vocab, f->v);
    ck_assert_uint_eq(src->vocab->chat, BN_CHAT_BITNET);

    for (uint32_t l = 0; l < c->n_layer; l++) {
        for (size_t k = 0; k < sizeof linears / sizeof *linears; k++) {
            char name[64];
            uint64_t rows, cols;
            snprintf(name, sizeof name, "blk.%u.%s", l, linears[k]);
            linear_shape(c, linears[k], &rows, &cols);
            int8_t *t = malloc(rows * cols), *want = malloc(rows * cols);
            float scale = 0, want_scale = 0;
            ck_assert_msg(src->ops->ternary(src, name, rows, cols, t, &scale, &err) == 0, "%s", err.msg);
            bn_synth_ternary(&f->s, name, rows, cols, want, &want_scale);
            ck_assert_mem_eq(t, want, rows * cols);
            if (bitlinear) want_scale = 1.0f / want_scale;
            ck_assert_msg(scale == want_scale, "%s: scale %g, want %g", name, scale, want_scale);
            free(t);
            free(want);
        }
        for (size_t k = 0; k < sizeof norms / sizeof *norms; k++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%u.%s", l, norms[k]);
            uint64_t n = !strcmp(norms[k], "ffn_sub_norm") ? c->n_ff : c->n_embd;
            float got[2048], want[2048];
            ck_assert_msg(src->ops->floats(src, name, 1, n, 0, 1, got, &err) == 0, "%s", err.msg);
            bn_synth_norm(&f->s, name, n, want);
            ck_assert_mem_eq(got, want, n * sizeof *got);
        }
    }
    float got[2048], want[2048];
    ck_assert_int_eq(src->ops->floats(src, "output_norm", 1, c->n_embd, 0, 1, got, &err), 0);
    bn_synth_norm(&f->s, "output_norm", c->n_embd, want);
    ck_assert_mem_eq(got, want, c->n_embd * sizeof *got);
    /* The embedding, in bands of rows as the packer reads it. */
    const uint32_t band = 5;
    float *rows = malloc((size_t)band * c->n_embd * sizeof *rows);
    for (uint32_t r0 = 0; r0 < c->n_vocab; r0 += band) {
        uint32_t n = c->n_vocab - r0 < band ? c->n_vocab - r0 : band;
        ck_assert_msg(src->ops->floats(src, "token_embd", c->n_vocab, c->n_embd, r0, n, rows, &err) == 0, "%s", err.msg);
        for (uint32_t r = 0; r < n; r++) {
            bn_synth_embedding_row(&f->s, r0 + r, want);
            ck_assert_mem_eq(rows + (size_t)r * c->n_embd, want, c->n_embd * sizeof *want);
        }
    }
    free(rows);
    /* Out-of-range requests are errors, not reads past the tensor. */
    ck_assert_int_ne(src->ops->floats(src, "token_embd", c->n_vocab, c->n_embd, c->n_vocab - 1, 2, got, &err), 0);
    ck_assert_int_ne(src->ops->floats(src, "token_embd", c->n_vocab, c->n_embd, UINT64_MAX, 2, got, &err), 0);
    ck_assert_int_ne(src->ops->floats(src, "no_such", 1, 4, 0, 1, got, &err), 0);
}

static void open_and_check(const fixture *f, const char *dir, const char *kind, int bitlinear)
{
    bn_error err = {{0}};
    bn_source *src = NULL;
    ck_assert_msg(bn_source_open(dir, &src, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(src->kind, kind);
    check_source_matches(src, f, bitlinear);
    bn_source_close(src);
}

/* Opening dir must fail, and the message must contain every one of the given strings. */
static void expect_open_fail(const char *dir, const char *what1, const char *what2)
{
    bn_error err = {{0}};
    bn_source *src = NULL;
    int rc = bn_source_open_hf(dir, &src, &err);
    if (rc == 0) bn_source_close(src);
    ck_assert_msg(rc != 0, "opening %s succeeded; expected an error about %s", dir, what1);
    ck_assert_ptr_null(src);
    ck_assert_msg(strstr(err.msg, what1), "message '%s' does not name '%s'", err.msg, what1);
    if (what2) ck_assert_msg(strstr(err.msg, what2), "message '%s' does not name '%s'", err.msg, what2);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char *p = path_in(dir, name);
    FILE *fp = fopen(p, "wb");
    ck_assert_ptr_nonnull(fp);
    fputs(text, fp);
    fclose(fp);
    free(p);
}

static json_t *load_json(const char *dir, const char *name)
{
    char *p = path_in(dir, name);
    json_error_t je;
    json_t *j = json_load_file(p, 0, &je);
    ck_assert_msg(j != NULL, "%s: %s", p, je.text);
    free(p);
    return j;
}

static void save_json(const char *dir, const char *name, json_t *j)
{
    char *p = path_in(dir, name);
    ck_assert_int_eq(json_dump_file(j, p, JSON_INDENT(1)), 0);
    json_decref(j);
    free(p);
}

/* Sets config.json's key to value (consumed; NULL deletes the key); path "a.b" for nested. */
static void edit_config(const char *dir, const char *key, json_t *value)
{
    json_t *cfg = load_json(dir, "config.json"), *obj = cfg;
    char k[128];
    snprintf(k, sizeof k, "%s", key);
    char *dot = strchr(k, '.');
    if (dot) {
        *dot = 0;
        obj = json_object_get(cfg, k);
        memmove(k, dot + 1, strlen(dot + 1) + 1);
    }
    if (value) json_object_set_new(obj, k, value);
    else json_object_del(obj, k);
    save_json(dir, "config.json", cfg);
}

/* Rewrites a safetensors file: edit() changes the header JSON, patch() the data section. The
 * header is re-serialized, so offsets stay relative to the data and remain valid. */
typedef void (*header_edit)(json_t *header, void *arg);
typedef void (*data_patch)(uint8_t *data, json_t *header, void *arg);

/* Creates path and writes a safetensors prologue for header h (consumed): the 8-byte length,
 * then the compact JSON. The caller writes the data and closes the file. */
static FILE *st_create(const char *path, json_t *h)
{
    char *hj = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    ck_assert_ptr_nonnull(hj);
    uint64_t hl = strlen(hj);
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    for (int i = 0; i < 8; i++) fputc((int)(hl >> (8 * i)) & 0xff, fp);
    fwrite(hj, 1, hl, fp);
    free(hj);
    return fp;
}

static void rewrite_st(const char *dir, const char *name, header_edit edit, data_patch patch, void *arg)
{
    char *p = path_in(dir, name), *text = NULL;
    size_t len = 0;
    bn_error err = {{0}};
    ck_assert_msg(bn_read_file(p, (size_t)1 << 30, &text, &len, &err) == 0, "%s", err.msg);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | (uint8_t)text[i];
    json_t *h = json_loadb(text + 8, n, 0, NULL);
    ck_assert_ptr_nonnull(h);
    uint8_t *data = (uint8_t *)text + 8 + n;
    size_t dlen = len - 8 - n;
    if (patch) patch(data, h, arg);
    if (edit) edit(h, arg);
    FILE *fp = st_create(p, h);
    fwrite(data, 1, dlen, fp);
    fclose(fp);
    free(text);
    free(p);
}

/* Rewrites dir/name with every BF16 tensor as F32. With make_ternary, each linear becomes
 * ternary-valued: the synthetic latent magnitudes are c/16 (code 0) and c/2, 3c/2 (codes +-1),
 * so |w| > c/4 -> sign(w) * 0.25 keeps the codes and makes the exact scale 0.25. */
static void transcode_f32(const char *dir, const char *name, int make_ternary)
{
    char *p = path_in(dir, name), *tmp = NULL;
    bn_st_file *st;
    bn_error err = {{0}};
    ck_assert_msg(bn_st_open(p, &st, &err) == 0, "%s", err.msg);
    json_t *h = json_object();
    uint64_t off = 0;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const bn_st_tensor *t = &st->tensors[i];
        uint32_t dt = t->dtype == BN_ST_BF16 ? BN_ST_F32 : t->dtype;
        uint64_t nb = t->n_elem * bn_st_dtype_size(dt);
        json_t *shape = json_array();
        for (uint32_t d = 0; d < t->n_dims; d++) json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
        json_object_set_new(h, t->name, json_pack("{s:s, s:o, s:[I, I]}", "dtype", bn_st_dtype_name(dt), "shape", shape,
                                                  "data_offsets", (json_int_t)off, (json_int_t)(off + nb)));
        off += nb;
    }
    ck_assert_int_gt(asprintf(&tmp, "%s.new", p), 0);
    FILE *fp = st_create(tmp, h);
    for (size_t i = 0; i < st->n_tensors; i++) {
        const bn_st_tensor *t = &st->tensors[i];
        if (t->dtype != BN_ST_BF16) {
            fwrite(t->data, 1, t->nbytes, fp);
            continue;
        }
        float *w = malloc(t->n_elem * sizeof *w), m = 0;
        bn_st_floats(t, 0, t->n_elem, w);
        if (make_ternary && strstr(t->name, "_proj.weight")) {
            for (uint64_t k = 0; k < t->n_elem; k++) m = fabsf(w[k]) > m ? fabsf(w[k]) : m;
            float c = m * 2 / 3;
            for (uint64_t k = 0; k < t->n_elem; k++) w[k] = fabsf(w[k]) > c / 4 ? (w[k] > 0 ? 0.25f : -0.25f) : 0.0f;
        }
        fwrite(w, sizeof *w, t->n_elem, fp); /* little-endian host, as the file format */
        free(w);
    }
    fclose(fp);
    bn_st_close(st);
    ck_assert_int_eq(rename(tmp, p), 0);
    free(tmp);
    free(p);
}

/* Checks every linear's codes against the synthetic ones and its scale against want (0: the
 * synthetic scale). */
static void check_linears(bn_source *src, const fixture *f, float want)
{
    bn_error err = {{0}};
    const bn_config *c = &f->s.cfg;
    for (uint32_t l = 0; l < c->n_layer; l++)
        for (size_t k = 0; k < sizeof linears / sizeof *linears; k++) {
            char name[64];
            uint64_t rows, cols;
            snprintf(name, sizeof name, "blk.%u.%s", l, linears[k]);
            linear_shape(c, linears[k], &rows, &cols);
            int8_t *t = malloc(rows * cols), *ref = malloc(rows * cols);
            float scale, ref_scale;
            ck_assert_msg(src->ops->ternary(src, name, rows, cols, t, &scale, &err) == 0, "%s", err.msg);
            bn_synth_ternary(&f->s, name, rows, cols, ref, &ref_scale);
            ck_assert_mem_eq(t, ref, rows * cols);
            ck_assert_msg(scale == (want ? want : ref_scale), "%s: scale %g", name, scale);
            free(t);
            free(ref);
        }
}

static bn_source *open_ok(const char *dir, const char *kind, const char *note)
{
    bn_error err = {{0}};
    bn_source *src;
    ck_assert_msg(bn_source_open(dir, &src, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(src->kind, kind);
    if (note) ck_assert_msg(src->notes && strstr(src->notes, note), "notes '%s' lack '%s'", src->notes, note);
    return src;
}

/* Float checkpoints other than bf16 latent: F32 latent (online: absmean), a float export without
 * quantization_config (already-ternary values keep their exact scale), and ternary-valued
 * weights under online mode, where HF's absmean gives mean|W| = 0.25 * 10/16. */
START_TEST(test_float_forms)
{
    fixture f;
    fixture_init(&f, "tiny");
    char *dir = write_hf(&f, 1, 1);
    transcode_f32(dir, "model.safetensors", 0);
    bn_source *src = open_ok(dir, "hf-f32", "absmean");
    check_source_matches(src, &f, 0);
    bn_source_close(src);
    edit_config(dir, "quantization_config", NULL);
    src = open_ok(dir, "hf-f32", "without quantization_config");
    check_linears(src, &f, 0);
    bn_source_close(src);
    rm_rf(dir);

    dir = write_hf(&f, 1, 1);
    transcode_f32(dir, "model.safetensors", 1);
    src = open_ok(dir, "hf-f32", "absmean");
    check_linears(src, &f, 0.25f * 10 / 16);
    bn_source_close(src);
    edit_config(dir, "quantization_config", NULL);
    src = open_ok(dir, "hf-f32", NULL);
    check_linears(src, &f, 0.25f);
    ck_assert_ptr_nonnull(strstr(src->notes, "already ternary-valued"));
    bn_source_close(src);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

/* ---- the row-block packing ------------------------------------------------------------- */

START_TEST(test_unpack_8x4)
{
    /* 8 rows x 4 cols, P = 2: byte (r, c) holds rows r, 2+r, 4+r, 6+r in bit pairs 0-1 .. 6-7. */
    static const int8_t t[8][4] = {{-1, 0, 1, 1},  {0, 1, -1, 0},  {1, 1, 0, -1}, {-1, -1, 1, 0},
                                   {0, 0, 0, 1},   {1, -1, -1, -1}, {-1, 1, 0, 0}, {0, 0, 1, 1}};
    static const uint8_t packed[2][4] = {{0x18, 0x99, 0x56, 0x62}, {0x61, 0x42, 0x88, 0x85}};
    uint8_t p[8];
    bn_hf_pack_rows(&t[0][0], 8, 4, p);
    ck_assert_mem_eq(p, packed, 8);
    int8_t u[32];
    ck_assert_uint_eq(bn_hf_unpack_rows(&packed[0][0], 8, 4, u), 0);
    ck_assert_mem_eq(u, t, 32);
    /* Code 3 never comes from HF: it reads as 0 and is counted. 0xff = four 3s. */
    uint8_t q[8] = {0xff, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x57};
    ck_assert_uint_eq(bn_hf_unpack_rows(q, 8, 4, u), 5);
    for (int i = 0; i < 32; i++) ck_assert_int_eq(u[i], 0);
}
END_TEST

/* ---- round trips ------------------------------------------------------------------------ */

START_TEST(test_packed)
{
    fixture f;
    fixture_init(&f, "tiny");
    char *dir = write_hf(&f, 0, 1);
    open_and_check(&f, dir, "hf-packed", 0);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

START_TEST(test_latent)
{
    fixture f;
    fixture_init(&f, "tiny");
    char *dir = write_hf(&f, 1, 1);
    open_and_check(&f, dir, "hf-bf16", 0);
    bn_error err = {{0}};
    bn_source *src;
    ck_assert_int_eq(bn_source_open(dir, &src, &err), 0);
    ck_assert_ptr_nonnull(src->notes);
    ck_assert_ptr_nonnull(strstr(src->notes, "absmean"));
    bn_source_close(src);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

START_TEST(test_sharded)
{
    fixture f;
    fixture_init(&f, "tiny");
    char *dir = write_hf(&f, 0, 3);
    char *p = path_in(dir, "model-00003-of-00003.safetensors");
    ck_assert_int_eq(access(p, R_OK), 0);
    free(p);
    p = path_in(dir, "model.safetensors");
    ck_assert_int_ne(access(p, R_OK), 0);
    free(p);
    open_and_check(&f, dir, "hf-packed", 0);
    rm_rf(dir);
    /* The latent form sharded too; then the same directory rewritten as one file and back. */
    dir = write_hf(&f, 1, 2);
    open_and_check(&f, dir, "hf-bf16", 0);
    bn_error err = {{0}};
    ck_assert_msg(bn_hf_write_synth(&f.s, f.v, dir, 0, 1, &err) == 0, "%s", err.msg);
    open_and_check(&f, dir, "hf-packed", 0);
    ck_assert_msg(bn_hf_write_synth(&f.s, f.v, dir, 1, 3, &err) == 0, "%s", err.msg);
    open_and_check(&f, dir, "hf-bf16", 0);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

START_TEST(test_bitlinear_divides)
{
    fixture f;
    fixture_init(&f, "tiny");
    char *dir = write_hf(&f, 0, 1);
    edit_config(dir, "quantization_config.linear_class", json_string("bitlinear"));
    open_and_check(&f, dir, "hf-packed", 1);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

/* An untied checkpoint: lm_head.weight becomes "output"; unknown tensors are noted, ignored. */
static void add_inv_freq(json_t *h, void *arg)
{
    (void)arg;
    json_object_set_new(h, "model.layers.0.self_attn.rotary_emb.inv_freq",
                        json_pack("{s:s, s:[i], s:[i, i]}", "dtype", "F32", "shape", 0, "data_offsets", 0, 0));
}

/* lm_head.weight sharing the embedding's bytes. */
static void alias_lm_head(json_t *h, void *arg)
{
    (void)arg;
    json_object_set(h, "lm_head.weight", json_object_get(h, "model.embed_tokens.weight"));
}

START_TEST(test_untied_and_extras)
{
    fixture f;
    fixture_init(&f, "tiny");
    f.s.cfg.tied = 0;
    char *dir = write_hf(&f, 0, 1);
    rewrite_st(dir, "model.safetensors", add_inv_freq, NULL, NULL);
    bn_error err = {{0}};
    bn_source *src;
    ck_assert_msg(bn_source_open(dir, &src, &err) == 0, "%s", err.msg);
    check_source_matches(src, &f, 0);
    ck_assert_ptr_nonnull(src->notes);
    ck_assert_ptr_nonnull(strstr(src->notes, "rotary_emb.inv_freq"));
    const bn_config *c = &f.s.cfg;
    float *row = malloc(c->n_embd * sizeof *row), *want = malloc(c->n_embd * sizeof *want);
    for (uint32_t r = 0; r < c->n_vocab; r += 37) {
        ck_assert_msg(src->ops->floats(src, "output", c->n_vocab, c->n_embd, r, 1, row, &err) == 0, "%s", err.msg);
        bn_synth_output_row(&f.s, r, want);
        ck_assert_mem_eq(row, want, c->n_embd * sizeof *row);
    }
    free(row);
    free(want);
    bn_source_close(src);
    rm_rf(dir);
    /* A tied checkpoint whose lm_head aliases the embedding's bytes: overlapping data is refused. */
    f.s.cfg.tied = 1;
    dir = write_hf(&f, 0, 1);
    rewrite_st(dir, "model.safetensors", alias_lm_head, NULL, NULL);
    expect_open_fail(dir, "model.safetensors: tensor '", "overlap");
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

START_TEST(test_tie_decisions)
{
    fixture f;
    fixture_init(&f, "tiny");
    char *dir = write_hf(&f, 0, 1);
    bn_error err = {{0}};
    bn_source *src;
    /* Absent and no lm_head: tied, with a note. */
    edit_config(dir, "tie_word_embeddings", NULL);
    ck_assert_msg(bn_source_open(dir, &src, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(src->cfg.tied, 1);
    ck_assert_ptr_nonnull(strstr(src->notes, "tie_word_embeddings"));
    bn_source_close(src);
    /* Explicitly false with no lm_head: an error. */
    edit_config(dir, "tie_word_embeddings", json_false());
    expect_open_fail(dir, "config.json", "tie_word_embeddings");
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

START_TEST(test_vocab_json_roundtrip)
{
    fixture f;
    fixture_init(&f, "tiny");
    char *dir = tmp_dir(), *p = path_in(dir, "tokenizer.json");
    bn_error err = {{0}};
    ck_assert_msg(bn_vocab_write_hf_json(f.v, p, &err) == 0, "%s", err.msg);
    bn_vocab *v = NULL;
    ck_assert_msg(bn_vocab_load_hf(p, NULL, &v, &err) == 0, "%s", err.msg);
    vocab_eq(v, f.v);
    bn_vocab_free(v);
    /* Meta's Llama-3 tokenizer.json survives load -> write -> load unchanged ... */
    const char *fx = getenv("BN_FIXTURES_DIR");
    char *meta = NULL;
    int have_meta = fx && *fx && asprintf(&meta, "%s/tokenizer/llama3-tokenizer.json", fx) > 0 && access(meta, R_OK) == 0;
    if (have_meta) {
        bn_vocab *a = NULL, *b = NULL;
        ck_assert_msg(bn_vocab_load_hf(meta, NULL, &a, &err) == 0, "%s", err.msg);
        ck_assert_msg(bn_vocab_write_hf_json(a, p, &err) == 0, "%s", err.msg);
        /* ... and is written back byte for byte as Meta wrote it. */
        char *orig = NULL, *mine = NULL;
        size_t olen = 0, mlen = 0;
        ck_assert_int_eq(bn_read_file(meta, (size_t)1 << 26, &orig, &olen, &err), 0);
        ck_assert_int_eq(bn_read_file(p, (size_t)1 << 26, &mine, &mlen, &err), 0);
        ck_assert_uint_eq(olen, mlen);
        ck_assert(memcmp(orig, mine, olen) == 0);
        free(orig);
        free(mine);
        ck_assert_msg(bn_vocab_load_hf(p, NULL, &b, &err) == 0, "%s", err.msg);
        vocab_eq(a, b);
        ck_assert_uint_eq(b->n_tokens, 128256);
        bn_vocab_free(a);
        bn_vocab_free(b);
    }
    free(meta);
    free(p);
    rm_rf(dir);
    bn_vocab_free(f.v);
    if (!have_meta) BN_TEST_SKIP("the Meta Llama-3 half: BN_FIXTURES_DIR/tokenizer/llama3-tokenizer.json not found (BN_FIXTURES_DIR=%s)", fx ? fx : "");
}
END_TEST

/* ---- the safetensors parser on crafted bytes --------------------------------------------- */

/* header JSON + data_len bytes of data (value 0x3c), into a malloc'd buffer. */
static uint8_t *make_st(const char *header, size_t data_len, size_t *len)
{
    size_t h = strlen(header);
    *len = 8 + h + data_len;
    uint8_t *b = malloc(*len + 1);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    memset(b + 8 + h, 0x3c, data_len);
    return b;
}

static void expect_parse_fail(const char *header, size_t data_len, const char *what)
{
    size_t len;
    uint8_t *b = make_st(header, data_len, &len);
    bn_st_file *f = NULL;
    bn_error err = {{0}};
    int rc = bn_st_parse(b, len, "x.safetensors", &f, &err);
    bn_st_close(f);
    free(b);
    ck_assert_msg(rc != 0, "header %s parsed; expected an error about %s", header, what);
    ck_assert_msg(!strncmp(err.msg, "x.safetensors: ", 15), "message '%s' does not name the file", err.msg);
    ck_assert_msg(strstr(err.msg, what), "message '%s' does not name '%s'", err.msg, what);
}

static const char good_header[] =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"a\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
    "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[12,16]},"
    "\"c\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[16,20]},"
    "\"d\":{\"dtype\":\"F16\",\"shape\":[1,1],\"data_offsets\":[20,22]}}";

START_TEST(test_st_good)
{
    size_t len;
    uint8_t *b = make_st(good_header, 22, &len);
    memcpy(b + len - 6, (float[]){1.5f}, 4);
    bn_st_file *f;
    bn_error err = {{0}};
    ck_assert_msg(bn_st_parse(b, len, "x.safetensors", &f, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(f->n_tensors, 4);
    const bn_st_tensor *a = bn_st_find(f, "a"), *c = bn_st_find(f, "c");
    ck_assert_ptr_nonnull(a);
    ck_assert_uint_eq(a->dtype, BN_ST_BF16);
    ck_assert_uint_eq(a->n_dims, 2);
    ck_assert_uint_eq(a->n_elem, 6);
    ck_assert_uint_eq(a->nbytes, 12);
    ck_assert_uint_eq(c->n_dims, 0);
    ck_assert(bn_st_float_at(c, 0) == 1.5f);
    ck_assert(bn_st_float_at(a, 0) == bn_bf16_to_f32(0x3c3c));
    const bn_st_tensor *d = bn_st_find(f, "d");
    ck_assert(bn_st_float_at(d, 0) == bn_f16_to_f32(0x3c3c));
    float v[6];
    bn_st_floats(a, 0, 6, v);
    for (int i = 0; i < 6; i++) ck_assert(v[i] == bn_bf16_to_f32(0x3c3c));
    bn_st_floats(c, 0, 1, v);
    ck_assert(v[0] == 1.5f);
    bn_st_floats(d, 0, 1, v);
    ck_assert(v[0] == bn_f16_to_f32(0x3c3c));
    ck_assert_ptr_null(bn_st_find(f, "zz"));
    bn_st_close(f);
    /* Every strict prefix of a valid file is an error (the last tensor ends at EOF). */
    for (size_t n = 0; n < len; n++) {
        f = NULL;
        ck_assert_msg(bn_st_parse(b, n, "x.safetensors", &f, &err) != 0, "prefix %zu parsed", n);
        ck_assert_ptr_null(f);
        ck_assert(!strncmp(err.msg, "x.safetensors: ", 15));
    }
    free(b);
}
END_TEST

START_TEST(test_st_bad_headers)
{
    /* Header length: past EOF, absurd. */
    uint8_t b[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    bn_st_file *f = NULL;
    bn_error err = {{0}};
    ck_assert_int_ne(bn_st_parse(b, sizeof b, "x.safetensors", &f, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "header length"));
    b[0] = 9; memset(b + 1, 0, 7);
    ck_assert_int_ne(bn_st_parse(b, 16, "x.safetensors", &f, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "past the end"));

    expect_parse_fail("{\"a\":", 0, "not valid JSON");
    expect_parse_fail("[1,2]", 0, "not a JSON object");
    expect_parse_fail("{\"__metadata__\":3}", 0, "__metadata__");
    expect_parse_fail("{\"a\":3}", 0, "tensor 'a': not an object");
    expect_parse_fail("{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "tensor 'a': dtype");
    expect_parse_fail("{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "dtype 'F64' is not supported");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, "tensor 'a': shape");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1, "shape[0]");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,2,3,4,5,6,7,8,9],\"data_offsets\":[0,1]}}", 1, "dimensions");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,2],\"data_offsets\":[0,1]}}", 1,
                      "overflows");
    expect_parse_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,1]}}", 1,
                      "overflows");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "tensor 'a': data_offsets");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1, "data_offsets");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,-1]}}", 1, "data_offsets");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[1,0]}}", 1, "reversed");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 3,
                      "data_offsets end 4 is past the data section (3 bytes)");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,3]}}", 3, "need 4");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                      "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}", 6, "overlap");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                      "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, "duplicate");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[18446744073709551615,0]}}", 1,
                      "not valid JSON");
    expect_parse_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[9223372036854775807,"
                      "9223372036854775807]}}", 1, "past the data section");
}
END_TEST

/* ---- bad checkpoint directories -------------------------------------------------------- */

START_TEST(test_bad_config)
{
    fixture f;
    fixture_init(&f, "tiny");
    char *dir = write_hf(&f, 0, 1);
    char *p = path_in(dir, "config.json"), *orig = NULL;
    bn_error err = {{0}};
    ck_assert_int_eq(bn_read_file(p, 1 << 20, &orig, NULL, &err), 0);

    write_text(dir, "config.json", "{\"model_type\": \"bitnet\",");
    expect_open_fail(dir, "config.json", "not valid JSON");
    write_text(dir, "config.json", "[]");
    expect_open_fail(dir, "config.json", "top level");
    write_text(dir, "config.json", orig);
    /* Relabelled as a Llama checkpoint: its sub-norms cannot be dropped silently. */
    edit_config(dir, "model_type", json_string("llama"));
    edit_config(dir, "architectures", json_pack("[s]", "LlamaForCausalLM"));
    expect_open_fail(dir, "_sub_norm.weight' is a sub-norm", "LlamaForCausalLM");
    /* model_type llama under BitNetForCausalLM reads as 1bitLLM, which has no quantization_config. */
    write_text(dir, "config.json", orig);
    edit_config(dir, "model_type", json_string("llama"));
    expect_open_fail(dir, "config.json", "quantization_config: unexpected");
    write_text(dir, "config.json", orig);
    edit_config(dir, "max_position_embeddings", NULL);
    expect_open_fail(dir, "config.json", "max_position_embeddings");
    write_text(dir, "config.json", orig);
    edit_config(dir, "hidden_act", json_string("gelu"));
    expect_open_fail(dir, "config.json", "hidden_act");
    write_text(dir, "config.json", orig);
    edit_config(dir, "num_key_value_heads", json_integer(3));
    expect_open_fail(dir, "config.json", "n_head_kv");
    write_text(dir, "config.json", orig);
    edit_config(dir, "quantization_config.quantization_mode", json_string("online"));
    expect_open_fail(dir, "config.json", "quantization_mode");
    write_text(dir, "config.json", orig);
    edit_config(dir, "quantization_config", NULL);
    expect_open_fail(dir, "config.json", "quantization_config");
    write_text(dir, "config.json", orig);
    edit_config(dir, "rope_scaling", json_pack("{s:s}", "type", "linear"));
    expect_open_fail(dir, "config.json", "rope_scaling");
    write_text(dir, "config.json", orig);
    /* Shape disagreeing with the config: the message names the tensor, its file and config.json. */
    edit_config(dir, "intermediate_size", json_integer(f.s.cfg.n_ff + 16));
    expect_open_fail(dir, "model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight': shape", "config.json");
    write_text(dir, "config.json", orig);
    /* rope_theta absent: transformers' default 10000, noted. */
    edit_config(dir, "rope_theta", NULL);
    bn_source *src;
    ck_assert_msg(bn_source_open_hf(dir, &src, &err) == 0, "%s", err.msg);
    ck_assert(src->cfg.rope_theta == 10000.0f);
    ck_assert_ptr_nonnull(strstr(src->notes, "rope_theta"));
    bn_source_close(src);
    /* No model_type under BitNetForCausalLM: 2B-4T, as before families existed. */
    write_text(dir, "config.json", orig);
    edit_config(dir, "model_type", NULL);
    src = open_ok(dir, "hf-packed", NULL);
    ck_assert_uint_eq(src->cfg.act, BN_ACT_RELU2);
    ck_assert_uint_eq(src->cfg.no_sub_norms, 0);
    bn_source_close(src);
    unlink(p);
    expect_open_fail(dir, "config.json", NULL);

    free(orig);
    free(p);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

static void set_dtype(json_t *h, void *arg)
{
    json_object_set_new(json_object_get(h, (const char *)arg), "dtype", json_string("I8"));
}

static void drop_tensor(json_t *h, void *arg) { json_object_del(h, (const char *)arg); }

static void set_shape_1d(json_t *h, void *arg)
{
    json_t *t = json_object_get(h, (const char *)arg);
    json_int_t n = json_integer_value(json_array_get(json_object_get(t, "shape"), 0)) *
                   json_integer_value(json_array_get(json_object_get(t, "shape"), 1));
    json_object_set_new(t, "shape", json_pack("[I]", n));
}

typedef struct {
    const char *name;
    uint16_t bf16;
} scale_patch;

static void patch_scale(uint8_t *data, json_t *h, void *arg)
{
    const scale_patch *sp = arg;
    json_t *t = json_object_get(h, sp->name);
    json_int_t off = json_integer_value(json_array_get(json_object_get(t, "data_offsets"), 0));
    data[off] = (uint8_t)sp->bf16;
    data[off + 1] = (uint8_t)(sp->bf16 >> 8);
}

START_TEST(test_bad_tensors)
{
    fixture f;
    fixture_init(&f, "tiny");
    const char *q = "model.layers.0.self_attn.q_proj.weight";
    const char *qs = "model.layers.0.self_attn.q_proj.weight_scale";

    char *dir = write_hf(&f, 0, 1);
    rewrite_st(dir, "model.safetensors", set_dtype, NULL, (void *)q);
    expect_open_fail(dir, "model.safetensors: tensor 'model.layers.0.self_attn.q_proj.weight'", "dtype I8");
    rm_rf(dir);

    dir = write_hf(&f, 0, 1);
    rewrite_st(dir, "model.safetensors", set_shape_1d, NULL, (void *)"model.layers.1.mlp.down_proj.weight");
    expect_open_fail(dir, "model.safetensors: tensor 'model.layers.1.mlp.down_proj.weight': shape", "config.json");
    rm_rf(dir);

    dir = write_hf(&f, 0, 1);
    rewrite_st(dir, "model.safetensors", drop_tensor, NULL, (void *)"model.layers.1.mlp.ffn_sub_norm.weight");
    expect_open_fail(dir, "model.safetensors: tensor 'model.layers.1.mlp.ffn_sub_norm.weight' is missing", NULL);
    rm_rf(dir);

    dir = write_hf(&f, 0, 1);
    rewrite_st(dir, "model.safetensors", drop_tensor, NULL, (void *)qs);
    expect_open_fail(dir, "model.safetensors: tensor 'model.layers.0.self_attn.q_proj.weight_scale' is missing", NULL);
    rm_rf(dir);

    /* NaN, +Inf, -Inf, 0 and negative scales. */
    static const uint16_t bad[] = {0x7fc0, 0x7f80, 0xff80, 0x0000, 0xbf80};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        dir = write_hf(&f, 0, 1);
        scale_patch sp = {qs, bad[i]};
        rewrite_st(dir, "model.safetensors", NULL, patch_scale, &sp);
        expect_open_fail(dir, "model.safetensors", "q_proj.weight_scale");
        rm_rf(dir);
    }
    /* A subnormal scale whose reciprocal overflows under bitlinear's divide. */
    dir = write_hf(&f, 0, 1);
    scale_patch tiny = {qs, 0x0001};
    rewrite_st(dir, "model.safetensors", NULL, patch_scale, &tiny);
    edit_config(dir, "quantization_config.linear_class", json_string("bitlinear"));
    expect_open_fail(dir, "model.safetensors", "q_proj.weight_scale");
    rm_rf(dir);

    bn_vocab_free(f.v);
}
END_TEST

START_TEST(test_truncated_file)
{
    fixture f;
    fixture_init(&f, "tiny");
    char *dir = write_hf(&f, 0, 1);
    char *p = path_in(dir, "model.safetensors");
    struct stat st;
    ck_assert_int_eq(stat(p, &st), 0);
    /* A spread of prefixes through the header and the data of a real file. */
    off_t cuts[] = {0, 1, 7, 8, 9, 100, 1000, st.st_size / 2, st.st_size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        ck_assert_int_eq(truncate(p, cuts[i]), 0);
        expect_open_fail(dir, "model.safetensors", NULL);
    }
    unlink(p);
    expect_open_fail(dir, "model.safetensors", NULL);
    free(p);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

START_TEST(test_bad_tokenizer)
{
    fixture f;
    fixture_init(&f, "tiny");
    char *dir = write_hf(&f, 0, 1);
    write_text(dir, "tokenizer.json", "{\"model\": ");
    expect_open_fail(dir, "tokenizer.json", "not valid JSON");
    char *p = path_in(dir, "tokenizer.json");
    unlink(p);
    free(p);
    expect_open_fail(dir, "tokenizer.json", "missing");
    rm_rf(dir);
    dir = write_hf(&f, 0, 1);
    write_text(dir, "tokenizer_config.json", "{\"bos_token\": 3");
    expect_open_fail(dir, "tokenizer_config.json", "not valid JSON");
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

static void edit_index(const char *dir, const char *tensor, const char *shard)
{
    json_t *idx = load_json(dir, "model.safetensors.index.json");
    json_object_set_new(json_object_get(idx, "weight_map"), tensor, json_string(shard));
    save_json(dir, "model.safetensors.index.json", idx);
}

START_TEST(test_bad_index)
{
    fixture f;
    fixture_init(&f, "tiny");
    const char *q = "model.layers.0.self_attn.q_proj.weight";
    char *dir = write_hf(&f, 0, 3);
    char *p = path_in(dir, "model-00002-of-00003.safetensors");
    unlink(p);
    free(p);
    expect_open_fail(dir, "model.safetensors.index.json: weight_map: shard 'model-00002-of-00003.safetensors'", "missing");
    rm_rf(dir);

    static const char *const traversal[] = {"../model-00001-of-00003.safetensors", "sub/x.safetensors", "..",
                                            "/etc/passwd", ""};
    for (size_t i = 0; i < sizeof traversal / sizeof *traversal; i++) {
        dir = write_hf(&f, 0, 3);
        edit_index(dir, q, traversal[i]);
        expect_open_fail(dir, "model.safetensors.index.json: weight_map", "not a plain file name");
        rm_rf(dir);
    }

    /* The index sends q_proj to a shard that does not hold it. */
    dir = write_hf(&f, 0, 3);
    json_t *idx = load_json(dir, "model.safetensors.index.json");
    const char *home = json_string_value(json_object_get(json_object_get(idx, "weight_map"), q));
    const char *other = strcmp(home, "model-00003-of-00003.safetensors") ? "model-00003-of-00003.safetensors"
                                                                         : "model-00001-of-00003.safetensors";
    json_decref(idx);
    edit_index(dir, q, other);
    expect_open_fail(dir, "model.safetensors.index.json: weight_map puts tensor 'model.layers.0.self_attn.q_proj.weight'",
                     other);
    rm_rf(dir);

    dir = write_hf(&f, 0, 3);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": ");
    expect_open_fail(dir, "model.safetensors.index.json", "not valid JSON");
    write_text(dir, "model.safetensors.index.json", "{\"metadata\": {}}");
    expect_open_fail(dir, "model.safetensors.index.json", "weight_map");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": 3}}");
    expect_open_fail(dir, "model.safetensors.index.json", "not a string");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": \"x\", \"a\": \"y\"}}");
    expect_open_fail(dir, "model.safetensors.index.json", "duplicate");
    rm_rf(dir);

    /* A shard dropped from the index: its tensors are missing. */
    dir = write_hf(&f, 0, 3);
    idx = load_json(dir, "model.safetensors.index.json");
    json_object_del(json_object_get(idx, "weight_map"), "model.norm.weight");
    save_json(dir, "model.safetensors.index.json", idx);
    expect_open_fail(dir, "tensor 'model.norm.weight' is missing", NULL);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

START_TEST(test_empty_dir)
{
    char *dir = tmp_dir();
    expect_open_fail(dir, "config.json", NULL);
    rm_rf(dir);
}
END_TEST

/* ---- every family's HF forms ------------------------------------------------------------- */

/* A family's tiny test preset with its built-in vocabulary, set up as mkmodel does: the chat
 * format is the family's, and the ids the preset leaves open (-1) come from the vocabulary. */
static void family_fixture(fixture *f, const char *preset)
{
    bn_error err = {{0}};
    memset(f, 0, sizeof *f);
    ck_assert_msg(bn_synth_parse(preset, &f->s, &err) == 0, "%s", err.msg);
    f->s.seed = 7;
    const bn_family_info *fam = bn_family_get(f->s.family);
    ck_assert_ptr_nonnull(fam);
    f->v = bn_vocab_builtin_kind(fam->vocab, f->s.cfg.n_vocab, &err);
    ck_assert_msg(f->v != NULL, "%s", err.msg);
    if (fam->id != BN_FAM_BITNET) f->v->chat = fam->chat;
    bn_config *c = &f->s.cfg;
    if (c->eos < 0) {
        c->bos = f->v->bos;
        c->eos = f->v->eos;
    }
    if (c->eot < 0) c->eot = f->v->eot;
}

static char *write_form(const fixture *f, enum bn_hf_form form, int shards)
{
    bn_error err = {{0}};
    char *dir = tmp_dir();
    ck_assert_msg(bn_hf_write_synth_form(&f->s, f->v, dir, form, shards, &err) == 0, "%s", err.msg);
    return dir;
}

static void pack_to(bn_source *src, const char *path)
{
    bn_error err = {{0}};
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    ck_assert_msg(bn_pack_write(src, path, &po, &err) == 0, "%s", err.msg);
}

static void assert_same_file(const char *a, const char *b, const char *what)
{
    char *x = NULL, *y = NULL;
    size_t lx = 0, ly = 0;
    bn_error err = {{0}};
    ck_assert_msg(bn_read_file(a, (size_t)1 << 30, &x, &lx, &err) == 0, "%s", err.msg);
    ck_assert_msg(bn_read_file(b, (size_t)1 << 30, &y, &ly, &err) == 0, "%s", err.msg);
    ck_assert_msg(lx == ly && memcmp(x, y, lx) == 0, "%s: packed file differs from the synthetic one (%zu vs %zu bytes)",
                  what, ly, lx);
    free(x);
    free(y);
}

/* The HF source's config is the synthetic one, field by field (a mismatch names the field
 * instead of only failing the byte comparison). */
static void assert_cfg(const bn_config *got, const bn_config *want)
{
    ck_assert_uint_eq(got->n_embd, want->n_embd);
    ck_assert_uint_eq(got->n_layer, want->n_layer);
    ck_assert_uint_eq(got->n_ctx_max, want->n_ctx_max);
    ck_assert_uint_eq(got->n_head, want->n_head);
    ck_assert_uint_eq(got->n_head_kv, want->n_head_kv);
    ck_assert_uint_eq(got->head_dim, want->head_dim);
    ck_assert_uint_eq(got->n_ff, want->n_ff);
    ck_assert_uint_eq(got->n_vocab, want->n_vocab);
    ck_assert(got->rope_theta == want->rope_theta);
    ck_assert(got->norm_eps == want->norm_eps);
    ck_assert_uint_eq(got->act, want->act);
    ck_assert_uint_eq(got->tied, want->tied);
    ck_assert_uint_eq(got->no_sub_norms, want->no_sub_norms);
    ck_assert_int_eq(got->bos, want->bos);
    ck_assert_int_eq(got->eos, want->eos);
    ck_assert_int_eq(got->eot, want->eot);
}

/* Codes equal the synthetic ones; scales are the absmean of the synthetic latent weights (what
 * a latent form of a divide-rule family yields: 83c/128, not the packed form's 1/b). */
static void check_latent_linears(bn_source *src, const fixture *f)
{
    bn_error err = {{0}};
    const bn_config *c = &f->s.cfg;
    for (uint32_t l = 0; l < c->n_layer; l++)
        for (size_t k = 0; k < sizeof linears / sizeof *linears; k++) {
            char name[64];
            uint64_t rows, cols;
            snprintf(name, sizeof name, "blk.%u.%s", l, linears[k]);
            linear_shape(c, linears[k], &rows, &cols);
            int8_t *t = malloc(rows * cols), *ref = malloc(rows * cols), *t2 = malloc(rows * cols);
            float *w = malloc(rows * cols * sizeof *w), scale, ref_scale, abs_scale;
            ck_assert_msg(src->ops->ternary(src, name, rows, cols, t, &scale, &err) == 0, "%s", err.msg);
            bn_synth_ternary(&f->s, name, rows, cols, ref, &ref_scale);
            bn_synth_latent(&f->s, name, rows, cols, w);
            bn_ternarize_absmean(w, rows * cols, t2, &abs_scale);
            ck_assert_mem_eq(t, ref, rows * cols);
            ck_assert_msg(scale == abs_scale, "%s: scale %g, absmean %g", name, scale, abs_scale);
            ck_assert_msg(fabsf(scale - ref_scale) <= ref_scale / 256, "%s: scale %g far from %g", name, scale, ref_scale);
            free(t);
            free(ref);
            free(t2);
            free(w);
        }
}

static const struct family_case {
    const char *preset;
    const char *native_kind;   /* what the family's own HF form reads as */
    int latent_exact;          /* latent forms give the same scales (no divide rule) */
} family_cases[] = {
    {"tiny", "hf-packed", 1},
    {"tiny-1bitllm", "hf-f32", 1},
    {"tiny-llama3", "hf-packed", 0},
    {"tiny-falcon3", "hf-packed", 0},
};

/* Every family, every HF form: written, read and packed, the result is byte-identical to packing
 * the synthetic source directly (latent forms of divide-rule families: same codes, absmean
 * scales, checked tensor by tensor instead). The native form is also written as 2 shards. */
START_TEST(test_family_forms)
{
    const struct family_case *fc = &family_cases[_i];
    static const char *const kinds[] = {NULL, "hf-bf16", "hf-f16", "hf-f32"};
    fixture f;
    family_fixture(&f, fc->preset);
    bn_error err = {{0}};
    bn_source *src;
    char ref[512], out[512];
    snprintf(ref, sizeof ref, "%s", bn_test_path("hf_ref.bnpk"));
    snprintf(out, sizeof out, "%s", bn_test_path("hf_out.bnpk"));
    ck_assert_msg(bn_source_open_synth(&f.s, f.v, &src, &err) == 0, "%s", err.msg);
    pack_to(src, ref);
    bn_source_close(src);
    for (int form = BN_HF_NATIVE; form <= BN_HF_F32 + 1; form++) {
        int sharded = form == BN_HF_F32 + 1;
        enum bn_hf_form fm = sharded ? BN_HF_NATIVE : (enum bn_hf_form)form;
        char *dir = write_form(&f, fm, sharded ? 2 : 1);
        src = open_ok(dir, fm == BN_HF_NATIVE ? fc->native_kind : kinds[fm], NULL);
        assert_cfg(&src->cfg, &f.s.cfg);
        ck_assert_uint_eq(src->vocab->chat, f.v->chat);
        ck_assert_uint_eq(src->vocab->pre, f.v->pre);
        ck_assert_uint_eq(src->vocab->model, f.v->model);
        char what[96];
        snprintf(what, sizeof what, "%s form %d%s", fc->preset, fm, sharded ? " (2 shards)" : "");
        if (fm == BN_HF_NATIVE || fc->latent_exact) {
            pack_to(src, out);
            assert_same_file(ref, out, what);
            unlink(out);
        } else {
            check_latent_linears(src, &f);
        }
        bn_source_close(src);
        rm_rf(dir);
    }
    unlink(ref);
    bn_vocab_free(f.v);
}
END_TEST

/* The family's own config.json: architectures, model_type, quantization_config and the tensor
 * names are the real checkpoints' (facts s.1-3). */
START_TEST(test_family_config_keys)
{
    static const struct {
        const char *preset, *arch, *model_type, *sub_norm, *not_convert;
        int quant, head_dim;
    } cases[] = {
        {"tiny", "BitNetForCausalLM", "bitnet", "model.layers.0.self_attn.attn_sub_norm.weight", NULL, 1, 0},
        {"tiny-1bitllm", "BitnetForCausalLM", "llama", "model.layers.1.mlp.ffn_layernorm.weight", NULL, 0, 0},
        {"tiny-llama3", "LlamaForCausalLM", "llama", NULL, NULL, 1, 1},
        {"tiny-falcon3", "LlamaForCausalLM", "llama", NULL, "lm_head", 1, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        fixture f;
        family_fixture(&f, cases[i].preset);
        char *dir = write_form(&f, BN_HF_NATIVE, 1);
        json_t *cfg = load_json(dir, "config.json");
        ck_assert_str_eq(json_string_value(json_array_get(json_object_get(cfg, "architectures"), 0)), cases[i].arch);
        ck_assert_str_eq(json_string_value(json_object_get(cfg, "model_type")), cases[i].model_type);
        json_t *q = json_object_get(cfg, "quantization_config");
        ck_assert_int_eq(q != NULL, cases[i].quant);
        if (q) ck_assert_str_eq(json_string_value(json_object_get(q, "quant_method")), "bitnet");
        if (cases[i].not_convert)
            ck_assert_str_eq(json_string_value(json_array_get(json_object_get(q, "modules_to_not_convert"), 0)),
                             cases[i].not_convert);
        /* Llama/Falcon: no linear_class, so transformers' bitlinear (divide). */
        if (!strcmp(cases[i].arch, "LlamaForCausalLM")) ck_assert_ptr_null(json_object_get(q, "linear_class"));
        ck_assert_int_eq(json_object_get(cfg, "head_dim") != NULL, cases[i].head_dim);
        ck_assert_int_eq(json_is_true(json_object_get(cfg, "tie_word_embeddings")), f.s.cfg.tied);
        json_decref(cfg);
        char *p = path_in(dir, "model.safetensors");
        bn_st_file *st;
        bn_error err = {{0}};
        ck_assert_msg(bn_st_open(p, &st, &err) == 0, "%s", err.msg);
        if (cases[i].sub_norm) ck_assert_ptr_nonnull(bn_st_find(st, cases[i].sub_norm));
        const bn_st_tensor *head = bn_st_find(st, "lm_head.weight");
        ck_assert_int_eq(head != NULL, !f.s.cfg.tied);
        if (head) ck_assert_uint_eq(head->dtype, BN_ST_BF16);
        const bn_st_tensor *ws = bn_st_find(st, "model.layers.0.self_attn.q_proj.weight_scale");
        ck_assert_int_eq(ws != NULL, cases[i].quant);
        if (ws) ck_assert_uint_eq(ws->dtype, BN_ST_BF16);
        bn_st_close(st);
        free(p);
        rm_rf(dir);
        bn_vocab_free(f.v);
    }
}
END_TEST

/* The same packed Llama checkpoint read both ways: without linear_class (and with bitlinear)
 * weight_scale divides; with autobitlinear it multiplies. */
START_TEST(test_llama_divide_vs_multiply)
{
    fixture f;
    family_fixture(&f, "tiny-llama3");
    char *dir = write_form(&f, BN_HF_NATIVE, 1);
    char *p = path_in(dir, "model.safetensors");
    bn_st_file *st;
    bn_error err = {{0}};
    ck_assert_msg(bn_st_open(p, &st, &err) == 0, "%s", err.msg);
    const char *const cls[] = {NULL, "bitlinear", "autobitlinear"};
    for (int k = 0; k < 3; k++) {
        if (cls[k]) edit_config(dir, "quantization_config.linear_class", json_string(cls[k]));
        bn_source *src = open_ok(dir, "hf-packed", NULL);
        int multiply = k == 2;
        for (size_t j = 0; j < sizeof linears / sizeof *linears; j++) {
            char name[64], hf[128];
            uint64_t rows, cols;
            snprintf(name, sizeof name, "blk.1.%s", linears[j]);
            linear_shape(&f.s.cfg, linears[j], &rows, &cols);
            int8_t *t = malloc(rows * cols), *ref = malloc(rows * cols);
            float scale, ref_scale;
            ck_assert_msg(src->ops->ternary(src, name, rows, cols, t, &scale, &err) == 0, "%s", err.msg);
            bn_synth_ternary(&f.s, name, rows, cols, ref, &ref_scale);
            ck_assert_mem_eq(t, ref, rows * cols);
            /* The stored bf16 weight_scale b: the synthetic scale is exactly 1.0f / b. */
            snprintf(hf, sizeof hf, "model.layers.1.%s.weight_scale", bn_layer_tensor_find(linears[j])->hf);
            const bn_st_tensor *ws = bn_st_find(st, hf);
            ck_assert_ptr_nonnull(ws);
            float b = bn_st_float_at(ws, 0);
            ck_assert_msg(1.0f / b == ref_scale, "%s: synthetic scale %g is not 1/%g", name, ref_scale, b);
            ck_assert_msg(scale == (multiply ? b : 1.0f / b), "%s (%s): scale %g, ws %g", name,
                          cls[k] ? cls[k] : "no linear_class", scale, b);
            free(t);
            free(ref);
        }
        if (!cls[k]) ck_assert_ptr_nonnull(strstr(src->notes, "linear_class absent"));
        bn_source_close(src);
    }
    bn_st_close(st);
    free(p);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

/* Writes every weight_scale of dir's model.safetensors as F32 (appended after the data). */
static void widen_scales(const char *dir, uint32_t dtype)
{
    char *p = path_in(dir, "model.safetensors"), *text = NULL;
    size_t len = 0;
    bn_error err = {{0}};
    ck_assert_msg(bn_read_file(p, (size_t)1 << 30, &text, &len, &err) == 0, "%s", err.msg);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | (uint8_t)text[i];
    json_t *h = json_loadb(text + 8, n, 0, NULL);
    ck_assert_ptr_nonnull(h);
    const uint8_t *data = (const uint8_t *)text + 8 + n;
    size_t dlen = len - 8 - n, extra = 0;
    uint8_t *tail = malloc(4096 * 8);
    const char *key;
    json_t *t;
    json_object_foreach(h, key, t) {
        if (!strstr(key, "weight_scale")) continue;
        json_int_t off = json_integer_value(json_array_get(json_object_get(t, "data_offsets"), 0));
        float v = bn_bf16_to_f32((uint16_t)(data[off] | data[off + 1] << 8));
        uint32_t bits = dtype == BN_ST_F32 ? bn_f32_bits(v) : bn_f32_to_f16(v);
        size_t es = dtype == BN_ST_F32 ? 4 : 2;
        ck_assert_msg(dtype == BN_ST_F32 || bn_f16_to_f32((uint16_t)bits) == v, "%s: %g is not f16-exact", key, v);
        for (size_t q = 0; q < es; q++) tail[extra + q] = (uint8_t)(bits >> (8 * q));
        json_object_set_new(t, "dtype", json_string(bn_st_dtype_name(dtype)));
        json_object_set_new(t, "data_offsets", json_pack("[I, I]", (json_int_t)(dlen + extra), (json_int_t)(dlen + extra + es)));
        extra += es;
    }
    FILE *fp = st_create(p, h);
    fwrite(data, 1, dlen, fp);
    fwrite(tail, 1, extra, fp);
    fclose(fp);
    free(tail);
    free(text);
    free(p);
}

/* weight_scale in F32 and F16 (ws read as f32, then 1.0f / ws): the same packed file. */
START_TEST(test_llama_scale_dtypes)
{
    fixture f;
    family_fixture(&f, "tiny-falcon3");
    bn_error err = {{0}};
    bn_source *src;
    char ref[512], out[512];
    snprintf(ref, sizeof ref, "%s", bn_test_path("hf_sref.bnpk"));
    snprintf(out, sizeof out, "%s", bn_test_path("hf_sout.bnpk"));
    ck_assert_msg(bn_source_open_synth(&f.s, f.v, &src, &err) == 0, "%s", err.msg);
    pack_to(src, ref);
    bn_source_close(src);
    const uint32_t dts[] = {BN_ST_F32, BN_ST_F16};
    for (int k = 0; k < 2; k++) {
        char *dir = write_form(&f, BN_HF_NATIVE, 1);
        widen_scales(dir, dts[k]);
        src = open_ok(dir, "hf-packed", NULL);
        pack_to(src, out);
        bn_source_close(src);
        assert_same_file(ref, out, bn_st_dtype_name(dts[k]));
        unlink(out);
        rm_rf(dir);
    }
    unlink(ref);
    bn_vocab_free(f.v);
}
END_TEST

/* Malformed or unsupported configs of the new families: each error names config.json (or the
 * file at fault) and the field. */
START_TEST(test_family_bad_configs)
{
    fixture f;
    family_fixture(&f, "tiny-llama3");
    char *dir = write_form(&f, BN_HF_NATIVE, 1);
    char *p = path_in(dir, "config.json"), *orig = NULL;
    bn_error err = {{0}};
    ck_assert_int_eq(bn_read_file(p, 1 << 20, &orig, NULL, &err), 0);
    static const struct {
        const char *key;
        const char *json;          /* NULL: delete the key */
        const char *what1, *what2;
    } cases[] = {
        {"architectures", "[\"MistralForCausalLM\"]", "config.json", "architectures[0] 'MistralForCausalLM'"},
        {"architectures", "[]", "config.json", "architectures[0] '(missing)'"},
        {"model_type", "\"mistral\"", "config.json", "model_type 'mistral'"},
        {"quantization_config", NULL, "config.json", "quantization_config: missing"},
        {"quantization_config.quant_method", "\"gptq\"", "config.json", "quant_method 'gptq'"},
        {"quantization_config.use_rms_norm", "true", "config.json", "use_rms_norm"},
        {"quantization_config.linear_class", "\"fancylinear\"", "config.json", "linear_class 'fancylinear'"},
        {"quantization_config.modules_to_not_convert", "[\"model.layers.0.self_attn.q_proj\"]", "config.json",
         "modules_to_not_convert[0]"},
        {"quantization_config.modules_to_not_convert", "\"lm_head\"", "config.json", "modules_to_not_convert: not a list"},
        {"head_dim", "48", "config.json", "head_dim 48"},
        {"rope_interleaved", "true", "config.json", "rope_interleaved"},
        {"mlp_bias", "true", "config.json", "mlp_bias"},
        {"hidden_act", "\"gelu\"", "config.json", "hidden_act 'gelu'"},
        {"eos_token_id", "[1, 2, 3]", "config.json", "eos_token_id"},
        {"eos_token_id", "\"x\"", "config.json", "eos_token_id"},
        {"tie_word_embeddings", "1", "config.json", "tie_word_embeddings"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        write_text(dir, "config.json", orig);
        edit_config(dir, cases[i].key, cases[i].json ? json_loads(cases[i].json, JSON_DECODE_ANY, NULL) : NULL);
        expect_open_fail(dir, cases[i].what1, cases[i].what2);
    }
    /* 1bitLLM's architecture over packed weights: latent floats expected. */
    write_text(dir, "config.json", orig);
    edit_config(dir, "architectures", json_pack("[s]", "BitnetForCausalLM"));
    edit_config(dir, "quantization_config", NULL);
    edit_config(dir, "tie_word_embeddings", json_true());
    expect_open_fail(dir, "q_proj.weight': dtype U8", "BitnetForCausalLM");
    /* ... and with a quantization_config, which 1bitLLM checkpoints do not have. */
    write_text(dir, "config.json", orig);
    edit_config(dir, "architectures", json_pack("[s]", "BitnetForCausalLM"));
    expect_open_fail(dir, "config.json", "quantization_config: unexpected");
    /* generation_config.json: bad JSON, bad ids. */
    write_text(dir, "config.json", orig);
    write_text(dir, "generation_config.json", "{\"eos_token_id\": ");
    expect_open_fail(dir, "generation_config.json", "not valid JSON");
    write_text(dir, "generation_config.json", "{\"eos_token_id\": [-1]}");
    expect_open_fail(dir, "generation_config.json", "eos_token_id");
    write_text(dir, "generation_config.json", "{\"eos_token_id\": 99999}");
    expect_open_fail(dir, "config.json", "outside vocab_size");
    write_text(dir, "generation_config.json", "{}");
    /* tokenizer_config.json: add_bos_token must be a boolean. */
    json_t *tc = load_json(dir, "tokenizer_config.json");
    json_object_set_new(tc, "add_bos_token", json_string("yes"));
    save_json(dir, "tokenizer_config.json", tc);
    expect_open_fail(dir, "tokenizer_config.json", "add_bos_token");
    free(orig);
    free(p);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

static void set_dtype_bf16(json_t *h, void *arg)
{
    json_object_set_new(json_object_get(h, (const char *)arg), "dtype", json_string("BF16"));
}

/* An empty F32 tensor called arg: enough to be listed in the header. */
static void add_empty(json_t *h, void *arg)
{
    json_object_set_new(h, (const char *)arg, json_pack("{s:s, s:[i], s:[i, i]}", "dtype", "F32", "shape", 0,
                                                        "data_offsets", 0, 0));
}

/* Tensors whose dtype, shape or presence is wrong for a Llama-form checkpoint. */
START_TEST(test_family_bad_tensors)
{
    fixture f;
    family_fixture(&f, "tiny-falcon3");
    char *dir = write_form(&f, BN_HF_NATIVE, 1);
    rewrite_st(dir, "model.safetensors", set_dtype, NULL, (void *)"lm_head.weight");
    expect_open_fail(dir, "model.safetensors: tensor 'lm_head.weight'", "dtype I8");
    rm_rf(dir);

    dir = write_form(&f, BN_HF_NATIVE, 1);
    rewrite_st(dir, "model.safetensors", set_shape_1d, NULL, (void *)"lm_head.weight");
    expect_open_fail(dir, "model.safetensors: tensor 'lm_head.weight': shape", "config.json");
    rm_rf(dir);

    /* Untied by config, but no lm_head. */
    dir = write_form(&f, BN_HF_NATIVE, 1);
    rewrite_st(dir, "model.safetensors", drop_tensor, NULL, (void *)"lm_head.weight");
    expect_open_fail(dir, "config.json", "tie_word_embeddings is false");
    rm_rf(dir);

    /* A sub-norm in a plain Llama block would change the math if dropped: refused. */
    dir = write_form(&f, BN_HF_NATIVE, 1);
    rewrite_st(dir, "model.safetensors", add_empty, NULL, (void *)"model.layers.1.self_attn.attn_sub_norm.weight");
    expect_open_fail(dir, "tensor 'model.layers.1.self_attn.attn_sub_norm.weight' is a sub-norm", "LlamaForCausalLM");
    rm_rf(dir);

    /* 1bitLLM: its sub-norms are required under their own names. */
    fixture g;
    family_fixture(&g, "tiny-1bitllm");
    dir = write_form(&g, BN_HF_NATIVE, 1);
    rewrite_st(dir, "model.safetensors", drop_tensor, NULL, (void *)"model.layers.0.self_attn.inner_attn_ln.weight");
    expect_open_fail(dir, "tensor 'model.layers.0.self_attn.inner_attn_ln.weight' is missing", NULL);
    rm_rf(dir);
    dir = write_form(&g, BN_HF_F16, 1);
    rewrite_st(dir, "model.safetensors", set_dtype_bf16, NULL, (void *)"model.layers.1.mlp.down_proj.weight");
    expect_open_fail(dir, "tensor 'model.layers.1.mlp.down_proj.weight': dtype BF16", "the other linears are F16");
    rm_rf(dir);
    bn_vocab_free(g.v);
    bn_vocab_free(f.v);
}
END_TEST

/* Falcon3's tokenizer decisions: the tiiuae pre_tokenizer shape reads as FALCON3; a Falcon
 * vocabulary under another split still does (noted); no BOS unless add_bos_token says so. */
START_TEST(test_falcon3_tokenizer)
{
    fixture f;
    family_fixture(&f, "tiny-falcon3");
    ck_assert_int_lt(f.s.cfg.bos, 0);
    char *dir = write_form(&f, BN_HF_NATIVE, 1);
    json_t *tj = load_json(dir, "tokenizer.json");
    json_t *pt = json_object_get(tj, "pre_tokenizer");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(pt, "pretokenizers"), 0), "type")),
                     "Punctuation");
    bn_source *src = open_ok(dir, "hf-packed", NULL);
    ck_assert_uint_eq(src->vocab->pre, BN_PRE_FALCON3);
    ck_assert_uint_eq(src->vocab->chat, BN_CHAT_FALCON3);
    ck_assert_int_eq(src->cfg.bos, -1);
    ck_assert_int_eq(src->cfg.eos, 11);
    bn_source_close(src);
    /* A plain GPT-2 ByteLevel split over the same vocabulary: still Falcon3's chain, noted. */
    json_object_set_new(tj, "pre_tokenizer", json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0,
                                                       "trim_offsets", 1, "use_regex", 1));
    save_json(dir, "tokenizer.json", tj);
    src = open_ok(dir, "hf-packed", "Falcon vocabulary");
    ck_assert_uint_eq(src->vocab->pre, BN_PRE_FALCON3);
    bn_source_close(src);
    /* add_bos_token: absent -> none for Falcon; true -> config.json's bos_token_id. */
    json_t *tc = load_json(dir, "tokenizer_config.json");
    json_object_del(tc, "add_bos_token");
    save_json(dir, "tokenizer_config.json", json_incref(tc));
    edit_config(dir, "bos_token_id", json_integer(11));
    src = open_ok(dir, "hf-packed", NULL);
    ck_assert_int_eq(src->cfg.bos, -1);
    bn_source_close(src);
    json_object_set_new(tc, "add_bos_token", json_true());
    save_json(dir, "tokenizer_config.json", tc);
    src = open_ok(dir, "hf-packed", NULL);
    ck_assert_int_eq(src->cfg.bos, 11);
    bn_source_close(src);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

/* Llama-3: eos from a generation_config.json list gives eos and eot; config.json's own
 * eos_token_id is overridden (noted). */
START_TEST(test_llama3_special_ids)
{
    fixture f;
    family_fixture(&f, "tiny-llama3");
    char *dir = write_form(&f, BN_HF_NATIVE, 1);
    int32_t a = f.v->eos, b = f.v->eot;
    ck_assert_int_ge(a, 0);
    ck_assert_int_ge(b, 0);
    ck_assert_int_ne(a, b);
    write_text(dir, "generation_config.json", "{}");
    edit_config(dir, "eos_token_id", json_pack("[i, i]", b, a));
    bn_source *src = open_ok(dir, "hf-packed", NULL);
    ck_assert_int_eq(src->cfg.eos, b);
    ck_assert_int_eq(src->cfg.eot, a);
    ck_assert_uint_eq(src->vocab->chat, BN_CHAT_LLAMA3);
    ck_assert_int_eq(src->cfg.bos, f.v->bos);
    bn_source_close(src);
    char gen[128];
    snprintf(gen, sizeof gen, "{\"bos_token_id\": %d, \"eos_token_id\": [%d, %d]}", f.v->bos, a, b);
    write_text(dir, "generation_config.json", gen);
    src = open_ok(dir, "hf-packed", "generation_config.json: eos_token_id");
    ck_assert_int_eq(src->cfg.eos, a);
    ck_assert_int_eq(src->cfg.eot, b);
    bn_source_close(src);
    /* add_bos_token false: nothing prepended. */
    json_t *tc = load_json(dir, "tokenizer_config.json");
    json_object_set_new(tc, "add_bos_token", json_false());
    save_json(dir, "tokenizer_config.json", tc);
    src = open_ok(dir, "hf-packed", NULL);
    ck_assert_int_eq(src->cfg.bos, -1);
    bn_source_close(src);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

/* 1bitLLM's SentencePiece files: tokenizer.model + added_tokens.json, no tokenizer.json. */
START_TEST(test_1bitllm_tokenizer)
{
    fixture f;
    family_fixture(&f, "tiny-1bitllm");
    ck_assert_uint_eq(f.v->model, BN_TOKM_SPM);
    char *dir = write_form(&f, BN_HF_NATIVE, 1);
    char *tj = path_in(dir, "tokenizer.json"), *tm = path_in(dir, "tokenizer.model"), *at = path_in(dir, "added_tokens.json");
    ck_assert_int_ne(access(tj, F_OK), 0);
    ck_assert_int_eq(access(tm, R_OK), 0);
    ck_assert_int_eq(access(at, R_OK), 0);
    bn_source *src = open_ok(dir, "hf-f32", "absmean");
    ck_assert_uint_eq(src->vocab->model, BN_TOKM_SPM);
    ck_assert_uint_eq(src->vocab->n_tokens, f.v->n_tokens);
    ck_assert_uint_eq(src->vocab->chat, BN_CHAT_NONE);
    ck_assert_int_eq(src->cfg.bos, 1);
    ck_assert_int_eq(src->cfg.eos, 2);
    ck_assert_uint_eq(src->cfg.act, BN_ACT_SILU);
    ck_assert_uint_eq(src->cfg.tied, 1);
    ck_assert_uint_eq(src->cfg.no_sub_norms, 0);
    bn_source_close(src);
    /* add_bos_token false: no BOS prepended. */
    json_t *tc = load_json(dir, "tokenizer_config.json");
    json_object_set_new(tc, "add_bos_token", json_false());
    save_json(dir, "tokenizer_config.json", tc);
    src = open_ok(dir, "hf-f32", NULL);
    ck_assert_int_eq(src->cfg.bos, -1);
    bn_source_close(src);
    /* Without added_tokens.json the model has 2 tokens fewer: padding rows, noted. */
    unlink(at);
    src = open_ok(dir, "hf-f32", "padding");
    ck_assert_uint_eq(src->vocab->n_tokens, f.v->n_tokens - 2);
    bn_source_close(src);
    /* Neither tokenizer file: an error naming both. */
    unlink(tm);
    expect_open_fail(dir, "tokenizer.json is missing", "tokenizer.model");
    /* Rewriting the directory with a BPE vocabulary removes the SentencePiece files. */
    fixture g;
    family_fixture(&g, "tiny");
    g.s.family = BN_FAM_1BITLLM;
    g.s.cfg.act = BN_ACT_SILU;
    bn_error err = {{0}};
    ck_assert_msg(bn_hf_write_synth_form(&g.s, g.v, dir, BN_HF_NATIVE, 1, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(access(tj, R_OK), 0);
    ck_assert_int_ne(access(at, F_OK), 0);
    bn_vocab_free(g.v);
    free(tj);
    free(tm);
    free(at);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

/* The writer refuses what it cannot write: sub-norms for a family whose HF form has none, an
 * unknown family; and the form names parse. */
START_TEST(test_writer_refuses)
{
    fixture f;
    family_fixture(&f, "tiny-llama3");
    bn_error err = {{0}};
    char *dir = tmp_dir();
    f.s.cfg.no_sub_norms = 0;
    ck_assert_int_ne(bn_hf_write_synth_form(&f.s, f.v, dir, BN_HF_NATIVE, 1, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "attn_sub_norm"));
    f.s.cfg.no_sub_norms = 1;
    f.s.family = 99;
    ck_assert_int_ne(bn_hf_write_synth_form(&f.s, f.v, dir, BN_HF_NATIVE, 1, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "unknown model family"));
    ck_assert_int_eq(bn_hf_form_parse("hf"), BN_HF_NATIVE);
    ck_assert_int_eq(bn_hf_form_parse("hf-f16"), BN_HF_F16);
    ck_assert_int_eq(bn_hf_form_parse("hf-q4"), -1);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

/* Meta's Llama-3 tokenizer.json from the fixtures, or NULL (why says what is missing). */
static const char *meta_tokenizer(const char **why)
{
    static char path[1024];
    const char *fx = getenv("BN_FIXTURES_DIR");
    snprintf(path, sizeof path, "%s/tokenizer/llama3-tokenizer.json", fx ? fx : "");
    *why = NULL;
    if (!fx || !*fx || access(path, R_OK) != 0) *why = "BN_FIXTURES_DIR/tokenizer/llama3-tokenizer.json not found";
    else if (getenv("BN_VALGRIND")) *why = "a 128256-row embedding twice: too slow under valgrind (BN_VALGRIND)";
    return *why ? NULL : path;
}

/* Llama3-8B-1.58's form with Meta's real tokenizer.json (128256 tokens): read as the Llama-3
 * family (not Falcon: pre LLAMA3, chat LLAMA3) and packed byte-identically. */
START_TEST(test_llama3_real_tokenizer)
{
    const char *why, *tok = meta_tokenizer(&why);
    ck_assert_ptr_nonnull(tok);
    bn_error err = {{0}};
    fixture f;
    memset(&f, 0, sizeof f);
    ck_assert_msg(bn_synth_parse("tiny-llama3,n_layer=1,n_vocab=128256", &f.s, &err) == 0, "%s", err.msg);
    f.s.seed = 7;
    ck_assert_msg(bn_vocab_load_hf(tok, NULL, &f.v, &err) == 0, "%s", err.msg);
    f.v->chat = BN_CHAT_LLAMA3;
    f.s.cfg.bos = f.v->bos;
    f.s.cfg.eos = f.v->eos;
    f.s.cfg.eot = f.v->eot;
    bn_source *src;
    char ref[512], out[512];
    snprintf(ref, sizeof ref, "%s", bn_test_path("hf_mref.bnpk"));
    snprintf(out, sizeof out, "%s", bn_test_path("hf_mout.bnpk"));
    ck_assert_msg(bn_source_open_synth(&f.s, f.v, &src, &err) == 0, "%s", err.msg);
    pack_to(src, ref);
    bn_source_close(src);
    char *dir = write_form(&f, BN_HF_NATIVE, 1);
    src = open_ok(dir, "hf-packed", NULL);
    ck_assert_uint_eq(src->vocab->pre, BN_PRE_LLAMA3);
    ck_assert_uint_eq(src->vocab->chat, BN_CHAT_LLAMA3);
    ck_assert_uint_eq(src->vocab->n_tokens, 128256);
    assert_cfg(&src->cfg, &f.s.cfg);
    pack_to(src, out);
    bn_source_close(src);
    assert_same_file(ref, out, "tiny-llama3 with Meta's tokenizer");
    unlink(ref);
    unlink(out);
    rm_rf(dir);
    bn_vocab_free(f.v);
}
END_TEST

static Suite *hf_suite(void)
{
    Suite *s = suite_create("hf");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_unpack_8x4);
    tcase_add_test(tc, test_packed);
    tcase_add_test(tc, test_latent);
    tcase_add_test(tc, test_sharded);
    tcase_add_test(tc, test_bitlinear_divides);
    tcase_add_test(tc, test_float_forms);
    tcase_add_test(tc, test_untied_and_extras);
    tcase_add_test(tc, test_tie_decisions);
    tcase_add_test(tc, test_vocab_json_roundtrip);
    tcase_add_test(tc, test_st_good);
    tcase_add_test(tc, test_st_bad_headers);
    tcase_add_test(tc, test_bad_config);
    tcase_add_test(tc, test_bad_tensors);
    tcase_add_test(tc, test_truncated_file);
    tcase_add_test(tc, test_bad_tokenizer);
    tcase_add_test(tc, test_bad_index);
    tcase_add_test(tc, test_empty_dir);
    tcase_add_loop_test(tc, test_family_forms, 0, (int)(sizeof family_cases / sizeof *family_cases));
    tcase_add_test(tc, test_family_config_keys);
    tcase_add_test(tc, test_llama_divide_vs_multiply);
    tcase_add_test(tc, test_llama_scale_dtypes);
    tcase_add_test(tc, test_family_bad_configs);
    tcase_add_test(tc, test_family_bad_tensors);
    tcase_add_test(tc, test_falcon3_tokenizer);
    tcase_add_test(tc, test_llama3_special_ids);
    tcase_add_test(tc, test_1bitllm_tokenizer);
    tcase_add_test(tc, test_writer_refuses);
    const char *why;
    (void)meta_tokenizer(&why);
    BN_TCASE_ADD_TEST_IF(tc, test_llama3_real_tokenizer, why);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return bn_test_exit("test_hf", hf_suite()); }
