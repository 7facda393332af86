/* Checked parsers for numbers, switches, sizes and durations in config files and on command
 * lines. Each parses the WHOLE string (no leading spaces, no trailing junk), checks the range,
 * and on failure returns -1 with one sentence naming the value and what is allowed:
 * "'abc' is not a whole number (expected 1..4096)". Callers prefix the key or flag. */
#ifndef BN_BASE_PARSE_H
#define BN_BASE_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

/* Decimal integers, optional sign ("-1", "+5"). */
int bn_parse_long(const char *s, long min, long max, long *out, bn_error *err);
/* Decimal, no sign. */
int bn_parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out, bn_error *err);
/* Decimal or 0x hexadecimal, no sign (seeds). */
int bn_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out, bn_error *err);
/* Decimal fractions with an optional exponent ("0.8", "-2", "1e-3"); no inf, nan or hex. */
int bn_parse_double(const char *s, double min, double max, double *out, bn_error *err);
/* on/off, yes/no, true/false, 1/0 (any case) -> 1/0. */
int bn_parse_bool(const char *s, int *out, bn_error *err);
/* Bytes with an optional k, m or g suffix (powers of 1024, any case): "64k", "1m", "2g". */
int bn_parse_size(const char *s, size_t min, size_t max, size_t *out, bn_error *err);
/* Seconds: "30s", "500ms", "2m", "1h", "1.5s"; a plain number is seconds. */
int bn_parse_duration(const char *s, double min, double max, double *out, bn_error *err);

/* Writes a size the way bn_parse_size reads it, with the largest exact suffix ("64k"). */
void bn_format_size(size_t v, char *buf, size_t len);
/* Writes seconds in the largest unit they are a whole number of ("500ms", "30s", "2m", "1h"). */
void bn_format_duration(double v, char *buf, size_t len);

#endif
