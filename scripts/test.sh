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
# --show-output: a test that cannot run here says so in a line starting with SKIPPED (its
# output is shown only with this flag); the closing line counts those lines.
cargo test --locked --workspace -- --test-threads="${MOAT_TEST_THREADS:-4}" --show-output 2>&1 | tee "$out"
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
    -- --test-threads="${MOAT_TEST_THREADS:-4}" --show-output 2>&1 | tee -a "$out"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  set -e
  not_run=0
else
  # Those four files' tests, run once more on the built-in VMM where it can boot Linux.
  not_run=$(cargo test --locked -q -p moat-tests --test pod_sandbox --test containers \
    --test streaming --test networking -- --list 2>/dev/null | grep -c ': test$' || true)
  log "SKIPPED the sandbox e2e tests on the built-in VMM ($not_run tests): it needs hardware KVM (/dev/kvm and a CPU with VT-x/AMD-V); this host has $( [ -c /dev/kvm ] && echo "/dev/kvm without vmx/svm in /proc/cpuinfo (software-only KVM)" || echo "no /dev/kvm")"
fi
# The Debian package: build it, install it, run moatd as its unit would and a pod through
# /run/moat/moat.sock (target/debug/cri-smoke), purge it. It packages the debug moatd the
# tests above ran, so CI compiles nothing more (scripts/build-deb.sh alone builds the
# release one). It counts as one test in the closing line; exit 77: this host cannot take
# it (moat's paths in use), and it prints a SKIPPED line.
log "the Debian package (scripts/test-deb.sh)"
set +e
bash scripts/test-deb.sh --moatd "$MOAT_ROOT/target/debug/moatd" 2>&1 | tee -a "$out"
deb_rc=${PIPESTATUS[0]}
set -e
case "$deb_rc" in
  0 | 77) echo "test result: ok. 1 passed; 0 failed; 0 ignored; (deb package)" >> "$out" ;;
  *) echo "test result: FAILED. 0 passed; 1 failed; 0 ignored; (deb package)" >> "$out"; rc=1 ;;
esac
# Fuzzing: every cargo-fuzz target in fuzz/ for MOAT_FUZZ_SECONDS (20) each, after the
# inputs that once crashed it (fuzz/regressions/); a crash, hang or OOM fails the run and
# names the saved input (fuzz/artifacts/<target>/). cargo-fuzz needs a nightly toolchain.
log "fuzzing (scripts/fuzz.sh)"
if rustup run nightly rustc --version >/dev/null 2>&1; then
  set +e
  bash scripts/fuzz.sh "${MOAT_FUZZ_SECONDS:-20}" 2>&1 | tee -a "$out"
  fuzz_rc=${PIPESTATUS[0]}
  set -e
  if [ "$fuzz_rc" -eq 0 ]; then
    echo "test result: ok. 1 passed; 0 failed; 0 ignored; (fuzzing)" >> "$out"
  else
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored; (fuzzing)" >> "$out"; rc=1
  fi
else
  echo "SKIPPED fuzzing: no nightly Rust toolchain here (rustup toolchain install nightly), which cargo-fuzz needs" | tee -a "$out"
  echo "test result: ok. 1 passed; 0 failed; 0 ignored; (fuzzing)" >> "$out"
fi
# One closing line over every test binary (cargo prints one "test result" per binary).
# A test that returns early because this host lacks what it needs (root, hardware KVM,
# a package) passes for cargo but prints one line starting with SKIPPED: it counts as
# skipped, not passed ("(in part)": it ran, with one check left out). Ignored tests and the
# built-in VMM rerun that could not run here count as skipped too.
passed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$out" | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$out" | awk '{s+=$1} END {print s+0}')
ignored=$(grep -oE '[0-9]+ ignored;' "$out" | awk '{s+=$1} END {print s+0}')
early=$(grep -E '^SKIPPED' "$out" | grep -vc '(in part)' || true)
echo "moat: $((passed - early)) passed, $failed failed, $((ignored + early + not_run)) skipped ($early returned early on this host, $ignored ignored, $not_run not run on the built-in VMM)"
exit "$rc"
