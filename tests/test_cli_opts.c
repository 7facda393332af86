/* The bitnet tool's shared engine options (src/cli/cli_common.c): the one table that run, bench
 * and perplexity parse -t, -c, -b, --lm-head, --isa, --pin and --cpus with, driven through real
 * getopt_long loops as the commands run them; the CPU list grammar; the help generated from the
 * table; the conversion progress line; and, through the built binary, that bad values are clear
 * errors and that progress is drawn only on a terminal. */
#include <check.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_common.h"
#include "testutil.h"

#define RUN_SET (BN_EOPT_THREADS | BN_EOPT_CTX | BN_EOPT_COMMON)
#define BENCH_SET (BN_EOPT_THREAD_LIST | BN_EOPT_COMMON)

/* Parses the NULL-terminated args as a command taking `which` (plus its own -m FILE) would:
 * 0 parsed and finished, -1 a bad value (err set), -2 getopt rejected an option. */
static int parse(bn_cli_engine *ce, unsigned which, bn_error *err, const char *const *args)
{
    static const struct option own[] = {{"model", required_argument, 0, 'm'}, {0, 0, 0, 0}};
    char *argv[32];
    int argc = 0;
    argv[argc++] = "test";
    for (; *args; args++) {
        ck_assert_int_lt(argc, 31);
        argv[argc++] = (char *)*args;
    }
    argv[argc] = NULL;
    bn_cli_getopt g;
    bn_cli_getopt_build(&g, own, "m:", which);
    bn_cli_engine_init(ce);
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, g.shortopts, g.longopts, NULL)) != -1) {
        int r = bn_cli_engine_opt(ce, which, c, optarg, err);
        if (r < 0) return -1;
        if (r == 0 && c != 'm') return -2;
    }
    ck_assert_int_eq(optind, argc);
    return bn_cli_engine_finish(ce, err);
}
#define PARSE(ce, which, err, ...) parse(ce, which, err, (const char *const[]){__VA_ARGS__, NULL})

static bn_cli_engine ce;   /* 4 KiB of CPU list: not on the stack of every test */

/* Every engine option with a good value lands in bn_engine_opts (and --isa scalar, which every
 * build supports, is forced: the fixture puts the variant back). */
START_TEST(test_good_values)
{
    bn_error err = {{0}};
    ck_assert_msg(PARSE(&ce, RUN_SET, &err, "-m", "x", "-t", "4", "-c", "2048", "-b", "32",
                        "--lm-head", "i8", "--pin", "--isa", "scalar", "--mmap") == 0, "%s", err.msg);
    ck_assert_int_eq(ce.mmap, 1);
    ck_assert_int_eq(ce.eo.n_threads, 4);
    ck_assert_uint_eq(ce.eo.n_ctx, 2048);
    ck_assert_uint_eq(ce.eo.batch, 32);
    ck_assert_int_eq(ce.eo.lm_head, BN_LM_HEAD_I8);
    ck_assert_int_eq(ce.eo.pin, 1);
    ck_assert_int_eq(ce.isa, BN_ISA_SCALAR);
    ck_assert_int_eq(bn_kernels_isa(), BN_ISA_SCALAR);
    ck_assert_int_eq(ce.n_cpus, 0);
    bn_engine_opts eo;
    bn_cli_engine_opts(&ce, ce.eo.n_threads, &eo);
    ck_assert_ptr_null(eo.cpus);
    ck_assert_int_eq(eo.n_threads, 4);

    /* long spellings, --opt=value, and the defaults when nothing is given */
    ck_assert_msg(PARSE(&ce, RUN_SET, &err, "--threads=2", "--ctx", "0", "--batch=4096",
                        "--lm-head=screen") == 0, "%s", err.msg);
    ck_assert_int_eq(ce.eo.n_threads, 2);
    ck_assert_uint_eq(ce.eo.n_ctx, 0);
    ck_assert_uint_eq(ce.eo.batch, 4096);
    ck_assert_int_eq(ce.eo.lm_head, BN_LM_HEAD_SCREEN);
    ck_assert_int_eq(PARSE(&ce, RUN_SET, &err, "-m", "x"), 0);
    bn_engine_opts def;
    bn_engine_opts_default(&def);
    ck_assert_int_eq(ce.eo.n_threads, def.n_threads);
    ck_assert_uint_eq(ce.eo.n_ctx, def.n_ctx);
    ck_assert_int_eq(ce.eo.lm_head, def.lm_head);
    ck_assert_int_eq(ce.isa, -1);
    ck_assert_int_eq(ce.mmap, 0);   /* the default: the model is read into memory */
}
END_TEST

