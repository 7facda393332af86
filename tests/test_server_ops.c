/* bitnetd end to end, operations: SIGHUP reloads under load (and a broken file refused), SIGTERM
 * drains in-flight streams, `bitnetd -t`, --daemon with --pid-file, serving without a config
 * file, --help / --version / --dump-config, and the weights shared by every worker (smaps Pss). */
#include <check.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "server_harness.h"

#define SJ(j, k) json_string_value(json_object_get((j), (k)))
#define IJ(j, k) json_integer_value(json_object_get((j), (k)))

static void teardown_all(void)
{
    bn_srv_stop_all();
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static bn_srv *start(const char *conf)
{
    bn_srv *s = bn_srv_start(conf, NULL);
    ck_assert_msg(s != NULL, "bitnetd did not start with:\n%s", conf);
    return s;
}

/* 0 when a short completion succeeds with its 4 tokens, else the status (or -1). */
static int short_request(int port)
{
    json_t *j;
    int st = bn_http_post_json(port, "/v1/completions",
                               "{\"prompt\":\"hi\",\"max_tokens\":4,\"ignore_eos\":true}", &j);
    int ok = st == 200 && IJ(json_object_get(j, "usage"), "completion_tokens") == 4;
    json_decref(j);
    return ok ? 0 : st ? st : -1;
}

/* ---- SIGHUP -------------------------------------------------------------------------- */

/* A client connection in a loop of short requests until told to stop (bounded in count). */
typedef struct loader {
    pthread_t th;
    int port;
    atomic_int *stop;
    int ok, failed, first_status;
} loader;

static void *loader_main(void *arg)
{
    loader *l = arg;
    for (int i = 0; i < 2000 && !atomic_load(l->stop); i++) {
        int rc = short_request(l->port);
        if (rc == 0) {
            l->ok++;
        } else {
            if (!l->failed) l->first_status = rc;
            l->failed++;
        }
    }
    return NULL;
}

/* Waits until no worker pid is one of old[] and all are idle or busy; 0, or -1 on timeout. */
static int wait_replaced(int port, const pid_t *old, int n, int timeout_ms)
{
    double end = bn_now() + timeout_ms / 1000.0;
    while (bn_now() < end) {
        pid_t p[16];
        char st[16][16];
        int k = bn_srv_worker_pids(port, p, 16, st), all = k == n;
        for (int i = 0; i < k && all; i++) {
            all &= p[i] > 0 && (!strcmp(st[i], "idle") || !strcmp(st[i], "busy"));
            for (int j = 0; j < n; j++) all &= p[i] != old[j];
        }
        if (all) return 0;
        nap_ms(50);
    }
    return -1;
}

static int total_ok(const loader *l, int n)
{
    int t = 0;
    for (int i = 0; i < n; i++) t += l[i].ok;
    return t;
}

START_TEST(sighup_under_load)
{
    bn_srv *s = start("workers = 2\n");
    atomic_int stop = 0;
    loader l[3];
    for (int i = 0; i < 3; i++) {
        l[i] = (loader){.port = s->port, .stop = &stop};
        ck_assert_int_eq(pthread_create(&l[i].th, NULL, loader_main, &l[i]), 0);
    }
    pid_t before[2], now[2];
    ck_assert_int_eq(bn_srv_worker_pids(s->port, before, 2, NULL), 2);
    int reload_failed = 0;
    for (int round = 0; round < 3 && !reload_failed; round++) {
        int ok0 = total_ok(l, 3);
        for (int k = 0; k < 200 && total_ok(l, 3) < ok0 + 5; k++) nap_ms(10);  /* load flows */
        pid_t old[2];
        reload_failed |= bn_srv_worker_pids(s->port, old, 2, NULL) != 2;
        kill(s->pid, SIGHUP);
        reload_failed |= wait_replaced(s->port, old, 2, 30000) != 0;
    }
    int ok_reloads = total_ok(l, 3);
    for (int k = 0; k < 200 && total_ok(l, 3) < ok_reloads + 10; k++) nap_ms(10);
    atomic_store(&stop, 1);
    int failed = 0, ok = 0, first = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(l[i].th, NULL);
        failed += l[i].failed;
        ok += l[i].ok;
        if (l[i].failed && !first) first = l[i].first_status;
    }
    if (reload_failed || failed) bn_srv_dump_log(s);
    ck_assert_msg(!reload_failed, "SIGHUP did not replace every worker within 30 s");
    ck_assert_msg(failed == 0, "%d of %d requests failed across 3 reloads (first: %d)", failed,
                  failed + ok, first);
    ck_assert_int_gt(ok, 20);
    ck_assert_int_eq(bn_srv_worker_pids(s->port, now, 2, NULL), 2);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) ck_assert_int_ne(now[i], before[j]);
    bn_srv_stop(s, 10000);
}
END_TEST

