/* bitnet bench: prefill (pp) and decode (tg) speed in the style of llama-bench, plus
 * --parallel: S sequences decoded together in one pass per step (llama-batched-bench), plus
 * --roofline: this machine's memory read bandwidth, decode speed as a fraction of
 * bandwidth / weight bytes per token, and where the time of a decoded token goes. */
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/parse.h"
#include "cli/bench_draft.h"
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "model/convert_cache.h"
#include "engine/draft.h"
#include "engine/engine.h"

#define MAX_THREAD_LIST BN_CLI_MAX_THREAD_LIST

/* The engine options bench takes (the table in cli_common.c): -t is a list of counts. */
#define BENCH_EOPTS (BN_EOPT_THREAD_LIST | BN_EOPT_COMMON)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bitnet bench -m MODEL [options]\n"
            "  -m, --model FILE      packed model file\n"
            "  -p, --n-prompt N      prefill test of N tokens (default 512; 0 = skip)\n"
            "  -n, --n-gen N         decode test of N tokens (default 128; 0 = skip)\n"
            "  -r, --reps N          repetitions per test, after one warm-up (default 5)\n"
            "      --roofline        memory bandwidth, decode as a fraction of it, time split\n"
            "      --agreement       top-1 agreement of the int8 and screened heads with f16 over -p positions\n"
            "      --parallel LIST   decode S sequences together (e.g. 1,2,4,8): aggregate and\n"
            "                        per-sequence tok/s of -n steps, after a -p token prompt each\n"
            "      --draft MODE      off|lookup|auto: verify-pass cost, drafted vs plain decoding of\n"
            "                        -n tokens after -p, speed-up vs acceptance rate (first -t only)\n"
            "engine:\n");
    bn_cli_engine_help(f, BENCH_EOPTS, 24);
}

typedef struct bench_args {
    const char *model;
    uint32_t n_prompt, n_gen, reps;
    bn_cli_engine ce;                            /* -t LIST and the other engine options */
    int parallel[MAX_THREAD_LIST], n_parallel;   /* --parallel sequence counts; 0 = off */
    int roofline, agreement;
    int draft;                                   /* --draft mode; -1 = not asked */
} bench_args;

static void mean_sd(const double *x, int n, double *mean, double *sd)
{
    double s = 0, s2 = 0;
    for (int i = 0; i < n; i++) s += x[i];
    *mean = s / n;
    for (int i = 0; i < n; i++) s2 += (x[i] - *mean) * (x[i] - *mean);
    *sd = n > 1 ? sqrt(s2 / (n - 1)) : 0.0;
}

/* Deterministic prompt ids in the vocabulary (content does not matter for speed). */
static void fill_ids(int32_t *ids, uint32_t n, uint32_t n_vocab, int32_t bos)
{
    for (uint32_t i = 0; i < n; i++) ids[i] = (int32_t)((i * 2654435761u + 12345u) % n_vocab);
    if (n && bos >= 0) ids[0] = bos;
}

static const char *head_name(const bn_engine *e) { return bn_head_kind_name(bn_engine_lm_head(e)); }

static int run_pp(bn_engine *e, const int32_t *ids, uint32_t n, double *tps, bn_error *err)
{
    bn_engine_reset(e);
    double t0 = bn_now();
    if (bn_engine_eval(e, ids, n, NULL, err)) return -1;
    *tps = n / (bn_now() - t0);
    return 0;
}

/* Decode of n tokens from an empty cache, one at a time, as llama-bench's tg test. */
static int run_tg(bn_engine *e, const int32_t *ids, uint32_t n, double *tps, bn_error *err)
{
    bn_engine_reset(e);
    double t0 = bn_now();
    for (uint32_t i = 0; i < n; i++)
        if (bn_engine_eval(e, ids + i, 1, NULL, err)) return -1;
    *tps = n / (bn_now() - t0);
    return 0;
}

