/* API keys, classes and per-key limits (limits.h): authentication (every near miss refused,
 * KEY:CLASS entries), the anonymous key, priority clamping, max_concurrent, the token bucket
 * and its Retry-After (on a virtual clock: no timing), the fair-share running counts, the
 * refcount that outlives a reload, and construction errors. */
#include <check.h>

#include "testutil.h"
#include <string.h>

#include "server/config.h"
#include "server/limits.h"

static bn_limits *make(const char *text)
{
    bn_srv_config c;
    bn_error err = {{0}};
    bn_limits *l = NULL;
    bn_config_defaults(&c);
    ck_assert_msg(bn_config_load_string(&c, text, strlen(text), "t.conf", &err) == 0, "%s", err.msg);
    ck_assert_msg(bn_limits_new(&c, &l, &err) == 0, "%s", err.msg);
    bn_config_free(&c);   /* the limits hold copies */
    return l;
}

static const char KEYS[] =
    "key_class = batch priority=10 max_concurrent=2\n"
    "key_class = staff priority=-5\n"
    "key_class = meter tokens_per_minute=600\n"
    "key_class = both max_concurrent=1 tokens_per_minute=60\n"
    "api_keys = kb:batch, ks:staff, kd\n"
    "api_keys = kb2:batch, km:meter, kk:both\n";
enum { KB = 1, KS, KD, KB2, KM, KK };

START_TEST(anonymous)
{
    bn_limits *l = make("key_class = default priority=3 max_concurrent=1 tokens_per_minute=1\n");
    ck_assert_int_eq(bn_limits_n_keys(l), 1);
    ck_assert_int_eq(bn_limits_auth(l, NULL), 0);
    ck_assert_int_eq(bn_limits_auth(l, "Bearer anything"), 0);
    ck_assert_str_eq(bn_limits_key_label(l, 0), "anonymous");
    /* the default class's priority applies, its limits do not (all anonymous clients share
     * key 0: a per-key limit would be a global one) */
    ck_assert_int_eq(bn_limits_priority(l, 0, 0, 0), 3);
    ck_assert_int_eq(bn_limits_priority(l, 0, -9, 1), 3);
    ck_assert_int_eq(bn_limits_priority(l, 0, 7, 1), 7);
    int retry = 0;
    const char *why = NULL;
    for (int i = 0; i < 5; i++) ck_assert_int_eq(bn_limits_admit(l, 0, 1000, 1.0, &retry, &why), 0);
    ck_assert_ptr_null(why);
    bn_limits_unref(l);
}
END_TEST

