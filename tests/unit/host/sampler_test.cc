// SPDX-License-Identifier: Apache-2.0
// ProcessSampler and ThreadSampler over an in-memory /proc (FakeHostFs) and simulated time.
#include "stallmon/host/sampler.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <map>
#include <tuple>

#include "fake_proc.h"
#include "stallmon/host/thread_stat_source.h"

namespace stallmon::host {
namespace {

using testing::FakeThread;
using testing::put_thread;
using testing::task_dir;

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSec = 1'000'000'000;
constexpr int32_t kPid = 500;

// A qemu with a main thread, one I/O thread and two vCPU threads.
class SamplerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    main_ = FakeThread{.tid = kPid, .comm = "qemu-system-x86", .starttime = 100};
    io_ = FakeThread{.tid = 501, .comm = "IO mon_iothread", .starttime = 101};
    vcpu0_ = FakeThread{.tid = 502, .comm = "CPU 0/TCG", .starttime = 102};
    vcpu1_ = FakeThread{.tid = 503, .comm = "CPU 1/TCG", .starttime = 103};
    for (auto* t : {&main_, &io_, &vcpu0_, &vcpu1_}) put_thread(fs_, kPid, *t);
  }

  std::unique_ptr<ProcessSampler> make(SamplerOptions opts = {}) {
    return std::make_unique<ProcessSampler>(fs_, clock_, kPid,
                                            std::map<int32_t, int32_t>{{0, 502}, {1, 503}}, opts);
  }

  // Advances 100 ms: vCPU 0 runs run_ms and waits wait_ms of it.
  void tick(ProcessSampler& s, uint64_t run_ms = 0, uint64_t wait_ms = 0) {
    clock_.advance_ns(100 * kMs);
    vcpu0_.run_ns += run_ms * kMs;
    vcpu0_.wait_ns += wait_ms * kMs;
    put_thread(fs_, kPid, vcpu0_);
    ASSERT_TRUE(s.sample_once().ok());
  }

  FakeHostFs fs_;
  SimulatedClock clock_;
  FakeThread main_, io_, vcpu0_, vcpu1_;
};

TEST_F(SamplerTest, SamplesEveryThreadWithSpacesInComm) {
  auto s = make();
  vcpu0_.state = 'R';
  vcpu0_.cpu = 3;
  vcpu0_.voluntary = 10;
  vcpu0_.involuntary = 4;
  put_thread(fs_, kPid, vcpu0_);
  ASSERT_TRUE(s->sample_once().ok());
  const TrackedThread* v0 = s->vcpu(0);
  ASSERT_NE(v0, nullptr);
  EXPECT_EQ(v0->comm(), "CPU 0/TCG");
  ASSERT_EQ(v0->history().size(), 1u);
  const ThreadSample& x = v0->history().newest();
  EXPECT_EQ(x.state, 'R');
  EXPECT_EQ(x.cpu, 3);
  EXPECT_EQ(x.voluntary_switches, 10u);
  EXPECT_EQ(x.involuntary_switches, 4u);
  EXPECT_TRUE(x.flags & ThreadSample::kFirst);
  EXPECT_TRUE(x.flags & ThreadSample::kHasSchedstat);
  EXPECT_EQ(s->vcpus().size(), 2u);
  // The main thread and the I/O thread are the other threads; vCPUs are not listed twice.
  auto others = s->other_threads();
  ASSERT_EQ(others.size(), 2u);
  EXPECT_EQ(others[0]->tid(), kPid);
  EXPECT_EQ(others[1]->comm(), "IO mon_iothread");
  EXPECT_EQ(others[1]->vcpu(), -1);
}

TEST_F(SamplerTest, KeepsFilesOpenAcrossTicks) {
  auto s = make();
  for (int i = 0; i < 30; ++i) tick(*s, 10);
  std::string d = task_dir(kPid, 502);
  EXPECT_EQ(fs_.opens(d + "/stat"), 1u);
  EXPECT_EQ(fs_.opens(d + "/schedstat"), 1u);
  EXPECT_EQ(fs_.opens(d + "/status"), 1u);
  EXPECT_EQ(fs_.reads(d + "/stat"), 30u);
  EXPECT_EQ(s->vcpu(0)->history().size(), 30u);
  // Nothing blocked: wchan and stack are never read.
  EXPECT_EQ(fs_.opens(d + "/stack"), 0u);
  EXPECT_EQ(fs_.opens(d + "/wchan"), 0u);
}

