// SPDX-License-Identifier: Apache-2.0
// Feeding an IncidentRecorder from the diagnosis Sim as the daemon's pipeline does: each tick's
// observation after the engine's, and the sampler's vCPU rings as the lookback. Shared by the
// recorder's tests and the store's restart tests.
#pragma once

#include <functional>
#include <map>
#include <vector>

#include "sim.h"
#include "stallmon/diagnosis/incident_recorder.h"

namespace stallmon::diagnosis::testing {

// The observation Sim::tick() built on its last tick: the state it reads does not change until
// the next tick's workload step (snapshots every tick, none edited).
inline DomainObservation last_observation(const Sim& sim) {
  DomainObservation obs;
  obs.domain = sim.domain;
  for (std::size_t i = 0; i < sim.vcpus.size(); ++i) obs.vcpus.push_back({static_cast<int>(i), sim.vcpus[i].view});
  obs.other_threads.push_back(sim.main.view);
  for (const auto& t : sim.others) obs.other_threads.push_back(t.view);
  obs.main_loop_tid = sim.main.view.tid;
  GuestView g = sim.guest;
  for (const auto& c : sim.cpus) g.cpus.push_back(c.view);
  obs.guest = std::move(g);
  return obs;
}

// The sampler's vCPU rings, as the pipeline's lookback reads them: every tick's vCPU views.
struct HostRing {
  std::map<int, IncidentVcpuLane> lanes;
  void add(const DomainObservation& obs, Timestamp at) {
    for (const auto& v : obs.vcpus) {
      auto& l = lanes[v.index];
      l.vcpu = v.index;
      l.tid = v.thread.tid;
      l.points.push_back({at, v.thread.state, v.thread.run_time, v.thread.run_delay});
    }
  }
  IncidentRecorder::Lookback lookback() {
    return [this](Timestamp since) {
      std::vector<IncidentVcpuLane> out;
      for (const auto& [i, l] : lanes) {
        IncidentVcpuLane c{l.vcpu, l.tid, {}};
        for (const auto& p : l.points)
          if (p.at >= since) c.points.push_back(p);
        out.push_back(std::move(c));
      }
      return out;
    };
  }
};

// Feeds `rec` each of the Sim's observations: at the start of the next tick (before the
// workload's step), and at feed() for the last one. Restores the Sim's step when destroyed.
class IncidentFeed {
 public:
  IncidentFeed(Sim& sim, IncidentRecorder& rec) : sim_(sim), rec_(rec), step_(sim.before_tick) {
    sim_.before_tick = [this] {
      feed();
      if (step_) step_();
    };
  }
  ~IncidentFeed() { sim_.before_tick = step_; }
  IncidentFeed(const IncidentFeed&) = delete;
  IncidentFeed& operator=(const IncidentFeed&) = delete;

  void feed() {
    if (sim_.ticks == 0 || fed_ == sim_.ticks) return;
    fed_ = sim_.ticks;
    const DomainObservation obs = last_observation(sim_);
    ring_.add(obs, sim_.clock.now());
    rec_.on_observation(obs, sim_.clock.now(), ring_.lookback());
  }

 private:
  Sim& sim_;
  IncidentRecorder& rec_;
  std::function<void()> step_;
  HostRing ring_;
  int fed_ = 0;
};

}  // namespace stallmon::diagnosis::testing
