/* GGUF reader: validates the header of an untrusted file once, then serves lookups.
 *
 * Invariants established by parse(): every bn_gguf_str, array payload and tensor data range
 * lies inside [base, base + size); counts that size allocations were bounded by the bytes that
 * remain in the file (each element occupies at least one byte of it), so a 100-byte file can
 * never make us allocate more than a few kilobytes. */
#include "model/gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/checked.h"
#include "model/tl_layout.h"

/* ---- cursor over the untrusted bytes --------------------------------------------------- */

typedef struct cursor {
    const uint8_t *base;
    uint64_t size, pos;
    const char *path;
    bn_error *err;
} cursor;

/* Every failed read names the field being read and where: the caller passes `what`. */
static int need(cursor *c, uint64_t n, const char *what)
{
    if (!bn_range_ok(c->pos, n, c->size))
        return bn_err(c->err, "%s: %s at offset %llu: needs %llu bytes but the file ends at %llu bytes",
                      c->path, what, (unsigned long long)c->pos, (unsigned long long)n,
                      (unsigned long long)c->size);
    return 0;
}

static int rd(cursor *c, void *dst, uint64_t n, const char *what)
{
    if (need(c, n, what) != 0) return -1;
    memcpy(dst, c->base + c->pos, n);
    c->pos += n;
    return 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what) { return rd(c, v, 4, what); }
static int rd_u64(cursor *c, uint64_t *v, const char *what) { return rd(c, v, 8, what); }

static int rd_str(cursor *c, bn_gguf_str *s, const char *what)
{
    uint64_t len;
    if (rd_u64(c, &len, what) != 0) return -1;
    if (need(c, len, what) != 0) return -1;
    s->p = (const char *)c->base + c->pos;
    s->len = len;
    c->pos += len;
    return 0;
}

static uint64_t remaining(const cursor *c) { return c->size - c->pos; }

/* ---- names for messages ---------------------------------------------------------------- */

