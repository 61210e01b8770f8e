// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/ram_layout.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>

#include "text.h"

namespace stallmon::introspect {
namespace {

constexpr size_t kMaxMtreeBytes = 16u << 20;  // a huge machine prints a few hundred KiB
constexpr size_t kMaxRamRanges = 4096;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

bool parse_hex(std::string_view s, uint64_t& out) {
  if (s.starts_with("0x") || s.starts_with("0X")) s.remove_prefix(2);
  if (s.empty() || s.size() > 16) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 16);
  return ec == std::errc() && p == s.data() + s.size();
}

// Regions of type "ram" that are device memory, not guest RAM: the kernel never maps them in
// its direct map, and an ELF core or a VMCOREINFO scan should not include them.
bool is_device_ram(std::string_view name) {
  static constexpr std::array<std::string_view, 7> kDevice = {
      "vram", "vga", "qxl", "bochs", "virtio-gpu", "ivshmem", "pflash"};
  for (auto d : kDevice) {
    if (name.find(d) != std::string_view::npos) return true;
  }
  return false;
}

struct FlatLine {
  uint64_t start = 0, last = 0;
  std::string type;  // "ram", "rom", "romd", "i/o", "ramd", "nv-ram", ...
  std::string name;
  uint64_t offset = 0;  // offset in the region ("@..."), 0 if absent
};

// "  0000000000100000-000000007fffffff (prio 0, ram): pc.ram @0000000000100000 KVM"
bool parse_flat_line(std::string_view line, FlatLine& out) {
  line = trim(line);
  size_t dash = line.find('-');
  if (dash == std::string_view::npos || dash == 0 || dash > 16) return false;
  if (!parse_hex(line.substr(0, dash), out.start)) return false;
  size_t sp = line.find(' ', dash);
  if (sp == std::string_view::npos) return false;
  if (!parse_hex(line.substr(dash + 1, sp - dash - 1), out.last)) return false;
  if (out.last < out.start) return false;
  size_t open = line.find('(', sp);
  size_t close = line.find("):", sp);
  if (open == std::string_view::npos || close == std::string_view::npos || close < open) return false;
  std::string_view inner = line.substr(open + 1, close - open - 1);  // "prio 0, ram"
  size_t comma = inner.find(',');
  if (comma == std::string_view::npos) return false;
  out.type = std::string(trim(inner.substr(comma + 1)));
  std::string_view rest = trim(line.substr(close + 2));
  // The name may contain spaces ("vga ioports remapped"); the offset is the token starting
  // with '@'; trailing tokens (" KVM", " [ROM]", "owner=...") follow it.
  size_t at = rest.find(" @");
  std::string_view name = rest;
  out.offset = 0;
  if (at != std::string_view::npos) {
    name = rest.substr(0, at);
    std::string_view off = rest.substr(at + 2);
    size_t end = off.find(' ');
    if (!parse_hex(off.substr(0, end), out.offset)) return false;
  } else {
    for (std::string_view suffix : {" KVM", " [ROM]"}) {
      while (name.ends_with(suffix)) name.remove_suffix(suffix.size());
    }
  }
  out.name = std::string(trim(name));
  return !out.name.empty();
}

}  // namespace

