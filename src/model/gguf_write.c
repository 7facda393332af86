/* GGUF v3 writer for synthetic models, in the form bitnet.cpp produces (model facts 4.1): arch
 * "bitnet-b1.58", its metadata keys, no tokenizer.ggml.pre and the converter's placeholder chat
 * template, so that reading the file back exercises the same corrections a real file needs.
 *
 * The header (metadata + tensor infos, a few MB at most for a 128k vocabulary) is built in
 * memory; tensor data is then streamed one tensor (or one embedding row) at a time through the
 * atomic writer, so a crash never leaves a half-written file under the final name. */
#include "model/gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/checked.h"
#include "base/file.h"
#include "kernels/half.h"
#include "model/synth.h"
#include "text/vocab.h"

/* convert-ms-to-gguf-bitnet.py's hard-coded template (not the trained format; model facts 5). */
const char bn_gguf_bitnet_placeholder_template[] =
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\\n\\nBITNETAssistant: ' + eos_token }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";

/* ---- growable byte buffer for the header -------------------------------------------------- */

typedef struct buf {
    uint8_t *p;
    size_t len, cap;
    int oom;
} buf;

static void put(buf *b, const void *d, size_t n)
{
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_strn(buf *b, const char *s, size_t n) { put_u64(b, n); put(b, s, n); }
static void put_str(buf *b, const char *s) { put_strn(b, s, strlen(s)); }

static void kv_u32(buf *b, const char *k, uint32_t v) { put_str(b, k); put_u32(b, BN_GGUF_U32); put_u32(b, v); }
static void kv_f32(buf *b, const char *k, float v) { put_str(b, k); put_u32(b, BN_GGUF_F32); put(b, &v, 4); }
static void kv_str(buf *b, const char *k, const char *v) { put_str(b, k); put_u32(b, BN_GGUF_STRING); put_str(b, v); }
static void kv_bool(buf *b, const char *k, int v) { uint8_t x = (uint8_t)!!v; put_str(b, k); put_u32(b, BN_GGUF_BOOL); put(b, &x, 1); }
static void kv_arr_head(buf *b, const char *k, uint32_t et, uint64_t n)
{
    put_str(b, k);
    put_u32(b, BN_GGUF_ARRAY);
    put_u32(b, et);
    put_u64(b, n);
}

/* ---- the tensor list -------------------------------------------------------------------- */

typedef struct wtensor {
    char name[64];        /* canonical (no ".weight") */
    uint32_t type;
    uint64_t rows, cols;  /* vectors: rows = 1, written as 1-D */
    uint64_t nbytes, offset;
    int linear;
} wtensor;

static void add(wtensor *t, size_t *n, const char *name, uint32_t type, uint64_t rows, uint64_t cols, int linear)
{
    wtensor *w = &t[(*n)++];
    snprintf(w->name, sizeof w->name, "%s", name);
    w->type = type;
    w->rows = rows;
    w->cols = cols;
    w->linear = linear;
}

/* The order the bitnet.cpp converter emits (HF safetensors order: per layer alphabetical by
 * HF name), which readers must not depend on anyway. */
static size_t list_tensors(const bn_config *c, uint32_t wt, wtensor *t)
{
    const uint64_t E = c->n_embd, F = c->n_ff, Q = (uint64_t)c->n_head * c->head_dim;
    const uint64_t KV = (uint64_t)c->n_head_kv * c->head_dim;
    size_t n = 0;
    add(t, &n, "token_embd", BN_GGML_F16, c->n_vocab, E, 0);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        char nm[64];
#define T(suffix, type, r, cc, lin) (snprintf(nm, sizeof nm, "blk.%u." suffix, l), add(t, &n, nm, type, r, cc, lin))
        T("attn_norm", BN_GGML_F32, 1, E, 0);
        T("ffn_down", wt, E, F, 1);
        T("ffn_sub_norm", BN_GGML_F32, 1, F, 0);
        T("ffn_gate", wt, F, E, 1);
        T("ffn_up", wt, F, E, 1);
        T("ffn_norm", BN_GGML_F32, 1, E, 0);
        T("attn_sub_norm", BN_GGML_F32, 1, Q, 0);
        T("attn_k", wt, KV, E, 1);
        T("attn_output", wt, E, Q, 1);
        T("attn_q", wt, Q, E, 1);
        T("attn_v", wt, KV, E, 1);
#undef T
    }
    add(t, &n, "output_norm", BN_GGML_F32, 1, E, 0);
    if (!c->tied) add(t, &n, "output", BN_GGML_F16, c->n_vocab, E, 0);
    return n;
}

