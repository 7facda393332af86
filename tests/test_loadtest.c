/* `bitnet loadtest` end to end: the binary ($BN_BITNET) against a fake OpenAI SSE server that
 * this test forks (libevent, 127.0.0.1, port 0). The fake streams a known number of content
 * chunks and a usage chunk, or fails in a chosen way, and logs every request it receives, so
 * the report's counts and token totals can be checked against what was really sent. */
#include <check.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define FAKE_CHUNKS 5      /* content chunks per ok stream */
#define FAKE_USAGE_TOKENS 6 /* what its usage chunk claims (one chunk "carried two tokens") */
#define FAKE_PROMPT_TOKENS 3

static char bitnet[2048], srcdir[2048];
static pid_t fake_pid = -1;
static int fake_port;
static char fake_log[512], err_path[512];

/* ---- the fake server (child process) ---- */

typedef struct {
    const char *mode; /* ok, nousage, mixed, hang, slow, hostile */
    int log_fd;
    long n;           /* POSTs received */
} fake;

static void send_sse(struct evhttp_request *req, const char *s)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, s, strlen(s));
    evhttp_send_reply_chunk(req, b);
    evbuffer_free(b);
}

static void content_chunk(struct evhttp_request *req, int chat, int i, int last)
{
    char ev[512];
    const char *fr = last ? "\"stop\"" : "null";
    if (chat)
        snprintf(ev, sizeof ev, "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
                 "\"delta\":{\"content\":\"tok%d \"},\"finish_reason\":%s}]}\n\n", i, fr);
    else
        snprintf(ev, sizeof ev, "data: {\"object\":\"text_completion\",\"choices\":[{\"index\":0,"
                 "\"text\":\"tok%d \",\"finish_reason\":%s}]}\n\n", i, fr);
    send_sse(req, ev);
}

/* Markup in what a server says, for the HTML report to escape. */
#define HOSTILE_ID "<script>alert(\\\"id\\\")</script>&x'" /* as a JSON string's contents */
#define HOSTILE_ID_ESCAPED "&lt;script&gt;alert(&quot;id&quot;)&lt;/script&gt;&amp;x&#39;"
#define HOSTILE_MSG "<img src=x onerror=alert(1)>"
#define HOSTILE_MSG_ESCAPED "&lt;img src=x onerror=alert(1)&gt;"

/* kind: 0 ok, 1 ok without usage, 2 in-stream error, 3 malformed data, 4 in-stream error with
 * markup in its message. */
static void stream(struct evhttp_request *req, int chat, int kind)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/event-stream");
    evhttp_send_reply_start(req, 200, "OK");
    send_sse(req, ": ping\n\n");
    if (chat) /* the role chunk, with CRLF line ends */
        send_sse(req, "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},"
                      "\"finish_reason\":null}]}\r\n\r\n");
    int n = kind >= 2 ? 1 : FAKE_CHUNKS;
    for (int i = 0; i < n; i++) content_chunk(req, chat, i, kind < 2 && i == n - 1);
    if (kind == 2)
        send_sse(req, "data: {\"error\":{\"message\":\"worker died\",\"type\":\"server_error\","
                      "\"param\":null,\"code\":null}}\n\n");
    if (kind == 4)
        send_sse(req, "data: {\"error\":{\"message\":\"" HOSTILE_MSG "\",\"type\":\"server_error\"}}\n\n");
    if (kind == 3) send_sse(req, "data: {\"choices\": [oops\n\n");
    if (kind == 0) {
        char ev[256];
        snprintf(ev, sizeof ev, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
                 "\"total_tokens\":%d}}\n\n", FAKE_PROMPT_TOKENS, FAKE_USAGE_TOKENS,
                 FAKE_PROMPT_TOKENS + FAKE_USAGE_TOKENS);
        send_sse(req, ev);
    }
    send_sse(req, "data: [DONE]\n\n");
    evhttp_send_reply_end(req);
}

static void reply_503(struct evhttp_request *req)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "{\"error\":{\"message\":\"queue full\",\"type\":\"server_error\","
                           "\"param\":null,\"code\":null}}");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
    evhttp_send_reply(req, 503, "Service Unavailable", b);
    evbuffer_free(b);
}

static void slow_reply(evutil_socket_t fd, short what, void *arg)
{
    stream(arg, 1, 0); /* safe even if the client left: libevent then detached the request */
}

static void fake_handle(struct evhttp_request *req, void *arg)
{
    fake *f = arg;
    const char *path = evhttp_request_get_uri(req);
    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET && !strcmp(path, "/v1/models")) {
        struct evbuffer *b = evbuffer_new();
        evbuffer_add_printf(b, "{\"object\":\"list\",\"data\":[{\"id\":\"%s\",\"object\":\"model\"}]}",
                            strcmp(f->mode, "hostile") ? "fake-model" : HOSTILE_ID);
        evhttp_send_reply(req, 200, "OK", b);
        evbuffer_free(b);
        return;
    }
    int chat = !strcmp(path, "/v1/chat/completions");
    if (!chat && strcmp(path, "/v1/completions")) {
        evhttp_send_error(req, 404, NULL);
        return;
    }
    /* log: PATH \t AUTHORIZATION \t BODY \n, one write so lines never interleave */
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    struct evbuffer *in = evhttp_request_get_input_buffer(req), *line = evbuffer_new();
    evbuffer_add_printf(line, "%s\t%s\t", path, auth ? auth : "-");
    evbuffer_add(line, evbuffer_pullup(in, -1), evbuffer_get_length(in));
    evbuffer_add(line, "\n", 1);
    if (write(f->log_fd, evbuffer_pullup(line, -1), evbuffer_get_length(line)) < 0) _exit(3);
    evbuffer_free(line);
    long i = f->n++;
    if (!strcmp(f->mode, "ok")) stream(req, chat, 0);
    else if (!strcmp(f->mode, "nousage")) stream(req, chat, 1);
    else if (!strcmp(f->mode, "mixed")) {
        /* by request number: ok, 503, in-stream error, malformed */
        if (i % 4 == 1) reply_503(req);
        else stream(req, chat, i % 4 == 0 ? 0 : i % 4 == 2 ? 2 : 3);
    } else if (!strcmp(f->mode, "hostile")) {
        stream(req, chat, i % 2 ? 4 : 0); /* by request number: ok, error with markup */
    } else if (!strcmp(f->mode, "slow")) {
        struct timeval tv = {0, 200000};
        event_base_once(evhttp_connection_get_base(evhttp_request_get_connection(req)), -1, EV_TIMEOUT,
                        slow_reply, req, &tv);
    } /* "hang": never answer */
}

