/* Perplexity by llama.cpp's method (examples/perplexity: perplexity()), so that figures compare
 * with published ones: windows of ctx tokens, BOS first, second half scored. The first half of
 * each window only provides context, so it is evaluated without logits. */
#include <math.h>
#include <stdlib.h>

#include "engine/engine_internal.h"

/* -log softmax(logits)[target], in double as llama.cpp does. */
static double nll_of(const float *logits, uint32_t n_vocab, int32_t target)
{
    float mx = logits[0];
    for (uint32_t i = 1; i < n_vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0.0;
    for (uint32_t i = 0; i < n_vocab; i++) sum += exp((double)(logits[i] - mx));
    return log(sum) - (double)(logits[target] - mx);
}

/* One window: positions [0, first) as context, then logits for [first, ctx) in batches. */
static int score_window(bn_engine *e, int32_t *win, uint32_t ctx, float *rows, bn_ppl_result *res,
                        bn_error *err)
{
    uint32_t first = ctx / 2, V = e->cfg.n_vocab;
    bn_engine_reset(e);
    if (bn_engine_eval(e, win, first, NULL, err)) return -1;
    for (uint32_t p = first; p < ctx; p += e->batch) {
        uint32_t m = ctx - p < e->batch ? ctx - p : e->batch;
        if (bn_engine_eval(e, win + p, m, rows, err)) return -1;
        for (uint32_t j = 0; j < m; j++) {
            if (p + j + 1 >= ctx) break;   /* the last position has nothing to predict */
            double nll = nll_of(rows + (size_t)j * V, V, win[p + j + 1]);
            res->nll_sum += nll;
            res->nll2_sum += nll * nll;
            res->n_scored++;
        }
    }
    return 0;
}

int bn_perplexity(bn_engine *e, const int32_t *ids, size_t n, uint32_t ctx, int32_t bos,
                  bn_ppl_cb cb, void *user, bn_ppl_result *res, bn_error *err)
{
    *res = (bn_ppl_result){0};
    if (ctx == 0) ctx = 512;
    if (ctx > e->kv.n_ctx) ctx = e->kv.n_ctx;
    if (ctx < 4) return bn_err(err, "perplexity: context %u is too small", ctx);
    if (n < ctx)
        return bn_err(err, "perplexity: %zu tokens, fewer than one window of %u", n, ctx);
    res->ctx = ctx;
    res->n_chunks = (uint32_t)(n / ctx);

    int32_t *win = malloc((size_t)ctx * sizeof *win);
    float *rows = malloc((size_t)e->batch * e->cfg.n_vocab * sizeof *rows);
    if (!win || !rows) {
        free(win);
        free(rows);
        return bn_err(err, "perplexity: out of memory");
    }
    double t0 = bn_eng_now();
    int rc = 0;
    for (uint32_t c = 0; c < res->n_chunks && rc == 0; c++) {
        for (uint32_t i = 0; i < ctx; i++) win[i] = ids[(size_t)c * ctx + i];
        if (bos >= 0) win[0] = bos;
        rc = score_window(e, win, ctx, rows, res, err);
        if (rc == 0 && cb) cb(c, res->n_chunks, exp(res->nll_sum / (double)res->n_scored), user);
    }
    free(win);
    free(rows);
    bn_engine_reset(e);
    if (rc) return -1;
    double mean = res->nll_sum / (double)res->n_scored;
    res->ppl = exp(mean);
    if (res->n_scored > 1) {
        double var = res->nll2_sum / (double)res->n_scored - mean * mean;
        res->ppl_err = res->ppl * sqrt(var > 0 ? var / (double)(res->n_scored - 1) : 0.0);
    }
    res->seconds = bn_eng_now() - t0;
    return 0;
}
