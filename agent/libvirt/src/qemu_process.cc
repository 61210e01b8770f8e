// SPDX-License-Identifier: Apache-2.0
#include "stallmon/libvirt/qemu_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

namespace stallmon::libvirt {
namespace {

// Reads a small /proc or run-dir file whole (bounded: these files are tiny, a huge one is bogus).
Result<std::string> read_small_file(const std::string& path, size_t limit = 1 << 20) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    Error e = Error::io("open " + path, err);
    if (err == ENOENT || err == ESRCH) e.code = ErrorCode::kNotFound;
    return e;
  }
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      Error e = Error::io("read " + path, err);
      if (err == ESRCH) e.code = ErrorCode::kNotFound;  // the process exited meanwhile
      return e;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > limit) {
      ::close(fd);
      return Error(ErrorCode::kLimit, path + " is larger than " + std::to_string(limit) + " bytes");
    }
  }
  ::close(fd);
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\0' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  while (!s.empty() && (s.front() == ' ' || s.front() == '\n')) s.remove_prefix(1);
  return s;
}

// Parses a positive decimal that fits pid_t; -1 otherwise.
long parse_pid(std::string_view s) {
  if (s.empty() || s.size() > 10) return -1;
  long v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  if (v <= 0 || v > 0x7fffffffL) return -1;
  return v;
}

