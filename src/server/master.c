/* The master: start-up, the workers (fork, channel, supervise, respawn), dispatch from the
 * queue, signals (graceful stop, reload, log reopen) and the daemon's process chores.
 *
 * Each worker holds up to hello.n_slots requests (continuous batching). A queued request goes
 * to a worker with a free slot, the one whose mirrored cache entries hold the longest prefix
 * of its prompt (scheduler.h); batch requests leave reserved_slots per worker to interactive
 * ones. A worker that dies fails exactly the requests it held; one is retired (reload) only
 * once it holds none.
 *
 * Life of the process (nginx's shape):
 *   config -> logs -> [daemon] -> pid file -> bind listeners -> drop privileges -> event loop;
 *   in the loop: load the model (a helper child converts it first if it is not a packed file),
 *   map the weights once, plan placement, fork one worker per planned slot, then serve.
 * The master never runs OpenMP (workers do, after fork) and never blocks on a worker. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "model/convert_cache.h"
#include "model/model_format.h"
#include "server/limits.h"
#include "server/master.h"
#include "server/worker.h"

/* ---- small helpers ------------------------------------------------------------------- */

double bn_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

const char *bn_wstate_name(enum bn_wstate st)
{
    static const char *names[] = {"down", "starting", "idle", "busy"};
    return st <= BN_W_BUSY ? names[st] : "?";
}

/* Is path a packed model file (by its magic), as opposed to an HF directory or a GGUF? */
static int is_packed_file(const char *path)
{
    char magic[8];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, magic, sizeof magic);
    close(fd);
    return n == (ssize_t)sizeof magic && !memcmp(magic, BN_FILE_MAGIC, sizeof magic);
}

static char *base_name_of(const char *path)
{
    const char *b = strrchr(path, '/');
    b = b && b[1] ? b + 1 : path;
    char *s = strdup(b);
    if (!s) return NULL;
    size_t n = strlen(s);
    if (n > 5 && !strcmp(s + n - 5, ".bnpk")) s[n - 5] = 0;
    return s;
}

/* ---- generations: what workers fork from ------------------------------------------------ */

/* Physical RAM, or the cgroup's memory limit when it is lower (0 when unknown). */
static uint64_t ram_bytes(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    uint64_t ram = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 0;
    FILE *f = fopen("/sys/fs/cgroup/memory.max", "r");   /* "max" when unlimited */
    unsigned long long lim;
    if (f && fscanf(f, "%llu", &lim) == 1 && lim > 0 && (ram == 0 || lim < ram)) ram = lim;
    if (f) fclose(f);
    return ram;
}

/* Requests per worker: cfg->slots, or for auto (0) bn_sched_auto_slots of this model's KV per
 * sequence at n_ctx. how[] says which, for the start-up line. */
static uint32_t resolve_slots(const bn_srv_config *cfg, const bn_model *m, uint32_t n_ctx, int n_workers,
                              char *how, size_t len)
{
    if (cfg->slots > 0) {
        uint32_t n = cfg->slots < BN_MAX_SEQ ? (uint32_t)cfg->slots : BN_MAX_SEQ;
        snprintf(how, len, "slots = %u", n);
        return n;
    }
    bn_engine_opts o;
    bn_engine_opts_default(&o);
    o.n_ctx = n_ctx;
    o.n_threads = 1;   /* only the KV size matters here */
    bn_engine_mem mem;
    bn_error err;
    uint64_t per_seq = bn_engine_plan(m, &o, &mem, &err) == 0 ? mem.kv_per_seq : 0, ram = ram_bytes();
    uint32_t n = bn_sched_auto_slots(per_seq, ram, n_workers);
    snprintf(how, len, "slots = auto: %u x %.1f MiB of KV per worker, %s a quarter of RAM (%.0f MiB) over %d worker%s",
             n, per_seq / 1048576.0, n == BN_SCHED_AUTO_SLOTS ? "within" : "as many as fit in",
             ram / 4 / 1048576.0, n_workers, n_workers == 1 ? "" : "s");
    return n;
}

static void generation_unref(bn_generation *g)
{
    if (!g || --g->refs > 0) return;
    bn_tokenizer_free(g->tok);
    bn_weights_close(&g->weights);
    bn_plan_free(&g->plan);
    if (g->cfg) bn_config_free(g->cfg);
    free(g->cfg);
    free(g->model_path);
    free(g->model_id);
    free(g->plan_json);
    free(g);
}

/* Maps the packed file, builds the tokenizer and the placement plan for cfg (taken over: freed
 * with the generation, even on failure). Runs in the master: nothing here may start OpenMP. */
static bn_generation *generation_load(bn_server *s, bn_srv_config *cfg, const char *packed,
                                      bn_error *err)
{
    static int next_id = 1;
    bn_generation *g = calloc(1, sizeof *g);
    if (!g) {
        bn_config_free(cfg);
        free(cfg);
        return bn_err(err, "out of memory"), NULL;
    }
    g->refs = 1;
    g->id = next_id++;
    g->cfg = cfg;
    g->created = (long)time(NULL);
    char warn[256] = "";
    g->model_path = strdup(packed);
    if (!g->model_path) goto oom;
    if (bn_weights_open(packed, cfg->weights, cfg->mlock, cfg->huge_pages, &g->weights, warn, err) != 0) {
        bn_config_err_at(cfg, "model", err);
        goto fail;
    }
    if (warn[0]) bn_log_warn("%s", warn);
    const bn_model *m = g->weights.model;
    g->tok = bn_tokenizer_new(m->vocab, err);
    if (!g->tok) goto fail;
    g->chat = bn_chat_kind_of_vocab(m->vocab);
    if (cfg->chat_format) {
        int k = bn_chat_kind_parse(cfg->chat_format);
        if (k < 0) {
            bn_err(err, "chat_format: unknown format '%s' (bitnet, llama3, falcon3, none)", cfg->chat_format);
            goto fail;
        }
        g->chat = (enum bn_chat_kind)k;
    }
    g->n_ctx = cfg->n_ctx && cfg->n_ctx < m->cfg.n_ctx_max ? cfg->n_ctx : m->cfg.n_ctx_max;
    bn_place_request rq = {cfg->cpus, cfg->workers, cfg->threads, cfg->smt, cfg->share_cores};
    if (bn_plan_make(s->topo, NULL, &rq, &g->plan, err) != 0) {
        /* name the placement key the operator set (cpus first: it is the usual culprit) */
        const char *key = bn_config_where(cfg, "cpus") ? "cpus" : bn_config_where(cfg, "threads") ? "threads" : "workers";
        bn_config_err_at(cfg, key, err);
        goto fail;
    }
    g->n_slots = resolve_slots(cfg, m, g->n_ctx, g->plan.n_workers, g->slots_how, sizeof g->slots_how);
    g->plan_json = bn_plan_json(&g->plan);
    g->model_id = cfg->model_name ? strdup(cfg->model_name) : base_name_of(cfg->model);
    if (!g->plan_json || !g->model_id) goto oom;
    return g;
oom:
    bn_err(err, "out of memory");
fail:
    generation_unref(g);
    return NULL;
}

