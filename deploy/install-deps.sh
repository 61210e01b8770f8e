#!/usr/bin/env bash
# Installs every build, runtime and test dependency of stallmon with apt only.
# Idempotent: packages already present are left alone; safe to run again.
# Usage: deploy/install-deps.sh [--no-test-deps]
set -euo pipefail

want_test_deps=1
for arg in "$@"; do
  case "$arg" in
    --no-test-deps) want_test_deps=0 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root (apt-get install)" >&2
  exit 1
fi

build_deps=(
  build-essential cmake ninja-build pkg-config git
  libvirt-dev libxml2-dev libelf-dev libdw-dev libbpf-dev zlib1g-dev libssl-dev
  libspdlog-dev libfmt-dev
  libgrpc++-dev libgrpc-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libyaml-cpp-dev libcli11-dev libcpp-httplib-dev nlohmann-json3-dev libsystemd-dev
  libsqlite3-dev   # the persistent finding store (agent/store)
  libgtest-dev libgmock-dev libbenchmark-dev
  # The BPF task-iterator sampler: clang -target bpf, llvm-strip, bpftool (vmlinux.h and the
  # skeleton). Without them the build compiles the BPF sampler out and uses /proc.
  clang llvm bpftool
)
runtime_deps=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
)
# Test-only: guest kit (kernel via apt-get download, busybox initramfs), test kernel module,
# alerting integration, and the tools used as oracles.
test_deps=(
  busybox-static cpio zstd xz-utils kmod
  linux-headers-amd64
  prometheus prometheus-alertmanager
  python3 curl iproute2 procps psmisc openssl
  help2man lintian debootstrap   # deploy/package.sh (man pages, lint) and tests/package
  chromium   # renders `stallctl incident --html` reports headless (tests/integration/server)
)

pkgs=("${build_deps[@]}" "${runtime_deps[@]}")
if [ "$want_test_deps" -eq 1 ]; then
  pkgs+=("${test_deps[@]}")
fi

missing=()
for p in "${pkgs[@]}"; do
  # A virtual name like linux-headers-amd64 is resolved by apt; dpkg -s answers for real ones.
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Services must not start from package scripts (there may be no init system).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
fi
trap '[ "$created_policy" -eq 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
