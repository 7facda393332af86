#include "cli/cli_common.h"

#include <string.h>
#include <sys/resource.h>
#include <time.h>

double bn_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double bn_peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux reports KiB */
}

int bn_parse_ternary(const char *s, bn_tern_fmt *out)
{
    if (!strcmp(s, "t5")) *out = BN_TERN_T5;
    else if (!strcmp(s, "i2")) *out = BN_TERN_I2;
    else return -1;
    return 0;
}

int bn_parse_lm_head(const char *s, int *i8)
{
    if (!strcmp(s, "i8")) *i8 = 1;
    else if (!strcmp(s, "f16")) *i8 = 0;
    else return -1;
    return 0;
}

int bn_parse_head_kind(const char *s, enum bn_lm_head_kind *out)
{
    if (!strcmp(s, "f16")) *out = BN_LM_HEAD_F16;
    else if (!strcmp(s, "i8")) *out = BN_LM_HEAD_I8;
    else if (!strcmp(s, "screen")) *out = BN_LM_HEAD_SCREEN;
    else return -1;
    return 0;
}

const char *bn_head_kind_name(enum bn_lm_head_kind k)
{
    return k == BN_LM_HEAD_I8 ? "i8" : k == BN_LM_HEAD_SCREEN ? "screen" : k == BN_LM_HEAD_F16 ? "f16" : "auto";
}

int bn_pack_opt(int c, const char *arg, bn_pack_opts *po)
{
    if (c == 'T') return bn_parse_ternary(arg, &po->tern) == 0 ? 1 : -1;
    if (c == 'L') return bn_parse_lm_head(arg, &po->lm_head_i8) == 0 ? 1 : -1;
    return 0;
}