TEST_F(SamplerTest, StatusIntervalLimitsStatusReads) {
  SamplerOptions o;
  o.status_interval_ns = kSec;
  auto s = make(o);
  for (int i = 0; i < 20; ++i) tick(*s);
  // Ticks at 0.1 s .. 2.0 s: status read at 0.1, 1.1 s (and carried over in between).
  EXPECT_EQ(fs_.reads(task_dir(kPid, 502) + "/status"), 2u);
  EXPECT_EQ(fs_.reads(task_dir(kPid, 502) + "/stat"), 20u);
  o.status_interval_ns = -1;
  auto never = make(o);
  tick(*never);
  EXPECT_FALSE(never->vcpu(0)->history().newest().flags & ThreadSample::kHasStatus);
}

TEST_F(SamplerTest, StatusIsReReadWhenTheStateChanges) {
  auto s = make();  // default: status at most once a second
  for (int i = 0; i < 3; ++i) tick(*s);
  EXPECT_EQ(fs_.reads(task_dir(kPid, 502) + "/status"), 1u);
  vcpu0_.state = 't';
  vcpu0_.tracer = 4711;
  put_thread(fs_, kPid, vcpu0_);
  tick(*s);  // entering t: TracerPid is read at once
  EXPECT_EQ(fs_.reads(task_dir(kPid, 502) + "/status"), 2u);
  EXPECT_TRUE(s->vcpu(0)->history().newest().flags & ThreadSample::kTraced);
  tick(*s);
  EXPECT_EQ(fs_.reads(task_dir(kPid, 502) + "/status"), 2u);
}

TEST_F(SamplerTest, SkipStatWhileRunningReadsStatOnlyWithoutProgress) {
  SamplerOptions o;
  o.skip_stat_while_running = true;
  auto s = make(o);
  std::string stat = task_dir(kPid, 502) + "/stat";
  tick(*s, 10);  // first sample: stat is always read
  for (int i = 0; i < 5; ++i) tick(*s, 10);
  EXPECT_EQ(fs_.reads(stat), 1u);
  const ThreadSample& x = s->vcpu(0)->history().newest();
  EXPECT_EQ(x.state, 'R');
  EXPECT_TRUE(x.flags & ThreadSample::kStateInferred);
  // It blocks: no progress, so the real state letter is read from the next sample on.
  vcpu0_.state = 'D';
  put_thread(fs_, kPid, vcpu0_);
  tick(*s, 0);
  EXPECT_EQ(fs_.reads(stat), 2u);
  EXPECT_EQ(s->vcpu(0)->history().newest().state, 'D');
  EXPECT_FALSE(s->vcpu(0)->history().newest().flags & ThreadSample::kStateInferred);
  for (int i = 0; i < 5; ++i) tick(*s, 0);
  ThreadSignals sig = s->vcpu_signals(0, 500 * kMs);
  EXPECT_EQ(sig.state, 'D');
  EXPECT_FALSE(sig.run_progress);
  EXPECT_EQ(sig.no_progress_ns, 600 * kMs);
  // Running again: stat is still re-read once a second for the CPU and tick counts.
  vcpu0_.state = 'R';
  put_thread(fs_, kPid, vcpu0_);
  for (int i = 0; i < 25; ++i) tick(*s, 10);
  EXPECT_EQ(fs_.reads(stat), 1u + 6u + 2u);  // first, six without progress, two refreshes
}

TEST_F(SamplerTest, StealFractionFromSchedstatWait) {
  auto s = make();
  tick(*s);
  for (int i = 0; i < 10; ++i) tick(*s, 20, 70);
  ThreadSignals sig = s->vcpu_signals(0);
  ASSERT_TRUE(sig.valid);
  EXPECT_EQ(sig.window_ns, kSec);
  EXPECT_DOUBLE_EQ(sig.steal_fraction, 0.7);
  EXPECT_DOUBLE_EQ(sig.run_fraction, 0.2);
  EXPECT_FALSE(s->vcpu_signals(7).valid);  // no such vCPU
}

