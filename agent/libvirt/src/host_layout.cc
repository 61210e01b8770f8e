// SPDX-License-Identifier: Apache-2.0
#include "stallmon/libvirt/host_layout.h"

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <map>
#include <memory>

namespace stallmon::libvirt {

using introspect::RamRange;

namespace {

constexpr size_t kMaxMapsLines = 262144;
constexpr size_t kMaxXmlBytes = 4u << 20;
constexpr size_t kMaxMemoryDevices = 256;  // libvirt's own slot limit is 255
constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t k4G = 4 * kGiB;
constexpr uint64_t kLegacyHoleStart = 0xa0000;   // VGA window, then option ROMs and BIOS
constexpr uint64_t kLegacyHoleEnd = 0x100000;
constexpr uint64_t kMaxGuestPhys = 1ull << 46;   // QEMU's x86 default phys-bits limit (64 TiB)

bool parse_hex(std::string_view s, uint64_t& out) {
  if (s.empty() || s.size() > 16) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 16);
  return ec == std::errc() && p == s.data() + s.size();
}

bool parse_dec(std::string_view s, uint64_t& out) {
  if (s.empty() || s.size() > 20) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 10);
  return ec == std::errc() && p == s.data() + s.size();
}

// A libvirt scaled integer: "0x..." or decimal.
bool parse_number(std::string_view s, uint64_t& out) {
  if (s.starts_with("0x") || s.starts_with("0X")) return parse_hex(s.substr(2), out);
  return parse_dec(s, out);
}

// libvirt's memory units (virScaleInteger); the default is KiB.
bool unit_factor(std::string_view unit, uint64_t& f) {
  if (unit.empty() || unit == "KiB" || unit == "K" || unit == "k") { f = 1024; return true; }
  if (unit == "b" || unit == "bytes") { f = 1; return true; }
  if (unit == "KB") { f = 1000; return true; }
  if (unit == "MiB" || unit == "M") { f = 1ull << 20; return true; }
  if (unit == "MB") { f = 1000ull * 1000; return true; }
  if (unit == "GiB" || unit == "G") { f = 1ull << 30; return true; }
  if (unit == "GB") { f = 1000ull * 1000 * 1000; return true; }
  if (unit == "TiB" || unit == "T") { f = 1ull << 40; return true; }
  if (unit == "TB") { f = 1000ull * 1000 * 1000 * 1000; return true; }
  return false;
}

struct XmlDocDeleter {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};
struct XPathCtxDeleter {
  void operator()(xmlXPathContext* c) const { xmlXPathFreeContext(c); }
};
struct XPathObjDeleter {
  void operator()(xmlXPathObject* o) const { xmlXPathFreeObject(o); }
};

std::string attr(xmlNode* n, const char* name) {
  if (!n) return {};
  xmlChar* v = xmlGetProp(n, reinterpret_cast<const xmlChar*>(name));
  if (!v) return {};
  std::string s(reinterpret_cast<const char*>(v));
  xmlFree(v);
  return s;
}

std::string text(xmlNode* n) {
  if (!n) return {};
  xmlChar* v = xmlNodeGetContent(n);
  if (!v) return {};
  std::string s(reinterpret_cast<const char*>(v));
  xmlFree(v);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\n' || s.back() == '\t')) s.pop_back();
  size_t b = s.find_first_not_of(" \n\t");
  return b == std::string::npos ? std::string() : s.substr(b);
}

class Xml {
 public:
  static Result<Xml> parse(std::string_view xml) {
    if (xml.size() > kMaxXmlBytes) return Error(ErrorCode::kLimit, "domain XML larger than 4 MiB");
    // No network, no entity expansion, no DTD loading: the text comes from libvirtd, but a
    // parser that fetches or expands nothing cannot be turned against the host.
    xmlDoc* d = xmlReadMemory(xml.data(), static_cast<int>(xml.size()), "domain.xml", nullptr,
                              XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!d) return Error(ErrorCode::kCorrupt, "domain XML does not parse");
    Xml x;
    x.doc_.reset(d);
    x.ctx_.reset(xmlXPathNewContext(d));
    if (!x.ctx_) return Error(ErrorCode::kInternal, "xmlXPathNewContext failed");
    return x;
  }

