#!/usr/bin/env bash
# Builds the Moat Debian package, target/deb/moat_<version>_amd64.deb: moatd, the guest
# image, the default configuration, the systemd unit and the deploy files.
#
# Usage: scripts/build-deb.sh [--no-build] [--builtin-kernel] [--moatd FILE] [--guest-dir DIR]
#                             [--out DIR] [--lint]
#   (default)        builds moatd (cargo build --release; a no-op when it is current) and
#                    the guest image (guest-image/build.sh; cached), then packages them
#                    (with vmlinux-moat when guest-image/out has it)
#   --builtin-kernel also builds the built-in VMM's minimal kernel (guest-image/build-kernel.sh:
#                    about 12 minutes the first time, then cached), for nodes with VT-x/AMD-V
#   --no-build       packages target/release/moatd and guest-image/out as they are
#   --moatd FILE     packages this moatd binary instead of building one ($MOATD_BIN too)
#   --guest-dir DIR  packages this guest image instead of building one ($MOAT_GUEST_DIR too)
#   --out DIR        where the .deb goes (default target/deb)
#   --lint           runs lintian on the result when it is installed
# Prints the path of the .deb on its last line.
#
# The package is put together by hand and built with Debian's own `dpkg-deb --build
# --root-owner-group`, not with cargo-deb: dpkg-deb is on every Debian machine, so CI needs
# no extra tool compiled first, and the guest image (not a cargo artefact) goes in as easily.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$MOAT_ROOT"

moatd_bin="${MOATD_BIN:-}"
guest_src="${MOAT_GUEST_DIR:-}"
out_dir="$MOAT_ROOT/target/deb"
build=1
lint=0
builtin_kernel=0
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --moatd) moatd_bin="${2:?--moatd needs a file}"; shift ;;
    --guest-dir) guest_src="${2:?--guest-dir needs a directory}"; shift ;;
    --out) out_dir="${2:?--out needs a directory}"; shift ;;
    --lint) lint=1 ;;
    --builtin-kernel) builtin_kernel=1 ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

# The guest image is an x86_64 kernel and agent, and so is the only VMM target.
arch="$(dpkg --print-architecture)"
[ "$arch" = amd64 ] || die "the package is amd64 only (this machine: $arch)"
version="$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)"
[ -n "$version" ] || die "no version in [workspace.package] of Cargo.toml"

# --- what goes in -------------------------------------------------------------------------
if [ -z "$moatd_bin" ]; then
  moatd_bin="$MOAT_ROOT/target/release/moatd"
  if [ "$build" = 1 ]; then
    require_cargo
    apt_install "${BUILD_PACKAGES[@]}"
    log "building moatd (release)"
    cargo build --release --locked -p moat-host --bin moatd
  fi
fi
[ -x "$moatd_bin" ] || die "no moatd binary at $moatd_bin (build it, or pass --moatd)"
if [ -z "$guest_src" ]; then
  guest_src="$MOAT_ROOT/guest-image/out"
  if [ "$build" = 1 ]; then
    log "guest image"
    bash guest-image/build.sh >&2
  fi
  if [ "$builtin_kernel" = 1 ]; then
    log "minimal kernel for the built-in VMM"
    bash guest-image/build-kernel.sh >&2
  fi
fi
# The files moatd reads from sandbox.guest_dir (host/src/config.rs): the kernel (`vmlinux`,
# else `vmlinuz`), the initramfs (`initramfs.cpio.gz`, else `initramfs.cpio`), `modules/`
# (loaded on demand in the guest) and, when it was built, `vmlinux-moat` (the built-in
# VMM's kernel). manifest.json says what they were built from.
kernel=vmlinux
[ -f "$guest_src/$kernel" ] || kernel=vmlinuz
initramfs=initramfs.cpio.gz
[ -f "$guest_src/$initramfs" ] || initramfs=initramfs.cpio
for f in "$kernel" "$initramfs" modules/index manifest.json; do
  [ -f "$guest_src/$f" ] || die "guest image incomplete: no $guest_src/$f (run guest-image/build.sh)"
done
apt_install binutils
# The moatd packaged must take the config.toml packaged (a moatd older than the file
# refuses its newer keys and would not start).
set +e
config_err="$("$moatd_bin" --config deploy/config.toml check 2>&1 >/dev/null)"
[ $? -ne 2 ]
config_ok=$?
set -e
[ "$config_ok" = 0 ] || die "$moatd_bin refuses deploy/config.toml (rebuild it?): $config_err"

