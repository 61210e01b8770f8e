// SPDX-License-Identifier: Apache-2.0
// Discovery end to end on synthetic guests: VMCOREINFO scan → paging → kallsyms → BTF → per-cpu.
#include "stallmon/introspect/kernel.h"

#include <gtest/gtest.h>
#include <cstdio>
#include <unistd.h>

#include "fake_guest.h"
#include "stallmon/introspect/elf_core.h"

namespace stallmon::introspect {
namespace {

using fake::FakeGuest;
using fake::FakeGuestOptions;

class KernelTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { clear_shared_kernel_cache(); }
};

void expect_discovered(FakeGuest& g, Kernel& k) {
  EXPECT_EQ(k.vmcoreinfo().osrelease, g.options().osrelease);
  if (k.vmcoreinfo().note_gpa) {
    EXPECT_EQ(*k.vmcoreinfo().note_gpa, g.options().note_gpa);
  }
  EXPECT_EQ(k.memory().config().page_offset_base.value_or(0), g.page_offset_base());
  // Every symbol the fake wrote decodes to the same address and type.
  ASSERT_EQ(k.symbols().size(), g.symbols().size());
  for (const Symbol& s : g.symbols()) {
    const Symbol* d = k.symbols().find(s.name);
    ASSERT_NE(d, nullptr) << s.name;
    EXPECT_EQ(d->address, s.address) << s.name;
    EXPECT_EQ(d->type, s.type) << s.name;
  }
  EXPECT_EQ(k.symbols().format(g.symbol("do_sync_core") + 0x1f), "do_sync_core+0x1f");
  // Per-cpu: runqueues on each CPU through the vmalloc page tables.
  auto n = k.nr_cpu_ids();
  ASSERT_TRUE(n.ok()) << n.error().to_string();
  EXPECT_EQ(*n, g.options().nr_cpus);
  auto off = k.types().member_offset("rq", "nr_running");
  ASSERT_TRUE(off.ok());
  for (uint32_t cpu = 0; cpu < *n; ++cpu) {
    auto rq = k.percpu_address("runqueues", cpu);
    ASSERT_TRUE(rq.ok()) << rq.error().to_string();
    EXPECT_EQ(*rq, g.symbol("runqueues") + g.percpu_offset(cpu));
    auto nr = k.memory().read_u32(*rq + *off);
    ASSERT_TRUE(nr.ok()) << nr.error().to_string();
    EXPECT_EQ(*nr, cpu + 1);
  }
  EXPECT_EQ(k.percpu_address("runqueues", *n).error().code, ErrorCode::kInvalidArgument);
  auto online = k.online_cpus();
  ASSERT_TRUE(online.ok());
  EXPECT_EQ(online->size(), *n);
  EXPECT_EQ(*k.types().member_offset("__call_single_data", "node.u_flags"), 8u);
  auto still = k.still_valid();
  ASSERT_TRUE(still.ok());
  EXPECT_TRUE(*still);
}

TEST_P(KernelTest, DiscoversSyntheticGuest) {
  FakeGuestOptions o;
  o.l5 = GetParam();
  FakeGuest g(o);
  auto k = Kernel::discover(g.memory());
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  EXPECT_EQ((*k)->vmcoreinfo().pgtable_l5, o.l5);
  expect_discovered(g, **k);
}

TEST_P(KernelTest, DiscoversWithoutAbsolutePercpu) {
  FakeGuestOptions o;
  o.l5 = GetParam();
  o.absolute_percpu = false;  // Linux 6.15+: per-cpu symbols are ordinary kernel addresses
  FakeGuest g(o);
  auto k = Kernel::discover(g.memory());
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  expect_discovered(g, **k);
}

INSTANTIATE_TEST_SUITE_P(Paging, KernelTest, ::testing::Values(false, true),
                         [](const auto& p) { return p.param ? "FiveLevel" : "FourLevel"; });

TEST(Kernel, DiscoversFromElfCoreWithAndWithoutNote) {
  clear_shared_kernel_cache();
  FakeGuest g;
  for (bool note : {true, false}) {
    std::string path = ::testing::TempDir() + "/stallmon_kernel_core_" + std::to_string(getpid()) + ".elf";
    ElfCoreWriteOptions wo;
    if (note) wo.vmcoreinfo_text = g.vmcoreinfo_text();
    ASSERT_TRUE(write_elf_core(*g.memory(), path, wo).ok());
    auto core = ElfCoreMemory::open(path);
    ASSERT_TRUE(core.ok()) << core.error().to_string();
    EXPECT_EQ((*core)->vmcoreinfo_note().empty(), !note);
    std::shared_ptr<PhysicalMemory> mem = std::move(*core);
    auto k = Kernel::discover(mem);
    ASSERT_TRUE(k.ok()) << k.error().to_string();
    // From the note there is no RAM address; from the scan there is.
    EXPECT_EQ((*k)->vmcoreinfo().note_gpa.has_value(), !note);
    expect_discovered(g, **k);
    ::unlink(path.c_str());
  }
}

TEST(Kernel, KernelImageBeyond512MiBIsWalkedUntilItsExtentIsKnown) {
  // Text at 0xffffffffa5000000 (KASLR can put it anywhere in the 1 GiB window) and no
  // KERNEL_IMAGE_SIZE: the first reads are page walks, then [_text, _end) is a fast path.
  clear_shared_kernel_cache();
  FakeGuestOptions o;
  o.kaslr_offset = 0x24000000;
  o.phys_base = -0x22e00000;
  o.vmcoreinfo_image_size = false;
  FakeGuest g(o);
  auto k = Kernel::discover(g.memory());
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  EXPECT_GT((*k)->memory().page_walks(), 0u);
  EXPECT_EQ((*k)->memory().config().kernel_image_start, g.text_va());
  expect_discovered(g, **k);
  uint64_t walks = (*k)->memory().page_walks();
  (*k)->begin_snapshot();
  EXPECT_TRUE((*k)->memory().read_u64(g.symbol("page_offset_base")).ok());
  EXPECT_EQ((*k)->memory().page_walks(), walks);
}

TEST(Kernel, SystemMapAndBtfFilesInsteadOfGuestMemory) {
  clear_shared_kernel_cache();
  FakeGuest g;
  // A System.map has link-time addresses: discovery relocates them by KERNELOFFSET (absolute
  // per-cpu symbols stay) and cross-checks _stext against VMCOREINFO.
  std::string map_path = ::testing::TempDir() + "/stallmon_System.map." + std::to_string(getpid());
  std::string btf_path = ::testing::TempDir() + "/stallmon_btf." + std::to_string(getpid());
  {
    FILE* f = std::fopen(map_path.c_str(), "w");
    for (const Symbol& s : g.symbols()) {
      uint64_t a = s.type == 'A' ? s.address : s.address - g.options().kaslr_offset;
      std::fprintf(f, "%016llx %c %s\n", static_cast<unsigned long long>(a), s.type, s.name.c_str());
    }
    std::fclose(f);
    f = std::fopen(btf_path.c_str(), "wb");
    std::fwrite(g.btf_bytes().data(), 1, g.btf_bytes().size(), f);
    std::fclose(f);
  }
  // Corrupt the guest's own kallsyms and BTF: the files must be what is used.
  g.put_va<uint32_t>(g.symbol("kallsyms_num_syms"), 0xffffffffu);
  g.put_va<uint32_t>(g.symbol("__start_BTF"), 0);
  DiscoverOptions o;
  o.system_map_path = map_path;
  o.btf_path = btf_path;
  auto k = Kernel::discover(g.memory(), o);
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  expect_discovered(g, **k);
  // The same System.map serves another KASLR slide of the same build.
  clear_shared_kernel_cache();
  FakeGuestOptions other;
  other.kaslr_offset = 0x3000000;
  other.phys_base = -0x1e00000;
  FakeGuest h(other);
  auto k2 = Kernel::discover(h.memory(), o);
  ASSERT_TRUE(k2.ok()) << k2.error().to_string();
  EXPECT_EQ(*(*k2)->symbol("_stext"), h.text_va());
  // A System.map of another build (addresses shifted) fails the cross-check.
  clear_shared_kernel_cache();
  {
    FILE* f = std::fopen(map_path.c_str(), "w");
    for (const Symbol& s : g.symbols()) {
      uint64_t a = s.type == 'A' ? s.address : s.address - g.options().kaslr_offset + 0x200000;
      std::fprintf(f, "%016llx %c %s\n", static_cast<unsigned long long>(a), s.type, s.name.c_str());
    }
    std::fclose(f);
  }
  auto bad = Kernel::discover(g.memory(), o);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kCorrupt) << bad.error().to_string();
  ::unlink(map_path.c_str());
  ::unlink(btf_path.c_str());
}

