// SPDX-License-Identifier: Apache-2.0
// MonitorBackend, the daemon's Backend: every query reaches the StallMonitor (a real one on a
// fake host, hermetic_agent.h), AgentStatus joins the daemon's facts with the monitor's and
// the watcher's connection (libvirt's in-process test driver, test:///default).
#include <gtest/gtest.h>

#include <filesystem>
#include <mutex>
#include <thread>

#include "hermetic_agent.h"
#include "stallmon/libvirt/domain_watcher.h"

namespace stallmon::server {
namespace {

using namespace std::chrono_literals;
using testing::HermeticAgent;

class Recorder final : public diagnosis::FindingListener {
 public:
  void on_finding_event(const diagnosis::FindingEvent& e) override {
    std::lock_guard l(mu_);
    revisions_.push_back(e.revision);
  }
  std::vector<uint64_t> revisions() const {
    std::lock_guard l(mu_);
    return revisions_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<uint64_t> revisions_;
};

class MonitorBackendTest : public ::testing::Test {
 protected:
  HermeticAgent agent_;
  core::testing::FakeQemu& demo_ = agent_.add("demo", "uuid-demo", 2);
  Backend& backend_ = agent_.backend;
};

TEST_F(MonitorBackendTest, AgentStatusJoinsTheDaemonsFactsWithTheMonitors) {
  agent_.status.version = "1.2.3";
  agent_.status.hostname = "host1";
  agent_.status.effective_config = "sampling: {interval: 100ms}\n";
  agent_.status.sampling_alive = false;
  agent_.status.libvirt_uri = "qemu:///system";  // no watcher: left as the daemon says
  agent_.status.ticks = 999;                      // the monitor's own count wins
  agent_.tick(5);
  AgentStatus a = backend_.agent();
  EXPECT_EQ(a.version, "1.2.3");
  EXPECT_EQ(a.hostname, "host1");
  EXPECT_EQ(a.effective_config, "sampling: {interval: 100ms}\n");
  EXPECT_FALSE(a.sampling_alive);
  EXPECT_EQ(a.libvirt_uri, "qemu:///system");
  EXPECT_EQ(a.ticks, 5u);
  EXPECT_EQ(a.ticks, agent_.monitor.stats().ticks);
  EXPECT_EQ(a.started_at, agent_.monitor.stats().started_at);
  EXPECT_EQ(a.sampling_interval, 100ms);
  EXPECT_EQ(a.thread_stats_source, "proc");
  EXPECT_EQ(a.thread_stats_reason, agent_.monitor.stats().thread_stats_reason);
}

TEST(MonitorBackend, WithoutAStatusFunctionOnlyTheMonitorsFields) {
  core::testing::FakeHost host;
  core::StallMonitor monitor(testing::hermetic_config(), {&host.fs, &host.mono, &host.clock, {}});
  MonitorBackend backend(monitor, nullptr, {});
  AgentStatus a = backend.agent();
  EXPECT_TRUE(a.version.empty());
  EXPECT_EQ(a.ticks, 0u);
  EXPECT_EQ(a.started_at, monitor.stats().started_at);
  EXPECT_EQ(a.sampling_interval, 100ms);
}

TEST_F(MonitorBackendTest, QueriesAreTheMonitors) {
  agent_.tick(12);
  auto ds = backend_.domains();
  ASSERT_EQ(ds.size(), 1u);
  EXPECT_EQ(ds[0].name, "demo");
  EXPECT_EQ(ds[0].ticks, agent_.monitor.domains()[0].ticks);

  for (const char* key : {"demo", "uuid-demo"}) {
    auto d = backend_.domain(key);
    ASSERT_TRUE(d.ok()) << key;
    ASSERT_EQ(d->vcpus.size(), 2u);
    EXPECT_EQ(d->vcpus[1].thread.tid, demo_.vcpu_tid(1));
  }
  EXPECT_EQ(backend_.domain("nope").error().code, ErrorCode::kNotFound);

  auto h = backend_.vcpu_history("uuid-demo", 1, 0ns);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->points.size(), 12u);
  EXPECT_EQ(h->tid, demo_.vcpu_tid(1));
  auto recent = backend_.vcpu_history("demo", 1, 500ms);
  ASSERT_TRUE(recent.ok());
  EXPECT_EQ(recent->points.size(), 5u);
  EXPECT_EQ(backend_.vcpu_history("demo", 2, 0ns).error().code, ErrorCode::kNotFound);

