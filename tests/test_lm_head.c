/* lm_head tests: the batched int8 GEMM against the per-token GEMV (every variant, bit for bit),
 * the batched engine head against the single-token head, and the screened head (int8 screen +
 * f16 rescoring) against the exact f16 head: the same argmax, rows within the margin exact, on
 * random and adversarial near-tie states, through the engine, and on 1.0 files without bounds.
 * Fixed seeds; no timings. Tests that force kernel variants run under bn_test_isa_fixture. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kernels/half.h"
#include "kernels/kernels.h"
#include "kernels/kimpl.h"
#include "engine/engine.h"
#include "engine/engine_internal.h"
#include <xxhash.h>
#include "model/model_format.h"
#include "model/model_write.h"
#include "model/source_synth.h"
#include "model/synth.h"
#include "text/tokenizer.h"
#include "testutil.h"

/* Every variant this CPU supports, scalar included (the skipped ones are printed once). */
#define FOR_EACH_ISA(isa) \
    for (int isa = 0; isa < BN_ISA_COUNT; isa++) if (bn_test_isa_ok("test_lm_head", isa))

/* ---- batched int8 GEMM == m GEMV calls --------------------------------------------------- */

/* rows x cp int8 weights in [-127, 127] (extremes included), m activation rows of stride ldq. */
static void i8_case(size_t rows, size_t cols, size_t m, int extreme)
{
    size_t cp = bn_round_up(cols, 64), ldq = cp + 64 * (size_t)bn_test_rng_int(0, 1);
    int8_t *w = bn_test_xmalloc(rows * cp), *q = bn_test_xmalloc(m * ldq);
    float *sc = bn_test_xmalloc(rows * 4), *xs = bn_test_xmalloc(m * 4);
    float *want = bn_test_xmalloc(m * rows * 4), *got = bn_test_xmalloc(m * rows * 4);
    for (size_t r = 0; r < rows; r++) {
        sc[r] = bn_test_rng_float(1e-4f, 1e-2f);
        for (size_t c = 0; c < cp; c++)
            w[r * cp + c] = c >= cols ? 0 : (int8_t)(extreme ? (c + r) % 2 ? 127 : -127 : bn_test_rng_int(-127, 127));
    }
    for (size_t t = 0; t < m; t++) {
        xs[t] = bn_test_rng_float(1.0f, 100.0f);
        for (size_t c = 0; c < ldq; c++)
            q[t * ldq + c] = c >= cols ? 0 : (int8_t)(extreme ? (c % 2 ? -128 : 127) : bn_test_rng_int(-128, 127));
    }
    for (size_t t = 0; t < m; t++)
        bn_gemv_i8row_scalar(w, sc, cols, cp, q + t * ldq, xs[t], want + t * rows, 0, rows);
    FOR_EACH_ISA(isa) {
        const bn_ktab *k = bn_ktab_get((bn_isa)isa);
        /* any row range: the first and last rows of the block untouched, and tails of 1..3 */
        size_t r0 = rows > 5 ? (size_t)bn_test_rng_int(0, 3) : 0, r1 = rows > 5 ? rows - (size_t)bn_test_rng_int(0, 2) : rows;
        for (size_t i = 0; i < m * rows; i++) got[i] = -1.0f;
        k->gemm_i8row(w, sc, cols, cp, q, ldq, xs, m, got, rows, r0, r1);
        for (size_t t = 0; t < m; t++)
            for (size_t r = 0; r < rows; r++) {
                float e = r >= r0 && r < r1 ? want[t * rows + r] : -1.0f;
                BN_EXPECT_MSG(memcmp(&e, &got[t * rows + r], 4) == 0,
                           "gemm_i8row %s rows=%zu cols=%zu m=%zu token %zu row %zu: %g != %g",
                           bn_isa_name((bn_isa)isa), rows, cols, m, t, r, got[t * rows + r], e);
            }
    }
    free(w), free(q), free(sc), free(xs), free(want), free(got);
}

