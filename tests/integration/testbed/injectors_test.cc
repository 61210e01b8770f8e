// The testbed's own checks on a shared real guest: the control channel, and each fault injector
// (host-visible state while applied, fully undone afterwards).
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>

#include "testbed/guest.h"

namespace tb = stallmon::testbed;
using namespace std::chrono_literals;

namespace {

// Sleepers and wakeups keep every vCPU thread waking up; no IPI generator, so freezes do not
// lock the guest up (seed_case1_test covers that).
const bool kOptions = tb::use_shared_guest_options({.tag = "inj", .scenario = "wakeups,sleepers"});

using tb::read_text;
using tb::threads_of;

class Testbed : public tb::GuestTest {};

TEST_F(Testbed, BootsWithVcpuThreadsAndReadyMarker) {
  auto& g = guest();
  EXPECT_EQ(g.vcpu_count(), 4);
  for (auto [i, tid] : g.vcpu_tids()) {
    std::string comm = read_text("/proc/" + std::to_string(g.qemu_pid()) + "/task/" +
                                 std::to_string(tid) + "/comm");
    EXPECT_EQ(comm.rfind("CPU " + std::to_string(i) + "/", 0), 0u) << comm;
  }
  EXPECT_NE(g.console().find("STALLMON-READY ncpu=4"), std::string::npos);
  std::cout << "boot (virsh create -> ready): " << g.boot_seconds() << " s" << std::endl;
}

TEST_F(Testbed, ControlChannelGivesGuestTruth) {
  auto& g = guest();
  EXPECT_NE(g.console().find("ctl=ttyS1,vport"), std::string::npos)
      << "the guest serves both the serial and the virtio-serial control port";
  for (const std::string channel : {"virtio", "serial"}) {
    SCOPED_TRACE(channel);
    auto e = g.run("echo out; echo err >&2; exit 3", 60s, channel);
    EXPECT_EQ(e.exit_code, 3);
    EXPECT_EQ(e.out, "out\n");
    EXPECT_EQ(e.err, "err\n");
    // Binary output: BTF magic 0xeb9f, little endian.
    auto b = g.run("head -c 64 /sys/kernel/btf/vmlinux", 60s, channel);
    ASSERT_EQ(b.exit_code, 0) << b.err;
    ASSERT_EQ(b.out.size(), 64u);
    EXPECT_EQ(static_cast<unsigned char>(b.out[0]), 0x9f);
    EXPECT_EQ(static_cast<unsigned char>(b.out[1]), 0xeb);
    auto n = g.run("nproc; cat /proc/sys/kernel/watchdog_thresh", 60s, channel);
    EXPECT_EQ(n.out, "4\n5\n");
  }
  auto t0 = std::chrono::steady_clock::now();
  auto r = g.run("cat /proc/kallsyms", 120s);
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  size_t lines = std::count(r.out.begin(), r.out.end(), '\n');
  EXPECT_GT(lines, 50000u);
  EXPECT_NE(r.out.find(" smp_call_function_many_cond\n"), std::string::npos);
  std::cout << "kallsyms: " << lines << " lines in " << secs << " s" << std::endl;
}

TEST_F(Testbed, FreezeVcpuThreadGivesDAndIsUndone) {
  auto& g = guest();
  const pid_t pid = g.qemu_pid(), tid = g.vcpu_tid(2);
  const std::string orig = tb::thread_cgroup(pid, tid, "freezer");
  auto f = g.freeze_vcpu(2);
  ASSERT_TRUE(f.applied()) << f.error();
  std::cout << f.status().dump() << std::endl;
  const std::string cg = f.status().value("cgroup", "");
  EXPECT_TRUE(f.freeze_case() == "vcpu-only" || f.freeze_case() == "vm-wide") << f.freeze_case();
  EXPECT_EQ(tb::thread_state(pid, tid), 'D');
  EXPECT_NE(tb::thread_cgroup(pid, tid, "freezer"), orig);
  auto a = tb::thread_schedstat(pid, tid).run_ns;
  usleep(500000);
  EXPECT_EQ(tb::thread_schedstat(pid, tid).run_ns, a) << "a frozen thread does not run";
  EXPECT_EQ(tb::thread_state(pid, tid), 'D');

  auto undo = f.release();
  EXPECT_TRUE(undo.value("ok", false)) << undo.dump();
  EXPECT_TRUE(tb::eventually([&] { return tb::thread_state(pid, tid) != 'D'; }, 5s));
  EXPECT_EQ(tb::thread_cgroup(pid, tid, "freezer"), orig);
  EXPECT_FALSE(cg.empty());
  EXPECT_FALSE(std::filesystem::exists(cg));
  EXPECT_TRUE(tb::eventually([&] { return tb::thread_schedstat(pid, tid).run_ns > a; }, 5s));
  EXPECT_EQ(g.run("true").exit_code, 0);
}

TEST_F(Testbed, FreezeCaseMatchesWhatTheVmDoes) {
  // Ask for the vm-wide case: vCPU 2 busy with port I/O (QEMU takes its big lock for each
  // access), freeze at once, retry until the freeze lands inside the lock. Whatever case the
  // injector reports must match what the host sees: vm-wide = no other thread runs and the
  // guest does not answer; vcpu-only = the others run and the guest answers.
  auto& g = guest();
  const pid_t pid = g.qemu_pid(), tid = g.vcpu_tid(2);
  ASSERT_EQ(g.run("insmod /bqlhog.ko cpu=2").exit_code, 0);
  struct Unload {
    const tb::Guest& g;
    bool done = false;
    void operator()() {
      if (!done) g.run("rmmod bqlhog", 180s);
      done = true;
    }
    ~Unload() { (*this)(); }
  } unload{g};
  tb::FreezeOptions o;
  o.when_idle = 0ms;
  o.want_case = "vm-wide";
  o.attempts = 25;
  o.measure = 500ms;
  auto f = g.freeze_vcpu(2, o);
  ASSERT_TRUE(f.applied()) << f.error();
  std::cout << "cases: " << f.status()["cases"].dump() << std::endl;
  EXPECT_EQ(tb::thread_state(pid, tid), 'D');
  std::map<pid_t, unsigned long long> before;
  for (pid_t t : threads_of(pid)) before[t] = tb::thread_schedstat(pid, t).run_ns;
  auto ping = tb::run_testbed({"ping", g.name(), "--timeout", "3"}, 30s, false);
  unsigned long long others = 0;
  for (auto [t, ns] : before) {
    if (t != tid) others += tb::thread_schedstat(pid, t).run_ns - ns;
  }
  if (f.freeze_case() == "vm-wide") {
    EXPECT_NE(ping.exit_code, 0) << "the guest cannot answer while QEMU's big lock is held";
    EXPECT_LT(others, 1000000ull) << "no other qemu thread runs";
  } else {
    EXPECT_EQ(f.freeze_case(), "vcpu-only");
    std::cout << "vm-wide not produced in " << o.attempts << " attempts" << std::endl;
    EXPECT_EQ(ping.exit_code, 0) << ping.err;
    EXPECT_GT(others, 1000000ull);
  }
  auto undo = f.release();
  EXPECT_TRUE(undo.value("ok", false)) << undo.dump();
  EXPECT_TRUE(tb::eventually([&] { return tb::thread_state(pid, tid) != 'D'; }, 5s));
  // The VM runs again after the thaw (slowly while bqlhog keeps the big lock busy).
  unload();
  EXPECT_EQ(g.run("true", 120s).exit_code, 0);
}

TEST_F(Testbed, ThrottleVcpuThreadStarvesItAndIsUndone) {
  auto& g = guest();
  const pid_t pid = g.qemu_pid(), tid = g.vcpu_tid(3);
  const std::string orig = tb::thread_cgroup(pid, tid, "cpu");
  ASSERT_EQ(g.run("tb-load start 3").exit_code, 0);  // keep vCPU 3 busy
  struct LoadStop {
    const tb::Guest& g;
    ~LoadStop() { g.run("tb-load stop"); }
  } load_stop{g};
  sleep(1);

  auto f = g.throttle_vcpu(3, 5000, 100000);
  ASSERT_TRUE(f.applied()) << f.error();
  const std::string cg = f.status().value("cgroup", "");
  ASSERT_FALSE(cg.empty());
  EXPECT_NE(tb::thread_cgroup(pid, tid, "cpu"), orig);
  usleep(300000);
  auto s0 = tb::thread_schedstat(pid, tid);
  int running = 0, samples = 0;
  for (; samples < 40; ++samples) {  // 2 s
    running += tb::thread_state(pid, tid) == 'R';
    usleep(50000);
  }
  auto s1 = tb::thread_schedstat(pid, tid);
  double run_ms = (s1.run_ns - s0.run_ns) / 1e6, delay_ms = (s1.delay_ns - s0.delay_ns) / 1e6;
  std::cout << "throttled 2 s: run " << run_ms << " ms, run delay +" << delay_ms << " ms, R in "
            << running << "/" << samples << " samples" << std::endl;
  EXPECT_LT(run_ms, 300.0) << "5% quota: about 100 ms of 2 s";
  EXPECT_GT(delay_ms, 1000.0) << "runnable but not running: run delay grows";
  EXPECT_GE(running, samples / 2) << "starved, not sleeping: mostly R";
  EXPECT_NE(read_text(cg + "/cpu.stat").find("nr_throttled "), std::string::npos);
  EXPECT_EQ(read_text(cg + "/cpu.stat").find("nr_throttled 0\n"), std::string::npos);

  auto undo = f.release();
  EXPECT_TRUE(undo.value("ok", false)) << undo.dump();
  EXPECT_EQ(tb::thread_cgroup(pid, tid, "cpu"), orig);
  EXPECT_FALSE(std::filesystem::exists(cg));
  // For information only: how much it runs unthrottled depends on what else the 2 host cores
  // run (other guests, builds), so it is not asserted.
  auto u0 = tb::thread_schedstat(pid, tid);
  sleep(2);
  auto u1 = tb::thread_schedstat(pid, tid);
  std::cout << "after undo 2 s: run " << (u1.run_ns - u0.run_ns) / 1e6 << " ms" << std::endl;
}

TEST_F(Testbed, PtraceStopsOneThreadAndIsUndone) {
  auto& g = guest();
  const pid_t pid = g.qemu_pid(), tid = g.vcpu_tid(1);
  ASSERT_EQ(tb::tracer_pid(tid), 0);
  auto f = g.ptrace_stop_vcpu(1);
  ASSERT_TRUE(f.applied()) << f.error();
  EXPECT_EQ(tb::thread_state(pid, tid), 't');
  EXPECT_EQ(tb::tracer_pid(tid), f.status().value("injector_pid", -2));
  // Only that thread: the other vCPU threads are not stopped.
  for (auto [i, t] : g.vcpu_tids()) {
    if (t != tid) {
      EXPECT_NE(tb::thread_state(pid, t), 't') << "vCPU " << i;
    }
  }
  auto undo = f.release();
  EXPECT_TRUE(undo.value("ok", false)) << undo.dump();
  EXPECT_EQ(tb::tracer_pid(tid), 0);
  EXPECT_TRUE(tb::eventually([&] { return tb::thread_state(pid, tid) != 't'; }, 5s));
  EXPECT_EQ(g.run("true").exit_code, 0);
}

TEST_F(Testbed, SigstopStopsWholeQemuAndIsUndone) {
  auto& g = guest();
  const pid_t pid = g.qemu_pid();
  auto f = g.sigstop();
  ASSERT_TRUE(f.applied()) << f.error();
  for (pid_t t : threads_of(pid)) EXPECT_EQ(tb::thread_state(pid, t), 'T') << "thread " << t;
  auto undo = f.release();
  EXPECT_TRUE(undo.value("ok", false)) << undo.dump();
  EXPECT_TRUE(tb::eventually(
      [&] {
        for (pid_t t : threads_of(pid)) {
          if (tb::thread_state(pid, t) == 'T') return false;
        }
        return true;
      },
      5s));
  EXPECT_EQ(g.run("true").exit_code, 0);
}

TEST_F(Testbed, LibvirtdRestartKeepsTheGuest) {
  auto& g = guest();
  auto r = tb::restart_libvirtd();
  std::cout << r.dump() << std::endl;
  EXPECT_EQ(r.value("libvirtd", ""), "restarted");
  // libvirt knows the domain again, same qemu, same vCPU threads; the guest never noticed.
  auto info = nlohmann::json::parse(tb::run_testbed({"info", g.name()}).out);
  EXPECT_EQ(info.value("state", ""), "running");
  EXPECT_EQ(info.value("qemu_pid", -1), g.qemu_pid());
  for (auto [i, tid] : g.vcpu_tids()) {
    EXPECT_EQ(info["vcpu_tids"].value(std::to_string(i), -1), tid) << "vCPU " << i;
  }
  EXPECT_EQ(g.run("true").exit_code, 0);
}

TEST_F(Testbed, InjectorUndoesWhenItsTestDies) {
  // The injector's parent going away (here: SIGTERM to the injector, as PR_SET_PDEATHSIG sends
  // it) undoes the fault.
  auto& g = guest();
  const pid_t pid = g.qemu_pid(), tid = g.vcpu_tid(1);
  auto f = g.ptrace_stop_vcpu(1);
  ASSERT_TRUE(f.applied()) << f.error();
  const pid_t inj = f.status().value("injector_pid", -1);
  ASSERT_GT(inj, 0);
  ASSERT_EQ(kill(inj, SIGTERM), 0);
  EXPECT_TRUE(tb::eventually([&] { return tb::tracer_pid(tid) == 0; }, 10s));
  EXPECT_TRUE(tb::eventually([&] { return tb::thread_state(pid, tid) != 't'; }, 5s));
  EXPECT_TRUE(f.release().value("ok", false));

  // A freeze whose injector is SIGKILLed is undone by `testbed.py cleanup`.
  auto z = g.freeze_vcpu(3);
  ASSERT_TRUE(z.applied()) << z.error();
  const std::string cg = z.status().value("cgroup", "");
  ASSERT_EQ(kill(z.status().value("injector_pid", -1), SIGKILL), 0);
  usleep(200000);
  EXPECT_EQ(tb::thread_state(pid, g.vcpu_tid(3)), 'D');
  auto r = tb::run_testbed({"cleanup", "--no-domains"});
  std::cout << r.out;
  EXPECT_TRUE(tb::eventually([&] { return tb::thread_state(pid, g.vcpu_tid(3)) != 'D'; }, 5s));
  EXPECT_FALSE(std::filesystem::exists(cg));
  z.release();
}

}  // namespace
