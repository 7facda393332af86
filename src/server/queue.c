/* The bounded wait queue (queue.h). */
#include <math.h>

#include "server/queue.h"

void bn_queue_init(bn_queue *q, int cap)
{
    q->head.prev = q->head.next = &q->head;
    q->len = 0;
    q->cap = cap;
}

int bn_queue_push(bn_queue *q, bn_qnode *n, double now)
{
    if (n->queued || q->len >= q->cap) return -1;
    n->enqueued_at = now;
    n->prev = q->head.prev;
    n->next = &q->head;
    q->head.prev->next = n;
    q->head.prev = n;
    n->queued = 1;
    q->len++;
    return 0;
}

void bn_queue_remove(bn_queue *q, bn_qnode *n)
{
    if (!n->queued) return;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = NULL;
    n->queued = 0;
    q->len--;
}

bn_qnode *bn_queue_peek(const bn_queue *q)
{
    return q->len ? q->head.next : NULL;
}

bn_qnode *bn_queue_pop(bn_queue *q)
{
    bn_qnode *n = bn_queue_peek(q);
    if (n) bn_queue_remove(q, n);
    return n;
}

static int running_of(const int *running, int n_keys, int key)
{
    return running && key >= 0 && key < n_keys ? running[key] : 0;
}

/* One pass from the oldest: a later node wins only when strictly better, so ties go to the
 * oldest. O(len): the queue is bounded (queue_size) and a dispatch is rarer than a token. */
bn_qnode *bn_queue_best(const bn_queue *q, const int *running, int n_keys, int max_priority)
{
    bn_qnode *best = NULL;
    int best_run = 0;
    for (bn_qnode *n = q->head.next; n != &q->head; n = n->next) {
        if (n->priority > max_priority) continue;
        int run = running_of(running, n_keys, n->key);
        if (!best || n->priority < best->priority ||
            (n->priority == best->priority && run < best_run)) {
            best = n;
            best_run = run;
        }
    }
    return best;
}

int bn_queue_retry_after(const bn_queue *q, int workers, double mean_service_s)
{
    if (workers < 1) workers = 1;
    if (!(mean_service_s > 0) || !isfinite(mean_service_s)) mean_service_s = 1.0;
    /* Everyone queued, plus the requests now running, must finish before a slot frees up. */
    double s = ceil((q->len + workers) * mean_service_s / workers);
    if (s < 1) s = 1;
    if (s > 3600) s = 3600;
    return (int)s;
}
