// SPDX-License-Identifier: Apache-2.0
// DomainWatcher: the agent's only door to libvirt.
//
// It connects to libvirtd (qemu:///system by default), runs libvirt's event loop on its own thread,
// keeps the connection alive (keepalive + close callback) and reconnects with backoff when
// libvirtd dies or restarts. It keeps a table of the running domains: qemu pid (from libvirt's
// pid file, validated against /proc, no monitor needed), vCPU index -> host thread (QMP
// `query-cpus-fast`, or the "CPU n/KVM" thread names when the monitor does not answer), and the
// guest RAM layout (resolved once while the domain is healthy, then cached).
//
// Threads: libvirt's event loop; one dispatch thread that owns the table and calls observers; a
// connection worker for connection-wide RPCs; per domain, a monitor worker (QMP/HMP commands with
// deadlines, on a libvirt connection of its own) and a probe worker (the discovery steps that use
// the monitor). A monitor that hangs only ever blocks its own domain's monitor worker.
//
// For the sampling thread: domains() and domain() copy the table under a short mutex and never
// touch libvirt.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/introspect/ram_layout.h"
#include "stallmon/libvirt/backoff.h"
#include "stallmon/libvirt/deadline_worker.h"
#include "stallmon/libvirt/domain.h"

namespace stallmon::libvirt {

// Receives what the watcher learns. All methods are called from the watcher's dispatch thread, one
// at a time and in order; they must return quickly and must not call stop() or destroy the
// watcher. They may call domains()/domain()/connection().
class DomainObserver {
 public:
  virtual ~DomainObserver() = default;
  // Connected, lost, or a reconnect attempt failed.
  virtual void on_connection(const ConnectionStatus& /*status*/) {}
  // A libvirt event, delivered before the table is re-synced because of it.
  virtual void on_domain_event(const DomainEvent& /*event*/) {}
  // A domain appeared or changed: qemu pid, vCPU threads, RAM layout, state or monitor health.
  virtual void on_domain_updated(const DomainInfo& /*domain*/) {}
  // A domain stopped running (or left with a migration); `last` is its final description.
  virtual void on_domain_gone(const DomainInfo& /*last*/) {}
  // A full discovery finished (after connecting, and after every lifecycle event): the table.
  virtual void on_domains_synced(const std::vector<DomainInfo>& /*domains*/) {}
};

// Resolves the guest RAM layout through an HMP command runner (introspect::resolve_ram_layout in
// production, a fake in tests).
using RamLayoutResolver =
    std::function<Result<std::vector<introspect::RamRange>>(const introspect::HmpCommand&)>;

struct WatcherOptions {
  std::string uri = "qemu:///system";
  std::string proc_root = "/proc";
  std::string qemu_run_dir = "/run/libvirt/qemu";  // where libvirt writes NAME.pid

