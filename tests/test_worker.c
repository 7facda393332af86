/* The worker with slots and the prompt cache (src/server/worker.c), as the master drives it:
 * real worker processes over the tiny synthetic model, fed frames on a socketpair.
 *
 *  - several GENERATEs decoded together give, per request, exactly the frames' ids and text of
 *    the same request run alone on a one-slot worker (greedy, seeded sampling, a stop string);
 *  - a CANCEL ends one slot, the others finish unchanged; a GENERATE beyond n_slots is an ERROR
 *    for that id only;
 *  - a finished request is announced with CACHE ADD; a later prompt with the same prefix is
 *    served from the RAM cache (DONE n_cached), bit-identically, and replaces the entry; RESET
 *    clears both caches (CACHE CLEAR), also while a request runs;
 *  - EOF with active slots: the worker exits 0.
 *
 * libgomp is not fork-safe: every worker is forked in main(), before this process could run an
 * OpenMP region (it never creates an engine). Every wait is bounded by poll() timeouts, and the
 * workers are killed and reaped at the end whatever happened. */
#include <check.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "worker_harness.h"

#define MAX_IDS 512

typedef struct cache_ev {
    uint32_t op;
    uint64_t entry;
    uint32_t n_ids;
    int32_t ids[MAX_IDS];
} cache_ev;

typedef struct tworker {
    bn_tw c;             /* the channel to the process */
    cache_ev cache[64];  /* CACHE frames since the last cache_reset */
    int n_cache;
} tworker;

static bn_model *m_tiny;
static bn_tokenizer *tk_tiny;
static tworker w1 = {.c = {.name = "1 slot", .pid = -1, .fd = -1}},
               w4 = {.c = {.name = "4 slots", .pid = -1, .fd = -1}},
               wc = {.c = {.name = "2 slots + prompt cache", .pid = -1, .fd = -1}};

/* ---- talking to a worker --------------------------------------------------------------- */

static void put_simple(bn_buf *b, uint16_t type, uint64_t id)
{
    ck_assert(bn_frame_put(b, type, id, NULL, 0) == 0);
}

/* A request as the tests describe it. */
typedef struct req {
    uint64_t id;
    const int32_t *prompt;
    uint32_t n_prompt, max_tokens;
    int ignore_eos;
    int sampled;         /* seeded sampling with every filter and penalty, else greedy */
    uint64_t seed;
    const char *stop;    /* NULL: none */
} req;

static void put_generate(bn_buf *b, const req *q)
{
    bn_fr_generate g;
    memset(&g, 0, sizeof g);
    if (q->sampled) {
        bn_sampling_default(&g.sampling);
        g.sampling.repeat_penalty = 1.1f;
        g.sampling.presence_penalty = 0.2f;
        g.sampling.frequency_penalty = 0.1f;
        g.sampling.seed = q->seed;
    } else {
        bn_sampling_greedy(&g.sampling);
    }
    g.max_tokens = q->max_tokens;
    g.flags = q->ignore_eos ? BN_GENF_IGNORE_EOS : 0;
    g.n_prompt = q->n_prompt;
    g.n_stop = q->stop ? 1 : 0;
    ck_assert(bn_frame_put_generate(b, q->id, &g, q->prompt, &q->stop) == 0);
}

/* What came back for one request. */
typedef struct result {
    uint64_t id;
    int done, error;
    bn_fr_done d;
    uint32_t err_code;
    char err_msg[256];
    int32_t ids[MAX_IDS];
    uint32_t n_ids, n_progress;
    char text[16384];
    size_t text_len;
    long first_chunk_seq, end_seq;   /* order of events on the channel (frame numbers) */
} result;

static int ended(const result *r) { return r->done || r->error; }

/* Reads frames into rs[0..n) (by id; CACHE frames into w->cache) until every one has ended,
 * or, if until_chunks > 0, until request rs[0] has that many ids. Frames for other ids fail. */
