#!/usr/bin/env bash
# Builds the pod-VM guest image into guest-image/out/:
#   vmlinuz            Debian's cloud kernel (bzImage), straight from the .deb
#   vmlinux            the same kernel as an ELF (PVH entry), extracted from vmlinuz
#   initramfs.cpio     /init (static moat-agent), /lib/moat/modules/*.ko, /lib/moat/modules.order,
#                      and /sbin/modprobe (a link to the agent, the kernel's modprobe helper)
#   modules/           *.ko and index: modules loaded when the kernel asks for them; moatd
#                      shares them read-only with each pod (the `layers` share), so they
#                      cost a pod nothing until loaded
#   manifest.json      kernel version, modules, sizes, hashes, and the input hash
#
# The build is cached by a hash of its inputs (kernel package file name and version, the
# module list, the agent's sources, Cargo.lock/Cargo.toml, the Rust version and this script):
# when out/ already holds a build with that hash it prints "guest image up to date" and exits.
#
# Environment:
#   MOAT_GUEST_KERNEL_PKG  kernel package (default: what linux-image-cloud-amd64 depends on)
#   MOAT_GUEST_OUT         output dir (default: guest-image/out)
#   MOAT_GUEST_TARGET_DIR  cargo target dir for the static agent (default: target/guest)
#   MOAT_GUEST_FORCE=1     rebuild even when the hash matches
#   MOAT_GUEST_CACHE       machine-wide cache of built images by input hash, so fresh clones
#                          (CI) reuse a build (default: /var/cache/moat/guest)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../scripts/lib.sh
source "$HERE/../scripts/lib.sh" # MOAT_ROOT, log, die, apt_install, require_cargo, BUILD_PACKAGES

OUT="${MOAT_GUEST_OUT:-$HERE/out}"
TARGET_DIR="${MOAT_GUEST_TARGET_DIR:-$MOAT_ROOT/target/guest}"
RUST_TARGET=x86_64-unknown-linux-gnu
KERNEL_META=linux-image-cloud-amd64

# Modules the guest loads, by module name. Their dependencies (modinfo depends=) are added
# and the whole set is ordered dependencies first; ones built into the kernel are skipped.
MODULES=(
  virtio_ring virtio virtio_mmio               # virtio core and the microvm transport
  vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport # agent <-> moatd
  fuse virtiofs overlay                        # container rootfs: virtiofs lower, overlay
  failover net_failover virtio_net             # pod network
)

# Modules loaded only when the kernel asks for them (request_module: a bridge created, a
# veth pair, a netfilter table or match used...), for privileged workloads that expect the
# usual kernel: nested CNI plugins, iptables, tun, loop. The kernel runs /sbin/modprobe,
# which is the agent; it finds the module by name or alias in modules/index, on the share.
ONDEMAND_MODULES=(
  bridge br_netfilter veth tun loop dummy macvlan ipvlan vxlan
  ip_tables ip6_tables iptable_filter iptable_nat iptable_mangle iptable_raw
  ip6table_filter ip6table_nat ip6table_mangle
  xt_conntrack xt_MASQUERADE xt_addrtype xt_comment xt_mark xt_multiport xt_nat
  xt_statistic xt_REDIRECT xt_tcpudp xt_set ip_set ip_set_hash_ip ip_set_hash_net
  nf_tables nft_chain_nat nft_ct nft_masq nft_nat nft_compat nft_redir nft_reject_inet
  nft_fib_inet nft_limit
)

# Tools this script runs; installed (Debian) only when missing.
TOOLS=(cpio kmod xz-utils zstd lz4 gzip binutils "${BUILD_PACKAGES[@]}")

sizes() {
  local f
  for f in vmlinuz vmlinux initramfs.cpio; do
    [ -f "$OUT/$f" ] && printf '  %-18s %8s  (%s bytes)\n' "$f" "$(du -h --apparent-size "$OUT/$f" | cut -f1)" "$(stat -c %s "$OUT/$f")"
  done
  return 0
}

t0=$SECONDS
require_cargo

