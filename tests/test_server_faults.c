/* bitnetd end to end, under faults: slow and idle clients, more clients than workers (queue
 * full, pings while queued, queue timeout), clients that disconnect (streaming, not, during a
 * long prefill), and workers killed with SIGKILL mid-request. One server per test.
 *
 * "Long" requests use ignore_eos with thousands of tokens on the default synthetic model (n_ctx
 * 4096): their end is never waited for; the tests cancel them by closing the socket, and check
 * that with token counts (/metrics), not with wall-clock thresholds. */
#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server_harness.h"

#define SJ(j, k) json_string_value(json_object_get((j), (k)))
#define IJ(j, k) json_integer_value(json_object_get((j), (k)))

#define LONG_MAX_TOKENS 3500
#define LONG_STREAM "{\"prompt\":\"a\",\"max_tokens\":3500,\"ignore_eos\":true,\"stream\":true}"
#define LONG_PLAIN "{\"prompt\":\"a\",\"max_tokens\":3500,\"ignore_eos\":true}"
#define SHORT_PLAIN "{\"prompt\":\"hello\",\"max_tokens\":8,\"ignore_eos\":true}"

/* A short completion must succeed with exactly 8 tokens. */
static void assert_short_ok(bn_srv *s, const char *what)
{
    json_t *j;
    int st = bn_http_post_json(s->port, "/v1/completions", SHORT_PLAIN, &j);
    if (st != 200) bn_srv_dump_log(s);
    ck_assert_msg(st == 200, "%s: a new request got %d", what, st);
    ck_assert_int_eq(IJ(json_object_get(j, "usage"), "completion_tokens"), 8);
    json_decref(j);
}

static void assert_health(bn_srv *s)
{
    json_t *j;
    int st = bn_http_get_json(s->port, "/health", &j);
    ck_assert_msg(st == 200, "GET /health: %d", st);
    json_decref(j);
}

/* Opens a stream and reads its first data event (so it runs on a worker). */
static void open_running_stream(bn_srv *s, bn_sse *sse, const char *body)
{
    ck_assert_int_eq(bn_sse_open(sse, s->port, "/v1/completions", NULL, body, BN_HTTP_MS), 0);
    ck_assert_int_eq(sse->head.status, 200);
    for (int i = 0; i < 8; i++) {   /* pings may come first */
        bn_sse_event ev;
        ck_assert_int_eq(bn_sse_next(sse, &ev, BN_HTTP_MS), 1);
        int data = ev.data != NULL;
        bn_sse_event_free(&ev);
        if (data) return;
    }
    ck_abort_msg("no data event on a stream");
}

/* Sends a request on a new connection without reading the answer. */
static void send_only(bn_srv *s, bn_conn *c, const char *body)
{
    ck_assert_int_eq(bn_conn_open(c, s->port), 0);
    size_t n;
    char *req = bn_http_format("POST", "/v1/completions", NULL, body, &n);
    ck_assert_int_eq(bn_conn_send(c, req, n, BN_HTTP_MS), 0);
    free(req);
}

/* A 503 for a full or timed-out queue: Retry-After in whole seconds and the OpenAI body. */
static void assert_503(const bn_http_resp *r, const char *what)
{
    ck_assert_msg(r->status == 503, "%s: status %d, want 503 (%.200s)", what, r->status,
                  r->body ? r->body : "");
    const char *ra = bn_http_header(r, "Retry-After");
    ck_assert_msg(ra && *ra && strspn(ra, "0123456789") == strlen(ra), "%s: Retry-After '%s'",
                  what, ra ? ra : "(none)");
    json_error_t je;
    json_t *j = json_loads(r->body ? r->body : "", 0, &je);
    json_t *e = json_object_get(j, "error");
    ck_assert_msg(json_is_object(e) && SJ(e, "message") && SJ(e, "type"), "%s: OpenAI body: %s",
                  what, r->body ? r->body : "");
    json_decref(j);
}

/* ---- slow and idle clients ------------------------------------------------------------ */

/* Sends req one byte per 200 ms, at most limit bytes, until the server closes the connection;
 * with check set, another client is served meanwhile (health and a completion, twice). Returns
 * the bytes sent before the close, or -1 if it never closed. */
