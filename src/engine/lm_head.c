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
 * until the next bound is below best - margin: every row left has f16 < best - margin.
 *
 * With the bit planes (format 1.3) the same bound holds at every stage j with the stage's own
 * err/norm, for z_j computed from the high 2(j+1) bits of each code (their centred value): the
 * screen reads plane j only for the rows stage j-1 could not rule out. On the synthetic 2b4t
 * the 2- and 4-bit stages rule out nothing, the 6-bit one all but ~1% (with L raised to the
 * exact f16 logit of its best row), so the head reads about 3/4 of the int8 copy's bytes. */
#include <math.h>
#include <omp.h>

#include <string.h>

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
    return e->lm_head == BN_LM_HEAD_I8 || e->lm_head == BN_LM_HEAD_SCREEN ||
           e->lm_head == BN_LM_HEAD_SCREEN_I8;
}

static int screened(const bn_engine *e)
{
    return e->lm_head == BN_LM_HEAD_SCREEN || e->lm_head == BN_LM_HEAD_SCREEN_I8;
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

/* Stages of the screen: j = 0..2 have read bit planes 0..j (the row stands for its centred
 * value, bn_u2_stage_value), stage 3 has the whole int8 code. Each has its per-row bounds. */
#define LM_STAGES 4
typedef struct stage_rows {
    const float *err, *norm;
} stage_rows;

static stage_rows stage_of(const bn_model *m, int j)
{
    if (j < LM_STAGES - 1) return (stage_rows){m->lm_head_plane_err[j], m->lm_head_plane_norm[j]};
    return (stage_rows){m->lm_head_i8_err, m->lm_head_i8_norm};
}

static inline float bound(screen_coef k, stage_rows b, const float *z, size_t r)
{
    return k.a * b.err[r] + k.b * b.norm[r] + k.c * fabsf(z[r]) + 1e-30f;
}

/* The rows of [r0, r1) a stage looks at: all, or those live[] still holds. */
#define LIVE(live, r) (!(live) || (live)[r])

/* The best lower bound z - B among the rows of [r0, r1) that live[] holds (NULL: all). */
static float lower_max(screen_coef k, stage_rows b, const float *y, const uint8_t *live, size_t r0,
                       size_t r1)
{
    float lo = -INFINITY;
    for (size_t r = r0; r < r1; r++) {
        if (!LIVE(live, r)) continue;
        float v = y[r] - bound(k, b, y, r);
        lo = v > lo ? v : lo;
    }
    return lo;
}

static uint32_t collect(screen_coef k, stage_rows b, const float *y, float thr, const uint8_t *live,
                        size_t r0, size_t r1, lm_cand *out)
{
    uint32_t n = 0;
    for (size_t r = r0; r < r1; r++) {
        if (!LIVE(live, r)) continue;
        float u = y[r] + bound(k, b, y, r);
        if (u >= thr) out[n++] = (lm_cand){u, (uint32_t)r};
    }
    return n;
}

/* Stage j's screen logits of the live rows from their integer sums acc (bn_u2_gemv): for j < 3
 * the centred value of the unknown low bits, in double (exact but for the scale's rounding),
 * rounded once; for j = 3 the int8 head's own formula, so those logits equal bn_gemv_i8row's.
 * Returns the best lower bound among them, and in *best the row with the highest logit. */
static float plane_logits(const bn_model *m, int j, screen_coef k, const int32_t *acc,
                          const uint8_t *live, int32_t X, float xs, float *y, size_t r0, size_t r1,
                          size_t *best)
{
    const float *s = m->lm_head_i8_scale;
    const stage_rows b = stage_of(m, j);
    const int sh = 6 - 2 * j;
    const double step = (double)(1 << sh), centre = ((double)(1 << sh) - 1) / 2 - 128,
                 inv = 1.0 / (double)xs;
    float lo = -INFINITY, top = -INFINITY;
    *best = r1;
    for (size_t r = r0; r < r1; r++) {
        if (!LIVE(live, r)) continue;
        if (j == LM_STAGES - 1) y[r] = (float)(acc[r] - 128 * X) / xs * s[r];
        else y[r] = (float)((double)s[r] * (step * acc[r] + centre * X) * inv);
        float v = y[r] - bound(k, b, y, r);
        lo = v > lo ? v : lo;
        if (y[r] > top) top = y[r], *best = r;
    }
    return lo;
}

/* The exact f16 logit of row r: bn_gemv_f16 on that row alone, which is what the f16 head
 * computes for it in every variant (the result does not depend on the row range). */
static float f16_logit(const bn_engine *e, const float *xn, size_t r)
{
    float v;
    bn_gemv_f16(e->head_f16 + r * e->cfg.n_embd, e->cfg.n_embd, xn, &v, 0, 1);
    return v;
}

/* Keeps in live[] the rows of [r0, r1) whose upper bound reaches thr; returns how many. */
static uint32_t prune(screen_coef k, stage_rows b, const float *y, float thr, uint8_t *live,
                      size_t r0, size_t r1)
{
    uint32_t n = 0;
    for (size_t r = r0; r < r1; r++) {
        live[r] = live[r] && y[r] + bound(k, b, y, r) >= thr;
        n += live[r];
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

/* Slots of s.lm_part, per thread t of nth: the lower bound of stage j, and the rows left after
 * stage j (stage 3: the candidates). Distinct slots per stage, so that no thread overwrites a
 * slot another may still read before the barrier that follows. */
#define PART_LO(j, t, nth) ((size_t)(j) * (nth) + (t))
#define PART_N(j, t, nth) ((size_t)(LM_STAGES + (j)) * (nth) + (t))

/* The end of every screen, once y holds the int8 (stage 3) logits of the rows live[] keeps and
 * lo is the best lower bound: the rows that could be within margin of the top are rescored
 * exactly. One barrier; afterwards nobody reads the count slots or writes lm_cand until the
 * master, rescoring, reaches the next token's first barrier (or the region's end). */
static void screen_finish(bn_engine *e, const float *xn, screen_coef k, float lo, float margin,
                          const uint8_t *live, float *y, size_t r0, size_t r1)
{
    const int ith = omp_get_thread_num(), nth = omp_get_num_threads();
    const size_t vocab = e->cfg.n_vocab;
    float *part = e->s.lm_part;
    /* each thread's candidates go to its own rows' slots of lm_cand: no sharing */
    uint32_t mine = collect(k, stage_of(e->model, LM_STAGES - 1), y, lo - margin, live, r0, r1,
                            e->s.lm_cand + r0);
    part[PART_N(LM_STAGES - 1, ith, nth)] = (float)mine;   /* exact: counts < 2^24 */
#pragma omp barrier
    size_t total = 0;
    for (int t = 0; t < nth; t++) total += (size_t)part[PART_N(LM_STAGES - 1, t, nth)];
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
            for (uint32_t i = 0; i < (uint32_t)part[PART_N(LM_STAGES - 1, t, nth)]; i++) c[n++] = c[a + i];
        }
        count(e, rescore(e, c, n, xn, margin, y));
    }
}

/* Inside the head's parallel region, every thread, once bn_gemv_i8row wrote its own rows
 * [r0, r1) of y: makes y exact where the bound requires it (the screen on output_q8). */
static void screen_token(bn_engine *e, const float *xn, const int8_t *q, float xs, float margin,
                         float *y, size_t r0, size_t r1)
{
    const int ith = omp_get_thread_num(), nth = omp_get_num_threads();
    float *part = e->s.lm_part;
    const screen_coef k = coef(xn, q, xs, e->cfg.n_embd);
    part[PART_LO(LM_STAGES - 1, ith, nth)] =
        lower_max(k, stage_of(e->model, LM_STAGES - 1), y, NULL, r0, r1);
#pragma omp barrier
    float lo = -INFINITY;
    for (int t = 0; t < nth; t++) lo = fmaxf(lo, part[PART_LO(LM_STAGES - 1, t, nth)]);
    screen_finish(e, xn, k, lo, margin, NULL, y, r0, r1);
}

/* A stage whose bound work dropped under 1/LM_SKIP_BELOW of its rows last time is skipped
 * (its plane only accumulates) except every LM_PROBE-th token, which re-measures it: on flat
 * logits the 2- and 4-bit stages drop nothing, and their passes over every row cost time. */
#define LM_SKIP_BELOW 32
#define LM_PROBE 16

static unsigned plane_eval(const bn_engine *e)
{
    unsigned eval = 1u << (LM_STAGES - 1);   /* the int8 stage always */
    int probe = e->lm_stats.plane_tokens % LM_PROBE == 0;
    for (int j = 0; j < LM_STAGES - 1; j++)
        if (probe || e->lm_drop[j] * LM_SKIP_BELOW >= 1.0f) eval |= 1u << j;
    return eval;
}

/* Master only, after the stages: counters, and each evaluated stage's drop rate. Stages left
 * out keep their rows: they count as live and their rate is kept. */
static void plane_stats(bn_engine *e, unsigned eval, int nth)
{
    const float *part = e->s.lm_part;
    uint64_t before = e->cfg.n_vocab;
    e->lm_stats.plane_tokens++;
    e->lm_stats.live[0] += before;
    for (int j = 0; j + 1 < LM_STAGES; j++) {
        uint64_t after = before;
        if (eval >> j & 1) {
            after = 0;
            for (int t = 0; t < nth; t++) after += (uint64_t)part[PART_N(j, t, nth)];
            e->lm_drop[j] = before ? (float)(before - after) / (float)before : 0.0f;
        }
        e->lm_stats.live[j + 1] += after;
        before = after;
    }
}

/* The same screen reading the bit planes (format 1.3) most significant first: after plane j,
 * rows whose stage-j bound cannot reach the best lower bound so far are dropped and never cost
 * their later planes. The lower bound only grows, and each is valid (a stage's z - B, or the
 * exact f16 logit of the row that stage ranks first, usually the top row itself: that lets a
 * stage drop every row whose upper bound is below the top, not below the top minus its own
 * bound). So a row dropped at any stage is below the top f16 logit minus margin, as in the
 * one-stage screen. Stages flagged off in `eval` only accumulate (dropping fewer rows is always
 * safe). A barrier per evaluated stage; every thread keeps its own rows throughout. */
static void planes_token(bn_engine *e, const float *xn, const int8_t *q, float xs, int32_t X,
                         float margin, unsigned eval, float *y, size_t r0, size_t r1)
{
    const bn_model *m = e->model;
    const int ith = omp_get_thread_num(), nth = omp_get_num_threads();
    float *part = e->s.lm_part;
    int32_t *acc = e->s.lm_acc;
    uint8_t *live = e->s.lm_live;
    const screen_coef k = coef(xn, q, xs, e->cfg.n_embd);
    if (r0 < r1) {
        memset(acc + r0, 0, (r1 - r0) * sizeof *acc);
        memset(live + r0, 1, r1 - r0);
    }
    float lo = -INFINITY;
    const uint8_t *lv = NULL;   /* every row, until a stage drops some */
    for (int j = 0; j < LM_STAGES; j++) {
        if (r0 < r1) bn_u2_gemv(m->lm_head_planes, m->lm_head_planes_cols, j, q, lv, acc, r0, r1);
        if (!(eval >> j & 1)) continue;
        size_t best;
        float mine = plane_logits(m, j, k, acc, lv, X, xs, y, r0, r1, &best);
        if (j > 0 && best < r1) mine = fmaxf(mine, f16_logit(e, xn, best));
        part[PART_LO(j, ith, nth)] = mine;
#pragma omp barrier
        for (int t = 0; t < nth; t++) lo = fmaxf(lo, part[PART_LO(j, t, nth)]);
        if (j < LM_STAGES - 1) {
            part[PART_N(j, ith, nth)] = (float)prune(k, stage_of(m, j), y, lo - margin, live, r0, r1);
            lv = live;
        }
    }
#pragma omp master
    plane_stats(e, eval, nth);
    screen_finish(e, xn, k, lo, margin, live, y, r0, r1);
}

/* ---- entry points ------------------------------------------------------------------------ */

/* What one token's head does: the f16 rows when every row must be exact anyway (an infinite
 * margin: the screen would end in the f16 head after reading the int8 copy), the bit planes
 * when the file has them and the sequence's tail may stay coarse, else the kind in use. */
enum one_mode { ONE_F16, ONE_I8, ONE_SCREEN, ONE_PLANES };

static enum one_mode one_mode(const bn_engine *e, uint32_t seq)
{
    if (!screened(e)) return e->lm_head == BN_LM_HEAD_I8 ? ONE_I8 : ONE_F16;
    if (isinf(e->lm_margin[seq])) return ONE_F16;
    if (e->lm_head == BN_LM_HEAD_SCREEN && e->model->lm_head_planes && e->s.lm_acc &&
        !e->lm_tail[seq])
        return ONE_PLANES;
    return ONE_SCREEN;
}

static int32_t sum_q(const int8_t *q, size_t n)
{
    int32_t s = 0;
    for (size_t i = 0; i < n; i++) s += q[i];
    return s;
}

/* The width the int8 activations are quantized to: the int8 rows' and the planes' padding. */
static size_t q_cols(const bn_model *m)
{
    size_t w = m->lm_head_cols_padded;
    return m->lm_head_planes && m->lm_head_planes_cols > w ? m->lm_head_planes_cols : w;
}

/* logits = lm_head . output_norm(h) of sequence seq's token: the f16 head rows (the tied
 * embedding or the untied "output" tensor; exact f32 dot products), the file's int8 per-row
 * copy of those rows against h quantized per token like every other activation, or a screen. */
static void head_one(bn_engine *e, uint32_t seq, const float *h, float *logits)
{
    const bn_model *m = e->model;
    size_t dim = e->cfg.n_embd, vocab = e->cfg.n_vocab;
    float *xn = e->s.xb;   /* free at this point: the layers are done */
    bn_rmsnorm(xn, h, m->output_norm, dim, e->cfg.norm_eps);
    const enum one_mode mode = one_mode(e, seq);
    const float margin = e->lm_margin[seq];
    float xs = 0.0f;
    int32_t X = 0;
    if (mode != ONE_F16) xs = bn_quant_act(xn, dim, q_cols(m), e->s.lm_q);
    unsigned eval = 0;
    if (mode == ONE_PLANES) X = sum_q(e->s.lm_q, q_cols(m)), eval = plane_eval(e);
#pragma omp parallel num_threads(e->n_threads)
    {
        size_t r0, r1;
        bn_thread_rows(vocab, LM_SPLIT_ROWS, omp_get_num_threads(), omp_get_thread_num(), &r0, &r1);
        if (mode == ONE_PLANES) {
            planes_token(e, xn, e->s.lm_q, xs, X, margin, eval, logits, r0, r1);
        } else {
            if (r0 < r1) {
                if (mode == ONE_F16)
                    bn_gemv_f16(e->head_f16, dim, xn, logits, r0, r1);
                else
                    bn_gemv_i8row(m->lm_head_i8, m->lm_head_i8_scale, dim, m->lm_head_cols_padded,
                                  e->s.lm_q, xs, logits, r0, r1);
            }
            if (mode == ONE_SCREEN) screen_token(e, xn, e->s.lm_q, xs, margin, logits, r0, r1);
        }
    }
    if (mode == ONE_F16 && screened(e)) count(e, (uint32_t)vocab);   /* an infinite margin */
}

void bn_lm_head_one(bn_engine *e, const float *h, float *logits) { head_one(e, 0, h, logits); }

/* The lm_head of m tokens at once (their final hidden states rows[0..m) of s.x). int8 and the
 * screen: one batched GEMM per thread's row range, each weight chunk loaded once for all m
 * tokens. f16: each block of LM_BLOCK rows is read from memory once and reused from cache for
 * every token. Per row the kernels' results are those of bn_lm_head_one, and the screen's
 * choices depend on the token alone, so logits are bit-identical. One token alone takes the
 * one-token path (the bit planes, where its sequence allows them). */
#define LM_BLOCK 64
void bn_lm_head_batch(bn_engine *e, const uint32_t *rows, uint32_t m, float *logits)
{
    if (m == 1) {
        uint32_t seq = e->s.tok_seq[rows[0]];
        head_one(e, seq < BN_MAX_SEQ ? seq : 0, e->s.x + (size_t)rows[0] * e->cfg.n_embd, logits);
        return;
    }
    const bn_model *md = e->model;
    size_t dim = e->cfg.n_embd, vocab = e->cfg.n_vocab, lpad = md->lm_head_cols_padded;
    size_t qstride = bn_lm_q_stride(md);
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
        if (screened(e)) {
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

void bn_engine_set_lm_tail(bn_engine *e, uint32_t seq, int int8_tail)
{
    if (seq < BN_MAX_SEQ) e->lm_tail[seq] = int8_tail != 0;
}

int bn_lm_tail(const bn_sampling *s)
{
    float m = bn_lm_margin(s, 0);
    return s->temperature > 0.0f && m == 0.0f;   /* untruncated sampling: any row can be drawn */
}

void bn_engine_set_lm_sampling(bn_engine *e, uint32_t seq, const bn_sampling *s)
{
    bn_engine_set_lm_margin(e, seq, bn_lm_margin(s, e->cfg.n_vocab));
    bn_engine_set_lm_tail(e, seq, bn_lm_tail(s));
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
    if (reset) memset(&e->lm_stats, 0, sizeof e->lm_stats);
}
