// SPDX-License-Identifier: Apache-2.0
#include "stallmon/host/history.h"

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace stallmon::host {

namespace {

// The fields of a ThreadSample in encoding order; bit i of a difference's mask says field i changed.
enum Field : uint16_t {
  kT, kRun, kWait, kThrottled, kCpuTicks, kTimeslices, kVoluntary, kInvoluntary, kNrThrottled,
  kCpu, kState, kFlags
};

void put_varint(std::vector<uint8_t>& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<uint8_t>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<uint8_t>(v));
}

uint64_t get_varint(const uint8_t*& p) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    const uint8_t b = *p++;
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
}

// Differences are taken modulo 2^64 (2^32 for the 32-bit counters) and zigzagged, so any pair of
// values round-trips exactly, and small steps either way take one or two bytes.
uint64_t zigzag(uint64_t d) { return (d << 1) ^ static_cast<uint64_t>(static_cast<int64_t>(d) >> 63); }
uint64_t unzigzag(uint64_t z) { return (z >> 1) ^ (~(z & 1) + 1); }
uint64_t zigzag32(uint32_t d) { return static_cast<uint32_t>((d << 1) ^ static_cast<uint32_t>(static_cast<int32_t>(d) >> 31)); }
uint32_t unzigzag32(uint64_t z) {
  const auto u = static_cast<uint32_t>(z);
  return (u >> 1) ^ (~(u & 1) + 1);
}

void encode_difference(const ThreadSample& a, const ThreadSample& b, std::vector<uint8_t>& out) {
  uint16_t mask = 0;
  const uint64_t w64[4] = {static_cast<uint64_t>(b.t_ns) - static_cast<uint64_t>(a.t_ns), b.run_ns - a.run_ns,
                           b.wait_ns - a.wait_ns, b.throttled_ns - a.throttled_ns};
  const uint32_t w32[5] = {b.cpu_ticks - a.cpu_ticks, b.timeslices - a.timeslices,
                           b.voluntary_switches - a.voluntary_switches,
                           b.involuntary_switches - a.involuntary_switches, b.nr_throttled - a.nr_throttled};
  for (int i = 0; i < 4; ++i) mask |= static_cast<uint16_t>((w64[i] != 0) << (kT + i));
  for (int i = 0; i < 5; ++i) mask |= static_cast<uint16_t>((w32[i] != 0) << (kCpuTicks + i));
  mask |= static_cast<uint16_t>((b.cpu != a.cpu) << kCpu);
  mask |= static_cast<uint16_t>((b.state != a.state) << kState);
  mask |= static_cast<uint16_t>((b.flags != a.flags) << kFlags);
  out.push_back(static_cast<uint8_t>(mask));
  out.push_back(static_cast<uint8_t>(mask >> 8));
  for (int i = 0; i < 4; ++i) if (w64[i]) put_varint(out, zigzag(w64[i]));
  for (int i = 0; i < 5; ++i) if (w32[i]) put_varint(out, zigzag32(w32[i]));
  if (mask & (1u << kCpu)) put_varint(out, zigzag32(static_cast<uint32_t>(static_cast<int32_t>(b.cpu))));
  if (mask & (1u << kState)) out.push_back(static_cast<uint8_t>(b.state));
  if (mask & (1u << kFlags)) out.push_back(b.flags);
}

// Applies the difference at p to `s` (the sample before it) and advances p past it.
void apply_difference(const uint8_t*& p, ThreadSample& s) {
  const uint16_t mask = static_cast<uint16_t>(p[0] | (p[1] << 8));
  p += 2;
  uint64_t* f64[4] = {nullptr, &s.run_ns, &s.wait_ns, &s.throttled_ns};
  for (int i = 0; i < 4; ++i) {
    if (!(mask & (1u << (kT + i)))) continue;
    const uint64_t d = unzigzag(get_varint(p));
    if (i == 0) {
      s.t_ns = static_cast<int64_t>(static_cast<uint64_t>(s.t_ns) + d);
    } else {
      *f64[i] += d;
    }
  }
  uint32_t* f32[5] = {&s.cpu_ticks, &s.timeslices, &s.voluntary_switches, &s.involuntary_switches, &s.nr_throttled};
  for (int i = 0; i < 5; ++i) {
    if (mask & (1u << (kCpuTicks + i))) *f32[i] += unzigzag32(get_varint(p));
  }
  if (mask & (1u << kCpu)) s.cpu = static_cast<int16_t>(static_cast<int32_t>(unzigzag32(get_varint(p))));
  if (mask & (1u << kState)) s.state = static_cast<char>(*p++);
  if (mask & (1u << kFlags)) s.flags = *p++;
}

