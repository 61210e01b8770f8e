// SPDX-License-Identifier: Apache-2.0
// Type profiles (issue 13): the readers' queries recorded into a profile, the profile's text
// format and its parser, Types backed by a profile (the snapshot taken through a profile equals
// the one taken through BTF), and profiles made from the DWARF of a compiled fixture
// (profile_fixture.c) compared with the offsets the compiler itself reports.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <sstream>

#include "stallmon/introspect/dwarf_types.h"
#include "stallmon/introspect/isf_types.h"
#include "stallmon/introspect/snapshot.h"
#include "stallmon/introspect/snapshot_btf.h"
#include "stallmon/introspect/snapshot_json.h"
#include "stallmon/introspect/type_profile.h"
#include "synthetic_kernel.h"

namespace stallmon::introspect {
namespace {

using testing::SyntheticKernel;

// A synthetic kernel's memory and symbols with its types from elsewhere (a profile).
class TypesFrom final : public KernelAccess {
 public:
  TypesFrom(SyntheticKernel& k, const Types& t) : k_(k), t_(t) {}
  Result<void> read(uint64_t va, void* buf, size_t len) override { return k_.read(va, buf, len); }
  Result<uint64_t> symbol(std::string_view name) const override { return k_.symbol(name); }
  std::string symbolize(uint64_t a) const override { return k_.symbolize(a); }
  std::optional<SymbolSpan> symbol_at(uint64_t a) const override { return k_.symbol_at(a); }
  Result<MemberLayout> member(std::string_view type, std::string_view path) const override {
    return btf_member_layout(t_.raw_btf(), type, path);
  }
  Result<uint64_t> type_size(std::string_view type) const override { return btf_type_size(t_.raw_btf(), type); }
  Result<uint64_t> variable_size(std::string_view name) const override { return btf_variable_size(t_.raw_btf(), name); }

