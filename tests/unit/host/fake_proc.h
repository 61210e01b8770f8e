// SPDX-License-Identifier: Apache-2.0
// Builds fake /proc/PID/task/TID trees (and cgroup files) in a FakeHostFs or in a directory.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "stallmon/host/host_fs.h"
#include "stallmon/host/thread_stat_source.h"

namespace stallmon::host::testing {

struct FakeThread {
  int32_t tid = 0;
  std::string comm = "qemu-system-x86";
  char state = 'S';
  uint64_t utime = 0, stime = 0;
  uint64_t starttime = 1000;
  int32_t cpu = 0;
  uint64_t run_ns = 0, wait_ns = 0, timeslices = 0;
  uint64_t voluntary = 0, involuntary = 0;
  int32_t tracer = 0;
  std::string cgroup = "0::/\n";
  std::string wchan = "0";
  std::string stack;
};

// The text of /proc/.../stat as Linux 6.x prints it (52 fields).
inline std::string stat_text(const FakeThread& t) {
  std::vector<std::string> f(53, "0");  // f[k] is field k (1-based)
  f[1] = std::to_string(t.tid);
  f[2] = "(" + t.comm + ")";
  f[3] = std::string(1, t.state);
  f[4] = "1";
  f[8] = "-1";
  f[9] = "4194560";
  f[14] = std::to_string(t.utime);
  f[15] = std::to_string(t.stime);
  f[18] = "20";
  f[20] = "12";
  f[22] = std::to_string(t.starttime);
  f[23] = "4257259520";
  f[25] = "18446744073709551615";
  f[39] = std::to_string(t.cpu);
  std::string out;
  for (size_t k = 1; k < f.size(); ++k) out += f[k] + (k + 1 < f.size() ? " " : "\n");
  return out;
}

inline std::string status_text(const FakeThread& t) {
  return "Name:\t" + t.comm.substr(0, 15) + "\nUmask:\t0022\nState:\t" + t.state +
         " (sleeping)\nTgid:\t1\nNgid:\t0\nPid:\t" + std::to_string(t.tid) +
         "\nPPid:\t1\nTracerPid:\t" + std::to_string(t.tracer) +
         "\nUid:\t0\t0\t0\t0\nThreads:\t12\nSigQ:\t0/63704\nCpus_allowed:\tff\n"
         "Cpus_allowed_list:\t0-7\nvoluntary_ctxt_switches:\t" +
         std::to_string(t.voluntary) + "\nnonvoluntary_ctxt_switches:\t" +
         std::to_string(t.involuntary) + "\n";
}

inline std::string schedstat_text(const FakeThread& t) {
  return std::to_string(t.run_ns) + " " + std::to_string(t.wait_ns) + " " +
         std::to_string(t.timeslices) + "\n";
}

inline std::string task_dir(int32_t pid, int32_t tid) {
  return "proc/" + std::to_string(pid) + "/task/" + std::to_string(tid);
}

// Writes (or rewrites) every file of the thread. Rewriting keeps kept handles valid.
inline void put_thread(FakeHostFs& fs, int32_t pid, const FakeThread& t) {
  std::string d = task_dir(pid, t.tid);
  fs.set_file(d + "/stat", stat_text(t));
  fs.set_file(d + "/schedstat", schedstat_text(t));
  fs.set_file(d + "/status", status_text(t));
  fs.set_file(d + "/cgroup", t.cgroup);
  fs.set_file(d + "/wchan", t.wchan);
  fs.set_file(d + "/stack", t.stack);
  // The main thread's stat is also the process's.
  if (t.tid == pid) fs.set_file("proc/" + std::to_string(pid) + "/stat", stat_text(t));
}

// What a ThreadStatSource pass reports for the thread (the fake sources of the unit tests).
inline ThreadStat thread_stat(int32_t tgid, const FakeThread& t) {
  static const uint64_t ns_per_tick = 1'000'000'000ULL / static_cast<uint64_t>(sysconf(_SC_CLK_TCK));
  ThreadStat st;
  st.tgid = tgid;
  st.tid = t.tid;
  st.state = t.state;
  st.traced = t.tracer != 0;
  st.cpu = t.cpu;
  st.run_ns = t.run_ns;
  st.wait_ns = t.wait_ns;
  st.timeslices = t.timeslices;
  st.voluntary_switches = t.voluntary;
  st.involuntary_switches = t.involuntary;
  st.start_boottime_ns = t.starttime * ns_per_tick;
  std::strncpy(st.comm, t.comm.c_str(), sizeof st.comm - 1);
  return st;
}

}  // namespace stallmon::host::testing
