/* A worker process (worker.h): one engine with n_slots sequences, up to n_slots requests decoded
 * together, frames in and out over the channel (channel.h, docs/server.md "Master <-> worker
 * protocol").
 *
 * The loop: take in frames (blocking only when no request is active), sample one token for
 * every slot whose logits are fresh (a CHUNK each), take in frames again, then run one step:
 * one bn_engine_eval_batch over every decoding slot's next token plus at most prefill_chunk
 * prompt tokens of joining requests, oldest first (a PROGRESS each). So a join delays the
 * others by at most one such step, and a CANCEL is seen within one step.
 *
 * Exactness: each slot has its own engine sequence, sampler, stream decoder and stop matcher,
 * and the engine's batch is bit-identical per sequence, so a request's output does not depend
 * on what runs beside it. With one slot and no prompt cache this is the single-request loop of
 * bn_generate_opts, frame for frame.
 *
 * The prompt cache (prompt_cache.h): when a request ends, its sequence's tokens and K/V are
 * saved (CACHE frames tell the master); a new request takes the longest prefix of its prompt
 * from an idle sequence or, when longer, from the RAM cache (copied into the least recently
 * used free sequence).
 *
 * Memory: everything is allocated before HELLO (engine, per-slot samplers, decoders and prompt
 * buffers, the batch) except the per-request stop matcher, the prompt cache's entries and the
 * inbox/outbox, which only grow to the largest frame seen. */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/channel.h"
#include "server/log.h"
#include "server/prompt_cache.h"
#include "server/worker.h"

#define INBOX_READ 65536     /* bytes asked of each read */
#define MIN_CACHED_IDS 16    /* shorter states are not worth an entry */

typedef struct slot {
    int active;              /* holds a request */
    int decoding;            /* its prompt is in the cache, the sampler started */
    int fresh;               /* logits for its next token are in `logits` (last step's row) */
    int has_next;            /* `next` is sampled and waits to be evaluated */
    int reset_after;         /* a RESET came while it ran: forget its KV when it ends */
    uint64_t id;
    uint64_t joined;         /* worker clock at GENERATE: the oldest prefills first */
    uint64_t released;       /* worker clock when it last finished: LRU among free slots */
    int32_t *prompt;         /* n_ctx ids (swapped with the worker's spare at GENERATE) */
    uint32_t n_prompt, pos;  /* pos: prompt tokens in the sequence's cache */
    uint32_t max_tokens;
    int ignore_eos;
    int32_t next;
    int stop_index;
    float *logits;
    bn_sampler *sampler;
    bn_stream_decoder *sd;
    bn_stop_matcher *sm;
    bn_gen_result res;       /* counts, finish, stop_id and times, as bn_generate_opts fills it */
    double t_join, t_decode;
} slot;

typedef struct worker {
    int fd;
    bn_engine *e;
    uint32_t n_vocab, n_ctx, n_slots, chunk;
    int32_t eos, eot;
    slot *slots;             /* slot i decodes in engine sequence i */
    uint32_t n_active;
    uint64_t clock;
    bn_batch_tok *batch;     /* chunk + n_slots - 1 tokens: the most one step holds */
    uint32_t *take;          /* per slot: prompt tokens it has in the step being built */
    int32_t *spare;          /* n_ctx ids: a GENERATE's prompt, copied out of the inbox */
    float *logits;           /* n_slots rows of n_vocab: at most one row per slot per step */
    bn_pcache *pc;           /* NULL: no prompt cache */
    bn_buf in;               /* bytes from the master; frames are decoded from in_off on */
    size_t in_off;
    bn_buf out;              /* frames not yet sent: flushed before every wait for input */
    bn_buf tail;             /* the text released at the end of a request */
    int gone;                /* the channel ended (EOF, error, corrupt): stop and exit */
    int status;              /* exit status once gone: 0 for EOF, 1 for an error */
} worker;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- output ---------------------------------------------------------------------------- */