static void pump(tworker *w, result **rs, int n, uint32_t until_chunks)
{
    static long seq;
    for (;;) {
        int open = 0;
        for (int i = 0; i < n; i++) open += !ended(rs[i]);
        if (!open || (until_chunks && rs[0]->n_ids >= until_chunks)) return;
        bn_frame f;
        bn_error err = {{0}};
        ck_assert_msg(bn_tw_next_frame(&w->c, &f), "worker %s: no frame while %d requests are open", w->c.name, open);
        seq++;
        if (f.type == BN_FR_CACHE) {
            bn_cache_view v;
            ck_assert_msg(bn_frame_get_cache(&f, &v, &err) == 0, "%s", err.msg);
            ck_assert(f.id == 0 && w->n_cache < 64 && v.c.n_ids <= MAX_IDS);
            cache_ev *e = &w->cache[w->n_cache++];
            e->op = v.c.op;
            e->entry = v.c.entry;
            e->n_ids = v.c.n_ids;
            memcpy(e->ids, v.ids, v.c.n_ids * sizeof(int32_t));
            continue;
        }
        result *r = NULL;
        for (int i = 0; i < n; i++)
            if (rs[i]->id == f.id) r = rs[i];
        ck_assert_msg(r != NULL, "worker %s: frame type %u for unexpected id %llu", w->c.name, f.type,
                      (unsigned long long)f.id);
        ck_assert_msg(!ended(r), "worker %s: frame type %u after the end of %llu", w->c.name, f.type,
                      (unsigned long long)f.id);
        switch (f.type) {
        case BN_FR_PROGRESS: {
            bn_fr_progress p;
            ck_assert(bn_frame_get_fixed(&f, &p, sizeof p, &err) == 0);
            ck_assert(p.done <= p.total && r->n_ids == 0);
            r->n_progress++;
            break;
        }
        case BN_FR_CHUNK: {
            bn_chunk_view v;
            ck_assert_msg(bn_frame_get_chunk(&f, &v, &err) == 0, "%s", err.msg);
            ck_assert(v.n_ids <= 1 && r->n_ids + v.n_ids <= MAX_IDS);
            ck_assert(r->text_len + v.text_len < sizeof r->text);
            if (!r->first_chunk_seq) r->first_chunk_seq = seq;
            memcpy(r->ids + r->n_ids, v.ids, v.n_ids * sizeof(int32_t));
            r->n_ids += v.n_ids;
            memcpy(r->text + r->text_len, v.text, v.text_len);
            r->text_len += v.text_len;
            r->text[r->text_len] = 0;
            break;
        }
        case BN_FR_DONE:
            ck_assert(bn_frame_get_fixed(&f, &r->d, sizeof r->d, &err) == 0);
            ck_assert_int_eq(r->d.n_completion, r->n_ids);
            r->done = 1;
            r->end_seq = seq;
            break;
        case BN_FR_ERROR:
            r->error = 1;
            r->err_code = bn_tw_error_of(&f, r->err_msg, sizeof r->err_msg);
            r->end_seq = seq;
            break;
        default:
            ck_abort_msg("worker %s: unexpected frame type %u", w->c.name, f.type);
        }
    }
}

static result *new_result(uint64_t id)
{
    result *r = calloc(1, sizeof *r);
    ck_assert_ptr_nonnull(r);
    r->id = id;
    return r;
}

/* Runs the requests qs[0..n) at once (one write) and returns their results. */
static void run_together(tworker *w, const req *qs, int n, result **rs)
{
    bn_buf b = {0};
    for (int i = 0; i < n; i++) {
        put_generate(&b, &qs[i]);
        rs[i] = new_result(qs[i].id);
    }
    bn_tw_send(&w->c, &b);
    bn_buf_free(&b);
    pump(w, rs, n, 0);
}

static result *run_one(tworker *w, const req *q)
{
    result *r;
    run_together(w, q, 1, &r);
    return r;
}

static void send_reset(tworker *w)
{
    bn_tw_send_simple(&w->c, BN_FR_RESET, 0);
}

