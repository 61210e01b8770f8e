// SPDX-License-Identifier: Apache-2.0
// The gRPC edge's resource caps, over a real GrpcServer on a unix socket in a temporary
// directory with real stubs as clients, in front of the hermetic agent (hermetic_agent.h):
// - InspectDomain is single-flight per domain (by name or uuid alike): concurrent calls share
//   one guest read and its result, errors included; a later call reads again (no cache);
// - at most max_inspect_in_flight reads at once: a call that would start another is refused
//   with RESOURCE_EXHAUSTED, while joining a read in flight is not;
// - max_threads: calls beyond the thread quota are refused at once (RESOURCE_EXHAUSTED), not
//   queued, and the server serves again once threads are free;
// - max_request_bytes and max_streams_per_connection.
// The one stand-in is GatedBackend's inspect() (a real one needs a discovered guest kernel): it
// counts reads and holds them until the test opens the gate, so "in flight" is a state the test
// controls, not a race. No assertion measures time; client deadlines are hang guards except in
// the streams test (a stream over the cap must still be waiting when its 2 s deadline ends).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

#include "forwarding_backend.h"
#include "hermetic_agent.h"
#include "stallmon/server/server.h"
#include "stallmon/v1/stallmon.grpc.pb.h"

namespace stallmon::server {
namespace {

using namespace std::chrono_literals;

constexpr std::chrono::milliseconds kHangGuard = 60s;

// Polls `pred` until it holds (the server's threads get there on their own time); false after
// kHangGuard, so a regression fails instead of hanging.
template <class Pred>
bool wait_until(Pred pred) {
  const auto give_up = std::chrono::steady_clock::now() + kHangGuard;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

// inspect() blocks until open(); each read answers with its ordinal in nr_cpu_ids and the name
// it was asked for in kernel_release, so a test can tell which read a caller got.
class GatedBackend final : public testing::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  Result<core::InspectResult> inspect(std::string_view name, std::chrono::milliseconds) override {
    std::unique_lock l(mu_);
    const int ordinal = ++reads_;
    cv_.wait(l, [&] { return open_; });
    if (fail) return *fail;
    core::InspectResult r;
    r.domain_name = "demo";
    r.kernel_release = std::string(name);
    r.snapshot.nr_cpu_ids = static_cast<uint32_t>(ordinal);
    return r;
  }
  void open() {
    std::lock_guard l(mu_);
    open_ = true;
    cv_.notify_all();
  }
  int reads() const {
    std::lock_guard l(mu_);
    return reads_;
  }
  std::optional<Error> fail;  // set before open(): what every read returns

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  int reads_ = 0;
};

// One InspectDomain call on its own thread.
struct InspectCall {
  grpc::Status status;
  v1::InspectDomainResponse response;
  std::thread thread;
};

class LimitsTest : public ::testing::Test {
 protected:
  LimitsTest() {
    agent_.add("demo", "uuid-demo", 2);
    agent_.add("other", "uuid-other", 1);
  }
  void SetUp() override {
    char tmpl[] = "/tmp/stallmon-limits-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    agent_.tick(2);
  }
  void TearDown() override {
    gate_.open();  // never leave a call hanging
    for (auto& c : calls_) {
      if (c->thread.joinable()) c->thread.join();
    }
    server_.reset();
    std::filesystem::remove_all(dir_);
  }
  void start(ServerOptions o = {}) {
    o.unix_socket = dir_ + "/s.sock";
    o.shutdown_grace = 500ms;
    server_ = std::make_unique<GrpcServer>(gate_, o, 1);
    auto r = server_->start();
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    stub_ = v1::Stallmon::NewStub(channel());
  }
  // A channel with a connection of its own (gRPC shares one between channels by default).
  std::shared_ptr<grpc::Channel> channel() {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return grpc::CreateCustomChannel("unix:" + dir_ + "/s.sock", grpc::InsecureChannelCredentials(), args);
  }
  static std::unique_ptr<grpc::ClientContext> ctx(std::chrono::milliseconds timeout = kHangGuard) {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + timeout);
    return c;
  }
  InspectCall& launch(const std::string& domain) {
    calls_.push_back(std::make_unique<InspectCall>());
    InspectCall* c = calls_.back().get();
    c->thread = std::thread([this, c, domain] {
      v1::InspectDomainRequest req;
      req.set_domain(domain);
      req.mutable_timeout()->set_seconds(30);
      c->status = stub_->InspectDomain(ctx().get(), req, &c->response);
      ++finished_;
    });
    return *c;
  }
  grpc::Status inspect_now(const std::string& domain, v1::InspectDomainResponse* r) {
    v1::InspectDomainRequest req;
    req.set_domain(domain);
    return stub_->InspectDomain(ctx().get(), req, r);
  }
  void join_all() {
    for (auto& c : calls_) c->thread.join();
  }

