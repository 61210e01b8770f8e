// SPDX-License-Identifier: Apache-2.0
// GuestSnapshot: the guest kernel's per-CPU scheduling, cross-CPU call (IPI/csd), watchdog and
// printk state at one instant, read from guest memory from the outside.
//
// A snapshot is a plain value: no pointers into the library or guest, safe to copy, compare,
// serialise and keep. Guest memory is hostile input, so a snapshot is partial rather than
// absent: a CPU whose runqueue cannot be read still has its other fields, and every problem is
// recorded in `errors` (and per CPU in CpuSnapshot::errors) with the address involved.
//
// SnapshotReader computes every address and offset once per kernel (the "layout": per-cpu
// addresses from __per_cpu_offset, member offsets from BTF, features from member and symbol
// presence); each take() is then a few batched reads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/introspect/backtrace.h"
#include "stallmon/introspect/memory_budget.h"
#include "stallmon/introspect/snapshot_access.h"

namespace stallmon::introspect {

// Type of a call_single_queue entry, from `u_flags & CSD_TYPE_MASK` (include/linux/smp_types.h,
// 5.8+). kLegacy: kernels before the typed queue, where every entry is a call_single_data.
enum class CsdType : uint8_t { kAsync, kSync, kIrqWork, kTtwu, kUnknown, kLegacy };
const char* to_string(CsdType t);

inline constexpr uint32_t kCsdFlagLock = 0x01;      // CSD_FLAG_LOCK
inline constexpr uint32_t kCsdTypeMask = 0xF0;      // CSD_TYPE_MASK
inline constexpr uint32_t kCsdTypeAsync = 0x00;     // CSD_TYPE_ASYNC
inline constexpr uint32_t kCsdTypeSync = 0x10;      // CSD_TYPE_SYNC
inline constexpr uint32_t kCsdTypeIrqWork = 0x20;   // CSD_TYPE_IRQ_WORK
inline constexpr uint32_t kCsdTypeTtwu = 0x30;      // CSD_TYPE_TTWU

struct SnapshotError {
  int32_t cpu = -1;                  // -1: not specific to one CPU
  std::string what;                  // what was being read: "runqueues", "call_single_queue[3]"
  std::string message;               // why it failed
  std::optional<uint64_t> address;   // the guest address involved, when known
};

struct TaskRef {
  uint64_t address = 0;  // task_struct
  int32_t pid = -1;
  std::string comm;      // at most TASK_COMM_LEN-1 printable bytes
  std::optional<uint32_t> state;  // __state (5.14+) or state
  uint64_t stack = 0;    // task_struct.stack (the lowest address of its kernel stack), 0 if unknown
  bool ok = false;       // pid/comm were read
};

// One entry of a CPU's call_single_queue (a lock-less llist of __call_single_node).
struct QueueEntry {
  uint64_t node = 0;       // address of the llist_node
  uint64_t object = 0;     // containing csd / irq_work / task_struct
  CsdType type = CsdType::kUnknown;
  uint32_t flags = 0;      // raw u_flags (or flags on legacy kernels)
  bool locked = false;     // CSD_FLAG_LOCK
  uint64_t func = 0;       // csd/irq_work function; 0 for TTWU
  std::string func_name;   // symbolised func, empty if unknown
  TaskRef task;            // TTWU only: the task being woken
};

// A csd this CPU sent through smp_call_function_many_cond (cfd_data), for one target CPU.
struct CfdTarget {
  uint32_t target = 0;
  uint64_t csd = 0;
  uint32_t flags = 0;
  bool locked = false;
  CsdType type = CsdType::kUnknown;
  uint64_t func = 0;
  std::string func_name;
  bool ok = false;
};

struct RunqueueState {
  bool ok = false;
  uint64_t address = 0;
  TaskRef curr;
  uint64_t idle = 0;           // rq->idle
  bool curr_is_idle = false;   // rq->curr == rq->idle
  uint32_t nr_running = 0;
  uint32_t cfs_h_nr_running = 0;
  // rq->ttwu_pending (5.8+); 3.0..5.7: 1 when rq->wake_list holds remote wakeups, else 0.
  std::optional<uint32_t> ttwu_pending;
  uint64_t clock_ns = 0;       // rq->clock
};

struct WatchdogState {
  std::optional<uint64_t> touch_ts;                // watchdog_touch_ts (s, running_clock)
  std::optional<uint64_t> report_ts;               // watchdog_report_ts (5.14+)
  std::optional<uint64_t> hrtimer_interrupts;      // hardlockup detector only
  std::optional<uint64_t> hrtimer_interrupts_saved;
};

struct StealTime {
  uint64_t steal_ns = 0;
  uint32_t version = 0;
  uint8_t preempted = 0;
};

struct CpuSnapshot {
  uint32_t cpu = 0;
  bool online = false;
  uint64_t per_cpu_offset = 0;
  RunqueueState rq;
  std::vector<QueueEntry> call_single_queue;
  bool call_single_queue_ok = false;
  bool call_single_queue_truncated = false;  // length cap hit, cycle, or bad pointer
  std::vector<uint32_t> cfd_mask;  // cfd_data.cpumask: targets of this CPU's last/current call
  std::vector<CfdTarget> cfd_targets;  // one per CPU in cfd_mask
  bool cfd_ok = false;
  WatchdogState watchdog;
  std::optional<StealTime> steal;  // only when the kernel has steal_time (KVM_GUEST)
  // The function-call IPIs this CPU has taken (x86 irq_stat.irq_call_count, both the
  // CALL_FUNCTION and CALL_FUNCTION_SINGLE vectors): each one runs the CPU's whole
  // call_single_queue, so a csd still locked after the count moved is a new request, not the
  // same wait. Unset on kernels without it.
  std::optional<uint64_t> call_ipis;
  // The current task's STACK_END_MAGIC (at task->stack) overwritten: its kernel stack
  // overflowed (or was written past its end). Unset when the word could not be read.
  std::optional<bool> stack_end_corrupt;
  // The current task's kernel backtrace: only with SnapshotOptions::read_backtraces (or from
  // SnapshotReader::backtrace_cpu).
  std::optional<Backtrace> backtrace;
};

struct PrintkRecord {
  uint64_t seq = 0;
  uint64_t ts_nsec = 0;
  uint8_t level = 0;
  uint8_t facility = 0;
  uint8_t flags = 0;       // LOG_NEWLINE 2, LOG_CONT 8
  uint32_t caller_id = 0;
  std::string text;
  bool text_truncated = false;
};

struct GuestSnapshot {
  uint64_t taken_at_ns = 0;     // host CLOCK_MONOTONIC at the start of the snapshot
  uint64_t duration_ns = 0;     // how long the reads took
  uint32_t nr_cpu_ids = 0;
  std::vector<uint32_t> online_cpus;
  std::vector<uint64_t> per_cpu_offsets;
  std::vector<CpuSnapshot> cpus;  // one per possible CPU (index = cpu id), capped
  std::optional<int32_t> watchdog_thresh;
  std::optional<uint64_t> jiffies;
  uint64_t guest_clock_ns = 0;    // estimate of guest "now": max rq->clock over CPUs
  std::optional<int32_t> panic_cpu;  // -1 when no CPU is panicking
  std::vector<PrintkRecord> printk;  // oldest first
  bool printk_read = false;
  std::vector<SnapshotError> errors;  // every failure, per CPU ones included

