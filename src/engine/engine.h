/* The engine: one model, one KV cache, one single-user decode stream (a worker process runs
 * exactly one). Everything the token loop touches is allocated in bn_engine_create(), sized
 * from the model config and n_ctx: nothing is allocated per token.
 *
 * Layering: the engine reads weights in place from a bn_model (which must outlive it), calls
 * only kernels.h for compute, and knows nothing of text, HTTP or processes. Token ids in,
 * logits / sampled ids out.
 *
 * Threads: the engine uses one OpenMP team of opts.n_threads threads for every kernel call.
 * An engine is not itself thread-safe: one caller thread at a time. libgomp's thread pool does
 * not survive fork(): a process that has run any OpenMP region (an engine, the packer) must not
 * fork children that use OpenMP; the server forks its workers before any engine exists. */
#ifndef BN_ENGINE_H
#define BN_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "model/model.h"

/* ---- creation and memory ------------------------------------------------------------- */

enum bn_lm_head_kind {
    BN_LM_HEAD_AUTO = 0,  /* the screened head if the file has its bounds, else int8, else f16 */
    BN_LM_HEAD_F16 = 1,   /* the f16 head rows (tied embedding or "output"): exact, the reference */
    BN_LM_HEAD_I8 = 2,    /* int8 per-row copy: half the bytes per token, lossy; fails if absent */
    BN_LM_HEAD_SCREEN = 3,/* exact two-stage head: every row screened with the int8 copy, then the
                           * rows that a per-row error bound cannot rule out rescored with the f16
                           * rows (bn_gemv_f16, bit-identical to the f16 head). The argmax always
                           * equals the f16 head's (ties -> lowest id); rows within the sequence's
                           * margin (bn_engine_set_lm_margin) of the top are exact too, the others
                           * hold their screen logits. Needs output_q8.err/.norm (format 1.1).
                           * With the bit planes (format 1.3) a one-token pass reads the int8
                           * copy 2 bits at a time, most significant first, and stops reading a
                           * row once a bound rules it out (lm_head.c); rows ruled out then hold
                           * a coarser screen logit, so this applies only to sequences that do
                           * not need an int8-accurate tail (bn_engine_set_lm_tail) */
    BN_LM_HEAD_SCREEN_I8 = 4, /* the screen reading output_q8 whole, even with planes (format
                           * 1.1's screen; for comparisons) */
};

typedef struct bn_engine_opts {
    uint32_t n_ctx;          /* KV cache positions; 0 = the model's n_ctx_max (clamped to it) */
    int n_threads;           /* 0 = CPUs in this process's affinity mask; clamped to that count */
    int pin;                 /* bind OpenMP thread i to the i-th CPU of the affinity mask */
    int lm_head;             /* enum bn_lm_head_kind */
    uint32_t batch;          /* prefill chunk: tokens per GEMM pass; 0 = 64 */
    const int *cpus;         /* explicit CPU set (OS indexes, e.g. the server's placement plan):
                              * n_threads = n_cpus and thread i is pinned to cpus[i]. NULL = the
                              * defaults above (threads from the affinity mask, pin optional) */
    int n_cpus;
    uint32_t n_seq;          /* independent sequences (bn_engine_eval_batch), each with its own
                              * n_ctx-position KV region; 0 or 1 = one (sequence 0, the
                              * single-sequence API below); at most BN_MAX_SEQ */
} bn_engine_opts;

#define BN_MAX_SEQ 64

void bn_engine_opts_default(bn_engine_opts *o);

/* Bytes the engine allocates, known before allocating (model weights are mapped, not counted). */
typedef struct bn_engine_mem {
    size_t kv;        /* f16 K and V for every layer, n_ctx positions, for each of n_seq */
    size_t scratch;   /* activations for one prefill chunk, attention scores, logits, sampler */
    size_t total;     /* kv + scratch */
    uint32_t n_ctx, batch;   /* as resolved from the options */
    int n_threads;
    uint32_t n_seq;          /* sequences (>= 1); kv = n_seq * kv_per_seq */
    size_t kv_per_seq;       /* one sequence's region: n_ctx positions, reserved up front */
} bn_engine_mem;

/* The memory plan for model m under opts, without allocating (for up-front reporting). */
int bn_engine_plan(const bn_model *m, const bn_engine_opts *opts, bn_engine_mem *mem,
                   bn_error *err);

