/* GGUF: writer -> reader round trips in every weight type, the tokenizer corrections, reference
 * decoders written in ggml's loop order, and every class of bad input (each must fail with a
 * message naming the file and the field, never crash). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "kernels/half.h"
#include "model/gguf.h"
#include "model/source.h"
#include "model/synth.h"
#include "text/vocab.h"
#include "testutil.h"

/* ---- fixtures: a synthetic model and a hand-made vocabulary --------------------------------- */

/* n tokens "t0".."t{n-4}" plus three Llama-3 specials at the end; a few merges. Independent of
 * the builtin vocabulary so this suite does not depend on the tokenizer's progress. */
static bn_vocab *make_vocab(uint32_t n)
{
    static const char *spec[3] = {"<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"};
    char tok[32];
    size_t bytes = 0;
    for (uint32_t i = 0; i < n - 3; i++) bytes += (size_t)snprintf(tok, sizeof tok, "t%u", i);
    for (int i = 0; i < 3; i++) bytes += strlen(spec[i]);
    bn_vocab *v = bn_vocab_alloc(n, bytes, 8);
    ck_assert_ptr_nonnull(v);
    uint32_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        const char *s = i < n - 3 ? (snprintf(tok, sizeof tok, "t%u", i), tok) : spec[i - (n - 3)];
        memcpy(v->text + off, s, strlen(s));
        off += (uint32_t)strlen(s);
        v->tok_off[i + 1] = off;
        v->type[i] = i < n - 3 ? BN_TOK_NORMAL : BN_TOK_CONTROL;
    }
    bn_error err;
    ck_assert_int_eq(bn_vocab_index(v, &err), 0);
    for (uint32_t r = 0; r < 8; r++) {
        char m[32];
        int len = snprintf(m, sizeof m, "t%u t%u", 2 * r + 1, 3 * r + 2);
        ck_assert_msg(bn_vocab_set_merge(v, r, m, (size_t)len, &err) == 0, "%s", err.msg);
    }
    v->bos = (int32_t)n - 3;
    v->eos = (int32_t)n - 2;
    v->eot = (int32_t)n - 1;
    v->chat = BN_CHAT_BITNET;
    return v;
}

static void make_synth(const char *shape, bn_synth *s, bn_vocab **v)
{
    bn_error err;
    s->seed = 11;
    ck_assert_msg(bn_synth_shape(shape, &s->cfg, &err) == 0, "%s", err.msg);
    *v = make_vocab(s->cfg.n_vocab);
    s->cfg.bos = (*v)->bos;
    s->cfg.eos = (*v)->eos;
    s->cfg.eot = (*v)->eot;
}

static const char *write_synth(const char *shape, int wt, const char *name, bn_synth *s)
{
    bn_vocab *v;
    bn_error err;
    make_synth(shape, s, &v);
    const char *path = bn_test_path(name);
    ck_assert_msg(bn_gguf_write_synth(s, v, path, wt, &err) == 0, "%s", err.msg);
    bn_vocab_free(v);
    return path;
}

static char *slurp(const char *path, size_t *len)
{
    char *data;
    bn_error err;
    ck_assert_msg(bn_read_file(path, 1u << 30, &data, len, &err) == 0, "%s", err.msg);
    return data;
}

static void spit(const char *path, const void *d, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(d, 1, n, f), n);
    fclose(f);
}

/* ---- the canonical tensor list of a config ------------------------------------------------- */

typedef struct tdesc { char name[64]; uint64_t rows, cols; int linear; } tdesc;

static size_t tensors_of(const bn_config *c, tdesc *t)
{
    static const struct { const char *n; int r, c, lin; } lt[] = {
        {"attn_norm", 4, 0, 0}, {"attn_q", 1, 0, 1}, {"attn_k", 2, 0, 1}, {"attn_v", 2, 0, 1},
        {"attn_sub_norm", 4, 1, 0}, {"attn_output", 0, 1, 1}, {"ffn_norm", 4, 0, 0}, {"ffn_gate", 3, 0, 1},
        {"ffn_up", 3, 0, 1}, {"ffn_sub_norm", 4, 3, 0}, {"ffn_down", 0, 3, 1},
    };
    const uint64_t dim[5] = {c->n_embd, (uint64_t)c->n_head * c->head_dim, (uint64_t)c->n_head_kv * c->head_dim,
                             c->n_ff, 1};
    size_t n = 0;
    for (uint32_t l = 0; l < c->n_layer; l++)
        for (size_t i = 0; i < 11; i++) {
            snprintf(t[n].name, sizeof t[n].name, "blk.%u.%s", l, lt[i].n);
            t[n].rows = dim[lt[i].r];
            t[n].cols = dim[lt[i].c];
            t[n++].linear = lt[i].lin;
        }
    snprintf(t[n].name, sizeof t[n].name, "output_norm");
    t[n].rows = 1;
    t[n].cols = c->n_embd;
    t[n++].linear = 0;
    return n;
}

/* ---- round trips ---------------------------------------------------------------------------- */

