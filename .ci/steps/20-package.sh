#!/usr/bin/env bash
# CI: the manual pages, the systemd unit and the Debian package (docs/deploy.md, "systemd").
#  1. the man pages name every bitnetd flag, every bitnet command and flag, every config key,
#     and groff reads them without a warning;
#  2. the .deb is built with the standard tools (dpkg-buildpackage -b -us -uc) from a clean
#     copy of the tracked files with packaging/debian at its top as debian/ (not the in-tree
#     build, which is configured for CI's own tests);
#  3. apt-get installs it: the user, the directories, the conffile, the unit (not enabled),
#     the man pages; systemd-analyze verifies the installed unit (and the checked-in one,
#     which must be the same file) and rates its sandboxing;
#  4. from the installed files: bitnet mkmodel, bitnetd -t on a config derived from
#     /etc/bitnetd/bitnetd.conf, as root and as the bitnetd user; then the unit's own commands
#     as that user: ExecStart serves, ExecReload's check and SIGHUP reload, SIGTERM stops;
#  5. apt-get purge leaves nothing behind (files, user, group, directories).
# Env (from .ci/run): BN_TOP, BN_BITNETD, BN_BITNET. Runs as root on Debian 12.
set -euo pipefail
: "${BN_TOP:?}" "${BN_BITNETD:?}" "${BN_BITNET:?}"

port=30931
work=$(mktemp -d /tmp/bitnetd-package.XXXXXX)
installed=0
server=

fail() {
    echo "20-package: FAIL: $*" >&2
    exit 1
}
note() { echo "+ $*"; }
cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
        kill -KILL "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    if [ "$installed" = 1 ]; then
        rm -f /var/lib/bitnetd/ci.bnpk
        apt-get purge -y -qq bitnetd >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
pkgs="debhelper dpkg-dev fakeroot systemd man-db groff-base curl"
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $pkgs >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; } ||
    fail "cannot install $pkgs"

# ---- 1. the manuals cover the programs -------------------------------------------------------
note "man pages: every flag, command and key documented; groff lint"
# The roff sources with \- as plain hyphens, read once (grep -q on a pipe would trip pipefail).
src_of() { sed 's/\\-/-/g' "$BN_TOP/docs/$1"; }
flags_of() { grep -o -- '--[a-z][a-z0-9-]*' | sort -u; }
has() { grep -q -- "$2" <<<"$1"; }
man8=$(src_of bitnetd.8)
man1=$(src_of bitnet.1)
man5=$(src_of bitnetd.conf.5)
missing=
for f in $("$BN_BITNETD" --help | flags_of); do
    has "$man8" "$f" || missing="$missing bitnetd.8:$f"
done
cmds=$("$BN_BITNET" --help | sed -n '/^commands:/,$s/^  \([a-z][a-z]*\) .*/\1/p')
[ -n "$cmds" ] || fail "no commands in 'bitnet --help'"
for c in $cmds; do
    has "$man1" "^\.SS \"bitnet $c " || missing="$missing bitnet.1:$c"
    # the command's section: its .SS lines up to the next command's .SS (or the next .SH)
    section=$(awk -v c="$c" '/^\.SH/ {on = 0}
        /^\.SS "bitnet / {on = index($0, "\"bitnet " c " ") == 5} on' <<<"$man1")
    for f in $("$BN_BITNET" "$c" --help 2>&1 | flags_of); do
        has "$section" "$f" || missing="$missing bitnet.1:$c:$f"
    done
done
keys=$("$BN_BITNETD" --dump-config | sed -n 's/^#\{0,1\}\([a-z_][a-z_]*\) =.*/\1/p')
[ "$(wc -l <<<"$keys")" -ge 30 ] || fail "too few keys in bitnetd --dump-config"
for k in $keys; do
    has "$man5" "^\.BR\{0,1\} $k\( \|$\)" || missing="$missing bitnetd.conf.5:$k"
done
[ -z "$missing" ] || fail "not in the man pages:$missing"
for m in bitnetd.8 bitnetd.conf.5 bitnet.1; do
    out=$(LC_ALL=C.UTF-8 groff -man -ww -z "$BN_TOP/docs/$m" 2>&1) || fail "groff: $m"
    [ -z "$out" ] || fail "groff warnings in docs/$m: $out"
done

