// SPDX-License-Identifier: Apache-2.0
#include "process_limits.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

namespace stallmon::daemon {
namespace {

// systemd's default soft limit (1024) is raised to the hard one; a second call changes nothing.
TEST(OpenFilesLimit, SoftLimitIsRaisedToTheHardOne) {
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  if (saved.rlim_max != RLIM_INFINITY && saved.rlim_max <= 64) GTEST_SKIP() << "hard limit too low to lower";
  rlimit low = saved;
  low.rlim_cur = 64;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  auto r = raise_open_files_limit();
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->soft_before, 64u);
  EXPECT_EQ(r->hard, saved.rlim_max);
  EXPECT_EQ(r->soft, saved.rlim_max);
  rlimit now{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &now), 0);
  EXPECT_EQ(now.rlim_cur, saved.rlim_max);
  auto again = raise_open_files_limit();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->soft_before, again->soft);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
}

}  // namespace
}  // namespace stallmon::daemon
