// SPDX-License-Identifier: Apache-2.0
#include "stallmon/libvirt/qemu_process.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace stallmon::libvirt {
namespace {

namespace fs = std::filesystem;

TEST(QueryCpusFast, ParsesFullReplySortedByIndex) {
  // Shape of QEMU 7.2's reply through virDomainQemuMonitorCommand.
  auto r = parse_query_cpus_fast(R"({"return":[
    {"thread-id":15377,"props":{"core-id":0,"thread-id":0,"node-id":0,"socket-id":1},"qom-path":"/machine/unattached/device[1]","cpu-index":1,"target":"x86_64"},
    {"thread-id":15376,"props":{"core-id":0,"thread-id":0,"node-id":0,"socket-id":0},"qom-path":"/machine/unattached/device[0]","cpu-index":0,"target":"x86_64"}
  ],"id":"libvirt-418"})");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].index, 0);
  EXPECT_EQ((*r)[0].tid, 15376);
  EXPECT_EQ((*r)[1].index, 1);
  EXPECT_EQ((*r)[1].tid, 15377);
  EXPECT_TRUE((*r)[0].name.empty());
}

TEST(QueryCpusFast, AcceptsBareArray) {
  auto r = parse_query_cpus_fast(R"([{"cpu-index":3,"thread-id":99}])");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->at(0).index, 3);
}

TEST(QueryCpusFast, EmptyListIsValid) {
  auto r = parse_query_cpus_fast(R"({"return":[]})");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->empty());
}

TEST(QueryCpusFast, QmpErrorIsNotFound) {
  auto r = parse_query_cpus_fast(R"({"error":{"class":"CommandNotFound","desc":"The command query-cpus-fast has not been found"}})");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find("has not been found"), std::string::npos);
}

TEST(QueryCpusFast, RejectsHostileInput) {
  const char* bad[] = {
      "",
      "not json",
      R"({"return":{}})",
      R"({"id":1})",
      R"({"return":[1]})",
      R"({"return":[{"cpu-index":0}]})",
      R"({"return":[{"thread-id":5}]})",
      R"({"return":[{"cpu-index":"0","thread-id":5}]})",
      R"({"return":[{"cpu-index":0,"thread-id":5.5}]})",
      R"({"return":[{"cpu-index":0,"thread-id":0}]})",
      R"({"return":[{"cpu-index":0,"thread-id":-7}]})",
      R"({"return":[{"cpu-index":0,"thread-id":99999999999}]})",
      R"({"return":[{"cpu-index":-1,"thread-id":5}]})",
      R"({"return":[{"cpu-index":5000,"thread-id":5}]})",
      R"({"return":[{"cpu-index":0,"thread-id":5},{"cpu-index":0,"thread-id":6}]})",
      R"({"return":[{"cpu-index":0,"thread-id":5})",
  };
  for (const char* text : bad) {
    auto r = parse_query_cpus_fast(text);
    EXPECT_FALSE(r.ok()) << text;
  }
}

TEST(QueryCpusFast, BoundsTheNumberOfCpus) {
  std::string big = R"({"return":[)";
  for (size_t i = 0; i <= kMaxVcpus; ++i) {
    if (i) big += ",";
    big += R"({"cpu-index":)" + std::to_string(i) + R"(,"thread-id":)" + std::to_string(i + 1) + "}";
  }
  big += "]}";
  auto r = parse_query_cpus_fast(big);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kLimit);
}

TEST(VcpuThreadName, ParsesKvmAndTcgNames) {
  EXPECT_EQ(parse_vcpu_thread_name("CPU 0/KVM"), 0);
  EXPECT_EQ(parse_vcpu_thread_name("CPU 12/TCG\n"), 12);
  EXPECT_EQ(parse_vcpu_thread_name("CPU 3/K"), 3);  // cut by the 15-byte comm limit
  EXPECT_EQ(parse_vcpu_thread_name("CPU 4095/KVM"), 4095);
}

TEST(VcpuThreadName, RejectsOtherThreads) {
  for (const char* name : {"qemu-system-x86", "IO mon_iothread", "CPU /KVM", "CPU 3", "CPU 3 KVM", "CPU x/KVM",
                           "cpu 1/KVM", "CPU 4096/KVM", "CPU 123456/KVM", "vnc_worker", ""}) {
    EXPECT_EQ(parse_vcpu_thread_name(name), -1) << name;
  }
}

