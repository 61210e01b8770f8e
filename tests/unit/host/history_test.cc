// SPDX-License-Identifier: Apache-2.0
#include "stallmon/host/history.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <vector>

namespace stallmon::host {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSec = 1'000'000'000;

ThreadSample at(int64_t t_ms, char state, uint64_t run_ms, uint64_t wait_ms, uint8_t flags = 0) {
  ThreadSample s;
  s.t_ns = t_ms * kMs;
  s.state = state;
  s.run_ns = run_ms * kMs;
  s.wait_ns = wait_ms * kMs;
  s.flags = flags | ThreadSample::kHasSchedstat;
  return s;
}

struct Feed {
  SampleRing ring{100};
  StateTracker tracker;
  void push(const ThreadSample& s) {
    ring.push(s);
    tracker.observe(s);
  }
};

TEST(SampleRing, KeepsNewestAndIsBounded) {
  SampleRing r(3);
  EXPECT_TRUE(r.empty());
  for (int i = 1; i <= 5; ++i) r.push(at(i, 'R', i, 0));
  ASSERT_EQ(r.size(), 3u);  // a small tier has blocks of one sample: exactly its capacity
  EXPECT_EQ(r.at(0).t_ns, 3 * kMs);
  EXPECT_EQ(r.newest().t_ns, 5 * kMs);
  SampleRing tiny(0);
  EXPECT_EQ(tiny.capacity(), 2u);
  tiny.push(at(1, 'R', 0, 0));
  EXPECT_EQ(tiny.size(), 1u);
}

// Every field of every sample comes back exactly, whatever the differences: counters that wrap,
// go backwards (a bad read), jump by 2^63, a CPU of -1, any state or flags byte.
TEST(SampleRing, RoundTripsEverySampleExactly) {
  SampleRing r(100, 50, 1);  // coarse interval 1 ns: every aged sample is kept
  std::vector<ThreadSample> pushed;
  uint64_t x = 0x9e3779b97f4a7c15ull;
  auto next = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  ThreadSample s;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t pick = next();
    s.t_ns += (pick & 1) ? static_cast<int64_t>(next() % (1ull << 40)) : 100 * kMs;
    if (pick & 2) s.run_ns = next();              // anything, incl. backwards
    else s.run_ns += next() % (100 * kMs);
    if (pick & 4) s.wait_ns = next();
    s.throttled_ns += (pick & 8) ? (1ull << 63) : 0;
    s.cpu_ticks += static_cast<uint32_t>(next());
    s.timeslices -= static_cast<uint32_t>(pick >> 60);
    s.voluntary_switches += static_cast<uint32_t>((pick >> 8) & 0xff);
    s.involuntary_switches = static_cast<uint32_t>(next());
    s.nr_throttled += (pick & 16) ? 0xffffffffu : 0;
    s.cpu = static_cast<int16_t>((pick & 32) ? -1 : static_cast<int16_t>(next()));
    s.state = static_cast<char>(next());
    s.flags = static_cast<uint8_t>(next());
    s.flags &= static_cast<uint8_t>(~(ThreadSample::kFirst | ThreadSample::kCgroupChanged));
    r.push(s);
    pushed.push_back(s);
  }
  ASSERT_GE(r.size(), 150u);
  const size_t off = pushed.size() - r.size();
  for (size_t i = 0; i < r.size(); ++i) {
    const ThreadSample a = r.at(i), &b = pushed[off + i];
    ASSERT_EQ(std::memcmp(&a, &b, sizeof a), 0) << i;
  }
  EXPECT_EQ(std::memcmp(&r.newest(), &pushed.back(), sizeof(ThreadSample)), 0);
  r.clear();
  EXPECT_TRUE(r.empty());
  r.push(s);
  EXPECT_EQ(r.at(0).t_ns, s.t_ns);
}

