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
#include <set>
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
#include "task_pool.h"

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
      finding_events{0}, reads_abandoned{0}, internal_errors{0}, reboots_detected{0},
      thread_stats_fallbacks{0}, kernel_traces{0}, kernel_trace_failures{0}, kernel_trace_ns{0};
};

struct GuestKernel;

// Where the last good VMCOREINFO note of each domain is kept across restarts:
// <state_dir>/hints/<uuid>, one hex address. Only a place to look first: the note found there
// is accepted by the same checks as any other. Empty state_dir: nothing is kept.
class HintStore {
 public:
  explicit HintStore(std::string state_dir) : dir_(std::move(state_dir)) {}
  uint64_t load(const std::string& uuid) const;      // 0: none (or unreadable, or not a number)
  Result<void> save(const std::string& uuid, uint64_t gpa) const;  // atomic (rename)

 private:
  std::string path(const std::string& uuid) const;  // empty for a uuid unfit as a file name
  std::string dir_;
};

// What every pipeline of one monitor shares. Outlives the pipelines.
struct Shared {
  MonitorConfig config;
  host::HostFs* fs = nullptr;
  host::Clock* mono = nullptr;
  const diagnosis::Clock* clock = nullptr;
  GuestMemoryOpener memory_opener;
  // Where every sampler takes per-thread statistics from; null: /proc per thread. Outlives the
  // pipelines (the monitor owns it).
  host::ThreadStatSource* stat_source = nullptr;
  ClockMapping mono_to_engine;
  diagnosis::DiagnosisEngine* engine = nullptr;
  // Fed each observation after the engine's (the monitor owns it).
  diagnosis::IncidentRecorder* incidents = nullptr;
  Histogram tick_latency;
  Histogram snapshot_latency;
  Counters counters;
  // Test seam: replaces discover_guest_kernel (e.g. with a synthetic KernelAccess whose
  // GuestKernel has no Kernel; re-validation is then skipped).
  std::function<Result<std::unique_ptr<GuestKernel>>(
      pid_t, const std::vector<introspect::RamRange>&, uint64_t)>
      discover_override;
  // threads mode: where ticks and discoveries run. Null: ticks are driven by the caller and
  // discovery runs inline on the tick.
  TaskPool* tick_pool = nullptr;
  TaskPool* discovery_pool = nullptr;
  HintStore hints;

  explicit Shared(const MonitorConfig& c)
      : config(c), tick_latency(c.tick_latency_buckets_s),
        snapshot_latency(c.tick_latency_buckets_s), hints(c.state_dir) {}
  Timestamp engine_time(int64_t mono_ns) const { return mono_to_engine.to_engine(mono_ns); }
};

// A discovered guest kernel with its snapshot readers. Built by the discovery worker, then used
// by the pipeline thread alone (Kernel and SnapshotReader are single-threaded).
struct GuestKernel {
  // Everything the guest decides the size of (symbols, types, snapshot buffers) is charged here.
  std::shared_ptr<introspect::MemoryBudget> budget;
  // The domain's host sampling history (vCPU and thread rings, blocked details), charged to the
  // same budget: it bounds the domain's memory as a whole. Taken when discovery succeeds and
  // grown on the tick as the sampler grows (DomainPipeline::charge_history_growth).
  introspect::MemoryCharge history;
  std::shared_ptr<introspect::PhysicalMemory> memory;
  std::unique_ptr<introspect::Kernel> kernel;
  std::unique_ptr<introspect::KernelAccess> access;
  std::unique_ptr<introspect::SnapshotReader> tick_reader;
  std::unique_ptr<introspect::SnapshotReader> inspect_reader;
  std::string release, build_id;
  uint64_t note_gpa = 0;
  uint64_t generation = 0;  // the pipeline's memory generation it was built on
};

