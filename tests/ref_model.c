/* The naive reference forward pass (ref_model.h). Deliberately plain: no blocking, no SIMD, no
 * code shared with the engine beyond unpacking the stored ternary codes. */
#include "ref_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/family.h"

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "ref_model: out of memory (%zu bytes)\n", n);
        abort();
    }
    return p;
}

static float from_f16(uint16_t h)
{
    _Float16 v;
    memcpy(&v, &h, sizeof v);
    return (float)v;
}

static float round_f16(float x) { return (float)(_Float16)x; }

/* out = x / sqrt(mean(x^2) + eps) * w */
static void rmsnorm(float *out, const float *x, const float *w, size_t n, float eps)
{
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    for (size_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* Per-token absmax int8: s = 127/max(max|x|, 1e-5), q = clamp(round-half-even(x*s)). */
static float quant(const float *x, size_t n, int8_t *q)
{
    float mx = 0.0f;
    for (size_t i = 0; i < n; i++)
        if (fabsf(x[i]) > mx) mx = fabsf(x[i]);
    float s = 127.0f / (mx > 1e-5f ? mx : 1e-5f);
    for (size_t i = 0; i < n; i++) {
        float r = nearbyintf(x[i] * s);
        q[i] = (int8_t)(r > 127.0f ? 127.0f : r < -128.0f ? -128.0f : r);
    }
    return s;
}

/* A ternary matrix as plain codes, out x in, and its per-tensor scale. */
typedef struct ref_mat {
    int8_t *t;
    size_t rows, cols;
    float scale;
} ref_mat;

/* Unpacks a stored ternary tensor; with head_dim > 0 the rows go to their permuted places
 * (row r to bn_qk_permuted_row(r)), the layout of a llama-arch GGUF's q and k. */
static ref_mat load_mat(const bn_model *m, const bn_tensor *w, uint32_t head_dim)
{
    ref_mat a = {xmalloc(w->rows * w->cols), w->rows, w->cols, w->scale};
    for (size_t r = 0; r < a.rows; r++) {
        size_t to = head_dim ? bn_qk_permuted_row(r, head_dim) : r;
        bn_tern_unpack_row(m->tern_fmt, w->data, a.rows, a.cols, r, a.t + to * a.cols);
    }
    return a;
}

/* y = (sum t*q) / s * scale: a BitLinear with a per-tensor weight scale. */
static void bitlinear(const ref_mat *a, const float *x, float *y)
{
    int8_t *q = xmalloc(a->cols);
    float s = quant(x, a->cols, q);
    for (size_t r = 0; r < a->rows; r++) {
        int32_t acc = 0;
        for (size_t c = 0; c < a->cols; c++) acc += a->t[r * a->cols + c] * q[c];
        y[r] = (float)acc / s * a->scale;
    }
    free(q);
}

/* RoPE of n_heads heads at pos. NeoX rotates the pairs (i, i + hd/2); NORM the pairs
 * (2i, 2i + 1); pair i turns by pos * theta^(-2i/hd) in both. */
static void rope(float *x, int n_heads, int hd, int pos, float theta, int norm)
{
    for (int h = 0; h < n_heads; h++) {
        float *v = x + h * hd;
        for (int i = 0; i < hd / 2; i++) {
            double a = pos * pow((double)theta, -2.0 * i / hd);
            float c = (float)cos(a), s = (float)sin(a);
            int i0 = norm ? 2 * i : i, i1 = norm ? 2 * i + 1 : i + hd / 2;
            float x0 = v[i0], x1 = v[i1];
            v[i0] = x0 * c - x1 * s;
            v[i1] = x1 * c + x0 * s;
        }
    }
}

/* Causal attention of token t over tokens 0..t (K, V already rounded to f16); query head h
 * reads KV head h / (n_head / n_head_kv). */
static void attention(const bn_config *c, const float *q, const float *K, const float *V, int t,
                      float *out)
{
    int hd = (int)c->head_dim, KD = (int)(c->n_head_kv * c->head_dim);
    int group = (int)(c->n_head / c->n_head_kv);
    double *p = xmalloc((size_t)(t + 1) * sizeof *p);
    for (int h = 0; h < (int)c->n_head; h++) {
        int kvh = h / group;
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j <= t; j++) {
            double d = 0.0;
            for (int i = 0; i < hd; i++) d += (double)q[h * hd + i] * K[j * KD + kvh * hd + i];
            p[j] = d / sqrt((double)hd);
            if (p[j] > mx) mx = p[j];
        }
        for (int j = 0; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
        for (int i = 0; i < hd; i++) {
            double o = 0.0;
            for (int j = 0; j <= t; j++) o += p[j] / sum * V[j * KD + kvh * hd + i];
            out[h * hd + i] = (float)o;
        }
    }
    free(p);
}

/* m = act(g) * u: relu(g)^2 * u or silu(g) * u = g / (1 + e^-g) * u. */
static void ffn_act(uint32_t act, const float *g, const float *u, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (act == BN_ACT_SILU) {
            out[i] = (float)((double)g[i] / (1.0 + exp(-(double)g[i]))) * u[i];
        } else {
            float r = g[i] > 0 ? g[i] : 0.0f;
            out[i] = r * r * u[i];
        }
    }
}

enum { WQ, WK, WV, WO, WG, WU, WD, N_MATS };

static void layer_stats(const float *x, size_t E, ref_stats *st, size_t at)
{
    double ss = 0, mx = 0;
    for (size_t i = 0; i < E; i++) {
        ss += (double)x[i] * x[i];
        if (fabs(x[i]) > mx) mx = fabs(x[i]);
    }
    st->rms[at] = sqrt(ss / (double)E);
    st->maxabs[at] = mx;
}

/* The final norm and the head of T tokens' hidden states x. */
static void head(const bn_model *m, const ref_opts *o, const float *x, int T, float *logits)
{
    const bn_config *c = &m->cfg;
    size_t E = c->n_embd, V = c->n_vocab, P = m->lm_head_cols_padded;
    const uint16_t *rows = m->tok_embd;
    if (!c->tied) rows = bn_model_tensor(m, "output")->data;
    float *a = xmalloc(E * sizeof *a);
    int8_t *qx = xmalloc(E);
    for (int t = 0; t < T; t++) {
        rmsnorm(a, x + t * E, m->output_norm, E, c->norm_eps);
        float s = o->lm_i8 ? quant(a, E, qx) : 0.0f;
        for (size_t v = 0; v < V; v++) {
            double d = 0.0;
            if (o->lm_i8) {
                int32_t acc = 0;
                for (size_t i = 0; i < E; i++) acc += m->lm_head_i8[v * P + i] * qx[i];
                d = (double)acc / s * m->lm_head_i8_scale[v];
            } else {
                for (size_t i = 0; i < E; i++) d += (double)a[i] * from_f16(rows[v * E + i]);
            }
            logits[t * V + v] = (float)d;
        }
    }
    free(a);
    free(qx);
}

void ref_forward(const bn_model *m, const ref_opts *o, const int32_t *ids, int T, float *logits,
                 ref_stats *st)
{
    static const ref_opts plain = {0, 0, 0};
    if (!o) o = &plain;
    const bn_config *c = &m->cfg;
    size_t E = c->n_embd, KD = (size_t)c->n_head_kv * c->head_dim, F = c->n_ff, HD = c->head_dim;
    float *x = xmalloc(T * E * 4), *a = xmalloc(E * 4), *Q = xmalloc(T * E * 4),
          *K = xmalloc(T * KD * 4), *Vv = xmalloc(T * KD * 4), *att = xmalloc(E * 4),
          *y = xmalloc(E * 4), *g = xmalloc(F * 4), *u = xmalloc(F * 4), *mn = xmalloc(F * 4);
    for (int t = 0; t < T; t++)
        for (size_t i = 0; i < E; i++) x[t * E + i] = from_f16(m->tok_embd[(size_t)ids[t] * E + i]);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const bn_layer_weights *w = &m->layers[l];
        const bn_tensor *mats[N_MATS] = {w->wq, w->wk, w->wv, w->wo, w->wgate, w->wup, w->wdown};
        ref_mat L[N_MATS];
        for (int i = 0; i < N_MATS; i++)
            L[i] = load_mat(m, mats[i], o->qk_permuted && (i == WQ || i == WK) ? c->head_dim : 0);
        for (int t = 0; t < T; t++) {
            float *xt = x + t * E, *q = Q + t * E, *k = K + t * KD, *v = Vv + t * KD;
            rmsnorm(a, xt, w->attn_norm, E, c->norm_eps);
            bitlinear(&L[WQ], a, q);
            bitlinear(&L[WK], a, k);
            bitlinear(&L[WV], a, v);
            rope(q, (int)c->n_head, (int)HD, t, c->rope_theta, o->rope_norm);
            rope(k, (int)c->n_head_kv, (int)HD, t, c->rope_theta, o->rope_norm);
            for (size_t i = 0; i < KD; i++) {   /* the cache is f16, as in bitnet.cpp */
                k[i] = round_f16(k[i]);
                v[i] = round_f16(v[i]);
            }
            /* permuted q/k rows permute the dimensions of q and k alike: q.k is unchanged,
             * and V (never permuted) keeps the output in HF order */
            attention(c, q, K, Vv, t, att);
            if (w->attn_sub_norm) rmsnorm(att, att, w->attn_sub_norm, E, c->norm_eps);
            bitlinear(&L[WO], att, y);
            for (size_t i = 0; i < E; i++) xt[i] += y[i];

            rmsnorm(a, xt, w->ffn_norm, E, c->norm_eps);
            bitlinear(&L[WG], a, g);
            bitlinear(&L[WU], a, u);
            ffn_act(c->act, g, u, mn, F);
            if (w->ffn_sub_norm) rmsnorm(mn, mn, w->ffn_sub_norm, F, c->norm_eps);
            bitlinear(&L[WD], mn, y);
            for (size_t i = 0; i < E; i++) xt[i] += y[i];
            if (st) layer_stats(xt, E, st, (size_t)l * T + t);
        }
        for (int i = 0; i < N_MATS; i++) free(L[i].t);
    }
    if (logits) head(m, o, x, T, logits);
    free(x); free(a); free(Q); free(K); free(Vv); free(att); free(y); free(g); free(u); free(mn);
}

