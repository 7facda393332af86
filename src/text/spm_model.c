/* SentencePiece's tokenizer.model (a protobuf ModelProto) <-> an SPM bn_vocab.
 *
 * Field numbers, from sentencepiece_model.proto (proto2):
 *   ModelProto      1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec
 *   SentencePiece   1 piece (string), 2 score (float), 3 type (enum, default NORMAL = 1;
 *                   NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6: the
 *                   numbering of enum bn_token_type)
 *   TrainerSpec     3 model_type (UNIGRAM 1 default, BPE 2), 35 byte_fallback (bool),
 *                   40 unk_id (0), 41 bos_id (1), 42 eos_id (2), 43 pad_id (-1)
 *   NormalizerSpec  1 name, 3 add_dummy_prefix (bool, default true), 4 remove_extra_whitespaces
 * Everything else is skipped by wire type. The bytes are untrusted (fuzz_spm_model.c): every
 * length is bounded by the bytes left in the enclosing message, varints by 10 bytes.
 *
 * Not applied, as in llama.cpp: the normalizer's character map and whitespace collapsing
 * (Llama-2's model has name "identity" and neither). */
#include "text/spm_model.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/file.h"

#define MAX_PIECES (1u << 24)      /* bn_vocab_alloc's limit */
#define ADDED_SCORE (-1000.0f)     /* added tokens' score, as bitnet.cpp's converter writes */

/* ---- reading ---- */

typedef struct {
    const uint8_t *base, *p, *end;
    const char *name;
    bn_error *err;
} pb;

typedef struct {
    uint32_t field, wt;
    uint64_t val;              /* wire types 0, 1, 5 */
    const uint8_t *data;       /* wire type 2 */
    size_t len;
} pb_field;

#define PB_FAIL(r, ...) (bn_err((r)->err, __VA_ARGS__), \
                         bn_err_prefix((r)->err, "%s: byte %zu", (r)->name, (size_t)((r)->p - (r)->base)))

