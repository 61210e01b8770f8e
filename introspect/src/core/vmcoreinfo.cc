// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/vmcoreinfo.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <vector>

#include "text.h"

namespace stallmon::introspect {
namespace {

constexpr size_t kMaxText = 64u << 10;
constexpr size_t kNoteHeader = 12;
constexpr char kNoteName[] = "VMCOREINFO";  // namesz 11 with the NUL, padded to 12
constexpr size_t kNameSz = 11;
constexpr size_t kNamePadded = 12;
constexpr uint64_t kPage = 4096;

bool parse_u64(std::string_view s, int base, uint64_t& out) {
  if (base == 16 && (s.starts_with("0x") || s.starts_with("0X"))) s.remove_prefix(2);
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, base);
  return ec == std::errc() && p == s.data() + s.size();
}

bool parse_i64(std::string_view s, int64_t& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 10);
  return ec == std::errc() && p == s.data() + s.size();
}

Error corrupt(std::string_view key, std::string_view value) {
  return Error(ErrorCode::kCorrupt,
               "VMCOREINFO: bad value for " + std::string(key) + ": '" + std::string(value.substr(0, 40)) + "'");
}

}  // namespace

std::optional<std::string_view> VmcoreInfo::get(std::string_view key) const {
  auto it = entries.find(key);
  if (it == entries.end()) return std::nullopt;
  return std::string_view(it->second);
}

Result<uint64_t> VmcoreInfo::symbol(std::string_view name) const {
  std::string key = "SYMBOL(" + std::string(name) + ")";
  auto v = get(key);
  if (!v) return Error(ErrorCode::kNotFound, "VMCOREINFO has no " + key);
  uint64_t out = 0;
  if (!parse_u64(*v, 16, out)) return corrupt(key, *v);
  return out;
}

Result<int64_t> VmcoreInfo::number(std::string_view name) const {
  std::string key = "NUMBER(" + std::string(name) + ")";
  auto v = get(key);
  if (!v) return Error(ErrorCode::kNotFound, "VMCOREINFO has no " + key);
  int64_t out = 0;
  if (!parse_i64(*v, out)) return corrupt(key, *v);
  return out;
}

static Result<uint64_t> decimal_entry(const VmcoreInfo& info, const std::string& key) {
  auto v = info.get(key);
  if (!v) return Error(ErrorCode::kNotFound, "VMCOREINFO has no " + key);
  uint64_t out = 0;
  if (!parse_u64(*v, 10, out)) return corrupt(key, *v);
  return out;
}

Result<uint64_t> VmcoreInfo::offset(std::string_view type_dot_member) const {
  return decimal_entry(*this, "OFFSET(" + std::string(type_dot_member) + ")");
}
Result<uint64_t> VmcoreInfo::size(std::string_view type) const {
  return decimal_entry(*this, "SIZE(" + std::string(type) + ")");
}
Result<uint64_t> VmcoreInfo::length(std::string_view name) const {
  return decimal_entry(*this, "LENGTH(" + std::string(name) + ")");
}

