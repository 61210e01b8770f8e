// SPDX-License-Identifier: Apache-2.0
// GUEST_STACK_OVERFLOW (issue 12 item 3, seed case 5) in simulated time: the snapshot says, per
// CPU, whether the current task's STACK_END_MAGIC is intact (GuestCpuView::stack_end_corrupt).
// One finding per task and CPU for as long as the word reads overwritten; resolved when it reads
// intact again or another task runs; an unreadable word is no evidence either way.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "sim.h"

namespace stallmon::diagnosis::testing {
namespace {

class StackOverflow : public ::testing::Test {
 protected:
  StackOverflow() : sim(4) {
    for (auto& c : sim.cpus) c.view.stack_end_corrupt = false;  // every stack end read intact
    sim.run_task(1, "stackend/1", 212);
    sim.run(2s);
  }

  // The test module's kthread on CPU1 overwrites its own stack end.
  void overwrite_cpu1() { sim.cpus[1].view.stack_end_corrupt = true; }

  int opened() const { return sim.count(FindingEvent::Type::kOpened, FindingKind::kGuestStackOverflow); }
  int resolved() const { return sim.count(FindingEvent::Type::kResolved, FindingKind::kGuestStackOverflow); }

  Sim sim;
};

TEST_F(StackOverflow, RaisedAtTheSecondSnapshotNamingTheCpuAndTheTask) {
  ASSERT_EQ(opened(), 0);
  overwrite_cpu1();
  const Timestamp seen = sim.clock.now() + kTick;
  ASSERT_EQ(sim.run_until_open(FindingKind::kGuestStackOverflow, 5s), 2 * kTick) << "not at the second snapshot";
  const auto active = sim.active(FindingKind::kGuestStackOverflow);
  ASSERT_EQ(active.size(), 1u);
  const Finding& f = active[0];
  EXPECT_EQ(f.severity, Severity::kCritical);
  EXPECT_EQ(f.cause, Cause::kGuestOther);
  EXPECT_EQ(f.cpus, std::vector<int>{1});
  EXPECT_EQ(f.onset, seen);
  EXPECT_TRUE(contains(f.summary, "CPU1's current task stackend/1 (pid 212)")) << f.summary;
  EXPECT_TRUE(contains(f.summary, "Cause: guest.")) << f.summary;
  ASSERT_FALSE(f.evidence.empty());
  const Evidence& e = f.evidence[0];
  EXPECT_TRUE(contains(e.text, "STACK_END_MAGIC (0x57ac6e9d) at the stack end of stackend/1 (pid 212) was overwritten"))
      << e.text;
  EXPECT_TRUE(contains(e.text, "a deep overflow or a write past the stack")) << e.text;
  EXPECT_EQ(e.cpu, 1);
  EXPECT_EQ(e.facts.at("pid"), "212");
  EXPECT_EQ(e.facts.at("comm"), "stackend/1");
}

// 10 s of snapshots (100 of them) that all show the overwritten word: one finding, one id.
TEST_F(StackOverflow, OneFindingWhileItLastsNotOnePerSnapshot) {
  overwrite_cpu1();
  const Timestamp first = sim.clock.now() + kTick;
  sim.run(10s);
  EXPECT_EQ(opened(), 1);
  EXPECT_EQ(resolved(), 0);
  std::set<std::string> ids;
  for (const auto& ev : sim.events)
    if (ev.finding.kind == FindingKind::kGuestStackOverflow) ids.insert(ev.finding.id);
  EXPECT_EQ(ids.size(), 1u);
  const auto active = sim.active(FindingKind::kGuestStackOverflow);
  ASSERT_EQ(active.size(), 1u);
  EXPECT_EQ(active[0].onset, first) << "dated from the first snapshot that showed it";
  EXPECT_TRUE(contains(active[0].evidence[0].text, "seen for 9.9 s")) << active[0].evidence[0].text;
}

// The runqueue's current task and its stack word are read at different moments: a task that
// exits in between can leave a word that reads overwritten for one snapshot. Not a finding.
TEST_F(StackOverflow, OneSnapshotAloneIsNotRaised) {
  overwrite_cpu1();
  sim.tick();
  sim.cpus[1].view.stack_end_corrupt = false;
  sim.run(2s);
  EXPECT_EQ(opened(), 0);
}

TEST_F(StackOverflow, UnknownIsNotRaised) {
  // A kernel without task_struct.stack in its BTF, or stack ends that cannot be read: unset.
  for (auto& c : sim.cpus) c.view.stack_end_corrupt.reset();
  sim.run(10s);
  EXPECT_EQ(opened(), 0);
  EXPECT_TRUE(sim.active(FindingKind::kGuestStackOverflow).empty());
}

TEST_F(StackOverflow, ResolvedWhenTheMagicReadsIntactAgain) {
  overwrite_cpu1();
  sim.run(3s);
  ASSERT_EQ(opened(), 1);
  const Timestamp restored = sim.clock.now() + kTick;
  sim.cpus[1].view.stack_end_corrupt = false;  // the module restores the word
  sim.tick();
  EXPECT_EQ(resolved(), 1) << "not resolved at the first snapshot that read it intact";
  EXPECT_TRUE(sim.active(FindingKind::kGuestStackOverflow).empty());
  const auto all = sim.engine.list_findings({});
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all[0].resolved_at, restored);
  sim.run(5s);
  EXPECT_EQ(opened(), 1);
  EXPECT_EQ(resolved(), 1);
}

TEST_F(StackOverflow, ResolvedWhenAnotherTaskRuns) {
  overwrite_cpu1();
  sim.run(2s);
  ASSERT_EQ(opened(), 1);
  // The kthread exited; the CPU idles, and this snapshot could not read the idle task's word.
  sim.cpus[1].view.idle = true;
  sim.cpus[1].view.current_comm = "swapper/1";
  sim.cpus[1].view.current_pid = 0;
  sim.cpus[1].view.stack_end_corrupt.reset();
  sim.tick();
  EXPECT_EQ(resolved(), 1);
  EXPECT_TRUE(sim.active(FindingKind::kGuestStackOverflow).empty());
}

TEST_F(StackOverflow, AnotherTaskWithItsOwnOverwrittenStackEndIsAnotherFinding) {
  overwrite_cpu1();
  sim.run(2s);
  sim.run_task(1, "kworker/1:2", 87);  // still reads overwritten: a different task's stack
  sim.tick();
  sim.tick();
  EXPECT_EQ(opened(), 2);
  EXPECT_EQ(resolved(), 1);
  const auto active = sim.active(FindingKind::kGuestStackOverflow);
  ASSERT_EQ(active.size(), 1u);
  EXPECT_TRUE(contains(active[0].summary, "kworker/1:2 (pid 87)")) << active[0].summary;
}

// A snapshot that cannot read the word (or the runqueue), or no snapshot at all, does not end it.
TEST_F(StackOverflow, UnreadableSnapshotsDoNotEndIt) {
  overwrite_cpu1();
  sim.run(1s);
  ASSERT_EQ(opened(), 1);
  sim.cpus[1].view.stack_end_corrupt.reset();  // same task, word unreadable
  sim.run(1s);
  sim.edit_snapshot = [](GuestView& g) {  // runqueue unreadable: no task, no word
    g.cpus[1].current_comm.clear();
    g.cpus[1].current_pid = 0;
    return true;
  };
  sim.run(1s);
  sim.edit_snapshot = [](GuestView&) { return false; };  // no snapshot at all
  sim.run(1s);
  sim.edit_snapshot = nullptr;
  sim.cpus[1].view.stack_end_corrupt = true;
  sim.run(1s);
  EXPECT_EQ(opened(), 1);
  EXPECT_EQ(resolved(), 0);
  ASSERT_EQ(sim.active(FindingKind::kGuestStackOverflow).size(), 1u);
}

// While it stands the engine snapshots every tick (a restore is seen within 100 ms); once the
// guest panicked with the word still overwritten (the scheduler's check), 1 Hz is enough.
TEST_F(StackOverflow, SnapshotsEveryTickWhileAliveOnceASecondAfterThePanic) {
  sim.snapshot_always = false;
  sim.run(5s);
  overwrite_cpu1();
  sim.run(1100ms);  // the next 1 Hz snapshot sees it, the tick after confirms it
  ASSERT_EQ(opened(), 1);
  int before = sim.snapshots;
  sim.run(5s);
  EXPECT_GE(sim.snapshots - before, 45) << "not every tick while the task runs with it";
  sim.guest.panic_cpu = 1;
  sim.run(1s);
  ASSERT_EQ(sim.active(FindingKind::kGuestPanic).size(), 1u);
  before = sim.snapshots;
  sim.run(5s);
  EXPECT_LE(sim.snapshots - before, 6) << "a panicked guest polled at 10 Hz";
  EXPECT_EQ(sim.active(FindingKind::kGuestStackOverflow).size(), 1u) << "still shown";
}

TEST_F(StackOverflow, IntactStacksForAMinuteProduceNothing) {
  sim.run(60s);
  EXPECT_TRUE(sim.events.empty());
}

}  // namespace
}  // namespace stallmon::diagnosis::testing