static int pb_varint(pb *r, uint64_t *v)
{
    uint64_t x = 0;
    for (int i = 0; i < 10; i++) {
        if (r->p >= r->end) return PB_FAIL(r, "truncated varint");
        uint8_t b = *r->p++;
        x |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return PB_FAIL(r, "varint longer than 10 bytes");
}

static int pb_next(pb *r, pb_field *f)
{
    uint64_t tag;
    if (pb_varint(r, &tag)) return -1;
    f->field = (uint32_t)(tag >> 3);
    f->wt = (uint32_t)(tag & 7);
    if (tag >> 3 == 0 || tag >> 3 > 0x1fffffff) return PB_FAIL(r, "invalid field number %llu", (unsigned long long)(tag >> 3));
    size_t left = (size_t)(r->end - r->p);
    switch (f->wt) {
    case 0: return pb_varint(r, &f->val);
    case 1:
    case 5: {
        size_t n = f->wt == 1 ? 8 : 4;
        if (left < n) return PB_FAIL(r, "field %u: truncated fixed%zu", f->field, 8 * n);
        f->val = 0;
        for (size_t i = 0; i < n; i++) f->val |= (uint64_t)r->p[i] << (8 * i);
        r->p += n;
        return 0;
    }
    case 2: {
        uint64_t len;
        if (pb_varint(r, &len)) return -1;
        if (len > (uint64_t)(r->end - r->p))
            return PB_FAIL(r, "field %u: length %llu runs past the end (%zu bytes left)", f->field,
                           (unsigned long long)len, (size_t)(r->end - r->p));
        f->data = r->p;
        f->len = (size_t)len;
        r->p += len;
        return 0;
    }
    default:
        return PB_FAIL(r, "field %u: wire type %u is not supported", f->field, f->wt);
    }
}

static int pb_want(pb *r, const pb_field *f, uint32_t wt, const char *what)
{
    if (f->wt == wt) return 0;
    return PB_FAIL(r, "%s (field %u) has wire type %u, expected %u", what, f->field, f->wt, wt);
}

/* A sub-message reader over f's bytes, sharing base (offsets stay file offsets). */
static pb pb_sub(const pb *r, const pb_field *f)
{
    return (pb){r->base, f->data, f->data + f->len, r->name, r->err};
}

typedef struct {
    const uint8_t *s;
    uint32_t len;
    float score;
    uint8_t type;
} piece;

typedef struct {
    piece *pieces;
    uint32_t n, cap;
    uint64_t text_bytes;
    int64_t model_type, byte_fallback, bos, eos, pad;
    int add_dummy_prefix;
} model;

static int parse_piece(pb *r, const pb_field *outer, model *m)
{
    if (pb_want(r, outer, 2, "pieces")) return -1;
    if (m->n == MAX_PIECES) return PB_FAIL(r, "more than %u pieces", MAX_PIECES);
    if (m->n == m->cap) {
        uint32_t cap = m->cap ? m->cap * 2 : 1024;
        piece *p = realloc(m->pieces, (size_t)cap * sizeof *p);
        if (!p) return PB_FAIL(r, "out of memory for %u pieces", cap);
        m->pieces = p;
        m->cap = cap;
    }
    piece pc = {NULL, 0, 0.0f, BN_TOK_NORMAL};
    int have_text = 0;
    pb s = pb_sub(r, outer);
    pb_field f;
    while (s.p < s.end) {
        if (pb_next(&s, &f)) return -1;
        if (f.field == 1) {
            if (pb_want(&s, &f, 2, "piece")) return -1;
            pc.s = f.data;
            pc.len = (uint32_t)f.len;
            have_text = 1;
        } else if (f.field == 2) {
            if (pb_want(&s, &f, 5, "score")) return -1;
            uint32_t bits = (uint32_t)f.val;
            memcpy(&pc.score, &bits, 4);
            if (pc.score != pc.score) return PB_FAIL(&s, "piece %u: score is NaN", m->n);
        } else if (f.field == 3) {
            if (pb_want(&s, &f, 0, "type")) return -1;
            if (f.val < BN_TOK_NORMAL || f.val > BN_TOK_BYTE)
                return PB_FAIL(&s, "piece %u: unknown type %llu", m->n, (unsigned long long)f.val);
            pc.type = (uint8_t)f.val;
        }
    }
    if (!have_text || pc.len == 0) return PB_FAIL(r, "piece %u has no text", m->n);
    m->text_bytes += pc.len;
    m->pieces[m->n++] = pc;
    return 0;
}

static int parse_trainer(pb *r, const pb_field *outer, model *m)
{
    if (pb_want(r, outer, 2, "trainer_spec")) return -1;
    pb s = pb_sub(r, outer);
    pb_field f;
    while (s.p < s.end) {
        if (pb_next(&s, &f)) return -1;
        int64_t *slot = f.field == 3 ? &m->model_type : f.field == 35 ? &m->byte_fallback :
                        f.field == 41 ? &m->bos : f.field == 42 ? &m->eos : f.field == 43 ? &m->pad : NULL;
        if (!slot) continue;
        if (pb_want(&s, &f, 0, "a trainer_spec field")) return -1;
        *slot = (int64_t)(int32_t)(uint32_t)f.val;   /* int32 on the wire: sign-extended varint */
    }
    return 0;
}

static int parse_normalizer(pb *r, const pb_field *outer, model *m)
{
    if (pb_want(r, outer, 2, "normalizer_spec")) return -1;
    pb s = pb_sub(r, outer);
    pb_field f;
    while (s.p < s.end) {
        if (pb_next(&s, &f)) return -1;
        if (f.field != 3) continue;
        if (pb_want(&s, &f, 0, "normalizer_spec.add_dummy_prefix")) return -1;
        m->add_dummy_prefix = f.val != 0;
    }
    return 0;
}

static int check_id(bn_error *err, const char *name, const char *what, int64_t id, uint32_t n, int32_t *out)
{
    if (id < -1 || id >= (int64_t)n)
        return bn_err(err, "%s: trainer_spec.%s %lld is outside the %u pieces", name, what, (long long)id, n);
    *out = (int32_t)id;
    return 0;
}

static int build(const model *m, const char *name, bn_vocab **out, bn_error *err)
{
    if (m->n == 0) return bn_err(err, "%s: no pieces", name);
    if (m->model_type != 2)
        return bn_err(err, "%s: trainer_spec.model_type is %lld%s: only BPE (2) is supported", name,
                      (long long)m->model_type, m->model_type == 1 ? " (UNIGRAM)" : "");
    if (!m->byte_fallback)
        return bn_err(err, "%s: trainer_spec.byte_fallback is false: bitnetd's SentencePiece tokenizer needs byte fallback", name);
    if (m->text_bytes > UINT32_MAX) return bn_err(err, "%s: pieces too large", name);
    bn_vocab *v = bn_vocab_alloc(m->n, (size_t)m->text_bytes, 0);
    if (!v || !bn_vocab_scores_alloc(v)) {
        bn_vocab_free(v);
        return bn_err(err, "%s: out of memory for %u pieces", name, m->n);
    }
    uint32_t o = 0;
    for (uint32_t i = 0; i < m->n; i++) {
        v->tok_off[i] = o;
        memcpy(v->text + o, m->pieces[i].s, m->pieces[i].len);
        o += m->pieces[i].len;
        v->type[i] = m->pieces[i].type;
        v->scores[i] = m->pieces[i].score;
    }
    v->tok_off[m->n] = o;
    v->model = BN_TOKM_SPM;
    v->space_prefix = (uint32_t)m->add_dummy_prefix;
    v->chat = BN_CHAT_NONE;
    int rc = check_id(err, name, "bos_id", m->bos, m->n, &v->bos) ||
             check_id(err, name, "eos_id", m->eos, m->n, &v->eos) ||
             check_id(err, name, "pad_id", m->pad, m->n, &v->pad);
    if (!rc && bn_vocab_index(v, err)) rc = bn_err_prefix(err, "%s: pieces", name);
    if (!rc && bn_vocab_validate(v, err)) rc = bn_err_prefix(err, "%s", name);
    if (rc) {
        bn_vocab_free(v);
        return -1;
    }
    *out = v;
    return 0;
}

int bn_spm_model_parse(const uint8_t *data, size_t len, const char *name, bn_vocab **out,
                       bn_error *err)
{
    *out = NULL;
    name = name ? name : "tokenizer.model";
    pb r = {data, data, data + len, name, err};
    model m = {.model_type = 1, .bos = 1, .eos = 2, .pad = -1, .add_dummy_prefix = 1};
    pb_field f;
    int rc = 0;
    while (r.p < r.end && !rc) {
        rc = pb_next(&r, &f);
        if (rc) break;
        if (f.field == 1) rc = parse_piece(&r, &f, &m);
        else if (f.field == 2) rc = parse_trainer(&r, &f, &m);
        else if (f.field == 3) rc = parse_normalizer(&r, &f, &m);
    }
    if (!rc) rc = build(&m, name, out, err);
    free(m.pieces);
    return rc;
}

/* ---- added_tokens.json ---- */

typedef struct {
    const char *s;
    size_t len;
} added;

/* Appends the tokens of added_tokens.json ({"text": id, ...}) to *vp as USER_DEFINED. Ids below
 * the model's count must name the same text; the others must continue its ids without gaps. */
static int apply_added(bn_vocab **vp, const char *json, size_t json_len, bn_error *err)
{
    static const char *name = "added_tokens.json";
    bn_vocab *v = *vp;
    json_error_t je;
    json_t *root = json_loadb(json, json_len, 0, &je);
    if (!root) return bn_err(err, "%s: not valid JSON (line %d): %s", name, je.line, je.text);
    int rc = 0;
    size_t n_new = 0, extra_text = 0;
    const char *key;
    json_t *val;
    if (!json_is_object(root)) rc = bn_err(err, "%s: the top level is not an object", name);
    size_t total = json_is_object(root) ? json_object_size(root) : 0;
    added *fresh = calloc(total ? total : 1, sizeof *fresh);
    if (!fresh && !rc) rc = bn_err(err, "%s: out of memory", name);
    json_object_foreach(root, key, val) {
        if (rc) break;
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        size_t kl = strlen(key);
        if (id < 0 || id >= (json_int_t)(v->n_tokens + total)) {
            rc = bn_err(err, "%s: '%.60s': id is not an integer in [0, %zu) (added ids must continue "
                        "tokenizer.model's %u without gaps)", name, key, v->n_tokens + total, v->n_tokens);
        } else if (id < (json_int_t)v->n_tokens) {
            size_t tl;
            const char *t = bn_vocab_token(v, (uint32_t)id, &tl);
            if (tl != kl || memcmp(t, key, kl))
                rc = bn_err(err, "%s: '%.60s' has id %lld, which is the piece '%.*s' in tokenizer.model", name, key,
                            (long long)id, (int)(tl > 60 ? 60 : tl), t);
        } else if (fresh[id - v->n_tokens].s) {
            rc = bn_err(err, "%s: id %lld appears twice", name, (long long)id);
        } else if (bn_vocab_find(v, key, kl) >= 0) {
            rc = bn_err(err, "%s: '%.60s' is already piece %d of tokenizer.model", name, key, bn_vocab_find(v, key, kl));
        } else {
            fresh[id - v->n_tokens] = (added){key, kl};
            n_new++;
            extra_text += kl;
        }
    }
    for (size_t i = 0; i < n_new && !rc; i++)
        if (!fresh[i].s || !fresh[i].len)
            rc = bn_err(err, "%s: no token has id %zu (added ids must continue tokenizer.model's %u without gaps)", name,
                        v->n_tokens + i, v->n_tokens);
    bn_vocab *w = NULL;
    if (!rc && n_new) {
        w = bn_vocab_alloc(v->n_tokens + (uint32_t)n_new, v->tok_off[v->n_tokens] + extra_text, 0);
        if (!w || !bn_vocab_scores_alloc(w)) rc = bn_err(err, "%s: out of memory", name);
    }
    if (!rc && w) {
        uint32_t n = v->n_tokens, o = v->tok_off[n];
        memcpy(w->tok_off, v->tok_off, ((size_t)n + 1) * sizeof *w->tok_off);
        memcpy(w->text, v->text, o);
        memcpy(w->type, v->type, n);
        memcpy(w->scores, v->scores, (size_t)n * sizeof *w->scores);
        for (size_t i = 0; i < n_new; i++) {
            memcpy(w->text + o, fresh[i].s, fresh[i].len);
            o += (uint32_t)fresh[i].len;
            w->tok_off[n + i + 1] = o;
            w->type[n + i] = BN_TOK_USER_DEFINED;
            w->scores[n + i] = ADDED_SCORE;
        }
        w->bos = v->bos; w->eos = v->eos; w->eot = v->eot; w->pad = v->pad;
        w->pre = v->pre; w->chat = v->chat; w->model = v->model; w->space_prefix = v->space_prefix;
        if (bn_vocab_index(w, err)) rc = bn_err_prefix(err, "%s", name);
    }
    free(fresh);
    json_decref(root);
    if (rc) {
        bn_vocab_free(w);
        return -1;
    }
    if (w) {
        bn_vocab_free(v);
        *vp = v = w;
    }
    if (v->pad < 0) v->pad = bn_vocab_find(v, "<pad>", 5);   /* HF's pad_token of 1bitLLM */
    return 0;
}

int bn_spm_model_load(const char *path, const char *added_tokens_json, bn_vocab **out,
                      bn_error *err)
{
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    if (bn_read_file(path, (size_t)256 << 20, &buf, &len, err)) return -1;
    const char *slash = strrchr(path, '/');
    bn_vocab *v = NULL;
    int rc = bn_spm_model_parse((const uint8_t *)buf, len, slash ? slash + 1 : path, &v, err);
    free(buf);
    struct stat st;
    if (!rc && added_tokens_json && stat(added_tokens_json, &st) == 0) {
        char *j = NULL;
        size_t jl = 0;
        rc = bn_read_file(added_tokens_json, (size_t)64 << 20, &j, &jl, err);
        if (!rc) rc = apply_added(&v, j, jl, err);
        free(j);
    } else if (!rc && added_tokens_json && errno != ENOENT) {
        rc = bn_err(err, "%s: %s", added_tokens_json, strerror(errno));
    }
    if (!rc && bn_vocab_validate(v, err)) rc = bn_err_prefix(err, "%s", path);
    if (rc) {
        bn_vocab_free(v);
        return -1;
    }
    *out = v;
    return 0;
}

/* ---- writing ---- */

typedef struct {
    uint8_t *b;
    size_t len, cap;
    int oom;
} wbuf;

static void put(wbuf *w, const void *p, size_t n)
{
    if (w->oom || n == 0) return;   /* n == 0: p may be NULL (an empty piece) */
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + n) cap *= 2;
        uint8_t *b = realloc(w->b, cap);
        if (!b) {
            w->oom = 1;
            return;
        }
        w->b = b;
        w->cap = cap;
    }
    memcpy(w->b + w->len, p, n);
    w->len += n;
}

