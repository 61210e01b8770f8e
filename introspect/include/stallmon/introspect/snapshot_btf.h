// SPDX-License-Identifier: Apache-2.0
// Member layouts straight from a libbpf `struct btf`, with what the snapshot readers need beyond
// Types::member(): exact bit offsets of bitfields (printk_info.level) and the member's kind
// (cpumask_var_t is a pointer or an array depending on CONFIG_CPUMASK_OFFSTACK).
#pragma once

#include <string_view>

#include "stallmon/base/result.h"
#include "stallmon/introspect/snapshot_access.h"

struct btf;  // libbpf

namespace stallmon::introspect {

// Resolves dot-separated `path` inside the struct/union/typedef `type` ("struct " prefix
// allowed); members of anonymous structs/unions are found by name. Typedefs and qualifiers of
// the member type are skipped to determine its kind. kNotFound names what is missing.
Result<MemberLayout> btf_member_layout(const struct btf* btf, std::string_view type, std::string_view path);

// sizeof(type) for a struct/union/typedef name. kNotFound if absent.
Result<uint64_t> btf_type_size(const struct btf* btf, std::string_view type);

// sizeof the variable `name` (a BTF VAR, e.g. a per-cpu variable). kNotFound if absent.
Result<uint64_t> btf_variable_size(const struct btf* btf, std::string_view name);

}  // namespace stallmon::introspect
