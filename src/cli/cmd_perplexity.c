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

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bitnet perplexity -m MODEL -f TEXTFILE [options]\n"
            "  -m, --model FILE      packed model file\n"
            "  -f, --file FILE       text to score (tokenized whole, with BOS)\n"
            "  -c, --ctx N           window length (default 512, clamped to the model's maximum)\n"
            "  -t, --threads N       threads (default: physical cores available)\n"
            "  -b, --batch N         prefill chunk (default 64)\n"
            "      --lm-head f16|i8|screen  lm_head to use (default: screen, exact, if the file has it)\n"
            "      --isa NAME        force a kernel variant (scalar, avx2, avx512, avx512vnni)\n"
            "      --pin             pin threads to CPUs\n");
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

/* Checked option values: a bad one prints "bitnet perplexity: FLAG: why" (then exit 2). */
static int opt_u32(const char *flag, uint32_t lo, uint32_t hi, uint32_t *out)
{
    bn_error e;
    if (bn_parse_u32(optarg, lo, hi, out, &e) == 0) return 0;
    fprintf(stderr, "bitnet perplexity: %s: %s\n", flag, e.msg);
    return -1;
}

int cmd_perplexity(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"file", required_argument, 0, 'f'},
        {"ctx", required_argument, 0, 'c'},   {"threads", required_argument, 0, 't'},
        {"batch", required_argument, 0, 'b'}, {"lm-head", required_argument, 0, 'L'},
        {"isa", required_argument, 0, 'I'},   {"pin", no_argument, 0, 'P'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    const char *model_path = NULL, *file = NULL, *isa = NULL;
    uint32_t ctx = 512;
    bn_engine_opts eo;
    bn_engine_opts_default(&eo);
    int c;
    enum bn_lm_head_kind head;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:f:c:t:b:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'f': file = optarg; break;
        case 'c': if (opt_u32("-c/--ctx", 0, 1u << 24, &ctx)) return 2; break;
        case 't': {
            uint32_t t;
            if (opt_u32("-t/--threads", 0, 4096, &t)) return 2;
            eo.n_threads = (int)t;
            break;
        }
        case 'b': if (opt_u32("-b/--batch", 0, 4096, &eo.batch)) return 2; break;
        case 'L':
            if (bn_parse_head_kind(optarg, &head)) { usage(stderr); return 2; }
            eo.lm_head = head;
            break;
        case 'I': isa = optarg; break;
        case 'P': eo.pin = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model_path || !file || optind != argc) {
        usage(stderr);
        return 2;
    }
    if (isa && (bn_isa_parse(isa) < 0 || bn_kernels_force((bn_isa)bn_isa_parse(isa)) != 0)) {
        fprintf(stderr, "bitnet perplexity: kernel variant '%s' is unknown or unsupported here\n", isa);
        return 2;
    }

    bn_error err = {{0}};
    bn_model *m = NULL;
    bn_engine *e = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = 1;
    if (bn_model_open_any(model_path, NULL, &m, NULL, &err)) goto out;
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
            bn_engine_lm_head(e) == BN_LM_HEAD_I8 ? "i8" : "f16");

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
