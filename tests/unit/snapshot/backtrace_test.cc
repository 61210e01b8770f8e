// SPDX-License-Identifier: Apache-2.0
// Backtraces on a synthetic guest: a stack built frame by frame like the compiler and the entry
// code lay it out, and an ORC table (in both formats) describing the functions on it.
#include "stallmon/introspect/backtrace.h"

#include <gtest/gtest.h>

#include <array>
#include <functional>
#include <initializer_list>

#include "orc_fixture.h"
#include "stallmon/introspect/snapshot.h"
#include "stallmon/introspect/snapshot_format.h"
#include "stallmon/introspect/snapshot_json.h"
#include "synthetic_kernel.h"

namespace stallmon::introspect {
namespace {

using testing::OrcStack;
using testing::SyntheticKernel;

std::vector<std::string> names(const Backtrace& b) {
  std::vector<std::string> v;
  for (const Frame& f : b.frames) v.push_back(f.symbol);
  return v;
}

const std::vector<std::string> kTaskOnly = {"inner", "middle", "outer", "ret_from_fork"};

class BacktraceTest : public ::testing::Test {
 protected:
  SyntheticKernel k{2, SyntheticKernel::Layout::kLinux61};
  OrcStack g{k};
  // A fresh reader (the ORC table as the guest has it now) and the task's trace.
  Result<Backtrace> trace() {
    auto r = BacktraceReader::create(k);
    if (!r) return std::move(r).error();
    return (*r)->backtrace_task(g.task);
  }
  // CPU 0's trace is the task stack's alone (no inner stack), its first note saying why.
  void expect_task_trace(BacktraceReader& r, const std::string& note) {
    auto bt = r.backtrace_cpu_task(g.task, k.pcpu(0));
    ASSERT_TRUE(bt.ok()) << bt.error().to_string();
    EXPECT_EQ(names(*bt), kTaskOnly) << note;
    EXPECT_FALSE(bt->irq_stack.has_value()) << note;
    EXPECT_FALSE(bt->exception_stack.has_value()) << note;
    ASSERT_FALSE(bt->notes.empty()) << note;
    EXPECT_NE(bt->notes[0].find(note), std::string::npos) << bt->notes[0];
  }
  // A snapshot with CPU 0's trace as the snapshot reader takes it (with the CPU's per-cpu offset).
  GuestSnapshot snapshot_with_cpu0_trace() {
    auto reader = SnapshotReader::create(k, SnapshotOptions{});
    EXPECT_TRUE(reader.ok()) << reader.error().to_string();
    if (!reader.ok()) return {};
    GuestSnapshot s = (*reader)->take();
    auto bt = (*reader)->backtrace_cpu(s, 0);
    EXPECT_TRUE(bt.ok()) << bt.error().to_string();
    if (bt.ok()) s.cpus[0].backtrace = std::move(bt).value();
    return s;
  }
};

TEST_F(BacktraceTest, InterruptFrameGivesTheInterruptedFunctionAndItsVerifiedCallers) {
  g.install_orc(false);
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ((*r)->orc().size(), g.table.size());
  auto bt = (*r)->backtrace_task(g.task);
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(bt->verification, Verification::kPtRegs);
  ASSERT_TRUE(bt->pt_regs.has_value());
  EXPECT_EQ(*bt->pt_regs, g.pt_regs);
  EXPECT_EQ(names(*bt), (std::vector<std::string>{"inner", "middle", "outer", "ret_from_fork"}));
  EXPECT_EQ(bt->frames[0].verification, Verification::kPtRegs);
  EXPECT_EQ(bt->frames[0].format(), "inner+0x18/0x100");
  EXPECT_EQ(bt->frames[1].verification, Verification::kOrcChain);
  EXPECT_EQ(bt->frames[1].format(), "middle+0x30/0x100");
  EXPECT_EQ(bt->frames[1].stack_slot, g.slot_middle);
  EXPECT_FALSE(bt->truncated);
  EXPECT_TRUE(bt->notes.empty());
}

TEST_F(BacktraceTest, WithoutInterruptFrameTheInnermostChainStartsAtTheLiveCaller) {
  g.install_orc(false);
  g.clear_pt_regs();
  auto bt = trace();
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(bt->verification, Verification::kOrcChain);
  // `stale` below the live frame does not chain (its caller slot is not text); the live
  // innermost function (inner) left no return address of its own: it starts at its caller.
  EXPECT_EQ(names(*bt), (std::vector<std::string>{"middle", "outer", "ret_from_fork"}));
}

TEST_F(BacktraceTest, StaleFramesThatChainIntoTheLiveOnesAreShown) {
  g.install_orc(false);
  g.clear_pt_regs();
  g.plant_stale_call_into_inner();
  auto bt = trace();
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  // The documented limit: a callee that returned left a frame that still chains.
  EXPECT_EQ(names(*bt), (std::vector<std::string>{"stale", "inner", "middle", "outer", "ret_from_fork"}));
}

TEST_F(BacktraceTest, AChainThatReachesTheOutermostFrameWinsOverAnInnerBrokenOne) {
  g.install_orc(false);
  g.clear_pt_regs();
  // Deep in the stack: stale -> middle, whose caller slot was overwritten since (0).
  const uint64_t x = OrcStack::kStack + 0x400;
  k.mem.put<uint64_t>(x, g.f_stale + 0x8);
  k.mem.put<uint64_t>(x + 8, g.f_middle + 0x30);
  auto bt = trace();
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), (std::vector<std::string>{"middle", "outer", "ret_from_fork"}));
}

