// SPDX-License-Identifier: Apache-2.0
// A discovered guest kernel: VMCOREINFO + kernel-virtual memory + symbols + types, from nothing
// but guest-physical memory. This is the entry point the kernel readers (snapshot) build on.
//
//   auto mem = QemuProcessMemory::create(pid, ram);             // or ElfCoreMemory::open(path)
//   STALLMON_TRY(auto kernel, Kernel::discover(std::move(mem)));
//   kernel->begin_snapshot();
//   STALLMON_TRY(uint64_t rq, kernel->percpu_address("runqueues", cpu));
//   STALLMON_TRY(uint64_t off, kernel->types().member_offset("rq", "nr_running"));
//   STALLMON_TRY(uint32_t n, kernel->memory().read_u32(rq + off));
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/introspect/btf_types.h"
#include "stallmon/introspect/kernel_memory.h"
#include "stallmon/introspect/memory_budget.h"
#include "stallmon/introspect/physical_memory.h"
#include "stallmon/introspect/symbols.h"
#include "stallmon/introspect/vmcoreinfo.h"

namespace stallmon::introspect {

struct DiscoverOptions {
  VmcoreInfoScanOptions scan;
  // Skip the RAM scan and use this VMCOREINFO (e.g. ElfCoreMemory::vmcoreinfo_note() parsed,
  // or a previous discovery of the same boot). When unset and the memory is an ElfCoreMemory
  // with a VMCOREINFO note, that note is used.
  std::optional<VmcoreInfo> vmcoreinfo;
  // Optional symbol sources used instead of kallsyms from guest memory (vmlinux takes
  // precedence, then System.map). Link-time addresses are relocated by KERNELOFFSET.
  std::string vmlinux_path;
  std::string system_map_path;
  // Optional BTF source instead of guest memory (raw BTF file or ELF with .BTF).
  std::string btf_path;
  // Types for guests without BTF (type_profile.h). Types come from the first of: btf_path;
  // profile_path (a profile file; its BUILD-ID must equal the guest's); BTF in guest memory
  // (unless ignore_guest_btf); profile_dir/<BUILD-ID>.profile; the vmlinux with the guest's
  // BUILD-ID under debug_dir (.build-id/xx/yyyy.debug, boot/vmlinux-OSRELEASE as Debian's -dbg
  // installs it, lib/modules/OSRELEASE/vmlinux; its DWARF read with libdw and recorded into a
  // profile in memory: ~1 s and ~220 MB peak for Debian 6.1's 633 MB vmlinux). Empty strings skip a step. When none gives types, the error
  // lists why each step failed. When the guest's kallsyms cannot be read or decoded and no
  // vmlinux/System.map was given, profile_dir/<BUILD-ID>.System.map gives the symbols.
  std::string profile_path;
  std::string profile_dir;
  std::string debug_dir = "/usr/lib/debug";
  bool ignore_guest_btf = false;
  // Types are needed by every reader; turn off only for symbol-only tools.
  bool load_types = true;
  // Share SymbolTable/Types between guests through a small process-wide, thread-safe cache
  // keyed by a SHA-256 of the bytes read from each guest (kallsyms tables, BTF blob; the
  // file's path for vmlinux/System.map/BTF files). The per-guest validation runs either way.
  bool use_shared_cache = true;
  SymbolLimits limits;
  // The domain's budget: symbols, types and tables read from the guest are charged to it for
  // the Kernel's lifetime (a table shared with another guest is charged to both). null: none.
  std::shared_ptr<MemoryBudget> budget;
  // The guest's vCPU count as the host knows it (libvirt's maximum); nr_cpu_ids above it is
  // cut to it. 0: only kMaxCpus bounds it (tools reading a core file).
  uint32_t max_cpus = 0;
  // VMCOREINFO proof (RAM scan only): the note is accepted when the kernel it describes points
  // to it (vmcoreinfo_note) and, on live memory, its jiffies advance within `clock_wait`
  // (polled: a busy guest answers in milliseconds; an idle tickless guest only when a CPU wakes).
  enum class ClockCheck { kAuto, kAlways, kNever };  // kAuto: when PhysicalMemory::live()
  ClockCheck clock_check = ClockCheck::kAuto;
  std::chrono::milliseconds clock_wait{3000};
};

// What a discovery by RAM scan saw: how many notes, which candidates were rejected and why.
struct DiscoveryReport {
  uint64_t bytes_scanned = 0;
  uint64_t notes_seen = 0;
  uint64_t candidates = 0;                 // distinct notes
  std::vector<std::string> rejected;       // "0x400000: vmcoreinfo_note points to 0x1300000"
  std::optional<uint64_t> accepted_gpa;
};

class Kernel {
 public:
  inline static constexpr uint32_t kMaxCpus = 8192;  // bound on nr_cpu_ids (NR_CPUS max)

