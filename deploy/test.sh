#!/usr/bin/env bash
# Builds stallmon and runs its tests: the unit tier (hermetic, fast), the integration tier (real
# QEMU guests under libvirt; needs root), and the unit tier again under AddressSanitizer +
# UndefinedBehaviorSanitizer with leak checking (its own clang build, compiled at idle priority
# while the other two tiers run). This is the README's test command and what CI runs. `all`
# stops at the first failed tier.
# The fuzz tier (not part of `all`; .ci/run runs a short sample of it from the asan tree) builds
# the parsers' libFuzzer targets with clang in build/fuzz (or STALLMON_FUZZ_BUILD_DIR) and runs
# each for STALLMON_FUZZ_SECONDS (default 20).
# The soak tier (on demand, not part of `all`) watches the healthy busy guest for
# STALLMON_SOAK_SECONDS (default 600); `all` and `integration` run a bounded sample of it
# (STALLMON_HEALTHY_SECONDS, default 60) so that CI stays within its time budget.
# The matrix tier (on demand, not part of `all`; the integration tier runs a two-run sample)
# runs tests/testbed/matrix.py: every fault x every kernel flavor, the faulted vCPU at random,
# against this build's stallmond, and writes its table to build/matrix.md (STALLMON_MATRIX_ARGS
# overrides the faults/kernels; ~1-2 min per run on 2 cores).
#
# Usage: deploy/test.sh [unit|asan|integration|all|fuzz|soak|matrix]   (default: all)
# Environment: STALLMON_BUILD_DIR (default build/release), STALLMON_ASAN_BUILD_DIR (default
# build/asan), STALLMON_JOBS (default: nproc), STALLMON_FUZZ_SECONDS (default 20),
# STALLMON_FUZZ_BUILD_DIR (default: configure build/fuzz; e.g. build/asan to reuse that tree),
# STALLMON_SOAK_SECONDS (default 600, at most 3600: the test's CTest timeout is 4200 s),
# STALLMON_HEALTHY_SECONDS (default 60), STALLMON_DEBUG_INFO (default ON; OFF builds the
# release tree without debug info, as .ci/run does: about half of its compile time).
set -euo pipefail

tier="${1:-all}"
case "$tier" in unit|asan|integration|all|fuzz|soak|matrix) ;; *) echo "usage: $0 [unit|asan|integration|all|fuzz|soak|matrix]" >&2; exit 2 ;; esac

root="$(cd "$(dirname "$0")/.." && pwd)"
jobs="${STALLMON_JOBS:-$(nproc)}"