TEST_F(BacktraceTest, UserModeRegistersEndTheWalkOnlyAtTheTopOfTheStack) {
  g.table.push_back({g.f_regs, OrcEntry{0, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kRegs, true}});
  g.install_orc(false);
  // stale was called from the entry code, whose ORC says "pt_regs at my SP".
  auto plant = [&](uint64_t regs) {
    g.fill_stack_with(0);
    k.mem.put<uint64_t>(regs - 16, g.f_stale + 0x8);
    k.mem.put<uint64_t>(regs - 8, g.f_regs + 0x4);
    k.mem.put<uint64_t>(regs + 8 * 17, 0x33);  // user CS
  };
  plant(OrcStack::kStack + OrcStack::kStackSize - OrcStack::kPtRegsSize);
  auto bt = trace();
  ASSERT_TRUE(bt.ok());
  EXPECT_EQ(names(*bt), (std::vector<std::string>{"stale", "entry_regs"}));
  EXPECT_TRUE(bt->notes.empty());

  plant(OrcStack::kStack + 0x1000);
  bt = trace();
  ASSERT_TRUE(bt.ok());
  ASSERT_EQ(bt->notes.size(), 1u);
  EXPECT_NE(bt->notes[0].find("not at the top of the stack"), std::string::npos) << bt->notes[0];
}

TEST_F(BacktraceTest, Linux61FormatFromBtfAndByMajority) {
  g.install_orc(true);
  auto no_btf = BacktraceReader::create(k);
  ASSERT_TRUE(no_btf.ok()) << no_btf.error().to_string();
  EXPECT_TRUE((*no_btf)->orc().format().end_shift.has_value());
  auto bt = (*no_btf)->backtrace_task(g.task);
  ASSERT_TRUE(bt.ok());
  EXPECT_EQ(names(*bt), (std::vector<std::string>{"inner", "middle", "outer", "ret_from_fork"}));

  g.add_orc_entry_btf(true);
  auto f = OrcFormat::from_btf(k);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->type_bits, 2);
  EXPECT_EQ(f->end_shift, std::optional<uint8_t>(10));
  EXPECT_FALSE(f->signal_shift.has_value());
  auto with_btf = BacktraceReader::create(k);
  ASSERT_TRUE(with_btf.ok());
  bt = (*with_btf)->backtrace_task(g.task);
  ASSERT_TRUE(bt.ok());
  EXPECT_EQ(names(*bt), (std::vector<std::string>{"inner", "middle", "outer", "ret_from_fork"}));
}

TEST_F(BacktraceTest, Linux612FormatFromBtf) {
  g.add_orc_entry_btf(false);
  auto f = OrcFormat::from_btf(k);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->type_bits, 3);
  EXPECT_EQ(f->signal_shift, std::optional<uint8_t>(11));
  EXPECT_FALSE(f->end_shift.has_value());
  g.install_orc(false);
  auto bt = trace();
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(bt->frames.size(), 4u);
}

TEST_F(BacktraceTest, NoConsistentChainListsTextAddressesUnverified) {
  // Every function claims a frame far larger than the stack: nothing chains.
  for (auto& [ip, e] : g.table) e.sp_offset = 30000;
  g.install_orc(false);
  auto bt = trace();
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(bt->verification, Verification::kScannedUnverified);
  ASSERT_FALSE(bt->frames.empty());
  for (const Frame& f : bt->frames) EXPECT_EQ(f.verification, Verification::kScannedUnverified);
  EXPECT_EQ(bt->frames.front().symbol, "stale");  // innermost first
}

TEST_F(BacktraceTest, HostileOffsetsThatLoopOrGoDownAreRejected) {
  // A frame whose CFA is not above its SP would loop (or walk down) forever.
  for (auto& [ip, e] : g.table)
    if (e.type == OrcType::kCall) e.sp_offset = -8;
  g.install_orc(false);
  auto bt = trace();
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(bt->verification, Verification::kScannedUnverified);
  EXPECT_LE(bt->frames.size(), 64u);
}

