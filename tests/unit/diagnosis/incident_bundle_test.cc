// SPDX-License-Identifier: Apache-2.0
// Issue 14 item 2: the incident recorder, in simulated time. The first test runs seed case (b)
// through the real engine (the recorder as its listener, fed each tick's observation as the
// pipeline does); the others drive the recorder with hand-made events to pin one rule each:
// bounds on hostile sizes, the byte budget, the cap on bundles, related findings, restore.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>

#include "fault_scenarios.h"
#include "incident_feed.h"
#include "stallmon/diagnosis/incident_recorder.h"

namespace stallmon::diagnosis::testing {
namespace {

// What the store would get: how often each bundle came, and its last state.
struct Sink : IncidentSink {
  void on_incident(std::shared_ptr<const IncidentBundle> b) override {
    ++emits[b->finding.id];
    last[b->finding.id] = std::move(b);
  }
  std::map<std::string, int> emits;
  std::map<std::string, std::shared_ptr<const IncidentBundle>> last;
};

// Seed case (b): the qemu process SIGSTOPped for 6 s while CPU0 waits on CPU1's flush.
TEST(IncidentBundle, SigstopKeepsHistoryFromBeforeOnsetToResolution) {
  Sim sim(4);
  IpiLoad load(sim);
  ASSERT_TRUE(sim.snapshot_always);
  IncidentRecorder rec(IncidentLimits{});
  Sink sink;
  rec.set_sink(&sink);
  sim.engine.set_listener(&rec);
  // The pipeline hands the recorder each observation after the engine's.
  IncidentFeed feed(sim, rec);
  sim.run(70s);
  ASSERT_EQ(rec.stats().bundles_opened, 0u) << "a healthy guest has no critical finding";

  const Timestamp stopped_at = sim.clock.now();
  load.sigstop();
  sim.run(6s);
  load.sigcont();
  const Timestamp continued_at = sim.clock.now();
  sim.run(5s);
  feed.feed();

  // Every critical finding of the stop has a bundle, complete once the finding resolved.
  std::vector<Finding> critical;
  std::size_t resolved = 0;
  for (const auto& f : sim.engine.list_findings())
    if (f.severity == Severity::kCritical) {
      critical.push_back(f);
      resolved += f.active ? 0 : 1;
      auto fb = rec.get(f.id);
      ASSERT_TRUE(fb.has_value()) << f.id;
      EXPECT_EQ(fb->complete(), !f.active) << f.id;
    }
  ASSERT_FALSE(critical.empty());
  EXPECT_EQ(rec.stats().bundles_opened, critical.size());
  EXPECT_EQ(rec.stats().bundles_completed, resolved);

  const Finding* vm = nullptr;
  for (const auto& f : critical)
    if (f.kind == FindingKind::kVmWideStall) vm = &f;
  ASSERT_NE(vm, nullptr);
  auto b = rec.get(vm->id);
  ASSERT_TRUE(b.has_value());
  ASSERT_TRUE(b->complete());
  EXPECT_EQ(b->window_start, vm->onset - 60s);
  EXPECT_EQ(*b->window_end, *vm->resolved_at);
  EXPECT_FALSE(b->finding.active);

  // One lane per vCPU, from the lookback (a minute before the onset) to the resolution, and
  // stopped in between.
  ASSERT_EQ(b->vcpus.size(), 4u);
  for (const auto& lane : b->vcpus) {
    ASSERT_FALSE(lane.points.empty());
    EXPECT_LE(lane.points.front().at - b->window_start, 200ms) << "vcpu " << lane.vcpu;
    EXPECT_GE(lane.points.back().at, *b->window_end - 200ms);
    EXPECT_LE(lane.points.back().at, *b->window_end);
    const bool stopped_seen = std::any_of(lane.points.begin(), lane.points.end(), [&](const auto& p) {
      return p.state == ThreadState::kStopped && p.at > stopped_at && p.at <= continued_at;
    });
    EXPECT_TRUE(stopped_seen) << "vcpu " << lane.vcpu;
    for (std::size_t i = 1; i < lane.points.size(); ++i) ASSERT_LT(lane.points[i - 1].at, lane.points[i].at);
  }
  // Guest lanes: CPU0's wait on CPU1 (the arrow of the report).
  ASSERT_EQ(b->guest_cpus.size(), 4u);
  const auto& cpu0 = b->guest_cpus[0];
  EXPECT_TRUE(std::any_of(cpu0.points.begin(), cpu0.points.end(), [](const auto& p) { return p.csd_target == 1; }));
  EXPECT_LE(cpu0.points.front().at - b->window_start, 1100ms) << "the guest ring reaches back too";
  // Snapshots: the worst shows CPU0 waiting; the onset one exists and is no worse.
  ASSERT_TRUE(b->at_onset && b->at_worst);
  EXPECT_GE(b->at_worst->troubled_cpus, 1);
  EXPECT_GE(b->at_worst->troubled_cpus, b->at_onset->troubled_cpus);
  EXPECT_EQ(b->at_worst->cpus.at(0).csd_targets, std::vector<int>{1});
  // The stopped threads' host stacks.
  ASSERT_FALSE(b->host_stacks.empty());
  EXPECT_TRUE(std::any_of(b->host_stacks.begin(), b->host_stacks.end(), [](const auto& h) {
    return h.vcpu == 1 && h.state == ThreadState::kStopped && !h.frames.empty() && h.frames[0] == "do_signal_stop";
  }));
  // The domain's findings raised while the bundle was open, or before it and still running in
  // its window, are related; the bundle's own finding too.
  std::size_t expected = 0;
  for (const auto& f : sim.engine.list_findings()) {
    if (f.opened_at >= *b->window_end || (f.resolved_at && *f.resolved_at < b->window_start)) continue;
    ++expected;
    EXPECT_TRUE(std::any_of(b->related.begin(), b->related.end(), [&](const auto& r) { return r.id == f.id; }))
        << f.id;
  }
  EXPECT_EQ(b->related.size(), expected);
  EXPECT_TRUE(std::any_of(b->related.begin(), b->related.end(), [&](const auto& r) { return r.id == vm->id; }));
  EXPECT_TRUE(std::any_of(b->related.begin(), b->related.end(),
                          [](const auto& r) { return r.kind == FindingKind::kVcpuHostBlocked; }));
  EXPECT_LE(b->bytes, IncidentLimits{}.max_bundle_bytes);

  // The sink got each bundle when it opened and its final state; the last one for vm is complete.
  EXPECT_GE(sink.emits[vm->id], 2);
  ASSERT_NE(sink.last[vm->id], nullptr);
  EXPECT_TRUE(sink.last[vm->id]->complete());
  EXPECT_EQ(sink.last[vm->id]->vcpus.size(), b->vcpus.size());

  // Resolved: no more points.
  const auto before = rec.get(vm->id)->vcpus[0].points.size();
  sim.run(2s);
  EXPECT_EQ(rec.get(vm->id)->vcpus[0].points.size(), before);
  sim.engine.set_listener(nullptr);
}

// Hand-made findings and observations for the rule-by-rule tests.
struct Rig {
  ManualClock clock;
  IncidentLimits limits;
  std::unique_ptr<IncidentRecorder> rec;
  Sink sink;
  uint64_t revision = 0;

