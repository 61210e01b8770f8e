#!/usr/bin/env bash
# Builds stallmon and runs its tests: the unit tier (hermetic, fast), then the integration tier
# (real QEMU guests under libvirt; needs root). This is the README's test command and what CI runs.
#
# Usage: deploy/test.sh [unit|integration|all]   (default: all)
# Environment: STALLMON_BUILD_DIR (default build/release), STALLMON_JOBS (default: nproc).
set -euo pipefail

tier="${1:-all}"
case "$tier" in unit|integration|all) ;; *) echo "usage: $0 [unit|integration|all]" >&2; exit 2 ;; esac

root="$(cd "$(dirname "$0")/.." && pwd)"
build="${STALLMON_BUILD_DIR:-$root/build/release}"
jobs="${STALLMON_JOBS:-$(nproc)}"

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTALLMON_WERROR=ON
cmake --build "$build" -j "$jobs"

rc=0
if [ "$tier" = unit ] || [ "$tier" = all ]; then
  ctest --test-dir "$build" -L unit -j "$jobs" --output-on-failure --no-tests=error --timeout 120 \
    || rc=1
fi
if [ "$tier" = integration ] || [ "$tier" = all ]; then
  # Real guests: one at a time (2 cores, TCG), each test binary boots and shares its own guest.
  # Bring up libvirt and build the guest kit once, before the tests race to do it.
  python3 "$root/tests/testbed/testbed.py" libvirt-up
  python3 "$root/tests/testbed/testbed.py" kit
  # No reruns: a failed test fails the run. The fixture's boot-health gate (every guest CPU's
  # timer interrupts advance, no Oops on the console, before any fault) replaces an unhealthy
  # guest instead; each replacement is logged here and counted below.
  health_log="$(mktemp /tmp/stallmon-testbed-health.XXXXXX)"
  t0=$(date +%s)
  STALLMON_TESTBED_HEALTH_LOG="$health_log" \
    ctest --test-dir "$build" -L integration -j 1 --output-on-failure --no-tests=error \
    --timeout 900 || rc=1
  replaced=$(grep -c . "$health_log" || true)
  echo "integration: $(( $(date +%s) - t0 )) s; guests replaced by the boot-health gate: $replaced"
  [ "$replaced" -eq 0 ] || cat "$health_log"
  rm -f "$health_log"
fi
exit "$rc"
