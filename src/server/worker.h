/* A worker process: one engine (n_slots KV sequences, samplers, scratch allocated once) running
 * up to n_slots requests together, driven by frames from the master over its channel fd
 * (channel.h).
 *
 * For each GENERATE frame the worker takes a free slot (none free: ERROR BAD_REQUEST for that
 * id), keeps the longest prefix of the prompt found in an idle sequence or the RAM prompt cache,
 * and prefills the rest, at most prefill_chunk tokens per step across joining requests (a
 * PROGRESS frame after each), while the other slots keep decoding in the same batched pass.
 * Each token goes through the slot's streaming UTF-8 decoder and stop matcher, and the text
 * released is sent as a CHUNK frame with the token ids it accounts for. A request ends with DONE
 * (finish, counts, the positions left cached) or ERROR (NaN logits, engine failure); its tokens
 * then go into the prompt cache, announced with CACHE frames before the DONE. The channel is
 * checked for CANCEL between steps without blocking. One slot and no prompt cache is the
 * single-request worker of before, frame for frame.
 *
 * The worker runs OpenMP; it is forked by the master before any OpenMP region exists. It exits
 * when the channel reaches EOF (master gone or shutting it down), abandoning any request. */
#ifndef BN_SERVER_WORKER_H
#define BN_SERVER_WORKER_H

#include <hwloc.h>

#include "engine/engine.h"
#include "server/placement.h"
#include "text/tokenizer.h"

typedef struct bn_worker_spec {
    int index;                      /* worker slot, for messages */
    int fd;                         /* this worker's end of the channel */
    const bn_model *model;          /* mapped before fork: shared with every worker */
    const bn_tokenizer *tok;        /* built before fork (immutable) */
    bn_engine_opts eopts;           /* n_ctx, lm_head, batch; threads/cpus come from place */
    const bn_worker_place *place;   /* NULL = no binding (tests) */
    hwloc_topology_t topo;          /* for bn_place_bind_self; NULL = no binding */
    uint32_t prefill_chunk;         /* tokens per prefill pass; 0 = 64. With slots, the most
                                     * prompt tokens one batched step takes, so running
                                     * requests wait at most one such step for a token */
    uint32_t n_slots;               /* requests decoded together (engine n_seq); 0 = 1 */
    size_t prompt_cache_bytes;      /* RAM for saved KV prefixes (LRU); 0 = no prompt cache */
} bn_worker_spec;

/* The worker's whole life: bind, create the engine, say HELLO, serve frames until EOF.
 * Returns the process exit status (0 after a clean EOF). Never returns into master code: the
 * caller _exit()s with it. */
int bn_worker_main(const bn_worker_spec *spec);

#endif