std::atomic<uint64_t> next_block_uid{1};

// The last block decoded on this thread: walks over a window read each block's samples in turn.
struct DecodedBlock {
  uint64_t uid = 0;
  uint32_t count = 0;  // samples decoded (a block still being filled may have more by now)
  ThreadSample samples[SampleTier::kMaxBlock];
};
thread_local DecodedBlock decoded;

}  // namespace

SampleTier::SampleTier(size_t capacity, size_t block)
    : capacity_(capacity), block_(std::clamp<size_t>(block, 1, kMaxBlock)) {}

SampleTier::Block& SampleTier::open_block() {
  // The most blocks ever live: the ones holding `capacity_` samples, the partly filled newest, and
  // the oldest until the push that lets it go.
  if (blocks_.capacity() == 0) blocks_.reserve(capacity_ / block_ + 2);
  if (live_ == blocks_.size()) {
    // Out of slots: grow, with the live blocks first so the order survives the append.
    std::rotate(blocks_.begin(), blocks_.begin() + static_cast<std::ptrdiff_t>(head_), blocks_.end());
    head_ = 0;
    blocks_.emplace_back();
  }
  Block& b = block(live_++);
  b.deltas.clear();
  b.count = 0;
  b.uid = next_block_uid.fetch_add(1, std::memory_order_relaxed);
  return b;
}

void SampleTier::push(const ThreadSample& s, std::vector<ThreadSample>* evicted) {
  if (capacity_ == 0) return;
  // Keeps deltas_bytes_ equal to the blocks' vector capacities: memory_bytes() is read every tick.
  auto resized = [this](std::vector<uint8_t>& v, size_t before) { deltas_bytes_ = deltas_bytes_ + v.capacity() - before; };
  if (live_ == 0 || block(live_ - 1).count == block_) {
    if (live_ > 0) {
      std::vector<uint8_t>& sealed = block(live_ - 1).deltas;
      const size_t before = sealed.capacity();
      sealed.shrink_to_fit();  // sealed: it never grows again
      resized(sealed, before);
    }
    Block& b = open_block();
    b.first = s;
    b.count = 1;
    const size_t before = b.deltas.capacity();
    b.deltas.reserve(block_ > 1 ? (block_ - 1) * 8 : 0);
    resized(b.deltas, before);
  } else {
    Block& b = block(live_ - 1);
    const size_t before = b.deltas.capacity();
    encode_difference(last_, s, b.deltas);
    resized(b.deltas, before);
    ++b.count;
  }
  last_ = s;
  ++size_;
  if (live_ > 1 && size_ - block(0).count >= capacity_) {
    Block& old = block(0);
    if (evicted) {
      for (uint32_t i = 0; i < old.count; ++i) evicted->push_back(at(i));
    }
    size_ -= old.count;
    old.count = 0;
    old.uid = 0;
    deltas_bytes_ -= old.deltas.capacity();
    std::vector<uint8_t>().swap(old.deltas);  // a reused slot reserves what it needs
    head_ = (head_ + 1) % blocks_.size();
    --live_;
  }
}

ThreadSample SampleTier::at(size_t i) const {
  // Every block but the newest is full, and the oldest is never partly dropped.
  const Block& b = block(i / block_);
  const uint32_t k = static_cast<uint32_t>(i % block_);
  if (k == 0) return b.first;
  if (decoded.uid != b.uid || decoded.count <= k) {
    decoded.uid = b.uid;
    decoded.samples[0] = b.first;
    const uint8_t* p = b.deltas.data();
    for (uint32_t j = 1; j < b.count; ++j) {
      decoded.samples[j] = decoded.samples[j - 1];
      apply_difference(p, decoded.samples[j]);
    }
    decoded.count = b.count;
  }
  return decoded.samples[k];
}

void SampleTier::clear() {
  blocks_.clear();
  head_ = live_ = size_ = deltas_bytes_ = 0;
}

size_t SampleTier::memory_bytes() const { return blocks_.capacity() * sizeof(Block) + deltas_bytes_; }

SampleRing::SampleRing(size_t fine_capacity, size_t coarse_capacity, int64_t coarse_interval_ns)
    : fine_(std::max<size_t>(fine_capacity, 2), std::max<size_t>(fine_capacity, 2) / 4),
      coarse_(coarse_capacity, coarse_capacity / 4),
      coarse_interval_ns_(coarse_interval_ns) {}

