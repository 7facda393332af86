# The engine: forward pass, KV cache, sampler, generate loop (over kernels/ and src/model/).
noinst_LIBRARIES += libbnengine.a
libbnengine_a_CFLAGS = $(AM_CFLAGS) $(BN_EXT_CFLAGS)
libbnengine_a_SOURCES = \
	src/engine/engine.h src/engine/engine_internal.h \
	src/engine/engine.c src/engine/kv_cache.c src/engine/forward.c src/engine/lm_head.c \
	src/engine/sampler.c src/engine/generate.c src/engine/perplexity.c \
	src/engine/draft.c src/engine/draft.h
