/* Integration-test harness: bitnetd on loopback and a raw HTTP/1.1 client (server_harness.h). */
#define _GNU_SOURCE
#include "server_harness.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SERVERS 16
#define MAX_TMP 64
#define MAX_HEAD (64 * 1024)

static bn_srv *servers[MAX_SERVERS];
static char *tmp_files[MAX_TMP];
static int n_tmp;

/* ---- small utilities ----------------------------------------------------------------- */

double bn_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {}
}

/* Milliseconds left until deadline (>= 0). */
static int left_ms(double deadline)
{
    double l = (deadline - bn_now()) * 1000.0;
    return l <= 0 ? 0 : l > 1e9 ? 1000000000 : (int)l + 1;
}

static void cleanup_at_exit(void)
{
    bn_srv_stop_all();
    if (getenv("BN_KEEP_TMP")) return;
    for (int i = 0; i < n_tmp; i++) {
        unlink(tmp_files[i]);
        free(tmp_files[i]);
    }
    n_tmp = 0;
}

/* Once per process: no SIGPIPE from dead peers, orphaned workers come back to us for reaping. */
static void harness_init(void)
{
    static int done;
    if (done) return;
    done = 1;
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    atexit(cleanup_at_exit);
}

static void track_tmp(const char *path)
{
    if (n_tmp < MAX_TMP) tmp_files[n_tmp++] = strdup(path);
}

const char *bn_srv_tmp(const char *name)
{
    static char bufs[8][512];
    static int i, seq;
    static char dir[400];
    if (!dir[0]) {   /* absolute: a daemon chdirs to / */
        const char *d = getenv("BN_TEST_TMPDIR");
        char cwd[256];
        if (!d || !*d) d = "/tmp";
        if (d[0] != '/' && getcwd(cwd, sizeof cwd))
            snprintf(dir, sizeof dir, "%s/%s", cwd, d);
        else
            snprintf(dir, sizeof dir, "%s", d);
    }
    char *b = bufs[i++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s.%ld.%d", dir, name, (long)getpid(), seq++);
    return b;
}

int bn_write_file(const char *path, const char *text)
{
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Reads a whole file (NUL-terminated, malloc'd) or NULL. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0, r;
    char *b = malloc(cap);
    while (b && (r = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n < 2) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) free(b);
            b = nb;
        }
    }
    fclose(f);
    if (!b) return NULL;
    b[n] = 0;
    if (len) *len = n;
    return b;
}

int bn_pid_alive(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    char *s = read_file(path, NULL);
    if (!s) return 0;
    const char *p = strrchr(s, ')');
    int alive = p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
    free(s);
    return alive;
}

int bn_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &al) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

