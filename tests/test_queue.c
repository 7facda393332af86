/* The wait queue's choice of the next request (bn_queue_best): lowest priority first, then the
 * key with the fewest running requests (fair share), then the oldest; the max_priority filter
 * the master uses to keep reserved slots for interactive requests; and O(1) removal of any
 * node, the chosen one included, keeping the order of the rest. */
#include <check.h>

#include "testutil.h"
#include <limits.h>

#include "server/queue.h"

static void node(bn_qnode *n, int priority, int key)
{
    *n = (bn_qnode){0};
    n->priority = priority;
    n->key = key;
}

/* Pops by bn_queue_best until empty, writing the nodes' indices (into base) to order[]. */
static int drain(bn_queue *q, bn_qnode *base, const int *running, int n_keys, int *order)
{
    int k = 0;
    bn_qnode *n;
    while ((n = bn_queue_best(q, running, n_keys, INT_MAX)) && k < 64) {
        bn_queue_remove(q, n);
        order[k++] = (int)(n - base);
    }
    return k;
}

START_TEST(best_of_empty)
{
    bn_queue q;
    bn_queue_init(&q, 4);
    ck_assert_ptr_null(bn_queue_best(&q, NULL, 0, INT_MAX));
    ck_assert_ptr_null(bn_queue_best(&q, NULL, 0, INT_MIN));
}
END_TEST

START_TEST(priority_order)
{
    bn_queue q;
    bn_qnode n[6];
    const int prio[6] = {5, 0, -2, 5, 0, 10};
    bn_queue_init(&q, 8);
    for (int i = 0; i < 6; i++) {
        node(&n[i], prio[i], 0);
        ck_assert_int_eq(bn_queue_push(&q, &n[i], i), 0);
    }
    /* best does not remove */
    ck_assert_ptr_eq(bn_queue_best(&q, NULL, 0, INT_MAX), &n[2]);
    ck_assert_int_eq(q.len, 6);
    int order[64];
    ck_assert_int_eq(drain(&q, n, NULL, 0, order), 6);
    const int want[6] = {2, 1, 4, 0, 3, 5};   /* lower first; equals oldest first */
    for (int i = 0; i < 6; i++) ck_assert_int_eq(order[i], want[i]);
    ck_assert_int_eq(q.len, 0);
    ck_assert_ptr_null(bn_queue_peek(&q));
}
END_TEST

/* Equal priorities: the key with fewer running requests goes first, even if it came later;
 * keys out of range (and a NULL table) count as 0 running. */
START_TEST(fair_share)
{
    bn_queue q;
    bn_qnode n[5];
    bn_queue_init(&q, 8);
    node(&n[0], 0, 1);   /* key 1 is busy */
    node(&n[1], 0, 1);
    node(&n[2], 0, 2);   /* key 2 runs one */
    node(&n[3], 0, 3);   /* key 3 runs none */
    node(&n[4], 0, 9);   /* out of range: 0 running, but younger than n[3] */
    for (int i = 0; i < 5; i++) bn_queue_push(&q, &n[i], i);
    int running[4] = {0, 3, 1, 0};
    ck_assert_ptr_eq(bn_queue_best(&q, running, 4, INT_MAX), &n[3]);
    bn_queue_remove(&q, &n[3]);
    ck_assert_ptr_eq(bn_queue_best(&q, running, 4, INT_MAX), &n[4]);
    bn_queue_remove(&q, &n[4]);
    ck_assert_ptr_eq(bn_queue_best(&q, running, 4, INT_MAX), &n[2]);
    /* the running counts change as requests start: key 2 now runs more than key 1 */
    running[2] = 5;
    ck_assert_ptr_eq(bn_queue_best(&q, running, 4, INT_MAX), &n[0]);
    /* without a table it is oldest first */
    ck_assert_ptr_eq(bn_queue_best(&q, NULL, 4, INT_MAX), &n[0]);
    /* a negative key never reads the table */
    node(&n[3], 0, -1);
    bn_queue_push(&q, &n[3], 9);
    ck_assert_ptr_eq(bn_queue_best(&q, running, 4, INT_MAX), &n[3]);
}
END_TEST

