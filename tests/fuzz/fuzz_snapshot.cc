// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: SnapshotReader::create and take() over the synthetic 6.1 kernel with
// fuzzed fields (runqueues, call_single_queue links incl. cycles, cfd_data pointers and masks,
// csds, tasks, nr_cpu_ids, watchdog): never a crash, a hang or unbounded memory.
#include "stallmon/introspect/snapshot.h"
#include "synthetic_guest_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  fuzz::synthetic_guest().with_input(data, size, [](KernelAccess& k) {
    SnapshotOptions o;
    o.max_cpus = fuzz::SyntheticGuest::kCpus;  // libvirt's vCPU count
    o.printk_records = 8;
    o.budget = std::make_shared<MemoryBudget>("fuzz");
    auto r = SnapshotReader::create(k, o);
    if (!r.ok()) return;
    GuestSnapshot s = (*r)->take();
    if (s.cpus.size() > o.max_cpus) __builtin_trap();
    for (const CpuSnapshot& c : s.cpus)
      if (c.call_single_queue.size() > o.max_queue_entries) __builtin_trap();
  });
  return 0;
}