TEST_F(BacktraceTest, SelfReferencingStackStopsAtTheFrameLimit) {
  // Each "frame" 8 bytes: a return address per slot, all chaining, far more than 64 of them.
  g.table = {{g.f_loop, OrcEntry{8, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}}};
  g.install_orc(false);
  g.fill_stack_with(g.f_loop + 4);
  auto bt = trace();
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(bt->frames.size(), 64u);
  EXPECT_TRUE(bt->truncated);
}

TEST_F(BacktraceTest, HugeOrcCountIsRefusedNamingTheLimit) {
  g.install_orc(false);
  k.add_symbol("__stop_orc_unwind_ip", *k.symbol("__start_orc_unwind_ip") + 4ull * 3'000'000);
  k.remove_symbol("__stop_orc_unwind");
  auto r = BacktraceReader::create(k);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kLimit);
  EXPECT_NE(r.error().message.find("3000000 entries"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("limit of 2000000"), std::string::npos) << r.error().message;
}

TEST_F(BacktraceTest, OrcTablesAreChargedToTheBudget) {
  g.install_orc(false);
  BacktraceOptions o;
  o.orc.budget = std::make_shared<MemoryBudget>("vm", 64);
  auto r = BacktraceReader::create(k, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kOverBudget);
  EXPECT_EQ(o.orc.budget->used(), 0u);
  o.orc.budget = std::make_shared<MemoryBudget>("vm");
  r = BacktraceReader::create(k, o);
  ASSERT_TRUE(r.ok());
  EXPECT_GT(o.orc.budget->used(), 0u);
  r = Error(ErrorCode::kInternal, "drop");
  EXPECT_EQ(o.orc.budget->used(), 0u);
}

TEST_F(BacktraceTest, MismatchedOrUnsortedTablesAreCorrupt) {
  g.install_orc(false);
  k.add_symbol("__stop_orc_unwind", *k.symbol("__start_orc_unwind") + 7);
  auto r = BacktraceReader::create(k);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
  std::swap(g.table[0], g.table[2]);
  g.install_orc(false, /*sort=*/false);
  r = BacktraceReader::create(k);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
  EXPECT_NE(r.error().message.find("not sorted"), std::string::npos);
}

TEST_F(BacktraceTest, WithoutOrcTablesCreateSaysWhich) {
  auto r = BacktraceReader::create(k);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find("__start_orc_unwind_ip"), std::string::npos);
}

TEST_F(BacktraceTest, SnapshotChecksStackEndMagicAndBacktracesOnlyWhenAsked) {
  g.install_orc(false);
  auto reader = SnapshotReader::create(k, SnapshotOptions{});
  ASSERT_TRUE(reader.ok()) << reader.error().to_string();
  EXPECT_TRUE((*reader)->features().task_stack);
  GuestSnapshot s = (*reader)->take();
  ASSERT_TRUE(s.cpus[0].stack_end_corrupt.has_value());
  EXPECT_FALSE(*s.cpus[0].stack_end_corrupt);
  EXPECT_FALSE(s.cpus[0].backtrace.has_value());  // off by default: the tick's cost is unchanged
  // The idle task of CPU1 has no stack pointer in this synthetic kernel: nothing to check.
  EXPECT_FALSE(s.cpus[1].stack_end_corrupt.has_value());

  k.mem.put<uint64_t>(g.stack, 0x4141414141414141ULL);  // an overflow ran over the magic
  s = (*reader)->take();
  EXPECT_TRUE(s.cpus[0].stack_end_corrupt.value_or(false));
  EXPECT_TRUE(snapshot_to_json(s)["cpus"][0]["stack_end_corrupt"].get<bool>());

  auto bt = (*reader)->backtrace_cpu(s, 0);
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(bt->frames.front().symbol, "inner");

  SnapshotOptions with;
  with.read_backtraces = true;
  auto reader2 = SnapshotReader::create(k, with);
  ASSERT_TRUE(reader2.ok());
  s = (*reader2)->take();
  ASSERT_TRUE(s.cpus[0].backtrace.has_value());
  EXPECT_EQ(names(*s.cpus[0].backtrace), (std::vector<std::string>{"inner", "middle", "outer", "ret_from_fork"}));
  auto j = snapshot_to_json(s)["cpus"][0]["backtrace"];
  EXPECT_EQ(j["verification"], "pt_regs");
  EXPECT_EQ(j["frames"][1]["text"], "middle+0x30/0x100");
  EXPECT_EQ(j["frames"][1]["verification"], "orc_chain");
}