# --- which kernel -----------------------------------------------------------------------
# apt-cache with a package cache file of our own: this image (Debian's docker config) turns
# apt's off, and rebuilding it costs ~1 s a call; apt revalidates it against the lists.
mkdir -p "$OUT/cache"
APT_CACHE=(apt-cache -o "Dir::Cache::pkgcache=$OUT/cache/apt-pkgcache.bin" -o "Dir::Cache::srcpkgcache=")
kernel_pkg="${MOAT_GUEST_KERNEL_PKG:-}"
kernel_version=""
resolve_kernel() {
  local show
  if [ -z "${MOAT_GUEST_KERNEL_PKG:-}" ]; then
    # Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
    show="$("${APT_CACHE[@]}" show --no-all-versions "$KERNEL_META" 2>/dev/null)" || return 1
    read -r kernel_pkg kernel_version < <(sed -n 's/^Depends: .*\(linux-image-[^ ,]*\) (= \([^)]*\)).*/\1 \2/p' <<<"$show")
  else
    show="$("${APT_CACHE[@]}" show --no-all-versions "$kernel_pkg" 2>/dev/null)" || return 1
    kernel_version="$(sed -n 's/^Version: //p' <<<"$show")"
  fi
  [ -n "$kernel_pkg" ] && [ -n "$kernel_version" ]
}
if ! resolve_kernel; then
  [ "$(id -u)" -eq 0 ] || die "apt knows no ${kernel_pkg:-$KERNEL_META}: run apt-get update"
  log "apt-get update (no ${kernel_pkg:-$KERNEL_META} in the package lists)"
  apt-get update -qq
  resolve_kernel || die "cannot resolve ${kernel_pkg:-$KERNEL_META} to a versioned kernel package"
fi
# The file apt-get download writes (an epoch's colon is written %3a).
kernel_deb="${kernel_pkg}_${kernel_version//:/%3a}_amd64.deb"

# --- input hash -------------------------------------------------------------------------
input_hash="$(
  cd "$MOAT_ROOT"
  {
    printf 'kernel %s %s %s\n' "$kernel_pkg" "$kernel_version" "$kernel_deb"
    printf 'modules %s\n' "${MODULES[*]}"
    printf 'ondemand %s\n' "${ONDEMAND_MODULES[*]}"
    printf 'rustc %s\n' "$(rustc -V 2>/dev/null || echo unknown)"
    printf 'target %s\n' "$RUST_TARGET"
    find agent proto -type f -not -path '*/target/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    sha256sum Cargo.lock Cargo.toml guest-image/build.sh
  } | sha256sum | cut -d' ' -f1
)"

exit_if_up_to_date() {
  [ -z "${MOAT_GUEST_FORCE:-}" ] && [ -f "$OUT/manifest.json" ] &&
    grep -q "\"content_hash\": \"$input_hash\"" "$OUT/manifest.json" &&
    [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initramfs.cpio" ] && [ -f "$OUT/modules/index" ] || return 0
  echo "guest image up to date ($input_hash)"
  sizes
  exit 0
}
exit_if_up_to_date

IMAGE_CACHE="${MOAT_GUEST_CACHE:-/var/cache/moat/guest}"
if [ -z "${MOAT_GUEST_FORCE:-}" ] && [ -f "$IMAGE_CACHE/$input_hash/manifest.json" ] &&
  [ -f "$IMAGE_CACHE/$input_hash/modules/index" ]; then
  mkdir -p "$OUT"
  rm -f "$OUT/manifest.json"
  for f in vmlinuz vmlinux initramfs.cpio config; do
    [ -f "$IMAGE_CACHE/$input_hash/$f" ] && cp "$IMAGE_CACHE/$input_hash/$f" "$OUT/$f.tmp" && mv "$OUT/$f.tmp" "$OUT/$f"
  done
  rm -rf "$OUT/modules" "$OUT/modules.tmp"
  cp -r "$IMAGE_CACHE/$input_hash/modules" "$OUT/modules.tmp" && mv "$OUT/modules.tmp" "$OUT/modules"
  cp "$IMAGE_CACHE/$input_hash/manifest.json" "$OUT/manifest.json"
  echo "guest image taken from the cache $IMAGE_CACHE/$input_hash"
  sizes
  exit 0
fi

# One build at a time per out/ dir; whoever waited checks again (the other may have built it).
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
if ! flock -n 9; then
  log "another build holds $OUT/.lock; waiting"
  flock 9
  exit_if_up_to_date
fi

apt_install "${TOOLS[@]}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/moat-guest.XXXXXX")"
cargo_pid=""
trap '[ -z "$cargo_pid" ] || kill "$cargo_pid" 2>/dev/null; rm -rf "$WORK"' EXIT

