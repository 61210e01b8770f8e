// SPDX-License-Identifier: Apache-2.0
// Thresholds of every rule. The defaults and the reasoning behind them are in
// agent/diagnosis/README.md; keep the two in step.
#pragma once

#include <chrono>
#include <cstddef>

#include "stallmon/diagnosis/time.h"

namespace stallmon::diagnosis {

using namespace std::chrono_literals;

struct DiagnosisConfig {
  // --- VCPU_HOST_BLOCKED / VM_WIDE_STALL -------------------------------------------------
  // A thread in D/T/t without run progress this long is blocked. Short D sleeps (page faults,
  // I/O submission) last micro- to milliseconds and come with run progress in between.
  Duration host_blocked_min = 500ms;

  // --- VCPU_HOST_STARVED ------------------------------------------------------------------
  // Steal (run delay / wall time) over `starved_window`, or cgroup throttled time / wall time.
  // 0.8: a healthy 4-vCPU guest busy on a 2-core host sits at ~0.5 per vCPU; a vCPU capped
  // at 5 ms/100 ms sits at ~0.95.
  double starved_fraction = 0.8;
  Duration starved_window = 3s;
  // ...and it must hold at every tick for this long (so: evidence spans window + sustain).
  Duration starved_sustain = 2s;
  // Hysteresis: once open, the finding stands until the fraction has stayed below
  // `starved_clear_fraction` at every tick for `starved_clear_hold`. A loaded host whose steal
  // hovers around starved_fraction would otherwise open and resolve it every few seconds (seen
  // on real guests: 40 flaps in 5 minutes). 0.6 is the healthy busy guest's ceiling (~0.5 steal
  // per vCPU +- jitter) and suspect_steal_fraction. A value above starved_fraction is treated
  // as starved_fraction (no hysteresis).
  double starved_clear_fraction = 0.6;
  Duration starved_clear_hold = 5s;

  // --- GUEST_IPI_STALL --------------------------------------------------------------------
  // A csd seen locked in consecutive snapshots for this long. Healthy IPIs finish in µs.
  Duration ipi_stall_min = 500ms;

  // --- Cause while the evidence forms -----------------------------------------------------
  // A vCPU that is "impeded" - starvation building or open, its cgroup throttled within the
  // starvation window, or denied the CPU >= suspect_steal_fraction over this recent window or
  // the starvation window - is never called "interrupts off": a stall rooted on it has cause
  // undetermined (evaluating) until starvation opens or the evidence is certain. The recent
  // window is short so rising steal counts within ~400 ms (a vCPU capped at 5 %: 0.95 x 4 of 5
  // ticks), before an IPI wait can reach ipi_stall_min; nor may the vCPU have been impeded at
  // any tick since the wait began.
  Duration impeded_recent_window = 500ms;

  // --- Recurrence (stability) -------------------------------------------------------------
  // A guest-side symptom (GUEST_IPI_STALL, GUEST_IDLE_WITH_PENDING_WORK,
  // GUEST_SOFTLOCKUP_IMMINENT) that ends is held this long; if it comes back with the same key
  // (root CPUs / CPU) and a compatible cause, it continues (recurrences + 1) instead of opening
  // a new finding. Measured: under a vCPU throttled to 5 ms/100 ms with TLB-shootdown IPIs on
  // every CPU, the IPI stall on it ended and came back 6 times in 12 s (every ~2 s); 5 s covers
  // twice that gap. When the hold runs out the finding resolves, resolved_at = when it ended.
  // Host-side kinds end on real run progress (a real end) and are not held; VCPU_HOST_STARVED
  // has its own hysteresis (starved_clear_*). 0: no hold.
  Duration guest_recurrence_hold = 5s;

  // --- GUEST_IDLE_WITH_PENDING_WORK -------------------------------------------------------
  // Idle task current, with work queued, continuously over at least 2 snapshots spanning this.
  Duration idle_pending_min = 500ms;

  // --- GUEST_SOFTLOCKUP(_IMMINENT) --------------------------------------------------------
  // Imminent once the touch age reaches this fraction of the guest's 2 x watchdog_thresh.
  double softlockup_imminent_fraction = 0.5;

  // --- GUEST_IRQS_OFF ---------------------------------------------------------------------
  // hrtimer_interrupts advances once per watchdog period (2 x watchdog_thresh / 5 s). Judge
  // only after this many periods without an increment...
  double irqs_off_periods = 2.5;
  // ...during which the vCPU thread ran at least this fraction of the wall time.
  double irqs_off_min_run_fraction = 0.25;

  // --- GUEST_PANIC ------------------------------------------------------------------------
  std::size_t printk_tail_lines = 10;

  // --- Snapshot scheduling ----------------------------------------------------------------
  Duration baseline_snapshot_interval = 1s;  // a domain without suspect signals
  bool snapshot_every_tick_when_suspect = true;
  // Suspect (snapshot every tick) from this steal fraction on; below starved_fraction so the
  // starvation rule has guest evidence by the time it fires.
  double suspect_steal_fraction = 0.6;

  // --- Events and memory ------------------------------------------------------------------
  // An active finding whose only change is its ages emits UPDATED at most this often
  // (material changes - severity, cause, CPUs, root, waiters - are emitted at once).
  Duration update_min_interval = 1s;
  std::size_t max_resolved_history = 1000;  // resolved findings kept for ListFindings
  std::size_t max_event_log = 10000;        // events kept for WatchFindings resume

  // --- Findings of a previous run (DiagnosisEngine::restore) ------------------------------
  // A restored active finding is not trusted: it is continued (same id) if a rule proposes its
  // condition soon enough after the domain's first tick of this run (its first guest snapshot,
  // for a guest kind), else resolved then. Soon enough: the kind's own threshold with a sample
  // to spare (1 s for VCPU_HOST_BLOCKED, 6 s for VCPU_HOST_STARVED's window + sustain, two
  // snapshots for a soft lockup; engine.cc, reevaluate_window), at most this long - which is
  // what GUEST_IRQS_OFF gets: 2.5 watchdog periods of a guest whose threshold the engine does
  // not know in advance (10 s at watchdog_thresh 10, 30 s at 30).
  Duration restored_reevaluate_within = 30s;
  // A restored finding of a domain that never ticks this long after the restore (the guest was
  // shut down while the daemon was away) is resolved by expire_restored().
  Duration restored_domain_wait = 2min;
};

}  // namespace stallmon::diagnosis