  std::chrono::milliseconds connect_timeout{10'000};  // virConnectOpen and event registration
  std::chrono::milliseconds call_timeout{5'000};      // connection-wide calls (listing domains)
  std::chrono::milliseconds monitor_timeout{3'000};   // one QMP or HMP command
  int keepalive_interval_s = 5;                       // virConnectSetKeepAlive
  unsigned keepalive_count = 3;
  BackoffPolicy backoff;

  // false (default): no QEMU monitor command ever, and a read-only libvirt connection
  // (virConnectOpenReadOnly). vCPU threads come from thread names and libvirt's per-vCPU
  // cgroups, checked against libvirt's online vCPU count; the RAM layout from the live domain
  // XML and /proc/PID/maps (host_layout.h), validated against guest memory, re-derived every
  // `layout_recheck` and on hotplug/reboot events. One connection serves all domains and no
  // per-domain monitor thread exists. qmp()/hmp() return kUnsupported.
  // true: the opt-in fallback. QMP query-cpus-fast and `ram_layout_resolver` over HMP on a
  // read-write connection per domain. libvirt marks every domain it is used on as tainted
  // ("Domain id=N is tainted: custom-monitor" in its log), and each command takes the
  // domain's job lock.
  bool use_monitor = false;
  std::string cgroup_root = "/sys/fs/cgroup";  // where libvirt's per-vCPU cgroups are seen
  std::chrono::milliseconds layout_recheck{10'000};

  // use_monitor only. Empty: the RAM layout is not resolved (DomainInfo::ram_layout stays null).
  RamLayoutResolver ram_layout_resolver;
};

// One-shot, for tools (stallctl inspect --domain, ram-layout): what the watcher would publish for
// one running domain, without a monitor command. Opens a read-only connection to options.uri,
// looks the domain up (uuid or name), takes the qemu pid from libvirt's pid file checked
// against /proc (as the watcher does), the vCPU threads, and the RAM layout from the live XML
// and /proc/PID/maps, validated against guest memory. ram_layout stays null with
// ram_layout_error set when the layout cannot be derived; the call fails only when the domain
// cannot be found or is not running.
Result<DomainInfo> describe_domain(const WatcherOptions& options, std::string_view uuid_or_name);

class DomainWatcher {
 public:
  explicit DomainWatcher(WatcherOptions options);
  // Calls stop().
  ~DomainWatcher();
  DomainWatcher(const DomainWatcher&) = delete;
  DomainWatcher& operator=(const DomainWatcher&) = delete;

  // Observers must be added before start() and outlive the watcher's stop().
  void add_observer(DomainObserver* observer);

  // Starts the event loop and dispatch threads; connecting happens in the background (see
  // wait_synced). Fails only if libvirt's event loop cannot be set up or start() was called twice.
  Result<void> start();
  // Stops the threads and closes the connection. Does not wait for calls stuck in a hung monitor:
  // their threads are left to finish on their own. Idempotent.
  void stop();

  // Waits until a full discovery has completed after `after_count` syncs (sync_count() before
  // the awaited change), or the timeout passes. Returns the sync count reached.
  uint64_t wait_synced(uint64_t after_count, std::chrono::milliseconds timeout) const;
  // Waits until no domain has a discovery probe queued or running. Returns false on timeout.
  bool wait_probes_idle(std::chrono::milliseconds timeout) const;
  uint64_t sync_count() const;

  // Copies of the table, sorted by name. Never call libvirt; safe from any thread.
  std::vector<DomainInfo> domains() const;
  // By uuid or name.
  std::optional<DomainInfo> domain(std::string_view uuid_or_name) const;
  ConnectionStatus connection() const;

  // Runs a QMP command (JSON text) / HMP command line on the domain's monitor worker and returns
  // the raw reply (use_monitor only: kUnsupported otherwise). The PendingCall never blocks past `timeout`; a missed deadline marks the domain
  // unresponsive, and while it is, calls are rejected at once (kTimeout). kNotFound for an unknown
  // domain.
  PendingCall<std::string> qmp(std::string_view uuid_or_name, std::string command_json,
                               std::chrono::milliseconds timeout);
  PendingCall<std::string> hmp(std::string_view uuid_or_name, std::string command_line,
                               std::chrono::milliseconds timeout);
  // An HmpCommand bound to one domain, each command bounded by `timeout`. It refers to this watcher:
  // do not call it after the watcher is destroyed.
  introspect::HmpCommand hmp_command(std::string_view uuid_or_name, std::chrono::milliseconds timeout);

  // Asks libvirtd for the names of the running domains now (connection worker, deadline-bound).
  // Used to show that connection-wide calls keep working while one domain's monitor hangs.
  Result<std::vector<std::string>> list_running_domains(std::chrono::milliseconds timeout);

  // Requests a new probe (pid, vCPU threads, RAM layout) of one domain; empty: a full re-sync.
  void refresh(std::string_view uuid_or_name = {});

 private:
  class Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace stallmon::libvirt