  std::vector<xmlNode*> nodes(const char* xpath, xmlNode* at = nullptr) const {
    ctx_->node = at ? at : xmlDocGetRootElement(doc_.get());
    std::unique_ptr<xmlXPathObject, XPathObjDeleter> o(
        xmlXPathEvalExpression(reinterpret_cast<const xmlChar*>(xpath), ctx_.get()));
    std::vector<xmlNode*> out;
    if (!o || !o->nodesetval) return out;
    for (int i = 0; i < o->nodesetval->nodeNr; ++i) out.push_back(o->nodesetval->nodeTab[i]);
    return out;
  }
  xmlNode* node(const char* xpath, xmlNode* at = nullptr) const {
    auto v = nodes(xpath, at);
    return v.empty() ? nullptr : v.front();
  }

 private:
  std::unique_ptr<xmlDoc, XmlDocDeleter> doc_;
  std::unique_ptr<xmlXPathContext, XPathCtxDeleter> ctx_;
};

// A size element or attribute pair: value and unit.
Result<uint64_t> scaled(const std::string& value, const std::string& unit, const std::string& what) {
  uint64_t v = 0, f = 0;
  if (!parse_number(value, v)) return Error(ErrorCode::kCorrupt, what + ": bad number '" + value.substr(0, 40) + "'");
  if (!unit_factor(unit, f)) return Error(ErrorCode::kCorrupt, what + ": unknown unit '" + unit.substr(0, 20) + "'");
  if (v > kMaxGuestPhys / f) return Error(ErrorCode::kLimit, what + ": larger than 64 TiB");
  return v * f;
}

Result<uint64_t> size_element(xmlNode* n, const std::string& what) {
  if (!n) return Error(ErrorCode::kCorrupt, what + ": missing");
  return scaled(text(n), attr(n, "unit"), what);
}

}  // namespace

const char* to_string(RamBacking backing) {
  switch (backing) {
    case RamBacking::kAnonymous: return "anonymous";
    case RamBacking::kMemfd: return "memfd";
    case RamBacking::kHugepages: return "hugepages";
    case RamBacking::kFile: return "file";
  }
  return "?";
}

uint64_t DomainMemorySpec::boot_bytes() const {
  uint64_t s = 0;
  for (const auto& b : boot) s += b.size;
  return s;
}

Result<std::vector<MapEntry>> parse_proc_maps(std::string_view text) {
  std::vector<MapEntry> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    if (line.empty()) continue;
    if (out.size() >= kMaxMapsLines) return Error(ErrorCode::kLimit, "maps: too many lines");
    // "start-end perms offset dev inode   path"
    MapEntry e;
    size_t f[5];
    size_t p = 0;
    std::string_view fields[5];
    for (int i = 0; i < 5; ++i) {
      while (p < line.size() && line[p] == ' ') ++p;
      f[i] = p;
      while (p < line.size() && line[p] != ' ') ++p;
      fields[i] = line.substr(f[i], p - f[i]);
    }
    size_t dash = fields[0].find('-');
    uint64_t dev_unused = 0;
    (void)dev_unused;
    if (dash == std::string_view::npos || !parse_hex(fields[0].substr(0, dash), e.start) ||
        !parse_hex(fields[0].substr(dash + 1), e.end) || e.end <= e.start || fields[1].size() != 4 ||
        !parse_hex(fields[2], e.offset) || !parse_dec(fields[4], e.inode)) {
      return Error(ErrorCode::kCorrupt, "maps: malformed line '" + std::string(line.substr(0, 80)) + "'");
    }
    e.perms = std::string(fields[1]);
    while (p < line.size() && line[p] == ' ') ++p;
    std::string_view path = line.substr(p);
    constexpr std::string_view kDeleted = " (deleted)";
    if (path.ends_with(kDeleted)) {
      path.remove_suffix(kDeleted.size());
      e.deleted = true;
    }
    e.path = std::string(path);
    out.push_back(std::move(e));
  }
  return out;
}

