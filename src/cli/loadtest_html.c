/* The HTML report: a page that needs nothing but itself. The charts are SVG drawn here with a
 * viewBox (they scale to any width, a phone's included); numbers in the summary carry the JSON
 * report's keys as ids, so a reader or a test can match the two reports. */
#include "cli/loadtest_html.h"

#include <math.h>
#include <string.h>

/* A chart: the viewBox, and the plot area inside it (room for the axes' labels). */
#define VW 520
#define VH 250
#define ML 62.0
#define MR 30.0
#define MT 12.0
#define MB 46.0
#define PW (VW - ML - MR)
#define PH (VH - MT - MB)

#define BINS 32             /* about this many histogram bars at most (2.5 x when rounding down) */
#define MAX_BINS (5 * BINS / 2 + 1)
#define MAX_LINES 256       /* user lines drawn; the others are named in the caption */
#define POINT_BUDGET 60000  /* polyline vertices over all user lines: bounds the page's size */
#define RATE_BINS 40        /* at most about this many bins of the tok/s chart */
#define MAX_LEGEND 16

static const char css[] =
    "body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2125;background:#fff;"
    "margin:0 auto;max-width:920px;padding:12px}\n"
    "h1{font-size:1.45em;margin:.3em 0}h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}\n"
    ".sub{color:#555;margin:0;overflow-wrap:anywhere}.note,figcaption{color:#555;font-size:.9em}\n"
    ".scroll{overflow-x:auto}table{border-collapse:collapse;font-variant-numeric:tabular-nums}\n"
    "th,td{padding:3px 9px;border-bottom:1px solid #eee;text-align:right;vertical-align:top}\n"
    "th:first-child,td:first-child{text-align:left}td.msg{text-align:left;overflow-wrap:anywhere;max-width:28em}\n"
    "table.kv td:last-child{text-align:left;overflow-wrap:anywhere}\n"
    "figure{margin:1em 0}svg{display:block;width:100%;height:auto;max-width:640px}\n"
    "svg text{font-size:13px;fill:#333}.axis{stroke:#555}.grid{stroke:#e6e6e6}\n"
    ".bar{fill:#3b6ea8}.over{fill:#c0504d}polyline{fill:none;stroke-width:1.6}.agg{stroke:#3b6ea8}\n"
    "ul.legend{list-style:none;padding:0;margin:.3em 0;display:flex;flex-wrap:wrap;gap:.2em 1.2em;font-size:.9em}\n"
    "ul.legend span{display:inline-block;width:1.4em;height:.3em;margin-right:.4em;vertical-align:middle}\n"
    "@media (max-width:520px){body{font-size:14px;padding:8px}th,td{padding:3px 5px}}\n";

/* ---- escaping ---- */

/* Length of the valid UTF-8 sequence at p (1 for ASCII), 0 if it is not one (overlong forms,
 * surrogates and code points past U+10FFFF included). A NUL ends any sequence. */
static size_t utf8_len(const unsigned char *p)
{
    unsigned c = p[0];
    size_t n = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xc0) != 0x80) return 0;
    if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0) || (c == 0xf0 && p[1] < 0x90) ||
        (c == 0xf4 && p[1] >= 0x90))
        return 0;
    return n;
}

void bn_lt_html_escape(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        size_t n = utf8_len(p);
        if (n > 1) {
            fwrite(p, 1, n, f);
            p += n;
            continue;
        }
        switch (*p) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default:
            if (!n || (*p < 0x20 && *p != '\t' && *p != '\n') || *p == 0x7f) fputs("&#xFFFD;", f);
            else fputc(*p, f);
        }
        p++;
    }
}

static void put_cell(FILE *f, const char *s)
{
    fputs("<td>", f);
    bn_lt_html_escape(f, s);
    fputs("</td>", f);
}

/* ---- axes ---- */

/* The smallest 1, 2 or 5 x 10^k that is >= x (x > 0): steps people read at a glance. */
static double nice_ceil(double x)
{
    double e = pow(10, floor(log10(x))), m = x / e;
    return (m <= 1 + 1e-9 ? 1 : m <= 2 + 1e-9 ? 2 : m <= 5 + 1e-9 ? 5 : 10) * e;
}

