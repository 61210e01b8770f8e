#!/usr/bin/env bash
# Issue 13's acceptance for type profiles, on demand only (not CI: the -dbg package is ~860 MB
# and its extraction ~1 min). Root, the testbed (libvirt, TCG), network for apt.
#
#   profile_acceptance.sh BUILD_DIR [KERNEL_RELEASE]     (default: the testbed kit's kernel)
#
# 1. linux-image-REL-dbg is downloaded (apt-get download) and its vmlinux extracted into
#    $STALLMON_DBG_CACHE (default /var/cache/stallmon/dbg/REL; kept for later runs).
# 2. `stallctl profile make` from its DWARF, and again from its own .BTF section: the two
#    profiles must be byte-identical (DWARF and BTF agree on every member the readers ask for).
# 3. A 4-vCPU guest of that kernel is booted and its RAM written to an ELF core once (no
#    --stop: both inspections read the same bytes, so they must agree exactly). `stallctl inspect
#    --json --backtraces` with the guest's BTF, with --ignore-guest-btf --profile-dir, and with
#    --ignore-guest-btf --debug-dir (the vmlinux found by BUILD-ID/OSRELEASE): every snapshot
#    field must be equal (taken_at_ns and duration_ns aside).
# Seed case 1 with the daemon on a profile: run the seed-case-1 scenario with
# `introspection: {ignore_guest_btf: true, profile_dir: DIR}` (see deploy/stallmond.yaml).
set -euo pipefail
build=${1:?usage: profile_acceptance.sh BUILD_DIR [KERNEL_RELEASE]}
here=$(cd "$(dirname "$0")" && pwd)
tb="python3 $here/../../testbed/testbed.py"
stallctl=$(find "$build" -name stallctl -type f -perm -u+x | head -1)
[ -n "$stallctl" ] || { echo "profile_acceptance: build stallctl first" >&2; exit 1; }
rel=${2:-}
kit_args=()
[ -n "$rel" ] && kit_args=(--kernel "linux-image-$rel")
kit=$($tb kit "${kit_args[@]}")
rel=$(printf '%s' "$kit" | python3 -c 'import json,sys; print(json.load(sys.stdin)["kernel_release"])')
pkg=$(printf '%s' "$kit" | python3 -c 'import json,sys; print(json.load(sys.stdin)["package"])')

cache=${STALLMON_DBG_CACHE:-/var/cache/stallmon/dbg/$rel}
vmlinux=$cache/usr/lib/debug/boot/vmlinux-$rel
if [ ! -s "$vmlinux" ]; then
  mkdir -p "$cache"
  (cd "$cache" && apt-get download "linux-image-$rel-dbg" >/dev/null)
  deb=$(ls "$cache"/linux-image-"$rel"-dbg_*.deb | head -1)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$cache" ./usr/lib/debug/boot
  rm -f "$deb"
fi

work=$(mktemp -d /var/tmp/stallmon-profile-acceptance.XXXXXX)
name=stallmon-tb-profile-$$
cleanup() { $tb destroy "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/profiles"
fail=0

echo "== profile from DWARF and from BTF ($vmlinux)"
"$stallctl" profile make "$vmlinux" --dir "$work/profiles"
id=$(basename "$(ls "$work/profiles"/*.profile)" .profile)
"$stallctl" profile make --btf "$vmlinux" --build-id "$id" -o "$work/btf.profile"
if cmp -s "$work/profiles/$id.profile" "$work/btf.profile"; then
  echo "ok: identical ($(wc -c <"$work/btf.profile") bytes)"
else
  echo "FAIL: the DWARF and BTF profiles differ:"; diff "$work/btf.profile" "$work/profiles/$id.profile" || true; fail=1
fi

echo "== live guest ($pkg)"
$tb start "$name" --kernel "$pkg" --vcpus 4 --memory 512 --scenario ipi,wakeups,sleepers --wait 240 >"$work/start.json"
pid=$($tb qemu-pid "$name")
"$stallctl" ram-layout --domain "$name" >"$work/ranges"
"$stallctl" dump --qemu-pid "$pid" --ranges "$work/ranges" --out "$work/core"
inspect() { "$stallctl" inspect --core "$work/core" --json --backtraces --printk 50 "$@" | jq -S 'del(.taken_at_ns, .duration_ns)'; }
inspect >"$work/btf.json"
inspect --ignore-guest-btf --profile-dir "$work/profiles" --debug-dir '' >"$work/profile.json"
inspect --ignore-guest-btf --debug-dir "$cache/usr/lib/debug" >"$work/debuginfo.json"
for v in profile debuginfo; do
  if [ -s "$work/btf.json" ] && cmp -s "$work/btf.json" "$work/$v.json"; then
    echo "ok: snapshot through the $v equals the BTF one ($(jq '.cpus | length' "$work/btf.json") CPUs, $(jq '[.cpus[].backtrace.frames // [] | length] | add' "$work/btf.json") frames)"
  else
    echo "FAIL: snapshot through the $v differs:"; diff "$work/btf.json" "$work/$v.json" | head -40 || true; fail=1
  fi
done
"$stallctl" inspect --core "$work/core" --ignore-guest-btf --profile-dir /nonexistent --debug-dir '' --printk 0 >/dev/null 2>"$work/none.err" && fail=1
echo "without any source: $(cat "$work/none.err")"
exit $fail
