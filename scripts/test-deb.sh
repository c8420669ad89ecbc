#!/usr/bin/env bash
# Tests the Debian package on this machine, as root: builds it (scripts/build-deb.sh), installs
# it with dpkg, checks the files, starts moatd exactly as the installed systemd unit would
# (its ExecStart, environment and limits; without systemd), runs `moatd check`, runs a pod
# through /run/moat/moat.sock (target/debug/cri-smoke), stops moatd, and purges the package.
# Cleans up on any failure. Ends with "deb package: ok"; exits 77 (and prints a line
# starting with SKIPPED) when moat's paths are already in use here.
#
# Usage: sudo scripts/test-deb.sh [build-deb.sh arguments, e.g. --no-build or --moatd FILE]
# Environment:
#   MOAT_DEB=FILE       test this .deb instead of building one
#   CRI_SMOKE=FILE      the CRI client that runs the pod (default target/debug/cri-smoke)
#   MOAT_DEB_POD=0      leave the pod out (prints a SKIPPED line)
#   MOAT_DEB_FORCE=1    run even though moat's paths are in use here (they get purged)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ "$(id -u)" -eq 0 ] || die "test-deb.sh installs and purges a package: run it as root"
cd "$MOAT_ROOT"

SOCK=/run/moat/moat.sock
UNIT=/lib/systemd/system/moatd.service
GUEST=/usr/share/moat/guest
cri_smoke="${CRI_SMOKE:-$MOAT_ROOT/target/debug/cri-smoke}"

fail() { printf 'deb package: FAILED: %s\n' "$*" >&2; exit 1; }
# This host cannot take the test (not a failure of the package): exit 77.
skip() { printf 'SKIPPED the deb package test: %s\n' "$*"; exit 77; }

# The package's paths belong to the package: purging it deletes them. Refuse to run over
# someone's moatd state (scripts/run-moatd.sh uses the same defaults).
if [ "${MOAT_DEB_FORCE:-0}" != 1 ]; then
  st="$(dpkg-query -W -f='${Status}' moat 2>/dev/null || true)"
  [ -z "$st" ] || [ "$st" = "unknown ok not-installed" ] ||
    skip "moat is already installed here ($st): this test installs and purges it (MOAT_DEB_FORCE=1 to go on)"
  for p in /etc/moat /var/lib/moat /run/moat /usr/share/moat; do
    [ ! -e "$p" ] || skip "$p exists: this test would delete it when it purges the package (MOAT_DEB_FORCE=1 to go on)"
  done
fi
if [ "${MOAT_DEB_POD:-1}" != 0 ] && [ ! -x "$cri_smoke" ]; then
  die "$cri_smoke not found: build it (cargo build --locked -p moat-tests --bin cri-smoke; scripts/test.sh builds every binary), or set MOAT_DEB_POD=0"
fi
# The package's own dependencies come from dpkg -i and apt-get -f install below; cri-smoke
# needs a registry and the busybox it pushes.
[ "${MOAT_DEB_POD:-1}" = 0 ] || apt_install docker-registry busybox-static

work="$(mktemp -d /tmp/moat-test-deb.XXXXXX)"
moatd_pid=""

# Pids of processes whose command line names moat's run dir: the pod VMs' processes (QEMU
# or `moatd vmm`, the back-ends and their jails) of the moatd this test started.
pod_pids() {
  local p cmd
  for p in /proc/[0-9]*; do
    # A process may exit between the glob and the read.
    cmd="$( { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null || true)"
    case "$cmd" in *"/run/moat/vm/"*) echo "${p#/proc/}" ;; esac
  done
}

cleanup() {
  local rc=$? p
  set +e
  if [ "$rc" -ne 0 ]; then
    echo "--- moatd log (last 40 lines) ---" >&2
    tail -n 40 "$work/moatd.log" >&2 2>/dev/null
  fi
  if [ -n "$moatd_pid" ] && kill -0 "$moatd_pid" 2>/dev/null; then
    kill -TERM "$moatd_pid"
    for _ in $(seq 100); do kill -0 "$moatd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$moatd_pid" 2>/dev/null
  fi
  # Pods a failed run left: their processes, then their mounts.
  for p in $(pod_pids); do kill -KILL "$p" 2>/dev/null; done
  awk '$5 ~ "^/run/moat/" { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m"; done
  # Their directories too, or the purge would keep moatd's state for them.
  rm -rf --one-file-system /run/moat/vm
  case "$(dpkg-query -W -f='${Status}' moat 2>/dev/null)" in
    "" | *not-installed) ;;
    *) dpkg --purge moat >/dev/null 2>&1 || echo "cleanup: dpkg --purge moat failed" >&2 ;;
  esac
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# --- build and install ----------------------------------------------------------------------
if [ -n "${MOAT_DEB:-}" ]; then
  deb="$MOAT_DEB"
