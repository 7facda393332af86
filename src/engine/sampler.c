/* Token sampling with Hugging Face semantics for the logits processors and OpenAI semantics for
 * presence/frequency penalties, applied in this order:
 *   1. repetition_penalty (HF): every id present in prompt + generated, once: l>0 ? l/p : l*p
 *   2. presence/frequency (OpenAI): l -= presence*(count>0) + frequency*count, generated ids only
 *   3. temperature 0 -> argmax (ties -> lowest id); else l /= temperature
 *   4. top_k, then top_p over the top_k-renormalized distribution, then min_p (relative to the
 *      top probability): each keeps a prefix of the candidates sorted by (prob desc, id asc), so
 *      the kept set is the shortest of the prefixes, at least one token
 *   5. draw from the kept tokens, weights renormalized, with the sampler's own seeded PRNG.
 *
 * No allocation after bn_sampler_new(): the candidate array and the counts are sized by n_vocab,
 * and sorting is an in-place quickselect + heapsort (qsort may malloc). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

enum { SEEN_PROMPT = 1, SEEN_LISTED = 2 };

struct bn_sampler {
    uint32_t n_vocab;
    bn_sampling p;
    uint64_t rng[4];      /* xoshiro256** */
    uint32_t *count;      /* generated occurrences per id */
    uint8_t *seen;        /* SEEN_* flags per id */
    int32_t *touched;     /* ids with a nonzero flag: penalties and resets cost O(touched) */
    uint32_t n_touched;
    int32_t *idx;         /* candidate ids */
};

void bn_sampling_greedy(bn_sampling *s)
{
    memset(s, 0, sizeof *s);
    s->top_p = 1.0f;
    s->repeat_penalty = 1.0f;
}

void bn_sampling_default(bn_sampling *s)
{
    bn_sampling_greedy(s);
    s->temperature = 0.8f;
    s->top_k = 40;
    s->top_p = 0.95f;
    s->min_p = 0.05f;
}

size_t bn_sampler_bytes(uint32_t n_vocab)
{
    return sizeof(bn_sampler) + (size_t)n_vocab * (sizeof(uint32_t) + 1 + 2 * sizeof(int32_t));
}

bn_sampler *bn_sampler_new(uint32_t n_vocab, bn_error *err)
{
    bn_sampler *s = calloc(1, sizeof *s);
    if (s) {
        s->n_vocab = n_vocab;
        s->count = calloc(n_vocab, sizeof *s->count);
        s->seen = calloc(n_vocab, 1);
        s->touched = calloc(n_vocab, sizeof *s->touched);
        s->idx = calloc(n_vocab, sizeof *s->idx);
    }
    if (!s || !s->count || !s->seen || !s->touched || !s->idx) {
        bn_sampler_free(s);
        bn_err(err, "cannot allocate a sampler for %u tokens", n_vocab);
        return NULL;
    }
    bn_sampling_greedy(&s->p);
    return s;
}

void bn_sampler_free(bn_sampler *s)
{
    if (!s) return;
    free(s->count);
    free(s->seen);
    free(s->touched);
    free(s->idx);
    free(s);
}

/* ---- PRNG: splitmix64-seeded xoshiro256** (fast, and the same stream on every platform) -- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

static double rng_uniform(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

/* ---- request state ------------------------------------------------------------------- */

static void mark(bn_sampler *s, int32_t id, uint8_t flag)
{
    if (id < 0 || (uint32_t)id >= s->n_vocab) return;
    if (!(s->seen[id] & SEEN_LISTED)) {
        s->seen[id] |= SEEN_LISTED;
        s->touched[s->n_touched++] = id;
    }
    s->seen[id] |= flag;
}

void bn_sampler_start(bn_sampler *s, const bn_sampling *p, const int32_t *prompt, size_t n)
{
    for (uint32_t i = 0; i < s->n_touched; i++) {
        s->count[s->touched[i]] = 0;
        s->seen[s->touched[i]] = 0;
    }
    s->n_touched = 0;
    s->p = *p;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    for (size_t i = 0; i < n; i++) mark(s, prompt[i], SEEN_PROMPT);
}

void bn_sampler_accept(bn_sampler *s, int32_t id)
{
    if (id < 0 || (uint32_t)id >= s->n_vocab) return;
    mark(s, id, 0);
    s->count[id]++;
}

static void apply_penalties(const bn_sampler *s, float *logits)
{
    const bn_sampling *p = &s->p;
    int rep = p->repeat_penalty != 1.0f && p->repeat_penalty > 0.0f;
    int pf = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    if (!rep && !pf) return;
    for (uint32_t i = 0; i < s->n_touched; i++) {
        int32_t id = s->touched[i];
        uint32_t c = s->count[id];
        if (rep) logits[id] = logits[id] > 0 ? logits[id] / p->repeat_penalty
                                             : logits[id] * p->repeat_penalty;
        if (pf && c > 0) logits[id] -= p->presence_penalty + p->frequency_penalty * (float)c;
    }
}

