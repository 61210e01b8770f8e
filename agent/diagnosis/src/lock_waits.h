// SPDX-License-Identifier: Apache-2.0
// Spinning on a lock (issue 12 item 2): which stuck CPUs' kernel traces are in a spinlock's
// contended path, and - where stallmon can tell honestly - which CPU holds that lock. Pure
// functions over plain inputs; the engine wires them into the rules (guest_rules.cc).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "stallmon/diagnosis/observation.h"
#include "stallmon/diagnosis/time.h"

namespace stallmon::diagnosis {

// Where a trace spins for a lock, and which lock.
struct LockFrame {
  std::string frame;  // "_raw_spin_lock_irqsave+0x3a/0x60"
  std::string lock;   // "a spinlock", "the timekeeping seqcount (tk_core.seq)"
};

// The frame of `trace` that shows its CPU spinning for a lock: a spinlock's contended path, or a
// timekeeping read retrying while a writer holds tk_core.seq (and timekeeper_lock). Nullopt for
// a trace that errs, is an unverified stack scan (its innermost frames may be stale), or whose
// innermost frames are not such a path. Only a stuck CPU's trace is asked: a healthy CPU passes
// through these frames all the time.
std::optional<LockFrame> lock_wait_frame(const KernelTrace& trace);

// The CPU serves an interrupt (on the hardirq stack, or through an interrupt frame on its task
// stack): even with the idle task current it may hold a lock, e.g. timekeeping's from the tick.
bool serves_interrupt(const KernelTrace& trace);

// What the engine knows of one guest CPU that could be involved in a lock wait.
struct LockCpu {
  int cpu = -1;
  bool online = true;
  bool idle = false;  // the idle task runs, outside any interrupt: it holds no lock
  // It waits for another CPU to run its IPI (a csd wait in the wait graph): its stall is that
  // wait's, so it is no candidate (see infer_lock_waits).
  bool csd_waiting = false;
  // Guest time since the CPU last ran its watchdog thread (softlockup_touch_age); nullopt when
  // its watchdog does not run or the touch is unreadable - the CPU's progress is then unknown.
  std::optional<Duration> touch_age;
  const KernelTrace* trace = nullptr;  // the CPU's last kernel trace, if the daemon read one
};

struct LockWait {
  int waiter = -1;
  std::string frame;           // the lock frame of its trace
  std::string lock;            // which lock (LockFrame::lock)
  std::optional<int> holder;   // set only when exactly one candidate is left and its trace is read
  std::vector<int> candidates; // CPUs that may hold the lock, sorted
  std::string how;             // how the holder was inferred, or why it was not
};

// One LockWait per CPU whose trace spins on a spinlock. A qspinlock records no owner (its tail
// names the last queued waiter, not the holder), so the holder is inferred by elimination: a CPU
// holding a spinlock has preemption off and cannot run its watchdog thread, so it has been stuck
// at least since the waiter began to spin - its touch at least as stale as the waiter's, less
// `slack` (one watchdog period and the touch's 1-s granularity). The candidates are the online,
// non-idle CPUs other than the waiter that are not themselves spinning on a lock nor waiting for
// an IPI, and are stuck that long, or whose progress is unknown. (A CPU that holds the lock and
// then IPIs the waiter - a lock/IPI deadlock - is thus not named: the wait graph shows its csd
// wait on the waiter instead.) The holder is set only when there is exactly one
// candidate and its own trace was read and is not in a lock path; never a guess among several.
// Nothing is inferred while the waiter's own touch is younger than 2 x slack (a healthy CPU's
// touch can be that old).
std::vector<LockWait> infer_lock_waits(const std::vector<LockCpu>& cpus, Duration slack);

}  // namespace stallmon::diagnosis
