/* The engine's forward pass against a naive float reference written here in plain loops.
 *
 * The reference regenerates every weight from the synthetic model's definition (bn_synth_*),
 * never from the packed file nor through kernel code, and implements its own int8 activation
 * quantization, RMSNorm, NeoX RoPE, softmax attention, ReLU^2 FFN and tied lm_head, following
 * docs bitnet-model.md s.2-3. Only the int8 lm_head test reads a tensor from the file: the int8
 * copy of the embedding IS that variant's weight.
 *
 * Checked: logits at every position of a prompt, greedy generations, under every kernel variant
 * this CPU supports, with 1 and 2 threads, both ternary packings; batched prefill == token by
 * token; prefix reuse == from scratch; seeded sampling is reproducible; the token loop does not
 * allocate; perplexity equals the reference's; on the 2b4t shape, the residual stream's size per
 * layer matches the reference's through all 30 layers (no "exploding activations"); several
 * sequences batched in one pass (joining and leaving, reusing KV regions) give bit-identical
 * logits and tokens to each sequence alone. */
#define _GNU_SOURCE
#include <check.h>
#include <sched.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/engine.h"
#include "model/model_write.h"
#include "model/source_synth.h"
#include "model/synth.h"
#include "text/tokenizer.h"
#include "engine_testutil.h"   /* bn_test_n_allocs: -Wl,--wrap=malloc,... in tests/engine.mk */
#include "testutil.h"

/* ============================================================================================
 * The naive reference
 * ========================================================================================== */

typedef struct ref_model {
    bn_synth sy;
    bn_config c;
    const int8_t *lm_i8;         /* non-NULL: use this int8 lm_head (from the file) */
    const float *lm_i8_scale;
    size_t lm_i8_cols;
} ref_model;

/* Per layer, per token: RMS and max|h| of the residual stream (NULL to skip). */
typedef struct ref_stats {
    double *rms, *maxabs;        /* [n_layer][n_tokens] */
} ref_stats;

static float round_f16(float x) { return (float)(_Float16)x; }