START_TEST(auth)
{
    bn_limits *l = make(KEYS);
    ck_assert_int_eq(bn_limits_n_keys(l), 7);
    ck_assert_int_eq(bn_limits_auth(l, "Bearer kb"), KB);
    ck_assert_int_eq(bn_limits_auth(l, "bearer   ks"), KS);   /* scheme in any case, spaces */
    ck_assert_int_eq(bn_limits_auth(l, "BEARER kd"), KD);
    ck_assert_int_eq(bn_limits_auth(l, "Bearer kb2"), KB2);
    ck_assert_int_eq(bn_limits_auth(l, "Bearer km"), KM);
    ck_assert_int_eq(bn_limits_auth(l, "Bearer kk"), KK);
    static const char *const bad[] = {
        NULL, "", "kb", "Bearer", "Bearer ", "Bearer  ", "Basic kb", "Bearerkb",
        "Bearer k", "Bearer kbb", "Bearer kb ", "Bearer Kb", "Bearer kc", "Bearer kb:batch",
        "Bearer kb2x", "Bearer b2", "Bearer \x01", "Bearer ks\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(bn_limits_auth(l, bad[i]) == -1, "'%s' accepted", bad[i] ? bad[i] : "(null)");
    /* labels name the class and the position, never the secret */
    ck_assert_str_eq(bn_limits_key_label(l, KB), "batch/1");
    ck_assert_str_eq(bn_limits_key_label(l, KS), "staff/2");
    ck_assert_str_eq(bn_limits_key_label(l, KD), "default/3");
    ck_assert_str_eq(bn_limits_key_label(l, KK), "both/6");
    ck_assert_str_eq(bn_limits_key_label(l, 7), "unknown");
    ck_assert_str_eq(bn_limits_key_label(l, -1), "unknown");
    bn_limits_unref(l);
}
END_TEST

/* A long key: a match needs every byte, wherever the difference is. */
START_TEST(auth_every_byte)
{
    char text[512], hdr[300], key[201];
    memset(key, 'a', 200);
    key[200] = 0;
    snprintf(text, sizeof text, "api_keys = %s\n", key);
    bn_limits *l = make(text);
    snprintf(hdr, sizeof hdr, "Bearer %s", key);
    ck_assert_int_eq(bn_limits_auth(l, hdr), 1);
    for (size_t i = 0; i < 200; i += 13) {
        hdr[7 + i] = 'b';
        ck_assert_int_eq(bn_limits_auth(l, hdr), -1);
        hdr[7 + i] = 'a';
    }
    hdr[7 + 199] = 0;   /* one short */
    ck_assert_int_eq(bn_limits_auth(l, hdr), -1);
    bn_limits_unref(l);
}
END_TEST

START_TEST(priority_clamp)
{
    bn_limits *l = make(KEYS);
    ck_assert_int_eq(bn_limits_priority(l, KB, 0, 0), 10);    /* the class's default */
    ck_assert_int_eq(bn_limits_priority(l, KB, 0, 1), 10);    /* never better than the class */
    ck_assert_int_eq(bn_limits_priority(l, KB, -100, 1), 10);
    ck_assert_int_eq(bn_limits_priority(l, KB, 20, 1), 20);   /* worse is allowed */
    ck_assert_int_eq(bn_limits_priority(l, KS, 0, 0), -5);
    ck_assert_int_eq(bn_limits_priority(l, KS, -6, 1), -5);
    ck_assert_int_eq(bn_limits_priority(l, KS, 3, 1), 3);
    ck_assert_int_eq(bn_limits_priority(l, KD, 0, 0), 0);
    ck_assert_int_eq(bn_limits_priority(l, KD, -1, 1), 0);
    ck_assert_int_eq(bn_limits_priority(l, KD, 1, 1), 1);
    ck_assert_int_eq(bn_limits_priority(l, KD, 2000000000, 1), BN_PRIORITY_LIMIT);
    bn_limits_unref(l);
}
END_TEST

START_TEST(max_concurrent)
{
    bn_limits *l = make(KEYS);
    int retry = 0;
    const char *why = NULL;
    ck_assert_int_eq(bn_limits_admit(l, KB, 10, 0, &retry, &why), 0);
    ck_assert_int_eq(bn_limits_admit(l, KB, 10, 0, &retry, &why), 0);
    ck_assert_int_eq(bn_limits_admit(l, KB, 10, 0, &retry, &why), 1);
    ck_assert_str_eq(why, "max_concurrent");
    ck_assert_int_eq(retry, 1);
    /* per key, not per class: the other batch key has its own count */
    ck_assert_int_eq(bn_limits_admit(l, KB2, 10, 0, &retry, &why), 0);
    /* queued (never started) and running requests both count; done frees one */
    bn_limits_start(l, KB);
    bn_limits_done(l, KB, 0, 0, 1);
    ck_assert_int_eq(bn_limits_admit(l, KB, 10, 1, &retry, &why), 0);
    ck_assert_int_eq(bn_limits_admit(l, KB, 10, 1, &retry, &why), 1);
    bn_limits_done(l, KB, 1, 5, 2);
    ck_assert_int_eq(bn_limits_admit(l, KB, 10, 2, &retry, &why), 0);
    /* a class without limits */
    for (int i = 0; i < 100; i++) ck_assert_int_eq(bn_limits_admit(l, KD, 1000, 0, &retry, &why), 0);
    bn_limits_unref(l);
}
END_TEST

/* tokens_per_minute = 600: 10 tokens per second, at most 600 banked. */
START_TEST(token_bucket)
{
    bn_limits *l = make(KEYS);
    int retry = 0;
    const char *why = NULL;
    ck_assert_int_eq(bn_limits_admit(l, KM, 500, 100, &retry, &why), 0);   /* 600 -> 100 */
    ck_assert_int_eq(bn_limits_admit(l, KM, 200, 100, &retry, &why), 0);   /* -> -100: charged whole */
    ck_assert_int_eq(bn_limits_admit(l, KM, 1, 100, &retry, &why), 1);
    ck_assert_str_eq(why, "tokens_per_minute");
    ck_assert_int_eq(retry, 10);                                            /* 100 / 10 per s */
    ck_assert_int_eq(bn_limits_admit(l, KM, 1, 105, &retry, &why), 1);     /* -50 */
    ck_assert_int_eq(retry, 5);
    ck_assert_int_eq(bn_limits_admit(l, KM, 0, 110, &retry, &why), 0);     /* back at 0: passes */
    /* completion tokens are charged at done */
    bn_limits_done(l, KM, 1, 60, 110);                                       /* -> -60 */
    ck_assert_int_eq(bn_limits_admit(l, KM, 0, 110, &retry, &why), 1);
    ck_assert_int_eq(retry, 6);
    ck_assert_int_eq(bn_limits_admit(l, KM, 0, 115.5, &retry, &why), 1);   /* -5: rounds up */
    ck_assert_int_eq(retry, 1);
    /* refilled up to the capacity only: a long idle time banks 600, not more */
    ck_assert_int_eq(bn_limits_admit(l, KM, 600, 10000, &retry, &why), 0);
    ck_assert_int_eq(bn_limits_admit(l, KM, 1, 10000, &retry, &why), 0);   /* 0 -> -1 */
    ck_assert_int_eq(bn_limits_admit(l, KM, 1, 10000, &retry, &why), 1);
    ck_assert_int_eq(retry, 1);                                             /* 0.1 s: at least 1 */
    /* a clock that goes back never refills */
    ck_assert_int_eq(bn_limits_admit(l, KM, 1, 50, &retry, &why), 1);
    /* a huge deficit says at most a day */
    ck_assert_int_eq(bn_limits_admit(l, KM, 0, 20000, &retry, &why), 0);
    bn_limits_done(l, KM, 0, 4000000000u, 20000);
    ck_assert_int_eq(bn_limits_admit(l, KM, 0, 20000, &retry, &why), 1);
    ck_assert_int_eq(retry, 86400);
    /* other keys are untouched */
    ck_assert_int_eq(bn_limits_admit(l, KD, 1, 20000, &retry, &why), 0);
    bn_limits_unref(l);
}
END_TEST

/* Refused by max_concurrent: nothing charged. Refused by the bucket: not counted in flight. */
START_TEST(refusal_charges_nothing)
{
    bn_limits *l = make(KEYS);   /* kk: max_concurrent=1, 60 tokens per minute (1 per s) */
    int retry = 0;
    const char *why = NULL;
    ck_assert_int_eq(bn_limits_admit(l, KK, 30, 0, &retry, &why), 0);   /* 60 -> 30 */
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(bn_limits_admit(l, KK, 30, 0, &retry, &why), 1);
        ck_assert_str_eq(why, "max_concurrent");
    }
    bn_limits_done(l, KK, 0, 40, 0);                                    /* 30 -> -10 */
    ck_assert_int_eq(bn_limits_admit(l, KK, 30, 0, &retry, &why), 1);
    ck_assert_str_eq(why, "tokens_per_minute");
    ck_assert_int_eq(retry, 10);
    ck_assert_int_eq(bn_limits_admit(l, KK, 30, 10, &retry, &why), 0);  /* 0 -> -30, in flight */
    ck_assert_int_eq(bn_limits_admit(l, KK, 0, 1000, &retry, &why), 1);
    ck_assert_str_eq(why, "max_concurrent");
    bn_limits_unref(l);
}
END_TEST

