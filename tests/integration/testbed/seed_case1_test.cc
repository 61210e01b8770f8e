// Seed case 1 on a real Debian guest (shared/docs/cases.md, shared/docs/testbed.md): with IPI
// load that does not patch kernel text running on every CPU, freezing vCPU 2's host thread
// while it runs a thread of that load puts it in state D, and the guest reports a soft lockup
// in smp_call_function_many_cond (the senders wait forever for CPU2's csd) within 60 s.
// Two loads: TLB shootdowns (ipiload tlb: MADV_DONTNEED -> flush_tlb_mm_range, the seed's own
// path) and membarrier (MEMBARRIER_CMD_PRIVATE_EXPEDITED).
//
// Lazy TLB: both loads only interrupt CPUs currently running a thread of ipiload's address
// space. The guest runs nothing else but the generator (scenario "ipi", no sleepers/wakeups),
// whose threads keep every CPU ~95% busy, and the freeze is taken at once (when_idle 0) rather
// than when the vCPU halts; want_case "vcpu-only" with attempts skips freezes that caught the
// thread holding QEMU's big lock (the injector decides that from host thread states).
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>

#include "testbed/guest.h"

namespace tb = stallmon::testbed;
using namespace std::chrono_literals;

namespace {

const bool kOptions =
    tb::use_shared_guest_options({.tag = "seed1", .scenario = "ipi", .watchdog_thresh = 5});

// True if a soft-lockup report names smp_call_function_many_cond and, in the same trace,
// `caller` (the IPI's origin).
bool has_lockup_in_csd_wait(const std::string& text, const std::string& caller) {
  for (size_t p = text.find("soft lockup"); p != std::string::npos;
       p = text.find("soft lockup", p + 1)) {
    auto q = text.find("smp_call_function_many_cond", p);
    auto c = text.find(caller, p);
    if (q != std::string::npos && q - p < 4000 && c != std::string::npos && c - p < 6000)
      return true;
  }
  return false;
}

void freeze_vcpu2_and_expect_lockup(tb::Guest& g, const std::string& caller) {
  const pid_t pid = g.qemu_pid();
  const pid_t tid = g.vcpu_tid(2);
  const std::string orig = tb::thread_cgroup(pid, tid, "freezer");
  const size_t from = g.console_size();
  auto t0 = std::chrono::steady_clock::now();
  auto f = g.freeze_vcpu(2, {.when_idle = 0ms, .want_case = "vcpu-only", .attempts = 5});
  ASSERT_TRUE(f.applied()) << f.error();
  std::cout << "freeze: " << f.status().dump() << std::endl;
  ASSERT_EQ(f.tid(), tid);
  ASSERT_EQ(f.freeze_case(), "vcpu-only") << "every freeze caught QEMU's big lock";
  EXPECT_EQ(tb::thread_state(pid, tid), 'D');
  // Frozen: no run-time progress at all.
  auto a = tb::thread_schedstat(pid, tid).run_ns;
  usleep(300000);
  EXPECT_EQ(tb::thread_schedstat(pid, tid).run_ns, a);

  bool seen = tb::eventually([&] { return has_lockup_in_csd_wait(g.console(from), caller); }, 60s);
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(seen) << "no soft lockup in smp_call_function_many_cond from " << caller
                    << " within 60 s; console:\n"
                    << g.console(from);
  std::cout << "soft lockup in smp_call_function_many_cond (" << caller << ") " << secs
            << " s after the freeze" << std::endl;
  ::testing::Test::RecordProperty("seconds_to_soft_lockup_" + caller, std::to_string(secs));
  EXPECT_EQ(tb::thread_state(pid, tid), 'D') << "still frozen while the guest reports";

  // Thaw: the thread runs again, back in its cgroup, the testbed cgroup is gone.
  const std::string cg = f.status().value("cgroup", "");
  auto undo = f.release();
  EXPECT_TRUE(undo.value("ok", false)) << undo.dump();
  EXPECT_TRUE(tb::eventually([&] { return tb::thread_state(pid, tid) != 'D'; }, 5s));
  EXPECT_EQ(tb::thread_cgroup(pid, tid, "freezer"), orig);
  EXPECT_FALSE(cg.empty());
  EXPECT_FALSE(std::filesystem::exists(cg));
  auto b = tb::thread_schedstat(pid, tid).run_ns;
  EXPECT_TRUE(tb::eventually([&] { return tb::thread_schedstat(pid, tid).run_ns > b; }, 5s));
  // The guest recovers: CPU2 answers the IPI, the control loop answers.
  auto r = g.run("cat /proc/loadavg", 60s);
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

class SeedCase1 : public tb::GuestTest {};

// Disabled (open, issue 17): failed 1 of 3 runs on the merged main (13:04 UTC, 2026-12-04): after
// the freeze every other CPU went idle and no sender waited on CPU 2 (only an RCU stall report).
// Hypothesis, not yet checked: the generator thread frozen on CPU 2 held its mm's mmap lock, so
// the other generator threads slept on it instead of flushing. The membarrier variant below and
// the diagnosis tests (on_each_cpu module load) cover seed case 1 meanwhile. Run it by hand with
// --gtest_also_run_disabled_tests.
TEST_F(SeedCase1, DISABLED_TlbShootdownLoadFrozenVcpuGuestReportsSoftLockupInCsdWait) {
  freeze_vcpu2_and_expect_lockup(guest(), "flush_tlb_mm_range");
}

TEST_F(SeedCase1, MembarrierLoadFrozenVcpuGuestReportsSoftLockupInCsdWait) {
  auto& g = guest();
  // Replace the TLB generator by the membarrier loop (same threads, other syscall).
  auto r = g.run(
      "killall ipiload; sleep 1; ipiload membarrier </dev/null >/dev/null 2>&1 & "
      "sleep 1; pidof ipiload",
      60s);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  freeze_vcpu2_and_expect_lockup(g, "membarrier_private_expedited");
}

}  // namespace
