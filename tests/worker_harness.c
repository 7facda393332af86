/* Worker-process harness: see worker_harness.h. */
#include "worker_harness.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

long bn_tw_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int bn_tw_next_frame(bn_tw *w, bn_frame *f)
{
    long deadline = bn_tw_now_ms() + BN_TW_WAIT_MS;
    for (;;) {
        bn_error err = {{0}};
        long r = w->in.len > w->off ? bn_frame_decode(w->in.p + w->off, w->in.len - w->off, f, &err) : 0;
        ck_assert_msg(r >= 0, "worker %s sent a bad frame: %s", w->name, err.msg);
        if (r > 0) {
            w->off += (size_t)r;
            return 1;
        }
        if (w->off) {
            memmove(w->in.p, w->in.p + w->off, w->in.len - w->off);
            w->in.len -= w->off;
            w->off = 0;
        }
        uint8_t tmp[65536];
        struct pollfd pfd = {.fd = w->fd, .events = POLLIN};
        long left = deadline - bn_tw_now_ms();
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0) return 0;
        ssize_t got = read(w->fd, tmp, sizeof tmp);
        if (got <= 0) return 0;
        ck_assert(bn_buf_append(&w->in, tmp, (size_t)got) == 0);
    }
}

void bn_tw_send(bn_tw *w, bn_buf *b)
{
    bn_error err = {{0}};
    ck_assert_msg(bn_chan_write_all(w->fd, b, &err) == 0, "%s", err.msg);
    b->len = 0;
}

void bn_tw_send_simple(bn_tw *w, uint16_t type, uint64_t id)
{
    bn_buf b = {0};
    ck_assert(bn_frame_put(&b, type, id, NULL, 0) == 0);
    bn_tw_send(w, &b);
    bn_buf_free(&b);
}

uint32_t bn_tw_error_of(const bn_frame *f, char *msg, size_t cap)
{
    bn_fr_error e;
    const char *m;
    bn_error err = {{0}};
    ck_assert_msg(bn_frame_get_error(f, &e, &m, &err) == 0, "%s", err.msg);
    if (cap) snprintf(msg, cap, "%.*s", (int)e.msg_len, m);
    return e.code;
}

void bn_tw_wait_hello(bn_tw *w)
{
    if (w->hello_seen) return;
    bn_frame f;
    bn_error err = {{0}};
    ck_assert_msg(bn_tw_next_frame(w, &f), "worker %s: no HELLO", w->name);
    if (f.type == BN_FR_ERROR) {
        bn_fr_error e;
        const char *msg = "";
        bn_frame_get_error(&f, &e, &msg, &err);
        ck_abort_msg("worker %s failed to start: %.*s", w->name, (int)e.msg_len, msg);
    }
    ck_assert_int_eq(f.type, BN_FR_HELLO);
    ck_assert(bn_frame_get_fixed(&f, &w->hello, sizeof w->hello, &err) == 0);
    w->hello_seen = 1;
}

int bn_tw_reap(pid_t pid, long timeout_ms)
{
    long deadline = bn_tw_now_ms() + timeout_ms;
    int status;
    do {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r < 0) return -1;
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    } while (bn_tw_now_ms() < deadline);
    return -1;
}

int bn_tw_start(bn_tw **ws, bn_worker_spec *specs, int n)
{
    int sv[8][2];
    if (n > 8) return -1;
    for (int i = 0; i < n; i++)
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv[i])) return -1;
    for (int i = 0; i < n; i++) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) return -1;
        if (pid == 0) {
            for (int j = 0; j < n; j++) {
                close(sv[j][0]);
                if (j != i) close(sv[j][1]);
            }
            specs[i].fd = sv[i][1];
            _exit(bn_worker_main(&specs[i]));
        }
        ws[i]->pid = pid;
    }
    for (int i = 0; i < n; i++) {
        close(sv[i][1]);
        ws[i]->fd = sv[i][0];
    }
    return 0;
}

void bn_tw_stop(bn_tw **ws, int n)
{
    for (int i = 0; i < n; i++) {
        if (ws[i]->fd >= 0) close(ws[i]->fd);
        if (ws[i]->pid > 0) {
            kill(ws[i]->pid, SIGKILL);
            waitpid(ws[i]->pid, NULL, 0);
        }
        bn_buf_free(&ws[i]->in);
    }
}

void bn_tw_spec(bn_worker_spec *spec, int index, const bn_model *m, const bn_tokenizer *tk)
{
    memset(spec, 0, sizeof *spec);
    spec->index = index;
    bn_engine_opts_default(&spec->eopts);
    spec->eopts.n_threads = 1;
    spec->model = m;
    spec->tok = tk;
}

int bn_tw_run_suite(const char *who, Suite *s, bn_tw **ws, bn_worker_spec *specs, int n)
{
    if (bn_tw_start(ws, specs, n)) {
        fprintf(stderr, "%s: starting the workers: %s\n", who, strerror(errno));
        bn_tw_stop(ws, n);
        srunner_free(srunner_create(s));   /* Check frees a suite with its runner */
        return -1;
    }
    int failed = bn_tw_run_nofork(s);
    bn_tw_stop(ws, n);
    return failed;
}