const char *bn_gguf_str_show(bn_gguf_str s, char *buf, size_t n)
{
    size_t max = n - 1, cut = 0;
    uint64_t len = s.len;
    if (len > max) { len = max - 3; cut = 1; }
    for (uint64_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        buf[i] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    if (cut) { memcpy(buf + len, "...", 3); len += 3; }
    buf[len] = 0;
    return buf;
}


static const char *vtype_name(uint32_t t)
{
    static const char *names[BN_GGUF_VTYPE_COUNT] = {
        "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool",
        "string", "array", "uint64", "int64", "float64"};
    return t < BN_GGUF_VTYPE_COUNT ? names[t] : "unknown type";
}

/* Size of a scalar value type; 0 for STRING/ARRAY/unknown. */
static uint64_t vtype_size(uint32_t t)
{
    static const uint8_t sz[BN_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < BN_GGUF_VTYPE_COUNT ? sz[t] : 0;
}

static int vtype_is_int(uint32_t t)
{
    return t <= BN_GGUF_I32 || t == BN_GGUF_U64 || t == BN_GGUF_I64;
}

const char *bn_ggml_type_name(uint32_t type, char buf[16])
{
    switch (type) {
    case BN_GGML_F32: return "F32";
    case BN_GGML_F16: return "F16";
    case BN_GGML_BF16: return "BF16";
    case BN_GGML_TQ1_0: return "TQ1_0";
    case BN_GGML_TQ2_0: return "TQ2_0";
    case BN_GGML_I2_S: return "I2_S";
    case BN_GGML_TL1: return "TL1";
    case BN_GGML_TL2: return "TL2";
    default: snprintf(buf, 16, "type %u", type); return buf;
    }
}

int bn_gguf_arch_is_bitnet(const char *arch)
{
    return arch && (!strcmp(arch, "bitnet") || !strcmp(arch, "bitnet-b1.58") || !strcmp(arch, "bitnet-25"));
}

/* bitnet.cpp's llama ftypes: I2_S 40, TL1 38, TL2 39 (upstream: 36-37 TQ, 38 MXFP4_MOE, whose
 * tensors are type 39, so ftype 38 with TL1 tensors and 39 with TL2 ones are unambiguous). */
int bn_gguf_fork_types(const bn_gguf *g, uint32_t type)
{
    if (bn_gguf_arch_is_bitnet(g->arch)) return 1;
    switch (type) {
    case BN_GGML_I2_S: return g->file_type == 40;
    case BN_GGML_TL1: return g->file_type == 38;
    case BN_GGML_TL2: return g->file_type == 39;
    default: return 0;
    }
}

uint64_t bn_ggml_nbytes(uint32_t type, uint64_t n, uint64_t ne0, const char **why)
{
    uint64_t out;
    *why = NULL;
    switch (type) {
    case BN_GGML_F32:
        if (!bn_mul_ok(n, 4, &out)) break;
        return out;
    case BN_GGML_F16:
    case BN_GGML_BF16:
        if (!bn_mul_ok(n, 2, &out)) break;
        return out;
    case BN_GGML_TQ1_0:
    case BN_GGML_TQ2_0:
        /* ggml lays rows out as whole 256-element blocks. */
        if (ne0 % 256) { *why = "ne0 is not a multiple of the 256-element block"; return 0; }
        return n / 256 * (type == BN_GGML_TQ1_0 ? 54 : 66);
    case BN_GGML_I2_S:
        /* bitnet.cpp's ggml_nbytes: n/4 packed bytes, then a 32-byte tail holding the f32 scale.
         * The packing is in 128-element blocks over the flattened matrix. */
        if (n % 128) { *why = "element count is not a multiple of the 128-element I2_S block"; return 0; }
        return n / 4 + 32;
    default:
        *why = "unsupported tensor type";
        return 0;
    }
    *why = "byte size overflows 64 bits";
    return 0;
}

/* ---- metadata ---------------------------------------------------------------------------- */

static int skip_value(cursor *c, uint32_t type, int depth, const char *key);

/* Validates an array's payload in place (strings walked, nested arrays recursed up to a fixed
 * depth) and records where it lies. The count is checked against the bytes left before any
 * walk, so a huge count fails fast instead of looping. */
static int parse_array(cursor *c, bn_gguf_kv *kv, int depth, const char *key)
{
    uint32_t et;
    uint64_t n;
    if (depth >= BN_GGUF_MAX_ARRAY_DEPTH)
        return bn_err(c->err, "%s: metadata key '%s': arrays nested deeper than %d levels", c->path, key,
                      BN_GGUF_MAX_ARRAY_DEPTH);
    if (rd_u32(c, &et, "array element type") != 0 || rd_u64(c, &n, "array length") != 0)
        return bn_err_prefix(c->err, "metadata key '%s'", key);
    if (et >= BN_GGUF_VTYPE_COUNT)
        return bn_err(c->err, "%s: metadata key '%s': unknown array element type %u", c->path, key, et);
    /* Minimum bytes per element: a scalar's size, 8 for a string's length, 12 for an array's
     * type + length. */
    uint64_t min = et == BN_GGUF_STRING ? 8 : et == BN_GGUF_ARRAY ? 12 : vtype_size(et);
    if (n > remaining(c) / min)
        return bn_err(c->err, "%s: metadata key '%s': array of %llu %s elements cannot fit in the %llu bytes left",
                      c->path, key, (unsigned long long)n, vtype_name(et), (unsigned long long)remaining(c));
    uint64_t start = c->pos;
    if (et == BN_GGUF_STRING || et == BN_GGUF_ARRAY) {
        for (uint64_t i = 0; i < n; i++)
            if (skip_value(c, et, depth + 1, key) != 0) return -1;
    } else {
        c->pos += n * min; /* fits: checked above */
    }
    if (kv) {
        kv->arr_type = et;
        kv->arr_n = n;
        kv->arr_data = c->base + start;
        kv->arr_bytes = c->pos - start;
    }
    return 0;
}

static int skip_value(cursor *c, uint32_t type, int depth, const char *key)
{
    if (type == BN_GGUF_STRING) {
        bn_gguf_str s;
        if (rd_str(c, &s, "string value") != 0) return bn_err_prefix(c->err, "metadata key '%s'", key);
        return 0;
    }
    if (type == BN_GGUF_ARRAY) return parse_array(c, NULL, depth, key);
    if (need(c, vtype_size(type), "value") != 0) return bn_err_prefix(c->err, "metadata key '%s'", key);
    c->pos += vtype_size(type);
    return 0;
}

static int parse_scalar(cursor *c, bn_gguf_kv *kv, const char *key)
{
    uint8_t b[8] = {0};
    uint64_t sz = vtype_size(kv->type);
    if (rd(c, b, sz, "value") != 0) return bn_err_prefix(c->err, "metadata key '%s'", key);
    uint64_t u = 0;
    memcpy(&u, b, sz); /* little-endian: zero-extended */
    switch (kv->type) {
    case BN_GGUF_I8: kv->num.i = (int8_t)u; break;
    case BN_GGUF_I16: kv->num.i = (int16_t)u; break;
    case BN_GGUF_I32: kv->num.i = (int32_t)u; break;
    case BN_GGUF_I64: kv->num.i = (int64_t)u; break;
    case BN_GGUF_F32: { float f; memcpy(&f, b, 4); kv->num.f = f; break; }
    case BN_GGUF_F64: { double d; memcpy(&d, b, 8); kv->num.f = d; break; }
    case BN_GGUF_BOOL:
        if (u > 1) return bn_err(c->err, "%s: metadata key '%s': bool value %llu is not 0 or 1", c->path, key,
                                 (unsigned long long)u);
        kv->num.u = u;
        break;
    default: kv->num.u = u; break;
    }
    return 0;
}

static int parse_kv(cursor *c, bn_gguf_kv *kv, uint64_t idx)
{
    char key[96];
    if (rd_str(c, &kv->key, "metadata key name") != 0) return bn_err_prefix(c->err, "metadata entry %llu", (unsigned long long)idx);
    bn_gguf_str_show(kv->key, key, sizeof key);
    if (rd_u32(c, &kv->type, "value type") != 0) return bn_err_prefix(c->err, "metadata key '%s'", key);
    if (kv->type >= BN_GGUF_VTYPE_COUNT)
        return bn_err(c->err, "%s: metadata key '%s': unknown value type %u", c->path, key, kv->type);
    if (kv->type == BN_GGUF_STRING) {
        if (rd_str(c, &kv->str, "string value") != 0) return bn_err_prefix(c->err, "metadata key '%s'", key);
        return 0;
    }
    if (kv->type == BN_GGUF_ARRAY) return parse_array(c, kv, 0, key);
    return parse_scalar(c, kv, key);
}

/* ---- sorted indices for lookups and duplicate detection ------------------------------- */

static int cmp_str(bn_gguf_str a, bn_gguf_str b)
{
    uint64_t n = a.len < b.len ? a.len : b.len;
    int r = n ? memcmp(a.p, b.p, n) : 0;
    if (r) return r;
    return a.len < b.len ? -1 : a.len > b.len;
}

/* qsort has no context argument: sort (name, index) pairs instead. */
typedef struct named { bn_gguf_str s; uint64_t i; } named;
static int cmp_named(const void *a, const void *b) { return cmp_str(((const named *)a)->s, ((const named *)b)->s); }

/* Fills *out with the indices of names[] in sorted order; fails on a duplicate (reported via
 * *dup = index of one of the pair). */
static int sort_names(const bn_gguf_str *first, size_t stride, uint64_t n, uint64_t **out, uint64_t *dup)
{
    *dup = UINT64_MAX;
    named *tmp = malloc((n ? n : 1) * sizeof *tmp);
    uint64_t *idx = malloc((n ? n : 1) * sizeof *idx);
    if (!tmp || !idx) { free(tmp); free(idx); return -1; }
    for (uint64_t i = 0; i < n; i++) {
        tmp[i].s = *(const bn_gguf_str *)((const char *)first + i * stride);
        tmp[i].i = i;
    }
    qsort(tmp, n, sizeof *tmp, cmp_named);
    for (uint64_t i = 0; i < n; i++) {
        idx[i] = tmp[i].i;
        if (i && cmp_str(tmp[i - 1].s, tmp[i].s) == 0 && *dup == UINT64_MAX) *dup = tmp[i].i;
    }
    free(tmp);
    *out = idx;
    return 0;
}

static uint64_t find_sorted(const uint64_t *idx, uint64_t n, const void *first, size_t stride, const char *name)
{
    bn_gguf_str key = {name, strlen(name)};
    uint64_t lo = 0, hi = n;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        bn_gguf_str s = *(const bn_gguf_str *)((const char *)first + idx[mid] * stride);
        int r = cmp_str(s, key);
        if (r == 0) return idx[mid];
        if (r < 0) lo = mid + 1;
        else hi = mid;
    }
    return UINT64_MAX;
}

const bn_gguf_kv *bn_gguf_find(const bn_gguf *g, const char *key)
{
    uint64_t i = find_sorted(g->kv_sorted, g->n_kv, g->kv, sizeof *g->kv, key);
    return i == UINT64_MAX ? NULL : &g->kv[i];
}

const bn_gguf_tensor *bn_gguf_tensor_find(const bn_gguf *g, const char *name)
{
    uint64_t i = find_sorted(g->t_sorted, g->n_tensors, g->tensors, sizeof *g->tensors, name);
    return i == UINT64_MAX ? NULL : &g->tensors[i];
}

/* ---- header ------------------------------------------------------------------------------ */

static int parse_header(cursor *c, bn_gguf *g)
{
    char magic[4];
    if (rd(c, magic, 4, "magic") != 0) return -1;
    if (memcmp(magic, "GGUF", 4) != 0)
        return bn_err(c->err, "%s: magic: not a GGUF file (first bytes are not \"GGUF\")", c->path);
    if (rd_u32(c, &g->version, "version") != 0) return -1;
    if (g->version == 1)
        return bn_err(c->err, "%s: version: GGUF v1 (32-bit counts) is not supported; re-convert to v3", c->path);
    if (g->version != 2 && g->version != 3)
        return bn_err(c->err, "%s: version: unknown GGUF version %u (supported: 2, 3%s)", c->path, g->version,
                      (g->version & 0xffff) == 0 ? "; a big-endian file?" : "");
    if (rd_u64(c, &g->n_tensors, "tensor count") != 0 || rd_u64(c, &g->n_kv, "metadata count") != 0) return -1;
    /* A KV takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at least
     * 8 + 4 + 8 + 4 + 8. Larger counts cannot be honest. */
    if (g->n_kv > remaining(c) / 13)
        return bn_err(c->err, "%s: metadata count: %llu entries cannot fit in a %llu-byte file", c->path,
                      (unsigned long long)g->n_kv, (unsigned long long)c->size);
    if (g->n_tensors > remaining(c) / 32)
        return bn_err(c->err, "%s: tensor count: %llu tensors cannot fit in a %llu-byte file", c->path,
                      (unsigned long long)g->n_tensors, (unsigned long long)c->size);
    return 0;
}

/* Arrays grow as entries actually parse, so a lying count in a large file costs nothing: memory
 * stays proportional to the header bytes really present. Ensures room for index i. */
static int grow(void **arr, uint64_t *cap, uint64_t i, size_t elem)
{
    if (i < *cap) return 0;
    uint64_t n = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, (size_t)n * elem); /* n <= 2 * file size / 13: no overflow */
    if (!p) return -1;
    memset((char *)p + *cap * elem, 0, (size_t)(n - *cap) * elem);
    *arr = p;
    *cap = n;
    return 0;
}

