// SPDX-License-Identifier: Apache-2.0
// StallMonitor: the agent's core. For every watched domain it runs the pipeline
//
//   every tick (10 Hz):  ProcessSampler::sample_once()
//                        → guest snapshot when the engine wants one and introspection is ready
//                        → DomainObservation (host samples + snapshot + monitor + lifecycle)
//                        → DiagnosisEngine::observe()
//   off the tick path:   kernel discovery (VMCOREINFO scan, kallsyms, BTF) once the RAM layout
//                        is known, retried with backoff, re-validated periodically and after
//                        reboots; shared between guests with the same kernel BUILD-ID.
//
// and answers the daemon's queries with copies (no reference into the pipeline escapes).
//
// Inputs come from the libvirt layer as a libvirt::DomainObserver (register the monitor on a
// DomainWatcher before starting it); the monitor itself never calls libvirt. It never pauses,
// stops or writes a guest: guest memory is only read, through the qemu process.
//
// Threads: no thread per domain. A fixed TickPool (MonitorConfig::workers) runs every domain's
// tick from one deadline-ordered queue, a DiscoveryPool (discovery_max_concurrent) runs kernel
// discoveries. Guest reads can block (process_vm_readv on a qemu whose mm lock is held by a
// thread stuck in the host kernel, exactly the situation stallmon exists for), so they are
// supervised: a read past read_deadline is abandoned, the domain's introspection pauses, its
// host sampling goes on on another worker (agent/core/README.md, "Pipeline shape").
//
// Thread safety: every public method may be called from any thread, concurrently. Queries copy
// under a per-domain mutex held for at most one copy; ticks never wait for a query longer than
// that. No plain transport type (gRPC, proto, HTTP) appears here: servers adapt these structs.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/core/monitor_config.h"
#include "stallmon/diagnosis/engine.h"
#include "stallmon/diagnosis/incident_recorder.h"
#include "stallmon/diagnosis/time.h"
#include "stallmon/host/clock.h"
#include "stallmon/host/history.h"
#include "stallmon/host/host_fs.h"
#include "stallmon/host/sampler.h"
#include "stallmon/host/thread_stat_source.h"
#include "stallmon/introspect/snapshot.h"
#include "stallmon/libvirt/domain.h"
#include "stallmon/libvirt/domain_watcher.h"

namespace stallmon::core {

using diagnosis::Duration;
using diagnosis::Timestamp;

// Where guest introspection of one domain stands.
enum class IntrospectionState {
  kDisabled,          // MonitorConfig::introspection is false
  kWaitingForLayout,  // the libvirt layer has not resolved the guest RAM layout (yet)
  kDiscovering,       // a discovery is running or scheduled (first try, or after a reboot)
  kReady,             // snapshots are being taken
  kFailed,            // the last discovery failed; retried with backoff (see next_attempt_at)
  kPaused,            // a guest read did not return in time (error says which); host only
  kNoKernel,          // no Linux kernel found in guest RAM; retried with a backoff up to hours
  kOverBudget,        // guest data too big for the domain's memory budget (error says what)
};
const char* to_string(IntrospectionState state);

struct IntrospectionHealth {
  IntrospectionState state = IntrospectionState::kDisabled;
  // The last discovery, validation or snapshot-level error; empty if none since the last
  // success.
  std::string error;
  std::string kernel_release;  // VMCOREINFO OSRELEASE, once discovered
  std::string build_id;        // VMCOREINFO BUILD-ID (hex), once discovered
  uint64_t discovery_attempts = 0;
  uint64_t discovery_failures = 0;
  Duration last_discovery_duration{0};
  uint64_t discovery_bytes_read = 0;       // guest RAM read by discoveries, all attempts
  uint64_t last_discovery_bytes_read = 0;
  Duration discovery_time{0};              // wall time spent discovering, all attempts
  uint64_t reads_abandoned = 0;            // guest reads the supervisor gave up waiting for
  uint64_t reboots_detected = 0;           // by event or by the guest's clock going back
  std::optional<Timestamp> ready_since;
  std::optional<Timestamp> next_attempt_at;  // kFailed: when discovery is retried

