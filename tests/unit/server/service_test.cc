// SPDX-License-Identifier: Apache-2.0
// The service end to end over gRPC, against a real StallMonitor (HermeticAgent: threads off,
// simulated time, a fake host) behind the daemon's MonitorBackend: a GrpcServer on a unix
// socket in a temporary directory, real stubs as clients. Covers the adapters over the wire,
// validation, NOT_FOUND, ListFindings and WatchFindings (initial state, live events, resume,
// resync, cancel, deadline, shutdown) on the engine's own findings and revisions, health,
// reflection and the socket's handling (mode, stale socket, live socket). The one stand-in is
// RecordingBackend, for what belongs to the service layer: the inspect timeout it computes (a
// real inspect() needs a discovered guest kernel) and its finding listener's lifetime.
//
// Real time: client deadlines are hang guards (kHangGuard) except in the deadline test, and no
// assertion measures how long anything took.
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

#include "grpc/health/v1/health.grpc.pb.h"
#include "forwarding_backend.h"
#include "hermetic_agent.h"
#include "stallmon/server/convert.h"
#include "stallmon/server/server.h"
#include "stallmon/v1/stallmon.grpc.pb.h"

namespace stallmon::server {
namespace {

using namespace std::chrono_literals;
using diagnosis::FindingKind;
using testing::HermeticAgent;

// Long enough never to expire on a loaded machine: a call that hits it is hung.
constexpr std::chrono::milliseconds kHangGuard = 60s;

std::string make_temp_dir() {
  char tmpl[] = "/tmp/stallmon-server-test-XXXXXX";
  char* d = mkdtemp(tmpl);
  return d ? d : "";
}

// Polls `pred` until it holds (the server's own threads get there on their own time); the
// ctest timeout is the bound.
template <class Pred>
void wait_until(Pred pred) {
  while (!pred()) std::this_thread::sleep_for(10ms);
}

// The real backend, except that inspect() records the timeout it was given and answers with a
// canned result, and finding listeners are counted on their way through.
class RecordingBackend final : public testing::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  Result<core::InspectResult> inspect(std::string_view, std::chrono::milliseconds timeout) override {
    std::lock_guard l(mu_);
    timeouts_.push_back(timeout);
    return result;
  }
  void add_finding_listener(diagnosis::FindingListener* l) override {
    ++listeners_;
    ForwardingBackend::add_finding_listener(l);
  }
  void remove_finding_listener(diagnosis::FindingListener* l) override {
    --listeners_;
    ForwardingBackend::remove_finding_listener(l);
  }

  std::vector<std::chrono::milliseconds> timeouts() const {
    std::lock_guard l(mu_);
    return timeouts_;
  }
  int listeners() const { return listeners_.load(); }
  core::InspectResult result;

 private:
  mutable std::mutex mu_;
  std::vector<std::chrono::milliseconds> timeouts_;
  std::atomic<int> listeners_{0};
};

class ServiceTest : public ::testing::Test {
 protected:
  explicit ServiceTest(core::MonitorConfig config = testing::hermetic_config(), bool fake_bpf = false)
      : agent_(std::move(config), fake_bpf),
        demo_(agent_.add("demo", "uuid-demo", 4)),
        other_(agent_.add("other", "uuid-other", 1)) {}

  void SetUp() override {
    dir_ = make_temp_dir();
    ASSERT_FALSE(dir_.empty());
    socket_ = dir_ + "/run/stallmond.sock";  // the directory does not exist yet
    agent_.status.version = "0.1.0";
    agent_.status.hostname = "host1";
    agent_.status.effective_config = "libvirt:\n  uri: qemu:///system\n";
    agent_.tick(3);
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(dir_);
  }
  // Serves agent_.backend, or recording_ (which forwards to it).
  void start(ServerOptions o = {}, bool recording = false) {
    o.unix_socket = socket_;
    o.shutdown_grace = 500ms;
    server_ = std::make_unique<GrpcServer>(recording ? static_cast<Backend&>(recording_) : agent_.backend, o, 1234);
    auto r = server_->start();
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    channel_ = grpc::CreateChannel("unix:" + socket_, grpc::InsecureChannelCredentials());
    stub_ = v1::Stallmon::NewStub(channel_);
  }
  std::unique_ptr<grpc::ClientContext> ctx(std::chrono::milliseconds timeout = kHangGuard) {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + timeout);
    return c;
  }
  std::vector<std::string> engine_ids(const diagnosis::FindingQuery& q) const {
    std::vector<std::string> ids;
    for (const auto& f : agent_.monitor.engine().list_findings(q)) ids.push_back(f.id);
    return ids;
  }
  static std::vector<std::string> ids(const v1::ListFindingsResponse& r) {
    std::vector<std::string> out;
    for (const auto& f : r.findings()) out.push_back(f.id());
    return out;
  }

