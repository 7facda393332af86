/* The model's weights, mapped once by the master before fork so that N workers cost one copy:
 *  - BN_WEIGHTS_MMAP: the file's page-cache pages (MAP_SHARED, read-only);
 *  - BN_WEIGHTS_SHM: copied once into a sealed memfd ("bitnetd-weights"), huge pages when the
 *    kernel gives them (MFD_HUGETLB, else MADV_HUGEPAGE), optionally mlock'd. The memfd mapping
 *    is inherited by every worker (fork), so it too is one copy. */
#ifndef BN_SERVER_WEIGHTS_H
#define BN_SERVER_WEIGHTS_H

#include <stddef.h>

#include "base/error.h"
#include "model/model.h"

typedef struct bn_weights {
    bn_model *model;     /* opened over the mapping below */
    int mode;            /* enum bn_weights_mode */
    void *shm;           /* BN_WEIGHTS_SHM: the copy; NULL otherwise */
    size_t shm_len;
    int huge;            /* huge pages were obtained (MFD_HUGETLB) or advised */
    int locked;          /* mlock succeeded */
} bn_weights;

/* Opens the packed file at path in the given mode. With want_mlock, a failed mlock is a warning
 * in *warn (if non-NULL, a 256-byte buffer), not an error. */
int bn_weights_open(const char *path, int mode, int want_mlock, int want_huge, bn_weights *w,
                    char *warn, bn_error *err);
void bn_weights_close(bn_weights *w);

#endif
