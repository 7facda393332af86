/* The pre-tokenizer: the regex split that runs before BPE (HF's Split pre-tokenizer with
 * behavior "Isolated": every match is a pre-token, and so is every gap between matches).
 *
 * Why PCRE2: the Llama-3 pattern uses \p{L}, \p{N}, a case-insensitive group and a negative
 * lookahead. PCRE2 (a Debian library, JIT-compiled) implements all of them with maintained
 * Unicode tables, and splits English prose far faster than the 10 MB/s encode target, so a
 * hand-written matcher with our own generated tables would only add code to get wrong.
 *
 * Where PCRE2 differs from the reference engine (Oniguruma, inside HF tokenizers):
 *  - \s: Oniguruma's is Unicode White_Space (U+0085 yes; U+180E, U+200B, U+FEFF, U+001C-001F
 *    no). PCRE2's \s in UCP mode is "Z category + HT/LF/VT/FF/CR", which misses U+0085. So the
 *    patterns below spell White_Space out as WS / NOT_WS instead of using \s and \S.
 *  - (?i:'s): Unicode case folding makes 's match 'ſ (U+017F) too, in both engines.
 *  - Unicode version: PCRE2 10.42 has Unicode 14 tables; the reference's Oniguruma is newer.
 *    unicode_extra.h lists the letters and numbers assigned since, added to \p{L} / \p{N}.
 *
 * Invalid UTF-8: HF only ever sees valid strings. We compile with PCRE2_MATCH_INVALID_UTF, under
 * which invalid bytes can never be part of a match; so each maximal run of them falls into a
 * gap between matches and becomes one pre-token of its own (BPE then encodes its bytes). The
 * result is deterministic and decodes back to the input byte for byte. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdlib.h>
#include <string.h>

#include "text/text_internal.h"
#include "text/unicode_extra.h"

/* Unicode White_Space, the set Oniguruma's \s matches. */
#define WS_CHARS "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define WS "[" WS_CHARS "]"
#define NOT_WS "[^" WS_CHARS "]"

/* Letters and numbers: PCRE2's classes plus what newer Unicode versions added (unicode_extra.h). */
#define L_CHARS "\\p{L}" BN_L_EXTRA
#define N_CHARS "\\p{N}" BN_N_EXTRA

/* tokenizer.json of Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *                            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static const char llama3_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    "|[^\\r\\n" L_CHARS N_CHARS "]?[" L_CHARS "]+"
    "|[" N_CHARS "]{1,3}"
    "| ?[^" WS_CHARS L_CHARS N_CHARS "]+[\\r\\n]*"
    "|" WS "*[\\r\\n]+"
    "|" WS "+(?!" NOT_WS ")"
    "|" WS "+";

/* GPT-2 (HF ByteLevel with use_regex): 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
 * ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d"
    "| ?[" L_CHARS "]+"
    "| ?[" N_CHARS "]+"
    "| ?[^" WS_CHARS L_CHARS N_CHARS "]+"
    "|" WS "+(?!" NOT_WS ")"
    "|" WS "+";

/* Falcon3 / Falcon-E (the fork's FALCON_3 list, bitnet-families.md s.3): three regexes applied
 * in sequence, each splitting every piece the previous one produced into its matches and the
 * gaps between them (llama.cpp's unicode_regex_split), so a later regex never sees across an
 * earlier boundary. 1: runs of punctuation and these symbols (HF's Punctuation pre-tokenizer);
 * 2: the GPT-2 split (the fork's list omits GPT-2's final "|\s+": the gap rule yields the same
 * pieces for valid UTF-8, see gpt2_pattern); 3: single ASCII digits. */
static const char falcon3_punct_pattern[] = "[\\p{P}\\$\\+<=>\\^~\\|`]+";
static const char digit_pattern[] = "[0-9]";

#define MAX_STAGES 3

struct bn_pretok {
    pcre2_code *re[MAX_STAGES];
    int n;
};

