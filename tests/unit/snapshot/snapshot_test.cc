// SPDX-License-Identifier: Apache-2.0
// The snapshot readers on synthetic kernels (real BTF built with libbpf, hand-built structures).
#include <gtest/gtest.h>

#include <algorithm>

#include "stallmon/introspect/snapshot.h"
#include "stallmon/introspect/snapshot_format.h"
#include "stallmon/introspect/snapshot_json.h"
#include "synthetic_kernel.h"

namespace stallmon::introspect {
namespace {

using testing::SyntheticKernel;

std::unique_ptr<SnapshotReader> make_reader(SyntheticKernel& k, SnapshotOptions o = {}) {
  auto r = SnapshotReader::create(k, o);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().to_string());
  return r.ok() ? std::move(r).value() : nullptr;
}

bool has_error(const GuestSnapshot& s, int32_t cpu, const std::string& needle) {
  return std::any_of(s.errors.begin(), s.errors.end(), [&](const SnapshotError& e) {
    return e.cpu == cpu && (e.message.find(needle) != std::string::npos || e.what.find(needle) != std::string::npos);
  });
}

// The seed-case-1 picture on a 6.1 layout: CPU0 waits on CPU2's csd, CPU2 is idle with a SYNC
// csd and a remote wakeup queued that it never processes.
struct SeedCase1 {
  SyntheticKernel k{4, SyntheticKernel::Layout::kLinux61};
  uint64_t sh = 0, woken = 0, do_sync_core = 0;
  SeedCase1() {
    do_sync_core = k.func("do_sync_core");
    sh = k.task(107, "sh");
    uint64_t idle0 = 0;
    k.read(k.percpu("runqueues", 0) + k.off("rq", "idle"), &idle0, 8).ok();
    k.set_rq(0, sh, idle0, 5, 5, 0, 200'000'000'000ULL);
    k.set_cfd_mask(0, {1, 2, 3});
    for (uint32_t t : {1u, 3u}) k.set_csd(k.cfd_csd(0, t), 0x10, do_sync_core);  // done: lock cleared
    k.set_csd(k.cfd_csd(0, 2), 0x11, do_sync_core);                              // LOCK|SYNC
    woken = k.task(131, "sh");
    k.mem.put<uint32_t>(k.task_node(woken) - k.off("task_struct", "wake_entry.llist") +
                            k.off("task_struct", "wake_entry.u_flags"), 0x30);  // CSD_TYPE_TTWU
    uint64_t idle2 = 0;
    k.read(k.percpu("runqueues", 2) + k.off("rq", "idle"), &idle2, 8).ok();
    k.set_rq(2, idle2, idle2, 0, 0, 1, 150'000'000'000ULL);
    k.set_queue(2, {k.csd_node(k.cfd_csd(0, 2)), k.task_node(woken)});
    k.mem.put<uint64_t>(k.percpu("hrtimer_interrupts", 2), 11);
  }
};

TEST(SnapshotReader, SeedCase1OnLinux61Layout) {
  SeedCase1 f;
  auto reader = make_reader(f.k);
  ASSERT_TRUE(reader);
  EXPECT_TRUE(reader->features().typed_csd);
  EXPECT_TRUE(reader->features().cfd_pcpu);
  EXPECT_TRUE(reader->features().cfd_mask_offstack);
  EXPECT_TRUE(reader->features().ttwu_pending);
  EXPECT_TRUE(reader->features().task_state_new);
  GuestSnapshot s = reader->take();
  EXPECT_TRUE(s.errors.empty()) << format_snapshot(s);
  ASSERT_EQ(s.cpus.size(), 4u);
  EXPECT_EQ(s.nr_cpu_ids, 4u);
  EXPECT_EQ(s.online_cpus, (std::vector<uint32_t>{0, 1, 2, 3}));
  EXPECT_EQ(s.watchdog_thresh, 10);
  EXPECT_EQ(s.panic_cpu, -1);
  ASSERT_TRUE(s.jiffies);
  EXPECT_EQ(s.guest_clock_ns, 200'000'000'000ULL);

  const CpuSnapshot& c0 = s.cpus[0];
  ASSERT_TRUE(c0.rq.ok);
  EXPECT_EQ(c0.rq.curr.comm, "sh");
  EXPECT_EQ(c0.rq.curr.pid, 107);
  EXPECT_FALSE(c0.rq.curr_is_idle);
  EXPECT_EQ(c0.rq.nr_running, 5u);
  EXPECT_EQ(c0.rq.cfs_h_nr_running, 5u);
  EXPECT_EQ(c0.cfd_mask, (std::vector<uint32_t>{1, 2, 3}));
  ASSERT_EQ(c0.cfd_targets.size(), 3u);
  for (const CfdTarget& t : c0.cfd_targets) {
    ASSERT_TRUE(t.ok);
    EXPECT_EQ(t.func_name, "do_sync_core");
    EXPECT_EQ(t.type, CsdType::kSync);
    EXPECT_EQ(t.locked, t.target == 2) << t.target;
    EXPECT_EQ(t.flags, t.target == 2 ? 0x11u : 0x10u);
  }

  const CpuSnapshot& c2 = s.cpus[2];
  EXPECT_TRUE(c2.rq.curr_is_idle);
  EXPECT_EQ(c2.rq.curr.comm, "swapper/2");
  EXPECT_EQ(c2.rq.curr.pid, 0);
  EXPECT_EQ(c2.rq.nr_running, 0u);
  EXPECT_EQ(c2.rq.ttwu_pending, 1u);
  EXPECT_EQ(c2.watchdog.hrtimer_interrupts, 11u);
  ASSERT_EQ(c2.call_single_queue.size(), 2u);
  EXPECT_FALSE(c2.call_single_queue_truncated);
  const QueueEntry& e0 = c2.call_single_queue[0];
  EXPECT_EQ(e0.type, CsdType::kSync);
  EXPECT_EQ(e0.flags, 0x11u);
  EXPECT_TRUE(e0.locked);
  EXPECT_EQ(e0.object, f.k.cfd_csd(0, 2));  // the very csd CPU0 waits on
  EXPECT_EQ(e0.func_name, "do_sync_core");
  const QueueEntry& e1 = c2.call_single_queue[1];
  EXPECT_EQ(e1.type, CsdType::kTtwu);
  EXPECT_EQ(e1.object, f.woken);
  EXPECT_TRUE(e1.task.ok);
  EXPECT_EQ(e1.task.pid, 131);
  EXPECT_EQ(e1.task.comm, "sh");
  ASSERT_TRUE(c2.steal);
  for (uint32_t c : {1u, 3u}) EXPECT_TRUE(s.cpus[c].call_single_queue.empty());
}

TEST(SnapshotReader, IsAFewBatches) {
  SeedCase1 f;
  auto reader = make_reader(f.k, SnapshotOptions{.read_printk = false});
  ASSERT_TRUE(reader);
  f.k.batches = 0;
  GuestSnapshot s = reader->take();
  // globals+per-cpu, tasks+masks, cfd csds+first nodes, second nodes, TTWU task, (end).
  EXPECT_LE(f.k.batches, 6u);
  EXPECT_EQ(s.cpus[2].call_single_queue.size(), 2u);
}

TEST(SnapshotReader, AllCsdTypes) {
  SyntheticKernel k(2, SyntheticKernel::Layout::kLinux61);
  uint64_t fa = k.func("generic_smp_call_function_single_interrupt");
  uint64_t fi = k.func("rto_push_irq_work_func");
  uint64_t a = k.csd(0x01, fa);  // ASYNC, locked
  uint64_t w = k.csd(0x20, fi);  // IRQ_WORK (irq_work shares the csd layout's head)
  uint64_t u = k.csd(0x70, fa);  // a type the kernel does not define
  k.set_queue(1, {k.csd_node(a), k.csd_node(w), k.csd_node(u)});
  auto reader = make_reader(k);
  GuestSnapshot s = reader->take();
  const auto& q = s.cpus[1].call_single_queue;
  ASSERT_EQ(q.size(), 3u);
  EXPECT_EQ(q[0].type, CsdType::kAsync);
  EXPECT_TRUE(q[0].locked);
  EXPECT_EQ(q[0].func_name, "generic_smp_call_function_single_interrupt");
  EXPECT_EQ(q[1].type, CsdType::kIrqWork);
  EXPECT_EQ(q[1].func_name, "rto_push_irq_work_func");
  EXPECT_FALSE(q[1].locked);
  EXPECT_EQ(q[2].type, CsdType::kUnknown);
}

TEST(SnapshotReader, CyclicQueueIsTruncatedWithAnError) {
  SyntheticKernel k(2, SyntheticKernel::Layout::kLinux61);
  uint64_t f = k.func("do_sync_core");
  uint64_t a = k.csd(0x11, f), b = k.csd(0x11, f);
  k.set_queue(1, {k.csd_node(a), k.csd_node(b)});
  k.mem.put<uint64_t>(k.csd_node(b), k.csd_node(a));  // b->next = a
  auto reader = make_reader(k);
  GuestSnapshot s = reader->take();
  EXPECT_EQ(s.cpus[1].call_single_queue.size(), 2u);
  EXPECT_TRUE(s.cpus[1].call_single_queue_truncated);
  EXPECT_TRUE(has_error(s, 1, "cycle"));
  EXPECT_TRUE(s.cpus[0].call_single_queue.empty());
}

TEST(SnapshotReader, SelfLoopAndLengthCap) {
  SyntheticKernel k(2, SyntheticKernel::Layout::kLinux61);
  uint64_t f = k.func("f");
  std::vector<uint64_t> nodes;
  for (int i = 0; i < 40; ++i) nodes.push_back(k.csd_node(k.csd(0x10, f)));
  k.set_queue(0, nodes);
  uint64_t self = k.csd(0x10, f);
  k.set_queue(1, {k.csd_node(self)});
  k.mem.put<uint64_t>(k.csd_node(self), k.csd_node(self));
  SnapshotOptions o;
  o.max_queue_entries = 16;
  auto reader = make_reader(k, o);
  GuestSnapshot s = reader->take();
  EXPECT_EQ(s.cpus[0].call_single_queue.size(), 16u);
  EXPECT_TRUE(s.cpus[0].call_single_queue_truncated);
  EXPECT_TRUE(has_error(s, 0, "longer than 16"));
  EXPECT_EQ(s.cpus[1].call_single_queue.size(), 1u);
  EXPECT_TRUE(has_error(s, 1, "cycle"));
}

TEST(SnapshotReader, GarbagePointersBecomeErrorsNotCrashes) {
  SyntheticKernel k(3, SyntheticKernel::Layout::kLinux61);
  // CPU0: queue head is not a kernel pointer. CPU1: head points at unmapped kernel memory,
  // rq->curr too. CPU2: cfd cpumask pointer is garbage, and its TTWU entry's task is unmapped.
  k.mem.put<uint64_t>(k.percpu("call_single_queue", 0), 0x1234);
  k.mem.put<uint64_t>(k.percpu("call_single_queue", 1), 0xffffc90000001000ULL);
  k.mem.put<uint64_t>(k.percpu("runqueues", 1) + k.off("rq", "curr"), 0xffffc90000002000ULL);
  k.mem.put<uint64_t>(k.percpu("cfd_data", 2) + k.off("call_function_data", "cpumask"), 0x42);
  auto reader = make_reader(k);
  GuestSnapshot s = reader->take();
  EXPECT_TRUE(has_error(s, 0, "not a kernel pointer"));
  EXPECT_TRUE(s.cpus[0].call_single_queue_truncated);
  EXPECT_TRUE(s.cpus[0].rq.ok);  // the rest of CPU0 is fine
  EXPECT_TRUE(has_error(s, 1, "unreadable"));
  EXPECT_TRUE(s.cpus[1].rq.ok);
  EXPECT_FALSE(s.cpus[1].rq.curr.ok);
  EXPECT_FALSE(s.cpus[2].cfd_ok);
  EXPECT_TRUE(has_error(s, 2, "cpumask"));
  EXPECT_EQ(s.cpus[2].rq.curr.comm, "swapper/2");
  // Formatting and JSON cope with the partial snapshot.
  EXPECT_NE(format_snapshot(s).find("errors"), std::string::npos);
  EXPECT_TRUE(snapshot_to_json(s)["errors"].size() >= 3);
}

TEST(SnapshotReader, UnreadablePerCpuAreaIsPerCpuError) {
  SyntheticKernel k(3, SyntheticKernel::Layout::kLinux61);
  // __per_cpu_offset[1] points nowhere: CPU1's every read fails, CPUs 0 and 2 are intact.
  k.mem.put<uint64_t>(SyntheticKernel::kImage + 0x1000 + 8, 0xffff888070000000ULL);
  auto reader = make_reader(k);
  GuestSnapshot s = reader->take();
  EXPECT_FALSE(s.cpus[1].rq.ok);
  EXPECT_TRUE(has_error(s, 1, "runqueues[1]"));
  EXPECT_FALSE(s.cpus[1].watchdog.touch_ts);
  EXPECT_TRUE(s.cpus[0].rq.ok);
  EXPECT_TRUE(s.cpus[2].rq.ok);
  EXPECT_EQ(s.cpus[2].watchdog.touch_ts, 102u);
}

TEST(SnapshotReader, ImplausibleCpuCountFailsCreate) {
  SyntheticKernel k(2, SyntheticKernel::Layout::kLinux61);
  k.mem.put<uint32_t>(SyntheticKernel::kImage + 0x100, 0x7fffffff);
  auto r = SnapshotReader::create(k);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
}

TEST(SnapshotReader, CpuCapIsRecorded) {
  SyntheticKernel k(4, SyntheticKernel::Layout::kLinux61);
  SnapshotOptions o;
  o.max_cpus = 2;
  auto reader = make_reader(k, o);
  GuestSnapshot s = reader->take();
  EXPECT_EQ(s.cpus.size(), 2u);
  EXPECT_EQ(s.nr_cpu_ids, 4u);
  EXPECT_TRUE(has_error(s, -1, "max_cpus"));
}

TEST(SnapshotReader, LegacyLayoutWithoutCallSingleNode) {
  SyntheticKernel k(4, SyntheticKernel::Layout::kLegacy);
  uint64_t f = k.func("flush_tlb_func");
  k.set_cfd_mask(2, {1, 3});  // seed case 1 as on 3.10/4.x: CPU2 waits on CPU3
  k.set_csd(k.cfd_csd(2, 1), 0x0, f);
  k.set_csd(k.cfd_csd(2, 3), 0x1, f);
  uint64_t other = k.csd(0x1, f);
  k.set_queue(3, {k.csd_node(k.cfd_csd(2, 3)), k.csd_node(other)});
  uint64_t java = k.task(900, "java");
  (void)java;
  uint64_t idle3 = 0;
  k.read(k.percpu("runqueues", 3) + k.off("rq", "idle"), &idle3, 8).ok();
  k.set_rq(3, idle3, idle3, 2, 2, 0, 5);
  auto reader = make_reader(k);
  ASSERT_TRUE(reader);
  EXPECT_FALSE(reader->features().typed_csd);
  EXPECT_FALSE(reader->features().cfd_pcpu);
  EXPECT_FALSE(reader->features().cfd_mask_offstack);
  EXPECT_FALSE(reader->features().ttwu_pending);
  EXPECT_FALSE(reader->features().task_state_new);
  EXPECT_FALSE(reader->features().steal_time);
  EXPECT_FALSE(reader->features().watchdog_report_ts);
  EXPECT_FALSE(reader->features().printk_ringbuffer);
  GuestSnapshot s = reader->take();
  EXPECT_TRUE(s.errors.empty()) << format_snapshot(s);
  const CpuSnapshot& c2 = s.cpus[2];
  EXPECT_EQ(c2.cfd_mask, (std::vector<uint32_t>{1, 3}));
  ASSERT_EQ(c2.cfd_targets.size(), 2u);
  EXPECT_FALSE(c2.cfd_targets[0].locked);
  EXPECT_TRUE(c2.cfd_targets[1].locked);
  EXPECT_EQ(c2.cfd_targets[1].type, CsdType::kLegacy);
  EXPECT_EQ(c2.cfd_targets[1].func_name, "flush_tlb_func");
  const CpuSnapshot& c3 = s.cpus[3];
  EXPECT_TRUE(c3.rq.curr_is_idle);
  EXPECT_EQ(c3.rq.nr_running, 2u);
  EXPECT_TRUE(reader->features().rq_wake_list);
  EXPECT_EQ(c3.rq.ttwu_pending, 0u);  // from rq->wake_list: empty
  EXPECT_TRUE(c3.rq.curr.state.has_value());
  ASSERT_EQ(c3.call_single_queue.size(), 2u);
  EXPECT_EQ(c3.call_single_queue[0].object, k.cfd_csd(2, 3));
  EXPECT_EQ(c3.call_single_queue[0].type, CsdType::kLegacy);
  EXPECT_TRUE(c3.call_single_queue[0].locked);
  EXPECT_FALSE(c3.steal);
  EXPECT_FALSE(c3.watchdog.report_ts);
}

// Seed case 1 as it happened on CentOS 7 (3.10): CPU0 (sh) waits in smp_call_function_many for
// CPU2, whose call_single_queue (a list_head then) holds CPU0's locked csd and an async one.
TEST(SnapshotReader, Linux310ListHeadQueue) {
  SyntheticKernel k(4, SyntheticKernel::Layout::kLinux310);
  const uint64_t fn = k.func("do_sync_core"), other_fn = k.func("nohz_full_kick_work_func");
  const uint64_t sh = k.task(107, "sh");
  uint64_t idle = 0;
  (void)k.read(k.percpu("runqueues", 0) + k.off("rq", "idle"), &idle, 8);
  k.set_rq(0, sh, idle, 5, 5, 0, 200'000'000'000ULL);
  k.set_cfd_mask(0, {1, 2, 3});
  k.set_csd(k.cfd_csd(0, 1), 0x0, fn);  // done: csd_unlock cleared CSD_FLAG_LOCK
  k.set_csd(k.cfd_csd(0, 3), 0x0, fn);
  k.set_csd(k.cfd_csd(0, 2), 0x1, fn);  // CSD_FLAG_LOCK: not run yet
  const uint64_t async = k.csd(0x0, other_fn);
  k.set_queue(2, {k.csd_node(k.cfd_csd(0, 2)), k.csd_node(async)});
  k.set_wake_list(2, {k.task(131, "sh"), k.task(132, "sh")});  // remote wakeups pending (3.0..5.7)
  auto reader = make_reader(k);
  ASSERT_TRUE(reader);
  EXPECT_TRUE(reader->features().csq_list_head);
  EXPECT_TRUE(reader->features().rq_wake_list);
  EXPECT_FALSE(reader->features().ttwu_pending);
  EXPECT_FALSE(reader->features().typed_csd);
  EXPECT_FALSE(reader->features().cfd_pcpu);
  EXPECT_FALSE(reader->features().cfd_mask_offstack);
  EXPECT_FALSE(reader->features().task_state_new);
  GuestSnapshot s = reader->take();
  EXPECT_TRUE(s.errors.empty()) << format_snapshot(s);
  EXPECT_EQ(s.online_cpus, (std::vector<uint32_t>{0, 1, 2, 3}));  // from cpu_online_bits
  EXPECT_FALSE(s.panic_cpu);
  const CpuSnapshot& c0 = s.cpus[0];
  EXPECT_EQ(c0.rq.curr.comm, "sh");
  EXPECT_EQ(c0.cfd_mask, (std::vector<uint32_t>{1, 2, 3}));
  ASSERT_EQ(c0.cfd_targets.size(), 3u);
  EXPECT_FALSE(c0.cfd_targets[0].locked);
  EXPECT_TRUE(c0.cfd_targets[1].locked);
  EXPECT_EQ(c0.cfd_targets[1].csd, k.cfd_csd(0, 2));
  EXPECT_EQ(c0.cfd_targets[1].type, CsdType::kLegacy);
  EXPECT_EQ(c0.cfd_targets[1].func_name, "do_sync_core");
  const CpuSnapshot& c2 = s.cpus[2];
  EXPECT_TRUE(c2.call_single_queue_ok);
  EXPECT_FALSE(c2.call_single_queue_truncated);
  ASSERT_EQ(c2.call_single_queue.size(), 2u);
  EXPECT_EQ(c2.call_single_queue[0].object, k.cfd_csd(0, 2));
  EXPECT_TRUE(c2.call_single_queue[0].locked);
  EXPECT_EQ(c2.call_single_queue[0].func_name, "do_sync_core");
  EXPECT_EQ(c2.call_single_queue[1].object, async);
  EXPECT_FALSE(c2.call_single_queue[1].locked);
  EXPECT_EQ(c2.call_single_queue[1].func_name, "nohz_full_kick_work_func");
  EXPECT_EQ(c2.call_single_queue[1].type, CsdType::kLegacy);
  EXPECT_EQ(c2.rq.ttwu_pending, 1u);
  EXPECT_EQ(s.cpus[1].rq.ttwu_pending, 0u);
  // Empty queues (head.next == &head) are empty, not one entry that is the head.
  for (uint32_t c : {0u, 1u, 3u}) {
    EXPECT_TRUE(s.cpus[c].call_single_queue_ok);
    EXPECT_TRUE(s.cpus[c].call_single_queue.empty()) << c;
  }
}

TEST(SnapshotReader, Linux310HostileListsAreBounded) {
  SyntheticKernel k(4, SyntheticKernel::Layout::kLinux310);
  const uint64_t fn = k.func("f");
  std::vector<uint64_t> a;
  for (int i = 0; i < 4; ++i) a.push_back(k.csd_node(k.csd(0x1, fn)));
  // CPU0: a cycle that never comes back to the head.
  k.set_queue(0, {a[0], a[1]});
  k.mem.put<uint64_t>(a[1] + k.off("list_head", "next"), a[0]);
  // CPU1: a NULL next (list_heads are never NULL-terminated).
  k.set_queue(1, {a[2]});
  k.mem.put<uint64_t>(a[2] + k.off("list_head", "next"), 0);
  // CPU2: next points into unmapped memory.
  k.set_queue(2, {a[3]});
  k.mem.put<uint64_t>(a[3] + k.off("list_head", "next"), 0xffffc90000001000ULL);
  // CPU3: a long, well-formed list beyond max_queue_entries.
  std::vector<uint64_t> many;
  for (int i = 0; i < 20; ++i) many.push_back(k.csd_node(k.csd(0x0, fn)));
  k.set_queue(3, many);
  SnapshotOptions o;
  o.max_queue_entries = 8;
  auto reader = make_reader(k, o);
  ASSERT_TRUE(reader);
  GuestSnapshot s = reader->take();
  EXPECT_EQ(s.cpus[0].call_single_queue.size(), 2u);
  EXPECT_TRUE(s.cpus[0].call_single_queue_truncated);
  EXPECT_TRUE(has_error(s, 0, "cycle in list"));
  EXPECT_EQ(s.cpus[1].call_single_queue.size(), 1u);
  EXPECT_TRUE(s.cpus[1].call_single_queue_truncated);
  EXPECT_TRUE(has_error(s, 1, "NULL next"));
  EXPECT_EQ(s.cpus[2].call_single_queue.size(), 1u);
  EXPECT_TRUE(s.cpus[2].call_single_queue_truncated);
  EXPECT_TRUE(has_error(s, 2, "unreadable"));
  EXPECT_EQ(s.cpus[3].call_single_queue.size(), 8u);
  EXPECT_TRUE(s.cpus[3].call_single_queue_truncated);
  EXPECT_TRUE(has_error(s, 3, "longer than 8"));
  // Garbage everywhere: bounded, and never a crash.
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    SyntheticKernel g(4, SyntheticKernel::Layout::kLinux310);
    auto r = make_reader(g);
    ASSERT_TRUE(r);
    g.mem.scribble(seed);
    GuestSnapshot gs = r->take();
    for (const CpuSnapshot& c : gs.cpus) EXPECT_LE(c.call_single_queue.size(), r->options().max_queue_entries);
    EXPECT_TRUE(nlohmann::json::accept(snapshot_to_json_string(gs)));
  }
}

// The llist layouts are not mistaken for the list_head one (and the reverse).
TEST(SnapshotReader, QueueFormIsDetectedByMemberTypes) {
  SyntheticKernel legacy(2, SyntheticKernel::Layout::kLegacy);
  EXPECT_FALSE(make_reader(legacy)->features().csq_list_head);
  SyntheticKernel v61(2, SyntheticKernel::Layout::kLinux61);
  EXPECT_FALSE(make_reader(v61)->features().csq_list_head);
  SyntheticKernel v310(2, SyntheticKernel::Layout::kLinux310);
  EXPECT_TRUE(make_reader(v310)->features().csq_list_head);
}

// kernel/softlockup.c before 2.6.36 named the touch timestamp touch_timestamp (2.6.32) and
// later softlockup_touch_ts; the value means the same (seconds).
TEST(SnapshotReader, WatchdogTouchTimestampUnderOlderNames) {
  for (const char* name : {"softlockup_touch_ts", "touch_timestamp"}) {
    SyntheticKernel k(2, SyntheticKernel::Layout::kLinux310);
    const uint64_t addr = *k.symbol("watchdog_touch_ts");
    k.remove_symbol("watchdog_touch_ts");
    k.add_symbol(name, addr);
    auto reader = make_reader(k);
    ASSERT_TRUE(reader);
    GuestSnapshot s = reader->take();
    EXPECT_EQ(s.cpus[1].watchdog.touch_ts, 101u) << name;
  }
  SyntheticKernel none(1, SyntheticKernel::Layout::kLinux310);
  none.remove_symbol("watchdog_touch_ts");
  EXPECT_FALSE(make_reader(none)->take().cpus[0].watchdog.touch_ts);
}

TEST(SnapshotReader, VariableSizesFromTypeInfo) {
  // 6.6+: hrtimer_interrupts is an atomic_t, hrtimer_interrupts_saved an int. The bytes after
  // them belong to other variables and must not leak into the values.
  SyntheticKernel k(2, SyntheticKernel::Layout::kLinux61);
  k.var_sizes["hrtimer_interrupts"] = 4;
  k.var_sizes["hrtimer_interrupts_saved"] = 4;
  for (uint32_t c = 0; c < 2; ++c) {
    k.mem.put<uint64_t>(k.percpu("hrtimer_interrupts", c), 0xdeadbeef00000000ULL | 33);
    k.mem.put<uint64_t>(k.percpu("hrtimer_interrupts_saved", c), 0xfeedface00000000ULL | 32);
  }
  auto reader = make_reader(k);
  GuestSnapshot s = reader->take();
  EXPECT_EQ(s.cpus[1].watchdog.hrtimer_interrupts, 33u);
  EXPECT_EQ(s.cpus[1].watchdog.hrtimer_interrupts_saved, 32u);
  EXPECT_EQ(s.cpus[1].watchdog.touch_ts, 101u);  // unknown size: unsigned long
}

TEST(SnapshotReader, MissingOptionalSymbolsDisableParts) {
  SyntheticKernel k(2, SyntheticKernel::Layout::kLinux61);
  k.remove_symbol("cfd_data");
  k.remove_symbol("hrtimer_interrupts");
  k.remove_symbol("steal_time");
  auto reader = make_reader(k);
  ASSERT_TRUE(reader);
  EXPECT_FALSE(reader->features().hrtimer_interrupts);
  GuestSnapshot s = reader->take();
  EXPECT_FALSE(s.cpus[0].cfd_ok);
  EXPECT_FALSE(s.cpus[0].watchdog.hrtimer_interrupts);
  EXPECT_FALSE(s.cpus[0].steal);
  EXPECT_TRUE(s.cpus[0].rq.ok);
}

TEST(SnapshotReader, MissingEssentialsFailCreate) {
  SyntheticKernel k(2, SyntheticKernel::Layout::kLinux61);
  k.remove_symbol("runqueues");
  auto r = SnapshotReader::create(k);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("runqueues"), std::string::npos);
}

TEST(SnapshotReader, RandomGarbageNeverCrashesOrHangs) {
  // Layout computed on a sane kernel, then every byte of guest memory replaced by garbage
  // (pointers into mapped memory included): take() must stay bounded and report errors.
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    SyntheticKernel k(4, SyntheticKernel::Layout::kLinux61);
    k.init_printk(4, 10);
    for (int i = 0; i < 5; ++i) k.printk("x", 1);
    auto reader = make_reader(k);
    ASSERT_TRUE(reader);
    k.mem.scribble(seed);
    GuestSnapshot s = reader->take();
    EXPECT_EQ(s.cpus.size(), 4u);
    for (const CpuSnapshot& c : s.cpus) EXPECT_LE(c.call_single_queue.size(), reader->options().max_queue_entries);
    EXPECT_LE(s.printk.size(), reader->options().printk_records);
    (void)format_snapshot(s);
    EXPECT_TRUE(nlohmann::json::accept(snapshot_to_json_string(s)));
    // And a layout computed on garbage fails cleanly or works boundedly.
    auto again = SnapshotReader::create(k);
    if (again.ok()) (void)(*again)->take();
  }
}

// ---------------------------------------------------------------------------------------------
// printk

TEST(Printk, TailInOrder) {
  SyntheticKernel k(1, SyntheticKernel::Layout::kLinux61);
  k.init_printk(5, 12);  // 32 descriptors, 4 KiB of text
  for (int i = 0; i < 10; ++i) k.printk("line " + std::to_string(i), 1000000000ULL * i + 5000, 6);
  std::vector<SnapshotError> errs;
  auto r = read_printk_tail(k, 4, 1024, &errs);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), 4u);
  EXPECT_EQ((*r)[0].text, "line 6");
  EXPECT_EQ((*r)[3].text, "line 9");
  EXPECT_EQ((*r)[3].seq, 9u);
  EXPECT_EQ((*r)[3].level, 6);
  EXPECT_EQ((*r)[3].flags, 2);
  EXPECT_EQ((*r)[3].ts_nsec, 9000005000ULL);
  EXPECT_EQ(format_printk_record((*r)[3]), "[    9.000005] line 9");
  EXPECT_TRUE(errs.empty());
}