static int parse_metadata(cursor *c, bn_gguf *g)
{
    /* Room for entry 0 even when n_kv == 0, so g->kv is never NULL for sort_names(). */
    for (uint64_t i = 0; i < g->n_kv || i == 0; i++) {
        if (grow((void **)&g->kv, &g->kv_cap, i, sizeof *g->kv) != 0)
            return bn_err(c->err, "%s: out of memory for %llu metadata entries", c->path, (unsigned long long)g->n_kv);
        if (i < g->n_kv && parse_kv(c, &g->kv[i], i) != 0) return -1;
    }
    uint64_t dup;
    if (sort_names(&g->kv[0].key, sizeof *g->kv, g->n_kv, &g->kv_sorted, &dup) != 0)
        return bn_err(c->err, "%s: out of memory indexing metadata", c->path);
    if (dup != UINT64_MAX) {
        char key[96];
        return bn_err(c->err, "%s: metadata key '%s': appears more than once", c->path,
                      bn_gguf_str_show(g->kv[dup].key, key, sizeof key));
    }
    return 0;
}

/* general.architecture (required) and general.alignment (optional, a power of two). */
static int read_general(bn_gguf *g, bn_error *err)
{
    bn_gguf_str a;
    if (bn_gguf_get_str(g, "general.architecture", 1, &a, err) != 1) return -1;
    if (a.len == 0 || a.len > 64 || memchr(a.p, 0, a.len))
        return bn_err(err, "%s: metadata key 'general.architecture': not a plausible architecture name", g->path);
    if (!(g->arch = malloc(a.len + 1))) return bn_err(err, "%s: out of memory", g->path);
    memcpy(g->arch, a.p, a.len);
    g->arch[a.len] = 0;
    uint32_t al = BN_GGUF_DEFAULT_ALIGNMENT;
    int r = bn_gguf_get_u32(g, "general.alignment", 0, &al, err);
    if (r < 0) return -1;
    g->file_type = UINT32_MAX;
    if (bn_gguf_get_u32(g, "general.file_type", 0, &g->file_type, err) < 0) return -1;
    if (al == 0 || (al & (al - 1)) || al > (1u << 24))
        return bn_err(err, "%s: metadata key 'general.alignment': %u is not a power of two up to 2^24", g->path, al);
    g->alignment = al;
    return 0;
}

