/* The OpenAI request parser/validator and the response / SSE builders, over jansson.
 *
 * Decisions where OpenAI's own behaviour is loose or unsupported here:
 *  - duplicate keys are accepted, the last one wins (jansson's default, like OpenAI);
 *  - null for an optional field means absent; unknown fields are ignored;
 *  - integers may be written as integral reals (10.0), like pydantic's lax mode; 1.5 is refused;
 *  - roles: system, user, assistant, tool, and developer (read as system); content null (or
 *    missing) only for assistant; content parts must all be {"type":"text"};
 *  - refused with a 400 rather than silently ignored, because ignoring them would change the
 *    answer: n > 1, best_of > 1, logprobs / top_logprobs, tools / functions / tool_choice (but
 *    "none"), echo, suffix, response_format other than "text";
 *  - max_completion_tokens wins over max_tokens when both are present (the other is ignored);
 *  - stream_options.include_usage counts only when stream is true.
 * Message roles point to static strings; every other string of a request is owned by it. */
#include "server/openai.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/config.h"   /* BN_PRIORITY_LIMIT */

#define INVALID "invalid_request_error"
#define PARAM_LEN 96  /* > gcc's worst case; real params ("messages[4095].content[j].type") fit 64 */

int bn_api_fail(bn_api_error *e, int status, const char *type, const char *param,
                const char *code, const char *fmt, ...)
{
    e->status = status;
    snprintf(e->type, sizeof e->type, "%s", type ? type : "");
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- UTF-8 ---------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[0..n) (1..4), or 0 if invalid; *bad then gets the
 * length of the maximal invalid subpart (>= 1), which is replaced by one U+FFFD (Unicode 3.9). */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t *bad)
{
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xbf;  /* the range of the second byte (no overlongs, surrogates) */
    *bad = 1;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else return 0;
    for (size_t k = 1; k < len; k++) {
        unsigned b = k < n ? s[k] : 0;
        if (k == 1 ? b < lo || b > hi : (b & 0xc0) != 0x80) {
            *bad = k;
            return 0;
        }
    }
    return len;
}

/* A JSON string of s[0..len): jansson's, else (invalid UTF-8) a copy with U+FFFD for each
 * maximal invalid subpart, so a builder never fails on the text it is given. */
static json_t *jstr(const char *s, size_t len)
{
    if (!s) {
        s = "";
        len = 0;
    }
    json_t *j = json_stringn(s, len);
    if (j || len > (SIZE_MAX - 1) / 3) return j;
    const unsigned char *u = (const unsigned char *)s;
    char *fixed = malloc(len * 3 + 1), *o = fixed;
    if (!fixed) return NULL;
    for (size_t i = 0, bad; i < len;) {
        size_t n = utf8_seq(u + i, len - i, &bad);
        if (n) {
            memcpy(o, u + i, n);
            o += n;
            i += n;
        } else {
            memcpy(o, "\xef\xbf\xbd", 3);
            o += 3;
            i += bad;
        }
    }
    j = json_stringn(fixed, (size_t)(o - fixed));
    free(fixed);
    return j;
}

static json_t *jcstr(const char *s) { return jstr(s, s ? strlen(s) : 0); }

/* ---- building JSON ------------------------------------------------------------------ */

/* Sets o[key] = v, stealing v. Out of memory shows as a NULL o or v (jansson's setter then
 * fails and releases v): *fail is set, so a builder returns NULL, never a body missing a field. */
static void put(json_t *o, const char *key, json_t *v, int *fail)
{
    if (json_object_set_new(o, key, v)) *fail = 1;
}

/* Dumps and releases j; NULL if j is NULL or fail is set. */
/* json_dumpb into our own buffer, not json_dumps: jansson 2.14 ignores a failed append of an
 * object key, so out of memory json_dumps can return malformed JSON. */
