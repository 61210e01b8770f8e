// SPDX-License-Identifier: Apache-2.0
// Issue 12 item 2: a CPU whose kernel trace spins in a spinlock's contended path is a lock
// waiter; its holder is inferred only when exactly one other stuck CPU is left (a qspinlock
// records no owner), and then the waiter's stall is a symptom of the holder's, in its incident.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "lock_waits.h"
#include "sim.h"

namespace stallmon::diagnosis::testing {
namespace {

KernelTrace trace(std::vector<std::string> frames, TraceVerification v = TraceVerification::kOrcChain) {
  KernelTrace t;
  t.frames = std::move(frames);
  t.verification = v;
  t.pid = 405;
  t.comm = "spinwait/2";
  return t;
}

// The spinlock frame of a trace (lock_wait_frame's, when the lock is a spinlock).
std::optional<std::string> spinlock_wait_frame(const KernelTrace& t) {
  auto f = lock_wait_frame(t);
  if (f && f->lock == "a spinlock") return f->frame;
  return std::nullopt;
}

// What the live 6.1 guest showed for spinhold.ko's CPUs (with module frames). The holder's
// innermost frames are stale - the printk it called before taking the lock - yet chain into its
// live ones: nothing about the lock it holds shows.
const std::vector<std::string> kWaiterFrames = {"_raw_spin_lock_irqsave+0x39/0x50",
                                                "waiter_fn+0x12/0x3f [spinhold]", "kthread+0xda/0x100",
                                                "ret_from_fork+0x22/0x30"};
const std::vector<std::string> kHolderFrames = {
    "desc_read_finalized_seq+0x37/0xa0", "_prb_read_valid+0x25a/0x2d0", "prb_read_valid+0x17/0x20",
    "console_unlock+0x17f/0x1d0",        "vprintk_emit+0x200/0x290",    "_printk+0x68/0x83",
    "holder_fn+0x24/0x32 [spinhold]",    "kthread+0xda/0x100",          "ret_from_fork+0x22/0x30"};

TEST(SpinlockWaitFrame, InnermostFrameInTheLockPath) {
  // With interrupts off: the return address into the lock entry that called the slow path.
  EXPECT_EQ(spinlock_wait_frame(trace(kWaiterFrames)), "_raw_spin_lock_irqsave+0x39/0x50");
  // With interrupts on: an interrupt frame caught the slow path itself.
  EXPECT_EQ(spinlock_wait_frame(trace({"native_queued_spin_lock_slowpath+0x6e/0x2c0", "_raw_spin_lock+0x29/0x30",
                                       "d_alloc_parallel+0x1a0/0x4e0"},
                                      TraceVerification::kInterruptFrame)),
            "native_queued_spin_lock_slowpath+0x6e/0x2c0");
  // A paravirt waiter halted in its slow path: the halt helpers in front are skipped.
  EXPECT_EQ(spinlock_wait_frame(trace({"kvm_wait+0x55/0x70", "__pv_queued_spin_lock_slowpath+0x2d5/0x310",
                                       "_raw_spin_lock_irq+0x2d/0x30"})),
            "__pv_queued_spin_lock_slowpath+0x2d5/0x310");
  EXPECT_EQ(spinlock_wait_frame(trace({"do_raw_spin_lock+0x6a/0xc0", "_raw_spin_lock+0x3a/0x50"})),
            "do_raw_spin_lock+0x6a/0xc0");
}

// Read while the CPU served an interrupt on its hardirq stack: the interrupt returns to where it
// came in, and that is where the CPU spins; a spinlock taken in the handler itself is innermost.
TEST(SpinlockWaitFrame, ThroughAnInterruptServedOnTheHardirqStack) {
  KernelTrace t = trace({"hrtimer_interrupt+0x10e/0x240 (irq stack)", "sysvec_apic_timer_interrupt+0x8f/0xb0 (irq stack)",
                         "asm_sysvec_apic_timer_interrupt+0x1a/0x20", "native_queued_spin_lock_slowpath+0x6e/0x2c0",
                         "_raw_spin_lock+0x29/0x30", "d_alloc_parallel+0x1a0/0x4e0"});
  EXPECT_FALSE(spinlock_wait_frame(t)) << "without knowing where the interrupt came in";
  t.irq_frames = 2;
  t.interrupted = 3;
  EXPECT_EQ(spinlock_wait_frame(t), "native_queued_spin_lock_slowpath+0x6e/0x2c0");
  // Where it came in is no lock path: no lock wait (a lock entry further out is one it returned from).
  t.frames[3] = "console_unlock+0x1a/0x30";
  EXPECT_FALSE(spinlock_wait_frame(t));
  // The handler spins on a lock itself.
  KernelTrace h = trace({"_raw_spin_lock+0x29/0x30 (irq stack)", "handle_edge_irq+0x20/0x200 (irq stack)",
                         "__common_interrupt+0x40/0xb0 (irq stack)", "common_interrupt+0x80/0xa0 (irq stack)",
                         "asm_common_interrupt+0x26/0x40", "default_idle+0x10/0x20"});
  h.irq_frames = 4;
  h.interrupted = 5;
  EXPECT_EQ(spinlock_wait_frame(h), "_raw_spin_lock+0x29/0x30 (irq stack)");
}

TEST(SpinlockWaitFrame, NotALockWait) {
  EXPECT_FALSE(spinlock_wait_frame(trace(kHolderFrames)));
  // A lock entry deeper than the innermost frame: the CPU returned from it (stale, or it holds it).
  EXPECT_FALSE(spinlock_wait_frame(trace({"console_unlock+0x1a/0x30", "_raw_spin_lock_irqsave+0x39/0x50",
                                          "vprintk_emit+0x10/0x200"})));
  // Unlock, trylock and names that merely begin like a lock entry.
  EXPECT_FALSE(spinlock_wait_frame(trace({"_raw_spin_unlock_irqrestore+0x1a/0x30"})));
  EXPECT_FALSE(spinlock_wait_frame(trace({"_raw_spin_trylock+0x1a/0x30"})));
  EXPECT_FALSE(spinlock_wait_frame(trace({"_raw_spin_lock_irqsave_x+0x1/0x2"})));
  // Halting alone is idle, not a lock wait.
  EXPECT_FALSE(spinlock_wait_frame(trace({"native_safe_halt+0xb/0x10", "default_idle+0x9/0x20"})));
  // An unverified scan's innermost frame may be stale; a trace that errs says nothing.
  EXPECT_FALSE(spinlock_wait_frame(trace(kWaiterFrames, TraceVerification::kUnverified)));
  KernelTrace failed = trace(kWaiterFrames);
  failed.error = "backtrace: stack of task 0xffff888003a40000: unmapped";
  EXPECT_FALSE(spinlock_wait_frame(failed));
  EXPECT_FALSE(spinlock_wait_frame(trace({})));
}

// infer_lock_waits over plain inputs: slack 4 s (thresh 5: period 2 s + 2 s).
class Infer : public ::testing::Test {
 protected:
  static constexpr Duration kSlack = 4s;
  LockCpu cpu(int n, std::optional<Duration> age, const KernelTrace* tr, bool is_idle = false) {
    LockCpu c;
    c.cpu = n;
    c.touch_age = age;
    c.trace = tr;
    c.idle = is_idle;
    return c;
  }
  KernelTrace waiter = trace(kWaiterFrames);
  KernelTrace holder = trace(kHolderFrames);
  KernelTrace idle = trace({"default_idle_call+0x2a/0x100", "do_idle+0x1e6/0x260"});
};

TEST_F(Infer, TheOnlyOtherStuckCpuIsTheHolder) {
  // CPU0 idle, CPU3 healthy (touched 1 s ago), CPU1 stuck since before CPU2 began to spin.
  auto w = infer_lock_waits({cpu(0, 30s, &idle, true), cpu(1, 12s, &holder), cpu(2, 11s, &waiter), cpu(3, 1s, nullptr)},
                            kSlack);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].waiter, 2);
  EXPECT_EQ(w[0].frame, "_raw_spin_lock_irqsave+0x39/0x50");
  EXPECT_EQ(w[0].holder, 1);
  EXPECT_EQ(w[0].candidates, std::vector<int>{1});
  EXPECT_NE(w[0].how.find("inferred: CPU1 is the only other CPU stuck since CPU2 began to spin"), std::string::npos)
      << w[0].how;
  // The holder's touch can be up to one slack younger than the waiter's (granularity, period).
  w = infer_lock_waits({cpu(1, 8s, &holder), cpu(2, 11s, &waiter)}, kSlack);
  EXPECT_EQ(w[0].holder, 1);
}

