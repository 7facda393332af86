#!/bin/sh
# Installs bitnetd's build and test dependencies on Debian/Ubuntu (uses sudo when not root).
# Pass --fuzz to add clang and its sanitizer runtimes (libFuzzer targets), --valgrind for valgrind.
set -e
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
PKGS="build-essential autoconf automake autoconf-archive pkg-config
      libevent-dev libhwloc-dev libjansson-dev libpcre2-dev libxxhash-dev check"
for arg in "$@"; do
    case "$arg" in
    --fuzz) PKGS="$PKGS clang libclang-rt-dev" ;;
    --valgrind) PKGS="$PKGS valgrind" ;;
    esac
done
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
