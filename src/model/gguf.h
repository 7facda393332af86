/* GGUF v2/v3 container: a reader over a read-only mapping, and a writer for synthetic test
 * models in bitnet.cpp's exact form.
 *
 * The reader parses UNTRUSTED bytes. bn_gguf_open() validates the whole header once: every
 * count is bounded by the bytes left in the file (so no allocation is larger than a small
 * multiple of the file size), every string and array lies inside the file, nested arrays are
 * depth-limited, and every tensor's data range [data_off + offset, + nbytes) lies inside the
 * file. After a successful open, every pointer in the structures below may be dereferenced
 * for the advertised length without further checks. Tensor data itself is never read at open.
 *
 * Byte order: GGUF is little-endian and so are the hosts we target (x86-64, aarch64); values
 * are read with memcpy (no alignment assumptions). */
#ifndef BN_MODEL_GGUF_H
#define BN_MODEL_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "base/file.h"

/* Metadata value types (gguf_type). */
enum bn_gguf_vtype {
    BN_GGUF_U8 = 0, BN_GGUF_I8 = 1, BN_GGUF_U16 = 2, BN_GGUF_I16 = 3,
    BN_GGUF_U32 = 4, BN_GGUF_I32 = 5, BN_GGUF_F32 = 6, BN_GGUF_BOOL = 7,
    BN_GGUF_STRING = 8, BN_GGUF_ARRAY = 9, BN_GGUF_U64 = 10, BN_GGUF_I64 = 11,
    BN_GGUF_F64 = 12,
    BN_GGUF_VTYPE_COUNT
};

/* ggml tensor types this project reads. 36 (I2_S), 38 (TL1) and 39 (TL2) have these meanings
 * only in bitnet.cpp's ggml fork (upstream reuses 36+ for other types), so they are accepted
 * only when the file is one of bitnet.cpp's: a BitNet architecture, or general.file_type set
 * to the fork's ftype of that very type (I2_S 40, TL1 38, TL2 39), as bitnet.cpp writes its
 * llama-architecture files (Llama3-8B-1.58, Falcon3). */
enum bn_ggml_type {
    BN_GGML_F32 = 0,
    BN_GGML_F16 = 1,
    BN_GGML_BF16 = 30,
    BN_GGML_TQ1_0 = 34,
    BN_GGML_TQ2_0 = 35,
    BN_GGML_I2_S = 36,
    BN_GGML_TL1 = 38,
    BN_GGML_TL2 = 39,
};

#define BN_GGUF_DEFAULT_ALIGNMENT 32
#define BN_GGUF_MAX_DIMS 4
#define BN_GGUF_MAX_ARRAY_DEPTH 4   /* arrays of arrays nest at most this deep */

/* A string inside the mapping: not NUL-terminated. */
typedef struct bn_gguf_str {
    const char *p;
    uint64_t len;
} bn_gguf_str;

typedef struct bn_gguf_kv {
    bn_gguf_str key;
    uint32_t type;                 /* enum bn_gguf_vtype */
    union {
        uint64_t u;                /* U8..U64, BOOL */
        int64_t i;                 /* I8..I64 */
        double f;                  /* F32, F64 */
    } num;
    bn_gguf_str str;               /* STRING */
    /* ARRAY: element type, count, and the raw bytes of the elements (validated). */
    uint32_t arr_type;
    uint64_t arr_n;
    const uint8_t *arr_data;
    uint64_t arr_bytes;
} bn_gguf_kv;

typedef struct bn_gguf_tensor {
    bn_gguf_str name;
    uint32_t n_dims;               /* 0..4; 0 is a scalar (gguf-py writes numpy scalars so) */
    uint64_t ne[BN_GGUF_MAX_DIMS]; /* unused dims are 1; ne0 = innermost (columns) */
    uint64_t n_elements;
    uint32_t type;                 /* enum bn_ggml_type */
    uint64_t offset;               /* relative to the data section */
    uint64_t nbytes;
    const uint8_t *data;           /* in the mapping; nbytes are readable */
} bn_gguf_tensor;

typedef struct bn_gguf {
    char *path;                    /* for messages (malloc'd) */
    const uint8_t *base;           /* the whole file */
    uint64_t size;
    uint32_t version;
    uint64_t n_kv, n_tensors;
    bn_gguf_kv *kv;
    bn_gguf_tensor *tensors;
    uint64_t alignment;
    uint64_t data_off;             /* start of the tensor data section */
    char *arch;                    /* general.architecture, NUL-terminated (malloc'd) */
    uint32_t file_type;            /* general.file_type, UINT32_MAX when absent */

    /* private */
    bn_mapping map;                /* owned when opened from a path */
    uint64_t *kv_sorted;           /* kv indices sorted by key, for lookups */
    uint64_t *t_sorted;            /* tensor indices sorted by name */
    uint64_t kv_cap, t_cap;        /* allocated entries of kv / tensors */
} bn_gguf;

/* Maps and parses path. */
int bn_gguf_open(const char *path, bn_gguf **out, bn_error *err);
/* Parses an in-memory image; data must stay alive (unchanged) until bn_gguf_close. `name` is
 * used in messages. */
