// SPDX-License-Identifier: Apache-2.0
#include "stallmon/server/convert.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <type_traits>

#include "stallmon/base/utf8.h"
#include "stallmon/diagnosis/wait_graph.h"
#include "stallmon/introspect/snapshot_json.h"

namespace stallmon::server {

static_assert(std::is_same_v<diagnosis::Timestamp, std::chrono::system_clock::time_point>,
              "the Timestamp overload of to_proto relies on this");

namespace {

constexpr int64_t kNanosPerSecond = 1'000'000'000;

void set_duration_ns(int64_t ns, google::protobuf::Duration* out) {
  // Duration requires seconds and nanos of the same sign.
  out->set_seconds(ns / kNanosPerSecond);
  out->set_nanos(static_cast<int32_t>(ns % kNanosPerSecond));
}

void set_timestamp_ns(int64_t ns, google::protobuf::Timestamp* out) {
  // Timestamp requires 0 <= nanos < 1e9, also before the epoch.
  int64_t s = ns / kNanosPerSecond;
  int64_t n = ns % kNanosPerSecond;
  if (n < 0) {
    n += kNanosPerSecond;
    s -= 1;
  }
  out->set_seconds(s);
  out->set_nanos(static_cast<int32_t>(n));
}

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

const char* csd_type_name(introspect::CsdType t) {
  switch (t) {
    case introspect::CsdType::kAsync: return "ASYNC";
    case introspect::CsdType::kSync: return "SYNC";
    case introspect::CsdType::kIrqWork: return "IRQ_WORK";
    case introspect::CsdType::kTtwu: return "TTWU";
    case introspect::CsdType::kLegacy: return "LEGACY";
    case introspect::CsdType::kUnknown: break;
  }
  return "UNKNOWN";
}

// How long each (waiter, target) csd wait has been seen, from active GUEST_IPI_STALL evidence.
std::map<std::pair<int, int>, int64_t> ipi_wait_ms(const std::vector<diagnosis::Finding>& findings) {
  std::map<std::pair<int, int>, int64_t> out;
  for (const auto& f : findings) {
    if (f.kind != diagnosis::FindingKind::kGuestIpiStall || !f.active) continue;
    for (const auto& e : f.evidence)
      if (const auto& w = e.csd_wait)
        out[{w->waiter_cpu, w->target_cpu}] = std::chrono::duration_cast<std::chrono::milliseconds>(w->age).count();
  }
  return out;
}

}  // namespace

std::string sanitize_utf8(std::string_view s) { return stallmon::sanitize_utf8(s); }

void to_proto(std::chrono::nanoseconds d, google::protobuf::Duration* out) { set_duration_ns(d.count(), out); }

void to_proto(std::chrono::system_clock::time_point t, google::protobuf::Timestamp* out) {
  set_timestamp_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count(), out);
}

std::chrono::nanoseconds from_proto(const google::protobuf::Duration& d) {
  // Valid durations are within +-10000 years: seconds * 1e9 fits in int64 only up to ~292
  // years, so clamp rather than overflow (validation bounds every field we use far lower).
  constexpr int64_t kMaxSeconds = INT64_MAX / kNanosPerSecond - 1;
  int64_t s = std::clamp<int64_t>(d.seconds(), -kMaxSeconds, kMaxSeconds);
  return std::chrono::nanoseconds(s * kNanosPerSecond + d.nanos());
}

diagnosis::Timestamp from_proto(const google::protobuf::Timestamp& t) {
  constexpr int64_t kMaxSeconds = INT64_MAX / kNanosPerSecond - 1;
  int64_t s = std::clamp<int64_t>(t.seconds(), -kMaxSeconds, kMaxSeconds);
  return diagnosis::Timestamp(diagnosis::Duration(s * kNanosPerSecond + t.nanos()));
}

v1::FindingKind to_proto(diagnosis::FindingKind k) {
  int v = static_cast<int>(k);
  return v1::FindingKind_IsValid(v) ? static_cast<v1::FindingKind>(v) : v1::FINDING_KIND_UNSPECIFIED;
}

