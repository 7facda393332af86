/* Worker-process harness for the channel and worker tests: forks real bn_worker_main processes
 * on socketpairs and exchanges frames with them, as the master does.
 *
 * libgomp is not fork-safe: call bn_tw_start() from main(), before this process could run an
 * OpenMP region. Every wait is bounded (poll() timeouts, BN_TW_WAIT_MS per frame), so a broken
 * worker fails a test instead of hanging it; bn_tw_stop() kills and reaps whatever is left. */
#ifndef BN_TESTS_WORKER_HARNESS_H
#define BN_TESTS_WORKER_HARNESS_H

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>   /* testutil.h: WEXITSTATUS */

#include "model/model.h"
#include "server/channel.h"
#include "server/worker.h"
#include "text/tokenizer.h"
#include "testutil.h"

#define BN_TW_WAIT_MS 120000   /* per frame: generous for valgrind; a hang fails, it never blocks */

/* The master's side of one worker process. */
typedef struct bn_tw {
    const char *name;    /* for failure messages */
    pid_t pid;           /* -1 once reaped (or never started) */
    int fd;              /* the master's end; -1 once closed */
    bn_buf in;           /* bytes from the worker not yet decoded past off */
    size_t off;
    int hello_seen;
    bn_fr_hello hello;
} bn_tw;

long bn_tw_now_ms(void);   /* CLOCK_MONOTONIC milliseconds */
/* The next frame from w within BN_TW_WAIT_MS: 1, or 0 on timeout / EOF. f points into w->in
 * until the next call. A malformed frame fails the test. */
int bn_tw_next_frame(bn_tw *w, bn_frame *f);
/* Writes all of b to the worker (failing the test on error), then empties b. */
void bn_tw_send(bn_tw *w, bn_buf *b);
/* One frame without payload (RESET, CANCEL). */
void bn_tw_send_simple(bn_tw *w, uint16_t type, uint64_t id);
/* An ERROR frame's code, its message copied to msg (NUL-terminated, cut to cap; none when cap is
 * 0). A malformed ERROR fails the test. */
uint32_t bn_tw_error_of(const bn_frame *f, char *msg, size_t cap);
/* Reads the worker's HELLO into w->hello once; an ERROR instead (start-up failed) fails the test. */
void bn_tw_wait_hello(bn_tw *w);
/* Waits (bounded) for pid to exit; returns its wait status, or -1 if it is still running. */
int bn_tw_reap(pid_t pid, long timeout_ms);
/* Forks every worker at once (n <= 8): each child keeps only its own end of its own socketpair
 * (so that closing the master's end really is the EOF the worker sees) and runs
 * bn_worker_main(&specs[i]). 0, or -1 (then errno tells why, unless n > 8). */
int bn_tw_start(bn_tw **ws, bn_worker_spec *specs, int n);
/* Closes, kills and reaps what is left of each worker; frees its buffer. */
void bn_tw_stop(bn_tw **ws, int n);
/* A zeroed spec for worker index serving m with tk: engine defaults, one thread (a shared
 * machine: one thread per worker). The test sets the rest (slots, prefill chunk...). */
void bn_tw_spec(bn_worker_spec *spec, int index, const bn_model *m, const bn_tokenizer *tk);
/* main() of a worker test: starts the n workers (bn_tw_start), runs s in this process
 * (bn_tw_run_nofork), stops the workers. Returns how many tests failed, or -1 (on stderr,
 * prefixed by who) when the workers could not be started. */
int bn_tw_run_suite(const char *who, Suite *s, bn_tw **ws, bn_worker_spec *specs, int n);

/* Runs s in this process (CK_NOFORK: libgomp is not fork-safe, and worker processes or models
 * are shared across tests); returns how many tests failed. Frees s. */
static inline int bn_tw_run_nofork(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed;
}

/* Makes the synthetic model shape ("tiny", "tiny,n_ctx_max=4096,n_layer=8") at path with
 * `$BN_BITNET mkmodel`, opens it, and its tokenizer when tk is non-NULL. 0, or -1 with the reason
 * on stderr (prefixed by who). Inline, so that tests without worker processes (test_prompt_cache)
 * can use it without linking the worker. */
static inline int bn_tw_open_model(const char *who, const char *shape, const char *path, bn_model **m,
                                   bn_tokenizer **tk)
{
    const char *bitnet = getenv("BN_BITNET");
    char cmd[2048];
    bn_error err = {{0}};
    snprintf(cmd, sizeof cmd, "'%s' mkmodel '%s' '%s' >/dev/null", bitnet && *bitnet ? bitnet : "./bitnet",
             shape, path);
    if (bn_test_sh(cmd)) {
        fprintf(stderr, "%s: cannot make the %s model (BN_BITNET=%s)\n", who, shape, bitnet);
        return -1;
    }
    if (bn_model_open(path, m, &err) || (tk && !(*tk = bn_tokenizer_new((*m)->vocab, &err)))) {
        fprintf(stderr, "%s: %s: %s\n", who, path, err.msg);
        return -1;
    }
    return 0;
}

#endif
