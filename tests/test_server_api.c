/* bitnetd end to end, the API (docs: /work/notes/http-contract.md): every route streaming and
 * not, the seeds' curl examples, API keys, and a table of malformed requests, each followed by a
 * health check. One server (workers = 1, n_ctx 512 on the default synthetic model) serves the
 * whole "api" case; api_keys get their own. */
#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server_harness.h"

#define N_CTX 512
#define MAX_BODY (64 * 1024)

static bn_srv *srv;

static void api_setup(void)
{
    srv = bn_srv_start("n_ctx = 512\nmax_body_size = 64k\nmax_header_size = 16k\n"
                       "model_name = test-model\ndefault_max_tokens = 20\nmax_max_tokens = 1000\n"
                       "queue_size = 7\n",
                       NULL);
    if (!srv) ck_abort_msg("bitnetd did not start (see the log above)");
}

static void api_teardown(void)
{
    bn_srv_stop(srv, 10000);
    srv = NULL;
}

static void teardown_all(void)
{
    bn_srv_stop_all();
}

/* ---- small helpers ------------------------------------------------------------------- */

#define SJ(j, k) json_string_value(json_object_get((j), (k)))
#define IJ(j, k) json_integer_value(json_object_get((j), (k)))

/* POST body; returns the parsed response (asserting the status). */
static json_t *post_ok(const char *path, const char *body)
{
    json_t *j;
    int st = bn_http_post_json(srv->port, path, body, &j);
    if (st != 200) bn_srv_dump_log(srv);
    ck_assert_msg(st == 200, "POST %s %s: status %d", path, body, st);
    ck_assert_msg(j != NULL, "POST %s: body is not JSON", path);
    return j;
}

static void assert_health(int port)
{
    json_t *j;
    int st = bn_http_get_json(port, "/health", &j);
    ck_assert_msg(st == 200, "GET /health: %d", st);
    ck_assert_str_eq(SJ(j, "status"), "healthy");
    json_decref(j);
}

/* The OpenAI error body: {"error": {"message": str, "type": str, "param": str|null,
 * "code": str|null}}; type / code checked when non-NULL. */
static void assert_openai_error(const char *body, const char *type, const char *code,
                                const char *what)
{
    json_error_t je;
    json_t *j = json_loads(body ? body : "", 0, &je);
    ck_assert_msg(j != NULL, "%s: error body is not JSON: '%.200s'", what, body ? body : "");
    json_t *e = json_object_get(j, "error");
    ck_assert_msg(json_is_object(e), "%s: no error object: %.200s", what, body);
    ck_assert_msg(json_is_string(json_object_get(e, "message")) && *SJ(e, "message"),
                  "%s: error.message", what);
    ck_assert_msg(json_is_string(json_object_get(e, "type")), "%s: error.type", what);
    json_t *p = json_object_get(e, "param"), *c = json_object_get(e, "code");
    ck_assert_msg(p && (json_is_string(p) || json_is_null(p)), "%s: error.param", what);
    ck_assert_msg(c && (json_is_string(c) || json_is_null(c)), "%s: error.code", what);
    if (type) ck_assert_msg(strcmp(SJ(e, "type"), type) == 0, "%s: type %s, want %s", what,
                            SJ(e, "type"), type);
    if (code)
        ck_assert_msg(json_is_string(c) && strcmp(json_string_value(c), code) == 0,
                      "%s: code %s, want %s", what,
                      json_is_string(c) ? json_string_value(c) : "null", code);
    json_decref(j);
}

static void assert_usage(json_t *u, long completion)
{
    ck_assert_msg(json_is_object(u), "usage object");
    long p = IJ(u, "prompt_tokens"), c = IJ(u, "completion_tokens"), t = IJ(u, "total_tokens");
    ck_assert_int_gt(p, 0);
    if (completion >= 0) ck_assert_int_eq(c, completion);
    ck_assert_int_eq(t, p + c);
}

/* ---- plain routes ---------------------------------------------------------------------- */

START_TEST(health_fields)
{
    json_t *j;
    ck_assert_int_eq(bn_http_get_json(srv->port, "/health", &j), 200);
    ck_assert_str_eq(SJ(j, "status"), "healthy");
    ck_assert(json_is_true(json_object_get(j, "native_kernel")));
    ck_assert_str_eq(SJ(j, "model"), "test-model");
    ck_assert(json_is_true(json_object_get(j, "ready")));
    json_t *w = json_object_get(j, "workers");
    ck_assert_int_eq(IJ(w, "total"), 1);
    ck_assert(json_is_integer(json_object_get(w, "idle")));
    ck_assert(json_is_integer(json_object_get(w, "busy")));
    ck_assert(json_is_integer(json_object_get(w, "starting")));
    ck_assert_int_le(IJ(w, "idle") + IJ(w, "busy") + IJ(w, "starting"), 1);
    json_t *q = json_object_get(j, "queue");
    ck_assert_int_eq(IJ(q, "length"), 0);
    ck_assert_int_eq(IJ(q, "capacity"), 7);   /* queue_size */
    json_decref(j);
}
END_TEST

START_TEST(ready_ok)
{
    json_t *j;
    ck_assert_int_eq(bn_http_get_json(srv->port, "/ready", &j), 200);
    ck_assert_str_eq(SJ(j, "status"), "ready");
    json_decref(j);
}
END_TEST

START_TEST(models_shape)
{
    json_t *j;
    ck_assert_int_eq(bn_http_get_json(srv->port, "/v1/models", &j), 200);
    ck_assert_str_eq(SJ(j, "object"), "list");
    json_t *d = json_object_get(j, "data");
    ck_assert_int_eq(json_array_size(d), 1);
    json_t *m = json_array_get(d, 0);
    ck_assert_str_eq(SJ(m, "id"), "test-model");
    ck_assert_str_eq(SJ(m, "object"), "model");
    ck_assert(json_is_integer(json_object_get(m, "created")));
    ck_assert_int_gt(IJ(m, "created"), 1600000000);
    ck_assert_str_eq(SJ(m, "owned_by"), "bitnetd");
    ck_assert_int_eq(IJ(m, "max_model_len"), N_CTX);
    json_decref(j);
}
END_TEST