Result<DomainMemorySpec> parse_domain_memory_xml(std::string_view xml_text) {
  STALLMON_TRY(auto xml, Xml::parse(xml_text));
  DomainMemorySpec spec;
  xmlNode* type = xml.node("/domain/os/type");
  if (!type) return Error(ErrorCode::kCorrupt, "domain XML: no /domain/os/type");
  std::string arch = attr(type, "arch");
  spec.machine = attr(type, "machine");
  if (arch != "x86_64" && arch != "i686") {
    return Error(ErrorCode::kUnsupported, "RAM layout without monitor: architecture '" + arch + "' is not modelled");
  }
  bool q35 = spec.machine.find("q35") != std::string::npos;
  bool piix = spec.machine == "pc" || spec.machine.starts_with("pc-i440fx") || spec.machine.starts_with("pc-");
  if (!q35 && !piix) {
    return Error(ErrorCode::kUnsupported, "RAM layout without monitor: machine '" + spec.machine + "' is not modelled");
  }
  STALLMON_TRY(spec.memory_bytes, size_element(xml.node("/domain/memory"), "<memory>"));

  xmlNode* vcpu = xml.node("/domain/vcpu");
  uint64_t v = 0;
  if (vcpu && parse_dec(text(vcpu), v) && v > 0 && v <= 4096) spec.vcpus_max = static_cast<unsigned>(v);
  std::string cur = attr(vcpu, "current");
  spec.vcpus_current = spec.vcpus_max;
  if (!cur.empty() && parse_dec(cur, v) && v <= spec.vcpus_max) spec.vcpus_current = static_cast<unsigned>(v);

  // Backing of the guest's RAM (memory devices follow it unless they name a page size).
  RamBacking backing = RamBacking::kAnonymous;
  std::string source = attr(xml.node("/domain/memoryBacking/source"), "type");
  bool huge = xml.node("/domain/memoryBacking/hugepages") != nullptr;
  if (source == "memfd") {
    backing = RamBacking::kMemfd;  // memfd, with hugetlb=on if <hugepages/> too
  } else if (huge) {
    backing = RamBacking::kHugepages;
  } else if (source == "file") {
    backing = RamBacking::kFile;
  }

  // Memory devices first: the boot RAM is <memory> minus them.
  uint64_t device_total = 0;
  for (xmlNode* m : xml.nodes("/domain/devices/memory")) {
    if (spec.devices.size() >= kMaxMemoryDevices) return Error(ErrorCode::kLimit, "domain XML: too many memory devices");
    RamBlockSpec d;
    d.device = true;
    d.model = attr(m, "model");
    if (d.model != "dimm" && d.model != "virtio-mem") {
      return Error(ErrorCode::kUnsupported, "RAM layout without monitor: memory device model '" + d.model + "'");
    }
    std::string alias = attr(xml.node("alias", m), "name");
    if (alias.empty()) return Error(ErrorCode::kCorrupt, "domain XML: memory device without alias (not a live XML?)");
    d.id = "mem" + alias;  // libvirt's backend id for the device
    STALLMON_TRY(d.size, size_element(xml.node("target/size", m), "memory device " + alias + " size"));
    d.backing = xml.node("source/pagesize", m) && backing != RamBacking::kMemfd ? RamBacking::kHugepages : backing;
    // DIMM: <address type='dimm' base=...>; virtio-mem: <target><address base=...>.
    std::string base = attr(xml.node("address[@type='dimm']", m), "base");
    if (base.empty()) base = attr(xml.node("target/address", m), "base");
    if (!base.empty() && !parse_number(base, d.base)) return Error(ErrorCode::kCorrupt, "memory device " + alias + ": bad base");
    device_total += d.size;
    spec.devices.push_back(std::move(d));
  }
  if (device_total > spec.memory_bytes) return Error(ErrorCode::kCorrupt, "domain XML: memory devices larger than <memory>");

  auto cells = xml.nodes("/domain/cpu/numa/cell");
  if (cells.size() > 1024) return Error(ErrorCode::kLimit, "domain XML: too many NUMA cells");
  std::map<uint64_t, uint64_t> by_id;
  for (xmlNode* c : cells) {
    uint64_t id = 0;
    if (!parse_dec(attr(c, "id"), id)) return Error(ErrorCode::kCorrupt, "NUMA cell without id");
    STALLMON_TRY(auto bytes, scaled(attr(c, "memory"), attr(c, "unit"), "NUMA cell " + std::to_string(id)));
    if (!by_id.emplace(id, bytes).second) return Error(ErrorCode::kCorrupt, "NUMA cell id repeated");
  }
  if (by_id.empty()) {
    spec.boot.push_back(RamBlockSpec{"pc.ram", spec.memory_bytes - device_total, backing, false, {}, 0});
  } else {
    // One backend per cell, laid out in node order in the machine's RAM container.
    for (const auto& [id, bytes] : by_id) {
      if (bytes == 0) continue;  // a memory-less node has no backend
      spec.boot.push_back(RamBlockSpec{"ram-node" + std::to_string(id), bytes, backing, false, {}, 0});
    }
  }
  if (spec.boot_bytes() + device_total != spec.memory_bytes) {
    return Error(ErrorCode::kCorrupt, "domain XML: NUMA cells and memory devices do not add up to <memory>");
  }
  if (spec.boot_bytes() == 0) return Error(ErrorCode::kCorrupt, "domain XML: no boot RAM");
  return spec;
}

