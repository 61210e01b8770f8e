// SPDX-License-Identifier: Apache-2.0
// The guest RAM layout (guest-physical -> host-virtual) derived from what the host already shows,
// without a QEMU monitor command: the domain XML (memory size, backing, NUMA cells, machine type,
// DIMM / virtio-mem devices) tells which RAM blocks exist and where the guest sees them;
// /proc/PID/maps tells where each block is mapped in the qemu process. Pure functions over text,
// unit-tested on made-up inputs; the watcher and stallctl feed them the real ones.
//
// The machine knowledge is QEMU's own x86 layout code (pc_q35.c / pc_piix.c, QEMU 2.x-9.x):
// q35 puts 2 GiB below 4 GiB when the boot RAM is >= 2.75 GiB, else all of it below; i440fx
// puts everything below up to 3.5 GiB, else 3 GiB below; the rest starts at 4 GiB. DIMMs and
// virtio-mem sit at the base libvirt reports in the live XML (<address base=...>).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/introspect/physical_memory.h"
#include "stallmon/introspect/ram_layout.h"

namespace stallmon::libvirt {

// One line of /proc/PID/maps.
struct MapEntry {
  uint64_t start = 0, end = 0;  // [start, end)
  std::string perms;            // "rw-p", "rw-s", ...
  uint64_t offset = 0;
  uint64_t inode = 0;
  std::string path;             // empty for anonymous memory; " (deleted)" removed
  bool deleted = false;
};

// Parses /proc/PID/maps text. Bounded (kLimit past 262144 lines); malformed lines are kCorrupt.
Result<std::vector<MapEntry>> parse_proc_maps(std::string_view text);

enum class RamBacking { kAnonymous, kMemfd, kHugepages, kFile };
const char* to_string(RamBacking backing);

// One RAM block the guest has: boot RAM (one block, or one per NUMA cell) or a memory device.
struct RamBlockSpec {
  std::string id;       // QEMU memory backend id: "pc.ram", "ram-node0", "memdimm0"
  uint64_t size = 0;    // bytes
  RamBacking backing = RamBacking::kAnonymous;
  bool device = false;  // DIMM / virtio-mem: placed at `base`
  std::string model;    // device model ("dimm", "virtio-mem"); empty for boot RAM
  uint64_t base = 0;    // guest-physical base of a device (0: libvirt has not reported one)
};

// What the live domain XML says about memory.
struct DomainMemorySpec {
  std::string machine;               // e.g. "pc-q35-7.2", "pc-i440fx-7.2"
  uint64_t memory_bytes = 0;         // <memory>: boot RAM plus memory devices
  std::vector<RamBlockSpec> boot;    // in guest-physical order (NUMA cell order)
  std::vector<RamBlockSpec> devices; // in XML order
  unsigned vcpus_max = 0;            // <vcpu>N</vcpu>
  unsigned vcpus_current = 0;        // <vcpu current=...>, else == max

  uint64_t boot_bytes() const;
};

// Parses the memory-related parts of a live domain XML (virDomainGetXMLDesc without flags).
// kUnsupported for what this code does not model (an architecture other than x86_64, a machine
// other than q35/i440fx, nvdimm), kCorrupt for malformed XML or inconsistent sizes.
Result<DomainMemorySpec> parse_domain_memory_xml(std::string_view xml);

// Derives the layout: boot RAM split around the PCI hole by the machine's rule, the legacy
// 0xa0000-0xfffff window left out (VGA / BIOS shadow: never RAM the kernel uses), memory
// devices at their base. Each block is found in `maps` by its backing: hugepage/file blocks by
// name (QEMU names the file after the backend id), anonymous and memfd blocks by exact size
// (memfd blocks of equal size in inode = creation order). kNotFound when a block has no mapping;
// kInvalidArgument when anonymous blocks are ambiguous (two mappings of the same size).
// `qemu_cmdline` (NUL-separated, /proc/PID/cmdline) is checked for options that move the
// split (max-ram-below-4g): kUnsupported if present.
Result<std::vector<introspect::RamRange>> derive_ram_layout(const DomainMemorySpec& spec,
                                                            const std::vector<MapEntry>& maps,
                                                            std::string_view qemu_cmdline = {});

// Checks a derived layout against the guest's own memory before it is used: every range's
// first and last page can be read through `memory`, and the first page of low RAM holds what
// firmware leaves there (a real-mode interrupt vector table pointing into the BIOS segments,
// or, for UEFI guests, at least non-zero data). Returns a short description of what was
// checked. The kernel-level proof (VMCOREINFO found through the layout and confirmed by the
// running kernel) is done by the core's discovery.
Result<std::string> validate_ram_layout(introspect::PhysicalMemory& memory,
                                        const std::vector<introspect::RamRange>& ranges);

}  // namespace stallmon::libvirt
