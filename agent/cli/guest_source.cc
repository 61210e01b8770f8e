// SPDX-License-Identifier: Apache-2.0
#include "guest_source.h"

#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "stallmon/introspect/qmp.h"
#include "stallmon/libvirt/domain_watcher.h"

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

Result<DomainView> describe_libvirt_domain(const SourceOptions& o) {
  libvirt::WatcherOptions wo;
  wo.uri = o.connect;
  STALLMON_TRY(auto info, libvirt::describe_domain(wo, o.domain));
  if (!info.ram_layout) {
    return Error(ErrorCode::kNotFound, "RAM layout of domain " + o.domain + ": " + info.ram_layout_error);
  }
  return DomainView{info.qemu_pid, *info.ram_layout, info.ram_layout_source};
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
    STALLMON_TRY(auto view, describe_libvirt_domain(o));
    return view.ranges;
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
  std::vector<RamRange> ranges;
  if (pid == 0) {
    if (o.domain.empty()) return Error(ErrorCode::kInvalidArgument, "--qemu-pid or --domain is required");
    STALLMON_TRY(auto view, describe_libvirt_domain(o));
    pid = view.pid;
    ranges = std::move(view.ranges);
  } else {
    STALLMON_TRY(ranges, resolve_layout(o));
  }
  auto m = introspect::QemuProcessMemory::create(pid, std::move(ranges));
  if (!m) return std::move(m).error().context("qemu pid " + std::to_string(pid));
  return std::shared_ptr<introspect::PhysicalMemory>(std::move(m).value());
}

}  // namespace stallmon::cli
