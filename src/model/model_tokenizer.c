#include "model/model_tokenizer.h"

#include <stdlib.h>
#include <string.h>

#include "base/checked.h"
#include "model/model_format.h"

/* The packed file's tokenizer section (model_format.h): fixed arrays, then (1.2, SentencePiece
 * only) f32 scores at the end, 4-aligned within the section. A 1.1 section has model_flags 0:
 * byte-level BPE, no scores. The reader takes untrusted bytes (fuzz_packed.c). */
static uint64_t types_bytes(uint32_t n) { return bn_align_up(n, 4); }

/* The source's template text is not stored: sources disagree on it (HF's Jinja, GGUF's
 * placeholder) while `chat` already says which format the model uses, and every route to
 * the same model must give the same bytes. The field stays in the format for future use. */
static uint64_t template_len(const bn_vocab *v) { (void)v; return 0; }

/* Bytes up to the end of the template (everything 1.1 has). */
static uint64_t base_size(uint32_t n_tokens, uint32_t n_merges, uint32_t text_bytes, uint32_t tmpl)
{
    return sizeof(bn_tok_header) + 4ull * (n_tokens + 1) + types_bytes(n_tokens) + 8ull * n_merges +
           text_bytes + tmpl;
}

static uint64_t scores_size(uint32_t model, uint32_t n_tokens) { return model == BN_TOKM_SPM ? 4ull * n_tokens : 0; }

static uint64_t section_size(uint32_t model, uint32_t n_tokens, uint32_t n_merges, uint32_t text_bytes, uint32_t tmpl)
{
    uint64_t b = base_size(n_tokens, n_merges, text_bytes, tmpl);
    return model == BN_TOKM_SPM ? bn_align_up(b, 4) + scores_size(model, n_tokens) : b;
}

uint64_t bn_tok_section_size(const bn_vocab *v)
{
    return section_size(v->model, v->n_tokens, v->n_merges, v->tok_off[v->n_tokens], (uint32_t)template_len(v));
}

void bn_tok_section_write(const bn_vocab *v, uint8_t *buf)
{
    bn_tok_header h = {
        .n_tokens = v->n_tokens, .n_merges = v->n_merges, .pre = v->pre,
        /* A byte-level BPE model without a template naming another format is a 2B-4T-like
         * BitNet model: its own (System:/User:/Assistant:) format. SentencePiece ones are the
         * 1bitLLM base models, whose NONE is kept. */
        .chat = v->chat != BN_CHAT_NONE || v->model == BN_TOKM_SPM ? v->chat : BN_CHAT_BITNET,
        .bos = v->bos, .eos = v->eos, .eot = v->eot, .pad = v->pad,
        .ignore_merges = v->ignore_merges, .template_len = (uint32_t)template_len(v),
        .text_bytes = v->tok_off[v->n_tokens],
        .model_flags = v->model | (v->model == BN_TOKM_SPM && v->space_prefix ? BN_TOKF_SPACE_PREFIX : 0),
    };
    uint8_t *p = buf;
    memcpy(p, &h, sizeof h); p += sizeof h;
    memcpy(p, v->tok_off, 4ull * (v->n_tokens + 1)); p += 4ull * (v->n_tokens + 1);
    memset(p, 0, types_bytes(v->n_tokens));
    memcpy(p, v->type, v->n_tokens); p += types_bytes(v->n_tokens);
    memcpy(p, v->merges, 8ull * v->n_merges); p += 8ull * v->n_merges;
    memcpy(p, v->text, h.text_bytes); p += h.text_bytes;
    if (h.template_len) memcpy(p, v->chat_template, h.template_len);
    p += h.template_len;
    if (v->model == BN_TOKM_SPM) {
        uint64_t pad = bn_align_up((uint64_t)(p - buf), 4) - (uint64_t)(p - buf);
        memset(p, 0, pad);
        memcpy(p + pad, v->scores, 4ull * v->n_tokens);
    }
}

