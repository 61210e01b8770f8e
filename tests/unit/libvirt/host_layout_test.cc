// SPDX-License-Identifier: Apache-2.0
// The monitor-free RAM layout: domain XML and /proc/PID/maps as libvirt 9.0 / QEMU 7.2 produce
// them (shapes copied from real guests of the testbed), hostile and ambiguous variants.
#include "stallmon/libvirt/host_layout.h"

#include <gtest/gtest.h>

#include <cstring>

namespace stallmon::libvirt {
namespace {

using introspect::RamRange;

std::string domain_xml(const std::string& machine, const std::string& memory_kib, const std::string& extra = {},
                       const std::string& devices = {}, const std::string& cpu = {}) {
  return "<domain type='qemu' id='3'><name>g</name><uuid>8f0c3a1e-0000-4000-8000-000000000001</uuid>"
         "<memory unit='KiB'>" + memory_kib + "</memory><currentMemory unit='KiB'>" + memory_kib +
         "</currentMemory>" + extra +
         "<vcpu placement='static' current='2'>4</vcpu>"
         "<os><type arch='x86_64' machine='" + machine + "'>hvm</type></os>" + cpu +
         "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>" + devices + "</devices></domain>";
}

MapEntry anon(uint64_t start, uint64_t size, const char* perms = "rw-p") {
  return MapEntry{start, start + size, perms, 0, 0, "", false};
}

TEST(ProcMaps, ParsesPathsDeletedAndAnonymous) {
  auto m = parse_proc_maps(
      "55d0c0a00000-55d0c0b00000 r-xp 00000000 08:01 1234    /usr/bin/qemu-system-x86_64\n"
      "7f0000000000-7f0020000000 rw-p 00000000 00:00 0 \n"
      "7f1000000000-7f1040000000 rw-s 00000000 00:01 4242                       /memfd:memory-backend-memfd (deleted)\n"
      "7f2000000000-7f2000200000 rw-s 00000000 00:2f 77 /dev/hugepages/libvirt/qemu/3-g/qemu_back_mem.pc.ram.Ab3 (deleted)\n");
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  ASSERT_EQ(m->size(), 4u);
  EXPECT_EQ((*m)[0].path, "/usr/bin/qemu-system-x86_64");
  EXPECT_FALSE((*m)[0].deleted);
  EXPECT_EQ((*m)[1].path, "");
  EXPECT_EQ((*m)[1].end - (*m)[1].start, 512ull << 20);
  EXPECT_EQ((*m)[2].path, "/memfd:memory-backend-memfd");
  EXPECT_TRUE((*m)[2].deleted);
  EXPECT_EQ((*m)[2].inode, 4242u);
  EXPECT_EQ((*m)[3].perms, "rw-s");
}

TEST(ProcMaps, RejectsMalformedLines) {
  for (const char* bad : {"zz-10 rw-p 0 00:00 0\n", "20-10 rw-p 0 00:00 0\n", "10-20 rw 0 00:00 0\n",
                          "10-20 rw-p 0 00:00 x\n"}) {
    EXPECT_FALSE(parse_proc_maps(bad).ok()) << bad;
  }
}

TEST(DomainXml, PlainQ35) {
  auto s = parse_domain_memory_xml(domain_xml("pc-q35-7.2", "524288"));
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  EXPECT_EQ(s->machine, "pc-q35-7.2");
  EXPECT_EQ(s->memory_bytes, 512ull << 20);
  ASSERT_EQ(s->boot.size(), 1u);
  EXPECT_EQ(s->boot[0].id, "pc.ram");
  EXPECT_EQ(s->boot[0].backing, RamBacking::kAnonymous);
  EXPECT_EQ(s->vcpus_max, 4u);
  EXPECT_EQ(s->vcpus_current, 2u);
}

TEST(DomainXml, BackingNumaAndDevices) {
  std::string xml = domain_xml(
      "pc-i440fx-7.2", "3145728",
      "<maxMemory slots='4' unit='KiB'>8388608</maxMemory><memoryBacking><source type='memfd'/>"
      "<access mode='shared'/></memoryBacking>",
      "<memory model='dimm'><target><size unit='KiB'>1048576</size><node>1</node></target>"
      "<alias name='dimm0'/><address type='dimm' slot='0' base='0x140000000'/></memory>",
      "<cpu><numa><cell id='1' cpus='2-3' memory='1048576' unit='KiB'/>"
      "<cell id='0' cpus='0-1' memory='1' unit='GiB'/></numa></cpu>");
  auto s = parse_domain_memory_xml(xml);
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  ASSERT_EQ(s->boot.size(), 2u);
  EXPECT_EQ(s->boot[0].id, "ram-node0");  // node order, not XML order
  EXPECT_EQ(s->boot[1].id, "ram-node1");
  EXPECT_EQ(s->boot[0].backing, RamBacking::kMemfd);
  ASSERT_EQ(s->devices.size(), 1u);
  EXPECT_EQ(s->devices[0].id, "memdimm0");
  EXPECT_EQ(s->devices[0].base, 0x140000000ull);
  EXPECT_EQ(s->devices[0].size, 1ull << 30);
  EXPECT_EQ(s->boot_bytes(), 2ull << 30);
}

TEST(DomainXml, HugepagesAndFile) {
  auto h = parse_domain_memory_xml(domain_xml("pc-q35-7.2", "524288", "<memoryBacking><hugepages/></memoryBacking>"));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->boot[0].backing, RamBacking::kHugepages);
  auto f = parse_domain_memory_xml(domain_xml("pc-q35-7.2", "524288", "<memoryBacking><source type='file'/></memoryBacking>"));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->boot[0].backing, RamBacking::kFile);
}

