// SPDX-License-Identifier: Apache-2.0
// One domain's pipeline end to end on simulated time: a fake /proc for the host side and the
// snapshot tests' synthetic 6.1 kernel for the guest side, joined by the real engine. Also the
// introspection state machine: discovery failures with backoff, a new qemu process, inspect.
#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "fake_domain.h"
#include "internal.h"
#include "seed_case1_kernel.h"
#include "synthetic_kernel.h"

namespace stallmon::core {
namespace {

using diagnosis::Cause;
using diagnosis::Finding;
using diagnosis::FindingKind;
using introspect::testing::SyntheticKernel;
using testing::build_seed_case1;
using testing::FakeQemu;

class PipelineTest : public ::testing::Test {
 protected:
  PipelineTest() {
    config_.threads = false;
    shared_ = std::make_unique<internal::Shared>(config_);
    shared_->fs = &q.fs;
    shared_->mono = &q.mono;
    shared_->clock = &q.clock;
    shared_->mono_to_engine = ClockMapping::from(q.clock.now(), q.mono.now_ns());
    engine_ = std::make_unique<diagnosis::DiagnosisEngine>(shared_->config.diagnosis, q.clock);
    shared_->engine = engine_.get();
    shared_->discover_override = [this](pid_t pid, const std::vector<introspect::RamRange>& ram,
                                        uint64_t) -> Result<std::unique_ptr<internal::GuestKernel>> {
      ++discoveries;
      last_pid = pid;
      EXPECT_FALSE(ram.empty());
      if (fail_discovery) return Error(ErrorCode::kNotFound, "VMCOREINFO note not found");
      auto sk = std::make_unique<SyntheticKernel>(4, SyntheticKernel::Layout::kLinux61);
      if (seed_case1) build_seed_case1(*sk);
      sk->init_printk(6, 12);
      sk->printk("Linux version 6.1.0-test", 1000);
      auto gk = std::make_unique<internal::GuestKernel>();
      auto r = introspect::SnapshotReader::create(*sk, shared_->config.snapshot);
      if (!r.ok()) return std::move(r).error();
      gk->tick_reader = std::move(r).value();
      r = introspect::SnapshotReader::create(*sk, shared_->config.inspect_snapshot);
      if (!r.ok()) return std::move(r).error();
      gk->inspect_reader = std::move(r).value();
      kernel = sk.get();
      gk->access = std::move(sk);
      gk->release = "6.1.0-test";
      gk->build_id = "0123abcd";
      return gk;
    };
  }

  std::unique_ptr<internal::DomainPipeline> make() {
    return std::make_unique<internal::DomainPipeline>(*shared_, q.info());
  }
  void run(internal::DomainPipeline& p, int ticks) {
    for (int i = 0; i < ticks; ++i) {
      q.advance(100);
      p.tick();
    }
  }
  std::vector<Finding> active(FindingKind k) {
    std::vector<Finding> out;
    for (auto& f : engine_->active_findings()) {
      if (f.kind == k) out.push_back(f);
    }
    return out;
  }
  static std::string roots_of(const Finding& f) {
    for (const auto& e : f.evidence) {
      if (auto it = e.facts.find("roots"); it != e.facts.end()) return it->second;
    }
    return "";
  }