/* Type ids 36..39 mean I2_S/I8_S/TL1/TL2 in bitnet.cpp's fork and other things upstream. */
static int check_type(const bn_gguf *g, uint32_t type, const char *tname, bn_error *err)
{
    if (type == 37 && bn_gguf_arch_is_bitnet(g->arch))
        return bn_err(err, "%s: tensor '%s': type I8_S is bitnet.cpp's activation type, never a stored weight",
                      g->path, tname);
    if (type >= 36 && type <= 39 && (type == 37 || !bn_gguf_fork_types(g, type)))
        return bn_err(err, "%s: tensor '%s': type id %u means I2_S/I8_S/TL1/TL2 only in bitnet.cpp's ggml fork; "
                      "upstream ggml reuses ids 36+ for other types, and architecture '%s' is not a BitNet one "
                      "nor is general.file_type the fork's for this type (I2_S 40, TL1 38, TL2 39), so the id is "
                      "ambiguous", g->path, tname, type, g->arch);
    switch (type) {
    case BN_GGML_F32: case BN_GGML_F16: case BN_GGML_BF16:
    case BN_GGML_TQ1_0: case BN_GGML_TQ2_0: case BN_GGML_I2_S: case BN_GGML_TL1: case BN_GGML_TL2:
        return 0;
    default:
        return bn_err(err, "%s: tensor '%s': unsupported tensor type id %u (supported: F32, F16, BF16, TQ1_0, "
                      "TQ2_0, I2_S, TL1, TL2)", g->path, tname, type);
    }
}

