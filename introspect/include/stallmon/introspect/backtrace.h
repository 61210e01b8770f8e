// SPDX-License-Identifier: Apache-2.0
// Live kernel backtraces of guest tasks from guest memory alone: no debuginfo, no pause, no
// registers. The task's kernel stack is read, candidate return addresses (kernel text) are
// verified with the kernel's own ORC unwind tables (read from guest memory, found through
// kallsyms), and saved interrupt frames (pt_regs) give the interrupted RIP of a CPU that takes
// interrupts. A CPU that is on its hardirq stack (serving an interrupt or a softirq) has that
// stack read too, the chain continuing onto the task stack; one in an NMI handler (from kernel
// mode) has its NMI stack read, the chain continuing through the NMI's saved registers onto the
// stack it interrupted. Limits (see introspect/README.md,
// "Backtraces"): the stack is read while the CPU runs, so the innermost live function is only
// seen when an interrupt frame is on the stack, and frames below the live one are stale.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/introspect/memory_budget.h"
#include "stallmon/introspect/snapshot_access.h"

namespace stallmon::introspect {

// arch/x86/include/asm/orc_types.h. ORC_REG_* are the same in every version.
enum OrcReg : uint8_t {
  kOrcRegUndefined = 0,
  kOrcRegPrevSp = 1,
  kOrcRegDx = 2,
  kOrcRegDi = 3,
  kOrcRegBp = 4,
  kOrcRegSp = 5,
  kOrcRegR10 = 6,
  kOrcRegR13 = 7,
  kOrcRegBpIndirect = 8,
  kOrcRegSpIndirect = 9,
};

// Frame kinds normalised across the ORC format versions.
enum class OrcType : uint8_t { kUndefined, kEndOfStack, kCall, kRegs, kRegsPartial };
const char* to_string(OrcType t);

struct OrcEntry {
  int16_t sp_offset = 0;
  int16_t bp_offset = 0;
  uint8_t sp_reg = kOrcRegUndefined;
  uint8_t bp_reg = kOrcRegUndefined;
  OrcType type = OrcType::kUndefined;
  bool signal = false;
};

// Where the bitfields of the 6-byte struct orc_entry sit (bit positions in its third u16).
// Two formats: before 6.4 `type:2` (CALL 0, REGS 1, REGS_PARTIAL 2) followed by `end:1` (6.1;
// 6.3 added `signal:1` before `end`); since 6.4 `type:3` (UNDEFINED 0, END_OF_STACK 1, CALL 2,
// REGS 3, REGS_PARTIAL 4) and `signal:1`, no `end`.
struct OrcFormat {
  uint32_t entry_size = 6;
  uint32_t sp_offset_at = 0, bp_offset_at = 2;  // byte offsets of the s16s
  uint32_t bits_at = 4;                         // byte offset of the bitfield word
  uint8_t sp_reg_shift = 0, bp_reg_shift = 4, type_shift = 8, type_bits = 3;
  std::optional<uint8_t> signal_shift = 11;
  std::optional<uint8_t> end_shift;  // present: the pre-6.4 format
  static OrcFormat v64();            // 6.4+: type:3 signal:1
  static OrcFormat v61();            // 6.1: type:2 end:1
  // From the guest's BTF (struct orc_entry), when it has the type; nullopt otherwise.
  static std::optional<OrcFormat> from_btf(const KernelAccess& k);
  OrcEntry decode(const uint8_t* p) const;
};

struct OrcLimits {
  // The real 6.1/6.12 vmlinux tables hold a few hundred thousand entries; a guest-controlled
  // __stop_orc_unwind_ip past this is refused with kLimit.
  uint64_t max_entries = 2'000'000;
  std::shared_ptr<MemoryBudget> budget;  // charged "ORC tables" for the table's lifetime
};

// An ORC table: vmlinux's (__start_orc_unwind_ip.. and __start_orc_unwind..), or a module's
// (ModuleTable, modules.h: the same entries, read from mod->arch).
class OrcTable {
 public:
  // Reads and decodes both tables (entries charged to limits.budget before allocation).
  // The format: OrcFormat::from_btf, else the one whose CALL type is the majority (CALL frames
  // dominate every real table: type value 0 before 6.4, 2 since).
  static Result<OrcTable> read(KernelAccess& k, const OrcLimits& limits = {});
  // From decoded parts (tests, fuzzing): ips must be sorted for lookups to be exact.
  OrcTable(std::vector<uint64_t> ips, std::vector<OrcEntry> entries);
  OrcTable() = default;

