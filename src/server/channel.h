/* The master <-> worker channel: one SOCK_STREAM socketpair per worker carrying small framed
 * messages (docs/server.md). Every frame starts with a fixed 16-byte header; frames that belong
 * to a request carry its id, so a worker may later hold several requests at once.
 *
 *   header: u32 magic_len = (BN_FRAME_MAGIC << 24) | payload length (< 16 MiB)
 *           u16 type, u16 flags (0), u64 request id (0 for worker-level frames)
 *
 * Integers are host-endian (both ends are the same binary on the same machine). Encoders
 * append to a bn_buf; the decoder works on any byte buffer, so the master (libevent evbuffer)
 * and the worker (blocking reads) share it, and the fuzz/unit tests drive it directly. */
#ifndef BN_SERVER_CHANNEL_H
#define BN_SERVER_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "engine/engine.h"

#define BN_FRAME_MAGIC 0xB7u
#define BN_FRAME_HDR 16
#define BN_FRAME_MAX_PAYLOAD ((1u << 24) - 1)

enum bn_frame_type {
    /* worker -> master */
    BN_FR_HELLO = 1,      /* engine ready: bn_fr_hello */
    BN_FR_PROGRESS = 2,   /* prefill progress (also a heartbeat): bn_fr_progress */
    BN_FR_CHUNK = 3,      /* generated tokens and their text: bn_fr_chunk + ids + text */
    BN_FR_DONE = 4,       /* request finished: bn_fr_done */
    BN_FR_ERROR = 5,      /* request failed: bn_fr_error + message */
    BN_FR_CACHE = 6,      /* the worker's prompt cache changed: bn_fr_cache (+ ids), id 0 */
    /* master -> worker */
    BN_FR_GENERATE = 16,  /* a request: bn_fr_generate + prompt ids + stop strings */
    BN_FR_CANCEL = 17,    /* stop request id at the next token / prefill chunk (no payload) */
    BN_FR_RESET = 18,     /* forget the KV cache (no payload, id 0) */
};

/* A growable byte buffer (encoders append to it). Zero-initialise. */
typedef struct bn_buf {
    uint8_t *p;
    size_t len, cap;
} bn_buf;
int bn_buf_append(bn_buf *b, const void *data, size_t n);
void bn_buf_free(bn_buf *b);

typedef struct bn_fr_hello {
    int32_t pid;
    uint32_t n_ctx;
    int32_t n_threads;
    uint32_t n_slots;        /* requests it runs at once (continuous batching); 0 reads as 1 */
    uint64_t kv_bytes, scratch_bytes;
} bn_fr_hello;

typedef struct bn_fr_progress {
    uint32_t done, total;   /* prompt tokens evaluated (cached ones count as done) / to evaluate */
} bn_fr_progress;

enum { BN_GENF_IGNORE_EOS = 1 };

typedef struct bn_fr_generate {
    bn_sampling sampling;
    uint32_t max_tokens;
    uint32_t flags;          /* BN_GENF_* */
    uint32_t n_prompt;       /* int32 ids follow */
    uint32_t n_stop;         /* then n_stop strings, each u32 length + bytes (no NUL) */
} bn_fr_generate;

typedef struct bn_fr_chunk {
    uint32_t n_ids;          /* tokens this chunk accounts for; int32 ids follow */
    uint32_t text_len;       /* then text_len bytes of complete UTF-8 text */
} bn_fr_chunk;

typedef struct bn_fr_done {
    uint32_t finish;         /* enum bn_finish (STOP for eos/eot and stop strings) */
    uint32_t n_prompt, n_cached, n_completion;
    uint32_t n_past;         /* positions left in the worker's cache: prompt ++ ids, first n_past */
    int32_t stop_id;         /* eos/eot id, or -1 */
    int32_t stop_index;      /* index of the stop string that matched, or -1 */
    uint32_t pad;
    double prefill_s, decode_s;
} bn_fr_done;

