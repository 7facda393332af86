#!/bin/sh
# Writes a bitnetd.conf sized for this machine: the shipped configuration (every key with its
# default, as `bitnetd --dump-config` prints it, i.e. conf/bitnetd.conf) with listen, model,
# workers, threads, cpus and n_ctx replaced in place by values derived from the CPUs and the
# memory this process may use (its CPU set, cgroup CPU quota and memory limit included).
#
#   packaging/scripts/write-config.sh [options] [KEY=VALUE...]
#
#   -o, --out FILE      write FILE (atomically) instead of stdout
#   --base FILE         start from FILE instead of the shipped defaults
#   -m, --model PATH    the model (packed .bnpk, Hugging Face directory or GGUF)
#   --listen ADDR:PORT  repeatable (default 0.0.0.0:30000: every interface, for VMs and containers)
#   --plan PLAN         users (default): workers of about 4 threads, as many as the cores allow
#                         (more concurrent users); latency: one worker on every core (fastest
#                         single stream); auto: leave it to bitnetd (one worker per L3/NUMA domain)
#   --threads N         threads per worker (plan users: exactly N; default about 4)
#   --workers N         number of workers (threads: the cores divided among them)
#   --cores N           plan for N physical cores instead of counting them (tests, or to leave
#                         cores to other programs); --cpus LIST: use only these CPUs
#   --smt               count hardware threads, not cores (writes smt = on)
#   --memory SIZE       plan the KV caches in SIZE (bytes, or k/m/g/t) instead of the RAM/limit
#   --n-ctx N|auto      KV positions per worker; auto (default): the model's maximum when the
#                         memory holds it for every worker, else the most that fits
#   --api-keys LIST     comma-separated keys clients must send (Authorization: Bearer KEY)
#   --cache-dir DIR     conversion cache (default: $BITNET_CACHE when set)
#   KEY=VALUE           any other bitnetd key, applied last (checked by `bitnetd -t`)
#
# Each option has an environment default: BITNETD_MODEL, BITNETD_LISTEN (comma-separated),
# BITNETD_PLAN, BITNETD_THREADS, BITNETD_WORKERS, BITNETD_CORES, BITNETD_CPUS, BITNETD_MEMORY,
# BITNETD_N_CTX, BITNETD_API_KEYS; an empty one counts as unset. BITNETD_BIN: the bitnetd binary.
set -eu
scripts_dir=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$scripts_dir/../.." && pwd)
# shellcheck source=common.sh
. "$scripts_dir/common.sh"

out=
base=
model=${BITNETD_MODEL:-}
listen=
plan=${BITNETD_PLAN:-users}
threads=${BITNETD_THREADS:-}
workers=${BITNETD_WORKERS:-}
cores=${BITNETD_CORES:-}
cpus=${BITNETD_CPUS:-}
memory=${BITNETD_MEMORY:-}
n_ctx=${BITNETD_N_CTX:-auto}
api_keys=${BITNETD_API_KEYS:-}
cache_dir=${BITNET_CACHE:-}
smt=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/write-config.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
: >"$tmp/extra"
while [ $# -gt 0 ]; do
    case "$1" in
    -o | --out) need_arg "$1" $#; out=$2; shift ;;
    --base) need_arg "$1" $#; base=$2; shift ;;
    -m | --model) need_arg "$1" $#; model=$2; shift ;;
    --listen) need_arg "$1" $#; listen="$listen${listen:+,}$2"; shift ;;
    --plan) need_arg "$1" $#; plan=$2; shift ;;
    --threads) need_arg "$1" $#; threads=$2; shift ;;
    --workers) need_arg "$1" $#; workers=$2; shift ;;
    --cores) need_arg "$1" $#; cores=$2; shift ;;
    --cpus) need_arg "$1" $#; cpus=$2; shift ;;
    --smt) smt=1 ;;
    --memory) need_arg "$1" $#; memory=$2; shift ;;
    --n-ctx) need_arg "$1" $#; n_ctx=$2; shift ;;
    --api-keys) need_arg "$1" $#; api_keys=$2; shift ;;
    --cache-dir) need_arg "$1" $#; cache_dir=$2; shift ;;
    -h | --help) sed -n '2,32s/^# \{0,1\}//p' "$0"; exit 0 ;;
    [a-z]*=*)
        key=${1%%=*}
        case "$key" in *[!a-z_]*) usage_error "'$key' is not a configuration key" ;; esac
        printf '%s\n' "$1" >>"$tmp/extra"
        ;;
    *) usage_error "unknown argument '$1'" ;;
    esac
    shift