TEST(Kernel, SharesSymbolsAndTypesBetweenGuestsOfOneBuild) {
  clear_shared_kernel_cache();
  FakeGuest a, b;
  auto ka = Kernel::discover(a.memory());
  auto kb = Kernel::discover(b.memory());
  ASSERT_TRUE(ka.ok() && kb.ok());
  EXPECT_EQ((*ka)->symbols_ptr().get(), (*kb)->symbols_ptr().get());
  EXPECT_EQ((*ka)->types_ptr().get(), (*kb)->types_ptr().get());
  // Another KASLR slide of the same build: same types, other symbols.
  FakeGuestOptions o;
  o.kaslr_offset = 0x3000000;
  o.phys_base = -0x1e00000;
  FakeGuest c(o);
  auto kc = Kernel::discover(c.memory());
  ASSERT_TRUE(kc.ok()) << kc.error().to_string();
  EXPECT_NE((*kc)->symbols_ptr().get(), (*ka)->symbols_ptr().get());
  EXPECT_EQ((*kc)->types_ptr().get(), (*ka)->types_ptr().get());
  EXPECT_EQ(*(*kc)->symbol("_text"), c.text_va());
}

TEST(Kernel, StillValidDetectsReboot) {
  clear_shared_kernel_cache();
  FakeGuest g;
  auto k = Kernel::discover(g.memory());
  ASSERT_TRUE(k.ok());
  // "Reboot" with another KASLR slide: rewrite the note in place.
  std::string text = g.vmcoreinfo_text();
  auto pos = text.find("KERNELOFFSET=");
  text.replace(pos, text.find('\n', pos) - pos, "KERNELOFFSET=4000000");
  auto note = fake::make_vmcoreinfo_note(text);
  g.write_pa(g.options().note_gpa, note.data(), note.size());
  auto v = (*k)->still_valid();
  ASSERT_TRUE(v.ok());
  EXPECT_FALSE(*v);
  // The note page reused for something else entirely.
  std::vector<uint8_t> zero(4096);
  g.write_pa(g.options().note_gpa, zero.data(), zero.size());
  v = (*k)->still_valid();
  ASSERT_TRUE(v.ok());
  EXPECT_FALSE(*v);
}

