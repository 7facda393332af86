/* Kernel benchmark on the BitNet-b1.58-2B-4T shapes, per ISA variant, single-threaded and with
 * OpenMP row splitting. Not a test: numbers are noisy on a shared machine, so each figure is
 * the best of several repetitions (and the median is printed beside it).
 *
 *   bench/bench_kernels [-r reps] [-t threads] [-k kernel-substring] [-i isa]
 *
 * Weight working sets are >= 256 MB (many copies of a matrix, cycled) so GEMV figures measure
 * streaming from DRAM, not L3. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/half.h"
#include "kernels/kernels.h"
#include "kernels/kimpl.h"

static int g_reps = 7;
static const char *g_filter = NULL;
static int g_isa_only = -1;
static int g_threads_max = 2;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xalloc(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64)) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(1);
    }
    memset(p, 0x55, n); /* touch every page before timing */
    return p;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct { double best, median; } timing;

/* Runs fn(ctx, thread, nthreads) on nthreads OpenMP threads, reps times. */
typedef void (*work_fn)(void *ctx, int tid, int nth);
static timing measure(work_fn fn, void *ctx, int nth)
{
    double t[64];
    int reps = g_reps < 64 ? g_reps : 64;
    fn(ctx, 0, 1); /* warm-up (page tables, caches of small operands) */
    for (int r = 0; r < reps; r++) {
        double t0 = now();
#pragma omp parallel num_threads(nth)
        fn(ctx, omp_get_thread_num(), omp_get_num_threads());
        t[r] = now() - t0;
    }
    qsort(t, (size_t)reps, sizeof t[0], cmp_d);
    return (timing){t[0], t[reps / 2]};
}

static int wanted(const char *name) { return !g_filter || strstr(name, g_filter); }

/* Row range of thread tid, split on tile boundaries. */
static void split(size_t rows, size_t tile, int tid, int nth, size_t *r0, size_t *r1)
{
    size_t tiles = (rows + tile - 1) / tile;
    *r0 = tiles * (size_t)tid / (size_t)nth * tile;
    *r1 = tiles * (size_t)(tid + 1) / (size_t)nth * tile;
    if (*r1 > rows) *r1 = rows;
    if (*r0 > rows) *r0 = rows;
}

/* ---- memory bandwidth ---------------------------------------------------------------- */

typedef struct { const uint64_t *buf; size_t n; volatile uint64_t sink; } mem_ctx;

static void mem_read(void *vc, int tid, int nth)
{
    mem_ctx *c = vc;
    size_t a = c->n * (size_t)tid / (size_t)nth, b = c->n * (size_t)(tid + 1) / (size_t)nth;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = a; i + 4 <= b; i += 4) {
        s0 += c->buf[i];
        s1 += c->buf[i + 1];
        s2 += c->buf[i + 2];
        s3 += c->buf[i + 3];
    }
    c->sink += s0 ^ s1 ^ s2 ^ s3;
}

static void bench_memory(void)
{
    if (!wanted("memread")) return;
    size_t bytes = (size_t)512 << 20;
    mem_ctx c = {xalloc(bytes), bytes / 8, 0};
    for (int nth = 1; nth <= g_threads_max; nth++) {
        timing t = measure(mem_read, &c, nth);
        printf("%-28s %-10s thr=%d  %7.2f GB/s (median %6.2f)\n", "memread 512MB", "-", nth,
               bytes / t.best * 1e-9, bytes / t.median * 1e-9);
    }
    free((void *)c.buf);
}

/* ---- ternary GEMV / GEMM --------------------------------------------------------------- */

typedef struct {
    const bn_ktab *k;
    bn_tern_fmt fmt;
    size_t rows, cols, cols_p, bytes, copies, n;
    uint8_t *w;
    int8_t *q;
    float *as, *y;
} tern_ctx;

