// SPDX-License-Identifier: Apache-2.0
// Cost of one pipeline tick for a 4-vCPU domain: ProcessSampler::sample_once() through the real
// /proc (this process and 4 sleeping threads stand in for qemu and its vCPU threads), the
// adapters, and DiagnosisEngine::observe() - without and with a guest snapshot (the snapshot
// tests' synthetic 6.1 kernel holding the seed-case-1 picture, so the engine wants one every
// tick and its guest rules have work). The parts are measured alone too.
//
// Note: the snapshot here reads process-local memory; on a live guest each read batch is a
// process_vm_readv into qemu (see bench/introspect_snapshot for that cost).
#include <benchmark/benchmark.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "internal.h"
#include "sleeping_threads.h"
#include "seed_case1_kernel.h"
#include "synthetic_kernel.h"

namespace stallmon::core {
namespace {

using introspect::testing::SyntheticKernel;

using bench::SleepingThreads;

// Seed case 1 plus a printk ring with a tail to read.
void build_guest(SyntheticKernel& k) {
  testing::build_seed_case1(k);
  k.init_printk(6, 12);
  for (int i = 0; i < 40; ++i) k.printk("console line " + std::to_string(i), 1000u * static_cast<uint64_t>(i));
}

// The GuestKernel a discovery of the synthetic guest gives (seed case 1, or a healthy one).
Result<std::unique_ptr<internal::GuestKernel>> synthetic_guest_kernel(const internal::Shared& shared, bool healthy) {
  auto sk = std::make_unique<SyntheticKernel>(4, SyntheticKernel::Layout::kLinux61);
  if (healthy) {
    sk->init_printk(6, 12);
    for (int i = 0; i < 40; ++i) sk->printk("console line " + std::to_string(i), 1000u * static_cast<uint64_t>(i));
  } else {
    build_guest(*sk);
  }
  auto gk = std::make_unique<internal::GuestKernel>();
  auto r = introspect::SnapshotReader::create(*sk, shared.config.snapshot);
  if (!r.ok()) return std::move(r).error();
  gk->tick_reader = std::move(r).value();
  r = introspect::SnapshotReader::create(*sk, shared.config.inspect_snapshot);
  if (!r.ok()) return std::move(r).error();
  gk->inspect_reader = std::move(r).value();
  gk->access = std::move(sk);
  return gk;
}

// This process as the qemu of a domain, the sleeping threads as its vCPUs.
libvirt::DomainInfo bench_domain(const std::string& name, const std::string& uuid, const SleepingThreads& threads) {
  libvirt::DomainInfo info;
  info.name = name;
  info.uuid = uuid;
  info.state = libvirt::DomainRunState::kRunning;
  info.qemu_pid = getpid();
  for (size_t i = 0; i < threads.tids().size(); ++i) {
    info.vcpus.push_back(libvirt::VcpuThread{static_cast<int>(i), threads.tids()[i], ""});
  }
  info.ram_layout = std::make_shared<const std::vector<introspect::RamRange>>(
      std::vector<introspect::RamRange>{{0, 1u << 20, 0x1000, "pc.ram"}});
  return info;
}

// A 4-vCPU "domain" made of this process and four sleeping threads. `healthy`: a guest with
// nothing suspect, on simulated clocks that advance one sample interval per tick (so that the
// engine's baseline snapshot rate decides, as at 10 Hz in production).
struct Rig {
  explicit Rig(bool introspection, bool healthy = false,
               std::chrono::nanoseconds baseline = std::chrono::seconds(1))
      : threads(4), healthy_(healthy) {
    MonitorConfig c;
    c.threads = false;
    c.introspection = introspection;
    c.diagnosis.baseline_snapshot_interval = baseline;
    c.baseline_snapshot_interval = baseline;
    shared = std::make_unique<internal::Shared>(c);
    shared->fs = &fs;
    shared->mono = healthy ? static_cast<host::Clock*>(&sim_mono) : &mono;
    shared->clock = healthy ? static_cast<const diagnosis::Clock*>(&sim_clock) : &clock;
    shared->mono_to_engine = ClockMapping::from(shared->clock->now(), shared->mono->now_ns());
    engine = std::make_unique<diagnosis::DiagnosisEngine>(shared->config.diagnosis, *shared->clock);
    shared->engine = engine.get();
    shared->discover_override = [this](pid_t, const std::vector<introspect::RamRange>&, uint64_t) {
      return synthetic_guest_kernel(*shared, healthy_);
    };
    const libvirt::DomainInfo info = bench_domain("bench", "00000000-0000-0000-0000-0000000000be", threads);
    pipeline = std::make_unique<internal::DomainPipeline>(*shared, info);
  }
  void tick() {
    if (healthy_) {
      sim_mono.advance_ns(100'000'000);
      sim_clock.advance(std::chrono::milliseconds(100));
    }
    pipeline->tick();
  }

