// SPDX-License-Identifier: Apache-2.0
// Backtraces from a guest task's kernel stack, verified with the guest's ORC tables.
//
// The unwind step follows arch/x86/kernel/unwind_orc.c (unwind_next_frame): the ORC entry of
// the current ip (ip - 1 for a return address, which may sit right after the last instruction
// of a function ending in a call) gives the previous frame's SP (the CFA) from SP or BP, and
// the frame type says what sits there: CALL, a return address at CFA - 8; REGS, a full
// struct pt_regs at the CFA; REGS_PARTIAL, an iret frame at the CFA. The task's own stack is
// read, the CPU's hardirq stack when the CPU is on it, and its NMI stack when it is in an NMI
// handler (backtrace_cpu_task): a chain may leave an exception stack for the hardirq or task
// stack, and the hardirq stack for the task stack, never the other way (see StackView).
#include "stallmon/introspect/backtrace.h"

#include <algorithm>
#include <cstring>

#include "stallmon/introspect/modules.h"

namespace stallmon::introspect {

namespace {

constexpr uint64_t kKernelCs = 0x10;      // __KERNEL_CS
constexpr uint64_t kKernelDs = 0x18;      // __KERNEL_DS (ss of a kernel interrupt frame, or 0)
constexpr uint64_t kPtRegsWords = 21;     // struct pt_regs on x86_64 (r15 .. ss)
constexpr uint64_t kRegsBp = 4, kRegsIp = 16, kRegsCs = 17, kRegsFlags = 18, kRegsSp = 19, kRegsSs = 20;
constexpr uint64_t kReadChunk = 64 << 10;
constexpr uint64_t kPage = 4096;
// The cpu_entry_area: one P4D from CPU_ENTRY_AREA_BASE (arch/x86/include/asm/pgtable_64_types.h,
// CPU_ENTRY_AREA_PGD -4 << P4D_SHIFT 39) in 4- and 5-level paging alike
// (Documentation/arch/x86/x86_64/mm.rst: "cpu_entry_area mapping", 0.5 TB). Every CPU's
// exception stacks lie in it, page aligned (cea_map_stack maps them page by page).
constexpr uint64_t kCeaBase = 0xfffffe0000000000ULL, kCeaEnd = kCeaBase + (1ULL << 39);
// An exception stack is EXCEPTION_STKSZ (8 KiB; 16 KiB with KASAN) in every kernel that has
// struct cea_exception_stacks; a member much larger is no kernel's.
constexpr uint64_t kMaxExceptionStack = 64 << 10;

std::string hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

// A read-only view of the stacks read, innermost first (exception stacks, the hardirq stack,
// then the task's): every word read is bounds-checked. The order is the only direction a chain
// may take between them, as arch/x86/kernel/dumpstack_64.c get_stack_info allows it: an
// interrupt switches from the task stack to the hardirq stack (call_on_irqstack,
// arch/x86/include/asm/irq_stack.h), so unwinding leaves the hardirq stack for the task's
// through the previous stack pointer saved at the top of the hardirq stack, never the other
// way; an NMI (#DB, #MC) switches to its IST stack from whatever stack the CPU was on, so
// unwinding leaves it through the pt_regs its entry code saved there, for an outer stack (an
// exception stack it interrupted, as the NMI's saved frame says, then hardirq, then task).
struct StackRegion {
  uint64_t base = 0;
  const std::vector<uint8_t>* bytes = nullptr;
  StackKind kind = StackKind::kTask;
};
struct StackView {
  std::vector<StackRegion> regions;
  // The region holding [a, a + len), -1 when none. len 0: a stack pointer, which may equal the
  // top of its stack (nothing left on it).
  int region_of(uint64_t a, uint64_t len = 8) const {
    for (size_t i = 0; i < regions.size(); ++i) {
      const StackRegion& r = regions[i];
      if (a >= r.base && len <= r.bytes->size() && a - r.base <= r.bytes->size() - len) return static_cast<int>(i);
    }
    return -1;
  }
  bool inside(uint64_t a, uint64_t len = 8) const { return region_of(a, len) >= 0; }
  std::optional<uint64_t> word(uint64_t a) const {
    const int i = region_of(a);
    if (i < 0) return std::nullopt;
    uint64_t v;
    std::memcpy(&v, regions[i].bytes->data() + (a - regions[i].base), 8);
    return v;
  }
  // The top of the task stack (the last region): where registers saved on entry from user mode sit.
  uint64_t task_top() const { return regions.back().base + regions.back().bytes->size(); }
};

struct UnwindState {
  uint64_t ip = 0, sp = 0, bp = 0;
  bool bp_known = false;
  bool signal = false;  // ip is an interrupted RIP, not a return address
  uint64_t slot = 0;    // where ip was read (0 for pt_regs)
  int region = 0;       // StackView region of sp
};

enum class Step { kNext, kEnd, kFail };

}  // namespace

const char* to_string(OrcType t) {
  switch (t) {
    case OrcType::kUndefined: return "undefined";
    case OrcType::kEndOfStack: return "end_of_stack";
    case OrcType::kCall: return "call";
    case OrcType::kRegs: return "regs";
    case OrcType::kRegsPartial: return "regs_partial";
  }
  return "?";
}

namespace {
struct StackNames {
  StackKind kind;
  const char* id;    // JSON
  const char* name;  // arch/x86/kernel/dumpstack_64.c stack_type_name / exception_stack_names
};
constexpr StackNames kStackNames[] = {
    {StackKind::kTask, "task", "task"}, {StackKind::kIrq, "irq", "hardirq"}, {StackKind::kDf, "df", "#DF"},
    {StackKind::kNmi, "nmi", "NMI"},    {StackKind::kDb, "db", "#DB"},       {StackKind::kMce, "mc", "#MC"},
    {StackKind::kVc, "vc", "#VC"},      {StackKind::kVc2, "vc2", "#VC2"},
};
const StackNames& names_of(StackKind k) {
  for (const StackNames& n : kStackNames)
    if (n.kind == k) return n;
  return kStackNames[0];
}
}  // namespace

const char* to_string(StackKind k) { return names_of(k).id; }
const char* stack_name(StackKind k) { return names_of(k).name; }

const char* to_string(Verification v) {
  switch (v) {
    case Verification::kOrcChain: return "orc_chain";
    case Verification::kPtRegs: return "pt_regs";
    case Verification::kScannedUnverified: return "scanned_unverified";
    case Verification::kInferredThreadfn: return "inferred_threadfn";
  }
  return "?";
}

std::string Frame::format() const {
  std::string s = symbol.empty() ? hex(address) : symbol + "+" + hex(offset) + (size ? "/" + hex(size) : "");
  if (!module.empty()) s += " [" + module + "]";
  if (verification == Verification::kInferredThreadfn) s += " (kthread threadfn, inferred)";
  if (stack == StackKind::kIrq) s += " (irq stack)";
  else if (stack != StackKind::kTask) s += std::string(" (") + stack_name(stack) + " stack)";
  return s;
}

// ---------------------------------------------------------------------------------------------
// ORC format and table

OrcFormat OrcFormat::v64() { return OrcFormat{}; }

OrcFormat OrcFormat::v61() {
  OrcFormat f;
  f.type_bits = 2;
  f.signal_shift.reset();
  f.end_shift = 10;
  return f;
}

std::optional<OrcFormat> OrcFormat::from_btf(const KernelAccess& k) {
  auto size = k.type_size("orc_entry");
  auto sp_off = k.member("orc_entry", "sp_offset");
  auto bp_off = k.member("orc_entry", "bp_offset");
  auto sp_reg = k.member("orc_entry", "sp_reg");
  auto bp_reg = k.member("orc_entry", "bp_reg");
  auto type = k.member("orc_entry", "type");
  if (!size || !sp_off || !bp_off || !sp_reg || !bp_reg || !type) return std::nullopt;
  if (*size < 6 || *size > 16 || sp_off->size != 2 || bp_off->size != 2 || sp_off->offset() + 2 > *size ||
      bp_off->offset() + 2 > *size)
    return std::nullopt;
  OrcFormat f;
  f.entry_size = static_cast<uint32_t>(*size);
  f.sp_offset_at = static_cast<uint32_t>(sp_off->offset());
  f.bp_offset_at = static_cast<uint32_t>(bp_off->offset());
  // The bitfields share one 16-bit word: the lowest-placed of them says where it starts.
  const uint64_t word_bit = std::min({sp_reg->bit_offset, bp_reg->bit_offset, type->bit_offset}) / 16 * 16;
  if (word_bit / 8 + 2 > *size) return std::nullopt;
  f.bits_at = static_cast<uint32_t>(word_bit / 8);
  auto shift_of = [&](const MemberLayout& m, uint32_t max_bits) -> std::optional<uint8_t> {
    if (!m.is_bitfield() || m.bit_size > max_bits || m.bit_offset < word_bit || m.bit_offset + m.bit_size > word_bit + 16)
      return std::nullopt;
    return static_cast<uint8_t>(m.bit_offset - word_bit);
  };
  auto s1 = shift_of(*sp_reg, 4), s2 = shift_of(*bp_reg, 4), s3 = shift_of(*type, 3);
  if (!s1 || !s2 || !s3) return std::nullopt;
  f.sp_reg_shift = *s1;
  f.bp_reg_shift = *s2;
  f.type_shift = *s3;
  f.type_bits = static_cast<uint8_t>(type->bit_size);
  f.signal_shift.reset();
  if (auto m = k.member("orc_entry", "signal")) f.signal_shift = shift_of(*m, 1);
  if (auto m = k.member("orc_entry", "end")) {
    f.end_shift = shift_of(*m, 1);
    if (!f.end_shift) return std::nullopt;
  }
  return f;
}

OrcEntry OrcFormat::decode(const uint8_t* p) const {
  OrcEntry e;
  std::memcpy(&e.sp_offset, p + sp_offset_at, 2);
  std::memcpy(&e.bp_offset, p + bp_offset_at, 2);
  uint16_t bits;
  std::memcpy(&bits, p + bits_at, 2);
  e.sp_reg = (bits >> sp_reg_shift) & 0xf;
  e.bp_reg = (bits >> bp_reg_shift) & 0xf;
  const uint32_t type = (bits >> type_shift) & ((1u << type_bits) - 1);
  if (signal_shift) e.signal = (bits >> *signal_shift) & 1;
  if (end_shift) {
    // Before 6.4: CALL 0, REGS 1, REGS_PARTIAL 2 (REGS and REGS_PARTIAL imply signal), and an
    // `end` bit for the outermost frame; an undefined sp_reg meant "no unwind info".
    static constexpr OrcType kOld[4] = {OrcType::kCall, OrcType::kRegs, OrcType::kRegsPartial, OrcType::kUndefined};
    e.type = kOld[type & 3];
    if (e.type != OrcType::kCall) e.signal = true;
    if ((bits >> *end_shift) & 1) e.type = OrcType::kEndOfStack;
    else if (e.sp_reg == kOrcRegUndefined) e.type = OrcType::kUndefined;
  } else {
    static constexpr OrcType kNew[8] = {OrcType::kUndefined, OrcType::kEndOfStack, OrcType::kCall,
                                        OrcType::kRegs,      OrcType::kRegsPartial, OrcType::kUndefined,
                                        OrcType::kUndefined, OrcType::kUndefined};
    e.type = kNew[type & 7];
  }
  return e;
}

OrcTable::OrcTable(std::vector<uint64_t> ips, std::vector<OrcEntry> entries)
    : ips_(std::move(ips)), entries_(std::move(entries)) {
  if (entries_.size() < ips_.size()) ips_.resize(entries_.size());
  entries_.resize(ips_.size());
}

std::optional<OrcEntry> OrcTable::find(uint64_t ip) const {
  auto it = std::upper_bound(ips_.begin(), ips_.end(), ip);
  if (it == ips_.begin()) return std::nullopt;
  return entries_[static_cast<size_t>(it - ips_.begin() - 1)];
}

Result<OrcTable> OrcTable::read(KernelAccess& k, const OrcLimits& limits) {
  auto ctx = [](Error e) { return std::move(e).context("ORC tables"); };
  auto start_ip = k.symbol("__start_orc_unwind_ip");
  if (!start_ip) return ctx(std::move(start_ip).error());
  auto stop_ip = k.symbol("__stop_orc_unwind_ip");
  if (!stop_ip) return ctx(std::move(stop_ip).error());
  auto start = k.symbol("__start_orc_unwind");
  if (!start) return ctx(std::move(start).error());
  if (*stop_ip <= *start_ip || (*stop_ip - *start_ip) % 4 != 0)
    return Error(ErrorCode::kCorrupt, "ORC tables: __start_orc_unwind_ip " + hex(*start_ip) +
                                          " .. __stop_orc_unwind_ip " + hex(*stop_ip) + " is not a table of s32");
  const uint64_t count = (*stop_ip - *start_ip) / 4;
  if (count > limits.max_entries)
    return Error(ErrorCode::kLimit, "ORC tables: " + std::to_string(count) + " entries (__stop_orc_unwind_ip - "
                                    "__start_orc_unwind_ip) exceed the limit of " +
                                    std::to_string(limits.max_entries));

  std::optional<OrcFormat> btf_format = OrcFormat::from_btf(k);
  const uint32_t esize = btf_format ? btf_format->entry_size : 6;
  if (auto stop = k.symbol("__stop_orc_unwind"); stop && *stop - *start != count * esize)
    return Error(ErrorCode::kCorrupt, "ORC tables: __stop_orc_unwind - __start_orc_unwind is " +
                                          std::to_string(*stop - *start) + " bytes, not " + std::to_string(count) +
                                          " entries of " + std::to_string(esize));

  // The raw tables while decoding, then the decoded ones for the table's lifetime.
  const uint64_t raw = count * (4 + esize);
  const uint64_t decoded = count * (sizeof(uint64_t) + sizeof(OrcEntry));
  STALLMON_TRY(MemoryCharge raw_charge, MemoryCharge::take(limits.budget, "ORC tables (raw)", raw));
  STALLMON_TRY(MemoryCharge charge, MemoryCharge::take(limits.budget, "ORC tables", decoded));
  std::vector<uint8_t> ipb(count * 4), eb(count * esize);
  auto read_all = [&](uint64_t va, std::vector<uint8_t>& out, const char* what) -> Result<void> {
    for (uint64_t pos = 0; pos < out.size(); pos += kReadChunk) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kReadChunk, out.size() - pos));
      auto r = k.read(va + pos, out.data() + pos, n);
      if (!r) return std::move(r).error().context(std::string("ORC tables: reading ") + what);
    }
    return Ok();
  };
  STALLMON_TRY_VOID(read_all(*start_ip, ipb, "__start_orc_unwind_ip"));
  STALLMON_TRY_VOID(read_all(*start, eb, "__start_orc_unwind"));

  OrcFormat format;
  if (btf_format) {
    format = *btf_format;
  } else {
    // No struct orc_entry in BTF: CALL frames are the majority of every real table; the 3 bits
    // above the registers read 0 for them before 6.4 (type:2 = 0, end = 0) and 2 since.
    uint64_t zero = 0, two = 0;
    for (uint64_t i = 0; i < count; ++i) {
      const uint32_t t = (static_cast<uint32_t>(eb[i * 6 + 5]) & 0x7);
      zero += t == 0;
      two += t == 2;
    }
    format = zero > two ? OrcFormat::v61() : OrcFormat::v64();
  }

  OrcTable t;
  t.ips_.resize(count);
  t.entries_.resize(count);
  for (uint64_t i = 0; i < count; ++i) {
    int32_t rel;
    std::memcpy(&rel, ipb.data() + i * 4, 4);
    t.ips_[i] = *start_ip + i * 4 + static_cast<uint64_t>(static_cast<int64_t>(rel));
    t.entries_[i] = format.decode(eb.data() + i * esize);
  }
  // vmlinux tables are sorted at build time (scripts/sorttable); a table that is not cannot be
  // searched, and a guest that unsorts it gets no verified traces rather than wrong ones.
  if (!std::is_sorted(t.ips_.begin(), t.ips_.end()))
    return Error(ErrorCode::kCorrupt, "ORC tables: __start_orc_unwind_ip is not sorted");
  t.format_ = format;
  t.charge_ = std::move(charge);
  return t;
}

