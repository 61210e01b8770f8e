// SPDX-License-Identifier: Apache-2.0
// Loaded kernel modules from guest memory alone: the `modules` list (found through kallsyms)
// walked with the guest's BTF layout of struct module, each module's core text range, its
// function symbols (mod->kallsyms: Elf64_Sym + strtab, what /proc/kallsyms shows) and its ORC
// table (mod->arch.orc_unwind_ip / orc_unwind / num_orcs). Backtraces use it to symbolize module
// frames as "function+off/len [module]" and to verify them like core-kernel frames.
//
// Everything read is hostile input: the walk, the symbol and ORC counts, every name and the
// total are bounded (ModuleLimits) and charged to the domain's budget before allocation; a
// module whose data breaks a bound is skipped with a note, the others stay usable.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/introspect/backtrace.h"
#include "stallmon/introspect/memory_budget.h"
#include "stallmon/introspect/snapshot_access.h"

namespace stallmon::introspect {

struct ModuleLimits {
  uint32_t max_modules = 1024;              // a busy distribution kernel loads ~100-200
  uint32_t max_symbols_per_module = 65536;  // num_symtab (the largest modules hold ~20,000)
  uint32_t max_name_len = 512;              // KSYM_NAME_LEN
  uint64_t max_strtab_bytes = 4u << 20;     // strtab bytes read per module
  uint64_t max_text_bytes = 64u << 20;      // one module's core text
  uint32_t max_orcs_per_module = 1'000'000; // num_orcs
  uint64_t max_total_bytes = 24u << 20;     // everything the table holds, all modules
  std::shared_ptr<MemoryBudget> budget;     // charged "module tables" while the table lives
};

struct ModuleSymbol {
  uint64_t address = 0, size = 0;  // size: st_size, else up to the next symbol or text end
  std::string name;
};

struct GuestModule {
  uint64_t address = 0;  // struct module
  std::string name;
  uint64_t text_start = 0, text_end = 0;  // core text (mem[MOD_TEXT] or core_layout)
  std::vector<ModuleSymbol> symbols;      // functions in text, sorted by address
  OrcTable orc;                           // empty: none read (a note says why)
};

// Where the readers find the fields of struct module (resolved from BTF once per boot).
struct ModuleLayout {
  uint64_t modules = 0;  // address of the list head (symbol `modules`)
  uint64_t size = 0;     // sizeof(struct module), bounded
  uint64_t list = 0, name = 0, name_len = 0, state = 0;
  // Core text: 6.4+ mem[MOD_TEXT].{base,size}; 6.1 core_layout.{base,text_size|size}.
  uint64_t text_base = 0, text_size = 0;
  uint32_t text_size_bytes = 4;
  // mod->kallsyms (a pointer, preferred: it is what the kernel's own lookups follow) or the
  // older in-struct core_kallsyms; the offsets of symtab/num_symtab/strtab in mod_kallsyms.
  std::optional<uint64_t> kallsyms_ptr, kallsyms_inline;
  uint64_t ks_symtab = 0, ks_num_symtab = 0, ks_strtab = 0;
  // mod->arch ORC fields (absent without CONFIG_UNWINDER_ORC).
  std::optional<uint64_t> orc_ip, orc_entries, num_orcs;

  // kNotFound without the `modules` symbol or struct module in BTF.
  static Result<ModuleLayout> resolve(const KernelAccess& k);
};

class ModuleTable {
 public:
  // Walks the list: at most limits.max_modules nodes, each node's prev must point back at the
  // previous one (a cycle or a forged link ends the walk with a note). `orc_format` decodes the
  // module ORC entries (the core table's format: the same struct orc_entry).
  static Result<ModuleTable> read(KernelAccess& k, const ModuleLayout& layout, const OrcFormat& orc_format,
                                  const ModuleLimits& limits = {});
  ModuleTable() = default;

  // The module whose core text holds `ip`; nullptr otherwise.
  const GuestModule* find(uint64_t ip) const;
  // The function of a module containing `ip`, with its module.
  struct Hit {
    const GuestModule* module = nullptr;
    const ModuleSymbol* symbol = nullptr;  // null: in the module's text, no symbol covers it
  };
  std::optional<Hit> lookup(uint64_t ip) const;

  const std::vector<GuestModule>& modules() const { return mods_; }
  const std::vector<std::string>& notes() const { return notes_; }
  uint64_t bytes() const { return charge_.bytes(); }

 private:
  std::vector<GuestModule> mods_;  // sorted by text_start, text ranges disjoint
  std::vector<std::string> notes_; // modules or tables skipped, and why (bounded)
  MemoryCharge charge_;
};

}  // namespace stallmon::introspect