  SleepingThreads threads;
  bool healthy_;
  host::RealHostFs fs{"/"};
  host::MonotonicClock mono;
  diagnosis::SteadyWallClock clock;
  host::SimulatedClock sim_mono{1'000'000'000};
  diagnosis::ManualClock sim_clock;
  std::unique_ptr<internal::Shared> shared;
  std::unique_ptr<diagnosis::DiagnosisEngine> engine;
  std::unique_ptr<internal::DomainPipeline> pipeline;
};

void BM_Tick(benchmark::State& state) {
  const bool snapshot = state.range(0) != 0;
  Rig rig(snapshot);
  for (int i = 0; i < 5; ++i) rig.pipeline->tick();  // discovery, first samples
  const uint64_t snaps0 = rig.shared->counters.snapshots.load();
  for (auto _ : state) rig.pipeline->tick();
  state.counters["snapshots_per_tick"] = static_cast<double>(rig.shared->counters.snapshots.load() - snaps0) /
                                         static_cast<double>(state.iterations());
  state.SetLabel(snapshot ? "sample + snapshot + adapt + observe" : "sample + adapt + observe");
}
BENCHMARK(BM_Tick)->Arg(0)->Arg(1)->ArgNames({"snapshot"})->MeasureProcessCPUTime()->UseRealTime();

// A healthy guest at 10 Hz: snapshotted once a second (the old default baseline) or on every
// tick (the new one, issue 16). The ratio is what snapshots on every tick cost.
void BM_TickHealthy(benchmark::State& state) {
  const auto baseline = std::chrono::milliseconds(state.range(0));
  Rig rig(true, true, baseline);
  for (int i = 0; i < 5; ++i) rig.tick();
  const uint64_t snaps0 = rig.shared->counters.snapshots.load();
  for (auto _ : state) rig.tick();
  state.counters["snapshots_per_tick"] = static_cast<double>(rig.shared->counters.snapshots.load() - snaps0) /
                                         static_cast<double>(state.iterations());
  state.SetLabel("healthy guest, baseline snapshot every " + std::to_string(state.range(0)) + " ms");
}
BENCHMARK(BM_TickHealthy)->Arg(1000)->Arg(100)->ArgNames({"baseline_ms"})->MeasureProcessCPUTime()->UseRealTime();

// N domains (each: this process and the same four sleeping threads, a healthy synthetic guest
// snapshotted every tick) on the TickPool with its default 2 workers, at 10 Hz in real time for
// one second per iteration. Reports the process CPU per domain tick and the pool's threads.
void BM_PoolTicks(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  SleepingThreads threads(4);
  host::RealHostFs fs{"/"};
  host::MonotonicClock mono;
  diagnosis::SteadyWallClock clock;
  MonitorConfig c;
  c.diagnosis.baseline_snapshot_interval = std::chrono::milliseconds(100);
  internal::Shared shared(c);
  shared.fs = &fs;
  shared.mono = &mono;
  shared.clock = &clock;
  shared.mono_to_engine = ClockMapping::from(clock.now(), mono.now_ns());
  diagnosis::DiagnosisEngine engine(shared.config.diagnosis, clock);
  shared.engine = &engine;
  shared.discover_override = [&](pid_t, const std::vector<introspect::RamRange>&, uint64_t) {
    return synthetic_guest_kernel(shared, true);
  };
  internal::TaskPool::Options o;
  o.mono = &mono;
  o.workers = 2;
  o.max_spare = 2;
  internal::TaskPool pool(o);
  shared.tick_pool = &pool;
  pool.start();
  std::vector<std::shared_ptr<internal::DomainPipeline>> domains;
  for (int i = 0; i < n; ++i) {
    const libvirt::DomainInfo info = bench_domain("bench" + std::to_string(i), "uuid-" + std::to_string(i), threads);
    domains.push_back(std::make_shared<internal::DomainPipeline>(shared, info));
    internal::post_tick(shared, domains.back(), mono.now_ns() + (i * 100'000'000LL) / n);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // discoveries, first samples
  const uint64_t ticks0 = shared.counters.ticks.load(), snaps0 = shared.counters.snapshots.load();
  const uint64_t over0 = shared.counters.overruns.load();
  for (auto _ : state) std::this_thread::sleep_for(std::chrono::seconds(1));
  const double ticks = static_cast<double>(shared.counters.ticks.load() - ticks0);
  state.counters["domain_ticks"] = ticks;
  state.counters["snapshots_per_tick"] = static_cast<double>(shared.counters.snapshots.load() - snaps0) / ticks;
  state.counters["overruns"] = static_cast<double>(shared.counters.overruns.load() - over0);
  state.counters["pool_threads"] = static_cast<double>(pool.threads());
  for (auto& d : domains) d->retire();
  pool.stop();
}
BENCHMARK(BM_PoolTicks)->Arg(10)->Arg(100)->ArgNames({"domains"})->Iterations(3)->MeasureProcessCPUTime()->UseRealTime()->Unit(benchmark::kMillisecond);

// The parts alone, on the same rig.
// This process with four sleeping threads as its vCPUs, sampled through the real /proc.
struct SamplerRig {
  SamplerRig() : s(fs, mono, getpid(), t.as_vcpus()) {}
  SleepingThreads t{4};
  host::RealHostFs fs{"/"};
  host::MonotonicClock mono;
  host::ProcessSampler s;
};

void BM_SampleOnly(benchmark::State& state) {
  SamplerRig r;
  for (auto _ : state) benchmark::DoNotOptimize(r.s.sample_once());
}
BENCHMARK(BM_SampleOnly)->MeasureProcessCPUTime()->UseRealTime();

void BM_AdaptHost(benchmark::State& state) {
  SamplerRig r;
  for (int i = 0; i < 3; ++i) (void)r.s.sample_once();
  internal::SleepWchanReader w(r.fs);
  for (auto _ : state) {
    diagnosis::DomainObservation obs;
    internal::fill_host_views(r.s, &w, obs);
    benchmark::DoNotOptimize(obs);
  }
}
BENCHMARK(BM_AdaptHost);

void BM_SnapshotAndAdapt(benchmark::State& state) {
  SyntheticKernel k(4, SyntheticKernel::Layout::kLinux61);
  build_guest(k);
  introspect::SnapshotOptions o = MonitorConfig{}.snapshot;
  auto reader = introspect::SnapshotReader::create(k, o);
  if (!reader.ok()) {
    state.SkipWithError(reader.error().to_string().c_str());
    return;
  }
  for (auto _ : state) {
    auto snap = (*reader)->take();
    auto view = to_guest_view(snap);
    benchmark::DoNotOptimize(view);
  }
}
BENCHMARK(BM_SnapshotAndAdapt);

}  // namespace
}  // namespace stallmon::core