/* TL1/TL2 sizes depend on the tile preset of the (rows, cols) shape (model/tl_layout.h). */
static int tl_nbytes(const bn_gguf *g, bn_gguf_tensor *t, const char *name, bn_error *err)
{
    if (t->n_dims != 2)
        return bn_err(err, "%s: tensor '%s': a %s tensor must be a matrix, not %u-dimensional", g->path, name,
                      t->type == BN_GGML_TL1 ? "TL1" : "TL2", t->n_dims);
    enum bn_tl_kind k = t->type == BN_GGML_TL1 ? BN_TL1 : BN_TL2;
    t->nbytes = bn_tl_nbytes(k, t->ne[1], t->ne[0], err);
    if (t->nbytes == 0) return bn_err_prefix(err, "%s: tensor '%s'", g->path, name);
    return 0;
}

static int parse_tensor_info(cursor *c, bn_gguf_tensor *t, uint64_t idx)
{
    char name[96];
    if (rd_str(c, &t->name, "tensor name") != 0) return bn_err_prefix(c->err, "tensor info %llu", (unsigned long long)idx);
    bn_gguf_str_show(t->name, name, sizeof name);
    if (rd_u32(c, &t->n_dims, "dimension count") != 0) return bn_err_prefix(c->err, "tensor '%s'", name);
    if (t->n_dims > BN_GGUF_MAX_DIMS)
        return bn_err(c->err, "%s: tensor '%s': dimension count %u is not 0..%d", c->path, name, t->n_dims, BN_GGUF_MAX_DIMS);
    t->n_elements = 1;
    for (uint32_t d = 0; d < BN_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (rd_u64(c, &t->ne[d], "dimension") != 0) return bn_err_prefix(c->err, "tensor '%s'", name);
        if (t->ne[d] == 0 || t->ne[d] > INT64_MAX)
            return bn_err(c->err, "%s: tensor '%s': dimension ne%u = %llu is not in 1..2^63-1", c->path, name, d,
                          (unsigned long long)t->ne[d]);
        if (!bn_mul_ok(t->n_elements, t->ne[d], &t->n_elements) || t->n_elements > INT64_MAX)
            return bn_err(c->err, "%s: tensor '%s': element count (product of dimensions) overflows", c->path, name);
    }
    if (rd_u32(c, &t->type, "type") != 0 || rd_u64(c, &t->offset, "data offset") != 0)
        return bn_err_prefix(c->err, "tensor '%s'", name);
    return 0;
}

