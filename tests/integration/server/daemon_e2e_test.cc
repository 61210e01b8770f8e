// SPDX-License-Identifier: Apache-2.0
// stallmond end to end against a real guest (testbed fixture: 4 vCPUs under the IPI generator).
// The built daemon runs as a child process, watching only this test's domain, serving on a unix
// socket in a temp dir and on 127.0.0.1 with mutual TLS, with a fake systemd NOTIFY_SOCKET.
//
// In order (the tests share the daemon and the guest):
//   1. systemd READY=1 arrives, then WATCHDOG=1 keep-alives; health says SERVING
//   2. the guest is listed and its introspection becomes ready
//   3. malformed requests get INVALID_ARGUMENT, unknown domains NOT_FOUND
//   4. TCP without a client certificate is refused, with one accepted
//   5. seed case 1: freezing vCPU 2 under the IPI generator opens GUEST_IPI_STALL and
//      VCPU_HOST_BLOCKED on a WatchFindings stream; the thaw resolves them on the same stream
//   6. seed case 1 again, a second daemon (with a finding store) restarted mid-incident: the
//      finding and its incident bundle survive; the report renders in headless Chromium
//   7. stallctl status / domains / vcpus / findings / inspect against the daemon
//   8. SIGHUP reloads the log level, names what needs a restart, refuses a broken file
//   9. SIGTERM: STOPPING=1, exit 0, socket removed; stallctl then says it is not running
#include <fcntl.h>
#include <poll.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "stallmon/v1/stallmon.grpc.pb.h"
#include "test_certs.h"
#include "testbed/guest.h"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using stallmon::server::testing::TestCerts;
using stallmon::testbed::GuestTest;

// The test module's on_each_cpu loop (scenario "ipi-module"): it waits for every online CPU, idle
// ones included, so a frozen idle vCPU always leaves a sender waiting (seed case 1). Under the TLB
// load alone an idle CPU may be lazy in another process's address space and get no flush at all
// (seen: no IPI stall in 30 s).
const bool kGuestOptions =
    stallmon::testbed::use_shared_guest_options({.tag = "e2e", .scenario = "ipi-module", .watchdog_thresh = 5});
namespace v1 = stallmon::v1;
namespace health = grpc::health::v1;
using Clock = std::chrono::steady_clock;

// The daemon and its surroundings, shared by every test of the binary.
struct Daemon {
  std::string dir, socket, log, notify_path, config;
  // The finding store: off by default (below); the restart test keeps one in dir/state.
  bool with_store = false;
  int notify_fd = -1;
  pid_t pid = -1;
  int tcp_port = 0;
  size_t log_offset = 0;  // where this run's lines start in the log (a restart appends)
  TestCerts certs;
  // NOTIFY_SOCKET is read all the time, as systemd does: stallmond's keep-alive is a blocking
  // send, and a queue left full (net.unix.max_dgram_qlen, 10 here) stalls its main loop, which
  // then answers neither SIGHUP nor SIGTERM (seen once the binary's tests ran longer than 10 s
  // without reading).
  std::mutex notify_mu;
  std::vector<std::string> notifications;
  std::atomic<bool> draining{false};
  std::thread drainer;

  ~Daemon() {
    stop();
    stop_draining();
  }

  void stop_draining() {
    draining = false;
    if (drainer.joinable()) drainer.join();
    if (notify_fd >= 0) ::close(notify_fd);
    notify_fd = -1;
  }

