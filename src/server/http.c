/* The HTTP side of the master: libevent's evhttp, one table of routes, the OpenAI endpoints and
 * their streaming, the operational endpoints (/health, /ready, /metrics, /v1/status), API keys,
 * request limits and the access log.
 *
 * A generation request becomes a bn_job (master.h): parsed and tokenized here (so an over-long
 * prompt is refused before it queues), handed to bn_master_submit, then fed back through the
 * bn_http_on_* callbacks as the worker's frames arrive. A client that goes away is noticed at
 * once (EV_CLOSED on its socket, or the connection's close callback) and its job is cancelled. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "server/chat_page.h"
#include "server/limits.h"
#include "server/master.h"

/* Per-request state of a generation request (job->http). */
typedef struct hreq {
    bn_server *s;
    bn_job *job;
    struct evhttp_request *req;      /* NULL once the response is finished or the client is gone */
    struct evhttp_connection *evcon;
    struct event *close_ev;          /* EV_CLOSED on the client's socket */
    struct event *ping;              /* SSE comments while no token has come yet */
    char rid[72];                    /* X-Request-Id */
    char oid[96];                    /* chatcmpl-... / cmpl-... */
    char *model_id;
    long created;
    int stream_started, sent_first, gone;
    bn_buf text;                     /* non-streaming: the whole completion */
    uint64_t bytes;
    int status;
    const char *finish;
    char method[8], path[128], remote[64], ua[160];
    double t0;
} hreq;

/* ---- small helpers ----------------------------------------------------------------------- */

static const char *method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    }
    return "?";
}

static const char *reason_of(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    }
    return "Error";
}

/* The client's X-Request-Id when it is short and printable, else 16 random hex digits. */
static void request_id(struct evhttp_request *req, char *out, size_t cap)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Request-Id");
    if (h) {
        size_t n = strlen(h);
        int ok = n > 0 && n < cap && n <= 64;
        for (size_t i = 0; ok && i < n; i++) ok = isgraph((unsigned char)h[i]) && h[i] != '"' && h[i] != '\\';
        if (ok) {
            memcpy(out, h, n + 1);
            return;
        }
    }
    uint64_t r;
    evutil_secure_rng_get_bytes(&r, sizeof r);
    snprintf(out, cap, "%016llx", (unsigned long long)r);
}

typedef struct reqinfo {
    char rid[72];
    char method[8], path[128], remote[64], ua[160];
    double t0;
    int key;               /* bn_limits key of the request (0 = anonymous) */
} reqinfo;

static void reqinfo_fill(struct evhttp_request *req, reqinfo *ri)
{
    request_id(req, ri->rid, sizeof ri->rid);
    snprintf(ri->method, sizeof ri->method, "%s", method_name(evhttp_request_get_command(req)));
    const char *uri = evhttp_request_get_uri(req);
    snprintf(ri->path, sizeof ri->path, "%s", uri ? uri : "");
    char *q = strchr(ri->path, '?');
    if (q) *q = 0;
    const char *ua = evhttp_find_header(evhttp_request_get_input_headers(req), "User-Agent");
    snprintf(ri->ua, sizeof ri->ua, "%s", ua ? ua : "");
    char *addr = NULL;
    ev_uint16_t port = 0;
    struct evhttp_connection *c = evhttp_request_get_connection(req);
    if (c) evhttp_connection_get_peer(c, &addr, &port);
    snprintf(ri->remote, sizeof ri->remote, "%s", addr ? addr : "-");
    ri->t0 = bn_mono();
}

static void access_log(bn_server *s, const reqinfo *ri, int status, uint64_t bytes, const bn_job *j,
                       const char *finish)
{
    bn_metrics_http(s->metrics, status);
    if (!s->alog) return;
    bn_access_rec r = {0};
    r.request_id = ri->rid;
    r.method = ri->method;
    r.path = ri->path;
    r.remote = ri->remote;
    r.user_agent = ri->ua;
    r.status = status;
    r.bytes_sent = bytes;
    r.queue_s = r.ttft_s = -1;
    r.total_s = bn_mono() - ri->t0;
    r.worker = -1;
    r.finish_reason = finish;
    if (j) {
        r.prompt_tokens = (uint32_t)j->n_ids;
        r.completion_tokens = j->n_completion;
        r.cached_tokens = j->n_cached;
        if (j->t_dispatch > 0) r.queue_s = j->t_dispatch - j->t_arrive;
        if (j->t_first > 0) r.ttft_s = j->t_first - j->t_arrive;
        r.worker = j->ran_on;
    }
    bn_access_log_write(s->alog, &r);
}

static void common_headers(struct evhttp_request *req, const char *rid, const char *ctype)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "X-Request-Id", rid);
    evhttp_add_header(h, "Server", "bitnetd/" BN_VERSION);
}

/* Sends a whole response; returns its body size. */
static uint64_t send_body(struct evhttp_request *req, const char *rid, int status, const char *ctype,
                          const char *body, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    if (b && body) evbuffer_add(b, body, len);
    common_headers(req, rid, ctype);
    evhttp_send_reply(req, status, reason_of(status), b);
    if (b) evbuffer_free(b);
    return len;
}

static int retry_after_s(const bn_server *s)
{
    int busy, total;   /* requests run side by side: one per slot */
    bn_master_slot_counts(s, &busy, &total);
    return bn_queue_retry_after(&s->queue, total, s->mean_service_s);
}