static void fake_main(const char *mode, int port_fd)
{
    signal(SIGPIPE, SIG_IGN);
    fake f = {mode, open(fake_log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644), 0};
    struct event_base *base = event_base_new();
    struct evhttp *http = base ? evhttp_new(base) : NULL;
    struct evhttp_bound_socket *bs = http ? evhttp_bind_socket_with_handle(http, "127.0.0.1", 0) : NULL;
    if (f.log_fd < 0 || !bs) _exit(2);
    evhttp_set_gencb(http, fake_handle, &f);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &sl);
    int port = ntohs(sa.sin_port);
    if (write(port_fd, &port, sizeof port) != sizeof port) _exit(2);
    close(port_fd);
    event_base_dispatch(base);
    _exit(0);
}

/* Forks the fake (the test process never runs OpenMP, so fork is safe); 0 when it listens. */
static int fake_start(const char *mode)
{
    int p[2];
    snprintf(fake_log, sizeof fake_log, "%s", bn_test_path("loadtest-fake.log"));
    if (pipe(p)) return -1;
    fflush(NULL);
    if ((fake_pid = fork()) == 0) {
        close(p[0]);
        fake_main(mode, p[1]);
    }
    close(p[1]);
    struct pollfd pfd = {p[0], POLLIN, 0};
    int ok = fake_pid > 0 && poll(&pfd, 1, 10000) == 1 && read(p[0], &fake_port, sizeof fake_port) == sizeof fake_port;
    close(p[0]);
    return ok ? 0 : -1;
}

static void fake_stop(void)
{
    if (fake_pid > 0) {
        kill(fake_pid, SIGKILL);
        waitpid(fake_pid, NULL, 0);
    }
    fake_pid = -1;
}

/* Lines of the fake's log, and how many contain needle (NULL: count all). */
static long log_count(const char *needle)
{
    FILE *f = fopen(fake_log, "r");
    char *line = NULL;
    size_t cap = 0;
    long n = 0;
    while (f && getline(&line, &cap, f) >= 0) n += !needle || strstr(line, needle);
    free(line);
    if (f) fclose(f);
    return n;
}

/* ---- running bitnet loadtest ---- */

static char last_err[8192];

/* Runs `bitnet loadtest --no-progress --url <fake> ARGS`, returns its exit status; *out gets the
 * parsed stdout (NULL if not JSON), last_err its stderr. */
static int loadtest(json_t **out, const char *args)
{
    char cmd[8192], buf[1 << 16];
    snprintf(cmd, sizeof cmd, "timeout 120 %s loadtest --no-progress --url http://127.0.0.1:%d %s 2>%s", bitnet,
             fake_port, args, err_path);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, p);
    buf[n] = 0;
    int st = pclose(p);
    FILE *e = fopen(err_path, "r");
    size_t en = e ? fread(last_err, 1, sizeof last_err - 1, e) : 0;
    last_err[en] = 0;
    if (e) fclose(e);
    if (out) *out = json_loads(buf, 0, NULL);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static json_int_t jint(const json_t *o, const char *path)
{
    char key[128];
    snprintf(key, sizeof key, "%s", path);
    char *dot = strchr(key, '.');
    if (dot) {
        *dot = 0;
        return jint(json_object_get(o, key), dot + 1);
    }
    const json_t *v = json_object_get(o, key);
    ck_assert_msg(json_is_integer(v), "%s is not an integer", path);
    return json_integer_value(v);
}

static void setup(void)
{
    snprintf(err_path, sizeof err_path, "%s", bn_test_path("loadtest.err"));
    fake_port = 1; /* nothing listens there: for tests that must not connect */
}

static void teardown(void)
{
    fake_stop();
    unlink(fake_log);
    unlink(err_path);
}

/* ---- tests ---- */