static char *dump(json_t *j, int fail)
{
    const size_t flags = JSON_COMPACT | JSON_PRESERVE_ORDER;
    size_t n = j && !fail ? json_dumpb(j, NULL, 0, flags) : 0;
    char *s = n ? malloc(n + 1) : NULL;
    if (s && json_dumpb(j, s, n, flags) == n) {
        s[n] = 0;
    } else {
        free(s);
        s = NULL;
    }
    json_decref(j);
    return s;
}

char *bn_json_dump(struct json_t *j)
{
    return dump(j, 0);
}

/* "data: {json}\n\n" from j (released). JSON_COMPACT output has no raw newline (they are
 * escaped inside strings), so one event is one data line. */
static char *sse(json_t *j, int fail, size_t *len)
{
    char *js = dump(j, fail), *ev = NULL;
    if (js) {
        size_t n = strlen(js);
        ev = malloc(n + 9);
        if (ev) {
            memcpy(ev, "data: ", 6);
            memcpy(ev + 6, js, n);
            memcpy(ev + 6 + n, "\n\n", 3);
            if (len) *len = n + 8;
        }
        free(js);
    }
    if (!ev && len) *len = 0;
    return ev;
}

static json_t *error_obj(const bn_api_error *e, int *fail)
{
    json_t *in = json_object(), *out = json_object();
    put(in, "message", jcstr(e->message), fail);
    put(in, "type", jcstr(e->type[0] ? e->type : "server_error"), fail);
    put(in, "param", e->param[0] ? jcstr(e->param) : json_null(), fail);
    put(in, "code", e->code[0] ? jcstr(e->code) : json_null(), fail);
    put(out, "error", in, fail);
    return out;
}

char *bn_api_error_json(const bn_api_error *e)
{
    int fail = 0;
    json_t *j = error_obj(e, &fail);
    return dump(j, fail);
}

char *bn_api_stream_error(const bn_api_error *e, size_t *len)
{
    int fail = 0;
    json_t *j = error_obj(e, &fail);
    return sse(j, fail, len);
}

/* ---- request parsing: field access and type checks ------------------------------------- */

/* A field's value, or NULL when it is absent or null. */
static json_t *field(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    default: return "null";
    }
}

static int bad(bn_api_error *e, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad(bn_api_error *e, const char *param, const char *fmt, ...)
{
    char msg[sizeof e->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return bn_api_fail(e, 400, INVALID, param, "", "%s", msg);
}

static int bad_type(bn_api_error *e, const char *param, const char *want, const json_t *v)
{
    return bad(e, param, "'%s' must be %s, got %s", param, want, type_name(v));
}

static int oom(bn_api_error *e)
{
    return bn_api_fail(e, 500, "server_error", "", "", "out of memory");
}

/* An integer: a JSON integer or an integral real. 0 ok, -1 not an integer, -2 out of int64. */
static int as_int(const json_t *v, long long *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (!json_is_real(v)) return -1;
    double d = json_real_value(v);
    if (d != floor(d)) return -1;
    if (d < -9223372036854775808.0 || d >= 9223372036854775808.0) return -2;
    *out = (long long)d;
    return 0;
}

/* The number as the client wrote it, for messages ("got 1e+30"). */
static const char *num_text(const json_t *v, char buf[32])
{
    if (json_is_integer(v)) snprintf(buf, 32, "%lld", (long long)json_integer_value(v));
    else snprintf(buf, 32, "%g", json_number_value(v));
    return buf;
}

/* Reads an optional integer field into *out (and its value into *vp): 1 if present, 0 if
 * absent, -1 on error. Outside int64 saturates when saturate (the caller's range check then
 * refuses it), else is an error. */
static int get_int(const json_t *o, const char *key, int saturate, long long *out,
                   const json_t **vp, bn_api_error *e)
{
    json_t *v = field(o, key);
    if (!v) return 0;
    *vp = v;
    int rc = as_int(v, out);
    if (rc == -1) return bad_type(e, key, "an integer", v);
    if (rc == -2) {
        if (!saturate) return bad(e, key, "'%s' must be a 64-bit integer", key);
        *out = json_real_value(v) < 0 ? INT64_MIN : INT64_MAX;
    }
    return 1;
}

static int get_bool(const json_t *o, const char *key, const char *param, int *out,
                    bn_api_error *e)
{
    json_t *v = field(o, key);
    if (!v) return 0;
    if (!json_is_boolean(v)) return bad_type(e, param, "a boolean", v);
    *out = json_is_true(v);
    return 0;
}

/* A copy of a string value. jansson refuses \u0000 (no JSON_ALLOW_NUL), so strings have no
 * embedded NUL: strcmp on them is exact and C strings lose nothing. */
static char *dup_str(const json_t *v)
{
    size_t n = json_string_length(v);
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, json_string_value(v), n);
        s[n] = 0;
    }
    return s;
}

