// SPDX-License-Identifier: Apache-2.0
// The diagnosis engine's input: one DomainObservation per domain per tick (~10 Hz).
//
// Plain data, no transport: the daemon fills these from the host sampler (agent/host), the guest
// snapshot readers (introspect) and the libvirt layer. Field names follow the sources so the
// adapters are a copy. Counters are cumulative (as read from /proc), never pre-differenced: the
// engine keeps its own windows, so its rules do not depend on the sampler's window lengths.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "stallmon/diagnosis/time.h"

namespace stallmon::diagnosis {

// The state letter of /proc/PID/task/TID/stat (values as in the v1 proto's ThreadState).
enum class ThreadState {
  kUnknown = 0,
  kRunning = 1,      // R
  kSleeping = 2,     // S
  kDiskSleep = 3,    // D (also what the cgroup freezer shows)
  kStopped = 4,      // T (SIGSTOP)
  kTracingStop = 5,  // t (ptrace stop)
  kZombie = 6,       // Z
  kIdle = 7,         // I
  kDead = 8,         // X
};
ThreadState thread_state_from_letter(char letter);
char thread_state_letter(ThreadState s);
// D, T and t: the host will not run this thread until something outside it acts.
bool is_host_blocking(ThreadState s);

// One host thread of the domain's qemu process, as sampled this tick.
struct HostThreadView {
  int tid = 0;
  std::string name;  // comm: "CPU 2/KVM", "CPU 0/TCG", "qemu-system-x86", "worker"...
  ThreadState state = ThreadState::kUnknown;
  Duration run_time{0};    // schedstat field 1, cumulative
  Duration run_delay{0};   // schedstat field 2, cumulative: time runnable but not running (steal)
  std::string wchan;       // /proc/.../wchan ("futex_do_wait", "__refrigerator", "0")
  // Kernel stack, innermost frame first, function names only (/proc/.../stack). The sampler
  // reads it for D/T/t threads; empty otherwise.
  std::vector<std::string> host_stack;
  // How long the sampler has seen the thread continuously in `state`, if it knows. Lets a stall
  // that began before stallmon started be dated correctly; the engine also tracks its own.
  std::optional<Duration> in_state_for;
  // Cumulative cgroup cpu.stat of the thread's own cgroup (libvirt: .../vcpuN), when known.
  std::optional<uint64_t> cgroup_nr_throttled;
  std::optional<Duration> cgroup_throttled_time;
};

struct VcpuHostView {
  int index = 0;  // vCPU index == guest logical CPU number (true for QEMU x86 without hotplug gaps)
  HostThreadView thread;
};

// ---------------------------------------------------------------------------------------------
// Guest view: one snapshot of guest kernel state, read from guest memory.

enum class CallType { kAsync, kSync, kIrqWork, kTtwu, kUnknown };  // CSD_TYPE_* (5.8+)
const char* to_string(CallType t);

// One entry of a CPU's call_single_queue (work other CPUs queued for it).
struct QueuedCall {
  uint64_t csd_address = 0;
  CallType type = CallType::kUnknown;
  std::string function;  // symbol of csd->func; for TTWU the woken task ("java/1234")
  int source_cpu = -1;   // -1: unknown
};

// A csd this CPU sent to `target_cpu` via its cfd_data (target in the cfd cpumask).
// `locked` (CSD_FLAG_LOCK) means the target has not yet run the function: a sender with
// wait=1 spins in csd_lock_wait on exactly this.
struct CsdRequest {
  int target_cpu = -1;
  bool locked = false;
  std::string function;  // "do_sync_core", "flush_tlb_func"
  uint64_t csd_address = 0;
  uint32_t flags = 0;    // raw flags/u_flags
};

// How a guest kernel backtrace was verified (introspect's BacktraceReader, see its README).
enum class TraceVerification {
  kOrcChain,       // a chain of return addresses consistent with the kernel's ORC tables
  kInterruptFrame, // from a saved interrupt frame (its RIP), then its ORC chain
  kUnverified,     // kernel text addresses found on the stack, none confirmed by ORC
};
const char* to_string(TraceVerification v);  // "orc_chain", "interrupt_frame", "unverified"

// The kernel backtrace of the task current on a guest CPU, read from guest memory by the daemon
// (only for CPUs an active finding involves, refreshed at most once a second). Either frames or
// an error: a trace that could not be taken is a value, shown as "trace unavailable: why".
struct KernelTrace {
  std::vector<std::string> frames;  // "function+0xoff/0xlen [module]", innermost first, bounded
  bool truncated = false;           // the stack held more frames than `frames`
  TraceVerification verification = TraceVerification::kUnverified;
  int pid = 0;                      // the traced task (the CPU's current one when read)
  std::string comm;
  Timestamp taken_at{};
  std::string error;                // non-empty: no trace, and why
  // The CPU was serving an interrupt or a softirq on its hardirq stack, or an NMI on its NMI
  // stack, when read: the innermost `irq_frames` frames run there ("... (irq stack)",
  // "... (NMI stack)"), and frames[*interrupted] is where the
  // interrupt came in (the interrupted RIP, from the interrupt frame the chain passed), when
  // the kept frames reach it. 0 and unset for a trace of the task stack alone.
  std::size_t irq_frames = 0;
  std::optional<std::size_t> interrupted;