static void assert_done(const result *r, const char *what)
{
    ck_assert_msg(r->done, "%s (id %llu): no DONE (error %d code %u: %s)", what,
                  (unsigned long long)r->id, r->error, r->err_code, r->err_msg);
}

/* The same output: ids, text, finish and counts (not n_cached, which depends on history). */
static void assert_same(const result *a, const result *b, const char *what)
{
    assert_done(a, what);
    assert_done(b, what);
    ck_assert_msg(a->n_ids == b->n_ids, "%s: %u vs %u ids", what, a->n_ids, b->n_ids);
    for (uint32_t i = 0; i < a->n_ids; i++)
        ck_assert_msg(a->ids[i] == b->ids[i], "%s: token %u: %d vs %d", what, i, a->ids[i], b->ids[i]);
    ck_assert_msg(a->text_len == b->text_len && memcmp(a->text, b->text, a->text_len) == 0,
                  "%s: text differs", what);
    ck_assert_int_eq(a->d.finish, b->d.finish);
    ck_assert_int_eq(a->d.n_prompt, b->d.n_prompt);
    ck_assert_int_eq(a->d.stop_id, b->d.stop_id);
    ck_assert_int_eq(a->d.stop_index, b->d.stop_index);
}

/* Prompts of byte-range ids that share no first token (no accidental common prefix). */
static void make_prompt(int32_t *p, uint32_t n, uint32_t seed)
{
    for (uint32_t i = 0; i < n; i++) p[i] = (int32_t)(32 + (seed * 53u + i * 37u + i * i * 7u) % 200u);
}

/* ---- the tests ------------------------------------------------------------------------- */

START_TEST(hello_reports_the_slots)
{
    bn_tw_wait_hello(&w1.c);
    bn_tw_wait_hello(&w4.c);
    bn_tw_wait_hello(&wc.c);
    ck_assert_int_eq(w1.c.hello.n_slots, 1);
    ck_assert_int_eq(w4.c.hello.n_slots, 4);
    ck_assert_int_eq(wc.c.hello.n_slots, 2);
    ck_assert(w4.c.hello.kv_bytes >= 4 * w1.c.hello.kv_bytes - 4096);   /* a region per slot */
}
END_TEST

