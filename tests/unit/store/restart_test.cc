// SPDX-License-Identifier: Apache-2.0
// A daemon restart as the engine sees it: one engine writes its findings and events to the
// store, a second one (a new process: new trackers, same store) restores them and goes on.
// The diagnosis Sim (tests/unit/diagnosis/sim.h): simulated time, 100 ms ticks, no sleeps.
#include <gtest/gtest.h>

#include "sim.h"
#include "store_fixture.h"

namespace stallmon::store::testing {
namespace {

using diagnosis::DiagnosisEngine;
using diagnosis::FindingEvent;
using diagnosis::ThreadState;
using diagnosis::testing::Sim;
using T = FindingEvent::Type;

const std::vector<std::string> kFrozen = {"__refrigerator", "get_signal"};

struct DaemonRun {
  std::unique_ptr<Sim> sim;
  std::unique_ptr<FindingDb> db;
  LoadedFindings loaded;
};

// A daemon start: the engine restores what the store holds, then writes to it. `at`: its clock.
DaemonRun start(const std::string& path, Timestamp at) {
  DaemonRun r;
  r.sim = std::make_unique<Sim>(4);
  r.sim->clock.set(at);
  StoreOptions o;
  o.path = path;
  auto db = FindingDb::open(o, r.sim->clock);
  EXPECT_TRUE(db.ok()) << db.error().to_string();
  if (!db.ok()) return r;
  r.db = std::move(*db);
  const auto& c = r.sim->engine.config();
  auto loaded = r.db->load(c.max_resolved_history, c.max_event_log);
  EXPECT_TRUE(loaded.ok()) << loaded.error().to_string();
  if (!loaded.ok()) return r;
  r.loaded = *loaded;
  EXPECT_TRUE(r.sim->engine.restore(std::move(loaded->findings)).ok());
  r.sim->engine.set_listener(r.db.get());
  return r;
}

void stop(DaemonRun& r) {
  r.sim->engine.set_listener(nullptr);
  r.db->stop();
}

std::vector<FindingEvent> of(const std::vector<FindingEvent>& events, const std::string& id) {
  std::vector<FindingEvent> out;
  for (const auto& e : events)
    if (e.finding.id == id) out.push_back(e);
  return out;
}

// Before the restart: vCPU 1 was frozen and thawed (resolved history), vCPU 2 is frozen now.
struct Before {
  std::string resolved_id, active_id;
  Timestamp onset;
  uint64_t revision = 0;
  uint64_t mid_revision = 0;  // a revision a watcher had seen, some events before the end
  Timestamp stopped_at;
  uint64_t incarnation = 0;
};

Before first_run(const std::string& path) {
  Before b;
  DaemonRun r = start(path, Timestamp(std::chrono::seconds(1'700'000'000)));
  Sim& sim = *r.sim;
  sim.run(1s);
  sim.vcpus[1].block(ThreadState::kDiskSleep, "__refrigerator", kFrozen);
  EXPECT_NE(sim.run_until_open(FindingKind::kVcpuHostBlocked), diagnosis::Duration::max());
  b.resolved_id = sim.active(FindingKind::kVcpuHostBlocked).at(0).id;
  sim.vcpus[1].run(0.5);
  EXPECT_NE(sim.run_until(T::kResolved, FindingKind::kVcpuHostBlocked), diagnosis::Duration::max());
  b.mid_revision = sim.engine.revision();
  sim.vcpus[2].block(ThreadState::kDiskSleep, "__refrigerator", kFrozen);
  EXPECT_NE(sim.run_until_open(FindingKind::kVcpuHostBlocked), diagnosis::Duration::max());
  sim.run(3s);
  auto active = sim.active(FindingKind::kVcpuHostBlocked);
  EXPECT_EQ(active.size(), 1u);
  if (!active.empty()) {
    b.active_id = active[0].id;
    b.onset = active[0].onset;
  }
  b.revision = sim.engine.revision();
  b.stopped_at = sim.clock.now();
  b.incarnation = r.db->incarnation();
  stop(r);
  return b;
}

TEST(RestartTest, AStillFrozenVcpuContinuesItsFindingWithTheSameId) {
  TempDir dir;
  const Before b = first_run(dir.file("findings.db"));
  ASSERT_FALSE(b.active_id.empty());

  DaemonRun r = start(dir.file("findings.db"), b.stopped_at + 5s);
  Sim& sim = *r.sim;
  EXPECT_TRUE(r.loaded.resumable) << r.loaded.why_not_resumable;
  EXPECT_EQ(r.db->incarnation(), b.incarnation);
  // Before the first tick: the API lists the resolved history and the restored active finding,
  // at the revision the previous run ended with.
  EXPECT_EQ(sim.engine.revision(), b.revision);
  const auto listed = sim.engine.list_findings();
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].id, b.active_id);
  EXPECT_TRUE(listed[0].active);
  EXPECT_EQ(listed[1].id, b.resolved_id);
  EXPECT_FALSE(listed[1].active);

  sim.vcpus[2].block(ThreadState::kDiskSleep, "__refrigerator", kFrozen);  // still frozen
  sim.run(3s);
  const auto events = of(sim.events, b.active_id);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events[0].type, T::kUpdated) << "continued, not reopened";
  EXPECT_GT(events[0].revision, b.revision);
  EXPECT_EQ(sim.count(T::kOpened, FindingKind::kVcpuHostBlocked), 0);
  const auto active = sim.active(FindingKind::kVcpuHostBlocked);
  ASSERT_EQ(active.size(), 1u);
  EXPECT_EQ(active[0].id, b.active_id);
  EXPECT_EQ(active[0].onset, b.onset) << "the onset is the first run's";
  stop(r);
}

TEST(RestartTest, AThawedVcpuResolvesItsFindingAtTheFirstEvaluation) {
  TempDir dir;
  const Before b = first_run(dir.file("findings.db"));
  DaemonRun r = start(dir.file("findings.db"), b.stopped_at + 5s);
  Sim& sim = *r.sim;
  const Timestamp first_tick = sim.clock.now() + diagnosis::testing::kTick;
  // vCPU 2 runs again in this run: nothing proposes the condition.
  ASSERT_NE(sim.run_until(T::kResolved, FindingKind::kVcpuHostBlocked, 5s), diagnosis::Duration::max());
  const auto events = of(sim.events, b.active_id);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, T::kResolved);
  EXPECT_EQ(events[0].revision, b.revision + 1);
  // Within the kind's re-evaluation window (2 x host_blocked_min), not the 30 s cap.
  EXPECT_LE(*events[0].finding.resolved_at - first_tick, 1s);
  EXPECT_TRUE(sim.active(FindingKind::kVcpuHostBlocked).empty());
  EXPECT_EQ(sim.count(T::kOpened, FindingKind::kVcpuHostBlocked), 0);
  stop(r);