TEST_F(BacktraceTest, BacktraceCpuRetriesAfterTheBudgetFreesUpButNotAfterAMissingTable) {
  SnapshotOptions o;
  o.budget = std::make_shared<MemoryBudget>("vm", 4 << 20);
  auto reader = SnapshotReader::create(k, o);
  ASSERT_TRUE(reader.ok()) << reader.error().to_string();
  GuestSnapshot s = (*reader)->take();
  auto missing = (*reader)->backtrace_cpu(s, 0);  // no ORC tables installed yet
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  g.install_orc(false);
  EXPECT_FALSE((*reader)->backtrace_cpu(s, 0).ok());  // a kernel without ORC stays so

  auto reader2 = SnapshotReader::create(k, o);
  ASSERT_TRUE(reader2.ok());
  s = (*reader2)->take();
  auto held = MemoryCharge::take(o.budget, "someone else", o.budget->limit() - o.budget->used() - 8);
  ASSERT_TRUE(held.ok());
  auto over = (*reader2)->backtrace_cpu(s, 0);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.error().code, ErrorCode::kOverBudget);
  held->reset();
  auto bt = (*reader2)->backtrace_cpu(s, 0);
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(bt->frames.front().symbol, "inner");
}

// Issue 12 item 1, IRQ stacks: a CPU on its hardirq stack has its live frames there; the chain
// goes on onto the task stack through the RSP saved at the top of the hardirq stack.
std::vector<StackKind> stacks(const Backtrace& b) {
  std::vector<StackKind> v;
  for (const Frame& f : b.frames) v.push_back(f.stack);
  return v;
}

const std::vector<std::string> kFromIrq = {"irq_handler", "irq_switch", "irq_entry", "inner",
                                           "middle",      "outer",      "ret_from_fork"};

TEST_F(BacktraceTest, OnTheHardirqStackTheChainStartsThereAndGoesOnOntoTheTaskStack) {
  g.build_irq_stack();
  g.install_orc(false);
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_TRUE((*r)->irq_stack_layout().has_value());
  auto bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), kFromIrq);
  // irq_switch returns to the hardirq stack's top (the kernel's own dumps print it inside <IRQ>).
  using K = StackKind;
  EXPECT_EQ(stacks(*bt), (std::vector<K>{K::kIrq, K::kIrq, K::kTask, K::kTask, K::kTask, K::kTask, K::kTask}));
  EXPECT_EQ(bt->irq_stack, std::optional<uint64_t>(OrcStack::kIrqStack));
  EXPECT_EQ(bt->verification, Verification::kOrcChain);
  EXPECT_FALSE(bt->pt_regs.has_value());
  EXPECT_EQ(bt->frames[0].format(), "irq_handler+0x18/0x100 (irq stack)");
  EXPECT_EQ(bt->frames[0].stack_slot, g.irq_slot_handler);
  EXPECT_EQ(bt->frames[2].format(), "irq_entry+0x10/0x100");
  EXPECT_EQ(bt->frames[3].format(), "inner+0x18/0x100");  // the pt_regs the interrupt left, on the way
  for (const Frame& f : bt->frames) EXPECT_EQ(f.verification, Verification::kOrcChain) << f.format();
  for (size_t i = 0; i < bt->frames.size(); ++i) EXPECT_EQ(bt->frames[i].interrupted, i == 3) << i;
  EXPECT_TRUE(bt->notes.empty()) << bt->notes[0];
  // A trace of the task alone (no CPU) does not read the hardirq stack.
  auto task_only = (*r)->backtrace_task(g.task);
  ASSERT_TRUE(task_only.ok());
  EXPECT_EQ(names(*task_only), (std::vector<std::string>{"inner", "middle", "outer", "ret_from_fork"}));
  EXPECT_FALSE(task_only->irq_stack.has_value());

  // The snapshot reader asks with the CPU's per-cpu offset.
  GuestSnapshot s = snapshot_with_cpu0_trace();
  ASSERT_TRUE(s.cpus[0].backtrace.has_value());
  EXPECT_EQ(names(*s.cpus[0].backtrace), kFromIrq);
  auto j = snapshot_to_json(s)["cpus"][0]["backtrace"];
  EXPECT_EQ(j["irq_stack"], "0xffffc90000020000");
  EXPECT_EQ(j["frames"][0]["stack"], "irq");
  EXPECT_FALSE(j["frames"][2].contains("stack"));
}

TEST_F(BacktraceTest, OffTheHardirqStackOnlyTheTaskStackIsRead) {
  g.build_irq_stack();
  g.install_orc(false);
  k.mem.put<uint8_t>(g.irq_inuse_at, 0);  // returned from the interrupt: stale frames stay there
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  auto bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), (std::vector<std::string>{"inner", "middle", "outer", "ret_from_fork"}));
  EXPECT_EQ(bt->verification, Verification::kPtRegs);
  EXPECT_FALSE(bt->irq_stack.has_value());
  EXPECT_TRUE(bt->notes.empty());
}

