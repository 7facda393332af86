/* bitnetd end to end, multi-user serving (issue #11): slots (several requests decoded together
 * in one worker), the prompt cache and routing by prefix, priorities under saturation, per-key
 * limits (429), and a worker killed while every slot is full. One server per test (two for the
 * comparison), loopback only, on the harness's default synthetic model.
 *
 * Every check is an order of events or a count, never a duration: "long" requests ask for
 * thousands of tokens with ignore_eos and are cancelled by closing their socket, so they are
 * still running whenever a check needs them to be. Server state (queue length, requests per
 * worker, slots, metrics) is read from /health, /v1/status and /metrics. */
#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server_harness.h"

#define SJ(j, k) json_string_value(json_object_get((j), (k)))
#define IJ(j, k) json_integer_value(json_object_get((j), (k)))

#define LONG_TOKENS 3000   /* never reached: such requests are closed by the test */
#define STREAM_USAGE "\"stream\":true,\"stream_options\":{\"include_usage\":true}"
#define BATCH_LONG "{\"prompt\":\"batch job\",\"max_tokens\":3000,\"ignore_eos\":true,\"stream\":true," \
                   "\"priority\":5}"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- request bodies ----------------------------------------------------------------------- */

/* n token ids in the synthetic vocabulary (32..431): the prompt's first id depends on seed, so
 * prompts of different seeds share no prefix. */
static void make_ids(int *out, size_t n, int seed)
{
    for (size_t i = 0; i < n; i++) out[i] = 32 + (int)((unsigned)(seed * 131 + (int)i * 37 + (int)(i * i) % 11) % 400u);
}

/* A /v1/completions body with ids as the prompt (used as given: no BOS) and extra fields
 * (",\"max_tokens\":8" ...). malloc'd. */
static char *ids_body(const int *ids, size_t n, const char *extra)
{
    size_t cap = n * 6 + strlen(extra) + 32, len = 0;
    char *b = malloc(cap);
    ck_assert_ptr_nonnull(b);
    len += (size_t)snprintf(b + len, cap - len, "{\"prompt\":[");
    for (size_t i = 0; i < n; i++) len += (size_t)snprintf(b + len, cap - len, "%s%d", i ? "," : "", ids[i]);
    snprintf(b + len, cap - len, "]%s}", extra);
    return b;
}

static char *seeded_body(size_t n, int seed, const char *extra)
{
    int *ids = malloc(n * sizeof *ids);
    ck_assert_ptr_nonnull(ids);
    make_ids(ids, n, seed);
    char *b = ids_body(ids, n, extra);
    free(ids);
    return b;
}

/* ---- server state ------------------------------------------------------------------------- */

/* workers[i].requests of /v1/status (requests dispatched to each worker): how many workers. */
static int worker_requests(bn_srv *s, long *req, int max)
{
    json_t *j;
    ck_assert_int_eq(bn_http_get_json(s->port, "/v1/status", &j), 200);
    json_t *ws = json_object_get(j, "workers");
    int n = (int)json_array_size(ws);
    for (int i = 0; i < n && i < max; i++) req[i] = (long)IJ(json_array_get(ws, (size_t)i), "requests");
    json_decref(j);
    return n < max ? n : max;
}

/* The worker that the one request sent between two worker_requests() calls went to. */
static int worker_of(const long *before, const long *after, int n)
{
    int w = -1;
    for (int i = 0; i < n; i++)
        if (after[i] != before[i]) {
            ck_assert_msg(w < 0 && after[i] == before[i] + 1, "one request moved several counters");
            w = i;
        }
    ck_assert_msg(w >= 0, "no worker counted the request");
    return w;
}

/* A worker's slots as /v1/status reports them: "slots": {"busy": B, "total": T} (or "slots": T
 * with "busy_slots" / "slots_busy": B). Fails the test when it is not reported. */
