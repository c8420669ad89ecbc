#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and runs every test: formatting, clippy, unit tests and
# the integration tests in tests/ (which start docker-registry and moatd for real).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cargo
apt_install "${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
[ "$(id -u)" -eq 0 ] || die "the tests need root (layer unpacking keeps owners and creates whiteout devices)"
cd "$MOAT_ROOT"
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
log "building binaries"
cargo build --locked --workspace --bins
log "guest image"
bash guest-image/build.sh
log "cargo test"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
set +e
cargo test --locked --workspace -- --test-threads="${MOAT_TEST_THREADS:-4}" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e
# The sandbox e2e tests again with pods on the built-in VMM, where it can boot Linux.
if [ -c /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
  log "minimal kernel for the built-in VMM"
  bash guest-image/build-kernel.sh
  log "cargo test: the sandbox e2e tests on the built-in VMM"
  set +e
  MOAT_E2E_BACKEND=builtin cargo test --locked -p moat-tests --test pod_sandbox \
    --test containers --test streaming --test networking \
    -- --test-threads="${MOAT_TEST_THREADS:-4}" 2>&1 | tee -a "$out"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  set -e
else
  log "SKIPPED the sandbox e2e tests on the built-in VMM: it needs hardware KVM (/dev/kvm and a CPU with VT-x/AMD-V); this host has $( [ -c /dev/kvm ] && echo "/dev/kvm without vmx/svm in /proc/cpuinfo (software-only KVM)" || echo "no /dev/kvm")"
fi
# One closing line over every test binary (cargo prints one "test result" per binary).
passed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$out" | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$out" | awk '{s+=$1} END {print s+0}')
ignored=$(grep -oE '[0-9]+ ignored;' "$out" | awk '{s+=$1} END {print s+0}')
echo "moat: $passed passed, $failed failed, $ignored skipped"
exit "$rc"
