/* Deterministic synthetic weights (see synth.h for the statistics and why they are exact). */
#include "model/synth.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kernels/half.h"
#include "model/family.h"

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* One stream per (seed, tensor name): tensors are independent of generation order. */
static uint64_t stream_key(const bn_synth *s, const char *name)
{
    return XXH3_64bits_withSeed(name, strlen(name), s->seed);
}

/* Shape presets. act, tied and no_sub_norms come from the family's row (family.h); bos/eos/eot
 * are the real checkpoints' ids where the family fixes them (valid with the real tokenizer or
 * the family's built-in vocabulary), -1 where they depend on the vocabulary's size (the
 * Llama-3-like built-in places its specials last): a caller that attaches a vocabulary sets
 * them from it. Facts: ../shared/docs/bitnet-families.md s.1-3, 5. */
typedef struct preset {
    const char *name;
    enum bn_family family;
    uint32_t n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx_max;
    float rope_theta, norm_eps;
    int32_t bos, eos, eot;
} preset;

static const preset presets[] = {
    /* name                family          embd  L   h   kv  hd   ff     vocab   ctx    theta      eps   bos     eos     eot */
    {"tiny",               BN_FAM_BITNET,   128, 2,  4,  2,  32,   352,    512,   256, 10000.0f,  1e-5f,    -1,     -1,     -1},
    {"small",              BN_FAM_BITNET,   512, 4,  8,  2,  64,  1408,   4096,  1024, 500000.0f, 1e-5f,    -1,     -1,     -1},
    {"2b4t",               BN_FAM_BITNET,  2560, 30, 20, 5,  128, 6912, 128256,  4096, 500000.0f, 1e-5f,    -1,     -1,     -1},
    {"1bitllm-large",      BN_FAM_1BITLLM, 1536, 24, 16, 16, 96,  4096,  32002,  2048, 10000.0f,  1e-5f,     1,      2,     -1},
    {"1bitllm-3b",         BN_FAM_1BITLLM, 3200, 26, 32, 32, 100, 8640,  32002,  2048, 10000.0f,  1e-5f,     1,      2,     -1},
    {"llama3-8b-1.58",     BN_FAM_LLAMA3,  4096, 32, 32, 8,  128, 14336, 128256, 8192, 500000.0f, 1e-5f, 128000, 128009, 128009},
    {"falcon3-1b-1.58",    BN_FAM_FALCON3, 2048, 18, 8,  4,  256, 8192,  131072, 8192, 1000042.0f, 1e-6f,   -1,     11,     11},
    {"falcon3-3b-1.58",    BN_FAM_FALCON3, 3072, 22, 12, 4,  256, 9216,  131072, 4096, 1000042.0f, 1e-6f,   -1,     11,     11},
    {"falcon3-7b-1.58",    BN_FAM_FALCON3, 3072, 28, 12, 4,  256, 23040, 131072, 8192, 1000042.0f, 1e-6f,   -1,     11,     11},
    {"falcon3-10b-1.58",   BN_FAM_FALCON3, 3072, 40, 12, 4,  256, 23040, 131072, 32768, 1000042.0f, 1e-6f,  -1,     11,     11},
    /* Test shapes: tiny dims, each family's block and eps/theta, and the quirks the real ones
     * have: MHA with head_dim 48 and an n_ff that is no multiple of 128 (ffn_down's K, like
     * 1bitLLM-3B's 8640), GQA 4, GQA 2 with 6 heads. */
    {"tiny-1bitllm",       BN_FAM_1BITLLM,  384, 2,  8,  8,  48,   336,    514,   256, 10000.0f,  1e-5f,     1,      2,     -1},
    {"tiny-llama3",        BN_FAM_LLAMA3,   256, 2,  4,  1,  64,   768,    512,   256, 500000.0f, 1e-5f,    -1,     -1,     -1},
    {"tiny-falcon3",       BN_FAM_FALCON3,  384, 2,  6,  3,  64,   640,    512,   256, 1000042.0f, 1e-6f,   -1,     11,     11},
};
#define N_PRESETS (sizeof presets / sizeof presets[0])