static int size_tensors(wtensor *t, size_t n, const char *path, bn_error *err)
{
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const char *why;
        uint64_t el;
        if (!bn_mul_ok(t[i].rows, t[i].cols, &el)) return bn_err(err, "%s: tensor %s: too large", path, t[i].name);
        t[i].nbytes = bn_ggml_nbytes(t[i].type, el, t[i].cols, &why);
        if (why) {
            char tb[16];
            return bn_err(err, "%s: tensor %s [%llu x %llu]: cannot be stored as %s: %s", path, t[i].name,
                          (unsigned long long)t[i].rows, (unsigned long long)t[i].cols,
                          bn_ggml_type_name(t[i].type, tb), why);
        }
        t[i].offset = off;
        off = bn_align_up(off + t[i].nbytes, BN_GGUF_DEFAULT_ALIGNMENT);
    }
    return 0;
}

/* ---- header ------------------------------------------------------------------------------ */

static uint32_t file_type_of(uint32_t wt)
{
    /* llama ftypes of bitnet.cpp's fork (model facts 4.2) */
    switch (wt) {
    case BN_GGML_I2_S: return 40;
    case BN_GGML_TQ1_0: return 36;
    case BN_GGML_TQ2_0: return 37;
    case BN_GGML_F16: return 1;
    case BN_GGML_BF16: return 32;
    default: return 0;
    }
}

static void put_config(buf *b, const bn_config *c, uint32_t wt)
{
    const char *a = "bitnet-b1.58.";
    char k[96];
#define K(s) (snprintf(k, sizeof k, "%s%s", a, s), k)
    kv_str(b, "general.architecture", "bitnet-b1.58");
    kv_str(b, "general.name", "bitnet-synthetic");
    kv_u32(b, K("vocab_size"), c->n_vocab);
    kv_u32(b, K("context_length"), c->n_ctx_max);
    kv_u32(b, K("embedding_length"), c->n_embd);
    kv_u32(b, K("block_count"), c->n_layer);
    kv_u32(b, K("feed_forward_length"), c->n_ff);
    kv_u32(b, K("rope.dimension_count"), c->head_dim);
    kv_u32(b, K("attention.head_count"), c->n_head);
    kv_u32(b, K("attention.head_count_kv"), c->n_head_kv);
    kv_f32(b, K("attention.layer_norm_rms_epsilon"), c->norm_eps);
    kv_f32(b, K("rope.freq_base"), c->rope_theta);
#undef K
    kv_u32(b, "general.file_type", file_type_of(wt));
}

