# Shared helpers for Moat's scripts. Sourced, not run.
set -euo pipefail

MOAT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs the Debian packages named, running apt-get only when one is missing.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "need root to install: ${missing[*]} (run with sudo)"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Cargo comes from the machine's Rust toolchain (rustup); Debian 12's own is too old.
require_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust 1.95 or newer (rustup) first"
}

# Packages needed to build moatd.
BUILD_PACKAGES=(protobuf-compiler gcc pkg-config)
# Packages needed to run pod VMs and their networks (CNI plugins; portmap and the bridge's
# ipMasq program iptables; the tests and benchmarks use ip and nsenter).
RUN_PACKAGES=(qemu-system-x86 containernetworking-plugins iptables iproute2 util-linux)
# Packages the tests and benchmarks start for real.
TEST_PACKAGES=(docker-registry busybox-static apache2-utils containerd "${RUN_PACKAGES[@]}")
