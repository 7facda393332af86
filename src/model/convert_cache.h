/* Convert-on-first-use with a cache, for the server: `model = /models/bitnet-hf-dir` just works.
 * The cache never serves a stale or half-written file: entries are keyed on the source's
 * identity (every file's name, size, mtime and inode, plus the pack options and the format
 * version) and are written through the atomic writer (temp file, fsync, rename). */
#ifndef BN_MODEL_CONVERT_CACHE_H
#define BN_MODEL_CONVERT_CACHE_H

#include "model/model_write.h"

/* Sets *out_path (malloc'd) to a packed model for src_path: src_path itself when it already
 * is one, else the cache entry in cache_dir, converting first if the entry is missing.
 * *converted (optional) says whether a conversion ran. */
int bn_convert_cached(const char *src_path, const char *cache_dir, const bn_pack_opts *o, char **out_path,
                      int *converted, bn_error *err);

/* Opens any model form a user may hold: a packed file directly, anything else (HF directory,
 * GGUF) through the conversion cache in cache_dir (NULL: bn_default_cache_dir()).
 * *converted (optional) says whether a conversion ran now. */
int bn_model_open_any(const char *path, const char *cache_dir, bn_model **out, int *converted, bn_error *err);

/* $BITNET_CACHE, else $XDG_CACHE_HOME/bitnetd, else $HOME/.cache/bitnetd, else /tmp/bitnetd-cache.
 * Returns a malloc'd path. */
char *bn_default_cache_dir(void);

/* The cache key of src_path as 16 hex digits + NUL (exposed for tests). */
int bn_source_identity(const char *src_path, const bn_pack_opts *o, char key[17], bn_error *err);

#endif
