/* Engine lifetime and its memory plan: every buffer is sized here from the config, n_ctx, the
 * prefill chunk and the thread count, allocated once (64-byte aligned, so SIMD kernels may use
 * aligned loads), and freed in bn_engine_free(). bn_engine_eval() splits a token run into
 * chunks for forward.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hwloc.h>
#include <hwloc/glibc-sched.h>

#include "base/checked.h"
#include "engine/engine_internal.h"

#define BN_DEFAULT_BATCH 64
#define BN_MAX_BATCH 512

void *bn_eng_alloc64(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bn_align_up(bytes, 64) : 64)) return NULL;
    return p;
}

double bn_eng_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void bn_engine_opts_default(bn_engine_opts *o)
{
    memset(o, 0, sizeof *o);
    o->lm_head = BN_LM_HEAD_AUTO;
}

/* CPUs this process may run on: the ceiling for the thread count (more would oversubscribe). */
static int affinity_cpus(cpu_set_t *set)
{
    CPU_ZERO(set);
    if (sched_getaffinity(0, sizeof *set, set) != 0) return 1;
    int n = CPU_COUNT(set);
    return n > 0 ? n : 1;
}

/* Physical cores with at least one CPU in set (hwloc), or -1 if the topology is unavailable.
 * Two hyperthreads of one core share its load ports, and decode is bound by memory reads,
 * so the default is one thread per core, as llama.cpp does. */
static int physical_cores(const cpu_set_t *set)
{
    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo)) return -1;
    int n = -1;
    hwloc_bitmap_t allowed = hwloc_bitmap_alloc();
    if (allowed && hwloc_topology_load(topo) == 0 &&
        hwloc_cpuset_from_glibc_sched_affinity(topo, allowed, set, sizeof *set) == 0) {
        n = 0;
        for (hwloc_obj_t core = NULL;
             (core = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_CORE, core)) != NULL;)
            if (hwloc_bitmap_intersects(core->cpuset, allowed)) n++;
    }
    hwloc_bitmap_free(allowed);
    hwloc_topology_destroy(topo);
    return n;
}

/* Default: the physical cores available to this process. Never more threads than CPUs in the
 * affinity mask: a second thread on a busy CPU makes every OpenMP barrier wait for it. */
static int resolve_threads(int requested)
{
    cpu_set_t set;
    int avail = affinity_cpus(&set);
    if (requested > 0) return requested < avail ? requested : avail;
    int cores = physical_cores(&set);
    return cores > 0 && cores < avail ? cores : avail;
}

/* The affinity mask as a CPU list ("0-3,8"), for messages. */
static void mask_str(const cpu_set_t *set, char *buf, size_t n)
{
    hwloc_bitmap_t b = hwloc_bitmap_alloc();
    for (int c = 0; b && c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, set)) hwloc_bitmap_set(b, (unsigned)c);
    if (!b || hwloc_bitmap_list_snprintf(buf, n, b) < 0) snprintf(buf, n, "?");
    hwloc_bitmap_free(b);
}

/* An explicit CPU set (opts.cpus): one thread per entry, each a distinct CPU this process may
 * already run on (pinning outside the mask would escape a taskset or cgroup). */
static int check_cpus(const int *cpus, int n, bn_error *err)
{
    cpu_set_t allowed, seen;
    char list[256];
    if (n <= 0) return bn_err(err, "the engine's CPU set is empty (n_cpus %d)", n);
    affinity_cpus(&allowed);
    CPU_ZERO(&seen);
    for (int i = 0; i < n; i++) {
        int c = cpus[i];
        if (c < 0 || c >= CPU_SETSIZE || !CPU_ISSET(c, &allowed)) {
            mask_str(&allowed, list, sizeof list);
            return bn_err(err, "CPU %d is not one this process may run on (its affinity mask is %s)",
                          c, list);
        }
        if (CPU_ISSET(c, &seen)) return bn_err(err, "CPU %d is listed twice in the engine's CPU set", c);
        CPU_SET(c, &seen);
    }
    return 0;
}

