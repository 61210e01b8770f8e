// SPDX-License-Identifier: Apache-2.0
// stallctl's rendering of stallmon.v1 messages (agent/server/client/format.h).
#include <gtest/gtest.h>

#include "format.h"

namespace stallmon::server::client {
namespace {

TEST(ClientFormat, TablesAlignColumns) {
  auto t = format_table({"A", "LONG HEADER", "Z"}, {{"xxxx", "y", "last column not padded"}, {"1", "2", "3"}});
  EXPECT_EQ(t,
            "A     LONG HEADER  Z\n"
            "xxxx  y            last column not padded\n"
            "1     2            3\n");
}

TEST(ClientFormat, DurationsReadLikeAnOperatorSaysThem) {
  using namespace std::chrono;
  EXPECT_EQ(human_duration(microseconds(114)), "114 us");
  EXPECT_EQ(human_duration(milliseconds(850)), "850 ms");
  EXPECT_EQ(human_duration(milliseconds(1400)), "1.4 s");
  EXPECT_EQ(human_duration(seconds(26)), "26 s");
  EXPECT_EQ(human_duration(seconds(200)), "3 min 20 s");
  EXPECT_EQ(human_duration(minutes(125)), "2 h 5 min");
  google::protobuf::Timestamp ts;
  EXPECT_EQ(human_time(ts), "-");
  ts.set_seconds(1'795'248'402);
  EXPECT_EQ(human_time(ts), "2026-11-21 08:06:42");
}

v1::Finding finding() {
  v1::Finding f;
  f.set_id("demo/GUEST_IPI_STALL/root=cpu2/3");
  f.set_kind(v1::GUEST_IPI_STALL);
  f.set_severity(v1::CRITICAL);
  f.set_domain("demo");
  f.add_cpus(0);
  f.add_cpus(2);
  f.set_active(true);
  f.mutable_onset()->set_seconds(1'795'248'402);
  f.mutable_last_update()->set_seconds(1'795'248'406);
  f.mutable_duration()->set_seconds(4);
  f.set_summary("CPU0 has waited 4 s for CPU2");
  auto* e = f.add_evidence();
  e->set_text("CPU0 waits on CPU2's csd");
  e->add_host_stack("futex_do_wait+0x46/0x90");
  f.set_explained_by("demo/VCPU_HOST_BLOCKED/vcpu2/1");
  return f;
}

TEST(ClientFormat, FindingsTableAndEvidence) {
  v1::ListFindingsResponse r;
  EXPECT_EQ(format_findings(r, false, Clock::now()), "no findings\n");
  *r.add_findings() = finding();
  auto now = Clock::time_point(std::chrono::seconds(1'795'248'407));
  auto table = format_findings(r, false, now);
  EXPECT_NE(table.find("critical  GUEST_IPI_STALL  demo    0,2   active  5.0 s  CPU0 has waited 4 s for CPU2"),
            std::string::npos)
      << table;
  auto chain = format_findings(r, true, now);
  EXPECT_NE(chain.find("    - CPU0 waits on CPU2's csd\n        futex_do_wait+0x46/0x90\n"), std::string::npos) << chain;
  EXPECT_NE(chain.find("explained by demo/VCPU_HOST_BLOCKED/vcpu2/1"), std::string::npos) << chain;
}

TEST(ClientFormat, KernelTraceEvidenceIsOneBullet) {
  v1::ListFindingsResponse r;
  auto f = finding();
  auto* e = f.add_evidence();
  e->set_text("CPU0 trace (interrupt frame, orc-verified, ipigen/121): smp_call_function_many_cond+0xf1/0x330 \u2190 "
              "on_each_cpu_cond_mask+0x20/0x40");
  (*e->mutable_facts())["trace"] = "smp_call_function_many_cond+0xf1/0x330\non_each_cpu_cond_mask+0x20/0x40";
  *r.add_findings() = f;
  auto chain = format_findings(r, true, Clock::time_point(std::chrono::seconds(1'795'248'407)));
  EXPECT_NE(chain.find("    - CPU0 trace (interrupt frame, orc-verified, ipigen/121): "
                       "smp_call_function_many_cond+0xf1/0x330 \u2190 on_each_cpu_cond_mask+0x20/0x40\n"),
            std::string::npos)
      << chain;
}

TEST(ClientFormat, MultiLineEvidenceStaysUnderItsBullet) {
  v1::ListFindingsResponse r;
  auto f = finding();
  f.set_kind(v1::GUEST_PANIC);
  f.add_evidence()->set_text("oops/panic text:\nsysrq: Trigger a crash\nKernel panic - not syncing: sysrq triggered crash");
  *r.add_findings() = f;
  auto chain = format_findings(r, true, Clock::time_point(std::chrono::seconds(1'795'248'407)));
  EXPECT_NE(chain.find("    - oops/panic text:\n      sysrq: Trigger a crash\n"
                       "      Kernel panic - not syncing: sysrq triggered crash\n"),
            std::string::npos)
      << chain;
}

TEST(ClientFormat, FindingsAsIncidentTrees) {
  // Listed by onset: the IPI stall began first, but it is a symptom of the VM-wide stall.
  v1::ListFindingsResponse r;
  auto ipi = finding();
  ipi.set_incident_id("demo/VM_WIDE_STALL/vm/5");
  ipi.set_recurrences(2);
  auto other = finding();
  other.set_id("demo/GUEST_IPI_STALL/root=cpu3/9");
  other.set_summary("CPU1 has waited 2 s for CPU3");
  other.set_cause_evaluating(true);
  other.set_incident_id(other.id());
  v1::Finding vm;
  vm.set_id("demo/VM_WIDE_STALL/vm/5");
  vm.set_kind(v1::VM_WIDE_STALL);
  vm.set_severity(v1::CRITICAL);
  vm.set_domain("demo");
  vm.set_active(true);
  vm.set_summary("The whole VM is stopped");
  vm.set_incident_id(vm.id());
  vm.add_symptom_ids(ipi.id());
  *r.add_findings() = ipi;
  *r.add_findings() = other;
  *r.add_findings() = vm;
  auto now = Clock::time_point(std::chrono::seconds(1'795'248'407));
  auto table = format_findings(r, false, now);
  const auto p_other = table.find("GUEST_IPI_STALL  ");
  const auto p_vm = table.find("VM_WIDE_STALL");
  const auto p_ipi = table.find("`- GUEST_IPI_STALL");
  ASSERT_NE(p_other, std::string::npos) << table;
  ASSERT_NE(p_vm, std::string::npos) << table;
  ASSERT_NE(p_ipi, std::string::npos) << table;
  EXPECT_LT(p_other, p_vm) << table;
  EXPECT_LT(p_vm, p_ipi) << "the symptom right under its root:\n" << table;
  auto chain = format_findings(r, true, now);
  EXPECT_NE(chain.find("    incident root of 1 symptoms\n"), std::string::npos) << chain;
  EXPECT_NE(chain.find("    `- critical GUEST_IPI_STALL demo"), std::string::npos) << chain;
  EXPECT_NE(chain.find("        recurred 2 times"), std::string::npos) << chain;
  EXPECT_NE(chain.find("    cause undetermined, evaluating\n"), std::string::npos) << chain;

  v1::FindingEvent e;
  e.set_type(v1::FindingEvent::OPENED);
  *e.mutable_finding() = ipi;
  EXPECT_NE(format_event(e).find("  [symptom of demo/VM_WIDE_STALL/vm/5]\n"), std::string::npos) << format_event(e);
}

TEST(ClientFormat, WatchEventsOneLineEach) {
  v1::FindingEvent e;
  e.set_type(v1::FindingEvent::SYNCED);
  e.set_revision(7);
  EXPECT_EQ(format_event(e), "-- revision 7: up to date, following live events\n");
  e.set_type(v1::FindingEvent::RESOLVED);
  *e.mutable_finding() = finding();
  e.mutable_finding()->mutable_resolved_at()->set_seconds(1'795'248'422);
  EXPECT_EQ(format_event(e),
            "2026-11-21 08:07:02  RESOLVED  critical  GUEST_IPI_STALL  demo  cpus 0,2  CPU0 has waited 4 s for CPU2"
            "  (lasted 4.0 s)\n");
  e.set_type(v1::FindingEvent::CURRENT);
  EXPECT_EQ(format_event(e).find("2026-11-21 08:06:46  ACTIVE  critical"), 0u) << format_event(e);
}

TEST(ClientFormat, InspectShowsTheWaitGraph) {
  v1::InspectDomainResponse r;
  r.set_domain("demo");
  r.set_nr_cpu_ids(2);
  r.set_watchdog_thresh(10);
  auto* c0 = r.add_cpus();
  c0->set_cpu(0);
  c0->mutable_state()->set_current_comm("sh");
  c0->mutable_state()->set_current_pid(138);
  c0->mutable_state()->add_waiting_on(1);
  auto* c1 = r.add_cpus();
  c1->set_cpu(1);
  c1->mutable_state()->set_current_comm("swapper/1");
  c1->mutable_state()->set_idle(true);
  auto* q = c1->add_call_single_queue();
  q->set_type("SYNC");
  q->set_function("do_sync_core");
  q->set_locked(true);
  auto* w = r.add_csd_waits();
  w->set_waiter_cpu(0);
  w->set_target_cpu(1);
  w->set_function("do_sync_core");
  w->mutable_waited()->set_seconds(4);
  auto* g = r.add_wait_graph();
  g->add_roots(1);
  g->add_waiters(0);
  auto text = format_inspect(r);
  EXPECT_NE(text.find("CPU0 -> CPU1  do_sync_core  4.0 s"), std::string::npos) << text;
  EXPECT_NE(text.find("root: CPU 1, waited on by CPU 0"), std::string::npos) << text;
  EXPECT_NE(text.find("  CPU1  SYNC  do_sync_core  locked"), std::string::npos) << text;
  EXPECT_NE(text.find("sh/138"), std::string::npos) << text;
}

TEST(ClientFormat, JsonUsesProtoFieldNames) {
  auto j = to_json(finding(), false);
  EXPECT_NE(j.find("\"domain\":\"demo\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"explained_by\":"), std::string::npos) << j;
  EXPECT_NE(j.find("\"kind\":\"GUEST_IPI_STALL\""), std::string::npos) << j;
}

TEST(ClientFormat, StatusShowsTheThreadStatsSourceAndWhy) {
  v1::AgentInfo info;
  info.set_version("0.1.0");
  info.set_thread_stats_source("proc");
  info.set_thread_stats_reason("/proc per thread: BPF unavailable: no kernel BTF (/sys/kernel/btf/vmlinux)");
  auto text = format_status(info, "SERVING", Clock::now());
  EXPECT_NE(text.find("\nthreads   proc (/proc per thread: BPF unavailable: no kernel BTF (/sys/kernel/btf/vmlinux))\n"),
            std::string::npos)
      << text;

  info.set_thread_stats_source("bpf-task-iter");
  info.set_thread_stats_reason("one BPF task-iterator pass per period");
  info.set_thread_stats_passes(1200);
  info.set_thread_stats_fallbacks(3);
  text = format_status(info, "SERVING", Clock::now());
  EXPECT_NE(text.find("\nthreads   bpf-task-iter, 1200 passes, 3 fallbacks to /proc (one BPF task-iterator pass per period)\n"),
            std::string::npos)
      << text;
  // stallctl status --json prints the message with its proto field names.
  auto j = to_json(info, false);
  EXPECT_NE(j.find("\"thread_stats_source\":\"bpf-task-iter\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"thread_stats_reason\":\"one BPF task-iterator pass per period\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"thread_stats_fallbacks\":\"3\""), std::string::npos) << j;  // uint64: a JSON string

  // A daemon that predates the choice sends none: no line.
  EXPECT_EQ(format_status(v1::AgentInfo{}, "SERVING", Clock::now()).find("threads"), std::string::npos);
}

}  // namespace
}  // namespace stallmon::server::client