  explicit Rig(IncidentLimits l = {}) : limits(l), rec(std::make_unique<IncidentRecorder>(l)) { rec->set_sink(&sink); }
  Rig(const Rig&) = delete;
  Rig& operator=(const Rig&) = delete;

  Finding finding(const std::string& id, Severity sev, const std::string& domain = "vm1") {
    Finding f;
    f.id = id;
    f.kind = sev == Severity::kCritical ? FindingKind::kVcpuHostBlocked : FindingKind::kGuestIdleWithPendingWork;
    f.severity = sev;
    f.domain = domain;
    f.domain_uuid = "uuid-" + domain;
    f.cpus = {0};
    f.onset = clock.now() - 2s;
    f.opened_at = f.last_update = clock.now();
    f.summary = "finding " + id;
    return f;
  }
  void event(FindingEvent::Type type, Finding f) {
    if (type == FindingEvent::Type::kResolved) {
      f.active = false;
      f.resolved_at = clock.now();
    }
    f.last_update = clock.now();
    rec->on_finding_event(FindingEvent{type, ++revision, f, "k|" + f.id});
  }
  DomainObservation obs(const std::string& domain = "vm1", int vcpus = 2) {
    DomainObservation o;
    o.domain = {domain, "uuid-" + domain};
    for (int i = 0; i < vcpus; ++i) {
      VcpuHostView v;
      v.index = i;
      v.thread.tid = 100 + i;
      v.thread.name = "CPU " + std::to_string(i) + "/KVM";
      v.thread.state = ThreadState::kRunning;
      o.vcpus.push_back(v);
    }
    return o;
  }
  void tick(const DomainObservation& o) {
    clock.advance(100ms);
    rec->on_observation(o, clock.now(), nullptr);
  }
};

TEST(IncidentBundle, OnlyCriticalFindingsGetABundle) {
  Rig r;
  r.event(FindingEvent::Type::kOpened, r.finding("warn", Severity::kWarning));
  r.event(FindingEvent::Type::kOpened, r.finding("crit", Severity::kCritical));
  EXPECT_FALSE(r.rec->get("warn").has_value());
  ASSERT_TRUE(r.rec->get("crit").has_value());
  EXPECT_TRUE(r.rec->get("crit")->related.size() == 2u) << "the warning of the same domain is related";
  // A resolved critical finding never seen open gets none (nothing to record any more).
  Finding late = r.finding("late", Severity::kCritical);
  r.event(FindingEvent::Type::kResolved, late);
  EXPECT_FALSE(r.rec->get("late").has_value());
}

TEST(IncidentBundle, HostileSizesAreBoundedAndCounted) {
  IncidentLimits lim;
  lim.max_lanes = 8;
  lim.max_host_stacks = 3;
  lim.max_frames = 4;
  lim.max_printk_lines = 5;
  lim.max_line = 16;
  Rig r(lim);
  r.event(FindingEvent::Type::kOpened, r.finding("c", Severity::kCritical));
  DomainObservation o = r.obs("vm1", 100);  // 100 vCPUs, 8 lanes
  for (int i = 0; i < 10; ++i) {
    HostThreadView t;
    t.tid = 5000 + i;
    t.name = std::string(1000, 'n') + "\xff\xfe";
    t.state = ThreadState::kDiskSleep;
    t.host_stack.assign(100, std::string(10000, 'f'));
    o.other_threads.push_back(t);
  }
  GuestView g;
  g.running_clock_ns = 50ull << 30;
  for (int i = 0; i < 1000; ++i) {
    GuestCpuView c;
    c.cpu = i;
    c.current_comm = std::string(300, 'c');
    c.watchdog_touch_ts = UINT64_MAX;  // ahead of the clock: no age, not an overflow
    for (int t = 0; t < 100; ++t) c.cfd_requests.push_back({t, true, "f", 0, 0});
    g.cpus.push_back(c);
  }
  g.printk_tail.assign(1000, std::string(4096, 'p'));
  o.guest = g;
  r.tick(o);
  r.tick(o);
  auto b = r.rec->get("c");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->vcpus.size(), 8u);
  EXPECT_EQ(b->dropped.lanes, 92u);
  EXPECT_EQ(b->guest_cpus.size(), 8u);
  ASSERT_EQ(b->host_stacks.size(), 3u);
  EXPECT_EQ(b->dropped.host_stacks, 14u) << "7 threads over the cap, on each of two ticks";
  for (const auto& h : b->host_stacks) {
    EXPECT_EQ(h.frames.size(), 4u);
    EXPECT_LE(h.name.size(), 16u);
    for (const auto& f : h.frames) EXPECT_LE(f.size(), 16u);
  }
  EXPECT_EQ(b->printk_tail.size(), 5u);
  EXPECT_EQ(b->dropped.printk_lines, 995u);
  for (const auto& l : b->printk_tail) EXPECT_LE(l.size(), 16u);
  ASSERT_TRUE(b->at_worst.has_value());
  EXPECT_EQ(b->at_worst->cpus.size(), 8u);
  EXPECT_LE(b->at_worst->cpus[0].csd_targets.size(), 8u);
  EXPECT_FALSE(b->at_worst->cpus[0].watchdog_age.has_value());
  EXPECT_LE(b->bytes, lim.max_bundle_bytes);
}

TEST(IncidentBundle, ALongIncidentIsThinnedWithinItsBudgetAndKeepsItsEnds) {
  IncidentLimits lim;
  lim.max_bundle_bytes = 48 * 1024;
  Rig r(lim);
  const Finding f = r.finding("c", Severity::kCritical);
  r.event(FindingEvent::Type::kOpened, f);
  const Timestamp first = r.clock.now() + 100ms;
  for (int i = 0; i < 36000; ++i) r.tick(r.obs("vm1", 4));  // an hour at 10 Hz
  const Timestamp last = r.clock.now();
  auto b = r.rec->get("c");
  ASSERT_TRUE(b.has_value());
  EXPECT_LE(b->bytes, lim.max_bundle_bytes);
  EXPECT_GT(b->dropped.vcpu_points, 0u);
  EXPECT_GT(b->stride, 100ms);
  EXPECT_GE(r.rec->stats().thinnings, 1u);
  for (const auto& l : b->vcpus) {
    ASSERT_GE(l.points.size(), 2u);
    EXPECT_EQ(l.points.front().at, first) << "the start is kept";
    EXPECT_GE(l.points.back().at, last - 2 * b->stride) << "and the end, at the coarser grain";
  }
  r.event(FindingEvent::Type::kResolved, f);
  b = r.rec->get("c");
  EXPECT_TRUE(b->complete());
  EXPECT_LE(b->bytes, lim.max_bundle_bytes);
}

TEST(IncidentBundle, CapEvictsTheOldestCompletedAndRefusesWhenAllAreOpen) {
  IncidentLimits lim;
  lim.max_bundles = 2;
  Rig r(lim);
  const Finding a = r.finding("a", Severity::kCritical);
  const Finding b = r.finding("b", Severity::kCritical);
  r.event(FindingEvent::Type::kOpened, a);
  r.event(FindingEvent::Type::kOpened, b);
  r.event(FindingEvent::Type::kOpened, r.finding("c", Severity::kCritical));
  EXPECT_FALSE(r.rec->get("c").has_value());
  EXPECT_EQ(r.rec->stats().bundles_refused, 1u);
  r.event(FindingEvent::Type::kResolved, a);
  r.event(FindingEvent::Type::kOpened, r.finding("d", Severity::kCritical));
  EXPECT_FALSE(r.rec->get("a").has_value()) << "completed: evicted for room (the store keeps it)";
  EXPECT_TRUE(r.rec->get("b").has_value());
  EXPECT_TRUE(r.rec->get("d").has_value());
  EXPECT_EQ(r.rec->stats().bundles_evicted, 1u);
  EXPECT_EQ(r.rec->stats().bundles, 2u);
}

TEST(IncidentBundle, RelatedAreTheDomainsFindingsInTheWindow) {
  Rig r;
  Finding old = r.finding("old", Severity::kWarning);
  r.event(FindingEvent::Type::kOpened, old);
  r.event(FindingEvent::Type::kResolved, old);
  r.clock.advance(120s);  // resolved long before the next onset's window
  Finding recent = r.finding("recent", Severity::kWarning);
  r.event(FindingEvent::Type::kOpened, recent);
  r.event(FindingEvent::Type::kResolved, recent);
  r.clock.advance(10s);
  r.event(FindingEvent::Type::kOpened, r.finding("other-vm", Severity::kWarning, "vm2"));
  r.event(FindingEvent::Type::kOpened, r.finding("c", Severity::kCritical));
  r.event(FindingEvent::Type::kOpened, r.finding("later", Severity::kWarning));
  auto b = r.rec->get("c");
  ASSERT_TRUE(b.has_value());
  std::vector<std::string> ids;
  for (const auto& x : b->related) ids.push_back(x.id);
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<std::string>{"c", "later", "recent"}));
}

TEST(IncidentBundle, ARestoredBundleIsContinuedByItsFindingsUpdate) {
  Rig r;
  const Finding f = r.finding("c", Severity::kCritical);
  r.event(FindingEvent::Type::kOpened, f);
  for (int i = 0; i < 10; ++i) r.tick(r.obs());
  IncidentBundle saved = *r.rec->get("c");
  ASSERT_EQ(saved.vcpus.at(0).points.size(), 10u);

  Rig after;  // a new run
  after.clock.set(r.clock.now() + 5s);
  after.rec->restore({saved});
  after.event(FindingEvent::Type::kUpdated, f);
  after.tick(after.obs());
  auto b = after.rec->get("c");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->vcpus.at(0).points.size(), 11u) << "the points before the restart are kept";
  EXPECT_EQ(after.rec->stats().bundles_opened, 0u);
}

}  // namespace
}  // namespace stallmon::diagnosis::testing
