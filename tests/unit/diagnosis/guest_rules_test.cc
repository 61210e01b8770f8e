// SPDX-License-Identifier: Apache-2.0
// Guest-side rules with simulated time, through the seed cases: GUEST_IPI_STALL (wait graph
// roots and their causes), GUEST_IDLE_WITH_PENDING_WORK, GUEST_SOFTLOCKUP(_IMMINENT),
// GUEST_IRQS_OFF, GUEST_PANIC - and a healthy busy guest that must produce nothing.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "sim.h"

namespace stallmon::diagnosis::testing {
namespace {

const std::vector<std::string> kFrozenStack = {"__refrigerator", "get_signal", "arch_do_signal_or_restart"};

std::optional<Timestamp> opened_at(const Sim& sim, FindingKind kind, int cpu = -1) {
  for (const auto& ev : sim.events)
    if (ev.type == FindingEvent::Type::kOpened && ev.finding.kind == kind &&
        (cpu < 0 || (ev.finding.cpus.size() == 1 && ev.finding.cpus[0] == cpu)))
      return ev.finding.opened_at;
  return std::nullopt;
}

const Finding* find(const std::vector<Finding>& fs, FindingKind kind, int cpu) {
  for (const auto& f : fs)
    if (f.kind == kind && f.cpus == std::vector<int>{cpu}) return &f;
  return nullptr;
}

// Seed case 1 as verified on the testbed (Debian 6.1 guest, watchdog_thresh 5): vCPU 2 frozen
// in the cgroup freezer while CPU0 patches kernel text and waits for every CPU to sync.
class SeedCase1 : public ::testing::Test {
 protected:
  SeedCase1() : sim(4) {
    sim.guest.watchdog_thresh = 5;
    sim.run_task(0, "sh", 107);
    sim.run(3s);
  }

  void freeze_vcpu2() {
    sim.vcpus[2].block(ThreadState::kDiskSleep, "__refrigerator", kFrozenStack);
    sim.cpus[2].timer_on = sim.cpus[2].touch_on = false;
    freeze_at = sim.clock.now();
  }
  // CPU0's next text_poke_bp: smp_call_function_many_cond waits for CPU2's do_sync_core.
  void ipi_to_frozen_cpu2() {
    sim.csd_wait(0, 2, "do_sync_core");
    sim.cpus[0].touch_on = false;  // spins in csd_lock_wait with preemption off
    sim.cpus[0].view.nr_running = 5;
    auto& c2 = sim.cpus[2].view;
    c2.ttwu_pending = true;
    c2.call_single_queue = {{0xffff888007a00040ull, CallType::kSync, "do_sync_core", 0},
                            {0xffff888007b10000ull, CallType::kTtwu, "sh/131", 1}};
    ipi_at = sim.clock.now();
  }

