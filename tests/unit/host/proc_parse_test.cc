// SPDX-License-Identifier: Apache-2.0
#include "stallmon/host/proc_parse.h"

#include <gtest/gtest.h>

#include <cctype>
#include <random>

#include "fake_proc.h"

namespace stallmon::host {
namespace {

using testing::FakeThread;
using testing::stat_text;

TEST(ParseTaskStat, RealKernelLine) {
  // Verbatim from a Linux 6.x host (a thread of PID 1).
  auto st = parse_task_stat(
      "1 (process_api) S 0 0 0 0 -1 4194560 34760 1566422 0 737 35 161 1793 1285 20 0 13 0 24 "
      "45764608 3646 18446744073709551615 1 1 0 0 0 0 0 4096 1256 0 0 0 17 1 0 0 0 0 0 0 0 0 0 "
      "0 0 0 0\n");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_EQ(st->tid, 1);
  EXPECT_EQ(st->comm, "process_api");
  EXPECT_EQ(st->state, 'S');
  EXPECT_EQ(st->utime_ticks, 35u);
  EXPECT_EQ(st->stime_ticks, 161u);
  EXPECT_EQ(st->starttime_ticks, 24u);
  EXPECT_EQ(st->processor, 1);
}

TEST(ParseTaskStat, VcpuCommWithSpacesAndSlash) {
  FakeThread t{.tid = 4242, .comm = "CPU 2/TCG", .state = 'D', .utime = 7, .stime = 3,
               .starttime = 99, .cpu = 5};
  auto st = parse_task_stat(stat_text(t));
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_EQ(st->comm, "CPU 2/TCG");
  EXPECT_EQ(st->state, 'D');
  EXPECT_EQ(st->utime_ticks, 7u);
  EXPECT_EQ(st->stime_ticks, 3u);
  EXPECT_EQ(st->starttime_ticks, 99u);
  EXPECT_EQ(st->processor, 5);
}

TEST(ParseTaskStat, CommWithParenthesesAndFakeFields) {
  // A hostile comm that looks like the rest of a stat line: only the LAST ')' ends it.
  FakeThread t{.tid = 7, .comm = "a) R 1 2 3 (b) ) x", .state = 't', .utime = 11, .stime = 12,
               .starttime = 13, .cpu = 1};
  auto st = parse_task_stat(stat_text(t));
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_EQ(st->comm, "a) R 1 2 3 (b) ) x");
  EXPECT_EQ(st->state, 't');
  EXPECT_EQ(st->utime_ticks, 11u);
  EXPECT_EQ(st->starttime_ticks, 13u);
  EXPECT_EQ(st->processor, 1);
}

TEST(ParseTaskStat, EmptyCommAndZombie) {
  FakeThread t{.tid = 9, .comm = "", .state = 'Z'};
  auto st = parse_task_stat(stat_text(t));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->comm, "");
  EXPECT_EQ(st->state, 'Z');
}

TEST(ParseTaskStat, ProcessorMissingOnShortLine) {
  // Fields up to starttime are enough; the CPU is then unknown.
  auto st = parse_task_stat("5 (x) S 1 1 1 0 -1 0 0 0 0 0 4 6 0 0 20 0 1 0 77 0\n");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_EQ(st->starttime_ticks, 77u);
  EXPECT_EQ(st->utime_ticks + st->stime_ticks, 10u);
  EXPECT_EQ(st->processor, -1);
}

TEST(ParseTaskStat, RejectsMalformed) {
  EXPECT_FALSE(parse_task_stat("").ok());
  EXPECT_FALSE(parse_task_stat("12 (noclose S 1 2").ok());
  EXPECT_FALSE(parse_task_stat("12 x) S 1 2").ok());
  EXPECT_FALSE(parse_task_stat("12 (x) S 1 2 3").ok());            // truncated before utime
  EXPECT_FALSE(parse_task_stat("12 (x) SS 1 1 1 0 -1 0 0 0 0 0 4 6 0 0 20 0 1 0 77").ok());
  EXPECT_FALSE(parse_task_stat("12 (x) S 1 1 1 0 -1 0 0 0 0 0 -4 6 0 0 20 0 1 0 77").ok());
  EXPECT_FALSE(parse_task_stat("abc (x) S 1 1 1 0 -1 0 0 0 0 0 4 6 0 0 20 0 1 0 77").ok());
  EXPECT_FALSE(
      parse_task_stat("1 (x) S 1 1 1 0 -1 0 0 0 0 0 99999999999999999999999 6 0 0 20 0 1 0 7").ok());
  EXPECT_EQ(parse_task_stat("").error().code, ErrorCode::kCorrupt);
}

TEST(ParseTaskStat, CommIsBounded) {
  std::string comm(10000, 'x');
  FakeThread t{.tid = 1, .comm = comm};
  auto st = parse_task_stat(stat_text(t));
  ASSERT_TRUE(st.ok());
  EXPECT_LE(st->comm.size(), 64u);
}

TEST(ParseTaskStat, SurvivesRandomMutations) {
  // Fuzz-style: every truncation and random byte flips of a valid line must not crash, and any
  // success must still have a state letter.
  std::string base = stat_text(FakeThread{.tid = 3, .comm = "CPU 0/KVM", .state = 'R'});
  for (size_t n = 0; n <= base.size(); ++n) (void)parse_task_stat(base.substr(0, n));
  std::mt19937 rng(42);
  for (int i = 0; i < 5000; ++i) {
    std::string s = base;
    for (int k = 0; k < 4; ++k) s[rng() % s.size()] = static_cast<char>(rng() % 256);
    auto st = parse_task_stat(s);
    if (st.ok()) {
      EXPECT_TRUE(std::isalpha(static_cast<unsigned char>(st->state))) << int(st->state);
    }
  }
}

TEST(ParseSchedstat, ThreeNumbers) {
  auto s = parse_schedstat("174881278 20079718 425\n");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->run_ns, 174881278u);
  EXPECT_EQ(s->wait_ns, 20079718u);
  EXPECT_EQ(s->timeslices, 425u);
  EXPECT_FALSE(parse_schedstat("").ok());
  EXPECT_FALSE(parse_schedstat("1 2\n").ok());
  EXPECT_FALSE(parse_schedstat("1 -2 3\n").ok());
  EXPECT_FALSE(parse_schedstat("1 2x 3\n").ok());
}

