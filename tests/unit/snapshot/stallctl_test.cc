// SPDX-License-Identifier: Apache-2.0
// stallctl's plumbing: ranges files, the subprocess runner's deadline, and exit codes.
#include <gtest/gtest.h>

#include <chrono>

#include "guest_source.h"
#include "subprocess.h"

namespace stallmon::cli {
namespace {

using namespace std::chrono_literals;

TEST(Ranges, ParseAndFormatRoundTrip) {
  auto r = parse_ranges("# comment\n0x0 0xc3000 0x7f7d5fe00000 pc.ram\n\n1048576 0x1ff00000 0x7f7d5ff00000  # tail\n");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].size, 0xc3000u);
  EXPECT_EQ((*r)[0].name, "pc.ram");
  EXPECT_EQ((*r)[1].gpa, 0x100000u);
  EXPECT_EQ((*r)[1].hva, 0x7f7d5ff00000u);
  auto again = parse_ranges(format_ranges(*r));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->size(), 2u);
  EXPECT_EQ((*again)[1].size, 0x1ff00000u);
}

TEST(Ranges, Rejects) {
  EXPECT_FALSE(parse_ranges("").ok());
  EXPECT_FALSE(parse_ranges("0x0 0x1000\n").ok());
  EXPECT_FALSE(parse_ranges("0x0 zz 0x1000\n").ok());
  EXPECT_FALSE(parse_ranges("0x0 0 0x1000\n").ok());
  auto e = parse_ranges("0x0 0x1000 0x2000\nbad line\n");
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().message.find("line 2"), std::string::npos);
}

TEST(RunCommand, OutputExitCodeAndDeadline) {
  auto r = run_command({"sh", "-c", "echo out; echo err >&2; exit 3"}, 60s);  // a hang guard
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
  // A child that never ends by itself: returning at all shows the deadline killed it (no
  // elapsed-time assertion; the ctest timeout catches a hang).
  auto slow = run_command({"sleep", "infinity"}, 200ms);
  ASSERT_FALSE(slow.ok());
  EXPECT_EQ(slow.error().code, ErrorCode::kTimeout);
  auto missing = run_command({"/nonexistent/stallmon-no-such-binary"}, 5s);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
}

TEST(Stallctl, ExitCodes) {
  auto code = [](std::vector<std::string> args) {
    args.insert(args.begin(), STALLCTL_PATH);
    auto r = run_command(args, 60s);  // a hang guard
    return r.ok() ? r->exit_code : -1;
  };
  EXPECT_EQ(code({}), 2);
  EXPECT_EQ(code({"--help"}), 0);
  EXPECT_EQ(code({"inspect"}), 2);
  EXPECT_EQ(code({"inspect", "--bogus"}), 2);
  EXPECT_EQ(code({"inspect", "--qemu-pid", "1"}), 2);
  EXPECT_EQ(code({"inspect", "--core", "x", "--qemu-pid", "1"}), 2);
  EXPECT_EQ(code({"dump", "--qemu-pid", "1", "--ranges", "r"}), 2);  // --out missing
  EXPECT_EQ(code({"inspect", "--core", "/nonexistent/core"}), 1);
  EXPECT_EQ(code({"ram-layout"}), 2);
}

}  // namespace
}  // namespace stallmon::cli
