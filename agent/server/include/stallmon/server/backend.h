// SPDX-License-Identifier: Apache-2.0
// Backend: what the gRPC service needs from the agent, as one small interface over plain
// (core, diagnosis, introspect) types. MonitorBackend implements it on a StallMonitor; unit
// tests implement it with canned values, so the service and its adapters are tested without
// libvirt, guests or threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/core/stall_monitor.h"
#include "stallmon/diagnosis/engine.h"

namespace stallmon::libvirt {
class DomainWatcher;
}

namespace stallmon::server {

// The daemon-level facts of GetAgentInfo that the core does not know.
struct AgentStatus {
  std::string version;
  std::string hostname;
  std::string libvirt_uri;
  bool libvirt_connected = false;
  std::string libvirt_error;
  diagnosis::Timestamp started_at{};
  std::string effective_config;  // YAML
  bool sampling_alive = true;
  std::chrono::nanoseconds sampling_interval{0};
  uint64_t ticks = 0;
  // core::AgentStats' thread_stats_*: the per-thread statistics source and why.
  std::string thread_stats_source;
  std::string thread_stats_reason;
  uint64_t thread_stats_passes = 0;
  uint64_t thread_stats_fallbacks = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual AgentStatus agent() const = 0;
  // Thread-safe copies, with the StallMonitor's semantics (see stall_monitor.h): kNotFound for
  // an unknown domain or vCPU, kUnsupported / kTimeout from inspect().
  virtual std::vector<core::DomainSummary> domains() const = 0;
  virtual Result<core::DomainDetail> domain(std::string_view name_or_uuid) const = 0;
  virtual Result<core::VcpuHistory> vcpu_history(std::string_view name_or_uuid, int32_t vcpu,
                                                 std::chrono::nanoseconds window) const = 0;
  virtual Result<core::InspectResult> inspect(std::string_view name_or_uuid,
                                              std::chrono::milliseconds timeout) = 0;

  virtual std::vector<diagnosis::Finding> list_findings(const diagnosis::FindingQuery& query) const = 0;
  virtual diagnosis::EventsSince events_since(uint64_t after_revision) const = 0;
  virtual uint64_t revision() const = 0;
  // Listeners follow FindingListener's contract: called with the engine's lock held, they must
  // only record and wake (the WatchFindings streams re-read events_since themselves).
  virtual void add_finding_listener(diagnosis::FindingListener* listener) = 0;
  virtual void remove_finding_listener(diagnosis::FindingListener* listener) = 0;
  // The incident bundle of a finding (memory, then the store): kNotFound when there is none.
  // Not pure: a backend without bundles (the tests' canned ones) answers kNotFound.
  virtual Result<diagnosis::IncidentBundle> incident(const std::string& finding_id) const;
};

// The Backend of the daemon: queries go to the StallMonitor (and the watcher for the libvirt
// connection); the rest of AgentStatus comes from `status`, called on each GetAgentInfo (it
// must be thread-safe: the daemon's config may be reloaded meanwhile).
class MonitorBackend final : public Backend {
 public:
  // `watcher` may be null (no connection state then). Both must outlive the backend.
  MonitorBackend(core::StallMonitor& monitor, const libvirt::DomainWatcher* watcher,
                 std::function<AgentStatus()> status);

  AgentStatus agent() const override;
  std::vector<core::DomainSummary> domains() const override;
  Result<core::DomainDetail> domain(std::string_view name_or_uuid) const override;
  Result<core::VcpuHistory> vcpu_history(std::string_view name_or_uuid, int32_t vcpu,
                                         std::chrono::nanoseconds window) const override;
  Result<core::InspectResult> inspect(std::string_view name_or_uuid,
                                      std::chrono::milliseconds timeout) override;
  std::vector<diagnosis::Finding> list_findings(const diagnosis::FindingQuery& query) const override;
  diagnosis::EventsSince events_since(uint64_t after_revision) const override;
  uint64_t revision() const override;
  void add_finding_listener(diagnosis::FindingListener* listener) override;
  void remove_finding_listener(diagnosis::FindingListener* listener) override;
  Result<diagnosis::IncidentBundle> incident(const std::string& finding_id) const override;
  // Where bundles evicted from memory are read from (the finding store); unset: memory only.
  // Set before serving.
  void set_incident_store(std::function<Result<diagnosis::IncidentBundle>(const std::string&)> lookup);

 private:
  core::StallMonitor& monitor_;
  const libvirt::DomainWatcher* watcher_;
  std::function<AgentStatus()> status_;
  std::function<Result<diagnosis::IncidentBundle>(const std::string&)> incident_store_;
};

}  // namespace stallmon::server