// ---------------------------------------------------------------------------------------------
// Backtraces

BacktraceReader::BacktraceReader(KernelAccess& k, BacktraceOptions o)
    : k_(k), opt_(std::move(o)), modules_(std::make_unique<ModuleTable>()) {}

BacktraceReader::~BacktraceReader() = default;

std::optional<KthreadLayout> KthreadLayout::resolve(const KernelAccess& k) {
  auto flags = k.member("task_struct", "flags");
  auto kt = k.member("task_struct", "worker_private");
  if (!kt) kt = k.member("task_struct", "set_child_tid");
  auto fn = k.member("kthread", "threadfn");
  if (!flags || flags->size != 4 || !kt || kt->size != 8 || !fn || fn->size != 8) return std::nullopt;
  return KthreadLayout{flags->offset(), kt->offset(), fn->offset()};
}

std::optional<IrqStackLayout> IrqStackLayout::resolve(const KernelAccess& k) {
  // 6.2 - 6.14: both in per-cpu struct pcpu_hot (arch/x86/include/asm/current.h). Asked first
  // (no kernel has both forms) so that a type profile records the members (type_queries.cc).
  auto mp = k.member("pcpu_hot", "hardirq_stack_ptr");
  auto mi = k.member("pcpu_hot", "hardirq_stack_inuse");
  auto hot = k.symbol("pcpu_hot");
  if (hot && mp && mi && mp->size == 8 && mi->size == 1 && !mi->is_bitfield())
    return IrqStackLayout{*hot + mp->offset(), *hot + mi->offset()};
  // The per-cpu variables (5.12 - 6.1: DECLARE_PER_CPU in arch/x86/include/asm/irq_stack.h and
  // processor.h; 6.15+ back as cache-hot per-cpu variables).
  auto ptr = k.symbol("hardirq_stack_ptr");
  auto inuse = k.symbol("hardirq_stack_inuse");
  if (ptr && inuse) return IrqStackLayout{*ptr, *inuse};
  // Before 5.12 the flag was irq_count (-1: off the stack): not read, the task stack only.
  return std::nullopt;
}

