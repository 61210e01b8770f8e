// SPDX-License-Identifier: Apache-2.0
// SnapshotReader: per-CPU runqueue, call_single_queue, cfd_data, watchdog and steal-time state.
//
// Layout changes handled (detected by member/symbol presence, never by version):
// - include/linux/smp_types.h (5.8, "sched: Replace rq::wake_list"): struct __call_single_node
//   { llist; union { u_flags; a_flags }; } (src, dst added in 5.10 on 64-bit) shared by csd,
//   irq_work and task_struct.wake_entry, typed by CSD_TYPE_* in u_flags. For a while csd kept
//   `flags` in an anonymous struct beside `node` (hence the "flags" fallbacks). Before 5.8,
//   csd = { llist; func; info; flags } and remote wakeups used rq->wake_list.
// - kernel/smp.c before 3.14 ("kernel: use lockless list for smp_call_function_single"): the
//   per-cpu call_single_queue was struct call_single_queue { struct list_head list;
//   raw_spinlock_t lock; } and csd = struct call_single_data { struct list_head list; func;
//   info; u16 flags; } (include/linux/smp.h, 3.10 as in CentOS 7): a circular list whose end is
//   the head itself, detected by csd.list being a struct where later kernels have an llist.
// - kernel/smp.c (5.13, "smp: Add extended csd lock debugging"): call_function_data.csd (a
//   percpu csd) became call_function_data.pcpu (a percpu struct cfd_percpu { csd; ... }); the
//   extended debugging was removed again later (6.12 has .csd: seen on Debian 6.12.117).
// - cpumask_var_t is a pointer with CONFIG_CPUMASK_OFFSTACK, an inline array otherwise.
// - task_struct.state became __state (5.14, "sched: Change task_struct::state").
// - rq->ttwu_pending (5.8, "sched: Add rq::ttwu_pending"; before it, a non-empty
//   rq->wake_list); watchdog_report_ts (5.14, split from watchdog_touch_ts); hrtimer_interrupts
//   only with the hard-lockup detector; steal_time only with CONFIG_KVM_GUEST (and zero unless
//   the host enabled it: TCG never does).
#include <time.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "field_set.h"
#include "printk.h"
#include "stallmon/introspect/snapshot.h"

namespace stallmon::introspect {

using snapshot_detail::FieldSet;
using snapshot_detail::is_aligned_kernel_pointer;
using snapshot_detail::is_kernel_pointer;
using snapshot_detail::ObjectRead;

Result<void> KernelAccess::read_batch(std::span<ReadRequest> requests) {
  Result<void> first;
  for (ReadRequest& r : requests) {
    auto res = read(r.addr, r.buf, r.len);
    r.ok = res.ok();
    if (!res.ok() && first.ok()) first = std::move(res);
  }
  return first;
}

const char* to_string(CsdType t) {
  switch (t) {
    case CsdType::kAsync: return "ASYNC";
    case CsdType::kSync: return "SYNC";
    case CsdType::kIrqWork: return "IRQ_WORK";
    case CsdType::kTtwu: return "TTWU";
    case CsdType::kUnknown: return "UNKNOWN";
    case CsdType::kLegacy: return "CSD";
  }
  return "?";
}

std::vector<const SnapshotError*> GuestSnapshot::errors_for(int32_t cpu) const {
  std::vector<const SnapshotError*> v;
  for (const auto& e : errors)
    if (e.cpu == cpu) v.push_back(&e);
  return v;
}

namespace {

constexpr uint32_t kMaxNrCpuIds = 8192;  // CONFIG_NR_CPUS upper bound (MAXSMP)
constexpr uint32_t kTaskCommLen = 16;    // TASK_COMM_LEN, when BTF gives no array size

uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

CsdType csd_type(uint32_t flags, bool typed) {
  if (!typed) return CsdType::kLegacy;
  switch (flags & kCsdTypeMask) {
    case kCsdTypeAsync: return CsdType::kAsync;
    case kCsdTypeSync: return CsdType::kSync;
    case kCsdTypeIrqWork: return CsdType::kIrqWork;
    case kCsdTypeTtwu: return CsdType::kTtwu;
    default: return CsdType::kUnknown;
  }
}

}  // namespace

struct SnapshotReader::Layout {
  SnapshotOptions opt;
  SnapshotFeatures feat;
  std::vector<std::string> notes;
  uint32_t nr_cpu_ids = 0;
  uint32_t ncpus = 0;  // CPUs read: min(nr_cpu_ids, max_cpus)
  std::vector<uint64_t> pcpu;

  std::optional<uint64_t> online_mask, jiffies, wd_thresh, panic_cpu;
  uint32_t wd_thresh_size = 4, panic_cpu_size = 4;

  uint64_t runqueues = 0;
  std::optional<uint64_t> csq, cfd, steal;

  // A per-CPU scalar (a 4- or 8-byte per-cpu variable, or a member of one): where it is, how
  // wide, and where a CPU's value goes in its CpuSnapshot. All are read in the first batch.
  struct PerCpuScalar {
    const char* name;  // the symbol found (the current one when none is), or symbol.member
    std::optional<uint64_t>& (*value)(CpuSnapshot&);
    std::vector<const char*> older = {};             // earlier names of the same variable
    std::optional<uint64_t> address = std::nullopt;  // its per-cpu address, when the kernel has it
    uint32_t size = 8;                               // 4 or 8 bytes, from BTF
  };
  // The soft-lockup touch timestamp (seconds: cpu_clock >> 30 in every version, 0 = just
  // touched) was touch_timestamp in kernel/softlockup.c (2.6.32, seed case 2's kernel),
  // softlockup_touch_ts in its last versions, then watchdog_touch_ts in kernel/watchdog.c
  // (2.6.36+, and RHEL 6's backport). softlockup.c's threshold, softlockup_thresh, was the whole
  // timeout (watchdog_thresh is half of it) and is not read.
  PerCpuScalar wd_touch{"watchdog_touch_ts", [](CpuSnapshot& c) -> auto& { return c.watchdog.touch_ts; },
                        {"softlockup_touch_ts", "touch_timestamp"}};
  PerCpuScalar wd_report{"watchdog_report_ts", [](CpuSnapshot& c) -> auto& { return c.watchdog.report_ts; }};
  PerCpuScalar hr_int{"hrtimer_interrupts", [](CpuSnapshot& c) -> auto& { return c.watchdog.hrtimer_interrupts; }};
  PerCpuScalar hr_saved{"hrtimer_interrupts_saved",
                        [](CpuSnapshot& c) -> auto& { return c.watchdog.hrtimer_interrupts_saved; }};
  std::array<PerCpuScalar*, 4> watchdog_fields() { return {&wd_touch, &wd_report, &hr_int, &hr_saved}; }
  // The function-call IPIs a CPU has taken: irq_stat + offsetof(irq_cpustat_t, irq_call_count).
  PerCpuScalar call_ipis{"irq_stat.irq_call_count", [](CpuSnapshot& c) -> auto& { return c.call_ipis; }};
  // Every per-CPU scalar, in the order they are read and reported.
  static constexpr size_t kPerCpuScalars = 5;
  std::array<const PerCpuScalar*, kPerCpuScalars> per_cpu_scalars() const {
    return {&wd_touch, &wd_report, &hr_int, &hr_saved, &call_ipis};
  }

