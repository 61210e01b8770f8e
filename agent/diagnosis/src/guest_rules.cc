// SPDX-License-Identifier: Apache-2.0
// Guest-side rules: what the guest kernel's own state says (csd waits, runqueues, watchdog
// timestamps, timer interrupt counts), joined with the host verdict for each vCPU.
#include <algorithm>
#include <set>

#include "rules.h"
#include "stallmon/diagnosis/wait_graph.h"
#include "text.h"

namespace stallmon::diagnosis {

namespace {

using std::chrono::duration_cast;

// SOFTLOCKUP_DELAY_REPORT (ULONG_MAX): touch_softlockup_watchdog() asked the guest to skip the
// next report; its next hrtimer restarts the report period.
constexpr uint64_t kSoftlockupDelayReport = ~uint64_t{0};

// "CPU0 (sh, pid 107)"
std::string cpu_task(const GuestCpuView& c) {
  if (c.idle) return "CPU" + std::to_string(c.cpu) + " (idle)";
  return "CPU" + std::to_string(c.cpu) + " (" + c.current_comm + ", pid " + std::to_string(c.current_pid) + ")";
}

std::string plural(std::size_t n, const std::string& one, const std::string& many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

// "a pending wakeup and 2 queued calls", "" when nothing waits.
std::string pending_work(const GuestCpuView& c) {
  std::vector<std::string> parts;
  if (c.ttwu_pending) parts.push_back("a pending wakeup");
  if (!c.call_single_queue.empty()) parts.push_back(plural(c.call_single_queue.size(), "queued call", "queued calls"));
  if (c.nr_running > 0) parts.push_back(plural(c.nr_running, "runnable task", "runnable tasks"));
  std::string s;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) s += (i + 1 == parts.size()) ? " and " : ", ";
    s += parts[i];
  }
  return s;
}

// "CPU2 is idle with a pending wakeup and 2 queued calls" / "CPU1 runs insmod (pid 200)"
std::string cpu_state_phrase(const GuestCpuView& c) {
  std::string s = "CPU" + std::to_string(c.cpu);
  s += c.idle ? " is idle" : " runs " + c.current_comm + " (pid " + std::to_string(c.current_pid) + ")";
  const std::string work = pending_work(c);
  if (!work.empty()) s += " with " + work;
  return s;
}

Evidence runqueue_evidence(const GuestCpuView& c) {
  Evidence e;
  e.text = "CPU" + std::to_string(c.cpu) + ": current " + c.current_comm + " (pid " + std::to_string(c.current_pid) +
           (c.idle ? ", idle" : "") + "), nr_running " + std::to_string(c.nr_running) + ", ttwu_pending " +
           (c.ttwu_pending ? "1" : "0");
  if (!c.call_single_queue.empty()) {
    e.text += ", call_single_queue: [";
    for (std::size_t i = 0; i < c.call_single_queue.size(); ++i) {
      const QueuedCall& q = c.call_single_queue[i];
      if (i > 0) e.text += ", ";
      e.text += std::string(to_string(q.type)) + " " + q.function;
      if (q.source_cpu >= 0) e.text += " from CPU" + std::to_string(q.source_cpu);
    }
    e.text += "]";
  }
  e.cpu = c.cpu;
  e.facts["current_pid"] = std::to_string(c.current_pid);
  e.facts["current_comm"] = c.current_comm;
  e.facts["idle"] = c.idle ? "1" : "0";
  e.facts["nr_running"] = std::to_string(c.nr_running);
  e.facts["ttwu_pending"] = c.ttwu_pending ? "1" : "0";
  e.facts["call_single_queue_len"] = std::to_string(c.call_single_queue.size());
  return e;
}

// The guest's soft-lockup watchdog as seen from one CPU's per-cpu state.
struct SoftlockupClock {
  uint64_t now_s = 0;     // guest clock in guest seconds
  uint64_t limit_s = 0;   // 2 x watchdog_thresh
  uint64_t age_ns = 0;    // guest ns since watchdog_touch_ts
  uint64_t age_s = 0;     // what the guest would print as "stuck for Ns"
  Duration report_in{0};  // until the guest's hrtimer would report it (0: due now)
};

std::optional<SoftlockupClock> softlockup_clock(const GuestView& view, const GuestCpuView& cpu) {
  if (view.watchdog_thresh <= 0 || !view.softlockup_watchdog_enabled || !cpu.online) return std::nullopt;
  // The guest's watchdog works in its own "seconds": get_timestamp() = running_clock() >> 30
  // (2^30 ns, ~1.07 s), compared against the guest's clock - never against host time, which
  // differs by boot time and need not advance at the guest's rate. So do we.
  SoftlockupClock c;
  c.now_s = view.running_clock_ns >> 30;
  c.limit_s = 2 * static_cast<uint64_t>(view.watchdog_thresh);  // get_softlockup_thresh()
  const auto& touch = cpu.watchdog_touch_ts;
  // 0: touched via touch_softlockup_watchdog() on old kernels (reset at the next hrtimer).
  if (!touch || *touch == 0 || *touch > c.now_s) return std::nullopt;
  c.age_ns = view.running_clock_ns - (*touch << 30);
  c.age_s = c.now_s - *touch;
  // is_softlockup(): reports once now > period_ts + 2 * thresh, period_ts being
  // watchdog_report_ts (5.13+; restarted after each report) or watchdog_touch_ts; the check
  // runs at the CPU's next watchdog hrtimer, up to one period later.
  uint64_t period_ts = *touch;
  if (const auto& rep = cpu.watchdog_report_ts; rep && *rep != kSoftlockupDelayReport && *rep >= *touch)
    period_ts = *rep;
  const uint64_t report_ns = (period_ts + c.limit_s + 1) << 30;
  c.report_in = report_ns > view.running_clock_ns ? Duration(report_ns - view.running_clock_ns) : Duration::zero();
  return c;
}

// "CPU2 spins on a spinlock (_raw_spin_lock_irqsave+0x39/0x50) held by CPU1 (inferred: ...)"
Evidence lock_wait_evidence(const LockWait& w) {
  Evidence e;
  e.text = "CPU" + std::to_string(w.waiter) + " spins on " + w.lock + " (" + w.frame + ")";
  e.text += w.holder ? " held by CPU" + std::to_string(*w.holder) + " (" + w.how + ")" : "; its holder is " + w.how;
  e.lock_wait = LockWaitEvidence{w.waiter, w.frame, w.holder, w.candidates, w.how};
  return e;
}

}  // namespace

