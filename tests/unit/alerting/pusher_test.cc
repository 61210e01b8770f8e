// SPDX-License-Identifier: Apache-2.0
// The pusher driven step by step with a ManualClock and a recording transport: no threads, no
// sleeps, no network.
#include "stallmon/alerting/pusher.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../diagnosis/fault_scenarios.h"

namespace stallmon::alerting {
namespace {

using namespace std::chrono_literals;
using diagnosis::Finding;
using diagnosis::FindingEvent;

class RecordingTransport final : public AlertTransport {
 public:
  Result<void> post(const std::string& url, const std::string& json) override {
    posts.push_back({url, nlohmann::json::parse(json)});
    if (fail_urls.count(url)) return Error(ErrorCode::kIo, "connection refused");
    return Ok();
  }
  struct Post {
    std::string url;
    nlohmann::json body;
  };
  std::vector<Post> posts;
  std::set<std::string> fail_urls;
};

class PusherTest : public ::testing::Test {
 protected:
  PusherTest() { make({"http://am1:9093"}); }

  // Settle 0 for the delivery tests; the incident tests below use the defaults.
  void make(std::vector<std::string> urls, size_t queue = 1024, diagnosis::Duration settle = 0s) {
    PusherOptions o;
    o.urls = std::move(urls);
    o.alert.host = "hv1";
    o.queue_capacity = queue;
    o.root_settle = settle;
    pusher = std::make_unique<AlertPusher>(o, transport, clock, [this] { return active; });
  }

  Finding finding(const std::string& id, diagnosis::Severity sev = diagnosis::Severity::kCritical) {
    Finding f;
    f.id = id;
    f.kind = diagnosis::FindingKind::kVcpuHostBlocked;
    f.severity = sev;
    f.cause = diagnosis::Cause::kHostBlocked;
    f.domain = "vm1";
    f.cpus = {2};
    f.onset = clock.now() - 600ms;
    f.opened_at = f.last_update = clock.now();
    f.summary = "vCPU 2 blocked";
    return f;
  }
  void event(FindingEvent::Type type, const Finding& f) {
    FindingEvent e;
    e.type = type;
    e.revision = ++revision;
    e.finding = f;
    pusher->on_finding_event(e);
  }
  // Alerts of the last POST to `url`, by finding_id.
  std::map<std::string, nlohmann::json> last(const std::string& url = "http://am1:9093") {
    std::map<std::string, nlohmann::json> out;
    for (auto it = transport.posts.rbegin(); it != transport.posts.rend(); ++it) {
      if (it->url != url) continue;
      for (const auto& a : it->body) out[a["labels"]["finding_id"]] = a;
      break;
    }
    return out;
  }

