// SPDX-License-Identifier: Apache-2.0
// Kernel-virtual reads on top of guest-physical memory: an x86-64 page-table walker (4- and
// 5-level paging, 2 MiB and 1 GiB pages) with fast paths that need no walk for the kernel image
// and the direct map, and a translation cache cleared per snapshot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>

#include "stallmon/base/result.h"
#include "stallmon/introspect/physical_memory.h"

namespace stallmon::introspect {

inline constexpr uint64_t kKernelImageVaBase = 0xffffffff80000000ull;  // __START_KERNEL_map
// KERNEL_IMAGE_SIZE without KASLR (512 MiB): the module area may start right after it, so this
// is the safe default window for the image fast path until the image's real extent is known.
inline constexpr uint64_t kKernelImageVaSizeDefault = 512ull << 20;

struct PagingConfig {
  // Guest-physical address of the top-level page table (PGD or P4D-level table for 5-level),
  // i.e. the physical address of init_top_pgt.
  uint64_t top_pgt_pa = 0;
  bool l5 = false;
  // phys_base (NUMBER(phys_base)): kernel image va → pa is va - kKernelImageVaBase + phys_base.
  int64_t phys_base = 0;
  // Kernel virtual addresses translated as image addresses (va - kKernelImageVaBase + phys_base)
  // without a walk: [kernel_image_start, kernel_image_end). Discovery narrows it to
  // [_text, _end) rounded to 2 MiB; addresses outside it are walked (correct, just slower).
  uint64_t kernel_image_start = kKernelImageVaBase;
  uint64_t kernel_image_end = kKernelImageVaBase + kKernelImageVaSizeDefault;
  // page_offset_base (read from the guest: randomized with CONFIG_RANDOMIZE_MEMORY). Unset
  // until known; without it direct-map addresses are translated by walking the page tables.
  std::optional<uint64_t> page_offset_base;
};

// Page-table walk without any fast path or cache (exposed for tests). Returns the
// guest-physical address for `va`, kUnmapped naming `va` for a non-present entry or a
// non-canonical address, kCorrupt for a table entry pointing outside guest RAM.
Result<uint64_t> walk_page_tables(PhysicalMemory& mem, uint64_t top_pgt_pa, bool l5, uint64_t va);

// Not thread-safe (the translation cache is mutable): one KernelMemory per thread, or external
// locking. Cheap to construct.
class KernelMemory {
 public:
  KernelMemory(std::shared_ptr<PhysicalMemory> phys, PagingConfig config);

  // Translates a kernel virtual address: kernel image and direct map (page_offset_base up to
  // the end of guest RAM) by arithmetic (result range-checked against guest RAM), everything else (vmalloc, per-cpu areas, modules) by
  // walking the page tables, cached per 4 KiB page until begin_snapshot().
  Result<uint64_t> translate(uint64_t va);

  // Forgets cached translations. Call once per snapshot: page tables for vmalloc/percpu areas
  // can change while the guest runs.
  void begin_snapshot();

  // Reads `len` bytes at kernel virtual `va`, crossing pages as needed: all or an error naming
  // the first address that failed.
  Result<void> read(uint64_t va, void* buf, size_t len);
  Result<uint8_t> read_u8(uint64_t va);
  Result<uint16_t> read_u16(uint64_t va);
  Result<uint32_t> read_u32(uint64_t va);
  Result<uint64_t> read_u64(uint64_t va);
  template <typename T>
  Result<T> read_value(uint64_t va) {
    T v{};
    STALLMON_TRY_VOID(read(va, &v, sizeof v));
    return v;
  }
  // Reads a NUL-terminated string of at most `max_len` bytes (without the NUL). A string not
  // terminated within `max_len` is returned truncated to `max_len` (not an error).
  Result<std::string> read_cstring(uint64_t va, size_t max_len);

  // Batch of virtual reads: translates every request, then issues ONE physical read_batch
  // (one process_vm_readv per 1024 pieces on a live qemu). Sets `ok` per request; returns the
  // first error, if any. This is the fast path for snapshots.
  Result<void> read_batch(std::span<ReadRequest> requests);

  PhysicalMemory& physical() { return *phys_; }
  const std::shared_ptr<PhysicalMemory>& physical_ptr() const { return phys_; }
  const PagingConfig& config() const { return config_; }
  void set_page_offset_base(uint64_t base) { config_.page_offset_base = base; }
  void set_kernel_image_window(uint64_t start, uint64_t end) {
    config_.kernel_image_start = start;
    config_.kernel_image_end = end;
  }

  // Statistics since construction (for tests and benchmarks).
  uint64_t page_walks() const { return walks_; }

 private:
  uint64_t direct_map_limit() const;
  std::shared_ptr<PhysicalMemory> phys_;
  PagingConfig config_;
  std::unordered_map<uint64_t, uint64_t> cache_;  // va page → pa page (4 KiB granularity)
  uint64_t walks_ = 0;
};

}  // namespace stallmon::introspect