TEST(Printk, WrappedDataAndReusedDescriptors) {
  SyntheticKernel k(1, SyntheticKernel::Layout::kLinux61);
  k.init_printk(3, 8);  // 8 descriptors, 256 bytes of text: both wrap many times
  std::vector<std::string> all;
  for (int i = 0; i < 53; ++i) {
    std::string t = "msg-" + std::to_string(i) + std::string(static_cast<size_t>(i % 23), 'x');
    all.push_back(t);
    k.printk(t, static_cast<uint64_t>(i) * 1000, 4);
  }
  auto r = read_printk_tail(k, 50, 1024);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_GE(r->size(), 3u);
  ASSERT_LE(r->size(), 8u);
  // Whatever survived is the newest records, contiguous, intact.
  for (size_t i = 0; i < r->size(); ++i) {
    const PrintkRecord& rec = (*r)[i];
    EXPECT_EQ(rec.seq, 53 - r->size() + i);
    EXPECT_EQ(rec.text, all[rec.seq]);
  }
}

TEST(Printk, CorruptRingGivesErrorsOrDrops) {
  SyntheticKernel k(1, SyntheticKernel::Layout::kLinux61);
  k.init_printk(4, 10);
  for (int i = 0; i < 6; ++i) k.printk("record " + std::to_string(i), 1);
  // Record 5: text_len larger than its block → truncated; record 4: begin/next nonsense.
  uint64_t head = 0;
  k.read(k.symbol("prb").value(), &head, 8).ok();
  uint64_t hid = 0;
  k.read(head + k.off("printk_ringbuffer", "desc_ring.head_id"), &hid, 8).ok();
  uint64_t infos = 0;
  k.read(head + k.off("printk_ringbuffer", "desc_ring.infos"), &infos, 8).ok();
  k.mem.put<uint16_t>(infos + (hid & 15) * 88 + k.off("printk_info", "text_len"), 60000);
  uint64_t d4 = k.printk_desc_addr(hid - 1);
  k.mem.put<uint64_t>(d4 + k.off("prb_desc", "text_blk_lpos.begin"), 0x100000);
  k.mem.put<uint64_t>(d4 + k.off("prb_desc", "text_blk_lpos.next"), 0x10);
  std::vector<SnapshotError> errs;
  auto r = read_printk_tail(k, 10, 1024, &errs);
  ASSERT_TRUE(r.ok());
  ASSERT_FALSE(r->empty());
  EXPECT_TRUE(r->back().text_truncated);
  EXPECT_EQ(r->back().seq, 5u);
  EXPECT_TRUE(std::none_of(r->begin(), r->end(), [](const PrintkRecord& p) { return p.seq == 4; }));
  EXPECT_FALSE(errs.empty());
  // Implausible ring geometry is an error, not a huge allocation.
  k.mem.put<uint32_t>(head + k.off("printk_ringbuffer", "desc_ring.count_bits"), 60);
  auto bad = read_printk_tail(k, 10, 1024);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kCorrupt);
  // prb pointing outside memory.
  k.mem.put<uint64_t>(k.symbol("prb").value(), 0xffffc90000000000ULL);
  EXPECT_FALSE(read_printk_tail(k, 10, 1024).ok());
}