static void check_roundtrip(const char *shape, int wt, const char *kind)
{
    bn_synth s;
    const char *path = write_synth(shape, wt, "rt.gguf", &s);
    bn_source *src;
    bn_error err;
    ck_assert_msg(bn_source_open_gguf(path, &src, &err) == 0, "%s", err.msg);
    const bn_config *c = &src->cfg;
    ck_assert_str_eq(src->kind, kind);
    ck_assert_str_eq(src->path, path);
    ck_assert_uint_eq(c->n_embd, s.cfg.n_embd);
    ck_assert_uint_eq(c->n_layer, s.cfg.n_layer);
    ck_assert_uint_eq(c->n_head, s.cfg.n_head);
    ck_assert_uint_eq(c->n_head_kv, s.cfg.n_head_kv);
    ck_assert_uint_eq(c->head_dim, s.cfg.head_dim);
    ck_assert_uint_eq(c->n_ff, s.cfg.n_ff);
    ck_assert_uint_eq(c->n_vocab, s.cfg.n_vocab);
    ck_assert_uint_eq(c->n_ctx_max, s.cfg.n_ctx_max);
    ck_assert(c->rope_theta == s.cfg.rope_theta);
    ck_assert(c->norm_eps == s.cfg.norm_eps);
    ck_assert_uint_eq(c->act, BN_ACT_RELU2);
    ck_assert_uint_eq(c->tied, 1);
    ck_assert_int_eq(c->bos, s.cfg.bos);
    ck_assert_int_eq(c->eos, s.cfg.eos);
    ck_assert_int_eq(c->eot, s.cfg.eot);

    /* vocabulary: identical tokens, types, merges */
    bn_vocab *v = make_vocab(s.cfg.n_vocab);
    ck_assert_uint_eq(src->vocab->n_tokens, v->n_tokens);
    ck_assert_mem_eq(src->vocab->tok_off, v->tok_off, (v->n_tokens + 1) * sizeof *v->tok_off);
    ck_assert_mem_eq(src->vocab->text, v->text, v->tok_off[v->n_tokens]);
    ck_assert_mem_eq(src->vocab->type, v->type, v->n_tokens);
    ck_assert_uint_eq(src->vocab->n_merges, v->n_merges);
    ck_assert_mem_eq(src->vocab->merges, v->merges, 2 * v->n_merges * sizeof *v->merges);
    bn_vocab_free(v);

    /* tensors: exact codes and scales, exact floats */
    tdesc t[64];
    size_t n = tensors_of(c, t);
    for (size_t i = 0; i < n; i++) {
        size_t el = t[i].rows * t[i].cols;
        if (t[i].linear) {
            int8_t *got = malloc(el), *want = malloc(el);
            float gs, ws;
            ck_assert_msg(src->ops->ternary(src, t[i].name, t[i].rows, t[i].cols, got, &gs, &err) == 0, "%s", err.msg);
            bn_synth_ternary(&s, t[i].name, t[i].rows, t[i].cols, want, &ws);
            ck_assert_msg(memcmp(got, want, el) == 0, "%s: codes differ (%s)", t[i].name, kind);
            ck_assert_msg(gs == ws, "%s: scale %g != %g", t[i].name, gs, ws);
            free(got);
            free(want);
        } else {
            float *got = malloc(el * sizeof *got), *want = malloc(el * sizeof *want);
            ck_assert_msg(src->ops->floats(src, t[i].name, 1, t[i].cols, 0, 1, got, &err) == 0, "%s", err.msg);
            bn_synth_norm(&s, t[i].name, t[i].cols, want);
            ck_assert_mem_eq(got, want, el * sizeof *got);
            free(got);
            free(want);
        }
    }
    /* embedding: a band of rows in the middle */
    uint64_t E = c->n_embd;
    float *got = malloc(5 * E * sizeof *got), *want = malloc(E * sizeof *want);
    ck_assert_msg(src->ops->floats(src, "token_embd", c->n_vocab, E, 17, 5, got, &err) == 0, "%s", err.msg);
    for (uint32_t r = 0; r < 5; r++) {
        bn_synth_embedding_row(&s, 17 + r, want);
        ck_assert_mem_eq(got + r * E, want, E * sizeof *want);
    }
    ck_assert_int_ne(src->ops->floats(src, "token_embd", c->n_vocab, E, c->n_vocab - 2, 5, got, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "token_embd"));
    free(got);
    free(want);
    bn_source_close(src);
    remove(path);
}

START_TEST(roundtrip_i2s) { check_roundtrip("tiny", BN_GGML_I2_S, "gguf-i2_s"); }
END_TEST
START_TEST(roundtrip_f16) { check_roundtrip("tiny", BN_GGML_F16, "gguf-f16"); }
END_TEST
START_TEST(roundtrip_f32) { check_roundtrip("tiny", BN_GGML_F32, "gguf-f32"); }
END_TEST
START_TEST(roundtrip_bf16) { check_roundtrip("tiny", BN_GGML_BF16, "gguf-bf16"); }
END_TEST
/* TQ types need 256-column blocks: widen tiny. */
START_TEST(roundtrip_tq2) { check_roundtrip("tiny,n_embd=256,n_ff=512", BN_GGML_TQ2_0, "gguf-tq2_0"); }
END_TEST
START_TEST(roundtrip_tq1) { check_roundtrip("tiny,n_embd=256,n_ff=512", BN_GGML_TQ1_0, "gguf-tq1_0"); }
END_TEST

