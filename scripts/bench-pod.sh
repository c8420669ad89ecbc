#!/usr/bin/env bash
# Benchmark: RunPodSandbox latency against a bare QEMU boot of the same guest in the same
# run, host memory per idle pod, and the agent's RSS. Prints the figures and the ratio.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cargo
apt_install "${BUILD_PACKAGES[@]}" "${RUN_PACKAGES[@]}"
cd "$MOAT_ROOT"
cargo build --release --locked -p moat-host --bin moatd -p moat-tests --bin bench-pod
bash guest-image/build.sh
MOATD_BIN="$MOAT_ROOT/target/release/moatd" exec "$MOAT_ROOT/target/release/bench-pod" "$@"
