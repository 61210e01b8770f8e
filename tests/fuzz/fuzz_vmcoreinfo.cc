// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: VMCOREINFO note parsing, the GNU build id among a .notes section's notes, and
// both RAM scans (first note, every candidate) over arbitrary bytes as page-aligned guest RAM.
#include <cstdint>
#include <cstring>

#include "stallmon/introspect/vmcoreinfo.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  (void)parse_vmcoreinfo_note(std::span<const uint8_t>(data, size));
  (void)gnu_build_id_from_notes(std::span<const uint8_t>(data, size));
  auto parsed = parse_vmcoreinfo(std::string_view(reinterpret_cast<const char*>(data), size));
  if (parsed.ok()) {
    (void)parsed->symbol("init_top_pgt");
    (void)parsed->offset("printk_info.text_len");
    (void)parsed->size("printk_ringbuffer");
    (void)parsed->length("printk_rb_static_descs");
  }
  std::vector<RawImageMemory::Segment> segs;
  std::vector<uint8_t> ram((size + 4095) / 4096 * 4096 + 4096);
  if (size) std::memcpy(ram.data(), data, size);
  segs.push_back({0, std::move(ram)});
  auto mem = RawImageMemory::from_segments(std::move(segs));
  if (!mem.ok()) return 0;
  (void)find_vmcoreinfo(**mem);
  VmcoreInfoScanOptions o;
  o.hint_gpa = 4096;
  auto all = find_vmcoreinfo_candidates(**mem, o);
  if (all.ok()) {
    for (const auto& c : all->distinct) (void)vmcoreinfo_still_valid(**mem, c.info);
  }
  return 0;
}
