// SPDX-License-Identifier: Apache-2.0
// Guest-physical memory sources. One small interface (read, read_batch, ranges) with three
// implementations: a live qemu process (process_vm_readv), an ELF core (virsh dump
// --memory-only --format elf, kdump, or write_elf_core()), and a raw image (a file or an
// in-memory buffer; the in-memory variant is the test source shipped with the library).
//
// Everything read through this interface is untrusted guest data. Sources never write guest
// memory and never stop the guest.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/introspect/ram_layout.h"

namespace stallmon::introspect {

// One read of a batch. `addr` is guest-physical for PhysicalMemory::read_batch and
// kernel-virtual for KernelMemory::read_batch. The source sets `ok` per request, so a caller
// can use the requests that succeeded even when the batch as a whole reports an error.
struct ReadRequest {
  uint64_t addr = 0;
  void* buf = nullptr;  // at least `len` writable bytes, owned by the caller
  size_t len = 0;
  bool ok = false;      // out: true when all `len` bytes were read
};

// A guest-physical range that a source can read (RAM, never MMIO).
struct PhysRange {
  uint64_t gpa = 0;
  uint64_t size = 0;
  uint64_t end() const { return gpa + size; }
};

class PhysicalMemory {
 public:
  virtual ~PhysicalMemory() = default;

  // Reads exactly `len` bytes at guest-physical `gpa` into `buf`: all or an error. A read that
  // is not entirely inside ranges() fails with kUnmapped naming the first bad address; a
  // failing system call gives kIo (EFAULT, ESRCH when the qemu process is gone) with the
  // address. `len` 0 succeeds. Thread-safe for all sources in this library.
  virtual Result<void> read(uint64_t gpa, void* buf, size_t len) = 0;

  // Reads every request, setting each one's `ok`. Returns Ok when all succeeded, otherwise the
  // error of the first failed request (the others were still attempted). The default loops
  // over read(); QemuProcessMemory overrides it with one process_vm_readv per 1024 iovecs.
  // Requests may overlap and may be in any order.
  virtual Result<void> read_batch(std::span<ReadRequest> requests);

  // The readable guest-physical ranges, sorted by address, non-overlapping.
  virtual const std::vector<PhysRange>& ranges() const = 0;

  // Total bytes in ranges().
  uint64_t total_size() const;
  // Whether [gpa, gpa+len) lies inside one of ranges() (len 0: whether gpa is inside).
  bool contains(uint64_t gpa, uint64_t len) const;
  // Whether the memory belongs to a running guest (its clocks advance between two reads).
  virtual bool live() const { return false; }
};

// Live guest RAM of a qemu process, read with process_vm_readv (needs ptrace permission on the
// process: root or same uid with ptrace_scope 0). Never stops or writes the process.
//
// The process is held by a pidfd opened in create(): process_vm_readv can only name a pid, and
// once qemu exits its pid may belong to another process, whose memory would then be read as
// guest RAM. After every batch the pidfd is polled; if the process has exited, every read of
// the batch fails (kNotFound), since some of it may have come from a newcomer. Kernels without
// pidfd_open (< 5.3) fall back to the bare pid (pid_held() false).
class QemuProcessMemory final : public PhysicalMemory {
 public:
  ~QemuProcessMemory() override;
  // `ram` as returned by resolve_ram_layout(): every range needs its hva. Fails with
  // kInvalidArgument for an empty list, overlapping ranges or a missing hva; kNotFound if the
  // pid does not exist. Cheap: the caller may keep the ranges and reconstruct after a restart.
  static Result<std::unique_ptr<QemuProcessMemory>> create(pid_t pid, std::vector<RamRange> ram);

  Result<void> read(uint64_t gpa, void* buf, size_t len) override;
  Result<void> read_batch(std::span<ReadRequest> requests) override;
  const std::vector<PhysRange>& ranges() const override { return phys_; }
  bool live() const override { return true; }

