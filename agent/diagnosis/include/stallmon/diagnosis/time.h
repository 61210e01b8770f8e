// SPDX-License-Identifier: Apache-2.0
// Time for the diagnosis engine. Every rule reads "now" from an injected Clock, so the rules are
// tested with simulated time (ManualClock) and never sleep.
#pragma once

#include <chrono>
#include <string>

namespace stallmon::diagnosis {

using Duration = std::chrono::nanoseconds;
// Wall-clock nanoseconds since the Unix epoch (maps 1:1 onto google.protobuf.Timestamp).
// The daemon should give the engine a clock that does not jump (wall time at start plus
// steady-clock elapsed): every age and window is a difference of two of these.
using Timestamp = std::chrono::time_point<std::chrono::system_clock, Duration>;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual Timestamp now() const = 0;
};

// The real clock: wall time at construction plus steady_clock elapsed since, so that NTP steps
// never make a stall look shorter or longer than it is.
class SteadyWallClock final : public Clock {
 public:
  SteadyWallClock();
  Timestamp now() const override;

 private:
  Timestamp wall_at_start_;
  std::chrono::steady_clock::time_point steady_at_start_;
};

// Simulated time for tests and replays: stands still until advanced.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(Timestamp start = Timestamp(std::chrono::seconds(1'700'000'000))) : now_(start) {}
  Timestamp now() const override { return now_; }
  void advance(Duration d) { now_ += d; }
  void set(Timestamp t) { now_ = t; }

 private:
  Timestamp now_;
};

// "850 ms", "1.4 s", "26 s", "3 min 20 s": the precision an operator reads a stall with.
std::string format_duration(Duration d);

}  // namespace stallmon::diagnosis