int32_t ref_argmax(const float *l, size_t n)
{
    size_t b = 0;
    for (size_t i = 1; i < n; i++)
        if (l[i] > l[b]) b = i;
    return (int32_t)b;
}

double ref_perplexity(const bn_model *m, const ref_opts *o, const int32_t *ids, size_t n, int ctx,
                      int32_t bos)
{
    size_t V = m->cfg.n_vocab;
    double nll = 0;
    long scored = 0;
    float *logits = xmalloc((size_t)ctx * V * sizeof *logits);
    int32_t *win = xmalloc((size_t)ctx * sizeof *win);
    for (size_t c = 0; c < n / (size_t)ctx; c++) {
        memcpy(win, ids + c * ctx, (size_t)ctx * sizeof *win);
        if (bos >= 0) win[0] = bos;
        ref_forward(m, o, win, ctx, logits, NULL);
        for (int j = ctx / 2; j < ctx - 1; j++) {
            const float *l = logits + (size_t)j * V;
            double mx = l[0], sum = 0;
            for (size_t i = 1; i < V; i++)
                if (l[i] > mx) mx = l[i];
            for (size_t i = 0; i < V; i++) sum += exp(l[i] - mx);
            nll += log(sum) - (l[win[j + 1]] - mx);
            scored++;
        }
    }
    free(logits);
    free(win);
    return exp(nll / scored);
}
