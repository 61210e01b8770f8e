#!/usr/bin/env bash
# Tests the Debian package that deploy/package.sh builds. Run as root. Stages (default: all):
#   deb     build the .deb and check it without installing: control fields and Depends, the file
#           list and owners, the conffile, the packaged unit, man pages rendered by man(1) without
#           warnings, and the packaged stallmond --check-config on the packaged config.
#   host    apt install it on this machine, stallmond --check-config, run the installed daemon
#           against a real testbed guest and query it with the installed stallctl, then purge the
#           package (the machine is left as it was). Refuses if stallmon is already installed.
#   chroot  a fresh Debian 12 (debootstrap --variant=minbase, cached as a tarball): apt install
#           ./stallmon_*.deb inside it must pull every runtime library; the installed binaries
#           must load, stallmond --check-config must pass, purge must leave nothing behind.
# Usage: tests/package/package_test.sh [deb|host|chroot|all]...
# Environment: STALLMON_DEB (test this .deb instead of building one), STALLMON_PACKAGE_BUILD_DIR
# (passed to package.sh --build-dir), STALLMON_PACKAGE_CACHE (debootstrap tarball directory,
# default /var/cache/stallmon/package), STALLMON_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(all)
for s in "${stages[@]}"; do
  case "$s" in deb|host|chroot|all) ;; *) echo "usage: $0 [deb|host|chroot|all]..." >&2; exit 2 ;; esac
done
want() { local s; for s in "${stages[@]}"; do [ "$s" = "$1" ] || [ "$s" = all ] && return 0; done; return 1; }

work="$(mktemp -d /var/tmp/stallmon-package-test.XXXXXX)"
cleanups=()
cleanup() {
  local i
  for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do eval "${cleanups[i]}" || true; done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
say() { printf 'package_test: %s\n' "$*" >&2; }
fail() { printf 'package_test: FAIL: %s\n' "$*" >&2; exit 1; }
expect_contains() {  # HAYSTACK NEEDLE WHAT
  grep -qF -- "$2" <<<"$1" || fail "$3: no '$2' in: $1"
}

# ---- build --------------------------------------------------------------------------------------
if [ -n "${STALLMON_DEB:-}" ]; then
  deb="$(realpath "$STALLMON_DEB")"
else
  args=(--out "$work/out")
  [ -n "${STALLMON_PACKAGE_BUILD_DIR:-}" ] && args+=(--build-dir "$STALLMON_PACKAGE_BUILD_DIR")
  start=$SECONDS
  deb="$("$root/deploy/package.sh" "${args[@]}" | tail -1)"
  say "package.sh: $((SECONDS - start)) s"
fi
[ -f "$deb" ] || fail "no package at '$deb'"
version="$(dpkg-deb -f "$deb" Version)"
[ "$(basename "$deb")" = "stallmon_${version}_amd64.deb" ] || fail "file name $(basename "$deb") for version $version"

# ---- deb: static checks -------------------------------------------------------------------------
if want deb; then
  say "checking $deb ($(du -k "$deb" | cut -f1) KiB)"
  [ "$(dpkg-deb -f "$deb" Package)" = stallmon ] || fail "Package field"
  depends="$(dpkg-deb -f "$deb" Depends)"
  # The libraries the binaries link, as dpkg-shlibdeps names them on Debian 12.
  for lib in libc6 libstdc++6 libvirt0 libgrpc++1.51 libprotobuf32 libyaml-cpp0.7 libsystemd0 libelf1; do
    tr ',' '\n' <<<"$depends" | sed 's/^ *//; s/ .*//' | grep -qxF "$lib" || fail "Depends lacks $lib: $depends"
  done
  listing="$(dpkg-deb -c "$deb")"
  for f in ./usr/sbin/stallmond ./usr/bin/stallctl ./lib/systemd/system/stallmond.service \
           ./etc/stallmon/stallmond.yaml ./usr/share/man/man8/stallmond.8.gz ./usr/share/man/man1/stallctl.1.gz \
           ./usr/share/stallmon/prometheus/stallmon-rules.yml ./usr/share/stallmon/prometheus/alertmanager.example.yml \
           ./usr/share/stallmon/prometheus/prometheus.example.yml ./usr/share/doc/stallmon/copyright \
           ./usr/share/doc/stallmon/changelog.gz; do
    grep -qE " $f\$" <<<"$listing" || fail "$f missing from the package"
  done
  if awk '{ print $2 }' <<<"$listing" | grep -qv '^root/root$'; then fail "files not owned by root/root"; fi
  grep -E ' \./usr/(sbin/stallmond|bin/stallctl)$' <<<"$listing" | grep -q '^-rwxr-xr-x' || fail "binaries not 0755"

  ctrl="$work/ctrl"; tree="$work/tree"
  dpkg-deb -e "$deb" "$ctrl"; dpkg-deb -x "$deb" "$tree"
  [ "$(cat "$ctrl/conffiles")" = /etc/stallmon/stallmond.yaml ] || fail "conffiles: $(cat "$ctrl/conffiles")"
  cmp -s "$tree/etc/stallmon/stallmond.yaml" "$root/deploy/stallmond.yaml" || fail "packaged config differs from deploy/stallmond.yaml"
  for s in postinst prerm postrm; do sh -n "$ctrl/$s" || fail "$s: syntax"; done
  grep -q 'install -d -m 0750 -o root -g root /var/lib/stallmon' "$ctrl/postinst" || fail "postinst does not create the state dir"
  # Every start/stop of the service is behind a running systemd.
  grep -B100 'deb-systemd-invoke' "$ctrl/postinst" | grep -q '^\s*if \[ -d /run/systemd/system \]; then' \
    || fail "postinst starts the service without checking for systemd"
  unit="$tree/lib/systemd/system/stallmond.service"
  grep -q '^ExecStart=/usr/sbin/stallmond --config /etc/stallmon/stallmond.yaml ' "$unit" || fail "unit ExecStart: $(grep ExecStart "$unit")"
  grep -q '^StateDirectory=stallmon$' "$unit" || fail "unit has no StateDirectory=stallmon"
  if command -v systemd-analyze >/dev/null; then
    # verify resolves ExecStart against the real root (the binary is only in $tree: that one
    # complaint is expected) and runs man for Documentation= (MANPATH: the packaged pages).
    verify="$(MANPATH="$tree/usr/share/man" systemd-analyze verify "$unit" 2>&1 || true)"
    verify="$(grep -v 'Command /usr/sbin/stallmond is not executable' <<<"$verify" || true)"
    [ -z "$verify" ] || fail "systemd-analyze verify: $verify"
  fi
  for page in "$tree/usr/share/man/man8/stallmond.8.gz" "$tree/usr/share/man/man1/stallctl.1.gz"; do
    warnings="$(LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$page" 2>&1 >/dev/null)"
    [ -z "$warnings" ] || fail "$(basename "$page"): groff warnings: $warnings"
  done
  man8="$(MANWIDTH=100 man -l "$tree/usr/share/man/man8/stallmond.8.gz" 2>/dev/null)"
  expect_contains "$man8" "--check-config" "stallmond(8)"
  expect_contains "$man8" "/etc/stallmon/stallmond.yaml" "stallmond(8) FILES"
  man1="$(MANWIDTH=100 man -l "$tree/usr/share/man/man1/stallctl.1.gz" 2>/dev/null)"
  for sub in inspect dump ram-layout status domains vcpus findings; do
    expect_contains "$man1" "stallctl $sub" "stallctl(1) SUBCOMMANDS"
  done
  ok="$("$tree/usr/sbin/stallmond" --config "$tree/etc/stallmon/stallmond.yaml" --check-config)"
  expect_contains "$ok" "configuration OK" "packaged stallmond --check-config"
  say "deb: ok"
