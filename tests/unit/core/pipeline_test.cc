// SPDX-License-Identifier: Apache-2.0
// One domain's pipeline end to end on simulated time: a fake /proc for the host side and the
// snapshot tests' synthetic 6.1 kernel for the guest side, joined by the real engine. Also the
// introspection state machine: discovery failures with backoff, a new qemu process, inspect.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <stdexcept>
#include <thread>

#include "fake_domain.h"
#include "internal.h"
#include "orc_fixture.h"
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
                                        uint64_t hint) -> Result<std::unique_ptr<internal::GuestKernel>> {
      ++discoveries;
      last_pid = pid;
      last_hint = hint;
      EXPECT_FALSE(ram.empty());
      if (throw_in_discovery) throw std::bad_alloc();
      if (fail_discovery) return Error(ErrorCode::kNotFound, "VMCOREINFO note not found");
      auto sk = std::make_unique<SyntheticKernel>(4, layout);
      std::optional<introspect::testing::OrcStack> orc;
      if (with_stack) orc.emplace(*sk);  // before seed case 1, which puts its own tasks on the CPUs
      if (seed_case1) build_seed_case1(*sk);
      if (orc) {
        // CPU0's current task (seed case 1's waiter, sh/107) runs on the fixture's stack:
        // interrupted in inner() called by middle() by outer(), verified with its ORC table.
        uint64_t curr = 0;
        (void)sk->read(sk->percpu("runqueues", 0) + sk->off("rq", "curr"), &curr, 8);
        sk->mem.put<uint64_t>(curr + sk->off("task_struct", "stack"), orc->stack);
        if (with_orc_tables) orc->install_orc(true);
      }
      if (layout == SyntheticKernel::Layout::kLinux61) {
        sk->init_printk(6, 12);
        sk->printk("Linux version 6.1.0-test", 1000);
      }
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
      gk->note_gpa = note_gpa;
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
  void seed_case1_diagnosed();  // end to end, asserting every finding (below)
  std::vector<Finding> active(FindingKind k) {
    std::vector<Finding> out;
    for (auto& f : engine_->active_findings()) {
      if (f.kind == k) out.push_back(f);
    }
    return out;
  }
  static std::string roots_of(const Finding& f) {
    for (const auto& e : f.evidence) {
      if (e.wait_roots) return diagnosis::evidence_facts(e).at("roots");  // "1,2", as the API shows it
    }
    return "";
  }

  FakeQemu q;
  MonitorConfig config_;
  std::unique_ptr<internal::Shared> shared_;
  std::unique_ptr<diagnosis::DiagnosisEngine> engine_;
  int discoveries = 0;
  pid_t last_pid = 0;
  uint64_t last_hint = 0;
  uint64_t note_gpa = 0x1300000;
  bool fail_discovery = false;
  bool throw_in_discovery = false;
  bool seed_case1 = true;
  SyntheticKernel::Layout layout = SyntheticKernel::Layout::kLinux61;
  bool with_stack = false;       // CPU0's task gets a kernel stack with a known call chain...
  bool with_orc_tables = true;   // ...and the kernel its ORC tables
  SyntheticKernel* kernel = nullptr;
};

TEST_F(PipelineTest, SeedCase1FromHostSamplesAndGuestSnapshots) { seed_case1_diagnosed(); }

// Issue 13: the same diagnosis on the layouts of the kernels seed case 1 really ran on (3.10,
// CentOS 7) and of 4.14..5.7: list_head or untyped llist queues, cfd->csd, inline cpumasks.
TEST_F(PipelineTest, SeedCase1OnA310Layout) {
  layout = SyntheticKernel::Layout::kLinux310;
  seed_case1_diagnosed();
}

TEST_F(PipelineTest, SeedCase1OnA4xLayout) {
  layout = SyntheticKernel::Layout::kLegacy;
  seed_case1_diagnosed();
}