START_TEST(tq_needs_blocks)
{
    bn_synth s;
    bn_vocab *v;
    bn_error err;
    make_synth("tiny", &s, &v);
    const char *path = bn_test_path("tq.gguf");
    ck_assert_int_ne(bn_gguf_write_synth(&s, v, path, BN_GGML_TQ2_0, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "256"));
    bn_vocab_free(v);
}
END_TEST

/* The official file's gaps are filled and reported. */
START_TEST(tokenizer_corrections)
{
    bn_synth s;
    const char *path = write_synth("tiny,n_layer=1", BN_GGML_I2_S, "tok.gguf", &s);
    bn_source *src;
    bn_error err;
    ck_assert_msg(bn_source_open_gguf(path, &src, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(src->vocab->pre, BN_PRE_LLAMA3);
    ck_assert_uint_eq(src->vocab->chat, BN_CHAT_BITNET);
    ck_assert_ptr_nonnull(src->notes);
    ck_assert_ptr_nonnull(strstr(src->notes, "tokenizer.ggml.pre missing: using llama3"));
    ck_assert_ptr_nonnull(strstr(src->notes, "placeholder"));
    ck_assert_ptr_nonnull(src->vocab->chat_template);
    ck_assert_ptr_nonnull(strstr(src->vocab->chat_template, "BITNETAssistant"));
    ck_assert_int_eq(src->vocab->eot, (int32_t)s.cfg.n_vocab - 1); /* found by its text */
    bn_source_close(src);
    remove(path);
}
END_TEST

/* ---- reference decoders in ggml's loop order (dequantize_row_*: sequential output) ---------- */

static void ref_tq2(const uint8_t *blk, int8_t *y)
{
    for (int j = 0; j < 64; j += 32)
        for (int l = 0; l < 4; l++)
            for (int m = 0; m < 32; m++) *y++ = (int8_t)(((blk[j + m] >> (l * 2)) & 3) - 1);
}

static void ref_tq1(const uint8_t *blk, int8_t *y)
{
    const uint8_t p3[5] = {1, 3, 9, 27, 81};
    for (int n = 0; n < 5; n++)
        for (int m = 0; m < 32; m++) *y++ = (int8_t)((((uint8_t)(blk[m] * p3[n])) * 3 >> 8) - 1);
    for (int n = 0; n < 5; n++)
        for (int m = 0; m < 16; m++) *y++ = (int8_t)((((uint8_t)(blk[32 + m] * p3[n])) * 3 >> 8) - 1);
    for (int n = 0; n < 4; n++)
        for (int j = 0; j < 4; j++) *y++ = (int8_t)((((uint8_t)(blk[48 + j] * p3[n])) * 3 >> 8) - 1);
}

static void check_reference(int wt)
{
    bn_synth s;
    const char *path = write_synth("tiny,n_embd=256,n_ff=512,n_layer=1", wt, "ref.gguf", &s);
    bn_gguf *g;
    bn_error err;
    ck_assert_msg(bn_gguf_open(path, &g, &err) == 0, "%s", err.msg);
    const bn_gguf_tensor *t = bn_gguf_tensor_find(g, "blk.0.ffn_gate.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(t->type, (unsigned)wt);
    uint64_t n = t->n_elements;
    int8_t *want = malloc(n), *got = malloc(n);
    float sc;
    bn_synth_ternary(&s, "blk.0.ffn_gate", t->ne[1], t->ne[0], want, &sc);
    for (uint64_t b = 0; b < n / 256; b++) {
        if (wt == BN_GGML_TQ2_0) ref_tq2(t->data + b * 66, got + b * 256);
        else if (wt == BN_GGML_TQ1_0) ref_tq1(t->data + b * 54, got + b * 256);
    }
    if (wt == BN_GGML_I2_S) /* model facts 4.3, as a formula over element index */
        for (uint64_t i = 0; i < n; i++) {
            uint64_t blk = i / 128, k = i % 128;
            int code = (t->data[blk * 32 + k % 32] >> (6 - 2 * (k / 32))) & 3;
            got[i] = (int8_t)(code == 3 ? 0 : code - 1);
        }
    ck_assert_mem_eq(got, want, n);
    free(want);
    free(got);
    bn_gguf_close(g);
    remove(path);
}

START_TEST(reference_layouts)
{
    check_reference(BN_GGML_TQ2_0);
    check_reference(BN_GGML_TQ1_0);
    check_reference(BN_GGML_I2_S);
}
END_TEST

/* ---- a re-emitter for crafting bad files ------------------------------------------------------ */

typedef struct wb { uint8_t *p; size_t len, cap; } wb;

static void w(wb *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 1024;
        b->p = realloc(b->p, b->cap);
        ck_assert_ptr_nonnull(b->p);
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}
static void w32(wb *b, uint32_t v) { w(b, &v, 4); }
static void w64(wb *b, uint64_t v) { w(b, &v, 8); }
static void wstr(wb *b, const char *s, size_t n) { w64(b, n); w(b, s, n); }

typedef struct tinfo { char name[96]; uint32_t n_dims, type; uint64_t ne[4], offset; } tinfo;

/* Edits: replace or delete metadata values, add raw KVs, rename the arch (and its key prefix),
 * and a hook over each tensor info (return 0 to drop it, 2 to emit it twice). */
typedef struct edits {
    const char *key;           /* replaced key (NULL: none) */
    int del;                   /* delete it instead */
    uint32_t type;             /* new value type: BN_GGUF_U32 / STRING / F32 */
    uint32_t u32;
    float f32;
    const char *str;
    const char *arch;          /* rename the architecture */
    void (*extra)(wb *b);      /* appends one extra KV */
    int (*thook)(tinfo *t);
    void (*dup_hook)(tinfo *t); /* applied to the second copy when thook returns 2 */
} edits;

static void emit_kv_value(wb *b, const bn_gguf_kv *kv)
{
    static const uint8_t sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    w32(b, kv->type);
    if (kv->type == BN_GGUF_STRING) wstr(b, kv->str.p, kv->str.len);
    else if (kv->type == BN_GGUF_ARRAY) {
        w32(b, kv->arr_type);
        w64(b, kv->arr_n);
        w(b, kv->arr_data, kv->arr_bytes);
    } else if (kv->type == BN_GGUF_F32) {
        float f = (float)kv->num.f;
        w(b, &f, 4);
    } else if (kv->type == BN_GGUF_F64) w(b, &kv->num.f, 8);
    else w(b, &kv->num.u, sz[kv->type]);
}

static void put_edit_value(wb *b, const edits *e)
{
    w32(b, e->type);
    if (e->type == BN_GGUF_U32) w32(b, e->u32);
    else if (e->type == BN_GGUF_F32) w(b, &e->f32, 4);
    else wstr(b, e->str, strlen(e->str));
}

static uint8_t *emit(const char *src_path, const edits *e, size_t *len)
{
    bn_gguf *g;
    bn_error err;
    ck_assert_msg(bn_gguf_open(src_path, &g, &err) == 0, "%s", err.msg);
    wb kvs = {0}, tis = {0}, out = {0};
    uint64_t n_kv = 0, n_t = 0;
    int replaced = 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const bn_gguf_kv *kv = &g->kv[i];
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.len, kv->key.p);
        if (e->arch && !strncmp(key, "bitnet-b1.58.", 13)) snprintf(key, sizeof key, "%s.%.*s", e->arch,
                                                                     (int)kv->key.len - 13, kv->key.p + 13);
        int replace = e->key && !strcmp(key, e->key);
        replaced |= replace;
        if (replace && e->del) continue;
        n_kv++;
        wstr(&kvs, key, strlen(key));
        if (e->arch && !strcmp(key, "general.architecture")) {
            w32(&kvs, BN_GGUF_STRING);
            wstr(&kvs, e->arch, strlen(e->arch));
        } else if (replace) {
            put_edit_value(&kvs, e);
        } else emit_kv_value(&kvs, kv);
    }
    if (e->key && !e->del && !replaced) { /* a key the file lacks: add it */
        n_kv++;
        wstr(&kvs, e->key, strlen(e->key));
        put_edit_value(&kvs, e);
    }
    if (e->extra) { e->extra(&kvs); n_kv++; }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const bn_gguf_tensor *t = &g->tensors[i];
        tinfo ti;
        snprintf(ti.name, sizeof ti.name, "%.*s", (int)t->name.len, t->name.p);
        ti.n_dims = t->n_dims;
        ti.type = t->type;
        memcpy(ti.ne, t->ne, sizeof ti.ne);
        ti.offset = t->offset;
        int times = e->thook ? e->thook(&ti) : 1;
        for (int k = 0; k < times; k++) {
            if (k == 1 && e->dup_hook) e->dup_hook(&ti);
            n_t++;
            wstr(&tis, ti.name, strlen(ti.name));
            w32(&tis, ti.n_dims);
            for (uint32_t d = 0; d < ti.n_dims; d++) w64(&tis, d < 4 ? ti.ne[d] : 1); /* n_dims may be bad */
            w32(&tis, ti.type);
            w64(&tis, ti.offset);
        }
    }
    w(&out, "GGUF", 4);
    w32(&out, 3);
    w64(&out, n_t);
    w64(&out, n_kv);
    w(&out, kvs.p, kvs.len);
    w(&out, tis.p, tis.len);
    static const uint8_t zero[32];
    w(&out, zero, (32 - out.len % 32) % 32);
    w(&out, g->base + g->data_off, g->size - g->data_off);
    free(kvs.p);
    free(tis.p);
    bn_gguf_close(g);
    *len = out.len;
    return out.p;
}