/* The largest 1, 2 or 5 x 10^k that is <= x (x > 0). */
static double nice_floor(double x)
{
    double e = pow(10, floor(log10(x))), m = x / e;
    return (m >= 5 - 1e-9 ? 5 : m >= 2 - 1e-9 ? 2 : 1) * e;
}

/* A count axis: a whole step >= 1, and a top that is a multiple of it. */
static double count_step(double max, double *top)
{
    double step = max > 4 ? nice_ceil(max / 4) : 1;
    *top = step * ceil((max > 0 ? max : 1) / step);
    return step;
}

static void fmt_tick(char *buf, size_t n, double v, double step)
{
    int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    if (fabs(v) < step * 1e-6) v = 0; /* no "-0" */
    snprintf(buf, n, "%.*f", dec > 6 ? 6 : dec, v);
}

typedef struct {
    double x0, x1, y0, y1;
} axes;

static double sx(const axes *a, double x) { return ML + (x - a->x0) / (a->x1 - a->x0) * PW; }
static double sy(const axes *a, double y) { return MT + PH - (y - a->y0) / (a->y1 - a->y0) * PH; }

static void svg_open(FILE *f, const char *label)
{
    fprintf(f, "<svg viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"", VW, VH);
    bn_lt_html_escape(f, label);
    fputs("\">\n", f);
}

/* Grid, ticks and labels; x ticks stop at xlast (a histogram's outlier bar is labelled apart). */
static void draw_axes(FILE *f, const axes *a, double xstep, double xlast, double ystep, const char *xlabel,
                      const char *ylabel)
{
    char b[64];
    for (int i = 0; i <= 64; i++) { /* y: 0, ystep, ... up to the top */
        double y = a->y0 + i * ystep;
        if (y > a->y1 + ystep * 1e-6) break;
        fmt_tick(b, sizeof b, y, ystep);
        fprintf(f, "<line class=\"grid\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>"
                   "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                ML, ML + PW, sy(a, y), sy(a, y), ML - 5, sy(a, y) + 4, b);
    }
    double first = ceil(a->x0 / xstep - 1e-9) * xstep;
    for (int i = 0; i <= 64; i++) {
        double x = first + i * xstep;
        if (x > xlast + xstep * 1e-6) break;
        fmt_tick(b, sizeof b, x, xstep);
        fprintf(f, "<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>"
                   "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
                sx(a, x), sx(a, x), MT + PH, MT + PH + 4, sx(a, x), MT + PH + 19, b);
    }
    fprintf(f, "<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>"
               "<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>\n",
            ML, ML + PW, MT + PH, MT + PH, ML, ML, MT, MT + PH);
    fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">", ML + PW / 2, VH - 6);
    bn_lt_html_escape(f, xlabel);
    fprintf(f, "</text><text transform=\"translate(14 %.1f) rotate(-90)\" text-anchor=\"middle\">", MT + PH / 2);
    bn_lt_html_escape(f, ylabel);
    fputs("</text>\n", f);
}

/* ---- latency histograms ---- */

/* Bars of equal width from the smallest sample; when a few outliers would squeeze every other
 * bar into one, the range stops at p99 and the rest form one red bar on the right. */
static void histogram(FILE *f, const bn_lt_stat_row *row, const char *count_of)
{
    const bn_lt_samples *s = row->samples;
    fputs("<figure>\n", f);
    if (!s->n) {
        fprintf(f, "<figcaption>%s: no samples</figcaption></figure>\n", row->label);
        return;
    }
    double k = row->scale, lo = s->v[0] * k, hi = s->v[s->n - 1] * k, p99 = row->s.p99 * k;
    int clip = s->n >= 20 && p99 > lo && hi - lo > 2 * (p99 - lo);
    double top = clip ? p99 : hi, span = top - lo;
    if (span <= 0) span = lo > 0 ? lo * 0.2 : 1;
    size_t target = (size_t)ceil(2 * sqrt((double)s->n));
    target = target < 8 ? 8 : target > BINS ? BINS : target;
    double w = nice_floor(span / (double)target), start = floor(lo / w) * w;
    size_t nb = (size_t)ceil((top - start) / w - 1e-9);
    nb = nb < 1 ? 1 : nb > MAX_BINS ? MAX_BINS : nb;
    long counts[MAX_BINS] = {0}, over = 0, maxc = 0;
    for (size_t i = 0; i < s->n; i++) {
        double x = s->v[i] * k, q = (x - start) / w;
        if (clip && x > top) over++;
        else counts[q <= 0 ? 0 : (size_t)q >= nb ? nb - 1 : (size_t)q]++;
    }
    for (size_t b = 0; b < nb; b++) maxc = counts[b] > maxc ? counts[b] : maxc;
    maxc = over > maxc ? over : maxc;
    axes a = {start, start + (double)(nb + (size_t)clip) * w, 0, 0};
    double ystep = count_step((double)maxc, &a.y1), xstep = nice_ceil((double)nb * w / 5);
    char lab[96];
    snprintf(lab, sizeof lab, "histogram of %s", row->label);
    svg_open(f, lab);
    draw_axes(f, &a, xstep, start + (double)nb * w, ystep, row->label, count_of);
    char t0[32], t1[32];
    for (size_t b = 0; b < nb + (size_t)clip; b++) {
        long c = b < nb ? counts[b] : over;
        double x = sx(&a, start + (double)b * w), bw = PW / (double)(nb + (size_t)clip);
        fprintf(f, "<rect class=\"%s\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\"><title>",
                b < nb ? "bar" : "over", x + 0.5, sy(&a, (double)c), bw > 2 ? bw - 1 : bw, PH - (sy(&a, (double)c) - MT));
        fmt_tick(t0, sizeof t0, start + (double)b * w, w / 10);
        fmt_tick(t1, sizeof t1, b < nb ? start + (double)(b + 1) * w : hi, w / 10);
        if (b < nb) fprintf(f, "%s to %s: %ld</title></rect>\n", t0, t1, c);
        else fprintf(f, "above p99 (%s), up to %s: %ld</title></rect>\n", t0, t1, c);
    }
    if (clip)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">&gt;p99</text>\n",
                sx(&a, start + ((double)nb + 0.5) * w), sy(&a, (double)over) - 4);
    fmt_tick(t0, sizeof t0, w, w / 10);
    fprintf(f, "</svg>\n<figcaption>%s: %zu %s, bins of %s %s", row->label, s->n, count_of, t0, row->unit);
    if (clip) {
        fmt_tick(t0, sizeof t0, p99, w / 10);
        fmt_tick(t1, sizeof t1, hi, w / 10);
        fprintf(f, "; the red bar holds the %ld above p99 (%s %s), up to %s %s", over, t0, row->unit, t1, row->unit);
    }
    fputs("</figcaption></figure>\n", f);
}