// Seed case 1 end to end on the fixture's kernel layout: CPU2's vCPU thread blocked on the
// host, CPU0 waiting for its csd, CPU2 idle with work queued.
void PipelineTest::seed_case1_diagnosed() {
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
  EXPECT_EQ(d.vcpus[2].guest->rq.ttwu_pending, 1u);  // rq->ttwu_pending, or rq->wake_list before 5.8
  ASSERT_TRUE(d.vcpus[0].guest);
  EXPECT_EQ(d.vcpus[0].guest->rq.curr.comm, "sh");
  EXPECT_EQ(shared_->counters.snapshots.load(), h.snapshots);
}

// The evidence link carrying `cpu`'s kernel trace (or its absence), nullptr if none.
const diagnosis::Evidence* trace_of(const Finding& f, int cpu) {
  for (const auto& e : f.evidence) {
    if (e.cpu == cpu && e.kernel_trace) return &e;
  }
  return nullptr;
}

// Issue 12 item 1: the CPUs findings involve are traced (and only they), the traces reach the
// findings' evidence and the event stream, and are refreshed once a second, not every tick.
TEST_F(PipelineTest, CpusOfFindingsGetKernelTracesAsEvidence) {
  with_stack = true;
  auto p = make();
  run(*p, 3);
  ASSERT_EQ(p->introspection().state, IntrospectionState::kReady);
  EXPECT_EQ(shared_->counters.kernel_traces.load(), 0u);  // no finding: nothing traced
  q.block_vcpu(2);
  run(*p, 12);

  auto ipi = active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  ASSERT_EQ(ipi[0].cpus, (std::vector<int>{0, 2}));  // waiter 0, root 2
  const diagnosis::Evidence* t0 = trace_of(ipi[0], 0);
  ASSERT_NE(t0, nullptr);
  EXPECT_EQ(t0->text.rfind("CPU0 trace (interrupt frame, orc-verified, sh/107): inner+0x18/0x100 \u2190 "
                           "middle+0x30/0x100 \u2190 outer+0x20/",
                           0),
            0u)
      << t0->text;
  EXPECT_NE(t0->text.find("ret_from_fork+0x10/"), std::string::npos) << t0->text;
  const diagnosis::KernelTrace& k0 = t0->kernel_trace->trace;
  EXPECT_EQ(k0.verification, diagnosis::TraceVerification::kInterruptFrame);
  ASSERT_EQ(k0.frames.size(), 4u);
  EXPECT_EQ(k0.frames.front(), "inner+0x18/0x100");
  EXPECT_EQ(k0.comm, "sh");
  EXPECT_EQ(k0.pid, 107);
  // CPU2's current task is its idle task, which has no stack in this kernel: a value, not a throw.
  const diagnosis::Evidence* t2 = trace_of(ipi[0], 2);
  ASSERT_NE(t2, nullptr);
  EXPECT_EQ(t2->text.rfind("CPU2 trace unavailable: ", 0), 0u) << t2->text;
  EXPECT_FALSE(t2->kernel_trace->trace.error.empty());
  EXPECT_EQ(trace_of(ipi[0], 1), nullptr);
  EXPECT_EQ(trace_of(ipi[0], 3), nullptr);

  auto idle = active(FindingKind::kGuestIdleWithPendingWork);
  ASSERT_EQ(idle.size(), 1u);
  EXPECT_NE(trace_of(idle[0], 2), nullptr);
  EXPECT_EQ(trace_of(idle[0], 0), nullptr);  // a finding shows the traces of its own CPUs only
  auto blocked = active(FindingKind::kVcpuHostBlocked);
  ASSERT_EQ(blocked.size(), 1u);
  EXPECT_EQ(trace_of(blocked[0], 2), nullptr);  // a host-side kind carries no guest trace

  // The stream: the trace arrives with the update one tick after the finding opened.
  auto ev = engine_->events_since(0);
  std::optional<diagnosis::FindingEvent> opened, traced;
  for (const auto& e : ev.events) {
    if (e.finding.kind != FindingKind::kGuestIpiStall) continue;
    if (e.type == diagnosis::FindingEvent::Type::kOpened) opened = e;
    if (!traced && trace_of(e.finding, 0) != nullptr) traced = e;
  }
  ASSERT_TRUE(opened);
  ASSERT_TRUE(traced);
  EXPECT_EQ(traced->type, diagnosis::FindingEvent::Type::kUpdated);
  EXPECT_LE(traced->finding.last_update - opened->finding.opened_at, std::chrono::milliseconds(100));

  // Refreshed once a second for the two CPUs involved: 3 s of ticks, 3 traces per CPU (CPUs 1
  // and 3, in no finding, would double it).
  const uint64_t before = shared_->counters.kernel_traces.load();
  run(*p, 30);
  const uint64_t taken = shared_->counters.kernel_traces.load() - before;
  EXPECT_LE(taken, 6u);
  EXPECT_GE(taken, 4u);
  ipi = active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  ASSERT_NE(trace_of(ipi[0], 0), nullptr);
  EXPECT_LT(trace_of(ipi[0], 0)->kernel_trace->age, std::chrono::seconds(1));
  EXPECT_GE(shared_->counters.kernel_trace_failures.load(), 1u);  // CPU2's
}