const ExceptionStackLayout::Stack* ExceptionStackLayout::find(StackKind k) const {
  for (const Stack& s : stacks)
    if (s.kind == k) return &s;
  return nullptr;
}

Result<ExceptionStackLayout> ExceptionStackLayout::resolve(const KernelAccess& k) {
  auto ptr = k.symbol("cea_exception_stacks");
  if (!ptr) return std::move(ptr).error().context("exception stacks");
  auto size = k.type_size("cea_exception_stacks");
  if (!size) return std::move(size).error().context("exception stacks");
  if (*size == 0 || *size % kPage != 0)
    return Error(ErrorCode::kCorrupt, "exception stacks: struct cea_exception_stacks is " + std::to_string(*size) +
                                          " bytes, not whole pages");
  ExceptionStackLayout L;
  L.stacks_ptr = *ptr;
  L.struct_size = *size;
  // ESTACKS_MEMBERS (arch/x86/include/asm/cpu_entry_area.h): each stack with the guard page
  // below it; #VC and #VC2 since 5.10 (SEV-ES; mapped only in such guests), none before that.
  static constexpr struct {
    const char* stack;
    const char* guard;
    StackKind kind;
  } kMembers[] = {{"DF_stack", "DF_stack_guard", StackKind::kDf},    {"NMI_stack", "NMI_stack_guard", StackKind::kNmi},
                  {"DB_stack", "DB_stack_guard", StackKind::kDb},    {"MCE_stack", "MCE_stack_guard", StackKind::kMce},
                  {"VC_stack", "VC_stack_guard", StackKind::kVc},    {"VC2_stack", "VC2_stack_guard", StackKind::kVc2}};
  for (const auto& m : kMembers) {
    auto st = k.member("cea_exception_stacks", m.stack);
    if (!st) {
      if (st.error().code == ErrorCode::kNotFound) continue;
      return std::move(st).error().context("exception stacks");
    }
    if (st->size == 0) continue;  // an optional stack configured out
    const std::string what = std::string("exception stacks: cea_exception_stacks.") + m.stack;
    if (st->kind != MemberLayout::Kind::kArray || st->offset() % kPage != 0 || st->size % kPage != 0 ||
        st->size > kMaxExceptionStack)
      return Error(ErrorCode::kCorrupt, what + " (offset " + std::to_string(st->offset()) + ", " +
                                            std::to_string(st->size) + " bytes) is not page-aligned pages of at most " +
                                            std::to_string(kMaxExceptionStack));
    // The guard page, when the type names one, ends where the stack begins (the layout the
    // overflow checks of dumpstack_64.c rely on); anything else is a type no kernel has.
    if (auto g = k.member("cea_exception_stacks", m.guard); g && g->offset() + g->size != st->offset())
      return Error(ErrorCode::kCorrupt, what + " does not start where " + m.guard + " ends");
    L.stacks.push_back(Stack{m.kind, st->offset(), st->size});
  }
  if (!L.find(StackKind::kNmi))
    return Error(ErrorCode::kNotFound, "exception stacks: no NMI_stack in struct cea_exception_stacks");
  return L;
}

