/* Loading a Hugging Face tokenizer.json (and optionally tokenizer_config.json) into a bn_vocab.
 *
 * Only what bitnetd implements is accepted, in two kinds:
 *  - byte-level BPE: no normalizer, and a pre-tokenizer that is the Llama-3 Split regex, GPT-2's
 *    ByteLevel split, or Falcon3's Sequence [Punctuation (Contiguous), ByteLevel, Digits
 *    (individual_digits)];
 *  - SentencePiece BPE (Llama-2's tokenizer.json): model.byte_fallback true and U+2581 for space,
 *    either as the normalizer Sequence [Prepend "\u2581", Replace " " -> "\u2581"] (no
 *    pre-tokenizer) or as a Metaspace pre-tokenizer (replacement "\u2581", split false; its
 *    prepend_scheme "first"/"always" or add_prefix_space sets the space prefix). tokenizer.json
 *    has no piece scores: each piece gets score -rank of the first merge that produces it, and
 *    a piece no merge produces gets -(n_merges + id), below all of them, so the SentencePiece
 *    merge order follows the BPE ranks. The merges themselves are not kept.
 * Anything else is refused with an error naming the field rather than silently tokenizing
 * differently from the reference.
 * Every error names the file and the field, e.g.
 *   "tokenizer.json: model.vocab: token id 5 appears twice ('a' and 'b')". */
#include "text/tokenizer.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"

#define MAX_TOKENS (1u << 24)   /* bn_vocab_alloc's limit */

/* The Llama-3 pre-tokenizer regex, exactly as tokenizer.json spells it. */
static const char llama3_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* One token as the file gives it, before it has a place in the vocab. */
typedef struct {
    const char *s;     /* borrowed from the JSON tree */
    size_t len;
    uint8_t type;      /* enum bn_token_type; 0 = id not seen */
} tok_entry;

typedef struct {
    const char *name;  /* file name for messages */
    bn_error *err;
} ctx;

/* Formats "name: field: message". */
#define FAIL(c, ...) (bn_err((c)->err, __VA_ARGS__), bn_err_prefix((c)->err, "%s", (c)->name))

static int json_id(const json_t *j, int64_t *id)
{
    if (!json_is_integer(j)) return -1;
    *id = json_integer_value(j);
    return *id >= 0 && *id < (int64_t)MAX_TOKENS ? 0 : -1;
}

static int detect_pre(ctx *c, const json_t *pt, uint32_t *kind)
{
    if (!json_is_object(pt)) return FAIL(c, "pre_tokenizer: missing (a tokenizer without one is not supported)");
    const char *type = json_string_value(json_object_get(pt, "type"));
    if (!type) return FAIL(c, "pre_tokenizer.type: missing or not a string");
    if (!strcmp(type, "Sequence")) {
        const json_t *list = json_object_get(pt, "pretokenizers");
        if (!json_is_array(list)) return FAIL(c, "pre_tokenizer.pretokenizers: missing or not an array");
        int found_split = 0, found_gpt2 = 0, found_punct = 0, found_digits = 0;
        size_t i;
        const json_t *p;
        json_array_foreach(list, i, p) {
            const char *t = json_string_value(json_object_get(p, "type"));
            if (!t) return FAIL(c, "pre_tokenizer.pretokenizers[%zu].type: missing or not a string", i);
            if (!strcmp(t, "Split")) {
                const char *re = json_string_value(json_object_get(json_object_get(p, "pattern"), "Regex"));
                if (!re || strcmp(re, llama3_regex))
                    return FAIL(c, "pre_tokenizer.pretokenizers[%zu].pattern: only the Llama-3 regex is supported", i);
                found_split = 1;
            } else if (!strcmp(t, "ByteLevel")) {
                const json_t *ur = json_object_get(p, "use_regex");
                if (!ur || json_is_true(ur)) found_gpt2 = 1;
            } else if (!strcmp(t, "Punctuation")) {   /* Falcon3 */
                const char *b = json_string_value(json_object_get(p, "behavior"));
                if (!b || strcmp(b, "Contiguous"))
                    return FAIL(c, "pre_tokenizer.pretokenizers[%zu].behavior: only Punctuation 'Contiguous' is supported", i);
                found_punct = 1;
            } else if (!strcmp(t, "Digits")) {
                if (!json_is_true(json_object_get(p, "individual_digits")))
                    return FAIL(c, "pre_tokenizer.pretokenizers[%zu]: only Digits with individual_digits is supported", i);
                found_digits = 1;
            } else {
                return FAIL(c, "pre_tokenizer.pretokenizers[%zu].type: '%s' is not supported", i, t);
            }
        }
        if (found_punct || found_digits) {
            if (!found_punct || !found_digits || !found_gpt2 || found_split)
                return FAIL(c, "pre_tokenizer: Punctuation and Digits are supported only as Falcon3's "
                               "[Punctuation, ByteLevel, Digits] sequence");
            *kind = BN_PRE_FALCON3;
            return 0;
        }
        if (found_split == found_gpt2)
            return FAIL(c, "pre_tokenizer: expected either the Llama-3 Split regex or a ByteLevel split");
        *kind = found_split ? BN_PRE_LLAMA3 : BN_PRE_GPT2;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) {
        const json_t *ur = json_object_get(pt, "use_regex");
        if (ur && !json_is_true(ur)) return FAIL(c, "pre_tokenizer: ByteLevel without use_regex is not supported");
        *kind = BN_PRE_GPT2;
        return 0;
    }
    if (!strcmp(type, "Split")) {
        const char *re = json_string_value(json_object_get(json_object_get(pt, "pattern"), "Regex"));
        if (!re || strcmp(re, llama3_regex)) return FAIL(c, "pre_tokenizer.pattern: only the Llama-3 regex is supported");
        *kind = BN_PRE_LLAMA3;
        return 0;
    }
    return FAIL(c, "pre_tokenizer.type: '%s' is not supported", type);
}

