// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: the ORC table reader (counts, format detection, sortedness) and the
// backtracer's stack scan and ORC chains over a fuzzed table and stack: never a crash, a hang,
// more than max_frames frames, or a verified frame outside kernel text.
#include "orc_input.h"
#include "stallmon/introspect/backtrace.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  auto& guest = fuzz::orc_guest();
  fuzz::apply_orc_input(guest.g, data, size);
  BacktraceOptions o;
  o.orc.budget = std::make_shared<MemoryBudget>("fuzz", 1 << 20);
  auto r = BacktraceReader::create(guest.k, o);
  if (!r.ok()) return 0;
  auto bt = (*r)->backtrace_task(guest.g.task);
  if (!bt.ok()) return 0;
  if (bt->frames.size() > o.max_frames) __builtin_trap();
  for (const Frame& f : bt->frames) {
    if (!(*r)->in_text(f.address) && f.verification != Verification::kScannedUnverified) __builtin_trap();
    (void)f.format();
  }
  return 0;
}