  // Starts stallmond; again after stop() it restarts in the same directory (same state_dir,
  // certificates and log).
  bool start(const std::string& domain, std::string* error) {
    if (dir.empty()) {
      char tmpl[] = "/tmp/stallmond-e2e-XXXXXX";
      dir = mkdtemp(tmpl);
      certs = TestCerts::make(dir);
      if (!certs.error.empty()) {
        *error = certs.error;
        return false;
      }
    }
    socket = dir + "/run/stallmond.sock";
    log = dir + "/stallmond.log";
    log_offset = log_text().size();
    notify_path = dir + "/notify.sock";
    stop_draining();
    ::unlink(notify_path.c_str());
    {
      std::lock_guard l(notify_mu);
      notifications.clear();
    }
    notify_fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, notify_path.c_str(), sizeof a.sun_path - 1);
    if (::bind(notify_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      *error = "bind notify socket";
      return false;
    }
    draining = true;
    drainer = std::thread([this] {
      char buf[4096];
      while (draining) {
        pollfd p{notify_fd, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        for (ssize_t n; (n = ::recv(notify_fd, buf, sizeof buf, 0)) > 0;) {
          std::lock_guard l(notify_mu);
          notifications.emplace_back(buf, static_cast<size_t>(n));
        }
      }
    });
    config = dir + "/stallmond.yaml";
    // The TCP allow-list names the test client by its SAN URI, and requests are capped at
    // 16 KiB (the hardened edges of issue 11, checked on the daemon as configured from a file).
    // No finding store by default: it lives in the shared state_dir, and an earlier run's
    // active findings of this guest, restored and continued, would turn the OPENED events this
    // test waits for into UPDATED ones (the restart test gives its daemon a state_dir of its own).
    std::ofstream(config) << config_text();
    std::vector<std::string> args = {STALLMOND_PATH,     "--config",     config,
                                     "--socket",         socket,         "--domain",
                                     domain,             "--tcp-listen", "127.0.0.1:0",
                                     "--tls-cert",       certs.server_cert, "--tls-key",
                                     certs.server_key,   "--tls-client-ca", certs.ca,
                                     // No /metrics listener: its fixed default port may be taken
                                     // by another daemon on a shared host.
                                     "--metrics-listen", ""};
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
      std::string s = *e;
      if (s.rfind("NOTIFY_SOCKET=", 0) == 0 || s.rfind("WATCHDOG_", 0) == 0) continue;
      env.push_back(s);
    }
    env.push_back("NOTIFY_SOCKET=" + notify_path);
    env.push_back("WATCHDOG_USEC=2000000");  // keep-alive every 1 s
    std::vector<char*> argv, envp;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      *error = std::string("posix_spawn: ") + std::strerror(rc);
      return false;
    }
    // The TCP port (we asked for any) is in the start-up log line.
    std::regex port_re("mutual TLS, port ([0-9]+)");
    for (auto until = Clock::now() + 30s; Clock::now() < until; std::this_thread::sleep_for(100ms)) {
      std::smatch m;
      std::string text = log_text().substr(log_offset);
      if (std::regex_search(text, m, port_re)) {
        tcp_port = std::stoi(m[1]);
        return true;
      }
      if (exited()) break;
    }
    *error = "stallmond did not start; log:\n" + log_text();
    return false;
  }

  std::string config_text() const {
    return std::string("logging: {level: debug}\n"
                       "server:\n"
                       "  max_request_bytes: 16384\n"
                       "  tcp: {allowed_clients: [\"spiffe://example.net/ctl\"]}\n") +
           (with_store ? "state_dir: " + dir + "/state\n" : "store: {enabled: false}\n");
  }

  bool exited() {
    int st = 0;
    return pid > 0 && waitpid(pid, &st, WNOHANG) == pid ? (pid = -1, true) : false;
  }

  std::string log_text() const {
    std::ifstream in(log);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Whether the daemon sent `what` to NOTIFY_SOCKET in this run.
  bool notified(const std::string& what) {
    std::lock_guard l(notify_mu);
    for (const auto& n : notifications) {
      if (n.find(what) != std::string::npos) return true;
    }
    return false;
  }
  bool wait_notified(const std::string& what, std::chrono::milliseconds timeout) {
    for (auto until = Clock::now() + timeout; Clock::now() < until; std::this_thread::sleep_for(50ms)) {
      if (notified(what)) return true;
    }
    return notified(what);
  }

  // SIGTERM and wait; returns the exit code (or -1).
  int stop(std::chrono::milliseconds timeout = 15s) {
    if (pid <= 0) return -1;
    ::kill(pid, SIGTERM);
    for (auto until = Clock::now() + timeout; Clock::now() < until; std::this_thread::sleep_for(50ms)) {
      int st = 0;
      if (waitpid(pid, &st, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
    }
    // It did not stop: say where it is stuck before killing it (gdb when the host has it).
    std::cout << "stallmond " << pid << " ignored SIGTERM for " << timeout.count() << " ms; its threads:\n";
    if (::access("/usr/bin/gdb", X_OK) == 0) {
      auto bt = stallmon::testbed::run_process(
          {"/usr/bin/gdb", "-p", std::to_string(pid), "-batch", "-ex", "thread apply all bt"}, 120s);
      std::cout << bt.out << bt.err;
    } else {
      for (const auto& t : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
        std::ifstream comm(t.path() / "comm"), stack(t.path() / "stack");
        std::cout << t.path().filename().string() << " " << std::string(std::istreambuf_iterator<char>(comm), {})
                  << std::string(std::istreambuf_iterator<char>(stack), {});
      }
    }
    std::cout << std::flush;
    ::kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    pid = -1;
    return -1;
  }

  std::shared_ptr<grpc::Channel> unix_channel() const {
    return grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials());
  }
  std::shared_ptr<grpc::Channel> tcp_channel(bool with_client_cert) const {
    return with_client_cert ? tcp_channel_as(certs.client_cert, certs.client_key) : tcp_channel_as("", "");
  }
  // A TLS channel presenting `cert` (none if empty).
  std::shared_ptr<grpc::Channel> tcp_channel_as(const std::string& cert, const std::string& key) const {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = TestCerts::read(certs.ca);
    if (!cert.empty()) {
      o.pem_cert_chain = TestCerts::read(cert);
      o.pem_private_key = TestCerts::read(key);
    }
    return grpc::CreateChannel("127.0.0.1:" + std::to_string(tcp_port), grpc::SslCredentials(o));
  }
};

Daemon& daemon_for(const std::string& domain) {
  static std::unique_ptr<Daemon> d;
  static std::string error;
  if (!d && error.empty()) {
    d = std::make_unique<Daemon>();
    if (!d->start(domain, &error)) d.reset();
  }
  if (!d) throw std::runtime_error("stallmond: " + error);
  return *d;
}

std::unique_ptr<grpc::ClientContext> ctx(std::chrono::milliseconds t = 10s) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + t);
  return c;
}

