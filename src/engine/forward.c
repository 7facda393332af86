/* The BitNet b1.58 forward pass (docs/bitnet-model.md s.2; the other families' differences are
 * the switches noted below, docs/models.md), for a chunk of n tokens. Token t belongs to
 * sequence s.tok_seq[t] and sits at position s.tok_pos[t] of that sequence's KV cache: one
 * sequence at pos0 .. pos0+n-1 (prefill; decode is n == 1, GEMV instead of GEMM), or tokens of
 * several sequences (batched decode), which share every weight read. Only RoPE, the KV store
 * and attention look at (seq, pos); every other op is per token, so a token's result does not
 * depend on which other tokens share its chunk.
 *
 *   x = embed(ids)                                       f16 rows -> f32
 *   per layer:
 *     a = rmsnorm(x, attn_norm);      qa = int8(a)        quantized once for q, k and v
 *     q, k, v = Wq qa, Wk qa, Wv qa;  rope_neox(q, k)     ternary GEMV/GEMM
 *     store k, v (f16) at pos;        o = attention(q, K, V)   GQA: q head h -> kv head h/group
 *     o = rmsnorm(o, attn_sub_norm);  x += Wo int8(o)     no sub-norms: x += Wo int8(o)
 *     f = rmsnorm(x, ffn_norm);       qa = int8(f)        quantized once for gate and up
 *     m = act(Wgate qa) * (Wup qa)                        act: relu(.)^2, or silu (cfg.act)
 *     m = rmsnorm(m, ffn_sub_norm);   x += Wdown int8(m)  no sub-norms: x += Wdown int8(m)
 *   logits = lm_head(rmsnorm(x, output_norm))            f16 head (tied embedding or the untied
 *                                                        "output" tensor), or its int8 copy
 * RoPE is always NeoX here: the converters store q/k rows in HF order (a llama-arch GGUF's
 * permuted rows are un-permuted when read), which makes llama.cpp's adjacent-pair RoPE on the
 * permuted rows the same computation.
 *
 * Threads (one OpenMP team of n_threads): the ternary projections split output rows in whole row
 * tiles; attention splits RoPE + KV store by token, then (token, KV group) pairs; the per-token
 * ops (embedding, RMSNorm + int8 quantization of each BitLinear input, the FFN activation,
 * residual adds) split by token, so a chunk of n tokens runs them on min(n, n_threads) threads
 * and a decode step (n == 1) runs them on the calling thread alone: each is O(n_embd + n_ff)
 * for a token, less than waking the team costs. The lm_head (lm_head.c) splits vocabulary rows;
 * its final RMSNorm and int8 quantization, and the screened head's rescoring, run on the calling
 * thread. Every thread's share is computed by the same kernel calls as on one thread, so
 * results depend neither on n_threads nor on batching. */
#include <math.h>
#include <omp.h>

#include "base/checked.h"
#include "engine/engine_internal.h"

/* Attention splits by KV group only when that leaves each thread at least this many groups. */
#define ATTN_JOBS_PER_THREAD 2

/* ---- helpers: threading, profiling --------------------------------------------------- */

/* Rows [r0, r1) of a rows-row matrix for thread ith of nth: contiguous whole tiles, so that
 * kernels that interleave the rows of a tile never see half a tile. */
void bn_thread_rows(size_t rows, size_t tile, int nth, int ith, size_t *r0, size_t *r1)
{
    size_t tiles = (rows + tile - 1) / tile;
    size_t t0 = tiles * (size_t)ith / (size_t)nth, t1 = tiles * (size_t)(ith + 1) / (size_t)nth;
    *r0 = t0 * tile;
    *r1 = t1 * tile < rows ? t1 * tile : rows;
}

static double prof_start(const bn_engine *e) { return e->profiling ? bn_eng_now() : 0.0; }

static void prof_stop(bn_engine *e, enum bn_prof_part part, double t0)
{
    if (e->profiling) e->prof[part] += bn_eng_now() - t0;
}

/* A step of the pass over the chunk's n tokens: math only; timed() charges it to its part. */
typedef void step_fn(bn_engine *e, const bn_layer_weights *w, uint32_t layer, uint32_t n);

static void timed(bn_engine *e, enum bn_prof_part part, step_fn *fn, const bn_layer_weights *w,
                  uint32_t layer, uint32_t n)
{
    double t0 = prof_start(e);
    fn(e, w, layer, n);
    prof_stop(e, part, t0);
}