static void worker_slots(bn_srv *s, int i, long *busy, long *total)
{
    json_t *j;
    ck_assert_int_eq(bn_http_get_json(s->port, "/v1/status", &j), 200);
    json_t *w = json_array_get(json_object_get(j, "workers"), (size_t)i), *sl = json_object_get(w, "slots");
    json_t *b = json_object_get(sl, "busy"), *t = json_object_get(sl, "total");
    if (!b) b = json_object_get(w, "busy_slots");
    if (!b) b = json_object_get(w, "slots_busy");
    if (!t && json_is_integer(sl)) t = sl;
    int ok = json_is_integer(b) && json_is_integer(t);
    *busy = ok ? (long)json_integer_value(b) : -1;
    *total = ok ? (long)json_integer_value(t) : -1;
    char *dump = ok ? NULL : json_dumps(w, JSON_COMPACT);
    json_decref(j);
    ck_assert_msg(ok, "/v1/status workers[%d] has no slots {busy, total}: %s", i, dump ? dump : "(none)");
}

static double metric(bn_srv *s, const char *name)
{
    double v = bn_srv_metric(s->port, name, NULL);
    ck_assert_msg(v >= 0, "/metrics has no %s", name);
    return v;
}

/* ---- streams ------------------------------------------------------------------------------ */

/* Sends a streaming request without waiting for its head (which comes with the first token or
 * ping): for requests that are to wait in the queue. Read the head later with sse_head. */
static void sse_send(bn_sse *s, int port, const char *path, const char *hdrs, const char *body)
{
    memset(s, 0, sizeof *s);
    s->c.fd = -1;
    ck_assert_int_eq(bn_conn_open(&s->c, port), 0);
    size_t n;
    char *req = bn_http_format("POST", path, hdrs, body, &n);
    ck_assert_ptr_nonnull(req);
    ck_assert_int_eq(bn_conn_send(&s->c, req, n, BN_HTTP_MS), 0);
    free(req);
}

static void sse_head(bn_sse *s, int timeout_ms)
{
    ck_assert_msg(bn_conn_read_head(&s->c, &s->head, timeout_ms) == 0, "no response head");
    const char *cl = bn_http_header(&s->head, "Content-Length");
    s->body_left = !s->head.chunked && cl ? strtol(cl, NULL, 10) : -1;
    s->t_read = bn_now();
    ck_assert_msg(s->head.status == 200, "stream status %d", s->head.status);
}

static void sse_open_ok(bn_sse *s, int port, const char *path, const char *hdrs, const char *body)
{
    ck_assert_int_eq(bn_sse_open(s, port, path, hdrs, body, BN_HTTP_MS), 0);
    ck_assert_msg(s->head.status == 200, "stream status %d", s->head.status);
}

/* Reads data events until n of them have come (pings skipped): their completion text is
 * appended to text (cap bytes, NUL-terminated). Asserts that none of them ends the stream. */
static void read_running(bn_sse *s, int n, char *text, size_t cap)
{
    size_t len = text ? strlen(text) : 0;
    for (int got = 0, seen = 0; got < n; seen++) {
        ck_assert_msg(seen < n + 64, "too many comment blocks on a running stream");
        bn_sse_event ev;
        ck_assert_msg(bn_sse_next(s, &ev, BN_HTTP_MS) == 1, "the stream ended or stalled");
        if (ev.data) {
            ck_assert_msg(strcmp(ev.data, "[DONE]") != 0, "the stream ended early");
            json_t *j = json_loads(ev.data, 0, NULL), *c0 = json_array_get(json_object_get(j, "choices"), 0);
            ck_assert_msg(j && !json_object_get(j, "error"), "data event: %s", ev.data);
            ck_assert_msg(!json_is_string(json_object_get(c0, "finish_reason")), "finished early: %s", ev.data);
            const char *t = SJ(c0, "text");
            if (text && t) {
                snprintf(text + len, cap - len, "%s", t);
                len = strlen(text);
            }
            json_decref(j);
            got++;
        }
        bn_sse_event_free(&ev);
    }
}