static void retry_header(struct evhttp_request *req, int seconds)
{
    char ra[16];
    snprintf(ra, sizeof ra, "%d", seconds > 0 ? seconds : 1);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", ra);
}

static uint64_t send_error(bn_server *s, struct evhttp_request *req, const char *rid, const bn_api_error *e)
{
    char *body = bn_api_error_json(e);
    if (e->status == 503) retry_header(req, retry_after_s(s));
    if (e->status == 401)
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
    uint64_t n = send_body(req, rid, e->status, "application/json", body ? body : "{}", body ? strlen(body) : 2);
    free(body);
    return n;
}

static uint64_t send_json_obj(struct evhttp_request *req, const char *rid, int status, json_t *obj)
{
    char *body = bn_json_dump(obj);
    uint64_t n = send_body(req, rid, status, "application/json", body ? body : "{}", body ? strlen(body) : 2);
    free(body);
    return n;
}

/* A JSON string of arbitrary bytes: invalid UTF-8 becomes U+FFFD, so the JSON stays valid. */
static json_t *json_text(const char *p, size_t n)
{
    json_t *j = json_stringn(p, n);
    if (j) return j;
    bn_buf b = {0};
    for (size_t i = 0; i < n;) {
        size_t k = 1;
        while (k <= 4 && i + k <= n) {
            json_t *t = json_stringn(p + i, k);
            if (t) {
                json_decref(t);
                break;
            }
            k++;
        }
        if (k <= 4 && i + k <= n) {
            bn_buf_append(&b, p + i, k);
            i += k;
        } else {
            bn_buf_append(&b, "\xef\xbf\xbd", 3);
            i++;
        }
    }
    j = json_stringn(b.p ? (const char *)b.p : "", b.len);
    bn_buf_free(&b);
    return j;
}

/* ---- authentication and limits ------------------------------------------------------------- */

/* The request's key index (limits.h), or -1 when keys are configured and it has none of them. */
static int authorized(const bn_server *s, struct evhttp_request *req)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!s->limits) return s->cfg->n_api_keys > 0 ? -1 : 0;   /* never open by accident */
    return bn_limits_auth(s->limits, h);
}

/* Per-key admission (after parsing, so the prompt's tokens are known): 0, or -1 with a 429 in
 * e and *retry its Retry-After. The job holds a reference to the limits it was admitted under
 * (a reload may replace s->limits while it runs). */
static int admit(bn_server *s, bn_job *j, int key, bn_api_error *e, int *retry)
{
    bn_limits *l = s->limits;
    const char *why = "";
    if (!l) return 0;
    j->key = key;
    j->priority = bn_limits_priority(l, key, j->api.priority, j->api.has_priority);
    j->qn.priority = j->priority;
    j->qn.key = key;
    if (bn_limits_admit(l, key, (uint32_t)j->n_ids, bn_mono(), retry, &why) != 0) {
        bn_metrics_rejected(s->metrics, "rate_limited");
        return bn_api_fail(e, 429, "rate_limit_error", "", "rate_limit_exceeded",
                           "rate limit reached for this API key (%s): retry after %d s", why, *retry);
    }
    j->limits = bn_limits_ref(l);
    return 0;
}

/* ---- generation requests: lifecycle -------------------------------------------------------- */

static void hreq_unhook(hreq *h)
{
    if (h->close_ev) {
        event_free(h->close_ev);
        h->close_ev = NULL;
    }
    if (h->ping) {
        event_free(h->ping);
        h->ping = NULL;
    }
    if (h->evcon) evhttp_connection_set_closecb(h->evcon, NULL, NULL);
    h->req = NULL;
    h->evcon = NULL;
}

/* Detaches the request before its final reply: libevent may free the connection inside
 * evhttp_send_reply*(), calling the close callback, which must no longer be ours. */
static struct evhttp_request *hreq_take(hreq *h)
{
    struct evhttp_request *req = h->req;
    hreq_unhook(h);
    return req;
}

static void job_free(bn_job *j)
{
    hreq *h = j->http;
    if (h) {
        hreq_unhook(h);
        bn_buf_free(&h->text);
        free(h->model_id);
        free(h);
    }
    if (j->limits) {
        bn_limits_done(j->limits, j->key, j->started, j->n_completion, bn_mono());
        bn_limits_unref(j->limits);
    }
    bn_api_request_free(&j->api);
    free(j->ids);
    free(j->out_ids);
    free(j);
}

void bn_job_release_worker_side(bn_job *j)
{
    if (j->http_done && j->worker_done) job_free(j);
}

static void metrics_of(bn_server *s, bn_job *j, const char *finish, const bn_fr_done *d)
{
    bn_metrics_req m = {0};
    m.finished_reason = finish;
    m.prompt_tokens = (uint32_t)j->n_ids;
    m.generation_tokens = j->n_completion;
    m.cached_tokens = j->n_cached;
    double now = bn_mono();
    m.queue_s = j->t_dispatch > 0 ? j->t_dispatch - j->t_arrive : -1;
    m.ttft_s = j->t_first > 0 ? j->t_first - j->t_arrive : -1;
    m.e2e_s = now - j->t_arrive;
    m.prefill_s = d ? d->prefill_s : -1;
    m.decode_s = d ? d->decode_s : -1;
    bn_metrics_request(s->metrics, &m);
}

