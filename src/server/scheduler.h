/* Admission and routing, as pure data structures (no libevent, no processes), so the policy is
 * unit-tested on its own:
 *  - bn_queue: the bounded FIFO of requests waiting for a worker (intrusive nodes, O(1) removal
 *    when a waiting client disconnects or times out);
 *  - bn_sched_pick: which free worker gets the next request. The one whose KV cache holds the
 *    longest prefix of the new prompt (the next turn of a chat skips that prefill); among equals,
 *    the one used least recently, so the caches other conversations may return to live longest. */
#ifndef BN_SERVER_SCHEDULER_H
#define BN_SERVER_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

typedef struct bn_qnode {
    struct bn_qnode *prev, *next;
    double enqueued_at;        /* monotonic seconds */
    int queued;                /* on a queue now */
} bn_qnode;

typedef struct bn_queue {
    bn_qnode head;             /* sentinel: head.next is the oldest */
    int len, cap;
} bn_queue;

void bn_queue_init(bn_queue *q, int cap);
/* Appends n (not queued) unless the queue is full: returns 0, or -1 when full. */
int bn_queue_push(bn_queue *q, bn_qnode *n, double now);
/* Removes and returns the oldest node, or NULL. */
bn_qnode *bn_queue_pop(bn_queue *q);
/* The oldest node without removing it, or NULL. */
bn_qnode *bn_queue_peek(const bn_queue *q);
/* Removes n if it is queued (no-op otherwise). */
void bn_queue_remove(bn_queue *q, bn_qnode *n);
/* A realistic Retry-After in whole seconds (>= 1) for a client refused now: the time for the
 * queue ahead of it to drain at the measured mean service time over `workers` workers. */
int bn_queue_retry_after(const bn_queue *q, int workers, double mean_service_s);

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
