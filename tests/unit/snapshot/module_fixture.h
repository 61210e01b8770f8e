// SPDX-License-Identifier: Apache-2.0
// Loaded modules on a SyntheticKernel (module unit tests, the ORC fuzz target's seeds): struct
// module in the 6.4+ layout (mem[MOD_TEXT], mod->kallsyms pointer) or the 6.1 one
// (core_layout.{base,size,text_size}, core_kallsyms in the struct), struct mod_kallsyms with real
// Elf64_Syms and a strtab, mod->arch's ORC table (relative ips), struct kthread, and the
// `modules` list head.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "orc_fixture.h"
#include "synthetic_kernel.h"

namespace stallmon::introspect::testing {

struct ModuleFixture {
  static constexpr uint64_t kModText = 0xffffffffc0000000ULL;  // module area (MODULES_VADDR)
  static constexpr uint64_t kModTextStride = 0x10000;
  static constexpr uint64_t kModTextSize = 0x1000;
  static constexpr uint64_t kStructSize = 256;
  // struct module offsets (both layouts: the 6.1 core_layout sits where 6.4+'s mem[] starts).
  static constexpr uint64_t kState = 0, kList = 8, kName = 24, kNameLen = 56, kText = 80, kArch = 192,
                            kKallsymsPtr = 216, kCoreKallsyms = 224;

  struct Function {
    std::string name;
    uint64_t offset = 0, size = 0;  // in the module's text; size 0: ELF st_size 0
  };
  struct Module {
    uint64_t addr = 0;  // struct module
    uint64_t text = 0;
    std::string name;
  };

  ModuleFixture(SyntheticKernel& kernel, bool linux61) : k(kernel), v61(linux61) {
    add_btf();
    head = k.alloc(16);
    k.add_symbol("modules", head);
    k.mem.put<uint64_t>(head, head);
    k.mem.put<uint64_t>(head + 8, head);
  }

  // A module with its text at kModText + n * kModTextStride and these functions, added at the
  // head of the list like add_unformed_module. `orc`: (offset in text, entry) pairs.
  Module add(const std::string& name, const std::vector<Function>& fns,
             const std::vector<std::pair<uint64_t, OrcEntry>>& orc = {}) {
    Module m;
    m.name = name;
    m.text = kModText + kModTextStride * modules.size();
    k.mem.map(m.text, kModTextStride);
    m.addr = k.alloc(kStructSize);
    char nm[kNameLen] = {};
    std::memcpy(nm, name.data(), std::min<size_t>(name.size(), kNameLen));
    k.mem.write(m.addr + kName, nm, kNameLen);
    k.mem.put<uint64_t>(m.addr + kText, m.text);
    if (v61) {
      k.mem.put<uint32_t>(m.addr + kText + 8, kModTextSize + 0x3000);  // size: text + rodata + data
      k.mem.put<uint32_t>(m.addr + kText + 12, kModTextSize);          // text_size
    } else {
      k.mem.put<uint32_t>(m.addr + kText + 8, kModTextSize);
    }
    // mod_kallsyms: the symtab (index 0 is the null symbol, then each function and one object
    // in data) and the strtab, in the module's data area after its text.
    const uint64_t symtab = m.text + 0x2000, strtab = m.text + 0x3000;
    std::string str(1, '\0');
    std::vector<uint8_t> syms(24);
    auto sym = [&](const std::string& n, uint8_t type, uint16_t shndx, uint64_t value, uint64_t size) {
      const uint32_t st_name = static_cast<uint32_t>(str.size());
      str += n;
      str += '\0';
      uint8_t e[24] = {};
      std::memcpy(e, &st_name, 4);
      e[4] = type;
      std::memcpy(e + 6, &shndx, 2);
      std::memcpy(e + 8, &value, 8);
      std::memcpy(e + 16, &size, 8);
      syms.insert(syms.end(), e, e + 24);
    };
    for (const Function& f : fns) sym(f.name, 2 /*STT_FUNC*/, 1, m.text + f.offset, f.size);
    sym("some_object", 1 /*STT_OBJECT*/, 3, m.text + 0x1800, 8);
    sym("undefined_import", 2, 0 /*SHN_UNDEF*/, 0, 0);
    k.mem.write(symtab, syms.data(), syms.size());
    k.mem.write(strtab, str.data(), str.size());
    const uint64_t ks = v61 ? m.addr + kCoreKallsyms : k.alloc(32);
    k.mem.put<uint64_t>(ks, symtab);
    k.mem.put<uint32_t>(ks + 8, static_cast<uint32_t>(syms.size() / 24));
    k.mem.put<uint64_t>(ks + 16, strtab);
    if (!v61) k.mem.put<uint64_t>(m.addr + kKallsymsPtr, ks);
    // mod->arch: num_orcs, orc_unwind_ip (s32 relative to each slot), orc_unwind.
    if (!orc.empty()) {
      const uint64_t ipt = m.text + 0x4000, et = m.text + 0x5000;
      for (size_t i = 0; i < orc.size(); ++i) {
        const uint64_t at = ipt + 4 * i;
        k.mem.put<int32_t>(at, static_cast<int32_t>(static_cast<int64_t>(m.text + orc[i].first - at)));
        auto e = encode_orc(orc[i].second, false);
        k.mem.write(et + 6 * i, e.data(), e.size());
      }
      k.mem.put<uint32_t>(m.addr + kArch, static_cast<uint32_t>(orc.size()));
      k.mem.put<uint64_t>(m.addr + kArch + 8, ipt);
      k.mem.put<uint64_t>(m.addr + kArch + 16, et);
    }
    link_at_head(m.addr);
    modules.push_back(m);
    return m;
  }