TEST_F(SamplerTest, FrozenVcpuShowsDAndNoProgress) {
  auto s = make();
  for (int i = 0; i < 5; ++i) tick(*s, 50);
  vcpu0_.state = 'D';
  vcpu0_.wchan = "__refrigerator";
  vcpu0_.stack = "[<0>] __refrigerator+0x4c/0x130\n[<0>] get_signal+0x8a1/0x8b0\n";
  put_thread(fs_, kPid, vcpu0_);
  for (int i = 0; i < 6; ++i) tick(*s, 0);
  const TrackedThread* v0 = s->vcpu(0);
  EXPECT_EQ(v0->history().newest().state, 'D');
  ThreadSignals sig = s->vcpu_signals(0, 500 * kMs);
  ASSERT_TRUE(sig.valid);
  EXPECT_EQ(sig.state, 'D');
  EXPECT_FALSE(sig.run_progress);
  EXPECT_EQ(sig.no_progress_ns, 600 * kMs);
  EXPECT_EQ(sig.time_in_state_ns, 500 * kMs);  // first seen in D one tick after the last run
  EXPECT_EQ(v0->detail().wchan, "__refrigerator");
  ASSERT_EQ(v0->detail().stack.size(), 2u);
  EXPECT_EQ(v0->detail().stack[0], "__refrigerator+0x4c/0x130");
  EXPECT_EQ(v0->detail().state, 'D');
}

TEST_F(SamplerTest, BlockedDetailIsRateLimitedPerThread) {
  auto s = make();
  vcpu0_.state = 't';
  vcpu0_.tracer = 999;
  put_thread(fs_, kPid, vcpu0_);
  vcpu1_.state = 'T';
  put_thread(fs_, kPid, vcpu1_);
  for (int i = 0; i < 25; ++i) tick(*s);  // 2.5 s
  // Read at 0.1, 1.1 and 2.1 s: three times, not 25.
  EXPECT_EQ(fs_.opens(task_dir(kPid, 502) + "/stack"), 3u);
  EXPECT_EQ(fs_.opens(task_dir(kPid, 502) + "/wchan"), 3u);
  EXPECT_EQ(fs_.opens(task_dir(kPid, 503) + "/stack"), 3u);
  EXPECT_EQ(fs_.opens(task_dir(kPid, 501) + "/stack"), 0u);  // the S thread: never
  EXPECT_TRUE(s->vcpu(0)->history().newest().flags & ThreadSample::kTraced);
  EXPECT_FALSE(s->vcpu(1)->history().newest().flags & ThreadSample::kTraced);
  EXPECT_EQ(s->vcpu(1)->history().newest().state, 'T');
}

TEST_F(SamplerTest, UnreadableStackIsRecordedNotFatal) {
  fs_.set_error(task_dir(kPid, 502) + "/stack", EACCES);
  vcpu0_.state = 'D';
  vcpu0_.wchan = "futex_do_wait";
  put_thread(fs_, kPid, vcpu0_);
  auto s = make();
  tick(*s);
  EXPECT_EQ(s->vcpu(0)->detail().stack_errno, EACCES);
  EXPECT_TRUE(s->vcpu(0)->detail().stack.empty());
  EXPECT_EQ(s->vcpu(0)->detail().wchan, "futex_do_wait");
  EXPECT_EQ(s->vcpu(0)->history().size(), 1u);
  SamplerOptions o;
  o.read_stacks = false;
  auto no_stacks = make(o);
  tick(*no_stacks);
  EXPECT_EQ(fs_.opens(task_dir(kPid, 502) + "/stack"), 1u);  // only the first sampler's
}

TEST_F(SamplerTest, MissingSchedstatFallsBackToTicks) {
  fs_.remove(task_dir(kPid, 502) + "/schedstat");
  vcpu0_.utime = 30;
  vcpu0_.stime = 20;
  auto s = make();
  fs_.set_file(task_dir(kPid, 502) + "/stat", testing::stat_text(vcpu0_));
  ASSERT_TRUE(s->sample_once().ok());
  const ThreadSample& x = s->vcpu(0)->history().newest();
  EXPECT_FALSE(x.flags & ThreadSample::kHasSchedstat);
  EXPECT_EQ(x.cpu_ticks, 50u);
  EXPECT_GT(x.run_ns, 0u);
  EXPECT_EQ(x.wait_ns, 0u);
}

TEST_F(SamplerTest, ZombieThreadIsSampledAsZ) {
  io_.state = 'Z';
  put_thread(fs_, kPid, io_);
  auto s = make();
  tick(*s);
  auto others = s->other_threads();
  ASSERT_EQ(others.size(), 2u);
  EXPECT_EQ(others[1]->history().newest().state, 'Z');
  EXPECT_TRUE(others[1]->present());
  EXPECT_EQ(fs_.opens(task_dir(kPid, 501) + "/stack"), 0u);
}

