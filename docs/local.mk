dist_doc_DATA += docs/model-format.md docs/models.md docs/bitnet-model.md docs/config.md docs/server.md docs/benchmarks.md
# The manuals: bitnetd(8), bitnetd.conf(5), bitnet(1).
dist_man_MANS = docs/bitnetd.8 docs/bitnetd.conf.5 docs/bitnet.1
EXTRA_DIST += conf/README.md .ci/valgrind-tests docs/deploy.md
