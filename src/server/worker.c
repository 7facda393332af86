/* A worker process (worker.h): one engine, one request at a time, frames in and out over the
 * channel (channel.h, docs/server.md "Master <-> worker protocol").
 *
 * Input is read into one inbox buffer and decoded from there, both when idle (blocking) and
 * between tokens / prefill chunks (poll with a zero timeout), so a CANCEL is seen within one
 * token without the worker ever blocking mid-request. Everything is allocated before HELLO
 * (engine, decoder, a prompt buffer of n_ctx ids) except the per-request stop matcher and the
 * inbox/outbox, which only grow to the largest frame seen. */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/channel.h"
#include "server/log.h"
#include "server/worker.h"

#define INBOX_READ 65536   /* bytes asked of each read */

typedef struct worker {
    int fd;
    bn_engine *e;
    uint32_t n_vocab, n_ctx;
    bn_stream_decoder *sd;
    bn_buf in;             /* bytes from the master; frames are decoded from in_off on */
    size_t in_off;
    bn_buf out;            /* the frame being sent */
    bn_buf tail;           /* the text released at the end of a request */
    int32_t *prompt;       /* n_ctx ids: the running request's prompt, copied out of the inbox */
    int gone;              /* the channel ended (EOF, error, corrupt): stop and exit */
    int status;            /* exit status once gone: 0 for EOF, 1 for an error */
    int pending_reset;     /* a RESET came while busy: applied after the request */

    /* the running request */
    int cancel, nan, failed;
    uint64_t id;
    bn_stop_matcher *sm;
    int stop_index;
    bn_error ferr;         /* what failed (decoder, matcher) */
} worker;

/* ---- output ---------------------------------------------------------------------------- */

/* Sends w->out and empties it. A failed write means the master is gone. */
static int flush_out(worker *w)
{
    bn_error err;
    int rc = w->gone ? -1 : bn_chan_write_all(w->fd, &w->out, &err);
    w->out.len = 0;
    if (rc) w->gone = 1;
    return rc;
}

static int send_frame(worker *w, uint16_t type, uint64_t id, const void *payload, size_t len)
{
    if (bn_frame_put(&w->out, type, id, payload, len)) return -1;
    return flush_out(w);
}

static int send_error(worker *w, uint64_t id, uint32_t code, const char *msg)
{
    if (bn_frame_put_error(&w->out, id, code, msg)) return -1;
    return flush_out(w);
}

static int send_chunk(worker *w, const int32_t *ids, uint32_t n, const char *text, size_t len)
{
    if (bn_frame_put_chunk(&w->out, w->id, ids, n, text, (uint32_t)len)) {
        w->failed = 1;
        return bn_err(&w->ferr, "cannot frame a chunk of %zu text bytes", len);
    }
    return flush_out(w);
}

/* ---- input ----------------------------------------------------------------------------- */

/* Reads what the channel has into the inbox (waiting for it if block). Returns 1 if bytes came,
 * 0 if none were ready, -1 if the channel ended (w->gone set). */
static int inbox_fill(worker *w, int block)
{
    bn_buf *b = &w->in;
    if (w->in_off > 0) {   /* frames before in_off were handled: their bytes can go */
        memmove(b->p, b->p + w->in_off, b->len - w->in_off);
        b->len -= w->in_off;
        w->in_off = 0;
    }
    if (b->cap - b->len < INBOX_READ) {
        size_t cap = b->cap * 2 > b->len + INBOX_READ ? b->cap * 2 : b->len + INBOX_READ;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            w->gone = 1;
            w->status = 1;
            return -1;
        }
        b->p = p;
        b->cap = cap;
    }
    for (;;) {
        ssize_t r = recv(w->fd, b->p + b->len, b->cap - b->len, block ? 0 : MSG_DONTWAIT);
        if (r > 0) {
            b->len += (size_t)r;
            return 1;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && !block && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        w->gone = 1;
        w->status = r == 0 || errno == ECONNRESET ? 0 : 1;
        return -1;
    }
}

/* The next whole frame in the inbox: 1 (f points into the inbox until the next fill), 0 if
 * none is complete, -1 if the bytes are not a frame (the stream cannot be resynchronised). */