  // Finds VMCOREINFO (scan or given), sets up paging (init_top_pgt, phys_base, 4/5 levels,
  // page_offset_base read from the guest), loads symbols (kallsyms) and types (BTF).
  // Errors carry context ("discover: kallsyms: ...").
  // With a RAM scan every candidate note is evaluated (see DiscoverOptions): kNotFound /
  // kCorrupt says why each one was rejected. `report`, when given, is filled either way.
  static Result<std::unique_ptr<Kernel>> discover(std::shared_ptr<PhysicalMemory> mem,
                                                  const DiscoverOptions& options = {},
                                                  DiscoveryReport* report = nullptr);

  const VmcoreInfo& vmcoreinfo() const { return info_; }
  // Not thread-safe (translation cache): use one Kernel per thread or lock around it.
  KernelMemory& memory() { return *kmem_; }
  const SymbolTable& symbols() const { return *symbols_; }
  const std::shared_ptr<const SymbolTable>& symbols_ptr() const { return symbols_; }
  // Precondition: has_types() (true unless DiscoverOptions::load_types was false).
  const Types& types() const { return *types_; }
  bool has_types() const { return types_ != nullptr; }
  const std::shared_ptr<const Types>& types_ptr() const { return types_; }

  // Symbol address by name (kNotFound names the symbol).
  Result<uint64_t> symbol(std::string_view name) const { return symbols_->address(name); }

  // Clears the translation cache. Call at the start of every snapshot of a live guest.
  void begin_snapshot() { kmem_->begin_snapshot(); }

  // nr_cpu_ids (read once, then cached: fixed after boot), cut to DiscoverOptions::max_cpus.
  // kLimit above kMaxCpus, kCorrupt for 0.
  Result<uint32_t> nr_cpu_ids();
  // __per_cpu_offset[0..nr_cpu_ids) (read once, then cached).
  Result<const std::vector<uint64_t>*> per_cpu_offsets();
  // Address of a per-cpu variable on `cpu`: symbol value + __per_cpu_offset[cpu]. kInvalidArgument
  // for cpu >= nr_cpu_ids.
  Result<uint64_t> percpu_address(std::string_view symbol, uint32_t cpu);
  Result<uint64_t> percpu_address(uint64_t symbol_address, uint32_t cpu);
  // CPUs set in a struct cpumask at `va` (first nr_cpu_ids bits), e.g. the symbol
  // __cpu_online_mask or a cfd cpumask. Read fresh every call.
  Result<std::vector<uint32_t>> read_cpumask(uint64_t va);
  Result<std::vector<uint32_t>> online_cpus();

  // Where the running kernel keeps its VMCOREINFO note: the vmcoreinfo_note pointer (a symbol
  // with CONFIG_KALLSYMS_ALL) translated to guest-physical. kNotFound without the symbol.
  Result<uint64_t> vmcoreinfo_note_gpa();
  // jiffies_64 (or jiffies) now.
  Result<uint64_t> jiffies();

  // Cheap check that the guest has not rebooted into another kernel/KASLR layout since
  // discovery (re-reads the VMCOREINFO note). False → discover again.
  Result<bool> still_valid();

 private:
  Kernel() = default;
  // Paging, symbols (shared by content hash), per-guest validation, direct map; no types.
  static Result<std::unique_ptr<Kernel>> build(std::shared_ptr<PhysicalMemory> mem, VmcoreInfo info,
                                               const DiscoverOptions& options);
  Result<void> load_types(const DiscoverOptions& options);
  Result<std::shared_ptr<const Types>> guest_btf_types(const DiscoverOptions& options);
  std::shared_ptr<PhysicalMemory> phys_;
  VmcoreInfo info_;
  std::unique_ptr<KernelMemory> kmem_;
  std::shared_ptr<const SymbolTable> symbols_;
  std::shared_ptr<const Types> types_;
  uint32_t max_cpus_ = 0;
  MemoryCharge symbols_charge_, types_charge_;
  std::optional<uint32_t> nr_cpu_ids_;
  std::vector<uint64_t> per_cpu_offsets_;
};

// Drops every entry of the process-wide SymbolTable/Types cache (tests; memory pressure).
void clear_shared_kernel_cache();

}  // namespace stallmon::introspect