void SampleRing::push(const ThreadSample& s) {
  if (coarse_.capacity() == 0) {
    fine_.push(s, nullptr);
    return;
  }
  thread_local std::vector<ThreadSample> aged;
  aged.clear();
  fine_.push(s, &aged);
  // The fine tier's oldest samples age into the coarse tier if far enough from the coarse tier's
  // newest, or if they mark a restart that later deltas must not cross.
  for (const ThreadSample& a : aged) {
    const bool boundary = a.flags & (ThreadSample::kFirst | ThreadSample::kCgroupChanged);
    if (coarse_.size() == 0 || boundary || a.t_ns - coarse_.newest().t_ns >= coarse_interval_ns_) {
      coarse_.push(a, nullptr);
    }
  }
}

void StateTracker::observe(const ThreadSample& s) {
  if (!started || (s.flags & ThreadSample::kFirst)) {
    // Nothing is known about the time before the first sample: count from here.
    started = true;
    state = s.state;
    state_since_ns = s.t_ns;
    last_progress_ns = s.t_ns;
    last_run_ns = s.run_ns;
    return;
  }
  if (s.state != state) {
    state = s.state;
    state_since_ns = s.t_ns;
  }
  if (s.run_ns > last_run_ns) last_progress_ns = s.t_ns;
  last_run_ns = s.run_ns;
}

ThreadSignals derive_signals(const SampleRing& ring, const StateTracker& tracker,
                             int64_t window_ns) {
  ThreadSignals sig;
  if (ring.empty()) return sig;
  const size_t n = ring.size();
  const ThreadSample end = ring.newest();
  sig.end_ns = end.t_ns;
  sig.state = end.state;
  if (tracker.started && tracker.state == end.state) {
    sig.time_in_state_ns = end.t_ns - tracker.state_since_ns;
    sig.no_progress_ns = end.t_ns - tracker.last_progress_ns;
  }

  // Walk back to the newest sample at or before the window start, stopping at a restart (the
  // counters before it belong to another thread) or at the oldest sample kept.
  const int64_t start = end.t_ns - window_ns;
  size_t b = n - 1;
  size_t cg_base = SIZE_MAX;  // the newest cgroup move inside the window, if any
  while (b > 0) {
    const ThreadSample s = ring.at(b);
    if (s.t_ns <= start || (s.flags & ThreadSample::kFirst)) break;
    if ((s.flags & ThreadSample::kCgroupChanged) && cg_base == SIZE_MAX) cg_base = b;
    --b;
  }
  if (cg_base == SIZE_MAX) cg_base = b;
  const ThreadSample base = ring.at(b);
  const int64_t dt = end.t_ns - base.t_ns;
  if (b == n - 1 || dt <= 0) return sig;

  sig.valid = true;
  sig.window_ns = dt;
  // Kernel counters never go backwards for one thread; clamp anyway so a bad read cannot make a
  // huge unsigned delta.
  sig.run_delta_ns = end.run_ns >= base.run_ns ? end.run_ns - base.run_ns : 0;
  sig.wait_delta_ns = end.wait_ns >= base.wait_ns ? end.wait_ns - base.wait_ns : 0;
  sig.run_progress = sig.run_delta_ns > 0;
  sig.run_fraction = static_cast<double>(sig.run_delta_ns) / static_cast<double>(dt);
  sig.steal_fraction = static_cast<double>(sig.wait_delta_ns) / static_cast<double>(dt);
  sig.voluntary_switches_delta = end.voluntary_switches - base.voluntary_switches;
  sig.involuntary_switches_delta = end.involuntary_switches - base.involuntary_switches;
  sig.has_schedstat =
      (end.flags & ThreadSample::kHasSchedstat) && (base.flags & ThreadSample::kHasSchedstat);
  // Throttling counters belong to a cgroup: after a move, difference from the first sample in the
  // new cgroup.
  const ThreadSample cg = ring.at(cg_base);
  sig.has_cgroup = (end.flags & ThreadSample::kHasCgroup) && (cg.flags & ThreadSample::kHasCgroup);
  if (sig.has_cgroup) {
    sig.throttled_delta_ns =
        end.throttled_ns >= cg.throttled_ns ? end.throttled_ns - cg.throttled_ns : 0;
    sig.nr_throttled_delta = end.nr_throttled - cg.nr_throttled;
    sig.throttled = sig.throttled_delta_ns > 0 || sig.nr_throttled_delta > 0;
  }
  return sig;
}

}  // namespace stallmon::host
