// SPDX-License-Identifier: Apache-2.0
// ThreadStatSource: the pure parts (state letters, kallsyms symbolization, pass lookups), and
// the BPF task-iterator source against /proc over real threads with known states: this
// process's own threads (sleeping on a condition variable, running, blocked on a pipe, in D
// inside vfork) and child processes (stopped: T; ptrace-stopped: t). As root on a build with
// BPF the comparison must run; it skips only without root or without BPF compiled in.
#include <gtest/gtest.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "stallmon/host/proc_parse.h"
#include "stallmon/host/sampler.h"
#include "stallmon/host/thread_stat_source.h"

namespace stallmon::host {
namespace {

TEST(TaskStateLetter, MatchesTheKernelsTaskStateIndex) {
  EXPECT_EQ(task_state_letter(0x0000, 0), 'R');
  EXPECT_EQ(task_state_letter(0x0001, 0), 'S');
  EXPECT_EQ(task_state_letter(0x2001, 0), 'S');   // TASK_INTERRUPTIBLE | TASK_FREEZABLE
  EXPECT_EQ(task_state_letter(0x0002, 0), 'D');
  EXPECT_EQ(task_state_letter(0x0102, 0), 'D');   // TASK_KILLABLE
  EXPECT_EQ(task_state_letter(0x0402, 0), 'I');   // TASK_IDLE
  EXPECT_EQ(task_state_letter(0x0004, 0), 'T');
  EXPECT_EQ(task_state_letter(0x0008, 0), 't');
  EXPECT_EQ(task_state_letter(0x0000, 0x10), 'X');
  EXPECT_EQ(task_state_letter(0x0000, 0x20), 'Z');
  EXPECT_EQ(task_state_letter(0x0040, 0), 'P');
  EXPECT_EQ(task_state_letter(0x8000, 0), 'D');   // TASK_FROZEN: reported as D
  EXPECT_EQ(task_state_letter(0x1000, 0), 'D');   // TASK_RTLOCK_WAIT
  EXPECT_EQ(task_state_letter(0x0080, 0), 'R');   // TASK_DEAD is not a reported bit
}

constexpr std::string_view kKallsyms =
    "ffffffff81000000 T _stext\n"
    "ffffffff81000000 T _text\n"
    "ffffffff81396e40 T __pfx_kthreadd\n"
    "ffffffff81396e50 T kthreadd\n"
    "ffffffff81397160 T __pfx_other\n"
    "ffffffff81397170 t other\n"
    "ffffffff82000000 D some_data\n"
    "ffffffffc0a01000 t mod_fn\t[kvm]\n"
    "ffffffffc0a01100 t mod_fn2\t[kvm]\n"
    "0000000000000000 T hidden\n"
    "garbage line\n";

TEST(KernelSymbols, FormatsFramesLikeProcStack) {
  KernelSymbols s("");
  s.load_text(kKallsyms);
  EXPECT_EQ(s.frame(0xffffffff81397140), "kthreadd+0x2f0/0x310");
  EXPECT_EQ(s.name(0xffffffff81397140), "kthreadd");
  EXPECT_EQ(s.frame(0xffffffff81000010), "_stext+0x10/0x396e40");  // first alias wins
  EXPECT_EQ(s.frame(0xffffffffc0a01010), "mod_fn+0x10/0x100 [kvm]");
  // Data symbols bound text symbols but are never named.
  EXPECT_EQ(s.frame(0xffffffff82000010), "0xffffffff82000010");
  EXPECT_EQ(s.frame(0x1000), "0x1000");
  EXPECT_EQ(s.name(0x1000), "");
  EXPECT_EQ(s.frame(0xffffffffc0a01110), "0xffffffffc0a01110");  // past the last symbol
}

TEST(ThreadStatPass, LooksUpByProcessAndThread) {
  ThreadStatPass p;
  for (auto [g, t] : {std::pair{10, 10}, {10, 12}, {10, 15}, {20, 20}}) {
    ThreadStat s;
    s.tgid = g;
    s.tid = t;
    p.threads.push_back(s);
  }
  p.watched = {10, 20, 30};
  EXPECT_EQ(p.threads_of(10).size(), 3u);
  EXPECT_EQ(p.threads_of(20).size(), 1u);
  EXPECT_TRUE(p.threads_of(30).empty());
  EXPECT_TRUE(p.was_watched(30));
  EXPECT_FALSE(p.was_watched(11));
  ASSERT_NE(p.find(10, 12), nullptr);
  EXPECT_EQ(p.find(10, 12)->tid, 12);
  EXPECT_EQ(p.find(10, 13), nullptr);
  EXPECT_EQ(p.find(20, 12), nullptr);
}

TEST(ChooseThreadStatSource, ConfigurationCanForceProc) {
  StatSourceOptions o;
  o.allow_bpf = false;
  StatSourceChoice c = choose_thread_stat_source(o);
  EXPECT_EQ(c.source, nullptr);
  EXPECT_EQ(c.kind, "proc");
  EXPECT_NE(c.reason.find("disabled"), std::string::npos);
}

TEST(ChooseThreadStatSource, WithoutBpfBuiltFallsBackToProcWithAReason) {
  if (bpf_source_built()) GTEST_SKIP() << "BPF is built in";
  StatSourceChoice c = choose_thread_stat_source();
  EXPECT_EQ(c.source, nullptr);
  EXPECT_EQ(c.kind, "proc");
  EXPECT_NE(c.reason.find("built without BPF"), std::string::npos);
}

// ---- the BPF source against /proc ----

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string task_dir(pid_t pid, pid_t tid) {
  return "/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/";
}

// What /proc says about one thread, read as the sampler reads it.
struct ProcView {
  TaskStat stat;
  SchedStat sched;
  TaskStatus status;
  std::string wchan;
  std::vector<std::string> stack;
};

ProcView read_proc(pid_t pid, pid_t tid) {
  std::string d = task_dir(pid, tid);
  ProcView v;
  auto st = parse_task_stat(slurp(d + "stat"));
  auto ss = parse_schedstat(slurp(d + "schedstat"));
  auto su = parse_task_status(slurp(d + "status"));
  EXPECT_TRUE(st.ok() && ss.ok() && su.ok()) << d;
  if (st.ok()) v.stat = *st;
  if (ss.ok()) v.sched = *ss;
  if (su.ok()) v.status = *su;
  v.wchan = parse_wchan(slurp(d + "wchan"));
  v.stack = parse_stack(slurp(d + "stack"));
  return v;
}

pid_t gettid_() { return static_cast<pid_t>(syscall(SYS_gettid)); }

void wait_for_state(pid_t pid, pid_t tid, char want) {
  for (int i = 0; i < 4000; ++i) {
    auto st = parse_task_stat(slurp(task_dir(pid, tid) + "stat"));
    if (st.ok() && st->state == want) return;
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  ADD_FAILURE() << "thread " << tid << " never reached state " << want;
}

// Threads of this process and two children in known states, released on destruction.
class KnownThreads {
 public:
  KnownThreads() {
    if (pipe(pipe_) != 0 || pipe(vfork_pipe_) != 0) std::abort();
    sleeper_ = std::thread([this] {
      sleeper_tid_ = gettid_();
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [this] { return stop_; });
    });
    runner_ = std::thread([this] {
      runner_tid_ = gettid_();
      volatile uint64_t x = 0;
      while (!stop_runner_.load(std::memory_order_relaxed)) x = x + 1;
    });
    reader_ = std::thread([this] {
      reader_tid_ = gettid_();
      char c;
      while (read(pipe_[0], &c, 1) < 0 && errno == EINTR) {
      }
    });
    // A vfork parent waits in D (TASK_KILLABLE) until the child exits or execs; the child
    // blocks in a pipe read, using nothing but system calls.
    vforker_ = std::thread([this] {
      vforker_tid_ = gettid_();
      pid_t c = vfork();
      if (c == 0) {
        char b;
        (void)!read(vfork_pipe_[0], &b, 1);
        _exit(0);
      }
      vfork_child_ = c;
    });
    stopped_ = fork();
    if (stopped_ == 0) {
      for (;;) pause();
    }
    traced_ = fork();
    if (traced_ == 0) {
      for (;;) pause();
    }
    while (!sleeper_tid_ || !runner_tid_ || !reader_tid_ || !vforker_tid_) {
      std::this_thread::yield();
    }
    kill(stopped_, SIGSTOP);
    int status = 0;
    waitpid(stopped_, &status, WUNTRACED);
    ptrace(PTRACE_ATTACH, traced_, nullptr, nullptr);
    waitpid(traced_, &status, 0);
    wait_for_state(getpid(), sleeper_tid_, 'S');
    wait_for_state(getpid(), reader_tid_, 'S');
    wait_for_state(getpid(), vforker_tid_, 'D');
    wait_for_state(stopped_, stopped_, 'T');
    wait_for_state(traced_, traced_, 't');
  }
  ~KnownThreads() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    stop_runner_ = true;
    char c = 0;
    (void)!write(pipe_[1], &c, 1);
    (void)!write(vfork_pipe_[1], &c, 1);
    sleeper_.join();
    runner_.join();
    reader_.join();
    vforker_.join();
    waitpid(vfork_child_, nullptr, 0);
    ptrace(PTRACE_DETACH, traced_, nullptr, nullptr);
    kill(stopped_, SIGKILL);
    kill(traced_, SIGKILL);
    waitpid(stopped_, nullptr, 0);
    waitpid(traced_, nullptr, 0);
    for (int fd : {pipe_[0], pipe_[1], vfork_pipe_[0], vfork_pipe_[1]}) close(fd);
  }

