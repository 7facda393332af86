/* A synthetic model seen as a conversion source: `bitnet mkmodel --format packed` packs it
 * through the same path as every real checkpoint, so the packer has one input shape. */
#include "model/source_synth.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/half.h"

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
    if (!strcmp(name, "token_embd") || !strcmp(name, "output")) {
        for (uint64_t r = 0; r < n; r++) bn_synth_embedding_row(sy, (uint32_t)(row0 + r), out + r * cols);
        return 0;
    }
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
