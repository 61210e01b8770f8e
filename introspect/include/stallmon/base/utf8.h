// SPDX-License-Identifier: Apache-2.0
// UTF-8 validation for text that comes from guests (task comms, printk records, symbol names):
// hostile bytes must not reach protobuf strings (which reject invalid UTF-8), JSON (nlohmann
// throws at dump time) or the Prometheus exposition format.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace stallmon {

// Length of the well-formed UTF-8 sequence starting at s[i] (1 for ASCII), or 0 where none
// starts there: truncated sequences, stray continuation bytes, overlong forms, surrogates and
// code points above U+10FFFF are rejected (RFC 3629; what protobuf and Go's utf8.Valid accept).
// Precondition: i < s.size().
std::size_t utf8_sequence_length(std::string_view s, std::size_t i);

// A copy of `s` in which every byte that does not start a well-formed sequence is replaced by
// `replacement` (default U+FFFD) and the scan resumes at the next byte.
std::string sanitize_utf8(std::string_view s, std::string_view replacement = "\xEF\xBF\xBD");

}  // namespace stallmon