/* ---- ordering: (logit desc, id asc) is a total order, so results never depend on the
 * algorithm's internal order ---------------------------------------------------------- */

static inline int before(const float *l, int32_t a, int32_t b)
{
    return l[a] > l[b] || (l[a] == l[b] && a < b);
}

static inline void swap_ids(int32_t *v, size_t i, size_t j)
{
    int32_t t = v[i];
    v[i] = v[j];
    v[j] = t;
}

/* Moves the k first ids in (logit desc, id asc) order to v[0..k), in no particular order. */
static void select_top(int32_t *v, size_t n, size_t k, const float *l)
{
    size_t lo = 0, hi = n;   /* the k-th element lies in [lo, hi) */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        /* median of three as the pivot, moved to v[hi-1] */
        if (before(l, v[mid], v[lo])) swap_ids(v, mid, lo);
        if (before(l, v[hi - 1], v[lo])) swap_ids(v, hi - 1, lo);
        if (before(l, v[mid], v[hi - 1])) swap_ids(v, mid, hi - 1);
        int32_t pivot = v[hi - 1];
        size_t store = lo;
        for (size_t i = lo; i < hi - 1; i++)
            if (before(l, v[i], pivot)) swap_ids(v, i, store++);
        swap_ids(v, store, hi - 1);
        if (store == k || store + 1 == k) return;
        if (store > k) hi = store;
        else lo = store + 1;
    }
}

static void sift_down(int32_t *v, size_t root, size_t n, const float *l)
{
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= n) return;
        /* a max-heap of "last in order" so that the sorted result is first-in-order first */
        if (child + 1 < n && before(l, v[child], v[child + 1])) child++;
        if (!before(l, v[root], v[child])) return;
        swap_ids(v, root, child);
        root = child;
    }
}

static void sort_ids(int32_t *v, size_t n, const float *l)
{
    for (size_t i = n / 2; i-- > 0;) sift_down(v, i, n, l);
    for (size_t end = n; end-- > 1;) {
        swap_ids(v, 0, end);
        sift_down(v, 0, end, l);
    }
}

/* ---- sampling ------------------------------------------------------------------------ */

static int32_t argmax(const float *l, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (l[i] > l[best]) best = i;
    return (int32_t)best;
}

/* How many of the sorted candidates v[0..m) survive top_p and min_p, given the max logit mx
 * and the normalizer z of the candidate set. Returns m + 1 if no cut fell inside v[0..m). */
static size_t cut_sorted(const bn_sampling *p, const int32_t *v, size_t m, const float *l,
                         float mx, double z)
{
    double cum = 0.0, pmax = 1.0 / z;
    for (size_t j = 0; j < m; j++) {
        double pj = exp((double)(l[v[j]] - mx)) / z;
        if (j > 0 && p->min_p > 0.0f && pj < (double)p->min_p * pmax) return j;
        if (j > 0 && p->top_p < 1.0f && cum >= (double)p->top_p) return j;
        cum += pj;
    }
    return m + 1;
}

static int32_t draw(bn_sampler *s, const int32_t *v, size_t n, const float *l, float mx)
{
    double total = 0.0;
    for (size_t j = 0; j < n; j++) total += exp((double)(l[v[j]] - mx));
    double u = rng_uniform(s->rng) * total, acc = 0.0;
    for (size_t j = 0; j < n; j++) {
        acc += exp((double)(l[v[j]] - mx));
        if (u < acc) return v[j];
    }
    return v[n - 1];
}

int32_t bn_sampler_sample(bn_sampler *s, float *logits)
{
    const bn_sampling *p = &s->p;
    uint32_t V = s->n_vocab;
    apply_penalties(s, logits);
    if (p->temperature <= 0.0f) return argmax(logits, V);

    for (uint32_t i = 0; i < V; i++) logits[i] /= p->temperature;
    int32_t *v = s->idx;
    for (uint32_t i = 0; i < V; i++) v[i] = (int32_t)i;
    size_t n = V;
    if (p->top_k > 0 && (uint32_t)p->top_k < V) {
        select_top(v, V, (size_t)p->top_k, logits);
        n = (size_t)p->top_k;
    }
    float mx = logits[v[0]];
    for (size_t j = 1; j < n; j++)
        if (logits[v[j]] > mx) mx = logits[v[j]];
    if (p->top_p >= 1.0f && p->min_p <= 0.0f) return draw(s, v, n, logits, mx);

    double z = 0.0;
    for (size_t j = 0; j < n; j++) z += exp((double)(logits[v[j]] - mx));
    /* Sort only as many candidates as the cuts need: the top m, growing m until a cut falls
     * inside them (usually at once: both cuts keep few tokens). */
    size_t m = n < 64 ? n : 64, keep;
    for (;;) {
        if (m < n) select_top(v, n, m, logits);
        sort_ids(v, m, logits);
        keep = cut_sorted(p, v, m, logits, mx, z);
        if (keep <= m) break;
        if (m == n) {
            keep = n;
            break;
        }
        m = m * 4 < n ? m * 4 : n;
    }
    return draw(s, v, keep, logits, mx);
}
