// SPDX-License-Identifier: Apache-2.0
// The service end to end over gRPC, against a FakeBackend: a GrpcServer on a unix socket in a
// temporary directory, real stubs as clients. Covers validation over the wire, NOT_FOUND,
// WatchFindings (initial state, live events, resume, resync, cancel, shutdown), health,
// reflection and the socket's handling (mode, stale socket, live socket).
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "fake_backend.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "stallmon/server/server.h"
#include "stallmon/v1/stallmon.grpc.pb.h"

namespace stallmon::server {
namespace {

using namespace std::chrono_literals;
using testing::FakeBackend;
using testing::make_domain;
using testing::make_finding;
using Type = diagnosis::FindingEvent::Type;

std::string make_temp_dir() {
  char tmpl[] = "/tmp/stallmon-server-test-XXXXXX";
  char* d = mkdtemp(tmpl);
  return d ? d : "";
}

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir();
    ASSERT_FALSE(dir_.empty());
    socket_ = dir_ + "/run/stallmond.sock";  // the directory does not exist yet
    backend_.add_domain(make_domain("demo", "uuid-demo", 4));
    backend_.add_domain(make_domain("other", "uuid-other", 1));
    backend_.status.version = "0.1.0";
    backend_.status.hostname = "host1";
    backend_.status.effective_config = "libvirt:\n  uri: qemu:///system\n";
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(dir_);
  }
  void start(ServerOptions o = {}) {
    o.unix_socket = socket_;
    o.shutdown_grace = 500ms;
    server_ = std::make_unique<GrpcServer>(backend_, o, 1234);
    auto r = server_->start();
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    channel_ = grpc::CreateChannel("unix:" + socket_, grpc::InsecureChannelCredentials());
    stub_ = v1::Stallmon::NewStub(channel_);
  }
  std::unique_ptr<grpc::ClientContext> ctx(std::chrono::milliseconds timeout = 5s) {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + timeout);
    return c;
  }

  std::string dir_, socket_;
  FakeBackend backend_;
  std::unique_ptr<GrpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Stallmon::Stub> stub_;
};