/* ---- messages ------------------------------------------------------------------------- */

static const struct { const char *name, *as; } ROLES[] = {
    {"system", "system"}, {"user", "user"}, {"assistant", "assistant"},
    {"developer", "system"}, {"tool", "tool"},
};

static int parse_role(const json_t *m, size_t i, const char **role, bn_api_error *e)
{
    char p[PARAM_LEN];
    snprintf(p, sizeof p, "messages[%zu].role", i);
    json_t *v = field(m, "role");
    if (!v) return bad(e, p, "'%s' is required", p);
    if (!json_is_string(v)) return bad_type(e, p, "a string", v);
    for (size_t k = 0; k < sizeof ROLES / sizeof ROLES[0]; k++)
        if (!strcmp(json_string_value(v), ROLES[k].name)) {
            *role = ROLES[k].as;
            return 0;
        }
    return bad(e, p, "'%s' must be one of system, user, assistant, developer, tool, got '%.40s'",
               p, json_string_value(v));
}

/* Validates the parts of an array content (all text) and returns their total length. */
static int content_parts_len(const json_t *a, size_t i, size_t *total, bn_api_error *e)
{
    char p[PARAM_LEN];
    size_t j;
    json_t *part;
    *total = 0;
    json_array_foreach(a, j, part) {
        snprintf(p, sizeof p, "messages[%zu].content[%zu]", i, j);
        if (!json_is_object(part)) return bad_type(e, p, "an object", part);
        json_t *t = field(part, "type");
        snprintf(p, sizeof p, "messages[%zu].content[%zu].type", i, j);
        if (!t) return bad(e, p, "'%s' is required", p);
        if (!json_is_string(t)) return bad_type(e, p, "a string", t);
        if (strcmp(json_string_value(t), "text"))
            return bad(e, p, "content part type '%.40s' is not supported (only 'text')",
                       json_string_value(t));
        json_t *x = field(part, "text");
        snprintf(p, sizeof p, "messages[%zu].content[%zu].text", i, j);
        if (!x) return bad(e, p, "'%s' is required", p);
        if (!json_is_string(x)) return bad_type(e, p, "a string", x);
        *total += json_string_length(x);
    }
    return 0;
}

static int parse_content(const json_t *m, size_t i, const char *role, char **out,
                         bn_api_error *e)
{
    char p[PARAM_LEN];
    snprintf(p, sizeof p, "messages[%zu].content", i);
    json_t *v = field(m, "content");
    if (!v && strcmp(role, "assistant")) return bad(e, p, "'%s' is required", p);
    if (!v) return (*out = strdup("")) ? 0 : oom(e);
    if (json_is_string(v)) return (*out = dup_str(v)) ? 0 : oom(e);
    if (!json_is_array(v)) return bad_type(e, p, "a string or an array of text parts", v);
    size_t total, j;
    json_t *part;
    if (content_parts_len(v, i, &total, e)) return -1;
    char *s = malloc(total + 1), *o = s;
    if (!s) return oom(e);
    json_array_foreach(v, j, part) {
        json_t *x = json_object_get(part, "text");
        memcpy(o, json_string_value(x), json_string_length(x));
        o += json_string_length(x);
    }
    *o = 0;
    *out = s;
    return 0;
}

