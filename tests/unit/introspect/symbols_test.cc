// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/symbols.h"

#include <gtest/gtest.h>

#include "fake_guest.h"

namespace stallmon::introspect {
namespace {

using fake::FakeGuest;

std::vector<Symbol> sample() {
  std::string long_name(300, 'q');  // > 127 encoded bytes: 2-byte length
  return {
      {"_text", 0xffffffff81000000ull, 'T'},
      {"runqueues", 0x32440, 'A'},          // absolute per-cpu
      {"do_sync_core", 0xffffffff81045670ull, 't'},
      {long_name, 0xffffffff81050000ull, 't'},
      {"kallsyms_names", 0xffffffff82000000ull, 'R'},
      {"jiffies", 0xffffffff83005000ull, 'D'},
  };
}

KallsymsTables tables(const FakeGuest::EncodedKallsyms& e, uint32_t n) {
  KallsymsTables t;
  t.num_syms = n;
  t.names = e.names;
  t.token_table = e.token_table;
  t.token_index = e.token_index;
  t.offsets = e.offsets;
  t.relative_base = e.relative_base;
  return t;
}

TEST(DecodeKallsyms, AbsolutePercpuRoundTrip) {
  auto syms = sample();
  auto e = FakeGuest::encode_kallsyms(syms, 0xffffffff81000000ull, true);
  auto r = decode_kallsyms(tables(e, syms.size()));
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), syms.size());
  for (size_t i = 0; i < syms.size(); ++i) {
    EXPECT_EQ((*r)[i].name, syms[i].name);
    EXPECT_EQ((*r)[i].address, syms[i].address) << syms[i].name;
    EXPECT_EQ((*r)[i].type, syms[i].type);
  }
}

TEST(DecodeKallsyms, RelativeOnlyAndAbsoluteAddresses) {
  std::vector<Symbol> syms = {{"_text", 0xffffffff81000000ull, 'T'}, {"b", 0xffffffff81000100ull, 'd'}};
  auto e = FakeGuest::encode_kallsyms(syms, 0xffffffff81000000ull, false);
  auto r = decode_kallsyms(tables(e, 2));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[1].address, 0xffffffff81000100ull);
  // !CONFIG_KALLSYMS_BASE_RELATIVE: kallsyms_addresses.
  KallsymsTables t = tables(e, 2);
  std::vector<uint64_t> addrs = {1, 2};
  t.offsets = {};
  t.addresses = addrs;
  r = decode_kallsyms(t);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[1].address, 2u);
}

TEST(DecodeKallsyms, CorruptTablesAreErrors) {
  auto syms = sample();
  auto e = FakeGuest::encode_kallsyms(syms, 0xffffffff81000000ull, true);
  const uint32_t n = syms.size();
  {  // names truncated in the middle of the long (2-byte length) name
    auto t = tables(e, n);
    t.names = t.names.subspan(0, 40);
    EXPECT_EQ(decode_kallsyms(t).error().code, ErrorCode::kCorrupt);
  }
  {  // more symbols than names
    auto t = tables(e, n + 1);
    std::vector<int32_t> more(e.offsets);
    more.push_back(0);
    t.offsets = more;
    EXPECT_EQ(decode_kallsyms(t).error().code, ErrorCode::kCorrupt);
  }
  {  // fewer offsets than symbols
    auto t = tables(e, n);
    t.offsets = t.offsets.subspan(0, n - 1);
    EXPECT_EQ(decode_kallsyms(t).error().code, ErrorCode::kCorrupt);
  }
  {  // token index outside the table
    auto idx = e.token_index;
    idx[7] = static_cast<uint16_t>(e.token_table.size() + 5);
    auto t = tables(e, n);
    t.token_index = idx;
    EXPECT_EQ(decode_kallsyms(t).error().code, ErrorCode::kCorrupt);
  }
  {  // last token not terminated
    auto tt = e.token_table;
    tt.back() = 'x';
    auto t = tables(e, n);
    t.token_table = tt;
    EXPECT_EQ(decode_kallsyms(t).error().code, ErrorCode::kCorrupt);
  }
  {  // limits
    auto t = tables(e, n);
    SymbolLimits l;
    l.max_name_len = 100;
    EXPECT_EQ(decode_kallsyms(t, l).error().code, ErrorCode::kLimit);
    l = SymbolLimits{};
    l.max_symbols = 3;
    EXPECT_EQ(decode_kallsyms(t, l).error().code, ErrorCode::kLimit);
  }
  {  // a zero length
    auto names = e.names;
    names[0] = 0;
    auto t = tables(e, n);
    t.names = names;
    EXPECT_EQ(decode_kallsyms(t).error().code, ErrorCode::kCorrupt);
  }
  EXPECT_EQ(decode_kallsyms(KallsymsTables{}).error().code, ErrorCode::kCorrupt);
}

TEST(SymbolTable, LookupAndFormat) {
  SymbolTable t(sample());
  EXPECT_EQ(*t.address("do_sync_core"), 0xffffffff81045670ull);
  EXPECT_EQ(t.address("missing").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(t.format(0xffffffff81045670ull + 0x1f), "do_sync_core+0x1f");
  EXPECT_EQ(t.format(0xffffffff81045670ull), "do_sync_core");
  EXPECT_EQ(t.format(0x10), "0x10");  // below every non-absolute symbol; per-cpu ones skipped
  EXPECT_EQ(t.format(0xffffffff83005000ull + (2 << 20)), "0xffffffff83205000");  // too far
  // Copies keep a working name index.
  SymbolTable copy = t;
  t = SymbolTable();
  EXPECT_EQ(*copy.address("jiffies"), 0xffffffff83005000ull);
  auto moved = copy.relocate(0x1000);
  EXPECT_EQ(*moved.address("jiffies"), 0xffffffff83006000ull);
  EXPECT_EQ(*moved.address("runqueues"), 0x32440u);  // absolute: not relocated
}

TEST(SymbolTable, SystemMapAndProcKallsymsText) {
  auto r = SymbolTable::from_system_map_text(
      "ffffffff81000000 T _text\n"
      "0000000000032440 A runqueues\n"
      "ffffffff81045670 t do_sync_core\n"
      "ffffffffc0a01000 t ext4_fill_super\t[ext4]\n");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->size(), 3u);
  EXPECT_EQ(r->find("runqueues")->type, 'A');
  EXPECT_FALSE(r->find("ext4_fill_super"));
  EXPECT_EQ(SymbolTable::from_system_map_text("zz T x\n").error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(SymbolTable::from_system_map_text("ffff\n").error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(SymbolTable::from_system_map_text("").error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(SymbolTable::from_system_map("/nonexistent/System.map").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(SymbolTable::from_vmlinux("/nonexistent/vmlinux").error().code, ErrorCode::kNotFound);
}

extern "C" int stallmon_symbols_test_marker() { return 42; }

TEST(SymbolTable, FromElfSymtab) {
  // This test binary is an ELF with a .symtab.
  auto t = SymbolTable::from_vmlinux("/proc/self/exe");
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  const Symbol* s = t->find("stallmon_symbols_test_marker");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->type, 'T');
  EXPECT_EQ(t->from_vmlinux("/proc/self/cmdline").error().code, ErrorCode::kCorrupt);
}

}  // namespace
}  // namespace stallmon::introspect
