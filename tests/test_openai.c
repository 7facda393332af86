/* The OpenAI request parser/validator (a table of bad and edge bodies, each with its status,
 * param and message) and the response / SSE builders (their output parsed back with jansson). */
#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "server/openai.h"

#define N_VOCAB 512
static const bn_api_limits LIM = {.default_max_tokens = 64, .max_max_tokens = 1024};

#define C BN_API_CHAT
#define P BN_API_COMPLETION

/* A chat body with one user message and extra top-level fields. */
#define CHAT(extra) "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]" extra "}"
#define COMPL(extra) "{\"prompt\":\"hi\"" extra "}"

static const struct bad_case {
    enum bn_api_kind kind;
    const char *body;
    const char *param;   /* "" = null */
    const char *msg;     /* a substring of the message */
} BAD[] = {
    /* the body */
    {C, "", "", "body is empty"},
    {C, " \r\n\t", "", "body is empty"},
    {C, "{\"messages\": [", "", "invalid JSON"},
    {C, "{\"messages\": [", "", "line 1, column"},
    {C, "{\"a\":1,}", "", "invalid JSON"},
    {C, "{} x", "", "invalid JSON"},
    {C, "{'a':1}", "", "invalid JSON"},
    {C, "[1,2]", "", "must be a JSON object, got array"},
    {C, "\"hi\"", "", "must be a JSON object, got string"},
    {P, "42", "", "must be a JSON object, got integer"},
    {P, "null", "", "must be a JSON object, got null"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\xff\"}]}", "", "invalid UTF-8"},
    {C, "{\"model\":\"\xc0\xaf\"," "\"messages\":[]}", "", "invalid UTF-8"},
    {P, "{\"prompt\":\"a\\u0000b\"}", "", "\\u0000"},
    {P, "{\"prompt\":\"\\ud800\"}", "", "invalid JSON"},
    {P, "{\"prompt\":[1], \"seed\": 99999999999999999999}", "", "invalid JSON"},
    /* messages */
    {C, "{}", "messages", "'messages' is required"},
    {C, "{\"messages\":null}", "messages", "'messages' is required"},
    {C, "{\"messages\":\"hi\"}", "messages", "'messages' must be an array, got string"},
    {C, "{\"messages\":{}}", "messages", "must be an array, got object"},
    {C, "{\"messages\":[]}", "messages", "must not be empty"},
    {C, "{\"messages\":[1]}", "messages[0]", "'messages[0]' must be an object, got integer"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"},"
        "{\"role\":\"assistant\",\"content\":\"c\"},{\"role\":\"wizard\",\"content\":\"d\"}]}",
     "messages[3].role", "got 'wizard'"},
    {C, "{\"messages\":[{\"content\":\"a\"}]}", "messages[0].role", "is required"},
    {C, "{\"messages\":[{\"role\":1,\"content\":\"a\"}]}", "messages[0].role",
     "must be a string, got integer"},
    {C, "{\"messages\":[{\"role\":\"User\",\"content\":\"a\"}]}", "messages[0].role", "one of"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content",
     "must be a string or an array of text parts, got integer"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":{}}]}", "messages[0].content", "got object"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":null}]}", "messages[0].content", "is required"},
    {C, "{\"messages\":[{\"role\":\"system\"}]}", "messages[0].content", "is required"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
        "{\"type\":\"image_url\",\"image_url\":{\"url\":\"http://x/y.png\"}}]}]}",
     "messages[0].content[1].type", "'image_url' is not supported"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":[\"a\"]}]}", "messages[0].content[0]",
     "must be an object, got string"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"a\"}]}]}",
     "messages[0].content[0].type", "is required"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":3}]}]}",
     "messages[0].content[0].text", "must be a string, got integer"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}",
     "messages[0].content[0].text", "is required"},
    /* prompt */
    {P, "{}", "prompt", "'prompt' is required"},
    {P, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "prompt", "is required"},
    {P, "{\"prompt\":\"\"}", "prompt", "must not be empty"},
    {P, "{\"prompt\":[]}", "prompt", "must not be empty"},
    {P, "{\"prompt\":[\"\"]}", "prompt", "must not be empty"},
    {P, "{\"prompt\":[[]]}", "prompt", "must not be empty"},
    {P, "{\"prompt\":[1,2,512]}", "prompt", "token id 512 at index 2 is out of range [0, 512)"},
    {P, "{\"prompt\":[-1]}", "prompt", "token id -1 at index 0 is out of range"},
    {P, "{\"prompt\":[1,\"a\"]}", "prompt", "element 1 is string"},
    {P, "{\"prompt\":[\"a\",1]}", "prompt", "element 0 is string"},
    {P, "{\"prompt\":[1,2.5]}", "prompt", "element 1 is number"},
    {P, "{\"prompt\":[\"a\",\"b\"]}", "prompt", "batched prompts"},
    {P, "{\"prompt\":[[1],[2]]}", "prompt", "batched prompts"},
    {P, "{\"prompt\":{}}", "prompt", "must be a string or an array of token ids, got object"},
    {P, "{\"prompt\":true}", "prompt", "got boolean"},
    /* max_tokens */
    {C, CHAT(",\"max_tokens\":0"), "max_tokens", "'max_tokens' must be at least 1, got 0"},
    {C, CHAT(",\"max_tokens\":-1"), "max_tokens", "at least 1, got -1"},
    {C, CHAT(",\"max_tokens\":1.5"), "max_tokens", "'max_tokens' must be an integer, got number"},
    {P, COMPL(",\"max_tokens\":\"10\""), "max_tokens", "must be an integer, got string"},
    {P, COMPL(",\"max_tokens\":1e30"), "max_tokens", "at most 1024, got 1e+30"},
    {P, COMPL(",\"max_tokens\":9223372036854775807"), "max_tokens", "at most 1024"},
    {P, COMPL(",\"max_tokens\":4294967297"), "max_tokens", "at most 1024"},
    {C, CHAT(",\"max_tokens\":1025"), "max_tokens", "at most 1024, got 1025"},
    {C, CHAT(",\"max_completion_tokens\":0"), "max_completion_tokens", "at least 1"},
    {C, CHAT(",\"max_tokens\":5,\"max_completion_tokens\":2000"), "max_completion_tokens", "at most"},
    /* sampling */
    {C, CHAT(",\"temperature\":-1"), "temperature", "'temperature' must be in [0, 2], got -1"},
    {C, CHAT(",\"temperature\":3"), "temperature", "got 3"},
    {C, CHAT(",\"temperature\":\"hot\""), "temperature", "'temperature' must be a number, got string"},
    {C, CHAT(",\"top_p\":0"), "top_p", "'top_p' must be in (0, 1], got 0"},
    {C, CHAT(",\"top_p\":1.5"), "top_p", "got 1.5"},
    {C, CHAT(",\"top_k\":-2"), "top_k", "or -1 for off"},
    {C, CHAT(",\"top_k\":2.5"), "top_k", "must be an integer, got number"},
    {C, CHAT(",\"top_k\":3000000000"), "top_k", "got 3000000000"},
    {C, CHAT(",\"min_p\":1.01"), "min_p", "[0, 1]"},
    {C, CHAT(",\"repetition_penalty\":0"), "repetition_penalty", "(0, 10]"},
    {C, CHAT(",\"repetition_penalty\":11"), "repetition_penalty", "got 11"},
    {C, CHAT(",\"presence_penalty\":2.5"), "presence_penalty", "[-2, 2]"},
    {C, CHAT(",\"frequency_penalty\":-3"), "frequency_penalty", "got -3"},
    {C, CHAT(",\"frequency_penalty\":[]"), "frequency_penalty", "must be a number, got array"},
    {C, CHAT(",\"seed\":\"x\""), "seed", "'seed' must be an integer, got string"},
    {C, CHAT(",\"seed\":1.5"), "seed", "must be an integer"},
    {C, CHAT(",\"seed\":1e30"), "seed", "64-bit integer"},
    /* scheduling */
    {C, CHAT(",\"priority\":\"high\""), "priority", "'priority' must be an integer, got string"},
    {P, "{\"prompt\":\"x\",\"priority\":1.5}", "priority", "'priority' must be an integer, got number"},
    {C, CHAT(",\"priority\":true"), "priority", "must be an integer, got boolean"},
    {C, CHAT(",\"priority\":[1]"), "priority", "must be an integer, got array"},
    {C, CHAT(",\"priority\":1000001"), "priority", "'priority' must be -1000000..1000000, got 1000001"},
    {C, CHAT(",\"priority\":-1e300"), "priority", "must be -1000000..1000000, got -1e+300"},
    /* stop */
    {C, CHAT(",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\","
             "\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]"), "stop", "at most 16 entries, got 17"},
    {C, CHAT(",\"stop\":[\"a\",1]"), "stop", "element 1 is integer"},
    {C, CHAT(",\"stop\":[\"a\",\"\"]"), "stop", "empty strings (element 1)"},
    {C, CHAT(",\"stop\":\"\""), "stop", "must not be an empty string"},
    {C, CHAT(",\"stop\":5"), "stop", "must be a string or an array of strings, got integer"},
    /* options */
    {C, CHAT(",\"n\":2"), "n", "n > 1 is not supported"},
    {P, COMPL(",\"n\":0"), "n", "at least 1"},
    {P, COMPL(",\"n\":\"1\""), "n", "must be an integer, got string"},
    {P, COMPL(",\"best_of\":3"), "best_of", "best_of > 1 is not supported"},
    {C, CHAT(",\"stream\":\"yes\""), "stream", "'stream' must be a boolean, got string"},
    {C, CHAT(",\"stream\":1"), "stream", "got integer"},
    {C, CHAT(",\"stream\":true,\"stream_options\":1"), "stream_options", "must be an object"},
    {C, CHAT(",\"stream\":true,\"stream_options\":{\"include_usage\":\"x\"}"),
     "stream_options.include_usage", "'stream_options.include_usage' must be a boolean"},
    {C, CHAT(",\"ignore_eos\":\"no\""), "ignore_eos", "must be a boolean"},
    {C, CHAT(",\"model\":5"), "model", "'model' must be a string, got integer"},
    {C, CHAT(",\"logprobs\":true"), "logprobs", "logprobs are not supported"},
    {C, CHAT(",\"top_logprobs\":3"), "top_logprobs", "logprobs are not supported"},
    {P, COMPL(",\"logprobs\":5"), "logprobs", "logprobs are not supported"},
    {C, CHAT(",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]"), "tools",
     "tools are not supported"},
    {C, CHAT(",\"tool_choice\":\"auto\""), "tool_choice", "tools are not supported"},
    {C, CHAT(",\"functions\":[{\"name\":\"f\"}]"), "functions", "not supported"},
    {P, COMPL(",\"echo\":true"), "echo", "echo is not supported"},
    {P, COMPL(",\"suffix\":\"end\""), "suffix", "suffix is not supported"},
    {C, CHAT(",\"response_format\":{\"type\":\"json_object\"}"), "response_format.type",
     "'json_object' is not supported"},
    {C, CHAT(",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{}}"),
     "response_format.type", "not supported"},
    {C, CHAT(",\"response_format\":\"text\""), "response_format", "must be an object, got string"},
    {C, CHAT(",\"response_format\":{}"), "response_format.type", "is required"},
};

