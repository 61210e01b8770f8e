// SPDX-License-Identifier: Apache-2.0
// Host-side rules: what the host does to the domain's threads. They need no guest snapshot and
// run every tick; guest rules use their verdicts (host_verdict) to name a stall's cause.
#include <algorithm>
#include <cstdio>

#include "rules.h"

namespace stallmon::diagnosis {

namespace {

std::string state_words(ThreadState s) {
  switch (s) {
    case ThreadState::kDiskSleep: return "D state";
    case ThreadState::kStopped: return "T state (stopped)";
    case ThreadState::kTracingStop: return "t state (ptrace stop)";
    case ThreadState::kSleeping: return "S state";
    case ThreadState::kRunning: return "R state";
    default: return std::string(1, thread_state_letter(s)) + " state";
  }
}

Evidence thread_evidence(const ThreadTracker& t, const std::string& text) {
  Evidence e;
  e.text = text;
  e.facts["tid"] = std::to_string(t.latest.tid);
  e.facts["thread"] = t.latest.name;
  e.facts["state"] = std::string(1, thread_state_letter(t.latest.state));
  e.facts["wchan"] = t.latest.wchan;
  e.durations["no_run_progress"] = t.no_progress;
  if (t.vcpu >= 0) e.vcpu = t.vcpu;
  if (t.window) {
    e.facts["run_fraction"] = percent(t.window->run_fraction);
    e.facts["steal_fraction"] = percent(t.window->steal_fraction);
  }
  e.host_stack = t.latest.host_stack;
  return e;
}

// "host thread 18060 (CPU 2/TCG) has been in D state for 1.5 s with no run progress
// (wchan __refrigerator; host stack: __refrigerator <- ...)"
std::string blocked_phrase(const ThreadTracker& t) {
  std::string s = thread_phrase(t) + " has been in " + state_words(t.latest.state) + " for " +
                  format_duration(t.blocked_for) + " with no run progress";
  std::string detail;
  if (!t.latest.wchan.empty() && t.latest.wchan != "0") detail = "wchan " + t.latest.wchan;
  if (!t.latest.host_stack.empty()) {
    if (!detail.empty()) detail += "; ";
    detail += "host stack: " + stack_line(t.latest.host_stack, 4);
  }
  if (!detail.empty()) s += " (" + detail + ")";
  return s;
}

std::string starved_phrase(const ThreadTracker& t, Duration window) {
  const WindowStats& w = *t.window;
  std::string s = thread_phrase(t) + " is runnable but was denied the CPU " +
                  percent(std::max(w.steal_fraction, w.throttled_fraction)) + " of the last " +
                  format_duration(window);
  if (w.throttled_count > 0) s += " (its cgroup was throttled " + std::to_string(w.throttled_count) + " times)";
  return s;
}

const ThreadTracker* main_loop(const DomainState& d) {
  if (d.main_loop_tid == 0) return nullptr;
  auto it = d.others.find(d.main_loop_tid);
  return it == d.others.end() ? nullptr : &it->second;
}

}  // namespace

std::string cpu_list(const std::vector<int>& cpus) {
  std::string s;
  for (std::size_t i = 0; i < cpus.size(); ++i) {
    if (i > 0) s += (i + 1 == cpus.size()) ? " and " : ", ";
    s += "CPU" + std::to_string(cpus[i]);
  }
  return s;
}

std::string stack_line(const std::vector<std::string>& stack, std::size_t max_frames) {
  std::string s;
  for (std::size_t i = 0; i < stack.size() && i < max_frames; ++i) {
    if (i > 0) s += " \u2190 ";  // "called from"
    s += stack[i];
  }
  if (stack.size() > max_frames) s += " \u2190 ...";
  return s;
}

std::string thread_phrase(const ThreadTracker& t) {
  return "host thread " + std::to_string(t.latest.tid) + (t.latest.name.empty() ? "" : " (" + t.latest.name + ")");
}

std::string percent(double fraction) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%.0f%%", fraction * 100.0);
  return buf;
}

bool impeded_since(const ThreadTracker& t, Timestamp since) {
  return t.impeded || (t.impeded_at && *t.impeded_at >= since);
}

