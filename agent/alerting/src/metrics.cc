// SPDX-License-Identifier: Apache-2.0
#include "stallmon/alerting/metrics.h"

#include "stallmon/alerting/alerts.h"

#include <algorithm>
#include <chrono>
#include <set>

namespace stallmon::alerting {

namespace {

// Prometheus label value of an introspection state (stable, snake case).
const char* introspection_state_label(core::IntrospectionState s) {
  switch (s) {
    case core::IntrospectionState::kDisabled: return "disabled";
    case core::IntrospectionState::kWaitingForLayout: return "waiting_for_layout";
    case core::IntrospectionState::kDiscovering: return "discovering";
    case core::IntrospectionState::kReady: return "ready";
    case core::IntrospectionState::kFailed: return "failed";
    case core::IntrospectionState::kPaused: return "paused";
    case core::IntrospectionState::kNoKernel: return "no_kernel";
    case core::IntrospectionState::kOverBudget: return "over_budget";
  }
  return "unknown";
}

using diagnosis::Finding;
using diagnosis::FindingKind;
using diagnosis::Timestamp;

double seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }
double unix_seconds(Timestamp t) { return seconds(t.time_since_epoch()); }
double ns_to_s(uint64_t ns) { return static_cast<double>(ns) / 1e9; }

class StallMonitorView final : public MonitorView {
 public:
  explicit StallMonitorView(const core::StallMonitor& m) : m_(m) {}
  std::vector<core::DomainSummary> domains() const override { return m_.domains(); }
  Result<core::DomainDetail> domain(std::string_view name_or_uuid) const override {
    return m_.domain(name_or_uuid);
  }
  std::vector<Finding> active_findings() const override {
    return m_.engine().active_findings();
  }
  std::vector<diagnosis::GuestCpuAges> guest_cpu_ages(const std::string& domain) const override {
    return m_.engine().guest_cpu_ages(domain);
  }
  core::AgentStats stats() const override { return m_.stats(); }

 private:
  const core::StallMonitor& m_;
};

HistogramValue to_histogram(const core::LatencyHistogram& h) {
  return HistogramValue{h.bounds_s, h.counts, h.count, h.sum_s};
}

}  // namespace

std::unique_ptr<MonitorView> monitor_view(const core::StallMonitor& monitor) {
  return std::make_unique<StallMonitorView>(monitor);
}

const char* thread_state_label(char letter) {
  switch (letter) {
    case 'R': return "running";
    case 'S': return "sleeping";
    case 'D': return "disk_sleep";
    case 'T': return "stopped";
    case 't': return "tracing_stop";
    default: return "other";
  }
}

MetricsCollector::MetricsCollector(const MonitorView& view, MetricsOptions options)
    : view_(view), options_(std::move(options)) {}

void MetricsCollector::add_contributor(const MetricsContributor* contributor) {
  std::lock_guard lock(mu_);
  contributors_.push_back(contributor);
}

void MetricsCollector::remove_contributor(const MetricsContributor* contributor) {
  std::lock_guard lock(mu_);
  std::erase(contributors_, contributor);
}