static pcre2_code *compile(const char *pat, bn_error *err)
{
    int code;
    PCRE2_SIZE at;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        bn_err(err, "pre-tokenizer regex does not compile at offset %zu: %s", (size_t)at, (char *)msg);
        return NULL;
    }
    /* JIT is an optimisation only: pcre2_match() falls back to the interpreter without it. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    return re;
}

bn_pretok *bn_pretok_new(enum bn_pre_kind kind, bn_error *err)
{
    const char *pats[MAX_STAGES] = {0};
    switch (kind) {
    case BN_PRE_LLAMA3: pats[0] = llama3_pattern; break;
    case BN_PRE_GPT2: pats[0] = gpt2_pattern; break;
    case BN_PRE_FALCON3: pats[0] = falcon3_punct_pattern; pats[1] = gpt2_pattern; pats[2] = digit_pattern; break;
    default:
        bn_err(err, "unknown pre-tokenizer kind %d", (int)kind);
        return NULL;
    }
    bn_pretok *p = calloc(1, sizeof *p);
    if (!p) {
        bn_err(err, "out of memory");
        return NULL;
    }
    for (int i = 0; i < MAX_STAGES && pats[i]; i++, p->n++)
        if (!(p->re[i] = compile(pats[i], err))) {
            bn_pretok_free(p);
            return NULL;
        }
    return p;
}

void bn_pretok_free(bn_pretok *p)
{
    if (!p) return;
    for (int i = 0; i < p->n; i++) pcre2_code_free(p->re[i]);
    free(p);
}

/* One stage: splits text[0..len) with regex `stage` into matches and gaps, and hands each piece
 * to the next stage (or to fn after the last). The subject is the piece alone, as in llama.cpp,
 * so lookaheads stop at the piece's end. */
static int split_stage(const bn_pretok *p, int stage, pcre2_match_data *md, const char *text, size_t len,
                       bn_pretok_fn fn, void *ctx, bn_error *err);

static int emit(const bn_pretok *p, int stage, pcre2_match_data *md, const char *s, size_t n, bn_pretok_fn fn,
                void *ctx, bn_error *err)
{
    return stage + 1 < p->n ? split_stage(p, stage + 1, md, s, n, fn, ctx, err) : fn(ctx, s, n);
}

static int split_stage(const bn_pretok *p, int stage, pcre2_match_data *md, const char *text, size_t len,
                       bn_pretok_fn fn, void *ctx, bn_error *err)
{
    const PCRE2_SPTR subject = (PCRE2_SPTR)text;
    size_t pos = 0;
    int rc = 0;
    while (pos < len) {
        int m = pcre2_match(p->re[stage], subject, len, pos, 0, md, NULL);
        size_t start = len, end = len;
        if (m >= 0) {
            const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            start = ov[0];
            end = ov[1];
        } else if (m != PCRE2_ERROR_NOMATCH) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(m, msg, sizeof msg);
            return bn_err(err, "pre-tokenizer regex failed at byte %zu: %s", pos, (char *)msg);
        }
        /* md is reused by the next stage: everything needed from it is in start/end now. */
        if (start > pos && (rc = emit(p, stage, md, text + pos, start - pos, fn, ctx, err)) != 0) break;  /* gap */
        if (end > start && (rc = emit(p, stage, md, text + start, end - start, fn, ctx, err)) != 0) break;
        if (end == start && start < len) {   /* cannot happen (no alternative matches empty); */
            if ((rc = emit(p, stage, md, text + start, 1, fn, ctx, err)) != 0) break;   /* kept so the pieces still tile */
            end = start + 1;
        }
        pos = end;
    }
    return rc;
}

int bn_pretok_split(const bn_pretok *p, const char *text, size_t len, bn_pretok_fn fn, void *ctx,
                    bn_error *err)
{
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return bn_err(err, "out of memory");
    int rc = split_stage(p, 0, md, text, len, fn, ctx, err);
    pcre2_match_data_free(md);
    return rc;
}