static void put_vocab(buf *b, const bn_vocab *v)
{
    kv_str(b, "tokenizer.ggml.model", "gpt2");
    kv_arr_head(b, "tokenizer.ggml.tokens", BN_GGUF_STRING, v->n_tokens);
    for (uint32_t i = 0; i < v->n_tokens; i++) {
        size_t len;
        const char *s = bn_vocab_token(v, i, &len);
        put_strn(b, s, len);
    }
    kv_arr_head(b, "tokenizer.ggml.token_type", BN_GGUF_I32, v->n_tokens);
    for (uint32_t i = 0; i < v->n_tokens; i++) put_u32(b, v->type[i]);
    kv_arr_head(b, "tokenizer.ggml.merges", BN_GGUF_STRING, v->n_merges);
    for (uint32_t i = 0; i < v->n_merges; i++) {
        size_t ll, rl;
        const char *l = bn_vocab_token(v, v->merges[2 * i], &ll), *r = bn_vocab_token(v, v->merges[2 * i + 1], &rl);
        put_u64(b, ll + 1 + rl);
        put(b, l, ll);
        put(b, " ", 1);
        put(b, r, rl);
    }
    if (v->bos >= 0) kv_u32(b, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
    if (v->eos >= 0) kv_u32(b, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
    if (v->pad >= 0) kv_u32(b, "tokenizer.ggml.padding_token_id", (uint32_t)v->pad);
    /* The official file has no eot key (bitnet.cpp finds <|eot_id|> by text); write one only
     * when the text lookup would not find this vocabulary's end-of-turn token. */
    if (v->eot >= 0) {
        size_t len;
        const char *s = bn_vocab_token(v, (uint32_t)v->eot, &len);
        if (!(len == 10 && !memcmp(s, "<|eot_id|>", 10))) kv_u32(b, "tokenizer.ggml.eot_token_id", (uint32_t)v->eot);
    }
    kv_bool(b, "tokenizer.ggml.add_bos_token", 1);
    kv_str(b, "tokenizer.chat_template", bn_gguf_bitnet_placeholder_template);
    /* deliberately no tokenizer.ggml.pre: the official file lacks it (model facts 6.4) */
}

static uint64_t count_kv(const bn_vocab *v)
{
    /* 12 config + file_type + model/tokens/types/merges + add_bos + template + specials */
    uint64_t n = 13 + 4 + 2;
    size_t len = 0;
    const char *s = v->eot >= 0 ? bn_vocab_token(v, (uint32_t)v->eot, &len) : NULL;
    n += (v->bos >= 0) + (v->eos >= 0) + (v->pad >= 0) + (s && !(len == 10 && !memcmp(s, "<|eot_id|>", 10)));
    return n;
}

static void put_tensor_infos(buf *b, const wtensor *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char nm[80];
        snprintf(nm, sizeof nm, "%s.weight", t[i].name);
        put_str(b, nm);
        if (t[i].rows == 1 && !t[i].linear) {
            put_u32(b, 1);
            put_u64(b, t[i].cols);
        } else {
            put_u32(b, 2);
            put_u64(b, t[i].cols); /* ne0 = in */
            put_u64(b, t[i].rows); /* ne1 = out */
        }
        put_u32(b, t[i].type);
        put_u64(b, t[i].offset);
    }
}

/* ---- tensor data ------------------------------------------------------------------------- */

static void enc_i2s(const int8_t *t, uint64_t n, float scale, uint8_t *out)
{
    for (uint64_t b = 0; b < n / 128; b++)
        for (int j = 0; j < 32; j++) {
            const int8_t *x = t + b * 128 + j;
            out[b * 32 + j] = (uint8_t)((x[0] + 1) << 6 | (x[32] + 1) << 4 | (x[64] + 1) << 2 | (x[96] + 1));
        }
    memset(out + n / 4, 0, 32);
    memcpy(out + n / 4, &scale, 4);
}

static int block_nonzero(const int8_t *t) { for (int i = 0; i < 256; i++) if (t[i]) return 1; return 0; }

static void enc_tq2(const int8_t *t, uint64_t n, uint16_t d, uint8_t *out)
{
    for (uint64_t b = 0; b < n / 256; b++) {
        const int8_t *x = t + b * 256;
        uint8_t *q = out + b * 66;
        for (int c = 0; c < 2; c++)
            for (int m = 0; m < 32; m++) {
                uint8_t v = 0;
                for (int k = 0; k < 4; k++) v |= (uint8_t)((x[c * 128 + k * 32 + m] + 1) << (2 * k));
                q[c * 32 + m] = v;
            }
        uint16_t dd = block_nonzero(x) ? d : 0; /* quantize_row_tq2_0_ref: d = block absmax */
        memcpy(q + 64, &dd, 2);
    }
}

/* k trits (most significant first), then the ·256/243 ceiling that makes trit extraction a
 * multiply-and-shift (ggml's TQ1_0). */
static uint8_t pack_trits(const int8_t *x, int stride, int k)
{
    unsigned q = 0;
    for (int i = 0; i < k; i++) q = q * 3 + (unsigned)(x[i * stride] + 1);
    for (int i = k; i < 5; i++) q *= 3;
    return (uint8_t)((q * 256 + 242) / 243);
}

static void enc_tq1(const int8_t *t, uint64_t n, uint16_t d, uint8_t *out)
{
    for (uint64_t b = 0; b < n / 256; b++) {
        const int8_t *x = t + b * 256;
        uint8_t *q = out + b * 54;
        for (int m = 0; m < 32; m++) q[m] = pack_trits(x + m, 32, 5);
        for (int m = 0; m < 16; m++) q[32 + m] = pack_trits(x + 160 + m, 16, 5);
        for (int j = 0; j < 4; j++) q[48 + j] = pack_trits(x + 240 + j, 4, 4);
        uint16_t dd = block_nonzero(x) ? d : 0;
        memcpy(q + 52, &dd, 2);
    }
}

static int write_linear(bn_atomic_file *f, const bn_synth *s, const wtensor *w, const char *path, bn_error *err)
{
    const uint64_t n = w->rows * w->cols;
    int8_t *t = malloc(n ? n : 1);
    uint8_t *out = malloc(w->nbytes ? w->nbytes : 1);
    int rc = -1;
    float scale;
    if (!t || !out) { bn_err(err, "%s: tensor %s: out of memory", path, w->name); goto done; }
    bn_synth_ternary(s, w->name, w->rows, w->cols, t, &scale);
    uint16_t d = bn_f32_to_f16(scale);
    int inexact = w->type == BN_GGML_BF16 ? bn_bf16_to_f32(bn_f32_to_bf16(scale)) != scale
                  : w->type != BN_GGML_I2_S && w->type != BN_GGML_F32 && bn_f16_to_f32(d) != scale;
    if (inexact) { /* synthetic scales are exact by construction; anything else would drift */
        bn_err(err, "%s: tensor %s: scale %g is not exact in %s", path, w->name, scale,
               w->type == BN_GGML_BF16 ? "bf16" : "f16");
        goto done;
    }
    switch (w->type) {
    case BN_GGML_I2_S: enc_i2s(t, n, scale, out); break;
    case BN_GGML_TQ2_0: enc_tq2(t, n, d, out); break;
    case BN_GGML_TQ1_0: enc_tq1(t, n, d, out); break;
    case BN_GGML_F16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h = bn_f32_to_f16((float)t[i] * scale);
            memcpy(out + 2 * i, &h, 2);
        }
        break;
    case BN_GGML_BF16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h = bn_f32_to_bf16((float)t[i] * scale);
            memcpy(out + 2 * i, &h, 2);
        }
        break;
    default:
        for (uint64_t i = 0; i < n; i++) {
            float v = (float)t[i] * scale;
            memcpy(out + 4 * i, &v, 4);
        }
        break;
    }
    rc = bn_atomic_write(f, out, w->nbytes, err);
