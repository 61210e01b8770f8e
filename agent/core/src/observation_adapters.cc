// SPDX-License-Identifier: Apache-2.0
#include "stallmon/core/observation_adapters.h"

#include <algorithm>
#include <string>
#include <utility>

namespace stallmon::core {

namespace {

bool blocking_letter(char s) { return s == 'D' || s == 'T' || s == 't'; }

}  // namespace

diagnosis::HostThreadView to_host_thread_view(int32_t tid, const std::string& comm,
                                              const host::ThreadSample& latest,
                                              const host::StateTracker& tracker,
                                              const host::BlockedDetail& detail) {
  diagnosis::HostThreadView v;
  v.tid = tid;
  v.name = comm;
  v.state = diagnosis::thread_state_from_letter(latest.state);
  v.run_time = diagnosis::Duration(static_cast<int64_t>(latest.run_ns));
  v.run_delay = diagnosis::Duration(static_cast<int64_t>(latest.wait_ns));
  // The detail is read (rate-limited) while the thread is blocked and kept afterwards: show it
  // only while the thread is still blocked, or a running thread would carry a stale stack.
  if (blocking_letter(latest.state) && detail.t_ns != 0 && blocking_letter(detail.state)) {
    v.wchan = detail.wchan;
    v.host_stack = detail.stack;
  }
  if (tracker.started && tracker.state == latest.state && latest.t_ns >= tracker.state_since_ns) {
    v.in_state_for = diagnosis::Duration(latest.t_ns - tracker.state_since_ns);
  }
  if (latest.flags & host::ThreadSample::kHasCgroup) {
    v.cgroup_nr_throttled = latest.nr_throttled;
    v.cgroup_throttled_time = diagnosis::Duration(static_cast<int64_t>(latest.throttled_ns));
  }
  return v;
}

std::optional<diagnosis::HostThreadView> to_host_thread_view(const host::TrackedThread& thread) {
  if (thread.history().empty()) return std::nullopt;
  return to_host_thread_view(thread.tid(), thread.comm(), thread.history().newest(),
                             thread.tracker(), thread.detail());
}

diagnosis::CallType to_call_type(introspect::CsdType type) {
  switch (type) {
    case introspect::CsdType::kAsync: return diagnosis::CallType::kAsync;
    case introspect::CsdType::kSync: return diagnosis::CallType::kSync;
    case introspect::CsdType::kIrqWork: return diagnosis::CallType::kIrqWork;
    case introspect::CsdType::kTtwu: return diagnosis::CallType::kTtwu;
    // Pre-5.8 queues hold only call_single_data: a function call whose sync-ness the queue
    // does not say.
    case introspect::CsdType::kLegacy:
    case introspect::CsdType::kUnknown: break;
  }
  return diagnosis::CallType::kUnknown;
}

diagnosis::GuestView to_guest_view(const introspect::GuestSnapshot& snap) {
  diagnosis::GuestView g;
  g.running_clock_ns = snap.guest_clock_ns;
  if (snap.watchdog_thresh) {
    g.watchdog_thresh = *snap.watchdog_thresh;
    g.softlockup_watchdog_enabled = *snap.watchdog_thresh > 0;
  }
  g.panic_cpu = snap.panic_cpu.value_or(-1);
  g.panic_cpu_read = snap.panic_cpu.has_value();
  g.printk_tail.reserve(snap.printk.size());
  for (const introspect::PrintkRecord& r : snap.printk) g.printk_tail.push_back(r.text);

  g.cpus.reserve(snap.cpus.size());
  for (const introspect::CpuSnapshot& c : snap.cpus) {
    diagnosis::GuestCpuView v;
    v.cpu = static_cast<int>(c.cpu);
    v.online = c.online;
    if (c.rq.ok) {
      v.current_pid = c.rq.curr.pid;
      v.current_comm = c.rq.curr.comm;
      v.idle = c.rq.curr_is_idle;
      v.nr_running = c.rq.nr_running;
      v.ttwu_pending = c.rq.ttwu_pending.value_or(0) != 0;
    }
    if (c.call_single_queue_ok) {
      v.call_single_queue.reserve(c.call_single_queue.size());
      for (const introspect::QueueEntry& e : c.call_single_queue) {
        diagnosis::QueuedCall q;
        q.csd_address = e.object;
        q.type = to_call_type(e.type);
        if (e.type == introspect::CsdType::kTtwu) {
          if (e.task.ok) q.function = e.task.comm + "/" + std::to_string(e.task.pid);
        } else {
          q.function = e.func_name;
        }
        v.call_single_queue.push_back(std::move(q));
      }
    }
    if (c.cfd_ok) {
      v.cfd_requests.reserve(c.cfd_targets.size());
      for (const introspect::CfdTarget& t : c.cfd_targets) {
        if (!t.ok) continue;  // an unreadable csd is no evidence either way
        diagnosis::CsdRequest r;
        r.target_cpu = static_cast<int>(t.target);
        r.locked = t.locked;
        r.function = t.func_name;
        r.csd_address = t.csd;
        r.flags = t.flags;
        v.cfd_requests.push_back(std::move(r));
      }
    }
    v.watchdog_touch_ts = c.watchdog.touch_ts;
    v.watchdog_report_ts = c.watchdog.report_ts;
    v.hrtimer_interrupts = c.watchdog.hrtimer_interrupts;
    v.hrtimer_interrupts_saved = c.watchdog.hrtimer_interrupts_saved;
    v.call_ipis = c.call_ipis;
    v.stack_end_corrupt = c.stack_end_corrupt;
    g.cpus.push_back(std::move(v));
  }
  return g;
}

diagnosis::KernelTrace to_kernel_trace(const Result<introspect::Backtrace>& backtrace,
                                       const introspect::GuestSnapshot& snapshot, uint32_t cpu,
                                       diagnosis::Timestamp taken_at, size_t max_frames) {
  diagnosis::KernelTrace t;
  t.taken_at = taken_at;
  if (cpu < snapshot.cpus.size() && snapshot.cpus[cpu].rq.curr.ok) {
    t.pid = snapshot.cpus[cpu].rq.curr.pid;
    t.comm = snapshot.cpus[cpu].rq.curr.comm;
  }
  if (!backtrace.ok()) {
    t.error = backtrace.error().to_string();
    return t;
  }
  const introspect::Backtrace& bt = *backtrace;
  switch (bt.verification) {
    case introspect::Verification::kOrcChain: t.verification = diagnosis::TraceVerification::kOrcChain; break;
    case introspect::Verification::kPtRegs: t.verification = diagnosis::TraceVerification::kInterruptFrame; break;
    case introspect::Verification::kScannedUnverified: t.verification = diagnosis::TraceVerification::kUnverified; break;
    case introspect::Verification::kInferredThreadfn: t.verification = diagnosis::TraceVerification::kOrcChain; break;  // frame-only
  }
  const size_t n = std::min(bt.frames.size(), max_frames);
  t.frames.reserve(n);
  for (size_t i = 0; i < n; ++i) t.frames.push_back(bt.frames[i].format());
  t.truncated = bt.truncated || bt.frames.size() > n;
  // Started on the hardirq stack or an exception stack (NMI): that stack's frames, then (the
  // interrupt frame the chain passed) where the interrupt came in: for an NMI that came in on
  // the hardirq stack, the interrupt handler it stopped (the hard-lockup detector's NMI finds
  // the CPU where it is stuck).
  const introspect::StackKind first = n > 0 ? bt.frames[0].stack : introspect::StackKind::kTask;
  while (t.irq_frames < n && first != introspect::StackKind::kTask && bt.frames[t.irq_frames].stack == first)
    ++t.irq_frames;
  if (t.irq_frames > 0)
    for (size_t i = t.irq_frames; i < n && !t.interrupted; ++i)
      if (bt.frames[i].interrupted) t.interrupted = i;
  return t;
}

diagnosis::MonitorStatus to_monitor_status(const libvirt::MonitorHealth& health,
                                           const ClockMapping& steady_to_engine) {
  diagnosis::MonitorStatus m;
  m.responsive = health.responsive;
  if (!health.responsive) {
    // libstdc++'s steady_clock is CLOCK_MONOTONIC, the clock the mapping is taken against.
    const auto mono = std::chrono::duration_cast<std::chrono::nanoseconds>(
        health.since_steady.time_since_epoch());
    m.unresponsive_since = steady_to_engine.to_engine(mono.count());
    m.pending_command = health.stuck_call;
  }
  return m;
}

std::optional<diagnosis::DomainEvent> to_diagnosis_event(const libvirt::DomainEvent& event,
                                                         diagnosis::Timestamp at) {
  diagnosis::DomainEvent e;
  e.at = at;
  e.detail = event.detail;
  switch (event.kind) {
    case libvirt::DomainEventKind::kCrashed: e.type = diagnosis::DomainEventType::kCrashed; break;
    case libvirt::DomainEventKind::kStarted: e.type = diagnosis::DomainEventType::kStarted; break;
    case libvirt::DomainEventKind::kRebooted: e.type = diagnosis::DomainEventType::kRebooted; break;
    case libvirt::DomainEventKind::kStopped: e.type = diagnosis::DomainEventType::kStopped; break;
    case libvirt::DomainEventKind::kSuspended:
    case libvirt::DomainEventKind::kPmSuspended: e.type = diagnosis::DomainEventType::kPaused; break;
    case libvirt::DomainEventKind::kResumed: e.type = diagnosis::DomainEventType::kResumed; break;
    default: return std::nullopt;
  }
  return e;
}

}  // namespace stallmon::core
