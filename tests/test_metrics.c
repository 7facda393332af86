/* /metrics exposition (vLLM names, cumulative buckets, HELP/TYPE for every family), the access
 * log in both formats, and the error log (levels, one line per message, reopen after rotation). */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "server/config.h"
#include "server/log.h"
#include "server/metrics.h"
#include "testutil.h"

/* ---- helpers ---- */

static int has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)); p += n)
        if ((p == text || p[-1] == '\n') && p[n] == '\n') return 1;
    return 0;
}

#define ASSERT_LINE(text, line) ck_assert_msg(has_line(text, line), "missing line: %s", line)

static char *slurp(const char *path)
{
    char *s;
    size_t n;
    bn_error err;
    return bn_read_file(path, 1 << 20, &s, &n, &err) == 0 ? s : NULL;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; s && *s; s++) n += *s == '\n';
    return n;
}

static int matches(const char *re, const char *s)
{
    regex_t r;
    ck_assert_int_eq(regcomp(&r, re, REG_EXTENDED | REG_NOSUB | REG_NEWLINE), 0);
    int ok = regexec(&r, s, 0, NULL, 0) == 0;
    regfree(&r);
    return ok;
}

/* ---- metrics ---- */

#define M "{model_name=\"tiny \\\"q\\\"\"" /* the label as exposed: quotes escaped */

static char *render_sample(size_t *len)
{
    bn_metrics *m = bn_metrics_new("tiny \"q\"");
    ck_assert_ptr_nonnull(m);
    bn_metrics_set_max_model_len(m, 256);   /* token buckets 1 2 5 10 20 50 100 200 */
    bn_metrics_req r1 = {"stop", 10, 5, 4, 0.25, 0.05, 0.5, 0.0625, 0.375};
    bn_metrics_req r2 = {"length", 100, 200, 0, -1, 1.5, 2.0, 1.25, 0.5};
    bn_metrics_req r3 = {"weird", 300, 0, 0, -1, -1, -1, -1, -1};   /* unknown reason: abort */
    bn_metrics_request(m, &r1);
    bn_metrics_request(m, &r2);
    bn_metrics_request(m, &r3);
    bn_metrics_itl(m, 0.125);
    bn_metrics_itl(m, 0.5);   /* exactly a bound: counted in le="0.5" */
    bn_metrics_itl(m, 100);   /* above every bound: +Inf only */
    bn_metrics_rejected(m, "queue_full");
    bn_metrics_rejected(m, "queue_full");
    bn_metrics_rejected(m, "bogus");
    bn_metrics_rejected(m, "loading");
    bn_metrics_worker_restart(m);
    int statuses[] = {200, 201, 404, 503, 99, 600};
    for (int i = 0; i < 6; i++) bn_metrics_http(m, statuses[i]);
    bn_metrics_gauges g = {.running = 1, .waiting = 2, .workers = 4, .workers_busy = 1, .workers_live = 3,
                           .kv_usage = 0.25, .slots = 16, .slots_busy = 5};
    char *text = bn_metrics_render(m, &g, len);
    bn_metrics_free(m);
    ck_assert_ptr_nonnull(text);
    ck_assert_uint_eq(strlen(text), *len);
    return text;
}

