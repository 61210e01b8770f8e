// SPDX-License-Identifier: Apache-2.0
// Loaded modules from guest memory (symbols, text, ORC) and the backtraces that use them: a
// module function symbolized "function+off/len [module]" and verified with the module's own ORC
// table, a spinning kthread's thread function inferred from struct kthread, and hostile module
// lists and tables (cycles, forged links, huge counts, unterminated names, ORC ips outside text).
#include <gtest/gtest.h>

#include "module_fixture.h"
#include "orc_fixture.h"
#include "stallmon/introspect/backtrace.h"
#include "stallmon/introspect/modules.h"
#include "synthetic_kernel.h"

namespace stallmon::introspect {
namespace {

using testing::ModuleFixture;
using testing::OrcStack;
using testing::SyntheticKernel;
using E = OrcEntry;

std::vector<std::string> formatted(const Backtrace& b) {
  std::vector<std::string> v;
  for (const Frame& f : b.frames) v.push_back(f.format());
  return v;
}

// A kthread running the module function irqoff_fn (module_fixture.h, KthreadGuest).
class ModuleBacktraceTest : public ::testing::TestWithParam<bool> {
 protected:
  Result<Backtrace> trace() {
    auto r = BacktraceReader::create(k);
    if (!r) return std::move(r).error();
    return (*r)->backtrace_task(g.task);
  }
  ModuleFixture::Module add_irqoff(bool with_orc) {
    auto m = kg.add_irqoff(with_orc);
    irqoff_fn = kg.irqoff_fn;
    return m;
  }

