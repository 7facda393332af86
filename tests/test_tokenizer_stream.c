/* Streaming decode and stop strings, on multi-byte characters split across tokens.
 *
 * The built-in vocabulary has no merges for non-ASCII text, so every multi-byte character
 * arrives as one token per byte: the hardest case for a streaming decoder. No fixtures needed. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "text/tokenizer.h"

static bn_vocab *vocab;
static bn_tokenizer *tk;

static void setup(void)
{
    bn_error err;
    vocab = bn_vocab_builtin(1024, &err);
    ck_assert_ptr_nonnull(vocab);
    tk = bn_tokenizer_new(vocab, &err);
    ck_assert_msg(tk != NULL, "%s", err.msg);
}

static void teardown(void)
{
    bn_tokenizer_free(tk);
    bn_vocab_free(vocab);
}

/* A growing output string. */
typedef struct {
    char s[4096];
    size_t len;
} out;

static void out_add(out *o, const char *s, size_t len)
{
    ck_assert_uint_lt(o->len + len, sizeof o->s);
    memcpy(o->s + o->len, s, len);
    o->len += len;
    o->s[o->len] = 0;
}

/* Is s[0..len) valid UTF-8 with no incomplete sequence? */
static int valid_utf8(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        size_t n = s[i] < 0x80 ? 1 : s[i] >= 0xc2 && s[i] <= 0xdf ? 2 : s[i] >= 0xe0 && s[i] <= 0xef ? 3
                 : s[i] >= 0xf0 && s[i] <= 0xf4 ? 4 : 0;
        if (!n || i + n > len) return 0;
        for (size_t k = 1; k < n; k++)
            if ((s[i + k] & 0xc0) != 0x80) return 0;
        i += n;
    }
    return 1;
}

/* Encodes text, feeds the ids one at a time; every chunk must be valid UTF-8 on its own. */
static void stream(const char *text, size_t len, unsigned flags, out *o, size_t *max_chunks_empty)
{
    bn_error err;
    int32_t *ids;
    size_t n;
    ck_assert(bn_tokenize(tk, text, len, &ids, &n, &err) == 0);
    bn_stream_decoder *sd = bn_stream_decoder_new(tk, flags);
    ck_assert_ptr_nonnull(sd);
    size_t empty = 0;
    for (size_t i = 0; i < n; i++) {
        const char *t;
        size_t tl;
        ck_assert(bn_stream_decoder_feed(sd, ids[i], &t, &tl, &err) == 0);
        ck_assert_msg(valid_utf8((const unsigned char *)t, tl), "chunk %zu is not valid UTF-8", i);
        empty += tl == 0;
        out_add(o, t, tl);
    }
    const char *t;
    size_t tl;
    bn_stream_decoder_flush(sd, &t, &tl);
    out_add(o, t, tl);
    if (max_chunks_empty) *max_chunks_empty = empty;
    bn_stream_decoder_free(sd);
    free(ids);
}

START_TEST(stream_holds_back_partial_characters)
{
    /* é (2 bytes), 你 (3), 😀 (4), a ZWJ family emoji: each byte is its own token. */
    static const char text[] = "caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80 \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9";
    out o = {{0}, 0};
    size_t empty;
    stream(text, sizeof text - 1, 0, &o, &empty);
    ck_assert_uint_eq(o.len, sizeof text - 1);
    ck_assert(memcmp(o.s, text, o.len) == 0);
    ck_assert_uint_gt(empty, 5);   /* bytes were held back, not emitted broken */
}
END_TEST

START_TEST(stream_token_by_token_chunks)
{
    /* Feed "é" as two tokens by hand and check what comes out of each call. */
    bn_error err;
    bn_stream_decoder *sd = bn_stream_decoder_new(tk, 0);
    const char *t;
    size_t tl;
    ck_assert(bn_stream_decoder_feed(sd, 0xc3, &t, &tl, &err) == 0);   /* id == byte value */
    ck_assert_uint_eq(tl, 0);
    ck_assert(bn_stream_decoder_feed(sd, 0xa9, &t, &tl, &err) == 0);
    ck_assert_uint_eq(tl, 2);
    ck_assert(memcmp(t, "\xc3\xa9", 2) == 0);
    ck_assert(bn_stream_decoder_feed(sd, 'x', &t, &tl, &err) == 0);
    ck_assert_uint_eq(tl, 1);
    ck_assert(bn_stream_decoder_feed(sd, 1 << 30, &t, &tl, &err) != 0);   /* out of range */
    bn_stream_decoder_free(sd);
}
END_TEST