/* ---- tokens over time ---- */

static double timeline_end(const bn_lt_results *r)
{
    double end = r->wall_s;
    for (size_t i = 0; i < r->timeline.nseries; i++) {
        const bn_lt_series *s = &r->timeline.series[i];
        if (s->n && s->t[s->n - 1] > end) end = s->t[s->n - 1];
    }
    return end > 0 ? end : 1;
}

static void user_colour(char *buf, size_t n, size_t i)
{
    snprintf(buf, n, "hsl(%.0f,70%%,40%%)", fmod((double)i * 137.508, 360)); /* golden angle: distinct */
}

/* One line per closed-loop user: cumulative tokens against seconds since the start. Each line
 * keeps one vertex per horizontal step of the budget (its last token there), exact enough at
 * any screen's resolution and bounded in size. */
static void users_chart(FILE *f, const bn_lt_results *r)
{
    const bn_lt_timeline *tl = &r->timeline;
    size_t ndraw = tl->nseries < MAX_LINES ? tl->nseries : MAX_LINES, ymax = 0;
    for (size_t i = 0; i < tl->nseries; i++) ymax = tl->series[i].n > ymax ? tl->series[i].n : ymax;
    double end = timeline_end(r), cols = (double)(POINT_BUDGET / (ndraw ? ndraw : 1));
    cols = cols < 16 ? 16 : cols > PW ? PW : cols;
    axes a = {0, end, 0, 0};
    double ystep = count_step((double)ymax, &a.y1);
    fputs("<figure>\n", f);
    svg_open(f, "cumulative tokens per user over time");
    draw_axes(f, &a, nice_ceil(end / 5), end, ystep, "seconds since the start", "tokens (cumulative)");
    char col[32];
    for (size_t i = 0; i < ndraw; i++) {
        const bn_lt_series *s = &tl->series[i];
        user_colour(col, sizeof col, i);
        fprintf(f, "<polyline class=\"user\" data-user=\"%zu\" style=\"stroke:%s\" points=\"%.1f,%.1f", i + 1, col,
                sx(&a, 0), sy(&a, 0));
        if (s->n) fprintf(f, " %.1f,%.1f", sx(&a, s->t[0]), sy(&a, 0));
        for (size_t j = 0; j < s->n; j++) {
            long here = (long)(s->t[j] / end * cols);
            if (j + 1 == s->n || (long)(s->t[j + 1] / end * cols) != here)
                fprintf(f, " %.1f,%.1f", sx(&a, s->t[j]), sy(&a, (double)(j + 1)));
        }
        fprintf(f, "\"><title>user %zu: %zu tokens</title></polyline>\n", i + 1, s->n);
    }
    fprintf(f, "</svg>\n<figcaption>Tokens received by each of the %zu closed-loop users (content chunks of "
               "successful requests)", tl->nseries);
    if (ndraw < tl->nseries) fprintf(f, "; the first %zu users are drawn", ndraw);
    fputs(".</figcaption>\n", f);
    if (ndraw <= MAX_LEGEND) {
        fputs("<ul class=\"legend\">", f);
        for (size_t i = 0; i < ndraw; i++) {
            user_colour(col, sizeof col, i);
            fprintf(f, "<li><span style=\"background:%s\"></span>user %zu: %zu tokens</li>", col, i + 1,
                    tl->series[i].n);
        }
        fputs("</ul>\n", f);
    }
    fputs("</figure>\n", f);
}

