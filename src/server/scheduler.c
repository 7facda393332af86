/* The worker picker (scheduler.h). */

#include "server/scheduler.h"

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