Duration watchdog_period(const GuestView& g) {
  // set_sample_period(): sample_period = 2 * watchdog_thresh * NSEC_PER_SEC / NUM_SAMPLE_PERIODS (5).
  return std::chrono::milliseconds(400) * g.watchdog_thresh;
}

Duration healthy_touch_max(const GuestView& g) { return watchdog_period(g) * 3 / 2 + Duration(1ll << 30); }

std::optional<Duration> softlockup_touch_age(const GuestView& view, const GuestCpuView& cpu) {
  const auto sc = softlockup_clock(view, cpu);
  if (!sc) return std::nullopt;
  return Duration(static_cast<Duration::rep>(sc->age_ns));
}

bool is_guest_kind(FindingKind k) {
  switch (k) {
    case FindingKind::kGuestIpiStall:
    case FindingKind::kGuestIdleWithPendingWork:
    case FindingKind::kGuestSoftlockupImminent:
    case FindingKind::kGuestSoftlockup:
    case FindingKind::kGuestIrqsOff:
    case FindingKind::kGuestStackOverflow:
      return true;
    default:
      return false;  // host rules, and PANIC / MONITOR, which run from sticky state every tick
  }
}

// A CPU's last kernel trace in the domain's guest view (the daemon refreshes them once a second).
namespace {
const KernelTrace* trace_of(const GuestView& view, int cpu) {
  for (const GuestCpuView& cv : view.cpus)
    if (cv.cpu == cpu && cv.kernel_trace) return &*cv.kernel_trace;
  return nullptr;
}

// Slack between a waiter's stale watchdog touch and its holder's: the watchdog thread runs once a
// sample period, and the touch has the guest's 1-s granularity (plus one more for the snapshot's).
Duration lock_slack(const GuestView& view) { return watchdog_period(view) + std::chrono::seconds(2); }
}  // namespace

void find_lock_waits(TickContext& t) {
  const GuestState& g = *t.d.guest;
  std::set<int> csd_waiters;
  for (const auto& [key, e] : g.edges)
    if (t.now - e.first_seen >= t.config.ipi_stall_min && key.waiter != key.target) csd_waiters.insert(key.waiter);
  std::vector<LockCpu> cpus;
  for (const auto& [cpu, ct] : g.cpus) {
    LockCpu c;
    c.csd_waiting = csd_waiters.count(cpu) > 0;
    c.cpu = cpu;
    c.online = ct.latest.online;
    c.trace = trace_of(g.view, cpu);
    // An idle CPU serving an interrupt may hold a lock (timekeeping's, from its tick).
    c.idle = ct.latest.idle && !(c.trace && serves_interrupt(*c.trace));
    if (ct.watchdog_active()) c.touch_age = softlockup_touch_age(g.view, ct.latest);
    cpus.push_back(c);
  }
  for (LockWait& w : infer_lock_waits(cpus, lock_slack(g.view))) t.lock_waits[w.waiter] = std::move(w);
}