static int resolve_lm_head(const bn_model *m, int want, enum bn_lm_head_kind *out, bn_error *err)
{
    int has_i8 = m->lm_head_i8 != NULL && m->lm_head_i8_scale != NULL;
    int has_screen = has_i8 && m->lm_head_i8_err != NULL && m->lm_head_i8_norm != NULL;
    switch (want) {
    case BN_LM_HEAD_AUTO:   /* the exact screen when the file allows it; old files as before */
        *out = has_screen ? BN_LM_HEAD_SCREEN : has_i8 ? BN_LM_HEAD_I8 : BN_LM_HEAD_F16;
        return 0;
    case BN_LM_HEAD_F16: *out = BN_LM_HEAD_F16; return 0;
    case BN_LM_HEAD_I8:
        if (!has_i8) return bn_err(err, "%s: the model file has no int8 lm_head", m->path);
        *out = BN_LM_HEAD_I8;
        return 0;
    case BN_LM_HEAD_SCREEN:
    case BN_LM_HEAD_SCREEN_I8:
        if (!has_screen)
            return bn_err(err, "%s: the model file has no screened lm_head (output_q8.err/.norm, "
                          "format 1.1: repack it)", m->path);
        *out = (enum bn_lm_head_kind)want;
        return 0;
    }
    return bn_err(err, "unknown lm_head kind %d", want);
}

/* Width of the int8 activation rows fed to the ternary kernels: the widest padded input. */
static size_t act_cols_padded(bn_tern_fmt fmt, const bn_config *c)
{
    size_t a = bn_tern_cols_padded(fmt, c->n_embd), b = bn_tern_cols_padded(fmt, c->n_ff);
    return a > b ? a : b;
}

size_t bn_lm_q_stride(const bn_model *m)
{
    size_t p = bn_align_up(m->cfg.n_embd, 64);
    if (m->lm_head_planes && m->lm_head_planes_cols > p) p = m->lm_head_planes_cols;
    return m->lm_head_cols_padded > p ? m->lm_head_cols_padded : p;
}

/* The scratch layout, in one place so that the plan and the allocation cannot disagree. */
typedef struct scratch_sizes {
    size_t x, kvd, ff, qa, qs, scores, rope, lm_q, logits, tok, seqv, lm_cand, lm_part, lm_acc,
        lm_live;
} scratch_sizes;

static scratch_sizes scratch_plan(const bn_model *m, uint32_t batch, int n_threads, uint32_t n_ctx,
                                  uint32_t n_seq)
{
    const bn_config *c = &m->cfg;
    scratch_sizes z;
    size_t kv_dim = (size_t)c->n_head_kv * c->head_dim;
    z.x = (size_t)batch * c->n_embd * sizeof(float);
    z.kvd = (size_t)batch * kv_dim * sizeof(float);
    z.ff = (size_t)batch * c->n_ff * sizeof(float);
    z.qa = (size_t)batch * act_cols_padded(m->tern_fmt, c);
    z.qs = (size_t)batch * sizeof(float);
    z.scores = (size_t)n_threads * (c->n_head / c->n_head_kv) * n_ctx * sizeof(float);
    z.rope = (size_t)c->head_dim / 2 * sizeof(float);
    z.lm_q = (size_t)batch * bn_lm_q_stride(m);   /* batched lm_head: one row per token */
    z.logits = (size_t)c->n_vocab * sizeof(float);
    z.tok = (size_t)batch * sizeof(uint32_t);      /* also the lm_head's per-token scales */
    z.seqv = (size_t)n_seq * sizeof(uint32_t);
    z.lm_cand = (size_t)c->n_vocab * 8;             /* struct bn_lm_cand: float + u32 */
    z.lm_part = (size_t)n_threads * LM_PART_SLOTS * sizeof(float);
    z.lm_acc = m->lm_head_planes ? (size_t)c->n_vocab * sizeof(int32_t) : 0;
    z.lm_live = m->lm_head_planes ? (size_t)c->n_vocab : 0;
    return z;
}