Result<std::unique_ptr<BacktraceReader>> BacktraceReader::create(KernelAccess& k, BacktraceOptions options) {
  if (options.thread_size < 4096 || options.thread_size > (1u << 20) || options.thread_size % 8 != 0)
    return Error(ErrorCode::kInvalidArgument, "backtrace: thread_size " + std::to_string(options.thread_size));
  std::unique_ptr<BacktraceReader> r(new BacktraceReader(k, options));
  auto stack = k.member("task_struct", "stack");
  if (!stack) return std::move(stack).error().context("backtrace");
  r->stack_member_ = stack->offset();
  auto s = k.symbol("_stext");
  if (!s) return std::move(s).error().context("backtrace");
  auto e = k.symbol("_etext");
  if (!e) return std::move(e).error().context("backtrace");
  if (*e <= *s) return Error(ErrorCode::kCorrupt, "backtrace: _etext " + hex(*e) + " not above _stext " + hex(*s));
  r->text_start_ = *s;
  r->text_end_ = *e;
  auto is = k.symbol("_sinittext"), ie = k.symbol("_einittext");
  if (is && ie && *is < *ie && *ie - *is < (64u << 20)) {
    r->init_start_ = *is;
    r->init_end_ = *ie;
  }
  STALLMON_TRY(r->orc_, OrcTable::read(k, options.orc));
  if (options.modules) {
    auto l = ModuleLayout::resolve(k);
    if (l) r->module_layout_ = std::make_unique<ModuleLayout>(std::move(l).value());
    else r->modules_error_ = l.error().to_string();
  } else {
    r->modules_error_ = "module reading disabled";
  }
  r->kthread_ = KthreadLayout::resolve(k);
  r->irq_ = IrqStackLayout::resolve(k);
  // The NMI stack needs both: nmi_state says when the CPU is on it, the layout where it is.
  // nmi_state is a per-cpu enum (4 bytes): a BTF variable of another size is not that one.
  std::string nmi_error = "no nmi_state symbol";
  if (auto st = k.symbol("nmi_state")) {
    auto size = k.variable_size("nmi_state");
    if (!size || *size == 4) r->nmi_state_ = *st;
    else nmi_error = "nmi_state is " + std::to_string(*size) + " bytes in BTF, not an enum";
  }
  auto exc = ExceptionStackLayout::resolve(k);
  if (exc) r->exc_ = std::move(exc).value();
  else r->exc_error_ = exc.error().message;
  if (!r->nmi_state_)
    r->exc_error_ = "exception stacks: " + nmi_error + (r->exc_error_.empty() ? "" : "; " + r->exc_error_);
  return r;
}

bool BacktraceReader::in_module_text(uint64_t ip) const { return modules_->find(ip) != nullptr; }

std::optional<OrcEntry> BacktraceReader::orc_find(uint64_t ip) const {
  // Module text lies outside vmlinux's table, whose last entry would otherwise "cover" it.
  if (const GuestModule* m = modules_->find(ip)) {
    if (m->orc.size() == 0) return std::nullopt;
    return m->orc.find(ip);
  }
  return orc_.find(ip);
}

bool BacktraceReader::refresh_modules() {
  if (!module_layout_) return false;
  uint64_t head[2] = {0, 0};
  if (!k_.read(module_layout_->modules, head, sizeof head)) return false;
  if (modules_read_ && head[0] == modules_head_[0] && head[1] == modules_head_[1]) return false;
  ModuleLimits lim;
  lim.max_modules = opt_.max_modules;
  lim.budget = opt_.orc.budget;
  // The old table is given back first: the new one may need the same budget.
  modules_ = std::make_unique<ModuleTable>();
  modules_lo_ = modules_hi_ = 0;
  auto t = ModuleTable::read(k_, *module_layout_, orc_.format(), lim);
  if (!t) {
    // Retried at the next backtrace: modules_read_ stays false.
    modules_error_ = t.error().to_string();
    modules_read_ = false;
    return false;
  }
  *modules_ = std::move(t).value();
  if (!modules_->modules().empty()) {
    modules_lo_ = modules_->modules().front().text_start;
    modules_hi_ = modules_->modules().back().text_end;
  }
  modules_error_.clear();
  modules_head_[0] = head[0];
  modules_head_[1] = head[1];
  modules_read_ = true;
  return true;
}

