// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: the page-table walker and KernelMemory over arbitrary guest RAM. Input: u64
// virtual address, u8 flags (bit 0: 5-level), then the bytes of guest RAM from physical 0 (the
// top-level table is its first page).
#include <cstdint>
#include <cstring>
#include <vector>

#include "stallmon/introspect/kernel_memory.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  if (size < 9) return 0;
  uint64_t va;
  std::memcpy(&va, data, 8);
  const bool l5 = data[8] & 1;
  std::vector<uint8_t> ram((size - 9 + 4095) / 4096 * 4096 + 4096);
  std::memcpy(ram.data(), data + 9, size - 9);
  std::vector<RawImageMemory::Segment> segs;
  segs.push_back({0, std::move(ram)});
  auto mem = RawImageMemory::from_segments(std::move(segs));
  if (!mem.ok()) return 0;
  std::shared_ptr<PhysicalMemory> phys(std::move(*mem));
  (void)walk_page_tables(*phys, 0, l5, va);
  (void)walk_page_tables(*phys, 0, l5, va ^ 0xffff800000000000ull);
  PagingConfig cfg;
  cfg.l5 = l5;
  cfg.phys_base = static_cast<int64_t>(data[8] & 0xf0) << 16;
  if (data[8] & 2) cfg.page_offset_base = 0xffff888000000000ull;
  KernelMemory km(phys, cfg);
  uint8_t buf[64];
  (void)km.read(va, buf, sizeof buf);
  (void)km.read(0xffffffff81000000ull + (va & 0xffffff), buf, sizeof buf);
  (void)km.read_cstring(va & ~0xfffull, 32);
  ReadRequest reqs[3] = {{va, buf, 8, false}, {va + 4090, buf + 8, 16, false}, {0xffffc90000000000ull | (va & 0xfffff), buf + 24, 8, false}};
  (void)km.read_batch(reqs);
  return 0;
}