  testing::KthreadGuest kg{GetParam()};
  SyntheticKernel& k = kg.k;
  OrcStack& g = kg.g;
  ModuleFixture& mods = kg.mods;
  const uint64_t f_kthread = kg.f_kthread, s0 = kg.s0, s1 = kg.s1;
  uint64_t irqoff_fn = 0;
};

INSTANTIATE_TEST_SUITE_P(Layouts, ModuleBacktraceTest, ::testing::Values(false, true),
                         [](const auto& i) { return i.param ? "Linux61CoreLayout" : "Linux612Mem"; });

TEST_P(ModuleBacktraceTest, ModuleFrameIsSymbolizedAndVerifiedWithTheModulesOrc) {
  add_irqoff(true);
  k.mem.put<uint64_t>(s0, irqoff_fn + 0x20);
  auto bt = trace();
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(bt->verification, Verification::kOrcChain);
  EXPECT_EQ(formatted(*bt), (std::vector<std::string>{"irqoff_fn+0x20/0x40 [irqoff]", "kthread+0x40/0x100",
                                                      "ret_from_fork+0x10/0x100"}));
  EXPECT_EQ(bt->frames[0].module, "irqoff");
  EXPECT_EQ(bt->frames[0].verification, Verification::kOrcChain);
  EXPECT_EQ(bt->frames[0].stack_slot, s0);
}

TEST_P(ModuleBacktraceTest, WithoutTheModulesOrcItsFrameDoesNotVerifyAndKthreadStartsTheChain) {
  add_irqoff(false);
  k.mem.put<uint64_t>(s0, irqoff_fn + 0x20);
  // Not a kthread: nothing is inferred, the module frame (no ORC) cannot start a chain.
  auto bt = trace();
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(formatted(*bt), (std::vector<std::string>{"kthread+0x40/0x100", "ret_from_fork+0x10/0x100"}));
}

TEST_P(ModuleBacktraceTest, SpinningKthreadGetsItsThreadFunctionInferred) {
  add_irqoff(true);
  mods.make_kthread(g.task, irqoff_fn);
  auto bt = trace();
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(bt->verification, Verification::kOrcChain);
  EXPECT_EQ(formatted(*bt), (std::vector<std::string>{"irqoff_fn+0x0/0x40 [irqoff] (kthread threadfn, inferred)",
                                                      "kthread+0x40/0x100", "ret_from_fork+0x10/0x100"}));
  EXPECT_EQ(bt->frames[0].verification, Verification::kInferredThreadfn);
  EXPECT_EQ(bt->frames[1].verification, Verification::kOrcChain);
}

TEST_P(ModuleBacktraceTest, NoInferenceForANonKthreadOrAThreadfnOutsideText) {
  add_irqoff(true);
  mods.make_kthread(g.task, irqoff_fn, /*pf_kthread=*/false);
  auto bt = trace();
  ASSERT_TRUE(bt.ok());
  EXPECT_EQ(bt->frames.size(), 2u);
  mods.make_kthread(g.task, 0xffff888012345678ULL);
  bt = trace();
  ASSERT_TRUE(bt.ok());
  EXPECT_EQ(bt->frames.size(), 2u);
  EXPECT_FALSE(bt->notes.empty());
  mods.make_kthread(g.task, irqoff_fn);
  bt = trace();
  ASSERT_TRUE(bt.ok());
  EXPECT_EQ(bt->frames.size(), 3u);
}

TEST_P(ModuleBacktraceTest, NoInferenceWhenKthreadIsTheInterruptedFunction) {
  add_irqoff(true);
  mods.make_kthread(g.task, irqoff_fn);
  // An interrupt frame whose RIP is inside kthread() itself: the CPU is there, not in threadfn.
  const uint64_t sp = s1 + 8;  // kthread's SP
  const uint64_t regs = sp - OrcStack::kPtRegsSize;
  const uint64_t r[21] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ~0ULL, f_kthread + 0x30, 0x10, 0x246, sp, 0x18};
  k.mem.write(regs, r, sizeof r);
  k.mem.put<uint64_t>(s1, 0);
  // kthread's CFA is SP + 16: its caller's return address at SP + 8.
  k.mem.put<uint64_t>(sp + 8, g.f_entry + 0x10);
  auto bt = trace();
  ASSERT_TRUE(bt.ok()) << bt.error().to_string();
  EXPECT_EQ(bt->verification, Verification::kPtRegs);
  EXPECT_EQ(formatted(*bt), (std::vector<std::string>{"kthread+0x30/0x100", "ret_from_fork+0x10/0x100"}));
}

TEST_P(ModuleBacktraceTest, TheTableIsReReadOnlyWhenTheListHeadChanges) {
  add_irqoff(true);
  auto r = BacktraceReader::create(k);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  BacktraceReader& br = **r;
  EXPECT_TRUE(br.refresh_modules());
  EXPECT_EQ(br.modules().modules().size(), 1u);
  const uint64_t reads = k.reads;
  EXPECT_FALSE(br.refresh_modules());
  EXPECT_EQ(k.reads, reads + 1) << "an unchanged list costs one read of its head";
  mods.add("second", {{"second_fn", 0x0, 0x20}});
  EXPECT_TRUE(br.refresh_modules());
  ASSERT_EQ(br.modules().modules().size(), 2u);
  EXPECT_TRUE(br.in_text(mods.modules[1].text + 0x8));
  EXPECT_FALSE(br.in_text(mods.modules[1].text + ModuleFixture::kModTextSize));
}

// ---------------------------------------------------------------------------------------------
// ModuleTable on hostile guests

class ModuleTableTest : public ::testing::Test {
 protected:
  Result<ModuleTable> read(const ModuleLimits& lim = {}) {
    auto l = ModuleLayout::resolve(k);
    if (!l) return std::move(l).error();
    return ModuleTable::read(k, *l, OrcFormat::v64(), lim);
  }
  SyntheticKernel k{2, SyntheticKernel::Layout::kLinux61};
  ModuleFixture mods{k, false};
};

TEST_F(ModuleTableTest, SymbolsAreFunctionsInTextWithSizesFromElfOrTheNextSymbol) {
  auto m = mods.add("irqoff", {{"irqoff_init", 0x0, 0x10}, {"irqoff_fn", 0x10, 0x40}, {"tail", 0x50, 0}});
  auto t = read();
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  ASSERT_EQ(t->modules().size(), 1u);
  const GuestModule& g = t->modules()[0];
  EXPECT_EQ(g.name, "irqoff");
  EXPECT_EQ(g.text_start, m.text);
  EXPECT_EQ(g.text_end, m.text + ModuleFixture::kModTextSize);
  ASSERT_EQ(g.symbols.size(), 3u) << "the object in data and the undefined import are not functions in text";
  EXPECT_EQ(g.symbols[2].name, "tail");
  EXPECT_EQ(g.symbols[2].size, ModuleFixture::kModTextSize - 0x50);
  auto h = t->lookup(m.text + 0x4f);
  ASSERT_TRUE(h && h->symbol);
  EXPECT_EQ(h->symbol->name, "irqoff_fn");
  EXPECT_FALSE(t->lookup(m.text - 1));
  EXPECT_FALSE(t->lookup(m.text + ModuleFixture::kModTextSize));
  EXPECT_TRUE(t->notes().empty());
}

TEST_F(ModuleTableTest, CyclicOrForgedListEndsTheWalkWithANote) {
  auto a = mods.add("a", {{"fa", 0, 0x10}});
  auto b = mods.add("b", {{"fb", 0, 0x10}});
  // b (first) -> a -> back to b: a's next forms a cycle; b's prev is the head, not a.
  k.mem.put<uint64_t>(a.addr + ModuleFixture::kList, b.addr + ModuleFixture::kList);
  auto t = read();
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  EXPECT_EQ(t->modules().size(), 2u);
  ASSERT_FALSE(t->notes().empty());
  EXPECT_NE(t->notes()[0].find("does not point back"), std::string::npos) << t->notes()[0];

  // No cycle gets past that check: the node where a cycle re-enters already names its first
  // predecessor. A long list is bounded by the module count (next test).
}

TEST_F(ModuleTableTest, TheModuleCountIsBounded) {
  for (int i = 0; i < 5; ++i) mods.add("m" + std::to_string(i), {{"f", 0, 0x10}});
  ModuleLimits lim;
  lim.max_modules = 3;
  auto t = read(lim);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->modules().size(), 3u);
  ASSERT_FALSE(t->notes().empty());
  EXPECT_NE(t->notes()[0].find("more than 3 modules"), std::string::npos);
}