START_TEST(closed_loop_counts_and_fields)
{
    ck_assert_int_eq(fake_start("ok"), 0);
    json_t *j;
    int rc = loadtest(&j, "--json --users 3 --requests 7 --max-tokens 16 --seed 5 --temperature 0.5 "
                          "--ignore-eos --api-key sekret");
    ck_assert_msg(rc == 0 && j, "rc %d, stderr: %s", rc, last_err);
    static const char *fields[] = {"url", "endpoint", "model", "mode", "users", "rate", "max_tokens", "duration_s",
                                   "requests_ok", "requests_failed", "requests_cancelled", "requests_per_s",
                                   "prompt_tokens", "completion_tokens", "output_tok_s", "ttft_ms", "itl_ms",
                                   "e2e_ms", "decode_tok_s", "errors"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        ck_assert_msg(json_object_get(j, fields[i]) != NULL, "missing field %s", fields[i]);
    static const char *stats[] = {"ttft_ms", "itl_ms", "e2e_ms", "decode_tok_s"};
    static const char *stat_fields[] = {"n", "mean", "p50", "p95", "p99", "max"};
    for (size_t i = 0; i < 4; i++)
        for (size_t k = 0; k < 6; k++)
            ck_assert_msg(json_is_number(json_object_get(json_object_get(j, stats[i]), stat_fields[k])),
                          "%s.%s is not a number", stats[i], stat_fields[k]);
    static const char *kinds[] = {"connect", "http", "stream", "timeout", "malformed"};
    for (size_t i = 0; i < 5; i++) {
        char path[64];
        snprintf(path, sizeof path, "errors.%s", kinds[i]);
        ck_assert_int_eq(jint(j, path), 0);
    }
    ck_assert_int_eq(jint(j, "requests_ok"), 7);   /* --requests bounds the total, not per user */
    ck_assert_int_eq(jint(j, "requests_failed"), 0);
    ck_assert_int_eq(jint(j, "completion_tokens"), 7 * FAKE_USAGE_TOKENS);   /* from usage, not chunks */
    ck_assert_int_eq(jint(j, "prompt_tokens"), 7 * FAKE_PROMPT_TOKENS);
    ck_assert_int_eq(jint(j, "ttft_ms.n"), 7);
    ck_assert_int_eq(jint(j, "itl_ms.n"), 7 * (FAKE_CHUNKS - 1));
    ck_assert_int_eq(jint(j, "decode_tok_s.n"), 7);
    ck_assert_int_eq(jint(j, "users"), 3);
    ck_assert_str_eq(json_string_value(json_object_get(j, "mode")), "closed");
    ck_assert_str_eq(json_string_value(json_object_get(j, "model")), "fake-model");   /* from /v1/models */
    ck_assert_int_eq(json_object_size(json_object_get(json_object_get(j, "errors"), "http_status")), 0);
    json_decref(j);
    /* what the server received: 7 streaming requests with the standard fields */
    ck_assert_int_eq(log_count(NULL), 7);
    ck_assert_int_eq(log_count("/v1/chat/completions\tBearer sekret\t"), 7);
    ck_assert_int_eq(log_count("\"stream_options\":{\"include_usage\":true}"), 7);
    ck_assert_int_eq(log_count("\"stream\":true"), 7);
    ck_assert_int_eq(log_count("\"max_tokens\":16"), 7);
    ck_assert_int_eq(log_count("\"model\":\"fake-model\""), 7);
    ck_assert_int_eq(log_count("\"ignore_eos\":true"), 7);
    ck_assert_int_eq(log_count("\"seed\":5"), 7);
    ck_assert_int_eq(log_count("\"temperature\":0.5"), 7);
    ck_assert_int_eq(log_count("\"messages\":[{\"role\":\"user\""), 7);
}
END_TEST

START_TEST(tokens_without_usage_and_text_report)
{
    ck_assert_int_eq(fake_start("nousage"), 0);
    json_t *j;
    ck_assert_int_eq(loadtest(&j, "--json --requests 4"), 0);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(jint(j, "requests_ok"), 4);
    ck_assert_int_eq(jint(j, "completion_tokens"), 4 * FAKE_CHUNKS);   /* no usage chunk: content chunks */
    ck_assert_int_eq(jint(j, "prompt_tokens"), 0);
    json_decref(j);
    /* the text table: one row per statistic */
    char cmd[4096], out[8192];
    snprintf(cmd, sizeof cmd, "timeout 120 %s loadtest --no-progress --requests 2 --url http://127.0.0.1:%d",
             bitnet, fake_port);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    ck_assert_int_eq(WEXITSTATUS(pclose(p)), 0);
    ck_assert_msg(strstr(out, "2 ok, 0 failed") && strstr(out, "TTFT (ms)") && strstr(out, "ITL (ms)") &&
                  strstr(out, "E2E (ms)") && strstr(out, "decode (tok/s)") && strstr(out, "errors     none"),
                  "text report: %s", out);
}
END_TEST

START_TEST(error_kinds)
{
    ck_assert_int_eq(fake_start("mixed"), 0);
    json_t *j;
    /* one user: requests reach the fake in order, which cycles ok, 503, in-stream error, malformed */
    int rc = loadtest(&j, "--json --users 1 --requests 8");
    ck_assert_msg(rc == 0 && j, "rc %d, stderr: %s", rc, last_err);
    ck_assert_int_eq(jint(j, "requests_ok"), 2);
    ck_assert_int_eq(jint(j, "requests_failed"), 6);
    ck_assert_int_eq(jint(j, "errors.http"), 2);
    ck_assert_int_eq(jint(j, "errors.http_status.503"), 2);
    ck_assert_int_eq(jint(j, "errors.stream"), 2);
    ck_assert_int_eq(jint(j, "errors.malformed"), 2);
    ck_assert_int_eq(jint(j, "errors.connect"), 0);
    ck_assert_int_eq(jint(j, "errors.timeout"), 0);
    ck_assert_int_eq(jint(j, "completion_tokens"), 2 * FAKE_USAGE_TOKENS);   /* failed requests do not count */
    ck_assert_int_eq(jint(j, "e2e_ms.n"), 2);
    json_decref(j);
    ck_assert_int_eq(log_count(NULL), 8);
}
END_TEST

START_TEST(timeout_and_connect_errors)
{
    json_t *j;
    /* nothing listens on the port: connect errors, exit 1 (no request succeeded) */
    ck_assert_int_eq(loadtest(&j, "--json --requests 3 --model m"), 1);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(jint(j, "errors.connect"), 3);
    ck_assert_int_eq(jint(j, "requests_ok"), 0);
    json_decref(j);
    /* a server that never answers: the per-request timeout ends each request */
    ck_assert_int_eq(fake_start("hang"), 0);
    ck_assert_int_eq(loadtest(&j, "--json --users 2 --requests 4 --timeout 0.5"), 1);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(jint(j, "errors.timeout"), 4);
    ck_assert_int_eq(jint(j, "requests_failed"), 4);
    json_decref(j);
    ck_assert_int_le(log_count(NULL), 4);   /* never more sent than --requests */
}
END_TEST

START_TEST(duration_bound)
{
    ck_assert_int_eq(fake_start("slow"), 0);
    json_t *j;
    /* no --requests: --duration alone bounds the run; what is in flight at the end is cancelled */
    int rc = loadtest(&j, "--json --users 2 --duration 1");
    ck_assert_msg(j != NULL, "rc %d, stderr: %s", rc, last_err);
    json_int_t ok = jint(j, "requests_ok"), failed = jint(j, "requests_failed");
    json_int_t cancelled = jint(j, "requests_cancelled");
    ck_assert_int_eq(failed, 0);
    ck_assert_int_le(cancelled, 2);   /* at most one per user */
    ck_assert_int_ge(ok + cancelled, 2);   /* both users started one at once */
    ck_assert_int_le(log_count(NULL), ok + cancelled);   /* every request sent is accounted for */
    ck_assert_int_eq(rc, ok > 0 ? 0 : 1);
    json_decref(j);
    /* both bounds: --requests comes first */
    ck_assert_int_eq(loadtest(&j, "--json --users 2 --requests 3 --duration 100"), 0);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(jint(j, "requests_ok"), 3);
    ck_assert_int_eq(jint(j, "requests_cancelled"), 0);
    json_decref(j);
}
END_TEST

START_TEST(open_loop_rate)
{
    ck_assert_int_eq(fake_start("ok"), 0);
    json_t *j;
    int rc = loadtest(&j, "--json --rate 50 --requests 6 --seed 1");
    ck_assert_msg(rc == 0 && j, "rc %d, stderr: %s", rc, last_err);
    ck_assert_int_eq(jint(j, "requests_ok"), 6);
    ck_assert_int_eq(jint(j, "completion_tokens"), 6 * FAKE_USAGE_TOKENS);
    ck_assert_str_eq(json_string_value(json_object_get(j, "mode")), "open");
    ck_assert(json_is_null(json_object_get(j, "users")));
    ck_assert(json_real_value(json_object_get(j, "rate")) == 50.0);
    json_decref(j);
    ck_assert_int_eq(log_count(NULL), 6);
}
END_TEST

START_TEST(prompt_files)
{
    ck_assert_int_eq(fake_start("ok"), 0);
    json_t *j;
    char args[4096];
    /* the sample file: each line sent in turn, {"prompt"} lines as a user message */
    snprintf(args, sizeof args, "--json --requests 4 --prompts %s/bench/loadtest_prompts.jsonl", srcdir);
    int rc = loadtest(&j, args);
    ck_assert_msg(rc == 0 && j, "rc %d, stderr: %s", rc, last_err);
    ck_assert_int_eq(jint(j, "requests_ok"), 4);
    json_decref(j);
    ck_assert_int_eq(log_count("\"messages\":[{\"role\":\"system\""), 1);   /* its first line */
    /* its second line, a {"prompt"} */
    ck_assert_int_eq(log_count("\"messages\":[{\"role\":\"user\",\"content\":\"Write a haiku about"), 1);
    /* completions: the prompt string as is */
    const char *pf = bn_test_path("loadtest-prompts.jsonl");
    FILE *f = fopen(pf, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"prompt\":\"Once upon a time\"}\n\n{\"prompt\":\"The capital of France is\"}\n", f);
    fclose(f);
    snprintf(args, sizeof args, "--json --requests 3 --endpoint completions --prompts %s", pf);
    rc = loadtest(&j, args);
    ck_assert_msg(rc == 0 && j, "rc %d, stderr: %s", rc, last_err);
    ck_assert_int_eq(jint(j, "completion_tokens"), 3 * FAKE_USAGE_TOKENS);
    ck_assert_str_eq(json_string_value(json_object_get(j, "endpoint")), "completions");
    json_decref(j);
    ck_assert_int_eq(log_count("/v1/completions\t-\t"), 3);
    ck_assert_int_eq(log_count("\"prompt\":\"Once upon a time\""), 2);   /* prompts 1, 2, 1 */
    unlink(pf);
}
END_TEST

START_TEST(bad_arguments)
{
    static const char *cases[][2] = {
        {"--users 0", "--users"},
        {"--users 2 --rate 1", "exclusive"},
        {"--rate 0", "--rate"},
        {"--requests 1.5", "--requests"},
        {"--requests abc", "--requests"},
        {"--timeout -1", "--timeout"},
        {"--max-tokens 0", "--max-tokens"},
        {"--endpoint embeddings", "--endpoint"},
        {"--prompts x.jsonl --prompt-len 4", "exclusive"},
        {"extra", "unexpected argument"},
        {"--url ftp://127.0.0.1/", "http://"},
        {"--url 'http://'", "--url"},
        {"--bogus", "usage"},
        {"--html /nonexistent/dir/r.html", "--html /nonexistent/dir/r.html: No such file"},
        {"--priority 1.5", "--priority: expected an integer"},
        {"--priority high", "--priority"},
        {"--group ''", "--group '': empty"},
        {"--group users=0", "--group users: expected an integer from 1"},
        {"--group users=2,users=3", "'users' given twice"},
        {"--group users=1,colour=red", "unknown key 'colour'"},
        {"--group users", "'users' is not KEY=VALUE"},
        {"--group users=1,,priority=2", "'' is not KEY=VALUE"},
        {"--group priority=x", "--group priority"},
        {"--group max_tokens=0", "--group max_tokens"},
        {"--group requests=-1", "--group requests"},
        {"--group api_key=", "api_key: empty"},
        {"--group name=a/b", "name 'a/b'"},
        {"--group users=1 --users 2", "--group and --users/--rate are exclusive"},
        {"--group users=1 --rate 1", "--group and --users/--rate are exclusive"},
        {"--group name=a --group name=a", "same name"},
        {"--group name=x --group 2 --group users=1", "'2' is not KEY=VALUE"},
        {"--group users=1 --group users=1 --group users=1 --group users=1 --group users=1 --group users=1 "
         "--group users=1 --group users=1 --group users=1 --group users=1 --group users=1 --group users=1 "
         "--group users=1 --group users=1 --group users=1 --group users=1 --group users=1", "at most 16"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *j;
        char args[1024];
        snprintf(args, sizeof args, "--requests 1 %s", cases[i][0]);
        ck_assert_msg(loadtest(&j, args) == 2, "'%s' did not exit 2", cases[i][0]);
        ck_assert_msg(strstr(last_err, cases[i][1]), "'%s': stderr lacks '%s': %s", cases[i][0], cases[i][1], last_err);
        ck_assert_ptr_null(j);
    }
}
END_TEST

START_TEST(bad_prompt_files)
{
    static const char *cases[][3] = {
        /* file content, extra args, expected message after "FILE" */
        {"{\"prompt\":\"ok\"}\n{\"prompt\": \n", "", ":2: not JSON"},
        {"{\"foo\":1}\n", "", ":1: expected an object with either"},
        {"{\"prompt\":\"a\",\"messages\":[]}\n", "", ":1: expected an object with either"},
        {"\n{\"messages\":{}}\n", "", ":2: \"messages\" must be a non-empty array"},
        {"{\"messages\":[{\"content\":\"hi\"}]}\n", "", ":1: each message needs a string \"role\""},
        {"{\"messages\":[{\"role\":\"user\",\"content\":3}]}\n", "", ":1: each message needs a string or array"},
        {"{\"prompt\":\"\"}\n", "", ":1: \"prompt\" must be a non-empty string"},
        {"[1,2]\n", "", ":1: expected an object"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n", "--endpoint completions",
         ":1: a \"messages\" line needs --endpoint chat"},
        {"\n  \n", "", ": no prompts"},
    };
    const char *pf = bn_test_path("loadtest-bad.jsonl");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        FILE *f = fopen(pf, "w");
        ck_assert_ptr_nonnull(f);
        fputs(cases[i][0], f);
        fclose(f);
        char args[1024], want[1024];
        snprintf(args, sizeof args, "--requests 1 --prompts %s %s", pf, cases[i][1]);
        snprintf(want, sizeof want, "%s%s", pf, cases[i][2]);
        ck_assert_msg(loadtest(NULL, args) == 2, "case %zu did not exit 2", i);
        ck_assert_msg(strstr(last_err, want), "case %zu: stderr lacks '%s': %s", i, want, last_err);
    }
    unlink(pf);
    ck_assert_int_eq(loadtest(NULL, "--requests 1 --prompts /nonexistent/p.jsonl"), 2);
    ck_assert_msg(strstr(last_err, "/nonexistent/p.jsonl: cannot open"), "%s", last_err);
}
END_TEST

/* ---- the HTML report ---- */

/* The whole file, NUL-terminated (NULL if unreadable); free it. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0, got;
    do {
        if (n + 4096 + 1 > cap) {
            char *nb = realloc(buf, cap = 2 * cap + 8192);
            if (!nb) break;
            buf = nb;
        }
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
    } while (got > 0);
    fclose(f);
    if (buf) buf[n] = 0;
    return buf;
}

static long count_of(const char *hay, const char *needle)
{
    long n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

static int is_whole_page(const char *html)
{
    size_t n = strlen(html);
    return !strncmp(html, "<!DOCTYPE html>\n", 16) && n > 8 && !strcmp(html + n - 8, "</html>\n") &&
           count_of(html, "<body>") == 1 && count_of(html, "</body>") == 1;
}

/* The value at a dotted path of the JSON report ("ttft_ms.p50"), or NULL. */
static const json_t *jpath(const json_t *o, const char *path)
{
    char key[128];
    snprintf(key, sizeof key, "%s", path);
    char *dot = strchr(key, '.');
    if (!dot) return json_object_get(o, key);
    *dot = 0;
    return jpath(json_object_get(o, key), dot + 1);
}

/* The number shown in the page's element id="ID" equals the JSON report's, to the digits shown. */
static void assert_same_number(const char *html, const json_t *j, const char *id)
{
    char key[160];
    snprintf(key, sizeof key, "id=\"%s\">", id);
    const char *p = strstr(html, key), *dot, *end;
    ck_assert_msg(p != NULL, "the HTML report has no element %s", key);
    p += strlen(key);
    double shown = strtod(p, (char **)&end), want = json_number_value(jpath(j, id));
    ck_assert_msg(end != p && *end == '<', "%s: not a number in the HTML: %.20s", id, p);
    ck_assert_msg(json_is_number(jpath(j, id)), "%s is not a number in the JSON report", id);
    dot = memchr(p, '.', (size_t)(end - p));
    double tol = 0.5 * pow(10, dot ? -(double)(end - dot - 1) : 0) + 1e-5 * fabs(want) + 1e-9;
    ck_assert_msg(fabs(shown - want) <= tol, "%s: HTML %.*s, JSON %g", id, (int)(end - p), p, want);
}

/* Nothing in the page loads anything: every URL in it is the target's, shown as text. */
static void assert_self_contained(const char *html)
{
    static const char *refs[] = {"https://", "<script", "<link", "<img", "<iframe", "<object", "<embed",
                                 "href=", "src=\"", "url(", "@import", "xlink"};
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++)
        ck_assert_msg(!strstr(html, refs[i]), "the HTML report contains '%s'", refs[i]);
    char target[64];
    snprintf(target, sizeof target, "http://127.0.0.1:%d/", fake_port);
    ck_assert_int_eq(count_of(html, "http://"), count_of(html, target));
}

