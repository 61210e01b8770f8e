// SPDX-License-Identifier: Apache-2.0
// Guest memory is hostile input, and its strings (task names, symbols, console lines) end up in
// summaries that the API sends as proto strings, which must be valid UTF-8. Internal.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "stallmon/diagnosis/observation.h"

namespace stallmon::diagnosis {

// Valid UTF-8 is kept; invalid bytes and control characters become '?'; at most `max_bytes`.
std::string sanitize_text(std::string_view in, std::size_t max_bytes = 512);

// "0x57ac6e9d": addresses, flags and magic words in evidence.
std::string hex(uint64_t v);

// Frames of a kernel trace kept (the daemon sends at most this many, innermost first).
inline constexpr std::size_t kMaxTraceFrames = 16;

// The view with every guest-sourced string sanitised (and trace frames bounded).
GuestView sanitize_guest_view(const GuestView& in);

}  // namespace stallmon::diagnosis