/* Gathers model.vocab and added_tokens into entries[0..*n). */
static int collect_tokens(ctx *c, const json_t *model, const json_t *added, tok_entry **out, uint32_t *n_out)
{
    const json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab)) return FAIL(c, "model.vocab: missing or not an object");
    int64_t max_id = -1, id;
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)vocab, key, val) {
        if (json_id(val, &id)) return FAIL(c, "model.vocab: token '%.60s' has an id that is not an integer in [0, %u)", key, MAX_TOKENS);
        if (id > max_id) max_id = id;
    }
    if (added && !json_is_array(added)) return FAIL(c, "added_tokens: not an array");
    size_t i;
    const json_t *a;
    json_array_foreach(added, i, a) {
        if (!json_is_object(a)) return FAIL(c, "added_tokens[%zu]: not an object", i);
        if (json_id(json_object_get(a, "id"), &id)) return FAIL(c, "added_tokens[%zu].id: missing or not an integer in [0, %u)", i, MAX_TOKENS);
        if (!json_is_string(json_object_get(a, "content"))) return FAIL(c, "added_tokens[%zu].content: missing or not a string", i);
        if (id > max_id) max_id = id;
    }
    if (max_id < 0) return FAIL(c, "model.vocab: empty");
    /* Ids must be dense, so the largest id bounds the count: refuse a sparse table before
     * allocating for it (a hostile file could name id 16777215 alone). */
    if ((uint64_t)max_id >= json_object_size(vocab) + json_array_size(added))
        return FAIL(c, "model.vocab: token ids go up to %lld but there are only %zu tokens (ids must be 0..n-1 without gaps)",
                    (long long)max_id, json_object_size(vocab) + json_array_size(added));
    uint32_t n = (uint32_t)max_id + 1;
    tok_entry *e = calloc(n, sizeof *e);
    if (!e) return FAIL(c, "out of memory for %u tokens", n);
    json_object_foreach((json_t *)vocab, key, val) {
        json_id(val, &id);
        if (e[id].type) {
            FAIL(c, "model.vocab: token id %lld appears twice ('%.40s' and '%.40s')", (long long)id, e[id].s, key);
            free(e);
            return -1;
        }
        e[id] = (tok_entry){key, strlen(key), BN_TOK_NORMAL};
    }
    json_array_foreach(added, i, a) {
        json_id(json_object_get(a, "id"), &id);
        const json_t *content = json_object_get(a, "content");
        const char *s = json_string_value(content);
        size_t len = json_string_length(content);
        int special = json_is_true(json_object_get(a, "special"));
        if (e[id].type && (e[id].len != len || memcmp(e[id].s, s, len))) {
            FAIL(c, "added_tokens[%zu]: id %lld is '%.40s' here but '%.40s' elsewhere", i, (long long)id, s, e[id].s);
            free(e);
            return -1;
        }
        /* Special tokens become control tokens (template-only); other added tokens that are not
         * already ordinary tokens are user-defined (kept verbatim, not byte-level mapped). */
        if (special) e[id] = (tok_entry){s, len, BN_TOK_CONTROL};
        else if (!e[id].type) e[id] = (tok_entry){s, len, BN_TOK_USER_DEFINED};
    }
    for (uint32_t k = 0; k < n; k++)
        if (!e[k].type) {
            FAIL(c, "model.vocab: no token has id %u (ids must be 0..%u without gaps)", k, n - 1);
            free(e);
            return -1;
        }
    *out = e;
    *n_out = n;
    return 0;
}

