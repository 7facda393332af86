/* Deterministic synthetic weights (see synth.h for the statistics and why they are exact). */
#include "model/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

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

static const struct {
    const char *name;
    bn_config cfg;
} shapes[] = {
    {"tiny", {128, 2, 4, 2, 32, 352, 512, 256, 10000.0f, 1e-5f, BN_ACT_RELU2, 1, 0, 0, 0}},
    {"small", {512, 4, 8, 2, 64, 1408, 4096, 1024, 500000.0f, 1e-5f, BN_ACT_RELU2, 1, 0, 0, 0}},
    {"2b4t", {2560, 30, 20, 5, 128, 6912, 128256, 4096, 500000.0f, 1e-5f, BN_ACT_RELU2, 1, 0, 0, 0}},
};

static int apply_override(bn_config *c, const char *kv, bn_error *err)
{
    char key[32];
    double val;
    if (sscanf(kv, "%31[a-z_]=%lf", key, &val) != 2 || val < 0 || val > 1e9)
        return bn_err(err, "shape override '%s': expected key=value", kv);
    uint32_t u = (uint32_t)val;
    if (!strcmp(key, "n_embd")) c->n_embd = u;
    else if (!strcmp(key, "n_layer")) c->n_layer = u;
    else if (!strcmp(key, "n_head")) c->n_head = u;
    else if (!strcmp(key, "n_head_kv")) c->n_head_kv = u;
    else if (!strcmp(key, "n_ff")) c->n_ff = u;
    else if (!strcmp(key, "n_vocab")) c->n_vocab = u;
    else if (!strcmp(key, "n_ctx_max")) c->n_ctx_max = u;
    else if (!strcmp(key, "rope_theta")) c->rope_theta = (float)val;
    else return bn_err(err, "shape override '%s': unknown key '%s'", kv, key);
    return 0;
}

int bn_synth_shape(const char *spec, bn_config *cfg, bn_error *err)
{
    char buf[256];
    if (strlen(spec) >= sizeof buf) return bn_err(err, "shape '%.40s...' is too long", spec);
    strcpy(buf, spec);
    char *save = NULL, *tok = strtok_r(buf, ",", &save);
    size_t i;
    for (i = 0; tok && i < sizeof shapes / sizeof shapes[0]; i++)
        if (!strcmp(tok, shapes[i].name)) break;
    if (!tok || i == sizeof shapes / sizeof shapes[0])
        return bn_err(err, "unknown shape '%s' (known: tiny, small, 2b4t; add ,key=value overrides)", spec);
    *cfg = shapes[i].cfg;
    while ((tok = strtok_r(NULL, ",", &save)))
        if (apply_override(cfg, tok, err) != 0) return -1;
    if (cfg->n_head) cfg->head_dim = cfg->n_embd / cfg->n_head;
    /* Special ids are those of bn_vocab_builtin(): 256 bytes + merges + specials; the caller
     * that attaches a vocabulary overwrites them. */
    cfg->bos = cfg->eos = cfg->eot = -1;
    if (bn_config_validate(cfg, err) != 0) return bn_err_prefix(err, "shape '%s'", spec);
    if (cfg->n_embd % 16 || cfg->n_ff % 16 || (cfg->head_dim * cfg->n_head_kv) % 16)
        return bn_err(err, "shape '%s': every matrix dimension must be a multiple of 16", spec);
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
    if (scale) *scale = c * 83.0f / 128.0f;
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

void bn_synth_embedding_row(const bn_synth *s, uint32_t tok, float *row)
{
    uint64_t state = stream_key(s, "token_embd") ^ ((uint64_t)tok * 0x9e3779b97f4a7c15ull);
    /* Roughly normal integers in [-127, 127] (sum of four uniforms) times 2^-10: magnitude
     * ~0.03 like a trained embedding, 7 significant bits, exact in bf16 and f16. */
    for (uint32_t i = 0; i < s->cfg.n_embd; i++) {
        uint64_t r = splitmix64(&state);
        int v = (int)(r & 0x3f) + (int)((r >> 8) & 0x3f) + (int)((r >> 16) & 0x3f) + (int)((r >> 24) & 0x3f) - 126;
        row[i] = ldexpf((float)v, -10);
    }
}
