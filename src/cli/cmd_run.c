/* bitnet run: generate from a prompt, or chat interactively (--chat), streaming text as it is
 * decoded. Text handling (tokenize, streaming UTF-8 decode, stop strings, chat template) is
 * the text layer's; generation is the engine's; this file only wires them and prints. */
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/parse.h"
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "model/convert_cache.h"
#include "engine/draft.h"
#include "engine/engine.h"
#include "text/tokenizer.h"

/* The engine options run takes (the table in cli_common.c). */
#define RUN_EOPTS (BN_EOPT_THREADS | BN_EOPT_CTX | BN_EOPT_COMMON)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bitnet run -m MODEL -p PROMPT [options]\n"
            "       bitnet run -m MODEL --chat [-p SYSTEM_PROMPT] [options]\n"
            "  -m, --model FILE            packed model file\n"
            "  -p, --prompt TEXT           prompt (with --chat: the system prompt)\n"
            "  -n, --n-predict N           tokens to generate (default -1: until a stop or a full context)\n"
            "      --chat                  interactive chat: one line per user turn, Ctrl-D ends\n"
            "      --stop STR              stop string (repeatable, at most %d)\n"
            "      --temp T                temperature (default 0.8; 0 = greedy)\n"
            "      --top-k N               (default 40; 0 = off)\n"
            "      --top-p P               (default 0.95; 1 = off)\n"
            "      --min-p P               (default 0.05; 0 = off)\n"
            "      --repeat-penalty P      HF repetition penalty (default 1 = off)\n"
            "      --presence-penalty P    OpenAI presence penalty (default 0)\n"
            "      --frequency-penalty P   OpenAI frequency penalty (default 0)\n"
            "      --seed N                sampling seed (default: random, printed)\n"
            "      --draft off|lookup|auto speculative decoding by prompt lookup; the output is the\n"
            "                              same either way (default auto: only where it gains)\n"
            "      --draft-max N           most tokens drafted per pass (default %d, at most %d)\n"
            "      --draft-ngram N         longest n-gram matched (default %d)\n"
            "engine:\n",
            BN_STOP_MAX, BN_DRAFT_DEFAULT_K, BN_DRAFT_MAX, BN_DRAFT_DEFAULT_NGRAM);
    bn_cli_engine_help(f, RUN_EOPTS, 30);
}

typedef struct run_args {
    const char *model, *prompt;
    long n_predict;
    int chat, seed_set;
    const char *stops[BN_STOP_MAX];
    size_t n_stops;
    bn_sampling sampling;
    bn_cli_engine ce;          /* engine options as parsed */
    bn_engine_opts eo;         /* ... resolved by bn_cli_engine_opts */
    int draft;                 /* enum bn_draft_mode */
    uint32_t draft_max, draft_ngram;
    bn_drafter *drafter;       /* made once, reused by every turn */
} run_args;

/* ---- streaming output: decoder -> stop matcher -> stdout (and the chat transcript) ------- */

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) { (void)sig; interrupted = 1; }

typedef struct stream {
    bn_stream_decoder *sd;
    bn_stop_matcher *sm;
    char *text;          /* everything emitted this turn (the assistant message in chat mode) */
    size_t len, cap;
    int stopped, failed;
} stream;

static void emit(stream *st, const char *s, size_t n)
{
    if (n == 0) return;
    fwrite(s, 1, n, stdout);
    fflush(stdout);
    if (st->len + n + 1 > st->cap) {
        size_t cap = (st->len + n + 1) * 2;
        char *p = realloc(st->text, cap);
        if (!p) {
            st->failed = 1;
            return;
        }
        st->text = p;
        st->cap = cap;
    }
    memcpy(st->text + st->len, s, n);
    st->len += n;
    st->text[st->len] = 0;
}

