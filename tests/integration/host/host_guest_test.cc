// SPDX-License-Identifier: Apache-2.0
// The host sampler against a real guest's qemu threads under each fault injector: what
// stallmon_host reports must match what the fault does to the threads.
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <thread>

#include "stallmon/host/sampler.h"
#include "testbed/guest.h"

namespace tb = stallmon::testbed;
using namespace std::chrono_literals;

namespace stallmon::host {
namespace {

constexpr int64_t kMs = 1'000'000;

const bool kOptions = [] {
  tb::GuestOptions o;
  o.tag = "host";
  // Sleepers keep every vCPU waking up twice a second; no IPI generator, so a freeze does not
  // lock the guest up.
  o.scenario = "sleepers";
  tb::set_shared_guest_options(o);
  return true;
}();

// A sampler on the guest's qemu, driven at 10 Hz like the daemon does.
class Sampling {
 public:
  explicit Sampling(const tb::Guest& g) {
    std::map<int32_t, int32_t> vcpus;
    for (auto [i, tid] : g.vcpu_tids()) vcpus[i] = tid;
    sampler_ = std::make_unique<ProcessSampler>(fs_, clock_, g.qemu_pid(), vcpus);
  }
  ProcessSampler& operator*() { return *sampler_; }
  ProcessSampler* operator->() { return sampler_.get(); }

  void tick() {
    Result<void> r = sampler_->sample_once();
    ASSERT_TRUE(r.ok()) << r.error().to_string();
  }
  // Samples every 100 ms for the given time.
  void run_for(std::chrono::milliseconds d) {
    auto end = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < end) {
      tick();
      std::this_thread::sleep_for(100ms);
    }
    tick();
  }

