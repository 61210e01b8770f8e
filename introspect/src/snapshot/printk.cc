// SPDX-License-Identifier: Apache-2.0
// The lockless printk ring buffer (kernel/printk/printk_ringbuffer.[ch], since 5.10; before that
// the kernel kept `log_buf` with struct printk_log records, which is not handled here).
//
// A descriptor ring (count = 1 << count_bits) of struct prb_desc { state_var; text_blk_lpos },
// a parallel array of struct printk_info, and a text data ring (1 << size_bits bytes) of blocks
// { unsigned long id; char data[] }. state_var holds the descriptor id in its low 62 bits and the
// state (reserved/committed/finalized/reusable) in the top two. A block whose begin and next
// lpos lie in different wraps of the data ring was stored at the start of the ring instead.
#include <algorithm>

#include "printk.h"

namespace stallmon::introspect::snapshot_detail {

namespace {

constexpr uint64_t kDescFlagsShift = 62;  // DESC_FLAGS_SHIFT = BITS_PER_LONG - 2
constexpr uint64_t kDescIdMask = ~(3ULL << kDescFlagsShift);
constexpr uint64_t kDescCommitted = 1;
constexpr uint64_t kDescFinalized = 2;
constexpr uint32_t kMaxCountBits = 24;   // far above any real log_buf_len
constexpr uint32_t kMaxSizeBits = 31;

int add_member(KernelAccess& k, FieldSet& fs, const char* type, const char* path, std::string& missing) {
  auto m = k.member(type, path);
  if (!m) {
    missing += std::string(missing.empty() ? "" : ", ") + type + "." + path;
    return -1;
  }
  return fs.add(*m);
}

void note(std::vector<SnapshotError>* errors, std::string what, std::string msg, std::optional<uint64_t> addr = {}) {
  if (errors) errors->push_back(SnapshotError{-1, std::move(what), std::move(msg), addr});
}

std::string printk_text(const uint8_t* p, size_t n) {
  std::string s;
  s.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = p[i];
    // Keep newlines (multi-line records); anything else non-printable becomes '?', so that the
    // text is always valid UTF-8 for JSON.
    s.push_back((c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f)) ? static_cast<char>(c) : '?');
  }
  return s;
}

}  // namespace

Result<PrintkLayout> resolve_printk_layout(KernelAccess& k) {
  PrintkLayout l;
  auto prb = k.symbol("prb");
  if (!prb) return Error(ErrorCode::kNotFound, "symbol prb (lockless printk ring buffer, 5.10+) not found");
  l.prb_ptr_addr = *prb;
  std::string missing;
  const char* rb = "printk_ringbuffer";
  l.count_bits = add_member(k, l.rb, rb, "desc_ring.count_bits", missing);
  l.descs = add_member(k, l.rb, rb, "desc_ring.descs", missing);
  l.infos = add_member(k, l.rb, rb, "desc_ring.infos", missing);
  l.head_id = add_member(k, l.rb, rb, "desc_ring.head_id", missing);
  l.tail_id = add_member(k, l.rb, rb, "desc_ring.tail_id", missing);
  l.size_bits = add_member(k, l.rb, rb, "text_data_ring.size_bits", missing);
  l.data = add_member(k, l.rb, rb, "text_data_ring.data", missing);
  l.state_var = add_member(k, l.desc, "prb_desc", "state_var", missing);
  l.blk_begin = add_member(k, l.desc, "prb_desc", "text_blk_lpos.begin", missing);
  l.blk_next = add_member(k, l.desc, "prb_desc", "text_blk_lpos.next", missing);
  l.seq = add_member(k, l.info, "printk_info", "seq", missing);
  l.ts_nsec = add_member(k, l.info, "printk_info", "ts_nsec", missing);
  l.text_len = add_member(k, l.info, "printk_info", "text_len", missing);
  l.facility = add_member(k, l.info, "printk_info", "facility", missing);
  l.flags = add_member(k, l.info, "printk_info", "flags", missing);
  l.level = add_member(k, l.info, "printk_info", "level", missing);
  l.caller_id = add_member(k, l.info, "printk_info", "caller_id", missing);
  if (!missing.empty()) return Error(ErrorCode::kUnsupported, "printk ring buffer layout: missing " + missing);
  auto ds = k.type_size("prb_desc");
  auto is = k.type_size("printk_info");
  if (!ds || !is || *ds == 0 || *is == 0) return Error(ErrorCode::kUnsupported, "printk ring buffer: no size for prb_desc/printk_info");
  l.desc_size = *ds;
  l.info_size = *is;
  l.rb.finalize();
  l.desc.finalize();
  l.info.finalize();
  return l;
}

