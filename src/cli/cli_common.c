#include "cli/cli_common.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "base/parse.h"
#include "kernels/kernels.h"
#include "model/convert_cache.h"
#include "model/model.h"

double bn_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double bn_peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux reports KiB */
}

int bn_parse_ternary(const char *s, bn_tern_fmt *out)
{
    if (!strcmp(s, "t5")) *out = BN_TERN_T5;
    else if (!strcmp(s, "i2")) *out = BN_TERN_I2;
    else return -1;
    return 0;
}

int bn_parse_lm_head(const char *s, int *i8)
{
    if (!strcmp(s, "planes")) *i8 = BN_PACK_LM_PLANES;
    else if (!strcmp(s, "i8")) *i8 = BN_PACK_LM_I8;
    else if (!strcmp(s, "f16")) *i8 = BN_PACK_LM_F16;
    else return -1;
    return 0;
}

int bn_parse_head_kind(const char *s, enum bn_lm_head_kind *out)
{
    if (!strcmp(s, "f16")) *out = BN_LM_HEAD_F16;
    else if (!strcmp(s, "i8")) *out = BN_LM_HEAD_I8;
    else if (!strcmp(s, "screen")) *out = BN_LM_HEAD_SCREEN;
    else if (!strcmp(s, "screen-i8")) *out = BN_LM_HEAD_SCREEN_I8;
    else return -1;
    return 0;
}

const char *bn_head_kind_name(enum bn_lm_head_kind k)
{
    switch (k) {
    case BN_LM_HEAD_F16: return "f16";
    case BN_LM_HEAD_I8: return "i8";
    case BN_LM_HEAD_SCREEN: return "screen";
    case BN_LM_HEAD_SCREEN_I8: return "screen-i8";
    default: return "auto";
    }
}

int bn_pack_opt(int c, const char *arg, bn_pack_opts *po)
{
    if (c == 'T') return bn_parse_ternary(arg, &po->tern) == 0 ? 1 : -1;
    if (c == 'L') return bn_parse_lm_head(arg, &po->lm_head_i8) == 0 ? 1 : -1;
    return 0;
}

/* ---- lists -------------------------------------------------------------------------- */

int bn_parse_u32_list(const char *s, uint32_t lo, uint32_t hi, int *out, int cap, int *count,
                      bn_error *err)
{
    char item[32];
    *count = 0;
    for (;;) {
        size_t n = strcspn(s, ",");
        if (*count == cap) return bn_err(err, "at most %d values", cap);
        if (n >= sizeof item) return bn_err(err, "'%.*s...' is not a whole number", 16, s);
        memcpy(item, s, n);
        item[n] = 0;
        uint32_t v;
        if (bn_parse_u32(item, lo, hi, &v, err)) return -1;
        out[(*count)++] = (int)v;
        if (!s[n]) return 0;
        s += n + 1;
    }
}

/* One CPU number of a list: digits only, below BN_CLI_MAX_CPUS. */
static int cpu_number(const char *s, size_t n, const char *item, int *out, bn_error *err)
{
    char buf[16];
    uint32_t v;
    bn_error e;
    if (n == 0 || strspn(s, "0123456789") < n)
        return bn_err(err, "'%s' is not a CPU number or range N-M", item);
    snprintf(buf, sizeof buf, "%.*s", (int)n, s);
    if (n >= sizeof buf || bn_parse_u32(buf, 0, BN_CLI_MAX_CPUS - 1, &v, &e))
        return bn_err(err, "CPU %s%s is out of range (0..%d)", buf, n >= sizeof buf ? "..." : "",
                      BN_CLI_MAX_CPUS - 1);
    *out = (int)v;
    return 0;
}

