/* The output layer (forward.c calls it after the last block): final RMSNorm, then the lm_head
 * over the whole vocabulary, for one token or for the tokens of a batched pass.
 *
 * The screened head (BN_LM_HEAD_SCREEN) is exact by a bound, not by luck. Per row r, with x the
 * normed hidden state, w_r the f16 row, s_r q_r its int8 copy and x^ = qx / xs the quantized
 * activation, the screen computes z8 = s_r <q_r, qx> / xs and
 *   |<x, w_r> - s_r <q_r, x^>| <= ||x|| err_r + ||x - x^|| norm_r            (Cauchy-Schwarz)
 * with err_r >= ||w_r - s_r q_r|| and norm_r >= ||s_r q_r|| stored in the file. The f16 head's
 * float dot differs from <x, w_r> by at most g ||x|| (norm_r + err_r), g = n u / (1 - n u)
 * for any summation order (Higham 3.1, u = 2^-24), and z8's epilogue rounds by < 4 u |z8|. So
 *   |f16_r - z8_r| <= B_r = a err_r + b norm_r + c |z8_r|,  a = ||x|| (1 + g), b = ||x - x^|| + g ||x||
 * (a, b, c inflated so that evaluating B_r and z8 +- B_r in float stays an upper bound). The top
 * f16 row has f16 >= L = max_r (z8_r - B_r); a row with z8_r + B_r < L cannot be it. Candidates
 * are rescored best upper bound first with bn_gemv_f16 (per row the f16 head's exact result)
 * until the next bound is below best - margin: every row left has f16 < best - margin. */
#include <math.h>
#include <omp.h>

#include "engine/engine_internal.h"
#include "base/checked.h"

struct bn_lm_cand {
    float u;        /* upper bound of the row's f16 logit */
    uint32_t r;
};
typedef struct bn_lm_cand lm_cand;

/* The head's rows are split between threads in whole runs of 16: 16 f32 logits are 64 bytes, so
 * on a 64-byte aligned logits row no two threads write one cache line. The screen's compaction
 * recomputes the same split, so every use must be this one constant. */
#define LM_SPLIT_ROWS 16

/* More candidates than vocab / LM_FALLBACK: the whole f16 head, in parallel, is cheaper than
 * rescoring them one by one on one thread. */
#define LM_FALLBACK 32

static int uses_q8(const bn_engine *e)
{
    return e->lm_head == BN_LM_HEAD_I8 || e->lm_head == BN_LM_HEAD_SCREEN;
}

/* ---- the screened head ------------------------------------------------------------------ */

typedef struct screen_coef {
    float a, b, c;
} screen_coef;

static screen_coef coef(const float *x, const int8_t *q, float xs, size_t n)
{
    double xx = 0, dd = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - (double)q[i] / (double)xs;
        xx += (double)x[i] * x[i];
        dd += d * d;
    }
    const double u = 0x1p-24, g = (double)n * u / (1 - (double)n * u), nx = sqrt(xx), nd = sqrt(dd);
    const double up = 1 + 1e-5;   /* covers float evaluation of B_r and of z8 +- B_r */
    return (screen_coef){(float)(nx * (1 + g) * up), (float)((nd + g * nx) * up), 1e-6f};
}

static inline float bound(const bn_model *m, screen_coef k, const float *z8, size_t r)
{
    return k.a * m->lm_head_i8_err[r] + k.b * m->lm_head_i8_norm[r] + k.c * fabsf(z8[r]) + 1e-30f;
}

static float lower_max(const bn_model *m, screen_coef k, const float *y, size_t r0, size_t r1)
{
    float lo = -INFINITY;
    for (size_t r = r0; r < r1; r++) {
        float v = y[r] - bound(m, k, y, r);
        lo = v > lo ? v : lo;
    }
    return lo;
}

static uint32_t collect(const bn_model *m, screen_coef k, const float *y, float thr, size_t r0,
                        size_t r1, lm_cand *out)
{
    uint32_t n = 0;
    for (size_t r = r0; r < r1; r++) {
        float u = y[r] + bound(m, k, y, r);
        if (u >= thr) out[n++] = (lm_cand){u, (uint32_t)r};
    }
    return n;
}

static void sift_down(lm_cand *h, uint32_t n, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, b = i;
        if (l < n && h[l].u > h[b].u) b = l;
        if (l + 1 < n && h[l + 1].u > h[b].u) b = l + 1;
        if (b == i) return;
        lm_cand t = h[i];
        h[i] = h[b], h[b] = t;
        i = b;
    }
}

/* Rescores the n candidates best bound first until every row left is below best - margin.
 * Returns the rows rescored. */