void rule_irqs_off(TickContext& t) {
  const GuestState& g = *t.d.guest;
  // With watchdog_thresh 0 the watchdog hrtimer does not run: a standing count proves nothing.
  if (g.view.watchdog_thresh <= 0) return;
  const Duration period = watchdog_period(g.view);
  const auto window = duration_cast<Duration>(period * t.config.irqs_off_periods);
  for (const auto& [cpu, ct] : g.cpus) {
    if (!ct.latest.online || !ct.watchdog_active() || !ct.hrtimer || !ct.run_at_hrtimer_since) continue;
    // A count of 0: the watchdog hrtimer has never fired on this CPU since boot (a kernel seconds
    // into its boot, before the lockup detector starts it, as after a warm reboot): standing still
    // proves nothing yet.
    if (*ct.hrtimer == 0) continue;
    const ThreadTracker* th = t.vcpu_thread(cpu);
    if (th == nullptr || th->blocked) continue;
    const Duration frozen = t.now - ct.hrtimer_since;
    if (frozen < window) continue;
    // A vCPU the host held back (throttled, starving, steal rising) during the window may simply
    // not have reached its timer: never "interrupts off".
    if (impeded_since(*th, ct.hrtimer_since)) continue;
    // The count stands still. That alone is what a vCPU the host does not run looks like too:
    // only real run time in the same window makes it "interrupts off".
    const Duration ran = th->latest.run_time - *ct.run_at_hrtimer_since;
    if (ran < duration_cast<Duration>(frozen * t.config.irqs_off_min_run_fraction)) continue;
    auto& c = t.propose(FindingKind::kGuestIrqsOff, "cpu" + std::to_string(cpu), Severity::kCritical,
                        Cause::kGuestIrqsOff);
    Finding& f = c.finding;
    f.cpus = {cpu};
    f.onset = ct.hrtimer_since;
    f.summary = cpu_task(ct.latest) + " runs with interrupts disabled: its " + thread_phrase(*th) + " ran " +
                format_duration(ran) + " of the last " + format_duration(frozen) +
                ", yet its timer interrupt count has not moved (the watchdog timer fires every " +
                format_duration(period) + "). It cannot answer IPIs, and only an NMI watchdog could report it. "
                "Cause: guest.";
    Evidence e;
    e.text = "CPU" + std::to_string(cpu) + ": hrtimer_interrupts " + std::to_string(*ct.hrtimer) + " unchanged for " +
             format_duration(frozen) + " while " + thread_phrase(*th) + " ran " + format_duration(ran);
    e.facts["hrtimer_interrupts"] = std::to_string(*ct.hrtimer);
    e.durations["unchanged"] = frozen;
    e.durations["host_run"] = ran;
    e.durations["watchdog_period"] = period;
    f.evidence.push_back(std::move(e));
    f.evidence.push_back(runqueue_evidence(ct.latest));
    c.signature = "irqs-off";
    t.irqs_off_id[cpu] = f.id;
  }
}

// GUEST_IPI_STALL in named steps, one finding per wait-graph root: the component's csd edges,
// the classification of the root's cause, the guest's predicted report, the summary, and the
// evidence chain.
namespace {

const GuestCpuView* latest_view(const GuestState& g, int cpu) {
  auto it = g.cpus.find(cpu);
  return it == g.cpus.end() ? nullptr : &it->second.latest;
}

bool ipi_edge_qualifies(const TickContext& t, const CsdEdgeTracker& e) {
  return t.now - e.first_seen >= t.config.ipi_stall_min;
}

// One component of the wait graph: its root(s), the CPUs involved, and its qualifying csd edges.
struct IpiComponent {
  struct EdgeRef {
    CsdEdgeKey key;
    const CsdEdgeTracker* e;
  };
  const WaitRoot& root;
  std::set<int> members;       // the roots
  std::set<int> involved;      // the roots and their waiters
  std::vector<EdgeRef> edges;  // oldest first
  std::size_t first_into_root = 0;  // the oldest edge from a waiter into a root (or the oldest: a pure cycle)

