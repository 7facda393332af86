/* The BitNet b1.58 forward pass (docs: bitnet-model.md s.2), for a chunk of n tokens. Token t
 * belongs to sequence s.tok_seq[t] and sits at position s.tok_pos[t] of that sequence's KV
 * cache: one sequence at pos0 .. pos0+n-1 (prefill; decode is n == 1, GEMV instead of GEMM), or
 * tokens of several sequences (batched decode), which share every weight read. Only RoPE, the
 * KV store and attention look at (seq, pos); every other op is per token, so a token's result
 * does not depend on which other tokens share its chunk.
 *
 *   x = embed(ids)                                       f16 rows -> f32
 *   per layer:
 *     a = rmsnorm(x, attn_norm);      qa = int8(a)        quantized once for q, k and v
 *     q, k, v = Wq qa, Wk qa, Wv qa;  rope_neox(q, k)     ternary GEMV/GEMM
 *     store k, v (f16) at pos;        o = attention(q, K, V)   GQA: q head h -> kv head h/group
 *     o = rmsnorm(o, attn_sub_norm);  x += Wo int8(o)
 *     f = rmsnorm(x, ffn_norm);       qa = int8(f)        quantized once for gate and up
 *     m = relu(Wgate qa)^2 * (Wup qa)
 *     m = rmsnorm(m, ffn_sub_norm);   x += Wdown int8(m)
 *   logits = lm_head(rmsnorm(x, output_norm))            tied f16 embedding, or its int8 copy
 *
 * Threads: every kernel call below is split across the engine's one OpenMP team: output rows
 * of a matrix in whole row tiles, attention by (token, head), per-token ops by token. */
#include <math.h>
#include <omp.h>

#include "base/checked.h"
#include "engine/engine_internal.h"

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

/* ---- per-token float ops ------------------------------------------------------------- */

static void embed_row(bn_engine *e, int32_t id, uint32_t t)
{
    size_t dim = e->cfg.n_embd;
    bn_f16_to_f32_row(e->model->tok_embd + (size_t)id * dim, e->s.x + t * dim, dim);
}

/* out = rmsnorm(in) * w for n rows of dim floats, then quantized to int8 into s.qa (row
 * stride = the padded width the ternary kernels expect for a dim-column matrix; padding stays
 * zero) with scales in s.qs. With gate non-NULL, in is first replaced by relu(in)^2 * gate
 * (the FFN's activation, in place). One parallel loop over tokens: each token's ops are the
 * same calls as one at a time, so the bits do not depend on n or on the thread count. */
static void norm_quant_rows(bn_engine *e, float *out, float *in, const float *gate,
                            const float *w, uint32_t n, size_t dim)
{
    size_t pad = bn_tern_cols_padded(e->fmt, dim);
#pragma omp parallel for num_threads(e->n_threads) if (n > 1) schedule(static)
    for (uint32_t t = 0; t < n; t++) {
        float *x = in + t * dim, *o = out + t * dim;
        if (gate) bn_relu2_mul(x, x, gate + t * dim, dim);
        bn_rmsnorm(o, x, w, dim, e->cfg.norm_eps);
        e->s.qs[t] = bn_quant_act(o, dim, pad, e->s.qa + t * pad);
    }
}

static void add_residual(bn_engine *e, float *x, const float *y, uint32_t n, size_t dim)
{
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
 * a prefill run sees its own), then causal attention of every (token, query head) over
 * positions [0, pos+1) of its own sequence. Each token sees exactly the positions it would see
 * in token-by-token decode of that sequence alone, so batching does not change results. */
static void attend(bn_engine *e, uint32_t layer, uint32_t n)
{
    const bn_config *c = &e->cfg;
    uint32_t group = c->n_head / c->n_head_kv;
    size_t hd = c->head_dim, kv_dim = e->kv.kv_dim;
    float scale = 1.0f / sqrtf((float)hd);
    long jobs = (long)n * c->n_head;
#pragma omp parallel num_threads(e->n_threads)
    {
#pragma omp for schedule(static)
        for (uint32_t t = 0; t < n; t++) rope_and_store(e, layer, t);
        /* the loop's implicit barrier: every K/V row is stored before attention reads it */
#pragma omp for schedule(static)
        for (long j = 0; j < jobs; j++) {
            uint32_t t = (uint32_t)(j / c->n_head), h = (uint32_t)(j % c->n_head);
            const bn_kv_cache *kv = bn_eng_kv(e, e->s.tok_seq[t]);
            size_t kvh = (h / group) * hd;
            float *scores = e->s.scores + (size_t)omp_get_thread_num() * e->kv.n_ctx;
            bn_attn_head(e->s.att + t * c->n_embd + h * hd, e->s.q + t * c->n_embd + h * hd,
                         bn_kv_k(kv, layer, 0) + kvh, bn_kv_v(kv, layer, 0) + kvh,
                         e->s.tok_pos[t] + 1, kv_dim, (int)hd, scale, scores);
        }
    }
}

/* ---- the two blocks of a layer ------------------------------------------------------- */

