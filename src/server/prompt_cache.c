/* The worker's RAM prompt cache (prompt_cache.h): a doubly linked LRU list of entries, most
 * recently used first. Lookups scan every entry: a worker holds at most a few thousand, and a
 * scan costs microseconds against the milliseconds of the prefill it saves. */
#include <stdlib.h>
#include <string.h>

#include "server/channel.h"
#include "server/prompt_cache.h"

typedef struct entry {
    bn_pcache_entry pub;    /* first: a bn_pcache_entry pointer is an entry pointer */
    int32_t *ids;
    void *state;
    size_t cost;            /* what it counts against the budget */
    struct entry *prev, *next;
} entry;

struct bn_pcache {
    size_t budget, used;
    uint32_t min_ids, count;
    uint64_t next_id;
    entry *head, *tail;     /* head = most recently used */
    bn_pcache_event on_event;
    void *user;
};

static void emit(bn_pcache *c, uint32_t op, uint64_t id, const int32_t *ids, uint32_t n)
{
    if (c->on_event) c->on_event(c->user, op, id, ids, n);
}

static size_t entry_cost(uint32_t n, size_t state_bytes)
{
    return sizeof(entry) + (size_t)n * sizeof(int32_t) + state_bytes;
}

static void unlink_entry(bn_pcache *c, entry *e)
{
    if (e->prev) e->prev->next = e->next;
    else c->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(bn_pcache *c, entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head) c->head->prev = e;
    c->head = e;
    if (!c->tail) c->tail = e;
}

static void destroy(bn_pcache *c, entry *e)
{
    unlink_entry(c, e);
    c->used -= e->cost;
    c->count--;
    free(e->ids);
    free(e->state);
    free(e);
}

bn_pcache *bn_pcache_new(size_t budget, uint32_t min_ids, bn_pcache_event on_event, void *user)
{
    bn_pcache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->budget = budget;
    c->min_ids = min_ids;
    c->next_id = 1;
    c->on_event = on_event;
    c->user = user;
    return c;
}

void bn_pcache_free(bn_pcache *c)
{
    if (!c) return;
    while (c->head) destroy(c, c->head);
    free(c);
}

static uint32_t common_prefix(const int32_t *a, uint32_t na, const int32_t *b, uint32_t nb)
{
    uint32_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

const bn_pcache_entry *bn_pcache_lookup(const bn_pcache *c, const int32_t *ids, uint32_t n,
                                        uint32_t *match)
{
    const entry *best = NULL;
    uint32_t best_n = 0;
    for (const entry *e = c->head; e; e = e->next) {   /* MRU first: strict > keeps it on ties */
        uint32_t k = common_prefix(e->ids, e->pub.n_ids, ids, n);
        if (k > best_n) {
            best = e;
            best_n = k;
        }
    }
    *match = best_n;
    return best ? &best->pub : NULL;
}

void bn_pcache_touch(bn_pcache *c, const bn_pcache_entry *pe)
{
    entry *e = (entry *)(uintptr_t)pe;
    if (!e || c->head == e) return;
    unlink_entry(c, e);
    push_front(c, e);
}

/* Removes the entry the new ids extend, if any, and returns its id for the new entry to take
 * (0 if none). There is at most one: no entry is ever a prefix of another, since a put that one
 * covers stores nothing and a put that extends one replaces it. */
static uint64_t drop_superseded(bn_pcache *c, const int32_t *ids, uint32_t n)
{
    for (entry *e = c->head; e; e = e->next)
        if (e->pub.n_ids <= n && common_prefix(e->ids, e->pub.n_ids, ids, n) == e->pub.n_ids) {
            uint64_t id = e->pub.id;
            destroy(c, e);
            return id;
        }
    return 0;
}

int bn_pcache_put(bn_pcache *c, const int32_t *ids, uint32_t n, size_t state_bytes,
                  bn_pcache_fill fill, void *fill_user)
{
    size_t cost = entry_cost(n, state_bytes);
    if (n == 0 || n < c->min_ids || cost > c->budget) return 0;
    for (entry *e = c->head; e; e = e->next)
        if (e->pub.n_ids >= n && common_prefix(e->ids, e->pub.n_ids, ids, n) == n) {
            bn_pcache_touch(c, &e->pub);
            return 0;
        }
    uint64_t id = drop_superseded(c, ids, n);
    while (c->used + cost > c->budget) {   /* cost <= budget: ends with the cache empty at worst */
        emit(c, BN_CACHE_DROP, c->tail->pub.id, NULL, 0);
        destroy(c, c->tail);
    }
    entry *e = calloc(1, sizeof *e);
    if (e) {
        e->ids = malloc((size_t)n * sizeof *ids);
        e->state = malloc(state_bytes ? state_bytes : 1);
    }
    if (!e || !e->ids || !e->state || fill(e->state, state_bytes, fill_user)) {
        if (e) {
            free(e->ids);
            free(e->state);
        }
        free(e);
        if (id) emit(c, BN_CACHE_DROP, id, NULL, 0);   /* the superseded entry is gone */
        return -1;
    }
    memcpy(e->ids, ids, (size_t)n * sizeof *ids);
    e->pub.id = id ? id : c->next_id++;
    e->pub.ids = e->ids;
    e->pub.n_ids = n;
    e->pub.state = e->state;
    e->pub.state_bytes = state_bytes;
    e->cost = cost;
    push_front(c, e);
    c->used += cost;
    c->count++;
    emit(c, BN_CACHE_ADD, e->pub.id, e->ids, n);
    return 1;
}

void bn_pcache_clear(bn_pcache *c)
{
    while (c->head) destroy(c, c->head);
    emit(c, BN_CACHE_CLEAR, 0, NULL, 0);
}

uint32_t bn_pcache_count(const bn_pcache *c) { return c->count; }
size_t bn_pcache_bytes(const bn_pcache *c) { return c->used; }
