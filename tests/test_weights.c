/* Shared weights: both modes give the same model; the shm copy is a sealed read-only memfd
 * mapping named "bitnetd-weights"; after fork, N processes touching every weight page cost one
 * copy (summed Pss); bn_model_open_region validates exactly like bn_model_open.
 * The forked children only read memory and _exit: no OpenMP, no Check calls. */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/file.h"
#include "model/model.h"
#include "model/model_write.h"
#include "model/source_synth.h"
#include "model/synth.h"
#include "server/config.h"
#include "server/weights.h"
#include "text/tokenizer.h"
#include "testutil.h"


#define N_CHILDREN 3

static char model_path[512];

/* The tiny synthetic model: `$BN_BITNET mkmodel tiny` when the tool is there (keeps this process
 * free of OpenMP before it forks, like the master), else the same file written in-process. */
static void make_model(void)
{
    snprintf(model_path, sizeof model_path, "%s", bn_test_path("weights.bnpk"));
    const char *bitnet = getenv("BN_BITNET");
    if (bitnet && access(bitnet, X_OK) == 0) {
        char cmd[1536];
        snprintf(cmd, sizeof cmd, "'%s' mkmodel tiny '%s' >/dev/null 2>&1", bitnet, model_path);
        ck_assert_int_eq(bn_test_sh(cmd), 0);
        return;
    }
    bn_error err = {{0}};
    ck_assert_msg(bn_test_pack_synth("tiny", NULL, model_path, &err) == 0, "%s", err.msg);
}

static void remove_model(void) { unlink(model_path); }

static size_t page_size(void) { return (size_t)sysconf(_SC_PAGESIZE); }

static void open_ok(int mode, int want_mlock, int want_huge, bn_weights *w, char *warn)
{
    bn_error err;
    ck_assert_msg(bn_weights_open(model_path, mode, want_mlock, want_huge, w, warn, &err) == 0, "%s", err.msg);
    ck_assert_ptr_nonnull(w->model);
    ck_assert_int_eq(w->mode, mode);
}

static void assert_same_model(const bn_model *a, const bn_model *b)
{
    ck_assert_int_eq(memcmp(&a->cfg, &b->cfg, sizeof a->cfg), 0);
    ck_assert_uint_eq(a->map_len, b->map_len);
    ck_assert_uint_eq(a->n_tensors, b->n_tensors);
    ck_assert_uint_gt(a->n_tensors, 0);
    for (uint32_t i = 0; i < a->n_tensors; i++) {
        const bn_tensor *x = &a->tensors[i], *y = &b->tensors[i];
        ck_assert_str_eq(x->name, y->name);
        ck_assert_uint_eq(x->nbytes, y->nbytes);
        ck_assert_msg(memcmp(x->data, y->data, x->nbytes) == 0, "tensor %s differs", x->name);
    }
}

static void assert_inside_shm(const bn_weights *w)
{
    const char *lo = w->shm, *hi = lo + w->shm_len;
    ck_assert_ptr_eq(w->model->map, w->shm);
    for (uint32_t i = 0; i < w->model->n_tensors; i++) {
        const bn_tensor *t = &w->model->tensors[i];
        ck_assert_msg((const char *)t->data >= lo && (const char *)t->data + t->nbytes <= hi, "%s outside shm",
                      t->name);
    }
}

/* The plain mapping and the shm copy hold the same verified model, every tensor inside the shm. */
START_TEST(test_modes_identical)
{
    bn_weights a, b;
    bn_error err;
    open_ok(BN_WEIGHTS_MMAP, 0, 0, &a, NULL);
    char warn[256] = "x";
    open_ok(BN_WEIGHTS_SHM, 0, 0, &b, warn);
    ck_assert_str_eq(warn, "");
    ck_assert_ptr_null(a.shm);
    ck_assert_ptr_nonnull(b.shm);
    ck_assert_uint_ge(b.shm_len, b.model->map_len);
    ck_assert_int_eq(b.locked, 0);
    assert_same_model(a.model, b.model);
    assert_inside_shm(&b);
    ck_assert_msg(bn_model_verify(b.model, &err) == 0, "%s", err.msg);
    bn_weights_close(&a);
    bn_weights_close(&b);
    ck_assert_ptr_null(b.model);
    ck_assert_ptr_null(b.shm);
}
END_TEST

