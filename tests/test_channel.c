/* The master <-> worker channel: the frame codec on untrusted bytes, the blocking helpers, and
 * real worker processes (bn_worker_main over synthetic models) driven frame by frame.
 *
 * libgomp is not fork-safe: the workers are forked in main(), before this process could run
 * any OpenMP region, and the tests only talk to them (this process never creates an engine).
 * Every wait is bounded by poll() timeouts, so a broken worker fails a test instead of hanging
 * it; the workers are killed and reaped at the end whatever happened. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "worker_harness.h"

/* ---- the codec ------------------------------------------------------------------------- */

/* One frame of every type, appended to b; returns how many. */
static int put_every_type(bn_buf *b)
{
    bn_fr_hello h = {1234, 256, 4, 0, 1u << 20, 3u << 20};
    bn_fr_progress p = {64, 300};
    bn_fr_done d = {BN_FINISH_STOP, 10, 3, 7, 16, 2, -1, 0, 0.25, 1.5};
    int32_t ids[] = {5, 0, 511, 128000};
    const char *stops[] = {"\n\n", "User:", "é"};
    bn_fr_generate g;
    memset(&g, 0, sizeof g);
    bn_sampling_default(&g.sampling);
    g.sampling.seed = 0x123456789abcdefull;
    g.max_tokens = 77;
    g.flags = BN_GENF_IGNORE_EOS;
    g.n_prompt = 4;
    g.n_stop = 3;
    ck_assert(bn_frame_put(b, BN_FR_HELLO, 0, &h, sizeof h) == 0);
    ck_assert(bn_frame_put(b, BN_FR_PROGRESS, 7, &p, sizeof p) == 0);
    ck_assert(bn_frame_put_chunk(b, 7, ids, 2, "h\xc3\xa9llo", 6) == 0);
    ck_assert(bn_frame_put_chunk(b, 7, NULL, 0, NULL, 0) == 0);
    ck_assert(bn_frame_put(b, BN_FR_DONE, 7, &d, sizeof d) == 0);
    ck_assert(bn_frame_put_error(b, 8, BN_FRERR_CONTEXT, "too long") == 0);
    ck_assert(bn_frame_put_generate(b, UINT64_MAX, &g, ids, stops) == 0);
    ck_assert(bn_frame_put(b, BN_FR_CANCEL, 9, NULL, 0) == 0);
    ck_assert(bn_frame_put(b, BN_FR_RESET, 0, NULL, 0) == 0);
    ck_assert(bn_frame_put_cache(b, BN_CACHE_ADD, 42, ids, 4) == 0);
    ck_assert(bn_frame_put_cache(b, BN_CACHE_DROP, UINT64_MAX, ids, 4) == 0);   /* ids ignored */
    ck_assert(bn_frame_put_cache(b, BN_CACHE_CLEAR, 0, NULL, 0) == 0);
    return 12;
}

START_TEST(frames_round_trip)
{
    bn_buf b = {0};
    int n = put_every_type(&b);
    static const uint16_t types[] = {BN_FR_HELLO, BN_FR_PROGRESS, BN_FR_CHUNK, BN_FR_CHUNK, BN_FR_DONE,
                                     BN_FR_ERROR, BN_FR_GENERATE, BN_FR_CANCEL, BN_FR_RESET,
                                     BN_FR_CACHE, BN_FR_CACHE, BN_FR_CACHE};
    static const uint64_t ids[] = {0, 7, 7, 7, 7, 8, UINT64_MAX, 9, 0, 0, 0, 0};
    size_t off = 0;
    bn_error err = {{0}};
    for (int i = 0; i < n; i++) {
        bn_frame f;
        long r = bn_frame_decode(b.p + off, b.len - off, &f, &err);
        ck_assert_msg(r > 0, "frame %d: %ld %s", i, r, err.msg);
        ck_assert_int_eq(r, BN_FRAME_HDR + f.len);
        ck_assert_int_eq(f.type, types[i]);
        ck_assert(f.id == ids[i]);
        ck_assert_int_eq(f.flags, 0);
        off += (size_t)r;
        switch (f.type) {
        case BN_FR_HELLO: {
            bn_fr_hello h;
            ck_assert(bn_frame_get_fixed(&f, &h, sizeof h, &err) == 0);
            ck_assert(h.pid == 1234 && h.n_ctx == 256 && h.n_threads == 4);
            ck_assert(h.kv_bytes == 1u << 20 && h.scratch_bytes == 3u << 20);
            break;
        }
        case BN_FR_PROGRESS: {
            bn_fr_progress p;
            ck_assert(bn_frame_get_fixed(&f, &p, sizeof p, &err) == 0);
            ck_assert(p.done == 64 && p.total == 300);
            break;
        }
        case BN_FR_CHUNK: {
            bn_chunk_view v;
            ck_assert(bn_frame_get_chunk(&f, &v, &err) == 0);
            if (i == 2) {
                int32_t got[2];
                ck_assert_int_eq(v.n_ids, 2);
                memcpy(got, v.ids, sizeof got);
                ck_assert(got[0] == 5 && got[1] == 0);
                ck_assert_int_eq(v.text_len, 6);
                ck_assert(memcmp(v.text, "h\xc3\xa9llo", 6) == 0);
            } else {
                ck_assert(v.n_ids == 0 && v.text_len == 0);
            }
            break;
        }
        case BN_FR_DONE: {
            bn_fr_done d;
            ck_assert(bn_frame_get_fixed(&f, &d, sizeof d, &err) == 0);
            ck_assert(d.finish == BN_FINISH_STOP && d.n_prompt == 10 && d.n_cached == 3);
            ck_assert(d.n_completion == 7 && d.n_past == 16 && d.stop_id == 2 && d.stop_index == -1);
            ck_assert(d.prefill_s == 0.25 && d.decode_s == 1.5);
            break;
        }
        case BN_FR_ERROR: {
            bn_fr_error e;
            const char *msg;
            ck_assert(bn_frame_get_error(&f, &e, &msg, &err) == 0);
            ck_assert(e.code == BN_FRERR_CONTEXT && e.msg_len == 8 && memcmp(msg, "too long", 8) == 0);
            break;
        }
        case BN_FR_GENERATE: {
            bn_generate_view v;
            ck_assert_msg(bn_frame_get_generate(&f, &v, &err) == 0, "%s", err.msg);
            ck_assert(v.g.sampling.temperature == 0.8f && v.g.sampling.top_k == 40);
            ck_assert(v.g.sampling.top_p == 0.95f && v.g.sampling.min_p == 0.05f);
            ck_assert(v.g.sampling.seed == 0x123456789abcdefull);
            ck_assert(v.g.max_tokens == 77 && v.g.flags == BN_GENF_IGNORE_EOS);
            ck_assert(v.g.n_prompt == 4 && v.g.n_stop == 3);
            int32_t got[4];
            memcpy(got, v.ids, sizeof got);
            ck_assert(got[0] == 5 && got[1] == 0 && got[2] == 511 && got[3] == 128000);
            ck_assert(v.stop_len[0] == 2 && memcmp(v.stops[0], "\n\n", 2) == 0);
            ck_assert(v.stop_len[1] == 5 && memcmp(v.stops[1], "User:", 5) == 0);
            ck_assert(v.stop_len[2] == 2 && memcmp(v.stops[2], "\xc3\xa9", 2) == 0);
            break;
        }
        case BN_FR_CACHE: {   /* ADD 42 with 4 ids, DROP UINT64_MAX, CLEAR */
            bn_cache_view v;
            ck_assert_msg(bn_frame_get_cache(&f, &v, &err) == 0, "%s", err.msg);
            static const uint32_t ops[] = {BN_CACHE_ADD, BN_CACHE_DROP, BN_CACHE_CLEAR};
            static const uint64_t entries[] = {42, UINT64_MAX, 0};
            ck_assert_int_eq(v.c.op, ops[i - 9]);
            ck_assert(v.c.entry == entries[i - 9]);
            ck_assert_int_eq(v.c.n_ids, i == 9 ? 4 : 0);
            ck_assert_int_eq(f.len, sizeof(bn_fr_cache) + v.c.n_ids * sizeof(int32_t));
            if (i == 9) {
                int32_t got[4];
                memcpy(got, v.ids, sizeof got);
                ck_assert(got[0] == 5 && got[1] == 0 && got[2] == 511 && got[3] == 128000);
            }
            break;
        }
        default:
            ck_assert_int_eq(f.len, 0);
        }
    }
    ck_assert_int_eq(off, b.len);
    bn_buf_free(&b);
}
END_TEST

