// SPDX-License-Identifier: Apache-2.0
// CPU per thread per sample: the /proc reader against one BPF task-iterator pass, side by side
// in one run, over N sleeping threads of this process standing in for vCPU threads.
//
//   path:0  ProcessSampler::sample_once() through /proc (stat + schedstat every tick, status
//           once a second: the fallback, as the daemon runs it)
//   path:1  ThreadStatSource::collect() alone: one kernel pass for the watched process
//   path:2  ProcessSampler::sample_once() fed by a pass per tick (pass + filling the samples)
//   path:3  as path:1, but one walk of every host task (kernels without per-process iterators)
//
// "per_thread" is CPU time (user + system of the benchmark thread: the pass runs inside its
// read() of the iterator) divided by the threads sampled. The BPF pass walks every task of the
// host, so its cost also grows with the tasks nobody watches ("host_tasks" is that count).
// Needs root and a build with BPF for paths 1 and 2 (they are skipped otherwise).
#include <benchmark/benchmark.h>
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <memory>

#include "sleeping_threads.h"
#include "stallmon/host/sampler.h"
#include "stallmon/host/thread_stat_source.h"

namespace stallmon::host {
namespace {

using bench::SleepingThreads;

ThreadStatSource* bpf_source(bool per_process) {
  auto open = [](bool pp) {
    StatSourceOptions o;
    o.per_process_iterators = pp;
    return choose_thread_stat_source(o).source;
  };
  static std::unique_ptr<ThreadStatSource> per = open(true), wide = open(false);
  return per_process ? per.get() : wide.get();
}

size_t host_tasks() {
  size_t n = 0;
  DIR* d = opendir("/proc");
  if (!d) return 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    std::string t = std::string("/proc/") + e->d_name + "/task";
    if (DIR* td = opendir(t.c_str())) {
      while (dirent* te = readdir(td)) n += te->d_name[0] != '.';
      closedir(td);
    }
  }
  closedir(d);
  return n;
}

void raise_fd_limit() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

void BM_ThreadStats(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const int path = static_cast<int>(state.range(1));
  raise_fd_limit();
  ThreadStatSource* src = path == 0 ? nullptr : bpf_source(path != 3);
  if (path != 0 && !src) {
    state.SkipWithError("no BPF source (needs root and a build with BPF)");
    return;
  }
  SleepingThreads threads(n);
  RealHostFs fs("/");
  MonotonicClock clock;
  SamplerOptions opts;
  opts.sample_other_threads = false;
  opts.vcpu_history = 64;
  opts.pass_max_age_ns = 0;  // a pass per tick
  ProcessSampler sampler(fs, clock, getpid(), threads.as_vcpus(), opts);
  if (path == 2) sampler.set_stat_source(src);
  const bool pass_only = path == 1 || path == 3;
  if (pass_only && !src->watch(getpid()).ok()) {
    state.SkipWithError("watch failed");
    return;
  }
  if (!sampler.sample_once().ok()) state.SkipWithError("first sample failed");
  for (auto _ : state) {
    if (pass_only) {
      auto p = src->collect(clock.now_ns());
      benchmark::DoNotOptimize(p);
    } else {
      Result<void> r = sampler.sample_once();
      benchmark::DoNotOptimize(r);
    }
  }
  if (pass_only) src->unwatch(getpid());
  if (path == 2 && sampler.source_errors() != 0) state.SkipWithError("pass errors");
  state.counters["threads"] = n;
  state.counters["host_tasks"] = static_cast<double>(host_tasks());
  state.counters["per_thread"] = benchmark::Counter(
      static_cast<double>(n),
      benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  static const char* const kPaths[] = {"proc", "bpf-pass", "bpf-sampler", "bpf-pass-host-wide"};
  state.SetLabel(kPaths[path]);
}
BENCHMARK(BM_ThreadStats)
    ->ArgsProduct({{16, 256, 4096}, {0, 1, 2, 3}})
    ->ArgNames({"threads", "path"})
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace stallmon::host
