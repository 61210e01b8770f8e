// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: VMCOREINFO note parsing and the RAM scan over arbitrary bytes.
#include <cstdint>
#include <cstring>

#include "stallmon/introspect/vmcoreinfo.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  (void)parse_vmcoreinfo_note(std::span<const uint8_t>(data, size));
  (void)parse_vmcoreinfo(std::string_view(reinterpret_cast<const char*>(data), size));
  // The same bytes as page-aligned guest RAM.
  std::vector<RawImageMemory::Segment> segs;
  std::vector<uint8_t> ram((size + 4095) / 4096 * 4096 + 4096);
  if (size) std::memcpy(ram.data(), data, size);
  segs.push_back({0, std::move(ram)});
  auto mem = RawImageMemory::from_segments(std::move(segs));
  if (mem.ok()) (void)find_vmcoreinfo(**mem);
  return 0;
}