/* Opens the edited file from disk and expects failure naming the file and each needle. */
static void expect_fail_file(const char *path, const char *n1, const char *n2)
{
    bn_source *src = NULL;
    bn_error err = {{0}};
    int rc = bn_source_open_gguf(path, &src, &err);
    ck_assert_msg(rc != 0, "opened a bad file (expected '%s')", n1);
    if (getenv("BN_TEST_VERBOSE")) fprintf(stderr, "%s\n", err.msg);
    ck_assert_ptr_null(src);
    ck_assert_msg(strstr(err.msg, path) != NULL, "message does not name the file: %s", err.msg);
    ck_assert_msg(strstr(err.msg, n1) != NULL, "message lacks '%s': %s", n1, err.msg);
    if (n2) ck_assert_msg(strstr(err.msg, n2) != NULL, "message lacks '%s': %s", n2, err.msg);
}

static void expect_edit_fails(const char *shape, int wt, const edits *e, const char *n1, const char *n2)
{
    bn_synth s;
    const char *good = write_synth(shape, wt, "good.gguf", &s);
    size_t len;
    uint8_t *d = emit(good, e, &len);
    const char *bad = bn_test_path("bad.gguf");
    spit(bad, d, len);
    expect_fail_file(bad, n1, n2);
    free(d);
    remove(good);
    remove(bad);
}

