/* The bounded queue of requests waiting for a worker, as a pure data structure (no libevent, no
 * processes), unit-tested on its own: intrusive nodes, O(1) removal when a waiting client
 * disconnects or times out. */
#ifndef BN_SERVER_QUEUE_H
#define BN_SERVER_QUEUE_H

#include <stddef.h>
#include <stdint.h>

typedef struct bn_qnode {
    struct bn_qnode *prev, *next;
    double enqueued_at;        /* monotonic seconds */
    int queued;                /* on a queue now */
    int priority;              /* vLLM's: lower runs first; <= 0 is interactive */
    int key;                   /* the API key's index (bn_limits), 0 = anonymous */
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
/* The node to run next among those with priority <= max_priority (INT_MAX: any), or NULL:
 * the lowest priority value; among equals the key with the fewest running requests
 * (running[key], n_keys entries; keys out of range count as 0), so keys share the workers
 * fairly; then the oldest. Does not remove it. */
bn_qnode *bn_queue_best(const bn_queue *q, const int *running, int n_keys, int max_priority);
/* Removes n if it is queued (no-op otherwise). */
void bn_queue_remove(bn_queue *q, bn_qnode *n);
/* A realistic Retry-After in whole seconds (>= 1) for a client refused now: the time for the
 * queue ahead of it to drain at the measured mean service time over `workers` workers. */
int bn_queue_retry_after(const bn_queue *q, int workers, double mean_service_s);

#endif
