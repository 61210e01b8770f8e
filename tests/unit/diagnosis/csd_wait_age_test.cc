// SPDX-License-Identifier: Apache-2.0
// How long a csd wait has lasted, when every snapshot shows the sender's csd locked: one wait
// only while the target takes no function-call IPI (it runs its whole queue on each one). A busy
// sender reuses its per-CPU csd for every call, so under a TLB-shootdown load successive short
// waits were once aged as one: a GUEST_IPI_STALL "has waited 500 ms" on a healthy guest
// (diagnosis_healthy, 2026-12-05).
#include <gtest/gtest.h>

#include "sim.h"

namespace stallmon::diagnosis::testing {
namespace {

// Two busy CPUs the host runs freely, CPU0 with a flush_tlb_func csd locked for CPU1 at every
// snapshot; `ipis_per_tick` function-call IPIs taken by CPU1 per tick (nullopt: no count read).
void busy_pair(Sim& sim, std::optional<int> ipis_per_tick) {
  sim.run_task(0, "ipiload", 100);
  sim.run_task(1, "ipiload", 101);
  for (auto& v : sim.vcpus) v.run(0.5, 0.3);
  for (auto& c : sim.cpus) c.view.call_ipis = ipis_per_tick ? std::optional<uint64_t>(1000) : std::nullopt;
}

void every_tick(Sim& sim, std::optional<int> ipis_per_tick) {
  sim.before_tick = [&sim, ipis_per_tick] {
    sim.clear_csd(0);
    sim.csd_wait(0, 1, "flush_tlb_func");
    if (ipis_per_tick) *sim.cpus[1].view.call_ipis += static_cast<uint64_t>(*ipis_per_tick);
  };
}

TEST(CsdWaitAge, LockedAgainAfterTheTargetTookACallIpiIsANewCall) {
  Sim sim(2);
  busy_pair(sim, 3);
  every_tick(sim, 3);
  sim.run(10s);
  EXPECT_EQ(sim.count(FindingEvent::Type::kOpened, FindingKind::kGuestIpiStall), 0)
      << sim.events.front().finding.summary;
}

TEST(CsdWaitAge, ControlWithoutTheCountTheSameSnapshotsAreOneLongWait) {
  // What the count is for: the snapshots alone cannot tell successive calls apart.
  Sim sim(2);
  busy_pair(sim, std::nullopt);
  every_tick(sim, std::nullopt);
  EXPECT_NE(sim.run_until_open(FindingKind::kGuestIpiStall, 2s), Duration::max());
}

TEST(CsdWaitAge, ATargetThatTakesNoIpiAgesTheWaitFromItsLastOne) {
  Sim sim(2);
  busy_pair(sim, 2);
  every_tick(sim, 2);
  sim.run(3s);
  // CPU1 stops taking IPIs (interrupts off, a frozen vCPU): the wait now lasts, and its age
  // counts from the first snapshot after the last IPI.
  sim.before_tick = [&sim] {
    sim.clear_csd(0);
    sim.csd_wait(0, 1, "flush_tlb_func");
  };
  const Timestamp stopped = sim.clock.now();
  const Duration to_open = sim.run_until_open(FindingKind::kGuestIpiStall, 3s);
  ASSERT_NE(to_open, Duration::max());
  EXPECT_GE(to_open, DiagnosisConfig{}.ipi_stall_min);
  EXPECT_LE(to_open, DiagnosisConfig{}.ipi_stall_min + 200ms);
  const Finding ipi = sim.active(FindingKind::kGuestIpiStall).at(0);
  EXPECT_GE(ipi.onset, stopped);
  EXPECT_TRUE(ipi.evidence.front().csd_wait.has_value());
}

TEST(CsdWaitAge, AnUnreadCountOnEitherSideKeepsTheWaitAging) {
  // A snapshot that could not read the target's count proves nothing: the wait goes on.
  Sim sim(2);
  busy_pair(sim, 3);
  every_tick(sim, 3);
  int tick = 0;
  sim.edit_snapshot = [&tick](GuestView& g) {
    if (++tick % 2 == 0)
      for (auto& c : g.cpus) c.call_ipis.reset();
    return true;
  };
  EXPECT_NE(sim.run_until_open(FindingKind::kGuestIpiStall, 2s), Duration::max());
}

}  // namespace
}  // namespace stallmon::diagnosis::testing