START_TEST(html_report)
{
    ck_assert_int_eq(fake_start("hostile"), 0);
    char hp[512], pf[512], args[2048];
    snprintf(hp, sizeof hp, "%s", bn_test_path("loadtest.html"));
    snprintf(pf, sizeof pf, "%s", bn_test_path("lt<b>&prompts.jsonl"));   /* markup from the user too */
    FILE *f = fopen(pf, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"prompt\":\"hello\"}\n", f);
    fclose(f);
    json_t *j;
    /* requests alternate ok, in-stream error: 5 ok of 9, over 3 users */
    snprintf(args, sizeof args, "--json --users 3 --requests 9 --max-tokens 16 --temperature 0 --ignore-eos "
             "--prompts '%s' --html '%s'", pf, hp);
    int rc = loadtest(&j, args);
    ck_assert_msg(rc == 0 && j, "rc %d, stderr: %s", rc, last_err);
    ck_assert_int_eq(jint(j, "requests_ok"), 5);
    ck_assert_int_eq(jint(j, "errors.stream"), 4);
    ck_assert_str_eq(json_string_value(json_object_get(j, "model")), "<script>alert(\"id\")</script>&x'");
    char *html = slurp(hp);
    ck_assert_ptr_nonnull(html);
    ck_assert_msg(is_whole_page(html), "not a whole page: %.40s", html);
    ck_assert_ptr_nonnull(strstr(html, "<meta name=\"viewport\""));
    ck_assert_int_eq(count_of(html, "<svg viewBox="), 5);   /* 3 histograms, tokens per user, tok/s */
    ck_assert_int_eq(count_of(html, "<svg"), count_of(html, "</svg>"));
    ck_assert_int_eq(count_of(html, "<table"), count_of(html, "</table>"));
    /* the summary: the JSON report's numbers */
    static const char *top[] = {"requests_ok", "requests_failed", "requests_cancelled", "duration_s",
                                "requests_per_s", "prompt_tokens", "completion_tokens", "output_tok_s",
                                "errors.connect", "errors.http", "errors.stream", "errors.timeout",
                                "errors.malformed"};
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++) assert_same_number(html, j, top[i]);
    static const char *rows[] = {"ttft_ms", "itl_ms", "e2e_ms", "decode_tok_s"};
    static const char *cols[] = {"n", "mean", "p50", "p95", "p99", "max"};
    for (size_t i = 0; i < 4; i++)
        for (size_t c = 0; c < 6; c++) {
            char id[64];
            snprintf(id, sizeof id, "%s.%s", rows[i], cols[c]);
            assert_same_number(html, j, id);
        }
    /* one line per user, whose tokens add up to every content chunk of the ok requests */
    ck_assert_int_eq(count_of(html, "class=\"user\""), 3);
    ck_assert_int_eq(count_of(html, "class=\"agg\""), 1);
    long total = 0;
    for (int u = 1; u <= 3; u++) {
        char key[64];
        snprintf(key, sizeof key, "<title>user %d: ", u);
        const char *p = strstr(html, key);
        ck_assert_msg(p != NULL, "no line for user %d", u);
        total += strtol(p + strlen(key), NULL, 10);
    }
    ck_assert_int_eq(total, 5 * FAKE_CHUNKS);
    ck_assert_ptr_nonnull(strstr(html, "all 25 were stored"));
    /* the run's parameters */
    ck_assert_ptr_nonnull(strstr(html, "<td>closed loop, 3 users</td>"));
    ck_assert_ptr_nonnull(strstr(html, "<td>max tokens</td><td>16</td>"));
    ck_assert_ptr_nonnull(strstr(html, "<td>requests</td><td>9</td>"));
    ck_assert_ptr_nonnull(strstr(html, "<td>started</td><td>20"));
    /* strings from the server and the user are escaped; nothing is loaded from anywhere */
    ck_assert_ptr_nonnull(strstr(html, HOSTILE_ID_ESCAPED));
    ck_assert_ptr_nonnull(strstr(html, HOSTILE_MSG_ESCAPED));
    ck_assert_ptr_nonnull(strstr(html, "lt&lt;b&gt;&amp;prompts.jsonl"));
    ck_assert_ptr_null(strstr(html, "alert(\"id\")"));
    assert_self_contained(html);
    free(html);
    json_decref(j);
    unlink(hp);
    unlink(pf);
}
END_TEST

