// SPDX-License-Identifier: Apache-2.0
// The compact vCPU history (SampleRing: blocks of field-wise differences) against the plain ring
// of 56-byte samples it replaced, side by side: pushing a sample, and what the rules do every
// tick, a walk back over the last 1 s / 10 s plus derive_signals. Memory per vCPU is printed by
// host_unit_tests (SampleRing.TenMinutesOfAVcpuTakeAFractionOfThePlainRing).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "stallmon/host/history.h"

namespace stallmon::host {
namespace {

constexpr int64_t kMs = 1'000'000;

// The ring as it was: every sample in full, one circular buffer per tier (fine tier only here).
class PlainRing {
 public:
  explicit PlainRing(size_t n) : buf_(n) {}
  void push(const ThreadSample& s) {
    buf_[(head_ + size_) % buf_.size()] = s;
    if (size_ < buf_.size()) ++size_;
    else head_ = (head_ + 1) % buf_.size();
  }
  size_t size() const { return size_; }
  const ThreadSample& at(size_t i) const { return buf_[(head_ + i) % buf_.size()]; }

 private:
  std::vector<ThreadSample> buf_;
  size_t head_ = 0, size_ = 0;
};

ThreadSample busy_sample(int64_t i) {
  ThreadSample s;
  s.t_ns = 100 * kMs * i + (i * 7919) % 1000;
  s.run_ns = static_cast<uint64_t>(i) * (60 * kMs) + static_cast<uint64_t>((i * 104729) % 1000);
  s.wait_ns = static_cast<uint64_t>(i) * (20 * kMs);
  s.timeslices = static_cast<uint32_t>(25 * i);
  s.voluntary_switches = static_cast<uint32_t>(10 * i);
  s.involuntary_switches = static_cast<uint32_t>(3 * i);
  s.cpu = static_cast<int16_t>(i % 4);
  s.state = 'R';
  s.flags = ThreadSample::kHasSchedstat | ThreadSample::kHasStatus;
  return s;
}

template <class Ring>
void push_all(benchmark::State& state, Ring& r) {
  int64_t i = 0;
  for (auto _ : state) r.push(busy_sample(++i));
}

void BM_PushCompact(benchmark::State& state) {
  SampleRing r(600, 540, 1000 * kMs);
  push_all(state, r);
}
BENCHMARK(BM_PushCompact);

void BM_PushPlain(benchmark::State& state) {
  PlainRing r(600);
  push_all(state, r);
}
BENCHMARK(BM_PushPlain);

// The newest `window` samples read back, newest first (what derive_signals' walk does).
template <class Ring>
void walk(benchmark::State& state, const Ring& r) {
  const size_t window = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    uint64_t sum = 0;
    for (size_t k = 1; k <= window; ++k) sum += r.at(r.size() - k).run_ns;
    benchmark::DoNotOptimize(sum);
  }
}

void BM_WalkCompact(benchmark::State& state) {
  SampleRing r(600, 540, 1000 * kMs);
  for (int64_t i = 1; i <= 7000; ++i) r.push(busy_sample(i));
  walk(state, r);
}
BENCHMARK(BM_WalkCompact)->Arg(10)->Arg(100)->ArgName("samples");

void BM_WalkPlain(benchmark::State& state) {
  PlainRing r(600);
  for (int64_t i = 1; i <= 7000; ++i) r.push(busy_sample(i));
  walk(state, r);
}
BENCHMARK(BM_WalkPlain)->Arg(10)->Arg(100)->ArgName("samples");

void BM_DeriveSignalsCompact(benchmark::State& state) {
  SampleRing r(600, 540, 1000 * kMs);
  StateTracker t;
  for (int64_t i = 1; i <= 7000; ++i) {
    r.push(busy_sample(i));
    t.observe(r.newest());
  }
  const int64_t window = state.range(0) * kMs;
  for (auto _ : state) benchmark::DoNotOptimize(derive_signals(r, t, window));
}
BENCHMARK(BM_DeriveSignalsCompact)->Arg(1000)->Arg(10000)->ArgName("window_ms");

}  // namespace
}  // namespace stallmon::host