static size_t scratch_total(const scratch_sizes *z)
{
    size_t a = 64; /* each buffer rounds up to 64 bytes at most */
    return 5 * bn_align_up(z->x, a) + 2 * bn_align_up(z->kvd, a) + 2 * bn_align_up(z->ff, a) +
           bn_align_up(z->qa, a) + bn_align_up(z->qs, a) + bn_align_up(z->scores, a) +
           bn_align_up(z->rope, a) + bn_align_up(z->lm_q, a) + bn_align_up(z->logits, a) +
           3 * bn_align_up(z->tok, a) + bn_align_up(z->seqv, a) + bn_align_up(z->lm_cand, a) +
           bn_align_up(z->lm_part, a) + bn_align_up(z->lm_acc, a) + bn_align_up(z->lm_live, a);
}

static int resolve_opts(const bn_model *m, const bn_engine_opts *o, uint32_t *n_ctx,
                        uint32_t *batch, int *threads, uint32_t *n_seq, bn_error *err)
{
    *n_seq = o->n_seq == 0 ? 1 : o->n_seq;
    if (*n_seq > BN_MAX_SEQ)
        return bn_err(err, "%u sequences requested, at most %d", o->n_seq, BN_MAX_SEQ);
    *n_ctx = o->n_ctx == 0 || o->n_ctx > m->cfg.n_ctx_max ? m->cfg.n_ctx_max : o->n_ctx;
    if (*n_ctx == 0) return bn_err(err, "%s: the model's context length is 0", m->path);
    *batch = o->batch == 0 ? BN_DEFAULT_BATCH : o->batch;
    if (*batch > BN_MAX_BATCH) *batch = BN_MAX_BATCH;
    if ((uint64_t)*batch > (uint64_t)*n_ctx * *n_seq)   /* no chunk holds more tokens */
        *batch = *n_ctx * *n_seq;
    if (o->cpus) {
        if (check_cpus(o->cpus, o->n_cpus, err)) return -1;
        *threads = o->n_cpus;
        return 0;
    }
    *threads = resolve_threads(o->n_threads);
    return 0;
}

int bn_engine_plan(const bn_model *m, const bn_engine_opts *opts, bn_engine_mem *mem,
                   bn_error *err)
{
    bn_engine_opts def;
    if (!opts) {
        bn_engine_opts_default(&def);
        opts = &def;
    }
    uint32_t n_ctx = 0, batch = 0, n_seq = 1;
    int threads = 1;
    if (resolve_opts(m, opts, &n_ctx, &batch, &threads, &n_seq, err)) return -1;
    scratch_sizes z = scratch_plan(m, batch, threads, n_ctx, n_seq);
    memset(mem, 0, sizeof *mem);
    /* S x n_ctx regions, not a paged pool: a sequence's positions stay contiguous, so attention
     * reads them exactly as the single-sequence path does, and the pages of positions never
     * reached are never touched (not zeroed), so unused capacity costs address space only. */
    mem->n_seq = n_seq;
    mem->kv_per_seq = bn_kv_bytes(&m->cfg, n_ctx);
    mem->kv = n_seq * mem->kv_per_seq;
    mem->scratch = scratch_total(&z) + bn_sampler_bytes(m->cfg.n_vocab);
    mem->total = mem->kv + mem->scratch;
    mem->n_ctx = n_ctx;
    mem->batch = batch;
    mem->n_threads = threads;
    return 0;
}

