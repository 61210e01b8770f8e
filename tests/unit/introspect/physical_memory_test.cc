// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/physical_memory.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <numeric>

#include "stallmon/introspect/elf_core.h"

namespace stallmon::introspect {
namespace {

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 8));
  return v;
}

std::unique_ptr<RawImageMemory> two_segments() {
  std::vector<RawImageMemory::Segment> segs;
  segs.push_back({0x100000, pattern(0x3000, 1)});
  segs.push_back({0x200000, pattern(0x2000, 2)});
  return std::move(RawImageMemory::from_segments(std::move(segs)).value());
}

TEST(RawImageMemory, ReadsInsideSegmentsOnly) {
  auto m = two_segments();
  EXPECT_EQ(m->total_size(), 0x5000u);
  EXPECT_TRUE(m->contains(0x100000, 0x3000));
  EXPECT_FALSE(m->contains(0x100000, 0x3001));
  uint8_t buf[16];
  ASSERT_TRUE(m->read(0x100010, buf, 16).ok());
  EXPECT_EQ(buf[0], pattern(0x3000, 1)[0x10]);
  auto r = m->read(0x102ff8, buf, 16);  // runs off the end of the first segment
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnmapped);
  EXPECT_EQ(r.error().address.value_or(0), 0x103000u);
  EXPECT_EQ(m->read(0, buf, 1).error().code, ErrorCode::kUnmapped);
  EXPECT_TRUE(m->read(0, buf, 0).ok());

  std::vector<RawImageMemory::Segment> overlap;
  overlap.push_back({0x1000, std::vector<uint8_t>(0x2000)});
  overlap.push_back({0x2000, std::vector<uint8_t>(0x2000)});
  EXPECT_EQ(RawImageMemory::from_segments(std::move(overlap)).error().code, ErrorCode::kInvalidArgument);
}

TEST(ElfCore, WriteThenReadBackWithNote) {
  auto m = two_segments();
  std::string path = ::testing::TempDir() + "/stallmon_core_" + std::to_string(getpid()) + ".elf";
  ElfCoreWriteOptions o;
  o.vmcoreinfo_text = "OSRELEASE=6.1.0\nSYMBOL(init_top_pgt)=ffffffff82000000\n";
  o.chunk_bytes = 0x1000;
  auto w = write_elf_core(*m, path, o);
  ASSERT_TRUE(w.ok()) << w.error().to_string();
  auto core = ElfCoreMemory::open(path);
  ASSERT_TRUE(core.ok()) << core.error().to_string();
  EXPECT_EQ((*core)->vmcoreinfo_note(), o.vmcoreinfo_text);
  ASSERT_EQ((*core)->ranges().size(), 2u);
  std::vector<uint8_t> a(0x3000), b(0x3000);
  ASSERT_TRUE((*core)->read(0x100000, a.data(), a.size()).ok());
  ASSERT_TRUE(m->read(0x100000, b.data(), b.size()).ok());
  EXPECT_EQ(a, b);
  EXPECT_EQ((*core)->read(0x180000, a.data(), 8).error().code, ErrorCode::kUnmapped);
  // Batch via the default implementation.
  uint64_t x = 0, y = 0;
  ReadRequest reqs[2] = {{0x200000, &x, 8}, {0x300000, &y, 8}};
  EXPECT_FALSE((*core)->read_batch(reqs).ok());
  EXPECT_TRUE(reqs[0].ok);
  EXPECT_FALSE(reqs[1].ok);

  // Truncate the file: the last PT_LOAD no longer fits.
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(*w - 0x1000)), 0);
  EXPECT_EQ(ElfCoreMemory::open(path).error().code, ErrorCode::kCorrupt);
  // Not an ELF file at all.
  std::ofstream(path, std::ios::trunc) << "not an elf file";
  EXPECT_EQ(ElfCoreMemory::open(path).error().code, ErrorCode::kCorrupt);
  ::unlink(path.c_str());
  EXPECT_EQ(ElfCoreMemory::open(path).error().code, ErrorCode::kNotFound);
  EXPECT_FALSE(write_elf_core(*m, "/nonexistent-dir/core").ok());
}

TEST(RawImageMemory, FileBacked) {
  std::string path = ::testing::TempDir() + "/stallmon_raw_" + std::to_string(getpid());
  auto bytes = pattern(0x4000, 9);
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  auto m = RawImageMemory::open_file(path, {{0x0, 0x1000, 0x0}, {0x100000, 0x3000, 0x1000}});
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  uint8_t v = 0;
  ASSERT_TRUE((*m)->read(0x100000, &v, 1).ok());
  EXPECT_EQ(v, bytes[0x1000]);
  EXPECT_EQ((*m)->write(0, &v, 1).error().code, ErrorCode::kUnsupported);
  EXPECT_EQ(RawImageMemory::open_file(path, {{0, 0x5000, 0}}).error().code, ErrorCode::kInvalidArgument);
  ::unlink(path.c_str());
}

