/* The shared weights. The master runs this before forking, single-threaded (no OpenMP: libgomp
 * is not fork-safe), so the shm copy is plain read(2) into the mapping, in large chunks. */
#define _GNU_SOURCE
#include "server/weights.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/config.h"

#define MEMFD_NAME "bitnetd-weights"
#define COPY_CHUNK (8u << 20)

/* The default huge page size (what MFD_HUGETLB gives), from /proc/meminfo; 2 MiB if unknown. */
static size_t huge_page_size(void)
{
    size_t kb = 0;
    char line[128];
    FILE *f = fopen("/proc/meminfo", "re");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Hugepagesize: %zu kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb ? kb << 10 : 2u << 20;
}

/* A memfd of len bytes mapped read-write. With want_huge, hugetlb first: it needs reserved
 * huge pages (the mmap fails without them), so any failure falls back to ordinary shmem. */
static void *shm_create(size_t len, int want_huge, int *fd, size_t *map_len, int *hugetlb, bn_error *err)
{
    if (want_huge) {
        size_t hp = huge_page_size(), hlen = (len + hp - 1) / hp * hp;
        *fd = memfd_create(MEMFD_NAME, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB);
        if (*fd >= 0 && ftruncate(*fd, (off_t)hlen) == 0) {
            void *p = mmap(NULL, hlen, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
            if (p != MAP_FAILED) {
                *map_len = hlen;
                *hugetlb = 1;
                return p;
            }
        }
        if (*fd >= 0) close(*fd);
    }
    *hugetlb = 0;
    *fd = memfd_create(MEMFD_NAME, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (*fd < 0) {
        bn_err(err, "memfd_create: %s", strerror(errno));
        return NULL;
    }
    void *p = MAP_FAILED;
    if (ftruncate(*fd, (off_t)len) != 0 ||
        (p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0)) == MAP_FAILED) {
        bn_err(err, "shared memory of %zu bytes: %s", len, strerror(errno));
        close(*fd);
        return NULL;
    }
    *map_len = len;
    return p;
}

/* Copies exactly len bytes of the file into dst. */
static int copy_in(int src, const char *path, char *dst, size_t len, bn_error *err)
{
    posix_fadvise(src, 0, 0, POSIX_FADV_SEQUENTIAL);
    for (size_t off = 0; off < len;) {
        size_t want = len - off < COPY_CHUNK ? len - off : COPY_CHUNK;
        ssize_t n = read(src, dst + off, want);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return bn_err(err, "%s: read: %s", path, strerror(errno));
        if (n == 0) return bn_err(err, "%s: the file shrank while being copied", path);
        off += (size_t)n;
    }
    /* The copy is what serves now: let the kernel drop the file's page cache (unmapped pages only). */
    posix_fadvise(src, 0, 0, POSIX_FADV_DONTNEED);
    return 0;
}

/* Makes the copy read-only for good, for the master and every worker. The seals must go on
 * while nothing maps the memfd (a shared mapping of a writable fd counts as writable even
 * after mprotect), so the writable mapping is dropped first (the pages stay in the memfd),
 * then the sealed file is mapped read-only: mprotect(PROT_WRITE) on it then fails. One seal
 * per call: a kernel that lacks one (F_SEAL_FUTURE_WRITE < 5.1, hugetlb < 4.16) keeps the rest. */
static void *seal_readonly(int fd, void *rw, size_t map_len, int advise_huge)
{
    static const int seals[] = {F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE,
#ifdef F_SEAL_FUTURE_WRITE
                                F_SEAL_FUTURE_WRITE,
#endif
                                F_SEAL_SEAL};
    munmap(rw, map_len);
    for (size_t i = 0; i < sizeof seals / sizeof seals[0]; i++) fcntl(fd, F_ADD_SEALS, seals[i]);
    void *p = mmap(NULL, map_len, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return NULL;
    if (advise_huge) madvise(p, map_len, MADV_HUGEPAGE);
    return p;
}

/* The sealed read-only copy of len bytes of src into w->shm. */
static int shm_copy(int src, const char *path, size_t len, int want_huge, bn_weights *w, bn_error *err)
{
    int fd, hugetlb;
    size_t map_len;
    char *rw = shm_create(len, want_huge, &fd, &map_len, &hugetlb, err);
    if (!rw) return bn_err_prefix(err, "%s", path);
    int advise = want_huge && !hugetlb && madvise(rw, map_len, MADV_HUGEPAGE) == 0;
    if (copy_in(src, path, rw, len, err) != 0) {
        munmap(rw, map_len);
        close(fd);
        return -1;
    }
    void *ro = seal_readonly(fd, rw, map_len, advise);
    int e = errno;
    close(fd);   /* the mapping keeps the memfd alive */
    if (!ro) return bn_err(err, "%s: cannot map the shared copy read-only: %s", path, strerror(e));
    w->shm = ro;
    w->shm_len = map_len;
    w->huge = hugetlb || advise;
    return 0;
}

static int open_shm(const char *path, int want_mlock, int want_huge, bn_weights *w, char *warn, bn_error *err)
{
    int src = open(path, O_RDONLY | O_CLOEXEC);
    if (src < 0) return bn_err(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(src, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(src);
        return bn_err(err, "%s: not a regular file", path);
    }
    size_t len = (size_t)st.st_size;
    /* An empty file has nothing to copy: the model says what is wrong, as bn_model_open does. */
    int rc = len ? shm_copy(src, path, len, want_huge, w, err) : 0;
    close(src);
    if (rc != 0) return -1;
    if (want_mlock && w->shm) {
        if (mlock(w->shm, w->shm_len) == 0)
            w->locked = 1;
        else if (warn)
            snprintf(warn, 256, "%s: mlock of %.1f MiB failed (%s): the weights may be paged out; raise "
                                "RLIMIT_MEMLOCK (LimitMEMLOCK= in systemd)",
                     path, (double)w->shm_len / (1 << 20), strerror(errno));
    }
    if (bn_model_open_region(path, w->shm, len, &w->model, err) != 0) {
        if (w->shm) munmap(w->shm, w->shm_len);
        w->shm = NULL;
        return -1;
    }
    return 0;
}

int bn_weights_open(const char *path, int mode, int want_mlock, int want_huge, bn_weights *w, char *warn,
                    bn_error *err)
{
    memset(w, 0, sizeof *w);
    w->mode = mode;
    if (warn) warn[0] = 0;
    switch (mode) {
    case BN_WEIGHTS_MMAP:
        /* The page cache is already one shared copy; mlock and huge pages apply to shm only. */
        return bn_model_open(path, &w->model, err);
    case BN_WEIGHTS_SHM:
        return open_shm(path, want_mlock, want_huge, w, warn, err);
    }
    return bn_err(err, "weights: unknown mode %d", mode);
}

void bn_weights_close(bn_weights *w)
{
    bn_model_close(w->model);
    if (w->shm) munmap(w->shm, w->shm_len);   /* munlock is implied */
    memset(w, 0, sizeof *w);
}
