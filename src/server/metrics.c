/* Prometheus text exposition (format 0.0.4) with vLLM's names, help texts and bucket
 * boundaries (vllm/v1/metrics/loggers.py), so vLLM dashboards and benchmark scrapers work
 * unchanged. Numbers are written as prometheus_client writes them ("1.0", "0.001", "1e+06"),
 * so a series is byte-identical whichever server exposes it. Master only: no locking. */
#include "server/metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BOUNDS 32

static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                                     1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
static const double itl_bounds[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                    0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
static const double request_bounds[] = {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
                                        30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

enum { H_PROMPT, H_GEN, H_TTFT, H_ITL, H_TPOT, H_E2E, H_QUEUE, H_INFER, H_PREFILL, H_DECODE, H_N };

/* One row per histogram family; bounds == NULL: token counts, 1-2-5 up to max_model_len. */
static const struct hist_def {
    const char *name, *help;
    const double *bounds;
    int n;
} hist_defs[H_N] = {
    [H_PROMPT] = {"vllm:request_prompt_tokens", "Number of prefill tokens processed.", NULL, 0},
    [H_GEN] = {"vllm:request_generation_tokens", "Number of generation tokens processed.", NULL, 0},
    [H_TTFT] = {"vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", ttft_bounds,
                N_OF(ttft_bounds)},
    [H_ITL] = {"vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", itl_bounds,
               N_OF(itl_bounds)},
    [H_TPOT] = {"vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds. DEPRECATED: Use vllm:inter_token_latency_seconds "
                "instead.",
                itl_bounds, N_OF(itl_bounds)},
    [H_E2E] = {"vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", request_bounds,
               N_OF(request_bounds)},
    [H_QUEUE] = {"vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
                 request_bounds, N_OF(request_bounds)},
    [H_INFER] = {"vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.",
                 request_bounds, N_OF(request_bounds)},
    [H_PREFILL] = {"vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.",
                   request_bounds, N_OF(request_bounds)},
    [H_DECODE] = {"vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.",
                  request_bounds, N_OF(request_bounds)},
};

/* Label values of the labelled counters, each pre-declared at 0 as vLLM does. */
static const char *const finish_reasons[] = {"stop", "length", "abort"};
static const char *const reject_reasons[] = {"queue_full", "queue_timeout", "context_length", "invalid",
                                             "unauthorized", "rate_limited", "draining", "loading", "other"};
#define N_FINISH N_OF(finish_reasons)
#define N_REJECT N_OF(reject_reasons)

typedef struct hist {
    const double *bounds;
    int n;
    uint64_t counts[MAX_BOUNDS + 1];   /* per bucket, not cumulative; [n] is +Inf */
    uint64_t count;
    double sum;
} hist;

struct bn_metrics {
    char *label;                       /* model_name="..." escaped for the exposition */
    double tok_bounds[MAX_BOUNDS];
    hist h[H_N];
    uint64_t prompt_tokens, generation_tokens, cache_queries, cache_hits, restarts;
    uint64_t success[N_FINISH], rejected[N_REJECT], http[5];
};

/* Token-count buckets exactly as vLLM's build_1_2_5_buckets(max). */
static int build_1_2_5(double *out, uint32_t max)
{
    static const int mant[3] = {1, 2, 5};
    int n = 0;
    for (double p = 1; n < MAX_BOUNDS; p *= 10)
        for (int i = 0; i < 3 && n < MAX_BOUNDS; i++) {
            if (mant[i] * p > max) return n;
            out[n++] = mant[i] * p;
        }
    return n;
}

static void set_token_bounds(bn_metrics *m, uint32_t max_model_len)
{
    int n = build_1_2_5(m->tok_bounds, max_model_len ? max_model_len : 1);
    for (int k = H_PROMPT; k <= H_GEN; k++) {
        memset(&m->h[k], 0, sizeof m->h[k]);
        m->h[k].bounds = m->tok_bounds;
        m->h[k].n = n;
    }
}

/* Prometheus label-value escaping: backslash, double quote, newline. */
static char *label_pair(const char *key, const char *value)
{
    size_t n = strlen(key) + 4;
    for (const char *p = value; *p; p++) n += (*p == '\\' || *p == '"' || *p == '\n') ? 2 : 1;
    char *out = malloc(n), *o = out;
    if (!out) return NULL;
    o += sprintf(o, "%s=\"", key);
    for (const char *p = value; *p; p++) {
        if (*p == '\\' || *p == '"' || *p == '\n') *o++ = '\\';
        *o++ = *p == '\n' ? 'n' : *p;
    }
    *o++ = '"';
    *o = 0;
    return out;
}

bn_metrics *bn_metrics_new(const char *model_name)
{
    bn_metrics *m = calloc(1, sizeof *m);
    if (!m || !(m->label = label_pair("model_name", model_name ? model_name : ""))) {
        free(m);
        return NULL;
    }
    for (int k = 0; k < H_N; k++) {
        m->h[k].bounds = hist_defs[k].bounds;
        m->h[k].n = hist_defs[k].n;
    }
    set_token_bounds(m, 1u << 20);   /* the largest n_ctx a model file may have */
    return m;
}

void bn_metrics_set_max_model_len(bn_metrics *m, uint32_t max_model_len)
{
    set_token_bounds(m, max_model_len);
}

void bn_metrics_free(bn_metrics *m)
{
    if (!m) return;
    free(m->label);
    free(m);
}

/* prometheus_client's observe: the first bucket whose bound is >= v. */
static void observe(hist *h, double v)
{
    if (!(v >= 0) || !isfinite(v)) return;   /* unknown (< 0) or garbage: not an observation */
    int i = 0;
    while (i < h->n && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

static int index_of(const char *const *table, int n, const char *s)
{
    for (int i = 0; s && i < n; i++)
        if (!strcmp(table[i], s)) return i;
    return -1;
}

void bn_metrics_request(bn_metrics *m, const bn_metrics_req *r)
{
    int f = index_of(finish_reasons, N_FINISH, r->finished_reason);
    m->success[f < 0 ? 2 /* abort */ : f]++;
    m->prompt_tokens += r->prompt_tokens;
    m->generation_tokens += r->generation_tokens;
    m->cache_queries += r->prompt_tokens;
    m->cache_hits += r->cached_tokens;
    observe(&m->h[H_PROMPT], r->prompt_tokens);
    observe(&m->h[H_GEN], r->generation_tokens);
    observe(&m->h[H_TTFT], r->ttft_s);
    observe(&m->h[H_E2E], r->e2e_s);
    observe(&m->h[H_QUEUE], r->queue_s);
    observe(&m->h[H_PREFILL], r->prefill_s);
    observe(&m->h[H_DECODE], r->decode_s);
    if (r->prefill_s >= 0 && r->decode_s >= 0) observe(&m->h[H_INFER], r->prefill_s + r->decode_s);
}

void bn_metrics_itl(bn_metrics *m, double s)
{
    /* The same gaps feed the older name, which existing dashboards still chart. */
    observe(&m->h[H_ITL], s);
    observe(&m->h[H_TPOT], s);
}

void bn_metrics_rejected(bn_metrics *m, const char *reason)
{
    int i = index_of(reject_reasons, N_REJECT, reason);
    m->rejected[i < 0 ? N_REJECT - 1 : i]++;
}

void bn_metrics_worker_restart(bn_metrics *m) { m->restarts++; }

void bn_metrics_http(bn_metrics *m, int status)
{
    if (status >= 100 && status < 600) m->http[status / 100 - 1]++;
}

/* ---- rendering ---- */

/* Python's repr(float): the shortest digits that read back exactly, positional notation for
 * exponents in [-4, 16), always with a '.' or an exponent. */
static void py_repr(char *out, size_t len, double v)
{
    int p = 1;
    for (; p < 17; p++) {
        snprintf(out, len, "%.*e", p - 1, v);
        if (strtod(out, NULL) == v) break;
    }
    int exp = atoi(strchr(out, 'e') + 1);
    if (exp < -4 || exp >= 16) {
        snprintf(out, len, "%.*e", p - 1, v);   /* "1.5e+20": already Python's form */
        return;
    }
    snprintf(out, len, "%.*f", p - 1 - exp > 0 ? p - 1 - exp : 0, v);
    if (!strchr(out, '.')) strncat(out, ".0", len - strlen(out) - 1);
}

/* prometheus_client's floatToGoString: repr, but exponent form from 1e6 up ("1e+06"). */
static const char *num(char *out, size_t len, double v)
{
    if (isnan(v)) return "NaN";
    if (isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    py_repr(out, len, v);
    const char *dot = strchr(out, '.');
    if (v > 0 && dot && dot - out > 6 && !strchr(out, 'e')) {
        int intdigits = (int)(dot - out);
        char mant[48];
        snprintf(mant, sizeof mant, "%c.%.*s%s", out[0], intdigits - 1, out + 1, dot + 1);
        size_t k = strlen(mant);
        while (k > 0 && (mant[k - 1] == '0' || mant[k - 1] == '.')) mant[--k] = 0;
        snprintf(out, len, "%se+0%d", mant, intdigits - 1);
    }
    return out;
}

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample: name{model_name="..."[,extra]} value. */
static void sample(FILE *f, const bn_metrics *m, const char *name, const char *extra, double v)
{
    char n[48];
    fprintf(f, "%s{%s%s%s} %s\n", name, m->label, extra ? "," : "", extra ? extra : "", num(n, sizeof n, v));
}

static void scalar(FILE *f, const bn_metrics *m, const char *name, const char *type, const char *help, double v)
{
    family(f, name, type, help);
    sample(f, m, name, NULL, v);
}

static void labelled(FILE *f, const bn_metrics *m, const char *name, const char *help, const char *key,
                     const char *const *values, const uint64_t *counts, int n)
{
    family(f, name, "counter", help);
    for (int i = 0; i < n; i++) {
        char extra[96];
        snprintf(extra, sizeof extra, "%s=\"%s\"", key, values[i]);
        sample(f, m, name, extra, (double)counts[i]);
    }
}

static void histogram(FILE *f, const bn_metrics *m, int k)
{
    const struct hist_def *d = &hist_defs[k];
    const hist *h = &m->h[k];
    char name[96], le[64], n[48];
    family(f, d->name, "histogram", d->help);
    snprintf(name, sizeof name, "%s_bucket", d->name);
    uint64_t cum = 0;
    for (int i = 0; i <= h->n; i++) {
        cum += h->counts[i];
        snprintf(le, sizeof le, "le=\"%s\"", i < h->n ? num(n, sizeof n, h->bounds[i]) : "+Inf");
        sample(f, m, name, le, (double)cum);
    }
    snprintf(name, sizeof name, "%s_count", d->name);
    sample(f, m, name, NULL, (double)h->count);
    snprintf(name, sizeof name, "%s_sum", d->name);
    sample(f, m, name, NULL, h->sum);
}

static void render_vllm(FILE *f, const bn_metrics *m, const bn_metrics_gauges *g)
{
    scalar(f, m, "vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", g->running);
    scalar(f, m, "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", g->waiting);
    scalar(f, m, "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", g->kv_usage);
    scalar(f, m, "vllm:prefix_cache_queries_total", "counter",
           "Prefix cache queries, in terms of number of queried tokens.", (double)m->cache_queries);
    scalar(f, m, "vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in terms of number of cached tokens.",
           (double)m->cache_hits);
    scalar(f, m, "vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
           (double)m->prompt_tokens);
    scalar(f, m, "vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
           (double)m->generation_tokens);
    labelled(f, m, "vllm:request_success_total", "Count of successfully processed requests.", "finished_reason",
             finish_reasons, m->success, N_FINISH);
    for (int k = 0; k < H_N; k++) histogram(f, m, k);
}

static void render_bitnetd(FILE *f, const bn_metrics *m, const bn_metrics_gauges *g)
{
    static const char *const states[] = {"busy", "idle", "down"};
    static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    int idle = g->workers_live - g->workers_busy, down = g->workers - g->workers_live;
    const double n[3] = {g->workers_busy, idle > 0 ? idle : 0, down > 0 ? down : 0};
    family(f, "bitnetd_workers", "gauge", "Worker processes by state (down: starting, restarting or dead).");
    for (int i = 0; i < 3; i++) {
        char extra[32];
        snprintf(extra, sizeof extra, "state=\"%s\"", states[i]);
        sample(f, m, "bitnetd_workers", extra, n[i]);
    }
    scalar(f, m, "bitnetd_workers_total", "gauge", "Worker processes configured.", g->workers);
    static const char *const slot_states[] = {"busy", "free"};
    int free_slots = g->slots - g->slots_busy;
    const double sl[2] = {g->slots_busy, free_slots > 0 ? free_slots : 0};
    family(f, "bitnetd_slots", "gauge", "Request slots of live workers by state (continuous batching).");
    for (int i = 0; i < 2; i++) {
        char extra[32];
        snprintf(extra, sizeof extra, "state=\"%s\"", slot_states[i]);
        sample(f, m, "bitnetd_slots", extra, sl[i]);
    }
    scalar(f, m, "bitnetd_worker_restarts_total", "counter", "Worker processes respawned after dying.",
           (double)m->restarts);
    labelled(f, m, "bitnetd_requests_rejected_total", "Generation requests refused before reaching a worker.",
             "reason", reject_reasons, m->rejected, N_REJECT);
    labelled(f, m, "bitnetd_http_responses_total", "HTTP responses by status class, every route.", "code", classes,
             m->http, 5);
}

char *bn_metrics_render(const bn_metrics *m, const bn_metrics_gauges *g, size_t *len)
{
    static const bn_metrics_gauges none;
    if (!g) g = &none;
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);   /* the growable buffer */
    if (!f) return NULL;
    render_vllm(f, m, g);
    render_bitnetd(f, m, g);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        free(out);
        return NULL;
    }
    if (len) *len = n;
    return out;
}