START_TEST(gemm_i8row_equals_gemv)
{
    bn_test_rng_seed(21);
    for (size_t m = 1; m <= 70; m++) i8_case((size_t)bn_test_rng_int(1, 23), (size_t)bn_test_rng_int(1, 300), m, 0);
    i8_case(37, 2560, 8, 0);     /* the 2b4t row width */
    i8_case(9, 9000, 3, 0);      /* beyond the decode kernel's activation buffer */
    i8_case(13, 200, 5, 1);      /* +-127 weights against -128/127 activations: no saturation */
    i8_case(6, 130, 66, 0);      /* more tokens than one chunk of the VNNI kernel */
}
END_TEST

/* The public bn_gemm_i8row (dispatched to the CPU's variant) equals m bn_gemv_i8row calls. */
START_TEST(gemm_i8row_public_dispatch)
{
    bn_test_rng_seed(22);
    size_t rows = 20, cols = 100, cp = 128, m = 3;
    int8_t *w = bn_test_xmalloc(rows * cp), *q = bn_test_xmalloc(m * cp);
    float sc[20], xs[3], want[60], got[60];
    for (size_t i = 0; i < rows * cp; i++) w[i] = (int8_t)(i % cp < cols ? bn_test_rng_int(-127, 127) : 0);
    for (size_t i = 0; i < m * cp; i++) q[i] = (int8_t)(i % cp < cols ? bn_test_rng_int(-128, 127) : 0);
    for (size_t r = 0; r < rows; r++) sc[r] = 0.01f;
    for (size_t t = 0; t < m; t++) xs[t] = 3.0f + (float)t;
    for (size_t t = 0; t < m; t++) bn_gemv_i8row(w, sc, cols, cp, q + t * cp, xs[t], want + t * rows, 0, rows);
    bn_gemm_i8row(w, sc, cols, cp, q, cp, xs, m, got, rows, 0, rows);
    ck_assert(memcmp(want, got, sizeof want) == 0);
    free(w), free(q);
}
END_TEST

/* ---- models ------------------------------------------------------------------------------- */

/* Writes the synthetic model `shape` (seed 1) to this process's bn_test_path(name) unless an
 * earlier test of this run wrote it (never a stale file from another run); opens it. main
 * removes the files. */
static bn_model *synth_open(const char *shape, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s", bn_test_path(name));
    mkdir(bn_test_tmpdir(), 0700);
    bn_error err = {{0}};
    struct stat st;
    if (stat(path, &st) != 0)
        ck_assert_msg(bn_test_pack_synth(shape, NULL, path, &err) == 0, "%s", err.msg);
    return bn_test_open_model(path);
}

static bn_engine *engine(const bn_model *m, int head, uint32_t n_seq)
{
    bn_engine_opts o;
    bn_engine_opts_default(&o);
    o.n_threads = 2;
    o.lm_head = head;
    o.n_seq = n_seq;
    return bn_test_engine(m, &o);
}

/* ---- the batched engine head == the single-token head --------------------------------- */

/* n tokens of one sequence in one batched pass (bn_lm_head_batch with m = n) against the same
 * tokens through bn_engine_eval (bn_lm_head_one per token), every variant, for head kind. */
static void batch_equals_one(const bn_model *m, int head, uint32_t n)
{
    const uint32_t V = m->cfg.n_vocab;
    int32_t ids[64];
    bn_batch_tok toks[64];
    for (uint32_t i = 0; i < n; i++) {
        ids[i] = (int32_t)((i * 37 + 11) % (V - 3)) + 3;
        toks[i] = (bn_batch_tok){ids[i], 0, 1};
    }
    float *want = bn_test_xmalloc((size_t)n * V * 4), *got = bn_test_xmalloc((size_t)n * V * 4);
    bn_error err = {{0}};
    FOR_EACH_ISA(isa) {
        ck_assert_int_eq(bn_kernels_force((bn_isa)isa), 0);
        bn_engine *e = engine(m, head, 1);
        ck_assert_msg(bn_engine_eval(e, ids, n, want, &err) == 0, "%s", err.msg);
        bn_engine_reset(e);
        ck_assert_msg(bn_engine_eval_batch(e, toks, n, got, &err) == 0, "%s", err.msg);
        for (uint32_t t = 0; t < n; t++)
            BN_EXPECT_MSG(memcmp(want + (size_t)t * V, got + (size_t)t * V, (size_t)V * 4) == 0,
                       "%s head %d: batched logits of token %u of %u differ", bn_isa_name((bn_isa)isa),
                       head, t, n);
        bn_engine_free(e);
    }
    bn_test_isa_restore();   /* the variant the test started with (the fixture saved it) */
    free(want), free(got);
}

