#!/usr/bin/env bash
# CI step: the deployment scripts (packaging/scripts) that the README path, the Docker image and
# the SkyPilot/SkyServe YAMLs all call, run here for real on loopback; and what can be checked of
# the Docker and SkyPilot files without a container engine or a cloud account:
#   1. shellcheck on every script;
#   2. build.sh builds exactly as the README's quick start (its --dry-run against README.md);
#   3. compose.yaml and the SkyPilot YAMLs parse, use only keys of their schemas, call the same
#      scripts, probe /ready; the Dockerfile's COPY sources, user, port, health check;
#   4. the image's runtime packages exist in Debian and provide every library the binaries link;
#   5. Dockerfile.dockerignore excludes what .gitignore ignores and keeps every tracked file;
#   6. write-config.sh for fake core counts and memory sizes, each config checked with
#      `bitnetd -t` on a matching synthetic hwloc topology; quoting, extra keys, refusals;
#   7. fetch-model.sh --synthetic, and its download paths (curl, and the hf CLI through a
#      stand-in) against a fake Hugging Face hub on loopback (never the real download);
#   8. serve.sh on that download: conversion at first start, /health then /ready, a completion
#      and a stream, SIGTERM drains and exits 0, a second start reuses the cache; then the
#      image's first start outside a container: its layout (make install DESTDIR, scripts in
#      /usr/share/bitnetd/scripts, binaries on PATH), its ENV, empty volumes, as `nobody`.
# Env (from .ci/run): BN_TOP, BN_BITNETD, BN_BITNET. Cleans up every process and file it makes.
# "check && check || fail" is meant: fail exits whichever check failed.
# shellcheck disable=SC2015
set -euo pipefail
top=${BN_TOP:?BN_TOP is not set}
bitnetd=${BN_BITNETD:?BN_BITNETD is not set}
bitnet=${BN_BITNET:?BN_BITNET is not set}
S=$top/packaging/scripts
name=30-deploy-scripts