/* The usage.completion_tokens of a collected stream's last data event, or -1. */
static long stream_completion_tokens(const bn_stream_result *r)
{
    json_t *u = json_object_get(json_array_get(r->events, json_array_size(r->events) - 1), "usage");
    return json_is_integer(json_object_get(u, "completion_tokens")) ? (long)IJ(u, "completion_tokens") : -1;
}

/* ---- 1. identical results with and without slots ------------------------------------------ */

/* Four requests of different shapes: greedy with a short and a 300-token prompt (prefilled in
 * 64-token chunks while the others decode), seeded sampling, and a seeded chat. */
#define N_CMP 4
typedef struct {
    char *text;
    const char *finish;
    long tokens;
} cmp_out;

static void cmp_bodies(const char *paths[N_CMP], char *bodies[N_CMP])
{
    bodies[0] = seeded_body(40, 1, ",\"max_tokens\":40,\"temperature\":0,\"ignore_eos\":true," STREAM_USAGE);
    bodies[1] = seeded_body(300, 2, ",\"max_tokens\":24,\"temperature\":0,\"ignore_eos\":true," STREAM_USAGE);
    bodies[2] = seeded_body(20, 3, ",\"max_tokens\":40,\"temperature\":0.9,\"seed\":7,\"ignore_eos\":true,"
                                   STREAM_USAGE);
    bodies[3] = strdup("{\"messages\":[{\"role\":\"system\",\"content\":\"You answer in one short line.\"},"
                       "{\"role\":\"user\",\"content\":\"Name three rivers.\"}],\"max_tokens\":24,"
                       "\"temperature\":0.8,\"seed\":3,\"ignore_eos\":true," STREAM_USAGE "}");
    for (int i = 0; i < N_CMP; i++) paths[i] = i == 3 ? "/v1/chat/completions" : "/v1/completions";
}

static void cmp_collect(bn_sse *s, cmp_out *out, const char *what)
{
    bn_stream_result r;
    ck_assert_msg(bn_sse_collect(s, &r, 60000) == 0, "%s: the stream broke", what);
    bn_sse_close(s);
    ck_assert_msg(r.done && r.n_errors == 0, "%s: done %d, errors %d", what, r.done, r.n_errors);
    out->text = strdup(r.text);
    out->finish = r.finish && !strcmp(r.finish, "length") ? "length" : r.finish ? "other" : NULL;
    out->tokens = stream_completion_tokens(&r);
    bn_stream_result_free(&r);
}

#define L_PREFIX_EVENTS 32  /* of the long greedy request, compared event by event */

static char *long_body(void)
{
    return seeded_body(8, 4, ",\"max_tokens\":3000,\"temperature\":0,\"ignore_eos\":true,\"stream\":true");
}

