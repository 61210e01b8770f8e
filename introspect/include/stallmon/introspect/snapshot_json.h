// SPDX-License-Identifier: Apache-2.0
// JSON form of a GuestSnapshot (nlohmann::json; link stallmon::json). Addresses are hex strings
// ("0xffff..."), since JSON numbers lose precision above 2^53; counters are numbers. Optional
// fields that the kernel lacks are omitted rather than null.
#pragma once

#include <nlohmann/json.hpp>

#include "stallmon/introspect/snapshot.h"

namespace stallmon::introspect {

nlohmann::json snapshot_to_json(const GuestSnapshot& snapshot);

// Serialises with invalid UTF-8 replaced (guest strings are untrusted).
std::string snapshot_to_json_string(const GuestSnapshot& snapshot, int indent = 2);

}  // namespace stallmon::introspect
