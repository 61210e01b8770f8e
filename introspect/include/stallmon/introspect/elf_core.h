// SPDX-License-Identifier: Apache-2.0
// Writes guest-physical memory as an ELF core (ET_CORE, one PT_LOAD per RAM range with
// p_paddr = guest-physical address and p_vaddr = 0, plus a VMCOREINFO PT_NOTE), readable by
// ElfCoreMemory, crash and drgn. Works on a live qemu without QEMU's help (virsh dump hangs
// when a vCPU thread is frozen). It never stops or writes the guest: a caller that wants a
// consistent image SIGSTOPs the qemu process around the call and SIGCONTs it afterwards.
#pragma once

#include <cstdint>
#include <string>

#include "stallmon/base/result.h"
#include "stallmon/introspect/physical_memory.h"

namespace stallmon::introspect {

struct ElfCoreWriteOptions {
  // VMCOREINFO text for the PT_NOTE (e.g. VmcoreInfo::text); empty: no note.
  std::string vmcoreinfo_text;
  // Bytes copied per read.
  uint64_t chunk_bytes = 4ull << 20;
};

// Writes `mem`'s ranges to `path` (created or truncated, mode 0600) as a sparse file: all-zero
// pages are holes. Returns the size of the core's contents (holes included).
// On error the partial file is removed.
Result<uint64_t> write_elf_core(PhysicalMemory& mem, const std::string& path,
                                const ElfCoreWriteOptions& options = {});

}  // namespace stallmon::introspect