START_TEST(slots_decode_bit_identically_to_one_at_a_time)
{
    static int32_t p[4][80];
    uint32_t len[4] = {23, 61, 8, 40};
    for (int i = 0; i < 4; i++) make_prompt(p[i], len[i], (uint32_t)i + 1);
    req qs[4] = {
        {.id = 101, .prompt = p[0], .n_prompt = len[0], .max_tokens = 40, .ignore_eos = 1},
        {.id = 102, .prompt = p[1], .n_prompt = len[1], .max_tokens = 30, .sampled = 1, .seed = 7,
         .ignore_eos = 1},
        {.id = 103, .prompt = p[2], .n_prompt = len[2], .max_tokens = 50, .sampled = 1, .seed = 99},
        {.id = 104, .prompt = p[3], .n_prompt = len[3], .max_tokens = 35, .ignore_eos = 1},
    };
    bn_tw_wait_hello(&w1.c);
    bn_tw_wait_hello(&w4.c);

    /* alone, one at a time, on the one-slot worker (each from an empty cache) */
    result *alone[4], *together[4];
    for (int i = 0; i < 4; i++) {
        send_reset(&w1);
        alone[i] = run_one(&w1, &qs[i]);
        assert_done(alone[i], "alone");
        ck_assert_int_eq(alone[i]->d.n_cached, 0);
    }
    /* a stop string from the middle of request 4's text (two characters), so it ends on it */
    char stop[16] = "";
    const char *t = alone[3]->text;
    size_t tl = alone[3]->text_len, k = tl / 2, e;
    while (k > 0 && ((unsigned char)t[k] & 0xc0) == 0x80) k--;
    for (e = k + 1; e < tl && ((unsigned char)t[e] & 0xc0) == 0x80; e++) {}
    for (e = e < tl ? e + 1 : e; e < tl && ((unsigned char)t[e] & 0xc0) == 0x80; e++) {}
    if (tl >= 4 && e - k < sizeof stop && !memchr(t + k, 0, e - k)) {
        memcpy(stop, t + k, e - k);
        qs[3].stop = stop;
        free(alone[3]);
        send_reset(&w1);
        alone[3] = run_one(&w1, &qs[3]);
        assert_done(alone[3], "alone with a stop string");
        ck_assert_int_eq(alone[3]->d.finish, BN_FINISH_STOP);
        ck_assert_int_eq(alone[3]->d.stop_index, 0);
        ck_assert(alone[3]->n_ids < 35);
    }
    if (!qs[3].stop) fprintf(stderr, "test_worker: the tiny model's text is too short for a stop string: none used\n");

    /* together on the four-slot worker */
    send_reset(&w4);
    run_together(&w4, qs, 4, together);
    for (int i = 0; i < 4; i++) {
        char what[64];
        snprintf(what, sizeof what, "request %llu, 4 slots vs alone", (unsigned long long)qs[i].id);
        assert_same(together[i], alone[i], what);
        ck_assert_int_eq(together[i]->d.n_cached, 0);
        ck_assert_int_eq(together[i]->d.n_past, alone[i]->d.n_past);
        ck_assert(together[i]->n_progress >= 1);
    }
    /* they really ran together: each one's first token came before any of them ended (those
     * that ignore eos: 103 may end at any token) */
    long first_end = LONG_MAX;
    for (int i = 0; i < 4; i++)
        if (qs[i].ignore_eos && together[i]->end_seq < first_end) first_end = together[i]->end_seq;
    for (int i = 0; i < 4; i++)
        ck_assert_msg(together[i]->first_chunk_seq && together[i]->first_chunk_seq < first_end,
                      "request %d started after another ended", i);

    /* and again, now with every sequence holding something: the same again */
    result *again[4];
    run_together(&w4, qs, 4, again);
    for (int i = 0; i < 4; i++) assert_same(again[i], alone[i], "second round on 4 slots");
    ck_assert_msg(again[0]->d.n_cached > 0, "the repeated prompt reused nothing");
    for (int i = 0; i < 4; i++) {
        free(alone[i]);
        free(together[i]);
        free(again[i]);
    }
}
END_TEST

START_TEST(cancel_of_one_slot_leaves_the_others)
{
    static int32_t p[3][40];
    for (int i = 0; i < 3; i++) make_prompt(p[i], 30, 10 + (uint32_t)i);
    req qs[3] = {
        {.id = 202, .prompt = p[1], .n_prompt = 30, .max_tokens = 150, .ignore_eos = 1},
        {.id = 201, .prompt = p[0], .n_prompt = 30, .max_tokens = 60, .ignore_eos = 1},
        {.id = 203, .prompt = p[2], .n_prompt = 30, .max_tokens = 60, .ignore_eos = 1, .sampled = 1,
         .seed = 3},
    };
    bn_tw_wait_hello(&w4.c);
    send_reset(&w4);
    bn_buf b = {0};
    result *rs[3];
    for (int i = 0; i < 3; i++) {
        put_generate(&b, &qs[i]);
        rs[i] = new_result(qs[i].id);
    }
    bn_tw_send(&w4.c, &b);
    pump(&w4, rs, 3, 2);   /* 202 has two tokens */
    ck_assert(!ended(rs[0]));
    put_simple(&b, BN_FR_CANCEL, 202);
    put_simple(&b, BN_FR_CANCEL, 999);   /* not running: ignored */
    bn_tw_send(&w4.c, &b);
    pump(&w4, rs, 3, 0);
    assert_done(rs[0], "cancelled");
    ck_assert_int_eq(rs[0]->d.finish, BN_FINISH_CANCELLED);
    ck_assert(rs[0]->d.n_completion >= 2 && rs[0]->d.n_completion < 150);
    for (int i = 1; i < 3; i++) {
        assert_done(rs[i], "beside the cancelled one");
        ck_assert_int_eq(rs[i]->d.finish, BN_FINISH_LENGTH);
        ck_assert_int_eq(rs[i]->n_ids, 60);
        send_reset(&w1);
        result *alone = run_one(&w1, &qs[i]);
        assert_same(rs[i], alone, "beside a cancel vs alone");
        free(alone);
    }
    /* the cancelled one's tokens are a prefix of its uncancelled run */
    qs[0].max_tokens = rs[0]->n_ids;
    send_reset(&w1);
    result *alone = run_one(&w1, &qs[0]);
    ck_assert(alone->n_ids == rs[0]->n_ids &&
              memcmp(alone->ids, rs[0]->ids, alone->n_ids * sizeof(int32_t)) == 0);
    free(alone);
    for (int i = 0; i < 3; i++) free(rs[i]);
    bn_buf_free(&b);
}
END_TEST

