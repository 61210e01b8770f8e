// SPDX-License-Identifier: Apache-2.0
#include "lock_waits.h"

#include <algorithm>
#include <string_view>

namespace stallmon::diagnosis {

namespace {

// Functions a CPU is in while it spins for a spinlock, matched by name on the trace's innermost
// live frame. x86 qspinlocks (Debian 6.1 and 6.12): spin_lock*() is an out-of-line
// _raw_spin_lock*() whose fast path is one cmpxchg; a contended lock calls the slow path, a leaf
// that spins (cpu_relax) on the lock word or its MCS node.
constexpr std::string_view kSpinlockPath[] = {
    // The slow path itself: seen only as the interrupted RIP of an interrupt frame (a leaf leaves
    // no return address), i.e. a waiter spinning with interrupts on (spin_lock, spin_lock_bh).
    "native_queued_spin_lock_slowpath",  // x86 without paravirt spinlocks in use (TCG, bare metal)
    "__pv_queued_spin_lock_slowpath",    // the same under KVM paravirt spinlocks
    "queued_spin_lock_slowpath",         // the generic name (kernels without CONFIG_PARAVIRT_SPINLOCKS)
    // The out-of-line lock entries. With interrupts off (spin_lock_irq, spin_lock_irqsave) the
    // slow path takes no interrupt, so the innermost frame a stack shows is the return address
    // into the entry that called it - its only callee. Measured on the live 6.1 guest
    // (spinhold.ko's waiter): `_raw_spin_lock_irqsave+0x39/0x50 <- waiter_fn+0x12/0x3f [spinhold]
    // <- kthread <- ret_from_fork`. The _nested forms are lockdep's.
    "_raw_spin_lock",
    "_raw_spin_lock_irq",
    "_raw_spin_lock_irqsave",
    "_raw_spin_lock_bh",
    "_raw_spin_lock_nested",
    "_raw_spin_lock_irqsave_nested",
    "do_raw_spin_lock",  // CONFIG_DEBUG_SPINLOCK: the out-of-line lock that calls the slow path
};

// What a paravirt waiter's slow path calls while it halts until kicked: skipped (at most two) in
// front of the lock frame. Never a lock frame on their own (idle halts too).
constexpr std::string_view kSpinHelpers[] = {"kvm_wait", "pv_wait", "native_safe_halt", "native_halt"};
constexpr std::size_t kMaxHelpers = 2;

// Timekeeping reads (kernel/time/timekeeping.c): each is a read_seqcount_begin/retry loop on
// tk_core.seq, inlined, around a clocksource read. A CPU stuck in one retries because a writer
// (timekeeping_advance from the tick, do_settimeofday64, ...) is inside its write section, which
// it holds with timekeeper_lock and interrupts off. Seen in CI: a guest CPU stuck for 33 s in
// `ktime_get <- tick_irq_enter <- sysvec_apic_timer_interrupt` (irq stack) while the vCPU of the
// CPU updating the time from its tick was frozen by the host.
constexpr std::string_view kTimekeepingReads[] = {
    "ktime_get",          "ktime_get_update_offsets_now", "ktime_get_with_offset", "ktime_get_raw",
    "ktime_get_ts64",     "ktime_get_real_ts64",          "ktime_get_raw_ts64",    "ktime_get_coarse_real_ts64",
    "ktime_get_coarse_ts64", "ktime_get_coarse_with_offset", "ktime_get_seconds",  "ktime_get_real_seconds",
};
// Clocksource reads a timekeeping read calls inside its loop: skipped (at most two) in front of it.
constexpr std::string_view kClockReads[] = {"read_tsc", "kvm_clock_read", "kvm_clock_get_cycles",
                                            "pvclock_clocksource_read", "pvclock_clocksource_read_nowd",
                                            "acpi_pm_read", "read_hpet"};

// "fn+0x1/0x2 [mod]" -> "fn"
std::string_view function_of(std::string_view frame) {
  const auto end = frame.find_first_of("+ ");
  return end == std::string_view::npos ? frame : frame.substr(0, end);
}

template <std::size_t N>
bool in(const std::string_view (&table)[N], std::string_view fn) {
  return std::find(std::begin(table), std::end(table), fn) != std::end(table);
}

}  // namespace

std::optional<LockFrame> lock_wait_frame(const KernelTrace& trace) {
  if (!trace.verified()) return std::nullopt;
  // The frame at `i`, after at most kMaxHelpers of `helpers`, when it is one of `path`.
  auto match = [&](std::size_t i, auto& helpers, auto& path) -> std::optional<std::string> {
    const std::size_t first = i;
    while (i < trace.frames.size() && i - first < kMaxHelpers && in(helpers, function_of(trace.frames[i]))) ++i;
    if (i < trace.frames.size() && in(path, function_of(trace.frames[i]))) return trace.frames[i];
    return std::nullopt;
  };
  auto from = [&](std::size_t i) -> std::optional<LockFrame> {
    if (auto f = match(i, kSpinHelpers, kSpinlockPath)) return LockFrame{std::move(*f), "a spinlock"};
    if (auto f = match(i, kClockReads, kTimekeepingReads))
      return LockFrame{std::move(*f), "the timekeeping seqcount (tk_core.seq)"};
    return std::nullopt;
  };
  if (auto f = from(0)) return f;  // spinning where it is (an IRQ handler's spinlock included)
  // Read while serving an interrupt on the hardirq stack: the interrupt returns to where it came
  // in, so that is where the CPU spins (as for an interrupt frame on the task stack).
  if (trace.irq_frames > 0 && trace.interrupted && *trace.interrupted >= trace.irq_frames) return from(*trace.interrupted);
  return std::nullopt;
}

bool serves_interrupt(const KernelTrace& trace) {
  return trace.verified() && (trace.irq_frames > 0 || trace.interrupted.has_value());
}

std::vector<LockWait> infer_lock_waits(const std::vector<LockCpu>& cpus, Duration slack) {
  std::vector<LockWait> out;
  std::vector<bool> waiting(cpus.size(), false);
  for (std::size_t i = 0; i < cpus.size(); ++i) {
    if (!cpus[i].online || cpus[i].trace == nullptr) continue;
    if (auto frame = lock_wait_frame(*cpus[i].trace)) {
      waiting[i] = true;
      LockWait w;
      w.waiter = cpus[i].cpu;
      w.frame = std::move(frame->frame);
      w.lock = std::move(frame->lock);
      out.push_back(std::move(w));
    }
  }
  for (LockWait& w : out) {
    const auto self = std::find_if(cpus.begin(), cpus.end(), [&](const LockCpu& c) { return c.cpu == w.waiter; });
    const std::optional<Duration> age = self->touch_age;
    if (!age || *age < 2 * slack) {
      w.how = age ? "too early to tell who holds it: CPU" + std::to_string(w.waiter) + " has spun only " +
                        format_duration(*age)
                  : "its watchdog does not run, so how long it has spun is unknown";
      continue;
    }
    std::vector<int> unknown;  // candidates whose progress is unknown
    for (std::size_t i = 0; i < cpus.size(); ++i) {
      const LockCpu& c = cpus[i];
      if (c.cpu == w.waiter || !c.online || c.idle || c.csd_waiting || waiting[i]) continue;
      if (!c.touch_age) {
        w.candidates.push_back(c.cpu);
        unknown.push_back(c.cpu);
      } else if (*c.touch_age + slack >= *age) {
        w.candidates.push_back(c.cpu);
      }
    }
    std::sort(w.candidates.begin(), w.candidates.end());
    w.candidates.erase(std::unique(w.candidates.begin(), w.candidates.end()), w.candidates.end());
    auto cpu_names = [](const std::vector<int>& v) {
      std::string s;
      for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", CPU" : "CPU") + std::to_string(v[i]);
      return s;
    };
    if (w.candidates.empty()) {
      w.how = "no other CPU has been stuck since it began to spin (the holder may itself wait on a lock)";
      continue;
    }
    if (w.candidates.size() > 1) {
      w.how = "not determined: " + cpu_names(w.candidates) + " could each hold it";
      continue;
    }
    const int h = w.candidates.front();
    const LockCpu& hc = *std::find_if(cpus.begin(), cpus.end(), [&](const LockCpu& c) { return c.cpu == h; });
    if (!unknown.empty() || hc.trace == nullptr || !hc.trace->verified()) {
      w.how = "not determined: CPU" + std::to_string(h) + " is the only other stuck CPU, but " +
              (unknown.empty() ? "its trace could not be read or verified" : "its watchdog does not run") +
              ", so whether it waits on a lock itself is unknown";
      continue;
    }
    w.holder = h;
    w.how = "inferred: CPU" + std::to_string(h) + " is the only other CPU stuck since CPU" + std::to_string(w.waiter) +
            " began to spin (its watchdog thread has not run for " + format_duration(*hc.touch_age) +
            ") and its trace is not in a lock path; a qspinlock records no owner";
  }
  return out;
}

}  // namespace stallmon::diagnosis