/* Resolves each tensor's data range now that the data section start is known. */
static int place_tensor(bn_gguf *g, bn_gguf_tensor *t, bn_error *err)
{
    char name[96];
    bn_gguf_str_show(t->name, name, sizeof name);
    if (check_type(g, t->type, name, err) != 0) return -1;
    if (t->type == BN_GGML_TL1 || t->type == BN_GGML_TL2) {
        if (tl_nbytes(g, t, name, err) != 0) return -1;
    } else {
        const char *why;
        t->nbytes = bn_ggml_nbytes(t->type, t->n_elements, t->ne[0], &why);
        char tb[16];
        if (why) return bn_err(err, "%s: tensor '%s': %s: %s", g->path, name, bn_ggml_type_name(t->type, tb), why);
    }
    if (t->offset % g->alignment)
        return bn_err(err, "%s: tensor '%s': data offset %llu is not a multiple of the alignment %llu", g->path, name,
                      (unsigned long long)t->offset, (unsigned long long)g->alignment);
    uint64_t off, end;
    if (!bn_add_ok(g->data_off, t->offset, &off) || !bn_add_ok(off, t->nbytes, &end))
        return bn_err(err, "%s: tensor '%s': data offset %llu + %llu bytes extends past end of file (%llu bytes)",
                      g->path, name, (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                      (unsigned long long)g->size);
    if (end > g->size)
        return bn_err(err, "%s: tensor '%s': data [%llu, %llu) extends past end of file (%llu bytes)", g->path, name,
                      (unsigned long long)off, (unsigned long long)end, (unsigned long long)g->size);
    t->data = g->base + off;
    return 0;
}

static int parse_tensors(cursor *c, bn_gguf *g)
{
    for (uint64_t i = 0; i < g->n_tensors || i == 0; i++) { /* as for metadata: never NULL */
        if (grow((void **)&g->tensors, &g->t_cap, i, sizeof *g->tensors) != 0)
            return bn_err(c->err, "%s: out of memory for %llu tensors", c->path, (unsigned long long)g->n_tensors);
        if (i < g->n_tensors && parse_tensor_info(c, &g->tensors[i], i) != 0) return -1;
    }
    uint64_t dup;
    if (sort_names(&g->tensors[0].name, sizeof *g->tensors, g->n_tensors, &g->t_sorted, &dup) != 0)
        return bn_err(c->err, "%s: out of memory indexing tensors", c->path);
    if (dup != UINT64_MAX) {
        char name[96];
        return bn_err(c->err, "%s: tensor '%s': declared more than once (duplicate tensor)", c->path,
                      bn_gguf_str_show(g->tensors[dup].name, name, sizeof name));
    }
    /* The data section starts at the first alignment boundary after the tensor infos. */
    g->data_off = bn_align_up(c->pos, g->alignment); /* pos <= size < 2^63: cannot overflow */
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (place_tensor(g, &g->tensors[i], c->err) != 0) return -1;
    return 0;
}

static int parse(bn_gguf *g, bn_error *err)
{
    cursor c = {g->base, g->size, 0, g->path, err};
    if (parse_header(&c, g) != 0 || parse_metadata(&c, g) != 0) return -1;
    if (read_general(g, err) != 0) return -1;
    return parse_tensors(&c, g);
}

static int open_common(bn_gguf *g, bn_gguf **out, bn_error *err)
{
    if (parse(g, err) != 0) {
        bn_gguf_close(g);
        return -1;
    }
    *out = g;
    return 0;
}

int bn_gguf_open_mem(const void *data, size_t len, const char *name, bn_gguf **out, bn_error *err)
{
    *out = NULL;
    bn_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(name))) {
        free(g);
        return bn_err(err, "%s: out of memory", name);
    }
    g->base = data;
    g->size = len;
    return open_common(g, out, err);
}