diagnosis::FindingKind from_proto(v1::FindingKind k) {
  int v = static_cast<int>(k);
  if (v <= 0 || v > static_cast<int>(diagnosis::FindingKind::kGuestStackOverflow)) return diagnosis::FindingKind::kUnspecified;
  return static_cast<diagnosis::FindingKind>(v);
}

v1::Severity to_proto(diagnosis::Severity s) {
  int v = static_cast<int>(s);
  return v1::Severity_IsValid(v) ? static_cast<v1::Severity>(v) : v1::SEVERITY_UNSPECIFIED;
}

v1::Cause to_proto(diagnosis::Cause c) {
  int v = static_cast<int>(c);
  return v1::Cause_IsValid(v) ? static_cast<v1::Cause>(v) : v1::CAUSE_UNSPECIFIED;
}

v1::FindingEvent::Type to_proto(diagnosis::FindingEvent::Type t) {
  switch (t) {
    case diagnosis::FindingEvent::Type::kOpened: return v1::FindingEvent::OPENED;
    case diagnosis::FindingEvent::Type::kUpdated: return v1::FindingEvent::UPDATED;
    case diagnosis::FindingEvent::Type::kResolved: return v1::FindingEvent::RESOLVED;
    case diagnosis::FindingEvent::Type::kUnspecified: break;
  }
  return v1::FindingEvent::TYPE_UNSPECIFIED;
}

void to_proto(const diagnosis::Finding& f, v1::Finding* out) {
  out->set_id(sanitize_utf8(f.id));
  out->set_kind(to_proto(f.kind));
  out->set_severity(to_proto(f.severity));
  out->set_cause(to_proto(f.cause));
  out->set_domain(sanitize_utf8(f.domain));
  out->set_domain_uuid(sanitize_utf8(f.domain_uuid));
  for (int c : f.cpus) out->add_cpus(c);
  to_proto(f.onset, out->mutable_onset());
  to_proto(f.opened_at, out->mutable_opened_at());
  to_proto(f.last_update, out->mutable_last_update());
  to_proto(f.duration, out->mutable_duration());
  if (f.resolved_at) to_proto(*f.resolved_at, out->mutable_resolved_at());
  out->set_active(f.active);
  out->set_summary(sanitize_utf8(f.summary));
  for (const auto& e : f.evidence) {
    auto* pe = out->add_evidence();
    pe->set_text(sanitize_utf8(e.text));
    for (const auto& [k, v] : diagnosis::evidence_facts(e)) (*pe->mutable_facts())[sanitize_utf8(k)] = sanitize_utf8(v);
    for (const auto& frame : e.host_stack) pe->add_host_stack(sanitize_utf8(frame));
  }
  if (f.predicted_guest_report_in) to_proto(*f.predicted_guest_report_in, out->mutable_predicted_guest_report_in());
  out->set_explained_by(sanitize_utf8(f.explained_by));
  out->set_incident_id(sanitize_utf8(f.incident_id));
  for (const auto& id : f.symptom_ids) out->add_symptom_ids(sanitize_utf8(id));
  out->set_recurrences(f.recurrences);
  out->set_cause_evaluating(f.cause_evaluating);
}

void to_proto(const diagnosis::FindingEvent& e, uint64_t incarnation, v1::FindingEvent* out) {
  out->set_type(to_proto(e.type));
  out->set_revision(e.revision);
  out->set_incarnation(incarnation);
  to_proto(e.finding, out->mutable_finding());
}

v1::ThreadState thread_state_from_letter(char letter) {
  switch (letter) {
    case 'R': return v1::THREAD_STATE_RUNNING;
    case 'S': return v1::THREAD_STATE_SLEEPING;
    case 'D': return v1::THREAD_STATE_DISK_SLEEP;
    case 'T': return v1::THREAD_STATE_STOPPED;
    case 't': return v1::THREAD_STATE_TRACING_STOP;
    case 'Z': return v1::THREAD_STATE_ZOMBIE;
    case 'I': return v1::THREAD_STATE_IDLE;
    case 'X':
    case 'x': return v1::THREAD_STATE_DEAD;
    default: return v1::THREAD_STATE_UNSPECIFIED;
  }
}

