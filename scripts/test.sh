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
# One closing line over every test binary (cargo prints one "test result" per binary).
passed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$out" | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$out" | awk '{s+=$1} END {print s+0}')
ignored=$(grep -oE '[0-9]+ ignored;' "$out" | awk '{s+=$1} END {print s+0}')
echo "moat: $passed passed, $failed failed, $ignored skipped"
exit "$rc"