  HermeticAgent agent_;
  core::testing::FakeQemu& demo_;
  core::testing::FakeQemu& other_;
  RecordingBackend recording_{agent_.backend};
  std::string dir_, socket_;
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
  EXPECT_EQ(info.ticks(), agent_.monitor.stats().ticks);
  EXPECT_EQ(info.sampling_interval().nanos(), 100'000'000);
  EXPECT_EQ(info.domains_size(), 2);
  EXPECT_NE(info.effective_config().find("qemu:///system"), std::string::npos);
  // No source given to the monitor: the /proc reader, and why.
  EXPECT_EQ(info.thread_stats_source(), "proc");
  EXPECT_EQ(info.thread_stats_reason(), "/proc per thread: no other source given");
  EXPECT_EQ(info.thread_stats_passes(), 0u);

  agent_.block(demo_, 2);
  auto active = agent_.monitor.engine().active_findings("demo");
  ASSERT_EQ(active.size(), 1u);
  v1::ListDomainsResponse list;
  ASSERT_TRUE(stub_->ListDomains(ctx().get(), {}, &list).ok());
  ASSERT_EQ(list.domains_size(), 2);
  EXPECT_EQ(list.domains(0).name(), "demo");
  EXPECT_EQ(list.domains(0).active_findings(), 1u);
  EXPECT_EQ(list.domains(0).worst_severity(), static_cast<v1::Severity>(to_proto(active[0].severity)));
  EXPECT_NE(list.domains(0).worst_severity(), v1::SEVERITY_UNSPECIFIED);
  EXPECT_EQ(list.domains(1).name(), "other");
  EXPECT_EQ(list.domains(1).worst_severity(), v1::SEVERITY_UNSPECIFIED);

  v1::GetDomainRequest req;
  req.set_domain("uuid-demo");
  v1::Domain d;
  ASSERT_TRUE(stub_->GetDomain(ctx().get(), req, &d).ok());
  ASSERT_EQ(d.vcpus_size(), 4);
  EXPECT_EQ(d.vcpus(3).thread_name(), "CPU 3/TCG");
  EXPECT_EQ(d.vcpus(3).host_tid(), demo_.vcpu_tid(3));
  EXPECT_EQ(d.vcpus(2).latest().wchan(), "__refrigerator");
  ASSERT_GT(d.vcpus(2).host_stack_size(), 0);
  EXPECT_EQ(d.vcpus(2).host_stack(0), "__refrigerator+0x4c/0x130");
}

// The monitor samples through a (fake) BPF source: GetAgentInfo reports the choice, its reason,
// the passes run (one per tick for both domains) and the ticks that fell back to /proc.
class ServiceBpfTest : public ServiceTest {
 protected:
  ServiceBpfTest() : ServiceTest(testing::hermetic_config(), /*fake_bpf=*/true) {}
};

