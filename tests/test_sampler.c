/* The sampler on hand-made logits: each rule alone, their HF/OpenAI semantics, determinism by
 * seed, and that sampling allocates nothing (malloc & co. are wrapped by the linker and counted,
 * see tests/engine.mk). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine_testutil.h"   /* bn_test_n_allocs: -Wl,--wrap=malloc,... in tests/engine.mk */
#include "testutil.h"

#define V 8

static bn_sampler *new_sampler(uint32_t n)
{
    bn_error err;
    bn_sampler *s = bn_sampler_new(n, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    return s;
}

/* Draws `draws` tokens from fixed logits and returns the frequency of each id. */
static void histogram(bn_sampler *s, const bn_sampling *p, const float *logits, uint32_t n,
                      int draws, double *freq)
{
    float work[64];
    bn_sampler_start(s, p, NULL, 0);
    memset(freq, 0, n * sizeof *freq);
    for (int i = 0; i < draws; i++) {
        memcpy(work, logits, n * sizeof *work);
        int32_t id = bn_sampler_sample(s, work);
        ck_assert_int_ge(id, 0);
        ck_assert_int_lt(id, (int)n);
        freq[id] += 1.0 / draws;
    }
}

START_TEST(greedy_argmax_lowest_id_on_ties)
{
    bn_sampler *s = new_sampler(V);
    bn_sampling p;
    bn_sampling_greedy(&p);
    float l[V] = {0.1f, 3.0f, -1.0f, 3.0f, 2.9f, 0, 0, 0};
    bn_sampler_start(s, &p, NULL, 0);
    ck_assert_int_eq(bn_sampler_sample(s, l), 1);
    float m[V] = {-5, -5, -5, -5, -5, -5, -5, -4};
    ck_assert_int_eq(bn_sampler_sample(s, m), 7);
    bn_sampler_free(s);
}
END_TEST

START_TEST(temperature_gives_softmax_distribution)
{
    bn_sampler *s = new_sampler(4);
    bn_sampling p;
    bn_sampling_greedy(&p);
    p.seed = 42;
    const double prob[4] = {0.5, 0.25, 0.125, 0.125};
    float l[4];
    double f[4];
    for (int i = 0; i < 4; i++) l[i] = (float)log(prob[i]);
    p.temperature = 1.0f;
    histogram(s, &p, l, 4, 40000, f);
    for (int i = 0; i < 4; i++) ck_assert_msg(fabs(f[i] - prob[i]) < 0.015, "T=1 id %d: %f vs %f", i, f[i], prob[i]);
    /* T = 2 takes the square root of the odds: p ~ sqrt(prob) */
    p.temperature = 2.0f;
    histogram(s, &p, l, 4, 40000, f);
    double z = 0;
    for (int i = 0; i < 4; i++) z += sqrt(prob[i]);
    for (int i = 0; i < 4; i++)
        ck_assert_msg(fabs(f[i] - sqrt(prob[i]) / z) < 0.015, "T=2 id %d: %f vs %f", i, f[i], sqrt(prob[i]) / z);
    bn_sampler_free(s);
}
END_TEST

START_TEST(top_k_keeps_k_best)
{
    bn_sampler *s = new_sampler(V);
    bn_sampling p;
    bn_sampling_greedy(&p);
    p.temperature = 1.0f;
    p.top_k = 2;
    float l[V] = {1, 0, 3, 0, 2.5f, 0, 0, 0};
    double f[V];
    histogram(s, &p, l, V, 4000, f);
    ck_assert(f[2] > 0 && f[4] > 0);
    ck_assert(fabs(f[2] + f[4] - 1.0) < 1e-9);
    /* expected p(2) = e^3 / (e^3 + e^2.5) */
    double e2 = exp(3.0) / (exp(3.0) + exp(2.5));
    ck_assert_msg(fabs(f[2] - e2) < 0.03, "%f vs %f", f[2], e2);
    bn_sampler_free(s);
}
END_TEST

/* probabilities 0.5, 0.3, 0.15, 0.05 over ids 3, 1, 0, 2 */
static void four_logits(float *l)
{
    l[3] = (float)log(0.5);
    l[1] = (float)log(0.3);
    l[0] = (float)log(0.15);
    l[2] = (float)log(0.05);
}

START_TEST(top_p_hf_semantics)
{
    bn_sampler *s = new_sampler(4);
    bn_sampling p;
    bn_sampling_greedy(&p);
    p.temperature = 1.0f;
    float l[4];
    double f[4];
    four_logits(l);
    /* HF removes tokens whose ascending cumulative mass is <= 1 - top_p: with 0.79, the two
     * smallest (0.05, 0.15; cumulative 0.2) go, the two largest stay. (0.8 itself would sit
     * exactly on the boundary, where float rounding decides, in HF as here.) */
    p.top_p = 0.79f;
    histogram(s, &p, l, 4, 4000, f);
    ck_assert(f[0] == 0 && f[2] == 0 && f[1] > 0 && f[3] > 0);
    ck_assert_msg(fabs(f[3] - 0.5 / 0.8) < 0.03, "%f", f[3]);
    p.top_p = 0.81f;   /* now 0.15 is needed too */
    histogram(s, &p, l, 4, 4000, f);
    ck_assert(f[0] > 0 && f[2] == 0);
    p.top_p = 0.3f;    /* the top token alone covers it */
    histogram(s, &p, l, 4, 500, f);
    ck_assert(f[3] > 0.999);
    bn_sampler_free(s);
}
END_TEST

START_TEST(min_p_relative_to_top)
{
    bn_sampler *s = new_sampler(4);
    bn_sampling p;
    bn_sampling_greedy(&p);
    p.temperature = 1.0f;
    float l[4];
    double f[4];
    four_logits(l);
    p.min_p = 0.2f;    /* threshold 0.1: 0.15 stays, 0.05 goes */
    histogram(s, &p, l, 4, 4000, f);
    ck_assert(f[0] > 0 && f[2] == 0);
    p.min_p = 0.7f;    /* threshold 0.35: only 0.5 */
    histogram(s, &p, l, 4, 500, f);
    ck_assert(f[3] > 0.999);
    bn_sampler_free(s);
}
END_TEST

START_TEST(filters_compose)
{
    /* top_k 3 renormalizes to 0.5/0.95, 0.3/0.95, 0.15/0.95; top_p 0.8 then keeps 2 tokens
     * (cumulative before the third is 0.842 >= 0.8) */
    bn_sampler *s = new_sampler(4);
    bn_sampling p;
    bn_sampling_greedy(&p);
    p.temperature = 1.0f;
    p.top_k = 3;
    p.top_p = 0.8f;
    float l[4];
    double f[4];
    four_logits(l);
    histogram(s, &p, l, 4, 2000, f);
    ck_assert(f[0] == 0 && f[2] == 0);
    p.top_p = 0.85f;   /* 0.842 < 0.85: the third stays */
    histogram(s, &p, l, 4, 4000, f);
    ck_assert(f[0] > 0 && f[2] == 0);
    bn_sampler_free(s);
}
END_TEST

START_TEST(repetition_penalty_sign_handling)
{
    bn_sampler *s = new_sampler(V);
    bn_sampling p;
    bn_sampling_greedy(&p);
    p.repeat_penalty = 2.0f;
    int32_t prompt[] = {0, 1, 1};
    bn_sampler_start(s, &p, prompt, 3);
    float l[V] = {2.0f, -2.0f, 1.5f, 0, 0, 0, 0, 0};
    /* 0: 2 -> 1 (divided); 1: -2 -> -4 (multiplied, once even though it appears twice);
     * 2: untouched, so it wins the argmax */
    ck_assert_int_eq(bn_sampler_sample(s, l), 2);
    ck_assert(l[0] == 1.0f && l[1] == -4.0f && l[2] == 1.5f);
    /* generated ids count too */
    bn_sampler_accept(s, 2);
    float m[V] = {2.0f, -2.0f, 1.5f, 0, 0, 0, 0, 0};
    bn_sampler_sample(s, m);
    ck_assert(m[2] == 0.75f);
    bn_sampler_free(s);
}
END_TEST

START_TEST(presence_frequency_openai_math)
{
    bn_sampler *s = new_sampler(V);
    bn_sampling p;
    bn_sampling_greedy(&p);
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    int32_t prompt[] = {4};   /* prompt ids are not penalized by these two */
    bn_sampler_start(s, &p, prompt, 1);
    bn_sampler_accept(s, 3);
    bn_sampler_accept(s, 3);
    bn_sampler_accept(s, 5);
    float l[V] = {0, 0, 0, 1.0f, 1.0f, 1.0f, 0, 0};
    bn_sampler_sample(s, l);
    ck_assert(l[3] == 1.0f - 0.5f - 0.25f * 2);
    ck_assert(l[5] == 1.0f - 0.5f - 0.25f);
    ck_assert(l[4] == 1.0f);
    /* a new request forgets the counts */
    bn_sampler_start(s, &p, NULL, 0);
    float m[V] = {0, 0, 0, 1.0f, 0, 0, 0, 0};
    bn_sampler_sample(s, m);
    ck_assert(m[3] == 1.0f);
    bn_sampler_free(s);
}
END_TEST

static void draw_sequence(bn_sampler *s, uint64_t seed, int32_t *out, int n, uint32_t nv)
{
    bn_sampling p;
    bn_sampling_default(&p);
    p.top_k = 0;
    p.min_p = 0;
    p.temperature = 1.0f;
    p.seed = seed;
    float *base = malloc(nv * sizeof *base), *l = malloc(nv * sizeof *l);
    for (uint32_t i = 0; i < nv; i++) base[i] = (float)sin(i * 0.7) * 2.0f;
    bn_sampler_start(s, &p, NULL, 0);
    long before = bn_test_n_allocs;
    for (int i = 0; i < n; i++) {
        memcpy(l, base, nv * sizeof *l);
        out[i] = bn_sampler_sample(s, l);
        bn_sampler_accept(s, out[i]);
    }
    ck_assert_int_eq(bn_test_n_allocs, before);   /* nothing allocated in the token loop */
    free(base);
    free(l);
}

START_TEST(seed_determinism)
{
    const uint32_t nv = 5000;
    bn_sampler *s = new_sampler(nv);
    int32_t a[64], b[64], c[64];
    draw_sequence(s, 7, a, 64, nv);
    draw_sequence(s, 7, b, 64, nv);
    draw_sequence(s, 8, c, 64, nv);
    ck_assert(memcmp(a, b, sizeof a) == 0);
    ck_assert(memcmp(a, c, sizeof a) != 0);
    bn_sampler_free(s);
}
END_TEST

START_TEST(no_allocation_with_every_filter)
{
    const uint32_t nv = 20000;
    bn_sampler *s = new_sampler(nv);
    bn_sampling p;
    bn_sampling_default(&p);
    p.repeat_penalty = 1.1f;
    p.presence_penalty = 0.2f;
    p.frequency_penalty = 0.1f;
    p.top_k = 0;   /* the widest sort path */
    p.top_p = 0.99f;
    p.min_p = 0.0f;
    float *l = malloc(nv * sizeof *l);
    int32_t prompt[3] = {1, 2, 3};
    bn_sampler_start(s, &p, prompt, 3);
    long before = bn_test_n_allocs;
    int32_t ids[20];
    for (int i = 0; i < 20; i++) {   /* no ck_assert inside: Check itself allocates */
        for (uint32_t j = 0; j < nv; j++) l[j] = (float)((j * 2654435761u) % 1000) / 300.0f;
        ids[i] = bn_sampler_sample(s, l);
        bn_sampler_accept(s, ids[i]);
    }
    ck_assert_int_eq(bn_test_n_allocs, before);
    for (int i = 0; i < 20; i++) ck_assert(ids[i] >= 0 && ids[i] < (int32_t)nv);
    free(l);
    bn_sampler_free(s);
}
END_TEST

/* top_p's sorted prefix must be found even when it is longer than the first window sorted */
START_TEST(top_p_wide_prefix)
{
    const uint32_t nv = 3000;
    bn_sampler *s = new_sampler(nv);
    bn_sampling p;
    bn_sampling_greedy(&p);
    p.temperature = 1.0f;
    p.top_p = 0.5f;
    p.seed = 3;
    float *l = malloc(nv * sizeof *l);
    /* ids 0..999 have logit 1, the rest 0: top_p 0.5 needs about 576 of the top 1000 tokens,
     * chosen by lowest id among equals: ids >= 1000 never appear */
    bn_sampler_start(s, &p, NULL, 0);
    int max_id = 0;
    for (int i = 0; i < 3000; i++) {
        for (uint32_t j = 0; j < nv; j++) l[j] = j < 1000 ? 1.0f : 0.0f;
        int32_t id = bn_sampler_sample(s, l);
        if (id > max_id) max_id = id;
    }
    /* mass of one top token: e/(1000e + 2000) = 0.000576; 0.5 needs ceil(868) tokens */
    double one = exp(1.0) / (1000 * exp(1.0) + 2000);
    int need = (int)ceil(0.5 / one);
    ck_assert_msg(max_id < need && max_id > need - 100, "max id %d, prefix %d", max_id, need);
    free(l);
    bn_sampler_free(s);
}
END_TEST

static Suite *sampler_suite(void)
{
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("rules");
    tcase_add_test(tc, greedy_argmax_lowest_id_on_ties);
    tcase_add_test(tc, temperature_gives_softmax_distribution);
    tcase_add_test(tc, top_k_keeps_k_best);
    tcase_add_test(tc, top_p_hf_semantics);
    tcase_add_test(tc, min_p_relative_to_top);
    tcase_add_test(tc, filters_compose);
    tcase_add_test(tc, repetition_penalty_sign_handling);
    tcase_add_test(tc, presence_frequency_openai_math);
    tcase_add_test(tc, seed_determinism);
    tcase_add_test(tc, no_allocation_with_every_filter);
    tcase_add_test(tc, top_p_wide_prefix);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return bn_test_run(sampler_suite()) ? EXIT_FAILURE : EXIT_SUCCESS;
}
