// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/elf_core.h"

#include <elf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace stallmon::introspect {
namespace {

Result<void> write_all(int fd, const void* data, size_t len, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::io("write " + path, errno);
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return Ok();
}

uint64_t align4(uint64_t v) { return (v + 3) & ~3ull; }

bool is_zero(const uint8_t* p, size_t len) {
  // Word-wise: pages are 8-byte aligned in the buffer.
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    if (w) return false;
  }
  for (; i < len; ++i) {
    if (p[i]) return false;
  }
  return true;
}

Result<uint64_t> write_core(int fd, PhysicalMemory& mem, const std::string& path, const ElfCoreWriteOptions& options) {
  const auto& ranges = mem.ranges();
  if (ranges.empty()) return Error(ErrorCode::kInvalidArgument, "no memory ranges to write");
  const bool with_note = !options.vmcoreinfo_text.empty();
  const size_t phnum = ranges.size() + (with_note ? 1 : 0);
  if (phnum >= PN_XNUM) return Error(ErrorCode::kLimit, "too many memory ranges for an ELF core");

  // Note: the same layout the kernel and QEMU use (namesz 11 "VMCOREINFO", type 0).
  std::vector<uint8_t> note;
  if (with_note) {
    Elf64_Nhdr nh{};
    nh.n_namesz = 11;
    nh.n_descsz = static_cast<Elf64_Word>(options.vmcoreinfo_text.size());
    nh.n_type = 0;
    note.resize(sizeof nh + align4(11) + align4(options.vmcoreinfo_text.size()));
    std::memcpy(note.data(), &nh, sizeof nh);
    std::memcpy(note.data() + sizeof nh, "VMCOREINFO", 11);
    std::memcpy(note.data() + sizeof nh + 12, options.vmcoreinfo_text.data(), options.vmcoreinfo_text.size());
  }

  Elf64_Ehdr eh{};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_ident[EI_OSABI] = ELFOSABI_NONE;
  eh.e_type = ET_CORE;
  eh.e_machine = EM_X86_64;
  eh.e_version = EV_CURRENT;
  eh.e_phoff = sizeof(Elf64_Ehdr);
  eh.e_ehsize = sizeof(Elf64_Ehdr);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = static_cast<Elf64_Half>(phnum);

  std::vector<Elf64_Phdr> ph(phnum);
  uint64_t off = sizeof(Elf64_Ehdr) + phnum * sizeof(Elf64_Phdr);
  size_t i = 0;
  if (with_note) {
    ph[0].p_type = PT_NOTE;
    ph[0].p_offset = off;
    ph[0].p_filesz = note.size();
    off += note.size();
    i = 1;
  }
  off = (off + 4095) & ~4095ull;  // page-align the data: cheaper reads for consumers
  for (const PhysRange& r : ranges) {
    Elf64_Phdr& p = ph[i++];
    p.p_type = PT_LOAD;
    p.p_flags = PF_R | PF_W | PF_X;
    p.p_offset = off;
    p.p_vaddr = 0;  // physical-only core: consumers translate with VMCOREINFO's page tables
    p.p_paddr = r.gpa;
    p.p_filesz = r.size;
    p.p_memsz = r.size;
    p.p_align = 4096;
    off += r.size;
  }
  STALLMON_TRY_VOID(write_all(fd, &eh, sizeof eh, path));
  STALLMON_TRY_VOID(write_all(fd, ph.data(), ph.size() * sizeof(Elf64_Phdr), path));
  uint64_t written = sizeof eh + ph.size() * sizeof(Elf64_Phdr);
  if (with_note) {
    STALLMON_TRY_VOID(write_all(fd, note.data(), note.size(), path));
    written += note.size();
  }
  std::vector<uint8_t> buf(std::max<uint64_t>(4096, options.chunk_bytes));
  i = with_note ? 1 : 0;
  for (const PhysRange& r : ranges) {
    if (::lseek(fd, static_cast<off_t>(ph[i++].p_offset), SEEK_SET) < 0) return Error::io("lseek " + path, errno);
    for (uint64_t pos = 0; pos < r.size;) {
      uint64_t n = std::min<uint64_t>(buf.size(), r.size - pos);
      auto rd = mem.read(r.gpa + pos, buf.data(), n);
      if (!rd.ok()) return std::move(rd).error().context("copying guest RAM");
      // All-zero pages (most of an idle guest's RAM) become holes of a sparse file.
      for (uint64_t at = 0; at < n;) {
        uint64_t len = std::min<uint64_t>(4096, n - at);
        if (is_zero(buf.data() + at, len)) {
          if (::lseek(fd, static_cast<off_t>(len), SEEK_CUR) < 0) return Error::io("lseek " + path, errno);
        } else {
          uint64_t run = len;
          while (at + run < n) {
            uint64_t l2 = std::min<uint64_t>(4096, n - at - run);
            if (is_zero(buf.data() + at + run, l2)) break;
            run += l2;
          }
          STALLMON_TRY_VOID(write_all(fd, buf.data() + at, run, path));
          len = run;
        }
        at += len;
      }
      pos += n;
      written += n;
    }
  }
  // The file must be as long as the last segment even if it ends in a hole.
  if (::ftruncate(fd, static_cast<off_t>(ph.back().p_offset + ph.back().p_filesz)) != 0) {
    return Error::io("ftruncate " + path, errno);
  }
  return written;
}

}  // namespace

Result<uint64_t> write_elf_core(PhysicalMemory& mem, const std::string& path, const ElfCoreWriteOptions& options) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Error::io("create " + path, errno);
  auto r = write_core(fd, mem, path, options);
  if (::close(fd) != 0 && r.ok()) r = Error::io("close " + path, errno);
  if (!r.ok()) ::unlink(path.c_str());
  return r;
}

}  // namespace stallmon::introspect