 private:
  SyntheticKernel& k_;
  const Types& t_;
};

TypeProfile recorded(const KernelAccess& k, std::string build_id = "1a2b3c4d5e6f") {
  auto p = record_reader_types(k);
  EXPECT_TRUE(p.ok()) << (p.ok() ? "" : p.error().to_string());
  if (!p.ok()) return {};
  p->build_id = std::move(build_id);
  return std::move(p).value();
}

std::shared_ptr<const Types> types_of(const TypeProfile& p) {
  auto t = types_from_profile(p);
  EXPECT_TRUE(t.ok()) << (t.ok() ? "" : t.error().to_string());
  return t.ok() ? std::move(t).value() : nullptr;
}

// Every member, type size and variable size in `p` answered identically by `a` and `b`.
void expect_same_answers(const TypeProfile& p, const KernelAccess& a, const KernelAccess& b) {
  for (const ProfileType& t : p.types) {
    auto sa = a.type_size(t.name), sb = b.type_size(t.name);
    ASSERT_TRUE(sa.ok() && sb.ok()) << t.name;
    EXPECT_EQ(*sa, *sb) << t.name;
    for (const ProfileMember& m : t.members) {
      auto ma = a.member(t.name, m.path), mb = b.member(t.name, m.path);
      ASSERT_TRUE(ma.ok()) << t.name << "." << m.path << ": " << ma.error().to_string();
      ASSERT_TRUE(mb.ok()) << t.name << "." << m.path << ": " << mb.error().to_string();
      EXPECT_EQ(ma->bit_offset, mb->bit_offset) << t.name << "." << m.path;
      EXPECT_EQ(ma->bit_size, mb->bit_size) << t.name << "." << m.path;
      EXPECT_EQ(ma->size, mb->size) << t.name << "." << m.path;
      EXPECT_EQ(ma->kind, mb->kind) << t.name << "." << m.path;
    }
  }
  for (const ProfileVariable& v : p.variables) {
    auto va = a.variable_size(v.name), vb = b.variable_size(v.name);
    ASSERT_TRUE(va.ok() && vb.ok()) << v.name;
    EXPECT_EQ(*va, *vb) << v.name;
  }
}

bool has_member(const TypeProfile& p, std::string_view type, std::string_view path) {
  const ProfileType* t = p.find_type(type);
  if (!t) return false;
  for (const ProfileMember& m : t->members)
    if (m.path == path) return true;
  return false;
}

TEST(TypeProfile, RecordsExactlyWhatTheReadersAskAndTheFeatureTheKernelHas) {
  for (auto layout : {SyntheticKernel::Layout::kLinux61, SyntheticKernel::Layout::kLegacy, SyntheticKernel::Layout::kLinux310}) {
    SyntheticKernel k(2, layout);
    TypeProfile p = recorded(k);
    EXPECT_TRUE(has_member(p, "rq", "nr_running"));
    EXPECT_TRUE(has_member(p, "rq", "curr"));
    const bool v61 = layout == SyntheticKernel::Layout::kLinux61;
    // The csd flags variant of this kernel, and not the other one.
    EXPECT_EQ(has_member(p, "__call_single_data", "node.u_flags"), v61);
    EXPECT_EQ(has_member(p, "call_function_data", "pcpu"), v61);
    EXPECT_EQ(has_member(p, "call_function_data", "csd"), !v61);
    EXPECT_EQ(has_member(p, "task_struct", "__state"), v61);
    EXPECT_EQ(has_member(p, "task_struct", "state"), !v61);
    // 3.10's list_head queue: its head and csd members, found by their types.
    const bool v310 = layout == SyntheticKernel::Layout::kLinux310;
    EXPECT_EQ(has_member(p, "call_single_queue", "list"), v310);
    EXPECT_EQ(has_member(p, "call_single_data", "list"), v310);
    EXPECT_EQ(has_member(p, "list_head", "next"), v310);
    // printk's record header before 5.10 (struct log in 3.10, struct printk_log after).
    EXPECT_EQ(has_member(p, "log", "len"), v310);
    EXPECT_EQ(has_member(p, "printk_log", "len"), layout == SyntheticKernel::Layout::kLegacy);
    // Nothing the readers never ask for (the synthetic BTF has more members).
    const ProfileType* rq = p.find_type("rq");
    ASSERT_NE(rq, nullptr);
    for (const ProfileMember& m : rq->members)
      EXPECT_TRUE(m.path == "nr_running" || m.path == "curr" || m.path == "idle" || m.path == "clock" ||
                  m.path == "cfs.h_nr_running" || m.path == "cfs.h_nr_queued" || m.path == "ttwu_pending" ||
                  m.path == "wake_list.first")
          << m.path;
  }
}

TEST(TypeProfile, TextRoundTripsAndTypesAnswerAsTheBtfDid) {
  for (auto layout : {SyntheticKernel::Layout::kLinux61, SyntheticKernel::Layout::kLegacy, SyntheticKernel::Layout::kLinux310}) {
    SyntheticKernel k(2, layout);
    TypeProfile p = recorded(k);
    const std::string text = format_type_profile(p);
    auto parsed = parse_type_profile(text);
    ASSERT_TRUE(parsed.ok()) << parsed.error().to_string() << "\n" << text;
    EXPECT_EQ(format_type_profile(*parsed), text);
    auto types = types_of(*parsed);
    ASSERT_TRUE(types);
    TypesFrom via_profile(k, *types);
    expect_same_answers(p, k, via_profile);
  }
}

TEST(TypeProfile, SnapshotThroughAProfileEqualsTheBtfOne) {
  SyntheticKernel k(4, SyntheticKernel::Layout::kLinux61);
  const uint64_t fn = k.func("do_sync_core");
  const uint64_t sh = k.task(107, "sh");
  uint64_t idle0 = 0;
  ASSERT_TRUE(k.read(k.percpu("runqueues", 0) + k.off("rq", "idle"), &idle0, 8).ok());
  k.set_rq(0, sh, idle0, 5, 5, 0, 200'000'000'000ULL);
  k.set_cfd_mask(0, {1, 2, 3});
  for (uint32_t t : {1u, 3u}) k.set_csd(k.cfd_csd(0, t), 0x10, fn);
  k.set_csd(k.cfd_csd(0, 2), 0x11, fn);
  k.set_queue(2, {k.csd_node(k.cfd_csd(0, 2))});
  k.init_printk(4, 10);
  k.printk("hello", 1000);
  k.var_sizes = {{"hrtimer_interrupts", 4}, {"watchdog_touch_ts", 8}};

  TypeProfile p = recorded(k);
  auto types = types_of(*parse_type_profile(format_type_profile(p)));
  ASSERT_TRUE(types);
  TypesFrom via_profile(k, *types);
  auto a = SnapshotReader::create(k, {});
  auto b = SnapshotReader::create(via_profile, {});
  ASSERT_TRUE(a.ok() && b.ok()) << (b.ok() ? "" : b.error().to_string());
  GuestSnapshot sa = (*a)->take(), sb = (*b)->take();
  sa.taken_at_ns = sb.taken_at_ns = 0;
  sa.duration_ns = sb.duration_ns = 0;
  EXPECT_EQ(snapshot_to_json_string(sa), snapshot_to_json_string(sb));
  EXPECT_EQ(sb.cpus[2].call_single_queue.size(), 1u);
  EXPECT_FALSE(sb.printk.empty());
}

TEST(TypeProfile, AMissingMemberIsNamedWithTheProfile) {
  SyntheticKernel k(2, SyntheticKernel::Layout::kLinux61);
  TypeProfile p = recorded(k, "1a2b3c4d5e6f");
  for (ProfileType& t : p.types) {
    if (t.name == "rq") std::erase_if(t.members, [](const ProfileMember& m) { return m.path == "nr_running"; });
  }
  auto types = types_of(p);
  ASSERT_TRUE(types);
  auto m = types->member("rq", "nr_running");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().message, "profile 1a2b3c4d: no member rq.nr_running");
  EXPECT_TRUE(types->member("rq", "curr").ok());
}

TEST(TypeProfile, ParserRejectsWhatIsNotAProfileWithTheLine) {
  const std::string head = "stallmon-type-profile 1\nbuild-id 00ff\ntype rq 64\n";
  struct Case {
    std::string text, needle;
  };
  const Case cases[] = {
      {"", "empty"},
      {"hello\n", "line 1: not a stallmon type profile"},
      {"stallmon-type-profile 2\n", "version 2"},
      {"stallmon-type-profile 1\ntype rq 64\n", "no build-id"},
      {"stallmon-type-profile 1\nbuild-id 0g\n", "line 2: bad build-id"},
      {head + "member rq nr_running int 4 512 0\n", "line 4: member rq.nr_running (bit 512, 4 bytes) lies outside rq (64 bytes)"},
      {head + "member rq nr_running int 3 0 0\n", "a int of 3 bytes"},
      {head + "member rq curr ptr 4 0 0\n", "a ptr of 4 bytes"},
      {head + "member rq nr_running float 4 0 0\n", "unknown kind float"},
      {head + "member rq nr_running int 4 4 0\n", "unaligned"},
      {head + "member rq curr ptr 8 0 3\n", "bit size 3"},
      {head + "member rq nr_running int 4 0 0\nmember rq nr_running int 4 0 0\n", "line 5: member rq.nr_running twice"},
      {head + "member task pid int 4 0 0\n", "not right after its type"},
      {head + "member rq a..b int 4 0 0\n", "expected: member"},
      {head + "member rq a.b.c.d.e.f.g.h.i int 4 0 0\n", "expected: member"},
      {head + "type rq 8\n", "type rq twice"},
      {head + "type big 1048577\n", "type big of 1048577 bytes"},
      {head + "type 9x 8\n", "expected: type NAME SIZE"},
      {head + "var v 0\n", "var v of 0 bytes"},
      {head + "whatever\n", "unknown entry whatever"},
      {std::string(TypeProfile::kMaxBytes + 1, '#'), "above"},
  };
  for (const Case& c : cases) {
    auto p = parse_type_profile(c.text);
    ASSERT_FALSE(p.ok()) << c.text;
    EXPECT_NE(p.error().message.find(c.needle), std::string::npos) << p.error().message << " (want " << c.needle << ")";
  }
  std::string many = "stallmon-type-profile 1\nbuild-id 00\n";
  for (uint32_t i = 0; i <= TypeProfile::kMaxTypes; ++i) many += "type t" + std::to_string(i) + " 8\n";
  auto p = parse_type_profile(many);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().message.find("more than 1024 types"), std::string::npos) << p.error().message;
}

TEST(TypeProfile, NestedMembersKeepTheirOwnOffsetsInsideAListedParent) {
  // "node" listed (a struct at byte 8) and "node.u_flags" inside it: the synthesized struct sits
  // at node's offset, its member at its absolute one.
  auto p = parse_type_profile(
      "stallmon-type-profile 1\nbuild-id abcd\ntype csd 40\n"
      "member csd node struct 24 64 0\nmember csd node.u_flags int 4 128 0\nmember csd func ptr 8 256 0\n");
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  auto t = types_of(*p);
  ASSERT_TRUE(t);
  auto m = btf_member_layout(t->raw_btf(), "csd", "node.u_flags");
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  EXPECT_EQ(m->offset(), 16u);
  EXPECT_EQ(btf_member_layout(t->raw_btf(), "csd", "node")->offset(), 8u);
  auto bad = parse_type_profile(
      "stallmon-type-profile 1\nbuild-id abcd\ntype csd 40\n"
      "member csd node int 4 64 0\nmember csd node.u_flags int 4 128 0\n");
  ASSERT_TRUE(bad.ok());
  auto tb = types_from_profile(*bad);
  ASSERT_FALSE(tb.ok());
  EXPECT_NE(tb.error().message.find("member csd.node is a int but has members"), std::string::npos) << tb.error().message;
}

// --- DWARF (libdw) on the compiled fixture ---

struct Expected {
  std::string type, path;
  uint64_t bit_offset, bit_size, size;
};

std::vector<Expected> fixture_says(const std::string& binary) {
  std::vector<Expected> out;
  FILE* f = popen(binary.c_str(), "r");
  if (!f) return out;
  char line[256];
  while (fgets(line, sizeof line, f)) {
    std::istringstream in(line);
    Expected e;
    in >> e.type >> e.path >> e.bit_offset >> e.bit_size >> e.size;
    out.push_back(e);
  }
  pclose(f);
  return out;
}

void check_fixture(const std::string& binary) {
  auto dw = open_dwarf_types(binary);
  ASSERT_TRUE(dw.ok()) << dw.error().to_string();
  const auto expected = fixture_says(binary);
  ASSERT_GT(expected.size(), 30u);
  auto id = elf_build_id(binary);
  ASSERT_TRUE(id.ok()) << id.error().to_string();
  EXPECT_EQ(id->size(), 40u) << *id;  // sha1, ld's default
  TypeProfile p = recorded(**dw, *id);
  for (const Expected& e : expected) {
    if (e.type == "var") {
      auto s = (*dw)->variable_size(e.path);
      ASSERT_TRUE(s.ok()) << s.error().to_string();
      EXPECT_EQ(*s, e.size) << e.path;
      continue;
    }
    auto m = (*dw)->member(e.type, e.path);
    ASSERT_TRUE(m.ok()) << m.error().to_string();
    EXPECT_EQ(m->bit_offset, e.bit_offset) << e.type << "." << e.path;
    EXPECT_EQ(m->bit_size, e.bit_size) << e.type << "." << e.path;
    if (e.bit_size == 0) {
      EXPECT_EQ(m->size, e.size) << e.type << "." << e.path;
    }
    // The readers ask for it, so the profile has it, at the compiler's offset.
    EXPECT_TRUE(has_member(p, e.type, e.path)) << e.type << "." << e.path;
  }
  // Through the text format and BTF synthesis, the same answers as DWARF.
  auto parsed = parse_type_profile(format_type_profile(p));
  ASSERT_TRUE(parsed.ok()) << parsed.error().to_string();
  EXPECT_EQ(parsed->build_id, *id);
  auto types = types_of(*parsed);
  ASSERT_TRUE(types);
  SyntheticKernel unused(1, SyntheticKernel::Layout::kLinux61);
  TypesFrom via_profile(unused, *types);
  expect_same_answers(p, **dw, via_profile);
}

TEST(TypeProfileDwarf, Linux61LayoutMatchesTheCompiler) { check_fixture(PROFILE_FIXTURE_61); }
TEST(TypeProfileDwarf, LegacyCsdLayoutMatchesTheCompiler) { check_fixture(PROFILE_FIXTURE_LEGACY); }

TEST(TypeProfileDwarf, BuildIdsDifferAndMissingFilesAreNamed) {
  EXPECT_NE(*elf_build_id(PROFILE_FIXTURE_61), *elf_build_id(PROFILE_FIXTURE_LEGACY));
  auto r = open_dwarf_types("/nonexistent/vmlinux");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("/nonexistent/vmlinux"), std::string::npos);
  auto dw = open_dwarf_types(PROFILE_FIXTURE_61);
  ASSERT_TRUE(dw.ok());
  auto m = (*dw)->member("rq", "no_such_member");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, ErrorCode::kNotFound);
  EXPECT_NE(m.error().message.find("no member rq.no_such_member"), std::string::npos);
  EXPECT_EQ(debug_file_for_build_id("/usr/lib/debug", "1a2b3c"), "/usr/lib/debug/.build-id/1a/2b3c.debug");
}