static long trickle(bn_srv *s, size_t limit, int check)
{
    static const char req[] = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
                              "................................................................"
                              "\r\n\r\n";
    bn_conn slow;
    ck_assert_int_eq(bn_conn_open(&slow, s->port), 0);
    long closed_at = -1;
    for (size_t sent = 0; sent < limit && sent < sizeof req - 1 && closed_at < 0; sent++) {
        if (bn_conn_send(&slow, req + sent, 1, 1000) != 0) {
            closed_at = (long)sent;
            break;
        }
        if (check && (sent == 2 || sent == 6)) {
            assert_health(s);
            assert_short_ok(s, "while a client trickles its headers");
        }
        if (bn_conn_wait_closed(&slow, 200) == 1) closed_at = (long)sent + 1;   /* the pace */
    }
    bn_conn_close(&slow);
    return closed_at;
}

/* Headers one byte per 200 ms do not hold up other clients (a long client_timeout here, so a
 * slow machine cannot drop the trickler before the checks). */
START_TEST(slow_client_does_not_block)
{
    bn_srv *s = bn_srv_start_ok("client_timeout = 60s\n");
    long closed = trickle(s, 8, 1);
    ck_assert_msg(closed < 0 || closed > 6, "the slow connection was dropped after %ld bytes, "
                  "before the other clients were checked", closed);
    assert_health(s);
    bn_srv_stop(s, 10000);
}
END_TEST

/* ... and the server drops such a client once client_timeout (2 s) has passed, long before its
 * headers are complete (45 bytes take 9 s): client_timeout bounds a slow request read, as
 * nginx's client_header_timeout does, not only the gap between two bytes. */
START_TEST(slow_client_dropped)
{
    bn_srv *s = bn_srv_start_ok("client_timeout = 2s\n");
    long closed = trickle(s, 45, 0);
    ck_assert_msg(closed >= 0, "a client sending 1 byte / 200 ms kept its connection for 45 bytes "
                               "(9 s, client_timeout 2s)");
    assert_health(s);
    bn_srv_stop(s, 10000);
}
END_TEST

/* A connection that sends nothing is closed after client_timeout. */
START_TEST(idle_client)
{
    bn_srv *s = bn_srv_start_ok("client_timeout = 1s\n");
    bn_conn c;
    ck_assert_int_eq(bn_conn_open(&c, s->port), 0);
    ck_assert_msg(bn_conn_wait_closed(&c, 10000) == 1, "an idle connection stayed open 10 s");
    bn_conn_close(&c);
    /* and an idle keep-alive connection after one request */
    ck_assert_int_eq(bn_conn_open(&c, s->port), 0);
    size_t n;
    char *req = bn_http_format("GET", "/health", NULL, NULL, &n);
    ck_assert_int_eq(bn_conn_send(&c, req, n, BN_HTTP_MS), 0);
    free(req);
    bn_http_resp r;
    ck_assert_int_eq(bn_conn_read_resp(&c, &r, BN_HTTP_MS), 0);
    ck_assert_int_eq(r.status, 200);
    bn_http_resp_free(&r);
    ck_assert_msg(bn_conn_wait_closed(&c, 10000) == 1, "an idle keep-alive connection stayed open");
    bn_conn_close(&c);
    bn_srv_stop(s, 10000);
}
END_TEST

/* ---- the queue ------------------------------------------------------------------------ */

/* workers = 1, slots = 1, queue_size = 2: one running + two queued, the next is refused with 503; the
 * queued stream gets ": ping" comments; once the running one is cancelled the queued finish. */
