// SPDX-License-Identifier: Apache-2.0
// A synthetic task stack with a known call chain and the ORC table describing it, on a
// SyntheticKernel (backtrace unit tests, the ORC fuzz target and its seeds).
//
// The chain, outermost first: ret_from_fork (END hint) called outer (frame of 24 bytes: CFA =
// SP + 24), which called middle (16), which called inner (40), which was interrupted at
// inner+0x18: a kernel struct pt_regs sits right below inner's SP. Below that, a stale return
// address into `stale` whose caller slot is not text (it does not chain).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "stallmon/introspect/backtrace.h"
#include "synthetic_kernel.h"

namespace stallmon::introspect::testing {

// struct orc_entry bytes in the 6.4+ format (type:3 signal:1) or the 6.1 one (type:2 end:1).
inline std::array<uint8_t, 6> encode_orc(const OrcEntry& e, bool v61) {
  uint16_t bits = static_cast<uint16_t>((e.sp_reg & 0xf) | (e.bp_reg & 0xf) << 4);
  if (v61) {
    switch (e.type) {
      case OrcType::kRegs: bits |= 1 << 8; break;
      case OrcType::kRegsPartial: bits |= 2 << 8; break;
      case OrcType::kEndOfStack: bits |= 1 << 10; break;
      default: break;  // CALL 0; undefined: CALL with sp_reg undefined
    }
  } else {
    static constexpr uint16_t kType[5] = {0, 1, 2, 3, 4};  // OrcType order is the 6.4+ numbering
    bits |= static_cast<uint16_t>(kType[static_cast<int>(e.type)] << 8);
    if (e.signal) bits |= 1 << 11;
  }
  std::array<uint8_t, 6> out{};
  std::memcpy(out.data(), &e.sp_offset, 2);
  std::memcpy(out.data() + 2, &e.bp_offset, 2);
  std::memcpy(out.data() + 4, &bits, 2);
  return out;
}

struct OrcStack {
  static constexpr uint64_t kOrc = 0xffffffff82800000ULL;  // ip table; entries at +kOrcEntries
  static constexpr uint64_t kOrcEntries = 0x8000;
  static constexpr uint64_t kOrcSize = 0x10000;
  static constexpr uint64_t kStack = 0xffffc90000010000ULL;
  static constexpr uint64_t kStackSize = 16384;
  static constexpr uint64_t kPtRegsSize = 21 * 8;

  explicit OrcStack(SyntheticKernel& kernel) : k(kernel) {
    f_entry = k.func("ret_from_fork");
    f_outer = k.func("outer");
    f_middle = k.func("middle");
    f_inner = k.func("inner");
    f_stale = k.func("stale");
    f_loop = k.func("loop");
    f_end = k.func("end_of_text");
    f_regs = k.func("entry_regs");
    k.add_symbol("_stext", SyntheticKernel::kText);
    k.add_symbol("_etext", SyntheticKernel::kText + 0x10000);
    k.mem.map(kOrc, kOrcSize);
    k.mem.map(kStack, kStackSize);
    using E = OrcEntry;
    table = {
        {f_entry, E{0, 0, kOrcRegUndefined, kOrcRegUndefined, OrcType::kEndOfStack, false}},
        {f_outer, E{24, -16, kOrcRegSp, kOrcRegPrevSp, OrcType::kCall, false}},
        {f_middle, E{16, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}},
        {f_inner, E{40, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}},
        {f_stale, E{8, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}},
        {f_loop, E{8, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}},
        {f_end, E{0, 0, kOrcRegUndefined, kOrcRegUndefined, OrcType::kUndefined, false}},
    };
    task = k.task(100, "spinner");
    k.mem.put<uint64_t>(task + k.off("task_struct", "stack"), kStack);
    k.set_rq(0, task, task, 1, 1, 0, 1000000000ULL);
    build_stack();
  }