START_TEST(html_report_open_loop)
{
    ck_assert_int_eq(fake_start("ok"), 0);
    char hp[512], args[1024];
    snprintf(hp, sizeof hp, "%s", bn_test_path("loadtest-rate.html"));
    snprintf(args, sizeof args, "--rate 50 --requests 4 --seed 2 --html %s", hp);   /* with the text report */
    ck_assert_int_eq(loadtest(NULL, args), 0);
    char *html = slurp(hp);
    ck_assert_ptr_nonnull(html);
    ck_assert_msg(is_whole_page(html), "not a whole page: %.40s", html);
    ck_assert_int_eq(count_of(html, "class=\"user\""), 0);   /* no users in open loop: tok/s only */
    ck_assert_int_eq(count_of(html, "class=\"agg\""), 1);
    ck_assert_ptr_nonnull(strstr(html, "all 20 were stored"));
    ck_assert_ptr_nonnull(strstr(html, "<td>open loop, Poisson arrivals at 50 requests/s</td>"));
    ck_assert_ptr_nonnull(strstr(html, "<td id=\"requests_ok\">4</td>"));
    ck_assert_ptr_nonnull(strstr(html, "<td id=\"errors.connect\">0</td>"));
    assert_self_contained(html);
    free(html);
    /* nothing succeeds: the page still says what happened */
    fake_stop();
    fake_port = 1;
    ck_assert_int_eq(loadtest(NULL, "--requests 2 --model m --html /dev/null"), 1);
    snprintf(args, sizeof args, "--requests 2 --model m --html %s", hp);
    ck_assert_int_eq(loadtest(NULL, args), 1);
    html = slurp(hp);
    ck_assert_ptr_nonnull(html);
    ck_assert_ptr_nonnull(strstr(html, "<td id=\"errors.connect\">2</td>"));
    ck_assert_ptr_nonnull(strstr(html, "No token was received"));
    ck_assert_ptr_nonnull(strstr(html, "TTFT (ms): no samples"));
    ck_assert_msg(is_whole_page(html), "not a whole page");
    free(html);
    unlink(hp);
}
END_TEST