// Discovers the kernel of a running guest: memory source, VMCOREINFO (scan, starting at
// `hint_gpa` when non-zero), kallsyms, BTF, and both snapshot readers. Slow (100+ ms): never on
// a tick. Guest memory is read through a MeteredMemory: `bytes_read` (if set) gets what the
// discovery read, and each read is supervised (GuestReadScope). `max_cpus` (the source's vCPU
// count, 0 = unknown) bounds the CPUs read, whatever nr_cpu_ids the guest wrote.
Result<std::unique_ptr<GuestKernel>> discover_guest_kernel(const Shared& shared, pid_t pid,
                                                           const std::vector<introspect::RamRange>& ram,
                                                           uint64_t hint_gpa,
                                                           uint64_t* bytes_read = nullptr,
                                                           uint32_t max_cpus = 0);

// Guest-physical memory as the pipeline reads it: counts the bytes read, and marks each read
// as a guest read for the pool's supervisor; once the worker was abandoned, later reads fail
// at once (kTimeout) so an abandoned discovery ends soon after its stuck read returns.
class MeteredMemory final : public introspect::PhysicalMemory {
 public:
  explicit MeteredMemory(std::shared_ptr<introspect::PhysicalMemory> inner) : inner_(std::move(inner)) {}
  Result<void> read(uint64_t gpa, void* buf, size_t len) override;
  Result<void> read_batch(std::span<introspect::ReadRequest> requests) override;
  const std::vector<introspect::PhysRange>& ranges() const override { return inner_->ranges(); }
  uint64_t bytes_read() const { return bytes_.load(std::memory_order_relaxed); }

 private:
  std::shared_ptr<introspect::PhysicalMemory> inner_;
  std::atomic<uint64_t> bytes_{0};
};

// Reads the wchan of threads that sleep (S) without run progress: the sampler reads wchan only
// for D/T/t, but the VM-wide rule needs to see the main loop and the vCPUs parked on a futex
// (QEMU's big lock). Once per thread per second at most, and again when a new sleep begins.
class SleepWchanReader {
 public:
  // Threads that made no progress for this long get their wchan read.
  static constexpr int64_t kMinNoProgressNs = 250'000'000;
  static constexpr int64_t kRefreshNs = 1'000'000'000;

  // Opens and reads the wchan files through fs, which must outlive the reader.
  explicit SleepWchanReader(host::HostFs& fs) : fs_(fs) {}
  SleepWchanReader(const SleepWchanReader&) = delete;
  SleepWchanReader& operator=(const SleepWchanReader&) = delete;
  ~SleepWchanReader();

  // Fills view.wchan for a sleeping thread (view.state kSleeping) without recent progress. The
  // thread's wchan file stays open between reads (a pread of a kept descriptor costs the kernel a
  // quarter of open + read + close: host_sampler_bench, BM_PreadProcFile vs
  // BM_OpenReadCloseProcFile): idle vCPUs and qemu's idle threads are read once a second each.
  void fill(const std::string& proc_root, int32_t pid, const host::TrackedThread& thread,
            diagnosis::HostThreadView& view);
  // Forgets (and closes) the threads not listed.
  void retain_only(const std::vector<int32_t>& tids);
  uint64_t reads() const { return reads_; }
  uint64_t opens() const { return opens_; }

 private:
  struct Entry {
    int64_t read_ns = 0;
    int64_t episode = 0;  // tracker.last_progress_ns when read
    int fd = -1;          // the thread's wchan, kept open; -1 after a failed read (reopened)
    uint64_t starttime = 0;  // of the thread the entry is for
    std::string wchan;
  };
  void close(Entry& e);
  std::map<int32_t, Entry> cache_;
  host::HostFs& fs_;
  uint64_t reads_ = 0, opens_ = 0;
};

// Kernel backtraces of the guest CPUs that active findings involve (issue 12 item 1), for the
// engine to attach as evidence. Not every CPU, not every tick: a CPU is traced on the first tick
// after it becomes involved (a finding opened, or its CPU set changed), then at most once per
// kRefreshNs, at most kMaxPerTick CPUs per tick (the longest-waiting first). A CPU no finding
// involves is never traced, and its trace is forgotten. Decides only what and when: the
// pipeline reads the traces (supervised, like the snapshot).
class FindingTraces {
 public:
  static constexpr int64_t kRefreshNs = 1'000'000'000;
  static constexpr size_t kMaxPerTick = 8;
  static constexpr size_t kMaxFrames = 16;

