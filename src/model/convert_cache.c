#include "model/convert_cache.h"

#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "base/file.h"
#include "model/model_format.h"

static void hash_stat(XXH3_state_t *h, const char *name, const struct stat *st)
{
    struct {
        uint64_t size, ino, sec, nsec;
    } id = {(uint64_t)st->st_size, (uint64_t)st->st_ino, (uint64_t)st->st_mtim.tv_sec, (uint64_t)st->st_mtim.tv_nsec};
    XXH3_64bits_update(h, name, strlen(name) + 1);
    XXH3_64bits_update(h, &id, sizeof id);
}

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* A HF directory's identity: every regular file in it, in name order (readdir order varies). */
static int hash_dir(XXH3_state_t *h, const char *dir, bn_error *err)
{
    DIR *d = opendir(dir);
    if (!d) return bn_err(err, "%s: cannot open directory: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            char **p = realloc(names, (cap = cap ? cap * 2 : 16) * sizeof *p);
            if (!p) rc = bn_err(err, "out of memory");
            else names = p;
        }
        if (rc == 0 && !(names[n++] = strdup(e->d_name))) rc = bn_err(err, "out of memory");
    }
    closedir(d);
    if (rc == 0) qsort(names, n, sizeof *names, name_cmp);
    for (size_t i = 0; i < n; i++) {
        char *p = rc == 0 ? bn_path_join(dir, names[i]) : NULL;
        struct stat st;
        if (p && stat(p, &st) == 0 && S_ISREG(st.st_mode)) hash_stat(h, names[i], &st);
        free(p);
        free(names[i]);
    }
    free(names);
    return rc;
}

int bn_source_identity(const char *src_path, const bn_pack_opts *o, char key[17], bn_error *err)
{
    struct stat st;
    if (stat(src_path, &st) != 0) return bn_err(err, "%s: %s", src_path, strerror(errno));
    XXH3_state_t *h = XXH3_createState();
    if (!h) return bn_err(err, "out of memory");
    XXH3_64bits_reset(h);
    const uint32_t version[4] = {BN_FILE_VERSION_MAJOR, BN_FILE_VERSION_MINOR, (uint32_t)o->tern, (uint32_t)o->lm_head_i8};
    XXH3_64bits_update(h, version, sizeof version);
    int rc = S_ISDIR(st.st_mode) ? hash_dir(h, src_path, err) : (hash_stat(h, "", &st), 0);
    snprintf(key, 17, "%016llx", (unsigned long long)XXH3_64bits_digest(h));
    XXH3_freeState(h);
    return rc;
}

static int is_packed(const char *path)
{
    char magic[8];
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    int yes = fread(magic, 1, 8, f) == 8 && !memcmp(magic, BN_FILE_MAGIC, 8);
    fclose(f);
    return yes;
}

int bn_convert_cached(const char *src_path, const char *cache_dir, const bn_pack_opts *o, char **out_path,
                      int *converted, bn_error *err)
{
    *out_path = NULL;
    if (converted) *converted = 0;
    if (!bn_is_dir(src_path) && is_packed(src_path)) {
        *out_path = strdup(src_path);
        return *out_path ? 0 : bn_err(err, "out of memory");
    }
    char key[17];
    if (bn_source_identity(src_path, o, key, err) != 0) return -1;
    if (mkdir(cache_dir, 0755) != 0 && errno != EEXIST)
        return bn_err(err, "%s: cannot create cache directory: %s", cache_dir, strerror(errno));
    char *copy = strdup(src_path);
    if (!copy) return bn_err(err, "out of memory");
    /* "<cache>/<source name>-<key>.bnpk": readable names, one entry per source identity. */
    size_t n = strlen(cache_dir) + strlen(copy) + 40;
    char *path = malloc(n);
    if (path) snprintf(path, n, "%s/%s-%s.bnpk", cache_dir, basename(copy), key);
    free(copy);
    if (!path) return bn_err(err, "out of memory");
    if (access(path, R_OK) != 0) {
        bn_source *src;
        if (bn_source_open(src_path, &src, err) != 0 || bn_pack_write(src, path, o, err) != 0) {
            bn_source_close(src);
            free(path);
            return -1;
        }
        bn_source_close(src);
        if (converted) *converted = 1;
    }
    *out_path = path;
    return 0;
}

char *bn_default_cache_dir(void)
{
    const char *env = getenv("BITNET_CACHE");
    if (env && *env) return strdup(env);
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (xdg && *xdg) return bn_path_join(xdg, "bitnetd");
    if (home && *home) return bn_path_join(home, ".cache/bitnetd");
    return strdup("/tmp/bitnetd-cache");
}

/* mkdir -p for the cache's parents ($HOME/.cache may not exist yet). */
static void make_parents(const char *dir)
{
    char *p = strdup(dir);
    if (!p) return;
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            mkdir(p, 0755);
            *s = '/';
        }
    free(p);
}

int bn_model_open_any(const char *path, const char *cache_dir, bn_model **out, int *converted, bn_error *err)
{
    *out = NULL;
    char *dir = cache_dir ? strdup(cache_dir) : bn_default_cache_dir(), *packed = NULL;
    if (!dir) return bn_err(err, "out of memory");
    make_parents(dir);
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    int rc = bn_convert_cached(path, dir, &po, &packed, converted, err);
    if (rc == 0) rc = bn_model_open(packed, out, err);
    free(packed);
    free(dir);
    return rc;
}
