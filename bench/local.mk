EXTRA_DIST += bench/bench_convert.sh bench/README.md
