/* libFuzzer target: the packed model reader. The bytes become a file (memfd), which is opened,
 * verified and, if it opens, has every resolved tensor touched. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "model/model.h"
#include "model/model_format.h"

/* Re-seals the header checksum of a mutated input, so mutations reach the field checks
 * behind it instead of all stopping at the checksum (which is tested on its own). */
static void reseal(uint8_t *buf, size_t size)
{
    bn_file_header h;
    if (size < sizeof h) return;
    memcpy(&h, buf, sizeof h);
    if (h.data_offset < sizeof h || h.data_offset > size) return;
    h.header_checksum = 0;
    memcpy(buf, &h, sizeof h);
    h.header_checksum = XXH3_64bits(buf, h.data_offset);
    memcpy(buf, &h, sizeof h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    memcpy(copy, data, size);
    /* Inputs whose checksum field is odd get it recomputed; the rest keep theirs, so the
     * checksum check itself stays exercised too. */
    if (size > 16 && (data[16] & 1)) reseal(copy, size);
    int fd = memfd_create("fuzz_packed", 0);
    ssize_t w = fd >= 0 ? write(fd, copy, size) : -1;
    free(copy);
    if (fd < 0) return 0;
    if (w != (ssize_t)size) {
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