// The innermost verified frame is a return address into kthread(): its thread function (or a
// callee of it) runs and left no return address of its own. struct kthread says which one.
void BacktraceReader::infer_threadfn(Backtrace& bt) {
  constexpr uint32_t kPfKthread = 0x00200000;  // PF_KTHREAD
  if (!kthread_ || bt.verification != Verification::kOrcChain || bt.frames.empty() ||
      bt.frames[0].symbol != "kthread" || !bt.frames[0].module.empty())
    return;
  uint32_t flags = 0;
  uint64_t kthread = 0, fn = 0;
  if (!k_.read(bt.task + kthread_->task_flags, &flags, 4) || !(flags & kPfKthread)) return;
  if (!k_.read(bt.task + kthread_->task_kthread, &kthread, 8) || kthread < 0xffff800000000000ULL) return;
  if (!k_.read(kthread + kthread_->threadfn, &fn, 8) || !in_text(fn)) {
    bt.notes.push_back("kthread's threadfn " + hex(fn) + " is not text: not inferred");
    return;
  }
  bt.frames.insert(bt.frames.begin(), make_frame(fn, 0, Verification::kInferredThreadfn));
}

Result<StackBytes> BacktraceReader::read_task_stack(uint64_t task, MemoryCharge& charge) {
  uint64_t stack = 0;
  auto rd = k_.read(task + stack_member_, &stack, 8);
  if (!rd) return std::move(rd).error().context("backtrace: task_struct.stack of " + hex(task));
  if (stack % opt_.thread_size != 0 && stack % 4096 != 0)
    return Error(ErrorCode::kCorrupt, "backtrace: task " + hex(task) + " stack " + hex(stack) + " is not page aligned", stack);
  STALLMON_TRY(charge, MemoryCharge::take(opt_.orc.budget, "backtrace stack", opt_.thread_size));
  StackBytes out{stack, std::vector<uint8_t>(opt_.thread_size)};
  auto r = k_.read(stack, out.bytes.data(), out.bytes.size());
  if (!r) return std::move(r).error().context("backtrace: stack of task " + hex(task));
  return out;
}

// arch/x86/kernel/irq_64.c map_irq_stack stores the hardirq stack's top - 8 in
// hardirq_stack_ptr (the word there is where call_on_irqstack saves the previous RSP), and
// dumpstack_64.c in_irq_stack takes the stack as the IRQ_STACK_SIZE bytes below top. The
// in-use flag is read first (one byte), the pointer and the stack only when it is set: a CPU
// off its hardirq stack leaves stale frames there; and again after the stack.
std::optional<StackBytes> BacktraceReader::read_irq_stack(uint64_t per_cpu_offset, MemoryCharge& charge,
                                                          std::string& note) {
  if (!irq_) return std::nullopt;
  uint8_t inuse = 0;
  if (!k_.read(per_cpu_offset + irq_->inuse, &inuse, 1)) {
    note = "hardirq_stack_inuse unreadable: the hardirq stack is not read";
    return std::nullopt;
  }
  if (inuse == 0) return std::nullopt;
  uint64_t ptr = 0;
  if (!k_.read(per_cpu_offset + irq_->stack_ptr, &ptr, 8)) {
    note = "on the hardirq stack, but hardirq_stack_ptr is unreadable";
    return std::nullopt;
  }
  // vmap'd pages (or the page-aligned per-cpu backing store before 5.x): top is page aligned.
  const uint64_t top = ptr + 8;
  if (ptr < 0xffff800000000000ULL || top % 4096 != 0 || top < opt_.thread_size) {
    note = "on the hardirq stack, but hardirq_stack_ptr " + hex(ptr) + " is implausible";
    return std::nullopt;
  }
  auto c = MemoryCharge::take(opt_.orc.budget, "backtrace stack", opt_.thread_size);
  if (!c) {
    note = "on the hardirq stack, not read: " + c.error().to_string();
    return std::nullopt;
  }
  charge = std::move(c).value();
  StackBytes out{top - opt_.thread_size, std::vector<uint8_t>(opt_.thread_size)};
  if (!k_.read(out.base, out.bytes.data(), out.bytes.size())) {
    note = "on the hardirq stack, but it is unreadable at " + hex(out.base);
    return std::nullopt;
  }
  // A handler's frames stay on the stack after it returns and still chain: a CPU that left the
  // stack while it was read would show an interrupt it no longer serves. So the flag must still
  // be set after the read (a CPU that left and came back serves a new interrupt: its frames are
  // the newest, as for any read of a running CPU).
  if (!k_.read(per_cpu_offset + irq_->inuse, &inuse, 1) || inuse == 0) {
    note = "left the hardirq stack while it was read: the task stack's trace";
    return std::nullopt;
  }
  return out;
}

Result<StackBytes> BacktraceReader::read_exception_stack(uint64_t estacks, const ExceptionStackLayout::Stack& s,
                                                        std::vector<MemoryCharge>& charges) {
  STALLMON_TRY(MemoryCharge c, MemoryCharge::take(opt_.orc.budget, "backtrace stack", s.size));
  StackBytes out{estacks + s.offset, std::vector<uint8_t>(s.size), s.kind};
  auto r = k_.read(out.base, out.bytes.data(), out.bytes.size());
  if (!r) return std::move(r).error().context(std::string(stack_name(s.kind)) + " stack at " + hex(out.base));
  charges.push_back(std::move(c));
  return out;
}

