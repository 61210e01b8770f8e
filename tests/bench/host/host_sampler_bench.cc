// SPDX-License-Identifier: Apache-2.0
// Host CPU per thread sample, through the real /proc: this process spawns N sleeping threads
// (standing in for vCPU threads) and samples them with ProcessSampler.
//
// Reported: CPU time per sample_once() and, as the counter "per_thread", CPU time per thread
// sample (the target is at most 2 us). User and system time both count: almost all of the cost
// is the kernel generating /proc text.
#include <benchmark/benchmark.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "stallmon/host/proc_parse.h"
#include "stallmon/host/sampler.h"
#include "sleeping_threads.h"

namespace stallmon::host {
namespace {

using bench::SleepingThreads;

void set_counters(benchmark::State& state, size_t threads_per_tick) {
  state.counters["threads"] = static_cast<double>(threads_per_tick);
  // Seconds per thread sample (printed in the time unit chosen by Google Benchmark's counters:
  // kInvert of a rate).
  state.counters["per_thread"] = benchmark::Counter(
      static_cast<double>(threads_per_tick),
      benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

// Every vCPU thread every tick: stat + schedstat, and status once a second (the default) or
// every tick (status_every_tick:1). The threads sleep, so they never make run progress: the
// skip_stat_while_running mode would read the same files here.
void BM_SampleVcpuThreads(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  SleepingThreads threads(n);
  RealHostFs fs("/");
  MonotonicClock clock;
  SamplerOptions opts;
  opts.sample_other_threads = false;
  opts.vcpu_history = 64;  // the ring size does not change the per-sample cost
  if (state.range(1)) opts.status_interval_ns = 0;
  ProcessSampler sampler(fs, clock, getpid(), threads.as_vcpus(), opts);
  if (!sampler.sample_once().ok()) state.SkipWithError("first sample failed");
  for (auto _ : state) {
    Result<void> r = sampler.sample_once();
    benchmark::DoNotOptimize(r);
  }
  set_counters(state, static_cast<size_t>(n));
}
BENCHMARK(BM_SampleVcpuThreads)
    ->ArgsProduct({{8, 64, 256}, {0, 1}})
    ->ArgNames({"threads", "status_every_tick"});

// Every thread of the process (vCPUs and the rest), with the periodic re-listing included.
void BM_SampleAllThreads(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  SleepingThreads threads(n);
  RealHostFs fs("/");
  MonotonicClock clock;
  SamplerOptions opts;
  opts.vcpu_history = 64;
  opts.enumerate_interval_ns = 0;  // worst case: re-list every tick
  ProcessSampler sampler(fs, clock, getpid(), {}, opts);
  if (!sampler.sample_once().ok()) state.SkipWithError("first sample failed");
  size_t tracked = sampler.other_threads().size();
  for (auto _ : state) {
    Result<void> r = sampler.sample_once();
    benchmark::DoNotOptimize(r);
  }
  set_counters(state, tracked);
}
BENCHMARK(BM_SampleAllThreads)->Arg(64)->ArgName("threads");

// One pread of one kept-open /proc file of a sleeping thread: what each file costs the kernel.
void BM_PreadProcFile(benchmark::State& state) {
  static const char* const kFiles[] = {"stat", "schedstat", "status", "wchan"};
  SleepingThreads threads(1);
  std::string path = "/proc/self/task/" + std::to_string(threads.as_vcpus().at(0)) + "/" +
                     kFiles[state.range(0)];
  RealHostFs fs("/");
  Result<int> fd = fs.open(path.substr(1));
  if (!fd.ok()) {
    state.SkipWithError(fd.error().to_string().c_str());
    return;
  }
  char buf[8192];
  for (auto _ : state) {
    Result<size_t> n = fs.read(*fd, buf, sizeof buf);
    benchmark::DoNotOptimize(n);
  }
  fs.close(*fd);
  state.SetLabel(kFiles[state.range(0)]);
}
BENCHMARK(BM_PreadProcFile)->DenseRange(0, 3);

// The same files opened, read and closed every time (read_whole): what a file read rarely costs,
// against the kept descriptor above.
void BM_OpenReadCloseProcFile(benchmark::State& state) {
  static const char* const kFiles[] = {"stat", "wchan"};
  SleepingThreads threads(1);
  const std::string path = "proc/self/task/" + std::to_string(threads.as_vcpus().at(0)) + "/" +
                           kFiles[state.range(0)];
  RealHostFs fs("/");
  for (auto _ : state) {
    Result<std::string> r = read_whole(fs, path, 512);
    benchmark::DoNotOptimize(r);
  }
  state.SetLabel(kFiles[state.range(0)]);
}
BENCHMARK(BM_OpenReadCloseProcFile)->DenseRange(0, 1);

// The parsers alone, on texts as the kernel prints them.
void BM_ParseStatSchedstatStatus(benchmark::State& state) {
  std::string stat =
      "4242 (CPU 2/TCG) S 1 4240 4240 0 -1 4194624 118 0 0 0 10391 2117 0 0 20 0 12 0 2891 "
      "4257259520 36542 18446744073709551615 1 1 0 0 0 0 0 4096 17 0 0 0 -1 3 0 0 0 0 0 0 0 0 0 "
      "0 0 0 0\n";
  std::string schedstat = "104060733120 5120937312 1209311\n";
  std::string status;
  {
    char buf[8192];
    FILE* f = fopen("/proc/self/status", "r");
    size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (f) fclose(f);
    status.assign(buf, n);
  }
  for (auto _ : state) {
    auto a = parse_task_stat(stat);
    auto b = parse_schedstat(schedstat);
    auto c = parse_task_status(status);
    benchmark::DoNotOptimize(a);
    benchmark::DoNotOptimize(b);
    benchmark::DoNotOptimize(c);
  }
}
BENCHMARK(BM_ParseStatSchedstatStatus);

}  // namespace
}  // namespace stallmon::host
