/* The worker picker (scheduler.h). */

#include "server/scheduler.h"

size_t bn_common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    size_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

size_t bn_sched_match(const bn_sched_worker *w, const int32_t *ids, size_t n, int *which)
{
    size_t best = 0;
    int at = -1;
    for (int i = 0; i < w->n_prefixes; i++) {
        const bn_sched_prefix *p = &w->prefixes[i];
        size_t len = bn_common_prefix(p->ids, p->n, ids, n);
        if (len >= BN_SCHED_MIN_PREFIX && len > best) {
            best = len;
            at = i;
        }
    }
    if (which) *which = at;
    return best;
}

int bn_sched_free(const bn_sched_worker *w, int reserve)
{
    if (!w->ready || w->total < 1) return 0;
    if (reserve > w->total - 1) reserve = w->total - 1;
    if (reserve < 0) reserve = 0;
    int free = w->total - w->busy - reserve;
    return free > 0 ? free : 0;
}

/* Is a (prefix length la) a better home than b? */
static int better(const bn_sched_worker *a, size_t la, const bn_sched_worker *b, size_t lb)
{
    if (la != lb) return la > lb;
    if (a->busy != b->busy) return a->busy < b->busy;
    return a->last_used < b->last_used;
}

int bn_sched_pick(const bn_sched_worker *w, int n_workers, const int32_t *ids, size_t n,
                  int reserve, size_t *matched)
{
    int best = -1;
    size_t best_len = 0;
    for (int i = 0; i < n_workers; i++) {
        if (bn_sched_free(&w[i], reserve) == 0) continue;
        size_t len = bn_sched_match(&w[i], ids, n, NULL);
        if (best < 0 || better(&w[i], len, &w[best], best_len)) {
            best = i;
            best_len = len;
        }
    }
    if (matched) *matched = best < 0 ? 0 : best_len;
    return best;
}

uint32_t bn_sched_auto_slots(uint64_t kv_per_seq, uint64_t ram, int n_workers)
{
    if (!kv_per_seq || !ram) return BN_SCHED_AUTO_SLOTS;
    uint64_t fit = ram / 4 / (uint64_t)(n_workers > 0 ? n_workers : 1) / kv_per_seq;
    return fit >= BN_SCHED_AUTO_SLOTS ? BN_SCHED_AUTO_SLOTS : fit < 1 ? 1 : (uint32_t)fit;
}