START_TEST(chat_nonstream)
{
    bn_http_resp r;
    ck_assert_int_eq(bn_http_req(srv->port, "POST", "/v1/chat/completions", NULL,
                                 "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}],"
                                 "\"max_tokens\":20,\"ignore_eos\":true,\"temperature\":0}",
                                 &r, BN_HTTP_MS),
                     0);
    ck_assert_int_eq(r.status, 200);
    const char *ct = bn_http_header(&r, "Content-Type");
    ck_assert_msg(ct && strstr(ct, "application/json"), "Content-Type %s", ct ? ct : "(none)");
    json_t *j = bn_http_json(&r);
    bn_http_resp_free(&r);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(SJ(j, "object"), "chat.completion");
    ck_assert_msg(strncmp(SJ(j, "id"), "chatcmpl-", 9) == 0, "id %s", SJ(j, "id"));
    ck_assert_int_gt(IJ(j, "created"), 1600000000);
    ck_assert(json_is_string(json_object_get(j, "model")));
    json_t *ch = json_object_get(j, "choices");
    ck_assert_int_eq(json_array_size(ch), 1);
    json_t *c0 = json_array_get(ch, 0);
    ck_assert_int_eq(IJ(c0, "index"), 0);
    json_t *msg = json_object_get(c0, "message");
    ck_assert_str_eq(SJ(msg, "role"), "assistant");
    ck_assert(json_is_string(json_object_get(msg, "content")));
    ck_assert_str_eq(SJ(c0, "finish_reason"), "length");
    assert_usage(json_object_get(j, "usage"), 20);
    json_decref(j);
}
END_TEST

START_TEST(completion_nonstream)
{
    json_t *j = post_ok("/v1/completions", "{\"prompt\":\"Once upon a time\",\"max_tokens\":16,"
                                           "\"ignore_eos\":true,\"seed\":7}");
    ck_assert_str_eq(SJ(j, "object"), "text_completion");
    ck_assert_msg(strncmp(SJ(j, "id"), "cmpl-", 5) == 0, "id %s", SJ(j, "id"));
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    ck_assert_int_eq(IJ(c0, "index"), 0);
    ck_assert(json_is_string(json_object_get(c0, "text")));
    ck_assert_str_eq(SJ(c0, "finish_reason"), "length");
    assert_usage(json_object_get(j, "usage"), 16);
    json_decref(j);
}
END_TEST

/* Same seed, same prompt, greedy or not: the same text (the sampler is seeded per request). */
START_TEST(completion_seed_repeatable)
{
    const char *b = "{\"prompt\":\"abc\",\"max_tokens\":12,\"ignore_eos\":true,\"seed\":42}";
    json_t *a = post_ok("/v1/completions", b), *c = post_ok("/v1/completions", b);
    const char *ta = SJ(json_array_get(json_object_get(a, "choices"), 0), "text");
    const char *tc = SJ(json_array_get(json_object_get(c, "choices"), 0), "text");
    ck_assert_str_eq(ta, tc);
    json_decref(a);
    json_decref(c);
}
END_TEST

START_TEST(prompt_token_ids)
{
    json_t *j = post_ok("/v1/completions",
                        "{\"prompt\":[72,101,108,108,111,32,119,111,114,108,100],\"max_tokens\":5,"
                        "\"ignore_eos\":true}");
    json_t *u = json_object_get(j, "usage");
    ck_assert_int_eq(IJ(u, "prompt_tokens"), 11);   /* ids are used as given: no BOS added */
    ck_assert_int_eq(IJ(u, "completion_tokens"), 5);
    json_decref(j);
}
END_TEST

START_TEST(tokenize_round_trip)
{
    json_t *t =
        post_ok("/tokenize", "{\"prompt\":\"Hello world, 123!\",\"add_special_tokens\":false}");
    json_t *toks = json_object_get(t, "tokens");
    ck_assert(json_is_array(toks));
    ck_assert_int_gt(json_array_size(toks), 0);
    ck_assert_int_eq(IJ(t, "count"), (long)json_array_size(toks));
    ck_assert_int_eq(IJ(t, "max_model_len"), N_CTX);
    json_t *req = json_pack("{sO}", "tokens", toks);
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    json_t *d = post_ok("/detokenize", body);
    free(body);
    ck_assert_str_eq(SJ(d, "prompt"), "Hello world, 123!");
    json_decref(d);

    /* add_special_tokens defaults to true: never fewer tokens than without */
    json_t *t2 = post_ok("/tokenize", "{\"prompt\":\"Hello world, 123!\"}");
    ck_assert_int_ge(IJ(t2, "count"), IJ(t, "count"));
    json_decref(t2);
    json_decref(t);

    json_t *m = post_ok("/tokenize", "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}");
    ck_assert_int_gt(IJ(m, "count"), 1);   /* the chat template wraps the one-token "Hi" */
    json_decref(m);
}
END_TEST

