// SPDX-License-Identifier: Apache-2.0
// Kernel type information from BTF, parsed with libbpf: member offsets by name, feature
// detection (does `rq` have `ttwu_pending`?), type sizes. Sources: guest memory
// (__start_BTF..__stop_BTF), a vmlinux ELF's .BTF section, or raw BTF (/sys/kernel/btf/vmlinux).
// A Types object is immutable after construction and safe to share between threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/introspect/memory_budget.h"

struct btf;  // libbpf

namespace stallmon::introspect {

class KernelMemory;
class SymbolTable;

struct MemberInfo {
  uint64_t offset = 0;      // bytes from the start of the outer type
  uint64_t size = 0;        // bytes of the member's type (0 for flexible arrays/unsized)
  uint32_t type_id = 0;     // BTF id of the member's type (modifiers and typedefs kept)
  std::string type_name;    // e.g. "unsigned int", "struct task_struct *", "char[16]"
  uint32_t bitfield_bits = 0;  // non-zero for bitfields (offset is then rounded down)
};

class Types {
 public:
  inline static constexpr uint64_t kMaxBtfBytes = 64ull << 20;
  inline static constexpr uint32_t kMaxBtfTypes = 1u << 20;  // 6.12 vmlinux: ~150,000

  // Parses raw BTF bytes (copied). kCorrupt when libbpf rejects them; kLimit above kMaxBtfBytes
  // or kMaxBtfTypes; kOverBudget when the parsed types would not fit `budget` (charged before
  // libbpf parses, given back on return: the user of the Types charges memory_bytes()).
  // `origin` names where the types came from when that is not the guest's BTF ("profile
  // 1a2b3c4d"): lookups that find nothing then say so in their errors.
  static Result<std::shared_ptr<const Types>> from_btf_bytes(std::vector<uint8_t> bytes,
                                                             const std::shared_ptr<MemoryBudget>& budget = nullptr,
                                                             std::string origin = {});
  // A raw BTF file (/sys/kernel/btf/vmlinux) or an ELF file with a .BTF section.
  static Result<std::shared_ptr<const Types>> from_file(const std::string& path);
  // BTF in guest memory between the symbols __start_BTF and __stop_BTF.
  static Result<std::shared_ptr<const Types>> from_guest(KernelMemory& mem, const SymbolTable& syms,
                                                         const std::shared_ptr<MemoryBudget>& budget = nullptr);
  // Just the bytes between __start_BTF and __stop_BTF (size checked against kMaxBtfBytes and
  // charged to `charge`'s budget before the buffer is allocated).
  static Result<std::vector<uint8_t>> read_guest_btf(KernelMemory& mem, const SymbolTable& syms, MemoryCharge& charge);
  // Heap bytes a parsed blob of `btf_bytes` with `types` types is estimated to hold (raw copy,
  // libbpf's parse, the name indexes).
  static uint64_t estimated_memory(uint64_t btf_bytes, uint64_t types);
  ~Types();
  Types(const Types&) = delete;
  Types& operator=(const Types&) = delete;

  // Resolves `path` (dot-separated member names, e.g. "nr_running", "cfs.h_nr_running",
  // "node.u_flags") inside the struct/union/typedef named `type` ("rq", "__call_single_data",
  // "call_single_data_t"; "struct rq" also accepted). Members inside anonymous structs/unions
  // are found by name. kNotFound names the type or the missing member.
  Result<MemberInfo> member(std::string_view type, std::string_view path) const;
  Result<uint64_t> member_offset(std::string_view type, std::string_view path) const;
  // "rq.nr_running" form: the first component is the type name.
  Result<uint64_t> member_offset(std::string_view dotted) const;
  bool has_member(std::string_view type, std::string_view path) const;
  bool has_type(std::string_view type) const;
  // sizeof(type) for a struct/union/typedef/int/... name.
  Result<uint64_t> type_size(std::string_view type) const;

  // The type of a variable in the `.data..percpu` (or any) DATASEC, e.g. "runqueues" →
  // "struct rq". kNotFound if BTF has no VAR of that name.
  Result<std::string> variable_type_name(std::string_view variable) const;

  size_t btf_bytes() const { return raw_.size(); }
  uint64_t memory_bytes() const { return estimated_memory(raw_.size(), type_count()); }
  uint32_t type_count() const;
  const struct btf* raw_btf() const { return btf_; }
  // Empty for BTF; "profile 1a2b3c4d" for types made from a type profile.
  const std::string& origin() const { return origin_; }

 private:
  Types() = default;
  Result<uint32_t> find_type(std::string_view name) const;
  std::vector<uint8_t> raw_;
  struct btf* btf_ = nullptr;
  std::string origin_;
  // Named struct/union/typedef/int/enum ids by name (struct/union preferred over typedef).
  std::unordered_map<std::string, uint32_t> named_;
  std::unordered_map<std::string, uint32_t> vars_;
};

}  // namespace stallmon::introspect