/* ---- worker slots ------------------------------------------------------------------------ */

static void slot_read_cb(struct bufferevent *bev, void *arg);
static void slot_event_cb(struct bufferevent *bev, short what, void *arg);
static void dispatch(bn_server *s);
static void replace_next(bn_server *s);
static void maybe_finish_drain(bn_server *s);
static void mirror_clear(bn_slot *sl);

/* Everything a forked worker must not inherit from the master's event loop. */
static void child_after_fork(bn_server *s, int keep_fd)
{
    static const int sigs[] = {SIGTERM, SIGHUP, SIGUSR1, SIGCHLD, SIGQUIT};
    struct sigaction sa = {0};
    sa.sa_handler = SIG_DFL;
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
    /* Ctrl-C reaches the whole process group: only the master decides how to stop. */
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    bn_http_stop_listening(s);
    for (int i = 0; i < s->n_slots; i++)
        if (s->slots[i].fd >= 0 && s->slots[i].fd != keep_fd) close(s->slots[i].fd);
    if (s->converter_fd >= 0) close(s->converter_fd);
}

static int slot_spawn(bn_server *s, bn_slot *sl)
{
    bn_generation *g = s->gen;
    if (!g || sl->index >= g->plan.n_workers) return -1;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        bn_log_error("worker %d: socketpair: %s", sl->index, strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        bn_log_error("worker %d: fork: %s", sl->index, strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid == 0) {
        close(sv[0]);
        child_after_fork(s, sv[1]);
        char tag[32];
        snprintf(tag, sizeof tag, "worker %d", sl->index);
        bn_log_set_tag(tag);
        bn_worker_spec spec = {0};
        spec.index = sl->index;
        spec.fd = sv[1];
        spec.model = g->weights.model;
        spec.tok = g->tok;
        bn_engine_opts_default(&spec.eopts);
        spec.eopts.n_ctx = g->n_ctx;
        spec.place = &g->plan.w[sl->index];
        spec.topo = s->topo;
        spec.prefill_chunk = g->cfg->prefill_chunk;
        spec.n_slots = g->n_slots;
        spec.prompt_cache_bytes = (size_t)g->cfg->prompt_cache_mb << 20;
        _exit(bn_worker_main(&spec));
    }
    close(sv[1]);
    evutil_make_socket_nonblocking(sv[0]);
    sl->bev = bufferevent_socket_new(s->base, sv[0], 0);
    if (!sl->bev) {
        close(sv[0]);
        kill(pid, SIGKILL);
        return -1;
    }
    bufferevent_setcb(sl->bev, slot_read_cb, NULL, slot_event_cb, sl);
    bufferevent_enable(sl->bev, EV_READ);
    sl->fd = sv[0];
    sl->pid = pid;
    sl->state = BN_W_STARTING;
    sl->gen = g;
    g->refs++;
    sl->retire = 0;
    mirror_clear(sl);
    sl->spawned_at = sl->last_progress = bn_mono();
    bn_log_info("worker %d: started (pid %ld), cpus %d..., generation %d", sl->index, (long)pid,
                g->plan.w[sl->index].cpus[0], g->id);
    return 0;
}

/* Closes the master's end: the worker sees EOF and exits once its request is done. */
static void slot_close_channel(bn_slot *sl)
{
    if (sl->bev) bufferevent_free(sl->bev);   /* created without BEV_OPT_CLOSE_ON_FREE */
    if (sl->fd >= 0) close(sl->fd);
    sl->bev = NULL;
    sl->fd = -1;
}

static void job_fail(bn_job *j, int status, const char *type, const char *code, const char *msg)
{
    bn_api_error e;
    bn_api_fail(&e, status, type, "", code, "%s", msg);
    bn_http_on_error(j, &e);
}

/* The worker is gone or must go (EOF, protocol error, timeout): exactly the requests it held
 * fail, each with its error; the process is killed if still there, and SIGCHLD's reaper
 * respawns the slot. */
static void slot_lost(bn_server *s, bn_slot *sl, const char *why)
{
    if (sl->state == BN_W_DOWN && !sl->bev) return;
    bn_log_error("worker %d (pid %ld): %s%s", sl->index, (long)sl->pid, why,
                 sl->n_jobs ? " (its requests fail)" : "");
    slot_close_channel(sl);
    sl->state = BN_W_DOWN;
    mirror_clear(sl);
    bn_job *lost[BN_MAX_SEQ];
    int n = sl->n_jobs;
    memcpy(lost, sl->jobs, (size_t)n * sizeof *lost);   /* the callbacks below may re-enter */
    sl->n_jobs = 0;
    s->n_running -= n;
    for (int k = 0; k < n; k++) {
        bn_job *j = lost[k];
        j->worker = -1;
        job_fail(j, 500, "server_error", "worker_died", "the worker running this request died; please retry");
        j->worker_done = 1;
        bn_job_release_worker_side(j);
    }
    if (sl->pid > 0) kill(sl->pid, SIGKILL);
}

/* ---- the mirror of a worker's caches (routing hints) ----------------------------------------- */

#define MIRROR_MAX 1024     /* entries per worker; beyond it the oldest are forgotten */

static void mirror_drop_at(bn_slot *sl, int i)
{
    sl->n_cached -= sl->cache[i].n;
    free((void *)sl->cache[i].ids);
    memmove(&sl->cache[i], &sl->cache[i + 1], (size_t)(sl->n_cache - i - 1) * sizeof *sl->cache);
    sl->n_cache--;
}

static void mirror_clear(bn_slot *sl)
{
    while (sl->n_cache > 0) mirror_drop_at(sl, sl->n_cache - 1);
}

static void mirror_drop(bn_slot *sl, uint64_t entry)
{
    for (int i = 0; i < sl->n_cache; i++)
        if (sl->cache[i].entry == entry) {
            mirror_drop_at(sl, i);
            return;
        }
}

/* Appends ids[0..n) (malloc'd, taken over) as the newest entry; a worker entry id replaces its
 * older version (entry 0, an idle sequence, never does). */
static void mirror_put(bn_slot *sl, uint64_t entry, int32_t *ids, size_t n)
{
    if (entry) mirror_drop(sl, entry);
    if (sl->n_cache >= MIRROR_MAX) mirror_drop_at(sl, 0);
    if (sl->n_cache == sl->cap_cache) {
        int cap = sl->cap_cache ? 2 * sl->cap_cache : 16;
        bn_sched_prefix *p = realloc(sl->cache, (size_t)cap * sizeof *p);
        if (!p) {
            free(ids);
            return;
        }
        sl->cache = p;
        sl->cap_cache = cap;
    }
    sl->cache[sl->n_cache++] = (bn_sched_prefix){ids, n, entry};
    sl->n_cached += n;
}

/* Without a prompt cache the only reusable KV is in the worker's idle engine sequences: the
 * master mirrors those itself (from DONE), at most one per slot not running a request. */
static int mirrors_sequences(const bn_slot *sl)
{
    return sl->gen && sl->gen->cfg->prompt_cache_mb == 0;
}

static void mirror_fit_sequences(bn_slot *sl, int idle_seqs)
{
    while (sl->n_cache > (idle_seqs > 0 ? idle_seqs : 0)) mirror_drop_at(sl, 0);
}

/* j finished: its sequence holds (prompt ++ generated)[0..n_past). */
static void mirror_done(bn_slot *sl, const bn_job *j, uint32_t n_past)
{
    size_t np = n_past < j->n_ids ? n_past : j->n_ids;
    size_t ng = n_past > j->n_ids ? n_past - j->n_ids : 0;
    if (ng > j->n_out) ng = j->n_out;
    int32_t *ids = malloc((np + ng + 1) * sizeof *ids);
    if (!ids) return;
    memcpy(ids, j->ids, np * sizeof *ids);
    memcpy(ids + np, j->out_ids, ng * sizeof *ids);
    mirror_put(sl, 0, ids, np + ng);
    mirror_fit_sequences(sl, (int)sl->hello.n_slots - (sl->n_jobs - 1));
}

/* j starts on sl: it takes over the idle sequence holding its prefix, or the oldest one. */
static void mirror_take_sequence(bn_slot *sl, const bn_job *j)
{
    bn_sched_worker w = {1, sl->n_jobs, (int)sl->hello.n_slots, sl->cache, sl->n_cache, 0};
    int which;
    bn_sched_match(&w, j->ids, j->n_ids, &which);
    if (which >= 0) mirror_drop_at(sl, which);
    mirror_fit_sequences(sl, (int)sl->hello.n_slots - (sl->n_jobs + 1));
}

static int on_cache(bn_slot *sl, const bn_frame *f)
{
    bn_cache_view v;
    bn_error err;
    /* a routing hint: a bad one is skipped, not worth the worker's requests */
    if (bn_frame_get_cache(f, &v, &err) != 0) {
        bn_log_warn("worker %d: bad CACHE frame skipped: %s", sl->index, err.msg);
        return 0;
    }
    switch (v.c.op) {
    case BN_CACHE_ADD: {
        int32_t *ids = malloc(((size_t)v.c.n_ids + 1) * sizeof *ids);
        if (!ids) {
            mirror_drop(sl, v.c.entry);
            return 0;
        }
        memcpy(ids, v.ids, (size_t)v.c.n_ids * sizeof *ids);
        mirror_put(sl, v.c.entry, ids, v.c.n_ids);
        return 0;
    }
    case BN_CACHE_DROP:
        mirror_drop(sl, v.c.entry);
        return 0;
    case BN_CACHE_CLEAR:
        mirror_clear(sl);
        return 0;
    }
    return 0;   /* (the view refuses unknown ops) */
}

/* ---- frames from a worker -------------------------------------------------------------------- */

/* BUSY while it holds a job, IDLE otherwise (once up). */
static void slot_update_state(bn_slot *sl)
{
    if (sl->state == BN_W_IDLE || sl->state == BN_W_BUSY) sl->state = sl->n_jobs ? BN_W_BUSY : BN_W_IDLE;
}

static int slot_job_index(const bn_slot *sl, uint64_t id)
{
    for (int k = 0; k < sl->n_jobs; k++)
        if (sl->jobs[k]->id == id) return k;
    return -1;
}

/* j (on sl) ended with DONE or ERROR: its slot is free for the next request. */
static void slot_finish_job(bn_server *s, bn_slot *sl, bn_job *j)
{
    int k = slot_job_index(sl, j->id);
    if (k >= 0) sl->jobs[k] = sl->jobs[--sl->n_jobs];
    slot_update_state(sl);
    s->n_running--;
    j->worker = -1;
    j->worker_done = 1;
    double svc = bn_mono() - j->t_dispatch;
    s->mean_service_s = s->mean_service_s > 0 ? 0.8 * s->mean_service_s + 0.2 * svc : svc;
    bn_job_release_worker_side(j);
    if (sl->retire) replace_next(s);
    dispatch(s);
    maybe_finish_drain(s);
}

static int on_hello(bn_server *s, bn_slot *sl, const bn_frame *f)
{
    bn_error err;
    if (bn_frame_get_fixed(f, &sl->hello, sizeof sl->hello, &err) != 0 || sl->state != BN_W_STARTING)
        return -1;
    if (sl->hello.n_slots == 0) sl->hello.n_slots = 1;
    if (sl->hello.n_slots > BN_MAX_SEQ) sl->hello.n_slots = BN_MAX_SEQ;
    sl->state = BN_W_IDLE;
    sl->quick_deaths = 0;
    bn_log_info("worker %d ready (pid %ld): %d threads, %u slots, n_ctx %u, KV %.1f MiB", sl->index,
                (long)sl->pid, sl->hello.n_threads, sl->hello.n_slots, sl->hello.n_ctx,
                sl->hello.kv_bytes / 1048576.0);
    replace_next(s);
    dispatch(s);
    return 0;
}

static int on_chunk(bn_job *j, const bn_frame *f)
{
    bn_chunk_view v;
    bn_error err;
    if (bn_frame_get_chunk(f, &v, &err) != 0) return -1;
    for (uint32_t i = 0; i < v.n_ids; i++) {
        int32_t id;
        memcpy(&id, v.ids + 4 * (size_t)i, 4);
        if (j->n_out == j->cap_out) {
            size_t cap = j->cap_out * 2 + 64;
            int32_t *p = realloc(j->out_ids, cap * sizeof *p);
            if (!p) break;
            j->out_ids = p;
            j->cap_out = cap;
        }
        j->out_ids[j->n_out++] = id;
    }
    bn_http_on_chunk(j, v.text, v.text_len, v.n_ids);
    return 0;
}

static int on_job_error(bn_server *s, bn_slot *sl, bn_job *j, const bn_frame *f)
{
    bn_fr_error fe;
    bn_error err;
    const char *msg;
    if (bn_frame_get_error(f, &fe, &msg, &err) != 0) return -1;
    char text[600];
    snprintf(text, sizeof text, "%.*s", (int)fe.msg_len, msg);
    bn_log_error("worker %d: request %llu failed: %s", sl->index, (unsigned long long)j->id, text);
    if (mirrors_sequences(sl)) mirror_clear(sl);   /* the worker may have reset its sequences */
    if (fe.code == BN_FRERR_CONTEXT)
        job_fail(j, 400, "invalid_request_error", "context_length_exceeded", text);
    else
        job_fail(j, 500, "server_error", fe.code == BN_FRERR_NAN ? "numerical_error" : "internal_error", text);
    slot_finish_job(s, sl, j);
    return 0;
}

/* One frame from sl's worker: 0, or -1 when the channel must be dropped (protocol error). */
static int on_frame(bn_server *s, bn_slot *sl, const bn_frame *f)
{
    bn_error err;
    sl->last_progress = bn_mono();   /* any frame: it is alive (worker_timeout) */
    if (f->type == BN_FR_HELLO) return on_hello(s, sl, f);
    if (f->type == BN_FR_CACHE) return on_cache(sl, f);
    if (f->type == BN_FR_ERROR && f->id == 0) {
        /* worker-level failure (it could not bind or create its engine): it exits next */
        bn_fr_error fe;
        const char *msg = "";
        if (bn_frame_get_error(f, &fe, &msg, &err) == 0)
            bn_log_error("worker %d: %.*s", sl->index, (int)fe.msg_len, msg);
        return -1;
    }
    int k = slot_job_index(sl, f->id);
    if (k < 0) return 0;   /* a frame of a request that already ended on our side */
    bn_job *j = sl->jobs[k];
    switch (f->type) {
    case BN_FR_PROGRESS:
        bn_http_on_progress(j);
        return 0;
    case BN_FR_CHUNK:
        return on_chunk(j, f);
    case BN_FR_DONE: {
        bn_fr_done d;
        if (bn_frame_get_fixed(f, &d, sizeof d, &err) != 0) return -1;
        if (mirrors_sequences(sl)) mirror_done(sl, j, d.n_past);
        j->n_cached = d.n_cached;
        bn_http_on_done(j, &d);
        slot_finish_job(s, sl, j);
        return 0;
    }
    case BN_FR_ERROR:
        return on_job_error(s, sl, j, f);
    }
    return -1;
}

static void slot_read_cb(struct bufferevent *bev, void *arg)
{
    bn_slot *sl = arg;
    bn_server *s = sl->srv;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        size_t avail = evbuffer_get_length(in);
        if (avail < BN_FRAME_HDR) return;
        uint8_t *p = evbuffer_pullup(in, BN_FRAME_HDR);
        bn_frame f;
        bn_error err;
        long n = bn_frame_decode(p, BN_FRAME_HDR, &f, &err);
        if (n == 0) {
            /* header fine, payload pending: pull the whole frame up once it is all here */
            uint32_t len;
            memcpy(&len, p, 4);
            size_t need = BN_FRAME_HDR + (len & 0xffffffu);
            if (avail < need) return;
            p = evbuffer_pullup(in, (ssize_t)need);
            n = bn_frame_decode(p, need, &f, &err);
        }
        if (n <= 0) {
            slot_lost(s, sl, n < 0 ? err.msg : "truncated frame");
            return;
        }
        int rc = on_frame(s, sl, &f);
        /* on_frame may have closed the slot (and freed bev) */
        if (sl->bev != bev) return;
        evbuffer_drain(in, (size_t)n);
        if (rc != 0) {
            slot_lost(s, sl, "protocol error on the channel");
            return;
        }
    }
}

