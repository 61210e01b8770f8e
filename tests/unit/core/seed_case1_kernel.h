// SPDX-License-Identifier: Apache-2.0
// Seed case 1 in a synthetic 6.1 guest kernel (the snapshot tests' SyntheticKernel), shared by the
// core's unit tests and its tick benchmark: CPU0 (sh, pid 107) waits for CPU2's do_sync_core csd;
// CPU2 is idle with that csd and a remote wakeup (TTWU) queued that it never runs.
#pragma once

#include "synthetic_kernel.h"

namespace stallmon::core::testing {

inline void build_seed_case1(introspect::testing::SyntheticKernel& k) {
  const uint64_t fn = k.func("do_sync_core");
  const uint64_t sh = k.task(107, "sh");
  uint64_t idle = 0;
  (void)k.read(k.percpu("runqueues", 0) + k.off("rq", "idle"), &idle, 8);
  k.set_rq(0, sh, idle, 5, 5, 0, 200'000'000'000ULL);
  k.set_cfd_mask(0, {1, 2, 3});
  k.set_csd(k.cfd_csd(0, 1), 0x10, fn);
  k.set_csd(k.cfd_csd(0, 3), 0x10, fn);
  k.set_csd(k.cfd_csd(0, 2), 0x11, fn);  // CSD_FLAG_LOCK | CSD_TYPE_SYNC: not run yet
  const uint64_t woken = k.task(131, "sh");
  k.mem.put<uint32_t>(k.task_node(woken) - k.off("task_struct", "wake_entry.llist") +
                          k.off("task_struct", "wake_entry.u_flags"),
                      0x30);  // CSD_TYPE_TTWU
  (void)k.read(k.percpu("runqueues", 2) + k.off("rq", "idle"), &idle, 8);
  k.set_rq(2, idle, idle, 0, 0, 1, 150'000'000'000ULL);
  k.set_queue(2, {k.csd_node(k.cfd_csd(0, 2)), k.task_node(woken)});
}

}  // namespace stallmon::core::testing
