/* The KV cache: f16 keys and values of every layer for up to n_ctx positions, plus the token id
 * at each position so that a new prompt can reuse the longest prefix already computed.
 *
 * Invariant: positions [0, n_past) hold K/V computed from ids[0..n_past) in order; anything past
 * n_past is garbage and never read. Truncating the cache is therefore just lowering n_past, and
 * since the forward pass computes every token identically whatever chunk it arrives in, a
 * reused prefix gives bit-identical results to recomputing it. */
#include <stdlib.h>
#include <string.h>

#include "engine/engine_internal.h"

size_t bn_kv_bytes(const bn_config *cfg, uint32_t n_ctx)
{
    size_t kv_dim = (size_t)cfg->n_head_kv * cfg->head_dim;
    return 2 * (size_t)cfg->n_layer * n_ctx * kv_dim * sizeof(uint16_t) +
           (size_t)n_ctx * sizeof(int32_t);
}

int bn_kv_alloc(bn_kv_cache *kv, const bn_config *cfg, uint32_t n_ctx, bn_error *err)
{
    kv->n_ctx = n_ctx;
    kv->n_past = 0;
    kv->kv_dim = (size_t)cfg->n_head_kv * cfg->head_dim;
    kv->layer_stride = (size_t)n_ctx * kv->kv_dim;
    size_t bytes = (size_t)cfg->n_layer * kv->layer_stride * sizeof(uint16_t);
    /* Not zeroed on purpose: pages of positions never used are never touched, so a large n_ctx
     * costs address space, not resident memory, until the conversation grows into it. */
    kv->k = bn_eng_alloc64(bytes);
    kv->v = bn_eng_alloc64(bytes);
    kv->ids = bn_eng_alloc64((size_t)n_ctx * sizeof(int32_t));
    if (!kv->k || !kv->v || !kv->ids) {
        bn_kv_free(kv);
        return bn_err(err, "cannot allocate a %u-position KV cache", n_ctx);
    }
    return 0;
}

void bn_kv_free(bn_kv_cache *kv)
{
    free(kv->k);
    free(kv->v);
    free(kv->ids);
    kv->k = kv->v = NULL;
    kv->ids = NULL;
    kv->n_past = 0;
}

static void kv_truncate(bn_kv_cache *kv, uint32_t n_past)
{
    if (n_past < kv->n_past) kv->n_past = n_past;
}

static uint32_t kv_keep_prefix(bn_kv_cache *kv, const int32_t *ids, size_t n)
{
    uint32_t keep = 0;
    while (keep < kv->n_past && keep < n && kv->ids[keep] == ids[keep]) keep++;
    /* The last prompt token is always re-run: its logits are what generation starts from. */
    if (n > 0 && keep >= n) keep = (uint32_t)(n - 1);
    kv->n_past = keep;
    return keep;
}

uint32_t bn_engine_n_past(const bn_engine *e) { return e->kv.n_past; }
const int32_t *bn_engine_cached_ids(const bn_engine *e) { return e->kv.ids; }
void bn_engine_reset(bn_engine *e) { e->kv.n_past = 0; }
void bn_engine_truncate(bn_engine *e, uint32_t n_past) { kv_truncate(&e->kv, n_past); }

uint32_t bn_engine_keep_prefix(bn_engine *e, const int32_t *ids, size_t n)
{
    return kv_keep_prefix(&e->kv, ids, n);
}

/* Per sequence: the same operations on that sequence's region; a bad index is a no-op. */
uint32_t bn_engine_seq_n_past(const bn_engine *e, uint32_t seq)
{
    return seq < e->n_seq ? bn_eng_kv(e, seq)->n_past : 0;
}

const int32_t *bn_engine_seq_cached_ids(const bn_engine *e, uint32_t seq)
{
    return seq < e->n_seq ? bn_eng_kv(e, seq)->ids : NULL;
}

void bn_engine_seq_reset(bn_engine *e, uint32_t seq)
{
    if (seq < e->n_seq) bn_eng_kv(e, seq)->n_past = 0;
}

void bn_engine_seq_truncate(bn_engine *e, uint32_t seq, uint32_t n_past)
{
    if (seq < e->n_seq) kv_truncate(bn_eng_kv(e, seq), n_past);
}

uint32_t bn_engine_seq_keep_prefix(bn_engine *e, uint32_t seq, const int32_t *ids, size_t n)
{
    return seq < e->n_seq ? kv_keep_prefix(bn_eng_kv(e, seq), ids, n) : 0;
}

/* ---- a sequence's state as bytes (the server's prompt cache) ---------------------------- */

/* Layout of a state of n positions: for each layer, n rows of K then n rows of V (kv_dim f16
 * each), i.e. the cache's own rows, so a save or a load is 2 * n_layer memcpys. */
size_t bn_engine_seq_state_bytes(const bn_engine *e, uint32_t n)
{
    return 2 * (size_t)e->cfg.n_layer * n * e->kv.kv_dim * sizeof(uint16_t);
}

int bn_engine_seq_save(const bn_engine *e, uint32_t seq, uint32_t n, void *buf, bn_error *err)
{
    if (seq >= e->n_seq) return bn_err(err, "save: sequence %u out of range (n_seq %u)", seq, e->n_seq);
    const bn_kv_cache *kv = bn_eng_kv(e, seq);
    if (n > kv->n_past)
        return bn_err(err, "save: %u positions asked, sequence %u holds %u", n, seq, kv->n_past);
    size_t rows = (size_t)n * kv->kv_dim;
    uint16_t *p = buf;
    if (n == 0) return 0;
    for (uint32_t l = 0; l < e->cfg.n_layer; l++) {
        memcpy(p, bn_kv_k(kv, l, 0), rows * sizeof *p);
        memcpy(p + rows, bn_kv_v(kv, l, 0), rows * sizeof *p);
        p += 2 * rows;
    }
    return 0;
}

int bn_engine_seq_load(bn_engine *e, uint32_t seq, const int32_t *ids, uint32_t n, const void *buf,
                       uint32_t n_buf, bn_error *err)
{
    if (seq >= e->n_seq) return bn_err(err, "load: sequence %u out of range (n_seq %u)", seq, e->n_seq);
    bn_kv_cache *kv = bn_eng_kv(e, seq);
    if (n > n_buf || n_buf > kv->n_ctx)
        return bn_err(err, "load: %u of %u saved positions into a %u-position context", n, n_buf,
                      kv->n_ctx);
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= e->cfg.n_vocab)
            return bn_err(err, "load: token %u: id %d out of range (n_vocab %u)", i, ids[i],
                          e->cfg.n_vocab);
    size_t rows = (size_t)n * kv->kv_dim, stride = (size_t)n_buf * kv->kv_dim;
    const uint16_t *p = buf;
    kv->n_past = 0;
    if (n == 0) return 0;
    for (uint32_t l = 0; l < e->cfg.n_layer; l++) {
        memcpy(bn_kv_k(kv, l, 0), p, rows * sizeof *p);
        memcpy(bn_kv_v(kv, l, 0), p + stride, rows * sizeof *p);
        p += 2 * stride;
    }
    memcpy(kv->ids, ids, (size_t)n * sizeof *ids);
    kv->n_past = n;
    return 0;
}