/* Ends the HTTP side once: the access log line, open-request count, maybe the job. */
static void http_finish(bn_job *j, int status)
{
    hreq *h = j->http;
    if (j->http_done) return;
    bn_server *s = j->srv;
    reqinfo ri;
    memset(&ri, 0, sizeof ri);
    memcpy(ri.rid, h->rid, sizeof ri.rid);
    memcpy(ri.method, h->method, sizeof ri.method);
    memcpy(ri.path, h->path, sizeof ri.path);
    memcpy(ri.remote, h->remote, sizeof ri.remote);
    memcpy(ri.ua, h->ua, sizeof ri.ua);
    ri.t0 = h->t0;
    access_log(s, &ri, status, h->bytes, j, h->finish);
    hreq_unhook(h);
    j->http_done = 1;
    s->n_open_http--;
    bn_job_release_worker_side(j);
}

static void stream_write(hreq *h, const char *p, size_t n)
{
    if (!h->req) return;
    struct evbuffer *b = evbuffer_new();
    if (!b) return;
    evbuffer_add(b, p, n);
    evhttp_send_reply_chunk(h->req, b);
    evbuffer_free(b);
    h->bytes += n;
}

static void stream_start(hreq *h)
{
    if (h->stream_started || !h->req) return;
    h->stream_started = 1;
    h->status = 200;
    struct evkeyvalq *o = evhttp_request_get_output_headers(h->req);
    common_headers(h->req, h->rid, "text/event-stream");
    evhttp_add_header(o, "Cache-Control", "no-cache");
    evhttp_add_header(o, "X-Accel-Buffering", "no");
    evhttp_send_reply_start(h->req, 200, "OK");
}

static void stream_event(hreq *h, char *ev, size_t n)
{
    if (ev) stream_write(h, ev, n);
    free(ev);
}

static void stream_end(hreq *h)
{
    stream_write(h, "data: [DONE]\n\n", 14);
    struct evhttp_request *req = hreq_take(h);
    if (req) evhttp_send_reply_end(req);
}

/* The client went away (socket closed, or libevent dropped the connection). */
static void client_gone(hreq *h, int libevent_closing)
{
    bn_job *j = h->job;
    if (j->http_done) return;
    h->gone = 1;
    struct evhttp_request *req = h->req;
    h->finish = "abort";
    bn_master_cancel(h->s, j);
    if (!j->worker_done && j->worker < 0) j->worker_done = 1;   /* was queued: never runs */
    metrics_of(h->s, j, "abort", NULL);
    hreq_take(h);
    /* Finish the request so libevent frees it. When libevent itself dropped the connection
     * (EOF, write error, timeout) it has detached a request we still owned (no connection any
     * more) and leaves freeing it to this reply call; a request still attached (evhttp_free at
     * exit) is freed with its connection and must not be touched. */
    if (req && (!libevent_closing || !evhttp_request_get_connection(req))) {
        if (h->stream_started) evhttp_send_reply_end(req);
        else evhttp_send_reply(req, 499, reason_of(499), NULL);
    }
    http_finish(j, 499);
}

static void on_close_event(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    client_gone(arg, 0);
}

static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    client_gone(arg, 1);
}

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    hreq *h = arg;
    if (!h->req || h->job->t_first > 0) return;
    if (!h->job->api.stream) return;
    stream_start(h);
    stream_write(h, ": ping\n\n", 8);
}

void bn_http_on_start(bn_job *j)
{
    (void)j;   /* pings go on until the first token; nothing else changes on dispatch */
}

void bn_http_on_progress(bn_job *j)
{
    (void)j;
}

void bn_http_on_chunk(bn_job *j, const char *text, size_t len, uint32_t n_ids)
{
    hreq *h = j->http;
    double now = bn_mono();
    if (n_ids) {
        if (j->t_first <= 0) {
            j->t_first = now;
            if (h->ping) evtimer_del(h->ping);   /* tokens flow now: no more pings needed */
        }
        else if (j->t_last > 0) bn_metrics_itl(j->srv->metrics, (now - j->t_last) / n_ids);
        j->t_last = now;
        j->n_completion += n_ids;
    }
    if (!h->req || !len) return;
    if (!j->api.stream) {
        bn_buf_append(&h->text, text, len);
        return;
    }
    int first = !h->sent_first;
    h->sent_first = 1;
    stream_start(h);
    size_t n;
    char *ev = bn_api_stream_chunk(j->api.kind, h->oid, h->created, h->model_id, text, len,
                                   first && j->api.kind == BN_API_CHAT, NULL, &n);
    stream_event(h, ev, n);
}

void bn_http_on_done(bn_job *j, const bn_fr_done *d)
{
    hreq *h = j->http;
    const char *finish = bn_api_finish_reason((enum bn_finish)d->finish);
    h->finish = finish;
    j->n_completion = d->n_completion;
    j->n_cached = d->n_cached;
    if (j->http_done) return;
    metrics_of(j->srv, j, finish, d);
    bn_api_usage u = {(uint32_t)j->n_ids, d->n_completion, d->n_cached};
    if (j->api.stream) {
        int first = !h->sent_first;
        h->sent_first = 1;
        stream_start(h);
        size_t n = 0;
        char *ev = bn_api_stream_chunk(j->api.kind, h->oid, h->created, h->model_id, "", 0,
                                       first && j->api.kind == BN_API_CHAT, finish, &n);
        stream_event(h, ev, n);
        if (j->api.include_usage) {
            ev = bn_api_stream_usage(j->api.kind, h->oid, h->created, h->model_id, &u, &n);
            stream_event(h, ev, n);
        }
        stream_end(h);
    } else if (h->req) {
        char *body = bn_api_response_json(j->api.kind, h->oid, h->created, h->model_id,
                                          h->text.p ? (const char *)h->text.p : "", h->text.len, finish, &u);
        h->status = 200;
        struct evhttp_request *req = hreq_take(h);
        h->bytes += send_body(req, h->rid, 200, "application/json", body ? body : "{}", body ? strlen(body) : 2);
        free(body);
    }
    http_finish(j, 200);
}

