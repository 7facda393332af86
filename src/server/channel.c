/* The master <-> worker framing (channel.h, docs/server.md). Every decoder treats its input as
 * untrusted: each length is checked against what is left before anything is read, in 64-bit
 * arithmetic so that no count can wrap. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/channel.h"

/* The view's fixed arrays bound the stop strings a GENERATE may carry. */
#define MAX_STOPS ((uint32_t)(sizeof(((bn_generate_view *)0)->stops) / sizeof(const char *)))

/* ---- bn_buf ---------------------------------------------------------------------------- */

/* Makes room for n more bytes and returns where they go (len is advanced), or NULL. */
static uint8_t *buf_grow(bn_buf *b, size_t n)
{
    if (n > SIZE_MAX - b->len) return NULL;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) return NULL;
        b->p = p;
        b->cap = cap;
    }
    uint8_t *at = b->p + b->len;
    b->len += n;
    return at;
}

int bn_buf_append(bn_buf *b, const void *data, size_t n)
{
    if (n == 0) return 0;
    uint8_t *at = buf_grow(b, n);
    if (!at) return -1;
    memcpy(at, data, n);
    return 0;
}

void bn_buf_free(bn_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- header ---------------------------------------------------------------------------- */

static int type_known(uint16_t t)
{
    return (t >= BN_FR_HELLO && t <= BN_FR_CACHE) || (t >= BN_FR_GENERATE && t <= BN_FR_RESET);
}

/* Appends a header for a payload of len bytes and returns where the payload goes, or NULL. */
static uint8_t *put_header(bn_buf *b, uint16_t type, uint64_t id, size_t len)
{
    if (len > BN_FRAME_MAX_PAYLOAD) return NULL;
    uint8_t *h = buf_grow(b, BN_FRAME_HDR + len);
    if (!h) return NULL;
    uint32_t magic_len = (BN_FRAME_MAGIC << 24) | (uint32_t)len;
    uint16_t flags = 0;
    memcpy(h, &magic_len, 4);
    memcpy(h + 4, &type, 2);
    memcpy(h + 6, &flags, 2);
    memcpy(h + 8, &id, 8);
    return h + BN_FRAME_HDR;
}

long bn_frame_decode(const uint8_t *buf, size_t n, bn_frame *out, bn_error *err)
{
    if (n < 4) return 0;
    uint32_t magic_len;
    memcpy(&magic_len, buf, 4);
    if (magic_len >> 24 != BN_FRAME_MAGIC) {
        bn_err(err, "channel: bad frame magic 0x%02x (expected 0x%02x): the stream is corrupt",
               magic_len >> 24, BN_FRAME_MAGIC);
        return -1;
    }
    if (n < BN_FRAME_HDR) return 0;
    uint16_t type;
    memcpy(&type, buf + 4, 2);
    if (!type_known(type)) {
        bn_err(err, "channel: unknown frame type %u", type);
        return -1;
    }
    uint32_t len = magic_len & BN_FRAME_MAX_PAYLOAD;
    if (n - BN_FRAME_HDR < len) return 0;
    out->type = type;
    memcpy(&out->flags, buf + 6, 2);
    memcpy(&out->id, buf + 8, 8);
    out->len = len;
    out->payload = buf + BN_FRAME_HDR;
    return (long)(BN_FRAME_HDR + len);
}

/* ---- encoders -------------------------------------------------------------------------- */

int bn_frame_put(bn_buf *b, uint16_t type, uint64_t id, const void *payload, size_t len)
{
    uint8_t *p = put_header(b, type, id, len);
    if (!p) return -1;
    if (len) memcpy(p, payload, len);
    return 0;
}

int bn_frame_put_generate(bn_buf *b, uint64_t id, const bn_fr_generate *g, const int32_t *ids,
                          const char *const *stops)
{
    if (g->n_stop > MAX_STOPS) return -1;
    uint64_t len = sizeof(bn_fr_generate) + (uint64_t)g->n_prompt * sizeof(int32_t);
    for (uint32_t i = 0; i < g->n_stop; i++) len += 4 + strlen(stops[i]);
    if (len > BN_FRAME_MAX_PAYLOAD) return -1;
    uint8_t *p = put_header(b, BN_FR_GENERATE, id, (size_t)len);
    if (!p) return -1;
    /* Field by field into a zeroed copy: the struct's padding must not carry stack bytes. */
    bn_fr_generate h;
    memset(&h, 0, sizeof h);
    h.sampling.temperature = g->sampling.temperature;
    h.sampling.top_k = g->sampling.top_k;
    h.sampling.top_p = g->sampling.top_p;
    h.sampling.min_p = g->sampling.min_p;
    h.sampling.repeat_penalty = g->sampling.repeat_penalty;
    h.sampling.presence_penalty = g->sampling.presence_penalty;
    h.sampling.frequency_penalty = g->sampling.frequency_penalty;
    h.sampling.seed = g->sampling.seed;
    h.max_tokens = g->max_tokens;
    h.flags = g->flags;
    h.n_prompt = g->n_prompt;
    h.n_stop = g->n_stop;
    memcpy(p, &h, sizeof h);
    p += sizeof h;
    if (g->n_prompt) memcpy(p, ids, (size_t)g->n_prompt * sizeof(int32_t));
    p += (size_t)g->n_prompt * sizeof(int32_t);
    for (uint32_t i = 0; i < g->n_stop; i++) {
        uint32_t sl = (uint32_t)strlen(stops[i]);
        memcpy(p, &sl, 4);
        memcpy(p + 4, stops[i], sl);
        p += 4 + sl;
    }
    return 0;
}

int bn_frame_put_chunk(bn_buf *b, uint64_t id, const int32_t *ids, uint32_t n_ids,
                       const char *text, uint32_t text_len)
{
    uint64_t len = sizeof(bn_fr_chunk) + (uint64_t)n_ids * sizeof(int32_t) + text_len;
    if (len > BN_FRAME_MAX_PAYLOAD) return -1;
    uint8_t *p = put_header(b, BN_FR_CHUNK, id, (size_t)len);
    if (!p) return -1;
    bn_fr_chunk c = {n_ids, text_len};
    memcpy(p, &c, sizeof c);
    p += sizeof c;
    if (n_ids) memcpy(p, ids, (size_t)n_ids * sizeof(int32_t));
    if (text_len) memcpy(p + (size_t)n_ids * sizeof(int32_t), text, text_len);
    return 0;
}

int bn_frame_put_error(bn_buf *b, uint64_t id, uint32_t code, const char *msg)
{
    size_t ml = msg ? strlen(msg) : 0;
    if (ml > BN_FRAME_MAX_PAYLOAD - sizeof(bn_fr_error)) ml = BN_FRAME_MAX_PAYLOAD - sizeof(bn_fr_error);
    uint8_t *p = put_header(b, BN_FR_ERROR, id, sizeof(bn_fr_error) + ml);
    if (!p) return -1;
    bn_fr_error e = {code, (uint32_t)ml};
    memcpy(p, &e, sizeof e);
    if (ml) memcpy(p + sizeof e, msg, ml);
    return 0;
}

int bn_frame_put_cache(bn_buf *b, uint32_t op, uint64_t entry, const int32_t *ids, uint32_t n_ids)
{
    if (op != BN_CACHE_ADD) n_ids = 0;   /* only ADD carries ids */
    uint64_t len = sizeof(bn_fr_cache) + (uint64_t)n_ids * sizeof(int32_t);
    if (len > BN_FRAME_MAX_PAYLOAD) return -1;
    uint8_t *p = put_header(b, BN_FR_CACHE, 0, (size_t)len);
    if (!p) return -1;
    bn_fr_cache c;
    memset(&c, 0, sizeof c);   /* no padding bytes from the stack */
    c.entry = entry;
    c.op = op;
    c.n_ids = n_ids;
    memcpy(p, &c, sizeof c);
    if (n_ids) memcpy(p + sizeof c, ids, (size_t)n_ids * sizeof(int32_t));
    return 0;
}

/* ---- payload views --------------------------------------------------------------------- */

static const char *type_name(uint16_t t)
{
    static const char *names[] = {"?", "HELLO", "PROGRESS", "CHUNK", "DONE", "ERROR", "CACHE"};
    static const char *mnames[] = {"GENERATE", "CANCEL", "RESET"};
    if (t < sizeof names / sizeof *names) return names[t];
    if (t >= BN_FR_GENERATE && t <= BN_FR_RESET) return mnames[t - BN_FR_GENERATE];
    return "?";
}

int bn_frame_get_generate(const bn_frame *f, bn_generate_view *v, bn_error *err)
{
    const uint8_t *p = f->payload, *end = f->payload + f->len;
    if (f->type != BN_FR_GENERATE) return bn_err(err, "channel: %s frame, expected GENERATE", type_name(f->type));
    if (f->len < sizeof(bn_fr_generate))
        return bn_err(err, "channel: GENERATE payload of %u bytes is shorter than its header (%zu)",
                      f->len, sizeof(bn_fr_generate));
    memcpy(&v->g, p, sizeof v->g);
    p += sizeof v->g;
    if ((uint64_t)v->g.n_prompt * sizeof(int32_t) > (uint64_t)(end - p))
        return bn_err(err, "channel: GENERATE announces %u prompt ids, the payload holds %zu",
                      v->g.n_prompt, (size_t)(end - p) / sizeof(int32_t));
    v->ids = (const int32_t *)(const void *)p;
    p += (size_t)v->g.n_prompt * sizeof(int32_t);
    if (v->g.n_stop > MAX_STOPS)
        return bn_err(err, "channel: GENERATE has %u stop strings (at most %u)", v->g.n_stop, MAX_STOPS);
    for (uint32_t i = 0; i < v->g.n_stop; i++) {
        uint32_t sl;
        if (end - p < 4) return bn_err(err, "channel: GENERATE stop string %u: truncated length", i);
        memcpy(&sl, p, 4);
        p += 4;
        if (sl > (size_t)(end - p))
            return bn_err(err, "channel: GENERATE stop string %u: %u bytes, %zu left", i, sl, (size_t)(end - p));
        if (sl == 0) return bn_err(err, "channel: GENERATE stop string %u is empty", i);
        if (memchr(p, 0, sl)) return bn_err(err, "channel: GENERATE stop string %u contains a NUL byte", i);
        v->stops[i] = (const char *)p;
        v->stop_len[i] = sl;
        p += sl;
    }
    if (p != end)
        return bn_err(err, "channel: GENERATE payload has %zu trailing bytes", (size_t)(end - p));
    return 0;
}

int bn_frame_get_chunk(const bn_frame *f, bn_chunk_view *v, bn_error *err)
{
    bn_fr_chunk c;
    if (f->type != BN_FR_CHUNK) return bn_err(err, "channel: %s frame, expected CHUNK", type_name(f->type));
    if (f->len < sizeof c)
        return bn_err(err, "channel: CHUNK payload of %u bytes is shorter than its header", f->len);
    memcpy(&c, f->payload, sizeof c);
    uint64_t need = sizeof c + (uint64_t)c.n_ids * sizeof(int32_t) + c.text_len;
    if (need != f->len)
        return bn_err(err, "channel: CHUNK of %u ids and %u text bytes needs %llu payload bytes, has %u",
                      c.n_ids, c.text_len, (unsigned long long)need, f->len);
    v->n_ids = c.n_ids;
    v->ids = f->payload + sizeof c;
    v->text = (const char *)v->ids + (size_t)c.n_ids * sizeof(int32_t);
    v->text_len = c.text_len;
    return 0;
}

int bn_frame_get_cache(const bn_frame *f, bn_cache_view *v, bn_error *err)
{
    if (f->type != BN_FR_CACHE) return bn_err(err, "channel: %s frame, expected CACHE", type_name(f->type));
    if (f->len < sizeof v->c)
        return bn_err(err, "channel: CACHE payload of %u bytes is shorter than its header", f->len);
    memcpy(&v->c, f->payload, sizeof v->c);
    if (v->c.op < BN_CACHE_ADD || v->c.op > BN_CACHE_CLEAR)
        return bn_err(err, "channel: CACHE op %u is unknown", v->c.op);
    if (v->c.op != BN_CACHE_CLEAR && v->c.entry == 0)
        return bn_err(err, "channel: CACHE %s of entry 0", v->c.op == BN_CACHE_ADD ? "ADD" : "DROP");
    if (v->c.op != BN_CACHE_ADD && v->c.n_ids != 0)
        return bn_err(err, "channel: CACHE DROP/CLEAR carries %u ids", v->c.n_ids);
    uint64_t need = sizeof v->c + (uint64_t)v->c.n_ids * sizeof(int32_t);
    if (need != f->len)
        return bn_err(err, "channel: CACHE of %u ids needs %llu payload bytes, has %u", v->c.n_ids,
                      (unsigned long long)need, f->len);
    v->ids = f->payload + sizeof v->c;
    return 0;
}

int bn_frame_get_fixed(const bn_frame *f, void *out, size_t size, bn_error *err)
{
    if (f->len != size)
        return bn_err(err, "channel: %s payload of %u bytes, expected %zu", type_name(f->type),
                      f->len, size);
    memcpy(out, f->payload, size);
    return 0;
}

int bn_frame_get_error(const bn_frame *f, bn_fr_error *e, const char **msg, bn_error *err)
{
    if (f->type != BN_FR_ERROR) return bn_err(err, "channel: %s frame, expected ERROR", type_name(f->type));
    if (f->len < sizeof *e)
        return bn_err(err, "channel: ERROR payload of %u bytes is shorter than its header", f->len);
    memcpy(e, f->payload, sizeof *e);
    if (e->msg_len != f->len - sizeof *e)
        return bn_err(err, "channel: ERROR announces a %u-byte message, the payload holds %zu",
                      e->msg_len, f->len - sizeof *e);
    *msg = (const char *)f->payload + sizeof *e;
    return 0;
}

/* ---- blocking I/O ---------------------------------------------------------------------- */

int bn_chan_write_all(int fd, const bn_buf *b, bn_error *err)
{
    size_t off = 0;
    int use_write = 0;
    while (off < b->len) {
        ssize_t w = use_write ? write(fd, b->p + off, b->len - off)
                              : send(fd, b->p + off, b->len - off, MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == ENOTSOCK && !use_write) {   /* a pipe (tests): SIGPIPE is the caller's */
            use_write = 1;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {   /* a non-blocking fd */
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
                return bn_err(err, "channel: poll: %s", strerror(errno));
            continue;
        }
        if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
            return bn_err(err, "channel: the peer closed the channel");
        return bn_err(err, "channel: write: %s", w < 0 ? strerror(errno) : "wrote nothing");
    }
    return 0;
}

/* Reads exactly n bytes. Returns 1, 0 on EOF before the first byte, -1 on error / EOF after. */
static int read_exact(int fd, uint8_t *p, size_t n, bn_error *err)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r == 0) {
            if (got == 0) return 0;
            return bn_err(err, "channel: end of stream inside a frame (%zu of %zu bytes)", got, n);
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
                return bn_err(err, "channel: poll: %s", strerror(errno));
            continue;
        }
        if (errno == ECONNRESET && got == 0) return 0;   /* the peer is gone: same as EOF */
        return bn_err(err, "channel: read: %s", strerror(errno));
    }
    return 1;
}