  // The entry covering `ip`: the last one whose ip is <= `ip`; nullopt below the first.
  std::optional<OrcEntry> find(uint64_t ip) const;
  size_t size() const { return ips_.size(); }
  uint64_t first_ip() const { return ips_.empty() ? 0 : ips_.front(); }
  uint64_t last_ip() const { return ips_.empty() ? 0 : ips_.back(); }
  const OrcFormat& format() const { return format_; }

 private:
  std::vector<uint64_t> ips_;
  std::vector<OrcEntry> entries_;
  OrcFormat format_;
  MemoryCharge charge_;
};

enum class Verification : uint8_t {
  kOrcChain,          // reached from a consistent ORC chain of at least 2 frames
  kPtRegs,            // the interrupted RIP of a saved kernel interrupt frame on the stack
  kScannedUnverified, // a kernel text address found on the stack, not confirmed by ORC
  // A frame only (never a whole trace): the thread function of a kthread whose innermost
  // verified frame is kthread() itself, read from its struct kthread. The CPU runs in that
  // function or in a callee that left no return address (inlined, tail-called, not returned
  // yet from a function that calls nothing): the function could be deeper.
  kInferredThreadfn,
};
const char* to_string(Verification v);

// The stack a frame runs on: the task's, the CPU's hardirq stack, or one of its x86_64 exception
// (IST) stacks in the cpu_entry_area (#DF, NMI, #DB, #MC, #VC, #VC2).
enum class StackKind : uint8_t { kTask, kIrq, kDf, kNmi, kDb, kMce, kVc, kVc2 };
// "task", "irq", "df", "nmi", "db", "mc", "vc", "vc2" (JSON).
const char* to_string(StackKind k);
// As the kernel's own dumps name it: "task", "hardirq", "#DF", "NMI", "#DB", "#MC", "#VC", "#VC2".
const char* stack_name(StackKind k);

struct Frame {
  uint64_t address = 0;       // return address (or interrupted RIP)
  uint64_t stack_slot = 0;    // where on the stack it was found (0: from pt_regs.ip)
  std::string symbol;         // empty when unknown
  uint64_t offset = 0, size = 0;
  std::string module;         // empty: vmlinux
  Verification verification = Verification::kScannedUnverified;
  StackKind stack = StackKind::kTask;  // where the function's frame is (its SP's stack)
  bool interrupted = false;  // address is the RIP of a saved interrupt frame, not a return address
  // "function+0xoff/0xlen [module]" (or the hex address when unknown); an inferred kthread
  // thread function ends in " (kthread threadfn, inferred)", a frame on the hardirq stack in
  // " (irq stack)", one on an exception stack in " (NMI stack)" (" (#DB stack)", ...).
  std::string format() const;
};

struct Backtrace {
  uint64_t task = 0;
  uint64_t stack_base = 0, stack_size = 0;
  std::vector<Frame> frames;  // innermost first
  // How the trace was found: from an interrupt frame (pt_regs, then its ORC chain), from the
  // innermost return address that starts an ORC chain, or neither (every text address listed).
  Verification verification = Verification::kScannedUnverified;
  std::optional<uint64_t> pt_regs;  // address of the interrupt frame the trace starts from
  // The base of the CPU's hardirq stack when the trace starts on it (backtrace_cpu_task).
  std::optional<uint64_t> irq_stack;
  // The base of the exception stack the trace starts on (its kind: frames[0].stack).
  std::optional<uint64_t> exception_stack;
  bool truncated = false;           // max_frames hit
  std::vector<std::string> notes;   // why a chain stopped, what was skipped
};

struct BacktraceOptions {
  uint32_t max_frames = 64;
  uint64_t thread_size = 16384;  // THREAD_SIZE on x86_64 (KASAN doubles it: set it then)
  OrcLimits orc;
  bool modules = true;   // read loaded modules (symbols, text, ORC); budget: orc.budget
  uint32_t max_modules = 1024;
};

class ModuleTable;
struct ModuleLayout;

// STACK_END_MAGIC (include/uapi/linux/magic.h), written at task->stack (end_of_stack) by
// set_task_stack_end_magic; a deep overflow overwrites it.
inline constexpr uint64_t kStackEndMagic = 0x57AC6E9D;

// Where the kthread thread-function inference reads: task_struct.flags, the struct kthread
// pointer (worker_private, before 5.17 set_child_tid) and kthread.threadfn. nullopt when a member
// is absent or implausible (the inference is then off).
struct KthreadLayout {
  uint64_t task_flags = 0, task_kthread = 0, threadfn = 0;
  static std::optional<KthreadLayout> resolve(const KernelAccess& k);
};

// The per-CPU hardirq stack of x86_64 (arch/x86/kernel/irq_64.c): the per-cpu offsets of its
// pointer (map_irq_stack stores the top of the stack - 8 there) and of the flag that says the
// CPU is on it (set around call_on_irqstack, hardirqs and softirqs alike). By feature: the
// per-cpu variables hardirq_stack_ptr and hardirq_stack_inuse (5.12 - 6.1, again 6.15+), else
// the members of per-cpu struct pcpu_hot (6.2 - 6.14). nullopt without either (then a CPU's
// trace is its task stack's only).
struct IrqStackLayout {
  uint64_t stack_ptr = 0;  // per-cpu offset of the pointer
  uint64_t inuse = 0;      // per-cpu offset of the bool
  static std::optional<IrqStackLayout> resolve(const KernelAccess& k);
};

// The x86_64 per-CPU exception stacks (arch/x86/include/asm/cpu_entry_area.h): the per-cpu
// pointer `cea_exception_stacks` to the CPU's struct cea_exception_stacks in the cpu_entry_area,
// whose members <X>_stack give each stack's offset and size (a guard page <X>_stack_guard below
// each). By feature: kNotFound without the pointer or the type (before 5.2 the stacks were a
// per-cpu array, not read), kCorrupt for a layout no kernel has.
struct ExceptionStackLayout {
  struct Stack {
    StackKind kind = StackKind::kNmi;
    uint64_t offset = 0, size = 0;  // in struct cea_exception_stacks: page aligned, whole pages
  };
  uint64_t stacks_ptr = 0;   // per-cpu offset of the pointer
  uint64_t struct_size = 0;  // sizeof(struct cea_exception_stacks)
  std::vector<Stack> stacks; // those the type has (the NMI's always), in its order
  const Stack* find(StackKind k) const;
  static Result<ExceptionStackLayout> resolve(const KernelAccess& k);
};

// One stack's bytes as read from the guest: `bytes` from `base`. `kind` names an exception
// stack (backtrace_stacks' `exceptions`); the task and hardirq stacks are named by position.
struct StackBytes {
  uint64_t base = 0;
  std::vector<uint8_t> bytes;
  StackKind kind = StackKind::kTask;
};

class BacktraceReader {
 public:
  // Resolves task_struct.stack, kernel text bounds (_stext.._etext) and reads the ORC tables
  // (kNotFound without __start_orc_unwind_ip: a kernel built without CONFIG_UNWINDER_ORC).
  // `k` must outlive the reader.
  static Result<std::unique_ptr<BacktraceReader>> create(KernelAccess& k, BacktraceOptions options = {});
  ~BacktraceReader();