TEST(DomainXml, RefusesWhatIsNotModelled) {
  auto micro = parse_domain_memory_xml(domain_xml("microvm", "524288"));
  ASSERT_FALSE(micro.ok());
  EXPECT_EQ(micro.error().code, ErrorCode::kUnsupported);
  auto nv = parse_domain_memory_xml(domain_xml("pc-q35-7.2", "1048576", {},
                                               "<memory model='nvdimm'><target><size>524288</size></target>"
                                               "<alias name='nvdimm0'/></memory>"));
  ASSERT_FALSE(nv.ok());
  EXPECT_EQ(nv.error().code, ErrorCode::kUnsupported);
  // Cells that do not add up, devices bigger than <memory>, a size past 64 TiB, broken XML.
  EXPECT_FALSE(parse_domain_memory_xml(domain_xml("pc-q35-7.2", "524288", {}, {},
                                                  "<cpu><numa><cell id='0' memory='1024'/></numa></cpu>")).ok());
  EXPECT_FALSE(parse_domain_memory_xml(domain_xml("pc-q35-7.2", "1024", {},
                                                  "<memory model='dimm'><target><size>2048</size></target>"
                                                  "<alias name='dimm0'/></memory>")).ok());
  EXPECT_FALSE(parse_domain_memory_xml(domain_xml("pc-q35-7.2", "99999999999999999")).ok());
  EXPECT_FALSE(parse_domain_memory_xml("<domain><os><type").ok());
  // No network, no entity expansion: an external entity is not fetched and the parse fails or
  // yields nothing usable.
  auto xxe = parse_domain_memory_xml(
      "<!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>" + domain_xml("pc-q35-7.2", "&x;"));
  EXPECT_FALSE(xxe.ok());
}

DomainMemorySpec spec_of(const std::string& xml) {
  auto s = parse_domain_memory_xml(xml);
  EXPECT_TRUE(s.ok()) << s.error().to_string();
  return s.ok() ? *s : DomainMemorySpec{};
}

TEST(DeriveLayout, Q35SmallGuestIsAllBelow4G) {
  const uint64_t ram = 0x7f0000000000;
  std::vector<MapEntry> maps = {anon(0x7e0000000000, 64ull << 20), anon(ram, 512ull << 20),
                                anon(0x7ff000000000, 1ull << 30, "rwxp")};  // TCG code buffer
  auto r = derive_ram_layout(spec_of(domain_xml("pc-q35-7.2", "524288")), maps);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].gpa, 0u);
  EXPECT_EQ((*r)[0].size, 0xa0000u);
  EXPECT_EQ((*r)[0].hva, ram);
  EXPECT_EQ((*r)[1].gpa, 0x100000u);
  EXPECT_EQ((*r)[1].size, (512ull << 20) - 0x100000);
  EXPECT_EQ((*r)[1].hva, ram + 0x100000);
  EXPECT_EQ((*r)[1].name, "pc.ram");
}

