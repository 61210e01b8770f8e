// SPDX-License-Identifier: Apache-2.0
// Engine mechanics: revisions and resume, bounded history and event log, the listener, the
// snapshot policy, pause and forget, queries.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "sim.h"

namespace stallmon::diagnosis::testing {
namespace {

// Blocks and unblocks vCPU `v` once: one OPENED, some UPDATED, one RESOLVED.
void block_cycle(Sim& sim, int v, Duration blocked = 2s) {
  sim.vcpus[v].block(ThreadState::kDiskSleep, "__refrigerator", {"__refrigerator"});
  sim.run(blocked);
  sim.vcpus[v].run(0.5);
  sim.run(300ms);
}

TEST(Revisions, StrictlyIncreasingAndResumable) {
  Sim sim(2);
  sim.run(1s);
  block_cycle(sim, 0);
  block_cycle(sim, 1);
  ASSERT_GE(sim.events.size(), 6u);
  for (std::size_t i = 0; i < sim.events.size(); ++i) EXPECT_EQ(sim.events[i].revision, i + 1);
  EXPECT_EQ(sim.engine.revision(), sim.events.size());

  // A watcher that saw up to revision k gets exactly the rest, in order.
  const uint64_t k = 3;
  EventsSince rest = sim.engine.events_since(k);
  EXPECT_TRUE(rest.complete);
  EXPECT_EQ(rest.revision, sim.engine.revision());
  ASSERT_EQ(rest.events.size(), sim.events.size() - k);
  for (std::size_t i = 0; i < rest.events.size(); ++i) {
    EXPECT_EQ(rest.events[i].revision, sim.events[k + i].revision);
    EXPECT_EQ(rest.events[i].finding.id, sim.events[k + i].finding.id);
  }
  EXPECT_TRUE(sim.engine.events_since(sim.engine.revision()).events.empty());
  EXPECT_TRUE(sim.engine.events_since(sim.engine.revision()).complete);
}

TEST(Revisions, ResumeFromADroppedRevisionAsksForResync) {
  DiagnosisConfig cfg;
  cfg.max_event_log = 5;
  Sim sim(2, cfg);
  sim.run(1s);
  for (int i = 0; i < 4; ++i) block_cycle(sim, i % 2);
  ASSERT_GT(sim.engine.revision(), 5u);
  EXPECT_EQ(sim.engine.event_log_size(), 5u);
  EventsSince old = sim.engine.events_since(1);
  EXPECT_FALSE(old.complete) << "events 2.. were dropped: the watcher must resync";
  EventsSince recent = sim.engine.events_since(sim.engine.revision() - 5);
  EXPECT_TRUE(recent.complete);
  EXPECT_EQ(recent.events.size(), 5u);
}

TEST(History, ResolvedFindingsAreBoundedAndRecurrencesGetNewIds) {
  DiagnosisConfig cfg;
  cfg.max_resolved_history = 3;
  Sim sim(1, cfg);
  sim.run(1s);
  std::set<std::string> ids;
  for (int i = 0; i < 10; ++i) {
    block_cycle(sim, 0);
    ids.insert(sim.engine.list_findings().front().id);
  }
  EXPECT_EQ(ids.size(), 10u);
  EXPECT_EQ(sim.engine.resolved_history_size(), 3u);
  auto listed = sim.engine.list_findings();
  ASSERT_EQ(listed.size(), 3u);
  EXPECT_GT(*listed[0].resolved_at, *listed[1].resolved_at) << "newest first";
  EXPECT_EQ(listed[0].duration, listed[0].last_update - listed[0].onset);
}

class RecordingListener : public FindingListener {
 public:
  void on_finding_event(const FindingEvent& e) override { events.push_back(e); }
  std::vector<FindingEvent> events;
};

TEST(Listener, SeesEveryEventInOrder) {
  Sim sim(2);
  RecordingListener l;
  sim.engine.set_listener(&l);
  sim.run(1s);
  block_cycle(sim, 1);
  ASSERT_EQ(l.events.size(), sim.events.size());
  for (std::size_t i = 0; i < l.events.size(); ++i) EXPECT_EQ(l.events[i].revision, sim.events[i].revision);
  sim.engine.set_listener(nullptr);
}

TEST(SnapshotPolicy, BaselineWhenHealthyEveryTickWhenSuspect) {
  Sim sim(2);
  EXPECT_TRUE(sim.engine.wants_guest_snapshot("vm1", sim.clock.now())) << "never snapshotted";
  sim.tick();  // with a snapshot
  const Timestamp snap = sim.clock.now();
  EXPECT_FALSE(sim.engine.wants_guest_snapshot("vm1", snap + 100ms));
  EXPECT_FALSE(sim.engine.wants_guest_snapshot("uuid-vm1", snap + 900ms));
  EXPECT_TRUE(sim.engine.wants_guest_snapshot("vm1", snap + 1s));
  EXPECT_TRUE(sim.engine.wants_guest_snapshot("unknown-domain", snap));

  // A vCPU thread in D: every tick, long before any finding.
  sim.snapshot_always = false;
  sim.vcpus[1].block(ThreadState::kDiskSleep, "__refrigerator", {});
  sim.tick();
  EXPECT_TRUE(sim.engine.wants_guest_snapshot("vm1", sim.clock.now() + 100ms));
  EXPECT_TRUE(sim.engine.active_findings().empty());
  sim.vcpus[1].run(0.5);
  sim.run(2s);

  // A csd wait seen in the last snapshot.
  sim.snapshot_always = true;
  sim.csd_wait(0, 1, "f");
  sim.tick();
  EXPECT_TRUE(sim.engine.wants_guest_snapshot("vm1", sim.clock.now() + 100ms));
  sim.clear_csd(0);
  sim.tick();
  EXPECT_FALSE(sim.engine.wants_guest_snapshot("vm1", sim.clock.now() + 100ms));

  // Monitor unresponsive.
  sim.monitor.responsive = false;
  sim.tick();
  EXPECT_TRUE(sim.engine.wants_guest_snapshot("vm1", sim.clock.now() + 100ms));
}

TEST(SnapshotPolicy, Configurable) {
  DiagnosisConfig cfg;
  cfg.baseline_snapshot_interval = 5s;
  cfg.snapshot_every_tick_when_suspect = false;
  Sim sim(1, cfg);
  sim.vcpus[0].block(ThreadState::kDiskSleep, "x", {});
  sim.tick();
  EXPECT_FALSE(sim.engine.wants_guest_snapshot("vm1", sim.clock.now() + 4s));
  EXPECT_TRUE(sim.engine.wants_guest_snapshot("vm1", sim.clock.now() + 5s));
}

TEST(Pause, PausedDomainHasNoStallsAndResumesClean) {
  Sim sim(2);
  sim.run(1s);
  sim.paused = true;
  for (auto& v : sim.vcpus) v.futex_wait();
  sim.main.futex_wait();
  sim.run(30s);
  EXPECT_TRUE(sim.events.empty());
  sim.paused = false;
  for (auto& v : sim.vcpus) v.run(0.5);
  sim.main.run(0.05);
  sim.run(5s);
  EXPECT_TRUE(sim.events.empty());
}

TEST(Pause, PausingResolvesAnOngoingStall) {
  Sim sim(2);
  sim.run(1s);
  sim.vcpus[0].block(ThreadState::kDiskSleep, "__refrigerator", {});
  sim.run(1s);
  ASSERT_EQ(sim.engine.active_findings().size(), 1u);
  sim.paused = true;
  sim.tick();
  EXPECT_TRUE(sim.engine.active_findings().empty());
}

TEST(Forget, ResolvesTheDomainsFindings) {
  Sim sim(2);
  sim.run(1s);
  sim.vcpus[0].block(ThreadState::kDiskSleep, "__refrigerator", {});
  sim.run(1s);
  auto ev = sim.engine.forget_domain("uuid-vm1");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].type, FindingEvent::Type::kResolved);
  EXPECT_TRUE(sim.engine.active_findings().empty());
  EXPECT_TRUE(sim.engine.wants_guest_snapshot("vm1", sim.clock.now()));
}