/* Batched int8 and f16 heads equal the single-token ones for 1..13 tokens, every variant. */
START_TEST(batch_head_equals_one_tiny)
{
    bn_model *m = synth_open("tiny", "lmh-tiny.bnpk");
    ck_assert_ptr_nonnull(m->lm_head_i8);
    const uint32_t ns[] = {1, 2, 3, 5, 8, 13};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) batch_equals_one(m, BN_LM_HEAD_I8, ns[i]);
    batch_equals_one(m, BN_LM_HEAD_F16, 5);
    bn_model_close(m);
}
END_TEST

/* The same for the screened head. */
START_TEST(batch_screen_equals_one_tiny)
{
    bn_model *m = synth_open("tiny", "lmh-tiny.bnpk");
    const uint32_t ns[] = {1, 4, 7};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) batch_equals_one(m, BN_LM_HEAD_SCREEN, ns[i]);
    bn_model_close(m);
}
END_TEST

/* ---- the screened head is the f16 head where it matters --------------------------------- */

static uint32_t argmax(const float *y, uint32_t n)
{
    uint32_t b = 0;
    for (uint32_t i = 1; i < n; i++) b = y[i] > y[b] ? i : b;   /* ties -> lowest id */
    return b;
}

/* The screen's logits for h against the f16 head's: the same argmax, and every row within
 * margin of the top bit-identical. Returns the rows rescored. */
/* Rows that are not bit-identical must be provably out of reach: below the top by more than the
 * margin in the f16 head. With planes (tail 0) that is the bit-plane screen, which must be used. */
static uint32_t check_h(bn_engine *scr, bn_engine *ref, const float *h, float margin, float *ys,
                        float *yf, const char *what)
{
    const uint32_t V = scr->cfg.n_vocab;
    bn_lm_stats st;
    int planes = scr->model->lm_head_planes && !scr->lm_tail[0] && !isinf(margin) &&
                 bn_engine_lm_head(scr) == BN_LM_HEAD_SCREEN;
    bn_engine_set_lm_margin(scr, 0, margin);
    bn_engine_lm_stats(scr, NULL, 1);
    bn_lm_head_one(scr, h, ys);
    bn_lm_head_one(ref, h, yf);
    bn_engine_lm_stats(scr, &st, 0);   /* left for the caller to add up; reset on the next call */
    uint32_t a = argmax(yf, V), b = argmax(ys, V);
    BN_EXPECT_MSG(a == b, "%s: screened argmax %u (%.9g) != f16 argmax %u (%.9g)", what, b, ys[b], a, yf[a]);
    for (uint32_t r = 0; r < V; r++) {
        if (yf[r] >= yf[a] - margin)
            BN_EXPECT_MSG(memcmp(&ys[r], &yf[r], 4) == 0, "%s: row %u within the margin %g: %.9g != %.9g",
                       what, r, margin, ys[r], yf[r]);
        else if (memcmp(&ys[r], &yf[r], 4) != 0)   /* screened only: the bound kept it out */
            BN_EXPECT_MSG(yf[r] < yf[a] - margin, "%s: row %u not rescored but f16 %.9g reaches top %.9g - %g",
                       what, r, yf[r], yf[a], margin);
    }
    ck_assert_uint_eq(st.tokens, 1);
    ck_assert_uint_eq(st.plane_tokens, (uint64_t)planes);
    if (planes) {
        ck_assert_uint_eq(st.live[0], V);
        for (int j = 1; j < 4; j++) ck_assert_uint_le(st.live[j], st.live[j - 1]);
        ck_assert(st.rescored == V || st.rescored <= st.live[3]);   /* V: the f16 fallback */
    }
    return (uint32_t)st.rescored;
}