static void put_varint(wbuf *w, uint64_t v)
{
    uint8_t b[10];
    size_t n = 0;
    do {
        b[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v) b[n] |= 0x80;
        n++;
    } while (v);
    put(w, b, n);
}

static void put_tag(wbuf *w, uint32_t field, uint32_t wt) { put_varint(w, (uint64_t)field << 3 | wt); }
static void put_int(wbuf *w, uint32_t field, int64_t v) { put_tag(w, field, 0); put_varint(w, (uint64_t)v); }
static void put_bytes(wbuf *w, uint32_t field, const void *p, size_t n)
{
    put_tag(w, field, 2);
    put_varint(w, n);
    put(w, p, n);
}

static int32_t first_of_type(const bn_vocab *v, uint32_t n, uint8_t type)
{
    for (uint32_t i = 0; i < n; i++)
        if (v->type[i] == type) return (int32_t)i;
    return -1;
}

static int32_t id_below(int32_t id, uint32_t n) { return id >= 0 && (uint32_t)id < n ? id : -1; }

/* tokenizer.model of v's first n tokens. */
static int write_model(const bn_vocab *v, uint32_t n, uint8_t **out, size_t *len, bn_error *err)
{
    wbuf w = {0}, sub = {0};
    for (uint32_t i = 0; i < n; i++) {
        size_t tl;
        const char *t = bn_vocab_token(v, i, &tl);
        sub.len = 0;
        put_bytes(&sub, 1, t, tl);
        put_tag(&sub, 2, 5);
        uint32_t bits;
        memcpy(&bits, &v->scores[i], 4);
        uint8_t le[4] = {(uint8_t)bits, (uint8_t)(bits >> 8), (uint8_t)(bits >> 16), (uint8_t)(bits >> 24)};
        put(&sub, le, 4);
        put_int(&sub, 3, v->type[i] ? v->type[i] : BN_TOK_NORMAL);
        put_bytes(&w, 1, sub.b, sub.len);
        w.oom |= sub.oom;
    }
    sub.len = 0;
    put_int(&sub, 3, 2);    /* model_type BPE */
    put_int(&sub, 4, n);    /* vocab_size */
    put_int(&sub, 35, 1);   /* byte_fallback */
    put_int(&sub, 40, first_of_type(v, n, BN_TOK_UNKNOWN));
    put_int(&sub, 41, id_below(v->bos, n));
    put_int(&sub, 42, id_below(v->eos, n));
    put_int(&sub, 43, id_below(v->pad, n));
    put_bytes(&w, 2, sub.b, sub.len);
    sub.len = 0;
    put_bytes(&sub, 1, "identity", 8);       /* name: no character normalization */
    put_int(&sub, 3, v->space_prefix != 0);  /* add_dummy_prefix */
    put_int(&sub, 4, 0);                     /* remove_extra_whitespaces */
    put_int(&sub, 5, 1);                     /* escape_whitespaces */
    put_bytes(&w, 3, sub.b, sub.len);
    w.oom |= sub.oom;
    free(sub.b);
    if (w.oom) {
        free(w.b);
        return bn_err(err, "tokenizer.model: out of memory");
    }
    *out = w.b;
    *len = w.len;
    return 0;
}

