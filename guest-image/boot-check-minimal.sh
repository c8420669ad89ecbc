#!/usr/bin/env bash
# Checks that the minimal kernel (guest-image/build-kernel.sh) has what the agent and the
# containers need, by booting it under QEMU (microvm without ACPI, TCG: the machine the
# built-in VMM gives) with a busybox /init that tries each thing and reports one line:
#   MOAT-CHECK PASS n=<checks>         or         MOAT-CHECK FAIL: <what failed>
# It checks: the agent's mounts (proc, sysfs, devtmpfs, devpts, tmpfs, cgroup2) and mqueue;
# the filesystems fuse, virtiofs and overlay (and an overlay mount on tmpfs); the cgroup v2
# controllers cpu, memory, pids, cpuset and io, and memory.swap.max; every namespace; seccomp
# filters; /dev/vsock; a virtio-net device found on virtio-mmio through the command line
# (QEMU adds virtio_mmio.device=... without ACPI), bound to virtio_net, brought up;
# the loopback interface; /proc/config.gz.
#
# usage: boot-check-minimal.sh [--kernel FILE] [--verbose]   (default: out/vmlinux-moat)
# Needs busybox (static; Debian's busybox-static) and cpio on the host.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${MOAT_GUEST_OUT:-$HERE/out}"
kernel="" verbose=()
while [ $# -gt 0 ]; do
  case "$1" in
    --kernel) kernel="$2"; shift ;;
    --verbose) verbose=(--verbose) ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
kernel="${kernel:-$OUT/vmlinux-moat}"
[ -f "$kernel" ] || { echo "missing $kernel: run guest-image/build-kernel.sh first" >&2; exit 2; }
busybox="$(command -v busybox || true)"
[ -n "$busybox" ] || { echo "busybox missing: apt-get install busybox-static" >&2; exit 2; }
case "$(readelf -l "$busybox" 2>/dev/null)" in
  *INTERP*) echo "$busybox is dynamically linked: apt-get install busybox-static" >&2; exit 2 ;;
esac
command -v cpio >/dev/null || { echo "cpio missing: apt-get install cpio" >&2; exit 2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/moat-kcheck.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp}
cp "$busybox" "$ROOT/bin/busybox"
cat >"$ROOT/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
fails=""
n=0
check() { # check NAME COMMAND...: runs the command, records NAME if it fails
  name="$1"; shift
  n=$((n + 1))
  if ! "$@" >/tmp/check.out 2>&1; then
    fails="$fails $name"
    echo "check $name failed: $(head -c 300 /tmp/check.out)"
  fi
}
has_word() { grep -qw "$2" "$1"; }

# The agent's mounts (agent/src/init.rs), then mqueue (OCI's default mounts).
mount -t proc -o nosuid,nodev,noexec proc /proc
check sysfs mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
check devtmpfs mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm /sys/fs/cgroup /dev/mqueue
check devpts mount -t devpts -o nosuid,noexec,newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
check shm mount -t tmpfs -o nosuid,nodev,mode=1777 shm /dev/shm
check cgroup2 mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
check run mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
check tmp mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
check mqueue mount -t mqueue mqueue /dev/mqueue

for fs in fuse virtiofs overlay tmpfs cgroup2 devpts mqueue; do
  check "fs-$fs" grep -qw "$fs" /proc/filesystems
done
mkdir -p /tmp/ov/lower /tmp/ov/upper /tmp/ov/work /tmp/ov/merged
echo hi >/tmp/ov/lower/f
check overlay-mount mount -t overlay overlay -o lowerdir=/tmp/ov/lower,upperdir=/tmp/ov/upper,workdir=/tmp/ov/work /tmp/ov/merged
check overlay-write sh -c 'echo new >/tmp/ov/merged/f && [ "$(cat /tmp/ov/upper/f)" = new ]'

for c in cpu memory pids cpuset io; do
  check "cgroup-$c" has_word /sys/fs/cgroup/cgroup.controllers "$c"
done
echo "+cpu +memory +pids +cpuset" >/sys/fs/cgroup/cgroup.subtree_control
mkdir -p /sys/fs/cgroup/pod
for f in cpu.max cpu.weight memory.max memory.low memory.swap.max memory.events pids.max cpuset.cpus cgroup.kill; do
  check "cgroup-file-$f" test -e "/sys/fs/cgroup/pod/$f"
done
check cpu-max sh -c 'echo "50000 100000" >/sys/fs/cgroup/pod/cpu.max'

for ns in uts ipc pid net user mnt cgroup time; do
  check "ns-$ns" test -e "/proc/self/ns/$ns"
done
if command -v unshare >/dev/null; then
  check unshare unshare -m -u -i -n -p -U -f true
fi
check seccomp-filter test -e /proc/sys/kernel/seccomp/actions_avail
check vsock test -c /dev/vsock
check pty test -c /dev/pts/ptmx
check config-gz test -e /proc/config.gz

check virtio-mmio-net sh -c 'for d in /sys/bus/virtio/devices/*; do [ "$(cat $d/device)" = 0x0001 ] && exit 0; done; exit 1'
check virtio-net-driver sh -c 'ls /sys/bus/virtio/drivers/virtio_net | grep -q virtio'
check lo-up ip link set lo up
check eth0-up ip link set eth0 up

echo "kernel $(uname -r), $(nproc) CPUs, clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
if [ -z "$fails" ]; then
  echo "MOAT-CHECK PASS n=$n"
else
  echo "MOAT-CHECK FAIL:$fails"
fi
sleep 2
reboot -f
EOF
chmod 0755 "$ROOT/init"
(cd "$ROOT" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
  cpio --quiet -o -H newc -R 0:0) >"$WORK/initramfs.cpio"

# The VMM's machine: 2 vCPUs (SMP through the MP table), a virtio-net device on virtio-mmio.
set +e
out="$(MOAT_AGENT_PATTERN='MOAT-CHECK (PASS|FAIL)' "$HERE/boot-check.sh" --minimal \
  --kernel "$kernel" --initrd "$WORK/initramfs.cpio" "${verbose[@]}" -- \
  -smp 2 -netdev user,id=n0 -device virtio-net-device,netdev=n0 2>&1)"
rc=$?
set -e
printf '%s\n' "$out"
grep -E '^(check |kernel )' "$OUT/boot-check.log" || true
if [ "$rc" -eq 0 ] && grep -q 'MOAT-CHECK PASS' <<<"$out"; then
  echo "minimal kernel check: PASS"
  exit 0
fi
echo "minimal kernel check: FAIL (log: $OUT/boot-check.log)"
exit 1
