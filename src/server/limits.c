/* API keys, classes and per-key limits (limits.h).
 *
 * Key 0 is the anonymous key: the only one when no api_keys are configured, never returned by
 * bn_limits_auth otherwise. It runs at the default class's priority and is never limited (all
 * anonymous clients share it, so a per-key limit on it would be a global one). Keys 1..n are
 * the config's api_keys in order, each with its own in-flight count and token bucket.
 *
 * The token bucket: capacity = tokens_per_minute, refilled at tokens_per_minute / 60 per
 * second, starting full. Charges may take it below zero (a prompt is charged whole); a key is
 * refused while it is below zero, and Retry-After is the time until it is back at zero. */
#include "server/limits.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define RETRY_MAX_S 86400   /* Retry-After never says more than a day */

typedef struct key_state {
    char *secret;            /* NULL for the anonymous key */
    size_t len;
    bn_key_class cls;        /* the class's settings, copied */
    char label[BN_CLASS_NAME_MAX + 16];
    int in_flight;           /* admitted, not done (queued or running) */
    double tokens;           /* the bucket's level */
    double t_fill;           /* when it was last refilled; < 0: not yet used (full) */
} key_state;

struct bn_limits {
    int refs;
    int n_keys;              /* anonymous included */
    key_state *keys;
    int *running;            /* per key: dispatched, not done (bn_queue_best's input) */
};

/* Overwrites a secret before its memory is freed (volatile: the stores are not dropped). */
static void wipe(char *p, size_t n)
{
    volatile char *v = p;
    while (n--) *v++ = 0;
}

static void limits_free(bn_limits *l)
{
    if (!l) return;
    for (int i = 0; l->keys && i < l->n_keys; i++)
        if (l->keys[i].secret) {
            wipe(l->keys[i].secret, l->keys[i].len);
            free(l->keys[i].secret);
        }
    free(l->keys);
    free(l->running);
    free(l);
}

static void key_init(key_state *k, const bn_key_class *cls, int index)
{
    k->cls = *cls;
    k->tokens = cls->tokens_per_minute;
    k->t_fill = -1;
    if (index == 0) snprintf(k->label, sizeof k->label, "anonymous");
    else snprintf(k->label, sizeof k->label, "%s/%d", cls->name, index);
}

int bn_limits_new(const bn_srv_config *c, bn_limits **out, bn_error *err)
{
    *out = NULL;
    bn_limits *l = calloc(1, sizeof *l);
    if (!l) return bn_err(err, "out of memory");
    l->refs = 1;
    l->n_keys = c->n_api_keys + 1;
    l->keys = calloc((size_t)l->n_keys, sizeof *l->keys);
    l->running = calloc((size_t)l->n_keys, sizeof *l->running);
    if (!l->keys || !l->running) {
        limits_free(l);
        return bn_err(err, "out of memory");
    }
    bn_key_class anon = *bn_config_class(c, "default");
    anon.max_concurrent = 0;
    anon.tokens_per_minute = 0;
    key_init(&l->keys[0], &anon, 0);
    for (int i = 1; i < l->n_keys; i++) {
        const char *name = c->api_key_class ? c->api_key_class[i - 1] : NULL;
        const bn_key_class *cls = bn_config_class(c, name ? name : "default");
        if (!cls) {
            limits_free(l);
            return bn_err(err, "api_keys: key #%d names class '%s', which no key_class line "
                          "defines", i, name);
        }
        key_state *k = &l->keys[i];
        key_init(k, cls, i);
        k->len = strlen(c->api_keys[i - 1]);
        if (!(k->secret = strdup(c->api_keys[i - 1]))) {
            limits_free(l);
            return bn_err(err, "out of memory");
        }
    }
    *out = l;
    return 0;
}

bn_limits *bn_limits_ref(bn_limits *l)
{
    if (l) l->refs++;
    return l;
}

void bn_limits_unref(bn_limits *l)
{
    if (l && --l->refs == 0) limits_free(l);
}

