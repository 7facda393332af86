/* The worker's RAM prompt cache (src/server/prompt_cache.c): LRU order, the byte budget,
 * replacement of entries a conversation extends, longest-prefix lookup, and the events the
 * worker turns into CACHE frames. Then the engine's sequence state save/load under it
 * (bn_engine_seq_save/load): a loaded prefix continues bit-identically to recomputing it.
 *
 * No process is forked here (the engine cases run OpenMP in this process). */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "model/model.h"
#include "server/channel.h"
#include "server/prompt_cache.h"
#include "testutil.h"
#include "worker_harness.h"   /* its inline helpers only: no worker is linked */

/* ---- the cache alone ------------------------------------------------------------------- */

typedef struct event {
    uint32_t op;
    uint64_t entry;
    uint32_t n_ids;
    int32_t first, last;   /* ADD: the first and last id */
} event;

typedef struct recorder {
    event ev[64];
    int n;
} recorder;

static void record(void *user, uint32_t op, uint64_t entry, const int32_t *ids, uint32_t n)
{
    recorder *r = user;
    ck_assert(r->n < 64);
    ck_assert_msg(op == BN_CACHE_CLEAR ? entry == 0 : entry != 0, "op %u entry %llu", op,
                  (unsigned long long)entry);
    event e = {op, entry, n, n ? ids[0] : -1, n ? ids[n - 1] : -1};
    r->ev[r->n++] = e;
}

/* The state of a "sequence" is a byte pattern derived from its ids, so a lookup can check that
 * it got the state that was stored with them. */
typedef struct pattern {
    const int32_t *ids;
    uint32_t n;
    int fail;
} pattern;

static int fill_pattern(void *buf, size_t bytes, void *user)
{
    const pattern *p = user;
    if (p->fail) return -1;
    uint8_t *b = buf;
    for (size_t i = 0; i < bytes; i++) b[i] = (uint8_t)(p->ids[i % p->n] * 31 + i);
    return 0;
}

static int state_ok(const bn_pcache_entry *e)
{
    const uint8_t *b = e->state;
    for (size_t i = 0; i < e->state_bytes; i++)
        if (b[i] != (uint8_t)(e->ids[i % e->n_ids] * 31 + i)) return 0;
    return 1;
}

/* ids[i] = base + i */
static void seq_ids(int32_t *ids, uint32_t n, int32_t base)
{
    for (uint32_t i = 0; i < n; i++) ids[i] = base + (int32_t)i;
}

static int put(bn_pcache *c, const int32_t *ids, uint32_t n, size_t bytes)
{
    pattern p = {ids, n, 0};
    return bn_pcache_put(c, ids, n, bytes, fill_pattern, &p);
}

#define STATE 1000   /* bytes of each test state */

START_TEST(lookup_takes_the_longest_common_prefix)
{
    recorder r = {0};
    bn_pcache *c = bn_pcache_new(1 << 20, 4, record, &r);
    ck_assert_ptr_nonnull(c);
    int32_t a[40], b[40], q[60];
    uint32_t m = 99;
    seq_ids(a, 40, 100);
    ck_assert_ptr_null(bn_pcache_lookup(c, a, 40, &m));   /* empty */
    ck_assert_int_eq(m, 0);
    ck_assert_int_eq(put(c, a, 40, STATE), 1);
    memcpy(b, a, sizeof b);
    b[20] = 7;                                            /* b shares 20 tokens with a */
    ck_assert_int_eq(put(c, b, 30, STATE), 1);
    ck_assert_int_eq(bn_pcache_count(c), 2);

    /* q continues a past its end: all of a is usable */
    memcpy(q, a, sizeof a);
    seq_ids(q + 40, 20, 900);
    const bn_pcache_entry *e = bn_pcache_lookup(c, q, 60, &m);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(m, 40);
    ck_assert_int_eq(e->n_ids, 40);
    ck_assert(e->ids[0] == 100 && state_ok(e) && e->state_bytes == STATE);
    /* q diverges from a at 25 and from b at 20, then matches b up to 26: b's 26 wins */
    memcpy(q, b, 30 * sizeof *q);
    q[26] = 5;
    e = bn_pcache_lookup(c, q, 30, &m);
    ck_assert_int_eq(m, 26);
    ck_assert(e && e->ids[20] == 7 && state_ok(e));
    /* a prompt shorter than both: its own length */
    e = bn_pcache_lookup(c, a, 10, &m);
    ck_assert(e != NULL && m == 10);
    /* a tie (both share 20 tokens with this one) goes to the most recently used: b */
    memcpy(q, a, 20 * sizeof *q);
    q[20] = 8;
    e = bn_pcache_lookup(c, q, 21, &m);
    ck_assert(m == 20 && e->ids[20] == 7);
    bn_pcache_touch(c, bn_pcache_lookup(c, a, 40, &m));   /* now a is */
    e = bn_pcache_lookup(c, q, 21, &m);
    ck_assert(m == 20 && e->ids[20] == 120);
    /* nothing in common */
    seq_ids(q, 10, 5000);
    ck_assert_ptr_null(bn_pcache_lookup(c, q, 10, &m));
    ck_assert_int_eq(m, 0);

    ck_assert_int_eq(r.n, 2);   /* two ADDs, distinct ids, in order */
    ck_assert(r.ev[0].op == BN_CACHE_ADD && r.ev[0].n_ids == 40 && r.ev[0].first == 100 &&
              r.ev[0].last == 139);
    ck_assert(r.ev[1].op == BN_CACHE_ADD && r.ev[1].n_ids == 30 && r.ev[1].entry != r.ev[0].entry);
    bn_pcache_free(c);
    ck_assert_int_eq(r.n, 2);   /* free reports nothing */
}
END_TEST

