#!/usr/bin/env bash
# Runs snapshot_bench against a 4-vCPU testbed guest: live (process_vm_readv on its qemu) and on
# an in-memory image of it (an ELF core written by `stallctl dump`). Root; builds nothing.
# Usage: run_live.sh BUILD_DIR [extra benchmark flags...]
set -euo pipefail
build=${1:?usage: run_live.sh BUILD_DIR}
shift
here=$(cd "$(dirname "$0")" && pwd)
tb="python3 $here/../../testbed/testbed.py"
bench=$(find "$build" -name snapshot_bench -type f -perm -u+x | head -1)
stallctl=$(find "$build" -name stallctl -type f -perm -u+x | head -1)
[ -n "$bench" ] && [ -n "$stallctl" ] || { echo "run_live.sh: build snapshot_bench and stallctl first" >&2; exit 1; }
name=stallmon-tb-snapbench-$$
work=$(mktemp -d /var/tmp/stallmon-snapbench.XXXXXX)
cleanup() { $tb destroy "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
$tb start "$name" --vcpus 4 --memory 512 --scenario ipi,wakeups,sleepers --wdt 5 --wait 240 >"$work/start.json"
pid=$($tb qemu-pid "$name")
"$stallctl" ram-layout --domain "$name" >"$work/ranges"
"$stallctl" dump --stop --qemu-pid "$pid" --ranges "$work/ranges" --out "$work/core"
"$bench" --qemu-pid "$pid" --ranges "$work/ranges" --core "$work/core" "$@"