TEST(Query, FiltersByDomainKindStateAndTime) {
  Sim sim(2);
  sim.run(1s);
  block_cycle(sim, 0);
  const Timestamp mid = sim.clock.now();
  sim.vcpus[1].block(ThreadState::kDiskSleep, "__refrigerator", {});
  sim.monitor.responsive = false;
  sim.run(1s);
  FindingQuery q;
  q.domain = "vm1";
  EXPECT_EQ(sim.engine.list_findings(q).size(), 3u);
  q.domain = "other";
  EXPECT_TRUE(sim.engine.list_findings(q).empty());
  q = {};
  q.active_only = true;
  EXPECT_EQ(sim.engine.list_findings(q).size(), 2u);
  q.kinds = {FindingKind::kHostMonitorUnresponsive};
  ASSERT_EQ(sim.engine.list_findings(q).size(), 1u);
  q = {};
  q.since = mid + 1ms;
  EXPECT_EQ(sim.engine.list_findings(q).size(), 2u) << "the resolved one is older";
  q = {};
  q.limit = 1;
  EXPECT_EQ(sim.engine.list_findings(q).size(), 1u);
}

TEST(Vocabulary, NamesMatchTheProto) {
  EXPECT_STREQ(to_string(FindingKind::kGuestIpiStall), "GUEST_IPI_STALL");
  EXPECT_EQ(static_cast<int>(FindingKind::kVmWideStall), 10);
  EXPECT_EQ(static_cast<int>(FindingKind::kGuestStackOverflow), 11);
  EXPECT_STREQ(to_string(FindingKind::kGuestStackOverflow), "GUEST_STACK_OVERFLOW");
  EXPECT_EQ(static_cast<int>(Cause::kGuestIrqsOff), 3);
  EXPECT_EQ(thread_state_from_letter('t'), ThreadState::kTracingStop);
  EXPECT_EQ(thread_state_letter(ThreadState::kDiskSleep), 'D');
  EXPECT_EQ(format_duration(std::chrono::milliseconds(1400)), "1.4 s");
  EXPECT_EQ(format_duration(std::chrono::milliseconds(850)), "850 ms");
  EXPECT_EQ(format_duration(std::chrono::seconds(26)), "26 s");
  EXPECT_EQ(format_duration(std::chrono::seconds(200)), "3 min 20 s");
}

}  // namespace
}  // namespace stallmon::diagnosis::testing