static int parse_messages(const json_t *root, bn_api_request *r, bn_api_error *e)
{
    json_t *a = field(root, "messages"), *m;
    if (!a) return bad(e, "messages", "'messages' is required");
    if (!json_is_array(a)) return bad_type(e, "messages", "an array", a);
    size_t n = json_array_size(a), i;
    if (n == 0) return bad(e, "messages", "'messages' must not be empty");
    if (n > BN_API_MAX_MESSAGES)
        return bad(e, "messages", "'messages' may have at most %d entries, got %zu",
                   BN_API_MAX_MESSAGES, n);
    /* all n entries exist from here on (content NULL until filled), so a failure frees */
    if (!(r->msgs = calloc(n, sizeof *r->msgs))) return oom(e);
    r->n_msgs = n;
    json_array_foreach(a, i, m) {
        char p[PARAM_LEN], *content = NULL;
        snprintf(p, sizeof p, "messages[%zu]", i);
        if (!json_is_object(m)) return bad_type(e, p, "an object", m);
        if (parse_role(m, i, &r->msgs[i].role, e)) return -1;
        if (parse_content(m, i, r->msgs[i].role, &content, e)) return -1;
        r->msgs[i].content = content;
    }
    return 0;
}

/* ---- completion prompt ---------------------------------------------------------------- */

static int parse_ids(const json_t *a, uint32_t n_vocab, bn_api_request *r, bn_api_error *e)
{
    size_t n = json_array_size(a), i;
    json_t *v;
    if (!(r->prompt_ids = malloc(n * sizeof *r->prompt_ids))) return oom(e);
    json_array_foreach(a, i, v) {
        long long id;
        if (as_int(v, &id) == -1)
            return bad(e, "prompt", "'prompt' must be a string or an array of token ids; "
                                    "element %zu is %s", i, type_name(v));
        if (id < 0 || id >= (long long)n_vocab)
            return bad(e, "prompt", "'prompt' token id %lld at index %zu is out of range "
                                    "[0, %u)", id, i, n_vocab);
        r->prompt_ids[i] = (int32_t)id;
    }
    r->n_prompt_ids = n;
    return 0;
}

/* Is every element of a a string or an array (a batch of prompts)? */
static int is_batch(const json_t *a)
{
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) if (!json_is_string(v) && !json_is_array(v)) return 0;
    return json_array_size(a) > 0;
}

static int parse_prompt(const json_t *root, uint32_t n_vocab, bn_api_request *r,
                        bn_api_error *e)
{
    json_t *v = field(root, "prompt");
    if (!v) return bad(e, "prompt", "'prompt' is required");
    if (json_is_array(v) && is_batch(v)) {
        /* a one-element batch ["text"] or [[ids]] is the same as its element */
        if (json_array_size(v) > 1)
            return bad(e, "prompt", "batched prompts (an array of several prompts) are not supported");
        v = json_array_get(v, 0);
    }
    if (json_is_string(v)) {
        if (json_string_length(v) == 0) return bad(e, "prompt", "'prompt' must not be empty");
        if (!(r->prompt = dup_str(v))) return oom(e);
        r->prompt_len = json_string_length(v);
        return 0;
    }
    if (!json_is_array(v)) return bad_type(e, "prompt", "a string or an array of token ids", v);
    if (json_array_size(v) == 0) return bad(e, "prompt", "'prompt' must not be empty");
    return parse_ids(v, n_vocab, r, e);
}

/* ---- generation parameters ------------------------------------------------------------ */

/* Real-valued sampling fields: [lo, hi], or (lo, hi] when lo_open. */
static const struct num_field {
    const char *key;
    double lo, hi;
    int lo_open;
    size_t off;
} NUM_FIELDS[] = {
    {"temperature", 0, 2, 0, offsetof(bn_sampling, temperature)},
    {"top_p", 0, 1, 1, offsetof(bn_sampling, top_p)},
    {"min_p", 0, 1, 0, offsetof(bn_sampling, min_p)},
    {"repetition_penalty", 0, 10, 1, offsetof(bn_sampling, repeat_penalty)},
    {"presence_penalty", -2, 2, 0, offsetof(bn_sampling, presence_penalty)},
    {"frequency_penalty", -2, 2, 0, offsetof(bn_sampling, frequency_penalty)},
};

