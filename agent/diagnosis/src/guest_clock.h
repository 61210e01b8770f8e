// SPDX-License-Identifier: Apache-2.0
// Guest time to host time. The guest's clocks need not run at the host's pace (a TCG guest's
// clock was measured lagging ~10%, a paused or starved guest's stands still), so a guest age
// ("touched N guest seconds ago") is placed on the host's time line through the pairs
// (host time, guest running clock) of the snapshots that read it, never by subtracting guest
// nanoseconds from host time.
#pragma once

#include <cstdint>
#include <deque>

#include "stallmon/diagnosis/time.h"

namespace stallmon::diagnosis {

class GuestClockMap {
 public:
  // Points closer than this to the previous one are not kept, so that kMaxPoints cover minutes
  // (the longest soft-lockup limit is 2 x 60 s) at any snapshot rate.
  static constexpr Duration kMinSpacing = std::chrono::milliseconds(250);
  static constexpr size_t kMaxPoints = 1024;

  // A snapshot taken at host time `host` read the guest clock as `guest_ns`. A clock that went
  // back (a new boot) starts the map again; a clock of 0 (not read) is ignored.
  void observe(Timestamp host, uint64_t guest_ns);
  // When the guest clock read `guest_ns`, in host time: interpolated between the snapshots
  // around it; before the oldest point, extrapolated from it at the host's pace (nothing better
  // is known); at or after the newest, the newest point's host time (the guest clock never
  // showed more while we watched).
  Timestamp to_host(uint64_t guest_ns) const;
  bool empty() const { return points_.empty(); }

 private:
  struct Point {
    Timestamp host;
    uint64_t guest_ns;
  };
  std::deque<Point> points_;
};

}  // namespace stallmon::diagnosis
