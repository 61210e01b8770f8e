// SPDX-License-Identifier: Apache-2.0
// VMCOREINFO: the kernel's self-description (kernel/crash_core.c, later kernel/vmcore_info.c),
// a text of KEY=VALUE lines in an ELF note that sits at the start of a page of guest RAM.
// Finding it by scanning RAM needs nothing from QEMU and never stops the guest.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "stallmon/base/result.h"
#include "stallmon/introspect/physical_memory.h"

namespace stallmon::introspect {

struct VmcoreInfo {
  std::string text;                            // the note's description text, verbatim
  std::map<std::string, std::string, std::less<>> entries;  // every KEY=VALUE line

  std::string osrelease;                       // OSRELEASE (required)
  std::string build_id;                        // BUILD-ID (hex), empty if absent
  uint64_t page_size = 4096;                   // PAGESIZE
  uint64_t kernel_offset = 0;                  // KERNELOFFSET (KASLR slide), 0 if absent
  int64_t phys_base = 0;                       // NUMBER(phys_base), printed signed
  uint64_t top_pgt_va = 0;                     // SYMBOL(init_top_pgt), else SYMBOL(swapper_pg_dir)
  bool pgtable_l5 = false;                     // NUMBER(pgtable_l5_enabled)

  // Where the note header was found (guest-physical), when it came from a RAM scan.
  std::optional<uint64_t> note_gpa;

  // SYMBOL(name)=hex → address; kNotFound if absent, kCorrupt if malformed.
  Result<uint64_t> symbol(std::string_view name) const;
  // NUMBER(name)=decimal (signed) → value.
  Result<int64_t> number(std::string_view name) const;
  // OFFSET(type.member)=decimal, e.g. offset("printk_info.text_len").
  Result<uint64_t> offset(std::string_view type_dot_member) const;
  // SIZE(type)=decimal.
  Result<uint64_t> size(std::string_view type) const;
  // LENGTH(name)=decimal.
  Result<uint64_t> length(std::string_view name) const;
  // Raw value of KEY, if present.
  std::optional<std::string_view> get(std::string_view key) const;
};

// Parses the description text. Requires OSRELEASE and a top-level page table symbol
// (init_top_pgt or swapper_pg_dir); every other field is optional. Bounded: at most 64 KiB of
// text, keys and values without NUL; malformed numbers of known keys give kCorrupt.
Result<VmcoreInfo> parse_vmcoreinfo(std::string_view text);

// Parses one ELF note (12-byte header: namesz, descsz, type; then "VMCOREINFO\0" padded to 4;
// then the text). `note` may extend past the note's end (e.g. a whole page).
Result<VmcoreInfo> parse_vmcoreinfo_note(std::span<const uint8_t> note);

// The GNU build id (type NT_GNU_BUILD_ID 3, name "GNU") among the ELF notes of a kernel's
// .notes section (__start_notes..__stop_notes), as lowercase hex: the BUILD-ID of kernels whose
// VMCOREINFO has none (before 5.9). Every note's sizes are checked against what is left of
// `notes`; a build id is 1..64 bytes. kNotFound if no note is one.
Result<std::string> gnu_build_id_from_notes(std::span<const uint8_t> notes);

struct VmcoreInfoScanOptions {
  // Bytes per physical read during the scan (rounded to pages). Large reads are what make the
  // scan fast on a live qemu.
  uint64_t chunk_bytes = 8ull << 20;
  // Stop after scanning this many bytes of RAM (0: all of it).
  uint64_t max_bytes = 0;
  // Guest-physical address to scan first (e.g. a previous boot's note address); 0: none.
  uint64_t hint_gpa = 0;
};

// Scans guest RAM page starts (4 KiB steps) in ascending address order for the VMCOREINFO note
// and returns the first one that parses. kNotFound if none. Unreadable chunks are skipped.
Result<VmcoreInfo> find_vmcoreinfo(PhysicalMemory& mem, const VmcoreInfoScanOptions& options = {});

// Every distinct VMCOREINFO note found in RAM, with all the page starts that hold it. Guest
// userspace can plant notes anywhere: which one is the running kernel's is decided by
// Kernel::discover's proof, never by order.
struct VmcoreInfoCandidate {
  VmcoreInfo info;              // note_gpa: the first address (the hint first, then ascending)
  std::vector<uint64_t> gpas;   // every address holding this exact text (at most kMaxCandidateCopies)
};
struct VmcoreInfoCandidates {
  inline static constexpr size_t kMaxDistinct = 64;
  inline static constexpr size_t kMaxCandidateCopies = 4096;
  std::vector<VmcoreInfoCandidate> distinct;  // the hint's note first, then by address
  uint64_t notes_seen = 0;      // every note that parsed, copies included
  uint64_t dropped = 0;         // distinct notes beyond kMaxDistinct (not kept)
  uint64_t bytes_scanned = 0;
};
// Scans all of guest RAM (the hint's page first). kNotFound when no note parses.
Result<VmcoreInfoCandidates> find_vmcoreinfo_candidates(PhysicalMemory& mem, const VmcoreInfoScanOptions& options = {});

// Cheap reboot check: re-reads the note at info.note_gpa and returns true when it still parses
// with the same BUILD-ID, KERNELOFFSET and phys_base. False (not an error) when it changed or
// is gone; an error only when the memory cannot be read at all. Precondition: info.note_gpa set.
Result<bool> vmcoreinfo_still_valid(PhysicalMemory& mem, const VmcoreInfo& info);

}  // namespace stallmon::introspect
