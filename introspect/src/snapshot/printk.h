// SPDX-License-Identifier: Apache-2.0
// Internal: the printk tail readers: the lockless ring buffer (kernel/printk/printk_ringbuffer.[ch],
// 5.10+) and, before it, log_buf with struct printk_log records (struct log in 3.10).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "field_set.h"
#include "stallmon/introspect/snapshot.h"

namespace stallmon::introspect::snapshot_detail {

// log_buf (kernel/printk/printk.c 3.11..5.9, kernel/printk.c in 3.10): a byte buffer of
// variable-length records, each a header then text then dictionary then padding, from
// log_first_idx to log_next_idx; a header with len 0 means "continue at index 0".
struct LogBufLayout {
  uint64_t log_buf = 0, log_buf_len = 0, first_idx = 0, next_idx = 0;  // symbol addresses
  std::optional<uint64_t> first_seq;                                   // log_first_seq, if known
  uint32_t header_size = 0;  // sizeof(struct printk_log)
  MemberLayout ts_nsec, len, text_len, facility, flags, level;
  uint32_t max_bytes = 0;    // log_buf_len when the layout was made: what a take() reads at most
};

struct PrintkLayout {
  std::optional<LogBufLayout> log_buf;  // set: the kernel has log_buf, not prb (the rest unused)
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

// The ring buffer's layout if the kernel has `prb`, else log_buf's. kLimit when log_buf_len is
// above kMaxLogBufBytes (read whole on every take).
Result<PrintkLayout> resolve_printk_layout(KernelAccess& k);
inline constexpr uint32_t kMaxLogBufBytes = 4u << 20;
// log_buf's layout alone (what resolve_printk_layout uses without `prb`).
Result<LogBufLayout> resolve_log_buf(KernelAccess& k);

Result<std::vector<PrintkRecord>> read_printk(KernelAccess& k, const PrintkLayout& l, uint32_t max_records,
                                              uint32_t max_text, std::vector<SnapshotError>* errors);

}  // namespace stallmon::introspect::snapshot_detail