work=$(mktemp -d /tmp/bn-deploy.XXXXXX)
pids=()
cleanup() {
    local p i
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "$name: FAIL: $*" >&2
    local f
    for f in "$work"/*.log; do
        [ -s "$f" ] || continue
        echo "---- ${f##*/} (last 25 lines) ----" >&2
        tail -n 25 "$f" >&2
    done
    exit 1
}
say() { echo "-- $*"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_http URL CODE SECONDS: until URL answers CODE (bounded).
wait_http() {
    local i code
    for ((i = 0; i < $3 * 10; i++)); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true)
        [ "$code" = "$2" ] && return 0
        sleep 0.1
    done
    return 1
}
# stop_pid PID: SIGTERM, then wait up to 40 s; sets st to its exit status.
stop_pid() {
    local i
    kill -TERM "$1" 2>/dev/null || true
    for ((i = 0; i < 400; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$1" 2>/dev/null && { kill -KILL "$1"; fail "pid $1 ignored SIGTERM for 40 s"; }
    st=0
    wait "$1" || st=$?
}

say "tools: shellcheck, python3-yaml, curl (Debian)"
export DEBIAN_FRONTEND=noninteractive
need=()
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v curl >/dev/null 2>&1 || need+=(curl)
python3 -c 'import yaml' >/dev/null 2>&1 || need+=(python3 python3-yaml)
if [ "${#need[@]}" -gt 0 ]; then
    apt=(apt-get -o DPkg::Lock::Timeout=300 -y -qq --no-install-recommends)
    "${apt[@]}" install "${need[@]}" >/dev/null 2>&1 ||
        { "${apt[@]}" update && "${apt[@]}" install "${need[@]}" >/dev/null; } ||
        fail "cannot install ${need[*]}"
fi

# ---- 1. shellcheck --------------------------------------------------------------------------
say "1. shellcheck"
shellcheck -x -P SCRIPTDIR "$S"/*.sh "$0" || fail "shellcheck found problems"
for f in "$S"/build.sh "$S"/fetch-model.sh "$S"/write-config.sh "$S"/serve.sh; do
    [ -x "$f" ] || fail "$f is not executable"
done

# ---- 2. no drift from the README's build ----------------------------------------------------
say "2. build.sh builds as the README does"
chain=$("$S/build.sh" --dry-run)
for marker in serve-command test-command; do
    cmd=$(sed -n "/<!-- $marker -->/,/^\`\`\`\$/p" "$top/README.md" | sed '1,2d;$d')
    [ -n "$cmd" ] || fail "README.md has no $marker block"
    # the test command installs the test tools too (no --build-only); the rest is the same
    want=$chain
    [ "$marker" = test-command ] && want=$(printf '%s' "$chain" | sed 's/ --build-only//')
    case "$cmd" in
    "$want "*) ;;
    *) fail "README's $marker no longer starts with build.sh's chain:
  README:   $cmd
  build.sh: $want" ;;
    esac
done
# shellcheck disable=SC2016 # the literal text build.sh prints
[ "$("$S/build.sh" --dry-run --no-deps --prefix=/usr)" = './autogen.sh && ./configure --prefix=/usr && make -j"$(nproc)"' ] ||
    fail "build.sh --no-deps --prefix=/usr --dry-run prints the wrong chain"

# ---- 3. the Docker and SkyPilot files --------------------------------------------------------
say "3. compose.yaml, the SkyPilot YAMLs and the Dockerfile"
python3 - "$top" <<'PY' || fail "a deployment file is wrong (above)"
import os, re, sys, yaml
top = sys.argv[1]
errors = []
def err(msg): errors.append(msg)
def load(rel):
    with open(os.path.join(top, rel)) as f:
        return yaml.safe_load(f)
def only(where, d, allowed):
    if not isinstance(d, dict):
        err(f"{where}: not a mapping"); return
    for k in d:
        if k not in allowed and not str(k).startswith("x-"):
            err(f"{where}: unknown key '{k}'")

# Key names of SkyPilot's task and SkyServe schemas (sky/utils/schemas.py).
SKY_TASK = {"name", "workdir", "num_nodes", "resources", "file_mounts", "service", "setup", "run",
            "envs", "secrets", "config", "volumes", "event_callback", "inputs", "outputs"}
SKY_RES = {"cloud", "region", "zone", "infra", "cpus", "memory", "accelerators", "instance_type",
           "use_spot", "disk_size", "disk_tier", "network_tier", "ports", "labels", "image_id",
           "any_of", "ordered", "job_recovery", "accelerator_args", "autostop"}
SKY_SERVICE = {"readiness_probe", "replica_policy", "replicas", "ports", "load_balancing_policy", "tls"}
SKY_PROBE = {"path", "initial_delay_seconds", "timeout_seconds", "post_data", "headers"}
SKY_POLICY = {"min_replicas", "max_replicas", "target_qps_per_replica", "num_overprovision",
              "dynamic_ondemand_fallback", "base_ondemand_fallback_replicas", "spot_placer",
              "upscale_delay_seconds", "downscale_delay_seconds"}
scripts = {s: os.path.join(top, "packaging/scripts", s) for s in
           ("build.sh", "fetch-model.sh", "write-config.sh", "serve.sh")}
read_by_scripts = "".join(open(p).read() for p in scripts.values())
def read(var): return re.search(r"\b" + re.escape(var) + r"\b", read_by_scripts) is not None

tasks = {}
for rel in ("packaging/skypilot/bitnetd.yaml", "packaging/skypilot/bitnetd-serve.yaml"):
    t = load(rel)
    tasks[rel] = t
    only(rel, t, SKY_TASK)
    r = t.get("resources", {})
    only(rel + ": resources", r, SKY_RES)
    if r.get("ports") != 30000: err(f"{rel}: resources.ports is not 30000")
    if t.get("workdir") != ".": err(f"{rel}: workdir is not '.' (the checkout)")
    for k, v in (t.get("envs") or {}).items():
        if not (v is None or isinstance(v, str)): err(f"{rel}: envs.{k} must be a string")
        if k.startswith("BITNETD_") and not read(k): err(f"{rel}: no script reads {k}")
    setup, run = t.get("setup", ""), t.get("run", "")
    for s in ("build.sh", "fetch-model.sh"):
        if "packaging/scripts/" + s not in setup: err(f"{rel}: setup does not call {s}")
    for s in ("write-config.sh", "serve.sh"):
        if "packaging/scripts/" + s not in run: err(f"{rel}: run does not call {s}")
a, b = tasks.values()
for k in ("setup", "run", "workdir", "envs"):
    if a.get(k) != b.get(k): err(f"bitnetd.yaml and bitnetd-serve.yaml differ in {k}")
svc = tasks["packaging/skypilot/bitnetd-serve.yaml"].get("service")
only("bitnetd-serve.yaml: service", svc, SKY_SERVICE)
probe = (svc or {}).get("readiness_probe", {})
only("bitnetd-serve.yaml: readiness_probe", probe, SKY_PROBE)
if probe.get("path") != "/ready": err("bitnetd-serve.yaml: readiness_probe.path is not /ready")
if not isinstance(probe.get("initial_delay_seconds"), (int, float)) or probe["initial_delay_seconds"] < 300:
    err("bitnetd-serve.yaml: initial_delay_seconds must cover setup and conversion (>= 300)")
pol = (svc or {}).get("replica_policy", {})
only("bitnetd-serve.yaml: replica_policy", pol, SKY_POLICY)
if not (isinstance(pol.get("min_replicas"), int) and isinstance(pol.get("max_replicas"), int)
        and 0 <= pol["min_replicas"] <= pol["max_replicas"]):
    err("bitnetd-serve.yaml: replica_policy needs 0 <= min_replicas <= max_replicas")
if not isinstance(pol.get("target_qps_per_replica"), (int, float)) or pol["target_qps_per_replica"] <= 0:
    err("bitnetd-serve.yaml: target_qps_per_replica must be a number > 0")
if "service" in tasks["packaging/skypilot/bitnetd.yaml"]:
    err("bitnetd.yaml is the single-VM task: its service section belongs in bitnetd-serve.yaml")

# Compose: the Compose Specification's top-level and service keys used here.
c = load("packaging/docker/compose.yaml")
only("compose.yaml", c, {"name", "services", "volumes", "networks", "configs", "secrets"})
COMPOSE_SVC = {"build", "image", "init", "ports", "environment", "volumes", "cpuset", "cpus",
               "mem_limit", "cap_add", "ulimits", "restart", "stop_grace_period", "healthcheck",
               "command", "entrypoint", "user", "logging", "labels", "networks", "shm_size",
               "security_opt", "deploy", "env_file", "container_name", "stop_signal"}
svc = c.get("services", {}).get("bitnetd")
if not svc: err("compose.yaml: no service 'bitnetd'")
else:
    only("compose.yaml: services.bitnetd", svc, COMPOSE_SVC)
    ctx = os.path.normpath(os.path.join(top, "packaging/docker", svc["build"]["context"]))
    if ctx != os.path.normpath(top): err("compose.yaml: build.context is not the repository root")
    if not os.path.isfile(os.path.join(ctx, svc["build"]["dockerfile"])): err("compose.yaml: no such dockerfile")
    if "30000:30000" not in [str(p) for p in svc.get("ports", [])]: err("compose.yaml: port 30000 not published")
    if "/health" not in " ".join(svc.get("healthcheck", {}).get("test", [])): err("compose.yaml: healthcheck is not /health")
    mounts = [str(v).split(":")[1] for v in svc.get("volumes", [])]
    if "/models" not in mounts or "/cache" not in mounts: err("compose.yaml: /models and /cache volumes")
    for k in svc.get("environment", {}):
        if not read(k): err(f"compose.yaml: no script reads {k}")
    restart = svc.get("restart")
    if restart not in ("no", "always", "on-failure", "unless-stopped"): err("compose.yaml: restart policy")

# Dockerfile: stages, what it copies, who runs, what it serves.
df = open(os.path.join(top, "packaging/docker/Dockerfile")).read()
lines = re.sub(r"\\\n", " ", df).splitlines()
froms = [l.split()[1] for l in lines if l.startswith("FROM ")]
if len(froms) < 2 or not froms[-1].endswith("-slim"): err("Dockerfile: not multi-stage onto a slim image")
for l in lines:
    if l.startswith("COPY ") and "--from=" not in l:
        for src in l.split()[1:-1]:
            if not os.path.exists(os.path.join(top, src)): err(f"Dockerfile: COPY {src}: no such path")
    if l.startswith("ENV "):
        for k in re.findall(r"(BITNETD?_[A-Z_]+)=", l):
            if not read(k): err(f"Dockerfile: no script reads {k}")
user = [l.split()[1] for l in lines if l.startswith("USER ")]
if not user or user[-1] in ("root", "0"): err("Dockerfile: the runtime stage must not run as root")
if "EXPOSE 30000" not in df: err("Dockerfile: EXPOSE 30000")
hc = [l for l in lines if l.startswith("HEALTHCHECK ")]
if not hc or "http://127.0.0.1:30000/health" not in hc[0]: err("Dockerfile: HEALTHCHECK on /health")
if "packaging/scripts/build.sh" not in df: err("Dockerfile: the build stage must use packaging/scripts/build.sh")
if "scripts/serve.sh" not in [l for l in lines if l.startswith("ENTRYPOINT")][0]: err("Dockerfile: ENTRYPOINT serve.sh")
if "BITNETD_LISTEN=0.0.0.0:30000" not in re.sub(r"\s+", " ", df): err("Dockerfile: listen 0.0.0.0:30000")

for e in errors: print("  " + e)
sys.exit(1 if errors else 0)
PY
for f in packaging/skypilot/bitnetd.yaml packaging/skypilot/bitnetd-serve.yaml; do
    for part in setup run; do
        python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))[sys.argv[2]])' \
            "$top/$f" "$part" >"$work/part.sh"
        bash -n "$work/part.sh" || fail "$f: $part is not valid shell"
        shellcheck -s bash -e SC2148 "$work/part.sh" || fail "$f: shellcheck on $part"
    done
done

# ---- 4. the runtime image's packages --------------------------------------------------------
say "4. the runtime packages exist in Debian and cover every linked library"
pkgs=$(sed -n 's/^ARG RUNTIME_PACKAGES="\(.*\)"$/\1/p' "$top/packaging/docker/Dockerfile")
[ -n "$pkgs" ] || fail "Dockerfile: no ARG RUNTIME_PACKAGES=\"...\" line"
for p in $pkgs; do
    apt-cache show --no-all-versions "$p" >/dev/null 2>&1 || fail "Dockerfile: Debian has no package '$p'"
done
# shellcheck disable=SC2086
apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances $pkgs 2>/dev/null | grep -v '^ ' | sed 's/:.*//' | sort -u >"$work/closure"
for lib in $(ldd "$bitnetd" "$bitnet" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u); do
    owner=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null ||
        dpkg -S "/usr$lib" 2>/dev/null) || fail "no Debian package owns $lib (linked by the binaries)"
    owner=${owner%%:*}
    grep -qx "$owner" "$work/closure" ||
        fail "$lib comes from $owner, which the runtime image does not install (RUNTIME_PACKAGES)"
done

# ---- 5. the build context -------------------------------------------------------------------
say "5. Dockerfile.dockerignore agrees with .gitignore"
if git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$top" ls-files >"$work/tracked"
    git -C "$top" ls-files --others --ignored --exclude-standard >"$work/ignored"
    python3 - "$top/packaging/docker/Dockerfile.dockerignore" "$work/tracked" "$work/ignored" <<'PY' ||
import re, sys
# Docker's rules (moby/patternmatcher): patterns from the context root, '*' and '?' stop at
# '/', '**' crosses it, a pattern matching a parent directory matches what is inside, and a
# later '!' pattern re-includes.
pats = []
for line in open(sys.argv[1]):
    line = line.strip()
    if not line or line.startswith("#"): continue
    neg = line.startswith("!")
    p = line[1:] if neg else line
    p = p.strip("/")
    rx, i = "", 0
    while i < len(p):
        if p.startswith("**/", i): rx += "(?:.*/)?"; i += 3
        elif p.startswith("**", i): rx += ".*"; i += 2
        elif p[i] == "*": rx += "[^/]*"; i += 1
        elif p[i] == "?": rx += "[^/]"; i += 1
        else: rx += re.escape(p[i]); i += 1
    pats.append((neg, re.compile("^" + rx + "$")))
def excluded(path):
    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    out = False
    for neg, rx in pats:
        if any(rx.match(q) for q in prefixes): out = not neg
    return out
bad = [f"  tracked but excluded: {f}" for f in open(sys.argv[2]).read().split() if excluded(f)]
bad += [f"  ignored by git but sent to docker build: {f}" for f in open(sys.argv[3]).read().split()
        if not excluded(f)]
print("\n".join(bad[:20]))
sys.exit(1 if bad else 0)
PY
        fail "Dockerfile.dockerignore and .gitignore disagree (above): update the dockerignore"
else
    echo "   (not a git checkout: skipped)"
fi

# ---- 6. write-config.sh -----------------------------------------------------------------------
say "6. write-config.sh for fake machines, checked by bitnetd -t"
"$bitnet" mkmodel small "$work/small.bnpk" >/dev/null 2>&1 || fail "bitnet mkmodel small"
export BITNETD_BIN=$bitnetd BITNET_BIN=$bitnet
# cores | hwloc synthetic topology | plan | expected workers threads
while IFS='|' read -r cores topo plan ew et; do
    conf=$work/c-$cores-$plan.conf
    BITNETD_CORES=$cores "$S/write-config.sh" --plan "$plan" -m "$work/small.bnpk" \
        --listen 127.0.0.1:30000 -o "$conf" 2>"$work/wc.log" || fail "write-config.sh --cores $cores --plan $plan"
    w=$(sed -n 's/^workers = //p' "$conf") t=$(sed -n 's/^threads = //p' "$conf")
    [ "$w $t" = "$ew $et" ] || fail "$cores cores, plan $plan: workers $w threads $t, expected $ew $et"
    HWLOC_SYNTHETIC=$topo "$bitnetd" -t -c "$conf" >"$work/t.log" 2>&1 ||
        fail "bitnetd -t rejects the config for $cores cores, plan $plan ($(tail -n 2 "$work/t.log"))"
    [ "$(grep -c '^listen = ' "$conf")" = 1 ] || fail "$conf: listen must replace the default, not add to it"
done <<'EOF'
2|pack:1 core:2 pu:1|users|1|2
4|pack:1 l3:1 core:4 pu:2|users|1|4
8|pack:1 l3:1 core:8 pu:2|users|2|4
16|pack:1 l3:2 core:8 pu:2|users|4|4
16|pack:1 l3:2 core:8 pu:2|latency|1|16
16|pack:1 l3:2 core:8 pu:2|auto|auto|auto
45|pack:1 l3:6 core:8 pu:2|users|11|4
96|numa:2 l3:6 core:8 pu:2|users|24|4
EOF
BITNETD_CORES=16 "$S/write-config.sh" --threads 8 -o "$work/t8.conf" 2>/dev/null
grep -qx 'workers = 2' "$work/t8.conf" && grep -qx 'threads = 8' "$work/t8.conf" || fail "--threads 8 on 16 cores"
# this machine, counted for real
"$S/write-config.sh" -m "$work/small.bnpk" --listen 127.0.0.1:30000 -o "$work/real.conf" 2>/dev/null ||
    fail "write-config.sh on this machine"
"$bitnetd" -t -c "$work/real.conf" >"$work/t.log" 2>&1 || fail "bitnetd -t on this machine's config"
# memory: n_ctx shrinks to fit (2B4T dimensions when the model is not there yet), or refuses
BITNETD_CORES=16 "$S/write-config.sh" --memory 3g -o "$work/m.conf" 2>/dev/null || fail "--memory 3g"
grep -qx 'n_ctx = 2560' "$work/m.conf" || fail "--memory 3g, 4 workers: n_ctx is not 2560"
BITNETD_CORES=16 "$S/write-config.sh" --memory 64g -o "$work/m.conf" 2>/dev/null
grep -qx 'n_ctx = 0' "$work/m.conf" || fail "--memory 64g: n_ctx is not 0 (the model's maximum)"
if BITNETD_CORES=16 "$S/write-config.sh" --memory 2g -o "$work/m.conf" 2>"$work/wc.log"; then
    fail "--memory 2g for 4 workers should be refused"
fi
grep -q 'fewer workers' "$work/wc.log" || fail "the memory refusal does not say what to do"
# quoting, the listen list, api_keys, extra keys (the last wins), and bitnetd reads it back
mkdir -p "$work/odd dir #1"
cp "$work/small.bnpk" "$work/odd dir #1/m.bnpk"
"$S/write-config.sh" -m "$work/odd dir #1/m.bnpk" --listen 127.0.0.1:30000 --listen '[::1]:30001' \
    --api-keys 'k1,k"2' model_name='my "model"' queue_size=7 queue_size=9 --cores 1 \
    -o "$work/q.conf" 2>/dev/null || fail "write-config.sh with odd values"
grep -qx "model = \"$work/odd dir #1/m.bnpk\"" "$work/q.conf" || fail "model path not quoted"
grep -qx 'queue_size = 9' "$work/q.conf" && [ "$(grep -c '^queue_size' "$work/q.conf")" = 1 ] ||
    fail "queue_size: the last extra must win"
[ "$(grep -c '^listen = ' "$work/q.conf")" = 2 ] || fail "two --listen must give two listen lines"
"$bitnetd" -t -c "$work/q.conf" >"$work/t.log" 2>&1 || fail "bitnetd -t rejects the quoted config: $(cat "$work/t.log")"
# refusals: bitnetd names the line of a bad extra; the script its own bad options
"$S/write-config.sh" -m "$work/small.bnpk" queue_size=abc -o "$work/bad.conf" 2>/dev/null
if "$bitnetd" -t -c "$work/bad.conf" >"$work/t.log" 2>&1; then fail "bitnetd -t accepted queue_size = abc"; fi
grep -q 'bad.conf:[0-9]*: queue_size' "$work/t.log" || fail "bitnetd -t does not name the bad line"
for args in "--plan fast" "--threads 0" "--cores x" "--n-ctx big" "--memory 3q" "Bad=1" "--nope"; do
    # shellcheck disable=SC2086
    if "$S/write-config.sh" $args >/dev/null 2>"$work/wc.log"; then fail "write-config.sh $args succeeded"; fi
    [ -s "$work/wc.log" ] || fail "write-config.sh $args failed silently"
done
if BITNETD_CORES=4 "$S/write-config.sh" --workers 3 --threads 2 >/dev/null 2>&1; then
    fail "3 workers x 2 threads on 4 cores should be refused"
fi

# ---- 7. fetch-model.sh ------------------------------------------------------------------------
say "7. fetch-model.sh: --synthetic, and the download path against a fake hub on loopback"
[ "$("$S/fetch-model.sh" --synthetic tiny "$work/syn/tiny.bnpk" 2>/dev/null)" = "$work/syn/tiny.bnpk" ] ||
    fail "fetch-model.sh --synthetic does not print the model path"
"$bitnet" inspect "$work/syn/tiny.bnpk" >/dev/null 2>&1 || fail "the synthetic model does not open"
"$S/fetch-model.sh" --synthetic small --format hf "$work/syn/hf" >/dev/null 2>&1 && [ -f "$work/syn/hf/config.json" ] ||
    fail "fetch-model.sh --synthetic small --format hf"
repo=microsoft/bitnet-b1.58-2B-4T
hub=$work/hub
mkdir -p "$hub/api/models/$repo/revision" "$hub/$repo/resolve"
"$bitnet" mkmodel small "$hub/$repo/resolve/main" -f hf >/dev/null 2>&1 || fail "bitnet mkmodel -f hf"
echo "licence text" >"$hub/$repo/resolve/main/LICENSE"
echo "not wanted" >"$hub/$repo/resolve/main/optimizer.bin"
(cd "$hub/$repo/resolve/main" && ls) | python3 -c '
import json, sys
print(json.dumps({"id": sys.argv[1], "siblings": [{"rfilename": f} for f in sys.stdin.read().split()]}))' "$repo" \
    >"$hub/api/models/$repo/revision/main"
hub_port=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$hub" "$hub_port" >"$work/hub.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$hub_port/api/models/$repo/revision/main" 200 10 || fail "the fake hub did not start"
export HF_ENDPOINT=http://127.0.0.1:$hub_port
dl=$work/models/bitnet-b1.58-2B-4T
got=$("$S/fetch-model.sh" --method curl "$dl" 2>"$work/fetch.log") || fail "fetch-model.sh download"
[ "$got" = "$dl" ] || fail "fetch-model.sh printed '$got', not $dl"
for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json LICENSE; do
    cmp -s "$dl/$f" "$hub/$repo/resolve/main/$f" || fail "downloaded $f differs"
done
[ ! -e "$dl/optimizer.bin" ] || fail "fetch-model.sh downloaded a file it should skip"
"$S/fetch-model.sh" --method curl "$dl" >/dev/null 2>"$work/fetch.log" || fail "second fetch"
grep -q 'already holds' "$work/fetch.log" || fail "a second fetch is not a no-op"
# the hf CLI path, with a stand-in `hf` that records its arguments and copies from the hub
mkdir -p "$work/bin"
cat >"$work/bin/hf" <<STUB
#!/bin/sh
printf '%s\n' "\$*" >"$work/hf-args"
dir= files=
shift 2
while [ \$# -gt 0 ]; do
    case "\$1" in
    --revision) shift ;;
    --local-dir) dir=\$2; shift ;;
    *) files="\$files \$1" ;;
    esac
    shift