void bn_http_on_error(bn_job *j, const bn_api_error *e)
{
    hreq *h = j->http;
    if (j->http_done) return;
    metrics_of(j->srv, j, "abort", NULL);
    if (h->stream_started) {
        size_t n = 0;
        char *ev = bn_api_stream_error(e, &n);
        stream_event(h, ev, n);
        stream_end(h);
        http_finish(j, 200);
        return;
    }
    struct evhttp_request *req = hreq_take(h);
    if (req) h->bytes += send_error(j->srv, req, h->rid, e);
    http_finish(j, e->status);
}

/* ---- the generation endpoints ----------------------------------------------------------------- */

/* Prompt ids for a parsed request: the chat template, or BOS + the text, or the ids given. */
static int prompt_ids(const bn_generation *g, const bn_api_request *r, bn_tokens *out, bn_api_error *e)
{
    bn_error err;
    int rc;
    if (r->kind == BN_API_CHAT) {
        rc = bn_chat_render(g->tok, g->chat, r->msgs, r->n_msgs, 1, out, &err);
    } else if (r->prompt_ids) {
        rc = 0;
        for (size_t i = 0; i < r->n_prompt_ids && rc == 0; i++) rc = bn_tokens_push(out, r->prompt_ids[i], &err);
    } else {
        int32_t bos = g->weights.model->cfg.bos;
        rc = bos >= 0 ? bn_tokens_push(out, bos, &err) : 0;
        if (rc == 0) rc = bn_tokenize_append(g->tok, r->prompt, r->prompt_len, out, &err);
    }
    if (rc != 0) return bn_api_fail(e, 400, "invalid_request_error", "", "", "cannot tokenize the prompt: %s", err.msg);
    if (out->n == 0) return bn_api_fail(e, 400, "invalid_request_error", "prompt", "", "the prompt is empty");
    return 0;
}

/* Reads the body, refusing one over max_body_size with 413. */
static int read_body(const bn_server *s, struct evhttp_request *req, const char **body, size_t *len,
                     bn_api_error *e)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    *len = evbuffer_get_length(in);
    if (*len > s->cfg->max_body_size)
        return bn_api_fail(e, 413, "invalid_request_error", "", "request_too_large",
                           "the request body is %zu bytes; the limit is %zu (max_body_size)", *len,
                           s->cfg->max_body_size);
    *body = *len ? (const char *)evbuffer_pullup(in, -1) : "";
    return 0;
}

static int serving_or_fail(const bn_server *s, bn_api_error *e)
{
    if (s->draining) return bn_api_fail(e, 503, "server_error", "", "shutting_down", "the server is shutting down");
    if (!s->gen) return bn_api_fail(e, 503, "server_error", "", "loading", "the model is still loading");
    return 0;
}

static void handle_generation(bn_server *s, struct evhttp_request *req, const reqinfo *ri, enum bn_api_kind kind)
{
    bn_api_error e;
    const char *body;
    size_t len;
    if (serving_or_fail(s, &e) != 0 || read_body(s, req, &body, &len, &e) != 0) {
        if (e.status == 503) bn_metrics_rejected(s->metrics, s->draining ? "draining" : "loading");
        access_log(s, ri, e.status, send_error(s, req, ri->rid, &e), NULL, NULL);
        return;
    }
    const bn_generation *g = s->gen;
    bn_job *j = calloc(1, sizeof *j);
    hreq *h = calloc(1, sizeof *h);
    if (!j || !h) {
        free(j);
        free(h);
        bn_api_fail(&e, 500, "server_error", "", "", "out of memory");
        access_log(s, ri, 500, send_error(s, req, ri->rid, &e), NULL, NULL);
        return;
    }
    j->srv = s;
    j->http = h;
    j->worker = j->ran_on = -1;
    j->t_arrive = ri->t0;
    h->s = s;
    h->job = j;
    bn_api_limits lim = {s->cfg->default_max_tokens, s->cfg->max_max_tokens};
    bn_tokens t = {0};
    int rc = bn_api_parse(kind, body, len, &lim, g->weights.model->cfg.n_vocab, &j->api, &e);
    if (rc == 0) rc = prompt_ids(g, &j->api, &t, &e);
    if (rc == 0 && t.n >= g->n_ctx) {
        bn_metrics_rejected(s->metrics, "context_length");
        rc = bn_api_fail(&e, 400, "invalid_request_error", kind == BN_API_CHAT ? "messages" : "prompt",
                         "context_length_exceeded",
                         "This model's maximum context length is %u tokens. However, your prompt has %zu "
                         "tokens, which leaves no room for a completion. Please shorten the prompt.",
                         g->n_ctx, t.n);
    } else if (rc != 0 && e.status == 400) {
        bn_metrics_rejected(s->metrics, "invalid");
    }
    j->ids = t.ids;
    j->n_ids = t.n;
    j->id = ++s->next_job_id;
    memcpy(h->rid, ri->rid, sizeof h->rid);
    memcpy(h->method, ri->method, sizeof h->method);
    memcpy(h->path, ri->path, sizeof h->path);
    memcpy(h->remote, ri->remote, sizeof h->remote);
    memcpy(h->ua, ri->ua, sizeof h->ua);
    h->t0 = ri->t0;
    h->created = (long)time(NULL);
    h->model_id = strdup(g->model_id);
    snprintf(h->oid, sizeof h->oid, "%s-%s", kind == BN_API_CHAT ? "chatcmpl" : "cmpl", ri->rid);
    h->req = req;
    h->evcon = evhttp_request_get_connection(req);
    s->n_open_http++;
    int retry = 0;
    if (rc == 0) rc = admit(s, j, ri->key, &e, &retry);
    if (rc == 0) rc = bn_master_submit(s, j, &e);
    if (rc != 0) {
        j->worker_done = 1;
        if (e.status == 429) retry_header(req, retry);
        h->bytes = send_error(s, req, h->rid, &e);
        h->req = NULL;
        http_finish(j, e.status);
        return;
    }
    /* Watch the client: a disconnect cancels the generation within a token. */
    evhttp_connection_set_closecb(h->evcon, on_conn_close, h);
    struct bufferevent *bev = evhttp_connection_get_bufferevent(h->evcon);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd >= 0) {
        h->close_ev = event_new(s->base, fd, EV_CLOSED | EV_PERSIST, on_close_event, h);
        if (h->close_ev) event_add(h->close_ev, NULL);
    }
    if (j->api.stream && s->cfg->ping_interval > 0) {
        h->ping = event_new(s->base, -1, EV_PERSIST, ping_cb, h);
        double pi = s->cfg->ping_interval;
        struct timeval tv = {(long)pi, (long)((pi - (long)pi) * 1e6)};
        if (h->ping) evtimer_add(h->ping, &tv);
    }
}

