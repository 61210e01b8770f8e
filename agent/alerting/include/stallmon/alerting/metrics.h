// SPDX-License-Identifier: Apache-2.0
// The agent's state as Prometheus metrics (names, types and labels: agent/alerting/README.md).
//
// MetricsCollector reads a MonitorView (what StallMonitor answers: domains, per-domain detail,
// active findings, agent stats) and renders one exposition per call. It knows no HTTP: the
// /metrics server in http.h is an adapter that calls render(). Tests feed a fake MonitorView.
//
// Cardinality: labels are domain (at most MetricsOptions::max_domains of them, the rest are
// counted in stallmon_domains_omitted), vcpu (the domain's vCPU count), the finding enums
// (kind, severity, cause: fixed sets) and a fixed thread-state set. Never tids, pids or free
// text.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "stallmon/alerting/exposition.h"
#include "stallmon/base/result.h"
#include "stallmon/core/stall_monitor.h"
#include "stallmon/diagnosis/engine.h"
#include "stallmon/diagnosis/finding.h"

namespace stallmon::alerting {

// What the collector reads. StallMonitor provides it through monitor_view(); every call must
// be thread-safe and return copies.
class MonitorView {
 public:
  virtual ~MonitorView() = default;
  virtual std::vector<core::DomainSummary> domains() const = 0;
  virtual Result<core::DomainDetail> domain(std::string_view name_or_uuid) const = 0;
  virtual std::vector<diagnosis::Finding> active_findings() const = 0;
  // The engine's per-guest-CPU ages (csd wait, soft-lockup watchdog touch) for a domain (uuid or
  // name): the exporter publishes these rather than re-deriving them, so the metric and the
  // findings agree, and CPUs without a running watchdog (nohz_full, watchdog_cpumask,
  // watchdog_thresh 0) have no touch age.
  virtual std::vector<diagnosis::GuestCpuAges> guest_cpu_ages(const std::string& domain) const = 0;
  virtual core::AgentStats stats() const = 0;
};

// The adapter over a StallMonitor (which must outlive it).
std::unique_ptr<MonitorView> monitor_view(const core::StallMonitor& monitor);

// Something else that adds families to each exposition (the Alertmanager pusher's own
// counters). Called with the collector's mutex held; must be quick and thread-safe.
class MetricsContributor {
 public:
  virtual ~MetricsContributor() = default;
  virtual void write_metrics(ExpositionWriter& out) const = 0;
};

struct MetricsOptions {
  // Domains exported with per-domain and per-vCPU series, first by name; the rest are only
  // counted (stallmon_domains_omitted) and their findings are counted without a domain label.
  // With 64 domains of 8 vCPUs, the per-vCPU families come to ~64 × 8 × 13 ≈ 6 700 series.
  size_t max_domains = 64;
  // Reported in stallmon_build_info.
  std::string version;
};

// One of the six thread-state label values of stallmon_vcpu_thread_state for a /proc state
// letter: running (R), sleeping (S), disk_sleep (D), stopped (T), tracing_stop (t), other.
const char* thread_state_label(char letter);
inline constexpr const char* kThreadStateLabels[] = {"running", "sleeping", "disk_sleep",
                                                     "stopped", "tracing_stop", "other"};

class MetricsCollector {
 public:
  // `view` must outlive the collector.
  MetricsCollector(const MonitorView& view, MetricsOptions options);

  // Contributors must outlive the collector (or be removed first).
  void add_contributor(const MetricsContributor* contributor);
  void remove_contributor(const MetricsContributor* contributor);

  // One exposition. Thread-safe (calls are serialised).
  // Errors only on a stallmon bug (an invalid metric or label name): kInternal.
  Result<std::string> render();

 private:
  const MonitorView& view_;
  MetricsOptions options_;
  std::mutex mu_;
  std::vector<const MetricsContributor*> contributors_;
};

}  // namespace stallmon::alerting