TEST_F(ServiceTest, SocketIsCreatedWithMode0660AndRemovedOnShutdown) {
  start();
  struct stat st{};
  ASSERT_EQ(::stat(socket_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  server_->shutdown();
  EXPECT_FALSE(std::filesystem::exists(socket_));
}

TEST_F(ServiceTest, AgentInfoAndDomains) {
  start();
  v1::AgentInfo info;
  auto st = stub_->GetAgentInfo(ctx().get(), {}, &info);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(info.version(), "0.1.0");
  EXPECT_EQ(info.api_version(), "stallmon.v1");
  EXPECT_EQ(info.incarnation(), 1234u);
  EXPECT_EQ(info.domains_size(), 2);
  EXPECT_NE(info.effective_config().find("qemu:///system"), std::string::npos);

  backend_.emit(Type::kOpened, make_finding("f1", "demo", diagnosis::FindingKind::kVcpuHostBlocked));
  v1::ListDomainsResponse list;
  ASSERT_TRUE(stub_->ListDomains(ctx().get(), {}, &list).ok());
  ASSERT_EQ(list.domains_size(), 2);
  EXPECT_EQ(list.domains(0).name(), "demo");
  EXPECT_EQ(list.domains(0).worst_severity(), v1::CRITICAL);
  EXPECT_EQ(list.domains(1).worst_severity(), v1::SEVERITY_UNSPECIFIED);

  v1::GetDomainRequest req;
  req.set_domain("uuid-demo");
  v1::Domain d;
  ASSERT_TRUE(stub_->GetDomain(ctx().get(), req, &d).ok());
  EXPECT_EQ(d.vcpus_size(), 4);
  EXPECT_EQ(d.vcpus(3).thread_name(), "CPU 3/KVM");
}

TEST_F(ServiceTest, MalformedRequestsAreInvalidArgumentAndUnknownDomainsNotFound) {
  start();
  v1::Domain d;
  auto st = stub_->GetDomain(ctx().get(), {}, &d);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "domain: required (a domain name or uuid)");

  v1::GetDomainRequest req;
  req.set_domain("nope");
  st = stub_->GetDomain(ctx().get(), req, &d);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);

  v1::GetVcpuHistoryRequest h;
  h.set_domain("demo");
  h.add_vcpus(9);
  v1::GetVcpuHistoryResponse hr;
  st = stub_->GetVcpuHistory(ctx().get(), h, &hr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(st.error_message().find("no vCPU 9"), std::string::npos) << st.error_message();
  h.clear_vcpus();
  h.mutable_window()->set_seconds(-1);
  st = stub_->GetVcpuHistory(ctx().get(), h, &hr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::ListFindingsRequest lf;
  lf.add_kinds(static_cast<v1::FindingKind>(42));
  v1::ListFindingsResponse lr;
  EXPECT_EQ(stub_->ListFindings(ctx().get(), lf, &lr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::InspectDomainRequest ir;
  v1::InspectDomainResponse inr;
  EXPECT_EQ(stub_->InspectDomain(ctx().get(), ir, &inr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ir.set_domain("nope");
  EXPECT_EQ(stub_->InspectDomain(ctx().get(), ir, &inr).error_code(), grpc::StatusCode::NOT_FOUND);
  ir.set_domain("demo");
  st = stub_->InspectDomain(ctx().get(), ir, &inr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(st.error_message(), "introspection not ready: discovering");

  v1::WatchFindingsRequest wr;
  wr.add_kinds(v1::FINDING_KIND_UNSPECIFIED);
  auto c = ctx();
  auto reader = stub_->WatchFindings(c.get(), wr);
  v1::FindingEvent ev;
  EXPECT_FALSE(reader->Read(&ev));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, HistoryAllVcpusThinned) {
  start();
  v1::GetVcpuHistoryRequest h;
  h.set_domain("demo");
  h.set_max_samples(10);
  v1::GetVcpuHistoryResponse hr;
  ASSERT_TRUE(stub_->GetVcpuHistory(ctx().get(), h, &hr).ok());
  ASSERT_EQ(hr.vcpus_size(), 4);
  EXPECT_EQ(hr.vcpus(2).host_tid(), 5002);
  EXPECT_EQ(hr.vcpus(2).samples_size(), 10);
  EXPECT_EQ(hr.window().seconds(), 60);
}

TEST_F(ServiceTest, InspectPassesTheTimeoutBoundedByTheClientDeadline) {
  start();
  backend_.inspect_ok = true;
  backend_.inspect_result.domain_name = "demo";
  backend_.inspect_result.domain_uuid = "uuid-demo";
  backend_.inspect_result.kernel_release = "6.1.0-56-amd64";
  backend_.inspect_result.snapshot.nr_cpu_ids = 4;
  v1::InspectDomainRequest ir;
  ir.set_domain("demo");
  ir.mutable_timeout()->set_seconds(30);
  v1::InspectDomainResponse r;
  ASSERT_TRUE(stub_->InspectDomain(ctx(2s).get(), ir, &r).ok());
  // The 30 s asked for is capped by what is left of the client's 2 s deadline. How much is left
  // depends on how fast this loaded machine served the call, so only the cap is asserted, with
  // slack for gRPC carrying the deadline as a timeout header that the server re-anchors to its
  // own clock (2008 ms was seen).
  EXPECT_LE(backend_.last_inspect_timeout, 2500ms);
  EXPECT_GT(backend_.last_inspect_timeout, 0ms);
  EXPECT_EQ(r.kernel_release(), "6.1.0-56-amd64");
  EXPECT_EQ(r.nr_cpu_ids(), 4);
}

TEST_F(ServiceTest, ListFindingsFiltersAndRevision) {
  start();
  backend_.emit(Type::kOpened, make_finding("a", "demo", diagnosis::FindingKind::kGuestIpiStall));
  backend_.emit(Type::kOpened, make_finding("b", "demo", diagnosis::FindingKind::kVcpuHostBlocked));
  backend_.emit(Type::kOpened, make_finding("c", "other", diagnosis::FindingKind::kVcpuHostBlocked));
  backend_.emit(Type::kResolved, make_finding("b", "demo", diagnosis::FindingKind::kVcpuHostBlocked));
  v1::ListFindingsRequest req;
  v1::ListFindingsResponse r;
  ASSERT_TRUE(stub_->ListFindings(ctx().get(), req, &r).ok());
  EXPECT_EQ(r.findings_size(), 3);
  EXPECT_EQ(r.revision(), 4u);
  EXPECT_EQ(r.incarnation(), 1234u);
  req.set_state(v1::FINDING_STATE_FILTER_ACTIVE);
  r.Clear();
  ASSERT_TRUE(stub_->ListFindings(ctx().get(), req, &r).ok());
  EXPECT_EQ(r.findings_size(), 2);
  req.set_state(v1::FINDING_STATE_FILTER_RESOLVED);
  req.set_limit(1);
  r.Clear();
  ASSERT_TRUE(stub_->ListFindings(ctx().get(), req, &r).ok());
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_EQ(r.findings(0).id(), "b");
  req.Clear();
  req.set_domain("uuid-other");
  r.Clear();
  ASSERT_TRUE(stub_->ListFindings(ctx().get(), req, &r).ok());
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_EQ(r.findings(0).id(), "c");
}

// Reads events until `pred` matches one (or the stream ends); returns everything read.
std::vector<v1::FindingEvent> read_until(grpc::ClientReader<v1::FindingEvent>& r,
                                         const std::function<bool(const v1::FindingEvent&)>& pred) {
  std::vector<v1::FindingEvent> out;
  v1::FindingEvent e;
  while (r.Read(&e)) {
    out.push_back(e);
    if (pred(e)) break;
  }
  return out;
}

TEST_F(ServiceTest, WatchStartsWithCurrentThenFollowsLiveEvents) {
  start();
  backend_.emit(Type::kOpened, make_finding("old", "demo", diagnosis::FindingKind::kVcpuHostBlocked));
  backend_.emit(Type::kOpened, make_finding("elsewhere", "other", diagnosis::FindingKind::kVcpuHostBlocked));
  v1::WatchFindingsRequest req;
  req.set_domain("demo");
  auto c = ctx(10s);
  auto reader = stub_->WatchFindings(c.get(), req);
  auto first = read_until(*reader, [](auto& e) { return e.type() == v1::FindingEvent::SYNCED; });
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].type(), v1::FindingEvent::CURRENT);
  EXPECT_EQ(first[0].finding().id(), "old");
  EXPECT_EQ(first[1].revision(), 2u);
  EXPECT_EQ(first[1].incarnation(), 1234u);

  // Live: an event for another domain is filtered, ours arrive in order.
  std::thread producer([&] {
    std::this_thread::sleep_for(100ms);
    backend_.emit(Type::kOpened, make_finding("x", "other", diagnosis::FindingKind::kGuestIpiStall));
    backend_.emit(Type::kOpened, make_finding("ipi", "demo", diagnosis::FindingKind::kGuestIpiStall));
    backend_.emit(Type::kResolved, make_finding("ipi", "demo", diagnosis::FindingKind::kGuestIpiStall));
  });
  auto live = read_until(*reader, [](auto& e) { return e.type() == v1::FindingEvent::RESOLVED; });
  producer.join();
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live[0].type(), v1::FindingEvent::OPENED);
  EXPECT_EQ(live[0].finding().id(), "ipi");
  EXPECT_EQ(live[0].revision(), 4u);
  EXPECT_EQ(live[1].type(), v1::FindingEvent::RESOLVED);
  EXPECT_TRUE(live[1].finding().has_resolved_at());
  c->TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(ServiceTest, WatchResumesFromARevisionAndResyncsWhenItCannot) {
  start();
  for (int i = 0; i < 5; ++i) {
    backend_.emit(Type::kOpened, make_finding("f" + std::to_string(i), "demo", diagnosis::FindingKind::kVcpuHostBlocked));
  }
  {
    v1::WatchFindingsRequest req;
    req.set_after_revision(3);
    req.set_incarnation(1234);
    auto c = ctx();
    auto reader = stub_->WatchFindings(c.get(), req);
    auto ev = read_until(*reader, [](auto& e) { return e.type() == v1::FindingEvent::SYNCED; });
    ASSERT_EQ(ev.size(), 3u);
    EXPECT_EQ(ev[0].type(), v1::FindingEvent::OPENED);
    EXPECT_EQ(ev[0].revision(), 4u);
    EXPECT_EQ(ev[1].revision(), 5u);
    EXPECT_EQ(ev[2].revision(), 5u);
    c->TryCancel();
    (void)reader->Finish();
  }
  // Another daemon run (incarnation), a revision in the future, a log that dropped the events:
  // each starts with RESYNC and the full current state.
  for (auto [rev, inc, drop] : {std::tuple{3ull, 999ull, 0ull}, std::tuple{50ull, 0ull, 0ull},
                                std::tuple{1ull, 1234ull, 2ull}}) {
    if (drop) backend_.drop_log_through(drop);
    v1::WatchFindingsRequest req;
    req.set_after_revision(rev);
    req.set_incarnation(inc);
    auto c = ctx();
    auto reader = stub_->WatchFindings(c.get(), req);
    auto ev = read_until(*reader, [](auto& e) { return e.type() == v1::FindingEvent::SYNCED; });
    ASSERT_EQ(ev.size(), 7u) << "after_revision " << rev;
    EXPECT_EQ(ev[0].type(), v1::FindingEvent::RESYNC);
    EXPECT_EQ(ev[1].type(), v1::FindingEvent::CURRENT);
    EXPECT_EQ(ev[6].type(), v1::FindingEvent::SYNCED);
    c->TryCancel();
    (void)reader->Finish();
  }
}

TEST_F(ServiceTest, WatchEndsOnClientCancelAndOnShutdown) {
  start();
  {
    auto c = ctx(30s);
    auto reader = stub_->WatchFindings(c.get(), {});
    v1::FindingEvent e;
    ASSERT_TRUE(reader->Read(&e));  // SYNCED
    EXPECT_EQ(server_->active_watchers(), 1);
    c->TryCancel();
    (void)reader->Finish();
    // The server notices within its poll interval and frees the slot.
    for (int i = 0; i < 40 && server_->active_watchers() != 0; ++i) std::this_thread::sleep_for(100ms);
    EXPECT_EQ(server_->active_watchers(), 0);
  }
  auto c = ctx(30s);
  auto reader = stub_->WatchFindings(c.get(), {});
  v1::FindingEvent e;
  ASSERT_TRUE(reader->Read(&e));
  auto t0 = std::chrono::steady_clock::now();
  std::thread stopper([&] { server_->shutdown(); });
  EXPECT_FALSE(reader->Read(&e));
  auto st = reader->Finish();
  stopper.join();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(st.error_message(), "stallmond is shutting down");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  EXPECT_EQ(backend_.listener_count(), 0u);
}

TEST_F(ServiceTest, WatchEndsAtTheClientDeadlineAndFreesItsSlot) {
  start();
  auto c = ctx(300ms);
  auto reader = stub_->WatchFindings(c.get(), {});
  v1::FindingEvent e;
  ASSERT_TRUE(reader->Read(&e));  // SYNCED
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(reader->Read(&e));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  for (int i = 0; i < 20 && server_->active_watchers() != 0; ++i) std::this_thread::sleep_for(50ms);
  EXPECT_EQ(server_->active_watchers(), 0);
}

TEST_F(ServiceTest, TooManyWatchersIsResourceExhausted) {
  ServerOptions o;
  o.max_watchers = 1;
  start(o);
  auto c1 = ctx(30s);
  auto r1 = stub_->WatchFindings(c1.get(), {});
  v1::FindingEvent e;
  ASSERT_TRUE(r1->Read(&e));
  auto c2 = ctx();
  auto r2 = stub_->WatchFindings(c2.get(), {});
  EXPECT_FALSE(r2->Read(&e));
  EXPECT_EQ(r2->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  c1->TryCancel();
  (void)r1->Finish();
}

TEST_F(ServiceTest, HealthIsServingThenNotServing) {
  start();
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const char* service : {"", "stallmon.v1.Stallmon"}) {
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    ASSERT_TRUE(health->Check(ctx().get(), req, &resp).ok());
    EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
  server_->set_serving(false);
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(health->Check(ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  req.set_service("no.such.Service");
  EXPECT_EQ(health->Check(ctx().get(), req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, ReflectionListsTheServices) {
  start();
  // grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo with list_services = "*",
  // encoded by hand (field 7, string) to avoid generating the reflection proto here.
  grpc::GenericStub generic(channel_);
  auto c = ctx();
  grpc::CompletionQueue cq;
  auto call = generic.PrepareCall(c.get(), "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  std::string req = std::string("\x3a\x01*", 3);
  grpc::Slice slice(req);
  grpc::ByteBuffer buf(&slice, 1);
  call->Write(buf, reinterpret_cast<void*>(2));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  grpc::ByteBuffer resp;
  call->Read(&resp, reinterpret_cast<void*>(3));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(resp.Dump(&slices).ok());
  std::string bytes;
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_NE(bytes.find("stallmon.v1.Stallmon"), std::string::npos);
  EXPECT_NE(bytes.find("grpc.health.v1.Health"), std::string::npos);
  c->TryCancel();
  grpc::Status st;
  call->Finish(&st, reinterpret_cast<void*>(4));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

TEST_F(ServiceTest, StaleSocketIsReplacedLiveOneRefusedOtherFilesKept) {
  // A stale socket (bound, nobody listening) as a crashed daemon leaves it.
  std::filesystem::create_directories(dir_ + "/run");
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, socket_.c_str(), sizeof a.sun_path - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ::close(fd);
  start();
  v1::ListDomainsResponse list;
  ASSERT_TRUE(stub_->ListDomains(ctx().get(), {}, &list).ok());

  // A second daemon on the same socket is refused and leaves the first one working.
  GrpcServer second(backend_, ServerOptions{.unix_socket = socket_}, 1);
  auto r = second.start();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("another process"), std::string::npos) << r.error().message;
  ASSERT_TRUE(stub_->ListDomains(ctx().get(), {}, &list).ok());

  std::string plain = dir_ + "/plain";
  { std::ofstream(plain) << "x"; }
  EXPECT_FALSE(prepare_unix_socket(plain).ok());
  EXPECT_TRUE(std::filesystem::exists(plain));
  EXPECT_FALSE(prepare_unix_socket("relative.sock").ok());
}

TEST_F(ServiceTest, TcpWithoutTlsFilesIsRefusedAtStart) {
  ServerOptions o;
  o.unix_socket = socket_;
  o.tcp_listen = "127.0.0.1:0";
  GrpcServer s(backend_, o, 1);
  auto r = s.start();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("tls_cert"), std::string::npos) << r.error().message;
}

}  // namespace
}  // namespace stallmon::server