  // The backtrace of `task` (a task_struct address): reads its stack (thread_size bytes).
  // First re-reads the module table if the `modules` list head changed since it was read (a
  // 16-byte read; a load adds at the head, an unload of the first or last module changes it).
  // A kthread whose innermost verified frame is kthread() gets its thread function as an
  // inferred innermost frame (Verification::kInferredThreadfn).
  Result<Backtrace> backtrace_task(uint64_t task);
  // The backtrace of `task`, current on the CPU whose per-cpu offset is `per_cpu_offset`: as
  // backtrace_task, and when the CPU's hardirq_stack_inuse is set, its hardirq stack is read
  // too (thread_size bytes: IRQ_STACK_SIZE is THREAD_SIZE on x86_64) and the trace starts there
  // if a verified chain does, continuing onto the task stack; otherwise as backtrace_task, noted.
  // When the CPU's nmi_state (arch/x86/kernel/nmi.c, set by exc_nmi while it runs) says it is
  // in an NMI handler that came from kernel mode, its NMI stack is read as well (and the
  // exception stack that NMI interrupted, when the NMI's saved frame names one), and the trace
  // starts there if a verified chain does.
  Result<Backtrace> backtrace_cpu_task(uint64_t task, uint64_t per_cpu_offset);
  // Same on stack bytes already read (tests, fuzzing): `stack` holds thread_size bytes from `base`.
  Backtrace backtrace_stack(uint64_t task, uint64_t base, const std::vector<uint8_t>& stack) const;
  // With the exception stacks the CPU is on (`exceptions`, innermost first, each with its kind)
  // and the hardirq stack (`irq`, null: none), then the task's: a chain only moves outward.
  Backtrace backtrace_stacks(uint64_t task, const StackBytes& task_stack, const StackBytes* irq,
                             std::span<const StackBytes> exceptions = {}) const;
  const std::optional<IrqStackLayout>& irq_stack_layout() const { return irq_; }
  const std::optional<ExceptionStackLayout>& exception_stack_layout() const { return exc_; }
  // Why the exception stacks are not read: no nmi_state, no cea_exception_stacks or no BTF type
  // (ExceptionStackLayout::resolve's error); empty when they are.
  const std::string& exception_stacks_error() const { return exc_error_; }