void to_proto(const core::DomainSummary& d, v1::Severity worst, v1::DomainSummary* out) {
  out->set_name(sanitize_utf8(d.name));
  out->set_uuid(sanitize_utf8(d.uuid));
  out->set_qemu_pid(static_cast<int32_t>(d.qemu_pid));
  out->set_vcpu_count(static_cast<int32_t>(d.vcpu_count));
  out->set_state(libvirt::to_string(d.state));
  out->set_active_findings(static_cast<int32_t>(d.active_findings));
  out->set_worst_severity(worst);
  out->set_introspection_ok(d.introspection.ok());
  out->set_monitor_responsive(d.monitor.responsive);
}

void to_proto(const core::DomainSummary& d, v1::DomainHealth* out) {
  out->set_domain(sanitize_utf8(d.name));
  out->set_uuid(sanitize_utf8(d.uuid));
  const auto& in = d.introspection;
  out->set_introspection_ok(in.ok());
  std::string err;
  if (!in.ok()) {
    // Say why there is no guest view, with what an operator needs ("no Linux kernel found
    // (scanned 4.0 GiB, next try in 2h 16m)"); "now" is the domain's last tick.
    err = core::describe(in, d.last_tick.value_or(d.watched_since));
    if (in.state == core::IntrospectionState::kWaitingForLayout && in.error.empty() &&
        !d.ram_layout_error.empty()) {
      err += ": " + d.ram_layout_error;
    }
  } else {
    err = in.error;
  }
  out->set_introspection_error(sanitize_utf8(err));
  out->set_kernel_release(sanitize_utf8(in.kernel_release));
  out->set_kernel_build_id(sanitize_utf8(in.build_id));
  out->set_monitor_responsive(d.monitor.responsive);
  if (in.last_snapshot_at) to_proto(*in.last_snapshot_at, out->mutable_last_snapshot_at());
  to_proto(in.last_snapshot_latency, out->mutable_last_snapshot_latency());
  out->set_snapshots(in.snapshots);
  out->set_snapshot_errors(in.snapshot_errors);
  out->set_introspection_state(core::to_string(in.state));
  out->set_discovery_bytes_read(in.discovery_bytes_read);
  to_proto(in.discovery_time, out->mutable_discovery_time());
  if (in.next_attempt_at) to_proto(*in.next_attempt_at, out->mutable_next_discovery_at());
  out->set_reads_abandoned(in.reads_abandoned);
  out->set_reboots_detected(in.reboots_detected);
}

namespace {

bool blocking_letter(char c) { return c == 'D' || c == 'T' || c == 't'; }

void set_counters(const host::ThreadSample& s, v1::HostSample* out) {
  out->set_state(thread_state_from_letter(s.state));
  out->set_state_letter(std::string(1, s.state));
  to_proto(std::chrono::nanoseconds(static_cast<int64_t>(s.run_ns)), out->mutable_run_time());
  to_proto(std::chrono::nanoseconds(static_cast<int64_t>(s.wait_ns)), out->mutable_run_delay());
  out->set_timeslices(s.timeslices);
  out->set_voluntary_switches(s.voluntary_switches);
  out->set_involuntary_switches(s.involuntary_switches);
  out->set_last_host_cpu(s.cpu);
  if (s.flags & host::ThreadSample::kHasCgroup) {
    out->set_cgroup_nr_throttled(s.nr_throttled);
    to_proto(std::chrono::nanoseconds(static_cast<int64_t>(s.throttled_ns)), out->mutable_cgroup_throttled_time());
  }
}

}  // namespace

