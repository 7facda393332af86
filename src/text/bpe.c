/* Byte-level BPE: GPT-2's byte <-> code point mapping, UTF-8 helpers, the merge table and the
 * merge loop itself.
 *
 * The merge loop follows Hugging Face tokenizers' BPE::merge_all exactly: a priority queue of
 * candidate pairs ordered by (rank, position), the lowest first; a popped candidate is applied
 * only if the two symbols it named are still adjacent and still form that pair. This is
 * O(n log n), so a pathological 100 KB pre-token (a run of random symbols) stays fast. */
#include "text/text_internal.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* ---- byte-level mapping ---------------------------------------------------------------- */

/* GPT-2 keeps printable Latin-1 bytes (! .. ~, ¡ .. ¬, ® .. ÿ) as themselves and maps the other
 * 68 bytes, in byte order, to U+0100, U+0101, ... so that no token string has a space or a
 * control character in it. */
static int byte_is_self(uint8_t b)
{
    return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
}

uint32_t bn_byte_to_cp(uint8_t b)
{
    if (byte_is_self(b)) return b;
    uint32_t n = 0;   /* how many non-self bytes come before b */
    for (uint32_t c = 0; c < b; c++) n += !byte_is_self((uint8_t)c);
    return 256 + n;
}

int bn_cp_to_byte(uint32_t cp)
{
    if (cp < 256) return byte_is_self((uint8_t)cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    uint32_t n = cp - 256;
    for (uint32_t c = 0; c < 256; c++)
        if (!byte_is_self((uint8_t)c) && n-- == 0) return (int)c;
    return -1;
}

/* ---- UTF-8 ------------------------------------------------------------------------------- */

size_t bn_utf8_decode(const uint8_t *s, size_t len, uint32_t *cp)
{
    if (len == 0) return 0;
    uint8_t b = s[0];
    if (b < 0x80) { *cp = b; return 1; }
    size_t n;
    uint32_t c, min;
    if (b >= 0xc2 && b <= 0xdf) { n = 2; c = b & 0x1f; min = 0x80; }
    else if (b >= 0xe0 && b <= 0xef) { n = 3; c = b & 0x0f; min = 0x800; }
    else if (b >= 0xf0 && b <= 0xf4) { n = 4; c = b & 0x07; min = 0x10000; }
    else return 0;
    if (len < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
    *cp = c;
    return n;
}

size_t bn_utf8_encode(uint32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { o[0] = (unsigned char)(0xc0 | cp >> 6); o[1] = (unsigned char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/* ---- string index ------------------------------------------------------------------------ */

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t cap = 16;
    while (cap < n && cap < (1u << 31)) cap <<= 1;
    return cap;
}

int bn_str_index_build(bn_str_index *ix, const char *text, const uint32_t *off, uint32_t n,
                       const uint8_t *keep, bn_error *err)
{
    memset(ix, 0, sizeof *ix);
    ix->text = text;
    ix->off = off;
    ix->cap = pow2_at_least((uint64_t)n * 2);
    ix->slots = malloc((size_t)ix->cap * sizeof *ix->slots);
    if (!ix->slots) return bn_err(err, "out of memory indexing %u tokens", n);
    memset(ix->slots, 0xff, (size_t)ix->cap * sizeof *ix->slots);
    for (uint32_t id = 0; id < n; id++) {
        if (keep && !keep[id]) continue;
        const char *s = text + off[id];
        size_t len = off[id + 1] - off[id];
        for (uint32_t i = (uint32_t)XXH3_64bits(s, len) & (ix->cap - 1);; i = (i + 1) & (ix->cap - 1)) {
            uint32_t o = ix->slots[i];
            if (o == UINT32_MAX) { ix->slots[i] = id; break; }
            if (off[o + 1] - off[o] == len && memcmp(text + off[o], s, len) == 0) break; /* lower id wins */
        }
    }
    return 0;
}

void bn_str_index_free(bn_str_index *ix)
{
    free(ix->slots);
    ix->slots = NULL;
}

int32_t bn_str_index_find(const bn_str_index *ix, const char *s, size_t len)
{
    for (uint32_t i = (uint32_t)XXH3_64bits(s, len) & (ix->cap - 1);; i = (i + 1) & (ix->cap - 1)) {
        uint32_t id = ix->slots[i];
        if (id == UINT32_MAX) return -1;
        if (ix->off[id + 1] - ix->off[id] == len && memcmp(ix->text + ix->off[id], s, len) == 0)
            return (int32_t)id;
    }
}

/* ---- merge table ------------------------------------------------------------------------- */

static uint32_t pair_slot(uint64_t key, uint32_t cap)
{
    key *= 0x9e3779b97f4a7c15ull;  /* Fibonacci hashing: ids are small and dense */
    return (uint32_t)(key >> 32) & (cap - 1);
}

int bn_merge_table_build(bn_merge_table *mt, const bn_vocab *v, const bn_str_index *bytes_ix,
                         bn_error *err)
{
    memset(mt, 0, sizeof *mt);
    mt->cap = pow2_at_least((uint64_t)v->n_merges * 2);
    mt->keys = calloc(mt->cap, sizeof *mt->keys);
    mt->rank = malloc((size_t)mt->cap * sizeof *mt->rank);
    mt->merged = malloc((size_t)mt->cap * sizeof *mt->merged);
    char *buf = NULL;
    size_t buf_cap = 0;
    if (!mt->keys || !mt->rank || !mt->merged) goto oom;
    for (uint32_t r = 0; r < v->n_merges; r++) {
        uint32_t l = v->merges[2 * r], rt = v->merges[2 * r + 1];
        if (l >= v->n_tokens || rt >= v->n_tokens) {
            bn_merge_table_free(mt);
            free(buf);
            return bn_err(err, "merge %u names a token id past the vocabulary", r);
        }
        size_t ll = bytes_ix->off[l + 1] - bytes_ix->off[l], rl = bytes_ix->off[rt + 1] - bytes_ix->off[rt];
        if (ll + rl > buf_cap) {
            buf_cap = (ll + rl) * 2;
            char *nb = realloc(buf, buf_cap);
            if (!nb) goto oom;
            buf = nb;
        }
        memcpy(buf, bytes_ix->text + bytes_ix->off[l], ll);
        memcpy(buf + ll, bytes_ix->text + bytes_ix->off[rt], rl);
        int32_t m = bn_str_index_find(bytes_ix, buf, ll + rl);
        if (m < 0) {
            size_t a, b;
            const char *as = bn_vocab_token(v, l, &a), *bs = bn_vocab_token(v, rt, &b);
            bn_merge_table_free(mt);
            free(buf);
            return bn_err(err, "merge %u '%.*s %.*s': the merged token is not in the vocabulary", r,
                          (int)(a > 40 ? 40 : a), as, (int)(b > 40 ? 40 : b), bs);
        }
        uint64_t key = ((uint64_t)l << 32 | rt) + 1;
        uint32_t i = pair_slot(key, mt->cap);
        while (mt->keys[i] && mt->keys[i] != key) i = (i + 1) & (mt->cap - 1);
        mt->keys[i] = key;     /* a repeated pair overwrites: HF keeps the last one too */
        mt->rank[i] = r;
        mt->merged[i] = m;
    }
    free(buf);
    return 0;
oom:
    bn_merge_table_free(mt);
    free(buf);
    return bn_err(err, "out of memory building the table of %u merges", v->n_merges);
}

void bn_merge_table_free(bn_merge_table *mt)
{
    free(mt->keys);
    free(mt->rank);
    free(mt->merged);
    memset(mt, 0, sizeof *mt);
}

int bn_merge_lookup(const bn_merge_table *mt, int32_t left, int32_t right, uint32_t *rank,
                    int32_t *merged)
{
    if (!mt->cap) return 0;
    uint64_t key = ((uint64_t)(uint32_t)left << 32 | (uint32_t)right) + 1;
    for (uint32_t i = pair_slot(key, mt->cap);; i = (i + 1) & (mt->cap - 1)) {
        if (mt->keys[i] == key) {
            *rank = mt->rank[i];
            *merged = mt->merged[i];
            return 1;
        }
        if (!mt->keys[i]) return 0;
    }
}

/* ---- the merge loop ---------------------------------------------------------------------- */

/* Heap entries are (rank << 32 | position): comparing the integers orders by rank, then by
 * position, which is HF's tie-break (leftmost first). */
typedef struct {
    uint64_t *e;
    size_t n;
} heap;

static void heap_push(heap *h, uint64_t x)
{
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h->e[p] <= x) break;
        h->e[i] = h->e[p];
        i = p;
    }
    h->e[i] = x;
}

static uint64_t heap_pop(heap *h)
{
    uint64_t top = h->e[0], x = h->e[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && h->e[c + 1] < h->e[c]) c++;
        if (x <= h->e[c]) break;
        h->e[i] = h->e[c];
        i = c;
    }
    if (h->n) h->e[i] = x;
    return top;
}

size_t bn_bpe_scratch_size(size_t n)
{
    /* prev + next links, and at most 3n heap entries: n-1 initial pairs, 2 per merge after. */
    return n * 2 * sizeof(int32_t) + (3 * n + 1) * sizeof(uint64_t);
}

static void push_pair(const bn_merge_table *mt, heap *h, const int32_t *syms, int32_t pos, int32_t nxt)
{
    uint32_t rank;
    int32_t merged;
    if (pos >= 0 && nxt >= 0 && bn_merge_lookup(mt, syms[pos], syms[nxt], &rank, &merged))
        heap_push(h, (uint64_t)rank << 32 | (uint32_t)pos);
}

size_t bn_bpe_merge(const bn_merge_table *mt, int32_t *syms, size_t n, void *scratch)
{
    if (n < 2) return n;
    uint64_t *heap_mem = scratch;
    int32_t *prev = (int32_t *)(heap_mem + 3 * n + 1), *next = prev + n;
    heap h = {heap_mem, 0};
    for (size_t i = 0; i < n; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++) push_pair(mt, &h, syms, (int32_t)i, (int32_t)i + 1);
    while (h.n) {
        uint64_t top = heap_pop(&h);
        int32_t pos = (int32_t)(uint32_t)top, nxt = next[pos];
        uint32_t rank;
        int32_t merged;
        /* Stale entry: pos was absorbed (syms[pos] < 0), has no right neighbour any more, or the
         * pair there changed since it was queued. */
        if (syms[pos] < 0 || nxt < 0 || !bn_merge_lookup(mt, syms[pos], syms[nxt], &rank, &merged) ||
            rank != (uint32_t)(top >> 32))
            continue;
        syms[pos] = merged;
        syms[nxt] = -1;
        next[pos] = next[nxt];
        if (next[nxt] >= 0) prev[next[nxt]] = pos;
        push_pair(mt, &h, syms, prev[pos], pos);
        push_pair(mt, &h, syms, pos, next[pos]);
    }
    size_t out = 0;
    for (size_t i = 0; i < n; i++)
        if (syms[i] >= 0) syms[out++] = syms[i];
    return out;
}
