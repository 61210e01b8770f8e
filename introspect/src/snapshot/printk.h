// SPDX-License-Identifier: Apache-2.0
// Internal: the lockless printk ring buffer reader (kernel/printk/printk_ringbuffer.[ch], 5.10+).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "field_set.h"
#include "stallmon/introspect/snapshot.h"

namespace stallmon::introspect::snapshot_detail {

struct PrintkLayout {
  uint64_t prb_ptr_addr = 0;  // &prb (a struct printk_ringbuffer *)
  FieldSet rb;                // struct printk_ringbuffer
  int count_bits = -1, descs = -1, infos = -1, head_id = -1, tail_id = -1;
  int size_bits = -1, data = -1;
  uint64_t desc_size = 0;
  FieldSet desc;              // struct prb_desc
  int state_var = -1, blk_begin = -1, blk_next = -1;
  uint64_t info_size = 0;
  FieldSet info;              // struct printk_info
  int seq = -1, ts_nsec = -1, text_len = -1, facility = -1, flags = -1, level = -1, caller_id = -1;
};

Result<PrintkLayout> resolve_printk_layout(KernelAccess& k);

Result<std::vector<PrintkRecord>> read_printk(KernelAccess& k, const PrintkLayout& l, uint32_t max_records,
                                              uint32_t max_text, std::vector<SnapshotError>* errors);

}  // namespace stallmon::introspect::snapshot_detail