TEST_F(SamplerTest, VanishedThreadsAreDroppedAndTheirHandlesClosed) {
  auto s = make();
  tick(*s);
  size_t handles = fs_.open_handles();
  fs_.remove(task_dir(kPid, 501));  // I/O thread exits
  fs_.remove(task_dir(kPid, 503));  // vCPU 1 thread exits
  tick(*s);  // kept handles read ESRCH
  EXPECT_EQ(s->other_threads().size(), 1u);
  ASSERT_NE(s->vcpu(1), nullptr);
  EXPECT_FALSE(s->vcpu(1)->present());
  EXPECT_FALSE(s->vcpu(1)->tid_reused());
  EXPECT_EQ(s->vcpu(1)->history().size(), 1u);  // history survives the thread
  EXPECT_EQ(s->vcpu(1)->errors(), 0u);          // exit is not an error
  EXPECT_EQ(fs_.open_handles(), handles - 6);
  size_t reads = fs_.reads(task_dir(kPid, 503) + "/stat");
  tick(*s);
  EXPECT_EQ(fs_.reads(task_dir(kPid, 503) + "/stat"), reads);  // not retried every tick
  EXPECT_EQ(s->vcpu(0)->history().size(), 3u);
}

TEST_F(SamplerTest, ThreadVanishingBetweenListingAndOpenIsHarmless) {
  auto s = make();
  fs_.remove(task_dir(kPid, 501) + "/stat");  // listed, but its stat is gone
  tick(*s);
  EXPECT_EQ(s->other_threads().size(), 1u);
}

TEST_F(SamplerTest, TidReuseOfVcpuIsDetected) {
  auto s = make();
  for (int i = 0; i < 3; ++i) tick(*s, 10);
  // vCPU 0's thread exits and a new thread gets the same tid (new starttime).
  fs_.remove(task_dir(kPid, 502));
  FakeThread imposter{.tid = 502, .comm = "worker", .starttime = 9999};
  put_thread(fs_, kPid, imposter);
  clock_.advance_ns(100 * kMs);
  ASSERT_TRUE(s->sample_once().ok());
  const TrackedThread* v0 = s->vcpu(0);
  EXPECT_FALSE(v0->present());
  EXPECT_TRUE(v0->tid_reused());
  EXPECT_EQ(v0->history().size(), 3u);  // the imposter's counters never enter the history
  EXPECT_EQ(v0->comm(), "CPU 0/TCG");
}

TEST_F(SamplerTest, TidReuseSeenThroughTheSameHandle) {
  // Where a file is rewritten in place (a plain directory tree), starttime still tells.
  auto s = make();
  tick(*s);
  io_.starttime = 555;
  io_.comm = "new";
  put_thread(fs_, kPid, io_);
  tick(*s);
  EXPECT_EQ(s->other_threads().size(), 1u);  // the old I/O thread is gone
  clock_.advance_ns(kSec);
  ASSERT_TRUE(s->sample_once().ok());  // next listing: the new thread is tracked afresh
  auto others = s->other_threads();
  ASSERT_EQ(others.size(), 2u);
  EXPECT_EQ(others[1]->comm(), "new");
  EXPECT_TRUE(others[1]->history().newest().flags & ThreadSample::kFirst);
}

TEST_F(SamplerTest, NewThreadsArePickedUpAtTheNextListingOnly) {
  auto s = make();
  tick(*s);
  put_thread(fs_, kPid, FakeThread{.tid = 510, .comm = "worker", .starttime = 200});
  for (int i = 0; i < 9; ++i) tick(*s);  // 0.9 s after the first listing
  EXPECT_EQ(fs_.opens(task_dir(kPid, 510) + "/stat"), 0u);
  tick(*s);  // 1.0 s: re-listed
  EXPECT_EQ(fs_.opens(task_dir(kPid, 510) + "/stat"), 1u);
  EXPECT_EQ(s->other_threads().size(), 3u);
}

TEST_F(SamplerTest, MaxThreadsBoundsTracking) {
  for (int32_t tid = 600; tid < 700; ++tid) put_thread(fs_, kPid, FakeThread{.tid = tid});
  SamplerOptions o;
  o.max_threads = 10;
  auto s = make(o);
  tick(*s);
  EXPECT_EQ(s->other_threads().size(), 10u);
  EXPECT_EQ(s->vcpus().size(), 2u);
}

TEST_F(SamplerTest, OtherThreadsCanBeSkipped) {
  SamplerOptions o;
  o.sample_other_threads = false;
  auto s = make(o);
  tick(*s);
  EXPECT_TRUE(s->other_threads().empty());
  EXPECT_EQ(fs_.opens(task_dir(kPid, 501) + "/stat"), 0u);
}