static uint32_t rescore(const bn_engine *e, lm_cand *h, uint32_t n, const float *xn, float margin,
                        float *y)
{
    for (uint32_t i = n / 2; i-- > 0;) sift_down(h, n, i);
    float best = -INFINITY;
    uint32_t done = 0;
    while (n > 0 && h[0].u >= best - margin) {
        uint32_t r = h[0].r;
        bn_gemv_f16(e->head_f16, e->cfg.n_embd, xn, y, r, r + 1);
        best = y[r] > best ? y[r] : best;
        done++;
        h[0] = h[--n];
        sift_down(h, n, 0);
    }
    return done;
}

static void count(bn_engine *e, uint32_t rescored)
{
    e->lm_stats.tokens++;
    e->lm_stats.rescored += rescored;
    if (rescored > e->lm_stats.rescored_max) e->lm_stats.rescored_max = rescored;
}

/* Inside the head's parallel region, every thread, once the screen wrote its own rows [r0, r1)
 * of y: makes y exact where the bound requires it. Two barriers per token: after them nobody
 * reads part[] or writes lm_cand until the master, rescoring, reaches the next token's first
 * barrier (or the region's end). */
static void screen_token(bn_engine *e, const float *xn, const int8_t *q, float xs, float margin,
                         float *y, size_t r0, size_t r1)
{
    const bn_model *m = e->model;
    const int ith = omp_get_thread_num(), nth = omp_get_num_threads();
    const size_t vocab = e->cfg.n_vocab;
    float *part = e->s.lm_part;
    const screen_coef k = coef(xn, q, xs, e->cfg.n_embd);
    part[ith] = lower_max(m, k, y, r0, r1);
#pragma omp barrier
    float lo = -INFINITY;
    for (int t = 0; t < nth; t++) lo = part[t] > lo ? part[t] : lo;
    /* each thread's candidates go to its own rows' slots of lm_cand: no sharing */
    uint32_t mine = collect(m, k, y, lo - margin, r0, r1, e->s.lm_cand + r0);
    part[nth + ith] = (float)mine;   /* exact: counts <= n_vocab < 2^24 */
#pragma omp barrier
    size_t total = 0;
    for (int t = 0; t < nth; t++) total += (size_t)part[nth + t];
    if (total * LM_FALLBACK > vocab) {
        if (r0 < r1) bn_gemv_f16(e->head_f16, e->cfg.n_embd, xn, y, r0, r1);
#pragma omp master
        count(e, (uint32_t)vocab);
        return;
    }
#pragma omp master
    {
        lm_cand *c = e->s.lm_cand;
        uint32_t n = 0;
        for (int t = 0; t < nth; t++) {   /* compact the segments (each starts at its r0) */
            size_t a, b;
            bn_thread_rows(vocab, LM_SPLIT_ROWS, nth, t, &a, &b);
            for (uint32_t i = 0; i < (uint32_t)part[nth + t]; i++) c[n++] = c[a + i];
        }
        count(e, rescore(e, c, n, xn, margin, y));
    }
}

/* ---- entry points ------------------------------------------------------------------------ */

/* logits = lm_head . output_norm(h): the f16 head rows (the tied embedding or the untied
 * "output" tensor; exact f32 dot products), the file's int8 per-row copy of those rows against
 * h quantized per token like every other activation, or the screen. */
void bn_lm_head_one(bn_engine *e, const float *h, float *logits)
{
    const bn_model *m = e->model;
    size_t dim = e->cfg.n_embd, vocab = e->cfg.n_vocab;
    float *xn = e->s.xb;   /* free at this point: the layers are done */
    bn_rmsnorm(xn, h, m->output_norm, dim, e->cfg.norm_eps);
    float xs = 0.0f;
    if (uses_q8(e)) xs = bn_quant_act(xn, dim, m->lm_head_cols_padded, e->s.lm_q);
#pragma omp parallel num_threads(e->n_threads)
    {
        size_t r0, r1;
        bn_thread_rows(vocab, LM_SPLIT_ROWS, omp_get_num_threads(), omp_get_thread_num(), &r0, &r1);
        if (r0 < r1) {
            if (uses_q8(e))
                bn_gemv_i8row(m->lm_head_i8, m->lm_head_i8_scale, dim, m->lm_head_cols_padded,
                              e->s.lm_q, xs, logits, r0, r1);
            else
                bn_gemv_f16(e->head_f16, dim, xn, logits, r0, r1);
        }
        if (e->lm_head == BN_LM_HEAD_SCREEN)
            screen_token(e, xn, e->s.lm_q, xs, e->lm_margin[0], logits, r0, r1);
    }
}

