/* The output layer (forward.c calls it after the last block): final RMSNorm, then the lm_head
 * over the whole vocabulary, for one token or for the tokens of a batched pass. */
#include <omp.h>

#include "engine/engine_internal.h"
#include "base/checked.h"

/* logits = lm_head . output_norm(h): the tied f16 embedding (exact f32 dot products), or the
 * int8 per-row copy against h quantized per token like every other activation. */
void bn_lm_head_one(bn_engine *e, const float *h, float *logits)
{
    const bn_model *m = e->model;
    size_t dim = e->cfg.n_embd, vocab = e->cfg.n_vocab;
    float *xn = e->s.xb;   /* free at this point: the layers are done */
    bn_rmsnorm(xn, h, m->output_norm, dim, e->cfg.norm_eps);
    float xs = 0.0f;
    if (e->lm_head == BN_LM_HEAD_I8) xs = bn_quant_act(xn, dim, m->lm_head_cols_padded, e->s.lm_q);
#pragma omp parallel num_threads(e->n_threads)
    {
        size_t r0, r1;
        bn_thread_rows(vocab, 16, omp_get_num_threads(), omp_get_thread_num(), &r0, &r1);
        if (r0 < r1) {
            if (e->lm_head == BN_LM_HEAD_I8)
                bn_gemv_i8row(m->lm_head_i8, m->lm_head_i8_scale, dim, m->lm_head_cols_padded,
                              e->s.lm_q, xs, logits, r0, r1);
            else
                bn_gemv_f16(m->tok_embd, dim, xn, logits, r0, r1);
        }
    }
}

/* The lm_head of m tokens at once (their final hidden states rows[0..m) of s.x): each block
 * of LM_BLOCK rows is read from memory once and reused from cache for every token. Per row the
 * kernel and its inputs are those of lm_head(), so each token's logits are bit-identical. */
#define LM_BLOCK 64
void bn_lm_head_batch(bn_engine *e, const uint32_t *rows, uint32_t m, float *logits)
{
    const bn_model *md = e->model;
    size_t dim = e->cfg.n_embd, vocab = e->cfg.n_vocab, lpad = md->lm_head_cols_padded;
    size_t qstride = lpad > bn_align_up(dim, 64) ? lpad : bn_align_up(dim, 64);
    int i8 = e->lm_head == BN_LM_HEAD_I8;
    for (uint32_t i = 0; i < m; i++) {   /* s.xb row i is free: the layers are done */
        float *xn = e->s.xb + (size_t)i * dim;
        bn_rmsnorm(xn, e->s.x + (size_t)rows[i] * dim, md->output_norm, dim, e->cfg.norm_eps);
        if (i8) e->s.lm_qs[i] = bn_quant_act(xn, dim, lpad, e->s.lm_q + i * qstride);
    }
#pragma omp parallel num_threads(e->n_threads)
    {
        size_t r0, r1;
        bn_thread_rows(vocab, 16, omp_get_num_threads(), omp_get_thread_num(), &r0, &r1);
        for (size_t b0 = r0; b0 < r1; b0 += LM_BLOCK) {
            size_t b1 = r1 - b0 < LM_BLOCK ? r1 : b0 + LM_BLOCK;
            for (uint32_t i = 0; i < m; i++) {
                float *y = logits + (size_t)i * vocab;
                if (i8)
                    bn_gemv_i8row(md->lm_head_i8, md->lm_head_i8_scale, dim, lpad,
                                  e->s.lm_q + i * qstride, e->s.lm_qs[i], y, b0, b1);
                else
                    bn_gemv_f16(md->tok_embd, dim, e->s.xb + (size_t)i * dim, y, b0, b1);
            }
        }
    }
}
