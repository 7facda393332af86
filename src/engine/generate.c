/* The generate loop of one request: reuse the cached prompt prefix, prefill the rest in chunks
 * of the engine's batch (a callback between chunks may cancel), then sample / call back / decode
 * one token at a time until a stop condition; or, with drafting, verify several per pass.
 * Nothing here allocates: the engine, its sampler and the drafter own every buffer (only a
 * drafting call without a drafter of its own allocates one, once). */
#include <string.h>

#include "engine/draft.h"
#include "engine/engine_internal.h"

static int is_end_of_generation(const bn_config *c, int32_t id)
{
    return (c->eos >= 0 && id == c->eos) || (c->eot >= 0 && id == c->eot);
}

/* Evaluates prompt[kept..n) chunk by chunk (ids already checked, they fit the context); only the
 * last chunk computes logits. Returns 1 if on_prefill cancelled (the chunks done stay cached:
 * they are a valid prefix of the prompt), else 0. */
static int prefill(bn_engine *e, const int32_t *prompt, size_t n, uint32_t kept,
                   const bn_gen_opts *o)
{
    for (size_t i = kept; i < n; i += e->batch) {
        uint32_t m = (uint32_t)(n - i < e->batch ? n - i : e->batch);
        bn_forward_chunk(e, prompt + i, m, NULL, i + m == n);
        if (o->on_prefill && o->on_prefill((uint32_t)(i + m), (uint32_t)n, o->user)) return 1;
    }
    return 0;
}

static int generate_plain(bn_engine *e, const int32_t *prompt, size_t n, const bn_sampling *params,
                          const bn_gen_opts *o, bn_gen_result *res, bn_error *err);

/* ---- drafting ------------------------------------------------------------------------ */

/* Fills d->draft with up to k guesses for the tokens after the cache's ids + pending. */
static uint32_t propose(bn_engine *e, bn_drafter *d, uint32_t ngram, int32_t pending, uint32_t k)
{
    uint32_t n = e->kv.n_past;
    if (d->fn) {
        memcpy(d->hist, e->kv.ids, (size_t)n * sizeof *d->hist);
        d->hist[n] = pending;
        uint32_t got = d->fn(d->hist, (size_t)n + 1, k, d->draft, d->fn_user);
        for (uint32_t i = 0; i < got && i < k; i++)   /* a bad guess is only a wrong one */
            if (d->draft[i] < 0 || (uint32_t)d->draft[i] >= e->cfg.n_vocab) d->draft[i] = 0;
        return got < k ? got : k;
    }
    return bn_draft_lookup(e->kv.ids, n, pending, ngram, k, d->draft);
}

/* The decode loop with drafting. A pass evaluates x0 (the pending token: sampled, emitted,
 * not yet run) and drafts x1..xk at positions P..P+k, with every row's logits. Row i is
 * sampled exactly as plain decoding samples after x_i (same logits bit for bit, same sampler
 * state, one draw); the sample t is emitted, and the pass goes on to row i+1 only while
 * t == x_{i+1}, so a rejected draft never reaches the sampler (nor its penalty counts). The
 * cache then keeps x0..xi (P+i+1 positions): what plain decoding would hold at that point. */
