/* bitnetd serves every BitNet family end to end: for each synthetic family preset (2B-4T "tiny",
 * "tiny-1bitllm" with its SentencePiece vocabulary, "tiny-llama3", "tiny-falcon3" without BOS)
 * one server (workers = 1, threads = 1, n_ctx 256) is started and checked against the CLI, which
 * uses the same text layer unchanged:
 *  - /v1/models and the start-up log name the model and the family's chat format;
 *  - /tokenize gives the ids `bitnet tokenize` gives (BOS first exactly when the family has one:
 *    Falcon3 has none), and /detokenize returns non-ASCII text byte for byte; for the SPM
 *    vocabulary also a leading space and byte fallback (an emoji as its four <0xXX> pieces);
 *  - greedy /v1/completions text equals greedy `bitnet run` stdout after the echoed prompt;
 *  - /v1/chat/completions renders the family's template: its prompt_tokens equal the ids of
 *    `bitnet tokenize --chat --system`, those ids decode (through /detokenize) to the family's
 *    template text, and the streamed answer equals the non-streamed one;
 *  - a generation ends at the family's end-of-generation id with finish_reason "stop". The server
 *    has no logit_bias, so the eog id is reached by sampling (temperature 2, fixed seeds, at most
 *    MAX_SEEDS requests): with no stop strings a "stop" below max_tokens can only be an eog id,
 *    and the same seed with ignore_eos gives the same text, plus one more token with no text
 *    (the eog id is a control token). When no seed reaches it the check is skipped loudly;
 *  - the family's other forms (its own HF form, and a GGUF form as bitnet.cpp writes it), served
 *    directly (bitnetd converts them through its cache), give the same chat format, the same ids
 *    and the same greedy completion as the packed model. */
#define _GNU_SOURCE   /* nftw's FTW_PHYS */
#include <check.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server_harness.h"
#include "testutil.h"

#include <sys/stat.h>

#define N_CTX 256
#define MAX_SEEDS 24             /* eog search: requests per family at most */
#define EOG_MAX_TOKENS 200       /* per eog search request (the prompt is a few tokens) */
#define CLI_MS 60000

#define SJ(j, k) json_string_value(json_object_get((j), (k)))
#define IJ(j, k) json_integer_value(json_object_get((j), (k)))

/* The system and user message of the chat checks, and what each template makes of them
 * (tokenizer.h, bn_chat_render; decoded with control tokens spelled out; SentencePiece drops
 * the one space it prefixed after each control token). */
#define SYS "Be brief."
#define USR "Gr\xc3\xbc\xc3\x9f" "e, \xe4\xb8\x96\xe7\x95\x8c!"

static const struct family {
    const char *preset;
    const char *chat;            /* the chat format the server must pick (its start-up log) */
    int has_bos;                 /* prompts start with cfg.bos */
    int spm;                     /* SentencePiece vocabulary (bn_vocab_builtin_kind SPM) */
    const char *rendered;        /* the chat prompt for {SYS, USR}, as text */
    const char *forms[2];        /* `mkmodel -f` forms served besides the packed file */
} FAMILIES[] = {
    {"tiny", "bitnet", 1, 0,
     "<|begin_of_text|>System: " SYS "<|eot_id|>User: " USR "<|eot_id|>Assistant: ",
     {"hf", "gguf-f16"}},
    /* n_ff 336 and tiny-bitnet's 352 are no multiple of 128: no I2_S, F16 linears instead */
    {"tiny-1bitllm", "none", 1, 1, "<s>" SYS "\n" USR, {"hf", "gguf-f16"}},
    {"tiny-llama3", "llama3", 1, 0,
     "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" SYS "<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\n" USR "<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\n",
     {"hf", "gguf-i2_s"}},
    {"tiny-falcon3", "falcon3", 0, 0,
     "<|system|>\n" SYS "\n<|user|>\n" USR "\n<|assistant|>\n", {"hf", "gguf-i2_s"}},
};
#define N_FAMILIES (int)(sizeof FAMILIES / sizeof FAMILIES[0])