  void build_stack() {
    std::vector<uint8_t> zero(kStackSize, 0);
    k.mem.write(kStack, zero.data(), zero.size());
    k.mem.put<uint64_t>(kStack, kStackEndMagic);
    const uint64_t top = kStack + kStackSize;
    slot_entry = top - 8 * 30;
    k.mem.put<uint64_t>(slot_entry, f_entry + 0x10);
    const uint64_t sp_outer = slot_entry + 8 - 24;
    slot_outer = sp_outer - 8;
    k.mem.put<uint64_t>(slot_outer, f_outer + 0x20);
    const uint64_t sp_middle = sp_outer - 16;
    slot_middle = sp_middle - 8;
    k.mem.put<uint64_t>(slot_middle, f_middle + 0x30);
    sp_inner = sp_middle - 40;
    pt_regs = sp_inner - kPtRegsSize;
    const uint64_t regs[21] = {0, 0, 0, 0, /*bp*/ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                               /*orig_ax*/ ~0ULL, /*ip*/ f_inner + 0x18, /*cs*/ 0x10, /*flags*/ 0x246,
                               /*sp*/ sp_inner, /*ss*/ 0x18};
    k.mem.write(pt_regs, regs, sizeof regs);
    stale_slot = pt_regs - 64;
    k.mem.put<uint64_t>(stale_slot, f_stale + 0x8);
  }

  void clear_pt_regs() {
    std::vector<uint8_t> zero(kPtRegsSize, 0);
    k.mem.write(pt_regs, zero.data(), zero.size());
  }

  // inner called stale (which called something else) before it was interrupted: their return
  // addresses remain below inner's SP and chain into the live frames.
  void plant_stale_call_into_inner() {
    k.mem.put<uint64_t>(sp_inner - 8, f_inner + 0x10);
    k.mem.put<uint64_t>(sp_inner - 16, f_stale + 0x8);
  }

  // The CPU took an interrupt while `inner` ran (the pt_regs above, on the task stack) and is
  // still on its hardirq stack, as arch/x86's entry code lays it out: the entry stub (irq_entry,
  // a REGS hint after its call) called irq_switch on the task stack (common_interrupt), which
  // saved its RSP at the top of the hardirq stack and called irq_handler there
  // (call_on_irqstack: its return address has an SP_INDIRECT hint); irq_handler called a
  // function that spins and calls nothing (no return address of its own). CPU 0's per-cpu
  // hardirq_stack_ptr (top - 8) and hardirq_stack_inuse say so: as per-cpu variables (6.1), or
  // as members of per-cpu struct pcpu_hot (6.2+) when `pcpu_hot`. Call before install_orc.
  static constexpr uint64_t kIrqStack = 0xffffc90000020000ULL;
  void build_irq_stack(bool pcpu_hot = false) {
    using E = OrcEntry;
    f_irq_entry = k.func("irq_entry");
    f_irq_switch = k.func("irq_switch");
    f_irq_handler = k.func("irq_handler");
    table.push_back({f_irq_entry, E{0, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kRegs, false}});
    table.push_back({f_irq_switch, E{16, 0, kOrcRegSpIndirect, kOrcRegUndefined, OrcType::kCall, false}});
    table.push_back({f_irq_handler, E{24, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}});
    k.mem.map(kIrqStack, kStackSize);
    std::vector<uint8_t> zero(kStackSize, 0);
    k.mem.write(kIrqStack, zero.data(), zero.size());
    irq_tos = kIrqStack + kStackSize - 8;
    k.mem.put<uint64_t>(pt_regs - 8, f_irq_entry + 0x10);     // the stub's call to irq_switch
    k.mem.put<uint64_t>(irq_tos, pt_regs - 16);               // movq %rsp, (tos)
    k.mem.put<uint64_t>(irq_tos - 8, f_irq_switch + 0x20);    // call on the hardirq stack
    irq_slot_handler = irq_tos - 32;                          // irq_handler's CFA is SP + 24
    k.mem.put<uint64_t>(irq_slot_handler, f_irq_handler + 0x18);
    if (pcpu_hot) {
      struct btf* b = k.btf();
      const int ul = btf__add_int(b, "unsigned long", 8, 0);
      const int bl = btf__add_int(b, "_Bool", 1, BTF_INT_BOOL);
      btf__add_struct(b, "pcpu_hot", 64);
      btf__add_field(b, "current_task", ul, 0, 0);
      btf__add_field(b, "hardirq_stack_ptr", ul, 0x20 * 8, 0);
      btf__add_field(b, "hardirq_stack_inuse", bl, 0x28 * 8, 0);
      k.add_symbol("pcpu_hot", 0x3400);
      irq_ptr_at = k.percpu("pcpu_hot", 0) + 0x20;
      irq_inuse_at = k.percpu("pcpu_hot", 0) + 0x28;
    } else {
      k.add_symbol("hardirq_stack_ptr", 0x3300);
      k.add_symbol("hardirq_stack_inuse", 0x3308);
      irq_ptr_at = k.percpu("hardirq_stack_ptr", 0);
      irq_inuse_at = k.percpu("hardirq_stack_inuse", 0);
    }
    k.mem.put<uint64_t>(irq_ptr_at, irq_tos);
    k.mem.put<uint8_t>(irq_inuse_at, 1);
  }

