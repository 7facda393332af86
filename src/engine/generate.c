/* The generate loop of one request: reuse the cached prompt prefix, prefill the rest in one
 * batched pass, then sample / call back / decode one token at a time until a stop condition.
 * Nothing here allocates: the engine and its sampler own every buffer. */
#include <string.h>

#include "engine/engine_internal.h"

static int is_end_of_generation(const bn_config *c, int32_t id)
{
    return (c->eos >= 0 && id == c->eos) || (c->eot >= 0 && id == c->eot);
}

int bn_generate(bn_engine *e, const int32_t *prompt, size_t n, const bn_sampling *params,
                uint32_t max_tokens, bn_token_cb cb, void *user, bn_gen_result *res,
                bn_error *err)
{
    memset(res, 0, sizeof *res);
    res->stop_id = -1;
    res->n_prompt = (uint32_t)n;
    if (n == 0) return bn_err(err, "empty prompt");
    if (n > e->kv.n_ctx)
        return bn_err(err, "the prompt has %zu tokens, more than the context (%u)", n, e->kv.n_ctx);

    double t0 = bn_eng_now();
    uint32_t kept = bn_engine_keep_prefix(e, prompt, n);
    res->n_cached = kept;
    if (bn_engine_eval(e, prompt + kept, n - kept, NULL, err)) return -1;
    res->prefill_s = bn_eng_now() - t0;

    bn_sampler_start(e->sampler, params, prompt, n);
    t0 = bn_eng_now();
    res->finish = BN_FINISH_LENGTH;
    while (res->n_completion < max_tokens) {
        int32_t id = bn_sampler_sample(e->sampler, e->s.logits);
        if (is_end_of_generation(&e->cfg, id)) {
            res->finish = BN_FINISH_STOP;
            res->stop_id = id;
            break;
        }
        bn_sampler_accept(e->sampler, id);
        res->n_completion++;
        int r = cb ? cb(id, user) : BN_GEN_CONTINUE;
        if (r == BN_GEN_CANCEL || r == BN_GEN_STOP) {
            res->finish = r == BN_GEN_CANCEL ? BN_FINISH_CANCELLED : BN_FINISH_STOP;
            break;
        }
        /* The token just sampled is only run through the model if another one is wanted. */
        if (res->n_completion >= max_tokens || e->kv.n_past >= e->kv.n_ctx) break;
        if (bn_engine_eval(e, &id, 1, NULL, err)) return -1;
        res->n_decoded++;
    }
    res->decode_s = bn_eng_now() - t0;
    return 0;
}
