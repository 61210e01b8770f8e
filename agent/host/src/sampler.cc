// SPDX-License-Identifier: Apache-2.0
#include "stallmon/host/sampler.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <set>

namespace stallmon::host {
namespace {

// Large enough for any status file (its cpu masks grow with the CPU count).
constexpr size_t kStatusBuf = 16384;
constexpr size_t kSmallBuf = 1024;

bool is_blocked_state(char s) { return s == 'D' || s == 'T' || s == 't'; }

Error gone_error(const std::string& what) { return Error(ErrorCode::kNotFound, what); }

int64_t ns_per_tick() {
  static const int64_t v = [] {
    long hz = sysconf(_SC_CLK_TCK);
    return hz > 0 ? 1'000'000'000 / hz : 10'000'000;
  }();
  return v;
}

void close_fd(HostFs& fs, int& fd) {
  if (fd >= 0) fs.close(fd);
  fd = -1;
}

Result<std::string_view> read_into(HostFs& fs, int fd, char* buf, size_t len) {
  STALLMON_TRY(size_t n, fs.read(fd, buf, len));
  return std::string_view(buf, n);
}

std::string join(const std::vector<std::string>& v, char sep) {
  std::string out;
  for (const std::string& s : v) {
    if (!out.empty()) out += sep;
    out += s;
  }
  return out;
}

}  // namespace

size_t BlockedDetail::memory_bytes() const {
  size_t n = wchan.capacity() + stack.capacity() * sizeof(std::string);
  for (const std::string& f : stack) n += f.capacity();
  return n;
}

// ---- ThreadSampler ----

ThreadSampler::ThreadSampler(HostFs& fs, const SamplerOptions& opts, int32_t pid, int32_t tid,
                             bool want_cgroup)
    : fs_(fs),
      opts_(opts),
      tid_(tid),
      dir_(opts.proc_root + "/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/"),
      want_cgroup_(want_cgroup) {}

ThreadSampler::~ThreadSampler() { close(); }

void ThreadSampler::close() {
  close_fd(fs_, stat_fd_);
  close_fd(fs_, schedstat_fd_);
  close_fd(fs_, status_fd_);
  close_fd(fs_, cgroup_fd_);
}

size_t ThreadSampler::memory_bytes() const {
  return sizeof(*this) + dir_.capacity() + comm_.capacity() + cgroup_.path.capacity() +
         cgroup_stat_path_.capacity() + detail_.memory_bytes();
}

Result<void> ThreadSampler::open_files() {
  if (stat_fd_ < 0) {
    STALLMON_TRY(stat_fd_, fs_.open(dir_ + "stat"));
  }
  if (schedstat_fd_ < 0 && has_schedstat_) {
    // Absent without CONFIG_SCHED_INFO: fall back to stat's tick counts for run time.
    Result<int> fd = fs_.open(dir_ + "schedstat");
    if (fd.ok()) {
      schedstat_fd_ = *fd;
    } else if (is_gone(fd.error()) && fd.error().sys_errno == ENOENT) {
      // Either the thread exited or the kernel lacks the file; stat decides which.
      has_schedstat_ = false;
    } else {
      return std::move(fd).error();
    }
  }
  if (status_fd_ < 0 && opts_.status_interval_ns >= 0) {
    STALLMON_TRY(status_fd_, fs_.open(dir_ + "status"));
  }
  return Ok();
}

bool ThreadSampler::cgroup_current(uint64_t v2_id, uint64_t cpu_id) const {
  return v2_id != 0 && cpu_id != 0 && v2_id == cgroup_v2_id_ && cpu_id == cpu_cgroup_id_ &&
         !cgroup_lost_;
}

void ThreadSampler::refresh_cgroup(const CpuCgroup& process_cgroup, uint64_t v2_id, uint64_t cpu_id) {
  if (!want_cgroup_) return;
  cgroup_v2_id_ = v2_id;
  cpu_cgroup_id_ = cpu_id;
  cgroup_lost_ = false;
  CpuCgroup mine;
  if (Result<std::string> text = read_whole(fs_, dir_ + "cgroup"); text.ok()) {
    if (auto m = parse_proc_cgroup(*text); m.ok()) mine = find_cpu_cgroup(*m);
  }
  // The root cgroup has no quota of its own, whatever the main thread's membership reads as.
  bool own = mine.version != CgroupVersion::kNone && mine.path != "/" &&
             (mine.version != process_cgroup.version || mine.path != process_cgroup.path);
  if (own && cgroup_fd_ >= 0 && mine.path == cgroup_.path && mine.version == cgroup_.version) {
    return;  // unchanged
  }
  bool had = cgroup_fd_ >= 0;
  close_fd(fs_, cgroup_fd_);
  cgroup_ = mine;
  cgroup_stat_path_.clear();
  cgroup_version_ = CgroupVersion::kNone;
  if (own) {
    // Mount points differ between layouts: v1 hierarchies are mounted by controller list
    // ("cpu,cpuacct", or "cpu" as a symlink to it); v2 is the root itself, or "unified" in the
    // hybrid layout.
    std::vector<std::string> candidates;
    const std::string& root = opts_.cgroup_root;
    if (mine.version == CgroupVersion::kV1) {
      candidates.push_back(root + "/" + join(mine.controllers, ',') + mine.path);
      candidates.push_back(root + "/cpu" + mine.path);
    } else {
      candidates.push_back(root + mine.path);
      candidates.push_back(root + "/unified" + mine.path);
    }
    for (const std::string& dir : candidates) {
      std::string path = dir == root + "/" ? dir + "cpu.stat" : dir + "/cpu.stat";
      Result<std::string> text = read_whole(fs_, path);
      if (!text.ok()) continue;
      bool parses = mine.version == CgroupVersion::kV1 ? parse_cgroup_v1_cpu_stat(*text).ok()
                                                        : parse_cgroup_v2_cpu_stat(*text).ok();
      if (!parses) continue;
      if (Result<int> fd = fs_.open(path); fd.ok()) {
        cgroup_fd_ = *fd;
        cgroup_stat_path_ = path;
        cgroup_version_ = mine.version;
        break;
      }
    }
  }
  cgroup_changed_ = had || cgroup_fd_ >= 0;
}

Result<ThreadSample> ThreadSampler::sample(int64_t now_ns) {
  if (reused_) return gone_error(dir_ + ": tid reused");
  Result<ThreadSample> s = read_once(now_ns);
  if (!s.ok() && !reused_) {
    // A kept descriptor can fail transiently, or for good when the thread exited (ESRCH). Reopen
    // once: ENOENT then means exited, and a thread found under the same tid is checked against
    // the starttime seen before.
    close();
    s = read_once(now_ns);
  }
  if (!s.ok()) {
    close();
    if (is_gone(s.error())) return gone_error(dir_ + (reused_ ? ": tid reused" : ": exited"));
    return s;
  }
  if (is_blocked_state(s->state)) read_detail(now_ns, s->state);
  return s;
}

Result<ThreadSample> ThreadSampler::read_once(int64_t now_ns) {
  STALLMON_TRY_VOID(open_files());
  ThreadSample s;
  s.t_ns = now_ns;

  char buf[kSmallBuf];
  if (schedstat_fd_ >= 0) {
    STALLMON_TRY(std::string_view text, read_into(fs_, schedstat_fd_, buf, sizeof buf));
    STALLMON_TRY(SchedStat ss, parse_schedstat(text));
    s.run_ns = ss.run_ns;
    s.wait_ns = ss.wait_ns;
    s.timeslices = static_cast<uint32_t>(ss.timeslices);
    s.flags |= ThreadSample::kHasSchedstat;
  }

  const bool skip_stat = opts_.skip_stat_while_running && started_ &&
                         (s.flags & ThreadSample::kHasSchedstat) && s.run_ns > last_run_ns_ &&
                         now_ns - last_stat_ns_ < opts_.stat_refresh_interval_ns;
  if (skip_stat) {
    s.state = 'R';
    s.cpu = last_cpu_;
    s.cpu_ticks = last_ticks_;
    s.flags |= ThreadSample::kStateInferred;
  } else {
    STALLMON_TRY(std::string_view stat_text, read_into(fs_, stat_fd_, buf, sizeof buf));
    // An empty read is what a file of a thread that just exited can return.
    if (stat_text.empty()) return Error::io(dir_ + "stat: empty", ESRCH);
    STALLMON_TRY(TaskStat st, parse_task_stat(stat_text));
    if (started_ && st.starttime_ticks != starttime_) {
      reused_ = true;
      return gone_error(dir_ + ": tid reused");
    }
    s.state = st.state;
    s.cpu = static_cast<int16_t>(std::clamp<int32_t>(st.processor, -1, INT16_MAX));
    uint64_t ticks = st.utime_ticks + st.stime_ticks;
    s.cpu_ticks = static_cast<uint32_t>(ticks);
    if (!(s.flags & ThreadSample::kHasSchedstat)) {
      s.run_ns = ticks * static_cast<uint64_t>(ns_per_tick());  // coarse, but still progress
    }
    if (!started_) starttime_ = st.starttime_ticks;
    if (comm_ != st.comm) comm_ = std::move(st.comm);  // threads rename themselves (rarely)
    last_stat_ns_ = now_ns;
    last_cpu_ = s.cpu;
    last_ticks_ = s.cpu_ticks;
  }

  if (status_fd_ >= 0 &&
      (!has_status_ || opts_.status_interval_ns == 0 || s.state != last_status_state_ ||
       now_ns - last_status_ns_ >= opts_.status_interval_ns)) {
    static thread_local char status_buf[kStatusBuf];
    STALLMON_TRY(std::string_view text, read_into(fs_, status_fd_, status_buf, kStatusBuf));
    STALLMON_TRY(last_status_, parse_task_status(text));
    has_status_ = true;
    last_status_ns_ = now_ns;
    last_status_state_ = s.state;
    s.flags |= ThreadSample::kHasStatus;
  }
  s.voluntary_switches = static_cast<uint32_t>(last_status_.voluntary_ctxt_switches);
  s.involuntary_switches = static_cast<uint32_t>(last_status_.nonvoluntary_ctxt_switches);
  if (last_status_.tracer_pid != 0) s.flags |= ThreadSample::kTraced;

  read_cgroup_stat(s);
  finish_sample(s);
  return s;
}

void ThreadSampler::finish_sample(ThreadSample& s) {
  if (!started_) {
    started_ = true;
    s.flags |= ThreadSample::kFirst;
  }
  last_run_ns_ = s.run_ns;
}

void ThreadSampler::read_cgroup_stat(ThreadSample& s) {
  if (cgroup_fd_ >= 0) {
    char buf[kSmallBuf];
    Result<std::string_view> text = read_into(fs_, cgroup_fd_, buf, sizeof buf);
    Result<CgroupCpuStat> cs = Error(ErrorCode::kNotFound, "");
    if (text.ok()) {
      cs = cgroup_version_ == CgroupVersion::kV1 ? parse_cgroup_v1_cpu_stat(*text)
                                                  : parse_cgroup_v2_cpu_stat(*text);
    }
    if (cs.ok()) {
      s.throttled_ns = cs->throttled_ns;
      s.nr_throttled = static_cast<uint32_t>(cs->nr_throttled);
      s.flags |= ThreadSample::kHasCgroup;
      if (cgroup_changed_) s.flags |= ThreadSample::kCgroupChanged;
      cgroup_changed_ = false;
    } else {
      // The cgroup was removed (libvirt tore it down, a test injector cleaned up): the thread
      // is no longer in it. The next refresh_cgroup() finds where it went.
      close_fd(fs_, cgroup_fd_);
      cgroup_lost_ = true;
    }
  }
}

Result<ThreadSample> ThreadSampler::sample_from(const ThreadStat& st, const ThreadStatPass& pass,
                                                ThreadStatSource& source) {
  if (reused_) return gone_error(dir_ + ": tid reused");
  if (started_ && st.starttime_ticks() != starttime_) {
    reused_ = true;
    close();
    return gone_error(dir_ + ": tid reused");
  }
  ThreadSample s;
  s.t_ns = pass.t_ns;
  s.state = st.state;
  s.cpu = static_cast<int16_t>(std::clamp<int32_t>(st.cpu, -1, INT16_MAX));
  s.run_ns = st.run_ns;
  s.wait_ns = st.wait_ns;
  s.timeslices = static_cast<uint32_t>(st.timeslices);
  // stat's utime + stime are sum_exec_runtime split by tick accounting and rounded: the sum
  // is run_ns in clock ticks (within a tick of /proc's figure).
  s.cpu_ticks = static_cast<uint32_t>(st.run_ns / static_cast<uint64_t>(ns_per_tick()));
  s.voluntary_switches = static_cast<uint32_t>(st.voluntary_switches);
  s.involuntary_switches = static_cast<uint32_t>(st.involuntary_switches);
  s.flags |= ThreadSample::kHasSchedstat | ThreadSample::kHasStatus;
  if (st.traced) s.flags |= ThreadSample::kTraced;
  if (!started_) starttime_ = st.starttime_ticks();
  if (comm_ != st.comm) comm_ = st.comm;
  last_stat_ns_ = s.t_ns;
  last_cpu_ = s.cpu;
  last_ticks_ = s.cpu_ticks;
  read_cgroup_stat(s);
  finish_sample(s);
  if (st.stack_read) {
    std::span<const uint64_t> stack = pass.stack(st);
    detail_.t_ns = s.t_ns;
    detail_.state = st.state;
    detail_.wchan = source.wchan(stack);
    detail_.stack.clear();
    if (opts_.read_stacks) detail_.stack = source.frames(stack);
    detail_.stack_errno = st.stack_error ? EIO : 0;
  }
  return s;
}

void ThreadSampler::read_detail(int64_t now_ns, char state) {
  if (detail_.t_ns != 0 && now_ns - detail_.t_ns < opts_.detail_interval_ns) return;
  detail_.t_ns = now_ns;
  detail_.state = state;
  Result<std::string> w = read_whole(fs_, dir_ + "wchan", 512);
  detail_.wchan = w.ok() ? parse_wchan(*w) : std::string();
  detail_.stack.clear();
  detail_.stack_errno = 0;
  if (opts_.read_stacks) {
    Result<std::string> st = read_whole(fs_, dir_ + "stack", 16384);
    if (st.ok()) {
      detail_.stack = parse_stack(*st);
    } else {
      detail_.stack_errno = st.error().sys_errno != 0 ? st.error().sys_errno : EIO;
    }
  }
  // The kernel prints wchan 0 for a blocked task still on a runqueue (6.12+ delayed dequeue
  // keeps a sleeper with negative lag queued); its stack still says where it blocked.
  if (detail_.wchan.empty() && !detail_.stack.empty()) {
    detail_.wchan = frame_function(detail_.stack.front());
  }
}

// ---- TrackedThread ----

TrackedThread::TrackedThread(HostFs& fs, const SamplerOptions& opts, int32_t pid, int32_t tid,
                             int32_t vcpu, size_t history)
    : tid_(tid),
      vcpu_(vcpu),
      sampler_(std::make_unique<ThreadSampler>(fs, opts, pid, tid, vcpu >= 0)),
      // Only vCPUs keep a long, thinned history; other threads a few seconds at full rate.
      history_(history, vcpu >= 0 ? opts.vcpu_history_coarse : 0, opts.history_coarse_interval_ns) {}

size_t TrackedThread::memory_bytes() const {
  return sizeof(*this) + sampler_->memory_bytes() + history_.memory_bytes() +
         last_error_.message.capacity();
}

// ---- ProcessSampler ----

ProcessSampler::ProcessSampler(HostFs& fs, Clock& clock, int32_t pid,
                               const std::map<int32_t, int32_t>& vcpu_tids, SamplerOptions opts)
    : fs_(fs), clock_(clock), pid_(pid), opts_(std::move(opts)) {
  set_vcpu_threads(vcpu_tids);
}

ProcessSampler::~ProcessSampler() { set_stat_source(nullptr); }

void ProcessSampler::set_stat_source(ThreadStatSource* source) {
  if (source_ == source) return;
  if (source_) source_->unwatch(pid_);
  source_ = nullptr;
  if (source) {
    if (Result<void> r = source->watch(pid_); !r.ok()) {
      ++source_errors_;
      last_source_error_ = std::move(r).error();
      return;  // stays on /proc
    }
    source_ = source;
  }
}

void ProcessSampler::set_vcpu_threads(const std::map<int32_t, int32_t>& vcpu_tids) {
  for (auto it = vcpus_.begin(); it != vcpus_.end();) {
    it = vcpu_tids.count(it->first) ? std::next(it) : vcpus_.erase(it);
  }
  for (auto [index, tid] : vcpu_tids) {
    threads_.erase(tid);  // it was tracked as an ordinary thread until now
    auto it = vcpus_.find(index);
    if (it != vcpus_.end() && it->second->tid_ == tid) continue;
    auto t = std::unique_ptr<TrackedThread>(
        new TrackedThread(fs_, opts_, pid_, tid, index, opts_.vcpu_history));
    if (it != vcpus_.end()) {
      // Same vCPU, new thread: keep its history; the new reader's first sample has kFirst.
      t->history_ = std::move(it->second->history_);
      t->tracker_ = it->second->tracker_;
      it->second = std::move(t);
    } else {
      vcpus_.emplace(index, std::move(t));
    }
  }
  // Make the next tick look at cgroups and threads again.
  enumerated_ = false;
}

Result<void> ProcessSampler::enumerate(int64_t now_ns, const ThreadStatPass* pass) {
  last_enumerate_ns_ = now_ns;
  enumerated_ = true;
  const std::string proc_dir = opts_.proc_root + "/" + std::to_string(pid_);
  const std::string task_dir = proc_dir + "/task";
  std::set<int32_t> listed;
  if (pass) {
    std::span<const ThreadStat> mine = pass->threads_of(pid_);
    if (mine.empty()) return mark_gone("exited");
    if (const ThreadStat* leader = pass->find(pid_, pid_)) {
      if (!process_starttime_) process_starttime_ = leader->starttime_ticks();
      if (*process_starttime_ != leader->starttime_ticks()) return mark_gone("exited (pid reused)");
    }
    for (const ThreadStat& t : mine) listed.insert(t.tid);
  } else {
    STALLMON_TRY_VOID(list_threads(proc_dir, task_dir, listed));
  }
  return adopt_threads(listed, task_dir, pass);
}

Result<void> ProcessSampler::list_threads(const std::string& proc_dir, const std::string& task_dir,
                                          std::set<int32_t>& listed) {
  // The process's starttime tells a pid reused by another process (after qemu exited between
  // two listings) from the qemu first seen: otherwise its threads would be adopted as qemu's.
  Result<std::string> stat_text = read_whole(fs_, proc_dir + "/stat", 1024);
  if (!stat_text.ok()) {
    if (is_gone(stat_text.error())) return mark_gone("exited");
    return std::move(stat_text).error().context("reading process stat");
  }
  STALLMON_TRY(TaskStat pst, parse_task_stat(*stat_text));
  if (!process_starttime_) process_starttime_ = pst.starttime_ticks;
  if (*process_starttime_ != pst.starttime_ticks) return mark_gone("exited (pid reused)");

  Result<std::vector<std::string>> names = fs_.list_dir(task_dir);
  if (!names.ok()) {
    if (!is_gone(names.error())) return std::move(names).error().context("listing threads");
    return mark_gone("exited");
  }
  for (const std::string& n : *names) {
    int32_t tid = 0;
    if (n.empty() || n.size() > 10 || n.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    tid = static_cast<int32_t>(std::stol(n));
    listed.insert(tid);
  }
  return Ok();
}

Result<void> ProcessSampler::adopt_threads(const std::set<int32_t>& listed,
                                           const std::string& task_dir, const ThreadStatPass* pass) {
  std::set<int32_t> vcpu_tids;
  for (auto& [i, t] : vcpus_) {
    vcpu_tids.insert(t->tid_);
    if (!listed.count(t->tid_) && t->present_) {
      t->present_ = false;
      t->sampler_->close();
    }
  }
  if (opts_.sample_other_threads) {
    for (auto it = threads_.begin(); it != threads_.end();) {
      it = listed.count(it->first) ? std::next(it) : threads_.erase(it);
    }
    for (int32_t tid : listed) {
      if (vcpu_tids.count(tid) || threads_.count(tid)) continue;
      if (threads_.size() >= opts_.max_threads) break;
      threads_.emplace(tid, std::unique_ptr<TrackedThread>(
                                new TrackedThread(fs_, opts_, pid_, tid, -1, opts_.thread_history)));
    }
  }

  // vCPU cgroups are compared with the process's own (the main thread's): only a cgroup of the
  // vCPU's own says anything about that vCPU's quota. With a pass that carries cgroup ids (the
  // BPF source) a membership is re-read only when the thread moved: reading /proc/TID/cgroup for
  // every vCPU at every listing was ~17 % of perf's samples of the monitor at 10 domains
  // (tests/scale/README.md). Without ids, at every listing.
  if (!vcpus_.empty()) {
    auto ids_of = [&](int32_t tid) -> std::pair<uint64_t, uint64_t> {
      const ThreadStat* st = pass ? pass->find(pid_, tid) : nullptr;
      return st ? std::pair{st->cgroup_v2_id, st->cpu_cgroup_id} : std::pair<uint64_t, uint64_t>{0, 0};
    };
    const auto [main_v2, main_cpu] = ids_of(pid_);
    const bool reread_process = main_v2 == 0 || main_cpu == 0 || main_v2 != process_cgroup_v2_id_ ||
                                main_cpu != process_cpu_cgroup_id_;
    if (reread_process) {
      process_cgroup_ = {};
      process_cgroup_v2_id_ = process_cpu_cgroup_id_ = 0;
      std::string path = task_dir + "/" + std::to_string(pid_) + "/cgroup";
      if (Result<std::string> text = read_whole(fs_, path); text.ok()) {
        if (auto m = parse_proc_cgroup(*text); m.ok()) {
          process_cgroup_ = find_cpu_cgroup(*m);
          process_cgroup_v2_id_ = main_v2;
          process_cpu_cgroup_id_ = main_cpu;
        }
      }
    }
    for (auto& [i, t] : vcpus_) {
      if (!t->present_) continue;
      const auto [v2, cpu] = ids_of(t->tid_);
      if (reread_process || !t->sampler_->cgroup_current(v2, cpu)) {
        t->sampler_->refresh_cgroup(process_cgroup_, v2, cpu);
      }
    }
  }
  return Ok();
}

Error ProcessSampler::mark_gone(const std::string& why) {
  gone_ = true;
  for (auto& [i, t] : vcpus_) {
    t->present_ = false;
    t->sampler_->close();
  }
  threads_.clear();
  return gone_error("process " + std::to_string(pid_) + " " + why);
}

void ProcessSampler::sample_thread(TrackedThread& t) {
  record(t, t.sampler_->sample(clock_.now_ns()));
}

void ProcessSampler::sample_thread_from(TrackedThread& t, const ThreadStatPass& pass) {
  // A pass shared with an earlier tick of this process has nothing new.
  if (!t.history_.empty() && t.history_.newest().t_ns >= pass.t_ns) return;
  const ThreadStat* st = pass.find(pid_, t.tid_);
  if (!st) {
    t.present_ = false;  // not in the kernel's task list: exited
    t.sampler_->close();
    return;
  }
  record(t, t.sampler_->sample_from(*st, pass, *source_));
}

void ProcessSampler::record(TrackedThread& t, Result<ThreadSample> s) {
  if (!s.ok()) {
    if (is_gone(s.error())) {
      t.present_ = false;
      t.reused_ = t.sampler_->reused();
    } else {
      ++t.errors_;
      t.last_error_ = std::move(s).error();
    }
    return;
  }
  t.history_.push(*s);
  t.tracker_.observe(*s);
}

Result<void> ProcessSampler::sample_from_pass(const ThreadStatPass& pass, int64_t now_ns) {
  if (!enumerated_ || now_ns - last_enumerate_ns_ >= opts_.enumerate_interval_ns) {
    STALLMON_TRY_VOID(enumerate(now_ns, &pass));
  }
  for (auto& [i, t] : vcpus_) {
    if (t->present_) sample_thread_from(*t, pass);
  }
  for (auto it = threads_.begin(); it != threads_.end();) {
    sample_thread_from(*it->second, pass);
    it = it->second->present_ ? std::next(it) : threads_.erase(it);
  }
  return Ok();
}

Result<void> ProcessSampler::sample_once() {
  if (gone_) return gone_error("process " + std::to_string(pid_) + " exited");
  ++ticks_;
  int64_t now = clock_.now_ns();
  if (source_) {
    auto pass = source_->fresh(now, opts_.pass_max_age_ns);
    // A pass from before this process was watched does not cover it.
    if (pass.ok() && !(*pass)->was_watched(pid_)) pass = source_->collect(now);
    if (pass.ok()) return sample_from_pass(**pass, now);
    ++source_errors_;
    last_source_error_ = std::move(pass).error();
    // This tick reads /proc instead.
  }
  if (!enumerated_ || now - last_enumerate_ns_ >= opts_.enumerate_interval_ns) {
    STALLMON_TRY_VOID(enumerate(now, nullptr));
  }
  for (auto& [i, t] : vcpus_) {
    if (t->present_) sample_thread(*t);
  }
  for (auto it = threads_.begin(); it != threads_.end();) {
    sample_thread(*it->second);
    // An exited thread is forgotten; if its tid came back as a new thread, the next listing
    // picks that up as new.
    it = it->second->present_ ? std::next(it) : threads_.erase(it);
  }
  return Ok();
}

const TrackedThread* ProcessSampler::vcpu(int32_t index) const {
  auto it = vcpus_.find(index);
  return it == vcpus_.end() ? nullptr : it->second.get();
}

std::vector<const TrackedThread*> ProcessSampler::vcpus() const {
  std::vector<const TrackedThread*> out;
  for (auto& [i, t] : vcpus_) out.push_back(t.get());
  return out;
}

std::vector<const TrackedThread*> ProcessSampler::other_threads() const {
  std::vector<const TrackedThread*> out;
  for (auto& [i, t] : threads_) out.push_back(t.get());
  return out;
}

ThreadSignals ProcessSampler::vcpu_signals(int32_t index) const {
  return vcpu_signals(index, opts_.signal_window_ns);
}

ThreadSignals ProcessSampler::vcpu_signals(int32_t index, int64_t window_ns) const {
  const TrackedThread* t = vcpu(index);
  return t ? t->signals(window_ns) : ThreadSignals{};
}

size_t ProcessSampler::memory_bytes() const {
  size_t n = sizeof(*this);
  for (auto& [i, t] : vcpus_) n += t->memory_bytes();
  for (auto& [i, t] : threads_) n += t->memory_bytes();
  return n;
}

}  // namespace stallmon::host