/* SentencePiece built-in vocabulary: <0x00>..<0xFF> are ids 3..258 (tokenizer.h). */
#define SPM_BYTE_ID(b) (3 + (int)(b))

#define CHAT_MSGS                                                                                   \
    "\"messages\":[{\"role\":\"system\",\"content\":\"" SYS "\"},"                                   \
    "{\"role\":\"user\",\"content\":\"" USR "\"}]"
#define COMPLETION_PROMPT "The caf\xc3\xa9 is"
#define COMPLETION_BODY "{\"prompt\":\"" COMPLETION_PROMPT "\",\"max_tokens\":12,\"temperature\":0}"
#define ROUND_TRIP_TEXT "Gr\xc3\xbc\xc3\x9f" "e, \xe4\xb8\x96\xe7\x95\x8c \xe2\x9c\x93 caf\xc3\xa9"

static bn_srv *srv;
static const struct family *fam;
/* What the packed model's server answered, for the other forms to match. */
static char *ref_completion;
static json_t *ref_chat_ids, *ref_text_ids;

/* Scratch trees (HF directories, convert caches), removed at exit unless BN_KEEP_TMP. */
static char *trees[16];
static int n_trees;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void rm_trees(void)
{
    for (int i = 0; i < n_trees; i++) {
        if (!getenv("BN_KEEP_TMP")) nftw(trees[i], rm_entry, 8, FTW_DEPTH | FTW_PHYS);
        free(trees[i]);
    }
    n_trees = 0;
    free(ref_completion);
    json_decref(ref_chat_ids);
    json_decref(ref_text_ids);
    ref_completion = NULL;
    ref_chat_ids = ref_text_ids = NULL;
}

static const char *track_tree(const char *path)
{
    static int registered;
    if (!registered) registered = atexit(rm_trees) == 0;
    ck_assert_int_lt(n_trees, 16);
    trees[n_trees] = strdup(path);
    ck_assert_ptr_nonnull(trees[n_trees]);
    return trees[n_trees++];
}

/* ---- helpers --------------------------------------------------------------------------- */

static json_t *post_ok(const char *path, const char *body)
{
    json_t *j;
    int st = bn_http_post_json(srv->port, path, body, &j);
    if (st != 200) bn_srv_dump_log(srv);
    ck_assert_msg(st == 200, "%s: POST %s %s: status %d", fam->preset, path, body, st);
    ck_assert_msg(j != NULL, "%s: POST %s: body is not JSON", fam->preset, path);
    return j;
}

/* POST a body built from a JSON value (a new reference, stolen). */
static json_t *post_json(const char *path, json_t *req)
{
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    ck_assert_ptr_nonnull(body);
    json_t *j = post_ok(path, body);
    free(body);
    return j;
}

/* `$BN_BITNET args...` with its stdout only (stderr, where run prints timings, is dropped). */
static char *cli_stdout(char *const *args)
{
    char *argv[24] = {"/bin/sh", "-c", "exec \"$@\" 2>/dev/null", "sh", getenv("BN_BITNET")};
    int n = 5;
    for (; args[n - 5] && n < 23; n++) argv[n] = args[n - 5];
    argv[n] = NULL;
    size_t cap = 64 * 1024;
    char *out = malloc(cap);
    ck_assert_ptr_nonnull(out);
    int rc = bn_run_capture(argv, out, cap, CLI_MS);
    ck_assert_msg(rc == 0, "%s: bitnet %s ... exited %d: %s", fam->preset, args[0], rc, out);
    return out;
}

/* Parses `bitnet tokenize` output (ids on one line) into a JSON array. */
static json_t *cli_ids(char *const *args)
{
    char *out = cli_stdout(args);
    json_t *a = json_array();
    char *p = out, *end;
    for (long v; (v = strtol(p, &end, 10)), end != p; p = end) json_array_append_new(a, json_integer(v));
    while (*p == ' ' || *p == '\n') p++;
    ck_assert_msg(*p == 0, "%s: unexpected bitnet tokenize output '%s'", fam->preset, out);
    free(out);
    return a;
}

