// SPDX-License-Identifier: Apache-2.0
// GuestClockMap: guest clock values placed on the host's time line through snapshot pairs.
#include "guest_clock.h"

#include <gtest/gtest.h>

namespace stallmon::diagnosis {
namespace {

using namespace std::chrono_literals;

const Timestamp kT0 = Timestamp{} + 1000s;

TEST(GuestClockMap, InterpolatesALaggingClockBetweenSnapshots) {
  GuestClockMap m;
  // The guest clock runs at 0.8x the host's: 80 ms of guest time per 100 ms snapshot.
  for (int i = 0; i <= 100; ++i) m.observe(kT0 + i * 100ms, 50'000'000'000ull + i * 80'000'000ull);
  // Guest 50 s + 4 s was read 5 host seconds after kT0 (not 4).
  EXPECT_EQ(m.to_host(54'000'000'000ull), kT0 + 5s);
  EXPECT_EQ(m.to_host(54'040'000'000ull), kT0 + 5050ms) << "between two kept points";
  // Past the newest point: the newest snapshot's time. Before the oldest: the host's pace.
  EXPECT_EQ(m.to_host(99'000'000'000ull), kT0 + 10s);
  EXPECT_EQ(m.to_host(49'000'000'000ull), kT0 - 1s);
}

TEST(GuestClockMap, AStandingClockMapsToTheLastSnapshotThatReadIt) {
  GuestClockMap m;
  m.observe(kT0, 10'000'000'000ull);
  m.observe(kT0 + 1s, 11'000'000'000ull);
  m.observe(kT0 + 2s, 11'000'000'000ull);  // paused: the guest clock stood still for 3 s
  m.observe(kT0 + 4s, 11'000'000'000ull);
  m.observe(kT0 + 5s, 12'000'000'000ull);
  EXPECT_EQ(m.to_host(11'000'000'000ull), kT0 + 4s);
  EXPECT_EQ(m.to_host(11'500'000'000ull), kT0 + 4500ms);
}

TEST(GuestClockMap, AClockThatGoesBackStartsAgainAndZeroIsIgnored) {
  GuestClockMap m;
  m.observe(kT0, 500'000'000'000ull);
  m.observe(kT0 + 1s, 501'000'000'000ull);
  m.observe(kT0 + 2s, 0);  // not read
  EXPECT_EQ(m.to_host(501'000'000'000ull), kT0 + 1s);
  m.observe(kT0 + 3s, 2'000'000'000ull);  // a new boot
  m.observe(kT0 + 4s, 3'000'000'000ull);
  EXPECT_EQ(m.to_host(2'500'000'000ull), kT0 + 3500ms);
  EXPECT_EQ(m.to_host(1'000'000'000ull), kT0 + 2s) << "before the new boot's first point: the host's pace";
}

TEST(GuestClockMap, KeepsABoundedNumberOfPointsCoveringMinutes) {
  GuestClockMap m;
  // One hour of snapshots at 10 Hz, guest at the host's pace.
  for (int i = 0; i < 36'000; ++i) m.observe(kT0 + i * 100ms, 1'000'000'000ull + i * 100'000'000ull);
  const Timestamp newest = kT0 + 35'999 * 100ms;
  // The last 250 s are interpolated (1024 points, 250 ms apart), not extrapolated.
  EXPECT_EQ(m.to_host(1'000'000'000ull + 35'999 * 100'000'000ull - 200'000'000'000ull), newest - 200s);
}

}  // namespace
}  // namespace stallmon::diagnosis