static int inbox_next(worker *w, bn_frame *f)
{
    bn_error err;
    if (w->in.len == w->in_off) return 0;
    long r = bn_frame_decode(w->in.p + w->in_off, w->in.len - w->in_off, f, &err);
    if (r > 0) {
        w->in_off += (size_t)r;
        return 1;
    }
    if (r < 0) {
        send_error(w, 0, BN_FRERR_BAD_REQUEST, err.msg);
        w->gone = 1;
        w->status = 1;
        return -1;
    }
    return 0;
}

/* A frame that came while a request runs: only CANCEL (and a deferred RESET) make sense. */
static void handle_busy(worker *w, const bn_frame *f)
{
    switch (f->type) {
    case BN_FR_CANCEL:
        if (f->id == w->id) w->cancel = 1;   /* another id: a request already finished */
        break;
    case BN_FR_RESET:
        w->pending_reset = 1;
        break;
    case BN_FR_GENERATE:
        send_error(w, f->id, BN_FRERR_BAD_REQUEST, "GENERATE while a request is running");
        break;
    default:
        send_error(w, f->id, BN_FRERR_BAD_REQUEST, "unexpected frame type for a worker");
        break;
    }
}

/* Between tokens and prefill chunks: takes in whatever frames have arrived, never blocking.
 * Returns non-zero if the request must end (cancelled, or the master is gone). */
static int check_channel(worker *w)
{
    struct pollfd pfd = {.fd = w->fd, .events = POLLIN};
    bn_frame f;
    do {   /* frames already buffered first (they may have come with the GENERATE) */
        while (!w->gone && inbox_next(w, &f) > 0) handle_busy(w, &f);
    } while (!w->gone && poll(&pfd, 1, 0) > 0 && inbox_fill(w, 0) > 0);
    return w->cancel || w->gone;
}

/* ---- one request ----------------------------------------------------------------------- */

static int logits_finite(worker *w)
{
    const float *l = bn_engine_logits(w->e);
    for (uint32_t i = 0; i < w->n_vocab; i++)
        if (!isfinite(l[i])) return 0;
    return 1;
}

static int on_token(int32_t id, void *user)
{
    worker *w = user;
    const char *t, *out;
    size_t n, on;
    if (!logits_finite(w)) {
        w->nan = 1;
        return BN_GEN_CANCEL;
    }
    if (bn_stream_decoder_feed(w->sd, id, &t, &n, &w->ferr)) {
        w->failed = 1;
        return BN_GEN_CANCEL;
    }
    int r = bn_stop_matcher_feed(w->sm, t, n, &out, &on);
    if (r == -2) {
        w->failed = 1;
        bn_err(&w->ferr, "out of memory in the stop matcher");
        return BN_GEN_CANCEL;
    }
    /* Every token gets a CHUNK, even one that releases no text: the master counts tokens. */
    if (send_chunk(w, &id, 1, out, on)) return BN_GEN_CANCEL;
    if (r >= 0) {
        w->stop_index = r;
        return BN_GEN_STOP;
    }
    return check_channel(w) ? BN_GEN_CANCEL : BN_GEN_CONTINUE;
}

static int on_prefill(uint32_t done, uint32_t total, void *user)
{
    worker *w = user;
    bn_fr_progress p = {done, total};
    if (send_frame(w, BN_FR_PROGRESS, w->id, &p, sizeof p)) return 1;
    return check_channel(w);
}

/* The request's semantic checks (the frame's structure is checked by the view). */
static int check_request(worker *w, const bn_generate_view *v, uint32_t *code, bn_error *err)
{
    const bn_sampling *s = &v->g.sampling;
    *code = BN_FRERR_BAD_REQUEST;
    if (v->g.n_prompt == 0) return bn_err(err, "empty prompt");
    if (v->g.n_prompt > w->n_ctx) {
        *code = BN_FRERR_CONTEXT;
        return bn_err(err, "the prompt has %u tokens, more than the worker's context (%u)",
                      v->g.n_prompt, w->n_ctx);
    }
    for (uint32_t i = 0; i < v->g.n_prompt; i++) {
        int32_t id;
        memcpy(&id, v->ids + i, sizeof id);
        if (id < 0 || (uint32_t)id >= w->n_vocab)
            return bn_err(err, "prompt token %u: id %d out of range (n_vocab %u)", i, id, w->n_vocab);
    }
    const float f[] = {s->temperature, s->top_p, s->min_p, s->repeat_penalty,
                       s->presence_penalty, s->frequency_penalty};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++)
        if (!isfinite(f[i])) return bn_err(err, "a sampling parameter is not a finite number");
    if (s->temperature < 0 || s->top_k < 0) return bn_err(err, "negative temperature or top_k");
    return 0;
}