static char *ids_str(const json_t *a)
{
    char *s = json_dumps(a, JSON_COMPACT);
    ck_assert_ptr_nonnull(s);
    return s;
}

static void assert_ids_eq(const json_t *got, const json_t *want, const char *what)
{
    if (json_equal(got, want)) return;
    char *g = ids_str(got), *w = ids_str(want), msg[1024];
    snprintf(msg, sizeof msg, "%s: %s: server %s, want %s", fam->preset, what, g, w);
    free(g);
    free(w);
    ck_abort_msg("%s", msg);
}

/* POST /tokenize {"prompt": text, "add_special_tokens": special}: the ids (new reference). */
static json_t *srv_tokenize(const char *text, int special)
{
    json_t *j = post_json("/tokenize", json_pack("{s:s, s:b}", "prompt", text, "add_special_tokens",
                                                 special));
    json_t *t = json_incref(json_object_get(j, "tokens"));
    ck_assert_msg(json_is_array(t), "%s: /tokenize: no tokens array", fam->preset);
    ck_assert_int_eq(IJ(j, "count"), (long)json_array_size(t));
    json_decref(j);
    return t;
}

/* POST /detokenize {"tokens": ids}: the text (malloc'd). */
static char *srv_detokenize(json_t *ids)
{
    json_t *j = post_json("/detokenize", json_pack("{s:O}", "tokens", ids));
    const char *p = SJ(j, "prompt");
    ck_assert_msg(p != NULL, "%s: /detokenize: no prompt", fam->preset);
    char *s = strdup(p);
    json_decref(j);
    return s;
}

/* The server's ids for text equal `bitnet tokenize`'s, and decode back to text exactly. */
static void check_text_round_trip(const char *text)
{
    json_t *ids = srv_tokenize(text, 0);
    char *args[] = {"tokenize", "-m", srv->model, (char *)text, NULL};
    json_t *want = cli_ids(args);
    assert_ids_eq(ids, want, text);
    char *back = srv_detokenize(ids);
    ck_assert_msg(strcmp(back, text) == 0, "%s: /detokenize(/tokenize('%s')) = '%s'", fam->preset,
                  text, back);
    free(back);
    json_decref(want);
    json_decref(ids);
}

/* One completion: choices[0] and usage into *c0 / *usage (borrowed from the returned root). */
static json_t *completion(const char *body, json_t **c0, json_t **usage)
{
    json_t *j = post_ok("/v1/completions", body);
    *c0 = json_array_get(json_object_get(j, "choices"), 0);
    *usage = json_object_get(j, "usage");
    ck_assert_msg(*c0 && SJ(*c0, "text") && SJ(*c0, "finish_reason"), "%s: %s: no choice",
                  fam->preset, body);
    return j;
}

/* ---- the checks -------------------------------------------------------------------------- */

static void check_log_chat_format(void)
{
    char line[64];
    snprintf(line, sizeof line, "chat format %s", fam->chat);
    if (!bn_srv_log_has(srv, line)) bn_srv_dump_log(srv);
    ck_assert_msg(bn_srv_log_has(srv, line), "%s (%s): the start-up log lacks '%s'", fam->preset,
                  srv->model, line);
}

static void stop_server(void)
{
    int st = bn_srv_stop(srv, 10000);
    srv = NULL;
    ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: bitnetd exit status 0x%x",
                  fam->preset, st);
}

static void check_models(void)
{
    json_t *j;
    ck_assert_int_eq(bn_http_get_json(srv->port, "/v1/models", &j), 200);
    json_t *m = json_array_get(json_object_get(j, "data"), 0);
    ck_assert_msg(m && SJ(m, "id") && !strcmp(SJ(m, "id"), fam->preset), "%s: /v1/models id %s",
                  fam->preset, m ? SJ(m, "id") : "(none)");
    ck_assert_str_eq(SJ(m, "owned_by"), "bitnetd");
    ck_assert_int_eq(IJ(m, "max_model_len"), N_CTX);
    json_decref(j);
    check_log_chat_format();
}