static void tern_gemv_work(void *vc, int tid, int nth)
{
    tern_ctx *c = vc;
    size_t r0, r1;
    split(c->rows, BN_TILE_ROWS, tid, nth, &r0, &r1);
    bn_tern_gemv_fn f = c->fmt == BN_TERN_T5 ? c->k->gemv_t5 : c->k->gemv_i2;
    for (size_t i = 0; i < c->copies; i++)
        f(c->w + i * c->bytes, c->rows, c->cols, c->q, 3.0f, 0.5f, c->y, r0, r1);
}

static void tern_gemm_work(void *vc, int tid, int nth)
{
    tern_ctx *c = vc;
    size_t r0, r1;
    split(c->rows, BN_TILE_ROWS, tid, nth, &r0, &r1);
    bn_tern_gemm_fn f = c->fmt == BN_TERN_T5 ? c->k->gemm_t5 : c->k->gemm_i2;
    f(c->w, c->rows, c->cols, c->q, c->as, c->n, 0.5f, c->y, c->rows, r0, r1);
}

static uint8_t *make_tern(bn_tern_fmt fmt, size_t rows, size_t cols, size_t copies, size_t *bytes)
{
    int8_t *t = malloc(rows * cols);
    uint32_t s = 12345;
    for (size_t i = 0; i < rows * cols; i++) {
        s = s * 1664525u + 1013904223u;
        t[i] = (int8_t)((s >> 24) % 3) - 1;
    }
    *bytes = bn_tern_packed_size(fmt, rows, cols);
    uint8_t *w = xalloc(*bytes * copies);
    bn_tern_pack(fmt, t, rows, cols, w);
    for (size_t i = 1; i < copies; i++) memcpy(w + i * *bytes, w, *bytes);
    free(t);
    return w;
}

static const struct { const char *name; size_t rows, cols; } shapes[] = {
    {"q/o 2560x2560", 2560, 2560},
    {"k/v 640x2560", 640, 2560},
    {"gate/up 6912x2560", 6912, 2560},
    {"down 2560x6912", 2560, 6912},
};

static void bench_tern_gemv(void)
{
    const bn_tern_fmt fmts[2] = {BN_TERN_I2, BN_TERN_T5};
    for (int f = 0; f < 2; f++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            char name[64];
            snprintf(name, sizeof name, "gemv %s %s", fmts[f] == BN_TERN_T5 ? "T5" : "I2", shapes[s].name);
            if (!wanted(name)) continue;
            tern_ctx c = {.fmt = fmts[f], .rows = shapes[s].rows, .cols = shapes[s].cols};
            c.cols_p = bn_tern_cols_padded(c.fmt, c.cols);
            size_t one = bn_tern_packed_size(c.fmt, c.rows, c.cols);
            c.copies = (((size_t)256 << 20) + one - 1) / one;
            c.w = make_tern(c.fmt, c.rows, c.cols, c.copies, &c.bytes);
            c.q = xalloc(c.cols_p);
            for (size_t i = 0; i < c.cols_p; i++) c.q[i] = (int8_t)(i * 37 % 255 - 127);
            c.y = xalloc(c.rows * sizeof(float));
            for (int isa = 0; isa < BN_ISA_COUNT; isa++) {
                if (!bn_kernels_isa_supported((bn_isa)isa) || (g_isa_only >= 0 && isa != g_isa_only)) continue;
                if (isa == BN_ISA_SCALAR && g_isa_only != BN_ISA_SCALAR) continue; /* minutes; use -i scalar */
                c.k = bn_ktab_get((bn_isa)isa);
                for (int nth = 1; nth <= g_threads_max; nth++) {
                    timing t = measure(tern_gemv_work, &c, nth);
                    double tot = (double)c.bytes * (double)c.copies, macs = (double)c.rows * c.cols * c.copies;
                    printf("%-28s %-10s thr=%d  %7.2f GB/s (median %6.2f)  %7.1f GMAC/s\n", name,
                           bn_isa_name((bn_isa)isa), nth, tot / t.best * 1e-9, tot / t.median * 1e-9, macs / t.best * 1e-9);
                }
            }
            free(c.w), free(c.q), free(c.y);
        }
}