START_TEST(stream_invalid_bytes_become_replacement)
{
    /* A stray continuation byte, a lead byte followed by ASCII, a truncated 4-byte sequence at
     * the end, an overlong encoding and a surrogate: each maximal subpart -> one U+FFFD. */
    static const char text[] = "a\x80" "b\xc3(" "\xe0\x80" "\xed\xa0\x80" "z\xf0\x9f\x98";
    out o = {{0}, 0};
    stream(text, sizeof text - 1, 0, &o, NULL);
    ck_assert_str_eq(o.s, "a\xef\xbf\xbd" "b\xef\xbf\xbd("
                          "\xef\xbf\xbd\xef\xbf\xbd" "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" "z\xef\xbf\xbd");
    ck_assert(valid_utf8((const unsigned char *)o.s, o.len));
}
END_TEST

START_TEST(stream_skips_control_tokens_when_asked)
{
    bn_error err;
    const char *t;
    size_t tl;
    bn_stream_decoder *sd = bn_stream_decoder_new(tk, BN_DECODE_SKIP_CONTROL);
    ck_assert(bn_stream_decoder_feed(sd, vocab->eot, &t, &tl, &err) == 0);
    ck_assert_uint_eq(tl, 0);
    bn_stream_decoder_free(sd);
    sd = bn_stream_decoder_new(tk, 0);
    ck_assert(bn_stream_decoder_feed(sd, vocab->eot, &t, &tl, &err) == 0);
    ck_assert_uint_eq(tl, 10);
    ck_assert(memcmp(t, "<|eot_id|>", 10) == 0);
    bn_stream_decoder_free(sd);
}
END_TEST

START_TEST(stream_random_bytes_always_valid)
{
    uint64_t s = 12345;
    for (int iter = 0; iter < 200; iter++) {
        char buf[200];
        size_t len = (size_t)(iter % 199) + 1;
        for (size_t i = 0; i < len; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            buf[i] = (char)(s >> 56);
        }
        out o = {{0}, 0};
        stream(buf, len, 0, &o, NULL);   /* asserts every chunk is valid UTF-8 */
        ck_assert(valid_utf8((const unsigned char *)o.s, o.len));
    }
}
END_TEST

/* ---- stop strings ---- */

/* Feeds pieces one by one; returns the stop index and the emitted text in o. */
static int run_stops(const char *const *stops, size_t n_stops, const char *const *pieces, size_t n, out *o)
{
    bn_error err;
    bn_stop_matcher *sm = bn_stop_matcher_new(stops, n_stops, &err);
    ck_assert_ptr_nonnull(sm);
    int r = -1;
    for (size_t i = 0; i < n && r < 0; i++) {
        const char *t;
        size_t tl;
        r = bn_stop_matcher_feed(sm, pieces[i], strlen(pieces[i]), &t, &tl);
        out_add(o, t, tl);
    }
    if (r < 0) {
        const char *t;
        size_t tl;
        bn_stop_matcher_flush(sm, &t, &tl);
        out_add(o, t, tl);
    }
    bn_stop_matcher_free(sm);
    return r;
}

START_TEST(stop_across_pieces)
{
    const char *stops[] = {"User:", "\n\n"};
    const char *pieces[] = {"Hello", " there", ".\nUs", "er", ": more"};
    out o = {{0}, 0};
    ck_assert_int_eq(run_stops(stops, 2, pieces, 5, &o), 0);
    ck_assert_str_eq(o.s, "Hello there.\n");
}
END_TEST

START_TEST(stop_releases_text_that_cannot_match)
{
    bn_error err;
    const char *stops[] = {"<END>"};
    bn_stop_matcher *sm = bn_stop_matcher_new(stops, 1, &err);
    const char *t;
    size_t tl;
    ck_assert_int_eq(bn_stop_matcher_feed(sm, "ab<E", 4, &t, &tl), -1);
    ck_assert_uint_eq(tl, 2);            /* "<E" is held: it may start <END> */
    ck_assert(memcmp(t, "ab", 2) == 0);
    ck_assert_int_eq(bn_stop_matcher_feed(sm, "x", 1, &t, &tl), -1);
    ck_assert_uint_eq(tl, 3);            /* released as soon as it cannot match */
    ck_assert(memcmp(t, "<Ex", 3) == 0);
    ck_assert_int_eq(bn_stop_matcher_feed(sm, "<<EN", 4, &t, &tl), -1);
    ck_assert_uint_eq(tl, 1);            /* only the longest possible prefix is held */
    ck_assert_int_eq(bn_stop_matcher_feed(sm, "D>tail", 6, &t, &tl), 0);
    ck_assert_uint_eq(tl, 0);
    ck_assert_int_eq(bn_stop_matcher_feed(sm, "more", 4, &t, &tl), 0);   /* stays stopped */
    ck_assert_uint_eq(tl, 0);
    bn_stop_matcher_free(sm);
}
END_TEST