/* ---- operational endpoints ----------------------------------------------------------------- */

static uint64_t h_health(bn_server *s, struct evhttp_request *req, const reqinfo *ri)
{
    int idle, busy, starting, down;
    bn_master_counts(s, &idle, &busy, &starting, &down);
    int slots_busy, slots_total;
    bn_master_slot_counts(s, &slots_busy, &slots_total);
    json_t *o = json_pack("{s:s, s:b, s:s?, s:b, s:{s:i, s:i, s:i, s:i}, s:{s:i, s:i}, s:{s:i, s:i}}",
                          "status", "healthy", "native_kernel", 1, "model", s->gen ? s->gen->model_id : NULL,
                          "ready", s->gen && !s->draining && idle + busy > 0,
                          "workers", "total", s->n_slots, "idle", idle, "busy", busy, "starting", starting,
                          "slots", "total", slots_total, "busy", slots_busy,
                          "queue", "length", s->queue.len, "capacity", s->queue.cap);
    return send_json_obj(req, ri->rid, 200, o);
}

static uint64_t h_ready(bn_server *s, struct evhttp_request *req, const reqinfo *ri)
{
    int idle, busy, starting, down;
    bn_master_counts(s, &idle, &busy, &starting, &down);
    const char *st = s->draining ? "draining" : !s->gen ? "loading" : idle + busy == 0 ? "no_workers" : "ready";
    int ok = !strcmp(st, "ready");
    return send_json_obj(req, ri->rid, ok ? 200 : 503, json_pack("{s:s}", "status", st));
}

static json_t *model_obj(const bn_server *s)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:i}", "id", s->gen->model_id, "object", "model",
                     "created", (json_int_t)s->gen->created,
                     "owned_by", "bitnetd", "max_model_len", (int)s->gen->n_ctx);
}