int bn_gguf_open(const char *path, bn_gguf **out, bn_error *err)
{
    *out = NULL;
    bn_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        return bn_err(err, "%s: out of memory", path);
    }
    if (bn_map_file(path, &g->map, err) != 0) {
        free(g->path);
        free(g);
        return -1;
    }
    g->base = g->map.data;
    g->size = g->map.len;
    return open_common(g, out, err);
}

void bn_gguf_close(bn_gguf *g)
{
    if (!g) return;
    if (g->map.data) bn_unmap(&g->map);
    free(g->kv);
    free(g->tensors);
    free(g->kv_sorted);
    free(g->t_sorted);
    free(g->arch);
    free(g->path);
    free(g);
}

/* ---- typed lookups ----------------------------------------------------------------------- */

static int lookup(const bn_gguf *g, const char *key, int required, const bn_gguf_kv **kv, bn_error *err)
{
    *kv = bn_gguf_find(g, key);
    if (*kv) return 1;
    if (required) return bn_err(err, "%s: metadata key '%s': missing", g->path, key);
    return 0;
}

static int wrong_type(const bn_gguf *g, const char *key, const char *want, const bn_gguf_kv *kv, bn_error *err)
{
    if (kv->type == BN_GGUF_ARRAY)
        return bn_err(err, "%s: metadata key '%s': expected %s, found array of %s", g->path, key, want,
                      vtype_name(kv->arr_type));
    return bn_err(err, "%s: metadata key '%s': expected %s, found %s", g->path, key, want, vtype_name(kv->type));
}