namespace {

// Whether a mapping can hold this block (by backing and name), ignoring size.
bool backing_matches(const RamBlockSpec& b, const MapEntry& e) {
  bool writable = e.perms.size() == 4 && e.perms[0] == 'r' && e.perms[1] == 'w' && e.perms[2] != 'x';
  if (!writable) return false;
  switch (b.backing) {
    case RamBacking::kAnonymous:
      // MAP_PRIVATE|MAP_ANONYMOUS, or shared anonymous memory (access mode='shared').
      return (e.path.empty() && e.perms[3] == 'p') || (e.path == "/dev/zero" && e.deleted && e.perms[3] == 's');
    case RamBacking::kMemfd:
      return e.path.starts_with("/memfd:") && e.perms[3] == 's';
    case RamBacking::kHugepages:
    case RamBacking::kFile: {
      // libvirt passes a directory for hugepages (QEMU creates qemu_back_mem.ID.XXXXXX in it)
      // and a file named after the backend id for file backing.
      size_t slash = e.path.rfind('/');
      if (slash == std::string::npos) return false;
      std::string_view base = std::string_view(e.path).substr(slash + 1);
      std::string prefix = "qemu_back_mem." + b.id + ".";
      return base == b.id || base.starts_with(prefix);
    }
  }
  return false;
}

// Mappings, with runs of one file's consecutive pages (a VMA split by madvise/mprotect of a
// part) joined back into one.
std::vector<MapEntry> join_file_runs(const std::vector<MapEntry>& maps) {
  std::vector<MapEntry> out;
  for (const auto& e : maps) {
    if (!out.empty() && !e.path.empty() && e.inode != 0) {
      MapEntry& last = out.back();
      if (last.inode == e.inode && last.path == e.path && last.end == e.start && last.perms == e.perms &&
          last.offset + (last.end - last.start) == e.offset) {
        last.end = e.end;
        continue;
      }
    }
    out.push_back(e);
  }
  return out;
}

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%" PRIx64, v);
  return b;
}

}  // namespace

