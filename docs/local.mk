dist_doc_DATA += docs/model-format.md docs/config.md docs/server.md docs/benchmarks.md
EXTRA_DIST += conf/README.md .ci/valgrind-tests docs/deploy.md