/* The /proc/self/maps line of the mapping that starts at p, or 0. */
static int maps_line(const void *p, char *line, size_t len)
{
    FILE *f = fopen("/proc/self/maps", "re");
    ck_assert_ptr_nonnull(f);
    int found = 0;
    while (!found && fgets(line, (int)len, f)) found = strtoul(line, NULL, 16) == (uintptr_t)p;
    fclose(f);
    return found;
}

/* The shm copy is a sealed, read-only memfd mapping named bitnetd-weights, gone after close. */
START_TEST(test_shm_mapping)
{
    bn_weights w;
    char line[512];
    open_ok(BN_WEIGHTS_SHM, 0, 0, &w, NULL);
    ck_assert_msg(maps_line(w.shm, line, sizeof line), "no mapping at %p", w.shm);
    ck_assert_msg(strstr(line, "/memfd:bitnetd-weights"), "%s", line);
    ck_assert_msg(strstr(line, " r--s "), "not read-only shared: %s", line);   /* the writable one is gone */
    /* sealed: not even this process (or a worker) can make the weights writable again */
    ck_assert_int_ne(mprotect(w.shm, w.shm_len, PROT_READ | PROT_WRITE), 0);
    void *shm = w.shm;
    bn_weights_close(&w);
    ck_assert_msg(!maps_line(shm, line, sizeof line) || !strstr(line, "bitnetd-weights"), "still mapped: %s",
                  line);
}
END_TEST

/* Asking for huge pages and mlock: the same model; either locked or a warning that says mlock. */
START_TEST(test_shm_huge_mlock)
{
    bn_weights a, b;
    char warn[256];
    open_ok(BN_WEIGHTS_MMAP, 0, 0, &a, NULL);
    open_ok(BN_WEIGHTS_SHM, 1, 1, &b, warn);   /* hugetlb if reserved, else advised shmem */
    assert_same_model(a.model, b.model);
    assert_inside_shm(&b);
    ck_assert_int_eq(b.huge, 1);
    ck_assert_msg(b.locked ? warn[0] == 0 : strstr(warn, "mlock") != NULL, "locked %d, warn '%s'", b.locked, warn);
    bn_weights_close(&b);
    bn_weights_close(&a);
}
END_TEST

/* A failed mlock is a warning naming the model, not an error: forced with RLIMIT_MEMLOCK 0.
 * Skipped (loudly) where this process may lock memory anyway (CAP_IPC_LOCK). */
START_TEST(test_mlock_failure_warns)
{
    bn_weights a, b;
    char warn[256];
    open_ok(BN_WEIGHTS_MMAP, 0, 0, &a, NULL);
    struct rlimit old, zero = {0, 0};
    ck_assert_int_eq(getrlimit(RLIMIT_MEMLOCK, &old), 0);
    zero.rlim_max = old.rlim_max;
    ck_assert_int_eq(setrlimit(RLIMIT_MEMLOCK, &zero), 0);
    if (mlock(a.model->map, page_size()) == 0) {
        munlock(a.model->map, page_size());
        setrlimit(RLIMIT_MEMLOCK, &old);
        bn_weights_close(&a);
        BN_TEST_SKIP("this process may lock memory regardless of RLIMIT_MEMLOCK (CAP_IPC_LOCK)");
    }
    bn_error err;
    int rc = bn_weights_open(model_path, BN_WEIGHTS_SHM, 1, 0, &b, warn, &err);
    setrlimit(RLIMIT_MEMLOCK, &old);   /* before any assertion can end the test */
    ck_assert_msg(rc == 0, "%s", err.msg);
    ck_assert_int_eq(b.locked, 0);
    ck_assert_msg(strstr(warn, "mlock") && strstr(warn, model_path), "warn '%s'", warn);
    assert_same_model(a.model, b.model);
    bn_weights_close(&b);
    bn_weights_close(&a);
}
END_TEST

/* Pss and Rss (kB) of this pid's mappings inside [p, p+len); -1 if unreadable. Asserts
 * nothing: the caller still has children to reap. */
static int smaps_of(pid_t pid, const void *p, size_t len, long *pss, long *rss)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%ld/smaps", (long)pid);
    FILE *f = fopen(path, "re");
    if (!f) return -1;
    uintptr_t lo = (uintptr_t)p, hi = lo + len, start, end;
    int in = 0;
    long v;
    *pss = *rss = 0;
    while (fgets(line, sizeof line, f)) {
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) == 3)
            in = start >= lo && start < hi;
        else if (in && sscanf(line, "Pss: %ld kB", &v) == 1)
            *pss += v;
        else if (in && sscanf(line, "Rss: %ld kB", &v) == 1)
            *rss += v;
    }
    fclose(f);
    return 0;
}

