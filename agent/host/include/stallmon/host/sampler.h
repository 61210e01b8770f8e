// SPDX-License-Identifier: Apache-2.0
// Host-side sampling of a qemu process's threads from /proc and the cgroup file system.
//
// The daemon calls ProcessSampler::sample_once() at its sampling rate (10 Hz by default). A tick
// costs two or three pread()s per thread on descriptors kept open across ticks; everything
// slower is rate-limited: re-listing /proc/PID/task (new and exited threads, default once per
// second), cgroup membership of vCPU threads (at the same time), and the wchan and kernel stack
// of threads in D, T or t (once per second per thread).
//
// Nothing here knows about libvirt: the caller passes the qemu pid and the vCPU index → host
// thread id map it resolved, and replaces the map when it changes.
//
// Not thread-safe: one ProcessSampler is driven by one thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/host/clock.h"
#include "stallmon/host/history.h"
#include "stallmon/host/host_fs.h"
#include "stallmon/host/proc_parse.h"
#include "stallmon/host/thread_stat_source.h"

namespace stallmon::host {

struct SamplerOptions {
  std::string proc_root = "proc";             // relative to the HostFs root
  std::string cgroup_root = "sys/fs/cgroup";  // relative to the HostFs root
  int64_t enumerate_interval_ns = 1'000'000'000;  // re-list /proc/PID/task
  int64_t detail_interval_ns = 1'000'000'000;     // per-thread wchan/stack rate limit
  // status (context switches, TracerPid) costs the kernel more than stat and schedstat together,
  // so it is read at most this often, and whenever the state letter changed since the last read
  // (so TracerPid is fresh when a thread enters 't'). 0 = every sample, < 0 = never.
  int64_t status_interval_ns = 1'000'000'000;
  // Cheaper mode: while schedstat shows the thread ran since the previous sample, skip stat and
  // record the state as 'R' with kStateInferred (it ran during the interval), re-reading stat at
  // least every stat_refresh_interval_ns for the CPU and tick counts. A thread that stops making
  // progress gets its real state letter from the next sample on, so rules that need "blocked
  // and no run progress for N ms" see the same thing; what changes is that the first sample
  // after a thread blocks may still say 'R' if it ran earlier in that interval. Off by default.
  bool skip_stat_while_running = false;
  int64_t stat_refresh_interval_ns = 1'000'000'000;
  bool read_stacks = true;         // /proc/.../stack: root only, and the costliest file here
  bool sample_other_threads = true;  // non-vCPU qemu threads (main loop, I/O, RCU...)
  // Per vCPU: vcpu_history samples at full rate, then up to vcpu_history_coarse older ones at
  // most one per history_coarse_interval_ns (SampleRing). 600 + 540: 10 minutes, the last at
  // 10 Hz (64 KB per vCPU; 6000 + 0 would be every sample, 336 KB).
  size_t vcpu_history = 600;
  size_t vcpu_history_coarse = 540;
  int64_t history_coarse_interval_ns = 1'000'000'000;
  size_t thread_history = 20;      // samples per other thread: 2 s at 10 Hz
  size_t max_threads = 1024;       // other threads tracked per process (bounds memory)
  int64_t signal_window_ns = 1'000'000'000;  // default window for signals()
  // With a ThreadStatSource: a pass younger than this is reused instead of running another
  // (half the 10 Hz period: every domain ticking in the same period shares one pass).
  int64_t pass_max_age_ns = 50'000'000;
};

// What a thread in D, T or t was waiting on, read at most once per detail_interval_ns.
struct BlockedDetail {
  int64_t t_ns = 0;        // when read; 0 = never
  char state = '?';        // the state it was in then
  std::string wchan;       // "" when the kernel gives none (or hides it)
  std::vector<std::string> stack;  // innermost first; empty when unreadable
  int stack_errno = 0;     // why the stack could not be read (EACCES without root), else 0

  size_t memory_bytes() const;
};

// Reads one thread. Keeps stat, schedstat, status (and for vCPUs the cgroup's cpu.stat) open.
class ThreadSampler {
 public:
  // want_cgroup: look for the thread's own cpu cgroup (vCPU threads).
  ThreadSampler(HostFs& fs, const SamplerOptions& opts, int32_t pid, int32_t tid,
                bool want_cgroup);
  ~ThreadSampler();
  ThreadSampler(const ThreadSampler&) = delete;
  ThreadSampler& operator=(const ThreadSampler&) = delete;