done
[ -n "$listen" ] || listen=${BITNETD_LISTEN:-0.0.0.0:30000}
case "$plan" in users | latency | auto) ;; *) usage_error "--plan: '$plan' is not users, latency or auto" ;; esac
for v in threads workers cores; do
    eval "val=\$$v"
    [ -z "$val" ] || { is_uint "$val" && [ "$val" -ge 1 ] && [ "$val" -le 1024 ]; } ||
        usage_error "--$v: '$val' is not a whole number 1..1024"
done
case "$n_ctx" in auto) ;; *) is_uint "$n_ctx" || usage_error "--n-ctx: '$n_ctx' is not auto or a whole number" ;; esac

# ---- what this machine gives us ------------------------------------------------------------

# expand_list "0-3,8" -> one CPU number a line
expand_list() {
    printf '%s\n' "$1" | tr ',' '\n' | awk -F- '
        /^[0-9]+(-[0-9]+)?$/ { hi = (NF == 2) ? $2 : $1; for (c = $1; c <= hi; c++) print c; next }
        NF { bad = 1 } END { exit bad }'
}

# Physical cores (or hardware threads with --smt) among the CPUs in $1, from lscpu; nproc
# when lscpu cannot tell cores apart.
count_cores() {
    expand_list "$1" >"$tmp/allowed" || die "bad CPU list '$1'"
    if command -v lscpu >/dev/null 2>&1 && lscpu -p=CPU,CORE,SOCKET >"$tmp/lscpu" 2>/dev/null; then
        awk -F, -v smt="$smt" 'NR == FNR { ok[$1] = 1; next }
            /^#/ || !($1 in ok) { next }
            { if (smt || $2 == "") u[$1] = 1; else u[$3 "," $2] = 1 }
            END { n = 0; for (k in u) n++; print n }' "$tmp/allowed" "$tmp/lscpu"
    else
        wc -l <"$tmp/allowed" | tr -d ' '
    fi
}

# Whole CPUs granted by a cgroup CPU quota (docker --cpus, Kubernetes limits), or nothing.
cpu_quota() {
    cg=$(sed -n 's/^0:://p' /proc/self/cgroup 2>/dev/null | head -n 1)
    for f in "/sys/fs/cgroup$cg/cpu.max" /sys/fs/cgroup/cpu.max; do
        if [ -r "$f" ]; then
            read -r q p <"$f" || true
            [ "$q" = max ] || { is_uint "$q" && is_uint "$p" && [ "$p" -gt 0 ] && echo $(((q + p - 1) / p)); }
            return
        fi
    done
    f=/sys/fs/cgroup/cpu/cpu.cfs_quota_us
    if [ -r "$f" ] && [ -r /sys/fs/cgroup/cpu/cpu.cfs_period_us ]; then
        q=$(cat "$f")
        p=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
        is_uint "$q" && is_uint "$p" && [ "$p" -gt 0 ] && echo $(((q + p - 1) / p))
    fi
    return 0
}

# size_bytes "8g" -> bytes
size_bytes() {
    printf '%s\n' "$1" | awk '
        /^[0-9]+[kKmMgGtT]?$/ { n = $0 + 0; u = tolower(substr($0, length($0)));
            m = (u == "k") ? 2^10 : (u == "m") ? 2^20 : (u == "g") ? 2^30 : (u == "t") ? 2^40 : 1;
            printf "%.0f\n", n * m; ok = 1 }
        END { exit !ok }'
}

# RAM, or the cgroup memory limit when lower.
memory_bytes() {
    awk '/^MemTotal:/ { printf "%.0f\n", $2 * 1024 }' /proc/meminfo >"$tmp/mem"
    cg=$(sed -n 's/^0:://p' /proc/self/cgroup 2>/dev/null | head -n 1)
    for f in "/sys/fs/cgroup$cg/memory.max" /sys/fs/cgroup/memory.max \
        /sys/fs/cgroup/memory/memory.limit_in_bytes; do
        [ -r "$f" ] && cat "$f" >>"$tmp/mem" && break
    done
    awk '/^[0-9]+$/ && ($1 < m || !m) { m = $1 } END { printf "%.0f\n", m }' "$tmp/mem"
}