/* The stop matcher wants NUL-terminated strings; the frame's are not. */
static bn_stop_matcher *make_matcher(const bn_generate_view *v, bn_error *err)
{
    size_t total = 0;
    for (uint32_t i = 0; i < v->g.n_stop; i++) total += v->stop_len[i] + 1;
    char *buf = malloc(total ? total : 1);
    const char *stops[16];
    if (!buf) {
        bn_err(err, "out of memory for the stop strings");
        return NULL;
    }
    char *p = buf;
    for (uint32_t i = 0; i < v->g.n_stop; i++) {
        memcpy(p, v->stops[i], v->stop_len[i]);
        p[v->stop_len[i]] = 0;
        stops[i] = p;
        p += v->stop_len[i] + 1;
    }
    bn_stop_matcher *sm = bn_stop_matcher_new(stops, v->g.n_stop, err);
    free(buf);
    return sm;
}

/* End of a request: resets the decoder and, unless a stop string already ended it, releases
 * what the decoder and the matcher hold back (a stop string may still match in it) as one last
 * CHUNK of no tokens. */
static int send_tail(worker *w, bn_gen_result *res)
{
    const char *t, *out;
    size_t n, on;
    bn_stream_decoder_flush(w->sd, &t, &n);
    if (w->stop_index >= 0) return 0;   /* the matcher already discarded the rest */
    w->tail.len = 0;
    int r = bn_stop_matcher_feed(w->sm, t, n, &out, &on);
    if (r == -2) return bn_err(&w->ferr, "out of memory in the stop matcher");
    if (bn_buf_append(&w->tail, out, on)) return bn_err(&w->ferr, "out of memory");
    if (r >= 0) {
        w->stop_index = r;
        if (res->finish != BN_FINISH_CANCELLED) res->finish = BN_FINISH_STOP;
    } else {
        bn_stop_matcher_flush(w->sm, &out, &on);
        if (bn_buf_append(&w->tail, out, on)) return bn_err(&w->ferr, "out of memory");
    }
    if (w->tail.len == 0) return 0;
    return send_chunk(w, NULL, 0, (const char *)w->tail.p, w->tail.len);
}

static void send_done(worker *w, const bn_gen_result *res)
{
    bn_fr_done d;
    memset(&d, 0, sizeof d);
    d.finish = (uint32_t)res->finish;
    d.n_prompt = res->n_prompt;
    d.n_cached = res->n_cached;
    d.n_completion = res->n_completion;
    d.n_past = bn_engine_n_past(w->e);
    d.stop_id = res->stop_id;
    d.stop_index = w->stop_index;
    d.prefill_s = res->prefill_s;
    d.decode_s = res->decode_s;
    send_frame(w, BN_FR_DONE, w->id, &d, sizeof d);
}

static void run_request(worker *w, const bn_frame *f)
{
    bn_generate_view v;
    bn_error err;
    uint32_t code = BN_FRERR_BAD_REQUEST;
    if (bn_frame_get_generate(f, &v, &err) || check_request(w, &v, &code, &err)) {
        send_error(w, f->id, code, err.msg);
        return;
    }
    /* Copied out now: the inbox moves when it is refilled between tokens. */
    memcpy(w->prompt, v.ids, (size_t)v.g.n_prompt * sizeof(int32_t));
    if (!(w->sm = make_matcher(&v, &err))) {
        send_error(w, f->id, BN_FRERR_INTERNAL, err.msg);
        return;
    }
    const char *t;
    size_t n;
    bn_stream_decoder_flush(w->sd, &t, &n);   /* a fresh decoder: an aborted request may leave bytes */
    w->id = f->id;
    w->cancel = w->nan = w->failed = 0;
    w->stop_index = -1;
    bn_gen_opts o = {.max_tokens = v.g.max_tokens, .ignore_eos = !!(v.g.flags & BN_GENF_IGNORE_EOS),
                     .on_token = on_token, .on_prefill = on_prefill, .user = w};
    bn_gen_result res;
    int rc = bn_generate_opts(w->e, w->prompt, v.g.n_prompt, &v.g.sampling, &o, &res, &err);
    if (w->gone) {
        /* the master is gone: nobody to answer */
    } else if (rc) {
        send_error(w, w->id, BN_FRERR_INTERNAL, err.msg);
        bn_engine_reset(w->e);
    } else if (w->nan) {
        send_error(w, w->id, BN_FRERR_NAN, "the model produced non-finite logits (NaN/Inf)");
        bn_engine_reset(w->e);
    } else if (w->failed || send_tail(w, &res)) {
        if (!w->gone) send_error(w, w->id, BN_FRERR_INTERNAL, w->ferr.msg);
    } else {
        send_done(w, &res);
    }
    bn_stop_matcher_free(w->sm);
    w->sm = NULL;
    if (w->pending_reset) bn_engine_reset(w->e);
    w->pending_reset = 0;
}

