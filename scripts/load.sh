#!/usr/bin/env bash
# Load test of the access layer: shared per-address limits across replicas,
# and what identifying, counting and checking callers costs a warm request.
#
# Part A - requests_per_minute per client address, two replicas on one Redis.
#   Two lank8s replicas share `state = "redis://..."`, trust 127.0.0.1 as a
#   proxy and give anonymous clients `requests_per_minute = LOAD_RATE` (R).
#   Two wrk processes, one per replica, run at once for 2 x LOAD_SECONDS (T)
#   and GET the same warm manifest by tag; every request carries
#   `X-Forwarded-For: <address>`, K = LOAD_ADDRESSES simulated clients
#   (198.51.100.1..K).  scripts/load/limits.lua gives each wrk thread one
#   address (why: see that file) and counts the answers per address: 200,
#   429, other.  The limit is GCRA: a burst of R from idle, then R per 60 s,
#   so each address may get, over both replicas together,
#       expected = R + R * T_actual / 60
#   where T_actual is the wall-clock window from the first wrk's start to the
#   last one's end.  An address PASSes if its 200s are within +-10 % of that.
#   Three scenarios, each on its own addresses:
#     A1  two replicas, shared Redis        - the test (198.51.100.0/24)
#     A2  one replica, Redis: both wrk processes on the same replica - the
#         control: one process alone lets the full allowance through
#         (203.0.113.0/24)
#     A3  two replicas, each with its own embedded store: what limits kept
#         per process look like, about 2 x expected in total (192.0.2.0/24)
#   The split columns show how many 200s each wrk stream (each replica in
#   A1/A3, both on the same replica in A2) got.  In A1 each replica lets
#   through only about half of the allowance; in A2 one replica lets through
#   all of it; so A1 holding the total to the allowance shows that the count
#   is shared, not kept per process.
#
# Part B - overhead of the access layer on a warm manifest GET by tag.
#   Five lank8s processes, each fresh on its own port, each warmed and
#   checked (status 200, exact pushed bytes), then measured with the very same
#   wrk command line (wrk -t2 -c64 -d LOAD_SECONDS, OCI manifest Accept):
#     core                    no limits, free route: the access layer's fast
#                             path (nothing to check) - the anchor
#     limits, embedded        requests_per_minute = 1e9 for every tier: no one
#                             is refused, every request is identified (its
#                             grant looked up in state.redb, cached 2 s) and
#                             counted (embedded: counters in process memory)
#     limits, redis           the same on Redis (one GCRA script per request)
#     sponsor, granted, redis a sponsor route; 127.0.0.1 holds an IP grant
#                             (an account logged in through /token and pulled
#                             once with its token); wrk is anonymous, so every
#                             request looks the grant up (cached 2 s), checks
#                             the account (cached 2 s) and counts the limit
#     sponsor, token, redis   wrk sends `Authorization: Bearer <token>`: every
#                             request verifies the HS256 JWT
#   The token reaches wrk through the environment (LOAD_AUTHORIZATION, read
#   by scripts/load/summary.lua), so the command line stays the same.  The
#   report gives req/s, p50 and p99 latency, req/s relative to core, and the
#   count of non-200 answers (wrk's status errors, >= 400) and socket errors:
#   a row with any, or whose curl check before or after timing failed, is
#   marked invalid.  "other CPU" is the CPU time processes this script did
#   not start used during the run (scripts/load/othercpu.py, a lower bound):
#   if it is high, something else competed for the CPUs and the row compares
#   badly; rerun when the machine is quiet.
#   With LOAD_ROUNDS > 1 the configurations take turns in each round and the
#   table shows medians.
#
# How to read the report: Part A's verdict is A1's; A2 must PASS too (else
# the load did not saturate the limit or one replica alone misbehaves, and A1
# says little), A3 should show about 2x (else the harness could not tell a
# shared limit from a per-process one).  In Part B compare the "x core"
# column: everything (servers, Redis, wrk) shares this machine's CPUs over
# loopback, so absolute figures say little and ratios a lot.  A single 10 s
# run can be far off on a small or shared machine (check "other CPU" and the
# spread); LOAD_ROUNDS=3 gives steadier medians (about 4 minutes).
#
# Everything listens on 127.0.0.1 only: a docker-registry upstream (into
# which the script pushes bench/small:v1 through the registry HTTP API), two
# redis-server instances (part A, part B; no persistence) and the lank8s
# processes.  Only processes this script started are stopped (by PID, on
# EXIT).  Default run: about 2 minutes plus the build.
#
# Run:
#   scripts/load.sh                                  # defaults
#   LOAD_SECONDS=3 LOAD_RATE=600 scripts/load.sh     # quick
#
# Environment:
#   LOAD_SECONDS    part B run length; part A runs twice as long  (default 10)
#   LOAD_RATE       part A: requests_per_minute R                 (default 1200)
#   LOAD_ADDRESSES  part A: simulated client addresses K          (default 4)
#   LOAD_ROUNDS     part B: wrk runs per configuration; median shown (default 1)
#   LOAD_OUT        where the markdown report goes     (default ./load-results.md)
#   LOAD_KEEP=1     keep the scratch directory (wrk outputs, logs, configs)
#   LOAD_TMPDIR     parent of the scratch directory    (default ${TMPDIR:-/tmp})
#   LANK8S_BIN      the lank8s binary; unset: `cargo build --release --locked`
#                   into CARGO_TARGET_DIR (default /var/tmp/lank8s-target) and
#                   use $CARGO_TARGET_DIR/release/lank8s
#
# Output: the report on stdout and in $LOAD_OUT; progress goes to stderr.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
HELPERS=$SCRIPT_DIR/load

