// SPDX-License-Identifier: Apache-2.0
// Host-side rules with simulated time: VCPU_HOST_BLOCKED, VCPU_HOST_STARVED, VM_WIDE_STALL,
// HOST_MONITOR_UNRESPONSIVE.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "sim.h"

namespace stallmon::diagnosis::testing {
namespace {

const std::vector<std::string> kFrozenStack = {"__refrigerator", "get_signal", "arch_do_signal_or_restart",
                                               "exit_to_user_mode_prepare", "syscall_exit_to_user_mode"};

TEST(HostBlocked, OpensAtThresholdNotBefore) {
  Sim sim(4);
  sim.run(2s);
  // vCPU 2 is frozen between two ticks: the last tick that saw it run is the next one's
  // predecessor, so no progress is counted from the tick before the freeze.
  sim.vcpus[2].block(ThreadState::kDiskSleep, "__refrigerator", kFrozenStack);
  const Timestamp last_progress = sim.clock.now();
  Duration opened_after = Duration::max();
  for (int i = 0; i < 20 && opened_after == Duration::max(); ++i)
    for (const auto& ev : sim.tick())
      if (ev.type == FindingEvent::Type::kOpened && ev.finding.kind == FindingKind::kVcpuHostBlocked)
        opened_after = sim.clock.now() - last_progress;
  EXPECT_EQ(opened_after, 500ms) << "opens at the first tick with 500 ms of no progress";

  auto f = sim.active(FindingKind::kVcpuHostBlocked);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].cpus, std::vector<int>{2});
  EXPECT_EQ(f[0].cause, Cause::kHostBlocked);
  EXPECT_EQ(f[0].severity, Severity::kCritical);
  EXPECT_EQ(f[0].onset, last_progress);
  EXPECT_TRUE(contains(f[0].summary, "vCPU 2's host thread 18002 (CPU 2/KVM) has been in D state for 500 ms"))
      << f[0].summary;
  EXPECT_TRUE(contains(f[0].summary, "host stack: __refrigerator \u2190 get_signal")) << f[0].summary;
  EXPECT_TRUE(contains(f[0].summary, "Cause: host.")) << f[0].summary;
  ASSERT_FALSE(f[0].evidence.empty());
  EXPECT_EQ(f[0].evidence[0].host_stack, kFrozenStack);
  EXPECT_EQ(f[0].evidence[0].facts.at("state"), "D");
  EXPECT_EQ(f[0].evidence[0].facts.at("wchan"), "__refrigerator");
  EXPECT_EQ(f[0].evidence[0].vcpu, 2);
  EXPECT_EQ(evidence_facts(f[0].evidence[0]).at("vcpu"), "2");
  EXPECT_EQ(evidence_facts(f[0].evidence[0]).at("no_run_progress_ms"), "500");
}

TEST(HostBlocked, OneFindingUpdatedNotRepeatedThenResolved) {
  Sim sim(2);
  sim.run(1s);
  sim.vcpus[1].block(ThreadState::kStopped, "do_signal_stop", {"do_signal_stop", "get_signal"});
  ASSERT_NE(sim.run_until_open(FindingKind::kVcpuHostBlocked), Duration::max());
  const std::string id = sim.active(FindingKind::kVcpuHostBlocked).at(0).id;
  sim.run(10s);
  EXPECT_EQ(sim.count(FindingEvent::Type::kOpened, FindingKind::kVcpuHostBlocked), 1);
  // Only ages change: at most one UPDATED per update_min_interval (1 s), not one per tick.
  const int updates = sim.count(FindingEvent::Type::kUpdated, FindingKind::kVcpuHostBlocked);
  EXPECT_GE(updates, 9);
  EXPECT_LE(updates, 11);
  auto f = sim.active(FindingKind::kVcpuHostBlocked);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].id, id);
  EXPECT_TRUE(contains(f[0].summary, "T state (stopped)")) << f[0].summary;
  EXPECT_GE(f[0].duration, 10s);

  sim.vcpus[1].run(0.5);
  auto ev = sim.tick();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].type, FindingEvent::Type::kResolved);
  EXPECT_EQ(ev[0].finding.id, id);
  EXPECT_FALSE(ev[0].finding.active);
  ASSERT_TRUE(ev[0].finding.resolved_at.has_value());
  EXPECT_EQ(*ev[0].finding.resolved_at, sim.clock.now());
  EXPECT_TRUE(sim.active(FindingKind::kVcpuHostBlocked).empty());
  EXPECT_EQ(sim.engine.resolved_history_size(), 1u);
}