/* Accepted request variants: max_completion_tokens, the default max_tokens, unknown fields. */
START_TEST(request_variants)
{
    static const struct { const char *path, *body; long completion;
    } ok[] = {
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_completion_tokens\":9,"
         "\"ignore_eos\":true}",
         9},
        {"/v1/completions", "{\"prompt\":\"a\",\"ignore_eos\":true}", 20}, /* default_max_tokens */
        {"/v1/completions",
         "{\"prompt\":\"a\",\"max_tokens\":3,\"ignore_eos\":true,\"logit_bias\":{},\"user\":\"u\","
         "\"frobnicate\":{\"deep\":[1,2,{\"x\":null}]},\"model\":\"anything\"}",
         3},
        {"/v1/completions",
         "{\"prompt\":\"a\",\"max_tokens\":4,\"ignore_eos\":true,\"temperature\":0.7,\"top_p\":0.9,"
         "\"top_k\":20,\"min_p\":0.05,\"repetition_penalty\":1.1,\"presence_penalty\":0.5,"
         "\"frequency_penalty\":0.5,\"seed\":3,\"stop\":[\"\\u0001\"],\"n\":1}",
         4},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        json_t *j = post_ok(ok[i].path, ok[i].body);
        ck_assert_msg(IJ(json_object_get(j, "usage"), "completion_tokens") == ok[i].completion,
                      "%s: completion_tokens %lld, want %ld", ok[i].body,
                      (long long)IJ(json_object_get(j, "usage"), "completion_tokens"),
                      ok[i].completion);
        json_decref(j);
    }
}
END_TEST

/* A stop string taken from the greedy output ends the same greedy generation right before it. */
START_TEST(stop_string)
{
    const char *b0 = "{\"prompt\":\"The\",\"max_tokens\":40,\"ignore_eos\":true,\"temperature\":0}";
    json_t *a = post_ok("/v1/completions", b0);
    const char *full = SJ(json_array_get(json_object_get(a, "choices"), 0), "text");
    ck_assert_ptr_nonnull(full);
    size_t len = strlen(full);
    /* a 2-byte ASCII piece from the middle whose first occurrence is not at the start */
    size_t at = 0;
    for (size_t k = len / 3; k + 2 <= len && !at; k++) {
        unsigned char c0 = (unsigned char)full[k], c1 = (unsigned char)full[k + 1];
        if (c0 < 0x20 || c0 > 0x7e || c1 < 0x20 || c1 > 0x7e || c0 == '"' || c0 == '\\' ||
            c1 == '"' || c1 == '\\')
            continue;
        char piece[3] = {full[k], full[k + 1], 0};
        const char *first = strstr(full, piece);
        if (first && first > full) at = (size_t)(first - full);
    }
    if (!at) {   /* nothing usable in this model's output: say so rather than pass silently */
        fprintf(stderr, "stop_string: no ASCII piece in '%s'; not checked\n", full);
        json_decref(a);
        return;
    }
    char piece[3] = {full[at], full[at + 1], 0}, body[256];
    snprintf(body, sizeof body, "{\"prompt\":\"The\",\"max_tokens\":40,\"ignore_eos\":true,"
                                "\"temperature\":0,\"stop\":\"%s\"}", piece);
    json_t *b = post_ok("/v1/completions", body);
    json_t *c0 = json_array_get(json_object_get(b, "choices"), 0);
    ck_assert_str_eq(SJ(c0, "finish_reason"), "stop");
    ck_assert_msg(strlen(SJ(c0, "text")) == at && strncmp(SJ(c0, "text"), full, at) == 0,
                  "stop '%s': got '%s', want the first %zu bytes of '%s'", piece, SJ(c0, "text"),
                  at, full);
    json_decref(a);
    json_decref(b);
}
END_TEST

/* The start-up lines of the contract, in the error log. */
START_TEST(startup_log)
{
    char want[128];
    snprintf(want, sizeof want, "listening on 127.0.0.1:%d", srv->port);
    ck_assert_msg(bn_srv_log_has(srv, want), "no '%s' in the log", want);
    pid_t pid;
    ck_assert_int_eq(bn_srv_worker_pids(srv->port, &pid, 1, NULL), 1);
    snprintf(want, sizeof want, "worker 0 ready (pid %ld)", (long)pid);
    ck_assert_msg(bn_srv_log_has(srv, want), "no '%s' in the log", want);
    ck_assert_msg(bn_srv_log_has(srv, "worker 0: cpus"), "no placement line for worker 0");
}
END_TEST

/* Every event of a stream parsed: the shape rules of the contract for one kind. */
static void assert_stream_shape(const bn_stream_result *r, int chat, int usage, long max_tokens)
{
    ck_assert_int_eq(r->status, 200);
    ck_assert_msg(r->done, "stream must end with data: [DONE]");
    ck_assert_int_eq(r->n_errors, 0);
    size_t n = json_array_size(r->events);
    ck_assert_int_ge(n, 2);
    const char *id = SJ(json_array_get(r->events, 0), "id");
    ck_assert_ptr_nonnull(id);
    ck_assert_msg(strncmp(id, chat ? "chatcmpl-" : "cmpl-", chat ? 9 : 5) == 0, "id %s", id);
    size_t last_content = 0, n_content = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(r->events, i);
        ck_assert_msg(SJ(e, "id") && strcmp(SJ(e, "id"), id) == 0, "event %zu: another id", i);
        ck_assert_str_eq(SJ(e, "object"), chat ? "chat.completion.chunk" : "text_completion");
        json_t *ch = json_object_get(e, "choices");
        if (json_array_size(ch) == 0) {
            ck_assert_msg(usage && i == n - 1, "event %zu: empty choices outside the usage chunk",
                          i);
            continue;
        }
        json_t *u = json_object_get(e, "usage");
        ck_assert_msg(!u || json_is_null(u), "event %zu: usage outside the usage chunk", i);
        last_content = i;
        n_content++;
        json_t *c0 = json_array_get(ch, 0);
        if (chat) {
            json_t *role = json_object_get(json_object_get(c0, "delta"), "role");
            if (i == 0) ck_assert_msg(json_is_string(role) && !strcmp(json_string_value(role),
                                                                       "assistant"),
                                      "first chat chunk: delta.role assistant");
            else ck_assert_msg(!role || json_is_null(role), "event %zu: role again", i);
        }
    }
    ck_assert_int_ge(n_content, 1);
    for (size_t i = 0; i <= last_content; i++) {
        json_t *c0 = json_array_get(json_object_get(json_array_get(r->events, i), "choices"), 0);
        json_t *fr = json_object_get(c0, "finish_reason");
        if (i < last_content)
            ck_assert_msg(!fr || json_is_null(fr), "event %zu: finish_reason before the end", i);
        else
            ck_assert_msg(json_is_string(fr) && !strcmp(json_string_value(fr), "length"),
                          "last content chunk: finish_reason length");
    }
    if (usage) {
        json_t *last = json_array_get(r->events, n - 1);
        ck_assert_int_eq(json_array_size(json_object_get(last, "choices")), 0);
        assert_usage(json_object_get(last, "usage"), max_tokens);
    }
}