START_TEST(lru_eviction_keeps_the_budget)
{
    recorder r = {0};
    int32_t ids[8][20];
    /* room for exactly three entries of 20 ids and STATE bytes */
    size_t one;
    {
        bn_pcache *probe = bn_pcache_new(SIZE_MAX, 1, NULL, NULL);
        seq_ids(ids[0], 20, 0);
        ck_assert_int_eq(put(probe, ids[0], 20, STATE), 1);
        one = bn_pcache_bytes(probe);
        bn_pcache_free(probe);
    }
    ck_assert(one >= STATE + 20 * sizeof(int32_t));
    bn_pcache *c = bn_pcache_new(3 * one + one / 2, 16, record, &r);
    for (int i = 0; i < 8; i++) seq_ids(ids[i], 20, 1000 * (i + 1));
    uint64_t entry[8];
    uint32_t m;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(put(c, ids[i], 20, STATE), 1);
        entry[i] = r.ev[r.n - 1].entry;
    }
    ck_assert_int_eq(bn_pcache_count(c), 3);
    ck_assert_int_eq(bn_pcache_bytes(c), 3 * one);
    /* using 0 makes 1 the coldest: the fourth put evicts 1, then the fifth evicts 2 */
    bn_pcache_touch(c, bn_pcache_lookup(c, ids[0], 20, &m));
    r.n = 0;
    ck_assert_int_eq(put(c, ids[3], 20, STATE), 1);
    ck_assert_int_eq(r.n, 2);
    ck_assert(r.ev[0].op == BN_CACHE_DROP && r.ev[0].entry == entry[1]);   /* DROP before ADD */
    ck_assert(r.ev[1].op == BN_CACHE_ADD);
    entry[3] = r.ev[1].entry;
    ck_assert_ptr_null(bn_pcache_lookup(c, ids[1], 20, &m));
    ck_assert_int_eq(put(c, ids[4], 20, STATE), 1);
    ck_assert(r.ev[2].op == BN_CACHE_DROP && r.ev[2].entry == entry[2]);
    ck_assert_ptr_nonnull(bn_pcache_lookup(c, ids[0], 20, &m));
    ck_assert_int_eq(bn_pcache_count(c), 3);
    ck_assert(bn_pcache_bytes(c) <= 3 * one + one / 2);

    /* an entry as large as the whole budget evicts everything; a larger one is skipped */
    size_t big = 3 * one + one / 2 - (one - STATE);
    r.n = 0;
    ck_assert_int_eq(put(c, ids[5], 20, big), 1);
    ck_assert_int_eq(bn_pcache_count(c), 1);
    ck_assert_int_eq(r.n, 4);   /* three DROPs, one ADD */
    ck_assert(bn_pcache_bytes(c) <= 3 * one + one / 2);
    ck_assert_int_eq(put(c, ids[6], 20, big + 1), 0);
    ck_assert_int_eq(r.n, 4);   /* nothing happened */
    ck_assert_int_eq(bn_pcache_count(c), 1);

    /* shorter than min_ids: skipped */
    ck_assert_int_eq(put(c, ids[7], 15, STATE), 0);
    ck_assert_int_eq(bn_pcache_count(c), 1);

    /* a failed fill: -1, the cache still valid, its budget still kept */
    pattern p = {ids[7], 20, 1};
    ck_assert_int_eq(bn_pcache_put(c, ids[7], 20, STATE, fill_pattern, &p), -1);
    ck_assert_ptr_null(bn_pcache_lookup(c, ids[7], 20, &m));
    ck_assert(bn_pcache_bytes(c) <= 3 * one + one / 2);
    ck_assert_int_eq(put(c, ids[7], 20, STATE), 1);

    /* clear: one CLEAR event, empty */
    r.n = 0;
    bn_pcache_clear(c);
    ck_assert(r.n == 1 && r.ev[0].op == BN_CACHE_CLEAR && r.ev[0].entry == 0);
    ck_assert_int_eq(bn_pcache_count(c), 0);
    ck_assert_int_eq(bn_pcache_bytes(c), 0);
    ck_assert_ptr_null(bn_pcache_lookup(c, ids[7], 20, &m));
    bn_pcache_free(c);

    /* budget 0: never stores */
    c = bn_pcache_new(0, 1, NULL, NULL);
    ck_assert_int_eq(put(c, ids[0], 20, 0), 0);
    bn_pcache_free(c);
}
END_TEST