  // And a third start lists both as resolved history.
  DaemonRun third = start(dir.file("findings.db"), sim.clock.now() + 1s);
  std::vector<std::string> ids;
  for (const auto& f : third.sim->engine.list_findings()) {
    EXPECT_FALSE(f.active);
    ids.push_back(f.id);
  }
  EXPECT_EQ(ids, (std::vector<std::string>{b.active_id, b.resolved_id})) << "newest first";
  stop(third);
}

TEST(RestartTest, AWatcherResumesAcrossTheRestartFromTheLog) {
  TempDir dir;
  const Before b = first_run(dir.file("findings.db"));
  DaemonRun r = start(dir.file("findings.db"), b.stopped_at + 5s);
  Sim& sim = *r.sim;
  sim.run(2s);  // vCPU 2 thawed: its finding resolves
  // A client that saw mid_revision before the restart asks for what came after.
  const auto since = sim.engine.events_since(b.mid_revision);
  EXPECT_TRUE(since.complete) << "no RESYNC: the log spans the restart";
  ASSERT_FALSE(since.events.empty());
  for (std::size_t i = 0; i < since.events.size(); ++i)
    EXPECT_EQ(since.events[i].revision, b.mid_revision + 1 + i) << "one run of revisions across both daemons";
  EXPECT_EQ(since.events.back().revision, sim.engine.revision());
  EXPECT_EQ(since.events.back().finding.id, b.active_id);
  // New findings never reuse an id of the first run.
  sim.vcpus[3].block(ThreadState::kDiskSleep, "__refrigerator", kFrozen);
  ASSERT_NE(sim.run_until_open(FindingKind::kVcpuHostBlocked), diagnosis::Duration::max());
  const std::string id = sim.active(FindingKind::kVcpuHostBlocked).at(0).id;
  EXPECT_NE(id, b.active_id);
  EXPECT_NE(id, b.resolved_id);
  stop(r);
}

TEST(RestartTest, FindingsOfADomainThatNeverComesBackExpire) {
  TempDir dir;
  const Before b = first_run(dir.file("findings.db"));
  DaemonRun r = start(dir.file("findings.db"), b.stopped_at + 5s);
  Sim& sim = *r.sim;
  const auto wait = sim.engine.config().restored_domain_wait;
  sim.clock.advance(wait - 1s);
  EXPECT_TRUE(sim.engine.expire_restored().empty()) << "the domain may still appear";
  EXPECT_EQ(sim.active(FindingKind::kVcpuHostBlocked).size(), 1u);
  sim.clock.advance(1s);
  const auto events = sim.engine.expire_restored();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, T::kResolved);
  EXPECT_EQ(events[0].finding.id, b.active_id);
  EXPECT_TRUE(sim.active(FindingKind::kVcpuHostBlocked).empty());
  stop(r);
}

