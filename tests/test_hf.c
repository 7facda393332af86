/* Hugging Face checkpoints: the safetensors reader, the HF source and the HF writers.
 *
 * Synthetic checkpoints are written in every HF form (packed uint8, bf16 latent, sharded) and
 * read back: every code, scale and float must equal what bn_synth_* generates, so the forms
 * agree with each other exactly. Every class of bad input must fail with a message naming the
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
#include "model/hf_write.h"
#include "model/safetensors.h"
#include "model/source.h"
#include "model/synth.h"
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

static void linear_shape(const bn_config *c, const char *n, uint64_t *rows, uint64_t *cols)
{
    uint64_t kv = (uint64_t)c->head_dim * c->n_head_kv;
    *rows = !strcmp(n, "attn_k") || !strcmp(n, "attn_v") ? kv : !strcmp(n, "ffn_gate") || !strcmp(n, "ffn_up") ? c->n_ff : c->n_embd;
    *cols = !strcmp(n, "ffn_down") ? c->n_ff : c->n_embd;
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
    char *hj = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    uint64_t hl = strlen(hj);
    FILE *fp = fopen(p, "wb");
    ck_assert_ptr_nonnull(fp);
    for (int i = 0; i < 8; i++) fputc((int)(hl >> (8 * i)) & 0xff, fp);
    fwrite(hj, 1, hl, fp);
    fwrite(data, 1, dlen, fp);
    fclose(fp);
    free(hj);
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
    char *hj = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    ck_assert_int_gt(asprintf(&tmp, "%s.new", p), 0);
    FILE *fp = fopen(tmp, "wb");
    ck_assert_ptr_nonnull(fp);
    uint64_t hl = strlen(hj);
    for (int i = 0; i < 8; i++) fputc((int)(hl >> (8 * i)) & 0xff, fp);
    fwrite(hj, 1, hl, fp);
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
    free(hj);
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
        bn_synth_embedding_row(&f.s, r, want);
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
    if (fx && *fx && asprintf(&meta, "%s/tokenizer/llama3-tokenizer.json", fx) > 0 && access(meta, R_OK) == 0) {
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
    edit_config(dir, "model_type", json_string("llama"));
    edit_config(dir, "architectures", json_pack("[s]", "LlamaForCausalLM"));
    expect_open_fail(dir, "config.json", "model_type 'llama'");
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
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(hf_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