START_TEST(running_counts)
{
    bn_limits *l = make(KEYS);
    const int *run = bn_limits_running(l);
    int retry;
    const char *why;
    for (int k = 0; k < bn_limits_n_keys(l); k++) ck_assert_int_eq(run[k], 0);
    ck_assert_int_eq(bn_limits_admit(l, KD, 1, 0, &retry, &why), 0);
    ck_assert_int_eq(bn_limits_admit(l, KD, 1, 0, &retry, &why), 0);
    ck_assert_int_eq(bn_limits_admit(l, KD, 1, 0, &retry, &why), 0);
    bn_limits_start(l, KD);
    bn_limits_start(l, KD);
    ck_assert_int_eq(run[KD], 2);
    bn_limits_done(l, KD, 1, 0, 0);
    ck_assert_int_eq(run[KD], 1);
    bn_limits_done(l, KD, 0, 0, 0);   /* never started: running unchanged */
    ck_assert_int_eq(run[KD], 1);
    bn_limits_done(l, KD, 1, 0, 0);
    ck_assert_int_eq(run[KD], 0);
    bn_limits_done(l, KD, 1, 0, 0);   /* one done too many: counts stay at 0 */
    ck_assert_int_eq(run[KD], 0);
    /* keys out of range are ignored */
    bn_limits_start(l, -1);
    bn_limits_start(l, 7);
    bn_limits_done(l, 99, 1, 5, 0);
    ck_assert_int_eq(bn_limits_admit(l, -1, 5, 0, &retry, &why), 0);
    for (int k = 0; k < bn_limits_n_keys(l); k++) ck_assert_int_eq(run[k], 0);
    bn_limits_unref(l);
}
END_TEST