/* Sends w->out and empties it. A failed write means the master is gone. */
static int flush_out(worker *w)
{
    bn_error err;
    int rc = 0;
    if (w->out.len) rc = w->gone ? -1 : bn_chan_write_all(w->fd, &w->out, &err);
    w->out.len = 0;
    if (rc) w->gone = 1;
    return rc;
}

/* The senders queue a frame (out of memory is a lost channel: the master will time us out). */
static void queued(worker *w, int rc)
{
    if (rc) {
        w->gone = 1;
        w->status = 1;
    }
}

static void send_frame(worker *w, uint16_t type, uint64_t id, const void *payload, size_t len)
{
    queued(w, bn_frame_put(&w->out, type, id, payload, len));
}

static void send_error(worker *w, uint64_t id, uint32_t code, const char *msg)
{
    queued(w, bn_frame_put_error(&w->out, id, code, msg));
}

static void on_cache_event(void *user, uint32_t op, uint64_t entry, const int32_t *ids, uint32_t n)
{
    worker *w = user;
    queued(w, bn_frame_put_cache(&w->out, op, entry, ids, n));
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
        flush_out(w);
        w->gone = 1;
        w->status = 1;
        return -1;
    }
    return 0;
}

/* ---- ending a request ------------------------------------------------------------------ */

typedef struct save_ctx {
    bn_engine *e;
    uint32_t seq, n;
} save_ctx;

static int fill_state(void *buf, size_t bytes, void *user)
{
    const save_ctx *c = user;
    bn_error err;
    (void)bytes;
    return bn_engine_seq_save(c->e, c->seq, c->n, buf, &err);
}

/* A finished request's tokens and K/V into the RAM cache (its CACHE frames go before its
 * DONE, so the master's mirror is current when it next dispatches to this worker). */
static void save(worker *w, slot *s)
{
    uint32_t seq = (uint32_t)(s - w->slots);
    if (!w->pc || s->reset_after) return;
    save_ctx c = {w->e, seq, bn_engine_seq_n_past(w->e, seq)};
    if (bn_pcache_put(w->pc, bn_engine_seq_cached_ids(w->e, seq), c.n,
                      bn_engine_seq_state_bytes(w->e, c.n), fill_state, &c) < 0)
        bn_log_warn("prompt cache: cannot store %u tokens (out of memory)", c.n);
}

/* The slot is free again. Its sequence keeps its K/V for the next prompt sharing the prefix,
 * unless a RESET came meanwhile or kv_valid is 0. */
static void release(worker *w, slot *s, int kv_valid)
{
    uint32_t seq = (uint32_t)(s - w->slots);
    if (!kv_valid || s->reset_after) bn_engine_seq_reset(w->e, seq);
    bn_stop_matcher_free(s->sm);
    s->sm = NULL;
    s->active = s->decoding = s->fresh = s->has_next = s->reset_after = 0;
    s->released = ++w->clock;
    w->n_active--;
}

static void fail(worker *w, slot *s, uint32_t code, const char *msg, int kv_valid)
{
    send_error(w, s->id, code, msg);
    release(w, s, kv_valid);
}

static int send_chunk(worker *w, slot *s, const int32_t *ids, uint32_t n, const char *text, size_t len)
{
    return bn_frame_put_chunk(&w->out, s->id, ids, n, text, (uint32_t)len);
}

/* Releases what the decoder and the matcher hold back (a stop string may still match in it)
 * as one last CHUNK of no tokens, unless a stop string already ended the request. */
