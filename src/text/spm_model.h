/* SentencePiece's tokenizer.model: a protobuf ModelProto (sentencepiece_model.proto). Only the
 * fields a BPE tokenizer needs are read: pieces (piece, score, type), trainer_spec.model_type
 * (must be BPE = 2), trainer_spec.byte_fallback, normalizer_spec.add_dummy_prefix, and the
 * unk/bos/eos/pad ids. Everything else is skipped by wire type. The parser reads UNTRUSTED
 * bytes: every length is bounded by the bytes left (fuzz/fuzz_spm_model.c). */
#ifndef BN_TEXT_SPM_MODEL_H
#define BN_TEXT_SPM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "text/vocab.h"

/* Parses a tokenizer.model held in memory (name for messages) into a new SPM vocab (model SPM,
 * scores set, types mapped to bn_token_type). */
int bn_spm_model_parse(const uint8_t *data, size_t len, const char *name, bn_vocab **out,
                       bn_error *err);
/* Reads a tokenizer.model file and, if added_tokens_json is non-NULL and exists, appends its
 * tokens as USER_DEFINED (HF's added_tokens.json, ids taken from the file). */
int bn_spm_model_load(const char *path, const char *added_tokens_json, bn_vocab **out,
                      bn_error *err);
/* Serializes an SPM vocab as a tokenizer.model (the synthetic HF writer's use); malloc'd. */
int bn_spm_model_write(const bn_vocab *v, uint8_t **out, size_t *len, bn_error *err);
/* The form of 1bitLLM's checkpoint: the trailing USER_DEFINED tokens (<pad>, </line>) are left
 * out of tokenizer.model and written as added_tokens.json ({"<pad>": 32000, ...}, id order);
 * *added_json is NULL (len 0) if there are none. Both buffers are malloc'd; the caller frees.
 * bn_spm_model_load(model, added) gives v back. */
int bn_spm_model_write_hf(const bn_vocab *v, uint8_t **model_out, size_t *model_len, char **added_json,
                          size_t *added_len, bn_error *err);

#endif