START_TEST(test_metrics_values)
{
    size_t len;
    char *t = render_sample(&len);
    ASSERT_LINE(t, "vllm:num_requests_running" M "} 1.0");
    ASSERT_LINE(t, "vllm:num_requests_waiting" M "} 2.0");
    ASSERT_LINE(t, "vllm:kv_cache_usage_perc" M "} 0.25");
    ASSERT_LINE(t, "vllm:prompt_tokens_total" M "} 410.0");
    ASSERT_LINE(t, "vllm:generation_tokens_total" M "} 205.0");
    ASSERT_LINE(t, "vllm:prefix_cache_queries_total" M "} 410.0");
    ASSERT_LINE(t, "vllm:prefix_cache_hits_total" M "} 4.0");
    ASSERT_LINE(t, "vllm:request_success_total" M ",finished_reason=\"stop\"} 1.0");
    ASSERT_LINE(t, "vllm:request_success_total" M ",finished_reason=\"length\"} 1.0");
    ASSERT_LINE(t, "vllm:request_success_total" M ",finished_reason=\"abort\"} 1.0");
    /* token counts: 10, 100, 300 */
    ASSERT_LINE(t, "vllm:request_prompt_tokens_bucket" M ",le=\"5.0\"} 0.0");
    ASSERT_LINE(t, "vllm:request_prompt_tokens_bucket" M ",le=\"10.0\"} 1.0");
    ASSERT_LINE(t, "vllm:request_prompt_tokens_bucket" M ",le=\"100.0\"} 2.0");
    ASSERT_LINE(t, "vllm:request_prompt_tokens_bucket" M ",le=\"200.0\"} 2.0");
    ASSERT_LINE(t, "vllm:request_prompt_tokens_bucket" M ",le=\"+Inf\"} 3.0");
    ck_assert_ptr_null(strstr(t, "vllm:request_prompt_tokens_bucket" M ",le=\"500.0\""));
    ASSERT_LINE(t, "vllm:request_prompt_tokens_count" M "} 3.0");
    ASSERT_LINE(t, "vllm:request_prompt_tokens_sum" M "} 410.0");
    ASSERT_LINE(t, "vllm:request_generation_tokens_bucket" M ",le=\"1.0\"} 1.0");   /* the 0 */
    /* TTFT: 0.05 and 1.5; r3's unknown time is not an observation */
    ASSERT_LINE(t, "vllm:time_to_first_token_seconds_bucket" M ",le=\"0.04\"} 0.0");
    ASSERT_LINE(t, "vllm:time_to_first_token_seconds_bucket" M ",le=\"0.06\"} 1.0");
    ASSERT_LINE(t, "vllm:time_to_first_token_seconds_bucket" M ",le=\"1.0\"} 1.0");
    ASSERT_LINE(t, "vllm:time_to_first_token_seconds_bucket" M ",le=\"2.5\"} 2.0");
    ASSERT_LINE(t, "vllm:time_to_first_token_seconds_bucket" M ",le=\"2560.0\"} 2.0");
    ASSERT_LINE(t, "vllm:time_to_first_token_seconds_bucket" M ",le=\"+Inf\"} 2.0");
    ASSERT_LINE(t, "vllm:time_to_first_token_seconds_count" M "} 2.0");
    ASSERT_LINE(t, "vllm:time_to_first_token_seconds_sum" M "} 1.55");
    /* ITL and its older name carry the same data */
    const char *itl[] = {"vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"};
    for (int i = 0; i < 2; i++) {
        char l[256];
        const char *want[][2] = {{"0.1", "0.0"}, {"0.15", "1.0"}, {"0.4", "1.0"}, {"0.5", "2.0"},
                                 {"80.0", "2.0"}, {"+Inf", "3.0"}};
        for (int k = 0; k < 6; k++) {
            snprintf(l, sizeof l, "%s_bucket" M ",le=\"%s\"} %s", itl[i], want[k][0], want[k][1]);
            ASSERT_LINE(t, l);
        }
        snprintf(l, sizeof l, "%s_count" M "} 3.0", itl[i]);
        ASSERT_LINE(t, l);
        snprintf(l, sizeof l, "%s_sum" M "} 100.625", itl[i]);
        ASSERT_LINE(t, l);
    }
    ASSERT_LINE(t, "vllm:e2e_request_latency_seconds_bucket" M ",le=\"0.5\"} 1.0");
    ASSERT_LINE(t, "vllm:e2e_request_latency_seconds_bucket" M ",le=\"2.0\"} 2.0");
    ASSERT_LINE(t, "vllm:request_queue_time_seconds_count" M "} 1.0");
    ASSERT_LINE(t, "vllm:request_queue_time_seconds_sum" M "} 0.25");
    ASSERT_LINE(t, "vllm:request_prefill_time_seconds_sum" M "} 1.3125");
    ASSERT_LINE(t, "vllm:request_decode_time_seconds_sum" M "} 0.875");
    ASSERT_LINE(t, "vllm:request_inference_time_seconds_count" M "} 2.0");
    ASSERT_LINE(t, "vllm:request_inference_time_seconds_sum" M "} 2.1875");
    /* bitnetd's own */
    ASSERT_LINE(t, "bitnetd_workers" M ",state=\"busy\"} 1.0");
    ASSERT_LINE(t, "bitnetd_workers" M ",state=\"idle\"} 2.0");
    ASSERT_LINE(t, "bitnetd_workers" M ",state=\"down\"} 1.0");
    ASSERT_LINE(t, "bitnetd_workers_total" M "} 4.0");
    ASSERT_LINE(t, "bitnetd_slots" M ",state=\"busy\"} 5.0");
    ASSERT_LINE(t, "bitnetd_slots" M ",state=\"free\"} 11.0");
    ASSERT_LINE(t, "bitnetd_worker_restarts_total" M "} 1.0");
    ASSERT_LINE(t, "bitnetd_requests_rejected_total" M ",reason=\"queue_full\"} 2.0");
    ASSERT_LINE(t, "bitnetd_requests_rejected_total" M ",reason=\"draining\"} 0.0");
    ASSERT_LINE(t, "bitnetd_requests_rejected_total" M ",reason=\"loading\"} 1.0");
    ASSERT_LINE(t, "bitnetd_requests_rejected_total" M ",reason=\"other\"} 1.0");
    ASSERT_LINE(t, "bitnetd_http_responses_total" M ",code=\"1xx\"} 0.0");
    ASSERT_LINE(t, "bitnetd_http_responses_total" M ",code=\"2xx\"} 2.0");
    ASSERT_LINE(t, "bitnetd_http_responses_total" M ",code=\"4xx\"} 1.0");
    ASSERT_LINE(t, "bitnetd_http_responses_total" M ",code=\"5xx\"} 1.0");
    free(t);
}
END_TEST

