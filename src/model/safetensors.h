/* A reader for Hugging Face safetensors files and sharded checkpoints, over read-only mappings.
 *
 * File layout: an 8-byte little-endian header length N, N bytes of JSON, then the data section.
 * The JSON maps tensor names to {"dtype", "shape", "data_offsets": [begin, end)}, offsets being
 * relative to the data section; an optional "__metadata__" object is skipped.
 *
 * Files are UNTRUSTED: parsing checks every length, offset and shape product for overflow and
 * against the file, and rejects overlapping tensors, duplicate names and unsupported dtypes. After
 * a successful parse every tensor's [data, data + nbytes) lies inside the buffer, so callers may
 * read any element of it without further checks. Errors name the file and the field:
 *   "model.safetensors: tensor 'x': data_offsets end 1234 is past the data section (1000 bytes)".
 *
 * Gaps between tensors and trailing bytes are tolerated (they are harmless); the reference
 * library's writer never produces them. */
#ifndef BN_MODEL_SAFETENSORS_H
#define BN_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "base/file.h"

/* Header JSON larger than this is refused (the 2B-4T header is ~40 KB). */
#define BN_ST_MAX_HEADER ((uint64_t)100 << 20)
#define BN_ST_MAX_DIMS 8

enum bn_st_dtype { BN_ST_F32 = 1, BN_ST_F16, BN_ST_BF16, BN_ST_U8, BN_ST_I8 };

struct bn_st_file;

typedef struct bn_st_tensor {
    const char *name;          /* owned by the file */
    const struct bn_st_file *file;   /* the file holding it */
    uint32_t dtype;            /* enum bn_st_dtype */
    uint32_t n_dims;           /* 0 = scalar (one element) */
    uint64_t shape[BN_ST_MAX_DIMS];
    uint64_t n_elem;           /* product of shape */
    const uint8_t *data;       /* inside the file's buffer; unaligned in general */
    uint64_t nbytes;           /* n_elem * element size */
} bn_st_tensor;

typedef struct bn_st_file {
    char *name;                /* for messages (the file's base name); owned */
    bn_mapping map;            /* owned mapping when opened from a path; else empty */
    const uint8_t *buf;        /* the whole file (the mapping, or the caller's buffer) */
    size_t len;
    uint64_t data_off;         /* start of the data section: 8 + N */
    size_t n_tensors;
    bn_st_tensor *tensors;     /* sorted by name */
} bn_st_file;

/* Parses a safetensors file held in buf[0..len). The buffer is BORROWED: it must outlive the
 * result. name is used in messages. *out is freed with bn_st_close(). */
int bn_st_parse(const void *buf, size_t len, const char *name, bn_st_file **out, bn_error *err);
/* Maps path and parses it; the mapping is owned by the result. */
int bn_st_open(const char *path, bn_st_file **out, bn_error *err);
void bn_st_close(bn_st_file *f);
/* The tensor called name, or NULL. */
const bn_st_tensor *bn_st_find(const bn_st_file *f, const char *name);

/* Size in bytes of one element, and the spelling safetensors uses ("BF16"). */
size_t bn_st_dtype_size(uint32_t dtype);
const char *bn_st_dtype_name(uint32_t dtype);
/* Element i of a float tensor (F32, F16 or BF16) as float. Does not check i (the caller keeps
 * i < n_elem). */
float bn_st_float_at(const bn_st_tensor *t, uint64_t i);
/* Elements [first, first + n) as floats into out (the bulk form of bn_st_float_at; the caller
 * keeps first + n <= n_elem). */
void bn_st_floats(const bn_st_tensor *t, uint64_t first, uint64_t n, float *out);
/* Tells the kernel that elements [first, first + n) have been consumed: the whole pages inside
 * that range are dropped from this process's resident set (they stay in the page cache and fault
 * back in if read again). Streaming a 1 GB checkpoint thus keeps the RSS at about one tensor.
 * Only for files opened with bn_st_open (a no-op for caller buffers, whose pages it must never
 * discard). */
void bn_st_release(const bn_st_tensor *t, uint64_t first, uint64_t n);

/* A checkpoint directory: model.safetensors, or model.safetensors.index.json naming the shard
 * of every tensor. Shards are mapped lazily, each at most once, the first time one of their
 * tensors is asked for. */
typedef struct bn_st_set bn_st_set;

int bn_st_set_open(const char *dir, bn_st_set **out, bn_error *err);
void bn_st_set_close(bn_st_set *s);
/* Looks name up. Returns 0 and sets *t (NULL if the checkpoint has no such tensor) and *file
 * (the shard's name, for messages; valid while s lives); -1 with err set if the shard cannot be
 * read or does not contain a tensor the index assigns to it. */
int bn_st_set_get(bn_st_set *s, const char *name, const bn_st_tensor **t, const char **file,
                  bn_error *err);
/* Every tensor name the checkpoint declares (index order: sorted), for reporting extras. */
size_t bn_st_set_count(const bn_st_set *s);
const char *bn_st_set_name(const bn_st_set *s, size_t i);
/* "model.safetensors" or "model.safetensors.index.json": what the set was opened from. */
const char *bn_st_set_origin(const bn_st_set *s);

#endif