static void slot_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    bn_slot *sl = arg;
    slot_lost(sl->srv, sl, (what & BEV_EVENT_EOF) ? "channel closed (the worker exited)" : "channel error");
}

/* ---- dispatch ---------------------------------------------------------------------------- */

static int send_generate(bn_slot *sl, const bn_job *j)
{
    bn_fr_generate g = {0};
    g.sampling = j->api.sampling;
    g.max_tokens = j->api.max_tokens;
    g.flags = j->api.ignore_eos ? BN_GENF_IGNORE_EOS : 0;
    g.n_prompt = (uint32_t)j->n_ids;
    g.n_stop = (uint32_t)j->api.n_stop;
    bn_buf b = {0};
    int rc = bn_frame_put_generate(&b, j->id, &g, j->ids, (const char *const *)j->api.stop);
    if (rc == 0) rc = bufferevent_write(sl->bev, b.p, b.len);
    bn_buf_free(&b);
    return rc;
}

static bn_job *job_of(bn_qnode *n)
{
    return n ? (bn_job *)((char *)n - offsetof(bn_job, qn)) : NULL;
}

/* The picker's view of every worker (the mirrors are borrowed). */
static void sched_view(const bn_server *s, bn_sched_worker *ws)
{
    for (int i = 0; i < s->n_slots; i++) {
        const bn_slot *sl = &s->slots[i];
        ws[i].ready = (sl->state == BN_W_IDLE || sl->state == BN_W_BUSY) && !sl->retire && sl->bev;
        ws[i].busy = sl->n_jobs;
        ws[i].total = bn_slot_capacity(sl);
        ws[i].prefixes = sl->cache;
        ws[i].n_prefixes = sl->n_cache;
        ws[i].last_used = sl->last_used;
    }
}