/* All users' tokens per second, in bins of a round width: the server's output over the run. */
static void rate_chart(FILE *f, const bn_lt_results *r)
{
    const bn_lt_timeline *tl = &r->timeline;
    double end = timeline_end(r), bw = nice_ceil(end / RATE_BINS);
    size_t nb = (size_t)ceil(end / bw - 1e-9);
    nb = nb < 1 ? 1 : nb > 2 * RATE_BINS ? 2 * RATE_BINS : nb;
    long counts[2 * RATE_BINS] = {0}, maxc = 0;
    for (size_t i = 0; i < tl->nseries; i++)
        for (size_t j = 0; j < tl->series[i].n; j++) {
            double q = tl->series[i].t[j] / bw;
            counts[q <= 0 ? 0 : (size_t)q >= nb ? nb - 1 : (size_t)q]++;
        }
    for (size_t b = 0; b < nb; b++) maxc = counts[b] > maxc ? counts[b] : maxc;
    axes a = {0, (double)nb * bw, 0, 0};
    double ymax = (double)maxc / bw, ystep = ymax > 0 ? nice_ceil(ymax / 4) : 1;
    a.y1 = ystep * ceil((ymax > 0 ? ymax : 1) / ystep);
    fputs("<figure>\n", f);
    svg_open(f, "output tokens per second over time");
    draw_axes(f, &a, nice_ceil(a.x1 / 5), a.x1, ystep, "seconds since the start", "tokens/s (all users)");
    fputs("<polyline class=\"agg\" points=\"", f);
    for (size_t b = 0; b < nb; b++) {
        double y = sy(&a, (double)counts[b] / bw);
        fprintf(f, "%s%.1f,%.1f %.1f,%.1f", b ? " " : "", sx(&a, (double)b * bw), y, sx(&a, (double)(b + 1) * bw), y);
    }
    char t[32];
    fmt_tick(t, sizeof t, bw, bw / 10);
    fprintf(f, "\"/>\n</svg>\n<figcaption>Output tokens/s of all %s together, in bins of %s s (content chunks "
               "of successful requests).</figcaption></figure>\n", r->users ? "users" : "requests", t);
}

static void timeline_section(FILE *f, const bn_lt_results *r)
{
    const bn_lt_timeline *tl = &r->timeline;
    fputs("<h2>Tokens over time</h2>\n", f);
    if (!tl->stored) {
        fputs("<p class=\"note\">No token was received by a successful request.</p>\n", f);
        return;
    }
    if (r->users) users_chart(f, r);
    rate_chart(f, r);
    fprintf(f, "<p class=\"note\">Token arrival times are kept for at most %zu tokens: ", tl->cap);
    if (tl->dropped)
        fprintf(f, "%zu were stored and the %zu received later were not, so the charts end early.</p>\n",
                tl->stored, tl->dropped);
    else fprintf(f, "all %zu were stored.</p>\n", tl->stored);
}

