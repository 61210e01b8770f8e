// SPDX-License-Identifier: Apache-2.0
#include "stallmon/base/result.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace stallmon {
namespace {

Result<int> parse_positive(int v) {
  if (v <= 0) return Error(ErrorCode::kInvalidArgument, "not positive");
  return v;
}

Result<int> doubled(int v) {
  STALLMON_TRY(int x, parse_positive(v));
  return 2 * x;
}

Result<void> check(int v) {
  STALLMON_TRY_VOID(doubled(v));
  return Ok();
}

TEST(ResultTest, ValuePropagates) {
  auto r = doubled(21);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 42);
}

TEST(ResultTest, ErrorPropagatesThroughTry) {
  auto r = doubled(-1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(check(0).ok());
  EXPECT_TRUE(check(1).ok());
}

TEST(ResultTest, ContextAndAddressAppearInText) {
  Error e(ErrorCode::kUnmapped, "page not present", 0xffff888000001000ULL);
  e.context("reading runqueues[2]");
  const std::string s = e.to_string();
  EXPECT_NE(s.find("unmapped address: reading runqueues[2]: page not present"), std::string::npos) << s;
  EXPECT_NE(s.find("0xffff888000001000"), std::string::npos) << s;
}

TEST(ResultTest, ErrnoIsDescribed) {
  Error e = Error::io("open /proc/1/stat", ENOENT);
  EXPECT_NE(e.to_string().find("No such file"), std::string::npos);
}

TEST(ResultTest, ValueOrFallsBack) {
  EXPECT_EQ(parse_positive(-5).value_or(7), 7);
  EXPECT_EQ(parse_positive(5).value_or(7), 5);
}

}  // namespace
}  // namespace stallmon
