// SPDX-License-Identifier: Apache-2.0
// Kernel symbols: name → address and address → (name, offset). Sources: kallsyms decoded from
// guest memory (needs only VMCOREINFO, Linux ≥ 6.0), a vmlinux ELF .symtab, a System.map or
// /proc/kallsyms text.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/introspect/memory_budget.h"

namespace stallmon::introspect {

class KernelMemory;
struct VmcoreInfo;

struct Symbol {
  std::string name;
  uint64_t address = 0;
  char type = '?';  // nm-style type letter: T t D d B b R r A ...
};

struct SymbolLookup {
  const Symbol* symbol = nullptr;  // points into the SymbolTable
  uint64_t offset = 0;             // address - symbol->address
  uint64_t size = 0;               // next higher symbol address - symbol->address; 0 for the last
};

// Bounds applied to every source.
struct SymbolLimits {
  uint32_t max_symbols = 1'000'000;       // a 6.12 kernel has ~163,000
  uint32_t max_name_len = 512;            // KSYM_NAME_LEN is 512 since 6.1
  uint64_t max_names_bytes = 32ull << 20; // kallsyms_names upper bound (6.12: ~1.6 MB)
  // Charged for the tables read from the guest and the decoded symbols while they are built
  // (kOverBudget names which); null: no budget (tools, tests).
  std::shared_ptr<MemoryBudget> budget;
};

// Estimated heap bytes of one decoded symbol beyond its name (Symbol, name index node, address
// index entry): what the budget is charged per symbol before the symbol exists.
inline constexpr uint64_t kSymbolOverheadBytes = sizeof(Symbol) + 64 + 4;

// The raw kallsyms tables, as bytes (what the kernel's scripts/kallsyms emits). Decoding works
// on these so that it can be tested and fuzzed without guest memory.
struct KallsymsTables {
  uint32_t num_syms = 0;
  std::span<const uint8_t> names;        // kallsyms_names (may extend past the last name)
  std::span<const uint8_t> token_table;  // kallsyms_token_table (256 NUL-terminated tokens)
  std::span<const uint16_t> token_index; // kallsyms_token_index (256 entries)
  // Base-relative (CONFIG_KALLSYMS_BASE_RELATIVE): `offsets` (num_syms) and `relative_base`.
  // Otherwise `addresses` (num_syms absolute addresses) and `offsets` empty.
  std::span<const int32_t> offsets;
  uint64_t relative_base = 0;
  std::span<const uint64_t> addresses;
  // With CONFIG_KALLSYMS_ABSOLUTE_PERCPU non-negative offsets are absolute values and negative
  // ones are relative_base - 1 - offset. nullopt: detect (any negative offset ⇒ absolute
  // percpu, as on x86-64 SMP kernels before 6.15).
  std::optional<bool> absolute_percpu;
};

// Decodes kallsyms tables into symbols in table order. Errors (kCorrupt/kLimit) for truncated
// tables, token indices outside the token table, names longer than limits.max_name_len, or
// num_syms above limits.max_symbols; kOverBudget when the decoded symbols would not fit
// limits.budget (charged before they are allocated, given back on return).
Result<std::vector<Symbol>> decode_kallsyms(const KallsymsTables& tables,
                                            const SymbolLimits& limits = {});

// kallsyms tables as read from guest memory (owned), with their content hash: the key under
// which decoded symbols are shared between guests. The bytes stay charged to the budget while
// this object lives.
struct GuestKallsyms {
  uint32_t num_syms = 0;
  std::vector<uint8_t> names, token_table;
  std::vector<uint16_t> token_index;
  std::vector<int32_t> offsets;
  uint64_t relative_base = 0;
  std::vector<uint64_t> addresses;
  MemoryCharge charge;

  KallsymsTables view() const;
  // SHA-256 (hex) over every table byte and relative_base.
  std::string sha256() const;
};

// Reads the kallsyms tables located by VMCOREINFO's SYMBOL(kallsyms_*) lines (Linux >= 6.0),
// bounded by `limits` and charged to limits.budget before each allocation.
Result<GuestKallsyms> read_guest_kallsyms(KernelMemory& mem, const VmcoreInfo& info, const SymbolLimits& limits = {});

class SymbolTable {
 public:
  SymbolTable() = default;
  explicit SymbolTable(std::vector<Symbol> symbols);
  // The name index points into the symbols: copies rebuild it, moves keep it.
  SymbolTable(const SymbolTable& other);
  SymbolTable& operator=(const SymbolTable& other);
  SymbolTable(SymbolTable&&) noexcept = default;
  SymbolTable& operator=(SymbolTable&&) noexcept = default;

  // kallsyms from guest memory, located by the SYMBOL(kallsyms_*) lines of VMCOREINFO.
  // kNotFound when VMCOREINFO lacks them (kernels before 6.0).
  static Result<SymbolTable> from_kallsyms(KernelMemory& mem, const VmcoreInfo& info,
                                           const SymbolLimits& limits = {});
  // A vmlinux ELF's .symtab (kNotFound if it has none, as Debian's vmlinuz-extracted images).
  // Addresses are link-time: add KERNELOFFSET with relocate() for a KASLR guest.
  static Result<SymbolTable> from_vmlinux(const std::string& path, const SymbolLimits& limits = {});
  // System.map or /proc/kallsyms text: "ADDR TYPE NAME [\t[module]]". Module symbols (lines
  // with a [module] column) are skipped. kCorrupt for malformed lines.
  static Result<SymbolTable> from_system_map_text(std::string_view text,
                                                  const SymbolLimits& limits = {});
  static Result<SymbolTable> from_system_map(const std::string& path,
                                             const SymbolLimits& limits = {});

  // Returns a copy with `delta` added to every address except absolute ('A'/'a') symbols.
  SymbolTable relocate(uint64_t delta) const;

  // Address of the first symbol called `name`; kNotFound naming it otherwise.
  Result<uint64_t> address(std::string_view name) const;
  const Symbol* find(std::string_view name) const;
  // The symbol containing `addr`: the highest-addressed symbol at or below it, preferring
  // non-absolute symbols. nullopt below the first symbol or more than `max_offset` past it.
  std::optional<SymbolLookup> lookup(uint64_t addr, uint64_t max_offset = 1ull << 20) const;
  // "func+0x1f" (or "func" at offset 0, or "0xffff..." when unknown).
  std::string format(uint64_t addr) const;

  const std::vector<Symbol>& symbols() const { return symbols_; }
  size_t size() const { return symbols_.size(); }
  // Estimated heap bytes held (symbols, names, indexes): what a user of the table is charged.
  uint64_t memory_bytes() const { return memory_bytes_; }

 private:
  void index();
  std::vector<Symbol> symbols_;                                 // source order
  std::unordered_map<std::string_view, uint32_t> by_name_;      // first occurrence
  std::vector<uint32_t> by_address_;                            // sorted indices
  uint64_t memory_bytes_ = 0;
};

}  // namespace stallmon::introspect