static uint64_t h_models(bn_server *s, struct evhttp_request *req, const reqinfo *ri)
{
    json_t *data = json_array();
    if (s->gen) json_array_append_new(data, model_obj(s));
    return send_json_obj(req, ri->rid, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

static uint64_t h_metrics(bn_server *s, struct evhttp_request *req, const reqinfo *ri)
{
    int idle, busy, starting, down;
    bn_master_counts(s, &idle, &busy, &starting, &down);
    bn_metrics_gauges g = {.running = s->n_running, .waiting = s->queue.len, .workers = s->n_slots,
                           .workers_busy = busy, .workers_live = idle + busy, .kv_usage = bn_master_kv_usage(s)};
    bn_master_slot_counts(s, &g.slots_busy, &g.slots);
    size_t n = 0;
    char *text = bn_metrics_render(s->metrics, &g, &n);
    uint64_t sent = send_body(req, ri->rid, 200, "text/plain; version=0.0.4; charset=utf-8", text ? text : "", text ? n : 0);
    free(text);
    return sent;
}

static uint64_t h_status(bn_server *s, struct evhttp_request *req, const reqinfo *ri)
{
    json_t *ws = json_array();
    for (int i = 0; i < s->n_slots; i++) {
        const bn_slot *sl = &s->slots[i];
        json_array_append_new(ws, json_pack("{s:i, s:I, s:s, s:{s:i, s:i}, s:I, s:i, s:I, s:i, s:i, s:b}", "index", i,
                                            "pid", (json_int_t)sl->pid, "state", bn_wstate_name(sl->state),
                                            "slots", "busy", sl->n_jobs, "total", bn_slot_capacity(sl),
                                            "requests", (json_int_t)sl->requests, "restarts", sl->restarts,
                                            "cached_tokens", (json_int_t)sl->n_cached, "cache_entries", sl->n_cache,
                                            "threads", sl->hello.n_threads, "retiring", sl->retire));
    }
    json_t *plan = s->gen ? json_loads(s->gen->plan_json, 0, NULL) : json_null();
    json_t *o = json_pack("{s:o, s:o, s:{s:i, s:i}, s:f, s:s?, s:b, s:b, s:I}", "placement", plan ? plan : json_null(),
                          "workers", ws, "queue", "length", s->queue.len, "capacity", s->queue.cap,
                          "uptime_s", bn_mono() - s->started_at, "model", s->gen ? s->gen->model_path : NULL,
                          "loading", s->loading, "draining", s->draining,
                          "generation", (json_int_t)(s->gen ? s->gen->id : 0));
    return send_json_obj(req, ri->rid, 200, o);
}

/* The body of a request for the model's tokenizer, parsed (NULL when it is not JSON: the
 * callers' own checks then answer 400), or *sent > 0 when an error was sent instead. */
static json_t *model_body(bn_server *s, struct evhttp_request *req, const reqinfo *ri, const char **body,
                          size_t *len, uint64_t *sent)
{
    bn_api_error e;
    *sent = 0;
    if (serving_or_fail(s, &e) != 0 || read_body(s, req, body, len, &e) != 0) {
        *sent = send_error(s, req, ri->rid, &e);
        return NULL;
    }
    json_error_t je;
    return json_loadb(*body, *len, 0, &je);
}

/* POST /tokenize {"prompt": "..."} | {"messages": [...]}, as vLLM answers it. */
static uint64_t h_tokenize(bn_server *s, struct evhttp_request *req, const reqinfo *ri)
{
    bn_api_error e;
    const char *body;
    size_t len;
    uint64_t sent;
    json_t *root = model_body(s, req, ri, &body, &len, &sent);
    if (sent) return sent;
    int chat = root && json_is_object(root) && json_object_get(root, "messages");
    json_t *ast = root ? json_object_get(root, "add_special_tokens") : NULL;
    int add_special = !ast || json_is_true(ast);
    json_decref(root);
    bn_api_limits lim = {1, 1};
    bn_api_request r = {0};
    bn_tokens t = {0};
    int rc = bn_api_parse(chat ? BN_API_CHAT : BN_API_COMPLETION, body, len, &lim, s->gen->weights.model->cfg.n_vocab, &r, &e);
    if (rc == 0) rc = prompt_ids(s->gen, &r, &t, &e);
    if (rc != 0) {
        sent = send_error(s, req, ri->rid, &e);
    } else {
        size_t skip = (!chat && !r.prompt_ids && !add_special && s->gen->weights.model->cfg.bos >= 0) ? 1 : 0;
        json_t *ids = json_array();
        for (size_t i = skip; i < t.n; i++) json_array_append_new(ids, json_integer(t.ids[i]));
        sent = send_json_obj(req, ri->rid, 200, json_pack("{s:o, s:i, s:i}", "tokens", ids, "count", (int)(t.n - skip),
                                                        "max_model_len", (int)s->gen->n_ctx));
    }
    bn_tokens_free(&t);
    bn_api_request_free(&r);
    return sent;
}

static uint64_t h_detokenize(bn_server *s, struct evhttp_request *req, const reqinfo *ri)
{
    bn_api_error e;
    const char *body;
    size_t len;
    uint64_t sent;
    json_t *root = model_body(s, req, ri, &body, &len, &sent);
    if (sent) return sent;
    json_t *arr = root ? json_object_get(root, "tokens") : NULL;
    uint32_t n_vocab = s->gen->weights.model->cfg.n_vocab;
    int32_t *ids = NULL;
    size_t n = 0;
    int bad = !root || !json_is_object(root) || !json_is_array(arr);
    if (!bad) {
        n = json_array_size(arr);
        ids = malloc((n ? n : 1) * sizeof *ids);
        bad = !ids;
        for (size_t i = 0; !bad && i < n; i++) {
            json_t *v = json_array_get(arr, i);
            bad = !json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= n_vocab;
            if (!bad) ids[i] = (int32_t)json_integer_value(v);
        }
    }
    json_decref(root);
    char *text = NULL;
    size_t tl = 0;
    bn_error err;
    if (bad) {
        bn_api_fail(&e, 400, "invalid_request_error", "tokens", "",
                    "'tokens' must be an array of token ids in [0, %u)", n_vocab);
        sent = send_error(s, req, ri->rid, &e);
    } else if (bn_detokenize(s->gen->tok, ids, n, 0, &text, &tl, &err) != 0) {
        bn_api_fail(&e, 400, "invalid_request_error", "tokens", "", "%s", err.msg);
        sent = send_error(s, req, ri->rid, &e);
    } else {
        sent = send_json_obj(req, ri->rid, 200, json_pack("{s:o}", "prompt", json_text(text, tl)));
    }
    free(text);
    free(ids);
    return sent;
}

/* GET /: the embedded chat page (same-origin: it calls this server's API). */
static uint64_t h_page(bn_server *s, struct evhttp_request *req, const reqinfo *ri)
{
    (void)s;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-cache");
    return send_body(req, ri->rid, 200, "text/html; charset=utf-8", bn_chat_page_html, bn_chat_page_len);
}

/* ---- routing ----------------------------------------------------------------------------- */

enum { M_GET = 1, M_POST = 2, M_HEAD = 4 };

typedef uint64_t (*route_fn)(bn_server *, struct evhttp_request *, const reqinfo *);

static uint64_t h_chat(bn_server *s, struct evhttp_request *req, const reqinfo *ri)
{
    handle_generation(s, req, ri, BN_API_CHAT);
    return UINT64_MAX;   /* logs itself when it ends */
}

static uint64_t h_completions(bn_server *s, struct evhttp_request *req, const reqinfo *ri)
{
    handle_generation(s, req, ri, BN_API_COMPLETION);
    return UINT64_MAX;
}

static const struct route {
    const char *path;
    int methods;
    int auth;
    route_fn fn;
} routes[] = {
    {"/", M_GET | M_HEAD, 0, h_page},
    {"/health", M_GET | M_HEAD, 0, h_health},
    {"/ready", M_GET | M_HEAD, 0, h_ready},
    {"/metrics", M_GET, 0, h_metrics},
    {"/v1/models", M_GET, 1, h_models},
    {"/v1/chat/completions", M_POST, 1, h_chat},
    {"/v1/completions", M_POST, 1, h_completions},
    {"/tokenize", M_POST, 1, h_tokenize},
    {"/detokenize", M_POST, 1, h_detokenize},
    {"/v1/status", M_GET, 1, h_status},
};

static int method_bit(enum evhttp_cmd_type m)
{
    return m == EVHTTP_REQ_GET ? M_GET : m == EVHTTP_REQ_POST ? M_POST : m == EVHTTP_REQ_HEAD ? M_HEAD : 0;
}

static void allow_header(struct evhttp_request *req, int methods)
{
    char allow[32] = "";
    if (methods & M_GET) strcat(allow, "GET, ");
    if (methods & M_HEAD) strcat(allow, "HEAD, ");
    if (methods & M_POST) strcat(allow, "POST, ");
    allow[strlen(allow) - 2] = 0;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
}

static void watch_done(struct evhttp_request *req);

static void on_request(struct evhttp_request *req, void *arg)
{
    bn_server *s = arg;
    watch_done(req);
    reqinfo ri;
    reqinfo_fill(req, &ri);
    bn_api_error e;
    const struct route *rt = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (!strcmp(ri.path, routes[i].path)) rt = &routes[i];
    if (!rt) {
        bn_api_fail(&e, 404, "not_found_error", "", "", "no route for %s %s", ri.method, ri.path);
        access_log(s, &ri, 404, send_error(s, req, ri.rid, &e), NULL, NULL);
        return;
    }
    if (!(method_bit(evhttp_request_get_command(req)) & rt->methods)) {
        bn_api_fail(&e, 405, "invalid_request_error", "", "method_not_allowed", "%s does not accept %s",
                    ri.path, ri.method);
        allow_header(req, rt->methods);
        access_log(s, &ri, 405, send_error(s, req, ri.rid, &e), NULL, NULL);
        return;
    }
    ri.key = rt->auth ? authorized(s, req) : 0;
    if (ri.key < 0) {
        bn_metrics_rejected(s->metrics, "unauthorized");
        bn_api_fail(&e, 401, "authentication_error", "", "invalid_api_key",
                    "missing or invalid API key: send 'Authorization: Bearer KEY'");
        access_log(s, &ri, 401, send_error(s, req, ri.rid, &e), NULL, NULL);
        return;
    }
    uint64_t sent = rt->fn(s, req, &ri);
    if (sent != UINT64_MAX) {
        int status = evhttp_request_get_response_code(req);
        access_log(s, &ri, status ? status : 200, sent, NULL, NULL);
    }
}

/* ---- the request deadline ---------------------------------------------------------------------
 * libevent's timeouts restart with every byte, so a client trickling its request a byte at a
 * time would hold its connection for ever. Each new connection gets a deadline of
 * client_timeout for its first complete request (nginx's client_header_timeout); later requests
 * on a keep-alive connection are bounded by the idle timeout. We hold a reference on the
 * connection's bufferevent until the deadline fires or the request arrives, so the pointer stays
 * valid; a freed one has its callbacks cleared by libevent, which is how we tell. */

typedef struct conn_watch {
    struct bufferevent *bev;
    struct event *timer;
    struct conn_watch *next;
} conn_watch;

#define WATCH_BUCKETS 1024
static conn_watch *watch_tab[WATCH_BUCKETS];

static size_t watch_hash(const struct bufferevent *bev)
{
    return ((uintptr_t)bev >> 4) % WATCH_BUCKETS;
}

static void watch_free(conn_watch *w)
{
    conn_watch **pp = &watch_tab[watch_hash(w->bev)];
    while (*pp && *pp != w) pp = &(*pp)->next;
    if (*pp) *pp = w->next;
    event_free(w->timer);
    bufferevent_decref(w->bev);
    free(w);
}

static void watch_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_watch *w = arg;
    bufferevent_data_cb rd = NULL;
    bufferevent_getcb(w->bev, &rd, NULL, NULL, NULL);
    evutil_socket_t sfd = bufferevent_getfd(w->bev);
    if (rd && sfd >= 0) {
        bn_log_debug("closing a connection that sent no complete request within client_timeout");
        shutdown(sfd, SHUT_RDWR);   /* libevent sees EOF and frees the connection */
    }
    watch_free(w);
}

static struct bufferevent *new_connection_bev(struct event_base *base, void *arg)
{
    bn_server *s = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, -1, 0);
    conn_watch *w = bev ? calloc(1, sizeof *w) : NULL;
    if (!w) return bev;
    w->bev = bev;
    w->timer = evtimer_new(base, watch_fire, w);
    if (!w->timer) {
        free(w);
        return bev;
    }
    bufferevent_incref(bev);
    double t = s->cfg->client_timeout;
    struct timeval tv = {(long)t, (long)((t - (long)t) * 1e6)};
    evtimer_add(w->timer, &tv);
    size_t h = watch_hash(bev);
    w->next = watch_tab[h];
    watch_tab[h] = w;
    return bev;
}

