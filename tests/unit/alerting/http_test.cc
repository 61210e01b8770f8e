// SPDX-License-Identifier: Apache-2.0
// The HTTP edge on loopback only: /metrics served on 127.0.0.1:<free port>, alerts POSTed to a
// fake Alertmanager on 127.0.0.1:<free port>.
#include "stallmon/alerting/http.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <thread>

#include <nlohmann/json.hpp>

namespace stallmon::alerting {
namespace {

TEST(Http, ParsesListenAddresses) {
  auto a = parse_listen_address("127.0.0.1:9910");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 9910);
  a = parse_listen_address("[::1]:0");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "::1");
  EXPECT_EQ(a->port, 0);
  a = parse_listen_address(":9910");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "0.0.0.0");
  EXPECT_FALSE(parse_listen_address("127.0.0.1").ok());
  EXPECT_FALSE(parse_listen_address("127.0.0.1:99999").ok());
  EXPECT_FALSE(parse_listen_address("::1:80").ok());
  EXPECT_FALSE(parse_listen_address("h:x").ok());
}

TEST(Http, ParsesAlertmanagerUrls) {
  auto u = parse_http_url("http://127.0.0.1:9093");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->scheme_host_port, "http://127.0.0.1:9093");
  EXPECT_EQ(u->path_prefix, "");
  u = parse_http_url("http://am:9093/prefix/");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->path_prefix, "/prefix");
  EXPECT_FALSE(parse_http_url("https://am:9093").ok());
  EXPECT_FALSE(parse_http_url("am:9093").ok());
  EXPECT_FALSE(parse_http_url("http:///x").ok());
}

TEST(Http, ServesMetricsOnLoopback) {
  int calls = 0;
  auto srv = MetricsHttpServer::start({"127.0.0.1", 0}, [&]() -> Result<std::string> {
    ++calls;
    return std::string("# HELP x x\n# TYPE x gauge\nx 1\n");
  });
  ASSERT_TRUE(srv.ok()) << srv.error().to_string();
  ASSERT_GT((*srv)->port(), 0);
  httplib::Client cli("127.0.0.1", (*srv)->port());
  auto res = cli.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "# HELP x x\n# TYPE x gauge\nx 1\n");
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(cli.Get("/nope")->status, 404);
  (*srv)->stop();
  (*srv)->stop();  // idempotent
}

TEST(Http, RenderErrorIs500) {
  auto srv = MetricsHttpServer::start({"127.0.0.1", 0}, []() -> Result<std::string> {
    return Error(ErrorCode::kInternal, "bug");
  });
  ASSERT_TRUE(srv.ok());
  httplib::Client cli("127.0.0.1", (*srv)->port());
  auto res = cli.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 500);
}

TEST(Http, BindConflictIsAnError) {
  auto a = MetricsHttpServer::start({"127.0.0.1", 0}, [] { return Result<std::string>(""); });
  ASSERT_TRUE(a.ok());
  auto b = MetricsHttpServer::start({"127.0.0.1", (*a)->port()},
                                    [] { return Result<std::string>(""); });
  EXPECT_FALSE(b.ok());
}

// A stand-in Alertmanager: records POST /api/v2/alerts bodies, answers `status`.
class FakeAlertmanager {
 public:
  explicit FakeAlertmanager(int status = 200) : status_(status) {
    srv_.new_task_queue = [] { return new httplib::ThreadPool(1); };
    srv_.Post("/api/v2/alerts", [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard lock(mu_);
      bodies_.push_back(req.body);
      content_type_ = req.get_header_value("Content-Type");
      res.status = status_;
    });
    port_ = srv_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { srv_.listen_after_bind(); });
    while (!srv_.is_running()) std::this_thread::yield();
  }
  ~FakeAlertmanager() {
    srv_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<std::string> bodies() {
    std::lock_guard lock(mu_);
    return bodies_;
  }
  std::string content_type() {
    std::lock_guard lock(mu_);
    return content_type_;
  }

 private:
  int status_;
  httplib::Server srv_;
  std::thread thread_;
  int port_ = 0;
  std::mutex mu_;
  std::vector<std::string> bodies_;
  std::string content_type_;
};

TEST(Http, TransportPostsToApiV2Alerts) {
  FakeAlertmanager am;
  HttpAlertTransport t;
  auto r = t.post(am.url(), "[]");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  r = t.post(am.url() + "/api/v2/alerts", "[{}]");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(am.bodies().size(), 2u);
  EXPECT_EQ(am.bodies()[0], "[]");
  EXPECT_EQ(am.bodies()[1], "[{}]");
  EXPECT_EQ(am.content_type(), "application/json");
}

TEST(Http, TransportReportsHttpErrors) {
  FakeAlertmanager am(400);
  HttpAlertTransport t;
  auto r = t.post(am.url(), "[]");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find("HTTP 400"), std::string::npos);
}

TEST(Http, TransportReportsConnectionRefused) {
  int port;
  {
    FakeAlertmanager gone;  // take a free port, then close it
    port = std::stoi(gone.url().substr(gone.url().rfind(':') + 1));
  }
  HttpAlertTransport t;
  auto r = t.post("http://127.0.0.1:" + std::to_string(port), "[]");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kIo);
}

}  // namespace
}  // namespace stallmon::alerting
