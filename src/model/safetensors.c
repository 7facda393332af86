/* Safetensors reader (see safetensors.h). Everything in a file is untrusted: each number read
 * from the header is checked before it sizes or locates anything, so that a parsed bn_st_file
 * only ever points inside its buffer. */
#include "model/safetensors.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/checked.h"
#include "kernels/half.h"

/* Formats "file: message" into err and returns -1. */
#define FAIL(err, file, ...) (bn_err((err), __VA_ARGS__), bn_err_prefix((err), "%s", (file)))

static const struct {
    const char *name;
    uint32_t dtype;
    size_t size;
} dtypes[] = {
    {"F32", BN_ST_F32, 4}, {"F16", BN_ST_F16, 2}, {"BF16", BN_ST_BF16, 2}, {"U8", BN_ST_U8, 1}, {"I8", BN_ST_I8, 1},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

size_t bn_st_dtype_size(uint32_t dtype)
{
    for (size_t i = 0; i < N_DTYPES; i++)
        if (dtypes[i].dtype == dtype) return dtypes[i].size;
    return 0;
}

const char *bn_st_dtype_name(uint32_t dtype)
{
    for (size_t i = 0; i < N_DTYPES; i++)
        if (dtypes[i].dtype == dtype) return dtypes[i].name;
    return "?";
}

float bn_st_float_at(const bn_st_tensor *t, uint64_t i)
{
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case BN_ST_F32: {
        uint32_t u = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
                     (uint32_t)p[4 * i + 3] << 24;
        return bn_f32_from_bits(u);
    }
    case BN_ST_F16: return bn_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
    case BN_ST_BF16: return bn_bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
    case BN_ST_U8: return (float)p[i];
    case BN_ST_I8: return (float)(int8_t)p[i];
    default: return 0.0f;
    }
}

void bn_st_floats(const bn_st_tensor *t, uint64_t first, uint64_t n, float *out)
{
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case BN_ST_F32:
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(out, p + 4 * first, (size_t)n * 4); /* the file is little-endian, as is the host */
        return;
#else
        break;
#endif
    case BN_ST_BF16:
        p += 2 * first;
        for (uint64_t i = 0; i < n; i++) out[i] = bn_bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        return;
    case BN_ST_F16:
        p += 2 * first;
        for (uint64_t i = 0; i < n; i++) out[i] = bn_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        return;
    default: break;
    }
    for (uint64_t i = 0; i < n; i++) out[i] = bn_st_float_at(t, first + i);
}

void bn_st_release(const bn_st_tensor *t, uint64_t first, uint64_t n)
{
    if (!t->file || !t->file->map.data || !n) return;
    size_t esize = bn_st_dtype_size(t->dtype);
    bn_release_pages(t->data + first * esize, n * esize);
}

/* ---- one file ------------------------------------------------------------------------ */

/* A non-negative JSON integer. */
static int json_u64(const json_t *j, uint64_t *out)
{
    if (!json_is_integer(j) || json_integer_value(j) < 0) return -1;
    *out = (uint64_t)json_integer_value(j);
    return 0;
}

static int parse_dtype(const json_t *obj, const char *file, const char *name, uint32_t *dtype, bn_error *err)
{
    const char *s = json_string_value(json_object_get(obj, "dtype"));
    if (!s) return FAIL(err, file, "tensor '%.200s': dtype: missing or not a string", name);
    for (size_t i = 0; i < N_DTYPES; i++)
        if (!strcmp(s, dtypes[i].name)) {
            *dtype = dtypes[i].dtype;
            return 0;
        }
    return FAIL(err, file, "tensor '%.200s': dtype '%.20s' is not supported (expected F32, F16, BF16, U8 or I8)",
                name, s);
}