TEST(ParseStatus, FieldsAnywhere) {
  FakeThread t{.tid = 1, .voluntary = 352, .involuntary = 73, .tracer = 4711};
  auto s = parse_task_status(testing::status_text(t));
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  EXPECT_EQ(s->voluntary_ctxt_switches, 352u);
  EXPECT_EQ(s->nonvoluntary_ctxt_switches, 73u);
  EXPECT_EQ(s->tracer_pid, 4711);
}

TEST(ParseStatus, MissingOrBadFieldsAreCorrupt) {
  EXPECT_FALSE(parse_task_status("Name:\tx\nTracerPid:\t0\n").ok());
  EXPECT_FALSE(parse_task_status(
                   "TracerPid:\t0\nvoluntary_ctxt_switches:\tx\nnonvoluntary_ctxt_switches:\t1\n")
                   .ok());
  // Truncated in the middle of the last line (a short read).
  std::string full = testing::status_text(FakeThread{.tid = 1, .voluntary = 5, .involuntary = 6});
  EXPECT_FALSE(parse_task_status(full.substr(0, full.size() - 30)).ok());
}

TEST(ParseWchan, ZeroMeansNone) {
  EXPECT_EQ(parse_wchan("0"), "");
  EXPECT_EQ(parse_wchan(""), "");
  EXPECT_EQ(parse_wchan("futex_do_wait"), "futex_do_wait");
  EXPECT_EQ(parse_wchan("__refrigerator\n"), "__refrigerator");
  EXPECT_LE(parse_wchan(std::string(5000, 'a')).size(), 128u);
  EXPECT_EQ(frame_function("kernel_clone+0x9d/0x3a0"), "kernel_clone");
  EXPECT_EQ(frame_function("ipigen_fn+0x1/0x20 [ipigen]"), "ipigen_fn");
  EXPECT_EQ(frame_function("bare"), "bare");
  EXPECT_EQ(frame_function(""), "");
  EXPECT_LE(frame_function(std::string(5000, 'a')).size(), 128u);
}

TEST(ParseStack, StripsAddressesAndBounds) {
  auto frames = parse_stack(
      "[<0>] __refrigerator+0x4c/0x130\n[<0>] get_signal+0x8a1/0x8b0\n"
      "[<ffffffff81234567>] arch_do_signal_or_restart+0x2e/0x260\n");
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_EQ(frames[0], "__refrigerator+0x4c/0x130");
  EXPECT_EQ(frames[2], "arch_do_signal_or_restart+0x2e/0x260");
  std::string many;
  for (int i = 0; i < 500; ++i) many += "[<0>] f+0x1/0x2\n";
  EXPECT_EQ(parse_stack(many).size(), kMaxStackFrames);
  EXPECT_TRUE(parse_stack("").empty());
  EXPECT_TRUE(parse_stack("[<0>").empty());
}

TEST(ParseCgroupCpuStat, V1) {
  auto s = parse_cgroup_v1_cpu_stat(
      "nr_periods 1200\nnr_throttled 310\nthrottled_time 4500000000\nnr_bursts 0\nburst_time 0\n");
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  EXPECT_EQ(s->nr_periods, 1200u);
  EXPECT_EQ(s->nr_throttled, 310u);
  EXPECT_EQ(s->throttled_ns, 4500000000u);
  EXPECT_FALSE(parse_cgroup_v1_cpu_stat("nr_periods 1\nnr_throttled 1\n").ok());
  EXPECT_FALSE(parse_cgroup_v1_cpu_stat("nr_throttled x\nthrottled_time 1\n").ok());
}