  // Introspection is off: the monitor's answer, with its reason.
  auto r = backend_.inspect("demo", 1ms);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnsupported);
  EXPECT_FALSE(r.error().message.empty());
  EXPECT_EQ(backend_.inspect("nope", 1ms).error().code, ErrorCode::kNotFound);
}

TEST_F(MonitorBackendTest, FindingsEventsRevisionAndListenersAreTheEngines) {
  Recorder listener;
  backend_.add_finding_listener(&listener);
  EXPECT_EQ(backend_.revision(), 0u);
  const uint64_t rev = agent_.block(demo_, 1);
  ASSERT_GT(rev, 0u);
  EXPECT_EQ(backend_.revision(), rev);

  auto all = backend_.list_findings({});
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].kind, diagnosis::FindingKind::kVcpuHostBlocked);
  EXPECT_EQ(all[0].cpus, std::vector<int>{1});
  EXPECT_EQ(all[0].id, agent_.monitor.engine().list_findings({})[0].id);
  diagnosis::FindingQuery other;
  other.domain = "other";
  EXPECT_TRUE(backend_.list_findings(other).empty());

  auto ev = backend_.events_since(0);
  EXPECT_TRUE(ev.complete);
  EXPECT_EQ(ev.revision, rev);
  std::vector<uint64_t> logged;
  for (const auto& e : ev.events) logged.push_back(e.revision);
  EXPECT_EQ(listener.revisions(), logged);

  // Removed: the thaw's events are logged but not delivered.
  backend_.remove_finding_listener(&listener);
  const uint64_t after = agent_.thaw(demo_, 1);
  EXPECT_GT(after, rev);
  EXPECT_EQ(listener.revisions(), logged);
  EXPECT_EQ(backend_.events_since(rev).events.back().type, diagnosis::FindingEvent::Type::kResolved);
}

// The libvirt connection comes from the watcher: connected to the in-process test driver, and
// failing on a test driver file that does not exist.
TEST(MonitorBackendWatcher, ReportsTheLibvirtConnection) {
  core::testing::FakeHost host;
  core::StallMonitor monitor(testing::hermetic_config(), {&host.fs, &host.mono, &host.clock, {}});
  const auto empty = std::filesystem::temp_directory_path() / ("stallmon-backend-" + std::to_string(::getpid()));
  std::filesystem::create_directories(empty);
  auto options = [&](const std::string& uri) {
    libvirt::WatcherOptions o;
    o.uri = uri;
    o.proc_root = empty.string();
    o.qemu_run_dir = empty.string();
    return o;
  };
  {
    libvirt::DomainWatcher watcher(options("test:///default"));
    MonitorBackend backend(monitor, &watcher, [] {
      AgentStatus s;
      s.libvirt_uri = "overridden by the watcher";
      return s;
    });
    ASSERT_TRUE(watcher.start().ok());
    // The ctest timeout bounds these waits; they end as soon as the watcher gets there.
    while (watcher.wait_synced(0, 1s) == 0) {
    }
    AgentStatus a = backend.agent();
    EXPECT_EQ(a.libvirt_uri, "test:///default");
    EXPECT_TRUE(a.libvirt_connected);
    EXPECT_EQ(a.libvirt_error, "");
    watcher.stop();
  }
  {
    const std::string missing = "test://" + (empty / "no-such-driver-file.xml").string();
    libvirt::DomainWatcher watcher(options(missing));
    MonitorBackend backend(monitor, &watcher, {});
    ASSERT_TRUE(watcher.start().ok());
    while (watcher.connection().attempts == 0) std::this_thread::sleep_for(10ms);
    AgentStatus a = backend.agent();
    EXPECT_EQ(a.libvirt_uri, missing);
    EXPECT_FALSE(a.libvirt_connected);
    EXPECT_FALSE(a.libvirt_error.empty());
    EXPECT_EQ(a.libvirt_error, watcher.connection().reason);
    watcher.stop();
  }
  std::filesystem::remove_all(empty);
}

}  // namespace
}  // namespace stallmon::server