done
mkdir -p "\$dir" && for f in \$files; do cp "$hub/$repo/resolve/main/\$f" "\$dir/"; done
STUB
chmod +x "$work/bin/hf"
PATH=$work/bin:$PATH "$S/fetch-model.sh" "$work/models/via-hf" >/dev/null 2>"$work/fetch.log" ||
    fail "fetch-model.sh with the hf CLI"
want="download $repo LICENSE config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json"
[ "$(cat "$work/hf-args")" = "$want --revision main --local-dir $work/models/via-hf" ] ||
    fail "fetch-model.sh called hf with: $(cat "$work/hf-args")"
cmp -s "$work/models/via-hf/model.safetensors" "$hub/$repo/resolve/main/model.safetensors" ||
    fail "the hf path did not leave the files in place"
if "$S/fetch-model.sh" --method curl --repo microsoft/missing "$work/models/missing" >/dev/null 2>"$work/fetch.log"; then
    fail "fetching a missing repository succeeded"
fi
grep -q 'cannot list microsoft/missing' "$work/fetch.log" || fail "a missing repository is not named"

# ---- 8. serve.sh -----------------------------------------------------------------------------
say "8. serve.sh: first start converts, then serves; SIGTERM drains; the second start reuses the cache"
export BITNET_CACHE=$work/cache
port=$(free_port)
serve_once() {
    "$S/serve.sh" --model "$dl" --listen "127.0.0.1:$port" --plan users >"$work/serve.log" 2>&1 &
    spid=$!
    pids+=("$spid")
    wait_http "http://127.0.0.1:$port/health" 200 20 || fail "no /health within 20 s"
    wait_http "http://127.0.0.1:$port/ready" 200 60 || fail "not ready within 60 s"
    [ "$(cat "/proc/$spid/comm")" = bitnetd ] || fail "serve.sh did not exec bitnetd (pid $spid is $(cat "/proc/$spid/comm"))"
}
serve_once
grep -q 'converting it through the cache' "$work/serve.log" || fail "the first start did not convert"
ls "$BITNET_CACHE"/*.bnpk >/dev/null 2>&1 || fail "no converted model in \$BITNET_CACHE"
body=$(curl -fsS --max-time 30 "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8}') || fail "chat completion"
python3 -c 'import json, sys; d = json.loads(sys.argv[1]); assert d["choices"][0]["message"]["role"] == "assistant"' "$body" ||
    fail "bad completion: $body"
curl -fsS -N --max-time 30 "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt": "Hi", "max_tokens": 8, "stream": true}' >"$work/stream.txt" || fail "streamed completion"
grep -q '^data: \[DONE\]' "$work/stream.txt" || fail "the stream has no [DONE]"
grep -qx "listen = 127.0.0.1:$port" "$BITNET_CACHE/bitnetd.conf" || fail "serve.sh did not write \$BITNET_CACHE/bitnetd.conf"
stop_pid "$spid"
[ "$st" = 0 ] || fail "bitnetd exited $st after SIGTERM"
packed=$(ls "$BITNET_CACHE"/*.bnpk)
stamp=$(stat -c %Y.%s "$packed")
serve_once
[ "$(ls "$BITNET_CACHE"/*.bnpk)" = "$packed" ] && [ "$(stat -c %Y.%s "$packed")" = "$stamp" ] ||
    fail "the second start converted again instead of reusing the cache"
stop_pid "$spid"
[ "$st" = 0 ] || fail "bitnetd exited $st after SIGTERM (second start)"
# without a model and without --fetch: a clear refusal, nothing started
if "$S/serve.sh" --model "$work/models/none" >/dev/null 2>"$work/refuse.log"; then fail "serve.sh without a model started"; fi
grep -q 'fetch-model.sh' "$work/refuse.log" || fail "serve.sh without a model does not say how to get one"
unset HF_ENDPOINT BITNET_CACHE BITNETD_BIN BITNET_BIN

say "8b. the image's first start: installed layout, unprivileged, empty volumes, BITNETD_FETCH=1"
dest=$work/root
# make install as the Dockerfile runs it, when the tree is built (CI's is, by the README's
# command); a tree whose sources changed since is not relinked here: its binaries are copied.
if make -C "$top" -q bitnetd bitnet >/dev/null 2>&1; then
    make -C "$top" install DESTDIR="$dest" >"$work/install.log" 2>&1 || fail "make install DESTDIR"
else
    echo "   (the binaries are older than their sources: copying them instead of make install)"
    install -D -m 0755 "$bitnetd" "$dest/usr/bin/bitnetd"
    install -D -m 0755 "$bitnet" "$dest/usr/bin/bitnet"
fi
install -d "$dest/usr/share/bitnetd/scripts"
install -m 0755 "$S"/*.sh "$dest/usr/share/bitnetd/scripts/"
# bitnetd may go to sbindir and bitnet to bindir: both directories go on PATH, as in the image
path=
for b in bitnetd bitnet; do
    f=$(find "$dest" -type f -name "$b" -perm -u+x | head -n 1)
    [ -n "$f" ] || fail "make install did not install $b"
    path="$path$(dirname "$f"):"
done
chmod 755 "$work"
# /models and /cache as the image has them: empty, owned by the unprivileged user
install -d -m 0755 "$work/img-models" "$work/img-cache"
as=()
# setpriv (util-linux) execs, so the pid below stays bitnetd's and signals reach it directly
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1 && id nobody >/dev/null 2>&1; then
    chown nobody "$work/img-models" "$work/img-cache"
    as=(setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups --)
fi
port=$(free_port)
# the Dockerfile's ENV, with the fake hub and a loopback port
"${as[@]}" env -i PATH="${path}/usr/bin:/bin" HOME=/nonexistent BITNET_CACHE="$work/img-cache" \
    BITNETD_MODEL="$work/img-models/bitnet-b1.58-2B-4T" BITNETD_FETCH=1 \
    BITNETD_LISTEN="127.0.0.1:$port" HF_ENDPOINT="http://127.0.0.1:$hub_port" \
    "$dest/usr/share/bitnetd/scripts/serve.sh" >"$work/image.log" 2>&1 &
spid=$!
pids+=("$spid")
wait_http "http://127.0.0.1:$port/ready" 200 60 || fail "the image's first start did not get ready"
[ -f "$work/img-models/bitnet-b1.58-2B-4T/model.safetensors" ] || fail "the first start did not fetch the model"
ls "$work/img-cache"/*.bnpk >/dev/null 2>&1 || fail "the first start did not convert into the cache"
curl -fsS --max-time 30 "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt": "Hi", "max_tokens": 4}' >/dev/null || fail "completion from the installed layout"
[ "$(cat "/proc/$spid/comm")" = bitnetd ] || fail "the installed serve.sh did not exec bitnetd"
[ "${#as[@]}" = 0 ] || [ "$(stat -c %U "/proc/$spid")" = nobody ] || fail "bitnetd does not run as nobody"
stop_pid "$spid"
[ "$st" = 0 ] || fail "the installed layout's bitnetd exited $st"
say "$name: OK"