LOAD_SECONDS=${LOAD_SECONDS:-10}
LOAD_RATE=${LOAD_RATE:-1200}
LOAD_ADDRESSES=${LOAD_ADDRESSES:-4}
LOAD_ROUNDS=${LOAD_ROUNDS:-1}
LOAD_OUT=${LOAD_OUT:-$PWD/load-results.md}
LOAD_KEEP=${LOAD_KEEP:-0}
LANK8S_BIN=${LANK8S_BIN:-}

A_CONNS_PER_ADDRESS=4   # part A: connections per address, per wrk process
B_THREADS=2             # part B: wrk -t
B_CONNS=64              # part B: wrk -c
UNLIMITED=1000000000    # part B: requests_per_minute that refuses no one
REPO_NAME=bench/small   # the image pushed to the upstream
TAG=v1
TAG_PATH=/v2/$REPO_NAME/manifests/$TAG
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
OCI_CONFIG=application/vnd.oci.image.config.v1+json
OCI_LAYER=application/vnd.oci.image.layer.v1.tar
ACCOUNT=loadtest

WORK=""                 # scratch directory
RESULTS=""              # TSV consumed by load/report.py
MANIFEST=""             # the pushed manifest bytes (file)
UPSTREAM=""             # http://127.0.0.1:port of the registry
declare -a STARTED=()   # PIDs of every process this script started
declare -A PID=()       # name -> PID
declare -A BASE=()      # lank8s name -> http://127.0.0.1:port

# ---------------------------------------------------------------- utilities

log() { printf '[load %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Stop one PID: TERM, wait up to 10 s, then KILL.
# shellcheck disable=SC2317  # reached through the EXIT trap
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "PID $pid ignored SIGTERM, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    set +e
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        stop_pid "${STARTED[i]}"
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $LOAD_KEEP == 1 ]]; then
            log "scratch directory kept: $WORK"
        else
            rm -rf -- "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget_pid() {
    local pid=$1 i
    for i in "${!STARTED[@]}"; do
        [[ ${STARTED[$i]} == "$pid" ]] && unset 'STARTED[i]'
    done
    STARTED=("${STARTED[@]}")
}

# Start a server in the background and remember its PID.
#   start_bg <name> <cmd...>      (output in $WORK/logs/<name>.log)
start_bg() {
    local name=$1
    shift
    "$@" >"$WORK/logs/$name.log" 2>&1 &
    PID[$name]=$!
    STARTED+=("${PID[$name]}")
    log "started $name (PID ${PID[$name]})"
}

# Stop a server started with start_bg.
stop_named() {
    local name=$1
    stop_pid "${PID[$name]}"
    forget_pid "${PID[$name]}"
    unset 'PID[$name]'
}

# Start a bounded job in the background (so that a signal is acted on at
# once and cleanup can stop it); the caller waits for it with wait_job.
#   start_job <outfile> <cmd...>   -> JOB_PID
JOB_PID=""
start_job() {
    local out=$1
    shift
    "$@" >"$out" 2>&1 &
    JOB_PID=$!
    STARTED+=("$JOB_PID")
}

