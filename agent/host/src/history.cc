// SPDX-License-Identifier: Apache-2.0
#include "stallmon/host/history.h"

#include <cstdint>

namespace stallmon::host {

bool SampleRing::Ring::push(const ThreadSample& s, ThreadSample* evicted) {
  if (buf.empty()) return false;
  if (size < buf.size()) {
    buf[(head + size) % buf.size()] = s;
    ++size;
    return false;
  }
  if (evicted) *evicted = buf[head];
  buf[head] = s;  // overwrite the oldest
  head = (head + 1) % buf.size();
  return true;
}

void SampleRing::push(const ThreadSample& s) {
  ThreadSample aged;
  if (!fine_.push(s, &aged) || coarse_.buf.empty()) return;
  // The fine tier's oldest sample ages into the coarse tier if it is far enough from the coarse
  // tier's newest, or marks a restart that later deltas must not cross.
  const bool boundary = aged.flags & (ThreadSample::kFirst | ThreadSample::kCgroupChanged);
  if (coarse_.size == 0 || boundary || aged.t_ns - coarse_.at(coarse_.size - 1).t_ns >= coarse_interval_ns_) {
    coarse_.push(aged, nullptr);
  }
}

void StateTracker::observe(const ThreadSample& s) {
  if (!started || (s.flags & ThreadSample::kFirst)) {
    // Nothing is known about the time before the first sample: count from here.
    started = true;
    state = s.state;
    state_since_ns = s.t_ns;
    last_progress_ns = s.t_ns;
    last_run_ns = s.run_ns;
    return;
  }
  if (s.state != state) {
    state = s.state;
    state_since_ns = s.t_ns;
  }
  if (s.run_ns > last_run_ns) last_progress_ns = s.t_ns;
  last_run_ns = s.run_ns;
}

ThreadSignals derive_signals(const SampleRing& ring, const StateTracker& tracker,
                             int64_t window_ns) {
  ThreadSignals sig;
  if (ring.empty()) return sig;
  const size_t n = ring.size();
  const ThreadSample& end = ring.newest();
  sig.end_ns = end.t_ns;
  sig.state = end.state;
  if (tracker.started && tracker.state == end.state) {
    sig.time_in_state_ns = end.t_ns - tracker.state_since_ns;
    sig.no_progress_ns = end.t_ns - tracker.last_progress_ns;
  }

  // Walk back to the newest sample at or before the window start, stopping at a restart (the
  // counters before it belong to another thread) or at the oldest sample kept.
  const int64_t start = end.t_ns - window_ns;
  size_t b = n - 1;
  size_t cg_base = SIZE_MAX;  // the newest cgroup move inside the window, if any
  while (b > 0) {
    const ThreadSample& s = ring.at(b);
    if (s.t_ns <= start || (s.flags & ThreadSample::kFirst)) break;
    if ((s.flags & ThreadSample::kCgroupChanged) && cg_base == SIZE_MAX) cg_base = b;
    --b;
  }
  if (cg_base == SIZE_MAX) cg_base = b;
  const ThreadSample& base = ring.at(b);
  const int64_t dt = end.t_ns - base.t_ns;
  if (b == n - 1 || dt <= 0) return sig;

  sig.valid = true;
  sig.window_ns = dt;
  // Kernel counters never go backwards for one thread; clamp anyway so a bad read cannot make a
  // huge unsigned delta.
  sig.run_delta_ns = end.run_ns >= base.run_ns ? end.run_ns - base.run_ns : 0;
  sig.wait_delta_ns = end.wait_ns >= base.wait_ns ? end.wait_ns - base.wait_ns : 0;
  sig.run_progress = sig.run_delta_ns > 0;
  sig.run_fraction = static_cast<double>(sig.run_delta_ns) / static_cast<double>(dt);
  sig.steal_fraction = static_cast<double>(sig.wait_delta_ns) / static_cast<double>(dt);
  sig.voluntary_switches_delta = end.voluntary_switches - base.voluntary_switches;
  sig.involuntary_switches_delta = end.involuntary_switches - base.involuntary_switches;
  sig.has_schedstat =
      (end.flags & ThreadSample::kHasSchedstat) && (base.flags & ThreadSample::kHasSchedstat);
  // Throttling counters belong to a cgroup: after a move, difference from the first sample in the
  // new cgroup.
  const ThreadSample& cg = ring.at(cg_base);
  sig.has_cgroup = (end.flags & ThreadSample::kHasCgroup) && (cg.flags & ThreadSample::kHasCgroup);
  if (sig.has_cgroup) {
    sig.throttled_delta_ns =
        end.throttled_ns >= cg.throttled_ns ? end.throttled_ns - cg.throttled_ns : 0;
    sig.nr_throttled_delta = end.nr_throttled - cg.nr_throttled;
    sig.throttled = sig.throttled_delta_ns > 0 || sig.nr_throttled_delta > 0;
  }
  return sig;
}

}  // namespace stallmon::host
