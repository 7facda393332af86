/* The queue and the worker picker: FIFO order, bounds, removal from the middle, Retry-After, and
 * prefix-aware routing with LRU tie-breaking. */
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

START_TEST(pick_longest_prefix)
{
    const int32_t a[] = {1, 2, 3, 4}, b[] = {1, 2, 9}, c[] = {7};
    const int32_t prompt[] = {1, 2, 3, 4, 5, 6};
    bn_sched_worker w[3] = {
        {1, b, 3, 0.0}, {1, a, 4, 5.0}, {1, c, 1, 1.0},
    };
    size_t m = 99;
    ck_assert_int_eq(bn_sched_pick(w, 3, prompt, 6, &m), 1);
    ck_assert_uint_eq(m, 4);
    w[1].free = 0;                    /* the best one is busy: next best prefix */
    ck_assert_int_eq(bn_sched_pick(w, 3, prompt, 6, &m), 0);
    ck_assert_uint_eq(m, 2);
    w[0].free = w[2].free = 0;
    ck_assert_int_eq(bn_sched_pick(w, 3, prompt, 6, &m), -1);
    ck_assert_uint_eq(m, 0);
}
END_TEST

START_TEST(pick_lru_on_ties)
{
    const int32_t x[] = {5}, prompt[] = {1, 2};
    bn_sched_worker w[3] = {{1, x, 1, 9.0}, {1, NULL, 0, 2.0}, {1, x, 1, 4.0}};
    ck_assert_int_eq(bn_sched_pick(w, 3, prompt, 2, NULL), 1);
    w[1].last_used = 10.0;
    ck_assert_int_eq(bn_sched_pick(w, 3, prompt, 2, NULL), 2);
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
    tcase_add_test(tc, pick_lru_on_ties);
    tcase_add_test(tc, common_prefix_edges);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