wait_job() {
    local pid=$1 rc=0
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return "$rc"
}

# Print N free TCP ports on 127.0.0.1 (all held open together, so distinct).
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

sha256_hex() { sha256sum "$1" | cut -d' ' -f1; }

# Nanoseconds since the epoch.
now_ns() { date +%s%N; }

# Wait (at most 60 s) until <url> answers 200, while server <name> is alive.
wait_http() {
    local name=$1 url=$2 i
    for ((i = 0; i < 600; i++)); do
        kill -0 "${PID[$name]}" 2>/dev/null || {
            tail -n 30 "$WORK/logs/$name.log" >&2 || true
            die "$name exited before it was ready"
        }
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 30 "$WORK/logs/$name.log" >&2 || true
    die "$name not ready after 60 s"
}

# ------------------------------------------------------------------ setup

check_settings() {
    [[ $LOAD_SECONDS =~ ^[1-9][0-9]*$ ]] || die "LOAD_SECONDS must be a positive integer"
    [[ $LOAD_RATE =~ ^[1-9][0-9]*$ ]] || die "LOAD_RATE must be a positive integer"
    [[ $LOAD_ADDRESSES =~ ^[1-9][0-9]*$ ]] || die "LOAD_ADDRESSES must be a positive integer"
    [[ $LOAD_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "LOAD_ROUNDS must be a positive integer"
    ((LOAD_SECONDS <= 120)) || die "LOAD_SECONDS is capped at 120"
    ((LOAD_RATE <= 10000000)) || die "LOAD_RATE is capped at 10000000"
    ((LOAD_ADDRESSES <= 32)) || die "LOAD_ADDRESSES is capped at 32 (one wrk thread each)"
    ((LOAD_ROUNDS <= 10)) || die "LOAD_ROUNDS is capped at 10"
    local tool
    for tool in wrk redis-server redis-cli docker-registry curl python3; do
        command -v "$tool" >/dev/null || die "$tool is not installed"
    done
}

build_lank8s() {
    if [[ -z $LANK8S_BIN ]]; then
        local target_dir=${CARGO_TARGET_DIR:-/var/tmp/lank8s-target}
        log "cargo build --release --locked (target dir $target_dir)"
        (cd "$REPO" && CARGO_TARGET_DIR=$target_dir cargo build --release --locked >&2)
        LANK8S_BIN=$target_dir/release/lank8s
    fi
    [[ -x $LANK8S_BIN ]] || die "lank8s binary not found: $LANK8S_BIN"
}

make_workdir() {
    WORK=$(mktemp -d "${LOAD_TMPDIR:-${TMPDIR:-/tmp}}/lank8s-load.XXXXXX")
    mkdir -p "$WORK"/{files,logs,wrk,conf,data,redis}
    RESULTS=$WORK/results.tsv
    : >"$RESULTS"
    log "scratch directory: $WORK"
}

start_upstream() {
    local port=$1
    cat >"$WORK/conf/upstream.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/upstream-storage
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
EOF
    start_bg upstream docker-registry serve "$WORK/conf/upstream.yml"
    UPSTREAM=http://127.0.0.1:$port
    wait_http upstream "$UPSTREAM/v2/"
}

# Upload one blob (monolithic: POST, then PUT ?digest=).  push_blob <file>
push_blob() {
    local file=$1 digest loc sep
    digest=sha256:$(sha256_hex "$file")
    loc=$(curl -fsS --max-time 30 -X POST -o /dev/null -D - "$UPSTREAM/v2/$REPO_NAME/blobs/uploads/" |
        tr -d '\r' | sed -n 's/^[Ll]ocation: *//p')
    [[ -n $loc ]] || die "no upload Location from the upstream"
    [[ $loc == /* ]] && loc=$UPSTREAM$loc
    sep='?'
    [[ $loc == *\?* ]] && sep='&'
    curl -fsS --max-time 30 -o /dev/null -X PUT -H 'Expect:' \
        -H 'Content-Type: application/octet-stream' \
        -T "$file" "$loc${sep}digest=$digest"
}

# bench/small:v1: a 4 KiB random layer, its config and an OCI manifest.
push_image() {
    local layer=$WORK/files/layer config=$WORK/files/config.json
    MANIFEST=$WORK/files/manifest.json
    head -c 4096 /dev/urandom >"$layer"
    printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"config":{}}' \
        "$(sha256_hex "$layer")" >"$config"
    printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"%s","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"%s","digest":"sha256:%s","size":%d}]}' \
        "$OCI_MANIFEST" "$OCI_CONFIG" "$(sha256_hex "$config")" "$(stat -c %s "$config")" \
        "$OCI_LAYER" "$(sha256_hex "$layer")" "$(stat -c %s "$layer")" >"$MANIFEST"
    push_blob "$config"
    push_blob "$layer"
    curl -fsS --max-time 30 -o /dev/null -X PUT -H "Content-Type: $OCI_MANIFEST" \
        --data-binary "@$MANIFEST" "$UPSTREAM$TAG_PATH"
    log "pushed $REPO_NAME:$TAG (manifest sha256:$(sha256_hex "$MANIFEST"))"
    check_manifest upstream "$UPSTREAM"
}

#   start_redis <name> <port>
start_redis() {
    local name=$1 port=$2 i
    mkdir -p "$WORK/redis/$name"
    start_bg "$name" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$WORK/redis/$name"
    for ((i = 0; i < 300; i++)); do
        kill -0 "${PID[$name]}" 2>/dev/null || {
            tail -n 30 "$WORK/logs/$name.log" >&2 || true
            die "$name exited"
        }
        [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.1
    done
    die "$name did not answer PING within 30 s"
}

# Write a lank8s config and start it; BASE[<name>] is its URL.
#   start_lank8s <name> <port> <extra top-level TOML> <extra tables TOML>
# The default upstream (registry.k8s.io, a free route) points at the local
# registry unless the extra tables say otherwise.
start_lank8s() {
    local name=$1 port=$2 top=$3 tables=$4 conf=$WORK/conf/$1.toml
    cat >"$conf" <<EOF
listen = "127.0.0.1:$port"
data_dir = "$WORK/data/$name"
$top

[log]
format = "json"
level = "warn"

[upstreams."registry.k8s.io"]
url = "$UPSTREAM"

$tables
EOF
    start_bg "$name" "$LANK8S_BIN" serve --config "$conf"
    BASE[$name]=http://127.0.0.1:$port
    wait_http "$name" "${BASE[$name]}/healthz"
}

# One GET of the manifest by tag: status 200 and the pushed bytes.
#   check_manifest <name> <base URL> [curl args...]
check_manifest() {
    local name=$1 base=$2 code
    shift 2
    code=$(curl -sS --max-time 30 -H "Accept: $OCI_MANIFEST" "$@" \
        -o "$WORK/files/check.body" -w '%{http_code}' "$base$TAG_PATH") ||
        die "$name: GET $TAG_PATH failed"
    [[ $code == 200 ]] || { cat "$WORK/files/check.body" >&2; die "$name: GET $TAG_PATH answered $code"; }
    cmp -s "$WORK/files/check.body" "$MANIFEST" ||
        die "$name: GET $TAG_PATH does not return the pushed manifest bytes"
}

# Like check_manifest, but answers true/false instead of dying.
manifest_ok() {
    local base=$1 code
    shift
    code=$(curl -sS --max-time 30 -H "Accept: $OCI_MANIFEST" "$@" \
        -o "$WORK/files/check.body" -w '%{http_code}' "$base$TAG_PATH" 2>/dev/null) || return 1
    [[ $code == 200 ]] && cmp -s "$WORK/files/check.body" "$MANIFEST"
}

# The status of one manifest GET.  status_of <base> [curl args...]
status_of() {
    local base=$1
    shift
    curl -sS --max-time 30 -H "Accept: $OCI_MANIFEST" "$@" -o /dev/null -w '%{http_code}' \
        "$base$TAG_PATH" || true
}

# Warnings and errors a server logged (lank8s logs JSON at level warn).
log_problems() {
    local name=$1
    grep -c -E '"level":"(WARN|ERROR)"' "$WORK/logs/$name.log" || true
}

record() { printf '%s\n' "$(IFS=$'\t'; echo "$*")" >>"$RESULTS"; }

# ------------------------------------------------------------- part A

# The first K addresses of a /24: addresses <prefix>  ->  "p.1 p.2 ... p.K"
addresses() {
    local i out=()
    for ((i = 1; i <= LOAD_ADDRESSES; i++)); do out+=("$1.$i"); done
    echo "${out[*]}"
}

# Two wrk processes at once, stream 1 on <base1> and stream 2 on <base2>,
# for T seconds, counting per address; records the window and the counts.
#   run_limits <scenario> <base1> <base2> <replica of stream 1> <of stream 2> <prefix>
run_limits() {
    local scenario=$1 base1=$2 base2=$3 rep1=$4 rep2=$5 prefix=$6
    local seconds=$((2 * LOAD_SECONDS)) threads=$LOAD_ADDRESSES
    local conns=$((LOAD_ADDRESSES * A_CONNS_PER_ADDRESS)) s pid
    local -a addrs pids=() starts=() bases=("$base1" "$base2")
    read -r -a addrs <<<"$(addresses "$prefix")"
    log "$scenario: 2 x wrk -t$threads -c$conns -d${seconds}s, addresses ${addrs[*]}"
    for s in 1 2; do
        starts+=("$(now_ns)")
        start_job "$WORK/wrk/A.$scenario.$s.txt" \
            timeout --kill-after=5 "$((seconds + 60))" \
            wrk -t"$threads" -c"$conns" -d"${seconds}s" --timeout 10s \
            -H "Accept: $OCI_MANIFEST" -s "$HELPERS/limits.lua" \
            "${bases[s - 1]}$TAG_PATH" -- "${addrs[@]}"
        pids+=("$JOB_PID")
    done
    for s in 1 2; do
        pid=${pids[s - 1]}
        wait_job "$pid" || { cat "$WORK/wrk/A.$scenario.$s.txt" >&2; die "wrk stream $s of $scenario failed"; }
    done
    local rep line out dur end window_end=0 addr ok limited other
    for s in 1 2; do
        out=$WORK/wrk/A.$scenario.$s.txt
        rep=$rep1
        [[ $s == 2 ]] && rep=$rep2
        line=$(sed -n 's/^LOAD_RUN //p' "$out")
        [[ -n $line ]] || { cat "$out" >&2; die "no result from wrk stream $s of $scenario"; }
        record a_run "$scenario" "$s" "$rep" "$line"
        dur=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["duration_us"])' "$line")
        end=$((starts[s - 1] + dur * 1000))
        ((end > window_end)) && window_end=$end
        while read -r _ addr ok limited other; do
            record a_count "$scenario" "$s" "$addr" "$ok" "$limited" "$other"
        done < <(grep '^LOAD_COUNT ' "$out")
        [[ $(grep -c '^LOAD_COUNT ' "$out") == "$LOAD_ADDRESSES" ]] ||
            die "wrk stream $s of $scenario reported $(grep -c '^LOAD_COUNT ' "$out") addresses, want $LOAD_ADDRESSES"
    done
    # The window: from the first wrk's start to the last one's end.
    record a_window "$scenario" "$(((window_end - starts[0]) / 1000))"
}

part_a() {
    local p_redis p1 p2 p3 p4 p5 name redis_url
    read -r p_redis p1 p2 p3 p4 p5 < <(free_ports 6)
    start_redis redis-a "$p_redis"
    redis_url="redis://127.0.0.1:$p_redis/0"
    local limits="[access.limits.anonymous]
requests_per_minute = $LOAD_RATE"
    local trust='trusted_proxies = ["127.0.0.1"]'
    start_lank8s a1-replica1 "$p1" "state = \"$redis_url\"
$trust" "$limits"
    start_lank8s a1-replica2 "$p2" "state = \"$redis_url\"
$trust" "$limits"
    start_lank8s a2-single "$p3" "state = \"$redis_url\"
$trust" "$limits"
    start_lank8s a3-embedded1 "$p4" "$trust" "$limits"
    start_lank8s a3-embedded2 "$p5" "$trust" "$limits"
    # Warm each (from 127.0.0.1, no X-Forwarded-For: not a simulated address).
    for name in a1-replica1 a1-replica2 a2-single a3-embedded1 a3-embedded2; do
        check_manifest "$name" "${BASE[$name]}"
    done
    # A request that names its client in X-Forwarded-For is served.
    [[ $(status_of "${BASE[a1-replica1]}" -H "X-Forwarded-For: 198.51.100.250") == 200 ]] ||
        die "a1-replica1 refused a request with X-Forwarded-For"

    run_limits A1 "${BASE[a1-replica1]}" "${BASE[a1-replica2]}" replica1 replica2 198.51.100
    # The count lives in Redis: one rate key per A1 address (they expire
    # about a minute after the last allowed request, so look now).
    record a_keys "$(redis-cli -h 127.0.0.1 -p "$p_redis" --scan --pattern '*rate*198.51.100.*' | wc -l)"
    sleep 1
    run_limits A2 "${BASE[a2-single]}" "${BASE[a2-single]}" single single 203.0.113
    sleep 1
    run_limits A3 "${BASE[a3-embedded1]}" "${BASE[a3-embedded2]}" embedded1 embedded2 192.0.2

    for name in a1-replica1 a1-replica2 a2-single a3-embedded1 a3-embedded2; do
        record problems "$name" "$(log_problems "$name")"
        stop_named "$name"
    done
    stop_named redis-a
}

# ------------------------------------------------------------- part B

B_CONFIGS=(core limits-embedded limits-redis sponsor-granted sponsor-token)
declare -A B_AUTH=()    # config -> Authorization header value wrk sends

# Log in as $ACCOUNT at lank8s <name>; prints the token.
login() {
    local name=$1 port=${BASE[$1]##*:}
    curl -fsS --max-time 30 -K "$WORK/conf/login.curlrc" \
        "${BASE[$name]}/token?service=127.0.0.1:$port&scope=repository:$REPO_NAME:pull" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])'
}

# Add the account to the state store of lank8s <name> (through its config).
add_account() {
    local name=$1
    "$LANK8S_BIN" account add "$ACCOUNT" --password-stdin --config "$WORK/conf/$name.toml" \
        <"$WORK/conf/password" >"$WORK/logs/account-$name.log" 2>&1 ||
        { cat "$WORK/logs/account-$name.log" >&2; die "lank8s account add failed for $name"; }
}

part_b() {
    local p_redis p1 p2 p3 p4 p5 i token code name round out line pre post other others_top
    read -r p_redis p1 p2 p3 p4 p5 < <(free_ports 6)
    start_redis redis-b "$p_redis"
    local unlimited="[access.limits.anonymous]
requests_per_minute = $UNLIMITED

[access.limits.granted]
requests_per_minute = $UNLIMITED

[access.limits.sponsor]
requests_per_minute = $UNLIMITED"
    # The sponsor route: every name goes to sponsored.test (the local registry).
    local sponsor="[access]
realm_scheme = \"http\"
token_ttl = \"1h\"

$unlimited

[upstreams.\"sponsored.test\"]
url = \"$UPSTREAM\"
tier = \"sponsor\""
    local sponsor_top='default_upstream = "sponsored.test"'
    start_lank8s core "$p1" "" ""
    start_lank8s limits-embedded "$p2" "" "$unlimited"
    start_lank8s limits-redis "$p3" "state = \"redis://127.0.0.1:$p_redis/0\"" "$unlimited"
    # Two databases, so that the token configuration starts without the
    # grant the granted one earns.
    start_lank8s sponsor-granted "$p4" "state = \"redis://127.0.0.1:$p_redis/0\"
$sponsor_top" "$sponsor"
    start_lank8s sponsor-token "$p5" "state = \"redis://127.0.0.1:$p_redis/1\"
$sponsor_top" "$sponsor"

    (umask 077 && od -An -tx1 -N 16 /dev/urandom | tr -d ' \n' >"$WORK/conf/password" &&
        printf '\n' >>"$WORK/conf/password" &&
        printf 'user = "%s:%s"\n' "$ACCOUNT" "$(head -n1 "$WORK/conf/password")" >"$WORK/conf/login.curlrc")
    add_account sponsor-granted
    add_account sponsor-token

    for name in core limits-embedded limits-redis; do
        check_manifest "$name" "${BASE[$name]}"
        B_AUTH[$name]=""
    done

    # sponsor-granted: anonymous is refused, a pull with the token earns
    # 127.0.0.1 a grant, then anonymous pulls succeed (caches: up to 2 s).
    code=$(status_of "${BASE[sponsor-granted]}")
    [[ $code == 401 ]] || die "sponsor-granted: anonymous GET before any grant answered $code, want 401"
    token=$(login sponsor-granted) || die "sponsor-granted: login failed"
    check_manifest sponsor-granted "${BASE[sponsor-granted]}" -H "Authorization: Bearer $token"
    for ((i = 0; i < 100; i++)); do
        manifest_ok "${BASE[sponsor-granted]}" && break
        sleep 0.1
    done
    check_manifest sponsor-granted "${BASE[sponsor-granted]}"
    B_AUTH[sponsor-granted]=""
    log "sponsor-granted: 127.0.0.1 pulls anonymously on its grant"

    # sponsor-token: anonymous is refused, the token opens it.
    code=$(status_of "${BASE[sponsor-token]}")
    [[ $code == 401 ]] || die "sponsor-token: anonymous GET before any grant answered $code, want 401"
    token=$(login sponsor-token) || die "sponsor-token: login failed"
    check_manifest sponsor-token "${BASE[sponsor-token]}" -H "Authorization: Bearer $token"
    B_AUTH[sponsor-token]="Bearer $token"

    for ((round = 1; round <= LOAD_ROUNDS; round++)); do
        for name in "${B_CONFIGS[@]}"; do
            local -a auth=()
            [[ -n ${B_AUTH[$name]} ]] && auth=(-H "Authorization: ${B_AUTH[$name]}")
            pre=1 post=1
            manifest_ok "${BASE[$name]}" "${auth[@]}" || pre=0
            out=$WORK/wrk/B.$name.$round.txt
            log "B $name, round $round/$LOAD_ROUNDS (wrk -t$B_THREADS -c$B_CONNS -d${LOAD_SECONDS}s)"
            python3 "$HELPERS/othercpu.py" start "$$" "$WORK/files/cpu.json"
            start_job "$out" env LOAD_AUTHORIZATION="${B_AUTH[$name]}" \
                timeout --kill-after=5 "$((LOAD_SECONDS + 60))" \
                wrk -t"$B_THREADS" -c"$B_CONNS" -d"${LOAD_SECONDS}s" \
                -H "Accept: $OCI_MANIFEST" -s "$HELPERS/summary.lua" "${BASE[$name]}$TAG_PATH"
            wait_job "$JOB_PID" || { cat "$out" >&2; die "wrk failed against $name"; }
            # CPU seconds processes other than this script's used meanwhile.
            read -r other others_top < <(python3 "$HELPERS/othercpu.py" end "$$" "$WORK/files/cpu.json")
            manifest_ok "${BASE[$name]}" "${auth[@]}" || post=0
            line=$(sed -n 's/^LOAD_RESULT //p' "$out")
            [[ -n $line ]] || { cat "$out" >&2; die "no result from wrk against $name"; }
            record b "$name" "$round" "$line" "$pre$post" "$other" "$others_top"
            sleep 1
        done
    done
    for name in "${B_CONFIGS[@]}"; do
        record problems "$name" "$(log_problems "$name")"
    done
}

# ------------------------------------------------------------------- main

machine_info() {
    local rev
    rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "unknown")
    git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || rev+="+dirty"
    printf '%s' "Machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), " \
        "$(awk '/^MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), " \
        "Linux $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC'). " \
        "Versions: lank8s $("$LANK8S_BIN" --version 2>/dev/null | head -n1 || true) (git $rev); " \
        "$(redis-server --version | awk '{print "redis", $3}' | tr -d 'v='); " \
        "$(docker-registry --version 2>&1 | awk '{print "distribution", $3}'); " \
        "$(wrk --version 2>&1 | awk 'NR==1 {print "wrk", $2}'). " \
        "Settings: LOAD_SECONDS=$LOAD_SECONDS, LOAD_RATE=$LOAD_RATE, LOAD_ADDRESSES=$LOAD_ADDRESSES, LOAD_ROUNDS=$LOAD_ROUNDS."
}

main() {
    check_settings
    build_lank8s
    make_workdir
    log "expected run time: about $((6 * LOAD_SECONDS + 5 * LOAD_SECONDS * LOAD_ROUNDS + 6 * LOAD_ROUNDS + 30)) s"
    local p_up
    read -r p_up < <(free_ports 1)
    start_upstream "$p_up"
    push_image

    part_a
    part_b

    log "report:"
    python3 "$HELPERS/report.py" --results "$RESULTS" --out "$LOAD_OUT" \
        --rate "$LOAD_RATE" --addresses "$LOAD_ADDRESSES" \
        --a-conns "$A_CONNS_PER_ADDRESS" --b-cmd "wrk -t$B_THREADS -c$B_CONNS -d${LOAD_SECONDS}s -H 'Accept: $OCI_MANIFEST'" \
        --info "$(machine_info)"
    log "report written to $LOAD_OUT"
}

# On one line, so bash has read it whole before running it: editing this file
# during a run cannot make the running shell read on into changed text.
main "$@"; exit "$?"