# ---- 2. the .deb, from a clean copy of the tracked files ---------------------------------------
version=$(sed -n 's/^AC_INIT(\[bitnetd\], \[\([^]]*\)\].*/\1/p' "$BN_TOP/configure.ac")
[ -n "$version" ] || fail "no version in configure.ac"
tree=$work/bitnetd-$version
mkdir "$tree"
note "copy the tracked files to $tree, packaging/debian as debian/"
(cd "$BN_TOP" && git -c safe.directory="$BN_TOP" ls-files -z --cached --others --exclude-standard |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$tree"
if [ ! -f "$tree/configure.ac" ] || [ -e "$tree/configure" ]; then fail "the copy is not a clean source tree"; fi
cp -a "$tree/packaging/debian" "$tree/debian"
note "dpkg-buildpackage -b -us -uc"
(cd "$tree" && DEB_BUILD_OPTIONS="parallel=$(nproc)" dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1) ||
    { tail -60 "$work/build.log"; fail "dpkg-buildpackage failed (log above)"; }
grep -E '^(PASS|FAIL|SKIP|ERROR|# (TOTAL|PASS|FAIL))' "$work/build.log" | sed 's/^/  /' || true
deb=$(find "$work" -maxdepth 1 -name "bitnetd_${version}-*_*.deb" | head -n 1)
[ -n "$deb" ] || fail "no bitnetd_${version}-*.deb was built"
note "$(basename "$deb"): $(du -k "$deb" | cut -f1) KiB"
contents=$(dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's|^\./|/|')
for p in /usr/sbin/bitnetd /usr/bin/bitnet /etc/bitnetd/bitnetd.conf /lib/systemd/system/bitnetd.service \
    /usr/share/man/man8/bitnetd.8.gz /usr/share/man/man5/bitnetd.conf.5.gz /usr/share/man/man1/bitnet.1.gz; do
    printf '%s\n' "$contents" | grep -qx -- "$p" || fail "$p is not in the package"
done

# ---- 3. install ---------------------------------------------------------------------------------
note "apt-get install ./$(basename "$deb")"
installed=1
(cd "$work" && apt-get install -y -qq --no-install-recommends "./$(basename "$deb")" >"$work/install.log" 2>&1) ||
    { cat "$work/install.log"; fail "apt-get install failed"; }
getent passwd bitnetd | grep -q ':/var/lib/bitnetd:/usr/sbin/nologin$' ||
    fail "no system user bitnetd with home /var/lib/bitnetd: $(getent passwd bitnetd || echo none)"
getent group bitnetd >/dev/null || fail "no group bitnetd"
for d in /var/lib/bitnetd /var/cache/bitnetd; do
    [ "$(stat -c %U:%G "$d" 2>/dev/null)" = bitnetd:bitnetd ] || fail "$d is not owned by bitnetd"
done
dpkg-query -W -f='${Conffiles}\n' bitnetd | grep -q '^ /etc/bitnetd/bitnetd.conf ' ||
    fail "/etc/bitnetd/bitnetd.conf is not a conffile"
/usr/sbin/bitnetd --dump-config | cmp -s - /etc/bitnetd/bitnetd.conf ||
    fail "/etc/bitnetd/bitnetd.conf differs from bitnetd --dump-config"
[ ! -e /etc/systemd/system/multi-user.target.wants/bitnetd.service ] ||
    fail "the service was enabled at install (the shipped config has no model)"
cmp -s /lib/systemd/system/bitnetd.service "$BN_TOP/packaging/systemd/bitnetd.service" ||
    fail "the installed unit differs from packaging/systemd/bitnetd.service"
if grep -qs '^path-exclude=/usr/share/man' /etc/dpkg/dpkg.cfg.d/*; then
    echo "  (dpkg excludes /usr/share/man on this image: the man pages were checked in the .deb only)"
else
    for m in bitnetd bitnetd.conf bitnet; do
        man -w "$m" >/dev/null || fail "man -w $m: not installed"
    done
    MANWIDTH=80 man bitnetd 2>/dev/null | grep -q 'SIGHUP' || fail "man bitnetd does not render"
fi

note "systemd-analyze verify, security"
for unit in /lib/systemd/system/bitnetd.service "$BN_TOP/packaging/systemd/bitnetd.service"; do
    out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out"; fail "systemd-analyze verify $unit"; }
    if printf '%s\n' "$out" | grep -q 'bitnetd\.service'; then
        echo "$out"
        fail "systemd-analyze verify warns about $unit"
    fi
done
# Exposure runs from 0 (locked down) to 10 (unprotected); the shipped unit rates 1.4.
sec=$(systemd-analyze security --offline=true --threshold=20 /lib/systemd/system/bitnetd.service 2>&1) ||
    { printf '%s\n' "$sec" | grep '✗'; fail "the unit's exposure rose above 2.0 (systemd-analyze security)"; }
printf '%s\n' "$sec" | tail -n 1 | sed 's/^/  /'

# ---- 4. from the installed files ---------------------------------------------------------------
note "bitnet mkmodel tiny; bitnetd -t -c (a config derived from /etc/bitnetd/bitnetd.conf)"
/usr/bin/bitnet mkmodel tiny "$work/x.bnpk" >/dev/null 2>&1 || fail "bitnet mkmodel"
sed "s|^#model =.*|model = $work/x.bnpk|" /etc/bitnetd/bitnetd.conf >"$work/x.conf"
[ "$(grep -c '^model = ' "$work/x.conf")" = 1 ] || fail "could not set model in the derived config"
/usr/sbin/bitnetd -t -c "$work/x.conf" >"$work/t.log" 2>&1 || { cat "$work/t.log"; fail "bitnetd -t -c"; }
grep -q 'test is successful' "$work/t.log" || fail "bitnetd -t did not report success"
if /usr/sbin/bitnetd -t -c /etc/bitnetd/bitnetd.conf >/dev/null 2>&1; then
    fail "bitnetd -t passed on the shipped config, which has no model"
fi

# The unit's commands, as its user would run them: the model in /var/lib/bitnetd, the cache in
# /var/cache/bitnetd (no systemd runs here, so no sandbox: the unit itself is checked above).
note "ExecStartPre, ExecStart, ExecReload and stop, as the bitnetd user"
install -m 0644 "$work/x.bnpk" /var/lib/bitnetd/ci.bnpk
sed -e "s|^#model =.*|model = /var/lib/bitnetd/ci.bnpk|" -e "s|^listen = .*|listen = 127.0.0.1:$port|" \
    -e 's|^workers = .*|workers = 1|' -e 's|^threads = .*|threads = 1|' /etc/bitnetd/bitnetd.conf >"$work/svc.conf"
chmod 0644 "$work/svc.conf"
chmod 0711 "$work"
# Run in a subshell: it execs setpriv, which execs env, which execs bitnetd, so $! is the master.
as_bitnetd() {
    cd /var/lib/bitnetd &&
        exec setpriv --reuid=bitnetd --regid=bitnetd --clear-groups -- \
            env HOME=/var/lib/bitnetd BITNET_CACHE=/var/cache/bitnetd "$@"
}
(as_bitnetd /usr/sbin/bitnetd -t -c "$work/svc.conf") >"$work/t2.log" 2>&1 ||
    { cat "$work/t2.log"; fail "bitnetd -t as the bitnetd user"; }
(as_bitnetd /usr/sbin/bitnetd -c "$work/svc.conf") >"$work/serve.log" 2>&1 &
server=$!
ready=0
for _ in $(seq 100); do
    if curl -fsS -m 2 "http://127.0.0.1:$port/ready" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
done
[ "$ready" = 1 ] || { cat "$work/serve.log"; fail "bitnetd did not become ready on 127.0.0.1:$port"; }
master=$server
[ "$(ps -o user= -p "$master" | tr -d ' ')" = bitnetd ] || fail "the master does not run as bitnetd"
complete() {
    curl -fsS -m 30 "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
        -d '{"prompt": "hello", "max_tokens": 4}' | grep -q '"text_completion"'
}
complete || { cat "$work/serve.log"; fail "a completion failed"; }
(as_bitnetd /usr/sbin/bitnetd -t -c "$work/svc.conf") >/dev/null 2>&1 || fail "ExecReload's check failed"
kill -HUP "$master"
reloaded=0
for _ in $(seq 100); do
    grep -q 'SIGHUP' "$work/serve.log" && complete && { reloaded=1; break; }
    sleep 0.1
done
[ "$reloaded" = 1 ] || { cat "$work/serve.log"; fail "no completion after SIGHUP"; }
kill -TERM "$master"
stopped=0
for _ in $(seq 100); do
    kill -0 "$server" 2>/dev/null || { stopped=1; break; }
    sleep 0.1
done
[ "$stopped" = 1 ] || fail "bitnetd did not stop within 10 s of SIGTERM"
wait "$server" || { cat "$work/serve.log"; fail "bitnetd exited non-zero after SIGTERM"; }
server=
rm -f /var/lib/bitnetd/ci.bnpk

# ---- 5. purge -----------------------------------------------------------------------------------
note "apt-get purge bitnetd"
apt-get purge -y -qq bitnetd >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "apt-get purge failed"; }
installed=0
for p in /usr/sbin/bitnetd /usr/bin/bitnet /etc/bitnetd /lib/systemd/system/bitnetd.service \
    /var/cache/bitnetd /var/lib/bitnetd /var/log/bitnetd; do
    [ ! -e "$p" ] || fail "$p is left after purge"
done
! getent passwd bitnetd >/dev/null || fail "the bitnetd user is left after purge"
! getent group bitnetd >/dev/null || fail "the bitnetd group is left after purge"
echo "20-package: OK ($(basename "$deb"))"