TEST(DeriveLayout, Q35AndI440fxSplitAround4G) {
  const uint64_t ram = 0x7e0000000000;
  std::vector<MapEntry> maps = {anon(ram, 4ull << 30)};
  auto q = derive_ram_layout(spec_of(domain_xml("pc-q35-7.2", "4194304")), maps);
  ASSERT_TRUE(q.ok()) << q.error().to_string();
  ASSERT_EQ(q->size(), 3u);
  EXPECT_EQ((*q)[1].gpa + (*q)[1].size, 0x80000000u);  // q35: 2 GiB below when RAM >= 2.75 GiB
  EXPECT_EQ((*q)[2].gpa, 4ull << 30);
  EXPECT_EQ((*q)[2].size, 2ull << 30);
  EXPECT_EQ((*q)[2].hva, ram + 0x80000000);

  auto p = derive_ram_layout(spec_of(domain_xml("pc-i440fx-7.2", "4194304")), maps);
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  ASSERT_EQ(p->size(), 3u);
  EXPECT_EQ((*p)[1].gpa + (*p)[1].size, 0xc0000000u);  // i440fx: 3 GiB below when RAM >= 3.5 GiB
  EXPECT_EQ((*p)[2].size, 1ull << 30);
  EXPECT_EQ((*p)[2].hva, ram + 0xc0000000);

  // 2.5 GiB: q35 keeps it all below (< 2.75 GiB); so does i440fx (< 3.5 GiB).
  std::vector<MapEntry> m25 = {anon(ram, 2560ull << 20)};
  auto q25 = derive_ram_layout(spec_of(domain_xml("pc-q35-7.2", "2621440")), m25);
  ASSERT_TRUE(q25.ok());
  EXPECT_EQ(q25->size(), 2u);
  EXPECT_EQ(q25->back().gpa + q25->back().size, 2560ull << 20);
}

TEST(DeriveLayout, NumaCellsSplitAcrossTheHole) {
  // Two memfd cells of 2 GiB on q35: the container is cut at 2 GiB (exactly the cell border).
  std::string xml = domain_xml("pc-q35-7.2", "4194304", "<memoryBacking><source type='memfd'/></memoryBacking>", {},
                               "<cpu><numa><cell id='0' memory='2097152'/><cell id='1' memory='2097152'/></numa></cpu>");
  std::vector<MapEntry> maps = {
      MapEntry{0x7f0000000000, 0x7f0080000000, "rw-s", 0, 901, "/memfd:memory-backend-memfd", true},  // node1
      MapEntry{0x7e0000000000, 0x7e0080000000, "rw-s", 0, 900, "/memfd:memory-backend-memfd", true},  // node0
  };
  auto r = derive_ram_layout(spec_of(xml), maps);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[1].name, "ram-node0");
  EXPECT_EQ((*r)[1].hva, 0x7e0000000000u + 0x100000);
  EXPECT_EQ((*r)[2].name, "ram-node1");
  EXPECT_EQ((*r)[2].gpa, 4ull << 30);
  EXPECT_EQ((*r)[2].hva, 0x7f0000000000u);  // inode order: node0 was created first
}

TEST(DeriveLayout, HugepagesByNameAndDimmAtItsBase) {
  std::string xml = domain_xml(
      "pc-q35-7.2", "786432", "<memoryBacking><hugepages/></memoryBacking>",
      "<memory model='dimm'><target><size unit='KiB'>262144</size><node>0</node></target>"
      "<alias name='dimm0'/><address type='dimm' slot='0' base='0x100000000'/></memory>");
  std::vector<MapEntry> maps = {
      MapEntry{0x7f4000000000, 0x7f4010000000, "rw-s", 0, 12, "/dev/hugepages/libvirt/qemu/3-g/qemu_back_mem.memdimm0.XyZ", true},
      MapEntry{0x7f5000000000, 0x7f5020000000, "rw-s", 0, 11, "/dev/hugepages/libvirt/qemu/3-g/qemu_back_mem.pc.ram.AbC", true},
  };
  auto r = derive_ram_layout(spec_of(xml), maps);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].hva, 0x7f5000000000u);
  EXPECT_EQ((*r)[2].gpa, 0x100000000u);
  EXPECT_EQ((*r)[2].size, 256ull << 20);
  EXPECT_EQ((*r)[2].hva, 0x7f4000000000u);
  EXPECT_EQ((*r)[2].name, "memdimm0");
}

TEST(DeriveLayout, AnonymousDimmOfAnotherSize) {
  std::string xml = domain_xml("pc-q35-7.2", "786432", {},
                               "<memory model='dimm'><target><size unit='KiB'>262144</size></target>"
                               "<alias name='dimm0'/><address type='dimm' slot='0' base='0x100000000'/></memory>");
  auto r = derive_ram_layout(spec_of(xml), {anon(0x7f0000000000, 512ull << 20), anon(0x7e0000000000, 256ull << 20)});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->back().hva, 0x7e0000000000u);
}

