#!/usr/bin/env bash
# Server figures: bitnetd's overhead over the bare engine, a workers x threads table under
# concurrent streaming users, weights = mmap vs shm, a side-by-side with bitnet.cpp's
# llama-server on the same weights, and /health latency with every worker busy.
#
#   bench/bench_server.sh [options]            the benchmark (bench/README.md, "Server")
#   bench/bench_server.sh health --url URL     /health latency of a running server
#
# Every server is started here on 127.0.0.1 and killed on any exit. Run the full benchmark on an
# otherwise idle machine; --quick (small shape, a few requests, ~1 minute) is the smoke test.
set -u -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
srcdir=$(dirname "$here")

usage() {
    cat <<EOF
usage: bench/bench_server.sh [options]
       bench/bench_server.sh health [--url URL] [-n N] [--raw FILE]

  --shape S          2b4t (default) or small (any mkmodel shape)
  --tokenizer F      HF tokenizer.json whose vocabulary the model gets (n_vocab follows it), or
                     none: the built-in one (default: ../shared/fixtures/tokenizer/llama3-tokenizer.json)
  --out DIR          raw JSON, logs and tables (default: bench-server-YYYYmmdd-HHMMSS)
  --models DIR       cache of generated models (default: BUILD/bench-models)
  --build DIR        where bitnet and bitnetd are (default: .)
  --llama-server F   bitnet.cpp's llama-server (default: ../shared/peers/...; none: skip step 5)
  --cpus LIST        CPUs to use, e.g. 0-15 (default: every CPU this shell may use)
  --split LIST       workers x threads splits for step 3, e.g. 1x16,2x8,4x4,8x2
                     (default: every W dividing the core count N with N/W >= 2; 1xN, Nx1 on <= 2 cores)
  --serve-split WxT  the split for the 4-user side-by-side and the /health step
                     (default: step 3's best aggregate tok/s at 4 users, else 1xN)
  --per-user N       requests per concurrent user in steps 3 and 5 (default 4)
  --max-tokens N     completion tokens per request in steps 3 and 5 (default 64)
  --temperature T    sent with every request (default 0: greedy, the same tokens on both servers)
  --steps LIST       steps to run, e.g. 2,3 (default 1-6; 1, model prep, always runs)
  --quick            smoke test: small shape, 2 requests per user, 16 tokens, ~1 minute
  -h, --help         this help

Steps: 1 model prep; 2 server overhead; 3 workers x threads; 4 mmap vs shm;
5 vs llama-server; 6 /health under load.
EOF
}

note() { echo "bench_server: $*" >&2; }
die() { note "$*"; exit 1; }

# ---- /health latency (step 6, and the `health` subcommand) ----

# N sequential GET URL/health, each timed by curl itself; RAW gets one line per GET:
# "seconds<TAB>http_code<TAB>body" (the body says whether every worker was busy at that moment).
probe_health() {
    local url=$1 n=$2 raw=$3 body=$3.body i
    : >"$raw"
    for ((i = 0; i < n; i++)); do
        : >"$body"
        curl -s -o "$body" --max-time 5 -w '%{time_total}\t%{http_code}\t' "$url/health" >>"$raw"
        { tr -d '\n\t' <"$body"; echo; } >>"$raw"
    done
    rm -f "$body"
}

# RAW from probe_health -> "ok p50_ms p99_ms max_ms failed loaded": nearest-rank percentiles
# of the 200s; loaded = GETs answered while every worker was busy and a request queued.
health_stats() {
    local failed loaded
    failed=$(awk -F'\t' '$2 != 200' "$1" | wc -l)
    loaded=$(cut -f3- "$1" | jq -cR 'fromjson? // {} | .workers.busy as $b
        | select($b != null and $b == .workers.total and .queue.length > 0)' 2>/dev/null | grep -c '^{')
    awk -F'\t' '$2 == 200 { printf "%.3f\n", $1 * 1000 }' "$1" | sort -n | awk -v f="$failed" -v l="$loaded" '
        function rank(q,   i) { i = int(q * NR); if (i < q * NR) i++; return v[i < 1 ? 1 : i] }
        { v[NR] = $1 }
        END { if (NR == 0) print 0, "-", "-", "-", f + 0, l + 0
              else print NR, rank(0.50), rank(0.99), v[NR], f + 0, l + 0 }'
}

health_json() { # RAW -> the stats as a JSON object
    local s
    read -ra s < <(health_stats "$1")
    jq -n --argjson ok "${s[0]}" --arg p50 "${s[1]}" --arg p99 "${s[2]}" --arg max "${s[3]}" \
        --argjson failed "${s[4]}" --argjson loaded "${s[5]}" \
        '{ok: $ok, failed: $failed, p50_ms: ($p50 | tonumber? // null),
          p99_ms: ($p99 | tonumber? // null), max_ms: ($max | tonumber? // null),
          all_busy_and_queued: $loaded}'
}

health_main() {
    local url=http://127.0.0.1:30000 n=200 raw=
    while [ $# -gt 0 ]; do
        case $1 in
        --url) url=$2; shift ;;
        -n) n=$2; shift ;;
        --raw) raw=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "health: unknown option $1" ;;
        esac
        shift
    done
    command -v curl >/dev/null || die "curl is missing (apt-get install -y curl)"
    local tmp=${raw:-$(mktemp)}
    probe_health "${url%/}" "$n" "$tmp"
    local s
    read -ra s < <(health_stats "$tmp")
    [ -z "$raw" ] && rm -f "$tmp"
    echo "GET ${url%/}/health x $n: p50 ${s[1]} ms, p99 ${s[2]} ms, max ${s[3]} ms, failed ${s[4]}," \
        "answered with every worker busy and a queue: ${s[5]}"
    [ "${s[0]}" -gt 0 ]
}

if [ "${1:-}" = health ]; then
    shift
    health_main "$@"
    exit
fi

# ---- options ----

shape='' tokenizer=auto out='' models='' build=. cpus='' splits='' serve_split='' steps=1,2,3,4,5,6
llama=$(dirname "$srcdir")/shared/peers/bitnet.cpp-2025/bin/llama-server
per_user='' max_tokens='' temperature=0 seed=1 quick=0
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1; shift; continue ;;
    -h | --help) usage; exit 0 ;;
    --shape | --tokenizer | --out | --models | --build | --llama-server | --cpus | --split | \
        --serve-split | --per-user | --max-tokens | --temperature | --steps)
        [ $# -ge 2 ] || die "$1 needs a value (--help)" ;;
    *) usage >&2; die "unknown option $1" ;;
    esac
    case $1 in
    --shape) shape=$2 ;;
    --tokenizer) tokenizer=$2 ;;
    --out) out=$2 ;;
    --models) models=$2 ;;
    --build) build=$2 ;;
    --llama-server) llama=$2 ;;
    --cpus) cpus=$2 ;;
    --split) splits=$2 ;;
    --serve-split) serve_split=$2 ;;
    --per-user) per_user=$2 ;;
    --max-tokens) max_tokens=$2 ;;
    --temperature) temperature=$2 ;;
    --steps) steps=$2 ;;
    esac
    shift 2
