#!/usr/bin/env bash
# Benchmark: TCP throughput and round trips host to pod and pod to pod, against plain network
# namespaces on the same bridge in the same run (root). Prints figures and ratios.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cargo
apt_install "${BUILD_PACKAGES[@]}" "${RUN_PACKAGES[@]}" busybox-static
cd "$MOAT_ROOT"
cargo build --release --locked -p moat-host --bin moatd -p moat-tests --bin bench-network
bash guest-image/build.sh
MOATD_BIN="$MOAT_ROOT/target/release/moatd" exec "$MOAT_ROOT/target/release/bench-network" "$@"