else
  log "building the package"
  deb="$(bash scripts/build-deb.sh "$@" | tail -n 1)"
fi
[ -f "$deb" ] || fail "no package at $deb"
version="$(dpkg-deb -f "$deb" Version)"
log "installing $deb"
if ! dpkg -i "$deb"; then
  log "dpkg -i failed (missing dependencies?): apt-get -f install"
  DEBIAN_FRONTEND=noninteractive apt-get install -f -y -qq || fail "apt-get -f install"
fi
[ "$(dpkg-query -W -f='${Status}' moat)" = "install ok installed" ] || fail "moat is not installed after dpkg -i"

# --- files ----------------------------------------------------------------------------------
log "checking the installed files"
[ -x /usr/bin/moatd ] || fail "no /usr/bin/moatd"
[ "$(/usr/bin/moatd --version)" = "moatd $version" ] || fail "moatd --version says '$(/usr/bin/moatd --version)', the package is $version"
kernel=$GUEST/vmlinux
[ -f "$kernel" ] || kernel=$GUEST/vmlinuz
initramfs=$GUEST/initramfs.cpio.gz
[ -f "$initramfs" ] || initramfs=$GUEST/initramfs.cpio
for f in "$kernel" "$initramfs" $GUEST/modules/index $GUEST/manifest.json /etc/moat/config.toml \
  "$UNIT" /usr/share/moat/deploy/runtimeclass.yaml /usr/share/moat/deploy/kubelet-config.yaml \
  /usr/share/moat/deploy/crictl.yaml /usr/share/doc/moat/copyright /usr/share/doc/moat/deploy.md \
  /usr/share/man/man8/moatd.8.gz; do
  [ -s "$f" ] || fail "$f is missing or empty"
done
[ "$(stat -c %a /var/lib/moat 2>/dev/null)" = 700 ] || fail "/var/lib/moat is not a 0700 directory"
conffiles="$(dpkg-query -W -f='${Conffiles}' moat)"
[[ "$conffiles" == *"/etc/moat/config.toml "* ]] || fail "/etc/moat/config.toml is not a conffile: $conffiles"
verify="$(dpkg -V moat 2>&1)"
[ -z "$verify" ] || fail "dpkg -V moat: $verify"
wants="$(find /etc/systemd/system -name moatd.service 2>/dev/null)"
[ -z "$wants" ] || fail "the unit is enabled or masked on install: $wants"
if command -v systemd-analyze >/dev/null 2>&1; then
  out="$(systemd-analyze verify "$UNIT" 2>&1)" || fail "systemd-analyze verify $UNIT: $out"
fi

# An upgrade over itself keeps a changed conffile (and runs prerm/postinst's upgrade paths).
echo "# changed by test-deb.sh" >> /etc/moat/config.toml
dpkg -i --force-confold "$deb" >/dev/null || fail "dpkg -i over the installed package"
[ "$(tail -n 1 /etc/moat/config.toml)" = "# changed by test-deb.sh" ] || fail "the upgrade did not keep the changed config.toml"