// QemuProcessMemory against this very process: "guest RAM" is a buffer of ours.
TEST(QemuProcessMemory, BatchesAcrossRangesAndIovMax) {
  auto low = pattern(0xa0000, 3), high = pattern(0x200000, 4);
  std::vector<RamRange> ram = {
      {0x100000, high.size(), reinterpret_cast<uint64_t>(high.data()), "pc.ram"},
      {0x0, low.size(), reinterpret_cast<uint64_t>(low.data()), "pc.ram"},
  };
  auto m = QemuProcessMemory::create(getpid(), ram);
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  EXPECT_EQ((*m)->ranges()[0].gpa, 0u);  // sorted
  // 3000 reads of 16 bytes: needs 3 process_vm_readv calls (IOV_MAX 1024).
  std::vector<std::array<uint8_t, 16>> out(3000);
  std::vector<ReadRequest> reqs;
  for (size_t i = 0; i < out.size(); ++i) reqs.push_back({0x100000 + i * 64, out[i].data(), 16});
  uint64_t before = (*m)->syscall_count();
  ASSERT_TRUE((*m)->read_batch(reqs).ok());
  EXPECT_EQ((*m)->syscall_count() - before, 3u);
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_EQ(std::memcmp(out[i].data(), high.data() + i * 64, 16), 0) << i;
  }
  // A read spanning the hole between the ranges fails with the first unmapped address.
  std::vector<uint8_t> buf(0x100);
  auto r = (*m)->read(0x9ff80, buf.data(), buf.size());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnmapped);
  EXPECT_EQ(r.error().address.value_or(0), 0xa0000u);
}

// A child process that stores `text` in kMarker (same address in parent and child after fork)
// and waits to be killed; its pid, or -1.
char kMarker[64];
pid_t child_with_marker(const char* text) {
  int ready[2];
  if (pipe(ready) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    std::strncpy(kMarker, text, sizeof kMarker - 1);
    char c = 1;
    (void)!write(ready[1], &c, 1);
    for (;;) pause();
  }
  char c;
  (void)!read(ready[0], &c, 1);
  close(ready[0]);
  close(ready[1]);
  return pid;
}

void kill_and_reap(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

// The threat: qemu exits, its pid is handed to another process, and the reader goes on reading
// "guest RAM" at the same host addresses of the newcomer. Reproduced by steering the host's
// next pid (root only: /proc/sys/kernel/ns_last_pid) so that a new process gets the dead one's
// pid; whether that worked is checked on the pid itself, independently of the reader.
TEST(QemuProcessMemory, AReusedPidIsNeverRead) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to steer ns_last_pid";
  const pid_t first = child_with_marker("the guest's RAM");
  ASSERT_GT(first, 1);
  const uint64_t hva = reinterpret_cast<uint64_t>(kMarker);
  auto m = QemuProcessMemory::create(first, {{0x1000, sizeof kMarker, hva, "pc.ram"}});
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  EXPECT_TRUE((*m)->pid_held());
  char buf[sizeof kMarker] = {};
  ASSERT_TRUE((*m)->read(0x1000, buf, sizeof buf).ok());
  EXPECT_STREQ(buf, "the guest's RAM");
  EXPECT_FALSE((*m)->exited());

  kill_and_reap(first);
  EXPECT_TRUE((*m)->exited());
  pid_t second = -1;
  for (int attempt = 0; attempt < 50 && second != first; ++attempt) {
    if (second > 0) kill_and_reap(second);
    std::ofstream("/proc/sys/kernel/ns_last_pid") << first - 1 << std::flush;
    second = child_with_marker("another process's memory");
  }
  if (second != first) {
    if (second > 0) kill_and_reap(second);
    GTEST_SKIP() << "could not get pid " << first << " handed out again (a busy host)";
  }
  std::memset(buf, 0, sizeof buf);
  auto r = (*m)->read(0x1000, buf, sizeof buf);
  kill_and_reap(second);
  ASSERT_FALSE(r.ok()) << "read the newcomer's memory: " << buf;
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find("exited"), std::string::npos) << r.error().message;
}

TEST(QemuProcessMemory, HostFaultsAreErrorsWithTheAddress) {
  const size_t page = 4096;
  auto* p = static_cast<uint8_t*>(mmap(nullptr, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(p, MAP_FAILED);
  std::memset(p, 0xab, 3 * page);
  ASSERT_EQ(munmap(p + page, page), 0);  // a hole in the "guest RAM" mapping
  auto m = QemuProcessMemory::create(getpid(), {{0x1000000, 3 * page, reinterpret_cast<uint64_t>(p), "pc.ram"}});
  ASSERT_TRUE(m.ok());
  uint64_t a = 0, b = 0, c = 0;
  ReadRequest reqs[3] = {{0x1000000, &a, 8}, {0x1000000 + page + 8, &b, 8}, {0x1000000 + 2 * page, &c, 8}};
  auto r = (*m)->read_batch(reqs);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kIo);
  EXPECT_EQ(r.error().sys_errno, EFAULT);
  EXPECT_EQ(r.error().address.value_or(0), 0x1000000 + page + 8);
  EXPECT_TRUE(reqs[0].ok);
  EXPECT_FALSE(reqs[1].ok);
  EXPECT_TRUE(reqs[2].ok);
  EXPECT_EQ(a, 0xababababababababull);
  EXPECT_EQ(c, 0xababababababababull);
  munmap(p, page);
  munmap(p + 2 * page, page);
}

TEST(QemuProcessMemory, GoneProcessIsAnError) {
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    pause();
    _exit(0);
  }
  static uint8_t ram[4096];
  auto m = QemuProcessMemory::create(child, {{0, sizeof ram, reinterpret_cast<uint64_t>(ram), "pc.ram"}});
  ASSERT_TRUE(m.ok());
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  uint64_t v;
  auto r = (*m)->read(0, &v, 8);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);  // the pidfd says it exited
  EXPECT_NE(r.error().message.find("exited"), std::string::npos) << r.error().message;
  EXPECT_EQ(QemuProcessMemory::create(child, {{0, 4096, 1, "x"}}).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(QemuProcessMemory::create(getpid(), {}).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(QemuProcessMemory::create(getpid(), {{0, 4096, 0, "no hva"}}).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(QemuProcessMemory::create(getpid(), {{0, 8192, 1, "a"}, {4096, 4096, 1, "b"}}).error().code,
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace stallmon::introspect
