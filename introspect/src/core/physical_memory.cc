// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/physical_memory.h"

#include <elf.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "text.h"

namespace stallmon::introspect {
namespace {

using detail::hex;

// Index of the range containing gpa, or -1. `ranges` sorted, non-overlapping.
template <typename R>
ptrdiff_t find_range(const std::vector<R>& ranges, uint64_t gpa) {
  auto it = std::upper_bound(ranges.begin(), ranges.end(), gpa,
                             [](uint64_t a, const R& r) { return a < r.gpa; });
  if (it == ranges.begin()) return -1;
  --it;
  if (gpa - it->gpa >= it->size) return -1;
  return it - ranges.begin();
}

Error unmapped(uint64_t gpa) {
  return Error(ErrorCode::kUnmapped, "guest-physical address " + hex(gpa) + " is not in guest RAM", gpa);
}

Result<void> pread_all(int fd, const std::string& path, uint64_t off, void* buf, size_t len, uint64_t gpa) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len > 0) {
    ssize_t n = ::pread(fd, p, len, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      Error e = Error::io("pread " + path + " at " + hex(off), errno);
      e.address = gpa;
      return e;
    }
    if (n == 0) {
      Error e(ErrorCode::kIo, path + ": file truncated at offset " + hex(off), gpa);
      return e;
    }
    p += n;
    off += static_cast<uint64_t>(n);
    gpa += static_cast<uint64_t>(n);
    len -= static_cast<size_t>(n);
  }
  return Ok();
}

bool overlaps_sorted(const std::vector<PhysRange>& r) {
  for (size_t i = 1; i < r.size(); ++i) {
    if (r[i].gpa < r[i - 1].end()) return true;
  }
  return false;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// PhysicalMemory

Result<void> PhysicalMemory::read_batch(std::span<ReadRequest> requests) {
  std::optional<Error> first;
  for (ReadRequest& r : requests) {
    auto res = read(r.addr, r.buf, r.len);
    r.ok = res.ok();
    if (!r.ok && !first) first = std::move(res).error();
  }
  if (first) return std::move(*first);
  return Ok();
}

uint64_t PhysicalMemory::total_size() const {
  uint64_t total = 0;
  for (const PhysRange& r : ranges()) total += r.size;
  return total;
}

bool PhysicalMemory::contains(uint64_t gpa, uint64_t len) const {
  const auto& rs = ranges();
  ptrdiff_t i = find_range(rs, gpa);
  if (i < 0) return false;
  return len <= rs[static_cast<size_t>(i)].end() - gpa;
}

// ---------------------------------------------------------------------------------------------
// QemuProcessMemory

QemuProcessMemory::QemuProcessMemory(pid_t pid, int pidfd, std::vector<RamRange> ram)
    : pid_(pid), pidfd_(pidfd), ram_(std::move(ram)) {
  for (const RamRange& r : ram_) phys_.push_back(PhysRange{r.gpa, r.size});
}

QemuProcessMemory::~QemuProcessMemory() {
  if (pidfd_ >= 0) ::close(pidfd_);
}

bool QemuProcessMemory::exited() const {
  if (pidfd_ < 0) return false;
  // A pidfd polls readable once its process has exited (zombie or reaped).
  pollfd p{pidfd_, POLLIN, 0};
  int n;
  do n = ::poll(&p, 1, 0);
  while (n < 0 && errno == EINTR);
  return n > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}

Result<std::unique_ptr<QemuProcessMemory>> QemuProcessMemory::create(pid_t pid, std::vector<RamRange> ram) {
  if (pid <= 0) return Error(ErrorCode::kInvalidArgument, "qemu pid " + std::to_string(pid));
  if (ram.empty()) return Error(ErrorCode::kInvalidArgument, "no RAM ranges");
  std::sort(ram.begin(), ram.end(), [](const RamRange& a, const RamRange& b) { return a.gpa < b.gpa; });
  for (size_t i = 0; i < ram.size(); ++i) {
    const RamRange& r = ram[i];
    if (r.size == 0 || r.hva == 0 || r.gpa + r.size < r.gpa || r.hva + r.size < r.hva) {
      return Error(ErrorCode::kInvalidArgument, "RAM range " + r.name + " at " + hex(r.gpa) + ": missing host address or bad size");
    }
    if (i > 0 && r.gpa < ram[i - 1].gpa + ram[i - 1].size) {
      return Error(ErrorCode::kInvalidArgument, "RAM ranges overlap at " + hex(r.gpa));
    }
  }
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    const int err = errno;
    if (err == ESRCH) return Error(ErrorCode::kNotFound, "qemu process " + std::to_string(pid) + " does not exist");
    if (err != ENOSYS) return Error::io("pidfd_open of qemu process " + std::to_string(pid), err);
    // No pidfd_open on this kernel: the bare pid, as before it existed.
    if (::kill(pid, 0) != 0 && errno == ESRCH) {
      return Error(ErrorCode::kNotFound, "qemu process " + std::to_string(pid) + " does not exist");
    }
  }
  return std::unique_ptr<QemuProcessMemory>(new QemuProcessMemory(pid, pidfd, std::move(ram)));
}