static void check_fail(enum bn_api_kind kind, const char *body, size_t len, const char *param, const char *msg,
                       const char *what)
{
    bn_api_request r;
    bn_api_error e;
    memset(&e, 0, sizeof e);
    int rc = bn_api_parse(kind, body, len, &LIM, N_VOCAB, &r, &e);
    ck_assert_msg(rc == -1, "%s: accepted", what);
    ck_assert_msg(e.status == 400, "%s: status %d", what, e.status);
    ck_assert_str_eq(e.type, "invalid_request_error");
    ck_assert_msg(!strcmp(e.param, param), "%s: param '%s', want '%s'", what, e.param, param);
    ck_assert_msg(strstr(e.message, msg) != NULL, "%s: message '%s' lacks '%s'", what, e.message,
                  msg);
    ck_assert_str_eq(e.code, "");
    /* the request was left empty and freeable; the error's JSON is valid */
    ck_assert_ptr_null(r.msgs);
    ck_assert_ptr_null(r.prompt);
    ck_assert_uint_eq(r.n_stop, 0);
    bn_api_request_free(&r);
    char *js = bn_api_error_json(&e);
    json_t *j = json_loads(js, 0, NULL);
    ck_assert_msg(j != NULL, "%s: error JSON invalid: %s", what, js);
    json_decref(j);
    free(js);
}