/* Reads the header, then exactly the payload it announces: never a byte of the next frame, so
 * other readers of the same fd stay in step. */
int bn_chan_read_frame(int fd, bn_buf *rb, bn_frame *f, bn_error *err)
{
    rb->len = 0;
    uint8_t *h = buf_grow(rb, BN_FRAME_HDR);
    if (!h) return bn_err(err, "channel: out of memory");
    int r = read_exact(fd, h, BN_FRAME_HDR, err);
    if (r <= 0) return r;
    bn_frame tmp;
    if (bn_frame_decode(rb->p, BN_FRAME_HDR, &tmp, err) < 0) return -1;
    uint32_t magic_len;
    memcpy(&magic_len, rb->p, 4);
    size_t len = magic_len & BN_FRAME_MAX_PAYLOAD;
    if (len) {
        uint8_t *p = buf_grow(rb, len);
        if (!p) return bn_err(err, "channel: out of memory for a %zu-byte frame", len);
        r = read_exact(fd, p, len, err);
        if (r == 0) return bn_err(err, "channel: end of stream inside a frame (header only)");
        if (r < 0) return -1;
    }
    if (bn_frame_decode(rb->p, rb->len, f, err) != (long)rb->len)
        return bn_err(err, "channel: frame did not decode");
    return 1;
}
