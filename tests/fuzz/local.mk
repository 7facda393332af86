# Fuzz targets for every parser of untrusted bytes. Two builds of each:
#  - tests/fuzz/replay_NAME: the target's entry point run over its seed corpus, part of `make check`
#    (so the targets compile everywhere and run under the sanitizers in CI);
#  - tests/fuzz/fuzz_NAME: the real libFuzzer binary, with ./configure --enable-fuzzing CC=clang.
FUZZ_NAMES = packed gguf safetensors tokenizer_json http_body spm_model
EXTRA_DIST += tests/fuzz/corpus

FUZZ_COMMON_CFLAGS = $(AM_CFLAGS) $(BN_EXT_CFLAGS)
FUZZ_LIBS = $(BN_CORE_LIBS) $(BN_EXT_LIBS)

check_PROGRAMS += tests/fuzz/replay_packed tests/fuzz/replay_gguf tests/fuzz/replay_safetensors tests/fuzz/replay_tokenizer_json \
	tests/fuzz/replay_http_body tests/fuzz/replay_spm_model
TESTS += tests/fuzz/replay_packed tests/fuzz/replay_gguf tests/fuzz/replay_safetensors tests/fuzz/replay_tokenizer_json \
	tests/fuzz/replay_http_body tests/fuzz/replay_spm_model
tests_fuzz_replay_packed_SOURCES = tests/fuzz/fuzz_packed.c tests/fuzz/replay_main.c
tests_fuzz_replay_packed_CFLAGS = $(FUZZ_COMMON_CFLAGS) -DBN_FUZZ_NAME='"packed"'
tests_fuzz_replay_packed_LDADD = $(FUZZ_LIBS)
tests_fuzz_replay_gguf_SOURCES = tests/fuzz/fuzz_gguf.c tests/fuzz/replay_main.c
tests_fuzz_replay_gguf_CFLAGS = $(FUZZ_COMMON_CFLAGS) -DBN_FUZZ_NAME='"gguf"'
tests_fuzz_replay_gguf_LDADD = $(FUZZ_LIBS)
tests_fuzz_replay_safetensors_SOURCES = tests/fuzz/fuzz_safetensors.c tests/fuzz/replay_main.c
tests_fuzz_replay_safetensors_CFLAGS = $(FUZZ_COMMON_CFLAGS) -DBN_FUZZ_NAME='"safetensors"'
tests_fuzz_replay_safetensors_LDADD = $(FUZZ_LIBS)
tests_fuzz_replay_tokenizer_json_SOURCES = tests/fuzz/fuzz_tokenizer_json.c tests/fuzz/replay_main.c
tests_fuzz_replay_tokenizer_json_CFLAGS = $(FUZZ_COMMON_CFLAGS) -DBN_FUZZ_NAME='"tokenizer_json"'
tests_fuzz_replay_tokenizer_json_LDADD = $(FUZZ_LIBS)
tests_fuzz_replay_spm_model_SOURCES = tests/fuzz/fuzz_spm_model.c tests/fuzz/replay_main.c
tests_fuzz_replay_spm_model_CFLAGS = $(FUZZ_COMMON_CFLAGS) -DBN_FUZZ_NAME='"spm_model"'
tests_fuzz_replay_spm_model_LDADD = $(FUZZ_LIBS)
# the server's modules are not in FUZZ_LIBS: the target lists the one it parses with
tests_fuzz_replay_http_body_SOURCES = tests/fuzz/fuzz_http_body.c tests/fuzz/replay_main.c src/server/openai.c
tests_fuzz_replay_http_body_CFLAGS = $(FUZZ_COMMON_CFLAGS) -DBN_FUZZ_NAME='"http_body"'
tests_fuzz_replay_http_body_LDADD = $(FUZZ_LIBS)

if BN_FUZZING
noinst_PROGRAMS += tests/fuzz/fuzz_packed tests/fuzz/fuzz_gguf tests/fuzz/fuzz_safetensors tests/fuzz/fuzz_tokenizer_json \
	tests/fuzz/fuzz_http_body tests/fuzz/fuzz_spm_model
tests_fuzz_fuzz_packed_SOURCES = tests/fuzz/fuzz_packed.c
tests_fuzz_fuzz_packed_CFLAGS = $(FUZZ_COMMON_CFLAGS) -fsanitize=fuzzer
tests_fuzz_fuzz_packed_LDFLAGS = -fsanitize=fuzzer
tests_fuzz_fuzz_packed_LDADD = $(FUZZ_LIBS)
tests_fuzz_fuzz_gguf_SOURCES = tests/fuzz/fuzz_gguf.c
tests_fuzz_fuzz_gguf_CFLAGS = $(FUZZ_COMMON_CFLAGS) -fsanitize=fuzzer
tests_fuzz_fuzz_gguf_LDFLAGS = -fsanitize=fuzzer
tests_fuzz_fuzz_gguf_LDADD = $(FUZZ_LIBS)
tests_fuzz_fuzz_safetensors_SOURCES = tests/fuzz/fuzz_safetensors.c
tests_fuzz_fuzz_safetensors_CFLAGS = $(FUZZ_COMMON_CFLAGS) -fsanitize=fuzzer
tests_fuzz_fuzz_safetensors_LDFLAGS = -fsanitize=fuzzer
tests_fuzz_fuzz_safetensors_LDADD = $(FUZZ_LIBS)
tests_fuzz_fuzz_tokenizer_json_SOURCES = tests/fuzz/fuzz_tokenizer_json.c
tests_fuzz_fuzz_tokenizer_json_CFLAGS = $(FUZZ_COMMON_CFLAGS) -fsanitize=fuzzer
tests_fuzz_fuzz_tokenizer_json_LDFLAGS = -fsanitize=fuzzer
tests_fuzz_fuzz_tokenizer_json_LDADD = $(FUZZ_LIBS)
tests_fuzz_fuzz_spm_model_SOURCES = tests/fuzz/fuzz_spm_model.c
tests_fuzz_fuzz_spm_model_CFLAGS = $(FUZZ_COMMON_CFLAGS) -fsanitize=fuzzer
tests_fuzz_fuzz_spm_model_LDFLAGS = -fsanitize=fuzzer
tests_fuzz_fuzz_spm_model_LDADD = $(FUZZ_LIBS)
tests_fuzz_fuzz_http_body_SOURCES = tests/fuzz/fuzz_http_body.c src/server/openai.c
tests_fuzz_fuzz_http_body_CFLAGS = $(FUZZ_COMMON_CFLAGS) -fsanitize=fuzzer
tests_fuzz_fuzz_http_body_LDFLAGS = -fsanitize=fuzzer
tests_fuzz_fuzz_http_body_LDADD = $(FUZZ_LIBS)
endif