START_TEST(bad_body_table)
{
    const struct bad_case *c = &BAD[_i];
    char what[80];
    snprintf(what, sizeof what, "case %d (%.60s)", _i, c->body);
    check_fail(c->kind, c->body, strlen(c->body), c->param, c->msg, what);
}
END_TEST

/* Parses body (must succeed) into *r. */
static void parse_ok(enum bn_api_kind kind, const char *body, size_t len, const bn_api_limits *lim,
                     bn_api_request *r)
{
    bn_api_error e;
    int rc = bn_api_parse(kind, body, len, lim, N_VOCAB, r, &e);
    ck_assert_msg(rc == 0, "rejected (%d, param '%s'): %s\nbody: %.200s", e.status, e.param,
                  e.message, body);
}

static void parse_ok_s(enum bn_api_kind kind, const char *body, bn_api_request *r)
{
    parse_ok(kind, body, strlen(body), &LIM, r);
}

START_TEST(chat_defaults)
{
    bn_api_request r;
    parse_ok_s(C, CHAT(""), &r);
    ck_assert_int_eq(r.kind, BN_API_CHAT);
    ck_assert_uint_eq(r.n_msgs, 1);
    ck_assert_str_eq(r.msgs[0].role, "user");
    ck_assert_str_eq(r.msgs[0].content, "hi");
    ck_assert_uint_eq(r.max_tokens, 64);
    ck_assert(r.sampling.temperature == 1.0f);
    ck_assert(r.sampling.top_p == 1.0f);
    ck_assert_int_eq(r.sampling.top_k, 0);
    ck_assert(r.sampling.min_p == 0.0f);
    ck_assert(r.sampling.repeat_penalty == 1.0f);
    ck_assert(r.sampling.presence_penalty == 0.0f && r.sampling.frequency_penalty == 0.0f);
    ck_assert_int_eq(r.has_seed, 0);
    ck_assert_int_eq(r.has_priority, 0);
    ck_assert_int_eq(r.priority, 0);
    ck_assert_int_eq(r.stream, 0);
    ck_assert_int_eq(r.include_usage, 0);
    ck_assert_int_eq(r.ignore_eos, 0);
    ck_assert_ptr_null(r.model);
    ck_assert_uint_eq(r.n_stop, 0);
    ck_assert_ptr_null(r.prompt);
    ck_assert_ptr_null(r.prompt_ids);
    bn_api_request_free(&r);
}
END_TEST

