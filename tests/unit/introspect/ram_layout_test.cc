// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/ram_layout.h"

#include <gtest/gtest.h>

#include <map>

namespace stallmon::introspect {
namespace {

// `info mtree -f` of a running q35 guest with 5 GiB (QEMU 7.2 format): pc.ram appears through
// the ram-below-4g / ram-above-4g aliases as "pc.ram @offset"; ROM, MMIO and VGA RAM are not
// guest RAM. The SMM view (FlatView #1) and the "memory" view differ: only "memory" counts.
constexpr std::string_view kQ35 = R"(FlatView #0
 AS "mch", root: bus master container
 AS "ICH9-LPC", root: bus master container
 Root memory region: (none)
  No rendered FlatView

FlatView #1
 AS "cpu-smm-0", root: memory
 Root memory region: memory
  0000000000000000-000000000009ffff (prio 0, ram): pc.ram KVM
  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem
  0000000000100000-000000007fffffff (prio 0, ram): pc.ram @0000000000100000 KVM
  0000000100000000-00000001bfffffff (prio 0, ram): pc.ram @0000000080000000 KVM

FlatView #2
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
  0000000000000510-0000000000000511 (prio 0, i/o): fwcfg

FlatView #3
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 AS "cpu-memory-1", root: system
 Root memory region: system
  0000000000000000-000000000009ffff (prio 0, ram): pc.ram KVM
  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom KVM
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000 KVM
  0000000000100000-000000007fffffff (prio 0, ram): pc.ram @0000000000100000 KVM
  00000000b0000000-00000000bfffffff (prio 0, i/o): pcie-mmcfg-mmio
  00000000fd000000-00000000fdffffff (prio 1, ram): vga.vram KVM
  00000000fe000000-00000000fe000fff (prio 0, i/o): virtio-pci-common-virtio-serial
  00000000fea00000-00000000fea3ffff (prio 1, rom): e1000e.rom
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet
  00000000fed1c000-00000000fed1ffff (prio 1, i/o): lpc-rcrb-mmio
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  00000000fffc0000-00000000ffffffff (prio 0, romd): pc.bios KVM
  0000000100000000-00000001bfffffff (prio 0, ram): pc.ram @0000000080000000 KVM

FlatView #4
 AS "virtio-serial-pci", root: bus master container
 Root memory region: bus master container
  0000000000000000-000000007fffffff (prio 0, ram): pc.ram @0000000000000000
)";

TEST(ParseMtreeRam, Q35SplitRamSkipsRomMmioAndVram) {
  auto r = parse_mtree_ram(kQ35);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].gpa, 0u);
  EXPECT_EQ((*r)[0].size, 0xa0000u);
  EXPECT_EQ((*r)[1].gpa, 0x100000u);
  EXPECT_EQ((*r)[1].size, 0x80000000u - 0x100000u);
  EXPECT_EQ((*r)[2].gpa, 0x100000000u);
  EXPECT_EQ((*r)[2].size, 0xc0000000u);
  for (const auto& rr : *r) {
    EXPECT_EQ(rr.name, "pc.ram");
    EXPECT_EQ(rr.hva, 0u);
  }
}

TEST(ParseMtreeRam, MergesContiguousPiecesOfOneRegion) {
  // SMRAM/PAM splits pc.ram into pieces with continuing offsets: one range, one gpa2hva.
  constexpr std::string_view kText = R"(FlatView #0
 AS "memory", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000c9fff (prio 0, ram): pc.ram @00000000000c0000
  00000000000ca000-00000000000ccfff (prio 0, ram): pc.ram @00000000000ca000
  0000000000100000-00000000001fffff (prio 0, ram): pc.ram @0000000000100000
  0000000000200000-00000000002fffff (prio 0, ram): other.ram
)";
  auto r = parse_mtree_ram(kText);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].gpa, 0u);
  EXPECT_EQ((*r)[0].size, 0xcd000u);
  EXPECT_EQ((*r)[1].gpa, 0x100000u);
  EXPECT_EQ((*r)[2].name, "other.ram");
}

TEST(ParseMtreeRam, RejectsTextWithoutMemoryView) {
  EXPECT_EQ(parse_mtree_ram("").error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(parse_mtree_ram("FlatView #0\n AS \"I/O\", root: io\n  0000-0007 (prio 0, i/o): x\n").error().code,
            ErrorCode::kCorrupt);
  EXPECT_EQ(parse_mtree_ram("FlatView #0\n AS \"memory\", root: system\n").error().code, ErrorCode::kNotFound);
}

TEST(ParseMtreeRam, HostileLinesAreIgnored) {
  constexpr std::string_view kText = R"(FlatView #0
 AS "memory", root: system
  zzzz-0000 (prio 0, ram): pc.ram
  0000000000002000-0000000000001000 (prio 0, ram): backwards
  0000000000000000-ffffffffffffffff (prio 0, ram): everything
  00000000000c0000 (prio 0, ram
  0000000000100000-00000000001fffff (prio 0, ram): pc.ram @zz
  0000000000100000-00000000001fffff (prio 0, ram): pc.ram
)";
  auto r = parse_mtree_ram(kText);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].gpa, 0x100000u);
}

TEST(ParseGpa2hva, RealReplies) {
  auto r = parse_gpa2hva("Host virtual address for 0x100000 (pc.ram) is 0x7f872ff00000\r\n");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 0x7f872ff00000u);
  EXPECT_EQ(parse_gpa2hva("No memory is mapped at address 0xfd000000\n").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(parse_gpa2hva("Memory at address 0xfed00000 is not RAM\n").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(parse_gpa2hva("Host virtual address for 0x0 (pc.ram) is (nil)\n").error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(parse_gpa2hva("").error().code, ErrorCode::kNotFound);
}

TEST(ResolveRamLayout, RunsMtreeThenGpa2hvaPerRange) {
  std::map<std::string, std::string> replies = {
      {"info mtree -f", std::string(kQ35)},
      {"gpa2hva 0x0", "Host virtual address for 0x0 (pc.ram) is 0x7f0000000000\n"},
      {"gpa2hva 0x100000", "Host virtual address for 0x100000 (pc.ram) is 0x7f0000100000\n"},
      {"gpa2hva 0x100000000", "Host virtual address for 0x100000000 (pc.ram) is 0x7f0080000000\n"},
  };
  std::vector<std::string> calls;
  HmpCommand hmp = [&](std::string_view cmd) -> Result<std::string> {
    calls.emplace_back(cmd);
    auto it = replies.find(std::string(cmd));
    if (it == replies.end()) return Error(ErrorCode::kNotFound, "unexpected");
    return it->second;
  };
  auto r = resolve_ram_layout(hmp);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(calls.size(), 4u);
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[2].hva, 0x7f0080000000u);
}

TEST(ResolveRamLayout, PropagatesMonitorErrors) {
  HmpCommand hmp = [](std::string_view) -> Result<std::string> { return Error(ErrorCode::kTimeout, "monitor hung"); };
  auto r = resolve_ram_layout(hmp);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  EXPECT_EQ(resolve_ram_layout(HmpCommand{}).error().code, ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace stallmon::introspect