/* Hidden states whose normed form points at target t (the output norm's gains divided out). */
static void aim(const bn_model *m, const float *t, float *h)
{
    for (uint32_t i = 0; i < m->cfg.n_embd; i++) h[i] = t[i] / m->output_norm[i];
}

static void row_f32(const bn_model *m, uint32_t r, float *out)
{
    bn_f16_to_f32_row(m->lm_head_f16 + (size_t)r * m->cfg.n_embd, out, m->cfg.n_embd);   /* the head rows in use */
}

/* Random states, then adversarial near-ties: t = alpha w_a + beta w_b with <t, w_a> = <t, w_b>
 * in exact arithmetic (plus a random part), so the top two rows differ by rounding only. */
static void screen_exactness(const char *shape, const char *file, int n_rand, int n_tie, int all_isa,
                             int tail)
{
    bn_model *m = synth_open(shape, file);
    ck_assert_ptr_nonnull(m->lm_head_i8_err);
    ck_assert_ptr_nonnull(m->lm_head_planes);   /* the default pack writes them (1.3) */
    const uint32_t E = m->cfg.n_embd, V = m->cfg.n_vocab;
    float *h = bn_test_xmalloc(E * 4), *t = bn_test_xmalloc(E * 4), *wa = bn_test_xmalloc(E * 4), *wb = bn_test_xmalloc(E * 4);
    float *ys = bn_test_xmalloc((size_t)V * 4), *yf = bn_test_xmalloc((size_t)V * 4);
    uint64_t rescored = 0, n = 0;
    uint32_t most = 0;
    const bn_isa chosen = bn_kernels_isa();   /* before the loop forces others */
    FOR_EACH_ISA(isa) {
        if (!all_isa && isa != (int)chosen && isa != BN_ISA_SCALAR) continue;
        ck_assert_int_eq(bn_kernels_force((bn_isa)isa), 0);
        bn_engine *scr = engine(m, BN_LM_HEAD_SCREEN, 1), *ref = engine(m, BN_LM_HEAD_F16, 1);
        bn_engine_set_lm_tail(scr, 0, tail);   /* 0: the bit planes; 1: the int8 screen */
        bn_lm_stats all;
        bn_engine_lm_stats(scr, NULL, 1);
        memset(&all, 0, sizeof all);
        char what[96];
        bn_test_rng_seed(31);
        for (int it = 0; it < n_rand + n_tie; it++) {
            if (it < n_rand) {
                float sc = it % 3 == 0 ? 1.0f : it % 3 == 1 ? 1e-3f : 50.0f;
                for (uint32_t i = 0; i < E; i++) h[i] = sc * bn_test_rng_float(-1, 1) * (i % 7 == 0 ? 4.0f : 1.0f);
            } else {
                uint32_t a = (uint32_t)bn_test_rng_int(0, (int)V - 1), b = (uint32_t)bn_test_rng_int(0, (int)V - 2);
                b += b >= a;   /* two different rows: a tie of a row with itself has no solution */
                row_f32(m, a, wa), row_f32(m, b, wb);
                double aa = 0, ab = 0, bb = 0;
                for (uint32_t i = 0; i < E; i++) aa += wa[i] * wa[i], ab += wa[i] * wb[i], bb += wb[i] * wb[i];
                double det = aa * bb - ab * ab, al = (bb - ab) / det, be = (aa - ab) / det;
                for (uint32_t i = 0; i < E; i++)
                    t[i] = (float)(al * wa[i] + be * wb[i]) * 40.0f + 1e-3f * bn_test_rng_float(-1, 1);
                aim(m, t, h);
            }
            snprintf(what, sizeof what, "%s %s tail %d state %d", shape, bn_isa_name((bn_isa)isa), tail, it);
            uint32_t c = check_h(scr, ref, h, 0.0f, ys, yf, what);
            all.plane_tokens += scr->lm_stats.plane_tokens;   /* check_h's counters, kept */
            for (int j = 0; j < 4; j++) all.live[j] += scr->lm_stats.live[j];
            rescored += c, n++;
            most = c > most ? c : most;
            if (it % 4 == 0) check_h(scr, ref, h, 2.0f, ys, yf, what);
        }
        if (!tail && all.plane_tokens)
            printf("test_lm_head: %s %s: bit-plane screen, rows read per plane of %u: %.0f %.0f %.0f %.0f\n",
                   shape, bn_isa_name((bn_isa)isa), V, (double)all.live[0] / all.plane_tokens,
                   (double)all.live[1] / all.plane_tokens, (double)all.live[2] / all.plane_tokens,
                   (double)all.live[3] / all.plane_tokens);
        /* INFINITY: every row exact */
        check_h(scr, ref, h, INFINITY, ys, yf, "infinite margin");
        ck_assert(memcmp(ys, yf, (size_t)V * 4) == 0);
        bn_engine_free(scr), bn_engine_free(ref);
    }
    printf("test_lm_head: %s: rows rescored per state %.1f mean, %u max (of %u)\n", shape,
           (double)rescored / (double)(n ? n : 1), most, V);
    bn_test_isa_restore();   /* the variant the test started with (the fixture saved it) */
    free(h), free(t), free(wa), free(wb), free(ys), free(yf);
    bn_model_close(m);
}

