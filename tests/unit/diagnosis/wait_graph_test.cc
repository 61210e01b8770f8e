// SPDX-License-Identifier: Apache-2.0
#include "stallmon/diagnosis/wait_graph.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace stallmon::diagnosis {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

TEST(WaitGraph, NoEdgesNoRoots) { EXPECT_THAT(find_wait_roots({}), IsEmpty()); }

TEST(WaitGraph, SeedCase1OneWaiterOneRoot) {
  // CPU0 waits on CPU2's csd (do_sync_core).
  auto roots = find_wait_roots({{0, 2}});
  ASSERT_EQ(roots.size(), 1u);
  EXPECT_THAT(roots[0].roots, ElementsAre(2));
  EXPECT_FALSE(roots[0].cycle);
  EXPECT_THAT(roots[0].waiters, ElementsAre(0));
  EXPECT_THAT(roots[0].direct_waiters, ElementsAre(0));
}

TEST(WaitGraph, SeedCase4ManyWaitersOneRoot) {
  // Every CPU that tried a TLB shootdown waits on CPU5, which has interrupts off.
  auto roots = find_wait_roots({{0, 5}, {1, 5}, {2, 5}, {3, 5}, {4, 5}, {6, 5}, {7, 5}});
  ASSERT_EQ(roots.size(), 1u);
  EXPECT_THAT(roots[0].roots, ElementsAre(5));
  EXPECT_THAT(roots[0].waiters, ElementsAre(0, 1, 2, 3, 4, 6, 7));
}

TEST(WaitGraph, ChainIsFollowedToItsEnd) {
  // Seed case 2: CPU19 waits on CPU3, which waits on CPU18 (IRQs off).
  auto roots = find_wait_roots({{19, 3}, {3, 18}});
  ASSERT_EQ(roots.size(), 1u);
  EXPECT_THAT(roots[0].roots, ElementsAre(18));
  EXPECT_THAT(roots[0].waiters, ElementsAre(3, 19));
  EXPECT_THAT(roots[0].direct_waiters, ElementsAre(3));
}

TEST(WaitGraph, CycleIsOneRootWithAllItsMembers) {
  auto roots = find_wait_roots({{1, 2}, {2, 1}, {0, 1}, {3, 0}});
  ASSERT_EQ(roots.size(), 1u);
  EXPECT_THAT(roots[0].roots, ElementsAre(1, 2));
  EXPECT_TRUE(roots[0].cycle);
  EXPECT_THAT(roots[0].waiters, ElementsAre(0, 3));
  EXPECT_THAT(roots[0].direct_waiters, ElementsAre(0));
}

TEST(WaitGraph, CycleThatLeadsOutIsNotARoot) {
  // 1 <-> 2, but 2 also waits on 3: everyone ends at 3.
  auto roots = find_wait_roots({{1, 2}, {2, 1}, {2, 3}});
  ASSERT_EQ(roots.size(), 1u);
  EXPECT_THAT(roots[0].roots, ElementsAre(3));
  EXPECT_THAT(roots[0].waiters, ElementsAre(1, 2));
}

TEST(WaitGraph, TwoRootsAndAWaiterOnBoth) {
  auto roots = find_wait_roots({{0, 2}, {0, 3}, {1, 3}});
  ASSERT_EQ(roots.size(), 2u);
  EXPECT_THAT(roots[0].roots, ElementsAre(2));
  EXPECT_THAT(roots[0].waiters, ElementsAre(0));
  EXPECT_THAT(roots[1].roots, ElementsAre(3));
  EXPECT_THAT(roots[1].waiters, ElementsAre(0, 1));
}

TEST(WaitGraph, SelfEdgesAndDuplicatesAreHarmless) {
  auto roots = find_wait_roots({{4, 4}, {0, 1}, {0, 1}});
  ASSERT_EQ(roots.size(), 1u);
  EXPECT_THAT(roots[0].roots, ElementsAre(1));
  EXPECT_THAT(roots[0].waiters, ElementsAre(0));
}

TEST(WaitGraph, HostileCpuNumbersAreNotIndexes) {
  auto roots = find_wait_roots({{-7, 1 << 30}});
  ASSERT_EQ(roots.size(), 1u);
  EXPECT_THAT(roots[0].roots, ElementsAre(1 << 30));
}

}  // namespace
}  // namespace stallmon::diagnosis