TEST_F(SamplerTest, ProcessExitIsNotFound) {
  auto s = make();
  tick(*s);
  fs_.remove("proc/500");
  clock_.advance_ns(kSec);
  Result<void> r = s->sample_once();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(s->process_gone());
  EXPECT_FALSE(s->vcpu(0)->present());
  EXPECT_EQ(s->vcpu(0)->history().size(), 1u);
  EXPECT_EQ(fs_.open_handles(), 0u);
  EXPECT_FALSE(s->sample_once().ok());
}

TEST_F(SamplerTest, PersistentIoErrorIsCountedNotGone) {
  SamplerOptions o;
  o.status_interval_ns = 0;  // read status every tick
  auto s = make(o);
  tick(*s);
  fs_.set_error(task_dir(kPid, 502) + "/status", EIO);
  tick(*s);
  EXPECT_EQ(s->vcpu(0)->errors(), 1u);
  EXPECT_EQ(s->vcpu(0)->last_error().sys_errno, EIO);
  EXPECT_TRUE(s->vcpu(0)->present());
  fs_.set_error(task_dir(kPid, 502) + "/status", 0);
  tick(*s);
  EXPECT_EQ(s->vcpu(0)->history().size(), 2u);
}

TEST_F(SamplerTest, PidReusedByAnotherProcessIsProcessGone) {
  auto s = make();
  tick(*s);
  EXPECT_EQ(s->process_starttime(), std::optional<uint64_t>(100));
  // qemu exited and an unrelated process got its pid (and happens to list tid 501 too).
  fs_.remove("proc/500");
  put_thread(fs_, kPid, FakeThread{.tid = kPid, .comm = "bash", .starttime = 7777});
  put_thread(fs_, kPid, FakeThread{.tid = 501, .comm = "bash", .starttime = 7777});
  clock_.advance_ns(kSec);
  Result<void> r = s->sample_once();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find("pid reused"), std::string::npos) << r.error().message;
  EXPECT_TRUE(s->other_threads().empty());
  EXPECT_FALSE(s->vcpu(0)->present());
}

TEST_F(SamplerTest, CorruptFileIsCountedAndSamplingContinues) {
  auto s = make();
  tick(*s);
  fs_.set_file(task_dir(kPid, 502) + "/schedstat", "garbage\n");
  clock_.advance_ns(100 * kMs);
  ASSERT_TRUE(s->sample_once().ok());
  EXPECT_EQ(s->vcpu(0)->errors(), 1u);
  EXPECT_EQ(s->vcpu(0)->last_error().code, ErrorCode::kCorrupt);
  EXPECT_TRUE(s->vcpu(0)->present());
  put_thread(fs_, kPid, vcpu0_);
  tick(*s);
  EXPECT_EQ(s->vcpu(0)->history().size(), 2u);
}

TEST_F(SamplerTest, StaleHandleOfALiveThreadIsReopened) {
  auto s = make();
  tick(*s);
  // The kept handle reads ESRCH, but the same thread (same starttime) is still there.
  std::string stat = task_dir(kPid, 502) + "/stat";
  fs_.remove(stat);
  fs_.set_file(stat, testing::stat_text(vcpu0_));  // new generation: the old handle is stale
  tick(*s);
  EXPECT_EQ(s->vcpu(0)->errors(), 0u);
  EXPECT_EQ(s->vcpu(0)->history().size(), 2u);
  EXPECT_EQ(fs_.opens(stat), 2u);
}

TEST_F(SamplerTest, VcpuMapChangeKeepsHistoryAndRestartsBaseline) {
  auto s = make();
  for (int i = 0; i < 3; ++i) tick(*s, 10);
  FakeThread fresh{.tid = 520, .comm = "CPU 0/TCG", .starttime = 300, .run_ns = 5};
  put_thread(fs_, kPid, fresh);
  s->set_vcpu_threads({{0, 520}, {1, 503}});
  tick(*s);
  const TrackedThread* v0 = s->vcpu(0);
  EXPECT_EQ(v0->tid(), 520);
  EXPECT_EQ(v0->history().size(), 4u);
  EXPECT_TRUE(v0->history().newest().flags & ThreadSample::kFirst);
  EXPECT_FALSE(s->vcpu_signals(0).valid);  // nothing to difference against yet
  // The old vCPU thread (still alive) is now an ordinary thread; 520 is not tracked twice.
  for (const TrackedThread* t : s->other_threads()) EXPECT_NE(t->tid(), 520);
  s->set_vcpu_threads({{1, 503}});
  EXPECT_EQ(s->vcpu(0), nullptr);
}