  // Errors for one CPU (convenience for formatting and tests).
  std::vector<const SnapshotError*> errors_for(int32_t cpu) const;
};

struct SnapshotOptions {
  // CPUs beyond this are not read (an error says so). Set it to the guest's vCPU count as the
  // host knows it (libvirt's maximum vCPUs): the guest's nr_cpu_ids alone is never trusted.
  uint32_t max_cpus = 1024;
  uint32_t max_queue_entries = 64;     // call_single_queue walk bound per CPU
  bool read_printk = true;
  uint32_t printk_records = 50;        // tail length
  uint32_t printk_max_text = 1024;     // bytes kept per record (PRINTKRB_RECORD_MAX is 1024)
  bool symbolize = true;               // function names for csd funcs
  // Backtraces of every CPU's current task in take() (a 16 KiB stack read per CPU and the ORC
  // tables once): off in the monitor's tick, which asks backtrace_cpu() for the CPUs a finding
  // involves.
  bool read_backtraces = false;
  BacktraceOptions backtrace;  // its orc.budget defaults to `budget`
  // Charged by create() with everything a take() may hold (per-CPU buffers sized from BTF,
  // queue walks, cfd targets, printk text), for the reader's lifetime. null: no budget.
  std::shared_ptr<MemoryBudget> budget;
};

// Which optional kernel features the layout found (for diagnostics and tests).
struct SnapshotFeatures {
  bool typed_csd = false;          // __call_single_node with CSD_TYPE_* (5.8+)
  bool csq_list_head = false;      // call_single_queue is a list_head + lock (before 3.14)
  bool cfd_pcpu = false;           // call_function_data.pcpu (5.13 until ~6.2) vs .csd
  bool cfd_mask_offstack = false;  // cpumask_var_t is a pointer (CONFIG_CPUMASK_OFFSTACK)
  bool ttwu_pending = false;
  bool rq_wake_list = false;       // rq->wake_list (3.0..5.7) stands for ttwu_pending
  bool watchdog_report_ts = false;
  bool hrtimer_interrupts = false;
  bool steal_time = false;
  bool irq_call_count = false;     // irq_cpustat_t.irq_call_count (x86 SMP)
  bool printk_ringbuffer = false;  // lockless prb (5.10+)
  bool printk_log_buf = false;     // log_buf of struct printk_log records (before 5.10)
  bool task_state_new = false;     // task_struct.__state (5.14+)
  bool task_stack = false;         // task_struct.stack (stack-end magic, backtraces)
};

class SnapshotReader {
 public:
  // Computes the layout: resolves symbols and member offsets and reads nr_cpu_ids and
  // __per_cpu_offset (fixed after boot). Fails only if the essentials are missing (runqueues,
  // __per_cpu_offset, nr_cpu_ids, struct rq); optional parts are disabled with a feature flag.
  // `kernel` must outlive the reader.
  static Result<std::unique_ptr<SnapshotReader>> create(KernelAccess& kernel,
                                                        SnapshotOptions options = {});
  ~SnapshotReader();
  SnapshotReader(const SnapshotReader&) = delete;
  SnapshotReader& operator=(const SnapshotReader&) = delete;