done
for v in "$per_user" "$max_tokens"; do
    [ -z "$v" ] || [[ $v =~ ^[1-9][0-9]*$ ]] || die "--per-user and --max-tokens take a positive integer, not '$v'"
done
[[ $steps =~ ^[1-6,-]+$ ]] || die "bad --steps '$steps' (e.g. 2,3,5)"

# One table of per-mode sizes: requests per user, tokens, decode-test requests, engine
# repetitions, /health probes, the /health load's duration and start-up bounds (seconds).
if [ $quick = 1 ]; then
    : "${shape:=small}" "${per_user:=2}" "${max_tokens:=16}"
    dec_requests=2 bench_reps=1 health_n=100 load_s=20 ready_s=60
else
    : "${shape:=2b4t}" "${per_user:=4}" "${max_tokens:=64}"
    dec_requests=3 bench_reps=3 health_n=200 load_s=120 ready_s=300
fi
dec_tokens=128 # decode tests (steps 2, 4): bitnet bench's tg128
load_tokens=256 # step 6: long requests, so the queue never drains during the probe
lt_timeout=600 # per request: a queued request on a slow machine may wait minutes

step_on() { [ "$1" = 1 ] || [[ ",$steps," == *",$1,"* ]]; }

bitnet=$build/bitnet bitnetd=$build/bitnetd
for b in "$bitnet" "$bitnetd"; do
    [ -x "$b" ] || die "$b is missing or not executable (build it: make ${b##*/}; or pass --build DIR)"
done
for t in curl jq awk; do
    command -v $t >/dev/null || die "$t is missing (apt-get install -y $t)"
done
command -v setsid >/dev/null || die "setsid is missing (util-linux)"
"$bitnet" loadtest --help >/dev/null 2>&1 || die "$bitnet has no working loadtest command"