TEST_F(Infer, TwoCandidatesAreNoEdge) {
  KernelTrace other = trace({"irqoff_fn+0x1/0x2 [irqoff]", "kthread+0xda/0x100"});
  auto w = infer_lock_waits({cpu(1, 12s, &holder), cpu(2, 11s, &waiter), cpu(3, 20s, &other)}, kSlack);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_FALSE(w[0].holder);
  EXPECT_EQ(w[0].candidates, (std::vector<int>{1, 3}));
  EXPECT_NE(w[0].how.find("not determined: CPU1, CPU3 could each hold it"), std::string::npos) << w[0].how;
  // A CPU whose progress is unknown (no watchdog) could be the holder as well.
  w = infer_lock_waits({cpu(1, 12s, &holder), cpu(2, 11s, &waiter), cpu(3, std::nullopt, nullptr)}, kSlack);
  EXPECT_FALSE(w[0].holder);
  EXPECT_EQ(w[0].candidates, (std::vector<int>{1, 3}));
}

TEST_F(Infer, TheOnlyCandidateWithoutAReadableTraceIsNoEdge) {
  KernelTrace failed;
  failed.error = "backtrace: no ORC entry";
  for (const KernelTrace* h : {static_cast<const KernelTrace*>(nullptr), static_cast<const KernelTrace*>(&failed)}) {
    auto w = infer_lock_waits({cpu(1, 12s, h), cpu(2, 11s, &waiter)}, kSlack);
    ASSERT_EQ(w.size(), 1u);
    EXPECT_FALSE(w[0].holder);
    EXPECT_EQ(w[0].candidates, std::vector<int>{1});
    EXPECT_NE(w[0].how.find("whether it waits on a lock itself is unknown"), std::string::npos) << w[0].how;
  }
  KernelTrace unverified = trace(kHolderFrames, TraceVerification::kUnverified);
  EXPECT_FALSE(infer_lock_waits({cpu(1, 12s, &unverified), cpu(2, 11s, &waiter)}, kSlack)[0].holder);
}

