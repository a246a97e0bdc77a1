#!/usr/bin/env bash
# The test command: installs what the tests need (Debian packages for the
# real upstream registry and clients), then runs the unit and integration
# tests. Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

# Real parts the integration tests start: CNCF distribution as the upstream
# registry, skopeo and containerd as clients, openssl for the token issuer and
# for cosign-style signatures, redis-server for the shared state of replicas.
packages=(docker-registry skopeo containerd openssl curl redis-server)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# Garage, the S3-compatible object store the object-storage tests run as a
# separate process; built once into a cache (slow the first time). A binary
# named by LANK8S_GARAGE is used as it is.
if [ -z "${LANK8S_GARAGE:-}" ]; then
    scripts/garage.sh install
    LANK8S_GARAGE="$(scripts/garage.sh path)"
fi
export LANK8S_GARAGE

# A target directory outside the checkout lets fresh clones reuse builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lank8s-target}"
cargo test --locked "$@"
