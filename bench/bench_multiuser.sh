#!/usr/bin/env bash
# The multi-user scenario of issue #11: closed-loop users streaming 64-token chat completions
# (ignore_eos, temperature 0) at 1, 2, 4, 8 and 16 users, for bitnetd in its default
# configuration (`bitnetd -m MODEL`: no config file, so slots, workers and threads are what it
# picks for the machine) and for bitnet.cpp's llama-server (`-t NCPU -np N`) on the same weights,
# one `bitnet loadtest` per point with its JSON and HTML reports; then a priority run: one
# interactive user while batch users fill every slot, with and without priorities.
#
#   bench/bench_multiuser.sh [options]             bitnetd vs llama-server, both started here
#   bench/bench_multiuser.sh --url URL [options]   one running OpenAI-compatible server
#
# Points alternate between the servers (bitnetd N users, llama-server N users, next N), each
# server started for its point and stopped after it, so ratios come from the same minutes. Servers
# started here listen on 127.0.0.1 and are killed on any exit; every wait is bounded.
# --quick (small shape, 1, 2 users, short answers, no llama-server) is the smoke test: its figures
# mean nothing.
set -u -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
srcdir=$(dirname "$here")

usage() {
    cat <<EOF
usage: bench/bench_multiuser.sh [options]

  --url URL          load an already running server instead of starting bitnetd and llama-server
                     (its base URL, e.g. http://127.0.0.1:8080)
  --api-key KEY      sent as a Bearer token (with --url)
  --users LIST       concurrent closed-loop users per point (default 1,2,4,8,16; --quick 1,2)
  --per-user N       requests per user at each point (default 4; --quick 1)
  --max-tokens N     completion tokens per request (default 64; --quick 16)
  --timeout S        per-request limit in seconds (default 600: queued requests wait)
  --out DIR          reports and logs (default: bench-multiuser-YYYYmmdd-HHMMSS)
servers started here (without --url):
  --shape S          2b4t (default; --quick: small), any bitnet mkmodel shape
  --tokenizer F      HF tokenizer.json for the model's vocabulary, or none (default:
                     ../shared/fixtures/tokenizer/llama3-tokenizer.json)
  --models DIR       cache of generated models, shared with bench_server.sh (default: BUILD/bench-models)
  --build DIR        where bitnet and bitnetd are (default: .)
  --llama-server F   bitnet.cpp's llama-server (default: ../shared/peers/bitnet.cpp-2025/bin/llama-server;
                     none: bitnetd only; --quick: none)
  --llama-threads N  its -t (default: the online CPUs, or the CPUs of --cpus)
  --cpus LIST        run both on these CPUs (bitnetd: a config with only "cpus = LIST"; llama-server:
                     taskset). Without it bitnetd runs with no config file at all
  --config FILE      a bitnetd config instead of none (-m and --listen still given)
  --no-slots-point   skip the 1-user point of bitnetd with --slots 1 (single-user speed without slots)
the priority run:
  --no-priority      skip it
  --priority-requests N   interactive requests (default 8; --quick 2)
  --batch-users N    batch users (default: bitnetd's total slots, from /v1/status; else 8)
  --batch-tokens N   max_tokens of a batch request (default 128; --quick 32)
  --quick            smoke test: small shape, users 1,2, 1 request of 16 tokens per user, no llama-server
  -h, --help         this help
EOF
}

note() { echo "bench_multiuser: $*" >&2; }
die() { note "$*"; exit 1; }

url='' api_key='' users_list='' per_user='' max_tokens='' lt_timeout=600 out='' shape=''
tokenizer=auto models='' build=. cpus='' config='' quick=0 llama=default llama_threads=''
slots_point=1 prio=1 prio_requests='' batch_users='' batch_tokens=''
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1; shift; continue ;;
    --no-priority) prio=0; shift; continue ;;
    --no-slots-point) slots_point=0; shift; continue ;;
    -h | --help) usage; exit 0 ;;
    --url | --api-key | --users | --per-user | --max-tokens | --timeout | --out | --shape | --tokenizer | \
        --models | --build | --llama-server | --llama-threads | --cpus | --config | --priority-requests | \
        --batch-users | --batch-tokens)
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
    --llama-server) llama=$2 ;;
    --llama-threads) llama_threads=$2 ;;
    --cpus) cpus=$2 ;;
    --config) config=$2 ;;
    --priority-requests) prio_requests=$2 ;;
    --batch-users) batch_users=$2 ;;
    --batch-tokens) batch_tokens=$2 ;;
    esac
    shift 2
