/* bitnet bench --draft: the verify-cost table, drafted vs plain decoding, and the speed-up as a
 * function of the acceptance rate (see bench_draft.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/bench_draft.h"
#include "cli/cli_common.h"
#include "engine/draft.h"

static const uint32_t verify_k[] = {2, 4, 8};
#define N_VK (sizeof verify_k / sizeof *verify_k)

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *x, uint32_t n)
{
    qsort(x, n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
}

/* ---- 1. verify cost ------------------------------------------------------------------ */

/* Seconds of one pass of 1 + k tokens at depth `depth` (k = 0: a decode step, last logits
 * only, as plain decoding runs it; else every row's logits, as a verify pass), the median
 * of n passes after one warm-up; each pass is truncated away again. */
static int time_pass(bn_engine *e, const int32_t *ids, uint32_t depth, uint32_t k, uint32_t n,
                     float *logits, double *sec, bn_error *err)
{
    bn_batch_tok toks[BN_DRAFT_MAX + 1];
    double x[64];
    uint32_t V = bn_engine_model(e)->cfg.n_vocab;
    n = n < 64 ? n : 64;
    for (uint32_t j = 0; j <= k; j++) toks[j] = (bn_batch_tok){(int32_t)((ids[0] + 7u * j) % V), 0, 1};
    for (uint32_t r = 0; r <= n; r++) {
        double t0 = bn_now();
        int rc = k == 0 ? bn_engine_eval(e, ids, 1, NULL, err)
                        : bn_engine_eval_batch(e, toks, k + 1, logits, err);
        if (rc) return -1;
        if (r > 0) x[r - 1] = bn_now() - t0;
        bn_engine_truncate(e, depth);
    }
    *sec = median(x, n);
    return 0;
}

static double expected_tokens(double a, uint32_t k)
{
    double e = 1, ak = 1;
    for (uint32_t i = 0; i < k; i++) e += ak *= a;
    return e;
}

/* The acceptance rate at which k drafts pay for a pass costing c steps (bisection). */
static double break_even(double c, uint32_t k)
{
    double lo = 0, hi = 1;
    if (expected_tokens(1, k) <= c) return 1;
    for (int i = 0; i < 50; i++) {
        double mid = (lo + hi) / 2;
        if (expected_tokens(mid, k) < c) lo = mid;
        else hi = mid;
    }
    return hi;
}

static int verify_cost(bn_engine *e, const int32_t *ids, uint32_t depth, uint32_t reps,
                       float *logits, double *cost, bn_error *err)
{
    double t1, tk;
    uint32_t n = 4 * reps;
    if (time_pass(e, ids, depth, 0, n, logits, &t1, err)) return -1;
    printf("\nverify cost at depth %u (median of %u passes; c = pass / decode step; the pass "
           "pays off above the break-even acceptance rate)\n\n", depth, n);
    printf("| drafts k | tokens in pass | ms | c(k) | beta = (c-1)/k | break-even rate |\n");
    printf("| ---: | ---: | ---: | ---: | ---: | ---: |\n");
    printf("| 0 (decode) | 1 | %.2f | 1.00 | - | - |\n", 1e3 * t1);
    for (size_t i = 0; i < N_VK; i++) {
        uint32_t k = verify_k[i];
        if (time_pass(e, ids, depth, k, n, logits, &tk, err)) return -1;
        cost[i] = tk / t1;
        printf("| %u | %u | %.2f | %.2f | %.3f | %.2f |\n", k, k + 1, 1e3 * tk, cost[i],
               (cost[i] - 1) / k, break_even(cost[i], k));
        fflush(stdout);
    }
    return 0;
}

/* ---- 2. and 3.: generations ---------------------------------------------------------- */

typedef struct text {
    int32_t *ids;
    uint32_t n, cap;
} text;

static int keep_token(int32_t id, void *user)
{
    text *t = user;
    if (t->n < t->cap) t->ids[t->n++] = id;
    return BN_GEN_CONTINUE;
}