static void attention_block(bn_engine *e, uint32_t l, uint32_t n)
{
    const bn_layer_weights *w = &e->model->layers[l];
    size_t dim = e->cfg.n_embd;
    bn_scratch *s = &e->s;

    double t0 = prof_start(e);
    norm_quant_rows(e, s->xb, s->x, NULL, w->attn_norm, n, dim);
    prof_stop(e, BN_PROF_OTHER, t0);

    t0 = prof_start(e);
    const bn_tensor *qkv[3] = {w->wq, w->wk, w->wv};
    float *qkv_out[3] = {s->q, s->k, s->v};
    project(e, n, 3, qkv, qkv_out);
    prof_stop(e, BN_PROF_QKV, t0);

    t0 = prof_start(e);
    attend(e, l, n);
    prof_stop(e, BN_PROF_ATTN, t0);

    t0 = prof_start(e);
    norm_quant_rows(e, s->xb, s->att, NULL, w->attn_sub_norm, n, dim);   /* sub-norm BEFORE o_proj */
    prof_stop(e, BN_PROF_OTHER, t0);

    t0 = prof_start(e);
    project(e, n, 1, &w->wo, &s->xb2);
    prof_stop(e, BN_PROF_O, t0);

    t0 = prof_start(e);
    add_residual(e, s->x, s->xb2, n, dim);
    prof_stop(e, BN_PROF_OTHER, t0);
}

static void ffn_block(bn_engine *e, uint32_t l, uint32_t n)
{
    const bn_layer_weights *w = &e->model->layers[l];
    size_t dim = e->cfg.n_embd, ff = e->cfg.n_ff;
    bn_scratch *s = &e->s;

    double t0 = prof_start(e);
    norm_quant_rows(e, s->xb, s->x, NULL, w->ffn_norm, n, dim);
    prof_stop(e, BN_PROF_OTHER, t0);

    t0 = prof_start(e);
    const bn_tensor *gu[2] = {w->wgate, w->wup};
    float *gu_out[2] = {s->hg, s->hu};
    project(e, n, 2, gu, gu_out);
    prof_stop(e, BN_PROF_GATE_UP, t0);

    t0 = prof_start(e);
    /* relu(gate)^2 * up in place, then the sub-norm BEFORE down */
    norm_quant_rows(e, s->hu, s->hg, s->hu, w->ffn_sub_norm, n, ff);
    prof_stop(e, BN_PROF_OTHER, t0);

    t0 = prof_start(e);
    project(e, n, 1, &w->wdown, &s->xb2);
    prof_stop(e, BN_PROF_DOWN, t0);

    t0 = prof_start(e);
    add_residual(e, s->x, s->xb2, n, dim);
    prof_stop(e, BN_PROF_OTHER, t0);
}

/* ---- the chunk ----------------------------------------------------------------------- */

/* Every layer over the chunk already embedded in s.x, tokens placed by s.tok_seq/tok_pos. */
static void run_layers(bn_engine *e, uint32_t n)
{
    size_t dim = e->cfg.n_embd;
    for (uint32_t l = 0; l < e->cfg.n_layer; l++) {
        attention_block(e, l, n);
        ffn_block(e, l, n);
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

    double t0 = prof_start(e);
    for (uint32_t t = 0; t < n; t++) {
        embed_row(e, ids[t], t);
        e->s.tok_seq[t] = 0;
        e->s.tok_pos[t] = pos0 + t;
    }
    prof_stop(e, BN_PROF_OTHER, t0);

    run_layers(e, n);

    for (uint32_t t = 0; t < n; t++) e->kv.ids[pos0 + t] = ids[t];
    e->kv.n_past = pos0 + n;

    t0 = prof_start(e);
    if (all_logits)
        for (uint32_t t = 0; t < n; t++) bn_lm_head_one(e, e->s.x + t * dim, all_logits + (size_t)t * c->n_vocab);
    else if (want_last)
        bn_lm_head_one(e, e->s.x + (size_t)(n - 1) * dim, e->s.logits);
    prof_stop(e, BN_PROF_LM_HEAD, t0);
}

uint32_t bn_forward_batch(bn_engine *e, const bn_batch_tok *toks, uint32_t n, float *logits_out)
{
    double t0 = prof_start(e);
    uint32_t m = 0;
    for (uint32_t t = 0; t < n; t++) {
        bn_kv_cache *kv = bn_eng_kv(e, toks[t].seq);
        embed_row(e, toks[t].id, t);
        e->s.tok_seq[t] = toks[t].seq;
        e->s.tok_pos[t] = kv->n_past;   /* attention reads tok_pos, never n_past */
        kv->ids[kv->n_past++] = toks[t].id;
    }
    prof_stop(e, BN_PROF_OTHER, t0);

    run_layers(e, n);

    t0 = prof_start(e);
    for (uint32_t t = 0; t < n; t++)   /* compacted in place: tok_pos is no longer needed */
        if (toks[t].want_logits) e->s.tok_pos[m++] = t;
    if (m) bn_lm_head_batch(e, e->s.tok_pos, m, logits_out);
    prof_stop(e, BN_PROF_LM_HEAD, t0);
    return m;
}
