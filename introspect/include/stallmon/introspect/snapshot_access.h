// SPDX-License-Identifier: Apache-2.0
// What the snapshot readers need from a guest kernel, and nothing more: reads at kernel virtual
// addresses (batched), symbol addresses by name, symbol names by address, and member layouts by
// "type" + "member.path". The readers are written against this small interface so that they run
// unchanged on a live qemu, an ELF core, or hand-built synthetic memory in unit tests.
//
// make_kernel_access() (snapshot_kernel_access.h) adapts the library's Kernel object to it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "stallmon/base/result.h"
#include "stallmon/introspect/physical_memory.h"  // ReadRequest

namespace stallmon::introspect {

// Where a member sits inside its (outermost) type, resolved through nested and anonymous
// members. Bitfields have bit_size > 0; everything else is byte aligned.
struct MemberLayout {
  enum class Kind : uint8_t { kInt, kPointer, kArray, kStruct, kUnion, kEnum, kOther };
  uint64_t bit_offset = 0;  // from the start of the outer type
  uint32_t bit_size = 0;    // 0 unless this is a bitfield
  uint32_t size = 0;        // bytes of the member's type (for bitfields: of the underlying int)
  Kind kind = Kind::kOther;

  uint64_t offset() const { return bit_offset / 8; }
  bool is_bitfield() const { return bit_size != 0; }
};

// A symbol with its extent (the next symbol's address minus its own; 0 when unknown).
struct SymbolSpan {
  std::string name;
  uint64_t address = 0, size = 0;
};

class KernelAccess {
 public:
  virtual ~KernelAccess() = default;

  // Reads `len` bytes at kernel virtual address `va`: all or an error (kUnmapped names the
  // address). Contents are untrusted guest data.
  virtual Result<void> read(uint64_t va, void* buf, size_t len) = 0;

  // Reads every request (kernel virtual addresses), setting each one's `ok`; returns the first
  // error. Default: loops over read(). Implementations over a live qemu should issue as few
  // system calls as possible: a snapshot is a handful of batches.
  virtual Result<void> read_batch(std::span<ReadRequest> requests);

  // Address of a kernel symbol. Per-cpu variables give their per-cpu offset (the value kallsyms
  // shows with CONFIG_KALLSYMS_ABSOLUTE_PERCPU); add __per_cpu_offset[cpu]. kNotFound if absent.
  virtual Result<uint64_t> symbol(std::string_view name) const = 0;

  // "name" or "name+0x1f" for an address inside a known symbol; empty when unknown.
  virtual std::string symbolize(uint64_t address) const = 0;

  // The symbol containing `address`, with its size (backtraces print "func+0x1f/0x80");
  // nullopt when unknown. Default: none.
  virtual std::optional<SymbolSpan> symbol_at(uint64_t address) const {
    (void)address;
    return std::nullopt;
  }
  // Layout of `path` (dot separated, e.g. "cfs.h_nr_running") inside struct/union `type` (no
  // "struct " prefix). kNotFound when the type or a member does not exist: that is how the
  // readers detect kernel features.
  virtual Result<MemberLayout> member(std::string_view type, std::string_view path) const = 0;

  // sizeof(type); kNotFound if absent.
  virtual Result<uint64_t> type_size(std::string_view type) const = 0;

  // sizeof a (per-cpu) variable from type information (its BTF VAR; kernel BTF has the per-cpu
  // ones). kNotFound when unknown: callers then assume the type the variable has always had.
  virtual Result<uint64_t> variable_size(std::string_view name) const {
    return Error(ErrorCode::kNotFound, "no type information for variable " + std::string(name));
  }

  // Called once at the start of each snapshot (e.g. to drop a per-snapshot translation cache).
  virtual void begin_snapshot() {}
};

// A KernelAccess that answers type queries only (from a DWARF, ISF or BTF file: profile
// making): reads fail, no symbol exists. `what` names the source in those errors.
class TypesOnlyAccess : public KernelAccess {
 public:
  explicit TypesOnlyAccess(std::string what) : what_(std::move(what)) {}
  Result<void> read(uint64_t va, void*, size_t) override {
    return Error(ErrorCode::kUnsupported, what_ + ": types only, no memory", va);
  }
  Result<uint64_t> symbol(std::string_view name) const override {
    return Error(ErrorCode::kNotFound, what_ + ": types only, no symbol " + std::string(name));
  }
  std::string symbolize(uint64_t) const override { return {}; }

 protected:
  std::string what_;
};

}  // namespace stallmon::introspect