int bn_run_capture(char *const argv[], char *out, size_t cap, int timeout_ms)
{
    harness_init();
    int p[2];
    if (pipe(p) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, 0);
        dup2(p[1], 1);
        dup2(p[1], 2);
        close(p[0]);
        close(p[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    size_t n = 0;
    double deadline = bn_now() + timeout_ms / 1000.0;
    for (;;) {
        struct pollfd pf = {p[0], POLLIN, 0};
        int r = poll(&pf, 1, left_ms(deadline));
        if (r <= 0) break;
        char tmp[4096];
        ssize_t k = read(p[0], tmp, sizeof tmp);
        if (k <= 0) break;
        size_t take = (size_t)k < cap - 1 - n ? (size_t)k : cap - 1 - n;
        memcpy(out + n, tmp, take);
        n += take;
    }
    out[n] = 0;
    close(p[0]);
    int st = 0;
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid) break;
        if (w < 0 && errno != EINTR) return -1;
        if (left_ms(deadline) == 0) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        sleep_ms(5);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- models -------------------------------------------------------------------------- */

const char *bn_srv_model(const char *shape)
{
    static struct { char *shape, *path; } cache[8];
    harness_init();
    int i = 0;
    for (; i < 8 && cache[i].shape; i++)
        if (strcmp(cache[i].shape, shape) == 0) return cache[i].path;
    if (i == 8) return NULL;
    const char *bitnet = getenv("BN_BITNET");
    if (!bitnet || !*bitnet) {
        fprintf(stderr, "harness: BN_BITNET is not set\n");
        return NULL;
    }
    char name[128], path[512];
    snprintf(name, sizeof name, "model-%d", i);
    snprintf(path, sizeof path, "%s.bnpk", bn_srv_tmp(name));
    char out[4096];
    char *argv[] = {(char *)bitnet, "mkmodel", (char *)shape, path, NULL};
    int rc = bn_run_capture(argv, out, sizeof out, 60000);
    if (rc != 0) {
        fprintf(stderr, "harness: %s mkmodel %s failed (%d): %s\n", bitnet, shape, rc, out);
        return NULL;
    }
    track_tmp(path);
    cache[i].shape = strdup(shape);
    cache[i].path = strdup(path);
    return cache[i].path;
}

/* ---- servers ------------------------------------------------------------------------- */

/* 1 if text has a line setting key ("key =" / "key=" after optional blanks). */
static int has_key(const char *text, const char *key)
{
    size_t kl = strlen(key);
    for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        while (*l == ' ' || *l == '\t') l++;
        if (strncmp(l, key, kl) == 0 && (l[kl] == ' ' || l[kl] == '\t' || l[kl] == '=')) return 1;
    }
    return 0;
}

static char *config_with_defaults(const char *text, int port)
{
    const char *model = has_key(text, "model") ? NULL : bn_srv_model(BN_SRV_MODEL_DEFAULT);
    if (!has_key(text, "model") && !model) return NULL;
    size_t cap = strlen(text) + 2048;
    char *c = malloc(cap);
    if (!c) return NULL;
    size_t n = 0;
    n += snprintf(c + n, cap - n, "# written by tests/server_harness.c\n");
    if (!has_key(text, "listen")) n += snprintf(c + n, cap - n, "listen = 127.0.0.1:%d\n", port);
    if (model) n += snprintf(c + n, cap - n, "model = %s\n", model);
    if (!has_key(text, "workers")) n += snprintf(c + n, cap - n, "workers = 1\n");
    if (!has_key(text, "threads")) n += snprintf(c + n, cap - n, "threads = 1\n");
    if (!has_key(text, "access_log")) n += snprintf(c + n, cap - n, "access_log = off\n");
    snprintf(c + n, cap - n, "%s\n", text);
    return c;
}

static void srv_track(bn_srv *s, int add)
{
    for (int i = 0; i < MAX_SERVERS; i++) {
        if (add && !servers[i]) {
            servers[i] = s;
            return;
        }
        if (!add && servers[i] == s) {
            servers[i] = NULL;
            return;
        }
    }
}

/* Reads a pid from the file (bounded wait until it has one). */
static pid_t read_pid_file(const char *path, int timeout_ms)
{
    double deadline = bn_now() + timeout_ms / 1000.0;
    do {
        char *t = read_file(path, NULL);
        long v = t ? strtol(t, NULL, 10) : 0;
        free(t);
        if (v > 0) return (pid_t)v;
        sleep_ms(10);
    } while (left_ms(deadline) > 0);
    return 0;
}

static const char *arg_after(char *const *args, int n, const char *flag)
{
    for (int i = 0; i + 1 < n; i++)
        if (strcmp(args[i], flag) == 0) return args[i + 1];
    return NULL;
}

/* Forks and execs bitnetd with its output to s->log, in a new process group. */
static int spawn(bn_srv *s, char *const *args, int n_args)
{
    const char *bin = getenv("BN_BITNETD");
    if (!bin || !*bin) {
        fprintf(stderr, "harness: BN_BITNETD is not set\n");
        return -1;
    }
    char *argv[48];
    int k = 0;
    argv[k++] = (char *)bin;
    argv[k++] = "-c";
    argv[k++] = s->conf;
    if (!s->daemon) argv[k++] = "--foreground";
    for (int i = 0; i < n_args && k < 47; i++) argv[k++] = args[i];
    argv[k] = NULL;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        setpgid(0, 0);
        int fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        int devnull = open("/dev/null", O_RDONLY);
        if (fd < 0 || devnull < 0) _exit(126);
        dup2(devnull, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(bin, argv);
        _exit(127);
    }
    setpgid(pid, pid);
    s->pid = pid;
    s->pgid = pid;
    return 0;
}

/* The launcher of a --daemon start exits once the daemon is detached: reap it, then take the
 * daemon's pid from the pid file. */
static int adopt_daemon(bn_srv *s, char *const *args, int n_args)
{
    const char *pidf = arg_after(args, n_args, "--pid-file");
    if (!bn_srv_reap(s, 30000)) {
        fprintf(stderr, "harness: the --daemon launcher did not exit\n");
        return -1;
    }
    if (!WIFEXITED(s->exit_status) || WEXITSTATUS(s->exit_status) != 0) {
        fprintf(stderr, "harness: the --daemon launcher failed (status 0x%x)\n", s->exit_status);
        return -1;
    }
    pid_t pid = pidf ? read_pid_file(pidf, 10000) : 0;
    if (pid <= 0) {
        fprintf(stderr, "harness: no pid in --pid-file %s\n", pidf ? pidf : "(none given)");
        return -1;
    }
    s->pid = pid;
    s->pgid = getpgid(pid);
    return 0;
}

static bn_srv *start_v(const char *config_text, int wait_ready, va_list ap)
{
    harness_init();
    char *args[40];
    int n_args = 0;
    for (char *a; n_args < 40 && (a = va_arg(ap, char *)) != NULL;) args[n_args++] = a;
    int daemon = 0;
    for (int i = 0; i < n_args; i++) daemon |= strcmp(args[i], "--daemon") == 0;

    for (int attempt = 0; attempt < 3; attempt++) {
        bn_srv *s = calloc(1, sizeof *s);
        if (!s) return NULL;
        s->daemon = daemon;
        s->port = bn_free_port();
        snprintf(s->conf, sizeof s->conf, "%s.conf", bn_srv_tmp("bitnetd"));
        snprintf(s->log, sizeof s->log, "%s.log", bn_srv_tmp("bitnetd"));
        char *text = config_with_defaults(config_text, s->port);
        if (!text || bn_write_file(s->conf, text) != 0) {
            fprintf(stderr, "harness: cannot write %s\n", s->conf);
            free(text);
            free(s);
            return NULL;
        }
        free(text);
        track_tmp(s->conf);
        track_tmp(s->log);
        const char *mline = NULL;
        char *ctext = read_file(s->conf, NULL);
        if (ctext && (mline = strstr(ctext, "\nmodel = ")) != NULL)
            sscanf(mline + 9, "%511[^\n]", s->model);
        free(ctext);
        if (spawn(s, args, n_args) != 0) {
            free(s);
            return NULL;
        }
        srv_track(s, 1);
        if (daemon && adopt_daemon(s, args, n_args) != 0) {
            bn_srv_dump_log(s);
            bn_srv_stop(s, 2000);
            return NULL;
        }
        if (!wait_ready || bn_srv_wait_ready(s, BN_SRV_READY_MS) == 0) return s;
        /* someone took the port between bn_free_port() and bind: try another */
        int port_taken = bn_srv_log_has(s, "in use");
        if (!port_taken || attempt == 2) {
            fprintf(stderr, "harness: bitnetd (%s) did not become ready on port %d\n", s->conf,
                    s->port);
            bn_srv_dump_log(s);
        }
        bn_srv_stop(s, 2000);
        if (!port_taken) return NULL;
    }
    return NULL;
}

bn_srv *bn_srv_start(const char *config_text, ...)
{
    va_list ap;
    va_start(ap, config_text);
    bn_srv *s = start_v(config_text, 1, ap);
    va_end(ap);
    return s;
}

bn_srv *bn_srv_spawn(const char *config_text, ...)
{
    va_list ap;
    va_start(ap, config_text);
    bn_srv *s = start_v(config_text, 0, ap);
    va_end(ap);
    return s;
}

int bn_srv_reap(bn_srv *s, int timeout_ms)
{
    if (!s->pid) return 1;
    double deadline = bn_now() + timeout_ms / 1000.0;
    for (;;) {
        int st = 0;
        pid_t w = waitpid(s->pid, &st, WNOHANG);
        if (w == s->pid || (w < 0 && errno == ECHILD && !bn_pid_alive(s->pid))) {
            s->exit_status = w == s->pid ? st : -1;
            s->pid = 0;
            return 1;
        }
        if (left_ms(deadline) == 0) return 0;
        sleep_ms(5);
    }
}

int bn_srv_wait_ready(bn_srv *s, int timeout_ms)
{
    double deadline = bn_now() + timeout_ms / 1000.0;
    for (;;) {
        if (bn_srv_reap(s, 0)) return -1;
        bn_http_resp r;
        int rc = bn_http_req(s->port, "GET", "/ready", NULL, NULL, &r, 2000);
        int st = r.status;
        bn_http_resp_free(&r);
        if (rc == 0 && st == 200) return 0;
        if (left_ms(deadline) == 0) return -1;
        sleep_ms(20);
    }
}

/* Kills and reaps what is left in a process group (workers whose master is gone). */
static void kill_group(pid_t pgid)
{
    if (pgid <= 1 || pgid == getpgrp()) return;
    kill(-pgid, SIGKILL);
    double deadline = bn_now() + 3.0;
    for (;;) {
        pid_t w = waitpid(-pgid, NULL, WNOHANG);
        if (w < 0) break;            /* ECHILD: nothing of ours left in it */
        if (w == 0) {
            if (left_ms(deadline) == 0) break;
            sleep_ms(5);
        }
    }
}

int bn_srv_stop(bn_srv *s, int timeout_ms)
{
    if (!s) return -1;
    int status = -1;
    if (s->pid) {
        kill(s->pid, SIGTERM);
        if (!bn_srv_reap(s, timeout_ms)) {
            fprintf(stderr, "harness: bitnetd %ld did not stop in %d ms: SIGKILL\n", (long)s->pid,
                    timeout_ms);
            kill(s->pid, SIGKILL);
            bn_srv_reap(s, 5000);
        } else {
            status = s->exit_status;
        }
    } else {
        status = s->exit_status;
    }
    kill_group(s->pgid);
    srv_track(s, 0);
    free(s);
    return status;
}

void bn_srv_stop_all(void)
{
    for (int i = 0; i < MAX_SERVERS; i++)
        if (servers[i]) bn_srv_stop(servers[i], 5000);
    while (waitpid(-1, NULL, WNOHANG) > 0) {}   /* orphans handed to us as subreaper */
}

void bn_srv_dump_log(const bn_srv *s)
{
    size_t n = 0;
    char *t = read_file(s->log, &n);
    if (!t) return;
    const char *from = n > 4000 ? t + n - 4000 : t;
    fprintf(stderr, "---- %s (last %zu bytes) ----\n%s\n---- end of log ----\n", s->log,
            strlen(from), from);
    free(t);
}

int bn_srv_log_has(const bn_srv *s, const char *needle)
{
    char *t = read_file(s->log, NULL);
    int has = t && strstr(t, needle);
    free(t);
    return has;
}

/* ---- connections --------------------------------------------------------------------- */

int bn_conn_open(bn_conn *c, int port)
{
    harness_init();
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    return 0;
}

void bn_conn_close(bn_conn *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->len = c->off = c->cap = 0;
}

int bn_conn_send(bn_conn *c, const void *data, size_t n, int timeout_ms)
{
    const char *p = data;
    double deadline = bn_now() + timeout_ms / 1000.0;
    while (n > 0) {
        struct pollfd pf = {c->fd, POLLOUT, 0};
        if (poll(&pf, 1, left_ms(deadline)) <= 0) return -1;
        ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Reads more bytes into the buffer: > 0 bytes read, 0 at EOF, -1 on timeout or error. */
static ssize_t conn_fill(bn_conn *c, double deadline)
{
    if (c->eof) return 0;
    if (c->off > 0 && c->off == c->len) c->off = c->len = 0;
    if (c->cap - c->len < 4096) {
        if (c->off > 0) {
            memmove(c->buf, c->buf + c->off, c->len - c->off);
            c->len -= c->off;
            c->off = 0;
        }
        if (c->cap - c->len < 4096) {
            size_t ncap = c->cap ? c->cap * 2 : 16384;
            char *nb = realloc(c->buf, ncap + 1);
            if (!nb) return -1;
            c->buf = nb;
            c->cap = ncap;
        }
    }
    for (;;) {
        struct pollfd pf = {c->fd, POLLIN, 0};
        int r = poll(&pf, 1, left_ms(deadline));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        ssize_t k = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            if (errno == ECONNRESET) {
                c->eof = 1;
                return 0;
            }
            return -1;
        }
        if (k == 0) c->eof = 1;
        c->len += (size_t)k;
        c->buf[c->len] = 0;
        return k;
    }
}

int bn_conn_wait_closed(bn_conn *c, int timeout_ms)
{
    double deadline = bn_now() + timeout_ms / 1000.0;
    for (;;) {
        ssize_t k = conn_fill(c, deadline);
        if (k == 0) return 1;
        if (k < 0) return left_ms(deadline) == 0 ? 0 : -1;
        c->off = c->len;   /* discard */
    }
}

/* Reads until buf[off..] holds a line ending "\r\n"; returns it NUL-terminated (in place,
 * consumed), or NULL. */
static char *conn_line(bn_conn *c, double deadline)
{
    for (;;) {
        if (c->len > c->off) {
            char *s = c->buf + c->off;
            char *e = memmem(s, c->len - c->off, "\r\n", 2);
            if (e) {
                *e = 0;
                c->off = (size_t)(e + 2 - c->buf);
                return s;
            }
            if (c->len - c->off > MAX_HEAD) return NULL;
        }
        if (conn_fill(c, deadline) <= 0) return NULL;
    }
}

/* Appends exactly n bytes from the connection to (*dst, *dlen, *dcap). */
static int conn_take(bn_conn *c, size_t n, char **dst, size_t *dlen, size_t *dcap,
                     double deadline)
{
    if (*dlen + n + 1 > *dcap) {
        size_t ncap = *dcap ? *dcap : 4096;
        while (ncap < *dlen + n + 1) ncap *= 2;
        char *nb = realloc(*dst, ncap);
        if (!nb) return -1;
        *dst = nb;
        *dcap = ncap;
    }
    while (n > 0) {
        if (c->len == c->off && conn_fill(c, deadline) <= 0) return -1;
        size_t k = c->len - c->off < n ? c->len - c->off : n;
        memcpy(*dst + *dlen, c->buf + c->off, k);
        *dlen += k;
        c->off += k;
        n -= k;
    }
    (*dst)[*dlen] = 0;
    return 0;
}

/* One chunk of a chunked body appended to dst: 1 with data, 0 after the last chunk (trailers
 * consumed), -1 on error. */
static int conn_chunk(bn_conn *c, char **dst, size_t *dlen, size_t *dcap, double deadline)
{
    char *line = conn_line(c, deadline);
    if (!line) return -1;
    char *end;
    errno = 0;
    unsigned long n = strtoul(line, &end, 16);
    if (end == line || errno || n > (1ul << 30)) return -1;
    if (n == 0) {
        for (;;) {   /* trailers, until the blank line */
            char *t = conn_line(c, deadline);
            if (!t) return -1;
            if (!*t) return 0;
        }
    }
    if (conn_take(c, n, dst, dlen, dcap, deadline) != 0) return -1;
    char *crlf = conn_line(c, deadline);
    return crlf && !*crlf ? 1 : -1;
}

void bn_http_resp_free(bn_http_resp *r)
{
    free(r->head);
    free(r->body);
    free(r->hbuf);
    memset(r, 0, sizeof *r);
}

const char *bn_http_header(const bn_http_resp *r, const char *name)
{
    for (int i = 0; i < r->n_hdr; i++)
        if (strcasecmp(r->hname[i], name) == 0) return r->hval[i];
    return NULL;
}

static void parse_head(bn_http_resp *r)
{
    sscanf(r->head, "HTTP/%*d.%*d %d", &r->status);
    r->hbuf = strdup(r->head);
    if (!r->hbuf) return;
    char *save = NULL;
    char *line = strtok_r(r->hbuf, "\r\n", &save);   /* the status line */
    while ((line = strtok_r(NULL, "\r\n", &save)) != NULL && r->n_hdr < 64) {
        char *colon = strchr(line, ':');
        if (!colon) continue;
        *colon = 0;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        for (char *e = v + strlen(v); e > v && (e[-1] == ' ' || e[-1] == '\t');) *--e = 0;
        r->hname[r->n_hdr] = line;
        r->hval[r->n_hdr++] = v;
    }
    const char *te = bn_http_header(r, "Transfer-Encoding");
    r->chunked = te && strcasestr(te, "chunked");
}

static int read_head_until(bn_conn *c, bn_http_resp *r, double deadline)
{
    memset(r, 0, sizeof *r);
    for (;;) {
        if (c->len > c->off) {
            char *s = c->buf + c->off;
            char *e = memmem(s, c->len - c->off, "\r\n\r\n", 4);
            if (e) {
                size_t n = (size_t)(e - s) + 4;
                r->head = strndup(s, n);
                c->off += n;
                if (!r->head) return -1;
                parse_head(r);
                return r->status > 0 ? 0 : -1;
            }
            if (c->len - c->off > MAX_HEAD) return -1;
        }
        if (conn_fill(c, deadline) <= 0) return -1;
    }
}

int bn_conn_read_head(bn_conn *c, bn_http_resp *r, int timeout_ms)
{
    return read_head_until(c, r, bn_now() + timeout_ms / 1000.0);
}

int bn_conn_read_resp(bn_conn *c, bn_http_resp *r, int timeout_ms)
{
    double deadline = bn_now() + timeout_ms / 1000.0;
    if (read_head_until(c, r, deadline) != 0) return -1;
    size_t cap = 0;
    r->body = calloc(1, 1);
    cap = 1;
    if (!r->body) return -1;
    if (r->status == 204 || r->status == 304 || r->status / 100 == 1) return 0;
    const char *cl = bn_http_header(r, "Content-Length");
    if (r->chunked) {
        int k;
        while ((k = conn_chunk(c, &r->body, &r->body_len, &cap, deadline)) == 1) {}
        return k;
    }
    if (cl) {
        char *end;
        long n = strtol(cl, &end, 10);
        if (end == cl || n < 0) return -1;
        return conn_take(c, (size_t)n, &r->body, &r->body_len, &cap, deadline);
    }
    for (;;) {   /* until close */
        ssize_t k = conn_fill(c, deadline);
        if (k < 0) return -1;
        size_t avail = c->len - c->off;
        if (avail && conn_take(c, avail, &r->body, &r->body_len, &cap, deadline) != 0) return -1;
        if (k == 0) return 0;
    }
}

json_t *bn_http_json(const bn_http_resp *r)
{
    if (!r->body) return NULL;
    json_error_t e;
    return json_loadb(r->body, r->body_len, 0, &e);
}

char *bn_http_format(const char *method, const char *path, const char *extra_headers,
                     const char *body, size_t *len)
{
    size_t bl = body ? strlen(body) : 0;
    size_t cap = strlen(method) + strlen(path) + (extra_headers ? strlen(extra_headers) : 0) +
                 bl + 256;
    char *b = malloc(cap);
    if (!b) return NULL;
    int n = snprintf(b, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n", method, path);
    if (body)
        n += snprintf(b + n, cap - n, "Content-Type: application/json\r\nContent-Length: %zu\r\n",
                      bl);
    n += snprintf(b + n, cap - n, "%s\r\n", extra_headers ? extra_headers : "");
    if (body) memcpy(b + n, body, bl);
    *len = (size_t)n + bl;
    b[*len] = 0;
    return b;
}

int bn_http_raw(int port, const void *data, size_t n, bn_http_resp *r, int timeout_ms)
{
    memset(r, 0, sizeof *r);
    bn_conn c;
    if (bn_conn_open(&c, port) != 0) return -1;
    /* a server may answer (413, 431) and close before taking every byte: read regardless */
    (void)bn_conn_send(&c, data, n, timeout_ms);
    int rc = bn_conn_read_resp(&c, r, timeout_ms);
    bn_conn_close(&c);
    return rc;
}

int bn_http_req(int port, const char *method, const char *path, const char *extra_headers,
                const char *body, bn_http_resp *r, int timeout_ms)
{
    memset(r, 0, sizeof *r);
    size_t n;
    char *req = bn_http_format(method, path, extra_headers, body, &n);
    if (!req) return -1;
    int rc = bn_http_raw(port, req, n, r, timeout_ms);
    free(req);
    return rc;
}

int bn_http_get_json(int port, const char *path, json_t **out)
{
    bn_http_resp r;
    *out = NULL;
    if (bn_http_req(port, "GET", path, NULL, NULL, &r, BN_HTTP_MS) != 0) {
        bn_http_resp_free(&r);
        return 0;
    }
    int st = r.status;
    *out = bn_http_json(&r);
    bn_http_resp_free(&r);
    return st;
}

int bn_http_post_json(int port, const char *path, const char *body, json_t **out)
{
    bn_http_resp r;
    *out = NULL;
    if (bn_http_req(port, "POST", path, NULL, body, &r, BN_HTTP_MS) != 0) {
        bn_http_resp_free(&r);
        return 0;
    }
    int st = r.status;
    *out = bn_http_json(&r);
    bn_http_resp_free(&r);
    return st;
}

/* ---- server-sent events --------------------------------------------------------------- */

int bn_sse_open(bn_sse *s, int port, const char *path, const char *extra_headers,
                const char *body, int timeout_ms)
{
    memset(s, 0, sizeof *s);
    s->c.fd = -1;
    if (bn_conn_open(&s->c, port) != 0) return -1;
    size_t n;
    char *req = bn_http_format("POST", path, extra_headers, body, &n);
    int rc = req ? bn_conn_send(&s->c, req, n, timeout_ms) : -1;
    free(req);
    if (rc != 0) return -1;
    if (bn_conn_read_head(&s->c, &s->head, timeout_ms) != 0) return -1;
    const char *cl = bn_http_header(&s->head, "Content-Length");
    s->body_left = !s->head.chunked && cl ? strtol(cl, NULL, 10) : -1;
    s->t_read = bn_now();
    return 0;
}

/* More stream bytes into s->data: 1, 0 at the end, -1 on error. */
static int sse_more(bn_sse *s, double deadline)
{
    if (s->done) return 0;
    int k;
    if (s->head.chunked) {
        k = conn_chunk(&s->c, &s->data, &s->dlen, &s->dcap, deadline);
    } else if (s->body_left == 0) {
        k = 0;
    } else {
        if (s->c.len == s->c.off) {
            ssize_t f = conn_fill(&s->c, deadline);
            if (f < 0) return -1;
            if (f == 0) {
                s->done = 1;
                return 0;
            }
        }
        size_t avail = s->c.len - s->c.off;
        if (s->body_left > 0 && (long)avail > s->body_left) avail = (size_t)s->body_left;
        k = conn_take(&s->c, avail, &s->data, &s->dlen, &s->dcap, deadline) == 0 ? 1 : -1;
        if (k == 1 && s->body_left > 0) s->body_left -= (long)avail;
    }
    if (k == 0) s->done = 1;
    if (k == 1) s->t_read = bn_now();
    return k;
}

static void sse_parse(bn_sse_event *ev)
{
    size_t cap = strlen(ev->text) + 1;
    char *save = NULL, *copy = strdup(ev->text);
    int has_data = 0, has_comment = 0;
    ev->data = calloc(1, cap);
    size_t n = 0;
    for (char *l = copy ? strtok_r(copy, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
        size_t ll = strlen(l);
        if (ll && l[ll - 1] == '\r') l[--ll] = 0;
        if (l[0] == ':') {
            has_comment = 1;
        } else if (strncmp(l, "data:", 5) == 0 && ev->data) {
            const char *v = l[5] == ' ' ? l + 6 : l + 5;
            if (has_data) ev->data[n++] = '\n';
            memcpy(ev->data + n, v, strlen(v));
            n += strlen(v);
            ev->data[n] = 0;
            has_data = 1;
        }
    }
    free(copy);
    if (!has_data) {
        free(ev->data);
        ev->data = NULL;
    }
    ev->comment = !has_data && has_comment;
}

int bn_sse_next(bn_sse *s, bn_sse_event *ev, int timeout_ms)
{
    memset(ev, 0, sizeof *ev);
    double deadline = bn_now() + timeout_ms / 1000.0;
    for (;;) {
        char *e = s->dlen ? memmem(s->data, s->dlen, "\n\n", 2) : NULL;
        if (e) {
            size_t n = (size_t)(e - s->data);
            ev->text = strndup(s->data, n);
            memmove(s->data, e + 2, s->dlen - n - 2);
            s->dlen -= n + 2;
            s->data[s->dlen] = 0;
            if (!ev->text) return -1;
            ev->t = s->t_read;
            sse_parse(ev);
            return 1;
        }
        int k = sse_more(s, deadline);
        if (k == 0) {
            if (s->dlen == 0) return 0;
            ev->text = strndup(s->data, s->dlen);   /* a last event without its blank line */
            s->dlen = 0;
            ev->t = s->t_read;
            if (!ev->text) return -1;
            sse_parse(ev);
            return 1;
        }
        if (k < 0) return -1;
    }
}

char *bn_sse_rest(bn_sse *s, int timeout_ms)
{
    double deadline = bn_now() + timeout_ms / 1000.0;
    int k;
    while ((k = sse_more(s, deadline)) == 1) {}
    if (k < 0) return NULL;
    char *r = s->data ? s->data : calloc(1, 1);
    s->data = NULL;
    s->dlen = s->dcap = 0;
    return r;
}

void bn_sse_event_free(bn_sse_event *ev)
{
    free(ev->text);
    free(ev->data);
    memset(ev, 0, sizeof *ev);
}

void bn_sse_close(bn_sse *s)
{
    bn_conn_close(&s->c);
    bn_http_resp_free(&s->head);
    free(s->data);
    s->data = NULL;
    s->dlen = s->dcap = 0;
}

static void append_text(bn_stream_result *r, const char *t, size_t *len)
{
    size_t tl = strlen(t);
    char *n = realloc(r->text, *len + tl + 1);
    if (!n) return;
    r->text = n;
    memcpy(r->text + *len, t, tl + 1);
    *len += tl;
}

int bn_sse_collect(bn_sse *s, bn_stream_result *r, int timeout_ms)
{
    memset(r, 0, sizeof *r);
    r->status = s->head.status;
    r->events = json_array();
    r->text = calloc(1, 1);
    size_t tlen = 0;
    double deadline = bn_now() + timeout_ms / 1000.0;
    for (;;) {
        bn_sse_event ev;
        int k = bn_sse_next(s, &ev, left_ms(deadline));
        if (k <= 0) return k;
        if (ev.comment) r->n_pings++;
        if (ev.data) {
            if (r->n_events == 0 && !r->done) r->t_first = ev.t;
            r->t_last = ev.t;
            if (strcmp(ev.data, "[DONE]") == 0) {
                r->done = 1;
            } else {
                r->done = 0;   /* [DONE] must be the last data event */
                double *nt = realloc(r->t, (size_t)(r->n_events + 1) * sizeof *nt);
                if (nt) {
                    r->t = nt;
                    r->t[r->n_events] = ev.t;
                }
                r->n_events++;
                json_error_t je;
                json_t *j = json_loads(ev.data, 0, &je);
                if (!j) j = json_string(ev.data);   /* kept, so a test can show it */
                if (json_object_get(j, "error")) r->n_errors++;
                json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
                const char *t = json_string_value(
                    json_object_get(json_object_get(c0, "delta"), "content"));
                if (!t) t = json_string_value(json_object_get(c0, "text"));
                if (t) append_text(r, t, &tlen);
                const char *fr = json_string_value(json_object_get(c0, "finish_reason"));
                if (fr) r->finish = fr;
                json_array_append_new(r->events, j);
            }
        }
        bn_sse_event_free(&ev);
    }
}

void bn_stream_result_free(bn_stream_result *r)
{
    json_decref(r->events);
    free(r->text);
    free(r->t);
    memset(r, 0, sizeof *r);
}

/* ---- server state ---------------------------------------------------------------------- */

int bn_srv_worker_pids(int port, pid_t *pids, int max, char (*states)[16])
{
    json_t *j;
    if (bn_http_get_json(port, "/v1/status", &j) != 200 || !j) {
        json_decref(j);
        return -1;
    }
    json_t *ws = json_object_get(j, "workers");
    int n = 0;
    for (size_t i = 0; i < json_array_size(ws) && n < max; i++, n++) {
        json_t *w = json_array_get(ws, i);
        pids[n] = (pid_t)json_integer_value(json_object_get(w, "pid"));
        if (states) {
            const char *st = json_string_value(json_object_get(w, "state"));
            snprintf(states[n], 16, "%s", st ? st : "?");
        }
    }
    int ok = json_is_array(ws);
    json_decref(j);
    return ok ? n : -1;
}

int bn_srv_wait_workers(int port, const char *state, int timeout_ms)
{
    double deadline = bn_now() + timeout_ms / 1000.0;
    for (;;) {
        pid_t pids[64];
        char st[64][16];
        int n = bn_srv_worker_pids(port, pids, 64, st);
        int all = n > 0;
        for (int i = 0; i < n; i++) all &= strcmp(st[i], state) == 0;
        if (all) return 0;
        if (left_ms(deadline) == 0) return -1;
        sleep_ms(20);
    }
}

long bn_srv_wait_respawn(int port, pid_t old)
{
    double deadline = bn_now() + 30;
    while (bn_now() < deadline) {
        json_t *j;
        if (bn_http_get_json(port, "/v1/status", &j) == 200) {
            json_t *w = json_array_get(json_object_get(j, "workers"), 0);
            pid_t pid = (pid_t)json_integer_value(json_object_get(w, "pid"));
            const char *st = json_string_value(json_object_get(w, "state"));
            long restarts = (long)json_integer_value(json_object_get(w, "restarts"));
            int ok = pid > 0 && pid != old && st && !strcmp(st, "idle");
            json_decref(j);
            if (ok) return restarts;
        }
        sleep_ms(50);
    }
    ck_abort_msg("worker 0 was not respawned within 30 s");
    return -1;
}

int bn_srv_queue_length(int port)
{
    json_t *j;
    int len = -1;
    if (bn_http_get_json(port, "/health", &j) == 200)
        len = (int)json_integer_value(json_object_get(json_object_get(j, "queue"), "length"));
    json_decref(j);
    return len;
}

int bn_srv_wait_queue_length(int port, int want, int timeout_ms)
{
    double deadline = bn_now() + timeout_ms / 1000.0;
    int len;
    while ((len = bn_srv_queue_length(port)) != want && bn_now() < deadline) sleep_ms(20);
    return len;
}

int bn_proc_children(pid_t pid, pid_t *out, int max)
{
    DIR *d = opendir("/proc");
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; n < max && (e = readdir(d)) != NULL;) {
        if (!isdigit((unsigned char)e->d_name[0])) continue;
        char path[300];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        char *s = read_file(path, NULL);
        const char *p = s ? strrchr(s, ')') : NULL;
        char state;
        long ppid;
        if (p && sscanf(p + 1, " %c %ld", &state, &ppid) == 2 && ppid == pid && state != 'Z')
            out[n++] = (pid_t)atol(e->d_name);
        free(s);
    }
    closedir(d);
    return n;
}

double bn_metric_in(const char *text, const char *name, const char *label_filter)
{
    size_t nl = strlen(name);
    double sum = 0;
    int found = 0;
    for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        if (*l == '#' || strncmp(l, name, nl) != 0) continue;
        const char *p = l + nl;
        if (*p != '{' && *p != ' ') continue;
        if (*p == '{') {
            const char *close = strchr(p, '}');
            const char *eol = strchr(p, '\n');
            if (!close || (eol && close > eol)) continue;
            if (label_filter) {
                size_t fl = strlen(label_filter);
                int in = 0;
                for (const char *q = p; q + fl <= close && !in; q++)
                    in = !strncmp(q, label_filter, fl);
                if (!in) continue;
            }
            p = close + 1;
        } else if (label_filter) {
            continue;
        }
        char *end;
        double v = strtod(p, &end);
        if (end == p) continue;
        sum += v;
        found = 1;
    }
    return found ? sum : -1;
}

double bn_srv_metric(int port, const char *name, const char *label_filter)
{
    bn_http_resp r;
    double v = -1;
    if (bn_http_req(port, "GET", "/metrics", NULL, NULL, &r, BN_HTTP_MS) == 0 && r.status == 200)
        v = bn_metric_in(r.body, name, label_filter);
    bn_http_resp_free(&r);
    return v;
}

long bn_smaps_sum(pid_t pid, const char *needle, const char *field, int *n_maps)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/smaps", (long)pid);
    char *t = read_file(path, NULL);
    if (n_maps) *n_maps = 0;
    if (!t) return -1;
    size_t fl = strlen(field);
    long kb = 0;
    int in = 0;
    for (char *l = t; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        unsigned long a, b;
        int off = 0;
        if (sscanf(l, "%lx-%lx %*s %*s %*s %*s%n", &a, &b, &off) == 2 && off > 0) {
            const char *eol = strchr(l, '\n');
            size_t ll = eol ? (size_t)(eol - l) : strlen(l);
            in = memmem(l, ll, needle, strlen(needle)) != NULL;
            if (in && n_maps) (*n_maps)++;
        } else if (in && strncmp(l, field, fl) == 0 && l[fl] == ':') {
            kb += strtol(l + fl + 1, NULL, 10);
        }
    }
    free(t);
    return kb * 1024;
}

bn_srv *bn_srv_start_ok(const char *config_text)
{
    bn_srv *s = bn_srv_start(config_text, NULL);
    ck_assert_msg(s != NULL, "bitnetd did not start with:\n%s", config_text);
    return s;
}

TCase *bn_srv_tcase(Suite *s, const char *name, int timeout_s)
{
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, NULL, bn_srv_stop_all);
    tcase_set_timeout(tc, timeout_s);
    suite_add_tcase(s, tc);
    return tc;
}

int bn_srv_test_main(const char *name, Suite *s)
{
    SRunner *sr = srunner_create(s);   /* owns s from here */
    if (!getenv("BN_BITNETD") || !getenv("BN_BITNET")) {
        fprintf(stderr, "%s: SKIP: BN_BITNETD / BN_BITNET are not set\n", name);
        srunner_free(sr);
        return 77;
    }
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    bn_srv_stop_all();
    return failed ? 1 : 0;
}
