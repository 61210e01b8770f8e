// SPDX-License-Identifier: Apache-2.0
// Seed case 1 in a synthetic guest kernel (the snapshot tests' SyntheticKernel), shared by the
// core's unit tests and its tick benchmark: CPU0 (sh, pid 107) waits for CPU2's do_sync_core csd;
// CPU2 is idle with that csd and a second piece of work queued that it never runs, and a
// remote wakeup pending: on 6.1 a TTWU entry in the same queue, on the older layouts an
// asynchronous csd there and the wakeup on rq->wake_list (where 3.0..5.7 kept them). The csd flags are each layout's own: 6.1 CSD_FLAG_LOCK |
// CSD_TYPE_SYNC (include/linux/smp_types.h), 4.x CSD_FLAG_LOCK | CSD_FLAG_SYNCHRONOUS
// (kernel/smp.c, 4.14..5.7), 3.10 CSD_FLAG_LOCK alone (kernel/smp.c, 3.10).
#pragma once

#include "synthetic_kernel.h"

namespace stallmon::core::testing {

inline void build_seed_case1(introspect::testing::SyntheticKernel& k) {
  using Layout = introspect::testing::SyntheticKernel::Layout;
  const uint32_t done = k.layout == Layout::kLinux61 ? 0x10 : k.layout == Layout::kLegacy ? 0x02 : 0x00;
  const uint32_t waiting = done | 0x01;  // CSD_FLAG_LOCK
  const uint64_t fn = k.func("do_sync_core");
  const uint64_t sh = k.task(107, "sh");
  uint64_t idle = 0;
  (void)k.read(k.percpu("runqueues", 0) + k.off("rq", "idle"), &idle, 8);
  k.set_rq(0, sh, idle, 5, 5, 0, 200'000'000'000ULL);
  k.set_cfd_mask(0, {1, 2, 3});
  k.set_csd(k.cfd_csd(0, 1), done, fn);
  k.set_csd(k.cfd_csd(0, 3), done, fn);
  k.set_csd(k.cfd_csd(0, 2), waiting, fn);  // not run yet
  (void)k.read(k.percpu("runqueues", 2) + k.off("rq", "idle"), &idle, 8);
  k.set_rq(2, idle, idle, 0, 0, 1, 150'000'000'000ULL);
  if (k.layout == Layout::kLinux61) {
    const uint64_t woken = k.task(131, "sh");
    k.mem.put<uint32_t>(k.task_node(woken) - k.off("task_struct", "wake_entry.llist") +
                            k.off("task_struct", "wake_entry.u_flags"),
                        0x30);  // CSD_TYPE_TTWU
    k.set_queue(2, {k.csd_node(k.cfd_csd(0, 2)), k.task_node(woken)});
  } else {
    const uint64_t async = k.csd(done, k.func("nohz_full_kick_work_func"));
    k.set_queue(2, {k.csd_node(k.cfd_csd(0, 2)), k.csd_node(async)});
    k.set_wake_list(2, {k.task(131, "sh")});
  }
}

}  // namespace stallmon::core::testing