int bn_gguf_open_mem(const void *data, size_t len, const char *name, bn_gguf **out, bn_error *err);
void bn_gguf_close(bn_gguf *g);

/* Is arch one of bitnet.cpp's BitNet architectures ("bitnet", "bitnet-b1.58", "bitnet-25"),
 * i.e. one whose files use the fork's type ids 36..39? */
int bn_gguf_arch_is_bitnet(const char *arch);
/* Does g use the fork's meaning of type id `type` (36..39): a BitNet arch, or general.file_type
 * naming that type (see enum bn_ggml_type)? */
int bn_gguf_fork_types(const bn_gguf *g, uint32_t type);
/* "F32", "I2_S", ... or "type <id>". Returns buf or a static string. */
const char *bn_ggml_type_name(uint32_t type, char buf[16]);
/* Bytes of a tensor of n elements whose innermost dim is ne0; 0 if the type is unknown or the
 * shape does not fit the type's blocks (sets *why to a reason then). Overflow-checked. */
uint64_t bn_ggml_nbytes(uint32_t type, uint64_t n, uint64_t ne0, const char **why);

/* Lookups. Each returns 1 if found (and *out set), 0 if absent and !required, -1 on error
 * (absent but required, or wrong type: "FILE: metadata key 'K': expected uint32, found
 * string"). Integer getters accept any integer type whose value fits. */
const bn_gguf_kv *bn_gguf_find(const bn_gguf *g, const char *key);
int bn_gguf_get_u32(const bn_gguf *g, const char *key, int required, uint32_t *out, bn_error *err);
int bn_gguf_get_f32(const bn_gguf *g, const char *key, int required, float *out, bn_error *err);
int bn_gguf_get_bool(const bn_gguf *g, const char *key, int required, int *out, bn_error *err);
int bn_gguf_get_str(const bn_gguf *g, const char *key, int required, bn_gguf_str *out, bn_error *err);
/* An array whose elements have type elem_type (BN_GGUF_ARRAY_ANY_INT: any integer type). */
#define BN_GGUF_ARRAY_ANY_INT 0xffffffffu
int bn_gguf_get_arr(const bn_gguf *g, const char *key, int required, uint32_t elem_type,
                    const bn_gguf_kv **out, bn_error *err);
/* Element i of an integer array (i < arr_n; the array was validated at open). */
int64_t bn_gguf_arr_int(const bn_gguf_kv *kv, uint64_t i);
/* Walks a string array: *pos starts at 0; returns the next element. Call exactly arr_n times. */
bn_gguf_str bn_gguf_arr_next_str(const bn_gguf_kv *kv, uint64_t *pos);

const bn_gguf_tensor *bn_gguf_tensor_find(const bn_gguf *g, const char *name);

/* Copies s into buf (size n >= 4) for messages: at most n-1 bytes, non-printables as '?',
 * "..." when cut. Returns buf. */
const char *bn_gguf_str_show(bn_gguf_str s, char *buf, size_t n);

struct bn_source;
/* bn_source_open_gguf() over an in-memory image (fuzzing, tests); data must outlive the
 * source. */
int bn_source_open_gguf_mem(const void *data, size_t len, const char *name, struct bn_source **out,
                            bn_error *err);

/* ---- writer ---------------------------------------------------------------------------- */

struct bn_synth;
struct bn_vocab;
/* Writes the synthetic model s with vocabulary v as a GGUF v3 file in the form bitnet.cpp 2025
 * writes for s->family (model/family.h): its arch ("bitnet-b1.58" for 2B-4T, "bitnet" for
 * 1bitLLM, "llama" for Llama3-8B-1.58 / Falcon3 with q/k rows permuted as llama.cpp's converter
 * does), that converter's metadata keys, tensors named from the tensor table (sub-norms only
 * when the config has them, an F16 "output" when untied), an SPM vocabulary (model "llama",
 * scores) or a gpt2 one with tokenizer.ggml.pre ("llama-bpe", "falcon3", "falcon_e").
 * token_embd F16, norms F32, linears in weight_type: 36 = I2_S, 35 = TQ2_0, 34 = TQ1_0,
 * 38 = TL1, 39 = TL2 (each with its "<name>.weight_scale" F32 scalar), 1 = F16 / 30 = BF16 /
 * 0 = F32 (values t * scale). TQ types need every linear's column count to be a multiple of
 * 256, I2_S of 128; TL types need a bitnet.cpp kernel preset for every linear's shape. Streams
 * tensor by tensor through the atomic writer. */
int bn_gguf_write_synth(const struct bn_synth *s, const struct bn_vocab *v, const char *path,
                        int weight_type, bn_error *err);
/* The weight type of an mkmodel format name: "gguf-i2_s" 36, "gguf-tq2_0" 35, "gguf-tq1_0" 34,
 * "gguf-tl1" 38, "gguf-tl2" 39, "gguf-f16" 1, "gguf-bf16" 30, "gguf-f32" 0; -1 otherwise. */
int bn_gguf_format_type(const char *format);

/* The placeholder chat template bitnet.cpp's convert-ms-to-gguf-bitnet.py embeds. */
extern const char bn_gguf_bitnet_placeholder_template[];

#endif