// A tier holds between its capacity and a block more, and drops whole blocks, oldest first.
TEST(SampleRing, HoldsItsCapacityAndAtMostABlockMore) {
  for (size_t cap : {2u, 7u, 20u, 33u, 600u}) {
    SampleRing r(cap);
    for (int64_t i = 1; i <= 2000; ++i) {
      r.push(at(i, 'S', 0, 0));
      ASSERT_GE(r.size(), std::min<size_t>(static_cast<size_t>(i), cap)) << cap << " " << i;
      ASSERT_LT(r.size(), cap + SampleTier::kMaxBlock) << cap << " " << i;
      ASSERT_EQ(r.newest().t_ns, i * kMs);
      ASSERT_EQ(r.at(0).t_ns, (i - static_cast<int64_t>(r.size()) + 1) * kMs);
    }
    // The running count of the blocks' bytes neither leaks nor underflows as blocks come and go.
    const size_t full = r.memory_bytes();
    EXPECT_LT(full, (cap + SampleTier::kMaxBlock) * sizeof(ThreadSample) + 4096) << cap;
    for (int64_t i = 2001; i <= 4000; ++i) r.push(at(i, 'S', 0, 0));
    EXPECT_LE(r.memory_bytes(), full + 64 * 8) << cap;
    r.clear();
    EXPECT_LE(r.memory_bytes(), full) << cap;  // the slots stay; their deltas go
  }
}

// What a vCPU's ten minutes cost: an idle vCPU (asleep, 10 wake-ups a second) and a busy one
// (every counter moving every sample), against the 56-byte ThreadSample a plain ring keeps.
TEST(SampleRing, TenMinutesOfAVcpuTakeAFractionOfThePlainRing) {
  auto fill = [](bool busy) {
    SampleRing r(600, 540, 1000 * kMs);
    ThreadSample s;
    s.flags = ThreadSample::kHasSchedstat | ThreadSample::kHasStatus;
    for (int64_t i = 1; i <= 6000; ++i) {
      s.t_ns = 100 * kMs * i + (i * 7919) % 1000;  // ticks are not exact
      s.state = busy ? 'R' : 'S';
      if (busy) {
        s.run_ns += 60 * kMs + (i * 104729) % 1000;
        s.wait_ns += 20 * kMs + (i * 13) % 1000;
        s.cpu_ticks += 6;
        s.timeslices += 25;
        s.involuntary_switches += 3;
        s.cpu = static_cast<int16_t>(i % 4);
      } else {
        s.run_ns += 4000 + (i % 50);
        s.timeslices += 10;
      }
      s.voluntary_switches += 10;
      r.push(s);
    }
    return r;
  };
  const SampleRing idle = fill(false), busy = fill(true);
  const size_t plain = 1140 * sizeof(ThreadSample);  // 63,840 bytes
  // Measured: idle 17,226 bytes (~15 a sample with the blocks' full first samples), busy 27,878.
  EXPECT_LT(idle.memory_bytes(), plain / 3) << idle.memory_bytes();
  EXPECT_LT(busy.memory_bytes(), plain / 2) << busy.memory_bytes();
  std::printf("ten minutes of one vCPU: idle %zu bytes, busy %zu bytes, plain ring %zu bytes\n",
              idle.memory_bytes(), busy.memory_bytes(), plain);
}