static void check_tokenize(void)
{
    check_text_round_trip(ROUND_TRIP_TEXT);
    json_decref(ref_text_ids);
    ref_text_ids = srv_tokenize(ROUND_TRIP_TEXT, 1);
    /* add_special_tokens (the default) prepends BOS exactly when the family has one */
    json_t *plain = srv_tokenize("Hello world", 0), *with = srv_tokenize("Hello world", 1);
    size_t np = json_array_size(plain), nw = json_array_size(with);
    ck_assert_msg(nw == np + (size_t)fam->has_bos, "%s: %zu ids with special tokens, %zu without",
                  fam->preset, nw, np);
    for (size_t i = 0; i < np; i++)
        ck_assert_int_eq(json_integer_value(json_array_get(with, i + (size_t)fam->has_bos)),
                         json_integer_value(json_array_get(plain, i)));
    if (fam->spm) ck_assert_int_eq(json_integer_value(json_array_get(with, 0)), 1);   /* <s> */
    json_decref(plain);
    json_decref(with);
    if (!fam->spm) return;

    /* SentencePiece: a leading space is text of its own (the prefixed one is dropped again) */
    check_text_round_trip(" Hello  world");
    json_t *a = srv_tokenize("Hello", 0), *b = srv_tokenize(" Hello", 0);
    ck_assert_msg(json_array_size(b) > json_array_size(a), "%s: ' Hello' is no longer than 'Hello'",
                  fam->preset);
    json_decref(a);
    json_decref(b);
    /* byte fallback: U+1F642 is no piece of the vocabulary: its four bytes, as <0xXX> ids */
    const char *emoji = "\xf0\x9f\x99\x82";
    check_text_round_trip(emoji);
    json_t *e = srv_tokenize(emoji, 0);
    size_t ne = json_array_size(e);
    ck_assert_msg(ne >= 4, "%s: the emoji is %zu ids", fam->preset, ne);
    for (int i = 0; i < 4; i++)
        ck_assert_msg(json_integer_value(json_array_get(e, ne - 4 + (size_t)i)) ==
                          SPM_BYTE_ID((unsigned char)emoji[i]),
                      "%s: emoji byte %d is id %lld, want <0x%02X> = %d", fam->preset, i,
                      (long long)json_integer_value(json_array_get(e, ne - 4 + (size_t)i)),
                      (unsigned char)emoji[i], SPM_BYTE_ID((unsigned char)emoji[i]));
    json_decref(e);
}

/* Greedy completion == greedy `bitnet run` (which echoes the prompt first). */
static void check_completion_matches_run(void)
{
    const char *prompt = COMPLETION_PROMPT;
    char *out;
    {
        char *args[] = {"run", "-m", srv->model, "-p", (char *)prompt, "-n", "12", "--temp", "0",
                        "-t", "1", NULL};
        out = cli_stdout(args);
    }
    size_t pl = strlen(prompt);
    ck_assert_msg(strncmp(out, prompt, pl) == 0, "%s: bitnet run did not echo the prompt: '%s'",
                  fam->preset, out);
    json_t *c0, *u;
    json_t *j = completion(COMPLETION_BODY, &c0, &u);
    ck_assert_msg(strcmp(SJ(c0, "text"), out + pl) == 0, "%s: server '%s', bitnet run '%s'",
                  fam->preset, SJ(c0, "text"), out + pl);
    json_t *ids = srv_tokenize(prompt, 1);
    ck_assert_int_eq(IJ(u, "prompt_tokens"), (long)json_array_size(ids));
    free(ref_completion);
    ref_completion = strdup(SJ(c0, "text"));
    json_decref(ids);
    json_decref(j);
    free(out);
}