// --- Volatility 3 ISF (dwarf2json's layout: byte offsets, anonymous members, bitfields) ---

constexpr const char* kIsf = R"({
  "metadata": {"format": "6.2.0", "producer": {"name": "dwarf2json", "version": "0.8.0"}},
  "base_types": {
    "unsigned int": {"size": 4, "signed": false, "kind": "int", "endian": "little"},
    "long unsigned int": {"size": 8, "signed": false, "kind": "int", "endian": "little"},
    "short int": {"size": 2, "signed": true, "kind": "int", "endian": "little"},
    "pointer": {"size": 8, "signed": false, "kind": "int", "endian": "little"}
  },
  "user_types": {
    "rq": {"kind": "struct", "size": 3264, "fields": {
      "nr_running": {"type": {"kind": "base", "name": "unsigned int"}, "offset": 4},
      "cfs": {"type": {"kind": "struct", "name": "cfs_rq"}, "offset": 128},
      "curr": {"type": {"kind": "pointer", "subtype": {"kind": "struct", "name": "task_struct"}}, "offset": 2400},
      "idle": {"type": {"kind": "pointer", "subtype": {"kind": "struct", "name": "task_struct"}}, "offset": 2408},
      "clock": {"type": {"kind": "base", "name": "long unsigned int"}, "offset": 2448}}},
    "cfs_rq": {"kind": "struct", "size": 448, "fields": {
      "h_nr_running": {"type": {"kind": "base", "name": "unsigned int"}, "offset": 20}}},
    "__call_single_node": {"kind": "struct", "size": 16, "fields": {
      "llist": {"type": {"kind": "struct", "name": "llist_node"}, "offset": 0},
      "unnamed_field_8": {"type": {"kind": "union", "name": "unnamed_5d1c"}, "offset": 8, "anonymous": true}}},
    "unnamed_5d1c": {"kind": "union", "size": 4, "fields": {
      "u_flags": {"type": {"kind": "base", "name": "unsigned int"}, "offset": 0}}},
    "__call_single_data": {"kind": "struct", "size": 32, "fields": {
      "node": {"type": {"kind": "struct", "name": "__call_single_node"}, "offset": 0},
      "func": {"type": {"kind": "pointer", "subtype": {"kind": "function"}}, "offset": 16}}},
    "llist_node": {"kind": "struct", "size": 8, "fields": {
      "next": {"type": {"kind": "pointer", "subtype": {"kind": "struct", "name": "llist_node"}}, "offset": 0}}},
    "task_struct": {"kind": "struct", "size": 9792, "fields": {
      "comm": {"type": {"kind": "array", "count": 16, "subtype": {"kind": "base", "name": "char"}}, "offset": 2976}}},
    "orc_entry": {"kind": "struct", "size": 6, "fields": {
      "sp_offset": {"type": {"kind": "base", "name": "short int"}, "offset": 0},
      "type": {"type": {"kind": "bitfield", "bit_position": 8, "bit_length": 2, "type": {"kind": "base", "name": "unsigned int"}}, "offset": 4}}}
  },
  "enums": {},
  "symbols": {
    "watchdog_touch_ts": {"type": {"kind": "base", "name": "long unsigned int"}, "address": 123}
  }
})";

