// SPDX-License-Identifier: Apache-2.0
// Issue 10, findings 2-4 as regression tests on synthetic guests: notes planted by guest
// userspace or left by a previous boot never win over the running kernel's own, a forged
// BUILD-ID never gets another guest's symbols, and guest tables that would decode into more
// memory than the domain's budget stop with kOverBudget before the memory is allocated.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include "fake_guest.h"
#include "stallmon/introspect/kernel.h"
#include "stallmon/introspect/memory_budget.h"

namespace stallmon::introspect {
namespace {

using fake::FakeGuest;
using fake::FakeGuestOptions;

std::string with_line(std::string text, const std::string& key, const std::string& value) {
  auto pos = text.find(key + "=");
  text.replace(pos, text.find('\n', pos) - pos, key + "=" + value);
  return text;
}

void plant_note(FakeGuest& g, uint64_t gpa, const std::string& text) {
  auto note = fake::make_vmcoreinfo_note(text);
  g.write_pa(gpa, note.data(), note.size());
}

bool mentions(const DiscoveryReport& r, const std::string& what) {
  for (const std::string& s : r.rejected)
    if (s.find(what) != std::string::npos) return true;
  return false;
}

uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;
}

// Guest RAM that a running guest would show: jiffies_64 advances on every read (or not).
class TickingMemory final : public PhysicalMemory {
 public:
  TickingMemory(FakeGuest& g, bool ticks) : g_(g), ticks_(ticks) {}
  Result<void> read(uint64_t gpa, void* buf, size_t len) override {
    if (ticks_) g_.put_va<uint64_t>(g_.symbol("jiffies_64"), ++jiffies_);
    return g_.memory()->read(gpa, buf, len);
  }
  const std::vector<PhysRange>& ranges() const override { return g_.memory()->ranges(); }
  bool live() const override { return true; }