static void bench_tern_gemm(void)
{
    const bn_tern_fmt fmts[2] = {BN_TERN_I2, BN_TERN_T5};
    const size_t ntok = 512;
    for (int f = 0; f < 2; f++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            if (s == 1) continue;
            char name[64];
            snprintf(name, sizeof name, "gemm%zu %s %s", ntok, fmts[f] == BN_TERN_T5 ? "T5" : "I2", shapes[s].name);
            if (!wanted(name)) continue;
            tern_ctx c = {.fmt = fmts[f], .rows = shapes[s].rows, .cols = shapes[s].cols, .n = ntok, .copies = 1};
            c.cols_p = bn_tern_cols_padded(c.fmt, c.cols);
            c.w = make_tern(c.fmt, c.rows, c.cols, 1, &c.bytes);
            c.q = xalloc(c.cols_p * ntok);
            for (size_t i = 0; i < c.cols_p * ntok; i++) c.q[i] = (int8_t)(i * 37 % 255 - 127);
            c.as = xalloc(ntok * sizeof(float));
            for (size_t i = 0; i < ntok; i++) c.as[i] = 1.0f + (float)i;
            c.y = xalloc(c.rows * ntok * sizeof(float));
            for (int isa = 1; isa < BN_ISA_COUNT; isa++) {
                if (!bn_kernels_isa_supported((bn_isa)isa) || (g_isa_only >= 0 && isa != g_isa_only)) continue;
                c.k = bn_ktab_get((bn_isa)isa);
                for (int nth = 1; nth <= g_threads_max; nth++) {
                    timing t = measure(tern_gemm_work, &c, nth);
                    double macs = (double)c.rows * c.cols * ntok;
                    printf("%-28s %-10s thr=%d  %7.1f GMAC/s (median %6.1f)\n", name, bn_isa_name((bn_isa)isa),
                           nth, macs / t.best * 1e-9, macs / t.median * 1e-9);
                }
            }
            free(c.w), free(c.q), free(c.as), free(c.y);
        }
}

/* ---- lm_head ----------------------------------------------------------------------------- */

typedef struct {
    const bn_ktab *k;
    size_t rows, cols;
    int8_t *w8, *q;
    uint16_t *w16;
    float *sc, *x, *y;
} lm_ctx;

static void lm_i8_work(void *vc, int tid, int nth)
{
    lm_ctx *c = vc;
    size_t r0, r1;
    split(c->rows, 16, tid, nth, &r0, &r1);
    c->k->gemv_i8row(c->w8, c->sc, c->cols, c->cols, c->q, 3.0f, c->y, r0, r1);
}

static void lm_f16_work(void *vc, int tid, int nth)
{
    lm_ctx *c = vc;
    size_t r0, r1;
    split(c->rows, 16, tid, nth, &r0, &r1);
    c->k->gemv_f16(c->w16, c->cols, c->x, c->y, r0, r1);
}

static void bench_lm_head(void)
{
    lm_ctx c = {.rows = 128256, .cols = 2560};
    int do8 = wanted("lm_head i8row"), do16 = wanted("lm_head f16");
    if (!do8 && !do16) return;
    c.sc = xalloc(c.rows * 4);
    c.y = xalloc(c.rows * 4);
    c.x = xalloc(c.cols * 4);
    c.q = xalloc(c.cols);
    for (size_t i = 0; i < c.cols; i++) c.x[i] = 0.01f * (float)(i % 100), c.q[i] = (int8_t)(i % 200 - 100);
    for (size_t i = 0; i < c.rows; i++) c.sc[i] = 0.01f;
    for (int which = 0; which < 2; which++) {
        if (which == 0 ? !do8 : !do16) continue;
        size_t bytes = c.rows * c.cols * (which ? 2 : 1);
        if (which == 0) c.w8 = xalloc(bytes);
        else c.w16 = xalloc(bytes);
        if (which == 1)
            for (size_t i = 0; i < c.rows * c.cols; i++) c.w16[i] = 0x3c00 ^ (uint16_t)(i & 0x83ff);
        for (int isa = 1; isa < BN_ISA_COUNT; isa++) {
            if (!bn_kernels_isa_supported((bn_isa)isa) || (g_isa_only >= 0 && isa != g_isa_only)) continue;
            c.k = bn_ktab_get((bn_isa)isa);
            for (int nth = 1; nth <= g_threads_max; nth++) {
                timing t = measure(which ? lm_f16_work : lm_i8_work, &c, nth);
                printf("%-28s %-10s thr=%d  %7.2f GB/s (median %6.2f)  %6.2f ms\n",
                       which ? "lm_head f16 128256x2560" : "lm_head i8row 128256x2560", bn_isa_name((bn_isa)isa), nth,
                       bytes / t.best * 1e-9, bytes / t.median * 1e-9, t.best * 1e3);
            }
        }
        free(which ? (void *)c.w16 : (void *)c.w8);
    }
    free(c.sc), free(c.y), free(c.x), free(c.q);
}