#define SMALL "tiny,n_layer=1"

/* The re-emitter itself must be faithful, or the failures below prove nothing. */
START_TEST(emit_identity)
{
    bn_synth s;
    const char *good = write_synth(SMALL, BN_GGML_I2_S, "good.gguf", &s);
    edits e = {0};
    size_t len, glen;
    uint8_t *d = emit(good, &e, &len);
    char *orig = slurp(good, &glen);
    ck_assert_uint_eq(len, glen);
    ck_assert_mem_eq(d, orig, len);
    free(d);
    free(orig);
    remove(good);
}
END_TEST

START_TEST(bad_truncated)
{
    bn_synth s;
    const char *good = write_synth(SMALL, BN_GGML_I2_S, "trunc.gguf", &s);
    size_t len;
    char *d = slurp(good, &len);
    bn_error err;
    bn_source *src;
    /* Every prefix: a fresh copy of exactly that many bytes, so ASan sees any overread. */
    for (size_t n = 0; n < len; n++) {
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, d, n);
        err.msg[0] = 0;
        int rc = bn_source_open_gguf_mem(p, n, "trunc.gguf", &src, &err);
        ck_assert_msg(rc != 0, "prefix of %zu bytes opened", n);
        ck_assert_msg(strstr(err.msg, "trunc.gguf") != NULL, "prefix %zu: %s", n, err.msg);
        free(p);
    }
    ck_assert_int_eq(bn_source_open_gguf_mem(d, len, "trunc.gguf", &src, &err), 0);
    bn_source_close(src);
    /* and one on disk, to check the message of the mapped path */
    const char *bad = bn_test_path("trunc2.gguf");
    spit(bad, d, len - 100);
    expect_fail_file(bad, "extends past end of file", "output_norm.weight");
    remove(bad);
    free(d);
    remove(good);
}
END_TEST

static void patch_and_expect(const char *wtshape, int wt, size_t at, const void *bytes, size_t n, const char *n1,
                             const char *n2)
{
    bn_synth s;
    const char *good = write_synth(wtshape, wt, "p.gguf", &s);
    size_t len;
    char *d = slurp(good, &len);
    memcpy(d + at, bytes, n);
    const char *bad = bn_test_path("pbad.gguf");
    spit(bad, d, len);
    expect_fail_file(bad, n1, n2);
    free(d);
    remove(bad);
    remove(good);
}

START_TEST(bad_magic) { patch_and_expect(SMALL, BN_GGML_I2_S, 0, "GGUG", 4, "magic", NULL); }
END_TEST

START_TEST(bad_version)
{
    uint32_t v = 4;
    patch_and_expect(SMALL, BN_GGML_I2_S, 4, &v, 4, "version", "4");
    v = 1;
    patch_and_expect(SMALL, BN_GGML_I2_S, 4, &v, 4, "version", "v1");
    v = 0x03000000; /* big-endian v3 */
    patch_and_expect(SMALL, BN_GGML_I2_S, 4, &v, 4, "version", "big-endian");
}
END_TEST

START_TEST(bad_counts)
{
    uint64_t huge = 1ull << 63;
    patch_and_expect(SMALL, BN_GGML_I2_S, 16, &huge, 8, "metadata count", NULL);
    patch_and_expect(SMALL, BN_GGML_I2_S, 8, &huge, 8, "tensor count", NULL);
    huge = UINT64_MAX;
    patch_and_expect(SMALL, BN_GGML_I2_S, 16, &huge, 8, "metadata count", NULL);
    uint64_t zero = 0; /* empty tables (a fuzzer finding: no NULL arrays may reach the sort) */
    patch_and_expect(SMALL, BN_GGML_I2_S, 16, &zero, 8, "general.architecture", "missing");
    patch_and_expect(SMALL, BN_GGML_I2_S, 8, &zero, 8, "token_embd.weight", "missing");
}
END_TEST

START_TEST(bad_arch)
{
    edits e = {.arch = "bitnot"};
    expect_edit_fails(SMALL, BN_GGML_F16, &e, "general.architecture", "unknown architecture 'bitnot'");
    edits l = {.arch = "llama"};
    expect_edit_fails(SMALL, BN_GGML_F16, &l, "general.architecture", "Llama");
    /* the same ids on a non-BitNet arch are ambiguous */
    expect_edit_fails(SMALL, BN_GGML_I2_S, &l, "type id 36", "blk.0.");
    edits b = {.arch = "bitnet"};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &b, "general.architecture", "1bitLLM");
}
END_TEST

