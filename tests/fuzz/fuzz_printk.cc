// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: the printk tail readers over fuzzed fields of the synthetic kernels: the
// ring buffer (descriptor ids and states, lpos of text blocks, wrapped blocks) of the 6.1
// guest, and the same records applied to a 3.10 guest's log_buf (its globals and the record
// headers: lengths, wrap markers, text lengths).
#include "stallmon/introspect/snapshot.h"
#include "synthetic_guest_input.h"

namespace {

using stallmon::introspect::testing::SyntheticKernel;

struct LogBufGuest {
  SyntheticKernel k{1, SyntheticKernel::Layout::kLinux310};
  std::vector<uint64_t> targets;
  LogBufGuest() {
    k.init_log_buf(4096);
    for (int i = 0; i < 300; ++i) k.log_printk("message " + std::to_string(i), 1000 * i, i % 8);  // wraps
    targets.push_back(*k.symbol("log_buf"));  // the globals: pointer, length, indices, seq
    for (uint64_t a = k.log_buf_addr(); a < k.log_buf_addr() + 4096; a += 256) targets.push_back(a);
  }
};

void check(const stallmon::Result<std::vector<stallmon::introspect::PrintkRecord>>& r) {
  if (!r.ok()) return;
  if (r->size() > 16) __builtin_trap();
  for (const auto& p : *r)
    if (p.text.size() > 256) __builtin_trap();  // max_text
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  fuzz::synthetic_guest().with_input(data, size, [](KernelAccess& k) {
    std::vector<SnapshotError> errors;
    check(read_printk_tail(k, 16, 256, &errors));
  });
  static LogBufGuest* old = new LogBufGuest();  // built once per process, never destroyed
  fuzz::with_records(old->k, old->targets, data, size, [](SyntheticKernel& k) {
    std::vector<SnapshotError> errors;
    check(read_printk_tail(k, 16, 256, &errors));
  });
  return 0;
}