  const EdgeRef& first() const { return edges[first_into_root]; }
};

IpiComponent ipi_component(const TickContext& t, const WaitRoot& root) {
  const GuestState& g = *t.d.guest;
  IpiComponent c{root, {root.roots.begin(), root.roots.end()}, {}, {}, 0};
  c.involved = c.members;
  c.involved.insert(root.waiters.begin(), root.waiters.end());
  for (const auto& [key, e] : g.edges)
    if (ipi_edge_qualifies(t, e) && c.involved.count(key.waiter) && c.involved.count(key.target))
      c.edges.push_back({key, &e});
  std::sort(c.edges.begin(), c.edges.end(), [](const IpiComponent::EdgeRef& a, const IpiComponent::EdgeRef& b) {
    return a.e->first_seen < b.e->first_seen || (a.e->first_seen == b.e->first_seen && a.key < b.key);
  });
  for (std::size_t i = 0; i < c.edges.size(); ++i)
    if (c.members.count(c.edges[i].key.target) && !c.members.count(c.edges[i].key.waiter)) {
      c.first_into_root = i;
      break;
    }
  return c;
}

// Why the root does not answer.
struct IpiRootCause {
  Cause cause = Cause::kUnknown;
  bool evaluating = false;
  std::string phrase;
  std::string explained_by;
  std::vector<Evidence> host_evidence;  // the roots' host verdicts
};

IpiRootCause classify_ipi_root(const TickContext& t, const IpiComponent& c) {
  const GuestState& g = *t.d.guest;
  const WaitRoot& root = c.root;
  IpiRootCause rc;
  for (int r : root.roots) {
    HostVerdict v = t.host_verdict(r);
    rc.host_evidence.insert(rc.host_evidence.end(), v.evidence.begin(), v.evidence.end());
    if (rc.cause == Cause::kUnknown && v.cause != Cause::kUnspecified) {
      rc.cause = v.cause;
      rc.phrase = v.phrase;
      rc.explained_by = v.explained_by;
    }
  }
  if (rc.cause != Cause::kUnknown || root.cycle) return rc;
  const int r = root.roots.front();
  const ThreadTracker* th = t.vcpu_thread(r);
  const GuestCpuView* gv = latest_view(g, r);
  const GuestCpuTracker* ct = g.cpus.count(r) ? &g.cpus.at(r) : nullptr;
  // "The host runs it": over the window, and still now (a thread frozen a moment ago has a
  // good window fraction too).
  const bool host_runs = th != nullptr && th->window && th->window->run_fraction >= t.config.irqs_off_min_run_fraction &&
                         !is_host_blocking(th->latest.state) && th->no_progress < t.config.host_blocked_min / 2;
  const Timestamp wait_began = c.first().e->first_seen;
  if (auto it = t.irqs_off_id.find(r); it != t.irqs_off_id.end()) {
    rc.cause = Cause::kGuestIrqsOff;
    rc.explained_by = it->second;
    rc.phrase = "its " + thread_phrase(*th) + " is running, but CPU" + std::to_string(r) +
                " has interrupts off: its timer interrupts stopped " + format_duration(t.now - ct->hrtimer_since) + " ago";
  } else if (th != nullptr && impeded_since(*th, wait_began)) {
    // Throttled, starvation building, or steal rising: a vCPU the host holds back answers
    // late without its interrupts being off. Say so and let the starvation window (or the
    // watchdog timer) decide, rather than guess.
    rc.evaluating = true;
    rc.phrase = impeded_phrase(*th) + "; whether that explains the wait is judged over " +
                format_duration(t.config.starved_window + t.config.starved_sustain);
  } else if (host_runs && gv != nullptr && !gv->idle) {
    // A vCPU the host runs takes an IPI as soon as its interrupts are on. Not taking it for
    // the whole wait, with no timer interrupt either, means they are off; a timer interrupt
    // during the wait disproves that, and the CPU is merely stuck elsewhere in the guest.
    if (ct != nullptr && ct->hrtimer && ct->hrtimer_since <= wait_began) {
      rc.cause = Cause::kGuestIrqsOff;
      rc.phrase = "its " + thread_phrase(*th) + " is running (" + percent(th->window->run_fraction) +
                  " of a host CPU), yet CPU" + std::to_string(r) +
                  " takes neither the IPI nor a timer interrupt: its interrupts are off";
    } else {
      rc.cause = Cause::kGuestOther;
      rc.phrase = "its " + thread_phrase(*th) + " is running and CPU" + std::to_string(r) +
                  " takes timer interrupts, so it is stuck elsewhere in the guest";
    }
  } else if (th != nullptr) {
    rc.phrase = "its " + thread_phrase(*th) + " is in " + std::string(1, thread_state_letter(th->latest.state)) +
                " state and neither blocked nor starved on the host";
  }
  return rc;
}

// The waiters spin with their watchdog starved: the guest's first word on this stall will be a
// soft lockup on one of them (never on a root the host does not run).
struct GuestReportPrediction {
  std::optional<Duration> in;
  int cpu = -1;
};

GuestReportPrediction predict_guest_report(const TickContext& t, const WaitRoot& root) {
  const GuestState& g = *t.d.guest;
  GuestReportPrediction p;
  for (int w : root.waiters) {
    const GuestCpuView* wv = latest_view(g, w);
    if (wv == nullptr || !g.cpus.at(w).watchdog_active() || t.host_verdict(w).not_running || t.irqs_off_id.count(w))
      continue;
    if (auto sc = softlockup_clock(g.view, *wv); sc && (!p.in || sc->report_in < *p.in)) {
      p.in = sc->report_in;
      p.cpu = w;
    }
  }
  return p;
}

std::string ipi_summary(const TickContext& t, const IpiComponent& c, const IpiRootCause& rc,
                        const GuestReportPrediction& p) {
  const GuestState& g = *t.d.guest;
  const WaitRoot& root = c.root;
  const CsdEdgeKey& k0 = c.first().key;
  const CsdEdgeTracker& e0 = *c.first().e;
  std::string summary;
  if (root.cycle) {
    summary = cpu_list(root.roots) + " wait on each other's cross-CPU calls (a cycle)";
    if (!root.waiters.empty())
      summary += "; " + cpu_list(root.waiters) + (root.waiters.size() == 1 ? " waits" : " wait") + " on them too";
  } else {
    const GuestCpuView* waiter_view = latest_view(g, k0.waiter);
    summary = (waiter_view ? cpu_task(*waiter_view) : "CPU" + std::to_string(k0.waiter)) + " has waited " +
              format_duration(t.now - e0.first_seen) + " for CPU" + std::to_string(k0.target) + " to run " +
              (e0.function.empty() ? std::string("a function call") : e0.function);
    std::vector<int> others;
    for (int w : root.waiters)
      if (w != k0.waiter) others.push_back(w);
    if (!others.empty()) summary += "; " + cpu_list(others) + (others.size() == 1 ? " also waits" : " also wait") + " on it";
    if (const GuestCpuView* rv = latest_view(g, root.roots.front())) summary += "; " + cpu_state_phrase(*rv);
  }
  if (!rc.phrase.empty()) summary += "; " + rc.phrase;
  if (p.in && *p.in > Duration::zero())
    summary += "; the guest will report a soft lockup on CPU" + std::to_string(p.cpu) + " in ~" + format_duration(*p.in);
  summary += ". " + cause_sentence(rc.cause, rc.evaluating);
  return summary;
}

// The chain: each csd wait, the lock waits inside the component, the roots' runqueues, their
// host verdicts, and the root itself.
std::vector<Evidence> ipi_evidence(const TickContext& t, const IpiComponent& c, const IpiRootCause& rc) {
  const GuestState& g = *t.d.guest;
  std::vector<Evidence> out;
  for (const auto& r : c.edges) {
    const GuestCpuView* wv = latest_view(g, r.key.waiter);
    Evidence e;
    e.text = (wv ? cpu_task(*wv) : "CPU" + std::to_string(r.key.waiter)) + " waits on CPU" +
             std::to_string(r.key.target) + "'s csd " + hex(r.key.csd_address) + " (" +
             (r.e->function.empty() ? "?" : r.e->function) + ") for " + format_duration(t.now - r.e->first_seen);
    e.csd_wait = CsdWaitEvidence{r.key.waiter,  r.key.target,       t.now - r.e->first_seen,
                                 r.e->function, r.key.csd_address, r.e->flags};
    out.push_back(std::move(e));
  }
  for (const auto& [w, lw] : t.lock_waits)
    if (lw.holder && c.involved.count(w) && c.involved.count(*lw.holder)) out.push_back(lock_wait_evidence(lw));
  for (int r : c.root.roots)
    if (const GuestCpuView* rv = latest_view(g, r)) out.push_back(runqueue_evidence(*rv));
  out.insert(out.end(), rc.host_evidence.begin(), rc.host_evidence.end());
  Evidence roots_ev;
  roots_ev.text = "wait graph root: " + cpu_list(c.root.roots) + (c.root.cycle ? " (cycle)" : "");
  roots_ev.wait_roots = WaitRootsEvidence{c.root.roots, c.root.waiters, c.root.cycle};
  out.push_back(std::move(roots_ev));
  return out;
}

}  // namespace