/* The lm_head of m tokens at once (their final hidden states rows[0..m) of s.x). int8 and the
 * screen: one batched GEMM per thread's row range, each weight chunk loaded once for all m
 * tokens. f16: each block of LM_BLOCK rows is read from memory once and reused from cache for
 * every token. Per row the kernels' results are those of bn_lm_head_one, and the screen's
 * choices depend on the token alone, so logits are bit-identical. */
#define LM_BLOCK 64
void bn_lm_head_batch(bn_engine *e, const uint32_t *rows, uint32_t m, float *logits)
{
    const bn_model *md = e->model;
    size_t dim = e->cfg.n_embd, vocab = e->cfg.n_vocab, lpad = md->lm_head_cols_padded;
    size_t qstride = lpad > bn_align_up(dim, 64) ? lpad : bn_align_up(dim, 64);
    int i8 = uses_q8(e);
    for (uint32_t i = 0; i < m; i++) {   /* s.xb row i is free: the layers are done */
        float *xn = e->s.xb + (size_t)i * dim;
        bn_rmsnorm(xn, e->s.x + (size_t)rows[i] * dim, md->output_norm, dim, e->cfg.norm_eps);
        if (i8) e->s.lm_qs[i] = bn_quant_act(xn, dim, lpad, e->s.lm_q + i * qstride);
    }
#pragma omp parallel num_threads(e->n_threads)
    {
        size_t r0, r1;
        bn_thread_rows(vocab, LM_SPLIT_ROWS, omp_get_num_threads(), omp_get_thread_num(), &r0, &r1);
        if (i8 && r0 < r1)
            bn_gemm_i8row(md->lm_head_i8, md->lm_head_i8_scale, dim, lpad, e->s.lm_q, qstride,
                          e->s.lm_qs, m, logits, vocab, r0, r1);
        for (size_t b0 = r0; !i8 && b0 < r1; b0 += LM_BLOCK) {
            size_t b1 = r1 - b0 < LM_BLOCK ? r1 : b0 + LM_BLOCK;
            for (uint32_t i = 0; i < m; i++)
                bn_gemv_f16(e->head_f16, dim, e->s.xb + (size_t)i * dim, logits + (size_t)i * vocab,
                            b0, b1);
        }
        if (e->lm_head == BN_LM_HEAD_SCREEN) {
            for (uint32_t i = 0; i < m; i++) {
                uint32_t seq = e->s.tok_seq[rows[i]];
                screen_token(e, e->s.xb + (size_t)i * dim, e->s.lm_q + i * qstride, e->s.lm_qs[i],
                             e->lm_margin[seq < BN_MAX_SEQ ? seq : 0], logits + (size_t)i * vocab,
                             r0, r1);
            }
        }
    }
}

/* ---- settings and counters ------------------------------------------------------------------ */

void bn_engine_set_lm_margin(bn_engine *e, uint32_t seq, float margin)
{
    if (seq < BN_MAX_SEQ) e->lm_margin[seq] = margin >= 0 ? margin : 0;   /* NaN -> 0 too */
}

float bn_lm_margin(const bn_sampling *s, uint32_t n_vocab)
{
    (void)n_vocab;
    if (s->repeat_penalty != 1.0f || s->presence_penalty != 0.0f || s->frequency_penalty != 0.0f)
        return INFINITY;
    if (!(s->temperature > 0.0f)) return 0.0f;
    /* min_p drops every row with p < min_p * p_top, i.e. a logit more than T ln(1/min_p) below
     * the top: rows beyond that margin cannot be drawn whatever their exact value */
    if (s->min_p > 0.0f) return s->temperature * (float)log(1.0 / (double)s->min_p) * 1.0001f;
    /* No truncation: the exact distribution would need every row (the f16 head's cost). The
     * rows near the top are exact (margin 0), the tail keeps int8-accurate logits. */
    return 0.0f;
}

/* The margin under which sampling's whole distribution is f16's to within 2^-24 of the top
 * token's probability: for callers that need it exact (tests, evaluations) at f16 cost. */
float bn_lm_margin_exact(const bn_sampling *s, uint32_t n_vocab)
{
    float m = bn_lm_margin(s, n_vocab);
    if (m > 0.0f || !(s->temperature > 0.0f)) return m;
    return s->temperature * (float)(log((double)n_vocab) + 24 * log(2.0));
}

void bn_engine_lm_stats(bn_engine *e, bn_lm_stats *out, int reset)
{
    if (out) *out = e->lm_stats;
    if (reset) e->lm_stats = (bn_lm_stats){0, 0, 0};
}