TEST_F(Infer, ACpuThatRanItsWatchdogSinceTheWaiterBeganIsNoCandidate) {
  // CPU1's touch is 6 s younger than the waiter's: it scheduled while CPU2 spun.
  auto w = infer_lock_waits({cpu(1, 5s, &holder), cpu(2, 11s, &waiter)}, kSlack);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_FALSE(w[0].holder);
  EXPECT_TRUE(w[0].candidates.empty());
}

TEST_F(Infer, ACpuInACsdWaitIsNoCandidate) {
  // CPU0 waits for an IPI (its stall is that wait's): CPU1 is the only candidate left.
  KernelTrace csd = trace({"smp_call_function_many_cond+0xf1/0x330", "on_each_cpu_cond_mask+0x20/0x40"},
                          TraceVerification::kInterruptFrame);
  LockCpu c0 = cpu(0, 20s, &csd);
  c0.csd_waiting = true;
  auto w = infer_lock_waits({c0, cpu(1, 12s, &holder), cpu(2, 11s, &waiter)}, kSlack);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].holder, 1);
  c0.csd_waiting = false;  // control: the same CPU, not known to wait on an IPI
  EXPECT_FALSE(infer_lock_waits({c0, cpu(1, 12s, &holder), cpu(2, 11s, &waiter)}, kSlack)[0].holder);
}

TEST_F(Infer, TooEarlyOrUnknownSpinIsListedWithoutAHolder) {
  auto w = infer_lock_waits({cpu(1, 9s, &holder), cpu(2, 7s, &waiter)}, kSlack);  // < 2 x slack
  ASSERT_EQ(w.size(), 1u);
  EXPECT_FALSE(w[0].holder);
  EXPECT_NE(w[0].how.find("too early"), std::string::npos) << w[0].how;
  w = infer_lock_waits({cpu(1, 12s, &holder), cpu(2, std::nullopt, &waiter)}, kSlack);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_FALSE(w[0].holder);
}