static int parse_numbers(const json_t *root, bn_sampling *s, bn_api_error *e)
{
    for (size_t k = 0; k < sizeof NUM_FIELDS / sizeof NUM_FIELDS[0]; k++) {
        const struct num_field *f = &NUM_FIELDS[k];
        json_t *v = field(root, f->key);
        if (!v) continue;
        if (!json_is_number(v)) return bad_type(e, f->key, "a number", v);
        double d = json_number_value(v);
        if (d > f->hi || d < f->lo || (f->lo_open && d == f->lo))
            return bad(e, f->key, "'%s' must be in %c%g, %g], got %g", f->key,
                       f->lo_open ? '(' : '[', f->lo, f->hi, d);
        *(float *)((char *)s + f->off) = (float)d;
    }
    long long k;
    const json_t *v;
    char buf[32];
    int rc = get_int(root, "top_k", 1, &k, &v, e);
    if (rc < 0) return -1;
    if (rc && (k < -1 || k > INT32_MAX))
        return bad(e, "top_k", "'top_k' must be in [0, %d] (or -1 for off), got %s",
                   INT32_MAX, num_text(v, buf));
    if (rc) s->top_k = k == -1 ? 0 : (int32_t)k;
    return 0;
}

static int parse_max_tokens(const json_t *root, const bn_api_limits *lim, bn_api_request *r,
                            bn_api_error *e)
{
    /* 0 = no limit; a default above the limit is clamped to it */
    uint32_t max = lim && lim->max_max_tokens ? lim->max_max_tokens : UINT32_MAX;
    uint32_t def = lim && lim->default_max_tokens ? lim->default_max_tokens : 16;
    const char *key = field(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    long long n;
    const json_t *v;
    char buf[32];
    int rc = get_int(root, key, 1, &n, &v, e);
    if (rc < 0) return -1;
    if (!rc) {
        r->max_tokens = def < max ? def : max;
        return 0;
    }
    if (n < 1) return bad(e, key, "'%s' must be at least 1, got %s", key, num_text(v, buf));
    if (n > (long long)max)
        return bad(e, key, "'%s' must be at most %u, got %s", key, max, num_text(v, buf));
    r->max_tokens = (uint32_t)n;
    return 0;
}

static int parse_stop(const json_t *root, bn_api_request *r, bn_api_error *e)
{
    json_t *v = field(root, "stop"), *s;
    size_t i;
    if (!v) return 0;
    if (json_is_string(v)) {
        if (!json_string_length(v)) return bad(e, "stop", "'stop' must not be an empty string");
        if (!(r->stop[0] = dup_str(v))) return oom(e);
        r->n_stop = 1;
        return 0;
    }
    if (!json_is_array(v)) return bad_type(e, "stop", "a string or an array of strings", v);
    if (json_array_size(v) > BN_STOP_MAX)
        return bad(e, "stop", "'stop' may have at most %d entries, got %zu", BN_STOP_MAX,
                   json_array_size(v));
    json_array_foreach(v, i, s) {
        if (!json_is_string(s))
            return bad(e, "stop", "'stop' must be a string or an array of strings; element %zu "
                                  "is %s", i, type_name(s));
        if (!json_string_length(s))
            return bad(e, "stop", "'stop' must not contain empty strings (element %zu)", i);
        if (!(r->stop[i] = dup_str(s))) return oom(e);
        r->n_stop = i + 1;
    }
    return 0;
}

/* Fields whose presence with a "truthy" value asks for something not implemented here, for
 * the kinds (bit mask of bn_api_kind) where OpenAI defines them; elsewhere they are unknown. */
static const struct { const char *key, *msg; unsigned kinds; } UNSUPPORTED[] = {
    {"logprobs", "logprobs are not supported", BN_API_CHAT | BN_API_COMPLETION},
    {"top_logprobs", "logprobs are not supported", BN_API_CHAT},
    {"tools", "tools are not supported", BN_API_CHAT},
    {"tool_choice", "tools are not supported", BN_API_CHAT},
    {"functions", "tools are not supported", BN_API_CHAT},
    {"function_call", "tools are not supported", BN_API_CHAT},
    {"echo", "echo is not supported", BN_API_COMPLETION},
    {"suffix", "suffix is not supported", BN_API_COMPLETION},
};

/* false, 0, "", [], {} and "none" ask for nothing (null was already dropped by field()). */
static int truthy(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_FALSE: return 0;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0;
    case JSON_STRING: return json_string_length(v) && strcmp(json_string_value(v), "none");
    case JSON_ARRAY: return json_array_size(v) != 0;
    case JSON_OBJECT: return json_object_size(v) != 0;
    default: return 1;
    }
}