/* Screened == f16 where it matters on tiny: 60 random and 60 near-tie states, every variant. */
START_TEST(screen_exact_tiny)
{
    screen_exactness("tiny", "lmh-tiny.bnpk", 60, 60, 1, 1);
}
END_TEST

/* The same through the bit planes (a sequence without an int8 tail); and for an untied head
 * ("output", Llama3's) whose width is not a multiple of the planes' 128 columns. */
START_TEST(planes_exact_tiny)
{
    int n = getenv("BN_VALGRIND") ? 10 : 30;   /* CI's valgrind pass: fewer states */
    screen_exactness("tiny", "lmh-tiny.bnpk", 2 * n, 2 * n, 1, 0);
    screen_exactness("tiny-llama3,n_embd=320,n_head=5", "lmh-llama3.bnpk", n, n, 1, 0);
}
END_TEST

/* The same on the 2B-4T head shape (16384 rows of 2560), for the default variant and scalar. */
START_TEST(screen_exact_2b4t_shape)
{
    /* CI's valgrind pass (BN_VALGRIND) checks fewer states on this shape; make check all */
    int n = getenv("BN_VALGRIND") ? 1 : 12;
    screen_exactness("2b4t,n_layer=1,n_vocab=16384", "lmh-2b4t.bnpk", n, n, 0, 1);
    screen_exactness("2b4t,n_layer=1,n_vocab=16384", "lmh-2b4t.bnpk", n, n, 0, 0);
}
END_TEST

/* Decoding through the engine: the screened head picks the f16 head's token at every position
 * of a greedy run, and reports what it rescored. */
