/* Private to src/engine/: the engine's state, shared by engine.c, kv_cache.c, forward.c and
 * generate.c. Every pointer below is allocated once by bn_engine_create() (64-byte aligned) and
 * freed by bn_engine_free(); nothing here is (re)allocated afterwards. */
#ifndef BN_ENGINE_INTERNAL_H
#define BN_ENGINE_INTERNAL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sched.h>
#include "engine/engine.h"

/* f16 K and V for every layer: k[layer] is [n_ctx][kv_dim] (kv_dim = n_head_kv * head_dim). */
typedef struct bn_kv_cache {
    uint16_t *k, *v;        /* n_layer * n_ctx * kv_dim each */
    int32_t *ids;           /* the token at each cached position */
    uint32_t n_ctx, n_past;
    size_t kv_dim, layer_stride;   /* layer_stride = n_ctx * kv_dim */
} bn_kv_cache;

/* Activations of one prefill chunk of up to `batch` tokens (decode is a chunk of one). */
typedef struct bn_scratch {
    float *x;        /* [batch][n_embd]  residual stream */
    float *xb;       /* [batch][n_embd]  normed input of a block */
    float *xb2;      /* [batch][n_embd]  projection output before the residual add */
    float *q;        /* [batch][n_embd]  queries (n_head * head_dim), then attention output */
    float *k, *v;    /* [batch][kv_dim]  this chunk's keys and values before the f16 store */
    float *att;      /* [batch][n_embd]  attention output (all heads concatenated) */
    float *hg, *hu;  /* [batch][n_ff]    gate and up projections, hg becomes act(g)*u */
    int8_t *qa;      /* [batch][cols_pad] int8 activations of the current projection input */
    float *qs;       /* [batch]          their scales */
    float *scores;   /* [n_threads][group][n_ctx] attention scores: one GQA group's rows per
                      * thread (group = n_head / n_head_kv) */
    float *rope_inv_freq;   /* [head_dim/2] */
    int8_t *lm_q;    /* [batch][lm_cols_pad] final hidden states quantized for the int8 lm_head */
    float *lm_qs;    /* [batch]          their scales */
    uint32_t *tok_seq, *tok_pos;   /* [batch] each chunk token's sequence and position */
    uint32_t *seq_next;            /* [n_seq] next free position per sequence (batch checks) */
    float *logits;   /* [n_vocab]        last token's logits */
    size_t cols_pad; /* row stride of qa: max padded width of n_embd and n_ff */
    struct bn_lm_cand *lm_cand;   /* [n_vocab] the screened head's candidates (lm_head.c) */
    float *lm_part;  /* [LM_PART_SLOTS * n_threads] per-thread lower bounds and counts per stage */
    int32_t *lm_acc; /* [n_vocab] the bit-plane screen's integer dot products so far */
    uint8_t *lm_live;/* [n_vocab] rows the bit-plane screen has not ruled out yet */
} bn_scratch;

struct bn_engine {
    cpu_set_t unpinned;     /* affinity before pinning, restored by bn_engine_free() */
    int pinned;
    const bn_model *model;
    const uint16_t *head_f16;   /* the f16 lm_head rows: tok_embd if cfg.tied, else "output" */
    bn_config cfg;
    bn_tern_fmt fmt;
    int n_threads;
    int row_tile;
    uint32_t batch;
    enum bn_lm_head_kind lm_head;
    bn_engine_mem mem;

    bn_kv_cache kv;         /* sequence 0: the single-sequence API's cache */
    bn_kv_cache *kv_more;   /* sequences 1 .. n_seq-1 (NULL if n_seq == 1) */
    uint32_t n_seq;
    bn_scratch s;
    bn_sampler *sampler;

    bn_layer_hook hook;
    void *hook_user;
    int profiling;
    double prof[BN_PROF_COUNT];
    float lm_margin[BN_MAX_SEQ];   /* screened head: rescoring margin per sequence */
    uint8_t lm_tail[BN_MAX_SEQ];   /* 1: the sequence needs int8-accurate tail logits */
    float lm_drop[3];              /* bit-plane screen: share of rows stages 0..2 last dropped */
    bn_lm_stats lm_stats;
};

/* kv_cache.c */
int bn_kv_alloc(bn_kv_cache *kv, const bn_config *cfg, uint32_t n_ctx, bn_error *err);
void bn_kv_free(bn_kv_cache *kv);
size_t bn_kv_bytes(const bn_config *cfg, uint32_t n_ctx);
static inline uint16_t *bn_kv_k(const bn_kv_cache *kv, uint32_t layer, uint32_t pos)
{
    return kv->k + layer * kv->layer_stride + (size_t)pos * kv->kv_dim;
}
static inline uint16_t *bn_kv_v(const bn_kv_cache *kv, uint32_t layer, uint32_t pos)
{
    return kv->v + layer * kv->layer_stride + (size_t)pos * kv->kv_dim;
}

/* The cache of sequence seq (< e->n_seq). */
static inline bn_kv_cache *bn_eng_kv(const bn_engine *e, uint32_t seq)
{
    return seq == 0 ? (bn_kv_cache *)&e->kv : &e->kv_more[seq - 1];
}

/* forward.c: one chunk of n <= batch tokens at positions kv.n_past.. (ids already checked),
 * appended to the cache. Logits: every token's into all_logits if non-NULL, else if want_last
 * the last token's into s.logits, else none. */
void bn_forward_chunk(bn_engine *e, const int32_t *ids, uint32_t n, float *all_logits,
                      int want_last);
/* forward.c: one chunk of n <= batch tokens of any sequences (checked by the caller), each
 * appended to its sequence's cache; the rows of tokens flagged want_logits go to logits_out in
 * order. Returns the number of rows written. */
uint32_t bn_forward_batch(bn_engine *e, const bn_batch_tok *toks, uint32_t n, float *logits_out);

/* lm_head.c: logits of one final hidden state h (n_embd) into logits (n_vocab), and of the m
 * tokens rows[0..m) of s.x into m rows of logits. Both clobber s.xb. */
void bn_lm_head_one(bn_engine *e, const float *h, float *logits);
/* Row stride of s.lm_q: the widest padding of the int8 head rows, its planes and n_embd (64). */
size_t bn_lm_q_stride(const bn_model *m);
/* Per-thread slots of s.lm_part: a lower bound and a row count for each of the 4 stages. */
#define LM_PART_SLOTS 8
void bn_lm_head_batch(bn_engine *e, const uint32_t *rows, uint32_t m, float *logits);
/* forward.c: rows [r0, r1) of a rows-row matrix for thread ith of nth, in whole tiles. */
void bn_thread_rows(size_t rows, size_t tile, int nth, int ith, size_t *r0, size_t *r1);

/* engine.c */
void *bn_eng_alloc64(size_t bytes);
double bn_eng_now(void);

#endif
