#!/usr/bin/env bash
# Boots the built guest image under QEMU (microvm, TCG) and reports whether the kernel
# reached /init and how long that took (wall clock, from starting QEMU).
#
# Reaching /init is proven by either
#   - a line the agent prints (MOAT_AGENT_PATTERN, an extended regex), or
#   - the kernel panic "Attempted to kill init": /init ran and exited.
# QEMU exits on a panic (panic=-1 reboots at once, -no-reboot turns that into an exit); once
# the agent has spoken, the check waits MOAT_BOOT_GRACE seconds for more and stops QEMU.
#
# usage: boot-check.sh [--minimal] [--vmlinuz] [--kernel FILE] [--initrd FILE] [--acpi on|off]
#                      [--timeout S] [--verbose] [--append ARGS] [-- EXTRA QEMU ARGS]
#   --minimal   boot the minimal kernel of build-kernel.sh (vmlinux-moat, or bzImage-moat with
#               --vmlinuz) the way the built-in VMM does: no ACPI (QEMU puts the virtio-mmio
#               devices on the command line, the MP table gives the IOAPIC), and the
#               initramfs without its modules (initramfs-nomodules.cpio, made from
#               initramfs.cpio: that kernel has everything built in and no module loader)
#   --vmlinuz   boot the bzImage instead of vmlinux (PVH entry; the default when built)
#   --acpi      microvm's ACPI tables (default: on; off with --minimal). Without ACPI the
#               PIT and the 8259 PIC are on: TCG has no TSC-deadline timer, and a kernel
#               without ACPI's "hardware-reduced" flag assumes a PIT, calibrates and checks
#               the LAPIC timer against it, and wires its IRQ 0 through the legacy PIC's IRQ
#               range (without them: "Failed to register legacy timer interrupt", "APIC
#               timer disabled due to verification failure", and no timer at all)
#   --verbose   full kernel log (no "quiet"); slower, serial output costs time under TCG
# Environment: MOAT_TSC_KHZ overrides the host TSC frequency passed as tsc_early_khz.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${MOAT_GUEST_OUT:-$HERE/out}"
AGENT_PATTERN="${MOAT_AGENT_PATTERN:-moat-agent|moat_agent|guest initialised}"
GRACE="${MOAT_BOOT_GRACE:-1}"

kernel="" initrd="" timeout=60 verbose="" use_vmlinuz="" append_extra="" extra=() minimal="" acpi=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minimal) minimal=1 ;;
    --acpi) acpi="$2"; shift ;;
    --vmlinuz) use_vmlinuz=1 ;;
    --kernel) kernel="$2"; shift ;;
    --initrd) initrd="$2"; shift ;;
    --timeout) timeout="$2"; shift ;;
    --verbose) verbose=1 ;;
    --append) append_extra="$2"; shift ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# The guest image's initramfs without /lib/moat (modules for Debian's kernel, which a kernel
# without module support cannot load: finit_module fails with ENOSYS and the agent stops).
# Remade when initramfs.cpio is newer.
nomodules_initrd() {
  local src="$OUT/initramfs.cpio" dst="$OUT/initramfs-nomodules.cpio" tmp
  [ -f "$src" ] || { echo "missing $src: run guest-image/build.sh first" >&2; exit 2; }
  [ "$dst" -nt "$src" ] && return 0
  command -v cpio >/dev/null || { echo "cpio missing: apt-get install cpio" >&2; exit 2; }
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/moat-initrd.XXXXXX")"
  (cd "$tmp" && cpio --quiet -idm <"$src" && rm -rf lib/moat &&
    find . -exec touch -h -d @0 {} + &&
    find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) >"$dst.tmp" || { rm -rf "$tmp" "$dst.tmp"; exit 2; }
  rm -rf "$tmp"
  mv "$dst.tmp" "$dst"
}

if [ -n "$minimal" ]; then
  if [ -z "$kernel" ]; then
    if [ -z "$use_vmlinuz" ]; then kernel="$OUT/vmlinux-moat"; else kernel="$OUT/bzImage-moat"; fi
    [ -f "$kernel" ] || { echo "missing $kernel: run guest-image/build-kernel.sh first" >&2; exit 2; }
  fi
  if [ -z "$initrd" ]; then
    nomodules_initrd
    initrd="$OUT/initramfs-nomodules.cpio"
  fi
  [ -n "$acpi" ] || acpi=off
fi
case "${acpi:=on}" in on | off) ;; *) echo "--acpi takes on or off" >&2; exit 2 ;; esac
if [ "$acpi" = on ]; then pit=off; else pit=on; fi
if [ -z "$kernel" ]; then
  if [ -z "$use_vmlinuz" ] && [ -f "$OUT/vmlinux" ]; then kernel="$OUT/vmlinux"; else kernel="$OUT/vmlinuz"; fi
fi
[ -n "$initrd" ] || initrd="$OUT/initramfs.cpio"
for f in "$kernel" "$initrd"; do
  [ -f "$f" ] || { echo "missing $f: run guest-image/build.sh first" >&2; exit 2; }
done
command -v qemu-system-x86_64 >/dev/null || {
  echo "qemu-system-x86_64 missing: apt-get install qemu-system-x86" >&2
  exit 2
}

