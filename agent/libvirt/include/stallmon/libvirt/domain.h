// SPDX-License-Identifier: Apache-2.0
// Plain descriptions of libvirt domains, their qemu process and vCPU threads, and the events the
// libvirt layer reports. No libvirt type appears here: everything outside agent/libvirt sees only
// these structs.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "stallmon/introspect/ram_layout.h"

namespace stallmon::libvirt {

// One vCPU of a domain and the host thread that runs it.
struct VcpuThread {
  int index = -1;    // QEMU cpu-index (== libvirt vCPU number for x86 without hotplug gaps)
  pid_t tid = 0;     // host thread id inside the qemu process
  std::string name;  // /proc/PID/task/TID/comm, e.g. "CPU 2/TCG"; empty if unreadable
};

// Where a vCPU map came from. QMP is authoritative; thread names are the fallback when the
// monitor does not answer (they need `-name guest=...,debug-threads=on`, which libvirt sets).
enum class VcpuSource { kNone, kQmp, kThreadNames };
const char* to_string(VcpuSource source);

// Whether the domain's QEMU monitor answers. A monitor call that misses its deadline leaves
// libvirt blocked inside it (it cannot be cancelled); the domain stays "unresponsive" until that
// call returns. This is the raw form of the HOST_MONITOR_UNRESPONSIVE finding: the qemu main loop
// (or the thread holding QEMU's big lock) is stuck.
struct MonitorHealth {
  bool responsive = true;
  std::chrono::steady_clock::time_point since_steady{};  // when the stuck call started
  std::chrono::system_clock::time_point since_wall{};    // same instant, for display
  std::string stuck_call;                                // e.g. "qmp query-cpus-fast"
};

// Coarse libvirt state of a domain (virDomainState without the libvirt type).
enum class DomainRunState { kUnknown, kRunning, kBlocked, kPaused, kShutdown, kShutoff, kCrashed,
                            kPmSuspended };
const char* to_string(DomainRunState state);

// Everything the agent needs to watch one running domain. Copied out of the watcher; holds no
// references into it.
struct DomainInfo {
  std::string uuid;  // canonical lowercase text form
  std::string name;
  int id = -1;  // libvirt domain id (changes on every start)
  DomainRunState state = DomainRunState::kUnknown;

  pid_t qemu_pid = 0;      // 0 until found
  std::string pid_source;  // e.g. "/run/libvirt/qemu/NAME.pid" or "/proc scan"
  std::vector<VcpuThread> vcpus;  // sorted by index
  VcpuSource vcpu_source = VcpuSource::kNone;

  // Guest RAM layout (guest-physical ranges with their host-virtual addresses in qemu), taken
  // while the monitor answered and kept: during a stall the monitor may never answer, but the
  // mapping does not change while the qemu process lives. nullptr until resolved.
  std::shared_ptr<const std::vector<introspect::RamRange>> ram_layout;
  std::string ram_layout_error;  // why the last attempt failed, empty if it did not
  // How the layout was obtained and checked, e.g. "host maps + domain XML (memfd); readable; low
  // RAM holds the BIOS interrupt vector table" or "monitor (info mtree, gpa2hva)".
  std::string ram_layout_source;

  MonitorHealth monitor;
  // Bumped whenever qemu_pid, vcpus or ram_layout change, so consumers can cheaply tell that they
  // must re-open their per-thread files.
  uint64_t generation = 0;
};

// What happened to a domain, as reported by libvirt events.
enum class DomainEventKind {
  kDefined,
  kUndefined,
  kStarted,
  kSuspended,
  kResumed,
  kStopped,
  kShutdown,     // guest-initiated shutdown in progress (qemu may still run)
  kPmSuspended,
  kCrashed,
  kRebooted,     // guest reset (VIR_DOMAIN_EVENT_ID_REBOOT): same qemu, same threads
  kMigrated,     // incoming (domain now runs here) or outgoing (it no longer does); see detail
  kDeviceAdded,  // includes memory (dimm, virtio-mem) and vCPU hotplug
  kDeviceRemoved,
  kMemoryDeviceResized,
};
const char* to_string(DomainEventKind kind);

struct DomainEvent {
  DomainEventKind kind = DomainEventKind::kStarted;
  std::string uuid;
  std::string name;
  std::string detail;  // libvirt's detail ("destroyed", "migrated out", a device alias, ...)
  std::chrono::system_clock::time_point time{};
};

// State of the connection to libvirtd.
enum class ConnectionState { kDisconnected, kConnecting, kConnected };
const char* to_string(ConnectionState state);

struct ConnectionStatus {
  ConnectionState state = ConnectionState::kDisconnected;
  std::string uri;
  std::string reason;     // why it was lost or why the last attempt failed
  uint64_t attempts = 0;  // failed attempts since the last successful connect
  std::chrono::milliseconds retry_in{0};
};

}  // namespace stallmon::libvirt