START_TEST(chat_roles_and_content)
{
    bn_api_request r;
    parse_ok_s(C, "{\"messages\":["
                  "{\"role\":\"developer\",\"content\":\"be brief\"},"
                  "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                  "{\"type\":\"text\",\"text\":\"b\\u00e9\"}],\"name\":\"bob\"},"
                  "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]},"
                  "{\"role\":\"assistant\"},"
                  "{\"role\":\"tool\",\"content\":\"42\",\"tool_call_id\":\"x\"},"
                  "{\"role\":\"user\",\"content\":[]},"
                  "{\"role\":\"system\",\"content\":\"[{not json\"}]}", &r);
    ck_assert_uint_eq(r.n_msgs, 7);
    ck_assert_str_eq(r.msgs[0].role, "system");
    ck_assert_str_eq(r.msgs[0].content, "be brief");
    ck_assert_str_eq(r.msgs[1].content, "ab\xc3\xa9");
    ck_assert_str_eq(r.msgs[2].role, "assistant");
    ck_assert_str_eq(r.msgs[2].content, "");
    ck_assert_str_eq(r.msgs[3].content, "");
    ck_assert_str_eq(r.msgs[4].role, "tool");
    ck_assert_str_eq(r.msgs[5].content, "");
    ck_assert_str_eq(r.msgs[6].content, "[{not json");
    bn_api_request_free(&r);
    ck_assert_ptr_null(r.msgs);
    bn_api_request_free(&r); /* twice is harmless */
}
END_TEST

START_TEST(completion_prompts)
{
    bn_api_request r;
    parse_ok_s(P, "{\"prompt\":\"Once upon\"}", &r);
    ck_assert_int_eq(r.kind, BN_API_COMPLETION);
    ck_assert_str_eq(r.prompt, "Once upon");
    ck_assert_uint_eq(r.prompt_len, 9);
    ck_assert_ptr_null(r.prompt_ids);
    bn_api_request_free(&r);

    parse_ok_s(P, "{\"prompt\":[\"one string\"]}", &r);
    ck_assert_str_eq(r.prompt, "one string");
    bn_api_request_free(&r);

    parse_ok_s(P, "{\"prompt\":[0, 1, 511, 2.0]}", &r);
    ck_assert_ptr_null(r.prompt);
    ck_assert_uint_eq(r.n_prompt_ids, 4);
    ck_assert_int_eq(r.prompt_ids[0], 0);
    ck_assert_int_eq(r.prompt_ids[2], 511);
    ck_assert_int_eq(r.prompt_ids[3], 2);
    bn_api_request_free(&r);

    parse_ok_s(P, "{\"prompt\":[[7, 8]]}", &r);
    ck_assert_uint_eq(r.n_prompt_ids, 2);
    ck_assert_int_eq(r.prompt_ids[1], 8);
    bn_api_request_free(&r);
}
END_TEST

START_TEST(sampling_fields)
{
    bn_api_request r;
    parse_ok_s(C, CHAT(",\"temperature\":0,\"top_p\":0.5,\"top_k\":40,\"min_p\":0.05,"
                       "\"repetition_penalty\":1.1,\"presence_penalty\":-2,"
                       "\"frequency_penalty\":2,\"max_tokens\":10.0,\"ignore_eos\":true"), &r);
    ck_assert(r.sampling.temperature == 0.0f);
    ck_assert(r.sampling.top_p == 0.5f);
    ck_assert_int_eq(r.sampling.top_k, 40);
    ck_assert(r.sampling.min_p == 0.05f);
    ck_assert(r.sampling.repeat_penalty == 1.1f);
    ck_assert(r.sampling.presence_penalty == -2.0f);
    ck_assert(r.sampling.frequency_penalty == 2.0f);
    ck_assert_uint_eq(r.max_tokens, 10);
    ck_assert_int_eq(r.ignore_eos, 1);
    bn_api_request_free(&r);

    parse_ok_s(C, CHAT(",\"top_k\":-1,\"temperature\":2,\"top_p\":1,\"max_tokens\":1024"), &r);
    ck_assert_int_eq(r.sampling.top_k, 0);
    ck_assert(r.sampling.temperature == 2.0f);
    ck_assert_uint_eq(r.max_tokens, 1024);
    bn_api_request_free(&r);
}
END_TEST

START_TEST(max_completion_tokens_alias)
{
    bn_api_request r;
    parse_ok_s(C, CHAT(",\"max_completion_tokens\":12"), &r);
    ck_assert_uint_eq(r.max_tokens, 12);
    bn_api_request_free(&r);
    /* both: max_completion_tokens wins, the other is not even range-checked */
    parse_ok_s(C, CHAT(",\"max_tokens\":5000,\"max_completion_tokens\":7"), &r);
    ck_assert_uint_eq(r.max_tokens, 7);
    bn_api_request_free(&r);
    parse_ok_s(C, CHAT(",\"max_tokens\":9,\"max_completion_tokens\":null"), &r);
    ck_assert_uint_eq(r.max_tokens, 9);
    bn_api_request_free(&r);
}
END_TEST

START_TEST(limits_defaults)
{
    bn_api_request r;
    bn_api_limits big = {.default_max_tokens = 5000, .max_max_tokens = 100};
    parse_ok(C, CHAT(""), strlen(CHAT("")), &big, &r);
    ck_assert_uint_eq(r.max_tokens, 100);  /* a default above the cap is clamped */
    bn_api_request_free(&r);
    bn_api_limits none = {0};
    parse_ok(C, CHAT(",\"max_tokens\":100000"), strlen(CHAT(",\"max_tokens\":100000")), &none, &r);
    ck_assert_uint_eq(r.max_tokens, 100000);  /* 0 = no cap */
    bn_api_request_free(&r);
    parse_ok(C, CHAT(""), strlen(CHAT("")), NULL, &r);
    ck_assert_uint_eq(r.max_tokens, 16);
    bn_api_request_free(&r);
}
END_TEST

START_TEST(seed_handling)
{
    static const struct { const char *body; int has; uint64_t seed; } T[] = {
        {CHAT(""), 0, 0},
        {CHAT(",\"seed\":null"), 0, 0},
        {CHAT(",\"seed\":0"), 1, 0},
        {CHAT(",\"seed\":42"), 1, 42},
        {CHAT(",\"seed\":-1"), 1, UINT64_MAX},
        {CHAT(",\"seed\":9223372036854775807"), 1, 9223372036854775807ull},
        {CHAT(",\"seed\":-9223372036854775808"), 1, 9223372036854775808ull},
        {CHAT(",\"seed\":7.0"), 1, 7},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        bn_api_request r;
        parse_ok_s(C, T[i].body, &r);
        ck_assert_msg(r.has_seed == T[i].has, "%s", T[i].body);
        ck_assert_msg(r.sampling.seed == T[i].seed, "%s", T[i].body);
        bn_api_request_free(&r);
    }
}
END_TEST

/* vLLM's priority: an integer (integral reals too, as for every integer field), null = absent. */
START_TEST(priority_handling)
{
    static const struct { enum bn_api_kind kind; const char *body; int has, priority; } T[] = {
        {C, CHAT(""), 0, 0},
        {C, CHAT(",\"priority\":null"), 0, 0},
        {C, CHAT(",\"priority\":0"), 1, 0},
        {C, CHAT(",\"priority\":-3"), 1, -3},
        {C, CHAT(",\"priority\":10"), 1, 10},
        {C, CHAT(",\"priority\":2.0"), 1, 2},
        {C, CHAT(",\"priority\":-1000000"), 1, -1000000},
        {P, "{\"prompt\":\"x\",\"priority\":1000000}", 1, 1000000},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        bn_api_request r;
        parse_ok_s(T[i].kind, T[i].body, &r);
        ck_assert_msg(r.has_priority == T[i].has, "%s", T[i].body);
        ck_assert_msg(r.priority == T[i].priority, "%s: %d", T[i].body, r.priority);
        bn_api_request_free(&r);
    }
}
END_TEST

START_TEST(stream_options)
{
    static const struct { const char *body; int stream, usage; } T[] = {
        {CHAT(",\"stream\":true"), 1, 0},
        {CHAT(",\"stream\":true,\"stream_options\":{\"include_usage\":true}"), 1, 1},
        {CHAT(",\"stream\":true,\"stream_options\":{\"include_usage\":false}"), 1, 0},
        {CHAT(",\"stream\":true,\"stream_options\":{}"), 1, 0},
        {CHAT(",\"stream\":true,\"stream_options\":null"), 1, 0},
        {CHAT(",\"stream\":false,\"stream_options\":{\"include_usage\":true}"), 0, 0},
        {CHAT(",\"stream_options\":{\"include_usage\":true}"), 0, 0},
        {CHAT(",\"stream\":null"), 0, 0},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        bn_api_request r;
        parse_ok_s(C, T[i].body, &r);
        ck_assert_msg(r.stream == T[i].stream && r.include_usage == T[i].usage, "%s", T[i].body);
        bn_api_request_free(&r);
    }
}
END_TEST

START_TEST(stop_strings)
{
    bn_api_request r;
    parse_ok_s(C, CHAT(",\"stop\":\"\\n\\n\""), &r);
    ck_assert_uint_eq(r.n_stop, 1);
    ck_assert_str_eq(r.stop[0], "\n\n");
    bn_api_request_free(&r);
    parse_ok_s(C, CHAT(",\"stop\":[]"), &r);
    ck_assert_uint_eq(r.n_stop, 0);
    bn_api_request_free(&r);
    parse_ok_s(C, CHAT(",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\","
                       "\"11\",\"12\",\"13\",\"14\",\"15\",\"\xe2\x82\xac\"]"), &r);
    ck_assert_uint_eq(r.n_stop, BN_STOP_MAX);
    ck_assert_str_eq(r.stop[0], "1");
    ck_assert_str_eq(r.stop[15], "\xe2\x82\xac");
    bn_api_request_free(&r);
}
END_TEST

/* Duplicate keys: the last one wins (no JSON_REJECT_DUPLICATES, like OpenAI). */
START_TEST(duplicate_keys_last_wins)
{
    bn_api_request r;
    parse_ok_s(C, CHAT(",\"max_tokens\":5,\"max_tokens\":7"), &r);
    ck_assert_uint_eq(r.max_tokens, 7);
    bn_api_request_free(&r);
    parse_ok_s(C, "{\"messages\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &r);
    ck_assert_str_eq(r.msgs[0].content, "x");
    bn_api_request_free(&r);
    check_fail(C, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"messages\":5}",
               strlen("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"messages\":5}"),
               "messages", "must be an array", "duplicate, bad last");
}
END_TEST

START_TEST(unknown_and_null_fields)
{
    bn_api_request r;
    parse_ok_s(C, CHAT(",\"user\":\"u1\",\"logit_bias\":{\"5\":10},\"foo\":{\"bar\":[1,[2,{}]]},"
                       "\"metadata\":null,\"store\":false,\"parallel_tool_calls\":true,"
                       "\"skip_special_tokens\":true,\"prompt\":7"), &r);
    ck_assert_uint_eq(r.n_msgs, 1);
    bn_api_request_free(&r);
    /* null = absent for every optional field */
    parse_ok_s(C, CHAT(",\"temperature\":null,\"top_p\":null,\"top_k\":null,\"min_p\":null,"
                       "\"max_tokens\":null,\"stop\":null,\"seed\":null,\"n\":null,\"stream\":null,"
                       "\"model\":null,\"tools\":null,\"tool_choice\":null,\"logprobs\":null,"
                       "\"response_format\":null,\"ignore_eos\":null,\"presence_penalty\":null"), &r);
    ck_assert(r.sampling.temperature == 1.0f && r.sampling.top_p == 1.0f);
    ck_assert_uint_eq(r.max_tokens, 64);
    ck_assert_int_eq(r.has_seed, 0);
    ck_assert_ptr_null(r.model);
    bn_api_request_free(&r);
    /* the unsupported features, asked for nothing, are fine */
    parse_ok_s(C, CHAT(",\"n\":1,\"tools\":[],\"tool_choice\":\"none\",\"logprobs\":false,"
                       "\"top_logprobs\":0,\"response_format\":{\"type\":\"text\"},"
                       "\"model\":\"gpt-4o\""), &r);
    ck_assert_str_eq(r.model, "gpt-4o");
    bn_api_request_free(&r);
    parse_ok_s(P, COMPL(",\"echo\":false,\"suffix\":\"\",\"logprobs\":0,\"best_of\":1"), &r);
    bn_api_request_free(&r);
    /* a chat body's completion-only fields are unknown there (and the reverse) */
    parse_ok_s(C, CHAT(",\"echo\":true,\"suffix\":\"x\",\"best_of\":3"), &r);
    bn_api_request_free(&r);
    parse_ok_s(P, COMPL(",\"tools\":[{}],\"top_logprobs\":2"), &r);
    bn_api_request_free(&r);
}
END_TEST

/* "[[[...]]]" n deep as the value of a field of a chat body. */
static char *nested(size_t n, size_t *len)
{
    const char *pre = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"deep\":";
    size_t np = strlen(pre);
    char *b = malloc(np + 2 * n + 2);
    memcpy(b, pre, np);
    memset(b + np, '[', n);
    memset(b + np + n, ']', n);
    b[np + 2 * n] = '}';
    b[np + 2 * n + 1] = 0;
    *len = np + 2 * n + 1;
    return b;
}

START_TEST(nesting_limit)
{
    size_t len;
    char *b = nested(10000, &len);
    check_fail(C, b, len, "", "nesting is deeper than 32", "10000 deep");
    free(b);
    /* the root object is level 1: 31 more levels are fine, 32 are not */
    bn_api_request r;
    b = nested(BN_API_MAX_DEPTH - 1, &len);
    parse_ok(C, b, len, &LIM, &r);
    bn_api_request_free(&r);
    free(b);
    b = nested(BN_API_MAX_DEPTH, &len);
    check_fail(C, b, len, "", "nesting", "33 deep");
    free(b);
    /* brackets inside strings (and escaped quotes) do not count */
    char body[400];
    char br[200];
    memset(br, '[', 150);
    br[150] = 0;
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"\\\"%s{{\"}]}", br);
    parse_ok_s(C, body, &r);
    ck_assert_uint_eq(strlen(r.msgs[0].content), 153);
    bn_api_request_free(&r);
}
END_TEST

START_TEST(one_megabyte_string)
{
    const size_t n = 1u << 20;
    const char *pre = "{\"messages\":[{\"role\":\"user\",\"content\":\"";
    size_t np = strlen(pre);
    char *b = malloc(np + n + 4);
    memcpy(b, pre, np);
    memset(b + np, 'a', n);
    memcpy(b + np + n, "\"}]}", 4);
    bn_api_request r;
    parse_ok(C, b, np + n + 4, &LIM, &r);
    ck_assert_uint_eq(strlen(r.msgs[0].content), n);
    bn_api_request_free(&r);
    free(b);
}
END_TEST

START_TEST(too_many_messages)
{
    const char *one = "{\"role\":\"user\",\"content\":\"\"},";
    size_t n1 = strlen(one), n = BN_API_MAX_MESSAGES + 1;
    char *b = malloc(16 + n * n1), *o = b;
    o += sprintf(o, "{\"messages\":[");
    for (size_t i = 0; i < n; i++, o += n1) memcpy(o, one, n1);
    memcpy(o - 1, "]}", 3);
    check_fail(C, b, strlen(b), "messages", "at most 4096", "4097 messages");
    free(b);
}
END_TEST

/* ---- builders ------------------------------------------------------------------------- */

static json_t *load(const char *s, size_t len)
{
    json_error_t je;
    json_t *j = json_loadb(s, len, 0, &je);
    ck_assert_msg(j != NULL, "invalid JSON (%s): %s", je.text, s);
    return j;
}

/* The JSON inside one SSE event, checking the framing. */
static json_t *load_event(const char *ev, size_t len)
{
    ck_assert_ptr_nonnull(ev);
    ck_assert_uint_eq(strlen(ev), len);
    ck_assert_int_eq(strncmp(ev, "data: ", 6), 0);
    ck_assert_uint_ge(len, 8);
    ck_assert_int_eq(memcmp(ev + len - 2, "\n\n", 2), 0);
    ck_assert_ptr_null(memchr(ev, '\n', len - 2)); /* one line */
    return load(ev + 6, len - 8);
}

static const char *sget(json_t *o, const char *path)
{
    json_t *v = json_object_get(o, path);
    ck_assert_msg(json_is_string(v), "%s not a string", path);
    return json_string_value(v);
}

static json_int_t iget(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    ck_assert_msg(json_is_integer(v), "%s not an integer", key);
    return json_integer_value(v);
}

START_TEST(response_chat)
{
    bn_api_usage u = {.prompt_tokens = 10, .completion_tokens = 5, .cached_tokens = 3};
    const char text[] = "Hello \"world\"\n\xe2\x82\xac";
    char *s = bn_api_response_json(C, "chatcmpl-abc", 1700000000, "bitnet-2b", text,
                                   sizeof text - 1, "stop", &u);
    json_t *j = load(s, strlen(s));
    ck_assert_str_eq(sget(j, "id"), "chatcmpl-abc");
    ck_assert_str_eq(sget(j, "object"), "chat.completion");
    ck_assert_int_eq(iget(j, "created"), 1700000000);
    ck_assert_str_eq(sget(j, "model"), "bitnet-2b");
    json_t *ch = json_object_get(j, "choices");
    ck_assert_uint_eq(json_array_size(ch), 1);
    json_t *c0 = json_array_get(ch, 0);
    ck_assert_int_eq(iget(c0, "index"), 0);
    json_t *m = json_object_get(c0, "message");
    ck_assert_str_eq(sget(m, "role"), "assistant");
    ck_assert_str_eq(sget(m, "content"), text);
    ck_assert(json_is_null(json_object_get(c0, "logprobs")));
    ck_assert_str_eq(sget(c0, "finish_reason"), "stop");
    json_t *us = json_object_get(j, "usage");
    ck_assert_int_eq(iget(us, "prompt_tokens"), 10);
    ck_assert_int_eq(iget(us, "completion_tokens"), 5);
    ck_assert_int_eq(iget(us, "total_tokens"), 15);
    ck_assert_int_eq(iget(json_object_get(us, "prompt_tokens_details"), "cached_tokens"), 3);
    json_decref(j);
    free(s);
}
END_TEST

START_TEST(response_completion)
{
    bn_api_usage u = {.prompt_tokens = 4, .completion_tokens = 4096};
    char *s = bn_api_response_json(P, "cmpl-1", 5, "m", "abc", 3, "length", &u);
    json_t *j = load(s, strlen(s));
    ck_assert_str_eq(sget(j, "object"), "text_completion");
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    ck_assert_str_eq(sget(c0, "text"), "abc");
    ck_assert_ptr_null(json_object_get(c0, "message"));
    ck_assert_str_eq(sget(c0, "finish_reason"), "length");
    ck_assert_int_eq(iget(json_object_get(j, "usage"), "total_tokens"), 4100);
    json_decref(j);
    free(s);
    /* no usage, no finish reason, NULL model and text */
    s = bn_api_response_json(P, "cmpl-2", 5, NULL, NULL, 0, NULL, NULL);
    j = load(s, strlen(s));
    ck_assert_ptr_null(json_object_get(j, "usage"));
    ck_assert_str_eq(sget(j, "model"), "");
    c0 = json_array_get(json_object_get(j, "choices"), 0);
    ck_assert(json_is_null(json_object_get(c0, "finish_reason")));
    ck_assert_str_eq(sget(c0, "text"), "");
    json_decref(j);
    free(s);
}
END_TEST

START_TEST(stream_chunks_chat)
{
    size_t len;
    char *ev = bn_api_stream_chunk(C, "chatcmpl-x", 7, "m", "", 0, 1, NULL, &len);
    json_t *j = load_event(ev, len);
    ck_assert_str_eq(sget(j, "object"), "chat.completion.chunk");
    ck_assert_str_eq(sget(j, "id"), "chatcmpl-x");
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    json_t *d = json_object_get(c0, "delta");
    ck_assert_str_eq(sget(d, "role"), "assistant");
    ck_assert_str_eq(sget(d, "content"), "");
    ck_assert(json_is_null(json_object_get(c0, "finish_reason")));
    json_decref(j);
    free(ev);

    /* a later chunk: content only; text with newlines never breaks the event's one line */
    const char text[] = "a\n\nb\r\n\"q\"";
    ev = bn_api_stream_chunk(C, "chatcmpl-x", 7, "m", text, sizeof text - 1, 0, NULL, &len);
    j = load_event(ev, len);
    d = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "delta");
    ck_assert_ptr_null(json_object_get(d, "role"));
    ck_assert_str_eq(sget(d, "content"), text);
    json_decref(j);
    free(ev);

    /* the last: finish_reason, an empty delta */
    ev = bn_api_stream_chunk(C, "chatcmpl-x", 7, "m", "", 0, 0, "length", &len);
    j = load_event(ev, len);
    c0 = json_array_get(json_object_get(j, "choices"), 0);
    ck_assert_uint_eq(json_object_size(json_object_get(c0, "delta")), 0);
    ck_assert_str_eq(sget(c0, "finish_reason"), "length");
    json_decref(j);
    free(ev);
}
END_TEST