/* A child: read one byte of every page, say so, wait for the parent to close the pipe, exit.
 * alarm() bounds its life if the parent dies. */
static void child_touch(const volatile char *p, size_t len, int ready, int release)
{
    alarm(60);
    unsigned sum = 0;
    for (size_t off = 0; off < len; off += page_size()) sum += (unsigned char)p[off];
    sum += (unsigned char)p[len - 1];
    char c = (char)sum;
    if (write(ready, &c, 1) != 1) _exit(2);
    while (read(release, &c, 1) < 0 && errno == EINTR) {}
    _exit(0);
}

/* Parent + N children each touching the whole mapping: the summed Pss is one copy. */
static void check_one_copy(const void *base, size_t len)
{
    int ready[2], release[2];
    ck_assert_int_eq(pipe(ready), 0);
    ck_assert_int_eq(pipe(release), 0);
    pid_t kids[N_CHILDREN];
    for (int i = 0; i < N_CHILDREN; i++) {
        kids[i] = fork();
        ck_assert_int_ge(kids[i], 0);
        if (kids[i] == 0) {
            close(ready[0]);
            close(release[1]);
            child_touch(base, len, ready[1], release[0]);
        }
    }
    close(ready[1]);
    close(release[0]);
    int got = 0;
    for (int tries = 0; got < N_CHILDREN && tries < 30; tries++) {
        struct pollfd pfd = {ready[0], POLLIN, 0};
        char c;
        if (poll(&pfd, 1, 1000) > 0 && read(ready[0], &c, 1) == 1) got++;
    }
    long total = 0, pss = 0, rss, rss_child[N_CHILDREN];
    int unread = got == N_CHILDREN ? smaps_of(getpid(), base, len, &pss, &rss) : -1;
    total += pss;
    for (int i = 0; !unread && i < N_CHILDREN; i++) {
        unread = smaps_of(kids[i], base, len, &pss, &rss_child[i]);
        total += pss;
    }
    close(release[1]);   /* lets the children exit */
    close(ready[0]);
    int status[N_CHILDREN];
    for (int i = 0; i < N_CHILDREN; i++) {
        if (got != N_CHILDREN) kill(kids[i], SIGKILL);
        while (waitpid(kids[i], &status[i], 0) < 0 && errno == EINTR) {}
    }
    ck_assert_msg(got == N_CHILDREN, "only %d of %d children got ready", got, N_CHILDREN);
    ck_assert_msg(!unread, "cannot read /proc/PID/smaps");
    for (int i = 0; i < N_CHILDREN; i++)
        ck_assert_msg(WIFEXITED(status[i]) && WEXITSTATUS(status[i]) == 0, "child %d: status %d", i, status[i]);
    long pg = (long)page_size() / 1024, size_kb = (long)((len + page_size() - 1) / page_size()) * pg;
    for (int i = 0; i < N_CHILDREN; i++)   /* each child really has every page mapped */
        ck_assert_msg(rss_child[i] >= size_kb - pg, "child %d Rss %ld kB of %ld", i, rss_child[i], size_kb);
    /* Pss is truncated to whole kB per process: up to a kB short each */
    ck_assert_msg(total >= size_kb - 2 * pg && total <= size_kb + pg,
                  "summed Pss %ld kB over %d processes, one copy is %ld kB", total, N_CHILDREN + 1, size_kb);
}

START_TEST(test_one_copy_shm)
{
    bn_weights w;
    char line[512];
    open_ok(BN_WEIGHTS_SHM, 0, 0, &w, NULL);
    ck_assert(maps_line(w.shm, line, sizeof line) && strstr(line, "/memfd:bitnetd-weights"));
    check_one_copy(w.shm, w.model->map_len);
    bn_weights_close(&w);
}
END_TEST

START_TEST(test_one_copy_mmap)
{
    bn_weights w;
    char line[512], real[4096];
    open_ok(BN_WEIGHTS_MMAP, 0, 0, &w, NULL);
    ck_assert_ptr_nonnull(realpath(model_path, real));
    ck_assert(maps_line(w.model->map, line, sizeof line));
    line[strcspn(line, "\n")] = 0;
    size_t n = strlen(line), rn = strlen(real);
    ck_assert_msg(n >= rn && !strcmp(line + n - rn, real), "mapping is not the file: %s", line);
    check_one_copy(w.model->map, w.model->map_len);
    bn_weights_close(&w);
}
END_TEST

