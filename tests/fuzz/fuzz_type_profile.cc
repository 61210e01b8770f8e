// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: a type profile from arbitrary bytes (a profile directory may be shared, so a
// profile is untrusted input): the parser, the BTF synthesized from what it accepts, and every
// lookup the readers make through it.
#include <cstdint>
#include <string_view>

#include "stallmon/introspect/snapshot_btf.h"
#include "stallmon/introspect/type_profile.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  auto p = parse_type_profile(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!p.ok()) return 0;
  if (parse_type_profile(format_type_profile(*p)).ok() == false) __builtin_trap();  // what it writes it reads
  auto budget = std::make_shared<MemoryBudget>("fuzz", 16u << 20);
  auto t = types_from_profile(*p, budget);
  if (!t.ok()) return 0;
  for (const ProfileType& type : p->types) {
    (void)btf_type_size((*t)->raw_btf(), type.name);
    for (const ProfileMember& m : type.members) {
      auto l = btf_member_layout((*t)->raw_btf(), type.name, m.path);
      if (!l.ok()) continue;
      const uint64_t end_bits = l->is_bitfield() ? l->bit_offset + l->bit_size : (l->offset() + l->size) * 8;
      if (end_bits > type.size * 8) __builtin_trap();  // checked bound
    }
  }
  for (const ProfileVariable& v : p->variables) (void)btf_variable_size((*t)->raw_btf(), v.name);
  return 0;
}
