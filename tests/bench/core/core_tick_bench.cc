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

// A 4-vCPU "domain" made of this process and four sleeping threads.
struct Rig {
  explicit Rig(bool introspection) : threads(4) {
    MonitorConfig c;
    c.threads = false;
    c.introspection = introspection;
    shared = std::make_unique<internal::Shared>(c);
    shared->fs = &fs;
    shared->mono = &mono;
    shared->clock = &clock;
    shared->mono_to_engine = ClockMapping::from(clock.now(), mono.now_ns());
    engine = std::make_unique<diagnosis::DiagnosisEngine>(shared->config.diagnosis, clock);
    shared->engine = engine.get();
    shared->discover_override = [this](pid_t, const std::vector<introspect::RamRange>&,
                                       uint64_t) -> Result<std::unique_ptr<internal::GuestKernel>> {
      auto sk = std::make_unique<SyntheticKernel>(4, SyntheticKernel::Layout::kLinux61);
      build_guest(*sk);
      auto gk = std::make_unique<internal::GuestKernel>();
      auto r = introspect::SnapshotReader::create(*sk, shared->config.snapshot);
      if (!r.ok()) return std::move(r).error();
      gk->tick_reader = std::move(r).value();
      r = introspect::SnapshotReader::create(*sk, shared->config.inspect_snapshot);
      if (!r.ok()) return std::move(r).error();
      gk->inspect_reader = std::move(r).value();
      gk->access = std::move(sk);
      return gk;
    };
    libvirt::DomainInfo info;
    info.name = "bench";
    info.uuid = "00000000-0000-0000-0000-0000000000be";
    info.state = libvirt::DomainRunState::kRunning;
    info.qemu_pid = getpid();
    for (size_t i = 0; i < threads.tids().size(); ++i) {
      info.vcpus.push_back(libvirt::VcpuThread{static_cast<int>(i), threads.tids()[i], ""});
    }
    info.ram_layout = std::make_shared<const std::vector<introspect::RamRange>>(
        std::vector<introspect::RamRange>{{0, 1u << 20, 0x1000, "pc.ram"}});
    pipeline = std::make_unique<internal::DomainPipeline>(*shared, info);
  }

  SleepingThreads threads;
  host::RealHostFs fs{"/"};
  host::MonotonicClock mono;
  diagnosis::SteadyWallClock clock;
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
  internal::SleepWchanReader w;
  for (auto _ : state) {
    diagnosis::DomainObservation obs;
    internal::fill_host_views(r.s, r.fs, &w, obs);
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