# --- the tree -----------------------------------------------------------------------------
mkdir -p "$out_dir"
stage="$out_dir/moat_${version}_${arch}"
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"
d() { install -d -m 0755 "$stage/$1"; }
f() { install -D -m "${3:-0644}" "$1" "$stage/$2"; }

log "staging moat $version in $stage"
# moatd (its subcommands vmm, jail, vsock-backend, fs-backend and check are the same
# binary: moatd starts itself through /proc/self/exe). Stripped as dh_strip does.
f "$moatd_bin" usr/bin/moatd 0755
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$stage/usr/bin/moatd"

g=usr/share/moat/guest
f "$guest_src/$kernel" "$g/$kernel"
f "$guest_src/$initramfs" "$g/$initramfs"
f "$guest_src/manifest.json" "$g/manifest.json"
if [ -f "$guest_src/vmlinux-moat" ]; then
  f "$guest_src/vmlinux-moat" "$g/vmlinux-moat"
else
  log "no vmlinux-moat in $guest_src: on nodes with VT-x/AMD-V the built-in VMM will boot $kernel (--builtin-kernel builds the minimal kernel)"
fi
d "$g/modules"
cp -R "$guest_src/modules/." "$stage/$g/modules/"
find "$stage/$g/modules" -type d -exec chmod 0755 {} +
find "$stage/$g/modules" -type f -exec chmod 0644 {} +

f deploy/config.toml etc/moat/config.toml
f deploy/moatd.service lib/systemd/system/moatd.service
for y in runtimeclass.yaml kubelet-config.yaml crictl.yaml; do
  f "deploy/$y" "usr/share/moat/deploy/$y"
done

# Reproducible dates: the last commit's, else now.
: "${SOURCE_DATE_EPOCH:=$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
export SOURCE_DATE_EPOCH
maintainer="${MOAT_DEB_MAINTAINER:-Moat maintainers <moat@example.invalid>}"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
doc=usr/share/doc/moat
f README.md "$doc/README.md"
f docs/deploy.md "$doc/deploy.md"
f docs/configuration.md "$doc/configuration.md"
# (No `| head` under pipefail: the writer's SIGPIPE would end the script.)
first_year="$(git log --max-parents=0 --format=%cd --date=format:%Y 2>/dev/null | tail -n 1 || true)"
last_year="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)"
copyright_years="${first_year:-$last_year}"
[ "$copyright_years" = "$last_year" ] || copyright_years+="-$last_year"
kernel_pkg="$(awk -F'"' '$2 == "package" { print $4; exit }' "$guest_src/manifest.json")"
kernel_ver="$(awk -F'"' '$2 == "package_version" { print $4; exit }' "$guest_src/manifest.json")"
cat > "$stage/$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: moat
Comment: Built from the Moat source tree by scripts/build-deb.sh.

Files: *
Copyright: $copyright_years The Moat authors
License: Apache-2.0
Comment: moatd and moat-agent (in the guest initramfs) statically include Rust crates
 listed in Cargo.lock, each under its own licence (mostly MIT or Apache-2.0). moat-agent
 is statically linked with the GNU C Library (LGPL-2.1+).

