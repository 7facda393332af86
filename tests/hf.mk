# hf/safetensors tests
if HAVE_CHECK
check_PROGRAMS += tests/test_hf
TESTS += tests/test_hf
tests_test_hf_SOURCES = tests/test_hf.c
tests_test_hf_CFLAGS = $(TEST_CFLAGS)
tests_test_hf_LDADD = $(TEST_LIBS)
endif