static void apply_family(bn_synth *s, const bn_family_info *f)
{
    s->family = f->id;
    s->cfg.act = f->act;
    s->cfg.tied = f->tied;
    s->cfg.no_sub_norms = f->no_sub_norms;
}

static void apply_preset(bn_synth *s, const preset *p)
{
    s->cfg = (bn_config){p->n_embd, p->n_layer, p->n_head, p->n_head_kv, p->head_dim, p->n_ff, p->n_vocab,
                         p->n_ctx_max, p->rope_theta, p->norm_eps, 0, 0, p->bos, p->eos, p->eot, 0};
    apply_family(s, bn_family_get(p->family));
}

/* Overrides: a key's number must be a whole value in range; act/family take words. */
enum ov_kind { OV_U32, OV_F32, OV_BOOL };
static const struct override {
    const char *key;
    enum ov_kind kind;
    size_t off;
} overrides[] = {
    {"n_embd", OV_U32, offsetof(bn_config, n_embd)},       {"n_layer", OV_U32, offsetof(bn_config, n_layer)},
    {"n_head", OV_U32, offsetof(bn_config, n_head)},       {"n_head_kv", OV_U32, offsetof(bn_config, n_head_kv)},
    {"head_dim", OV_U32, offsetof(bn_config, head_dim)},   {"n_ff", OV_U32, offsetof(bn_config, n_ff)},
    {"n_vocab", OV_U32, offsetof(bn_config, n_vocab)},     {"n_ctx_max", OV_U32, offsetof(bn_config, n_ctx_max)},
    {"rope_theta", OV_F32, offsetof(bn_config, rope_theta)}, {"norm_eps", OV_F32, offsetof(bn_config, norm_eps)},
    {"tied", OV_BOOL, offsetof(bn_config, tied)},          {"sub_norms", OV_BOOL, offsetof(bn_config, no_sub_norms)},
};

/* Which of n_head / head_dim the spec set, so the other can follow n_embd. */
#define SET_N_HEAD 1u
#define SET_HEAD_DIM 2u

static int apply_override(bn_synth *s, const char *kv, unsigned *set, bn_error *err)
{
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv || !eq[1]) return bn_err(err, "override '%s': expected key=value", kv);
    size_t klen = (size_t)(eq - kv);
    const char *val = eq + 1;
    if (klen == 6 && !strncmp(kv, "family", 6)) return 0; /* applied before the others */
    if (klen == 3 && !strncmp(kv, "act", 3)) {
        if (!strcmp(val, "relu2")) s->cfg.act = BN_ACT_RELU2;
        else if (!strcmp(val, "silu")) s->cfg.act = BN_ACT_SILU;
        else return bn_err(err, "override '%s': act is relu2 or silu", kv);
        return 0;
    }
    for (size_t i = 0; i < sizeof overrides / sizeof overrides[0]; i++) {
        const struct override *o = &overrides[i];
        if (strlen(o->key) != klen || strncmp(o->key, kv, klen)) continue;
        char *end;
        double v = strtod(val, &end);
        if (*end || !isfinite(v) || v < 0 || v > 1e9 || (o->kind != OV_F32 && v != floor(v)) ||
            (o->kind == OV_BOOL && v > 1))
            return bn_err(err, "override '%s': %s", kv,
                          o->kind == OV_BOOL ? "expected 0 or 1" : o->kind == OV_U32 ? "expected a whole number up to 1e9"
                                                                                       : "expected a number");
        void *field = (char *)&s->cfg + o->off;
        if (o->kind == OV_F32) *(float *)field = (float)v;
        else if (o->off == offsetof(bn_config, no_sub_norms)) *(uint32_t *)field = v == 0;
        else *(uint32_t *)field = (uint32_t)v;
        if (o->off == offsetof(bn_config, n_head)) *set |= SET_N_HEAD;
        if (o->off == offsetof(bn_config, head_dim)) *set |= SET_HEAD_DIM;
        return 0;
    }
    return bn_err(err, "override '%s': unknown key '%.*s' (n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, "
                  "n_vocab, n_ctx_max, rope_theta, norm_eps, act, tied, sub_norms, family)", kv, (int)klen, kv);
}

