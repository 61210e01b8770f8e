// SPDX-License-Identifier: Apache-2.0
// DomainWatcher against the host's libvirtd with real guests (tests/testbed). Every test starts its
// own watcher; guests are the fixture's, with unique names; only our own domains are touched.
#include <sys/uio.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <regex>
#include <sstream>
#include <thread>

#include "stallmon/introspect/ram_layout.h"
#include "stallmon/libvirt/domain_watcher.h"
#include "testbed/guest.h"

namespace tb = stallmon::testbed;
namespace lv = stallmon::libvirt;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

const bool kOptions = [] {
  tb::GuestOptions o;
  o.tag = "lv";
  o.vcpus = 2;
  o.memory_mib = 256;
  o.scenario = "sleepers";
  tb::set_shared_guest_options(o);
  return true;
}();

tb::GuestOptions other_options() {
  tb::GuestOptions o;
  o.tag = "lvother";
  o.vcpus = 1;
  o.memory_mib = 192;
  o.scenario = "none";
  return o;
}

// A second guest of this binary: "another domain" while the shared one hangs, and the one that is
// destroyed and started again.
std::unique_ptr<tb::Guest> g_other;
std::unique_ptr<tb::Guest>& other_guest() {
  if (!g_other) g_other = tb::Guest::boot(other_options());
  return g_other;
}

// Destroys the second guest after the last test (its holder process would also do it if this
// binary died).
class OtherGuestCleanup : public ::testing::Environment {
 public:
  void TearDown() override { g_other.reset(); }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new OtherGuestCleanup);

// Records everything the watcher reports.
class Recorder : public lv::DomainObserver {
 public:
  void on_connection(const lv::ConnectionStatus& s) override {
    std::lock_guard lock(mu_);
    connections_.push_back(s);
  }
  void on_domain_event(const lv::DomainEvent& e) override {
    std::lock_guard lock(mu_);
    events_.push_back(e);
  }
  bool saw_event(const std::string& name, lv::DomainEventKind kind, size_t from = 0) {
    std::lock_guard lock(mu_);
    for (size_t i = from; i < events_.size(); ++i) {
      if (events_[i].name == name && events_[i].kind == kind) return true;
    }
    return false;
  }
  size_t event_count() {
    std::lock_guard lock(mu_);
    return events_.size();
  }
  bool saw_connection(lv::ConnectionState state, size_t from = 0) {
    std::lock_guard lock(mu_);
    for (size_t i = from; i < connections_.size(); ++i) {
      if (connections_[i].state == state) return true;
    }
    return false;
  }
  size_t connection_count() {
    std::lock_guard lock(mu_);
    return connections_.size();
  }

 private:
  std::mutex mu_;
  std::vector<lv::ConnectionStatus> connections_;
  std::vector<lv::DomainEvent> events_;
};

std::unique_ptr<lv::DomainWatcher> start_watcher(Recorder& rec) {
  lv::WatcherOptions o;
  o.use_monitor = true;  // these tests cover the opt-in monitor path (host_layout_guest_test: the default)
  o.monitor_timeout = 3s;
  o.backoff.initial = 100ms;
  o.backoff.max = 1s;
  o.ram_layout_resolver = [](const stallmon::introspect::HmpCommand& hmp) {
    return stallmon::introspect::resolve_ram_layout(hmp);
  };
  auto w = std::make_unique<lv::DomainWatcher>(o);
  w->add_observer(&rec);
  auto r = w->start();
  EXPECT_TRUE(r.ok()) << r.error().to_string();
  return w;
}

// Waits until the watcher knows the domain with its QMP vCPU map (and the RAM layout).
std::optional<lv::DomainInfo> wait_domain(const lv::DomainWatcher& w, const std::string& name, pid_t pid,
                                          std::chrono::milliseconds timeout = 30s) {
  std::optional<lv::DomainInfo> d;
  tb::eventually(
      [&] {
        d = w.domain(name);
        return d && d->qemu_pid == pid && d->vcpu_source == lv::VcpuSource::kQmp && d->ram_layout;
      },
      timeout);
  return d;
}

std::string read_comm(pid_t pid, pid_t tid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/comm");
  std::string s;
  std::getline(f, s);
  return s;
}