static int bench_test(bn_engine *e, const bench_args *a, const int32_t *ids, int is_pp,
                      double *mean, double *sd, bn_error *err)
{
    double *x = calloc(a->reps, sizeof *x), warm;
    uint32_t n = is_pp ? a->n_prompt : a->n_gen;
    int rc = is_pp ? run_pp(e, ids, n, &warm, err) : run_tg(e, ids, n, &warm, err);
    for (uint32_t r = 0; rc == 0 && r < a->reps; r++)
        rc = is_pp ? run_pp(e, ids, n, &x[r], err) : run_tg(e, ids, n, &x[r], err);
    if (rc == 0) mean_sd(x, (int)a->reps, mean, sd);
    free(x);
    return rc;
}

/* ---- parallel decode (--parallel) ----------------------------------------------------- */

/* S sequences from empty caches: each first gets an n_prompt-token prompt (untimed: it sets
 * the depth the decode runs at, as llama-batched-bench's PP), then n_gen steps each evaluate
 * one token of every sequence in one pass, with logits for all. Sequences get different ids. */
static int run_parallel(bn_engine *e, const bench_args *a, const int32_t *ids, uint32_t n_ids,
                        uint32_t S, bn_batch_tok *toks, float *logits, double *agg_tps,
                        bn_error *err)
{
    for (uint32_t s = 0; s < S; s++) bn_engine_seq_reset(e, s);
    size_t n = 0;
    for (uint32_t s = 0; s < S; s++)
        for (uint32_t i = 0; i < a->n_prompt; i++)
            toks[n++] = (bn_batch_tok){ids[(i + 13 * s) % n_ids], s, i + 1 == a->n_prompt};
    if (n && bn_engine_eval_batch(e, toks, n, logits, err)) return -1;
    double t0 = bn_now();
    for (uint32_t i = 0; i < a->n_gen; i++) {
        for (uint32_t s = 0; s < S; s++)
            toks[s] = (bn_batch_tok){ids[(a->n_prompt + i + 13 * s) % n_ids], s, 1};
        if (bn_engine_eval_batch(e, toks, S, logits, err)) return -1;
    }
    *agg_tps = (double)S * a->n_gen / (bn_now() - t0);
    return 0;
}

/* One row per S: aggregate t/s (mean ± sd over reps, after a warm-up), the per-sequence rate
 * beside it, and the aggregate relative to the first S of the list. */
static int bench_parallel(bn_engine *e, const bench_args *a, const int32_t *ids, uint32_t n_ids,
                          const char *name, double size_gib, bn_error *err)
{
    if (a->n_gen == 0) return 0;   /* nothing decoded: no rows */
    uint32_t V = bn_engine_model(e)->cfg.n_vocab, smax = bn_engine_n_seq(e);
    size_t ntok = (size_t)smax * (a->n_prompt > 1 ? a->n_prompt : 1);
    bn_batch_tok *toks = malloc(ntok * sizeof *toks);
    float *logits = malloc((size_t)smax * V * sizeof *logits);
    double *x = calloc(a->reps, sizeof *x), base = 0;
    int rc = toks && logits && x ? 0 : bn_err(err, "out of memory");
    const char *head = head_name(e);
    for (int pi = 0; rc == 0 && pi < a->n_parallel; pi++) {
        uint32_t S = (uint32_t)a->parallel[pi];
        double warm, mean, sd;
        rc = run_parallel(e, a, ids, n_ids, S, toks, logits, &warm, err);
        for (uint32_t r = 0; rc == 0 && r < a->reps; r++)
            rc = run_parallel(e, a, ids, n_ids, S, toks, logits, &x[r], err);
        if (rc) break;
        mean_sd(x, (int)a->reps, &mean, &sd);
        if (pi == 0) base = mean;
        printf("| %s | %.2f GiB | %s | %s | %d | %u | pp%u+tg%u | %.2f ± %.2f | %.2f | %.2fx |\n", name,
               size_gib, bn_isa_name(bn_kernels_isa()), head, bn_engine_threads(e), S, a->n_prompt,
               a->n_gen, mean, sd, mean / S, mean / base);
        fflush(stdout);
    }
    free(toks);
    free(logits);
    free(x);
    return rc;
}