/* family=NAME anywhere in the spec: applied first, so explicit act/tied/sub_norms win. */
static int apply_family_override(bn_synth *s, char *const *tok, size_t n, bn_error *err)
{
    for (size_t i = 0; i < n; i++) {
        if (strncmp(tok[i], "family=", 7)) continue;
        const bn_family_info *f = bn_family_find(tok[i] + 7);
        if (!f) return bn_err(err, "override '%s': unknown family (bitnet, 1bitllm, llama3, falcon3, falcon-e)", tok[i]);
        apply_family(s, f);
    }
    return 0;
}

static const preset *find_preset(const char *name)
{
    for (size_t i = 0; i < N_PRESETS; i++)
        if (!strcmp(presets[i].name, name)) return &presets[i];
    return NULL;
}

static int unknown_shape(const char *spec, bn_error *err)
{
    char names[512] = "";
    size_t o = 0;
    for (size_t i = 0; i < N_PRESETS && o < sizeof names; i++)
        o += (size_t)snprintf(names + o, sizeof names - o, "%s%s", i ? ", " : "", presets[i].name);
    return bn_err(err, "unknown shape '%s' (known: %s; add ,key=value overrides)", spec, names);
}

#define MAX_OVERRIDES 32

int bn_synth_parse(const char *spec, bn_synth *out, bn_error *err)
{
    char buf[256], *tok[MAX_OVERRIDES];
    if (strlen(spec) >= sizeof buf) return bn_err(err, "shape '%.40s...' is too long", spec);
    strcpy(buf, spec);
    char *save = NULL, *name = strtok_r(buf, ",", &save);
    const preset *p = name ? find_preset(name) : NULL;
    if (!p) return unknown_shape(spec, err);
    size_t n = 0;
    for (char *t; (t = strtok_r(NULL, ",", &save));) {
        if (n == MAX_OVERRIDES) return bn_err(err, "shape '%s': more than %d overrides", spec, MAX_OVERRIDES);
        tok[n++] = t;
    }
    bn_synth s = {.seed = out->seed};
    apply_preset(&s, p);
    unsigned set = 0;
    if (apply_family_override(&s, tok, n, err) != 0) return bn_err_prefix(err, "shape '%s'", spec);
    for (size_t i = 0; i < n; i++)
        if (apply_override(&s, tok[i], &set, err) != 0) return bn_err_prefix(err, "shape '%s'", spec);
    bn_config *c = &s.cfg;
    /* the one not given follows n_embd (n_head * head_dim == n_embd) */
    if ((set & SET_HEAD_DIM) && !(set & SET_N_HEAD) && c->head_dim) c->n_head = c->n_embd / c->head_dim;
    else if (!(set & SET_HEAD_DIM) && c->n_head) c->head_dim = c->n_embd / c->n_head;
    /* an n_vocab override may leave a preset's special ids outside: the vocabulary sets them */
    int32_t *ids[3] = {&c->bos, &c->eos, &c->eot};
    for (int i = 0; i < 3; i++)
        if (*ids[i] >= (int64_t)c->n_vocab) *ids[i] = -1;
    if (bn_config_validate(c, err) != 0) return bn_err_prefix(err, "shape '%s'", spec);
    /* bn_synth_ternary draws weights in groups of 16 along each row */
    if (c->n_embd % 16 || c->n_ff % 16 || (c->head_dim * c->n_head_kv) % 16)
        return bn_err(err, "shape '%s': every matrix dimension must be a multiple of 16", spec);
    *out = s;
    return 0;
}

int bn_synth_shape(const char *spec, bn_config *cfg, bn_error *err)
{
    bn_synth s = {0};
    if (bn_synth_parse(spec, &s, err) != 0) return -1;
    *cfg = s.cfg;
    return 0;
}

/* Per-tensor magnitude c = 2^e, so that scale = 83c/128 is exact in bf16, f16 and f32.
 * e centres the output of a linear near unit variance: scale ~ 1/sqrt(0.625 fan_in). */
static float tensor_c(const bn_synth *s, const char *name, size_t cols)
{
    uint64_t k = stream_key(s, name) ^ 0xc0ffee;
    int e = -(int)lround(log2(sqrt(0.625 * (double)cols) * 83.0 / 128.0));
    e += (int)(splitmix64(&k) % 3) - 1; /* a little per-tensor variety */
    return ldexpf(1.0f, e);
}

