// SPDX-License-Identifier: Apache-2.0
// Fuzz input for the snapshot readers: the seed-case-1 synthetic 6.1 kernel (tests/unit/snapshot)
// built once, then overwritten by the input's records, read, and restored. A record is 12
// bytes: u32 selector (which object, and the offset in it) and u64 value, so that the fuzzer
// mutates fields the readers follow (queue links, cfd pointers and masks, printk ids) instead
// of bytes nobody reads.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "synthetic_kernel.h"

namespace stallmon::introspect::fuzz {

using testing::SyntheticKernel;

// Applies the input's records to `k` (each overwrites the u64 at targets[sel % n] plus an
// aligned offset below 4 KiB, remembering what it overwrote), calls `read(k)`, then restores.
template <typename Read>
void with_records(SyntheticKernel& k, const std::vector<uint64_t>& targets, const uint8_t* data, size_t size,
                  Read&& read) {
  struct Saved {
    uint64_t addr, old;
  };
  std::vector<Saved> saved;
  for (size_t i = 0; i + 12 <= size && saved.size() < 64; i += 12) {
    uint32_t sel;
    uint64_t value;
    std::memcpy(&sel, data + i, 4);
    std::memcpy(&value, data + i + 4, 8);
    const uint64_t addr = targets[sel % targets.size()] + ((sel >> 8) % 4096 & ~7u);
    uint64_t old = 0;
    if (k.read(addr, &old, 8).ok()) {
      saved.push_back({addr, old});
      k.mem.put<uint64_t>(addr, value);
    }
  }
  read(k);
  for (auto it = saved.rbegin(); it != saved.rend(); ++it) k.mem.put<uint64_t>(it->addr, it->old);
}

class SyntheticGuest {
 public:
  static constexpr uint32_t kCpus = 4;
  SyntheticGuest() : k(kCpus, SyntheticKernel::Layout::kLinux61) {
    k.mem.put<uint32_t>(*k.symbol("nr_cpu_ids"), kCpus);
    k.mem.put<uint64_t>(*k.symbol("__cpu_online_mask"), 0xf);
    const uint64_t idle[kCpus] = {k.task(0, "swapper/0"), k.task(0, "swapper/1"), k.task(0, "swapper/2"),
                                  k.task(0, "swapper/3")};
    const uint64_t busy = k.task(412, "stress");
    for (uint32_t c = 0; c < kCpus; ++c) k.set_rq(c, c == 0 ? busy : idle[c], idle[c], c == 0, c == 0, 0, 1000 + c);
    // CPU0 waits on CPU2 (seed case 1): a locked sync csd queued on CPU2, an IRQ work and a
    // wakeup beside it.
    const uint64_t f = k.func("do_sync_core");
    const uint64_t csd = k.csd(0x10 | 0x01, f);
    const uint64_t work = k.csd(0x20, k.func("rcu_iw_handler"));
    const uint64_t woken = k.task(77, "kworker/2:1");
    k.set_queue(2, {k.csd_node(csd), k.csd_node(work), k.task_node(woken)});
    k.set_cfd_mask(0, {1, 2, 3});
    for (uint32_t t = 1; t < kCpus; ++t) k.set_csd(k.cfd_csd(0, t), 0x11, f);
    k.init_printk(5, 12);
    for (int i = 0; i < 40; ++i) k.printk("message " + std::to_string(i), 1000 * i, i % 8);
    // Objects the records address: every CPU's rq, queue head and cfd_data, the csds, the tasks,
    // the printk ring's header, descriptors and text.
    for (uint32_t c = 0; c < kCpus; ++c) {
      targets_.push_back(k.percpu("runqueues", c));
      targets_.push_back(k.percpu("call_single_queue", c));
      targets_.push_back(k.percpu("cfd_data", c));
      targets_.push_back(k.cfd_csd(0, c));
    }
    for (uint64_t a : {csd, work, woken, busy, idle[2]}) targets_.push_back(a);
    uint64_t prb = 0;
    (void)k.read(*k.symbol("prb"), &prb, 8);
    targets_.push_back(prb);
    for (uint64_t id = 0; id < 32; ++id) targets_.push_back(k.printk_desc_addr(id));
    targets_.push_back(*k.symbol("nr_cpu_ids"));
  }

  // Applies the records to the objects above, calls `read`, then restores.
  template <typename Read>
  void with_input(const uint8_t* data, size_t size, Read&& read) {
    with_records(k, targets_, data, size, read);
  }

  SyntheticKernel k;

 private:
  std::vector<uint64_t> targets_;
};

inline SyntheticGuest& synthetic_guest() {
  static SyntheticGuest* g = new SyntheticGuest();  // built once per process, never destroyed
  return *g;
}

}  // namespace stallmon::introspect::fuzz