Result<std::string> MetricsCollector::render() {
  std::lock_guard lock(mu_);
  ExpositionWriter w;

  const auto stats = view_.stats();
  auto summaries = view_.domains();
  std::sort(summaries.begin(), summaries.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  const size_t exported = std::min(summaries.size(), options_.max_domains);
  std::vector<core::DomainDetail> details;
  details.reserve(exported);
  for (size_t i = 0; i < exported; ++i) {
    auto d = view_.domain(summaries[i].uuid.empty() ? summaries[i].name : summaries[i].uuid);
    if (d.ok()) details.push_back(std::move(d.value()));  // gone since domains(): skip it
  }
  const auto findings = view_.active_findings();
  std::set<std::string> exported_names;
  for (const auto& d : details) exported_names.insert(d.summary.name);

  // --- Agent ----------------------------------------------------------------------------
  w.family("stallmon_build_info", MetricType::kGauge,
           "Always 1; the labels say which stallmond build is running.");
  w.sample({{"version", options_.version}}, 1);
  w.family("stallmon_start_time_seconds", MetricType::kGauge,
           "When the monitor started, in seconds since the Unix epoch.");
  w.sample({}, unix_seconds(stats.started_at));
  w.family("stallmon_domains_watched", MetricType::kGauge, "Domains the monitor watches.");
  w.sample({}, static_cast<double>(summaries.size()));
  w.family("stallmon_domains_omitted", MetricType::kGauge,
           "Watched domains without per-domain series (over the max_domains cap).");
  w.sample({}, static_cast<double>(summaries.size() - exported));
  w.family("stallmon_sampling_tick_duration_seconds", MetricType::kHistogram,
           "Duration of one sampling tick of one domain: host sample, guest snapshot, diagnosis.");
  w.histogram({}, to_histogram(stats.tick_latency));
  w.family("stallmon_guest_snapshot_duration_seconds", MetricType::kHistogram,
           "Duration of one guest kernel snapshot read from guest memory.");
  w.histogram({}, to_histogram(stats.snapshot_latency));
  const auto counter = [&](const char* name, const char* help, uint64_t v) {
    w.family(name, MetricType::kCounter, help);
    w.sample({}, static_cast<double>(v));
  };
  counter("stallmon_sampling_ticks_total", "Sampling ticks, all domains.", stats.ticks);
  counter("stallmon_sampling_tick_overruns_total",
          "Ticks that started more than one sample interval late.", stats.overruns);
  counter("stallmon_sample_errors_total", "Host thread samples lost to I/O or corrupt /proc data.",
          stats.sample_errors);
  counter("stallmon_guest_snapshots_total", "Guest kernel snapshots taken.", stats.snapshots);
  counter("stallmon_guest_snapshot_errors_total",
          "Guest snapshots that recorded at least one read error.", stats.snapshot_errors);
  counter("stallmon_kernel_discovery_attempts_total",
          "Guest kernel discoveries (VMCOREINFO, kallsyms, BTF) attempted.",
          stats.discovery_attempts);
  counter("stallmon_kernel_discovery_failures_total", "Guest kernel discoveries that failed.",
          stats.discovery_failures);
  counter("stallmon_introspection_errors_total",
          "Guest introspection errors: snapshot errors plus discovery failures.",
          stats.introspection_errors);
  counter("stallmon_monitor_timeouts_total",
          "QEMU monitor calls that missed their deadline (responsive to unresponsive).",
          stats.monitor_timeouts);
  counter("stallmon_finding_events_total", "Finding events (opened, updated, resolved) emitted.",
          stats.finding_events);
  counter("stallmon_guest_reads_abandoned_total",
          "Guest memory reads past introspection.read_deadline, abandoned by the supervisor.",
          stats.reads_abandoned);
  counter("stallmon_internal_errors_total",
          "Exceptions contained in one domain's work (that domain marked, the daemon unharmed).",
          stats.internal_errors);
  counter("stallmon_guest_reboots_detected_total",
          "Guest reboots that dropped a discovered kernel (libvirt event or the guest's clock).",
          stats.reboots_detected);
  w.family("stallmon_worker_threads", MetricType::kGauge,
           "Threads of the tick and discovery pools (workers, replacements, supervisors).");
  w.sample({}, static_cast<double>(stats.threads));
  w.family("stallmon_history_memory_bytes", MetricType::kGauge,
           "Memory held by the sampler histories and blocked-thread details, all domains.");
  w.sample({}, static_cast<double>(stats.history_memory_bytes));

  // --- Findings -------------------------------------------------------------------------
  std::map<std::tuple<std::string, std::string, std::string, std::string>, int> by_class;
  for (const auto& f : findings) {
    const std::string dom = exported_names.count(f.domain) ? f.domain : "";
    ++by_class[{dom, kind_label(f.kind), severity_label(f.severity), cause_label(f.cause)}];
  }
  w.family("stallmon_findings_active", MetricType::kGauge,
           "Active findings by domain, kind, severity and cause (domains over the cap: no domain "
           "label).");
  for (const auto& [k, n] : by_class) {
    const auto& [dom, kind, sev, cause] = k;
    Labels l;
    if (!dom.empty()) l.emplace_back("domain", dom);
    l.emplace_back("kind", kind);
    l.emplace_back("severity", sev);
    l.emplace_back("cause", cause);
    w.sample(l, n);
  }

  // --- Domains --------------------------------------------------------------------------
  w.family("stallmon_domain_info", MetricType::kGauge,
           "Always 1 for each exported domain; uuid as a label.");
  for (const auto& d : details) {
    w.sample({{"domain", d.summary.name}, {"uuid", d.summary.uuid}}, 1);
  }
  const auto per_domain = [&](const char* name, MetricType type, const char* help,
                              auto value_of) {
    w.family(name, type, help);
    for (const auto& d : details) {
      auto v = value_of(d);
      if (v) w.sample({{"domain", d.summary.name}}, *v);
    }
  };
  per_domain("stallmon_domain_vcpus", MetricType::kGauge, "vCPUs of the domain.",
             [](const core::DomainDetail& d) -> std::optional<double> {
               return static_cast<double>(d.vcpus.size());
             });
  per_domain("stallmon_domain_introspection_ready", MetricType::kGauge,
             "1 while guest snapshots are being taken, else 0.",
             [](const core::DomainDetail& d) -> std::optional<double> {
               return d.summary.introspection.ok() ? 1 : 0;
             });
  w.family("stallmon_domain_introspection_state", MetricType::kGauge,
           "1 for the domain's introspection state (ready, discovering, failed, paused, "
           "no_kernel, over_budget, ...).");
  for (const auto& d : details) {
    w.sample({{"domain", d.summary.name}, {"state", introspection_state_label(d.summary.introspection.state)}}, 1);
  }
  per_domain("stallmon_domain_discovery_scanned_bytes_total", MetricType::kCounter,
             "Guest RAM read by kernel discoveries of this domain (RAM scans included).",
             [](const core::DomainDetail& d) -> std::optional<double> {
               return static_cast<double>(d.summary.introspection.discovery_bytes_read);
             });
  per_domain("stallmon_domain_discovery_seconds_total", MetricType::kCounter,
             "Time spent discovering this domain's kernel.",
             [](const core::DomainDetail& d) -> std::optional<double> {
               return std::chrono::duration<double>(d.summary.introspection.discovery_time).count();
             });
  per_domain("stallmon_domain_discovery_next_attempt_timestamp_seconds", MetricType::kGauge,
             "When discovery is tried next (e.g. no Linux kernel found: backoff up to hours).",
             [](const core::DomainDetail& d) -> std::optional<double> {
               if (!d.summary.introspection.next_attempt_at) return std::nullopt;
               return unix_seconds(*d.summary.introspection.next_attempt_at);
             });
  per_domain("stallmon_domain_monitor_responsive", MetricType::kGauge,
             "0 while a QEMU monitor call is past its deadline, else 1.",
             [](const core::DomainDetail& d) -> std::optional<double> {
               return d.summary.monitor.responsive ? 1 : 0;
             });
  per_domain("stallmon_guest_snapshot_timestamp_seconds", MetricType::kGauge,
             "When the latest guest snapshot was read, in seconds since the Unix epoch.",
             [](const core::DomainDetail& d) -> std::optional<double> {
               if (!d.guest) return std::nullopt;
               return unix_seconds(d.guest->taken_at);
             });
  per_domain("stallmon_guest_softlockup_threshold_seconds", MetricType::kGauge,
             "The guest's soft-lockup limit, 2 x kernel.watchdog_thresh (absent: watchdog off).",
             [](const core::DomainDetail& d) -> std::optional<double> {
               if (!d.guest || !d.guest->watchdog_thresh || *d.guest->watchdog_thresh <= 0) {
                 return std::nullopt;
               }
               return 2.0 * *d.guest->watchdog_thresh;
             });

  // --- Per vCPU -------------------------------------------------------------------------
  const auto per_vcpu = [&](const char* name, MetricType type, const char* help,
                            auto value_of) {
    w.family(name, type, help);
    for (const auto& d : details) {
      for (const auto& v : d.vcpus) {
        std::optional<double> x = value_of(d, v);
        if (x) w.sample({{"domain", d.summary.name}, {"vcpu", std::to_string(v.index)}}, *x);
      }
    }
  };
  using Vcpu = core::VcpuStatus;
  using Dom = core::DomainDetail;
  per_vcpu("stallmon_vcpu_run_seconds_total", MetricType::kCounter,
           "Time the vCPU's host thread ran on a host CPU (schedstat).",
           [](const Dom&, const Vcpu& v) -> std::optional<double> {
             if (!v.thread.has_sample) return std::nullopt;
             return ns_to_s(v.thread.latest.run_ns);
           });
  per_vcpu("stallmon_vcpu_run_delay_seconds_total", MetricType::kCounter,
           "Time the vCPU's host thread was runnable but waiting for a host CPU (steal).",
           [](const Dom&, const Vcpu& v) -> std::optional<double> {
             if (!v.thread.has_sample) return std::nullopt;
             return ns_to_s(v.thread.latest.wait_ns);
           });
  per_vcpu("stallmon_vcpu_throttled_seconds_total", MetricType::kCounter,
           "Time the vCPU's own cpu cgroup was throttled (only for vCPUs with their own cgroup).",
           [](const Dom&, const Vcpu& v) -> std::optional<double> {
             if (!v.thread.has_sample || !v.thread.own_cgroup) return std::nullopt;
             return ns_to_s(v.thread.latest.throttled_ns);
           });
  // One-hot rather than a numeric state code: a number would invite meaningless arithmetic
  // (avg of "D"=3 and "S"=2), while one series per state lets rules say
  // `stallmon_vcpu_thread_state{state="disk_sleep"} == 1` and sum/count by state.
  w.family("stallmon_vcpu_thread_state", MetricType::kGauge,
           "1 for the state the vCPU's host thread is in, 0 for the others (running R, sleeping "
           "S, disk_sleep D, stopped T, tracing_stop t, other).");
  for (const auto& d : details) {
    for (const auto& v : d.vcpus) {
      if (!v.thread.has_sample || !v.thread.present) continue;
      const std::string cur = thread_state_label(v.thread.latest.state);
      for (const char* s : kThreadStateLabels) {
        w.sample({{"domain", d.summary.name}, {"vcpu", std::to_string(v.index)}, {"state", s}},
                 cur == s ? 1 : 0);
      }
    }
  }
  per_vcpu("stallmon_vcpu_thread_state_duration_seconds", MetricType::kGauge,
           "How long the vCPU's host thread has been continuously in its current state.",
           [](const Dom&, const Vcpu& v) -> std::optional<double> {
             if (!v.thread.has_sample || !v.thread.signals.valid) return std::nullopt;
             return ns_to_s(static_cast<uint64_t>(std::max<int64_t>(0, v.thread.signals.time_in_state_ns)));
           });
  per_vcpu("stallmon_vcpu_no_progress_seconds", MetricType::kGauge,
           "How long the vCPU's host thread has not run at all (schedstat run time unchanged).",
           [](const Dom&, const Vcpu& v) -> std::optional<double> {
             if (!v.thread.has_sample || !v.thread.signals.valid) return std::nullopt;
             return ns_to_s(static_cast<uint64_t>(std::max<int64_t>(0, v.thread.signals.no_progress_ns)));
           });
  // The engine's ages, per domain, by guest CPU.
  std::map<std::string, std::map<int, diagnosis::GuestCpuAges>> ages;
  for (const auto& d : details) {
    if (!d.guest) continue;
    auto& by_cpu = ages[d.summary.name];
    const std::string& id = d.summary.uuid.empty() ? d.summary.name : d.summary.uuid;
    for (auto& a : view_.guest_cpu_ages(id)) by_cpu.emplace(a.cpu, std::move(a));
  }
  const auto cpu_ages = [&](const Dom& d, const Vcpu& v) -> const diagnosis::GuestCpuAges* {
    auto dit = ages.find(d.summary.name);
    if (dit == ages.end()) return nullptr;
    auto it = dit->second.find(v.index);
    return it == dit->second.end() ? nullptr : &it->second;
  };
  per_vcpu("stallmon_guest_softlockup_touch_age_seconds", MetricType::kGauge,
           "Age of the guest CPU's soft-lockup watchdog touch (guest clock), as of the latest "
           "snapshot; the guest reports a soft lockup at stallmon_guest_softlockup_threshold_"
           "seconds. Absent on CPUs whose watchdog does not run.",
           [&](const Dom& d, const Vcpu& v) -> std::optional<double> {
             const auto* a = cpu_ages(d, v);
             if (a == nullptr || !a->softlockup_touch_age) return std::nullopt;
             return seconds(*a->softlockup_touch_age);
           });
  w.family("stallmon_guest_csd_wait_age_seconds", MetricType::kGauge,
           "Age of the oldest cross-CPU call (locked csd) the guest CPU waits on, as of the "
           "latest snapshot (a lower bound); 0 when it waits on none.");
  for (const auto& d : details) {
    if (!d.guest) continue;
    for (const auto& v : d.vcpus) {
      const auto* a = cpu_ages(d, v);
      w.sample({{"domain", d.summary.name}, {"vcpu", std::to_string(v.index)}},
               a == nullptr || !a->csd_wait_age ? 0.0 : seconds(*a->csd_wait_age));
    }
  }

  for (const auto* c : contributors_) c->write_metrics(w);

  if (!w.ok()) return Error(ErrorCode::kInternal, "metrics exposition: " + w.error());
  return w.take();
}

}  // namespace stallmon::alerting
