// SPDX-License-Identifier: Apache-2.0
// Monotonic time behind an interface, so signal derivation and rate limits run on simulated time
// in tests.
#pragma once

#include <cstdint>

namespace stallmon::host {

class Clock {
 public:
  virtual ~Clock() = default;
  // Nanoseconds on a monotonic clock; only differences are meaningful.
  virtual int64_t now_ns() = 0;
};

// CLOCK_MONOTONIC: the same clock the kernel's schedstat counters advance against.
class MonotonicClock final : public Clock {
 public:
  int64_t now_ns() override;
};

// Time that moves only when told to.
class SimulatedClock final : public Clock {
 public:
  explicit SimulatedClock(int64_t start_ns = 1'000'000'000) : now_(start_ns) {}
  int64_t now_ns() override { return now_; }
  void advance_ns(int64_t d) { now_ += d; }
  void set_ns(int64_t t) { now_ = t; }

 private:
  int64_t now_;
};

}  // namespace stallmon::host
