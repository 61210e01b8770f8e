// SPDX-License-Identifier: Apache-2.0
// Human-readable rendering of a GuestSnapshot (stallctl inspect, daemon logs). JSON is in
// snapshot_json.h.
#pragma once

#include <string>

#include "stallmon/introspect/snapshot.h"

namespace stallmon::introspect {

struct SnapshotFormatOptions {
  bool printk = true;          // include the printk tail
  uint32_t printk_lines = 20;  // newest N records
  bool errors = true;
};

// A per-CPU table (runqueue, watchdog), then each CPU's call_single_queue and cfd targets, the
// printk tail and the errors. Plain ASCII, one line per fact, stable enough to grep.
std::string format_snapshot(const GuestSnapshot& snapshot, const SnapshotFormatOptions& options = {});

// "[   12.345678] text" as the kernel prints a record on the console (CONFIG_PRINTK_TIME); one
// line per embedded newline.
std::string format_printk_record(const PrintkRecord& record);

}  // namespace stallmon::introspect
