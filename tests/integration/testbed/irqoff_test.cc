// Seed cases 2 and 4 (guest-internal): the kit's irqoff.ko spins with interrupts disabled on
// guest CPU 1. Other CPUs report soft lockups (they wait for CPU 1 in IPIs), never CPU 1
// itself; on the host, vCPU 1's thread stays runnable and burns CPU (unlike seed case 1).
// Its own guest: the CPU is lost for good. IPI load: ipi-module (on_each_cpu every 10 ms from a
// kthread), which interrupts CPU 1 whatever it runs; the TLB generator would reach it only
// while CPU 1 runs, or idles lazily in, the generator's address space.
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <regex>

#include "testbed/guest.h"

namespace tb = stallmon::testbed;
using namespace std::chrono_literals;

namespace {

const bool kOptions = tb::use_shared_guest_options(
    {.tag = "irqoff", .scenario = "ipi-module,wakeups,sleepers", .watchdog_thresh = 5});

class IrqOff : public tb::GuestTest {};

TEST_F(IrqOff, SpinWithInterruptsOffOnCpu1) {
  auto& g = guest();
  const pid_t pid = g.qemu_pid(), tid = g.vcpu_tid(1);
  const size_t from = g.console_size();
  auto t0 = std::chrono::steady_clock::now();
  // In the background: insmod itself may never return (it can land on CPU 1, or wait for CPU 1
  // in an IPI), and neither may later guest commands that need CPU 1. Only the console is used
  // from here on.
  // Everything the control channel needs must stay off the CPU about to spin with IRQs off: a
  // reply handled there (the control loop scheduled on it, a TLB-shootdown IPI for the loop's mm,
  // the virtio-serial interrupt routed to it) would never come. Move every task and IRQ to the
  // other CPUs first; the IPIs of the scenario still go to every CPU.
  auto r = g.run(
      "for p in $(ls /proc | grep '^[0-9][0-9]*$'); do taskset -a -p d $p >/dev/null 2>&1; done; "
      "for f in /proc/irq/*/smp_affinity; do echo d > $f 2>/dev/null; done; "
      "insmod /irqoff.ko cpu=1 </dev/null >/dev/null 2>&1 &",
      60s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto m = g.wait_console(std::regex("soft lockup - CPU#([0-9]+) stuck"), 90s, from);
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(m) << "no soft lockup within 90 s; console:\n" << g.console(from);
  std::cout << "first report " << secs << " s after insmod: " << *m << std::endl;
  EXPECT_EQ(g.console(from).find("soft lockup - CPU#1 stuck"), std::string::npos)
      << "CPU 1 (IRQs off) cannot report itself";
  EXPECT_NE(g.console(from).find("stallmon-irqoff: spinning with IRQs off on CPU1"),
            std::string::npos);
  // Host: the vCPU 1 thread runs (R) and makes progress.
  auto a = tb::thread_schedstat(pid, tid).run_ns;
  int running = 0;
  for (int i = 0; i < 20; ++i) {
    running += tb::thread_state(pid, tid) == 'R';
    usleep(50000);
  }
  auto ran_ms = (tb::thread_schedstat(pid, tid).run_ns - a) / 1e6;
  std::cout << "vCPU 1 thread: R in " << running << "/20 samples, ran " << ran_ms << " ms of 1000"
            << std::endl;
  EXPECT_GE(running, 10) << "runnable, not blocked";
  EXPECT_GT(ran_ms, 5.0) << "makes progress (how much depends on the host's load)";
}

}  // namespace