/* One greedy generation (exactly n_gen tokens); tok/s of the decode loop. */
static int gen_once(bn_engine *e, const int32_t *prompt, uint32_t n_prompt, bn_gen_opts o,
                    text *out, bn_gen_result *res, double *tps, bn_error *err)
{
    bn_sampling g;
    bn_sampling_greedy(&g);
    out->n = 0;
    o.ignore_eos = 1;
    o.on_token = keep_token;
    o.user = out;
    bn_engine_reset(e);
    if (bn_generate_opts(e, prompt, n_prompt, &g, &o, res, err)) return -1;
    *tps = res->decode_s > 0 && res->n_completion > 1 ? (res->n_completion - 1) / res->decode_s : 0;
    return 0;
}

/* reps runs after a warm-up: median tok/s, the last run's result and text. */
static int gen_median(bn_engine *e, const int32_t *prompt, uint32_t n_prompt, const bn_gen_opts *o,
                      uint32_t reps, text *out, bn_gen_result *res, double *tps, bn_error *err)
{
    double x[64];
    reps = reps < 64 ? reps : 64;
    for (uint32_t r = 0; r <= reps; r++)
        if (gen_once(e, prompt, n_prompt, *o, out, res, r ? &x[r - 1] : tps, err)) return -1;
    *tps = median(x, reps);
    return 0;
}

/* A proposer that knows plain decoding's text and is right with probability `rate` at each
 * position (a fixed pseudo-random choice per position, so a retried position stays put). */
typedef struct oracle {
    const int32_t *text;
    uint32_t n_text, n_prompt, n_vocab;
    double rate;
} oracle;

static uint32_t propose_oracle(const int32_t *hist, size_t n, uint32_t k, int32_t *out, void *user)
{
    (void)hist;
    const oracle *o = user;
    size_t at = n - o->n_prompt;
    uint32_t i = 0;
    for (; i < k && at + i < o->n_text; i++) {
        uint64_t z = (at + i + 1) * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z ^= z >> 31;
        int right = (double)(z >> 11) * 0x1.0p-53 < o->rate;
        out[i] = (int32_t)(((uint32_t)o->text[at + i] + (right ? 0u : 1u)) % o->n_vocab);
    }
    return i;
}

static const double sweep_rate[] = {0.0, 0.25, 0.5, 0.75, 0.9, 1.0};

/* Each rate's rows are relative to a plain run made just before them (the machine drifts). */
static int rate_sweep(bn_engine *e, bn_drafter *d, const int32_t *prompt, uint32_t n_prompt,
                      uint32_t n_gen, uint32_t reps, const text *plain, const double *cost,
                      text *scratch, bn_error *err)
{
    bn_gen_opts po = {.max_tokens = n_gen};
    oracle orc = {plain->ids, plain->n, n_prompt, bn_engine_model(e)->cfg.n_vocab, 0};
    bn_drafter_set_proposer(d, propose_oracle, &orc);
    printf("\nspeed-up vs acceptance: a proposer right with probability a per token (greedy, "
           "%u tokens; predicted = E(k)/c(k) from the verify costs)\n\n", n_gen);
    printf("| a | drafts | drafted | accepted / drafted | tokens per pass | tok/s | speed-up | predicted |\n");
    printf("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (size_t ri = 0; ri < sizeof sweep_rate / sizeof *sweep_rate; ri++) {
        orc.rate = sweep_rate[ri];
        bn_gen_result rp;
        double plain_tps;
        if (gen_median(e, prompt, n_prompt, &po, reps, scratch, &rp, &plain_tps, err)) return -1;
        printf("| %.2f | plain | 0 | - | 1.00 | %.2f | 1.00x | - |\n", orc.rate, plain_tps);
        for (size_t ki = 0; ki <= N_VK; ki++) {   /* k = 2, 4, 8, then auto (up to 8) */
            int is_auto = ki == N_VK;
            bn_gen_opts o = {.max_tokens = n_gen, .draft = is_auto ? BN_DRAFT_AUTO : BN_DRAFT_LOOKUP,
                             .draft_max = is_auto ? 8 : verify_k[ki], .drafter = d};
            bn_gen_result r;
            double tps;
            if (gen_median(e, prompt, n_prompt, &o, reps, scratch, &r, &tps, err)) return -1;
            if (scratch->n != plain->n || memcmp(scratch->ids, plain->ids, plain->n * sizeof *plain->ids))
                return bn_err(err, "drafted text differs from plain decoding (a %.2f)", orc.rate);
            char pred[32] = "-";
            if (!is_auto)
                snprintf(pred, sizeof pred, "%.2fx", expected_tokens(orc.rate, verify_k[ki]) / cost[ki]);
            char kname[16];
            snprintf(kname, sizeof kname, is_auto ? "auto" : "k=%u", is_auto ? 0 : verify_k[ki]);
            printf("| %.2f | %s | %u | %.2f | %.2f | %.2f | %.2fx | %s |\n", orc.rate, kname,
                   r.proposed, r.proposed ? (double)r.accepted / r.proposed : 0.0,
                   r.passes ? (double)(r.n_completion - 1) / r.passes : 0.0, tps, tps / plain_tps,
                   pred);
            fflush(stdout);
        }
    }
    bn_drafter_set_proposer(d, NULL, NULL);
    return 0;
}

