// SPDX-License-Identifier: Apache-2.0
#include "stallmon/diagnosis/engine.h"

#include <algorithm>
#include <functional>
#include <mutex>
#include <set>

#include "domain_state.h"
#include "finding_store.h"
#include "rules.h"
#include "text.h"

namespace stallmon::diagnosis {

namespace {


// Guest-side symptoms that come and go while one fault lasts (a throttled vCPU answers each
// IPI late, then the next): held for guest_recurrence_hold before they resolve.
bool held_on_absence(FindingKind k) {
  return k == FindingKind::kGuestIpiStall || k == FindingKind::kGuestIdleWithPendingWork ||
         k == FindingKind::kGuestSoftlockupImminent;
}

// A recurrence continues the held finding only with the same cause (an undetermined cause is
// compatible with any: it was being evaluated).
bool same_cause(const Finding& held, const Finding& now) {
  return held.cause == now.cause || held.cause_evaluating || now.cause_evaluating;
}

// How long after the domain's first tick (first guest snapshot, for a guest kind) this run's
// fresh trackers need before the kind's rule can propose a condition that still holds: its
// threshold, with a second sample to spare. A restored finding not proposed by then has ended.
// The soft-lockup rules speak about a stale touch only once they saw the CPU's watchdog timer
// run (hrtimer_interrupts moving: once per watchdog period of the guest, 4 s at the default
// watchdog_thresh of 10; seen on a real guest restarted mid-lockup: resolved after two
// snapshots, reopened 1.2 s later): while the CPU's touch is stale and its timer not yet seen,
// a period more (from the last snapshot, `guest`; null before any). A fresh touch ends it.
// GUEST_IRQS_OFF waits 2.5 watchdog periods and HOST_MONITOR_UNRESPONSIVE a monitor call's
// deadline (not the engine's to know): the configured cap, restored_reevaluate_within.
Duration reevaluate_window(const Finding& f, const DiagnosisConfig& c, const GuestState* guest) {
  const FindingKind k = f.kind;
  const Duration two_snapshots = 2 * c.baseline_snapshot_interval;
  Duration w = c.restored_reevaluate_within;
  switch (k) {
    case FindingKind::kVcpuHostBlocked:
    case FindingKind::kVmWideStall: w = 2 * c.host_blocked_min; break;
    case FindingKind::kVcpuHostStarved: w = c.starved_window + c.starved_sustain + std::chrono::seconds(1); break;
    case FindingKind::kGuestIpiStall: w = 2 * c.ipi_stall_min + two_snapshots; break;
    case FindingKind::kGuestIdleWithPendingWork: w = 2 * c.idle_pending_min + two_snapshots; break;
    case FindingKind::kGuestSoftlockupImminent:
    case FindingKind::kGuestSoftlockup: {
      w = two_snapshots;
      if (guest == nullptr || guest->view.watchdog_thresh <= 0 || f.cpus.empty()) break;
      const auto ct = guest->cpus.find(f.cpus.front());
      if (ct == guest->cpus.end() || ct->second.watchdog_active()) break;
      const auto age = softlockup_touch_age(guest->view, ct->second.latest);
      if (age && *age > healthy_touch_max(guest->view)) w += watchdog_period(guest->view);
      break;
    }
    case FindingKind::kGuestPanic:
    case FindingKind::kGuestStackOverflow: w = two_snapshots; break;
    // Known only once a monitor call misses the watcher's deadline (libvirt.monitor_timeout,
    // 3 s by default, not the engine's to know).
    case FindingKind::kHostMonitorUnresponsive:
    case FindingKind::kGuestIrqsOff:
    case FindingKind::kUnspecified: break;
  }
  return std::min(w, c.restored_reevaluate_within);
}

std::string domain_key(const DomainIdentity& id) { return id.uuid.empty() ? id.name : id.uuid; }

std::optional<WindowStats> window_stats(const std::deque<HostSamplePoint>& samples, Timestamp now, Duration window) {
  if (samples.size() < 2) return std::nullopt;
  // Samples are in time order (one per tick).
  const auto first_in = std::partition_point(samples.begin(), samples.end(),
                                             [&](const HostSamplePoint& s) { return s.at < now - window; });
  if (first_in == samples.end()) return std::nullopt;
  const HostSamplePoint* first = &*first_in;
  const HostSamplePoint& last = samples.back();
  if (first == &last) return std::nullopt;
  const Duration span = last.at - first->at;
  // Too little history (a thread just appeared) would turn one long run-queue wait into a
  // fraction near 1: judge only over at least half the window.
  if (span < window / 2 || span <= Duration::zero()) return std::nullopt;
  WindowStats w;
  w.span = span;
  const double wall = static_cast<double>(span.count());
  w.run_fraction = static_cast<double>((last.run_time - first->run_time).count()) / wall;
  w.steal_fraction = static_cast<double>((last.run_delay - first->run_delay).count()) / wall;
  if (first->throttled_time && last.throttled_time && *last.throttled_time >= *first->throttled_time)
    w.throttled_fraction = static_cast<double>((*last.throttled_time - *first->throttled_time).count()) / wall;
  if (first->nr_throttled && last.nr_throttled && *last.nr_throttled >= *first->nr_throttled)
    w.throttled_count = *last.nr_throttled - *first->nr_throttled;
  return w;
}

// The share of wall time the host denied the thread over the window: steal, or cgroup throttled
// time when the cgroup really was throttled.
double denied_fraction(const WindowStats& w) {
  return std::max(w.steal_fraction, w.throttled_count > 0 ? w.throttled_fraction : 0.0);
}

// VCPU_HOST_STARVED with hysteresis. Opens when the denied fraction is >= starved_fraction at
// every tick for starved_sustain (and the thread is not itself in D/T/t); once open, it stands
// until the fraction stays below starved_clear_fraction at every tick for starved_clear_hold,
// or the thread is really blocked (VCPU_HOST_BLOCKED takes over). A momentary D caught at a
// sample neither opens nor clears it.
void update_starvation(ThreadTracker& tr, Timestamp now, const DiagnosisConfig& c) {
  if (!tr.window || tr.blocked) {
    tr.starved = false;
    tr.starved_since.reset();
    tr.starved_clear_since.reset();
    return;
  }
  const double denied = denied_fraction(*tr.window);
  if (tr.starved) {
    const double clear_level = std::min(c.starved_clear_fraction, c.starved_fraction);
    if (denied >= clear_level) {
      tr.starved_clear_since.reset();
      return;
    }
    if (!tr.starved_clear_since) tr.starved_clear_since = now;
    if (now - *tr.starved_clear_since < c.starved_clear_hold) return;
    tr.starved = false;
    tr.starved_clear_since.reset();
    tr.starved_since.reset();
    // Falls through: a fraction below the clear level cannot reopen it this tick.
  }
  const bool starving = !is_host_blocking(tr.latest.state) && denied >= c.starved_fraction;
  if (!starving) {
    tr.starved_since.reset();
  } else if (!tr.starved_since) {
    tr.starved_since = now;
  }
  tr.starved = tr.starved_since && now - *tr.starved_since >= c.starved_sustain;
}

void update_thread(ThreadTracker& tr, const HostThreadView& v, int vcpu, Timestamp now, const DiagnosisConfig& c) {
  const bool fresh = tr.latest.tid == 0 || tr.latest.tid != v.tid || v.run_time < tr.latest.run_time ||
                     v.run_delay < tr.latest.run_delay;  // counters never go back: a reused tid
  if (fresh) {
    tr = ThreadTracker{};
    tr.first_seen = tr.progress_at = tr.state_since = now;
  } else {
    if (v.run_time > tr.latest.run_time) tr.progress_at = now;
    if (v.state != tr.latest.state) tr.state_since = now;
  }
  tr.latest = v;
  tr.vcpu = vcpu;
  tr.samples.push_back({now, v.run_time, v.run_delay, v.cgroup_nr_throttled, v.cgroup_throttled_time});
  const Duration keep = c.starved_window + std::chrono::seconds(1);
  while (tr.samples.size() > 2 && tr.samples.front().at < now - keep) tr.samples.pop_front();

  tr.no_progress = now - tr.progress_at;
  tr.blocked_for = Duration::zero();
  if (is_host_blocking(v.state)) {
    // A thread continuously in D/T/t cannot have run: the sampler's in-state time dates a stall
    // that began before we first saw the thread.
    tr.blocked_for = std::max(tr.no_progress, v.in_state_for.value_or(Duration::zero()));
  }
  tr.blocked = tr.blocked_for >= c.host_blocked_min;
  tr.futex_wait = v.state == ThreadState::kSleeping && v.wchan.find("futex") != std::string::npos &&
                  tr.no_progress >= c.host_blocked_min;

  tr.window = window_stats(tr.samples, now, c.starved_window);
  update_starvation(tr, now, c);
  tr.recent = window_stats(tr.samples, now, c.impeded_recent_window);
  tr.impeded = tr.starved || tr.starved_since || (tr.window && tr.window->throttled_count > 0) ||
               (tr.window && denied_fraction(*tr.window) >= c.suspect_steal_fraction) ||
               (tr.recent && denied_fraction(*tr.recent) >= c.suspect_steal_fraction);
  if (tr.impeded) tr.impeded_at = now;
}

// Updates each observed thread's tracker in place and drops the trackers of threads no longer
// observed. In place because a tick touches every thread of a domain: rebuilding the maps moved
// every tracker and reallocated its sample deque, about half of the engine's CPU per tick at 16
// vCPUs (callgrind, tests/scale). Keys are unique within one observation (a vCPU index, a tid).
template <typename View, typename Update, typename KeyOf>
void update_trackers(std::map<int, ThreadTracker>& trackers, const std::vector<View>& views, Update update,
                     KeyOf key_of) {
  std::vector<int> keys;
  keys.reserve(views.size());
  for (const View& v : views) {
    keys.push_back(key_of(v));
    update(trackers[keys.back()], v);
  }
  std::sort(keys.begin(), keys.end());
  std::erase_if(trackers, [&](const auto& kv) { return !std::binary_search(keys.begin(), keys.end(), kv.first); });
}

// The panic of this boot. It stands until the guest resets or reboots: a lifecycle event
// (observe()), or a new boot seen in memory here. A single snapshot never ends it: a panicked
// guest's snapshot can fail for a moment (clock 0, panic_cpu unreadable) or read only some
// runqueues (a lower clock), and on main that resolved the panic and opened a second finding
// for it one snapshot later (issue 12: 4 findings for 2 panics).
void update_panic(DomainState& d, const GuestView& g, Timestamp now, const DiagnosisConfig& c) {
  PanicState& p = d.panic;
  const bool clock_known = g.running_clock_ns != 0;
  // After a reset the old boot's RAM is read until the new kernel overwrites it (seen on a real
  // guest: a panic reset at once by libvirt, then its panic_cpu read again for ~10 s and
  // reported as a second panic). Memory counts again once this boot showed no panic.
  if (g.panic_cpu < 0 && g.panic_cpu_read) d.old_boot_memory = false;
  if (!d.old_boot_memory) d.console.merge(g.printk_tail);
  if (g.panic_cpu >= 0 && !d.old_boot_memory) {
    if (!p.active) p.since = now;
    p.active = true;
    p.cpu = g.panic_cpu;
    if (clock_known && !p.clock_at_panic) p.clock_at_panic = g.running_clock_ns;
    p.new_boot_clock.reset();
  } else if (g.panic_cpu < 0 && g.panic_cpu_read) {
    if (p.active && p.clock_at_panic && clock_known && g.running_clock_ns < *p.clock_at_panic) {
      if (p.new_boot_clock && g.running_clock_ns > *p.new_boot_clock) {
        // Two snapshots of a kernel without a panic whose clock runs: the guest rebooted.
        p = PanicState{};
        d.console.clear();
        d.console.merge(g.printk_tail);
        return;
      }
      if (!p.new_boot_clock || g.running_clock_ns < *p.new_boot_clock) p.new_boot_clock = g.running_clock_ns;
    }
  }
  if (!p.active) return;
  if (!g.printk_tail.empty()) {
    p.printk_tail.assign(g.printk_tail.end() - static_cast<std::ptrdiff_t>(std::min(g.printk_tail.size(), c.printk_tail_lines)),
                         g.printk_tail.end());
  }
  PanicText text = extract_panic_text(d.console.lines());
  if (!text.message.empty()) p.message = std::move(text.message);
  if (text.lines.size() > p.text.size()) {
    p.text = std::move(text.lines);
    p.stack_overflow = find_stack_overflow(p.text);
  }
}

// The stack-end magic of the CPU's current task. An unreadable word is no evidence: a corruption
// already seen stands through it unless another task is seen running (a runqueue read with an
// empty comm says nothing about the task either).
void update_stack_end(GuestCpuTracker& tr, const GuestCpuView& cv, Timestamp now) {
  const bool task_known = !cv.current_comm.empty();
  const bool same_task = tr.stack_end && tr.stack_end->pid == cv.current_pid && tr.stack_end->comm == cv.current_comm;
  if (cv.stack_end_corrupt) {
    if (!*cv.stack_end_corrupt)
      tr.stack_end.reset();
    else if (!same_task)
      tr.stack_end = StackEndCorruption{now, cv.current_pid, cv.current_comm};
    else
      ++tr.stack_end->snapshots;
  } else if (tr.stack_end && task_known && !same_task) {
    tr.stack_end.reset();
  }
}

void update_guest(DomainState& d, const GuestView& g, Timestamp now, const DiagnosisConfig& c) {
  // The guest clock went back: a reboot the libvirt events did not tell us about (or a new
  // guest under the same name). Nothing of the old boot's CPU state carries over.
  // A snapshot that could not read the clock (0) drops the CPU trackers too, as on main. (Kept
  // across such snapshots for a while, one real warm-reboot run got a GUEST_IRQS_OFF on CPU0 of
  // the new boot - during a host load spike, so not proven to be the cause; main's behaviour is
  // the safe one: no count carried across a snapshot that cannot be placed in time.) Only a clock that was read and
  // went back is a new boot for the console; the panic has its own rules (update_panic).
  if (d.guest && g.running_clock_ns < d.guest->view.running_clock_ns) {
    d.guest.reset();
    if (g.running_clock_ns != 0 && !d.panic.active) d.console.clear();
  }
  if (!d.guest) d.guest.emplace();
  GuestState& gs = *d.guest;
  std::map<int, GuestCpuTracker> cpus;
  for (const GuestCpuView& cv : g.cpus) {
    GuestCpuTracker tr;
    if (auto it = gs.cpus.find(cv.cpu); it != gs.cpus.end()) tr = std::move(it->second);
    const ThreadTracker* th = d.vcpus.count(cv.cpu) ? &d.vcpus.at(cv.cpu) : nullptr;

    const bool pending = cv.idle && (cv.nr_running >= 1 || cv.ttwu_pending || !cv.call_single_queue.empty());
    if (!pending) {
      tr.idle_pending_since.reset();
      tr.idle_pending_snapshots = 0;
    } else if (!tr.idle_pending_since) {
      tr.idle_pending_since = now;
      tr.idle_pending_snapshots = 1;
    } else {
      ++tr.idle_pending_snapshots;
    }

    if (!cv.hrtimer_interrupts) {
      tr.hrtimer.reset();
      tr.run_at_hrtimer_since.reset();
    } else if (!tr.hrtimer || *tr.hrtimer != *cv.hrtimer_interrupts || (!tr.run_at_hrtimer_since && th)) {
      if (tr.hrtimer && *tr.hrtimer != *cv.hrtimer_interrupts) tr.watchdog_seen_running = true;
      tr.hrtimer = cv.hrtimer_interrupts;
      tr.hrtimer_since = now;
      if (th) tr.run_at_hrtimer_since = th->latest.run_time;
    }

    tr.touch_growing = cv.watchdog_touch_ts && tr.prev_touch_ts && *tr.prev_touch_ts == *cv.watchdog_touch_ts;
    if (cv.watchdog_touch_ts && tr.prev_touch_ts && *tr.prev_touch_ts != *cv.watchdog_touch_ts)
      tr.watchdog_seen_running = true;
    tr.prev_touch_ts = cv.watchdog_touch_ts;
    update_stack_end(tr, cv, now);
    update_trace_history(tr, cv);
    // Unknown (no count in either snapshot) is "no": a wait on this CPU goes on aging.
    tr.took_call_ipi = tr.latest.call_ipis && cv.call_ipis && *tr.latest.call_ipis != *cv.call_ipis;
    tr.latest = cv;
    cpus[cv.cpu] = std::move(tr);
  }

  // csd waits: the same (waiter, target, csd) locked with the same function in consecutive
  // snapshots is one wait, aged from the first of them, unless the target took a function-call
  // IPI in between: it then ran its whole queue, this csd included, and a busy sender (which
  // reuses its per-CPU csd for every call: TLB shootdowns) locked it again for a new call.
  // Without the target's IPI count, successive short waits can look like one long one.
  std::map<CsdEdgeKey, CsdEdgeTracker> edges;
  for (const GuestCpuView& cv : g.cpus)
    for (const CsdRequest& r : cv.cfd_requests) {
      if (!r.locked || r.target_cpu < 0 || r.target_cpu == cv.cpu) continue;
      CsdEdgeKey key{cv.cpu, r.target_cpu, r.csd_address};
      CsdEdgeTracker e{now, r.function, r.flags};
      const auto target = cpus.find(r.target_cpu);
      const bool target_took_ipi = target != cpus.end() && target->second.took_call_ipi;
      if (auto it = gs.edges.find(key); it != gs.edges.end() && it->second.function == r.function && !target_took_ipi)
        e.first_seen = it->second.first_seen;
      edges[key] = e;
    }

  gs.cpus = std::move(cpus);
  gs.edges = std::move(edges);
  gs.view = g;
  gs.at = now;
  gs.clock.observe(now, g.running_clock_ns);
  d.last_snapshot_at = now;

  update_panic(d, g, now, c);
}

}  // namespace

struct DiagnosisEngine::Impl {
  Impl(DiagnosisConfig c, const Clock& clk)
      : config(std::move(c)), clock(clk), store(config.max_resolved_history, config.max_event_log) {}