fi

# ---- host: install with apt, watch a real guest, purge ------------------------------------------
if want host; then
  if dpkg-query -W -f='${Status}' stallmon 2>/dev/null | grep -q 'ok installed'; then
    fail "stallmon is already installed here; this test installs and purges it (apt-get purge stallmon first)"
  fi
  export DEBIAN_FRONTEND=noninteractive
  say "apt-get install $deb"
  cleanups+=("apt-get purge -y -qq stallmon >/dev/null 2>&1")
  apt-get install -y -qq "$deb" >"$work/apt-install.log" 2>&1 || { cat "$work/apt-install.log" >&2; fail "apt-get install"; }
  [ "$(stat -c '%a %U' /var/lib/stallmon)" = "750 root" ] || fail "/var/lib/stallmon: $(stat -c '%a %U' /var/lib/stallmon 2>&1)"
  [ "$(command -v stallmond)" = /usr/sbin/stallmond ] || fail "stallmond on PATH is $(command -v stallmond)"
  ok="$(stallmond --check-config)"
  [ "$ok" = "configuration OK (/etc/stallmon/stallmond.yaml)" ] || fail "stallmond --check-config: $ok"
  [ "$(man -w stallmond)" = /usr/share/man/man8/stallmond.8.gz ] || fail "man -w stallmond: $(man -w stallmond 2>&1)"

  name="stallmon-pkg-$$"
  testbed=(python3 "$root/tests/testbed/testbed.py")
  say "booting guest $name"
  cleanups+=("${testbed[*]} destroy $name >/dev/null 2>&1")
  "${testbed[@]}" start "$name" --owner-pid $$ --wait 180 --scenario wakeups,sleepers >"$work/start.json" \
    || fail "testbed start: $(cat "$work/start.json")"
  sock="$work/stallmond.sock"
  # The installed daemon with the installed config; only the socket (private), the metrics port
  # (another test may hold 9910) and the domain filter (other tests' guests) are overridden.
  /usr/sbin/stallmond --socket "$sock" --metrics-listen "" --domain "$name" >"$work/stallmond.log" 2>&1 &
  daemon=$!
  cleanups+=("kill $daemon 2>/dev/null; wait $daemon 2>/dev/null")
  # Watched, and the guest kernel read from guest memory (the status row says "ok" once the
  # installed binary found the kernel and took snapshots): up to 3 min on a loaded TCG host.
  status=""
  for _ in $(seq 1 180); do
    sleep 1
    kill -0 "$daemon" 2>/dev/null || { cat "$work/stallmond.log" >&2; fail "installed stallmond exited"; }
    status="$(stallctl status --socket "$sock" 2>&1)" || continue
    awk -v d="$name" '$1 == d && $2 == "ok" { found = 1 } END { exit !found }' <<<"$status" && break
  done
  say "stallctl status:"; printf '%s\n' "$status" >&2
  expect_contains "$status" "health    SERVING" "stallctl status"
  awk -v d="$name" '$1 == d && $2 == "ok" && $3 != "-" { found = 1 } END { exit !found }' <<<"$status" \
    || fail "the installed daemon did not introspect $name (status above; log: $(tail -5 "$work/stallmond.log"))"
  vcpus="$(stallctl vcpus --socket "$sock" "$name" 2>&1)" || fail "stallctl vcpus: $vcpus"
  say "stallctl vcpus $name:"; printf '%s\n' "$vcpus" >&2
  kill -TERM "$daemon"; wait "$daemon" || fail "stallmond exit code $? on SIGTERM"
  "${testbed[@]}" destroy "$name" >/dev/null

  apt-get purge -y -qq stallmon >"$work/apt-purge.log" 2>&1 || { cat "$work/apt-purge.log" >&2; fail "apt-get purge"; }
  for p in /usr/sbin/stallmond /usr/bin/stallctl /etc/stallmon /var/lib/stallmon /lib/systemd/system/stallmond.service; do
    [ ! -e "$p" ] || fail "$p left after purge"
  done
  say "host: ok"