TEST(RestartTest, AGuestFindingWaitsForTheFirstGuestSnapshot) {
  TempDir dir;
  const std::string path = dir.file("findings.db");
  std::string id;
  Timestamp stopped_at;
  {
    DaemonRun r = start(path, Timestamp(std::chrono::seconds(1'700'000'000)));
    r.sim->cpus[1].touch_on = false;  // CPU1's watchdog thread never runs
    ASSERT_NE(r.sim->run_until_open(FindingKind::kGuestSoftlockupImminent), diagnosis::Duration::max());
    id = r.sim->active(FindingKind::kGuestSoftlockupImminent).at(0).id;
    stopped_at = r.sim->clock.now();
    stop(r);
  }
  DaemonRun r = start(path, stopped_at + 5s);
  Sim& sim = *r.sim;
  // Introspection is not ready in the new run yet: no snapshot, so nothing can judge it.
  sim.edit_snapshot = [](diagnosis::GuestView&) { return false; };
  sim.run(20s);
  ASSERT_EQ(sim.active(FindingKind::kGuestSoftlockupImminent).size(), 1u);
  EXPECT_TRUE(of(sim.events, id).empty());
  // Snapshots again, of a guest whose watchdog runs: resolved within two snapshots.
  sim.edit_snapshot = nullptr;
  const Timestamp first_snapshot = sim.clock.now() + diagnosis::testing::kTick;
  ASSERT_NE(sim.run_until(T::kResolved, FindingKind::kGuestSoftlockupImminent, 10s), diagnosis::Duration::max());
  const auto events = of(sim.events, id);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_LE(*events[0].finding.resolved_at - first_snapshot, 2 * sim.engine.config().baseline_snapshot_interval);
  stop(r);
}

// Seen on a real guest (seed case 1 across a restart): a soft lockup that still builds up must
// continue its GUEST_SOFTLOCKUP_IMMINENT, not resolve it and open another a second later.
TEST(RestartTest, AWatchdogStillStaleContinuesItsImminentFinding) {
  TempDir dir;
  const std::string path = dir.file("findings.db");
  std::string id;
  Timestamp stopped_at;
  uint64_t clock_ns = 0, touch = 0;
  {
    DaemonRun r = start(path, Timestamp(std::chrono::seconds(1'700'000'000)));
    r.sim->cpus[1].touch_on = false;  // CPU1's watchdog thread never runs
    ASSERT_NE(r.sim->run_until_open(FindingKind::kGuestSoftlockupImminent), diagnosis::Duration::max());
    id = r.sim->active(FindingKind::kGuestSoftlockupImminent).at(0).id;
    stopped_at = r.sim->clock.now();
    clock_ns = r.sim->guest.running_clock_ns;
    touch = *r.sim->cpus[1].view.watchdog_touch_ts;
    stop(r);
  }
  // The same guest half a second later: its clock ran on, CPU1's touch did not.
  DaemonRun r = start(path, stopped_at + 500ms);
  Sim& sim = *r.sim;
  // A real guest's hrtimer count is there from the first snapshot on, and the watchdog timer
  // (every period, 4 s here) has just fired: the next count change is a period away.
  const uint64_t period_ns = static_cast<uint64_t>(sim.period().count());
  sim.guest.running_clock_ns = std::max<uint64_t>(clock_ns + (500ull << 20), (clock_ns / period_ns + 1) * period_ns + 1);
  for (auto& c : sim.cpus) {
    c.view.watchdog_touch_ts = sim.guest.running_clock_ns >> 30;
    c.view.hrtimer_interrupts = 1000;
  }
  sim.cpus[1].view.watchdog_touch_ts = touch;
  sim.cpus[1].touch_on = false;
  // Past the period, the timer seen and the rule speaking again.
  sim.run(2 * sim.period());
  EXPECT_EQ(sim.count(T::kResolved, FindingKind::kGuestSoftlockupImminent), 0);
  EXPECT_EQ(sim.count(T::kOpened, FindingKind::kGuestSoftlockupImminent), 0);
  const auto active = sim.active(FindingKind::kGuestSoftlockupImminent);
  ASSERT_EQ(active.size(), 1u);
  EXPECT_EQ(active[0].id, id);
  stop(r);
}

TEST(RestartTest, RestoreOnlyIntoAFreshEngine) {
  Sim sim(2);
  sim.vcpus[1].block(ThreadState::kDiskSleep, "__refrigerator", kFrozen);
  sim.run(1s);
  auto r = sim.engine.restore({});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace stallmon::store::testing
