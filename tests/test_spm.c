/* SentencePiece BPE and the other family tokenizers (bitnet-families.md s.3, s.6):
 *  - SPM encoding on small hand-made vocabularies, with the expected ids worked out by hand from
 *    the algorithm (highest score first, leftmost on ties, byte fallback, space prefix, specials);
 *  - exactness: decode(encode(s)) == s on random bytes, spaces, U+2581 and added tokens;
 *  - tokenizer.model: write -> parse round trip, the 1bitLLM form with added_tokens.json, and
 *    clear errors on malformed protobufs;
 *  - tokenizer.json of the SentencePiece kind and Falcon3's pre-tokenizer JSON;
 *  - Falcon3's three-regex pre-tokenizer on hand-checked strings;
 *  - Falcon3 / NONE chat rendering, end-of-generation ids per family;
 *  - the built-in family vocabularies; the packed tokenizer section (1.2 SPM, 1.1 BPE). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model_format.h"
#include "model/model_tokenizer.h"
#include "text/spm_model.h"
#include "text/text_internal.h"   /* the pre-tokenizer, tested directly */
#include "text/tokenizer.h"

#define SP "\xe2\x96\x81"   /* U+2581 */
#define BYTE(b) (3 + (b))   /* ids of <0xXX> in the hand-made vocabularies */

/* ---- hand-made SPM vocabularies ---- */

typedef struct {
    const char *text;
    uint8_t type;
    float score;
} tok_def;

/* <unk> <s> </s>, the 256 byte tokens, then defs. */
static bn_vocab *make_spm(const tok_def *defs, size_t n_defs, int space_prefix)
{
    uint32_t n = 3 + 256 + (uint32_t)n_defs;
    size_t text = 0;
    static const tok_def heads[3] = {{"<unk>", BN_TOK_UNKNOWN, 0}, {"<s>", BN_TOK_CONTROL, 0}, {"</s>", BN_TOK_CONTROL, 0}};
    char bytes[256][7];
    for (int b = 0; b < 256; b++) snprintf(bytes[b], sizeof bytes[b], "<0x%02X>", b);
    for (size_t i = 0; i < n_defs; i++) text += strlen(defs[i].text);
    text += 3 * 6 + 256 * 6;
    bn_vocab *v = bn_vocab_alloc(n, text, 0);
    ck_assert_ptr_nonnull(v);
    ck_assert_ptr_nonnull(bn_vocab_scores_alloc(v));
    uint32_t o = 0;
    for (uint32_t i = 0; i < n; i++) {
        tok_def d = i < 3 ? heads[i] : i < 259 ? (tok_def){bytes[i - 3], BN_TOK_BYTE, 0} : defs[i - 259];
        v->tok_off[i] = o;
        memcpy(v->text + o, d.text, strlen(d.text));
        o += (uint32_t)strlen(d.text);
        v->type[i] = d.type;
        v->scores[i] = d.score;
    }
    v->tok_off[n] = o;
    v->model = BN_TOKM_SPM;
    v->space_prefix = (uint32_t)space_prefix;
    v->bos = 1;
    v->eos = 2;
    v->chat = BN_CHAT_NONE;
    bn_error err;
    ck_assert_msg(bn_vocab_index(v, &err) == 0, "%s", err.msg);
    return v;
}

/* ids 259.. of the main test vocabulary */
enum { T_SP = 259, T_A, T_B, T_C, T_D, T_X, T_AB, T_BC, T_CD, T_XX, T_SPA, T_SPSP, T_LINE, T_PAD };
static const tok_def main_defs[] = {
    {SP, BN_TOK_NORMAL, -100}, {"a", BN_TOK_NORMAL, -100}, {"b", BN_TOK_NORMAL, -100},
    {"c", BN_TOK_NORMAL, -100}, {"d", BN_TOK_NORMAL, -100}, {"x", BN_TOK_NORMAL, -100},
    {"ab", BN_TOK_NORMAL, -1}, {"bc", BN_TOK_NORMAL, -2}, {"cd", BN_TOK_NORMAL, -0.5f},
    {"xx", BN_TOK_NORMAL, -1}, {SP "a", BN_TOK_NORMAL, -3}, {SP SP, BN_TOK_NORMAL, -4},
    {"</line>", BN_TOK_USER_DEFINED, -1000}, {"<pad>", BN_TOK_USER_DEFINED, -1000},
};
#define N_MAIN (sizeof main_defs / sizeof main_defs[0])

typedef struct {
    bn_vocab *v;
    bn_tokenizer *tk;
} fixture;

static fixture open_main(int space_prefix)
{
    fixture f;
    bn_error err;
    f.v = make_spm(main_defs, N_MAIN, space_prefix);
    f.tk = bn_tokenizer_new(f.v, &err);
    ck_assert_msg(f.tk != NULL, "%s", err.msg);
    return f;
}

static void close_fixture(fixture *f)
{
    bn_tokenizer_free(f->tk);
    bn_vocab_free(f->v);
}

static void expect_ids(const bn_tokenizer *tk, const char *text, size_t len, int special, const int32_t *want, size_t n_want)
{
    bn_tokens t = {0};
    bn_error err;
    int rc = special ? bn_tokenize_special_append(tk, text, len, &t, &err) : bn_tokenize_append(tk, text, len, &t, &err);
    ck_assert_msg(rc == 0, "%s", err.msg);
    int same = t.n == n_want && (n_want == 0 || memcmp(t.ids, want, n_want * sizeof *want) == 0);
    if (!same) {
        fprintf(stderr, "encode '%.*s': got", (int)len, text);
        for (size_t i = 0; i < t.n; i++) fprintf(stderr, " %d", t.ids[i]);
        fprintf(stderr, ", want");
        for (size_t i = 0; i < n_want; i++) fprintf(stderr, " %d", want[i]);
        fprintf(stderr, "\n");
    }
    ck_assert(same);
    bn_tokens_free(&t);
}
#define EXPECT(tk, text, special, ...)                                                   \
    do {                                                                                 \
        const int32_t want_[] = {__VA_ARGS__};                                           \
        expect_ids(tk, text, sizeof(text) - 1, special, want_, sizeof want_ / sizeof *want_); \
    } while (0)