TEST_F(PipelineTest, AKernelWithoutOrcTablesGivesTraceUnavailableWithTheReason) {
  with_stack = true;
  with_orc_tables = false;
  auto p = make();
  run(*p, 3);
  q.block_vcpu(2);
  run(*p, 12);
  auto ipi = active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  EXPECT_EQ(roots_of(ipi[0]), "2");  // the diagnosis itself is unchanged
  const diagnosis::Evidence* t0 = trace_of(ipi[0], 0);
  ASSERT_NE(t0, nullptr);
  EXPECT_EQ(t0->text.rfind("CPU0 trace unavailable: ", 0), 0u) << t0->text;
  EXPECT_NE(t0->text.find("__start_orc_unwind_ip"), std::string::npos) << t0->text;
  EXPECT_EQ(shared_->counters.kernel_trace_failures.load(), shared_->counters.kernel_traces.load());
  EXPECT_EQ(p->introspection().state, IntrospectionState::kReady);
}

TEST_F(PipelineTest, AGuestWithoutFindingsIsNeverTraced) {
  seed_case1 = false;  // (the stack fixture alone puts a task on CPU0 as if idle: a finding)
  auto p = make();
  run(*p, 50);
  EXPECT_TRUE(engine_->active_findings().empty());
  EXPECT_EQ(p->introspection().snapshots, 50u);
  EXPECT_EQ(shared_->counters.kernel_traces.load(), 0u);  // attempts count too, failed or not
}

TEST_F(PipelineTest, HealthyGuestIsSnapshottedOnEveryTickByDefault) {
  seed_case1 = false;
  auto p = make();
  run(*p, 50);
  EXPECT_TRUE(engine_->active_findings().empty());
  EXPECT_EQ(p->introspection().snapshots, 50u);
}

TEST_F(PipelineTest, HealthyGuestIsSnapshottedAtTheBaselineRate) {
  seed_case1 = false;
  shared_->config.baseline_snapshot_interval = std::chrono::seconds(1);
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
  internal::SleepWchanReader w(q.fs);
  for (int i = 0; i < 5; ++i) {
    q.advance(100);
    ASSERT_TRUE(s.sample_once().ok());
  }
  internal::fill_host_views(s, &w, obs);
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
  internal::fill_host_views(s, &w, again);
  EXPECT_EQ(w.reads(), reads);
  EXPECT_EQ(again.vcpus[0].thread.wchan, "futex_do_wait");
}