static void stream_case(const char *path, const char *body, int chat, int usage, long max_tokens)
{
    bn_sse s;
    ck_assert_int_eq(bn_sse_open(&s, srv->port, path, NULL, body, BN_HTTP_MS), 0);
    ck_assert_int_eq(s.head.status, 200);
    const char *ct = bn_http_header(&s.head, "Content-Type");
    const char *cc = bn_http_header(&s.head, "Cache-Control");
    const char *xa = bn_http_header(&s.head, "X-Accel-Buffering");
    ck_assert_msg(ct && strncmp(ct, "text/event-stream", 17) == 0, "Content-Type %s", ct);
    ck_assert_msg(cc && strstr(cc, "no-cache"), "Cache-Control %s", cc ? cc : "(none)");
    ck_assert_msg(xa && strcmp(xa, "no") == 0, "X-Accel-Buffering %s", xa ? xa : "(none)");
    ck_assert_msg(s.head.chunked, "streams are chunked");
    bn_stream_result r;
    int rc = bn_sse_collect(&s, &r, 60000);
    bn_sse_close(&s);
    ck_assert_int_eq(rc, 0);
    assert_stream_shape(&r, chat, usage, max_tokens);
    bn_stream_result_free(&r);
}

START_TEST(chat_stream_usage)
{
    stream_case("/v1/chat/completions",
                "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}],\"max_tokens\":30,"
                "\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                1, 1, 30);
}
END_TEST

START_TEST(chat_stream_plain)
{
    stream_case("/v1/chat/completions",
                "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi\"}]}],"
                "\"max_tokens\":12,\"ignore_eos\":true,\"stream\":true}",
                1, 0, 12);
}
END_TEST

START_TEST(completion_stream_usage)
{
    stream_case("/v1/completions",
                "{\"prompt\":\"The quick brown fox\",\"max_tokens\":25,\"ignore_eos\":true,"
                "\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                0, 1, 25);
}
END_TEST

/* Tokens are sent as they are made: when the first chunk arrives the worker is still generating,
 * and the chunks do not all arrive in one read. */
START_TEST(stream_is_incremental)
{
    bn_sse s;
    ck_assert_int_eq(bn_sse_open(&s, srv->port, "/v1/completions", NULL,
                                 "{\"prompt\":\"a\",\"max_tokens\":450,\"ignore_eos\":true,"
                                 "\"stream\":true}",
                                 BN_HTTP_MS),
                     0);
    ck_assert_int_eq(s.head.status, 200);
    bn_sse_event ev;
    ck_assert_int_eq(bn_sse_next(&s, &ev, BN_HTTP_MS), 1);
    ck_assert_ptr_nonnull(ev.data);
    bn_sse_event_free(&ev);
    pid_t pid;
    char st[1][16];
    ck_assert_int_eq(bn_srv_worker_pids(srv->port, &pid, 1, st), 1);
    ck_assert_msg(strcmp(st[0], "busy") == 0, "worker %s after the first chunk: not streamed",
                  st[0]);
    bn_stream_result r;
    ck_assert_int_eq(bn_sse_collect(&s, &r, 60000), 0);
    bn_sse_close(&s);
    ck_assert(r.done);
    int batches = 1;   /* events that arrived after the one before them */
    for (int i = 1; i < r.n_events && r.t; i++) batches += r.t[i] > r.t[i - 1];
    ck_assert_msg(batches >= 10, "%d events arrived in only %d reads", r.n_events, batches);
    bn_stream_result_free(&r);
}
END_TEST

START_TEST(metrics_families_and_counters)
{
    static const char *const fam[] = {
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total", "vllm:request_success_total",
        "vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
        "vllm:inter_token_latency_seconds", "vllm:request_queue_time_seconds",
    };
    bn_http_resp r;
    ck_assert_int_eq(bn_http_req(srv->port, "GET", "/metrics", NULL, NULL, &r, BN_HTTP_MS), 0);
    ck_assert_int_eq(r.status, 200);
    const char *ct = bn_http_header(&r, "Content-Type");
    ck_assert_msg(ct && strncmp(ct, "text/plain", 10) == 0, "Content-Type %s", ct ? ct : "(none)");
    for (size_t i = 0; i < sizeof fam / sizeof fam[0]; i++) {
        char want[128];
        snprintf(want, sizeof want, "# TYPE %s ", fam[i]);
        ck_assert_msg(strstr(r.body, want), "/metrics lacks the family %s", fam[i]);
    }
    ck_assert_msg(strstr(r.body, "model_name=\"test-model\""), "samples carry model_name");
    double g0 = bn_metric_in(r.body, "vllm:generation_tokens_total", NULL);
    double p0 = bn_metric_in(r.body, "vllm:prompt_tokens_total", NULL);
    double s0 = bn_metric_in(r.body, "vllm:request_success_total", NULL);
    double e0 = bn_metric_in(r.body, "vllm:e2e_request_latency_seconds_count", NULL);
    bn_http_resp_free(&r);
    ck_assert(g0 >= 0 && p0 >= 0 && s0 >= 0 && e0 >= 0);

    json_t *j =
        post_ok("/v1/completions", "{\"prompt\":\"xyz\",\"max_tokens\":7,\"ignore_eos\":true}");
    long pt = IJ(json_object_get(j, "usage"), "prompt_tokens");
    json_decref(j);
    ck_assert_int_eq(bn_http_req(srv->port, "GET", "/metrics", NULL, NULL, &r, BN_HTTP_MS), 0);
    ck_assert_double_eq(bn_metric_in(r.body, "vllm:generation_tokens_total", NULL), g0 + 7);
    ck_assert_double_eq(bn_metric_in(r.body, "vllm:prompt_tokens_total", NULL), p0 + pt);
    ck_assert_double_eq(bn_metric_in(r.body, "vllm:request_success_total", NULL), s0 + 1);
    ck_assert_double_eq(bn_metric_in(r.body, "vllm:request_success_total",
                                     "finished_reason=\"length\"") >= 1, 1);
    ck_assert_double_eq(bn_metric_in(r.body, "vllm:e2e_request_latency_seconds_count", NULL),
                        e0 + 1);
    bn_http_resp_free(&r);
}
END_TEST

START_TEST(status_workers)
{
    json_t *j;
    ck_assert_int_eq(bn_http_get_json(srv->port, "/v1/status", &j), 200);
    json_t *pl = json_object_get(j, "placement");
    ck_assert(json_is_object(pl));
    ck_assert_int_eq(IJ(pl, "workers"), 1);
    ck_assert_int_eq(IJ(pl, "threads"), 1);
    ck_assert_int_eq(json_array_size(json_object_get(pl, "placement")), 1);
    json_t *ws = json_object_get(j, "workers");
    ck_assert_int_eq(json_array_size(ws), 1);
    json_t *w = json_array_get(ws, 0);
    ck_assert_int_eq(IJ(w, "index"), 0);
    pid_t pid = (pid_t)IJ(w, "pid");
    ck_assert(bn_pid_alive(pid));
    pid_t kids[16];
    int nk = bn_proc_children(srv->pid, kids, 16), found = 0;
    for (int i = 0; i < nk; i++) found |= kids[i] == pid;
    ck_assert_msg(found, "worker %ld is not a child of the master %ld", (long)pid, (long)srv->pid);
    const char *st = SJ(w, "state");
    ck_assert_msg(st && (!strcmp(st, "idle") || !strcmp(st, "busy")), "state %s", st);
    ck_assert(json_is_integer(json_object_get(w, "requests")));
    ck_assert_int_eq(IJ(w, "restarts"), 0);
    ck_assert(json_is_integer(json_object_get(w, "cached_tokens")));
    long req0 = IJ(w, "requests");
    json_t *q = json_object_get(j, "queue");
    ck_assert_int_eq(IJ(q, "length"), 0);
    ck_assert_int_eq(IJ(q, "capacity"), 7);
    ck_assert(json_is_number(json_object_get(j, "uptime_s")));
    ck_assert(json_number_value(json_object_get(j, "uptime_s")) >= 0);
    json_decref(j);

    json_decref(post_ok("/v1/completions", "{\"prompt\":\"q\",\"max_tokens\":2}"));
    ck_assert_int_eq(bn_http_get_json(srv->port, "/v1/status", &j), 200);
    ck_assert_int_eq(IJ(json_array_get(json_object_get(j, "workers"), 0), "requests"), req0 + 1);
    json_decref(j);
}
END_TEST

START_TEST(request_id_echoed)
{
    static const char *const paths[][2] = {
        {"GET", "/health"}, {"GET", "/v1/models"}, {"GET", "/nope"}, {"POST", "/v1/completions"},
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        bn_http_resp r;
        const char *body =
            !strcmp(paths[i][0], "POST") ? "{\"prompt\":\"a\",\"max_tokens\":1}" : NULL;
        ck_assert_int_eq(bn_http_req(srv->port, paths[i][0], paths[i][1],
                                     "X-Request-Id: test-req-42\r\n", body, &r, BN_HTTP_MS), 0);
        const char *id = bn_http_header(&r, "X-Request-Id");
        ck_assert_msg(id && !strcmp(id, "test-req-42"), "%s: X-Request-Id %s", paths[i][1],
                      id ? id : "(none)");
        bn_http_resp_free(&r);
    }
    char first[256] = "";
    for (int k = 0; k < 2; k++) {
        bn_http_resp r;
        ck_assert_int_eq(bn_http_req(srv->port, "GET", "/health", NULL, NULL, &r, BN_HTTP_MS), 0);
        const char *id = bn_http_header(&r, "X-Request-Id");
        ck_assert_msg(id && *id, "a generated X-Request-Id");
        if (k == 0) snprintf(first, sizeof first, "%s", id);
        else ck_assert_str_ne(first, id);
        bn_http_resp_free(&r);
    }
    /* in a stream's head too */
    bn_sse s;
    ck_assert_int_eq(bn_sse_open(&s, srv->port, "/v1/completions", "X-Request-Id: s-1\r\n",
                                 "{\"prompt\":\"a\",\"max_tokens\":2,\"stream\":true}", BN_HTTP_MS),
                     0);
    const char *id = bn_http_header(&s.head, "X-Request-Id");
    ck_assert_msg(id && !strcmp(id, "s-1"), "stream X-Request-Id %s", id ? id : "(none)");
    bn_stream_result r;
    ck_assert_int_eq(bn_sse_collect(&s, &r, BN_HTTP_MS), 0);
    bn_sse_close(&s);
    ck_assert(r.done);
    bn_stream_result_free(&r);
}
END_TEST

/* Two requests on one keep-alive connection. */
START_TEST(keep_alive)
{
    bn_conn c;
    ck_assert_int_eq(bn_conn_open(&c, srv->port), 0);
    for (int i = 0; i < 2; i++) {
        size_t n;
        char *req = bn_http_format("GET", "/health", NULL, NULL, &n);
        ck_assert_int_eq(bn_conn_send(&c, req, n, BN_HTTP_MS), 0);
        free(req);
        bn_http_resp r;
        ck_assert_int_eq(bn_conn_read_resp(&c, &r, BN_HTTP_MS), 0);
        ck_assert_int_eq(r.status, 200);
        bn_http_resp_free(&r);
    }
    bn_conn_close(&c);
}
END_TEST

/* The seeds' curl commands, byte for byte as curl sends them. */
static void curl_like(const char *body)
{
    char req[1024];
    snprintf(
        req, sizeof req,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:%d\r\nUser-Agent: curl/7.88.1\r\n"
        "Accept: */*\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
        srv->port, strlen(body), body);
    bn_http_resp r;
    ck_assert_int_eq(bn_http_raw(srv->port, req, strlen(req), &r, BN_HTTP_MS), 0);
    ck_assert_msg(r.status == 200, "%s: %d %s", body, r.status, r.body);
    json_t *j = bn_http_json(&r);
    bn_http_resp_free(&r);
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    ck_assert(json_is_string(json_object_get(json_object_get(c0, "message"), "content")));
    const char *fr = SJ(c0, "finish_reason");
    ck_assert_msg(fr && (!strcmp(fr, "stop") || !strcmp(fr, "length")), "finish_reason %s", fr);
    long ct = IJ(json_object_get(j, "usage"), "completion_tokens");
    ck_assert_int_ge(ct, 1);
    ck_assert_int_le(ct, 50);
    json_decref(j);
}

START_TEST(seed_curl_examples)
{
    curl_like(
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}], \"max_tokens\": 50}");
    curl_like("{\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": 50}");
    curl_like(
        "{\"model\": \"bitnet\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], "
        "\"max_tokens\": 50}");
}
END_TEST