/* The queued job to run next and its worker (*w), or NULL: the best job of the queue (priority,
 * then fair share between keys, then age) if some worker has a slot it may take; batch jobs
 * leave each worker's reserved slots free, so when only those are left the best interactive
 * job goes (bn_queue_best ranks interactive first, so this second look is a safeguard). */
static bn_job *next_job(bn_server *s, const bn_sched_worker *ws, int *w, size_t *matched)
{
    const bn_limits *l = s->limits;
    const int *running = l ? bn_limits_running(l) : NULL;
    int n_keys = l ? bn_limits_n_keys(l) : 0;
    for (int pass = 0; pass < 2; pass++) {
        bn_job *j = job_of(bn_queue_best(&s->queue, running, n_keys, pass ? 0 : INT_MAX));
        if (!j) return NULL;
        int interactive = j->priority <= 0;
        *w = bn_sched_pick(ws, s->n_slots, j->ids, j->n_ids, interactive ? 0 : (int)s->cfg->reserved_slots, matched);
        if (*w >= 0) return j;
        if (interactive) return NULL;   /* not one free slot anywhere */
    }
    return NULL;
}

static void start_job(bn_server *s, bn_slot *sl, bn_job *j)
{
    if (send_generate(sl, j) != 0) {
        job_fail(j, 500, "server_error", "internal_error", "could not send the request to a worker");
        j->worker_done = 1;
        bn_job_release_worker_side(j);
        return;
    }
    if (mirrors_sequences(sl)) mirror_take_sequence(sl, j);
    double now = bn_mono();
    if (sl->n_jobs == 0) sl->last_progress = now;   /* worker_timeout runs while it holds jobs */
    sl->jobs[sl->n_jobs++] = j;
    slot_update_state(sl);
    sl->requests++;
    sl->last_used = now;
    j->worker = j->ran_on = sl->index;
    j->t_dispatch = now;
    if (j->limits && !j->started) {
        bn_limits_start(j->limits, j->key);
        j->started = 1;
    }
    s->n_running++;
    bn_http_on_start(j);
}

