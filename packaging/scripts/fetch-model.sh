#!/bin/sh
# Gets a model for bitnetd and prints its path (the value for `model =`) on stdout.
#
#   packaging/scripts/fetch-model.sh [--repo ID] [--revision REV] [--method auto|hf|curl]
#                                    [--include GLOB]... DIR
#       Downloads a Hugging Face model repository into DIR (default
#       microsoft/bitnet-b1.58-2B-4T, the packed 1.58-bit weights, ~1.2 GB; its config, tokenizer,
#       weights, licence). bitnetd converts DIR on its first start, through its cache.
#       auto uses the `hf` or `huggingface-cli` command when installed, else curl (no Python
#       needed). Safe to run again: a complete DIR is left alone, a partial download resumes.
#   packaging/scripts/fetch-model.sh --synthetic SHAPE [--format FMT] [--seed N] OUT
#       Writes a deterministic synthetic model with `bitnet mkmodel` (tests, CI, smoke checks;
#       no network): SHAPE tiny|small|2b4t[,key=value...], FMT packed (default), hf, gguf-i2_s...
#
# Environment: HF_TOKEN (gated or private repositories), HF_ENDPOINT (default
# https://huggingface.co), BITNET_BIN (the bitnet tool for --synthetic).
set -eu
scripts_dir=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$scripts_dir/../.." && pwd)
# shellcheck source=common.sh
. "$scripts_dir/common.sh"

repo=microsoft/bitnet-b1.58-2B-4T
revision=main
method=auto
includes=
synthetic=
format=packed
seed=1
out=
while [ $# -gt 0 ]; do
    case "$1" in
    --repo) need_arg "$1" $#; repo=$2; shift ;;
    --revision) need_arg "$1" $#; revision=$2; shift ;;
    --method) need_arg "$1" $#; method=$2; shift ;;
    --include) need_arg "$1" $#; includes="$includes $2"; shift ;;
    --synthetic) need_arg "$1" $#; synthetic=$2; shift ;;
    --format) need_arg "$1" $#; format=$2; shift ;;
    --seed) need_arg "$1" $#; seed=$2; shift ;;
    -h | --help) sed -n '2,18s/^# \{0,1\}//p' "$0"; exit 0 ;;
    -*) usage_error "unknown option '$1'" ;;
    *) [ -z "$out" ] || usage_error "one output path only ('$out', then '$1')"; out=$1 ;;
    esac
    shift
done
[ -n "$out" ] || usage_error "no output path"
case "$method" in auto | hf | curl) ;; *) usage_error "--method: '$method' is not auto, hf or curl" ;; esac
case "$repo" in
*/*) ;;
*) usage_error "--repo: '$repo' is not OWNER/NAME" ;;
esac
case "$repo$revision" in
*[!A-Za-z0-9._/-]*) usage_error "--repo/--revision: unexpected characters in '$repo' / '$revision'" ;;
esac
# The files bitnetd reads (config, tokenizer, weights, chat template) and the licence.
[ -n "$includes" ] || includes='*.json *.safetensors *.jinja LICENSE* README.md'

# The path to hand bitnetd: the directory, or the one GGUF file in it.
model_path() {
    if [ -f "$1/config.json" ] || [ ! -d "$1" ]; then
        printf '%s\n' "$1"
        return
    fi
    set -- "$1"/*.gguf
    if [ $# -eq 1 ] && [ -f "$1" ]; then printf '%s\n' "$1"; else printf '%s\n' "${1%/\*.gguf}"; fi
}

synthesize() {
    bitnet=$(find_bin bitnet BITNET_BIN)
    if [ -e "$out" ]; then
        note "$out exists: kept (remove it to make a new one)"
    else
        mkdir -p "$(dirname "$out")"
        "$bitnet" mkmodel -f "$format" -s "$seed" "$synthetic" "$out" >&2 ||
            die "bitnet mkmodel $synthetic failed"
    fi
    printf '%s\n' "$out"
}

# matches_include NAME: NAME matches one of the --include globs (not expanded against files).
matches_include() {
    set -f
    for _g in $includes; do
        # shellcheck disable=SC2254 # the patterns are globs on purpose
        case "$1" in $_g) set +f; return 0 ;; esac
    done
    set +f
    return 1
}

# curl with the token when one is set; the token goes only to the first host (no
# --location-trusted), as the CDN URLs Hugging Face redirects to are signed.
hf_curl() {
    if [ -n "${HF_TOKEN:-}" ]; then
        curl -fsSL --retry 3 --retry-delay 2 -H "Authorization: Bearer $HF_TOKEN" "$@"
    else
        curl -fsSL --retry 3 --retry-delay 2 "$@"
    fi
}

# The repository's file list, from the Hub API: one file name a line.
list_files() {
    _json=$(hf_curl "$endpoint/api/models/$repo/revision/$revision") || return 1
    printf '%s\n' "$_json" | tr ',' '\n' | sed -n 's/.*"rfilename" *: *"\([^"]*\)".*/\1/p'
}