TEST(HostBlocked, ShortDiskSleepsWithRunProgressAreHealthy) {
  Sim sim(2);
  // A vCPU doing synchronous I/O: caught in D at every sample, but it runs in between.
  sim.vcpus[0].view.state = ThreadState::kDiskSleep;
  sim.vcpus[0].view.wchan = "io_schedule";
  sim.vcpus[0].run_rate = 0.3;
  sim.run(30s);
  EXPECT_TRUE(sim.events.empty());
}

TEST(HostBlocked, SamplerInStateTimeDatesAStallOlderThanStallmon) {
  Sim sim(2);
  sim.vcpus[1].block(ThreadState::kTracingStop, "ptrace_stop", {"ptrace_stop", "get_signal"});
  sim.vcpus[1].view.in_state_for = 7s;
  auto ev = sim.tick();  // the very first observation of this domain
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].finding.kind, FindingKind::kVcpuHostBlocked);
  EXPECT_EQ(ev[0].finding.onset, sim.clock.now() - 7s);
  EXPECT_TRUE(contains(ev[0].finding.summary, "t state (ptrace stop) for 7.0 s")) << ev[0].finding.summary;
}

// --- VCPU_HOST_STARVED -------------------------------------------------------------------

TEST(HostStarved, HealthyBusyGuestAtHalfStealIsNotStarved) {
  // 4 busy vCPUs on a 2-core host: each runs ~50% and waits ~50%. Jitter of +-15 points.
  Sim sim(4);
  for (int i = 0; i < 3000; ++i) {  // 5 minutes
    for (std::size_t v = 0; v < sim.vcpus.size(); ++v) {
      const double jitter = ((i * 7 + static_cast<int>(v) * 13) % 31 - 15) / 100.0;
      sim.vcpus[v].run(0.5 - jitter, 0.5 + jitter);
    }
    sim.tick();
  }
  EXPECT_TRUE(sim.events.empty());
}

TEST(HostStarved, QuotaThrottledVcpuOpensAfterWindowAndSustain) {
  Sim sim(2);
  sim.run(5s);
  // cpu.cfs_quota_us 5000 / period 100000 on vCPU 1's cgroup: runs 5%, waits 95%.
  sim.vcpus[1].run(0.05, 0.95);
  sim.vcpus[1].throttled_cgroup = true;
  sim.vcpus[1].throttle_rate = 0.95;
  const Duration took = sim.run_until_open(FindingKind::kVcpuHostStarved);
  // The 3 s window first reaches 80% after 2.6 s of throttling (26 of its 30 ticks at 95%:
  // the older samples dilute it); then it must hold for starved_sustain (2 s).
  EXPECT_EQ(took, 4600ms);
  auto f = sim.active(FindingKind::kVcpuHostStarved);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].cpus, std::vector<int>{1});
  EXPECT_EQ(f[0].cause, Cause::kHostStarved);
  EXPECT_EQ(f[0].severity, Severity::kWarning);
  EXPECT_TRUE(contains(f[0].summary, "is runnable but was denied the CPU 95% of the last 3.0 s")) << f[0].summary;
  EXPECT_TRUE(contains(f[0].summary, "cgroup was throttled")) << f[0].summary;
  EXPECT_TRUE(sim.active(FindingKind::kVcpuHostBlocked).empty());

  sim.vcpus[1].run(0.5, 0.1);
  sim.vcpus[1].throttle_rate = 0;
  // Hysteresis: the window falls below starved_clear_fraction (60%) after 1.3 s (13 of its 30
  // ticks at 10%), then must stay there for starved_clear_hold (5 s).
  EXPECT_EQ(sim.run_until(FindingEvent::Type::kResolved, FindingKind::kVcpuHostStarved), 6300ms);
  sim.run(5s);
  EXPECT_TRUE(sim.active(FindingKind::kVcpuHostStarved).empty());
  EXPECT_EQ(sim.count(FindingEvent::Type::kResolved, FindingKind::kVcpuHostStarved), 1);
  EXPECT_EQ(sim.count(FindingEvent::Type::kOpened, FindingKind::kVcpuHostStarved), 1);
}

