#!/usr/bin/env bash
# Benchmark: pull and unpack a ~200 MiB, 5-layer image from a local registry, moatd against
# containerd (`ctr image pull --plain-http`) in the same run. Prints both times and the ratio.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cargo
apt_install "${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
cd "$MOAT_ROOT"
cargo build --release --locked -p moat-host --bin moatd -p moat-tests --bin bench-image-pull
MOATD_BIN="$MOAT_ROOT/target/release/moatd" exec "$MOAT_ROOT/target/release/bench-image-pull" "$@"