Result<VmcoreInfo> parse_vmcoreinfo(std::string_view text) {
  if (text.size() > kMaxText) return Error(ErrorCode::kLimit, "VMCOREINFO text larger than 64 KiB");
  // The kernel pads the note with NULs: the text ends at the first one.
  if (size_t nul = text.find('\0'); nul != std::string_view::npos) text = text.substr(0, nul);
  VmcoreInfo info;
  info.text = std::string(text);
  detail::LineReader reader(text);
  std::string_view line;
  while (reader.next(line)) {
    if (line.empty()) continue;
    size_t eq = line.find('=');
    if (eq == std::string_view::npos || eq == 0) continue;  // tolerate junk lines
    info.entries.emplace(std::string(line.substr(0, eq)), std::string(line.substr(eq + 1)));
  }

  auto osrelease = info.get("OSRELEASE");
  if (!osrelease || osrelease->empty()) return Error(ErrorCode::kCorrupt, "VMCOREINFO without OSRELEASE");
  info.osrelease = std::string(*osrelease);
  if (auto b = info.get("BUILD-ID")) info.build_id = std::string(*b);
  if (auto p = info.get("PAGESIZE")) {
    if (!parse_u64(*p, 10, info.page_size) || info.page_size == 0 || (info.page_size & (info.page_size - 1)) != 0) {
      return corrupt("PAGESIZE", *p);
    }
  }
  if (auto k = info.get("KERNELOFFSET")) {
    if (!parse_u64(*k, 16, info.kernel_offset)) return corrupt("KERNELOFFSET", *k);
  }
  if (info.get("NUMBER(phys_base)")) {
    STALLMON_TRY(info.phys_base, info.number("phys_base"));
  }
  if (info.get("NUMBER(pgtable_l5_enabled)")) {
    STALLMON_TRY(int64_t l5, info.number("pgtable_l5_enabled"));
    info.pgtable_l5 = l5 != 0;
  }
  auto top = info.symbol("init_top_pgt");
  if (!top.ok() && top.error().code == ErrorCode::kNotFound) top = info.symbol("swapper_pg_dir");
  if (!top.ok()) return std::move(top).error().context("page tables");
  info.top_pgt_va = *top;
  return info;
}

Result<VmcoreInfo> parse_vmcoreinfo_note(std::span<const uint8_t> note) {
  if (note.size() < kNoteHeader + kNamePadded) return Error(ErrorCode::kCorrupt, "VMCOREINFO note truncated");
  uint32_t namesz, descsz, type;
  std::memcpy(&namesz, note.data(), 4);
  std::memcpy(&descsz, note.data() + 4, 4);
  std::memcpy(&type, note.data() + 8, 4);
  if (namesz != kNameSz || std::memcmp(note.data() + kNoteHeader, kNoteName, kNameSz) != 0) {
    return Error(ErrorCode::kNotFound, "not a VMCOREINFO note");
  }
  (void)type;  // the kernel writes 0; QEMU's dump copies it
  size_t avail = note.size() - kNoteHeader - kNamePadded;
  if (descsz > kMaxText) return Error(ErrorCode::kLimit, "VMCOREINFO note larger than 64 KiB");
  if (descsz > avail) return Error(ErrorCode::kCorrupt, "VMCOREINFO note truncated");
  std::string_view text(reinterpret_cast<const char*>(note.data() + kNoteHeader + kNamePadded), descsz);
  return parse_vmcoreinfo(text);
}

Result<std::string> gnu_build_id_from_notes(std::span<const uint8_t> notes) {
  constexpr uint32_t kBuildIdType = 3;  // NT_GNU_BUILD_ID
  auto pad4 = [](uint64_t n) { return (n + 3) & ~uint64_t{3}; };
  size_t at = 0;
  // Each note advances by at least its 12-byte header: the walk ends within size/12 steps.
  while (notes.size() - at >= kNoteHeader) {
    uint32_t namesz, descsz, type;
    std::memcpy(&namesz, notes.data() + at, 4);
    std::memcpy(&descsz, notes.data() + at + 4, 4);
    std::memcpy(&type, notes.data() + at + 8, 4);
    const uint64_t left = notes.size() - at - kNoteHeader;
    const uint64_t name_len = pad4(namesz), desc_len = pad4(descsz);
    if (name_len > left || desc_len > left - name_len) {
      return Error(ErrorCode::kCorrupt, "note at +" + std::to_string(at) + " runs past the notes section (namesz " +
                                            std::to_string(namesz) + ", descsz " + std::to_string(descsz) + ")");
    }
    const uint8_t* name = notes.data() + at + kNoteHeader;
    if (type == kBuildIdType && namesz == 4 && std::memcmp(name, "GNU", 4) == 0) {
      if (descsz == 0 || descsz > 64) {
        return Error(ErrorCode::kCorrupt, "GNU build id of " + std::to_string(descsz) + " bytes");
      }
      return detail::hex_bytes(std::span<const uint8_t>(name + name_len, descsz));
    }
    at += kNoteHeader + name_len + desc_len;
  }
  return Error(ErrorCode::kNotFound, "no GNU build id among the notes");
}