  pid_t sleeper_tid_ = 0, runner_tid_ = 0, reader_tid_ = 0, vforker_tid_ = 0;
  pid_t stopped_ = 0, traced_ = 0, vfork_child_ = 0;

 private:
  int pipe_[2] = {-1, -1}, vfork_pipe_[2] = {-1, -1};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<bool> stop_runner_{false};
  std::thread sleeper_, runner_, reader_, vforker_;
};

std::unique_ptr<ThreadStatSource> bpf_or_skip(bool per_process = true) {
  if (!bpf_source_built()) return nullptr;
  if (geteuid() != 0) return nullptr;
  StatSourceOptions o;
  o.per_process_iterators = per_process;
  StatSourceChoice c = choose_thread_stat_source(o);
  EXPECT_EQ(c.kind, "bpf-task-iter") << "root, BPF built in, yet: " << c.reason;
  return std::move(c.source);
}

#define SKIP_WITHOUT_BPF(src)                                                   \
  if (!bpf_source_built()) GTEST_SKIP() << "built without BPF";                \
  if (geteuid() != 0) GTEST_SKIP() << "the BPF source needs root";             \
  ASSERT_NE(src, nullptr)

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A thread that does not run between two /proc reads compares exactly.
void expect_same_as_proc(const ThreadStat& b, const ProcView& p, ThreadStatSource& src,
                         const ThreadStatPass& pass, bool blocked) {
  SCOPED_TRACE("tid " + std::to_string(b.tid) + " comm " + p.stat.comm);
  EXPECT_EQ(b.state, p.stat.state);
  EXPECT_EQ(b.run_ns, p.sched.run_ns);
  EXPECT_EQ(b.wait_ns, p.sched.wait_ns);
  EXPECT_EQ(b.timeslices, p.sched.timeslices);
  EXPECT_EQ(b.voluntary_switches, p.status.voluntary_ctxt_switches);
  EXPECT_EQ(b.involuntary_switches, p.status.nonvoluntary_ctxt_switches);
  EXPECT_EQ(b.traced, p.status.tracer_pid != 0);
  EXPECT_EQ(b.cpu, p.stat.processor);
  EXPECT_EQ(b.starttime_ticks(), p.stat.starttime_ticks);
  EXPECT_EQ(std::string(b.comm), p.stat.comm);
  uint64_t ticks = p.stat.utime_ticks + p.stat.stime_ticks;
  uint64_t bpf_ticks = b.run_ns / 10'000'000;
  EXPECT_LE(bpf_ticks > ticks ? bpf_ticks - ticks : ticks - bpf_ticks, 1u);
  if (blocked) {
    ASSERT_TRUE(b.stack_read);
    EXPECT_FALSE(b.stack_error);
    EXPECT_EQ(src.frames(pass.stack(b)), p.stack);
    ASSERT_FALSE(p.stack.empty());
    // /proc's wchan is "0" while a blocked task is still queued (delayed dequeue, 6.12+): then
    // only the stack says where it blocked, and the BPF wchan must name the same function.
    EXPECT_EQ(src.wchan(pass.stack(b)), frame_function(p.stack.front()));
    if (!p.wchan.empty()) {
      EXPECT_EQ(src.wchan(pass.stack(b)), p.wchan);
    }
  }
}

// Both ways of walking: an iterator per process, and one walk of every host task.
class BpfWalk : public ::testing::TestWithParam<bool> {};
INSTANTIATE_TEST_SUITE_P(BpfThreadStatSource, BpfWalk, ::testing::Values(true, false),
                         [](const auto& p) { return p.param ? "PerProcess" : "HostWide"; });

TEST_P(BpfWalk, SameFieldsAsProcForThreadsInKnownStates) {
  auto src = bpf_or_skip(GetParam());
  if (src) {
    EXPECT_NE(src->description().find(GetParam() ? "per watched process" : "every host task"),
              std::string::npos)
        << src->description();
  }
  SKIP_WITHOUT_BPF(src);
  KnownThreads k;
  const pid_t self = getpid();
  ASSERT_TRUE(src->watch(self).ok());
  ASSERT_TRUE(src->watch(k.stopped_).ok());
  ASSERT_TRUE(src->watch(k.traced_).ok());

  struct Quiet {
    pid_t pid, tid;
    bool blocked;
  };
  std::vector<Quiet> quiet = {{self, k.sleeper_tid_, false},
                              {self, k.reader_tid_, false},
                              {self, k.vforker_tid_, true},
                              {k.stopped_, k.stopped_, true},
                              {k.traced_, k.traced_, true}};
  // /proc before and after the pass: a quiet thread must read the same both times (else the
  // comparison would be racing the thread, and that is a test bug to find).
  std::vector<ProcView> before;
  for (const Quiet& q : quiet) before.push_back(read_proc(q.pid, q.tid));
  ProcView run_before = read_proc(self, k.runner_tid_);
  auto pass = src->collect(now_ns());
  ProcView run_after = read_proc(self, k.runner_tid_);
  ASSERT_TRUE(pass.ok()) << pass.error().to_string();
  const ThreadStatPass& p = **pass;

  for (size_t i = 0; i < quiet.size(); ++i) {
    ProcView after = read_proc(quiet[i].pid, quiet[i].tid);
    ASSERT_EQ(after.sched.run_ns, before[i].sched.run_ns) << "thread " << quiet[i].tid << " ran";
    const ThreadStat* b = p.find(quiet[i].pid, quiet[i].tid);
    ASSERT_NE(b, nullptr) << quiet[i].tid;
    expect_same_as_proc(*b, before[i], *src, p, quiet[i].blocked);
  }
  EXPECT_EQ(p.find(self, k.sleeper_tid_)->state, 'S');
  EXPECT_EQ(p.find(self, k.reader_tid_)->state, 'S');
  EXPECT_EQ(p.find(self, k.vforker_tid_)->state, 'D');
  EXPECT_EQ(p.find(k.stopped_, k.stopped_)->state, 'T');
  EXPECT_EQ(p.find(k.traced_, k.traced_)->state, 't');
  EXPECT_TRUE(p.find(k.traced_, k.traced_)->traced);
  EXPECT_FALSE(p.find(k.stopped_, k.stopped_)->traced);
  // S is not among the default stack states.
  EXPECT_FALSE(p.find(self, k.reader_tid_)->stack_read);

  // The running thread: its counters lie between the two /proc reads around the pass.
  const ThreadStat* r = p.find(self, k.runner_tid_);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->state, 'R');
  EXPECT_LE(run_before.sched.run_ns, r->run_ns);
  EXPECT_LE(r->run_ns, run_after.sched.run_ns);
  EXPECT_LE(run_before.sched.wait_ns, r->wait_ns);
  EXPECT_LE(r->wait_ns, run_after.sched.wait_ns);
  EXPECT_LE(run_before.sched.timeslices, r->timeslices);
  EXPECT_LE(r->timeslices, run_after.sched.timeslices);