  // The CPUs of the domain's active findings of kinds that carry traces.
  static std::set<int> involved_in(const std::vector<diagnosis::Finding>& active);
  void set_involved(std::set<int> cpus);
  const std::set<int>& involved() const { return involved_; }
  // Involved CPUs whose trace is due at now_ns: never traced first, then the oldest.
  std::vector<int> due(int64_t now_ns) const;
  void store(int cpu, diagnosis::KernelTrace trace, int64_t now_ns);
  // Sets kernel_trace on the view's CPUs that are involved and have a trace.
  void attach(diagnosis::GuestView& view) const;
  // The kernel was dropped (a reboot, a new qemu): its traces describe another boot.
  void forget_traces() { traces_.clear(); }

 private:
  struct Entry {
    int64_t taken_ns = 0;
    diagnosis::KernelTrace trace;
  };
  std::set<int> involved_;
  std::map<int, Entry> traces_;
};

// Builds the host part of a DomainObservation from a sampler (vCPUs, other threads, main loop);
// with `wchans`, sleeping threads without progress get their wchan.
void fill_host_views(const host::ProcessSampler& sampler, SleepWchanReader* wchans,
                     diagnosis::DomainObservation& obs);

// One watched domain: sampler, guest kernel, tick, discovery state machine, queries.
//
// Ticks run on the TickPool (or the caller's thread with threads=false), one at a time per
// domain; discovery runs on the DiscoveryPool (or inline). The one exception to "one tick at a
// time": a tick abandoned by the pool's supervisor inside a guest read is still on its worker
// when the next tick starts. Guest reads therefore use the kernel *borrowed* out of the tick
// state (with_kernel), and an abandoned tick only hands it back (returned_kernel_, under mu_).
class DomainPipeline : public std::enable_shared_from_this<DomainPipeline> {
 public:
  DomainPipeline(Shared& shared, const libvirt::DomainInfo& info);
  ~DomainPipeline();
  DomainPipeline(const DomainPipeline&) = delete;
  DomainPipeline& operator=(const DomainPipeline&) = delete;

  // The libvirt layer's newest description / an event (applied at the next tick).
  void post_update(const libvirt::DomainInfo& info);
  void post_event(const libvirt::DomainEvent& event, Timestamp at);
  // The domain is gone: no further observe() reaches the engine once this returns. A tick in
  // progress (maybe stuck in a read of a dying qemu) finishes on its own.
  void retire();
  bool retired() const;
  bool finished() const { return finished_.load(); }

  // One tick on the calling thread: host sample → guest snapshot (if wanted and ready) →
  // observe → pending inspect requests. Runs a due discovery inline when there is no
  // discovery pool. Contains every failure: an exception marks this domain's introspection
  // (IntrospectionHealth::error, kernel dropped), never escapes. Returns false when the tick
  // was abandoned inside a guest read (the caller must not schedule anything for it).
  bool tick();
  // Called by the supervisor when a tick of this domain was abandoned inside a guest read.
  void on_read_abandoned(const std::string& why);

  const std::string& uuid() const { return uuid_; }
  std::string name() const;
  DomainSummary summary() const;
  DomainDetail detail() const;
  Result<VcpuHistory> history(int32_t vcpu, std::chrono::nanoseconds window) const;
  Result<InspectResult> inspect(std::chrono::milliseconds timeout);
  IntrospectionHealth introspection() const;
  IntrospectionHealth wait_introspection(std::chrono::milliseconds timeout) const;
  // Waits until `pred(health)` holds or the timeout passes (tests of the threaded pools).
  IntrospectionHealth wait_health(const std::function<bool(const IntrospectionHealth&)>& pred,
                                  std::chrono::milliseconds timeout) const;
  size_t memory_bytes() const { return memory_bytes_.load(); }