TEST_F(Infer, WaitersAreNoCandidatesOfEachOther) {
  // Two CPUs spin on locks (the same one or an ABBA pair): with CPU1 stuck too, both wait on it;
  // without it, nobody is named.
  KernelTrace waiter3 = trace({"_raw_spin_lock+0x29/0x30", "d_alloc_parallel+0x1a0/0x4e0"});
  auto w = infer_lock_waits({cpu(1, 12s, &holder), cpu(2, 11s, &waiter), cpu(3, 10s, &waiter3)}, kSlack);
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].holder, 1);
  EXPECT_EQ(w[1].holder, 1);
  w = infer_lock_waits({cpu(2, 11s, &waiter), cpu(3, 10s, &waiter3)}, kSlack);
  ASSERT_EQ(w.size(), 2u);
  EXPECT_FALSE(w[0].holder);
  EXPECT_FALSE(w[1].holder);
}

// ---------------------------------------------------------------------------------------------
// The engine: spinhold.ko's shape. CPU1 takes the lock with interrupts off and spins; a second
// later CPU2 contends with interrupts off too. Both vCPUs run; neither takes a timer interrupt
// nor runs its watchdog thread.
class SpinlockSim : public ::testing::Test {
 protected:
  SpinlockSim() : sim(4) {
    sim.guest.watchdog_thresh = 5;
    sim.run(5s);  // the watchdogs seen running
    sim.run_task(1, "spinhold/1", 404);
    stick(1);
    sim.run(1s);
    sim.run_task(2, "spinwait/2", 405);
    stick(2);
    sim.cpus[1].view.kernel_trace = trace(kHolderFrames);
    sim.cpus[2].view.kernel_trace = trace(kWaiterFrames);
  }
  void stick(int cpu) {
    sim.vcpus[cpu].run(0.9);
    sim.cpus[cpu].timer_on = sim.cpus[cpu].touch_on = false;
  }
  const Finding* find(const std::vector<Finding>& all, FindingKind kind, int cpu) {
    for (const auto& f : all)
      if (f.kind == kind && f.cpus == std::vector<int>{cpu}) return &f;
    return nullptr;
  }
  static const Evidence* lock_evidence(const Finding& f) {
    for (const auto& e : f.evidence)
      if (e.lock_wait) return &e;
    return nullptr;
  }
  Sim sim;
};

TEST_F(SpinlockSim, HolderIsTheRootAndTheWaiterItsSymptom) {
  sim.run(15s);
  const auto all = sim.engine.active_findings();
  const Finding* h = find(all, FindingKind::kGuestIrqsOff, 1);
  const Finding* w = find(all, FindingKind::kGuestIrqsOff, 2);
  ASSERT_NE(h, nullptr);
  ASSERT_NE(w, nullptr);
  EXPECT_TRUE(h->is_incident_root());
  EXPECT_EQ(w->explained_by, h->id);
  EXPECT_GE(w->onset, h->onset) << "a symptom starts no earlier than its cause";
  EXPECT_EQ(w->incident_id, h->id);
  EXPECT_NE(std::find(h->symptom_ids.begin(), h->symptom_ids.end(), w->id), h->symptom_ids.end());
  EXPECT_TRUE(contains(w->summary, "It spins on a spinlock that CPU1 holds (see GUEST_IRQS_OFF on CPU1).")) << w->summary;
  for (const Finding* f : {h, w}) {
    const Evidence* e = lock_evidence(*f);
    ASSERT_NE(e, nullptr) << f->id;
    EXPECT_EQ(e->lock_wait->waiter_cpu, 2);
    EXPECT_EQ(e->lock_wait->holder_cpu, 1);
    EXPECT_EQ(e->lock_wait->frame, "_raw_spin_lock_irqsave+0x39/0x50");
    const auto api = evidence_facts(*e);
    EXPECT_EQ(api.at("lock_waiter_cpu"), "2");
    EXPECT_EQ(api.at("lock_holder_cpu"), "1");
    EXPECT_EQ(api.at("lock_frame"), "_raw_spin_lock_irqsave+0x39/0x50");
    EXPECT_TRUE(contains(e->text, "CPU2 spins on a spinlock (_raw_spin_lock_irqsave+0x39/0x50) held by CPU1 (inferred"))
        << e->text;
  }
  // Every finding on CPU2 (its soft lockup too) belongs to CPU1's incident: CPU2 is no root.
  for (const auto& f : all)
    if (f.cpus == std::vector<int>{2}) {
      EXPECT_EQ(f.incident_id, h->id) << f.id;
    }
}