/* Whenever a slot frees or a job arrives: fill free slots from the queue. */
static void dispatch(bn_server *s)
{
    bn_sched_worker ws[BN_MAX_WORKERS];
    for (;;) {
        sched_view(s, ws);
        int w = -1;
        size_t matched = 0;
        bn_job *j = next_job(s, ws, &w, &matched);
        if (!j) return;
        bn_queue_remove(&s->queue, &j->qn);
        bn_log_debug("request %llu (priority %d) -> worker %d: %d of %d slots busy, %zu of %zu prompt tokens mirrored",
                     (unsigned long long)j->id, j->priority, w, ws[w].busy, ws[w].total, matched, j->n_ids);
        start_job(s, &s->slots[w], j);
    }
}

int bn_master_submit(bn_server *s, bn_job *j, bn_api_error *e)
{
    int workers = 0;
    for (int i = 0; i < s->n_slots; i++) workers += s->slots[i].state != BN_W_DOWN;
    if (s->draining)
        return bn_api_fail(e, 503, "server_error", "", "shutting_down", "the server is shutting down");
    if (bn_queue_push(&s->queue, &j->qn, bn_mono()) != 0) {
        bn_metrics_rejected(s->metrics, "queue_full");
        return bn_api_fail(e, 503, "server_error", "", "queue_full",
                           "all %d workers are busy and the queue is full (%d waiting); retry later",
                           workers, s->queue.len);
    }
    j->worker = -1;
    dispatch(s);
    return 0;
}

void bn_master_cancel(bn_server *s, bn_job *j)
{
    if (j->qn.queued) {
        bn_queue_remove(&s->queue, &j->qn);
        j->worker_done = 1;   /* never ran */
        return;
    }
    if (j->worker >= 0 && !j->cancelled) {
        bn_slot *sl = &s->slots[j->worker];
        bn_buf b = {0};
        if (sl->bev && bn_frame_put(&b, BN_FR_CANCEL, j->id, NULL, 0) == 0)
            bufferevent_write(sl->bev, b.p, b.len);
        bn_buf_free(&b);
        j->cancelled = 1;
    }
}

void bn_master_counts(const bn_server *s, int *idle, int *busy, int *starting, int *down)
{
    *idle = *busy = *starting = *down = 0;
    for (int i = 0; i < s->n_slots; i++) switch (s->slots[i].state) {
        case BN_W_IDLE: ++*idle; break;
        case BN_W_BUSY: ++*busy; break;
        case BN_W_STARTING: ++*starting; break;
        default: ++*down; break;
        }
}

int bn_slot_capacity(const bn_slot *sl)
{
    return sl->state == BN_W_IDLE || sl->state == BN_W_BUSY ? (int)sl->hello.n_slots : 0;
}

void bn_master_slot_counts(const bn_server *s, int *busy, int *total)
{
    *busy = *total = 0;
    for (int i = 0; i < s->n_slots; i++) {
        int cap = bn_slot_capacity(&s->slots[i]);
        *total += cap;
        *busy += cap ? s->slots[i].n_jobs : 0;
    }
}

double bn_master_kv_usage(const bn_server *s)
{
    uint64_t used = 0, cap = 0;
    for (int i = 0; i < s->n_slots; i++) {
        const bn_slot *sl = &s->slots[i];
        uint64_t n_ctx = sl->hello.n_ctx;
        if (!bn_slot_capacity(sl)) continue;
        cap += n_ctx * sl->hello.n_slots;
        for (int k = 0; k < sl->n_jobs; k++) {
            uint64_t n = sl->jobs[k]->n_ids + sl->jobs[k]->n_out;
            used += n < n_ctx ? n : n_ctx;
        }
    }
    return cap ? (double)used / (double)cap : 0;
}

/* ---- supervision: reaping, respawn with back-off, timeouts --------------------------------- */

static void respawn_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bn_slot *sl = arg;
    bn_server *s = sl->srv;
    if (s->draining || sl->state != BN_W_DOWN || sl->pid) return;
    if (!s->gen || sl->index >= s->gen->plan.n_workers) return;   /* slot removed by a reload */
    if (slot_spawn(s, sl) != 0) {
        struct timeval tv = {1, 0};
        evtimer_add(sl->respawn, &tv);
    }
}

/* A worker that dies young is restarted with a doubling delay (0.1 s .. 30 s), so a crash loop
 * (bad hardware, a broken model) does not spin the master; one that lived is restarted at once. */
static void slot_schedule_respawn(bn_server *s, bn_slot *sl)
{
    if (s->draining) return;
    double lived = bn_mono() - sl->spawned_at;
    sl->quick_deaths = lived < 5.0 ? sl->quick_deaths + 1 : 0;
    double delay = 0;
    if (sl->quick_deaths > 0) {
        delay = 0.1;
        for (int i = 1; i < sl->quick_deaths && delay < 30; i++) delay *= 2;
        if (delay > 30) delay = 30;
    }
    if (!sl->respawn) sl->respawn = evtimer_new(s->base, respawn_cb, sl);
    struct timeval tv = {(long)delay, (long)((delay - (long)delay) * 1e6)};
    evtimer_add(sl->respawn, &tv);
}

static void on_converter_exit(bn_server *s, int status);

static void reap_children(bn_server *s)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == s->converter_pid) {
            s->converter_pid = 0;
            on_converter_exit(s, status);
            continue;
        }
        for (int i = 0; i < s->n_slots; i++) {
            bn_slot *sl = &s->slots[i];
            if (sl->pid != pid) continue;
            int retire = sl->retire;
            char why[96];
            if (WIFSIGNALED(status)) snprintf(why, sizeof why, "killed by signal %d", WTERMSIG(status));
            else snprintf(why, sizeof why, "exited with status %d", WEXITSTATUS(status));
            if (sl->bev) slot_lost(s, sl, why);
            else if (!retire && !s->draining) bn_log_warn("worker %d (pid %ld) %s", sl->index, (long)pid, why);
            sl->pid = 0;
            sl->state = BN_W_DOWN;
            sl->retire = 0;
            generation_unref(sl->gen);
            sl->gen = NULL;
            if (s->draining) break;
            if (retire) {
                respawn_cb(-1, 0, sl);     /* a replacement (reload): start the new one now */
            } else {
                sl->restarts++;
                bn_metrics_worker_restart(s->metrics);
                slot_schedule_respawn(s, sl);
            }
            break;
        }
    }
    maybe_finish_drain(s);
}