  // Every thread of this process is there, and nothing of unwatched processes.
  std::set<int32_t> listed;
  for (const ThreadStat& t : p.threads_of(self)) listed.insert(t.tid);
  for (pid_t t : {self, k.sleeper_tid_, k.runner_tid_, k.reader_tid_, k.vforker_tid_}) {
    EXPECT_TRUE(listed.count(t)) << t;
  }
  EXPECT_TRUE(p.threads_of(k.vfork_child_).empty());
  EXPECT_EQ(p.threads.size(), p.threads_of(self).size() + 2);
}

TEST(BpfThreadStatSource, StacksAreRateLimitedPerThreadAndFreshOnStateChange) {
  auto src = bpf_or_skip();
  SKIP_WITHOUT_BPF(src);
  KnownThreads k;
  ASSERT_TRUE(src->watch(k.stopped_).ok());
  auto p1 = src->collect(now_ns());
  auto p2 = src->collect(now_ns());
  ASSERT_TRUE(p1.ok() && p2.ok());
  EXPECT_TRUE((*p1)->find(k.stopped_, k.stopped_)->stack_read);
  EXPECT_FALSE((*p2)->find(k.stopped_, k.stopped_)->stack_read);  // within the interval
  EXPECT_GT((*p2)->generation, (*p1)->generation);
  // fresh() within the age reuses the pass; a pass after unwatch no longer covers the child.
  auto p3 = src->fresh((*p2)->t_ns + 1, 50'000'000);
  ASSERT_TRUE(p3.ok());
  EXPECT_EQ(p3->get(), p2->get());
  src->unwatch(k.stopped_);
  auto p4 = src->collect(now_ns());
  ASSERT_TRUE(p4.ok());
  EXPECT_TRUE((*p4)->threads_of(k.stopped_).empty());
  EXPECT_FALSE((*p4)->was_watched(k.stopped_));
}