START_TEST(same_results_with_and_without_slots)
{
    const char *paths[N_CMP];
    char *bodies[N_CMP], *lb = long_body();
    cmp_bodies(paths, bodies);
    cmp_out ref[N_CMP], got[N_CMP];
    static char ref_long[16384], got_long[16384];
    ref_long[0] = got_long[0] = 0;

    /* without slots: one at a time, on a worker that behaves as before slots existed */
    bn_srv *r = bn_srv_start_ok("slots = 1\nprompt_cache_mb = 0\nprefill_chunk = 64\n");
    bn_sse s;
    sse_open_ok(&s, r->port, "/v1/completions", NULL, lb);
    read_running(&s, L_PREFIX_EVENTS, ref_long, sizeof ref_long);
    bn_sse_close(&s);
    for (int i = 0; i < N_CMP; i++) {
        sse_open_ok(&s, r->port, paths[i], NULL, bodies[i]);
        cmp_collect(&s, &ref[i], "alone");
    }
    bn_srv_stop(r, 10000);

    /* with slots: the long one runs throughout, the four join it (at different steps) */
    bn_srv *b = bn_srv_start_ok("slots = 5\nprefill_chunk = 64\n");
    long busy, total;
    worker_slots(b, 0, &busy, &total);
    ck_assert_int_eq(total, 5);
    bn_sse l, c[N_CMP];
    sse_open_ok(&l, b->port, "/v1/completions", NULL, lb);
    read_running(&l, 4, got_long, sizeof got_long);
    for (int i = 0; i < N_CMP; i++) sse_open_ok(&c[i], b->port, paths[i], NULL, bodies[i]);
    ck_assert_int_eq(bn_srv_queue_length(b->port), 0);   /* all five on the one worker */
    for (int i = 0; i < N_CMP; i++) cmp_collect(&c[i], &got[i], "with slots");
    /* the long request is still running: the four ran beside it, not after it */
    ck_assert_int_eq((long)metric(b, "vllm:num_requests_running"), 1);
    read_running(&l, L_PREFIX_EVENTS - 4, got_long, sizeof got_long);
    bn_sse_close(&l);
    bn_srv_stop(b, 10000);

    ck_assert_msg(ref_long[0] != 0, "the long request produced no text");
    ck_assert_msg(!strcmp(ref_long, got_long), "long greedy request differs:\nalone: %s\nslots: %s", ref_long,
                  got_long);
    for (int i = 0; i < N_CMP; i++) {
        ck_assert_msg(ref[i].tokens > 0 && ref[i].tokens == got[i].tokens, "request %d: %ld tokens alone, %ld "
                      "with slots", i, ref[i].tokens, got[i].tokens);
        ck_assert_msg(ref[i].finish && got[i].finish && !strcmp(ref[i].finish, got[i].finish),
                      "request %d: finish_reason differs", i);
        ck_assert_msg(!strcmp(ref[i].text, got[i].text), "request %d differs:\nalone: %s\nslots: %s", i,
                      ref[i].text, got[i].text);
        free(ref[i].text);
        free(got[i].text);
        free(bodies[i]);
    }
    free(lb);
}
END_TEST

/* ---- 2. affinity: a conversation's next turn goes where its prefix is cached --------------- */

#define CONV_LEN 120  /* the first turn's prompt */
#define SIDE_REQUESTS 4

static json_t *post_ok(bn_srv *s, const char *body)
{
    json_t *j;
    int st = bn_http_post_json(s->port, "/v1/completions", body, &j);
    if (st != 200) bn_srv_dump_log(s);
    ck_assert_msg(st == 200 && j, "POST /v1/completions: status %d", st);
    return j;
}

static long cached_tokens(json_t *resp)
{
    json_t *d = json_object_get(json_object_get(resp, "usage"), "prompt_tokens_details");
    ck_assert_msg(json_is_integer(json_object_get(d, "cached_tokens")), "no usage.prompt_tokens_details.cached_tokens");
    return (long)IJ(d, "cached_tokens");
}

/* One request, and the worker it went to (requests run one at a time here). */
static json_t *post_on(bn_srv *s, const char *body, int *worker)
{
    long before[2], after[2];
    ck_assert_int_eq(worker_requests(s, before, 2), 2);
    json_t *j = post_ok(s, body);
    ck_assert_int_eq(worker_requests(s, after, 2), 2);
    *worker = worker_of(before, after, 2);
    return j;
}

