/* Shared helpers for the Check suites: temp paths, fixture lookup, synthetic models, engines,
 * kernel-variant loops, a seeded RNG. Header-only static inline functions: include freely. */
#ifndef BN_TESTUTIL_H
#define BN_TESTUTIL_H

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/engine.h"
#include "kernels/kernels.h"
#include "model/family.h"
#include "model/model_write.h"
#include "model/source_synth.h"
#include "model/synth.h"
#include "text/tokenizer.h"

/* $BN_TEST_TMPDIR, or /tmp when unset or empty. */
static inline const char *bn_test_tmpdir(void)
{
    const char *d = getenv("BN_TEST_TMPDIR");
    return d && *d ? d : "/tmp";
}

/* A per-process scratch path "<BN_TEST_TMPDIR or /tmp>/<name>.<pid>". The result lives in one of
 * 8 rotating static buffers: copy it if it must outlive later calls. */
static inline const char *bn_test_path(const char *name)
{
    static char bufs[8][512];
    static int i;
    char *b = bufs[i++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s.%ld", bn_test_tmpdir(), name, (long)getpid());
    return b;
}

/* Runs a shell command, returns its exit status. */
static inline int bn_test_sh(const char *cmd)
{
    int rc = system(cmd);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

/* Runs the suite (CK_NORMAL) and returns the number of failed tests. */
static inline int bn_test_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed;
}

/* ---- synthetic models and engines --------------------------------------------------------- */

/* The synthetic definition `shape` (seed 1; family presets too) with its family's built-in
 * vocabulary and that vocabulary's special ids. Returns
 * the vocabulary (the caller frees it), or NULL with err set. No Check calls: usable outside a
 * test (a forked child, main). */
static inline bn_vocab *bn_test_synth(const char *shape, bn_synth *sy, bn_error *err)
{
    *sy = (bn_synth){.seed = 1};
    if (bn_synth_parse(shape, sy, err)) return NULL;
    const bn_family_info *fi = bn_family_get((enum bn_family)sy->family);
    bn_vocab *v = bn_vocab_builtin_kind(fi->vocab, sy->cfg.n_vocab, err);
    if (!v) return NULL;
    v->chat = fi->chat;   /* as bitnet mkmodel does: the LLAMA3 kind serves two chat formats */
    sy->cfg.bos = v->bos;
    sy->cfg.eos = v->eos;
    sy->cfg.eot = v->eot;
    return v;
}

/* Packs the synthetic `shape` (bn_test_synth) to path with po (NULL: bn_pack_opts_default).
 * 0, or -1 with err set; no Check calls. */
static inline int bn_test_pack_synth(const char *shape, const bn_pack_opts *po, const char *path,
                                     bn_error *err)
{
    bn_pack_opts def;
    if (!po) {
        bn_pack_opts_default(&def);
        po = &def;
    }
    bn_synth sy;
    bn_vocab *v = bn_test_synth(shape, &sy, err);
    if (!v) return -1;
    bn_source *src = NULL;
    int rc = bn_source_open_synth(&sy, v, &src, err);
    if (rc == 0) {
        rc = bn_pack_write(src, path, po, err);
        bn_source_close(src);
    }
    bn_vocab_free(v);
    return rc;
}

/* Packs `shape` twice, ternary packing T5 to t5 and I2 to i2, from a child process: the packer
 * uses OpenMP and libgomp's thread pool does not survive fork(), so a test process that Check
 * or the tests fork later must not have started a team. 0, or -1 (the child printed why,
 * prefixed by prog). */
static inline int bn_test_pack_pair_forked(const char *prog, const char *shape, const char *t5,
                                           const char *i2)
{
    pid_t pid = fork();
    if (pid == 0) {
        bn_error err = {{0}};
        bn_pack_opts po;
        bn_pack_opts_default(&po);
        po.tern = BN_TERN_T5;
        int rc = bn_test_pack_synth(shape, &po, t5, &err);
        po.tern = BN_TERN_I2;
        rc = rc || bn_test_pack_synth(shape, &po, i2, &err);
        if (rc) fprintf(stderr, "%s: cannot write the %s models: %s\n", prog, shape, err.msg);
        _exit(rc ? 1 : 0);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    return 0;
}

/* Opens a packed model, asserting success. */
static inline bn_model *bn_test_open_model(const char *path)
{
    bn_error err = {{0}};
    bn_model *m = NULL;
    ck_assert_msg(bn_model_open(path, &m, &err) == 0, "%s", err.msg);
    return m;
}

/* Creates an engine on m with o, asserting success. */
static inline bn_engine *bn_test_engine(const bn_model *m, const bn_engine_opts *o)
{
    bn_error err = {{0}};
    bn_engine *e = NULL;
    ck_assert_msg(bn_engine_create(m, o, &e, &err) == 0, "%s", err.msg);
    return e;
}

/* ---- kernel variants and random data ------------------------------------------------------ */

/* Check's ck_assert records a mark point per call (a pipe write in fork mode), which dominates
 * loops over millions of elements under valgrind; this calls into Check only on failure. */
#define BN_EXPECT_MSG(expr, ...) \
    do { if (!(expr)) ck_abort_msg(__VA_ARGS__); } while (0)


/* Forced kernel variants (bn_kernels_force) are process-wide, and CK_FORK=no runs every test
 * in one process: a test that forces a variant and then fails an assertion would leave it
 * forced for every later test. A test case whose tests force variants registers this checked
 * fixture: setup records the variant in use, teardown (which Check also runs after a failed
 * assertion) forces it back.  bn_test_isa_fixture(tc);  or by hand:
 * tcase_add_checked_fixture(tc, bn_test_isa_save, bn_test_isa_restore). */
static inline bn_isa *bn_test_isa_saved(void)
{
    static bn_isa saved = BN_ISA_COUNT;   /* BN_ISA_COUNT: nothing saved */
    return &saved;
}
static inline void bn_test_isa_save(void) { *bn_test_isa_saved() = bn_kernels_isa(); }
static inline void bn_test_isa_restore(void)
{
    bn_isa *s = bn_test_isa_saved();
    if (*s != BN_ISA_COUNT && bn_kernels_isa() != *s) bn_kernels_force(*s);
}
static inline void bn_test_isa_fixture(TCase *tc)
{
    tcase_add_checked_fixture(tc, bn_test_isa_save, bn_test_isa_restore);
}

/* ---- skips ---------------------------------------------------------------------------------- */

/* Check has no "skipped" result: a test that returns early reads as a pass. So a test that
 * cannot run here is either not registered at all (BN_TCASE_ADD_TEST_IF: decided in main, the
 * preferred way) or ends itself with BN_TEST_SKIP (for conditions found inside the test). Both
 * print "SKIP: <test>: <why>" to stderr and count the skip; bn_test_exit reports the count and
 * turns "nothing ran but skips" into exit 77 (automake's SKIP). */
static inline int *bn_test_skip_count(void)   /* [0]: every skip, [1]: those inside a test */
{
    static int n[2];
    return n;
}
static inline void bn_test_skip_note(const char *test, const char *why)
{
    size_t n = strlen(test);   /* START_TEST(x) defines x_fn: report x */
    if (n > 3 && !strcmp(test + n - 3, "_fn")) n -= 3;
    fprintf(stderr, "SKIP: %.*s: %s\n", (int)n, test, why);
    (*bn_test_skip_count())++;
}
/* Whether this CPU/build supports variant isa; each unsupported one (valgrind hides AVX512 from
 * CPUID) is reported once as a skip of prog, never silently passed. For loops over the
 * variants: for (int isa = ...; ...) if (bn_test_isa_ok(prog, isa)). */
static inline int bn_test_isa_ok(const char *prog, int isa)
{
    static int reported[BN_ISA_COUNT];
    if (bn_kernels_isa_supported((bn_isa)isa)) return 1;
    if (!reported[isa]) {
        char why[96];
        snprintf(why, sizeof why, "variant %s not supported on this CPU/build: its checks are skipped",
                 bn_isa_name((bn_isa)isa));
        bn_test_skip_note(prog, why);
        reported[isa] = 1;
    }
    return 0;
}
/* Registers test tf in tc unless why (a string, evaluated once) is non-NULL: then it is skipped. */
#define BN_TCASE_ADD_TEST_IF(tc, tf, why)                                                       \
    do {                                                                                        \
        const char *bn_why_ = (why);                                                            \
        if (bn_why_) bn_test_skip_note(#tf, bn_why_);                                           \
        else tcase_add_test(tc, tf);                                                            \
    } while (0)
/* Inside a test: prints "SKIP: <function>: <why>", counts it and returns from the test. */
#define BN_TEST_SKIP(...)                                                                       \
    do {                                                                                        \
        char bn_why_[256];                                                                      \
        snprintf(bn_why_, sizeof bn_why_, __VA_ARGS__);                                         \
        bn_test_skip_note(__func__, bn_why_);                                                   \
        bn_test_skip_count()[1]++;                                                              \
        return;                                                                                 \
    } while (0)
/* NULL if environment variable name is set and non-empty, else "NAME is not set (run through
 * make check)": for BN_TCASE_ADD_TEST_IF. */
static inline const char *bn_test_needs_env(const char *name)
{
    static char why[8][96];
    static int i;
    const char *v = getenv(name);
    if (v && *v) return NULL;
    char *w = why[i++ % 8];
    snprintf(w, sizeof why[0], "%s is not set (run through make check)", name);
    return w;
}

/* Runs the suite (bn_test_run) and returns the process's exit status: 1 if a test failed, 77
 * (SKIP) if no test ran but some were skipped, else 0. Reports the skips on stderr. */
static inline int bn_test_exit(const char *prog, Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr), ran = srunner_ntests_run(sr);
    srunner_free(sr);
    int skips = bn_test_skip_count()[0], inside = bn_test_skip_count()[1];
    if (skips)
        fprintf(stderr, "%s: %d test(s) skipped (%d of Check's %d counted runs), not passes\n", prog,
                skips, inside, ran);
    if (failed) return 1;
    return ran - inside == 0 && skips > 0 ? 77 : 0;
}

/* xorshift64, seeded: the same data on every run and machine. */
static inline uint64_t *bn_test_rng_state(void)
{
    static uint64_t state;
    return &state;
}
static inline void bn_test_rng_seed(uint64_t s) { *bn_test_rng_state() = s * 0x9E3779B97F4A7C15ull + 1; }
static inline uint32_t bn_test_rng_u32(void)
{
    uint64_t *s = bn_test_rng_state();
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (uint32_t)(*s >> 11);
}
static inline int bn_test_rng_int(int lo, int hi)
{
    return lo + (int)(bn_test_rng_u32() % (uint32_t)(hi - lo + 1));
}
static inline float bn_test_rng_float(float lo, float hi)
{
    return lo + (hi - lo) * (float)(bn_test_rng_u32() & 0xffffff) / 16777216.0f;
}

/* malloc that never returns NULL (asserts), not even for 0 bytes. */
static inline void *bn_test_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

#endif