START_TEST(truncated_frames_need_more)
{
    bn_buf b = {0};
    int n = put_every_type(&b);
    size_t off = 0;
    bn_error err = {{0}};
    for (int i = 0; i < n; i++) {
        bn_frame f;
        long span = bn_frame_decode(b.p + off, b.len - off, &f, &err);
        ck_assert(span > 0);
        for (long k = 0; k < span; k++) {
            /* a copy of exactly k bytes, so that reading past it is an ASan/valgrind error */
            uint8_t *cut = malloc(k ? (size_t)k : 1);
            memcpy(cut, b.p + off, (size_t)k);
            ck_assert_msg(bn_frame_decode(cut, (size_t)k, &f, &err) == 0, "frame %d, %ld of %ld bytes", i, k, span);
            free(cut);
        }
        off += (size_t)span;
    }
    bn_buf_free(&b);
}
END_TEST

static void put_header(uint8_t *h, uint32_t magic, uint32_t len, uint16_t type, uint64_t id)
{
    uint32_t ml = magic << 24 | len;
    uint16_t flags = 0;
    memcpy(h, &ml, 4);
    memcpy(h + 4, &type, 2);
    memcpy(h + 6, &flags, 2);
    memcpy(h + 8, &id, 8);
}

/* A frame with an arbitrary payload, decoded back (the payload views are what is tested). */
static bn_frame raw_frame(bn_buf *b, uint16_t type, const void *payload, size_t len)
{
    bn_frame f;
    bn_error err;
    b->len = 0;
    ck_assert(bn_frame_put(b, type, 1, payload, len) == 0);
    ck_assert(bn_frame_decode(b->p, b->len, &f, &err) == (long)b->len);
    return f;
}

#define ASSERT_REJECTED(call, what)                                                            \
    do {                                                                                       \
        bn_error e_ = {{0}};                                                                   \
        ck_assert_msg((call(&e_)) == -1, "%s: accepted", what);                                \
        ck_assert_msg(e_.msg[0] != 0, "%s: no message", what);                                 \
    } while (0)

