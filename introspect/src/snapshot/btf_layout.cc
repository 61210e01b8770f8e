// SPDX-License-Identifier: Apache-2.0
#include <bpf/btf.h>

#include <string>

#include "../core/btf_member_search.h"
#include "stallmon/introspect/snapshot_btf.h"

namespace stallmon::introspect {

namespace {

constexpr int kMaxDepth = 16;  // nesting bound: BTF from guest memory is untrusted
// The largest object the readers ever size from BTF (task_struct is ~10-20 KiB; struct rq ~4
// KiB): a guest's BTF may claim anything, and these sizes become buffers.
constexpr uint64_t kMaxObjectBytes = 1u << 20;
constexpr uint64_t kMaxScalarBytes = 8;  // x86-64 ints, pointers and enums

int find_named(const struct btf* b, std::string_view type) {
  if (type.starts_with("struct ")) type.remove_prefix(7);
  else if (type.starts_with("union ")) type.remove_prefix(6);
  std::string name(type);
  for (int kind : {BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_TYPEDEF}) {
    int id = btf__find_by_name_kind(b, name.c_str(), kind);
    if (id > 0) return id;
  }
  return -1;
}

// Skips typedefs and qualifiers (bounded).
const struct btf_type* strip(const struct btf* b, uint32_t& id) {
  for (int i = 0; i < kMaxDepth; ++i) {
    const struct btf_type* t = btf__type_by_id(b, id);
    if (!t) return nullptr;
    if (btf_is_typedef(t) || btf_is_mod(t) || btf_is_type_tag(t)) {
      id = t->type;
      continue;
    }
    return t;
  }
  return nullptr;
}

MemberLayout::Kind kind_of(const struct btf_type* t) {
  if (btf_is_int(t)) return MemberLayout::Kind::kInt;
  if (btf_is_ptr(t)) return MemberLayout::Kind::kPointer;
  if (btf_is_array(t)) return MemberLayout::Kind::kArray;
  if (btf_is_struct(t)) return MemberLayout::Kind::kStruct;
  if (btf_is_union(t)) return MemberLayout::Kind::kUnion;
  if (btf_is_any_enum(t)) return MemberLayout::Kind::kEnum;
  return MemberLayout::Kind::kOther;
}

}  // namespace

Result<MemberLayout> btf_member_layout(const struct btf* b, std::string_view type, std::string_view path) {
  if (!b) return Error(ErrorCode::kInvalidArgument, "no BTF");
  int id = find_named(b, type);
  if (id <= 0) return Error(ErrorCode::kNotFound, "type " + std::string(type) + " not in BTF");
  uint32_t cur = static_cast<uint32_t>(id);
  MemberLayout out;
  uint64_t total = 0;
  std::string_view rest = path;
  int steps = 0;
  while (!rest.empty()) {
    if (++steps > kMaxDepth) return Error(ErrorCode::kLimit, "member path too deep: " + std::string(path));
    size_t dot = rest.find('.');
    std::string_view name = rest.substr(0, dot);
    rest = dot == std::string_view::npos ? std::string_view() : rest.substr(dot + 1);
    detail::BtfMemberHit hit;
    switch (detail::find_btf_member(b, cur, name, kMaxDepth, hit)) {
      case detail::MemberSearch::kFound: break;
      case detail::MemberSearch::kOverBudget:
        return Error(ErrorCode::kLimit, "member " + std::string(type) + "." + std::string(path) +
                                            ": more than " + std::to_string(detail::kMaxMemberVisits) +
                                            " members searched (anonymous members nested too widely)");
      case detail::MemberSearch::kNotFound:
        return Error(ErrorCode::kNotFound, "member " + std::string(type) + "." + std::string(path) + " not in BTF");
    }
    total += hit.bit_offset;
    out.bit_size = hit.bitfield_bits;
    cur = hit.type_id;
  }
  const struct btf_type* t = strip(b, cur);
  const std::string what = std::string(type) + "." + std::string(path);
  if (!t) return Error(ErrorCode::kCorrupt, "bad BTF type for " + what);
  out.kind = kind_of(t);
  // Sizes are checked against what a kernel really has before anything is sized by them: the
  // outer type at most kMaxObjectBytes, the member inside it, scalars at most 8 bytes.
  const int64_t parent = btf__resolve_size(b, static_cast<uint32_t>(id));
  if (parent <= 0 || static_cast<uint64_t>(parent) > kMaxObjectBytes)
    return Error(ErrorCode::kCorrupt, "BTF size of " + std::string(type) + " implausible (" + std::to_string(parent) +
                                          " bytes) for " + what);
  out.bit_offset = total;
  if (out.bit_size == 0 && total % 8 != 0)
    return Error(ErrorCode::kCorrupt, "unaligned member " + what);
  const int64_t sz = btf__resolve_size(b, cur);
  const uint64_t size = sz > 0 ? static_cast<uint64_t>(sz) : 0;
  const uint64_t end_bits = out.bit_size ? total + out.bit_size : total + size * 8;
  if (size > static_cast<uint64_t>(parent) || end_bits > static_cast<uint64_t>(parent) * 8)
    return Error(ErrorCode::kCorrupt, "BTF member " + what + " (offset " + std::to_string(total / 8) + ", " +
                                          std::to_string(size) + " bytes) lies outside " + std::string(type) + " (" +
                                          std::to_string(parent) + " bytes)");
  out.size = static_cast<uint32_t>(size);
  const bool scalar = out.kind == MemberLayout::Kind::kInt || out.kind == MemberLayout::Kind::kPointer ||
                      out.kind == MemberLayout::Kind::kEnum;
  if (scalar && out.size > kMaxScalarBytes)
    return Error(ErrorCode::kCorrupt, "BTF member " + what + " is a " + std::to_string(out.size) +
                                          "-byte scalar (at most 8)");
  return out;
}

Result<uint64_t> btf_type_size(const struct btf* b, std::string_view type) {
  if (!b) return Error(ErrorCode::kInvalidArgument, "no BTF");
  int id = find_named(b, type);
  if (id <= 0) return Error(ErrorCode::kNotFound, "type " + std::string(type) + " not in BTF");
  int64_t sz = btf__resolve_size(b, static_cast<uint32_t>(id));
  if (sz < 0) return Error(ErrorCode::kCorrupt, "no size for type " + std::string(type));
  if (static_cast<uint64_t>(sz) > kMaxObjectBytes)
    return Error(ErrorCode::kCorrupt, "BTF size of " + std::string(type) + " implausible: " + std::to_string(sz));
  return static_cast<uint64_t>(sz);
}

Result<uint64_t> btf_variable_size(const struct btf* b, std::string_view name) {
  if (!b) return Error(ErrorCode::kInvalidArgument, "no BTF");
  int id = btf__find_by_name_kind(b, std::string(name).c_str(), BTF_KIND_VAR);
  if (id <= 0) return Error(ErrorCode::kNotFound, "variable " + std::string(name) + " not in BTF");
  const struct btf_type* t = btf__type_by_id(b, static_cast<uint32_t>(id));
  if (!t) return Error(ErrorCode::kCorrupt, "bad BTF variable " + std::string(name));
  int64_t sz = btf__resolve_size(b, t->type);
  if (sz <= 0) return Error(ErrorCode::kCorrupt, "no size for variable " + std::string(name));
  if (static_cast<uint64_t>(sz) > kMaxObjectBytes)
    return Error(ErrorCode::kCorrupt, "BTF size of variable " + std::string(name) + " implausible: " + std::to_string(sz));
  return static_cast<uint64_t>(sz);
}

}  // namespace stallmon::introspect