int bn_tok_section_read(const uint8_t *buf, uint64_t len, const char *file, bn_vocab **out, bn_error *err)
{
    *out = NULL;
    bn_tok_header h;
    if (len < sizeof h) return bn_err(err, "%s: tokenizer section: %llu bytes is shorter than its header", file, (unsigned long long)len);
    memcpy(&h, buf, sizeof h);
    if (h.n_tokens == 0 || h.n_tokens > (1u << 24) || h.n_merges > (1u << 24))
        return bn_err(err, "%s: tokenizer section: n_tokens %u / n_merges %u out of range", file, h.n_tokens, h.n_merges);
    uint32_t model = h.model_flags & 0xffu;
    if (model != BN_TOKM_BPE && model != BN_TOKM_SPM)
        return bn_err(err, "%s: tokenizer section: unknown tokenizer model %u", file, model);
    if (h.model_flags & ~(0xffu | BN_TOKF_SPACE_PREFIX))
        return bn_err(err, "%s: tokenizer section: unknown model_flags bits 0x%x", file, h.model_flags & ~(0xffu | BN_TOKF_SPACE_PREFIX));
    if (model != BN_TOKM_SPM && (h.model_flags & BN_TOKF_SPACE_PREFIX))
        return bn_err(err, "%s: tokenizer section: the space-prefix flag is only for SentencePiece", file);
    uint64_t base = base_size(h.n_tokens, h.n_merges, h.text_bytes, h.template_len);
    uint64_t need = section_size(model, h.n_tokens, h.n_merges, h.text_bytes, h.template_len);
    if (need != len)
        return bn_err(err, "%s: tokenizer section: arrays need %llu bytes but the section has %llu", file,
                      (unsigned long long)need, (unsigned long long)len);
    bn_vocab *v = bn_vocab_alloc(h.n_tokens, h.text_bytes, h.n_merges);
    if (!v) return bn_err(err, "%s: tokenizer section: out of memory", file);
    const uint8_t *p = buf + sizeof h;
    memcpy(v->tok_off, p, 4ull * (h.n_tokens + 1)); p += 4ull * (h.n_tokens + 1);
    memcpy(v->type, p, h.n_tokens); p += types_bytes(h.n_tokens);
    memcpy(v->merges, p, 8ull * h.n_merges); p += 8ull * h.n_merges;
    memcpy(v->text, p, h.text_bytes); p += h.text_bytes;
    v->pre = h.pre; v->chat = h.chat; v->ignore_merges = h.ignore_merges;
    v->model = model;
    v->space_prefix = (h.model_flags & BN_TOKF_SPACE_PREFIX) != 0;
    if (model == BN_TOKM_SPM) {
        const uint8_t *q = buf + base, *sc = buf + bn_align_up(base, 4);
        for (; q < sc; q++)
            if (*q) {
                bn_vocab_free(v);
                return bn_err(err, "%s: tokenizer section: non-zero padding before the scores", file);
            }
        if (!bn_vocab_scores_alloc(v)) {
            bn_vocab_free(v);
            return bn_err(err, "%s: tokenizer section: out of memory", file);
        }
        memcpy(v->scores, sc, 4ull * h.n_tokens);
    }
    v->bos = h.bos; v->eos = h.eos; v->eot = h.eot; v->pad = h.pad;
    if (h.template_len) {
        v->chat_template = malloc((size_t)h.template_len + 1);
        if (!v->chat_template) {
            bn_vocab_free(v);
            return bn_err(err, "%s: tokenizer section: out of memory", file);
        }
        memcpy(v->chat_template, p, h.template_len);
        v->chat_template[h.template_len] = 0;
    }
    uint32_t last = v->tok_off[h.n_tokens];
    if (last != h.text_bytes) {
        bn_vocab_free(v);
        return bn_err(err, "%s: tokenizer section: last token offset %u != text_bytes %u", file, last, h.text_bytes);
    }
    if (bn_vocab_validate(v, err) != 0) {
        bn_vocab_free(v);
        return bn_err_prefix(err, "%s: tokenizer section", file);
    }
    *out = v;
    return 0;
}