int bn_gguf_get_u32(const bn_gguf *g, const char *key, int required, uint32_t *out, bn_error *err)
{
    const bn_gguf_kv *kv;
    int r = lookup(g, key, required, &kv, err);
    if (r <= 0) return r;
    if (!vtype_is_int(kv->type)) return wrong_type(g, key, "uint32", kv, err);
    int is_signed = kv->type == BN_GGUF_I8 || kv->type == BN_GGUF_I16 || kv->type == BN_GGUF_I32 || kv->type == BN_GGUF_I64;
    if ((is_signed && (kv->num.i < 0 || kv->num.i > (int64_t)UINT32_MAX)) || (!is_signed && kv->num.u > UINT32_MAX))
        return bn_err(err, "%s: metadata key '%s': value %lld does not fit in uint32", g->path, key,
                      is_signed ? (long long)kv->num.i : (long long)kv->num.u);
    *out = is_signed ? (uint32_t)kv->num.i : (uint32_t)kv->num.u;
    return 1;
}

int bn_gguf_get_f32(const bn_gguf *g, const char *key, int required, float *out, bn_error *err)
{
    const bn_gguf_kv *kv;
    int r = lookup(g, key, required, &kv, err);
    if (r <= 0) return r;
    if (kv->type != BN_GGUF_F32 && kv->type != BN_GGUF_F64) return wrong_type(g, key, "float32", kv, err);
    *out = (float)kv->num.f;
    return 1;
}

int bn_gguf_get_bool(const bn_gguf *g, const char *key, int required, int *out, bn_error *err)
{
    const bn_gguf_kv *kv;
    int r = lookup(g, key, required, &kv, err);
    if (r <= 0) return r;
    if (kv->type != BN_GGUF_BOOL) return wrong_type(g, key, "bool", kv, err);
    *out = (int)kv->num.u;
    return 1;
}

int bn_gguf_get_str(const bn_gguf *g, const char *key, int required, bn_gguf_str *out, bn_error *err)
{
    const bn_gguf_kv *kv;
    int r = lookup(g, key, required, &kv, err);
    if (r <= 0) return r;
    if (kv->type != BN_GGUF_STRING) return wrong_type(g, key, "string", kv, err);
    *out = kv->str;
    return 1;
}

int bn_gguf_get_arr(const bn_gguf *g, const char *key, int required, uint32_t elem_type,
                    const bn_gguf_kv **out, bn_error *err)
{
    const bn_gguf_kv *kv;
    int r = lookup(g, key, required, &kv, err);
    if (r <= 0) return r;
    if (kv->type != BN_GGUF_ARRAY)
        return bn_err(err, "%s: metadata key '%s': expected array, found %s", g->path, key, vtype_name(kv->type));
    int ok = elem_type == BN_GGUF_ARRAY_ANY_INT ? vtype_is_int(kv->arr_type) : kv->arr_type == elem_type;
    if (!ok)
        return bn_err(err, "%s: metadata key '%s': expected array of %s, found array of %s", g->path, key,
                      elem_type == BN_GGUF_ARRAY_ANY_INT ? "integers" : vtype_name(elem_type), vtype_name(kv->arr_type));
    *out = kv;
    return 1;
}

int64_t bn_gguf_arr_int(const bn_gguf_kv *kv, uint64_t i)
{
    uint64_t sz = vtype_size(kv->arr_type), u = 0;
    memcpy(&u, kv->arr_data + i * sz, sz);
    switch (kv->arr_type) {
    case BN_GGUF_I8: return (int8_t)u;
    case BN_GGUF_I16: return (int16_t)u;
    case BN_GGUF_I32: return (int32_t)u;
    default: return (int64_t)u; /* unsigned types and I64; U64 above 2^63 wraps negative */
    }
}

bn_gguf_str bn_gguf_arr_next_str(const bn_gguf_kv *kv, uint64_t *pos)
{
    /* Validated at open: each element is a u64 length then that many bytes, all inside. */
    bn_gguf_str s;
    memcpy(&s.len, kv->arr_data + *pos, 8);
    s.p = (const char *)kv->arr_data + *pos + 8;
    *pos += 8 + s.len;
    return s;
}
