// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include <cstring>

#include "stallmon/introspect/kernel_memory.h"

namespace stallmon::introspect {
namespace {

constexpr uint64_t kP = 0x63;     // present|rw|accessed|dirty
constexpr uint64_t kPS = 0x80;    // large page
constexpr uint64_t kNX = 1ull << 63;

// Hand-built page tables in a 16 MiB image: the top table at 0x1000, tables allocated upward.
class Tables {
 public:
  explicit Tables(bool l5) : l5_(l5), mem_(RawImageMemory::zeroed(0, 16 << 20)) {}
  std::shared_ptr<RawImageMemory> mem() { return mem_; }
  uint64_t top() const { return 0x1000; }
  // Creates intermediate tables down to `level` (0 = PTE table) and writes `entry` there.
  void set(uint64_t va, int level, uint64_t entry) {
    int levels = l5_ ? 5 : 4;
    uint64_t table = top();
    for (int l = levels - 1; l > level; --l) {
      uint64_t slot = table + ((va >> (12 + 9 * l)) & 511) * 8;
      uint64_t e = 0;
      EXPECT_TRUE(mem_->read(slot, &e, 8).ok());
      if (!(e & 1)) {
        e = next_ | kP;
        next_ += 0x1000;
        EXPECT_TRUE(mem_->write_value(slot, e).ok());
      }
      table = e & 0x000ffffffffff000ull;
    }
    EXPECT_TRUE(mem_->write_value(table + ((va >> (12 + 9 * level)) & 511) * 8, entry).ok());
  }

 private:
  bool l5_;
  std::shared_ptr<RawImageMemory> mem_;
  uint64_t next_ = 0x2000;
};

class Paging : public ::testing::TestWithParam<bool> {};

TEST_P(Paging, FourKTwoMOneGAndNonPresent) {
  const bool l5 = GetParam();
  Tables t(l5);
  const uint64_t va4k = 0xffffc90000123000ull, va2m = 0xffffc90040000000ull, va1g = 0xffff888000000000ull;
  t.set(va4k, 0, 0x00abc000 | kP | kNX);
  t.set(va2m, 1, 0x00600000 | kP | kPS);
  t.set(va1g, 2, 0x00000000 | kP | kPS | kNX);
  auto& m = *t.mem();
  EXPECT_EQ(*walk_page_tables(m, t.top(), l5, va4k + 0x123), 0xabc123u);
  EXPECT_EQ(*walk_page_tables(m, t.top(), l5, va2m + 0x12345), 0x612345u);
  EXPECT_EQ(*walk_page_tables(m, t.top(), l5, va1g + 0x3456789), 0x3456789u);
  // Neighbour of the 4K page: PTE not present.
  auto r = walk_page_tables(m, t.top(), l5, va4k + 0x1000);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnmapped);
  EXPECT_EQ(r.error().address.value_or(0), va4k + 0x1000);
  EXPECT_NE(r.error().message.find("PTE"), std::string::npos) << r.error().message;
  // Nothing at the top level.
  r = walk_page_tables(m, t.top(), l5, 0xffffea0000000000ull);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnmapped);
  // Non-canonical.
  r = walk_page_tables(m, t.top(), l5, l5 ? 0x0100000000000000ull : 0x0000800000000000ull);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnmapped);
}

TEST_P(Paging, TableOutsideRamIsCorrupt) {
  const bool l5 = GetParam();
  Tables t(l5);
  const uint64_t va = 0xffffc90000123000ull;
  t.set(va, 1, (1ull << 45) | kP);  // a PMD entry pointing at a PTE table beyond RAM
  auto r = walk_page_tables(*t.mem(), t.top(), l5, va);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(r.error().address.value_or(0), va);
}

TEST_P(Paging, SelfReferencingTablesTerminate) {
  // Every level points back at the top table: the walk is bounded by the level count.
  const bool l5 = GetParam();
  Tables t(l5);
  auto mem = t.mem();
  for (int i = 0; i < 512; ++i) ASSERT_TRUE(mem->write_value<uint64_t>(t.top() + i * 8, t.top() | kP).ok());
  auto r = walk_page_tables(*mem, t.top(), l5, 0xffffc90000123456ull);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, t.top() + 0x456);
}

