// SPDX-License-Identifier: Apache-2.0
#include "stallmon/libvirt/backoff.h"

#include <gtest/gtest.h>

namespace stallmon::libvirt {
namespace {

using namespace std::chrono_literals;
using Clock = ReconnectBackoff::Clock;

BackoffPolicy no_jitter() {
  BackoffPolicy p;
  p.initial = 250ms;
  p.max = 4000ms;
  p.multiplier = 2.0;
  p.jitter = 0;
  return p;
}

TEST(ReconnectBackoff, FirstAttemptIsDueAtOnce) {
  ReconnectBackoff b(no_jitter());
  EXPECT_EQ(b.state(), ReconnectBackoff::State::kDisconnected);
  EXPECT_TRUE(b.attempt_due(Clock::now()));
}

TEST(ReconnectBackoff, GrowsExponentiallyUpToTheCap) {
  ReconnectBackoff b(no_jitter());
  auto t = Clock::now();
  std::vector<long> delays;
  for (int i = 0; i < 8; ++i) {
    b.on_attempt_failed(t);
    delays.push_back(static_cast<long>(b.last_delay().count()));
    EXPECT_FALSE(b.attempt_due(t));
    EXPECT_FALSE(b.attempt_due(t + b.last_delay() - 1ms));
    EXPECT_TRUE(b.attempt_due(t + b.last_delay()));
    EXPECT_EQ(b.failures(), static_cast<uint64_t>(i + 1));
  }
  EXPECT_EQ(delays, (std::vector<long>{500, 1000, 2000, 4000, 4000, 4000, 4000, 4000}));
}

TEST(ReconnectBackoff, LostConnectionRetriesAfterInitialThenGrows) {
  ReconnectBackoff b(no_jitter());
  auto t = Clock::now();
  b.on_connected();
  EXPECT_EQ(b.state(), ReconnectBackoff::State::kConnected);
  EXPECT_FALSE(b.attempt_due(t + 1h));  // connected: nothing to do

  b.on_lost(t);  // libvirtd went away
  EXPECT_EQ(b.state(), ReconnectBackoff::State::kDisconnected);
  EXPECT_EQ(b.last_delay(), 250ms);
  EXPECT_FALSE(b.attempt_due(t + 249ms));
  EXPECT_TRUE(b.attempt_due(t + 250ms));

  b.on_attempt_failed(t + 250ms);  // still restarting
  EXPECT_EQ(b.last_delay(), 500ms);
  b.on_attempt_failed(t + 750ms);
  EXPECT_EQ(b.last_delay(), 1000ms);

  b.on_connected();  // back: the next loss starts over
  EXPECT_EQ(b.failures(), 0u);
  b.on_lost(t + 2s);
  EXPECT_EQ(b.last_delay(), 250ms);
}

TEST(ReconnectBackoff, JitterStaysWithinBoundsAndIsDeterministicPerSeed) {
  BackoffPolicy p = no_jitter();
  p.jitter = 0.1;
  p.max = 1000ms;
  ReconnectBackoff a(p, 7), b(p, 7);
  auto t = Clock::now();
  for (int i = 0; i < 50; ++i) {
    a.on_attempt_failed(t);
    b.on_attempt_failed(t);
    EXPECT_EQ(a.last_delay(), b.last_delay());
    if (i >= 3) {  // at the cap
      EXPECT_GE(a.last_delay(), 900ms);
      EXPECT_LE(a.last_delay(), 1100ms);
    }
  }
}

TEST(ReconnectBackoff, SanitizesPolicy) {
  BackoffPolicy p;
  p.initial = 0ms;
  p.max = 0ms;
  p.multiplier = 0.5;
  p.jitter = 7;
  ReconnectBackoff b(p);
  auto t = Clock::now();
  for (int i = 0; i < 100; ++i) b.on_attempt_failed(t);  // no overflow, no zero delay
  EXPECT_GE(b.last_delay(), 1ms);
  EXPECT_LE(b.last_delay(), 2ms);
}

}  // namespace
}  // namespace stallmon::libvirt