if [ "$tier" = fuzz ]; then
  # Every target and everything it links instrumented for libFuzzer, with ASan+UBSan: by default
  # its own -O2 tree (build/fuzz: several times the executions per second of the -O0 asan tree,
  # for long runs). STALLMON_FUZZ_BUILD_DIR=build/asan reuses the asan preset's tree, which builds
  # the same targets at -O0 (CI's short sample: no third compile of the tree).
  seconds="${STALLMON_FUZZ_SECONDS:-20}"
  if [ -n "${STALLMON_FUZZ_BUILD_DIR:-}" ]; then
    fuzz_build="$STALLMON_FUZZ_BUILD_DIR"
    if ! grep -q '^STALLMON_FUZZ:BOOL=ON' "$fuzz_build/CMakeCache.txt" 2>/dev/null; then
      echo "$fuzz_build is not a tree configured with STALLMON_FUZZ=ON (the asan preset is)" >&2
      exit 2
    fi
  else
    fuzz_build="$root/build/fuzz"
    cmake -S "$root" -B "$fuzz_build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTALLMON_WERROR=ON \
      -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DSTALLMON_SANITIZE=ON -DSTALLMON_FUZZ=ON \
      -DSTALLMON_BUILD_BENCHMARKS=OFF \
      -DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link -DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link
  fi
  cmake --build "$fuzz_build" -j "$jobs" --target fuzz_all
  rc=0
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  for bin in "$fuzz_build"/tests/fuzz/fuzz_*; do
    name="$(basename "$bin")"
    name="${name#fuzz_}"
    [ -x "$bin" ] || continue
    # A scratch copy of the seeds: new inputs found in CI are not written into the tree.
    mkdir -p "$work/$name"
    cp "$root/tests/fuzz/corpus/$name"/* "$work/$name"/ 2>/dev/null || true
    if "$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$work/crash-$name-" "$work/$name" > "$work/$name.log" 2>&1; then
      echo "fuzz $name: ok, $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$name.log" | grep -o '[0-9]*$') executions"
    else
      echo "fuzz $name: FAILED" >&2
      tail -60 "$work/$name.log" >&2
      ls "$work"/crash-"$name"-* >&2 2>/dev/null || true
      rc=1
    fi
  done
  exit "$rc"
fi

build="${STALLMON_BUILD_DIR:-$root/build/release}"
asan_build="${STALLMON_ASAN_BUILD_DIR:-$root/build/asan}"

# The guest kits (kernel packages downloaded, test modules built against their headers) are
# fetched in the background while the code compiles: mostly network and dpkg, ~1 min a kernel.
kits_pid=""
kits_log=""
if [ "$tier" = all ] || [ "$tier" = integration ] || [ "$tier" = soak ]; then
  kits_log="$(mktemp /tmp/stallmon-kits.XXXXXX)"
  (
    set -e
    python3 "$root/tests/testbed/testbed.py" kit
    grep -v '^#' "$root/tests/testbed/integration-kernels" | while read -r k; do
      [ -n "$k" ] && python3 "$root/tests/testbed/testbed.py" kit --kernel "$k"
    done
  ) > "$kits_log" 2>&1 &
  kits_pid=$!
fi
asan_pid=""
asan_log=""
cleanup() {
  [ -z "$kits_pid" ] || kill "$kits_pid" 2>/dev/null || true
  [ -z "$asan_pid" ] || kill -- "-$asan_pid" 2>/dev/null || true
  rm -f "$kits_log" "$asan_log"
}
trap cleanup EXIT

if [ "$tier" != asan ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTALLMON_WERROR=ON \
    -DSTALLMON_DEBUG_INFO="${STALLMON_DEBUG_INFO:-ON}"
  cmake --build "$build" -j "$jobs"
fi

if [ "$tier" = matrix ]; then
  python3 "$root/tests/testbed/testbed.py" libvirt-up
  # shellcheck disable=SC2086  # STALLMON_MATRIX_ARGS is a list of options
  exec python3 "$root/tests/testbed/matrix.py" --stallmond "$build/agent/daemon/stallmond" \
    --stallctl "$build/agent/cli/stallctl" --out "$build/matrix.md" \
    ${STALLMON_MATRIX_ARGS:---kernels 6.1,6.12,6.1-rt,6.1-cloud,6.12-rt,6.12-cloud}
fi

# `all`: the asan tree compiles at SCHED_IDLE while the unit and integration tiers run. The real
# guests leave ~30 % of the cores idle (boots, waits), and an idle-class task gives a CPU back the
# moment anything else wants it (a waking vCPU thread preempts it at once: no run delay the tests
# could see). What is left when the integration tier ends finishes at normal priority; the asan
# unit tier runs after it. In its own session so that all of it can be re-prioritised or killed.
# The CMakePresets.json "asan" preset: clang at -O0, sanitizers (and libFuzzer's coverage) on
# every object, no benchmarks and no real-guest tests, so only what the unit tier runs is built
# (the fuzz targets replay their seeds in it).
build_asan() {
  cmake --preset asan -S "$root" -B "$asan_build" -DSTALLMON_WERROR=ON && cmake --build "$asan_build" -j "$jobs"
}
if [ "$tier" = all ]; then
  asan_log="$(mktemp /tmp/stallmon-asan-build.XXXXXX)"
  export -f build_asan
  root="$root" asan_build="$asan_build" jobs="$jobs" setsid chrt --idle 0 bash -c build_asan > "$asan_log" 2>&1 &
  asan_pid=$!
  asan_t0=$(date +%s)
fi

rc=0
if [ "$tier" = unit ] || [ "$tier" = all ]; then
  ctest --test-dir "$build" -L unit -j "$jobs" --output-on-failure --no-tests=error --timeout 120 \
    || rc=1
  # The Debian package from this build (deploy/package.sh: install, strip, man pages, lintian;
  # ~40 s), checked without installing it (tests/package/package_test.sh has the other stages).
  STALLMON_PACKAGE_BUILD_DIR="$build" "$root/tests/package/package_test.sh" deb || rc=1
fi
if [ "$rc" = 0 ] && { [ "$tier" = integration ] || [ "$tier" = all ] || [ "$tier" = soak ]; }; then
  # Real guests: one at a time (2 cores, TCG), each test binary boots and shares its own guest.
  # Bring up libvirt; the guest kits were started in the background above.
  python3 "$root/tests/testbed/testbed.py" libvirt-up
  t_kits=$(date +%s)
  if ! wait "$kits_pid"; then
    # A kit that could not be built here is built (or fails with its reason) by the first test
    # that boots its kernel.
    echo "guest kits: not all built ahead:" >&2
    tail -20 "$kits_log" >&2
  fi
  kits_pid=""
  echo "guest kits ready ($(( $(date +%s) - t_kits )) s waited for them)"
  # No reruns: a failed test fails the run. The fixture's boot-health gate (every guest CPU's
  # timer interrupts advance, no Oops on the console, before any fault) replaces an unhealthy
  # guest instead; each replacement is logged here and counted below.
  health_log="$(mktemp /tmp/stallmon-testbed-health.XXXXXX)"
  t0=$(date +%s)
  if [ "$tier" = soak ]; then
    STALLMON_TESTBED_HEALTH_LOG="$health_log" \
    STALLMON_HEALTHY_SECONDS="${STALLMON_SOAK_SECONDS:-600}" \
      ctest --test-dir "$build" -R '^diagnosis_healthy$' --output-on-failure --no-tests=error \
      || rc=1
  else
    STALLMON_TESTBED_HEALTH_LOG="$health_log" \
    STALLMON_HEALTHY_SECONDS="${STALLMON_HEALTHY_SECONDS:-60}" \
      ctest --test-dir "$build" -L integration -j 1 --output-on-failure --no-tests=error \
      --timeout 900 || rc=1
  fi
  # One record per replaced guest; a record's reason may span lines (a console tail).
  replaced=$(grep -c '^STALLMON-TESTBED ' "$health_log" || true)
  echo "integration: $(( $(date +%s) - t0 )) s; guests replaced by the boot-health gate: $replaced"
  [ "$replaced" -eq 0 ] || cat "$health_log"
  rm -f "$health_log"
fi
if [ "$rc" = 0 ] && { [ "$tier" = asan ] || [ "$tier" = all ]; }; then
  # Any report fails the test: UBSan halts (-fno-sanitize-recover), ASan and LSan exit non-zero.
  if [ -n "$asan_pid" ]; then
    # Whatever still compiles gets normal priority (ninja's later children inherit it).
    for p in $(pgrep -g "$asan_pid" 2>/dev/null); do chrt --other -p 0 "$p" 2>/dev/null || true; done
    echo "asan build: $(( $(date +%s) - asan_t0 )) s in the background so far, finishing"
    if ! wait "$asan_pid"; then
      asan_pid=""
      tail -80 "$asan_log" >&2
      echo "asan build failed" >&2
      exit 1
    fi
    asan_pid=""
    echo "asan build: done $(( $(date +%s) - asan_t0 )) s after it started"
  else
    build_asan
  fi
  ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    ctest --test-dir "$asan_build" -L unit -j "$jobs" --output-on-failure --no-tests=error \
    --timeout 300 || rc=1
fi
exit "$rc"