  uint64_t snapshots = 0;        // taken on ticks and for inspect()
  uint64_t snapshot_errors = 0;  // snapshots that recorded at least one error
  Duration last_snapshot_latency{0};
  std::optional<Timestamp> last_snapshot_at;
  size_t last_snapshot_error_count = 0;
  std::string last_snapshot_error;  // the first error of the last snapshot with errors

  bool ok() const { return state == IntrospectionState::kReady; }
};

// One line for status pages: the state, and what an operator needs with it, e.g.
// "no Linux kernel found (scanned 4.0 GiB, next try in 2h 16m)" or "paused: a guest memory
// read did not return within 250 ms ...". `now` on the engine's clock.
std::string describe(const IntrospectionHealth& health, Timestamp now);

// The QEMU monitor of a domain, as the libvirt layer last reported it.
struct MonitorHealth {
  bool responsive = true;
  std::optional<Timestamp> unresponsive_since;
  std::string stuck_call;   // e.g. "qmp query-cpus-fast"
  uint64_t timeouts = 0;    // responsive → unresponsive transitions seen since watched
};

// One line of domains().
struct DomainSummary {
  std::string name;
  std::string uuid;
  int id = -1;
  libvirt::DomainRunState state = libvirt::DomainRunState::kUnknown;
  pid_t qemu_pid = 0;
  size_t vcpu_count = 0;
  libvirt::VcpuSource vcpu_source = libvirt::VcpuSource::kNone;
  size_t active_findings = 0;
  IntrospectionHealth introspection;
  MonitorHealth monitor;
  bool ram_layout_known = false;
  std::string ram_layout_error;  // from the libvirt layer
  bool process_gone = false;     // the sampler found the qemu process gone
  uint64_t ticks = 0;
  std::optional<Timestamp> last_tick;
  Timestamp watched_since{};
};

// The latest host view of one qemu thread.
struct ThreadStatus {
  int32_t tid = 0;
  std::string name;   // comm, e.g. "CPU 2/TCG"
  int32_t vcpu = -1;  // vCPU index, -1 for other qemu threads
  bool present = false;     // false once the thread exited (or its tid was reused)
  bool has_sample = false;  // false until the first successful sample
  host::ThreadSample latest;  // latest.t_ns is host CLOCK_MONOTONIC
  Timestamp latest_at{};      // the same instant on the engine's clock
  host::ThreadSignals signals;  // over SamplerOptions::signal_window_ns
  // wchan and host kernel stack, read (rate-limited) while the thread was in D, T or t.
  // blocked.t_ns == 0: never read. It may be older than `latest`: check blocked.state.
  host::BlockedDetail blocked;
  bool own_cgroup = false;   // the thread has its own cpu cgroup (throttling fields valid)
  uint64_t sample_errors = 0;
};

struct VcpuStatus {
  int32_t index = 0;
  ThreadStatus thread;
  // This CPU in the latest guest snapshot (runqueue, call_single_queue, cfd targets, watchdog);
  // nullopt until a snapshot covered it.
  std::optional<introspect::CpuSnapshot> guest;
};

// Guest-wide facts of the latest snapshot.
struct GuestOverview {
  Timestamp taken_at{};
  Duration read_latency{0};
  uint32_t nr_cpu_ids = 0;
  std::vector<uint32_t> online_cpus;
  std::optional<int32_t> watchdog_thresh;
  std::optional<int32_t> panic_cpu;
  uint64_t guest_clock_ns = 0;
  size_t error_count = 0;
};

// domain(): everything the agent knows about one domain right now.
struct DomainDetail {
  DomainSummary summary;
  std::vector<VcpuStatus> vcpus;            // by index
  std::vector<ThreadStatus> other_threads;  // by tid: main loop, I/O threads, RCU, workers
  int32_t main_loop_tid = 0;                // == qemu pid
  std::optional<GuestOverview> guest;       // nullopt until the first snapshot
};

struct HistoryPoint {
  Timestamp time{};  // the sample's instant on the engine's clock
  host::ThreadSample sample;
};

// vcpu_history(): the samples of one vCPU thread within a window, oldest first.
struct VcpuHistory {
  std::string domain_uuid;
  int32_t vcpu = 0;
  int32_t tid = 0;
  std::vector<HistoryPoint> points;
  size_t capacity = 0;  // ring capacity (SamplerOptions::vcpu_history)
};

// inspect(): an on-demand full guest snapshot.
struct InspectResult {
  std::string domain_name;
  std::string domain_uuid;
  std::string kernel_release;
  std::string build_id;
  Timestamp taken_at{};
  introspect::GuestSnapshot snapshot;  // read with MonitorConfig::inspect_snapshot
};

// A Prometheus-style histogram. counts[i] = observations <= bounds_s[i] (cumulative);
// `count` includes the implied +Inf bucket.
struct LatencyHistogram {
  std::vector<double> bounds_s;
  std::vector<uint64_t> counts;
  uint64_t count = 0;
  double sum_s = 0;
};

// stats(): the agent's own health. Counters are monotonic over the monitor's life (domains
// that went away still count).
struct AgentStats {
  Timestamp started_at{};
  size_t domains = 0;
  uint64_t ticks = 0;
  // Ticks that started later than one sample interval after they were due (the previous tick
  // or a stall of the thread ran long); the schedule then skips ahead rather than bursting.
  uint64_t overruns = 0;
  LatencyHistogram tick_latency;      // a whole tick: sample + snapshot + observe
  LatencyHistogram snapshot_latency;  // guest snapshot reads alone
  uint64_t sample_errors = 0;         // thread samples lost to I/O or corrupt /proc data
  uint64_t snapshots = 0;
  uint64_t snapshot_errors = 0;      // snapshots that recorded at least one error
  uint64_t discovery_attempts = 0;
  uint64_t discovery_failures = 0;
  uint64_t introspection_errors = 0;  // snapshot_errors + discovery_failures
  uint64_t monitor_timeouts = 0;      // domains seen going responsive → unresponsive
  uint64_t finding_events = 0;        // events the engine emitted
  size_t history_memory_bytes = 0;    // sampler histories and details, all domains
  size_t workers = 0;                 // tick pool size (0 with threads=false)
  size_t threads = 0;                 // live pool threads: tick + discovery workers, supervisors
  uint64_t reads_abandoned = 0;       // guest reads the supervisors gave up waiting for
  uint64_t internal_errors = 0;       // exceptions contained in one domain's work
  uint64_t reboots_detected = 0;
  // Where per-thread statistics come from (MonitorDependencies::thread_stats): "bpf-task-iter"
  // (one pass per tick period serves every domain) or "proc" (each domain reads /proc per
  // thread), and why that one.
  std::string thread_stats_source;
  std::string thread_stats_reason;
  uint64_t thread_stats_passes = 0;  // passes the source ran (0 on /proc)
  // Times a domain read /proc instead of the source: a pass that failed (that tick only), or a
  // qemu process the source could not watch (that process's life). Each is logged.
  uint64_t thread_stats_fallbacks = 0;
  // Kernel backtraces of CPUs that findings involve (read for the findings' evidence), those
  // that gave "trace unavailable", and the wall time spent reading them (ORC tables included).
  uint64_t kernel_traces = 0;
  uint64_t kernel_trace_failures = 0;
  double kernel_trace_seconds = 0;
};

// Injectable environment. Null members get the real thing.
struct MonitorDependencies {
  host::HostFs* fs = nullptr;                  // default: host::RealHostFs("/")
  host::Clock* mono_clock = nullptr;           // default: host::MonotonicClock
  const diagnosis::Clock* clock = nullptr;     // default: diagnosis::SteadyWallClock
  GuestMemoryOpener memory_opener;             // default: introspect::QemuProcessMemory
  // Per-thread statistics for every domain's sampler, chosen once at start by the daemon
  // (host::choose_thread_stat_source) and owned by the monitor. Default (no source): the /proc
  // reader per thread.
  host::StatSourceChoice thread_stats;
};

class StallMonitor final : public libvirt::DomainObserver {
 public:
  explicit StallMonitor(MonitorConfig config, MonitorDependencies deps = {});
  // Calls stop().
  ~StallMonitor() override;
  StallMonitor(const StallMonitor&) = delete;
  StallMonitor& operator=(const StallMonitor&) = delete;