done
if [ $quick = 1 ]; then
    : "${shape:=small}" "${users_list:=1,2}" "${per_user:=1}" "${max_tokens:=16}" "${prio_requests:=2}"
    : "${batch_tokens:=32}"
    [ "$llama" = default ] && llama=none
    ready_s=120
else
    : "${shape:=2b4t}" "${users_list:=1,2,4,8,16}" "${per_user:=4}" "${max_tokens:=64}" "${prio_requests:=8}"
    : "${batch_tokens:=128}"
    ready_s=600 # the first start of 2b4t faults in ~1 GB of weights
fi
[ "$llama" = default ] && llama=$(dirname "$srcdir")/shared/peers/bitnet.cpp-2025/bin/llama-server
[ -n "$url" ] && llama=none
[[ $users_list =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "bad --users '$users_list' (e.g. 1,2,4,8,16)"
for v in "$per_user" "$max_tokens" "$lt_timeout" "$prio_requests" "$batch_tokens" ${batch_users:+"$batch_users"} \
    ${llama_threads:+"$llama_threads"}; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || die "--per-user, --max-tokens, --timeout, --priority-requests, --batch-users," \
        "--batch-tokens and --llama-threads take a positive integer, not '$v'"
done
[ -z "$config" ] || [ -f "$config" ] || die "--config $config: no such file"
[ -z "$config" ] || [ -z "$cpus" ] || die "--config and --cpus are exclusive (put cpus in the config)"

bitnet=$build/bitnet bitnetd=$build/bitnetd
[ -x "$bitnet" ] || die "$bitnet is missing (make bitnet; or --build DIR)"
[ -n "$url" ] || [ -x "$bitnetd" ] || die "$bitnetd is missing (make bitnetd; or --build DIR, or --url)"
[ "$llama" = none ] || [ -x "$llama" ] || die "$llama is missing (--llama-server FILE, or none)"
for t in curl jq awk timeout setsid; do
    command -v $t >/dev/null || die "$t is missing (apt-get install -y curl jq gawk coreutils util-linux)"
done
[ -z "$cpus" ] || [ "$llama" = none ] || command -v taskset >/dev/null || die "--cpus needs taskset (util-linux)"

ncpu=$(getconf _NPROCESSORS_ONLN)
if [ -z "$llama_threads" ]; then
    llama_threads=$ncpu
    # --cpus LIST: as many threads as CPUs listed (a,b-c,...)
    [ -n "$cpus" ] && llama_threads=$(awk -v l="$cpus" 'BEGIN { n = split(l, p, ","); t = 0
        for (i = 1; i <= n; i++) { if (split(p[i], r, "-") == 2) t += r[2] - r[1] + 1; else t++ } print t }')
fi

: "${out:=bench-multiuser-$(date +%Y%m%d-%H%M%S)}" "${models:=$build/bench-models}"
mkdir -p "$out/logs" || die "cannot create $out"
out=$(cd "$out" && pwd) logs=$out/logs

prompt_args=(--prompt-len 32)
[ -f "$here/loadtest_prompts.jsonl" ] && prompt_args=(--prompts "$here/loadtest_prompts.jsonl")
key_args=()
[ -n "$api_key" ] && key_args=(--api-key "$api_key")

# ---- servers: each started in its own process group, always killed ----

srv_pid='' srv_url=''
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
models_url() { case $1 in */v1) echo "$1/models" ;; *) echo "$1/v1/models" ;; esac; }