static int parse_shape(const json_t *obj, const char *file, bn_st_tensor *t, bn_error *err)
{
    const json_t *shape = json_object_get(obj, "shape");
    if (!json_is_array(shape)) return FAIL(err, file, "tensor '%.200s': shape: missing or not an array", t->name);
    size_t nd = json_array_size(shape);
    if (nd > BN_ST_MAX_DIMS)
        return FAIL(err, file, "tensor '%.200s': shape has %zu dimensions (at most %d supported)", t->name, nd,
                    BN_ST_MAX_DIMS);
    uint64_t n = 1;
    for (size_t d = 0; d < nd; d++) {
        if (json_u64(json_array_get(shape, d), &t->shape[d]))
            return FAIL(err, file, "tensor '%.200s': shape[%zu] is not a non-negative integer", t->name, d);
        if (!bn_mul_ok(n, t->shape[d], &n))
            return FAIL(err, file, "tensor '%.200s': shape: element count overflows 64 bits", t->name);
    }
    t->n_dims = (uint32_t)nd;
    t->n_elem = n;
    if (!bn_mul_ok(n, bn_st_dtype_size(t->dtype), &t->nbytes))
        return FAIL(err, file, "tensor '%.200s': shape: byte size overflows 64 bits", t->name);
    return 0;
}

/* data_offsets [begin, end) must be ordered, inside the data section and exactly the size that
 * dtype x shape needs. Sets t->data; *begin is returned for the overlap check. */
static int parse_offsets(const json_t *obj, const char *file, const uint8_t *data, uint64_t data_len,
                         bn_st_tensor *t, uint64_t *begin, bn_error *err)
{
    const json_t *off = json_object_get(obj, "data_offsets");
    uint64_t b, e;
    if (!json_is_array(off) || json_array_size(off) != 2)
        return FAIL(err, file, "tensor '%.200s': data_offsets: missing or not a [begin, end] pair", t->name);
    if (json_u64(json_array_get(off, 0), &b) || json_u64(json_array_get(off, 1), &e))
        return FAIL(err, file, "tensor '%.200s': data_offsets: not non-negative integers", t->name);
    if (e < b)
        return FAIL(err, file, "tensor '%.200s': data_offsets are reversed (begin %llu > end %llu)", t->name,
                    (unsigned long long)b, (unsigned long long)e);
    if (e > data_len)
        return FAIL(err, file, "tensor '%.200s': data_offsets end %llu is past the data section (%llu bytes)",
                    t->name, (unsigned long long)e, (unsigned long long)data_len);
    if (e - b != t->nbytes)
        return FAIL(err, file,
                    "tensor '%.200s': data_offsets span %llu bytes but dtype %s and shape need %llu", t->name,
                    (unsigned long long)(e - b), bn_st_dtype_name(t->dtype), (unsigned long long)t->nbytes);
    t->data = data + b;
    *begin = b;
    return 0;
}

typedef struct {
    uint64_t begin, end;
    size_t idx;
} span;

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const bn_st_tensor *)a)->name, ((const bn_st_tensor *)b)->name);
}

/* No two non-empty tensors may share a byte: a tensor aliasing another would let a crafted
 * file make one weight silently equal another. */
static int check_overlap(bn_st_file *f, const uint64_t *begins, bn_error *err)
{
    if (f->n_tensors < 2) return 0;
    span *s = malloc(f->n_tensors * sizeof *s);
    if (!s) return FAIL(err, f->name, "out of memory");
    for (size_t i = 0; i < f->n_tensors; i++) s[i] = (span){begins[i], begins[i] + f->tensors[i].nbytes, i};
    qsort(s, f->n_tensors, sizeof *s, cmp_span);
    int rc = 0;
    uint64_t end = 0;
    size_t last = 0;
    int have = 0;
    for (size_t i = 0; i < f->n_tensors && !rc; i++) {
        if (s[i].begin == s[i].end) continue;
        if (have && s[i].begin < end)
            rc = FAIL(err, f->name, "tensor '%.200s': data_offsets [%llu, %llu) overlap tensor '%.200s'",
                      f->tensors[s[i].idx].name, (unsigned long long)s[i].begin, (unsigned long long)s[i].end,
                      f->tensors[last].name);
        end = s[i].end;
        last = s[i].idx;
        have = 1;
    }
    free(s);
    return rc;
}