// The flap seen on real guests: steal hovering around the 0.8 threshold on a loaded host.
int starved_opened(const Sim& sim) { return sim.count(FindingEvent::Type::kOpened, FindingKind::kVcpuHostStarved); }
int starved_resolved(const Sim& sim) {
  return sim.count(FindingEvent::Type::kResolved, FindingKind::kVcpuHostStarved);
}

// After 5 s of health, vCPU 1 is denied 95% of the time until VCPU_HOST_STARVED opens (4.6 s,
// as in QuotaThrottledVcpuOpensAfterWindowAndSustain); returns the time it took.
Duration starve_vcpu1(Sim& sim) {
  sim.run(5s);
  sim.vcpus[1].run(0.05, 0.95);
  return sim.run_until_open(FindingKind::kVcpuHostStarved);
}

// vCPU 1's steal alternates 85% / 75% every second, for `d`.
void fast_oscillation(Sim& sim, Duration d) {
  for (int i = 0; i < d / kTick; ++i) {
    const bool high = (i / 10) % 2 == 0;
    sim.vcpus[1].run(high ? 0.15 : 0.25, high ? 0.85 : 0.75);
    sim.tick();
  }
}

TEST(HostStarved, StealOscillatingAroundTheThresholdOpensAtMostOnceAndNeverFlaps) {
  Sim sim(2);
  sim.run(5s);
  fast_oscillation(sim, 5min);
  EXPECT_LE(starved_opened(sim), 1);
  EXPECT_EQ(starved_resolved(sim), 0);
}

TEST(HostStarved, OpenFindingDoesNotResolveWhileTheSignalOscillatesAboveTheClearLevel) {
  Sim sim(2);
  ASSERT_EQ(starve_vcpu1(sim), 4600ms);
  const std::string id = sim.active(FindingKind::kVcpuHostStarved).at(0).id;
  fast_oscillation(sim, 5min);
  auto f = sim.active(FindingKind::kVcpuHostStarved);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].id, id);
  EXPECT_EQ(starved_opened(sim), 1);
  EXPECT_EQ(starved_resolved(sim), 0);
  // The summary tells the current fraction, not the one it opened with.
  EXPECT_TRUE(contains(f[0].summary, "was denied the CPU 78% of the last 3.0 s")) << f[0].summary;
}

// 90% steal for 6 s, 70% for 6 s, for 5 simulated minutes on vCPU 0.
void slow_oscillation(Sim& sim, int i) {
  const bool high = (i / 60) % 2 == 0;
  sim.vcpus[0].run(high ? 0.1 : 0.3, high ? 0.9 : 0.7);
  sim.tick();
}

TEST(HostStarved, SlowOscillationFlapsWithoutHysteresis) {
  // The control for the test below: each 90% stretch lifts the window over 80% for > 2 s.
  DiagnosisConfig cfg;
  cfg.starved_clear_fraction = cfg.starved_fraction;
  cfg.starved_clear_hold = 0s;
  Sim sim(2, cfg);
  sim.run(5s);
  for (int i = 0; i < 3000; ++i) slow_oscillation(sim, i);
  EXPECT_GE(starved_opened(sim), 20);
  EXPECT_GE(starved_resolved(sim), 20);
}

