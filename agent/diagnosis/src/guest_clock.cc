// SPDX-License-Identifier: Apache-2.0
#include "guest_clock.h"

#include <algorithm>

namespace stallmon::diagnosis {

void GuestClockMap::observe(Timestamp host, uint64_t guest_ns) {
  if (guest_ns == 0) return;
  if (!points_.empty() && guest_ns < points_.back().guest_ns) points_.clear();
  if (!points_.empty() && host < points_.back().host) return;  // out of order: keep the map monotonic
  // The newest point is always the latest snapshot; the ones before it are kMinSpacing apart.
  if (points_.size() >= 2 && host - points_[points_.size() - 2].host < kMinSpacing) {
    points_.back() = {host, guest_ns};
    return;
  }
  points_.push_back({host, guest_ns});
  if (points_.size() > kMaxPoints) points_.pop_front();
}

Timestamp GuestClockMap::to_host(uint64_t guest_ns) const {
  if (points_.empty()) return Timestamp{};
  const Point& first = points_.front();
  if (guest_ns < first.guest_ns) return first.host - Duration(static_cast<Duration::rep>(first.guest_ns - guest_ns));
  const Point& last = points_.back();
  if (guest_ns >= last.guest_ns) return last.host;
  // The first point past guest_ns, and the one before it (guest_ns is within [front, back)).
  auto hi = std::upper_bound(points_.begin(), points_.end(), guest_ns,
                             [](uint64_t g, const Point& p) { return g < p.guest_ns; });
  const Point& b = *hi;
  const Point& a = *(hi - 1);
  const double frac = static_cast<double>(guest_ns - a.guest_ns) / static_cast<double>(b.guest_ns - a.guest_ns);
  return a.host + Duration(static_cast<Duration::rep>(frac * static_cast<double>((b.host - a.host).count())));
}

}  // namespace stallmon::diagnosis