 private:
  struct InspectRequest {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    bool abandoned = false;
    std::optional<Result<InspectResult>> result;
  };
  struct DiscoveryResult {
    uint64_t job = 0;
    uint64_t generation = 0;
    int64_t duration_ns = 0;
    uint64_t bytes_read = 0;
    bool paused = false;  // abandoned by the supervisor: error says why
    Result<std::unique_ptr<GuestKernel>> kernel;
  };
  struct DiscoveryJob {
    pid_t pid = 0;
    std::shared_ptr<const std::vector<introspect::RamRange>> ram;
    uint64_t hint = 0;
    uint64_t generation = 0;
    uint64_t id = 0;
    // The vCPU count the source reports: the guest's nr_cpu_ids is cut to it (0: no bound known).
    uint32_t max_cpus = 0;
  };

  bool tick_unguarded();
  // After a sample: counts and logs a fall back to /proc (sampler_ set, mu_ held).
  void account_stat_source();
  void contain_failure(const std::string& what, bool out_of_memory);
  // Grows the kernel's history charge to the sampler's memory now; over budget, the kernel is
  // dropped (kOverBudget, host sampling goes on) and false is returned.
  bool charge_history_growth(int64_t now_ns);
  void apply_inbox(std::vector<diagnosis::DomainEvent>& events, bool& rebooted);
  void manage_introspection(int64_t now_ns);
  // Runs f on the borrowed kernel inside a GuestReadScope. False: abandoned meanwhile (the
  // kernel went to returned_kernel_; the caller returns at once, touching nothing).
  bool with_kernel(const std::function<void(GuestKernel&)>& f);
  void drop_kernel(const std::string& why, int64_t now_ns, bool retry_now);
  // Drops the kernel of a boot that ended; from_event false: also tells the engine.
  void reboot_detected(const std::string& why, int64_t now_ns, bool from_event);
  void start_discovery(int64_t now_ns);
  DiscoveryResult run_discovery(const DiscoveryJob& job);
  void finish_discovery(DiscoveryResult result, int64_t now_ns);
  void schedule_retry(IntrospectionState state, const std::string& msg, int64_t now_ns);
  // Snapshot for this tick; nullopt when none was taken, when it was abandoned (*abandoned set)
  // or when it showed the previous boot's memory (the kernel is dropped then).
  std::optional<introspect::GuestSnapshot> maybe_snapshot(Timestamp now, bool* abandoned);
  // Whether the snapshot shows a guest clock that went back (a reboot); sets `why`.
  bool clock_went_back(const introspect::GuestSnapshot& snap, std::string& why) const;
  // How a proving kernel's clocks moved since the proof's base: not at all, as a running
  // kernel's do, or in a way no running kernel's do (backwards, or faster than the host).
  enum class ClockAdvance { kNone, kAdvanced, kImplausible };
  ClockAdvance clock_advance(const introspect::GuestSnapshot& snap, int64_t now_ns) const;
  void record_snapshot(const introspect::GuestSnapshot& snap, int64_t took_ns);
  // Reads the due traces of involved CPUs (FindingTraces) from this tick's snapshot, under the
  // read supervisor. False: abandoned meanwhile (as with_kernel).
  bool read_due_traces(const introspect::GuestSnapshot& snap);
  bool serve_inspect_requests();
  void set_health(const std::function<void(IntrospectionHealth&)>& f);
  // The sampler's vCPU rings since `since`, for a bundle opened this tick (the recorder's
  // Lookback). Bounded by the rings (SamplerOptions::vcpu_history) and max_lanes.
  std::vector<diagnosis::IncidentVcpuLane> incident_lookback(Timestamp since) const;

  Shared& shared_;
  const std::string uuid_;

