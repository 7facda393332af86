#include "cli/loadtest_stats.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

int bn_lt_samples_push(bn_lt_samples *s, double x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        double *v = realloc(s->v, cap * sizeof *v);
        if (!v) return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return 0;
}

int bn_lt_samples_extend(bn_lt_samples *dst, const bn_lt_samples *src)
{
    for (size_t i = 0; i < src->n; i++)
        if (bn_lt_samples_push(dst, src->v[i])) return -1;
    return 0;
}

void bn_lt_samples_free(bn_lt_samples *s)
{
    free(s->v);
    memset(s, 0, sizeof *s);
}

int bn_lt_timeline_init(bn_lt_timeline *tl, size_t nseries, size_t cap)
{
    *tl = (bn_lt_timeline){.series = calloc(nseries, sizeof *tl->series), .nseries = nseries, .cap = cap};
    if (!tl->series) tl->nseries = 0;
    return tl->series ? 0 : -1;
}

int bn_lt_timeline_add(bn_lt_timeline *tl, size_t i, double first, const double *itl, size_t n_itl)
{
    bn_lt_series *s = &tl->series[i];
    size_t room = tl->cap - tl->stored, n = n_itl + 1, keep = n < room ? n : room;
    if (s->n + keep > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->n + keep) cap *= 2;
        float *t = realloc(s->t, cap * sizeof *t);
        if (!t) return -1;
        s->t = t;
        s->cap = cap;
    }
    double t = first;
    for (size_t k = 0; k < keep; k++) {
        s->t[s->n++] = (float)t;
        if (k < n_itl) t += itl[k];
    }
    tl->stored += keep;
    tl->dropped += n - keep;
    return 0;
}

