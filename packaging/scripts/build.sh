#!/bin/sh
# Builds bitnetd exactly as the README's quick start does: install the dependencies, generate
# ./configure, configure, make. The SkyPilot YAMLs and the Dockerfile's build stage call this,
# so every deployment builds the way the README does (CI compares the two with --dry-run).
#
#   packaging/scripts/build.sh [--no-deps] [--dry-run] [CONFIGURE_ARGS...]
#
#   --no-deps   skip packaging/install-deps.sh (the dependencies are installed already)
#   --dry-run   print the command chain instead of running it
#   CONFIGURE_ARGS go to ./configure (e.g. --prefix=/usr --sysconfdir=/etc, --enable-native).
# Environment: BN_JOBS (make's -j; default: nproc).
set -eu
scripts_dir=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$scripts_dir/../.." && pwd)
# shellcheck source=common.sh
. "$scripts_dir/common.sh"

deps=1
dry=0
while [ $# -gt 0 ]; do
    case "$1" in
    --no-deps) deps=0 ;;
    --dry-run) dry=1 ;;
    -h | --help)
        sed -n '2,12s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    --) shift; break ;;
    *) break ;;
    esac
    shift
done
[ -f "$top/configure.ac" ] || die "$top is not a bitnetd source tree"

# One chain, printed or run. The words are the README's; configure's arguments are appended.
configure='./configure'
for a in "$@"; do
    case "$a" in
    '' | *[!A-Za-z0-9_=/.,:+@-]*)  # quoted for the eval below: 'CFLAGS=-O2 -g'
        a="'$(printf '%s' "$a" | sed "s/'/'\\\\''/g")'" ;;
    esac
    configure="$configure $a"
done
jobs=${BN_JOBS:-}
if [ -n "$jobs" ]; then
    if ! is_uint "$jobs" || [ "$jobs" -lt 1 ]; then die "BN_JOBS=$jobs is not a whole number >= 1"; fi
    make_cmd="make -j$jobs"
else
    # shellcheck disable=SC2016 # printed as the README writes it, expanded when run
    make_cmd='make -j"$(nproc)"'
fi
chain="./autogen.sh && $configure && $make_cmd"
[ "$deps" -eq 1 ] && chain="./packaging/install-deps.sh --build-only && $chain"

if [ "$dry" -eq 1 ]; then
    printf '%s\n' "$chain"
    exit 0
fi
cd "$top"
note "+ $chain"
eval "$chain"
note "built $top/bitnetd and $top/bitnet"