// The two ProcessSamplers, /proc and BPF, over the same threads give the same samples.
TEST(BpfThreadStatSource, ProcessSamplerGivesTheSameSamplesThroughEitherPath) {
  auto src = bpf_or_skip();
  SKIP_WITHOUT_BPF(src);
  KnownThreads k;
  RealHostFs fs("/");
  MonotonicClock clock;
  std::map<int32_t, int32_t> vcpus = {{0, k.sleeper_tid_}, {1, k.reader_tid_},
                                      {2, k.vforker_tid_}};
  ProcessSampler via_proc(fs, clock, getpid(), vcpus);
  ProcessSampler via_bpf(fs, clock, getpid(), vcpus);
  via_bpf.set_stat_source(src.get());
  ASSERT_EQ(via_bpf.stat_source(), src.get());
  ASSERT_TRUE(via_proc.sample_once().ok());
  ASSERT_TRUE(via_bpf.sample_once().ok());
  EXPECT_EQ(via_bpf.source_errors(), 0u);
  for (int32_t i = 0; i < 3; ++i) {
    SCOPED_TRACE("vcpu " + std::to_string(i));
    const ThreadSample& a = via_proc.vcpu(i)->history().newest();
    const ThreadSample& b = via_bpf.vcpu(i)->history().newest();
    EXPECT_EQ(a.state, b.state);
    EXPECT_EQ(a.run_ns, b.run_ns);
    EXPECT_EQ(a.wait_ns, b.wait_ns);
    EXPECT_EQ(a.timeslices, b.timeslices);
    EXPECT_EQ(a.voluntary_switches, b.voluntary_switches);
    EXPECT_EQ(a.involuntary_switches, b.involuntary_switches);
    EXPECT_EQ(a.cpu, b.cpu);
    EXPECT_EQ(a.flags & ~ThreadSample::kHasStatus, b.flags & ~ThreadSample::kHasStatus);
    EXPECT_EQ(via_proc.vcpu(i)->comm(), via_bpf.vcpu(i)->comm());
  }
  const BlockedDetail& pd = via_proc.vcpu(2)->detail();
  const BlockedDetail& bd = via_bpf.vcpu(2)->detail();
  EXPECT_EQ(bd.state, 'D');
  EXPECT_EQ(pd.wchan, bd.wchan);
  EXPECT_EQ(pd.stack, bd.stack);
  EXPECT_FALSE(bd.wchan.empty());
  // The other threads (main, runner, ...) are tracked through the pass too.
  std::set<int32_t> a, b;
  for (auto* t : via_proc.other_threads()) a.insert(t->tid());
  for (auto* t : via_bpf.other_threads()) b.insert(t->tid());
  EXPECT_EQ(a, b);
}

