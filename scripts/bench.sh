#!/usr/bin/env bash
# Benchmark: lank8s against two anchors, in one run, on the same files.
#
# What it measures (every target is hit with the very same wrk command line,
# only the host:port differs):
#   - warm large-blob GET throughput, 1 connection  (wrk -t1 -c1)   -> MiB/s
#   - warm large-blob GET throughput, 16 connections (wrk -t2 -c16) -> MiB/s
#   - manifest GET by tag and by digest, 64 connections (wrk -t2 -c64,
#     Accept: application/vnd.oci.image.manifest.v1+json)          -> req/s
#   - peak RSS (VmHWM) of lank8s and of distribution during the 16-connection
#     blob run: the high-water mark is reset through /proc/<pid>/clear_refs
#     right before that run and read right after it (if the reset is refused,
#     the lifetime peak is reported and the table says so).
#
# The three targets:
#   lank8s        the release build, `lank8s serve --config cfg.toml`, pulling
#                 through from the upstream below (its default upstream,
#                 registry.k8s.io, is pointed at it).
#   distribution  CNCF distribution 2.8 (docker-registry) in proxy mode, same
#                 upstream, own storage.
#   nginx         nginx serving the very same blob and manifest bytes as static
#                 files (sendfile) under the same URL paths: the "how fast can a
#                 static file server go on this box" anchor.
# The upstream is a plain distribution registry (filesystem storage) into which
# the script pushes bench/large:v1 (one config blob, one random layer of
# BENCH_BLOB_MIB MiB) and bench/small:v1 through the registry HTTP API.
# Before timing, every target is warmed and checked once: the sha256 of one
# full blob GET must equal the digest, and the manifest bodies (by tag and by
# digest) must equal the pushed bytes.  Everything listens on 127.0.0.1 only.
#
# Storage rows (BENCH_STORAGE=1, the default), added to the same table:
#   lank8s-fs     the lank8s above (cache in data_dir on local disk).
#   lank8s-s3     a second lank8s on the same upstream with [storage]
#                 backend = "s3" on a single-node Garage 2.x (run on loopback
#                 in the scratch directory and set up through its admin API
#                 the way tests/support/garage.rs does) and [dispatch] mode =
#                 "stream".  Garage is $LANK8S_GARAGE, by default
#                 /var/cache/lank8s-tools/bin/garage (scripts/garage.sh
#                 install); without it the lank8s-s3 rows say n/a.
#   - cold fill: one curl GET (body discarded) of a blob nobody has asked for
#     yet: MiB/s = size / time_total, and the time to first byte
#     (time_starttransfer).  Every cold measurement gets its own freshly
#     pushed random blob of BENCH_BLOB_MIB MiB (bench/cold), so nothing is
#     cached anywhere; the anchor is the same GET sent to the upstream
#     directly (what a client waits for without lank8s), shown in the
#     distribution column of those rows.
#   - warm serve: the 1- and 16-connection wrk runs above, on the blob each
#     lank8s has just filled (lank8s-s3 streams it from Garage; the script
#     waits until the object is in the bucket before timing).
#
# Run (from anywhere; needs root or sudo only if tools must be installed):
#   scripts/bench.sh                                  # full: 10 s runs, 512 MiB blob
#   BENCH_SECONDS=2 BENCH_BLOB_MIB=64 scripts/bench.sh  # quick
#
# Environment:
#   BENCH_SECONDS   length of each wrk run, seconds            (default 10)
#   BENCH_BLOB_MIB  size of the large layer, MiB               (default 512)
#   BENCH_ROUNDS    wrk runs per metric and target; the table shows the
#                   median, the notes the spread                (default 1)
#   BENCH_OUT       where the markdown report goes (default ./bench-results.md)
#   LANK8S_BIN      unset/empty: `cargo build --release` and use
#                   ${CARGO_TARGET_DIR:-<repo>/target}/release/lank8s;
#                   a path: use that binary as is; "skip": do not run lank8s
#                   (its column shows n/a; handy to check the anchors alone)
#   BENCH_STORAGE   1: measure the storage rows (lank8s-s3 only if Garage is
#                   there); 0: leave them n/a                    (default 1)
#   LANK8S_GARAGE   the garage 2.x binary  (default /var/cache/lank8s-tools/bin/garage)
#   BENCH_KEEP=1    keep the scratch directory (wrk outputs, logs, data)
#   BENCH_TMPDIR    parent of the scratch directory       (default ${TMPDIR:-/tmp})
#
# Output: the table on stdout and in $BENCH_OUT; progress goes to stderr.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
HELPERS=$SCRIPT_DIR/bench

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_BLOB_MIB=${BENCH_BLOB_MIB:-512}
BENCH_OUT=${BENCH_OUT:-$PWD/bench-results.md}
BENCH_ROUNDS=${BENCH_ROUNDS:-1}
BENCH_KEEP=${BENCH_KEEP:-0}
LANK8S_BIN=${LANK8S_BIN:-}
BENCH_STORAGE=${BENCH_STORAGE:-1}
GARAGE_BIN=${LANK8S_GARAGE:-/var/cache/lank8s-tools/bin/garage}

OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
OCI_CONFIG=application/vnd.oci.image.config.v1+json
OCI_LAYER=application/vnd.oci.image.layer.v1.tar

