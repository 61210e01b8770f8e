// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/kernel_memory.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

#include "text.h"

namespace stallmon::introspect {
namespace {

constexpr uint64_t kPageSize = 4096;
constexpr uint64_t kPageMask = kPageSize - 1;
constexpr uint64_t kPresent = 1ull << 0;
constexpr uint64_t kPageSizeBit = 1ull << 7;  // PS: 1 GiB at PUD level, 2 MiB at PMD level
// Physical address bits of an entry (bits 12..51). The NX bit (63), protection keys (59..62)
// and software bits are outside it. (An SME/SEV encryption bit inside it would need masking
// with sme_me_mask; KVM guests without SEV do not set it.)
constexpr uint64_t kAddrMask = 0x000ffffffffff000ull;
constexpr size_t kMaxCacheEntries = 1u << 16;

using detail::hex;

Error unmapped_va(uint64_t va, const char* why) {
  return Error(ErrorCode::kUnmapped, "kernel address " + hex(va) + ": " + why, va);
}

bool canonical(uint64_t va, bool l5) {
  int bits = l5 ? 57 : 48;
  uint64_t top = va >> (bits - 1);
  return top == 0 || top == (~0ull >> (bits - 1));
}

}  // namespace

Result<uint64_t> walk_page_tables(PhysicalMemory& mem, uint64_t top_pgt_pa, bool l5, uint64_t va) {
  if (!canonical(va, l5)) return unmapped_va(va, "not canonical");
  int levels = l5 ? 5 : 4;
  uint64_t table = top_pgt_pa & kAddrMask;
  static const char* const kNames[] = {"PTE", "PMD", "PUD", "P4D", "PGD"};
  for (int level = levels - 1; level >= 0; --level) {
    int shift = 12 + 9 * level;
    uint64_t index = (va >> shift) & 511;
    uint64_t entry = 0;
    auto r = mem.read(table + index * 8, &entry, sizeof entry);
    if (!r.ok()) {
      return Error(ErrorCode::kCorrupt,
                   "kernel address " + hex(va) + ": page table at " + hex(table) + " outside guest RAM", va);
    }
    const char* name = kNames[level == levels - 1 ? 4 : level];
    if (!(entry & kPresent)) {
      char why[48];
      std::snprintf(why, sizeof why, "%s entry not present", name);
      return unmapped_va(va, why);
    }
    if ((level == 1 || level == 2) && (entry & kPageSizeBit)) {
      uint64_t page_mask = (1ull << shift) - 1;
      return ((entry & kAddrMask) & ~page_mask) | (va & page_mask);
    }
    table = entry & kAddrMask;
  }
  return table | (va & kPageMask);
}

KernelMemory::KernelMemory(std::shared_ptr<PhysicalMemory> phys, PagingConfig config)
    : phys_(std::move(phys)), config_(config) {}

void KernelMemory::begin_snapshot() { cache_.clear(); }

uint64_t KernelMemory::direct_map_limit() const {
  const auto& r = phys_->ranges();
  return r.empty() ? 0 : r.back().end();
}

Result<uint64_t> KernelMemory::translate(uint64_t va) {
  // Kernel image: a fixed linear mapping (__pa_symbol).
  if (va >= config_.kernel_image_start && va < config_.kernel_image_end) {
    uint64_t pa = va - kKernelImageVaBase + static_cast<uint64_t>(config_.phys_base);
    if (!phys_->contains(pa, 1)) {
      return Error(ErrorCode::kUnmapped, "kernel image address " + hex(va) + " maps outside guest RAM", va);
    }
    return pa;
  }
  // Direct map (__pa): va - page_offset_base. The window is bounded by the end of guest RAM,
  // not by the architectural maximum: with CONFIG_RANDOMIZE_MEMORY the vmalloc area starts
  // right after the direct map's actual size (RAM + padding), far below page_offset_base+64 TiB.
  if (config_.page_offset_base && va >= *config_.page_offset_base &&
      va - *config_.page_offset_base < direct_map_limit()) {
    uint64_t pa = va - *config_.page_offset_base;
    if (!phys_->contains(pa, 1)) {
      return Error(ErrorCode::kUnmapped, "direct-map address " + hex(va) + " is outside guest RAM", va);
    }
    return pa;
  }
  uint64_t page = va & ~kPageMask;
  if (auto it = cache_.find(page); it != cache_.end()) return it->second | (va & kPageMask);
  ++walks_;
  STALLMON_TRY(uint64_t pa, walk_page_tables(*phys_, config_.top_pgt_pa, config_.l5, page));
  if (cache_.size() >= kMaxCacheEntries) cache_.clear();  // bound memory on hostile walks
  cache_.emplace(page, pa);
  return pa | (va & kPageMask);
}

Result<void> KernelMemory::read(uint64_t va, void* buf, size_t len) {
  ReadRequest r{va, buf, len, false};
  return read_batch(std::span<ReadRequest>(&r, 1));
}

Result<uint8_t> KernelMemory::read_u8(uint64_t va) { return read_value<uint8_t>(va); }
Result<uint16_t> KernelMemory::read_u16(uint64_t va) { return read_value<uint16_t>(va); }
Result<uint32_t> KernelMemory::read_u32(uint64_t va) { return read_value<uint32_t>(va); }
Result<uint64_t> KernelMemory::read_u64(uint64_t va) { return read_value<uint64_t>(va); }

Result<std::string> KernelMemory::read_cstring(uint64_t va, size_t max_len) {
  std::string out;
  // Read up to the end of each page so a short string near an unmapped page still works.
  while (out.size() < max_len) {
    size_t n = std::min<uint64_t>(max_len - out.size(), kPageSize - (va & kPageMask));
    n = std::min<size_t>(n, 256);
    char buf[256];
    STALLMON_TRY_VOID(read(va, buf, n));
    const void* nul = std::memchr(buf, 0, n);
    if (nul) {
      out.append(buf, static_cast<const char*>(nul) - buf);
      return out;
    }
    out.append(buf, n);
    va += n;
  }
  return out;
}

Result<void> KernelMemory::read_batch(std::span<ReadRequest> requests) {
  // Translate every request into physical pieces (contiguous in guest-physical memory), then
  // issue one physical batch.
  std::vector<ReadRequest> phys;
  std::vector<uint32_t> owner;
  phys.reserve(requests.size());
  owner.reserve(requests.size());
  std::optional<Error> first;
  for (size_t i = 0; i < requests.size(); ++i) {
    ReadRequest& r = requests[i];
    r.ok = true;
    uint64_t va = r.addr;
    auto* dst = static_cast<uint8_t*>(r.buf);
    size_t left = r.len;
    size_t first_piece = phys.size();
    while (left > 0) {
      auto pa = translate(va);
      if (!pa.ok()) {
        r.ok = false;
        if (!first) first = std::move(pa).error();
        phys.resize(first_piece);
        owner.resize(first_piece);
        break;
      }
      // Within one page the mapping is contiguous; fast-path regions are contiguous further,
      // but splitting at pages keeps this simple and the batch merges nothing anyway.
      size_t n = std::min<uint64_t>(left, kPageSize - (va & kPageMask));
      if (!phys.empty() && phys.size() > first_piece && phys.back().addr + phys.back().len == *pa) {
        phys.back().len += n;  // physically contiguous: extend the previous piece
      } else {
        phys.push_back(ReadRequest{*pa, dst, n, false});
        owner.push_back(static_cast<uint32_t>(i));
      }
      dst += n;
      va += n;
      left -= n;
    }
  }
  if (!phys.empty()) {
    (void)phys_->read_batch(phys);
    for (size_t k = 0; k < phys.size(); ++k) {
      if (phys[k].ok) continue;
      ReadRequest& r = requests[owner[k]];
      if (!r.ok) continue;
      r.ok = false;
      if (!first) {
        // Re-read alone to get the precise error with the virtual address in the message.
        auto e = phys_->read(phys[k].addr, phys[k].buf, phys[k].len);
        Error err = e.ok() ? Error(ErrorCode::kIo, "read failed in batch") : std::move(e).error();
        first = std::move(err).context("reading kernel address " + hex(r.addr));
        first->address = r.addr;
      }
    }
  }
  if (first) return std::move(*first);
  return Ok();
}

}  // namespace stallmon::introspect
