/* libFuzzer target: the GGUF reader and the GGUF source over arbitrary bytes.
 *
 * Parses the input in memory (bn_source_open_gguf_mem: no temp files), and when it opens, reads
 * every tensor the config implies through the source API, as the converter would. Buffers are
 * bounded: tensors whose element count exceeds FUZZ_MAX_ELEMS are skipped (the header already
 * proved their data lies inside the input, so decoding them teaches nothing new but costs time).
 * Any crash, sanitizer report or leak is a finding; error returns are the expected outcome. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/source.h"

#define FUZZ_MAX_ELEMS (1u << 22)

static void read_ternary(bn_source *s, const char *name, uint64_t rows, uint64_t cols)
{
    bn_error err;
    const uint64_t n = rows * cols; /* both come from a validated config: no overflow */
    if (n == 0 || n > FUZZ_MAX_ELEMS) return;
    int8_t *t = malloc(n);
    float scale;
    if (t) (void)s->ops->ternary(s, name, rows, cols, t, &scale, &err);
    free(t);
}

static void read_floats(bn_source *s, const char *name, uint64_t rows, uint64_t cols)
{
    bn_error err;
    if (cols > FUZZ_MAX_ELEMS) return;
    float *f = malloc(cols * sizeof *f);
    if (!f) return;
    /* first and last row, and one past the end (must fail cleanly) */
    (void)s->ops->floats(s, name, rows, cols, 0, 1, f, &err);
    (void)s->ops->floats(s, name, rows, cols, rows - 1, 1, f, &err);
    (void)s->ops->floats(s, name, rows, cols, rows, 1, f, &err);
    free(f);
}

static void read_all(bn_source *s)
{
    const bn_config *c = &s->cfg;
    const uint64_t E = c->n_embd, F = c->n_ff, Q = (uint64_t)c->n_head * c->head_dim;
    const uint64_t KV = (uint64_t)c->n_head_kv * c->head_dim;
    read_floats(s, "token_embd", c->n_vocab, E);
    read_floats(s, "output_norm", 1, E);
    if (!c->tied) read_floats(s, "output", c->n_vocab, E);
    for (uint32_t l = 0; l < c->n_layer && l < 64; l++) {
        char n[64];
#define V(x, len) (snprintf(n, sizeof n, "blk.%u." x, l), read_floats(s, n, 1, len))
#define M(x, r, cc) (snprintf(n, sizeof n, "blk.%u." x, l), read_ternary(s, n, r, cc))
        V("attn_norm", E); V("attn_sub_norm", Q); V("ffn_norm", E); V("ffn_sub_norm", F);
        M("attn_q", Q, E); M("attn_k", KV, E); M("attn_v", KV, E); M("attn_output", E, Q);
        M("ffn_gate", F, E); M("ffn_up", F, E); M("ffn_down", E, F);
#undef V
#undef M
    }
    /* a name that does not exist and a wrong shape */
    read_ternary(s, "blk.99999.attn_q", 1, 1);
    read_floats(s, "output_norm", 2, E);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bn_source *s;
    bn_error err;
    if (bn_source_open_gguf_mem(data, size, "fuzz.gguf", &s, &err) == 0) {
        read_all(s);
        bn_source_close(s);
    }
    /* the bare container too: lookups of every type on whatever parsed */
    bn_gguf *g;
    if (bn_gguf_open_mem(data, size, "fuzz.gguf", &g, &err) == 0) {
        uint32_t u;
        float f;
        int b;
        bn_gguf_str str;
        const bn_gguf_kv *kv;
        for (uint64_t i = 0; i < g->n_kv && i < 64; i++) {
            char key[128];
            snprintf(key, sizeof key, "%.*s", (int)(g->kv[i].key.len < 127 ? g->kv[i].key.len : 127), g->kv[i].key.p);
            (void)bn_gguf_get_u32(g, key, 1, &u, &err);
            (void)bn_gguf_get_f32(g, key, 1, &f, &err);
            (void)bn_gguf_get_bool(g, key, 1, &b, &err);
            (void)bn_gguf_get_str(g, key, 1, &str, &err);
            if (bn_gguf_get_arr(g, key, 1, BN_GGUF_STRING, &kv, &err) == 1) {
                uint64_t pos = 0;
                for (uint64_t j = 0; j < kv->arr_n; j++) (void)bn_gguf_arr_next_str(kv, &pos);
            }
            if (bn_gguf_get_arr(g, key, 1, BN_GGUF_ARRAY_ANY_INT, &kv, &err) == 1 && kv->arr_n)
                (void)bn_gguf_arr_int(kv, kv->arr_n - 1);
        }
        bn_gguf_close(g);
    }
    return 0;
}
