# Each layer registers its own Check tests (and bench programs) in its fragment.
AM_TESTS_ENVIRONMENT = \
	BN_FIXTURES_DIR='$(BN_FIXTURES_DIR)'; export BN_FIXTURES_DIR; \
	BN_TEST_TMPDIR='$(abs_builddir)/tests/tmp'; export BN_TEST_TMPDIR; mkdir -p "$$BN_TEST_TMPDIR"; \
	BN_BITNET='$(abs_builddir)/bitnet'; export BN_BITNET; \
	BN_BITNETD='$(abs_builddir)/bitnetd'; export BN_BITNETD; \
	BN_SRCDIR='$(abs_srcdir)'; export BN_SRCDIR; \
	CK_DEFAULT_TIMEOUT=600; export CK_DEFAULT_TIMEOUT; \
	CK_FORK=no; export CK_FORK;
# CK_FORK=no: Check's fork-per-test mode cannot be used with OpenMP (libgomp is not fork-safe:
# a child forked after the parent ran a parallel region hangs in its first one), and the
# converters and the engine use OpenMP. A failing assertion still fails only its own test.
TEST_CFLAGS = $(AM_CFLAGS) $(BN_EXT_CFLAGS) $(CHECK_CFLAGS)
TEST_LIBS = $(BN_CORE_LIBS) $(BN_EXT_LIBS) $(CHECK_LIBS)
EXTRA_DIST += tests/testutil.h
clean-local: clean-test-tmp
clean-test-tmp:
	-rm -rf tests/tmp
.PHONY: clean-test-tmp

include $(srcdir)/tests/kernels.mk
include $(srcdir)/tests/text.mk
include $(srcdir)/tests/model.mk
include $(srcdir)/tests/gguf.mk
include $(srcdir)/tests/hf.mk
include $(srcdir)/tests/tl.mk
include $(srcdir)/tests/engine.mk
include $(srcdir)/tests/server.mk
include $(srcdir)/tests/fuzz/local.mk
include $(srcdir)/tests/faults.mk
include $(srcdir)/tests/cli.mk
