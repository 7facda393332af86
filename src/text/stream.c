/* Streaming output: the UTF-8-safe stream decoder and the stop-string matcher.
 *
 * A byte-level token can end in the middle of a character (an emoji is often 2-4 tokens), so the
 * decoder holds back a trailing incomplete sequence until the token that completes it arrives.
 * Bytes that can no longer become a character are replaced by U+FFFD, one per "maximal subpart"
 * (Unicode 15, section 3.9, the practice browsers and Python's errors="replace" follow), so the
 * output is always valid UTF-8 and the same for the same tokens. */
#include "text/tokenizer.h"

#include <stdlib.h>
#include <string.h>

static const char replacement[3] = {(char)0xef, (char)0xbf, (char)0xbd};   /* U+FFFD */

static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap) return 0;
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < need) cap2 *= 2;
    char *b = realloc(*buf, cap2);
    if (!b) return -1;
    *buf = b;
    *cap = cap2;
    return 0;
}

enum scan { SCAN_VALID, SCAN_INVALID, SCAN_INCOMPLETE };

/* Classifies the sequence starting at s[0] (len >= 1). VALID / INVALID set *adv to the bytes
 * consumed (the character, or the maximal subpart to replace); INCOMPLETE means s[0..len) is a
 * proper prefix of some valid sequence. */
static enum scan utf8_scan(const uint8_t *s, size_t len, size_t *adv)
{
    uint8_t b = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xbf;   /* allowed range of the second byte */
    if (b < 0x80) { *adv = 1; return SCAN_VALID; }
    if (b >= 0xc2 && b <= 0xdf) need = 2;
    else if (b >= 0xe0 && b <= 0xef) { need = 3; if (b == 0xe0) lo = 0xa0; if (b == 0xed) hi = 0x9f; }
    else if (b >= 0xf0 && b <= 0xf4) { need = 4; if (b == 0xf0) lo = 0x90; if (b == 0xf4) hi = 0x8f; }
    else { *adv = 1; return SCAN_INVALID; }
    for (size_t i = 1; i < need; i++) {
        if (i >= len) return SCAN_INCOMPLETE;
        uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xbf;
        if (s[i] < l || s[i] > h) { *adv = i; return SCAN_INVALID; }
    }
    *adv = need;
    return SCAN_VALID;
}

/* ---- stream decoder ---- */

struct bn_stream_decoder {
    const bn_tokenizer *tk;
    unsigned flags;
    uint8_t held[4];     /* an incomplete sequence waiting for its next bytes (at most 3) */
    size_t n_held;
    char *in, *out;      /* scratch: held + new bytes; the text returned */
    size_t in_cap, out_cap;
};

bn_stream_decoder *bn_stream_decoder_new(const bn_tokenizer *tk, unsigned flags)
{
    bn_stream_decoder *sd = calloc(1, sizeof *sd);
    if (sd) {
        sd->tk = tk;
        sd->flags = flags;
    }
    return sd;
}

void bn_stream_decoder_free(bn_stream_decoder *sd)
{
    if (!sd) return;
    free(sd->in);
    free(sd->out);
    free(sd);
}

int bn_stream_decoder_feed(bn_stream_decoder *sd, int32_t id, const char **text, size_t *len,
                           bn_error *err)
{
    *text = "";
    *len = 0;
    size_t tl;
    const char *tb = bn_token_bytes(sd->tk, id, &tl);
    if (!tb) return bn_err(err, "token id %d is outside the vocabulary", id);
    if ((sd->flags & BN_DECODE_SKIP_CONTROL) && bn_token_is_control(sd->tk, id)) return 0;
    size_t n = sd->n_held + tl;
    /* Each input byte becomes at most 3 output bytes (an invalid byte -> U+FFFD). */
    if (grow(&sd->in, &sd->in_cap, n + 1) || grow(&sd->out, &sd->out_cap, 3 * n + 1))
        return bn_err(err, "out of memory in the stream decoder");
    memcpy(sd->in, sd->held, sd->n_held);
    memcpy(sd->in + sd->n_held, tb, tl);
    const uint8_t *s = (const uint8_t *)sd->in;
    size_t i = 0, o = 0, adv;
    sd->n_held = 0;
    while (i < n) {
        enum scan r = utf8_scan(s + i, n - i, &adv);
        if (r == SCAN_INCOMPLETE) {
            memcpy(sd->held, s + i, n - i);
            sd->n_held = n - i;
            break;
        }
        if (r == SCAN_VALID) memcpy(sd->out + o, s + i, adv), o += adv;
        else memcpy(sd->out + o, replacement, 3), o += 3;
        i += adv;
    }
    sd->out[o] = 0;
    *text = sd->out;
    *len = o;
    return 0;
}