  Sim sim;
  Timestamp freeze_at{}, ipi_at{};
};

TEST_F(SeedCase1, RootIsCpu2BlockedOnTheHost) {
  freeze_vcpu2();
  sim.run(300ms);
  ipi_to_frozen_cpu2();
  sim.run(3s);

  // The host sees the frozen thread first.
  ASSERT_TRUE(opened_at(sim, FindingKind::kVcpuHostBlocked));
  EXPECT_EQ(*opened_at(sim, FindingKind::kVcpuHostBlocked) - freeze_at, 500ms);
  // The IPI stall opens once the csd has been seen locked for 500 ms - not a tick earlier.
  ASSERT_TRUE(opened_at(sim, FindingKind::kGuestIpiStall));
  EXPECT_EQ(*opened_at(sim, FindingKind::kGuestIpiStall) - ipi_at, 600ms)
      << "first seen at the tick after the IPI was sent, then 500 ms";

  auto all = sim.engine.active_findings();
  auto ipi = sim.active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  const Finding& f = ipi[0];
  EXPECT_EQ(f.cause, Cause::kHostBlocked);
  EXPECT_EQ(f.cpus, (std::vector<int>{0, 2}));
  EXPECT_EQ(f.explained_by, sim.active(FindingKind::kVcpuHostBlocked).at(0).id);
  EXPECT_TRUE(contains(f.summary, "CPU0 (sh, pid 107) has waited 2.9 s for CPU2 to run do_sync_core")) << f.summary;
  EXPECT_TRUE(contains(f.summary, "CPU2 is idle with a pending wakeup and 2 queued calls")) << f.summary;
  EXPECT_TRUE(contains(f.summary, "its host thread 18002 (CPU 2/KVM) has been in D state for 3.3 s")) << f.summary;
  EXPECT_TRUE(contains(f.summary, "host stack: __refrigerator \u2190 get_signal")) << f.summary;
  EXPECT_TRUE(contains(f.summary, "Cause: host.")) << f.summary;
  // CPU0 spins with interrupts on: the guest will eventually report a soft lockup there.
  ASSERT_TRUE(f.predicted_guest_report_in.has_value());
  EXPECT_GT(*f.predicted_guest_report_in, 5s);
  EXPECT_TRUE(contains(f.summary, "the guest will report a soft lockup on CPU0 in ~")) << f.summary;
  // Evidence chain: the csd wait, CPU2's runqueue, the host thread with its stack, the root.
  ASSERT_GE(f.evidence.size(), 4u);
  ASSERT_TRUE(f.evidence[0].csd_wait.has_value());
  EXPECT_EQ(f.evidence[0].csd_wait->waiter_cpu, 0);
  EXPECT_EQ(f.evidence[0].csd_wait->target_cpu, 2);
  EXPECT_EQ(f.evidence[0].csd_wait->function, "do_sync_core");
  EXPECT_EQ(f.evidence[0].csd_wait->age, 2900ms);
  // The API's form keeps its keys (evidence_facts: the one place typed evidence becomes text).
  const auto api = evidence_facts(f.evidence[0]);
  EXPECT_EQ(api.at("waiter_cpu"), "0");
  EXPECT_EQ(api.at("target_cpu"), "2");
  EXPECT_EQ(api.at("function"), "do_sync_core");
  EXPECT_EQ(api.at("wait_ms"), "2900");
  EXPECT_EQ(evidence_facts(f.evidence.back()).at("roots"), "2");
  EXPECT_TRUE(contains(f.evidence[1].text, "call_single_queue: [SYNC do_sync_core from CPU0, TTWU sh/131 from CPU1]"))
      << f.evidence[1].text;
  EXPECT_EQ(f.evidence[2].host_stack, kFrozenStack);
  EXPECT_EQ(f.evidence.back().wait_roots->roots, (std::vector<int>{2}));

  // CPU2: idle with work it never runs.
  const Finding* idle = find(all, FindingKind::kGuestIdleWithPendingWork, 2);
  ASSERT_NE(idle, nullptr);
  EXPECT_EQ(idle->cause, Cause::kHostBlocked);
  EXPECT_EQ(*opened_at(sim, FindingKind::kGuestIdleWithPendingWork) - ipi_at, 600ms);
  EXPECT_TRUE(contains(idle->summary, "with a pending wakeup and 2 queued calls it never runs")) << idle->summary;
}

// Issue 12: onsets are host times that never precede the fault, also when the guest's clock
// lags the host's (~10% on TCG) and the watchdog's last touch came up to a period before it.
TEST_F(SeedCase1, NoOnsetPrecedesTheFreezeOnAGuestWhoseClockLags) {
  sim.guest_clock_rate = 0.9;
  sim.run(5s);
  freeze_vcpu2();
  sim.run(300ms);
  ipi_to_frozen_cpu2();
  sim.run(15s);
  ASSERT_TRUE(opened_at(sim, FindingKind::kGuestSoftlockup, 0));
  ASSERT_TRUE(opened_at(sim, FindingKind::kGuestSoftlockup, 2));
  for (const Finding& f : sim.engine.active_findings()) {
    EXPECT_GE(f.onset, freeze_at) << to_string(f.kind) << " cpus " << ::testing::PrintToString(f.cpus) << " onset "
                                  << (freeze_at - f.onset).count() << " ns before the freeze";
  }
  // CPU0's soft lockup starts with its wait on CPU2, not at its last touch before the freeze.
  const auto all = sim.engine.active_findings();
  const Finding* cpu0 = find(all, FindingKind::kGuestSoftlockup, 0);
  ASSERT_NE(cpu0, nullptr);
  EXPECT_EQ(cpu0->onset, sim.active(FindingKind::kGuestIpiStall).at(0).onset);
}

TEST_F(SeedCase1, SoftLockupPredictedAndEscalatedLongBeforeTheGuestWouldSay) {
  freeze_vcpu2();
  sim.run(300ms);
  ipi_to_frozen_cpu2();
  const uint64_t cpu0_touch = *sim.cpus[0].view.watchdog_touch_ts;
  sim.run(15s);

  // CPU0 spins with interrupts on: its hrtimer would report at touch + 2 x 5 + 1 guest seconds.
  ASSERT_TRUE(opened_at(sim, FindingKind::kGuestSoftlockupImminent, 0));
  ASSERT_TRUE(opened_at(sim, FindingKind::kGuestSoftlockup, 0));
  auto all = sim.engine.active_findings();
  const Finding* cpu0 = find(all, FindingKind::kGuestSoftlockup, 0);
  ASSERT_NE(cpu0, nullptr);
  EXPECT_EQ(cpu0->cause, Cause::kHostBlocked) << "it waits on CPU2, which the host does not run";
  EXPECT_EQ(cpu0->explained_by, sim.active(FindingKind::kGuestIpiStall).at(0).id);
  EXPECT_TRUE(contains(cpu0->summary, "it waits on CPU2 (see GUEST_IPI_STALL)")) << cpu0->summary;
  ASSERT_TRUE(cpu0->predicted_guest_report_in.has_value());
  EXPECT_EQ(*cpu0->predicted_guest_report_in, Duration::zero()) << "past touch + 11: due at its next watchdog tick";
  EXPECT_TRUE(contains(cpu0->summary, "the guest reports it at its next watchdog tick")) << cpu0->summary;
  EXPECT_GE(sim.guest.running_clock_ns, (cpu0_touch + 11) << 30);
  EXPECT_FALSE(find(all, FindingKind::kGuestSoftlockupImminent, 0)) << "escalated, not both";

  // CPU2 is frozen: it has a stale touch too, but it can never report it itself.
  const Finding* cpu2 = find(all, FindingKind::kGuestSoftlockup, 2);
  ASSERT_NE(cpu2, nullptr);
  EXPECT_FALSE(cpu2->predicted_guest_report_in.has_value());
  EXPECT_TRUE(contains(cpu2->summary, "the guest cannot report this itself")) << cpu2->summary;
  EXPECT_EQ(cpu2->cause, Cause::kHostBlocked);

  // The first finding came at 0.5 s; the guest's own report is due > 10 s after the freeze.
  const Timestamp first = *opened_at(sim, FindingKind::kVcpuHostBlocked);
  EXPECT_LE(first - freeze_at, 2s);
}

TEST_F(SeedCase1, ImminentPredictionUsesGuestSecondsAndGuestClock) {
  ipi_to_frozen_cpu2();  // only CPU0's touch goes stale here; the rest is irrelevant
  sim.clear_csd(0);
  sim.cpus[2].view.call_single_queue.clear();
  sim.cpus[2].view.ttwu_pending = false;
  const uint64_t touch = *sim.cpus[0].view.watchdog_touch_ts;
  Timestamp open{};
  std::optional<Duration> predicted;
  uint64_t clock_at_open = 0;
  for (int i = 0; i < 200 && !predicted; ++i)
    for (const auto& ev : sim.tick())
      if (ev.type == FindingEvent::Type::kOpened && ev.finding.kind == FindingKind::kGuestSoftlockupImminent) {
        open = sim.clock.now();
        predicted = ev.finding.predicted_guest_report_in;
        clock_at_open = sim.guest.running_clock_ns;
      }
  ASSERT_TRUE(predicted.has_value());
  // Opens at the first snapshot with touch age >= 50% of 2 x thresh = 5 guest seconds (2^30 ns)...
  EXPECT_GE(clock_at_open - (touch << 30), 5ull << 30);
  EXPECT_LT(clock_at_open - 100'000'000 - (touch << 30), 5ull << 30) << "not a tick later";
  // ...and predicts the report at touch + 10 + 1 guest seconds, by the guest's clock.
  EXPECT_EQ(*predicted, Duration(((touch + 11) << 30) - clock_at_open));
  (void)open;
}

TEST_F(SeedCase1, ThawResolvesEverything) {
  freeze_vcpu2();
  sim.run(300ms);
  ipi_to_frozen_cpu2();
  sim.run(3s);
  ASSERT_FALSE(sim.engine.active_findings().empty());
  // Thaw: CPU2 runs its queue, CPU0's wait completes, the watchdogs catch up.
  sim.vcpus[2].run(0.5);
  sim.cpus[2].timer_on = sim.cpus[2].touch_on = sim.cpus[0].touch_on = true;
  sim.cpus[2].view.call_single_queue.clear();
  sim.cpus[2].view.ttwu_pending = false;
  sim.cpus[0].view.nr_running = 1;
  sim.clear_csd(0);
  const Timestamp thaw = sim.clock.now();
  sim.run(2s);
  // The host block ends on run progress; the guest symptoms are held for the recurrence hold
  // (5 s) in case the stall comes back, then resolve as of when they ended.
  EXPECT_EQ(sim.count(FindingEvent::Type::kResolved, FindingKind::kVcpuHostBlocked), 1);
  EXPECT_EQ(sim.active(FindingKind::kGuestIpiStall).size(), 1u);
  sim.run(4s);
  EXPECT_TRUE(sim.engine.active_findings().empty());
  for (const auto kind : {FindingKind::kVcpuHostBlocked, FindingKind::kGuestIpiStall, FindingKind::kGuestIdleWithPendingWork})
    EXPECT_EQ(sim.count(FindingEvent::Type::kResolved, kind), 1) << to_string(kind);
  for (const auto& ev : sim.events)
    if (ev.type == FindingEvent::Type::kResolved) {
      ASSERT_TRUE(ev.finding.resolved_at.has_value());
      EXPECT_EQ(*ev.finding.resolved_at, thaw + kTick) << to_string(ev.finding.kind);
    }
}

// Seed cases 2 and 4: CPU1 spins with interrupts disabled; CPUs 0, 2, 3 wait on it through
// TLB-shootdown IPIs and are the ones the guest reports soft lockups on.
TEST(SeedCase4, RootIsTheCpuWithInterruptsOff) {
  Sim sim(4);
  for (int i = 0; i < 4; ++i) sim.run_task(i, "task" + std::to_string(i), 200 + i);
  sim.run_task(1, "irqoff_spin", 301);
  sim.run(5s);
  sim.vcpus[1].run(1.0);
  sim.cpus[1].timer_on = sim.cpus[1].touch_on = false;
  sim.run(200ms);
  const Timestamp wait_began = sim.clock.now();
  for (int w : {0, 2, 3}) {
    sim.csd_wait(w, 1, "flush_tlb_func");
    sim.cpus[w].touch_on = false;
  }
  sim.run(1s);

  auto ipi = sim.active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  EXPECT_EQ(*opened_at(sim, FindingKind::kGuestIpiStall) - wait_began, 600ms);
  EXPECT_EQ(ipi[0].cpus, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(ipi[0].evidence.back().wait_roots->roots, (std::vector<int>{1}));
  EXPECT_EQ(ipi[0].evidence.back().wait_roots->waiters, (std::vector<int>{0, 2, 3}));
  // Inferred before the hard evidence: the host runs it, yet it takes neither IPI nor timer.
  EXPECT_EQ(ipi[0].cause, Cause::kGuestIrqsOff);
  EXPECT_TRUE(contains(ipi[0].summary, "CPU2 and CPU3 also wait on it")) << ipi[0].summary;
  EXPECT_TRUE(contains(ipi[0].summary, "CPU1 runs irqoff_spin (pid 301)")) << ipi[0].summary;
  EXPECT_TRUE(contains(ipi[0].summary, "takes neither the IPI nor a timer interrupt")) << ipi[0].summary;
  EXPECT_TRUE(contains(ipi[0].summary, "Cause: guest (interrupts off).")) << ipi[0].summary;
  EXPECT_TRUE(sim.active(FindingKind::kGuestIrqsOff).empty()) << "too early to judge by hrtimer_interrupts";

  // GUEST_IRQS_OFF once hrtimer_interrupts has stood still for 2.5 periods (10 s at thresh 10).
  sim.run(15s);
  auto irqs = sim.active(FindingKind::kGuestIrqsOff);
  ASSERT_EQ(irqs.size(), 1u);
  EXPECT_EQ(irqs[0].cpus, std::vector<int>{1});
  EXPECT_EQ(irqs[0].opened_at - irqs[0].onset, 10s) << "not a tick before 2.5 watchdog periods";
  EXPECT_TRUE(contains(irqs[0].summary, "CPU1 (irqoff_spin, pid 301) runs with interrupts disabled")) << irqs[0].summary;
  ipi = sim.active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  EXPECT_EQ(ipi[0].explained_by, irqs[0].id);
  EXPECT_EQ(sim.count(FindingEvent::Type::kOpened, FindingKind::kGuestIpiStall), 1);

  // The guest reports soft lockups on the waiters; stallmon explains them by CPU1.
  auto all = sim.engine.active_findings();
  for (int w : {0, 2, 3}) {
    const Finding* s = find(all, FindingKind::kGuestSoftlockupImminent, w);
    if (s == nullptr) s = find(all, FindingKind::kGuestSoftlockup, w);
    ASSERT_NE(s, nullptr) << w;
    EXPECT_EQ(s->cause, Cause::kGuestIrqsOff);
    EXPECT_EQ(s->explained_by, ipi[0].id);
    EXPECT_TRUE(s->predicted_guest_report_in.has_value());
  }
  // CPU1, the culprit, can never report its own lockup.
  const Finding* c1 = find(all, FindingKind::kGuestSoftlockupImminent, 1);
  if (c1 == nullptr) c1 = find(all, FindingKind::kGuestSoftlockup, 1);
  ASSERT_NE(c1, nullptr);
  EXPECT_FALSE(c1->predicted_guest_report_in.has_value());
  EXPECT_TRUE(contains(c1->summary, "the guest cannot report this itself")) << c1->summary;
}

TEST(IrqsOff, HrtimerStandingStillWithoutHostRunTimeIsNotIrqsOff) {
  Sim sim(2);
  sim.run(2s);
  // The host barely runs it (heavily starved): its timer count stands still for that reason.
  sim.vcpus[1].run(0.05, 0.0);
  sim.cpus[1].timer_on = false;
  sim.run(30s);
  EXPECT_TRUE(sim.active(FindingKind::kGuestIrqsOff).empty());
}

// Seen after a warm reboot on a real guest: the new kernel, seconds into its boot, is already
// read while its lockup detector has not started the watchdog hrtimer (count 0 on every CPU).
TEST(IrqsOff, CountThatNeverStartedIsNotIrqsOff) {
  Sim sim(2);
  for (auto& c : sim.cpus) {
    c.view.hrtimer_interrupts = 0;
    c.view.watchdog_active = true;  // what the reader says of a watchdog-enabled kernel
    c.timer_on = false;
  }
  sim.vcpus[0].run(0.9);
  sim.run(30s);
  EXPECT_TRUE(sim.active(FindingKind::kGuestIrqsOff).empty());
  // Once the timer has fired, the same standing count with run time is interrupts off.
  sim.cpus[0].view.hrtimer_interrupts = 1;
  sim.run_task(0, "spin", 50);
  sim.run(30s);
  EXPECT_EQ(sim.active(FindingKind::kGuestIrqsOff).size(), 1u);
}

TEST(IrqsOff, WindowFollowsWatchdogThresh) {
  Sim sim(2);
  sim.guest.watchdog_thresh = 5;  // period 2 s: judge after 5 s
  sim.run(2s);
  sim.run_task(0, "spin", 50);
  sim.vcpus[0].run(0.9);
  sim.cpus[0].timer_on = false;
  sim.run(20s);
  auto irqs = sim.active(FindingKind::kGuestIrqsOff);
  ASSERT_EQ(irqs.size(), 1u);
  EXPECT_EQ(irqs[0].opened_at - irqs[0].onset, 5s);
}

TEST(IpiStall, CycleIsOneFindingNamingBothCpus) {
  Sim sim(4);
  for (int i = 0; i < 4; ++i) sim.run_task(i, "t" + std::to_string(i), 10 + i);
  sim.run(1s);
  sim.csd_wait(1, 2, "func_a");
  sim.csd_wait(2, 1, "func_b");
  sim.csd_wait(0, 1, "flush_tlb_func");
  sim.run(1s);
  auto ipi = sim.active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  EXPECT_EQ(ipi[0].cpus, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(ipi[0].evidence.back().wait_roots->roots, (std::vector<int>{1, 2}));
  EXPECT_TRUE(ipi[0].evidence.back().wait_roots->cycle);
  EXPECT_TRUE(contains(ipi[0].summary, "CPU1 and CPU2 wait on each other's cross-CPU calls (a cycle)")) << ipi[0].summary;
  EXPECT_TRUE(contains(ipi[0].summary, "CPU0 waits on them too")) << ipi[0].summary;
}

TEST(IpiStall, ChainNamesTheEndOfTheChainAndOneFindingPerRoot) {
  Sim sim(4);
  for (int i = 0; i < 4; ++i) sim.run_task(i, "t" + std::to_string(i), 10 + i);
  sim.run(1s);
  sim.csd_wait(3, 0, "f");
  sim.csd_wait(0, 2, "g");
  sim.run(1s);
  auto ipi = sim.active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  EXPECT_EQ(ipi[0].evidence.back().wait_roots->roots, (std::vector<int>{2}));
  EXPECT_EQ(ipi[0].evidence.back().wait_roots->waiters, (std::vector<int>{0, 3}));
  // A waiter joining later updates the same finding.
  const std::string id = ipi[0].id;
  sim.csd_wait(1, 2, "g");
  sim.run(1s);
  ipi = sim.active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  EXPECT_EQ(ipi[0].id, id);
  EXPECT_EQ(ipi[0].evidence.back().wait_roots->waiters, (std::vector<int>{0, 1, 3}));
  EXPECT_EQ(sim.count(FindingEvent::Type::kOpened, FindingKind::kGuestIpiStall), 1);
}

TEST(IpiStall, RootRunningWithTimerTicksIsGuestOther) {
  Sim sim(2);
  sim.run_task(0, "a", 1);
  sim.run_task(1, "busy", 2);
  sim.vcpus[1].run(1.0);
  sim.run(1s);
  sim.csd_wait(0, 1, "f");
  sim.run(5s);  // CPU1's timer still ticks (at 4 s periods) during the wait
  auto ipi = sim.active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  EXPECT_EQ(ipi[0].cause, Cause::kGuestOther);
}

TEST(IpiStall, StarvedRootIsHostStarved) {
  Sim sim(2);
  sim.run_task(0, "a", 1);
  sim.run(4s);
  sim.vcpus[1].run(0.02, 0.98);
  sim.run(5s);
  sim.csd_wait(0, 1, "f");
  sim.run(1s);
  auto ipi = sim.active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  EXPECT_EQ(ipi[0].cause, Cause::kHostStarved);
  EXPECT_EQ(ipi[0].explained_by, sim.active(FindingKind::kVcpuHostStarved).at(0).id);
}

TEST(IpiStall, ReusedCsdForAnotherFunctionRestartsTheAge) {
  Sim sim(2);
  sim.run(1s);
  sim.csd_wait(0, 1, "f");
  sim.run(400ms);
  sim.clear_csd(0);
  sim.csd_wait(0, 1, "g");  // a new call through the same per-target csd
  sim.run(400ms);
  EXPECT_TRUE(sim.active(FindingKind::kGuestIpiStall).empty());
}

TEST(IdleWithPendingWork, OldKernelRunnableTasksOnAnIdleCpu) {
  // 3.10: the woken tasks sit on CPU3's runqueue while it runs swapper/3.
  Sim sim(4);
  sim.run(1s);
  sim.vcpus[3].block(ThreadState::kDiskSleep, "__refrigerator", kFrozenStack);
  sim.cpus[3].view.nr_running = 2;
  const Timestamp began = sim.clock.now();
  sim.run(2s);
  ASSERT_TRUE(opened_at(sim, FindingKind::kGuestIdleWithPendingWork, 3));
  EXPECT_EQ(*opened_at(sim, FindingKind::kGuestIdleWithPendingWork, 3) - began, 600ms);
  auto f = sim.active(FindingKind::kGuestIdleWithPendingWork);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_TRUE(contains(f[0].summary, "CPU3 has been idle for 1.9 s with 2 runnable tasks it never runs")) << f[0].summary;
  EXPECT_EQ(f[0].cause, Cause::kHostBlocked);
}

TEST(IdleWithPendingWork, OneSnapshotIsNotEnough) {
  Sim sim(2);
  sim.run(1s);
  for (int i = 0; i < 20; ++i) {
    sim.cpus[1].view.ttwu_pending = (i % 2 == 0);  // a wakeup caught in flight, every other tick
    sim.tick();
  }
  EXPECT_TRUE(sim.events.empty());
}

TEST(IdleWithPendingWork, BaselineSnapshotsOneSecondApart) {
  Sim sim(2);
  sim.snapshot_always = false;
  sim.run(3s);
  sim.cpus[1].view.call_single_queue = {{0x1000, CallType::kAsync, "generic_exec_single", 0}};
  sim.run(3s);
  // Seen at a baseline snapshot; that makes the domain suspect, so the next tick snapshots
  // too, and 500 ms later it holds across >= 2 snapshots.
  EXPECT_EQ(sim.active(FindingKind::kGuestIdleWithPendingWork).size(), 1u);
  EXPECT_EQ(sim.active(FindingKind::kGuestIdleWithPendingWork)[0].cause, Cause::kUnknown);
}

TEST(Softlockup, WatchdogDisabledMeansNoPrediction) {
  Sim sim(1);
  sim.guest.watchdog_thresh = 0;
  sim.cpus[0].touch_on = false;
  sim.run(60s);
  EXPECT_TRUE(sim.events.empty());
}

TEST(Softlockup, ReportTimestampMovesThePrediction) {
  // 5.13+: after a report, the next comes 2 x thresh after watchdog_report_ts, not touch_ts.
  Sim sim(1);
  sim.run_task(0, "spin", 9);
  sim.run(1s);
  sim.cpus[0].touch_on = false;
  const uint64_t touch = *sim.cpus[0].view.watchdog_touch_ts;
  sim.run(25s);  // past 20 guest seconds: GUEST_SOFTLOCKUP
  const uint64_t now_s = sim.guest.running_clock_ns >> 30;
  sim.cpus[0].view.watchdog_report_ts = now_s;  // the guest just reported it
  sim.tick();
  auto f = sim.active(FindingKind::kGuestSoftlockup);
  ASSERT_EQ(f.size(), 1u);
  ASSERT_TRUE(f[0].predicted_guest_report_in.has_value());
  EXPECT_EQ(*f[0].predicted_guest_report_in, Duration(((now_s + 21) << 30) - sim.guest.running_clock_ns));
  EXPECT_TRUE(contains(f[0].summary, "CPU0 (spin, pid 9) is in a soft lockup")) << f[0].summary;
  EXPECT_TRUE(contains(f[0].summary, "Cause: guest.")) << f[0].summary;
  EXPECT_EQ(f[0].evidence[0].facts.at("touch_age_s"), std::to_string(now_s - touch));
  // Touched again: resolved.
  sim.cpus[0].touch_on = true;
  sim.run(5s);
  EXPECT_TRUE(sim.engine.active_findings().empty());
}

TEST(Panic, PanicCpuWithConsoleTail) {
  DiagnosisConfig cfg;
  cfg.printk_tail_lines = 3;
  Sim sim(2, cfg);
  sim.run(1s);
  sim.guest.panic_cpu = 1;
  sim.guest.printk_tail = {"a", "b", "sysrq: Trigger a crash", "Kernel panic - not syncing: sysrq triggered crash"};
  auto ev = sim.tick();
  ASSERT_EQ(ev.size(), 1u);
  const Finding& f = ev[0].finding;
  EXPECT_EQ(f.kind, FindingKind::kGuestPanic);
  EXPECT_EQ(f.severity, Severity::kCritical);
  EXPECT_EQ(f.cpus, std::vector<int>{1});
  EXPECT_TRUE(contains(f.summary, "panicked on CPU1: \"Kernel panic - not syncing: sysrq triggered crash\""))
      << f.summary;
  EXPECT_EQ(f.evidence.at(1).facts.at("lines"), "3");
  EXPECT_FALSE(contains(f.evidence.at(1).text, "\na\n"));
  sim.run(5s);
  EXPECT_EQ(sim.count(FindingEvent::Type::kOpened, FindingKind::kGuestPanic), 1);
  // A panicked guest is not worth 10 snapshots a second.
  sim.snapshot_always = false;
  const int before = sim.snapshots;
  sim.run(5s);
  EXPECT_LE(sim.snapshots - before, 6);
  // Reboot.
  sim.guest.panic_cpu = -1;
  sim.guest.running_clock_ns = 1ull << 30;
  sim.pending_events.push_back({DomainEventType::kRebooted, sim.clock.now(), ""});
  sim.tick();
  EXPECT_TRUE(sim.active(FindingKind::kGuestPanic).empty());
}

TEST(Panic, LibvirtCrashedEventStandsUntilRestart) {
  Sim sim(1);
  sim.run(1s);
  sim.pending_events.push_back({DomainEventType::kCrashed, sim.clock.now(), "panicked"});
  auto ev = sim.tick();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].finding.kind, FindingKind::kGuestPanic);
  EXPECT_TRUE(contains(ev[0].finding.summary, "libvirt reports the guest crashed (panicked)")) << ev[0].finding.summary;
  sim.run(3s);  // memory still shows panic_cpu -1 (e.g. a triple fault): the event stands
  EXPECT_EQ(sim.active(FindingKind::kGuestPanic).size(), 1u);
  sim.pending_events.push_back({DomainEventType::kStarted, sim.clock.now(), ""});
  sim.tick();
  EXPECT_TRUE(sim.active(FindingKind::kGuestPanic).empty());
}

// The acceptance case for false positives: 4 vCPUs all busy on a 2-core host for 5 minutes.
TEST(HealthyGuest, BusyFourVcpusOnTwoCoresForFiveMinutesProduceNothing) {
  Sim sim(4);
  sim.snapshot_always = false;  // the engine's own snapshot policy
  for (int i = 0; i < 4; ++i) sim.run_task(i, "stress", 500 + i);
  for (int i = 0; i < 3000; ++i) {
    for (std::size_t v = 0; v < sim.vcpus.size(); ++v) {
      const double jitter = ((i * 7 + static_cast<int>(v) * 13) % 31 - 15) / 100.0;
      sim.vcpus[v].run(0.5 - jitter, 0.5 + jitter);
    }
    // Brief csd waits that clear within one snapshot (TLB shootdowns), caught now and then.
    if (i % 70 == 0) {
      sim.csd_wait(i % 4, (i + 1) % 4, "flush_tlb_func");
      sim.snapshot_always = true;
    }
    // A wakeup in flight to an idle CPU, caught in one snapshot.
    if (i % 130 == 0) {
      sim.cpus[3].view.idle = true;
      sim.cpus[3].view.ttwu_pending = true;
    }
    sim.tick();
    sim.snapshot_always = false;
    for (int c = 0; c < 4; ++c) sim.clear_csd(c);
    sim.run_task(3, "stress", 503);
    sim.cpus[3].view.ttwu_pending = false;
  }
  EXPECT_TRUE(sim.events.empty()) << sim.events.size() << " events, first: " << sim.events[0].finding.summary;
  EXPECT_TRUE(sim.engine.active_findings().empty());
  // Mostly baseline snapshots (1 Hz), with a short burst after each brief wait.
  EXPECT_EQ(sim.ticks, 3000);
  EXPECT_GE(sim.snapshots, 300);
  EXPECT_LT(sim.snapshots, 3000 / 4);
  std::printf("healthy: %d ticks, %d snapshots\n", sim.ticks, sim.snapshots);
}

}  // namespace
}  // namespace stallmon::diagnosis::testing

