/* libFuzzer target: the OpenAI request body parser, for both kinds (so the seeds stay plain
 * JSON bodies). A failed parse must give a valid error JSON; a successful one is round-tripped
 * through every builder with the request's own strings (model, messages, prompt, stops) and
 * the raw input bytes as the generated text. Every output must be valid JSON (and SSE framed);
 * anything else aborts, so libFuzzer reports it. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/openai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts unless s[0..len) is one JSON value (NULs allowed: builders keep them as \u0000). */
static void must_be_json(const char *s, size_t len)
{
    if (!s) return;  /* out of memory is allowed to fail, never to produce bad JSON */
    json_t *j = json_loadb(s, len, JSON_ALLOW_NUL, NULL);
    if (!j) abort();
    json_decref(j);
}

static void must_be_event(char *ev, size_t len)
{
    /* callers: ev = builder(..., &len); then this (never in one expression: evaluation order) */
    if (!ev) return;
    if (len < 8 || strncmp(ev, "data: ", 6) || memcmp(ev + len - 2, "\n\n", 2) ||
        memchr(ev, '\n', len - 2))
        abort();
    must_be_json(ev + 6, len - 8);
    free(ev);
}

static void build_all(enum bn_api_kind kind, const char *model, const char *text, size_t len)
{
    static const bn_api_usage u = {.prompt_tokens = 3, .completion_tokens = 4, .cached_tokens = 1};
    char *s = bn_api_response_json(kind, "id-1", 1, model, text, len, "stop", &u);
    if (s) must_be_json(s, strlen(s));
    free(s);
    size_t n;
    char *ev = bn_api_stream_chunk(kind, "id-1", 1, model, text, len, 1, NULL, &n);
    must_be_event(ev, n);
    ev = bn_api_stream_chunk(kind, "id-1", 1, model, text, len, 0, "length", &n);
    must_be_event(ev, n);
    ev = bn_api_stream_usage(kind, "id-1", 1, model, &u, &n);
    must_be_event(ev, n);
}

static void round_trip(const bn_api_request *r, const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < r->n_msgs; i++)
        build_all(r->kind, r->msgs[i].role, r->msgs[i].content, strlen(r->msgs[i].content));
    if (r->prompt) build_all(r->kind, r->model, r->prompt, r->prompt_len);
    for (size_t i = 0; i < r->n_stop; i++) build_all(r->kind, r->model, r->stop[i], strlen(r->stop[i]));
    /* the raw bytes: any byte sequence, valid UTF-8 or not */
    build_all(r->kind, r->model, (const char *)data, size < 4096 ? size : 4096);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const bn_api_limits lim = {.default_max_tokens = 64, .max_max_tokens = 4096};
    static const enum bn_api_kind kinds[] = {BN_API_CHAT, BN_API_COMPLETION};
    for (size_t k = 0; k < 2; k++) {
        bn_api_request r;
        bn_api_error e;
        if (bn_api_parse(kinds[k], (const char *)data, size, &lim, 512, &r, &e) == 0) {
            if (r.max_tokens < 1 || r.max_tokens > lim.max_max_tokens || r.n_stop > BN_STOP_MAX)
                abort();
            round_trip(&r, data, size);
        } else {
            if (e.status != 400 && e.status != 500) abort();
            char *js = bn_api_error_json(&e);
            if (js) must_be_json(js, strlen(js));
            free(js);
            size_t n;
            char *ev = bn_api_stream_error(&e, &n);
            must_be_event(ev, n);
        }
        bn_api_request_free(&r);
    }
    return 0;
}