  // The CPU is in an NMI handler that came in from kernel mode, as arch/x86/entry/entry_64.S
  // asm_exc_nmi lays out the NMI stack: at its top the frame the CPU pushed (RIP, CS, RFLAGS,
  // RSP, SS), below it the saved RDX, "NMI executing", the "iret" and "outermost" copies of that
  // frame, the last being the tail of the pt_regs the entry code built; then its call to
  // nmi_handler (exc_nmi: the return address into nmi_entry has a REGS hint), which called a
  // function that spins (no return address of its own). By default the NMI interrupted `inner`
  // (the task stack's live frame); set_nmi_interrupted says otherwise. CPU 0's nmi_state says
  // NMI_EXECUTING, its cea_exception_stacks points at kEstacks, whose struct is in BTF as 6.12
  // has it (guard pages, unmapped here; #VC stacks, unmapped too; without `btf`, not there: a
  // kernel without BTF for it). Call before install_orc.
  static constexpr uint64_t kEstacks = 0xfffffe0000013000ULL;  // in the cpu_entry_area
  static constexpr uint64_t kExcStackSize = 8192;
  static constexpr uint64_t kNmiStack = kEstacks + 0x4000;     // after DF's guard, DF, NMI's guard
  static constexpr uint64_t kDbStack = kEstacks + 0x7000;
  void build_nmi_stack(bool btf = true) {
    using E = OrcEntry;
    f_nmi_entry = k.func("nmi_entry");
    f_nmi_handler = k.func("nmi_handler");
    table.push_back({f_nmi_entry, E{0, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kRegs, false}});
    table.push_back({f_nmi_handler, E{24, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}});
    if (btf) add_cea_btf();
    k.add_symbol("cea_exception_stacks", 0x3600);
    k.add_symbol("nmi_state", 0x3608);
    estacks_at = k.percpu("cea_exception_stacks", 0);
    nmi_state_at = k.percpu("nmi_state", 0);
    k.mem.put<uint64_t>(estacks_at, kEstacks);
    k.mem.put<uint32_t>(nmi_state_at, 1);
    k.mem.map(kNmiStack, kExcStackSize);
    const uint64_t top = kNmiStack + kExcStackSize;
    k.mem.put<uint64_t>(top - 56, 1);                  // "NMI executing"
    nmi_regs = top - 264;                              // pt_regs: its ip..ss are the "outermost" copy
    k.mem.put<uint64_t>(nmi_regs + 8 * 15, ~0ULL);     // orig_ax
    k.mem.put<uint64_t>(nmi_regs - 8, f_nmi_entry + 0x10);
    nmi_slot_handler = nmi_regs - 32;                  // nmi_handler's CFA is SP + 24
    k.mem.put<uint64_t>(nmi_slot_handler, f_nmi_handler + 0x18);
    set_nmi_interrupted(f_inner + 0x18, sp_inner);
  }
  // Where the NMI came in: the CPU's frame at the top of the NMI stack and its two copies.
  void set_nmi_interrupted(uint64_t ip, uint64_t sp, uint64_t cs = 0x10) {
    const uint64_t top = kNmiStack + kExcStackSize;
    const uint64_t frame[5] = {ip, cs, 0x46, sp, 0x18};
    for (uint64_t at : {top - 40, top - 96, nmi_regs + 8 * 16}) k.mem.write(at, frame, sizeof frame);
  }
  // The NMI came in while db_handler (exc_debug, called by the #DB entry code db_entry, a REGS
  // hint) ran on the #DB stack, the #DB having come in while `inner` ran: on the #DB stack the
  // CPU's frame is the tail of the pt_regs right below the top. Call before install_orc.
  void build_db_under_nmi() {
    using E = OrcEntry;
    f_db_entry = k.func("db_entry");
    f_db_handler = k.func("db_handler");
    table.push_back({f_db_entry, E{0, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kRegs, false}});
    table.push_back({f_db_handler, E{24, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}});
    k.mem.map(kDbStack, kExcStackSize);
    const uint64_t regs = kDbStack + kExcStackSize - kPtRegsSize;
    const uint64_t frame[5] = {f_inner + 0x18, 0x10, 0x46, sp_inner, 0x18};
    k.mem.write(regs + 8 * 16, frame, sizeof frame);
    k.mem.put<uint64_t>(regs - 8, f_db_entry + 0x10);
    set_nmi_interrupted(f_db_handler + 0x20, regs - 24);  // db_handler's SP (CFA - 24)
  }
  // struct cea_exception_stacks as ESTACKS_MEMBERS(PAGE_SIZE, EXCEPTION_STKSZ) lays it out.
  void add_cea_btf() {
    struct btf* b = k.btf();
    const int ch = btf__add_int(b, "char", 1, BTF_INT_SIGNED);
    const int idx = btf__add_int(b, "__ARRAY_SIZE_TYPE__", 4, 0);
    const int guard = btf__add_array(b, idx, ch, 4096);
    const int stk = btf__add_array(b, idx, ch, static_cast<uint32_t>(kExcStackSize));
    btf__add_struct(b, "cea_exception_stacks", 0x13000);
    uint32_t bits = 0;
    for (const char* n : {"DF", "NMI", "DB", "MCE", "VC", "VC2"}) {
      btf__add_field(b, (std::string(n) + "_stack_guard").c_str(), guard, bits, 0);
      btf__add_field(b, (std::string(n) + "_stack").c_str(), stk, bits + 4096 * 8, 0);
      bits += static_cast<uint32_t>(4096 + kExcStackSize) * 8;
    }
    btf__add_field(b, "IST_top_guard", guard, bits, 0);
  }