/* Every sample belongs to a family announced by # HELP then # TYPE (once), histogram buckets
 * are cumulative and end in +Inf == _count, and every vLLM family is there with its type. */
START_TEST(test_metrics_structure)
{
    size_t len;
    char *t = render_sample(&len);
    ck_assert(len > 0 && t[len - 1] == '\n');
    char fam[64][160], type[64][16], help[160] = "", series[160] = "";
    int nfam = 0, prev_help = 0, last_inf = 0;
    double last_bucket = -1;
    for (char *line = t, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        ck_assert_ptr_nonnull(nl);
        *nl = 0;
        char name[160], kind[16];
        int was_help = prev_help;
        prev_help = 0;
        if (sscanf(line, "# HELP %159s", help) == 1) {
            prev_help = 1;
            continue;
        }
        if (sscanf(line, "# TYPE %159s %15s", name, kind) == 2) {
            ck_assert_msg(was_help && !strcmp(help, name), "no # HELP right before # TYPE %s", name);
            for (int i = 0; i < nfam; i++) ck_assert_msg(strcmp(fam[i], name), "%s declared twice", name);
            ck_assert_int_lt(nfam, 64);
            snprintf(fam[nfam], sizeof fam[0], "%s", name);
            snprintf(type[nfam++], sizeof type[0], "%s", kind);
            continue;
        }
        ck_assert_msg(line[0] != '#' && nfam > 0, "stray line: %s", line);
        size_t n = strcspn(line, "{");
        snprintf(name, sizeof name, "%.*s", (int)n, line);
        const char *f = fam[nfam - 1], *suffix = name + strlen(f);
        int hist = !strcmp(type[nfam - 1], "histogram");
        ck_assert_msg(!strncmp(name, f, strlen(f)) &&
                          (hist ? !strcmp(suffix, "_bucket") || !strcmp(suffix, "_count") || !strcmp(suffix, "_sum")
                                : !*suffix),
                      "sample %s outside its family %s", name, f);
        double v = strtod(strrchr(line, ' ') + 1, NULL);
        if (!strcmp(suffix, "_bucket")) {
            if (strcmp(series, f)) last_bucket = -1;
            snprintf(series, sizeof series, "%s", f);
            ck_assert_msg(v >= last_bucket, "%s: buckets not cumulative", line);
            last_bucket = v;
            last_inf = strstr(line, "le=\"+Inf\"") != NULL;
        } else if (!strcmp(suffix, "_count")) {
            ck_assert_msg(!strcmp(series, f) && last_inf && v == last_bucket, "%s: _count is not the +Inf bucket", f);
        }
    }
    static const char *const want[][2] = {
        {"vllm:num_requests_running", "gauge"},
        {"vllm:num_requests_waiting", "gauge"},
        {"vllm:kv_cache_usage_perc", "gauge"},
        {"vllm:prompt_tokens_total", "counter"},
        {"vllm:generation_tokens_total", "counter"},
        {"vllm:request_success_total", "counter"},
        {"vllm:prefix_cache_queries_total", "counter"},
        {"vllm:prefix_cache_hits_total", "counter"},
        {"vllm:time_to_first_token_seconds", "histogram"},
        {"vllm:inter_token_latency_seconds", "histogram"},
        {"vllm:time_per_output_token_seconds", "histogram"},
        {"vllm:e2e_request_latency_seconds", "histogram"},
        {"vllm:request_queue_time_seconds", "histogram"},
        {"vllm:request_inference_time_seconds", "histogram"},
        {"vllm:request_prefill_time_seconds", "histogram"},
        {"vllm:request_decode_time_seconds", "histogram"},
        {"vllm:request_prompt_tokens", "histogram"},
        {"vllm:request_generation_tokens", "histogram"},
        {"bitnetd_workers", "gauge"},
        {"bitnetd_workers_total", "gauge"},
        {"bitnetd_slots", "gauge"},
        {"bitnetd_worker_restarts_total", "counter"},
        {"bitnetd_requests_rejected_total", "counter"},
        {"bitnetd_http_responses_total", "counter"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int found = 0;
        for (int k = 0; k < nfam; k++)
            if (!strcmp(fam[k], want[i][0])) found = !strcmp(type[k], want[i][1]);
        ck_assert_msg(found, "family %s (%s) missing", want[i][0], want[i][1]);
    }
    free(t);
}
END_TEST

/* The prefix cache counters are in tokens: every request's prompt is a query of that many
 * tokens, its cached part the hits, aborted requests included. */
START_TEST(test_metrics_prefix_cache)
{
    bn_metrics *m = bn_metrics_new("m");
    ck_assert_ptr_nonnull(m);
    bn_metrics_req turn1 = {"stop", 100, 8, 0, 0, 0.1, 0.2, 0.1, 0.1};
    bn_metrics_req turn2 = {"stop", 150, 8, 108, 0, 0.1, 0.2, 0.1, 0.1};
    bn_metrics_req lost = {"abort", 40, 0, 32, -1, -1, -1, -1, -1};
    bn_metrics_request(m, &turn1);
    bn_metrics_request(m, &turn2);
    bn_metrics_request(m, &lost);
    bn_metrics_gauges g = {.slots = 2, .slots_busy = 3};   /* a stale busy count: never negative */
    size_t len;
    char *t = bn_metrics_render(m, &g, &len);
    ck_assert_ptr_nonnull(t);
    ASSERT_LINE(t, "vllm:prefix_cache_queries_total{model_name=\"m\"} 290.0");
    ASSERT_LINE(t, "vllm:prefix_cache_hits_total{model_name=\"m\"} 140.0");
    ASSERT_LINE(t, "bitnetd_slots{model_name=\"m\",state=\"busy\"} 3.0");
    ASSERT_LINE(t, "bitnetd_slots{model_name=\"m\",state=\"free\"} 0.0");
    free(t);
    bn_metrics_free(m);
}
END_TEST

/* vLLM's bucket lists, and numbers written as prometheus_client writes them. */
START_TEST(test_metrics_buckets_and_numbers)
{
    bn_metrics *m = bn_metrics_new("m");
    size_t len;
    char *t = bn_metrics_render(m, NULL, &len);
    ck_assert_ptr_nonnull(t);
    ASSERT_LINE(t, "vllm:num_requests_running{model_name=\"m\"} 0.0");
    /* default token buckets reach the largest context a model may have */
    ASSERT_LINE(t, "vllm:request_prompt_tokens_bucket{model_name=\"m\",le=\"500000.0\"} 0.0");
    ASSERT_LINE(t, "vllm:request_prompt_tokens_bucket{model_name=\"m\",le=\"1e+06\"} 0.0");
    /* the first and last boundary of each vLLM list, and the count of boundaries */
    static const struct {
        const char *name, *first, *last;
        int n;
    } lists[] = {
        {"vllm:time_to_first_token_seconds", "0.001", "2560.0", 22},
        {"vllm:inter_token_latency_seconds", "0.01", "80.0", 19},
        {"vllm:time_per_output_token_seconds", "0.01", "80.0", 19},
        {"vllm:e2e_request_latency_seconds", "0.3", "7680.0", 21},
        {"vllm:request_queue_time_seconds", "0.3", "7680.0", 21},
        {"vllm:request_prefill_time_seconds", "0.3", "7680.0", 21},
        {"vllm:request_decode_time_seconds", "0.3", "7680.0", 21},
        {"vllm:request_prompt_tokens", "1.0", "1e+06", 19},
    };
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        char l[256], prefix[160];
        snprintf(l, sizeof l, "%s_bucket{model_name=\"m\",le=\"%s\"} 0.0", lists[i].name, lists[i].first);
        ASSERT_LINE(t, l);
        snprintf(l, sizeof l, "%s_bucket{model_name=\"m\",le=\"%s\"} 0.0", lists[i].name, lists[i].last);
        ASSERT_LINE(t, l);
        snprintf(prefix, sizeof prefix, "\n%s_bucket{", lists[i].name);
        int n = 0;
        for (const char *p = t; (p = strstr(p, prefix)); p++) n++;
        ck_assert_msg(n == lists[i].n + 1, "%s: %d buckets, want %d and +Inf", lists[i].name, n, lists[i].n);
    }
    free(t);
    /* large counters: exponent form from 1e6 up, as prometheus_client writes them */
    bn_metrics_req r = {"stop", 12345678, 1000000, 0, -1, -1, -1, -1, -1};
    bn_metrics_request(m, &r);
    t = bn_metrics_render(m, NULL, &len);
    ASSERT_LINE(t, "vllm:prompt_tokens_total{model_name=\"m\"} 1.2345678e+07");
    ASSERT_LINE(t, "vllm:generation_tokens_total{model_name=\"m\"} 1e+06");
    free(t);
    bn_metrics_free(m);
}
END_TEST

