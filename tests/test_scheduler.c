/* The queue and the worker picker: FIFO order, bounds, removal from the middle, Retry-After, and
 * prefix-aware routing over each worker's cache entries (ties: fewest busy slots, then LRU), and
 * the slots batch requests leave to interactive ones. */
#include <check.h>
#include <stdlib.h>

#include "server/scheduler.h"

START_TEST(queue_fifo_and_bound)
{
    bn_queue q;
    bn_qnode n[4] = {{0}};
    bn_queue_init(&q, 3);
    ck_assert_ptr_null(bn_queue_pop(&q));
    for (int i = 0; i < 3; i++) ck_assert_int_eq(bn_queue_push(&q, &n[i], i), 0);
    ck_assert_int_eq(bn_queue_push(&q, &n[3], 3), -1);     /* full */
    ck_assert_int_eq(bn_queue_push(&q, &n[0], 3), -1);     /* already queued */
    ck_assert_int_eq(q.len, 3);
    ck_assert_ptr_eq(bn_queue_peek(&q), &n[0]);
    ck_assert_ptr_eq(bn_queue_pop(&q), &n[0]);
    ck_assert_int_eq(n[0].queued, 0);
    ck_assert_int_eq(bn_queue_push(&q, &n[3], 4), 0);
    ck_assert_ptr_eq(bn_queue_pop(&q), &n[1]);
    ck_assert_ptr_eq(bn_queue_pop(&q), &n[2]);
    ck_assert_ptr_eq(bn_queue_pop(&q), &n[3]);
    ck_assert_int_eq(q.len, 0);
}
END_TEST

START_TEST(queue_remove_middle)
{
    bn_queue q;
    bn_qnode n[3] = {{0}};
    bn_queue_init(&q, 8);
    for (int i = 0; i < 3; i++) bn_queue_push(&q, &n[i], 0);
    bn_queue_remove(&q, &n[1]);
    bn_queue_remove(&q, &n[1]);    /* twice: no-op */
    ck_assert_int_eq(q.len, 2);
    ck_assert_ptr_eq(bn_queue_pop(&q), &n[0]);
    ck_assert_ptr_eq(bn_queue_pop(&q), &n[2]);
    ck_assert_ptr_null(bn_queue_pop(&q));
}
END_TEST

START_TEST(retry_after_scales_with_queue)
{
    bn_queue q;
    bn_qnode n[8] = {{0}};
    bn_queue_init(&q, 8);
    ck_assert_int_eq(bn_queue_retry_after(&q, 2, 0), 1);           /* unknown service time */
    int empty = bn_queue_retry_after(&q, 2, 4.0);
    for (int i = 0; i < 8; i++) bn_queue_push(&q, &n[i], 0);
    int full = bn_queue_retry_after(&q, 2, 4.0);
    ck_assert_int_eq(empty, 4);                                     /* (0 + 2) * 4 / 2 */
    ck_assert_int_eq(full, 20);                                     /* (8 + 2) * 4 / 2 */
    ck_assert_int_le(bn_queue_retry_after(&q, 1, 1e9), 3600);
}
END_TEST

/* ids[i] = base + i for i < n: prompts and cache entries that share a prefix. */
static void seq(int32_t *ids, size_t n, int32_t base)
{
    for (size_t i = 0; i < n; i++) ids[i] = base + (int32_t)i;
}

START_TEST(pick_longest_prefix)
{
    int32_t prompt[64], a[40], b[30], c[20];
    seq(prompt, 64, 100);
    seq(a, 40, 100);
    seq(b, 30, 100);
    b[20] = -1;                       /* b shares 20 tokens */
    seq(c, 20, 7);                    /* c shares none */
    bn_sched_prefix pa = {a, 40, 1}, pb = {b, 30, 2}, pc = {c, 20, 3};
    bn_sched_worker w[3] = {
        {1, 0, 4, &pb, 1, 0.0}, {1, 3, 4, &pa, 1, 5.0}, {1, 0, 4, &pc, 1, 1.0},
    };
    size_t m = 99;
    ck_assert_int_eq(bn_sched_pick(w, 3, prompt, 64, 0, &m), 1);   /* busier, but the longest */
    ck_assert_uint_eq(m, 40);
    w[1].busy = 4;                    /* its slots are full: the next best prefix */
    ck_assert_int_eq(bn_sched_pick(w, 3, prompt, 64, 0, &m), 0);
    ck_assert_uint_eq(m, 20);
    w[0].ready = 0;                   /* retiring or starting: never picked */
    ck_assert_int_eq(bn_sched_pick(w, 3, prompt, 64, 0, &m), 2);
    ck_assert_uint_eq(m, 0);
    w[2].busy = 4;
    ck_assert_int_eq(bn_sched_pick(w, 3, prompt, 64, 0, &m), -1);
    ck_assert_uint_eq(m, 0);
    ck_assert_int_eq(bn_sched_pick(w, 0, prompt, 64, 0, NULL), -1);
}
END_TEST

