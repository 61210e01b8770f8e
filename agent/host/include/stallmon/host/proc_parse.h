// SPDX-License-Identifier: Apache-2.0
// Parsers for the per-thread /proc files and cgroup files the host sampler reads.
//
// Every function is pure: it takes the text of one file and returns the fields or an Error of
// code kCorrupt. The text is untrusted (a fuzzer, a truncated read, a hostile comm): no parser
// asserts, reads out of bounds or allocates without bound.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "stallmon/base/result.h"

namespace stallmon::host {

// /proc/PID/task/TID/stat. The comm field (2) is free text that may contain spaces and ')':
// the parser locates the LAST ')' and counts fields from there.
struct TaskStat {
  int32_t tid = 0;
  std::string comm;          // between the first '(' and the last ')', at most 64 bytes kept
  char state = '?';          // field 3: R S D T t Z X I P W K ...
  uint64_t utime_ticks = 0;  // field 14, clock ticks (sysconf(_SC_CLK_TCK))
  uint64_t stime_ticks = 0;  // field 15
  uint64_t starttime_ticks = 0;  // field 22: identifies the thread across tid reuse
  int32_t processor = -1;    // field 39: host CPU it last ran on; -1 if the kernel omits it
};
Result<TaskStat> parse_task_stat(std::string_view text);

// /proc/PID/task/TID/schedstat: "run_ns wait_ns timeslices". wait_ns is the run-queue delay:
// the time the thread was runnable but not running (what a guest sees as steal).
struct SchedStat {
  uint64_t run_ns = 0;
  uint64_t wait_ns = 0;
  uint64_t timeslices = 0;
};
Result<SchedStat> parse_schedstat(std::string_view text);

// The three fields of /proc/PID/task/TID/status the sampler needs. All three must be present.
struct TaskStatus {
  uint64_t voluntary_ctxt_switches = 0;
  uint64_t nonvoluntary_ctxt_switches = 0;
  int32_t tracer_pid = 0;  // non-zero while ptrace-attached
};
Result<TaskStatus> parse_task_status(std::string_view text);

// /proc/PID/task/TID/wchan: a kernel symbol name, or "0"/empty when not waiting (or hidden).
// Returns the symbol, or "" for none. Never fails; the result is at most 128 bytes.
std::string parse_wchan(std::string_view text);

// /proc/PID/task/TID/stack: lines "[<0>] symbol+0x1f/0x40". Returns the frames without the
// address prefix, innermost first, at most kMaxStackFrames frames of at most 256 bytes each.
inline constexpr size_t kMaxStackFrames = 64;
std::vector<std::string> parse_stack(std::string_view text);

// The function of a /proc stack frame, "kernel_clone+0x9d/0x3a0 [mod]" -> "kernel_clone": what
// wchan would print for a stack whose first frame it is (both skip scheduler functions).
std::string frame_function(std::string_view frame);

// cgroup CPU bandwidth statistics, normalised across cgroup versions.
enum class CgroupVersion : uint8_t { kNone = 0, kV1 = 1, kV2 = 2 };
struct CgroupCpuStat {
  uint64_t nr_periods = 0;
  uint64_t nr_throttled = 0;
  uint64_t throttled_ns = 0;  // v1 throttled_time is ns; v2 throttled_usec is converted
};
// v1 cpu controller's cpu.stat: nr_periods, nr_throttled, throttled_time (ns). nr_throttled and
// throttled_time are required; unknown keys (nr_bursts, burst_time, ...) are ignored.
Result<CgroupCpuStat> parse_cgroup_v1_cpu_stat(std::string_view text);
// v2 cpu.stat: usage_usec ... nr_periods, nr_throttled, throttled_usec. Without the cpu
// controller enabled only the usage lines exist: that is kNotFound (no throttling data), not
// kCorrupt.
Result<CgroupCpuStat> parse_cgroup_v2_cpu_stat(std::string_view text);

// One line of /proc/PID/task/TID/cgroup: "hierarchy-id:controller,list:/path".
struct CgroupMembership {
  uint32_t hierarchy_id = 0;
  std::vector<std::string> controllers;  // empty for the v2 line ("0::/path") and named ones
  std::string path;                      // starts with '/'
};
Result<std::vector<CgroupMembership>> parse_proc_cgroup(std::string_view text);

// Where the thread's cpu controller lives: the v1 hierarchy that lists "cpu" among its
// controllers if there is one, otherwise the v2 line. kNone when neither is present.
struct CpuCgroup {
  CgroupVersion version = CgroupVersion::kNone;
  std::vector<std::string> controllers;  // v1: the hierarchy's controllers ("cpu", "cpuacct")
  std::string path;
};
CpuCgroup find_cpu_cgroup(const std::vector<CgroupMembership>& memberships);

}  // namespace stallmon::host