static void check_chat(void)
{
    char *args[] = {"tokenize", "-m", srv->model, "--chat", "--system", SYS, USR, NULL};
    json_t *want = cli_ids(args);
    const char *msgs = CHAT_MSGS;
    char body[512];
    snprintf(body, sizeof body, "{%s}", msgs);
    json_t *t = post_ok("/tokenize", body);
    assert_ids_eq(json_object_get(t, "tokens"), want, "chat template ids");
    json_decref(ref_chat_ids);
    ref_chat_ids = json_incref(json_object_get(t, "tokens"));
    char *text = srv_detokenize(json_object_get(t, "tokens"));
    ck_assert_msg(strcmp(text, fam->rendered) == 0, "%s: the chat prompt is '%s', want '%s'",
                  fam->preset, text, fam->rendered);
    free(text);
    json_decref(t);

    snprintf(body, sizeof body, "{%s,\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true}", msgs);
    json_t *j = post_ok("/v1/chat/completions", body);
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    const char *content = SJ(json_object_get(c0, "message"), "content");
    ck_assert_ptr_nonnull(content);
    ck_assert_str_eq(SJ(c0, "finish_reason"), "length");
    json_t *u = json_object_get(j, "usage");
    ck_assert_int_eq(IJ(u, "prompt_tokens"), (long)json_array_size(want));
    ck_assert_int_eq(IJ(u, "completion_tokens"), 8);

    snprintf(body, sizeof body,
             "{%s,\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true,\"stream\":true,"
             "\"stream_options\":{\"include_usage\":true}}", msgs);
    bn_sse s;
    ck_assert_int_eq(bn_sse_open(&s, srv->port, "/v1/chat/completions", NULL, body, BN_HTTP_MS), 0);
    ck_assert_int_eq(s.head.status, 200);
    bn_stream_result r;
    ck_assert_int_eq(bn_sse_collect(&s, &r, BN_HTTP_MS), 0);
    bn_sse_close(&s);
    ck_assert_msg(r.done && r.n_errors == 0, "%s: stream done %d, errors %d", fam->preset, r.done,
                  r.n_errors);
    ck_assert_msg(strcmp(r.text, content) == 0, "%s: streamed '%s', not streamed '%s'", fam->preset,
                  r.text, content);
    ck_assert_msg(r.finish && !strcmp(r.finish, "length"), "%s: stream finish %s", fam->preset,
                  r.finish ? r.finish : "(none)");
    json_t *last = json_array_get(r.events, json_array_size(r.events) - 1);
    ck_assert_int_eq(IJ(json_object_get(last, "usage"), "prompt_tokens"), (long)json_array_size(want));
    bn_stream_result_free(&r);
    json_decref(j);
    json_decref(want);
}

/* A generation that reaches the eog id (sampled: see the top comment) ends with "stop". */
static void check_eog_stop(void)
{
    char body[256];
    for (int seed = 1; seed <= MAX_SEEDS; seed++) {
        snprintf(body, sizeof body,
                 "{\"prompt\":\"Hi\",\"max_tokens\":%d,\"temperature\":2,\"top_p\":1,\"seed\":%d}",
                 EOG_MAX_TOKENS, seed);
        json_t *c0, *u;
        json_t *j = completion(body, &c0, &u);
        long k = IJ(u, "completion_tokens");
        if (strcmp(SJ(c0, "finish_reason"), "stop") != 0) {
            ck_assert_str_eq(SJ(c0, "finish_reason"), "length");
            ck_assert_int_eq(k, EOG_MAX_TOKENS);
            json_decref(j);
            continue;
        }
        ck_assert_int_lt(k, EOG_MAX_TOKENS);
        char *stopped = strdup(SJ(c0, "text"));
        json_decref(j);
        /* the same draw without the eog stop: the same k tokens, then the eog id, which has no text */
        for (long extra = 0; extra <= 1; extra++) {
            snprintf(body, sizeof body,
                     "{\"prompt\":\"Hi\",\"max_tokens\":%ld,\"temperature\":2,\"top_p\":1,\"seed\":%d,"
                     "\"ignore_eos\":true}", k + extra, seed);
            j = completion(body, &c0, &u);
            ck_assert_str_eq(SJ(c0, "finish_reason"), "length");
            ck_assert_int_eq(IJ(u, "completion_tokens"), k + extra);
            ck_assert_msg(strcmp(SJ(c0, "text"), stopped) == 0,
                          "%s: seed %d: %ld tokens with ignore_eos give '%s', the eog stop '%s'",
                          fam->preset, seed, k + extra, SJ(c0, "text"), stopped);
            json_decref(j);
        }
        fprintf(stderr, "%s: the eog stop: seed %d, after %ld tokens\n", fam->preset, seed, k);
        free(stopped);
        return;
    }
    char why[160];
    snprintf(why, sizeof why, "%s: no seed of %d reached the eog id: its stop is not checked",
             fam->preset, MAX_SEEDS);
    bn_test_skip_note("family_e2e_eog_stop", why);
}