  void link_at_head(uint64_t mod) {
    const uint64_t node = mod + kList, first = read64(head);
    k.mem.put<uint64_t>(node, first);
    k.mem.put<uint64_t>(node + 8, head);
    k.mem.put<uint64_t>(first + 8, node);
    k.mem.put<uint64_t>(head, node);
  }

  uint64_t read64(uint64_t a) {
    uint64_t v;
    std::memcpy(&v, k.mem.find(a, 8), 8);
    return v;
  }

  // struct kthread of `task` (a kthread: PF_KTHREAD) running `threadfn`; a kLinux61
  // SyntheticKernel (task_struct.worker_private).
  void make_kthread(uint64_t task, uint64_t threadfn, bool pf_kthread = true) {
    const uint64_t kt = k.alloc(32);
    k.mem.put<uint64_t>(kt + 16, threadfn);
    k.mem.put<uint32_t>(task + k.off("task_struct", "flags"), pf_kthread ? 0x00200040u : 0x00400000u);
    k.mem.put<uint64_t>(task + k.off("task_struct", "worker_private"), kt);
  }

  void add_btf() {
    struct btf* b = k.btf();
    const int u32 = btf__add_int(b, "unsigned int", 4, 0);
    const int ul = btf__add_int(b, "long unsigned int", 8, 0);
    const int s32 = btf__add_int(b, "int", 4, BTF_INT_SIGNED);
    const int chr = btf__add_int(b, "char", 1, BTF_INT_CHAR);
    const int voidp = btf__add_ptr(b, 0);
    const int lh_p = btf__add_ptr(b, static_cast<int>(btf__type_cnt(b)) + 1);
    const int lh = btf__add_struct(b, "list_head", 16);
    btf__add_field(b, "next", lh_p, 0, 0);
    btf__add_field(b, "prev", lh_p, 64, 0);
    const int ks = btf__add_struct(b, "mod_kallsyms", 32);
    btf__add_field(b, "symtab", voidp, 0, 0);
    btf__add_field(b, "num_symtab", u32, 64, 0);
    btf__add_field(b, "strtab", voidp, 128, 0);
    btf__add_field(b, "typetab", voidp, 192, 0);
    const int ksp = btf__add_ptr(b, ks);
    const int arch = btf__add_struct(b, "mod_arch_specific", 24);
    btf__add_field(b, "num_orcs", u32, 0, 0);
    btf__add_field(b, "orc_unwind_ip", voidp, 64, 0);
    btf__add_field(b, "orc_unwind", voidp, 128, 0);
    const int name = btf__add_array(b, u32, chr, kNameLen);
    int text = -1;
    if (v61) {
      text = btf__add_struct(b, "module_layout", 16);
      btf__add_field(b, "base", voidp, 0, 0);
      btf__add_field(b, "size", u32, 64, 0);
      btf__add_field(b, "text_size", u32, 96, 0);
    } else {
      const int mm = btf__add_struct(b, "module_memory", 16);
      btf__add_field(b, "base", voidp, 0, 0);
      btf__add_field(b, "size", u32, 64, 0);
      text = btf__add_array(b, u32, mm, 7);
    }
    btf__add_struct(b, "module", kStructSize);
    btf__add_field(b, "state", u32, 8 * kState, 0);
    btf__add_field(b, "list", lh, 8 * kList, 0);
    btf__add_field(b, "name", name, 8 * kName, 0);
    btf__add_field(b, v61 ? "core_layout" : "mem", text, 8 * kText, 0);
    btf__add_field(b, "arch", arch, 8 * kArch, 0);
    if (!v61) btf__add_field(b, "kallsyms", ksp, 8 * kKallsymsPtr, 0);
    btf__add_field(b, "core_kallsyms", ks, 8 * kCoreKallsyms, 0);
    btf__add_struct(b, "kthread", 32);
    btf__add_field(b, "flags", ul, 0, 0);
    btf__add_field(b, "cpu", u32, 64, 0);
    btf__add_field(b, "result", s32, 96, 0);
    btf__add_field(b, "threadfn", voidp, 128, 0);
    btf__add_field(b, "data", voidp, 192, 0);
  }

