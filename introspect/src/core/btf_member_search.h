// SPDX-License-Identifier: Apache-2.0
// The one search for a member by name in a BTF composite, descending into anonymous members:
// used by Types::member (core/btf_types.cc) and btf_member_layout (snapshot/btf_layout.cc).
#pragma once

#include <cstdint>
#include <string_view>

struct btf;

namespace stallmon::introspect::detail {

// Members looked at in one search, over every anonymous member it descends into. The kernel's
// largest composites (task_struct and its anonymous unions) need a few hundred.
inline constexpr uint32_t kMaxMemberVisits = 1u << 16;

struct BtfMemberHit {
  uint64_t bit_offset = 0;  // relative to the composite searched
  uint32_t type_id = 0;     // the member's type, as declared
  uint32_t bitfield_bits = 0;
};

enum class MemberSearch { kFound, kNotFound, kOverBudget };

// Finds `name` in the composite `id` (typedefs and modifiers of it are followed). A guest's BTF
// may nest a composite in itself through anonymous members, or fan out widely at every level:
// unbounded that is exponential (found by fuzzing: 2 KiB of BTF kept a lookup busy past
// libFuzzer's 10 s timeout). So a composite already on the path is not entered again, and the
// search gives up (kOverBudget) after kMaxMemberVisits members; anonymous members nested deeper
// than `max_depth` are not entered (each caller keeps its own bound).
MemberSearch find_btf_member(const struct btf* b, uint32_t id, std::string_view name, int max_depth,
                             BtfMemberHit& out);

}  // namespace stallmon::introspect::detail