namespace {

// Cheap header test at a page start: namesz 11, descsz plausible, name, "OSRELEASE=".
bool looks_like_note(const uint8_t* p) {
  static constexpr uint8_t kHead[] = {11, 0, 0, 0};
  if (std::memcmp(p, kHead, 4) != 0) return false;
  if (std::memcmp(p + kNoteHeader, kNoteName, kNameSz) != 0) return false;
  return std::memcmp(p + kNoteHeader + kNamePadded, "OSRELEASE=", 10) == 0;
}

// Reads and parses the note at `gpa`: the header first, then exactly the text it announces
// (bounded to 64 KiB), so that the per-snapshot reboot check costs two small reads.
Result<VmcoreInfo> read_note_at(PhysicalMemory& mem, uint64_t gpa) {
  std::vector<uint8_t> buf(kNoteHeader + kNamePadded);
  STALLMON_TRY_VOID(mem.read(gpa, buf.data(), buf.size()));
  uint32_t descsz;
  std::memcpy(&descsz, buf.data() + 4, 4);
  if (descsz > kMaxText) return Error(ErrorCode::kLimit, "VMCOREINFO note larger than 64 KiB", gpa);
  buf.resize(buf.size() + descsz);
  STALLMON_TRY_VOID(mem.read(gpa + kNoteHeader + kNamePadded, buf.data() + kNoteHeader + kNamePadded, descsz));
  auto info = parse_vmcoreinfo_note(buf);
  if (info.ok()) info->note_gpa = gpa;
  return info;
}

}  // namespace

namespace {

// Visits every page start of guest RAM (ascending; unreadable pages skipped) whose bytes look
// like a VMCOREINFO note, in 8 MiB reads. `visit(gpa)` returns true to stop. Returns the bytes
// scanned.
template <typename Visit>
uint64_t scan_note_pages(PhysicalMemory& mem, const VmcoreInfoScanOptions& options, Visit&& visit) {
  uint64_t chunk = std::max<uint64_t>(kPage, options.chunk_bytes / kPage * kPage);
  uint64_t largest = 0;
  for (const PhysRange& r : mem.ranges()) largest = std::max(largest, r.size);
  chunk = std::min(chunk, (largest + kPage - 1) / kPage * kPage);  // small images: small buffer
  std::vector<uint8_t> buf(chunk);
  uint64_t scanned = 0;
  for (const PhysRange& r : mem.ranges()) {
    // Page starts inside the range.
    uint64_t start = (r.gpa + kPage - 1) / kPage * kPage;
    for (uint64_t pos = start; pos < r.end();) {
      if (options.max_bytes != 0 && scanned >= options.max_bytes) return scanned;
      uint64_t n = std::min<uint64_t>(chunk, r.end() - pos);
      scanned += n;
      // One large read; if part of the chunk is unreadable (a hole in a live qemu's mapping),
      // read it again page by page in one batch and scan the pages that came back.
      std::vector<ReadRequest> pages;
      if (!mem.read(pos, buf.data(), n).ok()) {
        for (uint64_t off = 0; off < n; off += kPage) {
          pages.push_back(ReadRequest{pos + off, buf.data() + off, static_cast<size_t>(std::min(kPage, n - off))});
        }
        (void)mem.read_batch(pages);
      }
      constexpr uint64_t kMin = kNoteHeader + kNamePadded + 10;
      for (uint64_t off = 0; off + kMin <= n; off += kPage) {
        if (!pages.empty() && !pages[off / kPage].ok) continue;
        if (!looks_like_note(buf.data() + off)) continue;
        if (visit(pos + off)) return scanned;
      }
      pos += n;
    }
  }
  return scanned;
}

}  // namespace