TEST(ParseCgroupCpuStat, V2ConvertsMicroseconds) {
  auto s = parse_cgroup_v2_cpu_stat(
      "usage_usec 9000\nuser_usec 8000\nsystem_usec 1000\nnr_periods 50\nnr_throttled 20\n"
      "throttled_usec 123456\nnr_bursts 0\nburst_usec 0\n");
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  EXPECT_EQ(s->nr_periods, 50u);
  EXPECT_EQ(s->nr_throttled, 20u);
  EXPECT_EQ(s->throttled_ns, 123456000u);
}

TEST(ParseCgroupCpuStat, V2WithoutCpuControllerIsNotFound) {
  auto s = parse_cgroup_v2_cpu_stat("usage_usec 9000\nuser_usec 8000\nsystem_usec 1000\n");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(parse_cgroup_v2_cpu_stat("nr_throttled 1\n").error().code, ErrorCode::kCorrupt);
  EXPECT_FALSE(parse_cgroup_v2_cpu_stat("nr_throttled 1\nthrottled_usec 99999999999999999\n").ok());
}

TEST(ParseProcCgroup, HybridV1) {
  auto m = parse_proc_cgroup(
      "9:name=systemd:/\n8:pids:/\n4:memory:/x\n2:cpu,cpuacct:/machine/qemu-1-vm.libvirt-qemu/"
      "vcpu2\n0::/\n");
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  ASSERT_EQ(m->size(), 5u);
  CpuCgroup cg = find_cpu_cgroup(*m);
  EXPECT_EQ(cg.version, CgroupVersion::kV1);
  EXPECT_EQ(cg.path, "/machine/qemu-1-vm.libvirt-qemu/vcpu2");
  EXPECT_EQ(cg.controllers, (std::vector<std::string>{"cpu", "cpuacct"}));
}

TEST(ParseProcCgroup, PureV2AndPathWithColon) {
  auto m = parse_proc_cgroup("0::/machine.slice/machine-qemu\\x2d1.scope/libvirt/vcpu0:odd\n");
  ASSERT_TRUE(m.ok());
  CpuCgroup cg = find_cpu_cgroup(*m);
  EXPECT_EQ(cg.version, CgroupVersion::kV2);
  EXPECT_EQ(cg.path, "/machine.slice/machine-qemu\\x2d1.scope/libvirt/vcpu0:odd");
}

TEST(ParseProcCgroup, NoCpuControllerAnywhere) {
  // v1 without cpu mounted and no v2 line: nothing to read throttling from.
  auto m = parse_proc_cgroup("8:pids:/\n6:freezer:/\n");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(find_cpu_cgroup(*m).version, CgroupVersion::kNone);
  EXPECT_EQ(find_cpu_cgroup({}).version, CgroupVersion::kNone);
}

TEST(ParseProcCgroup, RejectsMalformed) {
  EXPECT_FALSE(parse_proc_cgroup("garbage\n").ok());
  EXPECT_FALSE(parse_proc_cgroup("x:cpu:/\n").ok());
  EXPECT_FALSE(parse_proc_cgroup("1:cpu:relative\n").ok());
  std::string many;
  for (int i = 0; i < 100; ++i) many += "1:cpu:/\n";
  EXPECT_FALSE(parse_proc_cgroup(many).ok());
}

}  // namespace
}  // namespace stallmon::host

namespace stallmon::host {
namespace {

// Every parser on every truncation and on random byte flips of a valid input: no crash, no
// out-of-bounds read (run under ASan in the asan preset), bounded output.
template <typename Fn>
void mutate_all(const std::string& base, Fn&& fn) {
  for (size_t n = 0; n <= base.size(); ++n) fn(base.substr(0, n));
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    std::string s = base;
    for (int k = 0; k < 3; ++k) s[rng() % s.size()] = static_cast<char>(rng() % 256);
    fn(s);
  }
}

TEST(ParsersFuzz, SurviveTruncationAndByteFlips) {
  mutate_all(testing::status_text(FakeThread{.tid = 1, .voluntary = 3, .involuntary = 4}),
             [](const std::string& s) { (void)parse_task_status(s); });
  mutate_all("174881278 20079718 425\n", [](const std::string& s) { (void)parse_schedstat(s); });
  mutate_all("nr_periods 1200\nnr_throttled 310\nthrottled_time 4500000000\n",
             [](const std::string& s) { (void)parse_cgroup_v1_cpu_stat(s); });
  mutate_all("usage_usec 9000\nnr_periods 50\nnr_throttled 20\nthrottled_usec 123456\n",
             [](const std::string& s) { (void)parse_cgroup_v2_cpu_stat(s); });
  mutate_all("9:name=systemd:/\n2:cpu,cpuacct:/machine/vm/vcpu2\n0::/\n", [](const std::string& s) {
    auto m = parse_proc_cgroup(s);
    if (m.ok()) (void)find_cpu_cgroup(*m);
  });
  mutate_all("[<0>] __refrigerator+0x4c/0x130\n[<0>] get_signal+0x8a1/0x8b0\n",
             [](const std::string& s) { EXPECT_LE(parse_stack(s).size(), kMaxStackFrames); });
  mutate_all("futex_do_wait\n", [](const std::string& s) { EXPECT_LE(parse_wchan(s).size(), 128u); });
}

}  // namespace
}  // namespace stallmon::host
