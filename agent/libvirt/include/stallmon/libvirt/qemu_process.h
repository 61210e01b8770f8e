// SPDX-License-Identifier: Apache-2.0
// Finding a domain's qemu process and its vCPU threads without libvirt: pure parsing of QMP
// replies and of /proc, so it works while the monitor hangs and is unit-tested on fake /proc trees.
// Every function takes the /proc root so tests can point it at a directory they made.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/libvirt/domain.h"

namespace stallmon::libvirt {

// Upper bound on vCPUs accepted from any source (QEMU's x86 maximum is 4096 with x2apic).
inline constexpr size_t kMaxVcpus = 4096;

// Parses the reply to QMP `query-cpus-fast`: either the whole reply object
// ({"return": [{"cpu-index": 0, "thread-id": 1234, ...}, ...], "id": ...}) or the bare array.
// Returns the vCPUs sorted by index with names left empty. An {"error": ...} reply, a missing or
// mistyped field, a non-positive thread id, a duplicate index or more than kMaxVcpus entries is an
// error (kCorrupt, or kNotFound for a QMP error). Never throws.
Result<std::vector<VcpuThread>> parse_query_cpus_fast(std::string_view reply);

// Parses a vCPU thread name: "CPU 3/KVM", "CPU 12/TCG" (any accelerator suffix). Returns the vCPU
// index, or -1 if the name is not a vCPU thread's.
int parse_vcpu_thread_name(std::string_view comm);

// Lists PROC/PID/task/*/comm and returns the threads named like vCPU threads, sorted by index.
// kNotFound if the process does not exist, kNotFound if it has no vCPU-named thread (e.g. qemu
// started without debug-threads=on), kCorrupt on two threads with the same index.
Result<std::vector<VcpuThread>> vcpu_threads_from_proc(const std::string& proc_root, pid_t pid);

// Fills VcpuThread::name from PROC/PID/task/TID/comm (trailing newline removed); threads whose
// comm cannot be read keep an empty name. Returns how many names were filled.
size_t fill_thread_names(const std::string& proc_root, pid_t pid, std::vector<VcpuThread>& vcpus);

// libvirt's per-vCPU cgroups (when it runs the domain in cgroups): the qemu process sits in
// .../libvirt/emulator (PROC/PID/cgroup), and vCPU n's thread in the sibling .../libvirt/vcpuN
// (cgroup.threads on v2, tasks on v1; CGROUP_ROOT is where the hierarchies are mounted, e.g.
// /sys/fs/cgroup). kNotFound when the domain has no per-vCPU cgroups (cgroup_controllers = []),
// kCorrupt when a vCPU cgroup holds other than exactly one thread of PID.
Result<std::vector<VcpuThread>> vcpu_threads_from_cgroup(const std::string& proc_root,
                                                         const std::string& cgroup_root, pid_t pid);

// The vCPU map without any monitor: thread names, cross-checked with the per-vCPU cgroups when
// libvirt made them (both sources must agree), and with `expected_online` (libvirt's count of
// online vCPUs; 0 = unknown). A count that differs is kCorrupt: a map that misses a vCPU would
// make a frozen one invisible.
Result<std::vector<VcpuThread>> vcpu_threads_without_monitor(const std::string& proc_root,
                                                             const std::string& cgroup_root, pid_t pid,
                                                             unsigned expected_online);

// Reads a small /proc (or run-dir) file whole, at most `limit` bytes (kLimit past that).
Result<std::string> read_proc_text(const std::string& path, size_t limit);

// Checks that every tid is a thread of PID (PROC/PID/task/TID exists).
Result<void> check_threads_belong(const std::string& proc_root, pid_t pid,
                                  const std::vector<VcpuThread>& vcpus);

// True if a qemu command line (NUL-separated, as in /proc/PID/cmdline) belongs to the domain:
// it has `-uuid UUID`, or a `-name` argument `guest=NAME` (QEMU doubles commas in NAME) or `NAME`.
bool cmdline_matches_domain(std::string_view cmdline, std::string_view uuid, std::string_view name);

// Reads the pid libvirt wrote to PIDFILE (e.g. /run/libvirt/qemu/NAME.pid) and validates it
// against PROC/PID/cmdline. kNotFound if the file or process is missing, kCorrupt if the file is
// not a pid, kInvalidArgument if the process is some other domain's (a stale file after a crash).
Result<pid_t> qemu_pid_from_pidfile(const std::string& pidfile, const std::string& proc_root,
                                    std::string_view uuid, std::string_view name);

// Scans PROC/*/cmdline for the qemu of the domain with UUID (fallback when there is no pid file,
// e.g. a different run directory). kNotFound if none.
Result<pid_t> find_qemu_pid_by_uuid(const std::string& proc_root, std::string_view uuid,
                                    std::string_view name);

}  // namespace stallmon::libvirt