WORK=""                 # scratch directory, set in make_workdir
declare -a STARTED=()   # PIDs of every server this script started
declare -A PID=()       # target name -> server PID
declare -A BASE=()      # target name -> http://127.0.0.1:port
NGINX_BIN=""

# Storage rows.  STORAGE_RUN: measure them at all; S3_RUN: lank8s-s3 too.
STORAGE_RUN=0
S3_RUN=0
STORAGE_WHY=""          # why (part of) the storage rows say n/a, for the notes
COLD_REPO=bench/cold    # the fresh blobs of the cold measurements go here
COLD_HEX=""             # hex digest of the blob push_cold_blob pushed last
declare -A WARM_PATH=() # lank8s target -> path of the blob it filled (warm runs)
S3_WARM_GETS=""         # Garage GETs of that blob during lank8s-s3's warm runs
GARAGE_REGION=garage
GARAGE_BUCKET=lank8s
GARAGE_S3=""            # http://127.0.0.1:port of Garage's S3 API
GARAGE_ADMIN=""         # and of its admin API
# SigV4 payload hash of an empty body (GET/HEAD); Garage wants the header.
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

# ---------------------------------------------------------------- utilities

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
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
    local rc=$?
    trap - EXIT INT TERM
    set +e
    # Last started first: a client (lank8s-s3) goes before its server
    # (Garage waits up to 10 s for open connections to close).
    local i
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        stop_pid "${STARTED[i]}"
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $BENCH_KEEP == 1 ]]; then
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

# Start a server in the background, remember its PID.
#   start_bg <name> <logfile> <cmd...>
start_bg() {
    local name=$1 logfile=$2
    shift 2
    "$@" >"$logfile" 2>&1 &
    local pid=$!
    STARTED+=("$pid")
    PID[$name]=$pid
    log "started $name (PID $pid)"
}

# Run a bounded foreground job in the background and wait for it, so that a
# signal to this script is acted on at once (bash defers traps while a
# foreground child runs) and cleanup can stop the job too.
#   run_job <outfile> <cmd...>
run_job() {
    local out=$1 pid rc=0
    shift
    "$@" >"$out" 2>&1 &
    pid=$!
    STARTED+=("$pid")
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return "$rc"
}

forget_pid() {
    local pid=$1 i
    for i in "${!STARTED[@]}"; do
        [[ ${STARTED[$i]} == "$pid" ]] && unset 'STARTED[i]'
    done
    STARTED=("${STARTED[@]}")
}

