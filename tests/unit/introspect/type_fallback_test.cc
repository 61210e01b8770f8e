// SPDX-License-Identifier: Apache-2.0
// Where Kernel::discover takes types from when the guest has no usable BTF (issue 13): the
// documented order guest BTF → profile directory by BUILD-ID → host debuginfo by BUILD-ID, the
// BUILD-ID checks, and errors that say what was tried.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "fake_guest.h"
#include "stallmon/introspect/dwarf_types.h"
#include "stallmon/introspect/kernel.h"
#include "stallmon/introspect/type_profile.h"

namespace stallmon::introspect {
namespace {

namespace fs = std::filesystem;
using fake::FakeGuest;
using fake::FakeGuestOptions;

class TypeFallback : public ::testing::Test {
 protected:
  void SetUp() override {
    clear_shared_kernel_cache();
    dir_ = fs::temp_directory_path() / ("stallmon-type-fallback-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A profile that puts rq.nr_running where `shift` bytes past the fake's BTF says.
  void write_profile(const std::string& file_id, const std::string& build_id, uint64_t shift = 0) {
    std::ofstream(dir_ / (file_id + ".profile"))
        << "stallmon-type-profile 1\nbuild-id " << build_id << "\ntype rq " << FakeGuest::kRqSize
        << "\nmember rq nr_running int 4 " << (FakeGuest::kRqNrRunning + shift) * 8 << " 0\n"
        << "member rq curr ptr 8 " << FakeGuest::kRqCurr * 8 << " 0\n";
  }
  DiscoverOptions options() const {
    DiscoverOptions d;
    d.ignore_guest_btf = true;
    d.profile_dir = dir_.string();
    d.debug_dir = (dir_ / "debug").string();
    return d;
  }
  fs::path dir_;
};

TEST_F(TypeFallback, GuestBtfComesFirst) {
  FakeGuest g;
  write_profile(g.options().build_id, g.options().build_id, 8);
  DiscoverOptions d = options();
  d.ignore_guest_btf = false;
  auto k = Kernel::discover(g.memory(), d);
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  EXPECT_EQ((*k)->types().origin(), "");
  EXPECT_EQ(*(*k)->types().member_offset("rq", "nr_running"), FakeGuest::kRqNrRunning);
}

TEST_F(TypeFallback, ProfileDirectoryByBuildIdWhenGuestBtfIsIgnored) {
  FakeGuest g;
  write_profile(g.options().build_id, g.options().build_id, 8);
  auto k = Kernel::discover(g.memory(), options());
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  EXPECT_EQ((*k)->types().origin(), "profile 0a1b2c3d");
  EXPECT_EQ(*(*k)->types().member_offset("rq", "nr_running"), FakeGuest::kRqNrRunning + 8);
  auto missing = (*k)->types().member("task_struct", "pid");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().message, "profile 0a1b2c3d: no type task_struct");
}

TEST_F(TypeFallback, AnotherKernelsProfileIsRefusedAndEveryStepIsNamed) {
  FakeGuest g;
  write_profile(g.options().build_id, "ffff0000");  // named for the guest, made for another build
  auto k = Kernel::discover(g.memory(), options());
  ASSERT_FALSE(k.ok());
  const std::string& m = k.error().message;
  EXPECT_NE(m.find("no type information for BUILD-ID " + g.options().build_id), std::string::npos) << m;
  EXPECT_NE(m.find("guest BTF: ignored"), std::string::npos) << m;
  EXPECT_NE(m.find("profile ffff0000 is for another kernel"), std::string::npos) << m;
  EXPECT_NE(m.find("host debuginfo: "), std::string::npos) << m;
  EXPECT_NE(m.find(".build-id/0a/1b2c3d4e5f60718293a4b5c6d7e8f901234567.debug: cannot open"), std::string::npos) << m;
}

// Kernels before 5.9 (CentOS 7's 3.10 among them) write neither BUILD-ID nor, before 6.0, the
// kallsyms symbols into VMCOREINFO: the profile directory's System.map is found by OSRELEASE (as
// /boot/System.map-OSRELEASE is named), the BUILD-ID read from the kernel's own .notes through it,
// and the type profile found by that BUILD-ID, with nothing named on the command line.
TEST_F(TypeFallback, KernelWithoutBuildIdOrKallsymsInVmcoreinfoIsFoundByOsreleaseAndNotes) {
  FakeGuestOptions o;
  o.vmcoreinfo_build_id = false;
  o.vmcoreinfo_kallsyms = false;
  FakeGuest g(o);
  ASSERT_EQ(g.vmcoreinfo_text().find("BUILD-ID"), std::string::npos);
  auto write_map = [&](uint64_t shift) {
    std::ofstream f(dir_ / (o.osrelease + ".System.map"));
    for (const Symbol& sym : g.symbols()) {
      const uint64_t a = sym.type == 'A' ? sym.address : sym.address - o.kaslr_offset + shift;
      char line[160];
      std::snprintf(line, sizeof line, "%016llx %c %s\n", static_cast<unsigned long long>(a), sym.type, sym.name.c_str());
      f << line;
    }
  };
  // No map: the error says what was looked for.
  auto none = Kernel::discover(g.memory(), options());
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message.find("no System.map for OSRELEASE " + o.osrelease), std::string::npos)
      << none.error().message;