# --- the static agent (in the background while the kernel is unpacked) ------------------
log "building static moat-agent ($RUST_TARGET, CARGO_TARGET_DIR=$TARGET_DIR)"
(
  cd "$MOAT_ROOT"
  CARGO_TARGET_DIR="$TARGET_DIR" RUSTFLAGS="-C target-feature=+crt-static" \
    exec cargo build --release -p moat-agent --target "$RUST_TARGET"
) >"$WORK/cargo.log" 2>&1 &
cargo_pid=$!

# --- the kernel package ----------------------------------------------------------------
CACHE="$OUT/cache"
if [ ! -s "$CACHE/$kernel_deb" ]; then
  log "downloading $kernel_pkg=$kernel_version"
  rm -f "$CACHE"/*.deb
  # apt-get download checks the file against the signed package lists.
  (cd "$CACHE" && apt-get download -q "$kernel_pkg=$kernel_version" 2>&1) |
    grep -v '^W: Download is performed unsandboxed' >&2 || true
  [ -s "$CACHE/$kernel_deb" ] || die "download of $kernel_pkg=$kernel_version failed"
fi
dpkg-deb -x "$CACHE/$kernel_deb" "$WORK/kernel"
kver="$(find "$WORK/kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n1)"
KROOT="$WORK/kernel/lib/modules/$kver"
[ -f "$WORK/kernel/boot/vmlinuz-$kver" ] || die "no vmlinuz-$kver in $kernel_deb"
log "kernel $kver ($kernel_pkg $kernel_version)"

STAGE="$WORK/out"
mkdir -p "$STAGE"
cp "$WORK/kernel/boot/vmlinuz-$kver" "$STAGE/vmlinuz"
cp "$WORK/kernel/boot/config-$kver" "$STAGE/config"

# vmlinux: scripts/extract-vmlinux's method. Find each known compressor's magic in the
# bzImage, decompress from there, keep the first result that is an ELF file.
extract_vmlinux() {
  local img="$1" dst="$2" magic cmd pos
  local -a tries=(
    '\x1f\x8b\x08' 'gzip -dc'
    '\xfd\x37\x7a\x58\x5a\x00' 'xz -dc'
    '\x28\xb5\x2f\xfd' 'zstd -dc'
    '\x02\x21\x4c\x18' 'lz4 -dc'
  )
  local i
  for ((i = 0; i < ${#tries[@]}; i += 2)); do
    magic="${tries[i]}" cmd="${tries[i + 1]}"
    for pos in $(LC_ALL=C grep -obUaP "$magic" "$img" | cut -d: -f1 | head -n 8); do
      # Trailing bytes after the stream make the decompressors complain; the output is whole.
      tail -c "+$((pos + 1))" "$img" | $cmd >"$dst" 2>/dev/null || true
      if [ "$(head -c4 "$dst" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
        echo "${cmd%% *}"
        return 0
      fi
    done
  done
  rm -f "$dst"
  return 1
}
if kcomp="$(extract_vmlinux "$STAGE/vmlinuz" "$STAGE/vmlinux")"; then
  log "vmlinux extracted ($kcomp)"
  # PVH boot needs the XEN_ELFNOTE_PHYS32_ENTRY (type 0x12) note.
  case "$(readelf -n "$STAGE/vmlinux" 2>/dev/null)" in
    *'Unknown note type: (0x00000012)'*) ;;
    *) log "warning: vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); boot vmlinuz" ;;
  esac
else
  kcomp=unknown
  log "warning: could not extract vmlinux; only vmlinuz will be built"
fi

# --- modules ----------------------------------------------------------------------------
# name -> file (module names use _, file names sometimes -).
declare -A modfile=()
while IFS= read -r f; do
  b="${f##*/}"
  b="${b%.ko*}"
  modfile["${b//-/_}"]="$f"