START_TEST(affinity_after_side_requests)
{
    bn_srv *s = bn_srv_start_ok("workers = 2\nslots = 2\n");
    ck_assert_int_eq(bn_srv_wait_workers(s->port, "idle", 30000), 0);
    int conv[CONV_LEN + 12], w1, w;
    make_ids(conv, CONV_LEN, 50);
    char *b = ids_body(conv, CONV_LEN, ",\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true");
    json_t *j = post_on(s, b, &w1);
    free(b);
    ck_assert_int_eq(cached_tokens(j), 0);   /* nothing cached yet */
    json_decref(j);

    /* side requests (a title, tags...): other prefixes, long enough to be cached themselves */
    int on_w1 = 0;
    for (int k = 0; k < SIDE_REQUESTS; k++) {
        b = seeded_body(40, 60 + k, ",\"max_tokens\":4,\"temperature\":0,\"ignore_eos\":true");
        j = post_on(s, b, &w);
        free(b);
        json_decref(j);
        on_w1 += w == w1;
    }
    /* no prefix in common: ties go to the least recently used worker, so both take some */
    ck_assert_msg(on_w1 > 0 && on_w1 < SIDE_REQUESTS, "%d of %d side requests on worker %d", on_w1, SIDE_REQUESTS,
                  w1);

    /* the next turn: the conversation so far plus new tokens */
    make_ids(conv + CONV_LEN, 12, 70);
    b = ids_body(conv, CONV_LEN + 12, ",\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true");
    double q0 = metric(s, "vllm:prefix_cache_queries_total"), h0 = metric(s, "vllm:prefix_cache_hits_total");
    j = post_on(s, b, &w);
    free(b);
    double q1 = metric(s, "vllm:prefix_cache_queries_total"), h1 = metric(s, "vllm:prefix_cache_hits_total");
    long cached = cached_tokens(j), prompt = (long)IJ(json_object_get(j, "usage"), "prompt_tokens");
    json_decref(j);
    ck_assert_msg(w == w1, "the second turn went to worker %d, its prefix is on worker %d", w, w1);
    ck_assert_int_eq(prompt, CONV_LEN + 12);
    /* the whole first turn was saved (allow rounding to blocks), and the last token is computed */
    ck_assert_msg(cached >= CONV_LEN / 2 && cached < prompt, "cached_tokens %ld of %ld", cached, prompt);
    ck_assert_msg(q1 - q0 == (double)prompt, "prefix_cache_queries_total grew by %.0f, prompt %ld", q1 - q0, prompt);
    ck_assert_msg(h1 - h0 == (double)cached, "prefix_cache_hits_total grew by %.0f, cached_tokens %ld", h1 - h0,
                  cached);
    bn_srv_stop(s, 10000);
}
END_TEST

/* ---- 3. priority under saturation --------------------------------------------------------- */

/* One batch request running on the only free slot and two more queued behind it. */
static void batch_backlog(bn_srv *s, bn_sse *b1, bn_sse *b2, bn_sse *b3)
{
    sse_open_ok(b1, s->port, "/v1/completions", NULL, BATCH_LONG);
    read_running(b1, 1, NULL, 0);
    sse_send(b2, s->port, "/v1/completions", NULL, BATCH_LONG);
    ck_assert_msg(bn_srv_wait_queue_length(s->port, 1, 10000) == 1,
                  "the second batch request did not queue (did it take the reserved slot?)");
    sse_send(b3, s->port, "/v1/completions", NULL, BATCH_LONG);
    ck_assert_int_eq(bn_srv_wait_queue_length(s->port, 2, 10000), 2);
}

/* A slot has freed: the older waiting batch request (b2) runs, the newer (b3) still waits.
 * Closes both. */
static void oldest_batch_runs_next(bn_srv *s, bn_sse *b2, bn_sse *b3)
{
    sse_head(b2, BN_HTTP_MS);
    read_running(b2, 1, NULL, 0);
    ck_assert_int_eq(bn_srv_wait_queue_length(s->port, 1, 10000), 1);
    bn_sse_close(b2);
    bn_sse_close(b3);
}

/* One slot: a batch request runs, two more batch requests wait, then an interactive one
 * arrives. When the slot frees, the interactive one runs first: it has its first token while
 * both batch requests queued before it are still waiting. */
