// SPDX-License-Identifier: Apache-2.0
// A finding as the JSON text the store keeps, and back. Every string in a finding came partly
// from guest memory (comms, symbols, console lines) or from a file that may not be ours: both
// directions bound every string, list and the whole text, and decoding reports a malformed
// text as an error value (kCorrupt), never an exception.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "stallmon/base/result.h"
#include "stallmon/diagnosis/finding.h"
#include "stallmon/diagnosis/incident_bundle.h"

namespace stallmon::store {

inline constexpr std::size_t kMaxText = 4096;        // summary, evidence text, panic message
inline constexpr std::size_t kMaxName = 512;         // ids, names, frames, fact keys and values
inline constexpr std::size_t kMaxList = 64;          // evidence links, frames, stack, facts
inline constexpr std::size_t kMaxIds = 256;          // cpus, symptom ids, holder candidates
inline constexpr std::size_t kMaxBody = 64 * 1024;   // one encoded finding

// JSON of at most kMaxBody bytes. Strings are cut at a UTF-8 boundary and lists at their bound;
// if the text is still too long the last evidence links are dropped.
std::string encode_finding(const diagnosis::Finding& f);
// kCorrupt (with what was wrong) for text that is not such JSON or is over a bound.
Result<diagnosis::Finding> decode_finding(std::string_view text);

// Incident bundles (the recorder bounds them by IncidentLimits; these bounds are the file's).
inline constexpr std::size_t kMaxIncidentPoints = 200000;       // per lane
inline constexpr std::size_t kMaxPrintk = 1000;                 // console lines
inline constexpr std::size_t kMaxIncidentBody = 16 * 1024 * 1024;  // one encoded bundle

// JSON of at most kMaxIncidentBody bytes (kLimit beyond: the caller counts it as dropped).
Result<std::string> encode_incident(const diagnosis::IncidentBundle& b);
// kCorrupt for text that is not such JSON or is over a bound.
Result<diagnosis::IncidentBundle> decode_incident(std::string_view text);

// Valid UTF-8 of at most `max` bytes, cut at a character boundary.
std::string bounded(std::string_view s, std::size_t max);

}  // namespace stallmon::store
