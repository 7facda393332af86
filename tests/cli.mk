# The bitnet tool's shared option parser and progress line (src/cli/cli_common.c), unit-tested
# directly and through the built binary (BN_BITNET).
if HAVE_CHECK
check_PROGRAMS += tests/test_cli_opts
TESTS += tests/test_cli_opts
tests_test_cli_opts_SOURCES = tests/test_cli_opts.c src/cli/cli_common.c src/cli/cli_common.h
tests_test_cli_opts_CFLAGS = $(TEST_CFLAGS)
tests_test_cli_opts_LDADD = $(TEST_LIBS)
endif