/* ---- client groups and priorities ---- */

/* Lines of the fake's log containing both needles. */
static long log_count2(const char *a, const char *b)
{
    FILE *f = fopen(fake_log, "r");
    char *line = NULL;
    size_t cap = 0;
    long n = 0;
    while (f && getline(&line, &cap, f) >= 0) n += strstr(line, a) && strstr(line, b);
    free(line);
    if (f) fclose(f);
    return n;
}

static json_t *group_at(json_t *j, size_t i)
{
    json_t *g = json_array_get(json_object_get(j, "groups"), i);
    ck_assert_msg(json_is_object(g), "no groups[%zu]", i);
    return g;
}

START_TEST(priority_sent)
{
    ck_assert_int_eq(fake_start("ok"), 0);
    json_t *j;
    int rc = loadtest(&j, "--json --users 2 --requests 4 --priority -3");
    ck_assert_msg(rc == 0 && j, "rc %d, stderr: %s", rc, last_err);
    ck_assert_int_eq(jint(j, "priority"), -3);
    ck_assert_int_eq(json_array_size(json_object_get(j, "groups")), 0);   /* no --group: no groups */
    json_decref(j);
    ck_assert_int_eq(log_count("\"priority\":-3"), 4);
    /* without --priority, no priority field at all */
    fake_stop();
    ck_assert_int_eq(fake_start("ok"), 0);
    ck_assert_int_eq(loadtest(&j, "--json --requests 2"), 0);
    ck_assert(json_is_null(json_object_get(j, "priority")));
    json_decref(j);
    ck_assert_int_eq(log_count(NULL), 2);
    ck_assert_int_eq(log_count("\"priority\""), 0);
}
END_TEST

