// SPDX-License-Identifier: Apache-2.0
// Adapters from core/diagnosis/introspect values to stallmon.v1 messages.
#include <gtest/gtest.h>

#include "values.h"
#include "stallmon/server/convert.h"

namespace stallmon::server {
namespace {

using testing::at_s;
using testing::make_domain;
using testing::make_finding;

TEST(ConvertTime, TimestampsBeforeTheEpochKeepNanosPositive) {
  google::protobuf::Timestamp ts;
  to_proto(diagnosis::Timestamp(std::chrono::nanoseconds(-1)), &ts);
  EXPECT_EQ(ts.seconds(), -1);
  EXPECT_EQ(ts.nanos(), 999'999'999);
  to_proto(at_s(0) + std::chrono::milliseconds(250), &ts);
  EXPECT_EQ(ts.seconds(), 1'700'000'000);
  EXPECT_EQ(ts.nanos(), 250'000'000);
  EXPECT_EQ(from_proto(ts), at_s(0) + std::chrono::milliseconds(250));
}

TEST(ConvertTime, NegativeDurationsHaveSameSignParts) {
  google::protobuf::Duration d;
  to_proto(std::chrono::nanoseconds(-1'500'000'000), &d);
  EXPECT_EQ(d.seconds(), -1);
  EXPECT_EQ(d.nanos(), -500'000'000);
  EXPECT_EQ(from_proto(d), std::chrono::nanoseconds(-1'500'000'000));
}

TEST(ConvertFinding, EveryFieldIsCopied) {
  auto f = make_finding("demo/GUEST_IPI_STALL/0-2/1", "demo", diagnosis::FindingKind::kGuestIpiStall);
  f.severity = diagnosis::Severity::kWarning;
  f.cause = diagnosis::Cause::kHostBlocked;
  f.cpus = {0, 2};
  f.duration = std::chrono::milliseconds(1400);
  f.predicted_guest_report_in = std::chrono::seconds(3);
  f.explained_by = "demo/VCPU_HOST_BLOCKED/2/1";
  f.incident_id = "demo/VM_WIDE_STALL/vm/1";
  f.recurrences = 3;
  f.cause_evaluating = true;
  diagnosis::Evidence e;
  e.text = "CPU0 waits on CPU2's csd for 1.4 s";
  e.csd_wait = diagnosis::CsdWaitEvidence{0, 2, std::chrono::milliseconds(1400), "do_sync_core", 0xffff88803ec2a8c0, 0x11};
  e.host_stack = {"__refrigerator", "get_signal"};
  f.evidence.push_back(e);

  v1::Finding p;
  to_proto(f, &p);
  EXPECT_EQ(p.id(), f.id);
  EXPECT_EQ(p.kind(), v1::GUEST_IPI_STALL);
  EXPECT_EQ(p.severity(), v1::WARNING);
  EXPECT_EQ(p.cause(), v1::CAUSE_HOST_BLOCKED);
  EXPECT_EQ(p.domain(), "demo");
  EXPECT_EQ(p.domain_uuid(), "uuid-demo");
  ASSERT_EQ(p.cpus_size(), 2);
  EXPECT_EQ(p.cpus(1), 2);
  EXPECT_EQ(p.onset().seconds(), 1'700'000'001);
  EXPECT_EQ(p.opened_at().seconds(), 1'700'000'002);
  EXPECT_EQ(p.last_update().seconds(), 1'700'000'003);
  EXPECT_EQ(p.duration().seconds(), 1);
  EXPECT_EQ(p.duration().nanos(), 400'000'000);
  EXPECT_FALSE(p.has_resolved_at());
  EXPECT_TRUE(p.active());
  EXPECT_EQ(p.predicted_guest_report_in().seconds(), 3);
  EXPECT_EQ(p.explained_by(), f.explained_by);
  EXPECT_EQ(p.incident_id(), f.incident_id);
  EXPECT_EQ(p.recurrences(), 3u);
  EXPECT_TRUE(p.cause_evaluating());
  EXPECT_EQ(p.symptom_ids_size(), 0);
  f.symptom_ids = {"demo/GUEST_IPI_STALL/root=cpu1/4", "demo/VCPU_HOST_BLOCKED/vcpu1/2"};
  v1::Finding root;
  to_proto(f, &root);
  ASSERT_EQ(root.symptom_ids_size(), 2);
  EXPECT_EQ(root.symptom_ids(1), "demo/VCPU_HOST_BLOCKED/vcpu1/2");
  ASSERT_EQ(p.evidence_size(), 1);
  // The typed wait edge reaches the API under the keys it always had.
  EXPECT_EQ(p.evidence(0).facts().at("waiter_cpu"), "0");
  EXPECT_EQ(p.evidence(0).facts().at("target_cpu"), "2");
  EXPECT_EQ(p.evidence(0).facts().at("wait_ms"), "1400");
  EXPECT_EQ(p.evidence(0).facts().at("function"), "do_sync_core");
  EXPECT_EQ(p.evidence(0).facts().at("csd_address"), "0xffff88803ec2a8c0");
  EXPECT_EQ(p.evidence(0).facts().at("csd_flags"), "0x11");
  EXPECT_EQ(p.evidence(0).facts().size(), 6u);
  EXPECT_EQ(p.evidence(0).host_stack(0), "__refrigerator");
}

// Issue 12 item 1: a kernel trace link (UTF-8 arrows, frames one per line in its facts) reaches
// the API unchanged, next to the links older consumers parse.
TEST(ConvertFinding, KernelTraceEvidenceIsCopiedVerbatim) {
  auto f = make_finding("demo/GUEST_IPI_STALL/0-2/1", "demo", diagnosis::FindingKind::kGuestIpiStall);
  diagnosis::Evidence e;
  e.text = "CPU0 trace (interrupt frame, orc-verified, ipigen/121): smp_call_function_many_cond+0xf1/0x330 \u2190 "
           "on_each_cpu_cond_mask+0x20/0x40";
  e.cpu = 0;
  diagnosis::KernelTrace tr;
  tr.frames = {"smp_call_function_many_cond+0xf1/0x330", "on_each_cpu_cond_mask+0x20/0x40"};
  tr.verification = diagnosis::TraceVerification::kInterruptFrame;
  tr.pid = 121;
  tr.comm = "ipigen";
  e.kernel_trace = diagnosis::KernelTraceEvidence{tr, std::chrono::milliseconds(300)};
  f.evidence.push_back(e);
  v1::Finding p;
  to_proto(f, &p);
  ASSERT_EQ(p.evidence_size(), 1);
  EXPECT_EQ(p.evidence(0).text(), e.text);
  EXPECT_EQ(p.evidence(0).facts().at("cpu"), "0");
  EXPECT_EQ(p.evidence(0).facts().at("trace"), "smp_call_function_many_cond+0xf1/0x330\non_each_cpu_cond_mask+0x20/0x40");
  EXPECT_EQ(p.evidence(0).facts().at("verification"), "interrupt_frame");
  EXPECT_EQ(p.evidence(0).facts().at("task"), "ipigen/121");
  EXPECT_EQ(p.evidence(0).facts().at("frames"), "2");
  EXPECT_EQ(p.evidence(0).facts().at("truncated"), "0");
  EXPECT_EQ(p.evidence(0).facts().at("age_ms"), "300");
}

TEST(ConvertFinding, ResolvedAndUnpredicted) {
  auto f = make_finding("x", "demo", diagnosis::FindingKind::kVcpuHostBlocked, false);
  v1::Finding p;
  to_proto(f, &p);
  EXPECT_FALSE(p.active());
  EXPECT_EQ(p.resolved_at().seconds(), 1'700'000'004);
  EXPECT_FALSE(p.has_predicted_guest_report_in());
}

TEST(ConvertFinding, EnumNumbersMatchTheProto) {
  for (int k = 0; k <= 11; ++k) {
    auto kind = static_cast<diagnosis::FindingKind>(k);
    EXPECT_EQ(static_cast<int>(to_proto(kind)), k);
    EXPECT_EQ(v1::FindingKind_Name(to_proto(kind)), k == 0 ? "FINDING_KIND_UNSPECIFIED" : diagnosis::to_string(kind));
    EXPECT_EQ(from_proto(to_proto(kind)), kind);
  }
  EXPECT_EQ(to_proto(static_cast<diagnosis::FindingKind>(99)), v1::FINDING_KIND_UNSPECIFIED);
  EXPECT_EQ(v1::Severity_Name(to_proto(diagnosis::Severity::kCritical)), diagnosis::to_string(diagnosis::Severity::kCritical));
  EXPECT_EQ(to_proto(diagnosis::Cause::kGuestIrqsOff), v1::CAUSE_GUEST_IRQS_OFF);
}

TEST(ConvertFinding, EventCarriesRevisionTypeAndIncarnation) {
  diagnosis::FindingEvent e;
  e.type = diagnosis::FindingEvent::Type::kResolved;
  e.revision = 17;
  e.finding = make_finding("x", "demo", diagnosis::FindingKind::kGuestIpiStall, false);
  v1::FindingEvent p;
  to_proto(e, 99, &p);
  EXPECT_EQ(p.type(), v1::FindingEvent::RESOLVED);
  EXPECT_EQ(p.revision(), 17u);
  EXPECT_EQ(p.incarnation(), 99u);
  EXPECT_EQ(p.finding().id(), "x");
}

TEST(ConvertText, InvalidUtf8FromTheGuestIsReplaced) {
  EXPECT_EQ(sanitize_utf8("swapper/2"), "swapper/2");
  EXPECT_EQ(sanitize_utf8("caf\xc3\xa9"), "caf\xc3\xa9");
  EXPECT_EQ(sanitize_utf8("a\xff" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(sanitize_utf8("\xc0\xaf"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong '/'
  EXPECT_EQ(sanitize_utf8("\xed\xa0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(sanitize_utf8("\xe2\x82"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // truncated
  // A guest comm with garbage still serialises.
  auto f = make_finding("x", "demo", diagnosis::FindingKind::kGuestIpiStall);
  f.summary = "CPU2 runs \xfe\xfe";
  v1::Finding p;
  to_proto(f, &p);
  std::string wire;
  EXPECT_TRUE(p.SerializeToString(&wire));
}

TEST(ConvertDomain, SummaryHealthAndVcpus) {
  auto d = make_domain("demo", "uuid-demo", 4);
  d.summary.active_findings = 2;
  d.summary.monitor.responsive = false;
  d.vcpus[2].thread.latest.state = 'D';
  d.vcpus[2].thread.blocked.t_ns = 1;
  d.vcpus[2].thread.blocked.state = 'D';
  d.vcpus[2].thread.blocked.wchan = "__refrigerator";
  d.vcpus[2].thread.blocked.stack = {"__refrigerator", "kvm_vcpu_block"};
  d.vcpus[2].thread.signals.valid = true;
  d.vcpus[2].thread.signals.no_progress_ns = 1'300'000'000;
  d.vcpus[2].thread.signals.time_in_state_ns = 1'300'000'000;
  // vCPU 1 ran again since its stack was read: the old stack must not show.
  d.vcpus[1].thread.blocked.t_ns = 1;
  d.vcpus[1].thread.blocked.state = 'D';
  d.vcpus[1].thread.blocked.stack = {"old"};
  introspect::CpuSnapshot cpu;
  cpu.cpu = 2;
  cpu.online = true;
  cpu.rq.ok = true;
  cpu.rq.curr = {0, 0, "swapper/2", std::nullopt, true};
  cpu.rq.curr_is_idle = true;
  cpu.rq.nr_running = 2;
  cpu.call_single_queue.resize(2);
  cpu.watchdog.touch_ts = 10;  // guest seconds of 2^30 ns
  d.vcpus[2].guest = cpu;
  core::GuestOverview g;
  g.guest_clock_ns = (12ull << 30);
  g.taken_at = at_s(9);
  d.guest = g;

  v1::Domain p;
  to_proto(d, v1::CRITICAL, &p);
  EXPECT_EQ(p.summary().name(), "demo");
  EXPECT_EQ(p.summary().state(), "running");
  EXPECT_EQ(p.summary().vcpu_count(), 4);
  EXPECT_EQ(p.summary().active_findings(), 2);
  EXPECT_EQ(p.summary().worst_severity(), v1::CRITICAL);
  EXPECT_TRUE(p.summary().introspection_ok());
  EXPECT_FALSE(p.summary().monitor_responsive());
  EXPECT_EQ(p.health().kernel_release(), "6.1.0-56-amd64");
  ASSERT_EQ(p.vcpus_size(), 4);
  const auto& v2 = p.vcpus(2);
  EXPECT_EQ(v2.host_tid(), 5002);
  EXPECT_EQ(v2.latest().state(), v1::THREAD_STATE_DISK_SLEEP);
  EXPECT_EQ(v2.latest().state_letter(), "D");
  EXPECT_EQ(v2.latest().wchan(), "__refrigerator");
  EXPECT_EQ(v2.latest().no_progress_for().seconds(), 1);
  ASSERT_EQ(v2.host_stack_size(), 2);
  EXPECT_EQ(v2.guest().current_comm(), "swapper/2");
  EXPECT_TRUE(v2.guest().idle());
  EXPECT_EQ(v2.guest().nr_running(), 2u);
  EXPECT_EQ(v2.guest().call_single_queue_len(), 2u);
  EXPECT_EQ(v2.guest().watchdog_touch_age().seconds(), 2);
  EXPECT_EQ(p.vcpus(1).host_stack_size(), 0);
  EXPECT_FALSE(p.vcpus(0).has_guest());
  EXPECT_EQ(p.guest_snapshot_at().seconds(), 1'700'000'009);
}

TEST(ConvertDomain, HealthSaysWhyThereIsNoGuestView) {
  core::DomainSummary s;
  s.name = "demo";
  s.introspection.state = core::IntrospectionState::kWaitingForLayout;
  s.ram_layout_error = "monitor timed out";
  v1::DomainHealth h;
  to_proto(s, &h);
  EXPECT_FALSE(h.introspection_ok());
  EXPECT_NE(h.introspection_error().find("monitor timed out"), std::string::npos) << h.introspection_error();
}

TEST(ConvertDomain, HealthOfAGuestWithNoLinuxKernel) {
  core::DomainSummary s;
  s.name = "firmware-only";
  s.last_tick = core::Timestamp(std::chrono::seconds(1'700'000'000));
  s.introspection.state = core::IntrospectionState::kNoKernel;
  s.introspection.discovery_bytes_read = 4ull << 30;
  s.introspection.next_attempt_at = *s.last_tick + std::chrono::minutes(136);
  v1::DomainHealth h;
  to_proto(s, &h);
  EXPECT_FALSE(h.introspection_ok());
  EXPECT_EQ(h.introspection_error(), "no Linux kernel found (scanned 4.0 GiB, next try in 2h 16m)");
  EXPECT_EQ(h.introspection_state(), "no Linux kernel found");
  EXPECT_EQ(h.discovery_bytes_read(), 4ull << 30);
  EXPECT_EQ(h.next_discovery_at().seconds(), 1'700'000'000 + 136 * 60);
}

TEST(ConvertHistory, ThinsEvenlyKeepingFirstAndNewest) {
  core::VcpuHistory h;
  h.vcpu = 1;
  h.tid = 77;
  for (int i = 0; i < 100; ++i) {
    core::HistoryPoint p;
    p.time = at_s(i);
    p.sample.run_ns = static_cast<uint64_t>(i);
    h.points.push_back(p);
  }
  v1::VcpuHistory out;
  to_proto(h, 10, &out);
  ASSERT_EQ(out.samples_size(), 10);
  EXPECT_EQ(out.samples(0).at().seconds(), 1'700'000'000);
  EXPECT_EQ(out.samples(9).at().seconds(), 1'700'000'099);
  for (int i = 1; i < 10; ++i) EXPECT_GT(out.samples(i).at().seconds(), out.samples(i - 1).at().seconds());
  v1::VcpuHistory all;
  to_proto(h, 1000, &all);
  EXPECT_EQ(all.samples_size(), 100);
  v1::VcpuHistory one;
  to_proto(h, 1, &one);
  ASSERT_EQ(one.samples_size(), 1);
  EXPECT_EQ(one.samples(0).at().seconds(), 1'700'000'099);
}

// Seed case 1 as a snapshot: CPU0 and CPU1 wait on CPU2's csd; CPU2 idle with queued calls.
introspect::GuestSnapshot seed_case_snapshot() {
  introspect::GuestSnapshot s;
  s.nr_cpu_ids = 4;
  s.online_cpus = {0, 1, 2, 3};
  s.watchdog_thresh = 5;
  s.guest_clock_ns = 100ull << 30;
  s.taken_at_ns = 5'000'000'000;
  s.duration_ns = 180'000;
  for (uint32_t c = 0; c < 4; ++c) {
    introspect::CpuSnapshot cpu;
    cpu.cpu = c;
    cpu.online = true;
    cpu.rq.ok = true;
    cpu.rq.curr.pid = c == 2 ? 0 : 100 + static_cast<int>(c);
    cpu.rq.curr.comm = c == 2 ? "swapper/2" : "sh";
    cpu.rq.curr_is_idle = c == 2;
    cpu.watchdog.touch_ts = 99;
    if (c == 0 || c == 1) {
      introspect::CfdTarget t;
      t.target = 2;
      t.locked = true;
      t.ok = true;
      t.csd = 0xffff888000001000ull + c;
      t.func_name = "do_sync_core";
      cpu.cfd_mask = {2};
      cpu.cfd_targets.push_back(t);
    }
    if (c == 2) {
      introspect::QueueEntry q;
      q.object = 0xffff888000001000ull;
      q.type = introspect::CsdType::kSync;
      q.func_name = "do_sync_core";
      q.locked = true;
      cpu.call_single_queue.push_back(q);
      introspect::QueueEntry w;
      w.type = introspect::CsdType::kTtwu;
      w.task.comm = "reader";
      w.task.pid = 321;
      cpu.call_single_queue.push_back(w);
    }
    s.cpus.push_back(cpu);
  }
  for (uint64_t i = 0; i < 30; ++i) {
    introspect::PrintkRecord r;
    r.seq = i;
    r.ts_nsec = i * 1'000'000'000;
    r.text = "line " + std::to_string(i);
    s.printk.push_back(r);
  }
  s.errors.push_back({3, "call_single_queue[3]", "bad pointer", 0xdead});
  return s;
}

TEST(ConvertInspect, WaitGraphQueuesPrintkAndErrors) {
  auto s = seed_case_snapshot();
  InspectExtras x;
  x.domain = "demo";
  x.domain_uuid = "uuid-demo";
  x.kernel_release = "6.1.0-56-amd64";
  x.printk_records = 5;
  auto f = make_finding("demo/GUEST_IPI_STALL/2/1", "demo", diagnosis::FindingKind::kGuestIpiStall);
  diagnosis::Evidence e;
  e.csd_wait = diagnosis::CsdWaitEvidence{0, 2, std::chrono::milliseconds(1400), "", 0, 0};
  f.evidence.push_back(e);
  x.active_findings.push_back(f);
  x.wall_now = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'010));
  x.monotonic_now_ns = 6'000'000'000;

  v1::InspectDomainResponse r;
  to_proto(s, x, &r);
  EXPECT_EQ(r.domain(), "demo");
  EXPECT_EQ(r.nr_cpu_ids(), 4);
  EXPECT_EQ(r.watchdog_thresh(), 5);
  EXPECT_EQ(r.panic_cpu(), -1);
  EXPECT_EQ(r.taken_at().seconds(), 1'700'000'009);  // 1 s of monotonic time before "now"
  ASSERT_EQ(r.csd_waits_size(), 2);
  EXPECT_EQ(r.csd_waits(0).waiter_cpu(), 0);
  EXPECT_EQ(r.csd_waits(0).target_cpu(), 2);
  EXPECT_EQ(r.csd_waits(0).function(), "do_sync_core");
  EXPECT_EQ(r.csd_waits(0).waited().seconds(), 1);  // from the finding's evidence
  EXPECT_FALSE(r.csd_waits(1).has_waited());
  ASSERT_EQ(r.wait_graph_roots_size(), 1);
  EXPECT_EQ(r.wait_graph_roots(0), 2);
  ASSERT_EQ(r.wait_graph_size(), 1);
  EXPECT_EQ(r.wait_graph(0).waiters_size(), 2);
  const auto& c2 = r.cpus(2);
  EXPECT_TRUE(c2.state().idle());
  ASSERT_EQ(c2.call_single_queue_size(), 2);
  EXPECT_EQ(c2.call_single_queue(0).type(), "SYNC");
  EXPECT_EQ(c2.call_single_queue(1).function(), "reader/321");
  EXPECT_EQ(r.cpus(0).state().waiting_on_size(), 1);
  EXPECT_EQ(r.cpus(3).errors_size(), 1);
  ASSERT_EQ(r.printk_tail_size(), 5);
  EXPECT_EQ(r.printk_tail(0).text(), "line 25");
  EXPECT_EQ(r.printk_tail(4).text(), "line 29");
  ASSERT_EQ(r.errors_size(), 1);
  EXPECT_NE(r.errors(0).find("0xdead"), std::string::npos);
  EXPECT_TRUE(r.snapshot_json().empty());
  x.include_json = true;
  v1::InspectDomainResponse rj;
  to_proto(s, x, &rj);
  EXPECT_NE(rj.snapshot_json().find("do_sync_core"), std::string::npos) << rj.snapshot_json().substr(0, 400);
}

}  // namespace
}  // namespace stallmon::server