  // Taken, and its frames chained by ORC or an interrupt frame: an unverified scan lists every
  // text address the stack holds, stale ones first, so its frames say nothing of where the CPU is.
  bool verified() const { return error.empty() && verification != TraceVerification::kUnverified; }
};

struct GuestCpuView {
  int cpu = 0;
  bool online = true;
  int current_pid = 0;
  std::string current_comm;  // "swapper/2" for the idle task
  bool idle = false;         // current == rq->idle
  uint32_t nr_running = 0;
  bool ttwu_pending = false;  // rq->ttwu_pending (5.8+); false on kernels without it
  std::vector<QueuedCall> call_single_queue;
  std::vector<CsdRequest> cfd_requests;  // one per target in cfd_data's cpumask
  // Watchdog per-cpu state. Timestamps are in the guest's "seconds": running_clock() >> 30.
  std::optional<uint64_t> watchdog_touch_ts;
  std::optional<uint64_t> watchdog_report_ts;  // 5.13+; absent on older kernels
  std::optional<uint64_t> hrtimer_interrupts;
  std::optional<uint64_t> hrtimer_interrupts_saved;
  // Function-call IPIs this CPU has taken (x86 irq_stat.irq_call_count); unset when unknown.
  // Each one runs the CPU's whole call_single_queue: the engine ends a csd wait on this CPU
  // when the count moves (a busy sender reuses its csd, so "locked again" is a new call).
  std::optional<uint64_t> call_ipis;
  // Whether the watchdog runs on this CPU (watchdog enabled and the CPU in watchdog_cpumask),
  // if the reader knows. When unset the engine infers it: only a CPU whose hrtimer_interrupts
  // or touch timestamp it has seen move is judged by the watchdog rules, because a CPU without
  // a watchdog (nohz_full, nowatchdog) has both frozen forever.
  std::optional<bool> watchdog_active;
  // The current task's STACK_END_MAGIC (the lowest word of its kernel stack) read as
  // overwritten (true) or intact (false); unset when it could not be read (no task_struct.stack
  // in the kernel's BTF, runqueue or stack unreadable): no evidence either way.
  std::optional<bool> stack_end_corrupt;
  // Set by the daemon only for CPUs an active finding of a kind that carries traces involves
  // (carries_kernel_traces), possibly from an earlier snapshot (taken_at says when).
  std::optional<KernelTrace> kernel_trace;
};

struct GuestView {
  // The guest's running_clock() in nanoseconds when the snapshot was read (what the guest's own
  // watchdog compares its timestamps against). Not host time: the two differ by boot time, and
  // the guest's clock need not advance with ours. 0: not read (an unreadable snapshot).
  uint64_t running_clock_ns = 0;
  int watchdog_thresh = 10;  // /proc/sys/kernel/watchdog_thresh; 0 = watchdog disabled
  bool softlockup_watchdog_enabled = true;
  int panic_cpu = -1;        // -1 = PANIC_CPU_INVALID: no panic in progress
  // Whether panic_cpu was read from this snapshot: false when the read failed (panic_cpu is then
  // -1 but says nothing). A snapshot that could not read panic_cpu never ends a panic.
  bool panic_cpu_read = true;
  std::vector<std::string> printk_tail;  // last console records, oldest first
  std::vector<GuestCpuView> cpus;
};

// ---------------------------------------------------------------------------------------------
// libvirt / QEMU monitor

struct MonitorStatus {
  bool responsive = true;
  std::optional<Timestamp> unresponsive_since;  // when the call that missed its deadline began
  std::string pending_command;                  // "query-cpus-fast", "virDomainGetInfo"...
};

enum class DomainEventType { kCrashed, kStarted, kRebooted, kStopped, kPaused, kResumed };
struct DomainEvent {
  DomainEventType type = DomainEventType::kCrashed;
  Timestamp at{};
  std::string detail;  // libvirt's detail string, e.g. "panicked"
};

struct DomainIdentity {
  std::string name;
  std::string uuid;  // the engine keys domains by uuid, or by name when uuid is empty
};

struct DomainObservation {
  DomainIdentity domain;
  bool paused = false;                  // paused by management: no stall rule applies
  std::vector<VcpuHostView> vcpus;
  std::vector<HostThreadView> other_threads;  // the rest of the qemu process's threads
  int main_loop_tid = 0;                // the qemu main thread (== qemu pid); 0 if unknown
  std::optional<GuestView> guest;       // set on ticks where a snapshot was taken
  MonitorStatus monitor;
  std::vector<DomainEvent> events;      // lifecycle events since the previous observation
};

}  // namespace stallmon::diagnosis