/* ---- per-token float ops ------------------------------------------------------------- */

/* The chunk's token ids are already in their sequences' caches at tok_pos (see the callers). */
static void embed(bn_engine *e, const bn_layer_weights *w, uint32_t layer, uint32_t n)
{
    (void)w, (void)layer;
    size_t dim = e->cfg.n_embd;
#pragma omp parallel for num_threads(e->n_threads) if (n > 1) schedule(static)
    for (uint32_t t = 0; t < n; t++) {
        int32_t id = bn_eng_kv(e, e->s.tok_seq[t])->ids[e->s.tok_pos[t]];
        bn_f16_to_f32_row(e->model->tok_embd + (size_t)id * dim, e->s.x + t * dim, dim);
    }
}

/* g = act(g) * u over n floats, in place: the gated FFN's activation. */
static void ffn_act(const bn_engine *e, float *g, const float *u, size_t n)
{
    if (e->cfg.act == BN_ACT_SILU) bn_silu_mul(g, g, u, n);
    else bn_relu2_mul(g, g, u, n);
}

/* The input of a BitLinear for n rows of dim floats: with up non-NULL, in = act(in) * up first
 * (in place); then, with w non-NULL, rmsnorm(in) * w into tmp; then that row (or in itself)
 * quantized to int8 into s.qa (row stride = the padded width the ternary kernels expect for a
 * dim-column matrix; padding stays zero) with scales in s.qs. One loop over tokens: each
 * token's ops are the same calls as one at a time, so the bits do not depend on n or on the
 * thread count. */
static void bitlinear_input(bn_engine *e, float *tmp, float *in, const float *up, const float *w,
                            uint32_t n, size_t dim)
{
    size_t pad = bn_tern_cols_padded(e->fmt, dim);
#pragma omp parallel for num_threads(e->n_threads) if (n > 1) schedule(static)
    for (uint32_t t = 0; t < n; t++) {
        float *x = in + t * dim, *o = x;
        if (up) ffn_act(e, x, up + t * dim, dim);
        if (w) bn_rmsnorm(o = tmp + t * dim, x, w, dim, e->cfg.norm_eps);
        e->s.qs[t] = bn_quant_act(o, dim, pad, e->s.qa + t * pad);
    }
}

static void residual(bn_engine *e, const bn_layer_weights *w, uint32_t layer, uint32_t n)
{
    (void)w, (void)layer;
    float *x = e->s.x;
    const float *y = e->s.xb2;
    size_t dim = e->cfg.n_embd;
#pragma omp parallel for num_threads(e->n_threads) if (n > 1) schedule(static)
    for (uint32_t t = 0; t < n; t++)
        for (size_t i = t * dim; i < (t + 1) * dim; i++) x[i] += y[i];
}

/* ---- ternary projections ------------------------------------------------------------- */

/* y_j = W_j . act for up to three matrices sharing the quantized input in s.qa/s.qs (q,k,v or
 * gate,up): one parallel region, each thread taking its row share of every matrix. */
static void project(bn_engine *e, uint32_t n, int count, const bn_tensor *const *w,
                    float *const *y)
{
#pragma omp parallel num_threads(e->n_threads)
    {
        int nth = omp_get_num_threads(), ith = omp_get_thread_num();
        for (int j = 0; j < count; j++) {
            size_t r0, r1, rows = w[j]->rows, cols = w[j]->cols;
            bn_thread_rows(rows, (size_t)e->row_tile, nth, ith, &r0, &r1);
            if (r0 >= r1) continue;
            if (n == 1)
                bn_tern_gemv(e->fmt, w[j]->data, rows, cols, e->s.qa, e->s.qs[0], w[j]->scale,
                             y[j], r0, r1);
            else
                bn_tern_gemm(e->fmt, w[j]->data, rows, cols, e->s.qa, e->s.qs, n, w[j]->scale,
                             y[j], rows, r0, r1);
        }
    }
}

/* ---- attention ----------------------------------------------------------------------- */

/* RoPE on token t's q and k, then its k and v into its sequence's f16 cache at its position. */
static void rope_and_store(bn_engine *e, uint32_t layer, uint32_t t)
{
    const bn_config *c = &e->cfg;
    size_t kv_dim = e->kv.kv_dim;
    const bn_kv_cache *kv = bn_eng_kv(e, e->s.tok_seq[t]);
    uint32_t pos = e->s.tok_pos[t];
    bn_rope_neox(e->s.q + t * c->n_embd, (int)c->n_head, (int)c->head_dim, (int)pos, e->s.rope_inv_freq);
    bn_rope_neox(e->s.k + t * kv_dim, (int)c->n_head_kv, (int)c->head_dim, (int)pos, e->s.rope_inv_freq);
    bn_f32_to_f16_row(e->s.k + t * kv_dim, bn_kv_k(kv, layer, pos), kv_dim);
    bn_f32_to_f16_row(e->s.v + t * kv_dim, bn_kv_v(kv, layer, pos), kv_dim);
}