/* Each bad value is an error that names the flag and the value, never a silent default. */
START_TEST(test_bad_values)
{
    static const struct {
        const char *flag, *value, *want;
    } bad[] = {
        {"-t", "x", "-t/--threads: 'x' is not a whole number"},
        {"-t", "-1", "-t/--threads: '-1'"},
        {"-t", "4097", "-t/--threads: '4097' is out of range"},
        {"-t", "", "-t/--threads: empty value"},
        {"--threads", "2x", "-t/--threads: '2x' is not a whole number"},
        {"-c", "big", "-c/--ctx: 'big' is not a whole number"},
        {"-c", "99999999999", "-c/--ctx: '99999999999' is out of range"},
        {"-b", "4097", "-b/--batch: '4097' is out of range"},
        {"--lm-head", "f32", "--lm-head: 'f32' is not f16, i8 or screen"},
        {"--isa", "sse9", "--isa: 'sse9' is not scalar, avx2, avx512 or avx512vnni"},
        {"--cpus", "0,0", "--cpus: CPU 0 is listed twice"},
        {"--cpus", "x", "--cpus: 'x' is not a CPU number"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bn_error err = {{0}};
        ck_assert_msg(PARSE(&ce, RUN_SET, &err, bad[i].flag, bad[i].value) == -1, "%s %s accepted",
                      bad[i].flag, bad[i].value);
        ck_assert_msg(strstr(err.msg, bad[i].want) != NULL, "%s %s: got '%s', want '%s'", bad[i].flag,
                      bad[i].value, err.msg, bad[i].want);
    }
    /* an option the command does not take is getopt's error, not the table's */
    bn_error err = {{0}};
    ck_assert_int_eq(PARSE(&ce, BN_EOPT_THREADS, &err, "-b", "8"), -2);
    ck_assert_int_eq(PARSE(&ce, BN_EOPT_THREADS, &err, "--cpus", "0"), -2);
    ck_assert_int_eq(bn_cli_engine_opt(&ce, BN_EOPT_THREADS, 'b', "8", &err), 0);
}
END_TEST

/* bench's -t takes a list of counts, each checked; perplexity's -c is the same field as run's. */
START_TEST(test_thread_list_and_window)
{
    bn_error err = {{0}};
    ck_assert_msg(PARSE(&ce, BENCH_SET, &err, "-t", "1,2,4", "-b", "16") == 0, "%s", err.msg);
    ck_assert_int_eq(ce.n_threads, 3);
    ck_assert_int_eq(ce.threads[0], 1);
    ck_assert_int_eq(ce.threads[1], 2);
    ck_assert_int_eq(ce.threads[2], 4);
    ck_assert_uint_eq(ce.eo.batch, 16);
    ck_assert_int_eq(PARSE(&ce, BENCH_SET, &err, "-t", "8"), 0);
    ck_assert_int_eq(ce.n_threads, 1);
    ck_assert_int_eq(ce.threads[0], 8);
    static const char *const bad[][2] = {
        {"1,,2", "empty value"}, {"1,", "empty value"}, {"0", "'0' is out of range"},
        {"1,x", "'x' is not a whole number"}, {"1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17", "at most 16"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(PARSE(&ce, BENCH_SET, &err, "-t", bad[i][0]), -1);
        ck_assert_msg(strstr(err.msg, "-t/--threads: ") && strstr(err.msg, bad[i][1]), "-t %s: %s",
                      bad[i][0], err.msg);
    }
    ck_assert_int_eq(PARSE(&ce, BN_EOPT_WINDOW, &err, "-c", "128"), 0);
    ck_assert_uint_eq(ce.eo.n_ctx, 128);
}
END_TEST

/* The CPU list grammar, taskset -c without strides: items N or N-M, order kept, every CPU once. */
START_TEST(test_cpu_list_grammar)
{
    static const struct {
        const char *s;
        int n, cpus[8];
    } good[] = {
        {"0", 1, {0}},
        {"0-3,6", 5, {0, 1, 2, 3, 6}},
        {"6,0-1", 3, {6, 0, 1}},
        {"3-3", 1, {3}},
        {"1023", 1, {1023}},
        {"10,2,7-8", 4, {10, 2, 7, 8}},
    };
    int out[BN_CLI_MAX_CPUS], n;
    bn_error err = {{0}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        ck_assert_msg(bn_parse_cpu_list(good[i].s, out, BN_CLI_MAX_CPUS, &n, &err) == 0, "%s: %s",
                      good[i].s, err.msg);
        ck_assert_int_eq(n, good[i].n);
        for (int k = 0; k < n; k++) ck_assert_int_eq(out[k], good[i].cpus[k]);
    }
    ck_assert_int_eq(bn_parse_cpu_list("0-1023", out, BN_CLI_MAX_CPUS, &n, &err), 0);
    ck_assert_int_eq(n, BN_CLI_MAX_CPUS);
    ck_assert_int_eq(out[1023], 1023);

    static const char *const bad[][2] = {
        {"", "empty"},          {",", "empty item"},    {"0,", "empty item"},
        {",0", "empty item"},   {"0,,1", "empty item"}, {"a", "'a' is not a CPU number"},
        {"1-", "'1-'"},         {"-1", "'-1'"},         {"3-1", "3-1 runs backwards"},
        {"0-2,1", "CPU 1 is listed twice"},             {"4,4", "CPU 4 is listed twice"},
        {"1024", "CPU 1024 is out of range"},           {"0-1024", "CPU 1024 is out of range"},
        {"1-2-3", "'1-2-3'"},   {" 1", "' 1'"},         {"1 ", "'1 '"},
        {"+1", "'+1'"},         {"0x1", "'0x1'"},       {"99999999999999999999", "out of range"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(bn_parse_cpu_list(bad[i][0], out, BN_CLI_MAX_CPUS, &n, &err) == -1, "'%s' accepted",
                      bad[i][0]);
        ck_assert_msg(strstr(err.msg, bad[i][1]) != NULL, "'%s': got '%s', want '%s'", bad[i][0], err.msg,
                      bad[i][1]);
    }
    ck_assert_int_eq(bn_parse_cpu_list("0-7", out, 4, &n, &err), -1);   /* the caller's capacity */
    ck_assert_ptr_nonnull(strstr(err.msg, "more than 4 CPUs"));
}
END_TEST

/* --cpus sets the engine's explicit CPU set; -t N takes its first N CPUs and may not exceed it. */
START_TEST(test_cpus_and_threads)
{
    bn_error err = {{0}};
    bn_engine_opts eo;
    ck_assert_msg(PARSE(&ce, RUN_SET, &err, "--cpus", "4-6,1") == 0, "%s", err.msg);
    ck_assert_int_eq(ce.n_cpus, 4);
    bn_cli_engine_opts(&ce, ce.eo.n_threads, &eo);
    ck_assert_ptr_eq(eo.cpus, ce.cpus);
    ck_assert_int_eq(eo.n_cpus, 4);
    ck_assert_int_eq(eo.cpus[0], 4);
    ck_assert_int_eq(eo.cpus[3], 1);
    ck_assert_int_eq(PARSE(&ce, RUN_SET, &err, "--cpus", "0-3", "-t", "2"), 0);
    bn_cli_engine_opts(&ce, ce.eo.n_threads, &eo);
    ck_assert_int_eq(eo.n_cpus, 2);
    ck_assert_int_eq(PARSE(&ce, RUN_SET, &err, "-t", "3", "--cpus", "0-1"), -1);
    ck_assert_msg(strstr(err.msg, "3 threads but --cpus lists only 2 CPUs") != NULL, "%s", err.msg);
    /* bench: every count of the list must fit; each one gets its prefix of the list */
    ck_assert_int_eq(PARSE(&ce, BENCH_SET, &err, "-t", "1,2", "--cpus", "2,3"), 0);
    bn_cli_engine_opts(&ce, ce.threads[0], &eo);
    ck_assert_int_eq(eo.n_cpus, 1);
    ck_assert_int_eq(eo.cpus[0], 2);
    bn_cli_engine_opts(&ce, ce.threads[1], &eo);
    ck_assert_int_eq(eo.n_cpus, 2);
    ck_assert_int_eq(PARSE(&ce, BENCH_SET, &err, "-t", "1,4", "--cpus", "2"), -1);
    ck_assert_msg(strstr(err.msg, "4 threads but --cpus lists only 1 CPU") != NULL, "%s", err.msg);
}
END_TEST

/* The help lines come from the table: every option a command takes is listed with its argument,
 * and getopt's tables hold exactly the command's rows. */
START_TEST(test_help_and_getopt_tables)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    bn_cli_engine_help(f, RUN_SET, 30);
    fclose(f);
    static const char *const want[] = {"  -t, --threads N ", "  -c, --ctx N ", "  -b, --batch N ",
                                       "      --lm-head f16|i8|screen|screen-i8 ", "      --isa NAME ",
                                       "      --pin ", "      --cpus LIST "};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(buf, want[i]) != NULL, "no '%s' in:\n%s", want[i], buf);
    ck_assert_ptr_null(strstr(buf, "LIST    thread counts"));   /* bench's -t is not run's */
    /* the text starts at the column asked for */
    const char *t = strstr(buf, "  -t, --threads N");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t[30] != ' ' && t[29] == ' ', 1);
    free(buf);

    static const struct option own[] = {{"model", required_argument, 0, 'm'}, {0, 0, 0, 0}};
    bn_cli_getopt g;
    bn_cli_getopt_build(&g, own, "m:h", BENCH_SET);
    ck_assert_str_eq(g.shortopts, "m:ht:b:");
    const char *names[] = {"model", "threads", "batch", "lm-head", "isa", "pin", "cpus", "mmap"};
    size_t n = 0;
    while (g.longopts[n].name) n++;
    ck_assert_uint_eq(n, sizeof names / sizeof names[0]);
    for (size_t i = 0; i < n; i++) ck_assert_str_eq(g.longopts[i].name, names[i]);
    ck_assert_int_eq(g.longopts[5].has_arg, no_argument);   /* --pin */
    ck_assert_int_ge(g.longopts[4].val, BN_EOPT_VAL_BASE);  /* long-only rows: above own values */
}
END_TEST