 private:
  RealHostFs fs_{"/"};
  MonotonicClock clock_;
  std::unique_ptr<ProcessSampler> sampler_;
};

std::string stack_text(const BlockedDetail& d) {
  std::string s;
  for (const std::string& f : d.stack) s += "  " + f + "\n";
  return s;
}

// A guest shell command; its exit code (guest output is printed when it fails).
int guest_sh(const tb::Guest& g, const std::string& command) {
  tb::CommandResult r = g.run(command);
  if (r.exit_code != 0) std::cerr << "guest: " << command << ": " << r.out << r.err;
  return r.exit_code;
}

class HostSampler : public tb::GuestTest {};

TEST_F(HostSampler, SeesEveryQemuThreadRunning) {
  auto& g = guest();
  Sampling s(g);
  s.run_for(2200ms);
  ASSERT_EQ(s->vcpus().size(), static_cast<size_t>(g.vcpu_count()));
  for (const TrackedThread* v : s->vcpus()) {
    EXPECT_TRUE(v->present()) << v->vcpu();
    EXPECT_EQ(v->comm().rfind("CPU " + std::to_string(v->vcpu()) + "/", 0), 0u) << v->comm();
    EXPECT_EQ(v->errors(), 0u) << v->last_error().to_string();
    ThreadSignals sig = v->signals(2000 * kMs);
    ASSERT_TRUE(sig.valid);
    EXPECT_TRUE(sig.has_schedstat);
    // The sleepers wake every vCPU twice a second (2 s leaves room for a busy host).
    EXPECT_TRUE(sig.run_progress) << "vCPU " << v->vcpu();
    EXPECT_NE(sig.state, 'D');
  }
  EXPECT_FALSE(s->other_threads().empty());
  EXPECT_EQ(s->other_threads()[0]->tid(), g.qemu_pid());
  std::cout << "threads: " << s->vcpus().size() << " vCPUs + " << s->other_threads().size()
            << " others, memory " << s->memory_bytes() << " bytes" << std::endl;
}

TEST_F(HostSampler, FreezeGivesDWithinOneSampleAndNoRunProgress) {
  auto& g = guest();
  Sampling s(g);
  s.run_for(300ms);
  auto f = g.freeze_vcpu(2);
  ASSERT_TRUE(f.applied()) << f.error();
  s.tick();  // the first sample after the freeze
  const TrackedThread* v = s->vcpu(2);
  EXPECT_EQ(v->history().newest().state, 'D');
  s.run_for(700ms);
  ThreadSignals sig = s->vcpu_signals(2, 500 * kMs);
  ASSERT_TRUE(sig.valid);
  EXPECT_EQ(sig.state, 'D');
  EXPECT_FALSE(sig.run_progress);
  EXPECT_EQ(sig.run_delta_ns, 0u);
  EXPECT_GE(sig.time_in_state_ns, 500 * kMs);
  EXPECT_GE(sig.no_progress_ns, 500 * kMs);
  // VCPU_HOST_BLOCKED's inputs hold: D, no run progress for at least 500 ms.
  EXPECT_NE(v->detail().t_ns, 0);
  EXPECT_EQ(v->detail().state, 'D');
  std::cout << "frozen vCPU 2 (" << f.freeze_case() << "): wchan '" << v->detail().wchan
            << "', stack (errno " << v->detail().stack_errno << "):\n"
            << stack_text(v->detail());
  if (v->detail().stack_errno == 0) {
    EXPECT_FALSE(v->detail().stack.empty());
  }
  if (f.freeze_case() == "vcpu-only") {
    // The other vCPUs still run.
    int progressing = 0;
    for (int i : {0, 1, 3}) progressing += s->vcpu_signals(i, 1000 * kMs).run_progress;
    EXPECT_GT(progressing, 0);
  }
  f.release();
  s.run_for(600ms);
  EXPECT_NE(s->vcpu(2)->history().newest().state, 'D');
  EXPECT_TRUE(tb::eventually(
      [&] {
        s.tick();
        return s->vcpu_signals(2, 500 * kMs).run_progress;
      },
      5s));
}

TEST_F(HostSampler, ThrottleRaisesStealFractionAndCountsCgroupThrottling) {
  auto& g = guest();
  ASSERT_EQ(guest_sh(g, "tb-load start 3"), 0);  // keep vCPU 3 busy
  struct LoadStop {
    const tb::Guest& g;
    ~LoadStop() { guest_sh(g, "tb-load stop"); }
  } load_stop{g};
  Sampling s(g);
  s.run_for(1500ms);
  ThreadSignals before = s->vcpu_signals(3);
  ASSERT_TRUE(before.valid);
  EXPECT_FALSE(before.has_cgroup) << "the testbed's libvirt has no cgroup controllers";

  auto f = g.throttle_vcpu(3, 5000, 100000);
  ASSERT_TRUE(f.applied()) << f.error();
  // Cgroup membership is re-read with the thread listing, once a second.
  s.run_for(2500ms);
  ThreadSignals during = s->vcpu_signals(3);
  ASSERT_TRUE(during.valid);
  std::cout << "vCPU 3 busy: steal " << before.steal_fraction << " run " << before.run_fraction
            << "; throttled 5%: steal " << during.steal_fraction << " run " << during.run_fraction
            << " nr_throttled +" << during.nr_throttled_delta << " throttled "
            << during.throttled_delta_ns / 1e6 << " ms" << std::endl;
  // Throttled, the busy vCPU is runnable all the time and runs 5% of it: steal near 0.95. Before,
  // steal is whatever the host's load leaves; on a saturated host it is already that high and a
  // rise cannot show, so it is only required when the baseline leaves room.
  EXPECT_GT(during.steal_fraction, 0.7) << "runnable but not running most of the time";
  if (before.steal_fraction < 0.8) {
    EXPECT_GT(during.steal_fraction, before.steal_fraction + 0.1);
  } else {
    std::cout << "host too busy to show the rise (baseline steal " << before.steal_fraction
              << ")" << std::endl;
  }
  EXPECT_LT(during.run_fraction, 0.2) << "a 5% quota";
  EXPECT_TRUE(s->vcpu(3)->sampler().own_cgroup());
  EXPECT_NE(s->vcpu(3)->sampler().cgroup().path.find("stallmon-tb-inj"), std::string::npos)
      << s->vcpu(3)->sampler().cgroup().path;
  EXPECT_TRUE(during.has_cgroup);
  EXPECT_TRUE(during.throttled);
  EXPECT_GT(during.nr_throttled_delta, 5u) << "about ten periods a second are throttled";
  EXPECT_GT(during.throttled_delta_ns, 300u * kMs);
  // Other vCPUs are not in a cgroup of their own.
  EXPECT_FALSE(s->vcpu(0)->sampler().own_cgroup());

  f.release();
  s.run_for(1200ms);
  EXPECT_FALSE(s->vcpu(3)->sampler().own_cgroup()) << "back in the process's cgroup";
  EXPECT_EQ(s->vcpu(3)->errors(), 0u) << s->vcpu(3)->last_error().to_string();
}

TEST_F(HostSampler, PtraceStopGivesLowercaseTAndTracer) {
  auto& g = guest();
  Sampling s(g);
  s.run_for(300ms);
  auto f = g.ptrace_stop_vcpu(1);
  ASSERT_TRUE(f.applied()) << f.error();
  s.run_for(700ms);
  const TrackedThread* v = s->vcpu(1);
  const ThreadSample& x = v->history().newest();
  EXPECT_EQ(x.state, 't');
  EXPECT_TRUE(x.flags & ThreadSample::kTraced);
  ThreadSignals sig = s->vcpu_signals(1, 500 * kMs);
  EXPECT_EQ(sig.state, 't');
  EXPECT_FALSE(sig.run_progress);
  EXPECT_GE(sig.time_in_state_ns, 500 * kMs);
  EXPECT_EQ(v->detail().state, 't');
  std::cout << "ptrace-stopped vCPU 1: wchan '" << v->detail().wchan << "', stack:\n"
            << stack_text(v->detail());
  for (int i : {0, 2, 3}) EXPECT_NE(s->vcpu(i)->history().newest().state, 't') << i;
  f.release();
  s.run_for(300ms);
  EXPECT_NE(s->vcpu(1)->history().newest().state, 't');
  EXPECT_FALSE(s->vcpu(1)->history().newest().flags & ThreadSample::kTraced);
}

TEST_F(HostSampler, SigstopGivesTForEveryThread) {
  auto& g = guest();
  Sampling s(g);
  s.run_for(300ms);
  auto f = g.sigstop();
  ASSERT_TRUE(f.applied()) << f.error();
  s.run_for(700ms);
  for (const TrackedThread* v : s->vcpus()) {
    EXPECT_EQ(v->history().newest().state, 'T') << "vCPU " << v->vcpu();
    ThreadSignals sig = v->signals(500 * kMs);
    EXPECT_FALSE(sig.run_progress) << "vCPU " << v->vcpu();
    EXPECT_EQ(v->detail().state, 'T');
  }
  for (const TrackedThread* t : s->other_threads()) {
    EXPECT_EQ(t->history().newest().state, 'T') << t->tid() << " " << t->comm();
  }
  f.release();
  s.run_for(300ms);
  for (const TrackedThread* v : s->vcpus()) EXPECT_NE(v->history().newest().state, 'T');
}

}  // namespace
}  // namespace stallmon::host