// Two tiers: 1 min at 10 Hz, then 9 min thinned to 1 Hz. After 15 minutes of samples the ring
// spans the last 10 minutes in ~1,140 samples, one per second before the last minute.
TEST(SampleRing, OlderSamplesAreThinnedToTheCoarseInterval) {
  SampleRing r(600, 540, 1000 * kMs);
  EXPECT_EQ(r.capacity(), 1140u);
  const int64_t n = 15 * 60 * 10;  // 15 min at 10 Hz, t = 100 ms * i
  for (int64_t i = 1; i <= n; ++i) r.push(at(100 * i, 'R', i, 0));
  ASSERT_GE(r.size(), 1140u);
  ASSERT_LT(r.size(), 1140u + 2 * SampleTier::kMaxBlock);
  const int64_t newest = 100 * n * kMs;
  EXPECT_EQ(r.newest().t_ns, newest);
  // 540 one-second points before at least a minute of full rate (plus up to a block of each).
  EXPECT_LE(r.at(0).t_ns, newest - 599'000 * kMs);
  EXPECT_GE(r.at(0).t_ns, newest - (600'000 + 32'000 + 3'200) * kMs);
  for (size_t i = 1; i < r.size(); ++i) {
    const int64_t gap = r.at(i).t_ns - r.at(i - 1).t_ns;
    if (r.at(i - 1).t_ns >= newest - 60'000 * kMs) {
      EXPECT_EQ(gap, 100 * kMs) << i;  // the last minute: every sample
    } else if (r.at(i).t_ns < newest - 63'200 * kMs) {
      EXPECT_EQ(gap, 1000 * kMs) << i;  // before it: one per second
    }
  }
  // Signals over the last seconds are exactly those of a full-rate ring.
  SampleRing full(1140);
  StateTracker tr;
  for (int64_t i = n - 1139; i <= n; ++i) {
    full.push(at(100 * i, 'R', i, 0));
    tr.observe(full.newest());
  }
  for (int64_t w : {1000 * kMs, 5000 * kMs, 30'000 * kMs}) {
    auto a = derive_signals(r, tr, w), b = derive_signals(full, tr, w);
    EXPECT_EQ(a.window_ns, b.window_ns) << w;
    EXPECT_EQ(a.run_delta_ns, b.run_delta_ns) << w;
  }
}

// A restart (kFirst) or a cgroup move in the thinned part is kept, so a delta never spans it.
TEST(SampleRing, ThinningKeepsRestartsAndCgroupMoves) {
  SampleRing r(10, 100, 1000 * kMs);
  for (int64_t i = 1; i <= 200; ++i) {
    uint8_t flags = 0;
    if (i == 53) flags = ThreadSample::kFirst;
    if (i == 77) flags = ThreadSample::kCgroupChanged | ThreadSample::kHasCgroup;
    r.push(at(100 * i, 'R', i, 0, flags));
  }
  bool first = false, moved = false;
  for (size_t i = 0; i < r.size(); ++i) {
    first |= r.at(i).t_ns == 5300 * kMs && (r.at(i).flags & ThreadSample::kFirst);
    moved |= r.at(i).t_ns == 7700 * kMs && (r.at(i).flags & ThreadSample::kCgroupChanged);
  }
  EXPECT_TRUE(first);
  EXPECT_TRUE(moved);
}

TEST(Signals, InvalidWithOneSample) {
  Feed f;
  EXPECT_FALSE(derive_signals(f.ring, f.tracker, kSec).valid);
  f.push(at(0, 'R', 0, 0, ThreadSample::kFirst));
  ThreadSignals s = derive_signals(f.ring, f.tracker, kSec);
  EXPECT_FALSE(s.valid);
  EXPECT_EQ(s.state, 'R');
}

TEST(Signals, RunAndStealFractionsAreExact) {
  Feed f;
  // 10 Hz for 2 s: the thread runs 60% and waits for a CPU 30% of the time.
  for (int i = 0; i <= 20; ++i) {
    f.push(at(i * 100, 'R', i * 60, i * 30, i == 0 ? ThreadSample::kFirst : 0));
  }
  ThreadSignals s = derive_signals(f.ring, f.tracker, kSec);
  ASSERT_TRUE(s.valid);
  EXPECT_EQ(s.window_ns, kSec);
  EXPECT_EQ(s.run_delta_ns, 600u * kMs);
  EXPECT_EQ(s.wait_delta_ns, 300u * kMs);
  EXPECT_DOUBLE_EQ(s.run_fraction, 0.6);
  EXPECT_DOUBLE_EQ(s.steal_fraction, 0.3);
  EXPECT_TRUE(s.run_progress);
  EXPECT_EQ(s.time_in_state_ns, 2 * kSec);
  EXPECT_EQ(s.no_progress_ns, 0);
  EXPECT_TRUE(s.has_schedstat);
}

TEST(Signals, WindowCoversOnlyTheLastSecond) {
  Feed f;
  // Waiting for a CPU for the first second, then never: the 1 s window shows no steal, 2 s half.
  for (int i = 0; i <= 20; ++i) {
    uint64_t wait = i <= 10 ? i * 100 : 1000;
    f.push(at(i * 100, 'R', 0, wait, i == 0 ? ThreadSample::kFirst : 0));
  }
  EXPECT_DOUBLE_EQ(derive_signals(f.ring, f.tracker, kSec).steal_fraction, 0.0);
  EXPECT_DOUBLE_EQ(derive_signals(f.ring, f.tracker, 2 * kSec).steal_fraction, 0.5);
  // A window longer than the history uses what there is.
  ThreadSignals s = derive_signals(f.ring, f.tracker, 60 * kSec);
  EXPECT_EQ(s.window_ns, 2 * kSec);
  // A window shorter than one sample interval still uses the last interval.
  s = derive_signals(f.ring, f.tracker, 10 * kMs);
  EXPECT_EQ(s.window_ns, 100 * kMs);
}

TEST(Signals, UnevenSamplesUseTheNewestSampleAtOrBeforeTheWindowStart) {
  Feed f;
  f.push(at(0, 'R', 0, 0, ThreadSample::kFirst));
  f.push(at(150, 'R', 100, 0));
  f.push(at(1300, 'R', 900, 0));
  // Window start is 300 ms: the sample at 150 ms is the base, so the window is 1150 ms.
  ThreadSignals s = derive_signals(f.ring, f.tracker, kSec);
  ASSERT_TRUE(s.valid);
  EXPECT_EQ(s.window_ns, 1150 * kMs);
  EXPECT_EQ(s.run_delta_ns, 800u * kMs);
}

TEST(Signals, BlockedThreadWithoutRunProgress) {
  Feed f;
  // Running until 1.0 s, then frozen in D: run_ns stops at 500 ms.
  for (int i = 0; i <= 10; ++i) f.push(at(i * 100, 'S', i * 50, 0, i == 0 ? ThreadSample::kFirst : 0));
  for (int i = 11; i <= 17; ++i) f.push(at(i * 100, 'D', 500, 0));
  ThreadSignals s = derive_signals(f.ring, f.tracker, kSec);
  ASSERT_TRUE(s.valid);
  EXPECT_EQ(s.state, 'D');
  EXPECT_EQ(s.time_in_state_ns, 600 * kMs);  // first seen in D at 1.1 s, now 1.7 s
  EXPECT_EQ(s.no_progress_ns, 700 * kMs);    // last growth seen at 1.0 s
  EXPECT_TRUE(s.run_progress);               // the window still includes 0.7..1.0 s
  ThreadSignals short_window = derive_signals(f.ring, f.tracker, 500 * kMs);
  EXPECT_FALSE(short_window.run_progress);
  EXPECT_EQ(short_window.run_delta_ns, 0u);
  EXPECT_DOUBLE_EQ(short_window.run_fraction, 0.0);
}

TEST(Signals, StateChangeResetsTimeInState) {
  Feed f;
  f.push(at(0, 'D', 0, 0, ThreadSample::kFirst));
  f.push(at(100, 'D', 0, 0));
  f.push(at(200, 'R', 10, 0));
  f.push(at(300, 'D', 10, 0));
  ThreadSignals s = derive_signals(f.ring, f.tracker, kSec);
  EXPECT_EQ(s.state, 'D');
  EXPECT_EQ(s.time_in_state_ns, 0);
  EXPECT_EQ(s.no_progress_ns, 100 * kMs);
}

TEST(Signals, RestartedThreadIsNotDifferencedAcross) {
  Feed f;
  f.push(at(0, 'R', 5000, 5000, ThreadSample::kFirst));
  f.push(at(500, 'R', 5400, 5000));
  // New thread under the same vCPU (tid changed): its counters start near zero.
  f.push(at(600, 'S', 10, 20, ThreadSample::kFirst));
  f.push(at(1000, 'S', 30, 60));
  ThreadSignals s = derive_signals(f.ring, f.tracker, kSec);
  ASSERT_TRUE(s.valid);
  EXPECT_EQ(s.window_ns, 400 * kMs);
  EXPECT_EQ(s.run_delta_ns, 20u * kMs);
  EXPECT_EQ(s.wait_delta_ns, 40u * kMs);
  EXPECT_EQ(s.time_in_state_ns, 400 * kMs);
}

TEST(Signals, CountersThatGoBackwardsGiveZeroNotHuge) {
  Feed f;
  f.push(at(0, 'R', 900, 900, ThreadSample::kFirst));
  f.push(at(1000, 'R', 100, 100));
  ThreadSignals s = derive_signals(f.ring, f.tracker, kSec);
  EXPECT_EQ(s.run_delta_ns, 0u);
  EXPECT_EQ(s.wait_delta_ns, 0u);
}

TEST(Signals, ThrottlingAndWrappingCounters) {
  Feed f;
  ThreadSample a = at(0, 'R', 0, 0, ThreadSample::kFirst | ThreadSample::kHasCgroup);
  a.nr_throttled = 0xFFFFFFF0u;  // about to wrap in its 32-bit slot
  a.throttled_ns = 7 * kSec;
  a.involuntary_switches = 0xFFFFFFFFu;
  ThreadSample b = at(1000, 'R', 200, 700, ThreadSample::kHasCgroup);
  b.nr_throttled = 0x10u;
  b.throttled_ns = 7 * kSec + 650 * kMs;
  b.involuntary_switches = 9;
  f.push(a);
  f.push(b);
  ThreadSignals s = derive_signals(f.ring, f.tracker, kSec);
  ASSERT_TRUE(s.has_cgroup);
  EXPECT_TRUE(s.throttled);
  EXPECT_EQ(s.nr_throttled_delta, 0x20u);
  EXPECT_EQ(s.throttled_delta_ns, 650u * kMs);
  EXPECT_EQ(s.involuntary_switches_delta, 10u);
  EXPECT_DOUBLE_EQ(s.steal_fraction, 0.7);
}

TEST(Signals, NoCgroupMeansNoThrottlingClaim) {
  Feed f;
  f.push(at(0, 'R', 0, 0, ThreadSample::kFirst));
  f.push(at(1000, 'R', 0, 900));
  ThreadSignals s = derive_signals(f.ring, f.tracker, kSec);
  EXPECT_FALSE(s.has_cgroup);
  EXPECT_FALSE(s.throttled);
  EXPECT_DOUBLE_EQ(s.steal_fraction, 0.9);
}

TEST(Signals, CgroupMoveRestartsThrottlingBaseline) {
  Feed f;
  ThreadSample a = at(0, 'R', 0, 0, ThreadSample::kFirst | ThreadSample::kHasCgroup);
  a.throttled_ns = 50 * kSec;  // the old cgroup's total
  a.nr_throttled = 5000;
  ThreadSample b = at(500, 'R', 0, 0, ThreadSample::kHasCgroup | ThreadSample::kCgroupChanged);
  b.throttled_ns = 0;
  b.nr_throttled = 0;
  ThreadSample c = at(1000, 'R', 0, 0, ThreadSample::kHasCgroup);
  c.throttled_ns = 200 * kMs;
  c.nr_throttled = 3;
  f.push(a);
  f.push(b);
  f.push(c);
  ThreadSignals s = derive_signals(f.ring, f.tracker, kSec);
  EXPECT_EQ(s.window_ns, kSec);  // run/steal still use the whole window
  EXPECT_EQ(s.throttled_delta_ns, 200u * kMs);
  EXPECT_EQ(s.nr_throttled_delta, 3u);
}

}  // namespace
}  // namespace stallmon::host