namespace stallmon::diagnosis::testing {
namespace {

TEST(HostileGuest, GuestStringsReachSummariesAsValidText) {
  Sim sim(2);
  sim.run_task(0, std::string("sh\xff\x01", 4), 107);
  sim.run_task(1, "ok\xc3\xa9", 108);  // "oké": valid UTF-8 stays
  sim.run(1s);
  sim.csd_wait(0, 1, std::string("do_\xc0\xafsync", 10));  // an overlong '/'
  sim.cpus[1].view.cfd_requests.push_back({-5, true, "bad_target", 0, 0});
  sim.cpus[1].view.cfd_requests.push_back({1, true, "self", 0, 0});
  sim.run(1s);
  auto ipi = sim.active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  EXPECT_TRUE(contains(ipi[0].summary, "CPU0 (sh??, pid 107) has waited")) << ipi[0].summary;
  EXPECT_TRUE(contains(ipi[0].summary, "to run do_??sync")) << ipi[0].summary;
  EXPECT_TRUE(contains(ipi[0].summary, "CPU1 runs ok\xc3\xa9 (pid 108)")) << ipi[0].summary;
  EXPECT_EQ(ipi[0].cpus, (std::vector<int>{0, 1})) << "negative and self targets are ignored";
}

}  // namespace
}  // namespace stallmon::diagnosis::testing

