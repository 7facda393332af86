/* Integration-test harness: starts bitnetd ($BN_BITNETD) on 127.0.0.1 with a synthetic model,
 * and talks to it with a small blocking HTTP/1.1 client over raw sockets (raw, because the
 * tests send malformed requests too). Every wait is bounded by a timeout in milliseconds.
 *
 * Servers are spawned in their own process group; the test process becomes a child subreaper,
 * so workers orphaned by a killed master come back to it and are reaped too. bn_srv_stop_all()
 * (a Check teardown, and atexit) stops whatever a failed test left running.
 *
 * Environment: BN_BITNETD, BN_BITNET (paths of the binaries), BN_TEST_TMPDIR (scratch; its
 * models, configs and server logs are removed at exit unless BN_KEEP_TMP is set). */
#ifndef BN_TESTS_SERVER_HARNESS_H
#define BN_TESTS_SERVER_HARNESS_H

#include <stddef.h>
#include <sys/types.h>

#include <check.h>
#include <jansson.h>

#define BN_SRV_READY_MS 30000   /* start-up bound: until GET /ready answers 200 */
#define BN_HTTP_MS 30000        /* default bound for one request/response */

/* ---- models -------------------------------------------------------------------------- */

/* The synthetic model for shape ("tiny", "small", "tiny,n_ctx_max=4096,n_layer=8"), made once
 * per test binary with `$BN_BITNET mkmodel` and reused. NULL (message on stderr) on failure.
 * The string lives until exit. */
const char *bn_srv_model(const char *shape);
/* The model a plain bn_srv_start() serves: tiny's vocabulary, n_ctx_max 4096, 8 layers, 1024 wide:
 * fast for short requests, a few hundred tokens/s deep in a long generation, so that a 3500-token
 * request the tests cancel or queue behind runs for seconds (tiny's own width, with attention in
 * SIMD for its head_dim 32, decodes 3500 tokens in about 1.5 s at one thread). */
#define BN_SRV_MODEL_DEFAULT "tiny,n_ctx_max=4096,n_layer=8,n_embd=1024,n_head=8,n_head_kv=4,n_ff=2816"

/* ---- servers ------------------------------------------------------------------------- */

typedef struct bn_srv {
    pid_t pid;              /* the master (0 once reaped) */
    pid_t pgid;             /* its process group (workers stay in it) */
    int port;
    int daemon;             /* started with --daemon: pid came from the pid file */
    int exit_status;        /* waitpid status once reaped (valid when pid == 0) */
    char conf[512];         /* the config file written for it (rewrite it to test SIGHUP) */
    char log[512];          /* its stdout + stderr */
    char model[512];        /* the model it serves */
} bn_srv;

/* Writes a config file: config_text, preceded by "listen = 127.0.0.1:PORT" (a free port), "model
 * = <the default model>", "workers = 1", "threads = 1", "access_log = off" for each of those keys
 * config_text does not set itself; then spawns `$BN_BITNETD -c FILE --foreground ARGS...` (the
 * NULL-terminated extra argv) and waits until GET /ready is 200. Returns a malloc'd handle, or
 * NULL (the reason and the server log's tail on stderr) when it exits or is not ready in time.
 * With "--daemon" among the args, --foreground is not passed and the handle's pid is the one the
 * daemon wrote to its --pid-file (which must then be given too). */
bn_srv *bn_srv_start(const char *config_text, ...) __attribute__((sentinel));
/* Same, but returns as soon as the process runs (no /ready wait): for servers expected to fail. */
bn_srv *bn_srv_spawn(const char *config_text, ...) __attribute__((sentinel));
/* Waits (bounded) for GET /ready == 200; 0, or -1 if the master exited or timed out. */
int bn_srv_wait_ready(bn_srv *s, int timeout_ms);
/* SIGTERM, wait up to timeout_ms, then SIGKILL; reaps the master and kills and reaps anything left
 * in its process group. Frees s. Returns the master's waitpid status (-1 if it had to be killed or
 * was already gone). NULL is a no-op. */
int bn_srv_stop(bn_srv *s, int timeout_ms);
void bn_srv_stop_all(void);
/* main() of an integration test binary: exits 77 (skip) without $BN_BITNETD / $BN_BITNET, runs
 * the suite, stops every server it started. Returns the process exit status. */
int bn_srv_test_main(const char *name, Suite *s);
/* bn_srv_start(config_text, NULL), failing the test when the server does not start. */
bn_srv *bn_srv_start_ok(const char *config_text);
/* A test case of its own in s, stopping every server at its teardown (so a failure stops only
 * that test's servers), with a timeout: add its one test with BN_SRV_ADD_TEST. */