# The files to fetch: the repository's files that match --include, checked for odd names.
wanted_files() {
    files=$(list_files) || die "cannot list $repo@$revision at $endpoint (network, name, or HF_TOKEN?)"
    wanted=
    set -f
    for f in $files; do
        matches_include "$f" || continue
        case "$f" in
        /* | *..* | *[!A-Za-z0-9._/-]*) die "refusing the odd file name '$f' from $endpoint" ;;
        esac
        wanted="$wanted $f"
    done
    set +f
    [ -n "$wanted" ] || die "$repo@$revision has no file matching: $includes"
}

fetch_curl() {
    # shellcheck disable=SC2086 # one word per file name (checked: no spaces, no globs)
    set -- $wanted
    for f in "$@"; do
        dest=$out/$f
        [ -s "$dest" ] && continue
        mkdir -p "$(dirname "$dest")"
        note "downloading $repo/$f"
        url=$endpoint/$repo/resolve/$revision/$f
        # resume a partial file; a server that cannot resume gets a fresh download
        if ! hf_curl -C - -o "$dest.part" "$url"; then
            rm -f "$dest.part"
            hf_curl -o "$dest.part" "$url" || die "cannot download $url"
        fi
        mv "$dest.part" "$dest"
    done
}

# The file names as arguments: every version of the CLI takes those (not so --include lists).
fetch_hf() {
    # shellcheck disable=SC2086 # one argument per file name (checked above: no spaces)
    "$hf_cli" download "$repo" $wanted --revision "$revision" --local-dir "$out" >&2 ||
        die "$hf_cli download $repo failed"
}

if [ -n "$synthetic" ]; then
    synthesize
    exit 0
fi

endpoint=${HF_ENDPOINT:-https://huggingface.co}
endpoint=${endpoint%/}
stamp=$out/.bitnetd-fetch
want="$repo@$revision $includes"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    note "$out already holds $repo@$revision"
    model_path "$out"
    exit 0
fi
hf_cli=
if [ "$method" != curl ]; then
    if command -v hf >/dev/null 2>&1; then hf_cli=hf
    elif command -v huggingface-cli >/dev/null 2>&1; then hf_cli=huggingface-cli
    elif [ "$method" = hf ]; then die "--method hf: neither 'hf' nor 'huggingface-cli' is installed"
    fi
fi
mkdir -p "$out" || die "cannot create $out"
[ -w "$out" ] || die "$out is not writable"
# "partial" until every file is in: serve.sh --fetch resumes such a directory
printf 'partial %s\n' "$want" >"$stamp"
command -v curl >/dev/null 2>&1 || die "curl is needed to list and download the files"
wanted_files
if [ -n "$hf_cli" ]; then fetch_hf; else fetch_curl; fi
[ -f "$out/config.json" ] || ls "$out"/*.gguf >/dev/null 2>&1 ||
    die "$out has neither config.json nor a .gguf file after the download"
printf '%s\n' "$want" >"$stamp"
note "$repo@$revision is in $out"
model_path "$out"
