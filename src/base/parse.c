#include "base/parse.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Values are quoted in messages; junk can be long, so show its first 64 bytes. */
#define SHOW "'%.64s%s'"
#define SHOWARG(s) (s), strlen(s) > 64 ? "..." : ""

/* "empty value (expected WHAT, EXPECT)" or "'S' is not WHAT (expected EXPECT)". */
static int not_a(bn_error *err, const char *s, const char *what, const char *expect)
{
    if (!*s) return bn_err(err, "empty value (expected %s, %s)", what, expect);
    return bn_err(err, SHOW " is not %s (expected %s)", SHOWARG(s), what, expect);
}

static int out_of_range(bn_error *err, const char *s, const char *range)
{
    return bn_err(err, SHOW " is out of range (expected %s)", SHOWARG(s), range);
}

static int isdig(char c) { return c >= '0' && c <= '9'; }

/* ---- integers ------------------------------------------------------------------------ */

static void range_long(long min, long max, char *buf, size_t len)
{
    if (max == LONG_MAX) snprintf(buf, len, "%ld or more", min);
    else snprintf(buf, len, "%ld..%ld", min, max);
}

int bn_parse_long(const char *s, long min, long max, long *out, bn_error *err)
{
    char range[64];
    range_long(min, max, range, sizeof range);
    const char *d = s + (*s == '+' || *s == '-');
    if (!isdig(*d)) return not_a(err, s, "a whole number", range);
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*end) return not_a(err, s, "a whole number", range);
    if (errno == ERANGE || v < min || v > max) return out_of_range(err, s, range);
    *out = v;
    return 0;
}

/* Unsigned: optional '+', decimal (or 0x hex when hex is set). A '-' before digits is a
 * number, only out of range. */
static int parse_unsigned(const char *s, int hex, uint64_t min, uint64_t max, uint64_t *out,
                          const char *range, bn_error *err)
{
    const char *d = s + (*s == '+' || *s == '-');
    int base = 10;
    if (hex && d[0] == '0' && (d[1] == 'x' || d[1] == 'X') && d[2]) base = 16, d += 2;
    /* strtoull itself would skip spaces and take a sign or a second "0x" */
    size_t ndig = base == 10 ? strspn(d, "0123456789") : strspn(d, "0123456789abcdefABCDEF");
    if (!ndig || d[ndig]) return not_a(err, s, "a whole number", range);
    errno = 0;
    unsigned long long v = strtoull(d, NULL, base);
    if (*s == '-' || errno == ERANGE || v < min || v > max) return out_of_range(err, s, range);
    *out = v;
    return 0;
}

int bn_parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out, bn_error *err)
{
    char range[64];
    snprintf(range, sizeof range, "%u..%u", min, max);
    uint64_t v;
    if (parse_unsigned(s, 0, min, max, &v, range, err)) return -1;
    *out = (uint32_t)v;
    return 0;
}

int bn_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out, bn_error *err)
{
    char range[64];
    snprintf(range, sizeof range, "%llu..%llu", (unsigned long long)min, (unsigned long long)max);
    return parse_unsigned(s, 1, min, max, out, range, err);
}

/* ---- reals --------------------------------------------------------------------------- */

/* Length of the decimal number at the start of s ([+-] digits [. digits] [e [+-] digits]),
 * 0 if there is none; strtod alone would also take "inf", "nan" and hex floats. */
static size_t scan_real(const char *s)
{
    size_t i = (*s == '+' || *s == '-'), digits = 0;
    while (isdig(s[i])) i++, digits++;
    if (s[i] == '.') {
        i++;
        while (isdig(s[i])) i++, digits++;
    }
    if (!digits) return 0;
    if (s[i] == 'e' || s[i] == 'E') {
        size_t j = i + 1 + (s[i + 1] == '+' || s[i + 1] == '-');
        if (isdig(s[j])) {
            while (isdig(s[j])) j++;
            i = j;
        }
    }
    return i;
}

/* Reads the real number that is the first n bytes of s. Underflow to 0 is fine; overflow is
 * out of range. */
static int real_prefix(const char *s, size_t n, double *out)
{
    char buf[128];
    if (n >= sizeof buf) return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    *out = strtod(buf, NULL);
    return isfinite(*out) ? 0 : -1;
}