/* RoPE and the KV store for every token of the chunk (all of them before any token attends:
 * a prefill run sees its own), then causal attention of every token over positions [0, pos+1)
 * of its own sequence. The unit of work is a (token, KV group): bn_attn_group reads the group's
 * K/V rows once for its `group` query heads, bit for bit as many bn_attn_head calls. When there
 * are too few groups to keep the threads busy (decode: n_head_kv of them, 5 on 2B-4T), the unit
 * is a (token, query head) instead; the bits are the same either way. Each token sees exactly
 * the positions it would see in token-by-token decode of its sequence alone, so batching does
 * not change results. */
static void attend(bn_engine *e, const bn_layer_weights *w, uint32_t layer, uint32_t n)
{
    (void)w;
    const bn_config *c = &e->cfg;
    const uint32_t group = c->n_head / c->n_head_kv;
    const size_t hd = c->head_dim, kv_dim = e->kv.kv_dim;
    const float scale = 1.0f / sqrtf((float)hd);
    /* per group when that gives every thread ATTN_JOBS_PER_THREAD units or more */
    const uint32_t per = (long)n * c->n_head_kv >= (long)ATTN_JOBS_PER_THREAD * e->n_threads ? group : 1;
    const uint32_t units = c->n_head / per;   /* per token */
    const long jobs = (long)n * units;
#pragma omp parallel num_threads(e->n_threads)
    {
#pragma omp for schedule(static)
        for (uint32_t t = 0; t < n; t++) rope_and_store(e, layer, t);
        /* the loop's implicit barrier: every K/V row is stored before attention reads it */
        float *scores = e->s.scores + (size_t)omp_get_thread_num() * group * e->kv.n_ctx;
#pragma omp for schedule(static)
        for (long j = 0; j < jobs; j++) {
            uint32_t t = (uint32_t)(j / units), h = (uint32_t)(j % units) * per;  /* first q head */
            const bn_kv_cache *kv = bn_eng_kv(e, e->s.tok_seq[t]);
            size_t qo = t * c->n_embd + (size_t)h * hd, kvo = (size_t)(h / group) * hd;
            bn_attn_group(e->s.att + qo, e->s.q + qo, (int)per, bn_kv_k(kv, layer, 0) + kvo,
                          bn_kv_v(kv, layer, 0) + kvo, e->s.tok_pos[t] + 1, kv_dim, (int)hd,
                          scale, scores);
        }
    }
}

/* ---- the steps of a layer: the math only ---------------------------------------------- */

static void attn_input(bn_engine *e, const bn_layer_weights *w, uint32_t layer, uint32_t n)
{
    (void)layer;
    bitlinear_input(e, e->s.xb, e->s.x, NULL, w->attn_norm, n, e->cfg.n_embd);
}

static void qkv_proj(bn_engine *e, const bn_layer_weights *w, uint32_t layer, uint32_t n)
{
    (void)layer;
    const bn_tensor *m[3] = {w->wq, w->wk, w->wv};
    float *y[3] = {e->s.q, e->s.k, e->s.v};
    project(e, n, 3, m, y);
}

/* The sub-norm BEFORE o_proj (BitNet block); without sub-norms the attention output itself. */
static void o_input(bn_engine *e, const bn_layer_weights *w, uint32_t layer, uint32_t n)
{
    (void)layer;
    bitlinear_input(e, e->s.xb, e->s.att, NULL, w->attn_sub_norm, n, e->cfg.n_embd);
}

static void o_proj(bn_engine *e, const bn_layer_weights *w, uint32_t layer, uint32_t n)
{
    (void)layer;
    project(e, n, 1, &w->wo, &e->s.xb2);
}

static void ffn_input(bn_engine *e, const bn_layer_weights *w, uint32_t layer, uint32_t n)
{
    (void)layer;
    bitlinear_input(e, e->s.xb, e->s.x, NULL, w->ffn_norm, n, e->cfg.n_embd);
}