Result<VmcoreInfo> find_vmcoreinfo(PhysicalMemory& mem, const VmcoreInfoScanOptions& options) {
  if (options.hint_gpa != 0 && mem.contains(options.hint_gpa, kNoteHeader + kNamePadded + 10)) {
    auto info = read_note_at(mem, options.hint_gpa);
    if (info.ok()) return info;
  }
  std::optional<VmcoreInfo> found;
  std::optional<Error> last_error;
  uint64_t scanned = scan_note_pages(mem, options, [&](uint64_t gpa) {
    auto info = read_note_at(mem, gpa);
    if (info.ok()) {
      found = std::move(*info);
      return true;
    }
    last_error = std::move(info).error();
    return false;
  });
  if (found) return std::move(*found);
  if (last_error) return std::move(*last_error).context("VMCOREINFO note candidate");
  if (options.max_bytes != 0 && scanned >= options.max_bytes) {
    return Error(ErrorCode::kNotFound, "VMCOREINFO note not found in the first " + std::to_string(scanned) + " bytes");
  }
  return Error(ErrorCode::kNotFound, "no VMCOREINFO note in guest RAM (" + std::to_string(scanned) + " bytes scanned)");
}

Result<VmcoreInfoCandidates> find_vmcoreinfo_candidates(PhysicalMemory& mem, const VmcoreInfoScanOptions& options) {
  VmcoreInfoCandidates out;
  std::optional<Error> last_error;
  auto add = [&](VmcoreInfo info) {
    ++out.notes_seen;
    const uint64_t gpa = info.note_gpa.value_or(0);
    for (VmcoreInfoCandidate& c : out.distinct) {
      if (c.info.text != info.text) continue;
      if (std::find(c.gpas.begin(), c.gpas.end(), gpa) == c.gpas.end() &&
          c.gpas.size() < VmcoreInfoCandidates::kMaxCandidateCopies) {
        c.gpas.push_back(gpa);
      }
      return;
    }
    if (out.distinct.size() >= VmcoreInfoCandidates::kMaxDistinct) {
      ++out.dropped;
      return;
    }
    out.distinct.push_back(VmcoreInfoCandidate{std::move(info), {gpa}});
  };
  if (options.hint_gpa != 0 && mem.contains(options.hint_gpa, kNoteHeader + kNamePadded + 10)) {
    auto info = read_note_at(mem, options.hint_gpa);
    if (info.ok()) add(std::move(*info));
  }
  out.bytes_scanned = scan_note_pages(mem, options, [&](uint64_t gpa) {
    if (gpa == options.hint_gpa) return false;  // already taken
    auto info = read_note_at(mem, gpa);
    if (info.ok()) add(std::move(*info));
    else last_error = std::move(info).error();
    return false;
  });
  if (out.distinct.empty()) {
    if (last_error) return std::move(*last_error).context("VMCOREINFO note candidate");
    return Error(ErrorCode::kNotFound,
                 "no VMCOREINFO note in guest RAM (" + std::to_string(out.bytes_scanned) + " bytes scanned)");
  }
  return out;
}

Result<bool> vmcoreinfo_still_valid(PhysicalMemory& mem, const VmcoreInfo& info) {
  if (!info.note_gpa) return Error(ErrorCode::kInvalidArgument, "VMCOREINFO has no known guest-physical address");
  uint8_t head[kNoteHeader + kNamePadded + 10];
  STALLMON_TRY_VOID(mem.read(*info.note_gpa, head, sizeof head));
  if (!looks_like_note(head)) return false;
  auto now = read_note_at(mem, *info.note_gpa);
  if (!now.ok()) return false;
  return now->build_id == info.build_id && now->kernel_offset == info.kernel_offset &&
         now->phys_base == info.phys_base && now->osrelease == info.osrelease;
}

}  // namespace stallmon::introspect