TEST(Printk, TextCapAndSnapshotIntegration) {
  SyntheticKernel k(2, SyntheticKernel::Layout::kLinux61);
  k.init_printk(4, 12);
  k.printk(std::string(300, 'a'), 7);
  k.printk("watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [sh:107]", 8, 0);
  SnapshotOptions o;
  o.printk_max_text = 100;
  auto reader = make_reader(k, o);
  ASSERT_TRUE(reader->features().printk_ringbuffer);
  GuestSnapshot s = reader->take();
  ASSERT_TRUE(s.printk_read);
  ASSERT_EQ(s.printk.size(), 2u);
  EXPECT_EQ(s.printk[0].text.size(), 100u);
  EXPECT_TRUE(s.printk[0].text_truncated);
  EXPECT_EQ(s.printk[1].level, 0);
  EXPECT_NE(format_snapshot(s).find("soft lockup"), std::string::npos);
}

// log_buf before 5.10: struct log records (3.10) and struct printk_log with caller_id (5.1..5.9
// with CONFIG_PRINTK_CALLER; a 20-byte header), wrapped many times over.
TEST(Printk, LogBufTailOnOlderKernels) {
  for (auto layout : {SyntheticKernel::Layout::kLinux310, SyntheticKernel::Layout::kLegacy}) {
    SyntheticKernel k(1, layout);
    k.init_log_buf(1024);
    std::vector<std::string> all;
    for (int i = 0; i < 200; ++i) {
      all.push_back("msg " + std::to_string(i) + std::string(static_cast<size_t>(i % 37), '.'));
      EXPECT_EQ(k.log_printk(all.back(), 1000ULL * i, static_cast<uint8_t>(i % 8)), static_cast<uint64_t>(i));
    }
    std::vector<SnapshotError> errs;
    auto tail = read_printk_tail(k, 4, 1024, &errs);
    ASSERT_TRUE(tail.ok()) << tail.error().to_string();
    EXPECT_TRUE(errs.empty()) << errs[0].message;
    ASSERT_EQ(tail->size(), 4u);
    for (size_t i = 0; i < 4; ++i) {
      const PrintkRecord& r = (*tail)[i];
      EXPECT_EQ(r.seq, 196 + i);
      EXPECT_EQ(r.text, all[r.seq]);
      EXPECT_EQ(r.ts_nsec, 1000 * r.seq);
      EXPECT_EQ(r.level, r.seq % 8);
      EXPECT_EQ(r.flags, 2);
      EXPECT_FALSE(r.text_truncated);
    }
    // Everything still in the buffer: contiguous seqs ending at the newest, texts intact.
    auto every = read_printk_tail(k, 1000, 1024);
    ASSERT_TRUE(every.ok());
    ASSERT_GE(every->size(), 10u);
    EXPECT_LT(every->size(), 200u);
    for (size_t i = 0; i < every->size(); ++i) {
      EXPECT_EQ((*every)[i].seq, 200 - every->size() + i);
      EXPECT_EQ((*every)[i].text, all[(*every)[i].seq]);
    }
    // Through the snapshot reader, with the text cap.
    SnapshotOptions o;
    o.printk_records = 2;
    o.printk_max_text = 5;
    auto reader = make_reader(k, o);
    ASSERT_TRUE(reader);
    EXPECT_TRUE(reader->features().printk_log_buf);
    EXPECT_FALSE(reader->features().printk_ringbuffer);
    GuestSnapshot s = reader->take();
    ASSERT_TRUE(s.printk_read);
    ASSERT_EQ(s.printk.size(), 2u);
    EXPECT_EQ(s.printk[1].text, "msg 1");
    EXPECT_TRUE(s.printk[1].text_truncated);
  }
}

