/* The generate loop of one request: reuse the cached prompt prefix, prefill the rest in chunks
 * of the engine's batch (a callback between chunks may cancel), then sample / call back / decode
 * one token at a time until a stop condition.
 * Nothing here allocates: the engine and its sampler own every buffer. */
#include <string.h>

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

int bn_generate_opts(bn_engine *e, const int32_t *prompt, size_t n, const bn_sampling *params,
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