static void gate_up_proj(bn_engine *e, const bn_layer_weights *w, uint32_t layer, uint32_t n)
{
    (void)layer;
    const bn_tensor *m[2] = {w->wgate, w->wup};
    float *y[2] = {e->s.hg, e->s.hu};
    project(e, n, 2, m, y);
}

/* act(gate) * up in place in hg, then the sub-norm BEFORE down (into hu, whose up values are
 * used by then); without sub-norms act(gate) * up itself. */
static void down_input(bn_engine *e, const bn_layer_weights *w, uint32_t layer, uint32_t n)
{
    (void)layer;
    bitlinear_input(e, e->s.hu, e->s.hg, e->s.hu, w->ffn_sub_norm, n, e->cfg.n_ff);
}

static void down_proj(bn_engine *e, const bn_layer_weights *w, uint32_t layer, uint32_t n)
{
    (void)layer;
    project(e, n, 1, &w->wdown, &e->s.xb2);
}

/* One layer, in order, each step charged to its profile part. */
static const struct layer_step {
    step_fn *fn;
    enum bn_prof_part part;
} layer_steps[] = {
    {attn_input, BN_PROF_OTHER}, {qkv_proj, BN_PROF_QKV},         {attend, BN_PROF_ATTN},
    {o_input, BN_PROF_OTHER},    {o_proj, BN_PROF_O},             {residual, BN_PROF_OTHER},
    {ffn_input, BN_PROF_OTHER},  {gate_up_proj, BN_PROF_GATE_UP}, {down_input, BN_PROF_OTHER},
    {down_proj, BN_PROF_DOWN},   {residual, BN_PROF_OTHER},
};

/* ---- the chunk ----------------------------------------------------------------------- */

/* Embedding and every layer over the chunk, tokens placed by s.tok_seq/tok_pos. */
static void run_layers(bn_engine *e, uint32_t n)
{
    size_t dim = e->cfg.n_embd;
    timed(e, BN_PROF_OTHER, embed, NULL, 0, n);
    for (uint32_t l = 0; l < e->cfg.n_layer; l++) {
        const bn_layer_weights *w = &e->model->layers[l];
        for (size_t i = 0; i < sizeof layer_steps / sizeof layer_steps[0]; i++)
            timed(e, layer_steps[i].part, layer_steps[i].fn, w, l, n);
        if (e->hook)
            for (uint32_t t = 0; t < n; t++)
                e->hook(l, e->s.tok_pos[t], e->s.x + t * dim, dim, e->hook_user);
    }
}

void bn_forward_chunk(bn_engine *e, const int32_t *ids, uint32_t n, float *all_logits,
                      int want_last)
{
    const bn_config *c = &e->cfg;
    uint32_t pos0 = e->kv.n_past;
    size_t dim = c->n_embd;
    for (uint32_t t = 0; t < n; t++) {   /* ids past n_past are not read by attention */
        e->s.tok_seq[t] = 0;
        e->s.tok_pos[t] = pos0 + t;
        e->kv.ids[pos0 + t] = ids[t];
    }
    run_layers(e, n);
    e->kv.n_past = pos0 + n;

    double t0 = prof_start(e);
    if (all_logits)
        for (uint32_t t = 0; t < n; t++) bn_lm_head_one(e, e->s.x + t * dim, all_logits + (size_t)t * c->n_vocab);
    else if (want_last)
        bn_lm_head_one(e, e->s.x + (size_t)(n - 1) * dim, e->s.logits);
    prof_stop(e, BN_PROF_LM_HEAD, t0);
}

uint32_t bn_forward_batch(bn_engine *e, const bn_batch_tok *toks, uint32_t n, float *logits_out)
{
    uint32_t m = 0;
    for (uint32_t t = 0; t < n; t++) {
        bn_kv_cache *kv = bn_eng_kv(e, toks[t].seq);
        e->s.tok_seq[t] = toks[t].seq;
        e->s.tok_pos[t] = kv->n_past;   /* attention reads tok_pos, never n_past */
        kv->ids[kv->n_past++] = toks[t].id;
    }
    run_layers(e, n);

    double t0 = prof_start(e);
    for (uint32_t t = 0; t < n; t++)   /* compacted in place: tok_pos is no longer needed */
        if (toks[t].want_logits) e->s.tok_pos[m++] = t;
    if (m) bn_lm_head_batch(e, e->s.tok_pos, m, logits_out);
    prof_stop(e, BN_PROF_LM_HEAD, t0);
    return m;
}