// arch/x86/kernel/nmi.c: exc_nmi sets the per-cpu nmi_state to NMI_EXECUTING (1) on entry and
// counts it back to NMI_NOT_RUNNING (0) on its way out (NMI_LATCHED, 2: an NMI that came in
// meanwhile, rerun before it leaves). No other exception stack has such a signal (see
// introspect/README.md, "Backtraces"). The entry code (arch/x86/entry/entry_64.S, asm_exc_nmi)
// calls exc_nmi on the NMI stack for an NMI from kernel mode, and on the task stack for one
// from user mode; the top 5 words of the NMI stack are the frame the CPU pushed as the NMI came
// in (RIP, CS, RFLAGS, RSP, SS), so its CS says which. Its RSP says which stack the NMI
// interrupted: another exception stack of the CPU (a #DB or #MC handler) is read as well.
std::vector<StackBytes> BacktraceReader::read_exception_stacks(uint64_t per_cpu_offset,
                                                               std::vector<MemoryCharge>& charges, std::string& note) {
  std::vector<StackBytes> out;
  if (!nmi_state_) return out;  // no signal at all: exception_stacks_error() says so
  auto state = [&]() -> std::optional<uint32_t> {
    uint32_t v = 0;
    if (!k_.read(per_cpu_offset + *nmi_state_, &v, 4)) return std::nullopt;
    return v;
  };
  auto st = state();
  if (!st) {
    note = "nmi_state unreadable: the NMI stack is not read";
    return out;
  }
  if (*st == 0) return out;
  if (*st > 2) {
    note = "nmi_state " + std::to_string(*st) + " is no NMI state: the NMI stack is not read";
    return out;
  }
  if (!exc_) {
    note = "in an NMI handler, but its stack is not read: " + exc_error_;
    return out;
  }
  uint64_t estacks = 0;
  if (!k_.read(per_cpu_offset + exc_->stacks_ptr, &estacks, 8)) {
    note = "in an NMI handler, but cea_exception_stacks is unreadable: the NMI stack is not read";
    return out;
  }
  if (estacks % kPage != 0 || estacks < kCeaBase || estacks > kCeaEnd - exc_->struct_size) {
    note = "in an NMI handler, but cea_exception_stacks " + hex(estacks) +
           " is implausible (not a page of the cpu_entry_area): the NMI stack is not read";
    return out;
  }
  auto nmi = read_exception_stack(estacks, *exc_->find(StackKind::kNmi), charges);
  if (!nmi) {
    note = "in an NMI handler, but its stack is not read: " + nmi.error().to_string();
    return out;
  }
  uint64_t hw[5];  // rip, cs, rflags, rsp, ss
  std::memcpy(hw, nmi->bytes.data() + nmi->bytes.size() - sizeof hw, sizeof hw);
  if ((hw[1] & 3) != 0) {
    note = "in an NMI from user mode: its handler runs on the task stack";
    return out;
  }
  if (hw[1] != kKernelCs) {
    note = "in an NMI handler, but the frame at the top of the NMI stack has CS " + hex(hw[1]) +
           ": the NMI stack is not read";
    return out;
  }
  const uint64_t nmi_base = nmi->base;
  out.push_back(std::move(nmi).value());
  // The CPU pushed that RSP itself: an exception stack it names was in use below the NMI.
  for (const ExceptionStackLayout::Stack& s : exc_->stacks) {
    const uint64_t lo = estacks + s.offset;
    if (s.kind == StackKind::kNmi || hw[3] <= lo || hw[3] > lo + s.size) continue;
    auto inner = read_exception_stack(estacks, s, charges);
    if (inner) out.push_back(std::move(inner).value());
    else note = "the NMI interrupted a " + std::string(stack_name(s.kind)) + " handler, whose stack is not read: " +
                inner.error().to_string();
    break;
  }
  // A handler's frames stay on the stack after it returns and still chain: a CPU that left the
  // NMI handler while its stack was read would be shown in an NMI it no longer serves.
  st = state();
  if (!st || *st == 0) {
    out.clear();
    note = "left the NMI handler while its stack at " + hex(nmi_base) + " was read: not shown on it";
  }
  return out;
}

void BacktraceReader::finish(Backtrace& bt) {
  if (!modules_error_.empty() && module_layout_) bt.notes.push_back("modules unavailable: " + modules_error_);
  infer_threadfn(bt);
}

Result<Backtrace> BacktraceReader::backtrace_task(uint64_t task) {
  MemoryCharge c;
  STALLMON_TRY(StackBytes stack, read_task_stack(task, c));
  refresh_modules();
  Backtrace bt = backtrace_stacks(task, stack, nullptr);
  finish(bt);
  return bt;
}

Result<Backtrace> BacktraceReader::backtrace_cpu_task(uint64_t task, uint64_t per_cpu_offset) {
  MemoryCharge c, ci;
  std::vector<MemoryCharge> ce;
  STALLMON_TRY(StackBytes stack, read_task_stack(task, c));
  std::string note, exc_note;
  const std::vector<StackBytes> exc = read_exception_stacks(per_cpu_offset, ce, exc_note);
  std::optional<StackBytes> irq = read_irq_stack(per_cpu_offset, ci, note);
  refresh_modules();
  Backtrace bt = backtrace_stacks(task, stack, irq ? &*irq : nullptr, exc);
  if (!note.empty()) bt.notes.insert(bt.notes.begin(), note);
  if (!exc_note.empty()) bt.notes.insert(bt.notes.begin(), exc_note);
  finish(bt);
  return bt;
}

Frame BacktraceReader::make_frame(uint64_t address, uint64_t slot, Verification v) const {
  Frame f;
  f.address = address;
  f.stack_slot = slot;
  f.verification = v;
  if (auto h = modules_->lookup(address)) {
    f.module = h->module->name;
    if (h->symbol) {
      f.symbol = h->symbol->name;
      f.offset = address - h->symbol->address;
      f.size = h->symbol->size;
    }
  } else if (auto s = k_.symbol_at(address)) {
    f.symbol = s->name;
    f.offset = address - s->address;
    f.size = s->size;
  } else {
    f.symbol = k_.symbolize(address);
    if (auto plus = f.symbol.find('+'); plus != std::string::npos) {
      f.offset = std::strtoull(f.symbol.c_str() + plus + 1, nullptr, 16);
      f.symbol.resize(plus);
    }
  }
  return f;
}