/* The progress line's text, and that it is drawn with \r and ended with one newline. */
START_TEST(test_progress_line)
{
    char line[128];
    const uint64_t MiB = 1u << 20;
    bn_cli_progress_format(line, sizeof line, 1, 4, 1 * MiB, 4 * MiB, 2.0);
    ck_assert_str_eq(line, "tensor 1/4  1.0/4.0 MiB  ETA 6s");
    bn_cli_progress_format(line, sizeof line, 4, 4, 4 * MiB, 4 * MiB, 9.0);
    ck_assert_str_eq(line, "tensor 4/4  4.0/4.0 MiB  ETA 0s");
    bn_cli_progress_format(line, sizeof line, 0, 332, 0, 1187 * MiB, 0.5);
    ck_assert_str_eq(line, "tensor 0/332  0.0/1187.0 MiB  ETA ?");

    /* not a terminal: the packing options stay silent and nothing is written */
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    bn_cli_progress p;
    bn_cli_progress_attach(&p, &po, f);
    ck_assert_ptr_null(po.progress);
    ck_assert_ptr_null(po.progress_user);
    bn_cli_progress_end(&p);
    ck_assert_int_eq(ftell(f), 0);

    /* the callback itself (as on a terminal): the last tensor always draws, then one newline */
    bn_cli_progress_cb(&p, 1, 2, MiB, 2 * MiB, "a");
    bn_cli_progress_cb(&p, 2, 2, 2 * MiB, 2 * MiB, "b");
    bn_cli_progress_end(&p);
    bn_cli_progress_end(&p);   /* a second end writes nothing */
    long n = ftell(f);
    ck_assert_int_gt(n, 0);
    char out[256] = {0};
    rewind(f);
    ck_assert_uint_eq(fread(out, 1, sizeof out - 1, f), (size_t)n);
    fclose(f);
    ck_assert_msg(out[0] == '\r' && strstr(out, "\rtensor 2/2  2.0/2.0 MiB  ETA 0s") != NULL, "%s", out);
    int newlines = 0;
    for (long k = 0; k < n; k++) newlines += out[k] == '\n';
    ck_assert_int_eq(newlines, 1);
    ck_assert_int_eq(out[n - 1], '\n');
}
END_TEST

