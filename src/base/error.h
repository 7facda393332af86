/* Errors are returned, not printed: a function that can fail takes a bn_error * and
 * fills it with one human sentence naming the file and the field at fault. */
#ifndef BN_BASE_ERROR_H
#define BN_BASE_ERROR_H

#include <stddef.h>

typedef struct bn_error {
    char msg[512];
} bn_error;

/* Formats the message into err (if non-NULL) and returns -1, so callers can
 * `return bn_err(err, "...")`. */
int bn_err(bn_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes an existing message: "context: old message". Returns -1. */
int bn_err_prefix(bn_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