int bn_spm_model_write(const bn_vocab *v, uint8_t **out, size_t *len, bn_error *err)
{
    if (v->model != BN_TOKM_SPM || !v->scores) return bn_err(err, "tokenizer.model: the vocabulary is not a SentencePiece one");
    return write_model(v, v->n_tokens, out, len, err);
}

int bn_spm_model_write_hf(const bn_vocab *v, uint8_t **model_out, size_t *model_len, char **added_json,
                          size_t *added_len, bn_error *err)
{
    *added_json = NULL;
    *added_len = 0;
    if (v->model != BN_TOKM_SPM || !v->scores) return bn_err(err, "tokenizer.model: the vocabulary is not a SentencePiece one");
    uint32_t n = v->n_tokens;
    while (n > 1 && v->type[n - 1] == BN_TOK_USER_DEFINED) n--;
    if (n < v->n_tokens) {
        json_t *o = json_object();
        int bad = !o;
        for (uint32_t i = n; i < v->n_tokens && !bad; i++) {
            size_t tl;
            const char *t = bn_vocab_token(v, i, &tl);
            char *key = strndup(t, tl);
            bad = !key || strlen(key) != tl || json_object_set_new(o, key, json_integer(i)) != 0;
            free(key);
        }
        char *s = bad ? NULL : json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (!s) return bn_err(err, "added_tokens.json: cannot serialize the added tokens (out of memory or a NUL byte)");
        *added_json = s;
        *added_len = strlen(s);
    }
    if (write_model(v, n, model_out, model_len, err)) {
        free(*added_json);
        *added_json = NULL;
        return -1;
    }
    return 0;
}