std::string pid_dir(const std::string& proc_root, pid_t pid) {
  return proc_root + "/" + std::to_string(pid);
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

Result<std::vector<VcpuThread>> parse_query_cpus_fast(std::string_view reply) {
  using nlohmann::json;
  try {
    json doc = json::parse(reply.begin(), reply.end(), nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded()) return Error(ErrorCode::kCorrupt, "query-cpus-fast reply is not JSON");
    const json* list = &doc;
    if (doc.is_object()) {
      if (auto err = doc.find("error"); err != doc.end()) {
        std::string desc = err->is_object() && err->contains("desc") && (*err)["desc"].is_string()
                               ? (*err)["desc"].get<std::string>()
                               : err->dump();
        return Error(ErrorCode::kNotFound, "query-cpus-fast failed: " + desc);
      }
      auto ret = doc.find("return");
      if (ret == doc.end()) return Error(ErrorCode::kCorrupt, "query-cpus-fast reply has no \"return\"");
      list = &*ret;
    }
    if (!list->is_array()) return Error(ErrorCode::kCorrupt, "query-cpus-fast \"return\" is not an array");
    if (list->size() > kMaxVcpus) {
      return Error(ErrorCode::kLimit, "query-cpus-fast lists " + std::to_string(list->size()) + " CPUs");
    }
    std::vector<VcpuThread> out;
    std::set<int> seen;
    for (size_t i = 0; i < list->size(); ++i) {
      const json& cpu = (*list)[i];
      std::string where = "query-cpus-fast entry " + std::to_string(i);
      if (!cpu.is_object()) return Error(ErrorCode::kCorrupt, where + " is not an object");
      auto idx = cpu.find("cpu-index");
      auto tid = cpu.find("thread-id");
      if (idx == cpu.end() || !idx->is_number_integer()) {
        return Error(ErrorCode::kCorrupt, where + ": missing or non-integer cpu-index");
      }
      if (tid == cpu.end() || !tid->is_number_integer()) {
        return Error(ErrorCode::kCorrupt, where + ": missing or non-integer thread-id");
      }
      int64_t index = idx->get<int64_t>();
      int64_t thread = tid->get<int64_t>();
      if (index < 0 || index >= static_cast<int64_t>(kMaxVcpus)) {
        return Error(ErrorCode::kCorrupt, where + ": cpu-index " + std::to_string(index) + " out of range");
      }
      if (thread <= 0 || thread > 0x7fffffffLL) {
        return Error(ErrorCode::kCorrupt, where + ": thread-id " + std::to_string(thread) + " out of range");
      }
      if (!seen.insert(static_cast<int>(index)).second) {
        return Error(ErrorCode::kCorrupt, where + ": duplicate cpu-index " + std::to_string(index));
      }
      out.push_back(VcpuThread{static_cast<int>(index), static_cast<pid_t>(thread), {}});
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
    return out;
  } catch (const std::exception& e) {
    // Unreachable with the checks above; kept so hostile input can never throw out of here.
    return Error(ErrorCode::kCorrupt, std::string("query-cpus-fast reply: ") + e.what());
  }
}

int parse_vcpu_thread_name(std::string_view comm) {
  comm = trim(comm);
  constexpr std::string_view kPrefix = "CPU ";
  if (comm.substr(0, kPrefix.size()) != kPrefix) return -1;
  comm.remove_prefix(kPrefix.size());
  size_t digits = 0;
  long index = 0;
  while (digits < comm.size() && comm[digits] >= '0' && comm[digits] <= '9') {
    index = index * 10 + (comm[digits] - '0');
    if (++digits > 5) return -1;
  }
  // "CPU 3/KVM", "CPU 3/TCG": the accelerator name after the slash may be cut by the 15-byte
  // comm limit, so only require the slash.
  if (digits == 0 || digits >= comm.size() || comm[digits] != '/') return -1;
  if (index >= static_cast<long>(kMaxVcpus)) return -1;
  return static_cast<int>(index);
}

Result<std::vector<VcpuThread>> vcpu_threads_from_proc(const std::string& proc_root, pid_t pid) {
  std::string task_dir = pid_dir(proc_root, pid) + "/task";
  DIR* dir = ::opendir(task_dir.c_str());
  if (!dir) {
    int err = errno;
    Error e = Error::io("opendir " + task_dir, err);
    if (err == ENOENT || err == ESRCH) e.code = ErrorCode::kNotFound;
    return e;
  }
  std::vector<VcpuThread> out;
  std::set<int> seen;
  Result<void> status = Ok();
  size_t entries = 0;
  while (dirent* de = ::readdir(dir)) {
    long tid = parse_pid(de->d_name);
    if (tid < 0) continue;
    if (++entries > 65536) {
      status = Error(ErrorCode::kLimit, task_dir + " has more than 65536 threads");
      break;
    }
    auto comm = read_small_file(task_dir + "/" + de->d_name + "/comm", 256);
    if (!comm.ok()) continue;  // the thread exited while we listed: not a vCPU we can use
    int index = parse_vcpu_thread_name(*comm);
    if (index < 0) continue;
    if (!seen.insert(index).second) {
      status = Error(ErrorCode::kCorrupt, task_dir + ": two threads named for vCPU " + std::to_string(index));
      break;
    }
    out.push_back(VcpuThread{index, static_cast<pid_t>(tid), std::string(trim(*comm))});
    if (out.size() > kMaxVcpus) {
      status = Error(ErrorCode::kLimit, task_dir + " has more than 4096 vCPU threads");
      break;
    }
  }
  ::closedir(dir);
  if (!status.ok()) return std::move(status).error();
  if (out.empty()) {
    return Error(ErrorCode::kNotFound,
                 "no thread of pid " + std::to_string(pid) + " is named \"CPU n/...\" (debug-threads off?)");
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
  return out;
}

size_t fill_thread_names(const std::string& proc_root, pid_t pid, std::vector<VcpuThread>& vcpus) {
  size_t filled = 0;
  for (auto& v : vcpus) {
    auto comm = read_small_file(pid_dir(proc_root, pid) + "/task/" + std::to_string(v.tid) + "/comm", 256);
    if (comm.ok()) {
      v.name = std::string(trim(*comm));
      ++filled;
    } else {
      v.name.clear();
    }
  }
  return filled;
}

Result<std::string> read_proc_text(const std::string& path, size_t limit) { return read_small_file(path, limit); }

Result<std::vector<VcpuThread>> vcpu_threads_from_cgroup(const std::string& proc_root, const std::string& cgroup_root,
                                                         pid_t pid) {
  STALLMON_TRY(std::string cg, read_small_file(pid_dir(proc_root, pid) + "/cgroup", 64 << 10));
  // "0::/machine.slice/machine-qemu\x2d1\x2dvm.scope/libvirt/emulator" (v2) or
  // "4:cpu,cpuacct:/machine.slice/.../libvirt/emulator" (v1). Prefer v2, then cpu (v1).
  std::string dir, file;
  size_t pos = 0;
  while (pos < cg.size()) {
    size_t nl = cg.find('\n', pos);
    std::string_view line = std::string_view(cg).substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? cg.size() : nl + 1;
    size_t c1 = line.find(':');
    size_t c2 = c1 == std::string_view::npos ? c1 : line.find(':', c1 + 1);
    if (c2 == std::string_view::npos) continue;
    std::string_view controllers = line.substr(c1 + 1, c2 - c1 - 1);
    std::string_view path = line.substr(c2 + 1);
    constexpr std::string_view kEmu = "/libvirt/emulator";
    if (!path.ends_with(kEmu) || path.find("..") != std::string_view::npos) continue;
    std::string parent(path.substr(0, path.size() - std::string_view("/emulator").size()));
    if (controllers.empty()) {
      dir = cgroup_root + parent;  // v2 wins
      file = "cgroup.threads";
      break;
    }
    bool cpu = false;
    for (size_t s = 0; s <= controllers.size();) {
      size_t e = controllers.find(',', s);
      if (e == std::string_view::npos) e = controllers.size();
      if (controllers.substr(s, e - s) == "cpu") cpu = true;
      s = e + 1;
    }
    if (cpu && dir.empty()) {
      dir = cgroup_root + "/" + std::string(controllers) + parent;
      file = "tasks";
    }
  }
  if (dir.empty()) {
    return Error(ErrorCode::kNotFound, "pid " + std::to_string(pid) + " is not in a libvirt emulator cgroup");
  }
  std::vector<VcpuThread> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return Error(ErrorCode::kNotFound, "opendir " + dir + ": " + std::strerror(errno));
  Result<void> status = Ok();
  while (dirent* de = ::readdir(d)) {
    std::string_view n = de->d_name;
    if (!n.starts_with("vcpu")) continue;
    long index = parse_pid(n.substr(4));
    if (n == "vcpu0") index = 0;
    if (index < 0 || index >= static_cast<long>(kMaxVcpus)) continue;
    auto tids = read_small_file(dir + "/" + std::string(n) + "/" + file, 64 << 10);
    if (!tids.ok()) continue;
    std::string_view t = trim(*tids);
    long tid = parse_pid(t);
    if (tid < 0) {
      status = Error(ErrorCode::kCorrupt, dir + "/" + std::string(n) + " holds " +
                                              (t.empty() ? std::string("no thread") : std::string("several threads")));
      break;
    }
    out.push_back(VcpuThread{static_cast<int>(index), static_cast<pid_t>(tid), {}});
    if (out.size() > kMaxVcpus) {
      status = Error(ErrorCode::kLimit, dir + " has more than 4096 vCPU cgroups");
      break;
    }
  }
  ::closedir(d);
  if (!status.ok()) return std::move(status).error();
  if (out.empty()) return Error(ErrorCode::kNotFound, dir + " has no vcpuN cgroup");
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
  STALLMON_TRY_VOID(check_threads_belong(proc_root, pid, out));
  fill_thread_names(proc_root, pid, out);
  return out;
}

Result<std::vector<VcpuThread>> vcpu_threads_without_monitor(const std::string& proc_root,
                                                             const std::string& cgroup_root, pid_t pid,
                                                             unsigned expected_online) {
  auto names = vcpu_threads_from_proc(proc_root, pid);
  auto groups = cgroup_root.empty() ? Result<std::vector<VcpuThread>>(Error(ErrorCode::kNotFound, "no cgroup root"))
                                    : vcpu_threads_from_cgroup(proc_root, cgroup_root, pid);
  if (!names.ok() && !groups.ok()) {
    return std::move(names).error().context("and " + groups.error().message);
  }
  if (names.ok() && groups.ok()) {
    bool same = names->size() == groups->size() &&
                std::equal(names->begin(), names->end(), groups->begin(),
                           [](const auto& a, const auto& b) { return a.index == b.index && a.tid == b.tid; });
    if (!same) return Error(ErrorCode::kCorrupt, "vCPU thread names and libvirt's vCPU cgroups disagree");
  }
  std::vector<VcpuThread> out = names.ok() ? std::move(names).value() : std::move(groups).value();
  if (expected_online != 0 && out.size() != expected_online) {
    return Error(ErrorCode::kCorrupt, "found " + std::to_string(out.size()) + " vCPU threads, libvirt reports " +
                                          std::to_string(expected_online) + " online vCPUs");
  }
  return out;
}

Result<void> check_threads_belong(const std::string& proc_root, pid_t pid,
                                  const std::vector<VcpuThread>& vcpus) {
  for (const auto& v : vcpus) {
    std::string path = pid_dir(proc_root, pid) + "/task/" + std::to_string(v.tid);
    if (::access(path.c_str(), F_OK) != 0) {
      return Error(ErrorCode::kNotFound, "vCPU " + std::to_string(v.index) + " thread " +
                                             std::to_string(v.tid) + " is not a thread of pid " +
                                             std::to_string(pid));
    }
  }
  return Ok();
}

bool cmdline_matches_domain(std::string_view cmdline, std::string_view uuid, std::string_view name) {
  std::vector<std::string_view> args;
  size_t pos = 0;
  while (pos < cmdline.size()) {
    size_t end = cmdline.find('\0', pos);
    if (end == std::string_view::npos) end = cmdline.size();
    args.push_back(cmdline.substr(pos, end - pos));
    pos = end + 1;
  }
  std::string want_uuid = lower(uuid);
  // QEMU option values escape ',' as ",,".
  std::string escaped_name;
  for (char c : name) {
    escaped_name += c;
    if (c == ',') escaped_name += ',';
  }
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (!want_uuid.empty() && args[i] == "-uuid" && lower(args[i + 1]) == want_uuid) return true;
    if (!name.empty() && args[i] == "-name") {
      std::string_view v = args[i + 1];
      std::string guest = "guest=" + escaped_name;
      if (v == guest || v.substr(0, guest.size() + 1) == guest + ",") return true;
      if (v == escaped_name || v.substr(0, escaped_name.size() + 1) == escaped_name + ",") return true;
    }
  }
  return false;
}

Result<pid_t> qemu_pid_from_pidfile(const std::string& pidfile, const std::string& proc_root,
                                    std::string_view uuid, std::string_view name) {
  STALLMON_TRY(std::string text, read_small_file(pidfile, 64));
  long pid = parse_pid(trim(text));
  if (pid < 0) return Error(ErrorCode::kCorrupt, pidfile + " does not hold a pid");
  auto cmdline = read_small_file(pid_dir(proc_root, static_cast<pid_t>(pid)) + "/cmdline");
  if (!cmdline.ok()) {
    return std::move(cmdline).error().context("pid " + std::to_string(pid) + " from " + pidfile);
  }
  if (!cmdline_matches_domain(*cmdline, uuid, name)) {
    return Error(ErrorCode::kInvalidArgument, "pid " + std::to_string(pid) + " from " + pidfile +
                                                  " is not the qemu of domain " + std::string(name));
  }
  return static_cast<pid_t>(pid);
}

Result<pid_t> find_qemu_pid_by_uuid(const std::string& proc_root, std::string_view uuid,
                                    std::string_view name) {
  DIR* dir = ::opendir(proc_root.c_str());
  if (!dir) return Error::io("opendir " + proc_root, errno);
  pid_t found = 0;
  while (dirent* de = ::readdir(dir)) {
    long pid = parse_pid(de->d_name);
    if (pid < 0) continue;
    auto cmdline = read_small_file(pid_dir(proc_root, static_cast<pid_t>(pid)) + "/cmdline");
    if (!cmdline.ok() || cmdline->find("-uuid") == std::string::npos) continue;
    // Only the uuid identifies a domain for sure here: names can be reused by another driver.
    if (cmdline_matches_domain(*cmdline, uuid, {})) {
      found = static_cast<pid_t>(pid);
      break;
    }
  }
  ::closedir(dir);
  if (found == 0) {
    return Error(ErrorCode::kNotFound, "no process under " + proc_root + " has -uuid " + std::string(uuid) +
                                           " (domain " + std::string(name) + ")");
  }
  return found;
}

}  // namespace stallmon::libvirt
