# kernels tests: registered by the kernels layer
if HAVE_CHECK
check_PROGRAMS += tests/test_kernels
TESTS += tests/test_kernels
tests_test_kernels_SOURCES = tests/test_kernels.c
tests_test_kernels_CFLAGS = $(TEST_CFLAGS)
tests_test_kernels_LDADD = $(BN_KERNEL_LIBS) $(CHECK_LIBS) -lm
check_PROGRAMS += tests/test_u2plane
TESTS += tests/test_u2plane
tests_test_u2plane_SOURCES = tests/test_u2plane.c
tests_test_u2plane_CFLAGS = $(TEST_CFLAGS)
tests_test_u2plane_LDADD = $(BN_KERNEL_LIBS) $(CHECK_LIBS) -lm
endif

# Kernel benchmark: built by `make`, never run by `make check` (timings are not tests).
noinst_PROGRAMS += bench/bench_kernels
bench_bench_kernels_SOURCES = bench/bench_kernels.c
bench_bench_kernels_CFLAGS = $(AM_CFLAGS)
bench_bench_kernels_LDADD = $(BN_KERNEL_LIBS) -lm