START_TEST(any_bearer_without_keys)
{
    bn_http_resp r;
    ck_assert_int_eq(bn_http_req(srv->port, "GET", "/v1/models",
                                 "Authorization: Bearer whatever\r\n", NULL, &r, BN_HTTP_MS),
                     0);
    ck_assert_int_eq(r.status, 200);
    bn_http_resp_free(&r);
    ck_assert_int_eq(bn_http_req(srv->port, "POST", "/v1/completions",
                                 "Authorization: Bearer x\r\n",
                                 "{\"prompt\":\"a\",\"max_tokens\":1}", &r, BN_HTTP_MS),
                     0);
    ck_assert_int_eq(r.status, 200);
    bn_http_resp_free(&r);
}
END_TEST

/* ---- malformed requests ---------------------------------------------------------------- */

enum gen { G_NONE, G_DEEP, G_LONG_PROMPT, G_BIG_BODY, G_BIG_HEADER, G_MANY_STOPS };

static const struct bad_req {
    const char *name;
    const char *method, *path;
    const char *body;        /* for POST (G_* may generate it) */
    enum gen gen;
    const char *raw;         /* the whole request, instead */
    int status;              /* expected; 0 = any 4xx or the connection closed */
    const char *type, *code; /* NULL = not checked */
} BAD[] = {
#define CH "/v1/chat/completions"
#define CO "/v1/completions"
#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"
#define IRE "invalid_request_error"
    {"bad JSON", "POST", CH, "{\"messages\": [", G_NONE, NULL, 400, IRE, NULL},
    {"trailing garbage", "POST", CH, "{" MSG "} x", G_NONE, NULL, 400, IRE, NULL},
    {"not an object", "POST", CH, "[1,2]", G_NONE, NULL, 400, IRE, NULL},
    {"empty body", "POST", CO, "", G_NONE, NULL, 400, IRE, NULL},
    {"messages a string", "POST", CH, "{\"messages\":\"hi\"}", G_NONE, NULL, 400, IRE, NULL},
    {"message without role", "POST", CH, "{\"messages\":[{\"content\":\"hi\"}]}", G_NONE, NULL, 400,
     IRE, NULL},
    {"content a number", "POST", CH, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", G_NONE,
     NULL, 400, IRE, NULL},
    {"max_tokens a string", "POST", CH, "{" MSG ",\"max_tokens\":\"ten\"}", G_NONE, NULL, 400, IRE,
     NULL},
    {"temperature a string", "POST", CH, "{" MSG ",\"temperature\":\"hot\"}", G_NONE, NULL, 400,
     IRE, NULL},
    {"stream a string", "POST", CH, "{" MSG ",\"stream\":\"yes\"}", G_NONE, NULL, 400, IRE, NULL},
    {"stop a number", "POST", CO, "{\"prompt\":\"a\",\"stop\":5}", G_NONE, NULL, 400, IRE, NULL},
    {"prompt an object", "POST", CO, "{\"prompt\":{}}", G_NONE, NULL, 400, IRE, NULL},
    {"missing messages", "POST", CH, "{\"max_tokens\":5}", G_NONE, NULL, 400, IRE, NULL},
    {"missing prompt", "POST", CO, "{\"max_tokens\":5}", G_NONE, NULL, 400, IRE, NULL},
    {"n = 2", "POST", CH, "{" MSG ",\"n\":2}", G_NONE, NULL, 400, IRE, NULL},
    {"n = 2 streaming", "POST", CH, "{" MSG ",\"n\":2,\"stream\":true}", G_NONE, NULL, 400, IRE,
     NULL},
    {"max_tokens 0", "POST", CH, "{" MSG ",\"max_tokens\":0}", G_NONE, NULL, 400, IRE, NULL},
    {"max_tokens -1", "POST", CO, "{\"prompt\":\"a\",\"max_tokens\":-1}", G_NONE, NULL, 400, IRE,
     NULL},
    {"max_tokens over max_max_tokens", "POST", CO, "{\"prompt\":\"a\",\"max_tokens\":1001}", G_NONE,
     NULL, 400, IRE, NULL},
    {"temperature -1", "POST", CO, "{\"prompt\":\"a\",\"temperature\":-1}", G_NONE, NULL, 400, IRE,
     NULL},
    {"top_p 2", "POST", CO, "{\"prompt\":\"a\",\"top_p\":2}", G_NONE, NULL, 400, IRE, NULL},
    {"token id out of vocabulary", "POST", CO, "{\"prompt\":[1,999999]}", G_NONE, NULL, 400, IRE,
     NULL},
    {"17 stop strings", "POST", CO, NULL, G_MANY_STOPS, NULL, 400, IRE, NULL},
    {"invalid UTF-8", "POST", CH, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\xff\xfe\"}]}",
     G_NONE, NULL, 400, IRE, NULL},
    {"overlong UTF-8", "POST", CO, "{\"prompt\":\"\xc0\xaf\"}", G_NONE, NULL, 400, IRE, NULL},
    {"deep nesting", "POST", CH, NULL, G_DEEP, NULL, 400, IRE, NULL},
    {"prompt longer than the context", "POST", CO, NULL, G_LONG_PROMPT, NULL, 400, IRE,
     "context_length_exceeded"},
    {"body over max_body_size", "POST", CO, NULL, G_BIG_BODY, NULL, 413, NULL, NULL},
    {"unknown route", "GET", "/v1/nope", NULL, G_NONE, NULL, 404, NULL, NULL},
    {"unknown POST route", "POST", "/v2/chat", "{}", G_NONE, NULL, 404, NULL, NULL},
    {"GET on a POST route", "GET", CH, NULL, G_NONE, NULL, 405, NULL, NULL},
    {"POST on a GET route", "POST", "/health", "{}", G_NONE, NULL, 405, NULL, NULL},
    {"bad Content-Length", NULL, NULL, NULL, G_NONE,
     "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}", 0, NULL, NULL},
    {"negative Content-Length", NULL, NULL, NULL, G_NONE,
     "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}", 0, NULL, NULL},
    {"garbage request line", NULL, NULL, NULL, G_NONE, "HELLO THERE\r\n\r\n", 0, NULL, NULL},
    {"binary request line", NULL, NULL, NULL, G_NONE, "\x16\x03\x01\x02\x00\x01\x00\r\n\r\n", 0,
     NULL, NULL},
    {"oversize headers", "GET", "/health", NULL, G_BIG_HEADER, NULL, 0, NULL, NULL},
};

