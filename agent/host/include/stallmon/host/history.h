// SPDX-License-Identifier: Apache-2.0
// Per-thread samples, the bounded history ring that keeps them, and the signals derived from a
// window of that history.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace stallmon::host {

// One sample of one thread: 56 bytes as a value; a SampleRing keeps it in ~6-16 bytes.
//
// Counters that only matter as differences over seconds (timeslices, context switches,
// nr_throttled, CPU ticks) are stored truncated to 32 bits and differenced modulo 2^32: no
// realistic rate wraps them between two samples of one window.
struct ThreadSample {
  enum Flags : uint8_t {
    kHasSchedstat = 1 << 0,  // run_ns/wait_ns/timeslices came from schedstat
    kHasStatus = 1 << 1,     // context switches were read this sample (else carried over)
    kHasCgroup = 1 << 2,     // the thread has its own cgroup and throttling fields are valid
    kTraced = 1 << 3,        // TracerPid != 0
    kFirst = 1 << 4,         // first sample of this thread (or after tid reuse): no delta to
                             // the sample before it
    kCgroupChanged = 1 << 5, // the thread moved to another cgroup: throttling counters restart
    kStateInferred = 1 << 6, // stat was skipped (skip_stat_while_running): state 'R' means "ran
                             // since the previous sample"; cpu and cpu_ticks are carried over
  };
  int64_t t_ns = 0;         // monotonic time of the read
  uint64_t run_ns = 0;      // schedstat: on-CPU time
  uint64_t wait_ns = 0;     // schedstat: runnable but waiting for a CPU (run delay)
  uint64_t throttled_ns = 0;  // cgroup cpu.stat throttled time
  uint32_t cpu_ticks = 0;   // utime + stime, clock ticks (mod 2^32)
  uint32_t timeslices = 0;  // schedstat (mod 2^32)
  uint32_t voluntary_switches = 0;    // mod 2^32
  uint32_t involuntary_switches = 0;  // mod 2^32
  uint32_t nr_throttled = 0;          // mod 2^32
  int16_t cpu = -1;         // host CPU it last ran on
  char state = '?';         // /proc state letter
  uint8_t flags = 0;
};
static_assert(sizeof(ThreadSample) == 56, "keep the history compact");

// One tier of a SampleRing: samples in blocks of up to `block` samples, each block its first
// sample in full and the others as field-wise differences to the sample before them (a bit mask
// of the fields that changed, then each change as a zigzag varint). Lossless. An idle vCPU's
// sample is ~6 bytes, a busy one's ~16, instead of 56 (sizeof(ThreadSample)).
//
// The oldest block is dropped whole once the newer ones hold `capacity` samples, so a tier holds
// between `capacity` and `capacity + block - 1` samples (once it has seen that many). Reading a
// sample decodes its whole block; a one-block cache per thread makes walks over a window (what
// derive_signals and history queries do) decode each block once.
class SampleTier {
 public:
  static constexpr size_t kMaxBlock = 32;

  SampleTier(size_t capacity, size_t block);
  SampleTier(SampleTier&&) noexcept = default;
  SampleTier& operator=(SampleTier&&) noexcept = default;

  // Appends `s`; the samples of a dropped block are appended to `evicted` (oldest first), if given.
  void push(const ThreadSample& s, std::vector<ThreadSample>* evicted);
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  ThreadSample at(size_t i) const;  // i < size(), 0 the oldest
  const ThreadSample& newest() const { return last_; }  // precondition: size() > 0
  void clear();
  size_t memory_bytes() const;

 private:
  struct Block {
    ThreadSample first;
    std::vector<uint8_t> deltas;  // count - 1 encoded differences
    uint32_t count = 0;
    uint64_t uid = 0;  // unique over the process: keys the decode cache
  };
  const Block& block(size_t i) const { return blocks_[(head_ + i) % blocks_.size()]; }
  Block& block(size_t i) { return blocks_[(head_ + i) % blocks_.size()]; }
  Block& open_block();

  // A circular buffer of blocks_.size() slots, live ones from head_ (oldest) on. It grows to the
  // most blocks ever live, at most capacity / block + 2, and then reuses the slots.
  std::vector<Block> blocks_;
  size_t head_ = 0, live_ = 0;
  ThreadSample last_;  // the newest sample: the base of the next difference
  size_t capacity_;
  size_t block_;
  size_t size_ = 0;
  size_t deltas_bytes_ = 0;  // the blocks' delta buffers (their capacities)
};

