// SPDX-License-Identifier: Apache-2.0
// A Backend that forwards every call to a real one (the hermetic agent's MonitorBackend); tests
// derive from it to stand in for one call (inspect(), which needs a discovered guest kernel)
// and keep the engine's own answers for the rest.
#pragma once

#include "stallmon/server/backend.h"

namespace stallmon::server::testing {

class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(Backend& real) : real_(real) {}
  AgentStatus agent() const override { return real_.agent(); }
  std::vector<core::DomainSummary> domains() const override { return real_.domains(); }
  Result<core::DomainDetail> domain(std::string_view n) const override { return real_.domain(n); }
  Result<core::VcpuHistory> vcpu_history(std::string_view n, int32_t vcpu, std::chrono::nanoseconds w) const override {
    return real_.vcpu_history(n, vcpu, w);
  }
  Result<core::InspectResult> inspect(std::string_view n, std::chrono::milliseconds timeout) override {
    return real_.inspect(n, timeout);
  }
  std::vector<diagnosis::Finding> list_findings(const diagnosis::FindingQuery& q) const override {
    return real_.list_findings(q);
  }
  diagnosis::EventsSince events_since(uint64_t after) const override { return real_.events_since(after); }
  uint64_t revision() const override { return real_.revision(); }
  void add_finding_listener(diagnosis::FindingListener* l) override { real_.add_finding_listener(l); }
  void remove_finding_listener(diagnosis::FindingListener* l) override { real_.remove_finding_listener(l); }
  Result<diagnosis::IncidentBundle> incident(const std::string& id) const override { return real_.incident(id); }

 private:
  Backend& real_;
};

}  // namespace stallmon::server::testing
