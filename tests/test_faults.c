/* Allocation failures, SQLite-style: every operation that allocates is run with its Nth
 * allocation failing, N = 1, 2, ... until a run hits no injected failure, once with that one
 * failure only and once with every allocation after it failing too. Each run must return an
 * error (never crash), free everything it allocated (the allocator counts outstanding blocks),
 * and leave no file behind; the last run must succeed.
 *
 * The allocator: malloc, calloc, realloc, free, posix_memalign, strdup and strndup are wrapped
 * (-Wl,--wrap=..., tests/faults.mk), which catches every call from our objects; jansson is routed
 * through the same functions with json_set_alloc_funcs. Gaps: PCRE2 (src/text compiles its
 * patterns without a general context, so its allocations are not injected), hwloc, libgomp and
 * glibc's own internal allocations. */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/engine.h"
#include "model/model.h"
#include "model/gguf.h"
#include "model/hf_write.h"
#include "model/model_write.h"
#include "model/source.h"
#include "model/source_synth.h"
#include "model/synth.h"
#include "server/channel.h"
#include "server/config.h"
#include "server/limits.h"
#include "server/openai.h"
#include "text/spm_model.h"
#include "text/tokenizer.h"
#include "testutil.h"

/* ============================================================================================
 * The failing, counting allocator
 * ========================================================================================== */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
int __real_posix_memalign(void **p, size_t align, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);
int __wrap_posix_memalign(void **p, size_t align, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);

static volatile int active;       /* count and inject only inside an operation (Check allocates too) */
static volatile long fail_at;     /* 0 = never; else the fail_at-th allocation after arming fails */
static volatile int sticky;       /* and every allocation after it */
static volatile long n_calls;     /* allocations since arming */
static volatile long n_failed;    /* failures injected since arming */

/* The blocks we handed out and not yet freed: an open-addressing set (linear probing, deletion
 * by backward shift). Pointers from elsewhere (glibc, other libraries) are not in it, so freeing
 * them here is passed through untouched. Under a mutex: bn_pack_write runs OpenMP loops. */