/* ---- small kernels: per-call times -------------------------------------------------------- */

typedef struct {
    const bn_ktab *k;
    float *x, *out, *w, *sc;
    int8_t *q;
    uint16_t *kc, *vc;
    size_t npos;
} small_ctx;

static void attn_work(void *vc, int tid, int nth)
{
    small_ctx *c = vc;
    /* the 20 query heads of one layer, split over threads as the engine would */
    for (int h = tid; h < 20; h += nth)
        c->k->attn_head(c->out + h * 128, c->x + h * 128, c->kc + (h / 4) * 128, c->vc + (h / 4) * 128,
                        c->npos, 640, 128, 0.0883883f, c->sc + (size_t)h * c->npos);
}

static void attn_group_work(void *vc, int tid, int nth)
{
    small_ctx *c = vc;
    /* the 5 KV groups of 4 query heads each */
    for (int g = tid; g < 5; g += nth)
        c->k->attn_group(c->out + g * 512, c->x + g * 512, 4, c->kc + g * 128, c->vc + g * 128,
                         c->npos, 640, 128, 0.0883883f, c->sc + (size_t)g * 4 * c->npos);
}

static void quant_work(void *vc, int tid, int nth)
{
    small_ctx *c = vc;
    (void)tid, (void)nth;
    for (int i = 0; i < 100; i++) c->k->quant_act(c->x, 6912, 6912, c->q);
}

static void rms_work(void *vc, int tid, int nth)
{
    small_ctx *c = vc;
    (void)tid, (void)nth;
    for (int i = 0; i < 100; i++) c->k->rmsnorm(c->out, c->x, c->w, 6912, 1e-5f);
}

static void bench_small(void)
{
    small_ctx c = {.npos = 4096};
    c.x = xalloc(20 * 128 * 4 + 6912 * 4);
    c.out = xalloc(20 * 128 * 4 + 6912 * 4);
    c.w = xalloc(6912 * 4);
    c.sc = xalloc(20 * c.npos * 4);
    c.q = xalloc(6912);
    c.kc = xalloc(c.npos * 640 * 2);
    c.vc = xalloc(c.npos * 640 * 2);
    for (size_t i = 0; i < 6912; i++) c.x[i] = sinf((float)i), c.w[i] = 1.0f;
    for (size_t i = 0; i < c.npos * 640; i++) c.kc[i] = c.vc[i] = bn_f32_to_f16(cosf((float)i) * 0.1f);
    for (int isa = 0; isa < BN_ISA_COUNT; isa++) {
        if (!bn_kernels_isa_supported((bn_isa)isa) || (g_isa_only >= 0 && isa != g_isa_only)) continue;
        c.k = bn_ktab_get((bn_isa)isa);
        if (wanted("attn ")) {
            for (int nth = 1; nth <= g_threads_max; nth++) {
                timing t = measure(attn_work, &c, nth);
                printf("%-28s %-10s thr=%d  %7.3f ms/layer (20 heads; x30 layers = %.1f ms/token)\n", "attn ctx=4096",
                       bn_isa_name((bn_isa)isa), nth, t.best * 1e3, t.best * 30e3);
            }
        }
        if (wanted("attn_group")) {
            for (int nth = 1; nth <= g_threads_max; nth++) {
                timing t = measure(attn_group_work, &c, nth);
                printf("%-28s %-10s thr=%d  %7.3f ms/layer (5 groups x 4 heads; x30 layers = %.1f ms/token)\n",
                       "attn_group ctx=4096", bn_isa_name((bn_isa)isa), nth, t.best * 1e3, t.best * 30e3);
            }
        }
        if (wanted("quant_act")) {
            timing t = measure(quant_work, &c, 1);
            printf("%-28s %-10s thr=1  %7.3f us/call\n", "quant_act n=6912", bn_isa_name((bn_isa)isa), t.best * 1e4);
        }
        if (wanted("rmsnorm")) {
            timing t = measure(rms_work, &c, 1);
            printf("%-28s %-10s thr=1  %7.3f us/call\n", "rmsnorm n=6912", bn_isa_name((bn_isa)isa), t.best * 1e4);
        }
    }
    free(c.x), free(c.out), free(c.w), free(c.sc), free(c.q), free(c.kc), free(c.vc);
}