TEST_F(SpinlockSim, ControlWithoutTheLockFrameBothAreRoots) {
  sim.cpus[2].view.kernel_trace = trace({"kthread+0xda/0x100", "ret_from_fork+0x22/0x30"});
  sim.run(15s);
  const auto all = sim.engine.active_findings();
  const Finding* w = find(all, FindingKind::kGuestIrqsOff, 2);
  ASSERT_NE(w, nullptr);
  EXPECT_TRUE(w->is_incident_root());
  EXPECT_EQ(lock_evidence(*w), nullptr);
}

TEST_F(SpinlockSim, TwoCandidateHoldersAreNoEdge) {
  sim.run_task(3, "irqoff/3", 406);
  stick(3);
  sim.cpus[3].view.kernel_trace = trace({"kthread+0xda/0x100", "ret_from_fork+0x22/0x30"});
  sim.run(15s);
  const auto all = sim.engine.active_findings();
  const Finding* w = find(all, FindingKind::kGuestIrqsOff, 2);
  ASSERT_NE(w, nullptr);
  EXPECT_TRUE(w->explained_by.empty());
  EXPECT_TRUE(w->is_incident_root());
  const Evidence* e = lock_evidence(*w);
  ASSERT_NE(e, nullptr) << "the waiter is still listed";
  EXPECT_FALSE(e->lock_wait->holder_cpu);
  EXPECT_EQ(e->lock_wait->holder_candidates, (std::vector<int>{1, 3}));
  EXPECT_EQ(evidence_facts(*e).count("lock_holder_cpu"), 0u);
  EXPECT_EQ(evidence_facts(*e).at("lock_holder_candidates"), "1,3");
  EXPECT_TRUE(contains(e->text, "its holder is not determined: CPU1, CPU3 could each hold it")) << e->text;
  EXPECT_EQ(lock_evidence(*find(all, FindingKind::kGuestIrqsOff, 1)), nullptr);
}

TEST_F(SpinlockSim, HolderTraceThatErrsIsNoEdge) {
  KernelTrace failed;
  failed.error = "backtrace: stack of task 0xffff888003a40000: unmapped";
  sim.cpus[1].view.kernel_trace = failed;
  sim.run(15s);
  const auto all = sim.engine.active_findings();
  const Finding* w = find(all, FindingKind::kGuestIrqsOff, 2);
  ASSERT_NE(w, nullptr);
  EXPECT_TRUE(w->is_incident_root()) << w->explained_by;
  ASSERT_NE(lock_evidence(*w), nullptr);
  EXPECT_FALSE(lock_evidence(*w)->lock_wait->holder_cpu);
}

TEST_F(SpinlockSim, AWaiterTraceThatErrsIsNoLockWait) {
  KernelTrace failed;
  failed.error = "backtrace: no ORC entry";
  sim.cpus[2].view.kernel_trace = failed;
  sim.run(15s);
  const auto all = sim.engine.active_findings();  // alive while w points into it
  const Finding* w = find(all, FindingKind::kGuestIrqsOff, 2);
  ASSERT_NE(w, nullptr);
  EXPECT_TRUE(w->is_incident_root());
  EXPECT_EQ(lock_evidence(*w), nullptr);
}

TEST_F(SpinlockSim, ACsdWaitOnTheWaiterLeadsToTheHolder) {
  // CPU0 sends CPU2 an IPI and waits: CPU2 cannot take it, and waits on CPU1's lock.
  sim.run_task(0, "sh", 107);
  sim.csd_wait(0, 2, "do_flush_tlb_all");
  sim.cpus[0].touch_on = false;
  sim.run(15s);
  auto ipi = sim.active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  const Evidence* roots = nullptr;
  for (const auto& e : ipi[0].evidence)
    if (e.wait_roots) roots = &e;
  ASSERT_NE(roots, nullptr);
  EXPECT_EQ(roots->wait_roots->roots, (std::vector<int>{1}));
  EXPECT_EQ(roots->wait_roots->waiters, (std::vector<int>{0, 2}));
  EXPECT_EQ(ipi[0].cpus, (std::vector<int>{0, 1, 2}));
  ASSERT_NE(lock_evidence(ipi[0]), nullptr);
  EXPECT_EQ(lock_evidence(ipi[0])->lock_wait->holder_cpu, 1);
}

