// SPDX-License-Identifier: Apache-2.0
// Fuzz input for the ORC backtracer: the synthetic stack and ORC table of
// tests/unit/snapshot/orc_fixture.h, both replaced by the input, then read back through
// BacktraceReader (ORC table from "guest memory", format detection, the stack scan and chains).
//
// Input: u8 flags (bit 0: keep the ips sorted), u16 entry count n (the table's size as the
// guest's __stop_orc_unwind_ip says it: up to 65,535, past the memory that holds it), then up
// to n records of u32 ip offset in kernel text + 6 raw struct orc_entry bytes, then the stack
// words (after the stack-end magic).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "orc_fixture.h"

namespace stallmon::introspect::fuzz {

using testing::OrcStack;
using testing::SyntheticKernel;

struct OrcGuest {
  OrcGuest() : k(2, SyntheticKernel::Layout::kLinux61), g(k) {}
  SyntheticKernel k;
  OrcStack g;
};

inline OrcGuest& orc_guest() {
  static OrcGuest* g = new OrcGuest();  // built once per process, never destroyed
  return *g;
}

// Writes the input into the fixture's ORC region and stack (everything it does not give is 0).
inline void apply_orc_input(OrcStack& g, const uint8_t* data, size_t size) {
  std::vector<uint8_t> orc(OrcStack::kOrcSize, 0), stack(OrcStack::kStackSize, 0);
  uint8_t flags = size > 0 ? data[0] : 0;
  uint16_t n = 0;
  if (size >= 3) std::memcpy(&n, data + 1, 2);
  size_t pos = std::min<size_t>(size, 3);
  const uint64_t max_records = OrcStack::kOrcEntries / 6;
  std::vector<std::pair<uint32_t, std::array<uint8_t, 6>>> recs;
  for (uint64_t i = 0; i < n && i < max_records && pos + 10 <= size; ++i, pos += 10) {
    uint32_t off;
    std::memcpy(&off, data + pos, 4);
    std::array<uint8_t, 6> e;
    std::memcpy(e.data(), data + pos + 4, 6);
    recs.push_back({off % 0x10000, e});
  }
  if (flags & 1) std::sort(recs.begin(), recs.end(), [](auto& a, auto& b) { return a.first < b.first; });
  for (size_t i = 0; i < recs.size(); ++i) {
    const uint64_t at = OrcStack::kOrc + 4 * i;
    const int32_t rel = static_cast<int32_t>(static_cast<int64_t>(SyntheticKernel::kText + recs[i].first - at));
    std::memcpy(orc.data() + 4 * i, &rel, 4);
    std::memcpy(orc.data() + OrcStack::kOrcEntries + 6 * i, recs[i].second.data(), 6);
  }
  std::memcpy(stack.data(), &kStackEndMagic, 8);
  if (pos < size) std::memcpy(stack.data() + 8, data + pos, std::min<size_t>(size - pos, stack.size() - 8));
  g.k.mem.write(OrcStack::kOrc, orc.data(), orc.size());
  g.k.mem.write(OrcStack::kStack, stack.data(), stack.size());
  g.k.add_symbol("__start_orc_unwind_ip", OrcStack::kOrc);
  g.k.add_symbol("__stop_orc_unwind_ip", OrcStack::kOrc + 4ull * n);
  g.k.add_symbol("__start_orc_unwind", OrcStack::kOrc + OrcStack::kOrcEntries);
  g.k.remove_symbol("__stop_orc_unwind");
}

// The fixture's current table and stack as an input (seeds).
inline std::vector<uint8_t> encode_orc_input(OrcStack& g, bool v61) {
  std::vector<uint8_t> out{1};
  const uint16_t n = static_cast<uint16_t>(g.table.size());
  out.insert(out.end(), reinterpret_cast<const uint8_t*>(&n), reinterpret_cast<const uint8_t*>(&n) + 2);
  for (auto& [ip, e] : g.table) {
    const uint32_t off = static_cast<uint32_t>(ip - SyntheticKernel::kText);
    out.insert(out.end(), reinterpret_cast<const uint8_t*>(&off), reinterpret_cast<const uint8_t*>(&off) + 4);
    auto b = testing::encode_orc(e, v61);
    out.insert(out.end(), b.begin(), b.end());
  }
  std::vector<uint8_t> stack(OrcStack::kStackSize - 8);
  (void)g.k.read(OrcStack::kStack + 8, stack.data(), stack.size());
  // Trailing zero words add nothing: keep seeds small. (A length, not resize(): GCC 12 at -O1
  // under ASan cannot see that the shrinking resize never grows and fails -Wstringop-overflow.)
  size_t len = stack.size();
  const auto zero = [](uint8_t b) { return b == 0; };
  while (len >= 8 && std::all_of(stack.begin() + static_cast<std::ptrdiff_t>(len - 8),
                                 stack.begin() + static_cast<std::ptrdiff_t>(len), zero)) {
    len -= 8;
  }
  out.insert(out.end(), stack.begin(), stack.begin() + static_cast<std::ptrdiff_t>(len));
  return out;
}

}  // namespace stallmon::introspect::fuzz