void rule_ipi_stall(TickContext& t) {
  const GuestState& g = *t.d.guest;
  std::vector<WaitEdge> edges;
  for (const auto& [key, e] : g.edges)
    if (ipi_edge_qualifies(t, e)) edges.push_back({key.waiter, key.target});
  if (edges.empty()) return;
  // A lock waiter whose holder is known waits on it like a csd waiter on its target: a csd wait
  // on the waiter leads to the holder.
  for (const auto& [w, lw] : t.lock_waits)
    if (lw.holder) edges.push_back({w, *lw.holder});

  for (const WaitRoot& root : find_wait_roots(edges)) {
    const IpiComponent comp = ipi_component(t, root);
    const IpiRootCause rc = classify_ipi_root(t, comp);
    const GuestReportPrediction prediction = predict_guest_report(t, root);

    std::string key = "root=cpu";
    for (std::size_t i = 0; i < root.roots.size(); ++i) key += (i ? "," : "") + std::to_string(root.roots[i]);
    auto& c = t.propose(FindingKind::kGuestIpiStall, key, Severity::kCritical, rc.cause);
    Finding& f = c.finding;
    f.cpus.assign(comp.involved.begin(), comp.involved.end());
    f.onset = comp.edges.front().e->first_seen;
    f.summary = ipi_summary(t, comp, rc, prediction);
    f.explained_by = rc.explained_by;
    f.cause_evaluating = rc.evaluating;
    f.predicted_guest_report_in = prediction.in;
    f.evidence = ipi_evidence(t, comp, rc);
    c.signature = std::string(to_string(rc.cause)) + (rc.evaluating ? "?" : "") + " by=" + rc.explained_by + " waiters=" +
                  [&] {
                    std::string s;
                    for (int w : root.waiters) s += std::to_string(w) + ",";
                    return s;
                  }();
    for (int w : root.waiters) {
      auto& link = t.waiter_of[w];
      if (link.ipi_id.empty()) link = {f.id, rc.cause, rc.evaluating, root.roots};
    }
  }
}