/* One group of 16 weights: a random permutation puts 5 at +-3c/2, 5 at +-c/2, 6 at +-c/16. */
static void group16(uint64_t *state, float c, float *w, int8_t *t)
{
    uint8_t perm[16];
    for (int i = 0; i < 16; i++) perm[i] = (uint8_t)i;
    uint64_t r = splitmix64(state), r2 = splitmix64(state);
    for (int i = 15; i > 0; i--) {
        uint64_t bits = (i > 7 ? r : r2) & 0xffff;
        if (i > 7) r >>= 8; else r2 >>= 8;
        int j = (int)((bits & 0xff) * (uint64_t)(i + 1) >> 8);
        uint8_t tmp = perm[i]; perm[i] = perm[j]; perm[j] = tmp;
    }
    uint64_t signs = splitmix64(state);
    for (int k = 0; k < 16; k++) {
        int pos = perm[k];
        int neg = (int)(signs >> k) & 1;
        float mag = k < 5 ? 1.5f * c : k < 10 ? 0.5f * c : c / 16.0f;
        if (w) w[pos] = neg ? -mag : mag;
        if (t) t[pos] = (int8_t)(k < 10 ? (neg ? -1 : 1) : 0);
    }
}

static void gen_linear(const bn_synth *s, const char *name, size_t rows, size_t cols,
                       float *w, int8_t *t, float *scale)
{
    uint64_t state = stream_key(s, name);
    float c = tensor_c(s, name, cols);
    size_t n = rows * cols;
    for (size_t g = 0; g < n; g += 16) group16(&state, c, w ? w + g : NULL, t ? t + g : NULL);
    if (!scale) return;
    *scale = c * 83.0f / 128.0f;
    /* Divide-rule families: the HF form stores weight_scale b (bf16) and means W = t / b, so
     * the scale is 1/b for a bf16 b near 1/scale; then bf16(1/scale) == b on every route. */
    const bn_family_info *f = bn_family_get(s->family);
    if (f && f->hf_weights == BN_HFW_PACKED_DIV) *scale = 1.0f / bn_bf16_to_f32(bn_f32_to_bf16(1.0f / *scale));
}

void bn_synth_ternary(const bn_synth *s, const char *name, size_t rows, size_t cols,
                      int8_t *t, float *scale)
{
    gen_linear(s, name, rows, cols, NULL, t, scale);
}

void bn_synth_latent(const bn_synth *s, const char *name, size_t rows, size_t cols, float *w)
{
    gen_linear(s, name, rows, cols, w, NULL, NULL);
}

void bn_synth_norm(const bn_synth *s, const char *name, size_t n, float *w)
{
    uint64_t state = stream_key(s, name);
    /* 1 + k/64, k in [-16, 16]: trained norm gains sit near 1; exact in bf16 and f16. */
    for (size_t i = 0; i < n; i++) w[i] = 1.0f + (float)((int)(splitmix64(&state) % 33) - 16) / 64.0f;
}

/* Row `tok` of the f16 matrix `name`: one stream per (name, row). */
static void matrix_row(const bn_synth *s, const char *name, uint32_t tok, float *row)
{
    uint64_t state = stream_key(s, name) ^ ((uint64_t)tok * 0x9e3779b97f4a7c15ull);
    /* Roughly normal integers in [-126, 126] (sum of four uniforms) times 2^-10: magnitude
     * ~0.03 like a trained embedding, 7 significant bits, exact in bf16 and f16. */
    for (uint32_t i = 0; i < s->cfg.n_embd; i++) {
        uint64_t r = splitmix64(&state);
        int v = (int)(r & 0x3f) + (int)((r >> 8) & 0x3f) + (int)((r >> 16) & 0x3f) + (int)((r >> 24) & 0x3f) - 126;
        row[i] = ldexpf((float)v, -10);
    }
}

void bn_synth_embedding_row(const bn_synth *s, uint32_t tok, float *row) { matrix_row(s, "token_embd", tok, row); }

void bn_synth_output_row(const bn_synth *s, uint32_t tok, float *row) { matrix_row(s, "output", tok, row); }