void expect_matches_guest(const lv::DomainInfo& d, const tb::Guest& g) {
  EXPECT_EQ(d.qemu_pid, g.qemu_pid());
  EXPECT_EQ(d.vcpu_source, lv::VcpuSource::kQmp);
  ASSERT_EQ(d.vcpus.size(), g.vcpu_tids().size());
  for (const auto& v : d.vcpus) {
    EXPECT_EQ(v.tid, g.vcpu_tid(v.index)) << "vcpu " << v.index;
    // Cross-check with the kernel's view: the thread QMP names is the one called "CPU n/...".
    EXPECT_EQ(v.name, read_comm(d.qemu_pid, v.tid));
    EXPECT_EQ(v.name.rfind("CPU " + std::to_string(v.index) + "/", 0), 0u) << v.name;
  }
}

int virsh(const std::string& verb, const std::string& name) {
  auto r = tb::run_process({"virsh", "-q", "-c", "qemu:///system", verb, name}, 30s);
  return r.exit_code;
}

class LibvirtLayer : public tb::GuestTest {};

TEST_F(LibvirtLayer, DiscoversGuestWithPidAndVcpuThreads) {
  auto& g = guest();
  Recorder rec;
  auto w = start_watcher(rec);
  auto t0 = Clock::now();
  auto d = wait_domain(*w, g.name(), g.qemu_pid());
  ASSERT_TRUE(d) << "domain " << g.name() << " not discovered";
  std::cout << "discovery (connect, list, pid, QMP vCPUs, RAM layout): "
            << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count() << " ms" << std::endl;
  expect_matches_guest(*d, g);
  EXPECT_EQ(d->uuid.size(), 36u);
  EXPECT_EQ(d->state, lv::DomainRunState::kRunning);
  EXPECT_TRUE(d->monitor.responsive);
  EXPECT_NE(d->pid_source.find(".pid"), std::string::npos) << d->pid_source;
  EXPECT_TRUE(rec.saw_connection(lv::ConnectionState::kConnected));
  // Looked up by uuid too.
  auto by_uuid = w->domain(d->uuid);
  ASSERT_TRUE(by_uuid);
  EXPECT_EQ(by_uuid->name, g.name());
}

TEST_F(LibvirtLayer, RamLayoutReadsGuestMemoryThroughQemu) {
  auto& g = guest();
  Recorder rec;
  auto w = start_watcher(rec);
  auto d = wait_domain(*w, g.name(), g.qemu_pid());
  ASSERT_TRUE(d && d->ram_layout) << (d ? d->ram_layout_error : "not discovered");
  uint64_t total = 0;
  for (const auto& r : *d->ram_layout) {
    std::cout << "ram " << r.name << " gpa 0x" << std::hex << r.gpa << " size 0x" << r.size << " hva 0x" << r.hva
              << std::dec << std::endl;
    EXPECT_NE(r.hva, 0u);
    total += r.size;
  }
  // 256 MiB of guest RAM (less the legacy VGA/BIOS hole below 1 MiB).
  EXPECT_GE(total, 255ull << 20);
  EXPECT_LE(total, 257ull << 20);

  // Sanity point that needs no kernel knowledge: the real-mode interrupt vector table at
  // guest-physical 0 (written by the firmware, left alone by Linux). Read it through the qemu
  // process at the mapped host address and compare with what QEMU itself says (HMP `xp`).
  const uint64_t gpa = 0;
  auto range = std::find_if(d->ram_layout->begin(), d->ram_layout->end(),
                            [&](const auto& r) { return gpa >= r.gpa && gpa < r.gpa + r.size; });
  ASSERT_NE(range, d->ram_layout->end());
  uint64_t words[8] = {};
  iovec local{words, sizeof words};
  iovec remote{reinterpret_cast<void*>(range->hva + (gpa - range->gpa)), sizeof words};
  ASSERT_EQ(process_vm_readv(d->qemu_pid, &local, 1, &remote, 1, 0), static_cast<ssize_t>(sizeof words))
      << std::strerror(errno);
  EXPECT_TRUE(std::any_of(std::begin(words), std::end(words), [](uint64_t x) { return x != 0; }));

  auto xp = w->hmp(g.name(), "xp /8xg 0", 5s).wait();
  ASSERT_TRUE(xp.ok()) << xp.error().to_string();
  std::vector<uint64_t> from_qemu;
  std::regex hex(R"(0x([0-9a-fA-F]+))");
  std::string text = *xp;
  for (auto line_start = text.begin(); line_start != text.end();) {
    auto line_end = std::find(line_start, text.end(), '\n');
    std::string line(line_start, line_end);
    auto colon = line.find(':');
    if (colon != std::string::npos) {
      std::string values = line.substr(colon + 1);
      for (std::sregex_iterator it(values.begin(), values.end(), hex), end; it != end; ++it) {
        from_qemu.push_back(std::stoull((*it)[1], nullptr, 16));
      }
    }
    line_start = line_end == text.end() ? line_end : line_end + 1;
  }
  ASSERT_EQ(from_qemu.size(), 8u) << text;
  for (int i = 0; i < 8; ++i) EXPECT_EQ(words[i], from_qemu[i]) << "word " << i << "\n" << text;
}