  DiagnosisConfig config;
  const Clock& clock;
  mutable std::mutex mu;
  FindingStore store;
  std::map<std::string, DomainState> domains;
  FindingListener* listener = nullptr;
  std::optional<Timestamp> restored_at;  // restore() was called then

  DomainState* find(const std::string& domain) {
    if (auto it = domains.find(domain); it != domains.end()) return &it->second;
    for (auto& [key, d] : domains)
      if (d.identity.name == domain || d.identity.uuid == domain) return &d;
    return nullptr;
  }
  const DomainState* find(const std::string& domain) const { return const_cast<Impl*>(this)->find(domain); }

  void resolve_all(const DomainState& d, Timestamp now, bool keep_panic, std::vector<FindingEvent>& out) {
    for (const auto& key : store.active_keys(d.key + "|")) {
      if (keep_panic && store.active(key)->kind == FindingKind::kGuestPanic) continue;
      store.resolve(key, now, out);
    }
  }

  void deliver(const std::vector<FindingEvent>& events) {
    if (listener == nullptr) return;
    for (const auto& ev : events) listener->on_finding_event(ev);
  }

  bool has_panic_finding(const DomainState& d) const {
    for (const auto& key : store.active_keys(d.key + "|"))
      if (store.active(key)->kind == FindingKind::kGuestPanic) return true;
    return false;
  }