TEST(HostStarved, SlowOscillationStaysOneFindingWhileAboveTheClearLevel) {
  // The same signal with the default hysteresis: 70% is above the clear level (60%).
  Sim sim(2);
  sim.run(5s);
  std::string id;
  for (int i = 0; i < 3000; ++i) {
    slow_oscillation(sim, i);
    auto f = sim.active(FindingKind::kVcpuHostStarved);
    if (id.empty() && !f.empty()) id = f[0].id;
    if (!id.empty()) {
      ASSERT_EQ(f.size(), 1u) << "resolved at tick " << i << " while the steal stayed >= 70%";
      ASSERT_EQ(f[0].id, id);
    }
  }
  EXPECT_FALSE(id.empty());
  EXPECT_EQ(starved_opened(sim), 1);
  EXPECT_EQ(starved_resolved(sim), 0);
  // Only ages change while it stands: UPDATED at most once per update_min_interval.
  EXPECT_LE(sim.count(FindingEvent::Type::kUpdated, FindingKind::kVcpuHostStarved), 300);
}

TEST(HostStarved, CleanDropBelowTheClearLevelResolvesExactlyOnceAfterTheHold) {
  Sim sim(2);
  ASSERT_EQ(starve_vcpu1(sim), 4600ms);
  sim.run(10s);
  const std::string id = sim.active(FindingKind::kVcpuHostStarved).at(0).id;

  // A dip below the clear level shorter than the hold does not resolve it.
  sim.vcpus[1].run(0.7, 0.3);
  sim.run(4s);  // the window is below 60% from 1.7 s on: 2.3 s of the 5 s hold
  sim.vcpus[1].run(0.05, 0.95);
  sim.run(10s);
  ASSERT_EQ(sim.active(FindingKind::kVcpuHostStarved).size(), 1u);
  EXPECT_EQ(sim.active(FindingKind::kVcpuHostStarved)[0].id, id);

  // The host frees up for good: below 60% after 1.7 s (17 of 30 ticks at 30%), + the 5 s hold.
  sim.vcpus[1].run(0.7, 0.3);
  EXPECT_EQ(sim.run_until(FindingEvent::Type::kResolved, FindingKind::kVcpuHostStarved), 6700ms);
  sim.run(60s);
  EXPECT_TRUE(sim.active(FindingKind::kVcpuHostStarved).empty());
  EXPECT_EQ(starved_opened(sim), 1);
  EXPECT_EQ(starved_resolved(sim), 1);

  // A later recurrence opens anew (a new id) with the same sustain as the first time.
  sim.vcpus[1].run(0.05, 0.95);
  ASSERT_NE(sim.run_until_open(FindingKind::kVcpuHostStarved), Duration::max());
  EXPECT_NE(sim.active(FindingKind::kVcpuHostStarved).at(0).id, id);
}

TEST(HostStarved, ClearSettingsAreConfigurable) {
  DiagnosisConfig cfg;
  cfg.starved_clear_fraction = 0.8;  // no hysteresis band...
  cfg.starved_clear_hold = 0s;       // ...and no hold: the pre-hysteresis behaviour
  Sim sim(2, cfg);
  ASSERT_EQ(starve_vcpu1(sim), 4600ms);
  sim.vcpus[1].run(0.7, 0.3);
  // Resolves at the first tick the window is below 80%: 7 of its 30 ticks at 30%.
  EXPECT_EQ(sim.run_until(FindingEvent::Type::kResolved, FindingKind::kVcpuHostStarved), 700ms);
}

TEST(HostStarved, BlockedVcpuEndsStarvationAtOnce) {
  Sim sim(2);
  ASSERT_EQ(starve_vcpu1(sim), 4600ms);
  sim.vcpus[1].block(ThreadState::kDiskSleep, "__refrigerator", kFrozenStack);
  ASSERT_EQ(sim.run_until_open(FindingKind::kVcpuHostBlocked), 500ms);
  EXPECT_TRUE(sim.active(FindingKind::kVcpuHostStarved).empty()) << "VCPU_HOST_BLOCKED takes over";
}

