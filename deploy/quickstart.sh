#!/usr/bin/env bash
# The main job in one command, on a fresh Debian 12 machine (as root):
#   installs the dependencies, builds stallmon, brings up libvirt (also where no systemd runs),
#   boots a demo guest if no domain is running, and runs stallmond in the foreground against it.
#
# Usage: deploy/quickstart.sh [--connect URI] [extra stallmond flags...]
# Environment: STALLMON_BUILD_DIR (default build/release), STALLMON_DEMO_DOMAIN (stallmon-demo).
# Stop with Ctrl-C; remove the demo guest with: virsh destroy stallmon-demo
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
build="${STALLMON_BUILD_DIR:-$root/build/release}"
demo="${STALLMON_DEMO_DOMAIN:-stallmon-demo}"
uri="qemu:///system"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --connect) uri="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

say() { printf '\033[1mquickstart:\033[0m %s\n' "$*" >&2; }

say "installing dependencies (apt)"
bash "$root/deploy/install-deps.sh"

say "building into $build"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSTALLMON_BUILD_TESTS=ON -DSTALLMON_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target stallmond stallctl

testbed=(python3 "$root/tests/testbed/testbed.py")
if [ "$uri" = "qemu:///system" ]; then
  say "making sure libvirtd answers"
  "${testbed[@]}" libvirt-up >/dev/null
  running="$(virsh -q -c "$uri" list --name --state-running | sed '/^$/d')"
  if [ -z "$running" ]; then
    say "no running domain: booting demo guest '$demo' (Debian kernel, busybox initramfs)"
    "${testbed[@]}" kit >/dev/null
    # --owner-pid 0: the demo guest outlives this script; destroy it with virsh when done.
    "${testbed[@]}" start "$demo" --owner-pid 0 --wait 180 >/dev/null
    say "demo guest '$demo' is up (console: $("${testbed[@]}" info "$demo" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("console",""))'))"
  else
    say "watching running domains: $(echo "$running" | tr '\n' ' ')"
  fi
fi

say "running stallmond in the foreground (Ctrl-C to stop)"
exec "$build/agent/daemon/stallmond" --connect "$uri" "${args[@]}"
