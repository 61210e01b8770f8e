// SPDX-License-Identifier: Apache-2.0
// RealHostFs: fake /proc trees in a temporary directory, and this process's own /proc.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "fake_proc.h"
#include "stallmon/host/sampler.h"

namespace stallmon::host {
namespace {

namespace fs = std::filesystem;
using testing::FakeThread;

class TempTree {
 public:
  TempTree() {
    char tmpl[] = "/tmp/stallmon-host-test-XXXXXX";
    root_ = mkdtemp(tmpl);
  }
  ~TempTree() { fs::remove_all(root_); }
  const std::string& root() const { return root_; }
  void write(const std::string& rel, const std::string& text) {
    fs::path p = fs::path(root_) / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  void put_thread(int32_t pid, const FakeThread& t) {
    std::string d = testing::task_dir(pid, t.tid);
    write(d + "/stat", testing::stat_text(t));
    write(d + "/schedstat", testing::schedstat_text(t));
    write(d + "/status", testing::status_text(t));
    write(d + "/cgroup", t.cgroup);
    if (t.tid == pid) write("proc/" + std::to_string(pid) + "/stat", testing::stat_text(t));
  }

 private:
  std::string root_;
};

TEST(RealHostFs, MissingRootIsAnError) {
  RealHostFs fs("/nonexistent/stallmon");
  EXPECT_FALSE(fs.status().ok());
  EXPECT_FALSE(fs.open("x").ok());
  EXPECT_FALSE(fs.list_dir("x").ok());
}

TEST(RealHostFs, ReadsAFakeTreeInADirectory) {
  TempTree tree;
  tree.put_thread(77, FakeThread{.tid = 77, .comm = "qemu-system-x86", .starttime = 5});
  tree.put_thread(77, FakeThread{.tid = 78, .comm = "CPU 0/KVM) R", .state = 'D',
                                 .starttime = 6, .run_ns = 123, .wait_ns = 45});
  tree.write("proc/77/task/78/wchan", "__refrigerator");
  tree.write("proc/77/task/78/stack", "[<0>] __refrigerator+0x4c/0x130\n");
  tree.write("proc/77/task/78/cgroup", "2:cpu,cpuacct:/vm/vcpu0\n");
  tree.write("proc/77/task/77/cgroup", "2:cpu,cpuacct:/vm/emulator\n");
  tree.write("sys/fs/cgroup/cpu,cpuacct/vm/vcpu0/cpu.stat",
             "nr_periods 10\nnr_throttled 3\nthrottled_time 777\n");
  RealHostFs rfs(tree.root());
  ASSERT_TRUE(rfs.status().ok());
  SimulatedClock clock;
  ProcessSampler s(rfs, clock, 77, {{0, 78}});
  ASSERT_TRUE(s.sample_once().ok());
  const TrackedThread* v = s.vcpu(0);
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->comm(), "CPU 0/KVM) R");
  const ThreadSample& x = v->history().newest();
  EXPECT_EQ(x.state, 'D');
  EXPECT_EQ(x.run_ns, 123u);
  EXPECT_EQ(x.wait_ns, 45u);
  EXPECT_EQ(x.throttled_ns, 777u);
  EXPECT_EQ(x.nr_throttled, 3u);
  EXPECT_EQ(v->detail().wchan, "__refrigerator");
  ASSERT_EQ(v->detail().stack.size(), 1u);
  ASSERT_EQ(s.other_threads().size(), 1u);
  EXPECT_EQ(s.other_threads()[0]->tid(), 77);

  // A thread directory removed from a plain tree is noticed at the next listing.
  fs::remove_all(fs::path(tree.root()) / "proc/77/task/77");
  clock.advance_ns(1'000'000'000);
  ASSERT_TRUE(s.sample_once().ok());
  EXPECT_TRUE(s.other_threads().empty());
  // And the whole process.
  fs::remove_all(fs::path(tree.root()) / "proc/77");
  clock.advance_ns(1'000'000'000);
  EXPECT_EQ(s.sample_once().error().code, ErrorCode::kNotFound);
}

// This test process's own threads through the real /proc: a named, sleeping helper thread stands
// in for a vCPU.
TEST(RealProc, SamplesOwnThreads) {
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::atomic<pid_t> tid{0};
  std::thread helper([&] {
    pthread_setname_np(pthread_self(), "CPU 0/TEST");
    tid = static_cast<pid_t>(syscall(SYS_gettid));
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return stop; });
  });
  while (tid == 0) std::this_thread::yield();

  RealHostFs rfs("/");
  MonotonicClock clock;
  ProcessSampler s(rfs, clock, getpid(), {{0, tid}});
  ASSERT_TRUE(s.sample_once().ok());
  const TrackedThread* v = s.vcpu(0);
  ASSERT_TRUE(v->present());
  EXPECT_EQ(v->comm(), "CPU 0/TEST");
  char state = v->history().newest().state;
  // Waiting on the condition variable, or just about to.
  EXPECT_TRUE(state == 'S' || state == 'R') << state;
  ASSERT_FALSE(s.other_threads().empty());
  const TrackedThread* main_thread = s.other_threads()[0];
  EXPECT_EQ(main_thread->tid(), getpid());
  EXPECT_GT(main_thread->history().newest().run_ns, 0u);
  EXPECT_TRUE(main_thread->history().newest().flags & ThreadSample::kHasStatus);
  EXPECT_GT(main_thread->history().newest().voluntary_switches +
                main_thread->history().newest().involuntary_switches,
            0u);

  {
    std::lock_guard<std::mutex> lk(mu);
    stop = true;
  }
  cv.notify_all();
  helper.join();
  // The kernel releases the task shortly after join() returns; wait for that as long as it
  // takes on a loaded machine (the ctest timeout catches a task that never goes).
  while (v->present()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_TRUE(s.sample_once().ok());
  }
  EXPECT_FALSE(v->present());
  EXPECT_FALSE(v->tid_reused());
  EXPECT_EQ(v->errors(), 0u);
}

}  // namespace
}  // namespace stallmon::host