START_TEST(generate_beyond_the_slots_is_refused_for_its_id_only)
{
    static int32_t p[5][20];
    req qs[5];
    for (int i = 0; i < 5; i++) {
        make_prompt(p[i], 20, 20 + (uint32_t)i);
        qs[i] = (req){.id = 301 + (uint64_t)i, .prompt = p[i], .n_prompt = 20, .max_tokens = 12,
                      .ignore_eos = 1};
    }
    bn_tw_wait_hello(&w4.c);
    result *rs[5];
    run_together(&w4, qs, 5, rs);
    for (int i = 0; i < 4; i++) {
        assert_done(rs[i], "within the slots");
        ck_assert_int_eq(rs[i]->n_ids, 12);
    }
    ck_assert_msg(rs[4]->error && rs[4]->err_code == BN_FRERR_BAD_REQUEST, "done %d code %u",
                  rs[4]->done, rs[4]->err_code);
    ck_assert_msg(strstr(rs[4]->err_msg, "slots"), "%s", rs[4]->err_msg);
    ck_assert_int_eq(rs[4]->n_ids, 0);
    for (int i = 0; i < 5; i++) free(rs[i]);

    /* a malformed GENERATE and a bad prompt among good ones: refused alone, the others run */
    req good[2] = {qs[0], qs[1]};
    good[0].id = 311;
    good[1].id = 313;
    int32_t bad_ids[3] = {1, 100000, 2};
    req bad = {.id = 312, .prompt = bad_ids, .n_prompt = 3, .max_tokens = 5};
    bn_buf b = {0};
    put_generate(&b, &good[0]);
    put_generate(&b, &bad);
    ck_assert(bn_frame_put(&b, BN_FR_GENERATE, 314, "short", 5) == 0);
    put_generate(&b, &good[1]);
    bn_tw_send(&w4.c, &b);
    bn_buf_free(&b);
    result *r[4] = {new_result(311), new_result(312), new_result(314), new_result(313)};
    pump(&w4, r, 4, 0);
    assert_done(r[0], "before a bad request");
    assert_done(r[3], "after a bad request");
    ck_assert(r[1]->error && r[1]->err_code == BN_FRERR_BAD_REQUEST);
    ck_assert(r[2]->error && r[2]->err_code == BN_FRERR_BAD_REQUEST);
    ck_assert_int_eq(r[0]->n_ids, 12);
    ck_assert_int_eq(r[3]->n_ids, 12);
    for (int i = 0; i < 4; i++) free(r[i]);
}
END_TEST

static const cache_ev *last_cache(const tworker *w, uint32_t op)
{
    for (int i = w->n_cache - 1; i >= 0; i--)
        if (w->cache[i].op == op) return &w->cache[i];
    return NULL;
}