static int parse_tensors(bn_st_file *f, json_t *root, bn_error *err)
{
    size_t n = json_object_size(root) - (json_object_get(root, "__metadata__") ? 1 : 0);
    const uint8_t *data = f->buf + f->data_off;
    uint64_t data_len = f->len - f->data_off;
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    uint64_t *begins = calloc(n ? n : 1, sizeof *begins);
    if (!f->tensors || !begins) {
        free(begins);
        return FAIL(err, f->name, "out of memory for %zu tensors", n);
    }
    const char *key;
    json_t *val;
    int rc = 0;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(val)) {
                rc = FAIL(err, f->name, "__metadata__: not an object");
                break;
            }
            continue;
        }
        bn_st_tensor *t = &f->tensors[f->n_tensors];
        t->file = f;
        if (!(t->name = strdup(key))) {
            rc = FAIL(err, f->name, "out of memory");
            break;
        }
        f->n_tensors++; /* counted now so that close() frees the name on any error below */
        if (!json_is_object(val)) {
            rc = FAIL(err, f->name, "tensor '%.200s': not an object", key);
            break;
        }
        if ((rc = parse_dtype(val, f->name, key, &t->dtype, err)) || (rc = parse_shape(val, f->name, t, err)) ||
            (rc = parse_offsets(val, f->name, data, data_len, t, &begins[f->n_tensors - 1], err)))
            break;
    }
    if (!rc) rc = check_overlap(f, begins, err);
    free(begins);
    if (!rc) qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
    return rc;
}

static int parse_header(bn_st_file *f, bn_error *err)
{
    if (f->len < 8)
        return FAIL(err, f->name, "%zu bytes is too short for the 8-byte header length", f->len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | f->buf[i];
    if (n > BN_ST_MAX_HEADER)
        return FAIL(err, f->name, "header length %llu is larger than the %llu-byte limit", (unsigned long long)n,
                    (unsigned long long)BN_ST_MAX_HEADER);
    if (n > f->len - 8)
        return FAIL(err, f->name, "header length %llu is past the end of the file (%zu bytes)",
                    (unsigned long long)n, f->len);
    f->data_off = 8 + n;
    json_error_t je;
    json_t *root = json_loadb((const char *)f->buf + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return FAIL(err, f->name, "header is not valid JSON (line %d, column %d): %s", je.line, je.column, je.text);
    int rc = json_is_object(root) ? parse_tensors(f, root, err) : FAIL(err, f->name, "header is not a JSON object");
    json_decref(root);
    return rc;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

int bn_st_parse(const void *buf, size_t len, const char *name, bn_st_file **out, bn_error *err)
{
    *out = NULL;
    bn_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->name = strdup(name ? name : "safetensors"))) {
        free(f);
        return bn_err(err, "%s: out of memory", name ? name : "safetensors");
    }
    f->buf = buf;
    f->len = len;
    if (parse_header(f, err)) {
        bn_st_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

int bn_st_open(const char *path, bn_st_file **out, bn_error *err)
{
    *out = NULL;
    bn_mapping m;
    if (bn_map_file(path, &m, err)) return -1;
    if (bn_st_parse(m.data, m.len, base_name(path), out, err)) {
        bn_unmap(&m);
        return -1;
    }
    (*out)->map = m;
    return 0;
}

void bn_st_close(bn_st_file *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n_tensors; i++) free((char *)f->tensors[i].name);
    free(f->tensors);
    free(f->name);
    bn_unmap(&f->map);
    free(f);
}

const bn_st_tensor *bn_st_find(const bn_st_file *f, const char *name)
{
    bn_st_tensor key = {.name = name};
    return f->n_tensors ? bsearch(&key, f->tensors, f->n_tensors, sizeof key, cmp_tensor_name) : NULL;
}

/* ---- checkpoint directories (single file or sharded) ------------------------------- */

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"

typedef struct {
    char *name;        /* tensor name; owned */
    uint32_t shard;
} set_entry;

struct bn_st_set {
    char *dir;
    const char *origin;  /* SINGLE_NAME or INDEX_NAME */
    size_t n;
    set_entry *entries;  /* sorted by name */
    size_t n_shards;
    char **shard_names;  /* owned */
    bn_st_file **shards; /* NULL until first used */
};

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const set_entry *)a)->name, ((const set_entry *)b)->name);
}

