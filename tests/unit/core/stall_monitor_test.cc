// SPDX-License-Identifier: Apache-2.0
// StallMonitor driven by hand (threads=false) over a fake /proc and simulated time: domains in
// and out, queries, the finding fan-out, history, stats. Introspection is off here (see
// pipeline_test.cc for the guest side).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <thread>

#include "fake_domain.h"
#include "stallmon/core/stall_monitor.h"

namespace stallmon::core {
namespace {

using diagnosis::FindingEvent;
using diagnosis::FindingKind;
using testing::FakeQemu;

class Recorder final : public diagnosis::FindingListener {
 public:
  void on_finding_event(const FindingEvent& e) override {
    std::lock_guard<std::mutex> l(mu);
    events.push_back(e);
  }
  size_t count(FindingKind k, FindingEvent::Type t) {
    std::lock_guard<std::mutex> l(mu);
    return static_cast<size_t>(std::count_if(events.begin(), events.end(), [&](const FindingEvent& e) {
      return e.finding.kind == k && e.type == t;
    }));
  }
  std::mutex mu;
  std::vector<FindingEvent> events;
};

class StallMonitorTest : public ::testing::Test {
 protected:
  std::unique_ptr<StallMonitor> make(MonitorConfig c = {}) {
    c.threads = false;
    c.introspection = false;
    return std::make_unique<StallMonitor>(c, MonitorDependencies{&q.fs, &q.mono, &q.clock, {}});
  }
  void run(StallMonitor& m, int ticks) {
    for (int i = 0; i < ticks; ++i) {
      q.advance(100);
      m.tick_all();
    }
  }
  FakeQemu q;
};

TEST_F(StallMonitorTest, WatchesADomainAndAnswersQueries) {
  auto m = make();
  EXPECT_TRUE(m->domains().empty());
  m->on_domain_updated(q.info());
  run(*m, 5);
  auto ds = m->domains();
  ASSERT_EQ(ds.size(), 1u);
  EXPECT_EQ(ds[0].name, "vm1");
  EXPECT_EQ(ds[0].qemu_pid, FakeQemu::kPid);
  EXPECT_EQ(ds[0].vcpu_count, 4u);
  EXPECT_EQ(ds[0].ticks, 5u);
  EXPECT_EQ(ds[0].active_findings, 0u);
  EXPECT_EQ(ds[0].introspection.state, IntrospectionState::kDisabled);
  EXPECT_FALSE(ds[0].introspection.ok());
  EXPECT_TRUE(ds[0].monitor.responsive);

  // By name and by uuid.
  for (std::string key : {"vm1", "00000000-0000-0000-0000-000000000001"}) {
    auto d = m->domain(key);
    ASSERT_TRUE(d.ok()) << key;
    ASSERT_EQ(d->vcpus.size(), 4u);
    EXPECT_EQ(d->main_loop_tid, FakeQemu::kPid);
    EXPECT_EQ(d->vcpus[2].index, 2);
    EXPECT_EQ(d->vcpus[2].thread.tid, q.vcpu_tid(2));
    EXPECT_EQ(d->vcpus[2].thread.name, "CPU 2/TCG");
    EXPECT_TRUE(d->vcpus[2].thread.has_sample);
    EXPECT_EQ(d->vcpus[2].thread.latest.state, 'R');
    EXPECT_TRUE(d->vcpus[2].thread.signals.valid);
    EXPECT_GT(d->vcpus[2].thread.signals.run_fraction, 0.2);
    EXPECT_FALSE(d->vcpus[2].guest);
    EXPECT_FALSE(d->guest);
    ASSERT_EQ(d->other_threads.size(), 1u);
    EXPECT_EQ(d->other_threads[0].tid, FakeQemu::kPid);
  }
  EXPECT_EQ(m->domain("nope").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(m->inspect("vm1", std::chrono::milliseconds(10)).error().code, ErrorCode::kUnsupported);
  EXPECT_EQ(m->inspect("nope", std::chrono::milliseconds(10)).error().code, ErrorCode::kNotFound);
}

// Issue 14 item 2: the pipeline feeds the incident recorder; its lanes before the onset come
// from the sampler's vCPU rings, its host stacks from the blocked thread's detail.
TEST_F(StallMonitorTest, ACriticalFindingGetsAnIncidentBundleFromThePipelinesHistory) {
  MonitorConfig c;
  c.incidents.lookback = std::chrono::seconds(2);
  auto m = make(c);
  m->on_domain_updated(q.info());
  run(*m, 50);  // 5 s of history in the rings
  q.block_vcpu(2);
  run(*m, 15);
  auto active = m->engine().active_findings("vm1");
  ASSERT_EQ(active.size(), 1u);
  const auto& f = active[0];
  ASSERT_EQ(f.severity, diagnosis::Severity::kCritical);
  auto b = m->incidents().get(f.id);
  ASSERT_TRUE(b.has_value());
  EXPECT_FALSE(b->complete());
  EXPECT_EQ(b->window_start, f.onset - std::chrono::seconds(2));
  ASSERT_EQ(b->vcpus.size(), 4u);
  const auto& lane = b->vcpus[2];
  EXPECT_EQ(lane.tid, q.vcpu_tid(2));
  ASSERT_GE(lane.points.size(), 25u) << "2 s before the onset and the time since, at 10 Hz";
  EXPECT_GE(lane.points.front().at, b->window_start);
  EXPECT_LE(lane.points.front().at - b->window_start, std::chrono::milliseconds(100)) << "from the sampler's ring";
  EXPECT_EQ(lane.points.front().state, diagnosis::ThreadState::kRunning);
  EXPECT_EQ(lane.points.back().state, diagnosis::ThreadState::kDiskSleep);
  ASSERT_FALSE(b->host_stacks.empty());
  EXPECT_EQ(b->host_stacks[0].vcpu, 2);
  EXPECT_EQ(b->host_stacks[0].wchan, "__refrigerator");
  m->on_domain_gone(q.info());
  b = m->incidents().get(f.id);
  ASSERT_TRUE(b.has_value());
  EXPECT_TRUE(b->complete()) << "the domain went: its finding resolved, its bundle closed";
}

TEST_F(StallMonitorTest, FrozenVcpuBecomesAFindingForEveryListenerAndResolvesWhenTheDomainGoes) {
  auto m = make();
  Recorder a, b;
  m->add_finding_listener(&a);
  m->add_finding_listener(&b);
  m->add_finding_listener(&b);  // twice: still one delivery
  m->on_domain_updated(q.info());
  run(*m, 3);
  q.block_vcpu(2);
  run(*m, 4);  // 400 ms: below host_blocked_min
  EXPECT_EQ(a.count(FindingKind::kVcpuHostBlocked, FindingEvent::Type::kOpened), 0u);
  run(*m, 3);
  EXPECT_EQ(a.count(FindingKind::kVcpuHostBlocked, FindingEvent::Type::kOpened), 1u);
  EXPECT_EQ(b.count(FindingKind::kVcpuHostBlocked, FindingEvent::Type::kOpened), 1u);
  auto active = m->engine().active_findings("vm1");
  ASSERT_EQ(active.size(), 1u);
  EXPECT_EQ(active[0].cpus, std::vector<int>{2});
  EXPECT_EQ(m->domains()[0].active_findings, 1u);

  // The host detail (wchan, stack) is shown while blocked.
  auto d = m->domain("vm1");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->vcpus[2].thread.latest.state, 'D');
  EXPECT_EQ(d->vcpus[2].thread.blocked.wchan, "__refrigerator");
  ASSERT_FALSE(d->vcpus[2].thread.blocked.stack.empty());
  EXPECT_EQ(d->vcpus[2].thread.blocked.stack[0], "__refrigerator+0x4c/0x130");

  m->remove_finding_listener(&b);
  m->on_domain_gone(q.info());
  EXPECT_TRUE(m->domains().empty());
  EXPECT_EQ(a.count(FindingKind::kVcpuHostBlocked, FindingEvent::Type::kResolved), 1u);
  EXPECT_EQ(b.count(FindingKind::kVcpuHostBlocked, FindingEvent::Type::kResolved), 0u);
  EXPECT_TRUE(m->engine().active_findings().empty());
  run(*m, 2);  // nothing left to tick
  EXPECT_EQ(m->stats().finding_events, a.events.size());
}

TEST_F(StallMonitorTest, ThawResolvesTheFinding) {
  auto m = make();
  m->on_domain_updated(q.info());
  run(*m, 2);
  q.block_vcpu(1);
  run(*m, 8);
  ASSERT_EQ(m->engine().active_findings().size(), 1u);
  q.run_vcpu(1);
  run(*m, 3);
  EXPECT_TRUE(m->engine().active_findings().empty());
}

TEST_F(StallMonitorTest, FilterKeepsOtherDomainsOut) {
  MonitorConfig c;
  c.domain_filter = [](const libvirt::DomainInfo& d) { return d.name == "mine"; };
  auto m = make(c);
  m->on_domain_updated(q.info());  // "vm1"
  run(*m, 2);
  EXPECT_TRUE(m->domains().empty());
  libvirt::DomainInfo mine = q.info();
  mine.name = "mine";
  mine.uuid = "00000000-0000-0000-0000-0000000000aa";
  m->on_domain_updated(mine);
  ASSERT_EQ(m->domains().size(), 1u);
  EXPECT_EQ(m->domains()[0].name, "mine");
  // Events for unwatched domains are ignored.
  libvirt::DomainEvent ev;
  ev.kind = libvirt::DomainEventKind::kCrashed;
  ev.name = "vm1";
  ev.uuid = "00000000-0000-0000-0000-000000000001";
  m->on_domain_event(ev);
  run(*m, 2);
  EXPECT_TRUE(m->engine().active_findings("vm1").empty());
}

TEST_F(StallMonitorTest, CrashedEventBecomesGuestPanic) {
  auto m = make();
  m->on_domain_updated(q.info());
  run(*m, 2);
  libvirt::DomainEvent ev;
  ev.kind = libvirt::DomainEventKind::kCrashed;
  ev.uuid = q.info().uuid;
  ev.name = "vm1";
  ev.detail = "panicked";
  m->on_domain_event(ev);
  run(*m, 1);
  auto active = m->engine().active_findings("vm1");
  ASSERT_EQ(active.size(), 1u);
  EXPECT_EQ(active[0].kind, FindingKind::kGuestPanic);
}

TEST_F(StallMonitorTest, SyncWithoutTheDomainRetiresIt) {
  auto m = make();
  m->on_domain_updated(q.info());
  run(*m, 1);
  m->on_domains_synced({});
  EXPECT_TRUE(m->domains().empty());
}

TEST_F(StallMonitorTest, HistoryWindowAndStats) {
  auto m = make();
  m->on_domain_updated(q.info());
  run(*m, 30);
  auto all = m->vcpu_history("vm1", 1, std::chrono::nanoseconds(0));
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->points.size(), 30u);
  EXPECT_EQ(all->tid, q.vcpu_tid(1));
  EXPECT_EQ(all->capacity, MonitorConfig{}.sampler.vcpu_history + MonitorConfig{}.sampler.vcpu_history_coarse);
  auto last = m->vcpu_history("vm1", 1, std::chrono::milliseconds(1000));
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->points.size(), 10u);  // samples within the last second, newest included
  for (size_t i = 1; i < last->points.size(); ++i) {
    EXPECT_EQ(last->points[i].time - last->points[i - 1].time, std::chrono::milliseconds(100));
    EXPECT_GT(last->points[i].sample.run_ns, last->points[i - 1].sample.run_ns);
  }
  // Sample time maps onto the engine's clock.
  EXPECT_EQ(last->points.back().time, q.clock.now());
  EXPECT_EQ(m->vcpu_history("vm1", 9, std::chrono::seconds(1)).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(m->vcpu_history("x", 1, std::chrono::seconds(1)).error().code, ErrorCode::kNotFound);

  AgentStats s = m->stats();
  EXPECT_EQ(s.domains, 1u);
  EXPECT_EQ(s.ticks, 30u);
  EXPECT_EQ(s.tick_latency.count, 30u);
  ASSERT_EQ(s.tick_latency.counts.size(), s.tick_latency.bounds_s.size());
  EXPECT_TRUE(std::is_sorted(s.tick_latency.counts.begin(), s.tick_latency.counts.end()));
  EXPECT_EQ(s.snapshots, 0u);
  // 30 samples of 4 vCPUs (and the other threads'), compact: more than nothing, less than plain.
  EXPECT_GT(s.history_memory_bytes, 4 * 30 * 2u);
  EXPECT_LT(s.history_memory_bytes, 4 * 30 * sizeof(host::ThreadSample) + 64 * 1024);
}

TEST_F(StallMonitorTest, NewQemuPidReplacesTheSampler) {
  auto m = make();
  m->on_domain_updated(q.info());
  run(*m, 3);
  ASSERT_EQ(m->vcpu_history("vm1", 0, std::chrono::nanoseconds(0))->points.size(), 3u);
  // Same vCPUs, new thread for vCPU 0 (the libvirt layer re-probed): history continues.
  libvirt::DomainInfo info = q.info();
  info.vcpus[0].tid = FakeQemu::kPid + 2;  // vCPU 1's thread now also backs vCPU 0
  info.generation = 2;
  m->on_domain_updated(info);
  run(*m, 1);
  auto h = m->vcpu_history("vm1", 0, std::chrono::nanoseconds(0));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->tid, FakeQemu::kPid + 2);
  EXPECT_EQ(h->points.size(), 4u);
}

