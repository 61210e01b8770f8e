// SPDX-License-Identifier: Apache-2.0
// A tiny simulated domain for the diagnosis tests: host threads whose counters advance at set
// rates, a guest whose watchdog timers tick (or not) per CPU, and a ManualClock stepped 100 ms a
// tick. Everything is deterministic; nothing sleeps.
#pragma once

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "stallmon/diagnosis/engine.h"

namespace stallmon::diagnosis::testing {

using namespace std::chrono_literals;

inline constexpr Duration kTick = 100ms;

struct SimThread {
  HostThreadView view;
  double run_rate = 1.0;    // fraction of wall time it runs
  double steal_rate = 0.0;  // fraction of wall time it waits runnable
  double throttle_rate = 0.0;
  bool throttled_cgroup = false;

  void block(ThreadState s, std::string wchan, std::vector<std::string> stack) {
    view.state = s;
    view.wchan = std::move(wchan);
    view.host_stack = std::move(stack);
    run_rate = steal_rate = 0;
  }
  void futex_wait() {
    view.state = ThreadState::kSleeping;
    view.wchan = "futex_do_wait";
    view.host_stack.clear();
    run_rate = steal_rate = 0;
  }
  void run(double run, double steal = 0) {
    view.state = ThreadState::kRunning;
    view.wchan = "0";
    view.host_stack.clear();
    run_rate = run;
    steal_rate = steal;
  }
};

struct SimCpu {
  GuestCpuView view;
  bool timer_on = true;  // the watchdog hrtimer fires (interrupts on, vCPU runs)
  bool touch_on = true;  // the watchdog's stopper thread gets to run
};

class Sim {
 public:
  explicit Sim(int nr_vcpus, DiagnosisConfig config = {}) : engine(config, clock) {
    domain.name = "vm1";
    domain.uuid = "uuid-vm1";
    for (int i = 0; i < nr_vcpus; ++i) {
      SimThread t;
      t.view.tid = 18000 + i;
      t.view.name = "CPU " + std::to_string(i) + "/KVM";
      t.run(0.5);
      vcpus.push_back(t);
      SimCpu c;
      c.view.cpu = i;
      c.view.current_comm = "swapper/" + std::to_string(i);
      c.view.idle = true;
      c.view.hrtimer_interrupts = 100;
      cpus.push_back(c);
    }
    main.view.tid = 17999;
    main.view.name = "qemu-system-x86";
    main.run(0.05);
    main.view.state = ThreadState::kSleeping;
    main.view.wchan = "do_sys_poll";
    guest.watchdog_thresh = 10;
    // The guest booted 100 s before the host's epoch in this test: its clock is its own.
    guest.running_clock_ns = 100ull << 30;
    for (auto& c : cpus) c.view.watchdog_touch_ts = guest.running_clock_ns >> 30;
  }

  ManualClock clock;
  DiagnosisEngine engine;
  DomainIdentity domain;
  std::vector<SimThread> vcpus;
  SimThread main;
  std::vector<SimThread> others;
  std::vector<SimCpu> cpus;
  GuestView guest;
  MonitorStatus monitor;
  bool paused = false;
  std::vector<DomainEvent> pending_events;
  std::vector<FindingEvent> events;  // every event so far
  int ticks = 0;
  // Guest snapshots: every tick (true) or as the engine's policy asks (false).
  bool snapshot_always = true;
  // Guest clock ns per host ns (a TCG guest's clock was measured lagging ~10%: 0.9).
  double guest_clock_rate = 1.0;
  // A workload's step (fault_scenarios.h), run at the start of every tick.
  std::function<void()> before_tick;
  // Edits the snapshot this tick observes (a partly or wholly unreadable read); returning false
  // drops it (no snapshot this tick).
  std::function<bool(GuestView&)> edit_snapshot;

  Duration period() const { return 400ms * guest.watchdog_thresh; }