void bn_stream_decoder_flush(bn_stream_decoder *sd, const char **text, size_t *len)
{
    /* What is held is one incomplete sequence: one maximal subpart, so one U+FFFD. */
    *text = sd->n_held ? "\xef\xbf\xbd" : "";
    *len = sd->n_held ? 3 : 0;
    sd->n_held = 0;
}

/* ---- stop strings ---- */

struct bn_stop_matcher {
    char *stops[BN_STOP_MAX];
    size_t stop_len[BN_STOP_MAX];
    size_t n;
    char *buf;           /* buf[emitted..len) is held back; buf[0..emitted) was returned last call */
    size_t len, emitted, cap;
    int matched;         /* index of the stop string that matched, or -1 */
};

bn_stop_matcher *bn_stop_matcher_new(const char *const *stops, size_t n, bn_error *err)
{
    if (n > BN_STOP_MAX) {
        bn_err(err, "%zu stop strings: at most %d are supported", n, BN_STOP_MAX);
        return NULL;
    }
    bn_stop_matcher *sm = calloc(1, sizeof *sm);
    if (!sm) {
        bn_err(err, "out of memory");
        return NULL;
    }
    sm->matched = -1;
    for (size_t i = 0; i < n; i++) {
        if (!stops[i] || !stops[i][0]) {
            bn_err(err, "stop string %zu is empty", i);
            bn_stop_matcher_free(sm);
            return NULL;
        }
        sm->stop_len[i] = strlen(stops[i]);
        if (!(sm->stops[i] = strdup(stops[i]))) {
            bn_err(err, "out of memory");
            bn_stop_matcher_free(sm);
            return NULL;
        }
        sm->n = i + 1;
    }
    return sm;
}

void bn_stop_matcher_free(bn_stop_matcher *sm)
{
    if (!sm) return;
    for (size_t i = 0; i < sm->n; i++) free(sm->stops[i]);
    free(sm->buf);
    free(sm);
}

/* Length of the longest suffix of buf[from..len) that is a proper prefix of some stop string:
 * the only text that a later feed could still turn into a match. */
static size_t held_suffix(const bn_stop_matcher *sm, size_t from)
{
    size_t avail = sm->len - from, best = 0;
    for (size_t k = 0; k < sm->n; k++) {
        size_t max = sm->stop_len[k] - 1 < avail ? sm->stop_len[k] - 1 : avail;
        for (size_t l = max; l > best; l--)
            if (memcmp(sm->buf + sm->len - l, sm->stops[k], l) == 0) {
                best = l;
                break;
            }
    }
    return best;
}

int bn_stop_matcher_feed(bn_stop_matcher *sm, const char *text, size_t len, const char **out,
                         size_t *out_len)
{
    *out = "";
    *out_len = 0;
    if (sm->matched >= 0) return sm->matched;
    /* Drop what the previous call returned, keeping the held-back tail, then append. */
    if (sm->emitted) memmove(sm->buf, sm->buf + sm->emitted, sm->len - sm->emitted);
    sm->len -= sm->emitted;
    sm->emitted = 0;
    if (grow(&sm->buf, &sm->cap, sm->len + len + 1)) return -2;
    if (len) memcpy(sm->buf + sm->len, text, len);
    sm->len += len;
    /* The held tail holds no complete match, so a match ends in the new text. Take the one that
     * ends first (it is complete soonest, as a token-by-token reader would see it), and the
     * longest of those. */
    size_t best_end = SIZE_MAX, best_start = 0;
    int best = -1;
    for (size_t k = 0; k < sm->n; k++) {
        size_t sl = sm->stop_len[k];
        for (size_t start = 0; start + sl <= sm->len && start + sl <= best_end; start++) {
            if (memcmp(sm->buf + start, sm->stops[k], sl) != 0) continue;
            if (start + sl < best_end || start < best_start) {
                best_end = start + sl;
                best_start = start;
                best = (int)k;
            }
            break;
        }
    }
    if (best >= 0) {
        sm->matched = best;
        *out = sm->buf;
        *out_len = best_start;
        sm->len = sm->emitted = 0;
        return best;
    }
    sm->emitted = sm->len - held_suffix(sm, 0);
    *out = sm->buf;
    *out_len = sm->emitted;
    return -1;
}

void bn_stop_matcher_flush(bn_stop_matcher *sm, const char **out, size_t *out_len)
{
    *out = "";
    *out_len = 0;
    if (sm->matched >= 0 || !sm->buf) return;
    *out = sm->buf + sm->emitted;
    *out_len = sm->len - sm->emitted;
    sm->emitted = sm->len;
}