typedef struct bn_engine bn_engine;

/* Creates an engine over m (borrowed: m must outlive the engine). opts may be NULL. */
int bn_engine_create(const bn_model *m, const bn_engine_opts *opts, bn_engine **out,
                     bn_error *err);
void bn_engine_free(bn_engine *e);

const bn_model *bn_engine_model(const bn_engine *e);
void bn_engine_memory(const bn_engine *e, bn_engine_mem *mem);
int bn_engine_threads(const bn_engine *e);
uint32_t bn_engine_n_ctx(const bn_engine *e);
enum bn_lm_head_kind bn_engine_lm_head(const bn_engine *e);   /* F16 or I8: what is used */
/* Switches the lm_head for later passes (comparisons); fails if the file lacks that kind. */
int bn_engine_set_lm_head(bn_engine *e, enum bn_lm_head_kind kind, bn_error *err);
/* The screened head's margin for sequence seq (logit units, default 0): every row whose upper
 * bound is within margin of the best exact logit is rescored exactly. 0 is exact for greedy
 * decoding; a sampler needs bn_lm_margin(): rows left out then carry a total probability below
 * 2^-24 of the top token's. INFINITY makes every row exact (the full f16 head). */
void bn_engine_set_lm_margin(bn_engine *e, uint32_t seq, float margin);
/* The margin sampling with s uses (bn_generate and the server set it per request): 0 for
 * greedy (the argmax is f16's); T ln(1/min_p) with min_p (every row min_p keeps is exact, so the
 * kept distribution is f16's); 0 for untruncated sampling (rows near the top exact, the tail
 * int8-accurate: an exact tail costs the f16 head); INFINITY with penalties (they can lower the
 * top rows by any amount). bn_lm_margin_exact: always f16's distribution to within 2^-24 of the
 * top token's probability, at up to the f16 head's cost. */
struct bn_sampling;
float bn_lm_margin(const struct bn_sampling *s, uint32_t n_vocab);
/* Whether the rows beyond the margin still matter: sampling that can draw them (temperature > 0,
 * no min_p, no penalties) needs their int8-accurate logits, so the screen then reads every row's
 * whole int8 code; greedy and min_p never draw them. 1 (the default of every sequence) keeps the
 * tail int8-accurate; 0 lets the bit-plane screen stop early. */
int bn_lm_tail(const struct bn_sampling *s);
void bn_engine_set_lm_tail(bn_engine *e, uint32_t seq, int int8_tail);
/* Both settings from the sampling parameters: what bn_generate and the server call per request. */
void bn_engine_set_lm_sampling(bn_engine *e, uint32_t seq, const struct bn_sampling *s);
float bn_lm_margin_exact(const struct bn_sampling *s, uint32_t n_vocab);
/* Screened-head counters since creation or the last reset: tokens, rows rescored in total
 * and at most for one token (the whole vocabulary when a token fell back to the f16 head). */
typedef struct bn_lm_stats {
    uint64_t tokens, rescored;
    uint32_t rescored_max;
    /* bit-plane screen: tokens that used it, and rows whose plane j was read, summed over them
     * (live[0] = n_vocab per token; the bytes read are cols_padded / 4 per row and plane) */
    uint64_t plane_tokens, live[4];
} bn_lm_stats;
void bn_engine_lm_stats(bn_engine *e, bn_lm_stats *out, int reset);

/* ---- KV cache and positions ---------------------------------------------------------- */

/* Tokens whose K/V are in the cache (the next token goes at this position). */
uint32_t bn_engine_n_past(const bn_engine *e);
/* The ids of the cached positions (n_past of them). */
const int32_t *bn_engine_cached_ids(const bn_engine *e);
/* Forgets every cached position. */
void bn_engine_reset(bn_engine *e);
/* Forgets the positions from n_past on (no-op if n_past >= the current count). */
void bn_engine_truncate(bn_engine *e, uint32_t n_past);
/* Keeps the longest common prefix of the cache and ids[0..n), but never all n tokens (the last
 * one must be run again to produce logits). Returns the number of positions kept: the caller
 * then evaluates ids[kept..n). */
uint32_t bn_engine_keep_prefix(bn_engine *e, const int32_t *ids, size_t n);

/* ---- the forward pass ---------------------------------------------------------------- */