void rule_idle_with_pending_work(TickContext& t) {
  const GuestState& g = *t.d.guest;
  for (const auto& [cpu, ct] : g.cpus) {
    if (!ct.latest.online || !ct.idle_pending_since || ct.idle_pending_snapshots < 2) continue;
    const Duration age = t.now - *ct.idle_pending_since;
    if (age < t.config.idle_pending_min) continue;
    HostVerdict v = t.host_verdict(cpu, *ct.idle_pending_since);
    const Cause cause = v.cause != Cause::kUnspecified ? v.cause : Cause::kUnknown;
    const ThreadTracker* th = t.vcpu_thread(cpu);
    const bool evaluating = v.cause == Cause::kUnspecified && th != nullptr && impeded_since(*th, *ct.idle_pending_since);
    auto& c = t.propose(FindingKind::kGuestIdleWithPendingWork, "cpu" + std::to_string(cpu), Severity::kWarning, cause);
    Finding& f = c.finding;
    f.cpus = {cpu};
    f.onset = *ct.idle_pending_since;
    f.explained_by = v.explained_by;
    f.cause_evaluating = evaluating;
    f.summary = "CPU" + std::to_string(cpu) + " has been idle for " + format_duration(age) + " with " +
                pending_work(ct.latest) + " it never runs";
    if (v.cause != Cause::kUnspecified)
      f.summary += "; " + v.phrase;
    else if (evaluating)
      f.summary += "; " + impeded_phrase(*th);
    else
      f.summary += "; its host thread is neither blocked nor starved";
    f.summary += ". " + cause_sentence(cause, evaluating);
    f.evidence.push_back(runqueue_evidence(ct.latest));
    f.evidence.back().durations["idle_pending"] = age;
    f.evidence.back().facts["snapshots"] = std::to_string(ct.idle_pending_snapshots);
    f.evidence.insert(f.evidence.end(), v.evidence.begin(), v.evidence.end());
    c.signature = std::string(to_string(cause)) + (evaluating ? "?" : "");
  }
}

