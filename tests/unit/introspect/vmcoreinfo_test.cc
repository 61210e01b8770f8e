// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/vmcoreinfo.h"

#include <gtest/gtest.h>

#include <cstring>
#include <optional>

#include "fake_guest.h"

namespace stallmon::introspect {
namespace {

constexpr const char* kText =
    "OSRELEASE=6.1.0-56-amd64\n"
    "BUILD-ID=4e1f0c6d0a9b\n"
    "PAGESIZE=4096\n"
    "SYMBOL(init_uts_ns)=ffffffff9b613420\n"
    "OFFSET(uts_namespace.name)=4\n"
    "SYMBOL(swapper_pg_dir)=ffffffff9b60a000\n"
    "SYMBOL(kallsyms_names)=ffffffff9a6b1a18\n"
    "SYMBOL(prb)=ffffffff9b4a6e58\n"
    "SIZE(printk_info)=88\n"
    "OFFSET(printk_info.text_len)=16\n"
    "LENGTH(printk_ringbuffer.desc_ring)=3\n"
    "NUMBER(phys_base)=-446693376\n"
    "SYMBOL(init_top_pgt)=ffffffff9b60a000\n"
    "NUMBER(pgtable_l5_enabled)=1\n"
    "KERNELOFFSET=19a00000\n";

TEST(ParseVmcoreinfo, DebianLikeText) {
  auto r = parse_vmcoreinfo(kText);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->osrelease, "6.1.0-56-amd64");
  EXPECT_EQ(r->build_id, "4e1f0c6d0a9b");
  EXPECT_EQ(r->page_size, 4096u);
  EXPECT_EQ(r->kernel_offset, 0x19a00000u);
  EXPECT_EQ(r->phys_base, -446693376);
  EXPECT_EQ(r->top_pgt_va, 0xffffffff9b60a000u);
  EXPECT_TRUE(r->pgtable_l5);
  EXPECT_EQ(*r->symbol("prb"), 0xffffffff9b4a6e58u);
  EXPECT_EQ(*r->offset("printk_info.text_len"), 16u);
  EXPECT_EQ(*r->size("printk_info"), 88u);
  EXPECT_EQ(*r->length("printk_ringbuffer.desc_ring"), 3u);
  EXPECT_EQ(r->symbol("nope").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(*r->number("phys_base"), -446693376);
}

TEST(ParseVmcoreinfo, SwapperPgDirAloneIsEnough) {
  auto r = parse_vmcoreinfo("OSRELEASE=5.4.0\nSYMBOL(swapper_pg_dir)=ffffffff8200a000\n");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->top_pgt_va, 0xffffffff8200a000u);
  EXPECT_EQ(r->kernel_offset, 0u);
}

// What a 3.10 x86-64 kernel (CentOS 7's base, before KASLR) writes: kernel/kexec.c
// crash_save_vmcoreinfo_init() and arch/x86/kernel/machine_kexec_64.c
// arch_crash_save_vmcoreinfo() of v3.10. No KERNELOFFSET (came with x86 KASLR), no BUILD-ID (5.9),
// no NUMBER(phys_base) (SYMBOL(phys_base) is the variable's address, not its value), and the
// top-level page table as init_level4_pgt (renamed init_top_pgt in 4.13) and swapper_pg_dir.
TEST(ParseVmcoreinfo, Linux310WithoutKernelOffset) {
  auto r = parse_vmcoreinfo(
      "OSRELEASE=3.10.0-1160.el7.x86_64\n"
      "PAGESIZE=4096\n"
      "SYMBOL(init_uts_ns)=ffffffff81a8b480\n"
      "SYMBOL(node_online_map)=ffffffff81b4b9c0\n"
      "SYMBOL(swapper_pg_dir)=ffffffff8180e000\n"
      "SYMBOL(_stext)=ffffffff81000000\n"
      "SYMBOL(log_buf)=ffffffff81c2e8a0\n"
      "SYMBOL(log_buf_len)=ffffffff81c2e89c\n"
      "SYMBOL(log_first_idx)=ffffffff821b1ab8\n"
      "SYMBOL(log_next_idx)=ffffffff821b1ab0\n"
      "SIZE(log)=16\n"
      "OFFSET(log.ts_nsec)=0\n"
      "OFFSET(log.len)=8\n"
      "OFFSET(log.text_len)=10\n"
      "SYMBOL(phys_base)=ffffffff81a0f010\n"
      "SYMBOL(init_level4_pgt)=ffffffff8180e000\n"
      "CRASHTIME=1733385600\n");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->kernel_offset, 0u);
  EXPECT_EQ(r->phys_base, 0);
  EXPECT_TRUE(r->build_id.empty());
  EXPECT_EQ(r->top_pgt_va, 0xffffffff8180e000u);
  EXPECT_FALSE(r->pgtable_l5);
  EXPECT_EQ(*r->size("log"), 16u);
  EXPECT_EQ(*r->symbol("log_first_idx"), 0xffffffff821b1ab8u);
}

