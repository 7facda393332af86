# shellcheck shell=sh
# Shared by the deployment scripts beside it (sourced, not run). POSIX sh.
# The same scripts serve the source tree (README quick start, SkyPilot: binaries in the
# checkout), the Docker image (binaries on PATH, scripts in /usr/share/bitnetd/scripts) and CI.

# scripts_dir and top must be set by the caller: top is the checkout when the scripts live in
# one (packaging/scripts/../..), else just the scripts' parent.
: "${top:?set top before sourcing common.sh}"
prog=${0##*/}

die() {
    printf '%s: %s\n' "$prog" "$*" >&2
    exit 1
}

note() {
    printf '%s: %s\n' "$prog" "$*" >&2
}

usage_error() {
    printf '%s: %s (see %s --help)\n' "$prog" "$*" "$prog" >&2
    exit 2
}

# find_bin NAME ENVVAR: $ENVVAR when set, else the checkout's in-tree build, else PATH.
find_bin() {
    eval "_fb=\${$2:-}"
    if [ -n "$_fb" ]; then
        [ -x "$_fb" ] || die "$2=$_fb is not an executable"
    elif [ -x "$top/$1" ] && [ -f "$top/configure.ac" ]; then
        _fb=$top/$1
    elif _fb=$(command -v "$1" 2>/dev/null); then
        :
    else
        die "cannot find '$1': build it (packaging/scripts/build.sh), put it on PATH, or set $2"
    fi
    printf '%s\n' "$_fb"
}

# need_arg OPTION "$#": an option that takes a value must have one.
need_arg() {
    [ "$2" -ge 2 ] || usage_error "$1 needs a value"
}

is_uint() {
    case "$1" in
    '' | *[!0-9]*) return 1 ;;
    *) return 0 ;;
    esac
}