static int fill_merges(ctx *c, bn_vocab *v, const json_t *merges)
{
    size_t i;
    const json_t *m;
    json_array_foreach(merges, i, m) {
        if (json_is_string(m)) {
            if (bn_vocab_set_merge(v, (uint32_t)i, json_string_value(m), json_string_length(m), c->err))
                return bn_err_prefix(c->err, "%s: model.merges[%zu]", c->name, i);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            for (int side = 0; side < 2; side++) {
                const json_t *s = json_array_get(m, side);
                int32_t id = bn_vocab_find(v, json_string_value(s), json_string_length(s));
                if (id < 0) return FAIL(c, "model.merges[%zu]: '%.60s' is not a token", i, json_string_value(s));
                v->merges[2 * i + side] = (uint32_t)id;
            }
        } else {
            return FAIL(c, "model.merges[%zu]: neither a \"left right\" string nor a [left, right] pair", i);
        }
    }
    return 0;
}

/* bos_token and friends in tokenizer_config.json are a string or {"content": string}. */
static const char *config_token(const json_t *cfg, const char *key)
{
    const json_t *t = json_object_get(cfg, key);
    if (json_is_object(t)) t = json_object_get(t, "content");
    return json_string_value(t);
}

static int apply_config(ctx *c, bn_vocab *v, const json_t *cfg)
{
    static const char *keys[3] = {"bos_token", "eos_token", "pad_token"};
    int32_t *slots[3] = {&v->bos, &v->eos, &v->pad};
    for (int k = 0; k < 3; k++) {
        const char *s = config_token(cfg, keys[k]);
        if (!s) continue;
        int32_t id = bn_vocab_find(v, s, strlen(s));
        if (id < 0) return FAIL(c, "%s: '%.60s' is not a token", keys[k], s);
        *slots[k] = id;
    }
    const json_t *tmpl = json_object_get(cfg, "chat_template");
    const char *text = json_string_value(tmpl);
    if (json_is_array(tmpl)) {   /* [{"name": ..., "template": ...}]: take "default", else the first */
        size_t i;
        const json_t *t;
        json_array_foreach(tmpl, i, t) {
            const char *name = json_string_value(json_object_get(t, "name"));
            if (!text || (name && !strcmp(name, "default"))) text = json_string_value(json_object_get(t, "template"));
        }
    } else if (tmpl && !json_is_null(tmpl) && !text) {
        return FAIL(c, "chat_template: neither a string nor a list of named templates");
    }
    if (text && !(v->chat_template = strdup(text))) return FAIL(c, "out of memory");
    if (text) v->chat = bn_chat_kind_of_vocab(v);
    return 0;
}

static int32_t find_text(const bn_vocab *v, const char *s) { return bn_vocab_find(v, s, strlen(s)); }

/* The first of names that is a token, or -1. */
static int32_t find_first(const bn_vocab *v, const char *const *names)
{
    int32_t id = -1;
    for (; *names && id < 0; names++) id = find_text(v, *names);
    return id;
}

#define METASPACE "\xe2\x96\x81"   /* U+2581 */

static int is_string_eq(const json_t *j, const char *s) { return json_is_string(j) && !strcmp(json_string_value(j), s); }