int bn_parse_cpu_list(const char *s, int *out, int cap, int *count, bn_error *err)
{
    unsigned char seen[BN_CLI_MAX_CPUS / 8] = {0};
    char item[40];
    *count = 0;
    if (!*s) return bn_err(err, "the CPU list is empty");
    for (;;) {
        size_t n = strcspn(s, ",");
        snprintf(item, sizeof item, "%.*s", (int)(n < 32 ? n : 32), s);
        if (n == 0) return bn_err(err, "an empty item in the CPU list");
        const char *dash = memchr(s, '-', n);
        int lo, hi;
        if (cpu_number(s, dash ? (size_t)(dash - s) : n, item, &lo, err)) return -1;
        hi = lo;
        if (dash && cpu_number(dash + 1, n - (size_t)(dash + 1 - s), item, &hi, err)) return -1;
        if (hi < lo) return bn_err(err, "the range %s runs backwards", item);
        for (int c = lo; c <= hi; c++) {
            if (seen[c / 8] & (1u << (c % 8))) return bn_err(err, "CPU %d is listed twice", c);
            if (*count == cap) return bn_err(err, "more than %d CPUs", cap);
            seen[c / 8] |= (unsigned char)(1u << (c % 8));
            out[(*count)++] = c;
        }
        if (!s[n]) return 0;
        s += n + 1;
    }
}

/* ---- the engine option table ---------------------------------------------------------- */

enum eopt_kind { K_INT, K_U32, K_THREAD_LIST, K_LM_HEAD, K_ISA, K_FLAG, K_CPUS };

/* One row per option: its spelling, its help, and what it sets (kind + offset into
 * bn_cli_engine, range for numbers). Rows sharing a spelling are alternatives a command picks
 * one of (enum bn_eopt). */
static const struct eopt_row {
    unsigned bit;
    const char *name;
    int shortc;          /* 0: long only */
    const char *arg;     /* NULL: no argument */
    const char *help;
    enum eopt_kind kind;
    size_t off;
    uint32_t lo, hi;
} rows[] = {
    {BN_EOPT_THREADS, "threads", 't', "N",
     "threads (default: physical cores available; with --cpus: its first N)", K_INT,
     offsetof(bn_cli_engine, eo.n_threads), 0, 4096},
    {BN_EOPT_THREAD_LIST, "threads", 't', "LIST",
     "thread counts, comma-separated (default: physical cores available; with --cpus: its first N)", K_THREAD_LIST,
     0, 1, 4096},
    {BN_EOPT_CTX, "ctx", 'c', "N", "context length (default: the model's maximum)", K_U32,
     offsetof(bn_cli_engine, eo.n_ctx), 0, 1u << 24},
    {BN_EOPT_WINDOW, "ctx", 'c', "N", "window length (default 512, clamped to the model's maximum)",
     K_U32, offsetof(bn_cli_engine, eo.n_ctx), 0, 1u << 24},
    {BN_EOPT_BATCH, "batch", 'b', "N", "prefill chunk (default 64)", K_U32,
     offsetof(bn_cli_engine, eo.batch), 0, 4096},
    {BN_EOPT_LM_HEAD, "lm-head", 0, "f16|i8|screen|screen-i8",
     "lm_head to use (default: screen, exact, if the file has it)", K_LM_HEAD,
     offsetof(bn_cli_engine, eo.lm_head), 0, 0},
    {BN_EOPT_ISA, "isa", 0, "NAME", "force a kernel variant (scalar, avx2, avx512, avx512vnni)",
     K_ISA, offsetof(bn_cli_engine, isa), 0, 0},
    {BN_EOPT_PIN, "pin", 0, NULL, "pin threads to CPUs", K_FLAG, offsetof(bn_cli_engine, eo.pin),
     0, 0},
    {BN_EOPT_CPUS, "cpus", 0, "LIST", "run thread i on the i-th CPU of LIST (taskset syntax: 0-3,6)",
     K_CPUS, 0, 0, 0},
    {BN_EOPT_MMAP, "mmap", 0, NULL,
     "map the model file in place (less memory; default: read it into this process's memory)",
     K_FLAG, offsetof(bn_cli_engine, mmap), 0, 0},
};
#define N_ROWS (sizeof rows / sizeof rows[0])