static int on_token(int32_t id, void *user)
{
    stream *st = user;
    const char *t, *out;
    size_t n, on;
    bn_error err;
    if (interrupted) return BN_GEN_CANCEL;
    if (bn_stream_decoder_feed(st->sd, id, &t, &n, &err)) {
        st->failed = 1;
        return BN_GEN_CANCEL;
    }
    int r = bn_stop_matcher_feed(st->sm, t, n, &out, &on);
    emit(st, out, on);
    if (r == -2) st->failed = 1;
    if (r >= 0) st->stopped = 1;
    return r >= 0 ? BN_GEN_STOP : r == -2 ? BN_GEN_CANCEL : BN_GEN_CONTINUE;
}

static int stream_begin(stream *st, const bn_tokenizer *tk, const run_args *a, bn_error *err)
{
    memset(st, 0, sizeof *st);
    st->sd = bn_stream_decoder_new(tk, BN_DECODE_SKIP_CONTROL);
    st->sm = bn_stop_matcher_new(a->stops, a->n_stops, err);
    if (!st->sd || !st->sm) return bn_err(err, "cannot set up the output stream");
    return 0;
}

/* Releases what the decoder and the matcher held back, unless a stop string ended the turn. */
static void stream_end(stream *st)
{
    const char *t, *out = NULL;
    size_t n, on = 0;
    if (!st->stopped) {
        bn_stream_decoder_flush(st->sd, &t, &n);
        int r = bn_stop_matcher_feed(st->sm, t, n, &out, &on);
        if (r != -2) emit(st, out, on);   /* r >= 0: the text before a stop in the tail */
        if (r == -1) {
            bn_stop_matcher_flush(st->sm, &out, &on);
            emit(st, out, on);
        }
    }
    bn_stream_decoder_free(st->sd);
    bn_stop_matcher_free(st->sm);
    st->sd = NULL;
    st->sm = NULL;
}

/* ---- one generation ------------------------------------------------------------------ */

static void print_timings(const bn_gen_result *r)
{
    static const char *why[] = {"", "stop", "length", "cancelled"};
    fprintf(stderr, "\n\nprefill: %u tokens (%u reused from cache) in %.3f s, %.2f tok/s\n",
            r->n_prompt, r->n_cached, r->prefill_s,
            r->prefill_s > 0 ? (r->n_prompt - r->n_cached) / r->prefill_s : 0.0);
    /* the first token comes from the prefill's logits: the decode loop made the others */
    uint32_t made = r->n_completion > 0 ? r->n_completion - 1 : 0;
    fprintf(stderr, "decode:  %u tokens (%u forward passes) in %.3f s, %.2f tok/s   [finish: %s]\n",
            r->n_completion, r->passes, r->decode_s, r->decode_s > 0 ? made / r->decode_s : 0.0,
            why[r->finish]);
    if (r->proposed > 0)
        fprintf(stderr, "draft:   %.2f tokens per pass, %u of %u drafted tokens accepted (%.1f%%)\n",
                r->passes ? (double)made / r->passes : 0.0, r->accepted, r->proposed,
                r->proposed ? 100.0 * r->accepted / r->proposed : 0.0);
}

static int generate(bn_engine *e, const bn_tokenizer *tk, const run_args *a, const int32_t *ids,
                    size_t n, char **reply, bn_error *err)
{
    stream st;
    if (stream_begin(&st, tk, a, err)) {
        stream_end(&st);
        return -1;
    }
    bn_gen_result res;
    uint32_t max = a->n_predict < 0 ? UINT32_MAX : (uint32_t)a->n_predict;
    interrupted = 0;
    bn_gen_opts o = {.max_tokens = max, .on_token = on_token, .user = &st, .draft = a->draft,
                     .draft_max = a->draft_max, .draft_ngram = a->draft_ngram,
                     .drafter = a->drafter};
    int rc = bn_generate_opts(e, ids, n, &a->sampling, &o, &res, err);
    stream_end(&st);
    if (rc == 0 && st.failed) rc = bn_err(err, "out of memory while streaming the output");
    if (rc == 0) print_timings(&res);
    if (reply) *reply = st.text ? st.text : strdup("");
    else free(st.text);
    return rc;
}

