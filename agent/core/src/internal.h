// SPDX-License-Identifier: Apache-2.0
// Internals of stallmon_core shared by the monitor, its per-domain pipelines, the unit tests and
// the benchmarks. Not installed, not part of the API.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "stallmon/core/monitor_config.h"
#include "stallmon/core/observation_adapters.h"
#include "stallmon/core/stall_monitor.h"
#include "stallmon/diagnosis/engine.h"
#include "stallmon/host/sampler.h"
#include "stallmon/introspect/kernel.h"
#include "stallmon/introspect/snapshot.h"
#include "stallmon/introspect/snapshot_access.h"

namespace stallmon::core::internal {

// A fixed-bucket latency histogram (Prometheus semantics on read).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds_s);
  void observe(double seconds);
  LatencyHistogram read() const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> buckets_;  // per bucket (not cumulative), last one +Inf
  uint64_t count_ = 0;
  double sum_ = 0;
};

// Counters over the monitor's life (domains that went away still count).
struct Counters {
  std::atomic<uint64_t> ticks{0}, overruns{0}, sample_errors{0}, snapshots{0},
      snapshot_errors{0}, discovery_attempts{0}, discovery_failures{0}, monitor_timeouts{0},
      finding_events{0};
};

struct GuestKernel;

// What every pipeline of one monitor shares. Outlives the pipelines.
struct Shared {
  MonitorConfig config;
  host::HostFs* fs = nullptr;
  host::Clock* mono = nullptr;
  const diagnosis::Clock* clock = nullptr;
  GuestMemoryOpener memory_opener;
  ClockMapping mono_to_engine;
  diagnosis::DiagnosisEngine* engine = nullptr;
  Histogram tick_latency;
  Histogram snapshot_latency;
  Counters counters;
  // Test seam: replaces discover_guest_kernel (e.g. with a synthetic KernelAccess whose
  // GuestKernel has no Kernel; re-validation is then skipped).
  std::function<Result<std::unique_ptr<GuestKernel>>(
      pid_t, const std::vector<introspect::RamRange>&, uint64_t)>
      discover_override;

  explicit Shared(const MonitorConfig& c)
      : config(c), tick_latency(c.tick_latency_buckets_s),
        snapshot_latency(c.tick_latency_buckets_s) {}
  Timestamp engine_time(int64_t mono_ns) const { return mono_to_engine.to_engine(mono_ns); }
};

// A discovered guest kernel with its snapshot readers. Built by the discovery worker, then used
// by the pipeline thread alone (Kernel and SnapshotReader are single-threaded).
struct GuestKernel {
  // Everything the guest decides the size of (symbols, types, snapshot buffers) is charged here.
  std::shared_ptr<introspect::MemoryBudget> budget;
  std::shared_ptr<introspect::PhysicalMemory> memory;
  std::unique_ptr<introspect::Kernel> kernel;
  std::unique_ptr<introspect::KernelAccess> access;
  std::unique_ptr<introspect::SnapshotReader> tick_reader;
  std::unique_ptr<introspect::SnapshotReader> inspect_reader;
  std::string release, build_id;
  uint64_t note_gpa = 0;
};

// Discovers the kernel of a running guest: memory source, VMCOREINFO (scan, starting at
// `hint_gpa` when non-zero), kallsyms, BTF, and both snapshot readers. Slow (100+ ms): never on
// a tick.
Result<std::unique_ptr<GuestKernel>> discover_guest_kernel(const Shared& shared, pid_t pid,
                                                           const std::vector<introspect::RamRange>& ram,
                                                           uint64_t hint_gpa);

// Reads the wchan of threads that sleep (S) without run progress: the sampler reads wchan only
// for D/T/t, but the VM-wide rule needs to see the main loop and the vCPUs parked on a futex
// (QEMU's big lock). Once per thread per second at most, and again when a new sleep begins.
class SleepWchanReader {
 public:
  // Threads that made no progress for this long get their wchan read.
  static constexpr int64_t kMinNoProgressNs = 250'000'000;
  static constexpr int64_t kRefreshNs = 1'000'000'000;

  // Fills view.wchan for a sleeping thread (view.state kSleeping) without recent progress.
  void fill(host::HostFs& fs, const std::string& proc_root, int32_t pid,
            const host::TrackedThread& thread, diagnosis::HostThreadView& view);
  void retain_only(const std::vector<int32_t>& tids);
  uint64_t reads() const { return reads_; }

 private:
  struct Entry {
    int64_t read_ns = 0;
    int64_t episode = 0;  // tracker.last_progress_ns when read
    std::string wchan;
  };
  std::map<int32_t, Entry> cache_;
  uint64_t reads_ = 0;
};

// Builds the host part of a DomainObservation from a sampler (vCPUs, other threads, main loop).
void fill_host_views(const host::ProcessSampler& sampler, host::HostFs& fs,
                     SleepWchanReader* wchans, diagnosis::DomainObservation& obs);