START_TEST(queue_full)
{
    bn_srv *s = bn_srv_start_ok("slots = 1\nqueue_size = 2\nping_interval = 200ms\nqueue_timeout = 60s\n");
    bn_sse run, q1;
    open_running_stream(s, &run, LONG_STREAM);

    ck_assert_msg(bn_sse_open(&q1, s->port, "/v1/completions", NULL,
                              "{\"prompt\":\"b\",\"max_tokens\":5,\"stream\":true}", 10000) == 0,
                  "a queued stream got no response head (pings need it sent while queued)");
    ck_assert_int_eq(q1.head.status, 200);
    bn_conn q2;
    send_only(s, &q2, "{\"prompt\":\"c\",\"max_tokens\":5,\"ignore_eos\":true}");
    ck_assert_int_eq(bn_srv_wait_queue_length(s->port, 2, 10000), 2);

    bn_http_resp r;   /* the queue is full: plain and streaming requests are refused */
    ck_assert_int_eq(bn_http_req(s->port, "POST", "/v1/completions", NULL, SHORT_PLAIN, &r,
                                 BN_HTTP_MS), 0);
    assert_503(&r, "queue full");
    bn_http_resp_free(&r);
    ck_assert_int_eq(bn_http_req(s->port, "POST", "/v1/chat/completions", NULL,
                                 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                 "\"stream\":true}",
                                 &r, BN_HTTP_MS), 0);
    assert_503(&r, "queue full, stream");
    bn_http_resp_free(&r);
    assert_health(s);   /* liveness is answered with every worker busy */

    int pings = 0;      /* ping_interval 200ms: a few within 10 s, before any data */
    for (int i = 0; i < 50 && pings < 3; i++) {
        bn_sse_event ev;
        ck_assert_msg(bn_sse_next(&q1, &ev, 10000) == 1, "queued stream: nothing within 10 s");
        ck_assert_msg(ev.data == NULL, "queued stream: data '%s' before the ping", ev.data);
        pings += ev.comment && strstr(ev.text, "ping");
        bn_sse_event_free(&ev);
    }
    ck_assert_int_ge(pings, 3);

    bn_sse_close(&run);   /* cancel the running one: the queued go through */
    bn_stream_result res;
    ck_assert_int_eq(bn_sse_collect(&q1, &res, 60000), 0);
    ck_assert(res.done);
    ck_assert_int_eq(res.n_errors, 0);
    ck_assert_int_ge(res.n_events, 1);
    bn_stream_result_free(&res);
    bn_sse_close(&q1);
    ck_assert_int_eq(bn_conn_read_resp(&q2, &r, 60000), 0);
    ck_assert_int_eq(r.status, 200);
    json_t *j = bn_http_json(&r);
    ck_assert_int_eq(IJ(json_object_get(j, "usage"), "completion_tokens"), 5);
    json_decref(j);
    bn_http_resp_free(&r);
    bn_conn_close(&q2);
    ck_assert_int_eq(bn_srv_queue_length(s->port), 0);
    ck_assert(bn_srv_metric(s->port, "bitnetd_requests_rejected_total", NULL) >= 2);
    bn_srv_stop(s, 10000);
}
END_TEST

/* A request queued longer than queue_timeout gets 503 (a stream: 503, or an in-stream error
 * then [DONE] when its head was already sent for pings). */
START_TEST(queue_timeout)
{
    bn_srv *s = bn_srv_start_ok("slots = 1\nqueue_size = 4\nqueue_timeout = 500ms\nping_interval = 200ms\n");
    bn_sse run;
    open_running_stream(s, &run, LONG_STREAM);
    bn_http_resp r;
    ck_assert_int_eq(bn_http_req(s->port, "POST", "/v1/completions", NULL, SHORT_PLAIN, &r, 20000),
                     0);
    assert_503(&r, "queue timeout");
    bn_http_resp_free(&r);

    bn_sse q;
    ck_assert_int_eq(bn_sse_open(&q, s->port, "/v1/completions", NULL,
                                 "{\"prompt\":\"b\",\"max_tokens\":5,\"stream\":true}", 20000), 0);
    if (q.head.status == 503) {
        ck_assert_ptr_nonnull(bn_http_header(&q.head, "Retry-After"));
    } else {
        ck_assert_int_eq(q.head.status, 200);
        bn_stream_result res;
        ck_assert_int_eq(bn_sse_collect(&q, &res, 20000), 0);
        ck_assert_msg(res.n_errors == 1 && res.done, "timed-out stream: %d errors, done %d",
                      res.n_errors, res.done);
        bn_stream_result_free(&res);
    }
    bn_sse_close(&q);
    bn_sse_close(&run);
    assert_short_ok(s, "after the queue timeouts");
    bn_srv_stop(s, 10000);
}
END_TEST

