// Seed case 1 on a real Debian guest (shared/docs/cases.md, shared/docs/testbed.md): with IPI
// load that does not patch kernel text running on every CPU, freezing vCPU 2's host thread
// while it runs a thread of that load puts it in state D, and the guest reports a soft lockup
// in smp_call_function_many_cond (the senders wait forever for CPU2's csd) within 60 s.
// Two loads: TLB shootdowns (ipiload tlb: MADV_DONTNEED -> flush_tlb_mm_range, the seed's own
// path) and membarrier (MEMBARRIER_CMD_PRIVATE_EXPEDITED).
//
// Lazy TLB: both loads only interrupt CPUs currently running a thread of ipiload's address
// space. The guest runs nothing else but the generator (scenario "ipi", no sleepers/wakeups),
// whose threads never sleep here (ipi_sleep 0: each keeps its CPU busy in ipiload's mm, so the
// frozen CPU is running its generator thread, not lazy, unless a kthread had it at that very
// instant), and the freeze is taken at once (when_idle 0) rather than when the vCPU halts;
// want_case "vcpu-only" with attempts skips freezes that caught the thread holding QEMU's big
// lock (the injector decides that from host thread states).
//
// The frozen generator thread may hold whatever its loop holds: ipiload tlb takes mmap_lock only
// for reading and shares no other lock between its threads (guestprog/ipiload.c), so the other
// threads keep flushing and the first flush sent to CPU 2 waits forever. (The earlier loop also
// freed page tables under mmap_lock held for writing: a thread frozen there left every other
// thread asleep on the lock and no sender waiting on CPU 2, 1 run in 3.)
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <optional>

#include <nlohmann/json.hpp>

#include "testbed/guest.h"
#include "testbed/process.h"

namespace tb = stallmon::testbed;
using namespace std::chrono_literals;