/* The generated bodies / headers of the table. */
static char *gen_body(enum gen g)
{
    size_t cap = 256 * 1024, n = 0;
    char *b = malloc(cap);
    switch (g) {
    case G_DEEP:   /* 100 levels in an ignored field: over BN_API_MAX_DEPTH */
        n += snprintf(b + n, cap - n, "{" MSG ",\"x\":");
        for (int i = 0; i < 100; i++) b[n++] = '[';
        for (int i = 0; i < 100; i++) b[n++] = ']';
        snprintf(b + n, cap - n, "}");
        break;
    case G_LONG_PROMPT:   /* 600 token ids > n_ctx 512 */
        n += snprintf(b + n, cap - n, "{\"max_tokens\":4,\"prompt\":[");
        for (int i = 0; i < 600; i++)
            n += snprintf(b + n, cap - n, "%s%d", i ? "," : "", 65 + i % 26);
        snprintf(b + n, cap - n, "]}");
        break;
    case G_BIG_BODY:   /* valid JSON, 100 KiB > max_body_size 64k */
        n += snprintf(b + n, cap - n, "{\"max_tokens\":1,\"prompt\":\"");
        memset(b + n, 'a', 100 * 1024);
        n += 100 * 1024;
        snprintf(b + n, cap - n, "\"}");
        break;
    case G_BIG_HEADER:   /* 32 KiB of header > max_header_size 16k */
        n += snprintf(b + n, cap - n, "X-Big: ");
        memset(b + n, 'h', 32 * 1024);
        n += 32 * 1024;
        snprintf(b + n, cap - n, "\r\n");
        break;
    case G_MANY_STOPS:
        n += snprintf(b + n, cap - n, "{\"prompt\":\"a\",\"stop\":[");
        for (int i = 0; i < 17; i++) n += snprintf(b + n, cap - n, "%s\"s%d\"", i ? "," : "", i);
        snprintf(b + n, cap - n, "]}");
        break;
    case G_NONE:
        b[0] = 0;
        break;
    }
    return b;
}

