// SPDX-License-Identifier: Apache-2.0
// Issue 14 item 2 across a daemon restart, as the daemon wires it (agent/daemon/app.cc): the
// engine's events go to the recorder and the store, the recorder's bundles to the store; a new
// run restores the findings and the open bundles, and the restored finding's bundle goes on
// with its history from before the restart. The diagnosis Sim: simulated time, no sleeps.
#include <gtest/gtest.h>

#include <algorithm>

#include "incident_feed.h"
#include "store_fixture.h"

namespace stallmon::store::testing {
namespace {

using diagnosis::IncidentBundle;
using diagnosis::IncidentRecorder;
using diagnosis::ThreadState;
using diagnosis::testing::IncidentFeed;
using diagnosis::testing::Sim;

// The monitor's fan-out: the recorder first, then the store.
struct Fanout final : diagnosis::FindingListener {
  std::vector<diagnosis::FindingListener*> to;
  void on_finding_event(const FindingEvent& e) override {
    for (auto* l : to) l->on_finding_event(e);
  }
};

struct DaemonRun {
  std::unique_ptr<Sim> sim;
  std::unique_ptr<FindingDb> db;
  std::unique_ptr<IncidentRecorder> rec;
  Fanout fanout;
  std::unique_ptr<IncidentFeed> feed;

  DaemonRun(const std::string& path, Timestamp at) : sim(std::make_unique<Sim>(4)), rec(std::make_unique<IncidentRecorder>(diagnosis::IncidentLimits{})) {
    sim->clock.set(at);
    StoreOptions o;
    o.path = path;
    auto d = FindingDb::open(o, sim->clock);
    EXPECT_TRUE(d.ok()) << d.error().to_string();
    if (!d.ok()) return;
    db = std::move(*d);
    const auto& c = sim->engine.config();
    auto loaded = db->load(c.max_resolved_history, c.max_event_log);
    EXPECT_TRUE(loaded.ok());
    if (!loaded.ok()) return;
    EXPECT_TRUE(sim->engine.restore(std::move(loaded->findings)).ok());
    auto open = db->load_open_incidents(32);
    EXPECT_TRUE(open.ok());
    if (open.ok()) rec->restore(std::move(*open));
    rec->set_sink(db.get());
    fanout.to = {rec.get(), db.get()};
    sim->engine.set_listener(&fanout);
    feed = std::make_unique<IncidentFeed>(*sim, *rec);
  }
  // A clean stop, in the daemon's order.
  void stop() {
    feed->feed();
    feed.reset();
    sim->engine.set_listener(nullptr);
    rec->emit_open();
    rec->set_sink(nullptr);
    db->stop();
  }
};

const std::vector<std::string> kFrozen = {"__refrigerator", "get_signal"};

TEST(IncidentRestart, AnOpenBundleContinuesAcrossACleanRestart) {
  TempDir dir;
  const std::string path = dir.file("findings.db");
  std::string id;
  Timestamp stopped_at;
  std::size_t points_before = 0;
  {
    DaemonRun r(path, Timestamp(std::chrono::seconds(1'700'000'000)));
    ASSERT_TRUE(r.db);
    r.sim->run(3s);
    r.sim->vcpus[2].block(ThreadState::kDiskSleep, "__refrigerator", kFrozen);
    r.sim->run(3s);
    auto active = r.sim->active(FindingKind::kVcpuHostBlocked);
    ASSERT_EQ(active.size(), 1u);
    id = active[0].id;
    auto b = r.rec->get(id);
    ASSERT_TRUE(b.has_value());
    points_before = b->vcpus.at(2).points.size();
    ASSERT_GE(points_before, 50u) << "3 s before the freeze and 3 s since, at 10 Hz";
    stopped_at = r.sim->clock.now();
    r.stop();
  }
  {
    // The stored state is the last one: nothing of the first run was lost.
    diagnosis::ManualClock clock(stopped_at);
    auto db = FindingDb::open(StoreOptions{path}, clock);
    ASSERT_TRUE(db.ok());
    auto stored = (*db)->incident(id);
    ASSERT_TRUE(stored.ok()) << stored.error().to_string();
    EXPECT_FALSE(stored->complete());
    EXPECT_GE(stored->vcpus.at(2).points.size(), points_before);
    (*db)->stop();
  }

  DaemonRun r(path, stopped_at + 5s);
  ASSERT_TRUE(r.db);
  r.sim->vcpus[2].block(ThreadState::kDiskSleep, "__refrigerator", kFrozen);  // still frozen
  r.sim->run(2s);
  ASSERT_EQ(r.sim->active(FindingKind::kVcpuHostBlocked).size(), 1u);
  ASSERT_EQ(r.sim->active(FindingKind::kVcpuHostBlocked)[0].id, id) << "continued, not reopened";
  r.sim->vcpus[2].run(0.5);
  r.sim->run(2s);
  ASSERT_TRUE(r.sim->active(FindingKind::kVcpuHostBlocked).empty());
  auto b = r.rec->get(id);
  ASSERT_TRUE(b.has_value());
  EXPECT_TRUE(b->complete());
  EXPECT_EQ(r.rec->stats().bundles_opened, 0u) << "the restored bundle went on; none was opened";
  const auto& lane = b->vcpus.at(2).points;
  const auto before = std::count_if(lane.begin(), lane.end(), [&](const auto& p) { return p.at <= stopped_at; });
  const auto after = std::count_if(lane.begin(), lane.end(), [&](const auto& p) { return p.at > stopped_at + 5s; });
  EXPECT_GE(static_cast<std::size_t>(before), points_before) << "the first run's history is kept";
  EXPECT_GE(after, 15) << "and the second run's is added";
  EXPECT_TRUE(std::is_sorted(lane.begin(), lane.end(), [](const auto& x, const auto& y) { return x.at < y.at; }));
  r.stop();

  diagnosis::ManualClock clock(stopped_at + 10s);
  auto db = FindingDb::open(StoreOptions{path}, clock);
  ASSERT_TRUE(db.ok());
  auto stored = (*db)->incident(id);
  ASSERT_TRUE(stored.ok());
  EXPECT_TRUE(stored->complete()) << "the resolution reached the store";
  auto open = (*db)->load_open_incidents(32);
  ASSERT_TRUE(open.ok());
  EXPECT_TRUE(open->empty());
  (*db)->stop();
}

}  // namespace
}  // namespace stallmon::store::testing