void bn_lt_timeline_free(bn_lt_timeline *tl)
{
    for (size_t i = 0; i < tl->nseries; i++) free(tl->series[i].t);
    free(tl->series);
    memset(tl, 0, sizeof *tl);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bn_lt_percentile(const double *sorted, size_t n, double p)
{
    double pos = p * (double)(n - 1);
    size_t lo = (size_t)pos;
    if (lo + 1 >= n) return sorted[n - 1];
    return sorted[lo] + (pos - (double)lo) * (sorted[lo + 1] - sorted[lo]);
}

void bn_lt_summarize(bn_lt_samples *s, bn_lt_summary *out)
{
    memset(out, 0, sizeof *out);
    if (!(out->n = s->n)) return;
    qsort(s->v, s->n, sizeof *s->v, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < s->n; i++) sum += s->v[i];
    out->mean = sum / (double)s->n;
    out->p50 = bn_lt_percentile(s->v, s->n, 0.50);
    out->p95 = bn_lt_percentile(s->v, s->n, 0.95);
    out->p99 = bn_lt_percentile(s->v, s->n, 0.99);
    out->max = s->v[s->n - 1];
}

/* Error kinds: JSON key and words for the text report, in enum order. */
static const struct {
    const char *key, *words;
} err_names[BN_LT_NERR] = {
    {"connect", "connect error"}, {"http", "HTTP error"}, {"stream", "in-stream error"},
    {"timeout", "timeout"}, {"malformed", "malformed stream"},
};

void bn_lt_count_error(bn_lt_results *r, enum bn_lt_err kind, int status, const char *msg)
{
    r->failed++;
    r->err[kind]++;
    if (kind == BN_LT_HTTP) r->http_status[status > 0 && status < BN_LT_MAX_STATUS ? status : 0]++;
    if (!r->err_sample[kind][0] && msg)
        snprintf(r->err_sample[kind], sizeof r->err_sample[kind], "%s", msg);
}

void bn_lt_stat_rows(bn_lt_results *r, bn_lt_stat_row rows[BN_LT_NROWS])
{
    bn_lt_samples *src[BN_LT_NROWS] = {&r->ttft, &r->itl, &r->e2e, &r->decode};
    static const bn_lt_stat_row proto[BN_LT_NROWS] = {
        {"ttft_ms", "TTFT (ms)", "ms", 1e3, {0}, NULL}, {"itl_ms", "ITL (ms)", "ms", 1e3, {0}, NULL},
        {"e2e_ms", "E2E (ms)", "ms", 1e3, {0}, NULL}, {"decode_tok_s", "decode (tok/s)", "tok/s", 1, {0}, NULL},
    };
    for (int i = 0; i < BN_LT_NROWS; i++) {
        rows[i] = proto[i];
        bn_lt_summarize(src[i], &rows[i].s);
        rows[i].samples = src[i];
    }
}

const char *bn_lt_err_key(enum bn_lt_err kind) { return err_names[kind].key; }
const char *bn_lt_err_words(enum bn_lt_err kind) { return err_names[kind].words; }

double bn_lt_per_s(double x, double wall) { return wall > 0 ? x / wall : 0; }

/* The requests line, the four statistics rows and the errors: the body of a run's or a
 * group's text report. */
static void text_body(bn_lt_results *r, FILE *f, const char *cancelled_words)
{
    bn_lt_stat_row rows[BN_LT_NROWS];
    bn_lt_stat_rows(r, rows);
    fprintf(f, "requests   %ld ok, %ld failed", r->ok, r->failed);
    if (r->cancelled) fprintf(f, " (%ld %s, not counted)", r->cancelled, cancelled_words);
    fprintf(f, " in %.2f s: %.2f req/s\n", r->wall_s, bn_lt_per_s((double)(r->ok + r->failed), r->wall_s));
    fprintf(f, "tokens     %lld prompt, %lld completion: %.1f output tok/s\n\n", r->prompt_tokens,
            r->completion_tokens, bn_lt_per_s((double)r->completion_tokens, r->wall_s));
    fprintf(f, "%-16s %7s %10s %10s %10s %10s %10s\n", "", "n", "mean", "p50", "p95", "p99", "max");
    for (int i = 0; i < BN_LT_NROWS; i++) {
        const bn_lt_summary *s = &rows[i].s;
        double k = rows[i].scale;
        fprintf(f, "%-16s %7zu", rows[i].label, s->n);
        if (s->n) fprintf(f, " %10.2f %10.2f %10.2f %10.2f %10.2f\n", s->mean * k, s->p50 * k, s->p95 * k,
                          s->p99 * k, s->max * k);
        else fprintf(f, " %10s %10s %10s %10s %10s\n", "-", "-", "-", "-", "-");
    }
    fprintf(f, "\nerrors    ");
    if (!r->failed) fprintf(f, " none");
    for (int k = 0; k < BN_LT_NERR; k++) {
        if (!r->err[k]) continue;
        if (k == BN_LT_HTTP) {
            for (int st = 0; st < BN_LT_MAX_STATUS; st++)
                if (r->http_status[st]) fprintf(f, " %ld HTTP status %d;", r->http_status[st], st);
        } else {
            fprintf(f, " %ld %s;", r->err[k], err_names[k].words);
        }
    }
    fputc('\n', f);
    for (int k = 0; k < BN_LT_NERR; k++)
        if (r->err_sample[k][0]) fprintf(f, "  first %s: %s\n", err_names[k].words, r->err_sample[k]);
}

void bn_lt_group_words(const bn_lt_results *g, char *buf, size_t n)
{
    int k = snprintf(buf, n, "%d user%s", g->users, g->users == 1 ? "" : "s");
    if (k >= 0 && (size_t)k < n && g->has_priority) k += snprintf(buf + k, n - (size_t)k, ", priority %d", g->priority);
    if (k >= 0 && (size_t)k < n) k += snprintf(buf + k, n - (size_t)k, ", max_tokens %ld", g->max_tokens);
    if (k >= 0 && (size_t)k < n && g->requests_limit >= 0)
        k += snprintf(buf + k, n - (size_t)k, ", %ld requests", g->requests_limit);
    if (k >= 0 && (size_t)k < n && g->api_key) snprintf(buf + k, n - (size_t)k, ", API key sent");
}

void bn_lt_report_text(bn_lt_results *r, FILE *f)
{
    fprintf(f, "bitnet loadtest: %s, model %s, ", r->url, r->model ? r->model : "(none sent)");
    if (r->users) fprintf(f, "closed loop, %d user%s", r->users, r->users == 1 ? "" : "s");
    else fprintf(f, "open loop, %g req/s Poisson arrivals", r->rate);
    if (r->ngroups) fprintf(f, " in %zu groups\n", r->ngroups);
    else fprintf(f, ", max_tokens %ld\n", r->max_tokens);
    if (!r->ngroups && r->has_priority) fprintf(f, "priority   %d (sent in every request)\n", r->priority);
    text_body(r, f, r->ngroups ? "in flight at the end" : "in flight at the deadline");
    fprintf(f, "(decode: per request, (completion_tokens - 1) / (e2e - ttft))\n");
    for (size_t i = 0; i < r->ngroups; i++) {
        char words[160];
        bn_lt_group_words(&r->groups[i], words, sizeof words);
        fprintf(f, "\ngroup %s: %s\n", r->groups[i].name, words);
        text_body(&r->groups[i], f, "in flight at the end");
    }
}

static json_t *summary_json(const bn_lt_stat_row *row)
{
    const bn_lt_summary *s = &row->s;
    double k = row->scale;
#define V(x) (s->n ? json_real((x) * k) : json_null())
    return json_pack("{s:I,s:o,s:o,s:o,s:o,s:o}", "n", (json_int_t)s->n, "mean", V(s->mean), "p50", V(s->p50),
                     "p95", V(s->p95), "p99", V(s->p99), "max", V(s->max));
#undef V
}

static json_t *errors_json(const bn_lt_results *r)
{
    json_t *e = json_object(), *st = json_object();
    if (!e || !st) goto fail;
    for (int k = 0; k < BN_LT_NERR; k++)
        if (json_object_set_new(e, err_names[k].key, json_integer(r->err[k]))) goto fail;
    for (int i = 0; i < BN_LT_MAX_STATUS; i++) {
        char key[16];
        snprintf(key, sizeof key, "%d", i);
        if (r->http_status[i] && json_object_set_new(st, key, json_integer(r->http_status[i]))) goto fail;
    }
    if (json_object_set_new(e, "http_status", st)) {
        st = NULL;
        goto fail;
    }
    return e;
fail:
    json_decref(e);
    json_decref(st);
    return NULL;
}

/* The counts, statistics and errors of a run or a group (keys shared by both). */
static int body_json(bn_lt_results *r, json_t *o)
{
    bn_lt_stat_row rows[BN_LT_NROWS];
    bn_lt_stat_rows(r, rows);
    json_t *b = json_pack("{s:I,s:f,s:I,s:I,s:I,s:f,s:I,s:I,s:f}", "max_tokens", (json_int_t)r->max_tokens,
                          "duration_s", r->wall_s, "requests_ok", (json_int_t)r->ok,
                          "requests_failed", (json_int_t)r->failed, "requests_cancelled", (json_int_t)r->cancelled,
                          "requests_per_s", bn_lt_per_s((double)(r->ok + r->failed), r->wall_s),
                          "prompt_tokens", (json_int_t)r->prompt_tokens,
                          "completion_tokens", (json_int_t)r->completion_tokens,
                          "output_tok_s", bn_lt_per_s((double)r->completion_tokens, r->wall_s));
    int bad = !b || json_object_update(o, b);
    json_decref(b);
    for (int i = 0; i < BN_LT_NROWS && !bad; i++) bad = json_object_set_new(o, rows[i].key, summary_json(&rows[i]));
    if (!bad) bad = json_object_set_new(o, "errors", errors_json(r));
    return bad ? -1 : 0;
}

static json_t *group_json(bn_lt_results *g)
{
    json_t *o = json_pack("{s:s,s:i,s:o,s:b,s:o}", "name", g->name ? g->name : "", "users", g->users,
                          "priority", g->has_priority ? json_integer(g->priority) : json_null(), "api_key", g->api_key,
                          "requests_limit", g->requests_limit >= 0 ? json_integer(g->requests_limit) : json_null());
    if (o && body_json(g, o)) {
        json_decref(o);
        o = NULL;
    }
    return o;
}

int bn_lt_report_json(bn_lt_results *r, FILE *f, bn_error *err)
{
    json_t *o = json_pack("{s:s,s:s,s:o,s:s,s:o,s:o,s:o}", "url", r->url, "endpoint", r->endpoint,
                          "model", r->model ? json_string(r->model) : json_null(),
                          "mode", r->users ? "closed" : "open",
                          "users", r->users ? json_integer(r->users) : json_null(),
                          "rate", r->users ? json_null() : json_real(r->rate),
                          "priority", r->has_priority && !r->ngroups ? json_integer(r->priority) : json_null());
    json_t *groups = json_array();
    int bad = !o || !groups || body_json(r, o);
    for (size_t i = 0; i < r->ngroups && !bad; i++) bad = json_array_append_new(groups, group_json(&r->groups[i]));
    if (!bad) {
        bad = json_object_set_new(o, "groups", groups);
        groups = NULL;
    }
    json_decref(groups);
    if (bad || json_dumpf(o, f, JSON_INDENT(2) | JSON_REAL_PRECISION(6)) || fputc('\n', f) == EOF) {
        json_decref(o);
        return bn_err(err, "cannot write the JSON report");
    }
    json_decref(o);
    return 0;
}

void bn_lt_results_free(bn_lt_results *r)
{
    for (size_t i = 0; i < r->ngroups; i++) bn_lt_results_free(&r->groups[i]);
    free(r->groups);
    r->groups = NULL;
    r->ngroups = 0;
    bn_lt_timeline_free(&r->timeline);
    bn_lt_samples_free(&r->ttft);
    bn_lt_samples_free(&r->itl);
    bn_lt_samples_free(&r->e2e);
    bn_lt_samples_free(&r->decode);
}