TEST(HostStarved, BriefStealSpikeIsNotStarvation) {
  Sim sim(2);
  sim.run(5s);
  sim.vcpus[0].run(0.0, 1.0);  // 1.5 s of full starvation
  sim.run(1500ms);
  sim.vcpus[0].run(0.5, 0.5);
  sim.run(20s);
  EXPECT_TRUE(sim.events.empty());
}

// --- VM_WIDE_STALL vs a single VCPU_HOST_BLOCKED -----------------------------------------

TEST(VmWideStall, SingleFrozenVcpuIsOnlyHostBlocked) {
  Sim sim(4);
  sim.run(2s);
  sim.vcpus[2].block(ThreadState::kDiskSleep, "__refrigerator", kFrozenStack);
  sim.run(3s);
  EXPECT_EQ(sim.active(FindingKind::kVcpuHostBlocked).size(), 1u);
  EXPECT_TRUE(sim.active(FindingKind::kVmWideStall).empty());
}

TEST(VmWideStall, EveryoneBehindOneFrozenThreadIsOneVmWideFinding) {
  Sim sim(4);
  sim.run(2s);
  // vCPU 2 frozen while holding QEMU's big lock: the main loop and the other vCPUs queue on it.
  sim.vcpus[2].block(ThreadState::kDiskSleep, "__refrigerator", kFrozenStack);
  for (int v : {0, 1, 3}) sim.vcpus[v].futex_wait();
  sim.main.futex_wait();
  sim.monitor.responsive = false;
  sim.monitor.unresponsive_since = sim.clock.now();
  sim.monitor.pending_command = "query-status";
  ASSERT_EQ(sim.run_until_open(FindingKind::kVmWideStall), 500ms);
  sim.run(3s);

  auto vm = sim.active(FindingKind::kVmWideStall);
  ASSERT_EQ(vm.size(), 1u);
  EXPECT_EQ(vm[0].cpus, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(vm[0].cause, Cause::kHostBlocked);
  EXPECT_TRUE(contains(vm[0].summary, "host thread 18002 (CPU 2/KVM) has been in D state")) << vm[0].summary;
  EXPECT_TRUE(contains(vm[0].summary, "QEMU's big lock")) << vm[0].summary;
  EXPECT_TRUE(contains(vm[0].summary, "cannot run or report anything")) << vm[0].summary;
  EXPECT_EQ(vm[0].evidence.at(0).host_stack, kFrozenStack);
  // It supersedes the per-vCPU view: the frozen vCPU's own finding is explained by it, and the
  // vCPUs waiting on the lock get none of their own.
  auto blocked = sim.active(FindingKind::kVcpuHostBlocked);
  ASSERT_EQ(blocked.size(), 1u);
  EXPECT_EQ(blocked[0].cpus, std::vector<int>{2});
  EXPECT_EQ(blocked[0].explained_by, vm[0].id);
  EXPECT_TRUE(contains(blocked[0].summary, "the whole VM is stopped behind it")) << blocked[0].summary;
  // The monitor hangs because of it.
  auto mon = sim.active(FindingKind::kHostMonitorUnresponsive);
  ASSERT_EQ(mon.size(), 1u);
  EXPECT_EQ(mon[0].explained_by, vm[0].id);
  EXPECT_EQ(mon[0].cause, Cause::kHostBlocked);
  // Guest findings during the stall name the VM-wide stall as their cause.
  for (const auto& f : sim.engine.active_findings())
    if (f.kind == FindingKind::kGuestSoftlockupImminent || f.kind == FindingKind::kGuestSoftlockup) {
      EXPECT_EQ(f.explained_by, vm[0].id);
      EXPECT_FALSE(f.predicted_guest_report_in.has_value());
    }

  // Thawed: everything resumes.
  sim.vcpus[2].run(0.5);
  for (int v : {0, 1, 3}) sim.vcpus[v].run(0.5);
  sim.main.run(0.05);
  sim.monitor = MonitorStatus{};
  sim.run(1s);
  EXPECT_TRUE(sim.engine.active_findings().empty());
}

TEST(VmWideStall, IdleTcgGuestWithHaltedVcpusIsNotAStall) {
  // Halted TCG vCPUs wait on a futex with no progress; the main loop sits in ppoll.
  Sim sim(4);
  for (auto& v : sim.vcpus) v.futex_wait();
  sim.run(30s);
  EXPECT_TRUE(sim.events.empty());
}

TEST(VmWideStall, BlockedNonVcpuThreadWithVcpusBehindIt) {
  // Not every vCPU waits (vCPU 0 still runs guest code): per-vCPU view, naming the qemu thread.
  Sim sim(3);
  SimThread worker;
  worker.view.tid = 18100;
  worker.view.name = "worker";
  worker.run(0.1);
  sim.others.push_back(worker);
  sim.run(1s);
  sim.others[0].block(ThreadState::kDiskSleep, "blk_mq_get_tag", {"blk_mq_get_tag", "__blk_mq_alloc_requests"});
  sim.vcpus[1].futex_wait();
  sim.vcpus[2].futex_wait();
  sim.main.futex_wait();
  sim.run(2s);
  EXPECT_TRUE(sim.active(FindingKind::kVmWideStall).empty());
  auto f = sim.active(FindingKind::kVcpuHostBlocked);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].cpus, (std::vector<int>{1, 2}));
  EXPECT_TRUE(contains(f[0].summary, "qemu host thread 18100 (worker) has been in D state")) << f[0].summary;
  EXPECT_TRUE(contains(f[0].summary, "CPU1 and CPU2's threads and the main loop wait on a futex behind it"))
      << f[0].summary;
}