/* A stop string made of multi-byte characters, arriving through the stream decoder one byte
 * token at a time: no broken character is ever emitted, and the text before it comes out whole. */
START_TEST(stop_multibyte_split_across_tokens)
{
    static const char text[] = "caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96\xe7\x95\x8c!";   /* café 你好世界! */
    const char *stops[] = {"\xe4\xb8\x96\xe7\x95\x8c"};   /* 世界 */
    bn_error err;
    int32_t *ids;
    size_t n;
    ck_assert(bn_tokenize(tk, text, sizeof text - 1, &ids, &n, &err) == 0);
    ck_assert_uint_gt(n, 15);
    bn_stream_decoder *sd = bn_stream_decoder_new(tk, 0);
    bn_stop_matcher *sm = bn_stop_matcher_new(stops, 1, &err);
    out o = {{0}, 0};
    int r = -1;
    for (size_t i = 0; i < n && r < 0; i++) {
        const char *t, *e;
        size_t tl, el;
        ck_assert(bn_stream_decoder_feed(sd, ids[i], &t, &tl, &err) == 0);
        r = bn_stop_matcher_feed(sm, t, tl, &e, &el);
        ck_assert(valid_utf8((const unsigned char *)e, el));
        out_add(&o, e, el);
    }
    ck_assert_int_eq(r, 0);
    ck_assert_str_eq(o.s, "caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd");
    bn_stop_matcher_free(sm);
    bn_stream_decoder_free(sd);
    free(ids);
}
END_TEST

START_TEST(stop_earliest_end_wins)
{
    const char *stops[] = {"abcd", "bc"};
    const char *pieces[] = {"xab", "cd"};
    out o = {{0}, 0};
    ck_assert_int_eq(run_stops(stops, 2, pieces, 2, &o), 1);   /* "bc" completes first */
    ck_assert_str_eq(o.s, "xa");
    const char *stops2[] = {"bc", "abc"};
    const char *pieces2[] = {"xabcz"};
    o.len = 0;
    o.s[0] = 0;
    ck_assert_int_eq(run_stops(stops2, 2, pieces2, 1, &o), 1);   /* same end: the longer */
    ck_assert_str_eq(o.s, "x");
}
END_TEST

START_TEST(stop_none_and_flush)
{
    const char *pieces[] = {"ab", "<", "|"};
    out o = {{0}, 0};
    ck_assert_int_eq(run_stops(NULL, 0, pieces, 3, &o), -1);
    ck_assert_str_eq(o.s, "ab<|");
    const char *stops[] = {"<|eot"};
    o.len = 0;
    ck_assert_int_eq(run_stops(stops, 1, pieces, 3, &o), -1);
    ck_assert_str_eq(o.s, "ab<|");   /* held "<|" is released at the end */
    bn_error err;
    const char *empty[] = {""};
    ck_assert_ptr_null(bn_stop_matcher_new(empty, 1, &err));
    ck_assert_ptr_null(bn_stop_matcher_new(stops, BN_STOP_MAX + 1, &err));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenizer_stream");
    TCase *tc = tcase_create("stream");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, stream_holds_back_partial_characters);
    tcase_add_test(tc, stream_token_by_token_chunks);
    tcase_add_test(tc, stream_invalid_bytes_become_replacement);
    tcase_add_test(tc, stream_skips_control_tokens_when_asked);
    tcase_add_test(tc, stream_random_bytes_always_valid);
    tcase_add_test(tc, stop_multibyte_split_across_tokens);
    suite_add_tcase(s, tc);
    TCase *st = tcase_create("stop");
    tcase_add_test(st, stop_across_pieces);
    tcase_add_test(st, stop_releases_text_that_cannot_match);
    tcase_add_test(st, stop_earliest_end_wins);
    tcase_add_test(st, stop_none_and_flush);
    suite_add_tcase(s, st);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