# The model's KV bytes per position (f16 K and V, every layer), its largest context, and the
# memory its weights take: from the packed file or config.json; BitNet b1.58-2B-4T otherwise
# (a model not converted yet, or a GGUF), which is the largest this project ships for.
model_dims() {
    n_layer=30 n_kv=5 head_dim=128 ctx_max=4096 model_bytes=$((1536 * 1048576))
    if [ -n "$model" ] && [ -f "$model/config.json" ]; then
        # shellcheck disable=SC2020 # three characters, each to a newline
        tr -d ' \n' <"$model/config.json" | tr ',{}' '\n\n\n' >"$tmp/cfg"
        get() { sed -n "s/^\"$1\":\([0-9][0-9]*\)$/\1/p" "$tmp/cfg" | head -n 1; }
        l=$(get num_hidden_layers) h=$(get num_attention_heads) e=$(get hidden_size)
        kv=$(get num_key_value_heads) c=$(get max_position_embeddings)
        if [ -n "$l" ] && [ -n "$h" ] && [ -n "$e" ] && [ "$h" -gt 0 ]; then
            n_layer=$l head_dim=$((e / h)) n_kv=${kv:-$h}
            [ -z "$c" ] || ctx_max=$c
        fi
    elif [ -n "$model" ] && [ -f "$model" ] && bitnet=$(find_bin bitnet BITNET_BIN 2>/dev/null) &&
        "$bitnet" inspect "$model" >"$tmp/inspect" 2>/dev/null; then
        get() { sed -n "s/^$1: *\([0-9][0-9]*\)$/\1/p" "$tmp/inspect" | head -n 1; }
        l=$(get n_layer) kv=$(get n_head_kv) d=$(get head_dim) c=$(get n_ctx_max)
        if [ -n "$l" ] && [ -n "$kv" ] && [ -n "$d" ] && [ -n "$c" ]; then
            n_layer=$l n_kv=$kv head_dim=$d ctx_max=$c
            model_bytes=$(wc -c <"$model" | tr -d ' ')
        fi
    fi
    kv_per_pos=$((2 * n_layer * n_kv * head_dim * 2))
    [ "$kv_per_pos" -gt 0 ] || kv_per_pos=76800
}

# ---- the plan ------------------------------------------------------------------------------

quota=
if [ -n "$cores" ]; then
    cores_from="given"
else
    set_list=$cpus
    [ -n "$set_list" ] || set_list=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)
    [ -n "$set_list" ] || set_list="0-$(($(nproc) - 1))"
    cores=$(count_cores "$set_list")
    cores_from="CPUs $set_list"
    quota=$(cpu_quota)
    if [ -n "$quota" ] && [ "$quota" -lt "$cores" ]; then
        cores=$quota
        cores_from="$cores_from, CPU quota $quota"
    fi
fi
[ "$cores" -ge 1 ] || die "found no usable CPU"
unit=cores
[ "$smt" -eq 0 ] || unit="hardware threads"

case "$plan" in
auto)
    [ -z "$quota" ] || [ -n "$workers$threads" ] ||
        note "a CPU quota of $quota: bitnetd's auto plan counts CPUs, not the quota (use --plan users)"
    w=${workers:-auto} t=${threads:-auto}
    ;;
latency)
    w=${workers:-1}
    t=${threads:-$((cores / w))}
    ;;
users)
    if [ -n "$workers" ]; then
        w=$workers t=${threads:-$((cores / workers))}
    elif [ -n "$threads" ]; then
        t=$threads w=$((cores / threads))
        [ "$w" -ge 1 ] || { w=1 t=$cores; }
    else
        # workers of about 4 threads: a starting point, to be measured (docs/deploy.md, sizing)
        w=$(((cores + 2) / 4))
        [ "$w" -ge 1 ] || w=1
        t=$((cores / w))
    fi
    ;;
esac
if [ "$w" != auto ] && [ "$t" != auto ]; then
    [ "$t" -ge 1 ] || die "$w workers on $cores $unit leave no thread per worker"
    [ $((w * t)) -le "$cores" ] ||
        die "$w workers x $t threads need $((w * t)) $unit; $cores are usable ($cores_from)"
fi

# bitnetd resolves relative paths from its own working directory: write absolute ones.
absolute() {
    case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$(pwd)" "$1" ;;
    esac
}
[ -z "$model" ] || model=$(absolute "$model")
[ -z "$cache_dir" ] || cache_dir=$(absolute "$cache_dir")

model_dims
mem=
if [ -n "$memory" ]; then
    mem=$(size_bytes "$memory") || usage_error "--memory: '$memory' is not a size (bytes, k, m, g, t)"
else
    mem=$(memory_bytes)
fi
if [ "$n_ctx" = auto ]; then
    if [ "$w" = auto ] || [ -z "$mem" ]; then
        n_ctx=0
    else
        # KV caches share what the weights (page cache), the master and scratch leave.
        spare=$((mem - model_bytes - 536870912 - w * 67108864))
        fit=$((spare / w / kv_per_pos / 256 * 256))
        if [ "$spare" -le 0 ] || [ "$fit" -lt 256 ]; then
            die "$((mem >> 20)) MiB of memory cannot hold the model and $w KV caches of 256 positions: use fewer workers (--workers) or a bigger machine"
        fi
        if [ "$fit" -ge "$ctx_max" ]; then n_ctx=0; else n_ctx=$fit; fi
    fi