START_TEST(screen_greedy_positions_tiny)
{
    bn_model *m = synth_open("tiny", "lmh-tiny.bnpk");
    bn_engine *scr = engine(m, BN_LM_HEAD_AUTO, 1), *ref = engine(m, BN_LM_HEAD_F16, 1);
    ck_assert_int_eq(bn_engine_lm_head(scr), BN_LM_HEAD_SCREEN);
    bn_sampling g;
    bn_sampling_greedy(&g);
    bn_engine_set_lm_sampling(scr, 0, &g);   /* as bn_generate: greedy reads the bit planes */
    ck_assert_int_eq(scr->lm_tail[0], 0);
    bn_error err = {{0}};
    int32_t id = m->cfg.bos;
    uint32_t V = m->cfg.n_vocab;
    for (int p = 0; p < 200; p++) {
        ck_assert_msg(bn_engine_eval(scr, &id, 1, NULL, &err) == 0, "%s", err.msg);
        ck_assert_msg(bn_engine_eval(ref, &id, 1, NULL, &err) == 0, "%s", err.msg);
        uint32_t a = argmax(bn_engine_logits(ref), V), b = argmax(bn_engine_logits(scr), V);
        BN_EXPECT_MSG(a == b, "position %d: screened %u != f16 %u", p, b, a);
        id = (int32_t)(p % 5 == 4 ? (uint32_t)(p * 31 + 7) % V : a);   /* some forced turns */
    }
    bn_lm_stats st;
    bn_engine_lm_stats(scr, &st, 0);
    ck_assert_uint_eq(st.tokens, 200);
    ck_assert_uint_eq(st.plane_tokens, 200);
    ck_assert_uint_eq(st.live[0], 200ull * V);
    ck_assert(st.rescored >= 200 && st.rescored < 200ull * V);
    bn_engine_free(scr), bn_engine_free(ref);
    bn_model_close(m);
}
END_TEST

/* bn_lm_margin: 0 for greedy and untruncated sampling, T ln(1/min_p) with min_p, infinite with
 * penalties; bn_lm_margin_exact leaves out under 2^-24 of the top token's probability. */
START_TEST(margin_rule)
{
    bn_sampling s;
    bn_sampling_greedy(&s);
    ck_assert(bn_lm_margin(&s, 1000) == 0.0f);
    s.temperature = 0.5f;
    ck_assert(bn_lm_margin(&s, 128256) == 0.0f);   /* untruncated: the tail stays int8 */
    s.min_p = 0.05f;   /* min_p cuts below p_top / 20: a margin of T ln 20 covers what it keeps */
    ck_assert(bn_lm_margin(&s, 128256) >= 0.5f * (float)log(20.0));
    ck_assert(bn_lm_margin(&s, 128256) <= 0.5f * (float)log(20.0) * 1.001f);
    s.min_p = 0.0f;
    float mg = bn_lm_margin_exact(&s, 128256);
    /* 128256 rows at e^(-margin/T) each stay below 2^-24 of the top */
    ck_assert(128256.0 * exp(-mg / 0.5) <= 0x1p-24 * 1.0001);
    s.repeat_penalty = 1.1f;
    ck_assert(isinf(bn_lm_margin(&s, 1000)));
    /* the tail matters only where sampling can draw it */
    ck_assert_int_eq(bn_lm_tail(&s), 0);       /* penalties: every row exact anyway */
    bn_sampling_greedy(&s);
    ck_assert_int_eq(bn_lm_tail(&s), 0);
    s.temperature = 0.8f;
    ck_assert_int_eq(bn_lm_tail(&s), 1);       /* untruncated */
    s.min_p = 0.05f;
    ck_assert_int_eq(bn_lm_tail(&s), 0);       /* min_p never draws beyond its margin */
}
END_TEST