  static void end_panic(DomainState& d) {
    d.panic = PanicState{};
    d.panic_ends_next_tick = false;
    d.console.clear();
  }

  bool compute_suspect(const DomainState& d) {
    if (!d.monitor.responsive) return true;
    for (const auto& [i, th] : d.vcpus) {
      if (is_host_blocking(th.latest.state) || th.starved_since) return true;
      if (th.window && th.window->steal_fraction >= config.suspect_steal_fraction) return true;
    }
    if (d.guest) {
      const GuestState& g = *d.guest;
      if (!g.edges.empty()) return true;
      const uint64_t now_s = g.view.running_clock_ns >> 30;
      // A touch is refreshed every watchdog period (0.4 x thresh s); allow 1.5 periods plus
      // the 1-s granularity of the guest's timestamps before calling it stale.
      const uint64_t stale_s = static_cast<uint64_t>(g.view.watchdog_thresh) * 6 / 10 + 1;
      for (const auto& [cpu, ct] : g.cpus) {
        if (ct.idle_pending_since) return true;
        if (ct.stack_end && ct.stack_end->snapshots < 2) return true;  // confirm it next tick
        const auto& touch = ct.latest.watchdog_touch_ts;
        if (g.view.watchdog_thresh > 0 && ct.watchdog_active() && touch && *touch != 0 && *touch <= now_s &&
            now_s - *touch > stale_s)
          return true;
      }
    }
    for (const auto& key : store.active_keys(d.key + "|")) {
      const FindingKind k = store.active(key)->kind;
      // A dead guest needs no 10 Hz: neither its panic nor the overwritten stack end its
      // panicked CPU still shows (the scheduler's stack-end check panics with it in place).
      if (k == FindingKind::kGuestPanic || (k == FindingKind::kGuestStackOverflow && d.panic.active)) continue;
      return true;
    }
    return false;
  }