// ---------------------------------------------------------------------------------------------
// Timekeeping (found by CI: alerting_prometheus_test, 2026-12-05). The host froze vCPU2 while its
// CPU, idle, served its tick and updated the time (tk_core.seq held for writing); CPU0, woken
// from idle by its timer, then retried ktime_get for 33 s with interrupts off: a second root
// alert, "cause: guest", for what the host's freeze did.
const std::vector<std::string> kTimeReaderFrames = {
    "ktime_get+0x3b/0xa0 (irq stack)", "tick_irq_enter+0x31/0xb0 (irq stack)",
    "sysvec_apic_timer_interrupt+0x61/0x90 (irq stack)", "asm_sysvec_apic_timer_interrupt+0x16/0x20",
    "native_safe_halt+0xb/0x10", "default_idle_call+0x38/0xf0", "do_idle+0x206/0x2b0"};
const std::vector<std::string> kTimeWriterFrames = {
    "timekeeping_advance+0x2b5/0x5d0 (irq stack)", "tick_do_update_jiffies64+0xa3/0xf0 (irq stack)",
    "tick_irq_enter+0x6f/0xb0 (irq stack)", "sysvec_apic_timer_interrupt+0x61/0x90 (irq stack)",
    "asm_sysvec_apic_timer_interrupt+0x16/0x20", "native_safe_halt+0xb/0x10", "default_idle_call+0x38/0xf0",
    "do_idle+0x206/0x2b0"};

KernelTrace irq_trace(std::vector<std::string> frames, std::size_t irq_frames) {
  KernelTrace t = trace(std::move(frames));
  t.irq_frames = irq_frames;
  t.interrupted = irq_frames + 1;  // native_safe_halt, past the entry stub
  t.pid = 0;
  t.comm = "swapper";
  return t;
}

TEST(LockWaitFrame, ATimekeepingReadRetriesOnTheSeqcount) {
  auto f = lock_wait_frame(irq_trace(kTimeReaderFrames, 3));
  ASSERT_TRUE(f);
  EXPECT_EQ(f->frame, "ktime_get+0x3b/0xa0 (irq stack)");
  EXPECT_EQ(f->lock, "the timekeeping seqcount (tk_core.seq)");
  // Inside the clocksource read it calls in its loop.
  f = lock_wait_frame(trace({"read_tsc+0x9/0x20", "ktime_get_update_offsets_now+0x5a/0x110", "hrtimer_interrupt+0x7e/0x230"}));
  ASSERT_TRUE(f);
  EXPECT_EQ(f->frame, "ktime_get_update_offsets_now+0x5a/0x110");
  // A clocksource read alone, or the writer, is no wait.
  EXPECT_FALSE(lock_wait_frame(trace({"read_tsc+0x9/0x20", "clocksource_watchdog+0x8a/0x2e0"})));
  EXPECT_FALSE(lock_wait_frame(irq_trace(kTimeWriterFrames, 4)));
}

TEST(ServesInterrupt, FromTheIrqStackOrAnInterruptFrame) {
  EXPECT_TRUE(serves_interrupt(irq_trace(kTimeWriterFrames, 4)));
  KernelTrace on_task_stack = trace({"timekeeping_advance+0x2b5/0x5d0", "native_safe_halt+0xb/0x10"});
  on_task_stack.interrupted = 1;
  EXPECT_TRUE(serves_interrupt(on_task_stack));
  EXPECT_FALSE(serves_interrupt(trace({"native_safe_halt+0xb/0x10", "default_idle_call+0x38/0xf0"})));
  KernelTrace unverified = irq_trace(kTimeWriterFrames, 4);
  unverified.verification = TraceVerification::kUnverified;
  EXPECT_FALSE(serves_interrupt(unverified)) << "an unverified scan's frames may be stale";
}

