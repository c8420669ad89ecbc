#!/usr/bin/env bash
# Builds Moat's minimal guest kernel for the built-in VMM from Debian's linux-source-6.12:
# `make tinyconfig`, then the fragment guest-image/kernel/moat.config on top. Everything is
# built in (no modules). Writes into the guest image directory (the one build.sh uses):
#   vmlinux-moat        the kernel as an uncompressed ELF, stripped (PVH entry note kept)
#   bzImage-moat        the same kernel as a bzImage (LZ4), for QEMU and other loaders
#   config-moat         its full .config
#   vmlinux-moat.hash   the cache key of the build those files came from (written last)
#
# Optional: guest-image/build.sh does not need it (its image boots Debian's cloud kernel).
#
# Cache key: sha256 over the linux-source-6.12 package version, the fragment and this
# script. When <guest dir>/vmlinux-moat.hash holds it, nothing is done; else a build kept in
# the machine-wide cache under that key is copied; else the kernel is built. The source
# tree stays unpacked between builds (one per package version), so a changed fragment
# rebuilds only what it touches.
#
# Environment:
#   MOAT_GUEST_OUT      guest image dir (default: guest-image/out, as for build.sh)
#   MOAT_CACHE          machine-wide cache root (default: /var/cache/moat); the source tree
#                       is unpacked in $MOAT_CACHE/kernel-build, finished kernels are kept
#                       in $MOAT_CACHE/kernel/<key>
#   MOAT_KERNEL_FORCE=1 rebuild even when the key matches
#   MOAT_KERNEL_JOBS    make -j (default: nproc)
#   MOAT_KERNEL_NICE    niceness of the compiler (default: 19, so it yields to other work)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../scripts/lib.sh
source "$HERE/../scripts/lib.sh" # MOAT_ROOT, log, die, apt_install

OUT="${MOAT_GUEST_OUT:-$HERE/out}"
CACHE_ROOT="${MOAT_CACHE:-/var/cache/moat}"
BUILD_ROOT="$CACHE_ROOT/kernel-build"
KERNEL_CACHE="$CACHE_ROOT/kernel"
FRAGMENT="$HERE/kernel/moat.config"
SRC_PKG=linux-source-6.12
SRC_TARBALL="/usr/src/$SRC_PKG.tar.xz"
JOBS="${MOAT_KERNEL_JOBS:-$(nproc)}"
NICE="${MOAT_KERNEL_NICE:-19}"
# What building a tinyconfig-based x86_64 kernel needs: the compiler and make, bc
# (timeconst), bison and flex (Kconfig), libelf (objtool, for the ORC unwinder), lz4 (the
# bzImage payload), xz (the source tarball).
TOOLS=("$SRC_PKG" make gcc libc6-dev binutils bc bison flex libelf-dev lz4 xz-utils)
FILES=(vmlinux-moat bzImage-moat config-moat)

[ -f "$FRAGMENT" ] || die "no $FRAGMENT"
t0=$SECONDS

sizes() {
  local f
  for f in vmlinux-moat bzImage-moat; do
    [ -f "$OUT/$f" ] && printf '  %-14s %8s  (%s bytes)\n' "$f" "$(du -h --apparent-size "$OUT/$f" | cut -f1)" "$(stat -c %s "$OUT/$f")"
  done
  return 0
}

# --- the cache key ---------------------------------------------------------------------
# The installed source package's version, else the one apt would install.
src_version="$(dpkg-query -W -f='${Status} ${Version}' "$SRC_PKG" 2>/dev/null | sed -n 's/^install ok installed //p')"
if [ -z "$src_version" ]; then
  src_version="$(apt-cache show --no-all-versions "$SRC_PKG" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)"
  if [ -z "$src_version" ]; then
    [ "$(id -u)" -eq 0 ] || die "apt knows no $SRC_PKG: run apt-get update"
    log "apt-get update (no $SRC_PKG in the package lists)"
    apt-get update -qq
    src_version="$(apt-cache show --no-all-versions "$SRC_PKG" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)"
  fi
  [ -n "$src_version" ] || die "apt knows no $SRC_PKG (Debian 12 has it in bookworm-security and bookworm-backports)"
fi
key="$(
  {
    printf '%s %s\n' "$SRC_PKG" "$src_version"
    sha256sum <"$FRAGMENT"
    sha256sum <"${BASH_SOURCE[0]}"
  } | sha256sum | cut -d' ' -f1
)"

up_to_date() {
  [ -z "${MOAT_KERNEL_FORCE:-}" ] && [ -f "$OUT/vmlinux-moat.hash" ] &&
    [ "$(cat "$OUT/vmlinux-moat.hash")" = "$key" ] &&
    [ -f "$OUT/vmlinux-moat" ] && [ -f "$OUT/bzImage-moat" ]
}
if up_to_date; then
  echo "minimal kernel up to date ($key)"
  sizes
  exit 0
fi

# Installs files from a directory into $OUT; the key file goes last, so a half-copied set
# never looks up to date.
install_from() {
  local dir="$1" f
  mkdir -p "$OUT"
  rm -f "$OUT/vmlinux-moat.hash"
  for f in "${FILES[@]}"; do
    cp "$dir/$f" "$OUT/$f.tmp"
    mv "$OUT/$f.tmp" "$OUT/$f"
  done
  printf '%s\n' "$key" >"$OUT/vmlinux-moat.hash.tmp"
  mv "$OUT/vmlinux-moat.hash.tmp" "$OUT/vmlinux-moat.hash"
}

if [ -z "${MOAT_KERNEL_FORCE:-}" ] && [ -f "$KERNEL_CACHE/$key/vmlinux-moat" ]; then
  install_from "$KERNEL_CACHE/$key"
  echo "minimal kernel taken from the cache $KERNEL_CACHE/$key"
  sizes
  exit 0
