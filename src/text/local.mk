# Text layer: vocabulary, byte-level BPE tokenizer (Llama-3, Falcon3), SentencePiece BPE
# (spm.c; tokenizer.model in spm_model.c), streaming decode, chat templates.
noinst_LIBRARIES += libbntext.a
libbntext_a_CFLAGS = $(AM_CFLAGS) $(BN_EXT_CFLAGS)
libbntext_a_SOURCES = \
	src/text/vocab.c src/text/vocab.h \
	src/text/tokenizer.h src/text/text_internal.h \
	src/text/tokenizer.c \
	src/text/pretokenize.c src/text/unicode_extra.h \
	src/text/bpe.c \
	src/text/spm.c \
	src/text/spm_model.c src/text/spm_model.h \
	src/text/stream.c \
	src/text/chat.c \
	src/text/vocab_json.c \
	src/text/vocab_builtin.c
