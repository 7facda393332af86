#!/usr/bin/env bash
# Conversion speed and memory for the 2B-4T shape, from every input format.
#   bench/bench_convert.sh [BITNET] [WORKDIR] [SHAPE]
# For each format: `bitnet mkmodel SHAPE SRC -f FORMAT`, then `bitnet convert SRC OUT` under
# /usr/bin/time; prints wall time, peak RSS, source and packed sizes, and checks that every
# route gives the same packed tensor bytes as packing the synthetic model directly.
set -euo pipefail
bitnet=${1:-./bitnet}
work=${2:-$(mktemp -d)}
shape=${3:-2b4t}
mkdir -p "$work"
"$bitnet" mkmodel "$shape" "$work/direct.bnpk" 2>/dev/null
printf '| source format | source size | convert wall s | peak RSS MiB | packed size | identical |\n|---|---|---|---|---|---|\n'
for fmt in hf hf-bf16 hf-sharded gguf-i2_s gguf-tq2_0 gguf-f16; do
    src="$work/src-$fmt"
    "$bitnet" mkmodel "$shape" "$src" -f "$fmt" 2>/dev/null
    ssize=$(du -sb "$src" | cut -f1)
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true   # cold-ish source (if permitted)
    /usr/bin/time -f '%e %M' -o "$work/time" "$bitnet" convert "$src" "$work/out.bnpk" 2>/dev/null
    read -r wall rss_kb < "$work/time"
    psize=$(stat -c %s "$work/out.bnpk")
    # Tensor data and tokenizer must match the direct packing (provenance text differs).
    data_off=$(od -An -t u8 -j 32 -N 8 "$work/out.bnpk" | tr -d ' ')
    if cmp -s <(tail -c +$((data_off + 1)) "$work/out.bnpk") <(tail -c +$((data_off + 1)) "$work/direct.bnpk"); then same=yes; else same=NO; fi
    awk -v f="$fmt" -v s="$ssize" -v w="$wall" -v r="$rss_kb" -v p="$psize" -v same="$same" \
        'BEGIN { printf "| %s | %.2f GB | %s | %.0f | %.3f GB | %s |\n", f, s / 1e9, w, r / 1024, p / 1e9, same }'
    rm -rf "$src" "$work/out.bnpk"
done
rm -f "$work/direct.bnpk" "$work/time"
