#!/usr/bin/env bash
# Benchmark: Moat's own VMM (`moatd vmm`) against QEMU in the same run, on one tiny guest
# both boot (the smoke payload: an ELF with a 64-bit entry and a PVH entry): time from
# process start to the guest's first serial byte and the VMM's RSS, for the built-in VMM,
# QEMU with KVM and QEMU with TCG, against the floor of spawning /bin/true. Where the CPU
# has VT-x/AMD-V, also start to agent ready with the real guest for both (that part uses
# guest-image/out; build-kernel.sh's minimal kernel when present).
# Prints the figures and the ratios. Usage: scripts/bench-vmm.sh [--runs N]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cargo
apt_install "${BUILD_PACKAGES[@]}" "${RUN_PACKAGES[@]}" binutils
cd "$MOAT_ROOT"
# Two builds, so moatd is built as shipped: the benchmark enables moat-vmm's test-utils
# feature, which one shared build would turn on in moatd too.
cargo build --release --locked -p moat-host --bin moatd
cargo build --release --locked -p moat-tests --bin bench-vmm
if grep -qwE 'vmx|svm' /proc/cpuinfo; then
  bash guest-image/build.sh
fi
MOATD_BIN="$MOAT_ROOT/target/release/moatd" exec "$MOAT_ROOT/target/release/bench-vmm" "$@"
