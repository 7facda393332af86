/* Runs a fuzz target's entry point over every file of its seed corpus, so the target is built
 * and exercised (under the sanitizers, in CI) by the normal test suite, without libFuzzer.
 * The corpus directory is $BN_SRCDIR/tests/fuzz/corpus/<BN_FUZZ_NAME>. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(void)
{
    const char *src = getenv("BN_SRCDIR");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/%s", src ? src : ".", BN_FUZZ_NAME);
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "replay %s: no corpus at %s\n", BN_FUZZ_NAME, dir);
        return 1;
    }
    int n = 0, failed = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char *path = bn_path_join(dir, e->d_name), *buf = NULL;
        size_t len = 0;
        bn_error err;
        if (!path || bn_read_file(path, 64u << 20, &buf, &len, &err) != 0) {
            fprintf(stderr, "replay %s: %s\n", BN_FUZZ_NAME, path ? err.msg : "out of memory");
            failed++;
        } else {
            LLVMFuzzerTestOneInput((const uint8_t *)buf, len);
            n++;
        }
        free(buf);
        free(path);
    }
    closedir(d);
    printf("replay %s: %d inputs\n%d passed, %d failed\n", BN_FUZZ_NAME, n, n, failed);
    return failed || n == 0 ? 1 : 0;
}