TEST(VmWideStall, WholeQemuStoppedIsVmWide) {
  Sim sim(2);
  sim.run(1s);
  for (auto& v : sim.vcpus) v.block(ThreadState::kStopped, "do_signal_stop", {"do_signal_stop"});
  sim.main.block(ThreadState::kStopped, "do_signal_stop", {"do_signal_stop"});
  sim.run(1s);
  auto vm = sim.active(FindingKind::kVmWideStall);
  ASSERT_EQ(vm.size(), 1u);
  EXPECT_TRUE(contains(vm[0].summary, "every vCPU thread and the main loop are blocked")) << vm[0].summary;
  for (const auto& f : sim.active(FindingKind::kVcpuHostBlocked)) EXPECT_EQ(f.explained_by, vm[0].id);
}

// Seen in the scenario matrix (SIGSTOP of qemu, a freeze inside QEMU's big lock): while the VM
// is stopped its memory stands still, so no soft lockup shows; once it runs again, the guest clock
// jumps by the stop and every watchdog touch is stale until the next one. Those soft lockups are
// symptoms of the stop (its incident), not roots of their own.
TEST(VmWideStall, SoftLockupsSeenOnceTheVmRunsAgainAreItsSymptoms) {
  Sim sim(4);
  sim.guest.watchdog_thresh = 5;
  sim.run(3s);
  for (auto& v : sim.vcpus) v.block(ThreadState::kStopped, "do_signal_stop", {"do_signal_stop"});
  sim.main.block(ThreadState::kStopped, "do_signal_stop", {"do_signal_stop"});
  for (auto& c : sim.cpus) c.timer_on = false;
  sim.guest_clock_rate = 0;  // the snapshots read memory nobody writes
  sim.run(15s);
  auto vm = sim.active(FindingKind::kVmWideStall);
  ASSERT_EQ(vm.size(), 1u);
  const size_t from = sim.events.size();
  for (auto& v : sim.vcpus) v.run(0.5);
  sim.main.run(0.05);
  sim.main.view.state = ThreadState::kSleeping;
  sim.main.view.wchan = "do_sys_poll";
  sim.guest.running_clock_ns += 15'000'000'000ull;  // TCG's guest clock follows the host's
  sim.guest_clock_rate = 1;
  for (auto& c : sim.cpus) c.timer_on = true;
  sim.run(5s);

  size_t lockups = 0;
  for (size_t i = from; i < sim.events.size(); ++i) {
    const Finding& f = sim.events[i].finding;
    if (f.kind != FindingKind::kGuestSoftlockup && f.kind != FindingKind::kGuestSoftlockupImminent) continue;
    ++lockups;
    EXPECT_EQ(f.incident_id, vm[0].id) << to_string(f.kind) << " on CPU" << f.cpus.at(0) << ": " << f.summary;
    EXPECT_EQ(f.cause, Cause::kHostBlocked) << f.summary;
    EXPECT_TRUE(contains(f.summary, "it was stopped by the host until")) << f.summary;
    EXPECT_GE(f.onset, vm[0].onset) << "a symptom never starts before its root";
  }
  EXPECT_GT(lockups, 0u) << "the stale touches after the resume raised no soft lockup: the test shows nothing";
  for (const auto& ev : sim.events) {
    if (ev.type == FindingEvent::Type::kOpened && ev.finding.is_incident_root()) {
      EXPECT_EQ(ev.finding.kind, FindingKind::kVmWideStall) << "another root: " << to_string(ev.finding.kind);
    }
  }
  // Once the watchdogs have touched again, nothing is left.
  sim.run(5s);
  EXPECT_TRUE(sim.engine.active_findings().empty());
}