/* Runs ids[0..n) at positions n_past.. (batched GEMM prefill in chunks of opts.batch) and
 * appends them to the cache. Logits: if all_logits is non-NULL it receives n rows of n_vocab
 * (row i for ids[i]); otherwise only the last token's logits are computed, readable through
 * bn_engine_logits(). Fails (nothing evaluated) if the tokens do not fit in the context or an
 * id is out of range. */
int bn_engine_eval(bn_engine *e, const int32_t *ids, size_t n, float *all_logits, bn_error *err);
/* Logits of the last token evaluated without all_logits (n_vocab floats, engine-owned). */
float *bn_engine_logits(bn_engine *e);

/* ---- several sequences in one pass (continuous batching) ----------------------------- */

/* One token of a batch: it goes at the next position of sequence seq (that sequence's n_past,
 * plus the earlier tokens of seq in the same batch). */
typedef struct bn_batch_tok {
    int32_t id;
    uint32_t seq;             /* 0 .. n_seq-1 */
    int want_logits;          /* non-zero: this token's logits are returned */
} bn_batch_tok;

/* Runs toks[0..n) in one forward pass (chunks of opts.batch tokens): every ternary weight is
 * read once per chunk for all the sequences in it. Tokens of one sequence must appear in order;
 * any mix is allowed (decode tokens of some sequences with prefill runs of others). logits_out
 * receives one row of n_vocab for each token flagged want_logits, in batch order (may be NULL
 * if none is). Each sequence's results are bit-identical to evaluating it alone with
 * bn_engine_eval (every op is per token). Fails, evaluating nothing, on a bad seq or id, or if
 * a sequence's tokens do not fit its context. Sequence 0 is the single-sequence API's cache. */
int bn_engine_eval_batch(bn_engine *e, const bn_batch_tok *toks, size_t n, float *logits_out,
                         bn_error *err);

uint32_t bn_engine_n_seq(const bn_engine *e);
/* Per-sequence versions of the KV accessors above (seq 0 is the same cache as theirs). An
 * out-of-range seq reads as empty and is ignored by the setters. A sequence leaves with
 * bn_engine_seq_reset(); the next one to use that index reuses its region from position 0. */
uint32_t bn_engine_seq_n_past(const bn_engine *e, uint32_t seq);
const int32_t *bn_engine_seq_cached_ids(const bn_engine *e, uint32_t seq);
void bn_engine_seq_reset(bn_engine *e, uint32_t seq);
void bn_engine_seq_truncate(bn_engine *e, uint32_t seq, uint32_t n_past);
uint32_t bn_engine_seq_keep_prefix(bn_engine *e, uint32_t seq, const int32_t *ids, size_t n);

/* A sequence's K/V as bytes, for the server's prompt cache: saved when a request ends, loaded
 * into a free sequence when a later prompt starts with the same tokens (a copy is ~1000x
 * cheaper than recomputing the prefix). The bytes are only meaningful to an engine of the same
 * model and shape, in the same process. */
/* Bytes that n positions of one sequence take (every layer's f16 K and V). */
size_t bn_engine_seq_state_bytes(const bn_engine *e, uint32_t n);
/* Copies positions [0, n) of seq (n <= its n_past) into buf (bn_engine_seq_state_bytes(e, n)). */
int bn_engine_seq_save(const bn_engine *e, uint32_t seq, uint32_t n, void *buf, bn_error *err);
/* Makes seq hold the first n positions of a state saved with n_buf positions (n <= n_buf <=
 * the context), whose tokens were ids[0..n): afterwards its n_past is n, as if ids had been
 * evaluated. */
int bn_engine_seq_load(bn_engine *e, uint32_t seq, const int32_t *ids, uint32_t n, const void *buf,
                       uint32_t n_buf, bn_error *err);

/* ---- instrumentation (off by default; tests and bench) ------------------------------- */

/* Called after every layer for every token of a pass: h is the residual stream (n_embd). */
typedef void (*bn_layer_hook)(uint32_t layer, uint32_t pos, const float *h, size_t n, void *user);
void bn_engine_set_layer_hook(bn_engine *e, bn_layer_hook fn, void *user);