START_TEST(stream_chunks_completion_usage_error)
{
    size_t len;
    char *ev = bn_api_stream_chunk(P, "cmpl-x", 7, "m", "tok", 3, 1, NULL, &len);
    json_t *j = load_event(ev, len);
    ck_assert_str_eq(sget(j, "object"), "text_completion");
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    ck_assert_str_eq(sget(c0, "text"), "tok");
    ck_assert_ptr_null(json_object_get(c0, "delta"));
    json_decref(j);
    free(ev);

    bn_api_usage u = {.prompt_tokens = 2, .completion_tokens = 3, .cached_tokens = 1};
    for (int k = 0; k < 2; k++) {
        enum bn_api_kind kind = k ? P : C;
        ev = bn_api_stream_usage(kind, "id", 7, "m", &u, &len);
        j = load_event(ev, len);
        ck_assert_str_eq(sget(j, "object"), kind == C ? "chat.completion.chunk" : "text_completion");
        ck_assert(json_is_array(json_object_get(j, "choices")));
        ck_assert_uint_eq(json_array_size(json_object_get(j, "choices")), 0);
        ck_assert_int_eq(iget(json_object_get(j, "usage"), "total_tokens"), 5);
        json_decref(j);
        free(ev);
    }

    bn_api_error e;
    bn_api_fail(&e, 500, "server_error", "", "", "worker %d died", 3);
    ev = bn_api_stream_error(&e, &len);
    j = load_event(ev, len);
    json_t *er = json_object_get(j, "error");
    ck_assert_str_eq(sget(er, "message"), "worker 3 died");
    ck_assert_str_eq(sget(er, "type"), "server_error");
    ck_assert(json_is_null(json_object_get(er, "param")));
    ck_assert(json_is_null(json_object_get(er, "code")));
    json_decref(j);
    free(ev);
}
END_TEST

