// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: the finding store's decoder (agent/store/src/codec.h) over arbitrary text, as
// a corrupt or foreign findings.db row would hand it. A row that decodes must be within every
// bound, and must encode back to text that decodes again (the store rewrites what it read).
#include <cstdint>
#include <string_view>

#include "codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::store;
  auto f = decode_finding(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!f.ok()) return 0;
  if (f->summary.size() > kMaxText || f->evidence.size() > kMaxList || f->cpus.size() > kMaxIds) __builtin_trap();
  for (const auto& e : f->evidence)
    if (e.host_stack.size() > kMaxList || e.facts.size() > kMaxList || e.text.size() > kMaxText) __builtin_trap();
  const std::string again = encode_finding(*f);
  if (again.size() > kMaxBody || !decode_finding(again).ok()) __builtin_trap();
  return 0;
}
