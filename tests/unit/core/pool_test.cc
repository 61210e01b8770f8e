// SPDX-License-Identifier: Apache-2.0
// The tick pool with real worker threads: ordering, one tick of a domain at a time, containment
// of exceptions, and the supervisor abandoning a guest read that blocks (a fake PhysicalMemory
// whose read waits on a latch, as process_vm_readv does on a qemu whose mm lock is held). Time
// is simulated: nothing here asserts how long anything took; waits are for events, with a
// generous bound that only a hang would reach.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "fake_domain.h"
#include "fake_stat_source.h"
#include "internal.h"
#include "seed_case1_kernel.h"
#include "synthetic_kernel.h"
#include "task_pool.h"

namespace stallmon::core {
namespace {

using introspect::testing::SyntheticKernel;
using testing::FakeQemu;
using namespace std::chrono_literals;

constexpr auto kHang = std::chrono::seconds(20);  // only reached if something hangs

template <typename Pred>
bool eventually(Pred pred, const std::function<void()>& step = {}) {
  const auto until = std::chrono::steady_clock::now() + kHang;
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    if (step) step();
    std::this_thread::sleep_for(1ms);
  }
  return pred();
}

// A pipeline's view of the serialized fake host: its /proc and both clocks.
void use_host(internal::Shared& shared, testing::Serialized& z) {
  shared.fs = &z.fs;
  shared.mono = &z.mono;
  shared.clock = &z.clock;
  shared.mono_to_engine = ClockMapping::from(z.clock.now(), z.mono.now_ns());
}

internal::TaskPool::Options pool_options(host::Clock* mono, size_t workers) {
  internal::TaskPool::Options o;
  o.mono = mono;
  o.workers = workers;
  o.max_spare = workers;
  o.read_deadline_ns = 250'000'000;
  return o;
}

TEST(TaskPool, RunsTasksInDueOrderAndSurvivesExceptions) {
  host::SimulatedClock mono{1'000'000'000};
  internal::TaskPool pool(pool_options(&mono, 1));
  std::mutex mu;
  std::vector<int> order;
  auto task = [&](int id) {
    internal::PoolTask t;
    t.run = [&, id] {
      std::lock_guard<std::mutex> l(mu);
      order.push_back(id);
    };
    return t;
  };
  const int64_t now = mono.now_ns();
  pool.post(now + 3, task(3));
  pool.post(now + 1, task(1));
  internal::PoolTask bad;
  std::atomic<int> contained{0};
  bad.run = [] { throw std::runtime_error("bug in one domain"); };
  bad.on_exception = [&](const std::string& what) {
    EXPECT_NE(what.find("bug in one domain"), std::string::npos);
    ++contained;
  };
  pool.post(now + 2, std::move(bad));
  internal::PoolTask oom;
  oom.run = [] { throw std::bad_alloc(); };
  oom.on_exception = [&](const std::string& what) {
    EXPECT_NE(what.find("bad_alloc"), std::string::npos);
    ++contained;
  };
  pool.post(now + 2, std::move(oom));
  mono.advance_ns(10);  // before any worker reads the clock
  pool.start();         // everything is queued before the worker looks: due order decides
  ASSERT_TRUE(eventually([&] {
    std::lock_guard<std::mutex> l(mu);
    return order.size() == 2;
  }));
  EXPECT_EQ(order, (std::vector<int>{1, 3}));
  EXPECT_EQ(contained.load(), 2);
  EXPECT_EQ(pool.exceptions(), 2u);
  EXPECT_EQ(pool.threads(), 2u);  // one worker + the supervisor
}

TEST(TaskPool, TicksOfManyDomainsRunOnAFixedNumberOfThreads) {
  FakeQemu q(2);
  testing::Serialized z(q);
  MonitorConfig config;
  config.introspection = false;
  internal::Shared shared(config);
  use_host(shared, z);
  diagnosis::DiagnosisEngine engine(config.diagnosis, z.clock);
  shared.engine = &engine;
  internal::TaskPool pool(pool_options(&z.mono, 2));
  shared.tick_pool = &pool;
  pool.start();
  std::vector<std::shared_ptr<internal::DomainPipeline>> domains;
  for (int i = 0; i < 50; ++i) {
    libvirt::DomainInfo info = q.info();
    info.uuid = "uuid-" + std::to_string(i);
    info.name = "vm" + std::to_string(i);
    domains.push_back(std::make_shared<internal::DomainPipeline>(shared, info));
    internal::post_tick(shared, domains.back(), z.mono.now_ns());
  }
  auto all_ticked = [&](uint64_t n) {
    for (auto& d : domains) {
      if (d->summary().ticks < n) return false;
    }
    return true;
  };
  for (uint64_t n = 1; n <= 5; ++n) {
    ASSERT_TRUE(eventually([&] { return all_ticked(n); }));
    {
      auto l = z.lock();
      q.advance(100);
    }
    pool.wake();
  }
  EXPECT_EQ(pool.threads(), 3u);  // 2 workers + the supervisor, for 50 domains
  // Every domain has exactly one tick queued at a time (never queued twice).
  EXPECT_LE(pool.queued(), domains.size());
  for (auto& d : domains) d->retire();
  pool.stop();
}

// Two workers ticking twelve domains share one pass of the ThreadStatSource per period (the
// first tick of a period runs it, the others wait for it and reuse it), and a domain's first
// tick, posted off the period grid, puts its next tick on the grid.
TEST(TaskPool, OnePassOfTheStatSourceServesEveryDomainsTickOfAPeriod) {
  testing::FakeHost host;
  std::vector<std::unique_ptr<FakeQemu>> qemus;
  testing::FakeStatSource source;
  for (int i = 0; i < 12; ++i) {
    qemus.push_back(std::make_unique<FakeQemu>(host, 2, "vm" + std::to_string(i), "uuid-" + std::to_string(i),
                                               4000 + 100 * i));
    source.add(*qemus.back());
  }
  testing::Serialized z(*qemus[0]);  // the host's /proc and clocks, behind one mutex
  MonitorConfig config;
  config.introspection = false;
  internal::Shared shared(config);
  use_host(shared, z);
  shared.stat_source = &source;
  diagnosis::DiagnosisEngine engine(config.diagnosis, z.clock);
  shared.engine = &engine;
  internal::TaskPool pool(pool_options(&z.mono, 2));
  shared.tick_pool = &pool;
  pool.start();
  {
    auto l = z.lock();
    host.advance_clocks(30);  // 1.03 s: off the 100 ms grid
  }
  std::vector<std::shared_ptr<internal::DomainPipeline>> domains;
  for (auto& q : qemus) {
    domains.push_back(std::make_shared<internal::DomainPipeline>(shared, q->info()));
    internal::post_tick(shared, domains.back(), z.mono.now_ns());
  }
  auto all_ticked = [&](uint64_t n) {
    for (auto& d : domains) {
      if (d->summary().ticks < n) return false;
    }
    return true;
  };
  auto period = [&](int64_t ms) {
    {
      auto l = z.lock();
      host.advance_clocks(ms);
    }
    pool.wake();
  };
  ASSERT_TRUE(eventually([&] { return all_ticked(1); }));
  EXPECT_EQ(source.watched().size(), 12u);
  // The next tick is due at 1.1 s, on the grid: 70 ms later, not 100.
  period(70);
  ASSERT_TRUE(eventually([&] { return all_ticked(2); }));
  const uint64_t passes = source.latest()->generation;
  uint64_t reads = 0;
  {
    auto l = z.lock();
    reads = host.fs.reads("proc/4500/task/4501/stat");
  }
  for (uint64_t n = 3; n <= 7; ++n) {
    period(100);
    ASSERT_TRUE(eventually([&] { return all_ticked(n); }));
  }
  EXPECT_EQ(source.latest()->generation - passes, 5u);  // one per period for all twelve
  {
    auto l = z.lock();
    EXPECT_EQ(host.fs.reads("proc/4500/task/4501/stat"), reads);  // samples came from the passes
  }
  for (auto& d : domains) d->retire();
  pool.stop();
}

// Guest memory whose reads block while the latch is closed.
class LatchMemory final : public introspect::PhysicalMemory {
 public:
  explicit LatchMemory(SyntheticKernel& k) : k_(k), ranges_{{0, ~0ull}} {}
  Result<void> read(uint64_t addr, void* buf, size_t len) override {
    {
      std::unique_lock<std::mutex> l(mu);
      if (closed) {
        ++blocked;
        cv.notify_all();
        cv.wait(l, [&] { return !closed; });
      }
    }
    return k_.read(addr, buf, len);
  }
  const std::vector<introspect::PhysRange>& ranges() const override { return ranges_; }
  void close() {
    std::lock_guard<std::mutex> l(mu);
    closed = true;
  }
  void open() {
    {
      std::lock_guard<std::mutex> l(mu);
      closed = false;
    }
    cv.notify_all();
  }
  std::mutex mu;
  std::condition_variable cv;
  bool closed = false;
  int blocked = 0;

 private:
  SyntheticKernel& k_;
  std::vector<introspect::PhysRange> ranges_;
};

// The synthetic kernel's symbols and types, its memory read through a PhysicalMemory (here
// identity-mapped: the fake's "physical" addresses are its virtual ones).
class PhysBackedAccess final : public introspect::KernelAccess {
 public:
  PhysBackedAccess(std::unique_ptr<SyntheticKernel> k, std::shared_ptr<LatchMemory> mem)
      : k_(std::move(k)), mem_(std::move(mem)) {}
  Result<void> read(uint64_t va, void* buf, size_t len) override { return mem_->read(va, buf, len); }
  Result<uint64_t> symbol(std::string_view n) const override { return k_->symbol(n); }
  std::string symbolize(uint64_t a) const override { return k_->symbolize(a); }
  Result<introspect::MemberLayout> member(std::string_view t, std::string_view p) const override {
    return k_->member(t, p);
  }
  Result<uint64_t> type_size(std::string_view t) const override { return k_->type_size(t); }

 private:
  std::unique_ptr<SyntheticKernel> k_;
  std::shared_ptr<LatchMemory> mem_;
};

TEST(SupervisedReads, ABlockedGuestReadPausesIntrospectionAndHostSamplingGoesOn) {
  FakeQemu q(4);
  testing::Serialized z(q);
  MonitorConfig config;
  config.diagnosis.baseline_snapshot_interval = 100ms;  // a snapshot every tick
  internal::Shared shared(config);
  use_host(shared, z);
  diagnosis::DiagnosisEngine engine(shared.config.diagnosis, z.clock);
  shared.engine = &engine;
  std::shared_ptr<LatchMemory> latch;
  std::atomic<int> discoveries{0};
  shared.discover_override = [&](pid_t, const std::vector<introspect::RamRange>&, uint64_t)
      -> Result<std::unique_ptr<internal::GuestKernel>> {
    ++discoveries;
    auto sk = std::make_unique<SyntheticKernel>(4, SyntheticKernel::Layout::kLinux61);
    testing::build_seed_case1(*sk);
    latch = std::make_shared<LatchMemory>(*sk);
    auto access = std::make_unique<PhysBackedAccess>(std::move(sk), latch);
    auto gk = std::make_unique<internal::GuestKernel>();
    gk->memory = latch;
    auto r = introspect::SnapshotReader::create(*access, shared.config.snapshot);
    if (!r.ok()) return std::move(r).error();
    gk->tick_reader = std::move(r).value();
    r = introspect::SnapshotReader::create(*access, shared.config.inspect_snapshot);
    if (!r.ok()) return std::move(r).error();
    gk->inspect_reader = std::move(r).value();
    gk->access = std::move(access);
    return gk;
  };
  internal::TaskPool pool(pool_options(&z.mono, 1));
  shared.tick_pool = &pool;
  pool.start();
  auto p = std::make_shared<internal::DomainPipeline>(shared, q.info());
  internal::post_tick(shared, p, z.mono.now_ns());
  auto tick_clock = [&] {
    {
      auto l = z.lock();
      q.advance(100);
    }
    pool.wake();
  };
  auto state_is = [&](IntrospectionState s) { return p->introspection().state == s; };
  ASSERT_TRUE(eventually([&] { return state_is(IntrospectionState::kReady) && p->introspection().snapshots >= 2; },
                         tick_clock));

  // The next snapshot's read blocks (the only worker is inside it).
  latch->close();
  ASSERT_TRUE(eventually([&] {
    std::lock_guard<std::mutex> l(latch->mu);
    return latch->blocked > 0;
  }, tick_clock));
  const uint64_t snapshots = p->introspection().snapshots;
  // Past the 250 ms deadline: the supervisor abandons it and starts a replacement worker.
  {
    auto l = z.lock();
    q.advance(300);
  }
  pool.wake();
  ASSERT_TRUE(eventually([&] { return state_is(IntrospectionState::kPaused); }));
  IntrospectionHealth h = p->introspection();
  EXPECT_NE(h.error.find("did not return within 250 ms"), std::string::npos) << h.error;
  EXPECT_EQ(h.reads_abandoned, 1u);
  EXPECT_EQ(pool.abandoned(), 1u);
  EXPECT_EQ(pool.threads(), 3u);  // the stuck worker, its replacement, the supervisor
  // Host sampling goes on: ticks keep coming (on the replacement) and a frozen vCPU is seen.
  {
    auto l = z.lock();
    q.block_vcpu(1);
  }
  const uint64_t ticks = p->summary().ticks;
  ASSERT_TRUE(eventually([&] { return p->summary().ticks >= ticks + 10; }, tick_clock));
  bool blocked_seen = false;
  for (const auto& f : engine.active_findings()) blocked_seen |= f.kind == diagnosis::FindingKind::kVcpuHostBlocked;
  EXPECT_TRUE(blocked_seen);
  EXPECT_TRUE(state_is(IntrospectionState::kPaused));
  EXPECT_EQ(p->introspection().snapshots, snapshots);  // nothing read meanwhile
  EXPECT_EQ(discoveries.load(), 1);                     // and no rediscovery: the kernel is out

  // The read returns: its late result is dropped, the kernel comes back, snapshots resume, and
  // the stuck worker leaves (the pool is at full size again).
  latch->open();
  ASSERT_TRUE(eventually([&] { return state_is(IntrospectionState::kReady) && p->introspection().snapshots > snapshots + 2; },
                         tick_clock));
  ASSERT_TRUE(eventually([&] { return pool.threads() == 2u; }, tick_clock));
  EXPECT_EQ(discoveries.load(), 1);
  EXPECT_EQ(p->introspection().reads_abandoned, 1u);
  p->retire();
  pool.stop();
}

}  // namespace
}  // namespace stallmon::core