static void ref_rmsnorm(float *out, const float *x, const float *w, size_t n, float eps)
{
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    for (size_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* Per-token absmax int8: s = 127/max(max|x|, 1e-5), q = clamp(round-half-even(x*s)). */
static float ref_quant(const float *x, size_t n, int8_t *q)
{
    float mx = 0.0f;
    for (size_t i = 0; i < n; i++)
        if (fabsf(x[i]) > mx) mx = fabsf(x[i]);
    float s = 127.0f / (mx > 1e-5f ? mx : 1e-5f);
    for (size_t i = 0; i < n; i++) {
        float r = nearbyintf(x[i] * s);
        q[i] = (int8_t)(r > 127.0f ? 127.0f : r < -128.0f ? -128.0f : r);
    }
    return s;
}

/* y = (sum t*q) / s * scale: a BitLinear with a per-tensor weight scale. */
static void ref_bitlinear(const int8_t *t, float scale, size_t rows, size_t cols, const float *x,
                          float *y)
{
    int8_t *q = malloc(cols);
    float s = ref_quant(x, cols, q);
    for (size_t r = 0; r < rows; r++) {
        int32_t acc = 0;
        for (size_t c = 0; c < cols; c++) acc += t[r * cols + c] * q[c];
        y[r] = (float)acc / s * scale;
    }
    free(q);
}

static void ref_rope(float *x, int n_heads, int hd, int pos, float theta)
{
    for (int h = 0; h < n_heads; h++) {
        float *v = x + h * hd;
        for (int i = 0; i < hd / 2; i++) {
            double inv = pow((double)theta, -2.0 * i / hd);
            double a = pos * inv;
            float c = (float)cos(a), s = (float)sin(a);
            float x0 = v[i], x1 = v[i + hd / 2];
            v[i] = x0 * c - x1 * s;
            v[i + hd / 2] = x1 * c + x0 * s;
        }
    }
}

typedef struct ref_layer {
    int8_t *t[7];
    float scale[7];
    float *attn_norm, *attn_sub, *ffn_norm, *ffn_sub;
} ref_layer;

enum { WQ, WK, WV, WO, WG, WU, WD };

static void ref_layer_load(const ref_model *r, uint32_t l, ref_layer *L)
{
    const bn_config *c = &r->c;
    size_t E = c->n_embd, KD = (size_t)c->n_head_kv * c->head_dim, F = c->n_ff;
    static const char *kinds[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
    size_t rows[7] = {E, KD, KD, E, F, F, E}, cols[7] = {E, E, E, E, E, E, F};
    char name[64];
    for (int i = 0; i < 7; i++) {
        L->t[i] = malloc(rows[i] * cols[i]);
        snprintf(name, sizeof name, "blk.%u.%s", l, kinds[i]);
        bn_synth_ternary(&r->sy, name, rows[i], cols[i], L->t[i], &L->scale[i]);
    }
    L->attn_norm = malloc(E * 4);
    L->attn_sub = malloc(E * 4);
    L->ffn_norm = malloc(E * 4);
    L->ffn_sub = malloc(F * 4);
    snprintf(name, sizeof name, "blk.%u.attn_norm", l);
    bn_synth_norm(&r->sy, name, E, L->attn_norm);
    snprintf(name, sizeof name, "blk.%u.attn_sub_norm", l);
    bn_synth_norm(&r->sy, name, E, L->attn_sub);
    snprintf(name, sizeof name, "blk.%u.ffn_norm", l);
    bn_synth_norm(&r->sy, name, E, L->ffn_norm);
    snprintf(name, sizeof name, "blk.%u.ffn_sub_norm", l);
    bn_synth_norm(&r->sy, name, F, L->ffn_sub);
}

static void ref_layer_free(ref_layer *L)
{
    for (int i = 0; i < 7; i++) free(L->t[i]);
    free(L->attn_norm);
    free(L->attn_sub);
    free(L->ffn_norm);
    free(L->ffn_sub);
}

/* Causal attention of token t over tokens 0..t (K, V already rounded to f16). */
static void ref_attention(const bn_config *c, const float *q, const float *K, const float *V,
                          int t, float *out)
{
    int hd = (int)c->head_dim, KD = (int)(c->n_head_kv * c->head_dim);
    int group = (int)(c->n_head / c->n_head_kv);
    double *p = malloc((size_t)(t + 1) * sizeof *p);
    for (int h = 0; h < (int)c->n_head; h++) {
        int kvh = h / group;
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j <= t; j++) {
            double d = 0.0;
            for (int i = 0; i < hd; i++) d += (double)q[h * hd + i] * K[j * KD + kvh * hd + i];
            p[j] = d / sqrt((double)hd);
            if (p[j] > mx) mx = p[j];
        }
        for (int j = 0; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
        for (int i = 0; i < hd; i++) {
            double o = 0.0;
            for (int j = 0; j <= t; j++) o += p[j] / sum * V[j * KD + kvh * hd + i];
            out[h * hd + i] = (float)o;
        }
    }
    free(p);
}

/* Forward of ids[0..T) from position 0, layer by layer (each layer's weights generated once):
 * logits [T][n_vocab] if non-NULL. */
static void ref_forward(const ref_model *r, const int32_t *ids, int T, float *logits, ref_stats *st)
{
    const bn_config *c = &r->c;
    size_t E = c->n_embd, KD = (size_t)c->n_head_kv * c->head_dim, F = c->n_ff, V = c->n_vocab;
    float *x = malloc(T * E * 4), *a = malloc(E * 4), *Q = malloc(T * E * 4), *K = malloc(T * KD * 4),
          *Vv = malloc(T * KD * 4), *o = malloc(E * 4), *y = malloc(E * 4), *g = malloc(F * 4),
          *u = malloc(F * 4), *mn = malloc(F * 4);
    for (int t = 0; t < T; t++) bn_synth_embedding_row(&r->sy, (uint32_t)ids[t], x + t * E);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        ref_layer L;
        ref_layer_load(r, l, &L);
        for (int t = 0; t < T; t++) {
            ref_rmsnorm(a, x + t * E, L.attn_norm, E, c->norm_eps);
            ref_bitlinear(L.t[WQ], L.scale[WQ], E, E, a, Q + t * E);
            ref_bitlinear(L.t[WK], L.scale[WK], KD, E, a, K + t * KD);
            ref_bitlinear(L.t[WV], L.scale[WV], KD, E, a, Vv + t * KD);
            ref_rope(Q + t * E, (int)c->n_head, (int)c->head_dim, t, c->rope_theta);
            ref_rope(K + t * KD, (int)c->n_head_kv, (int)c->head_dim, t, c->rope_theta);
            for (size_t i = 0; i < KD; i++) {   /* the cache is f16, as in bitnet.cpp */
                K[t * KD + i] = round_f16(K[t * KD + i]);
                Vv[t * KD + i] = round_f16(Vv[t * KD + i]);
            }
            ref_attention(c, Q + t * E, K, Vv, t, o);
            ref_rmsnorm(a, o, L.attn_sub, E, c->norm_eps);
            ref_bitlinear(L.t[WO], L.scale[WO], E, E, a, y);
            for (size_t i = 0; i < E; i++) x[t * E + i] += y[i];

            ref_rmsnorm(a, x + t * E, L.ffn_norm, E, c->norm_eps);
            ref_bitlinear(L.t[WG], L.scale[WG], F, E, a, g);
            ref_bitlinear(L.t[WU], L.scale[WU], F, E, a, u);
            for (size_t i = 0; i < F; i++) {
                float rg = g[i] > 0 ? g[i] : 0.0f;
                mn[i] = rg * rg * u[i];
            }
            ref_rmsnorm(g, mn, L.ffn_sub, F, c->norm_eps);
            ref_bitlinear(L.t[WD], L.scale[WD], E, F, g, y);
            for (size_t i = 0; i < E; i++) x[t * E + i] += y[i];
            if (st) {
                double ss = 0, mx = 0;
                for (size_t i = 0; i < E; i++) {
                    ss += (double)x[t * E + i] * x[t * E + i];
                    if (fabs(x[t * E + i]) > mx) mx = fabs(x[t * E + i]);
                }
                st->rms[l * T + t] = sqrt(ss / E);
                st->maxabs[l * T + t] = mx;
            }
        }
        ref_layer_free(&L);
    }
    if (logits) {
        float *on = malloc(E * 4), *row = malloc(E * 4);
        int8_t *qx = calloc(r->lm_i8_cols ? r->lm_i8_cols : 1, 1);
        bn_synth_norm(&r->sy, "output_norm", E, on);
        for (int t = 0; t < T; t++) {
            ref_rmsnorm(a, x + t * E, on, E, c->norm_eps);
            float s = r->lm_i8 ? ref_quant(a, E, qx) : 0.0f;
            for (size_t v = 0; v < V; v++) {
                double d = 0.0;
                if (r->lm_i8) {
                    int32_t acc = 0;
                    for (size_t i = 0; i < E; i++) acc += r->lm_i8[v * r->lm_i8_cols + i] * qx[i];
                    d = (double)acc / s * r->lm_i8_scale[v];
                } else {
                    bn_synth_embedding_row(&r->sy, (uint32_t)v, row);
                    for (size_t i = 0; i < E; i++) d += (double)a[i] * row[i];
                }
                logits[t * V + v] = (float)d;
            }
        }
        free(on);
        free(row);
        free(qx);
    }
    free(x); free(a); free(Q); free(K); free(Vv); free(o); free(y); free(g); free(u); free(mn);
}

static int32_t argmax_lowest(const float *l, size_t n)
{
    size_t b = 0;
    for (size_t i = 1; i < n; i++)
        if (l[i] > l[b]) b = i;
    return (int32_t)b;
}

/* Greedy generation by full recomputation: the slowest, plainest possible decode. */
static int ref_greedy(const ref_model *r, const int32_t *prompt, int n, int max_new, int32_t *out)
{
    int32_t *seq = malloc((size_t)(n + max_new) * sizeof *seq);
    float *logits = malloc((size_t)(n + max_new) * r->c.n_vocab * sizeof *logits);
    memcpy(seq, prompt, n * sizeof *seq);
    int k = 0;
    for (; k < max_new; k++) {
        ref_forward(r, seq, n + k, logits, NULL);
        int32_t id = argmax_lowest(logits + (size_t)(n + k - 1) * r->c.n_vocab, r->c.n_vocab);
        if (id == r->c.eos || id == r->c.eot) break;
        out[k] = seq[n + k] = id;
    }
    free(seq);
    free(logits);
    return k;
}

/* llama.cpp's perplexity, spelled out: windows of ctx tokens with BOS first, each from an empty
 * context, scoring the predictions made at positions [ctx/2, ctx-1). */
static double ref_perplexity(const ref_model *r, const int32_t *ids, size_t n, int ctx)
{
    size_t V = r->c.n_vocab;
    double nll = 0;
    long scored = 0;
    float *logits = malloc((size_t)ctx * V * sizeof *logits);
    int32_t *win = malloc((size_t)ctx * sizeof *win);
    for (size_t c = 0; c < n / (size_t)ctx; c++) {
        memcpy(win, ids + c * ctx, (size_t)ctx * sizeof *win);
        win[0] = r->c.bos;
        ref_forward(r, win, ctx, logits, NULL);
        for (int j = ctx / 2; j < ctx - 1; j++) {
            const float *l = logits + (size_t)j * V;
            double mx = l[0], sum = 0;
            for (size_t i = 1; i < V; i++)
                if (l[i] > mx) mx = l[i];
            for (size_t i = 0; i < V; i++) sum += exp(l[i] - mx);
            nll += log(sum) - (l[win[j + 1]] - mx);
            scored++;
        }
    }
    free(logits);
    free(win);
    return exp(nll / scored);
}

/* ============================================================================================
 * Fixtures: packed tiny models (both ternary packings) and the engine under test
 * ========================================================================================== */

static char path_t5[512], path_i2[512];
static bn_synth tiny_sy;

/* Writes the synthetic model `shape` to path unless it exists; its definition to *sy_out if
 * non-NULL. Returns 0, or -1 with err set (callable outside a test: no ck_assert here). */
static int write_model(const char *shape, bn_tern_fmt fmt, const char *path, bn_synth *sy_out,
                       bn_error *err)
{
    if (sy_out) {
        bn_vocab *v = bn_test_synth(shape, sy_out, err);
        if (!v) return -1;
        bn_vocab_free(v);
    }
    struct stat stt;
    if (stat(path, &stt) == 0) return 0;
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    po.tern = fmt;
    return bn_test_pack_synth(shape, &po, path, err);
}

static bn_engine *new_engine(const bn_model *m, int threads, int lm_head, uint32_t batch)
{
    bn_engine_opts o;
    bn_engine_opts_default(&o);
    o.n_threads = threads;
    o.lm_head = lm_head;
    o.batch = batch;
    return bn_test_engine(m, &o);
}

static ref_model tiny_ref(void)
{
    ref_model r = {.sy = tiny_sy, .c = tiny_sy.cfg};
    return r;
}

#define PROMPT_LEN 24
static void make_prompt(int32_t *ids, int n, const bn_config *c)
{
    ids[0] = c->bos;
    for (int i = 1; i < n; i++) ids[i] = (int32_t)((i * 37 + 11) % 250) + 3;   /* byte tokens */
}

/* Tolerance on logits: every integer part (ternary x int8 sums) is exact in both, so what may
 * differ is float summation order (RMSNorm, RoPE angles, softmax, the f32 dot of the lm_head)
 * at ~1e-7 relative, amplified by at most a few layers' worth of gain. K and V are rounded to
 * f16 in both, so that rounding is not a difference. A rare int8 rounding tie flipped by those
 * 1e-7 changes one activation by one step (1/127 of the row max) and moves logits by ~1e-5 of
 * their range; 1e-4 of max|logit| leaves room for that and still catches any real error (a
 * wrong norm, rope pairing or scale moves logits by tens of percent). */
#define LOGIT_RTOL 1e-4

static double worst_rel;   /* largest max|diff| / max|logit| seen, printed for the record */

static void assert_logits_close(const float *got, const float *want, size_t rows, size_t V,
                                const char *what)
{
    for (size_t t = 0; t < rows; t++) {
        double mx = 0, diff = 0;
        for (size_t i = 0; i < V; i++) {
            if (fabs(want[t * V + i]) > mx) mx = fabs(want[t * V + i]);
            double d = fabs((double)got[t * V + i] - want[t * V + i]);
            if (!(d <= diff)) diff = d;   /* NaN-safe */
        }
        if (diff / mx > worst_rel) worst_rel = diff / mx;
        ck_assert_msg(diff <= LOGIT_RTOL * mx, "%s: position %zu: max|diff| %g > %g * max|logit| %g",
                      what, t, diff, LOGIT_RTOL, mx);
    }
}

/* ============================================================================================
 * Tests
 * ========================================================================================== */

/* Collects generated ids through the callback. */
typedef struct collect {
    int32_t ids[256];
    int n;
} collect;

static int collect_cb(int32_t id, void *user)
{
    collect *c = user;
    if (c->n < 256) c->ids[c->n++] = id;
    return BN_GEN_CONTINUE;
}

/* Logits at every prompt position and greedy generations, for each kernel variant, 1 and 2
 * threads, both packings. */
START_TEST(logits_and_greedy_match_reference)
{
    const char *paths[2] = {path_t5, path_i2};
    const char *path = paths[_i];
    ref_model r = tiny_ref();
    size_t V = r.c.n_vocab;
    int32_t prompt[PROMPT_LEN];
    make_prompt(prompt, PROMPT_LEN, &r.c);
    float *want = malloc(PROMPT_LEN * V * sizeof *want), *got = malloc(PROMPT_LEN * V * sizeof *got);
    ref_forward(&r, prompt, PROMPT_LEN, want, NULL);
    int32_t ref_gen[32];
    int n_ref = ref_greedy(&r, prompt, PROMPT_LEN, 32, ref_gen);

    bn_model *m = bn_test_open_model(path);
    bn_error err = {{0}};
    bn_isa chosen = bn_kernels_isa();   /* restored afterwards: tests share one process */
    for (int isa = 0; isa < BN_ISA_COUNT; isa++) {
        if (!bn_kernels_isa_supported((bn_isa)isa)) continue;
        ck_assert_int_eq(bn_kernels_force((bn_isa)isa), 0);
        for (int threads = 1; threads <= 2; threads++) {
            char what[128];
            snprintf(what, sizeof what, "%s, isa %s, %d threads", path, bn_isa_name((bn_isa)isa), threads);
            bn_engine *e = new_engine(m, threads, BN_LM_HEAD_F16, 8);   /* batch 8: 3 chunks */
            ck_assert_msg(bn_engine_eval(e, prompt, PROMPT_LEN, got, &err) == 0, "%s", err.msg);
            assert_logits_close(got, want, PROMPT_LEN, V, what);

            bn_sampling g;
            bn_sampling_greedy(&g);
            bn_gen_result res;
            collect gen = {0};
            bn_engine_reset(e);
            int rc = bn_generate(e, prompt, PROMPT_LEN, &g, 32, collect_cb, &gen, &res, &err);
            ck_assert_msg(rc == 0, "%s", err.msg);
            ck_assert_msg(gen.n == n_ref, "%s: %d tokens generated, reference %d", what, gen.n, n_ref);
            for (int i = 0; i < gen.n; i++)
                ck_assert_msg(gen.ids[i] == ref_gen[i], "%s: token %d: %d vs reference %d", what, i,
                              gen.ids[i], ref_gen[i]);
            bn_engine_free(e);
            fprintf(stderr, "%s: logits max rel diff %.2e, %d greedy tokens identical\n", what,
                    worst_rel, n_ref);
        }
    }
    bn_kernels_force(chosen);
    bn_model_close(m);
    free(want);
    free(got);
}
END_TEST

START_TEST(prefill_equals_token_by_token)
{
    bn_model *m = bn_test_open_model(path_t5);
    bn_error err = {{0}};
    size_t V = m->cfg.n_vocab;
    int32_t prompt[PROMPT_LEN];
    make_prompt(prompt, PROMPT_LEN, &m->cfg);
    float *a = malloc(PROMPT_LEN * V * 4), *b = malloc(PROMPT_LEN * V * 4);
    bn_engine *e = new_engine(m, 2, BN_LM_HEAD_F16, 0);
    ck_assert(bn_engine_eval(e, prompt, PROMPT_LEN, a, &err) == 0);
    bn_engine_reset(e);
    for (int t = 0; t < PROMPT_LEN; t++) ck_assert(bn_engine_eval(e, prompt + t, 1, b + t * V, &err) == 0);
    /* GEMM equals n GEMVs exactly (kernels contract) and attention is per token: bit-identical */
    ck_assert(memcmp(a, b, PROMPT_LEN * V * 4) == 0);
    /* and the last-token-only path gives the same last row */
    bn_engine_reset(e);
    ck_assert(bn_engine_eval(e, prompt, PROMPT_LEN, NULL, &err) == 0);
    ck_assert(memcmp(bn_engine_logits(e), a + (PROMPT_LEN - 1) * V, V * 4) == 0);
    bn_engine_free(e);
    bn_model_close(m);
    free(a);
    free(b);
}
END_TEST

START_TEST(prefix_reuse_equals_scratch)
{
    bn_model *m = bn_test_open_model(path_t5);
    bn_error err = {{0}};
    int32_t p1[PROMPT_LEN], p2[PROMPT_LEN + 8];
    make_prompt(p1, PROMPT_LEN, &m->cfg);
    memcpy(p2, p1, sizeof p1);
    for (int i = 0; i < 8; i++) p2[PROMPT_LEN + i] = 100 + i;
    p2[PROMPT_LEN - 4] = 7;   /* diverges 4 tokens before the end of p1 */
    bn_sampling s;
    bn_sampling_default(&s);
    s.seed = 99;
    bn_gen_result r1, r2;

    bn_engine *warm = new_engine(m, 2, BN_LM_HEAD_AUTO, 0);
    collect c1 = {0}, c2 = {0};
    ck_assert(bn_generate(warm, p1, PROMPT_LEN, &s, 16, collect_cb, &c1, &r1, &err) == 0);
    ck_assert(bn_generate(warm, p2, PROMPT_LEN + 8, &s, 16, collect_cb, &c2, &r2, &err) == 0);
    ck_assert_int_eq(r2.n_cached, PROMPT_LEN - 4);
    /* an absurd thread count is clamped to the CPUs this process may use (no
     * oversubscription), and pinning does not change results */
    cpu_set_t set;
    ck_assert(sched_getaffinity(0, sizeof set, &set) == 0);
    bn_engine_opts o;
    bn_engine_opts_default(&o);
    o.n_threads = 1000;
    o.pin = 1;
    bn_engine *cold = NULL;
    ck_assert(bn_engine_create(m, &o, &cold, &err) == 0);
    ck_assert_int_eq(bn_engine_threads(cold), CPU_COUNT(&set));
    collect c3 = {0};
    bn_gen_result r3;
    ck_assert(bn_generate(cold, p2, PROMPT_LEN + 8, &s, 16, collect_cb, &c3, &r3, &err) == 0);
    ck_assert_int_eq(r3.n_cached, 0);
    ck_assert_int_eq(c2.n, c3.n);
    ck_assert(memcmp(c2.ids, c3.ids, c2.n * sizeof(int32_t)) == 0);

    /* the same request again reuses all but the last prompt token, same output (same seed) */
    collect c4 = {0};
    ck_assert(bn_generate(cold, p2, PROMPT_LEN + 8, &s, 16, collect_cb, &c4, &r3, &err) == 0);
    ck_assert_int_eq(r3.n_cached, PROMPT_LEN + 7);
    ck_assert(c4.n == c3.n && memcmp(c4.ids, c3.ids, c3.n * sizeof(int32_t)) == 0);
    bn_engine_free(warm);
    bn_engine_free(cold);
    /* freeing a pinned engine gives the caller its mask back, so a later engine of this
     * process (bench -t 1,2 --pin) still sees every allowed CPU */
    cpu_set_t after;
    ck_assert(sched_getaffinity(0, sizeof after, &after) == 0);
    ck_assert(CPU_EQUAL(&after, &set));
    bn_model_close(m);
}
END_TEST

START_TEST(seeded_sampling_reproducible)
{
    bn_model *m = bn_test_open_model(path_t5);
    bn_error err = {{0}};
    int32_t p[PROMPT_LEN];
    make_prompt(p, PROMPT_LEN, &m->cfg);
    bn_sampling s;
    bn_sampling_default(&s);
    s.temperature = 1.5f;
    s.top_k = 0;
    s.min_p = 0;
    s.top_p = 1.0f;
    collect a = {0}, b = {0}, c = {0};
    bn_gen_result r;
    bn_engine *e = new_engine(m, 2, BN_LM_HEAD_AUTO, 0);
    s.seed = 5;
    ck_assert(bn_generate(e, p, PROMPT_LEN, &s, 40, collect_cb, &a, &r, &err) == 0);
    bn_engine_reset(e);
    ck_assert(bn_generate(e, p, PROMPT_LEN, &s, 40, collect_cb, &b, &r, &err) == 0);
    s.seed = 6;
    ck_assert(bn_generate(e, p, PROMPT_LEN, &s, 40, collect_cb, &c, &r, &err) == 0);
    ck_assert(a.n == b.n && memcmp(a.ids, b.ids, a.n * sizeof(int32_t)) == 0);
    ck_assert(a.n != c.n || memcmp(a.ids, c.ids, a.n * sizeof(int32_t)) != 0);
    bn_engine_free(e);
    bn_model_close(m);
}
END_TEST

static int stop_after_3(int32_t id, void *user)
{
    int *n = user;
    return ++*n == 3 ? BN_GEN_CANCEL : BN_GEN_CONTINUE;
}

START_TEST(generate_stops_and_does_not_allocate)
{
    bn_model *m = bn_test_open_model(path_t5);
    bn_error err = {{0}};
    int32_t p[PROMPT_LEN];
    make_prompt(p, PROMPT_LEN, &m->cfg);
    bn_sampling s;
    bn_sampling_default(&s);
    s.repeat_penalty = 1.1f;
    s.presence_penalty = 0.3f;
    s.frequency_penalty = 0.2f;
    bn_engine *e = new_engine(m, 2, BN_LM_HEAD_AUTO, 0);
    bn_gen_result r;
    long before = bn_test_n_allocs;
    int rc = bn_generate(e, p, PROMPT_LEN, &s, 50, NULL, NULL, &r, &err);
    long during = bn_test_n_allocs - before;
    ck_assert_msg(rc == 0, "%s", err.msg);
    ck_assert_msg(during == 0, "bn_generate allocated %ld times", during);
    ck_assert(r.finish == BN_FINISH_LENGTH || r.finish == BN_FINISH_STOP);
    if (r.finish == BN_FINISH_LENGTH) ck_assert_int_eq(r.n_completion, 50);
    ck_assert_int_eq(bn_engine_n_past(e), PROMPT_LEN + r.n_completion - (r.finish == BN_FINISH_LENGTH));

    int n = 0;   /* ignore_eos: an eos among the first 3 tokens must not end it first */
    bn_gen_opts go = {.max_tokens = 50, .ignore_eos = 1, .on_token = stop_after_3, .user = &n};
    ck_assert(bn_generate_opts(e, p, PROMPT_LEN, &s, &go, &r, &err) == 0);
    ck_assert_int_eq(r.finish, BN_FINISH_CANCELLED);
    ck_assert_int_eq(r.n_completion, 3);
    bn_engine_free(e);

    /* a context that fills up ends with "length" */
    bn_engine_opts o;
    bn_engine_opts_default(&o);
    o.n_ctx = PROMPT_LEN + 5;
    ck_assert(bn_engine_create(m, &o, &e, &err) == 0);
    bn_sampling_greedy(&s);
    ck_assert(bn_generate(e, p, PROMPT_LEN, &s, 100, NULL, NULL, &r, &err) == 0);
    if (r.finish == BN_FINISH_LENGTH) ck_assert_int_eq(r.n_completion, 6);
    ck_assert(bn_engine_eval(e, p, PROMPT_LEN, NULL, &err) != 0);   /* does not fit: refused */
    bn_engine_free(e);
    bn_model_close(m);
}
END_TEST

START_TEST(lm_head_i8_matches_reference)
{
    bn_model *m = bn_test_open_model(path_t5);
    ck_assert_msg(m->lm_head_i8 != NULL, "the tiny model was written with an int8 lm_head");
    bn_error err = {{0}};
    ref_model r = tiny_ref();
    r.lm_i8 = m->lm_head_i8;
    r.lm_i8_scale = m->lm_head_i8_scale;
    r.lm_i8_cols = m->lm_head_cols_padded;
    size_t V = r.c.n_vocab;
    int32_t prompt[PROMPT_LEN];
    make_prompt(prompt, PROMPT_LEN, &r.c);
    float *want = malloc(PROMPT_LEN * V * 4), *got = malloc(PROMPT_LEN * V * 4), *f16 = malloc(PROMPT_LEN * V * 4);
    ref_forward(&r, prompt, PROMPT_LEN, want, NULL);
    bn_engine *e = new_engine(m, 2, BN_LM_HEAD_I8, 0);
    ck_assert_int_eq(bn_engine_lm_head(e), BN_LM_HEAD_I8);
    ck_assert(bn_engine_eval(e, prompt, PROMPT_LEN, got, &err) == 0);
    assert_logits_close(got, want, PROMPT_LEN, V, "int8 lm_head");
    bn_engine_free(e);
    /* top-1 agreement with the exact f16 head, for the record */
    e = new_engine(m, 2, BN_LM_HEAD_F16, 0);
    ck_assert(bn_engine_eval(e, prompt, PROMPT_LEN, f16, &err) == 0);
    int agree = 0;
    for (int t = 0; t < PROMPT_LEN; t++) agree += argmax_lowest(got + t * V, V) == argmax_lowest(f16 + t * V, V);
    fprintf(stderr, "tiny: int8 lm_head top-1 agreement with f16: %d/%d\n", agree, PROMPT_LEN);
    bn_engine_free(e);
    bn_model_close(m);
    free(want);
    free(got);
    free(f16);
}
END_TEST

START_TEST(perplexity_matches_reference)
{
    bn_model *m = bn_test_open_model(path_t5);
    bn_error err = {{0}};
    ref_model r = tiny_ref();
    enum { N = 150, CTX = 48 };   /* 3 windows, 2 tokens left over (ignored) */
    int32_t ids[N];
    make_prompt(ids, N, &r.c);
    for (int i = 1; i < N; i++) ids[i] = (int32_t)((i * i * 7 + i) % 300) + 3;
    bn_engine *e = new_engine(m, 2, BN_LM_HEAD_F16, 16);
    bn_ppl_result res;
    ck_assert_msg(bn_perplexity(e, ids, N, CTX, r.c.bos, NULL, NULL, &res, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(res.n_chunks, 3);
    ck_assert_int_eq(res.n_scored, 3 * (CTX - CTX / 2 - 1));

    double ppl = ref_perplexity(&r, ids, N, CTX);
    fprintf(stderr, "tiny perplexity: engine %.6f, reference %.6f\n", res.ppl, ppl);
    ck_assert_msg(fabs(res.ppl - ppl) <= 1e-4 * ppl, "ppl %f vs reference %f", res.ppl, ppl);
    bn_engine_free(e);
    bn_model_close(m);
}
END_TEST

/* `bitnet perplexity` end to end: the text tokenized with BOS, the printed PPL (4 decimals)
 * equal to the reference's on the same tokens. */
START_TEST(cli_perplexity_matches_reference)
{
    const char *bitnet = getenv("BN_BITNET");
    if (!bitnet || access(bitnet, X_OK) != 0) {
        fprintf(stderr, "cli_perplexity: BN_BITNET not set or not built: skipped\n");
        return;
    }
    char txt[600], cmd[2048];
    snprintf(txt, sizeof txt, "%s/engine_ppl.txt", bn_test_tmpdir());
    FILE *f = fopen(txt, "w");
    ck_assert(f != NULL);
    for (int i = 0; i < 6; i++)
        fprintf(f, "The quick brown fox jumps over the lazy dog %d times. Then it rests.\n", i * 7);
    fclose(f);

    bn_model *m = bn_test_open_model(path_t5);
    bn_error err = {{0}};
    bn_tokenizer *tk = bn_tokenizer_new(m->vocab, &err);
    ck_assert_msg(tk != NULL, "%s", err.msg);
    char *text = NULL;
    size_t len = 0;
    f = fopen(txt, "r");
    ck_assert(getdelim(&text, &len, 0, f) > 0);
    fclose(f);
    bn_tokens toks = {0};
    ck_assert(bn_tokens_push(&toks, m->cfg.bos, &err) == 0);
    ck_assert_msg(bn_tokenize_append(tk, text, strlen(text), &toks, &err) == 0, "%s", err.msg);
    enum { CTX = 32 };
    ck_assert_msg(toks.n >= 2 * CTX, "only %zu tokens", toks.n);
    ref_model r = tiny_ref();
    double want = ref_perplexity(&r, toks.ids, toks.n, CTX);

    snprintf(cmd, sizeof cmd, "'%s' perplexity -m '%s' -f '%s' -c %d --lm-head f16 2>/dev/null", bitnet,
             path_t5, txt, CTX);
    FILE *p = popen(cmd, "r");
    ck_assert(p != NULL);
    char line[4096];
    double got = -1;
    while (fgets(line, sizeof line, p)) {
        const char *at = strstr(line, "PPL = ");
        if (at) got = strtod(at + 6, NULL);
    }
    ck_assert_int_eq(pclose(p), 0);
    fprintf(stderr, "bitnet perplexity on %zu tokens: %.4f, reference %.6f\n", toks.n, got, want);
    ck_assert_msg(fabs(got - want) <= 1e-4 * want, "PPL %f vs reference %f", got, want);
    bn_tokens_free(&toks);
    free(text);
    bn_tokenizer_free(tk);
    bn_model_close(m);
}
END_TEST

/* ---- activations through every layer of the 2b4t shape --------------------------------- */

typedef struct layer_trace {
    uint32_t n_layer, n_tok;
    double *rms, *maxabs;
} layer_trace;

static void trace_hook(uint32_t layer, uint32_t pos, const float *h, size_t n, void *user)
{
    layer_trace *tr = user;
    if (pos >= tr->n_tok || layer >= tr->n_layer) return;
    double ss = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        ss += (double)h[i] * h[i];
        if (fabs(h[i]) > mx) mx = fabs(h[i]);
    }
    tr->rms[layer * tr->n_tok + pos] = sqrt(ss / (double)n);
    tr->maxabs[layer * tr->n_tok + pos] = mx;
}

/* BN_TEST_2B4T_LAYERS shortens the model, and so does BN_VALGRIND (CI's valgrind pass: one
 * layer); the normal and sanitizer runs use all 30 layers. */
START_TEST(activations_stay_in_reference_range_2b4t)
{
    const char *env = getenv("BN_TEST_2B4T_LAYERS"), *vg = getenv("BN_VALGRIND");
    int layers = env && atoi(env) > 0 ? atoi(env) : vg && *vg && strcmp(vg, "0") ? 1 : 30;
    char shape[96], path[600];
    snprintf(shape, sizeof shape, "2b4t,n_vocab=1024,n_layer=%d", layers);
    snprintf(path, sizeof path, "%s/engine_2b4t_v1024_l%d.bin", bn_test_tmpdir(), layers);
    bn_synth sy;
    bn_error werr = {{0}};
    remove(path);   /* regenerated each run: the synthetic model's definition may change */
    ck_assert_msg(write_model(shape, BN_TERN_T5, path, &sy, &werr) == 0, "%s", werr.msg);
    bn_model *m = bn_test_open_model(path);
    bn_error err = {{0}};
    enum { T = 2 };
    int32_t ids[T] = {m->cfg.bos, 72};

    layer_trace tr = {(uint32_t)layers, T, calloc(layers * T, 8), calloc(layers * T, 8)};
    bn_engine_opts o;
    bn_engine_opts_default(&o);
    o.n_ctx = 64;
    bn_engine *e = NULL;
    ck_assert_msg(bn_engine_create(m, &o, &e, &err) == 0, "%s", err.msg);
    bn_engine_set_layer_hook(e, trace_hook, &tr);
    ck_assert(bn_engine_eval(e, ids, T, NULL, &err) == 0);
    bn_engine_free(e);

    ref_model r = {.sy = sy, .c = sy.cfg};
    ref_stats st = {calloc(layers * T, 8), calloc(layers * T, 8)};
    ref_forward(&r, ids, T, NULL, &st);
    for (int l = 0; l < layers; l++)
        for (int t = 0; t < T; t++) {
            double er = tr.rms[l * T + t], rr = st.rms[l * T + t];
            double em = tr.maxabs[l * T + t], rm = st.maxabs[l * T + t];
            ck_assert_msg(isfinite(er) && isfinite(em), "layer %d token %d: non-finite", l, t);
            /* the same computation up to float rounding: a few 1e-3 at most after 30 layers */
            ck_assert_msg(fabs(er - rr) <= 0.01 * rr, "layer %d token %d: rms %g vs reference %g", l, t, er, rr);
            ck_assert_msg(fabs(em - rm) <= 0.02 * rm, "layer %d token %d: max|h| %g vs reference %g", l, t, em, rm);
        }
    fprintf(stderr, "2b4t (%d layers): hidden rms layer 0 %.4f, last %.4f (reference %.4f); max|h| last %.3f\n",
            layers, tr.rms[0], tr.rms[(layers - 1) * T + T - 1], st.rms[(layers - 1) * T + T - 1],
            tr.maxabs[(layers - 1) * T + T - 1]);
    free(tr.rms); free(tr.maxabs); free(st.rms); free(st.maxabs);
    bn_model_close(m);
}
END_TEST

/* An explicit CPU set (the server's placement plan): one thread per listed CPU, thread i pinned
 * to cpus[i] (thread 0 is the caller), the same greedy tokens as the default engine, the mask
 * given back on free; a CPU this process may not use, an empty or repeating set fail creation
 * with a message. */
START_TEST(explicit_cpu_set)
{
    bn_model *m = bn_test_open_model(path_t5);
    bn_error err = {{0}};
    cpu_set_t set;
    ck_assert(sched_getaffinity(0, sizeof set, &set) == 0);
    int first = -1, last = -1;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set)) {
            if (first < 0) first = c;
            last = c;
        }
    int32_t prompt[PROMPT_LEN];
    make_prompt(prompt, PROMPT_LEN, &m->cfg);
    bn_sampling g;
    bn_sampling_greedy(&g);
    bn_gen_result res;
    collect want = {0};
    bn_engine *e = NULL;
    ck_assert_msg(bn_engine_create(m, NULL, &e, &err) == 0, "%s", err.msg);
    ck_assert(bn_generate(e, prompt, PROMPT_LEN, &g, 24, collect_cb, &want, &res, &err) == 0);
    bn_engine_free(e);
    ck_assert_int_gt(want.n, 0);

    /* one CPU, then (when there are two) the last and the first, in that order */
    int sets[2][2] = {{first, -1}, {last, first}};
    for (int k = 0; k < (first != last ? 2 : 1); k++) {
        bn_engine_opts o;
        bn_engine_opts_default(&o);
        o.cpus = sets[k];
        o.n_cpus = k + 1;
        o.n_threads = 64;   /* ignored: the CPU set decides */
        bn_engine_mem mem;
        ck_assert_msg(bn_engine_plan(m, &o, &mem, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(mem.n_threads, k + 1);
        ck_assert_msg(bn_engine_create(m, &o, &e, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(bn_engine_threads(e), k + 1);
        cpu_set_t now;
        ck_assert(sched_getaffinity(0, sizeof now, &now) == 0);
        ck_assert_int_eq(CPU_COUNT(&now), 1);
        ck_assert(CPU_ISSET(sets[k][0], &now));   /* the caller is thread 0 */
        collect got = {0};
        ck_assert(bn_generate(e, prompt, PROMPT_LEN, &g, 24, collect_cb, &got, &res, &err) == 0);
        ck_assert_int_eq(got.n, want.n);
        ck_assert(memcmp(got.ids, want.ids, (size_t)want.n * sizeof(int32_t)) == 0);
        bn_engine_free(e);
        ck_assert(sched_getaffinity(0, sizeof now, &now) == 0);
        ck_assert(CPU_EQUAL(&now, &set));
    }

    static const struct { int cpus[2], n; const char *msg; } bad[] = {
        {{100000, 0}, 1, "CPU 100000 is not one this process may run on (its affinity mask is "},
        {{-1, 0}, 1, "CPU -1 is not one this process may run on"},
        {{0, 0}, 0, "the engine's CPU set is empty"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bn_engine_opts o;
        bn_engine_opts_default(&o);
        o.cpus = bad[i].cpus;
        o.n_cpus = bad[i].n;
        e = (bn_engine *)&o;
        ck_assert(bn_engine_create(m, &o, &e, &err) != 0);
        ck_assert_ptr_null(e);
        ck_assert_msg(strstr(err.msg, bad[i].msg) != NULL, "message \"%s\" lacks \"%s\"", err.msg, bad[i].msg);
    }
    bn_engine_opts o;
    bn_engine_opts_default(&o);
    int twice[2] = {first, first};
    o.cpus = twice;
    o.n_cpus = 2;
    ck_assert(bn_engine_create(m, &o, &e, &err) != 0);
    ck_assert_msg(strstr(err.msg, "listed twice") != NULL, "%s", err.msg);
    cpu_set_t after;
    ck_assert(sched_getaffinity(0, sizeof after, &after) == 0);
    ck_assert(CPU_EQUAL(&after, &set));
    bn_model_close(m);
}
END_TEST

/* ---- several sequences in one pass (bn_engine_eval_batch) ---------------------------------- */

/* Requests of different prompt lengths and generation lengths, eligible to join at different
 * steps: with fewer slots than requests, later ones reuse the KV region of one that left. */
#define BT_REQS 6
#define BT_MAXGEN 10
typedef struct bt_req {
    int32_t prompt[16];
    int n_prompt, n_gen, join;
} bt_req;

static void bt_requests(bt_req *rq, const bn_config *c)
{
    for (int r = 0; r < BT_REQS; r++) {
        rq[r].n_prompt = 3 + (r * 7) % 13;   /* 3, 10, 4, 11, 5, 12 */
        rq[r].n_gen = 4 + (r * 3) % 7;       /* 4, 7, 10, 6, 9, 5 */
        rq[r].join = r;
        rq[r].prompt[0] = c->bos;
        for (int i = 1; i < rq[r].n_prompt; i++) rq[r].prompt[i] = ((i * 31 + r * 17 + 5) % 250) + 3;
    }
}

/* Each request alone through the single-sequence API: the logits of every step (prompt's last
 * token, then each greedy token, EOS or not) into want[r][k]. */
static void bt_alone(const bn_model *m, int threads, int head, const bt_req *rq, float *want)
{
    size_t V = m->cfg.n_vocab;
    bn_error err = {{0}};
    bn_engine *e = new_engine(m, threads, head, 8);
    for (int r = 0; r < BT_REQS; r++) {
        float *w = want + (size_t)r * BT_MAXGEN * V;
        bn_engine_reset(e);
        ck_assert_msg(bn_engine_eval(e, rq[r].prompt, (size_t)rq[r].n_prompt, NULL, &err) == 0, "%s", err.msg);
        memcpy(w, bn_engine_logits(e), V * sizeof *w);
        for (int k = 1; k < rq[r].n_gen; k++) {
            int32_t id = argmax_lowest(w + (size_t)(k - 1) * V, V);
            ck_assert_msg(bn_engine_eval(e, &id, 1, NULL, &err) == 0, "%s", err.msg);
            memcpy(w + (size_t)k * V, bn_engine_logits(e), V * sizeof *w);
        }
    }
    bn_engine_free(e);
}

/* Continuous batching over n_seq slots: a request joins (its whole prompt in the same pass as
 * the others' decode tokens) when it is eligible and a slot is free, and leaves (slot reset)
 * after n_gen tokens. Every step's logits must equal the request alone bit for bit, hence the
 * same greedy tokens. Returns the number of passes. */
static int bt_batched(const bn_model *m, int threads, int head, uint32_t n_seq, const bt_req *rq,
                      const float *want, const char *what)
{
    size_t V = m->cfg.n_vocab;
    bn_error err = {{0}};
    bn_engine_opts o;
    bn_engine_opts_default(&o);
    o.n_threads = threads;
    o.lm_head = head;
    o.batch = 8;   /* a joining prompt plus decode tokens spans several chunks */
    o.n_seq = n_seq;
    bn_engine *e = NULL;
    ck_assert_msg(bn_engine_create(m, &o, &e, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(bn_engine_n_seq(e), n_seq);
    enum { MAXTOK = 4 * 16 };
    bn_batch_tok toks[MAXTOK];
    float *rows = malloc((size_t)4 * V * sizeof *rows);
    int slot_req[4] = {-1, -1, -1, -1}, slot_k[4] = {0}, flagged[4];
    int32_t slot_last[4] = {0};
    int next = 0, steps = 0, done = 0;
    long allocs = 0;
    for (; done < BT_REQS && steps < 200; steps++) {
        size_t n = 0;
        int nf = 0;
        for (uint32_t s = 0; s < n_seq; s++) {
            if (slot_req[s] < 0 && next < BT_REQS && rq[next].join <= steps) {
                const bt_req *q = &rq[next];
                ck_assert_uint_eq(bn_engine_seq_n_past(e, s), 0);   /* reset when it left */
                for (int i = 0; i < q->n_prompt; i++)
                    toks[n++] = (bn_batch_tok){q->prompt[i], s, i == q->n_prompt - 1};
                slot_req[s] = next++;
                slot_k[s] = 0;
                flagged[nf++] = (int)s;
            } else if (slot_req[s] >= 0) {
                toks[n++] = (bn_batch_tok){slot_last[s], s, 1};
                flagged[nf++] = (int)s;
            }
        }
        if (n == 0) continue;
        long a0 = bn_test_n_allocs;   /* Check's asserts allocate: count the call alone */
        int rc = bn_engine_eval_batch(e, toks, n, rows, &err);
        allocs += bn_test_n_allocs - a0;
        ck_assert_msg(rc == 0, "%s: %s", what, err.msg);
        for (int f = 0; f < nf; f++) {
            int s = flagged[f], r = slot_req[s], k = slot_k[s];
            const float *w = want + ((size_t)r * BT_MAXGEN + (size_t)k) * V;
            ck_assert_msg(memcmp(rows + (size_t)f * V, w, V * sizeof *w) == 0,
                          "%s: request %d step %d: logits differ from the request alone", what, r, k);
            slot_last[s] = argmax_lowest(rows + (size_t)f * V, V);
            ck_assert_int_eq(slot_last[s], argmax_lowest(w, V));
            slot_k[s] = ++k;
            ck_assert_uint_eq(bn_engine_seq_n_past(e, (uint32_t)s), (uint32_t)(rq[r].n_prompt + k - 1));
            if (k == rq[r].n_gen) {   /* leaves: its region is free for the next request */
                bn_engine_seq_reset(e, (uint32_t)s);
                slot_req[s] = -1;
                done++;
            }
        }
    }
    ck_assert_msg(done == BT_REQS, "%s: %d of %d requests finished in %d steps", what, done, BT_REQS, steps);
    ck_assert_msg(allocs == 0, "%s: eval_batch allocated %ld times", what, allocs);
    free(rows);
    bn_engine_free(e);
    return steps;
}

/* For every kernel variant, both packings, both lm_heads and 1..4 slots: batched == alone. */
START_TEST(batch_equals_each_sequence_alone)
{
    const char *paths[2] = {path_t5, path_i2};
    bn_model *m = bn_test_open_model(paths[_i]);
    size_t V = m->cfg.n_vocab;
    bt_req rq[BT_REQS];
    bt_requests(rq, &m->cfg);
    float *want = malloc((size_t)BT_REQS * BT_MAXGEN * V * sizeof *want);
    bn_isa chosen = bn_kernels_isa();
    /* Under CI's valgrind pass (BN_VALGRIND) the memory checks matter, not every combination
     * again (make check ran them all): one variant, one head, 1 and 3 slots. */
    int vg = getenv("BN_VALGRIND") != NULL;
    for (int isa = 0; isa < BN_ISA_COUNT; isa++) {
        if (!bn_kernels_isa_supported((bn_isa)isa) || (vg && isa != (int)chosen)) continue;
        ck_assert_int_eq(bn_kernels_force((bn_isa)isa), 0);
        for (int hi = 0; hi < 2 - vg; hi++) {
            int head = hi ? BN_LM_HEAD_I8 : BN_LM_HEAD_F16;
            bt_alone(m, 2, head, rq, want);
            for (uint32_t S = 1; S <= 4; S += vg ? 2 : 1) {
                char what[160];
                int threads = 1 + (int)(S % 2);
                snprintf(what, sizeof what, "%s, isa %s, lm_head %s, %u slots, %d threads", paths[_i],
                         bn_isa_name((bn_isa)isa), hi ? "i8" : "f16", S, threads);
                int steps = bt_batched(m, threads, head, S, rq, want, what);
                if (hi == 0 && S == 4)
                    fprintf(stderr, "%s: %d requests in %d passes, every logit bit-identical\n", what,
                            BT_REQS, steps);
            }
        }
    }
    bn_kernels_force(chosen);
    free(want);
    bn_model_close(m);
}
END_TEST

/* Bad batches are refused before anything is evaluated; the per-sequence accessors act on
 * their own region only; the plan reports n_seq x n_ctx of KV. */
START_TEST(batch_bad_input_and_sequence_accessors)
{
    bn_model *m = bn_test_open_model(path_t5);
    bn_error err = {{0}};
    size_t V = m->cfg.n_vocab;
    bn_engine_opts o;
    bn_engine_opts_default(&o);
    o.n_threads = 1;
    o.n_ctx = 16;
    bn_engine_mem one, four;
    ck_assert(bn_engine_plan(m, &o, &one, &err) == 0);
    ck_assert_uint_eq(one.n_seq, 1);
    ck_assert_uint_eq(one.kv, one.kv_per_seq);
    o.n_seq = 4;
    ck_assert(bn_engine_plan(m, &o, &four, &err) == 0);
    ck_assert_uint_eq(four.n_seq, 4);
    ck_assert_uint_eq(four.kv_per_seq, one.kv_per_seq);
    ck_assert_uint_eq(four.kv, 4 * one.kv_per_seq);
    o.n_seq = BN_MAX_SEQ + 1;
    ck_assert(bn_engine_plan(m, &o, &four, &err) != 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "sequences"));
    o.n_seq = 4;
    bn_engine *e = NULL;
    ck_assert_msg(bn_engine_create(m, &o, &e, &err) == 0, "%s", err.msg);
    bn_engine_memory(e, &one);
    ck_assert_uint_eq(one.kv, four.kv);

    float *rows = malloc(2 * V * sizeof *rows);
    bn_batch_tok ok[2] = {{5, 2, 0}, {6, 2, 1}};
    bn_batch_tok bad_seq[2] = {{5, 0, 0}, {6, 4, 1}};
    bn_batch_tok bad_id[2] = {{5, 1, 0}, {(int32_t)V, 1, 1}};
    ck_assert(bn_engine_eval_batch(e, bad_seq, 2, rows, &err) != 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "sequence 4 out of range"));
    ck_assert(bn_engine_eval_batch(e, bad_id, 2, rows, &err) != 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "out of range"));
    ck_assert(bn_engine_eval_batch(e, ok, 2, NULL, &err) != 0);   /* logits wanted, no buffer */
    for (uint32_t s = 0; s < 4; s++) ck_assert_uint_eq(bn_engine_seq_n_past(e, s), 0);

    ck_assert_msg(bn_engine_eval_batch(e, ok, 2, rows, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(bn_engine_seq_n_past(e, 2), 2);
    ck_assert_uint_eq(bn_engine_n_past(e), 0);   /* sequence 0 untouched */
    ck_assert_int_eq(bn_engine_seq_cached_ids(e, 2)[1], 6);
    int32_t again[3] = {5, 6, 7};
    ck_assert_uint_eq(bn_engine_seq_keep_prefix(e, 2, again, 3), 2);
    ck_assert_uint_eq(bn_engine_seq_keep_prefix(e, 2, again, 2), 1);   /* last one re-run */
    bn_engine_seq_truncate(e, 2, 0);
    ck_assert_uint_eq(bn_engine_seq_n_past(e, 2), 0);
    ck_assert_uint_eq(bn_engine_seq_n_past(e, 9), 0);   /* out of range: empty, ignored */
    ck_assert_ptr_null(bn_engine_seq_cached_ids(e, 9));
    bn_engine_seq_reset(e, 9);

    /* a sequence's context is its own n_ctx: 16 fit, the 17th is refused, whole batch unrun */
    bn_batch_tok fill[17];
    for (int i = 0; i < 17; i++) fill[i] = (bn_batch_tok){(int32_t)(3 + i), 3, i == 15};
    ck_assert(bn_engine_eval_batch(e, fill, 17, rows, &err) != 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "context full"));
    ck_assert_uint_eq(bn_engine_seq_n_past(e, 3), 0);
    ck_assert_msg(bn_engine_eval_batch(e, fill, 16, rows, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(bn_engine_seq_n_past(e, 3), 16);
    free(rows);
    bn_engine_free(e);
    bn_model_close(m);
}
END_TEST

static Suite *forward_suite(void)
{
    Suite *s = suite_create("forward");
    TCase *tc = tcase_create("tiny");
    tcase_add_loop_test(tc, logits_and_greedy_match_reference, 0, 2);
    tcase_add_test(tc, prefill_equals_token_by_token);
    tcase_add_test(tc, prefix_reuse_equals_scratch);
    tcase_add_test(tc, seeded_sampling_reproducible);
    tcase_add_test(tc, generate_stops_and_does_not_allocate);
    tcase_add_test(tc, lm_head_i8_matches_reference);
    tcase_add_test(tc, perplexity_matches_reference);
    tcase_add_test(tc, cli_perplexity_matches_reference);
    tcase_add_test(tc, explicit_cpu_set);
    suite_add_tcase(s, tc);
    TCase *bt = tcase_create("batch");
    tcase_set_timeout(bt, 120);
    tcase_add_loop_test(bt, batch_equals_each_sequence_alone, 0, 2);
    tcase_add_test(bt, batch_bad_input_and_sequence_accessors);
    suite_add_tcase(s, bt);
    TCase *big = tcase_create("2b4t");
    tcase_set_timeout(big, 900);   /* writes a 0.4 GB model, runs 30 layers naively */
    tcase_add_test(big, activations_stay_in_reference_range_2b4t);
    suite_add_tcase(s, big);
    return s;
}

int main(void)
{
    snprintf(path_t5, sizeof path_t5, "%s/engine_tiny_t5.bin", bn_test_tmpdir());
    snprintf(path_i2, sizeof path_i2, "%s/engine_tiny_i2.bin", bn_test_tmpdir());
    remove(path_t5);   /* always fresh: the model code may have changed */
    remove(path_i2);
    /* written by a child: this process never starts an OpenMP team (Check may fork it) */
    if (bn_test_pack_pair_forked("test_forward", "tiny", path_t5, path_i2)) return EXIT_FAILURE;
    bn_error err = {{0}};
    bn_vocab *v = bn_test_synth("tiny", &tiny_sy, &err);   /* the definition the child wrote */
    if (!v) return EXIT_FAILURE;
    bn_vocab_free(v);
    return bn_test_run(forward_suite()) ? EXIT_FAILURE : EXIT_SUCCESS;
}