Result<std::vector<RamRange>> derive_ram_layout(const DomainMemorySpec& spec, const std::vector<MapEntry>& raw_maps,
                                                std::string_view qemu_cmdline) {
  if (qemu_cmdline.find("max-ram-below-4g") != std::string_view::npos) {
    return Error(ErrorCode::kUnsupported, "qemu runs with max-ram-below-4g: the below-4G split is not the machine default");
  }
  std::vector<MapEntry> maps = join_file_runs(raw_maps);

  std::vector<const RamBlockSpec*> blocks;
  for (const auto& b : spec.boot) blocks.push_back(&b);
  for (const auto& d : spec.devices) blocks.push_back(&d);
  std::vector<uint64_t> hva(blocks.size(), 0);

  // Blocks found by name first, so that their mappings are not offered to size matching.
  std::vector<bool> taken(maps.size(), false);
  for (size_t i = 0; i < blocks.size(); ++i) {
    const RamBlockSpec& b = *blocks[i];
    if (b.backing != RamBacking::kHugepages && b.backing != RamBacking::kFile) continue;
    std::vector<size_t> hits;
    for (size_t j = 0; j < maps.size(); ++j) {
      if (!taken[j] && maps[j].offset == 0 && maps[j].end - maps[j].start == b.size && backing_matches(b, maps[j]))
        hits.push_back(j);
    }
    if (hits.size() != 1) {
      return Error(hits.empty() ? ErrorCode::kNotFound : ErrorCode::kInvalidArgument,
                   "RAM block " + b.id + " (" + to_string(b.backing) + ", " + hex(b.size) + " bytes): " +
                       (hits.empty() ? "no mapping in /proc/PID/maps" : "several mappings match"));
    }
    taken[hits[0]] = true;
    hva[i] = maps[hits[0]].start;
  }
  // Anonymous and memfd blocks by size. Equal sizes: memfd blocks are matched in creation
  // order (inode numbers grow as QEMU creates the backends: boot RAM, then devices in XML
  // order); anonymous ones cannot be told apart without the monitor.
  std::map<std::pair<int, uint64_t>, std::vector<size_t>> groups;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const RamBlockSpec& b = *blocks[i];
    if (b.backing == RamBacking::kAnonymous || b.backing == RamBacking::kMemfd)
      groups[{static_cast<int>(b.backing), b.size}].push_back(i);
  }
  for (const auto& [key, members] : groups) {
    const RamBlockSpec& first = *blocks[members.front()];
    std::vector<size_t> hits;
    for (size_t j = 0; j < maps.size(); ++j) {
      if (!taken[j] && maps[j].end - maps[j].start == first.size && backing_matches(first, maps[j]) &&
          (first.backing != RamBacking::kMemfd || maps[j].offset == 0))
        hits.push_back(j);
    }
    if (hits.size() < members.size()) {
      return Error(ErrorCode::kNotFound, "RAM block " + first.id + " (" + to_string(first.backing) + ", " +
                                             hex(first.size) + " bytes): no mapping of that size in /proc/PID/maps");
    }
    if (hits.size() > members.size() && first.backing == RamBacking::kAnonymous) {
      return Error(ErrorCode::kInvalidArgument,
                   "RAM block " + first.id + ": " + std::to_string(hits.size()) + " anonymous mappings of " +
                       hex(first.size) + " bytes for " + std::to_string(members.size()) +
                       " block(s); cannot tell them apart without the monitor (memfd or hugepage backing "
                       "names them; or set libvirt.use_monitor)");
    }
    if (members.size() > 1 && first.backing == RamBacking::kAnonymous) {
      return Error(ErrorCode::kInvalidArgument, "RAM blocks " + first.id + ", ...: several anonymous blocks of " +
                                                    hex(first.size) + " bytes cannot be told apart without the monitor");
    }
    if (hits.size() > members.size()) {
      return Error(ErrorCode::kInvalidArgument, "RAM block " + first.id + ": more memfd mappings of " +
                                                    hex(first.size) + " bytes than blocks of that size");
    }
    std::sort(hits.begin(), hits.end(), [&](size_t a, size_t b) { return maps[a].inode < maps[b].inode; });
    for (size_t k = 0; k < members.size(); ++k) {
      taken[hits[k]] = true;
      hva[members[k]] = maps[hits[k]].start;
    }
  }

  // Boot RAM: the machine's RAM container (blocks back to back) split around the PCI hole.
  const uint64_t boot = spec.boot_bytes();
  const bool q35 = spec.machine.find("q35") != std::string::npos;
  uint64_t lowmem = q35 ? (boot >= 0xb0000000ull ? 0x80000000ull : 0xb0000000ull)
                        : (boot >= 0xe0000000ull ? 0xc0000000ull : 0xe0000000ull);
  uint64_t below = std::min(boot, lowmem);
  uint64_t above = boot - below;
  if (k4G + above > kMaxGuestPhys) return Error(ErrorCode::kLimit, "boot RAM beyond 64 TiB");

  std::vector<RamRange> out;
  // Container offset range [off, off+len) at gpa, cut at block boundaries.
  auto place = [&](uint64_t off, uint64_t len, uint64_t gpa) {
    uint64_t block_start = 0;
    for (size_t i = 0; i < spec.boot.size() && len > 0; ++i) {
      uint64_t block_end = block_start + spec.boot[i].size;
      if (off < block_end) {
        uint64_t n = std::min(len, block_end - off);
        out.push_back(RamRange{gpa, n, hva[i] + (off - block_start), spec.boot[i].id});
        off += n;
        gpa += n;
        len -= n;
      }
      block_start = block_end;
    }
  };
  place(0, std::min(below, kLegacyHoleStart), 0);
  if (below > kLegacyHoleEnd) place(kLegacyHoleEnd, below - kLegacyHoleEnd, kLegacyHoleEnd);
  if (above > 0) place(below, above, k4G);

  for (size_t i = spec.boot.size(); i < blocks.size(); ++i) {
    const RamBlockSpec& d = *blocks[i];
    if (d.base == 0) {
      return Error(ErrorCode::kNotFound, "memory device " + d.id + ": the live XML has no base address yet");
    }
    if (d.base < k4G + above || d.base > kMaxGuestPhys - d.size) {
      return Error(ErrorCode::kCorrupt, "memory device " + d.id + ": base " + hex(d.base) + " overlaps boot RAM");
    }
    out.push_back(RamRange{d.base, d.size, hva[i], d.id});
  }
  std::sort(out.begin(), out.end(), [](const RamRange& a, const RamRange& b) { return a.gpa < b.gpa; });
  for (size_t i = 1; i < out.size(); ++i) {
    if (out[i - 1].gpa + out[i - 1].size > out[i].gpa) {
      return Error(ErrorCode::kCorrupt, "RAM ranges " + out[i - 1].name + " and " + out[i].name + " overlap");
    }
  }
  return out;
}