namespace stallmon::diagnosis::testing {
namespace {

TEST(Reboot, GuestClockGoingBackStartsAFreshBoot) {
  Sim sim(2);
  sim.run_task(0, "a", 1);
  sim.run_task(1, "b", 2);
  sim.run(1s);
  sim.csd_wait(0, 1, "f");
  sim.run(400ms);
  // The guest reboots: its clock restarts; a csd at the same address (same layout) is locked
  // again in the new boot. Its age must start over, not continue from the old boot.
  sim.guest.running_clock_ns = 3ull << 30;
  for (auto& c : sim.cpus) c.view.watchdog_touch_ts = 3;
  sim.run(400ms);
  EXPECT_TRUE(sim.active(FindingKind::kGuestIpiStall).empty());
  sim.run(200ms);
  EXPECT_EQ(sim.active(FindingKind::kGuestIpiStall).size(), 1u);
}

TEST(Query, ZeroLimitMeansTheDefault) {
  Sim sim(1);
  sim.run(1s);
  sim.vcpus[0].block(ThreadState::kDiskSleep, "x", {});
  sim.run(1s);
  FindingQuery q;
  q.limit = 0;
  EXPECT_EQ(sim.engine.list_findings(q).size(), 1u);
}

}  // namespace
}  // namespace stallmon::diagnosis::testing


namespace stallmon::diagnosis::testing {
namespace {

TEST(Concurrency, QueriesWhileObserving) {
  // The server thread reads while the sampling thread observes (run it under TSan/ASan too).
  Sim sim(4);
  std::atomic<bool> done{false};
  std::atomic<uint64_t> seen{0};
  std::thread reader([&] {
    uint64_t after = 0;
    while (!done.load()) {
      EventsSince ev = sim.engine.events_since(after);
      for (const auto& e : ev.events) {
        EXPECT_GT(e.revision, after);
        after = e.revision;
      }
      seen = after;
      (void)sim.engine.list_findings();
      (void)sim.engine.wants_guest_snapshot("vm1", Timestamp{});
    }
  });
  for (int i = 0; i < 5; ++i) block_cycle(sim, i % 4, 1s);
  done = true;
  reader.join();
  EXPECT_LE(seen.load(), sim.engine.revision());
  EXPECT_GT(sim.engine.revision(), 0u);
}

}  // namespace
}  // namespace stallmon::diagnosis::testing
