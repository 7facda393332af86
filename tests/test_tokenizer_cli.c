/* `bitnet tokenize` end to end: the binary ($BN_BITNET) on a synthetic model written by
 * `bitnet mkmodel` (built-in vocabulary), and on the Llama-3 tokenizer.json where the fixtures
 * are present. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static char bitnet[2048], model[2048], fixture_json[2048];

/* Runs a shell command, captures up to cap-1 bytes of its stdout; returns its exit status. */
static int run(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int runf(char *out, size_t cap, const char *fmt, const char *arg)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, fmt, bitnet, model, arg);
    return run(cmd, out, cap);
}

START_TEST(cli_encode_formats)
{
    char out[4096];
    ck_assert_int_eq(runf(out, sizeof out, "%s tokenize -m %s '%s'", " the"), 0);
    ck_assert_str_eq(out, "258\n");   /* built-in vocabulary: " the" is one merged token */
    ck_assert_int_eq(runf(out, sizeof out, "%s tokenize -m %s --ids '%s'", "a~"), 0);
    ck_assert_str_eq(out, "97\n126\n");   /* byte tokens: id == byte value */
}
END_TEST

START_TEST(cli_pieces_escape)
{
    char out[4096];
    ck_assert_int_eq(runf(out, sizeof out, "printf 'x\\n\\303' | %s tokenize -m %s --pieces %s", "-"), 0);
    ck_assert_str_eq(out, "120\tx\n10\t\\n\n195\t\\xc3\n");
}
END_TEST

START_TEST(cli_decode_round_trip)
{
    char ids[4096], out[4096];
    ck_assert_int_eq(runf(ids, sizeof ids, "%s tokenize -m %s '%s'", "caf\xc3\xa9 <|eot_id|> the end"), 0);
    char cmd[16384];   /* two paths and 4 KiB of ids: room for all of them */
    ids[strcspn(ids, "\n")] = 0;
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s --decode '%s'", bitnet, model, ids);
    ck_assert_int_eq(run(cmd, out, sizeof out), 0);
    ck_assert_str_eq(out, "caf\xc3\xa9 <|eot_id|> the end");
}
END_TEST

START_TEST(cli_chat_and_bos)
{
    char plain[4096], chat[4096], bos[4096];
    ck_assert_int_eq(runf(plain, sizeof plain, "%s tokenize -m %s '%s'", "hi"), 0);
    ck_assert_int_eq(runf(bos, sizeof bos, "%s tokenize -m %s --bos '%s'", "hi"), 0);
    ck_assert_int_eq(runf(chat, sizeof chat, "%s tokenize -m %s --chat --ids '%s'", "hi"), 0);
    ck_assert(strlen(bos) > strlen(plain));
    ck_assert(strstr(bos, plain) != NULL);   /* BOS, then the same ids */
    ck_assert(strlen(chat) > strlen(bos));
}
END_TEST

START_TEST(cli_errors)
{
    char out[4096];
    ck_assert_int_eq(runf(out, sizeof out, "%s tokenize -m %s --decode %s 2>/dev/null", "99999999"), 1);
    ck_assert_int_eq(runf(out, sizeof out, "%s tokenize -m %s %s 2>/dev/null", ""), 2);   /* no text */
    ck_assert_int_eq(runf(out, sizeof out, "%s tokenize -m %s.missing %s 2>/dev/null", "x"), 1);
}
END_TEST

START_TEST(cli_fixture_json)
{
    if (!fixture_json[0]) {
        printf("SKIPPED: fixtures not found (cli_fixture_json)\n");
        return;
    }
    char cmd[8192], out[4096];
    snprintf(cmd, sizeof cmd, "%s tokenize --tokenizer-json %s 'One sentence. Two sentences.'", bitnet, fixture_json);
    ck_assert_int_eq(run(cmd, out, sizeof out), 0);
    ck_assert_str_eq(out, "4054 11914 13 9220 23719 13\n");   /* from llama3-vectors.jsonl */
}
END_TEST

int main(void)
{
    const char *b = getenv("BN_BITNET"), *tmp = getenv("BN_TEST_TMPDIR"), *fx = getenv("BN_FIXTURES_DIR");
    if (!b || !tmp) {
        printf("SKIPPED: BN_BITNET / BN_TEST_TMPDIR not set (run through make check)\n");
        return 77;
    }
    snprintf(bitnet, sizeof bitnet, "%s", b);
    snprintf(model, sizeof model, "%s/tokenizer_cli_tiny.bnm", tmp);
    char cmd[8192], out[4096];
    snprintf(cmd, sizeof cmd, "%s mkmodel tiny %s 2>&1", bitnet, model);
    if (run(cmd, out, sizeof out) != 0) {
        fprintf(stderr, "bitnet mkmodel failed: %s\n", out);
        return 1;
    }
    if (fx && *fx) {
        snprintf(fixture_json, sizeof fixture_json, "%s/tokenizer/llama3-tokenizer.json", fx);
        FILE *f = fopen(fixture_json, "r");
        if (f) fclose(f);
        else fixture_json[0] = 0;
    }
    Suite *s = suite_create("tokenizer_cli");
    TCase *tc = tcase_create("cli");
    tcase_add_test(tc, cli_encode_formats);
    tcase_add_test(tc, cli_pieces_escape);
    tcase_add_test(tc, cli_decode_round_trip);
    tcase_add_test(tc, cli_chat_and_bos);
    tcase_add_test(tc, cli_errors);
    tcase_add_test(tc, cli_fixture_json);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    remove(model);
    return failed ? 1 : 0;
}