if [ "$tokenizer" = auto ]; then
    tokenizer=$(dirname "$srcdir")/shared/fixtures/tokenizer/llama3-tokenizer.json
    [ -f "$tokenizer" ] || { note "no $tokenizer: built-in vocabulary (most sampled ids then" \
        "render as nothing, and TTFT, ITL and per-user tok/s lose their meaning)"; tokenizer=none; }
fi
[ "$tokenizer" = none ] || [ -f "$tokenizer" ] || die "tokenizer $tokenizer not found"

: "${out:=bench-server-$(date +%Y%m%d-%H%M%S)}" "${models:=$build/bench-models}"
logs=$out/logs
mkdir -p "$out" "$logs" "$models" || die "cannot create $out or $models"
out=$(cd "$out" && pwd) logs=$out/logs

# ---- CPUs: N physical cores, one logical CPU of each (for bitnet bench and llama-server) ----

expand_list() { # "0-3,8" -> one CPU per line
    echo "$1" | tr ',' '\n' | awk -F- 'NF == 1 && $1 != "" { print $1 }
        NF == 2 { for (i = $1; i <= $2; i++) print i }'
}
steps=$(expand_list "$steps" | paste -sd, -)
if [ -n "$cpus" ]; then
    allowed=$(expand_list "$cpus")
else
    allowed=$(expand_list "$(awk '/^Cpus_allowed_list/ { print $2 }' /proc/self/status)")
