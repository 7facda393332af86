/* bitnet bench --draft: what prompt-lookup drafting costs and gains on this machine. */
#ifndef BN_CLI_BENCH_DRAFT_H
#define BN_CLI_BENCH_DRAFT_H

#include "engine/engine.h"

/* Three tables, on an engine of its own (eo's options, a context that holds the test):
 *  1. the cost of one verify pass of k = 2, 4, 8 drafts relative to one decode step, at a depth
 *     of n_prompt tokens;
 *  2. greedy decoding of n_gen tokens after prompt[0..n_prompt) with draft `mode` against plain
 *     decoding: tok/s, tokens per pass, acceptance rate, speed-up, and that the texts agree;
 *  3. the speed-up as a function of the acceptance rate: a proposer that knows plain decoding's
 *     text and is right with probability a per token, for k = 2, 4, 8 and auto.
 * reps runs of each (after one warm-up); ratios are within this one run. */
int bn_bench_draft(const bn_model *m, const bn_engine_opts *eo, int mode, const int32_t *prompt,
                   uint32_t n_prompt, uint32_t n_gen, uint32_t reps, bn_error *err);

#endif