static int parse_unsupported(enum bn_api_kind kind, const json_t *root, bn_api_error *e)
{
    for (size_t k = 0; k < sizeof UNSUPPORTED / sizeof UNSUPPORTED[0]; k++) {
        json_t *v = UNSUPPORTED[k].kinds & kind ? field(root, UNSUPPORTED[k].key) : NULL;
        if (v && truthy(v)) return bad(e, UNSUPPORTED[k].key, "%s", UNSUPPORTED[k].msg);
    }
    static const char *const ONE[] = {"n", "best_of"};  /* best_of: completions only */
    for (size_t k = 0; k < (kind == BN_API_COMPLETION ? 2u : 1u); k++) {
        long long n;
        const json_t *v;
        char buf[32];
        int rc = get_int(root, ONE[k], 1, &n, &v, e);
        if (rc < 0) return -1;
        if (rc && n < 1)
            return bad(e, ONE[k], "'%s' must be at least 1, got %s", ONE[k], num_text(v, buf));
        if (rc && n > 1) return bad(e, ONE[k], "%s > 1 is not supported", ONE[k]);
    }
    json_t *rf = field(root, "response_format"), *t;
    if (!rf) return 0;
    if (!json_is_object(rf)) return bad_type(e, "response_format", "an object", rf);
    if (!(t = field(rf, "type"))) return bad(e, "response_format.type", "'response_format.type' is required");
    if (!json_is_string(t)) return bad_type(e, "response_format.type", "a string", t);
    if (strcmp(json_string_value(t), "text"))
        return bad(e, "response_format.type", "response_format type '%.40s' is not supported",
                   json_string_value(t));
    return 0;
}

/* vLLM's scheduling priority: an integer, lower first. */
static int parse_priority(const json_t *root, bn_api_request *r, bn_api_error *e)
{
    long long p;
    const json_t *v;
    char buf[32];
    int rc = get_int(root, "priority", 1, &p, &v, e);
    if (rc <= 0) return rc;
    if (p < -BN_PRIORITY_LIMIT || p > BN_PRIORITY_LIMIT)
        return bad(e, "priority", "'priority' must be %d..%d, got %s", -BN_PRIORITY_LIMIT,
                   BN_PRIORITY_LIMIT, num_text(v, buf));
    r->priority = (int)p;
    r->has_priority = 1;
    return 0;
}

static int parse_options(const json_t *root, bn_api_request *r, bn_api_error *e)
{
    json_t *v;
    if (get_bool(root, "stream", "stream", &r->stream, e)) return -1;
    if (get_bool(root, "ignore_eos", "ignore_eos", &r->ignore_eos, e)) return -1;
    if ((v = field(root, "stream_options"))) {
        if (!json_is_object(v)) return bad_type(e, "stream_options", "an object", v);
        int usage = 0;
        if (get_bool(v, "include_usage", "stream_options.include_usage", &usage, e)) return -1;
        r->include_usage = r->stream && usage;
    }
    if ((v = field(root, "model"))) {
        if (!json_is_string(v)) return bad_type(e, "model", "a string", v);
        if (!(r->model = dup_str(v))) return oom(e);
    }
    long long seed;
    const json_t *sv;
    int rc = get_int(root, "seed", 0, &seed, &sv, e);
    if (rc < 0) return -1;
    if (rc) {
        r->has_seed = 1;
        r->sampling.seed = (uint64_t)seed;
    }
    return parse_priority(root, r, e);
}

