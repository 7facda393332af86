/* Files: read-only mappings for the model readers, and an atomic writer so that a packed
 * model (or a cached conversion) is never seen half-written. */
#ifndef BN_BASE_FILE_H
#define BN_BASE_FILE_H

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "base/error.h"

typedef struct bn_mapping {
    void *data;
    size_t len;
} bn_mapping;

/* Maps path read-only (MAP_SHARED, so every process shares the page cache copy).
 * An empty file maps to data == NULL, len == 0. */
int bn_map_file(const char *path, bn_mapping *m, bn_error *err);
void bn_unmap(bn_mapping *m);
/* Reads path into private anonymous memory (page-aligned, advised for transparent huge pages,
 * read-only once filled), released with bn_unmap. Where a long-lived file's page cache pages
 * sit is an accident of its history; a fresh copy is laid out afresh: decode over a model whose
 * page cache had aged a day measured 15-25% faster from such a copy than mapped in place
 * (the same once that cache was dropped and re-read; docs/benchmarks.md). */
int bn_copy_file(const char *path, bn_mapping *m, bn_error *err);

/* Drops the pages of [p, p+len) from this process's resident set. Only for ranges of a shared
 * FILE mapping (bn_map_file), where the page cache keeps the data: on anonymous memory
 * MADV_DONTNEED discards it. Rounds inward to whole pages, so a page shared
 * with a neighbouring range stays. Advisory: converters call it after each tensor so their
 * peak RSS is one tensor, not the whole source file. */
void bn_release_pages(const void *p, size_t len);

/* Reads a whole (small) file into a NUL-terminated malloc'd buffer. Refuses files over max. */
int bn_read_file(const char *path, size_t max, char **out, size_t *len, bn_error *err);

/* Atomic writer: writes go to "<path>.tmp.<pid>" in the same directory; commit() fsyncs,
 * renames over path and fsyncs the directory; abort() (or a failed commit) removes the temp. */
typedef struct bn_atomic_file {
    char *path, *tmp;
    int fd;
    uint64_t off;   /* bytes written so far */
} bn_atomic_file;

int bn_atomic_open(bn_atomic_file *f, const char *path, bn_error *err);
int bn_atomic_write(bn_atomic_file *f, const void *buf, size_t len, bn_error *err);
/* pwrite at an absolute offset (headers patched at the end); does not move off. */
int bn_atomic_pwrite(bn_atomic_file *f, const void *buf, size_t len, uint64_t at, bn_error *err);
/* Pads with zero bytes up to a multiple of align. */
int bn_atomic_pad(bn_atomic_file *f, uint64_t align, bn_error *err);
int bn_atomic_commit(bn_atomic_file *f, bn_error *err);
void bn_atomic_abort(bn_atomic_file *f);

/* Is path a directory? */
int bn_is_dir(const char *path);
/* malloc'd "dir/name". */
char *bn_path_join(const char *dir, const char *name);

#endif
