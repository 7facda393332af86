#!/bin/bash
# packaging/nginx/bitnetd.conf in front of bitnetd, both on loopback: nginx (Debian's package) runs
# as this user from a temp dir with a copy of the file (ports and log paths rewritten, the TLS
# server uncommented when openssl can make a certificate). Checks: the copy is valid inside
# Debian's stock nginx.conf; a stream arrives token by token, not all at the end; non-streaming
# calls, /health, /ready, X-Request-Id and the 413/502 JSON errors; a bitnetd restart behind
# nginx is survived; `bitnet loadtest` through nginx; a second host added by a reload takes over
# when the first stops. Skips (exit 77) without nginx or curl.
set -u
export LC_ALL=C # $EPOCHREALTIME with a '.' whatever the locale

srcdir=${BN_SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}
conf_src=$srcdir/packaging/nginx/bitnetd.conf

skip() {
    echo "######## test_nginx: SKIPPED: $* ########" >&2
    echo "test_nginx: SKIPPED: $*"
    exit 77
}
# The tails of every log, then exit 1.
fail() {
    echo "test_nginx: FAIL: $*" >&2
    for f in "$tmp"/bitnetd.log "$tmp"/nginx-error.log "$tmp"/nginx-stderr.log; do
        [ -s "$f" ] || continue
        echo "---- $(basename "$f") (last 30 lines) ----" >&2
        tail -n 30 "$f" >&2
    done
    exit 1
}
note() { echo "test_nginx: $*"; }

nginx=${BN_NGINX:-$(PATH=$PATH:/usr/sbin:/sbin command -v nginx)} ||
    skip "nginx is not installed (packaging/install-deps.sh installs Debian's nginx)"
command -v curl >/dev/null 2>&1 || skip "curl is not installed (packaging/install-deps.sh installs it)"
[ -x "${BN_BITNETD:-}" ] || skip "BN_BITNETD is not an executable (run through make check)"
[ -x "${BN_BITNET:-}" ] || skip "BN_BITNET is not an executable (run through make check)"
[ -f "$conf_src" ] || fail "$conf_src is missing"

tmp=${BN_TEST_TMPDIR:-/tmp}/nginx.$$
mkdir -p "$tmp/conf.d" || exit 1
bd_pid='' bd2_pid='' ng_pid='' bd_port='' bd2_port='' ng_port='' tls_port=''

