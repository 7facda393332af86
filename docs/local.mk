dist_doc_DATA += docs/model-format.md docs/config.md docs/server.md
EXTRA_DIST += conf/README.md packaging/install-deps.sh .ci/valgrind-tests
