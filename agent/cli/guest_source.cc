// SPDX-License-Identifier: Apache-2.0
#include "guest_source.h"

#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "stallmon/introspect/qmp.h"
#include "subprocess.h"

namespace stallmon::cli {

using introspect::RamRange;

namespace {

bool parse_u64(const std::string& s, uint64_t& v) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  unsigned long long x = std::strtoull(s.c_str(), &end, 0);
  if (errno != 0 || !end || *end != '\0') return false;
  v = x;
  return true;
}

Result<std::string> read_file(const std::string& path, size_t cap = 1 << 20) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Error::io("cannot open " + path, errno);
  std::string s;
  s.resize(cap);
  f.read(s.data(), static_cast<std::streamsize>(cap));
  s.resize(static_cast<size_t>(f.gcount()));
  return s;
}

}  // namespace

Result<std::vector<RamRange>> parse_ranges(std::string_view text) {
  std::vector<RamRange> out;
  std::istringstream in{std::string(text)};
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (auto h = line.find('#'); h != std::string::npos) line.resize(h);
    std::istringstream ls(line);
    std::string a, b, c, name;
    if (!(ls >> a)) continue;
    RamRange r;
    if (!(ls >> b >> c) || !parse_u64(a, r.gpa) || !parse_u64(b, r.size) || !parse_u64(c, r.hva) || r.size == 0)
      return Error(ErrorCode::kInvalidArgument, "ranges line " + std::to_string(lineno) + ": expected 'GPA SIZE HVA [NAME]'");
    ls >> r.name;
    out.push_back(std::move(r));
    if (out.size() > 4096) return Error(ErrorCode::kLimit, "too many ranges");
  }
  if (out.empty()) return Error(ErrorCode::kInvalidArgument, "no ranges");
  return out;
}

std::string format_ranges(const std::vector<RamRange>& ranges) {
  std::string s = "# gpa size hva name (stallctl ranges file)\n";
  for (const auto& r : ranges) {
    char b[160];
    std::snprintf(b, sizeof b, "0x%" PRIx64 " 0x%" PRIx64 " 0x%" PRIx64 " %s\n", r.gpa, r.size, r.hva,
                  r.name.empty() ? "-" : r.name.c_str());
    s += b;
  }
  return s;
}

introspect::HmpCommand virsh_hmp(const std::string& connect, const std::string& domain,
                                 std::chrono::milliseconds timeout) {
  return [=](std::string_view cmd) -> Result<std::string> {
    STALLMON_TRY(auto r, run_command({"virsh", "-c", connect, "qemu-monitor-command", domain, "--hmp", std::string(cmd)},
                                     timeout));
    if (r.exit_code != 0)
      return Error(ErrorCode::kIo, "virsh qemu-monitor-command " + domain + " '" + std::string(cmd) + "' failed: " + r.err);
    return r.out;
  };
}

Result<pid_t> domain_pid(const std::string& domain) {
  for (const char* dir : {"/run/libvirt/qemu/", "/var/run/libvirt/qemu/"}) {
    auto s = read_file(std::string(dir) + domain + ".pid", 64);
    if (!s) continue;
    uint64_t v = 0;
    std::string t = *s;
    while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
    if (parse_u64(t, v) && v > 0 && v < (1u << 22)) return static_cast<pid_t>(v);
    return Error(ErrorCode::kCorrupt, "bad pid file for domain " + domain);
  }
  return Error(ErrorCode::kNotFound, "no pid file for domain " + domain + " (is it running?)");
}

Result<std::vector<RamRange>> resolve_layout(const SourceOptions& o) {
  if (!o.ranges.empty()) {
    STALLMON_TRY(auto text, read_file(o.ranges));
    auto r = parse_ranges(text);
    if (!r) return std::move(r).error().context(o.ranges);
    return r;
  }
  if (!o.qmp.empty()) {
    STALLMON_TRY(auto sock, introspect::QmpSocket::connect(o.qmp, o.monitor_timeout));
    auto r = introspect::resolve_ram_layout(sock->as_hmp());
    if (!r) return std::move(r).error().context("RAM layout over QMP " + o.qmp);
    return r;
  }
  if (!o.domain.empty()) {
    auto r = introspect::resolve_ram_layout(virsh_hmp(o.connect, o.domain, o.monitor_timeout));
    if (!r) return std::move(r).error().context("RAM layout of domain " + o.domain);
    return r;
  }
  return Error(ErrorCode::kInvalidArgument, "a live qemu needs its RAM layout: --domain, --qmp or --ranges");
}

Result<std::shared_ptr<introspect::PhysicalMemory>> open_memory(const SourceOptions& o) {
  if (!o.core.empty()) {
    auto m = introspect::ElfCoreMemory::open(o.core);
    if (!m) return std::move(m).error().context("opening core " + o.core);
    return std::shared_ptr<introspect::PhysicalMemory>(std::move(m).value());
  }
  pid_t pid = o.qemu_pid;
  if (pid == 0) {
    if (o.domain.empty()) return Error(ErrorCode::kInvalidArgument, "--qemu-pid or --domain is required");
    STALLMON_TRY(pid, domain_pid(o.domain));
  }
  STALLMON_TRY(auto ranges, resolve_layout(o));
  auto m = introspect::QemuProcessMemory::create(pid, std::move(ranges));
  if (!m) return std::move(m).error().context("qemu pid " + std::to_string(pid));
  return std::shared_ptr<introspect::PhysicalMemory>(std::move(m).value());
}

}  // namespace stallmon::cli