done < <(find "$KROOT/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
declare -A builtin=()
while IFS= read -r f; do
  b="${f##*/}"
  b="${b%.ko}"
  builtin["${b//-/_}"]=1
done <"$KROOT/modules.builtin"

MODDIR="$WORK/root/lib/moat/modules"
mkdir -p "$MODDIR"
compressed=()
order=()
skipped_builtin=()
declare -A state=() deps_of=() # state: 1 = visiting, 2 = done
visit() {
  local m="$1" f dst d
  case "${state[$m]:-0}" in
    2) return 0 ;;
    1) die "module dependency cycle at $m" ;;
  esac
  if [ -n "${builtin[$m]:-}" ]; then
    state[$m]=2
    skipped_builtin+=("$m")
    return 0
  fi
  f="${modfile[$m]:-}"
  [ -n "$f" ] || die "module $m is neither in $kernel_deb nor built in"
  state[$m]=1
  dst="$MODDIR/$m.ko"
  case "$f" in
    *.ko.xz) xz -dc "$f" >"$dst"; compressed+=("$m") ;;
    *.ko.zst) zstd -qdc "$f" >"$dst"; compressed+=("$m") ;;
    *.ko.gz) gzip -dc "$f" >"$dst"; compressed+=("$m") ;;
    *) cp "$f" "$dst" ;;
  esac
  deps_of[$m]="$(modinfo -F depends "$dst")"
  local -a deps=()
  IFS=, read -r -a deps <<<"${deps_of[$m]}"
  for d in "${deps[@]}"; do
    [ -n "$d" ] && visit "${d//-/_}"
  done
  state[$m]=2
  order+=("$m")
}
for m in "${MODULES[@]}"; do visit "$m"; done
printf '%s.ko\n' "${order[@]}" >"$WORK/root/lib/moat/modules.order"
log "modules (${#order[@]}, load order): ${order[*]}"
[ ${#skipped_builtin[@]} -eq 0 ] || log "built in, skipped: ${skipped_builtin[*]}"
[ ${#compressed[@]} -eq 0 ] || log "decompressed: ${compressed[*]}"

# On-demand modules: each with its dependencies (those not loaded at boot, not built in) in
# load order, under its name and every alias the kernel may ask for (rtnl-link-bridge,
# nft-chain-2-nat, char-major-10-200...). The closure runs in a subshell per module, so a
# shared dependency is decompressed again (the same bytes).
ONDIR="$STAGE/modules"
mkdir -p "$ONDIR"
declare -A boot=() ondemand_done=()
for m in "${order[@]}"; do boot[$m]=1; done
ondemand_closure() { # prints the modules m needs, dependencies first
  local m="$1" d f
  [ -n "${builtin[$m]:-}" ] || [ -n "${boot[$m]:-}" ] || [ -n "${seen[$m]:-}" ] && return 0
  seen[$m]=1
  f="${modfile[$m]:-}"
  [ -n "$f" ] || die "on-demand module $m is neither in $kernel_deb nor built in"
  if [ -z "${ondemand_done[$m]:-}" ]; then
    case "$f" in
      *.ko.xz) xz -dc "$f" >"$ONDIR/$m.ko" ;;
      *.ko.zst) zstd -qdc "$f" >"$ONDIR/$m.ko" ;;
      *.ko.gz) gzip -dc "$f" >"$ONDIR/$m.ko" ;;
      *) cp "$f" "$ONDIR/$m.ko" ;;
    esac
    ondemand_done[$m]=1
  fi
  local -a deps=()
  IFS=, read -r -a deps <<<"$(modinfo -F depends "$ONDIR/$m.ko")"
  for d in "${deps[@]}"; do
    [ -n "$d" ] && ondemand_closure "${d//-/_}"
  done
  printf '%s\n' "$m"
}
ondemand_builtin=()
{
  echo "# module <name> <modules to load, in order>; alias <pattern> <module name>"
  for m in "${ONDEMAND_MODULES[@]}"; do
    if [ -n "${builtin[$m]:-}" ]; then
      ondemand_builtin+=("$m")
      continue
    fi
    declare -A seen=()
    list="$(ondemand_closure "$m" | tr '\n' ' ')"
    unset seen
    echo "module $m ${list% }"
    modinfo -F alias "$ONDIR/$m.ko" | while read -r a; do
      [ -n "$a" ] && echo "alias $a $m"
    done
  done
} >"$ONDIR/index"
mkdir -p "$WORK/root/sbin"
ln -sf /init "$WORK/root/sbin/modprobe"
log "on-demand modules ($(find "$ONDIR" -name '*.ko' | wc -l), $(cat "$ONDIR"/*.ko | wc -c) bytes)"
[ ${#ondemand_builtin[@]} -eq 0 ] || log "on-demand, built in: ${ondemand_builtin[*]}"

# --- the agent --------------------------------------------------------------------------
if ! wait "$cargo_pid"; then
  cargo_pid=""
  cat "$WORK/cargo.log" >&2
  die "building moat-agent failed"
fi
cargo_pid=""
tail -n1 "$WORK/cargo.log" >&2
agent="$TARGET_DIR/$RUST_TARGET/release/moat-agent"
[ -x "$agent" ] || die "no $agent"
case "$(readelf -l "$agent")" in *INTERP*) die "$agent is dynamically linked (crt-static ignored?)" ;; esac
# Keep the symbol table (panics stay readable), drop the line tables.
strip --strip-debug -o "$WORK/root/init" "$agent"
chmod 0755 "$WORK/root/init"

# --- the initramfs ----------------------------------------------------------------------
# /dev/console comes from the kernel's built-in initramfs, which is unpacked first.
mkdir -p "$WORK"/root/{proc,sys,dev,run,tmp,mnt}
chmod 1777 "$WORK/root/tmp"
find "$WORK/root" -exec touch -h -d @0 {} +
(
  cd "$WORK/root"
  find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible
) >"$STAGE/initramfs.cpio"

# --- manifest ---------------------------------------------------------------------------
sz() { stat -c %s "$1"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
{
  printf '{\n'
  printf '  "content_hash": "%s",\n' "$input_hash"
  printf '  "built_at": "%s",\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf '  "kernel": {\n'
  printf '    "package": "%s",\n    "package_version": "%s",\n    "deb": "%s",\n' "$kernel_pkg" "$kernel_version" "$kernel_deb"
  printf '    "release": "%s",\n    "compression": "%s"\n  },\n' "$kver" "$kcomp"
  printf '  "modules_compressed_in_deb": %s,\n' "$([ ${#compressed[@]} -gt 0 ] && echo true || echo false)"
  printf '  "modules_builtin_skipped": ['
  sep=""
  for m in "${skipped_builtin[@]}"; do printf '%s"%s"' "$sep" "$m"; sep=", "; done
  printf '],\n'
  printf '  "modules": [\n'
  sep=""
  for m in "${order[@]}"; do
    printf '%s    {"name": "%s", "file": "%s.ko", "size": %s, "depends": "%s"}' \
      "$sep" "$m" "$m" "$(sz "$MODDIR/$m.ko")" "${deps_of[$m]}"
    sep=$',\n'
  done
  printf '\n  ],\n'
  printf '  "agent": {"size": %s, "sha256": "%s"},\n' "$(sz "$WORK/root/init")" "$(sha "$WORK/root/init")"
  printf '  "files": {\n'
  sep=""
  for f in vmlinuz vmlinux initramfs.cpio modules/index; do
    [ -f "$STAGE/$f" ] || continue
    printf '%s    "%s": {"size": %s, "sha256": "%s"}' "$sep" "$f" "$(sz "$STAGE/$f")" "$(sha "$STAGE/$f")"
    sep=$',\n'
  done
  printf '\n  }\n}\n'
} >"$STAGE/manifest.json"

# Swap in: the manifest goes last, so a half-copied out/ never looks up to date.
rm -f "$OUT/manifest.json"
rm -f "$OUT/initramfs.cpio.gz" # older builds
for f in vmlinuz vmlinux initramfs.cpio config; do
  rm -f "$OUT/$f"
  [ -f "$STAGE/$f" ] && mv "$STAGE/$f" "$OUT/$f"
done
rm -rf "$OUT/modules"
mv "$STAGE/modules" "$OUT/modules"
mv "$STAGE/manifest.json" "$OUT/manifest.json"

echo "guest image built in $((SECONDS - t0)) s ($input_hash)"
sizes
printf '  in the initramfs: /init (moat-agent) %s bytes, %s modules %s bytes\n' \
  "$(sz "$WORK/root/init")" "${#order[@]}" "$(cat "$MODDIR"/*.ko | wc -c)"

# Keep a copy in the machine-wide cache (the newest few builds).
if mkdir -p "$IMAGE_CACHE/$input_hash.tmp" 2>/dev/null; then
  for f in vmlinuz vmlinux initramfs.cpio config manifest.json; do
    [ -f "$OUT/$f" ] && cp "$OUT/$f" "$IMAGE_CACHE/$input_hash.tmp/$f"
  done
  cp -r "$OUT/modules" "$IMAGE_CACHE/$input_hash.tmp/modules"
  rm -rf "$IMAGE_CACHE/$input_hash" && mv "$IMAGE_CACHE/$input_hash.tmp" "$IMAGE_CACHE/$input_hash"
  # shellcheck disable=SC2012
  ls -1t "$IMAGE_CACHE" | tail -n +4 | while read -r old; do rm -rf "${IMAGE_CACHE:?}/$old"; done
fi