START_TEST(priority_queue_order)
{
    bn_srv *s = bn_srv_start_ok("slots = 1\nreserved_slots = 0\nping_interval = 60s\n");
    bn_sse b1, b2, b3, in;
    batch_backlog(s, &b1, &b2, &b3);
    sse_send(&in, s->port, "/v1/completions", NULL,
             "{\"prompt\":\"interactive\",\"max_tokens\":3000,\"ignore_eos\":true,\"stream\":true,\"priority\":0}");
    ck_assert_int_eq(bn_srv_wait_queue_length(s->port, 3, 10000), 3);

    bn_sse_close(&b1);   /* the slot frees */
    sse_head(&in, BN_HTTP_MS);
    read_running(&in, 1, NULL, 0);
    ck_assert_msg(bn_srv_queue_length(s->port) == 2, "the interactive request has its first token, yet %d of the 2 batch "
                  "requests queued before it are still waiting", bn_srv_queue_length(s->port));

    bn_sse_close(&in);   /* then the batch requests, oldest first */
    oldest_batch_runs_next(s, &b2, &b3);
    bn_srv_stop(s, 10000);
}
END_TEST

/* Two slots, one reserved: batch traffic takes one slot and queues, so an interactive request
 * arriving later starts at once and finishes while the batch requests queued before it wait. */
START_TEST(priority_reserved_slot)
{
    bn_srv *s = bn_srv_start_ok("slots = 2\nreserved_slots = 1\nping_interval = 60s\n");
    bn_sse b1, b2, b3, in;
    batch_backlog(s, &b1, &b2, &b3);

    sse_open_ok(&in, s->port, "/v1/completions", NULL,
                "{\"prompt\":\"interactive\",\"max_tokens\":16,\"ignore_eos\":true," STREAM_USAGE "}");
    ck_assert_msg(bn_srv_queue_length(s->port) == 2, "the interactive request has its first token, yet only %d batch "
                  "requests wait", bn_srv_queue_length(s->port));
    bn_stream_result r;
    ck_assert_int_eq(bn_sse_collect(&in, &r, 60000), 0);
    bn_sse_close(&in);
    ck_assert(r.done && r.n_errors == 0);
    ck_assert_int_eq(stream_completion_tokens(&r), 16);
    bn_stream_result_free(&r);
    ck_assert_int_eq(bn_srv_queue_length(s->port), 2);   /* the reserved slot stays reserved */

    bn_sse_close(&b1);   /* a batch slot frees: the oldest waiting batch request takes it */
    oldest_batch_runs_next(s, &b2, &b3);
    bn_srv_stop(s, 10000);
}
END_TEST

/* ---- 4. per-key limits: 429 with Retry-After ---------------------------------------------- */

#define KEY_HDR(k) "Authorization: Bearer " k "\r\n"
#define SHORT_BODY "{\"prompt\":\"hello\",\"max_tokens\":4,\"ignore_eos\":true}"

static int post_key(bn_srv *s, const char *hdr, const char *body, bn_http_resp *r)
{
    ck_assert_int_eq(bn_http_req(s->port, "POST", "/v1/completions", hdr, body, r, BN_HTTP_MS), 0);
    return r->status;
}

/* A 429: Retry-After in whole seconds within [1, max_s], the OpenAI rate-limit body naming why. */
static void assert_429(bn_http_resp *r, const char *why, int max_s, const char *what)
{
    ck_assert_msg(r->status == 429, "%s: status %d, want 429 (%.200s)", what, r->status, r->body ? r->body : "");
    const char *ra = bn_http_header(r, "Retry-After");
    ck_assert_msg(ra && *ra && strspn(ra, "0123456789") == strlen(ra), "%s: Retry-After '%s'", what,
                  ra ? ra : "(none)");
    long sec = strtol(ra, NULL, 10);
    ck_assert_msg(sec >= 1 && sec <= max_s, "%s: Retry-After %ld, want 1..%d", what, sec, max_s);
    json_t *j = bn_http_json(r), *e = json_object_get(j, "error");
    ck_assert_msg(json_is_object(e), "%s: no error object: %s", what, r->body);
    ck_assert_str_eq(SJ(e, "type"), "rate_limit_error");
    ck_assert_str_eq(SJ(e, "code"), "rate_limit_exceeded");
    ck_assert_msg(SJ(e, "message") && strstr(SJ(e, "message"), why), "%s: message '%s' lacks '%s'", what,
                  SJ(e, "message"), why);
    json_decref(j);
}