std::vector<std::string> current_host_stack(const core::ThreadStatus& t) {
  // A stack read during an earlier block must not be shown for a thread that runs again.
  if (!t.has_sample || !blocking_letter(t.latest.state) || t.blocked.t_ns == 0 ||
      t.blocked.state != t.latest.state) {
    return {};
  }
  std::vector<std::string> out;
  for (const auto& f : t.blocked.stack) out.push_back(sanitize_utf8(f));
  return out;
}

void to_proto(const core::ThreadStatus& t, v1::HostSample* out) {
  if (!t.has_sample) return;
  to_proto(t.latest_at, out->mutable_at());
  set_counters(t.latest, out);
  if (blocking_letter(t.latest.state) && t.blocked.t_ns != 0 && t.blocked.state == t.latest.state) {
    out->set_wchan(sanitize_utf8(t.blocked.wchan));
  }
  const auto& sig = t.signals;
  if (sig.valid) {
    out->set_run_fraction(sig.run_fraction);
    out->set_steal_fraction(sig.steal_fraction);
    to_proto(std::chrono::nanoseconds(sig.time_in_state_ns), out->mutable_in_state_for());
    out->set_run_progress(sig.run_progress);
    to_proto(std::chrono::nanoseconds(sig.no_progress_ns), out->mutable_no_progress_for());
  }
}

void to_proto(const core::HistoryPoint& p, v1::HostSample* out) {
  to_proto(p.time, out->mutable_at());
  set_counters(p.sample, out);
}

void to_proto(const core::DomainDetail& d, v1::Severity worst, v1::Domain* out) {
  to_proto(d.summary, worst, out->mutable_summary());
  to_proto(d.summary, out->mutable_health());
  uint64_t guest_clock = d.guest ? d.guest->guest_clock_ns : 0;
  if (d.guest) to_proto(d.guest->taken_at, out->mutable_guest_snapshot_at());
  for (const auto& v : d.vcpus) {
    auto* pv = out->add_vcpus();
    pv->set_index(v.index);
    pv->set_host_tid(v.thread.tid);
    pv->set_thread_name(sanitize_utf8(v.thread.name));
    if (v.thread.has_sample) to_proto(v.thread, pv->mutable_latest());
    if (v.guest) to_proto(*v.guest, guest_clock, pv->mutable_guest());
    for (auto& f : current_host_stack(v.thread)) pv->add_host_stack(std::move(f));
  }
  for (const auto& t : d.other_threads) {
    auto* pt = out->add_other_threads();
    pt->set_tid(t.tid);
    pt->set_name(sanitize_utf8(t.name));
    if (t.has_sample) to_proto(t, pt->mutable_latest());
    for (auto& f : current_host_stack(t)) pt->add_host_stack(std::move(f));
  }
}

void to_proto(const core::VcpuHistory& h, size_t max_samples, v1::VcpuHistory* out) {
  out->set_vcpu(h.vcpu);
  out->set_host_tid(h.tid);
  size_t n = h.points.size();
  if (max_samples == 0 || n == 0) return;
  size_t keep = std::min(n, max_samples);
  // Indexes n-1 - round(k * (n-1) / (keep-1)) for k = keep-1 .. 0: evenly spread, first and
  // newest included, oldest first.
  for (size_t k = 0; k < keep; ++k) {
    size_t idx = keep == 1 ? n - 1 : (k * (n - 1) + (keep - 1) / 2) / (keep - 1);
    to_proto(h.points[idx], out->add_samples());
  }
}