fi

# ---- the file ------------------------------------------------------------------------------

# quote VALUE: bare when safe, else "..." with \ and " escaped (docs/config.md, Syntax).
quote() {
    case "$1" in
    *'	'* | *'
'*) die "a value with a tab or a newline cannot be written: '$1'" ;;
    '') printf '\n' ;;  # an empty value unsets an optional key
    *[!A-Za-z0-9_./:,@+*=\[\]-]*)
        printf '"%s"\n' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')" ;;
    *) printf '%s\n' "$1" ;;
    esac
}

# set_key SOURCE KEY VALUE: one line of the table the merge reads (d: derived, x: extra).
set_key() {
    printf '%s\t%s\t%s\n' "$1" "$2" "$(quote "$3")" >>"$tmp/keys"
}

: >"$tmp/keys"
old_ifs=$IFS
IFS=,
for a in $listen; do
    IFS=$old_ifs
    set_key d listen "$a"
done
IFS=$old_ifs
[ -z "$model" ] || set_key d model "$model"
[ -z "$cache_dir" ] || set_key d cache_dir "$cache_dir"
[ -z "$cpus" ] || set_key d cpus "$cpus"
set_key d workers "$w"
set_key d threads "$t"
[ "$smt" -eq 0 ] || set_key d smt on
set_key d n_ctx "$n_ctx"
[ -z "$api_keys" ] || set_key d api_keys "$api_keys"
while IFS= read -r kv; do
    set_key x "${kv%%=*}" "${kv#*=}"
done <"$tmp/extra"

bitnetd=
if [ -n "$base" ]; then
    [ -r "$base" ] || die "cannot read --base $base"
    cp "$base" "$tmp/base"
else
    bitnetd=$(find_bin bitnetd BITNETD_BIN)
    "$bitnetd" --dump-config >"$tmp/base" || die "$bitnetd --dump-config failed"
fi

summary="$cores $unit ($cores_from), $((mem >> 20)) MiB; plan $plan: workers $w x threads $t, n_ctx $n_ctx"
{
    printf '# Written by packaging/scripts/write-config.sh on %s, %s:\n' \
        "$(uname -n)" "$(date -u +%Y-%m-%dT%H:%MZ)"
    printf '#   %s.\n' "$summary"
    printf '# The keys it sets replace the defaults in place; pass KEY=VALUE to it to set others.\n\n'
    # Each overridden key's lines (its `#key =` placeholder, or `key = ...`) become the new
    # lines, at the first one's place; keys the base lacks are appended. An extra (x) wins over
    # a derived (d) value of the same key; the repeatable keys (listen, api_keys) keep every
    # value, the others their last one.
    awk -F'\t' 'NR == FNR {
            if ($1 == "x" && !(($2) in xk)) { xk[$2] = 1; vals[$2] = "" }
            if ($1 == "d" && (($2) in xk)) next
            if (!(($2) in vals) || vals[$2] == "") order[++n] = $2
            line = $2 " =" ($3 == "" ? "" : " " $3) "\n"
            vals[$2] = ($2 == "listen" || $2 == "api_keys") ? vals[$2] line : line
            next
        }
        {
            key = ""
            if (match($0, /^[a-z_]+[ \t]*=/) || match($0, /^#[a-z_]+ =/)) {
                key = substr($0, 1, RLENGTH); sub(/^#/, "", key); sub(/[ \t]*=$/, "", key)
            }
            if (key != "" && (key in vals)) {
                if (!(key in done)) { printf "%s", vals[key]; done[key] = 1 }
                next
            }
            print
        }
        END {
            for (i = 1; i <= n; i++) if (!(order[i] in done)) {
                if (!added++) print "\n# ---- added by write-config.sh"
                printf "%s", vals[order[i]]; done[order[i]] = 1
            }
        }' "$tmp/keys" "$tmp/base"
} >"$tmp/out"

if [ -z "$api_keys" ] && ! grep -q '^api_keys *=' "$tmp/out"; then
    IFS=,
    for a in $listen; do
        case "$a" in
        127.* | localhost:* | '[::1]:'*) ;;
        *) note "listening on $a without api_keys: anyone who reaches it can use it (--api-keys)" ;;
        esac
    done
    IFS=$old_ifs
fi
note "$summary"
if [ -z "$out" ]; then
    cat "$tmp/out"
else
    mkdir -p "$(dirname "$out")"
    cp "$tmp/out" "$out.tmp.$$" || die "cannot write $out.tmp.$$"
    mv -f "$out.tmp.$$" "$out" || die "cannot rename $out.tmp.$$ to $out"
    note "wrote $out"
fi
