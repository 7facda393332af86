#!/bin/sh
# Engine figures on the synthetic 2b4t shape: prefill/decode speed (llama-bench style), the
# roofline and per-kernel split of a decoded token, int8 vs f16 lm_head agreement, peak RSS.
#
#   bench/bench_engine.sh [BUILD_DIR] [MODEL_DIR]
#
# BUILD_DIR holds the built `bitnet` (default: .); MODEL_DIR caches the generated models
# (default: BUILD_DIR/bench-models). Speed targets on a 2-core machine (2b4t): tg128 >= 36 tok/s
# at 2 threads, pp512 >= 138 tok/s. Run on an otherwise idle machine: with other processes on
# the cores, OpenMP barriers wait for descheduled threads and multi-thread figures collapse.
set -eu
build=${1:-.}
models=${2:-$build/bench-models}
bitnet=$build/bitnet
mkdir -p "$models"

for fmt in t5 i2; do
    m=$models/2b4t-$fmt.bin
    [ -f "$m" ] || "$bitnet" mkmodel --ternary "$fmt" 2b4t "$m"
done

for fmt in t5 i2; do
    m=$models/2b4t-$fmt.bin
    echo "## 2b4t, $fmt packing"
    "$bitnet" bench -m "$m" -p 512 -n 128 -t 1,2 -r 5 --roofline
    "$bitnet" bench -m "$m" -p 0 -n 128 -t 2 -r 3 --lm-head f16
done

echo "## int8 lm_head: top-1 agreement with f16"
"$bitnet" bench -m "$models/2b4t-t5.bin" -p 256 -n 0 -r 1 --agreement