Result<void> QemuProcessMemory::read(uint64_t gpa, void* buf, size_t len) {
  ReadRequest r{gpa, buf, len, false};
  return read_batch(std::span<ReadRequest>(&r, 1));
}

Result<void> QemuProcessMemory::read_batch(std::span<ReadRequest> requests) {
  // Split every request into pieces that each lie in one RAM range (one local and one remote
  // iovec per piece, so a partial transfer can be attributed to a piece), then issue as few
  // process_vm_readv calls as IOV_MAX allows.
  constexpr size_t kIovMax = 1024;
  struct Piece {
    uint32_t request;
    uint64_t gpa;
  };
  std::vector<iovec> local, remote;
  std::vector<Piece> pieces;
  local.reserve(requests.size());
  remote.reserve(requests.size());
  pieces.reserve(requests.size());
  std::optional<Error> first;
  auto fail = [&](ReadRequest& r, Error e) {
    r.ok = false;
    if (!first) first = std::move(e);
  };

  for (size_t i = 0; i < requests.size(); ++i) {
    ReadRequest& r = requests[i];
    r.ok = true;
    uint64_t gpa = r.addr;
    auto* dst = static_cast<uint8_t*>(r.buf);
    size_t left = r.len;
    size_t first_piece = pieces.size();
    while (left > 0) {
      ptrdiff_t ri = find_range(ram_, gpa);
      if (ri < 0) {
        pieces.resize(first_piece);
        local.resize(first_piece);
        remote.resize(first_piece);
        fail(r, unmapped(gpa));
        break;
      }
      const RamRange& rr = ram_[static_cast<size_t>(ri)];
      uint64_t n = std::min<uint64_t>(left, rr.gpa + rr.size - gpa);
      local.push_back(iovec{dst, n});
      remote.push_back(iovec{reinterpret_cast<void*>(rr.hva + (gpa - rr.gpa)), n});
      pieces.push_back(Piece{static_cast<uint32_t>(i), gpa});
      dst += n;
      gpa += n;
      left -= n;
    }
  }

  size_t pos = 0;
  while (pos < pieces.size()) {
    size_t count = std::min(kIovMax, pieces.size() - pos);
    syscalls_.fetch_add(1, std::memory_order_relaxed);
    ssize_t n = ::process_vm_readv(pid_, &local[pos], count, &remote[pos], count, 0);
    int err = errno;
    if (n < 0) {
      if (err == EINTR) continue;
      if (err == EFAULT) n = 0;  // the first piece faulted: handled below as a partial transfer
      else {
        // ESRCH (qemu gone), EPERM (no ptrace permission), ENOMEM...: everything left fails.
        for (size_t k = pos; k < pieces.size(); ++k) {
          ReadRequest& r = requests[pieces[k].request];
          if (!r.ok) continue;
          Error e = Error::io("process_vm_readv pid " + std::to_string(pid_) + " at guest-physical " + hex(pieces[k].gpa), err);
          e.address = pieces[k].gpa;
          fail(r, std::move(e));
        }
        break;
      }
    }
    // Pieces fully transferred succeeded; the first incomplete one faulted; retry after it.
    uint64_t done = static_cast<uint64_t>(n);
    size_t k = pos;
    while (k < pos + count && done >= remote[k].iov_len) {
      done -= remote[k].iov_len;
      ++k;
    }
    if (k == pos + count) {
      pos = k;
      continue;
    }
    ReadRequest& r = requests[pieces[k].request];
    if (r.ok) {
      Error e = Error::io("process_vm_readv pid " + std::to_string(pid_) + ": host address " +
                              hex(reinterpret_cast<uint64_t>(remote[k].iov_base)) + " of guest-physical " +
                              hex(pieces[k].gpa) + " not readable",
                          EFAULT);
      e.address = pieces[k].gpa;
      fail(r, std::move(e));
    }
    pos = k + 1;
  }
  // Checked after the reads: if qemu had exited by now, some pieces may have been read from a
  // process that took over its pid.
  if (exited()) {
    Error gone(ErrorCode::kNotFound, "qemu process " + std::to_string(pid_) +
                                         " exited during the read (its pid may now name another process): nothing read is used");
    for (ReadRequest& r : requests) r.ok = false;
    return gone;
  }
  if (first) return std::move(*first);
  return Ok();
}

// ---------------------------------------------------------------------------------------------
// ElfCoreMemory