std::string describe(const v1::FindingEvent& e) {
  const auto& f = e.finding();
  std::string cpus;
  for (int c : f.cpus()) cpus += (cpus.empty() ? "" : ",") + std::to_string(c);
  return "rev " + std::to_string(e.revision()) + " " + v1::FindingEvent::Type_Name(e.type()) + " " +
         v1::FindingKind_Name(f.kind()) + " cpus [" + cpus + "] " + f.summary();
}

// Collects a WatchFindings stream on a thread.
class Watcher {
 public:
  Watcher(std::shared_ptr<grpc::Channel> ch, const std::string& domain, uint64_t after_revision = 0,
          uint64_t incarnation = 0)
      : stub_(v1::Stallmon::NewStub(ch)) {
    req_.set_domain(domain);
    req_.set_after_revision(after_revision);
    req_.set_incarnation(incarnation);
    reader_ = stub_->WatchFindings(&ctx_, req_);
    thread_ = std::thread([this] {
      v1::FindingEvent e;
      while (reader_->Read(&e)) {
        std::lock_guard l(mu_);
        events_.push_back(e);
        cv_.notify_all();
      }
      std::lock_guard l(mu_);
      ended_ = true;
      cv_.notify_all();
    });
  }
  ~Watcher() {
    ctx_.TryCancel();
    thread_.join();
    (void)reader_->Finish();
  }
  // Waits for an event matching pred (among those from index `from`); returns it.
  std::optional<v1::FindingEvent> wait(const std::function<bool(const v1::FindingEvent&)>& pred,
                                       std::chrono::milliseconds timeout, size_t from = 0) {
    std::unique_lock l(mu_);
    std::optional<v1::FindingEvent> found;
    cv_.wait_for(l, timeout, [&] {
      for (size_t i = from; i < events_.size(); ++i) {
        if (pred(events_[i])) {
          found = events_[i];
          return true;
        }
      }
      return ended_;
    });
    return found;
  }
  size_t size() {
    std::lock_guard l(mu_);
    return events_.size();
  }
  std::vector<v1::FindingEvent> events() {
    std::lock_guard l(mu_);
    return events_;
  }
  std::string dump(size_t from = 0) {
    std::lock_guard l(mu_);
    std::string out;
    for (size_t i = from; i < events_.size(); ++i) out += "  " + describe(events_[i]) + "\n";
    return out;
  }

 private:
  std::unique_ptr<v1::Stallmon::Stub> stub_;
  grpc::ClientContext ctx_;
  v1::WatchFindingsRequest req_;
  std::unique_ptr<grpc::ClientReader<v1::FindingEvent>> reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<v1::FindingEvent> events_;
  bool ended_ = false;
  std::thread thread_;
};