namespace stallmon::diagnosis::testing {
namespace {

TEST(WatchdogGuards, CpuWithoutWatchdogIsNeverJudgedByIt) {
  // nohz_full / nowatchdog: CPU1's count and touch never move, though it is busy and healthy.
  Sim sim(2);
  sim.run_task(1, "rt_app", 77);
  sim.vcpus[1].run(1.0);
  sim.cpus[1].timer_on = sim.cpus[1].touch_on = false;
  sim.run(120s);
  EXPECT_TRUE(sim.events.empty()) << sim.events.front().finding.summary;
}

TEST(WatchdogGuards, ReaderCanSayTheWatchdogRunsFromTheStart) {
  // stallmon started on an already stuck guest: nothing moves, but the reader knows the
  // watchdog runs on CPU0 (in watchdog_cpumask), so the stale touch counts.
  Sim sim(1);
  sim.run_task(0, "spin", 5);
  sim.vcpus[0].run(1.0);
  sim.cpus[0].timer_on = sim.cpus[0].touch_on = false;
  sim.cpus[0].view.watchdog_active = true;
  sim.cpus[0].view.watchdog_touch_ts = (sim.guest.running_clock_ns >> 30) - 12;
  sim.run(1s);
  EXPECT_EQ(sim.active(FindingKind::kGuestSoftlockupImminent).size(), 1u);
  sim.run(15s);
  EXPECT_EQ(sim.active(FindingKind::kGuestIrqsOff).size(), 1u);
}

TEST(WatchdogGuards, SmallThreshDoesNotTurnTimestampGranularityIntoAWarning) {
  // watchdog_thresh 1: period 0.8 s, limit 2 s; a healthy touch is up to ~1.8 s old.
  Sim sim(2);
  sim.guest.watchdog_thresh = 1;
  for (int i = 0; i < 2; ++i) sim.run_task(i, "busy", 40 + i);
  sim.run(120s);
  EXPECT_TRUE(sim.events.empty()) << sim.events.front().finding.summary;
}

}  // namespace
}  // namespace stallmon::diagnosis::testing