/* ---- whole-model simulation: the 7 linears of 30 layers + the int8 lm_head ---------------- */
/* Kernel-only decode / prefill throughput for the 2B model with T5 weights (attention, norms and
 * the engine's own overheads excluded): every layer has its own weights, so a token streams
 * ~417 MB of T5 weights plus the 328 MB int8 lm_head from DRAM, as real decoding does. */

enum { SIM_LAYERS = 30, SIM_MATS = 7 };
static const size_t sim_shape[SIM_MATS][2] = {
    {2560, 2560}, {640, 2560}, {640, 2560}, {2560, 2560}, {6912, 2560}, {6912, 2560}, {2560, 6912}};

static const int sim_sync[SIM_MATS] = {0, 0, 1, 1, 0, 1, 1};

typedef struct {
    const bn_ktab *k;
    bn_tern_fmt fmt;
    uint8_t *w[SIM_LAYERS][SIM_MATS];
    int8_t *lm, *q;
    float *lm_sc, *as, *y;
    size_t ntok;
} sim_ctx;

static void sim_decode_work(void *vc, int tid, int nth)
{
    sim_ctx *c = vc;
    bn_tern_gemv_fn f = c->fmt == BN_TERN_T5 ? c->k->gemv_t5 : c->k->gemv_i2;
    for (int l = 0; l < SIM_LAYERS; l++)
        for (int m = 0; m < SIM_MATS; m++) {
            size_t r0, r1;
            split(sim_shape[m][0], BN_TILE_ROWS, tid, nth, &r0, &r1);
            f(c->w[l][m], sim_shape[m][0], sim_shape[m][1], c->q, 3.0f, 0.5f, c->y, r0, r1);
            /* an engine needs a barrier only where the next step consumes the outputs: after
             * q/k/v (attention), o, gate/up (relu2, norm) and down */
            if (sim_sync[m]) {
#pragma omp barrier
            }
        }
    size_t r0, r1;
    split(128256, 16, tid, nth, &r0, &r1);
    c->k->gemv_i8row(c->lm, c->lm_sc, 2560, 2560, c->q, 3.0f, c->y, r0, r1);
}

static void sim_prefill_work(void *vc, int tid, int nth)
{
    sim_ctx *c = vc;
    bn_tern_gemm_fn f = c->fmt == BN_TERN_T5 ? c->k->gemm_t5 : c->k->gemm_i2;
    for (int l = 0; l < SIM_LAYERS; l++)
        for (int m = 0; m < SIM_MATS; m++) {
            size_t r0, r1;
            split(sim_shape[m][0], BN_TILE_ROWS, tid, nth, &r0, &r1);
            f(c->w[l][m], sim_shape[m][0], sim_shape[m][1], c->q, c->as, c->ntok, 0.5f, c->y,
              sim_shape[m][0], r0, r1);
            if (sim_sync[m]) {
#pragma omp barrier
            }
        }
}