  FieldSet rq;
  int rq_nr_running = -1, rq_curr = -1, rq_idle = -1, rq_clock = -1, rq_cfs_h = -1, rq_ttwu = -1, rq_wake_list = -1;

  FieldSet task;
  int t_pid = -1, t_comm = -1, t_state = -1, t_stack = -1;

  // The queue head's first-entry pointer: llist_head.first, or list_head.next of
  // call_single_queue.list (csq_list: a circular list, ended by the head itself).
  uint64_t llist_first_off = 0;
  bool csq_list = false;
  uint64_t csq_list_off = 0;  // offsetof(call_single_queue, list): the address entries link back to

  // A call_single_queue entry, relative to its llist_node.
  FieldSet node;
  int n_next = -1, n_flags = -1, n_func = -1, n_irq_func = -1;
  int64_t csd_llist_off = 0, irq_llist_off = 0, task_llist_off = 0;
  bool have_task_llist = false, have_irq = false;

  // A csd relative to its start (cfd targets).
  FieldSet csd;
  int c_flags = -1, c_func = -1;

  FieldSet cfdfs;
  int cfd_ptr = -1, cfd_mask = -1;
  uint64_t cfd_csd_in_pcpu = 0;  // offsetof(cfd_percpu, csd), 0 for the old layout
  uint32_t mask_bytes = 8;

  FieldSet steal_fs;
  int st_steal = -1, st_version = -1, st_preempted = -1;

  std::optional<snapshot_detail::PrintkLayout> printk;