/* ---- modes --------------------------------------------------------------------------- */

static int run_prompt(bn_engine *e, const bn_tokenizer *tk, const run_args *a, bn_error *err)
{
    const bn_model *m = bn_engine_model(e);
    bn_tokens toks = {0};
    int rc = m->cfg.bos >= 0 ? bn_tokens_push(&toks, m->cfg.bos, err) : 0;
    if (rc == 0) rc = bn_tokenize_append(tk, a->prompt, strlen(a->prompt), &toks, err);
    if (rc == 0 && toks.n == 0) rc = bn_err(err, "empty prompt");
    if (rc == 0 && toks.n > bn_engine_n_ctx(e))
        rc = bn_err(err, "the prompt has %zu tokens, more than the context (%u)", toks.n,
                    bn_engine_n_ctx(e));
    if (rc == 0) {
        fputs(a->prompt, stdout);
        rc = generate(e, tk, a, toks.ids, toks.n, NULL, err);
    }
    bn_tokens_free(&toks);
    return rc;
}

/* The conversation is re-rendered every turn; the engine's prefix reuse makes that cost only
 * the new tokens, since the cache still holds the previous turns. */
static int run_chat(bn_engine *e, const bn_tokenizer *tk, const run_args *a, bn_error *err)
{
    const bn_model *m = bn_engine_model(e);
    enum bn_chat_kind kind = bn_chat_kind_of_vocab(m->vocab);
    size_t n_msgs = 0, cap = 16;
    bn_chat_msg *msgs = malloc(cap * sizeof *msgs);
    char *line = NULL;
    size_t line_cap = 0;
    int rc = msgs ? 0 : bn_err(err, "out of memory");
    if (rc == 0 && a->prompt) msgs[n_msgs++] = (bn_chat_msg){"system", strdup(a->prompt)};
    fprintf(stderr, "chat (%s template): type a message, Ctrl-D to end.\n", bn_chat_kind_name(kind));
    while (rc == 0) {
        fprintf(stderr, "\n> ");
        ssize_t got = getline(&line, &line_cap, stdin);
        if (got < 0) break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (got == 0) continue;
        if (n_msgs + 2 > cap) {
            bn_chat_msg *p = realloc(msgs, (cap *= 2) * sizeof *msgs);
            if (!p) { rc = bn_err(err, "out of memory"); break; }
            msgs = p;
        }
        msgs[n_msgs++] = (bn_chat_msg){"user", strdup(line)};
        bn_tokens toks = {0};
        rc = bn_chat_render(tk, kind, msgs, n_msgs, 1, &toks, err);
        char *reply = NULL;
        if (rc == 0) rc = generate(e, tk, a, toks.ids, toks.n, &reply, err);
        bn_tokens_free(&toks);
        if (rc == 0) msgs[n_msgs++] = (bn_chat_msg){"assistant", reply};
        else free(reply);
    }
    for (size_t i = 0; i < n_msgs; i++) free((char *)msgs[i].content);
    free(msgs);
    free(line);
    return rc;
}

/* ---- arguments ----------------------------------------------------------------------- */

enum {
    OPT_CHAT = 256, OPT_STOP, OPT_TEMP, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_REP, OPT_PRES, OPT_FREQ,
    OPT_SEED, OPT_DRAFT, OPT_DRAFT_MAX, OPT_DRAFT_NGRAM,
};

/* Checked option values: a bad one prints "bitnet run: FLAG: why" and parse_args returns 3
 * (exit 2, without the usage text). opt_bad takes a message that names its flag already (the
 * engine options'); the opt_* parsers below name theirs. */