TEST(VmWideStall, WaitersPilingUpLaterDoNotFlapTheBlockedFinding) {
  Sim sim(3);
  sim.run(1s);
  sim.vcpus[0].block(ThreadState::kDiskSleep, "__refrigerator", kFrozenStack);
  sim.run(600ms);
  ASSERT_EQ(sim.active(FindingKind::kVcpuHostBlocked).size(), 1u);
  const std::string id = sim.active(FindingKind::kVcpuHostBlocked)[0].id;
  sim.vcpus[1].futex_wait();
  sim.vcpus[2].futex_wait();
  sim.main.futex_wait();
  sim.run(2s);
  ASSERT_EQ(sim.active(FindingKind::kVmWideStall).size(), 1u);
  auto blocked = sim.active(FindingKind::kVcpuHostBlocked);
  ASSERT_EQ(blocked.size(), 1u);
  EXPECT_EQ(blocked[0].id, id);
  EXPECT_EQ(blocked[0].explained_by, sim.active(FindingKind::kVmWideStall)[0].id);
  EXPECT_EQ(sim.count(FindingEvent::Type::kResolved, FindingKind::kVcpuHostBlocked), 0);
}

// --- HOST_MONITOR_UNRESPONSIVE -----------------------------------------------------------

TEST(MonitorUnresponsive, OpensOnMissedDeadlineAndResolves) {
  Sim sim(1);
  sim.run(1s);
  sim.monitor.responsive = false;
  sim.monitor.unresponsive_since = sim.clock.now() - 3s;
  sim.monitor.pending_command = "query-cpus-fast";
  auto ev = sim.tick();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].type, FindingEvent::Type::kOpened);
  EXPECT_EQ(ev[0].finding.kind, FindingKind::kHostMonitorUnresponsive);
  EXPECT_EQ(ev[0].finding.onset, sim.clock.now() - 3100ms);
  EXPECT_EQ(ev[0].finding.cause, Cause::kUnknown);
  EXPECT_TRUE(contains(ev[0].finding.summary, "has not answered query-cpus-fast for 3.1 s")) << ev[0].finding.summary;
  sim.monitor = MonitorStatus{};
  ev = sim.tick();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].type, FindingEvent::Type::kResolved);
}

}  // namespace
}  // namespace stallmon::diagnosis::testing