  uint64_t take_bytes = 0;
  MemoryCharge take_charge;
};

SnapshotReader::SnapshotReader(KernelAccess& kernel) : kernel_(kernel) {}
SnapshotReader::~SnapshotReader() = default;
const SnapshotFeatures& SnapshotReader::features() const { return layout_->feat; }
const SnapshotOptions& SnapshotReader::options() const { return layout_->opt; }
const std::vector<std::string>& SnapshotReader::layout_notes() const { return layout_->notes; }
uint64_t SnapshotReader::take_memory_bytes() const { return layout_->take_bytes; }

namespace {

// Bound of what take() allocates for this layout: per CPU its object buffers (sized from BTF)
// and queue walk, per pair of CPUs a cfd target, and the printk tail. Generous constants stand
// for the bookkeeping structs.
uint64_t take_memory_bound(const SnapshotReader::Layout& L) {
  constexpr uint64_t kPerObject = 128, kPerRequest = sizeof(ReadRequest);
  const uint64_t n = L.ncpus, q = L.opt.max_queue_entries;
  uint64_t per_cpu = 1024 + /* per-CPU scalars: value, request index */ L.kPerCpuScalars * 16 + sizeof(CpuSnapshot) + L.rq.buf_len() + L.cfdfs.buf_len() + L.steal_fs.buf_len() +
                     L.task.buf_len() + L.node.buf_len() + L.mask_bytes + 16 * kPerRequest +
                     /* stack-end word */ 8 + 4 + kPerRequest +
                     q * (8 + sizeof(QueueEntry) + L.task.buf_len() + kPerObject + 2 * kPerRequest);
  uint64_t per_pair = L.cfd ? sizeof(CfdTarget) + L.csd.buf_len() + kPerObject + kPerRequest : 0;
  uint64_t printk = 0;
  if (L.printk && L.printk->log_buf) {
    // The whole log_buf, then the kept records (text capped) and the walk's ring of offsets.
    printk = L.printk->log_buf->max_bytes + 64 * kPerRequest +
             uint64_t{L.opt.printk_records} * (sizeof(PrintkRecord) + uint64_t{L.opt.printk_max_text} + 4);
  } else if (L.printk) {
    printk = (uint64_t{L.opt.printk_records} + 4) *
             (sizeof(PrintkRecord) + 3 * kPerObject + L.printk->desc.buf_len() + L.printk->info.buf_len() + 8 +
              2 * uint64_t{L.opt.printk_max_text} + 3 * kPerRequest);
  }
  return n * per_cpu + n * n * per_pair + printk;
}

}  // namespace

Result<std::unique_ptr<SnapshotReader>> SnapshotReader::create(KernelAccess& k, SnapshotOptions options) {
  std::unique_ptr<SnapshotReader> r(new SnapshotReader(k));
  r->layout_ = std::make_unique<Layout>();
  Layout& L = *r->layout_;
  L.opt = options;
  auto note = [&](std::string s) { L.notes.push_back(std::move(s)); };
  auto sym = [&](const char* name) -> std::optional<uint64_t> {
    auto a = k.symbol(name);
    if (!a) return std::nullopt;
    return *a;
  };
  auto first_sym = [&](std::initializer_list<const char*> names) -> std::optional<uint64_t> {
    for (const char* n : names)
      if (auto a = sym(n)) return a;
    return std::nullopt;
  };
  // First member path that exists (feature detection across layouts).
  auto first_member = [&](const char* type, std::initializer_list<const char*> paths) -> std::optional<MemberLayout> {
    for (const char* p : paths)
      if (auto m = k.member(type, p)) return *m;
    return std::nullopt;
  };
  auto need = [&](const char* type, const char* path) -> Result<MemberLayout> {
    auto m = k.member(type, path);
    if (m) return *m;
    // A member that exists but is implausible (hostile BTF) says so; a missing one is a kernel
    // this reader does not support.
    if (m.error().code != ErrorCode::kNotFound) return std::move(m).error().context("snapshot layout");
    // A profile's lookup names the profile ("profile 1a2b3c4d: no member rq.nr_running").
    if (m.error().message.starts_with("profile ")) return Error(ErrorCode::kUnsupported, m.error().message);
    return Error(ErrorCode::kUnsupported, std::string("member ") + type + "." + path + " not found");
  };

  // --- CPUs: nr_cpu_ids and __per_cpu_offset never change after boot. ---
  auto nr_sym = k.symbol("nr_cpu_ids");
  if (!nr_sym) return std::move(nr_sym).error().context("snapshot layout");
  uint32_t nr = 0;
  STALLMON_TRY_VOID(k.read(*nr_sym, &nr, sizeof nr));
  if (nr == 0 || nr > kMaxNrCpuIds)
    return Error(ErrorCode::kCorrupt, "nr_cpu_ids is implausible: " + std::to_string(nr), *nr_sym);
  L.nr_cpu_ids = nr;
  L.ncpus = std::min(nr, std::max<uint32_t>(options.max_cpus, 1));
  if (L.ncpus < nr) note("nr_cpu_ids " + std::to_string(nr) + " capped to " + std::to_string(L.ncpus));
  auto pco = k.symbol("__per_cpu_offset");
  if (!pco) return std::move(pco).error().context("snapshot layout");
  L.pcpu.assign(L.ncpus, 0);
  STALLMON_TRY_VOID(k.read(*pco, L.pcpu.data(), L.ncpus * sizeof(uint64_t)));
  auto rqs = k.symbol("runqueues");
  if (!rqs) return std::move(rqs).error().context("snapshot layout");
  L.runqueues = *rqs;

  // --- Globals. ---
  L.online_mask = first_sym({"__cpu_online_mask", "cpu_online_bits"});  // renamed in 4.5
  if (!L.online_mask) note("no __cpu_online_mask: online CPUs unknown");
  L.jiffies = first_sym({"jiffies_64", "jiffies"});
  L.wd_thresh = sym("watchdog_thresh");
  L.panic_cpu = sym("panic_cpu");

  // --- struct rq. ---
  STALLMON_TRY(auto m_nr, need("rq", "nr_running"));
  STALLMON_TRY(auto m_curr, need("rq", "curr"));
  STALLMON_TRY(auto m_idle, need("rq", "idle"));
  STALLMON_TRY(auto m_clock, need("rq", "clock"));
  L.rq_nr_running = L.rq.add(m_nr);
  L.rq_curr = L.rq.add(m_curr);
  L.rq_idle = L.rq.add(m_idle);
  L.rq_clock = L.rq.add(m_clock);
  // cfs_rq.h_nr_running was renamed h_nr_queued ("sched/fair: Rename h_nr_running into
  // h_nr_queued", 6.14, backported to Debian's 6.12).
  if (auto m = first_member("rq", {"cfs.h_nr_running", "cfs.h_nr_queued"})) L.rq_cfs_h = L.rq.add(*m);
  else note("rq.cfs.h_nr_running (h_nr_queued) not found");
  if (auto m = k.member("rq", "ttwu_pending")) {
    L.rq_ttwu = L.rq.add(*m);
    L.feat.ttwu_pending = true;
  } else if (auto w = k.member("rq", "wake_list.first"); w && w->kind == MemberLayout::Kind::kPointer) {
    // 3.0..5.7 (kernel/sched/sched.h): remote wakeups waited on rq->wake_list, an llist of
    // task_struct.wake_entry, not on call_single_queue; a non-empty list is what ttwu_pending
    // says later ("sched: Replace rq::wake_list", 5.8).
    L.rq_wake_list = L.rq.add(*w);
    L.feat.rq_wake_list = true;
  }
  L.rq.finalize();

  // --- task_struct. ---
  STALLMON_TRY(auto m_pid, need("task_struct", "pid"));
  STALLMON_TRY(auto m_comm, need("task_struct", "comm"));
  L.t_pid = L.task.add(m_pid);
  L.t_comm = L.task.add(m_comm, static_cast<int64_t>(m_comm.offset()),
                        std::min<uint32_t>(m_comm.size ? m_comm.size : kTaskCommLen, 64));
  if (auto m = k.member("task_struct", "__state")) {
    L.t_state = L.task.add(*m);
    L.feat.task_state_new = true;
  } else if (auto m2 = k.member("task_struct", "state")) {
    L.t_state = L.task.add(*m2);
  }
  if (auto m = k.member("task_struct", "stack"); m && m->size == 8) {
    L.t_stack = L.task.add(*m);
    L.feat.task_stack = true;
  }
  L.task.finalize();

  // --- call_single_queue entries. ---
  L.csq = sym("call_single_queue");
  if (L.csq) {
    std::optional<MemberLayout> first = first_member("llist_head", {"first"});
    std::optional<MemberLayout> next = first_member("llist_node", {"next"});
    L.feat.typed_csd = k.type_size("__call_single_node").ok();
    auto csd_llist = first_member("__call_single_data", {"node.llist", "llist"});
    auto csd_flags = first_member("__call_single_data", {"node.u_flags", "node.flags", "flags"});
    auto csd_func = first_member("__call_single_data", {"func"});
    if (!csd_llist) {  // before 4.14 the struct was call_single_data
      csd_llist = first_member("call_single_data", {"llist"});
      csd_flags = first_member("call_single_data", {"flags"});
      csd_func = first_member("call_single_data", {"func"});
    }
    if (!csd_llist) {
      // Before 3.14: csd.list and call_single_queue.list are struct list_heads (the kernel
      // still has llist types, for rq->wake_list, so their presence proves nothing).
      auto csd_list = first_member("call_single_data", {"list"});
      auto head = first_member("call_single_queue", {"list"});
      auto lnext = k.member("list_head", "next");
      if (csd_list && head && lnext && csd_list->kind == MemberLayout::Kind::kStruct &&
          head->kind == MemberLayout::Kind::kStruct && lnext->kind == MemberLayout::Kind::kPointer) {
        L.csq_list = true;
        L.csq_list_off = head->offset();
        L.feat.csq_list_head = true;
        csd_llist = csd_list;
        first = MemberLayout{head->bit_offset + lnext->bit_offset, 0, 8, MemberLayout::Kind::kPointer};
        next = *lnext;
      }
    }
    if (!first || !next || !csd_llist || !csd_flags || !csd_func) {
      note("call_single_queue: csd/llist layout not understood; queue not read");
      L.csq.reset();
    } else {
      L.llist_first_off = first->offset();
      L.csd_llist_off = static_cast<int64_t>(csd_llist->offset());
      L.n_next = L.node.add(*next);
      L.n_flags = L.node.add(*csd_flags, static_cast<int64_t>(csd_flags->offset()) - L.csd_llist_off);
      L.n_func = L.node.add(*csd_func, static_cast<int64_t>(csd_func->offset()) - L.csd_llist_off);
      if (L.feat.typed_csd) {
        if (auto t = k.member("task_struct", "wake_entry.llist")) {
          L.task_llist_off = static_cast<int64_t>(t->offset());
          L.have_task_llist = true;
        } else {
          note("task_struct.wake_entry.llist not found: TTWU entries without task");
        }
        auto il = k.member("irq_work", "node.llist");
        auto ifn = k.member("irq_work", "func");
        if (il && ifn) {
          L.irq_llist_off = static_cast<int64_t>(il->offset());
          L.n_irq_func = L.node.add(*ifn, static_cast<int64_t>(ifn->offset()) - L.irq_llist_off);
          L.have_irq = true;
        }
      }
      L.node.finalize();
      L.c_flags = L.csd.add(*csd_flags);
      L.c_func = L.csd.add(*csd_func);
      L.csd.finalize();
    }
  } else {
    note("no call_single_queue symbol");
  }

  // --- cfd_data. ---
  L.cfd = sym("cfd_data");
  if (L.cfd && L.csq) {
    auto pcpu = k.member("call_function_data", "pcpu");
    auto oldcsd = k.member("call_function_data", "csd");
    auto mask = k.member("call_function_data", "cpumask");
    std::optional<MemberLayout> in_pcpu;
    if (pcpu) in_pcpu = first_member("cfd_percpu", {"csd"});
    if ((!pcpu || !in_pcpu) && !oldcsd) {
      note("call_function_data: neither pcpu nor csd member; cfd_data not read");
      L.cfd.reset();
    } else if (!mask) {
      note("call_function_data.cpumask not found; cfd_data not read");
      L.cfd.reset();
    } else {
      L.feat.cfd_pcpu = pcpu && in_pcpu;
      L.cfd_ptr = L.cfdfs.add(L.feat.cfd_pcpu ? *pcpu : *oldcsd);
      L.cfd_csd_in_pcpu = L.feat.cfd_pcpu ? in_pcpu->offset() : 0;
      L.mask_bytes = static_cast<uint32_t>(((L.ncpus + 63) / 64) * 8);
      L.feat.cfd_mask_offstack = mask->kind == MemberLayout::Kind::kPointer;
      if (L.feat.cfd_mask_offstack) {
        L.cfd_mask = L.cfdfs.add(*mask);
      } else {
        // Inline cpumask_var_t (struct cpumask[1]): read only the words covering our CPUs.
        L.cfd_mask = L.cfdfs.add(*mask, static_cast<int64_t>(mask->offset()),
                                 std::min<uint32_t>(L.mask_bytes, std::max<uint32_t>(mask->size, 8)));
      }
      L.cfdfs.finalize();
    }
  }

  // --- Watchdogs. Sizes from BTF: hrtimer_interrupts became an atomic_t and
  // hrtimer_interrupts_saved an int (6.6, the buddy hard-lockup detector rework); they were
  // unsigned long before, as the soft-lockup timestamps still are. ---
  for (auto* f : L.watchdog_fields()) {
    f->address = sym(f->name);
    for (const char* name : f->older) {
      if (f->address) break;
      if ((f->address = sym(name))) f->name = name;
    }
  }
  for (auto* f : L.watchdog_fields()) {
    auto sz = k.variable_size(f->name);
    if (sz && (*sz == 4 || *sz == 8)) f->size = static_cast<uint32_t>(*sz);
  }
  L.feat.watchdog_report_ts = L.wd_report.address.has_value();
  L.feat.hrtimer_interrupts = L.hr_int.address.has_value();
  if (!L.wd_touch.address) note("no watchdog_touch_ts (soft-lockup detector off?)");

  // --- Steal time (arch/x86/kernel/kvm.c, CONFIG_KVM_GUEST). ---
  L.steal = sym("steal_time");
  if (L.steal) {
    auto s = k.member("kvm_steal_time", "steal");
    auto v = k.member("kvm_steal_time", "version");
    auto p = k.member("kvm_steal_time", "preempted");
    if (s && v && p) {
      L.st_steal = L.steal_fs.add(*s);
      L.st_version = L.steal_fs.add(*v);
      L.st_preempted = L.steal_fs.add(*p);
      L.steal_fs.finalize();
      L.feat.steal_time = true;
    } else {
      L.steal.reset();
    }
  }

  // --- Function-call IPIs taken (arch/x86/include/asm/hardirq.h irq_cpustat_t, per-cpu
  // irq_stat; inc_irq_stat(irq_call_count) in sysvec_call_function{,_single}). ---
  if (auto a = sym("irq_stat")) {
    auto m = k.member("irq_cpustat_t", "irq_call_count");
    if (m && (m->size == 4 || m->size == 8)) {
      L.call_ipis.address = *a + m->offset();
      L.call_ipis.size = m->size;
      L.feat.irq_call_count = true;
    }
  }
  if (!L.call_ipis.address) note("no irq_stat.irq_call_count: csd waits are aged without the target's IPI count");

  if (options.read_printk) {
    auto p = snapshot_detail::resolve_printk_layout(k);
    if (p) {
      L.printk = std::move(p).value();
      L.feat.printk_ringbuffer = !L.printk->log_buf;
      L.feat.printk_log_buf = L.printk->log_buf.has_value();
    } else {
      note("printk: " + p.error().message);
    }
  }
  L.take_bytes = take_memory_bound(L);
  STALLMON_TRY(L.take_charge, MemoryCharge::take(options.budget, "snapshot buffers", L.take_bytes));
  return r;
}

namespace {

void add_error(GuestSnapshot& s, int32_t cpu, std::string what, std::string msg, std::optional<uint64_t> addr = {}) {
  s.errors.push_back(SnapshotError{cpu, std::move(what), std::move(msg), addr});
}

// One take(): the reads of a snapshot in batches (each one KernelAccess::read_batch), every
// batch planned from what the previous one read. Errors are values in the snapshot.
class SnapshotTake {
 public:
  SnapshotTake(const SnapshotReader::Layout& layout, KernelAccess& kernel, GuestSnapshot& snapshot)
      : L(layout), k(kernel), s(snapshot), n(layout.ncpus), w(layout.ncpus) {
    reqs.reserve(n * 12 + 8);
  }