/* Once a second: a worker holding jobs that sent no frame for worker_timeout is killed (its
 * requests fail, SIGCHLD respawns it); queued requests past queue_timeout get 503. */
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bn_server *s = arg;
    double now = bn_mono();
    for (int i = 0; i < s->n_slots; i++) {
        bn_slot *sl = &s->slots[i];
        if ((sl->state == BN_W_BUSY || sl->state == BN_W_STARTING) && sl->pid &&
            now - sl->last_progress > s->cfg->worker_timeout + (sl->state == BN_W_STARTING ? 60 : 0)) {
            char why[96];
            snprintf(why, sizeof why, "no frame for %.0f s with %d requests: killed", now - sl->last_progress,
                     sl->n_jobs);
            slot_lost(s, sl, why);
        }
    }
    bn_qnode *n;
    while ((n = bn_queue_peek(&s->queue)) && now - n->enqueued_at > s->cfg->queue_timeout) {
        bn_queue_remove(&s->queue, n);
        bn_job *j = (bn_job *)((char *)n - offsetof(bn_job, qn));
        bn_metrics_rejected(s->metrics, "queue_timeout");
        char msg[160];
        snprintf(msg, sizeof msg, "the request waited %.0f s for a worker (queue_timeout); retry later",
                 now - n->enqueued_at);
        job_fail(j, 503, "server_error", "queue_timeout", msg);
        j->worker_done = 1;
        bn_job_release_worker_side(j);
    }
    maybe_finish_drain(s);
}

/* ---- loading: conversion in a helper child, then a generation ---------------------------------- */

static void install_generation(bn_server *s, bn_generation *g);

static void finish_load(bn_server *s, const char *packed)
{
    bn_error err;
    bn_srv_config *cfg = s->pending;
    s->pending = NULL;
    bn_generation *g = generation_load(s, cfg, packed, &err);
    if (!g) {
        bn_log_error("cannot load the model: %s%s", err.msg, s->gen ? " (still serving the old configuration)" : "");
        if (!s->gen) {
            s->exit_code = 1;
            event_base_loopexit(s->base, NULL);
        }
        s->loading = 0;
        return;
    }
    install_generation(s, g);
}


/* The model is an HF directory or a GGUF: a helper child converts it into the cache (the
 * converter runs OpenMP, which the master must never do) and writes back the packed path. */
static int start_load(bn_server *s, bn_srv_config *cfg, bn_error *err)
{
    s->pending = cfg;
    s->loading = 1;
    if (is_packed_file(cfg->model)) {
        finish_load(s, cfg->model);
        return 0;
    }
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) return bn_err(err, "pipe: %s", strerror(errno));
    bn_log_info("model %s is not a packed file: converting it through the cache (a helper process)", cfg->model);
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return bn_err(err, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        close(pfd[0]);
        signal(SIGINT, SIG_IGN);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        bn_error e;
        char *dir = cfg->cache_dir ? strdup(cfg->cache_dir) : bn_default_cache_dir(), *out = NULL;
        mkdir(dir, 0755);
        bn_pack_opts po;
        bn_pack_opts_default(&po);
        int rc = dir ? bn_convert_cached(cfg->model, dir, &po, &out, NULL, &e) : bn_err(&e, "out of memory");
        const char *msg = rc == 0 ? out : e.msg;
        ssize_t w = write(pfd[1], msg, strlen(msg));
        (void)w;
        _exit(rc == 0 ? 0 : 1);
    }
    close(pfd[1]);
    s->converter_pid = pid;
    s->converter_fd = pfd[0];
    return 0;
}

static void on_converter_exit(bn_server *s, int status)
{
    char buf[4096];
    ssize_t n = s->converter_fd >= 0 ? read(s->converter_fd, buf, sizeof buf - 1) : -1;
    buf[n > 0 ? n : 0] = 0;
    if (s->converter_fd >= 0) close(s->converter_fd);
    s->converter_fd = -1;
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0) || n <= 0) {
        bn_log_error("conversion of %s failed: %s", s->pending ? s->pending->model : "?",
                     n > 0 ? buf : "the converter died");
        if (s->pending) bn_config_free(s->pending);
        free(s->pending);
        s->pending = NULL;
        s->loading = 0;
        if (!s->gen) {
            s->exit_code = 1;
            event_base_loopexit(s->base, NULL);
        }
        return;
    }
    bn_log_info("converted model: %s", buf);
    finish_load(s, buf);
}

/* The placement plan, one error-log line per worker. */
static void log_plan(const bn_plan *p)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return;
    bn_plan_log(p, f);
    fclose(f);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) bn_log_info("%s%s", strncmp(line, "placement", 9) ? "placement: " : "", line);
    free(text);
}

/* Makes g current: new slots fork from it; existing workers are replaced one at a time (reload). */
static void install_generation(bn_server *s, bn_generation *g)
{
    bn_generation *old = s->gen;
    s->gen = g;
    s->cfg = g->cfg;
    s->loading = 0;
    s->queue.cap = g->cfg->queue_size;
    bn_metrics_set_max_model_len(s->metrics, g->n_ctx);
    if (s->http) bn_http_apply_limits(s);
    bn_log_set_level(g->cfg->log_level);
    bn_log_info("model %s: n_ctx %u per worker, %u slots per worker (%s; reserved_slots %d, prompt_cache_mb %lu), "
                "chat format %s", g->model_path, g->n_ctx, g->n_slots, g->slots_how, (int)g->cfg->reserved_slots,
                (unsigned long)g->cfg->prompt_cache_mb, bn_chat_kind_name(g->chat));
    log_plan(&g->plan);
    int want = g->plan.n_workers < BN_MAX_WORKERS ? g->plan.n_workers : BN_MAX_WORKERS;
    if (g->plan.n_workers > BN_MAX_WORKERS)
        bn_log_warn("the plan has %d workers: only %d are started", g->plan.n_workers, BN_MAX_WORKERS);
    for (int i = s->n_slots; i < want; i++) {
        bn_slot *sl = &s->slots[i];
        memset(sl, 0, sizeof *sl);
        sl->srv = s;
        sl->index = i;
        sl->fd = -1;
    }
    int first_new = s->n_slots;
    if (want > s->n_slots) s->n_slots = want;
    for (int i = first_new; i < want; i++) slot_spawn(s, &s->slots[i]);
    if (old) {
        for (int i = 0; i < s->n_slots; i++)
            if (s->slots[i].pid && s->slots[i].gen != g) s->slots[i].retire = 1;
        generation_unref(old);
        replace_next(s);
    }
}

/* Replaces one retiring worker at a time (reload): only when no slot is starting, so capacity
 * drops by at most one worker, and only one that holds no job, so no request fails. */
static void replace_next(bn_server *s)
{
    for (int i = 0; i < s->n_slots; i++) {
        const bn_slot *sl = &s->slots[i];
        if (sl->state == BN_W_STARTING || (sl->retire && sl->state == BN_W_DOWN && sl->pid)) return;
    }
    for (int i = 0; i < s->n_slots; i++) {
        bn_slot *sl = &s->slots[i];
        if (!sl->retire || sl->state != BN_W_IDLE || sl->n_jobs) continue;
        bn_log_info("worker %d (pid %ld): replacing it (new configuration)", sl->index, (long)sl->pid);
        slot_close_channel(sl);     /* it exits on EOF; the reaper spawns the new one */
        sl->state = BN_W_DOWN;
        mirror_clear(sl);
        return;
    }
}

