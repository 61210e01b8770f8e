// SPDX-License-Identifier: Apache-2.0
// The BPF task-iterator source: compiled only when the build found clang, bpftool and the
// kernel's BTF (STALLMON_HAVE_BPF). See bpf/task_stats.bpf.c for the kernel side.
#include "bpf_thread_stat_source.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/types.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "stallmon/host/proc_parse.h"
#include "task_stats_record.h"
#include "task_stats.skel.h"

static_assert(offsetof(stallmon_task_record, stack) == STALLMON_REC_FIXED_BYTES,
              "record layout shared with the BPF program");

namespace stallmon::host {
namespace {

std::string errno_text(int e) { return std::string(strerror(e)) + " (" + std::to_string(e) + ")"; }

uint32_t state_mask(std::string_view letters) {
  static constexpr std::string_view kLetters = "RSDTtXZPI";
  uint32_t m = 0;
  for (char c : letters) {
    size_t i = kLetters.find(c);
    if (i != std::string_view::npos) m |= 1u << i;
  }
  return m;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// The pid namespace the kernel's task->pid lives in is the initial one: stallmond must see the
// same numbers (NSpid with a single entry).
bool in_initial_pid_namespace() {
  std::string status = read_file("/proc/self/status");
  size_t p = status.find("\nNSpid:");
  if (p == std::string::npos) return true;  // kernels before 4.1: no pid namespaces to worry about
  size_t eol = status.find('\n', p + 1);
  std::string line = status.substr(p + 7, eol - p - 7);
  std::istringstream is(line);
  int n = 0;
  std::string tok;
  while (is >> tok) ++n;
  return n == 1;
}

// A thread of this process parked in read() on a pipe: the known thread the start-up check
// compares against /proc.
class PipeSleeper {
 public:
  PipeSleeper() {
    if (pipe(fds_) != 0) return;
    thread_ = std::thread([this] {
      tid_.store(static_cast<int32_t>(syscall(SYS_gettid)));
      char c;
      while (read(fds_[0], &c, 1) < 0 && errno == EINTR) {
      }
    });
    while (tid_.load() == 0) std::this_thread::yield();
    // Wait until it really sleeps in the pipe (state S with run progress stopped).
    std::string path = "/proc/self/task/" + std::to_string(tid_.load()) + "/wchan";
    for (int i = 0; i < 2000; ++i) {
      if (read_file(path).find("pipe_read") != std::string::npos) break;
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
  }
  ~PipeSleeper() {
    if (thread_.joinable()) {
      char c = 0;
      (void)!write(fds_[1], &c, 1);
      thread_.join();
    }
    if (fds_[0] >= 0) close(fds_[0]);
    if (fds_[1] >= 0) close(fds_[1]);
  }
  int32_t tid() const { return tid_.load(); }

 private:
  int fds_[2] = {-1, -1};
  std::atomic<int32_t> tid_{0};
  std::thread thread_;
};

}  // namespace

BpfThreadStatSource::BpfThreadStatSource(const StatSourceOptions& opts) : opts_(opts) {}

BpfThreadStatSource::~BpfThreadStatSource() {
  for (auto& [tgid, link] : watched_) {
    if (link) bpf_link__destroy(link);
  }
  if (link_) bpf_link__destroy(link_);
  if (skel_) task_stats::destroy(skel_);
}

Result<std::unique_ptr<BpfThreadStatSource>> BpfThreadStatSource::open(
    const StatSourceOptions& opts) {
  if (access("/sys/kernel/btf/vmlinux", R_OK) != 0) {
    return Error(ErrorCode::kUnsupported, "no kernel BTF (/sys/kernel/btf/vmlinux)");
  }
  if (!in_initial_pid_namespace()) {
    return Error(ErrorCode::kUnsupported,
                 "stallmond is not in the initial pid namespace (BPF sees global thread ids)");
  }
  std::unique_ptr<BpfThreadStatSource> s(new BpfThreadStatSource(opts));
  libbpf_set_print([](libbpf_print_level, const char*, va_list) { return 0; });
  s->skel_ = task_stats::open();
  if (!s->skel_) {
    return Error(ErrorCode::kUnsupported, "opening the BPF object: " + errno_text(errno));
  }
  if (int err = task_stats::load(s->skel_); err != 0) {
    return Error(ErrorCode::kUnsupported,
                 "loading the task iterator program (needs CAP_BPF + CAP_PERFMON or root, and a "
                 "kernel with BPF task iterators): " + errno_text(-err));
  }
  s->skel_->data->stack_interval_ns = static_cast<__u64>(opts.stack_interval_ns);
  s->skel_->bss->stack_state_mask = state_mask(opts.stack_states);
  // A walk of one process's threads skips every other task of the host (no pid lookups for
  // them): used when the kernel takes a pid parameter, detected by attaching one for ourselves.
  bpf_link* probe =
      opts.per_process_iterators ? s->attach_process(static_cast<int32_t>(getpid())) : nullptr;
  if (probe) {
    bpf_link__destroy(probe);
    s->per_process_ = true;
  } else {
    s->link_ = bpf_program__attach_iter(s->skel_->progs.stallmon_task_stats, nullptr);
    if (!s->link_) {
      return Error(ErrorCode::kUnsupported, "attaching the task iterator: " + errno_text(errno));
    }
  }
  STALLMON_TRY_VOID(s->self_check());
  return s;
}

bpf_link* BpfThreadStatSource::attach_process(int32_t tgid) {
  union bpf_iter_link_info info;
  std::memset(&info, 0, sizeof info);
  info.task.pid = static_cast<__u32>(tgid);
  bpf_iter_attach_opts o{};
  o.sz = sizeof o;
  o.link_info = &info;
  o.link_info_len = sizeof info;
  return bpf_program__attach_iter(skel_->progs.stallmon_task_stats, &o);
}

Result<void> BpfThreadStatSource::watch(int32_t tgid) {
  std::lock_guard<std::mutex> lk(watch_mu_);
  if (watched_.count(tgid)) return Ok();
  if (watched_.size() >= STALLMON_BPF_MAX_TGIDS) {
    return Error(ErrorCode::kUnsupported,
                 "BPF source watches at most " + std::to_string(STALLMON_BPF_MAX_TGIDS) +
                     " processes");
  }
  __u32 key = static_cast<__u32>(tgid);
  __u8 one = 1;
  if (bpf_map__update_elem(skel_->maps.watched_tgids, &key, sizeof key, &one, sizeof one,
                           BPF_ANY) != 0) {
    return Error::io("adding tgid " + std::to_string(tgid) + " to the BPF map", errno);
  }
  bpf_link* link = nullptr;
  if (per_process_) {
    link = attach_process(tgid);
    if (!link) {
      int e = errno;
      bpf_map__delete_elem(skel_->maps.watched_tgids, &key, sizeof key, 0);
      // ESRCH: no such process (any more).
      return Error::io("attaching a task iterator to process " + std::to_string(tgid), e);
    }
  }
  watched_.emplace(tgid, link);
  return Ok();
}

void BpfThreadStatSource::unwatch(int32_t tgid) {
  std::lock_guard<std::mutex> lk(watch_mu_);
  auto it = watched_.find(tgid);
  if (it == watched_.end()) return;
  if (it->second) bpf_link__destroy(it->second);
  watched_.erase(it);
  __u32 key = static_cast<__u32>(tgid);
  bpf_map__delete_elem(skel_->maps.watched_tgids, &key, sizeof key, 0);
}

Result<void> BpfThreadStatSource::read_iterator(bpf_link* link, size_t& used) {
  int fd = bpf_iter_create(bpf_link__fd(link));
  if (fd < 0) return Error::io("creating a task iterator", errno);
  for (;;) {
    if (buf_.size() - used < 8192) buf_.resize(std::max<size_t>(65536, buf_.size() * 2));
    ssize_t n = read(fd, buf_.data() + used, buf_.size() - used);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      // EAGAIN: the walk restarted too often under concurrent task exits; the next pass retries.
      return Error::io("reading the task iterator", e);
    }
    if (n == 0) break;
    used += static_cast<size_t>(n);
  }
  close(fd);
  return Ok();
}

Result<void> BpfThreadStatSource::run_pass(ThreadStatPass& out) {
  std::lock_guard<std::mutex> lk(watch_mu_);
  out.watched.clear();
  for (auto& [tgid, link] : watched_) out.watched.push_back(tgid);
  skel_->bss->pass_now_ns = static_cast<__u64>(monotonic_ns());
  size_t used = 0;
  if (per_process_) {
    for (auto& [tgid, link] : watched_) STALLMON_TRY_VOID(read_iterator(link, used));
  } else {
    STALLMON_TRY_VOID(read_iterator(link_, used));
  }

  out.threads.clear();
  out.frames.clear();
  size_t off = 0;
  while (off + STALLMON_REC_FIXED_BYTES <= used) {
    stallmon_task_record r;
    std::memcpy(&r, buf_.data() + off, STALLMON_REC_FIXED_BYTES);
    off += STALLMON_REC_FIXED_BYTES;
    ThreadStat t;
    t.tgid = static_cast<int32_t>(r.tgid);
    t.tid = static_cast<int32_t>(r.tid);
    t.state = task_state_letter(r.state, r.exit_state);
    t.traced = (r.flags & STALLMON_REC_TRACED) != 0;
    t.cpu = static_cast<int32_t>(r.cpu);
    t.run_ns = r.run_ns;
    t.wait_ns = r.run_delay_ns;
    t.timeslices = r.pcount;
    t.voluntary_switches = r.nvcsw;
    t.involuntary_switches = r.nivcsw;
    t.start_boottime_ns = r.start_boottime_ns;
    std::memcpy(t.comm, r.comm, sizeof t.comm);
    t.comm[sizeof t.comm - 1] = '\0';
    t.cgroup_v2_id = r.cgroup_v2_id;
    t.cpu_cgroup_id = r.cpu_cgroup_id;
    t.stack_read = (r.flags & (STALLMON_REC_STACK | STALLMON_REC_STACK_ERROR)) != 0;
    t.stack_error = (r.flags & STALLMON_REC_STACK_ERROR) != 0;
    if (r.flags & STALLMON_REC_STACK) {
      size_t bytes = std::min<size_t>(r.stack_bytes, sizeof r.stack);
      if (off + bytes > used) return Error(ErrorCode::kCorrupt, "task iterator: truncated stack record");
      size_t n = bytes / sizeof(uint64_t);
      const char* p = buf_.data() + off;
      off += bytes;
      t.stack_begin = static_cast<uint32_t>(out.frames.size());
      for (size_t i = 0; i < n; ++i) {
        uint64_t a;
        std::memcpy(&a, p + i * sizeof a, sizeof a);
        out.frames.push_back(a);
      }
      t.stack_len = static_cast<uint16_t>(n);
    }
    out.threads.push_back(t);
  }
  if (off != used) return Error(ErrorCode::kCorrupt, "task iterator: trailing partial record");
  return Ok();
}

// One pass over a thread of this process parked in a pipe read, checked against its /proc
// files: the scheduler fields must agree (else the source is refused), and whether the stack
// matches /proc/TID/stack is reported (it should: both come from stack_trace_save_tsk).
Result<void> BpfThreadStatSource::self_check() {
  PipeSleeper sleeper;
  const int32_t self = static_cast<int32_t>(getpid());
  const int32_t tid = sleeper.tid();
  std::string dir = "/proc/self/task/" + std::to_string(tid) + "/";
  bool was_watched;
  {
    std::lock_guard<std::mutex> lk(watch_mu_);
    was_watched = watched_.count(self) != 0;
  }
  STALLMON_TRY_VOID(watch(self));
  const uint32_t saved_mask = skel_->bss->stack_state_mask;
  skel_->bss->stack_state_mask = saved_mask | state_mask("S");
  // The stack is rate-limited per tid: forget this tid so the check always gets one.
  __u32 key = static_cast<__u32>(tid);
  bpf_map__delete_elem(skel_->maps.stack_seen, &key, sizeof key, 0);
  ThreadStatPass pass;
  Result<void> r = run_pass(pass);
  std::string proc_schedstat = read_file(dir + "schedstat");
  std::string proc_stack = read_file(dir + "stack");
  skel_->bss->stack_state_mask = saved_mask;
  bpf_map__delete_elem(skel_->maps.stack_seen, &key, sizeof key, 0);
  if (!was_watched) unwatch(self);
  if (!r.ok()) return std::move(r).error().context("start-up pass");

  const ThreadStat* t = nullptr;
  for (const ThreadStat& x : pass.threads) {
    if (x.tid == tid) t = &x;
  }
  if (!t) return Error(ErrorCode::kCorrupt, "start-up pass did not return this process's thread");
  Result<SchedStat> ss = parse_schedstat(proc_schedstat);
  if (t->state != 'S' || !ss.ok() || ss->run_ns != t->run_ns || ss->wait_ns != t->wait_ns ||
      ss->timeslices != t->timeslices) {
    return Error(ErrorCode::kCorrupt,
                 "start-up pass disagrees with /proc for a sleeping thread (state " +
                     std::string(1, t->state) + ", run " + std::to_string(t->run_ns) +
                     " ns vs schedstat '" + proc_schedstat + "')");
  }
  std::vector<std::string> proc_frames = parse_stack(proc_stack);
  std::vector<uint64_t> raw(pass.frames.begin() + t->stack_begin,
                            pass.frames.begin() + t->stack_begin + t->stack_len);
  std::vector<std::string> bpf_frames = frames(raw);
  notes_ = "kernel stacks: ";
  if (proc_frames.empty()) {
    notes_ += "not checked (/proc/TID/stack unreadable)";
  } else if (bpf_frames == proc_frames) {
    notes_ += "match /proc";
  } else {
    notes_ += "differ from /proc (first frame " + (bpf_frames.empty() ? "none" : bpf_frames[0]) +
              " vs " + proc_frames[0] + ")";
  }
  return Ok();
}

std::string BpfThreadStatSource::description() const {
  utsname u{};
  uname(&u);
  return std::string("one BPF task-iterator pass per period, ") +
         (per_process_ ? "an iterator per watched process" : "one walk of every host task") +
         " (kernel " + u.release + ", CO-RE); " + notes_;
}

bool bpf_source_built() { return true; }

Result<std::unique_ptr<ThreadStatSource>> open_bpf_thread_stat_source(const StatSourceOptions& o) {
  STALLMON_TRY(std::unique_ptr<BpfThreadStatSource> s, BpfThreadStatSource::open(o));
  return std::unique_ptr<ThreadStatSource>(std::move(s));
}

}  // namespace stallmon::host