int bn_parse_double(const char *s, double min, double max, double *out, bn_error *err)
{
    char range[64];
    snprintf(range, sizeof range, "%g..%g", min, max);
    size_t n = scan_real(s);
    if (!n || s[n]) return not_a(err, s, "a number", range);
    double v;
    if (real_prefix(s, n, &v) || v < min || v > max) return out_of_range(err, s, range);
    *out = v;
    return 0;
}

/* ---- switches ------------------------------------------------------------------------ */

int bn_parse_bool(const char *s, int *out, bn_error *err)
{
    static const char *const names[] = {"off", "on", "no", "yes", "false", "true", "0", "1"};
    for (int i = 0; i < 8; i++)
        if (!strcasecmp(s, names[i])) {
            *out = i & 1;
            return 0;
        }
    const char *expect = "on/off, yes/no, true/false or 1/0";
    if (!*s) return bn_err(err, "empty value (expected %s)", expect);
    return bn_err(err, SHOW " is not on or off (expected %s)", SHOWARG(s), expect);
}

/* ---- sizes --------------------------------------------------------------------------- */

void bn_format_size(size_t v, char *buf, size_t len)
{
    static const char sfx[] = "gmk";
    for (int i = 0; i < 3; i++) {
        size_t unit = (size_t)1 << (10 * (3 - i));
        if (v && v % unit == 0) {
            snprintf(buf, len, "%zu%c", v / unit, sfx[i]);
            return;
        }
    }
    snprintf(buf, len, "%zu", v);
}

int bn_parse_size(const char *s, size_t min, size_t max, size_t *out, bn_error *err)
{
    char lo[32], hi[32], range[96];
    bn_format_size(min, lo, sizeof lo);
    bn_format_size(max, hi, sizeof hi);
    snprintf(range, sizeof range, "%s..%s", lo, hi);
    char expect[160];
    snprintf(expect, sizeof expect, "%s: bytes, or a number with a k, m or g suffix", range);
    const char *d = s + (*s == '+' || *s == '-');
    if (!isdig(*d)) return not_a(err, s, "a size", expect);
    char *end;
    errno = 0;
    unsigned long long v = strtoull(d, &end, 10);
    int shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10, end++; break;
    case 'm': case 'M': shift = 20, end++; break;
    case 'g': case 'G': shift = 30, end++; break;
    }
    if (*end) return not_a(err, s, "a size", expect);
    unsigned long long bytes;
    if (*s == '-' || errno == ERANGE || __builtin_mul_overflow(v, 1ull << shift, &bytes) ||
        bytes > SIZE_MAX || bytes < min || bytes > max)
        return out_of_range(err, s, range);
    *out = (size_t)bytes;
    return 0;
}

/* ---- durations ----------------------------------------------------------------------- */

void bn_format_duration(double v, char *buf, size_t len)
{
    if (v > 0 && v < 1) snprintf(buf, len, "%gms", v * 1000);
    else if (v >= 3600 && fmod(v, 3600) == 0) snprintf(buf, len, "%gh", v / 3600);
    else if (v >= 60 && fmod(v, 60) == 0) snprintf(buf, len, "%gm", v / 60);
    else snprintf(buf, len, "%gs", v);
}

int bn_parse_duration(const char *s, double min, double max, double *out, bn_error *err)
{
    char lo[32], hi[32], range[96];
    bn_format_duration(min, lo, sizeof lo);
    bn_format_duration(max, hi, sizeof hi);
    snprintf(range, sizeof range, "%s..%s", lo, hi);
    char expect[160];
    snprintf(expect, sizeof expect, "%s, e.g. 30s, 500ms, 2m or 1h; a plain number is seconds", range);
    size_t n = scan_real(s);
    if (!n) return not_a(err, s, "a duration", expect);
    static const struct { const char *sfx; double scale; } units[] = {
        {"", 1}, {"s", 1}, {"ms", 1e-3}, {"m", 60}, {"h", 3600}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(s + n, units[i].sfx)) continue;
        double v;
        if (real_prefix(s, n, &v)) return out_of_range(err, s, range);
        v *= units[i].scale;
        if (v < min || v > max) return out_of_range(err, s, range);
        *out = v;
        return 0;
    }
    return not_a(err, s, "a duration", expect);
}