// --- hostile guests -------------------------------------------------------------------------

TEST(KernelHostile, NoNoteIsNotFound) {
  auto mem = std::shared_ptr<RawImageMemory>(RawImageMemory::zeroed(0, 8 << 20));
  auto k = Kernel::discover(mem);
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.error().code, ErrorCode::kNotFound);
}

TEST(KernelHostile, HugeKallsymsCountIsRejected) {
  clear_shared_kernel_cache();
  FakeGuest g;
  g.put_va<uint32_t>(g.symbol("kallsyms_num_syms"), 0xffffffffu);
  auto k = Kernel::discover(g.memory());
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.error().code, ErrorCode::kLimit) << k.error().to_string();
}

TEST(KernelHostile, TruncatedKallsymsNamesAreCorrupt) {
  clear_shared_kernel_cache();
  FakeGuest g;
  // One more symbol than the names hold: decoding runs into the following tables and must
  // fail cleanly (or hit the bound), never read past what it fetched.
  g.put_va<uint32_t>(g.symbol("kallsyms_num_syms"), static_cast<uint32_t>(g.symbols().size() + 50));
  auto k = Kernel::discover(g.memory());
  ASSERT_FALSE(k.ok());
  EXPECT_TRUE(k.error().code == ErrorCode::kCorrupt || k.error().code == ErrorCode::kLimit ||
              k.error().code == ErrorCode::kUnmapped)
      << k.error().to_string();
}

