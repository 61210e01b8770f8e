// SPDX-License-Identifier: Apache-2.0
// DomainWatcher end to end against libvirt's built-in test driver (test:///default: in-process,
// no daemon, no guest), with a fake /proc and run directory for its one domain "test". Covers
// connect, discovery, the thread-name fallback when the monitor cannot answer (the test driver
// has no QEMU monitor), the cached RAM layout, and lifecycle events.
#include <gtest/gtest.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "stallmon/libvirt/domain_watcher.h"

namespace stallmon::libvirt {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr const char* kUri = "test:///default";
constexpr const char* kTestUuid = "6695eb01-f6a4-8304-79aa-97f2502e193f";  // the test driver's "test"
constexpr pid_t kFakePid = 4242;

// Real threads (libvirt's event loop, the watcher's dispatch and workers) get there on their own
// time: every wait below is a hang guard far beyond what a loaded machine needs, never a
// measurement, and returns as soon as the condition holds.
constexpr std::chrono::milliseconds kHangGuard = 60s;

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = kHangGuard) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

class Events : public DomainObserver {
 public:
  void on_domain_event(const DomainEvent& e) override {
    std::lock_guard lock(mu_);
    kinds_.push_back(e.kind);
  }
  bool saw(DomainEventKind k) {
    std::lock_guard lock(mu_);
    return std::find(kinds_.begin(), kinds_.end(), k) != kinds_.end();
  }
  std::atomic<int> synced{0};
  void on_domains_synced(const std::vector<DomainInfo>&) override { ++synced; }

 private:
  std::mutex mu_;
  std::vector<DomainEventKind> kinds_;
};

class TestDriverWatcher : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("stallmon-testdriver-" + std::to_string(::getpid()));
    fs::remove_all(root_);
    // libvirt's pid file and the qemu it names, with two vCPU threads and a non-vCPU thread.
    fs::create_directories(root_ / "run");
    std::ofstream(root_ / "run/test.pid") << kFakePid;
    auto pid_dir = root_ / "proc" / std::to_string(kFakePid);
    fs::create_directories(pid_dir);
    std::string cmdline = std::string("qemu-system-x86_64") + '\0' + "-name" + '\0' + "guest=test,debug-threads=on" +
                          '\0' + "-uuid" + '\0' + kTestUuid + '\0';
    std::ofstream(pid_dir / "cmdline", std::ios::binary) << cmdline;
    for (auto [tid, comm] : {std::pair{4242, "qemu-system-x86"}, {4250, "CPU 0/KVM"}, {4251, "CPU 1/KVM"}}) {
      fs::create_directories(pid_dir / "task" / std::to_string(tid));
      std::ofstream(pid_dir / "task" / std::to_string(tid) / "comm") << comm << "\n";
    }
    // A second connection to the same in-process test driver drives the domain.
    control_ = virConnectOpen(kUri);
    ASSERT_NE(control_, nullptr);
    dom_ = virDomainLookupByName(control_, "test");
    ASSERT_NE(dom_, nullptr);
  }
  void TearDown() override {
    if (dom_) {
      if (virDomainIsActive(dom_) != 1) virDomainCreate(dom_);
      virDomainFree(dom_);
    }
    if (control_) virConnectClose(control_);
    fs::remove_all(root_);
  }

  WatcherOptions options() {
    WatcherOptions o;
    o.uri = kUri;
    o.proc_root = (root_ / "proc").string();
    o.qemu_run_dir = (root_ / "run").string();
    o.monitor_timeout = kHangGuard;  // the test driver's monitor fails at once; never "unresponsive"
    o.ram_layout_resolver = [this](const introspect::HmpCommand& hmp) -> Result<std::vector<introspect::RamRange>> {
      ++resolver_calls_;
      // The test driver has no monitor: the command fails, and that must not hang or crash.
      auto r = hmp("info mtree -f");
      if (r.ok()) return Error(ErrorCode::kInternal, "the test driver unexpectedly answered HMP");
      return std::vector<introspect::RamRange>{{0, 256ull << 20, 0x7f0000000000ull, "pc.ram"}};
    };
    return o;
  }

  fs::path root_;
  virConnectPtr control_ = nullptr;
  virDomainPtr dom_ = nullptr;
  std::atomic<int> resolver_calls_{0};
};