std::string impeded_phrase(const ThreadTracker& t) {
  std::vector<std::string> why;
  if (t.window && t.window->throttled_count > 0)
    why.push_back("its cgroup was throttled " + std::to_string(t.window->throttled_count) + " times in the last " +
                  format_duration(t.window->span));
  for (const auto& w : {t.recent, t.window})
    if (w && std::max(w->steal_fraction, w->throttled_fraction) > 0.005) {
      why.push_back("denied the CPU " + percent(std::max(w->steal_fraction, w->throttled_fraction)) +
                    " of the last " + format_duration(w->span));
      break;
    }
  std::string s = "its " + thread_phrase(t) + " is held back by the host";
  for (std::size_t i = 0; i < why.size(); ++i) s += (i == 0 ? " (" : "; ") + why[i];
  if (!why.empty()) s += ")";
  return s;
}

std::string cause_sentence(Cause c, bool evaluating) {
  if (evaluating) return "Cause: undetermined, evaluating.";
  switch (c) {
    case Cause::kHostBlocked:
    case Cause::kHostStarved: return "Cause: host.";
    case Cause::kGuestIrqsOff: return "Cause: guest (interrupts off).";
    case Cause::kGuestOther: return "Cause: guest.";
    default: return "Cause: unknown.";
  }
}

std::string TickContext::condition_key(FindingKind kind, const std::string& key) const {
  return d.key + "|" + to_string(kind) + "|" + key;
}

std::string TickContext::id(FindingKind kind, const std::string& key) {
  return store_.id_for(condition_key(kind, key), d.identity.name + "/" + to_string(kind) + "/" + key);
}

Candidate& TickContext::propose(FindingKind kind, const std::string& key, Severity severity, Cause cause) {
  Candidate c;
  c.condition_key = condition_key(kind, key);
  c.finding.id = id(kind, key);
  c.finding.kind = kind;
  c.finding.severity = severity;
  c.finding.cause = cause;
  c.finding.domain = d.identity.name;
  c.finding.domain_uuid = d.identity.uuid;
  c.finding.onset = now;
  candidates.push_back(std::move(c));
  return candidates.back();
}

std::optional<Timestamp> TickContext::onset_of(const std::string& id) const {
  if (id.empty()) return std::nullopt;
  for (const Candidate& c : candidates) {
    if (c.finding.id == id) return c.finding.onset;
  }
  for (const auto& [vcpu, s] : d.last_host_stop) {
    if (s.id == id) return s.onset;  // a stop that has ended
  }
  return std::nullopt;
}

const ThreadTracker* TickContext::vcpu_thread(int vcpu) const {
  auto it = d.vcpus.find(vcpu);
  return it == d.vcpus.end() ? nullptr : &it->second;
}

void remember_host_stops(TickContext& t) {
  for (const auto& [i, th] : t.d.vcpus) {
    std::string id, phrase;
    if (!t.vm_wide_id.empty()) {
      id = t.vm_wide_id;
      phrase = t.vm_wide_phrase;
    } else if (auto it = t.blocked_id.find(i); it != t.blocked_id.end() && th.blocked) {
      id = it->second;
      phrase = "its " + blocked_phrase(th);
    } else {
      continue;
    }
    HostStop& s = t.d.last_host_stop[i];
    if (s.id != id) s = HostStop{id, t.onset_of(id).value_or(t.now), t.now, phrase};
    s.end = t.now;
    s.phrase = phrase;
  }
}

HostVerdict TickContext::host_verdict(int vcpu, Timestamp since) const {
  HostVerdict v = host_verdict(vcpu);
  if (v.cause != Cause::kUnspecified) return v;
  auto it = d.last_host_stop.find(vcpu);
  if (it == d.last_host_stop.end()) return v;
  const HostStop& s = it->second;
  if (s.end < since || now - s.end > kRecentStop) return v;
  v.cause = Cause::kHostBlocked;
  v.phrase = "it was stopped by the host until " + format_duration(now - s.end) + " ago (" + s.phrase + ")";
  v.explained_by = s.id;
  Evidence stop;
  stop.text = "vCPU " + std::to_string(vcpu) + ": stopped by the host from " + format_duration(now - s.onset) + " to " +
              format_duration(now - s.end) + " ago: " + s.phrase;
  stop.vcpu = vcpu;
  stop.facts = {{"stopped_by", s.id}};
  v.evidence.insert(v.evidence.begin(), std::move(stop));
  return v;
}