// The inode number of the first of these directories that exists (0: none).
uint64_t dir_ino(std::initializer_list<std::string> dirs) {
  for (const std::string& d : dirs) {
    struct stat st{};
    if (::stat(d.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return st.st_ino;
  }
  return 0;
}

// The cgroupfs directory of a process's cpu controller cgroup plus `child`, on this host's
// layout (v1 by controller list or "cpu", v2 at the root or "unified").
std::string cpu_cgroup_dir(pid_t pid, const std::string& child = "") {
  auto m = parse_proc_cgroup(slurp("/proc/" + std::to_string(pid) + "/cgroup"));
  if (!m.ok()) return "";
  CpuCgroup cg = find_cpu_cgroup(*m);
  const std::string path = (cg.path == "/" ? "" : cg.path) + child;
  std::vector<std::string> candidates;
  if (cg.version == CgroupVersion::kV1) {
    std::string list;
    for (const std::string& c : cg.controllers) list += (list.empty() ? "" : ",") + c;
    candidates = {"/sys/fs/cgroup/" + list + path, "/sys/fs/cgroup/cpu" + path};
  } else if (cg.version == CgroupVersion::kV2) {
    candidates = {"/sys/fs/cgroup" + path, "/sys/fs/cgroup/unified" + path};
  }
  for (const std::string& d : candidates) {
    if (dir_ino({d}) != 0 || !child.empty()) return d;
  }
  return "";
}

// The ids the pass carries are the kernfs ids of the thread's cgroups, which are the cgroupfs
// directories' inode numbers, and they follow a move (what lets the sampler skip re-reading
// /proc/TID/cgroup while they stay the same).
TEST(BpfThreadStatSource, CgroupIdsAreTheCgroupDirectoriesInodesAndFollowAMove) {
  auto src = bpf_or_skip();
  SKIP_WITHOUT_BPF(src);
  const std::string here = cpu_cgroup_dir(getpid());
  if (here.empty()) GTEST_SKIP() << "no cpu controller cgroup found for this process";
  pid_t child = fork();
  if (child == 0) {
    for (;;) pause();
  }
  ASSERT_GT(child, 0);
  ASSERT_TRUE(src->watch(child).ok());
  auto before = src->collect(now_ns());
  ASSERT_TRUE(before.ok());
  const ThreadStat* b = (*before)->find(child, child);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->cpu_cgroup_id, dir_ino({here}));
  EXPECT_NE(b->cgroup_v2_id, 0u);

  const std::string moved = cpu_cgroup_dir(getpid(), "/stallmon-unit-" + std::to_string(getpid()));
  ASSERT_EQ(::mkdir(moved.c_str(), 0755), 0) << moved << ": " << strerror(errno);
  {
    std::ofstream procs(moved + "/cgroup.procs");
    procs << child << "\n";
  }
  auto after = src->collect(now_ns());
  ASSERT_TRUE(after.ok());
  const ThreadStat* a = (*after)->find(child, child);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(cpu_cgroup_dir(child), moved);
  auto m = parse_proc_cgroup(slurp("/proc/" + std::to_string(child) + "/cgroup"));
  ASSERT_TRUE(m.ok());
  if (find_cpu_cgroup(*m).version == CgroupVersion::kV1) {
    EXPECT_EQ(a->cpu_cgroup_id, dir_ino({moved}));
    EXPECT_NE(a->cpu_cgroup_id, b->cpu_cgroup_id);
    EXPECT_EQ(a->cgroup_v2_id, b->cgroup_v2_id);  // the unified hierarchy did not change
  } else {
    EXPECT_EQ(a->cgroup_v2_id, dir_ino({moved}));
    // The cpu controller's cgroup is the new one only where the parent enables it for children.
    EXPECT_TRUE(a->cpu_cgroup_id == dir_ino({moved}) || a->cpu_cgroup_id == b->cpu_cgroup_id);
  }
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  EXPECT_EQ(::rmdir(moved.c_str()), 0) << moved << ": " << strerror(errno);
}

}  // namespace
}  // namespace stallmon::host
