// SPDX-License-Identifier: Apache-2.0
#include "text.h"

#include <algorithm>
#include <cstdint>

namespace stallmon::diagnosis {

std::string sanitize_text(std::string_view in, std::size_t max_bytes) {
  std::string out;
  out.reserve(std::min(in.size(), max_bytes));
  std::size_t i = 0;
  while (i < in.size() && out.size() < max_bytes) {
    const auto c = static_cast<unsigned char>(in[i]);
    if (c < 0x80) {
      out.push_back(c < 0x20 || c == 0x7f ? '?' : static_cast<char>(c));
      ++i;
      continue;
    }
    // Multi-byte sequence: lead byte gives the length; reject overlong forms, surrogates and
    // values past U+10FFFF (the rules of RFC 3629).
    std::size_t len = 0;
    uint32_t cp = 0;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      cp = c & 0x07;
    }
    bool ok = len > 0 && i + len <= in.size();
    for (std::size_t k = 1; ok && k < len; ++k) {
      const auto cc = static_cast<unsigned char>(in[i + k]);
      ok = (cc & 0xc0) == 0x80;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (ok) ok = !(len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) && !(len == 4 && (cp < 0x10000 || cp > 0x10ffff));
    if (ok && out.size() + len <= max_bytes) {
      out.append(in.substr(i, len));
      i += len;
    } else {
      out.push_back('?');
      ++i;
    }
  }
  return out;
}

GuestView sanitize_guest_view(const GuestView& in) {
  GuestView g = in;
  for (auto& line : g.printk_tail) line = sanitize_text(line, 1024);
  for (auto& cpu : g.cpus) {
    cpu.current_comm = sanitize_text(cpu.current_comm, 64);
    for (auto& q : cpu.call_single_queue) q.function = sanitize_text(q.function, 256);
    for (auto& r : cpu.cfd_requests) r.function = sanitize_text(r.function, 256);
  }
  return g;
}

}  // namespace stallmon::diagnosis