void to_proto(const introspect::CpuSnapshot& cpu, uint64_t guest_clock_ns, v1::GuestCpuState* out) {
  out->set_online(cpu.online);
  if (cpu.rq.ok) {
    out->set_current_pid(cpu.rq.curr.pid);
    out->set_current_comm(sanitize_utf8(cpu.rq.curr.comm));
    out->set_idle(cpu.rq.curr_is_idle);
    out->set_nr_running(cpu.rq.nr_running);
    out->set_ttwu_pending(cpu.rq.ttwu_pending.value_or(0) != 0);
  }
  out->set_call_single_queue_len(static_cast<uint32_t>(cpu.call_single_queue.size()));
  if (cpu.watchdog.touch_ts && guest_clock_ns > 0) {
    // touch_ts is running_clock() >> 30 ("seconds" of 2^30 ns), as the guest's watchdog keeps it.
    uint64_t touch_ns = *cpu.watchdog.touch_ts << 30;
    int64_t age = guest_clock_ns > touch_ns ? static_cast<int64_t>(guest_clock_ns - touch_ns) : 0;
    to_proto(std::chrono::nanoseconds(age), out->mutable_watchdog_touch_age());
  }
  if (cpu.watchdog.hrtimer_interrupts) out->set_hrtimer_interrupts(*cpu.watchdog.hrtimer_interrupts);
  for (const auto& t : cpu.cfd_targets) {
    if (t.ok && t.locked && t.target != cpu.cpu) out->add_waiting_on(static_cast<int32_t>(t.target));
  }
}

std::chrono::system_clock::time_point monotonic_to_wall(uint64_t monotonic_ns,
                                                        std::chrono::system_clock::time_point wall_now,
                                                        uint64_t monotonic_now_ns) {
  auto ago = std::chrono::nanoseconds(static_cast<int64_t>(monotonic_now_ns) - static_cast<int64_t>(monotonic_ns));
  return wall_now - std::chrono::duration_cast<std::chrono::system_clock::duration>(ago);
}

