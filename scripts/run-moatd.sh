#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and runs moatd in the foreground.
# Usage: sudo scripts/run-moatd.sh [moatd flags...]   (default config: /etc/moat/config.toml)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cargo
apt_install "${BUILD_PACKAGES[@]}" "${RUN_PACKAGES[@]}"
cd "$MOAT_ROOT"
log "building moatd (release)"
cargo build --release --locked -p moat-host --bin moatd
log "guest image"
bash guest-image/build.sh
if grep -qwE 'vmx|svm' /proc/cpuinfo; then
  # Hardware virtualization: the `auto` handlers take the built-in VMM, which boots the
  # minimal kernel (about 12 minutes the first time, then cached by content hash).
  log "minimal kernel for the built-in VMM"
  bash guest-image/build-kernel.sh
fi
exec "$MOAT_ROOT/target/release/moatd" --guest-dir "$MOAT_ROOT/guest-image/out" "$@"
