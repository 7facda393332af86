/* A worker process: one engine (KV cache, sampler, scratch allocated once), one request at a
 * time, driven by frames from the master over its channel fd (channel.h).
 *
 * For each GENERATE frame the worker keeps the longest cached prefix of the prompt, prefills the
 * rest in chunks of prefill_chunk tokens (a PROGRESS frame after each; a CANCEL between chunks
 * ends it), then decodes: each token goes through the streaming UTF-8 decoder and the stop
 * matcher, and the text released is sent as a CHUNK frame with the token ids it accounts for.
 * It ends with DONE (finish, counts, the positions left cached) or ERROR (NaN logits, engine
 * failure). The channel is checked for CANCEL between tokens without blocking.
 *
 * The worker runs OpenMP; it is forked by the master before any OpenMP region exists. It exits
 * when the channel reaches EOF (master gone or shutting it down) once its request is finished. */
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