void to_proto(const introspect::GuestSnapshot& s, const InspectExtras& x, v1::InspectDomainResponse* out) {
  out->set_domain(sanitize_utf8(x.domain));
  out->set_domain_uuid(sanitize_utf8(x.domain_uuid));
  out->set_kernel_release(sanitize_utf8(x.kernel_release));
  out->set_nr_cpu_ids(static_cast<int32_t>(s.nr_cpu_ids));
  for (uint32_t c : s.online_cpus) out->add_online_cpus(static_cast<int32_t>(c));
  out->set_watchdog_thresh(s.watchdog_thresh.value_or(-1));
  out->set_panic_cpu(s.panic_cpu.value_or(-1));
  to_proto(std::chrono::nanoseconds(s.duration_ns), out->mutable_snapshot_latency());
  if (s.taken_at_ns != 0) {
    to_proto(monotonic_to_wall(s.taken_at_ns, x.wall_now, x.monotonic_now_ns), out->mutable_taken_at());
  }

  auto waited = ipi_wait_ms(x.active_findings);
  std::vector<diagnosis::WaitEdge> edges;
  for (const auto& cpu : s.cpus) {
    auto* d = out->add_cpus();
    d->set_cpu(static_cast<int32_t>(cpu.cpu));
    to_proto(cpu, s.guest_clock_ns, d->mutable_state());
    for (const auto& q : cpu.call_single_queue) {
      auto* pq = d->add_call_single_queue();
      pq->set_csd_address(q.object);
      pq->set_type(csd_type_name(q.type));
      if (q.type == introspect::CsdType::kTtwu) {
        pq->set_function(sanitize_utf8(q.task.comm + "/" + std::to_string(q.task.pid)));
      } else {
        pq->set_function(sanitize_utf8(q.func_name.empty() && q.func != 0 ? hex(q.func) : q.func_name));
      }
      pq->set_source_cpu(-1);  // the csd does not record its sender; cfd_targets below do
      pq->set_locked(q.locked);
    }
    d->set_call_single_queue_truncated(cpu.call_single_queue_truncated);
    for (const auto& t : cpu.cfd_targets) {
      auto* pc = d->add_cfd();
      pc->set_target_cpu(static_cast<int32_t>(t.target));
      pc->set_locked(t.locked);
      pc->set_function(sanitize_utf8(t.func_name.empty() && t.func != 0 ? hex(t.func) : t.func_name));
      pc->set_csd_address(t.csd);
      pc->set_flags(t.flags);
      if (t.ok && t.locked && t.target != cpu.cpu) {
        auto* w = out->add_csd_waits();
        w->set_waiter_cpu(static_cast<int32_t>(cpu.cpu));
        w->set_target_cpu(static_cast<int32_t>(t.target));
        w->set_function(pc->function());
        w->set_flags(t.flags);
        w->set_csd_address(t.csd);
        auto it = waited.find({static_cast<int>(cpu.cpu), static_cast<int>(t.target)});
        if (it != waited.end()) to_proto(std::chrono::milliseconds(it->second), w->mutable_waited());
        edges.push_back({static_cast<int>(cpu.cpu), static_cast<int>(t.target)});
      }
    }
    if (cpu.watchdog.touch_ts) d->set_watchdog_touch_ts(*cpu.watchdog.touch_ts);
    if (cpu.watchdog.report_ts) d->set_watchdog_report_ts(*cpu.watchdog.report_ts);
    if (cpu.watchdog.hrtimer_interrupts_saved) d->set_hrtimer_interrupts_saved(*cpu.watchdog.hrtimer_interrupts_saved);
    if (cpu.steal) to_proto(std::chrono::nanoseconds(cpu.steal->steal_ns), d->mutable_steal());
    d->set_cfs_nr_running(cpu.rq.cfs_h_nr_running);
    d->set_rq_clock_ns(cpu.rq.clock_ns);
    for (const auto* e : s.errors_for(static_cast<int32_t>(cpu.cpu))) {
      d->add_errors(sanitize_utf8(e->what + ": " + e->message));
    }
  }

  std::set<int> flat_roots;
  for (const auto& r : diagnosis::find_wait_roots(edges)) {
    auto* pr = out->add_wait_graph();
    for (int c : r.roots) {
      pr->add_roots(c);
      flat_roots.insert(c);
    }
    pr->set_cycle(r.cycle);
    for (int c : r.waiters) pr->add_waiters(c);
  }
  for (int c : flat_roots) out->add_wait_graph_roots(c);

  // Newest N, oldest first.
  size_t n = static_cast<size_t>(std::max(0, x.printk_records));
  size_t first = s.printk.size() > n ? s.printk.size() - n : 0;
  for (size_t i = first; i < s.printk.size(); ++i) {
    const auto& r = s.printk[i];
    auto* pr = out->add_printk_tail();
    pr->set_seq(r.seq);
    to_proto(std::chrono::nanoseconds(static_cast<int64_t>(r.ts_nsec)), pr->mutable_timestamp());
    pr->set_text(sanitize_utf8(r.text));
    pr->set_level(r.level);
  }
  for (const auto& e : s.errors) {
    std::string where = e.cpu >= 0 ? "cpu " + std::to_string(e.cpu) + ": " : "";
    std::string addr = e.address ? " (at " + hex(*e.address) + ")" : "";
    out->add_errors(sanitize_utf8(where + e.what + ": " + e.message + addr));
  }
  if (x.include_json) out->set_snapshot_json(introspect::snapshot_to_json_string(s, 2));
}

namespace {

// The indexes of `n` points to send when at most `max` may go: all, or evenly spaced with the
// first and the last.
std::vector<size_t> thinned(size_t n, size_t max) {
  std::vector<size_t> idx;
  if (max == 0 || n <= max) {
    for (size_t i = 0; i < n; ++i) idx.push_back(i);
    return idx;
  }
  if (max == 1) return {n - 1};
  for (size_t k = 0; k < max; ++k) idx.push_back(k * (n - 1) / (max - 1));
  return idx;
}

void snapshot_to_proto(const diagnosis::IncidentSnapshot& s, v1::IncidentSnapshot* out) {
  to_proto(s.at, out->mutable_at());
  out->set_guest_clock_ns(s.running_clock_ns);
  out->set_watchdog_thresh(s.watchdog_thresh);
  out->set_panic_cpu(s.panic_cpu);
  out->set_troubled_cpus(s.troubled_cpus);
  for (const auto& c : s.cpus) {
    auto* p = out->add_cpus();
    p->set_cpu(c.cpu);
    p->set_online(c.online);
    p->set_idle(c.idle);
    p->set_current_pid(c.pid);
    p->set_current_comm(sanitize_utf8(c.comm));
    p->set_nr_running(c.nr_running);
    p->set_call_single_queue_len(c.queued_calls);
    for (int t : c.csd_targets) p->add_waiting_on(t);
    if (c.watchdog_age) to_proto(*c.watchdog_age, p->mutable_watchdog_age());
  }
}

}  // namespace