START_TEST(limits_429)
{
    bn_srv *s = bn_srv_start_ok("slots = 2\n"
                      "api_keys = sk-solo:solo, sk-meter:metered\napi_keys = sk-free\n"
                      "key_class = solo max_concurrent=1\n"
                      "key_class = metered tokens_per_minute=40\n");
    bn_http_resp r;
    /* max_concurrent = 1: one running stream, and the key's next request is refused */
    bn_sse run;
    sse_open_ok(&run, s->port, "/v1/completions", KEY_HDR("sk-solo"),
                "{\"prompt\":\"a\",\"max_tokens\":3000,\"ignore_eos\":true,\"stream\":true}");
    read_running(&run, 1, NULL, 0);
    post_key(s, KEY_HDR("sk-solo"), SHORT_BODY, &r);
    assert_429(&r, "max_concurrent", 3600, "second request of a max_concurrent=1 key");
    bn_http_resp_free(&r);
    post_key(s, KEY_HDR("sk-solo"), "{\"prompt\":\"hello\",\"max_tokens\":4,\"stream\":true}", &r);
    assert_429(&r, "max_concurrent", 3600, "a stream over max_concurrent (refused before its head)");
    bn_http_resp_free(&r);
    ck_assert_int_eq(post_key(s, KEY_HDR("sk-free"), SHORT_BODY, &r), 200);   /* other keys go on */
    bn_http_resp_free(&r);
    /* once the running one ends, the key may send again */
    bn_sse_close(&run);
    int st = 0;
    for (int i = 0; i < 150 && st != 200; i++) {
        if (i) sleep_ms(100);
        st = post_key(s, KEY_HDR("sk-solo"), SHORT_BODY, &r);
        ck_assert_msg(st == 200 || st == 429, "status %d", st);
        bn_http_resp_free(&r);
    }
    ck_assert_msg(st == 200, "the key stayed refused after its only request ended");

    /* tokens_per_minute = 40: 10 prompt + 40 completion tokens leave the bucket 10 below zero */
    char *b = seeded_body(10, 80, ",\"max_tokens\":40,\"ignore_eos\":true");
    ck_assert_int_eq(post_key(s, KEY_HDR("sk-meter"), b, &r), 200);
    bn_http_resp_free(&r);
    post_key(s, KEY_HDR("sk-meter"), b, &r);
    free(b);
    assert_429(&r, "tokens_per_minute", 60, "over tokens_per_minute");   /* 10 tokens at 40/min: 15 s */
    bn_http_resp_free(&r);
    ck_assert_int_eq(post_key(s, KEY_HDR("sk-free"), SHORT_BODY, &r), 200);
    bn_http_resp_free(&r);
    ck_assert_int_eq(post_key(s, KEY_HDR("sk-nobody"), SHORT_BODY, &r), 401);   /* unknown keys: as before */
    bn_http_resp_free(&r);
    ck_assert_msg(bn_srv_metric(s->port, "bitnetd_requests_rejected_total", "rate_limited") >= 3,
                  "bitnetd_requests_rejected_total{reason=\"rate_limited\"} below the 3 refusals");
    bn_srv_stop(s, 10000);
}
END_TEST

/* ---- 5. a worker killed with every slot full ---------------------------------------------- */

#define KILL_TOKENS 600   /* long enough to be running when the worker dies, short enough that the
                           * survivors finish well inside the collect bound under ASan */

