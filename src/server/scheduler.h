/* Routing, as a pure function (no libevent, no processes), so the policy is unit-tested on its
 * own. bn_sched_pick: which free worker gets the next request. The one whose KV cache holds the
 * longest prefix of the new prompt (the next turn of a chat skips that prefill); among equals,
 * the one used least recently, so the caches other conversations may return to live longest.
 * The wait queue is queue.h. */
#ifndef BN_SERVER_SCHEDULER_H
#define BN_SERVER_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

#include "server/queue.h"

/* What the picker needs to know of each worker. */
typedef struct bn_sched_worker {
    int free;                  /* alive, idle, and accepting work */
    const int32_t *cached;     /* the ids its KV cache holds */
    size_t n_cached;
    double last_used;          /* monotonic seconds of its last assignment */
} bn_sched_worker;

/* Longest common prefix of a[0..na) and b[0..nb). */
size_t bn_common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb);

/* The free worker to run ids[0..n) on (see above), or -1 when none is free. *matched receives
 * the prefix length it already caches (may be NULL). */
int bn_sched_pick(const bn_sched_worker *w, int n_workers, const int32_t *ids, size_t n,
                  size_t *matched);

#endif