START_TEST(malformed_table)
{
    const struct bad_req *t = &BAD[_i];
    bn_http_resp r;
    int rc;
    char *gen = t->gen != G_NONE ? gen_body(t->gen) : NULL;
    if (t->raw) {
        rc = bn_http_raw(srv->port, t->raw, strlen(t->raw), &r, 10000);
    } else {
        const char *body = t->gen == G_BIG_HEADER ? NULL : gen ? gen : t->body;
        const char *hdr = t->gen == G_BIG_HEADER ? gen : NULL;
        rc = bn_http_req(srv->port, t->method, t->path, hdr, body, &r, 10000);
    }
    if (t->status == 0) {   /* protocol-level garbage: any 4xx, or the connection closed */
        ck_assert_msg(r.status == 0 || (r.status >= 400 && r.status < 500), "%s: status %d",
                      t->name, r.status);
    } else {
        ck_assert_msg(rc == 0, "%s: no whole response (status %d)", t->name, r.status);
        ck_assert_msg(r.status == t->status, "%s: status %d, want %d (%.300s)", t->name, r.status,
                      t->status, r.body ? r.body : "");
        assert_openai_error(r.body, t->type, t->code, t->name);
        const char *ct = bn_http_header(&r, "Content-Type");
        ck_assert_msg(ct && strstr(ct, "application/json"), "%s: Content-Type %s", t->name,
                      ct ? ct : "(none)");
        if (t->status == 405) {
            const char *allow = bn_http_header(&r, "Allow");
            ck_assert_msg(allow && strstr(allow, strcmp(t->method, "GET") ? "GET" : "POST"),
                          "%s: Allow %s", t->name, allow ? allow : "(none)");
        }
        if (t->code && !strcmp(t->code, "context_length_exceeded"))
            ck_assert_msg(strstr(r.body, "512") && strstr(r.body, "600"),
                          "%s: the message gives both numbers: %s", t->name, r.body);
    }
    bn_http_resp_free(&r);
    free(gen);
    assert_health(srv->port);   /* and the server is still there */
}
END_TEST