/* A reload replaces the limits while requests admitted under the old ones still end there. */
START_TEST(refcount)
{
    bn_limits *old = make(KEYS);
    int retry;
    const char *why;
    ck_assert_int_eq(bn_limits_admit(old, KB, 1, 0, &retry, &why), 0);
    bn_limits *held = bn_limits_ref(old);   /* the job's reference */
    ck_assert_ptr_eq(held, old);
    bn_limits_start(held, KB);
    bn_limits_unref(old);                    /* the server's, replaced by the reload */
    ck_assert_int_eq(bn_limits_running(held)[KB], 1);
    ck_assert_int_eq(bn_limits_auth(held, "Bearer kb"), KB);
    bn_limits_done(held, KB, 1, 3, 1);
    ck_assert_int_eq(bn_limits_running(held)[KB], 0);
    bn_limits_unref(held);                   /* frees: valgrind/ASan check the rest */
    ck_assert_ptr_null(bn_limits_ref(NULL));
    bn_limits_unref(NULL);
}
END_TEST

START_TEST(new_errors)
{
    bn_srv_config c;
    bn_error err = {{0}};
    bn_limits *l = (bn_limits *)&c;
    bn_config_defaults(&c);
    const char text[] = "api_keys = a, b:nosuch\n";
    ck_assert_int_eq(bn_config_load_string(&c, text, sizeof text - 1, "t.conf", &err), 0);
    ck_assert_int_eq(bn_limits_new(&c, &l, &err), -1);
    ck_assert_ptr_null(l);
    ck_assert_str_eq(err.msg, "api_keys: key #2 names class 'nosuch', which no key_class line defines");
    bn_config_free(&c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("limits");
    TCase *t = tcase_create("limits");
    tcase_add_test(t, anonymous);
    tcase_add_test(t, auth);
    tcase_add_test(t, auth_every_byte);
    tcase_add_test(t, priority_clamp);
    tcase_add_test(t, max_concurrent);
    tcase_add_test(t, token_bucket);
    tcase_add_test(t, refusal_charges_nothing);
    tcase_add_test(t, running_counts);
    tcase_add_test(t, refcount);
    tcase_add_test(t, new_errors);
    suite_add_tcase(s, t);
    return bn_test_run(s) ? 1 : 0;
}
