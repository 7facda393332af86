/* libFuzzer target: the tokenizer.json loader. The bytes are loaded as tokenizer.json; if they
 * load, a tokenizer is built (merges checked, byte tokens required) and a short text with
 * multi-byte characters, a control-token string and invalid UTF-8 is encoded and decoded. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "text/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bn_vocab *v = NULL;
    bn_error err;
    if (bn_vocab_load_hf_mem((const char *)data, size, NULL, 0, "tokenizer.json", &v, &err) != 0) return 0;
    bn_tokenizer *tk = bn_tokenizer_new(v, &err);
    if (tk) {
        static const char text[] = "Hello, world! It's 2024 \xe4\xbd\xa0\xe5\xa5\xbd <|eot_id|>\xff\n\n  x";
        bn_tokens t = {0};
        if (bn_tokenize_special_append(tk, text, sizeof text - 1, &t, &err) == 0) {
            char *back;
            size_t len;
            if (bn_detokenize(tk, t.ids, t.n, 0, &back, &len, &err) == 0) free(back);
        }
        bn_tokens_free(&t);
        bn_tokenizer_free(tk);
    }
    bn_vocab_free(v);
    return 0;
}