// A fake /proc in a temporary directory.
class FakeProc : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("stallmon-fakeproc-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  void write(const fs::path& rel, const std::string& text) {
    fs::create_directories((root_ / rel).parent_path());
    std::ofstream(root_ / rel, std::ios::binary) << text;
  }
  void thread(int pid, int tid, const std::string& comm) {
    write(fs::path(std::to_string(pid)) / "task" / std::to_string(tid) / "comm", comm + "\n");
  }
  void cmdline(int pid, const std::vector<std::string>& args) {
    std::string text;
    for (const auto& a : args) text += a + std::string(1, '\0');
    write(fs::path(std::to_string(pid)) / "cmdline", text);
  }
  std::string root() const { return root_.string(); }

  fs::path root_;
};

TEST_F(FakeProc, VcpuThreadsFromNames) {
  thread(100, 100, "qemu-system-x86");
  thread(100, 101, "qemu-system-x86");
  thread(100, 102, "IO mon_iothread");
  thread(100, 105, "CPU 1/TCG");
  thread(100, 104, "CPU 0/TCG");
  thread(100, 106, "CPU 2/TCG");
  fs::create_directories(root_ / "100/task/107");  // a thread that exited: no comm
  auto r = vcpu_threads_from_proc(root(), 100);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].index, 0);
  EXPECT_EQ((*r)[0].tid, 104);
  EXPECT_EQ((*r)[0].name, "CPU 0/TCG");
  EXPECT_EQ((*r)[2].index, 2);
  EXPECT_EQ((*r)[2].tid, 106);
}

TEST_F(FakeProc, NoVcpuNamedThreadIsNotFound) {
  thread(100, 100, "qemu-system-x86");
  auto r = vcpu_threads_from_proc(root(), 100);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
}

TEST_F(FakeProc, MissingProcessIsNotFound) {
  auto r = vcpu_threads_from_proc(root(), 4242);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
}

TEST_F(FakeProc, DuplicateVcpuNameIsCorrupt) {
  thread(100, 101, "CPU 0/KVM");
  thread(100, 102, "CPU 0/KVM");
  auto r = vcpu_threads_from_proc(root(), 100);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
}

TEST_F(FakeProc, FillNamesAndCheckMembership) {
  thread(100, 104, "CPU 0/KVM");
  std::vector<VcpuThread> v{{0, 104, ""}, {1, 999, "stale"}};
  EXPECT_EQ(fill_thread_names(root(), 100, v), 1u);
  EXPECT_EQ(v[0].name, "CPU 0/KVM");
  EXPECT_EQ(v[1].name, "");
  EXPECT_FALSE(check_threads_belong(root(), 100, v).ok());
  v.pop_back();
  EXPECT_TRUE(check_threads_belong(root(), 100, v).ok());
}

TEST(Cmdline, MatchesUuidOrGuestName) {
  auto cl = [](std::vector<std::string> args) {
    std::string s;
    for (auto& a : args) s += a + std::string(1, '\0');
    return s;
  };
  std::string libvirt_style = cl({"/usr/bin/qemu-system-x86_64", "-name", "guest=demo,debug-threads=on", "-S",
                                  "-uuid", "909e7fb9-dca8-401c-9e2d-b5fea6c97c16"});
  EXPECT_TRUE(cmdline_matches_domain(libvirt_style, "909E7FB9-DCA8-401C-9E2D-B5FEA6C97C16", ""));
  EXPECT_TRUE(cmdline_matches_domain(libvirt_style, "", "demo"));
  EXPECT_FALSE(cmdline_matches_domain(libvirt_style, "00000000-0000-0000-0000-000000000000", "demo2"));
  EXPECT_FALSE(cmdline_matches_domain(libvirt_style, "", "dem"));
  // QEMU doubles commas in option values.
  EXPECT_TRUE(cmdline_matches_domain(cl({"qemu", "-name", "guest=a,,b,debug-threads=on"}), "", "a,b"));
  EXPECT_FALSE(cmdline_matches_domain(cl({"qemu", "-name", "guest=a,debug-threads=on"}), "", "a,b"));
  EXPECT_FALSE(cmdline_matches_domain(cl({"qemu", "-uuid"}), "x", "y"));
  EXPECT_FALSE(cmdline_matches_domain("", "x", "y"));
}