/* A 1.0 file (no output_q8.err/.norm): auto falls back to the int8 head, SCREEN is refused. */
START_TEST(old_file_without_bounds)
{
    bn_model *m0 = synth_open("tiny", "lmh-tiny.bnpk");
    char src[512], dst[512];
    snprintf(src, sizeof src, "%s", bn_test_path("lmh-tiny.bnpk"));
    snprintf(dst, sizeof dst, "%s", bn_test_path("lmh-tiny-1.0.bnpk"));
    bn_model_close(m0);
    FILE *f = fopen(src, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    size_t len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = bn_test_xmalloc(len);
    ck_assert_uint_eq(fread(buf, 1, len, f), len);
    fclose(f);
    bn_file_header hd;
    memcpy(&hd, buf, sizeof hd);
    int renamed = 0;
    for (uint32_t i = 0; i < hd.n_tensors; i++) {   /* hide the two tensors as unknown names */
        char *name = (char *)buf + hd.tensors_offset + (size_t)i * sizeof(bn_tensor_entry);
        if (!strncmp(name, "output_q8.", 10) && strcmp(name, "output_q8.scale")) name[0] = 'X', renamed++;
    }
    ck_assert_int_eq(renamed, 5);   /* err, norm, and the planes with their two bounds */
    hd.version_minor = 0;
    hd.header_checksum = 0;
    memcpy(buf, &hd, sizeof hd);
    hd.header_checksum = XXH3_64bits(buf, hd.data_offset);
    memcpy(buf, &hd, sizeof hd);
    f = fopen(dst, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    fclose(f);
    free(buf);
    bn_model *m = NULL;
    bn_error err = {{0}};
    ck_assert_msg(bn_model_open(dst, &m, &err) == 0, "%s", err.msg);
    ck_assert_ptr_null(m->lm_head_i8_err);
    bn_engine *e = engine(m, BN_LM_HEAD_AUTO, 1);
    ck_assert_int_eq(bn_engine_lm_head(e), BN_LM_HEAD_I8);
    ck_assert_int_ne(bn_engine_set_lm_head(e, BN_LM_HEAD_SCREEN, &err), 0);
    ck_assert_msg(strstr(err.msg, "output_q8.err") != NULL, "%s", err.msg);
    bn_engine_free(e);
    bn_model_close(m);
}
END_TEST

/* The stored bounds are upper bounds of the exact norms. */
START_TEST(stored_bounds_hold)
{
    bn_model *m = synth_open("tiny", "lmh-tiny.bnpk");
    const uint32_t E = m->cfg.n_embd, cp = m->lm_head_cols_padded;
    float *w = bn_test_xmalloc(E * 4);
    for (uint32_t r = 0; r < m->cfg.n_vocab; r++) {
        row_f32(m, r, w);
        double e2 = 0, n2 = 0, s = m->lm_head_i8_scale[r];
        for (uint32_t i = 0; i < E; i++) {
            double q = (double)m->lm_head_i8[(size_t)r * cp + i] * s;
            e2 += (w[i] - q) * (w[i] - q), n2 += q * q;
        }
        BN_EXPECT_MSG(m->lm_head_i8_err[r] >= sqrt(e2) && m->lm_head_i8_err[r] <= sqrt(e2) * 1.0001 + 1e-30,
                   "row %u err %g vs %g", r, m->lm_head_i8_err[r], sqrt(e2));
        BN_EXPECT_MSG(m->lm_head_i8_norm[r] >= sqrt(n2) && m->lm_head_i8_norm[r] <= sqrt(n2) * 1.0001 + 1e-30,
                   "row %u norm %g vs %g", r, m->lm_head_i8_norm[r], sqrt(n2));
    }
    free(w);
    bn_model_close(m);
}
END_TEST

static Suite *lm_head_suite(void)
{
    Suite *s = suite_create("lm_head");
    TCase *tc = tcase_create("int8");
    bn_test_isa_fixture(tc);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, gemm_i8row_equals_gemv);
    tcase_add_test(tc, gemm_i8row_public_dispatch);
    tcase_add_test(tc, batch_head_equals_one_tiny);
    suite_add_tcase(s, tc);
    tc = tcase_create("screen");
    bn_test_isa_fixture(tc);
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, stored_bounds_hold);
    tcase_add_test(tc, margin_rule);
    tcase_add_test(tc, batch_screen_equals_one_tiny);
    tcase_add_test(tc, screen_exact_tiny);
    tcase_add_test(tc, planes_exact_tiny);
    tcase_add_test(tc, screen_greedy_positions_tiny);
    tcase_add_test(tc, old_file_without_bounds);
    tcase_add_test(tc, screen_exact_2b4t_shape);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    int rc = bn_test_exit("test_lm_head", lm_head_suite());
    static const char *const files[] = {"lmh-tiny.bnpk", "lmh-2b4t.bnpk", "lmh-tiny-1.0.bnpk"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) unlink(bn_test_path(files[i]));
    return rc;
}