HostVerdict TickContext::host_verdict(int vcpu) const {
  HostVerdict v;
  if (!vm_wide_id.empty()) {
    v.cause = Cause::kHostBlocked;
    v.not_running = true;
    v.phrase = vm_wide_phrase;
    v.explained_by = vm_wide_id;
    return v;
  }
  const ThreadTracker* t = vcpu_thread(vcpu);
  if (t == nullptr) return v;
  if (t->blocked) {
    v.cause = Cause::kHostBlocked;
    v.not_running = true;
    v.phrase = "its " + blocked_phrase(*t);
    if (auto id_it = blocked_id.find(vcpu); id_it != blocked_id.end()) v.explained_by = id_it->second;
    v.evidence.push_back(thread_evidence(*t, "vCPU " + std::to_string(vcpu) + ": " + blocked_phrase(*t)));
  } else if (auto it = blocked_behind.find(vcpu); it != blocked_behind.end()) {
    v.cause = Cause::kHostBlocked;
    v.not_running = true;
    v.phrase = "its " + thread_phrase(*t) + " waits on a futex behind " + blocked_phrase(*it->second);
    if (auto id_it = blocked_id.find(vcpu); id_it != blocked_id.end()) v.explained_by = id_it->second;
    v.evidence.push_back(thread_evidence(*t, "vCPU " + std::to_string(vcpu) + ": " + thread_phrase(*t) +
                                                 " waits on a futex with no run progress"));
    v.evidence.push_back(thread_evidence(*it->second, blocked_phrase(*it->second)));
  } else if (is_host_blocking(t->latest.state) && t->blocked_for >= config.host_blocked_min / 5) {
    // Not yet a VCPU_HOST_BLOCKED finding of its own, but a guest stall already under way on
    // this CPU (an IPI it has not answered for 500 ms) is explained by it: say so rather than
    // guess a guest cause for one or two ticks.
    v.cause = Cause::kHostBlocked;
    v.not_running = true;
    v.phrase = "its " + blocked_phrase(*t);
    v.evidence.push_back(thread_evidence(*t, "vCPU " + std::to_string(vcpu) + ": " + blocked_phrase(*t)));
  } else if (t->starved) {
    v.cause = Cause::kHostStarved;
    v.phrase = "its " + starved_phrase(*t, config.starved_window);
    if (auto s_it = starved_id.find(vcpu); s_it != starved_id.end()) v.explained_by = s_it->second;
    v.evidence.push_back(thread_evidence(*t, "vCPU " + std::to_string(vcpu) + ": " + starved_phrase(*t, config.starved_window)));
  } else {
    std::string text = "vCPU " + std::to_string(vcpu) + ": " + thread_phrase(*t) + " in " + state_words(t->latest.state);
    if (t->window) text += ", ran " + percent(t->window->run_fraction) + " of the last " + format_duration(t->window->span);
    v.evidence.push_back(thread_evidence(*t, text));
  }
  return v;
}

