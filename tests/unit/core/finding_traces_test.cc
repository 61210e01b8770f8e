// SPDX-License-Identifier: Apache-2.0
// Which CPUs the pipeline traces and when (FindingTraces), and the backtrace → KernelTrace
// adapter. The pipeline end to end (a synthetic kernel with a real stack and ORC table) is in
// pipeline_test.cc.
#include <gtest/gtest.h>

#include "internal.h"
#include "stallmon/core/observation_adapters.h"

namespace stallmon::core {
namespace {

using diagnosis::Finding;
using diagnosis::FindingKind;
using internal::FindingTraces;
constexpr int64_t kMs = 1'000'000;

diagnosis::KernelTrace trace(const std::string& innermost) {
  diagnosis::KernelTrace t;
  t.frames = {innermost};
  return t;
}

Finding finding(FindingKind k, std::vector<int> cpus) {
  Finding f;
  f.kind = k;
  f.cpus = std::move(cpus);
  return f;
}

TEST(FindingTraces, OnlyTheCpusOfFindingsOfTracedKinds) {
  const auto cpus = FindingTraces::involved_in({finding(FindingKind::kGuestIpiStall, {0, 2}),
                                                finding(FindingKind::kVcpuHostBlocked, {3}),
                                                finding(FindingKind::kGuestPanic, {1}),
                                                finding(FindingKind::kVmWideStall, {5, 6})});
  EXPECT_EQ(cpus, (std::set<int>{0, 1, 2}));
}

TEST(FindingTraces, NewlyInvolvedAtOnceThenAtMostOncePerSecond) {
  FindingTraces t;
  EXPECT_TRUE(t.due(0).empty());
  t.set_involved({0, 2});
  EXPECT_EQ(t.due(0), (std::vector<int>{0, 2}));
  t.store(0, trace("a"), 0);
  t.store(2, trace("b"), 0);
  EXPECT_TRUE(t.due(100 * kMs).empty());
  EXPECT_TRUE(t.due(999 * kMs).empty());
  EXPECT_EQ(t.due(1000 * kMs), (std::vector<int>{0, 2}));
  t.store(0, trace("a2"), 1000 * kMs);
  EXPECT_EQ(t.due(1100 * kMs), (std::vector<int>{2}));
  // A CPU joining a finding is traced on the next tick, ahead of refreshes.
  t.store(2, trace("b2"), 1100 * kMs);
  t.set_involved({0, 2, 3});
  EXPECT_EQ(t.due(2000 * kMs), (std::vector<int>{3, 0}));
}

TEST(FindingTraces, CpusLeavingEveryFindingAreForgottenAndNeverAttached) {
  FindingTraces t;
  t.set_involved({0, 2});
  t.store(0, trace("a"), 0);
  t.store(2, trace("b"), 0);
  t.store(1, trace("x"), 0);  // not involved: dropped
  t.set_involved({0});
  diagnosis::GuestView v;
  for (int c = 0; c < 4; ++c) v.cpus.push_back(diagnosis::GuestCpuView{.cpu = c});
  t.attach(v);
  ASSERT_TRUE(v.cpus[0].kernel_trace);
  EXPECT_EQ(v.cpus[0].kernel_trace->frames, std::vector<std::string>{"a"});
  EXPECT_FALSE(v.cpus[1].kernel_trace);
  EXPECT_FALSE(v.cpus[2].kernel_trace);
  EXPECT_FALSE(v.cpus[3].kernel_trace);
  t.set_involved({0, 2});
  EXPECT_EQ(t.due(10 * kMs), std::vector<int>{2});  // back in a finding: traced afresh
  t.forget_traces();                                  // a reboot
  EXPECT_EQ(t.due(10 * kMs), (std::vector<int>{0, 2}));
}

TEST(FindingTraces, BoundedPerTickOldestFirst) {
  FindingTraces t;
  std::set<int> all;
  for (int c = 0; c < 12; ++c) all.insert(c);
  t.set_involved(all);
  auto first = t.due(0);
  ASSERT_EQ(first.size(), FindingTraces::kMaxPerTick);
  for (int c : first) t.store(c, trace("f"), 0);
  EXPECT_EQ(t.due(100 * kMs), (std::vector<int>{8, 9, 10, 11}));
  for (int c = 8; c < 12; ++c) t.store(c, trace("f"), 100 * kMs);
  auto later = t.due(1100 * kMs);
  ASSERT_EQ(later.size(), FindingTraces::kMaxPerTick);
  EXPECT_EQ(later.front(), 0);  // taken at 0: older than those taken at 100 ms
}

introspect::GuestSnapshot snapshot_with_sh_on_cpu1() {
  introspect::GuestSnapshot s;
  s.cpus.resize(2);
  s.cpus[1].cpu = 1;
  s.cpus[1].rq.curr.ok = true;
  s.cpus[1].rq.curr.pid = 107;
  s.cpus[1].rq.curr.comm = "sh";
  return s;
}

// An ORC-verified trace of `n` frames f0+0x10/0x100, f1+0x10/0x100, ...
introspect::Backtrace orc_trace(int n) {
  introspect::Backtrace bt;
  bt.verification = introspect::Verification::kOrcChain;
  for (int i = 0; i < n; ++i) {
    introspect::Frame f;
    f.symbol = "f" + std::to_string(i);
    f.offset = 0x10;
    f.size = 0x100;
    bt.frames.push_back(f);
  }
  return bt;
}

TEST(KernelTraceAdapter, FramesInnermostFirstBoundedAndVerification) {
  introspect::Backtrace bt = orc_trace(20);
  const diagnosis::Timestamp at{std::chrono::seconds(5)};
  auto t = to_kernel_trace(Result<introspect::Backtrace>(bt), snapshot_with_sh_on_cpu1(), 1, at, 16);
  EXPECT_TRUE(t.error.empty());
  ASSERT_EQ(t.frames.size(), 16u);
  EXPECT_EQ(t.frames[0], "f0+0x10/0x100");
  EXPECT_TRUE(t.truncated);
  EXPECT_EQ(t.verification, diagnosis::TraceVerification::kOrcChain);
  EXPECT_EQ(t.pid, 107);
  EXPECT_EQ(t.comm, "sh");
  EXPECT_EQ(t.taken_at, at);
  bt.verification = introspect::Verification::kPtRegs;
  bt.frames.resize(3);
  t = to_kernel_trace(Result<introspect::Backtrace>(bt), snapshot_with_sh_on_cpu1(), 1, at, 16);
  EXPECT_EQ(t.verification, diagnosis::TraceVerification::kInterruptFrame);
  EXPECT_FALSE(t.truncated);
}

// A trace that starts on the hardirq stack: its frames there, then where the interrupt came in.
TEST(KernelTraceAdapter, HardirqFramesAndWhereTheInterruptCameIn) {
  introspect::Backtrace bt = orc_trace(6);
  for (int i = 0; i < 6; ++i) {
    bt.frames[i].stack = i < 2 ? introspect::StackKind::kIrq : introspect::StackKind::kTask;
    bt.frames[i].interrupted = i == 3 || i == 5;
  }
  bt.irq_stack = 0xffffc90000020000ULL;
  auto t = to_kernel_trace(Result<introspect::Backtrace>(bt), snapshot_with_sh_on_cpu1(), 1, {}, 16);
  EXPECT_EQ(t.irq_frames, 2u);
  EXPECT_EQ(t.interrupted, std::optional<std::size_t>(3));
  EXPECT_EQ(t.frames[0], "f0+0x10/0x100 (irq stack)");
  // Cut before it: not known.
  t = to_kernel_trace(Result<introspect::Backtrace>(bt), snapshot_with_sh_on_cpu1(), 1, {}, 3);
  EXPECT_EQ(t.irq_frames, 2u);
  EXPECT_FALSE(t.interrupted.has_value());
  // The task stack alone: neither.
  for (auto& f : bt.frames) f.stack = introspect::StackKind::kTask;
  bt.irq_stack.reset();
  t = to_kernel_trace(Result<introspect::Backtrace>(bt), snapshot_with_sh_on_cpu1(), 1, {}, 16);
  EXPECT_EQ(t.irq_frames, 0u);
  EXPECT_FALSE(t.interrupted.has_value());
}

// A trace that starts on the NMI stack, the NMI having come in on the hardirq stack: the NMI's
// frames, then where the NMI came in (the interrupt handler it stopped).
TEST(KernelTraceAdapter, NmiFramesAndWhereTheNmiCameIn) {
  introspect::Backtrace bt = orc_trace(6);
  using K = introspect::StackKind;
  const K kinds[6] = {K::kNmi, K::kNmi, K::kIrq, K::kIrq, K::kTask, K::kTask};
  for (int i = 0; i < 6; ++i) {
    bt.frames[i].stack = kinds[i];
    bt.frames[i].interrupted = i == 2 || i == 4;
  }
  bt.exception_stack = 0xfffffe0000017000ULL;
  auto t = to_kernel_trace(Result<introspect::Backtrace>(bt), snapshot_with_sh_on_cpu1(), 1, {}, 16);
  EXPECT_EQ(t.irq_frames, 2u);
  EXPECT_EQ(t.interrupted, std::optional<std::size_t>(2));
  EXPECT_EQ(t.frames[0], "f0+0x10/0x100 (NMI stack)");
  EXPECT_EQ(t.frames[2], "f2+0x10/0x100 (irq stack)");
}

TEST(KernelTraceAdapter, AFailedBacktraceIsATraceThatSaysWhy) {
  auto t = to_kernel_trace(Result<introspect::Backtrace>(Error(ErrorCode::kOverBudget, "ORC tables over budget")),
                           snapshot_with_sh_on_cpu1(), 1, {}, 16);
  EXPECT_TRUE(t.frames.empty());
  EXPECT_NE(t.error.find("ORC tables over budget"), std::string::npos) << t.error;
  EXPECT_EQ(t.comm, "sh");
}

}  // namespace
}  // namespace stallmon::core
