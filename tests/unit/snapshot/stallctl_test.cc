// SPDX-License-Identifier: Apache-2.0
// stallctl's plumbing: ranges files, the subprocess runner's deadline, and exit codes.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

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


// A stand-in "qemu": a process with 256 MiB of non-zero anonymous memory, so that a dump takes a
// moment; the ranges file points at that mapping.
struct FakeQemu {
  pid_t pid = 0;
  std::string ranges;
  FakeQemu(const std::string& dir) {
    int p[2];
    EXPECT_EQ(::pipe(p), 0);
    pid = ::fork();
    if (pid == 0) {
      ::close(p[0]);
      size_t n = 256u << 20;
      auto* m = static_cast<char*>(::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
      std::memset(m, 1, n);
      char line[64];
      int len = std::snprintf(line, sizeof line, "%p\n", static_cast<void*>(m));
      (void)!::write(p[1], line, static_cast<size_t>(len));
      for (;;) ::pause();
    }
    ::close(p[1]);
    char buf[64] = {};
    ssize_t got = ::read(p[0], buf, sizeof buf - 1);
    ::close(p[0]);
    EXPECT_GT(got, 0);
    ranges = dir + "/ranges";
    std::ofstream(ranges) << "0x0 0x10000000 " << std::string(buf, static_cast<size_t>(got));
  }
  ~FakeQemu() {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  char state() const {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string s((std::istreambuf_iterator<char>(f)), {});
    auto rp = s.rfind(')');
    return rp == std::string::npos || rp + 2 >= s.size() ? '?' : s[rp + 2];
  }
};

// Issue 11: `dump --stop` continues the guest however stallctl ends; SIGKILL in the middle of
// the copy is the hard case (no destructor runs). On main the qemu stayed stopped.
TEST(Stallctl, DumpStopContinuesGuestWhenKilled) {
  std::string dir = ::testing::TempDir() + "/stallctl-dump-" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  FakeQemu q(dir);
  for (int sig : {SIGKILL, SIGTERM, SIGINT}) {
    std::string out = dir + "/core-" + std::to_string(sig);
    pid_t c = ::fork();
    if (c == 0) {
      ::execl(STALLCTL_PATH, STALLCTL_PATH, "dump", "--qemu-pid", std::to_string(q.pid).c_str(), "--ranges",
              q.ranges.c_str(), "--out", out.c_str(), "--stop", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    // Wait until qemu is stopped, then kill stallctl at once.
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (q.state() != 'T' && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
    ASSERT_EQ(q.state(), 'T') << "stallctl never stopped the fake qemu";
    ::kill(c, sig);
    int status = 0;
    ::waitpid(c, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "stallctl finished before the signal; dump too fast for this test";
    deadline = std::chrono::steady_clock::now() + 5s;
    while (q.state() == 'T' && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
    EXPECT_NE(q.state(), 'T') << "guest left stopped after signal " << sig;
  }
  // The output: created 0600, never over an existing file or through a symlink.
  std::string out = dir + "/core";
  auto run = [&](const std::string& path) {
    auto r = run_command({STALLCTL_PATH, "dump", "--qemu-pid", std::to_string(q.pid), "--ranges", q.ranges, "--out", path}, 60s);
    return r.ok() ? r->exit_code : -1;
  };
  ASSERT_EQ(run(out), 0);
  struct stat st{};
  ASSERT_EQ(::stat(out.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_NE(run(out), 0);  // exists already
  std::string victim = dir + "/victim", link = dir + "/link";
  std::ofstream(victim) << "keep";
  std::filesystem::create_symlink(victim, link);
  EXPECT_NE(run(link), 0);
  std::ifstream v(victim);
  std::string text((std::istreambuf_iterator<char>(v)), {});
  EXPECT_EQ(text, "keep");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace stallmon::cli