TCase *bn_srv_tcase(Suite *s, const char *name, int timeout_s);
#define BN_SRV_ADD_TEST(s, t, timeout_s) tcase_add_test(bn_srv_tcase((s), #t, (timeout_s)), t)
/* Reaps the master if it exited, without blocking longer than timeout_ms (0 = just look).
 * Returns 1 once reaped (s->pid = 0, s->exit_status set), 0 while it runs. */
int bn_srv_reap(bn_srv *s, int timeout_ms);
/* Prints the last bytes of the server's log to stderr (for failure messages). */
void bn_srv_dump_log(const bn_srv *s);
/* 1 if the log contains needle (read now). */
int bn_srv_log_has(const bn_srv *s, const char *needle);

/* A free TCP port on 127.0.0.1 (bound to port 0, then released). */
int bn_free_port(void);
/* Runs argv (NULL-terminated; argv[0] a path) to completion within timeout_ms, capturing its
 * stdout + stderr (NUL-terminated, at most cap - 1 bytes). Returns the exit code, or -1 if it did
 * not exit in time (then it is killed) or died by a signal. */
int bn_run_capture(char *const argv[], char *out, size_t cap, int timeout_ms);
/* A scratch file path (unique per call), under BN_TEST_TMPDIR. Static storage, 8 rotating. */
const char *bn_srv_tmp(const char *name);
/* Writes text to path (replacing it atomically via rename so a reload never sees half a file). */
int bn_write_file(const char *path, const char *text);
double bn_now(void);     /* CLOCK_MONOTONIC seconds */
/* 1 if pid is a live process (not absent and not a zombie). */
int bn_pid_alive(pid_t pid);

/* ---- HTTP client ---------------------------------------------------------------------- */

typedef struct bn_http_resp {
    int status;                  /* 0: no status line was received */
    char *head;                  /* the raw header block (status line included), NUL-terminated */
    int n_hdr;
    char *hname[64], *hval[64];  /* point into a copy owned by the response */
    char *body;                  /* de-chunked, NUL-terminated */
    size_t body_len;
    int chunked;
    char *hbuf;                  /* (owned storage for hname/hval) */
} bn_http_resp;

/* A connection with a read buffer. */
typedef struct bn_conn {
    int fd;
    char *buf;
    size_t len, off, cap;
    int eof;
} bn_conn;

/* Connects to 127.0.0.1:port (TCP_NODELAY). 0, or -1 (c->fd = -1). */
int bn_conn_open(bn_conn *c, int port);
void bn_conn_close(bn_conn *c);
/* Sends all n bytes within timeout_ms (MSG_NOSIGNAL). 0, or -1 (peer closed, timeout). */
int bn_conn_send(bn_conn *c, const void *data, size_t n, int timeout_ms);
/* Reads one whole response (Content-Length, chunked, or until close). 0, or -1 on timeout /
 * malformed / closed early (r->status is set if the status line arrived). */
int bn_conn_read_resp(bn_conn *c, bn_http_resp *r, int timeout_ms);
/* Reads just the status line and headers (for streams). 0 or -1. */
int bn_conn_read_head(bn_conn *c, bn_http_resp *r, int timeout_ms);
/* 1 if the peer closed the connection within timeout_ms (buffered bytes are discarded), 0 if it
 * is still open, -1 on error. */
int bn_conn_wait_closed(bn_conn *c, int timeout_ms);
void bn_http_resp_free(bn_http_resp *r);
/* Header value by case-insensitive name, or NULL. */
const char *bn_http_header(const bn_http_resp *r, const char *name);
/* The body parsed as JSON (new reference) or NULL. */
json_t *bn_http_json(const bn_http_resp *r);

/* Builds a request: "METHOD PATH HTTP/1.1", Host, Content-Length + Content-Type: application/json
 * when body is non-NULL, then extra_headers (each line ending "\r\n"; may be NULL). malloc'd. */
char *bn_http_format(const char *method, const char *path, const char *extra_headers,
                     const char *body, size_t *len);
/* One request on a fresh connection (closed afterwards). 0, or -1 (r->status 0 when nothing
 * came back). */
int bn_http_req(int port, const char *method, const char *path, const char *extra_headers,
                const char *body, bn_http_resp *r, int timeout_ms);
/* Raw bytes on a fresh connection, then the response read. */
int bn_http_raw(int port, const void *data, size_t n, bn_http_resp *r, int timeout_ms);
/* GET path, JSON body: returns the status, *out a new reference (or NULL). */
int bn_http_get_json(int port, const char *path, json_t **out);
/* POST a JSON body: returns the status (0 on transport failure), *out the parsed body or NULL. */
int bn_http_post_json(int port, const char *path, const char *body, json_t **out);

