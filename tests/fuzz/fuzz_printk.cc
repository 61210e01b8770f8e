// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: the printk ring buffer reader (descriptor ids and states, lpos of text
// blocks, wrapped blocks) over the synthetic kernel's ring with fuzzed fields.
#include "stallmon/introspect/snapshot.h"
#include "synthetic_guest_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  fuzz::synthetic_guest().with_input(data, size, [](KernelAccess& k) {
    std::vector<SnapshotError> errors;
    auto r = read_printk_tail(k, 16, 256, &errors);
    if (r.ok()) {
      if (r->size() > 16) __builtin_trap();
      for (const PrintkRecord& p : *r)
        if (p.text.size() > 256) __builtin_trap();  // max_text
    }
  });
  return 0;
}
