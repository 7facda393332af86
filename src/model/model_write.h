/* The packer: any bn_source -> one packed model file (docs/model-format.md). */
#ifndef BN_MODEL_WRITE_H
#define BN_MODEL_WRITE_H

#include "model/source.h"

/* Called after each tensor is written: tensor i (1-based) of n, bytes written so far of the
 * file's total, and the tensor's name. For a progress display; must not fail. */
typedef void (*bn_pack_progress_fn)(void *user, uint32_t i, uint32_t n, uint64_t bytes_done,
                                    uint64_t bytes_total, const char *name);

/* bn_pack_opts.lm_head_i8: which copies of the lm_head a file gets besides its f16 rows. */
enum {
    BN_PACK_LM_F16 = 0,    /* none (the f16 head only) */
    BN_PACK_LM_I8 = 1,     /* output_q8 + scale + screen bounds (format 1.1's set) */
    BN_PACK_LM_PLANES = 2, /* and output_q8.planes + its stage bounds (1.3): the default */
};

typedef struct bn_pack_opts {
    bn_tern_fmt tern;      /* packing of the ternary tensors (default BN_TERN_T5) */
    int lm_head_i8;        /* the lm_head copies stored besides the f16 rows: BN_PACK_LM_* (default
                            * BN_PACK_LM_PLANES) */
    bn_pack_progress_fn progress; /* NULL (default): silent */
    void *progress_user;
} bn_pack_opts;

void bn_pack_opts_default(bn_pack_opts *o);

/* Streams src tensor by tensor into out_path, atomically (temp file, fsync, rename): a reader
 * never sees a half-written file. Peak memory is one tensor plus a band of embedding rows. */
int bn_pack_write(bn_source *src, const char *out_path, const bn_pack_opts *o, bn_error *err);

/* Canonical name of layer tensor kind k for layer l ("blk.3.attn_q"). */
void bn_layer_tensor_name(char *buf, size_t len, uint32_t layer, const char *kind);

#endif
