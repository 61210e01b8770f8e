// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: BTF from arbitrary bytes: libbpf's parse, Types (discovery's lookups) and
// the layout path the snapshot readers really use (btf_member_layout and sizes), with every
// member path the readers resolve.
#include <cstdint>
#include <vector>

#include "stallmon/introspect/btf_types.h"
#include "stallmon/introspect/snapshot_btf.h"

namespace {
struct Path {
  const char* type;
  const char* path;
};
constexpr Path kPaths[] = {
    {"rq", "nr_running"}, {"rq", "curr"}, {"rq", "idle"}, {"rq", "clock"}, {"rq", "cfs.h_nr_running"},
    {"rq", "cfs.h_nr_queued"}, {"rq", "ttwu_pending"}, {"task_struct", "pid"}, {"task_struct", "comm"},
    {"task_struct", "__state"}, {"task_struct", "wake_entry.llist"}, {"llist_head", "first"},
    {"llist_node", "next"}, {"__call_single_data", "node.llist"}, {"__call_single_data", "node.u_flags"},
    {"__call_single_data", "func"}, {"irq_work", "node.llist"}, {"irq_work", "func"},
    {"call_function_data", "pcpu"}, {"call_function_data", "csd"}, {"call_function_data", "cpumask"},
    {"cfd_percpu", "csd"}, {"kvm_steal_time", "steal"}, {"printk_ringbuffer", "desc_ring.count_bits"},
    {"printk_info", "level"}, {"prb_desc", "state_var"}, {"a", "b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r"},
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  auto budget = std::make_shared<MemoryBudget>("fuzz", 16u << 20);
  auto t = Types::from_btf_bytes(std::vector<uint8_t>(data, data + size), budget);
  if (!t.ok()) return 0;
  const Types& types = **t;
  for (const Path& p : kPaths) {
    (void)types.member(p.type, p.path);
    auto m = btf_member_layout(types.raw_btf(), p.type, p.path);
    if (m.ok() && (m->size > (1u << 20) || m->offset() + m->size > (1u << 20))) __builtin_trap();  // checked bound
    (void)btf_type_size(types.raw_btf(), p.type);
  }
  (void)types.type_size("call_single_data_t");
  (void)types.variable_type_name("runqueues");
  for (const char* v : {"runqueues", "watchdog_touch_ts", "hrtimer_interrupts"}) (void)btf_variable_size(types.raw_btf(), v);
  return 0;
}
