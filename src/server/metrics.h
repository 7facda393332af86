/* GET /metrics: Prometheus text exposition. vLLM's metric names, labels (model_name) and
 * histogram buckets where vLLM has the metric, so existing dashboards and benchmark tools work
 * unchanged; bitnetd_* for what vLLM lacks. Only the master updates these (single thread). */
#ifndef BN_SERVER_METRICS_H
#define BN_SERVER_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct bn_metrics bn_metrics;

bn_metrics *bn_metrics_new(const char *model_name);
void bn_metrics_free(bn_metrics *m);
/* vLLM sizes the token-count histograms (1, 2, 5, 10, ... <= max_model_len) by the served
 * context; call once before the first request (it clears them). Default: 1 << 20. */
void bn_metrics_set_max_model_len(bn_metrics *m, uint32_t max_model_len);

/* A finished generation request (success = it produced a response, even a stopped one). Its
 * prompt_tokens are the prefix cache's queries, its cached_tokens the hits (vLLM's
 * vllm:prefix_cache_queries_total / vllm:prefix_cache_hits_total, counted in tokens). */
typedef struct bn_metrics_req {
    const char *finished_reason;    /* "stop", "length", "abort" */
    uint32_t prompt_tokens, generation_tokens;
    uint32_t cached_tokens;         /* prompt tokens served from the prefix cache */
    double queue_s, ttft_s, e2e_s, prefill_s, decode_s;   /* < 0 = unknown, not observed */
} bn_metrics_req;
void bn_metrics_request(bn_metrics *m, const bn_metrics_req *r);
/* One inter-token gap of a stream (seconds). */
void bn_metrics_itl(bn_metrics *m, double s);
/* Rejected before a worker: reason "queue_full", "queue_timeout", "context_length", "invalid",
 * "unauthorized", "draining", "loading" (no worker ready yet); anything else counts as "other". */
void bn_metrics_rejected(bn_metrics *m, const char *reason);
void bn_metrics_worker_restart(bn_metrics *m);
/* HTTP responses by status class, for every route. */
void bn_metrics_http(bn_metrics *m, int status);

/* Point-in-time values the master supplies at render time. */
typedef struct bn_metrics_gauges {
    int running, waiting;           /* requests on a worker / in the queue */
    int workers, workers_busy, workers_live;
    double kv_usage;                /* 0..1 over live workers */
    int slots, slots_busy;          /* request slots of live workers: in all / running a request */
} bn_metrics_gauges;
/* The whole exposition, malloc'd, NUL-terminated (*len set). */
char *bn_metrics_render(const bn_metrics *m, const bn_metrics_gauges *g, size_t *len);

#endif