static int opt_bad(const char *msg)
{
    fprintf(stderr, "bitnet run: %s\n", msg);
    return 3;
}
static int opt_fail(const char *flag, const bn_error *e)
{
    fprintf(stderr, "bitnet run: %s: %s\n", flag, e->msg);
    return -1;
}
static int opt_long(const char *flag, long lo, long hi, long *out)
{
    bn_error e;
    return bn_parse_long(optarg, lo, hi, out, &e) ? opt_fail(flag, &e) : 0;
}
static int opt_int(const char *flag, long lo, long hi, int *out)
{
    long v;
    if (opt_long(flag, lo, hi, &v)) return -1;
    *out = (int)v;
    return 0;
}
static int opt_u32(const char *flag, uint32_t lo, uint32_t hi, uint32_t *out)
{
    bn_error e;
    return bn_parse_u32(optarg, lo, hi, out, &e) ? opt_fail(flag, &e) : 0;
}
static int opt_u64(const char *flag, uint64_t *out)
{
    bn_error e;
    return bn_parse_u64(optarg, 0, UINT64_MAX, out, &e) ? opt_fail(flag, &e) : 0;
}
static int opt_float(const char *flag, double lo, double hi, float *out)
{
    bn_error e;
    double v;
    if (bn_parse_double(optarg, lo, hi, &v, &e)) return opt_fail(flag, &e);
    *out = (float)v;
    return 0;
}

static int parse_args(int argc, char **argv, run_args *a)
{
    static const struct option own[] = {
        {"model", required_argument, 0, 'm'},      {"prompt", required_argument, 0, 'p'},
        {"n-predict", required_argument, 0, 'n'},  {"chat", no_argument, 0, OPT_CHAT},
        {"stop", required_argument, 0, OPT_STOP},  {"temp", required_argument, 0, OPT_TEMP},
        {"top-k", required_argument, 0, OPT_TOPK}, {"top-p", required_argument, 0, OPT_TOPP},
        {"min-p", required_argument, 0, OPT_MINP}, {"repeat-penalty", required_argument, 0, OPT_REP},
        {"presence-penalty", required_argument, 0, OPT_PRES},
        {"frequency-penalty", required_argument, 0, OPT_FREQ},
        {"seed", required_argument, 0, OPT_SEED},
        {"draft", required_argument, 0, OPT_DRAFT},
        {"draft-max", required_argument, 0, OPT_DRAFT_MAX},
        {"draft-ngram", required_argument, 0, OPT_DRAFT_NGRAM},
        {"help", no_argument, 0, 'h'},             {0, 0, 0, 0}};
    bn_cli_getopt g;
    bn_cli_getopt_build(&g, own, "m:p:n:h", RUN_EOPTS);
    memset(a, 0, sizeof *a);
    a->n_predict = -1;
    a->draft = BN_DRAFT_AUTO;
    bn_sampling_default(&a->sampling);
    bn_cli_engine_init(&a->ce);
    int c;
    bn_error e;
    optind = 1;
    while ((c = getopt_long(argc, argv, g.shortopts, g.longopts, NULL)) != -1) {
        int r = bn_cli_engine_opt(&a->ce, RUN_EOPTS, c, optarg, &e);
        if (r < 0) return opt_bad(e.msg);
        if (r > 0) continue;
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'p': a->prompt = optarg; break;
        case 'n': if (opt_long("-n/--n-predict", -1, LONG_MAX, &a->n_predict)) return 3; break;
        case OPT_CHAT: a->chat = 1; break;
        case OPT_STOP:
            if (a->n_stops == BN_STOP_MAX || !*optarg) return 2;
            a->stops[a->n_stops++] = optarg;
            break;
        case OPT_TEMP: if (opt_float("--temp", 0, 100, &a->sampling.temperature)) return 3; break;
        case OPT_TOPK: if (opt_int("--top-k", 0, INT32_MAX, &a->sampling.top_k)) return 3; break;
        case OPT_TOPP: if (opt_float("--top-p", 0, 1, &a->sampling.top_p)) return 3; break;
        case OPT_MINP: if (opt_float("--min-p", 0, 1, &a->sampling.min_p)) return 3; break;
        case OPT_REP: if (opt_float("--repeat-penalty", 0, 100, &a->sampling.repeat_penalty)) return 3; break;
        case OPT_PRES: if (opt_float("--presence-penalty", -2, 2, &a->sampling.presence_penalty)) return 3; break;
        case OPT_FREQ: if (opt_float("--frequency-penalty", -2, 2, &a->sampling.frequency_penalty)) return 3; break;
        case OPT_SEED:
            if (opt_u64("--seed", &a->sampling.seed)) return 3;
            a->seed_set = 1;
            break;
        case OPT_DRAFT:
            if ((a->draft = bn_draft_mode_parse(optarg)) < 0) {
                fprintf(stderr, "bitnet run: --draft: '%s' is not off, lookup or auto\n", optarg);
                return 3;
            }
            break;
        case OPT_DRAFT_MAX: if (opt_u32("--draft-max", 1, BN_DRAFT_MAX, &a->draft_max)) return 3; break;
        case OPT_DRAFT_NGRAM: if (opt_u32("--draft-ngram", 1, 64, &a->draft_ngram)) return 3; break;
        case 'h': usage(stdout); return 1;
        default: return 2;
        }
    }
    if (!a->model || optind != argc || (!a->chat && !a->prompt)) return 2;
    if (bn_cli_engine_finish(&a->ce, &e)) return opt_bad(e.msg);
    bn_cli_engine_opts(&a->ce, a->ce.eo.n_threads, &a->eo);
    if (!a->seed_set) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        a->sampling.seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20);
    }
    return 0;
}