int bn_limits_n_keys(const bn_limits *l) { return l->n_keys; }

static key_state *key_at(const bn_limits *l, int key)
{
    return l && key >= 0 && key < l->n_keys ? &l->keys[key] : NULL;
}

const char *bn_limits_key_label(const bn_limits *l, int key)
{
    const key_state *k = key_at(l, key);
    return k ? k->label : "unknown";
}

const int *bn_limits_running(const bn_limits *l) { return l->running; }

/* ---- authentication ---------------------------------------------------------------------- */

/* 1 when the n bytes at a equal b (bn bytes), in time that depends on the lengths only. */
static int ct_equal(const char *a, size_t n, const char *b, size_t bn)
{
    unsigned diff = n != bn;
    for (size_t i = 0; i < bn; i++) {
        size_t j = i < n ? i : 0;   /* never read past a; a short a already differs */
        diff |= (unsigned char)(n ? a[j] : 0) ^ (unsigned char)b[i];
    }
    return diff == 0;
}

int bn_limits_auth(const bn_limits *l, const char *authorization)
{
    if (l->n_keys == 1) return 0;
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0) return -1;
    const char *tok = authorization + 7;
    while (*tok == ' ') tok++;
    size_t n = strlen(tok);
    /* every key is compared, whatever matched: the time says nothing about which did */
    int match = -1;
    for (int i = 1; i < l->n_keys; i++) {
        int m = -ct_equal(tok, n, l->keys[i].secret, l->keys[i].len);   /* 0 or all ones */
        match = (match & ~m) | (i & m);
    }
    return n ? match : -1;
}

/* ---- priorities and limits --------------------------------------------------------------- */

int bn_limits_priority(const bn_limits *l, int key, int requested, int has_requested)
{
    const key_state *k = key_at(l, key);
    int floor = k ? k->cls.priority : 0;
    if (!has_requested) return floor;
    if (requested > BN_PRIORITY_LIMIT) requested = BN_PRIORITY_LIMIT;
    return requested < floor ? floor : requested;
}

static void refill(key_state *k, double now)
{
    double cap = k->cls.tokens_per_minute;
    if (k->t_fill >= 0 && now > k->t_fill) {
        k->tokens += cap / 60.0 * (now - k->t_fill);
        if (k->tokens > cap) k->tokens = cap;
    }
    if (k->t_fill < 0 || now > k->t_fill) k->t_fill = now;
}

int bn_limits_admit(bn_limits *l, int key, uint32_t prompt_tokens, double now,
                    int *retry_after_s, const char **why)
{
    key_state *k = key_at(l, key);
    if (!k) return 0;
    if (k->cls.max_concurrent && k->in_flight >= k->cls.max_concurrent) {
        /* when one of them ends is unknown: ask again soon */
        *retry_after_s = 1;
        *why = "max_concurrent";
        return 1;
    }
    if (k->cls.tokens_per_minute) {
        refill(k, now);
        if (k->tokens < 0) {
            double s = ceil(-k->tokens * 60.0 / k->cls.tokens_per_minute);
            if (s < 1) s = 1;
            if (s > RETRY_MAX_S) s = RETRY_MAX_S;
            *retry_after_s = (int)s;
            *why = "tokens_per_minute";
            return 1;
        }
        k->tokens -= prompt_tokens;
    }
    k->in_flight++;
    return 0;
}

void bn_limits_start(bn_limits *l, int key)
{
    if (key_at(l, key)) l->running[key]++;
}

void bn_limits_done(bn_limits *l, int key, int started, uint32_t completion_tokens, double now)
{
    key_state *k = key_at(l, key);
    if (!k) return;
    if (k->in_flight > 0) k->in_flight--;
    if (started && l->running[key] > 0) l->running[key]--;
    if (k->cls.tokens_per_minute) {
        refill(k, now);
        k->tokens -= completion_tokens;
    }
}