/* A 64-byte aligned private copy of the model file. */
static char *file_copy(size_t *len)
{
    char *s;
    bn_error err;
    ck_assert_int_eq(bn_read_file(model_path, 1 << 24, &s, len, &err), 0);
    void *a;
    ck_assert_int_eq(posix_memalign(&a, 64, *len), 0);
    memcpy(a, s, *len);
    free(s);
    return a;
}

static void write_file(const char *path, const void *p, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(p, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

/* The region error for (buf, len) is the file error for the same bytes, in both weight modes. */
static void assert_same_failure(const char *path, const char *buf, size_t len)
{
    bn_error e1, e2, e3;
    bn_model *m;
    bn_weights w;
    write_file(path, buf, len);
    ck_assert_int_ne(bn_model_open(path, &m, &e1), 0);
    ck_assert_ptr_null(m);
    ck_assert_int_ne(bn_model_open_region(path, buf, len, &m, &e2), 0);
    ck_assert_ptr_null(m);
    ck_assert_str_eq(e1.msg, e2.msg);
    ck_assert_int_ne(bn_weights_open(path, BN_WEIGHTS_SHM, 0, 0, &w, NULL, &e3), 0);
    ck_assert_ptr_null(w.model);
    ck_assert_str_eq(e1.msg, e3.msg);
}

START_TEST(test_region)
{
    size_t len;
    char *buf = file_copy(&len);
    bn_error err;
    bn_model *m, *ref;
    /* a valid region opens, and closing leaves the caller's memory alone */
    ck_assert_msg(bn_model_open_region("in-memory", buf, len, &m, &err) == 0, "%s", err.msg);
    ck_assert_msg(bn_model_open(model_path, &ref, &err) == 0, "%s", err.msg);
    assert_same_model(ref, m);
    bn_model_close(m);
    bn_model_close(ref);
    size_t len2;
    char *again = file_copy(&len2);
    ck_assert(len2 == len && memcmp(buf, again, len) == 0);
    free(again);
    /* corrupt, truncated, empty: the same errors as the file */
    const char *bad = bn_test_path("corrupt.bnpk");
    buf[100] ^= 0x5a;   /* in the header: checksum mismatch */
    assert_same_failure(bad, buf, len);
    buf[100] ^= 0x5a;
    assert_same_failure(bad, buf, len - 1);
    assert_same_failure(bad, buf, 3);
    assert_same_failure(bad, buf, 0);
    memcpy(buf, "NOTAMODL", 8);
    assert_same_failure(bad, buf, len);
    unlink(bad);
    /* misaligned memory is refused (kernels load tensors aligned) */
    char *off = malloc(len + 1);
    memcpy(off + 1, buf, len);
    ck_assert_int_ne(bn_model_open_region("x", off + 1, len, &m, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "aligned"));
    free(off);
    free(buf);
}
END_TEST

START_TEST(test_bad_inputs)
{
    bn_weights w;
    bn_error err;
    ck_assert_int_ne(bn_weights_open("/nonexistent.bnpk", BN_WEIGHTS_MMAP, 0, 0, &w, NULL, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent.bnpk"));
    ck_assert_int_ne(bn_weights_open("/nonexistent.bnpk", BN_WEIGHTS_SHM, 0, 0, &w, NULL, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent.bnpk"));
    ck_assert_int_ne(bn_weights_open("/tmp", BN_WEIGHTS_SHM, 0, 0, &w, NULL, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "not a regular file"));
    ck_assert_int_ne(bn_weights_open(model_path, 7, 0, 0, &w, NULL, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "mode"));
    ck_assert_ptr_null(w.model);
    bn_weights_close(&w);   /* harmless on a failed open */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("weights");
    TCase *tc = tcase_create("weights");
    tcase_add_unchecked_fixture(tc, make_model, remove_model);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_modes_identical);
    tcase_add_test(tc, test_shm_mapping);
    tcase_add_test(tc, test_shm_huge_mlock);
    tcase_add_test(tc, test_mlock_failure_warns);
    tcase_add_test(tc, test_one_copy_shm);
    tcase_add_test(tc, test_one_copy_mmap);
    tcase_add_test(tc, test_region);
    tcase_add_test(tc, test_bad_inputs);
    suite_add_tcase(s, tc);
    return bn_test_exit("test_weights", s);
}