static int row_val(size_t i) { return rows[i].shortc ? rows[i].shortc : BN_EOPT_VAL_BASE + (int)i; }

static void row_flag(size_t i, char *buf, size_t len)
{
    if (rows[i].shortc) snprintf(buf, len, "-%c/--%s", rows[i].shortc, rows[i].name);
    else snprintf(buf, len, "--%s", rows[i].name);
}

void bn_cli_engine_init(bn_cli_engine *ce)
{
    memset(ce, 0, sizeof *ce);
    bn_engine_opts_default(&ce->eo);
    ce->isa = -1;
}

static int apply_row(bn_cli_engine *ce, const struct eopt_row *r, const char *arg, bn_error *err)
{
    char *field = (char *)ce + r->off;
    uint32_t v;
    enum bn_lm_head_kind head;
    switch (r->kind) {
    case K_INT:
        if (bn_parse_u32(arg, r->lo, r->hi, &v, err)) return -1;
        *(int *)field = (int)v;
        return 0;
    case K_U32: return bn_parse_u32(arg, r->lo, r->hi, (uint32_t *)field, err);
    case K_THREAD_LIST:
        return bn_parse_u32_list(arg, r->lo, r->hi, ce->threads, BN_CLI_MAX_THREAD_LIST,
                                 &ce->n_threads, err);
    case K_LM_HEAD:
        if (bn_parse_head_kind(arg, &head)) return bn_err(err, "'%s' is not f16, i8 or screen", arg);
        *(int *)field = head;
        return 0;
    case K_ISA: {
        int isa = bn_isa_parse(arg);
        if (isa < 0) return bn_err(err, "'%s' is not scalar, avx2, avx512 or avx512vnni", arg);
        if (!bn_kernels_isa_supported((bn_isa)isa))
            return bn_err(err, "kernel variant '%s' is not supported on this CPU/build", arg);
        *(int *)field = isa;
        return 0;
    }
    case K_FLAG: *(int *)field = 1; return 0;
    case K_CPUS: return bn_parse_cpu_list(arg, ce->cpus, BN_CLI_MAX_CPUS, &ce->n_cpus, err);
    }
    return bn_err(err, "internal: option kind %d", (int)r->kind);
}

int bn_cli_engine_opt(bn_cli_engine *ce, unsigned which, int c, const char *arg, bn_error *err)
{
    for (size_t i = 0; i < N_ROWS; i++) {
        if (!(rows[i].bit & which) || row_val(i) != c) continue;
        bn_error e;
        if (apply_row(ce, &rows[i], arg, &e) == 0) return 1;
        char flag[32];
        row_flag(i, flag, sizeof flag);
        bn_err(err, "%s: %s", flag, e.msg);
        return -1;
    }
    return 0;
}

int bn_cli_open_model(const bn_cli_engine *ce, const char *path, bn_model **out, bn_error *err)
{
    bn_model *m;
    if (bn_model_open_any(path, NULL, &m, NULL, err)) return -1;
    if (ce->mmap) {
        *out = m;
        return 0;
    }
    /* m->path is the packed file (the cache's copy for a converted source) */
    int rc = bn_model_load(m->path, out, err);
    bn_model_close(m);
    return rc;
}

int bn_cli_engine_finish(bn_cli_engine *ce, bn_error *err)
{
    if (ce->n_cpus) {
        int most = ce->eo.n_threads;
        for (int i = 0; i < ce->n_threads; i++) most = ce->threads[i] > most ? ce->threads[i] : most;
        if (most > ce->n_cpus)
            return bn_err(err, "-t/--threads: %d threads but --cpus lists only %d CPU%s", most,
                          ce->n_cpus, ce->n_cpus == 1 ? "" : "s");
    }
    if (ce->isa >= 0 && bn_kernels_force((bn_isa)ce->isa) != 0)
        return bn_err(err, "--isa: kernel variant %s is not supported here", bn_isa_name((bn_isa)ce->isa));
    return 0;
}