void bn_st_set_close(bn_st_set *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) free(s->entries[i].name);
    for (size_t i = 0; i < s->n_shards; i++) {
        free(s->shard_names[i]);
        if (s->shards) bn_st_close(s->shards[i]);
    }
    free(s->entries);
    free(s->shard_names);
    free(s->shards);
    free(s->dir);
    free(s);
}

static int alloc_shards(bn_st_set *s, size_t n, bn_error *err)
{
    s->shard_names = calloc(n ? n : 1, sizeof *s->shard_names);
    s->shards = calloc(n ? n : 1, sizeof *s->shards);
    if (!s->shard_names || !s->shards) return bn_err(err, "%s: out of memory", s->origin);
    return 0;
}

static int open_single(bn_st_set *s, const char *path, bn_error *err)
{
    s->origin = SINGLE_NAME;
    if (alloc_shards(s, 1, err)) return -1;
    if (!(s->shard_names[0] = strdup(SINGLE_NAME))) return bn_err(err, "%s: out of memory", SINGLE_NAME);
    s->n_shards = 1;
    if (bn_st_open(path, &s->shards[0], err)) return -1;
    const bn_st_file *f = s->shards[0];
    s->entries = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *s->entries);
    if (!s->entries) return bn_err(err, "%s: out of memory", SINGLE_NAME);
    for (size_t i = 0; i < f->n_tensors; i++, s->n++)
        if (!(s->entries[i].name = strdup(f->tensors[i].name))) return bn_err(err, "%s: out of memory", SINGLE_NAME);
    return 0; /* already sorted: the file's tensors are */
}

/* A shard name must be a plain file name in the checkpoint directory: anything with a path
 * separator or ".." could make a crafted index read files elsewhere. */
static int shard_name_ok(const char *n)
{
    return *n && !strchr(n, '/') && !strchr(n, '\\') && !strstr(n, "..");
}

typedef struct {
    const char *shard;
    size_t entry;
} shard_ref;

static int cmp_ref(const void *a, const void *b)
{
    return strcmp(((const shard_ref *)a)->shard, ((const shard_ref *)b)->shard);
}

/* Gives every distinct shard name an id (sorting, so that a huge index stays n log n) and
 * checks that each shard file exists now, so a missing shard is reported at open. */
static int assign_shards(bn_st_set *s, shard_ref *refs, bn_error *err)
{
    qsort(refs, s->n, sizeof *refs, cmp_ref);
    size_t n_unique = 0;
    for (size_t i = 0; i < s->n; i++) n_unique += !i || strcmp(refs[i].shard, refs[i - 1].shard);
    if (alloc_shards(s, n_unique, err)) return -1;
    for (size_t i = 0; i < s->n; i++) {
        if (!i || strcmp(refs[i].shard, refs[i - 1].shard)) {
            if (!(s->shard_names[s->n_shards++] = strdup(refs[i].shard)))
                return bn_err(err, "%s: out of memory", INDEX_NAME);
            char *p = bn_path_join(s->dir, refs[i].shard);
            struct stat st;
            int ok = p && stat(p, &st) == 0 && S_ISREG(st.st_mode);
            free(p);
            if (!ok)
                return bn_err(err, "%s: weight_map: shard '%.200s' (holding tensor '%.200s') is missing", INDEX_NAME,
                              refs[i].shard, s->entries[refs[i].entry].name);
        }
        s->entries[refs[i].entry].shard = (uint32_t)(s->n_shards - 1);
    }
    return 0;
}