stallmon::testbed::ProcessResult stallctl(const Daemon& d, std::vector<std::string> args) {
  std::vector<std::string> argv = {STALLCTL_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--socket");
  argv.push_back(d.socket);
  return stallmon::testbed::run_process(argv, 60s);
}

class StallmondTest : public GuestTest {
 protected:
  Daemon& daemon() { return daemon_for(guest().name()); }
};

TEST_F(StallmondTest, StartsNotifiesSystemdAndIsHealthy) {
  auto& d = daemon();
  ASSERT_TRUE(d.wait_notified("READY=1", 30s)) << d.log_text();
  ASSERT_TRUE(d.wait_notified("WATCHDOG=1", 5s)) << "no keep-alive within 5 s (WATCHDOG_USEC=2 s)";
  auto stub = health::Health::NewStub(d.unix_channel());
  for (const char* service : {"", "stallmon.v1.Stallmon"}) {
    health::HealthCheckRequest req;
    req.set_service(service);
    health::HealthCheckResponse resp;
    auto st = stub->Check(ctx().get(), req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.status(), health::HealthCheckResponse::SERVING) << "service '" << service << "'";
  }
  EXPECT_EQ(std::filesystem::status(d.socket).permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                std::filesystem::perms::group_read | std::filesystem::perms::group_write);
}

TEST_F(StallmondTest, ListsOnlyItsDomainAndIntrospects) {
  auto& d = daemon();
  auto stub = v1::Stallmon::NewStub(d.unix_channel());
  v1::GetDomainRequest req;
  req.set_domain(guest().name());
  v1::Domain dom;
  bool ok = false;
  for (auto until = Clock::now() + 180s; Clock::now() < until; std::this_thread::sleep_for(1s)) {
    dom.Clear();
    auto st = stub->GetDomain(ctx().get(), req, &dom);
    if (st.ok() && dom.health().introspection_ok() && dom.has_guest_snapshot_at()) {
      ok = true;
      break;
    }
  }
  ASSERT_TRUE(ok) << "introspection never became ready: " << dom.health().introspection_error() << "\n"
                  << d.log_text();
  EXPECT_EQ(dom.vcpus_size(), 4);
  EXPECT_EQ(dom.summary().qemu_pid(), guest().qemu_pid());
  EXPECT_EQ(dom.vcpus(2).host_tid(), guest().vcpu_tid(2));
  EXPECT_FALSE(dom.health().kernel_release().empty());
  v1::ListDomainsResponse list;
  ASSERT_TRUE(stub->ListDomains(ctx().get(), {}, &list).ok());
  ASSERT_EQ(list.domains_size(), 1) << "the --domain filter must hide other engineers' guests";
  EXPECT_EQ(list.domains(0).name(), guest().name());

  v1::GetVcpuHistoryRequest h;
  h.set_domain(guest().name());
  h.add_vcpus(2);
  h.mutable_window()->set_seconds(5);
  v1::GetVcpuHistoryResponse hr;
  ASSERT_TRUE(stub->GetVcpuHistory(ctx().get(), h, &hr).ok());
  ASSERT_EQ(hr.vcpus_size(), 1);
  EXPECT_GT(hr.vcpus(0).samples_size(), 10);
}

TEST_F(StallmondTest, MalformedRequestsAreInvalidArgumentUnknownDomainsNotFound) {
  auto& d = daemon();
  auto stub = v1::Stallmon::NewStub(d.unix_channel());
  v1::Domain dom;
  auto st = stub->GetDomain(ctx().get(), {}, &dom);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  v1::GetDomainRequest req;
  req.set_domain("no-such-domain-" + std::to_string(getpid()));
  st = stub->GetDomain(ctx().get(), req, &dom);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  v1::GetVcpuHistoryRequest h;
  h.set_domain(guest().name());
  h.mutable_window()->set_seconds(-1);
  v1::GetVcpuHistoryResponse hr;
  st = stub->GetVcpuHistory(ctx().get(), h, &hr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  h.clear_window();
  h.add_vcpus(64);
  st = stub->GetVcpuHistory(ctx().get(), h, &hr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  v1::InspectDomainRequest ir;
  ir.set_domain(guest().name());
  ir.set_printk_records(-5);
  v1::InspectDomainResponse inr;
  st = stub->InspectDomain(ctx().get(), ir, &inr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  v1::ListFindingsRequest lf;
  lf.add_kinds(static_cast<v1::FindingKind>(1000));
  v1::ListFindingsResponse lr;
  st = stub->ListFindings(ctx().get(), lf, &lr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
}

TEST_F(StallmondTest, TcpRequiresAClientCertificate) {
  auto& d = daemon();
  v1::ListDomainsResponse r;
  auto st = v1::Stallmon::NewStub(d.tcp_channel(false))->ListDomains(ctx(5s).get(), {}, &r);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << "a client without a certificate was served";
  st = v1::Stallmon::NewStub(d.tcp_channel(true))->ListDomains(ctx(5s).get(), {}, &r);
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  ASSERT_EQ(r.domains_size(), 1);
  EXPECT_EQ(r.domains(0).name(), guest().name());
}

// Issue 11's TCP allow-list and request cap, on the daemon itself (configured from its file):
// a certificate from the right CA that the allow-list does not name is refused, naming the
// subject; an oversized request is refused before it is parsed, and the daemon goes on serving.
TEST_F(StallmondTest, TcpAllowListAndRequestCapHoldOnTheRunningDaemon) {
  auto& d = daemon();
  v1::ListDomainsResponse r;
  auto st = v1::Stallmon::NewStub(d.tcp_channel_as(d.certs.intruder_cert, d.certs.intruder_key))
                ->ListDomains(ctx(5s).get(), {}, &r);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  EXPECT_NE(st.error_message().find("CN=intruder"), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find("allowed_clients"), std::string::npos) << st.error_message();
  EXPECT_EQ(r.domains_size(), 0);

  auto unix_stub = v1::Stallmon::NewStub(d.unix_channel());
  v1::GetDomainRequest big;
  big.set_domain(std::string(64 * 1024, 'x'));
  v1::Domain dom;
  st = unix_stub->GetDomain(ctx(5s).get(), big, &dom);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  v1::GetDomainRequest ok;
  ok.set_domain(guest().name());
  st = unix_stub->GetDomain(ctx(5s).get(), ok, &dom);
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(dom.summary().name(), guest().name());
}

bool has_cpu(const v1::Finding& f, int cpu) {
  for (int c : f.cpus()) {
    if (c == cpu) return true;
  }
  return false;
}

TEST_F(StallmondTest, SeedCase1FindingsAndTheirResolutionArriveOnWatchFindings) {
  auto& d = daemon();
  Watcher w(d.unix_channel(), guest().name());
  ASSERT_TRUE(w.wait([](auto& e) { return e.type() == v1::FindingEvent::SYNCED; }, 10s)) << w.dump();

  {
    const size_t from = w.size();
    // Seed case 1's shape: vCPU 2 frozen while halted (the guest CPU idle), the rest of the VM
    // running; the injector decides both from host thread states and retries until it has them.
    auto f = guest().freeze_vcpu(2, {.want_case = "vcpu-only", .attempts = 5, .want_idle = true});
    ASSERT_TRUE(f.applied()) << f.error();
    std::cout << "freeze: " << f.status().dump() << std::endl;
    ASSERT_EQ(f.freeze_case(), "vcpu-only") << "every freeze caught QEMU's big lock";
    ASSERT_TRUE(f.status().value("frozen_idle", false)) << "vCPU 2 never seen halted before a freeze";
    auto ipi = w.wait(
        [](auto& e) {
          return e.type() == v1::FindingEvent::OPENED && e.finding().kind() == v1::GUEST_IPI_STALL &&
                 has_cpu(e.finding(), 2);
        },
        30s, from);
    auto blocked = w.wait(
        [](auto& e) {
          return e.type() == v1::FindingEvent::OPENED && e.finding().kind() == v1::VCPU_HOST_BLOCKED &&
                 has_cpu(e.finding(), 2);
        },
        30s, from);
    std::cout << "events after the freeze:\n" << w.dump(from) << std::flush;
    ASSERT_TRUE(ipi) << "no GUEST_IPI_STALL involving CPU 2 on the stream";
    ASSERT_TRUE(blocked) << "no VCPU_HOST_BLOCKED on vCPU 2 on the stream";
    EXPECT_EQ(ipi->finding().cause(), v1::CAUSE_HOST_BLOCKED);
    EXPECT_EQ(blocked->finding().severity(), v1::CRITICAL);
    EXPECT_GT(ipi->revision(), 0u);

    // While frozen: the API shows vCPU 2 blocked and the wait graph rooted at CPU 2.
    auto stub = v1::Stallmon::NewStub(d.unix_channel());
    v1::GetDomainRequest gd;
    gd.set_domain(guest().name());
    v1::Domain dom;
    ASSERT_TRUE(stub->GetDomain(ctx().get(), gd, &dom).ok());
    EXPECT_EQ(dom.vcpus(2).latest().state_letter(), "D");
    EXPECT_GE(dom.summary().active_findings(), 2);
    EXPECT_EQ(dom.summary().worst_severity(), v1::CRITICAL);
    v1::InspectDomainRequest ir;
    ir.set_domain(guest().name());
    v1::InspectDomainResponse inr;
    auto st = stub->InspectDomain(ctx().get(), ir, &inr);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_GT(inr.cpus_size(), 2);
    EXPECT_TRUE(inr.cpus(2).state().idle());

    // A reader of ListFindings sees the same active findings.
    v1::ListFindingsRequest lf;
    lf.set_domain(guest().name());
    lf.set_state(v1::FINDING_STATE_FILTER_ACTIVE);
    v1::ListFindingsResponse lr;
    ASSERT_TRUE(stub->ListFindings(ctx().get(), lf, &lr).ok());
    std::set<std::string> active;
    for (const auto& x : lr.findings()) active.insert(x.id());
    EXPECT_TRUE(active.count(ipi->finding().id()));
    EXPECT_TRUE(active.count(blocked->finding().id()));

    auto undo = f.release();
    EXPECT_TRUE(undo.value("ok", false)) << undo.dump();
    auto resolved = [&](const std::string& id) {
      return w.wait([id](auto& e) { return e.type() == v1::FindingEvent::RESOLVED && e.finding().id() == id; }, 30s,
                    from);
    };
    auto r1 = resolved(ipi->finding().id());
    auto r2 = resolved(blocked->finding().id());
    std::cout << "events after the thaw:\n" << w.dump(from) << std::flush;
    ASSERT_TRUE(r1) << "GUEST_IPI_STALL not resolved after the thaw";
    ASSERT_TRUE(r2) << "VCPU_HOST_BLOCKED not resolved after the thaw";
    EXPECT_TRUE(r1->finding().has_resolved_at());
    EXPECT_FALSE(r1->finding().active());

    // A client that resumes from a revision gets exactly what it missed.
    v1::WatchFindingsRequest resume;
    resume.set_domain(guest().name());
    resume.set_after_revision(ipi->revision() - 1);
    resume.set_incarnation(ipi->incarnation());
    auto c = ctx(10s);
    auto reader = stub->WatchFindings(c.get(), resume);
    v1::FindingEvent e;
    ASSERT_TRUE(reader->Read(&e));
    EXPECT_EQ(e.revision(), ipi->revision());
    EXPECT_EQ(e.finding().id(), ipi->finding().id());
    c->TryCancel();
    (void)reader->Finish();
  }
}

int64_t nanos(const google::protobuf::Timestamp& t) { return t.seconds() * 1'000'000'000 + t.nanos(); }

// Issue 14's acceptance: seed case 1 with stallmond restarted mid-incident. A second daemon,
// with a finding store of its own (the shared one keeps none), sees vCPU 2 frozen, is stopped
// (SIGTERM) while the freeze lasts and started again on the same state_dir: the critical
// GUEST_IPI_STALL keeps its id and its incident bundle (lanes from before the restart and after
// it), a WatchFindings client resumes without RESYNC, and after the thaw the incident's HTML
// report renders in headless Chromium, its screenshot showing vCPU 2's blocked lane and CPU 0's
// wait on CPU 2 (render_report.py reads the pixels).
TEST_F(StallmondTest, IncidentOutlivesARestartAndItsReportRendersInChromium) {
  Daemon d;
  d.with_store = true;
  std::string error;
  ASSERT_TRUE(d.start(guest().name(), &error)) << error;
  auto stub = [&] { return v1::Stallmon::NewStub(d.unix_channel()); };
  auto incident = [&](const std::string& id, v1::Incident* out) {
    v1::GetIncidentRequest r;
    r.set_finding_id(id);
    return stub()->GetIncident(ctx().get(), r, out);
  };
  auto vcpu_lane = [](const v1::Incident& inc, int vcpu) -> const v1::IncidentVcpuLane* {
    for (const auto& l : inc.vcpus())
      if (l.vcpu() == vcpu) return &l;
    return nullptr;
  };

  v1::FindingEvent ipi;
  v1::Incident before;
  uint64_t last_revision = 0, incarnation = 0;
  auto first = std::make_unique<Watcher>(d.unix_channel(), guest().name());
  ASSERT_TRUE(first->wait([](auto& e) { return e.type() == v1::FindingEvent::SYNCED; }, 10s)) << first->dump();
  auto f = guest().freeze_vcpu(2, {.want_case = "vcpu-only", .attempts = 5, .want_idle = true});
  {
    Watcher& w = *first;
    ASSERT_TRUE(f.applied()) << f.error();
    ASSERT_EQ(f.freeze_case(), "vcpu-only") << "every freeze caught QEMU's big lock";
    auto opened = w.wait(
        [](auto& e) {
          return e.type() == v1::FindingEvent::OPENED && e.finding().kind() == v1::GUEST_IPI_STALL &&
                 has_cpu(e.finding(), 2) && has_cpu(e.finding(), 0);
        },
        30s);
    ASSERT_TRUE(opened) << "no GUEST_IPI_STALL of CPU 0 on CPU 2:\n" << w.dump();
    ipi = *opened;
    EXPECT_EQ(ipi.finding().severity(), v1::CRITICAL) << "only critical findings get a bundle";
    std::this_thread::sleep_for(3s);  // a few seconds of the stall in the bundle
    auto st = incident(ipi.finding().id(), &before);
    ASSERT_TRUE(st.ok()) << st.error_message();
    const auto* lane = vcpu_lane(before, 2);
    ASSERT_TRUE(lane && lane->points_size() > 0) << "no vCPU 2 lane in the bundle before the restart";
    // The lookback: the lanes start before the onset (from the sampler's history).
    EXPECT_LT(nanos(lane->points(0).at()), nanos(ipi.finding().onset()));
    auto all = w.events();
    last_revision = all.back().revision();
    incarnation = all.back().incarnation();
    std::cout << "before the restart: " << describe(ipi) << "; vCPU 2 lane " << lane->points_size()
              << " points; last revision " << last_revision << std::endl;
  }
  first.reset();  // its stream ends before the daemon does

  ASSERT_EQ(d.stop(), 0) << d.log_text();
  const auto restarted_at = std::chrono::system_clock::now();
  ASSERT_TRUE(d.start(guest().name(), &error)) << error;

  Watcher w(d.unix_channel(), guest().name(), last_revision, incarnation);
  ASSERT_TRUE(w.wait([](auto& e) { return e.type() == v1::FindingEvent::SYNCED; }, 10s)) << w.dump();
  for (const auto& e : w.events())
    EXPECT_NE(e.type(), v1::FindingEvent::RESYNC) << "the resumed stream started over:\n" << w.dump();

  // The restored finding is re-evaluated against the still frozen guest and continues under its
  // id: wait until the bundle holds vCPU 2 samples from 3 s after the restart.
  const int64_t after =
      std::chrono::duration_cast<std::chrono::nanoseconds>(restarted_at.time_since_epoch()).count() + 3'000'000'000;
  v1::Incident during;
  bool grew = false;
  for (auto until = Clock::now() + 30s; Clock::now() < until && !grew; std::this_thread::sleep_for(500ms)) {
    if (!incident(ipi.finding().id(), &during).ok()) continue;
    const auto* lane = vcpu_lane(during, 2);
    grew = lane && lane->points_size() > 0 && nanos(lane->points(lane->points_size() - 1).at()) > after;
  }
  ASSERT_TRUE(grew) << "the bundle did not continue after the restart:\n" << d.log_text().substr(d.log_offset);
  EXPECT_EQ(nanos(during.window_start()), nanos(before.window_start()));
  EXPECT_TRUE(during.finding().active());
  const auto* lane = vcpu_lane(during, 2);
  EXPECT_EQ(nanos(lane->points(0).at()), nanos(vcpu_lane(before, 2)->points(0).at()))
      << "the samples from before the restart are gone";
  EXPECT_EQ(lane->points(lane->points_size() - 1).state(), v1::THREAD_STATE_DISK_SLEEP);
  {
    v1::ListFindingsRequest lf;
    lf.set_domain(guest().name());
    lf.set_state(v1::FINDING_STATE_FILTER_ACTIVE);
    v1::ListFindingsResponse lr;
    ASSERT_TRUE(stub()->ListFindings(ctx().get(), lf, &lr).ok());
    bool still = false;
    for (const auto& x : lr.findings()) still |= x.id() == ipi.finding().id();
    EXPECT_TRUE(still) << "GUEST_IPI_STALL " << ipi.finding().id() << " not active after the restart:\n" << w.dump();
  }

  // One continuous fault: nothing resolved across the restart (a restored finding its rule had
  // no time to confirm again would resolve here and reopen under a new id).
  for (const auto& e : w.events())
    EXPECT_NE(e.type(), v1::FindingEvent::RESOLVED) << "resolved while vCPU 2 stayed frozen: " << describe(e);

  auto undo = f.release();
  EXPECT_TRUE(undo.value("ok", false)) << undo.dump();
  auto resolved = w.wait(
      [&](auto& e) { return e.type() == v1::FindingEvent::RESOLVED && e.finding().id() == ipi.finding().id(); }, 30s);
  std::cout << "events after the restart:\n" << w.dump() << std::flush;
  ASSERT_TRUE(resolved) << "the GUEST_IPI_STALL was not resolved under its id after the thaw";
  v1::Incident done;
  ASSERT_TRUE(incident(ipi.finding().id(), &done).ok());
  EXPECT_TRUE(done.has_window_end());

  auto text = stallctl(d, {"incident", ipi.finding().id()});
  std::cout << "$ stallctl incident " << ipi.finding().id() << "\n" << text.out << text.err << std::flush;
  EXPECT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find(ipi.finding().id()), std::string::npos);

  const std::string html = d.dir + "/incident.html";
  auto written = stallctl(d, {"incident", ipi.finding().id(), "--html", html});
  ASSERT_EQ(written.exit_code, 0) << written.err;
  std::filesystem::create_directories(STALLMON_TEST_ARTIFACTS);
  const std::string png = std::string(STALLMON_TEST_ARTIFACTS) + "/incident-restart.png";
  std::filesystem::copy_file(html, std::string(STALLMON_TEST_ARTIFACTS) + "/incident-restart.html",
                             std::filesystem::copy_options::overwrite_existing);
  auto render = stallmon::testbed::run_process(
      {"python3", RENDER_REPORT_PY, html, png, "--vcpus", std::to_string(done.vcpus_size()), "--cpus",
       std::to_string(done.guest_cpus_size()), "--blocked-vcpu", "2", "--waiter", "0", "--target", "2"},
      300s);
  std::cout << "render_report.py:\n" << render.out << render.err << std::flush;
  EXPECT_EQ(render.exit_code, 0) << "the report did not render as it should (screenshot: " << png << ")";
  EXPECT_EQ(d.stop(), 0);
}

TEST_F(StallmondTest, StallctlAgainstTheDaemon) {
  auto& d = daemon();
  for (std::vector<std::string> args :
       {std::vector<std::string>{"status"}, {"domains"}, {"vcpus", guest().name()}, {"findings", "-v"},
        {"inspect", guest().name(), "--printk", "5"}, {"findings", "--json"}}) {
    auto r = stallctl(d, args);
    std::string cmd;
    for (auto& a : args) cmd += " " + a;
    std::cout << "$ stallctl" << cmd << "\n" << r.out << r.err << std::flush;
    EXPECT_EQ(r.exit_code, 0) << cmd << ": " << r.err;
  }
  auto r = stallctl(d, {"vcpus", "no-such-domain"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("NOT_FOUND"), std::string::npos) << r.err;
}

TEST_F(StallmondTest, SighupReloadsTheLogLevelAndNamesWhatNeedsARestart) {
  auto& d = daemon();
  {
    // The same file with two keys changed: one applied live, one that needs a restart.
    std::string text = d.config_text();
    text.replace(text.find("level: debug"), 12, "level: info");
    std::ofstream(d.config) << text << "diagnosis: {ipi_stall_min: 1s}\n";
  }
  ::kill(d.pid, SIGHUP);
  const std::string want = "SIGHUP: reloaded " + d.config +
                           "; applied: logging.level; changed but needing a restart: diagnosis.ipi_stall_min";
  bool logged = false;
  for (auto until = Clock::now() + 10s; Clock::now() < until && !logged; std::this_thread::sleep_for(100ms)) {
    logged = d.log_text().find(want) != std::string::npos;
  }
  EXPECT_TRUE(logged) << d.log_text();
  EXPECT_TRUE(d.wait_notified("RELOADING=1", 5s));
  // A broken file is refused; the daemon keeps serving.
  { std::ofstream(d.config) << "logging: {level: [\n"; }
  ::kill(d.pid, SIGHUP);
  bool refused = false;
  for (auto until = Clock::now() + 10s; Clock::now() < until && !refused; std::this_thread::sleep_for(100ms)) {
    refused = d.log_text().find("SIGHUP: configuration not reloaded") != std::string::npos;
  }
  EXPECT_TRUE(refused) << d.log_text();
  auto stub = v1::Stallmon::NewStub(d.unix_channel());
  v1::AgentInfo info;
  ASSERT_TRUE(stub->GetAgentInfo(ctx().get(), {}, &info).ok());
  EXPECT_NE(info.effective_config().find("level: info"), std::string::npos) << info.effective_config();
  EXPECT_NE(info.effective_config().find("ipi_stall_min: 500ms"), std::string::npos) << "not applied live";
}

TEST_F(StallmondTest, SigtermStopsCleanly) {
  auto& d = daemon();
  const auto t0 = Clock::now();
  int code = d.stop();
  EXPECT_EQ(code, 0) << d.log_text();
  EXPECT_LT(Clock::now() - t0, 10s);
  EXPECT_TRUE(d.wait_notified("STOPPING=1", 2s));
  EXPECT_FALSE(std::filesystem::exists(d.socket));
  auto r = stallctl(d, {"status"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("stallmond is not running (no socket at"), std::string::npos) << r.err;
  std::cout << "stallmond log:\n" << d.log_text() << std::flush;
}

}  // namespace