/* Priority comes before fair share: a busy key's better request still goes first. */
START_TEST(priority_before_fairness)
{
    bn_queue q;
    bn_qnode n[2];
    bn_queue_init(&q, 4);
    node(&n[0], 1, 2);
    node(&n[1], 0, 1);
    bn_queue_push(&q, &n[0], 0);
    bn_queue_push(&q, &n[1], 1);
    int running[3] = {0, 100, 0};
    ck_assert_ptr_eq(bn_queue_best(&q, running, 3, INT_MAX), &n[1]);
}
END_TEST

/* The master asks for priority <= 0 only when a worker is down to its reserved slots. */
START_TEST(max_priority_filter)
{
    bn_queue q;
    bn_qnode n[4];
    bn_queue_init(&q, 8);
    node(&n[0], 10, 0);
    node(&n[1], 1, 0);
    node(&n[2], 0, 0);
    node(&n[3], -5, 0);
    for (int i = 0; i < 3; i++) bn_queue_push(&q, &n[i], i);
    ck_assert_ptr_eq(bn_queue_best(&q, NULL, 0, 0), &n[2]);
    ck_assert_ptr_eq(bn_queue_best(&q, NULL, 0, 1), &n[2]);
    bn_queue_remove(&q, &n[2]);
    ck_assert_ptr_null(bn_queue_best(&q, NULL, 0, 0));      /* only batch left: wait */
    ck_assert_ptr_eq(bn_queue_best(&q, NULL, 0, 1), &n[1]);
    ck_assert_ptr_eq(bn_queue_best(&q, NULL, 0, 9), &n[1]);
    ck_assert_ptr_eq(bn_queue_best(&q, NULL, 0, INT_MAX), &n[1]);
    bn_queue_push(&q, &n[3], 5);
    ck_assert_ptr_eq(bn_queue_best(&q, NULL, 0, 0), &n[3]);
    ck_assert_ptr_null(bn_queue_best(&q, NULL, 0, -6));
    ck_assert_int_eq(q.len, 3);
}
END_TEST

/* Removing any node (a client that left) is O(1) and keeps the others' order, whichever node
 * bn_queue_best would have picked. */
START_TEST(remove_keeps_order)
{
    bn_queue q;
    bn_qnode n[6];
    const int prio[6] = {3, 1, 1, 2, 1, 3};
    bn_queue_init(&q, 6);
    for (int i = 0; i < 6; i++) {
        node(&n[i], prio[i], 0);
        ck_assert_int_eq(bn_queue_push(&q, &n[i], i), 0);
    }
    bn_qnode extra;
    node(&extra, 0, 0);
    ck_assert_int_eq(bn_queue_push(&q, &extra, 7), -1);   /* still bounded */
    ck_assert_ptr_eq(bn_queue_best(&q, NULL, 0, INT_MAX), &n[1]);
    bn_queue_remove(&q, &n[1]);   /* the best one leaves */
    bn_queue_remove(&q, &n[5]);   /* and the youngest */
    bn_queue_remove(&q, &n[5]);   /* twice: a no-op */
    ck_assert_int_eq(n[1].queued, 0);
    ck_assert_int_eq(q.len, 4);
    ck_assert_ptr_eq(bn_queue_best(&q, NULL, 0, INT_MAX), &n[2]);
    ck_assert_int_eq(bn_queue_push(&q, &n[1], 8), 0);      /* back at the end */
    int order[64];
    ck_assert_int_eq(drain(&q, n, NULL, 0, order), 5);
    const int want[5] = {2, 4, 1, 3, 0};
    for (int i = 0; i < 5; i++) ck_assert_int_eq(order[i], want[i]);
    /* FIFO pop is unchanged by priorities */
    for (int i = 0; i < 3; i++) bn_queue_push(&q, &n[i], i);
    ck_assert_ptr_eq(bn_queue_pop(&q), &n[0]);
    ck_assert_ptr_eq(bn_queue_pop(&q), &n[1]);
    ck_assert_ptr_eq(bn_queue_pop(&q), &n[2]);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("queue");
    TCase *t = tcase_create("best");
    tcase_add_test(t, best_of_empty);
    tcase_add_test(t, priority_order);
    tcase_add_test(t, fair_share);
    tcase_add_test(t, priority_before_fairness);
    tcase_add_test(t, max_priority_filter);
    tcase_add_test(t, remove_keeps_order);
    suite_add_tcase(s, t);
    return bn_test_run(s) ? 1 : 0;
}
