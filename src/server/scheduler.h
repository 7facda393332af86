/* Routing, as a pure function (no libevent, no processes), so the policy is unit-tested on its
 * own. bn_sched_pick: which worker with a free slot gets the next request. The one whose caches
 * (its prompt-cache entries, as the master mirrors them) hold the longest prefix of the new
 * prompt, so the next turn of a chat skips that prefill; among equals the one with the fewest
 * busy slots (load balancing), then the one used least recently, so the caches other
 * conversations may return to live longest. Batch requests leave a worker's reserved slots to
 * interactive ones. The wait queue is queue.h. */
#ifndef BN_SERVER_SCHEDULER_H
#define BN_SERVER_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

#include "server/queue.h"

/* Shorter matches count as none: every chat prompt opens with the same few template tokens,
 * which must not send every new conversation to the one worker that served any before. */
#define BN_SCHED_MIN_PREFIX 16

/* One token sequence a worker holds the KV of. */
typedef struct bn_sched_prefix {
    const int32_t *ids;
    size_t n;
    uint64_t entry;            /* the caller's name for it (the worker's entry id); not read here */
} bn_sched_prefix;

/* What the picker needs to know of each worker. */
typedef struct bn_sched_worker {
    int ready;                 /* alive, past HELLO, not retiring: it may take work */
    int busy, total;           /* slots in use / slots it has */
    const bn_sched_prefix *prefixes;
    int n_prefixes;
    double last_used;          /* monotonic seconds of its last assignment */
} bn_sched_worker;

/* Longest common prefix of a[0..na) and b[0..nb). */
size_t bn_common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb);

/* The longest prefix of ids[0..n) that one of w's prefixes holds (below BN_SCHED_MIN_PREFIX:
 * 0); *which receives its index, or -1 (may be NULL). */
size_t bn_sched_match(const bn_sched_worker *w, const int32_t *ids, size_t n, int *which);

/* Slots of w a request may take now. reserve: the free slots it must leave (0 for interactive
 * requests, reserved_slots for batch), at most total - 1 so a one-slot worker serves anyone. */
int bn_sched_free(const bn_sched_worker *w, int reserve);

/* The worker to run ids[0..n) on (see above), or -1 when none has a slot it may take. *matched
 * receives the prefix length that worker already holds (may be NULL). */
int bn_sched_pick(const bn_sched_worker *w, int n_workers, const int32_t *ids, size_t n,
                  int reserve, size_t *matched);

/* slots = auto: BN_SCHED_AUTO_SLOTS requests per worker when that many KV regions of
 * kv_per_seq bytes for each of n_workers fit in a quarter of ram, else as many as fit, at
 * least 1 (unknown sizes, 0: BN_SCHED_AUTO_SLOTS). The regions are reserved up front, so the
 * box must be able to fill every one of them without swapping the weights out. */
#define BN_SCHED_AUTO_SLOTS 8
uint32_t bn_sched_auto_slots(uint64_t kv_per_seq, uint64_t ram, int n_workers);

#endif