  // Registers the monitor with a watcher. Must be called before watcher.start(); the watcher
  // must be stopped before the monitor is destroyed. Equivalent to watcher.add_observer(this).
  void attach(libvirt::DomainWatcher& watcher);

  // libvirt::DomainObserver. Called by the watcher's dispatch thread; tests may call them
  // directly (with threads=false, a domain_updated() followed by tick_all() is a full tick).
  // They only record what changed and wake the pipeline; they never block on a tick.
  void on_domain_event(const libvirt::DomainEvent& event) override;
  void on_domain_updated(const libvirt::DomainInfo& domain) override;
  void on_domain_gone(const libvirt::DomainInfo& last) override;
  void on_domains_synced(const std::vector<libvirt::DomainInfo>& domains) override;

  // Stops and joins the pools, resolving nothing (findings stay as they are). Idempotent.
  // Workers stuck in a guest memory read are waited for.
  void stop();

  // --- Queries (thread-safe, copy-out) ------------------------------------------------------
  std::vector<DomainSummary> domains() const;  // sorted by name
  // kNotFound for a domain not watched (by name or uuid).
  Result<DomainDetail> domain(std::string_view name_or_uuid) const;
  // Samples newer than now - window (the whole ring for a window of 0). kNotFound for an
  // unknown domain or vCPU.
  Result<VcpuHistory> vcpu_history(std::string_view name_or_uuid, int32_t vcpu,
                                   std::chrono::nanoseconds window) const;
  // A full guest snapshot, read by the domain's next tick after its observation (sampling is
  // never held up behind it, and guest memory is never read by two threads at once). Errors:
  // kNotFound (domain), kUnsupported (introspection disabled, or not ready: the message says
  // why, e.g. "introspection not ready: discovering"), kTimeout (not served within `timeout`;
  // the request is dropped).
  Result<InspectResult> inspect(std::string_view name_or_uuid, std::chrono::milliseconds timeout);