/* ---- cancellation ----------------------------------------------------------------------- */

static double gen_tokens(bn_srv *s)
{
    double v = bn_srv_metric(s->port, "vllm:generation_tokens_total", NULL);
    ck_assert_msg(v >= 0, "/metrics has no vllm:generation_tokens_total");
    return v;
}

/* After a cancelled long request: a new one is served, and the tokens generated in all stay far
 * below what the cancelled one asked for (it was stopped, not run to its end first). */
static void assert_cancelled(bn_srv *s, double g0, int cancelled_max, const char *what)
{
    assert_short_ok(s, what);
    ck_assert_int_eq(bn_srv_wait_workers(s->port, "idle", 10000), 0);
    double g = gen_tokens(s) - g0;
    ck_assert_msg(g >= 8, "%s: %.0f tokens counted, the new request alone made 8", what, g);
    ck_assert_msg(g < 8 + cancelled_max / 2.0,
                  "%s: %.0f tokens generated: the cancelled request (max_tokens %d) ran on", what,
                  g, cancelled_max);
}

START_TEST(cancel_stream)
{
    bn_srv *s = bn_srv_start_ok("");
    double g0 = gen_tokens(s);
    bn_sse run;
    open_running_stream(s, &run, LONG_STREAM);
    for (int i = 0; i < 3; i++) {
        bn_sse_event ev;
        ck_assert_int_eq(bn_sse_next(&run, &ev, BN_HTTP_MS), 1);
        bn_sse_event_free(&ev);
    }
    bn_sse_close(&run);
    assert_cancelled(s, g0, LONG_MAX_TOKENS, "stream closed");
    bn_srv_stop(s, 10000);
}
END_TEST

START_TEST(cancel_nonstream)
{
    bn_srv *s = bn_srv_start_ok("");
    double g0 = gen_tokens(s);
    bn_conn c;
    send_only(s, &c, LONG_PLAIN);
    ck_assert_int_eq(bn_srv_wait_workers(s->port, "busy", 10000), 0);
    bn_conn_close(&c);
    assert_cancelled(s, g0, LONG_MAX_TOKENS, "non-streaming client gone");
    bn_srv_stop(s, 10000);
}
END_TEST

/* 4000 prompt tokens in 64-token prefill chunks: the client leaves during the prefill. */
START_TEST(cancel_prefill)
{
    bn_srv *s = bn_srv_start_ok("prefill_chunk = 64\n");
    double g0 = gen_tokens(s);
    size_t cap = 32768, n = 0;
    char *body = malloc(cap);
    n += snprintf(body + n, cap - n, "{\"max_tokens\":64,\"ignore_eos\":true,\"prompt\":[");
    for (int i = 0; i < 4000; i++)
        n += snprintf(body + n, cap - n, "%s%d", i ? "," : "", 32 + i % 90);
    snprintf(body + n, cap - n, "]}");
    bn_conn c;
    send_only(s, &c, body);
    free(body);
    ck_assert_int_eq(bn_srv_wait_workers(s->port, "busy", 10000), 0);
    bn_conn_close(&c);
    assert_short_ok(s, "after a disconnect in prefill");
    ck_assert_int_eq(bn_srv_wait_workers(s->port, "idle", 10000), 0);
    double g = gen_tokens(s) - g0;
    ck_assert_msg(g < 8 + 64, "%.0f tokens: the request cancelled in prefill ran to max_tokens", g);
    bn_srv_stop(s, 10000);
}
END_TEST

/* ---- killed workers ---------------------------------------------------------------------- */