  diagnosis::ManualClock clock;
  RecordingTransport transport;
  std::vector<Finding> active;
  std::unique_ptr<AlertPusher> pusher;
  uint64_t revision = 0;
};

TEST_F(PusherTest, NothingToSendNoPost) {
  pusher->step();
  EXPECT_TRUE(transport.posts.empty());
}

TEST_F(PusherTest, OpenedIsPostedAtOnceWithEndsAtMargin) {
  pusher->step();
  auto f = finding("vm1/VCPU_HOST_BLOCKED/2/1");
  event(FindingEvent::Type::kOpened, f);
  pusher->step();
  ASSERT_EQ(transport.posts.size(), 1u);
  auto a = last().at(f.id);
  EXPECT_EQ(a["labels"]["alertname"], "StallmonVcpuHostBlocked");
  EXPECT_EQ(a["labels"]["host"], "hv1");
  EXPECT_EQ(a["endsAt"], format_rfc3339(clock.now() + 2min));
  EXPECT_EQ(a["startsAt"], format_rfc3339(f.onset));
}

TEST_F(PusherTest, ResentWhileActiveThenResolvedWithResolutionTime) {
  auto f = finding("vm1/VCPU_HOST_BLOCKED/2/1");
  active = {f};
  pusher->step();  // first step resyncs from the engine
  ASSERT_EQ(transport.posts.size(), 1u);
  clock.advance(10s);
  pusher->step();
  EXPECT_EQ(transport.posts.size(), 1u) << "not due yet";
  clock.advance(21s);
  auto next = pusher->step();
  ASSERT_EQ(transport.posts.size(), 2u) << "re-sent after resend_interval";
  EXPECT_EQ(last().at(f.id)["endsAt"], format_rfc3339(clock.now() + 2min));
  EXPECT_EQ(next, clock.now() + 30s);

  clock.advance(1s);
  f.active = false;
  f.resolved_at = clock.now() - 200ms;
  active.clear();
  event(FindingEvent::Type::kResolved, f);
  pusher->step();
  ASSERT_EQ(transport.posts.size(), 3u);
  EXPECT_EQ(last().at(f.id)["endsAt"], format_rfc3339(*f.resolved_at));
  // Delivered: not sent again.
  clock.advance(31s);
  pusher->step();
  EXPECT_EQ(transport.posts.size(), 3u);
  EXPECT_EQ(pusher->stats().pending_resolutions, 0u);
}

TEST_F(PusherTest, FailedPostBacksOffExponentiallyAndKeepsResolution) {
  transport.fail_urls = {"http://am1:9093"};
  auto f = finding("a");
  event(FindingEvent::Type::kOpened, f);
  pusher->step();
  ASSERT_EQ(transport.posts.size(), 1u);
  // Backoff 1 s, 2 s, 4 s: a new event does not bypass it.
  event(FindingEvent::Type::kUpdated, f);
  clock.advance(500ms);
  pusher->step();
  EXPECT_EQ(transport.posts.size(), 1u);
  clock.advance(500ms);
  pusher->step();
  EXPECT_EQ(transport.posts.size(), 2u);
  clock.advance(1900ms);
  pusher->step();
  EXPECT_EQ(transport.posts.size(), 2u);
  clock.advance(100ms);
  pusher->step();
  EXPECT_EQ(transport.posts.size(), 3u);
  EXPECT_EQ(pusher->stats().targets[0].consecutive_failures, 3u);

  // Resolved while the Alertmanager is down: the resolution waits for it.
  f.active = false;
  f.resolved_at = clock.now();
  event(FindingEvent::Type::kResolved, f);
  transport.fail_urls.clear();
  clock.advance(4s);
  pusher->step();
  ASSERT_EQ(transport.posts.size(), 4u);
  EXPECT_EQ(last().at("a")["endsAt"], format_rfc3339(*f.resolved_at));
  EXPECT_EQ(pusher->stats().targets[0].consecutive_failures, 0u);
}

TEST_F(PusherTest, EveryUrlGetsEveryAlertIndependently) {
  make({"http://am1:9093", "http://am2:9093"});
  transport.fail_urls = {"http://am2:9093"};
  auto f = finding("a");
  event(FindingEvent::Type::kOpened, f);
  pusher->step();
  f.active = false;
  f.resolved_at = clock.now();
  event(FindingEvent::Type::kResolved, f);
  pusher->step();
  // am1 has the resolution; am2 failed twice... and gets it once it is back.
  EXPECT_EQ(last("http://am1:9093").at("a")["endsAt"], format_rfc3339(*f.resolved_at));
  EXPECT_EQ(pusher->stats().pending_resolutions, 1u);
  transport.fail_urls.clear();
  clock.advance(1s);
  pusher->step();
  EXPECT_EQ(last("http://am2:9093").at("a")["endsAt"], format_rfc3339(*f.resolved_at));
  EXPECT_EQ(pusher->stats().pending_resolutions, 0u);
}

TEST_F(PusherTest, SeverityChangeResolvesTheOldLabelSet) {
  auto f = finding("a", diagnosis::Severity::kWarning);
  event(FindingEvent::Type::kOpened, f);
  pusher->step();
  clock.advance(1s);
  f.severity = diagnosis::Severity::kCritical;
  f.last_update = clock.now();
  event(FindingEvent::Type::kUpdated, f);
  pusher->step();
  const auto& body = transport.posts.back().body;
  ASSERT_EQ(body.size(), 2u);
  int resolved_warning = 0, active_critical = 0;
  for (const auto& a : body) {
    if (a["labels"]["severity"] == "warning" && a["endsAt"] == format_rfc3339(clock.now())) {
      ++resolved_warning;
    }
    if (a["labels"]["severity"] == "critical" &&
        a["endsAt"] == format_rfc3339(clock.now() + 2min)) {
      ++active_critical;
    }
  }
  EXPECT_EQ(resolved_warning, 1);
  EXPECT_EQ(active_critical, 1);
}

TEST_F(PusherTest, FullQueueDropsOldestCountsAndResyncs) {
  make({"http://am1:9093"}, /*queue=*/2);
  pusher->step();
  auto a = finding("a"), b = finding("b"), c = finding("c");
  event(FindingEvent::Type::kOpened, a);
  event(FindingEvent::Type::kOpened, b);
  event(FindingEvent::Type::kOpened, c);  // drops a's event
  EXPECT_EQ(pusher->stats().events_dropped, 1u);
  active = {a, b, c};
  pusher->step();  // resync brings a back
  EXPECT_EQ(last().size(), 3u);
  EXPECT_EQ(pusher->stats().resyncs, 2u);
}

TEST_F(PusherTest, ResyncResolvesFindingsTheEngineNoLongerHas) {
  active = {finding("a")};
  pusher->step();
  active.clear();
  clock.advance(30s);
  pusher->step();  // periodic resync: "a" is gone (its RESOLVED event was never seen)
  EXPECT_EQ(last().at("a")["endsAt"], format_rfc3339(clock.now()));
}

TEST_F(PusherTest, StaleUpdateDoesNotGoBackInTime) {
  auto f = finding("a");
  f.summary = "new";
  f.last_update = clock.now();
  active = {f};
  pusher->step();
  auto old = f;
  old.summary = "old";
  old.last_update = clock.now() - 1s;
  event(FindingEvent::Type::kUpdated, old);
  pusher->step();
  EXPECT_EQ(last().at("a")["annotations"]["summary"], "new");
}

TEST_F(PusherTest, AnnotationUpdatesWaitForTheNextResend) {
  auto f = finding("a");
  event(FindingEvent::Type::kOpened, f);
  pusher->step();
  ASSERT_EQ(transport.posts.size(), 1u);
  clock.advance(1s);
  f.summary = "vCPU 2 blocked for longer";
  f.last_update = clock.now();
  event(FindingEvent::Type::kUpdated, f);
  pusher->step();
  EXPECT_EQ(transport.posts.size(), 1u) << "same label set: no extra POST";
  clock.advance(29s);
  pusher->step();
  ASSERT_EQ(transport.posts.size(), 2u);
  EXPECT_EQ(last().at("a")["annotations"]["summary"], "vCPU 2 blocked for longer");
}

TEST_F(PusherTest, MetricsOfThePusher) {
  event(FindingEvent::Type::kOpened, finding("a"));
  pusher->step();
  ExpositionWriter w;
  pusher->write_metrics(w);
  ASSERT_TRUE(w.ok()) << w.error();
  EXPECT_NE(w.text().find("stallmon_alertmanager_posts_total{url=\"http://am1:9093\",result=\"success\"} 1"),
            std::string::npos);
  EXPECT_NE(w.text().find("stallmon_alertmanager_events_dropped_total 0"), std::string::npos);
}

// --- Incidents: one fault, one alert -------------------------------------------------------

namespace {

Finding symptom_of(Finding f, const std::string& root) {
  f.incident_id = root;
  f.explained_by = root;
  return f;
}

std::set<std::string> ids_ever_posted(const RecordingTransport& t) {
  std::set<std::string> ids;
  for (const auto& p : t.posts)
    for (const auto& a : p.body) ids.insert(a["labels"]["finding_id"].get<std::string>());
  return ids;
}

}  // namespace

TEST_F(PusherTest, OnlyTheIncidentRootIsAnAlertWithItsSymptomsSummarised) {
  make({"http://am1:9093"}, 1024, PusherOptions{}.root_settle);
  auto root = finding("vm1/VM_WIDE_STALL/vm/1");
  root.kind = diagnosis::FindingKind::kVmWideStall;
  root.incident_id = root.id;
  root.symptom_ids = {"vm1/GUEST_IPI_STALL/root=cpu1/3", "vm1/VCPU_HOST_BLOCKED/vcpu0/2"};
  auto blocked = symptom_of(finding("vm1/VCPU_HOST_BLOCKED/vcpu0/2"), root.id);
  auto ipi = symptom_of(finding("vm1/GUEST_IPI_STALL/root=cpu1/3"), root.id);
  ipi.kind = diagnosis::FindingKind::kGuestIpiStall;
  ipi.summary = "CPU0 has waited 6.1 s for CPU1";
  for (const auto& f : {blocked, root, ipi}) event(FindingEvent::Type::kOpened, f);
  pusher->step();
  EXPECT_TRUE(transport.posts.empty()) << "a root waits for its settle (1 s)";
  clock.advance(1s);
  pusher->step();
  ASSERT_EQ(transport.posts.size(), 1u);
  auto alerts = last();
  ASSERT_EQ(alerts.size(), 1u);
  const auto& a = alerts.at(root.id);
  EXPECT_EQ(a["labels"]["kind"], "VM_WIDE_STALL");
  EXPECT_EQ(a["labels"]["incident_role"], "root");
  EXPECT_EQ(a["annotations"]["symptom_count"], "2");
  const std::string sym = a["annotations"]["symptoms"];
  EXPECT_NE(sym.find("2 symptoms (1 GUEST_IPI_STALL, 1 VCPU_HOST_BLOCKED)"), std::string::npos) << sym;
  EXPECT_NE(sym.find("- GUEST_IPI_STALL cpus 2: CPU0 has waited 6.1 s for CPU1"), std::string::npos) << sym;
  EXPECT_EQ(pusher->stats().active_alerts, 1u);
}

TEST_F(PusherTest, ASymptomOpenedBeforeItsRootNeverPages) {
  make({"http://am1:9093"}, 1024, PusherOptions{}.root_settle);
  // The IPI wait opens a tick before the VM-wide stall it turns out to be part of.
  auto ipi = finding("vm1/GUEST_IPI_STALL/root=cpu1/3");
  ipi.kind = diagnosis::FindingKind::kGuestIpiStall;
  ipi.incident_id = ipi.id;
  event(FindingEvent::Type::kOpened, ipi);
  pusher->step();
  clock.advance(100ms);
  auto root = finding("vm1/VM_WIDE_STALL/vm/4");
  root.kind = diagnosis::FindingKind::kVmWideStall;
  root.incident_id = root.id;
  root.symptom_ids = {ipi.id};
  ipi = symptom_of(ipi, root.id);
  ipi.last_update = clock.now();
  event(FindingEvent::Type::kOpened, root);
  event(FindingEvent::Type::kUpdated, ipi);
  for (int i = 0; i < 50; ++i) {
    clock.advance(100ms);
    pusher->step();
  }
  EXPECT_EQ(ids_ever_posted(transport), std::set<std::string>{root.id});
}

TEST_F(PusherTest, AnAlertedRootThatBecomesASymptomIsResolved) {
  auto early = finding("a");
  early.incident_id = "a";
  event(FindingEvent::Type::kOpened, early);
  pusher->step();
  ASSERT_EQ(last().size(), 1u);
  clock.advance(2s);
  auto root = finding("r");
  root.incident_id = "r";
  root.symptom_ids = {"a"};
  auto later = symptom_of(early, "r");
  later.last_update = clock.now();
  event(FindingEvent::Type::kOpened, root);
  event(FindingEvent::Type::kUpdated, later);
  pusher->step();
  auto alerts = last();
  ASSERT_EQ(alerts.size(), 2u);
  EXPECT_EQ(alerts.at("a")["endsAt"], format_rfc3339(clock.now())) << "resolved now";
  EXPECT_EQ(alerts.at("r")["annotations"]["symptom_count"], "1");
}

TEST_F(PusherTest, AnUndeterminedRootWaitsForItsCause) {
  make({"http://am1:9093"}, 1024, PusherOptions{}.root_settle);
  auto ipi = finding("ipi");
  ipi.cause = diagnosis::Cause::kUnknown;
  ipi.cause_evaluating = true;
  event(FindingEvent::Type::kOpened, ipi);
  auto stuck = finding("stuck");
  stuck.cause = diagnosis::Cause::kUnknown;
  stuck.cause_evaluating = true;
  event(FindingEvent::Type::kOpened, stuck);
  pusher->step();
  clock.advance(4s);
  pusher->step();
  EXPECT_TRUE(transport.posts.empty()) << "settled, but the cause is undetermined";
  ipi.cause = diagnosis::Cause::kGuestOther;
  ipi.cause_evaluating = false;
  ipi.last_update = clock.now();
  event(FindingEvent::Type::kUpdated, ipi);
  pusher->step();
  EXPECT_EQ(ids_ever_posted(transport), std::set<std::string>{"ipi"});
  // Undetermined for undetermined_max_wait (15 s): a real stall must page anyway.
  clock.advance(11s);
  pusher->step();
  EXPECT_EQ(ids_ever_posted(transport), (std::set<std::string>{"ipi", "stuck"}));
  EXPECT_EQ(last().at("stuck")["annotations"]["cause_evaluating"], "true");
}

TEST_F(PusherTest, ARootResolvedWithinItsSettleNeverPages) {
  make({"http://am1:9093"}, 1024, PusherOptions{}.root_settle);
  auto f = finding("blip");
  event(FindingEvent::Type::kOpened, f);
  pusher->step();
  clock.advance(500ms);
  f.active = false;
  f.resolved_at = clock.now();
  event(FindingEvent::Type::kResolved, f);
  pusher->step();
  clock.advance(5s);
  pusher->step();
  EXPECT_TRUE(transport.posts.empty());
}

// The engine's own events for the measured cases of issue 15, through the pusher.
class EnginePusherTest : public ::testing::Test {
 protected:
  EnginePusherTest() : sim(4), load(sim) {
    PusherOptions o;
    o.urls = {"http://am1:9093"};
    o.alert.host = "hv1";
    pusher = std::make_unique<AlertPusher>(o, transport, sim.clock,
                                           [this] { return sim.engine.active_findings(); });
    sim.engine.set_listener(pusher.get());
  }
  ~EnginePusherTest() override { sim.engine.set_listener(nullptr); }
  void run(diagnosis::Duration d) {
    for (diagnosis::Duration t{0}; t < d; t += diagnosis::testing::kTick) {
      sim.tick();
      pusher->step();
    }
  }
  // Alerts firing in the last POST (endsAt in the future).
  std::set<std::string> firing() {
    std::set<std::string> ids;
    if (transport.posts.empty()) return ids;
    for (const auto& a : transport.posts.back().body)
      if (a["endsAt"].get<std::string>() > format_rfc3339(sim.clock.now())) ids.insert(a["labels"]["finding_id"]);
    return ids;
  }