TEST(ParseVmcoreinfo, RejectsMalformed) {
  EXPECT_EQ(parse_vmcoreinfo("").error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(parse_vmcoreinfo("PAGESIZE=4096\nSYMBOL(init_top_pgt)=1\n").error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(parse_vmcoreinfo("OSRELEASE=x\n").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(parse_vmcoreinfo("OSRELEASE=x\nSYMBOL(init_top_pgt)=zz\n").error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(parse_vmcoreinfo("OSRELEASE=x\nSYMBOL(init_top_pgt)=1\nKERNELOFFSET=-\n").error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(parse_vmcoreinfo("OSRELEASE=x\nSYMBOL(init_top_pgt)=1\nNUMBER(phys_base)=1x\n").error().code,
            ErrorCode::kCorrupt);
  EXPECT_EQ(parse_vmcoreinfo("OSRELEASE=x\nSYMBOL(init_top_pgt)=1\nPAGESIZE=3000\n").error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(parse_vmcoreinfo(std::string(70000, 'A')).error().code, ErrorCode::kLimit);
  // Junk lines and NUL padding are tolerated.
  std::string padded = std::string("garbage\n=x\nOSRELEASE=x\nSYMBOL(init_top_pgt)=1\n") + std::string(8, '\0') + "JUNK";
  auto r = parse_vmcoreinfo(padded);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->get("JUNK"));
}

TEST(ParseVmcoreinfoNote, HeaderChecks) {
  auto note = fake::make_vmcoreinfo_note(kText);
  auto r = parse_vmcoreinfo_note(note);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->osrelease, "6.1.0-56-amd64");
  // descsz larger than the buffer.
  auto trunc = note;
  trunc.resize(100);
  EXPECT_EQ(parse_vmcoreinfo_note(trunc).error().code, ErrorCode::kCorrupt);
  // Wrong name.
  auto wrong = note;
  wrong[12] = 'X';
  EXPECT_EQ(parse_vmcoreinfo_note(wrong).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(parse_vmcoreinfo_note({}).error().code, ErrorCode::kCorrupt);
}

TEST(FindVmcoreinfo, ScansPageStartsSkippingDecoys) {
  auto mem = RawImageMemory::zeroed(0x100000, 8 << 20);  // RAM not starting at 0
  auto note = fake::make_vmcoreinfo_note(kText);
  // Not at a page start: must not be found.
  ASSERT_TRUE(mem->write(0x200010, note.data(), note.size()).ok());
  EXPECT_EQ(find_vmcoreinfo(*mem).error().code, ErrorCode::kNotFound);
  // A decoy that looks right but lacks the page-table symbol, then the real one.
  auto decoy = fake::make_vmcoreinfo_note("OSRELEASE=decoy\n");
  ASSERT_TRUE(mem->write(0x300000, decoy.data(), decoy.size()).ok());
  ASSERT_TRUE(mem->write(0x700000, note.data(), note.size()).ok());
  VmcoreInfoScanOptions o;
  o.chunk_bytes = 1 << 20;
  auto r = find_vmcoreinfo(*mem, o);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->note_gpa.value_or(0), 0x700000u);
  // With a hint the scan starts there; with a limit it gives up early.
  o.hint_gpa = 0x700000;
  EXPECT_TRUE(find_vmcoreinfo(*mem, o).ok());
  o.hint_gpa = 0;
  o.max_bytes = 2 << 20;
  EXPECT_EQ(find_vmcoreinfo(*mem, o).error().code, ErrorCode::kNotFound);

  auto valid = vmcoreinfo_still_valid(*mem, *r);
  ASSERT_TRUE(valid.ok());
  EXPECT_TRUE(*valid);
}

// RAM whose page at `hole` cannot be read (like an unmapped page in a qemu process).
class HoleyMemory final : public PhysicalMemory {
 public:
  HoleyMemory(std::unique_ptr<RawImageMemory> base, uint64_t hole) : base_(std::move(base)), hole_(hole) {}
  Result<void> read(uint64_t gpa, void* buf, size_t len) override {
    if (gpa < hole_ + 4096 && hole_ < gpa + len) return Error(ErrorCode::kIo, "hole", hole_);
    return base_->read(gpa, buf, len);
  }
  const std::vector<PhysRange>& ranges() const override { return base_->ranges(); }

 private:
  std::unique_ptr<RawImageMemory> base_;
  uint64_t hole_;
};

TEST(FindVmcoreinfo, UnreadablePageInTheSameChunkDoesNotHideTheNote) {
  auto mem = RawImageMemory::zeroed(0, 16 << 20);
  auto note = fake::make_vmcoreinfo_note(kText);
  ASSERT_TRUE(mem->write(0x405000, note.data(), note.size()).ok());
  HoleyMemory holey(std::move(mem), 0x404000);
  auto r = find_vmcoreinfo(holey);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r->note_gpa, 0x405000u);
}

TEST(FindVmcoreinfo, NoteAtTheVeryEndOfRam) {
  auto note = fake::make_vmcoreinfo_note(kText);
  auto mem = RawImageMemory::zeroed(0, 0x10000);
  ASSERT_TRUE(mem->write(0xf000, note.data(), note.size()).ok());
  auto r = find_vmcoreinfo(*mem);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r->note_gpa, 0xf000u);
}

// An ELF note (fake::make_elf_note) whose header then claims other sizes, as a guest may write.
std::vector<uint8_t> elf_note(const std::string& name, uint32_t type, const std::vector<uint8_t>& desc,
                              std::optional<uint32_t> namesz = std::nullopt, std::optional<uint32_t> descsz = std::nullopt) {
  auto n = fake::make_elf_note(name, type, desc);
  if (namesz) std::memcpy(n.data(), &*namesz, 4);
  if (descsz) std::memcpy(n.data() + 4, &*descsz, 4);
  return n;
}

TEST(NotesBuildId, FoundAfterOtherNotes) {
  auto notes = elf_note("Xen", 6, {'l', 'i', 'n', 'u', 'x', 0});
  auto linux_note = elf_note("Linux", 0x100, {1, 2, 3, 4});
  notes.insert(notes.end(), linux_note.begin(), linux_note.end());
  auto gnu = elf_note("GNU", 3, {0xde, 0xad, 0xbe, 0xef, 0x01});
  notes.insert(notes.end(), gnu.begin(), gnu.end());
  auto id = gnu_build_id_from_notes(notes);
  ASSERT_TRUE(id.ok()) << id.error().to_string();
  EXPECT_EQ(*id, "deadbeef01");
}

TEST(NotesBuildId, BoundedAndNamedErrors) {
  EXPECT_EQ(gnu_build_id_from_notes({}).error().code, ErrorCode::kNotFound);
  auto xen = elf_note("Xen", 6, {1, 2, 3, 4});
  EXPECT_EQ(gnu_build_id_from_notes(xen).error().code, ErrorCode::kNotFound);
  // Type 3 under another name is not a build id.
  EXPECT_EQ(gnu_build_id_from_notes(elf_note("GNX", 3, {1})).error().code, ErrorCode::kNotFound);
  // Sizes past the section: namesz, descsz (also the 32-bit wrap of padding), a truncated header.
  auto huge_name = elf_note("GNU", 3, {1}, 0xfffffffdu);
  auto r = gnu_build_id_from_notes(huge_name);
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
  EXPECT_NE(r.error().message.find("runs past the notes section"), std::string::npos) << r.error().message;
  EXPECT_EQ(gnu_build_id_from_notes(elf_note("GNU", 3, {1, 2}, std::nullopt, 64)).error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(gnu_build_id_from_notes(elf_note("GNU", 3, {}, std::nullopt, 0xffffffffu - 1)).error().code,
            ErrorCode::kCorrupt);
  auto gnu = elf_note("GNU", 3, {1, 2, 3, 4});
  EXPECT_EQ(gnu_build_id_from_notes(std::span<const uint8_t>(gnu.data(), 11)).error().code, ErrorCode::kNotFound);
  // An empty or oversized build id.
  EXPECT_EQ(gnu_build_id_from_notes(elf_note("GNU", 3, {})).error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(gnu_build_id_from_notes(elf_note("GNU", 3, std::vector<uint8_t>(68, 1))).error().code,
            ErrorCode::kCorrupt);
}

}  // namespace
}  // namespace stallmon::introspect
