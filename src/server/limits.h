/* API keys, their classes and per-key limits, as a pure data structure (no libevent, no
 * processes), unit-tested on its own.
 *
 * Keys come from the config's api_keys ("KEY" or "KEY:CLASS"), classes from key_class lines
 * (name, default priority, max_concurrent, tokens_per_minute). Each key has its own counters:
 * classes share settings, not budgets. With no api_keys configured every request is the
 * anonymous key 0 and nothing is limited.
 *
 * Life of a request: bn_limits_auth (who), bn_limits_priority (when), bn_limits_admit (may it
 * enter: its concurrency slot and a tokens-per-minute charge for the prompt), bn_limits_start
 * (it runs now: the fair-share count), bn_limits_done (it ended: completion tokens charged,
 * counts released). The object is refcounted because a reload replaces it while requests
 * admitted under the old one are still running. */
#ifndef BN_SERVER_LIMITS_H
#define BN_SERVER_LIMITS_H

#include <stdint.h>

#include "base/error.h"
#include "server/config.h"

typedef struct bn_limits bn_limits;

/* Builds the key table from c (copied: c may be freed afterwards). refs = 1. */
int bn_limits_new(const bn_srv_config *c, bn_limits **out, bn_error *err);
bn_limits *bn_limits_ref(bn_limits *l);
void bn_limits_unref(bn_limits *l);

/* Keys, anonymous included (index 0 is anonymous: used only when no key is configured). */
int bn_limits_n_keys(const bn_limits *l);
/* A label for logs and metrics: "CLASS/N" (never the secret). */
const char *bn_limits_key_label(const bn_limits *l, int key);

/* The key of an Authorization header value ("Bearer KEY"; NULL when absent): its index, 0 when
 * no keys are configured, or -1 when keys are configured and none matches (401). Compared in
 * constant time. */
int bn_limits_auth(const bn_limits *l, const char *authorization);

/* The priority a request runs at: its own (has_requested) but never better (lower) than its
 * class allows; otherwise the class's default. */
int bn_limits_priority(const bn_limits *l, int key, int requested, int has_requested);

/* Admission at arrival. 0: admitted (counted as in flight, prompt_tokens charged). 1: over a
 * limit: *retry_after_s (>= 1) says when it may pass, *why what was exceeded (static text,
 * "max_concurrent" or "tokens_per_minute"). */
int bn_limits_admit(bn_limits *l, int key, uint32_t prompt_tokens, double now,
                    int *retry_after_s, const char **why);
/* The request was dispatched to a worker (fair share counts running requests per key). */
void bn_limits_start(bn_limits *l, int key);
/* The admitted request ended (started says whether bn_limits_start was called for it):
 * completion_tokens are charged, its counts released. */
void bn_limits_done(bn_limits *l, int key, int started, uint32_t completion_tokens, double now);
/* Running requests per key (bn_limits_n_keys entries): bn_queue_best's fair-share input. */
const int *bn_limits_running(const bn_limits *l);

#endif
