#!/usr/bin/env bash
# Compares the boot time to the agent's "moat-agent serving on vsock" line (it announces
# itself to the host right after; this host has no vhost-vsock, so the announce itself
# cannot be seen) of Debian's cloud kernel (the guest
# image's vmlinux, microvm with ACPI, the initramfs with its modules) and of the minimal
# kernel (vmlinux-moat, microvm without ACPI, the initramfs without modules), under QEMU
# TCG, in one run: the two alternate, so a change in the machine's load hits both alike.
# Prints each run's time (wall clock from QEMU's start, as boot-check.sh measures it) and
# the median of each.
#
# usage: boot-check-compare.sh [RUNS]    (default 5 runs of each)
# Environment: MOAT_AGENT_PATTERN (default 'serving on vsock') picks the agent line timed.
# Needs guest-image/build.sh and guest-image/build-kernel.sh to have run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
runs="${1:-5}"
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [RUNS]" >&2; exit 2; }

export MOAT_AGENT_PATTERN="${MOAT_AGENT_PATTERN:-serving on vsock}"
export MOAT_BOOT_GRACE="${MOAT_BOOT_GRACE:-0.3}"
declare -A times=()
# One boot; appends its time to times[$name], or fails the comparison.
boot() {
  local name="$1" out t
  shift
  if ! out="$("$HERE/boot-check.sh" "$@" 2>&1)"; then
    printf '%s\n' "$out" >&2
    echo "FAIL: $name did not reach the agent" >&2
    exit 1
  fi
  t="$(sed -n 's/^PASS: reached \/init; the agent printed after \([0-9.]*\) s.*/\1/p' <<<"$out")"
  [ -n "$t" ] || { printf '%s\n' "$out" >&2; echo "FAIL: $name: no agent line" >&2; exit 1; }
  times[$name]+="$t "
  printf '  %-8s run %d: %s s\n' "$name" "$i" "$t"
}

median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END{if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }

for ((i = 1; i <= runs; i++)); do
  boot debian
  boot minimal --minimal
done
echo "median over $runs runs (wall clock from QEMU start to the agent line /$MOAT_AGENT_PATTERN/):"
printf '  debian   %s s  (%s)\n' "$(median "${times[debian]}")" "${times[debian]% }"
printf '  minimal  %s s  (%s)\n' "$(median "${times[minimal]}")" "${times[minimal]% }"
