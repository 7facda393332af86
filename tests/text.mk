# text tests: registered by the text layer
if HAVE_CHECK
check_PROGRAMS += tests/test_tokenizer tests/test_tokenizer_stream tests/test_tokenizer_cli tests/test_spm
TESTS += tests/test_tokenizer tests/test_tokenizer_stream tests/test_tokenizer_cli tests/test_spm
tests_test_tokenizer_SOURCES = tests/test_tokenizer.c
tests_test_tokenizer_CFLAGS = $(TEST_CFLAGS)
tests_test_tokenizer_LDADD = $(TEST_LIBS)
tests_test_tokenizer_stream_SOURCES = tests/test_tokenizer_stream.c
tests_test_tokenizer_stream_CFLAGS = $(TEST_CFLAGS)
tests_test_tokenizer_stream_LDADD = $(TEST_LIBS)
# SentencePiece, tokenizer.model, Falcon3's pre-tokenizer and chat, family vocabularies, packed section
tests_test_spm_SOURCES = tests/test_spm.c
tests_test_spm_CFLAGS = $(TEST_CFLAGS)
tests_test_spm_LDADD = $(TEST_LIBS)
# runs the bitnet binary ($BN_BITNET): tokenize on a `bitnet mkmodel` model and on the fixture
tests_test_tokenizer_cli_SOURCES = tests/test_tokenizer_cli.c
tests_test_tokenizer_cli_CFLAGS = $(TEST_CFLAGS)
tests_test_tokenizer_cli_LDADD = $(CHECK_LIBS)
endif

# Encode speed on ~1 MB of generated English prose (not run by `make check`).
noinst_PROGRAMS += bench/bench_tokenize
bench_bench_tokenize_SOURCES = bench/bench_tokenize.c
bench_bench_tokenize_CFLAGS = $(AM_CFLAGS) $(BN_EXT_CFLAGS)
bench_bench_tokenize_LDADD = libbntext.a libbnbase.a $(BN_EXT_LIBS)