 private:
  FakeGuest& g_;
  bool ticks_;
  uint64_t jiffies_ = 4294937296ull;
};

class HostileGuest : public ::testing::Test {
 protected:
  void SetUp() override { clear_shared_kernel_cache(); }
};

// Finding 3: a note planted by guest userspace at a lower address (another KERNELOFFSET and
// BUILD-ID, everything else copied from the real one) loses to the note the kernel points to.
TEST_F(HostileGuest, ForgedNoteAtLowerAddressLoses) {
  FakeGuest g;
  const uint64_t forged = 4ull << 20;
  std::string text = with_line(g.vmcoreinfo_text(), "KERNELOFFSET", "1000000");
  text = with_line(text, "BUILD-ID", "ffffffffffffffffffffffffffffffffffffffff");
  plant_note(g, forged, text);
  plant_note(g, forged + 0x1000, g.vmcoreinfo_text());  // an exact copy at another page, too
  DiscoveryReport report;
  auto k = Kernel::discover(g.memory(), {}, &report);
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  EXPECT_EQ((*k)->vmcoreinfo().note_gpa.value_or(0), g.options().note_gpa);
  EXPECT_EQ((*k)->vmcoreinfo().build_id, g.options().build_id);
  EXPECT_EQ(report.accepted_gpa.value_or(0), g.options().note_gpa);
  EXPECT_EQ(report.candidates, 2u);
  EXPECT_TRUE(mentions(report, "0x400000: the kernel it describes keeps its note at 0x1300000"));
  // As the hint ("look here first") the forged note still loses.
  DiscoverOptions o;
  o.scan.hint_gpa = forged;
  clear_shared_kernel_cache();
  auto k2 = Kernel::discover(g.memory(), o);
  ASSERT_TRUE(k2.ok()) << k2.error().to_string();
  EXPECT_EQ((*k2)->vmcoreinfo().note_gpa.value_or(0), g.options().note_gpa);
}

// Finding 3: after a warm reboot with a new KASLR offset the previous boot's note is still in
// RAM (and the old hint points at it); the running kernel's note is chosen.
TEST_F(HostileGuest, PreviousBootsNoteLosesAfterKaslrChange) {
  FakeGuestOptions before;
  before.kaslr_offset = 0x3000000;
  before.phys_base = -0x1e00000;
  before.note_gpa = 0x800000;
  FakeGuest previous(before);
  FakeGuest g;  // the running boot: KERNELOFFSET 0x2e00000, note at 19 MiB
  plant_note(g, before.note_gpa, previous.vmcoreinfo_text());
  DiscoverOptions o;
  o.scan.hint_gpa = before.note_gpa;
  DiscoveryReport report;
  auto k = Kernel::discover(g.memory(), o, &report);
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  EXPECT_EQ((*k)->vmcoreinfo().note_gpa.value_or(0), g.options().note_gpa);
  EXPECT_EQ((*k)->vmcoreinfo().kernel_offset, g.options().kaslr_offset);
  EXPECT_EQ(*(*k)->symbol("_text"), g.text_va());
  ASSERT_EQ(report.rejected.size(), 1u);
  EXPECT_EQ(report.rejected[0].rfind("0x800000: ", 0), 0u) << report.rejected[0];
}

// The clock half of the proof: on live memory a note whose kernel does not run is refused.
TEST_F(HostileGuest, NoteOfAKernelThatDoesNotTickIsRefusedOnLiveMemory) {
  FakeGuest g;
  DiscoverOptions o;
  o.clock_wait = std::chrono::milliseconds(1);
  auto frozen = Kernel::discover(std::make_shared<TickingMemory>(g, false), o);
  ASSERT_FALSE(frozen.ok());
  EXPECT_NE(frozen.error().message.find("jiffies do not advance"), std::string::npos) << frozen.error().to_string();
  auto running = Kernel::discover(std::make_shared<TickingMemory>(g, true), o);
  ASSERT_TRUE(running.ok()) << running.error().to_string();
  EXPECT_EQ((*running)->vmcoreinfo().note_gpa.value_or(0), g.options().note_gpa);
}

// Finding 2: a guest that forges another guest's BUILD-ID and KERNELOFFSET gets its own
// symbols (the cache key is the tables' content), never the first guest's.
TEST_F(HostileGuest, ForgedBuildIdGetsNoOtherGuestsSymbols) {
  FakeGuest victim;
  auto kv = Kernel::discover(victim.memory());
  ASSERT_TRUE(kv.ok()) << kv.error().to_string();
  FakeGuestOptions fo;
  fo.filler_symbols = 700;  // other kallsyms tables, same BUILD-ID and KERNELOFFSET
  FakeGuest forger(fo);
  ASSERT_EQ(forger.options().build_id, victim.options().build_id);
  auto kf = Kernel::discover(forger.memory());
  ASSERT_TRUE(kf.ok()) << kf.error().to_string();
  EXPECT_NE((*kf)->symbols_ptr().get(), (*kv)->symbols_ptr().get());
  EXPECT_EQ((*kf)->symbols().size(), forger.symbols().size());
  EXPECT_EQ((*kv)->symbols().size(), victim.symbols().size());
  // And the victim, discovered again after the forger, still gets its own tables.
  auto kv2 = Kernel::discover(victim.memory());
  ASSERT_TRUE(kv2.ok());
  EXPECT_EQ((*kv2)->symbols_ptr().get(), (*kv)->symbols_ptr().get());
}

// Finding 2: a cache hit (identical tables) does not skip this guest's own validation.
TEST_F(HostileGuest, CacheHitStillValidatesThisGuest) {
  FakeGuest a, b;
  ASSERT_TRUE(Kernel::discover(a.memory()).ok());
  // b's tables are byte-identical to a's (a cache hit), but its note disagrees with them.
  plant_note(b, b.options().note_gpa, with_line(b.vmcoreinfo_text(), "SYMBOL(_stext)", "ffffffff81234000"));
  auto kb = Kernel::discover(b.memory());
  ASSERT_FALSE(kb.ok());
  EXPECT_NE(kb.error().message.find("_stext"), std::string::npos) << kb.error().to_string();
}

// The budget accounts for what a discovered kernel holds, and gives it all back.
TEST_F(HostileGuest, DiscoveredKernelIsChargedToItsBudget) {
  FakeGuest g;
  auto budget = std::make_shared<MemoryBudget>("vm");
  DiscoverOptions o;
  o.budget = budget;
  {
    auto k = Kernel::discover(g.memory(), o);
    ASSERT_TRUE(k.ok()) << k.error().to_string();
    auto held = budget->breakdown();
    EXPECT_EQ(held["kernel symbols"], (*k)->symbols().memory_bytes());
    EXPECT_EQ(held["kernel types"], (*k)->types().memory_bytes());
    EXPECT_GT(budget->peak(), budget->used());  // tables read from the guest, then released
  }
  EXPECT_EQ(budget->used(), 0u);
  // The same guest under a budget too small for its symbols: kOverBudget naming them.
  auto tiny = std::make_shared<MemoryBudget>("vm", 64 << 10);
  o.budget = tiny;
  clear_shared_kernel_cache();
  auto k = Kernel::discover(g.memory(), o);
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.error().code, ErrorCode::kOverBudget) << k.error().to_string();
  EXPECT_NE(k.error().message.find("kallsyms"), std::string::npos) << k.error().to_string();
  EXPECT_EQ(tiny->used(), 0u);
}