// Issue 16: an idle vCPU's wchan is read once a second from a descriptor kept open (a quarter of
// the kernel's cost of open + read + close); a failed read closes it and the next read reopens.
TEST_F(PipelineTest, SleepingThreadsWchanDescriptorIsKeptAndReopenedAfterAFailure) {
  q.block_vcpu(3, 'S', "futex_do_wait");
  const std::string path = "proc/" + std::to_string(FakeQemu::kPid) + "/task/" + std::to_string(q.vcpu_tid(3)) + "/wchan";
  host::ProcessSampler s(q.fs, q.mono, FakeQemu::kPid, {{3, q.vcpu_tid(3)}});
  auto w = std::make_unique<internal::SleepWchanReader>(q.fs);
  auto fill_after = [&](int ms) {
    for (int i = 0; i < ms / 100; ++i) {
      q.advance(100);
      EXPECT_TRUE(s.sample_once().ok());
    }
    diagnosis::DomainObservation obs;
    internal::fill_host_views(s, w.get(), obs);
    return obs.vcpus.at(0).thread.wchan;
  };
  EXPECT_EQ(fill_after(500), "futex_do_wait");
  q.block_vcpu(3, 'S', "do_sys_poll");  // a new wait, same thread: the kept descriptor shows it
  EXPECT_EQ(fill_after(1100), "do_sys_poll");
  EXPECT_EQ(w->reads(), 2u);
  EXPECT_EQ(w->opens(), 1u);
  EXPECT_EQ(q.fs.opens(path), 1u);
  q.fs.set_error(path, EIO);
  EXPECT_EQ(fill_after(1100), "");  // unknown, not the stale value
  q.fs.set_error(path, 0);
  EXPECT_EQ(fill_after(1100), "do_sys_poll");
  EXPECT_EQ(w->opens(), 2u);
  const size_t handles = q.fs.open_handles();  // the sampler's and the one wchan
  w.reset();  // the reader closes what it kept
  EXPECT_EQ(q.fs.open_handles(), handles - 1);
}

TEST_F(PipelineTest, NoKernelBacksOffToHoursAndSaysSo) {
  // The real discovery path over 64 MiB of zeros: a full scan finds no VMCOREINFO note.
  shared_->discover_override = nullptr;
  shared_->memory_opener = [](pid_t, const std::vector<introspect::RamRange>&)
      -> Result<std::shared_ptr<introspect::PhysicalMemory>> {
    return std::shared_ptr<introspect::PhysicalMemory>(introspect::RawImageMemory::zeroed(0, 8u << 20));
  };
  auto p = make();
  run(*p, 1);
  IntrospectionHealth h = p->introspection();
  ASSERT_EQ(h.state, IntrospectionState::kNoKernel) << h.error;
  EXPECT_EQ(h.discovery_bytes_read, 8u << 20);
  EXPECT_EQ(h.last_discovery_bytes_read, 8u << 20);
  // Retries double from 1 s up to no_kernel_retry_max (4 h): step to each next attempt.
  Duration wait{0};
  for (int i = 0; i < 20; ++i) {
    h = p->introspection();
    ASSERT_TRUE(h.next_attempt_at);
    wait = *h.next_attempt_at - q.clock.now();
    q.advance(std::chrono::duration_cast<std::chrono::milliseconds>(wait).count());
    p->tick();
  }
  h = p->introspection();
  EXPECT_EQ(h.discovery_attempts, 21u);
  EXPECT_EQ(h.discovery_bytes_read, 21u * (8u << 20));
  EXPECT_EQ(wait, std::chrono::hours(4));
  EXPECT_EQ(describe(h, q.clock.now()), "no Linux kernel found (scanned 0.2 GiB, next try in 4h 0m)");
  // Host sampling never stopped.
  EXPECT_EQ(p->summary().ticks, 21u);
  // A reboot event retries at once.
  libvirt::DomainEvent ev;
  ev.kind = libvirt::DomainEventKind::kRebooted;
  p->post_event(ev, q.clock.now());
  run(*p, 1);
  EXPECT_EQ(p->introspection().discovery_attempts, 22u);
}

