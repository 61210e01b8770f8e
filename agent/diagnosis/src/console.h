// SPDX-License-Identifier: Apache-2.0
// The guest console as the engine has seen it across snapshots, and the oops/panic text in it.
// Each snapshot carries only the last few printk records (20 on the daemon's tick, 200 while
// panic_cpu is set), so an oops printed across snapshots is joined from their overlapping tails.
// Internal.
#pragma once

#include <cstddef>
#include <deque>
#include <optional>
#include <string>
#include <vector>

namespace stallmon::diagnosis {

class ConsoleLog {
 public:
  explicit ConsoleLog(std::size_t max_lines = 300) : max_lines_(max_lines) {}

  // Appends the records of `tail` (oldest first) that follow what was already seen: the longest
  // suffix of the log that is a prefix of the tail is the overlap. An empty tail (unreadable
  // this time) adds nothing. Bounded: the oldest lines go first.
  void merge(const std::vector<std::string>& tail);
  const std::deque<std::string>& lines() const { return lines_; }
  void clear() { lines_.clear(); }

 private:
  std::size_t max_lines_;
  std::deque<std::string> lines_;
};

struct PanicText {
  // "Kernel panic - not syncing: sysrq triggered crash" (from the panic line or the
  // "---[ end Kernel panic ... ]---" trailer); empty if neither is in the log.
  std::string message;
  // The oops/panic block: from its first line ("BUG: ...", "Oops: ...", "sysrq: Trigger a
  // crash", the panic line...) to the end of the log, at most `max_lines` (the first lines of
  // the block are kept: they name the fault; the end of a long trace is dropped).
  std::vector<std::string> lines;
};

PanicText extract_panic_text(const std::deque<std::string>& log, std::size_t max_lines = 60);

// A kernel stack overflow named by an oops/panic text: "corrupted stack end detected inside
// scheduler" (kernel/sched/core.c, CONFIG_SCHED_STACK_END_CHECK: the STACK_END_MAGIC was gone
// when the task scheduled), "stack guard page was hit" (x86 handle_stack_overflow, VMAP_STACK:
// "BUG: TASK stack guard page was hit at ...") or "kernel stack overflow" (its double-fault
// wording on older kernels).
struct StackOverflowNote {
  std::string line;  // the line that names it
  // From the oops header "CPU: 1 PID: 212 Comm: stackend/1 ..." (6.12: "CPU: 1 UID: 0 PID: ..."),
  // the first one from the naming line on; -1 / empty when the text has none.
  int cpu = -1;
  int pid = -1;
  std::string comm;
};
std::optional<StackOverflowNote> find_stack_overflow(const std::vector<std::string>& text);

}  // namespace stallmon::diagnosis