/* ---- roofline ------------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Multi-threaded streaming read of a buffer much larger than the caches; GB/s best and median
 * of several passes. Eight independent accumulators keep the loads, not the adds, the limit. */
static void measure_bandwidth(int threads, double *best, double *median)
{
    size_t bytes = (size_t)1 << 30, n = bytes / sizeof(uint64_t);
    uint64_t *buf = malloc(bytes);
    if (!buf) {
        *best = *median = 0;
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = i;   /* fault in, by the threads that will read */
    enum { PASSES = 7 };
    double gbs[PASSES];
    volatile uint64_t sink = 0;
    for (int p = 0; p < PASSES; p++) {
        double t0 = bn_now();
        uint64_t total = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
        for (size_t blk = 0; blk < n / 8; blk++) {
            const uint64_t *q = buf + blk * 8;
            total += (q[0] ^ q[1]) + (q[2] ^ q[3]) + (q[4] ^ q[5]) + (q[6] ^ q[7]);
        }
        gbs[p] = (double)bytes / (bn_now() - t0) / 1e9;
        sink += total;
    }
    (void)sink;
    qsort(gbs, PASSES, sizeof *gbs, cmp_double);
    *best = gbs[PASSES - 1];
    *median = gbs[PASSES / 2];
    free(buf);
}

static int roofline(bn_engine *e, const bench_args *a, const int32_t *ids, int threads,
                    bn_error *err)
{
    double best, median, tps, sd;
    measure_bandwidth(threads, &best, &median);
    if (bench_test(e, a, ids, 0, &tps, &sd, err)) return -1;
    uint64_t wbytes = bn_engine_weight_bytes_per_token(e);   /* after: the planes read, counted */
    double bound = best * 1e9 / (double)wbytes;
    printf("\nroofline (%d threads): memory read bandwidth %.1f GB/s best, %.1f GB/s median\n",
           threads, best, median);
    printf("  weights read per token: %.1f MiB (lm_head %s)\n", (double)wbytes / (1 << 20),
           head_name(e));
    printf("  bound: %.1f tok/s; measured decode %.2f tok/s = %.0f%% of the roofline\n", bound, tps,
           100.0 * tps / bound);

    /* where the time of a decoded token goes */
    bn_engine_profile(e, 1);
    double tg;
    if (run_tg(e, ids, a->n_gen, &tg, err)) return -1;
    bn_engine_profile(e, 0);
    const double *prof = bn_engine_profile_get(e);
    double total = 0;
    for (int i = 0; i < BN_PROF_COUNT; i++) total += prof[i];
    printf("  decode time split (%u tokens, %.2f ms/token profiled):\n", a->n_gen, 1e3 * total / a->n_gen);
    for (int i = 0; i < BN_PROF_COUNT; i++)
        printf("    %-30s %7.3f ms/token  %5.1f%%\n", bn_prof_part_name((enum bn_prof_part)i),
               1e3 * prof[i] / a->n_gen, 100.0 * prof[i] / (total > 0 ? total : 1));
    return 0;
}

static uint32_t argmax_row(const float *y, uint32_t n)
{
    uint32_t b = 0;
    for (uint32_t i = 1; i < n; i++) b = y[i] > y[b] ? i : b;
    return b;
}

/* Top-1 agreement of the int8 and screened lm_heads with the exact f16 one at each of n
 * positions (the same chunk evaluated from the same cache state once per head), the rows the
 * screens rescored (and, for the bit-plane screen, the rows each plane was read for), and each
 * head's time per token over those chunks. The screens run as greedy decoding does (no int8
 * tail: bn_lm_tail). */
#define AG_KINDS 4
static void add_stats(bn_lm_stats *sum, const bn_lm_stats *st)
{
    sum->tokens += st->tokens;
    sum->rescored += st->rescored;
    if (st->rescored_max > sum->rescored_max) sum->rescored_max = st->rescored_max;
    sum->plane_tokens += st->plane_tokens;
    for (int j = 0; j < 4; j++) sum->live[j] += st->live[j];
}

static void print_agreement(const bn_model *md, uint32_t n, int nk, const uint32_t *agree,
                            const double *secs, const bn_lm_stats *st)
{
    static const char *names[AG_KINDS] = {"f16", "i8", "screen-i8", "screen"};
    uint32_t V = md->cfg.n_vocab;
    printf("\nlm_head agreement with f16 over %u positions (top-1), ms per token:\n", n);
    for (int k = 0; k < nk; k++)
        printf("  %-9s %u/%u (%.2f%%)  %.3f ms\n", names[k], agree[k], n, 100.0 * agree[k] / n,
               1e3 * secs[k] / n);
    for (int k = 2; k < nk; k++)
        printf("  %s: rows rescored per token %.1f mean, %u max (of %u)\n", names[k],
               st[k].tokens ? (double)st[k].rescored / (double)st[k].tokens : 0.0,
               st[k].rescored_max, V);
    if (nk == AG_KINDS && st[3].plane_tokens) {
        double planes = 0;
        printf("  screen: rows read per plane (mean per token):");
        for (int j = 0; j < 4; j++) {
            double r = (double)st[3].live[j] / (double)st[3].plane_tokens;
            planes += r / V;
            printf(" %.0f", r);
        }
        printf("\n  screen: bytes read %.1f%% of the int8 head's\n", 100.0 * planes / 4);
    }
}

static int agreement(bn_engine *e, const int32_t *ids, uint32_t n, bn_error *err)
{
    const bn_model *md = bn_engine_model(e);
    uint32_t V = md->cfg.n_vocab, chunk = 32, agree[AG_KINDS] = {0};
    enum bn_lm_head_kind kinds[AG_KINDS] = {BN_LM_HEAD_F16, BN_LM_HEAD_I8, BN_LM_HEAD_SCREEN_I8,
                                            BN_LM_HEAD_SCREEN};
    int nk = md->lm_head_planes ? 4 : md->lm_head_i8_err ? 3 : md->lm_head_i8 ? 2 : 1;
    double secs[AG_KINDS] = {0};
    bn_lm_stats st[AG_KINDS], one;
    memset(st, 0, sizeof st);
    float *y[AG_KINDS];
    int rc = 0;
    for (int k = 0; k < AG_KINDS; k++)
        if (!(y[k] = malloc((size_t)chunk * V * sizeof(float)))) rc = bn_err(err, "out of memory");
    enum bn_lm_head_kind was = bn_engine_lm_head(e);
    bn_engine_reset(e);
    for (uint32_t p = 0; rc == 0 && p < n; p += chunk) {
        uint32_t m = n - p < chunk ? n - p : chunk;
        for (int k = 0; rc == 0 && k < nk; k++) {
            bn_engine_truncate(e, p);
            rc = bn_engine_set_lm_head(e, kinds[k], err);
            bn_engine_profile(e, 1);
            bn_engine_lm_stats(e, NULL, 1);
            if (rc == 0) rc = bn_engine_eval(e, ids + p, m, y[k], err);
            secs[k] += bn_engine_profile_get(e)[BN_PROF_LM_HEAD];
            bn_engine_lm_stats(e, &one, 1);
            add_stats(&st[k], &one);
        }
        for (uint32_t t = 0; rc == 0 && t < m; t++) {
            uint32_t b0 = argmax_row(y[0] + (size_t)t * V, V);
            for (int k = 0; k < nk; k++) agree[k] += argmax_row(y[k] + (size_t)t * V, V) == b0;
        }
    }
    bn_engine_profile(e, 0);
    if (rc == 0) rc = bn_engine_set_lm_head(e, was, err);
    if (rc == 0) print_agreement(md, n, nk, agree, secs, st);
    for (int k = 0; k < AG_KINDS; k++) free(y[k]);
    return rc;
}

/* ---- main ---------------------------------------------------------------------------- */

/* Checked option values: a bad one prints "bitnet bench: FLAG: why" and parse_args returns 3
 * (exit 2, without the usage text). */
static int opt_bad(const char *flag, const bn_error *e)
{
    if (flag) fprintf(stderr, "bitnet bench: %s: %s\n", flag, e->msg);
    else fprintf(stderr, "bitnet bench: %s\n", e->msg);   /* the message names its flag */
    return 3;
}
static int opt_u32(const char *flag, uint32_t lo, uint32_t hi, uint32_t *out)
{
    bn_error e;
    return bn_parse_u32(optarg, lo, hi, out, &e) ? opt_bad(flag, &e) : 0;
}

static int parse_args(int argc, char **argv, bench_args *a)
{
    static const struct option own[] = {
        {"model", required_argument, 0, 'm'},  {"n-prompt", required_argument, 0, 'p'},
        {"n-gen", required_argument, 0, 'n'},  {"reps", required_argument, 0, 'r'},
        {"roofline", no_argument, 0, 'R'},     {"agreement", no_argument, 0, 'A'},
        {"parallel", required_argument, 0, 'S'}, {"draft", required_argument, 0, 'D'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    bn_cli_getopt g;
    bn_cli_getopt_build(&g, own, "m:p:n:r:h", BENCH_EOPTS);
    *a = (bench_args){.n_prompt = 512, .n_gen = 128, .reps = 5, .draft = -1};
    bn_cli_engine_init(&a->ce);
    int c;
    bn_error e;
    optind = 1;
    while ((c = getopt_long(argc, argv, g.shortopts, g.longopts, NULL)) != -1) {
        int r = bn_cli_engine_opt(&a->ce, BENCH_EOPTS, c, optarg, &e);
        if (r < 0) return opt_bad(NULL, &e);
        if (r > 0) continue;
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'p': if (opt_u32("-p/--n-prompt", 0, 1u << 20, &a->n_prompt)) return 3; break;
        case 'n': if (opt_u32("-n/--n-gen", 0, 1u << 20, &a->n_gen)) return 3; break;
        case 'S':
            if (bn_parse_u32_list(optarg, 1, BN_MAX_SEQ, a->parallel, MAX_THREAD_LIST,
                                  &a->n_parallel, &e))
                return opt_bad("--parallel", &e);
            break;
        case 'r': if (opt_u32("-r/--reps", 1, 1000000, &a->reps)) return 3; break;
        case 'R': a->roofline = 1; break;
        case 'A': a->agreement = 1; break;
        case 'D':
            if ((a->draft = bn_draft_mode_parse(optarg)) < 0) {
                fprintf(stderr, "bitnet bench: --draft: '%s' is not off, lookup or auto\n", optarg);
                return 3;
            }
            break;
        case 'h': usage(stdout); return 1;
        default: return 2;
        }
    }
    if (!a->model || optind != argc || a->reps == 0) return 2;
    if (bn_cli_engine_finish(&a->ce, &e)) return opt_bad(NULL, &e);
    if (a->ce.n_threads == 0) a->ce.threads[a->ce.n_threads++] = 0;
    return 0;
}

int cmd_bench(int argc, char **argv)
{
    bench_args a;
    int prc = parse_args(argc, argv, &a);
    if (prc) {
        if (prc == 2) usage(stderr);
        return prc == 1 ? 0 : 2;
    }
    bn_error err = {{0}};
    bn_model *m = NULL;
    if (bn_cli_open_model(&a.ce, a.model, &m, &err)) {
        fprintf(stderr, "bitnet bench: %s\n", err.msg);
        return 1;
    }
    uint32_t n_ids = a.n_prompt > a.n_gen ? a.n_prompt : a.n_gen;
    int32_t *ids = malloc((n_ids ? n_ids : 1) * sizeof *ids);
    fill_ids(ids, n_ids, m->cfg.n_vocab, m->cfg.bos);
    const char *name = strrchr(m->path, '/') ? strrchr(m->path, '/') + 1 : m->path;
    int smax = 0;
    for (int i = 0; i < a.n_parallel; i++) smax = a.parallel[i] > smax ? a.parallel[i] : smax;
    if (a.n_parallel) {
        printf("| model | size | isa | lm_head | threads | S | test | t/s | t/s per seq | vs S=%d |\n",
               a.parallel[0]);
        printf("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    } else {
        printf("| model | size | isa | lm_head | threads | test | t/s |\n");
        printf("| --- | ---: | --- | --- | ---: | ---: | ---: |\n");
    }
    int rc = 0;
    for (int ti = 0; rc == 0 && ti < a.ce.n_threads; ti++) {
        bn_engine_opts eo;
        bn_cli_engine_opts(&a.ce, a.ce.threads[ti], &eo);
        eo.n_ctx = n_ids > 0 ? n_ids : 1;
        if (a.n_parallel) {   /* every sequence holds its prompt and its generated tokens */
            eo.n_seq = (uint32_t)smax;
            eo.n_ctx = a.n_prompt + a.n_gen > 0 ? a.n_prompt + a.n_gen : 1;
        }
        bn_engine *e = NULL;
        if ((rc = bn_engine_create(m, &eo, &e, &err))) break;
        /* tg and --parallel time greedy decoding, as llama-bench does: no sequence needs an
         * int8-accurate tail (bn_lm_tail), so the screen may read the bit planes */
        for (uint32_t sq = 0; sq < (eo.n_seq ? eo.n_seq : 1); sq++) bn_engine_set_lm_tail(e, sq, 0);
        if (ti == 0) {
            bn_engine_mem mem;
            bn_engine_memory(e, &mem);
            fprintf(stderr, "memory: model %.1f MiB (%s), KV cache %.1f MiB (n_ctx %u, f16, %u x %.1f MiB), scratch %.1f MiB\n",
                    (double)m->map_len / (1 << 20), a.ce.mmap ? "mapped" : "in memory", (double)mem.kv / (1 << 20), mem.n_ctx,
                    mem.n_seq, (double)mem.kv_per_seq / (1 << 20), (double)mem.scratch / (1 << 20));
        }
        if (a.n_parallel) {
            rc = bench_parallel(e, &a, ids, n_ids ? n_ids : 1, name, (double)m->map_len / (1 << 30), &err);
            bn_engine_free(e);
            continue;
        }
        const char *head = head_name(e);
        for (int is_pp = 1; rc == 0 && is_pp >= 0; is_pp--) {
            uint32_t n = is_pp ? a.n_prompt : a.n_gen;
            if (n == 0) continue;
            double mean, sd;
            if ((rc = bench_test(e, &a, ids, is_pp, &mean, &sd, &err))) break;
            printf("| %s | %.2f GiB | %s | %s | %d | %s%u | %.2f ± %.2f |\n", name,
                   (double)m->map_len / (1 << 30), bn_isa_name(bn_kernels_isa()), head,
                   bn_engine_threads(e), is_pp ? "pp" : "tg", n, mean, sd);
            fflush(stdout);
        }
        /* before the roofline's 1 GiB bandwidth buffer inflates it */
        if (ti == 0) fprintf(stderr, "peak RSS %.1f MiB\n", bn_peak_rss_mib());
        if (rc == 0 && a.roofline && a.n_gen) rc = roofline(e, &a, ids, bn_engine_threads(e), &err);
        if (rc == 0 && a.agreement && ti == 0 && a.n_prompt) rc = agreement(e, ids, a.n_prompt, &err);
        bn_engine_free(e);
        if (rc == 0 && a.draft >= 0 && ti == 0)
            rc = bn_bench_draft(m, &eo, a.draft, ids, a.n_prompt, a.n_gen, a.reps, &err);
    }
    if (rc) fprintf(stderr, "bitnet bench: %s\n", err.msg);
    free(ids);
    bn_model_close(m);
    return rc ? 1 : 0;
}
