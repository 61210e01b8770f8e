// SPDX-License-Identifier: Apache-2.0
// Issue 12 item 1, the engine's side: kernel traces handed in with the guest view become one
// Evidence link per CPU of each finding of a kind that carries traces (and only of its CPUs),
// bounded, sanitised, a failed trace shown as "trace unavailable", and a trace appearing is a
// material update while a refreshed one waits for the periodic update.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "sim.h"

namespace stallmon::diagnosis::testing {
namespace {

const Evidence* trace_of(const Finding& f, int cpu) {
  for (const auto& e : f.evidence) {
    if (e.cpu == cpu && e.kernel_trace) return &e;
  }
  return nullptr;
}

KernelTrace trace(std::vector<std::string> frames, Timestamp at) {
  KernelTrace t;
  t.frames = std::move(frames);
  t.verification = TraceVerification::kInterruptFrame;
  t.pid = 107;
  t.comm = "sh";
  t.taken_at = at;
  return t;
}

// CPU0 waits for CPU2's csd; CPU2's vCPU is frozen on the host.
class Traces : public ::testing::Test {
 protected:
  Traces() : sim(4) {
    sim.guest.watchdog_thresh = 5;
    sim.run_task(0, "sh", 107);
    sim.run(3s);
    sim.vcpus[2].block(ThreadState::kDiskSleep, "__refrigerator", {"__refrigerator"});
    sim.cpus[2].timer_on = sim.cpus[2].touch_on = false;
    sim.csd_wait(0, 2, "do_sync_core");
    sim.cpus[0].touch_on = false;
    sim.run_until_open(FindingKind::kGuestIpiStall, 10s);
  }
  Finding ipi() {
    auto f = sim.active(FindingKind::kGuestIpiStall);
    EXPECT_EQ(f.size(), 1u);
    return f.empty() ? Finding{} : f[0];
  }
  Sim sim;
};

TEST_F(Traces, OneLinkPerCpuOfTheFindingInnermostFirstBounded) {
  ASSERT_EQ(ipi().cpus, (std::vector<int>{0, 2}));
  std::vector<std::string> deep;
  deep.push_back("smp_call_function_many_cond+0xf1/0x330");
  for (int i = 0; i < 30; ++i) deep.push_back("caller" + std::to_string(i) + "+0x10/0x40");
  sim.cpus[0].view.kernel_trace = trace(deep, sim.clock.now());
  sim.cpus[1].view.kernel_trace = trace({"do_idle+0x1/0x2"}, sim.clock.now());  // in no finding
  KernelTrace failed;
  failed.error = "backtrace: stack of task 0xffff888003a40000: unmapped";
  sim.cpus[2].view.kernel_trace = failed;
  sim.tick();

  Finding f = ipi();
  const Evidence* t0 = trace_of(f, 0);
  ASSERT_NE(t0, nullptr);
  EXPECT_EQ(t0->text.rfind("CPU0 trace (interrupt frame, orc-verified, sh/107): smp_call_function_many_cond+0xf1/0x330 "
                           "\u2190 caller0+0x10/0x40 \u2190 ",
                           0),
            0u)
      << t0->text;
  EXPECT_EQ(t0->text.substr(t0->text.size() - std::string(" \u2190 \u2026").size()), " \u2190 \u2026");
  const KernelTrace& k0 = t0->kernel_trace->trace;
  EXPECT_EQ(k0.frames.size(), 16u);
  EXPECT_TRUE(k0.truncated);
  EXPECT_EQ(k0.verification, TraceVerification::kInterruptFrame);
  EXPECT_EQ(k0.frames.front(), "smp_call_function_many_cond+0xf1/0x330");
  // The API's form of the same link (evidence_facts: the one place it becomes text).
  const auto api = evidence_facts(*t0);
  EXPECT_EQ(api.at("cpu"), "0");
  EXPECT_EQ(api.at("frames"), "16");
  EXPECT_EQ(api.at("truncated"), "1");
  EXPECT_EQ(api.at("verification"), "interrupt_frame");
  EXPECT_EQ(api.at("task"), "sh/107");
  EXPECT_EQ(api.at("trace").substr(0, api.at("trace").find('\n')), "smp_call_function_many_cond+0xf1/0x330");
  EXPECT_EQ(std::count(api.at("trace").begin(), api.at("trace").end(), '\n'), 15);
  const Evidence* t2 = trace_of(f, 2);
  ASSERT_NE(t2, nullptr);
  EXPECT_EQ(t2->text, "CPU2 trace unavailable: backtrace: stack of task 0xffff888003a40000: unmapped");
  EXPECT_EQ(evidence_facts(*t2),
            (std::map<std::string, std::string>{{"cpu", "2"}, {"trace_error", "backtrace: stack of task 0xffff888003a40000: unmapped"}}));
  EXPECT_EQ(trace_of(f, 1), nullptr);
  // The traces come after the links the rule wrote (consumers that show the first few keep them).
  EXPECT_EQ(&f.evidence.back(), t2);
  // A host-side kind carries none, even for a traced CPU.
  auto blocked = sim.active(FindingKind::kVcpuHostBlocked);
  ASSERT_EQ(blocked.size(), 1u);
  EXPECT_EQ(trace_of(blocked[0], 2), nullptr);
}

TEST_F(Traces, AppearingIsMaterialARefreshWaitsForThePeriodicUpdate) {
  sim.run(2s);  // past the finding's last periodic update
  sim.cpus[0].view.kernel_trace = trace({"smp_call_function_many_cond+0xf1/0x330"}, sim.clock.now());
  auto out = sim.tick();
  auto updated = [&](const std::vector<FindingEvent>& evs) {
    for (const auto& e : evs)
      if (e.finding.kind == FindingKind::kGuestIpiStall && e.type == FindingEvent::Type::kUpdated) return &e;
    return static_cast<const FindingEvent*>(nullptr);
  };
  ASSERT_NE(updated(out), nullptr);
  EXPECT_NE(trace_of(updated(out)->finding, 0), nullptr);
  // A refreshed trace (another innermost frame) is not emitted on the next tick by itself...
  sim.cpus[0].view.kernel_trace = trace({"csd_lock_wait+0x2/0x10"}, sim.clock.now());
  EXPECT_EQ(updated(sim.tick()), nullptr);
  // ...but within the periodic update, and the stored finding has it at once.
  EXPECT_NE(trace_of(ipi(), 0)->text.find("csd_lock_wait"), std::string::npos);
  bool emitted = false;
  for (int i = 0; i < 10 && !emitted; ++i) emitted = updated(sim.tick()) != nullptr;
  EXPECT_TRUE(emitted);
  // Becoming unavailable is material again.
  KernelTrace failed;
  failed.error = "ORC tables over budget";
  sim.cpus[0].view.kernel_trace = failed;
  ASSERT_NE(updated(sim.tick()), nullptr);
  EXPECT_EQ(trace_of(ipi(), 0)->text, "CPU0 trace unavailable: ORC tables over budget");
}

TEST_F(Traces, GuestStringsAreSanitisedAndAnOldTraceSaysItsAge) {
  sim.cpus[0].view.kernel_trace = trace({"bad\x01name+0x1/0x2"}, sim.clock.now() - 5s);
  sim.tick();
  const Finding f = ipi();
  const Evidence* t0 = trace_of(f, 0);
  ASSERT_NE(t0, nullptr);
  EXPECT_NE(t0->text.find("bad?name+0x1/0x2"), std::string::npos) << t0->text;
  EXPECT_NE(t0->text.find(", read 5.1 s ago)"), std::string::npos) << t0->text;
}

// Issue 12 item 1, chains consistent across successive snapshots: each new read of CPU0's trace
// is compared with the earlier reads of the same task's trace; the outer frames they all share
// are bracketed and counted, and the count starts over when they stop agreeing.
class StableTraces : public Traces {
 protected:
  // A new read of CPU0's trace (a new taken_at), then one tick that hands it in.
  const Evidence* read(std::vector<std::string> frames, int pid = 107,
                       TraceVerification v = TraceVerification::kInterruptFrame, bool truncated = false) {
    KernelTrace t = trace(std::move(frames), sim.clock.now());
    t.pid = pid;
    t.verification = v;
    t.truncated = truncated;
    sim.cpus[0].view.kernel_trace = t;
    sim.tick();
    last = ipi();
    return trace_of(last, 0);
  }
  static std::pair<std::size_t, int> stability(const Evidence* e) {
    if (e == nullptr || !e->kernel_trace) return {999, 999};
    return {e->kernel_trace->stable_frames, e->kernel_trace->stable_snapshots};
  }
  Finding last;
};

const std::vector<std::string> kOuter = {"on_each_cpu_cond_mask+0x20/0x40", "do_init_module+0x5a/0x200",
                                         "__do_sys_finit_module+0x9c/0x100", "do_syscall_64+0x38/0x90"};
std::vector<std::string> with_inner(std::vector<std::string> inner, const std::vector<std::string>& outer = kOuter) {
  inner.insert(inner.end(), outer.begin(), outer.end());
  return inner;
}

TEST_F(StableTraces, OuterFramesSharedByConsecutiveReadsAreConfirmedAndCounted) {
  const Evidence* e = read(with_inner({"smp_call_function_many_cond+0xf1/0x330"}));
  EXPECT_EQ(stability(e), (std::pair<std::size_t, int>{0, 0})) << "one read confirms nothing";
  EXPECT_EQ(e->text.find("stable"), std::string::npos) << e->text;
  EXPECT_EQ(e->text.find('['), std::string::npos) << e->text;
  EXPECT_EQ(evidence_facts(*e).at("stable_frames"), "0");
  EXPECT_EQ(evidence_facts(*e).at("stable_snapshots"), "0");
  // The same read handed in again on later ticks (the daemon refreshes once a second) is not a
  // new snapshot of the chain.
  for (int i = 0; i < 5; ++i) sim.tick();
  EXPECT_EQ(stability(trace_of(ipi(), 0)), (std::pair<std::size_t, int>{0, 0}));

  // The innermost frame moved (the CPU was interrupted elsewhere in its loop), the outer chain
  // did not.
  e = read(with_inner({"smp_call_function_many_cond+0xf5/0x330"}));
  EXPECT_EQ(stability(e), (std::pair<std::size_t, int>{4, 2}));
  e = read(with_inner({"smp_call_function_many_cond+0xf1/0x330"}));
  EXPECT_EQ(stability(e), (std::pair<std::size_t, int>{4, 3}));
  EXPECT_EQ(e->text,
            "CPU0 trace (interrupt frame, orc-verified, sh/107, outer 4 of 5 frames stable over 3 snapshots): "
            "smp_call_function_many_cond+0xf1/0x330 \u2190 [on_each_cpu_cond_mask+0x20/0x40 \u2190 "
            "do_init_module+0x5a/0x200 \u2190 __do_sys_finit_module+0x9c/0x100 \u2190 do_syscall_64+0x38/0x90]");
  const auto api = evidence_facts(*e);
  EXPECT_EQ(api.at("stable_frames"), "4");
  EXPECT_EQ(api.at("stable_snapshots"), "3");
  EXPECT_EQ(api.at("verification"), "interrupt_frame") << "stability does not change how it was verified";
  // The same trace as the last read: the stable part is what every read of the run shared, so
  // the innermost frame that moved once stays out of it.
  e = read(with_inner({"smp_call_function_many_cond+0xf1/0x330"}));
  EXPECT_EQ(stability(e), (std::pair<std::size_t, int>{4, 4}));
  // A middle frame changed: only what every read shared stays, and it never grows back.
  e = read(with_inner({"smp_call_function_many_cond+0xf1/0x330", "on_each_cpu_cond_mask+0x20/0x40"},
                      {"load_module+0x10/0x900", "__do_sys_finit_module+0x9c/0x100", "do_syscall_64+0x38/0x90"}));
  EXPECT_EQ(stability(e), (std::pair<std::size_t, int>{2, 5}));
  e = read(with_inner({"smp_call_function_many_cond+0xf1/0x330"}));
  EXPECT_EQ(stability(e), (std::pair<std::size_t, int>{2, 6}));
  EXPECT_NE(e->text.find(", outer 2 of 5 frames stable over 6 snapshots): "), std::string::npos) << e->text;
}

TEST_F(StableTraces, AnotherTaskOuterFramesUnverifiedErrorOrNoTraceStartOver) {
  read(with_inner({"a+0x1/0x10"}));
  EXPECT_EQ(stability(read(with_inner({"b+0x1/0x10"}))), (std::pair<std::size_t, int>{4, 2}));
  // Another task on the CPU, with the very same frames: not the same chain.
  EXPECT_EQ(stability(read(with_inner({"b+0x1/0x10"}), 108)), (std::pair<std::size_t, int>{0, 0}));
  EXPECT_EQ(stability(read(with_inner({"b+0x1/0x10"}), 108)), (std::pair<std::size_t, int>{5, 2}));
  // The outermost frame changed: nothing shared.
  EXPECT_EQ(stability(read(with_inner({"b+0x1/0x10"}, {"ret_from_fork_asm+0x1b/0x30"}), 108)),
            (std::pair<std::size_t, int>{0, 0}));
  EXPECT_EQ(stability(read(with_inner({"c+0x1/0x10"}, {"ret_from_fork_asm+0x1b/0x30"}), 108)),
            (std::pair<std::size_t, int>{1, 2}));
  // An unverified scan with the same frames: stale frames stay put, so it neither confirms nor is
  // confirmed, and the run starts over after it.
  const Evidence* e = read(with_inner({"c+0x1/0x10"}, {"ret_from_fork_asm+0x1b/0x30"}), 108, TraceVerification::kUnverified);
  EXPECT_EQ(stability(e), (std::pair<std::size_t, int>{0, 0}));
  EXPECT_EQ(e->text.find("stable"), std::string::npos) << e->text;
  EXPECT_EQ(stability(read(with_inner({"c+0x1/0x10"}, {"ret_from_fork_asm+0x1b/0x30"}), 108)),
            (std::pair<std::size_t, int>{0, 0}));
  EXPECT_EQ(stability(read(with_inner({"c+0x1/0x10"}, {"ret_from_fork_asm+0x1b/0x30"}), 108)),
            (std::pair<std::size_t, int>{2, 2}));
  // A read that is a deeper call from the same chain keeps all of it.
  EXPECT_EQ(stability(read(with_inner({"d+0x1/0x10", "c+0x1/0x10"}, {"ret_from_fork_asm+0x1b/0x30"}), 108)),
            (std::pair<std::size_t, int>{2, 3}));
  // An error breaks the run.
  KernelTrace failed;
  failed.error = "unmapped";
  failed.taken_at = sim.clock.now();
  sim.cpus[0].view.kernel_trace = failed;
  sim.tick();
  EXPECT_EQ(stability(trace_of(ipi(), 0)), (std::pair<std::size_t, int>{0, 0}));
  EXPECT_EQ(evidence_facts(*trace_of(ipi(), 0)).count("stable_frames"), 0u);
  EXPECT_EQ(stability(read(with_inner({"c+0x1/0x10"}))), (std::pair<std::size_t, int>{0, 0}));
  EXPECT_EQ(stability(read(with_inner({"c+0x1/0x10"}))), (std::pair<std::size_t, int>{5, 2}));
  // A snapshot without the CPU's trace breaks it too (the reads are no longer consecutive).
  sim.cpus[0].view.kernel_trace.reset();
  sim.tick();
  EXPECT_EQ(stability(read(with_inner({"c+0x1/0x10"}))), (std::pair<std::size_t, int>{0, 0}));
  // Truncated reads (innermost frames kept) are compared only with truncated ones.
  EXPECT_EQ(stability(read(with_inner({"c+0x1/0x10"}), 107, TraceVerification::kOrcChain, true)),
            (std::pair<std::size_t, int>{0, 0}));
  const Evidence* t = read(with_inner({"c+0x1/0x10"}), 107, TraceVerification::kOrcChain, true);
  EXPECT_EQ(stability(t), (std::pair<std::size_t, int>{5, 2}));
  EXPECT_NE(t->text.find("(orc-verified, sh/107, all 5 frames stable over 2 snapshots): [c+0x1/0x10"), std::string::npos)
      << t->text;
  EXPECT_EQ(t->text.substr(t->text.size() - std::string("] \u2190 \u2026").size()), "] \u2190 \u2026") << t->text;
}

}  // namespace
}  // namespace stallmon::diagnosis::testing