Files: usr/share/moat/guest/*
Copyright: The Linux kernel authors
License: GPL-2
Comment: The guest kernel (vmlinux or vmlinuz, vmlinux-moat) and the kernel modules in
 modules/ and in initramfs.cpio come from Debian's ${kernel_pkg:-linux-image-cloud-amd64}
 package, version ${kernel_ver:-see manifest.json}, whose source is Debian's linux source
 package of that version (vmlinux-moat: linux-source-6.12). manifest.json lists them.

License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 can be found in
 /usr/share/common-licenses/Apache-2.0.

License: GPL-2
 On Debian systems, the full text of the GNU General Public License version 2 can be
 found in /usr/share/common-licenses/GPL-2.
EOF
chmod 0644 "$stage/$doc/copyright"

{
  printf 'moat (%s) unstable; urgency=medium\n\n' "$version"
  printf '  * Built by scripts/build-deb.sh from commit %s.\n\n' "$commit"
  printf ' -- %s  %s\n' "$maintainer" \
    "$(date -R -u -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$stage/$doc/changelog.gz"
chmod 0644 "$stage/$doc/changelog.gz"

# A manual page from moatd's own --help (lintian: no-manual-page).
man_text() {
  # troff-escape help text: backslashes, minus signs, lines starting with . or '.
  sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e "s/^\([.']\)/\\\\\&\1/"
}
d usr/share/man/man8
{
  printf '.TH MOATD 8 "%s" "moat %s" "System Administration"\n' \
    "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)" "$version"
  cat <<'MAN'
.SH NAME
moatd \- Kubernetes CRI runtime that runs each pod in its own micro-VM
.SH SYNOPSIS
.B moatd
[\fIOPTIONS\fR] [\fICOMMAND\fR]
.SH DESCRIPTION
.B moatd
serves the Kubernetes CRI v1 API (RuntimeService and ImageService) over gRPC on a Unix
socket, by default \fI/run/moat/moat.sock\fR, and runs each pod sandbox as a VM. It reads
\fI/etc/moat/config.toml\fR (all defaults when the file is absent) and stops on SIGTERM or
SIGINT; pod VMs keep running and a restarted moatd takes them back.
.PP
.B moatd check
prints one line per host requirement (KVM, devices, cgroups, CNI, guest image, QEMU, the
VMM of each runtime handler) with \fBok\fR, \fBwarn\fR or \fBmissing\fR, and exits 0 when
the configured runtime handlers can run pods on this host, 1 otherwise.
The other commands are started by moatd itself.
.SH OPTIONS
.nf
MAN
  "$moatd_bin" --help | man_text
  printf '.fi\n.SS moatd check\n.nf\n'
  "$moatd_bin" check --help | man_text
  cat <<'MAN'
.fi
.SH FILES
.TP
.I /etc/moat/config.toml
the configuration (every key, commented out, with its default)
.TP
.I /var/lib/moat
state: the state database and the image store
.TP
.I /run/moat
the CRI socket and one directory per pod VM
.TP
.I /usr/share/moat/guest
the guest kernel, initramfs and modules
.TP
.I /usr/share/moat/deploy
RuntimeClass, kubelet and crictl settings
.SH SEE ALSO
.IR /usr/share/doc/moat/deploy.md ,
.I /usr/share/doc/moat/configuration.md
MAN
} | gzip -9n > "$stage/usr/share/man/man8/moatd.8.gz"
chmod 0644 "$stage/usr/share/man/man8/moatd.8.gz"

# The guest image is for the x86_64 guest, at the path moatd looks in by default
# (sandbox.guest_dir = /usr/share/moat/guest); lintian flags ELF files under /usr/share.
d usr/share/lintian/overrides
cat > "$stage/usr/share/lintian/overrides/moat" <<'EOF'
# The guest image (kernel, modules) sits in moatd's default sandbox.guest_dir,
# /usr/share/moat/guest: it runs inside the x86_64 VM, not on the host.
moat: arch-dependent-file-in-usr-share [usr/share/moat/guest/*]
moat: statically-linked-binary [usr/share/moat/guest/*]
EOF

# --- control files ------------------------------------------------------------------------
# Shared libraries moatd links (libc6, libgcc-s1), as dh_shlibdeps would find them.
shlibs="$(
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  mkdir "$tmp/debian"
  printf 'Source: moat\n\nPackage: moat\nArchitecture: any\n' > "$tmp/debian/control"
  (cd "$tmp" && dpkg-shlibdeps -O -e"$stage/usr/bin/moatd" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
)" || true
[ -n "$shlibs" ] || shlibs="libc6 (>= 2.34), libgcc-s1"
# RUN_PACKAGES from scripts/lib.sh: QEMU, the CNI plugins, iptables (the bridge plugin's
# ipMasq, portmap), iproute2 and util-linux. util-linux is Essential in Debian 12, so it
# carries a version (lintian: depends-on-essential-package-without-using-version).
depends="$shlibs"
for p in "${RUN_PACKAGES[@]}"; do
  case "$p" in
    util-linux) depends+=", util-linux (>= 2.38)" ;;
    *) depends+=", $p" ;;
  esac
done
# Installed-Size as dpkg-gencontrol computes it: KiB per file, rounded up, 1 per other entry.
installed_size="$(cd "$stage" && find . -path ./DEBIAN -prune -o ! -name . -printf '%y %s\n' |
  awk '$1 == "f" { s += int(($2 + 1023) / 1024); next } { s += 1 } END { print s }')"

cat > "$stage/DEBIAN/control" <<EOF
Package: moat
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends
Section: admin
Priority: optional
Description: Kubernetes CRI runtime that runs each pod in its own micro-VM
 moatd serves the Kubernetes CRI v1 API (RuntimeService and ImageService) on
 /run/moat/moat.sock. Each pod gets its own lightweight VM (QEMU -M microvm
 with KVM, or TCG without it; or Moat's own VMM where the CPU has VT-x/AMD-V),
 so untrusted and multi-tenant workloads share a node without sharing a
 kernel.
 .
 The package holds moatd, the guest kernel and initramfs
 (/usr/share/moat/guest), the configuration (/etc/moat/config.toml), a systemd
 unit (not enabled on install: systemctl enable --now moatd) and the
 RuntimeClass, kubelet and crictl settings (/usr/share/moat/deploy).
 See /usr/share/doc/moat/deploy.md.
EOF
echo /etc/moat/config.toml > "$stage/DEBIAN/conffiles"

cat > "$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# moat postinst: makes moatd's state directory, records the unit with deb-systemd-helper
# (without enabling it: `systemctl enable --now moatd` is the operator's step) and, on an
# upgrade, restarts a running moatd so the new binary serves. Pod VMs keep running across
# that restart (KillMode=process; moatd takes them back). No pod is started or stopped.
set -e
if [ "$1" = configure ]; then
  # root_dir's default; moatd makes it 0700 too (image layers keep setuid files).
  mkdir -p /var/lib/moat
  chmod 0700 /var/lib/moat
  if command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper unmask moatd.service >/dev/null || true
    deb-systemd-helper update-state moatd.service >/dev/null || true
  fi
  if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    if [ -n "$2" ]; then
      # An upgrade: restart moatd only if it is running.
      deb-systemd-invoke try-restart moatd.service >/dev/null || true
    fi
  fi
fi
exit 0
EOF

cat > "$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# moat prerm: on removal, stops moatd under systemd. Its pod VMs are not stopped: stop pods
# through the CRI (kubectl drain, crictl stopp) before removing the package. On an upgrade
# moatd keeps running; postinst restarts it.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  deb-systemd-invoke stop moatd.service >/dev/null || true
fi
exit 0
EOF

cat > "$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# moat postrm. remove: forgets the unit (masked until purge or reinstall, as debhelper
# does). purge: removes /etc/moat and moatd's default state (/var/lib/moat: the state
# database and the image store; /run/moat) unless pods are still there: a VM directory
# under /run/moat/vm means a pod that was never removed through the CRI, whose VM may
# still be running; then the state stays, and the operator removes it after removing the
# pods. Paths changed in config.toml (root_dir, run_dir) are not touched, nor are the CNI
# files moatd may have written (/etc/cni/net.d/10-moat.conflist).
set -e
case "$1" in
  remove)
    if [ -d /run/systemd/system ]; then
      systemctl --system daemon-reload >/dev/null || true
    fi
    if command -v deb-systemd-helper >/dev/null; then
      deb-systemd-helper mask moatd.service >/dev/null || true
    fi
    ;;
  purge)
    if command -v deb-systemd-helper >/dev/null; then
      deb-systemd-helper purge moatd.service >/dev/null || true
      deb-systemd-helper unmask moatd.service >/dev/null || true
    fi
    rm -f /etc/moat/config.toml /etc/moat/config.toml.dpkg-old \
      /etc/moat/config.toml.dpkg-new /etc/moat/config.toml.dpkg-dist \
      /etc/moat/config.toml.dpkg-bak /etc/moat/config.toml.ucf-dist
    rmdir /etc/moat 2>/dev/null || true
    pods="$(ls -A /run/moat/vm 2>/dev/null || true)"
    mounted="$(awk '$5 ~ "^/var/lib/moat(/|$)" { print $5 }' /proc/self/mountinfo 2>/dev/null || true)"
    if [ -n "$pods$mounted" ]; then
      echo "moat: pods are left in /run/moat/vm; keeping /var/lib/moat and /run/moat (remove them once the pods are gone)" >&2
    else
      rm -rf /var/lib/moat /run/moat
    fi
    ;;
esac
exit 0
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
  xargs -0 md5sum) > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"

# --- the package --------------------------------------------------------------------------
deb="$out_dir/moat_${version}_${arch}.deb"
log "dpkg-deb --build (xz; takes a while for the ~80 MB guest image)"
dpkg-deb --root-owner-group --build "$stage" "$deb" >&2
rm -rf "$stage"
log "$(du -h "$deb" | cut -f1) $(basename "$deb"), Installed-Size ${installed_size} KiB"
if [ "$lint" = 1 ]; then
  if command -v lintian >/dev/null 2>&1; then
    log "lintian"
    lintian --info "$deb" >&2 || true
  else
    log "lintian is not installed (apt-get install lintian); not run"
  fi
fi
echo "$deb"