/* A chat prompt over the context, as text: the same 400 code. */
START_TEST(chat_context_exceeded)
{
    char *body = malloc(16384);
    int n = snprintf(body, 16384, "{\"messages\":[{\"role\":\"user\",\"content\":\"");
    for (int i = 0; i < 700; i++) n += snprintf(body + n, 16384 - n, "z%c", 'a' + i % 26);
    snprintf(body + n, 16384 - n, "\"}]}");
    json_t *j;
    int st = bn_http_post_json(srv->port, "/v1/chat/completions", body, &j);
    free(body);
    ck_assert_int_eq(st, 400);
    json_t *e = json_object_get(j, "error");
    ck_assert_str_eq(SJ(e, "code"), "context_length_exceeded");
    ck_assert_str_eq(SJ(e, "type"), "invalid_request_error");
    json_decref(j);
}
END_TEST

/* ---- API keys ------------------------------------------------------------------------- */

START_TEST(api_keys)
{
    bn_srv *k = bn_srv_start("api_keys = sk-one, sk-two\napi_keys = sk-three\n", NULL);
    ck_assert_ptr_nonnull(k);
    static const struct { const char *auth; int status; } cases[] = {
        {NULL, 401},
        {"Authorization: Bearer wrong\r\n", 401},
        {"Authorization: sk-one\r\n", 401},             /* not a Bearer */
        {"Authorization: Bearer sk-one\r\n", 200},
        {"Authorization: Bearer sk-two\r\n", 200},
        {"Authorization: Bearer sk-three\r\n", 200},    /* the repeated line appends */
    };
    static const char *const routes[][3] = {
        {"GET", "/v1/models", NULL},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":1}"},
        {"POST", "/v1/chat/completions", "{" MSG ",\"max_tokens\":1}"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
            bn_http_resp r;
            ck_assert_int_eq(bn_http_req(k->port, routes[i][0], routes[i][1], cases[c].auth,
                                         routes[i][2], &r, BN_HTTP_MS), 0);
            ck_assert_msg(r.status == cases[c].status, "%s %s with '%s': %d", routes[i][0],
                          routes[i][1], cases[c].auth ? cases[c].auth : "no key", r.status);
            if (r.status == 401) assert_openai_error(r.body, "authentication_error", NULL, "401");
            bn_http_resp_free(&r);
        }
    static const char *const open_routes[] = {"/health", "/ready"};
    for (size_t i = 0; i < 2; i++) {
        bn_http_resp r;
        ck_assert_int_eq(bn_http_req(k->port, "GET", open_routes[i], NULL, NULL, &r, BN_HTTP_MS),
                         0);
        ck_assert_msg(r.status == 200, "%s without a key: %d", open_routes[i], r.status);
        bn_http_resp_free(&r);
    }
    /* a stream with the key */
    bn_sse s;
    ck_assert_int_eq(bn_sse_open(&s, k->port, "/v1/completions", "Authorization: Bearer sk-two\r\n",
                                 "{\"prompt\":\"a\",\"max_tokens\":3,\"stream\":true}", BN_HTTP_MS),
                     0);
    ck_assert_int_eq(s.head.status, 200);
    bn_sse_close(&s);
    bn_srv_stop(k, 10000);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("server_api");
    TCase *tc = tcase_create("api");
    tcase_add_unchecked_fixture(tc, api_setup, api_teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, health_fields);
    tcase_add_test(tc, ready_ok);
    tcase_add_test(tc, models_shape);
    tcase_add_test(tc, chat_nonstream);
    tcase_add_test(tc, completion_nonstream);
    tcase_add_test(tc, completion_seed_repeatable);
    tcase_add_test(tc, prompt_token_ids);
    tcase_add_test(tc, request_variants);
    tcase_add_test(tc, stop_string);
    tcase_add_test(tc, startup_log);
    tcase_add_test(tc, tokenize_round_trip);
    tcase_add_test(tc, chat_stream_usage);
    tcase_add_test(tc, chat_stream_plain);
    tcase_add_test(tc, completion_stream_usage);
    tcase_add_test(tc, stream_is_incremental);
    tcase_add_test(tc, metrics_families_and_counters);
    tcase_add_test(tc, status_workers);
    tcase_add_test(tc, request_id_echoed);
    tcase_add_test(tc, keep_alive);
    tcase_add_test(tc, seed_curl_examples);
    tcase_add_test(tc, any_bearer_without_keys);
    tcase_add_loop_test(tc, malformed_table, 0, (int)(sizeof BAD / sizeof BAD[0]));
    tcase_add_test(tc, chat_context_exceeded);
    suite_add_tcase(s, tc);

    TCase *tk = tcase_create("auth");
    tcase_add_checked_fixture(tk, NULL, teardown_all);
    tcase_set_timeout(tk, 120);
    tcase_add_test(tk, api_keys);
    suite_add_tcase(s, tk);
    return s;
}

int main(void)
{
    return bn_srv_test_main("test_server_api", suite());
}