/* ---- tables ---- */

static void num_row(FILE *f, const char *label, const char *id, const char *fmt, double v)
{
    fprintf(f, "<tr><td>%s</td><td id=\"%s\">", label, id);
    fprintf(f, fmt, v);
    fputs("</td></tr>\n", f);
}

static void summary_section(FILE *f, bn_lt_results *r)
{
    bn_lt_stat_row rows[BN_LT_NROWS];
    bn_lt_stat_rows(r, rows);
    double done = (double)(r->ok + r->failed);
    fputs("<h2>Summary</h2>\n<div class=\"scroll\"><table class=\"kv\">\n", f);
    num_row(f, "requests ok", "requests_ok", "%.0f", (double)r->ok);
    num_row(f, "requests failed", "requests_failed", "%.0f", (double)r->failed);
    num_row(f, "in flight at the deadline (not counted)", "requests_cancelled", "%.0f", (double)r->cancelled);
    num_row(f, "wall time (s)", "duration_s", "%.2f", r->wall_s);
    num_row(f, "requests/s", "requests_per_s", "%.2f", bn_lt_per_s(done, r->wall_s));
    num_row(f, "prompt tokens", "prompt_tokens", "%.0f", (double)r->prompt_tokens);
    num_row(f, "completion tokens", "completion_tokens", "%.0f", (double)r->completion_tokens);
    num_row(f, "output tok/s", "output_tok_s", "%.1f", bn_lt_per_s((double)r->completion_tokens, r->wall_s));
    fputs("</table></div>\n<div class=\"scroll\"><table>\n<tr><th></th><th>n</th><th>mean</th><th>p50</th>"
          "<th>p95</th><th>p99</th><th>max</th></tr>\n", f);
    static const char *cols[] = {"mean", "p50", "p95", "p99", "max"};
    for (int i = 0; i < BN_LT_NROWS; i++) {
        const bn_lt_summary *s = &rows[i].s;
        double v[5] = {s->mean, s->p50, s->p95, s->p99, s->max};
        fprintf(f, "<tr><td>%s</td><td id=\"%s.n\">%zu</td>", rows[i].label, rows[i].key, s->n);
        for (int c = 0; c < 5; c++) {
            if (s->n) fprintf(f, "<td id=\"%s.%s\">%.2f</td>", rows[i].key, cols[c], v[c] * rows[i].scale);
            else fputs("<td>-</td>", f);
        }
        fputs("</tr>\n", f);
    }
    fputs("</table></div>\n<p class=\"note\">TTFT: sent to the first content chunk; ITL: between content "
          "chunks; E2E: sent to the end of the stream; decode: per request, (completion_tokens - 1) / "
          "(e2e - ttft). Latencies and tokens count successful requests only; output tok/s is every "
          "completion token / wall time.</p>\n", f);
    fputs("<h2>Latency histograms</h2>\n", f);
    histogram(f, &rows[0], "requests");
    histogram(f, &rows[1], "intervals");
    histogram(f, &rows[2], "requests");
}

/* One row per --group: its settings and the figures that compare groups (TTFT above all: the
 * interactive group's under batch load is what a priority run is for). Ids: "groups.I.KEY". */