int bn_bench_draft(const bn_model *m, const bn_engine_opts *eo, int mode, const int32_t *prompt,
                   uint32_t n_prompt, uint32_t n_gen, uint32_t reps, bn_error *err)
{
    if (n_prompt == 0 || n_gen < 2) return bn_err(err, "--draft needs -p >= 1 and -n >= 2");
    bn_engine_opts o = *eo;
    o.n_ctx = n_prompt + n_gen + BN_DRAFT_MAX + 1;
    o.n_seq = 1;
    bn_engine *e = NULL;
    bn_drafter *d = NULL;
    text plain = {0}, got = {0};
    float *logits = NULL;
    double cost[N_VK];
    int rc = bn_engine_create(m, &o, &e, err);
    if (rc == 0 && !(d = bn_drafter_new(e, BN_DRAFT_MAX, err))) rc = -1;
    if (rc == 0) {
        plain.cap = got.cap = n_gen;
        plain.ids = malloc(n_gen * sizeof *plain.ids);
        got.ids = malloc(n_gen * sizeof *got.ids);
        logits = malloc((size_t)(BN_DRAFT_MAX + 1) * m->cfg.n_vocab * sizeof *logits);
        if (!plain.ids || !got.ids || !logits) rc = bn_err(err, "out of memory");
    }
    /* 1. verify cost, after the prompt */
    if (rc == 0) rc = bn_engine_eval(e, prompt, n_prompt, NULL, err);
    if (rc == 0) rc = verify_cost(e, prompt, n_prompt, reps, logits, cost, err);

    /* 2. the mode asked for against plain decoding */
    bn_gen_result rp, rd;
    double tp = 0, td = 0;
    bn_gen_opts po = {.max_tokens = n_gen};
    bn_gen_opts dopt = {.max_tokens = n_gen, .draft = mode, .drafter = d};
    if (rc == 0) rc = gen_median(e, prompt, n_prompt, &po, reps, &plain, &rp, &tp, err);
    if (rc == 0 && mode != BN_DRAFT_OFF)
        rc = gen_median(e, prompt, n_prompt, &dopt, reps, &got, &rd, &td, err);
    if (rc == 0 && mode != BN_DRAFT_OFF) {
        int same = got.n == plain.n && !memcmp(got.ids, plain.ids, plain.n * sizeof *plain.ids);
        printf("\ndraft %s: greedy, %u tokens after a %u-token prompt\n\n", bn_draft_mode_name(mode),
               n_gen, n_prompt);
        printf("| decoding | passes | tokens per pass | accepted / drafted | tok/s | speed-up | same text |\n");
        printf("| --- | ---: | ---: | ---: | ---: | ---: | --- |\n");
        printf("| plain | %u | 1.00 | - | %.2f | 1.00x | - |\n", rp.passes, tp);
        printf("| %s | %u | %.2f | %u / %u (%.1f%%) | %.2f | %.2fx | %s |\n", bn_draft_mode_name(mode),
               rd.passes, rd.passes ? (double)(rd.n_completion - 1) / rd.passes : 0.0, rd.accepted,
               rd.proposed, rd.proposed ? 100.0 * rd.accepted / rd.proposed : 0.0, td, td / tp,
               same ? "yes" : "NO");
        if (!same) rc = bn_err(err, "drafted text differs from plain decoding");
    }
    /* 3. speed-up as a function of the acceptance rate */
    if (rc == 0) rc = rate_sweep(e, d, prompt, n_prompt, n_gen, reps, &plain, cost, &got, err);
    free(plain.ids);
    free(got.ids);
    free(logits);
    bn_drafter_free(d);
    bn_engine_free(e);
    return rc;
}