  // The diagnosis engine: list_findings, active_findings, events_since, revision. Thread-safe.
  // Do not call set_listener() on it: the monitor owns the engine's listener slot and fans it
  // out through add_finding_listener().
  diagnosis::DiagnosisEngine& engine();
  const diagnosis::DiagnosisEngine& engine() const;

  // Finding events fan-out (gRPC WatchFindings, Alertmanager push, logging...). Listeners are
  // called on the pool worker running the domain's tick, with the engine's mutex held: they
  // must return quickly (queue the event) and must not call into the engine or the monitor.
  // remove_finding_listener() returns once no call to that listener is in progress.
  void add_finding_listener(diagnosis::FindingListener* listener);
  void remove_finding_listener(diagnosis::FindingListener* listener);

  // Incident bundles of critical findings: fed by every domain's tick (after observe) and by
  // the finding fan-out; get() a bundle by finding id, set_sink() to persist them.
  diagnosis::IncidentRecorder& incidents();
  const diagnosis::IncidentRecorder& incidents() const;

  AgentStats stats() const;
  const MonitorConfig& config() const;

  // --- Tests and tools ----------------------------------------------------------------------
  // threads=false only: one tick of every watched domain (and any due discovery, inline), on
  // the calling thread. No-op with threads.
  void tick_all();
  // Waits until the domain's introspection is ready, or the timeout passes. Returns the health at that point; kNotFound for an unknown domain.
  Result<IntrospectionHealth> wait_introspection(std::string_view name_or_uuid,
                                                 std::chrono::milliseconds timeout) const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stallmon::core
