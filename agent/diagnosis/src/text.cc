// SPDX-License-Identifier: Apache-2.0
#include "text.h"

#include <algorithm>
#include <cstdint>

#include "stallmon/base/utf8.h"

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
    // Multi-byte sequence: kept whole when well-formed and it fits.
    const std::size_t len = utf8_sequence_length(in, i);
    const bool ok = len > 0;
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
    if (cpu.kernel_trace) {
      KernelTrace& t = *cpu.kernel_trace;
      if (t.frames.size() > kMaxTraceFrames) {
        t.frames.resize(kMaxTraceFrames);
        t.truncated = true;
      }
      t.irq_frames = std::min(t.irq_frames, t.frames.size());
      if (t.interrupted && *t.interrupted >= t.frames.size()) t.interrupted.reset();
      for (auto& f : t.frames) f = sanitize_text(f, 256);
      t.comm = sanitize_text(t.comm, 64);
      t.error = sanitize_text(t.error, 512);
    }
  }
  return g;
}

}  // namespace stallmon::diagnosis