TEST_F(LibvirtLayer, HungMonitorMissesDeadlineWhileEverythingElseWorks) {
  auto& g = guest();
  auto& other = other_guest();
  Recorder rec;
  auto w = start_watcher(rec);
  ASSERT_TRUE(wait_domain(*w, g.name(), g.qemu_pid()));
  ASSERT_TRUE(wait_domain(*w, other->name(), other->qemu_pid()));

  // qemu SIGSTOPped: its monitor cannot answer (the same as a main loop stuck on the big lock).
  auto stop = g.sigstop();
  ASSERT_TRUE(stop.applied()) << stop.error();

  auto t0 = Clock::now();
  auto r = w->qmp(g.name(), R"({"execute":"query-cpus-fast"})", 1500ms).wait();
  auto waited = Clock::now() - t0;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, stallmon::ErrorCode::kTimeout) << r.error().to_string();
  EXPECT_GE(waited, 1500ms);
  EXPECT_LT(waited, 3000ms) << "the caller's deadline must fire on time";

  // Flagged, with the time the stuck call started.
  std::optional<lv::DomainInfo> d;
  ASSERT_TRUE(tb::eventually(
      [&] {
        d = w->domain(g.name());
        return d && !d->monitor.responsive;
      },
      2s));
  EXPECT_NE(d->monitor.stuck_call.find("query-cpus-fast"), std::string::npos) << d->monitor.stuck_call;
  EXPECT_LE(d->monitor.since_steady, t0 + 100ms);
  // The cached vCPU map and RAM layout are still there: sampling needs no monitor.
  EXPECT_EQ(d->vcpus.size(), 2u);
  EXPECT_TRUE(d->ram_layout);

  // Nothing queues behind the stuck call.
  t0 = Clock::now();
  auto again = w->qmp(g.name(), R"({"execute":"query-status"})", 5s).wait();
  EXPECT_FALSE(again.ok());
  EXPECT_LT(Clock::now() - t0, 1s) << "rejected at once, not queued behind the stuck call";

  // The sampling path: a table copy, never libvirt.
  t0 = Clock::now();
  auto all = w->domains();
  EXPECT_LT(Clock::now() - t0, 50ms);
  EXPECT_GE(all.size(), 2u);

  // Repeatedly, while the monitor call hangs: full re-syncs (list + per-domain state), the domain
  // list, and another domain's monitor all answer promptly. (On a connection shared with the stuck
  // call, libvirt 9.0's client delayed such replies by up to the keepalive interval; monitor calls
  // therefore have connections of their own.)
  for (int round = 0; round < 4; ++round) {
    uint64_t syncs = w->sync_count();
    w->refresh();
    EXPECT_GT(w->wait_synced(syncs, 2s), syncs) << "round " << round << ": re-sync stalled";

    t0 = Clock::now();
    auto names = w->list_running_domains(3s);
    ASSERT_TRUE(names.ok()) << "round " << round << ": " << names.error().to_string();
    EXPECT_LT(Clock::now() - t0, 1s) << "round " << round;
    EXPECT_TRUE(std::count(names->begin(), names->end(), g.name()));
    EXPECT_TRUE(std::count(names->begin(), names->end(), other->name()));

    t0 = Clock::now();
    auto other_status = w->qmp(other->name(), R"({"execute":"query-status"})", 3s).wait();
    ASSERT_TRUE(other_status.ok()) << "round " << round << ": " << other_status.error().to_string();
    EXPECT_LT(Clock::now() - t0, 1s) << "round " << round;
    EXPECT_NE(other_status->find("running"), std::string::npos) << *other_status;
    std::this_thread::sleep_for(300ms);
  }

  // Lifecycle events keep flowing: pause and resume the other guest.
  size_t from = rec.event_count();
  ASSERT_EQ(virsh("suspend", other->name()), 0);
  EXPECT_TRUE(tb::eventually([&] { return rec.saw_event(other->name(), lv::DomainEventKind::kSuspended, from); }, 10s));
  ASSERT_EQ(virsh("resume", other->name()), 0);
  EXPECT_TRUE(tb::eventually([&] { return rec.saw_event(other->name(), lv::DomainEventKind::kResumed, from); }, 10s));

  // qemu continues: the stuck call returns and the monitor is healthy again.
  stop.release();
  EXPECT_TRUE(tb::eventually(
      [&] {
        d = w->domain(g.name());
        return d && d->monitor.responsive;
      },
      10s));
  auto after = w->qmp(g.name(), R"({"execute":"query-status"})", 5s).wait();
  EXPECT_TRUE(after.ok()) << after.error().to_string();
}