void rule_vm_wide_stall(TickContext& t) {
  const DomainState& d = t.d;
  const ThreadTracker* main = main_loop(d);
  // Without knowing the main loop we cannot tell "everyone waits on the big lock" from an idle
  // TCG guest whose halted vCPUs all sit in a futex wait: require it.
  if (d.vcpus.empty() || main == nullptr) return;
  std::vector<const ThreadTracker*> blockers, waiters;
  auto classify = [&](const ThreadTracker& th) {
    if (th.blocked) {
      blockers.push_back(&th);
      return true;
    }
    if (th.futex_wait) {
      waiters.push_back(&th);
      return true;
    }
    return false;
  };
  for (const auto& [i, th] : d.vcpus)
    if (!classify(th)) return;
  if (!classify(*main)) return;
  for (const auto& [tid, th] : d.others)
    if (&th != main && th.blocked) blockers.push_back(&th);
  if (blockers.empty()) return;

  // The primary blocker: the one stuck longest (with a single freeze, the only one).
  const ThreadTracker* primary = *std::max_element(
      blockers.begin(), blockers.end(), [](auto* a, auto* b) { return a->blocked_for < b->blocked_for; });
  Duration shortest = Duration::max();
  std::vector<int> cpus;
  for (const auto& [i, th] : d.vcpus) {
    cpus.push_back(i);
    shortest = std::min(shortest, th.no_progress);
  }
  shortest = std::min(shortest, main->no_progress);

  auto& c = t.propose(FindingKind::kVmWideStall, "vm", Severity::kCritical, Cause::kHostBlocked);
  Finding& f = c.finding;
  f.cpus = cpus;
  f.onset = t.now - shortest;
  const bool whole_process = waiters.empty();
  if (whole_process) {
    f.summary = "The whole VM is stopped: every vCPU thread and the main loop are blocked on the host (" +
                blocked_phrase(*primary) + "); the guest cannot run or report anything. Cause: host.";
    t.vm_wide_phrase = "the whole qemu process is blocked on the host (" + blocked_phrase(*primary) + ")";
  } else {
    f.summary = "The whole VM is stopped: " + blocked_phrase(*primary) +
                ", and every other vCPU thread and the main loop wait on a futex behind it (QEMU's big lock) "
                "with no run progress; the guest cannot run or report anything. Cause: host.";
    t.vm_wide_phrase = "the whole VM is stopped behind " + thread_phrase(*primary) + ", in " +
                       state_words(primary->latest.state) + " for " + format_duration(primary->blocked_for) +
                       " (QEMU's big lock)";
  }
  for (const auto* b : blockers) f.evidence.push_back(thread_evidence(*b, blocked_phrase(*b)));
  for (const auto* w : waiters) {
    std::string who = w == main ? "main loop " : (w->vcpu >= 0 ? "vCPU " + std::to_string(w->vcpu) + " " : "");
    f.evidence.push_back(thread_evidence(*w, who + thread_phrase(*w) + " waits on a futex (wchan " + w->latest.wchan +
                                                 ") with no run progress for " + format_duration(w->no_progress)));
  }
  c.signature = "blocker=" + std::to_string(primary->latest.tid) + " n=" + std::to_string(blockers.size());
  t.vm_wide_id = f.id;
}

void rule_host_blocked(TickContext& t) {
  const DomainState& d = t.d;
  if (!t.vm_wide_id.empty()) {
    // VM_WIDE_STALL explains every vCPU. A blocked vCPU thread keeps its own finding (it is a
    // fact of its own, and the waiters often pile up a tick after it: resolving it then would
    // read as "fixed"), marked as explained by the VM-wide stall; the futex waiters get none.
    for (const auto& [i, th] : d.vcpus) {
      t.blocked_id[i] = t.vm_wide_id;
      if (!th.blocked) continue;
      auto& c = t.propose(FindingKind::kVcpuHostBlocked, "vcpu" + std::to_string(i), Severity::kCritical,
                          Cause::kHostBlocked);
      Finding& f = c.finding;
      f.onset = t.now - th.blocked_for;
      f.cpus = {i};
      f.explained_by = t.vm_wide_id;
      f.summary = "vCPU " + std::to_string(i) + "'s " + blocked_phrase(th) +
                  "; the whole VM is stopped behind it (see VM_WIDE_STALL). Cause: host.";
      f.evidence.push_back(thread_evidence(th, "vCPU " + std::to_string(i) + "'s " + blocked_phrase(th)));
      c.signature = std::string(1, thread_state_letter(th.latest.state)) + " vm-wide";
    }
    return;
  }
  const ThreadTracker* main = main_loop(d);
  // vCPUs that wait on a futex with no progress while the main loop does too depend on whoever
  // holds QEMU's big lock; a stuck thread is the likely holder.
  std::vector<int> dependents;
  const bool main_stuck = main != nullptr && (main->futex_wait || main->blocked);
  if (main_stuck)
    for (const auto& [i, th] : d.vcpus)
      if (th.futex_wait) dependents.push_back(i);

  std::vector<const ThreadTracker*> blockers;
  for (const auto& [i, th] : d.vcpus)
    if (th.blocked) blockers.push_back(&th);
  if (!dependents.empty())
    for (const auto& [tid, th] : d.others)
      if (th.blocked) blockers.push_back(&th);
  const ThreadTracker* lock_holder = nullptr;
  if (!dependents.empty() && !blockers.empty())
    lock_holder = *std::max_element(blockers.begin(), blockers.end(),
                                    [](auto* a, auto* b) { return a->blocked_for < b->blocked_for; });

  for (const ThreadTracker* b : blockers) {
    const bool holder = b == lock_holder;
    std::string key = b->vcpu >= 0 ? "vcpu" + std::to_string(b->vcpu) : "tid" + std::to_string(b->latest.tid);
    auto& c = t.propose(FindingKind::kVcpuHostBlocked, key, Severity::kCritical, Cause::kHostBlocked);
    Finding& f = c.finding;
    f.onset = t.now - b->blocked_for;
    if (b->vcpu >= 0) f.cpus.push_back(b->vcpu);
    if (holder) f.cpus.insert(f.cpus.end(), dependents.begin(), dependents.end());
    std::sort(f.cpus.begin(), f.cpus.end());
    f.cpus.erase(std::unique(f.cpus.begin(), f.cpus.end()), f.cpus.end());
    std::string who = b->vcpu >= 0 ? "vCPU " + std::to_string(b->vcpu) + "'s " : "qemu ";
    f.summary = who + blocked_phrase(*b);
    if (b->vcpu >= 0) f.summary += ": guest CPU" + std::to_string(b->vcpu) + " is not executing at all";
    if (holder) {
      std::vector<int> others;
      for (int i : dependents)
        if (i != b->vcpu) others.push_back(i);
      if (!others.empty())
        f.summary += "; " + cpu_list(others) + (others.size() == 1 ? "'s thread" : "'s threads") +
                     " and the main loop wait on a futex behind it (likely QEMU's big lock)";
    }
    f.summary += ". Cause: host.";
    f.evidence.push_back(thread_evidence(*b, who + blocked_phrase(*b)));
    if (holder)
      for (int i : dependents) {
        const ThreadTracker& dep = d.vcpus.at(i);
        if (&dep == b) continue;
        f.evidence.push_back(thread_evidence(dep, "vCPU " + std::to_string(i) + ": " + thread_phrase(dep) +
                                                      " waits on a futex with no run progress for " +
                                                      format_duration(dep.no_progress)));
      }
    c.signature = std::string(1, thread_state_letter(b->latest.state)) + " cpus=" + std::to_string(f.cpus.size());
    if (b->vcpu >= 0) t.blocked_id[b->vcpu] = f.id;
    if (holder)
      for (int i : dependents)
        if (i != b->vcpu) {
          t.blocked_id[i] = f.id;
          t.blocked_behind[i] = b;
        }
  }
}