  diagnosis::testing::Sim sim;
  diagnosis::testing::IpiLoad load;
  RecordingTransport transport;
  std::unique_ptr<AlertPusher> pusher;
};

TEST_F(EnginePusherTest, ThrottledVcpuUnderIpiLoadPagesOnceForTheStarvation) {
  run(10s);
  load.throttle(3);
  run(12s);
  const auto starved = sim.active(diagnosis::FindingKind::kVcpuHostStarved);
  ASSERT_EQ(starved.size(), 1u);
  EXPECT_EQ(ids_ever_posted(transport), std::set<std::string>{starved[0].id});
  EXPECT_EQ(firing(), std::set<std::string>{starved[0].id});
  const auto alert = transport.posts.back().body.at(0);
  EXPECT_NE(alert["annotations"]["symptoms"].get<std::string>().find("GUEST_IPI_STALL cpus"), std::string::npos)
      << alert.dump();
  load.unthrottle(3);
  run(20s);
  EXPECT_EQ(ids_ever_posted(transport), std::set<std::string>{starved[0].id});
  EXPECT_TRUE(firing().empty());
}

TEST_F(EnginePusherTest, WholeQemuStoppedPagesOnceForTheVmWideStall) {
  run(10s);
  load.sigstop();
  run(6s);
  const auto vm = sim.active(diagnosis::FindingKind::kVmWideStall);
  ASSERT_EQ(vm.size(), 1u);
  EXPECT_EQ(ids_ever_posted(transport), std::set<std::string>{vm[0].id});
  const auto alert = transport.posts.back().body.at(0);
  EXPECT_EQ(alert["annotations"]["symptom_count"], "5") << alert.dump();
  EXPECT_NE(alert["annotations"]["symptoms"].get<std::string>().find("1 GUEST_IPI_STALL, 4 VCPU_HOST_BLOCKED"),
            std::string::npos)
      << alert.dump();
  load.sigcont();
  run(10s);
  EXPECT_EQ(ids_ever_posted(transport), std::set<std::string>{vm[0].id});
  EXPECT_TRUE(firing().empty());
}

}  // namespace
}  // namespace stallmon::alerting