namespace {

const bool kOptions = tb::use_shared_guest_options(
    {.tag = "seed1", .scenario = "ipi", .watchdog_thresh = 5, .extra_cmdline = "stallmon.ipi_sleep=0"});

// Each generator thread: tid, state, CPU, wchan (a thread asleep on a lock shows it here), the
// guest's IPI counters and its clocksource (a guest that marked the TSC unstable reads a
// device clock, emulated by QEMU under its big lock). Reads nothing of ipiload's memory (no mmap_lock).
const char* const kGeneratorState =
    "p=$(pidof ipiload); echo \"ipiload pid $p\"; for t in /proc/$p/task/*; do "
    "set -- $(cat $t/stat); echo \"tid $1 state $3 cpu ${39} wchan $(cat $t/wchan)\"; done; "
    "grep -E 'TLB|CAL' /proc/interrupts; "
    "echo \"clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)\"; "
    "dmesg | grep -i -E 'clocksource|tsc' | tail -3";

// The control channel may not answer while a vCPU is frozen (a guest command that waits for
// every CPU, e.g. an exiting process's TLB flush or an RCU grace period, never returns).
std::string generator_state(tb::Guest& g) {
  try {
    auto r = g.run(kGeneratorState, 30s);
    if (r.exit_code == 0) return r.out;
    return "generator state: exit " + std::to_string(r.exit_code) + ": " + r.err;
  } catch (const tb::TestbedError& e) {
    return std::string("generator state unavailable: ") + e.what();
  }
}

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

// The guest's jiffies, read from its memory by stallctl (nullopt if that failed).
std::optional<uint64_t> guest_jiffies(const tb::Guest& g) {
  auto r = tb::run_process({STALLCTL_PATH, "inspect", "--domain", g.name(), "--json", "--printk", "0"}, 60s);
  if (r.exit_code != 0) return std::nullopt;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  if (j.is_discarded() || !j.contains("jiffies") || !j["jiffies"].is_number_unsigned()) return std::nullopt;
  return j["jiffies"].get<uint64_t>();
}

void freeze_vcpu2_and_expect_lockup(tb::Guest& g, const std::string& caller) {
  std::cout << "before the freeze:\n" << generator_state(g) << std::endl;
  // Every process but the generator off CPU 2, then a quiet pause: CPU 2 is frozen while running
  // its generator thread, not the control loop's shell (seen: the membarrier variant froze CPU 2
  // with the previous guest command's processes on it; CPU 2 then ran no thread of ipiload's mm,
  // so no membarrier IPI was sent to it, and the control loop, waiting for its child, never
  // answered again).
  ASSERT_TRUE(g.leave_cpu_to(2, "ipiload"));
  const pid_t pid = g.qemu_pid();
  const pid_t tid = g.vcpu_tid(2);
  const std::string orig = tb::thread_cgroup(pid, tid, "freezer");
  const size_t from = g.console_size();
  auto t0 = std::chrono::steady_clock::now();
  // Each freeze kept only if the guest's time still advances (see freeze_vcpu_keeping_guest_time):
  // a freeze that silenced the whole guest is not seed case 1.
  auto f = g.freeze_vcpu_keeping_guest_time(
      2, {.when_idle = 0ms, .want_case = "vcpu-only", .attempts = 5, .want_others_running = true},
      [&] { return guest_jiffies(g); });
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
                    << " within 60 s; generator:\n"
                    << generator_state(g) << "\nconsole:\n"
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

// 18 of 18 runs passed on a loaded machine (2026-12-04), then a fresh-clone .ci/run failed it
// once: a busy vcpu-only freeze after which the guest went silent (no lockup in 60 s, control
// channel dead), the shape the guest-time check above now refreezes. With that check: 8 of 8
// (2026-12-05 03:05-03:11 UTC, host load average 4-7, lockup 10.4-12.1 s after the freeze).
TEST_F(SeedCase1, TlbShootdownLoadFrozenVcpuGuestReportsSoftLockupInCsdWait) {
  freeze_vcpu2_and_expect_lockup(guest(), "flush_tlb_mm_range");
}

// 13 of 18 runs passed on the 6.1 guest (2026-12-04), failing in four shapes, each fixed in turn:
// - every generator thread sending: the kernel's membarrier_ipi_mutex, held across the IPI
//   wait, was held by the frozen thread: every other sender asleep on it (D, wchan
//   membarrier_private_expedited), vCPUs 0 and 1 halted, no lockup (fixed: --sender-cpu 0);
// - the freeze right after a guest command: most likely CPU 2 ran that command's shell, whose mm
//   membarrier skips (fixed: every process but ipiload moved off CPU 2 first);
// - every other vCPU thread stopped (0 ns in 1 s, futex) with the main loop in poll, taken as
//   vcpu-only (fixed: want_others_running);
// - 2 of 8 runs with all of the above: the other vCPUs kept running (~190-210 ms/s each) but
//   the guest went silent (no soft lockup, no RCU stall report in 60 s, control channel dead):
//   the shape the guest-time check refreezes (tests/testbed/README.md). With it: 8 of 8
//   (2026-12-05 03:11-03:18 UTC, host load average 4-7, lockup 10.8-12.2 s after the freeze; the
//   check did not have to refreeze in these runs, nor in the TLB variant's 8).
TEST_F(SeedCase1, MembarrierLoadFrozenVcpuGuestReportsSoftLockupInCsdWait) {
  auto& g = guest();
  // Replace the TLB generator by the membarrier loop (same threads, other syscall). Only CPU 0's
  // thread sends: the kernel serializes membarrier senders with one mutex held across the IPI
  // wait, so a sender frozen on CPU 2 would leave every other sender asleep on it and none
  // waiting on CPU 2 (seen); CPU 2's thread only spins in ipiload's mm, holding nothing.
  auto r = g.run(
      "killall ipiload; sleep 1; ipiload membarrier --sleep-ms 0 --sender-cpu 0 </dev/null >/dev/null 2>&1 & "
      "sleep 1; pidof ipiload",
      60s);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  freeze_vcpu2_and_expect_lockup(g, "membarrier_private_expedited");
}

}  // namespace
