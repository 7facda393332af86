#!/usr/bin/env bash
# The standard multi-user scenario: closed-loop users streaming 64-token chat completions
# (ignore_eos, temperature 0) at 1, 2, 4 and 8 users, one `bitnet loadtest` per point with its
# JSON and HTML reports, and a table of the points.
#
#   bench/bench_multiuser.sh [options]             bitnetd started here (the auto plan by default)
#   bench/bench_multiuser.sh --url URL [options]   any OpenAI-compatible server (nginx, llama-server)
#
# A server started here listens on 127.0.0.1 and is killed on any exit; every wait is bounded.
# --quick (small shape, one 16-token request per user) is the smoke test; its figures mean nothing.
set -u -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
srcdir=$(dirname "$here")

usage() {
    cat <<EOF
usage: bench/bench_multiuser.sh [options]

  --url URL          load an already running server instead of starting bitnetd (its base URL,
                     e.g. http://127.0.0.1:8080 for nginx or llama-server)
  --api-key KEY      sent as a Bearer token (with --url)
  --users LIST       concurrent closed-loop users per point (default 1,2,4,8)
  --per-user N       requests per user at each point (default 4; --quick 1)
  --max-tokens N     completion tokens per request (default 64; --quick 16)
  --timeout S        per-request limit in seconds (default 600: queued requests wait)
  --out DIR          reports and logs (default: bench-multiuser-YYYYmmdd-HHMMSS)
bitnetd started here (without --url):
  --shape S          2b4t (default; --quick: small), any bitnet mkmodel shape
  --tokenizer F      HF tokenizer.json for the model's vocabulary, or none (default:
                     ../shared/fixtures/tokenizer/llama3-tokenizer.json)
  --models DIR       cache of generated models, shared with bench_server.sh (default: BUILD/bench-models)
  --build DIR        where bitnet and bitnetd are (default: .)
  --workers N|auto   bitnetd workers (default auto)
  --threads N|auto   threads per worker (default auto)
  --cpus LIST        bitnetd's cpus key (default: every CPU it may use)
  --config FILE      bitnetd config to use instead of the generated one (-m and --listen still given)
  --quick            smoke test: small shape, 1 request of 16 tokens per user
  -h, --help         this help
EOF
}

note() { echo "bench_multiuser: $*" >&2; }
die() { note "$*"; exit 1; }

url='' api_key='' users_list=1,2,4,8 per_user='' max_tokens='' lt_timeout=600 out='' shape=''
tokenizer=auto models='' build=. workers=auto threads=auto cpus='' config='' quick=0
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1; shift; continue ;;
    -h | --help) usage; exit 0 ;;
    --url | --api-key | --users | --per-user | --max-tokens | --timeout | --out | --shape | --tokenizer | \
        --models | --build | --workers | --threads | --cpus | --config)
        [ $# -ge 2 ] || die "$1 needs a value (--help)" ;;
    *) usage >&2; die "unknown option $1" ;;
    esac
    case $1 in
    --url) url=${2%/} ;;
    --api-key) api_key=$2 ;;
    --users) users_list=$2 ;;
    --per-user) per_user=$2 ;;
    --max-tokens) max_tokens=$2 ;;
    --timeout) lt_timeout=$2 ;;
    --out) out=$2 ;;
    --shape) shape=$2 ;;
    --tokenizer) tokenizer=$2 ;;
    --models) models=$2 ;;
    --build) build=$2 ;;
    --workers) workers=$2 ;;
    --threads) threads=$2 ;;
    --cpus) cpus=$2 ;;
    --config) config=$2 ;;
    esac
    shift 2
done
if [ $quick = 1 ]; then
    : "${shape:=small}" "${per_user:=1}" "${max_tokens:=16}"
    ready_s=120
else
    : "${shape:=2b4t}" "${per_user:=4}" "${max_tokens:=64}"
    ready_s=600 # the first start of 2b4t faults in ~1 GB of weights
fi
[[ $users_list =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "bad --users '$users_list' (e.g. 1,2,4,8)"
for v in "$per_user" "$max_tokens" "$lt_timeout"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || die "--per-user, --max-tokens and --timeout take a positive integer, not '$v'"
done
for v in "$workers" "$threads"; do
    [[ $v =~ ^(auto|[1-9][0-9]*)$ ]] || die "--workers and --threads take auto or a positive integer, not '$v'"
done
[ -z "$config" ] || [ -f "$config" ] || die "--config $config: no such file"

bitnet=$build/bitnet bitnetd=$build/bitnetd
[ -x "$bitnet" ] || die "$bitnet is missing (make bitnet; or --build DIR)"
[ -n "$url" ] || [ -x "$bitnetd" ] || die "$bitnetd is missing (make bitnetd; or --build DIR, or --url)"
for t in curl jq awk timeout setsid; do
    command -v $t >/dev/null || die "$t is missing (apt-get install -y curl jq gawk coreutils util-linux)"
done

: "${out:=bench-multiuser-$(date +%Y%m%d-%H%M%S)}" "${models:=$build/bench-models}"
mkdir -p "$out/logs" || die "cannot create $out"
out=$(cd "$out" && pwd) logs=$out/logs

prompt_args=(--prompt-len 32)
[ -f "$here/loadtest_prompts.jsonl" ] && prompt_args=(--prompts "$here/loadtest_prompts.jsonl")
key_args=()
[ -n "$api_key" ] && key_args=(--api-key "$api_key")

# ---- the server: started in its own process group, always killed ----

srv_pid=''
stop_server() {
    [ -n "$srv_pid" ] || return 0
    local i
    kill -TERM -- "-$srv_pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        kill -0 "$srv_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$srv_pid" 2>/dev/null # workers, or a master stuck draining
    wait "$srv_pid" 2>/dev/null
    srv_pid=''
}
lt_pid=''
cleanup() {
    [ -n "$lt_pid" ] && kill -TERM "$lt_pid" 2>/dev/null && wait "$lt_pid" 2>/dev/null
    stop_server
}
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT TERM HUP PIPE

curl_auth=()
[ -n "$api_key" ] && curl_auth=(-H "Authorization: Bearer $api_key")
models_url() { case $url in */v1) echo "$url/models" ;; *) echo "$url/v1/models" ;; esac; }