// Finding 4: kallsyms tables that expand into huge names. 500,000 symbols of 510 characters
// each from 1.5 MB of names (before: 1.14 GiB resident from 12 MB of tables) stop at the
// budget with the memory bounded by it.
TEST_F(HostileGuest, OversizeKallsymsStopAtTheBudget) {
  constexpr uint32_t kSyms = 500'000;
  std::vector<uint8_t> token_table;
  std::vector<uint16_t> token_index(256);
  for (int b = 0; b < 256; ++b) {
    token_index[b] = static_cast<uint16_t>(token_table.size());
    token_table.insert(token_table.end(), 255, static_cast<uint8_t>(b == 0 ? 't' : 'a' + b % 26));
    token_table.push_back(0);
  }
  std::vector<uint8_t> names;
  for (uint32_t i = 0; i < kSyms; ++i) names.insert(names.end(), {2, 0, static_cast<uint8_t>(1 + i % 255)});
  std::vector<int32_t> offsets(kSyms, 0x1000);
  KallsymsTables t;
  t.num_syms = kSyms;
  t.names = names;
  t.token_table = token_table;
  t.token_index = token_index;
  t.offsets = offsets;
  t.relative_base = 0xffffffff81000000ull;
  SymbolLimits limits;
  limits.budget = std::make_shared<MemoryBudget>("vm");
  const uint64_t rss_before = peak_rss_bytes();
  auto r = decode_kallsyms(t, limits);
  const uint64_t rss_growth = peak_rss_bytes() - rss_before;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kOverBudget) << r.error().to_string();
  EXPECT_NE(r.error().message.find("kallsyms symbols"), std::string::npos);
  EXPECT_LE(limits.budget->peak(), limits.budget->limit());
  EXPECT_EQ(limits.budget->used(), 0u);
  EXPECT_LT(rss_growth, 2 * MemoryBudget::kDefaultLimit) << "peak RSS grew by " << rss_growth;
  std::printf("oversize kallsyms: %s; budget peak %llu bytes, peak RSS growth %llu bytes\n",
              r.error().message.c_str(), static_cast<unsigned long long>(limits.budget->peak()),
              static_cast<unsigned long long>(rss_growth));
  // Without a budget the same tables are still bounded by the name-length limit only: the
  // budget is what keeps them small, so make sure a count that cannot fit is refused early.
  limits.budget = std::make_shared<MemoryBudget>("vm", 1 << 20);
  auto early = decode_kallsyms(t, limits);
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.error().code, ErrorCode::kOverBudget);
}

// Finding 4 through discovery: a kallsyms_num_syms that cannot fit the budget is refused
// before any table is read.
TEST_F(HostileGuest, KallsymsCountBeyondTheBudgetIsRefusedBeforeReading) {
  FakeGuest g;
  g.put_va<uint32_t>(g.symbol("kallsyms_num_syms"), 900'000);
  DiscoverOptions o;
  o.budget = std::make_shared<MemoryBudget>("vm");
  auto k = Kernel::discover(g.memory(), o);
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.error().code, ErrorCode::kOverBudget) << k.error().to_string();
  EXPECT_EQ(o.budget->peak(), 0u);
}

// Finding 1 (CPU count): nr_cpu_ids is cut to the host's vCPU count.
TEST_F(HostileGuest, CpuCountIsBoundedByTheHostsVcpuCount) {
  FakeGuest g;
  g.put_va<uint32_t>(g.symbol("nr_cpu_ids"), 1024);
  DiscoverOptions o;
  o.max_cpus = 4;
  auto k = Kernel::discover(g.memory(), o);
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  EXPECT_EQ(*(*k)->nr_cpu_ids(), 4u);
  EXPECT_EQ((*(*k)->per_cpu_offsets())->size(), 4u);
}

TEST(MemoryBudget, ChargesReleasesAndNamesWhatWasTooBig) {
  auto b = std::make_shared<MemoryBudget>("vm7", 1000);
  {
    auto c = MemoryCharge::take(b, "a", 600);
    ASSERT_TRUE(c.ok());
    auto d = MemoryCharge::take(b, "b", 500);
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.error().code, ErrorCode::kOverBudget);
    EXPECT_NE(d.error().message.find("b needs"), std::string::npos) << d.error().message;
    EXPECT_NE(d.error().message.find("vm7"), std::string::npos);
    EXPECT_EQ(b->used(), 600u);
    EXPECT_TRUE(c->add(400).ok());
    EXPECT_FALSE(c->add(1).ok());
    EXPECT_EQ(c->bytes(), 1000u);
    EXPECT_FALSE(b->check("x", 1).ok());
  }
  EXPECT_EQ(b->used(), 0u);
  EXPECT_EQ(b->peak(), 1000u);
  EXPECT_TRUE(b->breakdown().empty());
  EXPECT_FALSE(b->charge("huge", ~0ull).ok());  // no overflow
  MemoryCharge none;  // without a budget: free
  auto free = MemoryCharge::take(nullptr, "x", ~0ull);
  EXPECT_TRUE(free.ok());
}

}  // namespace
}  // namespace stallmon::introspect
