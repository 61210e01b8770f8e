// SPDX-License-Identifier: Apache-2.0
#include "stallmon/libvirt/domain_watcher.h"
#include "stallmon/server/backend.h"

namespace stallmon::server {

MonitorBackend::MonitorBackend(core::StallMonitor& monitor, const libvirt::DomainWatcher* watcher,
                               std::function<AgentStatus()> status)
    : monitor_(monitor), watcher_(watcher), status_(std::move(status)) {}

AgentStatus MonitorBackend::agent() const {
  AgentStatus s = status_ ? status_() : AgentStatus{};
  auto stats = monitor_.stats();
  s.started_at = stats.started_at;
  s.ticks = stats.ticks;
  s.thread_stats_source = stats.thread_stats_source;
  s.thread_stats_reason = stats.thread_stats_reason;
  s.thread_stats_passes = stats.thread_stats_passes;
  s.thread_stats_fallbacks = stats.thread_stats_fallbacks;
  s.sampling_interval = monitor_.config().sample_interval;
  if (watcher_) {
    auto c = watcher_->connection();
    s.libvirt_uri = c.uri;
    s.libvirt_connected = c.state == libvirt::ConnectionState::kConnected;
    s.libvirt_error = s.libvirt_connected ? "" : c.reason;
  }
  return s;
}

std::vector<core::DomainSummary> MonitorBackend::domains() const { return monitor_.domains(); }

Result<core::DomainDetail> MonitorBackend::domain(std::string_view name_or_uuid) const {
  return monitor_.domain(name_or_uuid);
}

Result<core::VcpuHistory> MonitorBackend::vcpu_history(std::string_view name_or_uuid, int32_t vcpu,
                                                       std::chrono::nanoseconds window) const {
  return monitor_.vcpu_history(name_or_uuid, vcpu, window);
}

Result<core::InspectResult> MonitorBackend::inspect(std::string_view name_or_uuid,
                                                    std::chrono::milliseconds timeout) {
  return monitor_.inspect(name_or_uuid, timeout);
}

std::vector<diagnosis::Finding> MonitorBackend::list_findings(const diagnosis::FindingQuery& query) const {
  return monitor_.engine().list_findings(query);
}

diagnosis::EventsSince MonitorBackend::events_since(uint64_t after_revision) const {
  return monitor_.engine().events_since(after_revision);
}

uint64_t MonitorBackend::revision() const { return monitor_.engine().revision(); }

void MonitorBackend::add_finding_listener(diagnosis::FindingListener* listener) {
  monitor_.add_finding_listener(listener);
}

void MonitorBackend::remove_finding_listener(diagnosis::FindingListener* listener) {
  monitor_.remove_finding_listener(listener);
}

Result<diagnosis::IncidentBundle> Backend::incident(const std::string& finding_id) const {
  return Error(ErrorCode::kNotFound, "no incident bundle of finding " + finding_id);
}

Result<diagnosis::IncidentBundle> MonitorBackend::incident(const std::string& finding_id) const {
  if (auto b = monitor_.incidents().get(finding_id)) return std::move(*b);
  if (!incident_store_) {
    return Error(ErrorCode::kNotFound, "no incident bundle of finding " + finding_id +
                                           " in memory (only critical findings have one; no finding store)");
  }
  return incident_store_(finding_id);
}

void MonitorBackend::set_incident_store(std::function<Result<diagnosis::IncidentBundle>(const std::string&)> lookup) {
  incident_store_ = std::move(lookup);
}

}  // namespace stallmon::server
