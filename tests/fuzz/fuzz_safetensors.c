/* libFuzzer target: arbitrary bytes as a safetensors file. A successful parse promises that every
 * tensor's bytes lie inside the buffer and that every element can be read, so this reads all of
 * them (ASan catches any byte outside) and looks every name up again. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A private copy of exactly size bytes, so a read past the end is an ASan error even when
     * libFuzzer's buffer happens to have room after it. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    bn_st_file *f = NULL;
    bn_error err;
    if (bn_st_parse(buf, size, "fuzz.safetensors", &f, &err) == 0) {
        volatile uint32_t sink = 0;
        volatile float fsink = 0;
        for (size_t i = 0; i < f->n_tensors; i++) {
            const bn_st_tensor *t = &f->tensors[i];
            if (bn_st_find(f, t->name) != t) abort();
            if (t->nbytes != t->n_elem * bn_st_dtype_size(t->dtype)) abort();
            for (uint64_t b = 0; b < t->nbytes; b++) sink += t->data[b];
            for (uint64_t e = 0; e < t->n_elem; e++) fsink += bn_st_float_at(t, e);
        }
        (void)sink;
        (void)fsink;
        bn_st_close(f);
    } else if (strncmp(err.msg, "fuzz.safetensors: ", 18) != 0) {
        abort(); /* every parse error names the file */
    }
    free(buf);
    return 0;
}