Result<std::vector<RamRange>> parse_mtree_ram(std::string_view text) {
  if (text.size() > kMaxMtreeBytes) return Error(ErrorCode::kLimit, "info mtree output too large");
  // Find the FlatView used by the address space "memory" (the system view the CPUs see).
  bool in_view = false, view_is_memory = false, seen_memory = false;
  std::vector<FlatLine> lines;
  detail::LineReader reader(text);
  std::string_view line;
  while (reader.next(line)) {
    std::string_view t = trim(line);
    if (t.starts_with("FlatView #")) {
      if (view_is_memory) break;  // the memory view is complete
      in_view = true;
      view_is_memory = false;
      lines.clear();
      continue;
    }
    if (!in_view) continue;
    if (t.starts_with("AS \"")) {
      if (t.starts_with("AS \"memory\"")) view_is_memory = seen_memory = true;
      continue;
    }
    FlatLine fl;
    if (parse_flat_line(t, fl)) {
      if (lines.size() >= 65536) return Error(ErrorCode::kLimit, "info mtree: too many lines");
      lines.push_back(std::move(fl));
    }
  }
  if (!seen_memory) {
    return Error(ErrorCode::kCorrupt, "info mtree -f: no FlatView for address space \"memory\"");
  }

  std::vector<RamRange> out;
  const FlatLine* prev = nullptr;
  for (const FlatLine& fl : lines) {
    if (fl.type != "ram" || is_device_ram(fl.name)) {
      prev = nullptr;
      continue;
    }
    uint64_t size = fl.last - fl.start + 1;
    if (size == 0) continue;  // full 2^64 range: nonsense
    // Merge only pieces of the same region whose offsets continue: then one gpa2hva of the
    // start gives the host address of the whole merged range.
    if (prev && !out.empty() && out.back().name == fl.name && out.back().gpa + out.back().size == fl.start &&
        prev->offset + (prev->last - prev->start + 1) == fl.offset) {
      out.back().size += size;
    } else {
      if (out.size() >= kMaxRamRanges) return Error(ErrorCode::kLimit, "info mtree: too many RAM ranges");
      out.push_back(RamRange{fl.start, size, 0, fl.name});
    }
    prev = &fl;
  }
  if (out.empty()) return Error(ErrorCode::kNotFound, "info mtree -f: no RAM in the \"memory\" view");
  std::sort(out.begin(), out.end(), [](const RamRange& a, const RamRange& b) { return a.gpa < b.gpa; });
  return out;
}

Result<uint64_t> parse_gpa2hva(std::string_view reply) {
  // "Host virtual address for 0x100000 (pc.ram) is 0x7f872ff00000"
  constexpr std::string_view kPrefix = "Host virtual address for ";
  size_t p = reply.find(kPrefix);
  if (p == std::string_view::npos) {
    std::string msg(trim(reply.substr(0, 200)));
    return Error(ErrorCode::kNotFound, "gpa2hva: " + (msg.empty() ? std::string("empty reply") : msg));
  }
  std::string_view rest = reply.substr(p + kPrefix.size());
  size_t is = rest.find(" is ");
  if (is == std::string_view::npos) return Error(ErrorCode::kCorrupt, "gpa2hva: malformed reply");
  std::string_view value = trim(rest.substr(is + 4));
  size_t end = value.find_first_of(" \r\n");
  if (end != std::string_view::npos) value = value.substr(0, end);
  uint64_t hva = 0;
  if (!parse_hex(value, hva) || hva == 0) {
    return Error(ErrorCode::kCorrupt, "gpa2hva: bad host address '" + std::string(value.substr(0, 40)) + "'");
  }
  return hva;
}

Result<std::vector<RamRange>> resolve_ram_layout(const HmpCommand& hmp) {
  if (!hmp) return Error(ErrorCode::kInvalidArgument, "resolve_ram_layout: no HMP command");
  auto text = hmp("info mtree -f");
  if (!text.ok()) return std::move(text).error().context("info mtree -f");
  STALLMON_TRY(auto ranges, parse_mtree_ram(*text));
  for (RamRange& r : ranges) {
    char cmd[64];
    std::snprintf(cmd, sizeof cmd, "gpa2hva 0x%llx", static_cast<unsigned long long>(r.gpa));
    auto reply = hmp(cmd);
    if (!reply.ok()) return std::move(reply).error().context(cmd);
    auto hva = parse_gpa2hva(*reply);
    if (!hva.ok()) return std::move(hva).error().context(r.name);
    r.hva = *hva;
  }
  return ranges;
}

}  // namespace stallmon::introspect