TEST_F(TestDriverWatcher, DiscoversDomainWithThreadNameFallbackAndCachedLayout) {
  WatcherOptions o = options();
  o.use_monitor = true;  // the opt-in monitor path
  DomainWatcher w(o);
  Events ev;
  w.add_observer(&ev);
  ASSERT_TRUE(w.start().ok());
  ASSERT_GE(w.wait_synced(0, kHangGuard), 1u) << w.connection().reason;
  EXPECT_EQ(w.connection().state, ConnectionState::kConnected);
  ASSERT_TRUE(w.wait_probes_idle(kHangGuard));

  auto d = w.domain("test");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->uuid, kTestUuid);
  EXPECT_EQ(d->state, DomainRunState::kRunning);
  EXPECT_EQ(d->qemu_pid, kFakePid);
  // No QMP here: the map comes from the thread names.
  EXPECT_EQ(d->vcpu_source, VcpuSource::kThreadNames);
  ASSERT_EQ(d->vcpus.size(), 2u);
  EXPECT_EQ(d->vcpus[1].index, 1);
  EXPECT_EQ(d->vcpus[1].tid, 4251);
  EXPECT_EQ(d->vcpus[1].name, "CPU 1/KVM");
  // A monitor command that fails (unsupported) is an error, not a hang, and not "unresponsive".
  EXPECT_TRUE(d->monitor.responsive);
  ASSERT_TRUE(d->ram_layout);
  EXPECT_EQ(d->ram_layout->at(0).name, "pc.ram");
  EXPECT_EQ(resolver_calls_.load(), 1);

  auto q = w.qmp("test", R"({"execute":"query-status"})", kHangGuard).wait();
  EXPECT_FALSE(q.ok());
  auto missing = w.qmp("no-such-domain", R"({"execute":"query-status"})", kHangGuard).wait();
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);

  auto names = w.list_running_domains(kHangGuard);
  ASSERT_TRUE(names.ok()) << names.error().to_string();
  EXPECT_EQ(*names, std::vector<std::string>{"test"});

  // The layout is cached: a plain re-sync does not resolve it again.
  uint64_t syncs = w.sync_count();
  w.refresh();
  w.wait_synced(syncs, kHangGuard);
  ASSERT_TRUE(w.wait_probes_idle(kHangGuard));
  EXPECT_EQ(resolver_calls_.load(), 1);
  w.stop();
}

// The default: no monitor command, read-only connection. The test driver's domain has no machine
// type, so the layout is refused with the reason; thread names give the vCPUs, checked against
// libvirt's own vCPU count; monitor passthrough is refused.
TEST_F(TestDriverWatcher, DefaultModeUsesNoMonitor) {
  WatcherOptions o = options();
  DomainWatcher w(o);
  ASSERT_TRUE(w.start().ok());
  ASSERT_GE(w.wait_synced(0, 5s), 1u) << w.connection().reason;
  ASSERT_TRUE(eventually([&] {
    auto d = w.domain("test");
    return d && !d->ram_layout_error.empty();
  }));
  auto d = w.domain("test");
  EXPECT_EQ(d->vcpu_source, VcpuSource::kThreadNames);
  EXPECT_EQ(d->vcpus.size(), 2u);
  EXPECT_FALSE(d->ram_layout);
  EXPECT_NE(d->ram_layout_error.find("not modelled"), std::string::npos) << d->ram_layout_error;
  EXPECT_EQ(resolver_calls_.load(), 0);  // never asked in this mode
  auto q = w.qmp("test", R"({"execute":"query-status"})", 1s).wait();
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.error().code, ErrorCode::kUnsupported);
  // The tool-side one-shot gives the same view.
  auto one = describe_domain(o, "test");
  ASSERT_TRUE(one.ok()) << one.error().to_string();
  EXPECT_EQ(one->qemu_pid, kFakePid);
  EXPECT_EQ(one->vcpus.size(), 2u);
  EXPECT_FALSE(one->ram_layout_error.empty());
  w.stop();
}

// libvirt's vCPU count disagrees with the threads found: the map is not published as confirmed.
TEST_F(TestDriverWatcher, VcpuCountMismatchIsReported) {
  auto pid_dir = root_ / "proc" / std::to_string(kFakePid);
  fs::remove_all(pid_dir / "task" / "4251");  // only one vCPU thread left; libvirt says 2
  auto one = describe_domain(options(), "test");
  ASSERT_TRUE(one.ok()) << one.error().to_string();
  EXPECT_TRUE(one->vcpus.empty());
}

TEST_F(TestDriverWatcher, FollowsLifecycleEvents) {
  DomainWatcher w(options());
  Events ev;
  w.add_observer(&ev);
  ASSERT_TRUE(w.start().ok());
  ASSERT_GE(w.wait_synced(0, kHangGuard), 1u);

  ASSERT_EQ(virDomainSuspend(dom_), 0);
  EXPECT_TRUE(eventually([&] { return ev.saw(DomainEventKind::kSuspended); }));
  EXPECT_TRUE(eventually([&] {
    auto d = w.domain("test");
    return d && d->state == DomainRunState::kPaused;
  }));

  ASSERT_EQ(virDomainResume(dom_), 0);
  EXPECT_TRUE(eventually([&] { return ev.saw(DomainEventKind::kResumed); }));

  ASSERT_EQ(virDomainDestroy(dom_), 0);
  EXPECT_TRUE(eventually([&] { return ev.saw(DomainEventKind::kStopped); }));
  EXPECT_TRUE(eventually([&] { return !w.domain("test"); }));

  ASSERT_EQ(virDomainCreate(dom_), 0);
  EXPECT_TRUE(eventually([&] { return ev.saw(DomainEventKind::kStarted); }));
  EXPECT_TRUE(eventually([&] {
    auto d = w.domain("test");
    return d && d->qemu_pid == kFakePid && d->vcpus.size() == 2;
  }));
  w.stop();
  EXPECT_GE(ev.synced.load(), 4);
}

TEST_F(TestDriverWatcher, StartStopIsRepeatable) {
  for (int i = 0; i < 3; ++i) {
    DomainWatcher w(options());
    ASSERT_TRUE(w.start().ok());
    EXPECT_GE(w.wait_synced(0, kHangGuard), 1u);
    w.stop();
    w.stop();  // idempotent
  }
}

}  // namespace
}  // namespace stallmon::libvirt
