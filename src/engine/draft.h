/* Prompt-lookup drafting for bn_generate_opts (engine.h's bn_draft_mode): the proposer, the
 * back-off policy, and the buffers of one verify pass.
 *
 * Lookup: the last n tokens of prompt + generated text are searched for, latest occurrence
 * first, for n = ngram down to 2; what followed that occurrence is the draft (continued
 * periodically past the end of the text, so a loop of period p drafts itself).
 *
 * Policy (BN_DRAFT_AUTO): a verify pass of k drafts costs c(k) = 1 + beta*k decode steps;
 * beta is learned from the timings of the passes themselves (it is ~1 for a model that fits
 * in cache, ~0.1 for a memory-bound one: see `bitnet bench --draft`), starting from
 * BN_DRAFT_DEFAULT_BETA, or fixed by bn_drafter_set_beta(). With a per-token acceptance rate a it
 * yields E(k) = 1 + a + ... + a^k tokens. The policy drafts the k that maximizes E(k)/c(k),
 * estimating a from the recent passes, and none while the best ratio is under 1 + margin;
 * then it probes with 2 drafts after 16 plain steps, doubling the wait up to 256 on every
 * failed probe, so a text that never matches costs nothing and one that matches but never
 * agrees costs at most 2*beta/256 of a step per token. */
#ifndef BN_DRAFT_H
#define BN_DRAFT_H

#include "engine/engine.h"

#define BN_DRAFT_MAX 16        /* the most tokens a drafter may verify per pass */
#define BN_DRAFT_DEFAULT_K 8   /* bn_drafter_new's max_draft 0 */
#define BN_DRAFT_DEFAULT_NGRAM 3

/* The sequence hist[0..n) followed by `next` is searched for its last ngram tokens (then one
 * fewer, down to 2; ngram 1 means exactly 1); up to k tokens that followed the latest earlier
 * occurrence go to out. Returns how many were written (0: no match, or k == 0). */
uint32_t bn_draft_lookup(const int32_t *hist, size_t n, int32_t next, uint32_t ngram, uint32_t k,
                         int32_t *out);

/* "off", "lookup", "auto" -> enum bn_draft_mode, else -1; and back. */
int bn_draft_mode_parse(const char *s);
const char *bn_draft_mode_name(int mode);

/* ---- the policy (pure state, no engine: tested on its own) --------------------------- */

typedef struct bn_draft_policy {
    int mode;              /* enum bn_draft_mode */
    uint32_t k_max;
    double beta;           /* marginal cost of one drafted token, in decode steps */
    double acc, rej;       /* decayed counts: draft tokens kept; passes ended by a rejection */
    uint32_t wait;         /* (auto, backed off) plain steps until the next probe */
    uint32_t backoff;      /* the current probe interval */
    int probing;           /* backed off: the next verified pass is a probe */
    int learn;             /* beta follows the measured pass times */
    double t1;             /* seconds of a one-token pass (moving average; 0 = not yet seen) */
} bn_draft_policy;

#define BN_DRAFT_DEFAULT_BETA 0.15

/* beta <= 0: BN_DRAFT_DEFAULT_BETA; learn: refine it from bn_draft_policy_timed(). */
void bn_draft_policy_init(bn_draft_policy *p, int mode, uint32_t k_max, double beta, int learn);
/* How many tokens to draft for the next pass, at most cap (what fits the context and the
 * remaining max_tokens). Called once per step; 0 = a plain decode step. */
uint32_t bn_draft_policy_len(bn_draft_policy *p, uint32_t cap);
/* After a pass that verified k > 0 drafts and kept `kept` of them. */
void bn_draft_policy_update(bn_draft_policy *p, uint32_t k, uint32_t kept);
/* The wall time of a pass that verified k drafts (k = 0: a plain step): updates t1, and beta
 * from (seconds / t1 - 1) / k when learning. */
void bn_draft_policy_timed(bn_draft_policy *p, uint32_t k, double seconds);
/* The current estimate of the per-token acceptance rate. */
double bn_draft_policy_rate(const bn_draft_policy *p);

/* ---- the drafter --------------------------------------------------------------------- */

/* A proposer other than the lookup (benchmarks, tests): writes up to k guesses for the tokens
 * after hist[0..n) (prompt + generated, the last one not yet evaluated) and returns how many. */
typedef uint32_t (*bn_draft_fn)(const int32_t *hist, size_t n, uint32_t k, int32_t *out,
                                void *user);

/* Buffers for verify passes of up to max_draft (0 = BN_DRAFT_DEFAULT_K, at most BN_DRAFT_MAX)
 * drafts on engine e's shape: (max_draft + 1) rows of logits, the history (n_ctx ids). */
bn_drafter *bn_drafter_new(const bn_engine *e, uint32_t max_draft, bn_error *err);
void bn_drafter_free(bn_drafter *d);
uint32_t bn_drafter_max(const bn_drafter *d);
/* Replaces the lookup by fn (NULL restores it). */
void bn_drafter_set_proposer(bn_drafter *d, bn_draft_fn fn, void *user);
/* Fixes the policy's beta (> 0), or lets it be learned (<= 0, the default); what was learned
 * is kept across calls with this drafter. */
void bn_drafter_set_beta(bn_drafter *d, double beta);

/* Internal to src/engine (draft.c allocates, generate.c's drafted loop uses): no caller
 * outside touches these fields. */
struct bn_drafter {
    uint32_t n_vocab, n_ctx, k_max;
    float *logits;          /* [k_max + 1][n_vocab] one verify pass's rows */
    bn_batch_tok *toks;     /* [k_max + 1] the pass: the pending token, then the drafts */
    int32_t *hist;          /* [n_ctx + 1] prompt + generated, the pending token last */
    int32_t *draft;         /* [k_max] */
    bn_draft_fn fn;         /* NULL = bn_draft_lookup */
    void *fn_user;
    double beta_set;        /* > 0: fixed by bn_drafter_set_beta */
    double beta, t1;        /* learned by earlier calls (0: none yet) */
    bn_draft_policy pol;    /* reset by every bn_generate_opts call */
};

#endif
