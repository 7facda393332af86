if HAVE_CHECK
check_PROGRAMS += tests/test_tl
TESTS += tests/test_tl
tests_test_tl_SOURCES = tests/test_tl.c tests/testutil.h
tests_test_tl_CFLAGS = $(TEST_CFLAGS)
tests_test_tl_LDADD = $(TEST_LIBS)
endif