TEST_F(SamplerTest, MemoryIsBoundedByCapacity) {
  auto s = make();
  // Two vCPU rings of 600 + 540 samples (the last minute at 10 Hz, 9 more at 1 Hz), compact:
  // they grow with the samples held, to a fraction of 1,140 plain samples, and then stay.
  const size_t plain = 1140 * sizeof(ThreadSample);
  auto run = [&](int n) {
    for (int i = 0; i < n; ++i) {
      clock_.advance_ns(100 * kMs);
      ASSERT_TRUE(s->sample_once().ok());
    }
  };
  run(7000);  // 11.7 minutes at 10 Hz: both tiers full
  EXPECT_GE(s->vcpu(0)->history().size(), 1140u);
  EXPECT_LT(s->vcpu(0)->history().size(), 1140u + 2 * SampleTier::kMaxBlock);
  EXPECT_GE(s->other_threads()[0]->history().size(), 20u);
  EXPECT_LT(s->other_threads()[0]->history().size(), 20u + SampleTier::kMaxBlock);
  const size_t full = s->memory_bytes();
  EXPECT_LT(s->vcpu(0)->history().memory_bytes(), plain / 2);
  run(7000);
  EXPECT_LE(s->memory_bytes(), full + 4 * 1024);  // steady: slots and blocks are reused
}

// ---- cgroup throttling ----

class CgroupTest : public SamplerTest {
 protected:
  std::string cg_dir_;
  void v1_layout(const std::string& vcpu_path) {
    main_.cgroup = "4:memory:/\n2:cpu,cpuacct:/machine/vm/emulator\n0::/\n";
    vcpu0_.cgroup = "4:memory:/\n2:cpu,cpuacct:" + vcpu_path + "\n0::/\n";
    put_thread(fs_, kPid, main_);
    put_thread(fs_, kPid, vcpu0_);
    cg_dir_ = "sys/fs/cgroup/cpu,cpuacct" + vcpu_path;
  }
  void v1_stat(uint64_t nr, uint64_t ns) {
    fs_.set_file(cg_dir_ + "/cpu.stat", "nr_periods 100\nnr_throttled " + std::to_string(nr) +
                                            "\nthrottled_time " + std::to_string(ns) + "\n");
  }
};

TEST_F(CgroupTest, V1PerVcpuThrottling) {
  v1_layout("/machine/vm/vcpu0");
  v1_stat(10, 1 * kSec);
  auto s = make();
  tick(*s);
  for (int i = 1; i <= 10; ++i) {
    v1_stat(10 + i, 1 * kSec + i * 40 * kMs);
    tick(*s, 10, 60);
  }
  ThreadSignals sig = s->vcpu_signals(0);
  ASSERT_TRUE(sig.valid);
  EXPECT_TRUE(sig.has_cgroup);
  EXPECT_TRUE(sig.throttled);
  EXPECT_EQ(sig.nr_throttled_delta, 10u);
  EXPECT_EQ(sig.throttled_delta_ns, 400u * kMs);
  EXPECT_EQ(s->vcpu(0)->sampler().cgroup().path, "/machine/vm/vcpu0");
  EXPECT_TRUE(s->vcpu(0)->sampler().own_cgroup());
  // vCPU 1 shares the process's cgroup ("0::/" only, no cpu controller): no throttling data.
  EXPECT_FALSE(s->vcpu(1)->sampler().own_cgroup());
  EXPECT_FALSE(s->vcpu_signals(1).has_cgroup);
  // The cpu.stat handle is kept open too.
  EXPECT_EQ(fs_.opens(cg_dir_ + "/cpu.stat"), 2u);  // one probe, one kept handle
}

TEST_F(CgroupTest, V1CpuSymlinkMountIsFound) {
  main_.cgroup = "2:cpu:/\n";
  vcpu0_.cgroup = "2:cpu:/tb-throttle\n";
  put_thread(fs_, kPid, main_);
  put_thread(fs_, kPid, vcpu0_);
  fs_.set_file("sys/fs/cgroup/cpu/tb-throttle/cpu.stat",
               "nr_periods 1\nnr_throttled 1\nthrottled_time 5\n");
  auto s = make();
  tick(*s);
  EXPECT_TRUE(s->vcpu(0)->sampler().own_cgroup());
  EXPECT_EQ(s->vcpu(0)->history().newest().throttled_ns, 5u);
}