fi

# ---- chroot: a fresh Debian 12 ------------------------------------------------------------------
if want chroot; then
  cache="${STALLMON_PACKAGE_CACHE:-/var/cache/stallmon/package}"
  mirror="${STALLMON_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  base="$cache/bookworm-minbase.tar"
  if [ ! -f "$base" ]; then
    say "debootstrap bookworm (minbase) from $mirror (~3 min, cached in $base)"
    mkdir -p "$cache"
    debootstrap --variant=minbase bookworm "$work/bootstrap" "$mirror" >"$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
    tar -C "$work/bootstrap" -cf "$base.tmp" . && mv "$base.tmp" "$base"
    rm -rf --one-file-system "$work/bootstrap"
  fi
  ch="$work/chroot"
  mkdir "$ch"; tar -C "$ch" -xf "$base"
  # A fresh Debian 12 install has the security and updates suites too.
  cat > "$ch/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  cp /etc/resolv.conf "$ch/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' > "$ch/usr/sbin/policy-rc.d"; chmod +x "$ch/usr/sbin/policy-rc.d"
  mount -t proc proc "$ch/proc"
  cleanups+=("umount '$ch/proc'")
  cp "$deb" "$ch/tmp/"
  inch() { chroot "$ch" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }
  say "chroot: apt-get install ./$(basename "$deb") in a fresh Debian 12"
  inch apt-get update -qq >"$work/chroot-update.log" 2>&1 || { cat "$work/chroot-update.log" >&2; fail "apt-get update in the chroot"; }
  inch dpkg-query -W -f='${Package}\n' | sort > "$work/chroot-before"
  start=$SECONDS
  inch apt-get install -y "/tmp/$(basename "$deb")" >"$work/chroot-install.log" 2>&1 \
    || { tail -30 "$work/chroot-install.log" >&2; fail "apt install in the chroot"; }
  added="$(inch dpkg-query -W -f='${Package}\n' | sort | comm -13 "$work/chroot-before" - | grep -vx stallmon)"
  say "chroot: installed in $((SECONDS - start)) s with $(wc -l <<<"$added") new packages: $(tr '\n' ' ' <<<"$added")"
  missing="$(inch ldd /usr/sbin/stallmond /usr/bin/stallctl | grep 'not found' || true)"
  [ -z "$missing" ] || fail "unresolved libraries in the fresh system: $missing"
  ok="$(inch stallmond --check-config)"
  [ "$ok" = "configuration OK (/etc/stallmon/stallmond.yaml)" ] || fail "chroot stallmond --check-config: $ok"
  inch stallctl --help >/dev/null || fail "chroot stallctl --help"
  inch stallmond --print-config | grep -q '^libvirt:' || fail "chroot stallmond --print-config"
  [ -d "$ch/var/lib/stallmon" ] || fail "chroot: no /var/lib/stallmon"
  [ -L "$ch/etc/systemd/system/multi-user.target.wants/stallmond.service" ] || fail "chroot: unit not enabled"
  inch apt-get purge -y stallmon >"$work/chroot-purge.log" 2>&1 || { cat "$work/chroot-purge.log" >&2; fail "chroot purge"; }
  for p in /usr/sbin/stallmond /etc/stallmon /var/lib/stallmon /etc/systemd/system/multi-user.target.wants/stallmond.service; do
    [ ! -e "$ch$p" ] && [ ! -L "$ch$p" ] || fail "chroot: $p left after purge"
  done
  say "chroot: ok"
fi
say "all requested stages passed"
