// SPDX-License-Identifier: Apache-2.0
// Incident bundles in the store (issue 14 item 2): the codec round-trips a bundle and bounds
// hostile rows; FindingDb keeps the newest state of each bundle across a restart, serves it by
// finding id, hands the open ones back for the recorder, and deletes a bundle with its finding.
#include <gtest/gtest.h>

#include <string>

#include "codec.h"
#include "store_fixture.h"

namespace stallmon::store::testing {
namespace {

using T = FindingEvent::Type;
using diagnosis::IncidentBundle;

IncidentBundle bundle(const Finding& f, int points) {
  IncidentBundle b;
  b.finding = f;
  b.window_start = f.onset - 60s;
  if (!f.active) b.window_end = f.resolved_at;
  for (int v = 0; v < 2; ++v) {
    diagnosis::IncidentVcpuLane lane{v, 100 + v, {}};
    for (int i = 0; i < points; ++i) {
      lane.points.push_back({b.window_start + i * 100ms, i % 3 == 0 ? diagnosis::ThreadState::kStopped
                                                                    : diagnosis::ThreadState::kRunning,
                             i * 1ms, i * 2us});
    }
    b.vcpus.push_back(lane);
    diagnosis::IncidentGuestLane g{v, {}};
    g.points.push_back({b.window_start, true, v == 1, v == 0 ? 1 : -1, 3s});
    g.points.push_back({b.window_start + 1s, false, false, -1, std::nullopt});
    b.guest_cpus.push_back(g);
  }
  diagnosis::IncidentSnapshot s;
  s.at = f.onset;
  s.running_clock_ns = 123ull << 30;
  s.watchdog_thresh = 10;
  s.cpus.push_back({0, true, false, 42, "tlb_shootdown", 2, 1, {1}, 4s});
  s.troubled_cpus = 1;
  s.max_watchdog_age = 4s;
  b.at_onset = s;
  b.at_worst = s;
  b.printk_tail = {"[  1.0] hello", "[  2.0] world"};
  b.host_stacks.push_back({18001, 1, "CPU 1/KVM", diagnosis::ThreadState::kStopped, "do_signal_stop",
                           {"do_signal_stop", "get_signal"}, f.onset, f.onset + 1s});
  b.related.push_back({f.id, f.kind, f.severity, f.onset, f.resolved_at, {0, 1}, "the stop"});
  b.stride = 200ms;
  b.dropped = {1, 2, 3, 4, 5, 6};
  return b;
}

StoreOptions options(const TempDir& dir) {
  StoreOptions o;
  o.path = dir.file("findings.db");
  return o;
}

TEST(IncidentCodec, EveryFieldRoundTrips) {
  diagnosis::ManualClock clock;
  Finding f = finding("vm1/VM_WIDE_STALL/vm/1", FindingKind::kVmWideStall, clock.now(), false);
  const IncidentBundle b = bundle(f, 50);
  auto text = encode_incident(b);
  ASSERT_TRUE(text.ok()) << text.error().to_string();
  auto back = decode_incident(*text);
  ASSERT_TRUE(back.ok()) << back.error().to_string();
  EXPECT_EQ(back->finding.id, f.id);
  EXPECT_EQ(back->window_start, b.window_start);
  EXPECT_EQ(back->window_end, b.window_end);
  ASSERT_EQ(back->vcpus.size(), 2u);
  ASSERT_EQ(back->vcpus[1].points.size(), 50u);
  EXPECT_EQ(back->vcpus[1].tid, 101);
  EXPECT_EQ(back->vcpus[1].points[3].state, diagnosis::ThreadState::kStopped);
  EXPECT_EQ(back->vcpus[1].points[49].run_time, 49ms);
  EXPECT_EQ(back->vcpus[1].points[49].run_delay, 98us);
  ASSERT_EQ(back->guest_cpus.size(), 2u);
  EXPECT_EQ(back->guest_cpus[0].points[0].csd_target, 1);
  EXPECT_EQ(back->guest_cpus[0].points[0].watchdog_age, 3s);
  EXPECT_TRUE(back->guest_cpus[1].points[0].idle);
  EXPECT_FALSE(back->guest_cpus[1].points[1].online);
  EXPECT_FALSE(back->guest_cpus[1].points[1].watchdog_age.has_value());
  ASSERT_TRUE(back->at_worst.has_value());
  EXPECT_EQ(back->at_worst->cpus.at(0).comm, "tlb_shootdown");
  EXPECT_EQ(back->at_worst->cpus.at(0).csd_targets, std::vector<int>{1});
  EXPECT_EQ(back->at_worst->running_clock_ns, 123ull << 30);
  EXPECT_EQ(back->printk_tail, b.printk_tail);
  ASSERT_EQ(back->host_stacks.size(), 1u);
  EXPECT_EQ(back->host_stacks[0].frames, (std::vector<std::string>{"do_signal_stop", "get_signal"}));
  EXPECT_EQ(back->host_stacks[0].state, diagnosis::ThreadState::kStopped);
  ASSERT_EQ(back->related.size(), 1u);
  EXPECT_EQ(back->related[0].cpus, (std::vector<int>{0, 1}));
  EXPECT_EQ(back->stride, 200ms);
  EXPECT_EQ(back->dropped.related, 6u);
  EXPECT_EQ(back->dropped.vcpu_points, 1u);
}

TEST(IncidentCodec, HostileRowsAreErrorValues) {
  diagnosis::ManualClock clock;
  const IncidentBundle b = bundle(finding("x/1", FindingKind::kVmWideStall, clock.now()), 3);
  const std::string good = *encode_incident(b);
  for (const std::string& bad : {std::string("not json"), std::string("[]"), std::string("{}"),
                                 // a point of the wrong shape, a thread state out of range
                                 std::string(good).replace(good.find("\"points\":[[") + 11, 0, "1,"),
                                 std::string(std::string(kMaxIncidentBody + 1, ' '))}) {
    auto r = decode_incident(bad);
    EXPECT_FALSE(r.ok()) << bad.substr(0, 80);
    if (!r.ok()) {
      EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
    }
  }
  std::string state = good;
  // JSON objects come out with sorted keys: the vCPU lanes are after the guest lanes.
  const auto at = state.find("\"points\":[[", state.find("\"vcpus\":"));
  ASSERT_NE(at, std::string::npos);
  // [t, state, run, delay]: the state of the first point becomes 99.
  const auto comma = state.find(',', at + 11);
  const auto comma2 = state.find(',', comma + 1);
  state.replace(comma + 1, comma2 - comma - 1, "99");
  EXPECT_FALSE(decode_incident(state).ok());
}

TEST(IncidentStore, BundlesSurviveARestartAndGoWithTheirFinding) {
  TempDir dir;
  diagnosis::ManualClock clock;
  StoreOptions o = options(dir);
  o.max_age = std::chrono::hours(24);
  const Timestamp t0 = clock.now();
  const Finding open = finding("vm1/VM_WIDE_STALL/vm/1", FindingKind::kVmWideStall, t0);
  Finding done = finding("vm1/VCPU_HOST_BLOCKED/vcpu1/2", FindingKind::kVcpuHostBlocked, t0, false);
  {
    auto db = FindingDb::open(o, clock);
    ASSERT_TRUE(db.ok()) << db.error().to_string();
    (*db)->on_finding_event(event(T::kOpened, 1, open, "a"));
    (*db)->on_finding_event(event(T::kResolved, 2, done, "b"));
    (*db)->on_incident(std::make_shared<IncidentBundle>(bundle(open, 10)));
    (*db)->on_incident(std::make_shared<IncidentBundle>(bundle(open, 20)));  // replaces the waiting one
    (*db)->on_incident(std::make_shared<IncidentBundle>(bundle(done, 5)));
    (*db)->stop();
    EXPECT_EQ((*db)->stats().incidents_written, 2u);
    EXPECT_EQ((*db)->stats().incidents_dropped, 0u);
  }
  EXPECT_EQ(sql_int(o.path, "SELECT count(*) FROM incidents"), 2);

  auto db = FindingDb::open(o, clock);
  ASSERT_TRUE(db.ok()) << db.error().to_string();
  auto got = (*db)->incident(open.id);
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(got->vcpus.at(0).points.size(), 20u) << "the newest state";
  EXPECT_FALSE(got->complete());
  std::size_t skipped = 0;
  auto opened = (*db)->load_open_incidents(10, &skipped);
  ASSERT_TRUE(opened.ok());
  ASSERT_EQ(opened->size(), 1u) << "the complete bundle is not continued";
  EXPECT_EQ(opened->at(0).finding.id, open.id);
  EXPECT_EQ(skipped, 0u);
  EXPECT_EQ((*db)->incident("nope").error().code, ErrorCode::kNotFound);

  // The resolved finding ages out: its bundle goes with it; the active one's stays.
  clock.advance(std::chrono::hours(25));
  ASSERT_TRUE((*db)->enforce_retention().ok());
  EXPECT_EQ((*db)->incident(done.id).error().code, ErrorCode::kNotFound);
  EXPECT_TRUE((*db)->incident(open.id).ok());
  (*db)->stop();
}

TEST(IncidentStore, TheQueueIsBoundedAndCountsWhatItDrops) {
  TempDir dir;
  diagnosis::ManualClock clock;
  StoreOptions o = options(dir);
  o.incident_queue_max = 3;
  auto db = FindingDb::open(o, clock);
  ASSERT_TRUE(db.ok());
  for (int i = 0; i < 5; ++i) {
    const Finding f = finding("vm1/VM_WIDE_STALL/vm/" + std::to_string(i + 1), FindingKind::kVmWideStall, clock.now());
    (*db)->on_finding_event(event(T::kOpened, static_cast<uint64_t>(i + 1), f, "k" + std::to_string(i)));
    (*db)->on_incident(std::make_shared<IncidentBundle>(bundle(f, 2)));
  }
  ASSERT_TRUE((*db)->flush().ok());
  EXPECT_EQ((*db)->stats().incidents_dropped, 2u);
  EXPECT_EQ((*db)->stats().incidents_written, 3u);
  EXPECT_EQ((*db)->incident("vm1/VM_WIDE_STALL/vm/1").error().code, ErrorCode::kNotFound) << "the oldest went";
  EXPECT_TRUE((*db)->incident("vm1/VM_WIDE_STALL/vm/5").ok());
  (*db)->stop();
}

TEST(IncidentStore, AStoreFromBeforeIncidentsGainsTheTable) {
  TempDir dir;
  diagnosis::ManualClock clock;
  StoreOptions o = options(dir);
  {
    auto db = FindingDb::open(o, clock);
    ASSERT_TRUE(db.ok());
    (*db)->stop();
  }
  // An item-1 store: no incidents table.
  ASSERT_EQ(sql_int(o.path, "SELECT count(*) FROM sqlite_schema WHERE name = 'incidents'"), 1);
  {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(o.path.c_str(), &raw), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(raw, "DROP TABLE incidents", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(raw);
  }
  ASSERT_EQ(sql_int(o.path, "SELECT count(*) FROM sqlite_schema WHERE name = 'incidents'"), 0);
  auto db = FindingDb::open(o, clock);
  ASSERT_TRUE(db.ok()) << db.error().to_string();
  EXPECT_EQ((*db)->incident("x").error().code, ErrorCode::kNotFound);
  (*db)->stop();
}

}  // namespace
}  // namespace stallmon::store::testing
