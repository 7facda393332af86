/* libFuzzer target: the tokenizer.model (SentencePiece protobuf) parser. The bytes are parsed as
 * a ModelProto; if they give a vocabulary, a tokenizer is built (all 256 byte-fallback tokens
 * required) and a short text with spaces, multi-byte characters, U+2581, special-token strings
 * and invalid UTF-8 is encoded (plain and with specials) and decoded; the plain encoding must
 * decode back to the text exactly, and the vocabulary must survive write -> parse. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "text/spm_model.h"
#include "text/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bn_vocab *v = NULL;
    bn_error err;
    if (bn_spm_model_parse(data, size, "tokenizer.model", &v, &err) != 0) return 0;
    bn_tokenizer *tk = bn_tokenizer_new(v, &err);
    if (tk) {
        static const char text[] = "Hello, world! It's  2024 \xe4\xbd\xa0\xe5\xa5\xbd \xe2\x96\x81<s></s><pad></line>\xff\n\n  x";
        for (int special = 0; special < 2; special++) {
            bn_tokens t = {0};
            int rc = special ? bn_tokenize_special_append(tk, text, sizeof text - 1, &t, &err)
                             : bn_tokenize_append(tk, text, sizeof text - 1, &t, &err);
            char *back;
            size_t len;
            if (rc == 0 && bn_detokenize(tk, t.ids, t.n, 0, &back, &len, &err) == 0) {
                if (!special && (len != sizeof text - 1 || memcmp(back, text, len) != 0)) abort();
                free(back);
            }
            bn_tokens_free(&t);
        }
        bn_tokenizer_free(tk);
    }
    uint8_t *out;
    size_t out_len;
    if (bn_spm_model_write(v, &out, &out_len, &err) == 0) {
        bn_vocab *w = NULL;
        if (bn_spm_model_parse(out, out_len, "rewritten", &w, &err) != 0 || w->n_tokens != v->n_tokens) abort();
        bn_vocab_free(w);
        free(out);
    }
    bn_vocab_free(v);
    return 0;
}