static int scratch_alloc(bn_scratch *s, const scratch_sizes *z, size_t cols_pad)
{
    s->x = bn_eng_alloc64(z->x);
    s->xb = bn_eng_alloc64(z->x);
    s->xb2 = bn_eng_alloc64(z->x);
    s->q = bn_eng_alloc64(z->x);
    s->att = bn_eng_alloc64(z->x);
    s->k = bn_eng_alloc64(z->kvd);
    s->v = bn_eng_alloc64(z->kvd);
    s->hg = bn_eng_alloc64(z->ff);
    s->hu = bn_eng_alloc64(z->ff);
    s->qa = bn_eng_alloc64(z->qa);
    s->qs = bn_eng_alloc64(z->qs);
    s->scores = bn_eng_alloc64(z->scores);
    s->rope_inv_freq = bn_eng_alloc64(z->rope);
    s->lm_q = bn_eng_alloc64(z->lm_q);
    s->lm_qs = bn_eng_alloc64(z->tok);
    s->logits = bn_eng_alloc64(z->logits);
    s->tok_seq = bn_eng_alloc64(z->tok);
    s->tok_pos = bn_eng_alloc64(z->tok);
    s->seq_next = bn_eng_alloc64(z->seqv);
    s->lm_cand = bn_eng_alloc64(z->lm_cand);
    s->lm_part = bn_eng_alloc64(z->lm_part);
    s->lm_acc = z->lm_acc ? bn_eng_alloc64(z->lm_acc) : NULL;
    s->lm_live = z->lm_live ? bn_eng_alloc64(z->lm_live) : NULL;
    s->cols_pad = cols_pad;
    return s->x && s->xb && s->xb2 && s->q && s->att && s->k && s->v && s->hg && s->hu && s->qa &&
                   s->qs && s->scores && s->rope_inv_freq && s->lm_q && s->lm_qs && s->logits &&
                   s->tok_seq && s->tok_pos && s->seq_next && s->lm_cand && s->lm_part &&
                   (s->lm_acc || !z->lm_acc) && (s->lm_live || !z->lm_live)
               ? 0
               : -1;
}

static void scratch_free(bn_scratch *s)
{
    void *bufs[] = {s->x, s->xb, s->xb2, s->q, s->att, s->k, s->v, s->hg, s->hu, s->qa, s->qs,
                    s->scores, s->rope_inv_freq, s->lm_q, s->lm_qs, s->logits,
                    s->tok_seq, s->tok_pos, s->seq_next, s->lm_cand, s->lm_part, s->lm_acc,
                    s->lm_live};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    memset(s, 0, sizeof *s);
}

/* Binds OpenMP thread i to cpus[i % k]. libgomp keeps the same pool threads for every later
 * team of this size, so doing it once here binds every later parallel region. The mask before
 * pinning is kept in e->unpinned: pinning also narrows the calling thread, which would otherwise
 * shrink the CPUs every later engine of this process may use. */
static int pin_threads(bn_engine *e, const int *cpus, int k, bn_error *err)
{
    if (sched_getaffinity(0, sizeof e->unpinned, &e->unpinned) != 0)
        return bn_err(err, "cannot read the affinity mask: %s", strerror(errno));
    e->pinned = 1;   /* from here bn_engine_free() restores the mask, even after a failure */
    int bad = -1;
#pragma omp parallel num_threads(e->n_threads)
    {
        int c = cpus[omp_get_thread_num() % k];
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(c, &one);
        if (sched_setaffinity(0, sizeof one, &one) != 0) {
#pragma omp atomic write
            bad = c;
        }
    }
    return bad < 0 ? 0 : bn_err(err, "cannot pin a thread to CPU %d", bad);
}

/* opts.pin without a CPU set: thread i on the i-th CPU of the affinity mask. */
static int pin_to_mask(bn_engine *e, bn_error *err)
{
    cpu_set_t allowed;
    int n_cpu = affinity_cpus(&allowed);
    int cpus[CPU_SETSIZE], k = 0;
    for (int c = 0; c < CPU_SETSIZE && k < n_cpu; c++)
        if (CPU_ISSET(c, &allowed)) cpus[k++] = c;
    return k == 0 ? 0 : pin_threads(e, cpus, k, err);
}