/* ---- the process ----------------------------------------------------------------------- */

static void handle_idle(worker *w, const bn_frame *f)
{
    switch (f->type) {
    case BN_FR_GENERATE:
        run_request(w, f);
        break;
    case BN_FR_RESET:
        bn_engine_reset(w->e);
        break;
    case BN_FR_CANCEL:
        break;   /* for a request that already finished */
    default:
        send_error(w, f->id, BN_FRERR_BAD_REQUEST, "unexpected frame type for a worker");
        break;
    }
}

static int setup(worker *w, const bn_worker_spec *spec, bn_error *err)
{
    bn_engine_opts eo = spec->eopts;
    if (!spec->model || !spec->tok) return bn_err(err, "worker %d: no model or tokenizer", spec->index);
    if (spec->place && spec->topo) {
        int b = bn_place_bind_self(spec->topo, spec->place, err);
        if (b < 0) return bn_err_prefix(err, "worker %d", spec->index);
        if (b > 0) bn_log_warn("%s", err->msg);
        eo.cpus = spec->place->cpus;
        eo.n_cpus = spec->place->n_threads;
    }
    /* PROGRESS (and CANCEL checks) come between engine batches, so the batch is the chunk. */
    eo.batch = spec->prefill_chunk ? spec->prefill_chunk : eo.batch ? eo.batch : 64;
    if (bn_engine_create(spec->model, &eo, &w->e, err)) return bn_err_prefix(err, "worker %d", spec->index);
    w->n_vocab = bn_engine_model(w->e)->cfg.n_vocab;
    w->n_ctx = bn_engine_n_ctx(w->e);
    w->sd = bn_stream_decoder_new(spec->tok, BN_DECODE_SKIP_CONTROL);
    w->prompt = malloc((size_t)w->n_ctx * sizeof(int32_t));
    if (!w->sd || !w->prompt) return bn_err(err, "worker %d: out of memory", spec->index);
    return 0;
}

static void teardown(worker *w)
{
    bn_stop_matcher_free(w->sm);
    bn_stream_decoder_free(w->sd);
    bn_engine_free(w->e);
    free(w->prompt);
    bn_buf_free(&w->in);
    bn_buf_free(&w->out);
    bn_buf_free(&w->tail);
}

static void send_hello(worker *w)
{
    bn_engine_mem mem;
    bn_engine_memory(w->e, &mem);
    bn_fr_hello h;
    memset(&h, 0, sizeof h);
    h.pid = (int32_t)getpid();
    h.n_ctx = w->n_ctx;
    h.n_threads = bn_engine_threads(w->e);
    h.kv_bytes = mem.kv;
    h.scratch_bytes = mem.scratch;
    send_frame(w, BN_FR_HELLO, 0, &h, sizeof h);
}

int bn_worker_main(const bn_worker_spec *spec)
{
    worker w;
    memset(&w, 0, sizeof w);
    w.fd = spec->fd;
    bn_error err = {{0}};
    if (setup(&w, spec, &err)) {
        send_error(&w, 0, BN_FRERR_INTERNAL, err.msg);
        teardown(&w);
        return 1;
    }
    send_hello(&w);
    while (!w.gone) {
        bn_frame f;
        int r = inbox_next(&w, &f);
        if (r > 0) handle_idle(&w, &f);
        else if (r == 0) inbox_fill(&w, 1);
    }
    teardown(&w);
    return w.status;
}
