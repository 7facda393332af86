/* Statistics and reports of `bitnet loadtest`: sample sets, percentiles, the token timeline, and
 * the results of a run written as a text table or as one JSON object (the HTML report is in
 * loadtest_html.c). No I/O besides the report itself. */
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

/* Token arrivals of successful requests, for the HTML report's charts: seconds since the run's
 * start, one series per closed-loop user (one series in open loop). Memory is bounded: once
 * `cap` arrivals are stored in all, later ones are only counted in `dropped`. */
#define BN_LT_MAX_ARRIVALS ((size_t)1 << 20) /* 4 MiB of floats */

typedef struct {
    float *t; /* ascending within a series: a user's requests do not overlap */
    size_t n, cap;
} bn_lt_series;

typedef struct {
    bn_lt_series *series;
    size_t nseries, stored, dropped, cap;
} bn_lt_timeline;

/* nseries >= 1 empty series, at most cap arrivals stored in all. -1: out of memory. */
int bn_lt_timeline_init(bn_lt_timeline *tl, size_t nseries, size_t cap);
/* Appends to series i one request's arrivals: first, then first + itl[0], first + itl[0] +
 * itl[1], ... (a request's n_itl inter-token gaps give its n_itl + 1 arrival times). */
int bn_lt_timeline_add(bn_lt_timeline *tl, size_t i, double first, const double *itl, size_t n_itl);
void bn_lt_timeline_free(bn_lt_timeline *tl);

/* Why a request failed: one counter each in the report. */
enum bn_lt_err { BN_LT_CONNECT, BN_LT_HTTP, BN_LT_STREAM, BN_LT_TIMEOUT, BN_LT_MALFORMED, BN_LT_NERR };
#define BN_LT_MAX_STATUS 600

/* The results of a run, and (the same structure) of each of its --group client groups. */
typedef struct bn_lt_results bn_lt_results;
struct bn_lt_results {
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
    bn_lt_timeline timeline;              /* empty unless the driver was asked for it */
    /* client groups (--group): each has its own results; the run's own fields add them up */
    const char *name;                     /* a group's name (NULL for the whole run) */
    int has_priority, priority;           /* the body's "priority", when one was sent */
    int api_key;                          /* a key was sent (never shown) */
    long requests_limit;                  /* a group's own requests=, -1 if none */
    bn_lt_results *groups;                /* ngroups entries, owned; NULL without --group */
    size_t ngroups;
};

/* The four latency/rate rows of every report, in order; scale turns samples into the unit
 * shown (key: the JSON report's). Summarizing sorts the samples in place. */
#define BN_LT_NROWS 4
typedef struct {
    const char *key, *label, *unit;
    double scale;
    bn_lt_summary s;
    const bn_lt_samples *samples; /* sorted */
} bn_lt_stat_row;

void bn_lt_stat_rows(bn_lt_results *r, bn_lt_stat_row rows[BN_LT_NROWS]);
/* An error kind's JSON key ("connect") and words ("connect error"). */
const char *bn_lt_err_key(enum bn_lt_err kind);
const char *bn_lt_err_words(enum bn_lt_err kind);
/* x / wall, 0 when wall is 0. */
double bn_lt_per_s(double x, double wall);

/* Counts one failure of the given kind (status: the HTTP status for BN_LT_HTTP). */
void bn_lt_count_error(bn_lt_results *r, enum bn_lt_err kind, int status, const char *msg);
/* The run, then one section per group. */
void bn_lt_report_text(bn_lt_results *r, FILE *f);
/* A group's settings in words ("8 users, priority 10, max_tokens 256"). */
void bn_lt_group_words(const bn_lt_results *g, char *buf, size_t n);
int bn_lt_report_json(bn_lt_results *r, FILE *f, bn_error *err);
void bn_lt_results_free(bn_lt_results *r);

#endif
