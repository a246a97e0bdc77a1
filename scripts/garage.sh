#!/usr/bin/env bash
# Garage (https://garagehq.deuxfleurs.fr, AGPL-3.0), the S3-compatible object
# store the object-storage tests run against. It is only ever run as a separate
# process by the tests (tests/support/garage.rs); lank8s does not link it.
#
#   scripts/garage.sh install   build and install it once into the tools cache
#                               (~15-20 minutes the first time; a no-op after)
#   scripts/garage.sh path      print where the binary is (or will be)
#
# Environment:
#   LANK8S_TOOLS     the tools cache (default /var/cache/lank8s-tools); the
#                    binary is $LANK8S_TOOLS/bin/garage
#   GARAGE_VERSION   the crates.io version to build (default 2.5.0, the one the
#                    test harness's configuration format was written for)
set -euo pipefail

tools="${LANK8S_TOOLS:-/var/cache/lank8s-tools}"
version="${GARAGE_VERSION:-2.5.0}"
binary="$tools/bin/garage"

usage() {
    echo "usage: $0 install|path" >&2
    exit 2
}

install_garage() {
    if [ -x "$binary" ]; then
        return 0
    fi
    if ! mkdir -p "$tools" 2>/dev/null || [ ! -w "$tools" ]; then
        # Like the apt step of scripts/test.sh: use sudo only when needed.
        [ "$(id -u)" -eq 0 ] || sudo install -d -o "$(id -u)" -g "$(id -g)" "$tools"
    fi
    # One build at a time, however many test runs start together.
    exec 9>"$tools/.garage-install.lock"
    if ! flock -n 9; then
        echo "garage: another install is running; waiting for it" >&2
        flock 9
    fi
    if [ -x "$binary" ]; then
        return 0
    fi
    command -v cargo >/dev/null || {
        echo "garage: cargo is needed to build Garage" >&2
        exit 1
    }
    # Its own target directory, so that it neither clobbers nor waits on lank8s builds.
    local target="/var/tmp/lank8s-garage-target"
    echo "garage: building Garage $version into $tools (takes ~15-20 minutes the first time, longer on a small machine)" >&2
    CARGO_TARGET_DIR="$target" cargo install --locked --version "$version" garage --root "$tools"
    "$binary" --version >&2
    rm -rf "$target"
}

[ $# -eq 1 ] || usage
case "$1" in
    install) install_garage ;;
    path) echo "$binary" ;;
    *) usage ;;
esac