Result<std::vector<PrintkRecord>> read_printk(KernelAccess& k, const PrintkLayout& l, uint32_t max_records,
                                              uint32_t max_text, std::vector<SnapshotError>* errors) {
  std::vector<PrintkRecord> out;
  if (max_records == 0) return out;
  uint64_t rb_addr = 0;
  if (auto r = k.read(l.prb_ptr_addr, &rb_addr, sizeof rb_addr); !r) return std::move(r).error().context("reading prb");
  if (!is_aligned_kernel_pointer(rb_addr)) return Error(ErrorCode::kCorrupt, "prb is not a kernel pointer", rb_addr);

  std::vector<ReadRequest> reqs;
  ObjectRead rb;
  rb.plan(l.rb, rb_addr, reqs);
  (void)k.read_batch(reqs);
  rb.settle(reqs);
  if (!rb.ok) return Error(ErrorCode::kUnmapped, "reading struct printk_ringbuffer", rb.bad_address);

  const uint64_t count_bits = rb.get(l.count_bits);
  const uint64_t size_bits = rb.get(l.size_bits);
  const uint64_t descs = rb.get(l.descs), infos = rb.get(l.infos), data = rb.get(l.data);
  if (count_bits == 0 || count_bits > kMaxCountBits || size_bits < 4 || size_bits > kMaxSizeBits)
    return Error(ErrorCode::kCorrupt, "printk ring buffer: implausible count_bits " + std::to_string(count_bits) +
                                          " / size_bits " + std::to_string(size_bits), rb_addr);
  if (!is_kernel_pointer(descs) || !is_kernel_pointer(infos) || !is_kernel_pointer(data))
    return Error(ErrorCode::kCorrupt, "printk ring buffer: descs/infos/data are not kernel pointers", rb_addr);
  const uint64_t count = 1ULL << count_bits, desc_mask = count - 1;
  const uint64_t data_size = 1ULL << size_bits, data_mask = data_size - 1;
  const uint64_t head = rb.get(l.head_id) & kDescIdMask;
  const uint64_t tail = rb.get(l.tail_id) & kDescIdMask;

  // Candidate ids, newest first, from head back to tail (at most `count`, at most max_records;
  // a few extra because the head may still be reserved, i.e. being written).
  const uint64_t span = ((head - tail) & kDescIdMask) + 1;
  const uint64_t want = std::min<uint64_t>({span, count, static_cast<uint64_t>(max_records) + 4});
  struct Cand {
    uint64_t id;
    ObjectRead desc, info;
    std::vector<uint8_t> block;
    size_t block_req = 0;
    uint32_t text_len = 0;
    bool truncated = false;
    bool valid = false;
    uint64_t sv_again = 0;
  };
  std::vector<Cand> cands(want);
  reqs.clear();
  for (uint64_t i = 0; i < want; ++i) {
    Cand& c = cands[i];
    c.id = (head - i) & kDescIdMask;
    const uint64_t idx = c.id & desc_mask;
    c.desc.plan(l.desc, descs + idx * l.desc_size, reqs);
    c.info.plan(l.info, infos + idx * l.info_size, reqs);
  }
  (void)k.read_batch(reqs);
  for (Cand& c : cands) {
    c.desc.settle(reqs);
    c.info.settle(reqs);
  }

  // Text blocks.
  reqs.clear();
  for (Cand& c : cands) {
    if (!c.desc.ok || !c.info.ok) {
      note(errors, "printk descriptor " + std::to_string(c.id), "unreadable", c.desc.ok ? c.info.bad_address : c.desc.bad_address);
      continue;
    }
    const uint64_t sv = c.desc.get(l.state_var);
    const uint64_t state = sv >> kDescFlagsShift;
    // A descriptor whose id differs was reused for a newer record (or is not yet written);
    // reserved ones are still being filled in.
    if ((sv & kDescIdMask) != c.id || (state != kDescCommitted && state != kDescFinalized)) continue;
    const uint64_t begin = c.desc.get(l.blk_begin), next = c.desc.get(l.blk_next);
    c.text_len = static_cast<uint32_t>(c.info.get(l.text_len));
    if ((begin & 1) && begin == next) {  // data-less record (BLK_DATALESS): empty text
      c.valid = true;
      continue;
    }
    uint64_t off, size;
    if ((begin >> size_bits) == (next >> size_bits) && begin < next) {
      off = begin & data_mask;  // regular block
      size = next - begin;
    } else if (((begin + data_size) >> size_bits) == (next >> size_bits)) {
      off = 0;  // wrapped block: stored at the start of the data ring
      size = next & data_mask;
    } else {
      note(errors, "printk record " + std::to_string(c.id), "inconsistent text block lpos", descs + (c.id & desc_mask) * l.desc_size);
      continue;
    }
    if (size < 8 || size > data_size || off + size > data_size) {
      note(errors, "printk record " + std::to_string(c.id), "text block size out of range", data + off);
      continue;
    }
    uint64_t avail = size - 8;
    uint64_t len = c.text_len;
    if (len > avail) {
      len = avail;
      c.truncated = true;
    }
    if (len > max_text) {
      len = max_text;
      c.truncated = true;
    }
    c.text_len = static_cast<uint32_t>(len);
    c.block.assign(8 + len, 0);
    c.block_req = reqs.size();
    reqs.push_back(ReadRequest{data + off, c.block.data(), c.block.size(), false});
    c.valid = true;
  }
  // Re-read each descriptor's state with the text: if it changed, the record was recycled while
  // we read it (live guest) and its text may be torn.
  std::vector<uint64_t> sv_again(cands.size(), 0);
  size_t sv_first = reqs.size();
  for (size_t i = 0; i < cands.size(); ++i) {
    Cand& c = cands[i];
    reqs.push_back(ReadRequest{c.desc.base, &sv_again[i], sizeof(uint64_t), false});
  }
  (void)k.read_batch(reqs);

  for (size_t i = 0; i < cands.size(); ++i) {
    Cand& c = cands[i];
    if (!c.valid) continue;
    if (!reqs[sv_first + i].ok || sv_again[i] != c.desc.get(l.state_var)) continue;
    PrintkRecord r;
    r.seq = c.info.get(l.seq);
    r.ts_nsec = c.info.get(l.ts_nsec);
    r.level = static_cast<uint8_t>(c.info.get(l.level));
    r.facility = static_cast<uint8_t>(c.info.get(l.facility));
    r.flags = static_cast<uint8_t>(c.info.get(l.flags));
    r.caller_id = static_cast<uint32_t>(c.info.get(l.caller_id));
    r.text_truncated = c.truncated;
    if (!c.block.empty()) {
      const ReadRequest& rq = reqs[c.block_req];
      uint64_t blk_id = 0;
      std::memcpy(&blk_id, c.block.data(), 8);
      if (!rq.ok) {
        note(errors, "printk record " + std::to_string(c.id), "text unreadable", rq.addr);
        continue;
      }
      if ((blk_id & kDescIdMask) != c.id) continue;  // data block already reused
      r.text = printk_text(c.block.data() + 8, c.text_len);
    }
    out.push_back(std::move(r));
  }
  std::sort(out.begin(), out.end(), [](const PrintkRecord& a, const PrintkRecord& b) { return a.seq < b.seq; });
  if (out.size() > max_records) out.erase(out.begin(), out.end() - max_records);
  return out;
}

}  // namespace stallmon::introspect::snapshot_detail