# The host's TSC frequency in kHz. Under TCG the guest's TSC is the host's, and microvm has
# no PIT/HPET/ACPI PM timer to calibrate it against: without tsc_early_khz the guest hangs.
host_tsc_khz() {
  local mhz
  if [ -n "${MOAT_TSC_KHZ:-}" ]; then echo "$MOAT_TSC_KHZ"; return; fi
  # Some kernels export it directly.
  if [ -r /sys/devices/system/cpu/cpu0/tsc_freq_khz ]; then
    cat /sys/devices/system/cpu/cpu0/tsc_freq_khz
    return
  fi
  # The host kernel's own calibration: "Refined TSC clocksource calibration: 2596.139 MHz",
  # else "tsc: Detected 2596.140 MHz processor".
  mhz="$( (dmesg 2>/dev/null || journalctl -k -b --no-pager 2>/dev/null || true) |
    sed -n 's/.*Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/1 \1/p; s/.*tsc: Detected \([0-9.]*\) MHz processor.*/2 \1/p' |
    sort | head -n1 | cut -d' ' -f2)"
  # Last resort: /proc/cpuinfo (the current clock; matches the TSC only without frequency scaling).
  [ -n "$mhz" ] || mhz="$(awk -F': *' '/^cpu MHz/{print $2; exit}' /proc/cpuinfo)"
  [ -n "$mhz" ] || { echo "cannot find the host TSC frequency; set MOAT_TSC_KHZ" >&2; exit 2; }
  awk -v m="$mhz" 'BEGIN{printf "%d\n", m * 1000 + 0.5}'
}
tsc_khz="$(host_tsc_khz)"

append="console=ttyS0 panic=-1 tsc_early_khz=$tsc_khz tsc=reliable no_timer_check"
append+=" i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 cryptomgr.notests"
[ -n "$verbose" ] || append+=" quiet"
[ -z "$append_extra" ] || append+=" $append_extra"

mem=256
# shellcheck disable=SC2054 # the commas are QEMU's
qemu=(
  qemu-system-x86_64
  -M "microvm,x-option-roms=off,pit=$pit,pic=$pit,rtc=on,isa-serial=on,acpi=$acpi,memory-backend=mem"
  -accel tcg -cpu max -smp 1 -m "$mem"
  -object "memory-backend-memfd,id=mem,size=${mem}M,share=on"
  -global virtio-mmio.force-legacy=false
  -nodefaults -no-user-config -nographic -no-reboot -serial stdio
  -kernel "$kernel" -initrd "$initrd" -append "$append"
  "${extra[@]}"
)

log="$OUT/boot-check.log"
mkdir -p "$OUT"
: >"$log"
printf 'qemu:'
for a in "${qemu[@]}"; do
  if [[ "$a" =~ ^[A-Za-z0-9_./,=:+-]+$ ]]; then printf ' %s' "$a"; else printf " '%s'" "$a"; fi
done
printf '\n'

strip_ansi() { sed 's/\x1b\[[0-9;]*[A-Za-z]//g'; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b - a}'; }

start=$EPOCHREALTIME
exec {qfd}< <(exec timeout -k 5 "$timeout" "${qemu[@]}" </dev/null 2>&1)
qpid=$!
agent_line="" agent_at="" panic_line="" panic_at="" other_panic=""
while :; do
  if [ -n "$agent_at" ]; then
    IFS= read -r -t "$GRACE" -u "$qfd" line || break
  else
    IFS= read -r -u "$qfd" line || break
  fi
  line="${line%$'\r'}"
  printf '%s\n' "$line" >>"$log"
  [ -z "$verbose" ] || printf '%s\n' "$line"
  case "$line" in
    *"Attempted to kill init"*)
      panic_line="$line" panic_at="$(elapsed "$start")"
      break ;;
    *"Kernel panic"*)
      other_panic="$line"
      break ;;
  esac
  if [ -z "$agent_at" ] && [[ "$line" =~ $AGENT_PATTERN ]]; then
    agent_line="$line" agent_at="$(elapsed "$start")"
  fi
done
# After a panic QEMU exits by itself: give it a moment. Then stop it if it still runs (the
# agent does not exit) and collect the rest of the output.
if [ -n "$panic_at$other_panic" ]; then
  while IFS= read -r -t 3 -u "$qfd" line; do printf '%s\n' "${line%$'\r'}" >>"$log"; done || true
fi
kill "$qpid" 2>/dev/null || true
wait "$qpid" 2>/dev/null && qrc=0 || qrc=$?
cat <&"$qfd" >>"$log" 2>/dev/null || true
exec {qfd}<&-
total="$(elapsed "$start")"

guest_ts() { sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p' <<<"$1"; }
echo "kernel: $kernel"
echo "initrd: $initrd"
echo "log:    $log"
if [ -n "$agent_at" ]; then
  echo "PASS: reached /init; the agent printed after ${agent_at} s (wall, from QEMU start):"
  echo "      $(strip_ansi <<<"$agent_line")"
  [ -z "$panic_at" ] || echo "      then /init exited (kernel panic at guest time $(guest_ts "$panic_line") s): $(strip_ansi <<<"$panic_line")"
  echo "      (QEMU stopped after ${total} s, ${GRACE} s after the agent's first line)"
  exit 0
elif [ -n "$panic_at" ]; then
  echo "PASS: reached /init; /init exited and the kernel panicked after ${panic_at} s (wall, from QEMU start;"
  echo "      guest time $(guest_ts "$panic_line") s): $(strip_ansi <<<"$panic_line")"
  echo "      QEMU exited after ${total} s"
  exit 0
fi
echo "FAIL: no sign of /init (${total} s, qemu status $qrc${other_panic:+; $other_panic})"
echo "----- last lines of the log:"
tail -n 30 "$log" | strip_ansi
exit 1