/* The family in another form (`mkmodel -f form`), served as it is: the same answers as packed. */
static void check_form(const char *form, const char *cache)
{
    char name[64], path[600];
    snprintf(name, sizeof name, "%s-%s", fam->preset, form);
    snprintf(path, sizeof path, "%s%s", bn_srv_tmp(name), strncmp(form, "gguf", 4) ? "" : ".gguf");
    track_tree(path);
    char *args[] = {"mkmodel", "-f", (char *)form, (char *)fam->preset, path, NULL};
    free(cli_stdout(args));
    char conf[1400];
    snprintf(conf, sizeof conf, "model = %s\ncache_dir = %s\nmodel_name = %s\nn_ctx = %d\n", path, cache,
             fam->preset, N_CTX);
    srv = bn_srv_start_ok(conf);
    check_log_chat_format();
    json_t *ids = srv_tokenize(ROUND_TRIP_TEXT, 1);
    assert_ids_eq(ids, ref_text_ids, form);
    json_decref(ids);
    json_t *t = post_ok("/tokenize", "{" CHAT_MSGS "}");
    assert_ids_eq(json_object_get(t, "tokens"), ref_chat_ids, form);
    json_decref(t);
    json_t *c0, *u;
    json_t *j = completion(COMPLETION_BODY, &c0, &u);
    ck_assert_msg(strcmp(SJ(c0, "text"), ref_completion) == 0, "%s as %s: '%s', packed: '%s'",
                  fam->preset, form, SJ(c0, "text"), ref_completion);
    json_decref(j);
    stop_server();
}

START_TEST(family_e2e)
{
    fam = &FAMILIES[_i];
    const char *model = bn_srv_model(fam->preset);
    ck_assert_msg(model != NULL, "%s: bitnet mkmodel failed (see above)", fam->preset);
    char conf[1024];
    snprintf(conf, sizeof conf, "model = %s\nmodel_name = %s\nn_ctx = %d\n", model, fam->preset,
             N_CTX);
    srv = bn_srv_start_ok(conf);
    check_models();
    check_tokenize();
    check_completion_matches_run();
    check_chat();
    check_eog_stop();
    stop_server();

    const char *cache = track_tree(bn_srv_tmp("cache"));
    ck_assert_int_eq(mkdir(cache, 0755), 0);
    for (int i = 0; i < 2; i++) check_form(fam->forms[i], cache);
}
END_TEST

int main(void)
{
    if (!getenv("BN_BITNETD") || !getenv("BN_BITNET")) {
        fprintf(stderr, "SKIP: test_server_families: BN_BITNETD / BN_BITNET are not set\n");
        return 77;
    }
    Suite *s = suite_create("server_families");
    TCase *tc = bn_srv_tcase(s, "families", 300);
    tcase_add_loop_test(tc, family_e2e, 0, N_FAMILIES);
    int rc = bn_test_exit("test_server_families", s);
    bn_srv_stop_all();
    return rc;
}