ElfCoreMemory::~ElfCoreMemory() {
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<ElfCoreMemory>> ElfCoreMemory::open(const std::string& path) {
  std::unique_ptr<ElfCoreMemory> core(new ElfCoreMemory());
  core->path_ = path;
  core->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (core->fd_ < 0) {
    int err = errno;
    if (err == ENOENT) return Error(ErrorCode::kNotFound, path + ": no such file");
    return Error::io("open " + path, err);
  }
  struct stat st {};
  if (::fstat(core->fd_, &st) != 0) return Error::io("fstat " + path, errno);
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);

  if (elf_version(EV_CURRENT) == EV_NONE) return Error(ErrorCode::kInternal, "libelf version mismatch");
  Elf* elf = elf_begin(core->fd_, ELF_C_READ, nullptr);
  if (!elf) return Error(ErrorCode::kCorrupt, path + ": not an ELF file: " + elf_errmsg(-1));
  struct ElfCloser {
    Elf* e;
    ~ElfCloser() { elf_end(e); }
  } closer{elf};

  GElf_Ehdr eh;
  if (elf_kind(elf) != ELF_K_ELF || !gelf_getehdr(elf, &eh)) {
    return Error(ErrorCode::kCorrupt, path + ": not an ELF file");
  }
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB) {
    return Error(ErrorCode::kUnsupported, path + ": only 64-bit little-endian cores are supported");
  }
  if (eh.e_type != ET_CORE) return Error(ErrorCode::kCorrupt, path + ": not an ELF core (e_type " + std::to_string(eh.e_type) + ")");
  size_t phnum = 0;
  if (elf_getphdrnum(elf, &phnum) != 0) return Error(ErrorCode::kCorrupt, path + ": bad program headers");
  if (phnum > 65536) return Error(ErrorCode::kLimit, path + ": too many program headers");

  for (size_t i = 0; i < phnum; ++i) {
    GElf_Phdr ph;
    if (!gelf_getphdr(elf, static_cast<int>(i), &ph)) return Error(ErrorCode::kCorrupt, path + ": bad program header " + std::to_string(i));
    if (ph.p_type == PT_LOAD) {
      if (ph.p_memsz == 0) continue;
      if (ph.p_filesz > ph.p_memsz || ph.p_offset > file_size || ph.p_filesz > file_size - ph.p_offset ||
          ph.p_paddr + ph.p_memsz < ph.p_paddr) {
        return Error(ErrorCode::kCorrupt, path + ": PT_LOAD " + std::to_string(i) + " outside the file", ph.p_paddr);
      }
      core->segments_.push_back(Segment{ph.p_paddr, ph.p_filesz, ph.p_memsz, ph.p_offset});
    } else if (ph.p_type == PT_NOTE && core->vmcoreinfo_.empty()) {
      if (ph.p_filesz == 0 || ph.p_filesz > (16u << 20) || ph.p_offset > file_size ||
          ph.p_filesz > file_size - ph.p_offset) {
        continue;  // a bad note segment is not fatal: the RAM scan still works
      }
      Elf_Data* data = elf_getdata_rawchunk(elf, static_cast<int64_t>(ph.p_offset), ph.p_filesz, ELF_T_NHDR);
      if (!data) continue;
      size_t off = 0, name_off = 0, desc_off = 0;
      GElf_Nhdr nh;
      while ((off = gelf_getnote(data, off, &nh, &name_off, &desc_off)) > 0) {
        const char* base = static_cast<const char*>(data->d_buf);
        if (nh.n_namesz == 11 && std::memcmp(base + name_off, "VMCOREINFO", 11) == 0) {
          core->vmcoreinfo_.assign(base + desc_off, nh.n_descsz);
          // The text is NUL-padded: stop at the first NUL.
          core->vmcoreinfo_.resize(std::strlen(core->vmcoreinfo_.c_str()));
          break;
        }
      }
    }
  }
  std::sort(core->segments_.begin(), core->segments_.end(),
            [](const Segment& a, const Segment& b) { return a.gpa < b.gpa; });
  std::vector<Segment> kept;
  for (const Segment& s : core->segments_) {
    if (!kept.empty() && s.gpa < kept.back().gpa + kept.back().memsz) continue;  // overlap: ignore
    kept.push_back(s);
  }
  core->segments_ = std::move(kept);
  if (core->segments_.empty()) return Error(ErrorCode::kCorrupt, path + ": no PT_LOAD segments");
  for (const Segment& s : core->segments_) core->phys_.push_back(PhysRange{s.gpa, s.memsz});
  return core;
}

