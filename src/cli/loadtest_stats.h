/* Statistics and reports of `bitnet loadtest`: sample sets, percentiles, and the results of a
 * run written as a text table or as one JSON object. No I/O besides the report itself. */
#ifndef BN_CLI_LOADTEST_STATS_H
#define BN_CLI_LOADTEST_STATS_H

#include <stdio.h>

#include "base/error.h"

/* A growable set of samples (seconds, or tokens/s). */
typedef struct {
    double *v;
    size_t n, cap;
} bn_lt_samples;

int bn_lt_samples_push(bn_lt_samples *s, double x);
/* Appends every sample of src to dst. */
int bn_lt_samples_extend(bn_lt_samples *dst, const bn_lt_samples *src);
void bn_lt_samples_free(bn_lt_samples *s);

/* n == 0: the other fields are meaningless (reported as null / "-"). */
typedef struct {
    size_t n;
    double mean, p50, p95, p99, max;
} bn_lt_summary;

/* Sorts s in place and summarizes it; percentiles interpolate linearly between ranks. */
void bn_lt_summarize(bn_lt_samples *s, bn_lt_summary *out);
/* The p-quantile (0..1) of n sorted values, n >= 1. */
double bn_lt_percentile(const double *sorted, size_t n, double p);

/* Why a request failed: one counter each in the report. */
enum bn_lt_err { BN_LT_CONNECT, BN_LT_HTTP, BN_LT_STREAM, BN_LT_TIMEOUT, BN_LT_MALFORMED, BN_LT_NERR };
#define BN_LT_MAX_STATUS 600

typedef struct {
    /* what was run, for the report's header */
    const char *url, *endpoint, *model; /* model may be NULL: none sent */
    int users;                          /* closed loop; 0 in open loop */
    double rate;                        /* open loop arrivals/s; 0 in closed loop */
    long max_tokens;
    /* outcome */
    long ok, failed, cancelled;         /* cancelled: in flight when --duration ran out */
    long err[BN_LT_NERR];
    long http_status[BN_LT_MAX_STATUS]; /* failures by status; others under index 0 */
    char err_sample[BN_LT_NERR][160];   /* the first message seen of each kind */
    long long prompt_tokens, completion_tokens; /* successful requests only */
    double wall_s;                      /* first request sent to last one finished */
    bn_lt_samples ttft, itl, e2e, decode; /* seconds, except decode in tokens/s */
} bn_lt_results;

/* Counts one failure of the given kind (status: the HTTP status for BN_LT_HTTP). */
void bn_lt_count_error(bn_lt_results *r, enum bn_lt_err kind, int status, const char *msg);
void bn_lt_report_text(bn_lt_results *r, FILE *f);
int bn_lt_report_json(bn_lt_results *r, FILE *f, bn_error *err);
void bn_lt_results_free(bn_lt_results *r);

#endif