TEST_F(ModuleTableTest, HugeNumSymtabIsRefusedForThatModuleOnly) {
  auto a = mods.add("a", {{"fa", 0, 0x10}});
  mods.add("b", {{"fb", 0, 0x10}});
  const uint64_t ks = mods.read64(a.addr + ModuleFixture::kKallsymsPtr);
  k.mem.put<uint32_t>(ks + 8, 0xfffffff0u);
  auto budget = std::make_shared<MemoryBudget>("vm", 1 << 20);
  ModuleLimits lim;
  lim.budget = budget;
  auto t = read(lim);
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  ASSERT_EQ(t->modules().size(), 2u);
  for (const auto& g : t->modules()) EXPECT_EQ(g.symbols.size(), g.name == "a" ? 0u : 1u) << g.name;
  EXPECT_NE(t->notes().at(0).find("num_symtab"), std::string::npos);
  EXPECT_GT(budget->breakdown().at("module tables"), 0u);
  EXPECT_EQ(budget->used(), t->bytes()) << "raw tables are given back, the kept symbols stay charged";
}

TEST_F(ModuleTableTest, OverBudgetIsAnErrorNamingTheTables) {
  mods.add("a", {{"fa", 0, 0x10}});
  auto budget = std::make_shared<MemoryBudget>("vm", 64);
  ModuleLimits lim;
  lim.budget = budget;
  auto t = read(lim);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.error().code, ErrorCode::kOverBudget);
  EXPECT_EQ(budget->used(), 0u);
}