TEST_F(ServiceBpfTest, AgentInfoReportsTheThreadStatsSourceItsReasonPassesAndFallbacks) {
  start();
  v1::AgentInfo info;
  ASSERT_TRUE(stub_->GetAgentInfo(ctx().get(), {}, &info).ok());
  EXPECT_EQ(info.thread_stats_source(), "bpf-task-iter");
  EXPECT_EQ(info.thread_stats_reason(), "fake passes (hermetic test)");
  // SetUp ticked 3 times: the first tick ran one pass per newly watched process (2), the next
  // two one pass each for both domains.
  EXPECT_EQ(info.thread_stats_passes(), 4u);
  EXPECT_EQ(info.thread_stats_passes(), agent_.monitor.stats().thread_stats_passes);
  EXPECT_EQ(info.thread_stats_fallbacks(), 0u);

  agent_.stat_source->fail_next(1);
  agent_.tick();
  ASSERT_TRUE(stub_->GetAgentInfo(ctx().get(), {}, &info).ok());
  EXPECT_EQ(info.thread_stats_fallbacks(), 1u);  // "demo" hit the failed pass, "other" the next
  EXPECT_EQ(info.thread_stats_passes(), 5u);
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
  // Introspection is off in this agent: the monitor's kUnsupported, with its reason.
  ir.set_domain("demo");
  st = stub_->InspectDomain(ctx().get(), ir, &inr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  auto direct = agent_.monitor.inspect("demo", 1ms);
  ASSERT_FALSE(direct.ok());
  EXPECT_EQ(st.error_message(), direct.error().message);

  v1::WatchFindingsRequest wr;
  wr.add_kinds(v1::FINDING_KIND_UNSPECIFIED);
  auto c = ctx();
  auto reader = stub_->WatchFindings(c.get(), wr);
  v1::FindingEvent ev;
  EXPECT_FALSE(reader->Read(&ev));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, HistoryAllVcpusThinned) {
  agent_.tick(40);
  start();
  v1::GetVcpuHistoryRequest h;
  h.set_domain("demo");
  h.set_max_samples(10);
  v1::GetVcpuHistoryResponse hr;
  ASSERT_TRUE(stub_->GetVcpuHistory(ctx().get(), h, &hr).ok());
  ASSERT_EQ(hr.vcpus_size(), 4);
  EXPECT_EQ(hr.vcpus(2).host_tid(), demo_.vcpu_tid(2));
  EXPECT_EQ(hr.vcpus(2).samples_size(), 10);
  EXPECT_EQ(hr.window().seconds(), 60);
  // Thinned from the monitor's 43 samples, oldest first.
  auto full = agent_.monitor.vcpu_history("demo", 2, 60s);
  ASSERT_TRUE(full.ok());
  ASSERT_EQ(full->points.size(), 43u);
  auto run_ns = [](const v1::HostSample& s) {
    return static_cast<uint64_t>(s.run_time().seconds()) * 1'000'000'000ull + static_cast<uint64_t>(s.run_time().nanos());
  };
  for (int i = 1; i < hr.vcpus(2).samples_size(); ++i) {
    EXPECT_GT(run_ns(hr.vcpus(2).samples(i)), run_ns(hr.vcpus(2).samples(i - 1)));
  }
  EXPECT_EQ(run_ns(hr.vcpus(2).samples(9)), full->points.back().sample.run_ns);
}

TEST_F(ServiceTest, InspectPassesTheTimeoutBoundedByTheClientDeadline) {
  recording_.result.domain_name = "demo";
  recording_.result.domain_uuid = "uuid-demo";
  recording_.result.kernel_release = "6.1.0-56-amd64";
  recording_.result.snapshot.nr_cpu_ids = 4;
  start({}, true);
  v1::InspectDomainRequest ir;
  ir.set_domain("demo");
  // Asked for less than the client's deadline leaves: passed as asked.
  ir.mutable_timeout()->set_seconds(5);
  v1::InspectDomainResponse r;
  ASSERT_TRUE(stub_->InspectDomain(ctx().get(), ir, &r).ok());
  EXPECT_EQ(r.kernel_release(), "6.1.0-56-amd64");
  EXPECT_EQ(r.nr_cpu_ids(), 4);
  // Asked for more: capped by what is left of the client's deadline. How much is left depends
  // on how fast the call got there, so only the cap is asserted (with slack for gRPC carrying the
  // deadline as a relative timeout that the server re-anchors to its own clock).
  ir.mutable_timeout()->set_seconds(60);
  ASSERT_TRUE(stub_->InspectDomain(ctx(30s).get(), ir, &r).ok());
  auto t = recording_.timeouts();
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0], 5s);
  EXPECT_LE(t[1], 31s);
  EXPECT_GE(t[1], 1ms);
}