  // One 100 ms tick. Returns this tick's events.
  std::vector<FindingEvent> tick() {
    if (before_tick) before_tick();
    clock.advance(kTick);
    ++ticks;
    auto advance = [](SimThread& t) {
      t.view.run_time += std::chrono::duration_cast<Duration>(kTick * t.run_rate);
      t.view.run_delay += std::chrono::duration_cast<Duration>(kTick * t.steal_rate);
      if (t.throttled_cgroup) {
        // A 100 ms CFS period: a throttled group is throttled once per period, i.e. per tick here.
        t.view.cgroup_nr_throttled = t.view.cgroup_nr_throttled.value_or(0) + (t.throttle_rate > 0 ? 1 : 0);
        t.view.cgroup_throttled_time = t.view.cgroup_throttled_time.value_or(Duration::zero()) +
                                       std::chrono::duration_cast<Duration>(kTick * t.throttle_rate);
      }
    };
    for (auto& t : vcpus) advance(t);
    advance(main);
    for (auto& t : others) advance(t);

    const uint64_t before = guest.running_clock_ns;
    guest.running_clock_ns += static_cast<uint64_t>(static_cast<double>(kTick.count()) * guest_clock_rate);
    const uint64_t p = static_cast<uint64_t>(period().count());
    const bool timer_fired = guest.watchdog_thresh > 0 && before / p != guest.running_clock_ns / p;
    if (timer_fired)
      for (auto& c : cpus) {
        if (!c.timer_on) continue;
        c.view.hrtimer_interrupts = c.view.hrtimer_interrupts.value_or(0) + 1;
        if (c.touch_on) c.view.watchdog_touch_ts = guest.running_clock_ns >> 30;
      }

    DomainObservation obs;
    obs.domain = domain;
    obs.paused = paused;
    for (std::size_t i = 0; i < vcpus.size(); ++i) obs.vcpus.push_back({static_cast<int>(i), vcpus[i].view});
    obs.other_threads.push_back(main.view);
    for (auto& t : others) obs.other_threads.push_back(t.view);
    obs.main_loop_tid = main.view.tid;
    obs.monitor = monitor;
    obs.events = std::move(pending_events);
    pending_events.clear();
    if (snapshot_always || engine.wants_guest_snapshot(domain.name, clock.now())) {
      GuestView g = guest;
      for (auto& c : cpus) g.cpus.push_back(c.view);
      if (!edit_snapshot || edit_snapshot(g)) {
        obs.guest = std::move(g);
        ++snapshots;
      }
    }
    auto out = engine.observe(obs);
    events.insert(events.end(), out.begin(), out.end());
    return out;
  }

  // Runs `d` worth of ticks; returns their events.
  std::vector<FindingEvent> run(Duration d) {
    std::vector<FindingEvent> out;
    for (Duration t{0}; t < d; t += kTick) {
      auto ev = tick();
      out.insert(out.end(), ev.begin(), ev.end());
    }
    return out;
  }

  // Runs until a finding of `kind` opens (at most `limit`); returns the time it took, or
  // Duration::max() if it never did.
  Duration run_until_open(FindingKind kind, Duration limit = 60s) {
    return run_until(FindingEvent::Type::kOpened, kind, limit);
  }
  // Runs until an event of `type` for `kind` (at most `limit`); the time it took, or Duration::max().
  Duration run_until(FindingEvent::Type type, FindingKind kind, Duration limit = 60s) {
    const Timestamp start = clock.now();
    while (clock.now() - start < limit) {
      for (const auto& ev : tick())
        if (ev.type == type && ev.finding.kind == kind) return clock.now() - start;
    }
    return Duration::max();
  }

  std::vector<Finding> active(FindingKind kind) const {
    std::vector<Finding> out;
    for (auto& f : engine.active_findings())
      if (f.kind == kind) out.push_back(f);
    return out;
  }

  int count(FindingEvent::Type type, FindingKind kind) const {
    return static_cast<int>(std::count_if(events.begin(), events.end(), [&](const FindingEvent& e) {
      return e.type == type && e.finding.kind == kind;
    }));
  }

  // Guest CPU `cpu` runs task `comm`/`pid` (not idle).
  void run_task(int cpu, const std::string& comm, int pid) {
    cpus[cpu].view.idle = false;
    cpus[cpu].view.current_comm = comm;
    cpus[cpu].view.current_pid = pid;
  }

  // CPU `waiter` has a locked csd for `target` in its cfd_data.
  void csd_wait(int waiter, int target, const std::string& function) {
    CsdRequest r;
    r.target_cpu = target;
    r.locked = true;
    r.function = function;
    r.csd_address = 0xffff888007a00000ull + static_cast<uint64_t>(waiter) * 0x1000 + static_cast<uint64_t>(target) * 0x20;
    r.flags = 0x11;
    cpus[waiter].view.cfd_requests.push_back(r);
  }
  void clear_csd(int waiter) { cpus[waiter].view.cfd_requests.clear(); }

  int snapshots = 0;
};

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace stallmon::diagnosis::testing