# --- moatd as the unit starts it ------------------------------------------------------------
# The [Service] settings that make the process: ExecStart, Environment, WorkingDirectory,
# UMask and the limits. systemd's own default PATH for system services; stdin /dev/null;
# a session of its own.
unit_value() { sed -n "/^\[Service\]/,/^\[/s/^$1=//p" "$UNIT"; }
exec_start="$(unit_value ExecStart)"
[ "$(printf '%s\n' "$exec_start" | wc -l)" -eq 1 ] || fail "expected one ExecStart= in $UNIT, got: $exec_start"
case "$exec_start" in [-@+!:]*) fail "ExecStart prefixes are not handled here: $exec_start" ;; esac
read -ra argv <<< "$exec_start"
env_args=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
while read -r e; do
  [ -n "$e" ] || continue
  case "$e" in *[\"\'\\]*) fail "quoted Environment= values are not handled here: $e" ;; esac
  read -ra words <<< "$e"
  env_args+=("${words[@]}")
done <<< "$(unit_value Environment)"
[ -z "$(unit_value EnvironmentFile)" ] || fail "EnvironmentFile= is not handled here"
limit() { # systemd's "infinity" is ulimit's "unlimited"
  local v; v="$(unit_value "$1")"; [ "$v" = infinity ] && v=unlimited; echo "$v"
}
nofile="$(limit LimitNOFILE)" nproc="$(limit LimitNPROC)" core="$(limit LimitCORE)"
oom="$(unit_value OOMScoreAdjust)" umask_v="$(unit_value UMask)" wd="$(unit_value WorkingDirectory)"
# Without CAP_SYS_RESOURCE (a container) a hard limit cannot be raised nor the OOM score
# lowered: then the test runs with the hard limit and the current score, and says so.
fit_limit() { # ULIMIT-FLAG VALUE NAME
  [ -n "$2" ] || return 0
  if (ulimit "$1" "$2") 2>/dev/null; then echo "$2"; return; fi
  log "note: cannot set $3=$2 here (no CAP_SYS_RESOURCE?); using the hard limit $(ulimit -H "$1")"
  ulimit -H "$1"
}
nofile="$(fit_limit -n "$nofile" LimitNOFILE)"
nproc="$(fit_limit -u "$nproc" LimitNPROC)"
core="$(fit_limit -c "$core" LimitCORE)"
if [ -n "$oom" ] && ! (echo "$oom" > /proc/self/oom_score_adj) 2>/dev/null; then
  log "note: cannot set OOMScoreAdjust=$oom here (no CAP_SYS_RESOURCE?); moatd keeps $(cat /proc/self/oom_score_adj)"
  oom="$(cat /proc/self/oom_score_adj)"
fi
log "starting as the unit does: ${argv[*]} (LimitNOFILE=$nofile LimitNPROC=$nproc LimitCORE=$core OOMScoreAdjust=$oom)"
(
  cd "${wd:-/}"
  umask "${umask_v:-0022}"
  [ -z "$nofile" ] || ulimit -n "$nofile"
  [ -z "$nproc" ] || ulimit -u "$nproc"
  [ -z "$core" ] || ulimit -c "$core"
  [ -z "$oom" ] || echo "$oom" > /proc/self/oom_score_adj
  exec env -i "${env_args[@]}" setsid "${argv[@]}" < /dev/null
) >> "$work/moatd.log" 2>&1 &
moatd_pid=$!
up=0
for _ in $(seq 300); do
  kill -0 "$moatd_pid" 2>/dev/null || fail "moatd exited at start-up"
  # Listening (ss, from iproute2), not merely bound.
  if [ -S "$SOCK" ] && [ -n "$(ss -Hxl "src $SOCK" 2>/dev/null)" ]; then
    up=1; break
  fi
  sleep 0.1
done
[ "$up" = 1 ] || fail "moatd did not serve $SOCK within 30 s"
[ "$(stat -c %a "$SOCK")" = 660 ] || fail "$SOCK is mode $(stat -c %a "$SOCK"), not 0660"
[ "$(cat "/proc/$moatd_pid/oom_score_adj")" = "${oom:-0}" ] || fail "moatd's oom_score_adj is not $oom"
log "moatd (pid $moatd_pid) serves $SOCK"

# --- moatd check ----------------------------------------------------------------------------
# Each item's expected level on this host: what the host lacks may be warn or missing,
# everything the package provides or depends on must be ok.
log "moatd check"
set +e
report="$(/usr/bin/moatd check 2>&1)"
check_rc=$?
set -e
printf '%s\n' "$report" | sed 's/^/    /' >&2
[ "$check_rc" -eq 0 ] || fail "moatd check exited $check_rc"
[ "$(printf '%s\n' "$report" | tail -n 1)" = "the configured runtime handlers can run pods on this host" ] ||
  fail "moatd check's verdict: $(printf '%s\n' "$report" | tail -n 1)"
hw_kvm=0
[ -c /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo && hw_kvm=1
cni_conf=0
compgen -G "/etc/cni/net.d/*.conf*" >/dev/null && cni_conf=1
[ -f /sys/fs/cgroup/cgroup.controllers ] && cgroup2=ok || cgroup2=warn
[ -c /dev/vhost-vsock ] && vhost=ok || vhost=missing
[ -c /dev/net/tun ] && tun=ok || tun=missing
if [ "$hw_kvm" = 1 ]; then
  kvm=ok handler=ok handler_detail="auto -> builtin"
  # vmlinux-moat packaged: the minimal kernel (ok); else the common one (warn).
  [ -f $GUEST/vmlinux-moat ] && builtin=ok || builtin=warn
else
  kvm="warn|missing" handler=warn handler_detail="auto -> qemu" builtin=ok
fi
[ "$cni_conf" = 1 ] && cni=ok || cni=warn
expect() { # ITEM LEVELS [DETAIL-SUBSTRING]
  local line level
  line="$(printf '%s\n' "$report" | awk -v item="$1" 'substr($0, 10, length(item) + 1) == item " "')"
  [ -n "$line" ] || fail "moatd check has no '$1' line"
  level="${line%% *}"
  [[ "|$2|" == *"|$level|"* ]] || fail "moatd check: '$1' is $level, expected $2: $line"
  [ -z "${3:-}" ] || [[ "$line" == *"$3"* ]] || fail "moatd check: '$1' does not say '$3': $line"
}
expect "KVM" "$kvm"
expect "vhost-vsock" "$vhost"
expect "tun" "$tun"
expect "cgroup v2" "$cgroup2"
expect "CNI network" "$cni"
expect "CNI plugins" ok
expect "guest image" ok "kernel $kernel, initramfs $initramfs"
expect "built-in kernel" "$builtin"
expect "QEMU" ok
expect "handler moat" "$handler" "$handler_detail"
# Anything else it prints must be ok.
others="$(printf '%s\n' "$report" | sed '$d' | grep -vE '^(ok|warn|missing) +(KVM|vhost-vsock|tun|cgroup v2|CNI network|CNI plugins|guest image|built-in kernel|QEMU|handler moat) ' | grep -v '^ok ' || true)"
[ -z "$others" ] || fail "moatd check printed what this test does not expect: $others"

# --- a pod through the socket ---------------------------------------------------------------
if [ "${MOAT_DEB_POD:-1}" = 0 ]; then
  log "SKIPPED the pod through $SOCK (MOAT_DEB_POD=0)"
else
  log "a pod through $SOCK: $cri_smoke"
  timeout 600 "$cri_smoke" --socket "$SOCK" || fail "cri-smoke failed"
  left="$(ls -A /run/moat/vm 2>/dev/null || true)"
  [ -z "$left" ] || fail "pod directories left in /run/moat/vm after cri-smoke: $left"
fi

# --- stop -----------------------------------------------------------------------------------
log "stopping moatd (SIGTERM)"
kill -TERM "$moatd_pid"
stopped=0
for _ in $(seq 300); do
  kill -0 "$moatd_pid" 2>/dev/null || { stopped=1; break; }
  sleep 0.1
done
[ "$stopped" = 1 ] || fail "moatd did not exit within 30 s of SIGTERM"
set +e
wait "$moatd_pid"
moatd_rc=$?
set -e
moatd_pid=""
[ "$moatd_rc" -eq 0 ] || fail "moatd exited $moatd_rc after SIGTERM"
left="$(pod_pids)"
[ -z "$left" ] || fail "pod VM processes left after moatd stopped: $left"

# --- purge ----------------------------------------------------------------------------------
log "dpkg --purge moat"
dpkg --purge moat || fail "dpkg --purge moat"
[ -z "$(dpkg-query -W -f='${Status}' moat 2>/dev/null | grep -v not-installed || true)" ] ||
  fail "moat is still known to dpkg: $(dpkg-query -W -f='${Status}' moat)"
for p in "$UNIT" /usr/bin/moatd /usr/share/moat /etc/moat /var/lib/moat /run/moat /usr/share/doc/moat; do
  [ ! -e "$p" ] && [ ! -L "$p" ] || fail "$p is still there after the purge"
done
units="$(find /etc/systemd/system -name moatd.service 2>/dev/null)"
[ -z "$units" ] || fail "unit links left after the purge: $units"

echo "deb package: ok"
