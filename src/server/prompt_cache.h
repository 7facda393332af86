/* A worker's RAM prompt cache: KV states of finished requests, keyed by their token ids, so a
 * later prompt that starts with the same tokens copies the prefix instead of recomputing it.
 *
 * The cache knows nothing of the engine: a state is opaque bytes (bn_engine_seq_save's), filled
 * by a callback once room has been made, so the byte budget holds at every moment. Entries are
 * kept in least-recently-used order; putting an entry evicts from the cold end until it fits.
 * An entry whose ids are a prefix of the new one (an earlier turn of the same conversation) is
 * replaced by it: the new entry takes the old one's id. A put whose ids are a prefix of an
 * existing entry stores nothing (that entry already serves every prompt this one would).
 *
 * Every change is reported through the callback given at creation (the worker turns them into
 * CACHE frames, channel.h), in the order they happen: DROP for an evicted or superseded entry,
 * ADD for a stored one (an id seen before means that entry was replaced), CLEAR for clear. */
#ifndef BN_SERVER_PROMPT_CACHE_H
#define BN_SERVER_PROMPT_CACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct bn_pcache bn_pcache;

typedef struct bn_pcache_entry {
    uint64_t id;            /* never 0; ids are not reused except by a replacement */
    const int32_t *ids;     /* the tokens whose K/V the state holds */
    uint32_t n_ids;
    const void *state;      /* state_bytes bytes, as filled at put */
    size_t state_bytes;
} bn_pcache_entry;

/* op is enum bn_cache_op (channel.h); ids/n_ids only for ADD. */
typedef void (*bn_pcache_event)(void *user, uint32_t op, uint64_t entry, const int32_t *ids,
                                uint32_t n_ids);
/* Writes the state of the entry being stored into buf (bytes long); non-zero = failed. */
typedef int (*bn_pcache_fill)(void *buf, size_t bytes, void *user);

/* budget: bytes for every entry's state, ids and bookkeeping together (0 stores nothing).
 * min_ids: shorter puts are skipped. on_event may be NULL. NULL if out of memory. */
bn_pcache *bn_pcache_new(size_t budget, uint32_t min_ids, bn_pcache_event on_event, void *user);
void bn_pcache_free(bn_pcache *c);   /* no events */

/* The entry sharing the longest common prefix with ids[0..n) (*match tokens, >= 1), or NULL
 * (*match = 0). Ties go to the most recently used. Does not change the LRU order. */
const bn_pcache_entry *bn_pcache_lookup(const bn_pcache *c, const int32_t *ids, uint32_t n,
                                        uint32_t *match);
/* Marks an entry (from lookup) as just used. */
void bn_pcache_touch(bn_pcache *c, const bn_pcache_entry *e);

/* Stores ids[0..n) with a state of state_bytes bytes written by fill. Returns 1 if stored, 0 if
 * skipped (shorter than min_ids, larger than the whole budget, or already covered by an entry,
 * which is then touched), -1 if out of memory or fill failed (the cache is left valid; entries
 * replaced or evicted before the failure stay gone and were reported). */
int bn_pcache_put(bn_pcache *c, const int32_t *ids, uint32_t n, size_t state_bytes,
                  bn_pcache_fill fill, void *fill_user);

/* Drops every entry (one CLEAR event, even if it was empty: the mirror can rely on it). */
void bn_pcache_clear(bn_pcache *c);

uint32_t bn_pcache_count(const bn_pcache *c);
size_t bn_pcache_bytes(const bn_pcache *c);   /* as counted against the budget */

#endif
