/* The error log and the access log. Each line is formatted in memory and handed to the kernel
 * in one write(2) on an O_APPEND descriptor, so lines from the master and its workers (which
 * inherit the descriptor) never interleave mid-line. Reopen (logrotate, SIGUSR1) opens the new
 * file first and dup3()s it over the old descriptor: there is no moment without a log. */
#define _GNU_SOURCE
#include "server/log.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/config.h"

/* ---- a log target: a file we own, stderr, or nothing ---- */

typedef struct target {
    int fd;       /* -1: off */
    int owned;    /* a file opened here (reopened, closed), not stderr */
    char *path;
} target;

#define TARGET_OFF ((target){-1, 0, NULL})

static int open_append(const char *path, bn_error *err)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) return bn_err(err, "%s: cannot open for appending: %s", path, strerror(errno));
    return fd;
}

static int target_open(target *t, const char *path, bn_error *err)
{
    *t = TARGET_OFF;
    if (!path || !strcmp(path, "off")) return 0;
    if (!strcmp(path, "stderr")) {
        t->fd = STDERR_FILENO;
        return 0;
    }
    if (!(t->path = strdup(path))) return bn_err(err, "%s: out of memory", path);
    if ((t->fd = open_append(path, err)) < 0) {
        free(t->path);
        *t = TARGET_OFF;
        return -1;
    }
    t->owned = 1;
    return 0;
}

static int target_reopen(target *t, bn_error *err)
{
    if (!t->owned) return 0;
    int fd = open_append(t->path, err);
    if (fd < 0) return -1;   /* the old file keeps receiving lines */
    int rc = dup3(fd, t->fd, O_CLOEXEC) < 0 ? bn_err(err, "%s: cannot reopen: %s", t->path, strerror(errno)) : 0;
    close(fd);
    return rc;
}

static void target_close(target *t)
{
    if (t->owned) close(t->fd);
    free(t->path);
    *t = TARGET_OFF;
}

/* One write(2) per line; the loop only finishes a short write (a pipe, a full disk). */
static void target_write(const target *t, const char *s, size_t n)
{
    while (t->fd >= 0 && n > 0) {
        ssize_t w = write(t->fd, s, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;   /* nowhere to report a failing log: drop the line */
        s += w;
        n -= (size_t)w;
    }
}

/* "2026-12-01T19:40:02.123Z" into out[32]. */
static void iso_time(char *out, size_t len)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* ---- the error log (one per process) ---- */

static struct {
    target t;
    int level;
    char tag[64];
} elog = {{-1, 0, NULL}, BN_LOG_INFO, "bitnetd"};

int bn_log_open(const char *path, int level, bn_error *err)
{
    target t;
    if (target_open(&t, path, err) != 0) return -1;   /* the current log stays */
    target_close(&elog.t);
    elog.t = t;
    elog.level = level;
    return 0;
}

void bn_log_set_level(int level) { elog.level = level; }
int bn_log_reopen(bn_error *err) { return target_reopen(&elog.t, err); }
void bn_log_close(void) { target_close(&elog.t); }

void bn_log_set_tag(const char *tag) { snprintf(elog.tag, sizeof elog.tag, "%s", tag ? tag : "bitnetd"); }

static const char *level_name(int level)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    return names[level < BN_LOG_ERROR ? BN_LOG_ERROR : level > BN_LOG_DEBUG ? BN_LOG_DEBUG : level];
}

void bn_log(int level, const char *fmt, ...)
{
    if (elog.t.fd < 0 || level > elog.level) return;
    int saved = errno;   /* callers log, then report errno */
    char line[4096], ts[32];
    iso_time(ts, sizeof ts);
    int head = snprintf(line, sizeof line, "%s [%s] %s: ", ts, level_name(level), elog.tag);
    size_t room = sizeof line - (size_t)head - 1;   /* keep one byte for the '\n' */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line + head, room + 1, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n < room ? (size_t)n : room;
    if (n > 0 && (size_t)n > room) memcpy(line + head + len - 3, "...", 3);
    /* A message is one line: embedded line breaks would forge or split entries. */
    for (size_t i = (size_t)head; i < (size_t)head + len; i++)
        if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
    len += (size_t)head;
    line[len++] = '\n';
    target_write(&elog.t, line, len);
    errno = saved;
}

/* ---- the access log ---- */

struct bn_access_log {
    target t;
    int format;
};

bn_access_log *bn_access_log_open(const char *path, int format, bn_error *err)
{
    if (format != BN_LOGFMT_JSON && format != BN_LOGFMT_COMBINED) {
        bn_err(err, "access log: unknown format %d", format);
        return NULL;
    }
    bn_access_log *l = malloc(sizeof *l);
    if (!l) {
        bn_err(err, "access log: out of memory");
        return NULL;
    }
    l->format = format;
    if (target_open(&l->t, path, err) != 0) {
        free(l);
        return NULL;
    }
    return l;
}