done:
    free(t);
    free(out);
    return rc;
}

/* Embedding (and untied output) rows, one row at a time: F16. */
static int write_embedding(bn_atomic_file *f, const bn_synth *s, const wtensor *w, const char *path, bn_error *err)
{
    float *row = malloc(w->cols * sizeof *row);
    uint16_t *h = malloc(w->cols * sizeof *h);
    int rc = 0;
    if (!row || !h) rc = bn_err(err, "%s: tensor %s: out of memory", path, w->name);
    for (uint64_t r = 0; rc == 0 && r < w->rows; r++) {
        bn_synth_embedding_row(s, (uint32_t)r, row);
        for (uint64_t i = 0; i < w->cols; i++) h[i] = bn_f32_to_f16(row[i]);
        rc = bn_atomic_write(f, h, w->cols * sizeof *h, err);
    }
    free(row);
    free(h);
    return rc;
}

static int write_norm(bn_atomic_file *f, const bn_synth *s, const wtensor *w, const char *path, bn_error *err)
{
    float *v = malloc(w->cols * sizeof *v);
    if (!v) return bn_err(err, "%s: tensor %s: out of memory", path, w->name);
    bn_synth_norm(s, w->name, w->cols, v);
    int rc = bn_atomic_write(f, v, w->cols * sizeof *v, err);
    free(v);
    return rc;
}