START_TEST(bad_frames_rejected)
{
    uint8_t h[BN_FRAME_HDR];
    bn_frame f;
    bn_error err = {{0}};
    put_header(h, 0x42, 0, BN_FR_CANCEL, 1);
    ck_assert(bn_frame_decode(h, 4, &f, &err) == -1);   /* known bad as soon as 4 bytes are in */
    ck_assert_msg(strstr(err.msg, "magic") != NULL, "%s", err.msg);
    ck_assert(bn_frame_decode(h, 3, &f, &err) == 0);
    put_header(h, BN_FRAME_MAGIC, 0, 99, 1);
    err.msg[0] = 0;
    ck_assert(bn_frame_decode(h, sizeof h, &f, &err) == -1 && strstr(err.msg, "type"));
    put_header(h, BN_FRAME_MAGIC, 0, 0, 1);
    ck_assert(bn_frame_decode(h, sizeof h, &f, &err) == -1);

    /* encoders refuse what cannot be framed (and leave the buffer as it was) */
    bn_buf b = {0};
    static const uint8_t dummy[8];
    ck_assert(bn_frame_put(&b, BN_FR_CHUNK, 1, dummy, BN_FRAME_MAX_PAYLOAD + 1ull) == -1);
    ck_assert(bn_frame_put_chunk(&b, 1, NULL, 0, (const char *)dummy, BN_FRAME_MAX_PAYLOAD) == -1);
    ck_assert(bn_frame_put_chunk(&b, 1, (const int32_t *)(const void *)dummy, 1u << 22, NULL, 0) == -1);
    bn_fr_generate g;
    memset(&g, 0, sizeof g);
    g.n_stop = 17;
    const char *stops[17] = {0};
    ck_assert(bn_frame_put_generate(&b, 1, &g, NULL, stops) == -1);
    ck_assert_int_eq(b.len, 0);

    /* GENERATE payloads whose lengths disagree */
    uint8_t p[sizeof(bn_fr_generate) + 64];
    memset(p, 0, sizeof p);
    bn_generate_view v;
#define GEN_REJECTED(len_, what)                                                               \
    do {                                                                                       \
        bn_frame fr_ = raw_frame(&b, BN_FR_GENERATE, p, (len_));                               \
        err.msg[0] = 0;                                                                        \
        ck_assert_msg(bn_frame_get_generate(&fr_, &v, &err) == -1, "%s: accepted", what);      \
        ck_assert_msg(err.msg[0] != 0, "%s: no message", what);                                \
    } while (0)
    GEN_REJECTED(10, "shorter than its header");
    g.n_prompt = 2;
    g.n_stop = 0;
    memcpy(p, &g, sizeof g);
    GEN_REJECTED(sizeof g + 4, "2 ids announced, 1 present");
    GEN_REJECTED(sizeof g + 12, "trailing bytes");
    g.n_prompt = 0x40000001u;   /* n * 4 wraps in 32 bits */
    memcpy(p, &g, sizeof g);
    GEN_REJECTED(sizeof g + 4, "n_prompt that wraps");
    g.n_prompt = 0;
    g.n_stop = 17;
    memcpy(p, &g, sizeof g);
    GEN_REJECTED(sizeof g, "17 stop strings");
    g.n_stop = 1;
    memcpy(p, &g, sizeof g);
    GEN_REJECTED(sizeof g + 2, "truncated stop length");
    uint32_t sl = 100;
    memcpy(p + sizeof g, &sl, 4);
    GEN_REJECTED(sizeof g + 8, "stop longer than the payload");
    sl = 0xffffffffu;
    memcpy(p + sizeof g, &sl, 4);
    GEN_REJECTED(sizeof g + 8, "stop length that wraps");
    sl = 0;
    memcpy(p + sizeof g, &sl, 4);
    GEN_REJECTED(sizeof g + 4, "empty stop string");
    sl = 3;
    memcpy(p + sizeof g, &sl, 4);
    memcpy(p + sizeof g + 4, "a\0b", 3);
    GEN_REJECTED(sizeof g + 7, "stop string with a NUL");
    memcpy(p + sizeof g + 4, "abc", 3);
    bn_frame ok = raw_frame(&b, BN_FR_GENERATE, p, sizeof g + 7);
    ck_assert_msg(bn_frame_get_generate(&ok, &v, &err) == 0, "%s", err.msg);   /* the control */
    ck_assert(v.stop_len[0] == 3 && memcmp(v.stops[0], "abc", 3) == 0);

    /* CHUNK, ERROR and fixed payloads */
    bn_chunk_view cv;
    bn_fr_chunk c = {2, 3};
    memcpy(p, &c, sizeof c);
    bn_frame fc = raw_frame(&b, BN_FR_CHUNK, p, sizeof c + 8 + 2);
    ck_assert(bn_frame_get_chunk(&fc, &cv, &err) == -1 && err.msg[0]);
    fc = raw_frame(&b, BN_FR_CHUNK, p, 4);
    ck_assert(bn_frame_get_chunk(&fc, &cv, &err) == -1);
    c = (bn_fr_chunk){0x40000000u, 8};   /* ids * 4 + text wraps to 8 + 8 in 32 bits */
    memcpy(p, &c, sizeof c);
    fc = raw_frame(&b, BN_FR_CHUNK, p, sizeof c + 8);
    ck_assert(bn_frame_get_chunk(&fc, &cv, &err) == -1);
    bn_fr_error e = {1, 50};
    const char *msg;
    memcpy(p, &e, sizeof e);
    bn_frame fe = raw_frame(&b, BN_FR_ERROR, p, sizeof e + 5);
    ck_assert(bn_frame_get_error(&fe, &e, &msg, &err) == -1 && err.msg[0]);
    fe = raw_frame(&b, BN_FR_ERROR, p, 3);
    ck_assert(bn_frame_get_error(&fe, &e, &msg, &err) == -1);
    bn_fr_done d;
    bn_frame fd = raw_frame(&b, BN_FR_DONE, p, sizeof d - 1);
    err.msg[0] = 0;
    ck_assert(bn_frame_get_fixed(&fd, &d, sizeof d, &err) == -1 && strstr(err.msg, "DONE"));
    fd = raw_frame(&b, BN_FR_DONE, p, sizeof d + 1);
    ck_assert(bn_frame_get_fixed(&fd, &d, sizeof d, &err) == -1);
    /* CACHE payloads: short, inconsistent counts, unknown op, entry 0, ids on DROP */
    bn_cache_view cav;
    bn_fr_cache cc;
#define CACHE_REJECTED(entry_, op_, n_, len_, what)                                            \
    do {                                                                                       \
        memset(&cc, 0, sizeof cc);                                                             \
        cc.entry = (entry_);                                                                   \
        cc.op = (op_);                                                                         \
        cc.n_ids = (n_);                                                                       \
        memcpy(p, &cc, sizeof cc);                                                             \
        bn_frame fr_ = raw_frame(&b, BN_FR_CACHE, p, (len_));                                  \
        err.msg[0] = 0;                                                                        \
        ck_assert_msg(bn_frame_get_cache(&fr_, &cav, &err) == -1, "%s: accepted", what);       \
        ck_assert_msg(err.msg[0] != 0, "%s: no message", what);                                \
    } while (0)
    CACHE_REJECTED(1, BN_CACHE_ADD, 0, sizeof cc - 1, "shorter than its header");
    CACHE_REJECTED(1, BN_CACHE_ADD, 2, sizeof cc + 4, "2 ids announced, 1 present");
    CACHE_REJECTED(1, BN_CACHE_ADD, 1, sizeof cc + 8, "trailing bytes");
    CACHE_REJECTED(1, BN_CACHE_ADD, 0x40000001u, sizeof cc + 4, "n_ids that wraps");
    CACHE_REJECTED(1, 0, 0, sizeof cc, "op 0");
    CACHE_REJECTED(1, 4, 0, sizeof cc, "op 4");
    CACHE_REJECTED(0, BN_CACHE_ADD, 1, sizeof cc + 4, "ADD of entry 0");
    CACHE_REJECTED(0, BN_CACHE_DROP, 0, sizeof cc, "DROP of entry 0");
    CACHE_REJECTED(3, BN_CACHE_DROP, 1, sizeof cc + 4, "DROP with ids");
    CACHE_REJECTED(0, BN_CACHE_CLEAR, 1, sizeof cc + 4, "CLEAR with ids");
    memset(&cc, 0, sizeof cc);
    cc.entry = 7;
    cc.op = BN_CACHE_ADD;
    cc.n_ids = 1;
    memcpy(p, &cc, sizeof cc);
    bn_frame fca = raw_frame(&b, BN_FR_CACHE, p, sizeof cc + 4);
    ck_assert_msg(bn_frame_get_cache(&fca, &cav, &err) == 0, "%s", err.msg);   /* the control */
    ck_assert(bn_frame_get_cache(&fd, &cav, &err) == -1);   /* a DONE is not a CACHE */
    ck_assert(bn_frame_put_cache(&b, BN_CACHE_ADD, 1, (const int32_t *)(const void *)dummy, 1u << 22) == -1);
#undef CACHE_REJECTED

    /* a view of the wrong type */
    ck_assert(bn_frame_get_chunk(&fd, &cv, &err) == -1 && bn_frame_get_generate(&fd, &v, &err) == -1);
    bn_buf_free(&b);
#undef GEN_REJECTED
}
END_TEST