START_TEST(kill_worker_streaming)
{
    bn_srv *s = bn_srv_start_ok("workers = 2\n");
    /* both workers up first: with slots, a worker that is not ready yet would leave both
     * streams to the other one (the picker spreads by busy slots among ready workers) */
    ck_assert_int_eq(bn_srv_wait_workers(s->port, "idle", 30000), 0);
    const char *body = "{\"prompt\":\"a\",\"max_tokens\":1500,\"ignore_eos\":true,\"stream\":true,"
                       "\"stream_options\":{\"include_usage\":true}}";
    bn_sse a, b;
    open_running_stream(s, &a, body);
    open_running_stream(s, &b, body);
    ck_assert_int_eq(bn_srv_wait_workers(s->port, "busy", 10000), 0);
    pid_t pids[2];
    ck_assert_int_eq(bn_srv_worker_pids(s->port, pids, 2, NULL), 2);
    ck_assert_int_eq(kill(pids[0], SIGKILL), 0);

    bn_stream_result ra, rb;
    ck_assert_int_eq(bn_sse_collect(&a, &ra, 60000), 0);
    ck_assert_int_eq(bn_sse_collect(&b, &rb, 60000), 0);
    bn_sse_close(&a);
    bn_sse_close(&b);
    ck_assert_msg((ra.n_errors > 0) + (rb.n_errors > 0) == 1,
                  "exactly one stream sees the error: %d and %d", ra.n_errors, rb.n_errors);
    bn_stream_result *bad = ra.n_errors ? &ra : &rb, *good = ra.n_errors ? &rb : &ra;
    ck_assert_msg(bad->done, "the killed stream ends with [DONE] after its error");
    json_t *last = json_array_get(bad->events, json_array_size(bad->events) - 1);
    ck_assert_msg(json_is_object(json_object_get(last, "error")), "the error is the last event");
    json_t *err = json_object_get(last, "error");
    ck_assert(SJ(err, "message") && SJ(err, "type"));
    ck_assert(good->done);
    ck_assert_str_eq(good->finish, "length");
    json_t *u = json_object_get(json_array_get(good->events, json_array_size(good->events) - 1),
                                "usage");
    ck_assert_int_eq(IJ(u, "completion_tokens"), 1500);
    bn_stream_result_free(&ra);
    bn_stream_result_free(&rb);

    ck_assert_int_eq(bn_srv_wait_respawn(s->port, pids[0]), 1);
    ck_assert(!bn_pid_alive(pids[0]));
    assert_short_ok(s, "after a worker was killed");
    assert_short_ok(s, "after a worker was killed (2)");
    bn_srv_stop(s, 10000);
}
END_TEST

START_TEST(kill_worker_nonstreaming)
{
    bn_srv *s = bn_srv_start_ok("");
    bn_conn c;
    send_only(s, &c, LONG_PLAIN);
    ck_assert_int_eq(bn_srv_wait_workers(s->port, "busy", 10000), 0);
    pid_t pid;
    ck_assert_int_eq(bn_srv_worker_pids(s->port, &pid, 1, NULL), 1);
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    bn_http_resp r;
    ck_assert_int_eq(bn_conn_read_resp(&c, &r, 30000), 0);
    ck_assert_msg(r.status == 500, "killed worker: status %d", r.status);
    json_t *j = bn_http_json(&r);
    json_t *e = json_object_get(j, "error");
    ck_assert_msg(json_is_object(e) && SJ(e, "message"), "500 OpenAI body: %s", r.body);
    json_decref(j);
    bn_http_resp_free(&r);
    bn_conn_close(&c);
    ck_assert_int_eq(bn_srv_wait_respawn(s->port, pid), 1);
    assert_short_ok(s, "after a worker was killed");
    bn_srv_stop(s, 10000);
}
END_TEST

#define ADD(s, t) BN_SRV_ADD_TEST(s, t, 120)   /* one case per test */

static Suite *suite(void)
{
    Suite *s = suite_create("server_faults");
    ADD(s, slow_client_does_not_block);
    ADD(s, slow_client_dropped);
    ADD(s, idle_client);
    ADD(s, queue_full);
    ADD(s, queue_timeout);
    ADD(s, cancel_stream);
    ADD(s, cancel_nonstream);
    ADD(s, cancel_prefill);
    ADD(s, kill_worker_streaming);
    ADD(s, kill_worker_nonstreaming);
    return s;
}

int main(void)
{
    return bn_srv_test_main("test_server_faults", suite());
}