/* A reload of a broken file is refused (and logged); the old configuration keeps serving. */
START_TEST(sighup_broken_config)
{
    bn_srv *s = start("workers = 2\n");
    pid_t master = s->pid, before[2], after[2];
    ck_assert_int_eq(bn_srv_worker_pids(s->port, before, 2, NULL), 2);
    FILE *f = fopen(s->conf, "a");
    ck_assert_ptr_nonnull(f);
    fputs("no_such_key = 1\n", f);
    fclose(f);
    kill(s->pid, SIGHUP);
    int logged = 0;
    for (int k = 0; k < 500 && !logged; k++, nap_ms(20)) logged = bn_srv_log_has(s, "no_such_key");
    ck_assert_msg(logged, "the refused reload is not logged (no 'no_such_key' in %s)", s->log);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(short_request(s->port), 0);
    ck_assert(bn_pid_alive(master));
    ck_assert_int_eq(s->pid, master);
    ck_assert_int_eq(bn_srv_worker_pids(s->port, after, 2, NULL), 2);
    ck_assert_msg(after[0] == before[0] && after[1] == before[1],
                  "a refused reload replaced workers");
    json_t *j;
    ck_assert_int_eq(bn_http_get_json(s->port, "/ready", &j), 200);
    json_decref(j);
    bn_srv_stop(s, 10000);
}
END_TEST

/* ---- SIGTERM ------------------------------------------------------------------------- */