Result<std::string> validate_ram_layout(introspect::PhysicalMemory& memory, const std::vector<RamRange>& ranges) {
  if (ranges.empty()) return Error(ErrorCode::kInvalidArgument, "empty RAM layout");
  constexpr uint64_t kPage = 4096;
  std::vector<uint8_t> page(kPage);
  for (const auto& r : ranges) {
    for (uint64_t gpa : {r.gpa, r.gpa + r.size - std::min(r.size, kPage)}) {
      auto rd = memory.read(gpa, page.data(), std::min(r.size, kPage));
      if (!rd.ok()) return std::move(rd).error().context("RAM range " + r.name + " at " + hex(gpa) + " unreadable");
    }
  }
  if (ranges.front().gpa != 0) return Error(ErrorCode::kCorrupt, "no RAM at guest-physical 0");
  auto rd = memory.read(0, page.data(), std::min(ranges.front().size, kPage));
  if (!rd.ok()) return std::move(rd).error().context("low RAM");
  // Real-mode IVT: 256 far pointers (offset:segment). A legacy BIOS (SeaBIOS) points the
  // first 32 vectors into F000/C000; Linux keeps page 0 reserved and never rewrites it.
  int bios_vectors = 0;
  for (int v = 0; v < 32; ++v) {
    uint16_t seg = static_cast<uint16_t>(page[v * 4 + 2] | (page[v * 4 + 3] << 8));
    if (seg == 0xf000 || seg == 0xc000) ++bios_vectors;
  }
  if (bios_vectors >= 16) return std::string("readable; low RAM holds the BIOS interrupt vector table");
  if (std::any_of(page.begin(), page.end(), [](uint8_t b) { return b != 0; })) {
    return std::string("readable; low RAM holds data (no BIOS vector table: UEFI or early boot)");
  }
  return Error(ErrorCode::kCorrupt, "low RAM is all zero: the layout does not point at this guest's memory");
}

}  // namespace stallmon::libvirt
