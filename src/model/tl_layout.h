/* bitnet.cpp's TL1 (ARM) and TL2 (x86) weight layouts, as its converter writes them into GGUF
 * files (utils/convert-hf-to-gguf-bitnet.py, transform_to_tl1/tl2, with the tile presets that
 * utils/codegen_tl{1,2}.py generates kernels for). bitnetd never computes with these layouts: a
 * TL file is decoded to ternary codes once, at convert time, and repacked into our own format.
 *
 * A TL layout depends on tile sizes chosen per (rows, cols) shape by the codegen presets, so only
 * shapes with a preset can be decoded; any other gives an error that names the shape and the
 * tile configuration it would need. */
#ifndef BN_MODEL_TL_LAYOUT_H
#define BN_MODEL_TL_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

enum bn_tl_kind { BN_TL1 = 1, BN_TL2 = 2 };

/* ggml type ids of TL1/TL2 in bitnet.cpp's ggml fork; bn_tl_kind_of_ggml returns 0 otherwise. */
enum bn_tl_kind bn_tl_kind_of_ggml(uint32_t ggml_type);
uint32_t bn_tl_ggml_type(enum bn_tl_kind k);
const char *bn_tl_name(enum bn_tl_kind k);   /* "TL1", "TL2" */

/* Bytes of the weight data of a rows x cols (out x in) TL tensor, or 0 with err set when no
 * preset covers the shape (the message names the shape, the kind and the missing tiles). */
size_t bn_tl_nbytes(enum bn_tl_kind k, uint64_t rows, uint64_t cols, bn_error *err);
/* Decodes data (bn_tl_nbytes bytes) to t[rows*cols] in {-1,0,1}, row-major. The per-tensor
 * scale is stored separately (the "<name>_scale" F32 tensor) and is not touched here. */
int bn_tl_decode(enum bn_tl_kind k, const uint8_t *data, size_t nbytes, uint64_t rows,
                 uint64_t cols, int8_t *t, bn_error *err);
/* The inverse, as bitnet.cpp's converter writes it (synthetic TL files for tests). */
int bn_tl_encode(enum bn_tl_kind k, const int8_t *t, uint64_t rows, uint64_t cols,
                 uint8_t *data, size_t nbytes, bn_error *err);

#endif
