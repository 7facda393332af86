/* Logs: the error log (levelled lines, "2026-12-01T19:40:02Z [info] bitnetd: ...") and the access
 * log (one line per request, JSON or nginx-combined-like). Both reopen on SIGUSR1 (logrotate), and
 * writes never block the master for long: each line is one write(2) to an O_APPEND file. */
#ifndef BN_SERVER_LOG_H
#define BN_SERVER_LOG_H

#include <stdint.h>

#include "base/error.h"
#include "server/config.h"   /* enum bn_log_level, bn_log_format */

/* path: a file (O_APPEND|O_CREAT), "stderr", or "off"/NULL (nothing). */
int bn_log_open(const char *path, int level /* enum bn_log_level */, bn_error *err);
void bn_log_set_level(int level);
int bn_log_reopen(bn_error *err);
void bn_log_close(void);
/* A tag ("master", "worker 3") prefixes every line of this process. */
void bn_log_set_tag(const char *tag);
void bn_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define bn_log_error(...) bn_log(BN_LOG_ERROR, __VA_ARGS__)
#define bn_log_warn(...) bn_log(BN_LOG_WARN, __VA_ARGS__)
#define bn_log_info(...) bn_log(BN_LOG_INFO, __VA_ARGS__)
#define bn_log_debug(...) bn_log(BN_LOG_DEBUG, __VA_ARGS__)

/* One finished HTTP request. Times in seconds; negative = not applicable (no queue, no token). */
typedef struct bn_access_rec {
    const char *request_id, *method, *path, *remote, *user_agent;
    int status;
    uint64_t bytes_sent;
    uint32_t prompt_tokens, completion_tokens, cached_tokens;
    double queue_s, ttft_s, total_s;
    int worker;                     /* -1: answered by the master */
    const char *finish_reason;      /* NULL when none */
} bn_access_rec;

typedef struct bn_access_log bn_access_log;
/* format: enum bn_log_format. path as for bn_log_open. */
bn_access_log *bn_access_log_open(const char *path, int format, bn_error *err);
int bn_access_log_reopen(bn_access_log *l, bn_error *err);
void bn_access_log_write(bn_access_log *l, const bn_access_rec *r);
void bn_access_log_close(bn_access_log *l);
/* The line that would be written (malloc'd, with its '\n'), for tests. */
char *bn_access_log_format(int format, const bn_access_rec *r);

#endif