// A bounded history of samples, oldest first, in two tiers: the newest `fine_capacity` samples
// at full rate, and before them up to `coarse_capacity` older samples thinned to at most one per
// `coarse_interval_ns`. Rules look at the last seconds (full rate); an operator looking at
// minutes of history needs a point per second, not ten: 1 min at 10 Hz + 9 min at 1 Hz is 1,140
// samples instead of 6,000. Both tiers are compact (SampleTier): 17-28 KB per vCPU for those
// 1,140 samples (idle to busy) instead of 64 KB. A sample that starts a thread (kFirst) or a cgroup
// (kCgroupChanged) is always kept when thinning, so deltas across the older part never span a
// restart unseen; short state flips in the thinned part are not kept. Each tier may hold up to
// one block (SampleTier::kMaxBlock) more than its capacity; memory grows with the samples held
// (memory_bytes), bounded by the capacities.
class SampleRing {
 public:
  // A fine capacity below 2 is raised to 2: a delta needs two samples. coarse_capacity 0: one
  // tier, the newest fine_capacity samples.
  explicit SampleRing(size_t fine_capacity = 2, size_t coarse_capacity = 0,
                      int64_t coarse_interval_ns = 1'000'000'000);

  void push(const ThreadSample& s);
  size_t size() const { return coarse_.size() + fine_.size(); }
  // The newest samples always kept (the tiers' capacities); size() may exceed it by a block per tier.
  size_t capacity() const { return fine_.capacity() + coarse_.capacity(); }
  bool empty() const { return size() == 0; }
  // i = 0 is the oldest kept sample, size() - 1 the newest. Precondition: i < size().
  ThreadSample at(size_t i) const { return i < coarse_.size() ? coarse_.at(i) : fine_.at(i - coarse_.size()); }
  const ThreadSample& newest() const { return fine_.newest(); }
  void clear() {
    fine_.clear();
    coarse_.clear();
  }
  size_t memory_bytes() const { return sizeof(*this) + fine_.memory_bytes() + coarse_.memory_bytes(); }

 private:
  SampleTier fine_, coarse_;
  int64_t coarse_interval_ns_;
};

// What cannot be recovered from a window of the ring: how long the thread has been in its state
// and without run progress. Updated with every sample (see StateTracker::observe).
struct StateTracker {
  char state = '?';
  int64_t state_since_ns = 0;     // time of the first sample seen in the current state
  int64_t last_progress_ns = 0;   // time of the last sample whose run_ns grew (or the first)
  uint64_t last_run_ns = 0;
  bool started = false;

  void observe(const ThreadSample& s);
};

// Signals over a window ending at the newest sample. Durations are lower bounds measured
// between samples: a state change between two samples is dated at the later one.
struct ThreadSignals {
  bool valid = false;        // false until two samples of the same thread span some time
  int64_t window_ns = 0;     // the wall time actually covered (<= the requested window)
  int64_t end_ns = 0;        // time of the newest sample
  char state = '?';          // state at the newest sample
  int64_t time_in_state_ns = 0;      // continuously in `state` for at least this long
  int64_t no_progress_ns = 0;        // run_ns has not grown for at least this long
  uint64_t run_delta_ns = 0;         // Δrun_ns over the window
  uint64_t wait_delta_ns = 0;        // Δwait_ns over the window (run delay)
  bool run_progress = false;         // run_delta_ns > 0
  double run_fraction = 0;           // Δrun_ns / window
  double steal_fraction = 0;         // Δwait_ns / window: the run-delay rate
  uint32_t involuntary_switches_delta = 0;
  uint32_t voluntary_switches_delta = 0;
  bool has_cgroup = false;
  uint64_t throttled_delta_ns = 0;
  uint32_t nr_throttled_delta = 0;
  bool throttled = false;            // nr_throttled or throttled time grew in the window
  bool has_schedstat = false;
};

// Derives the signals for the window (newest.t_ns - window_ns, newest.t_ns]. The base sample is
// the newest one at or before the window start, or the oldest after a restart (kFirst) or in the
// ring, so the window covered can be shorter than asked.
ThreadSignals derive_signals(const SampleRing& ring, const StateTracker& tracker,
                             int64_t window_ns);

}  // namespace stallmon::host