void to_proto(const diagnosis::IncidentBundle& b, size_t max_points, v1::Incident* out) {
  to_proto(b.finding, out->mutable_finding());
  to_proto(b.window_start, out->mutable_window_start());
  if (b.window_end) to_proto(*b.window_end, out->mutable_window_end());
  out->set_complete(b.complete());
  for (const auto& l : b.vcpus) {
    auto* lane = out->add_vcpus();
    lane->set_vcpu(l.vcpu);
    lane->set_host_tid(l.tid);
    for (size_t i : thinned(l.points.size(), max_points)) {
      const auto& p = l.points[i];
      auto* q = lane->add_points();
      to_proto(p.at, q->mutable_at());
      q->set_state(static_cast<v1::ThreadState>(p.state));
      to_proto(p.run_time, q->mutable_run_time());
      to_proto(p.run_delay, q->mutable_run_delay());
    }
  }
  for (const auto& l : b.guest_cpus) {
    auto* lane = out->add_guest_cpus();
    lane->set_cpu(l.cpu);
    for (size_t i : thinned(l.points.size(), max_points)) {
      const auto& p = l.points[i];
      auto* q = lane->add_points();
      to_proto(p.at, q->mutable_at());
      q->set_online(p.online);
      q->set_idle(p.idle);
      q->set_csd_target(p.csd_target);
      if (p.watchdog_age) to_proto(*p.watchdog_age, q->mutable_watchdog_age());
    }
  }
  if (b.at_onset) snapshot_to_proto(*b.at_onset, out->mutable_at_onset());
  if (b.at_worst) snapshot_to_proto(*b.at_worst, out->mutable_at_worst());
  for (const auto& line : b.printk_tail) out->add_printk_tail(sanitize_utf8(line));
  for (const auto& h : b.host_stacks) {
    auto* p = out->add_host_stacks();
    p->set_tid(h.tid);
    p->set_vcpu(h.vcpu);
    p->set_name(sanitize_utf8(h.name));
    p->set_state(static_cast<v1::ThreadState>(h.state));
    p->set_wchan(sanitize_utf8(h.wchan));
    for (const auto& f : h.frames) p->add_frames(sanitize_utf8(f));
    to_proto(h.first_seen, p->mutable_first_seen());
    to_proto(h.last_seen, p->mutable_last_seen());
  }
  for (const auto& r : b.related) {
    auto* p = out->add_related();
    p->set_id(sanitize_utf8(r.id));
    p->set_kind(to_proto(r.kind));
    p->set_severity(to_proto(r.severity));
    to_proto(r.onset, p->mutable_onset());
    if (r.resolved_at) to_proto(*r.resolved_at, p->mutable_resolved_at());
    for (int c : r.cpus) p->add_cpus(c);
    p->set_summary(sanitize_utf8(r.summary));
  }
  to_proto(b.stride, out->mutable_stride());
  auto* d = out->mutable_dropped();
  d->set_vcpu_points(b.dropped.vcpu_points);
  d->set_guest_points(b.dropped.guest_points);
  d->set_lanes(b.dropped.lanes);
  d->set_host_stacks(b.dropped.host_stacks);
  d->set_printk_lines(b.dropped.printk_lines);
  d->set_related(b.dropped.related);
}

}  // namespace stallmon::server
