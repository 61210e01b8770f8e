// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: the kallsyms decoder on arbitrary tables, under a small memory budget.
// Input layout: u32 num_syms, u8 flags, then token_index (512 bytes), then the rest split in
// three: token table, names, offsets.
#include <cstdint>
#include <cstring>
#include <vector>

#include "stallmon/introspect/symbols.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  if (size < 5 + 512) return 0;
  KallsymsTables t;
  uint32_t n;
  std::memcpy(&n, data, 4);
  t.num_syms = n % 65536;
  uint8_t flags = data[4];
  std::vector<uint16_t> index(256);
  std::memcpy(index.data(), data + 5, 512);
  t.token_index = index;
  const uint8_t* rest = data + 517;
  size_t left = size - 517, third = left / 3;
  t.token_table = std::span<const uint8_t>(rest, third);
  t.names = std::span<const uint8_t>(rest + third, third);
  std::vector<int32_t> offsets((left - 2 * third) / 4);
  if (!offsets.empty()) std::memcpy(offsets.data(), rest + 2 * third, offsets.size() * 4);
  std::vector<uint64_t> addresses;
  if (flags & 4) {
    addresses.resize(offsets.size());
    for (size_t i = 0; i < offsets.size(); ++i) addresses[i] = 0xffffffff81000000ull + static_cast<uint32_t>(offsets[i]);
    t.addresses = addresses;
  } else {
    t.offsets = offsets;
  }
  t.relative_base = 0xffffffff81000000ull;
  if (flags & 1) t.absolute_percpu = (flags & 2) != 0;
  SymbolLimits limits;
  limits.max_name_len = 128 + (flags & 0x80);
  limits.budget = std::make_shared<MemoryBudget>("fuzz", 4u << 20);
  auto r = decode_kallsyms(t, limits);
  if (r.ok()) {
    SymbolTable table(std::move(*r));
    (void)table.format(0xffffffff81000010ull);
    (void)table.address("_stext");
    (void)table.lookup(0xffffffff81001000ull);
  }
  return 0;
}
