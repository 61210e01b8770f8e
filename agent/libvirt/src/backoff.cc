// SPDX-License-Identifier: Apache-2.0
#include "stallmon/libvirt/backoff.h"

#include <algorithm>
#include <cmath>

namespace stallmon::libvirt {

ReconnectBackoff::ReconnectBackoff(BackoffPolicy policy, uint32_t seed) : policy_(policy), rng_(seed) {
  if (policy_.initial.count() < 1) policy_.initial = std::chrono::milliseconds(1);
  if (policy_.max < policy_.initial) policy_.max = policy_.initial;
  if (!(policy_.multiplier >= 1.0)) policy_.multiplier = 1.0;
  policy_.jitter = std::clamp(policy_.jitter, 0.0, 0.5);
}

std::chrono::milliseconds ReconnectBackoff::delay_for(uint64_t failures) {
  // failures >= 1 here; the exponent is capped so that the double never overflows.
  double base = static_cast<double>(policy_.initial.count()) *
                std::pow(policy_.multiplier, static_cast<double>(std::min<uint64_t>(failures - 1, 60)));
  base = std::min(base, static_cast<double>(policy_.max.count()));
  if (policy_.jitter > 0) {
    std::uniform_real_distribution<double> dist(-policy_.jitter, policy_.jitter);
    base *= 1.0 + dist(rng_);
  }
  auto ms = static_cast<int64_t>(std::llround(base));
  return std::chrono::milliseconds(std::max<int64_t>(ms, 1));
}

void ReconnectBackoff::on_lost(Clock::time_point now) {
  state_ = State::kDisconnected;
  failures_ = 0;
  last_delay_ = delay_for(1);
  next_ = now + last_delay_;
}

void ReconnectBackoff::on_attempt_failed(Clock::time_point now) {
  state_ = State::kDisconnected;
  ++failures_;
  // After a loss the first retry already waited `initial`; grow from there.
  last_delay_ = delay_for(failures_ + 1);
  next_ = now + last_delay_;
}

void ReconnectBackoff::on_connected() {
  state_ = State::kConnected;
  failures_ = 0;
  last_delay_ = std::chrono::milliseconds(0);
}

}  // namespace stallmon::libvirt