/* Is this the SentencePiece kind (see the top)? 1 yes (*space_prefix set), 0 no, -1 error. */
static int detect_spm(ctx *c, const json_t *root, const json_t *model, uint32_t *space_prefix)
{
    if (!json_is_true(json_object_get(model, "byte_fallback"))) return 0;
    const json_t *norm = json_object_get(root, "normalizer"), *pt = json_object_get(root, "pre_tokenizer");
    if (json_is_object(pt)) {
        if (!is_string_eq(json_object_get(pt, "type"), "Metaspace"))
            return FAIL(c, "pre_tokenizer: a byte-fallback BPE model needs the Metaspace pre-tokenizer or none");
        if (!is_string_eq(json_object_get(pt, "replacement"), METASPACE))
            return FAIL(c, "pre_tokenizer.replacement: only U+2581 is supported");
        if (json_is_true(json_object_get(pt, "split")))
            return FAIL(c, "pre_tokenizer.split: Metaspace splitting is not supported (must be false)");
        if (norm && !json_is_null(norm)) return FAIL(c, "normalizer: not supported with a Metaspace pre-tokenizer (must be null)");
        const json_t *scheme = json_object_get(pt, "prepend_scheme");
        *space_prefix = scheme ? !is_string_eq(scheme, "never") : json_is_true(json_object_get(pt, "add_prefix_space"));
        return 1;
    }
    /* Llama-2's original form: Sequence [Prepend U+2581, Replace " " -> U+2581]. */
    const json_t *list = json_object_get(norm, "normalizers");
    if (!is_string_eq(json_object_get(norm, "type"), "Sequence") || !json_is_array(list))
        return FAIL(c, "normalizer: a byte-fallback BPE model needs Llama-2's [Prepend, Replace] normalizer or a Metaspace pre-tokenizer");
    int replace = 0;
    *space_prefix = 0;
    size_t i;
    const json_t *n;
    json_array_foreach(list, i, n) {
        const json_t *t = json_object_get(n, "type");
        if (is_string_eq(t, "Prepend") && is_string_eq(json_object_get(n, "prepend"), METASPACE)) {
            *space_prefix = 1;
        } else if (is_string_eq(t, "Replace") && is_string_eq(json_object_get(json_object_get(n, "pattern"), "String"), " ") &&
                   is_string_eq(json_object_get(n, "content"), METASPACE)) {
            replace = 1;
        } else {
            return FAIL(c, "normalizer.normalizers[%zu]: only Prepend U+2581 and Replace ' ' -> U+2581 are supported", i);
        }
    }
    if (!replace) return FAIL(c, "normalizer: no Replace ' ' -> U+2581");
    return 1;
}

/* Scores from merge ranks (see the top); also marks <0xXX> pieces BYTE and model.unk_token
 * UNKNOWN. */
static int spm_scores(ctx *c, bn_vocab *v, const json_t *model, const json_t *merges)
{
    if (!bn_vocab_scores_alloc(v)) return FAIL(c, "out of memory");
    size_t n_merges = json_array_size(merges);
    uint8_t *set = calloc(v->n_tokens, 1);
    char *buf = NULL;
    if (!set) return FAIL(c, "out of memory");
    int rc = 0;
    size_t i;
    const json_t *m;
    json_array_foreach(merges, i, m) {
        const char *l, *r;
        size_t ll, rl;
        if (json_is_string(m)) {
            const char *s = json_string_value(m), *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) { rc = FAIL(c, "model.merges[%zu]: not two pieces separated by one space", i); break; }
            l = s, ll = (size_t)(sp - s), r = sp + 1, rl = strlen(sp + 1);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            l = json_string_value(json_array_get(m, 0)), ll = json_string_length(json_array_get(m, 0));
            r = json_string_value(json_array_get(m, 1)), rl = json_string_length(json_array_get(m, 1));
        } else {
            rc = FAIL(c, "model.merges[%zu]: neither a \"left right\" string nor a [left, right] pair", i);
            break;
        }
        char *nb = realloc(buf, ll + rl + 1);
        if (!nb) { rc = FAIL(c, "out of memory"); break; }
        buf = nb;
        memcpy(buf, l, ll);
        memcpy(buf + ll, r, rl);
        int32_t id = bn_vocab_find(v, buf, ll + rl);
        if (id < 0 || bn_vocab_find(v, l, ll) < 0 || bn_vocab_find(v, r, rl) < 0) {
            rc = FAIL(c, "model.merges[%zu]: '%.*s %.*s' names a piece missing from the vocabulary", i,
                      (int)(ll > 40 ? 40 : ll), l, (int)(rl > 40 ? 40 : rl), r);
            break;
        }
        if (!set[id]) v->scores[id] = -(float)i, set[id] = 1;
    }
    for (uint32_t id = 0; id < v->n_tokens && !rc; id++) {
        size_t len;
        const char *t = bn_vocab_token(v, id, &len);
        if (!set[id]) v->scores[id] = -(float)(n_merges + id);
        if (v->type[id] == BN_TOK_NORMAL && len == 6 && !memcmp(t, "<0x", 3) && t[5] == '>') v->type[id] = BN_TOK_BYTE;
    }
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    int32_t uid = unk && !rc ? find_text(v, unk) : -1;
    if (uid >= 0) v->type[uid] = BN_TOK_UNKNOWN;
    free(set);
    free(buf);
    return rc;
}