# 0 while process $1 runs (a zombie does not: kill -0 cannot tell them apart).
running() {
    local line=
    [ -n "$1" ] && read -r line 2>/dev/null <"/proc/$1/stat" || return 1
    case "${line##*) }" in Z* | X*) return 1 ;; esac
}
# Children of process $1 (nginx's workers), from /proc.
children() {
    local f line rest
    for f in /proc/[0-9]*/stat; do
        read -r line 2>/dev/null <"$f" || continue
        rest=${line##*) }
        rest=${rest#* }
        [ "${rest%% *}" = "$1" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
    done
}
# stop PID: SIGTERM, SIGKILL after 15 s (and to its children: nginx workers do not die with
# their master); reaps it and sets $st to its exit status.
stop() {
    local pid=$1 i=0 kids
    st=0
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null
    while running "$pid" && [ $i -lt 150 ]; do sleep 0.1; i=$((i + 1)); done
    if running "$pid"; then
        kids=$(children "$pid")
        # shellcheck disable=SC2086
        kill -KILL "$pid" $kids 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    st=$?
}
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    stop "$ng_pid"
    stop "$bd_pid"
    stop "$bd2_pid"
    if [ -n "${BN_KEEP_TMP:-}" ]; then echo "test_nginx: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# free_port VAR: sets VAR to a random loopback port that /proc/net/tcp{,6} shows unused and
# this test has not taken yet (a start that loses a race for it retries with another).
taken=
free_port() {
    local i p hex
    for i in $(seq 1 100); do
        p=$((20000 + RANDOM % 40000))
        hex=$(printf '%04X' "$p")
        grep -q ":$hex " /proc/net/tcp /proc/net/tcp6 2>/dev/null && continue
        case " $taken " in *" $p "*) continue ;; esac
        taken="$taken $p"
        printf -v "$1" '%s' "$p"
        return 0
    done
    fail "no free port"
}
# code URL [CURL ARGS]: the HTTP status (000: no answer); the body in $tmp/body, headers in
# $tmp/headers.
code() {
    local url=$1
    shift
    curl -sS -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' --max-time 30 "$@" "$url" \
        2>"$tmp/curl.err" || true
}
# post URL JSON [CURL ARGS]: code for a JSON POST.
post() {
    local url=$1 json=$2
    shift 2
    code "$url" -H 'Content-Type: application/json' --data-binary "$json" "$@"
}
# want WHAT STATUS REGEX: fails unless the last answer had STATUS and a body matching REGEX.
want() {
    [ "$c" = "$2" ] && grep -Eq -- "$3" "$tmp/body" && return 0
    fail "$1: want $2 and /$3/, got $c: $(head -c 400 "$tmp/body") $(cat "$tmp/curl.err")"
}
# header NAME: its value in $tmp/headers (last response), without the CR.
header() {
    sed -n "s/^$1: *\\([^[:cntrl:]]*\\).*/\\1/Ip" "$tmp/headers" | tail -n 1
}

# ---- bitnetd

"$BN_BITNET" mkmodel 'tiny,n_ctx_max=4096,n_layer=8,n_embd=1024,n_head=8,n_head_kv=4,n_ff=2816' "$tmp/model.bnpk" >"$tmp/mkmodel.log" 2>&1 ||
    fail "bitnet mkmodel: $(cat "$tmp/mkmodel.log")"

# start_bitnetd PORT N: bitnetd number N on PORT in the background, its pid in $started; 0 once
# GET /ready is 200 (30 s at most). Its access log: $tmp/bitnetd-N-requests.log.
start_bitnetd() {
    local i
    cat >"$tmp/bitnetd-$2.conf" <<EOF
listen = 127.0.0.1:$1
model = $tmp/model.bnpk
model_name = bitnet-test
workers = 1
threads = 1
n_ctx = 2048
access_log = $tmp/bitnetd-$2-requests.log
shutdown_timeout = 10s
EOF
    echo "---- bitnetd $2 starts on port $1" >>"$tmp/bitnetd.log"
    "$BN_BITNETD" -c "$tmp/bitnetd-$2.conf" --foreground >>"$tmp/bitnetd.log" 2>&1 &
    started=$!
    for i in $(seq 1 300); do
        [ "$(code "http://127.0.0.1:$1/ready")" = 200 ] && return 0
        running "$started" || break
        sleep 0.1
    done
    stop "$started"
    started=
    return 1
}
for try in 1 2 3; do
    free_port bd_port
    start_bitnetd "$bd_port" 1 && bd_pid=$started && break
    [ $try -lt 3 ] || fail "bitnetd did not become ready"
done
note "bitnetd on 127.0.0.1:$bd_port (pid $bd_pid)"

# ---- the nginx configuration

# A self-signed certificate for the TLS server, when openssl is here.
tls=
if command -v openssl >/dev/null 2>&1 &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=127.0.0.1 -keyout "$tmp/tls.key" -out "$tmp/tls.pem" >"$tmp/openssl.log" 2>&1; then
    tls=1
else
    echo "######## test_nginx: the TLS server is NOT tested: openssl is missing or failed ########" >&2
fi

# write_conf NGINX_PORT TLS_PORT: conf.d/bitnetd.conf, the shipped file with the upstream on
# $bd_port, the plain server on NGINX_PORT, the TLS server uncommented on TLS_PORT (when $tls),
# logs in $tmp. Fails when the file no longer has the lines rewritten here.
write_conf() {
    local out=$tmp/conf.d/bitnetd.conf
    sed -e "s#^\\(    server \\)127\\.0\\.0\\.1:30000;#\\1127.0.0.1:$bd_port;#" \
        -e "s#^    listen 80;#    listen 127.0.0.1:$1;#" \
        -e '/^    listen \[::\]:80;/d' \
        -e "s#/var/log/nginx/#$tmp/#" "$conf_src" >"$out.plain"
    sed -e '/^#server {$/,/^#}$/s/^#//' "$out.plain" >"$out.all"
    # The TLS server must repeat the plain one's common part exactly.
    awk -v d="$tmp" '/^    # ---- common/ { n++; on = 1 } on { print > (d "/common" n) } /^}/ { on = 0 }' \
        "$out.all"
    if [ ! -f "$tmp/common1" ] || [ ! -f "$tmp/common2" ]; then
        fail "bitnetd.conf: no '# ---- common' part in the plain and the TLS server"
    fi
    diff -u "$tmp/common1" "$tmp/common2" >"$tmp/common.diff" ||
        fail "bitnetd.conf: the TLS server's common part differs from the plain server's:
$(cat "$tmp/common.diff")"
    if [ -n "$tls" ]; then
        sed -e "s#^    listen 443 ssl http2;#    listen 127.0.0.1:$2 ssl http2;#" \
            -e '/^    listen \[::\]:443 ssl http2;/d' \
            -e "s#^\\(    ssl_certificate \\).*#\\1$tmp/tls.pem;#" \
            -e "s#^\\(    ssl_certificate_key \\).*#\\1$tmp/tls.key;#" "$out.all" >"$out"
        grep -q "listen 127.0.0.1:$2 ssl http2;" "$out" ||
            fail "bitnetd.conf: the TLS server has no 'listen 443 ssl http2;' line to test"
    else
        cp "$out.plain" "$out"
    fi
    rm -f "$out.plain" "$out.all"
    grep -q "^    server 127.0.0.1:$bd_port;" "$out" ||
        fail "bitnetd.conf: no 'server 127.0.0.1:30000;' line in the upstream"
    grep -q "listen 127.0.0.1:$1;" "$out" || fail "bitnetd.conf: no 'listen 80;' line"
    ! grep -Eq '^ *listen ([^1]|1[^2])' "$out" ||
        fail "bitnetd.conf: a listen line this test does not know: $(grep -E '^ *listen' "$out")"
}

user_line=
[ "$(id -u)" -eq 0 ] && user_line="user $(id -un) $(id -gn);"
mime=
[ -f /etc/nginx/mime.types ] && mime="include /etc/nginx/mime.types;"
temp_paths="client_body_temp_path $tmp/ngx-body; proxy_temp_path $tmp/ngx-proxy;"
temp_paths+=" fastcgi_temp_path $tmp/ngx-fcgi; uwsgi_temp_path $tmp/ngx-uwsgi; scgi_temp_path $tmp/ngx-scgi;"
# As Debian's stock nginx.conf, but everything in $tmp.
cat >"$tmp/nginx.conf" <<EOF
$user_line
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log notice;
events { worker_connections 256; }
http {
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    $mime
    default_type application/octet-stream;
    access_log $tmp/nginx-access.log;
    gzip on;
    $temp_paths
    include $tmp/conf.d/*.conf;
}
EOF
ng_args=(-p "$tmp/" -c "$tmp/nginx.conf")
"$nginx" -h 2>&1 | grep -q -- '-e filename' && ng_args+=(-e "$tmp/nginx-error.log")

for try in 1 2 3; do
    free_port ng_port
    free_port tls_port
    write_conf "$ng_port" "$tls_port"
    "$nginx" -t "${ng_args[@]}" >"$tmp/nginx-t.log" 2>&1 ||
        fail "nginx -t refuses the configuration: $(cat "$tmp/nginx-t.log")"
    "$nginx" "${ng_args[@]}" >>"$tmp/nginx-stderr.log" 2>&1 &
    ng_pid=$!
    for i in $(seq 1 100); do
        [ "$(code "http://127.0.0.1:$ng_port/health")" = 200 ] && break 2
        running "$ng_pid" || break
        sleep 0.1
    done
    stop "$ng_pid"
    ng_pid=
    [ $try -lt 3 ] || fail "nginx did not answer /health on port $ng_port"
done
ng=http://127.0.0.1:$ng_port
note "nginx on 127.0.0.1:$ng_port (pid $ng_pid)${tls:+, TLS on $tls_port}"

# The shipped file inside Debian's own nginx.conf (next to its default site), as installed in
# /etc/nginx/conf.d/: only the paths this user cannot write are moved into $tmp.
# (nginx -t binds the ports, and the default site's port 80 needs root)
if [ ! -f /etc/nginx/nginx.conf ]; then
    echo "######## test_nginx: no /etc/nginx/nginx.conf: the stock-config check is skipped ########" >&2
elif [ "$(id -u)" -ne 0 ]; then
    echo "######## test_nginx: not root: the stock-config check (port 80) is skipped ########" >&2
elif [ ! -e /proc/net/if_inet6 ]; then
    echo "######## test_nginx: no IPv6 here: the stock-config check ([::]:80) is skipped ########" >&2
else
    mkdir -p "$tmp/stock.d"
    sed -e "s#/var/log/nginx/#$tmp/#" "$conf_src" >"$tmp/stock.d/bitnetd.conf"
    sed -e "s#include /etc/nginx/conf.d/\\*\\.conf;#include $tmp/stock.d/*.conf;#" \
        -e "s#/var/log/nginx/#$tmp/#g" -e "s#^pid .*#pid $tmp/stock.pid;#" \
        -e "s#^http {#http {\\n$temp_paths#" /etc/nginx/nginx.conf >"$tmp/stock.conf"
    grep -q "include $tmp/stock.d/" "$tmp/stock.conf" ||
        fail "/etc/nginx/nginx.conf does not include /etc/nginx/conf.d/*.conf"
    "$nginx" -t -p "$tmp/" -c "$tmp/stock.conf" >"$tmp/stock-t.log" 2>&1 ||
        fail "nginx -t: bitnetd.conf in Debian's stock nginx.conf: $(cat "$tmp/stock-t.log")"
    ! grep -E '\[(warn|emerg|alert)\]' "$tmp/stock-t.log" | grep -v '"user" directive' ||
        fail "nginx -t warns about bitnetd.conf in Debian's stock nginx.conf: $(cat "$tmp/stock-t.log")"
    note "ok: nginx -t accepts bitnetd.conf in /etc/nginx/conf.d of the stock nginx.conf"
fi

# ---- (a) a stream arrives token by token

# stream BASE [CURL ARGS]: a 400-token chat stream; every line of it in $tmp/stream.txt with the
# time it arrived (s since the request). Fails unless it ends with [DONE] and its first event
# came before half the total time (an nginx that buffers delivers every event at the end).
stream() {
    local base=$1 t0 rc
    shift
    t0=$EPOCHREALTIME
    curl -sS -N --no-buffer --max-time 60 -H 'Content-Type: application/json' "$@" \
        --data-binary '{"model": "bitnet-test", "messages": [{"role": "user", "content": "Count."}],
            "max_tokens": 400, "ignore_eos": true, "temperature": 0, "stream": true}' \
        "$base/v1/chat/completions" 2>"$tmp/curl.err" |
        while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$tmp/stream.raw"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || fail "stream through $base: curl exited $rc: $(cat "$tmp/curl.err")"
    awk -v t0="$t0" '{ $1 = sprintf("%.4f", $1 - t0); print }' "$tmp/stream.raw" >"$tmp/stream.txt"
    grep -q '^[0-9.]* data: \[DONE\]' "$tmp/stream.txt" ||
        fail "stream through $base has no [DONE]: $(head -c 600 "$tmp/stream.txt")"
    awk '$2 == "data:" { n++; if (n == 1) first = $1; last = $1 }
         END {
             printf "%d events, first at %.3f s, last at %.3f s\n", n, first, last
             exit !(n >= 20 && first < 0.5 * last)
         }' "$tmp/stream.txt" >"$tmp/stream.verdict" ||
        fail "stream through $base not token by token: $(cat "$tmp/stream.verdict")"
    note "ok: stream through $base token by token: $(cat "$tmp/stream.verdict")"
}
stream "$ng"
# Each event is a whole line: nginx passes the SSE framing through untouched.
grep -Eqv '^[0-9.]+ ?($|data: \{|data: \[DONE\]|: ping)' "$tmp/stream.txt" &&
    fail "stream through nginx has a malformed line: $(grep -Ev '^[0-9.]+ ?($|data: \{|data: \[DONE\]|: ping)' "$tmp/stream.txt" | head -n 3)"

# ---- (b) non-streaming calls, checks, ids, errors

chat='{"model": "bitnet-test", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}'
c=$(post "$ng/v1/chat/completions" "$chat")
want "chat completion through nginx" 200 '"chat\.completion"'
grep -q '"finish_reason"' "$tmp/body" || fail "chat completion without a finish_reason: $(cat "$tmp/body")"
c=$(post "$ng/v1/completions" '{"prompt": "Once upon", "max_tokens": 8}')
want "completion through nginx" 200 '"text_completion"'
c=$(code "$ng/health")
want "/health through nginx" 200 '"healthy"'
c=$(code "$ng/ready")
want "/ready through nginx" 200 '"ready"'
c=$(code "$ng/v1/models")
want "/v1/models through nginx" 200 '"bitnet-test"'
c=$(code "$ng/metrics")
want "/metrics through nginx from loopback" 200 '^vllm:'
note "ok: chat and completions (non-streaming), /health, /ready, /v1/models, /metrics"

# Upstream keep-alive: the connections nginx opened to bitnetd stay open once their requests are
# done (without HTTP/1.1 and an empty Connection header each would be closed).
hex=$(printf '%04X' "$bd_port")
n_keep=$(awk -v p=":$hex" 'substr($3, length($3) - 4) == p && $4 == "01"' /proc/net/tcp | wc -l)
[ "$n_keep" -ge 1 ] || fail "no idle keep-alive connection from nginx to bitnetd after the requests"
note "ok: nginx keeps $n_keep idle connection(s) open to bitnetd"

# A client's X-Request-Id reaches bitnetd and comes back; without one, nginx's $request_id is
# sent, and the same id is in both access logs.
c=$(post "$ng/v1/chat/completions" "$chat" -H 'X-Request-Id: nginx-test-42')
want "chat completion with an X-Request-Id" 200 '"chat\.completion"'
[ "$(header X-Request-Id)" = nginx-test-42 ] ||
    fail "X-Request-Id not passed through: got '$(header X-Request-Id)'"
c=$(post "$ng/v1/chat/completions" "$chat")
want "chat completion without an X-Request-Id" 200 '"chat\.completion"'
rid=$(header X-Request-Id)
[[ $rid =~ ^[0-9a-f]{32}$ ]] ||
    fail "without X-Request-Id the answer should carry nginx's \$request_id, got '$rid'"
# (bitnetd logs a request once it ends, maybe just after its answer went out)
for i in $(seq 1 50); do
    grep -q "$rid" "$tmp/bitnetd-1-requests.log" 2>/dev/null && break
    sleep 0.1
done
grep -q "$rid" "$tmp/bitnetd-1-requests.log" || fail "request id $rid is not in bitnetd's access log"
grep -q "rid=$rid " "$tmp/bitnetd-access.log" || fail "request id $rid is not in nginx's access log"
note "ok: X-Request-Id passed through, nginx's \$request_id when absent ($rid)"

head -c 1100000 /dev/zero | tr '\0' a | sed 's/^/{"prompt": "/; s/$/", "max_tokens": 1}/' >"$tmp/big.json"
c=$(code "$ng/v1/completions" -H 'Content-Type: application/json' --data-binary "@$tmp/big.json")
want "a 1.05 MiB body through nginx" 413 '\(nginx client_max_body_size\)".*"code":"request_too_large"'
note "ok: a body over client_max_body_size gets 413 with an OpenAI-style error"

# ---- (c) a bitnetd restart behind nginx

for i in 1 2 3; do post "$ng/v1/chat/completions" "$chat" >/dev/null; done # warm keep-alive
stop "$bd_pid"
bd_pid=
[ "$st" -eq 0 ] || fail "bitnetd exited $st after SIGTERM"
c=$(post "$ng/v1/chat/completions" "$chat")
want "a request while bitnetd is down" 502 '"code":"bad_gateway"'
[ "$(header Retry-After)" = 1 ] || fail "nginx's 502 has no 'Retry-After: 1'"
start_bitnetd "$bd_port" 1 || fail "bitnetd did not start again on port $bd_port"
bd_pid=$started
ok=
for tries in $(seq 1 40); do
    c=$(post "$ng/v1/chat/completions" "$chat")
    [ "$c" = 200 ] && { ok=1; break; }
    sleep 0.25
done
[ -n "$ok" ] || fail "no request through nginx succeeded after the bitnetd restart: last $c"
for i in 1 2 3 4 5; do
    c=$(post "$ng/v1/chat/completions" "$chat")
    [ "$c" = 200 ] || fail "request $i after the restart (once one succeeded) failed: $c $(cat "$tmp/body")"
done
stream "$ng"
note "ok: bitnetd restarted behind nginx: the first request through it got 502 (JSON), requests succeed again (on try $tries)"

# ---- (d) bitnet loadtest through nginx

"$BN_BITNET" loadtest --url "$ng" --users 2 --requests 4 --max-tokens 16 --timeout 60 --json \
    >"$tmp/loadtest.json" 2>"$tmp/loadtest.err" ||
    fail "bitnet loadtest through nginx exited $?: $(cat "$tmp/loadtest.err" "$tmp/loadtest.json")"
grep -Eq '"requests_ok": *4,' "$tmp/loadtest.json" ||
    fail "bitnet loadtest through nginx: want 4 ok requests: $(head -c 800 "$tmp/loadtest.json")"
note "ok: bitnet loadtest through nginx: 4 of 4 requests ok"

# ---- the TLS server (HTTP/2 when curl has it)

if [ -n "$tls" ]; then
    h2=
    curl -V | grep -qw HTTP2 && h2=--http2
    c=$(code "https://127.0.0.1:$tls_port/health" -k $h2)
    [ "$c" = 200 ] || fail "/health through the TLS server: $c $(cat "$tmp/curl.err")"
    stream "https://127.0.0.1:$tls_port" -k $h2
    note "ok: the TLS server (${h2:-HTTP/1.1}) serves /health and streams token by token"
fi

# ---- (e) two hosts: a second bitnetd joins by an nginx reload, the first one leaves

for try in 1 2 3; do
    free_port bd2_port
    start_bitnetd "$bd2_port" 2 && bd2_pid=$started && break
    [ $try -lt 3 ] || fail "the second bitnetd did not become ready"
done
sed -i "s#^    server 127\\.0\\.0\\.1:$bd_port;#&\\n    server 127.0.0.1:$bd2_port;#" "$tmp/conf.d/bitnetd.conf"
grep -q "^    server 127.0.0.1:$bd2_port;" "$tmp/conf.d/bitnetd.conf" ||
    fail "could not add the second host to the upstream"
"$nginx" -t "${ng_args[@]}" >"$tmp/nginx-t.log" 2>&1 ||
    fail "nginx -t refuses the two-host configuration: $(cat "$tmp/nginx-t.log")"
# served2: chat completions in the second bitnetd's access log.
served2() { grep -c '/v1/chat/completions' "$tmp/bitnetd-2-requests.log"; }
kill -HUP "$ng_pid"
# Requests during the reload succeed; once one reaches the second host, the reload is done.
for i in $(seq 1 50); do
    c=$(post "$ng/v1/chat/completions" "$chat")
    [ "$c" = 200 ] || fail "a request during the nginx reload failed: $c $(cat "$tmp/body")"
    [ "$(served2)" -ge 1 ] && break
    sleep 0.2
done
[ "$(served2)" -ge 1 ] || fail "no request reached the second bitnetd after the reload"
stop "$bd_pid"
bd_pid=
[ "$st" -eq 0 ] || fail "bitnetd 1 exited $st after SIGTERM"
n0=$(served2)
for i in 1 2 3 4 5 6; do
    c=$(post "$ng/v1/chat/completions" "$chat")
    [ "$c" = 200 ] || fail "request $i with the first host gone failed: $c $(cat "$tmp/body")"
done
for i in $(seq 1 50); do
    [ "$(served2)" -ge $((n0 + 6)) ] && break
    sleep 0.1
done
[ "$(served2)" -ge $((n0 + 6)) ] ||
    fail "the second bitnetd did not serve the 6 requests made with the first one gone"
note "ok: two hosts: a reload adds one, the other stops, no request fails"

stop "$ng_pid"
ng_pid=
[ "$st" -eq 0 ] || fail "nginx exited $st after SIGTERM"
stop "$bd2_pid"
bd2_pid=
[ "$st" -eq 0 ] || fail "bitnetd 2 exited $st after SIGTERM"
exit 0