START_TEST(kill_worker_full_slots)
{
    bn_srv *s = bn_srv_start_ok("workers = 2\nslots = 2\n");
    ck_assert_int_eq(bn_srv_wait_workers(s->port, "idle", 30000), 0);
    char body[256];
    snprintf(body, sizeof body, "{\"prompt\":\"a\",\"max_tokens\":%d,\"ignore_eos\":true," STREAM_USAGE "}",
             KILL_TOKENS);
    bn_sse st[4];
    for (int i = 0; i < 4; i++) {   /* the same prompt everywhere: the fewest busy slots decide */
        sse_open_ok(&st[i], s->port, "/v1/completions", NULL, body);
        read_running(&st[i], 1, NULL, 0);
    }
    ck_assert_int_eq(bn_srv_queue_length(s->port), 0);
    long busy0, total0, busy1, total1;
    worker_slots(s, 0, &busy0, &total0);
    worker_slots(s, 1, &busy1, &total1);
    ck_assert_msg(busy0 == 2 && busy1 == 2 && total0 == 2 && total1 == 2, "slots busy/total %ld/%ld and %ld/%ld",
                  busy0, total0, busy1, total1);
    pid_t pids[2];
    ck_assert_int_eq(bn_srv_worker_pids(s->port, pids, 2, NULL), 2);
    ck_assert_int_eq(kill(pids[0], SIGKILL), 0);

    int failed = 0, finished = 0;
    for (int i = 0; i < 4; i++) {
        bn_stream_result r;
        ck_assert_int_eq(bn_sse_collect(&st[i], &r, 120000), 0);
        bn_sse_close(&st[i]);
        ck_assert_msg(r.done, "stream %d does not end with [DONE]", i);
        json_t *last = json_array_get(r.events, json_array_size(r.events) - 1);
        if (r.n_errors) {
            json_t *e = json_object_get(last, "error");
            ck_assert_msg(json_is_object(e) && SJ(e, "message") && SJ(e, "type"), "stream %d: the error is not "
                          "the last event", i);
            failed++;
        } else {
            ck_assert_str_eq(r.finish, "length");
            ck_assert_int_eq(stream_completion_tokens(&r), KILL_TOKENS);
            finished++;
        }
        bn_stream_result_free(&r);
    }
    ck_assert_msg(failed == 2 && finished == 2, "%d streams failed and %d finished: the killed worker held 2",
                  failed, finished);

    /* the service recovers: a new worker 0, and requests on every slot again */
    ck_assert_int_eq(bn_srv_wait_respawn(s->port, pids[0]), 1);
    ck_assert(!bn_pid_alive(pids[0]));
    for (int i = 0; i < 4; i++)
        sse_open_ok(&st[i], s->port, "/v1/completions", NULL,
                    "{\"prompt\":\"b\",\"max_tokens\":8,\"ignore_eos\":true," STREAM_USAGE "}");
    for (int i = 0; i < 4; i++) {
        bn_stream_result r;
        ck_assert_int_eq(bn_sse_collect(&st[i], &r, 60000), 0);
        bn_sse_close(&st[i]);
        ck_assert_msg(r.done && r.n_errors == 0, "after the respawn, stream %d failed", i);
        ck_assert_int_eq(stream_completion_tokens(&r), 8);
        bn_stream_result_free(&r);
    }
    bn_srv_stop(s, 10000);
}
END_TEST

#define ADD(s, t) BN_SRV_ADD_TEST(s, t, 180)   /* one case per test */

static Suite *suite(void)
{
    Suite *s = suite_create("server_slots");
    ADD(s, same_results_with_and_without_slots);
    ADD(s, affinity_after_side_requests);
    ADD(s, priority_queue_order);
    ADD(s, priority_reserved_slot);
    ADD(s, limits_429);
    ADD(s, kill_worker_full_slots);
    return s;
}

int main(void)
{
    return bn_srv_test_main("test_server_slots", suite());
}