/* The connection delivered a whole request: its deadline no longer applies. */
static void watch_done(struct evhttp_request *req)
{
    struct evhttp_connection *c = evhttp_request_get_connection(req);
    struct bufferevent *bev = c ? evhttp_connection_get_bufferevent(c) : NULL;
    if (!bev) return;
    for (conn_watch *w = watch_tab[watch_hash(bev)]; w; w = w->next)
        if (w->bev == bev) {
            watch_free(w);
            return;
        }
}

/* At exit: drop every pending deadline (their connections are freed with the evhttp). */
static void watch_clear(void)
{
    for (size_t i = 0; i < WATCH_BUCKETS; i++)
        while (watch_tab[i]) watch_free(watch_tab[i]);
}

/* ---- listening ------------------------------------------------------------------------------ */

static evutil_socket_t listen_fds[BN_CONF_MAX_LISTEN];
static int n_listen_fds;

/* A listening socket with our backlog (evhttp's own bind uses a fixed one). */
static evutil_socket_t bind_listener(const char *host, int port, int backlog, bn_error *err)
{
    struct evutil_addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = EVUTIL_AI_PASSIVE | EVUTIL_AI_NUMERICSERV;
    char ps[8];
    snprintf(ps, sizeof ps, "%d", port);
    int gai = evutil_getaddrinfo(host, ps, &hints, &ai);
    if (gai != 0) return bn_err(err, "cannot resolve '%s': %s", host, evutil_gai_strerror(gai));
    evutil_socket_t fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, backlog > 0 ? backlog : 511) != 0) {
        bn_err(err, "cannot bind %s:%d: %s", host, port, strerror(errno));
        if (fd >= 0) close(fd);
        fd = -1;
    }
    evutil_freeaddrinfo(ai);
    return fd;
}