enum bn_fr_error_code {
    BN_FRERR_INTERNAL = 1,   /* engine failure (message says what) */
    BN_FRERR_NAN = 2,        /* NaN/Inf in the logits */
    BN_FRERR_BAD_REQUEST = 3,/* the frame was malformed (a master bug) */
    BN_FRERR_CONTEXT = 4,    /* prompt does not fit the worker's context */
};
typedef struct bn_fr_error {
    uint32_t code;           /* enum bn_fr_error_code */
    uint32_t msg_len;        /* message bytes follow */
} bn_fr_error;

/* The worker's prompt cache, mirrored by the master for routing (the worker whose cache holds
 * the longest prefix of a new prompt gets it). ADD: entry now holds the KV of ids[0..n_ids)
 * (a finished request's tokens; an existing entry id is replaced). DROP: entry is gone.
 * CLEAR: every entry is gone (RESET). Entry ids are the worker's own, never 0. */
enum bn_cache_op { BN_CACHE_ADD = 1, BN_CACHE_DROP = 2, BN_CACHE_CLEAR = 3 };
typedef struct bn_fr_cache {
    uint64_t entry;
    uint32_t op;             /* enum bn_cache_op */
    uint32_t n_ids;          /* ADD: int32 ids follow; otherwise 0 */
} bn_fr_cache;

/* A decoded frame: header fields and a pointer into the caller's buffer. */
typedef struct bn_frame {
    uint16_t type, flags;
    uint64_t id;
    const uint8_t *payload;
    uint32_t len;
} bn_frame;

/* Decodes one frame from buf[0..n). Returns the bytes it spans (> 0), 0 when more bytes are
 * needed, or -1 with err set when the bytes cannot be a frame (bad magic, oversize). */
long bn_frame_decode(const uint8_t *buf, size_t n, bn_frame *out, bn_error *err);

/* Encoders: append one whole frame to b. Return 0 or -1 (out of memory / too large). */
int bn_frame_put(bn_buf *b, uint16_t type, uint64_t id, const void *payload, size_t len);
int bn_frame_put_generate(bn_buf *b, uint64_t id, const bn_fr_generate *g, const int32_t *ids,
                          const char *const *stops);
int bn_frame_put_chunk(bn_buf *b, uint64_t id, const int32_t *ids, uint32_t n_ids,
                       const char *text, uint32_t text_len);
int bn_frame_put_error(bn_buf *b, uint64_t id, uint32_t code, const char *msg);
int bn_frame_put_cache(bn_buf *b, uint32_t op, uint64_t entry, const int32_t *ids, uint32_t n_ids);

/* Payload views, validated against the frame length (untrusted on both sides: -1 on a short or
 * inconsistent payload). Pointers point into the frame's payload. */
typedef struct bn_generate_view {
    bn_fr_generate g;
    const int32_t *ids;      /* g.n_prompt (unaligned access is fine on x86; copied if needed) */
    const char *stops[16];   /* g.n_stop strings, NOT NUL-terminated: see stop_len */
    uint32_t stop_len[16];
} bn_generate_view;
int bn_frame_get_generate(const bn_frame *f, bn_generate_view *v, bn_error *err);
typedef struct bn_chunk_view {
    uint32_t n_ids;
    const uint8_t *ids;      /* n_ids int32 (memcpy them out) */
    const char *text;
    uint32_t text_len;
} bn_chunk_view;
int bn_frame_get_chunk(const bn_frame *f, bn_chunk_view *v, bn_error *err);
typedef struct bn_cache_view {
    bn_fr_cache c;
    const uint8_t *ids;      /* c.n_ids int32 (memcpy them out) */
} bn_cache_view;
int bn_frame_get_cache(const bn_frame *f, bn_cache_view *v, bn_error *err);
int bn_frame_get_fixed(const bn_frame *f, void *out, size_t size, bn_error *err);  /* hello/progress/done */
int bn_frame_get_error(const bn_frame *f, bn_fr_error *e, const char **msg, bn_error *err);

/* Blocking helpers for the worker side: write all of b (EINTR-safe), read one whole frame into
 * *rb (growing it). read returns 1 with a frame, 0 on EOF, -1 on error. */
int bn_chan_write_all(int fd, const bn_buf *b, bn_error *err);
int bn_chan_read_frame(int fd, bn_buf *rb, bn_frame *f, bn_error *err);

#endif