static int send_tail(worker *w, slot *s, bn_error *err)
{
    const char *t, *out;
    size_t n, on;
    bn_stream_decoder_flush(s->sd, &t, &n);
    if (s->stop_index >= 0) return 0;   /* the matcher already discarded the rest */
    w->tail.len = 0;
    int r = bn_stop_matcher_feed(s->sm, t, n, &out, &on);
    if (r == -2) return bn_err(err, "out of memory in the stop matcher");
    if (bn_buf_append(&w->tail, out, on)) return bn_err(err, "out of memory");
    if (r >= 0) {
        s->stop_index = r;
        if (s->res.finish != BN_FINISH_CANCELLED) s->res.finish = BN_FINISH_STOP;
    } else {
        bn_stop_matcher_flush(s->sm, &out, &on);
        if (bn_buf_append(&w->tail, out, on)) return bn_err(err, "out of memory");
    }
    if (w->tail.len == 0) return 0;
    if (send_chunk(w, s, NULL, 0, (const char *)w->tail.p, w->tail.len))
        return bn_err(err, "cannot frame a chunk of %zu text bytes", w->tail.len);
    return 0;
}

/* The request ends with `finish`: the tail CHUNK, DONE, and the slot is free. */
static void finish(worker *w, slot *s, enum bn_finish fin)
{
    bn_error err;
    double t = now_s();
    s->res.finish = fin;
    if (s->decoding) s->res.decode_s = t - s->t_decode;
    else s->res.prefill_s = t - s->t_join;
    if (send_tail(w, s, &err)) {
        fail(w, s, BN_FRERR_INTERNAL, err.msg, 1);
        return;
    }
    uint32_t seq = (uint32_t)(s - w->slots);
    bn_fr_done d;
    memset(&d, 0, sizeof d);
    d.finish = (uint32_t)s->res.finish;
    d.n_prompt = s->res.n_prompt;
    d.n_cached = s->res.n_cached;
    d.n_completion = s->res.n_completion;
    d.n_past = bn_engine_seq_n_past(w->e, seq);
    d.stop_id = s->res.stop_id;
    d.stop_index = s->stop_index;
    d.prefill_s = s->res.prefill_s;
    d.decode_s = s->res.decode_s;
    save(w, s);
    send_frame(w, BN_FR_DONE, s->id, &d, sizeof d);
    release(w, s, 1);
}

/* ---- a new request --------------------------------------------------------------------- */

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

