// SPDX-License-Identifier: Apache-2.0
#include "synthetic_kernel.h"

#include <algorithm>

namespace stallmon::introspect::testing {

namespace {

struct B {
  struct btf* b;
  int add_struct(const char* name, uint32_t size) {
    int id = btf__add_struct(b, name, size);
    if (id < 0) throw std::runtime_error(std::string("btf__add_struct ") + (name ? name : "(anon)"));
    return id;
  }
  int add_union(const char* name, uint32_t size) {
    int id = btf__add_union(b, name, size);
    if (id < 0) throw std::runtime_error("btf__add_union");
    return id;
  }
  void field(const char* name, int type, uint32_t bit_off, uint32_t bit_size = 0) {
    if (btf__add_field(b, name, type, bit_off, bit_size) < 0)
      throw std::runtime_error(std::string("btf__add_field ") + (name ? name : "(anon)"));
  }
  // A pointer to the type that will be added next (self-referential structs).
  int ptr_to_next() { return btf__add_ptr(b, static_cast<int>(btf__type_cnt(b)) + 1); }
  int ptr(int id) { return btf__add_ptr(b, id); }
};

}  // namespace

SyntheticKernel::SyntheticKernel(uint32_t n, Layout l) : layout(l), ncpus(n) {
  build_btf();
  mem.map(kImage, 0x10000);
  mem.map(kHeap, kHeapSize);
  for (uint32_t c = 0; c < n; ++c) mem.map(pcpu(c), kPercpuSize);
  syms_["nr_cpu_ids"] = kImage + 0x100;
  // cpu_online_bits was renamed __cpu_online_mask in 4.5 (kernel/cpu.c).
  syms_[l == Layout::kLinux310 ? "cpu_online_bits" : "__cpu_online_mask"] = kImage + 0x200;
  syms_["jiffies_64"] = kImage + 0x300;
  syms_["watchdog_thresh"] = kImage + 0x308;
  if (l != Layout::kLinux310) syms_["panic_cpu"] = kImage + 0x310;  // kernel/panic.c, 4.5+
  syms_["__per_cpu_offset"] = kImage + 0x1000;
  syms_["runqueues"] = 0x1000;
  syms_["call_single_queue"] = 0x3000;
  syms_["cfd_data"] = 0x3100;
  syms_["watchdog_touch_ts"] = 0x3200;
  if (l == Layout::kLinux61) syms_["watchdog_report_ts"] = 0x3208;
  syms_["hrtimer_interrupts"] = 0x3210;
  syms_["hrtimer_interrupts_saved"] = 0x3218;
  if (l == Layout::kLinux61) syms_["steal_time"] = 0x3240;
  mem.put<uint32_t>(kImage + 0x100, n);
  uint64_t online[2] = {0, 0};
  for (uint32_t c = 0; c < n && c < 128; ++c) online[c / 64] |= 1ULL << (c % 64);
  mem.write(kImage + 0x200, online, sizeof online);
  mem.put<uint64_t>(kImage + 0x300, 4294937296ULL + 12345);
  mem.put<int32_t>(kImage + 0x308, 10);
  mem.put<int32_t>(kImage + 0x310, -1);
  for (uint32_t c = 0; c < n; ++c) mem.put<uint64_t>(kImage + 0x1000 + 8 * c, pcpu(c));

  const uint64_t pcpu_csds = 0x4000;  // alloc_percpu(struct cfd_percpu)
  for (uint32_t c = 0; c < n; ++c) {
    uint64_t idle = task(0, "swapper/" + std::to_string(c));
    set_rq(c, idle, idle, 0, 0, 0, 1000000000ULL * (100 + c));
    uint64_t cfd = percpu("cfd_data", c);
    if (l == Layout::kLinux61) {
      mem.put<uint64_t>(cfd + off("call_function_data", "pcpu"), pcpu_csds + c * 0x100);
      uint64_t mask = alloc(8);
      mem.put<uint64_t>(cfd + off("call_function_data", "cpumask"), mask);
      mem.put<uint64_t>(cfd + off("call_function_data", "cpumask_ipi"), alloc(8));
    } else {
      mem.put<uint64_t>(cfd + off("call_function_data", "csd"), pcpu_csds + c * 0x100);
    }
    if (l == Layout::kLinux310) set_queue(c, {});  // INIT_LIST_HEAD in call_function_init()
    mem.put<uint64_t>(percpu("watchdog_touch_ts", c), 100 + c);
    if (l == Layout::kLinux61) mem.put<uint64_t>(percpu("watchdog_report_ts", c), 100 + c);
    mem.put<uint64_t>(percpu("hrtimer_interrupts", c), 21);
    mem.put<uint64_t>(percpu("hrtimer_interrupts_saved", c), 20);
  }
}

void SyntheticKernel::build_btf() {
  btf_ = btf__new_empty();
  B b{btf_};
  const int u8 = btf__add_int(btf_, "unsigned char", 1, 0);
  const int u16 = btf__add_int(btf_, "short unsigned int", 2, 0);
  const int u32 = btf__add_int(btf_, "unsigned int", 4, 0);
  const int s32 = btf__add_int(btf_, "int", 4, BTF_INT_SIGNED);
  const int u64 = btf__add_int(btf_, "long long unsigned int", 8, 0);
  const int ul = btf__add_int(btf_, "long unsigned int", 8, 0);
  const int sl = btf__add_int(btf_, "long int", 8, BTF_INT_SIGNED);
  const int chr = btf__add_int(btf_, "char", 1, BTF_INT_CHAR);
  const int voidp = b.ptr(0);
  const int comm = btf__add_array(btf_, u32, chr, 16);

  const int llist_node_p = b.ptr_to_next();
  const int llist_node = b.add_struct("llist_node", 8);
  b.field("next", llist_node_p, 0);
  const int llist_head = b.add_struct("llist_head", 8);
  b.field("first", llist_node_p, 0);

  int csn = -1;
  if (layout == Layout::kLinux61) {
    // include/linux/smp_types.h (5.10+): u_flags lives in an anonymous union.
    const int anon = b.add_union(nullptr, 4);
    b.field("u_flags", u32, 0);
    b.field("a_flags", s32, 0);
    csn = b.add_struct("__call_single_node", 16);
    b.field("llist", llist_node, 0);
    b.field(nullptr, anon, 64);
    b.field("src", u16, 96);
    b.field("dst", u16, 112);
    const int csd = b.add_struct("__call_single_data", 32);
    b.field("node", csn, 0);
    b.field("func", voidp, 128);
    b.field("info", voidp, 192);
    const int csd_t = btf__add_typedef(btf_, "call_single_data_t", csd);
    b.add_struct("irq_work", 32);
    b.field("node", csn, 0);
    b.field("func", voidp, 128);
    const int cfd_percpu = b.add_struct("cfd_percpu", 32);
    b.field("csd", csd_t, 0);
    const int cfd_percpu_p = b.ptr(cfd_percpu);
    const int bits = btf__add_array(btf_, u32, ul, 1);
    const int cpumask = b.add_struct("cpumask", 8);
    b.field("bits", bits, 0);
    const int cpumask_var_t = btf__add_typedef(btf_, "cpumask_var_t", b.ptr(cpumask));
    b.add_struct("call_function_data", 24);
    b.field("pcpu", cfd_percpu_p, 0);
    b.field("cpumask", cpumask_var_t, 64);
    b.field("cpumask_ipi", cpumask_var_t, 128);
  } else {
    int csd = -1;
    if (layout == Layout::kLinux310) {
      // Linux 3.10 (CentOS 7's base), include/linux/list.h, include/linux/smp.h, kernel/smp.c:
      //   struct call_single_data { struct list_head list; smp_call_func_t func; void *info; u16 flags; };
      //   struct call_single_queue { struct list_head list; raw_spinlock_t lock; };  (per-cpu)
      // The llist types exist too (rq->wake_list), unused by the queue until 3.14.
      const int list_p = b.ptr_to_next();
      const int list = b.add_struct("list_head", 16);
      b.field("next", list_p, 0);
      b.field("prev", list_p, 64);
      csd = b.add_struct("call_single_data", 40);
      b.field("list", list, 0);
      b.field("func", voidp, 128);
      b.field("info", voidp, 192);
      b.field("flags", u16, 256);
      const int raw_spinlock = b.add_struct("raw_spinlock", 4);
      b.field("raw_lock", u32, 0);
      const int raw_spinlock_t = btf__add_typedef(btf_, "raw_spinlock_t", raw_spinlock);
      b.add_struct("call_single_queue", 24);
      b.field("list", list, 0);
      b.field("lock", raw_spinlock_t, 128);
    } else {
      // 4.14..5.7: struct __call_single_data { llist; func; info; unsigned int flags; }.
      csd = b.add_struct("__call_single_data", 32);
      b.field("llist", llist_node, 0);
      b.field("func", voidp, 64);
      b.field("info", voidp, 128);
      b.field("flags", u32, 192);
    }
    // Both (kernel/smp.c, 3.10..5.12): struct call_function_data { struct call_single_data
    // __percpu *csd; cpumask_var_t cpumask; cpumask_var_t cpumask_ipi; } (per-cpu cfd_data),
    // here without CONFIG_CPUMASK_OFFSTACK.
    const int csd_p = b.ptr(csd);
    const int bits = btf__add_array(btf_, u32, ul, 1);
    const int cpumask = b.add_struct("cpumask", 8);
    b.field("bits", bits, 0);
    const int mask_arr = btf__add_array(btf_, u32, cpumask, 1);  // !CONFIG_CPUMASK_OFFSTACK
    const int cpumask_var_t = btf__add_typedef(btf_, "cpumask_var_t", mask_arr);
    b.add_struct("call_function_data", 24);
    b.field("csd", csd_p, 0);
    b.field("cpumask", cpumask_var_t, 64);
    b.field("cpumask_ipi", cpumask_var_t, 128);
  }

  if (layout != Layout::kLinux61) {
    // printk records before the 5.10 ring buffer: struct log in kernel/printk.c (3.10), renamed
    // struct printk_log in 3.11 (kernel/printk/printk.c), with u32 caller_id under
    // CONFIG_PRINTK_CALLER from 5.1 and __packed __aligned(4): 16 and 20 bytes. The 4.x-like
    // layout carries caller_id so that the two header sizes are both exercised.
    const bool v310 = layout == Layout::kLinux310;
    b.add_struct(v310 ? "log" : "printk_log", v310 ? 16 : 20);
    b.field("ts_nsec", u64, 0);
    b.field("len", u16, 64);
    b.field("text_len", u16, 80);
    b.field("dict_len", u16, 96);
    b.field("facility", u8, 112);
    b.field("flags", u8, 120, 5);
    b.field("level", u8, 125, 3);
    if (!v310) b.field("caller_id", u32, 128);
  }

  const int task_p = b.ptr_to_next();
  b.add_struct("task_struct", 2048);
  b.field("thread_info", u64, 0);
  b.field("stack", u64, 8 * 32);
  if (layout == Layout::kLinux61) {
    b.field("__state", u32, 8 * 24);
    b.field("wake_entry", csn, 8 * 512);
  } else {
    b.field("state", sl, 8 * 16);
    b.field("wake_entry", llist_node, 8 * 512);  // struct llist_node (3.0..5.7)
  }
  b.field("pid", s32, 8 * 1200);
  b.field("comm", comm, 8 * 1500);
  b.field("flags", u32, 8 * 44);
  b.field(layout == Layout::kLinux61 ? "worker_private" : "set_child_tid", voidp, 8 * 1600);

  const int cfs_rq = b.add_struct("cfs_rq", 64);
  b.field("load", u64, 0);
  b.field("nr_running", u32, 64);
  b.field("h_nr_running", u32, 96);
  b.add_struct("rq", 3200);
  b.field("__lock", u32, 0);
  b.field("nr_running", u32, 32);
  b.field("cfs", cfs_rq, 8 * 128);
  b.field("curr", task_p, 8 * 2400);
  b.field("idle", task_p, 8 * 2408);
  b.field("stop", task_p, 8 * 2416);
  b.field("clock", u64, 8 * 2560);
  if (layout == Layout::kLinux61) b.field("ttwu_pending", u32, 8 * 3000);
  else b.field("wake_list", llist_head, 8 * 3000);  // kernel/sched/sched.h, 3.0..5.7

  if (layout == Layout::kLinux61) {
    b.add_struct("kvm_steal_time", 64);
    b.field("steal", u64, 0);
    b.field("version", u32, 64);
    b.field("flags", u32, 96);
    b.field("preempted", u8, 128);

    // kernel/printk/printk_ringbuffer.h
    const int charp = b.ptr(chr);
    const int lpos = b.add_struct("prb_data_blk_lpos", 16);
    b.field("begin", ul, 0);
    b.field("next", ul, 64);
    const int desc_p = b.ptr_to_next();
    b.add_struct("prb_desc", 24);
    b.field("state_var", sl, 0);
    b.field("text_blk_lpos", lpos, 64);
    const int dev = btf__add_array(btf_, u32, chr, 64);
    const int info_p = b.ptr_to_next();
    b.add_struct("printk_info", 88);
    b.field("seq", u64, 0);
    b.field("ts_nsec", u64, 64);
    b.field("text_len", u16, 128);
    b.field("facility", u8, 144);
    b.field("flags", u8, 152, 5);
    b.field("level", u8, 157, 3);
    b.field("caller_id", u32, 160);
    b.field("dev_info", dev, 192);
    const int dring = b.add_struct("prb_desc_ring", 48);
    b.field("count_bits", u32, 0);
    b.field("descs", desc_p, 64);
    b.field("infos", info_p, 128);
    b.field("head_id", sl, 192);
    b.field("tail_id", sl, 256);
    b.field("last_finalized_id", sl, 320);
    const int tring = b.add_struct("prb_data_ring", 32);
    b.field("size_bits", u32, 0);
    b.field("data", charp, 64);
    b.field("head_lpos", sl, 128);
    b.field("tail_lpos", sl, 192);
    b.add_struct("printk_ringbuffer", 88);
    b.field("desc_ring", dring, 0);
    b.field("text_data_ring", tring, 384);
    b.field("fail", sl, 640);
  }
}

uint64_t SyntheticKernel::task(int32_t pid, const std::string& comm, uint32_t state) {
  uint64_t t = alloc(2048);
  mem.put<int32_t>(t + off("task_struct", "pid"), pid);
  char c[16] = {};
  std::memcpy(c, comm.data(), std::min<size_t>(comm.size(), 15));
  mem.write(t + off("task_struct", "comm"), c, 16);
  if (layout == Layout::kLinux61) mem.put<uint32_t>(t + off("task_struct", "__state"), state);
  else mem.put<int64_t>(t + off("task_struct", "state"), state);
  return t;
}

void SyntheticKernel::set_rq(uint32_t cpu, uint64_t curr, uint64_t idle, uint32_t nr, uint32_t h_nr, uint32_t ttwu,
                             uint64_t clock) {
  uint64_t rq = percpu("runqueues", cpu);
  mem.put<uint64_t>(rq + off("rq", "curr"), curr);
  mem.put<uint64_t>(rq + off("rq", "idle"), idle);
  mem.put<uint32_t>(rq + off("rq", "nr_running"), nr);
  mem.put<uint32_t>(rq + off("rq", "cfs.h_nr_running"), h_nr);
  mem.put<uint64_t>(rq + off("rq", "clock"), clock);
  if (layout == Layout::kLinux61) mem.put<uint32_t>(rq + off("rq", "ttwu_pending"), ttwu);
}

uint64_t SyntheticKernel::csd(uint32_t flags, uint64_t func_addr) {
  uint64_t c = alloc(btf_type_size(btf_, csd_type()).value());
  set_csd(c, flags, func_addr);
  return c;
}

void SyntheticKernel::set_csd(uint64_t c, uint32_t flags, uint64_t func_addr) {
  if (layout == Layout::kLinux61) mem.put<uint32_t>(c + off("__call_single_data", "node.u_flags"), flags);
  else if (layout == Layout::kLinux310) mem.put<uint16_t>(c + off(csd_type(), "flags"), static_cast<uint16_t>(flags));
  else mem.put<uint32_t>(c + off("__call_single_data", "flags"), flags);
  mem.put<uint64_t>(c + off(csd_type(), "func"), func_addr);
}

uint64_t SyntheticKernel::csd_node(uint64_t c) const {
  switch (layout) {
    case Layout::kLinux61: return c + off("__call_single_data", "node.llist");
    case Layout::kLegacy: return c + off("__call_single_data", "llist");
    case Layout::kLinux310: return c + off("call_single_data", "list");
  }
  return 0;
}

uint64_t SyntheticKernel::task_node(uint64_t t) const {
  return t + off("task_struct", layout == Layout::kLinux61 ? "wake_entry.llist" : "wake_entry");
}

void SyntheticKernel::set_wake_list(uint32_t cpu, const std::vector<uint64_t>& tasks) {
  const uint64_t head = percpu("runqueues", cpu) + off("rq", "wake_list.first");
  mem.put<uint64_t>(head, tasks.empty() ? 0 : task_node(tasks[0]));
  for (size_t i = 0; i < tasks.size(); ++i)
    mem.put<uint64_t>(task_node(tasks[i]), i + 1 < tasks.size() ? task_node(tasks[i + 1]) : 0);
}

uint64_t SyntheticKernel::queue_head(uint32_t cpu) const {
  if (layout == Layout::kLinux310) return percpu("call_single_queue", cpu) + off("call_single_queue", "list");
  return percpu("call_single_queue", cpu) + off("llist_head", "first");
}

void SyntheticKernel::set_queue(uint32_t cpu, const std::vector<uint64_t>& nodes) {
  const uint64_t head = queue_head(cpu);
  if (layout == Layout::kLinux310) {
    // list_add_tail() in order: head <-> nodes[0] <-> ... <-> nodes[n-1] <-> head.
    std::vector<uint64_t> ring{head};
    ring.insert(ring.end(), nodes.begin(), nodes.end());
    for (size_t i = 0; i < ring.size(); ++i) {
      mem.put<uint64_t>(ring[i] + off("list_head", "next"), ring[(i + 1) % ring.size()]);
      mem.put<uint64_t>(ring[i] + off("list_head", "prev"), ring[(i + ring.size() - 1) % ring.size()]);
    }
    return;
  }
  mem.put<uint64_t>(head, nodes.empty() ? 0 : nodes[0]);
  for (size_t i = 0; i < nodes.size(); ++i)
    mem.put<uint64_t>(nodes[i] + off("llist_node", "next"), i + 1 < nodes.size() ? nodes[i + 1] : 0);
}

void SyntheticKernel::set_cfd_mask(uint32_t cpu, const std::vector<uint32_t>& targets) {
  uint64_t word = 0;
  for (uint32_t t : targets) word |= 1ULL << t;
  uint64_t cfd = percpu("cfd_data", cpu);
  if (layout == Layout::kLinux61) {
    uint64_t mask = 0;
    read(cfd + off("call_function_data", "cpumask"), &mask, 8).ok();
    mem.put<uint64_t>(mask, word);
  } else {
    mem.put<uint64_t>(cfd + off("call_function_data", "cpumask"), word);
  }
}

uint64_t SyntheticKernel::cfd_csd(uint32_t cpu, uint32_t target) const {
  // Each sender CPU has its own alloc_percpu'd cfd_percpu (at 0x4000 + cpu * 0x100 here).
  uint64_t in = layout == Layout::kLinux61 ? off("cfd_percpu", "csd") : 0;
  return 0x4000 + pcpu(target) + in + (cpu * 0x100);  // distinct csd per (sender, target)
}

void SyntheticKernel::init_printk(uint32_t count_bits, uint32_t size_bits) {
  count_bits_ = count_bits;
  size_bits_ = size_bits;
  prb_ = alloc(88);
  descs_ = alloc((1u << count_bits) * 24);
  infos_ = alloc((1u << count_bits) * 88);
  data_ = alloc(1u << size_bits);
  syms_["prb"] = kImage + 0x400;
  mem.put<uint64_t>(kImage + 0x400, prb_);
  mem.put<uint32_t>(prb_ + off("printk_ringbuffer", "desc_ring.count_bits"), count_bits);
  mem.put<uint64_t>(prb_ + off("printk_ringbuffer", "desc_ring.descs"), descs_);
  mem.put<uint64_t>(prb_ + off("printk_ringbuffer", "desc_ring.infos"), infos_);
  mem.put<uint32_t>(prb_ + off("printk_ringbuffer", "text_data_ring.size_bits"), size_bits);
  mem.put<uint64_t>(prb_ + off("printk_ringbuffer", "text_data_ring.data"), data_);
  // Start ids high so that index arithmetic wraps like on a long-running kernel.
  next_id_ = (1ULL << count_bits) * 3 + 5;
  tail_id_ = next_id_;
  mem.put<int64_t>(prb_ + off("printk_ringbuffer", "desc_ring.tail_id"), static_cast<int64_t>(tail_id_));
}

uint64_t SyntheticKernel::printk_desc_addr(uint64_t id) const { return descs_ + (id & ((1ULL << count_bits_) - 1)) * 24; }

uint64_t SyntheticKernel::printk(const std::string& text, uint64_t ts_nsec, uint8_t level) {
  const uint64_t count = 1ULL << count_bits_, dsize = 1ULL << size_bits_;
  const uint64_t id = next_id_++;
  const uint64_t seq = next_seq_++;
  const uint64_t size = (8 + text.size() + 7) & ~7ULL;
  const uint64_t begin = head_lpos_;
  uint64_t next = begin + size;
  const bool wraps = (begin >> size_bits_) != (next >> size_bits_);
  if (wraps) next = ((next >> size_bits_) << size_bits_) + size;  // stored at the ring's start
  // Records whose data is overwritten, or whose descriptor slot is taken, become reusable
  // (what prb's data_push_tail/desc_push_tail do).
  while (!live_.empty() && (next - live_.front().second > dsize || live_.size() >= count)) {
    mem.put<int64_t>(printk_desc_addr(live_.front().first), static_cast<int64_t>((3ULL << 62) | live_.front().first));
    live_.erase(live_.begin());
  }
  mem.put<uint64_t>(data_ + (begin & (dsize - 1)), id);  // the kernel writes the id at begin too
  const uint64_t blk = wraps ? 0 : (begin & (dsize - 1));
  mem.put<uint64_t>(data_ + blk, id);
  mem.write(data_ + blk + 8, text.data(), text.size());
  head_lpos_ = next;
  live_.push_back({id, begin});
  const uint64_t d = printk_desc_addr(id);
  mem.put<int64_t>(d + off("prb_desc", "state_var"), static_cast<int64_t>((2ULL << 62) | id));  // finalized
  mem.put<uint64_t>(d + off("prb_desc", "text_blk_lpos.begin"), begin);
  mem.put<uint64_t>(d + off("prb_desc", "text_blk_lpos.next"), next);
  const uint64_t inf = infos_ + (id & (count - 1)) * 88;
  mem.put<uint64_t>(inf + off("printk_info", "seq"), seq);
  mem.put<uint64_t>(inf + off("printk_info", "ts_nsec"), ts_nsec);
  mem.put<uint16_t>(inf + off("printk_info", "text_len"), static_cast<uint16_t>(text.size()));
  mem.put<uint8_t>(inf + off("printk_info", "facility"), 0);
  mem.put<uint8_t>(inf + off("printk_info", "flags"), static_cast<uint8_t>(2 | (level << 5)));  // LOG_NEWLINE
  mem.put<int64_t>(prb_ + off("printk_ringbuffer", "desc_ring.head_id"), static_cast<int64_t>(id));
  mem.put<int64_t>(prb_ + off("printk_ringbuffer", "desc_ring.tail_id"), static_cast<int64_t>(live_.front().first));
  return seq;
}

uint32_t SyntheticKernel::log_record_header() const {
  return static_cast<uint32_t>(btf_type_size(btf_, layout == Layout::kLinux310 ? "log" : "printk_log").value());
}

void SyntheticKernel::init_log_buf(uint32_t len) {
  lb_len_ = len;
  lb_buf_ = alloc(len);
  syms_["log_buf"] = kImage + 0x500;
  syms_["log_buf_len"] = kImage + 0x508;
  syms_["log_first_idx"] = kImage + 0x510;
  syms_["log_next_idx"] = kImage + 0x518;
  syms_["log_first_seq"] = kImage + 0x520;
  syms_["log_next_seq"] = kImage + 0x528;
  mem.put<uint64_t>(kImage + 0x500, lb_buf_);
  mem.put<uint32_t>(kImage + 0x508, len);
  lb_publish();
}

void SyntheticKernel::lb_publish() {
  mem.put<uint32_t>(kImage + 0x510, lb_first_idx_);
  mem.put<uint32_t>(kImage + 0x518, lb_next_idx_);
  mem.put<uint64_t>(kImage + 0x520, lb_first_seq_);
  mem.put<uint64_t>(kImage + 0x528, lb_next_seq_);
}

// log_next() of kernel/printk.c (3.10): a zero length sends the reader to the record at 0.
uint32_t SyntheticKernel::lb_next(uint32_t idx) {
  const char* type = layout == Layout::kLinux310 ? "log" : "printk_log";
  uint16_t len = 0;
  (void)read(lb_buf_ + idx + off(type, "len"), &len, 2);
  if (len != 0) return idx + len;
  (void)read(lb_buf_ + off(type, "len"), &len, 2);  // wrap marker: the record after the one at 0
  return len;
}

// log_store() of kernel/printk.c (3.10), LOG_ALIGN 4 (x86: efficient unaligned access).
uint64_t SyntheticKernel::log_printk(const std::string& text, uint64_t ts_nsec, uint8_t level) {
  const char* type = layout == Layout::kLinux310 ? "log" : "printk_log";
  const uint32_t hdr = log_record_header();
  uint32_t size = hdr + static_cast<uint32_t>(text.size());
  size += (0u - size) & 3u;
  while (lb_first_seq_ < lb_next_seq_) {
    const uint32_t free = lb_next_idx_ > lb_first_idx_ ? std::max(lb_len_ - lb_next_idx_, lb_first_idx_)
                                                       : lb_first_idx_ - lb_next_idx_;
    if (free > size + hdr) break;
    lb_first_idx_ = lb_next(lb_first_idx_);  // drop the oldest record
    ++lb_first_seq_;
  }
  if (lb_next_idx_ + size + hdr >= lb_len_) {
    std::vector<uint8_t> zero(hdr, 0);
    mem.write(lb_buf_ + lb_next_idx_, zero.data(), hdr);  // the wrap marker
    lb_next_idx_ = 0;
  }
  const uint64_t m = lb_buf_ + lb_next_idx_;
  std::vector<uint8_t> zero(size, 0);
  mem.write(m, zero.data(), size);
  mem.write(m + hdr, text.data(), text.size());
  mem.put<uint64_t>(m + off(type, "ts_nsec"), ts_nsec);
  mem.put<uint16_t>(m + off(type, "len"), static_cast<uint16_t>(size));
  mem.put<uint16_t>(m + off(type, "text_len"), static_cast<uint16_t>(text.size()));
  mem.put<uint8_t>(m + off(type, "facility"), 0);
  mem.put<uint8_t>(m + off(type, "flags"), static_cast<uint8_t>(2 | (level << 5)));  // LOG_NEWLINE
  lb_next_idx_ += size;
  const uint64_t seq = lb_next_seq_++;
  lb_publish();
  return seq;
}

}  // namespace stallmon::introspect::testing