/* ---- access log ---- */

static bn_access_rec sample_rec(void)
{
    return (bn_access_rec){
        .request_id = "r-1",
        .method = "POST",
        .path = "/v1/chat/completions",
        .remote = "127.0.0.1",
        .user_agent = "curl \"7\"\nX\\",
        .status = 200,
        .bytes_sent = 1234,
        .prompt_tokens = 12,
        .completion_tokens = 34,
        .cached_tokens = 5,
        .queue_s = -1,
        .ttft_s = 0.0123456789,
        .total_s = 1.5,
        .worker = -1,
        .finish_reason = NULL,
    };
}

START_TEST(test_access_json)
{
    bn_access_rec r = sample_rec();
    char *line = bn_access_log_format(BN_LOGFMT_JSON, &r);
    ck_assert_ptr_nonnull(line);
    ck_assert_int_eq(count_lines(line), 1);   /* the newline in the UA is escaped */
    ck_assert_ptr_nonnull(strstr(line, "\"user_agent\":\"curl \\\"7\\\"\\nX\\\\\""));
    ck_assert_ptr_nonnull(strstr(line, "\"queue_s\":null"));
    ck_assert(matches("^\\{\"time\":\"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z\","
                      "\"request_id\":\"r-1\",\"remote\":\"127.0.0.1\",\"method\":\"POST\"",
                      line));
    json_error_t je;
    json_t *o = json_loads(line, 0, &je);
    ck_assert_msg(o != NULL, "%s: %s", line, je.text);
    ck_assert_str_eq(json_string_value(json_object_get(o, "user_agent")), r.user_agent);
    ck_assert_str_eq(json_string_value(json_object_get(o, "path")), "/v1/chat/completions");
    ck_assert_int_eq(json_integer_value(json_object_get(o, "status")), 200);
    ck_assert_int_eq(json_integer_value(json_object_get(o, "bytes")), 1234);
    ck_assert_int_eq(json_integer_value(json_object_get(o, "prompt_tokens")), 12);
    ck_assert_int_eq(json_integer_value(json_object_get(o, "completion_tokens")), 34);
    ck_assert_int_eq(json_integer_value(json_object_get(o, "cached_tokens")), 5);
    ck_assert(json_is_null(json_object_get(o, "queue_s")));
    ck_assert_double_eq_tol(json_real_value(json_object_get(o, "ttft_s")), 0.012346, 1e-12);
    ck_assert_double_eq(json_real_value(json_object_get(o, "total_s")), 1.5);
    ck_assert(json_is_null(json_object_get(o, "worker")));
    ck_assert(json_is_null(json_object_get(o, "finish_reason")));
    ck_assert_int_eq(json_object_size(o), 16);
    json_decref(o);
    free(line);
    /* a worker, a reason, and a user agent that is not UTF-8 */
    r.worker = 3;
    r.finish_reason = "stop";
    r.user_agent = "bad \xff\xfe";
    r.request_id = NULL;
    line = bn_access_log_format(BN_LOGFMT_JSON, &r);
    o = json_loads(line, 0, &je);
    ck_assert_msg(o != NULL, "%s: %s", line, je.text);
    ck_assert_int_eq(json_integer_value(json_object_get(o, "worker")), 3);
    ck_assert_str_eq(json_string_value(json_object_get(o, "finish_reason")), "stop");
    ck_assert_str_eq(json_string_value(json_object_get(o, "user_agent")), "bad ??");
    ck_assert(json_is_null(json_object_get(o, "request_id")));
    json_decref(o);
    free(line);
}
END_TEST