START_TEST(an_extended_conversation_replaces_its_entry)
{
    recorder r = {0};
    bn_pcache *c = bn_pcache_new(1 << 20, 16, record, &r);
    int32_t turn[100], other[30];
    uint32_t m;
    seq_ids(turn, 100, 10);
    seq_ids(other, 30, 7000);
    ck_assert_int_eq(put(c, turn, 40, STATE), 1);    /* turn 1 */
    uint64_t id1 = r.ev[0].entry;
    ck_assert_int_eq(put(c, other, 30, STATE), 1);   /* another conversation */
    uint64_t id_other = r.ev[1].entry;
    ck_assert_int_eq(put(c, turn, 70, STATE), 1);    /* turn 2 extends turn 1: same entry id */
    ck_assert_int_eq(r.n, 3);
    ck_assert(r.ev[2].op == BN_CACHE_ADD && r.ev[2].entry == id1 && r.ev[2].n_ids == 70);
    ck_assert_int_eq(bn_pcache_count(c), 2);
    const bn_pcache_entry *e = bn_pcache_lookup(c, turn, 100, &m);
    ck_assert(e && m == 70 && e->id == id1 && e->n_ids == 70 && state_ok(e));

    /* a put that an entry already covers (a prefix of it) stores nothing and touches it */
    ck_assert_int_eq(put(c, turn, 50, STATE), 0);
    ck_assert_int_eq(r.n, 3);
    ck_assert_int_eq(bn_pcache_count(c), 2);

    /* a branch of turn 1 (same 40, then different) is a new entry; the old ones stay */
    int32_t branch[60];
    memcpy(branch, turn, 40 * sizeof *branch);
    seq_ids(branch + 40, 20, 3000);
    ck_assert_int_eq(put(c, branch, 60, STATE), 1);
    ck_assert(r.ev[3].op == BN_CACHE_ADD && r.ev[3].entry != id1 && r.ev[3].entry != id_other);
    ck_assert_int_eq(bn_pcache_count(c), 3);

    /* what the branch and the 70 share is covered: nothing */
    ck_assert_int_eq(put(c, turn, 20, STATE), 0);
    ck_assert_int_eq(r.n, 4);
    bn_pcache_free(c);
}
END_TEST

/* Along a conversation the entry id stays the same, so the master's mirror has one entry per
 * conversation, not one per turn. */
START_TEST(ids_are_stable_along_a_conversation)
{
    recorder r = {0};
    bn_pcache *c = bn_pcache_new(1 << 20, 1, record, &r);
    int32_t ids[100];
    seq_ids(ids, 100, 1);
    ck_assert_int_eq(put(c, ids, 20, STATE), 1);
    ck_assert_int_eq(put(c, ids, 30, STATE), 1);
    ck_assert_int_eq(put(c, ids, 100, STATE), 1);
    ck_assert_int_eq(r.n, 3);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(r.ev[i].op, BN_CACHE_ADD);
    ck_assert(r.ev[0].entry == r.ev[1].entry && r.ev[1].entry == r.ev[2].entry);
    ck_assert_int_eq(r.ev[2].n_ids, 100);
    ck_assert_int_eq(bn_pcache_count(c), 1);
    bn_pcache_free(c);
}
END_TEST