/* An interactive group with its own request count, and a batch group as background load: the
 * run ends when the interactive one is done; each group's requests carry its own settings and
 * its stats count only its own requests; the run's add them up. */
START_TEST(groups_per_group_stats)
{
    ck_assert_int_eq(fake_start("ok"), 0);
    json_t *j;
    int rc = loadtest(&j, "--json --max-tokens 16 --api-key kdefault "
                          "--group name=inter,users=1,priority=0,api_key=ki,max_tokens=8,requests=3 "
                          "--group name=batch,users=2,priority=10");
    ck_assert_msg(rc == 0 && j, "rc %d, stderr: %s", rc, last_err);
    ck_assert_int_eq(jint(j, "users"), 3);
    ck_assert(json_is_null(json_object_get(j, "priority")));
    ck_assert_int_eq(json_array_size(json_object_get(j, "groups")), 2);
    json_t *gi = group_at(j, 0), *gb = group_at(j, 1);
    ck_assert_str_eq(json_string_value(json_object_get(gi, "name")), "inter");
    ck_assert_str_eq(json_string_value(json_object_get(gb, "name")), "batch");
    ck_assert_int_eq(jint(gi, "users"), 1);
    ck_assert_int_eq(jint(gb, "users"), 2);
    ck_assert_int_eq(jint(gi, "priority"), 0);
    ck_assert_int_eq(jint(gb, "priority"), 10);
    ck_assert_int_eq(jint(gi, "max_tokens"), 8);
    ck_assert_int_eq(jint(gb, "max_tokens"), 16);   /* --max-tokens is the default */
    ck_assert_int_eq(jint(gi, "requests_limit"), 3);
    ck_assert(json_is_null(json_object_get(gb, "requests_limit")));
    ck_assert(json_is_true(json_object_get(gi, "api_key")) && json_is_true(json_object_get(gb, "api_key")));
    /* the interactive group did exactly its 3, all ok, and was never cut short */
    ck_assert_int_eq(jint(gi, "requests_ok"), 3);
    ck_assert_int_eq(jint(gi, "requests_failed"), 0);
    ck_assert_int_eq(jint(gi, "requests_cancelled"), 0);
    ck_assert_int_eq(jint(gi, "completion_tokens"), 3 * FAKE_USAGE_TOKENS);
    ck_assert_int_eq(jint(gi, "ttft_ms.n"), 3);
    ck_assert_int_eq(jint(gi, "itl_ms.n"), 3 * (FAKE_CHUNKS - 1));
    ck_assert_int_eq(jint(gi, "errors.connect"), 0);
    /* the run is the sum of its groups */
    static const char *sums[] = {"requests_ok", "requests_failed", "requests_cancelled", "completion_tokens",
                                 "prompt_tokens", "ttft_ms.n", "itl_ms.n", "e2e_ms.n", "decode_tok_s.n"};
    for (size_t i = 0; i < sizeof sums / sizeof sums[0]; i++)
        ck_assert_msg(jint(j, sums[i]) == jint(gi, sums[i]) + jint(gb, sums[i]), "%s is not the groups' sum", sums[i]);
    json_int_t b_ok = jint(gb, "requests_ok"), b_cancelled = jint(gb, "requests_cancelled");
    ck_assert_int_le(b_cancelled, 2);   /* at most one per batch user, cut at the end */
    json_decref(j);
    /* what the server received: each group's key, priority and max_tokens */
    ck_assert_int_eq(log_count("\tBearer ki\t"), 3);
    ck_assert_int_eq(log_count2("\tBearer ki\t", "\"max_tokens\":8,"), 3);
    ck_assert_int_eq(log_count2("\tBearer ki\t", "\"priority\":0"), 3);
    long nb = log_count("\tBearer kdefault\t");
    ck_assert_int_ge(nb, b_ok);
    ck_assert_int_le(nb, b_ok + b_cancelled);
    ck_assert_int_eq(log_count2("\tBearer kdefault\t", "\"max_tokens\":16,"), nb);
    ck_assert_int_eq(log_count2("\tBearer kdefault\t", "\"priority\":10"), nb);
    ck_assert_int_eq(log_count(NULL), 3 + nb);
}
END_TEST