START_TEST(the_prompt_cache_serves_a_second_turn)
{
    static int32_t pa[40], pb[30], pc[30], turn2[80];
    make_prompt(pa, 40, 31);
    make_prompt(pb, 30, 32);
    make_prompt(pc, 30, 33);
    bn_tw_wait_hello(&wc.c);
    bn_tw_wait_hello(&w1.c);
    send_reset(&wc);
    wc.n_cache = 0;

    /* turn 1 of conversation A: announced as an entry of prompt ++ generated (n_past ids) */
    req a = {.id = 401, .prompt = pa, .n_prompt = 40, .max_tokens = 10, .ignore_eos = 1};
    result *ra = run_one(&wc, &a);
    assert_done(ra, "turn 1");
    ck_assert_int_eq(ra->d.n_cached, 0);
    ck_assert_int_eq(ra->d.n_past, 49);
    ck_assert_msg(wc.n_cache == 2, "%d CACHE frames (CLEAR, ADD expected)", wc.n_cache);
    ck_assert(wc.cache[0].op == BN_CACHE_CLEAR);   /* the RESET */
    const cache_ev *add = &wc.cache[1];
    ck_assert(add->op == BN_CACHE_ADD && add->entry != 0 && add->n_ids == 49);
    ck_assert(memcmp(add->ids, pa, 40 * sizeof *pa) == 0);
    ck_assert(memcmp(add->ids + 40, ra->ids, 9 * sizeof *pa) == 0);
    uint64_t entry_a = add->entry;

    /* two other conversations take both sequences (the second overwrites A's) */
    req b = {.id = 402, .prompt = pb, .n_prompt = 30, .max_tokens = 8, .ignore_eos = 1};
    req c = {.id = 403, .prompt = pc, .n_prompt = 30, .max_tokens = 8, .ignore_eos = 1};
    result *rb = run_one(&wc, &b), *rc = run_one(&wc, &c);
    assert_done(rb, "B");
    assert_done(rc, "C");
    ck_assert_int_eq(rb->d.n_cached, 0);
    ck_assert_int_eq(rc->d.n_cached, 0);
    ck_assert_int_eq(wc.n_cache, 4);
    ck_assert(wc.cache[2].op == BN_CACHE_ADD && wc.cache[3].op == BN_CACHE_ADD);
    ck_assert(wc.cache[2].entry != entry_a && wc.cache[3].entry != entry_a &&
              wc.cache[2].entry != wc.cache[3].entry);

    /* turn 2 of A: its prefix comes from the RAM cache, and the output is exact */
    memcpy(turn2, pa, 40 * sizeof *pa);
    memcpy(turn2 + 40, ra->ids, 10 * sizeof *pa);
    make_prompt(turn2 + 50, 12, 34);
    req a2 = {.id = 404, .prompt = turn2, .n_prompt = 62, .max_tokens = 15, .ignore_eos = 1,
              .sampled = 1, .seed = 5};
    result *r2 = run_one(&wc, &a2);
    assert_done(r2, "turn 2");
    ck_assert_int_eq(r2->d.n_cached, 49);
    send_reset(&w1);
    result *alone = run_one(&w1, &a2);
    assert_same(r2, alone, "turn 2 from the prompt cache vs recomputed");
    ck_assert_int_eq(alone->d.n_cached, 0);
    /* its entry replaces turn 1's: the same entry id, the longer ids */
    add = last_cache(&wc, BN_CACHE_ADD);
    ck_assert_int_eq(wc.n_cache, 5);
    ck_assert(add->entry == entry_a && add->n_ids == 62 + 14);
    ck_assert(memcmp(add->ids, turn2, 62 * sizeof *turn2) == 0);

    /* the same prompt again: all but its last token are cached; none after RESET */
    a2.id = 405;
    result *r3 = run_one(&wc, &a2);
    ck_assert_int_eq(r3->d.n_cached, 61);
    assert_same(r3, alone, "turn 2 again");
    wc.n_cache = 0;
    send_reset(&wc);
    a2.id = 406;
    result *r4 = run_one(&wc, &a2);
    ck_assert_int_eq(r4->d.n_cached, 0);
    assert_same(r4, alone, "turn 2 after RESET");
    ck_assert_int_eq(wc.n_cache, 2);
    ck_assert(wc.cache[0].op == BN_CACHE_CLEAR && wc.cache[1].op == BN_CACHE_ADD);

    /* RESET while a request runs: CLEAR now, and what it leaves is neither kept nor cached */
    wc.n_cache = 0;
    bn_buf buf = {0};
    req e = {.id = 407, .prompt = pb, .n_prompt = 30, .max_tokens = 20, .ignore_eos = 1};
    put_generate(&buf, &e);
    put_simple(&buf, BN_FR_RESET, 0);
    bn_tw_send(&wc.c, &buf);
    bn_buf_free(&buf);
    result *re = new_result(407);
    pump(&wc, &re, 1, 0);
    assert_done(re, "reset while running");
    ck_assert_msg(wc.n_cache == 1 && wc.cache[0].op == BN_CACHE_CLEAR, "%d CACHE frames", wc.n_cache);
    e.id = 408;
    result *rf = run_one(&wc, &e);
    ck_assert_int_eq(rf->d.n_cached, 0);
    assert_same(rf, re, "after a RESET while running");
    free(ra);
    free(rb);
    free(rc);
    free(r2);
    free(r3);
    free(r4);
    free(re);
    free(rf);
    free(alone);
}
END_TEST

