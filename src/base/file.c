#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Opens path read-only and checks it is a regular file: the fd (st filled), or -1 with err set. */
static int open_regular(const char *path, struct stat *st, bn_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return bn_err(err, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        return bn_err(err, "%s: not a regular file", path);
    }
    return fd;
}

int bn_map_file(const char *path, bn_mapping *m, bn_error *err)
{
    m->data = NULL;
    m->len = 0;
    struct stat st;
    int fd = open_regular(path, &st, err);
    if (fd < 0) return -1;
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return bn_err(err, "%s: cannot map: %s", path, strerror(e));
        }
        m->data = p;
        m->len = (size_t)st.st_size;
    }
    close(fd);
    return 0;
}

int bn_copy_file(const char *path, bn_mapping *m, bn_error *err)
{
    m->data = NULL;
    m->len = 0;
    struct stat st;
    int fd = open_regular(path, &st, err);
    if (fd < 0) return -1;
    size_t len = (size_t)st.st_size;
    void *p = len ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : NULL;
    if (p == MAP_FAILED) {
        close(fd);
        return bn_err(err, "%s: cannot allocate %zu bytes for a copy in memory", path, len);
    }
    if (len) madvise(p, len, MADV_HUGEPAGE);   /* advisory: the copy works without */
    for (size_t done = 0; done < len;) {
        ssize_t r = pread(fd, (char *)p + done, len - done < (64u << 20) ? len - done : (64u << 20), (off_t)done);
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            if (r < 0 && e == EINTR) continue;
            munmap(p, len);
            close(fd);
            return bn_err(err, "%s: read failed after %zu of %zu bytes: %s", path, done, len,
                          r == 0 ? "the file shrank" : strerror(e));
        }
        done += (size_t)r;
    }
    close(fd);
    if (len) mprotect(p, len, PROT_READ);
    m->data = p;
    m->len = len;
    return 0;
}

void bn_unmap(bn_mapping *m)
{
    if (m->data) munmap(m->data, m->len);
    m->data = NULL;
    m->len = 0;
}

void bn_release_pages(const void *p, size_t len)
{
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || !p || !len) return;
    uintptr_t lo = (uintptr_t)p, hi = lo + len;
    lo = (lo + (uintptr_t)page - 1) / (uintptr_t)page * (uintptr_t)page;
    hi = hi / (uintptr_t)page * (uintptr_t)page;
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED); /* failure is harmless */
}

int bn_read_file(const char *path, size_t max, char **out, size_t *len, bn_error *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return bn_err(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return bn_err(err, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max) {
        fclose(f);
        return bn_err(err, "%s: %lld bytes is larger than the %zu allowed", path, (long long)st.st_size, max);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(f);
        return bn_err(err, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n != (size_t)st.st_size) {
        free(buf);
        return bn_err(err, "%s: read failed", path);
    }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return 0;
}

int bn_atomic_open(bn_atomic_file *f, const char *path, bn_error *err)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    size_t n = strlen(path) + 32;
    f->path = strdup(path);
    f->tmp = malloc(n);
    if (!f->path || !f->tmp) {
        free(f->tmp);   /* not a name yet: abort must not unlink what the bytes happen to say */
        f->tmp = NULL;
        bn_atomic_abort(f);
        return bn_err(err, "out of memory");
    }
    snprintf(f->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        int e = errno;
        bn_atomic_abort(f);
        return bn_err(err, "%s: cannot create: %s", path, strerror(e));
    }
    return 0;
}

static int write_all(int fd, const void *buf, size_t len, int64_t at)
{
    const char *p = buf;
    while (len) {
        ssize_t w = at < 0 ? write(fd, p, len) : pwrite(fd, p, len, (off_t)at);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
        if (at >= 0) at += w;
    }
    return 0;
}

int bn_atomic_write(bn_atomic_file *f, const void *buf, size_t len, bn_error *err)
{
    if (write_all(f->fd, buf, len, -1) != 0) return bn_err(err, "%s: write failed: %s", f->path, strerror(errno));
    f->off += len;
    return 0;
}

int bn_atomic_pwrite(bn_atomic_file *f, const void *buf, size_t len, uint64_t at, bn_error *err)
{
    if (write_all(f->fd, buf, len, (int64_t)at) != 0) return bn_err(err, "%s: write failed: %s", f->path, strerror(errno));
    return 0;
}

int bn_atomic_pad(bn_atomic_file *f, uint64_t align, bn_error *err)
{
    static const char zeros[4096];
    uint64_t pad = (align - f->off % align) % align;
    while (pad) {
        size_t n = pad < sizeof zeros ? (size_t)pad : sizeof zeros;
        if (bn_atomic_write(f, zeros, n, err) != 0) return -1;
        pad -= n;
    }
    return 0;
}

int bn_atomic_commit(bn_atomic_file *f, bn_error *err)
{
    if (fsync(f->fd) != 0 || close(f->fd) != 0) {
        f->fd = -1;
        int e = errno;
        bn_atomic_abort(f);
        return bn_err(err, "%s: cannot flush: %s", f->path, strerror(e));
    }
    f->fd = -1;
    if (rename(f->tmp, f->path) != 0) {
        int e = errno;
        bn_atomic_abort(f);
        return bn_err(err, "%s: cannot rename into place: %s", f->path, strerror(e));
    }
    /* Make the rename itself durable. */
    char *d = strdup(f->path);
    if (d) {
        int dfd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(d);
    }
    free(f->tmp);
    f->tmp = NULL;
    free(f->path);
    f->path = NULL;
    return 0;
}

void bn_atomic_abort(bn_atomic_file *f)
{
    if (f->fd >= 0) close(f->fd);
    f->fd = -1;
    if (f->tmp) unlink(f->tmp);
    free(f->tmp);
    free(f->path);
    f->tmp = f->path = NULL;
}

int bn_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

char *bn_path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}