static int read_weight_map(bn_st_set *s, const json_t *map, bn_error *err)
{
    size_t n = json_object_size(map);
    s->entries = calloc(n ? n : 1, sizeof *s->entries);
    shard_ref *refs = calloc(n ? n : 1, sizeof *refs);
    int rc = 0;
    if (!s->entries || !refs) rc = bn_err(err, "%s: out of memory", INDEX_NAME);
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)map, key, val) {
        if (rc) break;
        const char *shard = json_string_value(val);
        if (!shard) rc = bn_err(err, "%s: weight_map: tensor '%.200s': shard is not a string", INDEX_NAME, key);
        else if (!shard_name_ok(shard))
            rc = bn_err(err, "%s: weight_map: tensor '%.200s': shard name '%.200s' is not a plain file name",
                        INDEX_NAME, key, shard);
        else if (!(s->entries[s->n].name = strdup(key))) rc = bn_err(err, "%s: out of memory", INDEX_NAME);
        else {
            refs[s->n] = (shard_ref){shard, s->n};
            s->n++;
        }
    }
    if (!rc) rc = assign_shards(s, refs, err);
    free(refs);
    if (!rc) qsort(s->entries, s->n, sizeof *s->entries, cmp_entry);
    return rc;
}

static int open_index(bn_st_set *s, const char *path, bn_error *err)
{
    s->origin = INDEX_NAME;
    char *text;
    size_t len;
    if (bn_read_file(path, (size_t)64 << 20, &text, &len, err)) return -1;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!root)
        return bn_err(err, "%s: not valid JSON (line %d, column %d): %s", INDEX_NAME, je.line, je.column, je.text);
    const json_t *map = json_object_get(root, "weight_map");
    int rc = !json_is_object(root) ? bn_err(err, "%s: the top level is not an object", INDEX_NAME)
             : !json_is_object(map) ? bn_err(err, "%s: weight_map: missing or not an object", INDEX_NAME)
                                    : read_weight_map(s, map, err);
    json_decref(root);
    return rc;
}

int bn_st_set_open(const char *dir, bn_st_set **out, bn_error *err)
{
    *out = NULL;
    bn_st_set *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir))) {
        free(s);
        return bn_err(err, "%s: out of memory", dir);
    }
    char *single = bn_path_join(dir, SINGLE_NAME), *index = bn_path_join(dir, INDEX_NAME);
    struct stat st;
    int rc;
    /* transformers' order: a single model.safetensors wins over an index. */
    if (!single || !index) rc = bn_err(err, "%s: out of memory", dir);
    else if (stat(single, &st) == 0) rc = open_single(s, single, err);
    else if (stat(index, &st) == 0) rc = open_index(s, index, err);
    else rc = bn_err(err, "%s: neither %s nor %s is there", dir, SINGLE_NAME, INDEX_NAME);
    free(single);
    free(index);
    if (rc) {
        bn_st_set_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

int bn_st_set_get(bn_st_set *s, const char *name, const bn_st_tensor **t, const char **file, bn_error *err)
{
    *t = NULL;
    *file = s->origin;
    set_entry key = {.name = (char *)name};
    const set_entry *e = s->n ? bsearch(&key, s->entries, s->n, sizeof key, cmp_entry) : NULL;
    if (!e) return 0;
    *file = s->shard_names[e->shard];
    if (!s->shards[e->shard]) {
        char *p = bn_path_join(s->dir, s->shard_names[e->shard]);
        if (!p) return bn_err(err, "%s: out of memory", *file);
        int rc = bn_st_open(p, &s->shards[e->shard], err);
        free(p);
        if (rc) return -1;
    }
    if (!(*t = bn_st_find(s->shards[e->shard], name)))
        return bn_err(err, "%s: weight_map puts tensor '%.200s' in %.200s, which does not contain it", s->origin,
                      name, *file);
    return 0;
}

size_t bn_st_set_count(const bn_st_set *s) { return s->n; }
const char *bn_st_set_name(const bn_st_set *s, size_t i) { return s->entries[i].name; }
const char *bn_st_set_origin(const bn_st_set *s) { return s->origin; }
