// SPDX-License-Identifier: Apache-2.0
// The daemon's query side without libvirt, guests or threads: a real core::StallMonitor
// (MonitorConfig::threads = false, introspection off) over fake qemu processes on a fake host
// (tests/unit/core/fake_domain.h: in-memory /proc, simulated clocks), served through the
// daemon's own MonitorBackend. Findings, their order, filters, revisions and the event log are
// the engine's; the test only moves time and freezes vCPU threads.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "../core/fake_domain.h"
#include "../core/fake_stat_source.h"
#include "stallmon/core/stall_monitor.h"
#include "stallmon/server/backend.h"

namespace stallmon::server::testing {

inline core::MonitorConfig hermetic_config() {
  core::MonitorConfig c;
  c.threads = false;
  c.introspection = false;
  return c;
}

class HermeticAgent {
 public:
  // fake_bpf: the monitor samples through a fake ThreadStatSource reported as "bpf-task-iter"
  // (stat_source; its passes read the fake qemus' thread tables), else the /proc reader.
  explicit HermeticAgent(core::MonitorConfig config = hermetic_config(), bool fake_bpf = false)
      : monitor(std::move(config), dependencies(fake_bpf)), backend(monitor, nullptr, [this] { return status; }) {}

  // A running domain with `vcpus` vCPU threads, watched from now on.
  core::testing::FakeQemu& add(const std::string& name, const std::string& uuid, int vcpus) {
    const int32_t pid = 4000 + 1000 * static_cast<int32_t>(qemus.size());
    qemus.push_back(std::make_unique<core::testing::FakeQemu>(host, vcpus, name, uuid, pid));
    monitor.on_domain_updated(qemus.back()->info());
    return *qemus.back();
  }

  // `n` sample intervals (100 ms) of simulated time, each a tick of every domain.
  void tick(int n = 1) {
    for (int i = 0; i < n; ++i) {
      host.advance_clocks(100);
      for (auto& q : qemus) q->advance_threads();
      monitor.tick_all();
    }
  }

  // Freezes a vCPU thread (D, as the cgroup freezer does) for longer than host_blocked_min:
  // VCPU_HOST_BLOCKED opens. Returns the engine's revision afterwards.
  uint64_t block(core::testing::FakeQemu& q, int vcpu) {
    q.block_vcpu(vcpu);
    tick(8);
    return monitor.engine().revision();
  }
  // Thaws it: the finding resolves.
  uint64_t thaw(core::testing::FakeQemu& q, int vcpu) {
    q.run_vcpu(vcpu);
    tick(3);
    return monitor.engine().revision();
  }
  // libvirt's crashed event: GUEST_PANIC opens.
  uint64_t crash(core::testing::FakeQemu& q) {
    libvirt::DomainEvent ev;
    ev.kind = libvirt::DomainEventKind::kCrashed;
    ev.name = q.info().name;
    ev.uuid = q.info().uuid;
    ev.detail = "panicked";
    monitor.on_domain_event(ev);
    tick(1);
    return monitor.engine().revision();
  }

  // Returned by backend.agent() (with the monitor's own fields filled in); set it before serving.
  AgentStatus status;
  core::testing::FakeHost host;
  std::vector<std::unique_ptr<core::testing::FakeQemu>> qemus;
  core::testing::FakeStatSource* stat_source = nullptr;  // owned by the monitor (fake_bpf)
  core::StallMonitor monitor;
  MonitorBackend backend;

 private:
  core::MonitorDependencies dependencies(bool fake_bpf) {
    core::MonitorDependencies d{&host.fs, &host.mono, &host.clock, {}};
    if (fake_bpf) {
      auto source = std::make_unique<core::testing::FakeStatSource>(&qemus);
      stat_source = source.get();
      d.thread_stats.source = std::move(source);
      d.thread_stats.kind = "bpf-task-iter";
      d.thread_stats.reason = "fake passes (hermetic test)";
    }
    return d;
  }
};

}  // namespace stallmon::server::testing