  pid_t pid() const { return pid_; }
  // Whether the process is held by a pidfd (see above).
  bool pid_held() const { return pidfd_ >= 0; }
  // Whether the process has exited (always false without a pidfd).
  bool exited() const;
  const std::vector<RamRange>& ram() const { return ram_; }
  // Number of process_vm_readv calls made so far (for benchmarks and tests).
  uint64_t syscall_count() const { return syscalls_.load(std::memory_order_relaxed); }

 private:
  QemuProcessMemory(pid_t pid, int pidfd, std::vector<RamRange> ram);
  pid_t pid_;
  int pidfd_;
  std::vector<RamRange> ram_;
  std::vector<PhysRange> phys_;
  std::atomic<uint64_t> syscalls_{0};
};

// An ELF core file: PT_LOAD segments are placed at their p_paddr (p_filesz bytes from the
// file; bytes between p_filesz and p_memsz read as zero). Handles ELFCLASS64 little-endian
// cores from `virsh dump --memory-only --format elf`, kdump (/proc/vmcore copies) and
// write_elf_core(). Segments that overlap an earlier one are ignored. Reads use pread, so a
// file truncated after opening gives kIo, never SIGBUS.
class ElfCoreMemory final : public PhysicalMemory {
 public:
  static Result<std::unique_ptr<ElfCoreMemory>> open(const std::string& path);
  ~ElfCoreMemory() override;

  Result<void> read(uint64_t gpa, void* buf, size_t len) override;
  const std::vector<PhysRange>& ranges() const override { return phys_; }

  // The VMCOREINFO text (without the note header) from a PT_NOTE named "VMCOREINFO", or an
  // empty string when the core has none (QEMU omits it when the guest never loaded its fw_cfg
  // driver). Not validated: pass it to parse_vmcoreinfo().
  const std::string& vmcoreinfo_note() const { return vmcoreinfo_; }

  struct Segment {
    uint64_t gpa, filesz, memsz, file_offset;
  };

 private:
  ElfCoreMemory() = default;
  int fd_ = -1;
  std::string path_;
  std::vector<Segment> segments_;  // sorted by gpa
  std::vector<PhysRange> phys_;
  std::string vmcoreinfo_;
};

// A raw image: byte ranges placed at guest-physical addresses, either from memory (tests,
// fixtures) or from a file (e.g. guest RAM copied out of a stopped qemu, ranges concatenated).
class RawImageMemory final : public PhysicalMemory {
 public:
  struct Segment {
    uint64_t gpa = 0;
    std::vector<uint8_t> bytes;
  };
  // In-memory image. Segments must not overlap (kInvalidArgument otherwise); empty segments
  // are dropped.
  static Result<std::unique_ptr<RawImageMemory>> from_segments(std::vector<Segment> segments);
  // Convenience: one segment of `size` zero bytes at `gpa`.
  static std::unique_ptr<RawImageMemory> zeroed(uint64_t gpa, uint64_t size);

  struct FileRange {
    uint64_t gpa = 0;
    uint64_t size = 0;
    uint64_t file_offset = 0;
  };
  // File-backed image read with pread; the file must be at least as long as every range.
  static Result<std::unique_ptr<RawImageMemory>> open_file(const std::string& path,
                                                           std::vector<FileRange> ranges);
  ~RawImageMemory() override;

  Result<void> read(uint64_t gpa, void* buf, size_t len) override;
  const std::vector<PhysRange>& ranges() const override { return phys_; }

  // In-memory images only: writable access for building fixtures (tests write page tables,
  // notes, kallsyms tables through this). Fails with kUnmapped outside the segments and
  // kUnsupported for file-backed images.
  Result<void> write(uint64_t gpa, const void* data, size_t len);
  template <typename T>
  Result<void> write_value(uint64_t gpa, const T& v) {
    return write(gpa, &v, sizeof v);
  }

 private:
  RawImageMemory() = default;
  std::vector<Segment> segments_;   // in-memory
  std::vector<FileRange> file_ranges_;
  int fd_ = -1;
  std::string path_;
  std::vector<PhysRange> phys_;
};

}  // namespace stallmon::introspect
