// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: the finding store's incident-bundle decoder (agent/store/src/codec.h) over
// arbitrary text, as a corrupt or foreign findings.db row would hand it to a restarting daemon
// (open bundles are loaded back into the recorder). A bundle that decodes must be within every
// bound of the file format, and must encode back to text that decodes again to the same shape.
#include <cstdint>
#include <string_view>

#include "codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::store;
  auto b = decode_incident(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!b.ok()) return 0;
  if (b->vcpus.size() > kMaxIds || b->guest_cpus.size() > kMaxIds || b->host_stacks.size() > kMaxIds ||
      b->related.size() > kMaxIds || b->printk_tail.size() > kMaxPrintk)
    __builtin_trap();
  for (const auto& l : b->vcpus)
    if (l.points.size() > kMaxIncidentPoints) __builtin_trap();
  for (const auto& l : b->guest_cpus)
    if (l.points.size() > kMaxIncidentPoints) __builtin_trap();
  for (const auto& h : b->host_stacks)
    if (h.frames.size() > kMaxList || h.name.size() > kMaxName || h.wchan.size() > kMaxName) __builtin_trap();
  for (const auto& line : b->printk_tail)
    if (line.size() > kMaxName) __builtin_trap();
  auto again = encode_incident(*b);
  if (!again.ok()) return 0;  // kLimit: the re-encoded finding grew past a bound; counted as dropped
  auto back = decode_incident(*again);
  if (!back.ok() || back->vcpus.size() != b->vcpus.size() || back->guest_cpus.size() != b->guest_cpus.size() ||
      back->host_stacks.size() != b->host_stacks.size() || back->related.size() != b->related.size() ||
      back->window_end.has_value() != b->window_end.has_value())
    __builtin_trap();
  return 0;
}