START_TEST(sigterm_drains)
{
    bn_srv *s = start("shutdown_timeout = 60s\n");
    pid_t workers[4];
    int nw = bn_srv_worker_pids(s->port, workers, 4, NULL);
    ck_assert_int_eq(nw, 1);
    bn_sse st;
    ck_assert_int_eq(bn_sse_open(&st, s->port, "/v1/completions", NULL,
                                 "{\"prompt\":\"a\",\"max_tokens\":1500,\"ignore_eos\":true,"
                                 "\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                                 BN_HTTP_MS), 0);
    ck_assert_int_eq(st.head.status, 200);
    bn_sse_event ev;
    ck_assert_int_eq(bn_sse_next(&st, &ev, BN_HTTP_MS), 1);
    bn_sse_event_free(&ev);
    ck_assert_int_eq(kill(s->pid, SIGTERM), 0);

    /* /ready says draining, or the listener is already closed; new generations are refused */
    int seen = 0;
    for (int k = 0; k < 200 && !seen; k++) {
        bn_http_resp r;
        int rc = bn_http_req(s->port, "GET", "/ready", NULL, NULL, &r, 5000);
        if (rc != 0 && r.status == 0) {
            seen = 2;   /* connection refused */
        } else if (r.status == 503) {
            json_t *j = bn_http_json(&r);
            ck_assert_str_eq(SJ(j, "status"), "draining");
            json_decref(j);
            seen = 1;
        } else {
            ck_assert_int_eq(r.status, 200);   /* the signal is not handled yet */
        }
        bn_http_resp_free(&r);
        if (!seen) nap_ms(10);
    }
    ck_assert_msg(seen, "after SIGTERM /ready never said draining");
    if (seen == 1) {
        bn_http_resp r;
        bn_http_req(s->port, "POST", "/v1/completions", NULL, "{\"prompt\":\"a\",\"max_tokens\":2}",
                    &r, 5000);
        ck_assert_msg(r.status == 503 || r.status == 0, "a generation while draining: %d",
                      r.status);
        bn_http_resp_free(&r);
    }

    bn_stream_result res;   /* the in-flight stream runs to its end */
    ck_assert_int_eq(bn_sse_collect(&st, &res, 60000), 0);
    bn_sse_close(&st);
    ck_assert_msg(res.done && res.n_errors == 0, "drained stream: done %d, errors %d", res.done,
                  res.n_errors);
    json_t *u =
        json_object_get(json_array_get(res.events, json_array_size(res.events) - 1), "usage");
    ck_assert_int_eq(IJ(u, "completion_tokens"), 1500);
    bn_stream_result_free(&res);

    ck_assert_msg(bn_srv_reap(s, 30000), "the master did not exit after draining");
    ck_assert_msg(WIFEXITED(s->exit_status) && WEXITSTATUS(s->exit_status) == 0,
                  "master exit status 0x%x", s->exit_status);
    for (int i = 0; i < nw; i++)
        ck_assert_msg(!bn_pid_alive(workers[i]), "worker %ld outlived the master",
                      (long)workers[i]);
    bn_srv_stop(s, 1000);
}
END_TEST

/* SIGUSR1 reopens the logs (logrotate renames the file, then signals). */
START_TEST(sigusr1_reopens_logs)
{
    char alog[600], moved[620], conf[800];
    snprintf(alog, sizeof alog, "%s.access", bn_srv_tmp("usr1"));
    snprintf(moved, sizeof moved, "%s.1", alog);
    snprintf(conf, sizeof conf, "access_log = %s\naccess_log_format = json\n", alog);
    bn_srv *s = start(conf);
    ck_assert_int_eq(short_request(s->port), 0);
    int logged = 0;
    for (int k = 0; k < 200 && !logged; k++) {
        FILE *f = fopen(alog, "r");
        char line[4096];
        while (f && !logged && fgets(line, sizeof line, f))
            logged = strstr(line, "/v1/completions") != NULL;
        if (f) fclose(f);
        if (!logged) nap_ms(10);
    }
    ck_assert_msg(logged, "the access log %s has no line for the request", alog);
    ck_assert_int_eq(rename(alog, moved), 0);
    ck_assert_int_eq(kill(s->pid, SIGUSR1), 0);
    int reopened = 0;
    for (int k = 0; k < 200 && !reopened; k++) {
        json_t *j;
        ck_assert_int_eq(bn_http_get_json(s->port, "/health", &j), 200);
        json_decref(j);
        FILE *f = fopen(alog, "r");
        char line[4096];
        while (f && !reopened && fgets(line, sizeof line, f))
            reopened = strstr(line, "/health") != NULL;
        if (f) fclose(f);
        if (!reopened) nap_ms(10);
    }
    unlink(alog);
    unlink(moved);
    ck_assert_msg(reopened, "after SIGUSR1 the access log was not reopened at %s", alog);
    ck_assert(bn_pid_alive(s->pid));
    bn_srv_stop(s, 10000);
}
END_TEST

/* ---- the command line ------------------------------------------------------------------ */

/* Runs bitnetd with args; output in out. */
static int run_bitnetd(char *out, size_t cap, const char *a1, const char *a2, const char *a3)
{
    char *argv[] = {getenv("BN_BITNETD"), (char *)a1, (char *)a2, (char *)a3, NULL};
    return bn_run_capture(argv, out, cap, 60000);
}

START_TEST(config_test_flag)
{
    const char *model = bn_srv_model(BN_SRV_MODEL_DEFAULT);
    ck_assert_ptr_nonnull(model);
    static const struct {
        const char *line2, *line3;   /* line 1: listen */
        int rc;
        int bad_line;                /* the line the error names, 0 = none */
        const char *needle;          /* also in the output */
    } cases[] = {
        {NULL, "workers = 1", 0, 0, "syntax is ok"},
        {NULL, "frobnicate = 1", 1, 3, "frobnicate"},
        {NULL, "queue_size = abc", 1, 3, "queue_size"},
        {NULL, "client_timeout = 5 parsecs", 1, 3, "client_timeout"},
        {"model = /nonexistent/dir/x.bnpk", "workers = 1", 1, 2, "/nonexistent/dir/x.bnpk"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char conf[600], text[2048], out[8192], model_line[600];
        snprintf(conf, sizeof conf, "%s.conf", bn_srv_tmp("t-flag"));
        snprintf(model_line, sizeof model_line, "model = %s", model);
        snprintf(text, sizeof text, "listen = 127.0.0.1:%d\n%s\n%s\n", bn_free_port(),
                 cases[i].line2 ? cases[i].line2 : model_line, cases[i].line3);
        ck_assert_int_eq(bn_write_file(conf, text), 0);
        int rc = run_bitnetd(out, sizeof out, "-t", "-c", conf);
        unlink(conf);
        ck_assert_msg(rc == cases[i].rc, "case %zu: exit %d, want %d: %s", i, rc, cases[i].rc, out);
        ck_assert_msg(strstr(out, cases[i].needle), "case %zu: no '%s' in: %s", i, cases[i].needle,
                      out);
        if (cases[i].rc == 0) {
            ck_assert_msg(strstr(out, "test is successful") && strstr(out, conf),
                          "-t success message: %s", out);
        } else {
            char where[700];
            snprintf(where, sizeof where, "%s:%d", conf, cases[i].bad_line);
            ck_assert_msg(strstr(out, where), "case %zu: the error does not name %s: %s", i, where,
                          out);
        }
    }
}
END_TEST

START_TEST(help_version_dump)
{
    static const char *const keys[] = {
        "listen", "model", "cache_dir", "model_name", "weights", "mlock", "huge_pages", "n_ctx",
        "prefill_chunk", "chat_format", "cpus", "workers", "threads", "smt", "backlog",
        "max_body_size", "max_header_size", "client_timeout", "api_keys", "default_max_tokens",
        "max_max_tokens", "queue_size", "queue_timeout", "worker_timeout", "shutdown_timeout",
        "ping_interval", "pid_file", "user", "access_log", "access_log_format", "error_log",
        "log_level", "daemon",
    };
    char *out = malloc(65536);
    ck_assert_int_eq(run_bitnetd(out, 65536, "--help", NULL, NULL), 0);
    ck_assert_msg(strstr(out, "usage: bitnetd"), "--help: %s", out);
    ck_assert_int_eq(run_bitnetd(out, 65536, "-V", NULL, NULL), 0);
    ck_assert_msg(strstr(out, "bitnetd"), "-V: %s", out);
    ck_assert_int_eq(run_bitnetd(out, 65536, "--dump-config", NULL, NULL), 0);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char want[64];
        snprintf(want, sizeof want, "%s =", keys[i]);
        ck_assert_msg(strstr(out, want), "--dump-config lacks '%s'", want);
    }
    /* the dump is itself a valid file (with a model added) */
    char conf[600];
    snprintf(conf, sizeof conf, "%s.conf", bn_srv_tmp("dump"));
    size_t n = strlen(out);
    snprintf(out + n, 65536 - n, "\nmodel = %s\n", bn_srv_model(BN_SRV_MODEL_DEFAULT));
    ck_assert_int_eq(bn_write_file(conf, out), 0);
    int rc = run_bitnetd(out, 65536, "-t", "-c", conf);
    unlink(conf);
    ck_assert_msg(rc == 0, "--dump-config output + model does not pass -t: %s", out);
    ck_assert_int_ne(run_bitnetd(out, 65536, "--no-such-flag", NULL, NULL), 0);
    free(out);
}
END_TEST

/* No config file: -m and --listen on the command line, defaults for the rest. */
START_TEST(serve_without_config)
{
    char listen[64];
    int port = bn_free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    const char *bin = getenv("BN_BITNETD");
    const char *model = bn_srv_model(BN_SRV_MODEL_DEFAULT);
    char log[600];
    snprintf(log, sizeof log, "%s.log", bn_srv_tmp("nocfg"));
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        setpgid(0, 0);
        FILE *f = freopen(log, "w", stderr);
        (void)f;
        execl(bin, bin, "-m", model, "--listen", listen, "--workers", "1", "--threads", "1",
              (char *)NULL);
        _exit(127);
    }
    int ready = 0;
    for (int k = 0; k < 1500 && !ready; k++) {
        bn_http_resp r;
        ready = bn_http_req(port, "GET", "/ready", NULL, NULL, &r, 1000) == 0 && r.status == 200;
        bn_http_resp_free(&r);
        if (!ready) nap_ms(20);
    }
    int ok = ready && short_request(port) == 0;
    kill(pid, SIGTERM);
    int st = 0;
    for (int k = 0; k < 1000 && waitpid(pid, &st, WNOHANG) == 0; k++) nap_ms(10);
    if (waitpid(pid, &st, WNOHANG) == 0) {
        kill(-pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
    unlink(log);
    ck_assert_msg(ready, "bitnetd -m MODEL --listen %s never became ready", listen);
    ck_assert(ok);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status 0x%x", st);
}
END_TEST

START_TEST(daemon_pid_file)
{
    char pidf[600];
    snprintf(pidf, sizeof pidf, "%s.pid", bn_srv_tmp("daemon"));
    bn_srv *s = bn_srv_start("", "--daemon", "--pid-file", pidf, NULL);
    ck_assert_msg(s != NULL, "bitnetd --daemon did not come up");
    FILE *f = fopen(pidf, "r");
    ck_assert_ptr_nonnull(f);
    long pid = 0;
    ck_assert_int_eq(fscanf(f, "%ld", &pid), 1);
    fclose(f);
    ck_assert_int_eq(pid, s->pid);
    ck_assert(bn_pid_alive((pid_t)pid));
    ck_assert_int_eq(short_request(s->port), 0);
    ck_assert_int_eq(kill((pid_t)pid, SIGTERM), 0);
    ck_assert_msg(bn_srv_reap(s, 20000), "the daemon did not stop on SIGTERM");
    ck_assert_msg(!bn_pid_alive((pid_t)pid), "the daemon is still running");
    ck_assert_msg(access(pidf, F_OK) != 0, "the pid file %s was not removed", pidf);
    bn_srv_stop(s, 1000);
}
END_TEST

/* ---- shared weights ----------------------------------------------------------------- */

/* Sum of Pss of the weights mapping over master + workers, after one request per worker.
 * Pss splits each resident page among the processes mapping it, so the sum counts every shared
 * page once: it grows with the pages touched, never with the number of workers sharing them. */
static long shared_pss(const char *mode, int workers, long file_size)
{
    const char *model = bn_srv_model("small");
    ck_assert_ptr_nonnull(model);
    char conf[1024];
    /* share_cores: 4 workers even on a 2-core machine (they then share cores); one slot each,
     * so that one request per worker really reaches every worker */
    snprintf(conf, sizeof conf,
             "model = %s\nweights = %s\nworkers = %d\nthreads = 1\nshare_cores = on\nslots = 1\n",
             model, mode, workers);
    bn_srv *s = start(conf);
    bn_conn c[8];   /* one request per worker: all sent, then all read */
    for (int i = 0; i < workers; i++) {
        ck_assert_int_eq(bn_conn_open(&c[i], s->port), 0);
        size_t n;
        char *req =
            bn_http_format("POST", "/v1/completions", NULL,
                           "{\"prompt\":\"hello\",\"max_tokens\":16,\"ignore_eos\":true}", &n);
        ck_assert_int_eq(bn_conn_send(&c[i], req, n, BN_HTTP_MS), 0);
        free(req);
    }
    for (int i = 0; i < workers; i++) {
        bn_http_resp r;
        ck_assert_int_eq(bn_conn_read_resp(&c[i], &r, 60000), 0);
        ck_assert_int_eq(r.status, 200);
        bn_http_resp_free(&r);
        bn_conn_close(&c[i]);
    }
    pid_t pids[8];
    ck_assert_int_eq(bn_srv_worker_pids(s->port, pids, 8, NULL), workers);
    json_t *j;
    ck_assert_int_eq(bn_http_get_json(s->port, "/v1/status", &j), 200);
    json_t *ws = json_object_get(j, "workers");
    for (int i = 0; i < workers; i++)
        ck_assert_msg(IJ(json_array_get(ws, i), "requests") >= 1, "worker %d served nothing", i);
    json_decref(j);

    const char *needle = !strcmp(mode, "shm") ? "bitnetd-weights" : model;
    long pss = 0, rss_sum = 0;
    for (int i = -1; i < workers; i++) {
        pid_t p = i < 0 ? s->pid : pids[i];
        int maps = 0;
        long v = bn_smaps_sum(p, needle, "Pss", &maps);
        long rss = bn_smaps_sum(p, needle, "Rss", NULL);
        ck_assert_msg(v >= 0, "cannot read /proc/%ld/smaps", (long)p);
        if (i >= 0) ck_assert_msg(maps > 0 && rss > 0, "worker %d does not map %s", i, needle);
        pss += v;
        rss_sum += rss;
    }
    fprintf(stderr, "shared weights: %s, %d worker(s): sum Pss %ld, sum Rss %ld, file %ld (Pss "
                    "%.2f of the file)\n", mode, workers, pss, rss_sum, file_size,
            (double)pss / (double)file_size);
    ck_assert_msg(pss <= file_size * 1.10, "%s, %d workers: sum of Pss %ld is %.2f model files",
                  mode, workers, pss, (double)pss / (double)file_size);
    bn_srv_stop(s, 10000);
    return pss;
}

/* N workers cost what one does (within 10%), and never more than one copy of the file. */
static void check_shared(const char *mode)
{
    struct stat sb;
    ck_assert_int_eq(stat(bn_srv_model("small"), &sb), 0);
    long one = shared_pss(mode, 1, (long)sb.st_size);
    int n = 4;
    long many = shared_pss(mode, n, (long)sb.st_size);
    ck_assert_int_gt(one, 0);
    ck_assert_msg(many <= one * 1.10, "%s: weights Pss %ld with %d workers, %ld with 1: not shared",
                  mode, many, n, one);
}

START_TEST(shared_weights_mmap)
{
    check_shared("mmap");
}
END_TEST

START_TEST(shared_weights_shm)
{
    check_shared("shm");
}
END_TEST

#define ADD(s, t, secs)                                     \
    do {                                                    \
        TCase *tc_ = tcase_create(#t);                      \
        tcase_add_checked_fixture(tc_, NULL, teardown_all); \
        tcase_set_timeout(tc_, secs);                       \
        tcase_add_test(tc_, t);                             \
        suite_add_tcase(s, tc_);                            \
    } while (0)

static Suite *suite(void)
{
    Suite *s = suite_create("server_ops");
    ADD(s, sighup_under_load, 180);
    ADD(s, sighup_broken_config, 60);
    ADD(s, sigterm_drains, 120);
    ADD(s, sigusr1_reopens_logs, 60);
    ADD(s, config_test_flag, 60);
    ADD(s, help_version_dump, 60);
    ADD(s, serve_without_config, 60);
    ADD(s, daemon_pid_file, 60);
    ADD(s, shared_weights_mmap, 120);
    ADD(s, shared_weights_shm, 120);
    return s;
}

int main(void)
{
    return bn_srv_test_main("test_server_ops", suite());
}