/* ---- signals: stop, reload, reopen --------------------------------------------------------- */

static void stop_now(bn_server *s)
{
    for (int i = 0; i < s->n_slots; i++) {
        bn_slot *sl = &s->slots[i];
        if (sl->n_jobs) slot_lost(s, sl, "shutting down");
        slot_close_channel(sl);
    }
    event_base_loopexit(s->base, NULL);
}

static void maybe_finish_drain(bn_server *s)
{
    if (!s->draining || s->n_running > 0 || s->queue.len > 0 || s->n_open_http > 0) return;
    for (int i = 0; i < s->n_slots; i++) slot_close_channel(&s->slots[i]);
    for (int i = 0; i < s->n_slots; i++)
        if (s->slots[i].pid) return;       /* wait for the reaper */
    if (s->converter_pid) return;
    event_base_loopexit(s->base, NULL);
}

static void drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bn_server *s = arg;
    bn_log_warn("shutdown_timeout reached: cancelling %d running and %d queued requests", s->n_running, s->queue.len);
    bn_qnode *n;
    while ((n = bn_queue_pop(&s->queue))) {
        bn_job *j = (bn_job *)((char *)n - offsetof(bn_job, qn));
        job_fail(j, 503, "server_error", "shutting_down", "the server is shutting down");
        j->worker_done = 1;
        bn_job_release_worker_side(j);
    }
    for (int i = 0; i < s->n_slots; i++) {
        if (s->slots[i].pid) kill(s->slots[i].pid, SIGKILL);
        if (s->slots[i].n_jobs) slot_lost(s, &s->slots[i], "shutdown_timeout");
    }
    event_base_loopexit(s->base, NULL);
}

static void begin_drain(bn_server *s)
{
    if (s->draining) {
        bn_log_warn("second stop signal: stopping now");
        stop_now(s);
        return;
    }
    s->draining = 1;
    bn_log_info("stopping: draining %d running and %d queued requests (shutdown_timeout %.0f s)",
                s->n_running, s->queue.len, s->cfg->shutdown_timeout);
    struct timeval tv = {(long)s->cfg->shutdown_timeout, 0};
    event_base_once(s->base, -1, EV_TIMEOUT, drain_timeout_cb, s, &tv);
    if (s->converter_pid) kill(s->converter_pid, SIGKILL);
    maybe_finish_drain(s);
}

static void reload(bn_server *s)
{
    if (s->draining) {
        bn_log_warn("SIGHUP ignored: stopping");
        return;
    }
    if (s->loading) {
        bn_log_warn("SIGHUP ignored: a load is already in progress");
        return;
    }
    bn_error err;
    bn_srv_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg || bn_config_from_cmdline(&s->cl, cfg, &err) != 0) {
        bn_log_error("reload refused, keeping the running configuration: %s", cfg ? err.msg : "out of memory");
        if (cfg) bn_config_free(cfg);
        free(cfg);
        return;
    }
    bn_log_info("SIGHUP: reloading %s", s->cl.config_file ? s->cl.config_file : "(no config file)");
    if (start_load(s, cfg, &err) != 0) bn_log_error("reload failed: %s", err.msg);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    bn_server *s = arg;
    bn_error err;
    switch (sig) {
    case SIGTERM:
    case SIGINT:
        begin_drain(s);
        break;
    case SIGHUP:
        reload(s);
        break;
    case SIGUSR1:
        if (bn_log_reopen(&err) != 0 || (s->alog && bn_access_log_reopen(s->alog, &err) != 0))
            bn_log_error("reopening logs: %s", err.msg);
        else
            bn_log_info("logs reopened");
        break;
    case SIGCHLD:
        reap_children(s);
        break;
    }
}

/* ---- the process: daemon, pid file, privileges ------------------------------------------------ */

static int daemonize(bn_error *err)
{
    pid_t pid = fork();
    if (pid < 0) return bn_err(err, "fork: %s", strerror(errno));
    if (pid > 0) _exit(0);
    if (setsid() < 0) return bn_err(err, "setsid: %s", strerror(errno));
    pid = fork();
    if (pid < 0) return bn_err(err, "fork: %s", strerror(errno));
    if (pid > 0) _exit(0);
    int fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        if (fd > 2) close(fd);
    }
    return 0;
}

static int write_pid_file(const char *path, bn_error *err)
{
    char tmp[4096], buf[32];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return bn_err(err, "pid_file %s: %s", path, strerror(errno));
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    int ok = write(fd, buf, (size_t)n) == n;
    close(fd);
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return bn_err(err, "pid_file %s: %s", path, strerror(errno));
    }
    return 0;
}

static int drop_privileges(const char *user, bn_error *err)
{
    if (!user || !*user) return 0;
    if (geteuid() != 0) {
        bn_log_warn("user = %s ignored: not started as root", user);
        return 0;
    }
    struct passwd *pw = getpwnam(user);
    if (!pw) return bn_err(err, "user: no such user '%s'", user);
    if (initgroups(pw->pw_name, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0)
        return bn_err(err, "user: cannot switch to '%s': %s", user, strerror(errno));
    bn_log_info("running as user %s", user);
    return 0;
}

/* bitnetd -t: the config parses, the model opens (converting it in a child if needed), the plan
 * fits this machine. Never forks workers, never binds. */
static int test_config(bn_server *s, bn_srv_config *cfg)
{
    bn_error err;
    const char *name = s->cl.config_file ? s->cl.config_file : "(command line)";
    char *packed = NULL;
    int rc = 0;
    if (!is_packed_file(cfg->model)) {
        pid_t pid = fork();
        if (pid == 0) {
            char *dir = cfg->cache_dir ? strdup(cfg->cache_dir) : bn_default_cache_dir(), *out = NULL;
            bn_pack_opts po;
            bn_pack_opts_default(&po);
            mkdir(dir, 0755);
            int r = bn_convert_cached(cfg->model, dir, &po, &out, NULL, &err);
            if (r) {
                bn_config_err_at(cfg, "model", &err);
                fprintf(stderr, "bitnetd: %s\n", err.msg);
            }
            _exit(r ? 1 : 0);
        }
        int st = 0;
        if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) rc = -1;
        else {
            char *dir = cfg->cache_dir ? strdup(cfg->cache_dir) : bn_default_cache_dir();
            bn_pack_opts po;
            bn_pack_opts_default(&po);
            rc = bn_convert_cached(cfg->model, dir, &po, &packed, NULL, &err);
            free(dir);
            if (rc) fprintf(stderr, "bitnetd: %s\n", err.msg);
        }
    }
    if (rc == 0) {
        bn_generation *g = generation_load(s, cfg, packed ? packed : cfg->model, &err);
        if (!g) {
            fprintf(stderr, "bitnetd: %s\n", err.msg);
            rc = -1;
        } else {
            bn_plan_log(&g->plan, stderr);
            generation_unref(g);
        }
    } else {
        bn_config_free(cfg);
        free(cfg);
    }
    free(packed);
    if (rc == 0) {
        fprintf(stderr, "bitnetd: the configuration file %s syntax is ok\n", name);
        fprintf(stderr, "bitnetd: configuration file %s test is successful\n", name);
        return 0;
    }
    fprintf(stderr, "bitnetd: configuration file %s test failed\n", name);
    return 1;
}