  testing::HermeticAgent agent_;
  GatedBackend gate_{agent_.backend};
  std::string dir_;
  std::unique_ptr<GrpcServer> server_;
  std::unique_ptr<v1::Stallmon::Stub> stub_;
  std::vector<std::unique_ptr<InspectCall>> calls_;
  std::atomic<int> finished_{0};
};

TEST_F(LimitsTest, ConcurrentInspectsOfADomainShareOneRead) {
  start();
  // By name and by uuid: the same domain, so the same read.
  for (int i = 0; i < 4; ++i) launch("demo");
  for (int i = 0; i < 4; ++i) launch("uuid-demo");
  ASSERT_TRUE(wait_until([&] { return server_->inspect_calls() == 8; }));
  EXPECT_EQ(gate_.reads(), 1);
  gate_.open();
  join_all();
  for (const auto& c : calls_) {
    ASSERT_TRUE(c->status.ok()) << c->status.error_code() << " " << c->status.error_message();
    EXPECT_EQ(c->response.nr_cpu_ids(), 1);  // the first read's answer
  }
  EXPECT_EQ(gate_.reads(), 1);
  // The result is not cached: a call after the read has ended reads again.
  v1::InspectDomainResponse r;
  ASSERT_TRUE(inspect_now("demo", &r).ok());
  EXPECT_EQ(r.nr_cpu_ids(), 2);
  EXPECT_EQ(gate_.reads(), 2);
  EXPECT_EQ(server_->inspect_calls(), 0);
}

TEST_F(LimitsTest, ASharedReadsErrorReachesEveryCaller) {
  start();
  gate_.fail = Error(ErrorCode::kTimeout, "the guest read for inspect did not return in time");
  for (int i = 0; i < 3; ++i) launch("demo");
  ASSERT_TRUE(wait_until([&] { return server_->inspect_calls() == 3; }));
  gate_.open();
  join_all();
  for (const auto& c : calls_) {
    EXPECT_EQ(c->status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_EQ(c->status.error_message(), "the guest read for inspect did not return in time");
  }
  EXPECT_EQ(gate_.reads(), 1);
}

TEST_F(LimitsTest, ReadsBeyondTheCapAreRefusedJoiningIsNot) {
  ServerOptions o;
  o.max_inspect_in_flight = 1;
  start(o);
  launch("demo");
  ASSERT_TRUE(wait_until([&] { return gate_.reads() == 1; }));
  // Another domain would be a second read: refused at once, saying why.
  v1::InspectDomainResponse r;
  auto st = inspect_now("other", &r);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("server.max_inspect_in_flight"), std::string::npos) << st.error_message();
  // The same domain joins the read in flight.
  launch("uuid-demo");
  ASSERT_TRUE(wait_until([&] { return server_->inspect_calls() == 2; }));
  gate_.open();
  join_all();
  for (const auto& c : calls_) {
    ASSERT_TRUE(c->status.ok()) << c->status.error_message();
    EXPECT_EQ(c->response.nr_cpu_ids(), 1);
  }
  // With the read done, the other domain is served.
  ASSERT_TRUE(inspect_now("other", &r).ok());
  EXPECT_EQ(r.kernel_release(), "other");
  EXPECT_EQ(gate_.reads(), 2);
}

TEST_F(LimitsTest, CallsBeyondTheThreadQuotaAreRefusedNotQueued) {
  ServerOptions o;
  o.max_watchers = 1;
  o.max_inspect_in_flight = 1;
  o.max_threads = 1 + 1 + kMinSpareThreads;  // 6
  start(o);
  constexpr int kCalls = 12;
  // Each call that gets a thread keeps it (they all wait on one gated read).
  for (int i = 0; i < kCalls; ++i) launch("demo");
  // Every call is either being served or already answered: none waits in a queue.
  ASSERT_TRUE(wait_until([&] { return finished_.load() + server_->inspect_calls() == kCalls; }));
  const int served = server_->inspect_calls();
  RecordProperty("served", served);  // 5 here: one of the 6 threads keeps polling
  EXPECT_LE(served, o.max_threads);
  EXPECT_GE(served, 1);
  gate_.open();
  join_all();
  int refused = 0;
  for (const auto& c : calls_) {
    if (c->status.ok()) {
      EXPECT_EQ(c->response.nr_cpu_ids(), 1);
      continue;
    }
    EXPECT_EQ(c->status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << c->status.error_message();
    ++refused;
  }
  EXPECT_EQ(refused, kCalls - served);
  EXPECT_GE(refused, kCalls - o.max_threads);
  // The threads came back: the server answers again.
  v1::InspectDomainResponse r;
  ASSERT_TRUE(inspect_now("demo", &r).ok());
  v1::ListDomainsResponse d;
  ASSERT_TRUE(stub_->ListDomains(ctx().get(), {}, &d).ok());
  EXPECT_EQ(d.domains_size(), 2);
}

TEST_F(LimitsTest, RequestsLargerThanTheCapAreRefused) {
  ServerOptions o;
  o.max_request_bytes = 4096;
  start(o);
  v1::GetDomainRequest req;
  req.set_domain(std::string(8000, 'x'));
  v1::Domain d;
  auto st = stub_->GetDomain(ctx().get(), req, &d);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  // Under the cap the request is read (and answered on its merits).
  req.set_domain(std::string(3000, 'x'));
  st = stub_->GetDomain(ctx().get(), req, &d);
  EXPECT_NE(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  req.set_domain("demo");
  ASSERT_TRUE(stub_->GetDomain(ctx().get(), req, &d).ok());
}

// A WatchFindings stream, open until its context is cancelled.
struct Watch {
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::ClientReader<v1::FindingEvent>> reader;
  // Reads the first event: true when it is SYNCED (no findings before it here).
  bool synced() {
    v1::FindingEvent e;
    return reader->Read(&e) && e.type() == v1::FindingEvent::SYNCED;
  }
};

TEST_F(LimitsTest, StreamsPerConnectionAreCapped) {
  ServerOptions o;
  o.max_streams_per_connection = 2;
  start(o);
  auto open = [](v1::Stallmon::Stub& stub, std::chrono::milliseconds timeout) {
    Watch w;
    w.context = ctx(timeout);
    w.reader = stub.WatchFindings(w.context.get(), {});
    return w;
  };
  Watch a = open(*stub_, kHangGuard), b = open(*stub_, kHangGuard);
  ASSERT_TRUE(a.synced());
  ASSERT_TRUE(b.synced());
  // A third stream on the same connection is held back by the client until one ends: here its
  // deadline ends first.
  Watch c = open(*stub_, 2s);
  EXPECT_FALSE(c.synced());
  EXPECT_EQ(c.reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // Another connection is not affected.
  auto other = v1::Stallmon::NewStub(channel());
  Watch d = open(*other, kHangGuard);
  EXPECT_TRUE(d.synced());
  // Once a stream ends, the connection takes a new one.
  a.context->TryCancel();
  a.reader->Finish();
  Watch e = open(*stub_, kHangGuard);
  EXPECT_TRUE(e.synced());
  for (Watch* w : {&b, &d, &e}) {
    w->context->TryCancel();
    w->reader->Finish();
  }
}

}  // namespace
}  // namespace stallmon::server