START_TEST(test_access_combined)
{
    bn_access_rec r = sample_rec();
    char *line = bn_access_log_format(BN_LOGFMT_COMBINED, &r);
    ck_assert_ptr_nonnull(line);
    ck_assert(matches("^127\\.0\\.0\\.1 - - \\[[0-3][0-9]/(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)/"
                      "[0-9]{4}:[0-9]{2}:[0-9]{2}:[0-9]{2} \\+0000\\] ",
                      line));
    const char *rest = strstr(line, "] ");
    ck_assert_ptr_nonnull(rest);
    ck_assert_str_eq(rest + 2, "\"POST /v1/chat/completions\" 200 1234 \"-\" \"curl \\x227\\x22\\x0AX\\x5C\" "
                               "rid=r-1 pt=12 ct=34 queue=- ttft=0.012 total=1.500 worker=- cached=5 finish=-\n");
    free(line);
    r.worker = 2;
    r.queue_s = 0.25;
    r.finish_reason = "length";
    r.user_agent = NULL;
    r.request_id = "has space";   /* client supplied: must not split the field */
    line = bn_access_log_format(BN_LOGFMT_COMBINED, &r);
    rest = strstr(line, "] ");
    ck_assert_str_eq(rest + 2, "\"POST /v1/chat/completions\" 200 1234 \"-\" \"-\" rid=has\\x20space pt=12 ct=34 "
                               "queue=0.250 ttft=0.012 total=1.500 worker=2 cached=5 finish=length\n");
    free(line);
}
END_TEST