  write_map(0);
  write_profile(o.build_id, o.build_id, 8);
  auto k = Kernel::discover(g.memory(), options());
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  EXPECT_EQ((*k)->vmcoreinfo().build_id, o.build_id);  // from .notes
  EXPECT_EQ(*(*k)->symbol("_stext"), g.text_va());
  EXPECT_EQ((*k)->types().origin(), "profile 0a1b2c3d");
  EXPECT_EQ(*(*k)->types().member_offset("rq", "nr_running"), FakeGuest::kRqNrRunning + 8);

  // Another build's map under the same release fails VMCOREINFO's symbol check.
  clear_shared_kernel_cache();
  write_map(0x200000);
  auto other = Kernel::discover(g.memory(), options());
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.error().code, ErrorCode::kCorrupt) << other.error().to_string();

  // Notes the guest garbled: symbols, but no BUILD-ID to find types by.
  clear_shared_kernel_cache();
  write_map(0);
  g.put_va<uint32_t>(g.symbol("__start_notes"), 0x7fffffffu);  // the first note's namesz
  auto garbled = Kernel::discover(g.memory(), options());
  ASSERT_FALSE(garbled.ok());
  EXPECT_NE(garbled.error().message.find("no type information for BUILD-ID (none)"), std::string::npos)
      << garbled.error().message;