INSTANTIATE_TEST_SUITE_P(Levels, Paging, ::testing::Values(false, true),
                         [](const auto& p) { return p.param ? "FiveLevel" : "FourLevel"; });

TEST(KernelMemory, FastPathsCacheAndBatch) {
  Tables t(false);
  const uint64_t vm = 0xffffc90000100000ull;
  t.set(vm, 0, 0x00800000 | kP);            // page A
  t.set(vm + 0x1000, 0, 0x00a00000 | kP);   // page B, not physically adjacent
  auto mem = t.mem();
  PagingConfig cfg;
  cfg.top_pgt_pa = t.top();
  cfg.phys_base = -0x1400000;  // image va 0xffffffff82000000 → pa 0xc00000
  cfg.page_offset_base = 0xffff9d8000000000ull;
  KernelMemory km(mem, cfg);

  ASSERT_TRUE(mem->write_value<uint64_t>(0xc00010, 0x1122334455667788ull).ok());
  EXPECT_EQ(*km.read_u64(0xffffffff82000010ull), 0x1122334455667788ull);  // kernel image
  EXPECT_EQ(*km.read_u64(0xffff9d8000c00010ull), 0x1122334455667788ull);  // direct map
  EXPECT_EQ(km.page_walks(), 0u);
  // Kernel image address whose physical address is outside RAM.
  EXPECT_EQ(km.read_u64(0xffffffffb0000000ull).error().code, ErrorCode::kUnmapped);
  // Direct map beyond RAM is not a fast path (it would be vmalloc space): walked, unmapped.
  EXPECT_FALSE(km.read_u64(0xffff9d8000000000ull + (1ull << 40)).ok());

  // A read crossing from page A to page B stitches the two physical pages.
  ASSERT_TRUE(mem->write(0x800ffc, "ABCD", 4).ok());
  ASSERT_TRUE(mem->write(0xa00000, "EFGH", 4).ok());
  char buf[9] = {};
  ASSERT_TRUE(km.read(vm + 0xffc, buf, 8).ok());
  EXPECT_STREQ(buf, "ABCDEFGH");
  uint64_t walks = km.page_walks();
  ASSERT_TRUE(km.read(vm + 0xffc, buf, 8).ok());
  EXPECT_EQ(km.page_walks(), walks);  // cached
  km.begin_snapshot();
  ASSERT_TRUE(km.read(vm + 0xffc, buf, 8).ok());
  EXPECT_GT(km.page_walks(), walks);  // cache cleared

  // read_cstring: terminated, truncated at max, crossing pages.
  ASSERT_TRUE(mem->write(0xa00004, "IJ\0", 3).ok());
  EXPECT_EQ(*km.read_cstring(vm + 0xffc, 64), "ABCDEFGHIJ");
  EXPECT_EQ(*km.read_cstring(vm + 0xffc, 6), "ABCDEF");
  // Into an unmapped page: error naming the address.
  ASSERT_TRUE(mem->write(0xa00ffe, "KL", 2).ok());
  auto s = km.read_cstring(vm + 0x1ffe, 64);
  EXPECT_FALSE(s.ok());

  // Batch: good, unmapped, good.
  uint64_t a = 0, b = 0, c = 0;
  ReadRequest reqs[3] = {{0xffffffff82000010ull, &a, 8}, {vm + 0x5000, &b, 8}, {vm + 0xffc, &c, 8}};
  auto r = km.read_batch(reqs);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnmapped);
  EXPECT_EQ(r.error().address.value_or(0), vm + 0x5000);
  EXPECT_TRUE(reqs[0].ok);
  EXPECT_FALSE(reqs[1].ok);
  EXPECT_TRUE(reqs[2].ok);
  EXPECT_EQ(a, 0x1122334455667788ull);
  EXPECT_EQ(std::memcmp(&c, "ABCDEFGH", 8), 0);
}

}  // namespace
}  // namespace stallmon::introspect