/* Where the time of a forward pass goes (seconds, accumulated while profiling is on). */
enum bn_prof_part {
    BN_PROF_QKV, BN_PROF_O, BN_PROF_GATE_UP, BN_PROF_DOWN,   /* ternary GEMV/GEMM */
    BN_PROF_ATTN,                                          /* rope + KV store + attention */
    BN_PROF_LM_HEAD,                                       /* final norm + lm_head */
    BN_PROF_OTHER,                                         /* embedding, norms, quant, residuals */
    BN_PROF_COUNT
};
void bn_engine_profile(bn_engine *e, int on);      /* on also clears the accumulators */
const double *bn_engine_profile_get(const bn_engine *e);   /* BN_PROF_COUNT entries */
const char *bn_prof_part_name(enum bn_prof_part p);

/* Bytes of weights read per decoded token: every ternary tensor, the lm_head in use, the norms
 * and one embedding row (the denominator of the roofline). */
uint64_t bn_engine_weight_bytes_per_token(const bn_engine *e);

/* ---- sampling ------------------------------------------------------------------------ */

typedef struct bn_sampling {
    float temperature;        /* 0 = greedy (argmax, ties -> lowest id) */
    int32_t top_k;            /* 0 = off */
    float top_p;              /* 1 = off */
    float min_p;              /* 0 = off */
    float repeat_penalty;     /* HF: over prompt + generated ids, logit>0 ? l/p : l*p; 1 = off */
    float presence_penalty;   /* OpenAI: l -= presence*(count>0) over generated ids; 0 = off */
    float frequency_penalty;  /* OpenAI: l -= frequency*count over generated ids; 0 = off */
    uint64_t seed;
} bn_sampling;

/* Greedy: temperature 0, every filter and penalty off. */
void bn_sampling_greedy(bn_sampling *s);
/* llama.cpp's CLI defaults: temp 0.8, top_k 40, top_p 0.95, min_p 0.05, no penalties. */
void bn_sampling_default(bn_sampling *s);

/* A sampler owns every buffer it needs (n_vocab-sized), so sampling never allocates. */
typedef struct bn_sampler bn_sampler;

bn_sampler *bn_sampler_new(uint32_t n_vocab, bn_error *err);
void bn_sampler_free(bn_sampler *s);
/* Starts a request: parameters, seed, and the prompt (counts for the repetition penalty). */
void bn_sampler_start(bn_sampler *s, const bn_sampling *p, const int32_t *prompt, size_t n);
/* Picks the next id from logits (modified in place by penalties and temperature). */
int32_t bn_sampler_sample(bn_sampler *s, float *logits);
/* Records a generated id (for the penalties). */
void bn_sampler_accept(bn_sampler *s, int32_t id);
size_t bn_sampler_bytes(uint32_t n_vocab);

/* ---- the generate loop --------------------------------------------------------------- */

enum bn_finish {
    BN_FINISH_STOP = 1,       /* EOS/EOT, or the callback asked to stop (stop string) */
    BN_FINISH_LENGTH = 2,     /* max_tokens reached, or the context is full */
    BN_FINISH_CANCELLED = 3,  /* the callback returned BN_GEN_CANCEL */
};

/* Return values of the per-token callback. */
enum {
    BN_GEN_CONTINUE = 0,
    BN_GEN_STOP = 1,          /* a stop string matched: finish "stop" */
    BN_GEN_CANCEL = 2,        /* the client went away: finish "cancelled" */
};

/* Called once per generated token (never for the EOS/EOT that ends generation). */
typedef int (*bn_token_cb)(int32_t id, void *user);

typedef struct bn_gen_result {
    uint32_t n_prompt;        /* prompt tokens */
    uint32_t n_cached;        /* of which reused from the cache (not recomputed) */
    uint32_t n_completion;    /* tokens generated (passed to the callback) */
    uint32_t n_decoded;       /* tokens run through the model by the decode loop */
    enum bn_finish finish;
    int32_t stop_id;          /* the EOS/EOT id that stopped generation, or -1 */
    double prefill_s;         /* wall time of the prompt's evaluation */
    double decode_s;          /* wall time of the decode loop (n_decoded evaluations) */
    /* Drafting (bn_gen_opts.draft): the decode loop's forward passes, the drafted tokens they
     * verified and how many of those were kept. Without drafting passes == n_decoded and the
     * other two are 0; with it n_decoded = passes + proposed (rejected drafts included), and
     * the tokens per pass are (passes + accepted) / passes. */
    uint32_t passes;
    uint32_t proposed;
    uint32_t accepted;
} bn_gen_result;

