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

tests_test_forward_SOURCES = tests/test_forward.c tests/ref_model.c tests/ref_model.h
tests_test_forward_CFLAGS = $(TEST_CFLAGS)
tests_test_forward_LDFLAGS = $(AM_LDFLAGS) $(BN_ENGINE_TEST_WRAP)
tests_test_forward_LDADD = $(TEST_LIBS)
endif

# lm_head: batched int8 GEMM vs per-token GEMV, the two-stage head's exactness
if HAVE_CHECK
check_PROGRAMS += tests/test_lm_head
TESTS += tests/test_lm_head
tests_test_lm_head_SOURCES = tests/test_lm_head.c
tests_test_lm_head_CFLAGS = $(TEST_CFLAGS)
tests_test_lm_head_LDADD = $(TEST_LIBS)
endif

# prompt-lookup drafting: exact against plain decoding, every variant
if HAVE_CHECK
check_PROGRAMS += tests/test_draft
TESTS += tests/test_draft
tests_test_draft_SOURCES = tests/test_draft.c
tests_test_draft_CFLAGS = $(TEST_CFLAGS)
tests_test_draft_LDFLAGS = $(AM_LDFLAGS) $(BN_ENGINE_TEST_WRAP)
tests_test_draft_LDADD = $(TEST_LIBS)
endif