# Wait (at most 60 s) until GET <url> answers 200, while <pid> is alive.
wait_ready() {
    local name=$1 url=$2 logfile=$3 pid=${PID[$1]} i
    for ((i = 0; i < 600; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited before it was ready; last lines of $logfile:"
            tail -n 30 "$logfile" >&2 || true
            die "$name did not start"
        fi
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            log "$name ready at $url"
            return 0
        fi
        sleep 0.1
    done
    tail -n 30 "$logfile" >&2 || true
    die "$name not ready after 60 s"
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

random_hex() { od -An -tx1 -N "$1" /dev/urandom | tr -d ' \n'; }

# One string from the JSON document on stdin.  json_get <key.0.key>
json_get() {
    python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else v[k]
if not isinstance(v, str):
    sys.exit("%s is not a string: %r" % (sys.argv[1], v))
print(v)' "$1"
}

# ------------------------------------------------------------------ setup

check_settings() {
    [[ $BENCH_SECONDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer"
    [[ $BENCH_BLOB_MIB =~ ^[1-9][0-9]*$ ]] || die "BENCH_BLOB_MIB must be a positive integer"
    [[ $BENCH_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer"
    ((BENCH_SECONDS <= 600)) || die "BENCH_SECONDS is capped at 600"
    ((BENCH_ROUNDS <= 20)) || die "BENCH_ROUNDS is capped at 20"
    ((BENCH_BLOB_MIB <= 8192)) || die "BENCH_BLOB_MIB is capped at 8192"
    [[ $BENCH_STORAGE == [01] ]] || die "BENCH_STORAGE must be 0 or 1"
}

# Decide which storage rows are measured (before make_workdir sizes the disk).
plan_storage() {
    if [[ $BENCH_STORAGE != 1 ]]; then
        STORAGE_WHY="Storage rows not measured (BENCH_STORAGE=0)."
        return 0
    fi
    STORAGE_RUN=1
    if [[ $LANK8S_BIN == skip ]]; then
        return 0
    elif [[ -f $GARAGE_BIN && -x $GARAGE_BIN ]]; then
        S3_RUN=1
    else
        log "Garage not found at $GARAGE_BIN: the lank8s-s3 rows will say n/a"
        STORAGE_WHY="lank8s-s3 rows n/a: no Garage binary at $GARAGE_BIN (run scripts/garage.sh install, or set LANK8S_GARAGE)."
    fi
}

ensure_tools() {
    local -a missing=()
    command -v docker-registry >/dev/null || missing+=(docker-registry)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        local sudo=""
        [[ $(id -u) == 0 ]] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
    fi
    NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
}

build_lank8s() {
    if [[ $LANK8S_BIN == skip ]]; then
        log "LANK8S_BIN=skip: lank8s is not measured"
        return 0
    fi
    if [[ -z $LANK8S_BIN ]]; then
        local target_dir=${CARGO_TARGET_DIR:-$REPO/target}
        log "cargo build --release (target dir $target_dir)"
        (cd "$REPO" && CARGO_TARGET_DIR=$target_dir cargo build --release >&2)
        LANK8S_BIN=$target_dir/release/lank8s
    fi
    [[ -x $LANK8S_BIN ]] || die "lank8s binary not found: $LANK8S_BIN"
}

make_workdir() {
    local parent=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
    WORK=$(mktemp -d "$parent/lank8s-bench.XXXXXX")
    mkdir -p "$WORK"/{files,logs,wrk,nginx/root,nginx/tmp}
    log "scratch directory: $WORK"
    # The blob is stored four times: the source file (also nginx's copy, via a
    # hard link), the upstream, distribution's cache and lank8s' cache.  The
    # storage rows add, per round, three fresh blobs in the upstream, one in
    # lank8s' cache, one in Garage and one in lank8s-s3's spool, plus one
    # source file at a time.
    local copies=$((4 + STORAGE_RUN * (1 + 6 * BENCH_ROUNDS))) have_kib
    local need_kib=$(((copies * BENCH_BLOB_MIB + 256) * 1024))
    have_kib=$(df -Pk "$WORK" | awk 'NR == 2 {print $4}')
    ((have_kib >= need_kib)) ||
        die "need $((need_kib / 1024)) MiB free in $parent, have $((have_kib / 1024)) MiB"
}

# Write a registry config.  write_registry_config <file> <port> <storage> [remoteurl]
write_registry_config() {
    local file=$1 port=$2 storage=$3 remote=${4:-}
    cat >"$file" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $storage
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
EOF
    if [[ -n $remote ]]; then
        printf 'proxy:\n  remoteurl: %s\n' "$remote" >>"$file"
    fi
}

start_upstream() {
    local port=$1
    write_registry_config "$WORK/upstream.yml" "$port" "$WORK/upstream-storage"
    start_bg upstream "$WORK/logs/upstream.log" docker-registry serve "$WORK/upstream.yml"
    BASE[upstream]=http://127.0.0.1:$port
    wait_ready upstream "${BASE[upstream]}/v2/" "$WORK/logs/upstream.log"
}

# Upload one blob (monolithic: POST then PUT ?digest=).  push_blob <repo> <file>
push_blob() {
    local repo=$1 file=$2 up=${BASE[upstream]} digest loc sep
    digest=sha256:$(sha256_hex "$file")
    loc=$(curl -fsS --max-time 30 -X POST -o /dev/null -D - "$up/v2/$repo/blobs/uploads/" |
        tr -d '\r' | sed -n 's/^[Ll]ocation: *//p')
    [[ -n $loc ]] || die "no upload Location for $repo"
    [[ $loc == /* ]] && loc=$up$loc
    sep='?'
    [[ $loc == *\?* ]] && sep='&'
    curl -fsS --max-time 600 -o /dev/null -X PUT -H 'Expect:' \
        -H 'Content-Type: application/octet-stream' \
        -T "$file" "$loc${sep}digest=$digest"
}

# Make the config, push the blobs and the manifest of <repo>:<tag>, whose only
# layer is <layer file>; the manifest bytes are left in <manifest file>.
push_image() {
    local repo=$1 tag=$2 layer=$3 manifest=$4
    local config=$WORK/files/${repo//\//_}.config.json layer_hex layer_size config_hex
    layer_hex=$(sha256_hex "$layer")
    layer_size=$(stat -c %s "$layer")
    printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"config":{}}' \
        "$layer_hex" >"$config"
    config_hex=$(sha256_hex "$config")
    printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"%s","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"%s","digest":"sha256:%s","size":%d}]}' \
        "$OCI_MANIFEST" "$OCI_CONFIG" "$config_hex" "$(stat -c %s "$config")" \
        "$OCI_LAYER" "$layer_hex" "$layer_size" >"$manifest"
    push_blob "$repo" "$config"
    push_blob "$repo" "$layer"
    curl -fsS --max-time 30 -o /dev/null -X PUT -H "Content-Type: $OCI_MANIFEST" \
        --data-binary "@$manifest" "${BASE[upstream]}/v2/$repo/manifests/$tag"
    log "pushed $repo:$tag (manifest sha256:$(sha256_hex "$manifest"))"
}

make_and_push_images() {
    local large=$WORK/files/large.layer small=$WORK/files/small.layer
    log "writing ${BENCH_BLOB_MIB} MiB of random bytes"
    head -c "$((BENCH_BLOB_MIB * 1024 * 1024))" /dev/urandom >"$large"
    head -c 4096 /dev/urandom >"$small"
    push_image bench/large v1 "$large" "$WORK/files/large.manifest"
    push_image bench/small v1 "$small" "$WORK/files/small.manifest"

    LARGE_HEX=$(sha256_hex "$large")
    SMALL_MANIFEST_HEX=$(sha256_hex "$WORK/files/small.manifest")
    LARGE_MANIFEST_HEX=$(sha256_hex "$WORK/files/large.manifest")
    BLOB_PATH=/v2/bench/large/blobs/sha256:$LARGE_HEX
    TAG_PATH=/v2/bench/small/manifests/v1
    DIGEST_PATH=/v2/bench/small/manifests/sha256:$SMALL_MANIFEST_HEX
    # The upstream must give back what was pushed, or nothing below means much.
    check_target upstream "${BASE[upstream]}"
}

start_lank8s() {
    local port=$1
    [[ $LANK8S_BIN == skip ]] && return 0
    cat >"$WORK/lank8s.toml" <<EOF
listen = "127.0.0.1:$port"
data_dir = "$WORK/lank8s-data"

[log]
format = "json"
level = "warn"

[upstreams."registry.k8s.io"]
url = "${BASE[upstream]}"
EOF
    start_bg lank8s "$WORK/logs/lank8s.log" "$LANK8S_BIN" serve --config "$WORK/lank8s.toml"
    BASE[lank8s]=http://127.0.0.1:$port
    wait_ready lank8s "${BASE[lank8s]}/healthz" "$WORK/logs/lank8s.log"
}

start_distribution_proxy() {
    local port=$1
    write_registry_config "$WORK/proxy.yml" "$port" "$WORK/proxy-storage" "${BASE[upstream]}"
    start_bg distribution "$WORK/logs/distribution.log" docker-registry serve "$WORK/proxy.yml"
    BASE[distribution]=http://127.0.0.1:$port
    wait_ready distribution "${BASE[distribution]}/v2/" "$WORK/logs/distribution.log"
}

start_nginx() {
    local port=$1 root=$WORK/nginx/root user_line=""
    # The same bytes, laid out under the same URL paths.
    mkdir -p "$root/v2/bench/large/blobs" "$root/v2/bench/large/manifests" \
        "$root/v2/bench/small/manifests"
    ln "$WORK/files/large.layer" "$root$BLOB_PATH" 2>/dev/null ||
        cp "$WORK/files/large.layer" "$root$BLOB_PATH"
    cp "$WORK/files/small.manifest" "$root$TAG_PATH"
    cp "$WORK/files/small.manifest" "$root$DIGEST_PATH"
    cp "$WORK/files/large.manifest" "$root/v2/bench/large/manifests/v1"
    cp "$WORK/files/large.manifest" "$root/v2/bench/large/manifests/sha256:$LARGE_MANIFEST_HEX"
    # Workers run as the invoking user (as root nginx would otherwise drop to
    # nobody, who cannot read the private scratch directory).
    [[ $(id -u) == 0 ]] && user_line="user $(id -un) $(id -gn);"
    cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/err.log;
$user_line
events {
    worker_connections 1024;
}
http {
    access_log off;
    sendfile on;
    types {}
    default_type application/octet-stream;
    # Do not let nginx close keep-alive connections every 1000 requests
    # (its default); wrk would then measure reconnects, not serving.
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        root $root;
        location ~ ^/v2/.+/manifests/ {
            default_type $OCI_MANIFEST;
        }
    }
}
EOF
    "$NGINX_BIN" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/err.log" -t \
        >"$WORK/logs/nginx-t.log" 2>&1 || { cat "$WORK/logs/nginx-t.log" >&2; die "bad nginx.conf"; }
    start_bg nginx "$WORK/logs/nginx.log" \
        "$NGINX_BIN" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/err.log"
    BASE[nginx]=http://127.0.0.1:$port
    wait_ready nginx "${BASE[nginx]}$TAG_PATH" "$WORK/logs/nginx.log"
}

# One GET of the large blob and of both manifests (by tag and by digest).
warm_target() {
    local name=$1 base=${BASE[$1]} repo
    log "warming $name"
    curl -fsS --max-time 600 -o /dev/null "$base$BLOB_PATH"
    for repo in large small; do
        local hex
        hex=$(sha256_hex "$WORK/files/$repo.manifest")
        curl -fsS --max-time 60 -o /dev/null -H "Accept: $OCI_MANIFEST" "$base/v2/bench/$repo/manifests/v1"
        curl -fsS --max-time 60 -o /dev/null -H "Accept: $OCI_MANIFEST" "$base/v2/bench/$repo/manifests/sha256:$hex"
    done
}

# distribution's proxy copies a blob into its own storage in the background;
# wait (at most 120 s) until it is there, so the runs hit the local copy.
wait_distribution_cached() {
    local f=$WORK/proxy-storage/docker/registry/v2/blobs/sha256/${LARGE_HEX:0:2}/$LARGE_HEX/data i
    local want=$((BENCH_BLOB_MIB * 1024 * 1024))
    for ((i = 0; i < 1200; i++)); do
        if [[ -f $f && $(stat -c %s "$f") == "$want" ]]; then
            return 0
        fi
        sleep 0.1
    done
    log "warning: distribution has not stored the blob locally after 120 s"
}

# Correctness gate: the blob hashes to its digest, the manifests are the
# pushed bytes.  A fast wrong answer must not make it into the table.
check_target() {
    local name=$1 base=$2 got ctype path
    got=$(curl -fsS --max-time 600 "$base$BLOB_PATH" | sha256sum | cut -d' ' -f1)
    [[ $got == "$LARGE_HEX" ]] || die "$name: blob GET hashes to $got, want $LARGE_HEX"
    for path in "$TAG_PATH" "$DIGEST_PATH"; do
        ctype=$(curl -fsS --max-time 30 -H "Accept: $OCI_MANIFEST" \
            -o "$WORK/files/check.body" -w '%{content_type}' "$base$path")
        cmp -s "$WORK/files/check.body" "$WORK/files/small.manifest" ||
            die "$name: GET $path does not return the pushed manifest bytes"
        [[ ${ctype%%;*} == "$OCI_MANIFEST" ]] ||
            log "warning: $name: GET $path has Content-Type '$ctype'"
    done
    log "$name: blob and manifests verified"
}

# ---------------------------------------------------------- object storage

# One Garage admin API (v2) call; its JSON answer on stdout.
#   garage_admin <method> <operation> [json body]
garage_admin() {
    local method=$1 op=$2 body=${3:-}
    local -a data=()
    [[ -n $body ]] && data=(-H 'Content-Type: application/json' --data "$body")
    curl -sS --fail-with-body --max-time 10 -K "$WORK/garage/admin.curlrc" \
        -X "$method" "${data[@]}" "$GARAGE_ADMIN/v2/$op"
}

# garage_admin, retried for at most 30 s while Garage is starting.
garage_admin_retrying() {
    local i out
    for ((i = 0; i < 300; i++)); do
        kill -0 "${PID[garage]}" 2>/dev/null || {
            tail -n 30 "$WORK/logs/garage.log" >&2 || true
            die "garage exited"
        }
        if out=$(garage_admin "$@" 2>"$WORK/logs/garage-admin.err"); then
            printf '%s\n' "$out"
            return 0
        fi
        sleep 0.1
    done
    cat "$WORK/logs/garage-admin.err" >&2 || true
    tail -n 30 "$WORK/logs/garage.log" >&2 || true
    die "Garage admin API: $2 did not succeed within 30 s"
}

# An S3 request to Garage, SigV4-signed by curl (--aws-sigv4; the key is in a
# curl config file, not on the command line).  garage_s3 <path> [curl args...]
garage_s3() {
    local path=$1
    shift
    curl -sS --max-time 10 -K "$WORK/garage/s3.curlrc" "$@" "$GARAGE_S3$path"
}

# A single-node Garage on loopback, set up like tests/support/garage.rs: the
# layout applied, one key, one bucket that key may read, write and own.
#   start_garage <s3 port> <admin port> <rpc port>
start_garage() {
    local s3_port=$1 admin_port=$2 rpc_port=$3 dir=$WORK/garage i
    local token status node key key_id secret bucket_id
    mkdir -p "$dir"
    chmod 700 "$dir"
    GARAGE_S3=http://127.0.0.1:$s3_port
    GARAGE_ADMIN=http://127.0.0.1:$admin_port
    token=$(random_hex 16)
    # Garage 2.x configuration; no compression and no scrub: plain, quiet
    # storage.
    cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
compression_level = "none"
disable_scrub = true
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(random_hex 32)"

[s3_api]
api_bind_addr = "127.0.0.1:$s3_port"
s3_region = "$GARAGE_REGION"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
admin_token = "$token"
EOF
    printf 'header = "Authorization: Bearer %s"\n' "$token" >"$dir/admin.curlrc"
    # At INFO Garage logs one line per S3 request as it arrives; the count of
    # the blob's GETs shows that lank8s-s3 serves it from the bucket.
    start_bg garage "$WORK/logs/garage.log" env -u GARAGE_LOG_FORMAT \
        RUST_LOG=netapp=info,garage=info NO_COLOR=1 "$GARAGE_BIN" -c "$dir/garage.toml" server

    status=$(garage_admin_retrying GET GetClusterStatus)
    node=$(json_get nodes.0.id <<<"$status")
    garage_admin POST UpdateClusterLayout \
        "{\"roles\":[{\"id\":\"$node\",\"zone\":\"dc1\",\"capacity\":1000000000,\"tags\":[]}]}" >/dev/null
    garage_admin POST ApplyClusterLayout '{"version":1}' >/dev/null
    key=$(garage_admin_retrying POST CreateKey '{"name":"lank8s-bench"}')
    key_id=$(json_get accessKeyId <<<"$key")
    secret=$(json_get secretAccessKey <<<"$key")
    bucket_id=$(garage_admin_retrying POST CreateBucket "{\"globalAlias\":\"$GARAGE_BUCKET\"}" |
        json_get id)
    garage_admin POST AllowBucketKey \
        "{\"bucketId\":\"$bucket_id\",\"accessKeyId\":\"$key_id\",\"permissions\":{\"read\":true,\"write\":true,\"owner\":true}}" >/dev/null
    printf '%s\n' "user = \"$key_id:$secret\"" "aws-sigv4 = \"aws:amz:$GARAGE_REGION:s3\"" \
        "header = \"x-amz-content-sha256: $EMPTY_SHA256\"" >"$dir/s3.curlrc"
    printf '%s\n' "access_key_id = \"$key_id\"" "secret_access_key = \"$secret\"" \
        >"$dir/lank8s-keys.toml"

    # The S3 API itself, through the key: layout, bucket and grant in place.
    for ((i = 0; i < 300; i++)); do
        kill -0 "${PID[garage]}" 2>/dev/null || die "garage exited"
        if garage_s3 "/$GARAGE_BUCKET?list-type=2&max-keys=1" -f -o /dev/null 2>/dev/null; then
            log "garage ready at $GARAGE_S3 (bucket $GARAGE_BUCKET)"
            return 0
        fi
        sleep 0.1
    done
    tail -n 30 "$WORK/logs/garage.log" >&2 || true
    die "Garage's S3 API did not answer ListObjectsV2 within 30 s"
}

# The second lank8s: the same upstream, its cache in Garage's bucket, blobs
# sent by lank8s itself ([dispatch] mode = "stream").
start_lank8s_s3() {
    local port=$1 conf=$WORK/garage/lank8s-s3.toml
    cat >"$conf" <<EOF
listen = "127.0.0.1:$port"
data_dir = "$WORK/lank8s-s3-data"

[log]
format = "json"
level = "warn"

[storage]
backend = "s3"
bucket = "$GARAGE_BUCKET"
endpoint = "$GARAGE_S3"
region = "$GARAGE_REGION"
$(cat "$WORK/garage/lank8s-keys.toml")

[dispatch]
mode = "stream"

[upstreams."registry.k8s.io"]
url = "${BASE[upstream]}"
EOF
    start_bg lank8s-s3 "$WORK/logs/lank8s-s3.log" "$LANK8S_BIN" serve --config "$conf"
    BASE[lank8s-s3]=http://127.0.0.1:$port
    wait_ready lank8s-s3 "${BASE[lank8s-s3]}/healthz" "$WORK/logs/lank8s-s3.log"
}

# A blob's key in the bucket (the cache layout): blobs/sha256/<hex[..2]>/<hex>
blob_key() { echo "blobs/sha256/${1:0:2}/$1"; }

# Wait (at most 120 s) until Garage holds all of blob <hex> under its key (a
# fill completes its multipart upload once the digest has been checked).
wait_s3_stored() {
    local hex=$1 want=$((BENCH_BLOB_MIB * 1024 * 1024)) i size
    for ((i = 0; i < 1200; i++)); do
        size=$(garage_s3 "/$GARAGE_BUCKET/$(blob_key "$hex")" -I 2>/dev/null | tr -d '\r' |
            awk 'NR == 1 {ok = ($2 == 200)} ok && tolower($1) == "content-length:" {print $2}')
        [[ $size == "$want" ]] && return 0
        sleep 0.1
    done
    die "lank8s-s3 did not store blob sha256:$hex in Garage within 120 s"
}

# How many GETs of blob <hex> Garage has logged (each is lank8s-s3 reading it).
garage_gets() {
    grep -c -F "GET /$GARAGE_BUCKET/$(blob_key "$1")" "$WORK/logs/garage.log" || true
}

# A fresh random blob of BENCH_BLOB_MIB MiB, pushed to $COLD_REPO upstream;
# sets COLD_HEX.  The source file goes again: only the upstream's copy is used.
push_cold_blob() {
    local f=$WORK/files/cold.layer
    head -c "$((BENCH_BLOB_MIB * 1024 * 1024))" /dev/urandom >"$f"
    COLD_HEX=$(sha256_hex "$f")
    push_blob "$COLD_REPO" "$f"
    rm -f -- "$f"
}

# One full GET of blob <hex> through <target> must hash to its digest.
verify_blob() {
    local name=$1 hex=$2 got
    got=$(curl -fsS --max-time 1800 "${BASE[$name]}/v2/$COLD_REPO/blobs/sha256:$hex" |
        sha256sum | cut -d' ' -f1)
    [[ $got == "$hex" ]] || die "$name: GET of blob sha256:$hex hashes to $got"
}

# Push a fresh blob and GET it once, uncached, through <target>: records the
# time to first byte, the total time and the size, then checks the bytes.
#   cold_get <target> <round>
cold_get() {
    local name=$1 round=$2 out hex start="" total="" size=""
    local want=$((BENCH_BLOB_MIB * 1024 * 1024))
    push_cold_blob
    hex=$COLD_HEX
    out=$WORK/logs/cold.$name.$round.txt
    log "cold fill: $name, round $round/$BENCH_ROUNDS (one GET of fresh blob sha256:${hex:0:12}...)"
    run_job "$out" curl -fsS --max-time 1800 -o /dev/null \
        -w '%{time_starttransfer} %{time_total} %{size_download}\n' \
        "${BASE[$name]}/v2/$COLD_REPO/blobs/sha256:$hex" ||
        { cat "$out" >&2; die "cold GET failed against $name"; }
    read -r start total size <"$out" || true
    [[ $size == "$want" && $start =~ ^[0-9]+\.[0-9]+$ && $total =~ ^[0-9]+\.[0-9]+$ ]] ||
        { cat "$out" >&2; die "$name: cold GET gave '$size' bytes, want $want"; }
    printf 'cold\t%s\t{"starttransfer_s":%s,"total_s":%s,"bytes":%s}\n' \
        "$name" "$start" "$total" "$size" >>"$RESULTS"
    if [[ $name == lank8s-s3 ]]; then
        wait_s3_stored "$hex"
    fi
    verify_blob "$name" "$hex"
    if [[ $name != upstream ]]; then
        WARM_PATH[$name]=/v2/$COLD_REPO/blobs/sha256:$hex
    fi
}

# The storage rows: cold fill and first byte (upstream direct, lank8s-fs and
# lank8s-s3, each GET on its own fresh blob), then warm serve of the blob
# each lank8s filled last.
measure_storage() {
    local round name metric threads conns s3_hex="" s3_gets_before=0
    local -a lank8s_targets=()
    [[ -n ${BASE[lank8s]:-} ]] && lank8s_targets+=(lank8s)
    [[ -n ${BASE[lank8s-s3]:-} ]] && lank8s_targets+=(lank8s-s3)
    for ((round = 1; round <= BENCH_ROUNDS; round++)); do
        for name in upstream "${lank8s_targets[@]}"; do
            cold_get "$name" "$round"
            sleep 1
        done
    done
    if [[ -n ${WARM_PATH[lank8s-s3]:-} ]]; then
        s3_hex=${WARM_PATH[lank8s-s3]##*:}
        s3_gets_before=$(garage_gets "$s3_hex")
    fi
    for metric in warm_1c warm_16c; do
        threads=1 conns=1
        [[ $metric == warm_16c ]] && threads=2 conns=16
        for ((round = 1; round <= BENCH_ROUNDS; round++)); do
            for name in "${lank8s_targets[@]}"; do
                run_wrk "$metric" "$name" "$round" "$threads" "$conns" \
                    "${WARM_PATH[$name]}" --timeout 120s
                sleep 1
            done
        done
    done
    if [[ -n $s3_hex ]]; then
        S3_WARM_GETS=$(($(garage_gets "$s3_hex") - s3_gets_before))
        log "lank8s-s3 sent Garage $S3_WARM_GETS GETs of the blob during its warm runs"
    fi
}

# -------------------------------------------------------------- measuring

RESULTS=""   # TSV consumed by bench/report.py

# One wrk run; appends "<metric> <target> <BENCH_RESULT json>" to $RESULTS.
#   run_wrk <metric> <target> <round> <threads> <conns> <path> [wrk args...]
run_wrk() {
    local metric=$1 name=$2 round=$3 threads=$4 conns=$5 path=$6 out line
    shift 6
    out=$WORK/wrk/$metric.$name.$round.txt
    log "$metric: $name, round $round/$BENCH_ROUNDS (wrk -t$threads -c$conns -d${BENCH_SECONDS}s)"
    run_job "$out" timeout --kill-after=5 "$((BENCH_SECONDS + 120))" \
        wrk -t"$threads" -c"$conns" -d"${BENCH_SECONDS}s" -s "$HELPERS/summary.lua" \
        "$@" "${BASE[$name]}$path" ||
        { cat "$out" >&2; die "wrk failed against $name"; }
    line=$(sed -n 's/^BENCH_RESULT //p' "$out")
    [[ -n $line ]] || { cat "$out" >&2; die "no result from wrk against $name"; }
    printf '%s\t%s\t%s\n' "$metric" "$name" "$line" >>"$RESULTS"
}

# Run the same wrk command against every target, BENCH_ROUNDS times, the
# targets taking turns within each round.
#   measure <metric> <threads> <conns> <path> [wrk args...]
measure() {
    local metric=$1 round name
    shift
    for ((round = 1; round <= BENCH_ROUNDS; round++)); do
        for name in lank8s distribution nginx; do
            [[ -n ${BASE[$name]:-} ]] || continue
            run_wrk "$metric" "$name" "$round" "$@"
            sleep 1
        done
    done
}

# PIDs whose VmHWM make up a target's footprint (nginx: master + workers).
footprint_pids() {
    local name=$1
    echo "${PID[$name]}"
    if [[ $name == nginx ]]; then
        pgrep -P "${PID[nginx]}" || true
    fi
}

# Sum of one /proc/<pid>/status field (kB) over a target's processes.
status_kib() {
    local name=$1 field=$2 pid kib total=0
    for pid in $(footprint_pids "$name"); do
        kib=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status")
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

RSS_RESET_OK=1
declare -A RSS_BEFORE=()
reset_peak_rss() {
    local name pid
    for name in lank8s distribution nginx; do
        [[ -n ${PID[$name]:-} ]] || continue
        for pid in $(footprint_pids "$name"); do
            # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0).
            echo 5 2>/dev/null >"/proc/$pid/clear_refs" || RSS_RESET_OK=0
        done
        RSS_BEFORE[$name]=$(status_kib "$name" VmRSS)
    done
}

record_peak_rss() {
    local name
    for name in lank8s distribution nginx; do
        [[ -n ${PID[$name]:-} ]] || continue
        printf 'rss_16c\t%s\t{"hwm_kib":%d,"rss_before_kib":%d}\n' "$name" \
            "$(status_kib "$name" VmHWM)" "${RSS_BEFORE[$name]}" >>"$RESULTS"
    done
}

machine_info() {
    local lank8s_ver="n/a" rev garage_ver=""
    if ((S3_RUN)); then
        garage_ver="; garage $("$GARAGE_BIN" --version 2>/dev/null | awk 'NR==1 {print $2}')"
    fi
    if [[ $LANK8S_BIN != skip ]]; then
        rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "uncommitted")
        git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || rev+="+dirty"
        lank8s_ver="$("$LANK8S_BIN" --version 2>/dev/null | head -n1 || true) (git $rev)"
    fi
    printf '%s' "Machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), " \
        "$(awk '/^MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), " \
        "Linux $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC'). " \
        "Versions: lank8s ${lank8s_ver}; $(docker-registry --version 2>&1 | awk '{print "distribution", $3}'); " \
        "$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //'); $(wrk --version 2>&1 | awk 'NR==1 {print "wrk", $2}')" \
        "$(curl --version 2>/dev/null | awk 'NR==1 {print "; curl", $2}')$garage_ver. " \
        "Settings: BENCH_SECONDS=$BENCH_SECONDS, BENCH_BLOB_MIB=$BENCH_BLOB_MIB, BENCH_ROUNDS=$BENCH_ROUNDS, BENCH_STORAGE=$BENCH_STORAGE."
}

# ------------------------------------------------------------------- main

main() {
    check_settings
    ensure_tools
    build_lank8s
    plan_storage
    make_workdir
    RESULTS=$WORK/results.tsv
    : >"$RESULTS"

    local p_up p_lank8s p_dist p_nginx
    read -r p_up p_lank8s p_dist p_nginx < <(free_ports 4)

    start_upstream "$p_up"
    make_and_push_images
    start_lank8s "$p_lank8s"
    start_distribution_proxy "$p_dist"
    start_nginx "$p_nginx"
    if ((S3_RUN)); then
        # Started with the others, so that a Garage that does not come up ends
        # the run at once; both stay idle until the storage rows.
        local p_s3 p_admin p_rpc p_lank8s_s3
        read -r p_s3 p_admin p_rpc p_lank8s_s3 < <(free_ports 4)
        start_garage "$p_s3" "$p_admin" "$p_rpc"
        start_lank8s_s3 "$p_lank8s_s3"
    fi

    local name
    for name in lank8s distribution nginx; do
        [[ -n ${BASE[$name]:-} ]] || continue
        warm_target "$name"
        [[ $name == distribution ]] && wait_distribution_cached
        check_target "$name" "${BASE[$name]}"
    done

    local accept="Accept: $OCI_MANIFEST"
    # A large blob over one connection can take long; do not let wrk's
    # default 2 s timeout count slow-but-correct responses as errors.
    measure blob_1c 1 1 "$BLOB_PATH" --timeout 120s
    reset_peak_rss
    measure blob_16c 2 16 "$BLOB_PATH" --timeout 120s
    record_peak_rss
    measure manifest_tag 2 64 "$TAG_PATH" -H "$accept"
    measure manifest_digest 2 64 "$DIGEST_PATH" -H "$accept"
    if ((STORAGE_RUN)); then
        measure_storage
    fi

    local rss_note
    if ((RSS_RESET_OK)); then
        rss_note="Peak RSS = VmHWM read from /proc/<pid>/status right after the 16-connection blob run; it was reset (clear_refs) right before that run, so it is the peak during the run. nginx: master + workers summed."
    else
        rss_note="Peak RSS = VmHWM read right after the 16-connection blob run; the reset via clear_refs was refused, so it is the lifetime peak of the process. nginx: master + workers summed."
    fi
    local -a notes=(
        "$rss_note"
        "Throughput counts every byte wrk read (headers included, partial responses at the end of a run included), divided by the run time. Large blob = ${BENCH_BLOB_MIB} MiB, manifest = $(stat -c %s "$WORK/files/small.manifest") bytes."
        "Servers and wrk (8 KiB reads) share the same $(nproc) CPUs over loopback: the client takes CPU from the server under test, so compare ratios rather than absolute figures."
    )
    if ((STORAGE_RUN)); then
        notes+=("Storage rows: lank8s-fs is the lank8s above (cache in data_dir); lank8s-s3 is a second lank8s on the same upstream with [storage] backend = \"s3\" on a single-node Garage on loopback and [dispatch] mode = \"stream\". Cold fill: one curl GET (body discarded) of a fresh random ${BENCH_BLOB_MIB} MiB blob nobody had asked for, a blob of its own for every cold measurement; MiB/s = size / time_total, first byte = time_starttransfer (connect included). In these rows the distribution column is the same GET sent to the upstream registry directly (a client without lank8s), so lank8s/distribution is lank8s over upstream direct (for first byte, above 1 means later). Warm serve: the wrk runs above, on the blob each lank8s had just filled, after lank8s-s3's upload to Garage had completed.")
    fi
    [[ -z $STORAGE_WHY ]] || notes+=("$STORAGE_WHY")
    [[ -z $S3_WARM_GETS ]] ||
        notes+=("Garage logged $S3_WARM_GETS GETs of that blob from lank8s-s3 during its warm runs: it streams the blob from the bucket.")
    local -a note_args=()
    local n
    for n in "${notes[@]}"; do note_args+=(--note "$n"); done
    log "report:"
    python3 "$HELPERS/report.py" --results "$RESULTS" --out "$BENCH_OUT" \
        --info "$(machine_info)" "${note_args[@]}"
    log "report written to $BENCH_OUT"
}

# On one line, so bash has read it whole before running it: editing this file
# during a run cannot make the running shell read on into changed text.
main "$@"; exit "$?"