static int build_vocab(ctx *c, const json_t *root, bn_vocab **out)
{
    if (!json_is_object(root)) return FAIL(c, "the top level is not an object");
    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) return FAIL(c, "model: missing or not an object");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (type && strcmp(type, "BPE")) return FAIL(c, "model.type: '%s' is not supported (only BPE)", type);
    const json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges)) return FAIL(c, "model.merges: missing or not an array");
    uint32_t space_prefix = 0;
    int spm = detect_spm(c, root, model, &space_prefix);
    if (spm < 0) return -1;
    const json_t *norm = json_object_get(root, "normalizer");
    if (!spm && norm && !json_is_null(norm)) return FAIL(c, "normalizer: not supported (must be null)");
    uint32_t pre = BN_PRE_LLAMA3;   /* SPM: unused */
    if (!spm && detect_pre(c, json_object_get(root, "pre_tokenizer"), &pre)) return -1;

    tok_entry *e = NULL;
    uint32_t n = 0;
    if (collect_tokens(c, model, json_object_get(root, "added_tokens"), &e, &n)) return -1;
    size_t text_bytes = 0;
    for (uint32_t i = 0; i < n; i++) text_bytes += e[i].len;
    if (json_array_size(merges) > MAX_TOKENS || text_bytes > UINT32_MAX) {
        free(e);
        return FAIL(c, "model: too large");
    }
    bn_vocab *v = bn_vocab_alloc(n, text_bytes, spm ? 0 : (uint32_t)json_array_size(merges));
    if (!v) {
        free(e);
        return FAIL(c, "out of memory for %u tokens", n);
    }
    uint32_t o = 0;
    for (uint32_t i = 0; i < n; i++) {
        v->tok_off[i] = o;
        memcpy(v->text + o, e[i].s, e[i].len);
        o += (uint32_t)e[i].len;
        v->type[i] = e[i].type;
    }
    v->tok_off[n] = o;
    free(e);
    v->pre = pre;
    v->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    if (bn_vocab_index(v, c->err)) {
        bn_err_prefix(c->err, "%s: model.vocab", c->name);
        bn_vocab_free(v);
        return -1;
    }
    if (spm ? spm_scores(c, v, model, merges) : fill_merges(c, v, merges)) {
        bn_vocab_free(v);
        return -1;
    }
    if (spm) {
        v->model = BN_TOKM_SPM;
        v->space_prefix = space_prefix;
        v->ignore_merges = 0;
    }
    /* The usual names (Llama-3, SentencePiece, Falcon); tokenizer_config.json, when given,
     * overrides them. */
    static const char *const bos_names[] = {"<|begin_of_text|>", "<s>", NULL};
    static const char *const eos_names[] = {"<|end_of_text|>", "</s>", "<|endoftext|>", NULL};
    v->bos = find_first(v, bos_names);
    v->eos = find_first(v, eos_names);
    v->eot = find_text(v, "<|eot_id|>");
    *out = v;
    return 0;
}

static json_t *parse(ctx *c, const char *json, size_t len)
{
    json_error_t je;
    json_t *root = json_loadb(json, len, 0, &je);
    if (!root) FAIL(c, "not valid JSON (line %d, column %d): %s", je.line, je.column, je.text);
    return root;
}

int bn_vocab_load_hf_mem(const char *json, size_t len, const char *config_json, size_t config_len,
                         const char *name, bn_vocab **out, bn_error *err)
{
    ctx c = {name ? name : "tokenizer.json", err};
    json_t *root = parse(&c, json, len);
    if (!root) return -1;
    bn_vocab *v = NULL;
    int rc = build_vocab(&c, root, &v);
    json_decref(root);
    if (rc) return -1;
    if (config_json) {
        ctx cc = {"tokenizer_config.json", err};
        json_t *cfg = parse(&cc, config_json, config_len);
        rc = !cfg ? -1 : !json_is_object(cfg) ? FAIL(&cc, "the top level is not an object") : apply_config(&cc, v, cfg);
        json_decref(cfg);
    }
    if (!rc && bn_vocab_validate(v, err)) rc = bn_err_prefix(err, "%s", c.name);
    if (rc) {
        bn_vocab_free(v);
        return -1;
    }
    *out = v;
    return 0;
}

int bn_vocab_load_hf(const char *tokenizer_json, const char *tokenizer_config, bn_vocab **out,
                     bn_error *err)
{
    char *json = NULL, *cfg = NULL;
    size_t len = 0, cfg_len = 0;
    if (bn_read_file(tokenizer_json, (size_t)1 << 30, &json, &len, err)) return -1;
    if (tokenizer_config && bn_read_file(tokenizer_config, (size_t)64 << 20, &cfg, &cfg_len, err)) {
        free(json);
        return -1;
    }
    const char *slash = strrchr(tokenizer_json, '/');
    int rc = bn_vocab_load_hf_mem(json, len, cfg, cfg_len, slash ? slash + 1 : tokenizer_json, out, err);
    free(json);
    free(cfg);
    return rc;
}
