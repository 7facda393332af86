/* The HTML report of `bitnet loadtest`: one self-contained page (inline CSS, inline SVG drawn
 * here; no script, no external asset) with the summary table, latency histograms, tokens over
 * time, the errors and the run's parameters. Every string from the user or the server is
 * escaped, so a hostile model id or error message cannot add markup. */
#ifndef BN_CLI_LOADTEST_HTML_H
#define BN_CLI_LOADTEST_HTML_H

#include <stdio.h>

#include "base/error.h"
#include "cli/loadtest_stats.h"

/* One line of the parameters table, shown as given (escaped). */
typedef struct {
    const char *name, *value;
} bn_lt_param;

/* Writes the page for r (its timeline feeds the tokens-over-time charts) to f. */
int bn_lt_report_html(bn_lt_results *r, const bn_lt_param *params, size_t nparams, FILE *f, bn_error *err);

/* s as HTML text or attribute value: & < > " ' as entities, control characters and invalid
 * UTF-8 as U+FFFD. */
void bn_lt_html_escape(FILE *f, const char *s);

#endif