void bn_http_apply_limits(bn_server *s)
{
    const bn_srv_config *c = s->cfg;
    evhttp_set_max_headers_size(s->http, (ev_ssize_t)c->max_header_size);
    /* Bodies somewhat over the limit still reach us, so the 413 is an OpenAI error body; far
     * larger ones are cut off by libevent itself. */
    evhttp_set_max_body_size(s->http, (ev_ssize_t)(c->max_body_size + (1u << 20)));
    struct timeval tv = {(long)c->client_timeout, (long)((c->client_timeout - (long)c->client_timeout) * 1e6)};
    evhttp_set_timeout_tv(s->http, &tv);
    /* The key table follows the config; requests already admitted keep the old one. */
    bn_limits *l = NULL;
    bn_error err;
    if (bn_limits_new(c, &l, &err) != 0) {
        bn_log_error("api keys: %s (keeping the previous key table)", err.msg);
        return;
    }
    if (s->limits) bn_limits_unref(s->limits);
    s->limits = l;
}

int bn_http_start(bn_server *s, bn_error *err)
{
    const bn_srv_config *c = s->cfg;
    s->http = evhttp_new(s->base);
    if (!s->http) return bn_err(err, "out of memory");
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    bn_http_apply_limits(s);
    evhttp_set_default_content_type(s->http, "application/json");
    evhttp_set_gencb(s->http, on_request, s);
    evhttp_set_bevcb(s->http, new_connection_bev, s);
    for (int i = 0; i < c->n_listen; i++) {
        char host[256];
        int port;
        if (bn_parse_listen(c->listen[i], host, sizeof host, &port, err) != 0) return -1;
        evutil_socket_t lfd = bind_listener(host[0] ? host : "0.0.0.0", port, c->backlog, err);
        if (lfd < 0) return bn_err_prefix(err, "listen %s", c->listen[i]);
        struct evhttp_bound_socket *bs = evhttp_accept_socket_with_handle(s->http, lfd);
        if (!bs) {
            evutil_closesocket(lfd);
            return bn_err(err, "listen %s: cannot accept on the socket", c->listen[i]);
        }
        evutil_socket_t fd = evhttp_bound_socket_get_fd(bs);
        if (n_listen_fds < BN_CONF_MAX_LISTEN) listen_fds[n_listen_fds++] = fd;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        char addr[128] = "?";
        int bound = port;
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
            if (ss.ss_family == AF_INET) {
                struct sockaddr_in *a = (struct sockaddr_in *)&ss;
                evutil_inet_ntop(AF_INET, &a->sin_addr, addr, sizeof addr);
                bound = ntohs(a->sin_port);
            } else if (ss.ss_family == AF_INET6) {
                struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
                char a6[100];
                evutil_inet_ntop(AF_INET6, &a->sin6_addr, a6, sizeof a6);
                snprintf(addr, sizeof addr, "[%s]", a6);
                bound = ntohs(a->sin6_port);
            }
        }
        bn_log_info("listening on %s:%d", addr, bound);
    }
    return 0;
}

void bn_http_free(bn_server *s)
{
    watch_clear();
    if (s->http) evhttp_free(s->http);
    s->http = NULL;
    if (s->limits) bn_limits_unref(s->limits);
    s->limits = NULL;
}

void bn_http_stop_listening(bn_server *s)
{
    (void)s;
    for (int i = 0; i < n_listen_fds; i++) close(listen_fds[i]);
    n_listen_fds = 0;
}