static uint32_t common_prefix(const int32_t *a, uint32_t na, const int32_t *b, uint32_t nb)
{
    uint32_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* Whether free slot a is a better one to overwrite than b: an empty sequence first, then the
 * least recently released. */
static int colder(const worker *w, const slot *a, const slot *b)
{
    int ea = bn_engine_seq_n_past(w->e, (uint32_t)(a - w->slots)) == 0;
    int eb = bn_engine_seq_n_past(w->e, (uint32_t)(b - w->slots)) == 0;
    return ea != eb ? ea : a->released < b->released;
}

/* Puts the longest available prefix of the prompt into a free slot's sequence (never all of
 * it: the last token is run for its logits) and returns that slot. In order of preference:
 *  - a sequence whose whole content starts the prompt (a conversation's next turn: nothing is
 *    lost), unless the RAM cache holds more;
 *  - the RAM cache's longest prefix, copied into the victim (an empty free sequence, else the
 *    least recently used one; what it held was saved when its request ended), also when a
 *    sequence shares as much but would lose the rest of its content;
 *  - a sequence sharing at least MIN_CACHED_IDS tokens (a common system prompt) or all of the
 *    prompt (a retry), giving up the rest of what it holds;
 *  - the victim, keeping what it shares.
 * With one slot and no RAM cache every case is sequence 0's own longest prefix. */
static slot *place(worker *w, const int32_t *prompt, uint32_t n, uint32_t *kept)
{
    slot *victim = NULL, *cont = NULL, *part = NULL;
    uint32_t k_cont = 0, k_part = 0;
    for (uint32_t i = 0; i < w->n_slots; i++) {
        slot *s = &w->slots[i];
        if (s->active) continue;
        uint32_t past = bn_engine_seq_n_past(w->e, i);
        uint32_t k = common_prefix(bn_engine_seq_cached_ids(w->e, i), past, prompt, n);
        int whole = k == past;
        if (k >= n) k = n - 1;
        if (!victim || colder(w, s, victim)) victim = s;
        if (whole && k > 0 && (!cont || k > k_cont)) {
            cont = s;
            k_cont = k;
        }
        if (!part || k > k_part) {
            part = s;
            k_part = k;
        }
    }
    if (!victim) return NULL;
    uint32_t m = 0;
    const bn_pcache_entry *ce = w->pc ? bn_pcache_lookup(w->pc, prompt, n, &m) : NULL;
    if (m >= n) m = n - 1;
    slot *s = victim;
    if (cont && k_cont >= m && k_cont >= k_part) {
        s = cont;
    } else if (ce && m > 0 && (m > k_part || (m == k_part && victim != part))) {
        bn_error err;
        uint32_t seq = (uint32_t)(victim - w->slots);
        if (bn_engine_seq_load(w->e, seq, prompt, m, ce->state, ce->n_ids, &err) == 0) {
            bn_pcache_touch(w->pc, ce);
            *kept = m;
            return victim;
        }
        bn_log_warn("prompt cache: %s", err.msg);   /* nothing was loaded: recompute */
    } else if (k_part >= MIN_CACHED_IDS || (k_part > 0 && k_part == n - 1)) {
        s = part;
    }
    *kept = bn_engine_seq_keep_prefix(w->e, (uint32_t)(s - w->slots), prompt, n);
    return s;
}

static slot *find_active(worker *w, uint64_t id)
{
    for (uint32_t i = 0; i < w->n_slots; i++)
        if (w->slots[i].active && w->slots[i].id == id) return &w->slots[i];
    return NULL;
}

static void start_request(worker *w, const bn_frame *f)
{
    bn_generate_view v;
    bn_error err;
    uint32_t code = BN_FRERR_BAD_REQUEST;
    if (w->n_active == w->n_slots) {
        char msg[96];
        snprintf(msg, sizeof msg, "GENERATE while all %u slots are busy", w->n_slots);
        send_error(w, f->id, BN_FRERR_BAD_REQUEST, msg);
        return;
    }
    if (find_active(w, f->id)) {
        send_error(w, f->id, BN_FRERR_BAD_REQUEST, "GENERATE with the id of a running request");
        return;
    }
    if (bn_frame_get_generate(f, &v, &err) || check_request(w, &v, &code, &err)) {
        send_error(w, f->id, code, err.msg);
        return;
    }
    bn_stop_matcher *sm = make_matcher(&v, &err);
    if (!sm) {
        send_error(w, f->id, BN_FRERR_INTERNAL, err.msg);
        return;
    }
    /* Copied out first (aligned, and the inbox moves when it is refilled), then the buffer
     * becomes the slot's and the slot's old one the spare. */
    memcpy(w->spare, v.ids, (size_t)v.g.n_prompt * sizeof(int32_t));
    uint32_t kept = 0;
    slot *s = place(w, w->spare, v.g.n_prompt, &kept);
    int32_t *p = s->prompt;
    s->prompt = w->spare;
    w->spare = p;
    const char *t;
    size_t tn;
    bn_stream_decoder_flush(s->sd, &t, &tn);   /* a fresh decoder: an aborted request may leave bytes */
    bn_sampler_start(s->sampler, &v.g.sampling, s->prompt, v.g.n_prompt);
    /* exact sampling through the screened head: rescore what can carry probability */
    bn_engine_set_lm_sampling(w->e, (uint32_t)(s - w->slots), &v.g.sampling);
    s->sm = sm;
    s->active = 1;
    s->decoding = s->fresh = s->has_next = s->reset_after = 0;
    s->id = f->id;
    s->joined = ++w->clock;
    s->n_prompt = v.g.n_prompt;
    s->pos = kept;
    s->max_tokens = v.g.max_tokens;
    s->ignore_eos = !!(v.g.flags & BN_GENF_IGNORE_EOS);
    s->stop_index = -1;
    memset(&s->res, 0, sizeof s->res);
    s->res.n_prompt = v.g.n_prompt;
    s->res.n_cached = kept;
    s->res.stop_id = -1;
    s->t_join = now_s();
    w->n_active++;
}

/* ---- frames ---------------------------------------------------------------------------- */

static void reset_all(worker *w)
{
    for (uint32_t i = 0; i < w->n_slots; i++) {
        if (w->slots[i].active) w->slots[i].reset_after = 1;   /* applied when it ends */
        else bn_engine_seq_reset(w->e, i);
    }
    if (w->pc) bn_pcache_clear(w->pc);
}

static void handle(worker *w, const bn_frame *f)
{
    slot *s;
    switch (f->type) {
    case BN_FR_GENERATE:
        start_request(w, f);
        break;
    case BN_FR_CANCEL:   /* an id not running: a request that already finished */
        if ((s = find_active(w, f->id))) finish(w, s, BN_FINISH_CANCELLED);
        break;
    case BN_FR_RESET:
        reset_all(w);
        break;
    default:
        send_error(w, f->id, BN_FRERR_BAD_REQUEST, "unexpected frame type for a worker");
        break;
    }
}

/* Sends what is queued, then takes in every frame that has arrived; waits for one only if
 * block (no request is active). */
static void take_frames(worker *w, int block)
{
    struct pollfd pfd = {.fd = w->fd, .events = POLLIN};
    bn_frame f;
    flush_out(w);
    for (;;) {
        int r;
        while (!w->gone && (r = inbox_next(w, &f)) > 0) handle(w, &f);
        flush_out(w);
        if (w->gone) return;
        if (block && w->n_active == 0) {
            inbox_fill(w, 1);
            continue;
        }
        if (poll(&pfd, 1, 0) <= 0 || inbox_fill(w, 0) <= 0) return;
    }
}

/* ---- decoding -------------------------------------------------------------------------- */

static int logits_finite(const worker *w, const float *l)
{
    for (uint32_t i = 0; i < w->n_vocab; i++)
        if (!isfinite(l[i])) return 0;
    return 1;
}

/* One token for a slot whose logits are fresh: the body of bn_generate_opts' decode loop. */
static void token_step(worker *w, slot *s)
{
    bn_error err;
    uint32_t seq = (uint32_t)(s - w->slots);
    s->fresh = 0;
    if (s->res.n_completion >= s->max_tokens) {   /* max_tokens 0: the prefill was all */
        finish(w, s, BN_FINISH_LENGTH);
        return;
    }
    int32_t id = bn_sampler_sample(s->sampler, s->logits);
    if (!s->ignore_eos && ((w->eos >= 0 && id == w->eos) || (w->eot >= 0 && id == w->eot))) {
        s->res.stop_id = id;
        finish(w, s, BN_FINISH_STOP);
        return;
    }
    bn_sampler_accept(s->sampler, id);
    s->res.n_completion++;
    if (!logits_finite(w, s->logits)) {
        fail(w, s, BN_FRERR_NAN, "the model produced non-finite logits (NaN/Inf)", 0);
        return;
    }
    const char *t, *out;
    size_t n, on;
    if (bn_stream_decoder_feed(s->sd, id, &t, &n, &err)) {
        fail(w, s, BN_FRERR_INTERNAL, err.msg, 1);
        return;
    }
    int r = bn_stop_matcher_feed(s->sm, t, n, &out, &on);
    if (r == -2) {
        fail(w, s, BN_FRERR_INTERNAL, "out of memory in the stop matcher", 1);
        return;
    }
    /* Every token gets a CHUNK, even one that releases no text: the master counts tokens. */
    if (send_chunk(w, s, &id, 1, out, on)) {
        snprintf(err.msg, sizeof err.msg, "cannot frame a chunk of %zu text bytes", on);
        fail(w, s, BN_FRERR_INTERNAL, err.msg, 1);
        return;
    }
    if (r >= 0) {
        s->stop_index = r;
        finish(w, s, BN_FINISH_STOP);
        return;
    }
    /* The token just sampled is only run through the model if another one is wanted. */
    if (s->res.n_completion >= s->max_tokens || bn_engine_seq_n_past(w->e, seq) >= w->n_ctx) {
        finish(w, s, BN_FINISH_LENGTH);
        return;
    }
    s->next = id;
    s->has_next = 1;
}

/* Samples every slot with fresh logits; returns how many. */
static int take_tokens(worker *w)
{
    int n = 0;
    for (uint32_t i = 0; i < w->n_slots && !w->gone; i++)
        if (w->slots[i].active && w->slots[i].fresh) {
            token_step(w, &w->slots[i]);
            n++;
        }
    return n;
}

/* The joining slot that came first and still has prompt tokens not in this step, or NULL. */
static slot *oldest_prefill(worker *w)
{
    slot *best = NULL;
    for (uint32_t i = 0; i < w->n_slots; i++) {
        slot *s = &w->slots[i];
        if (s->active && !s->decoding && w->take[i] == 0 && s->pos < s->n_prompt &&
            (!best || s->joined < best->joined))
            best = s;
    }
    return best;
}

/* A step: every decoding slot's next token, then up to chunk prompt tokens, in one batch. */
static void step(worker *w)
{
    uint32_t n = 0, budget = w->chunk;
    bn_error err;
    memset(w->take, 0, w->n_slots * sizeof *w->take);
    for (uint32_t i = 0; i < w->n_slots; i++) {
        slot *s = &w->slots[i];
        if (!s->active || !s->has_next) continue;
        w->batch[n++] = (bn_batch_tok){s->next, i, 1};
        s->has_next = 0;
        s->res.n_decoded++;
    }
    slot *s;
    while (budget > 0 && (s = oldest_prefill(w))) {
        uint32_t i = (uint32_t)(s - w->slots), m = s->n_prompt - s->pos;
        if (m > budget) m = budget;
        for (uint32_t k = 0; k < m; k++)
            w->batch[n++] = (bn_batch_tok){s->prompt[s->pos + k], i, s->pos + k + 1 == s->n_prompt};
        w->take[i] = m;
        budget -= m;
    }
    if (n == 0) return;
    if (bn_engine_eval_batch(w->e, w->batch, n, w->logits, &err)) {
        for (uint32_t i = 0; i < w->n_slots; i++)   /* nothing was evaluated: all of it fails */
            if (w->slots[i].active && (w->take[i] || w->slots[i].decoding))
                fail(w, &w->slots[i], BN_FRERR_INTERNAL, err.msg, 0);
        return;
    }
    uint32_t row = 0;
    for (uint32_t k = 0; k < n; k++)
        if (w->batch[k].want_logits) {
            s = &w->slots[w->batch[k].seq];
            s->logits = w->logits + (size_t)row++ * w->n_vocab;
            s->fresh = 1;
        }
    for (uint32_t i = 0; i < w->n_slots; i++) {
        if (!w->take[i]) continue;
        s = &w->slots[i];
        s->pos += w->take[i];
        bn_fr_progress p = {s->pos, s->n_prompt};
        send_frame(w, BN_FR_PROGRESS, s->id, &p, sizeof p);
        if (s->pos == s->n_prompt) {
            s->decoding = 1;
            s->t_decode = now_s();
            s->res.prefill_s = s->t_decode - s->t_join;
        }
    }
}

/* ---- the process ----------------------------------------------------------------------- */

static int setup(worker *w, const bn_worker_spec *spec, bn_error *err)
{
    bn_engine_opts eo = spec->eopts;
    if (!spec->model || !spec->tok) return bn_err(err, "worker %d: no model or tokenizer", spec->index);
    if (spec->n_slots > BN_MAX_SEQ)
        return bn_err(err, "worker %d: %u slots, at most %d", spec->index, spec->n_slots, BN_MAX_SEQ);
    if (spec->place && spec->topo) {
        int b = bn_place_bind_self(spec->topo, spec->place, err);
        if (b < 0) return bn_err_prefix(err, "worker %d", spec->index);
        if (b > 0) bn_log_warn("%s", err->msg);
        eo.cpus = spec->place->cpus;
        eo.n_cpus = spec->place->n_threads;
    }
    w->n_slots = spec->n_slots ? spec->n_slots : 1;
    /* PROGRESS (and CANCEL checks) come between steps, so the prefill budget is the chunk; the
     * engine's batch also holds the other slots' decode tokens, so a step is one pass. */
    w->chunk = spec->prefill_chunk ? spec->prefill_chunk : eo.batch ? eo.batch : 64;
    eo.batch = w->chunk + w->n_slots - 1;
    eo.n_seq = w->n_slots;
    if (bn_engine_create(spec->model, &eo, &w->e, err)) return bn_err_prefix(err, "worker %d", spec->index);
    const bn_config *cfg = &bn_engine_model(w->e)->cfg;
    w->n_vocab = cfg->n_vocab;
    w->eos = cfg->eos;
    w->eot = cfg->eot;
    w->n_ctx = bn_engine_n_ctx(w->e);
    w->slots = calloc(w->n_slots, sizeof *w->slots);
    w->batch = malloc((w->chunk + w->n_slots) * sizeof *w->batch);
    w->take = calloc(w->n_slots, sizeof *w->take);
    w->logits = malloc((size_t)w->n_slots * w->n_vocab * sizeof *w->logits);
    w->spare = malloc((size_t)w->n_ctx * sizeof *w->spare);
    if (!w->slots || !w->batch || !w->take || !w->logits || !w->spare)
        return bn_err(err, "worker %d: out of memory", spec->index);
    for (uint32_t i = 0; i < w->n_slots; i++) {
        slot *s = &w->slots[i];
        s->prompt = malloc((size_t)w->n_ctx * sizeof *s->prompt);
        s->sd = bn_stream_decoder_new(spec->tok, BN_DECODE_SKIP_CONTROL);
        s->sampler = bn_sampler_new(w->n_vocab, err);
        if (!s->prompt || !s->sd || !s->sampler) return bn_err(err, "worker %d: out of memory", spec->index);
    }
    if (spec->prompt_cache_bytes &&
        !(w->pc = bn_pcache_new(spec->prompt_cache_bytes, MIN_CACHED_IDS, on_cache_event, w)))
        return bn_err(err, "worker %d: out of memory", spec->index);
    return 0;
}

static void teardown(worker *w)
{
    for (uint32_t i = 0; w->slots && i < w->n_slots; i++) {
        bn_stop_matcher_free(w->slots[i].sm);
        bn_stream_decoder_free(w->slots[i].sd);
        bn_sampler_free(w->slots[i].sampler);
        free(w->slots[i].prompt);
    }
    free(w->slots);
    free(w->spare);
    free(w->batch);
    free(w->take);
    free(w->logits);
    bn_pcache_free(w->pc);
    bn_engine_free(w->e);
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
    h.n_slots = w->n_slots;
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
        flush_out(&w);
        teardown(&w);
        return 1;
    }
    send_hello(&w);
    while (!w.gone) {
        take_frames(&w, 1);                              /* waits only while nothing runs */
        if (!w.gone && take_tokens(&w)) take_frames(&w, 0);   /* a CANCEL before the next pass */
        if (!w.gone) step(&w);
    }
    teardown(&w);
    return w.status;
}
