#!/usr/bin/env bash
# Fuzzes Moat's parsers of untrusted bytes: the cargo-fuzz targets in fuzz/ (one per parser
# family; fuzz/README.md lists them).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Builds the targets once, then runs each for SECONDS_PER_TARGET (default 20) from its seed
# corpus in fuzz/corpus/<target>. Exits 1 if any target crashed, timed out or ran out of
# memory, naming the target and the input that did it (kept in fuzz/artifacts/<target>/).
# What the fuzzer learns (new corpus entries) goes to a temporary directory and is thrown
# away, so a run leaves the repository as it was.
#
# Longer runs, to grow the corpus (then minimize it: see fuzz/README.md):
#   MOAT_FUZZ_KEEP_CORPUS=1 MOAT_FUZZ_JOBS=4 scripts/fuzz.sh 3600
#
# Environment:
#   MOAT_FUZZ_KEEP_CORPUS=1   new corpus entries go into fuzz/corpus/<target> (git sees them)
#   MOAT_FUZZ_JOBS=N          N fuzzing processes per target (libFuzzer -fork=N)
#   MOAT_FUZZ_SANITIZER=S     address, leak, memory, thread or none (default: none; address
#                             finds memory errors in unsafe code, at about half the speed and
#                             a longer build)
#   MOAT_FUZZ_TIMEOUT=S       seconds one input may take before it counts as a hang (10)
#   MOAT_FUZZ_RSS_MB=M        memory limit of the fuzzing process (2048)
#   MOAT_FUZZ_ARGS="..."      more libFuzzer flags
#
# Needs a nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz if
# missing. Run as root for full coverage of layer_tar (device nodes, owners, trusted.*
# xattrs) and virtio_fs.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cargo

secs="${1:-20}"
[ $# -gt 0 ] && shift
[[ "$secs" =~ ^[0-9]+$ ]] && [ "$secs" -gt 0 ] || die "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]"
sanitizer="${MOAT_FUZZ_SANITIZER:-none}"
timeout="${MOAT_FUZZ_TIMEOUT:-10}"
rss_mb="${MOAT_FUZZ_RSS_MB:-2048}"
jobs="${MOAT_FUZZ_JOBS:-1}"

rustup run nightly rustc --version >/dev/null 2>&1 ||
  die "cargo-fuzz needs a nightly toolchain: rustup toolchain install nightly"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo +stable install cargo-fuzz --locked
fi

cd "$MOAT_ROOT/fuzz"
mapfile -t all < <(cargo +nightly fuzz list)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  printf '%s\n' "${all[@]}" | grep -qx "$t" || die "no fuzz target $t (have: ${all[*]})"
done

# Release with debug assertions and overflow checks (cargo-fuzz's default without -O), and 16
# codegen units instead of cargo-fuzz's 1: the build (moatd and all its dependencies) is the
# slow part of a short run.
build=(cargo +nightly fuzz build --sanitizer "$sanitizer" --codegen-units 16)
log "building the fuzz targets (${build[*]})"
start=$(date +%s)
if [ ${#targets[@]} -eq ${#all[@]} ]; then
  "${build[@]}"
else
  for t in "${targets[@]}"; do "${build[@]}" "$t"; done
fi
log "built in $(($(date +%s) - start)) s"
host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin_dir="$MOAT_ROOT/fuzz/target/$host/release"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  seeds="$MOAT_ROOT/fuzz/corpus/$t"
  mkdir -p "$seeds" "$MOAT_ROOT/fuzz/artifacts/$t"
  if [ -n "${MOAT_FUZZ_KEEP_CORPUS:-}" ]; then
    corpus=("$seeds")
  else
    # New entries land in the first directory: a temporary one.
    mkdir -p "$work/$t"
    corpus=("$work/$t" "$seeds")
  fi
  # Inputs that once crashed the target run first, every time (libFuzzer reads each
  # corpus directory before fuzzing): a fixed bug that comes back fails here.
  [ -d "$MOAT_ROOT/fuzz/regressions/$t" ] && corpus+=("$MOAT_ROOT/fuzz/regressions/$t")
  stamp="$work/$t.stamp"
  touch "$stamp"
  args=(-max_total_time="$secs" -rss_limit_mb="$rss_mb" -timeout="$timeout"
    -artifact_prefix="$MOAT_ROOT/fuzz/artifacts/$t/" -print_final_stats=1)
  [ "$jobs" -gt 1 ] && args+=(-fork="$jobs")
  # shellcheck disable=SC2206 # word splitting of the extra flags is wanted
  args+=(${MOAT_FUZZ_ARGS:-})
  log "fuzzing $t for $secs s"
  set +e
  "$bin_dir/$t" "${args[@]}" "${corpus[@]}" >"$work/$t.log" 2>&1
  rc=$?
  set -e
  grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+.*DONE' "$work/$t.log" |
    sed "s/^/    $t: /" >&2 || true
  # Fork mode with -ignore_crashes exits 0 after crashes: new artifacts count too.
  artifact="$(find "$MOAT_ROOT/fuzz/artifacts/$t" -type f -newer "$stamp" \
    \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | head -n 1)"
  if [ "$rc" -ne 0 ] || [ -n "$artifact" ]; then
    grep -E 'panicked at|^==[0-9]+==|ERROR: libFuzzer|SUMMARY' "$work/$t.log" | head -n 5 >&2 || true
    tail -n 30 "$work/$t.log" > "$MOAT_ROOT/fuzz/artifacts/$t/last-run.log"
    failed+=("$t: exit $rc, input ${artifact:-(none saved)}, log fuzz/artifacts/$t/last-run.log")
    log "FAILED $t (${artifact:-no artifact})"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  printf 'error: fuzzing failed:\n' >&2
  printf '  %s\n' "${failed[@]}" >&2
  printf 'reproduce: fuzz/target/%s/release/<target> <input>\n' "$host" >&2
  exit 1
fi
log "fuzzing: ${#targets[@]} targets, $secs s each, no crash"