# Polls GET URL until it answers 2xx, for at most ready_s seconds; fails at once if our server exits.
wait_for() {
    local what=$1 deadline=$((SECONDS + ready_s))
    while ((SECONDS < deadline)); do
        if [ -n "$srv_pid" ] && ! kill -0 "$srv_pid" 2>/dev/null; then
            note "bitnetd exited while starting; the end of $logs/bitnetd.log:"
            tail -n 5 "$logs/bitnetd.log" >&2
            return 1
        fi
        curl -sf -o /dev/null --max-time 2 "${curl_auth[@]}" "$what" && return 0
        sleep 0.2
    done
    note "$what did not answer within $ready_s s"
    return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_bitnetd() {
    local tag=$shape spec=$shape nv tb port i
    if [ "$tokenizer" = auto ]; then
        tokenizer=$(dirname "$srcdir")/shared/fixtures/tokenizer/llama3-tokenizer.json
        [ -f "$tokenizer" ] || { note "no $tokenizer: the built-in vocabulary (most sampled ids then" \
            "render as nothing, so TTFT and ITL, measured on content chunks, lose their meaning)"; tokenizer=none; }
    fi
    if [ "$tokenizer" != none ]; then
        [ -f "$tokenizer" ] || die "tokenizer $tokenizer not found"
        nv=$(jq '[.model.vocab[]] + [.added_tokens[]?.id] | max + 1' "$tokenizer") ||
            die "cannot read the vocabulary size of $tokenizer"
        tb=${tokenizer##*/}
        tag=$shape-${tb%.json} spec="$shape,n_vocab=$nv"
    fi
    # the names and route of bench_server.sh: one cache, and a GGUF of the same weights for llama-server
    tag=${tag//[^A-Za-z0-9._-]/_}
    mkdir -p "$models" || die "cannot create $models"
    gguf=$models/server-$tag.gguf bnpk=$models/server-$tag.bnpk
    if [ ! -f "$gguf" ]; then
        note "making $gguf ($spec)"
        local tok_args=()
        [ "$tokenizer" != none ] && tok_args=(-t "$tokenizer")
        if ! "$bitnet" mkmodel -f gguf-i2_s "${tok_args[@]}" "$spec" "$gguf.tmp" >"$logs/mkmodel.log" 2>&1; then
            cat "$logs/mkmodel.log" >&2
            die "mkmodel failed"
        fi
        mv "$gguf.tmp" "$gguf"
    fi
    if [ ! -f "$bnpk" ] || [ "$bnpk" -ot "$gguf" ]; then
        "$bitnet" convert "$gguf" "$bnpk" >"$logs/convert.log" 2>&1 || { cat "$logs/convert.log" >&2; die "convert failed"; }
    fi
    port=$((20000 + $$ % 20000))
    for ((i = 0; i < 200; i++)); do
        port_free $((port + i)) && break
    done
    ((i < 200)) || die "no free port on 127.0.0.1"
    port=$((port + i)) url=http://127.0.0.1:$port
    local conf=$config
    if [ -z "$conf" ]; then
        conf=$logs/bitnetd.conf
        {
            echo "# bench/bench_multiuser.sh"
            echo "workers = $workers"
            echo "threads = $threads"
            [ -n "$cpus" ] && echo "cpus = $cpus"
            echo "queue_size = 1024"
            echo "queue_timeout = 10m" # 8 closed-loop users on few workers wait several requests
            echo "access_log = off"
            echo "shutdown_timeout = 2s"
        } >"$conf"
    fi
    setsid "$bitnetd" -c "$conf" -m "$bnpk" --listen "127.0.0.1:$port" >"$logs/bitnetd.log" 2>&1 &
    srv_pid=$!
    wait_for "$url/ready" || die "bitnetd did not become ready"
    for ((i = 0; i < 10 * ready_s; i++)); do # /ready needs one worker; the bench wants all
        [ "$(curl -sf --max-time 5 "$url/health" | jq -r '.workers.idle == .workers.total')" = true ] && break
        sleep 0.1
    done
    ((i < 10 * ready_s)) || note "not every worker idle after $ready_s s; measuring anyway"
    curl -sf --max-time 5 "$url/v1/status" >"$logs/status.json" # the plan it chose
}

# ---- the run ----

load_now() { cut -d' ' -f1 /proc/loadavg; }
load_start=$(load_now)
gguf='' bnpk=''
if [ -z "$url" ]; then
    start_bitnetd
    plan=$(jq -r '.placement | "\(.workers) workers x \(.threads) threads"' "$logs/status.json" 2>/dev/null)
    server="bitnetd ${plan:-(plan unknown)}"
else
    ready_s=30 # a running server answers at once
    wait_for "$(models_url)" || die "$url does not answer GET /v1/models"
    server=$url
fi
ncpu=$(getconf _NPROCESSORS_ONLN)
awk -v l="$load_start" -v n="$ncpu" 'BEGIN { exit !(l > 0.3 * n) }' &&
    note "warning: load average $load_start on $ncpu CPUs: the machine is not idle, figures will be noisy"
echo "bench_multiuser: $server at $url; users $users_list, $per_user requests each, $max_tokens tokens; out $out"

# warm-up: the first requests fault the weights in; not measured
"$bitnet" loadtest --url "$url" "${key_args[@]}" --users 2 --requests 2 --max-tokens 8 --ignore-eos \
    "${prompt_args[@]}" --json --no-progress >"$logs/warmup.json" 2>&1 || note "warm-up failed (see $logs/warmup.json)"

failed=''
for u in ${users_list//,/ }; do
    # in the background, so that a signal to this script is handled at once (wait is interruptible)
    timeout -k 5 $((2 * lt_timeout + 60)) "$bitnet" loadtest --url "$url" "${key_args[@]}" \
        --users "$u" --requests $((u * per_user)) --max-tokens "$max_tokens" --ignore-eos --temperature 0 \
        --seed 1 "${prompt_args[@]}" --timeout "$lt_timeout" --no-progress --json --html "$out/u$u.html" \
        >"$out/u$u.json" 2>"$logs/u$u.err" &
    lt_pid=$!
    wait "$lt_pid"
    rc=$?
    lt_pid=
    ((rc == 2)) && die "loadtest refused its arguments: $(head -n 3 "$logs/u$u.err")"
    ((rc == 0)) || { note "$u users: no request succeeded (rc $rc; $logs/u$u.err)"; failed+=" $u"; }
done
stop_server

# ---- the table ----

f1() { awk -v x="${1:-}" 'BEGIN { if (x == "" || x == "null") print "-"; else printf "%.1f\n", x }'; }
jv() { jq -r "($2) // empty" "$1" 2>/dev/null; }
{
    printf '| users | ok/failed | agg tok/s | user tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | E2E p50 ms | report |\n'
    printf '|---|---|---|---|---|---|---|---|---|---|\n'
    for u in ${users_list//,/ }; do
        f=$out/u$u.json
        printf '| %s | %s/%s | %s | %s | %s | %s | %s | %s | %s | u%s.html |\n' "$u" "$(jv "$f" .requests_ok)" \
            "$(jv "$f" .requests_failed)" "$(f1 "$(jv "$f" .output_tok_s)")" "$(f1 "$(jv "$f" .decode_tok_s.mean)")" \
            "$(f1 "$(jv "$f" .ttft_ms.p50)")" "$(f1 "$(jv "$f" .ttft_ms.p99)")" "$(f1 "$(jv "$f" .itl_ms.p50)")" \
            "$(f1 "$(jv "$f" .itl_ms.p99)")" "$(f1 "$(jv "$f" .e2e_ms.p50)")" "$u"
    done
} | tee "$out/table.md"

commit=$(git -C "$srcdir" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ "$commit" != unknown ] && ! git -C "$srcdir" diff --quiet HEAD 2>/dev/null && commit+="+dirty"
jq -n --arg date "$(date -Is)" --arg host "$(uname -n)" --arg cpu "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p')" \
    --argjson ncpu "$ncpu" --arg commit "$commit" --arg server "$server" --arg url "$url" --arg shape "$shape" \
    --arg model "$bnpk" --arg gguf "$gguf" --arg users "$users_list" --argjson per_user "$per_user" \
    --argjson max_tokens "$max_tokens" --argjson quick "$quick" --arg load_start "$load_start" \
    --arg load_end "$(load_now)" \
    '{date: $date, host: $host, cpu: $cpu, cpus_online: $ncpu, commit: $commit, server: $server, url: $url,
      shape: (if $model == "" then null else $shape end), model: (if $model == "" then null else $model end),
      gguf_same_weights: (if $gguf == "" then null else $gguf end), users: $users, per_user: $per_user,
      max_tokens: $max_tokens, quick: ($quick == 1), load_at_start: $load_start, load_at_end: $load_end}' \
    >"$out/meta.json"
echo "bench_multiuser: reports u<N>.html and u<N>.json, table.md, meta.json and logs/ in $out"
[ -z "$failed" ] || die "no request succeeded at users:$failed"