fi

# One build at a time per machine (the source tree is shared); whoever waited checks again.
mkdir -p "$BUILD_ROOT"
exec 9>"$BUILD_ROOT/.lock"
if ! flock -n 9; then
  log "another kernel build holds $BUILD_ROOT/.lock; waiting"
  flock 9
  if up_to_date; then
    echo "minimal kernel up to date ($key)"
    sizes
    exit 0
  fi
fi

apt_install "${TOOLS[@]}"
installed="$(dpkg-query -W -f='${Version}' "$SRC_PKG")"
[ "$installed" = "$src_version" ] ||
  die "$SRC_PKG $installed is installed, the key was computed for $src_version; run again"
[ -f "$SRC_TARBALL" ] || die "no $SRC_TARBALL (is $SRC_PKG installed?)"

# --- the source tree -------------------------------------------------------------------
tree_name="$SRC_PKG-${src_version//[^A-Za-z0-9.+-]/_}"
TREE="$BUILD_ROOT/$tree_name"
if [ ! -f "$TREE/.moat-unpacked" ]; then
  log "unpacking $SRC_TARBALL into $TREE"
  rm -rf "$TREE" "$TREE.tmp"
  mkdir -p "$TREE.tmp"
  tar -xJf "$SRC_TARBALL" -C "$TREE.tmp"
  [ -f "$TREE.tmp/$SRC_PKG/Makefile" ] || die "$SRC_TARBALL has no $SRC_PKG/Makefile"
  mv "$TREE.tmp/$SRC_PKG" "$TREE"
  rmdir "$TREE.tmp"
  touch "$TREE/.moat-unpacked"
fi
# Trees of other package versions are not needed any more.
for d in "$BUILD_ROOT/$SRC_PKG"-*; do
  [ -d "$d" ] && [ "$d" != "$TREE" ] && { log "removing the old tree $d"; rm -rf "$d"; }
done

# --- the configuration -----------------------------------------------------------------
MAKE=(nice -n "$NICE" make -C "$TREE" ARCH=x86_64 -j"$JOBS")
log "configuring: tinyconfig + ${FRAGMENT#"$MOAT_ROOT"/}"
"${MAKE[@]}" -s tinyconfig >/dev/null
(cd "$TREE" && scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" >/dev/null)
"${MAKE[@]}" -s olddefconfig >/dev/null

# Every option of the fragment must have ended up as written. Kconfig silently drops what
# an unmet dependency forbids; an option missing from .config counts as "not set".
verify_config() {
  local frag="$1" cfg="$2" line name want got bad=0
  local -A have=()
  while IFS= read -r line; do
    if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
      have["${BASH_REMATCH[1]}"]="${BASH_REMATCH[2]}"
    elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
      have["${BASH_REMATCH[1]}"]=n
    fi
  done <"$cfg"
  while IFS= read -r line; do
    if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
      name="${BASH_REMATCH[1]}" want="${BASH_REMATCH[2]}"
    elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
      name="${BASH_REMATCH[1]}" want=n
    else
      continue
    fi
    got="${have[$name]:-n}"
    if [ "$got" != "$want" ]; then
      printf '  %s: asked %s, got %s\n' "$name" "$want" "$got" >&2
      bad=1
    fi
  done <"$frag"
  return "$bad"
}
verify_config "$FRAGMENT" "$TREE/.config" ||
  die "the options above did not end up as ${FRAGMENT#"$MOAT_ROOT"/} asks (unmet dependencies? see 'make menuconfig' in $TREE)"
log "all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set$)' "$FRAGMENT") options of the fragment are set as asked"

# --- the build -------------------------------------------------------------------------
log "building vmlinux and bzImage (make -j$JOBS, nice $NICE) in $TREE"
tb=$SECONDS
if ! "${MAKE[@]}" bzImage >"$BUILD_ROOT/build.log" 2>&1; then
  tail -n 40 "$BUILD_ROOT/build.log" >&2
  die "kernel build failed; the whole log is $BUILD_ROOT/build.log"
fi
build_s=$((SECONDS - tb))
release="$(cat "$TREE/include/config/kernel.release")"

STAGE="$BUILD_ROOT/stage"
rm -rf "$STAGE"
mkdir -p "$STAGE"
strip --strip-all -o "$STAGE/vmlinux-moat" "$TREE/vmlinux"
cp "$TREE/arch/x86/boot/bzImage" "$STAGE/bzImage-moat"
cp "$TREE/.config" "$STAGE/config-moat"
# PVH boot needs the XEN_ELFNOTE_PHYS32_ENTRY (type 0x12) note; strip must have kept it.
case "$(readelf -n "$STAGE/vmlinux-moat" 2>/dev/null)" in
  *'Unknown note type: (0x00000012)'* | *'PHYS32_ENTRY'*) ;;
  *) die "the stripped vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)" ;;
esac
install_from "$STAGE"

echo "minimal kernel $release built in $((SECONDS - t0)) s (make: $build_s s, -j$JOBS) ($key)"
sizes

# Keep a copy in the machine-wide cache (the newest few builds).
if mkdir -p "$KERNEL_CACHE/$key.tmp" 2>/dev/null; then
  for f in "${FILES[@]}"; do cp "$STAGE/$f" "$KERNEL_CACHE/$key.tmp/$f"; done
  rm -rf "${KERNEL_CACHE:?}/$key" && mv "$KERNEL_CACHE/$key.tmp" "$KERNEL_CACHE/$key"
  # shellcheck disable=SC2012
  ls -1t "$KERNEL_CACHE" | tail -n +4 | while read -r old; do rm -rf "${KERNEL_CACHE:?}/$old"; done
fi
rm -rf "$STAGE"
