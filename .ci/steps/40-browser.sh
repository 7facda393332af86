#!/usr/bin/env bash
# The chat page (GET /) in a real browser: Debian's headless Chromium driven by playwright-core
# (pinned in tests/browser/package-lock.json; it uses the system Chromium, downloads none).
# tests/browser/chat_page.test.mjs starts its own bitnetd servers on loopback and stops them;
# the phone-sized screenshot it takes is kept as a CI artifact.
set -euo pipefail
top=${BN_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
export BN_TOP=$top BN_BITNETD=${BN_BITNETD:-$top/bitnetd} BN_BITNET=${BN_BITNET:-$top/bitnet}
export BN_CHROMIUM=${BN_CHROMIUM:-/usr/bin/chromium}
fail() { echo "40-browser: $*" >&2; exit 1; }

[ -x "$BN_BITNETD" ] || fail "no bitnetd at $BN_BITNETD (build it first)"
[ -x "$BN_BITNET" ] || fail "no bitnet at $BN_BITNET (build it first)"
if [ ! -x "$BN_CHROMIUM" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null ||
        fail "apt-get install chromium failed"
fi
command -v node >/dev/null && command -v npm >/dev/null ||
    fail "node and npm are needed (packaging/install-deps.sh installs them)"
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || fail "node $(node --version) is too old: playwright-core needs node >= 20"
echo "+ $("$BN_CHROMIUM" --version 2>/dev/null | head -n 1), node $(node --version)"

cd "$top/tests/browser"
npm ci --no-audit --no-fund --loglevel=error >/dev/null || fail "npm ci in tests/browser failed"
rm -f "$top/tests/artifacts/chat_page.png"
# The test bounds each of its own waits; this bounds the whole (and a hung browser).
timeout -k 10 240 node --test --test-reporter=spec chat_page.test.mjs ||
    fail "chat_page.test.mjs failed (exit $?)"
[ -s "$top/tests/artifacts/chat_page.png" ] || fail "no screenshot at tests/artifacts/chat_page.png"
echo "40-browser: the chat page on a phone-sized screen: $top/tests/artifacts/chat_page.png"