TEST_F(StallMonitorTest, MonitorTimeoutsAreCountedOncePerEpisode) {
  auto m = make();
  libvirt::DomainInfo info = q.info();
  m->on_domain_updated(info);
  run(*m, 1);
  info.monitor.responsive = false;
  info.monitor.stuck_call = "qmp query-cpus-fast";
  info.monitor.since_steady = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(q.mono.now_ns()));
  for (int i = 0; i < 3; ++i) {
    m->on_domain_updated(info);
    run(*m, 1);
  }
  auto s = m->domains()[0];
  EXPECT_FALSE(s.monitor.responsive);
  EXPECT_EQ(s.monitor.stuck_call, "qmp query-cpus-fast");
  EXPECT_EQ(s.monitor.timeouts, 1u);
  EXPECT_EQ(m->stats().monitor_timeouts, 1u);
  run(*m, 10);
  auto active = m->engine().active_findings("vm1");
  ASSERT_EQ(active.size(), 1u);
  EXPECT_EQ(active[0].kind, FindingKind::kHostMonitorUnresponsive);
}

}  // namespace
}  // namespace stallmon::core

namespace stallmon::core {
namespace {

// threads=true: the monitor runs its pools; the number of threads does not depend on the
// number of domains. Waits are for events (a first tick), never timed.
TEST(StallMonitorThreads, PoolsOfFixedSizeForAnyNumberOfDomains) {
  testing::FakeQemu q;
  testing::Serialized z(q);
  MonitorConfig c;
  c.introspection = false;
  c.workers = 2;
  StallMonitor m(c, MonitorDependencies{&z.fs, &z.mono, &z.clock, {}});
  for (int i = 0; i < 20; ++i) {
    libvirt::DomainInfo d = q.info();
    d.name = "vm" + std::to_string(i);
    d.uuid = "uuid-" + std::to_string(i);
    m.on_domain_updated(d);
  }
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  auto all_ticked = [&] {
    for (const auto& d : m.domains()) {
      if (d.ticks == 0) return false;
    }
    return true;
  };
  while (!all_ticked() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(all_ticked());
  const AgentStats s = m.stats();
  EXPECT_EQ(s.domains, 20u);
  EXPECT_EQ(s.workers, 2u);
  EXPECT_EQ(s.threads, 5u);  // 2 tick workers + 1 discovery worker + 2 supervisors
  m.stop();
  EXPECT_EQ(m.stats().threads, 0u);
}

}  // namespace
}  // namespace stallmon::core