/* ---- the engine's sequence state ------------------------------------------------------- */

static bn_model *m_tiny;

static bn_engine *tiny_engine(uint32_t n_seq)
{
    bn_engine_opts o;
    bn_engine_opts_default(&o);
    o.n_threads = 1;
    o.n_seq = n_seq;
    o.lm_head = BN_LM_HEAD_F16;
    bn_engine *e = NULL;
    bn_error err = {{0}};
    ck_assert_msg(bn_engine_create(m_tiny, &o, &e, &err) == 0, "%s", err.msg);
    return e;
}

/* Runs ids[0..n) at the end of seq and returns the last token's logits in out. */
static void run_seq(bn_engine *e, uint32_t seq, const int32_t *ids, uint32_t n, float *out)
{
    bn_batch_tok t[256];
    ck_assert(n <= 256);
    for (uint32_t i = 0; i < n; i++) t[i] = (bn_batch_tok){ids[i], seq, i + 1 == n};
    bn_error err = {{0}};
    ck_assert_msg(bn_engine_eval_batch(e, t, n, out, &err) == 0, "%s", err.msg);
}

START_TEST(engine_state_round_trip)
{
    bn_engine *e = tiny_engine(3);
    const bn_config *cfg = &bn_engine_model(e)->cfg;
    uint32_t nv = cfg->n_vocab;
    float *ref = malloc(nv * sizeof *ref), *got = malloc(nv * sizeof *got);
    int32_t p[60];
    for (uint32_t i = 0; i < 60; i++) p[i] = (int32_t)((i * 97u + 13u) % nv);
    bn_error err = {{0}};

    size_t b40 = bn_engine_seq_state_bytes(e, 40);
    ck_assert_int_eq(b40, 2ull * cfg->n_layer * 40 * cfg->n_head_kv * cfg->head_dim * 2);
    ck_assert_int_eq(bn_engine_seq_state_bytes(e, 0), 0);

    /* reference: all 60 in sequence 0 */
    run_seq(e, 0, p, 40, ref);
    uint8_t *state = malloc(b40);
    ck_assert_msg(bn_engine_seq_save(e, 0, 40, state, &err) == 0, "%s", err.msg);
    run_seq(e, 0, p + 40, 20, ref);

    /* 25 of the 40 saved positions into sequence 1, the rest recomputed: bit-identical */
    ck_assert_msg(bn_engine_seq_load(e, 1, p, 25, state, 40, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(bn_engine_seq_n_past(e, 1), 25);
    ck_assert(memcmp(bn_engine_seq_cached_ids(e, 1), p, 25 * sizeof *p) == 0);
    run_seq(e, 1, p + 25, 35, got);
    ck_assert_msg(memcmp(got, ref, nv * sizeof *got) == 0, "loaded 25 of 40: logits differ");

    /* all 40 into sequence 2 (over content it had), then the last 20 */
    run_seq(e, 2, p + 30, 10, got);
    ck_assert_msg(bn_engine_seq_load(e, 2, p, 40, state, 40, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(bn_engine_seq_keep_prefix(e, 2, p, 60), 40);
    run_seq(e, 2, p + 40, 20, got);
    ck_assert_msg(memcmp(got, ref, nv * sizeof *got) == 0, "loaded 40: logits differ");

    /* a save of fewer positions than cached is the same bytes as the start of each layer's rows */
    uint8_t *s10 = malloc(bn_engine_seq_state_bytes(e, 10));
    ck_assert(bn_engine_seq_save(e, 2, 10, s10, &err) == 0);
    ck_assert(bn_engine_seq_load(e, 1, p, 10, s10, 10, &err) == 0);
    run_seq(e, 1, p + 10, 50, got);
    ck_assert_msg(memcmp(got, ref, nv * sizeof *got) == 0, "saved 10: logits differ");

    /* bad calls fail with a message and change nothing */
#define REFUSED(call)                                                                          \
    do {                                                                                       \
        err.msg[0] = 0;                                                                        \
        ck_assert_msg((call) != 0, "%s: accepted", #call);                                     \
        ck_assert_msg(err.msg[0] != 0, "%s: no message", #call);                               \
    } while (0)
    uint32_t before = bn_engine_seq_n_past(e, 1);
    REFUSED(bn_engine_seq_save(e, 3, 1, state, &err));          /* no such sequence */
    REFUSED(bn_engine_seq_save(e, 0, 61, state, &err));         /* more than it holds */
    REFUSED(bn_engine_seq_load(e, 3, p, 1, state, 40, &err));
    REFUSED(bn_engine_seq_load(e, 1, p, 41, state, 40, &err));  /* more than was saved */
    REFUSED(bn_engine_seq_load(e, 1, p, 1, state, bn_engine_n_ctx(e) + 1, &err));
    int32_t bad[2] = {0, (int32_t)nv};
    REFUSED(bn_engine_seq_load(e, 1, bad, 2, state, 40, &err));
    ck_assert_int_eq(bn_engine_seq_n_past(e, 1), before);
    /* zero positions: an empty sequence */
    ck_assert(bn_engine_seq_save(e, 0, 0, NULL, &err) == 0);
    ck_assert(bn_engine_seq_load(e, 1, p, 0, NULL, 0, &err) == 0);
    ck_assert_int_eq(bn_engine_seq_n_past(e, 1), 0);
#undef REFUSED
    free(s10);
    free(state);
    free(ref);
    free(got);
    bn_engine_free(e);
}
END_TEST

/* What the worker does: save through the cache's fill callback, look the prompt up, load. */
typedef struct save_ctx {
    bn_engine *e;
    uint32_t seq, n;
} save_ctx;

static int fill_engine(void *buf, size_t bytes, void *user)
{
    save_ctx *s = user;
    bn_error err;
    ck_assert_int_eq(bytes, bn_engine_seq_state_bytes(s->e, s->n));
    return bn_engine_seq_save(s->e, s->seq, s->n, buf, &err);
}

START_TEST(engine_state_through_the_cache)
{
    bn_engine *e = tiny_engine(2);
    uint32_t nv = bn_engine_model(e)->cfg.n_vocab;
    float *ref = malloc(nv * sizeof *ref), *got = malloc(nv * sizeof *got);
    int32_t p[80];
    for (uint32_t i = 0; i < 80; i++) p[i] = (int32_t)((i * 31u + 7u) % nv);
    run_seq(e, 0, p, 50, ref);
    bn_pcache *c = bn_pcache_new(64u << 20, 16, NULL, NULL);
    save_ctx s = {e, 0, 50};
    ck_assert_int_eq(bn_pcache_put(c, bn_engine_seq_cached_ids(e, 0), 50,
                                   bn_engine_seq_state_bytes(e, 50), fill_engine, &s), 1);
    run_seq(e, 0, p + 50, 30, ref);
    uint32_t m;
    const bn_pcache_entry *ce = bn_pcache_lookup(c, p, 80, &m);
    ck_assert(ce && m == 50);
    bn_error err = {{0}};
    ck_assert(bn_engine_seq_load(e, 1, p, m, ce->state, ce->n_ids, &err) == 0);
    run_seq(e, 1, p + 50, 30, got);
    ck_assert_msg(memcmp(got, ref, nv * sizeof *got) == 0, "through the cache: logits differ");
    bn_pcache_free(c);
    free(ref);
    free(got);
    bn_engine_free(e);
}
END_TEST

static Suite *pcache_suite(void)
{
    Suite *s = suite_create("prompt_cache");
    TCase *tc = tcase_create("cache");
    tcase_add_test(tc, lookup_takes_the_longest_common_prefix);
    tcase_add_test(tc, lru_eviction_keeps_the_budget);
    tcase_add_test(tc, an_extended_conversation_replaces_its_entry);
    tcase_add_test(tc, ids_are_stable_along_a_conversation);
    suite_add_tcase(s, tc);
    TCase *te = tcase_create("engine state");
    tcase_add_test(te, engine_state_round_trip);
    tcase_add_test(te, engine_state_through_the_cache);
    suite_add_tcase(s, te);
    return s;
}

int main(void)
{
    char tiny[512];
    snprintf(tiny, sizeof tiny, "%s", bn_test_path("pcache_tiny.bnpk"));
    if (bn_tw_open_model("test_prompt_cache", "tiny", tiny, &m_tiny, NULL)) return EXIT_FAILURE;
    int failed = bn_tw_run_nofork(pcache_suite());
    bn_model_close(m_tiny);
    remove(tiny);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