START_TEST(test_access_file_and_reopen)
{
    bn_error err;
    char path[512], rotated[600];
    snprintf(path, sizeof path, "%s", bn_test_path("access.log"));
    snprintf(rotated, sizeof rotated, "%s.1", path);
    unlink(path);
    unlink(rotated);
    bn_access_log *l = bn_access_log_open(path, BN_LOGFMT_JSON, &err);
    ck_assert_msg(l != NULL, "%s", err.msg);
    bn_access_rec r = sample_rec();
    bn_access_log_write(l, &r);
    bn_access_log_write(l, &r);
    ck_assert_int_eq(rename(path, rotated), 0);
    ck_assert_int_eq(bn_access_log_reopen(l, &err), 0);
    bn_access_log_write(l, &r);
    bn_access_log_close(l);
    char *a = slurp(rotated), *b = slurp(path);
    ck_assert_int_eq(count_lines(a), 2);
    ck_assert_int_eq(count_lines(b), 1);
    free(a);
    free(b);
    unlink(path);
    unlink(rotated);
    /* off: a handle that writes nothing; bad inputs: clear errors */
    l = bn_access_log_open("off", BN_LOGFMT_COMBINED, &err);
    ck_assert_ptr_nonnull(l);
    bn_access_log_write(l, &r);
    ck_assert_int_eq(bn_access_log_reopen(l, &err), 0);
    bn_access_log_close(l);
    ck_assert_int_ne(access("off", F_OK), 0);
    ck_assert_ptr_null(bn_access_log_open(path, 7, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "format"));
    ck_assert_ptr_null(bn_access_log_open("/nonexistent-dir/x.log", BN_LOGFMT_JSON, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent-dir/x.log"));
}
END_TEST

/* ---- error log ---- */

/* The fd of this process open on path (-1 if none), and how many there are. */
static int fd_on(const char *path, int *count)
{
    char real[4096], link[4096], p[320];
    ck_assert_ptr_nonnull(realpath(path, real));
    DIR *d = opendir("/proc/self/fd");
    ck_assert_ptr_nonnull(d);
    int found = -1;
    *count = 0;
    for (struct dirent *e; (e = readdir(d));) {
        snprintf(p, sizeof p, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(p, link, sizeof link - 1);
        if (n <= 0) continue;
        link[n] = 0;
        if (!strcmp(link, real)) {
            found = atoi(e->d_name);
            ++*count;
        }
    }
    closedir(d);
    return found;
}

START_TEST(test_error_log)
{
    bn_error err;
    char path[512], rotated[600];
    snprintf(path, sizeof path, "%s", bn_test_path("error.log"));
    snprintf(rotated, sizeof rotated, "%s.1", path);
    unlink(path);
    unlink(rotated);
    ck_assert_msg(bn_log_open(path, BN_LOG_WARN, &err) == 0, "%s", err.msg);
    bn_log_set_tag("master");
    bn_log_info("hidden at warn");
    bn_log_debug("hidden too");
    bn_log_warn("shown %d", 1);
    bn_log_error("two\nlines\r");
    bn_log_set_level(BN_LOG_DEBUG);
    errno = EBADF;
    bn_log_debug("now shown");
    ck_assert_int_eq(errno, EBADF);   /* logging keeps the caller's errno */
    char *s = slurp(path);
    ck_assert_int_eq(count_lines(s), 3);
    ck_assert_ptr_null(strstr(s, "hidden"));
    const char *ts = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z ";
    char re[256];
    snprintf(re, sizeof re, "%s\\[warn\\] master: shown 1$", ts);
    ck_assert_msg(matches(re, s), "%s", s);
    snprintf(re, sizeof re, "%s\\[error\\] master: two lines $", ts);
    ck_assert_msg(matches(re, s), "%s", s);
    snprintf(re, sizeof re, "%s\\[debug\\] master: now shown$", ts);
    ck_assert_msg(matches(re, s), "%s", s);
    free(s);
    struct stat st;
    mode_t um = umask(0);
    umask(um);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0640 & ~um);

    /* rotation: lines go to the renamed file until the reopen, then to the new one, on the same
     * descriptor number, still close-on-exec */
    int n, fd = fd_on(path, &n);
    ck_assert_int_eq(n, 1);
    ck_assert_int_eq(rename(path, rotated), 0);
    bn_log_info("before reopen");
    ck_assert_int_eq(bn_log_reopen(&err), 0);
    bn_log_info("after reopen");
    ck_assert_int_eq(fd_on(path, &n), fd);
    ck_assert_int_eq(n, 1);
    ck_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    s = slurp(rotated);
    ck_assert_int_eq(count_lines(s), 4);
    ck_assert_ptr_nonnull(strstr(s, "before reopen"));
    free(s);
    s = slurp(path);
    ck_assert_int_eq(count_lines(s), 1);
    ck_assert_ptr_nonnull(strstr(s, "[info] master: after reopen\n"));
    free(s);

    /* an over-long message is cut, still one line */
    char big[6000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    bn_log_info("%s", big);
    s = slurp(path);
    ck_assert_int_eq(count_lines(s), 2);
    ck_assert_ptr_nonnull(strstr(s, "aaa...\n"));
    free(s);

    /* a path that cannot be opened is an error naming it; the old log stays */
    ck_assert_int_ne(bn_log_open("/nonexistent-dir/e.log", BN_LOG_INFO, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent-dir/e.log"));
    bn_log_info("still here");
    s = slurp(path);
    ck_assert_ptr_nonnull(strstr(s, "still here"));
    free(s);

    /* off: nothing written, and the file is released */
    ck_assert_int_eq(bn_log_open("off", BN_LOG_DEBUG, &err), 0);
    bn_log_error("nowhere");
    fd_on(path, &n);
    ck_assert_int_eq(n, 0);
    s = slurp(path);
    ck_assert_ptr_null(strstr(s, "nowhere"));
    free(s);
    ck_assert_int_eq(bn_log_reopen(&err), 0);
    bn_log_close();
    bn_log_set_tag(NULL);
    unlink(path);
    unlink(rotated);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("metrics");
    tcase_add_test(tc, test_metrics_values);
    tcase_add_test(tc, test_metrics_structure);
    tcase_add_test(tc, test_metrics_buckets_and_numbers);
    tcase_add_test(tc, test_metrics_prefix_cache);
    suite_add_tcase(s, tc);
    tc = tcase_create("logs");
    tcase_add_test(tc, test_access_json);
    tcase_add_test(tc, test_access_combined);
    tcase_add_test(tc, test_access_file_and_reopen);
    tcase_add_test(tc, test_error_log);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