static void groups_section(FILE *f, bn_lt_results *r)
{
    if (!r->ngroups) return;
    fputs("<h2>Groups</h2>\n<div class=\"scroll\"><table>\n<tr><th>group</th><th>settings</th><th>ok</th>"
          "<th>failed</th><th>TTFT p50 (ms)</th><th>TTFT p99 (ms)</th><th>ITL p50 (ms)</th><th>E2E p50 (ms)</th>"
          "<th>output tok/s</th></tr>\n", f);
    for (size_t i = 0; i < r->ngroups; i++) {
        bn_lt_results *g = &r->groups[i];
        bn_lt_stat_row rows[BN_LT_NROWS];
        bn_lt_stat_rows(g, rows);
        char words[160];
        bn_lt_group_words(g, words, sizeof words);
        fputs("<tr class=\"group\">", f);
        put_cell(f, g->name);
        put_cell(f, words);
        fprintf(f, "<td id=\"groups.%zu.requests_ok\">%ld</td><td id=\"groups.%zu.requests_failed\">%ld</td>", i,
                g->ok, i, g->failed);
        const struct { int row; double q; const char *col; } cells[] = {
            {0, 0.50, "ttft_ms.p50"}, {0, 0.99, "ttft_ms.p99"}, {1, 0.50, "itl_ms.p50"}, {2, 0.50, "e2e_ms.p50"}};
        for (size_t c = 0; c < sizeof cells / sizeof cells[0]; c++) {
            const bn_lt_stat_row *row = &rows[cells[c].row];
            if (!row->s.n) {
                fputs("<td>-</td>", f);
                continue;
            }
            double v = cells[c].q == 0.50 ? row->s.p50 : row->s.p99;
            fprintf(f, "<td id=\"groups.%zu.%s\">%.2f</td>", i, cells[c].col, v * row->scale);
        }
        fprintf(f, "<td id=\"groups.%zu.output_tok_s\">%.1f</td></tr>\n", i,
                bn_lt_per_s((double)g->completion_tokens, g->wall_s));
    }
    fputs("</table></div>\n<p class=\"note\">Each group's own requests, over the whole run's wall time; the "
          "summary above adds every group up.</p>\n", f);
}

static void errors_section(FILE *f, const bn_lt_results *r)
{
    fprintf(f, "<h2>Errors</h2>\n<p>%s</p>\n<div class=\"scroll\"><table>\n"
               "<tr><th>kind</th><th>requests</th><th>first message</th></tr>\n",
            r->failed ? "Failed requests by kind:" : "None: every request that finished succeeded.");
    for (int k = 0; k < BN_LT_NERR; k++) {
        fprintf(f, "<tr><td>%s</td><td id=\"errors.%s\">%ld</td><td class=\"msg\">", bn_lt_err_words(k),
                bn_lt_err_key(k), r->err[k]);
        bn_lt_html_escape(f, r->err_sample[k]);
        fputs("</td></tr>\n", f);
        for (int st = 0; k == BN_LT_HTTP && st < BN_LT_MAX_STATUS; st++)
            if (r->http_status[st])
                fprintf(f, "<tr><td>&#160;&#160;status %d</td><td id=\"errors.http_status.%d\">%ld</td><td></td></tr>\n",
                        st, st, r->http_status[st]);
    }
    fputs("</table></div>\n", f);
}

static void params_section(FILE *f, const bn_lt_param *params, size_t nparams)
{
    fputs("<h2>Parameters</h2>\n<div class=\"scroll\"><table class=\"kv\">\n", f);
    for (size_t i = 0; i < nparams; i++) {
        fputs("<tr>", f);
        put_cell(f, params[i].name);
        put_cell(f, params[i].value);
        fputs("</tr>\n", f);
    }
    fputs("</table></div>\n", f);
}

int bn_lt_report_html(bn_lt_results *r, const bn_lt_param *params, size_t nparams, FILE *f, bn_error *err)
{
    const char *model = r->model ? r->model : "(no model sent)";
    fputs("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>bitnet loadtest: ", f);
    bn_lt_html_escape(f, model);
    fprintf(f, "</title>\n<style>\n%s</style>\n</head>\n<body>\n<h1>bitnet loadtest</h1>\n<p class=\"sub\">", css);
    bn_lt_html_escape(f, model);
    fputs(" at ", f);
    bn_lt_html_escape(f, r->url);
    if (r->users && r->ngroups)
        fprintf(f, "<br>closed loop, %d user%s in %zu groups", r->users, r->users == 1 ? "" : "s", r->ngroups);
    else if (r->users) fprintf(f, "<br>closed loop, %d user%s", r->users, r->users == 1 ? "" : "s");
    else fprintf(f, "<br>open loop, Poisson arrivals at %g requests/s", r->rate);
    fprintf(f, ", max_tokens %ld, %ld ok, %ld failed</p>\n", r->max_tokens, r->ok, r->failed);
    summary_section(f, r);
    groups_section(f, r);
    timeline_section(f, r);
    errors_section(f, r);
    params_section(f, params, nparams);
    fputs("<p class=\"note\">Written by bitnet loadtest. This page is self-contained: it loads nothing.</p>\n"
          "</body>\n</html>\n", f);
    if (ferror(f)) return bn_err(err, "cannot write the HTML report");
    return 0;
}