void rule_softlockup(TickContext& t) {
  const GuestState& g = *t.d.guest;
  const GuestView& view = g.view;
  // A healthy touch is up to one watchdog period old, plus the 1-s granularity of the guest's
  // timestamps: at small watchdog_thresh that exceeds 50% of the limit, so never call a touch
  // imminent below 1.5 periods + 1 guest second.
  const double healthy_max_ns = static_cast<double>(healthy_touch_max(view).count());
  for (const auto& [cpu, ct] : g.cpus) {
    if (!ct.watchdog_active()) continue;
    const auto sc = softlockup_clock(view, ct.latest);
    if (!sc) continue;
    const uint64_t limit_ns = sc->limit_s << 30;
    const double imminent_ns =
        std::max(t.config.softlockup_imminent_fraction * static_cast<double>(limit_ns), healthy_max_ns);
    FindingKind kind;
    if (sc->age_ns >= limit_ns)
      kind = FindingKind::kGuestSoftlockup;
    else if (static_cast<double>(sc->age_ns) >= imminent_ns && ct.touch_growing)
      kind = FindingKind::kGuestSoftlockupImminent;
    else
      continue;
    const uint64_t age_s = sc->age_s;
    const uint64_t limit_s = sc->limit_s;
    const uint64_t now_s = sc->now_s;
    const auto& touch = ct.latest.watchdog_touch_ts;
    // When the CPU last ran its watchdog, in host time. The touch is in guest "seconds" (2^30 ns,
    // truncated): take the end of that second, never earlier than the touch, placed through the
    // guest clock map (a lagging guest clock is not host time).
    const uint64_t touch_end_ns = std::min((*touch + 1) << 30, view.running_clock_ns);
    const Timestamp touched = g.clock.empty() ? t.now - Duration(sc->age_ns) : g.clock.to_host(touch_end_ns);

    // A host stop since the touch (the vCPU frozen, the whole VM stopped) explains the stale
    // touch even once the vCPU runs again: the guest then sees its clock jump past the limit.
    HostVerdict v = t.host_verdict(cpu, touched);
    const auto irqs = t.irqs_off_id.find(cpu);
    const auto waiter = t.waiter_of.find(cpu);
    Cause cause = Cause::kGuestOther;
    bool evaluating = false;
    std::string because, explained_by;
    const ThreadTracker* th = t.vcpu_thread(cpu);
    if (v.cause != Cause::kUnspecified) {
      cause = v.cause;
      because = v.phrase;
      explained_by = v.explained_by;
    } else if (irqs != t.irqs_off_id.end()) {
      cause = Cause::kGuestIrqsOff;
      because = "its interrupts are off (see GUEST_IRQS_OFF)";
      explained_by = irqs->second;
    } else if (waiter != t.waiter_of.end()) {
      cause = waiter->second.cause;
      evaluating = waiter->second.evaluating;
      because = "it waits on " + cpu_list(waiter->second.roots) + " (see GUEST_IPI_STALL)";
      explained_by = waiter->second.ipi_id;
    } else if (th != nullptr && th->impeded) {
      cause = Cause::kUnknown;
      evaluating = true;
      because = impeded_phrase(*th);
    }
    // Its own hrtimer reports a CPU's soft lockup: a vCPU the host does not run, or one with
    // interrupts off, never will.
    const bool cannot_report = v.not_running || irqs != t.irqs_off_id.end();
    std::optional<Duration> predicted;
    if (!cannot_report) predicted = sc->report_in;

    auto& c = t.propose(kind, "cpu" + std::to_string(cpu),
                        kind == FindingKind::kGuestSoftlockup ? Severity::kCritical : Severity::kWarning, cause);
    Finding& f = c.finding;
    f.cpus = {cpu};
    // A stall another finding explains began no earlier than that finding: the watchdog runs only
    // once per sample period, so its last touch can precede the stall by that much.
    Timestamp onset = touched;
    if (auto o = t.onset_of(explained_by)) onset = std::max(onset, *o);
    f.onset = std::min(onset, t.now);
    f.explained_by = explained_by;
    f.cause_evaluating = evaluating;
    f.predicted_guest_report_in = predicted;
    f.summary = cpu_task(ct.latest) + (kind == FindingKind::kGuestSoftlockup ? " is in a soft lockup: it" : "") +
                " has not run its watchdog thread for " + std::to_string(age_s) + " s (the guest reports at " +
                std::to_string(limit_s) + " s)";
    if (cannot_report)
      f.summary += "; the guest cannot report this itself";
    else if (*predicted > Duration::zero())
      f.summary += "; the guest will report it in ~" + format_duration(*predicted);
    else
      f.summary += "; the guest reports it at its next watchdog tick";
    if (!because.empty()) f.summary += "; " + because;
    f.summary += ". " + cause_sentence(cause, evaluating);
    Evidence e;
    e.text = "CPU" + std::to_string(cpu) + ": watchdog_touch_ts " + std::to_string(*touch) + ", guest clock " +
             std::to_string(now_s) + " (guest seconds): touch age " + std::to_string(age_s) + " s of " +
             std::to_string(limit_s) + " s";
    e.facts["watchdog_touch_ts"] = std::to_string(*touch);
    if (ct.latest.watchdog_report_ts) e.facts["watchdog_report_ts"] = std::to_string(*ct.latest.watchdog_report_ts);
    e.facts["guest_clock_s"] = std::to_string(now_s);
    e.facts["touch_age_s"] = std::to_string(age_s);
    e.facts["watchdog_thresh"] = std::to_string(view.watchdog_thresh);
    if (predicted) e.durations["predicted_report"] = *predicted;
    f.evidence.push_back(std::move(e));
    if (ct.hrtimer) {
      Evidence h;
      h.text = "CPU" + std::to_string(cpu) + ": hrtimer_interrupts " + std::to_string(*ct.hrtimer) + ", unchanged for " +
               format_duration(t.now - ct.hrtimer_since);
      h.facts["hrtimer_interrupts"] = std::to_string(*ct.hrtimer);
      h.durations["unchanged"] = t.now - ct.hrtimer_since;
      f.evidence.push_back(std::move(h));
    }
    f.evidence.push_back(runqueue_evidence(ct.latest));
    f.evidence.insert(f.evidence.end(), v.evidence.begin(), v.evidence.end());
    c.signature = std::string(to_string(cause)) + (evaluating ? "?" : "") + (cannot_report ? " silent" : "") + " " +
                  explained_by;
  }
}

// STACK_END_MAGIC (include/uapi/linux/magic.h): set_task_stack_end_magic() writes it at the
// lowest word of every task's kernel stack (end_of_stack()); the stack grows down towards it.
namespace {
constexpr uint64_t kStackEndMagic = 0x57AC6E9D;
}  // namespace