static int parse_root(enum bn_api_kind kind, const json_t *root, const bn_api_limits *lim,
                      uint32_t n_vocab, bn_api_request *r, bn_api_error *e)
{
    if (kind == BN_API_CHAT ? parse_messages(root, r, e) : parse_prompt(root, n_vocab, r, e))
        return -1;
    if (parse_max_tokens(root, lim, r, e) || parse_numbers(root, &r->sampling, e) ||
        parse_stop(root, r, e) || parse_unsupported(kind, root, e) || parse_options(root, r, e))
        return -1;
    return 0;
}

/* ---- the body ------------------------------------------------------------------------- */

/* Is the nesting of [ and { (outside strings) deeper than BN_API_MAX_DEPTH? Checked before
 * jansson, whose parser recurses once per level. */
static int too_deep(const char *s, size_t len)
{
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') in_str = 0;
        } else if (c == '"') in_str = 1;
        else if (c == '[' || c == '{') {
            if (++depth > BN_API_MAX_DEPTH) return 1;
        } else if ((c == ']' || c == '}') && depth > 0) depth--;
    }
    return 0;
}

static int decode_fail(const json_error_t *je, bn_api_error *e)
{
    /* out of memory, not the client's fault: jansson fails some allocations with no message */
    if (!je->text[0] || json_error_code(je) == json_error_out_of_memory) return oom(e);
    switch (json_error_code(je)) {
    case json_error_invalid_utf8:
        return bad(e, "", "invalid UTF-8 in the request body (line %d, column %d)", je->line,
                   je->column);
    case json_error_null_character:
        return bad(e, "", "strings must not contain \\u0000 (line %d, column %d)", je->line,
                   je->column);
    case json_error_stack_overflow:
        return bad(e, "", "JSON nesting is deeper than %d levels", BN_API_MAX_DEPTH);
    default:
        return bad(e, "", "invalid JSON: %s (line %d, column %d)", je->text, je->line, je->column);
    }
}

static int body_is_blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!strchr(" \t\r\n", s[i]) || !s[i]) return 0;
    return 1;
}

int bn_api_parse(enum bn_api_kind kind, const char *body, size_t len, const bn_api_limits *lim,
                 uint32_t n_vocab, bn_api_request *r, bn_api_error *e)
{
    memset(r, 0, sizeof *r);
    r->kind = kind;
    /* OpenAI's defaults: temperature 1, top_p 1, every other filter and penalty off */
    r->sampling.temperature = 1.0f;
    r->sampling.top_p = 1.0f;
    r->sampling.repeat_penalty = 1.0f;
    if (!body || body_is_blank(body, len)) return bad(e, "", "the request body is empty");
    if (too_deep(body, len))
        return bad(e, "", "JSON nesting is deeper than %d levels", BN_API_MAX_DEPTH);
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_DECODE_ANY, &je);
    if (!root) return decode_fail(&je, e);
    int rc = json_is_object(root) ? parse_root(kind, root, lim, n_vocab, r, e)
                                  : bad(e, "", "the request body must be a JSON object, got %s",
                                        type_name(root));
    json_decref(root);
    if (rc) {
        bn_api_request_free(r);
        r->kind = kind;
    }
    return rc;
}