// One watched domain: sampler, guest kernel, tick loop, discovery worker, queries.
class DomainPipeline {
 public:
  DomainPipeline(Shared& shared, const libvirt::DomainInfo& info);
  ~DomainPipeline();
  DomainPipeline(const DomainPipeline&) = delete;
  DomainPipeline& operator=(const DomainPipeline&) = delete;

  // threads mode: starts the tick and discovery threads.
  void start();
  // The libvirt layer's newest description / an event (applied at the next tick).
  void post_update(const libvirt::DomainInfo& info);
  void post_event(const libvirt::DomainEvent& event, Timestamp at);
  // The domain is gone: no further observe() reaches the engine once this returns. The threads
  // finish on their own (a read stuck in a dying qemu may hold them); join() waits.
  void retire();
  void join();
  bool finished() const { return finished_.load(); }

  // One tick on the calling thread (threads=false; also used by the tick thread). Runs a due
  // discovery inline when there is no discovery thread.
  void tick();

  const std::string& uuid() const { return uuid_; }
  std::string name() const;
  DomainSummary summary() const;
  DomainDetail detail() const;
  Result<VcpuHistory> history(int32_t vcpu, std::chrono::nanoseconds window) const;
  Result<InspectResult> inspect(std::chrono::milliseconds timeout);
  IntrospectionHealth introspection() const;
  IntrospectionHealth wait_introspection(std::chrono::milliseconds timeout) const;
  size_t memory_bytes() const { return memory_bytes_.load(); }

 private:
  struct InspectRequest {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    bool abandoned = false;
    std::optional<Result<InspectResult>> result;
  };

  void tick_loop();
  void discovery_loop();
  void apply_inbox(std::vector<diagnosis::DomainEvent>& events, bool& revalidate_now);
  void manage_introspection(int64_t now_ns, bool revalidate_now);
  struct DiscoveryResult {
    uint64_t generation = 0;
    int64_t duration_ns = 0;
    Result<std::unique_ptr<GuestKernel>> kernel;
  };
  void drop_kernel(const std::string& why, int64_t now_ns, bool retry_now);
  void start_discovery(int64_t now_ns);
  void finish_discovery(DiscoveryResult result, int64_t now_ns);
  std::optional<introspect::GuestSnapshot> maybe_snapshot(Timestamp now);
  void record_snapshot(const introspect::GuestSnapshot& snap, int64_t took_ns);
  void serve_inspect_requests();
  void set_health(const std::function<void(IntrospectionHealth&)>& f);

  Shared& shared_;
  const std::string uuid_;

  // --- Inbox: written by the watcher's thread, read by the tick ---------------------------
  mutable std::mutex inbox_mu_;
  std::condition_variable inbox_cv_;
  std::optional<libvirt::DomainInfo> pending_info_;
  std::vector<diagnosis::DomainEvent> pending_events_;
  bool pending_revalidate_ = false;
  std::deque<std::shared_ptr<InspectRequest>> inspect_queue_;
  bool stop_ = false;

  // --- Query state (mu_): what queries copy ---------------------------------------------------
  mutable std::mutex mu_;
  mutable std::condition_variable health_cv_;
  libvirt::DomainInfo info_;
  std::unique_ptr<host::ProcessSampler> sampler_;
  std::shared_ptr<const introspect::GuestSnapshot> last_snapshot_;
  IntrospectionHealth health_;
  MonitorHealth monitor_;
  uint64_t ticks_ = 0;
  std::optional<Timestamp> last_tick_;
  Timestamp watched_since_{};
  size_t active_findings_ = 0;

  // --- Tick-thread state ---------------------------------------------------------------------
  std::unique_ptr<GuestKernel> kernel_;
  int64_t next_discovery_ns_ = 0;
  int64_t retry_delay_ns_ = 0;
  int64_t last_validated_ns_ = 0;
  uint32_t failed_snapshots_ = 0;
  uint64_t note_hint_ = 0;
  bool discovery_in_flight_ = false;
  uint64_t mem_generation_ = 0;  // bumped when the memory a GuestKernel was built on changes
  uint64_t sample_errors_seen_ = 0;
  SleepWchanReader wchans_;
  std::vector<diagnosis::DomainEvent> carry_events_;

  // --- Discovery worker (disc_mu_) -----------------------------------------------------------
  std::mutex disc_mu_;
  std::condition_variable disc_cv_;
  struct DiscoveryJob {
    pid_t pid = 0;
    std::shared_ptr<const std::vector<introspect::RamRange>> ram;
    uint64_t hint = 0;
    uint64_t generation = 0;
  };
  bool disc_stop_ = false;
  std::optional<DiscoveryJob> disc_job_;
  std::optional<DiscoveryResult> disc_result_;

  // --- Lifecycle -------------------------------------------------------------------------------
  std::mutex observe_mu_;  // held around engine.observe(); retire() takes it
  bool retired_ = false;   // under observe_mu_
  std::atomic<bool> finished_{false};
  std::atomic<size_t> memory_bytes_{0};
  std::thread tick_thread_, discovery_thread_;
};

}  // namespace stallmon::core::internal
