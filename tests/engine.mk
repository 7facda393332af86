# engine tests: the forward pass against a naive float reference, the sampler, perplexity.
if HAVE_CHECK
# malloc & co. are wrapped so that tests can assert the token loop allocates nothing.
BN_ENGINE_TEST_WRAP = -Wl,--wrap=malloc -Wl,--wrap=calloc -Wl,--wrap=realloc

check_PROGRAMS += tests/test_sampler tests/test_forward
TESTS += tests/test_sampler tests/test_forward

tests_test_sampler_SOURCES = tests/test_sampler.c
tests_test_sampler_CFLAGS = $(TEST_CFLAGS)
tests_test_sampler_LDFLAGS = $(AM_LDFLAGS) $(BN_ENGINE_TEST_WRAP)
tests_test_sampler_LDADD = $(TEST_LIBS)

tests_test_forward_SOURCES = tests/test_forward.c
tests_test_forward_CFLAGS = $(TEST_CFLAGS)
tests_test_forward_LDFLAGS = $(AM_LDFLAGS) $(BN_ENGINE_TEST_WRAP)
tests_test_forward_LDADD = $(TEST_LIBS)
endif