  // Reads one snapshot. Never fails as a whole: problems are recorded in the snapshot's errors.
  // Not thread-safe (reuses buffers): one reader per thread.
  GuestSnapshot take();

  const SnapshotFeatures& features() const;
  const SnapshotOptions& options() const;
  // Non-fatal problems found while computing the layout (missing optional symbols/members).
  const std::vector<std::string>& layout_notes() const;
  // Upper bound of the heap bytes one take() allocates (what the budget was charged).
  uint64_t take_memory_bytes() const;

  // The kernel backtrace of CPU `cpu`'s current task in `snapshot` (taken by this reader). The
  // ORC tables are read on the first call and kept (charged to the budget) for the reader's
  // lifetime. kNotFound without ORC tables or task_struct.stack.
  Result<Backtrace> backtrace_cpu(const GuestSnapshot& snapshot, uint32_t cpu);

  struct Layout;

 private:
  explicit SnapshotReader(KernelAccess& kernel);
  void read_stack_ends(GuestSnapshot& s);
  KernelAccess& kernel_;
  std::unique_ptr<Layout> layout_;
  std::unique_ptr<BacktraceReader> backtracer_;
  std::optional<Error> backtracer_error_;  // why it cannot be created (permanent errors only)
};

// Reads the tail of the printk ring buffer (struct printk_ringbuffer, 5.10+) on its own: the
// newest `max_records` finalized/committed records, oldest first. Reused descriptors and
// wrapped data blocks are handled; a record whose descriptor was reused while being read is
// dropped. Errors about individual records go to `errors`. Kernels without `prb` (before
// 5.10) are read from log_buf: the whole buffer (at most 4 MiB) and its record chain.
Result<std::vector<PrintkRecord>> read_printk_tail(KernelAccess& kernel, uint32_t max_records,
                                                   uint32_t max_text,
                                                   std::vector<SnapshotError>* errors = nullptr);

}  // namespace stallmon::introspect
