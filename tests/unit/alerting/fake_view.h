// SPDX-License-Identifier: Apache-2.0
// A hand-filled MonitorView for the collector tests.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "stallmon/alerting/metrics.h"

namespace stallmon::alerting::testing {

class FakeView final : public MonitorView {
 public:
  std::vector<core::DomainSummary> domains() const override {
    std::vector<core::DomainSummary> out;
    for (const auto& [name, d] : details) out.push_back(d.summary);
    return out;
  }
  Result<core::DomainDetail> domain(std::string_view name_or_uuid) const override {
    for (const auto& [name, d] : details) {
      if (name == name_or_uuid || d.summary.uuid == name_or_uuid) return d;
    }
    return Error(ErrorCode::kNotFound, "no domain");
  }
  std::vector<diagnosis::Finding> active_findings() const override { return findings; }
  std::vector<diagnosis::GuestCpuAges> guest_cpu_ages(const std::string& domain) const override {
    auto it = ages.find(domain);
    return it == ages.end() ? std::vector<diagnosis::GuestCpuAges>{} : it->second;
  }
  core::AgentStats stats() const override { return agent; }

  // A domain with `vcpus` vCPUs, each sampled in state S.
  core::DomainDetail& add(const std::string& name, int vcpus) {
    auto& d = details[name];
    d.summary.name = name;
    d.summary.uuid = "uuid-" + name;
    for (int i = 0; i < vcpus; ++i) {
      core::VcpuStatus v;
      v.index = i;
      v.thread.tid = 1000 + i;
      v.thread.vcpu = i;
      v.thread.present = true;
      v.thread.has_sample = true;
      v.thread.latest.state = 'S';
      v.thread.signals.valid = true;
      d.vcpus.push_back(v);
    }
    return d;
  }

  std::map<std::string, core::DomainDetail> details;
  std::vector<diagnosis::Finding> findings;
  std::map<std::string, std::vector<diagnosis::GuestCpuAges>> ages;  // by domain name
  core::AgentStats agent;
};

}  // namespace stallmon::alerting::testing
