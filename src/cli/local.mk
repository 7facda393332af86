bin_PROGRAMS += bitnet
bitnet_CFLAGS = $(AM_CFLAGS) $(BN_EXT_CFLAGS)
bitnet_SOURCES = \
	src/cli/bitnet.c src/cli/commands.h src/cli/cli_common.c src/cli/cli_common.h \
	src/cli/cmd_inspect.c src/cli/cmd_convert.c src/cli/cmd_mkmodel.c \
	src/cli/cmd_tokenize.c \
	src/cli/cmd_run.c src/cli/cmd_bench.c src/cli/cmd_perplexity.c \
	src/cli/bench_draft.c src/cli/bench_draft.h \
	src/cli/cmd_loadtest.c src/cli/loadtest_stats.c src/cli/loadtest_stats.h \
	src/cli/loadtest_html.c src/cli/loadtest_html.h
bitnet_LDADD = $(BN_CORE_LIBS) $(BN_EXT_LIBS)
