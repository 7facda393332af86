#!/bin/sh
# Installs bitnetd's build and test dependencies on Debian/Ubuntu (uses sudo when not root).
# Pass --fuzz to add clang and its sanitizer runtimes (libFuzzer targets), --valgrind for valgrind,
# --build-only for just what building needs (the serve path, Docker, SkyPilot: no test tools).
# Otherwise also: node and npm (Debian's, unless a node is already installed) and the pinned OpenAI Node
# SDK in tests/node (tests/test_node_sdk.sh); nginx (Debian's core package: proxy, SSL, HTTP/2),
# curl and openssl for tests/test_nginx.sh. Safe to run again: it only installs what is missing.
set -e
here=$(cd "$(dirname "$0")/.." && pwd)
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
PKGS="build-essential autoconf automake autoconf-archive pkg-config
      libevent-dev libhwloc-dev libjansson-dev libpcre2-dev libxxhash-dev"
TEST_PKGS="check nginx curl openssl"
build_only=0
for arg in "$@"; do
    case "$arg" in
    --fuzz) PKGS="$PKGS clang libclang-rt-dev" ;;
    --valgrind) PKGS="$PKGS valgrind" ;;
    --build-only) build_only=1 ;;
    esac
done
if [ "$build_only" -eq 0 ]; then
    PKGS="$PKGS $TEST_PKGS"
    command -v node >/dev/null 2>&1 || PKGS="$PKGS nodejs npm"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $PKGS >/dev/null

[ "$build_only" -eq 1 ] && exit 0

# The openai package pinned by tests/node/package-lock.json (npm runs as this script's user).
node_dir=$here/tests/node
want=$(sed -n 's/^ *"openai": *"\([^"]*\)".*/\1/p' "$node_dir/package.json" | head -n 1)
have=$(cd "$node_dir" 2>/dev/null &&
    node -p "require('./node_modules/openai/package.json').version" 2>/dev/null) || have=
if [ "$have" != "$want" ]; then
    (cd "$node_dir" && { npm ci --no-audit --no-fund --loglevel=error >/dev/null ||
        npm install --no-audit --no-fund --loglevel=error >/dev/null; })
fi