TEST(Printk, LogBufHostileInputIsBounded) {
  SyntheticKernel k(1, SyntheticKernel::Layout::kLinux310);
  k.init_log_buf(512);
  for (int i = 0; i < 6; ++i) k.log_printk("record " + std::to_string(i), 1);
  const uint64_t buf = k.log_buf_addr();
  const uint32_t hdr = k.log_record_header();
  const uint64_t len_off = k.off("log", "len"), text_len_off = k.off("log", "text_len");
  auto u32_at = [&](const char* sym) {
    uint32_t v = 0;
    (void)k.read(*k.symbol(sym), &v, 4);
    return v;
  };
  const uint32_t first = u32_at("log_first_idx");
  uint16_t first_len = 0;
  (void)k.read(buf + first + len_off, &first_len, 2);
  // Record 1's text_len beyond its record: truncated to what the record holds.
  k.mem.put<uint16_t>(buf + first + first_len + text_len_off, 400);
  // Record 3's length below the header size: the walk stops there, keeping records 0..2.
  uint32_t idx = first;
  for (int i = 0; i < 3; ++i) {
    uint16_t l = 0;
    (void)k.read(buf + idx + len_off, &l, 2);
    idx += l;
  }
  k.mem.put<uint16_t>(buf + idx + len_off, static_cast<uint16_t>(hdr - 1));
  std::vector<SnapshotError> errs;
  auto r = read_printk_tail(k, 10, 1024, &errs);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_TRUE((*r)[1].text_truncated);
  EXPECT_EQ((*r)[2].text, "record 2");
  ASSERT_FALSE(errs.empty());
  EXPECT_NE(errs[0].message.find("out of range"), std::string::npos) << errs[0].message;
  // A zero-length record at 0 (a wrap marker that would loop forever) stops the walk.
  k.mem.put<uint16_t>(buf + idx + len_off, 0);
  k.mem.put<uint16_t>(buf + len_off, 0);
  errs.clear();
  r = read_printk_tail(k, 10, 1024, &errs);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(errs.empty());
  // Indices outside the buffer, a buffer longer than at layout time, garbage pointers: errors.
  k.mem.put<uint32_t>(*k.symbol("log_first_idx"), 512);
  EXPECT_EQ(read_printk_tail(k, 10, 1024).error().code, ErrorCode::kCorrupt);
  k.mem.put<uint32_t>(*k.symbol("log_first_idx"), first);
  auto reader = make_reader(k);
  k.mem.put<uint32_t>(*k.symbol("log_buf_len"), 1 << 20);
  GuestSnapshot s = reader->take();
  EXPECT_FALSE(s.printk_read);
  EXPECT_TRUE(has_error(s, -1, "log_buf_len"));
  k.mem.put<uint32_t>(*k.symbol("log_buf_len"), 512);
  k.mem.put<uint64_t>(*k.symbol("log_buf"), 0x1234);
  EXPECT_EQ(read_printk_tail(k, 10, 1024).error().code, ErrorCode::kCorrupt);
  // A log_buf_len above what is read per snapshot disables printk, not the snapshot.
  k.mem.put<uint32_t>(*k.symbol("log_buf_len"), (4u << 20) + 1);
  auto big = make_reader(k);
  ASSERT_TRUE(big);
  EXPECT_FALSE(big->features().printk_log_buf);
  // Garbage everywhere: bounded.
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    SyntheticKernel g(1, SyntheticKernel::Layout::kLegacy);
    g.init_log_buf(2048);
    for (int i = 0; i < 50; ++i) g.log_printk("x" + std::to_string(i), 1);
    g.mem.scribble(seed);
    auto t = read_printk_tail(g, 16, 64);
    if (t.ok()) {
      EXPECT_LE(t->size(), 16u);
      for (const PrintkRecord& p : *t) EXPECT_LE(p.text.size(), 64u);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// BTF layouts and output

TEST(BtfLayout, BitfieldsAnonymousMembersAndKinds) {
  SyntheticKernel k(1, SyntheticKernel::Layout::kLinux61);
  auto lvl = k.member("printk_info", "level");
  ASSERT_TRUE(lvl.ok());
  EXPECT_EQ(lvl->bit_offset, 157u);
  EXPECT_EQ(lvl->bit_size, 3u);
  EXPECT_EQ(lvl->offset(), 19u);
  auto uf = k.member("__call_single_data", "node.u_flags");  // inside an anonymous union
  ASSERT_TRUE(uf.ok());
  EXPECT_EQ(uf->offset(), 8u);
  EXPECT_EQ(uf->size, 4u);
  EXPECT_EQ(k.member("call_function_data", "cpumask")->kind, MemberLayout::Kind::kPointer);
  EXPECT_EQ(k.member("struct rq", "curr")->kind, MemberLayout::Kind::kPointer);
  EXPECT_EQ(k.member("task_struct", "comm")->size, 16u);
  EXPECT_EQ(k.member("task_struct", "comm")->kind, MemberLayout::Kind::kArray);
  EXPECT_EQ(k.member("call_single_data_t", "func")->offset(), 16u);  // through a typedef
  EXPECT_EQ(k.member("rq", "nope").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(k.member("nope", "x").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(k.type_size("rq").value(), 3200u);
  SyntheticKernel old(1, SyntheticKernel::Layout::kLegacy);
  EXPECT_EQ(old.member("call_function_data", "cpumask")->kind, MemberLayout::Kind::kArray);
  EXPECT_FALSE(old.type_size("__call_single_node").ok());
}

TEST(SnapshotFormat, TableAndJson) {
  SeedCase1 f;
  auto reader = make_reader(f.k);
  GuestSnapshot s = reader->take();
  std::string t = format_snapshot(s);
  EXPECT_NE(t.find("-> CPU2 csd"), std::string::npos) << t;
  EXPECT_NE(t.find("LOCKED (waiting) do_sync_core"), std::string::npos) << t;
  EXPECT_NE(t.find("TTWU"), std::string::npos);
  EXPECT_NE(t.find("swapper/2"), std::string::npos);
  nlohmann::json j = snapshot_to_json(s);
  EXPECT_EQ(j["nr_cpu_ids"], 4);
  EXPECT_EQ(j["cpus"][2]["runqueue"]["curr_is_idle"], true);
  EXPECT_EQ(j["cpus"][2]["runqueue"]["ttwu_pending"], 1);
  EXPECT_EQ(j["cpus"][2]["call_single_queue"]["entries"][0]["type"], "SYNC");
  EXPECT_EQ(j["cpus"][2]["call_single_queue"]["entries"][1]["task"]["pid"], 131);
  EXPECT_EQ(j["cpus"][0]["cfd_data"]["targets"][1]["flags"], 0x11);
  EXPECT_EQ(j["cpus"][0]["cfd_data"]["targets"][1]["func_name"], "do_sync_core");
  // Round-trips as text, with hostile bytes in comm replaced.
  f.k.mem.write(f.sh + f.k.off("task_struct", "comm"), "\xff\xfe\x01zz", 6);
  std::string js = snapshot_to_json_string(reader->take());
  EXPECT_TRUE(nlohmann::json::accept(js));
}

}  // namespace
}  // namespace stallmon::introspect