int bn_access_log_reopen(bn_access_log *l, bn_error *err) { return target_reopen(&l->t, err); }

void bn_access_log_close(bn_access_log *l)
{
    if (!l) return;
    target_close(&l->t);
    free(l);
}

void bn_access_log_write(bn_access_log *l, const bn_access_rec *r)
{
    if (!l || l->t.fd < 0) return;
    char *line = bn_access_log_format(l->format, r);
    if (line) target_write(&l->t, line, strlen(line));
    free(line);
}

/* A JSON string, or null; bytes that are not UTF-8 (a client's header) become '?'. */
static json_t *jstr(const char *s)
{
    if (!s) return json_null();
    json_t *j = json_string(s);
    if (j) return j;
    char *copy = strdup(s);
    if (!copy) return NULL;
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80) *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

/* Seconds to the microsecond, or null when not applicable. */
static json_t *jtime(double s)
{
    return s >= 0 && isfinite(s) ? json_real(round(s * 1e6) / 1e6) : json_null();
}

static char *format_json(const bn_access_rec *r)
{
    char ts[32];
    iso_time(ts, sizeof ts);
    json_t *o = json_object();
    if (!o) return NULL;
    /* In this order (jansson keeps insertion order), so the line reads like the combined one. */
    const struct {
        const char *key;
        json_t *v;
    } kv[] = {
        {"time", json_string(ts)},
        {"request_id", jstr(r->request_id)},
        {"remote", jstr(r->remote)},
        {"method", jstr(r->method)},
        {"path", jstr(r->path)},
        {"status", json_integer(r->status)},
        {"bytes", json_integer((json_int_t)r->bytes_sent)},
        {"prompt_tokens", json_integer(r->prompt_tokens)},
        {"completion_tokens", json_integer(r->completion_tokens)},
        {"cached_tokens", json_integer(r->cached_tokens)},
        {"queue_s", jtime(r->queue_s)},
        {"ttft_s", jtime(r->ttft_s)},
        {"total_s", jtime(r->total_s)},
        {"worker", r->worker >= 0 ? json_integer(r->worker) : json_null()},
        {"finish_reason", jstr(r->finish_reason)},
        {"user_agent", jstr(r->user_agent)},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        bad |= json_object_set_new(o, kv[i].key, kv[i].v) != 0;
    const size_t flags = JSON_COMPACT | JSON_REAL_PRECISION(9);
    size_t n = bad ? 0 : json_dumpb(o, NULL, 0, flags);
    char *line = n ? malloc(n + 2) : NULL;
    if (line) {
        json_dumpb(o, line, n, flags);
        line[n] = '\n';
        line[n + 1] = 0;
    }
    json_decref(o);
    return line;
}

/* nginx's escaping for log fields: '"', '\\', control and non-ASCII bytes as \xHH (and ' '
 * outside quotes, so fields stay split on spaces); NULL or empty is "-". */
static void put_field(FILE *f, const char *s, int quoted)
{
    if (!s || !*s) {
        fputc('-', f);
        return;
    }
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\' || *p < 0x20 || *p >= 0x7f || (!quoted && *p == ' '))
            fprintf(f, "\\x%02X", *p);
        else
            fputc(*p, f);
    }
}

static void put_time(FILE *f, const char *key, double s)
{
    if (s >= 0 && isfinite(s))
        fprintf(f, " %s=%.3f", key, s);
    else
        fprintf(f, " %s=-", key);
}

static char *format_combined(const bn_access_rec *r)
{
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);
    if (!f) return NULL;
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    put_field(f, r->remote, 0);
    fprintf(f, " - - [%02d/%s/%04d:%02d:%02d:%02d +0000] \"", tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900,
            tm.tm_hour, tm.tm_min, tm.tm_sec);
    put_field(f, r->method, 1);
    fputc(' ', f);
    put_field(f, r->path, 1);
    fprintf(f, "\" %d %llu \"-\" \"", r->status, (unsigned long long)r->bytes_sent);
    put_field(f, r->user_agent, 1);
    fputs("\" rid=", f);
    put_field(f, r->request_id, 0);
    fprintf(f, " pt=%u ct=%u", r->prompt_tokens, r->completion_tokens);
    put_time(f, "queue", r->queue_s);
    put_time(f, "ttft", r->ttft_s);
    put_time(f, "total", r->total_s);
    if (r->worker >= 0)
        fprintf(f, " worker=%d", r->worker);
    else
        fputs(" worker=-", f);
    fprintf(f, " cached=%u finish=", r->cached_tokens);
    put_field(f, r->finish_reason, 0);
    fputc('\n', f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        free(out);
        return NULL;
    }
    return out;
}

char *bn_access_log_format(int format, const bn_access_rec *r)
{
    return format == BN_LOGFMT_COMBINED ? format_combined(r) : format_json(r);
}
