// SPDX-License-Identifier: Apache-2.0
// A Backend with canned values and a hand-driven finding event log, for the service and
// transport tests: no libvirt, no guests, no sampling threads.
#pragma once

#include <algorithm>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "stallmon/server/backend.h"

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

class FakeBackend final : public Backend {
 public:
  // --- test controls -------------------------------------------------------------------------
  void add_domain(core::DomainDetail d) {
    std::lock_guard l(mu_);
    domains_.push_back(std::move(d));
  }
  // Appends an event with the next revision and notifies listeners (as the engine does).
  uint64_t emit(diagnosis::FindingEvent::Type type, diagnosis::Finding f) {
    std::vector<diagnosis::FindingListener*> ls;
    diagnosis::FindingEvent e;
    {
      std::lock_guard l(mu_);
      e.type = type;
      e.revision = ++revision_;
      f.active = type != diagnosis::FindingEvent::Type::kResolved;
      if (!f.active && !f.resolved_at) f.resolved_at = at_s(5);
      e.finding = f;
      log_.push_back(e);
      auto it = std::find_if(findings_.begin(), findings_.end(), [&](auto& x) { return x.id == f.id; });
      if (it == findings_.end()) {
        findings_.push_back(f);
      } else {
        *it = f;
      }
      ls = listeners_;
    }
    for (auto* l : ls) l->on_finding_event(e);
    return e.revision;
  }
  // Forget events up to and including `rev` (a bounded log that dropped them).
  void drop_log_through(uint64_t rev) {
    std::lock_guard l(mu_);
    std::erase_if(log_, [&](const auto& e) { return e.revision <= rev; });
    dropped_through_ = rev;
  }
  size_t listener_count() const {
    std::lock_guard l(mu_);
    return listeners_.size();
  }
  AgentStatus status;
  core::InspectResult inspect_result;
  Error inspect_error{ErrorCode::kUnsupported, "introspection not ready: discovering"};
  bool inspect_ok = false;
  std::chrono::milliseconds last_inspect_timeout{0};

  // --- Backend ----------------------------------------------------------------------------------
  AgentStatus agent() const override { return status; }
  std::vector<core::DomainSummary> domains() const override {
    std::lock_guard l(mu_);
    std::vector<core::DomainSummary> out;
    for (const auto& d : domains_) out.push_back(d.summary);
    return out;
  }
  Result<core::DomainDetail> domain(std::string_view n) const override {
    std::lock_guard l(mu_);
    for (const auto& d : domains_) {
      if (d.summary.name == n || d.summary.uuid == n) return d;
    }
    return Error(ErrorCode::kNotFound, "domain '" + std::string(n) + "' is not watched");
  }
  Result<core::VcpuHistory> vcpu_history(std::string_view n, int32_t vcpu, std::chrono::nanoseconds) const override {
    auto d = domain(n);
    if (!d.ok()) return d.error();
    for (const auto& v : d->vcpus) {
      if (v.index != vcpu) continue;
      core::VcpuHistory h;
      h.domain_uuid = d->summary.uuid;
      h.vcpu = vcpu;
      h.tid = v.thread.tid;
      for (int i = 0; i < 100; ++i) {
        core::HistoryPoint p;
        p.time = at_s(i);
        p.sample.run_ns = static_cast<uint64_t>(i) * 1000;
        p.sample.state = 'R';
        h.points.push_back(p);
      }
      return h;
    }
    return Error(ErrorCode::kNotFound, "no vcpu");
  }
  Result<core::InspectResult> inspect(std::string_view n, std::chrono::milliseconds timeout) override {
    last_inspect_timeout = timeout;
    auto d = domain(n);
    if (!d.ok()) return d.error();
    if (!inspect_ok) return inspect_error;
    return inspect_result;
  }
  std::vector<diagnosis::Finding> list_findings(const diagnosis::FindingQuery& q) const override {
    std::lock_guard l(mu_);
    std::vector<diagnosis::Finding> out;
    for (int pass = 0; pass < 2; ++pass) {
      for (const auto& f : findings_) {
        if (f.active != (pass == 0)) continue;
        if (q.active_only && !f.active) continue;
        if (!q.domain.empty() && f.domain != q.domain && f.domain_uuid != q.domain) continue;
        if (!q.kinds.empty() && std::find(q.kinds.begin(), q.kinds.end(), f.kind) == q.kinds.end()) continue;
        if (out.size() >= q.limit) return out;
        out.push_back(f);
      }
    }
    return out;
  }
  diagnosis::EventsSince events_since(uint64_t after) const override {
    std::lock_guard l(mu_);
    diagnosis::EventsSince r;
    r.revision = revision_;
    r.complete = after >= dropped_through_;
    for (const auto& e : log_) {
      if (e.revision > after) r.events.push_back(e);
    }
    return r;
  }
  uint64_t revision() const override {
    std::lock_guard l(mu_);
    return revision_;
  }
  void add_finding_listener(diagnosis::FindingListener* l) override {
    std::lock_guard g(mu_);
    listeners_.push_back(l);
  }
  void remove_finding_listener(diagnosis::FindingListener* l) override {
    std::lock_guard g(mu_);
    std::erase(listeners_, l);
  }

 private:
  mutable std::mutex mu_;
  std::vector<core::DomainDetail> domains_;
  std::vector<diagnosis::Finding> findings_;
  std::vector<diagnosis::FindingEvent> log_;
  std::vector<diagnosis::FindingListener*> listeners_;
  uint64_t revision_ = 0;
  uint64_t dropped_through_ = 0;
};

}  // namespace stallmon::server::testing