// Issue 14 item 2: GetIncident serves the bundle the monitor keeps for a critical finding.
TEST_F(ServiceTest, GetIncidentServesTheBundleOfACriticalFinding) {
  start();
  agent_.block(demo_, 1);
  const auto active = agent_.monitor.engine().active_findings("demo");
  ASSERT_EQ(active.size(), 1u);
  v1::GetIncidentRequest req;
  req.set_finding_id(active[0].id);
  v1::Incident r;
  auto st = stub_->GetIncident(ctx().get(), req, &r);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(r.finding().id(), active[0].id);
  EXPECT_FALSE(r.complete());
  EXPECT_FALSE(r.has_window_end());
  ASSERT_EQ(static_cast<size_t>(r.vcpus_size()), agent_.monitor.domain("demo")->vcpus.size());
  EXPECT_GT(r.vcpus(1).points_size(), 3);
  EXPECT_EQ(r.vcpus(1).points(r.vcpus(1).points_size() - 1).state(), v1::THREAD_STATE_DISK_SLEEP);
  // Thinned on request: the first and the last point kept.
  req.set_max_points(2);
  v1::Incident thin;
  ASSERT_TRUE(stub_->GetIncident(ctx().get(), req, &thin).ok());
  ASSERT_EQ(thin.vcpus(1).points_size(), 2);
  EXPECT_EQ(thin.vcpus(1).points(0).at().seconds(), r.vcpus(1).points(0).at().seconds());
  EXPECT_EQ(thin.vcpus(1).points(1).state(), v1::THREAD_STATE_DISK_SLEEP);

  req.set_finding_id("demo/VCPU_HOST_BLOCKED/vcpu9/99");
  req.set_max_points(0);
  EXPECT_EQ(stub_->GetIncident(ctx().get(), req, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  for (const std::string& bad : {std::string(), std::string(513, 'x'), std::string("a\nb")}) {
    req.set_finding_id(bad);
    st = stub_->GetIncident(ctx().get(), req, &r);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
    EXPECT_NE(st.error_message().find("finding_id"), std::string::npos) << st.error_message();
  }
  req.set_finding_id(active[0].id);
  req.set_max_points(-1);
  EXPECT_EQ(stub_->GetIncident(ctx().get(), req, &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, ListFindingsAreTheEnginesFilteredAndOrdered) {
  start();
  agent_.block(demo_, 1);  // demo: VCPU_HOST_BLOCKED, resolved below
  agent_.block(other_, 0);  // other: VCPU_HOST_BLOCKED
  agent_.crash(demo_);      // demo: GUEST_PANIC
  const uint64_t revision = agent_.thaw(demo_, 1);
  ASSERT_EQ(agent_.monitor.engine().active_findings().size(), 2u);

  v1::ListFindingsRequest req;
  v1::ListFindingsResponse r;
  ASSERT_TRUE(stub_->ListFindings(ctx().get(), req, &r).ok());
  EXPECT_EQ(r.revision(), revision);
  EXPECT_EQ(r.incarnation(), 1234u);
  // Active first (by onset: other's blocked vCPU, then demo's panic), then resolved.
  ASSERT_EQ(r.findings_size(), 3);
  EXPECT_EQ(r.findings(0).domain(), "other");
  EXPECT_EQ(r.findings(0).kind(), v1::VCPU_HOST_BLOCKED);
  EXPECT_EQ(r.findings(1).domain(), "demo");
  EXPECT_EQ(r.findings(1).kind(), v1::GUEST_PANIC);
  EXPECT_EQ(r.findings(2).kind(), v1::VCPU_HOST_BLOCKED);
  EXPECT_FALSE(r.findings(2).active());
  EXPECT_EQ(ids(r), engine_ids({}));

  req.set_state(v1::FINDING_STATE_FILTER_ACTIVE);
  ASSERT_TRUE(stub_->ListFindings(ctx().get(), req, &r).ok());
  EXPECT_EQ(ids(r), (std::vector<std::string>{engine_ids({})[0], engine_ids({})[1]}));

  // Resolved only: past the active ones, then limited.
  req.set_state(v1::FINDING_STATE_FILTER_RESOLVED);
  req.set_limit(1);
  ASSERT_TRUE(stub_->ListFindings(ctx().get(), req, &r).ok());
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_EQ(r.findings(0).id(), engine_ids({})[2]);

  req.Clear();
  req.set_domain("uuid-other");
  ASSERT_TRUE(stub_->ListFindings(ctx().get(), req, &r).ok());
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_EQ(r.findings(0).domain(), "other");

  req.Clear();
  req.set_domain("demo");
  req.add_kinds(v1::VCPU_HOST_BLOCKED);
  ASSERT_TRUE(stub_->ListFindings(ctx().get(), req, &r).ok());
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_EQ(r.findings(0).id(), engine_ids({})[2]);
  EXPECT_EQ(r.findings(0).cpus_size(), 1);
  EXPECT_EQ(r.findings(0).cpus(0), 1);
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
  agent_.block(demo_, 0);
  agent_.block(other_, 0);
  const uint64_t synced_at = agent_.monitor.engine().revision();
  start();
  v1::WatchFindingsRequest req;
  req.set_domain("demo");
  auto c = ctx();
  auto reader = stub_->WatchFindings(c.get(), req);
  auto first = read_until(*reader, [](auto& e) { return e.type() == v1::FindingEvent::SYNCED; });
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].type(), v1::FindingEvent::CURRENT);
  EXPECT_EQ(first[0].finding().domain(), "demo");
  EXPECT_EQ(first[0].finding().kind(), v1::VCPU_HOST_BLOCKED);
  EXPECT_EQ(first[1].revision(), synced_at);
  EXPECT_EQ(first[1].incarnation(), 1234u);

  // Live, while the stream waits: another domain's events are filtered, ours arrive in order
  // with the engine's revisions.
  agent_.thaw(other_, 0);
  agent_.crash(demo_);
  agent_.thaw(demo_, 0);
  std::vector<diagnosis::FindingEvent> expected;
  for (const auto& e : agent_.monitor.engine().events_since(synced_at).events) {
    if (e.finding.domain == "demo") expected.push_back(e);
  }
  ASSERT_GE(expected.size(), 2u);
  ASSERT_EQ(expected.back().type, diagnosis::FindingEvent::Type::kResolved);
  auto live = read_until(*reader, [&](auto& e) { return e.revision() == expected.back().revision; });
  ASSERT_EQ(live.size(), expected.size());
  for (size_t i = 0; i < live.size(); ++i) {
    EXPECT_EQ(live[i].revision(), expected[i].revision) << i;
    EXPECT_EQ(live[i].finding().id(), expected[i].finding.id) << i;
    EXPECT_EQ(live[i].finding().domain(), "demo") << i;
  }
  EXPECT_EQ(live[0].type(), v1::FindingEvent::OPENED);
  EXPECT_EQ(live[0].finding().kind(), v1::GUEST_PANIC);
  EXPECT_EQ(live.back().type(), v1::FindingEvent::RESOLVED);
  EXPECT_TRUE(live.back().finding().has_resolved_at());
  c->TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

// Five domains' worth of history in a small event log: a blocked-and-thawed vCPU on each of
// three domains, then a blocked one on each of two more (active at the end).
class ServiceResumeTest : public ServiceTest {
 protected:
  static core::MonitorConfig small_log() {
    auto c = testing::hermetic_config();
    c.diagnosis.max_event_log = 4;
    return c;
  }
  ServiceResumeTest() : ServiceTest(small_log()) {}
};

TEST_F(ServiceResumeTest, WatchResumesFromARevisionAndResyncsWhenItCannot) {
  for (int i = 0; i < 3; ++i) {
    agent_.block(demo_, i);
    agent_.thaw(demo_, i);
  }
  agent_.block(demo_, 3);
  agent_.block(other_, 0);
  const auto& engine = agent_.monitor.engine();
  const uint64_t rev = engine.revision();
  ASSERT_EQ(engine.active_findings().size(), 2u);
  ASSERT_GE(rev, 8u);
  start();
  {
    // Two events back, still in the log: exactly those, then SYNCED.
    v1::WatchFindingsRequest req;
    req.set_after_revision(rev - 2);
    req.set_incarnation(1234);
    auto c = ctx();
    auto reader = stub_->WatchFindings(c.get(), req);
    auto ev = read_until(*reader, [](auto& e) { return e.type() == v1::FindingEvent::SYNCED; });
    ASSERT_EQ(ev.size(), 3u);
    EXPECT_EQ(ev[0].type(), v1::FindingEvent::OPENED);
    EXPECT_EQ(ev[0].revision(), rev - 1);
    EXPECT_EQ(ev[1].revision(), rev);
    EXPECT_EQ(ev[2].revision(), rev);
    c->TryCancel();
    (void)reader->Finish();
  }
  // Another daemon run (incarnation), a revision in the future, a revision the bounded log no
  // longer holds: each starts with RESYNC and the full current state.
  ASSERT_FALSE(engine.events_since(1).complete);
  for (auto [after, inc] : {std::pair{rev - 2, uint64_t{999}}, std::pair{rev + 50, uint64_t{0}},
                            std::pair{uint64_t{1}, uint64_t{1234}}}) {
    v1::WatchFindingsRequest req;
    req.set_after_revision(after);
    req.set_incarnation(inc);
    auto c = ctx();
    auto reader = stub_->WatchFindings(c.get(), req);
    auto ev = read_until(*reader, [](auto& e) { return e.type() == v1::FindingEvent::SYNCED; });
    ASSERT_EQ(ev.size(), 4u) << "after_revision " << after;
    EXPECT_EQ(ev[0].type(), v1::FindingEvent::RESYNC);
    EXPECT_EQ(ev[1].type(), v1::FindingEvent::CURRENT);
    EXPECT_EQ(ev[2].type(), v1::FindingEvent::CURRENT);
    EXPECT_EQ(ev[3].type(), v1::FindingEvent::SYNCED);
    EXPECT_EQ(ev[3].revision(), rev);
    c->TryCancel();
    (void)reader->Finish();
  }
}

TEST_F(ServiceTest, WatchEndsOnClientCancelAndOnShutdown) {
  start({}, true);
  EXPECT_EQ(recording_.listeners(), 1);
  {
    auto c = ctx();
    auto reader = stub_->WatchFindings(c.get(), {});
    v1::FindingEvent e;
    ASSERT_TRUE(reader->Read(&e));  // SYNCED
    EXPECT_EQ(server_->active_watchers(), 1);
    c->TryCancel();
    (void)reader->Finish();
    // The server notices within its poll interval and frees the slot.
    wait_until([&] { return server_->active_watchers() == 0; });
  }
  auto c = ctx();
  auto reader = stub_->WatchFindings(c.get(), {});
  v1::FindingEvent e;
  ASSERT_TRUE(reader->Read(&e));
  std::thread stopper([&] { server_->shutdown(); });
  EXPECT_FALSE(reader->Read(&e));
  auto st = reader->Finish();
  stopper.join();
  // Ended by the feed's shutdown (not cancelled after the grace period).
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(st.error_message(), "stallmond is shutting down");
  EXPECT_EQ(recording_.listeners(), 0);
}

TEST_F(ServiceTest, WatchEndsAtTheClientDeadlineAndFreesItsSlot) {
  start();
  // The one real deadline of these tests: the stream's first message (SYNCED), which takes
  // milliseconds, must arrive before it.
  auto c = ctx(3s);
  auto reader = stub_->WatchFindings(c.get(), {});
  v1::FindingEvent e;
  ASSERT_TRUE(reader->Read(&e));  // SYNCED
  EXPECT_FALSE(reader->Read(&e));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  wait_until([&] { return server_->active_watchers() == 0; });
}

TEST_F(ServiceTest, TooManyWatchersIsResourceExhausted) {
  ServerOptions o;
  o.max_watchers = 1;
  start(o);
  auto c1 = ctx();
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
  GrpcServer second(agent_.backend, ServerOptions{.unix_socket = socket_}, 1);
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
  GrpcServer s(agent_.backend, o, 1);
  auto r = s.start();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("tls_cert"), std::string::npos) << r.error().message;
}

}  // namespace
}  // namespace stallmon::server
