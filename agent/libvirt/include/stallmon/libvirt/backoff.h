// SPDX-License-Identifier: Apache-2.0
// When to try connecting to libvirtd again. libvirtd restarts take a few hundred milliseconds to a
// few seconds; a dead libvirtd may stay dead for hours. Retrying with exponential backoff (capped,
// with a little jitter so that several agents do not reconnect in lockstep) finds a restarted
// daemon quickly without spinning on a dead one. Pure logic on an injected clock: unit-tested.
#pragma once

#include <chrono>
#include <cstdint>
#include <random>

namespace stallmon::libvirt {

struct BackoffPolicy {
  std::chrono::milliseconds initial{250};  // delay after the first failure / a lost connection
  std::chrono::milliseconds max{10'000};   // cap
  double multiplier = 2.0;                 // growth per consecutive failure
  double jitter = 0.1;                     // +- fraction applied to every delay (0 = none)
};

class ReconnectBackoff {
 public:
  using Clock = std::chrono::steady_clock;
  enum class State {
    kDisconnected,  // never connected, or lost: an attempt is due at next_attempt()
    kConnected,
  };

  explicit ReconnectBackoff(BackoffPolicy policy = {}, uint32_t seed = 1);

  // The connection went down (close callback, keepalive timeout). The first retry comes after
  // policy.initial, so a libvirtd that is restarting has a moment to come back.
  void on_lost(Clock::time_point now);
  // A connect attempt failed: the next one is scheduled with a longer delay.
  void on_attempt_failed(Clock::time_point now);
  // Connected: the delays start over.
  void on_connected();

  State state() const { return state_; }
  bool attempt_due(Clock::time_point now) const { return state_ == State::kDisconnected && now >= next_; }
  Clock::time_point next_attempt() const { return next_; }
  // Consecutive failed attempts since the last successful connect.
  uint64_t failures() const { return failures_; }
  // The delay that was applied last (for logs).
  std::chrono::milliseconds last_delay() const { return last_delay_; }

 private:
  std::chrono::milliseconds delay_for(uint64_t failures);

  BackoffPolicy policy_;
  std::minstd_rand rng_;
  State state_ = State::kDisconnected;
  Clock::time_point next_{};  // epoch: the very first attempt is due at once
  uint64_t failures_ = 0;
  std::chrono::milliseconds last_delay_{0};
};

}  // namespace stallmon::libvirt
