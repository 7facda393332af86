# server tests: unit tests per module (each lists the module's sources, so modules build and
# test independently), then integration tests that start bitnetd on loopback.
if HAVE_CHECK
check_PROGRAMS += tests/test_config tests/test_placement tests/test_channel tests/test_openai \
	tests/test_metrics tests/test_weights tests/test_scheduler tests/test_server tests/test_loadtest
TESTS += tests/test_config tests/test_placement tests/test_channel tests/test_openai \
	tests/test_metrics tests/test_weights tests/test_scheduler tests/test_server tests/test_loadtest

tests_test_config_SOURCES = tests/test_config.c src/server/config.c
tests_test_config_CFLAGS = $(TEST_CFLAGS)
tests_test_config_LDADD = $(TEST_LIBS)

tests_test_placement_SOURCES = tests/test_placement.c src/server/placement.c
tests_test_placement_CFLAGS = $(TEST_CFLAGS)
tests_test_placement_LDADD = $(TEST_LIBS)

tests_test_channel_SOURCES = tests/test_channel.c src/server/channel.c src/server/worker.c \
	src/server/placement.c src/server/log.c
tests_test_channel_CFLAGS = $(TEST_CFLAGS)
tests_test_channel_LDADD = $(TEST_LIBS)

tests_test_openai_SOURCES = tests/test_openai.c src/server/openai.c
tests_test_openai_CFLAGS = $(TEST_CFLAGS)
tests_test_openai_LDADD = $(TEST_LIBS)

tests_test_metrics_SOURCES = tests/test_metrics.c src/server/metrics.c src/server/log.c
tests_test_metrics_CFLAGS = $(TEST_CFLAGS)
tests_test_metrics_LDADD = $(TEST_LIBS)

tests_test_weights_SOURCES = tests/test_weights.c src/server/weights.c
tests_test_weights_CFLAGS = $(TEST_CFLAGS)
tests_test_weights_LDADD = $(TEST_LIBS)

tests_test_scheduler_SOURCES = tests/test_scheduler.c src/server/scheduler.c
tests_test_scheduler_CFLAGS = $(TEST_CFLAGS)
tests_test_scheduler_LDADD = $(TEST_LIBS)

# Integration: bitnetd ($BN_BITNETD) on loopback with a tiny synthetic model.
tests_test_server_SOURCES = tests/test_server.c tests/server_harness.c tests/server_harness.h
tests_test_server_CFLAGS = $(TEST_CFLAGS)
tests_test_server_LDADD = $(TEST_LIBS)

tests_test_loadtest_SOURCES = tests/test_loadtest.c tests/server_harness.c tests/server_harness.h
tests_test_loadtest_CFLAGS = $(TEST_CFLAGS)
tests_test_loadtest_LDADD = $(TEST_LIBS)
endif