TEST(KernelHostile, GarbageTokenIndexIsCorrupt) {
  clear_shared_kernel_cache();
  FakeGuest g;
  // 'x' now expands to whatever lies at 0xfff0: the names decode to garbage, and discovery
  // must notice (VMCOREINFO's _stext is then missing from the symbols) rather than go on.
  g.put_va<uint16_t>(g.symbol("kallsyms_token_index") + 2 * 'x', 0xfff0);
  auto k = Kernel::discover(g.memory());
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.error().code, ErrorCode::kCorrupt) << k.error().to_string();
}

TEST(KernelHostile, BadBtfIsCorrupt) {
  clear_shared_kernel_cache();
  FakeGuest g;
  uint64_t btf = g.symbol("__start_BTF");
  // Type section offset/length pointing far outside the blob.
  g.put_va<uint32_t>(btf + 12, 0x7fffffff);
  auto k = Kernel::discover(g.memory());
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.error().code, ErrorCode::kCorrupt) << k.error().to_string();
  // Symbols-only discovery still works.
  clear_shared_kernel_cache();
  DiscoverOptions o;
  o.load_types = false;
  auto k2 = Kernel::discover(g.memory(), o);
  ASSERT_TRUE(k2.ok()) << k2.error().to_string();
  EXPECT_FALSE((*k2)->has_types());
}

TEST(KernelHostile, GarbagePageOffsetBaseIsCorrupt) {
  clear_shared_kernel_cache();
  FakeGuest g;
  g.put_va<uint64_t>(g.symbol("page_offset_base"), 0x1234);
  auto k = Kernel::discover(g.memory());
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.error().code, ErrorCode::kCorrupt);
}

TEST(KernelHostile, AbsurdCpuCountIsLimited) {
  clear_shared_kernel_cache();
  FakeGuest g;
  auto k = Kernel::discover(g.memory());
  ASSERT_TRUE(k.ok());
  g.put_va<uint32_t>(g.symbol("nr_cpu_ids"), 1u << 30);
  auto n = (*k)->nr_cpu_ids();
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error().code, ErrorCode::kLimit);
  EXPECT_FALSE((*k)->percpu_address("runqueues", 0).ok());
}

TEST(KernelHostile, PageTablePointingOutsideRamIsAnError) {
  clear_shared_kernel_cache();
  FakeGuest g;
  auto k = Kernel::discover(g.memory());
  ASSERT_TRUE(k.ok());
  // Point the vmalloc PGD entry at 1 TiB.
  uint64_t slot = g.top_pgt_pa() + ((FakeGuest::kVmallocBase >> 39) & 511) * 8;
  uint64_t e = (1ull << 40) | 0x63;
  g.write_pa(slot, &e, 8);
  (*k)->begin_snapshot();
  auto rq = (*k)->percpu_address("runqueues", 1);
  ASSERT_TRUE(rq.ok());
  auto v = (*k)->memory().read_u32(*rq);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(v.error().address.value_or(0), *rq);
}

}  // namespace
}  // namespace stallmon::introspect