TEST_F(CgroupTest, V2UnifiedAndHybridMounts) {
  main_.cgroup = "0::/machine.slice/vm/libvirt/emulator\n";
  vcpu0_.cgroup = "0::/machine.slice/vm/libvirt/vcpu0\n";
  vcpu1_.cgroup = "0::/machine.slice/vm/libvirt/vcpu1\n";
  for (auto* t : {&main_, &vcpu0_, &vcpu1_}) put_thread(fs_, kPid, *t);
  fs_.set_file("sys/fs/cgroup/machine.slice/vm/libvirt/vcpu0/cpu.stat",
               "usage_usec 1\nnr_periods 9\nnr_throttled 4\nthrottled_usec 2500\n");
  // vCPU 1's cgroup has no cpu controller enabled: cpu.stat lacks the bandwidth keys.
  fs_.set_file("sys/fs/cgroup/machine.slice/vm/libvirt/vcpu1/cpu.stat", "usage_usec 1\n");
  auto s = make();
  tick(*s);
  const ThreadSample& x = s->vcpu(0)->history().newest();
  EXPECT_TRUE(x.flags & ThreadSample::kHasCgroup);
  EXPECT_EQ(x.nr_throttled, 4u);
  EXPECT_EQ(x.throttled_ns, 2500u * 1000);
  EXPECT_FALSE(s->vcpu(1)->history().newest().flags & ThreadSample::kHasCgroup);

  // Hybrid layout: the v2 tree is mounted at .../unified.
  FakeHostFs hybrid;
  FakeThread m{.tid = kPid, .cgroup = "0::/\n"};
  FakeThread v{.tid = 502, .cgroup = "0::/tb/vcpu0\n"};
  put_thread(hybrid, kPid, m);
  put_thread(hybrid, kPid, v);
  hybrid.set_file("sys/fs/cgroup/unified/tb/vcpu0/cpu.stat",
                  "usage_usec 1\nnr_periods 9\nnr_throttled 2\nthrottled_usec 7\n");
  ProcessSampler hs(hybrid, clock_, kPid, {{0, 502}});
  ASSERT_TRUE(hs.sample_once().ok());
  EXPECT_EQ(hs.vcpu(0)->history().newest().throttled_ns, 7000u);
}

TEST_F(CgroupTest, ThreadMovedIntoAThrottledCgroupIsNoticedAtTheNextListing) {
  auto s = make();
  tick(*s);
  EXPECT_FALSE(s->vcpu(0)->sampler().own_cgroup());
  v1_layout("/stallmon-tb/throttle");
  v1_stat(0, 0);
  for (int i = 0; i < 9; ++i) tick(*s);
  EXPECT_FALSE(s->vcpu(0)->sampler().own_cgroup());
  tick(*s);  // 1 s after the first listing
  EXPECT_TRUE(s->vcpu(0)->sampler().own_cgroup());
  EXPECT_TRUE(s->vcpu(0)->history().newest().flags & ThreadSample::kCgroupChanged);
  v1_stat(3, 90 * kMs);
  tick(*s);
  ThreadSignals sig = s->vcpu_signals(0);
  EXPECT_TRUE(sig.has_cgroup);
  EXPECT_EQ(sig.nr_throttled_delta, 3u);
  EXPECT_EQ(sig.throttled_delta_ns, 90u * kMs);
  // The cgroup is removed (the injector cleans up): throttling data stops, sampling goes on.
  fs_.remove(cg_dir_);
  tick(*s);
  EXPECT_FALSE(s->vcpu(0)->sampler().own_cgroup());
  EXPECT_FALSE(s->vcpu(0)->history().newest().flags & ThreadSample::kHasCgroup);
  EXPECT_EQ(s->vcpu(0)->errors(), 0u);
}

// Passes built from the test's FakeThreads, with the cgroup ids a test gives each thread (what
// the BPF source reads from the kernel).
class TableSource final : public ThreadStatSource {
 public:
  std::string_view kind() const override { return "table"; }
  std::string description() const override { return "the test's threads"; }
  Result<void> watch(int32_t tgid) override {
    watched_ = tgid;
    return Ok();
  }
  void unwatch(int32_t) override {}

  std::vector<const FakeThread*> threads;
  std::map<int32_t, std::pair<uint64_t, uint64_t>> ids;  // tid → (v2 id, cpu id)

 protected:
  Result<void> run_pass(ThreadStatPass& out) override {
    out.watched.push_back(watched_);
    for (const FakeThread* t : threads) {
      ThreadStat st = testing::thread_stat(watched_, *t);
      if (auto it = ids.find(t->tid); it != ids.end()) std::tie(st.cgroup_v2_id, st.cpu_cgroup_id) = it->second;
      out.threads.push_back(st);
    }
    return Ok();
  }