void bn_cli_engine_opts(const bn_cli_engine *ce, int threads, bn_engine_opts *eo)
{
    *eo = ce->eo;
    eo->n_threads = threads;
    if (ce->n_cpus) {
        eo->cpus = ce->cpus;
        eo->n_cpus = threads > 0 && threads < ce->n_cpus ? threads : ce->n_cpus;
    }
}

void bn_cli_engine_help(FILE *f, unsigned which, int width)
{
    for (size_t i = 0; i < N_ROWS; i++) {
        if (!(rows[i].bit & which)) continue;
        char left[64];
        const char *arg = rows[i].arg ? rows[i].arg : "";
        if (rows[i].shortc)
            snprintf(left, sizeof left, "  -%c, --%s %s", rows[i].shortc, rows[i].name, arg);
        else
            snprintf(left, sizeof left, "      --%s %s", rows[i].name, arg);
        int pad = width - (int)strlen(left);
        fprintf(f, "%s%*s%s\n", left, pad > 1 ? pad : 1, "", rows[i].help);
    }
}

void bn_cli_getopt_build(bn_cli_getopt *g, const struct option *own, const char *own_short,
                         unsigned which)
{
    size_t n = 0, ns = strlen(own_short);
    const size_t cap = sizeof g->longopts / sizeof g->longopts[0];
    for (; own[n].name; n++) {
        if (n + 1 >= cap) abort();   /* a constant table outgrew the buffer: a programming error */
        g->longopts[n] = own[n];
    }
    if (ns >= sizeof g->shortopts) abort();
    memcpy(g->shortopts, own_short, ns + 1);
    for (size_t i = 0; i < N_ROWS; i++) {
        if (!(rows[i].bit & which)) continue;
        if (n + 1 >= cap || ns + 3 >= sizeof g->shortopts) abort();
        g->longopts[n++] = (struct option){rows[i].name, rows[i].arg ? required_argument : no_argument,
                                           0, row_val(i)};
        if (rows[i].shortc) {
            g->shortopts[ns++] = (char)rows[i].shortc;
            if (rows[i].arg) g->shortopts[ns++] = ':';
            g->shortopts[ns] = 0;
        }
    }
    g->longopts[n] = (struct option){0, 0, 0, 0};
}

/* ---- progress ------------------------------------------------------------------------- */

int bn_cli_progress_format(char *buf, size_t len, uint32_t i, uint32_t n, uint64_t done,
                           uint64_t total, double elapsed)
{
    const double mib = 1024.0 * 1024.0;
    char eta[32] = "?";
    if (done > 0 && total >= done)
        snprintf(eta, sizeof eta, "%.0fs", elapsed * (double)(total - done) / (double)done);
    return snprintf(buf, len, "tensor %u/%u  %.1f/%.1f MiB  ETA %s", i, n, (double)done / mib,
                    (double)total / mib, eta);
}

void bn_cli_progress_attach(bn_cli_progress *p, bn_pack_opts *po, FILE *f)
{
    *p = (bn_cli_progress){.f = f, .t0 = bn_now(), .last = -1};
    if (!isatty(fileno(f))) return;
    po->progress = bn_cli_progress_cb;
    po->progress_user = p;
}

void bn_cli_progress_cb(void *user, uint32_t i, uint32_t n, uint64_t bytes_done,
                        uint64_t bytes_total, const char *name)
{
    bn_cli_progress *p = user;
    double now = bn_now();
    (void)name;
    if (i < n && p->last >= 0 && now - p->last < 0.1) return;   /* the last tensor always shows */
    char line[128];
    bn_cli_progress_format(line, sizeof line, i, n, bytes_done, bytes_total, now - p->t0);
    fprintf(p->f, "\r%s\033[K", line);   /* \033[K: clear what a longer earlier line left */
    fflush(p->f);
    p->last = now;
    p->drawn = 1;
}

void bn_cli_progress_end(bn_cli_progress *p)
{
    if (p->drawn) fputc('\n', p->f);
    p->drawn = 0;
}