START_TEST(error_json)
{
    bn_api_error e;
    ck_assert_int_eq(bn_api_fail(&e, 400, "invalid_request_error", "messages", "context_length_exceeded",
                                 "prompt has %u tokens, n_ctx is %u", 300u, 256u), -1);
    ck_assert_int_eq(e.status, 400);
    char *s = bn_api_error_json(&e);
    json_t *j = load(s, strlen(s));
    ck_assert_uint_eq(json_object_size(j), 1);
    json_t *er = json_object_get(j, "error");
    ck_assert_str_eq(sget(er, "message"), "prompt has 300 tokens, n_ctx is 256");
    ck_assert_str_eq(sget(er, "type"), "invalid_request_error");
    ck_assert_str_eq(sget(er, "param"), "messages");
    ck_assert_str_eq(sget(er, "code"), "context_length_exceeded");
    json_decref(j);
    free(s);
    /* a message cut inside a multi-byte character (a quoted role) still gives valid JSON */
    char body[300] = "{\"messages\":[{\"role\":\"a";
    for (int i = 0; i < 30; i++) strcat(body, "\xc3\xa9");
    strcat(body, "\",\"content\":\"x\"}]}");
    check_fail(C, body, strlen(body), "messages[0].role", "must be one of", "cut role");
}
END_TEST