/* The caches of sequences 1 .. n_seq-1, each exactly like sequence 0's. */
static int kv_more_alloc(bn_engine *e, bn_error *err)
{
    if (e->n_seq <= 1) return 0;
    e->kv_more = calloc(e->n_seq - 1, sizeof *e->kv_more);
    if (!e->kv_more) return bn_err(err, "out of memory");
    for (uint32_t i = 0; i + 1 < e->n_seq; i++)
        if (bn_kv_alloc(&e->kv_more[i], &e->cfg, e->kv.n_ctx, err)) return -1;
    return 0;
}

/* What the forward pass supports (every family of docs/models.md): either FFN activation,
 * sub-norms in every layer or in none, any even head_dim, whole GQA groups, a tied or an untied
 * f16 head. *head gets the f16 head rows. */
static int check_model(const bn_model *m, const uint16_t **head, bn_error *err)
{
    const bn_config *c = &m->cfg;
    /* also the shape the scratch layout assumes: an activation the FFN knows, an even head_dim
     * (RoPE pairs), n_head * head_dim == n_embd, whole GQA groups */
    if (bn_config_validate(c, err)) return -1;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const bn_layer_weights *w = &m->layers[l];
        if ((w->attn_sub_norm == NULL || w->ffn_sub_norm == NULL) != (c->no_sub_norms != 0) ||
            (w->attn_sub_norm == NULL) != (w->ffn_sub_norm == NULL))
            return bn_err(err, "%s: layer %u: attn_sub_norm %s, ffn_sub_norm %s, but the config "
                          "says %s", m->path, l, w->attn_sub_norm ? "present" : "absent",
                          w->ffn_sub_norm ? "present" : "absent",
                          c->no_sub_norms ? "no sub-norms" : "both in every layer");
    }
    *head = m->tok_embd;
    if (!c->tied) {
        const bn_tensor *t = bn_model_tensor(m, "output");
        if (!t || t->dtype != BN_DT_F16 || t->rows != c->n_vocab || t->cols != c->n_embd)
            return bn_err(err, "%s: untied model without an f16 [%u][%u] \"output\" tensor", m->path,
                          c->n_vocab, c->n_embd);
        *head = t->data;
    }
    return 0;
}

int bn_engine_create(const bn_model *m, const bn_engine_opts *opts, bn_engine **out,
                     bn_error *err)
{
    bn_engine_opts def;
    if (!opts) {
        bn_engine_opts_default(&def);
        opts = &def;
    }
    *out = NULL;
    const uint16_t *head = NULL;
    if (check_model(m, &head, err)) return -1;

    bn_engine *e = calloc(1, sizeof *e);
    if (!e) return bn_err(err, "out of memory");
    e->model = m;
    e->head_f16 = head;
    e->cfg = m->cfg;
    e->fmt = m->tern_fmt;
    e->row_tile = bn_tern_row_tile(e->fmt);
    if (resolve_lm_head(m, opts->lm_head, &e->lm_head, err) || bn_engine_plan(m, opts, &e->mem, err)) {
        free(e);
        return -1;
    }
    memset(e->lm_tail, 1, sizeof e->lm_tail);   /* int8-accurate tails unless a caller says not */
    for (int j = 0; j < 3; j++) e->lm_drop[j] = 1.0f;   /* every stage evaluated until measured */
    e->kv.n_ctx = e->mem.n_ctx;
    e->batch = e->mem.batch;
    e->n_threads = e->mem.n_threads;
    e->n_seq = e->mem.n_seq;
    scratch_sizes z = scratch_plan(m, e->batch, e->n_threads, e->kv.n_ctx, e->n_seq);
    /* kv and sampler set their own message; e is read only before it is freed */
    int rc = bn_kv_alloc(&e->kv, &e->cfg, e->kv.n_ctx, err);
    if (rc == 0) rc = kv_more_alloc(e, err);
    if (rc == 0 && scratch_alloc(&e->s, &z, act_cols_padded(e->fmt, &e->cfg)))
        rc = bn_err(err, "cannot allocate the engine's %zu scratch bytes (n_ctx %u)",
                    e->mem.scratch, e->mem.n_ctx);
    if (rc == 0 && !(e->sampler = bn_sampler_new(e->cfg.n_vocab, err))) rc = -1;
    if (rc) {
        bn_engine_free(e);
        return -1;
    }
    /* The zero padding of the activation rows is part of the kernels' contract. */
    memset(e->s.qa, 0, z.qa);
    memset(e->s.lm_q, 0, z.lm_q);
    bn_rope_inv_freq(e->s.rope_inv_freq, (int)e->cfg.head_dim, e->cfg.rope_theta);

    omp_set_dynamic(0);   /* exactly n_threads per team: the split assumes it */
    if (opts->cpus ? pin_threads(e, opts->cpus, opts->n_cpus, err)
                   : opts->pin ? pin_to_mask(e, err) : 0) {
        bn_engine_free(e);
        return -1;
    }
    *out = e;
    return 0;
}