static void extra_relu2(wb *b)
{
    wstr(b, "bitnet.hidden_act", 17);
    w32(b, BN_GGUF_STRING);
    wstr(b, "relu2", 5);
}

static void extra_silu(wb *b)
{
    wstr(b, "bitnet-b1.58.hidden_act", 23);
    w32(b, BN_GGUF_STRING);
    wstr(b, "silu", 4);
}

START_TEST(arch_bitnet_relu2)
{
    bn_synth s;
    const char *good = write_synth(SMALL, BN_GGML_I2_S, "b.gguf", &s);
    edits e = {.arch = "bitnet", .extra = extra_relu2};
    size_t len;
    uint8_t *d = emit(good, &e, &len);
    bn_source *src;
    bn_error err;
    ck_assert_msg(bn_source_open_gguf_mem(d, len, "b.gguf", &src, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(src->cfg.act, BN_ACT_RELU2);
    bn_source_close(src);
    free(d);
    remove(good);
    edits f = {.extra = extra_silu};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &f, "hidden_act", "silu");
}
END_TEST

static int t_q4_0(tinfo *t) { if (!strcmp(t->name, "blk.0.attn_q.weight")) t->type = 2; return 1; }
static int t_tl1(tinfo *t) { if (!strcmp(t->name, "blk.0.attn_q.weight")) t->type = 38; return 1; }
static int t_type99(tinfo *t) { if (!strcmp(t->name, "output_norm.weight")) t->type = 99; return 1; }

START_TEST(bad_tensor_type)
{
    edits e = {.thook = t_q4_0};
    expect_edit_fails(SMALL, BN_GGML_F16, &e, "blk.0.attn_q.weight", "unsupported tensor type id 2");
    edits f = {.thook = t_tl1};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &f, "blk.0.attn_q.weight", "TL1");
    edits g = {.thook = t_type99};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &g, "output_norm.weight", "99");
}
END_TEST

static int t_shape(tinfo *t) { if (!strcmp(t->name, "blk.0.attn_k.weight")) { t->ne[1] = 128; } return 1; }
static int t_shape3(tinfo *t)
{
    if (!strcmp(t->name, "blk.0.attn_norm.weight")) { t->n_dims = 2; t->ne[0] = 64; t->ne[1] = 2; }
    return 1;
}

START_TEST(bad_shape)
{
    edits e = {.thook = t_shape};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &e, "blk.0.attn_k.weight", "shape");
    edits f = {.thook = t_shape3};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &f, "blk.0.attn_norm.weight", "shape");
    /* the config key that disagrees with every tensor */
    edits g = {.key = "bitnet-b1.58.feed_forward_length", .type = BN_GGUF_U32, .u32 = 384};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &g, "blk.0.ffn_gate.weight", "shape");
}
END_TEST

static int t_past_eof(tinfo *t) { if (!strcmp(t->name, "blk.0.ffn_down.weight")) t->offset = 1ull << 40; return 1; }
static int t_wrap(tinfo *t) { if (!strcmp(t->name, "blk.0.ffn_down.weight")) t->offset = UINT64_MAX - 31; return 1; }
static int t_misalign(tinfo *t) { if (!strcmp(t->name, "blk.0.ffn_down.weight")) t->offset += 4; return 1; }

START_TEST(bad_offset)
{
    edits e = {.thook = t_past_eof};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &e, "blk.0.ffn_down.weight", "extends past end of file");
    edits f = {.thook = t_wrap};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &f, "blk.0.ffn_down.weight", "extends past end of file");
    edits g = {.thook = t_misalign};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &g, "blk.0.ffn_down.weight", "alignment");
}
END_TEST

static int t_overflow(tinfo *t)
{
    if (!strcmp(t->name, "blk.0.attn_q.weight")) { t->ne[0] = 1ull << 32; t->ne[1] = 1ull << 32; }
    return 1;
}
static int t_overflow4(tinfo *t)
{
    if (!strcmp(t->name, "blk.0.attn_q.weight")) {
        t->n_dims = 4;
        t->ne[0] = t->ne[1] = t->ne[2] = t->ne[3] = 1ull << 16;
    }
    return 1;
}
static int t_zero(tinfo *t) { if (!strcmp(t->name, "blk.0.attn_q.weight")) t->ne[0] = 0; return 1; }
static int t_dims(tinfo *t) { if (!strcmp(t->name, "blk.0.attn_q.weight")) t->n_dims = 5; return 1; }
static int t_nbytes_overflow(tinfo *t)
{
    if (!strcmp(t->name, "output_norm.weight")) { t->n_dims = 2; t->ne[0] = 1ull << 31; t->ne[1] = 1ull << 31; }
    return 1;
}

START_TEST(bad_dims)
{
    edits e = {.thook = t_overflow};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &e, "blk.0.attn_q.weight", "overflow");
    edits f = {.thook = t_overflow4};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &f, "blk.0.attn_q.weight", "overflow");
    edits g = {.thook = t_zero};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &g, "blk.0.attn_q.weight", "ne0");
    edits h = {.thook = t_dims};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &h, "blk.0.attn_q.weight", "dimension count");
    /* 2^62 F32 elements: n fits but n * 4 bytes does not */
    edits i = {.thook = t_nbytes_overflow};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &i, "output_norm.weight", "overflow");
}
END_TEST

