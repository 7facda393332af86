/* A synthetic model seen as a conversion source: `bitnet mkmodel --format packed` packs it
 * through the same path as every real checkpoint, so the packer has one input shape. */
#include "model/source_synth.h"

#include <stdlib.h>
#include <string.h>

#include "model/tensor_table.h"

typedef struct synth_source {
    bn_source base;
    bn_synth synth;
} synth_source;

static int synth_ternary(bn_source *s, const char *name, uint64_t rows, uint64_t cols,
                         int8_t *t, float *scale, bn_error *err)
{
    bn_synth_ternary(&((synth_source *)s)->synth, name, rows, cols, t, scale);
    return 0;
}

static int synth_floats(bn_source *s, const char *name, uint64_t rows, uint64_t cols,
                        uint64_t row0, uint64_t n, float *out, bn_error *err)
{
    const bn_synth *sy = &((synth_source *)s)->synth;
    int embd = !strcmp(name, "token_embd"), head = !strcmp(name, "output");
    if (head && sy->cfg.tied) return bn_err(err, "synthetic model: tensor output: the model is tied (no output tensor)");
    if (embd || head) {
        if (cols != sy->cfg.n_embd || row0 + n > sy->cfg.n_vocab || row0 + n < row0)
            return bn_err(err, "synthetic tensor %s: unexpected shape or row range", name);
        for (uint64_t r = 0; r < n; r++)
            (embd ? bn_synth_embedding_row : bn_synth_output_row)(sy, (uint32_t)(row0 + r), out + r * cols);
        return 0;
    }
    uint32_t l;
    const bn_layer_tensor_def *d = bn_layer_tensor_parse(name, &l);
    if (d && !bn_layer_tensor_present(&sy->cfg, d))
        return bn_err(err, "synthetic model: tensor %s: this model has no sub-norms", name);
    if (rows != 1 || row0 != 0 || n != 1) return bn_err(err, "synthetic tensor %s: unexpected row range", name);
    bn_synth_norm(sy, name, cols, out);
    return 0;
}

static void synth_close(bn_source *s)
{
    bn_source_base_free(s);
    free(s);
}

static const struct bn_source_ops synth_ops = {synth_ternary, synth_floats, synth_close};

int bn_source_open_synth(const bn_synth *sy, const bn_vocab *v, bn_source **out, bn_error *err)
{
    synth_source *s = calloc(1, sizeof *s);
    if (!s) return bn_err(err, "out of memory");
    s->base.ops = &synth_ops;
    s->synth = *sy;
    s->base.cfg = sy->cfg;
    s->base.vocab = bn_vocab_clone(v);
    s->base.kind = strdup("synthetic");
    s->base.path = strdup("(synthetic)");
    if (!s->base.vocab || !s->base.kind || !s->base.path) {
        synth_close(&s->base);
        return bn_err(err, "out of memory");
    }
    *out = &s->base;
    return 0;
}
