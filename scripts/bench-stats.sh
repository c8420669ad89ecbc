#!/usr/bin/env bash
# Benchmark: ListPodSandboxStats, ListPodSandboxMetrics and a /metrics scrape with 10 pods,
# against ListPodSandbox in the same run. Prints the medians and the ratios.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cargo
apt_install "${BUILD_PACKAGES[@]}" "${RUN_PACKAGES[@]}"
cd "$MOAT_ROOT"
cargo build --release --locked -p moat-host --bin moatd -p moat-tests --bin bench-stats
bash guest-image/build.sh
MOATD_BIN="$MOAT_ROOT/target/release/moatd" exec "$MOAT_ROOT/target/release/bench-stats" "$@"
