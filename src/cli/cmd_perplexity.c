/* bitnet perplexity: perplexity of a model over a text file, by llama.cpp's method (see
 * bn_perplexity in engine.h), so the figure compares with llama-perplexity's. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/parse.h"
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "model/convert_cache.h"
#include "engine/engine.h"
#include "text/tokenizer.h"

/* The engine options perplexity takes (the table in cli_common.c): -c is the window. */
#define PPL_EOPTS (BN_EOPT_THREADS | BN_EOPT_WINDOW | BN_EOPT_COMMON)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bitnet perplexity -m MODEL -f TEXTFILE [options]\n"
            "  -m, --model FILE      packed model file\n"
            "  -f, --file FILE       text to score (tokenized whole, with BOS)\n"
            "engine:\n");
    bn_cli_engine_help(f, PPL_EOPTS, 24);
}

static void print_chunk(uint32_t chunk, uint32_t n_chunks, double ppl, void *user)
{
    (void)user;
    printf("[%u]%.4f,", chunk + 1, ppl);
    if (chunk + 1 == n_chunks || (chunk + 1) % 16 == 0) printf("\n");
    fflush(stdout);
}

/* Reads and tokenizes the whole file: BOS first, as llama.cpp does. */
static int tokenize_file(const bn_model *m, const char *path, int32_t **ids, size_t *n, bn_error *err)
{
    char *text = NULL;
    size_t len = 0;
    if (bn_read_file(path, (size_t)1 << 30, &text, &len, err)) return -1;
    bn_tokenizer *tk = bn_tokenizer_new(m->vocab, err);
    bn_tokens toks = {0};
    int rc = tk ? 0 : -1;
    if (rc == 0 && m->cfg.bos >= 0) rc = bn_tokens_push(&toks, m->cfg.bos, err);
    if (rc == 0) rc = bn_tokenize_append(tk, text, len, &toks, err);
    bn_tokenizer_free(tk);
    free(text);
    if (rc) {
        bn_tokens_free(&toks);
        return -1;
    }
    *ids = toks.ids;
    *n = toks.n;
    return 0;
}

int cmd_perplexity(int argc, char **argv)
{
    static const struct option own[] = {
        {"model", required_argument, 0, 'm'}, {"file", required_argument, 0, 'f'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    const char *model_path = NULL, *file = NULL;
    bn_cli_getopt g;
    bn_cli_getopt_build(&g, own, "m:f:h", PPL_EOPTS);
    bn_cli_engine ce;
    bn_cli_engine_init(&ce);
    ce.eo.n_ctx = 512;   /* the window's default; 0 or more than the model's: its maximum */
    int c;
    bn_error perr;
    optind = 1;
    while ((c = getopt_long(argc, argv, g.shortopts, g.longopts, NULL)) != -1) {
        int r = bn_cli_engine_opt(&ce, PPL_EOPTS, c, optarg, &perr);
        if (r < 0) {   /* a bad value: its message names the flag */
            fprintf(stderr, "bitnet perplexity: %s\n", perr.msg);
            return 2;
        }
        if (r > 0) continue;
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'f': file = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model_path || !file || optind != argc) {
        usage(stderr);
        return 2;
    }
    if (bn_cli_engine_finish(&ce, &perr)) {
        fprintf(stderr, "bitnet perplexity: %s\n", perr.msg);
        return 2;
    }
    bn_engine_opts eo;
    bn_cli_engine_opts(&ce, ce.eo.n_threads, &eo);
    uint32_t ctx = eo.n_ctx;

    bn_error err = {{0}};
    bn_model *m = NULL;
    bn_engine *e = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = 1;
    if (bn_cli_open_model(&ce, model_path, &m, &err)) goto out;
    if (ctx == 0 || ctx > m->cfg.n_ctx_max) ctx = m->cfg.n_ctx_max;
    eo.n_ctx = ctx;
    double t0 = bn_now();
    if (tokenize_file(m, file, &ids, &n, &err)) goto out;
    fprintf(stderr, "perplexity: tokenized %s: %zu tokens in %.2f s\n", file, n, bn_now() - t0);
    if (bn_engine_create(m, &eo, &e, &err)) goto out;
    bn_engine_mem mem;
    bn_engine_memory(e, &mem);
    fprintf(stderr, "perplexity: %zu chunks, n_ctx=%u, batch %u, %d threads, isa %s, lm_head %s\n",
            n / ctx, ctx, mem.batch, bn_engine_threads(e), bn_isa_name(bn_kernels_isa()),
            bn_head_kind_name(bn_engine_lm_head(e)));

    bn_ppl_result res;
    if (bn_perplexity(e, ids, n, ctx, m->cfg.bos, print_chunk, NULL, &res, &err)) goto out;
    printf("Final estimate: PPL = %.4f +/- %.5f\n", res.ppl, res.ppl_err);
    fprintf(stderr, "perplexity: %llu tokens scored in %.2f s (%.1f tok/s evaluated)\n",
            (unsigned long long)res.n_scored, res.seconds,
            (double)res.n_chunks * res.ctx / (res.seconds > 0 ? res.seconds : 1));
    rc = 0;
out:
    if (rc) fprintf(stderr, "bitnet perplexity: %s\n", err.msg);
    bn_engine_free(e);
    free(ids);
    bn_model_close(m);
    return rc;
}