/* ---- through the binary ----------------------------------------------------------------- */

/* Runs cmd with stderr and stdout to a file; returns the exit status, the output in *text. */
static int sh_capture(const char *cmd, char *text, size_t cap)
{
    const char *out = bn_test_path("cli_opts.out");
    char full[2048];
    snprintf(full, sizeof full, "%s >'%s' 2>&1", cmd, out);
    int rc = bn_test_sh(full);
    FILE *f = fopen(out, "rb");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(text, 1, cap - 1, f);
    text[n] = 0;
    fclose(f);
    unlink(out);
    return rc;
}

/* The commands print the table's errors with their name and exit 2; every command's --help lists
 * --cpus. A bad value never reaches the model (the file named does not exist). */
START_TEST(test_cli_errors)
{
    const char *bitnet = getenv("BN_BITNET");
    static const char *const cases[][2] = {
        {"run -m /nonexistent -p hi --cpus 0,0", "bitnet run: --cpus: CPU 0 is listed twice"},
        {"run -m /nonexistent -p hi --cpus 2-1", "bitnet run: --cpus: the range 2-1 runs backwards"},
        {"run -m /nonexistent -p hi -t 3 --cpus 0-1", "bitnet run: -t/--threads: 3 threads but --cpus"},
        {"run -m /nonexistent -p hi --isa nope", "bitnet run: --isa: 'nope' is not"},
        {"bench -m /nonexistent -t 1,x", "bitnet bench: -t/--threads: 'x' is not a whole number"},
        {"bench -m /nonexistent --cpus 0-", "bitnet bench: --cpus: '0-'"},
        {"perplexity -m /nonexistent -f /nonexistent -b big", "bitnet perplexity: -b/--batch: 'big'"},
        {"perplexity -m /nonexistent -f /nonexistent --lm-head x", "bitnet perplexity: --lm-head: 'x'"},
    };
    char cmd[512], text[8192];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(cmd, sizeof cmd, "'%s' %s", bitnet, cases[i][0]);
        ck_assert_int_eq(sh_capture(cmd, text, sizeof text), 2);
        ck_assert_msg(strstr(text, cases[i][1]) != NULL, "%s: got '%s'", cases[i][0], text);
        ck_assert_msg(strstr(text, "usage:") == NULL, "%s printed the usage", cases[i][0]);
    }
    static const char *const cmds[] = {"run", "bench", "perplexity"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(cmd, sizeof cmd, "'%s' %s --help", bitnet, cmds[i]);
        ck_assert_int_eq(sh_capture(cmd, text, sizeof text), 0);
        ck_assert_msg(strstr(text, "--cpus LIST") && strstr(text, "--isa NAME") && strstr(text, "-t, --threads"),
                      "%s --help:\n%s", cmds[i], text);
    }
}
END_TEST

