/* The queue and the worker picker (scheduler.h). */
#include <math.h>

#include "server/scheduler.h"

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

size_t bn_common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    size_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

int bn_sched_pick(const bn_sched_worker *w, int n_workers, const int32_t *ids, size_t n,
                  size_t *matched)
{
    int best = -1;
    size_t best_len = 0;
    for (int i = 0; i < n_workers; i++) {
        if (!w[i].free) continue;
        size_t len = bn_common_prefix(w[i].cached, w[i].n_cached, ids, n);
        if (best < 0 || len > best_len || (len == best_len && w[i].last_used < w[best].last_used)) {
            best = i;
            best_len = len;
        }
    }
    if (matched) *matched = best < 0 ? 0 : best_len;
    return best;
}