Result<void> ElfCoreMemory::read(uint64_t gpa, void* buf, size_t len) {
  auto* dst = static_cast<uint8_t*>(buf);
  while (len > 0) {
    auto it = std::upper_bound(segments_.begin(), segments_.end(), gpa,
                               [](uint64_t a, const Segment& s) { return a < s.gpa; });
    if (it == segments_.begin()) return unmapped(gpa);
    --it;
    uint64_t off = gpa - it->gpa;
    if (off >= it->memsz) return unmapped(gpa);
    uint64_t n = std::min<uint64_t>(len, it->memsz - off);
    uint64_t from_file = off < it->filesz ? std::min<uint64_t>(n, it->filesz - off) : 0;
    if (from_file > 0) STALLMON_TRY_VOID(pread_all(fd_, path_, it->file_offset + off, dst, from_file, gpa));
    if (n > from_file) std::memset(dst + from_file, 0, n - from_file);
    dst += n;
    gpa += n;
    len -= n;
  }
  return Ok();
}

// ---------------------------------------------------------------------------------------------
// RawImageMemory

RawImageMemory::~RawImageMemory() {
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<RawImageMemory>> RawImageMemory::from_segments(std::vector<Segment> segments) {
  std::unique_ptr<RawImageMemory> img(new RawImageMemory());
  for (auto& s : segments) {
    if (s.bytes.empty()) continue;
    if (s.gpa + s.bytes.size() < s.gpa) return Error(ErrorCode::kInvalidArgument, "segment wraps", s.gpa);
    img->segments_.push_back(std::move(s));
  }
  std::sort(img->segments_.begin(), img->segments_.end(), [](const Segment& a, const Segment& b) { return a.gpa < b.gpa; });
  for (const auto& s : img->segments_) img->phys_.push_back(PhysRange{s.gpa, s.bytes.size()});
  if (overlaps_sorted(img->phys_)) return Error(ErrorCode::kInvalidArgument, "segments overlap");
  return img;
}

std::unique_ptr<RawImageMemory> RawImageMemory::zeroed(uint64_t gpa, uint64_t size) {
  std::vector<Segment> segs;
  segs.push_back(Segment{gpa, std::vector<uint8_t>(size)});
  return std::move(from_segments(std::move(segs)).value());
}

Result<std::unique_ptr<RawImageMemory>> RawImageMemory::open_file(const std::string& path, std::vector<FileRange> ranges) {
  std::unique_ptr<RawImageMemory> img(new RawImageMemory());
  img->path_ = path;
  img->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (img->fd_ < 0) {
    int err = errno;
    if (err == ENOENT) return Error(ErrorCode::kNotFound, path + ": no such file");
    return Error::io("open " + path, err);
  }
  struct stat st {};
  if (::fstat(img->fd_, &st) != 0) return Error::io("fstat " + path, errno);
  std::sort(ranges.begin(), ranges.end(), [](const FileRange& a, const FileRange& b) { return a.gpa < b.gpa; });
  for (const FileRange& r : ranges) {
    if (r.size == 0) continue;
    if (r.file_offset + r.size < r.file_offset || r.file_offset + r.size > static_cast<uint64_t>(st.st_size)) {
      return Error(ErrorCode::kInvalidArgument, path + ": range at " + hex(r.gpa) + " extends past the end of the file");
    }
    img->file_ranges_.push_back(r);
    img->phys_.push_back(PhysRange{r.gpa, r.size});
  }
  if (overlaps_sorted(img->phys_)) return Error(ErrorCode::kInvalidArgument, "ranges overlap");
  return img;
}

Result<void> RawImageMemory::read(uint64_t gpa, void* buf, size_t len) {
  auto* dst = static_cast<uint8_t*>(buf);
  while (len > 0) {
    ptrdiff_t i = find_range(phys_, gpa);
    if (i < 0) return unmapped(gpa);
    const PhysRange& r = phys_[static_cast<size_t>(i)];
    uint64_t off = gpa - r.gpa;
    uint64_t n = std::min<uint64_t>(len, r.size - off);
    if (fd_ >= 0) {
      STALLMON_TRY_VOID(pread_all(fd_, path_, file_ranges_[static_cast<size_t>(i)].file_offset + off, dst, n, gpa));
    } else {
      std::memcpy(dst, segments_[static_cast<size_t>(i)].bytes.data() + off, n);
    }
    dst += n;
    gpa += n;
    len -= n;
  }
  return Ok();
}

Result<void> RawImageMemory::write(uint64_t gpa, const void* data, size_t len) {
  if (fd_ >= 0) return Error(ErrorCode::kUnsupported, "file-backed images are read-only");
  const auto* src = static_cast<const uint8_t*>(data);
  while (len > 0) {
    ptrdiff_t i = find_range(phys_, gpa);
    if (i < 0) return unmapped(gpa);
    Segment& s = segments_[static_cast<size_t>(i)];
    uint64_t off = gpa - s.gpa;
    uint64_t n = std::min<uint64_t>(len, s.bytes.size() - off);
    std::memcpy(s.bytes.data() + off, src, n);
    src += n;
    gpa += n;
    len -= n;
  }
  return Ok();
}

}  // namespace stallmon::introspect