START_TEST(eof_with_active_slots_exits)
{
    static int32_t p[2][30];
    make_prompt(p[0], 30, 41);
    make_prompt(p[1], 30, 42);
    req qs[2] = {{.id = 501, .prompt = p[0], .n_prompt = 30, .max_tokens = 200, .ignore_eos = 1},
                 {.id = 502, .prompt = p[1], .n_prompt = 30, .max_tokens = 200, .ignore_eos = 1}};
    bn_tw_wait_hello(&w4.c);
    bn_buf b = {0};
    put_generate(&b, &qs[0]);
    put_generate(&b, &qs[1]);
    bn_tw_send(&w4.c, &b);
    bn_buf_free(&b);
    result *rs[2] = {new_result(501), new_result(502)};
    pump(&w4, rs, 2, 1);
    ck_assert(!ended(rs[0]) && !ended(rs[1]));
    close(w4.c.fd);
    w4.c.fd = -1;
    int st = bn_tw_reap(w4.c.pid, BN_TW_WAIT_MS);
    ck_assert_msg(st != -1, "the 4-slot worker did not exit after EOF");
    w4.c.pid = -1;
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x", st);
    free(rs[0]);
    free(rs[1]);
}
END_TEST

/* ---- set-up ---------------------------------------------------------------------------- */

static Suite *worker_suite(void)
{
    Suite *s = suite_create("worker");
    TCase *tc = tcase_create("slots");   /* in order: the last test closes the 4-slot worker */
    tcase_add_test(tc, hello_reports_the_slots);
    tcase_add_test(tc, slots_decode_bit_identically_to_one_at_a_time);
    tcase_add_test(tc, cancel_of_one_slot_leaves_the_others);
    tcase_add_test(tc, generate_beyond_the_slots_is_refused_for_its_id_only);
    tcase_add_test(tc, the_prompt_cache_serves_a_second_turn);
    tcase_add_test(tc, eof_with_active_slots_exits);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    char tiny[512];
    snprintf(tiny, sizeof tiny, "%s", bn_test_path("worker_tiny.bnpk"));
    if (bn_tw_open_model("test_worker", "tiny", tiny, &m_tiny, &tk_tiny)) return EXIT_FAILURE;
    enum { NW = 3 };
    bn_tw *ws[NW] = {&w1.c, &w4.c, &wc.c};
    static const uint32_t slots[NW] = {1, 4, 2};
    bn_worker_spec specs[NW];
    for (int i = 0; i < NW; i++) {
        bn_tw_spec(&specs[i], i, m_tiny, tk_tiny);
        specs[i].n_slots = slots[i];
        specs[i].prefill_chunk = 16;    /* joins take several steps: real interleaving */
    }
    specs[2].prompt_cache_bytes = 64u << 20;
    /* in order, with the workers' state shared across tests */
    int failed = bn_tw_run_suite("test_worker", worker_suite(), ws, specs, NW);
    bn_tokenizer_free(tk_tiny);
    bn_model_close(m_tiny);
    remove(tiny);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
