/* Shared helpers for the Check suites: temp paths and fixture lookup. */
#ifndef BN_TESTUTIL_H
#define BN_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A per-process scratch path "<BN_TEST_TMPDIR or /tmp>/<name>.<pid>". The result lives in one of
 * 8 rotating static buffers: copy it if it must outlive later calls. */
static inline const char *bn_test_path(const char *name)
{
    static char bufs[8][512];
    static int i;
    const char *dir = getenv("BN_TEST_TMPDIR");
    char *b = bufs[i++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s.%ld", dir && *dir ? dir : "/tmp", name, (long)getpid());
    return b;
}

/* Runs a shell command, returns its exit status. */
static inline int bn_test_sh(const char *cmd)
{
    int rc = system(cmd);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

#endif