namespace {

// One ORC step from `s` inside the stack `v`. On kNext `s` is the caller's state.
Step orc_step(const BacktraceReader& r, const StackView& v, UnwindState& s, std::string& why) {
  auto e = r.orc_find(s.signal ? s.ip : s.ip - 1);
  if (!e) {
    why = "no ORC entry for " + hex(s.ip);
    return Step::kFail;
  }
  if (e->type == OrcType::kEndOfStack) return Step::kEnd;
  if (e->type == OrcType::kUndefined) {
    why = "undefined ORC entry for " + hex(s.ip);
    return Step::kFail;
  }
  uint64_t cfa = 0;
  switch (e->sp_reg) {
    case kOrcRegSp: cfa = s.sp + static_cast<uint64_t>(static_cast<int64_t>(e->sp_offset)); break;
    case kOrcRegBp:
      if (!s.bp_known) {
        why = "CFA from an unknown BP at " + hex(s.ip);
        return Step::kFail;
      }
      cfa = s.bp + static_cast<uint64_t>(static_cast<int64_t>(e->sp_offset));
      break;
    case kOrcRegSpIndirect: {
      auto w = v.word(s.sp);
      if (!w) {
        why = "indirect SP outside the stack at " + hex(s.ip);
        return Step::kFail;
      }
      cfa = *w + static_cast<uint64_t>(static_cast<int64_t>(e->sp_offset));
      break;
    }
    case kOrcRegBpIndirect: {
      auto w = s.bp_known ? v.word(s.bp + static_cast<uint64_t>(static_cast<int64_t>(e->sp_offset))) : std::nullopt;
      if (!w) {
        why = "indirect BP unusable at " + hex(s.ip);
        return Step::kFail;
      }
      cfa = *w;
      break;
    }
    default: why = "CFA in register " + std::to_string(e->sp_reg) + " at " + hex(s.ip); return Step::kFail;
  }
  UnwindState n;
  switch (e->type) {
    case OrcType::kCall: {
      auto ra = v.word(cfa - 8);
      if (!ra) {
        why = "return address of " + hex(s.ip) + " outside the stacks read (CFA " + hex(cfa) + ")";
        return Step::kFail;
      }
      n.ip = *ra;
      n.sp = cfa;
      n.slot = cfa - 8;
      n.signal = false;
      break;
    }
    case OrcType::kRegs: {
      auto ip = v.word(cfa + 8 * kRegsIp), cs = v.word(cfa + 8 * kRegsCs), sp = v.word(cfa + 8 * kRegsSp),
           bp = v.word(cfa + 8 * kRegsBp);
      if (!ip || !cs || !sp || !bp) {
        why = "pt_regs of " + hex(s.ip) + " outside the stacks read";
        return Step::kFail;
      }
      if ((*cs & 3) != 0) {
        // Entered from user mode: the outermost kernel frame, whose registers sit at the very top
        // of the stack (task_pt_regs). Anywhere else they are stale bytes, not an end.
        if (cfa + 8 * kPtRegsWords == v.task_top()) return Step::kEnd;
        why = "user-mode registers of " + hex(s.ip) + " not at the top of the stack";
        return Step::kFail;
      }
      n.ip = *ip;
      n.sp = *sp;
      n.bp = *bp;
      n.bp_known = true;
      n.signal = true;
      break;
    }
    case OrcType::kRegsPartial: {
      auto ip = v.word(cfa), cs = v.word(cfa + 8), sp = v.word(cfa + 24);
      if (!ip || !cs || !sp) {
        why = "iret frame of " + hex(s.ip) + " outside the stacks read";
        return Step::kFail;
      }
      if ((*cs & 3) != 0) return Step::kEnd;
      n.ip = *ip;
      n.sp = *sp;
      n.signal = true;
      break;
    }
    default: why = "ORC type " + std::string(to_string(e->type)); return Step::kFail;
  }
  if (e->type != OrcType::kRegs) {
    n.bp = s.bp;
    n.bp_known = s.bp_known;
    switch (e->bp_reg) {
      case kOrcRegUndefined: break;
      case kOrcRegPrevSp:
        if (auto w = v.word(cfa + static_cast<uint64_t>(static_cast<int64_t>(e->bp_offset)))) n.bp = *w, n.bp_known = true;
        else n.bp_known = false;
        break;
      case kOrcRegBp:
        if (auto w = s.bp_known ? v.word(s.bp + static_cast<uint64_t>(static_cast<int64_t>(e->bp_offset))) : std::nullopt)
          n.bp = *w, n.bp_known = true;
        else n.bp_known = false;
        break;
      default: n.bp_known = false; break;
    }
  }
  // The stack grows down: on one stack every caller frame is strictly above its callee; between
  // stacks a chain only moves outward (StackView), so each stack is walked at most once. Both
  // end any loop a hostile stack builds. An SP on no stack read counts as the current one (its
  // next read fails).
  const int region = v.region_of(n.sp, 0);
  n.region = region < 0 ? s.region : region;
  if (n.region < s.region) {
    why = "caller SP " + hex(n.sp) + " goes back onto the " +
          stack_name(v.regions[static_cast<size_t>(n.region)].kind) + " stack at " + hex(s.ip);
    return Step::kFail;
  }
  if (n.region == s.region && n.sp <= s.sp) {
    why = "caller SP " + hex(n.sp) + " not above " + hex(s.sp) + " at " + hex(s.ip);
    return Step::kFail;
  }
  s = n;
  return Step::kNext;
}

struct Chain {
  std::vector<UnwindState> frames;  // the starting state first
  bool ended = false;               // reached a proper end (END hint, user-mode regs)
  bool truncated = false;
  std::string why;                  // why it stopped, when not ended
};

Chain orc_chain(const StackView& v, UnwindState s, uint32_t max_frames, const BacktraceReader& r) {
  Chain c;
  c.frames.push_back(s);
  while (true) {
    if (c.frames.size() >= max_frames) {
      c.truncated = true;
      break;
    }
    std::string why;
    Step st = orc_step(r, v, s, why);
    if (st == Step::kEnd) {
      c.ended = true;
      break;
    }
    if (st == Step::kFail) {
      c.why = why;
      break;
    }
    if (!r.in_text(s.ip)) {
      c.why = "caller " + hex(s.ip) + " is not kernel text";
      break;
    }
    c.frames.push_back(s);
  }
  return c;
}

// One address alone proves nothing: at least one ORC step must land on another text address.
bool chain_accepted(const Chain& c) { return c.frames.size() >= 2; }

}  // namespace

Backtrace BacktraceReader::backtrace_stack(uint64_t task, uint64_t base, const std::vector<uint8_t>& stack) const {
  return backtrace_stacks(task, StackBytes{base, stack}, nullptr);
}