TEST_F(BacktraceTest, HardirqStackOfLinux62PlusInPcpuHot) {
  g.build_irq_stack(/*pcpu_hot=*/true);
  g.install_orc(true);  // and the 6.1 ORC format: the two detections are independent
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_TRUE((*r)->irq_stack_layout().has_value());
  EXPECT_EQ((*r)->irq_stack_layout()->stack_ptr, 0x3420u);
  EXPECT_EQ((*r)->irq_stack_layout()->inuse, 0x3428u);
  auto bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), kFromIrq);
}

TEST_F(BacktraceTest, WithoutTheHardirqStackSymbolsTheTaskStackOnly) {
  g.build_irq_stack();
  g.install_orc(false);
  k.remove_symbol("hardirq_stack_inuse");  // before 5.12: irq_count, not read
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_FALSE((*r)->irq_stack_layout().has_value());
  auto bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok());
  EXPECT_EQ(names(*bt), (std::vector<std::string>{"inner", "middle", "outer", "ret_from_fork"}));
}

TEST_F(BacktraceTest, HostileHardirqStacksFallBackToTheTaskStackSayingWhy) {
  g.build_irq_stack();
  g.install_orc(false);
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  // The saved RSP points back into the hardirq stack, below the frame (a loop).
  k.mem.put<uint64_t>(g.irq_tos, g.irq_tos - 64);
  expect_task_trace(**r, "no verified chain starts there");
  // ...or above the top of the task stack's frames into nowhere.
  k.mem.put<uint64_t>(g.irq_tos, 0xffffc900dead0000ULL);
  expect_task_trace(**r, "no verified chain starts there");
  k.mem.put<uint64_t>(g.irq_tos, g.pt_regs - 16);
  // A pointer that is no stack top.
  k.mem.put<uint64_t>(g.irq_ptr_at, g.irq_tos + 0x100);
  expect_task_trace(**r, "implausible");
  // A stack that is not mapped.
  k.mem.put<uint64_t>(g.irq_ptr_at, 0xffffc90000f00000ULL - 8);
  expect_task_trace(**r, "unreadable");
  k.mem.put<uint64_t>(g.irq_ptr_at, g.irq_tos);
  auto bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok());
  EXPECT_EQ(names(*bt), kFromIrq);
}

TEST_F(BacktraceTest, AChainNeverGoesFromTheTaskStackOntoTheHardirqStack) {
  g.build_irq_stack();
  g.install_orc(false);
  // The task stack: no interrupt frame and no complete chain (ret_from_fork's slot is gone), so
  // its innermost chain of 2 frames wins; the innermost return address (into irq_switch, whose
  // SP_INDIRECT hint reads its CFA from the stack) names a CFA on the hardirq stack, where
  // irq_handler's return address sits.
  g.clear_pt_regs();
  k.mem.put<uint64_t>(g.slot_entry, 0);
  const uint64_t slot = g.stack + 0x200;
  k.mem.put<uint64_t>(slot, g.f_irq_switch + 0x20);
  k.mem.put<uint64_t>(slot + 8, g.irq_slot_handler - 8);
  std::vector<uint8_t> task(OrcStack::kStackSize), irq(OrcStack::kStackSize);
  ASSERT_TRUE(k.read(g.stack, task.data(), task.size()).ok());
  ASSERT_TRUE(k.read(OrcStack::kIrqStack, irq.data(), irq.size()).ok());
  // On the hardirq stack nothing chains onto the task stack (its top is cleared).
  std::fill(irq.end() - 16, irq.end(), uint8_t{0});
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  const StackBytes irq_stack{OrcStack::kIrqStack, irq};
  Backtrace bt = (*r)->backtrace_stacks(g.task, StackBytes{g.stack, task}, &irq_stack);
  EXPECT_EQ(names(bt), (std::vector<std::string>{"middle", "outer"}));
  for (const Frame& f : bt.frames) EXPECT_EQ(f.stack, StackKind::kTask) << f.format();
  EXPECT_FALSE(bt.irq_stack.has_value());
  ASSERT_FALSE(bt.notes.empty());
  EXPECT_NE(bt.notes[0].find("no verified chain starts there"), std::string::npos) << bt.notes[0];
  // Without the hardirq stack's bytes the same (its words are not there to read).
  bt = (*r)->backtrace_stacks(g.task, StackBytes{g.stack, task}, nullptr);
  EXPECT_EQ(names(bt), (std::vector<std::string>{"middle", "outer"}));
}