  // --- Inbox: written by the watcher's thread, read by the tick ---------------------------
  mutable std::mutex inbox_mu_;
  std::optional<libvirt::DomainInfo> pending_info_;
  std::vector<diagnosis::DomainEvent> pending_events_;
  bool pending_reboot_ = false;  // a reboot/reset/start event: drop the kernel at once
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
  std::unique_ptr<GuestKernel> returned_kernel_;  // handed back by an abandoned tick
  std::string kernel_lost_;  // or: what it threw (the kernel is gone)

  // --- Tick state (one tick at a time) --------------------------------------------------------
  std::unique_ptr<GuestKernel> kernel_;
  bool kernel_out_ = false;  // borrowed by a tick that was abandoned: wait for it
  int64_t next_discovery_ns_ = 0;
  int64_t retry_delay_ns_ = 0;
  int64_t no_kernel_delay_ns_ = 0;
  bool retry_never_ = false;  // over budget: only a new qemu/RAM layout or a reboot retries
  int64_t last_validated_ns_ = 0;
  uint32_t failed_snapshots_ = 0;
  uint64_t note_hint_ = 0;
  bool discovery_in_flight_ = false;
  uint64_t mem_generation_ = 0;  // bumped when the memory a GuestKernel was built on changes
  uint64_t sample_errors_seen_ = 0;
  uint64_t source_errors_seen_ = 0;  // sampler_->source_errors() already counted (mu_)
  bool on_proc_fallback_ = false;    // the last tick's pass failed (logged once per run)
  SleepWchanReader wchans_;
  FindingTraces traces_;
  std::vector<diagnosis::DomainEvent> carry_events_;
  // Reboot detection: the newest clocks of this kernel's snapshots.
  std::optional<uint64_t> last_jiffies_;
  uint64_t last_guest_clock_ = 0;
  // After a reboot, a rediscovered kernel must prove it is the new boot (its clock advances
  // past the first snapshot, which must differ from the old boot's last) before its snapshots
  // are observed; not proven within reboot_proof_timeout → discover again.
  bool proving_ = false;
  int64_t proving_since_ns_ = 0;
  std::optional<uint64_t> proof_jiffies_, old_jiffies_;
  int64_t last_reboot_ns_ = 0;
  int64_t reboot_delay_ns_ = 0;  // grows while the guest's clock "reboots" it every few seconds
  uint64_t proof_clock_ = 0, old_clock_ = 0;
  int64_t proof_at_ns_ = 0;  // when the proof's base (proof_jiffies_, proof_clock_) was read

  // --- Discovery results (disc_mu_) ----------------------------------------------------------
  std::mutex disc_mu_;
  uint64_t disc_job_id_ = 0;  // the job whose result is wanted
  std::optional<DiscoveryResult> disc_result_;

  // --- Lifecycle -------------------------------------------------------------------------------
  std::mutex observe_mu_;  // held around engine.observe(); retire() takes it
  bool retired_ = false;   // under observe_mu_
  std::atomic<bool> finished_{false};
  std::atomic<size_t> memory_bytes_{0};
};

// threads mode: posts p's tick at due_ns on shared.tick_pool; every run posts the next one
// (sample_interval later; a tick late by more than an interval is skipped and counted as an
// overrun). Stops when p is retired.
void post_tick(Shared& shared, const std::shared_ptr<DomainPipeline>& p, int64_t due_ns);

// The tick after one due at due_ns: the first multiple of interval_ns after it. Every domain
// ticks on the same grid, so one pass of a ThreadStatSource (reused for half a period) serves
// them all; a domain's first tick (posted when it appears) and a skip after an overrun snap
// back to the grid.
inline int64_t next_tick_due(int64_t due_ns, int64_t interval_ns) {
  if (interval_ns <= 0) return due_ns;
  int64_t q = due_ns / interval_ns;
  if (due_ns < 0 && due_ns % interval_ns != 0) --q;  // floor for clocks before 0 (tests)
  return (q + 1) * interval_ns;
}

}  // namespace stallmon::core::internal
