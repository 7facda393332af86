#!/bin/sh
# Starts bitnetd the way every deployment does (SkyPilot, SkyServe, the Docker image, CI):
# gets the model if it is missing (--fetch), writes a config sized for this machine with
# write-config.sh (unless --config is given), then replaces itself with bitnetd, so signals
# (SIGTERM drains, SIGHUP reloads) reach bitnetd directly. A model that is not a packed file
# (the Hugging Face download) is converted by bitnetd on its first start into $BITNET_CACHE,
# while /health already answers and /ready says "loading"; later starts reuse the cache.
#
#   packaging/scripts/serve.sh [--model PATH | --synthetic SHAPE] [--fetch] [--repo ID]
#                              [--config FILE] [--conf-out FILE]
#                              [write-config.sh options and KEY=VALUE...] [-- bitnetd flags]
#
#   --model PATH       the model (default $BITNETD_MODEL, else ~/models/bitnet-b1.58-2B-4T)
#   --synthetic SHAPE  serve a synthetic model made in the cache (tests, smoke checks)
#   --fetch            download the model with fetch-model.sh when it is missing or partial
#                        (also BITNETD_FETCH=1); --no-fetch: never (the default)
#   --repo ID          what --fetch downloads (default $BITNETD_MODEL_REPO, else
#                        microsoft/bitnet-b1.58-2B-4T)
#   --config FILE      serve this file as it is (no write-config.sh; also BITNETD_CONFIG)
#   --conf-out FILE    where the written config goes (default $BITNET_CACHE/bitnetd.conf)
#
# Environment: BITNET_CACHE (default ~/.cache/bitnetd), BITNETD_BIN, BITNET_BIN, and
# write-config.sh's BITNETD_* defaults.
set -eu
scripts_dir=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$scripts_dir/../.." && pwd)
# shellcheck source=common.sh
. "$scripts_dir/common.sh"

model=${BITNETD_MODEL:-}
model_flag=0
synthetic=
fetch=${BITNETD_FETCH:-0}
repo=${BITNETD_MODEL_REPO:-microsoft/bitnet-b1.58-2B-4T}
config=${BITNETD_CONFIG:-}
conf_out=${BITNETD_CONF_OUT:-}
cache=${BITNET_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/bitnetd}
wc_args=$(mktemp "${TMPDIR:-/tmp}/serve-args.XXXXXX")
trap 'rm -f "$wc_args"' EXIT
while [ $# -gt 0 ]; do
    case "$1" in
    -m | --model) need_arg "$1" $#; model=$2; model_flag=1; shift ;;
    --synthetic) need_arg "$1" $#; synthetic=$2; shift ;;
    --fetch) fetch=1 ;;
    --no-fetch) fetch=0 ;;
    --repo) need_arg "$1" $#; repo=$2; shift ;;
    --config) need_arg "$1" $#; config=$2; shift ;;
    --conf-out) need_arg "$1" $#; conf_out=$2; shift ;;
    -h | --help) sed -n '2,24s/^# \{0,1\}//p' "$0"; exit 0 ;;
    --) shift; break ;;
    *) printf '%s\n' "$1" >>"$wc_args" ;;
    esac
    shift
done
case "$fetch" in 0 | 1) ;; *) usage_error "BITNETD_FETCH=$fetch is not 0 or 1" ;; esac
if [ -n "$config" ] && [ -s "$wc_args" ]; then
    usage_error "--config serves its file as it is: '$(head -n 1 "$wc_args")' is a write-config.sh argument"
fi
if [ -n "$synthetic" ] && [ "$model_flag" -eq 1 ]; then
    usage_error "--model and --synthetic exclude each other"
fi
bitnetd=$(find_bin bitnetd BITNETD_BIN)
mkdir -p "$cache" || die "cannot create the cache directory $cache"
export BITNET_CACHE="$cache"

# The model: made, fetched, or checked.
explicit_model=$model
if [ -n "$synthetic" ]; then
    name=$(printf '%s' "$synthetic" | tr -c 'A-Za-z0-9_.=-' '_')
    model=$("$scripts_dir/fetch-model.sh" --synthetic "$synthetic" "$cache/synthetic-$name.bnpk")
    explicit_model=$model
fi
[ -n "$model" ] || model=${HOME:-/nonexistent}/models/bitnet-b1.58-2B-4T
incomplete() {
    [ ! -e "$1" ] && return 0
    [ -d "$1" ] || return 1
    if [ -f "$1/.bitnetd-fetch" ]; then
        case "$(cat "$1/.bitnetd-fetch")" in partial*) return 0 ;; esac
    fi
    [ ! -f "$1/config.json" ] && ! ls "$1"/*.gguf >/dev/null 2>&1
}
if incomplete "$model"; then
    if [ "$fetch" -eq 1 ]; then
        model=$("$scripts_dir/fetch-model.sh" --repo "$repo" "$model")
    elif [ -e "$model" ]; then
        die "$model holds no model (no config.json, no .gguf, or a partial download): run packaging/scripts/fetch-model.sh $model, or serve.sh --fetch"
    else
        die "no model at $model: run packaging/scripts/fetch-model.sh $model (or serve.sh --fetch, or --model PATH)"
    fi
fi

if [ -n "$config" ]; then
    [ -r "$config" ] || die "cannot read --config $config"
    if [ -n "$explicit_model" ]; then set -- -c "$config" -m "$explicit_model" "$@"
    else set -- -c "$config" "$@"
    fi
else
    [ -n "$conf_out" ] || conf_out=$cache/bitnetd.conf
    # the collected options, one a line, become write-config.sh's arguments again
    set -f
    old_ifs=$IFS
    IFS='
'
    # shellcheck disable=SC2046
    BITNETD_BIN=$bitnetd "$scripts_dir/write-config.sh" --model "$model" --cache-dir "$cache" \
        --out "$conf_out" $(cat "$wc_args") || die "write-config.sh failed"
    IFS=$old_ifs
    set +f
    set -- -c "$conf_out" "$@"
fi
note "exec $bitnetd $*"
exec "$bitnetd" "$@"