static int decode_drafted(bn_engine *e, const bn_gen_opts *o, bn_drafter *d, bn_gen_result *res,
                          bn_error *err)
{
    uint32_t V = e->cfg.n_vocab, k = 0, ngram = o->draft_ngram ? o->draft_ngram : BN_DRAFT_DEFAULT_NGRAM;
    uint32_t k_max = o->draft_max ? o->draft_max : d->k_max;
    uint32_t P = e->kv.n_past - 1;   /* the prefill acts as a pass of x0 alone */
    float *rows = e->s.logits;
    bn_draft_policy_init(&d->pol, o->draft, k_max, d->beta_set > 0 ? d->beta_set : d->beta,
                         d->beta_set <= 0);
    d->pol.t1 = d->t1;
    for (;;) {
        uint32_t i = 0, kept = 0;
        int done = 0;
        for (;; i++) {
            int32_t t = bn_sampler_sample(e->sampler, rows + (size_t)i * V);
            if (!o->ignore_eos && is_end_of_generation(&e->cfg, t)) {
                res->finish = BN_FINISH_STOP;
                res->stop_id = t;
                done = 1;
                break;
            }
            bn_sampler_accept(e->sampler, t);
            res->n_completion++;
            int r = o->on_token ? o->on_token(t, o->user) : BN_GEN_CONTINUE;
            if (r == BN_GEN_CANCEL || r == BN_GEN_STOP) {
                res->finish = r == BN_GEN_CANCEL ? BN_FINISH_CANCELLED : BN_FINISH_STOP;
                done = 1;
                break;
            }
            if (res->n_completion >= o->max_tokens) {
                done = 1;
                break;
            }
            if (i == k || t != d->toks[i + 1].id) {
                d->toks[0].id = t;   /* the next pass's x0 */
                break;
            }
            kept++;
        }
        bn_engine_truncate(e, P + i + 1);
        if (k > 0) {
            res->accepted += kept;
            bn_draft_policy_update(&d->pol, k, kept);
        }
        if (done || e->kv.n_past >= e->kv.n_ctx) break;

        /* the next pass: drafts that fit the context and could still be emitted */
        int32_t x0 = d->toks[0].id;
        P = e->kv.n_past;
        uint32_t cap = e->kv.n_ctx - P - 1, left = o->max_tokens - res->n_completion - 1;
        cap = cap < left ? cap : left;
        k = bn_draft_policy_len(&d->pol, cap < k_max ? cap : k_max);
        k = k ? propose(e, d, ngram, x0, k) : 0;
        res->passes++;
        res->proposed += k;
        res->n_decoded += k + 1;
        double t0 = bn_eng_now();
        if (k == 0) {   /* a plain step, as the loop without drafting does it */
            if (bn_engine_eval(e, &x0, 1, NULL, err)) return -1;
            rows = e->s.logits;
        } else {
            for (uint32_t j = 0; j <= k; j++)
                d->toks[j] = (bn_batch_tok){j ? d->draft[j - 1] : x0, 0, 1};
            if (bn_engine_eval_batch(e, d->toks, k + 1, d->logits, err)) return -1;
            rows = d->logits;
        }
        bn_draft_policy_timed(&d->pol, k, bn_eng_now() - t0);
    }
    d->beta = d->pol.beta;   /* what this call learned, for the next */
    d->t1 = d->pol.t1;
    return 0;
}

/* Checks the draft options and finds the drafter (*owned: allocated here for this call). */
static int draft_setup(bn_engine *e, const bn_gen_opts *o, bn_drafter **d, bn_drafter **owned,
                       bn_error *err)
{
    *owned = NULL;
    if (o->draft != BN_DRAFT_LOOKUP && o->draft != BN_DRAFT_AUTO)
        return bn_err(err, "unknown draft mode %d", o->draft);
    if (o->draft_ngram > 64) return bn_err(err, "draft n-gram %u: at most 64", o->draft_ngram);
    if (o->drafter && (o->drafter->n_vocab != e->cfg.n_vocab || o->drafter->n_ctx < e->kv.n_ctx))
        return bn_err(err, "the drafter was made for another engine shape");
    *d = o->drafter;
    if (!*d && !(*d = *owned = bn_drafter_new(e, o->draft_max, err))) return -1;
    if (o->draft_max > (*d)->k_max)
        return bn_err(err, "draft length %u: the drafter holds at most %u", o->draft_max,
                      (*d)->k_max);
    return 0;
}

