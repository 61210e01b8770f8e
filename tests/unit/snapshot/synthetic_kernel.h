// SPDX-License-Identifier: Apache-2.0
// A synthetic guest kernel for the snapshot readers' unit tests: sparse "kernel virtual" memory,
// a symbol table, and real BTF built with libbpf's writer API (btf__add_struct/btf__add_field),
// so the readers resolve every offset exactly as on a real guest. Three layouts: a 6.1-like one
// (__call_single_node, cfd_percpu, off-stack cpumasks, __state, ttwu_pending), a 4.x-like one
// (csd {llist; func; info; flags}, cfd->csd, inline cpumask, task->state) and a 3.10-like one
// (CentOS 7, where seed case 1 happened: call_single_queue a list_head + lock, csd {list_head
// list; func; info; u16 flags}, cfd->csd, cpu_online_bits, no panic_cpu), each built from the
// definitions in those kernels' sources (cited where the BTF is built).
#pragma once

#include <bpf/btf.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "stallmon/introspect/snapshot_access.h"
#include "stallmon/introspect/snapshot_btf.h"

namespace stallmon::introspect::testing {

// Sparse memory: regions that do not overlap; a read must lie inside one region.
class SparseMemory {
 public:
  void map(uint64_t addr, size_t len) { regions_[addr] = std::vector<uint8_t>(len, 0); }
  uint8_t* find(uint64_t addr, size_t len) {
    auto it = regions_.upper_bound(addr);
    if (it == regions_.begin()) return nullptr;
    --it;
    if (addr < it->first) return nullptr;
    uint64_t off = addr - it->first;
    if (off > it->second.size() || len > it->second.size() - off) return nullptr;
    return it->second.data() + off;
  }
  void write(uint64_t addr, const void* p, size_t len) {
    uint8_t* d = find(addr, len);
    if (!d) throw std::runtime_error("test bug: write outside mapped memory");
    std::memcpy(d, p, len);
  }
  template <typename T>
  void put(uint64_t addr, T v) { write(addr, &v, sizeof v); }
  // Overwrites every byte with pseudo-random garbage, biased towards values that look like
  // pointers into mapped memory (the hard case for list walks).
  void scribble(uint64_t seed) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
    std::vector<uint64_t> bases;
    for (auto& [base, bytes] : regions_) bases.push_back(base);
    for (auto& [base, bytes] : regions_) {
      for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t v = x;
        switch (x % 4) {
          case 0: v = bases[(x >> 8) % bases.size()] + ((x >> 20) % 0x2000); break;  // near-valid pointer
          case 1: v = x & 0xff; break;
          default: break;
        }
        std::memcpy(bytes.data() + i, &v, 8);
      }
    }
  }

 private:
  std::map<uint64_t, std::vector<uint8_t>> regions_;
};

class SyntheticKernel final : public KernelAccess {
 public:
  enum class Layout { kLinux61, kLegacy, kLinux310 };
  // Per-cpu symbols are offsets; CPU c's copy lives at offset + per_cpu_offset(c).
  static constexpr uint64_t kPercpuBase = 0xffff888010000000ULL;
  static constexpr uint64_t kPercpuStride = 0x100000;
  static constexpr uint64_t kPercpuSize = 0x40000;
  static constexpr uint64_t kImage = 0xffffffff82000000ULL;  // globals
  static constexpr uint64_t kHeap = 0xffff888020000000ULL;   // tasks, csds, masks, printk
  static constexpr uint64_t kHeapSize = 0x200000;
  static constexpr uint64_t kText = 0xffffffff81000000ULL;   // functions

  SyntheticKernel(uint32_t ncpus, Layout layout);
  ~SyntheticKernel() override { btf__free(btf_); }

  // KernelAccess
  Result<void> read(uint64_t va, void* buf, size_t len) override {
    ++reads;
    const uint8_t* p = mem.find(va, len);
    if (!p) return Error(ErrorCode::kUnmapped, "unmapped", va);
    std::memcpy(buf, p, len);
    return Ok();
  }
  Result<void> read_batch(std::span<ReadRequest> requests) override {
    ++batches;
    return KernelAccess::read_batch(requests);
  }
  Result<uint64_t> symbol(std::string_view name) const override {
    auto it = syms_.find(std::string(name));
    if (it == syms_.end()) return Error(ErrorCode::kNotFound, "symbol " + std::string(name));
    return it->second;
  }
  std::string symbolize(uint64_t address) const override {
    auto it = funcs_.find(address);
    return it == funcs_.end() ? std::string() : it->second;
  }
  // Functions made by func() are 0x100 bytes long.
  std::optional<SymbolSpan> symbol_at(uint64_t address) const override {
    auto it = funcs_.upper_bound(address);
    if (it == funcs_.begin()) return std::nullopt;
    --it;
    if (address - it->first >= 0x100) return std::nullopt;
    return SymbolSpan{it->second, it->first, 0x100};
  }
  Result<MemberLayout> member(std::string_view type, std::string_view path) const override {
    return btf_member_layout(btf_, type, path);
  }
  Result<uint64_t> type_size(std::string_view type) const override { return btf_type_size(btf_, type); }
  Result<uint64_t> variable_size(std::string_view name) const override {
    auto it = var_sizes.find(std::string(name));
    if (it == var_sizes.end()) return KernelAccess::variable_size(name);
    return it->second;
  }
  std::map<std::string, uint64_t> var_sizes;  // per-cpu variable sizes (BTF VARs) for tests