Backtrace BacktraceReader::backtrace_stacks(uint64_t task, const StackBytes& task_stack, const StackBytes* irq,
                                            std::span<const StackBytes> exceptions) const {
  Backtrace bt;
  bt.task = task;
  bt.stack_base = task_stack.base;
  bt.stack_size = task_stack.bytes.size();
  StackView v;
  for (const StackBytes& e : exceptions) v.regions.push_back(StackRegion{e.base, &e.bytes, e.kind});
  if (irq != nullptr) v.regions.push_back(StackRegion{irq->base, &irq->bytes, StackKind::kIrq});
  v.regions.push_back(StackRegion{task_stack.base, &task_stack.bytes, StackKind::kTask});
  auto emit = [&](const Chain& c, Verification first) {
    for (size_t i = 0; i < c.frames.size(); ++i) {
      const Verification mark = i == 0 ? first : Verification::kOrcChain;
      Frame f = make_frame(c.frames[i].ip, c.frames[i].slot, mark);
      f.stack = v.regions[static_cast<size_t>(c.frames[i].region)].kind;
      f.interrupted = c.frames[i].signal;
      bt.frames.push_back(std::move(f));
    }
    bt.truncated = c.truncated;
    if (!c.ended && !c.why.empty()) bt.notes.push_back("chain stopped: " + c.why);
  };

  // A chain that reaches the outermost frame (an END hint, or the registers saved on entry from
  // user mode) is the live one far more often than a chain that breaks: stale frames deep in
  // the stack usually lead into slots overwritten since. So each method takes the first complete
  // chain, else its first chain of at least 2 frames.
  constexpr size_t kMaxNotes = 4;
  auto note = [&](std::string n) {
    if (bt.notes.size() < kMaxNotes) bt.notes.push_back(std::move(n));
  };

  // Methods (1) and (2) with their starting points on stack `r`; the chains may go on outward.
  // A chain that starts on an inner stack must leave it (or hit the frame limit): the stack has
  // no outermost frame of its own, the live chain always returns to an outer stack (through
  // the RSP saved at the top of the hardirq stack, the pt_regs at the top of an exception stack).
  auto accepted_from = [&](const Chain& c, int r) {
    return chain_accepted(c) && (r == static_cast<int>(v.regions.size()) - 1 || c.truncated || c.frames.back().region > r);
  };
  auto verified_from = [&](int r) -> bool {
    const uint64_t base = v.regions[static_cast<size_t>(r)].base;
    const std::vector<uint8_t>& stack = *v.regions[static_cast<size_t>(r)].bytes;
    // The scans below index words i < nwords only: read them without the StackView's checks,
    // which stay for the addresses the guest's frames name.
    const uint64_t nwords = stack.size() / 8;
    auto w = [&](uint64_t i) {
      uint64_t x;
      std::memcpy(&x, stack.data() + 8 * i, 8);
      return x;
    };

    // 1. Saved kernel interrupt frames, outermost first: an interrupt frame above the live stack
    //    pointer is live; below it, the newest one is where the CPU spins between interrupts.
    std::optional<std::pair<uint64_t, Chain>> partial;
    for (uint64_t j = nwords >= kPtRegsWords ? nwords - kPtRegsWords + 1 : 0; j-- > 0;) {
      if (w(j + kRegsCs) != kKernelCs) continue;  // the cheapest test first: almost every j fails it
      const uint64_t ip = w(j + kRegsIp), cs = w(j + kRegsCs), flags = w(j + kRegsFlags), sp = w(j + kRegsSp),
                     ss = w(j + kRegsSs);
      const uint64_t end = base + 8 * (j + kPtRegsWords);
      // The CPU aligns RSP to 16 bytes before pushing the iret frame: the interrupted SP is just
      // above the frame, or 8 bytes further.
      if (cs != kKernelCs || !in_text(ip) || (flags & 2) == 0 || (flags >> 22) != 0 || (ss != 0 && ss != kKernelDs) ||
          (sp != end && sp != end + 8))
        continue;
      UnwindState s{ip, sp, w(j + kRegsBp), true, true, 0, r};
      Chain c = orc_chain(v, s, opt_.max_frames, *this);
      if (!accepted_from(c, r)) {
        note("interrupt frame at " + hex(base + 8 * j) + " (RIP " + make_frame(ip, 0, Verification::kPtRegs).format() +
             ") does not chain: " + c.why);
        continue;
      }
      if (!c.ended && !c.truncated) {
        if (!partial) partial.emplace(base + 8 * j, std::move(c));
        continue;
      }
      partial.emplace(base + 8 * j, std::move(c));
      break;
    }
    if (partial) {
      bt.pt_regs = partial->first;
      emit(partial->second, Verification::kPtRegs);
      bt.verification = Verification::kPtRegs;
      return true;
    }

    // 2. The innermost return address that starts a consistent ORC chain.
    std::optional<Chain> first;
    for (uint64_t i = 0; i < nwords; ++i) {
      const uint64_t ip = w(i);
      if (!in_text(ip)) continue;
      UnwindState s{ip, base + 8 * i + 8, 0, false, false, base + 8 * i, r};
      Chain c = orc_chain(v, s, opt_.max_frames, *this);
      if (!accepted_from(c, r)) continue;
      const bool complete = c.ended || c.truncated;
      if (!first || complete) first = std::move(c);
      if (complete) break;
    }
    if (first) {
      emit(*first, Verification::kOrcChain);
      bt.verification = Verification::kOrcChain;
      return true;
    }
    return false;
  };

  // The CPU is on an inner stack, innermost first: the live frames are there (the hardirq
  // stack's interrupt frame, if it came from kernel mode, is on the task stack; an exception
  // stack's is at its own top, naming the stack it interrupted, which holds its callers).
  const int task_region = static_cast<int>(v.regions.size()) - 1;
  for (int r = 0; r < task_region; ++r) {
    const StackRegion& in = v.regions[static_cast<size_t>(r)];
    if (verified_from(r)) {
      (in.kind == StackKind::kIrq ? bt.irq_stack : bt.exception_stack) = in.base;
      return bt;
    }
    note("on the " + std::string(stack_name(in.kind)) + " stack at " + hex(in.base) +
         ", but no verified chain starts there" + (r + 1 == task_region ? ": the task stack's trace" : ""));
  }
  if (verified_from(task_region)) return bt;

  // 3. Nothing verifies: every kernel text address on the task stack, innermost first.
  for (uint64_t i = 0; i < task_stack.bytes.size() / 8; ++i) {
    uint64_t x;
    std::memcpy(&x, task_stack.bytes.data() + 8 * i, 8);
    if (!in_text(x)) continue;
    if (bt.frames.size() >= opt_.max_frames) {
      bt.truncated = true;
      break;
    }
    bt.frames.push_back(make_frame(x, task_stack.base + 8 * i, Verification::kScannedUnverified));
  }
  note("no ORC-consistent chain on the stack");
  bt.verification = Verification::kScannedUnverified;
  return bt;
}

}  // namespace stallmon::introspect
