#!/bin/sh
# The official OpenAI Node SDK against bitnetd: tests/node/sdk.test.mjs under `node --test`, on a
# bitnetd started here on a free loopback port with a tiny synthetic model. Skips (exit 77) when
# node or the openai package (tests/node/node_modules, from `npm ci`) is missing.
set -u

srcdir=${BN_SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}
node_dir=$srcdir/tests/node

skip() {
    echo "######## test_node_sdk: SKIPPED: $* ########" >&2
    echo "test_node_sdk: SKIPPED: $*"
    exit 77
}
fail() {
    echo "test_node_sdk: FAIL: $*" >&2
    if [ -f "$tmp/bitnetd.log" ]; then
        echo "---- bitnetd log (last 40 lines) ----" >&2
        tail -n 40 "$tmp/bitnetd.log" >&2
    fi
    exit 1
}

command -v node >/dev/null 2>&1 ||
    skip "node is not installed (packaging/install-deps.sh installs nodejs and npm)"
[ -f "$node_dir/node_modules/openai/package.json" ] ||
    skip "the openai package is missing: run 'cd tests/node && npm ci'" \
        "(packaging/install-deps.sh does)"
[ -x "${BN_BITNETD:-}" ] || skip "BN_BITNETD is not an executable (run through make check)"
[ -x "${BN_BITNET:-}" ] || skip "BN_BITNET is not an executable (run through make check)"

tmp=${BN_TEST_TMPDIR:-/tmp}/node-sdk.$$
mkdir -p "$tmp" || exit 1
pid=
# 1 while $pid runs (a zombie does not: kill -0 cannot tell them apart).
running() {
    line=
    read -r line 2>/dev/null <"/proc/$pid/stat" || return 1
    case "${line##*) }" in Z* | X*) return 1 ;; esac
    return 0
}
# Stops bitnetd: SIGTERM, SIGKILL after 15 s; its exit status in $st.
stop_bitnetd() {
    st=0
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null
    i=0
    while running && [ $i -lt 150 ]; do sleep 0.1; i=$((i + 1)); done
    running && kill -KILL "$pid" 2>/dev/null
    wait "$pid"
    st=$?
    pid=
}
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    stop_bitnetd
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

"$BN_BITNET" mkmodel tiny "$tmp/model.bnpk" >"$tmp/mkmodel.log" 2>&1 ||
    fail "bitnet mkmodel: $(cat "$tmp/mkmodel.log")"
port=$(node -e "const s = require('net').createServer();
s.listen(0, '127.0.0.1', () => { console.log(s.address().port); s.close(); });") ||
    fail "no free port"
n_ctx=256
cat >"$tmp/bitnetd.conf" <<EOF
listen = 127.0.0.1:$port
model = $tmp/model.bnpk
model_name = bitnet-test
workers = 1
threads = 1
n_ctx = $n_ctx
api_keys = x
access_log = off
EOF
"$BN_BITNETD" -c "$tmp/bitnetd.conf" --foreground >"$tmp/bitnetd.log" 2>&1 &
pid=$!

# until GET /ready is 200, at most 30 s
BITNETD_PORT=$port node -e "
const url = 'http://127.0.0.1:' + process.env.BITNETD_PORT + '/ready';
const end = Date.now() + 30000;
(async () => {
  while (Date.now() < end) {
    try { if ((await fetch(url)).status === 200) process.exit(0); } catch (e) {}
    await new Promise((r) => setTimeout(r, 50));
  }
  process.exit(1);
})();" || fail "bitnetd did not become ready on port $port"

BITNETD_BASE_URL=http://127.0.0.1:$port/v1 BITNETD_N_CTX=$n_ctx BITNETD_MODEL=bitnet-test \
    node --test "$node_dir/sdk.test.mjs"
rc=$?
[ $rc -eq 0 ] || fail "node --test sdk.test.mjs exited $rc"

stop_bitnetd
[ $st -eq 0 ] || fail "bitnetd exited $st after SIGTERM"
exit 0