void rule_host_starved(TickContext& t) {
  for (const auto& [i, th] : t.d.vcpus) {
    if (!th.starved || !th.window) continue;
    auto& c = t.propose(FindingKind::kVcpuHostStarved, "vcpu" + std::to_string(i), Severity::kWarning,
                        Cause::kHostStarved);
    Finding& f = c.finding;
    f.cpus = {i};
    f.onset = *th.starved_since - th.window->span;
    const double denied = std::max(th.window->steal_fraction, th.window->throttled_fraction);
    f.summary = "vCPU " + std::to_string(i) + "'s " + starved_phrase(th, t.config.starved_window) + ": guest CPU" +
                std::to_string(i) + " runs at " + percent(std::max(0.0, 1.0 - denied)) +
                " of its speed at most. Cause: host.";
    Evidence e = thread_evidence(th, "vCPU " + std::to_string(i) + ": " + starved_phrase(th, t.config.starved_window));
    e.facts["throttled_fraction"] = percent(th.window->throttled_fraction);
    e.facts["nr_throttled_delta"] = std::to_string(th.window->throttled_count);
    e.durations["window"] = th.window->span;
    f.evidence.push_back(std::move(e));
    c.signature = th.window->throttled_count > 0 ? "throttled" : "steal";
    t.starved_id[i] = f.id;
  }
}

void rule_monitor_unresponsive(TickContext& t) {
  const MonitorStatus& m = t.d.monitor;
  if (m.responsive) return;
  const ThreadTracker* main = main_loop(t.d);
  Cause cause = Cause::kUnknown;
  std::string why;
  std::string explained_by;
  if (!t.vm_wide_id.empty()) {
    cause = Cause::kHostBlocked;
    why = ": " + t.vm_wide_phrase;
    explained_by = t.vm_wide_id;
  } else if (main != nullptr && (main->blocked || main->futex_wait)) {
    cause = Cause::kHostBlocked;
    why = main->blocked ? ": the main loop's " + blocked_phrase(*main)
                        : ": the main loop waits on a futex with no run progress for " + format_duration(main->no_progress);
  }
  auto& c = t.propose(FindingKind::kHostMonitorUnresponsive, "monitor", Severity::kWarning, cause);
  Finding& f = c.finding;
  f.onset = m.unresponsive_since.value_or(t.now);
  f.explained_by = explained_by;
  const std::string cmd = m.pending_command.empty() ? "a command" : m.pending_command;
  f.summary = "The QEMU monitor has not answered " + cmd + " for " + format_duration(t.now - f.onset) + why + ".";
  Evidence e;
  e.text = "monitor call " + cmd + " missed its deadline";
  e.facts["command"] = m.pending_command;
  f.evidence.push_back(std::move(e));
  if (main != nullptr) f.evidence.push_back(thread_evidence(*main, "main loop " + thread_phrase(*main)));
  c.signature = std::string(to_string(cause));
}