// Issue 10: the domain's host sampling history shares its memory budget with what the guest
// decides the size of. The budget is sized here from what the history takes.
TEST_F(PipelineTest, HostHistoryIsChargedToTheDomainBudget) {
  constexpr std::string_view kHistory = "host sampling history";
  uint64_t limit = 64u << 20;
  std::shared_ptr<introspect::MemoryBudget> budget;
  auto discover = shared_->discover_override;
  shared_->discover_override = [&](pid_t pid, const std::vector<introspect::RamRange>& ram, uint64_t hint) {
    auto r = discover(pid, ram, hint);
    if (r.ok()) (*r)->budget = budget = std::make_shared<introspect::MemoryBudget>("vm1", limit);
    return r;
  };
  auto reboot = [&](internal::DomainPipeline& p) {
    libvirt::DomainEvent ev;
    ev.kind = libvirt::DomainEventKind::kRebooted;
    p.post_event(ev, q.clock.now());
  };
  auto p = make();
  run(*p, 2);
  ASSERT_EQ(p->introspection().state, IntrospectionState::kReady) << p->introspection().error;
  const uint64_t history = budget->breakdown()[std::string(kHistory)];
  // 4 vCPUs' and the other threads' first samples at least (the rings grow with the samples).
  EXPECT_GT(history, 4u * sizeof(host::ThreadSample));

  // A budget the history alone does not fit in: no introspection, host sampling goes on.
  limit = history / 2;
  reboot(*p);
  run(*p, 2);
  IntrospectionHealth h = p->introspection();
  EXPECT_EQ(h.state, IntrospectionState::kOverBudget) << h.error;
  EXPECT_NE(h.error.find(kHistory), std::string::npos) << h.error;
  EXPECT_EQ(p->summary().ticks, 4u);

  // Room for the history and a little more: ready; then the process grows 64 threads, whose
  // histories do not fit, and introspection stops on the tick that sees them.
  limit = history + (8u << 10);
  reboot(*p);
  run(*p, 2);
  ASSERT_EQ(p->introspection().state, IntrospectionState::kReady) << p->introspection().error;
  for (int i = 0; i < 64; ++i) q.add_thread(FakeQemu::kPid + 100 + i, "worker");
  run(*p, 12);  // the thread list is re-read once a second
  h = p->introspection();
  EXPECT_EQ(h.state, IntrospectionState::kOverBudget) << h.error;
  EXPECT_NE(h.error.find(kHistory), std::string::npos) << h.error;
  EXPECT_EQ(p->summary().ticks, 18u);
  q.block_vcpu(1);
  run(*p, 5);
  EXPECT_EQ(active(FindingKind::kVcpuHostBlocked).size(), 1u);
}