  SyntheticKernel& k;
  const bool v61;
  uint64_t head = 0;
  std::vector<Module> modules;
};

// OrcStack's task as a kthread: ret_from_fork (END) <- kthread (CFA = SP + 16) on its stack,
// slot s1 the return address into kthread from its call of the thread function; with_irqoff()
// adds the module "irqoff" whose irqoff_fn (CFA = SP + 24 by the module's own ORC table) is that
// thread function; s0 is where irqoff_fn's own return address from a call (_printk) would sit.
struct KthreadGuest {
  explicit KthreadGuest(bool module_v61) : mods(k, module_v61) {
    using E = OrcEntry;
    f_kthread = k.func("kthread");
    f_printk = k.func("_printk");
    g.table.push_back({f_kthread, E{16, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}});
    g.table.push_back({f_printk, E{8, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}});
    g.install_orc(false);
    g.fill_stack_with(0);
    k.mem.put<uint64_t>(OrcStack::kStack, kStackEndMagic);
    s2 = OrcStack::kStack + OrcStack::kStackSize - 8 * 30;
    s1 = s2 - 16;
    s0 = s1 - 24;
    k.mem.put<uint64_t>(s2, g.f_entry + 0x10);
    k.mem.put<uint64_t>(s1, f_kthread + 0x40);
  }

  ModuleFixture::Module add_irqoff(bool with_orc) {
    using E = OrcEntry;
    std::vector<std::pair<uint64_t, OrcEntry>> orc;
    if (with_orc) {
      orc = {{0x10, E{24, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}},
             {0x50, E{0, 0, kOrcRegUndefined, kOrcRegUndefined, OrcType::kUndefined, false}}};
    }
    auto m = mods.add("irqoff", {{"irqoff_init", 0x0, 0x10}, {"irqoff_fn", 0x10, 0x40}, {"tail", 0x50, 0}}, orc);
    irqoff_fn = m.text + 0x10;
    return m;
  }

  SyntheticKernel k{2, SyntheticKernel::Layout::kLinux61};
  OrcStack g{k};
  ModuleFixture mods;
  uint64_t f_kthread = 0, f_printk = 0, irqoff_fn = 0;
  uint64_t s0 = 0, s1 = 0, s2 = 0;
};

}  // namespace stallmon::introspect::testing
