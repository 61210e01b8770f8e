// SPDX-License-Identifier: Apache-2.0
// Where per-thread scheduler statistics come from: one kernel pass for every watched process
// (a BPF task iterator), or, when that is not available, the /proc reader per thread that
// ProcessSampler has always used.
//
// The daemon chooses once at start (choose_thread_stat_source) and reports the choice. With a
// source, a tick is: source.fresh(now, period / 2) (the first caller in a period runs the pass,
// the others reuse it) → ProcessSampler::sample_once(pass) per domain. Without one (the
// fallback), ProcessSampler::sample_once() reads /proc itself.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "stallmon/base/result.h"

namespace stallmon::host {

// What one pass knows about one thread: the fields the /proc sampler reads from stat,
// schedstat and status, read at one instant per thread by the kernel itself.
struct ThreadStat {
  int32_t tgid = 0;
  int32_t tid = 0;
  char state = '?';                 // the /proc letter (R S D T t X Z P I)
  bool traced = false;              // ptrace-attached (status TracerPid != 0)
  int32_t cpu = -1;                 // stat field 39
  uint64_t run_ns = 0;              // schedstat 1: se.sum_exec_runtime
  uint64_t wait_ns = 0;             // schedstat 2: sched_info.run_delay
  uint64_t timeslices = 0;          // schedstat 3: sched_info.pcount
  uint64_t voluntary_switches = 0;  // status voluntary_ctxt_switches (nvcsw)
  uint64_t involuntary_switches = 0;  // status nonvoluntary_ctxt_switches (nivcsw)
  uint64_t start_boottime_ns = 0;   // stat field 22 × ns per clock tick, before rounding
  char comm[16] = {};
  // Kernfs ids (cgroupfs inode numbers) of the thread's unified-hierarchy cgroup and of its cpu
  // controller's cgroup, when the source can read them (the BPF source); 0 = unknown. A thread's
  // /proc/TID/cgroup needs re-reading only when one of them changed.
  uint64_t cgroup_v2_id = 0;
  uint64_t cpu_cgroup_id = 0;
  // The kernel stack (return addresses, innermost first, scheduler functions skipped as in
  // /proc/TID/stack), present only for threads in the source's stack states and at most once
  // per stack interval per thread (and again when the thread's state letter changes).
  uint32_t stack_begin = 0;  // index into ThreadStatPass::frames
  uint16_t stack_len = 0;
  bool stack_read = false;   // a stack was taken this pass (stack_len may still be 0)
  bool stack_error = false;  // a stack was wanted and the kernel could not unwind it

  // stat field 22 in clock ticks, what ThreadSampler compares to detect tid reuse.
  uint64_t starttime_ticks() const;
};

// One pass: every thread of every watched process, sorted by (tgid, tid). Immutable once
// published, shared by every reader of that period.
struct ThreadStatPass {
  int64_t t_ns = 0;          // monotonic time the pass started
  uint64_t generation = 0;   // 1, 2, ... per source
  std::vector<ThreadStat> threads;
  std::vector<uint64_t> frames;  // kernel return addresses, see ThreadStat::stack_begin
  std::vector<int32_t> watched;  // the tgids the pass was asked for, sorted

  // The threads of tgid (empty when it was not watched, or has exited).
  std::span<const ThreadStat> threads_of(int32_t tgid) const;
  const ThreadStat* find(int32_t tgid, int32_t tid) const;
  bool was_watched(int32_t tgid) const;
  std::span<const uint64_t> stack(const ThreadStat& t) const {
    return std::span<const uint64_t>(frames).subspan(t.stack_begin, t.stack_len);
  }
};

// Kernel addresses → /proc-style frames ("kthreadd+0x2f0/0x310", "[module]" appended for
// module text). Loaded from /proc/kallsyms on first use (a few MB, only once a stack appears);
// reloaded at most once a minute when an address falls outside every known symbol (a module
// was loaded).
class KernelSymbols {
 public:
  explicit KernelSymbols(std::string kallsyms_path = "/proc/kallsyms");
  // Parses kallsyms text (tests, and the loader). Lines with address 0 (kptr_restrict) are
  // dropped: then nothing symbolizes and frames come back as hex addresses.
  void load_text(std::string_view text);
  // "name+0xoff/0xsize", or "0x..." when unknown.
  std::string frame(uint64_t addr);
  // The symbol name alone, what /proc/TID/wchan prints; "" when unknown.
  std::string name(uint64_t addr);
  size_t size() const { return addrs_.size(); }
  size_t memory_bytes() const;