/* mkmodel (the packer behind convert too) draws no progress when stderr is not a terminal, and
 * "tensor i/n ... ETA" lines with \r when it is (under script(1), which gives it a pty). */
START_TEST(test_cli_progress_tty)
{
    const char *bitnet = getenv("BN_BITNET");
    const char *out = bn_test_path("cli_opts.bnpk");
    char cmd[1024], text[16384];
    snprintf(cmd, sizeof cmd, "'%s' mkmodel tiny '%s'", bitnet, out);
    ck_assert_int_eq(sh_capture(cmd, text, sizeof text), 0);
    ck_assert_msg(strchr(text, '\r') == NULL && strstr(text, "tensor ") == NULL, "not a tty:\n%s", text);
    ck_assert_ptr_nonnull(strstr(text, "wrote "));
    snprintf(cmd, sizeof cmd, "script -qec \"'%s' mkmodel tiny '%s'\" /dev/null", bitnet, out);
    ck_assert_int_eq(sh_capture(cmd, text, sizeof text), 0);
    ck_assert_msg(strstr(text, "\rtensor ") != NULL && strstr(text, " MiB  ETA "), "on a tty:\n%s", text);
    const char *last = strstr(text, "wrote ");
    ck_assert_ptr_nonnull(last);
    ck_assert_int_eq(last[-1], '\n');   /* the progress line was ended before the summary */
    unlink(out);
}
END_TEST

static Suite *cli_opts_suite(void)
{
    Suite *s = suite_create("cli_opts");
    TCase *tc = tcase_create("parse");
    bn_test_isa_fixture(tc);   /* test_good_values forces --isa scalar */
    tcase_add_test(tc, test_good_values);
    tcase_add_test(tc, test_bad_values);
    tcase_add_test(tc, test_thread_list_and_window);
    tcase_add_test(tc, test_cpu_list_grammar);
    tcase_add_test(tc, test_cpus_and_threads);
    tcase_add_test(tc, test_help_and_getopt_tables);
    tcase_add_test(tc, test_progress_line);
    suite_add_tcase(s, tc);
    TCase *cli = tcase_create("cli");
    BN_TCASE_ADD_TEST_IF(cli, test_cli_errors, bn_test_needs_env("BN_BITNET"));
    BN_TCASE_ADD_TEST_IF(cli, test_cli_progress_tty,
                         bn_test_needs_env("BN_BITNET") ? bn_test_needs_env("BN_BITNET")
                         : bn_test_sh("command -v script >/dev/null") ? "script(1) is not installed"
                                                                       : NULL);
    suite_add_tcase(s, cli);
    return s;
}

int main(void)
{
    return bn_test_exit("test_cli_opts", cli_opts_suite());
}