TEST_F(LibvirtLayer, DestroyedAndStartedAgainPicksUpNewPidAndThreads) {
  auto& other = other_guest();
  Recorder rec;
  auto w = start_watcher(rec);
  const std::string name = other->name();
  const pid_t old_pid = other->qemu_pid();
  auto before = wait_domain(*w, name, old_pid);
  ASSERT_TRUE(before);
  expect_matches_guest(*before, *other);

  other.reset();  // virsh destroy
  EXPECT_TRUE(tb::eventually([&] { return rec.saw_event(name, lv::DomainEventKind::kStopped); }, 15s));
  EXPECT_TRUE(tb::eventually([&] { return !w->domain(name); }, 15s));

  size_t from = rec.event_count();
  other = tb::Guest::boot(other_options());  // same name, new qemu
  ASSERT_EQ(other->name(), name);
  EXPECT_TRUE(tb::eventually([&] { return rec.saw_event(name, lv::DomainEventKind::kStarted, from); }, 15s));
  auto after = wait_domain(*w, name, other->qemu_pid());
  ASSERT_TRUE(after) << "restarted domain not rediscovered";
  EXPECT_NE(after->qemu_pid, old_pid);
  expect_matches_guest(*after, *other);
  EXPECT_GT(after->generation, 0u);
}

// Disturbs every libvirt user on the host for about a second: the only test that does this.
TEST_F(LibvirtLayer, LibvirtdRestartMonitoringResumes) {
  auto& g = guest();
  Recorder rec;
  auto w = start_watcher(rec);
  ASSERT_TRUE(wait_domain(*w, g.name(), g.qemu_pid()));
  size_t conn_from = rec.connection_count();

  auto t0 = Clock::now();
  auto restart = tb::run_testbed({"libvirtd-restart"}, 120s, /*check=*/false);
  ASSERT_EQ(restart.exit_code, 0) << restart.err;

  EXPECT_TRUE(tb::eventually([&] { return rec.saw_connection(lv::ConnectionState::kDisconnected, conn_from); }, 20s))
      << "the loss of libvirtd was not noticed";
  ASSERT_TRUE(tb::eventually(
      [&] { return w->connection().state == lv::ConnectionState::kConnected && rec.saw_connection(lv::ConnectionState::kConnected, conn_from); },
      30s))
      << "no reconnect: " << w->connection().reason;
  std::cout << "libvirtd restart -> reconnected after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count() << " ms" << std::endl;

  // Rediscovered: same qemu, same threads.
  auto d = wait_domain(*w, g.name(), g.qemu_pid());
  ASSERT_TRUE(d);
  expect_matches_guest(*d, g);

  // Events flow on the new connection.
  size_t from = rec.event_count();
  ASSERT_EQ(virsh("suspend", g.name()), 0);
  EXPECT_TRUE(tb::eventually([&] { return rec.saw_event(g.name(), lv::DomainEventKind::kSuspended, from); }, 10s));
  ASSERT_EQ(virsh("resume", g.name()), 0);
  EXPECT_TRUE(tb::eventually([&] { return rec.saw_event(g.name(), lv::DomainEventKind::kResumed, from); }, 10s));
  // And the monitor path works through the new connection.
  auto r = w->qmp(g.name(), R"({"execute":"query-status"})", 5s).wait();
  EXPECT_TRUE(r.ok()) << r.error().to_string();
}

}  // namespace