START_TEST(pick_best_entry_of_many)
{
    int32_t prompt[50], e[4][50];
    seq(prompt, 50, 0);
    for (int i = 0; i < 4; i++) seq(e[i], 50, 0);
    e[0][17] = -1;                    /* 17 */
    e[1][45] = -1;                    /* 45: the best */
    e[2][0] = -1;                     /* 0 */
    e[3][30] = -1;                    /* 30 */
    bn_sched_prefix p[4] = {{e[0], 50, 10}, {e[1], 50, 11}, {e[2], 50, 12}, {e[3], 50, 13}};
    bn_sched_worker w = {1, 0, 2, p, 4, 0.0};
    int which = -7;
    ck_assert_uint_eq(bn_sched_match(&w, prompt, 50, &which), 45);
    ck_assert_int_eq(which, 1);
    ck_assert_uint_eq(bn_sched_match(&w, prompt, 20, &which), 20);    /* a prompt shorter than it */
    ck_assert_int_eq(which, 1);
    w.n_prefixes = 0;
    ck_assert_uint_eq(bn_sched_match(&w, prompt, 50, &which), 0);
    ck_assert_int_eq(which, -1);
}
END_TEST

START_TEST(pick_short_match_is_none)
{
    /* Every prompt opens with the same template header: a match shorter than
     * BN_SCHED_MIN_PREFIX must not beat a less loaded worker. */
    int32_t prompt[40], held[40];
    seq(prompt, 40, 0);
    seq(held, 40, 0);
    held[BN_SCHED_MIN_PREFIX - 1] = -1;
    bn_sched_prefix p = {held, 40, 1};
    bn_sched_worker w[2] = {{1, 2, 4, &p, 1, 0.0}, {1, 1, 4, NULL, 0, 9.0}};
    size_t m = 99;
    ck_assert_int_eq(bn_sched_pick(w, 2, prompt, 40, 0, &m), 1);
    ck_assert_uint_eq(m, 0);
    held[BN_SCHED_MIN_PREFIX - 1] = BN_SCHED_MIN_PREFIX - 1;
    held[BN_SCHED_MIN_PREFIX] = -1;   /* exactly the minimum counts */
    ck_assert_int_eq(bn_sched_pick(w, 2, prompt, 40, 0, &m), 0);
    ck_assert_uint_eq(m, BN_SCHED_MIN_PREFIX);
}
END_TEST

START_TEST(pick_ties_fewest_busy_then_lru)
{
    int32_t prompt[2] = {1, 2};
    bn_sched_worker w[3] = {{1, 1, 8, NULL, 0, 1.0}, {1, 1, 8, NULL, 0, 2.0}, {1, 3, 8, NULL, 0, 0.5}};
    ck_assert_int_eq(bn_sched_pick(w, 3, prompt, 2, 0, NULL), 0);   /* 1 busy, older than w[1] */
    w[0].last_used = 3.0;
    ck_assert_int_eq(bn_sched_pick(w, 3, prompt, 2, 0, NULL), 1);
    w[1].busy = 4;
    ck_assert_int_eq(bn_sched_pick(w, 3, prompt, 2, 0, NULL), 0);   /* fewest busy beats LRU */
    w[2].busy = 0;
    ck_assert_int_eq(bn_sched_pick(w, 3, prompt, 2, 0, NULL), 2);
}
END_TEST