// The engine, in CI's shape: vCPU2 frozen by the host while CPU2 updates the time from its tick;
// CPU0 (idle, woken by its timer) retries ktime_get with interrupts off from a second later.
class TimekeepingSim : public ::testing::Test {
 protected:
  TimekeepingSim() : sim(4) {
    sim.guest.watchdog_thresh = 5;
    sim.run(5s);
    sim.vcpus[2].block(ThreadState::kDiskSleep, "__refrigerator", {"__refrigerator", "get_signal"});
    sim.cpus[2].timer_on = sim.cpus[2].touch_on = false;
    sim.run(1s);
    sim.vcpus[0].run(0.6);
    sim.cpus[0].timer_on = sim.cpus[0].touch_on = false;
    sim.cpus[0].view.kernel_trace = irq_trace(kTimeReaderFrames, 3);
  }
  std::optional<Finding> only(FindingKind kind, int cpu) {
    std::optional<Finding> out;
    for (const auto& f : sim.engine.active_findings())
      if (f.kind == kind && f.cpus == std::vector<int>{cpu}) {
        EXPECT_FALSE(out) << "two " << to_string(kind) << " on CPU" << cpu;
        out = f;
      }
    return out;
  }
  std::vector<Finding> roots() {
    std::vector<Finding> r;
    for (const auto& f : sim.engine.active_findings())
      if (f.is_incident_root()) r.push_back(f);
    return r;
  }
  Sim sim;
};

TEST_F(TimekeepingSim, TheReaderIsASymptomOfTheFrozenWriter) {
  sim.cpus[2].view.kernel_trace = irq_trace(kTimeWriterFrames, 4);
  sim.run(20s);
  const auto blocked = only(FindingKind::kVcpuHostBlocked, 2);
  ASSERT_TRUE(blocked);
  const auto reader = only(FindingKind::kGuestIrqsOff, 0);
  ASSERT_TRUE(reader);
  EXPECT_EQ(reader->incident_id, blocked->id);
  EXPECT_FALSE(reader->is_incident_root());
  EXPECT_TRUE(contains(reader->summary, "It spins on the timekeeping seqcount (tk_core.seq) that CPU2 holds"))
      << reader->summary;
  const auto r = roots();
  ASSERT_EQ(r.size(), 1u) << "one fault, one root";
  EXPECT_EQ(r[0].id, blocked->id);
}

TEST_F(TimekeepingSim, ACsdWaitOnTheReaderBelongsToTheFrozenWritersIncident) {
  // CPU1 sends CPU0 a TLB shootdown: CPU0, retrying ktime_get with interrupts off, cannot take it.
  sim.cpus[2].view.kernel_trace = irq_trace(kTimeWriterFrames, 4);
  sim.run_task(1, "ipiload", 301);
  sim.csd_wait(1, 0, "flush_tlb_func");
  sim.cpus[1].touch_on = false;
  sim.run(20s);
  const auto blocked = only(FindingKind::kVcpuHostBlocked, 2);
  ASSERT_TRUE(blocked);
  auto ipi = sim.active(FindingKind::kGuestIpiStall);
  ASSERT_EQ(ipi.size(), 1u);
  EXPECT_EQ(ipi[0].incident_id, blocked->id) << ipi[0].summary;
  const auto r = roots();
  ASSERT_EQ(r.size(), 1u) << "one fault, one root";
  EXPECT_EQ(r[0].id, blocked->id);
  EXPECT_NE(std::find(r[0].symptom_ids.begin(), r[0].symptom_ids.end(), ipi[0].id), r[0].symptom_ids.end())
      << "the IPI stall is listed on the root (the alert summarises it)";
}

TEST_F(TimekeepingSim, ControlAnIdleWriterOutsideAnInterruptHoldsNothing) {
  // CPU2 frozen in its idle loop (no interrupt): it holds no lock, so CPU0's stall stays its own.
  sim.cpus[2].view.kernel_trace = trace({"native_safe_halt+0xb/0x10", "default_idle_call+0x38/0xf0", "do_idle+0x206/0x2b0"});
  sim.run(20s);
  const auto reader = only(FindingKind::kGuestIrqsOff, 0);
  ASSERT_TRUE(reader);
  EXPECT_TRUE(reader->is_incident_root());
  EXPECT_EQ(roots().size(), 2u);
}

}  // namespace
}  // namespace stallmon::diagnosis::testing
