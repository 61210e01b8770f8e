// SPDX-License-Identifier: Apache-2.0
// The pusher driven step by step with a ManualClock and a recording transport: no threads, no
// sleeps, no network.
#include "stallmon/alerting/pusher.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

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

  void make(std::vector<std::string> urls, size_t queue = 1024) {
    PusherOptions o;
    o.urls = std::move(urls);
    o.alert.host = "hv1";
    o.queue_capacity = queue;
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

}  // namespace
}  // namespace stallmon::alerting