void rule_panic(TickContext& t) {
  const PanicState& p = t.d.panic;
  if (!p.active) return;
  auto& c = t.propose(FindingKind::kGuestPanic, "panic", Severity::kCritical, Cause::kGuestOther);
  Finding& f = c.finding;
  f.onset = p.since;
  if (p.cpu >= 0) f.cpus = {p.cpu};
  if (p.cpu >= 0)
    f.summary = "The guest kernel panicked on CPU" + std::to_string(p.cpu);
  else
    f.summary = "libvirt reports the guest crashed" + (p.event_detail.empty() ? "" : " (" + p.event_detail + ")");
  if (!p.message.empty())
    f.summary += ": \"" + p.message + "\"";
  else if (!p.printk_tail.empty())
    f.summary += "; last console line: \"" + p.printk_tail.back() + "\"";
  // The overflowing CPU: the oops header's, else the panicking one (the same CPU in both paths:
  // the scheduler check and the guard-page fault panic where the overflow was caught).
  const int overflow_cpu = p.stack_overflow ? (p.stack_overflow->cpu >= 0 ? p.stack_overflow->cpu : p.cpu) : -1;
  std::string overflow_where;
  if (p.stack_overflow) {
    const StackOverflowNote& n = *p.stack_overflow;
    overflow_where = overflow_cpu >= 0 ? "CPU" + std::to_string(overflow_cpu) : std::string("an unnamed CPU");
    if (n.pid >= 0) overflow_where += " (" + (n.comm.empty() ? std::string("?") : n.comm) + ", pid " + std::to_string(n.pid) + ")";
    f.summary += ". A kernel stack overflow on " + overflow_where;
  }
  f.summary += ". It stands until the guest resets or reboots.";
  Evidence e;
  e.text = p.cpu >= 0 ? "panic_cpu = " + std::to_string(p.cpu) : "lifecycle event: crashed";
  if (p.cpu >= 0) e.facts["panic_cpu"] = std::to_string(p.cpu);
  if (p.from_event) e.facts["libvirt_event"] = "crashed" + (p.event_detail.empty() ? "" : "/" + p.event_detail);
  f.evidence.push_back(std::move(e));
  if (!p.printk_tail.empty()) {
    Evidence tail;
    tail.text = "last console lines:";
    for (const auto& line : p.printk_tail) tail.text += "\n" + line;
    tail.facts["lines"] = std::to_string(p.printk_tail.size());
    f.evidence.push_back(std::move(tail));
  }
  if (p.stack_overflow) {
    const StackOverflowNote& n = *p.stack_overflow;
    Evidence so;
    so.text = "kernel stack overflow on " + overflow_where + ": the panic text says \"" + n.line + "\"";
    so.stack_overflow = StackOverflowEvidence{overflow_cpu >= 0 ? std::optional<int>(overflow_cpu) : std::nullopt,
                                              n.pid >= 0 ? std::optional<int>(n.pid) : std::nullopt, n.comm};
    f.evidence.push_back(std::move(so));
  }
  if (!p.text.empty()) {
    // The oops/panic block, joined from the console tails of successive snapshots.
    Evidence text;
    text.text = "oops/panic text:";
    for (const auto& line : p.text) text.text += "\n" + line;
    text.panic_text = PanicTextEvidence{p.text.size(), p.message};
    f.evidence.push_back(std::move(text));
  }
  // The panic text arriving (or growing) is material: an UPDATED event, same finding.
  c.signature = std::to_string(p.cpu) + (p.from_event ? "/event" : "") + "|" + p.message + "|" +
                std::to_string(p.text.size()) + (p.stack_overflow ? "|stack-overflow" : "");
}

}  // namespace stallmon::diagnosis
