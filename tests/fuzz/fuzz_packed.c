/* libFuzzer target: the packed model reader. The bytes become a file (memfd), which is opened,
 * verified and, if it opens, has every resolved tensor touched. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz_packed", 0);
    if (fd < 0) return 0;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    bn_model *m;
    bn_error err;
    if (bn_model_open(path, &m, &err) == 0) {
        (void)bn_model_verify(m, &err);
        volatile uint8_t sink = 0;
        for (uint32_t i = 0; i < m->n_tensors; i++)
            if (m->tensors[i].nbytes) sink ^= ((const uint8_t *)m->tensors[i].data)[m->tensors[i].nbytes - 1];
        (void)sink;
        bn_model_close(m);
    }
    close(fd);
    return 0;
}