  // --- builders ---
  uint64_t off(std::string_view type, std::string_view path) const {
    auto m = btf_member_layout(btf_, type, path);
    if (!m) throw std::runtime_error("test bug: " + m.error().message);
    return m->offset();
  }
  uint64_t percpu(std::string_view sym, uint32_t cpu) const { return syms_.at(std::string(sym)) + pcpu(cpu); }
  uint64_t pcpu(uint32_t cpu) const { return kPercpuBase + cpu * kPercpuStride; }
  uint64_t alloc(size_t len) {
    uint64_t a = heap_next_;
    heap_next_ += (len + 63) & ~63ULL;
    if (heap_next_ > kHeap + kHeapSize) throw std::runtime_error("test heap exhausted");
    return a;
  }
  uint64_t func(const std::string& name) {
    uint64_t a = kText + 0x100 * (funcs_.size() + 1);
    funcs_[a] = name;
    return a;
  }
  void add_symbol(const std::string& name, uint64_t addr) { syms_[name] = addr; }
  void remove_symbol(const std::string& name) { syms_.erase(name); }

  // A task_struct with pid and comm.
  uint64_t task(int32_t pid, const std::string& comm, uint32_t state = 0);
  // Sets rq fields of `cpu`.
  void set_rq(uint32_t cpu, uint64_t curr, uint64_t idle, uint32_t nr_running, uint32_t h_nr, uint32_t ttwu,
              uint64_t clock);
  // A csd (or irq_work for IRQ_WORK flags) and its llist node address.
  uint64_t csd(uint32_t flags, uint64_t func_addr);
  uint64_t csd_node(uint64_t csd_addr) const;
  uint64_t task_node(uint64_t task_addr) const;
  // Before 5.8 (kLegacy, kLinux310): remote wakeups of `tasks` pending on cpu's rq->wake_list.
  void set_wake_list(uint32_t cpu, const std::vector<uint64_t>& tasks);
  // Links nodes into cpu's call_single_queue in this order (an llist ending in 0, or for
  // kLinux310 a circular list_head through the queue's head).
  uint64_t queue_head(uint32_t cpu) const;  // the address the queue's first pointer lives at
  void set_queue(uint32_t cpu, const std::vector<uint64_t>& nodes);
  // cfd_data of `cpu`: its mask and, for each CPU, the per-target csd's flags/func.
  void set_cfd_mask(uint32_t cpu, const std::vector<uint32_t>& targets);
  uint64_t cfd_csd(uint32_t cpu, uint32_t target) const;
  void set_csd(uint64_t csd_addr, uint32_t flags, uint64_t func_addr);

  // Printk ring: count_bits descriptors, 1 << size_bits bytes of text.
  void init_printk(uint32_t count_bits, uint32_t size_bits);
  // Appends a finalized record, like prb_reserve + prb_final_commit (descriptor reuse and data
  // wrapping included). Returns its seq.
  uint64_t printk(const std::string& text, uint64_t ts_nsec, uint8_t level = 6);
  uint64_t printk_desc_addr(uint64_t id) const;
  // printk before 5.10 (kLegacy, kLinux310): log_buf of `len` bytes and its globals.
  void init_log_buf(uint32_t len);
  // Appends a record like log_store() (old records dropped for room, a zero-length header
  // where the next record does not fit before the end). Returns its seq.
  uint64_t log_printk(const std::string& text, uint64_t ts_nsec, uint8_t level = 6);
  uint64_t log_buf_addr() const { return lb_buf_; }
  uint32_t log_record_header() const;  // sizeof(struct log) / sizeof(struct printk_log)

  SparseMemory mem;
  const Layout layout;
  const uint32_t ncpus;
  mutable uint64_t reads = 0;
  uint64_t batches = 0;
  struct btf* btf() const { return btf_; }
  // The csd struct's name: call_single_data before 4.14, __call_single_data after.
  const char* csd_type() const { return layout == Layout::kLinux310 ? "call_single_data" : "__call_single_data"; }

 private:
  void build_btf();
  struct btf* btf_ = nullptr;
  std::map<std::string, uint64_t> syms_;
  std::map<uint64_t, std::string> funcs_;
  uint64_t heap_next_ = kHeap;
  // printk state
  uint64_t prb_ = 0, descs_ = 0, infos_ = 0, data_ = 0;
  uint32_t count_bits_ = 0, size_bits_ = 0;
  uint64_t next_id_ = 0, next_seq_ = 0, head_lpos_ = 0, tail_id_ = 0;
  std::vector<std::pair<uint64_t, uint64_t>> live_;  // (id, begin lpos) of records with data
  // log_buf state
  uint64_t lb_buf_ = 0, lb_first_seq_ = 0, lb_next_seq_ = 0;
  uint32_t lb_len_ = 0, lb_first_idx_ = 0, lb_next_idx_ = 0;
  uint32_t lb_next(uint32_t idx);
  void lb_publish();
};

}  // namespace stallmon::introspect::testing