 private:
  struct Hit {
    bool found = false;
    std::string_view name, module;
    uint64_t offset = 0, size = 0;
  };
  Hit lookup(uint64_t addr);
  void ensure_loaded();

  std::string path_;
  bool loaded_ = false;
  int64_t last_reload_ns_ = 0;
  std::vector<uint64_t> addrs_;      // sorted
  std::vector<uint32_t> name_off_;   // into names_: "name\0module\0"
  std::string names_;
};

class ThreadStatSource {
 public:
  virtual ~ThreadStatSource() = default;
  // "bpf-task-iter".
  virtual std::string_view kind() const = 0;
  // What it found at start (kernel features, quirks worked around): for status output.
  virtual std::string description() const = 0;

  // The processes a pass covers. watch() fails when the source's capacity is reached.
  virtual Result<void> watch(int32_t tgid) = 0;
  virtual void unwatch(int32_t tgid) = 0;

  // Runs one pass now. Thread-safe: passes are serialised.
  Result<std::shared_ptr<const ThreadStatPass>> collect(int64_t now_ns);
  // The newest pass when it started at most max_age_ns before now_ns, else a new pass: with
  // max_age = half the tick period, one pass serves every domain's tick of that period (also
  // when several threads ask at once: the first runs it, the others wait and reuse it).
  Result<std::shared_ptr<const ThreadStatPass>> fresh(int64_t now_ns, int64_t max_age_ns);
  // The newest pass, or nullptr before the first.
  std::shared_ptr<const ThreadStatPass> latest() const;

  // Symbolizes a pass's stack the way /proc/TID/stack and wchan print it.
  std::vector<std::string> frames(std::span<const uint64_t> stack);
  std::string wchan(std::span<const uint64_t> stack);

 protected:
  virtual Result<void> run_pass(ThreadStatPass& out) = 0;

 private:
  Result<std::shared_ptr<const ThreadStatPass>> collect_locked(int64_t now_ns);  // mu_ held

  mutable std::mutex mu_;
  std::shared_ptr<const ThreadStatPass> latest_;
  uint64_t generation_ = 0;
  std::mutex sym_mu_;
  KernelSymbols symbols_;
};

struct StatSourceOptions {
  bool allow_bpf = true;  // false: always the /proc reader (config, tests)
  // Threads whose stack (the blocking point) a pass reads, by /proc letter. D, T and t are
  // what the /proc sampler reads wchan and stack for.
  std::string stack_states = "DTt";
  int64_t stack_interval_ns = 1'000'000'000;
  // One iterator per watched process when the kernel supports it (6.1+): a pass then never
  // touches the host's other tasks. false: always one walk of every task (tests, benchmarks).
  bool per_process_iterators = true;
};

struct StatSourceChoice {
  std::unique_ptr<ThreadStatSource> source;  // nullptr: the /proc reader per thread
  std::string kind;    // "bpf-task-iter" or "proc"
  std::string reason;  // why this one (e.g. "BPF: loaded, kernel 6.18 BTF" or why not BPF)
};

// Tries the BPF task iterator (built in, BTF present, privilege to load and attach, a pass over
// this process's own threads checked against /proc) and falls back to /proc with the reason.
StatSourceChoice choose_thread_stat_source(const StatSourceOptions& opts = {});

// Whether this build has the BPF source compiled in (clang, bpftool and BTF at build time).
bool bpf_source_built();

// The kernel's task_state_index() as a /proc letter, from task_struct::__state and exit_state.
char task_state_letter(uint32_t state, uint32_t exit_state);

}  // namespace stallmon::host
