# server tests: unit tests per module (each lists the module's sources, so modules build and
# test independently), then integration tests that start bitnetd on loopback.
if HAVE_CHECK
check_PROGRAMS += tests/test_config tests/test_placement tests/test_channel tests/test_openai \
	tests/test_metrics tests/test_weights tests/test_scheduler \
	tests/test_server_api tests/test_server_faults tests/test_server_ops tests/test_loadtest
TESTS += tests/test_config tests/test_placement tests/test_channel tests/test_openai \
	tests/test_metrics tests/test_weights tests/test_scheduler \
	tests/test_server_api tests/test_server_faults tests/test_server_ops tests/test_loadtest \
	tests/test_node_sdk.sh

tests_test_config_SOURCES = tests/test_config.c src/server/config.c
tests_test_config_CFLAGS = $(TEST_CFLAGS)
tests_test_config_LDADD = $(TEST_LIBS)

tests_test_placement_SOURCES = tests/test_placement.c src/server/placement.c
tests_test_placement_CFLAGS = $(TEST_CFLAGS)
tests_test_placement_LDADD = $(TEST_LIBS)

tests_test_channel_SOURCES = tests/test_channel.c tests/worker_harness.c tests/worker_harness.h \
	src/server/channel.c src/server/worker.c src/server/prompt_cache.c src/server/placement.c \
	src/server/log.c
tests_test_channel_CFLAGS = $(TEST_CFLAGS)
tests_test_channel_LDADD = $(TEST_LIBS)

# The worker with slots and the prompt cache, driven frame by frame (test_worker), and the
# cache itself with the engine's KV save/load under it (test_prompt_cache).
check_PROGRAMS += tests/test_worker tests/test_prompt_cache
TESTS += tests/test_worker tests/test_prompt_cache
tests_test_worker_SOURCES = tests/test_worker.c tests/worker_harness.c tests/worker_harness.h \
	src/server/channel.c src/server/worker.c src/server/prompt_cache.c src/server/placement.c \
	src/server/log.c
tests_test_worker_CFLAGS = $(TEST_CFLAGS)
tests_test_worker_LDADD = $(TEST_LIBS)
tests_test_prompt_cache_SOURCES = tests/test_prompt_cache.c tests/worker_harness.h \
	src/server/prompt_cache.c src/server/channel.c
tests_test_prompt_cache_CFLAGS = $(TEST_CFLAGS)
tests_test_prompt_cache_LDADD = $(TEST_LIBS)

tests_test_openai_SOURCES = tests/test_openai.c src/server/openai.c
tests_test_openai_CFLAGS = $(TEST_CFLAGS)
tests_test_openai_LDADD = $(TEST_LIBS)

tests_test_metrics_SOURCES = tests/test_metrics.c src/server/metrics.c src/server/log.c
tests_test_metrics_CFLAGS = $(TEST_CFLAGS)
tests_test_metrics_LDADD = $(TEST_LIBS)

tests_test_weights_SOURCES = tests/test_weights.c src/server/weights.c
tests_test_weights_CFLAGS = $(TEST_CFLAGS)
tests_test_weights_LDADD = $(TEST_LIBS)

tests_test_scheduler_SOURCES = tests/test_scheduler.c src/server/scheduler.c src/server/queue.c
tests_test_scheduler_CFLAGS = $(TEST_CFLAGS)
tests_test_scheduler_LDADD = $(TEST_LIBS)

# Admission: the wait queue's order (priority, fair share, reserved slots) and the per-key
# limits (auth, classes, max_concurrent, tokens per minute).
check_PROGRAMS += tests/test_queue tests/test_limits
TESTS += tests/test_queue tests/test_limits
tests_test_queue_SOURCES = tests/test_queue.c src/server/queue.c
tests_test_queue_CFLAGS = $(TEST_CFLAGS)
tests_test_queue_LDADD = $(TEST_LIBS)
tests_test_limits_SOURCES = tests/test_limits.c src/server/limits.c src/server/config.c
tests_test_limits_CFLAGS = $(TEST_CFLAGS)
tests_test_limits_LDADD = $(TEST_LIBS)

# Integration: bitnetd ($BN_BITNETD) on loopback with a tiny synthetic model: the API, faults
# (slow clients, queue, cancellation, killed workers), operations (signals, -t, daemon, memory),
# and the official OpenAI Node SDK against it (skipped without node and tests/node/node_modules).
tests_test_server_api_SOURCES = tests/test_server_api.c tests/server_harness.c tests/server_harness.h
tests_test_server_api_CFLAGS = $(TEST_CFLAGS)
tests_test_server_api_LDADD = $(TEST_LIBS)

tests_test_server_faults_SOURCES = tests/test_server_faults.c tests/server_harness.c \
	tests/server_harness.h
tests_test_server_faults_CFLAGS = $(TEST_CFLAGS)
tests_test_server_faults_LDADD = $(TEST_LIBS)

tests_test_server_ops_SOURCES = tests/test_server_ops.c tests/server_harness.c tests/server_harness.h
tests_test_server_ops_CFLAGS = $(TEST_CFLAGS)
tests_test_server_ops_LDADD = $(TEST_LIBS)

# Multi-user serving end to end: slots give the same results, routing by prefix, priorities
# under saturation, per-key 429s, a worker killed with full slots.
check_PROGRAMS += tests/test_server_slots
TESTS += tests/test_server_slots
tests_test_server_slots_SOURCES = tests/test_server_slots.c tests/server_harness.c tests/server_harness.h
tests_test_server_slots_CFLAGS = $(TEST_CFLAGS)
tests_test_server_slots_LDADD = $(TEST_LIBS)

# Every BitNet family (2B-4T, 1bitLLM SentencePiece, Llama3-8B-1.58, Falcon3) served end to
# end and checked against `bitnet run` / `bitnet tokenize`.
check_PROGRAMS += tests/test_server_families
TESTS += tests/test_server_families
tests_test_server_families_SOURCES = tests/test_server_families.c tests/server_harness.c \
	tests/server_harness.h
tests_test_server_families_CFLAGS = $(TEST_CFLAGS)
tests_test_server_families_LDADD = $(TEST_LIBS)

EXTRA_DIST += tests/test_node_sdk.sh tests/node/package.json tests/node/package-lock.json \
	tests/node/sdk.test.mjs tests/node/README.md

# A fake OpenAI SSE server inside the test, and $BN_BITNET loadtest against it: no harness.
tests_test_loadtest_SOURCES = tests/test_loadtest.c
EXTRA_DIST += bench/loadtest_prompts.jsonl
tests_test_loadtest_CFLAGS = $(TEST_CFLAGS)
tests_test_loadtest_LDADD = $(TEST_LIBS)
endif
TESTS += tests/test_nginx.sh
EXTRA_DIST += tests/test_nginx.sh
EXTRA_DIST += tests/browser/package.json tests/browser/package-lock.json tests/browser/chat_page.test.mjs
