/* Small helpers shared by the bitnet subcommands: the engine options of run, bench and
 * perplexity (one table: flags, help, what each sets), the packing options, and the
 * conversion progress line. */
#ifndef BN_CLI_COMMON_H
#define BN_CLI_COMMON_H

#include <getopt.h>
#include <stdio.h>

#include "engine/engine.h"
#include "model/model_write.h"

/* Wall-clock seconds (monotonic). */
double bn_now(void);
/* Peak resident set size of this process in MiB (getrusage). */
double bn_peak_rss_mib(void);
/* Parses "--ternary t5|i2" / "--lm-head planes|i8|f16" values into pack options; -1 if unknown. */
int bn_parse_ternary(const char *s, bn_tern_fmt *out);
int bn_parse_lm_head(const char *s, int *i8);
/* The engine's "--lm-head f16|i8|screen|screen-i8" (run, bench, perplexity) and its name back. */
int bn_parse_head_kind(const char *s, enum bn_lm_head_kind *out);
const char *bn_head_kind_name(enum bn_lm_head_kind k);

/* The packing options every writing command takes, for getopt_long tables. */
#define BN_PACK_LONGOPTS {"ternary", required_argument, 0, 'T'}, {"lm-head", required_argument, 0, 'L'}
/* Applies getopt result c if it is a packing option: 1 applied, 0 not one, -1 bad value. */
int bn_pack_opt(int c, const char *arg, bn_pack_opts *po);

/* "1,2,4": at most cap values, each checked in [lo, hi]. 0, or -1 with err set. */
int bn_parse_u32_list(const char *s, uint32_t lo, uint32_t hi, int *out, int cap, int *count,
                      bn_error *err);
/* A CPU list in taskset -c syntax without strides: "0-3,6" (items N or N-M, N <= M, in the
 * order given). Every CPU below BN_CLI_MAX_CPUS, none twice, at most cap of them. 0, or -1
 * with err set naming the bad item. Whether the CPUs exist is the engine's check. */
int bn_parse_cpu_list(const char *s, int *out, int cap, int *count, bn_error *err);

/* ---- engine options (run, bench, perplexity) ------------------------------------------ */

/* One bit per row of the option table (cli_common.c): a command passes the rows it takes.
 * THREADS and THREAD_LIST are both -t/--threads (one N, or bench's comma list); CTX and
 * WINDOW are both -c/--ctx (context length, or perplexity's window: only the help differs). */
enum bn_eopt {
    BN_EOPT_THREADS = 1 << 0,
    BN_EOPT_THREAD_LIST = 1 << 1,
    BN_EOPT_CTX = 1 << 2,
    BN_EOPT_WINDOW = 1 << 3,
    BN_EOPT_BATCH = 1 << 4,
    BN_EOPT_LM_HEAD = 1 << 5,
    BN_EOPT_ISA = 1 << 6,
    BN_EOPT_PIN = 1 << 7,
    BN_EOPT_CPUS = 1 << 8,
    BN_EOPT_MMAP = 1 << 9,
};
/* The rows every engine command takes besides -t and -c. */
#define BN_EOPT_COMMON (BN_EOPT_BATCH | BN_EOPT_LM_HEAD | BN_EOPT_ISA | BN_EOPT_PIN | BN_EOPT_CPUS | BN_EOPT_MMAP)
/* getopt values of the long-only rows start here: a command's own values must stay below. */
#define BN_EOPT_VAL_BASE 0x1000

#define BN_CLI_MAX_THREAD_LIST 16
#define BN_CLI_MAX_CPUS 1024   /* CPU_SETSIZE */

typedef struct bn_cli_engine {
    bn_engine_opts eo;       /* n_ctx, n_threads, batch, lm_head, pin as parsed (cpus: below) */
    int isa;                 /* --isa: the variant bn_cli_engine_finish forces; -1 = none */
    int threads[BN_CLI_MAX_THREAD_LIST];   /* -t LIST, in order */
    int n_threads;           /* entries in threads; 0 = -t LIST not given */
    int cpus[BN_CLI_MAX_CPUS];             /* --cpus, in order */
    int n_cpus;              /* 0 = --cpus not given */
    int mmap;                /* --mmap: map the model file in place instead of copying it */
} bn_cli_engine;

/* Engine defaults (bn_engine_opts_default), no --isa, no lists. */
void bn_cli_engine_init(bn_cli_engine *ce);
/* Applies getopt result c (with optarg arg) if it is one of the rows in `which`: 1 applied,
 * 0 not one of them, -1 bad value with err = "FLAG: why" (e.g. "-t/--threads: 'x' is not a
 * whole number (expected 0..4096)"). */
int bn_cli_engine_opt(bn_cli_engine *ce, unsigned which, int c, const char *arg, bn_error *err);
/* After the getopt loop: checks what single options cannot (every -t count fits in --cpus)
 * and forces --isa's variant. 0, or -1 with err set. */
int bn_cli_engine_finish(bn_cli_engine *ce, bn_error *err);
/* The engine options for `threads` threads (0 = the default count; with --cpus: the first
 * `threads` CPUs of the list, all of them for 0). eo->cpus points into ce: ce must outlive
 * the engine's creation. Call after bn_cli_engine_finish. */
void bn_cli_engine_opts(const bn_cli_engine *ce, int threads, bn_engine_opts *eo);
/* Opens the model at path as bn_model_open_any does (converting a HF directory or GGUF file
 * through the cache), then, unless --mmap, holds the packed bytes in this process's own memory
 * (bn_model_load) rather than in place in the page cache, whose layout depends on the file's
 * history (file.h, bn_copy_file). */
int bn_cli_open_model(const bn_cli_engine *ce, const char *path, bn_model **out, bn_error *err);
/* Prints the help lines of the rows in `which`, the text starting at column `width`. */
void bn_cli_engine_help(FILE *f, unsigned which, int width);

/* getopt_long's tables for a command: its own options (own: {0}-terminated, values below
 * BN_EOPT_VAL_BASE; own_short: getopt's short string) plus the engine rows in `which`. */
typedef struct bn_cli_getopt {
    struct option longopts[64];
    char shortopts[64];
} bn_cli_getopt;
void bn_cli_getopt_build(bn_cli_getopt *g, const struct option *own, const char *own_short,
                         unsigned which);

/* ---- progress of a conversion on a terminal ------------------------------------------- */

/* "tensor 12/332  512.0/1187.3 MiB  ETA 14s" for tensor i of n, bytes done of total, after
 * `elapsed` seconds ("ETA ?" until a byte is done). Returns snprintf's count. */
int bn_cli_progress_format(char *buf, size_t len, uint32_t i, uint32_t n, uint64_t done,
                           uint64_t total, double elapsed);

typedef struct bn_cli_progress {
    FILE *f;              /* where the line goes (stderr) */
    double t0, last;      /* start, and the last redraw (redraws are at most 10 a second) */
    int drawn;            /* a line is on the terminal: bn_cli_progress_end ends it */
} bn_cli_progress;

/* Makes po report to p's one-line display on f, only if f is a terminal: otherwise po is
 * left silent and nothing is ever written. */
void bn_cli_progress_attach(bn_cli_progress *p, bn_pack_opts *po, FILE *f);
/* The bn_pack_progress_fn (user = a bn_cli_progress): rewrites the line with \r. */
void bn_cli_progress_cb(void *user, uint32_t i, uint32_t n, uint64_t bytes_done,
                        uint64_t bytes_total, const char *name);
/* Ends the line with a newline if one was drawn (call after the write, success or not). */
void bn_cli_progress_end(bn_cli_progress *p);

#endif
