// SPDX-License-Identifier: Apache-2.0
// The measured cases of issue 15 in simulated time, shared by the diagnosis tests and the
// alerting tests (which feed the same events to the Alertmanager pusher):
//   (a) vCPU 3 throttled to 5 ms per 100 ms for 12 s while every CPU sends and answers
//       TLB-shootdown IPIs: on the real guest, six GUEST_IPI_STALL findings in those 12 s, the
//       first with cause GUEST_IRQS_OFF;
//   (b) the whole qemu process SIGSTOPped for 6 s: six findings (VM_WIDE_STALL, four
//       VCPU_HOST_BLOCKED, one GUEST_IPI_STALL "CPU0 has waited 6.1 s for CPU1").
#pragma once

#include <array>

#include "sim.h"

namespace stallmon::diagnosis::testing {

// A 4-vCPU guest with threads on every CPU causing TLB shootdowns: each tick some CPU has a
// flush_tlb_func csd locked for another, answered before the next snapshot. While `slow_cpu`
// is set, waits on that CPU last 0.7-1.5 s with 0.2-0.8 s between them (one waiter at a time,
// in turn), as a vCPU that runs 5 % of the time answers them.
class IpiLoad {
 public:
  explicit IpiLoad(Sim& sim) : sim_(sim) {
    for (std::size_t i = 0; i < sim.vcpus.size(); ++i) {
      sim.run_task(static_cast<int>(i), "tlb_shootdown", 300 + static_cast<int>(i));
      sim.vcpus[i].run(0.9, 0.05);
      sim.vcpus[i].throttled_cgroup = true;  // libvirt's per-vCPU cgroup: cpu.stat is read
    }
    sim.before_tick = [this] { step(); };
  }
  ~IpiLoad() { sim_.before_tick = nullptr; }
  IpiLoad(const IpiLoad&) = delete;
  IpiLoad& operator=(const IpiLoad&) = delete;

  // Runs at the start of every sim tick (Sim::before_tick).
  void step() {
    const int n = static_cast<int>(sim_.cpus.size());
    if (!frozen_) {
      for (int c = 0; c < n; ++c) sim_.clear_csd(c);
      // One brief wait per tick, rotating over every (sender, target) pair.
      const int w = k_ % n;
      int target = (w + 1 + (k_ / n) % (n - 1)) % n;
      if (target != slow_cpu) sim_.csd_wait(w, target, "flush_tlb_func");
      if (slow_cpu >= 0) slow_wait(n);
    }
    ++k_;
  }

  // (a): the vCPU's cgroup gets cpu.max 5000 100000.
  void throttle(int vcpu) {
    sim_.vcpus[vcpu].run(0.05, 0.95);
    sim_.vcpus[vcpu].throttle_rate = 0.95;
    slow_cpu = vcpu;
    phase_ticks_ = 0;
    in_wait_ = true;
  }
  void unthrottle(int vcpu) {
    sim_.vcpus[vcpu].run(0.9, 0.05);
    sim_.vcpus[vcpu].throttle_rate = 0;
    slow_cpu = -1;
  }

  // (b): kill -STOP <qemu pid> while CPU0's flush for CPU1 is in flight; SIGCONT resumes.
  void sigstop() {
    for (auto& c : sim_.cpus) c.view.cfd_requests.clear();
    sim_.csd_wait(0, 1, "flush_tlb_func");
    for (auto& v : sim_.vcpus) v.block(ThreadState::kStopped, "do_signal_stop", {"do_signal_stop", "get_signal"});
    sim_.main.block(ThreadState::kStopped, "do_signal_stop", {"do_signal_stop", "get_signal"});
    for (auto& c : sim_.cpus) c.timer_on = c.touch_on = false;
    frozen_ = true;
  }
  void sigcont() {
    for (auto& v : sim_.vcpus) v.run(0.9, 0.05);
    sim_.main.run(0.05);
    sim_.main.view.state = ThreadState::kSleeping;
    sim_.main.view.wchan = "do_sys_poll";
    for (auto& c : sim_.cpus) c.timer_on = c.touch_on = true;
    frozen_ = false;
  }

  int slow_cpu = -1;

 private:
  void slow_wait(int n) {
    static constexpr std::array<int, 6> kWaitTicks = {9, 13, 7, 15, 11, 10};
    static constexpr std::array<int, 6> kGapTicks = {3, 6, 2, 8, 4, 5};
    const int limit = in_wait_ ? kWaitTicks[cycle_ % 6] : kGapTicks[cycle_ % 6];
    if (++phase_ticks_ > limit) {
      phase_ticks_ = 1;
      if (!in_wait_) ++cycle_;
      in_wait_ = !in_wait_;
    }
    if (!in_wait_) return;
    int waiter = cycle_ % (n - 1);
    if (waiter >= slow_cpu) ++waiter;  // every CPU but the slow one, in turn
    sim_.csd_wait(waiter, slow_cpu, "flush_tlb_func");
  }

  Sim& sim_;
  int k_ = 0;
  bool frozen_ = false;
  bool in_wait_ = false;
  int phase_ticks_ = 0;
  int cycle_ = 0;
};

}  // namespace stallmon::diagnosis::testing