 private:
  int32_t watched_ = 0;
};

TEST_F(CgroupTest, WithCgroupIdsFromThePassMembershipsAreReReadOnlyWhenAThreadMoves) {
  v1_layout("/machine/vm/vcpu0");
  v1_stat(1, 5);
  TableSource src;
  src.threads = {&main_, &io_, &vcpu0_, &vcpu1_};
  src.ids = {{kPid, {1, 10}}, {501, {1, 10}}, {502, {1, 20}}, {503, {0, 0}}};  // vCPU 1: unknown
  auto s = make();
  s->set_stat_source(&src);
  auto listings = [&](int n) {
    for (int i = 0; i < 10 * n; ++i) tick(*s);
  };
  const std::string main_cg = task_dir(kPid, kPid) + "/cgroup";
  const std::string vcpu0_cg = task_dir(kPid, 502) + "/cgroup";
  const std::string vcpu1_cg = task_dir(kPid, 503) + "/cgroup";
  listings(3);
  EXPECT_EQ(s->source_errors(), 0u);
  EXPECT_TRUE(s->vcpu(0)->sampler().own_cgroup());
  EXPECT_EQ(s->vcpu(0)->history().newest().nr_throttled, 1u);
  EXPECT_EQ(fs_.opens(main_cg), 1u);    // ids unchanged: read at the first listing only
  EXPECT_EQ(fs_.opens(vcpu0_cg), 1u);
  EXPECT_EQ(fs_.opens(vcpu1_cg), 3u);   // ids unknown: every listing, as without a pass

  // vCPU 0 moves to another cgroup: its cpu cgroup id changes, and only it is re-read.
  vcpu0_.cgroup = "2:cpu,cpuacct:/machine/vm/vcpu0-new\n";
  cg_dir_ = "sys/fs/cgroup/cpu,cpuacct/machine/vm/vcpu0-new";
  v1_stat(7, 9);
  src.ids[502] = {1, 21};
  listings(1);
  EXPECT_EQ(s->vcpu(0)->sampler().cgroup().path, "/machine/vm/vcpu0-new");
  EXPECT_EQ(s->vcpu(0)->history().newest().nr_throttled, 7u);
  EXPECT_EQ(fs_.opens(vcpu0_cg), 2u);
  EXPECT_EQ(fs_.opens(main_cg), 1u);

  // Its cpu.stat is lost (a read fails): the next listing re-reads the membership, ids or not.
  fs_.remove(cg_dir_);
  tick(*s);
  EXPECT_FALSE(s->vcpu(0)->sampler().own_cgroup());
  v1_stat(8, 10);
  listings(1);
  EXPECT_EQ(fs_.opens(vcpu0_cg), 3u);
  EXPECT_TRUE(s->vcpu(0)->sampler().own_cgroup());
  EXPECT_EQ(s->vcpu(0)->history().newest().nr_throttled, 8u);

  // The main thread moves: every vCPU's membership is compared again.
  src.ids[kPid] = {1, 11};
  listings(1);
  EXPECT_EQ(fs_.opens(main_cg), 2u);
  EXPECT_EQ(fs_.opens(vcpu0_cg), 4u);
}

TEST_F(CgroupTest, RootCgroupIsNeverOwn) {
  main_.cgroup = "garbage";  // the process's membership unreadable
  vcpu0_.cgroup = "2:cpu:/\n";
  put_thread(fs_, kPid, main_);
  put_thread(fs_, kPid, vcpu0_);
  fs_.set_file("sys/fs/cgroup/cpu/cpu.stat", "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n");
  auto s = make();
  tick(*s);
  EXPECT_FALSE(s->vcpu(0)->sampler().own_cgroup());
  EXPECT_EQ(s->vcpu(0)->sampler().cgroup().version, CgroupVersion::kV1);
}

TEST_F(CgroupTest, SameCgroupAsTheProcessIsNotOwn) {
  main_.cgroup = "2:cpu,cpuacct:/machine/vm\n";
  vcpu0_.cgroup = "2:cpu,cpuacct:/machine/vm\n";
  put_thread(fs_, kPid, main_);
  put_thread(fs_, kPid, vcpu0_);
  fs_.set_file("sys/fs/cgroup/cpu,cpuacct/machine/vm/cpu.stat",
               "nr_periods 1\nnr_throttled 1\nthrottled_time 5\n");
  auto s = make();
  tick(*s);
  EXPECT_FALSE(s->vcpu(0)->sampler().own_cgroup());
}

}  // namespace
}  // namespace stallmon::host