  void fill_stack_with(uint64_t value) {
    for (uint64_t a = kStack + 8; a < kStack + kStackSize; a += 8) k.mem.put<uint64_t>(a, value);
  }

  // Writes `table` into guest memory with the __start/__stop_orc_unwind(_ip) symbols.
  void install_orc(bool v61, bool sort = true) {
    if (sort) std::sort(table.begin(), table.end(), [](auto& a, auto& b) { return a.first < b.first; });
    for (size_t i = 0; i < table.size(); ++i) {
      const uint64_t at = kOrc + 4 * i;
      k.mem.put<int32_t>(at, static_cast<int32_t>(static_cast<int64_t>(table[i].first - at)));
      auto e = encode_orc(table[i].second, v61);
      k.mem.write(kOrc + kOrcEntries + 6 * i, e.data(), e.size());
    }
    k.add_symbol("__start_orc_unwind_ip", kOrc);
    k.add_symbol("__stop_orc_unwind_ip", kOrc + 4 * table.size());
    k.add_symbol("__start_orc_unwind", kOrc + kOrcEntries);
    k.add_symbol("__stop_orc_unwind", kOrc + kOrcEntries + 6 * table.size());
  }

  // struct orc_entry in the guest's BTF, as pahole emits it for 6.1 or 6.12.
  void add_orc_entry_btf(bool v61) {
    struct btf* b = k.btf();
    const int s16 = btf__add_int(b, "s16", 2, BTF_INT_SIGNED);
    const int u = btf__add_int(b, "unsigned int", 4, 0);
    btf__add_struct(b, "orc_entry", 6);
    btf__add_field(b, "sp_offset", s16, 0, 0);
    btf__add_field(b, "bp_offset", s16, 16, 0);
    btf__add_field(b, "sp_reg", u, 32, 4);
    btf__add_field(b, "bp_reg", u, 36, 4);
    if (v61) {
      btf__add_field(b, "type", u, 40, 2);
      btf__add_field(b, "end", u, 42, 1);
    } else {
      btf__add_field(b, "type", u, 40, 3);
      btf__add_field(b, "signal", u, 43, 1);
    }
  }

  SyntheticKernel& k;
  uint64_t f_entry = 0, f_outer = 0, f_middle = 0, f_inner = 0, f_stale = 0, f_loop = 0, f_end = 0, f_regs = 0;
  std::vector<std::pair<uint64_t, OrcEntry>> table;
  uint64_t task = 0, stack = kStack;
  uint64_t slot_entry = 0, slot_outer = 0, slot_middle = 0, sp_inner = 0, pt_regs = 0, stale_slot = 0;
  uint64_t f_irq_entry = 0, f_irq_switch = 0, f_irq_handler = 0;
  uint64_t irq_tos = 0, irq_slot_handler = 0, irq_ptr_at = 0, irq_inuse_at = 0;
  uint64_t f_nmi_entry = 0, f_nmi_handler = 0, f_db_entry = 0, f_db_handler = 0;
  uint64_t estacks_at = 0, nmi_state_at = 0, nmi_regs = 0, nmi_slot_handler = 0;
};

}  // namespace stallmon::introspect::testing