/* Generates up to max_tokens tokens after prompt[0..n) (n >= 1), reusing the longest cached
 * prefix of the prompt. Stops on the config's eos/eot ids, max_tokens, a full context, or the
 * callback. The cache afterwards holds prompt + every generated token but the last, so the
 * next turn of a conversation reuses it. Uses the engine's own sampler (allocated with it). */
int bn_generate(bn_engine *e, const int32_t *prompt, size_t n, const bn_sampling *params,
                uint32_t max_tokens, bn_token_cb cb, void *user, bn_gen_result *res,
                bn_error *err);

/* Called between prefill chunks (every opts.batch tokens) with the prompt tokens evaluated so
 * far (cached ones included) and the prompt length; non-zero cancels (finish CANCELLED). */
typedef int (*bn_prefill_cb)(uint32_t done, uint32_t total, void *user);

/* Speculative decoding by prompt lookup (src/engine/draft.h): the next tokens are guessed by
 * matching the last n-gram against the prompt and the text so far, and one batched pass
 * verifies them all. Exact: every position's logits are bit-identical to plain decoding's and
 * each is sampled exactly as plain decoding would (one draw from the same seeded stream), a
 * draft token being kept only if it IS that sample; so the output, greedy or sampled, is
 * token for token the output without drafting (the standard rejection rule for a one-hot
 * draft, coupled to the sampler's draw). Only the speed changes. */
enum bn_draft_mode {
    BN_DRAFT_OFF = 0,         /* one token per pass (the default) */
    BN_DRAFT_LOOKUP = 1,      /* draft draft_max tokens whenever the n-gram matches */
    BN_DRAFT_AUTO = 2,        /* draft only as many as the acceptance rate pays for; back off
                               * (with rare probes) while it is too low to gain */
};

typedef struct bn_drafter bn_drafter;   /* draft.h: drafting buffers and policy state */

typedef struct bn_gen_opts {
    uint32_t max_tokens;
    int ignore_eos;           /* do not stop at eos/eot (benchmarks: exactly max_tokens tokens) */
    bn_token_cb on_token;     /* may be NULL */
    bn_prefill_cb on_prefill; /* may be NULL */
    void *user;               /* passed to both callbacks */
    int draft;                /* enum bn_draft_mode; 0 (off) keeps the one-token loop */
    uint32_t draft_ngram;     /* longest n-gram matched, tried down to 2; 0 = 3 */
    uint32_t draft_max;       /* most tokens drafted per pass; 0 = the drafter's maximum */
    bn_drafter *drafter;      /* buffers (bn_drafter_new, reusable across calls, so that drafting
                               * does not allocate); NULL = one is allocated for the call */
} bn_gen_opts;

/* bn_generate with every option: cancellable prefill, ignore_eos, drafting. bn_generate() is
 * this with only max_tokens and on_token set. Fails on a bad draft option (unknown mode,
 * draft_max above the drafter's, a drafter made for another shape). */
int bn_generate_opts(bn_engine *e, const int32_t *prompt, size_t n, const bn_sampling *params,
                     const bn_gen_opts *o, bn_gen_result *res, bn_error *err);

/* ---- perplexity (llama.cpp's method) ------------------------------------------------- */

typedef struct bn_ppl_result {
    double ppl;          /* exp(mean negative log-likelihood) */
    double ppl_err;      /* llama.cpp's +/- estimate: ppl * stderr of the mean nll */
    double nll_sum, nll2_sum;
    uint64_t n_scored;   /* tokens scored */
    uint32_t n_chunks, ctx;
    double seconds;
} bn_ppl_result;

/* Called after each window with the running perplexity. */
typedef void (*bn_ppl_cb)(uint32_t chunk, uint32_t n_chunks, double running_ppl, void *user);

/* Perplexity of ids[0..n) (tokenized with BOS by the caller) as llama.cpp computes it:
 * non-overlapping windows of ctx tokens (ctx 0 = min(512, n_ctx); clamped to the engine's
 * n_ctx), each window's first token replaced by bos, each evaluated from an empty cache, and
 * only the second half of each window scored (the logits at position j predict token j+1, for
 * j in [ctx/2, ctx-1)). Needs at least one whole window (n >= ctx). Clears the cache. */
int bn_perplexity(bn_engine *e, const int32_t *ids, size_t n, uint32_t ctx, int32_t bos,
                  bn_ppl_cb cb, void *user, bn_ppl_result *res, bn_error *err);

#endif
