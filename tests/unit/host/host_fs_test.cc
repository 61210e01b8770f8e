// SPDX-License-Identifier: Apache-2.0
// FakeHostFs must behave like /proc where the sampler depends on it.
#include "stallmon/host/host_fs.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>

namespace stallmon::host {
namespace {

std::string read_handle(FakeHostFs& fs, int h) {
  char buf[64];
  auto n = fs.read(h, buf, sizeof buf);
  return n.ok() ? std::string(buf, *n) : "errno " + std::to_string(n.error().sys_errno);
}

TEST(FakeHostFs, KeptHandleSeesRewritesButNotRecreation) {
  FakeHostFs fs;
  fs.set_file("proc/1/task/2/stat", "a");
  auto h = fs.open("proc/1/task/2/stat");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(read_handle(fs, *h), "a");
  fs.set_file("proc/1/task/2/stat", "b");  // same task, new text
  EXPECT_EQ(read_handle(fs, *h), "b");
  fs.remove("proc/1/task/2");              // task exits
  EXPECT_EQ(read_handle(fs, *h), "errno " + std::to_string(ESRCH));
  fs.set_file("proc/1/task/2/stat", "c");  // tid reused
  EXPECT_EQ(read_handle(fs, *h), "errno " + std::to_string(ESRCH));
  auto h2 = fs.open("proc/1/task/2/stat");
  ASSERT_TRUE(h2.ok());
  EXPECT_EQ(read_handle(fs, *h2), "c");
  fs.close(*h);
  fs.close(*h2);
  EXPECT_EQ(fs.open_handles(), 0u);
  EXPECT_EQ(fs.opens("proc/1/task/2/stat"), 2u);
  EXPECT_EQ(fs.reads("proc/1/task/2/stat"), 5u);
}

TEST(FakeHostFs, ListDirAndErrors) {
  FakeHostFs fs;
  fs.set_file("proc/1/task/10/stat", "");
  fs.set_file("proc/1/task/10/status", "");
  fs.set_file("proc/1/task/100/stat", "");
  fs.set_file("proc/1/task/10.x/stat", "");
  auto names = fs.list_dir("proc/1/task");
  ASSERT_TRUE(names.ok());
  std::sort(names->begin(), names->end());
  EXPECT_EQ(*names, (std::vector<std::string>{"10", "10.x", "100"}));
  EXPECT_EQ(fs.list_dir("proc/2/task").error().sys_errno, ENOENT);
  EXPECT_EQ(fs.open("nope").error().sys_errno, ENOENT);
  fs.set_error("proc/1/task/10/stat", EACCES);
  EXPECT_EQ(fs.open("proc/1/task/10/stat").error().sys_errno, EACCES);
  EXPECT_TRUE(is_gone(Error::io("x", ESRCH)));
  EXPECT_TRUE(is_gone(Error::io("x", ENOENT)));
  EXPECT_FALSE(is_gone(Error::io("x", EACCES)));
  auto whole = read_whole(fs, "proc/1/task/100/stat");
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(*whole, "");
}

}  // namespace
}  // namespace stallmon::host