int cmd_run(int argc, char **argv)
{
    run_args a;
    int prc = parse_args(argc, argv, &a);
    if (prc) {
        if (prc == 2) usage(stderr);
        return prc == 1 ? 0 : 2;
    }
    bn_error err = {{0}};
    bn_model *m = NULL;
    bn_engine *e = NULL;
    bn_tokenizer *tk = NULL;
    int rc = -1;
    if (bn_cli_open_model(&a.ce, a.model, &m, &err)) goto out;
    bn_engine_mem mem;
    if (bn_engine_plan(m, &a.eo, &mem, &err)) goto out;
    fprintf(stderr, "memory: model %.1f MiB (%s), KV cache %.1f MiB (n_ctx %u, f16), scratch %.1f MiB\n",
            (double)m->map_len / (1 << 20), a.ce.mmap ? "mapped" : "in memory", (double)mem.kv / (1 << 20), mem.n_ctx,
            (double)mem.scratch / (1 << 20));
    if (bn_engine_create(m, &a.eo, &e, &err)) goto out;
    if (!(tk = bn_tokenizer_new(m->vocab, &err))) goto out;
    if (a.draft != BN_DRAFT_OFF && !(a.drafter = bn_drafter_new(e, a.draft_max, &err))) goto out;
    fprintf(stderr, "threads %d, isa %s, lm_head %s, draft %s, seed %llu\n\n", bn_engine_threads(e),
            bn_isa_name(bn_kernels_isa()), bn_head_kind_name(bn_engine_lm_head(e)),
            bn_draft_mode_name(a.draft), (unsigned long long)a.sampling.seed);
    struct sigaction sa = {.sa_handler = on_sigint};
    sigaction(SIGINT, &sa, NULL);
    rc = a.chat ? run_chat(e, tk, &a, &err) : run_prompt(e, tk, &a, &err);
out:
    if (rc) fprintf(stderr, "bitnet run: %s\n", err.msg);
    bn_tokenizer_free(tk);
    bn_drafter_free(a.drafter);
    bn_engine_free(e);
    bn_model_close(m);
    return rc ? 1 : 0;
}
