// SPDX-License-Identifier: Apache-2.0
// Type layouts from a Volatility 3 ISF file (JSON "intermediate symbol format", as dwarf2json
// writes it: base_types, user_types with fields at byte offsets, enums, symbols with types):
// another input of `stallctl profile make`, for fleets that already keep ISF per kernel build.
// Only the type queries of KernelAccess are answered. ISF files come from elsewhere, so sizes and
// nesting are bounded like any untrusted input.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "stallmon/base/result.h"
#include "stallmon/introspect/snapshot_access.h"

namespace stallmon::introspect {

// At most 512 MiB of JSON (an uncompressed 6.x kernel's ISF is ~50-100 MB).
Result<std::unique_ptr<KernelAccess>> open_isf_types(const std::string& path);
Result<std::unique_ptr<KernelAccess>> isf_types_from_text(std::string_view json, std::string origin = "ISF");

}  // namespace stallmon::introspect
