/* Prompt-lookup drafting: the n-gram proposer, the back-off policy, the drafter's buffers.
 * The verify loop itself is generate.c's (it is the decode loop, several tokens per pass). */
#include <stdlib.h>
#include <string.h>

#include "engine/draft.h"
#include "engine/engine_internal.h"

/* ---- lookup -------------------------------------------------------------------------- */

/* Position i of the text hist[0..n) + next. */
static inline int32_t text_at(const int32_t *hist, size_t n, int32_t next, size_t i)
{
    return i < n ? hist[i] : next;
}

uint32_t bn_draft_lookup(const int32_t *hist, size_t n, int32_t next, uint32_t ngram, uint32_t k,
                         int32_t *out)
{
    size_t len = n + 1;
    uint32_t lo = ngram < 2 ? ngram : 2;
    if (k == 0 || ngram == 0) return 0;
    for (uint32_t g = ngram; g >= lo; g--) {
        if (g >= len) continue;
        size_t tail = len - g;   /* the suffix to find starts here; an occurrence at j < tail */
        for (size_t j = tail; j-- > 0;) {
            uint32_t i = 0;
            while (i < g && text_at(hist, n, next, j + i) == text_at(hist, n, next, tail + i)) i++;
            if (i < g) continue;
            /* j + g < len: at least one real token follows; past the end the draft reads
             * itself, which continues a loop of period tail - j */
            for (uint32_t t = 0; t < k; t++) {
                size_t src = j + g + t;
                out[t] = src < len ? text_at(hist, n, next, src) : out[src - len];
            }
            return k;
        }
    }
    return 0;
}

static const char *const mode_names[] = {"off", "lookup", "auto"};

int bn_draft_mode_parse(const char *s)
{
    for (int i = 0; i < (int)(sizeof mode_names / sizeof *mode_names); i++)
        if (!strcmp(s, mode_names[i])) return i;
    return -1;
}

const char *bn_draft_mode_name(int mode)
{
    return mode >= 0 && mode < (int)(sizeof mode_names / sizeof *mode_names) ? mode_names[mode] : "?";
}

/* ---- policy -------------------------------------------------------------------------- */

#define DECAY 0.8          /* per verified pass: the estimate follows the last ~5 passes */
#define MARGIN 0.05        /* draft only for an expected gain of 5% or more */
#define PROBE_K 2
#define PROBE_MIN 16
#define PROBE_MAX 256

void bn_draft_policy_init(bn_draft_policy *p, int mode, uint32_t k_max, double beta, int learn)
{
    *p = (bn_draft_policy){.mode = mode, .k_max = k_max, .learn = learn,
                           .beta = beta > 0 ? beta : BN_DRAFT_DEFAULT_BETA, .backoff = PROBE_MIN};
}

#define TIME_DECAY 0.8   /* weight of the history in the moving averages of pass times */
#define BETA_MAX 4.0     /* a wild timing (preemption) moves beta this far at most */

void bn_draft_policy_timed(bn_draft_policy *p, uint32_t k, double seconds)
{
    if (!(seconds > 0)) return;
    if (k == 0) {
        p->t1 = p->t1 > 0 ? TIME_DECAY * p->t1 + (1 - TIME_DECAY) * seconds : seconds;
        return;
    }
    if (!p->learn || p->t1 <= 0) return;
    double b = (seconds / p->t1 - 1.0) / k;
    b = b < 0 ? 0 : b > BETA_MAX ? BETA_MAX : b;
    p->beta = TIME_DECAY * p->beta + (1 - TIME_DECAY) * b;
}

/* One accepted and one rejected pseudo-count: 1/2 before any evidence. */
double bn_draft_policy_rate(const bn_draft_policy *p)
{
    return (p->acc + 1.0) / (p->acc + p->rej + 2.0);
}

/* The k in [0, cap] maximizing E(k)/c(k); *gain receives that ratio (1 for k = 0). */
static uint32_t best_len(const bn_draft_policy *p, uint32_t cap, double *gain)
{
    double a = bn_draft_policy_rate(p), ak = 1.0, e = 1.0, best = 1.0;
    uint32_t bk = 0;
    for (uint32_t k = 1; k <= cap; k++) {
        ak *= a;
        e += ak;
        double g = e / (1.0 + p->beta * k);
        if (g > best) {
            best = g;
            bk = k;
        }
    }
    *gain = best;
    return bk;
}

uint32_t bn_draft_policy_len(bn_draft_policy *p, uint32_t cap)
{
    if (cap > p->k_max) cap = p->k_max;
    if (cap == 0 || p->mode == BN_DRAFT_OFF) return 0;
    if (p->mode == BN_DRAFT_LOOKUP) return cap;
    if (p->probing) {   /* backed off: plain steps, then a probe until one is verified */
        if (p->wait > 0) {
            p->wait--;
            return 0;
        }
        return cap < PROBE_K ? cap : PROBE_K;
    }
    double gain;
    uint32_t k = best_len(p, cap, &gain);
    if (gain >= 1.0 + MARGIN) return k;
    p->probing = 1;
    p->wait = p->backoff;
    return 0;
}

void bn_draft_policy_update(bn_draft_policy *p, uint32_t k, uint32_t kept)
{
    if (k == 0) return;
    p->acc = p->acc * DECAY + kept;
    p->rej = p->rej * DECAY + (kept < k);
    if (!p->probing) return;
    if (kept == 0) {   /* still nothing: wait twice as long */
        p->backoff = p->backoff * 2 < PROBE_MAX ? p->backoff * 2 : PROBE_MAX;
        p->wait = p->backoff;
        return;
    }
    p->probing = 0;    /* the estimate decides again */
    if (kept == k) p->backoff = PROBE_MIN;
}

/* ---- the drafter --------------------------------------------------------------------- */

bn_drafter *bn_drafter_new(const bn_engine *e, uint32_t max_draft, bn_error *err)
{
    if (max_draft == 0) max_draft = BN_DRAFT_DEFAULT_K;
    if (max_draft > BN_DRAFT_MAX) {
        bn_err(err, "draft length %u: at most %d", max_draft, BN_DRAFT_MAX);
        return NULL;
    }
    bn_drafter *d = calloc(1, sizeof *d);
    if (d) {
        d->n_vocab = e->cfg.n_vocab;
        d->n_ctx = e->kv.n_ctx;
        d->k_max = max_draft;
        d->logits = malloc((size_t)(max_draft + 1) * d->n_vocab * sizeof *d->logits);
        d->toks = malloc((max_draft + 1) * sizeof *d->toks);
        d->hist = malloc(((size_t)d->n_ctx + 1) * sizeof *d->hist);
        d->draft = malloc(max_draft * sizeof *d->draft);
    }
    if (!d || !d->logits || !d->toks || !d->hist || !d->draft) {
        bn_drafter_free(d);
        bn_err(err, "cannot allocate a drafter for %u drafts", max_draft);
        return NULL;
    }
    return d;
}

void bn_drafter_free(bn_drafter *d)
{
    if (!d) return;
    free(d->logits);
    free(d->toks);
    free(d->hist);
    free(d->draft);
    free(d);
}

uint32_t bn_drafter_max(const bn_drafter *d) { return d->k_max; }

void bn_drafter_set_proposer(bn_drafter *d, bn_draft_fn fn, void *user)
{
    d->fn = fn;
    d->fn_user = user;
}

void bn_drafter_set_beta(bn_drafter *d, double beta) { d->beta_set = beta > 0 ? beta : 0; }