  // Candidates of one tick against the domain's active findings: recurrences of held findings,
  // absences (hold or resolve), incidents, then open / update.
  void reconcile(const DomainState& d, std::vector<Candidate>& candidates, bool guest_tick, bool new_boot,
                 Timestamp now, std::vector<FindingEvent>& out) {
    // A held finding that comes back with another cause is a new stall: resolve the old one as
    // of when it ended and give the candidate a new id (and everything that named it).
    std::map<std::string, std::string> renamed;
    for (Candidate& c : candidates) {
      const Finding* held = store.active(c.condition_key);
      const auto absent = store.absent_since(c.condition_key);
      if (held == nullptr || !absent || same_cause(*held, c.finding)) continue;
      const std::string old_id = held->id;
      store.resolve(c.condition_key, now, out, *absent);
      c.finding.id = store.id_for(c.condition_key, old_id.substr(0, old_id.rfind('/')));
      renamed[old_id] = c.finding.id;
    }
    std::set<std::string> proposed;
    std::map<std::string, const Finding*> survivors;  // by id
    for (Candidate& c : candidates) {
      if (auto it = renamed.find(c.finding.explained_by); it != renamed.end()) c.finding.explained_by = it->second;
      proposed.insert(c.condition_key);
      survivors[c.finding.id] = &c.finding;
    }
    std::vector<std::string> kept;
    for (const auto& k : store.active_keys(d.key + "|")) {
      if (proposed.count(k)) continue;
      const Finding* f = store.active(k);
      if (store.unconfirmed(k)) {
        // A finding of the previous run that no rule has proposed yet: kept while this run's
        // fresh trackers may still confirm it (a guest kind from the first guest snapshot on),
        // resolved when the window passes or the guest's boot ends.
        const bool guest = is_guest_kind(f->kind);
        const auto from = guest ? d.first_guest_tick_at : d.first_tick_at;
        const bool waiting = from ? now - *from < reevaluate_window(*f, config, d.guest ? &*d.guest : nullptr)
                                  : now - d.first_tick_at.value_or(now) < config.restored_domain_wait;
        if (waiting && !(guest && new_boot)) {
          kept.push_back(k);
          survivors[f->id] = f;
        } else {
          store.resolve(k, now, out);
        }
        continue;
      }
      // Guest findings stand until a snapshot (or a new boot) says otherwise.
      if (!guest_tick && !new_boot && is_guest_kind(f->kind)) {
        kept.push_back(k);
        survivors[f->id] = f;
        continue;
      }
      const Duration hold =
          held_on_absence(f->kind) && !new_boot ? config.guest_recurrence_hold : Duration::zero();
      const Timestamp ended = store.absent_since(k).value_or(now);
      if (now - ended < hold) {
        store.mark_absent(k, now);
        kept.push_back(k);
        survivors[f->id] = f;
        continue;
      }
      store.resolve(k, now, out, ended);
    }

    // Incidents: follow explained_by to its end. A finding explained by one that has resolved
    // (a symptom winding down in its hold) stays in that finding's incident.
    std::map<std::string, std::string> incident;
    std::function<std::string(const Finding&, int)> incident_of = [&](const Finding& f, int depth) -> std::string {
      if (f.explained_by.empty() || f.explained_by == f.id || depth > 16) return f.id;
      if (auto it = survivors.find(f.explained_by); it != survivors.end()) return incident_of(*it->second, depth + 1);
      if (const Finding* r = store.resolved_by_id(f.explained_by); r != nullptr && !r->incident_id.empty())
        return r->incident_id;
      return f.explained_by;
    };
    std::map<std::string, std::vector<std::string>> symptoms;  // root id -> sorted symptom ids
    for (const auto& [id, f] : survivors) {
      incident[id] = incident_of(*f, 0);
      if (incident[id] != id) symptoms[incident[id]].push_back(id);
    }
    for (Candidate& c : candidates) {
      const std::string& id = c.finding.id;
      c.finding.incident_id = incident[id];
      c.finding.symptom_ids = symptoms[id];
      c.signature += " incident=" + c.finding.incident_id + " symptoms=" + std::to_string(c.finding.symptom_ids.size());
      for (const auto& s : c.finding.symptom_ids) c.signature += "," + s;
    }
    for (const auto& k : kept) {
      const std::string id = store.active(k)->id;
      store.relink(k, incident[id], symptoms[id], now, out);
    }
    for (Candidate& c : candidates) {
      attach_kernel_traces(d.guest ? &*d.guest : nullptr, now, c);
      store.upsert(c.condition_key, std::move(c.finding), c.signature, now, config.update_min_interval, out);
    }
  }

