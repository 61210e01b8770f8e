// SPDX-License-Identifier: Apache-2.0
// The lockless printk ring buffer (kernel/printk/printk_ringbuffer.[ch], since 5.10) and, when
// the kernel has no `prb`, the log_buf it replaced (see read_log_buf below).
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

// A record's text length cut to what its storage holds and to max_text; `truncated` says so.
uint64_t text_length(uint64_t len, uint64_t avail, uint32_t max_text, bool& truncated) {
  const uint64_t n = std::min<uint64_t>({len, avail, max_text});
  if (n < len) truncated = true;
  return n;
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

// log_buf before 5.10. The record header, kernel/printk.c in 3.10 (struct log) and
// kernel/printk/printk.c 3.11..5.9 (renamed struct printk_log in 3.11, caller_id added in 5.1):
//   struct printk_log { u64 ts_nsec; u16 len; u16 text_len; u16 dict_len; u8 facility;
//                       u8 flags:5; u8 level:3; [u32 caller_id;] };
// Globals: char *log_buf; u32 log_buf_len; u32 log_first_idx, log_next_idx; u64 log_first_seq.
Result<LogBufLayout> resolve_log_buf(KernelAccess& k) {
  LogBufLayout l;
  auto buf = k.symbol("log_buf");
  if (!buf) return Error(ErrorCode::kNotFound, "neither prb (printk ring buffer, 5.10+) nor log_buf found");
  l.log_buf = *buf;
  std::string missing;
  auto need_sym = [&](const char* name, uint64_t& out) {
    auto a = k.symbol(name);
    if (a) out = *a;
    else missing += std::string(missing.empty() ? "" : ", ") + name;
  };
  need_sym("log_buf_len", l.log_buf_len);
  need_sym("log_first_idx", l.first_idx);
  need_sym("log_next_idx", l.next_idx);
  if (auto seq = k.symbol("log_first_seq")) l.first_seq = *seq;
  const char* type = k.type_size("printk_log").ok() ? "printk_log" : "log";
  auto need_member = [&](const char* path, MemberLayout& out) {
    auto m = k.member(type, path);
    if (m) out = *m;
    else missing += std::string(missing.empty() ? "" : ", ") + type + "." + path;
  };
  need_member("ts_nsec", l.ts_nsec);
  need_member("len", l.len);
  need_member("text_len", l.text_len);
  need_member("facility", l.facility);
  need_member("flags", l.flags);
  need_member("level", l.level);
  if (!missing.empty()) return Error(ErrorCode::kUnsupported, "printk log_buf layout: missing " + missing);
  STALLMON_TRY(uint64_t header, k.type_size(type));
  // Every member inside the header, the header a plausible size (16 or 24 bytes in practice).
  bool inside = header >= 8 && header <= 64;
  for (const MemberLayout* m : {&l.ts_nsec, &l.len, &l.text_len, &l.facility, &l.flags, &l.level})
    inside = inside && m->size <= 8 && m->offset() + m->size <= header;
  if (!inside) return Error(ErrorCode::kCorrupt, std::string("printk log_buf: implausible struct ") + type);
  l.header_size = static_cast<uint32_t>(header);
  uint32_t len = 0;
  if (auto r = k.read(l.log_buf_len, &len, sizeof len); !r) return std::move(r).error().context("reading log_buf_len");
  if (len > kMaxLogBufBytes)
    return Error(ErrorCode::kLimit, "log_buf_len " + std::to_string(len) + " above the " +
                                        std::to_string(kMaxLogBufBytes >> 20) + " MiB read per snapshot");
  l.max_bytes = len;
  return l;
}

namespace {

// A header field of the record at `rec` (header_size bytes available).
uint64_t header_field(const uint8_t* rec, const MemberLayout& m) {
  uint64_t v = load_le(rec + m.offset(), m.is_bitfield() ? (static_cast<uint32_t>(m.bit_offset % 8) + m.bit_size + 7) / 8 : m.size);
  if (m.is_bitfield()) {
    v >>= m.bit_offset % 8;
    if (m.bit_size < 64) v &= (1ULL << m.bit_size) - 1;
  }
  return v;
}

// The newest records of log_buf: the whole buffer in one read (bounded by max_bytes), then the
// chain walked from log_first_idx to log_next_idx like log_next() does, every length checked,
// at most one wrap, at most one record per header_size bytes. A live guest may be writing
// while we read: a record that does not chain stops the walk with an error, and what was
// walked before it is kept.
Result<std::vector<PrintkRecord>> read_log_buf(KernelAccess& k, const LogBufLayout& l, uint32_t max_records,
                                               uint32_t max_text, std::vector<SnapshotError>* errors) {
  std::vector<PrintkRecord> out;
  if (max_records == 0) return out;
  uint64_t buf = 0, first_seq = 0;
  uint32_t len = 0, first = 0, next = 0;
  std::vector<ReadRequest> reqs{{l.log_buf, &buf, 8, false}, {l.log_buf_len, &len, 4, false},
                                {l.first_idx, &first, 4, false}, {l.next_idx, &next, 4, false}};
  if (l.first_seq) reqs.push_back({*l.first_seq, &first_seq, 8, false});
  (void)k.read_batch(reqs);
  for (size_t i = 0; i < 4; ++i)
    if (!reqs[i].ok) return Error(ErrorCode::kUnmapped, "reading the log_buf globals", reqs[i].addr);
  const bool have_seq = l.first_seq && reqs[4].ok;
  if (!is_kernel_pointer(buf)) return Error(ErrorCode::kCorrupt, "log_buf is not a kernel pointer", buf);
  if (len > l.max_bytes || len < l.header_size)
    return Error(ErrorCode::kCorrupt, "log_buf_len " + std::to_string(len) + " out of range (at most " +
                                          std::to_string(l.max_bytes) + ")", l.log_buf_len);
  if (first >= len || next >= len)
    return Error(ErrorCode::kCorrupt, "log_first_idx " + std::to_string(first) + " / log_next_idx " +
                                          std::to_string(next) + " outside log_buf", l.first_idx);
  std::vector<uint8_t> bytes(len);
  if (auto r = k.read(buf, bytes.data(), bytes.size()); !r) return std::move(r).error().context("reading log_buf");

  // Walk, keeping the offsets of the newest max_records records (a ring of positions).
  std::vector<uint32_t> ring(max_records);
  uint64_t count = 0;
  uint32_t idx = first, wraps = 0;
  const uint64_t max_steps = len / l.header_size + 1;
  auto fail = [&](const std::string& msg) { note(errors, "printk log_buf record at " + std::to_string(idx), msg, buf + idx); };
  for (uint64_t step = 0; idx != next; ++step) {
    if (step > max_steps) {
      fail("more records than log_buf can hold");
      break;
    }
    if (idx == len || (idx + l.header_size <= len && header_field(&bytes[idx], l.len) == 0)) {
      if (idx == 0 || ++wraps > 1) {  // an empty record at 0, or a second wrap: no progress
        fail("zero-length record does not wrap");
        break;
      }
      idx = 0;  // log_next(): a zero length means the next record is at the start
      continue;
    }
    if (idx + l.header_size > len) {
      fail("record header past the end of log_buf");
      break;
    }
    const uint64_t rec_len = header_field(&bytes[idx], l.len);
    if (rec_len < l.header_size || idx + rec_len > len) {
      fail("record length " + std::to_string(rec_len) + " out of range");
      break;
    }
    ring[count % max_records] = idx;
    ++count;
    idx += static_cast<uint32_t>(rec_len);
  }
  const uint64_t kept = std::min<uint64_t>(count, max_records);
  for (uint64_t i = count - kept; i < count; ++i) {
    const uint8_t* rec = &bytes[ring[i % max_records]];
    const uint64_t rec_len = header_field(rec, l.len);
    PrintkRecord r;
    r.seq = (have_seq ? first_seq : 0) + i;
    r.ts_nsec = header_field(rec, l.ts_nsec);
    r.level = static_cast<uint8_t>(header_field(rec, l.level));
    r.facility = static_cast<uint8_t>(header_field(rec, l.facility));
    r.flags = static_cast<uint8_t>(header_field(rec, l.flags));
    const uint64_t text = text_length(header_field(rec, l.text_len), rec_len - l.header_size, max_text, r.text_truncated);
    r.text = printk_text(rec + l.header_size, text);
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace

Result<PrintkLayout> resolve_printk_layout(KernelAccess& k) {
  PrintkLayout l;
  auto prb = k.symbol("prb");
  if (!prb) {
    STALLMON_TRY(l.log_buf, resolve_log_buf(k));
    return l;
  }
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
  if (l.log_buf) return read_log_buf(k, *l.log_buf, max_records, max_text, errors);
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
    const uint64_t len = text_length(c.text_len, size - 8, max_text, c.truncated);
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