TEST_F(FakeProc, PidFileValidatedAgainstCmdline) {
  const std::string uuid = "909e7fb9-dca8-401c-9e2d-b5fea6c97c16";
  cmdline(321, {"qemu-system-x86_64", "-name", "guest=demo,debug-threads=on", "-uuid", uuid});
  cmdline(322, {"qemu-system-x86_64", "-name", "guest=other,debug-threads=on", "-uuid",
                "11111111-2222-3333-4444-555555555555"});
  write("run/demo.pid", "321");
  write("run/stale.pid", "322\n");
  write("run/garbage.pid", "12ab");
  write("run/gone.pid", "999");

  auto ok = qemu_pid_from_pidfile(root() + "/run/demo.pid", root(), uuid, "demo");
  ASSERT_TRUE(ok.ok()) << ok.error().to_string();
  EXPECT_EQ(*ok, 321);

  auto stale = qemu_pid_from_pidfile(root() + "/run/stale.pid", root(), uuid, "demo");
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.error().code, ErrorCode::kInvalidArgument);

  auto garbage = qemu_pid_from_pidfile(root() + "/run/garbage.pid", root(), uuid, "demo");
  ASSERT_FALSE(garbage.ok());
  EXPECT_EQ(garbage.error().code, ErrorCode::kCorrupt);

  auto gone = qemu_pid_from_pidfile(root() + "/run/gone.pid", root(), uuid, "demo");
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.error().code, ErrorCode::kNotFound);

  auto missing = qemu_pid_from_pidfile(root() + "/run/none.pid", root(), uuid, "demo");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);

  auto scan = find_qemu_pid_by_uuid(root(), uuid, "demo");
  ASSERT_TRUE(scan.ok()) << scan.error().to_string();
  EXPECT_EQ(*scan, 321);
  EXPECT_FALSE(find_qemu_pid_by_uuid(root(), "99999999-2222-3333-4444-555555555555", "x").ok());
}

TEST(VcpuCgroups, ReadsLibvirtPerVcpuCgroupsAndCrossChecksNames) {
  fs::path root = fs::temp_directory_path() / ("stallmon-cg-" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::path proc = root / "proc", cg = root / "cgroup";
  fs::path pid = proc / "700";
  for (auto [tid, comm] : {std::pair{700, "qemu-system-x86"}, {701, "CPU 0/KVM"}, {702, "CPU 1/KVM"}}) {
    fs::create_directories(pid / "task" / std::to_string(tid));
    std::ofstream(pid / "task" / std::to_string(tid) / "comm") << comm << "\n";
  }
  const std::string scope = "/machine.slice/machine-qemu\\x2d1\\x2dg.scope";
  std::ofstream(pid / "cgroup") << "0::" << scope << "/libvirt/emulator\n";
  for (auto [n, tid] : {std::pair{0, 701}, {1, 702}}) {
    fs::create_directories(cg / (scope.substr(1) + "/libvirt/vcpu" + std::to_string(n)));
    std::ofstream(cg / (scope.substr(1) + "/libvirt/vcpu" + std::to_string(n)) / "cgroup.threads") << tid << "\n";
  }
  auto r = vcpu_threads_from_cgroup(proc.string(), cg.string(), 700);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[1].tid, 702);
  EXPECT_EQ((*r)[1].name, "CPU 1/KVM");
  auto both = vcpu_threads_without_monitor(proc.string(), cg.string(), 700, 2);
  ASSERT_TRUE(both.ok()) << both.error().to_string();
  // libvirt reports 3 online vCPUs: one is missing from the map.
  EXPECT_FALSE(vcpu_threads_without_monitor(proc.string(), cg.string(), 700, 3).ok());
  // Names and cgroups disagree (vCPU 1's cgroup holds another thread).
  std::ofstream(cg / (scope.substr(1) + "/libvirt/vcpu1") / "cgroup.threads") << 700 << "\n";
  EXPECT_FALSE(vcpu_threads_without_monitor(proc.string(), cg.string(), 700, 0).ok());
  // Two threads in one vCPU cgroup.
  std::ofstream(cg / (scope.substr(1) + "/libvirt/vcpu1") / "cgroup.threads") << "701\n702\n";
  EXPECT_FALSE(vcpu_threads_from_cgroup(proc.string(), cg.string(), 700).ok());
  // No libvirt cgroups at all (cgroup_controllers = []): names alone.
  std::ofstream(pid / "cgroup") << "0::/\n";
  EXPECT_EQ(vcpu_threads_from_cgroup(proc.string(), cg.string(), 700).error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(vcpu_threads_without_monitor(proc.string(), cg.string(), 700, 2).ok());
  fs::remove_all(root);
}

}  // namespace
}  // namespace stallmon::libvirt
