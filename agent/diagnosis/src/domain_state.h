// SPDX-License-Identifier: Apache-2.0
// Per-domain state the engine keeps across ticks: host thread trackers (progress, windows),
// guest CPU trackers (idle-with-work, hrtimer progress, watchdog touch), csd waits over time,
// and the sticky panic state. Internal to the engine.
#pragma once

#include <compare>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "console.h"
#include "guest_clock.h"
#include "stallmon/diagnosis/observation.h"

namespace stallmon::diagnosis {

struct HostSamplePoint {
  Timestamp at{};
  Duration run_time{0};
  Duration run_delay{0};
  std::optional<uint64_t> nr_throttled;
  std::optional<Duration> throttled_time;
};

struct WindowStats {
  Duration span{0};
  double run_fraction = 0;        // run time / wall time
  double steal_fraction = 0;      // run delay / wall time
  double throttled_fraction = 0;  // cgroup throttled time / wall time
  uint64_t throttled_count = 0;   // nr_throttled increments
};

struct ThreadTracker {
  HostThreadView latest;
  int vcpu = -1;  // -1: not a vCPU thread
  Timestamp first_seen{};
  Timestamp progress_at{};  // the last tick at which run_time was seen to advance
  Timestamp state_since{};
  std::deque<HostSamplePoint> samples;  // the last starved_window (+ a margin)
  std::optional<Timestamp> starved_since;   // first tick of the current run at >= starved_fraction
  std::optional<Timestamp> starved_clear_since;  // while starved: first tick of the run below the clear level

  // Derived at this tick.
  Duration no_progress{0};
  Duration blocked_for{0};  // D/T/t without progress; 0 otherwise
  bool blocked = false;     // blocked_for >= host_blocked_min
  bool futex_wait = false;  // S in a futex wait without progress >= host_blocked_min
  std::optional<WindowStats> window;
  bool starved = false;     // opened (held for starved_sustain), not yet cleared (hysteresis)
  std::optional<WindowStats> recent;  // over impeded_recent_window
  // The host holds it back: starvation building or open, cgroup throttled in the window, or
  // denied >= suspect_steal_fraction recently or over the window. Never "interrupts off".
  bool impeded = false;
  std::optional<Timestamp> impeded_at;  // the last tick it was impeded
};

// A CPU whose current task's stack end was read as overwritten: since the first snapshot that
// showed it, and which task (kept through snapshots that could not read the word or the task).
struct StackEndCorruption {
  Timestamp since{};
  int pid = 0;
  std::string comm;
  int snapshots = 1;  // consecutive snapshots that read it overwritten (for this task)
};

// The current task's kernel trace over consecutive trace reads (traces.cc): the outer frames
// every one of them shared. Only verified traces count: a stack scan's stale frames stay the
// same from one read to the next, so their sameness confirms nothing.
struct TraceHistory {
  int pid = 0;
  Timestamp taken_at{};             // the last read counted (a trace handed in again counts once)
  bool truncated = false;           // the reads' frames were cut (then all of them were)
  std::vector<std::string> stable;  // the frames common to all `reads` reads, innermost first
  int reads = 1;                    // consecutive reads of this task's trace that showed `stable`
};

struct GuestCpuTracker {
  GuestCpuView latest;
  std::optional<TraceHistory> trace_history;
  std::optional<StackEndCorruption> stack_end;
  std::optional<Timestamp> idle_pending_since;
  int idle_pending_snapshots = 0;
  std::optional<uint64_t> hrtimer;
  Timestamp hrtimer_since{};                  // first snapshot that showed the current value
  std::optional<Duration> run_at_hrtimer_since;  // the vCPU thread's run time then
  std::optional<uint64_t> prev_touch_ts;
  bool touch_growing = false;  // touch_ts unchanged since the previous snapshot
  bool watchdog_seen_running = false;  // hrtimer_interrupts or touch_ts seen to change
  bool took_call_ipi = false;          // its function-call IPI count moved since the last snapshot
  // The reader's watchdog_active if given, else watchdog_seen_running.
  bool watchdog_active() const { return latest.watchdog_active.value_or(watchdog_seen_running); }
};

struct CsdEdgeKey {
  int waiter = -1;
  int target = -1;
  uint64_t csd_address = 0;
  auto operator<=>(const CsdEdgeKey&) const = default;
};

struct CsdEdgeTracker {
  Timestamp first_seen{};  // first of the consecutive snapshots that showed it locked
  std::string function;
  uint32_t flags = 0;
};

struct GuestState {
  GuestView view;
  Timestamp at{};
  GuestClockMap clock;  // this boot's guest clock against host time, one point per snapshot
  std::map<int, GuestCpuTracker> cpus;
  std::map<CsdEdgeKey, CsdEdgeTracker> edges;
};

// One panic of one boot: sticky until the guest resets or reboots (a started / rebooted /
// stopped event, or a new boot seen in memory), whatever single snapshots say in between.
struct PanicState {
  bool active = false;
  Timestamp since{};
  int cpu = -1;
  bool from_event = false;
  std::string event_detail;
  std::optional<uint64_t> clock_at_panic;  // guest running clock when first seen in memory
  std::vector<std::string> printk_tail;
  std::string message;             // "Kernel panic - not syncing: ..." (console.h)
  std::vector<std::string> text;   // the oops/panic block from the console
  std::optional<StackOverflowNote> stack_overflow;  // the block names a kernel stack overflow
  // A new boot seen in memory: a snapshot that read panic_cpu as -1 with a known guest clock
  // below the panic's. Confirmed by the next such snapshot whose clock moved on (a running
  // kernel); the panicked one's clocks stand still.
  std::optional<uint64_t> new_boot_clock;
};

// The latest time the host stopped a vCPU (its VCPU_HOST_BLOCKED finding, or the VM-wide stall),
// kept after the stop ends: a guest stall that began during it (a stale watchdog touch, pending
// work on an idle CPU) shows only once the vCPU runs again, and is a symptom of that stop.
struct HostStop {
  std::string id;  // the finding that reported the stop
  Timestamp onset{}, end{};
  std::string phrase;  // "the whole qemu process is blocked on the host (...)"
};

struct DomainState {
  DomainIdentity identity;
  std::string key;
  std::map<int, ThreadTracker> vcpus;   // by vCPU index
  std::map<int, ThreadTracker> others;  // by tid
  int main_loop_tid = 0;
  std::optional<GuestState> guest;
  std::optional<Timestamp> last_snapshot_at;
  MonitorStatus monitor;
  PanicState panic;
  // Since a started/rebooted/stopped event, no snapshot has read panic_cpu as -1: what memory
  // shows may still be the old boot's RAM (its panic), not the new kernel's.
  bool old_boot_memory = false;
  bool panic_ends_next_tick = false;  // told crashed and reset in one tick: report, then end
  ConsoleLog console;  // this boot's console as seen across snapshots
  bool suspect = false;
  std::map<int, HostStop> last_host_stop;  // by vCPU index
  // This run's first tick and first guest snapshot of the domain: where the re-evaluation of
  // findings restored from a previous run starts (DiagnosisConfig::restored_reevaluate_within).
  std::optional<Timestamp> first_tick_at;
  std::optional<Timestamp> first_guest_tick_at;
};

}  // namespace stallmon::diagnosis