  FakeQemu q;
  MonitorConfig config_;
  std::unique_ptr<internal::Shared> shared_;
  std::unique_ptr<diagnosis::DiagnosisEngine> engine_;
  int discoveries = 0;
  pid_t last_pid = 0;
  bool fail_discovery = false;
  bool seed_case1 = true;
  SyntheticKernel* kernel = nullptr;
};

TEST_F(PipelineTest, SeedCase1FromHostSamplesAndGuestSnapshots) {
  auto p = make();
  run(*p, 3);
  ASSERT_EQ(discoveries, 1);
  EXPECT_EQ(last_pid, FakeQemu::kPid);
  IntrospectionHealth h = p->introspection();
  ASSERT_EQ(h.state, IntrospectionState::kReady) << h.error;
  EXPECT_EQ(h.kernel_release, "6.1.0-test");
  EXPECT_EQ(h.build_id, "0123abcd");
  q.block_vcpu(2);
  run(*p, 12);

  auto ipi = active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  EXPECT_EQ(roots_of(ipi[0]), "2");
  EXPECT_EQ(ipi[0].cause, Cause::kHostBlocked);
  auto blocked = active(FindingKind::kVcpuHostBlocked);
  ASSERT_EQ(blocked.size(), 1u);
  EXPECT_EQ(blocked[0].cpus, std::vector<int>{2});
  auto idle = active(FindingKind::kGuestIdleWithPendingWork);
  ASSERT_EQ(idle.size(), 1u);
  EXPECT_EQ(idle[0].cpus, std::vector<int>{2});
  EXPECT_EQ(idle[0].cause, Cause::kHostBlocked);

  // While suspect, every tick carries a snapshot.
  h = p->introspection();
  EXPECT_GE(h.snapshots, 12u);
  EXPECT_EQ(h.snapshot_errors, 0u) << h.last_snapshot_error;
  DomainDetail d = p->detail();
  ASSERT_TRUE(d.guest);
  EXPECT_EQ(d.guest->nr_cpu_ids, 4u);
  ASSERT_TRUE(d.vcpus[2].guest);
  EXPECT_TRUE(d.vcpus[2].guest->rq.curr_is_idle);
  EXPECT_EQ(d.vcpus[2].guest->call_single_queue.size(), 2u);
  ASSERT_TRUE(d.vcpus[0].guest);
  EXPECT_EQ(d.vcpus[0].guest->rq.curr.comm, "sh");
  EXPECT_EQ(shared_->counters.snapshots.load(), h.snapshots);
}

TEST_F(PipelineTest, HealthyGuestIsSnapshottedAtTheBaselineRate) {
  seed_case1 = false;
  auto p = make();
  run(*p, 50);  // 5 s
  EXPECT_TRUE(engine_->active_findings().empty());
  const uint64_t n = p->introspection().snapshots;
  EXPECT_GE(n, 5u);
  EXPECT_LE(n, 7u);
}

TEST_F(PipelineTest, DiscoveryFailuresBackOffAndRecover) {
  fail_discovery = true;
  auto p = make();
  run(*p, 1);
  EXPECT_EQ(discoveries, 1);
  IntrospectionHealth h = p->introspection();
  EXPECT_EQ(h.state, IntrospectionState::kNoKernel);
  EXPECT_NE(h.error.find("VMCOREINFO"), std::string::npos);
  EXPECT_EQ(h.discovery_failures, 1u);
  ASSERT_TRUE(h.next_attempt_at);
  EXPECT_EQ(*h.next_attempt_at - q.clock.now(), std::chrono::seconds(1));
  run(*p, 9);
  EXPECT_EQ(discoveries, 1);
  run(*p, 1);  // 1 s later
  EXPECT_EQ(discoveries, 2);
  run(*p, 19);  // the next wait is 2 s
  EXPECT_EQ(discoveries, 2);
  run(*p, 1);
  EXPECT_EQ(discoveries, 3);
  fail_discovery = false;
  run(*p, 40);
  EXPECT_EQ(discoveries, 4);
  h = p->introspection();
  EXPECT_EQ(h.state, IntrospectionState::kReady);
  EXPECT_TRUE(h.error.empty());
  EXPECT_EQ(h.discovery_attempts, 4u);
  EXPECT_EQ(h.discovery_failures, 3u);
  EXPECT_EQ(shared_->counters.discovery_failures.load(), 3u);
}

TEST_F(PipelineTest, WaitsForTheRamLayout) {
  libvirt::DomainInfo info = q.info();
  info.ram_layout = nullptr;
  info.ram_layout_error = "monitor did not answer";
  internal::DomainPipeline p(*shared_, info);
  run(p, 5);
  EXPECT_EQ(discoveries, 0);
  EXPECT_EQ(p.introspection().state, IntrospectionState::kWaitingForLayout);
  EXPECT_EQ(p.introspection().error, "monitor did not answer");
  p.post_update(q.info());
  run(p, 1);
  EXPECT_EQ(discoveries, 1);
  EXPECT_EQ(p.introspection().state, IntrospectionState::kReady);
}

TEST_F(PipelineTest, NewRamLayoutRediscovers) {
  auto p = make();
  run(*p, 2);
  ASSERT_EQ(discoveries, 1);
  libvirt::DomainInfo info = q.info();
  // A new layout object: the libvirt layer re-resolved it (memory hotplug, a new qemu).
  info.ram_layout = std::make_shared<const std::vector<introspect::RamRange>>(*info.ram_layout);
  info.generation = 2;
  p->post_update(info);
  run(*p, 1);
  EXPECT_EQ(discoveries, 2);
  EXPECT_EQ(p->introspection().state, IntrospectionState::kReady);
}

TEST_F(PipelineTest, InspectIsServedByThePipeline) {
  auto p = make();
  run(*p, 2);
  auto fut = std::async(std::launch::async, [&] { return p->inspect(std::chrono::seconds(30)); });
  // threads=false: the next tick serves it. Tick until the request is answered.
  while (fut.wait_for(std::chrono::milliseconds(5)) != std::future_status::ready) run(*p, 1);
  auto r = fut.get();
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->domain_name, "vm1");
  EXPECT_EQ(r->kernel_release, "6.1.0-test");
  EXPECT_EQ(r->snapshot.cpus.size(), 4u);
  ASSERT_FALSE(r->snapshot.printk.empty());
  EXPECT_EQ(r->snapshot.printk.back().text, "Linux version 6.1.0-test");
}

TEST_F(PipelineTest, InspectBeforeDiscoverySaysWhy) {
  fail_discovery = true;
  auto p = make();
  run(*p, 1);
  auto fut = std::async(std::launch::async, [&] { return p->inspect(std::chrono::seconds(30)); });
  while (fut.wait_for(std::chrono::milliseconds(5)) != std::future_status::ready) run(*p, 1);
  auto r = fut.get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(r.error().message.find("not ready"), std::string::npos) << r.error().message;
}

TEST_F(PipelineTest, InspectTimesOutWhenNotServed) {
  auto p = make();
  auto r = p->inspect(std::chrono::milliseconds(1));  // nobody ticks
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  run(*p, 1);  // the abandoned request is dropped, nothing breaks
}

TEST_F(PipelineTest, RetiredPipelineObservesNothing) {
  auto p = make();
  run(*p, 2);
  q.block_vcpu(1);
  p->retire();
  run(*p, 10);
  EXPECT_TRUE(engine_->active_findings().empty());
  EXPECT_TRUE(p->finished());
}

TEST_F(PipelineTest, SleepingThreadsWithoutProgressGetTheirWchan) {
  // The VM-wide rule needs futex waits, which the sampler does not read for state S.
  q.block_vcpu(3, 'S', "futex_do_wait");
  diagnosis::DomainObservation obs;
  host::ProcessSampler s(q.fs, q.mono, FakeQemu::kPid, {{3, q.vcpu_tid(3)}});
  internal::SleepWchanReader w;
  for (int i = 0; i < 5; ++i) {
    q.advance(100);
    ASSERT_TRUE(s.sample_once().ok());
  }
  internal::fill_host_views(s, q.fs, &w, obs);
  ASSERT_EQ(obs.vcpus.size(), 1u);
  EXPECT_EQ(obs.vcpus[0].thread.state, diagnosis::ThreadState::kSleeping);
  EXPECT_EQ(obs.vcpus[0].thread.wchan, "futex_do_wait");
  EXPECT_EQ(obs.main_loop_tid, FakeQemu::kPid);
  // The other vCPU threads (not in this sampler's map) and the main loop run: no wchan read.
  ASSERT_EQ(obs.other_threads.size(), 4u);
  for (const auto& t : obs.other_threads) EXPECT_TRUE(t.wchan.empty()) << t.tid;
  // Rate-limited: a second fill within the second reads nothing new.
  const uint64_t reads = w.reads();
  diagnosis::DomainObservation again;
  internal::fill_host_views(s, q.fs, &w, again);
  EXPECT_EQ(w.reads(), reads);
  EXPECT_EQ(again.vcpus[0].thread.wchan, "futex_do_wait");
}

}  // namespace
}  // namespace stallmon::core