START_TEST(reserved_slots_for_interactive)
{
    bn_sched_worker w = {1, 0, 4, NULL, 0, 0.0};
    ck_assert_int_eq(bn_sched_free(&w, 0), 4);
    ck_assert_int_eq(bn_sched_free(&w, 1), 3);
    w.busy = 3;                        /* one slot left: interactive only */
    ck_assert_int_eq(bn_sched_free(&w, 0), 1);
    ck_assert_int_eq(bn_sched_free(&w, 1), 0);
    int32_t prompt[1] = {5};
    ck_assert_int_eq(bn_sched_pick(&w, 1, prompt, 1, 1, NULL), -1);  /* batch waits */
    ck_assert_int_eq(bn_sched_pick(&w, 1, prompt, 1, 0, NULL), 0);   /* interactive runs */
    w.busy = 4;
    ck_assert_int_eq(bn_sched_free(&w, 0), 0);
    w.busy = 9;                        /* more than it has (a stale count): none, not negative */
    ck_assert_int_eq(bn_sched_free(&w, 0), 0);
    /* A reserve as large as the worker leaves one slot for anyone, so batch still runs. */
    w.busy = 0;
    ck_assert_int_eq(bn_sched_free(&w, 10), 1);
    bn_sched_worker one = {1, 0, 1, NULL, 0, 0.0};
    ck_assert_int_eq(bn_sched_free(&one, 1), 1);
    ck_assert_int_eq(bn_sched_free(&one, -3), 1);
    one.total = 0;                     /* not ready yet (no HELLO): nothing */
    ck_assert_int_eq(bn_sched_free(&one, 0), 0);
    one.total = 1;
    one.ready = 0;
    ck_assert_int_eq(bn_sched_free(&one, 0), 0);
}
END_TEST

START_TEST(reserved_slots_route_batch_elsewhere)
{
    /* The worker holding the prefix has only its reserved slot left: a batch request goes to
     * another worker, an interactive one still gets the prefix. */
    int32_t prompt[32], held[32];
    seq(prompt, 32, 0);
    seq(held, 32, 0);
    bn_sched_prefix p = {held, 32, 1};
    bn_sched_worker w[2] = {{1, 3, 4, &p, 1, 0.0}, {1, 2, 4, NULL, 0, 0.0}};
    size_t m;
    ck_assert_int_eq(bn_sched_pick(w, 2, prompt, 32, 1, &m), 1);
    ck_assert_uint_eq(m, 0);
    ck_assert_int_eq(bn_sched_pick(w, 2, prompt, 32, 0, &m), 0);
    ck_assert_uint_eq(m, 32);
}
END_TEST

START_TEST(auto_slots_fit_a_quarter_of_ram)
{
    const uint64_t MiB = 1 << 20, GiB = 1024 * MiB;
    ck_assert_uint_eq(bn_sched_auto_slots(2 * MiB, 8 * GiB, 1), 8);          /* tiny KV: 8 */
    ck_assert_uint_eq(bn_sched_auto_slots(256 * MiB, 8 * GiB, 1), 8);        /* 2 GiB: exactly fits */
    ck_assert_uint_eq(bn_sched_auto_slots(256 * MiB + 1, 8 * GiB, 1), 7);    /* a byte over: 7 */
    ck_assert_uint_eq(bn_sched_auto_slots(256 * MiB, 8 * GiB, 4), 2);        /* shared by 4 workers */
    ck_assert_uint_eq(bn_sched_auto_slots(4 * GiB, 8 * GiB, 1), 1);          /* never below 1 */
    ck_assert_uint_eq(bn_sched_auto_slots(256 * MiB, 8 * GiB, 0), 8);        /* 0 workers reads as 1 */
    ck_assert_uint_eq(bn_sched_auto_slots(0, 8 * GiB, 1), BN_SCHED_AUTO_SLOTS);   /* unknown */
    ck_assert_uint_eq(bn_sched_auto_slots(256 * MiB, 0, 1), BN_SCHED_AUTO_SLOTS);
}
END_TEST

START_TEST(common_prefix_edges)
{
    const int32_t a[] = {1, 2, 3}, b[] = {1, 2, 3};
    ck_assert_uint_eq(bn_common_prefix(a, 3, b, 3), 3);
    ck_assert_uint_eq(bn_common_prefix(a, 3, b, 1), 1);
    ck_assert_uint_eq(bn_common_prefix(a, 0, b, 3), 0);
    ck_assert_uint_eq(bn_common_prefix(NULL, 0, NULL, 0), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("scheduler");
    TCase *tc = tcase_create("queue");
    tcase_add_test(tc, queue_fifo_and_bound);
    tcase_add_test(tc, queue_remove_middle);
    tcase_add_test(tc, retry_after_scales_with_queue);
    suite_add_tcase(s, tc);
    tc = tcase_create("pick");
    tcase_add_test(tc, pick_longest_prefix);
    tcase_add_test(tc, pick_best_entry_of_many);
    tcase_add_test(tc, pick_short_match_is_none);
    tcase_add_test(tc, pick_ties_fewest_busy_then_lru);
    tcase_add_test(tc, reserved_slots_for_interactive);
    tcase_add_test(tc, reserved_slots_route_batch_elsewhere);
    tcase_add_test(tc, common_prefix_edges);
    tcase_add_test(tc, auto_slots_fit_a_quarter_of_ram);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