TEST_F(PipelineTest, OtherDiscoveryFailuresBackOffToTheShortMaximum) {
  shared_->discover_override = [this](pid_t, const std::vector<introspect::RamRange>&, uint64_t)
      -> Result<std::unique_ptr<internal::GuestKernel>> {
    ++discoveries;
    return Error(ErrorCode::kCorrupt, "kallsyms: bad token table");
  };
  auto p = make();
  for (int i = 0; i < 10; ++i) {
    q.advance(60'000);
    p->tick();
  }
  IntrospectionHealth h = p->introspection();
  EXPECT_EQ(h.state, IntrospectionState::kFailed);
  ASSERT_TRUE(h.next_attempt_at);
  EXPECT_EQ(*h.next_attempt_at - q.clock.now(), std::chrono::seconds(30));
}

TEST_F(PipelineTest, LastGoodHintIsKeptInTheStateDirectoryAndTriedFirst) {
  const std::string dir = ::testing::TempDir() + "/stallmon-hints-" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  shared_->hints = internal::HintStore(dir);
  {
    auto p = make();
    run(*p, 1);
    ASSERT_EQ(discoveries, 1);
    EXPECT_EQ(last_hint, 0u);
  }
  std::ifstream in(dir + "/hints/00000000-0000-0000-0000-000000000001");
  std::string text;
  ASSERT_TRUE(std::getline(in, text));
  EXPECT_EQ(text, "1300000");
  // The next start (a new pipeline, as after a daemon restart) looks there first.
  auto p = make();
  run(*p, 1);
  EXPECT_EQ(discoveries, 2);
  EXPECT_EQ(last_hint, 0x1300000u);
  // Garbage in the file is ignored, not trusted.
  { std::ofstream(dir + "/hints/00000000-0000-0000-0000-000000000001") << "zz\n"; }
  EXPECT_EQ(shared_->hints.load("00000000-0000-0000-0000-000000000001"), 0u);
  // A uuid that is not one never becomes a path.
  EXPECT_TRUE(shared_->hints.save("../../etc/passwd", 0x1000).ok());
  EXPECT_FALSE(std::filesystem::exists(dir + "/hints/../../etc/passwd.tmp"));
  std::filesystem::remove_all(dir);
}

// A KernelAccess that throws from its reads: a bug (or an allocation failure) in the snapshot
// path of one domain.
class ThrowingAccess final : public introspect::KernelAccess {
 public:
  explicit ThrowingAccess(std::unique_ptr<SyntheticKernel> k) : k_(std::move(k)) {}
  Result<void> read(uint64_t va, void* buf, size_t len) override {
    if (armed && text_only) throw std::runtime_error("not a real std::bad_alloc");
    if (armed) throw std::bad_alloc();
    return k_->read(va, buf, len);
  }
  Result<uint64_t> symbol(std::string_view n) const override { return k_->symbol(n); }
  std::string symbolize(uint64_t a) const override { return k_->symbolize(a); }
  Result<introspect::MemberLayout> member(std::string_view t, std::string_view p) const override {
    return k_->member(t, p);
  }
  Result<uint64_t> type_size(std::string_view t) const override { return k_->type_size(t); }
  bool armed = false;
  bool text_only = false;  // throw an exception whose message only says "bad_alloc"

 private:
  std::unique_ptr<SyntheticKernel> k_;
};

// Seed case 1's kernel behind a ThrowingAccess, as discovery would return it (*access: the access).
Result<std::unique_ptr<internal::GuestKernel>> throwing_kernel(const internal::Shared& shared, ThrowingAccess** access) {
  auto sk = std::make_unique<SyntheticKernel>(4, SyntheticKernel::Layout::kLinux61);
  build_seed_case1(*sk);
  auto a = std::make_unique<ThrowingAccess>(std::move(sk));
  auto gk = std::make_unique<internal::GuestKernel>();
  for (auto [options, reader] : {std::pair{&shared.config.snapshot, &gk->tick_reader},
                                 std::pair{&shared.config.inspect_snapshot, &gk->inspect_reader}}) {
    auto r = introspect::SnapshotReader::create(*a, *options);
    if (!r.ok()) return std::move(r).error();
    *reader = std::move(r).value();
  }
  *access = a.get();
  gk->access = std::move(a);
  return gk;
}

TEST_F(PipelineTest, AnExceptionInOneDomainsWorkMarksThatDomainOnly) {
  ThrowingAccess* access = nullptr;
  shared_->discover_override = [&](pid_t, const std::vector<introspect::RamRange>&, uint64_t)
      -> Result<std::unique_ptr<internal::GuestKernel>> {
    ++discoveries;
    if (throw_in_discovery) throw std::bad_alloc();
    return throwing_kernel(*shared_, &access);
  };
  auto p = make();
  run(*p, 2);
  ASSERT_EQ(p->introspection().state, IntrospectionState::kReady);
  access->armed = true;
  q.block_vcpu(2);
  run(*p, 5);  // the snapshot throws bad_alloc; ticks go on
  IntrospectionHealth h = p->introspection();
  EXPECT_NE(h.error.find("bad_alloc"), std::string::npos) << h.error;
  EXPECT_GE(shared_->counters.internal_errors.load(), 1u);
  // Host-side monitoring went on: the frozen vCPU is reported.
  EXPECT_EQ(active(FindingKind::kVcpuHostBlocked).size(), 1u);
  const uint64_t ticks = p->summary().ticks;
  EXPECT_EQ(ticks, 6u);  // the one that threw did not complete
  // A discovery that throws is contained the same way.
  throw_in_discovery = true;
  libvirt::DomainEvent ev;
  ev.kind = libvirt::DomainEventKind::kRebooted;
  p->post_event(ev, q.clock.now());
  run(*p, 1);
  h = p->introspection();
  EXPECT_EQ(h.state, IntrospectionState::kOverBudget) << h.error;
  EXPECT_NE(h.error.find("allocation failed"), std::string::npos) << h.error;
  EXPECT_EQ(p->summary().ticks, ticks + 1);
}

// What escaped is classified by its type: a message that merely says "bad_alloc" is a failure,
// not an over-budget domain (which would be retried as if the host had run out of memory).
TEST_F(PipelineTest, AnExceptionIsOverBudgetByItsTypeNotItsText) {
  ThrowingAccess* access = nullptr;
  shared_->discover_override = [&](pid_t, const std::vector<introspect::RamRange>&, uint64_t)
      -> Result<std::unique_ptr<internal::GuestKernel>> { return throwing_kernel(*shared_, &access); };
  auto p = make();
  run(*p, 2);
  ASSERT_EQ(p->introspection().state, IntrospectionState::kReady);
  access->armed = access->text_only = true;
  q.block_vcpu(2);
  run(*p, 5);
  IntrospectionHealth h = p->introspection();
  EXPECT_EQ(h.state, IntrospectionState::kFailed) << h.error;
  EXPECT_NE(h.error.find("not a real std::bad_alloc"), std::string::npos) << h.error;
}

TEST_F(PipelineTest, GuestClockGoingBackDropsTheKernelAndResolvesGuestFindings) {
  auto p = make();
  run(*p, 2);
  SyntheticKernel* old = kernel;
  auto set_jiffies = [](SyntheticKernel* k, uint64_t v) { k->mem.put<uint64_t>(*k->symbol("jiffies_64"), v); };
  uint64_t jiffies = 0;
  ASSERT_TRUE(old->read(*old->symbol("jiffies_64"), &jiffies, 8).ok());
  q.block_vcpu(2);
  for (int i = 0; i < 12; ++i) {
    set_jiffies(old, jiffies + 25 * i);
    run(*p, 1);
  }
  ASSERT_EQ(active(FindingKind::kGuestIpiStall).size(), 1u);
  const uint64_t snaps = p->introspection().snapshots;
  // A warm reboot without any event: the same RAM now shows a clock that went back.
  set_jiffies(old, 1000);
  run(*p, 1);
  IntrospectionHealth h = p->introspection();
  EXPECT_EQ(h.reboots_detected, 1u);
  EXPECT_TRUE(active(FindingKind::kGuestIpiStall).empty());
  EXPECT_TRUE(active(FindingKind::kGuestIdleWithPendingWork).empty());
  EXPECT_EQ(shared_->counters.reboots_detected.load(), 1u);
  // Rediscovered at once (the hint is not used: the old note is where old memory lies) ...
  run(*p, 1);
  EXPECT_EQ(discoveries, 2);
  EXPECT_EQ(last_hint, 0u);
  // ... but its snapshots are not observed until its clock advances: the seed-case pattern the
  // new kernel shows opens nothing meanwhile.
  run(*p, 3);
  h = p->introspection();
  EXPECT_EQ(h.state, IntrospectionState::kDiscovering) << h.error;
  EXPECT_GT(h.snapshots, snaps);
  EXPECT_TRUE(active(FindingKind::kGuestIpiStall).empty());
  set_jiffies(kernel, jiffies + 25);
  run(*p, 1);
  EXPECT_EQ(p->introspection().state, IntrospectionState::kReady);
  run(*p, 12);
  EXPECT_EQ(active(FindingKind::kGuestIpiStall).size(), 1u);
  // The guest writes its own clock: "rebooting" again a few seconds later buys it no immediate
  // full discovery, only one after a backoff.
  const int before = discoveries;
  set_jiffies(kernel, 10);
  run(*p, 1);
  EXPECT_EQ(p->introspection().reboots_detected, 2u);
  run(*p, 5);
  EXPECT_EQ(discoveries, before);
  run(*p, 6);
  EXPECT_EQ(discoveries, before + 1);
}

// After a reboot the old boot's memory is overwritten by the booting kernel: its jiffies change,
// but by arbitrary amounts. That is not a running clock: not proven, nothing observed, and the
// real advance afterwards proves it (one reboot, counted once).
TEST_F(PipelineTest, ClocksThatJumpAsNoRunningKernelsDoProveNothing) {
  auto p = make();
  run(*p, 2);
  auto set_jiffies = [&](uint64_t v) { kernel->mem.put<uint64_t>(*kernel->symbol("jiffies_64"), v); };
  uint64_t jiffies = 0;
  ASSERT_TRUE(kernel->read(*kernel->symbol("jiffies_64"), &jiffies, 8).ok());
  libvirt::DomainEvent ev;
  ev.kind = libvirt::DomainEventKind::kRebooted;
  p->post_event(ev, q.clock.now());
  run(*p, 2);  // rediscovered; the proof's base read
  ASSERT_EQ(p->introspection().state, IntrospectionState::kDiscovering);
  const uint64_t snaps = p->introspection().snapshots;
  set_jiffies(jiffies + 5'000'000);  // 5 million jiffies in 100 ms: overwritten bytes
  run(*p, 1);
  EXPECT_EQ(p->introspection().state, IntrospectionState::kDiscovering);
  set_jiffies(jiffies + 17);  // and back: not a clock either
  run(*p, 1);
  EXPECT_EQ(p->introspection().state, IntrospectionState::kDiscovering);
  EXPECT_GT(p->introspection().snapshots, snaps);
  set_jiffies(jiffies + 42);  // +25 in 100 ms (HZ 250): a running kernel
  run(*p, 1);
  EXPECT_EQ(p->introspection().state, IntrospectionState::kReady);
  run(*p, 3);
  EXPECT_EQ(p->introspection().reboots_detected, 1u);
  EXPECT_EQ(shared_->counters.reboots_detected.load(), 1u);
}

TEST_F(PipelineTest, RebootEventDropsTheKernelBeforeTheNextSnapshot) {
  auto p = make();
  run(*p, 2);
  // A clock only the old boot's memory shows.
  kernel->mem.put<uint64_t>(kernel->percpu("runqueues", 1) + kernel->off("rq", "clock"), 999'000'000'000ULL);
  run(*p, 1);
  ASSERT_EQ(p->detail().guest->guest_clock_ns, 999'000'000'000ULL);
  libvirt::DomainEvent ev;
  ev.kind = libvirt::DomainEventKind::kRebooted;
  p->post_event(ev, q.clock.now());
  // The old kernel is gone before this tick could read it; the new one (found at once) shows a
  // frozen clock, so it is never observed and is dropped after reboot_proof_timeout.
  run(*p, 1);
  EXPECT_NE(p->detail().guest->guest_clock_ns, 999'000'000'000ULL);
  EXPECT_EQ(discoveries, 2);
  EXPECT_EQ(p->introspection().reboots_detected, 1u);
  // libvirt tells one reboot twice (QEMU's reset, then the reboot event, 127 ms apart on a real
  // guest): until a kernel is proven again it is the same reboot, counted once.
  p->post_event(ev, q.clock.now());
  run(*p, 1);
  EXPECT_EQ(p->introspection().reboots_detected, 1u);
  EXPECT_EQ(shared_->counters.reboots_detected.load(), 1u);
  run(*p, 25);
  IntrospectionHealth h = p->introspection();
  EXPECT_NE(h.state, IntrospectionState::kReady);
  EXPECT_GE(discoveries, 3);
  EXPECT_TRUE(engine_->active_findings().empty());
}

}  // namespace
}  // namespace stallmon::core
