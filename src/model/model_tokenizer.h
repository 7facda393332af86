/* The tokenizer section of the packed file: a bn_vocab written as flat arrays. */
#ifndef BN_MODEL_TOKENIZER_H
#define BN_MODEL_TOKENIZER_H

#include <stdint.h>

#include "base/error.h"
#include "text/vocab.h"

/* Bytes the section occupies for v. */
uint64_t bn_tok_section_size(const bn_vocab *v);
/* Serializes v into buf (bn_tok_section_size bytes). */
void bn_tok_section_write(const bn_vocab *v, uint8_t *buf);
/* Parses a section of len bytes (untrusted) into a new vocab; `file` names it in errors. */
int bn_tok_section_read(const uint8_t *buf, uint64_t len, const char *file, bn_vocab **out, bn_error *err);

#endif