static int add_signals(bn_server *s)
{
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGCHLD};
    signal(SIGPIPE, SIG_IGN);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        s->ev_sig[i] = evsignal_new(s->base, sigs[i], signal_cb, s);
        if (!s->ev_sig[i] || evsignal_add(s->ev_sig[i], NULL) != 0) return -1;
    }
    return 0;
}

static void server_free(bn_server *s)
{
    for (int i = 0; i < s->n_slots; i++) {
        bn_slot *sl = &s->slots[i];
        slot_close_channel(sl);
        if (sl->respawn) event_free(sl->respawn);
        generation_unref(sl->gen);
        mirror_clear(sl);
        free(sl->cache);
    }
    free(s->slots);
    for (size_t i = 0; i < sizeof s->ev_sig / sizeof s->ev_sig[0]; i++)
        if (s->ev_sig[i]) event_free(s->ev_sig[i]);
    if (s->ev_tick) event_free(s->ev_tick);
    bn_http_free(s);
    generation_unref(s->gen);
    if (s->pending) bn_config_free(s->pending);
    free(s->pending);
    bn_metrics_free(s->metrics);
    bn_access_log_close(s->alog);
    if (s->topo) hwloc_topology_destroy(s->topo);
    if (s->base) event_base_free(s->base);
}

/* Stops the survivors after the loop ends: every worker gets EOF, then SIGKILL if it lingers. */
static void reap_all(bn_server *s)
{
    for (int i = 0; i < s->n_slots; i++) slot_close_channel(&s->slots[i]);
    for (int tries = 0; tries < 50; tries++) {
        int left = 0;
        for (int i = 0; i < s->n_slots; i++) {
            bn_slot *sl = &s->slots[i];
            if (!sl->pid) continue;
            if (waitpid(sl->pid, NULL, WNOHANG) == sl->pid) sl->pid = 0;
            else left++;
        }
        if (!left) return;
        usleep(100000);
    }
    for (int i = 0; i < s->n_slots; i++)
        if (s->slots[i].pid) {
            kill(s->slots[i].pid, SIGKILL);
            waitpid(s->slots[i].pid, NULL, 0);
            s->slots[i].pid = 0;
        }
}

/* Many idle keep-alive clients each hold a descriptor: lift the soft limit to the hard one. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int bn_master_main(int argc, char **argv)
{
    bn_server srv = {0}, *s = &srv;
    bn_error err;
    s->converter_fd = -1;
    if (bn_cmdline_parse(argc, argv, &s->cl, &err) != 0) {
        fprintf(stderr, "bitnetd: %s\n", err.msg);
        bn_cmdline_usage(stderr);
        return 2;
    }
    if (s->cl.help) {
        bn_cmdline_usage(stdout);
        return 0;
    }
    if (s->cl.version) {
        printf("bitnetd %s\n", BN_VERSION);
        return 0;
    }
    if (s->cl.dump_config) {
        bn_config_write_defaults(stdout);
        return 0;
    }
    bn_srv_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg || bn_config_from_cmdline(&s->cl, cfg, &err) != 0) {
        fprintf(stderr, "bitnetd: %s\n", cfg ? err.msg : "out of memory");
        if (s->cl.test_only)
            fprintf(stderr, "bitnetd: configuration file %s test failed\n", s->cl.config_file ? s->cl.config_file : "(command line)");
        if (cfg) bn_config_free(cfg);
        free(cfg);
        return 1;
    }
    s->cfg = cfg;
    if (bn_topology_load(&s->topo, &err) != 0) {
        fprintf(stderr, "bitnetd: %s\n", err.msg);
        return 1;
    }
    if (s->cl.test_only) {
        int rc = test_config(s, cfg);
        hwloc_topology_destroy(s->topo);
        return rc;
    }
    int rc = 1;
    char *pid_file = NULL;
    if (bn_log_open(cfg->error_log, cfg->log_level, &err) != 0) {
        fprintf(stderr, "bitnetd: error_log: %s\n", err.msg);
        goto out;
    }
    bn_log_set_tag("master");
    if (cfg->daemon && daemonize(&err) != 0) goto fail;
    if (cfg->pid_file) {
        if (write_pid_file(cfg->pid_file, &err) != 0) goto fail;
        pid_file = strdup(cfg->pid_file);
    }
    s->alog = bn_access_log_open(cfg->access_log, cfg->access_log_format, &err);
    if (!s->alog && cfg->access_log && strcmp(cfg->access_log, "off")) goto fail;
    raise_fd_limit();
    s->base = event_base_new();
    char *label = cfg->model_name ? strdup(cfg->model_name) : base_name_of(cfg->model);
    s->metrics = bn_metrics_new(label ? label : "bitnet");
    free(label);
    if (!s->base || !s->metrics) {
        bn_err(&err, "out of memory");
        goto fail;
    }
    bn_queue_init(&s->queue, cfg->queue_size);
    s->slots = calloc(BN_MAX_WORKERS, sizeof *s->slots);
    if (!s->slots) {
        bn_err(&err, "out of memory");
        goto fail;
    }
    s->started_at = bn_mono();
    if (add_signals(s) != 0) {
        bn_err(&err, "cannot install signal handlers");
        goto fail;
    }
    if (bn_http_start(s, &err) != 0) goto fail;
    if (drop_privileges(cfg->user, &err) != 0) goto fail;
    s->ev_tick = event_new(s->base, -1, EV_PERSIST, tick_cb, s);
    struct timeval one = {1, 0};
    evtimer_add(s->ev_tick, &one);
    if (start_load(s, cfg, &err) != 0) {
        s->cfg = NULL;
        goto fail;
    }
    cfg = NULL;   /* owned by the load now */
    event_base_dispatch(s->base);
    rc = s->exit_code;
    bn_log_info("stopped");
    goto out;
fail:
    bn_log_error("%s", err.msg);
    if (s->cl.test_only || !s->base) fprintf(stderr, "bitnetd: %s\n", err.msg);
out:
    reap_all(s);
    if (s->pending == cfg) cfg = NULL;
    if (s->cfg == cfg && cfg) {
        bn_config_free(cfg);
        free(cfg);
    }
    if (pid_file) unlink(pid_file);
    free(pid_file);
    server_free(s);
    bn_log_close();
    return rc;
}