/* Invalid UTF-8 given to a builder becomes U+FFFD per maximal invalid subpart. */
START_TEST(invalid_utf8_replaced)
{
    static const struct { const char *in, *out; } T[] = {
        {"a\xff" "b", "a\xef\xbf\xbd" "b"},
        {"\xe2\x82", "\xef\xbf\xbd"},                                   /* truncated */
        {"\xf0\x9f\x98x", "\xef\xbf\xbdx"},
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},                       /* overlong */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},       /* surrogate */
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > U+10FFFF */
        {"ok \xe2\x82\xac\x80", "ok \xe2\x82\xac\xef\xbf\xbd"},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        size_t len;
        char *ev = bn_api_stream_chunk(C, "id", 1, "m", T[i].in, strlen(T[i].in), 0, NULL, &len);
        json_t *j = load_event(ev, len);
        json_t *d = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "delta");
        ck_assert_msg(!strcmp(sget(d, "content"), T[i].out), "case %zu", i);
        json_decref(j);
        free(ev);
        char *s = bn_api_response_json(P, "id", 1, T[i].in, T[i].in, strlen(T[i].in), "stop", NULL);
        j = load(s, strlen(s));
        ck_assert_str_eq(sget(j, "model"), T[i].out);
        json_decref(j);
        free(s);
    }
    /* a NUL byte is valid UTF-8: kept, as \u0000 */
    char *s = bn_api_response_json(C, "id", 1, "m", "a\0b", 3, "stop", NULL);
    ck_assert_ptr_nonnull(strstr(s, "a\\u0000b"));
    json_t *j = json_loads(s, JSON_ALLOW_NUL, NULL);
    ck_assert_ptr_nonnull(j);
    json_decref(j);
    free(s);
}
END_TEST

