// SPDX-License-Identifier: Apache-2.0
// A synthetic x86-64 guest in guest-PHYSICAL memory, for testing discovery end to end: real
// page tables (kernel image in 2 MiB pages, direct map in 1 GiB pages, per-cpu areas in 4 KiB
// vmalloc pages; 4- or 5-level), a VMCOREINFO note at a page start, kallsyms tables encoded the
// way scripts/kallsyms does (token compression, base-relative offsets, absolute per-cpu
// symbols, 2-byte lengths), and BTF written with libbpf. Also used by the benchmarks.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "stallmon/introspect/physical_memory.h"
#include "stallmon/introspect/symbols.h"

struct btf;

namespace stallmon::introspect::fake {

struct FakeGuestOptions {
  uint64_t ram_size = 64ull << 20;  // RAM at guest-physical 0
  bool l5 = false;
  uint64_t kaslr_offset = 0x2e00000;  // KERNELOFFSET: _text = 0xffffffff81000000 + this
  int64_t phys_base = -0x1c00000;     // NUMBER(phys_base): negative, as KASLR can make it
  uint64_t page_offset_base = 0xffff9d8000000000ull;  // l5 default below if l5 and unchanged
  uint32_t nr_cpus = 4;
  uint64_t note_gpa = 0x1300000;      // 19 MiB, where a 512 MiB Debian guest had it
  std::string osrelease = "6.1.0-56-amd64";
  std::string build_id = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";
  uint32_t filler_symbols = 2000;     // realistic volume for kallsyms
  bool absolute_percpu = true;        // CONFIG_KALLSYMS_ABSOLUTE_PERCPU (x86-64 SMP before 6.15)
  bool vmcoreinfo_image_size = true;  // write NUMBER(KERNEL_IMAGE_SIZE)
  // Kernels before 5.9 write no BUILD-ID line, before 6.0 no kallsyms SYMBOL() lines (the .notes
  // section, __start_notes..__stop_notes, always holds build_id as a GNU note).
  bool vmcoreinfo_build_id = true;
  bool vmcoreinfo_kallsyms = true;
};

class FakeGuest {
 public:
  static constexpr uint64_t kImageBase = 0xffffffff80000000ull;
  static constexpr uint64_t kTextBase = 0xffffffff81000000ull;
  static constexpr uint64_t kVmallocBase = 0xffffc90000100000ull;
  static constexpr uint64_t kPercpuAreaSize = 0x4000;  // 4 pages per CPU

  explicit FakeGuest(FakeGuestOptions options = {});
  ~FakeGuest();

  const FakeGuestOptions& options() const { return opt_; }
  std::shared_ptr<RawImageMemory> memory() const { return mem_; }

  uint64_t text_va() const { return kTextBase + opt_.kaslr_offset; }
  uint64_t image_pa(uint64_t va) const { return va - kImageBase + static_cast<uint64_t>(opt_.phys_base); }
  uint64_t page_offset_base() const { return pob_; }
  uint64_t top_pgt_va() const { return top_pgt_va_; }
  uint64_t top_pgt_pa() const { return image_pa(top_pgt_va_); }
  uint64_t percpu_offset(uint32_t cpu) const { return percpu_offsets_.at(cpu); }

  // Everything the test wrote: name → (address, type). Per-cpu symbols are offsets.
  const std::vector<Symbol>& symbols() const { return symbols_; }
  uint64_t symbol(const std::string& name) const;
  const std::string& vmcoreinfo_text() const { return vmcoreinfo_; }
  const std::vector<uint8_t>& btf_bytes() const { return btf_bytes_; }
  // The BTF offsets the fake uses (what Types must report).
  static constexpr uint64_t kRqNrRunning = 0x4, kRqCurr = 0x48, kRqSize = 0x180;
  static constexpr uint64_t kTaskState = 0x18, kTaskPid = 0x5a8, kTaskComm = 0x738, kTaskSize = 0x1000;

  // Writes through the fake's own view of its mappings (for corrupting things in tests).
  void write_va(uint64_t va, const void* data, size_t len);
  template <typename T>
  void put_va(uint64_t va, T v) { write_va(va, &v, sizeof v); }
  void write_pa(uint64_t pa, const void* data, size_t len);

  // kallsyms encoding, exposed for decoder tests and the fuzzer seed.
  struct EncodedKallsyms {
    std::vector<uint8_t> names, token_table;
    std::vector<uint16_t> token_index;
    std::vector<int32_t> offsets;
    uint64_t relative_base = 0;
  };
  static EncodedKallsyms encode_kallsyms(const std::vector<Symbol>& symbols, uint64_t relative_base,
                                         bool absolute_percpu);
  // Builds raw BTF (libbpf writer) with rq, task_struct, csd types and a .data..percpu DATASEC.
  static std::vector<uint8_t> build_btf();

 private:
  uint64_t alloc_image(uint64_t size, uint64_t align = 64);  // kernel data, returns va
  uint64_t alloc_page_pa();                                  // a zeroed 4 KiB page
  void map_4k(uint64_t va, uint64_t pa);
  uint64_t table_for(uint64_t va, int stop_level);           // walks/creates tables
  void add_symbol(const std::string& name, char type, uint64_t addr);
  uint64_t translate(uint64_t va) const;

  FakeGuestOptions opt_;
  std::shared_ptr<RawImageMemory> mem_;
  uint64_t pob_ = 0;
  uint64_t image_next_ = 0, image_end_ = 0;
  uint64_t phys_next_ = 0;
  uint64_t top_pgt_va_ = 0;
  std::map<uint64_t, uint64_t> small_pages_;  // va page → pa page
  std::vector<uint64_t> percpu_offsets_;
  std::vector<Symbol> symbols_;
  std::string vmcoreinfo_;
  std::vector<uint8_t> btf_bytes_;
};

// One ELF note as the kernel lays them out (linux/elfnote.h): namesz (with the NUL), descsz,
// type, then the name and the description, each padded to 4 bytes.
std::vector<uint8_t> make_elf_note(std::string_view name, uint32_t type, std::span<const uint8_t> desc);
// A VMCOREINFO ELF note (name "VMCOREINFO", type 0) for `text`.
std::vector<uint8_t> make_vmcoreinfo_note(const std::string& text);

}  // namespace stallmon::introspect::fake