  // Reads the thread at time now_ns. Errors: is_gone() when the thread exited or its tid now
  // belongs to another thread (starttime changed; reused() is then true); kCorrupt or kIo for
  // anything else, after one reopen-and-retry. The first sample (and only it) carries kFirst.
  Result<ThreadSample> sample(int64_t now_ns);

  // The same sample from a ThreadStatSource pass instead of the thread's /proc files (the
  // cgroup's cpu.stat is still read when the thread has its own cgroup). t_ns is the pass's
  // time. The blocked detail comes from the pass's stack when it has one for this thread.
  Result<ThreadSample> sample_from(const ThreadStat& st, const ThreadStatPass& pass,
                                   ThreadStatSource& source);

  // Re-reads the thread's cgroup membership. The thread has its own cgroup when its cpu cgroup
  // differs from the process's (libvirt's .../vcpuN, or a cgroup a test moved it into). v2_id,
  // cpu_id: the thread's cgroup ids in the pass this listing came from (ThreadStat; 0 unknown),
  // kept for cgroup_current().
  void refresh_cgroup(const CpuCgroup& process_cgroup, uint64_t v2_id = 0, uint64_t cpu_id = 0);
  // Whether the membership read last is still the thread's: a pass knows its cgroup ids and they
  // are those of that read (the thread has not moved), and its kept cpu.stat was not lost since.
  bool cgroup_current(uint64_t v2_id, uint64_t cpu_id) const;

  // Releases the descriptors; sample() reopens them.
  void close();

  int32_t tid() const { return tid_; }
  const std::string& comm() const { return comm_; }
  uint64_t starttime_ticks() const { return starttime_; }
  bool reused() const { return reused_; }
  const CpuCgroup& cgroup() const { return cgroup_; }
  bool own_cgroup() const { return cgroup_fd_ >= 0; }
  const BlockedDetail& detail() const { return detail_; }
  size_t memory_bytes() const;

 private:
  Result<void> open_files();
  Result<ThreadSample> read_once(int64_t now_ns);
  void read_detail(int64_t now_ns, char state);
  void read_cgroup_stat(ThreadSample& s);
  void finish_sample(ThreadSample& s);

  HostFs& fs_;
  const SamplerOptions& opts_;
  int32_t tid_;
  std::string dir_;  // proc/PID/task/TID/
  bool want_cgroup_;
  int stat_fd_ = -1, schedstat_fd_ = -1, status_fd_ = -1, cgroup_fd_ = -1;
  CgroupVersion cgroup_version_ = CgroupVersion::kNone;
  CpuCgroup cgroup_;
  std::string cgroup_stat_path_;
  bool cgroup_changed_ = false;
  uint64_t cgroup_v2_id_ = 0, cpu_cgroup_id_ = 0;  // the ids of the last refresh_cgroup()
  bool cgroup_lost_ = false;                       // the kept cpu.stat failed since
  bool started_ = false;
  bool reused_ = false;
  uint64_t starttime_ = 0;
  std::string comm_;
  int64_t last_status_ns_ = 0;
  char last_status_state_ = 0;
  TaskStatus last_status_;
  int64_t last_stat_ns_ = 0;
  uint64_t last_run_ns_ = 0;
  int16_t last_cpu_ = -1;
  uint32_t last_ticks_ = 0;
  bool has_status_ = false;
  bool has_schedstat_ = true;
  BlockedDetail detail_;
};

// One thread of the process as the ProcessSampler sees it: its reader, history and tracker.
class TrackedThread {
 public:
  int32_t tid() const { return tid_; }
  int32_t vcpu() const { return vcpu_; }  // vCPU index, or -1 for other qemu threads
  bool present() const { return present_; }  // false once the thread exited or tid was reused
  bool tid_reused() const { return reused_; }
  const std::string& comm() const { return sampler_->comm(); }
  const ThreadSampler& sampler() const { return *sampler_; }
  const SampleRing& history() const { return history_; }
  const StateTracker& tracker() const { return tracker_; }
  const BlockedDetail& detail() const { return sampler_->detail(); }
  uint64_t errors() const { return errors_; }  // samples lost to kIo/kCorrupt
  const Error& last_error() const { return last_error_; }
  ThreadSignals signals(int64_t window_ns) const {
    return derive_signals(history_, tracker_, window_ns);
  }
  size_t memory_bytes() const;

 private:
  friend class ProcessSampler;
  TrackedThread(HostFs& fs, const SamplerOptions& opts, int32_t pid, int32_t tid, int32_t vcpu,
                size_t history);

