#!/usr/bin/env bash
# Benchmark: Exec and PortForward latency and throughput into a pod VM, with the raw vsock
# and agent gRPC round trips measured in the same run as the floor. Prints figures and ratios.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cargo
apt_install "${BUILD_PACKAGES[@]}" "${RUN_PACKAGES[@]}"
cd "$MOAT_ROOT"
cargo build --release --locked -p moat-host --bin moatd -p moat-tests --bin bench-streaming
bash guest-image/build.sh
MOATD_BIN="$MOAT_ROOT/target/release/moatd" exec "$MOAT_ROOT/target/release/bench-streaming" "$@"