  // Batch 1: globals and every CPU's fixed per-cpu objects (runqueue, call_single_queue head,
  // cfd_data, watchdog variables, steal time).
  void read_fixed_objects();
  // Batch 2: each CPU's current task and its off-stack cfd cpumask.
  void read_current_tasks_and_cfd_masks();
  // Batches 3..: the cfd target csds, then the call_single_queue walks level by level (a queue
  // is usually empty or one or two entries long, so this is one or two more batches).
  void read_cfd_csds_and_queues();
  void symbolize();

 private:
  // A CPU's per-cpu scalar in flight.
  struct ScalarRead {
    uint64_t value = 0;  // zeroed: a 4-byte variable reads into its low half (little endian)
    size_t req = SIZE_MAX;
  };
  // One CPU's reads in flight.
  struct Work {
    ObjectRead rq, cfd, steal, task;
    uint64_t csq_first = 0;
    size_t csq_req = SIZE_MAX;
    std::array<ScalarRead, SnapshotReader::Layout::kPerCpuScalars> scalars;  // as Layout::per_cpu_scalars()
    std::vector<uint64_t> mask_words;
    size_t mask_req = SIZE_MAX;
    // queue walk
    uint64_t cursor = 0;
    uint64_t list_head = 0;  // a list_head queue's head: the walk's end
    std::vector<uint64_t> visited;
    ObjectRead node;
  };
  struct TargetRead {
    uint32_t cpu;
    size_t index;
    ObjectRead csd;
  };
  struct TaskRead {
    uint32_t cpu;
    size_t entry;
    ObjectRead task;
  };