namespace stallmon::diagnosis::testing {
namespace {

TEST(IpiStall, RootFrozenJustAfterTheIpiIsHostNotGuest) {
  // vCPU 1 is busy; CPU0's IPI to it is caught pending, and the host freezes vCPU 1 a moment
  // later. The IPI threshold is reached before the host-block threshold.
  Sim sim(2);
  sim.run_task(0, "sh", 107);
  sim.run_task(1, "busy", 108);
  sim.vcpus[1].run(1.0);
  sim.run(5s);
  sim.csd_wait(0, 1, "do_sync_core");
  sim.tick();
  sim.tick();
  sim.vcpus[1].block(ThreadState::kDiskSleep, "__refrigerator", {"__refrigerator"});
  sim.cpus[1].timer_on = false;
  sim.run(1s);
  for (const auto& ev : sim.events)
    if (ev.finding.kind == FindingKind::kGuestIpiStall) {
      EXPECT_EQ(ev.finding.cause, Cause::kHostBlocked) << to_string(ev.type) << ": " << ev.finding.summary;
    }
  ASSERT_EQ(sim.active(FindingKind::kGuestIpiStall).size(), 1u);
  EXPECT_EQ(sim.count(FindingEvent::Type::kOpened, FindingKind::kVcpuHostBlocked), 1);
}

}  // namespace
}  // namespace stallmon::diagnosis::testing