// Issue 12 item 1, exception stacks: a CPU in an NMI handler has its live frames on its NMI
// stack; the chain goes on through the pt_regs the NMI entry saved there to where it came in.
const std::vector<std::string> kFromNmi = {"nmi_handler", "nmi_entry", "inner", "middle", "outer", "ret_from_fork"};
TEST_F(BacktraceTest, InAnNmiHandlerTheChainStartsOnTheNmiStackAndGoesOnWhereTheNmiCameIn) {
  g.build_nmi_stack();
  g.install_orc(false);
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_TRUE((*r)->exception_stack_layout().has_value()) << (*r)->exception_stacks_error();
  EXPECT_TRUE((*r)->exception_stacks_error().empty()) << (*r)->exception_stacks_error();
  const ExceptionStackLayout& L = *(*r)->exception_stack_layout();
  EXPECT_EQ(L.struct_size, 0x13000u);
  EXPECT_EQ(L.stacks.size(), 6u);  // #DF NMI #DB #MC #VC #VC2, as 6.12's BTF has them
  ASSERT_NE(L.find(StackKind::kNmi), nullptr);
  EXPECT_EQ(L.find(StackKind::kNmi)->offset, 0x4000u);
  EXPECT_EQ(L.find(StackKind::kNmi)->size, 8192u);
  EXPECT_EQ(L.find(StackKind::kDb)->offset, 0x7000u);

  auto bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), kFromNmi);
  using K = StackKind;
  EXPECT_EQ(stacks(*bt), (std::vector<K>{K::kNmi, K::kNmi, K::kTask, K::kTask, K::kTask, K::kTask}));
  EXPECT_EQ(bt->exception_stack, std::optional<uint64_t>(OrcStack::kNmiStack));
  EXPECT_FALSE(bt->irq_stack.has_value());
  EXPECT_EQ(bt->verification, Verification::kOrcChain);
  EXPECT_EQ(bt->frames[0].format(), "nmi_handler+0x18/0x100 (NMI stack)");
  EXPECT_EQ(bt->frames[0].stack_slot, g.nmi_slot_handler);
  EXPECT_EQ(bt->frames[1].format(), "nmi_entry+0x10/0x100 (NMI stack)");
  EXPECT_EQ(bt->frames[2].format(), "inner+0x18/0x100");  // where the NMI came in
  for (size_t i = 0; i < bt->frames.size(); ++i) EXPECT_EQ(bt->frames[i].interrupted, i == 2) << i;
  EXPECT_TRUE(bt->notes.empty()) << bt->notes[0];
  // A trace of the task alone does not read the NMI stack.
  auto task_only = (*r)->backtrace_task(g.task);
  ASSERT_TRUE(task_only.ok());
  EXPECT_EQ(names(*task_only), kTaskOnly);

  // Through the snapshot reader, and as JSON.
  GuestSnapshot s = snapshot_with_cpu0_trace();
  ASSERT_TRUE(s.cpus[0].backtrace.has_value());
  EXPECT_EQ(names(*s.cpus[0].backtrace), kFromNmi);
  auto j = snapshot_to_json(s)["cpus"][0]["backtrace"];
  EXPECT_EQ(j["exception_stack"], "0xfffffe0000017000");
  EXPECT_FALSE(j.contains("irq_stack"));
  EXPECT_EQ(j["frames"][0]["stack"], "nmi");
  EXPECT_FALSE(j["frames"][2].contains("stack"));
  EXPECT_NE(format_snapshot(s, {}).find("from the NMI stack at 0xfffffe0000017000"), std::string::npos);

  // The NMI returned (nmi_state NMI_NOT_RUNNING): its frames stay on the stack, not shown.
  k.mem.put<uint32_t>(g.nmi_state_at, 0);
  bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), kTaskOnly);
  EXPECT_FALSE(bt->exception_stack.has_value());
  EXPECT_TRUE(bt->notes.empty()) << bt->notes[0];
  // NMI_LATCHED: a second NMI waits for the first, which still runs.
  k.mem.put<uint32_t>(g.nmi_state_at, 2);
  bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), kFromNmi);
}

TEST_F(BacktraceTest, AnNmiThatCameInOnTheHardirqStackGoesOnThroughItOntoTheTaskStack) {
  g.build_irq_stack();
  g.build_nmi_stack();
  g.set_nmi_interrupted(g.f_irq_handler + 0x20, g.irq_slot_handler + 8);  // irq_handler's SP
  g.install_orc(false);
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  auto bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), (std::vector<std::string>{"nmi_handler", "nmi_entry", "irq_handler", "irq_switch", "irq_entry",
                                                  "inner", "middle", "outer", "ret_from_fork"}));
  using K = StackKind;
  EXPECT_EQ(stacks(*bt), (std::vector<K>{K::kNmi, K::kNmi, K::kIrq, K::kIrq, K::kTask, K::kTask, K::kTask, K::kTask,
                                         K::kTask}));
  for (size_t i = 0; i < bt->frames.size(); ++i) EXPECT_EQ(bt->frames[i].interrupted, i == 2 || i == 5) << i;
  EXPECT_EQ(bt->exception_stack, std::optional<uint64_t>(OrcStack::kNmiStack));
  EXPECT_FALSE(bt->irq_stack.has_value());  // the trace starts on the NMI stack
  EXPECT_TRUE(bt->notes.empty()) << bt->notes[0];
}