/* Every group has its own count: each does exactly that, nothing is cancelled; the text and
 * HTML reports have a section / row per group. */
START_TEST(groups_all_limited_and_reports)
{
    ck_assert_int_eq(fake_start("ok"), 0);
    json_t *j;
    char hp[512], args[1024];
    snprintf(hp, sizeof hp, "%s", bn_test_path("loadtest-groups.html"));
    snprintf(args, sizeof args, "--json --html %s --group users=2,requests=5 --group name=b,requests=2,max_tokens=4",
             hp);
    int rc = loadtest(&j, args);
    ck_assert_msg(rc == 0 && j, "rc %d, stderr: %s", rc, last_err);
    ck_assert_int_eq(jint(j, "requests_ok"), 7);
    ck_assert_int_eq(jint(j, "requests_cancelled"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(group_at(j, 0), "name")), "1");   /* its number */
    ck_assert_int_eq(jint(group_at(j, 0), "requests_ok"), 5);
    ck_assert_int_eq(jint(group_at(j, 1), "requests_ok"), 2);
    ck_assert(json_is_null(json_object_get(group_at(j, 1), "priority")));
    json_decref(j);
    ck_assert_int_eq(log_count(NULL), 7);
    ck_assert_int_eq(log_count("\"max_tokens\":4,"), 2);
    ck_assert_int_eq(log_count("\"priority\""), 0);
    char *html = slurp(hp);
    ck_assert_ptr_nonnull(html);
    ck_assert_msg(is_whole_page(html), "not a whole page");
    ck_assert_int_eq(count_of(html, "<tr class=\"group\">"), 2);
    ck_assert_ptr_nonnull(strstr(html, "<td id=\"groups.0.requests_ok\">5</td>"));
    ck_assert_ptr_nonnull(strstr(html, "<td id=\"groups.1.requests_ok\">2</td>"));
    ck_assert_ptr_nonnull(strstr(html, "<td>closed loop, 3 users in 2 groups</td>"));
    ck_assert_ptr_nonnull(strstr(html, "<td>group b</td><td>1 user, max_tokens 4, 2 requests</td>"));
    ck_assert_int_eq(count_of(html, "<table"), count_of(html, "</table>"));
    assert_self_contained(html);
    free(html);
    unlink(hp);
    /* the text report: the run, then one section per group */
    char cmd[4096], out[16384];
    snprintf(cmd, sizeof cmd, "timeout 120 %s loadtest --no-progress --url http://127.0.0.1:%d "
             "--group name=inter,requests=2,priority=-1,api_key=x --group name=batch,users=2,max_tokens=9", bitnet,
             fake_port);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    ck_assert_int_eq(WEXITSTATUS(pclose(p)), 0);
    ck_assert_msg(strstr(out, "closed loop, 3 users in 2 groups\n") &&
                  strstr(out, "\ngroup inter: 1 user, priority -1, max_tokens 64, 2 requests, API key sent\n"
                              "requests   2 ok, 0 failed") &&
                  strstr(out, "\ngroup batch: 2 users, max_tokens 9\n") && count_of(out, "TTFT (ms)") == 3,
                  "text report: %s", out);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("loadtest");
    TCase *tc = tcase_create("loadtest");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, closed_loop_counts_and_fields);
    tcase_add_test(tc, tokens_without_usage_and_text_report);
    tcase_add_test(tc, error_kinds);
    tcase_add_test(tc, timeout_and_connect_errors);
    tcase_add_test(tc, duration_bound);
    tcase_add_test(tc, open_loop_rate);
    tcase_add_test(tc, prompt_files);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, bad_prompt_files);
    tcase_add_test(tc, html_report);
    tcase_add_test(tc, html_report_open_loop);
    tcase_add_test(tc, priority_sent);
    tcase_add_test(tc, groups_per_group_stats);
    tcase_add_test(tc, groups_all_limited_and_reports);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const char *b = getenv("BN_BITNET"), *d = getenv("BN_SRCDIR");
    if (!b || !d) {
        fprintf(stderr, "SKIP: test_loadtest: BN_BITNET and BN_SRCDIR must be set (make check sets them)\n");
        return 77;
    }
    snprintf(bitnet, sizeof bitnet, "%s", b);
    snprintf(srcdir, sizeof srcdir, "%s", d);
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
