#!/usr/bin/env bash
# Churn soak: pods run through their whole life (RunPodSandbox, a container, ExecSync, its
# log, a port-forward round trip, StopPodSandbox, RemovePodSandbox) on one release moatd with
# a CNI bridge network, P at a time, for M minutes; then a leak report (processes, moatd's
# fds, mounts, netns, links, iptables, IPAM, run dir, store) and moatd's RSS and fds over
# the run. Exits non-zero on a leak, an error, or moatd RSS growth over 10%. Root.
# Usage: scripts/soak.sh [--minutes M] [--parallel P]   (defaults: 5 minutes, 2 at once)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cargo
[ "$(id -u)" -eq 0 ] || die "the soak needs root (CNI networks, netns, iptables)"
apt_install "${BUILD_PACKAGES[@]}" "${RUN_PACKAGES[@]}" docker-registry busybox-static
cd "$MOAT_ROOT"
cargo build --release --locked -p moat-host --bin moatd -p moat-tests --bin soak
bash guest-image/build.sh
MOATD_BIN="$MOAT_ROOT/target/release/moatd" exec "$MOAT_ROOT/target/release/soak" "$@"