START_TEST(finish_reasons)
{
    ck_assert_str_eq(bn_api_finish_reason(BN_FINISH_STOP), "stop");
    ck_assert_str_eq(bn_api_finish_reason(BN_FINISH_LENGTH), "length");
    ck_assert_str_eq(bn_api_finish_reason(BN_FINISH_CANCELLED), "stop");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("openai");
    TCase *tp = tcase_create("parse");
    tcase_add_loop_test(tp, bad_body_table, 0, (int)(sizeof BAD / sizeof BAD[0]));
    tcase_add_test(tp, chat_defaults);
    tcase_add_test(tp, chat_roles_and_content);
    tcase_add_test(tp, completion_prompts);
    tcase_add_test(tp, sampling_fields);
    tcase_add_test(tp, max_completion_tokens_alias);
    tcase_add_test(tp, limits_defaults);
    tcase_add_test(tp, seed_handling);
    tcase_add_test(tp, priority_handling);
    tcase_add_test(tp, stream_options);
    tcase_add_test(tp, stop_strings);
    tcase_add_test(tp, duplicate_keys_last_wins);
    tcase_add_test(tp, unknown_and_null_fields);
    tcase_add_test(tp, nesting_limit);
    tcase_add_test(tp, one_megabyte_string);
    tcase_add_test(tp, too_many_messages);
    suite_add_tcase(s, tp);
    TCase *tb = tcase_create("build");
    tcase_add_test(tb, response_chat);
    tcase_add_test(tb, response_completion);
    tcase_add_test(tb, stream_chunks_chat);
    tcase_add_test(tb, stream_chunks_completion_usage_error);
    tcase_add_test(tb, error_json);
    tcase_add_test(tb, invalid_utf8_replaced);
    tcase_add_test(tb, finish_reasons);
    suite_add_tcase(s, tb);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
