# Allocation failures, SQLite-style: the Nth allocation fails, N = 1, 2, ... over model open,
# converting a 1bitLLM HF directory and a llama-arch GGUF, tokenizer.model parsing,
# pack write, tokenizer and vocab loading, engine create, the API parser and builders, the
# config loader and the channel. The allocator is wrapped in our objects (and jansson is routed
# through it by the test).
if HAVE_CHECK
BN_FAULTS_TEST_WRAP = -Wl,--wrap=malloc -Wl,--wrap=calloc -Wl,--wrap=realloc -Wl,--wrap=free \
	-Wl,--wrap=posix_memalign -Wl,--wrap=strdup -Wl,--wrap=strndup

check_PROGRAMS += tests/test_faults
TESTS += tests/test_faults

tests_test_faults_SOURCES = tests/test_faults.c src/server/openai.c src/server/config.c \
	src/server/channel.c src/server/limits.c
tests_test_faults_CFLAGS = $(TEST_CFLAGS)
tests_test_faults_LDFLAGS = $(AM_LDFLAGS) $(BN_FAULTS_TEST_WRAP)
tests_test_faults_LDADD = $(TEST_LIBS)
endif