fi
[ -n "$allowed" ] || die "no usable CPU in '${cpus:-the affinity mask}'"
if command -v lscpu >/dev/null; then
    core_cpus=$(lscpu -p=CPU,CORE,SOCKET | grep -v '^#' | awk -F, -v list="$(echo "$allowed" | paste -sd' ' -)" '
        BEGIN { n = split(list, a, " "); for (i = 1; i <= n; i++) ok[a[i]] = 1 }
        ($1 in ok) && !seen[$3 "," $2]++ { print $1 }')
fi
[ -n "${core_cpus:-}" ] || core_cpus=$allowed
ncores=$(echo "$core_cpus" | wc -l)
core_list=$(echo "$core_cpus" | paste -sd, -)
pin() { # run on one logical CPU per core: what bitnetd's placement does with smt = off
    if command -v taskset >/dev/null; then taskset -c "$core_list" "$@"; else "$@"; fi
}

if [ -z "$splits" ]; then
    for ((w = 1; w <= ncores; w++)); do
        ((ncores % w == 0)) && { ((ncores / w >= 2)) || ((ncores <= 2)); } && splits+=${splits:+,}${w}x$((ncores / w))
    done
fi
for s in ${splits//,/ } $serve_split; do
    [[ $s =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] || die "bad split '$s' (want WORKERSxTHREADS, e.g. 2x8)"
    ((${s%x*} * ${s#*x} <= ncores)) || note "split $s uses more threads than the $ncores cores: share_cores = on"
done

prompt_args=(--prompt-len 32)
[ -f "$here/loadtest_prompts.jsonl" ] && prompt_args=(--prompts "$here/loadtest_prompts.jsonl")

# ---- servers: one at a time, in its own process group, always killed ----

srv_pid='' srv_url='' srv_log='' bg_pid='' next_port=$((20000 + $$ % 20000)) failed_steps=''
cleanup() {
    [ -n "$bg_pid" ] && kill -TERM "$bg_pid" 2>/dev/null && wait "$bg_pid" 2>/dev/null
    stop_server
}
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT TERM HUP PIPE

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
take_port() {
    local i
    for ((i = 0; i < 200; i++)); do
        next_port=$((next_port + 1))
        port_free $next_port && return 0
    done
    note "no free port on 127.0.0.1"; return 1
}

stop_server() {
    [ -n "$srv_pid" ] || return 0
    local i
    kill -TERM -- "-$srv_pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        kill -0 "$srv_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$srv_pid" 2>/dev/null # leftovers: workers, or a master stuck draining
    wait "$srv_pid" 2>/dev/null
    srv_pid=
}

# Polls URL+PATH until it answers 2xx; fails at once if the server exits.
wait_ready() {
    local path=$1 deadline=$((SECONDS + ready_s))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$srv_pid" 2>/dev/null; then
            note "the server exited while starting; the end of $srv_log:"
            tail -n 5 "$srv_log" >&2
            return 1
        fi
        curl -sf -o /dev/null --max-time 2 "$srv_url$path" && return 0
        sleep 0.2
    done
    note "$srv_url$path not ready after $ready_s s (log: $srv_log)"
    return 1
}

health() { curl -sf --max-time 5 "$srv_url/health"; }

# bitnetd NAME WORKERS THREADS WEIGHTS: started, every worker idle, warmed up.
start_bitnetd() {
    local name=$1 w=$2 t=$3 weights=$4 conf=$logs/$1.conf i
    take_port || return 1
    {
        echo "# bench/bench_server.sh, $name"
        echo "weights = $weights"
        echo "queue_size = $((16 * w + 64))"
        echo "queue_timeout = 10m" # 4W closed-loop users on a slow machine wait several requests
        echo "access_log = off"
        echo "shutdown_timeout = 2s"
        [ -n "$cpus" ] && echo "cpus = $cpus"
        # more workers than cores (e.g. 4x1 on 2 cores): they share cores, time-sliced
        if ((w * t > ncores)); then echo "share_cores = on"; fi
    } >"$conf"
    srv_url=http://127.0.0.1:$next_port srv_log=$logs/$name.log
    setsid "$bitnetd" -c "$conf" -m "$bnpk" --listen "127.0.0.1:$next_port" \
        --workers "$w" --threads "$t" >"$srv_log" 2>&1 &
    srv_pid=$!
    wait_ready /ready || { stop_server; return 1; }
    for ((i = 0; i < 10 * ready_s; i++)); do # /ready needs one worker; the bench wants all
        [ "$(health | jq -r '.workers.idle == .workers.total')" = true ] && break
        sleep 0.1
    done
    ((i < 10 * ready_s)) || note "$name: not every worker idle after $ready_s s; measuring anyway"
    curl -sf --max-time 5 "$srv_url/v1/status" >"$logs/$name.status.json" # the placement it chose
    warm_up "$name" "$w"
}

# llama-server NAME: -t N -np 4 on one CPU per core, same model weights (GGUF).
start_llama() {
    local name=$1
    take_port || return 1
    srv_url=http://127.0.0.1:$next_port srv_log=$logs/$name.log
    if command -v taskset >/dev/null; then
        setsid taskset -c "$core_list" "$llama" -m "$gguf" -t "$ncores" -np 4 -c 4096 \
            --host 127.0.0.1 --port "$next_port" >"$srv_log" 2>&1 &
    else
        setsid "$llama" -m "$gguf" -t "$ncores" -np 4 -c 4096 \
            --host 127.0.0.1 --port "$next_port" >"$srv_log" 2>&1 &
    fi
    srv_pid=$!
    wait_ready /health || { stop_server; return 1; }
    warm_up "$name" 4
}

warm_up() { # first requests fault the weights in and fill the caches: not measured
    "$bitnet" loadtest --url "$srv_url" --users "$2" --requests "$2" --max-tokens 8 --ignore-eos \
        "${prompt_args[@]}" --json --no-progress >"$logs/$1.warmup.json" 2>&1 ||
        note "$1: warm-up requests failed (see $logs/$1.warmup.json)"
}

# loadtest NAME USERS REQUESTS MAX_TOKENS: the report in OUT/NAME.json; 1 if no request succeeded.
lt() {
    local name=$1 users=$2 req=$3 mt=$4 rc
    shift 4
    timeout --foreground -k 5 $((2 * lt_timeout)) "$bitnet" loadtest --url "$srv_url" --users "$users" \
        --requests "$req" --max-tokens "$mt" --ignore-eos "${prompt_args[@]}" --seed "$seed" \
        --temperature "$temperature" --timeout "$lt_timeout" --json --no-progress "$@" \
        >"$out/$name.json" 2>"$logs/$name.err"
    rc=$?
    ((rc == 2)) && die "loadtest refused its arguments: $(head -n 3 "$logs/$name.err")"
    ((rc == 0)) || note "$name: no request succeeded (rc $rc; $out/$name.json, $logs/$name.err)"
    return $rc
}

# ---- numbers and tables ----

jv() { jq -r "($2) // empty" "$1" 2>/dev/null; } # FILE FILTER -> value or nothing
f1() { awk -v x="${1:-}" 'BEGIN { if (x == "" || x == "null") print "-"; else printf "%.1f\n", x }'; }
ratio() { # A B -> A/B to 2 decimals, or -
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || a == "-" || b == "-" || b + 0 == 0) print "-"
        else printf "%.2f\n", a / b }'
}

# Tab-separated rows on stdin (the first is the header) -> an aligned markdown table, also
# appended to OUT/tables.md under TITLE.
table() {
    local title=$1
    { echo; echo "### $title"; echo; } | tee -a "$out/tables.md"
    awk -F'\t' '{ row[NR] = $0; for (i = 1; i <= NF; i++) if (length($i) > w[i]) w[i] = length($i)
                  if (NF > nf) nf = NF }
        END { for (r = 1; r <= NR; r++) {
                  n = split(row[r], c, "\t"); line = "|"
                  for (i = 1; i <= nf; i++) line = line sprintf(" %-*s |", w[i], c[i])
                  print line
                  if (r == 1) { line = "|"; for (i = 1; i <= nf; i++) line = line " " dashes(w[i]) " |"
                                print line } } }
        function dashes(n,   s) { s = ""; while (n-- > 0) s = s "-"; return s }' | tee -a "$out/tables.md"
}

summary_rows=$logs/summary.tsv
: >"$summary_rows"
sum() { printf '%s\t%s\n' "$1" "$2" >>"$summary_rows"; } # KEY VALUE for the final table
fail_step() { note "step $1 failed: $2"; failed_steps+=" $1"; }

# agg tok/s, per-user decode tok/s (mean), TTFT p50, TTFT p99, ok/failed of a loadtest report.
lt_cols() {
    local f=$1
    printf '%s\t%s\t%s\t%s\t%s/%s' "$(f1 "$(jv "$f" .output_tok_s)")" \
        "$(f1 "$(jv "$f" .decode_tok_s.mean)")" "$(f1 "$(jv "$f" .ttft_ms.p50)")" \
        "$(f1 "$(jv "$f" .ttft_ms.p99)")" "$(jv "$f" .requests_ok)" "$(jv "$f" .requests_failed)"
}

# ---- meta ----

load_now() { cut -d' ' -f1 /proc/loadavg; }
jq -n --arg date "$(date -Is)" --arg host "$(uname -n)" --arg kernel "$(uname -r)" \
    --arg cpu "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p')" --argjson cores "$ncores" \
    --arg core_cpus "$core_list" --arg cpus "$cpus" --arg splits "$splits" --arg shape "$shape" \
    --arg tokenizer "$tokenizer" --argjson quick "$quick" --argjson per_user "$per_user" \
    --argjson max_tokens "$max_tokens" --arg temperature "$temperature" --arg load "$(load_now)" \
    --arg bitnetd "$("$bitnetd" -V 2>&1 | head -n 1)" \
    '{date: $date, host: $host, kernel: $kernel, cpu: $cpu, cores: $cores, core_cpus: $core_cpus,
      cpus: $cpus, splits: $splits, shape: $shape, tokenizer: $tokenizer, quick: ($quick == 1),
      per_user: $per_user, max_tokens: $max_tokens, temperature: $temperature,
      load_at_start: $load, bitnetd: $bitnetd}' >"$out/meta.json"
echo "bench_server: $shape, $ncores cores (CPUs $core_list), splits $splits, out $out"
awk -v l="$(load_now)" -v n="$ncores" 'BEGIN { exit !(l > 0.3 * n) }' &&
    note "warning: load average $(load_now) on $ncores cores: the machine is not idle, figures will be noisy"

# ---- 1. model prep: one set of weights, as GGUF (llama-server) and converted to packed ----

tag=$shape
spec=$shape
if [ "$tokenizer" != none ]; then
    nv=$(jq '[.model.vocab[]] + [.added_tokens[]?.id] | max + 1' "$tokenizer") ||
        die "cannot read the vocabulary size of $tokenizer"
    tb=${tokenizer##*/}
    tag=$shape-${tb%.json}
    spec="$shape,n_vocab=$nv"
fi
tag=${tag//[^A-Za-z0-9._-]/_}
gguf=$models/server-$tag.gguf bnpk=$models/server-$tag.bnpk
t0=$SECONDS
if [ ! -f "$gguf" ]; then
    echo "## 1. model prep: $spec -> $gguf"
    tok_args=()
    [ "$tokenizer" != none ] && tok_args=(-t "$tokenizer")
    "$bitnet" mkmodel -f gguf-i2_s "${tok_args[@]}" "$spec" "$gguf.tmp" >"$logs/mkmodel.log" 2>&1 &&
        mv "$gguf.tmp" "$gguf" || { cat "$logs/mkmodel.log" >&2; die "mkmodel failed"; }
fi
if [ ! -f "$bnpk" ] || [ "$bnpk" -ot "$gguf" ]; then
    "$bitnet" convert "$gguf" "$bnpk" >"$logs/convert.log" 2>&1 ||
        { cat "$logs/convert.log" >&2; die "convert failed"; }
fi
jq -n --arg spec "$spec" --arg gguf "$gguf" --arg bnpk "$bnpk" --arg tok "$tokenizer" \
    --argjson gsz "$(stat -c %s "$gguf")" --argjson psz "$(stat -c %s "$bnpk")" \
    --argjson s $((SECONDS - t0)) \
    '{shape: $spec, tokenizer: $tok, gguf: $gguf, gguf_bytes: $gsz, packed: $bnpk,
      packed_bytes: $psz, prep_s: $s}' >"$out/01-models.json"
printf 'file\tbytes\n%s\t%s\n%s\t%s\n' "${gguf##*/}" "$(stat -c %s "$gguf")" \
    "${bnpk##*/}" "$(stat -c %s "$bnpk")" | table "1. models ($spec, same weights)"

# ---- 2. server overhead: the engine alone vs one streaming user through bitnetd ----

step2() {
    echo "## 2. server overhead: bitnet bench tg$dec_tokens vs 1 user through bitnetd (1x$ncores)"
    pin "$bitnet" bench -m "$bnpk" -p 0 -n "$dec_tokens" -t "$ncores" -r "$bench_reps" --pin \
        >"$out/02-engine.txt" 2>"$logs/02-engine.err" || { fail_step 2 "bitnet bench failed"; return; }
    local eng sd
    read -r eng sd < <(awk -F'|' "/tg$dec_tokens/ { split(\$(NF-1), a, \"±\"); print a[1] + 0, a[2] + 0 }" \
        "$out/02-engine.txt")
    jq -n --argjson t "$ncores" --argjson n "$dec_tokens" --argjson m "${eng:-null}" \
        --argjson sd "${sd:-null}" '{threads: $t, n_gen: $n, tok_s: $m, sd: $sd}' >"$out/02-engine.json"
    start_bitnetd 02-bitnetd 1 "$ncores" mmap || { fail_step 2 "bitnetd did not start"; return; }
    lt 02-server 1 "$dec_requests" "$dec_tokens"
    stop_server
    local f=$out/02-server.json dec out_s
    dec=$(jv "$f" .decode_tok_s.mean) out_s=$(jv "$f" .output_tok_s)
    {
        printf 'measure\ttok/s\n'
        printf 'engine: bitnet bench tg%s, %s threads, pinned\t%s (sd %s)\n' "$dec_tokens" "$ncores" "$(f1 "$eng")" "$(f1 "$sd")"
        printf 'bitnetd 1 user: decode (per request, mean)\t%s\n' "$(f1 "$dec")"
        printf 'bitnetd 1 user: output (incl. prefill)\t%s\n' "$(f1 "$out_s")"
        printf 'ratio server decode / engine\t%s\n' "$(ratio "$dec" "$eng")"
    } | table "2. server overhead"
    sum "engine tg$dec_tokens tok/s ($ncores threads)" "$(f1 "$eng")"
    sum "bitnetd 1-user decode tok/s" "$(f1 "$dec")"
    sum "server / engine decode" "$(ratio "$dec" "$eng")"
}

# ---- 3. workers x threads under 1, W, 2W, 4W closed-loop users ----

best4=- best4_split=
step3() {
    echo "## 3. workers x threads: $splits; $per_user requests per user, $max_tokens tokens"
    local rows=$logs/03.tsv s w t u f
    printf 'split\tusers\tagg tok/s\tuser tok/s\tTTFT p50 ms\tTTFT p99 ms\tok/failed\n' >"$rows"
    for s in ${splits//,/ }; do
        w=${s%x*} t=${s#*x}
        start_bitnetd "03-$s" "$w" "$t" mmap || { fail_step 3 "bitnetd $s did not start"; continue; }
        for u in $(printf '%s\n' 1 "$w" $((2 * w)) $((4 * w)) | awk '!seen[$0]++'); do
            f=$out/03-$s-u$u.json
            lt "03-$s-u$u" "$u" $((u * per_user)) "$max_tokens"
            printf '%s\t%s\t%s\n' "$s" "$u" "$(lt_cols "$f")" >>"$rows"
            if ((u == 4)) && awk -v a="$(jv "$f" .output_tok_s)" -v b="$best4" \
                'BEGIN { exit !(a != "" && (b == "-" || a + 0 > b + 0)) }'; then
                best4=$(jv "$f" .output_tok_s) best4_split=$s
            fi
        done
        stop_server
    done
    table "3. workers x threads (agg = all users' tokens / wall time; user = decode tok/s once streaming)" <"$rows"
    [ -n "$best4_split" ] && sum "best split at 4 users (agg tok/s)" "$best4_split ($(f1 "$best4"))"
}

# ---- 4. weights = mmap vs shm, 1 user ----

step4() {
    echo "## 4. weights = mmap vs shm: 1 user, 1x$ncores, $dec_tokens tokens"
    local wts dec=() rows=
    for wts in mmap shm; do
        if start_bitnetd "04-$wts" 1 "$ncores" "$wts"; then
            lt "04-$wts" 1 "$dec_requests" "$dec_tokens"
            stop_server
        else
            fail_step 4 "bitnetd with weights = $wts did not start"
        fi
        dec+=("$(jv "$out/04-$wts.json" .decode_tok_s.mean)")
        rows+=$(printf '%s\t%s\t%s\t%s' "$wts" "$(f1 "${dec[-1]}")" \
            "$(f1 "$(jv "$out/04-$wts.json" .output_tok_s)")" "$(f1 "$(jv "$out/04-$wts.json" .ttft_ms.p50)")")$'\n'
    done
    { printf 'weights\tdecode tok/s\toutput tok/s\tTTFT p50 ms\n%s' "$rows"
      printf 'ratio shm / mmap\t%s\t\t\n' "$(ratio "${dec[1]}" "${dec[0]}")"; } | table "4. weights = mmap vs shm"
    sum "shm / mmap 1-user decode" "$(ratio "${dec[1]}" "${dec[0]}")"
}

# ---- 5. side by side with llama-server: same weights, same requests ----

step5() {
    local split4=${serve_split:-${best4_split:-1x$ncores}}
    echo "## 5. vs llama-server (-t $ncores -np 4): 1 user (bitnetd 1x$ncores), 4 users (bitnetd $split4)"
    if [ "$llama" = none ]; then note "step 5 skipped (--llama-server none)"; return; fi
    [ -x "$llama" ] || { fail_step 5 "$llama is missing (--llama-server FILE, or none)"; return; }
    if ! "$llama" --version >"$logs/05-llama-version.txt" 2>&1; then
        fail_step 5 "$llama does not run (libomp missing? apt-get install -y libomp5-14): $(tail -n 1 "$logs/05-llama-version.txt")"
        return
    fi
    local u ours theirs rows=$logs/05.tsv
    start_bitnetd "05-bitnetd-1x$ncores" 1 "$ncores" mmap && { lt 05-ours-u1 1 "$per_user" "$max_tokens"; stop_server; }
    start_bitnetd "05-bitnetd-$split4" "${split4%x*}" "${split4#*x}" mmap &&
        { lt 05-ours-u4 4 $((4 * per_user)) "$max_tokens"; stop_server; }
    if start_llama 05-llama-server; then
        lt 05-theirs-u1 1 "$per_user" "$max_tokens"
        lt 05-theirs-u4 4 $((4 * per_user)) "$max_tokens"
        stop_server
    else
        fail_step 5 "llama-server did not start"
    fi
    printf 'users\tserver\tagg tok/s\tuser tok/s\tTTFT p50 ms\tTTFT p99 ms\tok/failed\tprompt tok/req\n' >"$rows"
    for u in 1 4; do
        ours=$out/05-ours-u$u.json theirs=$out/05-theirs-u$u.json
        printf '%s\tbitnetd %s\t%s\t%s\n' $u "$( ((u == 1)) && echo "1x$ncores" || echo "$split4")" \
            "$(lt_cols "$ours")" "$(f1 "$(jq -r '.prompt_tokens / .requests_ok' "$ours" 2>/dev/null)")" >>"$rows"
        printf '%s\tllama-server\t%s\t%s\n' $u "$(lt_cols "$theirs")" \
            "$(f1 "$(jq -r '.prompt_tokens / .requests_ok' "$theirs" 2>/dev/null)")" >>"$rows"
        printf '%s\tours / theirs\t%s\t%s\t%s\t\t\t\n' $u \
            "$(ratio "$(jv "$ours" .output_tok_s)" "$(jv "$theirs" .output_tok_s)")" \
            "$(ratio "$(jv "$ours" .decode_tok_s.mean)" "$(jv "$theirs" .decode_tok_s.mean)")" \
            "$(ratio "$(jv "$ours" .ttft_ms.p50)" "$(jv "$theirs" .ttft_ms.p50)")" >>"$rows"
        sum "ours/theirs agg tok/s, $u user(s)" "$(ratio "$(jv "$ours" .output_tok_s)" "$(jv "$theirs" .output_tok_s)")"
        sum "ours/theirs TTFT p50, $u user(s) (< 1: ours sooner)" "$(ratio "$(jv "$ours" .ttft_ms.p50)" "$(jv "$theirs" .ttft_ms.p50)")"
    done
    table "5. bitnetd vs llama-server, same weights ($max_tokens tokens, $per_user requests per user)" <"$rows"
}

# ---- 6. /health latency, idle and with every worker busy and requests queued ----

step6() {
    local split=${serve_split:-${best4_split:-1x$ncores}} w users h0 i deadline
    w=${split%x*} users=$((3 * ${split%x*})) # closed loop: about 2W requests always queued
    echo "## 6. /health latency: bitnetd $split, $users users streaming $load_tokens tokens, $health_n sequential GETs"
    start_bitnetd "06-bitnetd-$split" "$w" "${split#*x}" mmap || { fail_step 6 "bitnetd did not start"; return; }
    probe_health "$srv_url" "$health_n" "$logs/06-idle.raw"
    "$bitnet" loadtest --url "$srv_url" --users "$users" --duration "$load_s" --max-tokens "$load_tokens" \
        --ignore-eos "${prompt_args[@]}" --seed "$seed" --temperature "$temperature" --json --no-progress \
        >"$out/06-load.json" 2>"$logs/06-load.err" &
    bg_pid=$!
    deadline=$((SECONDS + load_s / 2))
    while ((SECONDS < deadline)); do # the probe starts once every worker is busy and a request waits
        h0=$(health) && [ "$(echo "$h0" | jq '.workers.busy == .workers.total and .queue.length > 0')" = true ] && break
        sleep 0.1
    done
    probe_health "$srv_url" "$health_n" "$logs/06-busy.raw"
    kill -INT "$bg_pid" 2>/dev/null # loadtest stops on SIGINT and still reports
    wait "$bg_pid" 2>/dev/null
    bg_pid=''
    stop_server
    jq -n --argjson idle "$(health_json "$logs/06-idle.raw")" --argjson busy "$(health_json "$logs/06-busy.raw")" \
        --arg split "$split" --argjson users "$users" --argjson max_tokens "$load_tokens" \
        '{split: $split, users: $users, max_tokens: $max_tokens, idle: $idle, busy: $busy}' >"$out/06-health.json"
    local a b
    read -ra a < <(health_stats "$logs/06-idle.raw")
    read -ra b < <(health_stats "$logs/06-busy.raw")
    { printf 'server state\tGETs ok\tp50 ms\tp99 ms\tmax ms\tfailed\tbusy + queued\n'
      printf 'idle\t%s\t%s\t%s\t%s\t%s\t%s\n' "${a[@]}"
      printf '%s users on %s workers\t%s\t%s\t%s\t%s\t%s\t%s\n' "$users" "$w" "${b[@]}"
    } | table "6. /health latency (curl time_total, sequential GETs)"
    ((b[5] * 10 >= b[0] * 9)) ||
        note "step 6: only ${b[5]} of ${b[0]} GETs saw every worker busy and a queue (the load did not hold)"
    sum "/health p50 / p99 ms, idle" "${a[1]} / ${a[2]}"
    sum "/health p50 / p99 ms, all workers busy + queue" "${b[1]} / ${b[2]}"
}

for n in 2 3 4 5 6; do
    step_on $n && step$n
done

# ---- summary ----

table "summary ($shape, $ncores cores, load $(load_now) at the end)" < <(printf 'figure\tvalue\n'; cat "$summary_rows")
jq -R -n '[inputs | split("\t") | {(.[0]): (.[1] | tonumber? // .)}] | add // {}' <"$summary_rows" >"$out/summary.json"
jq --arg l "$(load_now)" '. + {load_at_end: $l}' "$out/meta.json" >"$out/meta.json.tmp" && mv "$out/meta.json.tmp" "$out/meta.json"
echo "bench_server: raw JSON, tables.md and logs in $out"
[ -z "$failed_steps" ] || die "failed steps:$failed_steps"