START_TEST(blocking_read_and_write)
{
    int sv[2];
    ck_assert(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    bn_buf b = {0}, rb = {0};
    int n = put_every_type(&b);
    bn_error err = {{0}};
    ck_assert(bn_chan_write_all(sv[0], &b, &err) == 0);
    /* then half a frame, and the end of the stream */
    size_t whole = b.len;
    bn_frame f;
    ck_assert(bn_frame_put_error(&b, 3, 1, "cut short") == 0);
    bn_buf half = {b.p + whole, (b.len - whole) / 2 + 8, 0};
    ck_assert(bn_chan_write_all(sv[0], &half, &err) == 0);
    close(sv[0]);
    for (int i = 0; i < n; i++) {
        ck_assert_msg(bn_chan_read_frame(sv[1], &rb, &f, &err) == 1, "frame %d: %s", i, err.msg);
        ck_assert_int_eq(rb.len, BN_FRAME_HDR + f.len);   /* exactly one frame, no more */
    }
    err.msg[0] = 0;
    ck_assert(bn_chan_read_frame(sv[1], &rb, &f, &err) == -1);
    ck_assert_msg(strstr(err.msg, "end of stream") != NULL, "%s", err.msg);
    close(sv[1]);

    /* a clean EOF between frames is 0; writing to a closed peer is an error, not SIGPIPE */
    ck_assert(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    close(sv[0]);
    ck_assert_int_eq(bn_chan_read_frame(sv[1], &rb, &f, &err), 0);
    err.msg[0] = 0;
    ck_assert(bn_chan_write_all(sv[1], &b, &err) == -1 && err.msg[0]);
    close(sv[1]);

    /* garbage is -1 with a message */
    ck_assert(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    bn_buf junk = {(uint8_t *)"GET / HTTP/1.1\r\n\r\n", 18, 0};
    ck_assert(bn_chan_write_all(sv[0], &junk, &err) == 0);
    err.msg[0] = 0;
    ck_assert(bn_chan_read_frame(sv[1], &rb, &f, &err) == -1 && err.msg[0]);
    close(sv[0]);
    close(sv[1]);
    bn_buf_free(&b);
    bn_buf_free(&rb);
}
END_TEST

/* ---- worker processes ------------------------------------------------------------------ */

static bn_model *m_tiny, *m_big, *m_nan;
static uint8_t *nan_data;   /* m_nan's bytes: the tiny model with a NaN output norm */
static bn_tokenizer *tk_tiny, *tk_big;
static bn_tw wa = {.name = "A (tiny)", .pid = -1, .fd = -1},
               wb = {.name = "B (8 layers, n_ctx 4096)", .pid = -1, .fd = -1},
               wc = {.name = "C (tiny, for EOF)", .pid = -1, .fd = -1},
               wd = {.name = "D (tiny, NaN output norm)", .pid = -1, .fd = -1};

static void send_generate(bn_tw *w, uint64_t id, const int32_t *ids, uint32_t n,
                          uint32_t max_tokens, int ignore_eos, const char *stop)
{
    bn_fr_generate g;
    memset(&g, 0, sizeof g);
    bn_sampling_greedy(&g.sampling);
    g.max_tokens = max_tokens;
    g.flags = ignore_eos ? BN_GENF_IGNORE_EOS : 0;
    g.n_prompt = n;
    g.n_stop = stop ? 1 : 0;
    bn_buf b = {0};
    ck_assert(bn_frame_put_generate(&b, id, &g, ids, &stop) == 0);
    bn_tw_send(w, &b);
    bn_buf_free(&b);
}

/* What came back for one request. */
typedef struct result {
    int done, error;
    bn_fr_done d;
    uint32_t err_code;
    char err_msg[512];
    int32_t ids[8192];
    uint32_t n_ids, n_chunks, n_tail_chunks;
    char text[1 << 16];
    size_t text_len;
    uint32_t n_progress;
    bn_fr_progress first_progress, last_progress;
    uint64_t other_error_id;   /* an ERROR for another id (0: none) */
    uint32_t other_error_code;
} result;

enum { UNTIL_END = 0, UNTIL_CHUNK = BN_FR_CHUNK, UNTIL_PROGRESS = BN_FR_PROGRESS };

/* Reads frames for request id into r until DONE / ERROR, or until the first frame of type
 * `until` (then returns with the request still running). */
static void pump(bn_tw *w, uint64_t id, result *r, int until)
{
    for (;;) {
        bn_frame f;
        bn_error err = {{0}};
        ck_assert_msg(bn_tw_next_frame(w, &f), "worker %s: no answer for request %llu", w->name,
                      (unsigned long long)id);
        if (f.id != id) {
            ck_assert_msg(f.type == BN_FR_ERROR, "worker %s: frame type %u for id %llu, expected %llu",
                          w->name, f.type, (unsigned long long)f.id, (unsigned long long)id);
            r->other_error_id = f.id;
            r->other_error_code = bn_tw_error_of(&f, NULL, 0);
            continue;
        }
        switch (f.type) {
        case BN_FR_PROGRESS: {
            bn_fr_progress p;
            ck_assert(bn_frame_get_fixed(&f, &p, sizeof p, &err) == 0);
            ck_assert(p.done <= p.total);
            if (r->n_progress) ck_assert(p.done > r->last_progress.done);
            else r->first_progress = p;
            ck_assert_msg(r->n_chunks == 0, "PROGRESS after a CHUNK");
            r->last_progress = p;
            r->n_progress++;
            break;
        }
        case BN_FR_CHUNK: {
            bn_chunk_view v;
            ck_assert_msg(bn_frame_get_chunk(&f, &v, &err) == 0, "%s", err.msg);
            ck_assert_msg(r->n_tail_chunks == 0, "a CHUNK after the tail CHUNK");
            ck_assert(v.n_ids <= 1);   /* one CHUNK per token, plus the tail */
            ck_assert(r->n_ids + v.n_ids <= sizeof r->ids / sizeof *r->ids);
            ck_assert(r->text_len + v.text_len < sizeof r->text);
            memcpy(r->ids + r->n_ids, v.ids, v.n_ids * sizeof(int32_t));
            r->n_ids += v.n_ids;
            memcpy(r->text + r->text_len, v.text, v.text_len);
            r->text_len += v.text_len;
            r->text[r->text_len] = 0;
            if (v.n_ids == 0) {
                ck_assert_msg(v.text_len > 0, "an empty tail CHUNK");
                r->n_tail_chunks++;
            }
            r->n_chunks++;
            break;
        }
        case BN_FR_DONE:
            ck_assert(bn_frame_get_fixed(&f, &r->d, sizeof r->d, &err) == 0);
            r->done = 1;
            return;
        case BN_FR_ERROR:
            r->error = 1;
            r->err_code = bn_tw_error_of(&f, r->err_msg, sizeof r->err_msg);
            return;
        default:
            ck_abort_msg("worker %s: unexpected frame type %u", w->name, f.type);
        }
        if (f.type == until) return;
    }
}

static result *run(bn_tw *w, uint64_t id, const int32_t *ids, uint32_t n, uint32_t max_tokens,
                   int ignore_eos, const char *stop)
{
    result *r = calloc(1, sizeof *r);
    bn_tw_wait_hello(w);
    send_generate(w, id, ids, n, max_tokens, ignore_eos, stop);
    pump(w, id, r, UNTIL_END);
    return r;
}

static void assert_done(const result *r, const char *what)
{
    ck_assert_msg(r->done, "%s: ERROR %u: %s", what, r->err_code, r->err_msg);
    ck_assert_int_eq(r->d.n_completion, r->n_ids);   /* every token was in a CHUNK */
}

/* BOS + the text, tokenized in this process. */
static uint32_t prompt_of(const bn_tokenizer *tk, const char *text, int32_t *out, uint32_t cap)
{
    bn_tokens t = {0};
    bn_error err = {{0}};
    const bn_vocab *v = bn_tokenizer_vocab(tk);
    ck_assert(bn_tokens_push(&t, v->bos, &err) == 0);
    ck_assert_msg(bn_tokenize_append(tk, text, strlen(text), &t, &err) == 0, "%s", err.msg);
    ck_assert(t.n <= cap);
    memcpy(out, t.ids, t.n * sizeof *out);
    uint32_t n = (uint32_t)t.n;
    bn_tokens_free(&t);
    return n;
}

static void strip_non_ascii(char *s)
{
    char *o = s;
    for (; *s; s++)
        if ((unsigned char)*s < 0x80) *o++ = *s;
    *o = 0;
}

START_TEST(worker_says_hello)
{
    bn_tw_wait_hello(&wa);
    bn_tw_wait_hello(&wb);
    ck_assert_int_eq(wa.hello.pid, wa.pid);
    ck_assert_int_eq(wb.hello.pid, wb.pid);
    ck_assert_int_eq(wa.hello.n_ctx, 256);
    ck_assert_int_eq(wb.hello.n_ctx, 4096);
    ck_assert_int_eq(wa.hello.n_threads, 1);
    ck_assert_int_eq(wa.hello.n_slots, 1);   /* n_slots 0 in the spec: one */
    ck_assert(wa.hello.kv_bytes > 0 && wa.hello.scratch_bytes > 0);
    ck_assert(wb.hello.kv_bytes > wa.hello.kv_bytes);   /* 16x the positions, 4x the layers */
}
END_TEST

static const char *PROMPT = "The quick brown fox jumps over the lazy dog";

START_TEST(worker_generates_and_reuses_the_prefix)
{
    int32_t p[512];
    uint32_t n = prompt_of(tk_tiny, PROMPT, p, 256);
    bn_tw_wait_hello(&wa);
    bn_tw_send_simple(&wa, BN_FR_RESET, 0);
    result *r = run(&wa, 1, p, n, 20, 1, NULL);
    assert_done(r, "greedy 20");
    ck_assert_int_eq(r->n_ids, 20);
    ck_assert_int_eq(r->d.finish, BN_FINISH_LENGTH);
    ck_assert_int_eq(r->d.n_prompt, n);
    ck_assert_int_eq(r->d.n_cached, 0);
    ck_assert_int_eq(r->d.n_past, n + 19);   /* prompt + every token but the last */
    ck_assert(r->d.stop_id == -1 && r->d.stop_index == -1);
    ck_assert(r->d.prefill_s >= 0 && r->d.decode_s >= 0);

    /* the text is the ids' text: the same streaming decode here, and bn_detokenize up to the
     * replacement of invalid UTF-8 (which only ever touches bytes >= 0x80) */
    bn_stream_decoder *sd = bn_stream_decoder_new(tk_tiny, BN_DECODE_SKIP_CONTROL);
    char ref[4096];
    size_t rl = 0;
    bn_error err = {{0}};
    for (uint32_t i = 0; i < r->n_ids; i++) {
        const char *t;
        size_t tl;
        ck_assert(bn_stream_decoder_feed(sd, r->ids[i], &t, &tl, &err) == 0);
        memcpy(ref + rl, t, tl);
        rl += tl;
    }
    const char *t;
    size_t tl;
    bn_stream_decoder_flush(sd, &t, &tl);
    memcpy(ref + rl, t, tl);
    rl += tl;
    ref[rl] = 0;
    bn_stream_decoder_free(sd);
    ck_assert_int_eq(r->text_len, rl);
    ck_assert_str_eq(r->text, ref);
    char *detok;
    size_t dl;
    ck_assert(bn_detokenize(tk_tiny, r->ids, r->n_ids, BN_DECODE_SKIP_CONTROL, &detok, &dl, &err) == 0);
    char *ascii = strdup(r->text);
    strip_non_ascii(ascii);
    strip_non_ascii(detok);
    ck_assert_str_eq(ascii, detok);
    free(ascii);
    free(detok);

    /* the conversation continues: prompt ++ ids reuses everything the cache holds */
    int32_t p2[512];
    memcpy(p2, p, n * sizeof *p);
    memcpy(p2 + n, r->ids, r->n_ids * sizeof *p);
    result *r2 = run(&wa, 2, p2, n + r->n_ids, 5, 1, NULL);
    assert_done(r2, "continuation");
    ck_assert_int_eq(r2->d.n_cached, r->d.n_past);
    ck_assert(r2->d.n_cached > 0);
    ck_assert_int_eq(r2->n_ids, 5);

    /* and after RESET nothing is reused */
    bn_tw_send_simple(&wa, BN_FR_RESET, 0);
    result *r3 = run(&wa, 3, p2, n + r->n_ids, 1, 1, NULL);
    assert_done(r3, "after reset");
    ck_assert_int_eq(r3->d.n_cached, 0);
    ck_assert_int_eq(r3->d.n_past, n + r->n_ids);   /* one token asked: it is never evaluated */
    free(r);
    free(r2);
    free(r3);
}
END_TEST

START_TEST(worker_stops_at_a_stop_string)
{
    int32_t p[256];
    uint32_t n = prompt_of(tk_tiny, PROMPT, p, 256);
    bn_tw_wait_hello(&wa);
    bn_tw_send_simple(&wa, BN_FR_RESET, 0);   /* both runs from an empty cache: the same arithmetic */
    result *r = run(&wa, 4, p, n, 20, 1, NULL);
    assert_done(r, "free run");
    ck_assert_msg(r->text_len >= 4, "the tiny model produced only %zu bytes", r->text_len);
    /* two bytes from the middle of the text, on character boundaries */
    size_t k = r->text_len / 2;
    while (k > 0 && ((unsigned char)r->text[k] & 0xc0) == 0x80) k--;
    size_t e = k + 1;
    while (e < r->text_len && ((unsigned char)r->text[e] & 0xc0) == 0x80) e++;
    e = e < r->text_len ? e + 1 : e;
    while (e < r->text_len && ((unsigned char)r->text[e] & 0xc0) == 0x80) e++;
    char stop[32];
    snprintf(stop, sizeof stop, "%.*s", (int)(e - k), r->text + k);
    size_t before = (size_t)(strstr(r->text, stop) - r->text);

    bn_tw_send_simple(&wa, BN_FR_RESET, 0);
    result *s = run(&wa, 5, p, n, 20, 1, stop);
    assert_done(s, "with a stop string");
    ck_assert_int_eq(s->d.finish, BN_FINISH_STOP);
    ck_assert_int_eq(s->d.stop_index, 0);
    ck_assert_int_eq(s->d.stop_id, -1);
    ck_assert_msg(s->text_len == before && memcmp(s->text, r->text, before) == 0,
                  "stop \"%s\": got \"%s\", expected the first %zu bytes of \"%s\"", stop, s->text,
                  before, r->text);
    ck_assert(s->n_ids <= r->n_ids && memcmp(s->ids, r->ids, s->n_ids * sizeof(int32_t)) == 0);
    free(r);
    free(s);
}
END_TEST

START_TEST(worker_cancels_decode_and_refuses_a_second_request)
{
    int32_t p[256];
    uint32_t n = prompt_of(tk_big, PROMPT, p, 256);
    bn_tw_wait_hello(&wb);
    result *r = calloc(1, sizeof *r);
    send_generate(&wb, 10, p, n, 4000, 1, NULL);
    pump(&wb, 10, r, UNTIL_CHUNK);
    ck_assert(!r->done && !r->error && r->n_ids == 1);
    send_generate(&wb, 11, p, n, 5, 1, NULL);   /* while busy: a protocol error for 11 only */
    bn_tw_send_simple(&wb, BN_FR_CANCEL, 99);         /* not running: ignored */
    bn_tw_send_simple(&wb, BN_FR_CANCEL, 10);
    pump(&wb, 10, r, UNTIL_END);
    assert_done(r, "cancelled decode");
    ck_assert_int_eq(r->d.finish, BN_FINISH_CANCELLED);
    ck_assert(r->d.n_completion < 4000);
    ck_assert(r->other_error_id == 11 && r->other_error_code == BN_FRERR_BAD_REQUEST);

    result *r2 = run(&wb, 12, p, n, 5, 1, NULL);   /* and it serves the next one */
    assert_done(r2, "after a cancel");
    ck_assert_int_eq(r2->d.finish, BN_FINISH_LENGTH);
    ck_assert_int_eq(r2->n_ids, 5);
    ck_assert_int_eq(r2->d.n_cached, n - 1);
    free(r);
    free(r2);
}
END_TEST

START_TEST(worker_cancels_prefill)
{
    enum { N = 3000 };
    static int32_t p[N];
    for (uint32_t i = 0; i < N; i++) p[i] = (int32_t)((i * 37u + 11u) % 256u);   /* byte tokens */
    bn_tw_wait_hello(&wb);
    bn_tw_send_simple(&wb, BN_FR_RESET, 0);
    result *r = calloc(1, sizeof *r);
    send_generate(&wb, 20, p, N, 10, 1, NULL);
    pump(&wb, 20, r, UNTIL_PROGRESS);
    ck_assert_int_eq(r->first_progress.total, N);
    ck_assert_int_eq(r->first_progress.done, 16);   /* prefill_chunk 16, nothing cached */
    bn_tw_send_simple(&wb, BN_FR_CANCEL, 20);
    pump(&wb, 20, r, UNTIL_END);
    assert_done(r, "cancelled prefill");
    ck_assert_int_eq(r->d.finish, BN_FINISH_CANCELLED);
    ck_assert_int_eq(r->d.n_completion, 0);
    ck_assert(r->d.n_past < N && r->d.n_past >= 16 && r->d.n_past % 16 == 0);
    ck_assert_int_eq(r->d.n_past, r->last_progress.done);
    ck_assert_int_eq(r->d.n_prompt, N);

    /* what was evaluated before the cancel stays cached */
    result *r2 = run(&wb, 21, p, 100, 3, 1, NULL);
    assert_done(r2, "after a cancelled prefill");
    ck_assert_int_eq(r2->d.n_cached, r->d.n_past < 99 ? r->d.n_past : 99);
    ck_assert_int_eq(r2->n_ids, 3);
    free(r);
    free(r2);
}
END_TEST

START_TEST(worker_refuses_bad_requests_and_keeps_serving)
{
    int32_t p[300];
    for (int i = 0; i < 300; i++) p[i] = 65 + i % 26;
    bn_tw_wait_hello(&wa);
    result *r = run(&wa, 30, p, 300, 5, 1, NULL);   /* longer than n_ctx 256 */
    ck_assert_msg(r->error && r->err_code == BN_FRERR_CONTEXT, "done %d code %u", r->done, r->err_code);
    ck_assert_msg(strstr(r->err_msg, "300") && strstr(r->err_msg, "256"), "%s", r->err_msg);
    free(r);

    p[3] = 100000;   /* an id outside the vocabulary */
    r = run(&wa, 31, p, 10, 5, 1, NULL);
    ck_assert(r->error && r->err_code == BN_FRERR_BAD_REQUEST && r->err_msg[0]);
    free(r);
    r = run(&wa, 32, p, 0, 5, 1, NULL);   /* an empty prompt */
    ck_assert(r->error && r->err_code == BN_FRERR_BAD_REQUEST);
    free(r);

    /* malformed payloads: ids announced but absent, a payload shorter than its header */
    bn_fr_generate g;
    memset(&g, 0, sizeof g);
    bn_sampling_greedy(&g.sampling);
    g.max_tokens = 5;
    g.n_prompt = 1000;
    uint8_t raw[sizeof g + 8];
    memcpy(raw, &g, sizeof g);
    memcpy(raw + sizeof g, p, 8);
    bn_buf b = {0};
    ck_assert(bn_frame_put(&b, BN_FR_GENERATE, 33, raw, sizeof raw) == 0);
    ck_assert(bn_frame_put(&b, BN_FR_GENERATE, 34, raw, 10) == 0);
    ck_assert(bn_frame_put(&b, BN_FR_CHUNK, 35, NULL, 0) == 0);   /* a worker -> master type */
    bn_tw_send(&wa, &b);
    uint64_t want[] = {33, 34, 35};
    for (int i = 0; i < 3; i++) {
        r = calloc(1, sizeof *r);
        pump(&wa, want[i], r, UNTIL_END);
        ck_assert_msg(r->error && r->err_code == BN_FRERR_BAD_REQUEST && r->err_msg[0],
                      "request %llu", (unsigned long long)want[i]);
        free(r);
    }
    bn_buf_free(&b);

    for (int i = 0; i < 10; i++) p[i] = 65 + i;
    r = run(&wa, 36, p, 10, 5, 1, NULL);
    assert_done(r, "after the bad requests");
    ck_assert_int_eq(r->n_ids, 5);
    free(r);
}
END_TEST

START_TEST(worker_reports_nan_logits)
{
    int32_t p[256];
    uint32_t n = prompt_of(tk_tiny, PROMPT, p, 256);
    result *r = run(&wd, 50, p, n, 5, 1, NULL);
    ck_assert_msg(r->error && r->err_code == BN_FRERR_NAN, "done %d code %u", r->done, r->err_code);
    ck_assert_int_eq(r->n_ids, 0);   /* the poisoned token is not sent */
    free(r);
    /* the cache was reset, and the worker still answers */
    r = run(&wd, 51, p, n, 0, 1, NULL);
    assert_done(r, "no tokens asked");
    ck_assert_int_eq(r->d.n_cached, 0);
    ck_assert_int_eq(r->d.finish, BN_FINISH_LENGTH);
    free(r);
}
END_TEST

START_TEST(worker_exits_when_the_master_closes)
{
    bn_tw_wait_hello(&wc);
    close(wc.fd);
    wc.fd = -1;
    int st = bn_tw_reap(wc.pid, BN_TW_WAIT_MS);
    ck_assert_msg(st != -1, "worker C did not exit after EOF");
    wc.pid = -1;
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker C: status 0x%x", st);

    /* mid-request too: the worker cancels and exits 0 */
    int32_t p[256];
    uint32_t n = prompt_of(tk_big, PROMPT, p, 256);
    bn_tw_wait_hello(&wb);
    result *r = calloc(1, sizeof *r);
    send_generate(&wb, 40, p, n, 4000, 1, NULL);
    pump(&wb, 40, r, UNTIL_CHUNK);
    ck_assert(!r->done);
    free(r);
    close(wb.fd);
    wb.fd = -1;
    st = bn_tw_reap(wb.pid, BN_TW_WAIT_MS);
    ck_assert_msg(st != -1, "worker B did not exit after EOF mid-request");
    wb.pid = -1;
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker B: status 0x%x", st);
}
END_TEST

/* ---- set-up: models, tokenizers and the worker processes, before any test ---------------- */

/* The tiny model read into memory with its output norm set to NaN: every logit is NaN (the
 * worker uses the f16 lm_head, a plain dot product, so nothing can mask it). */
static int open_nan_model(const char *path)
{
    bn_error err = {{0}};
    FILE *f = fopen(path, "rb");
    long len = -1;
    if (f && fseek(f, 0, SEEK_END) == 0) len = ftell(f);
    if (len <= 0 || fseek(f, 0, SEEK_SET) || posix_memalign((void **)&nan_data, 64, (size_t)len) ||
        fread(nan_data, 1, (size_t)len, f) != (size_t)len) {
        if (f) fclose(f);
        fprintf(stderr, "test_channel: cannot read %s\n", path);
        return -1;
    }
    fclose(f);
    if (bn_model_open_region("nan model", nan_data, (size_t)len, &m_nan, &err)) {
        fprintf(stderr, "test_channel: %s\n", err.msg);
        return -1;
    }
    float *norm = (float *)(void *)(nan_data + ((const uint8_t *)m_nan->output_norm - nan_data));
    for (uint32_t i = 0; i < m_nan->cfg.n_embd; i++) norm[i] = NAN;
    return 0;
}

static Suite *channel_suite(void)
{
    Suite *s = suite_create("channel");
    TCase *tc = tcase_create("codec");
    tcase_add_test(tc, frames_round_trip);
    tcase_add_test(tc, truncated_frames_need_more);
    tcase_add_test(tc, bad_frames_rejected);
    tcase_add_test(tc, blocking_read_and_write);
    suite_add_tcase(s, tc);
    TCase *w = tcase_create("worker");   /* in order: the last test closes the workers */
    tcase_add_test(w, worker_says_hello);
    tcase_add_test(w, worker_generates_and_reuses_the_prefix);
    tcase_add_test(w, worker_stops_at_a_stop_string);
    tcase_add_test(w, worker_cancels_decode_and_refuses_a_second_request);
    tcase_add_test(w, worker_cancels_prefill);
    tcase_add_test(w, worker_refuses_bad_requests_and_keeps_serving);
    tcase_add_test(w, worker_reports_nan_logits);
    tcase_add_test(w, worker_exits_when_the_master_closes);
    suite_add_tcase(s, w);
    return s;
}

int main(void)
{
    char tiny[512], big[512];
    snprintf(tiny, sizeof tiny, "%s", bn_test_path("channel_tiny.bnpk"));
    snprintf(big, sizeof big, "%s", bn_test_path("channel_big.bnpk"));
    if (bn_tw_open_model("test_channel", "tiny", tiny, &m_tiny, &tk_tiny) ||
        bn_tw_open_model("test_channel", "tiny,n_ctx_max=4096,n_layer=8", big, &m_big, &tk_big) ||
        open_nan_model(tiny))
        return EXIT_FAILURE;

    enum { NW = 4 };
    bn_worker_spec specs[NW];
    bn_tw *ws[NW] = {&wa, &wb, &wc, &wd};
    const bn_model *models[NW] = {m_tiny, m_big, m_tiny, m_nan};
    /* the NaN model has the same built-in vocabulary as the tiny one */
    const bn_tokenizer *tks[NW] = {tk_tiny, tk_big, tk_tiny, tk_tiny};
    for (int i = 0; i < NW; i++) bn_tw_spec(&specs[i], i, models[i], tks[i]);
    specs[1].prefill_chunk = 16;   /* many PROGRESS frames for the prefill cancel */
    specs[3].eopts.lm_head = BN_LM_HEAD_F16;
    /* in order, with the workers' state shared across tests */
    int failed = bn_tw_run_suite("test_channel", channel_suite(), ws, specs, NW);
    bn_tokenizer_free(tk_tiny);
    bn_tokenizer_free(tk_big);
    bn_model_close(m_tiny);
    bn_model_close(m_big);
    bn_model_close(m_nan);
    free(nan_data);
    remove(tiny);
    remove(big);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
