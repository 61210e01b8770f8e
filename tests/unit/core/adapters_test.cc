// SPDX-License-Identifier: Apache-2.0
// The adapters from sampler, snapshot and libvirt types to the engine's DomainObservation.
#include <gtest/gtest.h>

#include "stallmon/core/observation_adapters.h"

namespace stallmon::core {
namespace {

using namespace std::chrono_literals;
using diagnosis::ThreadState;

host::ThreadSample sample(char state, int64_t t_ns, uint64_t run_ns) {
  host::ThreadSample s;
  s.state = state;
  s.t_ns = t_ns;
  s.run_ns = run_ns;
  s.wait_ns = run_ns / 10;
  return s;
}

TEST(HostThreadView, CopiesCountersAndDatesTheState) {
  host::StateTracker tr;
  tr.started = true;
  tr.state = 'D';
  tr.state_since_ns = 1'000'000'000;
  host::BlockedDetail det;
  det.t_ns = 1'100'000'000;
  det.state = 'D';
  det.wchan = "__refrigerator";
  det.stack = {"__refrigerator+0x4c/0x130", "get_signal+0x7b5/0x840"};
  auto v = to_host_thread_view(42, "CPU 2/TCG", sample('D', 1'700'000'000, 5'000'000), tr, det);
  EXPECT_EQ(v.tid, 42);
  EXPECT_EQ(v.name, "CPU 2/TCG");
  EXPECT_EQ(v.state, ThreadState::kDiskSleep);
  EXPECT_EQ(v.run_time, 5ms);
  EXPECT_EQ(v.run_delay, 500us);
  EXPECT_EQ(v.wchan, "__refrigerator");
  EXPECT_EQ(v.host_stack, det.stack);
  ASSERT_TRUE(v.in_state_for);
  EXPECT_EQ(*v.in_state_for, 700ms);
  EXPECT_FALSE(v.cgroup_nr_throttled);
}

TEST(HostThreadView, StaleBlockedDetailIsNotShownForARunningThread) {
  host::StateTracker tr;
  tr.started = true;
  tr.state = 'R';
  tr.state_since_ns = 5;
  host::BlockedDetail det;
  det.t_ns = 1;
  det.state = 'D';
  det.wchan = "io_schedule";
  det.stack = {"io_schedule"};
  auto v = to_host_thread_view(1, "x", sample('R', 10, 3), tr, det);
  EXPECT_EQ(v.state, ThreadState::kRunning);
  EXPECT_TRUE(v.wchan.empty());
  EXPECT_TRUE(v.host_stack.empty());
}

TEST(HostThreadView, CgroupCountersOnlyWhenTheThreadHasItsOwn) {
  host::StateTracker tr;
  auto s = sample('R', 10, 3);
  s.flags |= host::ThreadSample::kHasCgroup;
  s.nr_throttled = 17;
  s.throttled_ns = 2'000'000;
  auto v = to_host_thread_view(1, "x", s, tr, {});
  ASSERT_TRUE(v.cgroup_nr_throttled);
  EXPECT_EQ(*v.cgroup_nr_throttled, 17u);
  EXPECT_EQ(*v.cgroup_throttled_time, 2ms);
  EXPECT_FALSE(v.in_state_for);  // tracker not started
}

introspect::GuestSnapshot seed_case1_snapshot() {
  introspect::GuestSnapshot s;
  s.guest_clock_ns = 123'000'000'000;
  s.watchdog_thresh = 5;
  s.panic_cpu = -1;
  s.printk = {{1, 10, 6, 0, 2, 0, "first", false}, {2, 20, 4, 0, 2, 0, "second", false}};
  for (uint32_t c = 0; c < 4; ++c) {
    introspect::CpuSnapshot cpu;
    cpu.cpu = c;
    cpu.online = true;
    cpu.rq.ok = true;
    cpu.rq.curr.pid = c == 2 ? 0 : 100 + static_cast<int32_t>(c);
    cpu.rq.curr.comm = c == 2 ? "swapper/2" : "sh";
    cpu.rq.curr_is_idle = c == 2;
    cpu.rq.nr_running = c == 0 ? 5 : 1;
    cpu.rq.ttwu_pending = c == 2 ? 1 : 0;
    cpu.call_single_queue_ok = true;
    cpu.cfd_ok = true;
    cpu.watchdog.touch_ts = 100 + c;
    cpu.watchdog.hrtimer_interrupts = c == 2 ? 11 : 21;
    s.cpus.push_back(cpu);
  }
  introspect::CfdTarget t2;
  t2.target = 2;
  t2.csd = 0xffff8880aaaa0000;
  t2.flags = 0x11;
  t2.locked = true;
  t2.type = introspect::CsdType::kSync;
  t2.func_name = "do_sync_core";
  t2.ok = true;
  introspect::CfdTarget t3 = t2;
  t3.target = 3;
  t3.ok = false;  // unreadable: dropped
  s.cpus[0].cfd_mask = {2, 3};
  s.cpus[0].cfd_targets = {t2, t3};
  introspect::QueueEntry sync;
  sync.object = t2.csd;
  sync.type = introspect::CsdType::kSync;
  sync.func_name = "do_sync_core";
  introspect::QueueEntry ttwu;
  ttwu.object = 0xffff8880bbbb0000;
  ttwu.type = introspect::CsdType::kTtwu;
  ttwu.task.ok = true;
  ttwu.task.pid = 131;
  ttwu.task.comm = "sh";
  s.cpus[2].call_single_queue = {sync, ttwu};
  return s;
}

TEST(GuestView, SeedCase1Picture) {
  auto g = to_guest_view(seed_case1_snapshot());
  EXPECT_EQ(g.running_clock_ns, 123'000'000'000u);
  EXPECT_EQ(g.watchdog_thresh, 5);
  EXPECT_TRUE(g.softlockup_watchdog_enabled);
  EXPECT_EQ(g.panic_cpu, -1);
  EXPECT_EQ(g.printk_tail, (std::vector<std::string>{"first", "second"}));
  ASSERT_EQ(g.cpus.size(), 4u);
  const auto& c0 = g.cpus[0];
  ASSERT_EQ(c0.cfd_requests.size(), 1u);
  EXPECT_EQ(c0.cfd_requests[0].target_cpu, 2);
  EXPECT_TRUE(c0.cfd_requests[0].locked);
  EXPECT_EQ(c0.cfd_requests[0].function, "do_sync_core");
  EXPECT_EQ(c0.cfd_requests[0].flags, 0x11u);
  EXPECT_EQ(c0.nr_running, 5u);
  const auto& c2 = g.cpus[2];
  EXPECT_TRUE(c2.idle);
  EXPECT_EQ(c2.current_comm, "swapper/2");
  EXPECT_TRUE(c2.ttwu_pending);
  ASSERT_EQ(c2.call_single_queue.size(), 2u);
  EXPECT_EQ(c2.call_single_queue[0].type, diagnosis::CallType::kSync);
  EXPECT_EQ(c2.call_single_queue[0].function, "do_sync_core");
  EXPECT_EQ(c2.call_single_queue[0].csd_address, 0xffff8880aaaa0000u);
  EXPECT_EQ(c2.call_single_queue[1].type, diagnosis::CallType::kTtwu);
  EXPECT_EQ(c2.call_single_queue[1].function, "sh/131");
  EXPECT_EQ(c2.hrtimer_interrupts, 11u);
  EXPECT_EQ(c2.watchdog_touch_ts, 102u);
  EXPECT_FALSE(c2.watchdog_report_ts);
}

TEST(GuestView, UnreadablePartsStayUnknown) {
  auto s = seed_case1_snapshot();
  s.watchdog_thresh.reset();
  s.panic_cpu.reset();
  s.cpus[1].rq.ok = false;
  s.cpus[2].call_single_queue_ok = false;
  s.cpus[0].cfd_ok = false;
  s.cpus[3].online = false;
  auto g = to_guest_view(s);
  EXPECT_EQ(g.watchdog_thresh, diagnosis::GuestView{}.watchdog_thresh);
  EXPECT_EQ(g.panic_cpu, -1);
  EXPECT_EQ(g.cpus[1].current_comm, "");
  EXPECT_FALSE(g.cpus[1].idle);
  EXPECT_TRUE(g.cpus[2].call_single_queue.empty());
  EXPECT_TRUE(g.cpus[0].cfd_requests.empty());
  EXPECT_FALSE(g.cpus[3].online);
  s.watchdog_thresh = 0;
  EXPECT_FALSE(to_guest_view(s).softlockup_watchdog_enabled);
}

TEST(CallType, EveryCsdType) {
  EXPECT_EQ(to_call_type(introspect::CsdType::kAsync), diagnosis::CallType::kAsync);
  EXPECT_EQ(to_call_type(introspect::CsdType::kSync), diagnosis::CallType::kSync);
  EXPECT_EQ(to_call_type(introspect::CsdType::kIrqWork), diagnosis::CallType::kIrqWork);
  EXPECT_EQ(to_call_type(introspect::CsdType::kTtwu), diagnosis::CallType::kTtwu);
  EXPECT_EQ(to_call_type(introspect::CsdType::kLegacy), diagnosis::CallType::kUnknown);
  EXPECT_EQ(to_call_type(introspect::CsdType::kUnknown), diagnosis::CallType::kUnknown);
}

TEST(Monitor, UnresponsiveSinceMapsOntoTheEngineClock) {
  const diagnosis::Timestamp engine_now(std::chrono::seconds(1'700'000'000));
  const ClockMapping map = ClockMapping::from(engine_now, 5'000'000'000);
  libvirt::MonitorHealth h;
  EXPECT_TRUE(to_monitor_status(h, map).responsive);
  EXPECT_FALSE(to_monitor_status(h, map).unresponsive_since);
  h.responsive = false;
  h.stuck_call = "hmp info mtree -f";
  h.since_steady = std::chrono::steady_clock::time_point(std::chrono::seconds(3));
  auto m = to_monitor_status(h, map);
  EXPECT_FALSE(m.responsive);
  ASSERT_TRUE(m.unresponsive_since);
  EXPECT_EQ(*m.unresponsive_since, engine_now - 2s);
  EXPECT_EQ(m.pending_command, "hmp info mtree -f");
}

TEST(Events, LifecycleKindsTheEngineUses) {
  const diagnosis::Timestamp at(std::chrono::seconds(5));
  libvirt::DomainEvent e;
  e.detail = "panicked";
  e.kind = libvirt::DomainEventKind::kCrashed;
  auto d = to_diagnosis_event(e, at);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->type, diagnosis::DomainEventType::kCrashed);
  EXPECT_EQ(d->at, at);
  EXPECT_EQ(d->detail, "panicked");
  e.kind = libvirt::DomainEventKind::kRebooted;
  EXPECT_EQ(to_diagnosis_event(e, at)->type, diagnosis::DomainEventType::kRebooted);
  e.kind = libvirt::DomainEventKind::kStarted;
  EXPECT_EQ(to_diagnosis_event(e, at)->type, diagnosis::DomainEventType::kStarted);
  e.kind = libvirt::DomainEventKind::kStopped;
  EXPECT_EQ(to_diagnosis_event(e, at)->type, diagnosis::DomainEventType::kStopped);
  e.kind = libvirt::DomainEventKind::kSuspended;
  EXPECT_EQ(to_diagnosis_event(e, at)->type, diagnosis::DomainEventType::kPaused);
  e.kind = libvirt::DomainEventKind::kResumed;
  EXPECT_EQ(to_diagnosis_event(e, at)->type, diagnosis::DomainEventType::kResumed);
  e.kind = libvirt::DomainEventKind::kDeviceAdded;
  EXPECT_FALSE(to_diagnosis_event(e, at));
  e.kind = libvirt::DomainEventKind::kDefined;
  EXPECT_FALSE(to_diagnosis_event(e, at));
}

}  // namespace
}  // namespace stallmon::core