  int32_t tid_, vcpu_;
  bool present_ = true;
  bool reused_ = false;
  std::unique_ptr<ThreadSampler> sampler_;
  SampleRing history_;
  StateTracker tracker_;
  uint64_t errors_ = 0;
  Error last_error_;
};

class ProcessSampler {
 public:
  // vcpu_tids: vCPU index → host thread id. fs, clock and the options must outlive the sampler.
  ProcessSampler(HostFs& fs, Clock& clock, int32_t pid, const std::map<int32_t, int32_t>& vcpu_tids,
                 SamplerOptions opts = {});
  // The threads it tracks point at its options: not copyable or movable.
  ProcessSampler(const ProcessSampler&) = delete;
  ProcessSampler& operator=(const ProcessSampler&) = delete;
  ~ProcessSampler();

  // Takes per-thread statistics from source's passes instead of reading /proc per thread
  // (nullptr: back to /proc). Watches pid() in the source (and unwatches it on destruction or
  // when replaced). A tick whose pass fails falls back to /proc for that tick and counts it in
  // source_errors(). The source must outlive the sampler.
  void set_stat_source(ThreadStatSource* source);
  ThreadStatSource* stat_source() const { return source_; }
  uint64_t source_errors() const { return source_errors_; }
  const Error& last_source_error() const { return last_source_error_; }

  // Replaces the vCPU map. A vCPU whose tid changed keeps its history; its next sample starts a
  // new baseline (kFirst). vCPUs no longer in the map are dropped.
  void set_vcpu_threads(const std::map<int32_t, int32_t>& vcpu_tids);

  // One tick: samples every vCPU thread and (if enabled) every other thread; re-lists threads
  // when enumerate_interval_ns has passed. Errors: kNotFound once the process is gone (nothing is
  // sampled then; the history stays readable), also when the pid now belongs to another
  // process (checked by the process's starttime at each listing). A single thread's failure is
  // recorded on it (errors(), present()) and does not fail the tick.
  Result<void> sample_once();

  int32_t pid() const { return pid_; }
  bool process_gone() const { return gone_; }
  // starttime (clock ticks after boot) of the process first seen under pid(), once listed.
  std::optional<uint64_t> process_starttime() const { return process_starttime_; }
  uint64_t ticks() const { return ticks_; }
  const SamplerOptions& options() const { return opts_; }

  // vCPU by index, or nullptr.
  const TrackedThread* vcpu(int32_t index) const;
  // Every vCPU, by index.
  std::vector<const TrackedThread*> vcpus() const;
  // Every other thread being tracked (not the vCPUs), by tid.
  std::vector<const TrackedThread*> other_threads() const;
  // Signals for a vCPU over the default window; invalid (valid=false) for an unknown index.
  ThreadSignals vcpu_signals(int32_t index) const;
  ThreadSignals vcpu_signals(int32_t index, int64_t window_ns) const;

  // Heap and object memory held for histories, details and readers. Bounded by
  // (vCPUs × vcpu_history + max_threads × thread_history) × sizeof(ThreadSample) plus at most
  // ~17 KB of blocked detail per thread.
  size_t memory_bytes() const;

 private:
  // pass: list the threads from it instead of /proc/PID/task.
  Result<void> enumerate(int64_t now_ns, const ThreadStatPass* pass);
  Result<void> list_threads(const std::string& proc_dir, const std::string& task_dir,
                            std::set<int32_t>& listed);
  Result<void> adopt_threads(const std::set<int32_t>& listed, const std::string& task_dir,
                             const ThreadStatPass* pass);
  Error mark_gone(const std::string& why);
  void sample_thread(TrackedThread& t);
  void sample_thread_from(TrackedThread& t, const ThreadStatPass& pass);
  void record(TrackedThread& t, Result<ThreadSample> s);
  Result<void> sample_from_pass(const ThreadStatPass& pass, int64_t now_ns);

  HostFs& fs_;
  Clock& clock_;
  int32_t pid_;
  SamplerOptions opts_;
  std::map<int32_t, std::unique_ptr<TrackedThread>> vcpus_;    // by vCPU index
  std::map<int32_t, std::unique_ptr<TrackedThread>> threads_;  // other threads, by tid
  int64_t last_enumerate_ns_ = 0;
  bool enumerated_ = false;
  bool gone_ = false;
  std::optional<uint64_t> process_starttime_;
  // The main thread's cpu cgroup, and its cgroup ids when it was read (0: re-read next listing).
  CpuCgroup process_cgroup_;
  uint64_t process_cgroup_v2_id_ = 0, process_cpu_cgroup_id_ = 0;
  uint64_t ticks_ = 0;
  ThreadStatSource* source_ = nullptr;
  uint64_t source_errors_ = 0;
  Error last_source_error_;
};

}  // namespace stallmon::host