static int write_data(bn_atomic_file *f, const bn_synth *s, const wtensor *t, size_t n, uint64_t data_off,
                      const char *path, bn_error *err)
{
    for (size_t i = 0; i < n; i++) {
        if (f->off != data_off + t[i].offset) return bn_err(err, "%s: internal: tensor %s misplaced", path, t[i].name);
        int rc = t[i].linear ? write_linear(f, s, &t[i], path, err)
                 : t[i].rows > 1 ? write_embedding(f, s, &t[i], path, err)
                                 : write_norm(f, s, &t[i], path, err);
        if (rc != 0 || bn_atomic_pad(f, BN_GGUF_DEFAULT_ALIGNMENT, err) != 0) return -1;
    }
    return 0;
}

static int check_inputs(const bn_synth *s, const bn_vocab *v, int wt, const char *path, bn_error *err)
{
    if (wt != BN_GGML_I2_S && wt != BN_GGML_TQ2_0 && wt != BN_GGML_TQ1_0 && wt != BN_GGML_F16 && wt != BN_GGML_F32 &&
        wt != BN_GGML_BF16)
        return bn_err(err, "%s: weight type %d is not one of 36 (I2_S), 35 (TQ2_0), 34 (TQ1_0), 1 (F16), 30 (BF16), "
                      "0 (F32)", path, wt);
    if (v->n_tokens != s->cfg.n_vocab)
        return bn_err(err, "%s: vocabulary has %u tokens but the model %u", path, v->n_tokens, s->cfg.n_vocab);
    return 0;
}

int bn_gguf_write_synth(const bn_synth *s, const bn_vocab *v, const char *path, int weight_type, bn_error *err)
{
    if (check_inputs(s, v, weight_type, path, err) != 0) return -1;
    const bn_config *c = &s->cfg;
    size_t cap = 3 + 11 * (size_t)c->n_layer;
    wtensor *t = calloc(cap, sizeof *t);
    if (!t) return bn_err(err, "%s: out of memory", path);
    size_t n = list_tensors(c, (uint32_t)weight_type, t);
    buf b = {0};
    bn_atomic_file f;
    int rc = -1, opened = 0;
    if (size_tensors(t, n, path, err) != 0) goto done;
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, n);
    put_u64(&b, count_kv(v));
    put_config(&b, c, (uint32_t)weight_type);
    put_vocab(&b, v);
    put_tensor_infos(&b, t, n);
    if (b.oom) { bn_err(err, "%s: out of memory building the header", path); goto done; }
    if (bn_atomic_open(&f, path, err) != 0) goto done;
    opened = 1;
    if (bn_atomic_write(&f, b.p, b.len, err) != 0 || bn_atomic_pad(&f, BN_GGUF_DEFAULT_ALIGNMENT, err) != 0 ||
        write_data(&f, s, t, n, bn_align_up(b.len, BN_GGUF_DEFAULT_ALIGNMENT), path, err) != 0)
        goto done;
    opened = 0;
    rc = bn_atomic_commit(&f, err);
done:
    if (opened) bn_atomic_abort(&f);
    free(b.p);
    free(t);
    return rc;
}