  const OrcTable& orc() const { return orc_; }
  // Loaded modules as last read (empty before the first backtrace_task, or without modules).
  const ModuleTable& modules() const { return *modules_; }
  // Why modules are not available (kernel without `modules`/BTF, a read that failed); empty if they are.
  const std::string& modules_error() const { return modules_error_; }
  // Re-reads the module table when the list head changed (or was never read). Returns whether it did.
  bool refresh_modules();
  // Core kernel text, init text (the boot CPU's idle task returns into start_kernel there), and
  // the core text of the loaded modules.
  bool in_text(uint64_t ip) const {
    return (ip >= text_start_ && ip < text_end_) || (ip >= init_start_ && ip < init_end_) ||
           (ip >= modules_lo_ && ip < modules_hi_ && in_module_text(ip));
  }
  // The ORC entry for `ip`: vmlinux's table for core text, the module's for module text.
  std::optional<OrcEntry> orc_find(uint64_t ip) const;

 private:
  BacktraceReader(KernelAccess& k, BacktraceOptions o);
  Frame make_frame(uint64_t address, uint64_t slot, Verification v) const;
  Result<StackBytes> read_task_stack(uint64_t task, MemoryCharge& charge);
  // The CPU's hardirq stack if it is on it; nullopt (and why in `note`, if not simply idle) otherwise.
  std::optional<StackBytes> read_irq_stack(uint64_t per_cpu_offset, MemoryCharge& charge, std::string& note);
  // The CPU's NMI stack if it is in an NMI handler on it, and the exception stack the NMI came in
  // on (if any), innermost first; empty (and why in `note`, if not simply outside an NMI) otherwise.
  std::vector<StackBytes> read_exception_stacks(uint64_t per_cpu_offset, std::vector<MemoryCharge>& charges,
                                                std::string& note);
  // One exception stack of the CPU whose struct cea_exception_stacks is at `estacks`.
  Result<StackBytes> read_exception_stack(uint64_t estacks, const ExceptionStackLayout::Stack& s,
                                          std::vector<MemoryCharge>& charges);
  void finish(Backtrace& bt);
  bool in_module_text(uint64_t ip) const;
  void infer_threadfn(Backtrace& bt);
  KernelAccess& k_;
  BacktraceOptions opt_;
  OrcTable orc_;
  uint64_t stack_member_ = 0;
  uint64_t text_start_ = 0, text_end_ = 0, init_start_ = 0, init_end_ = 0;
  std::unique_ptr<ModuleTable> modules_;
  // The span of all module text: the scans test every stack word, most of which fail this inline.
  uint64_t modules_lo_ = 0, modules_hi_ = 0;
  std::unique_ptr<ModuleLayout> module_layout_;
  std::string modules_error_;
  uint64_t modules_head_[2] = {0, 0};
  bool modules_read_ = false;
  std::optional<KthreadLayout> kthread_;  // resolved at create
  std::optional<IrqStackLayout> irq_;     // resolved at create
  std::optional<ExceptionStackLayout> exc_;  // resolved at create
  std::string exc_error_;
  std::optional<uint64_t> nmi_state_;     // per-cpu offset of nmi_state (arch/x86/kernel/nmi.c)
};

}  // namespace stallmon::introspect
