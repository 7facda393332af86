noinst_LIBRARIES += libbnmodel.a
libbnmodel_a_CFLAGS = $(AM_CFLAGS) $(BN_EXT_CFLAGS)
libbnmodel_a_SOURCES = \
	src/model/model.h src/model/model_format.h \
	src/model/tensor_table.c src/model/tensor_table.h src/model/family.c src/model/family.h \
	src/model/tl_layout.c src/model/tl_layout.h \
	src/model/model_file.c src/model/model_write.c src/model/model_write.h src/model/model_tokenizer.c src/model/model_tokenizer.h \
	src/model/ternarize.c src/model/ternarize.h \
	src/model/source.c src/model/source.h \
	src/model/synth.c src/model/synth.h src/model/source_synth.c src/model/source_synth.h \
	src/model/gguf.c src/model/gguf.h src/model/gguf_write.c src/model/source_gguf.c \
	src/model/safetensors.c src/model/safetensors.h src/model/source_hf.c \
	src/model/hf_write.c src/model/hf_write.h \
	src/model/convert_cache.c src/model/convert_cache.h
