EXTRA_DIST += bench/bench_convert.sh bench/bench_engine.sh bench/bench_families.sh bench/README.md
EXTRA_DIST += bench/bench_server.sh
EXTRA_DIST += bench/bench_multiuser.sh