TEST_F(BacktraceTest, AnNmiThatCameInOnTheDebugStackHasThatStackReadToo) {
  g.build_nmi_stack();
  g.build_db_under_nmi();
  g.install_orc(false);
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  auto bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), (std::vector<std::string>{"nmi_handler", "nmi_entry", "db_handler", "db_entry", "inner",
                                                  "middle", "outer", "ret_from_fork"}));
  using K = StackKind;
  EXPECT_EQ(stacks(*bt), (std::vector<K>{K::kNmi, K::kNmi, K::kDb, K::kDb, K::kTask, K::kTask, K::kTask, K::kTask}));
  EXPECT_EQ(bt->frames[2].format(), "db_handler+0x20/0x100 (#DB stack)");
  EXPECT_TRUE(bt->notes.empty()) << bt->notes[0];
}

TEST_F(BacktraceTest, AnNmiInterruptingAnUnreadableDebugStackFallsBackSayingWhy) {
  g.build_nmi_stack();
  g.f_db_handler = k.func("db_handler");
  g.table.push_back({g.f_db_handler, OrcEntry{24, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}});
  g.set_nmi_interrupted(g.f_db_handler + 0x20, OrcStack::kDbStack + 0x1000);  // the #DB stack is not mapped
  g.install_orc(false);
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  auto bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), kTaskOnly);
  EXPECT_FALSE(bt->exception_stack.has_value());
  ASSERT_GE(bt->notes.size(), 2u);
  EXPECT_NE(bt->notes[0].find("interrupted a #DB handler, whose stack is not read"), std::string::npos) << bt->notes[0];
  EXPECT_NE(bt->notes[1].find("on the NMI stack at 0xfffffe0000017000, but no verified chain starts there"),
            std::string::npos)
      << bt->notes[1];
}

// Forwards to the synthetic kernel, calling `after` after each read: a CPU that moves on while
// its stacks are read.
class RacingKernel final : public KernelAccess {
 public:
  RacingKernel(SyntheticKernel& k, std::function<void(uint64_t, size_t)> after) : k_(k), after_(std::move(after)) {}
  Result<void> read(uint64_t va, void* buf, size_t len) override {
    auto r = k_.read(va, buf, len);
    after_(va, len);
    return r;
  }
  Result<uint64_t> symbol(std::string_view name) const override { return k_.symbol(name); }
  std::string symbolize(uint64_t a) const override { return k_.symbolize(a); }
  std::optional<SymbolSpan> symbol_at(uint64_t a) const override { return k_.symbol_at(a); }
  Result<MemberLayout> member(std::string_view t, std::string_view p) const override { return k_.member(t, p); }
  Result<uint64_t> type_size(std::string_view t) const override { return k_.type_size(t); }

 private:
  SyntheticKernel& k_;
  std::function<void(uint64_t, size_t)> after_;
};

TEST_F(BacktraceTest, ACpuThatLeavesTheNmiHandlerWhileItsStackIsReadIsNotShownInIt) {
  g.build_nmi_stack();
  g.install_orc(false);
  RacingKernel racing(k, [&](uint64_t va, size_t len) {
    if (va == OrcStack::kNmiStack && len == OrcStack::kExcStackSize) k.mem.put<uint32_t>(g.nmi_state_at, 0);
  });
  auto r = BacktraceReader::create(racing);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  auto bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), kTaskOnly);
  EXPECT_FALSE(bt->exception_stack.has_value());
  for (const Frame& f : bt->frames) EXPECT_EQ(f.stack, StackKind::kTask) << f.format();
  ASSERT_FALSE(bt->notes.empty());
  EXPECT_NE(bt->notes[0].find("left the NMI handler while its stack at 0xfffffe0000017000 was read"), std::string::npos)
      << bt->notes[0];
}