  void err(int32_t cpu, std::string what, std::string msg, std::optional<uint64_t> addr = {}) {
    add_error(s, cpu, std::move(what), std::move(msg), addr);
  }
  size_t push(uint64_t addr, void* buf, size_t len) {
    reqs.push_back(ReadRequest{addr, buf, len, false});
    return reqs.size() - 1;
  }
  bool req_ok(size_t i) const { return i != SIZE_MAX && reqs[i].ok; }

  void settle_fixed_objects(uint32_t c);
  void fill_task(TaskRef& t, const ObjectRead& o) const;
  void plan_cfd_csds();
  void settle_cfd_csds();
  void plan_queue_step(uint32_t c);
  void settle_queue_entry(uint32_t c);

  const SnapshotReader::Layout& L;
  KernelAccess& k;
  GuestSnapshot& s;
  const uint32_t n;
  std::vector<Work> w;
  std::vector<ReadRequest> reqs;
  std::vector<TargetRead> targets;
  std::vector<TaskRead> task_reads;
};

void SnapshotTake::read_fixed_objects() {
  std::vector<uint64_t> online((n + 63) / 64, 0);
  uint64_t jiffies = 0;
  int32_t thresh = 0, panic = 0;
  size_t online_req = SIZE_MAX, jif_req = SIZE_MAX, thr_req = SIZE_MAX, pan_req = SIZE_MAX;
  if (L.online_mask) online_req = push(*L.online_mask, online.data(), online.size() * 8);
  if (L.jiffies) jif_req = push(*L.jiffies, &jiffies, 8);
  if (L.wd_thresh) thr_req = push(*L.wd_thresh, &thresh, 4);
  if (L.panic_cpu) pan_req = push(*L.panic_cpu, &panic, 4);
  const auto scalars = L.per_cpu_scalars();
  for (uint32_t c = 0; c < n; ++c) {
    const uint64_t off = L.pcpu[c];
    Work& x = w[c];
    x.rq.plan(L.rq, L.runqueues + off, reqs);
    if (L.csq) x.csq_req = push(*L.csq + off + L.llist_first_off, &x.csq_first, 8);
    if (L.cfd) x.cfd.plan(L.cfdfs, *L.cfd + off, reqs);
    for (size_t i = 0; i < scalars.size(); ++i)
      if (scalars[i]->address) x.scalars[i].req = push(*scalars[i]->address + off, &x.scalars[i].value, scalars[i]->size);
    if (L.steal) x.steal.plan(L.steal_fs, *L.steal + off, reqs);
  }
  (void)k.read_batch(reqs);

  if (L.online_mask) {
    if (req_ok(online_req)) {
      for (uint32_t c = 0; c < n; ++c)
        if (online[c / 64] >> (c % 64) & 1) {
          s.online_cpus.push_back(c);
          s.cpus[c].online = true;
        }
    } else {
      err(-1, "__cpu_online_mask", "unreadable", *L.online_mask);
    }
  }
  if (req_ok(jif_req)) s.jiffies = jiffies;
  else if (L.jiffies) err(-1, "jiffies_64", "unreadable", *L.jiffies);
  if (req_ok(thr_req)) s.watchdog_thresh = thresh;
  if (req_ok(pan_req)) s.panic_cpu = panic;
  for (uint32_t c = 0; c < n; ++c) settle_fixed_objects(c);
}

void SnapshotTake::settle_fixed_objects(uint32_t c) {
  Work& x = w[c];
  CpuSnapshot& cs = s.cpus[c];
  const int32_t ci = static_cast<int32_t>(c);
  const uint64_t off = L.pcpu[c];
  cs.cpu = c;
  cs.per_cpu_offset = off;
  x.rq.settle(reqs);
  cs.rq.address = x.rq.base;
  if (x.rq.ok) {
    cs.rq.ok = true;
    cs.rq.nr_running = static_cast<uint32_t>(x.rq.get(L.rq_nr_running));
    cs.rq.curr.address = x.rq.get(L.rq_curr);
    cs.rq.idle = x.rq.get(L.rq_idle);
    cs.rq.curr_is_idle = cs.rq.curr.address == cs.rq.idle;
    cs.rq.clock_ns = x.rq.get(L.rq_clock);
    if (L.rq_cfs_h >= 0) cs.rq.cfs_h_nr_running = static_cast<uint32_t>(x.rq.get(L.rq_cfs_h));
    if (L.rq_ttwu >= 0) cs.rq.ttwu_pending = static_cast<uint32_t>(x.rq.get(L.rq_ttwu));
    if (L.rq_wake_list >= 0) cs.rq.ttwu_pending = x.rq.get(L.rq_wake_list) != 0 ? 1u : 0u;
    s.guest_clock_ns = std::max(s.guest_clock_ns, cs.rq.clock_ns);
  } else {
    err(ci, "runqueues[" + std::to_string(c) + "]", "unreadable", x.rq.bad_address);
  }
  if (L.csq) {
    if (req_ok(x.csq_req)) {
      cs.call_single_queue_ok = true;
      x.cursor = x.csq_first;
      if (L.csq_list) {
        x.list_head = *L.csq + off + L.csq_list_off;
        if (x.cursor == x.list_head) x.cursor = 0;  // empty: head.next == &head
      }
    } else {
      err(ci, "call_single_queue[" + std::to_string(c) + "]", "unreadable", reqs[x.csq_req].addr);
    }
  }
  if (L.cfd) x.cfd.settle(reqs);
  if (L.cfd && !x.cfd.ok) err(ci, "cfd_data[" + std::to_string(c) + "]", "unreadable", x.cfd.bad_address);
  const auto scalars = L.per_cpu_scalars();
  for (size_t i = 0; i < scalars.size(); ++i) {
    const ScalarRead& r = x.scalars[i];
    if (r.req == SIZE_MAX) continue;
    if (reqs[r.req].ok) scalars[i]->value(cs) = r.value;
    else err(ci, std::string(scalars[i]->name) + "[" + std::to_string(c) + "]", "unreadable", reqs[r.req].addr);
  }
  if (L.steal) {
    x.steal.settle(reqs);
    if (x.steal.ok) {
      cs.steal = StealTime{x.steal.get(L.st_steal), static_cast<uint32_t>(x.steal.get(L.st_version)),
                           static_cast<uint8_t>(x.steal.get(L.st_preempted))};
    } else {
      err(ci, "steal_time[" + std::to_string(c) + "]", "unreadable", x.steal.bad_address);
    }
  }
}

void SnapshotTake::fill_task(TaskRef& t, const ObjectRead& o) const {
  t.ok = true;
  t.pid = static_cast<int32_t>(o.get(L.t_pid));
  t.comm = snapshot_detail::guest_string(o.ptr(L.t_comm), L.task.size(L.t_comm));
  if (L.t_state >= 0) t.state = static_cast<uint32_t>(o.get(L.t_state));
  if (L.t_stack >= 0) t.stack = o.get(L.t_stack);
}

void SnapshotTake::read_current_tasks_and_cfd_masks() {
  reqs.clear();
  for (uint32_t c = 0; c < n; ++c) {
    Work& x = w[c];
    CpuSnapshot& cs = s.cpus[c];
    if (cs.rq.ok) {
      if (is_aligned_kernel_pointer(cs.rq.curr.address)) x.task.plan(L.task, cs.rq.curr.address, reqs);
      else err(static_cast<int32_t>(c), "runqueues[" + std::to_string(c) + "].curr", "not a kernel pointer", cs.rq.curr.address);
    }
    if (L.cfd && x.cfd.ok && L.feat.cfd_mask_offstack) {
      uint64_t p = x.cfd.get(L.cfd_mask);
      if (is_aligned_kernel_pointer(p)) {
        x.mask_words.assign(L.mask_bytes / 8, 0);
        x.mask_req = push(p, x.mask_words.data(), L.mask_bytes);
      } else {
        err(static_cast<int32_t>(c), "cfd_data[" + std::to_string(c) + "].cpumask", "not a kernel pointer", p);
      }
    }
  }
  if (!reqs.empty()) (void)k.read_batch(reqs);
  for (uint32_t c = 0; c < n; ++c) {
    Work& x = w[c];
    CpuSnapshot& cs = s.cpus[c];
    if (x.task.fs) {
      x.task.settle(reqs);
      if (x.task.ok) fill_task(cs.rq.curr, x.task);
      else err(static_cast<int32_t>(c), "rq->curr of CPU " + std::to_string(c), "task unreadable", x.task.bad_address);
    }
    if (L.cfd && x.cfd.ok) {
      const uint8_t* words = nullptr;
      if (!L.feat.cfd_mask_offstack) {
        words = x.cfd.ptr(L.cfd_mask);
      } else if (req_ok(x.mask_req)) {
        words = reinterpret_cast<const uint8_t*>(x.mask_words.data());
      } else if (x.mask_req != SIZE_MAX) {
        err(static_cast<int32_t>(c), "cfd_data[" + std::to_string(c) + "].cpumask", "unreadable", reqs[x.mask_req].addr);
      }
      if (words) {
        cs.cfd_ok = true;
        uint32_t bytes = L.feat.cfd_mask_offstack ? L.mask_bytes : L.cfdfs.size(L.cfd_mask);
        for (uint32_t t = 0; t < n && t / 8 < bytes; ++t)
          if (words[t / 8] >> (t % 8) & 1) cs.cfd_mask.push_back(t);
      }
    }
  }
}

void SnapshotTake::read_cfd_csds_and_queues() {
  for (uint32_t c = 0; c < n; ++c) {
    CpuSnapshot& cs = s.cpus[c];
    if (!cs.cfd_ok) continue;
    uint64_t base = w[c].cfd.get(L.cfd_ptr);
    for (uint32_t t : cs.cfd_mask) {
      CfdTarget ct;
      ct.target = t;
      ct.csd = base + L.pcpu[t] + L.cfd_csd_in_pcpu;
      cs.cfd_targets.push_back(ct);
    }
  }
  const uint32_t max_rounds = L.opt.max_queue_entries + 2;
  for (uint32_t round = 0; round < max_rounds; ++round) {
    reqs.clear();
    if (round == 0) plan_cfd_csds();
    for (TaskRead& tr : task_reads) tr.task.plan(L.task, s.cpus[tr.cpu].call_single_queue[tr.entry].task.address, reqs);
    for (uint32_t c = 0; c < n; ++c) plan_queue_step(c);
    if (reqs.empty()) break;
    (void)k.read_batch(reqs);

    if (round == 0) settle_cfd_csds();
    for (TaskRead& tr : task_reads) {
      tr.task.settle(reqs);
      TaskRef& t = s.cpus[tr.cpu].call_single_queue[tr.entry].task;
      if (tr.task.ok) fill_task(t, tr.task);
      else err(static_cast<int32_t>(tr.cpu), "TTWU task in call_single_queue[" + std::to_string(tr.cpu) + "]", "unreadable", tr.task.bad_address);
    }
    task_reads.clear();
    for (uint32_t c = 0; c < n; ++c) settle_queue_entry(c);
  }
  for (uint32_t c = 0; c < n; ++c)
    if (w[c].cursor != 0) s.cpus[c].call_single_queue_truncated = true;
}

void SnapshotTake::plan_cfd_csds() {
  for (uint32_t c = 0; c < n; ++c) {
    CpuSnapshot& cs = s.cpus[c];
    for (size_t i = 0; i < cs.cfd_targets.size(); ++i) {
      CfdTarget& ct = cs.cfd_targets[i];
      if (!is_aligned_kernel_pointer(ct.csd)) {
        err(static_cast<int32_t>(c), "cfd csd for CPU " + std::to_string(ct.target), "not a kernel pointer", ct.csd);
        continue;
      }
      targets.push_back(TargetRead{c, i, {}});
    }
  }
  for (TargetRead& tr : targets) tr.csd.plan(L.csd, s.cpus[tr.cpu].cfd_targets[tr.index].csd, reqs);
}

void SnapshotTake::settle_cfd_csds() {
  for (TargetRead& tr : targets) {
    tr.csd.settle(reqs);
    CfdTarget& ct = s.cpus[tr.cpu].cfd_targets[tr.index];
    if (!tr.csd.ok) {
      err(static_cast<int32_t>(tr.cpu), "cfd csd for CPU " + std::to_string(ct.target), "unreadable", tr.csd.bad_address);
      continue;
    }
    ct.ok = true;
    ct.flags = static_cast<uint32_t>(tr.csd.get(L.c_flags));
    ct.locked = ct.flags & kCsdFlagLock;
    ct.type = csd_type(ct.flags, L.feat.typed_csd);
    ct.func = tr.csd.get(L.c_func);
  }
}

// The next entry of CPU c's queue walk, bounded (entries, cycles, pointers).
void SnapshotTake::plan_queue_step(uint32_t c) {
  Work& x = w[c];
  CpuSnapshot& cs = s.cpus[c];
  x.node.fs = nullptr;
  if (x.cursor == 0) return;
  const std::string what = "call_single_queue[" + std::to_string(c) + "]";
  if (!is_aligned_kernel_pointer(x.cursor)) {
    err(static_cast<int32_t>(c), what, "entry pointer is not a kernel pointer", x.cursor);
    cs.call_single_queue_truncated = true;
    x.cursor = 0;
    return;
  }
  if (std::find(x.visited.begin(), x.visited.end(), x.cursor) != x.visited.end()) {
    err(static_cast<int32_t>(c), what, std::string(L.csq_list ? "cycle in list" : "cycle in llist") + " after " + std::to_string(x.visited.size()) + " entries", x.cursor);
    cs.call_single_queue_truncated = true;
    x.cursor = 0;
    return;
  }
  if (x.visited.size() >= L.opt.max_queue_entries) {
    err(static_cast<int32_t>(c), what, "longer than " + std::to_string(L.opt.max_queue_entries) + " entries; truncated", x.cursor);
    cs.call_single_queue_truncated = true;
    x.cursor = 0;
    return;
  }
  x.visited.push_back(x.cursor);
  x.node.plan(L.node, x.cursor, reqs);
}

void SnapshotTake::settle_queue_entry(uint32_t c) {
  Work& x = w[c];
  if (!x.node.fs) return;
  CpuSnapshot& cs = s.cpus[c];
  x.node.settle(reqs);
  if (!x.node.ok) {
    err(static_cast<int32_t>(c), "call_single_queue[" + std::to_string(c) + "] entry", "unreadable", x.node.bad_address);
    cs.call_single_queue_truncated = true;
    x.cursor = 0;
    return;
  }
  QueueEntry e;
  e.node = x.cursor;
  e.flags = static_cast<uint32_t>(x.node.get(L.n_flags));
  e.type = csd_type(e.flags, L.feat.typed_csd);
  e.locked = e.flags & kCsdFlagLock;
  switch (e.type) {
    case CsdType::kTtwu:
      e.object = L.have_task_llist ? e.node - static_cast<uint64_t>(L.task_llist_off) : 0;
      e.task.address = e.object;
      if (L.have_task_llist) task_reads.push_back(TaskRead{c, cs.call_single_queue.size(), {}});
      break;
    case CsdType::kIrqWork:
      e.object = e.node - static_cast<uint64_t>(L.irq_llist_off);
      if (L.have_irq) e.func = x.node.get(L.n_irq_func);
      break;
    default:
      e.object = e.node - static_cast<uint64_t>(L.csd_llist_off);
      e.func = x.node.get(L.n_func);
      break;
  }
  const uint64_t node = e.node;
  cs.call_single_queue.push_back(std::move(e));
  x.cursor = x.node.get(L.n_next);
  if (L.csq_list) {
    if (x.cursor == x.list_head) {
      x.cursor = 0;  // back at the head: the end of a circular list
    } else if (x.cursor == 0) {
      // A list_head is never NULL-terminated: a torn or corrupt list.
      err(static_cast<int32_t>(c), "call_single_queue[" + std::to_string(c) + "]", "NULL next in list_head", node);
      cs.call_single_queue_truncated = true;
    }
  }
}

void SnapshotTake::symbolize() {
  for (CpuSnapshot& cs : s.cpus) {
    for (QueueEntry& e : cs.call_single_queue)
      if (e.func) e.func_name = k.symbolize(e.func);
    for (CfdTarget& t : cs.cfd_targets)
      if (t.func) t.func_name = k.symbolize(t.func);
  }
}

}  // namespace

GuestSnapshot SnapshotReader::take() {
  const Layout& L = *layout_;
  GuestSnapshot s;
  s.taken_at_ns = monotonic_ns();
  kernel_.begin_snapshot();
  s.nr_cpu_ids = L.nr_cpu_ids;
  s.per_cpu_offsets = L.pcpu;
  const uint32_t n = L.ncpus;
  s.cpus.resize(n);
  if (n < L.nr_cpu_ids)
    s.errors.push_back({-1, "cpus", "only the first " + std::to_string(n) + " of " + std::to_string(L.nr_cpu_ids) +
                                        " CPUs read (max_cpus)", std::nullopt});
  {
    SnapshotTake batches(L, kernel_, s);
    batches.read_fixed_objects();
    batches.read_current_tasks_and_cfd_masks();
    batches.read_cfd_csds_and_queues();
    if (L.opt.symbolize) batches.symbolize();
  }

  read_stack_ends(s);
  if (L.opt.read_backtraces) {
    for (uint32_t c = 0; c < n; ++c) {
      if (!s.cpus[c].rq.curr.ok) continue;
      auto bt = backtrace_cpu(s, c);
      if (bt) s.cpus[c].backtrace = std::move(bt).value();
      else add_error(s, static_cast<int32_t>(c), "backtrace of CPU " + std::to_string(c), bt.error().message, bt.error().address);
    }
  }

  if (L.printk) {
    auto recs = snapshot_detail::read_printk(kernel_, *L.printk, L.opt.printk_records, L.opt.printk_max_text, &s.errors);
    if (recs) {
      s.printk = std::move(recs).value();
      s.printk_read = true;
    } else {
      add_error(s, -1, "printk", recs.error().message, recs.error().address);
    }
  }
  s.duration_ns = monotonic_ns() - s.taken_at_ns;
  return s;
}

// One batch: the STACK_END_MAGIC word of every CPU's current task (set_task_stack_end_magic
// writes it at task->stack, the lowest word of the stack; an overflow overwrites it first).
void SnapshotReader::read_stack_ends(GuestSnapshot& s) {
  std::vector<ReadRequest> reqs;
  std::vector<uint64_t> words(s.cpus.size(), 0);
  std::vector<uint32_t> cpus;
  for (CpuSnapshot& cs : s.cpus) {
    if (!cs.rq.curr.ok || !is_aligned_kernel_pointer(cs.rq.curr.stack)) continue;
    reqs.push_back(ReadRequest{cs.rq.curr.stack, &words[cs.cpu], 8, false});
    cpus.push_back(cs.cpu);
  }
  if (reqs.empty()) return;
  (void)kernel_.read_batch(reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    CpuSnapshot& cs = s.cpus[cpus[i]];
    if (reqs[i].ok) cs.stack_end_corrupt = words[cs.cpu] != kStackEndMagic;
    else s.errors.push_back(SnapshotError{static_cast<int32_t>(cs.cpu), "stack end of CPU " + std::to_string(cs.cpu) + "'s current task", "unreadable", reqs[i].addr});
  }
}

Result<Backtrace> SnapshotReader::backtrace_cpu(const GuestSnapshot& s, uint32_t cpu) {
  if (cpu >= s.cpus.size() || !s.cpus[cpu].rq.curr.ok)
    return Error(ErrorCode::kInvalidArgument, "backtrace: no current task for CPU " + std::to_string(cpu));
  if (!backtracer_ && !backtracer_error_) {
    BacktraceOptions o = layout_->opt.backtrace;
    if (!o.orc.budget) o.orc.budget = layout_->opt.budget;
    auto r = BacktraceReader::create(kernel_, o);
    if (r) {
      backtracer_ = std::move(r).value();
    } else {
      // What the kernel lacks or a table that is wrong stays so for this boot; a budget held by
      // something else or a read that failed may pass next time.
      const ErrorCode c = r.error().code;
      if (c != ErrorCode::kOverBudget && c != ErrorCode::kUnmapped && c != ErrorCode::kIo) {
        backtracer_error_ = r.error();
      }
      return std::move(r).error();
    }
  }
  if (!backtracer_) return *backtracer_error_;
  // With the CPU's per-cpu offset: a CPU on its hardirq stack has that stack read too.
  return backtracer_->backtrace_cpu_task(s.cpus[cpu].rq.curr.address, s.cpus[cpu].per_cpu_offset);
}

Result<std::vector<PrintkRecord>> read_printk_tail(KernelAccess& kernel, uint32_t max_records, uint32_t max_text,
                                                   std::vector<SnapshotError>* errors) {
  STALLMON_TRY(auto layout, snapshot_detail::resolve_printk_layout(kernel));
  return snapshot_detail::read_printk(kernel, layout, max_records, max_text, errors);
}

}  // namespace stallmon::introspect