/* ---- server-sent events --------------------------------------------------------------- */

typedef struct bn_sse {
    bn_conn c;
    bn_http_resp head;       /* status and headers */
    char *data;              /* de-chunked stream bytes not yet split into events */
    size_t dlen, dcap;
    long body_left;          /* Content-Length bytes still to come; -1 = chunked or until EOF */
    int done;                /* the terminating chunk (or EOF) was seen */
    double t_read;           /* when the last bytes arrived */
} bn_sse;

typedef struct bn_sse_event {
    char *text;              /* the event block without its trailing blank line, NUL-terminated */
    char *data;              /* the joined "data:" field (NULL for a comment-only block) */
    int comment;             /* a ":" comment block (": ping") */
    double t;                /* arrival time (bn_now()) of the bytes that completed it */
} bn_sse_event;

/* Sends a POST with body on a new connection and reads the response head. 0 (check
 * s->head.status: a non-200 carries a JSON body, read it with bn_sse_rest), or -1. */
int bn_sse_open(bn_sse *s, int port, const char *path, const char *extra_headers,
                const char *body, int timeout_ms);
/* Next event: 1 with ev filled (free with bn_sse_event_free), 0 at the end of the stream, -1 on
 * timeout or a broken stream. */
int bn_sse_next(bn_sse *s, bn_sse_event *ev, int timeout_ms);
/* Reads the rest of the body (for a non-stream answer): malloc'd, NUL-terminated, or NULL. */
char *bn_sse_rest(bn_sse *s, int timeout_ms);
void bn_sse_event_free(bn_sse_event *ev);
void bn_sse_close(bn_sse *s);

/* A whole stream read to its end: the data events in order. */
typedef struct bn_stream_result {
    int status;              /* HTTP status */
    int n_events;            /* data events (not counting [DONE]) */
    int n_pings;             /* comment blocks */
    int done;                /* "data: [DONE]" was the last data event */
    int n_errors;            /* data events holding {"error": ...} */
    json_t *events;          /* array of the parsed data events */
    double t_first, t_last;  /* arrival times of the first and last data event */
    double *t;               /* arrival time of each of the n_events data events */
    char *text;              /* concatenated delta.content / text */
    const char *finish;      /* finish_reason seen (in events), or NULL */
} bn_stream_result;
/* Reads s to its end (bounded by timeout_ms overall) into out. 0, or -1 if the stream broke. */
int bn_sse_collect(bn_sse *s, bn_stream_result *out, int timeout_ms);
void bn_stream_result_free(bn_stream_result *r);

/* ---- server state ---------------------------------------------------------------------- */

/* Worker pids from GET /v1/status (workers[i].pid in index order); returns how many (<= max),
 * or -1. States copied to states[i] when non-NULL (each up to 15 chars). */
int bn_srv_worker_pids(int port, pid_t *pids, int max, char (*states)[16]);
/* Children of pid per /proc (ppid == pid). Returns how many (<= max). */
int bn_proc_children(pid_t pid, pid_t *out, int max);
/* Polls GET /v1/status until every worker's state equals state (e.g. "idle"); 0, or -1 on
 * timeout. */
int bn_srv_wait_workers(int port, const char *state, int timeout_ms);
/* Polls GET /v1/status (30 s at most) until worker 0 runs a new, idle process (pid != old);
 * returns its restarts count. Fails the test on timeout. */
long bn_srv_wait_respawn(int port, pid_t old);
/* queue.length of GET /health, or -1 if it does not answer 200. */
int bn_srv_queue_length(int port);
/* Polls until the queue holds want requests (bounded by timeout_ms); returns the last length seen. */
int bn_srv_wait_queue_length(int port, int want, int timeout_ms);
/* Sum of the samples of one Prometheus metric family name in GET /metrics (labels ignored);
 * label_filter, if non-NULL, must appear inside the sample's {...}. -1 if absent or unreachable. */
double bn_srv_metric(int port, const char *name, const char *label_filter);
/* From a Prometheus text: as above. */
double bn_metric_in(const char *text, const char *name, const char *label_filter);
/* Sums the "Pss:" (or "Rss:") kB of every /proc/PID/smaps mapping whose pathname contains
 * needle. Returns bytes, -1 if smaps is unreadable; *n_maps gets the number of mappings found. */
long bn_smaps_sum(pid_t pid, const char *needle, const char *field, int *n_maps);

#endif