#define SET_BITS 18
#define SET_MASK ((1u << SET_BITS) - 1)
static void *live[1u << SET_BITS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static volatile long n_live;   /* volatile: GCC assumes malloc leaves globals alone */

static size_t slot_of(const void *p)
{
    return (size_t)(((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull >> (64 - SET_BITS));
}

static void track(void *p)
{
    if (!p || !active) return;
    pthread_mutex_lock(&lock);
    if (n_live >= (long)SET_MASK) abort();   /* the set is sized far above any test's need */
    size_t i = slot_of(p);
    while (live[i]) i = (i + 1) & SET_MASK;
    live[i] = p;
    n_live++;
    pthread_mutex_unlock(&lock);
}

static int untrack_locked(void *p)
{
    size_t i = slot_of(p);
    while (live[i] && live[i] != p) i = (i + 1) & SET_MASK;
    if (!live[i]) return 0;
    live[i] = NULL;
    n_live--;
    for (size_t j = (i + 1) & SET_MASK; live[j]; j = (j + 1) & SET_MASK) {
        size_t k = slot_of(live[j]);
        /* live[j] stays unless its home k lies cyclically outside (i, j] */
        int stays = i < j ? (k > i && k <= j) : (k > i || k <= j);
        if (!stays) {
            live[i] = live[j];
            live[j] = NULL;
            i = j;
        }
    }
    return 1;
}

static int untrack(void *p)
{
    pthread_mutex_lock(&lock);
    int r = untrack_locked(p);
    pthread_mutex_unlock(&lock);
    return r;
}

static const void *fail_site;   /* the caller of the first failed allocation, for messages */

#define inject() inject_at(__builtin_return_address(0))
static int inject_at(const void *site)
{
    if (!active || !fail_at) return 0;
    pthread_mutex_lock(&lock);
    long k = ++n_calls;
    int fail = k == fail_at || (sticky && k > fail_at);
    if (fail && !n_failed++) fail_site = site;
    pthread_mutex_unlock(&lock);
    return fail;
}

/* "file+0xoffset" of an address, for addr2line -e FILE OFFSET. */
static const char *site_name(const void *p)
{
    static char buf[600];
    Dl_info di;
    if (p && dladdr(p, &di) && di.dli_fname)
        snprintf(buf, sizeof buf, "%s+%#lx", di.dli_fname,
                 (unsigned long)((const char *)p - (const char *)di.dli_fbase));
    else
        snprintf(buf, sizeof buf, "%p", p);
    return buf;
}

static void *malloc_at(size_t n, const void *site)
{
    if (inject_at(site)) return NULL;
    void *p = __real_malloc(n);
    track(p);
    return p;
}

void *__wrap_malloc(size_t n) { return malloc_at(n, __builtin_return_address(0)); }

void *__wrap_calloc(size_t n, size_t m)
{
    if (inject()) return NULL;
    void *p = __real_calloc(n, m);
    track(p);
    return p;
}

void *__wrap_realloc(void *p, size_t n)
{
    if (!p) return malloc_at(n, __builtin_return_address(0));
    if (inject()) return NULL;   /* a failed realloc leaves p allocated */
    int ours = untrack(p);
    void *q = __real_realloc(p, n);
    if (ours) track(q ? q : (n ? p : NULL));
    return q;
}

void __wrap_free(void *p)
{
    if (p) untrack(p);
    __real_free(p);
}

int __wrap_posix_memalign(void **p, size_t align, size_t n)
{
    if (inject()) return ENOMEM;
    int rc = __real_posix_memalign(p, align, n);
    if (rc == 0) track(*p);
    return rc;
}

char *__wrap_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc_at(n, __builtin_return_address(0));
    if (p) memcpy(p, s, n);
    return p;
}

char *__wrap_strndup(const char *s, size_t n)
{
    n = strnlen(s, n);
    char *p = malloc_at(n + 1, __builtin_return_address(0));
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* ============================================================================================
 * The driver
 * ========================================================================================== */

/* Check inside an operation: Check's own allocations (its location records) are neither
 * counted nor failed. */
#define OK(cond, ...)                          \
    do {                                       \
        active = 0;                            \
        ck_assert_msg((cond), __VA_ARGS__);    \
        active = 1;                            \
    } while (0)

/* One operation: does its work and frees all of it; returns 0, or -1 with msg filled. */
typedef int (*fault_op)(void *ctx, char *msg, size_t n);

#define MAX_STEPS 100000

/* Entries in dir, to see that a failed writer left nothing behind. */
static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* Runs op with allocation N failing, N = 1, 2, ... (one-shot, then sticky). dir: if set, a
 * failed run must leave it with as many entries as before. Returns the allocations of a clean
 * run. */
static long run_faults(const char *name, fault_op op, void *ctx, const char *dir)
{
    long total = -1, survived = 0;
    for (int mode = 0; mode < 2; mode++) {
        for (long n = 1;; n++) {
            ck_assert_msg(n < MAX_STEPS, "%s: still failing after %d allocations", name, MAX_STEPS);
            char msg[600] = "";
            long before = n_live;
            int files = dir ? dir_entries(dir) : 0;
            n_calls = n_failed = 0;
            sticky = mode;
            fail_at = n;
            active = 1;
            int rc = op(ctx, msg, sizeof msg);
            active = 0;
            fail_at = 0;
            long failed = n_failed, calls = n_calls;
            ck_assert_msg(n_live == before, "%s: allocation %ld failed (%s): %ld blocks leaked",
                          name, n, mode ? "sticky" : "once", n_live - before);
            if (dir)
                ck_assert_msg(dir_entries(dir) == files, "%s: allocation %ld failed: %s has %d "
                              "entries, %d before", name, n, dir, dir_entries(dir), files);
            if (failed == 0) {
                ck_assert_msg(rc == 0, "%s: fails with no injected failure: %s", name, msg);
                if (mode == 0) total = calls;
                break;
            }
            if (rc == 0) {
                survived++;
                if (getenv("BN_FAULTS_VERBOSE"))
                    fprintf(stderr, "faults: %s: allocation %ld (%s) failed at %s, and it "
                            "succeeded\n", name, n, mode ? "sticky" : "once", site_name(fail_site));
            }
            else
                ck_assert_msg(msg[0], "%s: allocation %ld failed: -1 without a message", name, n);
        }
    }
    /* A run that succeeds although one of its allocations failed ignored it on purpose (an
     * optional cache) or wrongly: the ops that must not, check their output themselves. */
    fprintf(stderr, "faults: %-28s %5ld allocations, %ld runs survived a failure\n", name, total,
            survived);
    return total;
}

/* ============================================================================================
 * Fixtures: a tiny packed model written once (with no injection)
 * ========================================================================================== */

static char model_path[512], pack_dir[512];

/* The tiny synthetic model with the int8 lm_head and its 2-bit planes (the default packing
 * options), written by the shared helper: the same code path bn_pack_write's fault runs exercise. */
static int pack(const char *path, bn_error *err)
{
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    po.lm_head_i8 = BN_PACK_LM_PLANES;
    return bn_test_pack_synth("tiny", &po, path, err);
}

static void setup(void)
{
    const char *d = getenv("BN_TEST_TMPDIR");
    snprintf(pack_dir, sizeof pack_dir, "%s", bn_test_path("faults"));
    mkdir(d && *d ? d : "/tmp", 0755);
    ck_assert_msg(mkdir(pack_dir, 0755) == 0 || errno == EEXIST, "%s: %s", pack_dir, strerror(errno));
    snprintf(model_path, sizeof model_path, "%.490s/tiny.bnpk", pack_dir);
    bn_error err = {{0}};
    ck_assert_msg(pack(model_path, &err) == 0, "%s", err.msg);
}

/* A failed assertion inside an armed run jumps out of it (CK_NOFORK): disarm before each test. */
static void disarm(void)
{
    active = 0;
    fail_at = 0;
}

static void teardown(void)
{
    unlink(model_path);
    rmdir(pack_dir);
}

static int fail_msg(char *msg, size_t n, const char *what)
{
    snprintf(msg, n, "%s", what);
    return -1;
}

/* ============================================================================================
 * Model, tokenizer, engine
 * ========================================================================================== */

static int op_model_open(void *ctx, char *msg, size_t n)
{
    (void)ctx;
    bn_model *m = NULL;
    bn_error err = {{0}};
    int rc = bn_model_open(model_path, &m, &err);
    if (rc) {
        OK(m == NULL, "bn_model_open failed but set *out");
        return fail_msg(msg, n, err.msg);
    }
    bn_model_close(m);
    return 0;
}

/* bn_model_open of the tiny model under every allocation failure. */
START_TEST(model_open)
{
    ck_assert_int_gt(run_faults("bn_model_open", op_model_open, NULL, NULL), 0);
}
END_TEST

/* Into a directory of its own: a failed write must leave neither the file nor a temporary. */
static int op_pack_write(void *ctx, char *msg, size_t n)
{
    const char *path = ctx;
    bn_error err = {{0}};
    if (pack(path, &err)) return fail_msg(msg, n, err.msg);
    OK(unlink(path) == 0, "%s: %s", path, strerror(errno));
    return 0;
}

/* bn_pack_write of the tiny model: a failed write leaves its directory empty. */
START_TEST(pack_write)
{
    char dir[600], path[700];
    snprintf(dir, sizeof dir, "%s/w", pack_dir);
    ck_assert_int_eq(mkdir(dir, 0755) == 0 || errno == EEXIST, 1);
    snprintf(path, sizeof path, "%s/out.bnpk", dir);
    ck_assert_int_gt(run_faults("bn_pack_write", op_pack_write, path, dir), 0);
    ck_assert_int_eq(dir_entries(dir), 0);
    rmdir(dir);
}
END_TEST

static int op_tokenizer_new(void *ctx, char *msg, size_t n)
{
    bn_error err = {{0}};
    bn_tokenizer *tk = bn_tokenizer_new(ctx, &err);
    if (!tk) return fail_msg(msg, n, err.msg);
    bn_tokenizer_free(tk);
    return 0;
}

/* bn_tokenizer_new over the tiny model's vocabulary. */
START_TEST(tokenizer_new)
{
    bn_model *m = NULL;
    bn_error err = {{0}};
    ck_assert_msg(bn_model_open(model_path, &m, &err) == 0, "%s", err.msg);
    ck_assert_int_gt(run_faults("bn_tokenizer_new", op_tokenizer_new, m->vocab, NULL), 0);
    bn_model_close(m);
}
END_TEST

/* ============================================================================================
 * Conversion of other families' forms: a 1bitLLM HF directory (latent weights, SentencePiece
 * tokenizer.model + added_tokens.json) and a Llama3-8B-1.58-shaped GGUF (arch llama, permuted
 * q/k, untied output), each read and packed with the Nth allocation failing.
 * ========================================================================================== */

/* Removes a directory of plain files (the HF form the test wrote). */
static int rm_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    char p[1200];
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            unlink(p);
        }
    closedir(d);
    return rmdir(dir);
}

/* Writes preset's form (hf: 1, else GGUF I2_S) under pack_dir as `name`, with no injection. */
static void write_form(const char *preset, int hf, const char *name, char *path, size_t len)
{
    bn_synth sy;
    bn_error err = {{0}};
    snprintf(path, len, "%.490s/%s", pack_dir, name);
    bn_vocab *v = bn_test_synth(preset, &sy, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    int rc = hf ? bn_hf_write_synth_form(&sy, v, path, BN_HF_NATIVE, 1, &err)
                : bn_gguf_write_synth(&sy, v, path, BN_GGML_I2_S, &err);
    bn_vocab_free(v);
    ck_assert_msg(rc == 0, "%s", err.msg);
}

typedef struct { const char *src, *out; } convert_ctx;

static int op_convert(void *ctx, char *msg, size_t n)
{
    const convert_ctx *c = ctx;
    bn_error err = {{0}};
    bn_source *src = NULL;
    if (bn_source_open(c->src, &src, &err)) {
        OK(src == NULL, "bn_source_open failed but set *out");
        return fail_msg(msg, n, err.msg);
    }
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    int rc = bn_pack_write(src, c->out, &po, &err);
    bn_source_close(src);
    if (rc) return fail_msg(msg, n, err.msg);
    OK(unlink(c->out) == 0, "%s: %s", c->out, strerror(errno));
    return 0;
}

/* Converting a 1bitLLM HF directory and a llama-arch GGUF: every failure is clean, leaks
 * nothing and leaves no partial packed file. */
START_TEST(convert_families)
{
    char hf[600], gguf[600], dir[600], out[700];
    write_form("tiny-1bitllm", 1, "hf-1bitllm", hf, sizeof hf);
    write_form("tiny-llama3", 0, "llama3.gguf", gguf, sizeof gguf);
    snprintf(dir, sizeof dir, "%s/c", pack_dir);
    ck_assert_int_eq(mkdir(dir, 0755) == 0 || errno == EEXIST, 1);
    snprintf(out, sizeof out, "%s/out.bnpk", dir);
    convert_ctx a = {hf, out}, b = {gguf, out};
    ck_assert_int_gt(run_faults("convert 1bitLLM HF", op_convert, &a, dir), 0);
    ck_assert_int_gt(run_faults("convert llama GGUF", op_convert, &b, dir), 0);
    ck_assert_int_eq(dir_entries(dir), 0);
    rmdir(dir);
    unlink(gguf);
    ck_assert_int_eq(rm_flat_dir(hf), 0);
}
END_TEST

/* tokenizer.model parsing (untrusted bytes), then the SPM tokenizer built from it. */
static int op_spm(void *ctx, char *msg, size_t n)
{
    const bn_vocab *v = ctx;
    uint8_t *bytes = NULL;
    size_t len = 0;
    bn_vocab *back = NULL;
    bn_error err = {{0}};
    if (bn_spm_model_write(v, &bytes, &len, &err)) return fail_msg(msg, n, err.msg);
    int rc = bn_spm_model_parse(bytes, len, "tokenizer.model", &back, &err);
    free(bytes);
    if (rc) return fail_msg(msg, n, err.msg);
    bn_tokenizer *tk = bn_tokenizer_new(back, &err);
    if (!tk) {
        bn_vocab_free(back);
        return fail_msg(msg, n, err.msg);
    }
    bn_tokenizer_free(tk);
    bn_vocab_free(back);
    return 0;
}

START_TEST(spm_model)
{
    bn_error err = {{0}};
    bn_vocab *v = bn_vocab_builtin_kind(BN_VOCAB_SPM, 512, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    ck_assert_int_gt(run_faults("tokenizer.model + SPM tokenizer", op_spm, v, NULL), 0);
    bn_vocab_free(v);
}
END_TEST

/* A byte-level BPE tokenizer.json: the 256 byte tokens (GPT-2's byte-to-unicode map, written
 * as \u escapes), two merges, two added tokens; and a tokenizer_config.json. */
static char small_json[16384];
static size_t small_json_len;
static const char small_config[] =
    "{\"bos_token\":{\"content\":\"<s>\"},\"eos_token\":\"<|eot_id|>\","
    "\"chat_template\":\"{{ '<|start_header_id|>' + message['role'] }}\"}";

static void make_small_json(void)
{
    char *p = small_json, *end = small_json + sizeof small_json;
    p += snprintf(p, (size_t)(end - p),
                  "{\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\","
                  "\"add_prefix_space\":false,\"use_regex\":true},\"added_tokens\":["
                  "{\"id\":258,\"content\":\"<|eot_id|>\",\"special\":true},"
                  "{\"id\":259,\"content\":\"<s>\",\"special\":true}],"
                  "\"model\":{\"type\":\"BPE\",\"vocab\":{");
    for (int b = 0, extra = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        p += snprintf(p, (size_t)(end - p), "\"\\u%04x\":%d,", printable ? b : 256 + extra++, b);
    }
    p += snprintf(p, (size_t)(end - p), "\"ab\":256,\"abb\":257},\"merges\":[\"a b\",[\"ab\",\"b\"]]}}");
    ck_assert(p < end);
    small_json_len = (size_t)(p - small_json);
}

static int op_vocab_hf(void *ctx, char *msg, size_t n)
{
    (void)ctx;
    bn_vocab *v = NULL;
    bn_error err = {{0}};
    if (bn_vocab_load_hf_mem(small_json, small_json_len, small_config, sizeof small_config - 1,
                             "tokenizer.json", &v, &err)) {
        OK(v == NULL, "bn_vocab_load_hf_mem failed but set *out");
        return fail_msg(msg, n, err.msg);
    }
    OK(v->n_tokens == 260, "n_tokens %u", v->n_tokens);
    OK(v->n_merges == 2, "n_merges %u", v->n_merges);
    OK(v->bos == 259, "bos %d", (int)v->bos);
    bn_tokenizer *tk = bn_tokenizer_new(v, &err);
    int rc = tk ? 0 : fail_msg(msg, n, err.msg);
    bn_tokenizer_free(tk);
    bn_vocab_free(v);
    return rc;
}

/* A tokenizer.json + tokenizer_config.json loaded from memory, then a tokenizer built on it. */
START_TEST(vocab_hf)
{
    make_small_json();
    ck_assert_int_gt(run_faults("bn_vocab_load_hf_mem", op_vocab_hf, NULL, NULL), 0);
}
END_TEST

typedef struct engine_case {
    const bn_model *m;
    uint32_t n_seq;   /* > 1: the caches of the extra sequences too */
} engine_case;

static int op_engine_create(void *ctx, char *msg, size_t n)
{
    const engine_case *c = ctx;
    bn_engine_opts o;
    bn_engine_opts_default(&o);
    o.n_threads = 1;
    o.n_seq = c->n_seq;
    bn_engine *e = NULL;
    bn_error err = {{0}};
    if (bn_engine_create(c->m, &o, &e, &err)) {
        OK(e == NULL, "bn_engine_create failed but set *out");
        return fail_msg(msg, n, err.msg);
    }
    bn_engine_free(e);
    return 0;
}

/* bn_engine_create with one sequence and with three (the extra KV caches). */
START_TEST(engine_create)
{
    bn_model *m = NULL;
    bn_error err = {{0}};
    ck_assert_msg(bn_model_open(model_path, &m, &err) == 0, "%s", err.msg);
    engine_case one = {m, 1}, three = {m, 3};
    ck_assert_int_gt(run_faults("bn_engine_create", op_engine_create, &one, NULL), 0);
    ck_assert_int_gt(run_faults("bn_engine_create n_seq 3", op_engine_create, &three, NULL), 0);
    bn_model_close(m);
}
END_TEST

/* ============================================================================================
 * Server: the request parser, the response builders, the config, the channel
 * ========================================================================================== */

typedef struct api_case {
    enum bn_api_kind kind;
    const char *body;
    int ok;   /* the body is valid */
} api_case;

static const api_case API_CASES[] = {
    {BN_API_CHAT,
     "{\"model\":\"bitnet\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
     "{\"role\":\"user\",\"content\":\"Hello, h\\u00e9llo\"},{\"role\":\"assistant\",\"content\":"
     "\"Hi.\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"part one \"},"
     "{\"type\":\"text\",\"text\":\"part two\"}]}],\"stream\":true,\"stream_options\":"
     "{\"include_usage\":true},\"max_tokens\":32,\"temperature\":0.7,\"top_p\":0.9,\"seed\":42,"
     "\"stop\":[\"\\n\\n\",\"User:\"],\"presence_penalty\":0.5}",
     1},
    {BN_API_COMPLETION, "{\"prompt\":\"Once upon a time\",\"max_tokens\":16,\"stop\":\"end\"}", 1},
    {BN_API_COMPLETION, "{\"prompt\":[1,2,3,4,5],\"temperature\":0}", 1},
    {BN_API_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 0},
    {BN_API_CHAT, "{\"messages\": [", 0},
};

static long misreported;   /* out-of-memory parses jansson reported as invalid JSON */

static int op_api_parse(void *ctx, char *msg, size_t n)
{
    const api_case *c = ctx;
    const bn_api_limits lim = {.default_max_tokens = 64, .max_max_tokens = 1024};
    bn_api_request r;
    bn_api_error e;
    memset(&r, 0, sizeof r);
    memset(&e, 0, sizeof e);
    int rc = bn_api_parse(c->kind, c->body, strlen(c->body), &lim, 512, &r, &e);
    bn_api_request_free(&r);
    if (rc) {
        OK(e.status >= 400, "status %d", e.status);
        /* a valid body may fail only for want of memory, and then must not blame the client;
         * except that jansson 2.14 reports some failed allocations in its lexer as syntax
         * errors, which no caller can tell apart (counted, not failed) */
        if (c->ok && e.status < 500 && strncmp(e.message, "invalid JSON", 12) == 0) misreported++;
        else if (c->ok) OK(e.status >= 500, "valid body refused with %d: %s", e.status, e.message);
        char *js = bn_api_error_json(&e);
        free(js);
        return fail_msg(msg, n, e.message[0] ? e.message : "(empty message)");
    }
    OK(c->ok, "an invalid body parsed: %s", c->body);
    return 0;
}

/* bn_api_parse of each API_CASES body: a valid body fails only as a 5xx (or jansson's
 * misreport, counted), an invalid one fails every run. */
START_TEST(api_parse)
{
    const api_case *c = &API_CASES[_i];
    char name[40];
    snprintf(name, sizeof name, "bn_api_parse #%d", _i);
    if (c->ok) {
        misreported = 0;
        ck_assert_int_gt(run_faults(name, op_api_parse, (void *)c, NULL), 0);
        fprintf(stderr, "faults: %-28s %ld out-of-memory runs reported as invalid JSON (jansson)\n",
                name, misreported);
        return;
    }
    /* an invalid body: every run fails; stop once a run hits no injected failure */
    long k;
    for (k = 1; k < MAX_STEPS; k++) {
        long before = n_live;
        n_calls = n_failed = 0;
        fail_at = k;
        char msg[600];
        active = 1;
        int rc = op_api_parse((void *)c, msg, sizeof msg);
        active = 0;
        fail_at = 0;
        ck_assert_int_eq(rc, -1);
        ck_assert_msg(n_live == before, "%s: allocation %ld failed: %ld blocks leaked", name, k,
                      n_live - before);
        if (n_failed == 0) break;
    }
    ck_assert_msg(k < MAX_STEPS, "%s: still failing after %d allocations", name, MAX_STEPS);
    ck_assert_int_gt(k, 1);   /* the parse allocates: at least one run had a failure injected */
}
END_TEST

/* The response builders: NULL or exactly the text of a run without failures. */
typedef struct built {
    char *s[6];
    size_t len[6];
} built;

static void build_all(built *b)
{
    const bn_api_usage u = {.prompt_tokens = 12, .completion_tokens = 5, .cached_tokens = 3};
    bn_api_error e;
    bn_api_fail(&e, 400, "invalid_request_error", "messages", "", "'messages' is required");
    const char text[] = "h\xc3\xa9llo \"world\"\n";
    b->s[0] = bn_api_response_json(BN_API_CHAT, "chatcmpl-1", 1700000000, "bitnet", text,
                                   sizeof text - 1, "stop", &u);
    b->len[0] = b->s[0] ? strlen(b->s[0]) : 0;
    b->s[1] = bn_api_response_json(BN_API_COMPLETION, "cmpl-1", 5, "m", "abc", 3, "length", &u);
    b->len[1] = b->s[1] ? strlen(b->s[1]) : 0;
    b->s[2] = bn_api_stream_chunk(BN_API_CHAT, "chatcmpl-x", 7, "m", text, sizeof text - 1, 1,
                                  NULL, &b->len[2]);
    b->s[3] = bn_api_stream_usage(BN_API_CHAT, "chatcmpl-x", 7, "m", &u, &b->len[3]);
    b->s[4] = bn_api_stream_error(&e, &b->len[4]);
    b->s[5] = bn_api_error_json(&e);
    b->len[5] = b->s[5] ? strlen(b->s[5]) : 0;
}

static built want;

static int op_builders(void *ctx, char *msg, size_t n)
{
    (void)ctx;
    built b;
    build_all(&b);
    int rc = 0;
    for (int i = 0; i < 6; i++) {
        if (!b.s[i]) {
            rc = fail_msg(msg, n, "a builder returned NULL");
            continue;
        }
        OK(b.len[i] == want.len[i] && memcmp(b.s[i], want.s[i], want.len[i]) == 0,
                      "builder %d under allocation failure returned '%.*s', not '%s'", i,
                      (int)b.len[i], b.s[i], want.s[i]);
        free(b.s[i]);
    }
    return rc;
}

/* The response builders: under failure NULL or exactly the clean run's text. */
START_TEST(api_builders)
{
    build_all(&want);
    for (int i = 0; i < 6; i++) ck_assert_ptr_nonnull(want.s[i]);
    ck_assert_int_gt(run_faults("bn_api_* builders", op_builders, NULL, NULL), 0);
    for (int i = 0; i < 6; i++) free(want.s[i]);
}
END_TEST

static const char CONFIG_TEXT[] =
    "# a realistic bitnetd.conf\n"
    "listen = 127.0.0.1:8080\n"
    "listen = [::1]:8081\n"
    "model = /models/bitnet.bnpk\n"
    "cache_dir = \"/var/cache/bitnetd\"\n"
    "model_name = bitnet-b1.58-2b\n"
    "n_ctx = 2048\n"
    "workers = 2\n"
    "threads = 4\n"
    "cpus = 0-3,8\n"
    "api_keys = sk-one:batch\n"
    "api_keys = sk-two, sk-three:staff\n"
    "key_class = batch priority=10 max_concurrent=2 tokens_per_minute=6000\n"
    "key_class = staff priority=-1\n"
    "default_max_tokens = 128\n"
    "pid_file = /run/bitnetd.pid\n"
    "access_log = off   # no access log\n"
    "error_log = stderr\n"
    "log_level = warn\n";

static int op_config(void *ctx, char *msg, size_t n)
{
    (void)ctx;
    bn_srv_config c;
    bn_error err = {{0}};
    /* void, and abort()s when a default does not apply (out of memory included): not injected */
    active = 0;
    bn_config_defaults(&c);
    active = 1;
    int rc = bn_config_load_string(&c, CONFIG_TEXT, sizeof CONFIG_TEXT - 1, "bitnetd.conf", &err);
    if (rc == 0) OK(c.model && strcmp(c.model, "/models/bitnet.bnpk") == 0, "model %s", c.model);
    bn_config_free(&c);
    return rc ? fail_msg(msg, n, err.msg) : 0;
}

/* bn_config_load_string of a realistic bitnetd.conf. */
START_TEST(config_load)
{
    ck_assert_int_gt(run_faults("bn_config_load_string", op_config, NULL, NULL), 0);
}
END_TEST

/* The key table built from CONFIG_TEXT's keys and classes. */
static int op_limits(void *ctx, char *msg, size_t n)
{
    const bn_srv_config *c = ctx;
    bn_error err = {{0}};
    bn_limits *l = NULL;
    if (bn_limits_new(c, &l, &err)) {
        OK(l == NULL, "bn_limits_new failed but returned %p", (void *)l);
        return fail_msg(msg, n, err.msg);
    }
    OK(bn_limits_auth(l, "Bearer sk-three") == 3, "sk-three is key %d", bn_limits_auth(l, "Bearer sk-three"));
    OK(bn_limits_priority(l, 1, 0, 0) == 10, "batch priority %d", bn_limits_priority(l, 1, 0, 0));
    bn_limits_unref(bn_limits_ref(l));
    bn_limits_unref(l);
    return 0;
}

/* bn_limits_new from that config's keys and classes. */
START_TEST(limits_new)
{
    bn_srv_config c;
    bn_error err = {{0}};
    bn_config_defaults(&c);
    ck_assert_msg(bn_config_load_string(&c, CONFIG_TEXT, sizeof CONFIG_TEXT - 1, "bitnetd.conf",
                                        &err) == 0, "%s", err.msg);
    ck_assert_int_gt(run_faults("bn_limits_new", op_limits, &c, NULL), 0);
    bn_config_free(&c);
}
END_TEST

/* Every encoder into one buffer, then every frame decoded back, and one read through a pipe. */
static int op_channel(void *ctx, char *msg, size_t n)
{
    (void)ctx;
    const int32_t ids[] = {1, 2, 3, 500};
    const char *stops[] = {"\n\n", "User:", "\xc3\xa9"};
    bn_fr_generate g;
    memset(&g, 0, sizeof g);
    bn_sampling_greedy(&g.sampling);
    g.max_tokens = 16;
    g.n_prompt = 4;
    g.n_stop = 3;
    bn_fr_done d;
    memset(&d, 0, sizeof d);
    d.finish = BN_FINISH_STOP;
    bn_buf b = {0};
    int rc = 0;
    if (bn_frame_put_generate(&b, 7, &g, ids, stops) || bn_frame_put_chunk(&b, 7, ids, 2, "h\xc3\xa9", 3) ||
        bn_frame_put(&b, BN_FR_DONE, 7, &d, sizeof d) || bn_frame_put_error(&b, 8, BN_FRERR_CONTEXT, "too long") ||
        bn_frame_put(&b, BN_FR_CANCEL, 9, NULL, 0)) {
        bn_buf_free(&b);
        return fail_msg(msg, n, "an encoder failed");
    }
    bn_error err = {{0}};
    size_t off = 0;
    int frames = 0;
    while (off < b.len) {
        bn_frame f;
        long r = bn_frame_decode(b.p + off, b.len - off, &f, &err);
        OK(r > 0, "decode: %s", err.msg);
        off += (size_t)r;
        frames++;
        if (f.type == BN_FR_GENERATE) {
            bn_generate_view v;
            OK(bn_frame_get_generate(&f, &v, &err) == 0, "%s", err.msg);
            OK(v.g.n_stop == 3, "n_stop %u", v.g.n_stop);
        }
    }
    OK(frames == 5, "%d frames", frames);
    /* the blocking reader grows its buffer: through a pipe */
    int p[2];
    OK(pipe(p) == 0, "pipe: %s", strerror(errno));
    OK(write(p[1], b.p, b.len) == (ssize_t)b.len, "short write to the pipe");
    close(p[1]);
    bn_buf rb = {0};
    bn_frame f;
    for (int i = 0; i < frames && rc == 0; i++) {
        int got = bn_chan_read_frame(p[0], &rb, &f, &err);
        if (got != 1) rc = fail_msg(msg, n, err.msg[0] ? err.msg : "bn_chan_read_frame: no frame");
    }
    close(p[0]);
    bn_buf_free(&rb);
    bn_buf_free(&b);
    return rc;
}

/* The channel's encoders, decoder and blocking reader. */
START_TEST(channel)
{
    ck_assert_int_gt(run_faults("channel encode/decode", op_channel, NULL, NULL), 0);
}
END_TEST

static void *volatile sink;

/* The allocator itself: a failure is injected where asked and the set balances. */
START_TEST(allocator)
{
    long before = n_live;
    active = 1;
    void *a = malloc(10), *b = NULL;
    sink = a;   /* a malloc whose block is only freed may be optimised away */
    char *s = strdup("abc");
    int rc = posix_memalign(&b, 64, 100);
    long three = n_live - before;
    a = realloc(a, 1000);
    long still = n_live - before;
    free(a);
    free(b);
    free(s);
    active = 0;
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(three, 3);
    ck_assert_int_eq(still, 3);
    ck_assert_int_eq(n_live, before);
    n_calls = n_failed = 0;
    fail_at = 2;
    active = 1;
    void *x = malloc(1), *y = calloc(1, 1);
    sink = x;
    char *z = strndup("hello", 2);
    active = 0;
    fail_at = 0;
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_null(y);
    ck_assert_str_eq(z, "he");
    ck_assert_int_eq(n_failed, 1);
    free(x);
    free(z);
    ck_assert_int_eq(n_live, before);
}
END_TEST

static Suite *faults_suite(void)
{
    Suite *s = suite_create("faults");
    TCase *t = tcase_create("faults");
    tcase_add_unchecked_fixture(t, setup, teardown);
    tcase_add_checked_fixture(t, disarm, NULL);
    tcase_set_timeout(t, 120);
    tcase_add_test(t, allocator);
    tcase_add_test(t, model_open);
    tcase_add_test(t, pack_write);
    tcase_add_test(t, tokenizer_new);
    tcase_add_test(t, vocab_hf);
    tcase_add_test(t, convert_families);
    tcase_add_test(t, spm_model);
    tcase_add_test(t, engine_create);
    tcase_add_loop_test(t, api_parse, 0, (int)(sizeof API_CASES / sizeof API_CASES[0]));
    tcase_add_test(t, api_builders);
    tcase_add_test(t, config_load);
    tcase_add_test(t, limits_new);
    tcase_add_test(t, channel);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    json_set_alloc_funcs(__wrap_malloc, __wrap_free);   /* jansson's blocks are counted too */
    SRunner *sr = srunner_create(faults_suite());
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