TEST(TypeProfileIsf, MembersOffsetsBitfieldsAndVariables) {
  auto isf = isf_types_from_text(kIsf);
  ASSERT_TRUE(isf.ok()) << isf.error().to_string();
  const KernelAccess& k = **isf;
  auto expect = [&](const char* type, const char* path, uint64_t bit, uint32_t bits, uint32_t size, MemberLayout::Kind kind) {
    auto m = k.member(type, path);
    ASSERT_TRUE(m.ok()) << type << "." << path << ": " << m.error().to_string();
    EXPECT_EQ(m->bit_offset, bit) << type << "." << path;
    EXPECT_EQ(m->bit_size, bits) << type << "." << path;
    EXPECT_EQ(m->size, size) << type << "." << path;
    EXPECT_EQ(m->kind, kind) << type << "." << path;
  };
  expect("rq", "nr_running", 32, 0, 4, MemberLayout::Kind::kInt);
  expect("rq", "cfs.h_nr_running", (128 + 20) * 8, 0, 4, MemberLayout::Kind::kInt);
  expect("rq", "curr", 2400 * 8, 0, 8, MemberLayout::Kind::kPointer);
  expect("__call_single_data", "node.u_flags", 64, 0, 4, MemberLayout::Kind::kInt);  // through the anonymous union
  expect("orc_entry", "type", 4 * 8 + 8, 2, 4, MemberLayout::Kind::kInt);
  EXPECT_EQ(*k.type_size("rq"), 3264u);
  EXPECT_EQ(*k.variable_size("watchdog_touch_ts"), 8u);
  auto missing = k.member("rq", "ttwu_pending");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  EXPECT_NE(missing.error().message.find("no member rq.ttwu_pending"), std::string::npos);
  // task_struct.comm: char is not among base_types, so its size cannot be known: an error, not 0.
  EXPECT_FALSE(k.member("task_struct", "comm").ok());
  // Not ISF, not JSON.
  EXPECT_EQ(isf_types_from_text("{}").error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(isf_types_from_text("{").error().code, ErrorCode::kCorrupt);
}

TEST(TypeProfileIsf, ARecordedProfileFromIsfLoads) {
  auto isf = isf_types_from_text(kIsf);
  ASSERT_TRUE(isf.ok());
  // SnapshotReader::create stops at the first member the ISF lacks (task_struct.pid); what the
  // readers asked before that is recorded and loads.
  auto p = record_reader_types(**isf);
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  EXPECT_TRUE(has_member(*p, "rq", "nr_running"));
  EXPECT_TRUE(has_member(*p, "rq", "cfs.h_nr_running"));
  p->build_id = "abcdef01";
  auto t = types_from_profile(*parse_type_profile(format_type_profile(*p)));
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  auto off = (*t)->member_offset("rq", "cfs.h_nr_running");
  ASSERT_TRUE(off.ok()) << off.error().to_string();
  EXPECT_EQ(*off, 148u);
}

}  // namespace
}  // namespace stallmon::introspect