# Polls URL until it answers 2xx, for at most ready_s seconds; fails at once if our server exits.
wait_for() {
    local what=$1 log=$2 deadline=$((SECONDS + ready_s))
    while ((SECONDS < deadline)); do
        if [ -n "$srv_pid" ] && ! kill -0 "$srv_pid" 2>/dev/null; then
            note "the server exited while starting; the end of $log:"
            tail -n 5 "$log" >&2
            return 1
        fi
        curl -sf -o /dev/null --max-time 2 "${curl_auth[@]}" "$what" && return 0
        sleep 0.2
    done
    note "$what did not answer within $ready_s s"
    return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
take_port() {
    local base=$((20000 + ($$ + RANDOM) % 20000)) i
    for ((i = 0; i < 200; i++)); do
        port_free $((base + i)) && { port=$((base + i)); return 0; }
    done
    die "no free port on 127.0.0.1"
}

# One set of weights: a GGUF (llama-server) and the same converted to our packed file (bitnetd).
gguf='' bnpk=''
make_models() {
    local tag=$shape spec=$shape nv tb
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
    # the names and route of bench_server.sh: one cache for both scripts
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
}

bitnetd_conf=''
if [ -n "$config" ]; then
    bitnetd_conf=$config
elif [ -n "$cpus" ]; then
    bitnetd_conf=$logs/bitnetd.conf
    printf '# bench/bench_multiuser.sh --cpus\ncpus = %s\n' "$cpus" >"$bitnetd_conf"
fi

# start_bitnetd NAME [ARGS...]: bitnetd -m MODEL (its defaults, or the --config / --cpus file) plus ARGS.
start_bitnetd() {
    local name=$1 i conf_args=()
    shift
    take_port
    srv_url=http://127.0.0.1:$port
    [ -n "$bitnetd_conf" ] && conf_args=(-c "$bitnetd_conf")
    setsid "$bitnetd" "${conf_args[@]}" -m "$bnpk" --listen "127.0.0.1:$port" "$@" >"$logs/$name.log" 2>&1 &
    srv_pid=$!
    wait_for "$srv_url/ready" "$logs/$name.log" || { stop_server; return 1; }
    for ((i = 0; i < 10 * ready_s; i++)); do # /ready needs one worker; the bench wants all
        [ "$(curl -sf --max-time 5 "$srv_url/health" | jq -r '.workers.idle == .workers.total')" = true ] && break
        sleep 0.1
    done
    ((i < 10 * ready_s)) || note "$name: not every worker idle after $ready_s s; measuring anyway"
    curl -sf --max-time 5 "$srv_url/v1/status" >"$logs/$name.status.json" # the plan it chose
    warm_up "$name" 2
}

# start_llama NAME NP: llama-server -t T -np NP, at least 1024 tokens of context per slot.
start_llama() {
    local name=$1 np=$2 ctx=$(($2 * 1024)) pre=()
    ((ctx < 4096)) && ctx=4096
    take_port
    srv_url=http://127.0.0.1:$port
    [ -n "$cpus" ] && pre=(taskset -c "$cpus")
    setsid "${pre[@]}" "$llama" -m "$gguf" -t "$llama_threads" -np "$np" -c "$ctx" --host 127.0.0.1 \
        --port "$port" >"$logs/$name.log" 2>&1 &
    srv_pid=$!
    wait_for "$srv_url/health" "$logs/$name.log" || { stop_server; return 1; }
    warm_up "$name" 2
}

warm_up() { # the first requests fault the weights in and fill the caches: not measured
    "$bitnet" loadtest --url "$srv_url" "${key_args[@]}" --users "$2" --requests "$2" --max-tokens 8 --ignore-eos \
        "${prompt_args[@]}" --json --no-progress >"$logs/$1.warmup.json" 2>&1 ||
        note "$1: warm-up failed (see $logs/$1.warmup.json)"
}

# lt NAME ARGS...: one loadtest against srv_url, reports OUT/NAME.json and OUT/NAME.html. In the
# background, so that a signal to this script is handled at once (wait is interruptible).
failed=''
lt() {
    local name=$1 rc
    shift
    timeout -k 5 $((2 * lt_timeout + 60)) "$bitnet" loadtest --url "$srv_url" "${key_args[@]}" \
        --max-tokens "$max_tokens" --ignore-eos --temperature 0 --seed 1 "${prompt_args[@]}" \
        --timeout "$lt_timeout" --no-progress --json --html "$out/$name.html" "$@" \
        >"$out/$name.json" 2>"$logs/$name.err" &
    lt_pid=$!
    wait "$lt_pid"
    rc=$?
    lt_pid=
    ((rc == 2)) && die "loadtest refused its arguments: $(head -n 3 "$logs/$name.err")"
    ((rc == 0)) || { note "$name: no request succeeded (rc $rc; $logs/$name.err)"; failed+=" $name"; }
    return 0
}

# point SERVER USERS: the users sweep's run for one server (already started).
point() { lt "$1-u$2" --users "$2" --requests $(($2 * per_user)); }

# Total slots of the running bitnetd (/v1/status workers[].slots, as {total} or a number), or empty.
total_slots() {
    jq -r '[.workers[]? | (.slots.total? // .slots? // empty) | numbers] | if length > 0 then add else empty end' \
        "$1" 2>/dev/null
}

# ---- the run ----

load_now() { cut -d' ' -f1 /proc/loadavg; }
load_start=$(load_now)
awk -v l="$load_start" -v n="$ncpu" 'BEGIN { exit !(l > 0.3 * n) }' &&
    note "warning: load average $load_start on $ncpu CPUs: the machine is not idle, figures will be noisy"

servers=() slots_n=''
if [ -n "$url" ]; then
    ready_s=30 # a running server answers at once
    srv_url=$url
    wait_for "$(models_url "$url")" "(no log)" || die "$url does not answer GET /v1/models"
    servers=(server)
    echo "bench_multiuser: $url; users $users_list, $per_user requests each, $max_tokens tokens; out $out"
    warm_up server 2
    for u in ${users_list//,/ }; do point server "$u"; done
else
    make_models
    servers=(bitnetd)
    [ "$llama" != none ] && servers+=(llama)
    echo "bench_multiuser: bitnetd (default config${bitnetd_conf:+: $bitnetd_conf}) vs" \
        "${llama/#none/nothing} (-t $llama_threads -np N) on $bnpk / $gguf; users $users_list," \
        "$per_user requests each, $max_tokens tokens; out $out"
    for u in ${users_list//,/ }; do
        if start_bitnetd "bitnetd-u$u"; then
            [ -z "$slots_n" ] && slots_n=$(total_slots "$logs/bitnetd-u$u.status.json")
            point bitnetd "$u"
        else
            failed+=" bitnetd-u$u"
        fi
        stop_server
        if [ "$llama" != none ]; then
            if start_llama "llama-u$u" "$u"; then point llama "$u"; else failed+=" llama-u$u"; fi
            stop_server
        fi
    done
    if [ $slots_point = 1 ]; then # single-user speed without slots: the issue's "no worse" check
        if start_bitnetd bitnetd-slots1-u1 --slots 1; then
            lt bitnetd-slots1-u1 --users 1 --requests "$per_user"
        else
            failed+=" bitnetd-slots1-u1"
        fi
        stop_server
    fi
fi

# ---- the priority run: one interactive user while batch users fill every slot ----

# prio_run NAME BATCH_PRIORITY: interactive (priority 0, its own request count: the run ends when it
# is done) and batch users (batch_tokens each; "none": no priority field sent at all).
prio_run() {
    local name=$1 bp=$2 ip=,priority=0 bpf=,priority=$2
    [ "$bp" = none ] && ip='' bpf=''
    lt "$name" --group "name=interactive,users=1,requests=$prio_requests$ip" \
        --group "name=batch,users=$batch_users,max_tokens=$batch_tokens$bpf"
}

if [ $prio = 1 ]; then
    : "${batch_users:=${slots_n:-8}}"
    echo "bench_multiuser: priority run: 1 interactive user ($prio_requests requests of $max_tokens tokens) while" \
        "$batch_users batch users ($batch_tokens tokens) fill the slots${slots_n:+ ($slots_n in all)}"
    if [ -n "$url" ]; then
        prio_run prio-server-p10 10
        prio_run prio-server-same 0
    else
        if start_bitnetd bitnetd-prio; then
            prio_run prio-bitnetd-p10 10
            prio_run prio-bitnetd-same 0
        else
            failed+=" bitnetd-prio"
        fi
        stop_server
        if [ "$llama" != none ]; then # no priorities there: the same mix, for its interactive TTFT
            if start_llama llama-prio "$batch_users"; then prio_run prio-llama-none none; else failed+=" llama-prio"; fi
            stop_server
        fi
    fi
fi

# ---- the tables ----

f1() { awk -v x="${1:-}" 'BEGIN { if (x == "" || x == "null") print "-"; else printf "%.1f\n", x }'; }
ratio() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || a == "null" || b == "null" || b + 0 == 0) print "-"; else printf "%.2fx\n", a / b }'; }
jv() { [ -f "$1" ] && jq -r "($2) // empty" "$1" 2>/dev/null; }
okf() { echo "$(jv "$1" .requests_ok)/$(jv "$1" .requests_failed)"; }
{
    echo "## Users sweep ($max_tokens-token streamed answers, $per_user requests per user, closed loop)"
    echo
    if [ ${#servers[@]} = 2 ]; then
        printf '| users | bitnetd agg tok/s | llama agg tok/s | agg ratio | bitnetd user tok/s | llama user tok/s |'
        printf ' bitnetd TTFT p50 ms | llama TTFT p50 ms | TTFT p50 ratio | bitnetd TTFT p99 ms | llama TTFT p99 ms |'
        printf ' ok/failed bitnetd | ok/failed llama |\n'
        printf '|%s\n' '---|---|---|---|---|---|---|---|---|---|---|---|---|'
        for u in ${users_list//,/ }; do
            b=$out/bitnetd-u$u.json l=$out/llama-u$u.json
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$u" \
                "$(f1 "$(jv "$b" .output_tok_s)")" "$(f1 "$(jv "$l" .output_tok_s)")" \
                "$(ratio "$(jv "$b" .output_tok_s)" "$(jv "$l" .output_tok_s)")" \
                "$(f1 "$(jv "$b" .decode_tok_s.mean)")" "$(f1 "$(jv "$l" .decode_tok_s.mean)")" \
                "$(f1 "$(jv "$b" .ttft_ms.p50)")" "$(f1 "$(jv "$l" .ttft_ms.p50)")" \
                "$(ratio "$(jv "$b" .ttft_ms.p50)" "$(jv "$l" .ttft_ms.p50)")" \
                "$(f1 "$(jv "$b" .ttft_ms.p99)")" "$(f1 "$(jv "$l" .ttft_ms.p99)")" "$(okf "$b")" "$(okf "$l")"
        done
        echo
        echo "Goal (#11): at 4 and 8 users, agg ratio >= 3x and TTFT p50 ratio <= 0.5x."
    else
        s=${servers[0]}
        printf '| users | ok/failed | agg tok/s | user tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | E2E p50 ms | report |\n'
        printf '|---|---|---|---|---|---|---|---|---|---|\n'
        for u in ${users_list//,/ }; do
            f=$out/$s-u$u.json
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s-u%s.html |\n' "$u" "$(okf "$f")" \
                "$(f1 "$(jv "$f" .output_tok_s)")" "$(f1 "$(jv "$f" .decode_tok_s.mean)")" \
                "$(f1 "$(jv "$f" .ttft_ms.p50)")" "$(f1 "$(jv "$f" .ttft_ms.p99)")" "$(f1 "$(jv "$f" .itl_ms.p50)")" \
                "$(f1 "$(jv "$f" .itl_ms.p99)")" "$(f1 "$(jv "$f" .e2e_ms.p50)")" "$s" "$u"
        done
    fi
    f=$out/bitnetd-slots1-u1.json
    if [ -f "$f" ]; then
        echo
        echo "Single user without slots (bitnetd --slots 1): $(f1 "$(jv "$f" .decode_tok_s.mean)") tok/s per user," \
            "TTFT p50 $(f1 "$(jv "$f" .ttft_ms.p50)") ms; with the default: $(f1 "$(jv "$out/bitnetd-u1.json" \
            .decode_tok_s.mean)") tok/s, TTFT p50 $(f1 "$(jv "$out/bitnetd-u1.json" .ttft_ms.p50)") ms" \
            "(goal: no worse)."
    fi
    if [ $prio = 1 ]; then
        echo
        echo "## Priority under saturation (1 interactive user, $batch_users batch users of $batch_tokens tokens)"
        echo
        printf '| run | interactive ok/failed | interactive TTFT p50 ms | TTFT p99 ms | E2E p50 ms | batch ok (cut at the end) | batch tok/s (completed) | all tok/s (completed) |\n'
        printf '|---|---|---|---|---|---|---|---|\n'
        for f in "$out"/prio-*.json; do
            [ -f "$f" ] || continue
            n=${f##*/} n=${n%.json}
            gi='.groups[] | select(.name == "interactive")' gb='.groups[] | select(.name == "batch")'
            printf '| %s | %s/%s | %s | %s | %s | %s (%s) | %s | %s |\n' "$n" "$(jv "$f" "$gi | .requests_ok")" \
                "$(jv "$f" "$gi | .requests_failed")" "$(f1 "$(jv "$f" "$gi | .ttft_ms.p50")")" \
                "$(f1 "$(jv "$f" "$gi | .ttft_ms.p99")")" "$(f1 "$(jv "$f" "$gi | .e2e_ms.p50")")" \
                "$(jv "$f" "$gb | .requests_ok")" "$(jv "$f" "$gb | .requests_cancelled")" \
                "$(f1 "$(jv "$f" "$gb | .output_tok_s")")" "$(f1 "$(jv "$f" .output_tok_s)")"
        done
        echo
        echo "p10: batch at priority 10, interactive 0 (bitnetd keeps reserved_slots for it); same: both 0;"
        echo "none: no priority field (llama-server has no priorities). Compare the interactive TTFT with the"
        echo "1-user point of the sweep (no load)."
    fi
} | tee "$out/table.md"

commit=$(git -C "$srcdir" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ "$commit" != unknown ] && ! git -C "$srcdir" diff --quiet HEAD 2>/dev/null && commit+="+dirty"
jq -n --arg date "$(date -Is)" --arg host "$(uname -n)" --arg cpu "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p')" \
    --argjson ncpu "$ncpu" --arg commit "$commit" --arg url "$url" --arg shape "$shape" --arg model "$bnpk" \
    --arg gguf "$gguf" --arg users "$users_list" --argjson per_user "$per_user" --argjson max_tokens "$max_tokens" \
    --argjson quick "$quick" --arg load_start "$load_start" --arg load_end "$(load_now)" \
    --arg bitnetd_conf "${bitnetd_conf:-none (bitnetd -m MODEL)}" --arg llama "$llama" \
    --arg llama_threads "$llama_threads" --arg slots "${slots_n:-}" --arg batch_users "${batch_users:-}" \
    --argjson prio "$prio" \
    '{date: $date, host: $host, cpu: $cpu, cpus_online: $ncpu, commit: $commit,
      url: (if $url == "" then null else $url end),
      shape: (if $model == "" then null else $shape end), model: (if $model == "" then null else $model end),
      gguf_same_weights: (if $gguf == "" then null else $gguf end),
      bitnetd_config: (if $url == "" then $bitnetd_conf else null end), bitnetd_total_slots: $slots,
      llama_server: (if $llama == "none" then null else $llama end), llama_threads: $llama_threads,
      users: $users, per_user: $per_user, max_tokens: $max_tokens, priority_run: ($prio == 1),
      batch_users: $batch_users, quick: ($quick == 1), load_at_start: $load_start, load_at_end: $load_end}' \
    >"$out/meta.json"
echo "bench_multiuser: reports (*.json, *.html), table.md, meta.json and logs/ in $out"
[ -z "$failed" ] || die "failed:$failed"
