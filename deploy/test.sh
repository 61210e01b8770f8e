#!/usr/bin/env bash
# Builds stallmon and runs its tests: the unit tier (hermetic, fast), the unit tier again under
# AddressSanitizer + UndefinedBehaviorSanitizer with leak checking (its own build), then the
# integration tier (real QEMU guests under libvirt; needs root). This is the README's test command
# and what CI runs. `all` runs the tiers cheapest first and stops at the first failed tier.
# The fuzz tier (not part of `all`; .ci/run runs a short sample of it) builds the parsers'
# libFuzzer targets with clang in build/fuzz and runs each for STALLMON_FUZZ_SECONDS (default 20).
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
# STALLMON_SOAK_SECONDS (default 600, at most 3600: the test's CTest timeout is 4200 s),
# STALLMON_HEALTHY_SECONDS (default 60), STALLMON_DEBUG_INFO (default ON; OFF builds the
# release tree without debug info, as .ci/run does: about half of its compile time).
set -euo pipefail

tier="${1:-all}"
case "$tier" in unit|asan|integration|all|fuzz|soak|matrix) ;; *) echo "usage: $0 [unit|asan|integration|all|fuzz|soak|matrix]" >&2; exit 2 ;; esac

root="$(cd "$(dirname "$0")/.." && pwd)"
jobs="${STALLMON_JOBS:-$(nproc)}"

if [ "$tier" = fuzz ]; then
  # Every target and everything it links instrumented for libFuzzer, with ASan+UBSan.
  fuzz_build="$root/build/fuzz"
  seconds="${STALLMON_FUZZ_SECONDS:-20}"
  cmake -S "$root" -B "$fuzz_build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTALLMON_WERROR=ON \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DSTALLMON_SANITIZE=ON -DSTALLMON_FUZZ=ON \
    -DSTALLMON_BUILD_BENCHMARKS=OFF \
    -DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link -DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link
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
  trap '[ -z "$kits_pid" ] || kill "$kits_pid" 2>/dev/null || true; rm -f "$kits_log"' EXIT
fi

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

rc=0
if [ "$tier" = unit ] || [ "$tier" = all ]; then
  ctest --test-dir "$build" -L unit -j "$jobs" --output-on-failure --no-tests=error --timeout 120 \
    || rc=1
  # The Debian package from this build (deploy/package.sh: install, strip, man pages, lintian;
  # ~40 s), checked without installing it (tests/package/package_test.sh has the other stages).
  STALLMON_PACKAGE_BUILD_DIR="$build" "$root/tests/package/package_test.sh" deb || rc=1
fi
if [ "$rc" = 0 ] && { [ "$tier" = asan ] || [ "$tier" = all ]; }; then
  # The CMakePresets.json "asan" preset: -O1, sanitizers on every object, no benchmarks and no
  # real-guest tests, so only what the unit tier runs is built. Any report fails the test:
  # UBSan halts (-fno-sanitize-recover), ASan and LSan exit non-zero.
  cmake --preset asan -S "$root" -B "$asan_build" -DSTALLMON_WERROR=ON
  cmake --build "$asan_build" -j "$jobs"
  ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    ctest --test-dir "$asan_build" -L unit -j "$jobs" --output-on-failure --no-tests=error \
    --timeout 300 || rc=1
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
  replaced=$(grep -c . "$health_log" || true)
  echo "integration: $(( $(date +%s) - t0 )) s; guests replaced by the boot-health gate: $replaced"
  [ "$replaced" -eq 0 ] || cat "$health_log"
  rm -f "$health_log"
fi
exit "$rc"
