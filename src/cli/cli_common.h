/* Small helpers shared by the bitnet subcommands. */
#ifndef BN_CLI_COMMON_H
#define BN_CLI_COMMON_H

#include "engine/engine.h"
#include "model/model_write.h"

/* Wall-clock seconds (monotonic). */
double bn_now(void);
/* Peak resident set size of this process in MiB (getrusage). */
double bn_peak_rss_mib(void);
/* Parses "--ternary t5|i2" / "--lm-head f16|i8" values into pack options; -1 if unknown. */
int bn_parse_ternary(const char *s, bn_tern_fmt *out);
int bn_parse_lm_head(const char *s, int *i8);
/* The engine's "--lm-head f16|i8|screen" (run, bench, perplexity) and its name back. */
int bn_parse_head_kind(const char *s, enum bn_lm_head_kind *out);
const char *bn_head_kind_name(enum bn_lm_head_kind k);

/* The packing options every writing command takes, for getopt_long tables. */
#define BN_PACK_LONGOPTS {"ternary", required_argument, 0, 'T'}, {"lm-head", required_argument, 0, 'L'}
/* Applies getopt result c if it is a packing option: 1 applied, 0 not one, -1 bad value. */
int bn_pack_opt(int c, const char *arg, bn_pack_opts *po);

#endif
