// SPDX-License-Identifier: Apache-2.0
// Internal to the snapshot readers: a set of members of one guest object, planned once per
// kernel into a few contiguous read spans, then read with one batch per snapshot and decoded
// from a local buffer. This is what keeps a snapshot at a handful of system calls.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "stallmon/introspect/physical_memory.h"
#include "stallmon/introspect/snapshot_access.h"

namespace stallmon::introspect::snapshot_detail {

inline uint64_t load_le(const uint8_t* p, uint32_t size) {
  uint64_t v = 0;
  std::memcpy(&v, p, std::min<uint32_t>(size, 8));  // x86-64 guests and hosts: little endian
  return v;
}

// Kernel half of the x86-64 address space; anything else in a kernel pointer field is garbage.
inline bool is_kernel_pointer(uint64_t p) { return p >= 0xffff800000000000ULL && p < ~0xfffULL; }
inline bool is_aligned_kernel_pointer(uint64_t p) { return is_kernel_pointer(p) && (p & 7) == 0; }

class FieldSet {
 public:
  // Adds a member at byte offset `rel` (may be negative: relative to an interior address) and
  // returns its index. `size_override` reads fewer bytes than the member's type (e.g. only the
  // first words of a large cpumask).
  int add(const MemberLayout& m, int64_t rel_bytes, uint32_t size_override = 0) {
    Field f;
    f.rel = rel_bytes;
    f.size = size_override ? size_override : std::max<uint32_t>(m.size, 1);
    if (m.is_bitfield()) {
      f.bit_shift = static_cast<uint32_t>(m.bit_offset % 8);
      f.bit_size = m.bit_size;
      f.size = static_cast<uint32_t>((f.bit_shift + m.bit_size + 7) / 8);
    }
    fields_.push_back(f);
    return static_cast<int>(fields_.size() - 1);
  }
  int add(const MemberLayout& m) { return add(m, static_cast<int64_t>(m.offset())); }
  int add_raw(int64_t rel, uint32_t size) {
    Field f;
    f.rel = rel;
    f.size = size;
    fields_.push_back(f);
    return static_cast<int>(fields_.size() - 1);
  }

  // Merges fields into spans: fields closer than `max_gap` bytes share one read.
  void finalize(int64_t max_gap = 256) {
    std::vector<int> order(fields_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return fields_[a].rel < fields_[b].rel; });
    spans_.clear();
    for (int i : order) {
      Field& f = fields_[i];
      int64_t end = f.rel + f.size;
      if (spans_.empty() || f.rel > spans_.back().rel + static_cast<int64_t>(spans_.back().len) + max_gap) {
        spans_.push_back(Span{f.rel, 0, 0});
      }
      Span& s = spans_.back();
      s.len = static_cast<uint32_t>(std::max<int64_t>(s.len, end - s.rel));
    }
    size_t pos = 0;
    for (Span& s : spans_) {
      s.buf_pos = pos;
      pos += s.len;
    }
    buf_len_ = pos;
    for (Field& f : fields_) {
      for (const Span& s : spans_) {
        if (f.rel >= s.rel && f.rel + f.size <= s.rel + static_cast<int64_t>(s.len)) {
          f.buf_pos = s.buf_pos + static_cast<size_t>(f.rel - s.rel);
          break;
        }
      }
    }
  }

  size_t buf_len() const { return buf_len_; }
  size_t span_count() const { return spans_.size(); }
  bool empty() const { return fields_.empty(); }

  // Appends this object's read requests (into `buf`, which must hold buf_len() bytes).
  void plan(uint64_t base, uint8_t* buf, std::vector<ReadRequest>& out) const {
    for (const Span& s : spans_) {
      ReadRequest r;
      r.addr = base + static_cast<uint64_t>(s.rel);
      r.buf = buf + s.buf_pos;
      r.len = s.len;
      out.push_back(r);
    }
  }

  uint64_t get(const uint8_t* buf, int idx) const {
    const Field& f = fields_[static_cast<size_t>(idx)];
    uint64_t v = load_le(buf + f.buf_pos, f.size);
    if (f.bit_size) {
      v >>= f.bit_shift;
      if (f.bit_size < 64) v &= (1ULL << f.bit_size) - 1;
    }
    return v;
  }
  const uint8_t* ptr(const uint8_t* buf, int idx) const { return buf + fields_[static_cast<size_t>(idx)].buf_pos; }
  uint32_t size(int idx) const { return fields_[static_cast<size_t>(idx)].size; }

 private:
  struct Field {
    int64_t rel = 0;
    uint32_t size = 0;
    uint32_t bit_shift = 0;
    uint32_t bit_size = 0;
    size_t buf_pos = 0;
  };
  struct Span {
    int64_t rel;
    uint32_t len;
    size_t buf_pos;
  };
  std::vector<Field> fields_;
  std::vector<Span> spans_;
  size_t buf_len_ = 0;
};

// One object instance being read in a batch: its buffer and where its requests sit.
struct ObjectRead {
  const FieldSet* fs = nullptr;
  uint64_t base = 0;
  std::vector<uint8_t> buf;
  size_t first_req = 0;
  size_t nreq = 0;
  bool ok = false;
  uint64_t bad_address = 0;

  void plan(const FieldSet& set, uint64_t b, std::vector<ReadRequest>& reqs) {
    fs = &set;
    base = b;
    buf.assign(set.buf_len(), 0);
    first_req = reqs.size();
    set.plan(b, buf.data(), reqs);
    nreq = reqs.size() - first_req;
  }
  void settle(const std::vector<ReadRequest>& reqs) {
    ok = true;
    for (size_t i = first_req; i < first_req + nreq; ++i) {
      if (!reqs[i].ok) {
        ok = false;
        bad_address = reqs[i].addr;
        break;
      }
    }
  }
  uint64_t get(int idx) const { return fs->get(buf.data(), idx); }
  const uint8_t* ptr(int idx) const { return fs->ptr(buf.data(), idx); }
};

// Copies a NUL-terminated guest string of at most `cap` bytes, replacing non-printable bytes.
inline std::string guest_string(const uint8_t* p, size_t cap) {
  std::string s;
  for (size_t i = 0; i < cap && p[i] != 0; ++i) {
    unsigned char c = p[i];
    s.push_back((c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?');
  }
  return s;
}

}  // namespace stallmon::introspect::snapshot_detail
