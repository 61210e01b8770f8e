// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: the ORC table reader (counts, format detection, sortedness) and the
// backtracer's stack scan and ORC chains over a fuzzed table and stack (as the task's, hardirq
// and NMI stacks): never a crash, a hang, more than max_frames frames, or a verified frame
// outside kernel text.
#include "orc_input.h"
#include "stallmon/introspect/backtrace.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  auto& guest = fuzz::orc_guest();
  fuzz::apply_orc_input(guest.g, data, size);
  BacktraceOptions o;
  o.orc.budget = std::make_shared<MemoryBudget>("fuzz", 1 << 20);
  auto r = BacktraceReader::create(guest.k, o);
  if (!r.ok()) return 0;
  auto bt = (*r)->backtrace_task(guest.g.task);
  if (!bt.ok()) return 0;
  auto check = [&](const Backtrace& b) {
    if (b.frames.size() > o.max_frames) __builtin_trap();
    for (const Frame& f : b.frames) {
      if (!(*r)->in_text(f.address) && f.verification != Verification::kScannedUnverified) __builtin_trap();
      (void)f.format();
    }
  };
  check(*bt);
  // The same bytes as a hardirq stack too (a fuzzed word naming an address there reads the
  // input again): chains between two stacks, the direction rule and the stack's exit.
  StackBytes stack{fuzz::OrcStack::kStack, std::vector<uint8_t>(fuzz::OrcStack::kStackSize)};
  if (!guest.k.read(stack.base, stack.bytes.data(), stack.bytes.size())) return 0;
  const StackBytes irq{fuzz::OrcStack::kIrqStack, stack.bytes};
  const Backtrace both = (*r)->backtrace_stacks(guest.g.task, stack, &irq);
  check(both);
  // A chain never goes back onto the hardirq stack, and only a trace that starts there has
  // frames on it.
  bool left = !both.irq_stack;
  for (const Frame& f : both.frames) {
    if (f.stack == StackKind::kIrq && left) __builtin_trap();
    if (f.stack == StackKind::kTask) left = true;
  }
  // And as an NMI stack in front of both (a fuzzed word naming an address in the cpu_entry_area
  // reads the input a third time): the chain only moves outward, NMI -> hardirq -> task, and
  // only a trace that starts on the NMI stack has frames there.
  const StackBytes nmi{fuzz::OrcStack::kNmiStack, stack.bytes, StackKind::kNmi};
  const Backtrace all = (*r)->backtrace_stacks(guest.g.task, stack, &irq, std::span<const StackBytes>(&nmi, 1));
  check(all);
  auto rank = [](StackKind k) { return k == StackKind::kTask ? 2 : k == StackKind::kIrq ? 1 : 0; };
  int outer = 0;
  for (const Frame& f : all.frames) {
    if (rank(f.stack) < outer || (f.stack == StackKind::kNmi && !all.exception_stack)) __builtin_trap();
    outer = rank(f.stack);
  }
  if (all.exception_stack && all.irq_stack) __builtin_trap();
  return 0;
}