/* Gives every pool thread (and the caller) its pre-pinning mask back. */
static void unpin_threads(bn_engine *e)
{
#pragma omp parallel num_threads(e->n_threads)
    sched_setaffinity(0, sizeof e->unpinned, &e->unpinned);
}

void bn_engine_free(bn_engine *e)
{
    if (!e) return;
    if (e->pinned) unpin_threads(e);
    bn_kv_free(&e->kv);
    for (uint32_t i = 0; e->kv_more && i + 1 < e->n_seq; i++) bn_kv_free(&e->kv_more[i]);
    free(e->kv_more);
    scratch_free(&e->s);
    bn_sampler_free(e->sampler);
    free(e);
}

const bn_model *bn_engine_model(const bn_engine *e) { return e->model; }
void bn_engine_memory(const bn_engine *e, bn_engine_mem *mem) { *mem = e->mem; }
int bn_engine_threads(const bn_engine *e) { return e->n_threads; }
uint32_t bn_engine_n_ctx(const bn_engine *e) { return e->kv.n_ctx; }
enum bn_lm_head_kind bn_engine_lm_head(const bn_engine *e) { return e->lm_head; }
float *bn_engine_logits(bn_engine *e) { return e->s.logits; }

int bn_engine_set_lm_head(bn_engine *e, enum bn_lm_head_kind kind, bn_error *err)
{
    return resolve_lm_head(e->model, kind, &e->lm_head, err);
}

void bn_engine_set_layer_hook(bn_engine *e, bn_layer_hook fn, void *user)
{
    e->hook = fn;
    e->hook_user = user;
}

void bn_engine_profile(bn_engine *e, int on)
{
    e->profiling = on;
    if (on) memset(e->prof, 0, sizeof e->prof);
}

const double *bn_engine_profile_get(const bn_engine *e) { return e->prof; }

const char *bn_prof_part_name(enum bn_prof_part p)
{
    static const char *names[BN_PROF_COUNT] = {
        "ternary q/k/v", "ternary o", "ternary gate/up", "ternary down",
        "attention (rope, kv, softmax)", "lm_head (+final norm)", "norms, quant, residual"};
    return (unsigned)p < BN_PROF_COUNT ? names[p] : "?";
}