static void assert_round_trip(const bn_tokenizer *tk, const char *s, size_t len, int special)
{
    bn_error err = {{0}};
    bn_tokens t = {0};
    int rc = special ? bn_tokenize_special_append(tk, s, len, &t, &err) : bn_tokenize_append(tk, s, len, &t, &err);
    ck_assert_msg(rc == 0, "%s", err.msg);
    char *back = NULL;
    size_t back_len = 0;
    ck_assert_msg(bn_detokenize(tk, t.ids, t.n, 0, &back, &back_len, &err) == 0, "%s", err.msg);
    ck_assert_msg(back_len == len && memcmp(back, s, len) == 0, "round trip of %zu bytes gave %zu bytes", len, back_len);
    free(back);
    bn_tokens_free(&t);
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* ---- SPM encoding, by hand ---- */

START_TEST(spm_highest_score_first)
{
    fixture f = open_main(0);
    /* pairs ab -1, bc -2, cd -0.5: cd first, then ab ("bcd" is no piece) */
    EXPECT(f.tk, "abcd", 0, T_AB, T_CD);
    /* "abc": ab (-1) beats bc (-2); "abc" is no piece, so [ab, c] */
    EXPECT(f.tk, "abc", 0, T_AB, T_C);
    /* "bcd": cd (-0.5) beats bc (-2) */
    EXPECT(f.tk, "bcd", 0, T_B, T_CD);
    close_fixture(&f);
}
END_TEST

START_TEST(spm_leftmost_on_ties)
{
    fixture f = open_main(0);
    /* (0,1) and (1,2) are both "xx" at -1: the leftmost merges; "xxx" is no piece */
    EXPECT(f.tk, "xxx", 0, T_XX, T_X);
    /* then (2,3) is still a pair: [xx, xx] */
    EXPECT(f.tk, "xxxx", 0, T_XX, T_XX);
    EXPECT(f.tk, "xxxxx", 0, T_XX, T_XX, T_X);
    close_fixture(&f);
}
END_TEST

START_TEST(spm_byte_fallback)
{
    fixture f = open_main(0);
    /* é (C3 A9) and \n are no pieces: their bytes */
    EXPECT(f.tk, "a\xc3\xa9\n", 0, T_A, BYTE(0xc3), BYTE(0xa9), BYTE('\n'));
    /* invalid UTF-8 is one raw symbol per byte */
    EXPECT(f.tk, "\xff" "a\x80", 0, BYTE(0xff), T_A, BYTE(0x80));
    /* a literal U+2581 is byte-encoded, so it does not come back as a space */
    EXPECT(f.tk, SP "a", 0, BYTE(0xe2), BYTE(0x96), BYTE(0x81), T_A);
    EXPECT(f.tk, "", 0);
    close_fixture(&f);
}
END_TEST

START_TEST(spm_space_prefix)
{
    fixture f = open_main(1);
    /* " a b" -> U+2581 a U+2581 b: "\u2581a" (-3) merges; "a\u2581" and "\u2581b" are no pieces */
    EXPECT(f.tk, "a b", 0, T_SPA, T_SP, T_B);
    /* "  a" -> three U+2581 then a: the pairs (0,1) and (1,2) are "\u2581\u2581" (-4), (2,3) is
     * "\u2581a" (-3): \u2581a first, then the leftmost \u2581\u2581 */
    EXPECT(f.tk, "  a", 0, T_SPSP, T_SPA);
    /* space_prefix off: nothing prepended */
    fixture g = open_main(0);
    EXPECT(g.tk, "a b", 0, T_A, T_SP, T_B);
    close_fixture(&g);
    close_fixture(&f);
}
END_TEST

/* USER_DEFINED (</line>, <pad>) are matched in any text, as llama.cpp and HF do; each raw
 * fragment, the one after a special too, gets the space prefix. CONTROL strings are text unless
 * the _special entry point is used. */
START_TEST(spm_specials)
{
    fixture f = open_main(1);
    EXPECT(f.tk, "a</line>b", 0, T_SPA, T_LINE, T_SP, T_B);
    EXPECT(f.tk, "</line><pad>", 0, T_LINE, T_PAD);
    EXPECT(f.tk, "<s>", 0, T_SP, BYTE('<'), BYTE('s'), BYTE('>'));
    EXPECT(f.tk, "<s>a</s>", 1, 1, T_SPA, 2);
    EXPECT(f.tk, "<unk>", 1, 0);
    /* a special never comes out of merges: "<s>" typed by a user stays bytes even if pieces
     * could spell it */
    static const tok_def defs[] = {{"<", BN_TOK_NORMAL, -1}, {"s", BN_TOK_NORMAL, -1}, {">", BN_TOK_NORMAL, -1},
                                   {"<s", BN_TOK_NORMAL, -1}};
    bn_vocab *v = make_spm(defs, 4, 0);
    bn_error err;
    bn_tokenizer *tk = bn_tokenizer_new(v, &err);
    ck_assert_msg(tk != NULL, "%s", err.msg);
    EXPECT(tk, "<s>", 0, 262, 261);   /* [<s, >], never the control <s> (1) */
    bn_tokenizer_free(tk);
    bn_vocab_free(v);
    close_fixture(&f);
}
END_TEST

START_TEST(spm_decode)
{
    fixture f = open_main(1);
    bn_error err;
    char *text;
    size_t len;
    /* the prefix space is dropped at the start and after each special, nowhere else */
    const int32_t ids[] = {1, T_SPA, T_SP, T_B, T_LINE, T_SP, T_A, BYTE(0xc3), BYTE(0xa9), 2};
    ck_assert(bn_detokenize(f.tk, ids, 10, 0, &text, &len, &err) == 0);
    ck_assert_str_eq(text, "<s>a b</line>a\xc3\xa9</s>");
    free(text);
    ck_assert(bn_detokenize(f.tk, ids, 10, BN_DECODE_SKIP_CONTROL, &text, &len, &err) == 0);
    ck_assert_str_eq(text, "a b</line>a\xc3\xa9");
    free(text);
    size_t bl;
    const char *b = bn_token_bytes(f.tk, T_SPSP, &bl);
    ck_assert_uint_eq(bl, 2);
    ck_assert(memcmp(b, "  ", 2) == 0);
    b = bn_token_bytes(f.tk, BYTE(0x41), &bl);
    ck_assert(bl == 1 && b[0] == 'A');
    /* streams are continuations: nothing dropped; byte tokens are held until complete */
    bn_stream_decoder *sd = bn_stream_decoder_new(f.tk, BN_DECODE_SKIP_CONTROL);
    const int32_t gen[] = {T_SPA, BYTE(0xc3), BYTE(0xa9)};
    const char *want[] = {" a", "", "\xc3\xa9"};
    for (int i = 0; i < 3; i++) {
        ck_assert(bn_stream_decoder_feed(sd, gen[i], &b, &bl, &err) == 0);
        ck_assert_uint_eq(bl, strlen(want[i]));
        ck_assert(memcmp(b, want[i], bl) == 0);
    }
    bn_stream_decoder_free(sd);
    ck_assert(bn_token_is_eog(f.tk, 2));
    ck_assert(!bn_token_is_eog(f.tk, 1));
    close_fixture(&f);
}
END_TEST

START_TEST(spm_round_trips)
{
    static const char pool[][8] = {" ", "  ", "a", "b", "c", "x", SP, "</line>", "<pad>", "<s>", "\n", "\xc3\xa9", "\xff", "\xe2\x96"};
    for (int sp = 0; sp < 2; sp++) {
        fixture f = open_main(sp);
        char buf[512];
        for (int iter = 0; iter < 300; iter++) {
            size_t len = 0, parts = rnd() % 40;
            for (size_t k = 0; k < parts; k++) {
                if (rnd() % 4 == 0) {
                    buf[len++] = (char)(rnd() & 0xff);   /* any byte */
                } else {
                    const char *p = pool[rnd() % (sizeof pool / sizeof pool[0])];
                    memcpy(buf + len, p, strlen(p));
                    len += strlen(p);
                }
            }
            assert_round_trip(f.tk, buf, len, 0);
            assert_round_trip(f.tk, buf, len, 1);
        }
        close_fixture(&f);
    }
}
END_TEST

/* A long input exercises the heap (O(n log n)); checks the result, not the time. */
START_TEST(spm_long_input)
{
    bn_error err;
    bn_vocab *v = bn_vocab_builtin_kind(BN_VOCAB_SPM, 4096, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    bn_tokenizer *tk = bn_tokenizer_new(v, &err);
    ck_assert_msg(tk != NULL, "%s", err.msg);
    size_t len = 1 << 18;
    char *s = malloc(len);
    static const char words[] = "the model of their people would have been more like this ";
    for (size_t i = 0; i < len; i++) s[i] = words[i % (sizeof words - 1)];
    bn_tokens t = {0};
    ck_assert(bn_tokenize_append(tk, s, len, &t, &err) == 0);
    ck_assert_uint_lt(t.n, len / 3);   /* the words merged into pieces */
    bn_tokens_free(&t);
    assert_round_trip(tk, s, len, 0);
    free(s);
    bn_tokenizer_free(tk);
    bn_vocab_free(v);
}
END_TEST

START_TEST(spm_vocab_errors)
{
    bn_error err;
    bn_vocab *v = make_spm(main_defs, N_MAIN, 1);
    free(v->scores);
    v->scores = NULL;
    ck_assert(bn_vocab_validate(v, &err) != 0);
    ck_assert_msg(strstr(err.msg, "scores") != NULL, "%s", err.msg);
    ck_assert_ptr_null(bn_tokenizer_new(v, &err));
    bn_vocab_scores_alloc(v);
    v->type[3 + 0x41] = BN_TOK_NORMAL;   /* <0x41> no longer a byte token */
    ck_assert_ptr_null(bn_tokenizer_new(v, &err));
    ck_assert_msg(strstr(err.msg, "<0x41>") != NULL, "%s", err.msg);
    v->type[3 + 0x41] = BN_TOK_BYTE;
    v->scores[T_AB] = 0.0f / 0.0f;
    ck_assert(bn_vocab_validate(v, &err) != 0);
    ck_assert_msg(strstr(err.msg, "NaN") != NULL, "%s", err.msg);
    v->scores[T_AB] = -1;
    bn_vocab *c = bn_vocab_clone(v);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(c->model, BN_TOKM_SPM);
    ck_assert_int_eq(c->space_prefix, 1);
    ck_assert(c->scores != v->scores && memcmp(c->scores, v->scores, v->n_tokens * sizeof(float)) == 0);
    bn_vocab_free(c);
    bn_vocab_free(v);
}
END_TEST

/* ---- tokenizer.model ---- */

static void assert_same_vocab(const bn_vocab *a, const bn_vocab *b)
{
    ck_assert_uint_eq(a->n_tokens, b->n_tokens);
    ck_assert(memcmp(a->tok_off, b->tok_off, (a->n_tokens + 1) * sizeof *a->tok_off) == 0);
    ck_assert(memcmp(a->text, b->text, a->tok_off[a->n_tokens]) == 0);
    ck_assert(memcmp(a->type, b->type, a->n_tokens) == 0);
    ck_assert_uint_eq(a->model, b->model);
    ck_assert_uint_eq(a->space_prefix, b->space_prefix);
    ck_assert(!a->scores == !b->scores);
    if (a->scores) ck_assert(memcmp(a->scores, b->scores, a->n_tokens * sizeof *a->scores) == 0);
    ck_assert_int_eq(a->bos, b->bos);
    ck_assert_int_eq(a->eos, b->eos);
    ck_assert_int_eq(a->pad, b->pad);
    ck_assert_uint_eq(a->chat, b->chat);
    ck_assert_uint_eq(a->n_merges, b->n_merges);
}

START_TEST(spm_model_round_trip)
{
    bn_error err;
    bn_vocab *v = bn_vocab_builtin_kind(BN_VOCAB_SPM, 1000, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    uint8_t *buf;
    size_t len;
    ck_assert_msg(bn_spm_model_write(v, &buf, &len, &err) == 0, "%s", err.msg);
    bn_vocab *back = NULL;
    ck_assert_msg(bn_spm_model_parse(buf, len, "tokenizer.model", &back, &err) == 0, "%s", err.msg);
    assert_same_vocab(v, back);
    bn_vocab_free(back);
    /* every truncation is an error or a smaller valid model, never a crash (ASan / valgrind) */
    for (size_t cut = 0; cut < len; cut += 1 + cut / 8) {
        back = NULL;
        if (bn_spm_model_parse(buf, cut, "t", &back, &err) == 0) bn_vocab_free(back);
        else ck_assert(err.msg[0] != 0);
    }
    free(buf);

    /* 1bitLLM's form: tokenizer.model without the added tokens, plus added_tokens.json */
    char *added;
    size_t added_len;
    ck_assert(bn_spm_model_write_hf(v, &buf, &len, &added, &added_len, &err) == 0);
    ck_assert_ptr_nonnull(added);
    ck_assert_msg(strstr(added, "\"<pad>\": 998") && strstr(added, "\"</line>\": 999"), "%s", added);
    char mp[256], ap[256];
    const char *tmp = getenv("BN_TEST_TMPDIR");
    snprintf(mp, sizeof mp, "%s/spm.%d.model", tmp && *tmp ? tmp : "/tmp", (int)getpid());
    snprintf(ap, sizeof ap, "%s/spm.%d.added.json", tmp && *tmp ? tmp : "/tmp", (int)getpid());
    FILE *f = fopen(mp, "wb");
    ck_assert(f && fwrite(buf, 1, len, f) == len && fclose(f) == 0);
    f = fopen(ap, "wb");
    ck_assert(f && fwrite(added, 1, added_len, f) == added_len && fclose(f) == 0);
    ck_assert_msg(bn_spm_model_load(mp, ap, &back, &err) == 0, "%s", err.msg);
    assert_same_vocab(v, back);
    bn_vocab_free(back);
    /* an added_tokens.json that does not exist is fine: the 998 pieces alone */
    char missing[300];
    snprintf(missing, sizeof missing, "%s.none", ap);
    ck_assert_msg(bn_spm_model_load(mp, missing, &back, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(back->n_tokens, 998);
    bn_vocab_free(back);
    /* ids with a gap, or naming a different piece, are errors */
    static const char *bad[][2] = {{"{\"<pad>\": 999}", "without gaps"}, {"{\"<pad>\": 998, \"zq9@\": 1000, \"<s>\": 1}", "no token has id 999"}, {"{\"<pad>\": 5}", "which is the piece"},
                                   {"{\"<s>\": 998}", "already piece 1"}, {"[1]", "not an object"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        f = fopen(ap, "wb");
        ck_assert(f && fputs(bad[i][0], f) >= 0 && fclose(f) == 0);
        back = NULL;
        ck_assert(bn_spm_model_load(mp, ap, &back, &err) != 0);
        ck_assert_ptr_null(back);
        ck_assert_msg(strstr(err.msg, "added_tokens.json") && strstr(err.msg, bad[i][1]), "%s", err.msg);
    }
    unlink(mp);
    unlink(ap);
    free(buf);
    free(added);
    bn_vocab_free(v);
}
END_TEST

/* A tiny protobuf writer for hand-made malformed files. */
typedef struct {
    uint8_t b[4096];
    size_t n;
} pbuf;
static void pv(pbuf *p, uint64_t v)
{
    do {
        p->b[p->n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
}
static void pbytes(pbuf *p, uint32_t field, const void *d, size_t n)
{
    pv(p, (uint64_t)field << 3 | 2);
    pv(p, n);
    memcpy(p->b + p->n, d, n);
    p->n += n;
}
static void pint(pbuf *p, uint32_t field, int64_t v)
{
    pv(p, (uint64_t)field << 3);
    pv(p, (uint64_t)v);
}
static void ppiece(pbuf *p, const char *s, int type)
{
    pbuf q = {.n = 0};
    pbytes(&q, 1, s, strlen(s));
    if (type) pint(&q, 3, type);
    pbytes(p, 1, q.b, q.n);
}
/* A valid minimal model: the three specials, 256 bytes, "a", trainer (BPE, byte_fallback). */
static void minimal(pbuf *p, int model_type, int byte_fallback, int64_t bos)
{
    p->n = 0;
    ppiece(p, "<unk>", 2);
    ppiece(p, "<s>", 3);
    ppiece(p, "</s>", 3);
    char s[8];
    for (int b = 0; b < 256; b++) {
        snprintf(s, sizeof s, "<0x%02X>", b);
        ppiece(p, s, 6);
    }
    ppiece(p, "a", 0);
    pbuf t = {.n = 0};
    pint(&t, 3, model_type);
    pint(&t, 35, byte_fallback);
    pint(&t, 41, bos);
    pint(&t, 43, -1);
    pbytes(p, 2, t.b, t.n);
}

static void expect_parse_error(const pbuf *p, const char *needle)
{
    bn_vocab *v = NULL;
    bn_error err = {{0}};
    ck_assert_int_eq(bn_spm_model_parse(p->b, p->n, "tokenizer.model", &v, &err), -1);
    ck_assert_ptr_null(v);
    ck_assert_msg(strstr(err.msg, "tokenizer.model") && strstr(err.msg, needle), "error '%s' lacks '%s'", err.msg, needle);
}

START_TEST(spm_model_errors)
{
    pbuf p;
    bn_vocab *v = NULL;
    bn_error err;
    minimal(&p, 2, 1, 1);
    ck_assert_msg(bn_spm_model_parse(p.b, p.n, "tokenizer.model", &v, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(v->n_tokens, 260);
    ck_assert_int_eq(v->type[259], BN_TOK_NORMAL);   /* absent type = NORMAL */
    ck_assert_int_eq(v->type[0], BN_TOK_UNKNOWN);
    ck_assert_int_eq(v->pad, -1);                    /* a negative int32 as a 10-byte varint */
    ck_assert_int_eq(v->space_prefix, 1);            /* add_dummy_prefix defaults to true */
    bn_vocab_free(v);
    minimal(&p, 1, 1, 1);
    expect_parse_error(&p, "UNIGRAM");
    minimal(&p, 2, 0, 1);
    expect_parse_error(&p, "byte_fallback");
    minimal(&p, 2, 1, 300);
    expect_parse_error(&p, "bos_id 300");
    p.n = 0;
    expect_parse_error(&p, "no pieces");
    minimal(&p, 2, 1, 1);
    p.b[p.n++] = 0x0a;   /* pieces, length 100, nothing after */
    p.b[p.n++] = 100;
    expect_parse_error(&p, "runs past the end");
    minimal(&p, 2, 1, 1);
    p.b[p.n++] = 0x08;   /* pieces as a varint */
    p.b[p.n++] = 1;
    expect_parse_error(&p, "wire type 0, expected 2");
    minimal(&p, 2, 1, 1);
    p.b[p.n++] = 0x18;   /* field 3, varint cut short */
    p.b[p.n++] = 0x80;
    expect_parse_error(&p, "truncated varint");
    minimal(&p, 2, 1, 1);
    p.b[p.n++] = 0x0b;   /* wire type 3 (group) */
    expect_parse_error(&p, "wire type 3");
    minimal(&p, 2, 1, 1);
    ppiece(&p, "b", 9);
    expect_parse_error(&p, "unknown type 9");
    minimal(&p, 2, 1, 1);
    ppiece(&p, "a", 0);
    expect_parse_error(&p, "same string");
    minimal(&p, 2, 1, 1);
    ppiece(&p, "", 0);
    expect_parse_error(&p, "no text");
    /* unknown fields of every wire type are skipped */
    minimal(&p, 2, 1, 1);
    pint(&p, 9, 12345);
    pbytes(&p, 10, "xyz", 3);
    p.b[p.n++] = (11 << 3) | 5;
    memset(p.b + p.n, 0, 4), p.n += 4;
    p.b[p.n++] = (12 << 3) | 1;
    memset(p.b + p.n, 0, 8), p.n += 8;
    pbuf norm = {.n = 0};
    pint(&norm, 3, 0);
    pbytes(&p, 3, norm.b, norm.n);
    v = NULL;
    ck_assert_msg(bn_spm_model_parse(p.b, p.n, "tokenizer.model", &v, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(v->space_prefix, 0);
    bn_vocab_free(v);
    ck_assert(bn_spm_model_load("/nonexistent/tokenizer.model", NULL, &v, &err) != 0);
    ck_assert_ptr_null(v);
}
END_TEST

/* No SentencePiece data is shipped in ../shared/fixtures (only Llama-3's): a real
 * tokenizer.model would be compared here. */
START_TEST(spm_fixture)
{
    const char *dir = getenv("BN_FIXTURES_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer/tokenizer.model", dir && *dir ? dir : "../shared/fixtures");
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "SKIP: %s: no SentencePiece fixture (%s)\n", __func__, path);
        return;
    }
    bn_vocab *v = NULL;
    bn_error err;
    ck_assert_msg(bn_spm_model_load(path, NULL, &v, &err) == 0, "%s", err.msg);
    bn_tokenizer *tk = bn_tokenizer_new(v, &err);
    ck_assert_msg(tk != NULL, "%s", err.msg);
    assert_round_trip(tk, "Hello world, 123 \xf0\x9f\x98\x80", 21, 0);
    bn_tokenizer_free(tk);
    bn_vocab_free(v);
}
END_TEST

/* ---- tokenizer.json of the SentencePiece kind ---- */

#define SPM_VOCAB_JSON                                                                               \
    "\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"unk_token\":\"<unk>\",\"vocab\":{\"<unk>\":0,\"<s>\":1," \
    "\"</s>\":2,\"<0x0A>\":3,\"\\u2581\":4,\"a\":5,\"b\":6,\"\\u2581a\":7,\"ab\":8,\"\\u2581ab\":9}," \
    "\"merges\":[\"a b\",\"\\u2581 a\",\"\\u2581 ab\",\"\\u2581a b\"]},"                            \
    "\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},{\"id\":1,\"content\":\"<s>\",\"special\":true}," \
    "{\"id\":2,\"content\":\"</s>\",\"special\":true}]"

START_TEST(spm_tokenizer_json)
{
    static const char *forms[] = {
        "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"},"
        "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]},\"pre_tokenizer\":null," SPM_VOCAB_JSON "}",
        "{\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"first\","
        "\"split\":false}," SPM_VOCAB_JSON "}",
    };
    for (int k = 0; k < 2; k++) {
        bn_vocab *v = NULL;
        bn_error err;
        ck_assert_msg(bn_vocab_load_hf_mem(forms[k], strlen(forms[k]), NULL, 0, "tokenizer.json", &v, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(v->model, BN_TOKM_SPM);
        ck_assert_int_eq(v->space_prefix, 1);
        ck_assert_uint_eq(v->n_merges, 0);
        ck_assert_int_eq(v->type[0], BN_TOK_UNKNOWN);
        ck_assert_int_eq(v->type[1], BN_TOK_CONTROL);
        ck_assert_int_eq(v->type[3], BN_TOK_BYTE);
        ck_assert_int_eq(v->bos, 1);
        ck_assert_int_eq(v->eos, 2);
        /* scores: -rank of the producing merge; others below all merges */
        ck_assert(v->scores[8] == 0.0f && v->scores[7] == -1.0f && v->scores[9] == -2.0f);
        ck_assert(v->scores[5] == -(4.0f + 5));
        bn_vocab_free(v);
    }
    /* a vocabulary with <0x0A> only cannot build a tokenizer: all 256 byte tokens are needed */
    bn_vocab *v = NULL;
    bn_error err;
    ck_assert(bn_vocab_load_hf_mem(forms[1], strlen(forms[1]), NULL, 0, "tokenizer.json", &v, &err) == 0);
    ck_assert_ptr_null(bn_tokenizer_new(v, &err));
    ck_assert_msg(strstr(err.msg, "<0x00>"), "%s", err.msg);
    bn_vocab_free(v);
    static const char *bad[][2] = {
        {"{\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"_\"}," SPM_VOCAB_JSON "}", "replacement"},
        {"{\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"split\":true}," SPM_VOCAB_JSON "}", "split"},
        {"{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFKC\"}]}," SPM_VOCAB_JSON "}", "normalizers[0]"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = NULL;
        ck_assert(bn_vocab_load_hf_mem(bad[i][0], strlen(bad[i][0]), NULL, 0, "tokenizer.json", &v, &err) != 0);
        ck_assert_ptr_null(v);
        ck_assert_msg(strstr(err.msg, "tokenizer.json") && strstr(err.msg, bad[i][1]), "%s", err.msg);
    }
}
END_TEST

START_TEST(falcon3_tokenizer_json)
{
    static const char json[] =
        "{\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":["
        "{\"type\":\"Punctuation\",\"behavior\":\"Contiguous\"},"
        "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true},"
        "{\"type\":\"Digits\",\"individual_digits\":true}]},"
        "\"added_tokens\":[{\"id\":3,\"content\":\"<|endoftext|>\",\"special\":true}],"
        "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}}";
    bn_vocab *v = NULL;
    bn_error err;
    ck_assert_msg(bn_vocab_load_hf_mem(json, strlen(json), NULL, 0, "tokenizer.json", &v, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(v->pre, BN_PRE_FALCON3);
    ck_assert_int_eq(v->model, BN_TOKM_BPE);
    ck_assert_int_eq(v->eos, 3);   /* Falcon's <|endoftext|> */
    bn_vocab_free(v);
}
END_TEST

/* ---- Falcon3's pre-tokenizer ---- */

typedef struct {
    char pieces[64][32];
    int n;
} piece_list;

static int collect(void *ctx, const char *p, size_t len)
{
    piece_list *l = ctx;
    ck_assert(l->n < 64 && len < 32);
    memcpy(l->pieces[l->n], p, len);
    l->pieces[l->n++][len] = 0;
    return 0;
}

static void expect_split(const bn_pretok *pt, const char *text, const char *const *want, int n_want)
{
    piece_list l = {.n = 0};
    bn_error err;
    ck_assert_msg(bn_pretok_split(pt, text, strlen(text), collect, &l, &err) == 0, "%s", err.msg);
    int same = l.n == n_want;
    for (int i = 0; same && i < n_want; i++) same = !strcmp(l.pieces[i], want[i]);
    if (!same) {
        fprintf(stderr, "split '%s':", text);
        for (int i = 0; i < l.n; i++) fprintf(stderr, " [%s]", l.pieces[i]);
        fprintf(stderr, "\n");
    }
    ck_assert(same);
}
#define SPLIT(pt, text, ...)                                                   \
    do {                                                                       \
        const char *const want_[] = {__VA_ARGS__};                             \
        expect_split(pt, text, want_, (int)(sizeof want_ / sizeof *want_));   \
    } while (0)

START_TEST(falcon3_pretokenizer)
{
    bn_error err;
    bn_pretok *pt = bn_pretok_new(BN_PRE_FALCON3, &err);
    ck_assert_msg(pt != NULL, "%s", err.msg);
    /* 1: punctuation runs isolated; 2: GPT-2 split inside each piece */
    SPLIT(pt, "Hello, world!", "Hello", ",", " world", "!");
    SPLIT(pt, "a...b", "a", "...", "b");
    SPLIT(pt, "a+=b", "a", "+=", "b");            /* + = are in regex 1's symbol set */
    SPLIT(pt, "\xc2\xabhi\xc2\xbb", "\xc2\xab", "hi", "\xc2\xbb");   /* Unicode Pi / Pf */
    /* 3: digits one by one, the space before them stays alone */
    SPLIT(pt, "x 12345 y", "x", " ", "1", "2", "3", "4", "5", " y");
    SPLIT(pt, "$100", "$", "1", "0", "0");
    /* contractions: the apostrophe is punctuation, so regex 1 splits it off first */
    SPLIT(pt, "I'm don't", "I", "'", "m", " don", "'", "t");
    /* whitespace: \s+(?!\S) leaves the last space to the word */
    SPLIT(pt, "a  \n b", "a", "  \n", " b");
    SPLIT(pt, "ab12cd", "ab", "1", "2", "cd");
    bn_pretok_free(pt);
}
END_TEST

/* ---- chat and end of generation per family ---- */

START_TEST(falcon3_chat)
{
    bn_error err;
    bn_vocab *v = bn_vocab_builtin_kind(BN_VOCAB_FALCON3, 2048, &err);
    ck_assert_msg(v != NULL, "%s", err.msg);
    bn_tokenizer *tk = bn_tokenizer_new(v, &err);
    ck_assert_msg(tk != NULL, "%s", err.msg);
    const bn_chat_msg msgs[] = {{"system", "Be brief."}, {"user", "hi <|user|>"}};
    bn_tokens got = {0}, want = {0};
    ck_assert_msg(bn_chat_render(tk, BN_CHAT_FALCON3, msgs, 2, 1, &got, &err) == 0, "%s", err.msg);
    /* no BOS; markers are ids 12-14; the text between them is one raw segment */
    bn_tokens_push(&want, 12, &err);
    bn_tokenize_append(tk, "\nBe brief.\n", 11, &want, &err);
    bn_tokens_push(&want, 13, &err);
    bn_tokenize_append(tk, "\nhi <|user|>\n", 13, &want, &err);
    bn_tokens_push(&want, 14, &err);
    bn_tokenize_append(tk, "\n", 1, &want, &err);
    ck_assert_uint_eq(got.n, want.n);
    ck_assert(memcmp(got.ids, want.ids, got.n * sizeof *got.ids) == 0);
    char *text;
    size_t len;
    ck_assert(bn_detokenize(tk, got.ids, got.n, 0, &text, &len, &err) == 0);
    ck_assert_str_eq(text, "<|system|>\nBe brief.\n<|user|>\nhi <|user|>\n<|assistant|>\n");
    free(text);
    int n13 = 0;   /* the user's "<|user|>" stayed text: id 13 once */
    for (size_t i = 0; i < got.n; i++) n13 += got.ids[i] == 13;
    ck_assert_int_eq(n13, 1);
    ck_assert(bn_token_is_eog(tk, 11));
    ck_assert(!bn_token_is_eog(tk, 14));
    ck_assert_int_eq(bn_chat_kind_of_vocab(v), BN_CHAT_FALCON3);
    bn_tokens_free(&got);
    bn_tokens_free(&want);
    bn_tokenizer_free(tk);
    bn_vocab_free(v);
}
END_TEST

START_TEST(spm_chat_none)
{
    bn_error err;
    bn_vocab *v = bn_vocab_builtin_kind(BN_VOCAB_SPM, 1000, &err);
    bn_tokenizer *tk = bn_tokenizer_new(v, &err);
    ck_assert_msg(tk != NULL, "%s", err.msg);
    ck_assert_int_eq(bn_chat_kind_of_vocab(v), BN_CHAT_NONE);
    const bn_chat_msg msgs[] = {{"user", " the model "}};
    bn_tokens got = {0}, want = {0};
    ck_assert(bn_chat_render(tk, BN_CHAT_NONE, msgs, 1, 1, &got, &err) == 0);
    bn_tokens_push(&want, 1, &err);
    bn_tokenize_append(tk, "the model", 9, &want, &err);
    ck_assert_uint_eq(got.n, want.n);
    ck_assert(memcmp(got.ids, want.ids, got.n * sizeof *got.ids) == 0);
    ck_assert_int_eq(got.ids[0], 1);
    ck_assert(bn_token_is_eog(tk, 2));
    bn_tokens_free(&got);
    bn_tokens_free(&want);
    bn_tokenizer_free(tk);
    bn_vocab_free(v);
}
END_TEST

/* ---- built-in family vocabularies ---- */

START_TEST(builtin_kinds)
{
    static const struct {
        enum bn_vocab_kind kind;
        uint32_t n;
    } cases[] = {{BN_VOCAB_LLAMA3, 512}, {BN_VOCAB_SPM, 356}, {BN_VOCAB_SPM, 512}, {BN_VOCAB_SPM, 32002},
                 {BN_VOCAB_FALCON3, 271}, {BN_VOCAB_FALCON3, 4096}, {BN_VOCAB_FALCON3, 131072}};
    bn_error err;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bn_vocab *v = bn_vocab_builtin_kind(cases[i].kind, cases[i].n, &err);
        ck_assert_msg(v != NULL, "%s", err.msg);
        ck_assert_uint_eq(v->n_tokens, cases[i].n);
        bn_vocab *again = bn_vocab_builtin_kind(cases[i].kind, cases[i].n, &err);   /* a pure function */
        assert_same_vocab(v, again);
        bn_vocab_free(again);
        bn_tokenizer *tk = bn_tokenizer_new(v, &err);
        ck_assert_msg(tk != NULL, "kind %d n %u: %s", cases[i].kind, cases[i].n, err.msg);
        static const char text[] = "The model said: hello world, 123 \xf0\x9f\x98\x80!\r\n\n  x </line>";
        assert_round_trip(tk, text, sizeof text - 1, 0);
        size_t len;
        const char *b;
        switch (cases[i].kind) {
        case BN_VOCAB_SPM:
            ck_assert_int_eq(v->model, BN_TOKM_SPM);
            ck_assert(v->bos == 1 && v->eos == 2 && v->chat == BN_CHAT_NONE && v->space_prefix == 1);
            b = bn_vocab_token(v, cases[i].n - 1, &len);
            ck_assert(len == 7 && !memcmp(b, "</line>", 7) && v->type[cases[i].n - 1] == BN_TOK_USER_DEFINED);
            b = bn_vocab_token(v, cases[i].n - 2, &len);
            ck_assert(len == 5 && !memcmp(b, "<pad>", 5) && v->pad == (int32_t)cases[i].n - 2);
            b = bn_vocab_token(v, 3 + 0x41, &len);
            ck_assert(len == 6 && !memcmp(b, "<0x41>", 6) && v->type[3 + 0x41] == BN_TOK_BYTE);
            break;
        case BN_VOCAB_FALCON3:
            b = bn_vocab_token(v, 11, &len);
            ck_assert(len == 13 && !memcmp(b, "<|endoftext|>", 13));
            ck_assert(v->eos == 11 && v->bos == -1 && v->pre == BN_PRE_FALCON3 && v->chat == BN_CHAT_FALCON3);
            ck_assert(bn_token_is_eog(tk, 11));
            break;
        default:
            ck_assert(bn_token_is_eog(tk, v->eos) && bn_token_is_eog(tk, v->eot));
        }
        bn_tokenizer_free(tk);
        bn_vocab_free(v);
    }
    ck_assert_ptr_null(bn_vocab_builtin_kind(BN_VOCAB_SPM, 355, &err));
    ck_assert_msg(strstr(err.msg, "SentencePiece"), "%s", err.msg);
    ck_assert_ptr_null(bn_vocab_builtin_kind(BN_VOCAB_FALCON3, 270, &err));
    ck_assert_ptr_null(bn_vocab_builtin_kind((enum bn_vocab_kind)9, 1000, &err));
}
END_TEST

/* With a words-only text, SPM pieces from the list are used (not bytes). */
START_TEST(builtin_spm_merges)
{
    bn_error err;
    bn_vocab *v = bn_vocab_builtin_kind(BN_VOCAB_SPM, 32002, &err);
    bn_tokenizer *tk = bn_tokenizer_new(v, &err);
    ck_assert_msg(tk != NULL, "%s", err.msg);
    int32_t *ids;
    size_t n;
    ck_assert(bn_tokenize(tk, "the model", 9, &ids, &n, &err) == 0);
    ck_assert_uint_eq(n, 2);
    size_t l;
    const char *b = bn_token_bytes(tk, ids[0], &l);
    ck_assert(l == 4 && !memcmp(b, " the", 4));
    b = bn_token_bytes(tk, ids[1], &l);
    ck_assert(l == 6 && !memcmp(b, " model", 6));
    free(ids);
    bn_tokenizer_free(tk);
    bn_vocab_free(v);
}
END_TEST

/* ---- the packed tokenizer section ---- */

static bn_vocab *section_round_trip(const bn_vocab *v)
{
    uint64_t size = bn_tok_section_size(v);
    uint8_t *buf = calloc(1, size);
    bn_tok_section_write(v, buf);
    bn_vocab *back = NULL;
    bn_error err;
    ck_assert_msg(bn_tok_section_read(buf, size, "m.bnpk", &back, &err) == 0, "%s", err.msg);
    free(buf);
    return back;
}

START_TEST(packed_section)
{
    bn_error err;
    bn_vocab *v = bn_vocab_builtin_kind(BN_VOCAB_SPM, 1001, &err);   /* odd: padding before the scores */
    bn_vocab *back = section_round_trip(v);
    assert_same_vocab(v, back);
    bn_vocab_free(back);
    uint64_t size = bn_tok_section_size(v);
    ck_assert_uint_eq(size % 4, 0);
    uint8_t *buf = calloc(1, size);
    bn_tok_section_write(v, buf);
    bn_tok_header h;
    memcpy(&h, buf, sizeof h);
    ck_assert_uint_eq(h.model_flags, BN_TOKM_SPM | BN_TOKF_SPACE_PREFIX);
    ck_assert_uint_eq(h.chat, BN_CHAT_NONE);
    float last;
    memcpy(&last, buf + size - 4, 4);
    ck_assert(last == v->scores[1000]);
    /* corruptions: each a clear error */
    static const struct {
        uint32_t flags;
        const char *needle;
    } bad[] = {{7, "unknown tokenizer model 7"}, {BN_TOKM_SPM | (1u << 9), "unknown model_flags"},
               {BN_TOKM_BPE | BN_TOKF_SPACE_PREFIX, "only for SentencePiece"}, {BN_TOKM_BPE | 0, "arrays need"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bn_tok_header c = h;
        c.model_flags = bad[i].flags;
        memcpy(buf, &c, sizeof c);
        back = NULL;
        ck_assert(bn_tok_section_read(buf, size, "m.bnpk", &back, &err) != 0);
        ck_assert_ptr_null(back);
        ck_assert_msg(strstr(err.msg, "m.bnpk") && strstr(err.msg, bad[i].needle), "%s", err.msg);
    }
    memcpy(buf, &h, sizeof h);
    buf[size - 4 * 1001 - 1] = 1;   /* the padding byte before the scores */
    ck_assert(bn_tok_section_read(buf, size, "m.bnpk", &back, &err) != 0);
    ck_assert_msg(strstr(err.msg, "padding"), "%s", err.msg);
    free(buf);
    bn_vocab_free(v);

    /* byte-level BPE writes model_flags 0, as a 1.1 section, and reads back the same */
    v = bn_vocab_builtin_kind(BN_VOCAB_FALCON3, 600, &err);
    back = section_round_trip(v);
    assert_same_vocab(v, back);
    ck_assert_uint_eq(back->pre, BN_PRE_FALCON3);
    bn_vocab_free(back);
    buf = calloc(1, bn_tok_section_size(v));
    bn_tok_section_write(v, buf);
    memcpy(&h, buf, sizeof h);
    ck_assert_uint_eq(h.model_flags, 0);
    free(buf);
    bn_vocab_free(v);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("spm");
    TCase *t = tcase_create("spm");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, spm_highest_score_first);
    tcase_add_test(t, spm_leftmost_on_ties);
    tcase_add_test(t, spm_byte_fallback);
    tcase_add_test(t, spm_space_prefix);
    tcase_add_test(t, spm_specials);
    tcase_add_test(t, spm_decode);
    tcase_add_test(t, spm_round_trips);
    tcase_add_test(t, spm_long_input);
    tcase_add_test(t, spm_vocab_errors);
    tcase_add_test(t, spm_model_round_trip);
    tcase_add_test(t, spm_model_errors);
    tcase_add_test(t, spm_fixture);
    tcase_add_test(t, spm_tokenizer_json);
    tcase_add_test(t, falcon3_tokenizer_json);
    tcase_add_test(t, falcon3_pretokenizer);
    tcase_add_test(t, falcon3_chat);
    tcase_add_test(t, spm_chat_none);
    tcase_add_test(t, builtin_kinds);
    tcase_add_test(t, builtin_spm_merges);
    tcase_add_test(t, packed_section);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
