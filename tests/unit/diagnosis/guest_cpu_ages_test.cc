// SPDX-License-Identifier: Apache-2.0
// DiagnosisEngine::guest_cpu_ages: the per-CPU csd wait age and soft-lockup touch age the
// Prometheus exporter reads, with simulated time.
#include <gtest/gtest.h>

#include "sim.h"

namespace stallmon::diagnosis::testing {
namespace {

const GuestCpuAges& cpu_ages(const std::vector<GuestCpuAges>& all, int cpu) {
  for (const auto& a : all)
    if (a.cpu == cpu) return a;
  ADD_FAILURE() << "no ages for CPU" << cpu;
  static const GuestCpuAges none;
  return none;
}

TEST(GuestCpuAges, UnknownDomainOrNoSnapshotIsEmpty) {
  Sim sim(2);
  EXPECT_TRUE(sim.engine.guest_cpu_ages("vm1").empty());
  sim.snapshot_always = false;
  sim.paused = true;
  sim.tick();  // a paused domain keeps no guest state
  EXPECT_TRUE(sim.engine.guest_cpu_ages("vm1").empty());
  sim.paused = false;
  sim.tick();
  EXPECT_EQ(sim.engine.guest_cpu_ages("vm1").size(), 2u);
  EXPECT_TRUE(sim.engine.guest_cpu_ages("nope").empty());
}

TEST(GuestCpuAges, CsdWaitAgeIsTheLongestLockedWaitOfTheSender) {
  Sim sim(4);
  sim.run(1s);
  sim.run_task(0, "stress", 4242);
  sim.csd_wait(0, 2, "do_sync_core");
  sim.tick();  // first snapshot showing it: age 0
  auto ages = sim.engine.guest_cpu_ages("vm1");
  ASSERT_EQ(ages.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(ages[static_cast<std::size_t>(i)].cpu, i) << "by CPU number";
  ASSERT_TRUE(cpu_ages(ages, 0).csd_wait_age.has_value());
  EXPECT_EQ(*cpu_ages(ages, 0).csd_wait_age, Duration::zero());
  EXPECT_EQ(cpu_ages(ages, 0).csd_wait_target, 2);

  sim.run(1500ms);
  sim.csd_wait(0, 3, "do_sync_core");  // a second, younger wait of the same sender
  sim.run(500ms);
  ages = sim.engine.guest_cpu_ages("uuid-vm1");  // by uuid too
  ASSERT_TRUE(cpu_ages(ages, 0).csd_wait_age.has_value());
  EXPECT_EQ(*cpu_ages(ages, 0).csd_wait_age, 2000ms);
  EXPECT_EQ(cpu_ages(ages, 0).csd_wait_target, 2);
  EXPECT_EQ(cpu_ages(ages, 0).snapshot_at, sim.clock.now());
  for (int i : {1, 2, 3}) {
    EXPECT_FALSE(cpu_ages(ages, i).csd_wait_age.has_value()) << "CPU" << i << " waits on nobody";
    EXPECT_EQ(cpu_ages(ages, i).csd_wait_target, -1);
  }

  sim.clear_csd(0);
  sim.tick();
  EXPECT_FALSE(cpu_ages(sim.engine.guest_cpu_ages("vm1"), 0).csd_wait_age.has_value());
}

TEST(GuestCpuAges, AgesComeFromTheLastSnapshotNotTheClock) {
  Sim sim(2);
  sim.run(1s);
  sim.csd_wait(1, 0, "flush_tlb_func");
  sim.run(1s);
  const Timestamp snap = sim.clock.now();
  sim.clock.advance(30s);  // no tick: nothing new observed
  const auto ages = sim.engine.guest_cpu_ages("vm1");
  ASSERT_TRUE(cpu_ages(ages, 1).csd_wait_age.has_value());
  EXPECT_EQ(*cpu_ages(ages, 1).csd_wait_age, 900ms);  // seen at 10 snapshots, 100 ms apart
  EXPECT_EQ(cpu_ages(ages, 1).snapshot_at, snap);
}

TEST(GuestCpuAges, TouchAgeInGuestTimeOnlyWhereTheWatchdogRuns) {
  Sim sim(3);
  sim.cpus[1].view.watchdog_active = true;
  sim.cpus[1].touch_on = false;  // its touch stays at guest second 100
  sim.cpus[2].view.watchdog_active = false;  // nohz_full: frozen touch, not a lockup
  sim.cpus[2].touch_on = false;
  sim.run(7s);
  const auto ages = sim.engine.guest_cpu_ages("vm1");
  ASSERT_EQ(ages.size(), 3u);
  ASSERT_TRUE(cpu_ages(ages, 1).softlockup_touch_age.has_value());
  EXPECT_EQ(*cpu_ages(ages, 1).softlockup_touch_age, Duration(static_cast<Duration::rep>(sim.guest.running_clock_ns - (100ull << 30))));
  EXPECT_FALSE(cpu_ages(ages, 2).softlockup_touch_age.has_value());
  // CPU0's watchdog ran (its count and touch moved): a fresh touch, younger than one period.
  ASSERT_TRUE(cpu_ages(ages, 0).softlockup_touch_age.has_value());
  EXPECT_LT(*cpu_ages(ages, 0).softlockup_touch_age, sim.period() + Duration(1ll << 30));

  sim.guest.watchdog_thresh = 0;  // watchdog disabled: no touch ages at all
  sim.tick();
  for (const auto& a : sim.engine.guest_cpu_ages("vm1")) EXPECT_FALSE(a.softlockup_touch_age.has_value());
}

TEST(GuestCpuAges, RebootRestartsTheAges) {
  Sim sim(2);
  sim.csd_wait(0, 1, "do_sync_core");
  sim.run(1s);
  ASSERT_EQ(cpu_ages(sim.engine.guest_cpu_ages("vm1"), 0).csd_wait_age, 900ms);
  // The same csd locked in the new boot's first snapshot is a new wait, not the old one.
  sim.pending_events.push_back({DomainEventType::kRebooted, sim.clock.now(), ""});
  sim.tick();
  EXPECT_EQ(cpu_ages(sim.engine.guest_cpu_ages("vm1"), 0).csd_wait_age, Duration::zero());
}

}  // namespace
}  // namespace stallmon::diagnosis::testing