uint64_t bn_engine_weight_bytes_per_token(const bn_engine *e)
{
    const bn_config *c = &e->cfg;
    uint64_t bytes = 0;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const bn_layer_weights *w = &e->model->layers[l];
        const bn_tensor *t[] = {w->wq, w->wk, w->wv, w->wo, w->wgate, w->wup, w->wdown};
        for (size_t i = 0; i < 7; i++) bytes += t[i]->nbytes;
        bytes += 2ull * c->n_embd * sizeof(float);                 /* attn_norm, ffn_norm */
        if (w->attn_sub_norm) bytes += ((uint64_t)c->n_embd + c->n_ff) * sizeof(float);
    }
    bytes += (uint64_t)c->n_embd * sizeof(float);                /* output norm */
    bytes += (uint64_t)c->n_embd * sizeof(uint16_t);             /* one embedding row */
    const bn_lm_stats *ls = &e->lm_stats;
    if (e->lm_head == BN_LM_HEAD_I8)
        bytes += (uint64_t)c->n_vocab * (e->model->lm_head_cols_padded + sizeof(float));
    else if (e->lm_head == BN_LM_HEAD_SCREEN && e->model->lm_head_planes && ls->plane_tokens) {
        /* the planes read, as counted so far (rows x plane bytes), + the per-row scale and bounds
         * of each stage; a few f16 rows not counted */
        uint64_t rows = 0;
        for (int j = 0; j < 4; j++) rows += ls->live[j];
        bytes += rows / ls->plane_tokens * (e->model->lm_head_planes_cols / 4 + 3 * sizeof(float));
    } else if (e->lm_head == BN_LM_HEAD_SCREEN || e->lm_head == BN_LM_HEAD_SCREEN_I8)
        bytes += (uint64_t)c->n_vocab * (e->model->lm_head_cols_padded + 3 * sizeof(float));
    else
        bytes += (uint64_t)c->n_vocab * c->n_embd * sizeof(uint16_t);
    return bytes;
}

int bn_engine_eval(bn_engine *e, const int32_t *ids, size_t n, float *all_logits, bn_error *err)
{
    if (n == 0) return 0;
    if (n > e->kv.n_ctx - e->kv.n_past)
        return bn_err(err, "context full: %u cached + %zu new tokens > n_ctx %u", e->kv.n_past, n,
                      e->kv.n_ctx);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= e->cfg.n_vocab)
            return bn_err(err, "token id %d out of range (n_vocab %u)", ids[i], e->cfg.n_vocab);
    for (size_t i = 0; i < n; i += e->batch) {
        uint32_t m = (uint32_t)(n - i < e->batch ? n - i : e->batch);
        float *rows = all_logits ? all_logits + i * (size_t)e->cfg.n_vocab : NULL;
        bn_forward_chunk(e, ids + i, m, rows, i + m == n);
    }
    return 0;
}

/* Checks the whole batch before evaluating any of it: sequence indexes, ids, and that each
 * sequence's new tokens fit its context (s.seq_next counts them from its n_past). */
static int check_batch(bn_engine *e, const bn_batch_tok *toks, size_t n, const float *logits_out,
                       bn_error *err)
{
    for (uint32_t q = 0; q < e->n_seq; q++) e->s.seq_next[q] = bn_eng_kv(e, q)->n_past;
    for (size_t i = 0; i < n; i++) {
        const bn_batch_tok *t = &toks[i];
        if (t->seq >= e->n_seq)
            return bn_err(err, "batch token %zu: sequence %u out of range (n_seq %u)", i, t->seq,
                          e->n_seq);
        if (t->id < 0 || (uint32_t)t->id >= e->cfg.n_vocab)
            return bn_err(err, "batch token %zu: id %d out of range (n_vocab %u)", i, t->id,
                          e->cfg.n_vocab);
        if (e->s.seq_next[t->seq]++ >= e->kv.n_ctx)
            return bn_err(err, "sequence %u: context full (n_ctx %u)", t->seq, e->kv.n_ctx);
        if (t->want_logits && !logits_out)
            return bn_err(err, "batch token %zu wants logits but no logits buffer was given", i);
    }
    return 0;
}

int bn_engine_eval_batch(bn_engine *e, const bn_batch_tok *toks, size_t n, float *logits_out,
                         bn_error *err)
{
    if (n == 0) return 0;
    if (check_batch(e, toks, n, logits_out, err)) return -1;
    size_t rows = 0;
    for (size_t i = 0; i < n; i += e->batch) {
        uint32_t m = (uint32_t)(n - i < e->batch ? n - i : e->batch);
        float *out = logits_out ? logits_out + rows * e->cfg.n_vocab : NULL;
        rows += bn_forward_batch(e, toks + i, m, out);
    }
    return 0;
}

uint32_t bn_engine_n_seq(const bn_engine *e) { return e->n_seq; }
