#!/bin/sh
# Decode speed per family shape, bitnetd beside bitnet.cpp on the same GGUF file: for each
# preset, `bitnet mkmodel -f gguf-i2_s` writes the file as bitnet.cpp's converter would, bitnetd
# converts it, and both decode N tokens at T threads, alternating runs in the same minutes.
#
#   bench/bench_families.sh [BUILD_DIR] [MODEL_DIR] [LLAMA_BENCH]
#
# Defaults: BUILD_DIR ., MODEL_DIR BUILD_DIR/bench-models, LLAMA_BENCH
# ../shared/peers/bitnet.cpp-2025/bin/llama-bench (skipped with a message when absent).
# PRESETS (default "2b4t llama3-8b-1.58 falcon3-3b-1.58"), THREADS (2), N (64), REPS (3).
# Run on an otherwise idle machine (see bench_engine.sh); compare the ratio, not absolutes.
set -eu
build=${1:-.}
models=${2:-$build/bench-models}
peer=${3:-../shared/peers/bitnet.cpp-2025/bin/llama-bench}
bitnet=$build/bitnet
presets=${PRESETS:-2b4t llama3-8b-1.58 falcon3-3b-1.58}
threads=${THREADS:-2}
n=${N:-64}
reps=${REPS:-3}
mkdir -p "$models"

for p in $presets; do
    g=$models/$p-i2_s.gguf
    b=$models/$p.bnpk
    [ -f "$g" ] || "$bitnet" mkmodel -f gguf-i2_s "$p" "$g"
    [ -f "$b" ] || "$bitnet" convert "$g" "$b"
    echo "## $p: tg$n at $threads threads"
    for r in $(seq "$reps"); do
        "$bitnet" bench -m "$b" -p 0 -n "$n" -t "$threads" -r 1 | tail -n 1
        if [ -x "$peer" ]; then
            "$peer" -m "$g" -p 0 -n "$n" -t "$threads" -r 1 2>/dev/null | grep -E "tg$n" || true
        else
            echo "(bitnet.cpp's llama-bench not found at $peer: skipped)"
        fi
    done
done
