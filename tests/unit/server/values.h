// SPDX-License-Identifier: Apache-2.0
// Hand-built core and diagnosis values for the adapter tests (convert_test.cc): every field
// set, so that each conversion is checked. The service tests use a real engine instead
// (hermetic_agent.h).
#pragma once

#include <string>
#include <vector>

#include "stallmon/core/stall_monitor.h"
#include "stallmon/diagnosis/finding.h"

namespace stallmon::server::testing {

using namespace std::chrono_literals;

inline diagnosis::Timestamp at_s(int64_t s) { return diagnosis::Timestamp(std::chrono::seconds(1'700'000'000 + s)); }

inline core::DomainDetail make_domain(const std::string& name, const std::string& uuid, int vcpus) {
  core::DomainDetail d;
  d.summary.name = name;
  d.summary.uuid = uuid;
  d.summary.state = libvirt::DomainRunState::kRunning;
  d.summary.qemu_pid = 4242;
  d.summary.vcpu_count = static_cast<size_t>(vcpus);
  d.summary.introspection.state = core::IntrospectionState::kReady;
  d.summary.introspection.kernel_release = "6.1.0-56-amd64";
  for (int i = 0; i < vcpus; ++i) {
    core::VcpuStatus v;
    v.index = i;
    v.thread.tid = 5000 + i;
    v.thread.name = "CPU " + std::to_string(i) + "/KVM";
    v.thread.vcpu = i;
    v.thread.present = true;
    v.thread.has_sample = true;
    v.thread.latest.state = 'S';
    v.thread.latest.run_ns = 1'000'000'000ull * (i + 1);
    v.thread.latest_at = at_s(10);
    d.vcpus.push_back(v);
  }
  return d;
}

inline diagnosis::Finding make_finding(const std::string& id, const std::string& domain, diagnosis::FindingKind kind,
                                       bool active = true) {
  diagnosis::Finding f;
  f.id = id;
  f.domain = domain;
  f.domain_uuid = "uuid-" + domain;
  f.kind = kind;
  f.severity = diagnosis::Severity::kCritical;
  f.cause = diagnosis::Cause::kHostBlocked;
  f.cpus = {2};
  f.onset = at_s(1);
  f.opened_at = at_s(2);
  f.last_update = at_s(3);
  f.active = active;
  if (!active) f.resolved_at = at_s(4);
  f.summary = "summary of " + id;
  return f;
}

}  // namespace stallmon::server::testing