static int t_drop(tinfo *t) { return strcmp(t->name, "blk.0.ffn_up.weight") != 0; }
static int t_dup(tinfo *t) { return !strcmp(t->name, "blk.0.attn_v.weight") ? 2 : 1; }
static int t_drop_embd(tinfo *t) { return strcmp(t->name, "token_embd.weight") != 0; }

static void rename_rope(tinfo *t) { snprintf(t->name, sizeof t->name, "rope_freqs.weight"); }

/* Extra tensors (bitnet.cpp's loader tolerates rope_freqs, biases...) are noted, not fatal. */
START_TEST(unknown_tensor_noted)
{
    bn_synth s;
    const char *good = write_synth(SMALL, BN_GGML_I2_S, "u.gguf", &s);
    edits e = {.thook = t_dup, .dup_hook = rename_rope};
    size_t len;
    uint8_t *d = emit(good, &e, &len);
    bn_source *src;
    bn_error err;
    ck_assert_msg(bn_source_open_gguf_mem(d, len, "u.gguf", &src, &err) == 0, "%s", err.msg);
    ck_assert_ptr_nonnull(strstr(src->notes, "rope_freqs.weight"));
    bn_source_close(src);
    free(d);
    remove(good);
}
END_TEST

START_TEST(bad_missing_duplicate)
{
    edits e = {.thook = t_drop};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &e, "blk.0.ffn_up.weight", "missing");
    edits f = {.thook = t_dup};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &f, "blk.0.attn_v.weight", "more than once");
    edits g = {.thook = t_drop_embd};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &g, "token_embd.weight", "missing");
}
END_TEST

START_TEST(bad_metadata)
{
    edits e = {.key = "bitnet-b1.58.rope.dimension_count", .type = BN_GGUF_U32, .u32 = 16};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &e, "rope.dimension_count", "head_dim");
    edits f = {.key = "bitnet-b1.58.block_count", .type = BN_GGUF_STRING, .str = "2"};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &f, "metadata key 'bitnet-b1.58.block_count'",
                      "expected uint32, found string");
    edits g = {.key = "bitnet-b1.58.embedding_length", .del = 1};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &g, "bitnet-b1.58.embedding_length", "missing");
    edits h = {.key = "tokenizer.ggml.model", .type = BN_GGUF_STRING, .str = "llama"};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &h, "tokenizer.ggml.model", "llama");
    edits i = {.key = "tokenizer.ggml.bos_token_id", .type = BN_GGUF_U32, .u32 = 100000};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &i, "tokenizer.ggml.bos_token_id", "outside");
    edits j = {.key = "bitnet-b1.58.vocab_size", .type = BN_GGUF_U32, .u32 = 511};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &j, "vocab_size", "511");
    edits k = {.key = "general.alignment", .type = BN_GGUF_U32, .u32 = 24};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &k, "general.alignment", "power of two");
    edits l = {.key = "tokenizer.ggml.pre", .type = BN_GGUF_STRING, .str = "qwen2"};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &l, "tokenizer.ggml.pre", "qwen2");
    edits m = {.key = "bitnet-b1.58.attention.head_count", .type = BN_GGUF_U32, .u32 = 3};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &m, "attention.head_count", "divide");
}
END_TEST

static void extra_deep(wb *b)
{
    wstr(b, "bomb", 4);
    w32(b, BN_GGUF_ARRAY);
    for (int i = 0; i < 20; i++) { w32(b, BN_GGUF_ARRAY); w64(b, 1); }
    w32(b, BN_GGUF_U8);
    w64(b, 0);
}

static void extra_long_array(wb *b)
{
    wstr(b, "big", 3);
    w32(b, BN_GGUF_ARRAY);
    w32(b, BN_GGUF_U64);
    w64(b, 1ull << 60);
}

static void extra_dup_key(wb *b)
{
    wstr(b, "general.name", 12);
    w32(b, BN_GGUF_STRING);
    wstr(b, "again", 5);
}

START_TEST(bad_arrays)
{
    edits e = {.extra = extra_deep};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &e, "'bomb'", "nested");
    edits f = {.extra = extra_long_array};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &f, "'big'", "cannot fit");
    edits g = {.extra = extra_dup_key};
    expect_edit_fails(SMALL, BN_GGML_I2_S, &g, "general.name", "more than once");
}
END_TEST

/* Scales are data, checked when the tensor is read. */
static void expect_scale_rejected(float bad)
{
    bn_synth s;
    const char *good = write_synth(SMALL, BN_GGML_I2_S, "sc.gguf", &s);
    bn_gguf *g;
    bn_error err;
    ck_assert_msg(bn_gguf_open(good, &g, &err) == 0, "%s", err.msg);
    const bn_gguf_tensor *t = bn_gguf_tensor_find(g, "blk.0.attn_output.weight");
    size_t at = (size_t)(t->data - g->base) + t->n_elements / 4;
    uint64_t rows = t->ne[1], cols = t->ne[0];
    bn_gguf_close(g);
    size_t len;
    char *d = slurp(good, &len);
    memcpy(d + at, &bad, 4);
    bn_source *src;
    ck_assert_msg(bn_source_open_gguf_mem(d, len, "sc.gguf", &src, &err) == 0, "%s", err.msg);
    int8_t *codes = malloc(rows * cols);
    float scale;
    ck_assert_int_ne(src->ops->ternary(src, "blk.0.attn_output", rows, cols, codes, &scale, &err), 0);
    ck_assert_msg(strstr(err.msg, "sc.gguf") && strstr(err.msg, "blk.0.attn_output") && strstr(err.msg, "scale"),
                  "%s", err.msg);
    /* a wrong request shape is refused too */
    ck_assert_int_ne(src->ops->ternary(src, "blk.0.attn_output", cols, rows / 2, codes, &scale, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "shape"));
    ck_assert_int_ne(src->ops->ternary(src, "blk.9.attn_output", rows, cols, codes, &scale, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "missing"));
    free(codes);
    bn_source_close(src);
    free(d);
    remove(good);
}