TEST_F(BacktraceTest, HostileNmiStatesAndPointersFallBackToTheTaskStackSayingWhy) {
  g.build_nmi_stack();
  g.install_orc(false);
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  k.mem.put<uint32_t>(g.nmi_state_at, 7);
  expect_task_trace(**r, "nmi_state 7 is no NMI state");
  k.mem.put<uint32_t>(g.nmi_state_at, 1);
  // cea_exception_stacks outside the cpu_entry_area, not page aligned, or running past its end.
  for (uint64_t p : std::initializer_list<uint64_t>{SyntheticKernel::kPercpuBase, OrcStack::kEstacks + 8,
                                                    0xfffffe8000000000ULL - 0x1000, ~0ULL & ~0xfffULL}) {
    k.mem.put<uint64_t>(g.estacks_at, p);
    expect_task_trace(**r, "is implausible (not a page of the cpu_entry_area)");
  }
  k.mem.put<uint64_t>(g.estacks_at, OrcStack::kEstacks + 0x100000);  // not mapped
  expect_task_trace(**r, "in an NMI handler, but its stack is not read");
  k.mem.put<uint64_t>(g.estacks_at, OrcStack::kEstacks);
  // From user mode the handler runs on the task stack (its frames are the task stack's).
  g.set_nmi_interrupted(0x401000, 0x7ffc0000, 0x33);
  expect_task_trace(**r, "in an NMI from user mode");
  g.set_nmi_interrupted(g.f_inner + 0x18, g.sp_inner, 0x20);
  expect_task_trace(**r, "has CS 0x20");
  // The saved RSP points back into the NMI stack below its frames (a loop), or onto a stack not
  // read (the hardirq stack, whose flag is clear): no chain leaves the NMI stack.
  for (uint64_t sp : {g.nmi_slot_handler - 64, OrcStack::kIrqStack + 0x1000}) {
    g.set_nmi_interrupted(g.f_inner + 0x18, sp);
    expect_task_trace(**r, "on the NMI stack at 0xfffffe0000017000, but no verified chain starts there");
  }
  g.set_nmi_interrupted(g.f_inner + 0x18, g.sp_inner);
  auto bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok());
  EXPECT_EQ(names(*bt), kFromNmi);

  // The NMI stack is charged to the budget like the others: over it, not read (noted).
  BacktraceOptions o;
  o.orc.budget = std::make_shared<MemoryBudget>("vm", 4 << 20);
  auto rb = BacktraceReader::create(k, o);
  ASSERT_TRUE(rb.ok()) << rb.error().to_string();
  const uint64_t before = o.orc.budget->used();
  auto held = MemoryCharge::take(o.orc.budget, "someone else", o.orc.budget->limit() - before - OrcStack::kStackSize);
  ASSERT_TRUE(held.ok());
  bt = (*rb)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), kTaskOnly);
  ASSERT_FALSE(bt->notes.empty());
  EXPECT_NE(bt->notes[0].find("its stack is not read"), std::string::npos) << bt->notes[0];
  held->reset();
  EXPECT_EQ(o.orc.budget->used(), before);
}

TEST_F(BacktraceTest, WithoutTheExceptionStackTypeAnNmiIsNotedAndWithoutNmiStateNothingIsRead) {
  g.build_nmi_stack(/*btf=*/false);  // a kernel without struct cea_exception_stacks in BTF
  g.install_orc(false);
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_FALSE((*r)->exception_stack_layout().has_value());
  EXPECT_NE((*r)->exception_stacks_error().find("cea_exception_stacks"), std::string::npos)
      << (*r)->exception_stacks_error();
  auto bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), kTaskOnly);
  ASSERT_EQ(bt->notes.size(), 1u);
  EXPECT_NE(bt->notes[0].find("in an NMI handler, but its stack is not read: exception stacks"), std::string::npos)
      << bt->notes[0];

  // No nmi_state symbol: nothing says when the CPU is on the NMI stack; the reader says why.
  k.remove_symbol("nmi_state");
  r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_NE((*r)->exception_stacks_error().find("no nmi_state symbol"), std::string::npos)
      << (*r)->exception_stacks_error();
  bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(names(*bt), kTaskOnly);
  EXPECT_TRUE(bt->notes.empty()) << bt->notes[0];
  // A variable of that name that is no enum (BTF says 8 bytes): not read either.
  k.add_symbol("nmi_state", 0x3608);
  k.var_sizes["nmi_state"] = 8;
  r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_NE((*r)->exception_stacks_error().find("nmi_state is 8 bytes in BTF"), std::string::npos)
      << (*r)->exception_stacks_error();
  bt = (*r)->backtrace_cpu_task(g.task, k.pcpu(0));
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_TRUE(bt->notes.empty()) << bt->notes[0];
}

TEST(ExceptionStackLayoutTest, LayoutsNoKernelHasAreRefused) {
  SyntheticKernel k{1, SyntheticKernel::Layout::kLinux61};
  k.add_symbol("cea_exception_stacks", 0x3600);
  auto missing = ExceptionStackLayout::resolve(k);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  struct btf* b = k.btf();
  const int ch = btf__add_int(b, "char", 1, BTF_INT_SIGNED);
  const int idx = btf__add_int(b, "__ARRAY_SIZE_TYPE__", 4, 0);
  const int odd = btf__add_array(b, idx, ch, 100);
  btf__add_struct(b, "cea_exception_stacks", 0x2000);
  btf__add_field(b, "NMI_stack", odd, 0, 0);
  auto bad = ExceptionStackLayout::resolve(k);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kCorrupt);
  EXPECT_NE(bad.error().message.find("cea_exception_stacks.NMI_stack"), std::string::npos) << bad.error().message;
}

}  // namespace
}  // namespace stallmon::introspect