static void bench_model_sim(void)
{
    if (!wanted("model")) return;
    const bn_tern_fmt fmts[2] = {BN_TERN_T5, BN_TERN_I2};
    for (int f = 0; f < 2; f++) {
        sim_ctx c = {.fmt = fmts[f], .ntok = 512};
        size_t total = 0;
        for (int m = 0; m < SIM_MATS; m++) {
            size_t bytes;
            uint8_t *w0 = make_tern(c.fmt, sim_shape[m][0], sim_shape[m][1], 1, &bytes);
            for (int l = 0; l < SIM_LAYERS; l++) {
                c.w[l][m] = xalloc(bytes);
                memcpy(c.w[l][m], w0, bytes);
                total += bytes;
            }
            free(w0);
        }
        c.lm = xalloc((size_t)128256 * 2560);
        c.lm_sc = xalloc(128256 * sizeof(float));
        for (size_t i = 0; i < 128256; i++) c.lm_sc[i] = 0.01f;
        c.q = xalloc(6920 * c.ntok);
        for (size_t i = 0; i < 6920 * c.ntok; i++) c.q[i] = (int8_t)(i * 37 % 255 - 127);
        c.as = xalloc(c.ntok * sizeof(float));
        for (size_t i = 0; i < c.ntok; i++) c.as[i] = 1.0f;
        c.y = xalloc(128256 * sizeof(float) + 6912 * c.ntok * sizeof(float));
        for (int isa = 1; isa < BN_ISA_COUNT; isa++) {
            if (!bn_kernels_isa_supported((bn_isa)isa) || (g_isa_only >= 0 && isa != g_isa_only)) continue;
            c.k = bn_ktab_get((bn_isa)isa);
            for (int nth = 1; nth <= g_threads_max; nth++) {
                timing t = measure(sim_decode_work, &c, nth);
                double bytes = (double)total + 128256.0 * 2560;
                printf("%-28s %-10s thr=%d  %7.1f tok/s (median %6.1f)  %6.2f GB/s  [%s %.0f MB + i8 lm_head 328 MB]\n",
                       "model decode (linears+lm)", bn_isa_name((bn_isa)isa), nth, 1 / t.best, 1 / t.median,
                       bytes / t.best * 1e-9, c.fmt == BN_TERN_T5 ? "T5" : "I2", total / 1e6);
            }
            for (int nth = 1; nth <= g_threads_max; nth++) {
                int reps = g_reps;
                g_reps = reps < 3 ? reps : 3;
                timing t = measure(sim_prefill_work, &c, nth);
                g_reps = reps;
                printf("%-28s %-10s thr=%d  %7.1f tok/s (median %6.1f)  [%s, 512 tokens, linears only]\n",
                       "model prefill (linears)", bn_isa_name((bn_isa)isa), nth, c.ntok / t.best, c.ntok / t.median,
                       c.fmt == BN_TERN_T5 ? "T5" : "I2");
            }
        }
        for (int l = 0; l < SIM_LAYERS; l++)
            for (int m = 0; m < SIM_MATS; m++) free(c.w[l][m]);
        free(c.lm), free(c.lm_sc), free(c.q), free(c.as), free(c.y);
    }
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-r") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) g_threads_max = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-k") && i + 1 < argc) g_filter = argv[++i];
        else if (!strcmp(argv[i], "-i") && i + 1 < argc) g_isa_only = bn_isa_parse(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [-r reps] [-t max-threads] [-k kernel-substring] [-i isa]\n", argv[0]);
            return 2;
        }
    }
    if (g_reps < 1) g_reps = 1;
    printf("bench_kernels: default isa %s, reps %d (best, median)\n", bn_isa_name(bn_kernels_isa()), g_reps);
    bench_memory();
    bench_tern_gemv();
    bench_lm_head();
    bench_tern_gemm();
    bench_small();
    bench_model_sim();
    return 0;
}