  std::vector<FindingEvent> observe(const DomainObservation& obs) {
    const Timestamp now = clock.now();
    const std::string key = domain_key(obs.domain);
    DomainState& d = domains[key];
    d.key = key;
    if (!d.first_tick_at) d.first_tick_at = now;
    if (obs.guest && !d.first_guest_tick_at) d.first_guest_tick_at = now;
    d.identity = obs.domain;
    std::vector<FindingEvent> out;

    if (d.panic_ends_next_tick) end_panic(d);
    for (const DomainEvent& ev : obs.events) {
      switch (ev.type) {
        case DomainEventType::kCrashed:
          if (!d.panic.active) d.panic.since = ev.at == Timestamp{} ? now : ev.at;
          d.panic.active = true;
          d.panic.from_event = true;
          d.panic.event_detail = ev.detail;
          break;
        case DomainEventType::kStarted:
        case DomainEventType::kRebooted:
        case DomainEventType::kStopped:
          // A new boot (or none): nothing of the old one's state carries over. A panic told
          // and ended within one tick (crashed, then reset at once) is still one finding: it
          // opens this tick and resolves the next.
          if (d.panic.active && !has_panic_finding(d))
            d.panic_ends_next_tick = true;
          else
            end_panic(d);
          d.guest.reset();
          d.old_boot_memory = true;
          break;
        case DomainEventType::kPaused:
        case DomainEventType::kResumed:
          break;  // obs.paused says the current state
      }
    }

    if (obs.paused) {
      // Deliberately stopped: not a stall. Drop the progress trackers, or resuming would look
      // like threads that made no progress for the whole pause.
      d.vcpus.clear();
      d.others.clear();
      d.guest.reset();
      d.monitor = obs.monitor;
      resolve_all(d, now, /*keep_panic=*/true, out);
      d.suspect = false;
      store.end_tick();
      deliver(out);
      return out;
    }

    // Host trackers.
    update_trackers(d.vcpus, obs.vcpus, [&](ThreadTracker& tr, const VcpuHostView& v) {
      update_thread(tr, v.thread, v.index, now, config);
    }, [](const VcpuHostView& v) { return v.index; });
    update_trackers(d.others, obs.other_threads, [&](ThreadTracker& tr, const HostThreadView& v) {
      update_thread(tr, v, -1, now, config);
    }, [](const HostThreadView& v) { return v.tid; });
    d.main_loop_tid = obs.main_loop_tid;
    d.monitor = obs.monitor;
    const bool guest_tick = obs.guest.has_value();
    if (guest_tick) update_guest(d, sanitize_guest_view(*obs.guest), now, config);

    TickContext t(config, d, store, now);
    rule_vm_wide_stall(t);
    rule_host_blocked(t);
    rule_host_starved(t);
    rule_monitor_unresponsive(t);
    rule_panic(t);
    remember_host_stops(t);
    if (guest_tick) {
      find_lock_waits(t);
      rule_irqs_off(t);
      rule_ipi_stall(t);
      rule_idle_with_pending_work(t);
      rule_softlockup(t);
      rule_stack_overflow(t);
      link_lock_waits(t);
    }

    // A new boot (or none): the old boot's guest findings end with it, held or not.
    const bool new_boot = std::any_of(obs.events.begin(), obs.events.end(), [](const DomainEvent& e) {
      return e.type == DomainEventType::kStarted || e.type == DomainEventType::kRebooted ||
             e.type == DomainEventType::kStopped;
    });
    reconcile(d, t.candidates, guest_tick, new_boot, now, out);
    store.end_tick();
    d.suspect = compute_suspect(d);
    deliver(out);
    return out;
  }
};

DiagnosisEngine::DiagnosisEngine(DiagnosisConfig config, const Clock& clock)
    : impl_(std::make_unique<Impl>(std::move(config), clock)) {}
DiagnosisEngine::~DiagnosisEngine() = default;

std::vector<FindingEvent> DiagnosisEngine::observe(const DomainObservation& observation) {
  std::lock_guard lock(impl_->mu);
  return impl_->observe(observation);
}

bool DiagnosisEngine::wants_guest_snapshot(const std::string& domain, Timestamp now) const {
  std::lock_guard lock(impl_->mu);
  const DomainState* d = impl_->find(domain);
  if (d == nullptr || !d->last_snapshot_at) return true;
  if (d->suspect && impl_->config.snapshot_every_tick_when_suspect) return true;
  return now - *d->last_snapshot_at >= impl_->config.baseline_snapshot_interval;
}

std::vector<FindingEvent> DiagnosisEngine::forget_domain(const std::string& domain) {
  std::lock_guard lock(impl_->mu);
  std::vector<FindingEvent> out;
  DomainState* d = impl_->find(domain);
  if (d == nullptr) return out;
  impl_->resolve_all(*d, impl_->clock.now(), /*keep_panic=*/false, out);
  impl_->store.end_tick();
  impl_->domains.erase(d->key);
  impl_->deliver(out);
  return out;
}

std::vector<Finding> DiagnosisEngine::list_findings(const FindingQuery& query) const {
  std::lock_guard lock(impl_->mu);
  FindingQuery q = query;
  if (q.limit == 0) q.limit = 1000;  // as ListFindingsRequest.limit
  auto match = [&](const Finding& f) {
    if (!q.domain.empty() && f.domain != q.domain && f.domain_uuid != q.domain) return false;
    if (!q.kinds.empty() && std::find(q.kinds.begin(), q.kinds.end(), f.kind) == q.kinds.end()) return false;
    if (q.since && f.last_update < *q.since && !(f.resolved_at && *f.resolved_at >= *q.since)) return false;
    return true;
  };
  std::vector<Finding> active;
  for (auto& f : impl_->store.all_active())
    if (match(f)) active.push_back(std::move(f));
  std::sort(active.begin(), active.end(), [](const Finding& a, const Finding& b) {
    return a.onset < b.onset || (a.onset == b.onset && a.id < b.id);
  });
  std::vector<Finding> out = std::move(active);
  if (!q.active_only) {
    const auto& resolved = impl_->store.resolved();
    for (auto it = resolved.rbegin(); it != resolved.rend() && out.size() < q.limit; ++it)
      if (match(*it)) out.push_back(*it);
  }
  if (out.size() > q.limit) out.resize(q.limit);
  return out;
}

std::vector<Finding> DiagnosisEngine::active_findings(const std::string& domain) const {
  FindingQuery q;
  q.domain = domain;
  q.active_only = true;
  q.limit = static_cast<std::size_t>(-1);
  return list_findings(q);
}

std::vector<GuestCpuAges> DiagnosisEngine::guest_cpu_ages(const std::string& domain) const {
  std::lock_guard lock(impl_->mu);
  std::vector<GuestCpuAges> out;
  const DomainState* d = impl_->find(domain);
  if (d == nullptr || !d->guest) return out;
  const GuestState& g = *d->guest;
  for (const auto& [cpu, ct] : g.cpus) {  // std::map: by CPU number
    GuestCpuAges a;
    a.cpu = cpu;
    a.snapshot_at = g.at;
    if (ct.watchdog_active()) a.softlockup_touch_age = softlockup_touch_age(g.view, ct.latest);
    out.push_back(a);
  }
  for (const auto& [key, edge] : g.edges) {
    // A copy for the lambda: Debian 12's clang 14 cannot capture a structured binding.
    const int waiter = key.waiter;
    auto it = std::find_if(out.begin(), out.end(), [waiter](const GuestCpuAges& a) { return a.cpu == waiter; });
    if (it == out.end()) continue;
    const Duration age = g.at - edge.first_seen;
    if (!it->csd_wait_age || age > *it->csd_wait_age) {
      it->csd_wait_age = age;
      it->csd_wait_target = key.target;
    }
  }
  return out;
}

EventsSince DiagnosisEngine::events_since(uint64_t after_revision) const {
  std::lock_guard lock(impl_->mu);
  return impl_->store.events_since(after_revision);
}

uint64_t DiagnosisEngine::revision() const {
  std::lock_guard lock(impl_->mu);
  return impl_->store.revision();
}

std::size_t DiagnosisEngine::resolved_history_size() const {
  std::lock_guard lock(impl_->mu);
  return impl_->store.resolved().size();
}

std::size_t DiagnosisEngine::event_log_size() const {
  std::lock_guard lock(impl_->mu);
  return impl_->store.event_log_size();
}

Result<void> DiagnosisEngine::restore(RestoredFindings restored) {
  std::lock_guard lock(impl_->mu);
  if (impl_->store.used() || !impl_->domains.empty())
    return Error(ErrorCode::kInvalidArgument, "restore: the engine has already seen findings");
  impl_->store.restore(std::move(restored));
  impl_->restored_at = impl_->clock.now();
  return {};
}

std::vector<FindingEvent> DiagnosisEngine::expire_restored() {
  std::lock_guard lock(impl_->mu);
  std::vector<FindingEvent> out;
  if (!impl_->restored_at) return out;
  const Timestamp now = impl_->clock.now();
  if (now - *impl_->restored_at < impl_->config.restored_domain_wait) return out;
  for (const auto& key : impl_->store.unconfirmed_keys()) {
    // Domains that tick decide their own in observe(); this is for the ones that never came.
    const std::string domain = key.substr(0, key.find('|'));
    if (impl_->domains.count(domain)) continue;
    impl_->store.resolve(key, now, out);
  }
  impl_->store.end_tick();
  impl_->deliver(out);
  return out;
}

void DiagnosisEngine::set_listener(FindingListener* listener) {
  std::lock_guard lock(impl_->mu);
  impl_->listener = listener;
}

const DiagnosisConfig& DiagnosisEngine::config() const { return impl_->config; }

}  // namespace stallmon::diagnosis
