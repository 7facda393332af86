/* The OpenAI-compatible request and response bodies (POST /v1/chat/completions and
 * /v1/completions), independent of HTTP and of processes: bytes in, a validated request or an
 * OpenAI error out; results in, JSON text out. The body parser is a fuzz target.
 *
 * Errors are the OpenAI body {"error": {"message", "type", "param", "code"}} with an HTTP status:
 * 400 invalid_request_error for bad JSON, wrong types, missing fields, out-of-range values,
 * n > 1, invalid UTF-8, nesting deeper than BN_API_MAX_DEPTH. */
#ifndef BN_SERVER_OPENAI_H
#define BN_SERVER_OPENAI_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "text/tokenizer.h"

#define BN_API_MAX_DEPTH 32
#define BN_API_MAX_MESSAGES 4096

enum bn_api_kind { BN_API_CHAT = 1, BN_API_COMPLETION = 2 };

/* An OpenAI-style error: status, type ("invalid_request_error", "authentication_error",
 * "server_error", ...), param (the offending field or ""), code ("" when none, else e.g.
 * "context_length_exceeded"), message. */
typedef struct bn_api_error {
    int status;
    char type[40];
    char param[64];
    char code[40];
    char message[512];
} bn_api_error;

/* Fills e; returns -1 (so parsers can `return bn_api_fail(...)`). */
int bn_api_fail(bn_api_error *e, int status, const char *type, const char *param,
                const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* The JSON text of e (malloc'd, NUL-terminated). */
char *bn_api_error_json(const bn_api_error *e);

/* Server-side limits the parser applies. */
typedef struct bn_api_limits {
    uint32_t default_max_tokens;   /* used when the request has no max_tokens */
    uint32_t max_max_tokens;       /* above it: 400 */
} bn_api_limits;

typedef struct bn_api_request {
    enum bn_api_kind kind;
    int stream;
    int include_usage;             /* stream_options.include_usage */
    int ignore_eos;
    int echo_logprobs_unused;
    char *model;                   /* as sent (may be NULL) */
    /* chat */
    bn_chat_msg *msgs;             /* n_msgs, strings owned (content: array-of-text parts joined) */
    size_t n_msgs;
    /* completion: text prompt or token ids */
    char *prompt;                  /* NUL-terminated; NULL when prompt_ids is used */
    size_t prompt_len;
    int32_t *prompt_ids;
    size_t n_prompt_ids;
    /* generation */
    bn_sampling sampling;          /* OpenAI defaults: temperature 1, top_p 1, others off */
    uint32_t max_tokens;           /* resolved: the request's, else limits.default_max_tokens */
    char *stop[BN_STOP_MAX];       /* owned, NUL-terminated */
    size_t n_stop;
    int has_seed;
    /* scheduling: vLLM's `priority`, lower runs first (bn_limits_priority clamps it to the
     * key's class); an integer within +-BN_PRIORITY_LIMIT */
    int priority;
    int has_priority;
} bn_api_request;

/* Parses and validates a request body for kind. n_vocab bounds prompt token ids. On failure
 * returns -1 with e filled (status 400) and r left freeable. */
int bn_api_parse(enum bn_api_kind kind, const char *body, size_t len, const bn_api_limits *lim,
                 uint32_t n_vocab, bn_api_request *r, bn_api_error *e);
void bn_api_request_free(bn_api_request *r);

/* JSON text of j (released), compact, key order kept; NULL on failure or out of memory. Unlike
 * json_dumps, never a truncated document when memory runs out (jansson 2.14 drops a failed key
 * write). For every JSON body the server writes. */
struct json_t;
char *bn_json_dump(struct json_t *j);

/* ---- responses ------------------------------------------------------------------------ */

typedef struct bn_api_usage {
    uint32_t prompt_tokens, completion_tokens, cached_tokens;
} bn_api_usage;

/* "stop" / "length" for an engine finish (cancelled reads "stop"). */
const char *bn_api_finish_reason(enum bn_finish f);

/* Whole (non-streaming) response body, malloc'd JSON. id e.g. "chatcmpl-<hex>". */
char *bn_api_response_json(enum bn_api_kind kind, const char *id, long created, const char *model,
                           const char *text, size_t text_len, const char *finish_reason,
                           const bn_api_usage *u);

/* One SSE event, "data: {...}\n\n", malloc'd (*len set). For chat, first = 1 adds
 * delta.role "assistant"; finish_reason NULL while streaming; text may be empty. */
char *bn_api_stream_chunk(enum bn_api_kind kind, const char *id, long created, const char *model,
                          const char *text, size_t text_len, int first, const char *finish_reason,
                          size_t *len);
/* The usage chunk sent before [DONE] when stream_options.include_usage: choices is []. */
char *bn_api_stream_usage(enum bn_api_kind kind, const char *id, long created, const char *model,
                          const bn_api_usage *u, size_t *len);
/* "data: {"error": {...}}\n\n" */
char *bn_api_stream_error(const bn_api_error *e, size_t *len);

#endif