void bn_api_request_free(bn_api_request *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n_msgs; i++) free((char *)r->msgs[i].content);
    free(r->msgs);
    free(r->model);
    free(r->prompt);
    free(r->prompt_ids);
    for (size_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

/* ---- responses ------------------------------------------------------------------------ */

const char *bn_api_finish_reason(enum bn_finish f)
{
    return f == BN_FINISH_LENGTH ? "length" : "stop";
}

static const char *object_name(enum bn_api_kind kind, int chunk)
{
    if (kind != BN_API_CHAT) return "text_completion";
    return chunk ? "chat.completion.chunk" : "chat.completion";
}

/* {"id","object","created","model"}: the head of every response and chunk. */
static json_t *head(enum bn_api_kind kind, int chunk, const char *id, long created,
                    const char *model, int *fail)
{
    json_t *j = json_object();
    put(j, "id", jcstr(id), fail);
    put(j, "object", json_string(object_name(kind, chunk)), fail);
    put(j, "created", json_integer(created), fail);
    put(j, "model", jcstr(model), fail);
    return j;
}

static json_t *usage_obj(const bn_api_usage *u, int *fail)
{
    json_t *j = json_object(), *d = json_object();
    put(j, "prompt_tokens", json_integer(u->prompt_tokens), fail);
    put(j, "completion_tokens", json_integer(u->completion_tokens), fail);
    put(j, "total_tokens", json_integer((json_int_t)u->prompt_tokens + u->completion_tokens), fail);
    put(d, "cached_tokens", json_integer(u->cached_tokens), fail);
    put(j, "prompt_tokens_details", d, fail);
    return j;
}

/* [{"index":0, key: body, "logprobs":null, "finish_reason": finish or null}] */
static json_t *choices(const char *key, json_t *body, const char *finish, int *fail)
{
    json_t *c = json_object(), *a = json_array();
    put(c, "index", json_integer(0), fail);
    put(c, key, body, fail);
    put(c, "logprobs", json_null(), fail);
    put(c, "finish_reason", finish ? jcstr(finish) : json_null(), fail);
    if (json_array_append_new(a, c)) *fail = 1;
    return a;
}

/* The chat message / delta, or the completion text. */
static json_t *choice_body(enum bn_api_kind kind, int role, int content, const char *text,
                           size_t len, int *fail)
{
    if (kind != BN_API_CHAT) return jstr(text, len);
    json_t *b = json_object();
    if (role) put(b, "role", json_string("assistant"), fail);
    if (content) put(b, "content", jstr(text, len), fail);
    return b;
}

char *bn_api_response_json(enum bn_api_kind kind, const char *id, long created, const char *model,
                           const char *text, size_t text_len, const char *finish_reason,
                           const bn_api_usage *u)
{
    int fail = 0;
    json_t *j = head(kind, 0, id, created, model, &fail);
    json_t *body = choice_body(kind, 1, 1, text, text_len, &fail);
    put(j, "choices", choices(kind == BN_API_CHAT ? "message" : "text", body, finish_reason, &fail),
        &fail);
    if (u) put(j, "usage", usage_obj(u, &fail), &fail);
    return dump(j, fail);
}

char *bn_api_stream_chunk(enum bn_api_kind kind, const char *id, long created, const char *model,
                          const char *text, size_t text_len, int first, const char *finish_reason,
                          size_t *len)
{
    int fail = 0;
    json_t *j = head(kind, 1, id, created, model, &fail);
    /* OpenAI: the first delta carries the role (and "" content), a final empty one is {} */
    json_t *body = choice_body(kind, first, first || text_len, text, text_len, &fail);
    put(j, "choices", choices(kind == BN_API_CHAT ? "delta" : "text", body, finish_reason, &fail),
        &fail);
    return sse(j, fail, len);
}

char *bn_api_stream_usage(enum bn_api_kind kind, const char *id, long created, const char *model,
                          const bn_api_usage *u, size_t *len)
{
    static const bn_api_usage zero;
    int fail = 0;
    json_t *j = head(kind, 1, id, created, model, &fail);
    put(j, "choices", json_array(), &fail);
    put(j, "usage", usage_obj(u ? u : &zero, &fail), &fail);
    return sse(j, fail, len);
}