  // An OSRELEASE that is not a plain file name never names a host path.
  clear_shared_kernel_cache();
  FakeGuestOptions p = o;
  p.osrelease = "../" + o.osrelease;
  FakeGuest h(p);
  auto outside = Kernel::discover(h.memory(), options());
  ASSERT_FALSE(outside.ok());
  EXPECT_EQ(outside.error().message.find("no System.map for OSRELEASE"), std::string::npos) << outside.error().message;
}

TEST_F(TypeFallback, ExplicitProfileMustMatchTheGuest) {
  FakeGuest g;
  write_profile("other", "ffff0000");
  DiscoverOptions d;
  d.profile_path = (dir_ / "other.profile").string();
  auto k = Kernel::discover(g.memory(), d);
  ASSERT_FALSE(k.ok());
  EXPECT_NE(k.error().message.find("is for another kernel (the guest's BUILD-ID is " + g.options().build_id + ")"),
            std::string::npos)
      << k.error().message;
}

TEST_F(TypeFallback, HostDebuginfoByBuildIdIsReadWithLibdw) {
  // The guest's BUILD-ID made the fixture's: its DWARF is found under debug/.build-id/.
  auto id = elf_build_id(PROFILE_FIXTURE_61);
  ASSERT_TRUE(id.ok()) << id.error().to_string();
  FakeGuestOptions o;
  o.build_id = *id;
  FakeGuest g(o);
  const fs::path debug = debug_file_for_build_id((dir_ / "debug").string(), *id);
  fs::create_directories(debug.parent_path());
  fs::copy_file(PROFILE_FIXTURE_61, debug);
  auto k = Kernel::discover(g.memory(), options());
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  EXPECT_EQ((*k)->types().origin(), "profile " + id->substr(0, 8));
  EXPECT_EQ(*(*k)->types().member_offset("rq", "nr_running"), 4u);  // profile_fixture.c: after int lock
  EXPECT_TRUE((*k)->types().has_member("__call_single_data", "node.u_flags"));
  EXPECT_FALSE((*k)->types().has_member("rq", "cpu_load"));  // in the vmlinux, never asked for
  // A vmlinux with another BUILD-ID under the guest's name is refused.
  FakeGuest other;
  const fs::path wrong = debug_file_for_build_id((dir_ / "debug").string(), other.options().build_id);
  fs::create_directories(wrong.parent_path());
  fs::copy_file(PROFILE_FIXTURE_61, wrong);
  auto k2 = Kernel::discover(other.memory(), options());
  ASSERT_FALSE(k2.ok());
  EXPECT_NE(k2.error().message.find("is not the guest's"), std::string::npos) << k2.error().message;
}

TEST_F(TypeFallback, HostDebuginfoWhereDebiansDbgPackageInstallsIt) {
  // linux-image-6.1.0-56-amd64-dbg: /usr/lib/debug/boot/vmlinux-6.1.0-56-amd64, no .build-id link.
  auto id = elf_build_id(PROFILE_FIXTURE_61);
  ASSERT_TRUE(id.ok());
  FakeGuestOptions o;
  o.build_id = *id;
  FakeGuest g(o);
  fs::create_directories(dir_ / "debug" / "boot");
  fs::copy_file(PROFILE_FIXTURE_61, dir_ / "debug" / "boot" / ("vmlinux-" + o.osrelease));
  auto k = Kernel::discover(g.memory(), options());
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  EXPECT_EQ(*(*k)->types().member_offset("rq", "nr_running"), 4u);
  // A guest's OSRELEASE never leads the search outside the debug directory.
  clear_shared_kernel_cache();
  o.osrelease = "../../boot";
  FakeGuest h(o);
  auto k2 = Kernel::discover(h.memory(), options());
  ASSERT_FALSE(k2.ok());
  EXPECT_EQ(k2.error().message.find("../../boot"), std::string::npos) << k2.error().message;
}

TEST_F(TypeFallback, SystemMapBesideTheProfileWhenKallsymsCannotBeDecoded) {
  FakeGuest g;
  g.put_va<uint32_t>(g.symbol("kallsyms_num_syms"), 0xffffffffu);  // undecodable kallsyms
  DiscoverOptions d = options();
  d.ignore_guest_btf = false;
  auto without = Kernel::discover(g.memory(), d);
  ASSERT_FALSE(without.ok());
  EXPECT_NE(without.error().message.find("no System.map for BUILD-ID " + g.options().build_id), std::string::npos)
      << without.error().message;
  {
    // Link-time addresses, as in the build's System.map: discovery relocates by KERNELOFFSET.
    std::ofstream f(dir_ / (g.options().build_id + ".System.map"));
    char line[512];
    for (const Symbol& s : g.symbols()) {
      const uint64_t a = s.type == 'A' ? s.address : s.address - g.options().kaslr_offset;
      std::snprintf(line, sizeof line, "%016llx %c %s\n", static_cast<unsigned long long>(a), s.type, s.name.c_str());
      f << line;
    }
  }
  clear_shared_kernel_cache();
  auto k = Kernel::discover(g.memory(), d);
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  EXPECT_EQ(*(*k)->symbol("_stext"), g.text_va());
  EXPECT_EQ(*(*k)->types().member_offset("rq", "nr_running"), FakeGuest::kRqNrRunning);  // guest BTF via the map's __start_BTF
}

}  // namespace
}  // namespace stallmon::introspect