TEST(DeriveLayout, RefusesToGuess) {
  auto spec = spec_of(domain_xml("pc-q35-7.2", "524288"));
  // Two anonymous mappings of the RAM size: which one is RAM cannot be known without the monitor.
  auto two = derive_ram_layout(spec, {anon(0x7f0000000000, 512ull << 20), anon(0x7e0000000000, 512ull << 20)});
  ASSERT_FALSE(two.ok());
  EXPECT_EQ(two.error().code, ErrorCode::kInvalidArgument);
  // Nothing of that size (a merged or split VMA), or only read-only/executable ones.
  auto none = derive_ram_layout(spec, {anon(0x7f0000000000, (512ull << 20) + 4096), anon(0x7e0000000000, 512ull << 20, "r--p")});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, ErrorCode::kNotFound);
  // A split moved by the command line.
  std::string cmdline("qemu\0-machine\0pc-q35-7.2,max-ram-below-4g=1G\0", 44);
  auto moved = derive_ram_layout(spec, {anon(0x7f0000000000, 512ull << 20)}, cmdline);
  ASSERT_FALSE(moved.ok());
  EXPECT_EQ(moved.error().code, ErrorCode::kUnsupported);
  // A DIMM without a base yet, and one placed over boot RAM.
  std::string nobase = domain_xml("pc-q35-7.2", "786432", {},
                                  "<memory model='dimm'><target><size unit='KiB'>262144</size></target>"
                                  "<alias name='dimm0'/></memory>");
  auto nb = derive_ram_layout(spec_of(nobase), {anon(0x7f0000000000, 512ull << 20), anon(0x7e0000000000, 256ull << 20)});
  ASSERT_FALSE(nb.ok());
  std::string over = domain_xml("pc-q35-7.2", "786432", {},
                                "<memory model='dimm'><target><size unit='KiB'>262144</size></target>"
                                "<alias name='dimm0'/><address type='dimm' base='0x1000000'/></memory>");
  auto ov = derive_ram_layout(spec_of(over), {anon(0x7f0000000000, 512ull << 20), anon(0x7e0000000000, 256ull << 20)});
  ASSERT_FALSE(ov.ok());
  EXPECT_EQ(ov.error().code, ErrorCode::kCorrupt);
}

// Guest memory made up in this process: a PhysicalMemory over a buffer.
class BufferMemory : public introspect::PhysicalMemory {
 public:
  explicit BufferMemory(std::vector<uint8_t> b) : buf_(std::move(b)) {
    ranges_.push_back(introspect::PhysRange{0, buf_.size()});
  }
  Result<void> read(uint64_t gpa, void* out, size_t len) override {
    if (gpa + len > buf_.size()) return Error(ErrorCode::kIo, "outside");
    std::memcpy(out, buf_.data() + gpa, len);
    return Ok();
  }
  const std::vector<introspect::PhysRange>& ranges() const override { return ranges_; }

 private:
  std::vector<uint8_t> buf_;
  std::vector<introspect::PhysRange> ranges_;
};

TEST(ValidateLayout, WantsReadableRangesAndFirmwareInLowRam) {
  std::vector<RamRange> ranges = {{0, 0xa0000, 1, "pc.ram"}, {0x100000, 0x100000, 1, "pc.ram"}};
  std::vector<uint8_t> ivt(0x200000, 0);
  for (int v = 0; v < 32; ++v) {
    ivt[v * 4 + 2] = 0x00;
    ivt[v * 4 + 3] = 0xf0;  // segment F000
  }
  BufferMemory bios(ivt);
  auto ok = validate_ram_layout(bios, ranges);
  ASSERT_TRUE(ok.ok()) << ok.error().to_string();
  EXPECT_NE(ok->find("interrupt vector table"), std::string::npos);

  BufferMemory zero(std::vector<uint8_t>(0x200000, 0));
  EXPECT_FALSE(validate_ram_layout(zero, ranges).ok());

  BufferMemory short_mem(std::vector<uint8_t>(0x150000, 1));  // the second range's end is missing
  EXPECT_FALSE(validate_ram_layout(short_mem, ranges).ok());
}

}  // namespace
}  // namespace stallmon::libvirt