int bn_generate_opts(bn_engine *e, const int32_t *prompt, size_t n, const bn_sampling *params,
                     const bn_gen_opts *o, bn_gen_result *res, bn_error *err)
{
    if (o->draft == BN_DRAFT_OFF) return generate_plain(e, prompt, n, params, o, res, err);
    bn_drafter *d = NULL, *owned = NULL;
    memset(res, 0, sizeof *res);
    res->stop_id = -1;
    int rc = draft_setup(e, o, &d, &owned, err);
    if (rc == 0) {
        bn_gen_opts plain = *o;
        plain.max_tokens = 0;   /* the prompt part only: checks, prefix reuse, prefill */
        rc = generate_plain(e, prompt, n, params, &plain, res, err);
    }
    if (rc == 0 && res->finish != BN_FINISH_CANCELLED && o->max_tokens > 0) {
        double t0 = bn_eng_now();
        res->finish = BN_FINISH_LENGTH;
        rc = decode_drafted(e, o, d, res, err);
        res->decode_s = bn_eng_now() - t0;
    }
    bn_drafter_free(owned);
    return rc;
}

/* ---- the plain loop ------------------------------------------------------------------ */

static int generate_plain(bn_engine *e, const int32_t *prompt, size_t n, const bn_sampling *params,
                          const bn_gen_opts *o, bn_gen_result *res, bn_error *err)
{
    memset(res, 0, sizeof *res);
    res->stop_id = -1;
    res->n_prompt = (uint32_t)n;
    if (n == 0) return bn_err(err, "empty prompt");
    if (n > e->kv.n_ctx)
        return bn_err(err, "the prompt has %zu tokens, more than the context (%u)", n, e->kv.n_ctx);
    /* Checked up front so that a bad id fails before anything is evaluated. */
    for (size_t i = 0; i < n; i++)
        if (prompt[i] < 0 || (uint32_t)prompt[i] >= e->cfg.n_vocab)
            return bn_err(err, "prompt token %zu: id %d out of range (n_vocab %u)", i, prompt[i],
                          e->cfg.n_vocab);

    /* The screened head is exact for greedy at margin 0; sampling needs the rows that can carry
     * probability rescored too (bn_lm_margin), and untruncated sampling an int8-accurate tail. */
    bn_engine_set_lm_sampling(e, 0, params);
    double t0 = bn_eng_now();
    uint32_t kept = bn_engine_keep_prefix(e, prompt, n);
    res->n_cached = kept;
    int cancelled = prefill(e, prompt, n, kept, o);
    res->prefill_s = bn_eng_now() - t0;
    if (cancelled) {
        res->finish = BN_FINISH_CANCELLED;
        return 0;
    }

    bn_sampler_start(e->sampler, params, prompt, n);
    t0 = bn_eng_now();
    res->finish = BN_FINISH_LENGTH;
    while (res->n_completion < o->max_tokens) {
        int32_t id = bn_sampler_sample(e->sampler, e->s.logits);
        if (!o->ignore_eos && is_end_of_generation(&e->cfg, id)) {
            res->finish = BN_FINISH_STOP;
            res->stop_id = id;
            break;
        }
        bn_sampler_accept(e->sampler, id);
        res->n_completion++;
        int r = o->on_token ? o->on_token(id, o->user) : BN_GEN_CONTINUE;
        if (r == BN_GEN_CANCEL || r == BN_GEN_STOP) {
            res->finish = r == BN_GEN_CANCEL ? BN_FINISH_CANCELLED : BN_FINISH_STOP;
            break;
        }
        /* The token just sampled is only run through the model if another one is wanted. */
        if (res->n_completion >= o->max_tokens || e->kv.n_past >= e->kv.n_ctx) break;
        if (bn_engine_eval(e, &id, 1, NULL, err)) return -1;
        res->n_decoded++;
        res->passes++;
    }
    res->decode_s = bn_eng_now() - t0;
    return 0;
}

int bn_generate(bn_engine *e, const int32_t *prompt, size_t n, const bn_sampling *params,
                uint32_t max_tokens, bn_token_cb cb, void *user, bn_gen_result *res,
                bn_error *err)
{
    bn_gen_opts o = {.max_tokens = max_tokens, .on_token = cb, .user = user};
    return bn_generate_opts(e, prompt, n, params, &o, res, err);
}
