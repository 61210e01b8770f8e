// SPDX-License-Identifier: Apache-2.0
// Fuzz input for the module reader (modules.h) and the backtraces that use it: the kthread of
// tests/unit/snapshot/module_fixture.h (KthreadGuest: a module "irqoff" whose function is the
// thread function, ORC in vmlinux and in the module), with the module's guest bytes replaced.
//
// Input: u8 flags (bit 0: the 6.1 struct module layout, core_layout/core_kallsyms; else 6.4+
// mem[]/kallsyms pointer), then the bytes of struct module (256, list links and table pointers
// included), struct mod_kallsyms (32), and the module's data area (symtab at +0, strtab at
// +0x1000, ORC ips at +0x2000 and entries at +0x3000: 16 KiB); what the input does not give is 0.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "module_fixture.h"

namespace stallmon::introspect::fuzz {

struct ModuleGuest {
  explicit ModuleGuest(bool v61) : kg(v61), m(kg.add_irqoff(true)) {
    kg.mods.make_kthread(kg.g.task, kg.irqoff_fn);
    kallsyms = v61 ? m.addr + testing::ModuleFixture::kCoreKallsyms
                   : kg.mods.read64(m.addr + testing::ModuleFixture::kKallsymsPtr);
  }
  static constexpr uint64_t kStructBytes = testing::ModuleFixture::kStructSize, kKallsymsBytes = 32,
                            kDataAt = 0x2000, kDataBytes = 0x4000;
  testing::KthreadGuest kg;
  testing::ModuleFixture::Module m;
  uint64_t kallsyms = 0;
};

inline ModuleGuest& module_guest(bool v61) {
  static ModuleGuest* g[2] = {new ModuleGuest(false), new ModuleGuest(true)};  // never destroyed
  return *g[v61 ? 1 : 0];
}

// Writes the input over the module's bytes; returns the guest it chose.
inline ModuleGuest& apply_module_input(const uint8_t* data, size_t size) {
  ModuleGuest& g = module_guest(size > 0 && (data[0] & 1));
  std::vector<uint8_t> bytes(ModuleGuest::kStructBytes + ModuleGuest::kKallsymsBytes + ModuleGuest::kDataBytes, 0);
  if (size > 1) std::memcpy(bytes.data(), data + 1, std::min(size - 1, bytes.size()));
  const uint8_t* p = bytes.data();
  g.kg.k.mem.write(g.m.addr, p, ModuleGuest::kStructBytes);
  // 6.1: mod_kallsyms is inside struct module; the input's copy of it wins.
  g.kg.k.mem.write(g.kallsyms, p + ModuleGuest::kStructBytes, ModuleGuest::kKallsymsBytes);
  g.kg.k.mem.write(g.m.text + ModuleGuest::kDataAt, p + ModuleGuest::kStructBytes + ModuleGuest::kKallsymsBytes,
                   ModuleGuest::kDataBytes);
  return g;
}

// The guest's current module bytes as an input (seeds).
inline std::vector<uint8_t> encode_module_input(ModuleGuest& g, bool v61) {
  std::vector<uint8_t> out{static_cast<uint8_t>(v61 ? 1 : 0)};
  auto take = [&](uint64_t va, uint64_t n) {
    std::vector<uint8_t> b(n);
    (void)g.kg.k.read(va, b.data(), n);
    out.insert(out.end(), b.begin(), b.end());
  };
  take(g.m.addr, ModuleGuest::kStructBytes);
  take(g.kallsyms, ModuleGuest::kKallsymsBytes);
  take(g.m.text + ModuleGuest::kDataAt, ModuleGuest::kDataBytes);
  while (out.size() > 1 && out.back() == 0) out.pop_back();  // trailing zeros add nothing
  return out;
}

}  // namespace stallmon::introspect::fuzz