TEST_F(ModuleTableTest, NamesWithoutNulAreSkipped) {
  auto a = mods.add("a", {{"fa", 0, 0x10}});
  auto b = mods.add("b", {{"fb", 0, 0x10}, {"fc", 0x10, 0x10}});
  // a's name fills its array with no NUL.
  const std::string full(ModuleFixture::kNameLen, 'x');
  k.mem.write(a.addr + ModuleFixture::kName, full.data(), full.size());
  // b's strtab: the last name runs to the end of mapped memory without a NUL.
  const uint64_t strtab = b.text + 0x3000;
  const uint64_t end = b.text + ModuleFixture::kModTextStride;
  std::vector<char> fill(end - (strtab + 4), 'y');
  k.mem.write(strtab + 4, fill.data(), fill.size());  // "\0fb\0" then "fc..." never ends
  ModuleLimits lim;
  lim.max_name_len = 64;
  auto t = read(lim);
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  ASSERT_EQ(t->modules().size(), 1u);
  EXPECT_EQ(t->modules()[0].name, "b");
  ASSERT_EQ(t->modules()[0].symbols.size(), 1u);
  EXPECT_EQ(t->modules()[0].symbols[0].name, "fb");
  EXPECT_GE(t->notes().size(), 2u);
}

TEST_F(ModuleTableTest, OrcIpsOutsideTheModulesTextAreDropped) {
  auto m = mods.add("a", {{"fa", 0, 0x40}},
                    {{0x0, E{16, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}},
                     {0x40, E{8, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}},
                     {ModuleFixture::kModTextSize + 0x100, E{0, 0, kOrcRegUndefined, kOrcRegUndefined, OrcType::kUndefined, false}},
                     {0x7fffff00, E{32, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}}});
  auto t = read();
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  ASSERT_EQ(t->modules().size(), 1u);
  const OrcTable& orc = t->modules()[0].orc;
  EXPECT_EQ(orc.size(), 2u);
  EXPECT_EQ(orc.first_ip(), m.text);
  EXPECT_EQ(orc.last_ip(), m.text + 0x40);
  ASSERT_TRUE(orc.find(m.text + 0x10));
  EXPECT_EQ(orc.find(m.text + 0x10)->sp_offset, 16);

  // Every ip outside: no table, a note.
  auto n = mods.add("b", {{"fb", 0, 0x40}},
                    {{ModuleFixture::kModTextSize + 8, E{16, 0, kOrcRegSp, kOrcRegUndefined, OrcType::kCall, false}}});
  t = read();
  ASSERT_TRUE(t.ok());
  for (const auto& g : t->modules())
    if (g.name == "b") {
      EXPECT_EQ(g.orc.size(), 0u);
    }
  (void)n;
  EXPECT_FALSE(t->notes().empty());

  // A huge num_orcs: refused for that module.
  k.mem.put<uint32_t>(m.addr + ModuleFixture::kArch, 0xffffffffu);
  t = read();
  ASSERT_TRUE(t.ok());
  for (const auto& g : t->modules())
    if (g.name == "a") {
      EXPECT_EQ(g.orc.size(), 0u);
    }
}

TEST_F(ModuleTableTest, OverlappingTextIsDropped) {
  auto a = mods.add("a", {{"fa", 0, 0x10}});
  auto b = mods.add("b", {{"fb", 0, 0x10}});
  k.mem.put<uint64_t>(b.addr + ModuleFixture::kText, a.text + 0x800);
  mods.add("c", {{"fc", 0, 0x10}});
  auto t = read();
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->modules().size(), 1u);
  EXPECT_EQ(t->modules()[0].name, "c");
}

TEST_F(ModuleTableTest, GarbageMemoryNeverCrashesOrLoops) {
  for (int i = 0; i < 3; ++i) mods.add("m" + std::to_string(i), {{"f", 0, 0x10}}, {{0, E{}}});
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    k.mem.scribble(seed);
    ModuleLimits lim;
    lim.budget = std::make_shared<MemoryBudget>("vm", 8 << 20);
    auto t = read(lim);
    if (t.ok()) {
      EXPECT_LE(t->modules().size(), lim.max_modules);
    }
  }
}

}  // namespace
}  // namespace stallmon::introspect