START_TEST(bad_scale)
{
    expect_scale_rejected(NAN);
    expect_scale_rejected(INFINITY);
    expect_scale_rejected(-INFINITY);
    expect_scale_rejected(0.0f);
    expect_scale_rejected(-0.5f);
}
END_TEST

/* TQ2_0 with a block scale that differs from the others cannot be one ternary tensor. */
START_TEST(bad_tq_block_scales)
{
    bn_synth s;
    const char *good = write_synth("tiny,n_embd=256,n_ff=512,n_layer=1", BN_GGML_TQ2_0, "tq.gguf", &s);
    bn_gguf *g;
    bn_error err;
    ck_assert_msg(bn_gguf_open(good, &g, &err) == 0, "%s", err.msg);
    const bn_gguf_tensor *t = bn_gguf_tensor_find(g, "blk.0.ffn_up.weight");
    size_t at = (size_t)(t->data - g->base) + 3 * 66 + 64;
    uint64_t rows = t->ne[1], cols = t->ne[0];
    bn_gguf_close(g);
    size_t len;
    char *d = slurp(good, &len);
    uint16_t h;
    memcpy(&h, d + at, 2);
    h = bn_f32_to_f16(bn_f16_to_f32(h) * 2);
    memcpy(d + at, &h, 2);
    bn_source *src;
    ck_assert_msg(bn_source_open_gguf_mem(d, len, "tq.gguf", &src, &err) == 0, "%s", err.msg);
    int8_t *codes = malloc(rows * cols);
    float scale;
    ck_assert_int_ne(src->ops->ternary(src, "blk.0.ffn_up", rows, cols, codes, &scale, &err), 0);
    ck_assert_msg(strstr(err.msg, "tq.gguf") && strstr(err.msg, "blk.0.ffn_up") && strstr(err.msg, "block 3"),
                  "%s", err.msg);
    /* a negated block scale is the same ternary tensor with flipped signs: accepted */
    memcpy(&h, d + at, 2);
    h = (uint16_t)(bn_f32_to_f16(bn_f16_to_f32(h) / 2) ^ 0x8000);
    memcpy(d + at, &h, 2);
    int8_t *want = malloc(rows * cols);
    ck_assert_msg(src->ops->ternary(src, "blk.0.ffn_up", rows, cols, codes, &scale, &err) == 0, "%s", err.msg);
    float ws;
    bn_synth_ternary(&s, "blk.0.ffn_up", rows, cols, want, &ws);
    ck_assert(scale == ws);
    for (size_t i = 0; i < rows * cols; i++)
        ck_assert_int_eq(codes[i], (i / 256 == 3 ? -1 : 1) * want[i]);
    free(want);
    free(codes);
    bn_source_close(src);
    free(d);
    remove(good);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("gguf");
    TCase *rt = tcase_create("roundtrip");
    tcase_add_test(rt, roundtrip_i2s);
    tcase_add_test(rt, roundtrip_f16);
    tcase_add_test(rt, roundtrip_f32);
    tcase_add_test(rt, roundtrip_bf16);
    tcase_add_test(rt, unknown_tensor_noted);
    tcase_add_test(rt, roundtrip_tq2);
    tcase_add_test(rt, roundtrip_tq1);
    tcase_add_test(rt, tq_needs_blocks);
    tcase_add_test(rt, tokenizer_corrections);
    tcase_add_test(rt, reference_layouts);
    tcase_add_test(rt, arch_bitnet_relu2);
    suite_add_tcase(s, rt);
    TCase *bad = tcase_create("bad_input");
    tcase_set_timeout(bad, 600);
    tcase_add_test(bad, emit_identity);
    tcase_add_test(bad, bad_truncated);
    tcase_add_test(bad, bad_magic);
    tcase_add_test(bad, bad_version);
    tcase_add_test(bad, bad_counts);
    tcase_add_test(bad, bad_arch);
    tcase_add_test(bad, bad_tensor_type);
    tcase_add_test(bad, bad_shape);
    tcase_add_test(bad, bad_offset);
    tcase_add_test(bad, bad_dims);
    tcase_add_test(bad, bad_missing_duplicate);
    tcase_add_test(bad, bad_metadata);
    tcase_add_test(bad, bad_arrays);
    tcase_add_test(bad, bad_scale);
    tcase_add_test(bad, bad_tq_block_scales);
    suite_add_tcase(s, bad);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