void rule_stack_overflow(TickContext& t) {
  const GuestState& g = *t.d.guest;
  for (const auto& [cpu, ct] : g.cpus) {
    // Confirmed by a second snapshot of the same task: the runqueue's current task and its stack
    // word are read at different moments, and a task that exits in between can have its stack
    // freed and handed (zeroed) to a new one. Seen once on a quiet 6.1-cloud guest (the scenario
    // matrix); a real overwrite stands (the test module's lasts 8 s).
    if (!ct.stack_end || ct.stack_end->snapshots < 2) continue;
    const StackEndCorruption& s = *ct.stack_end;
    // One finding per task and CPU: another task on the CPU with its own overwritten stack end
    // is another condition.
    auto& c = t.propose(FindingKind::kGuestStackOverflow, "cpu" + std::to_string(cpu) + "-pid" + std::to_string(s.pid),
                        Severity::kCritical, Cause::kGuestOther);
    Finding& f = c.finding;
    f.cpus = {cpu};
    f.onset = s.since;
    const std::string task = s.comm + " (pid " + std::to_string(s.pid) + ")";
    f.summary = "CPU" + std::to_string(cpu) + "'s current task " + task +
                " has overwritten the end of its kernel stack: the STACK_END_MAGIC word at its lowest address is gone"
                " (a stack overflow, or a write past the stack). Whatever lies below the stack may be corrupt; a kernel "
                "built with CONFIG_SCHED_STACK_END_CHECK panics when this task next schedules. Cause: guest.";
    Evidence e;
    e.text = "CPU" + std::to_string(cpu) + ": the STACK_END_MAGIC (" + hex(kStackEndMagic) + ") at the stack end of " +
             task + " was overwritten (a deep overflow or a write past the stack); seen for " +
             format_duration(t.now - s.since);
    e.cpu = cpu;
    e.facts["pid"] = std::to_string(s.pid);
    e.facts["comm"] = s.comm;
    e.facts["stack_end_magic"] = hex(kStackEndMagic);
    e.durations["corrupt_for"] = t.now - s.since;
    f.evidence.push_back(std::move(e));
    // The task may be gone from the runqueue read of this snapshot (unreadable): its own last view.
    if (ct.latest.current_pid == s.pid && ct.latest.current_comm == s.comm) f.evidence.push_back(runqueue_evidence(ct.latest));
    c.signature = "stack-end";
  }
}

namespace {
// The finding that stands for the holder's own stall, to explain its waiters by: its interrupts
// off, the IPI stall rooted at it, its host verdict, else its soft lockup.
const Candidate* holder_finding(const TickContext& t, int cpu) {
  auto by_id = [&](const std::string& id) -> const Candidate* {
    for (const Candidate& c : t.candidates)
      if (c.finding.id == id) return &c;
    return nullptr;
  };
  if (auto it = t.irqs_off_id.find(cpu); it != t.irqs_off_id.end()) return by_id(it->second);
  const std::string ipi_key = t.condition_key(FindingKind::kGuestIpiStall, "root=cpu" + std::to_string(cpu));
  for (const Candidate& c : t.candidates)
    if (c.condition_key == ipi_key) return &c;
  if (auto it = t.blocked_id.find(cpu); it != t.blocked_id.end()) return by_id(it->second);
  if (auto it = t.starved_id.find(cpu); it != t.starved_id.end()) return by_id(it->second);
  for (FindingKind k : {FindingKind::kGuestSoftlockup, FindingKind::kGuestSoftlockupImminent}) {
    const std::string key = t.condition_key(k, "cpu" + std::to_string(cpu));
    for (const Candidate& c : t.candidates)
      if (c.condition_key == key) return &c;
  }
  return nullptr;
}
}  // namespace

void link_lock_waits(TickContext& t) {
  for (const auto& [w, lw] : t.lock_waits) {
    const Candidate* holder = lw.holder ? holder_finding(t, *lw.holder) : nullptr;
    const std::string holder_id = holder ? holder->finding.id : std::string();
    const Evidence e = lock_wait_evidence(lw);
    for (Candidate& c : t.candidates) {
      Finding& f = c.finding;
      if (!is_guest_kind(f.kind) || f.cpus != std::vector<int>{w}) continue;
      f.evidence.push_back(e);
      c.signature += lw.holder ? " lock->" + std::to_string(*lw.holder) : " lock?";
      // Its own stall is the holder's: a symptom in the holder's incident, not a root. A finding
      // already explained (by the CPU's own interrupts-off finding, the host) keeps its chain.
      if (holder != nullptr && f.explained_by.empty()) {
        f.explained_by = holder_id;
        f.onset = std::max(f.onset, holder->finding.onset);  // a symptom starts no earlier than its cause
        f.summary += " It spins on " + lw.lock + " that CPU" + std::to_string(*lw.holder) + " holds (see " +
                     to_string(holder->finding.kind) + " on CPU" + std::to_string(*lw.holder) + ").";
        c.signature += " by=" + holder_id;
      }
    }
    if (holder == nullptr) continue;
    for (Candidate& c : t.candidates)
      if (c.finding.id == holder_id &&
          std::none_of(c.finding.evidence.begin(), c.finding.evidence.end(),
                       [&](const Evidence& x) { return x.text == e.text; })) {  // the IPI stall lists it already
        c.finding.evidence.push_back(e);
        c.signature += " lock-waiter" + std::to_string(w);
      }
  }
}

}  // namespace stallmon::diagnosis
