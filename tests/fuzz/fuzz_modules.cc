// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: the loaded-module reader (list walk, struct module fields, symtab/strtab,
// module ORC) and a kthread's backtrace through it: never a crash, a hang, a module outside its
// bounds, more than max_frames frames, or a verified frame outside text.
#include "module_input.h"
#include "stallmon/introspect/backtrace.h"
#include "stallmon/introspect/modules.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  auto& g = fuzz::apply_module_input(data, size);
  ModuleLimits lim;
  lim.budget = std::make_shared<MemoryBudget>("fuzz", 4 << 20);
  lim.max_modules = 8;
  auto layout = ModuleLayout::resolve(g.kg.k);
  if (!layout.ok()) __builtin_trap();  // the layout is BTF's, not the input's
  auto t = ModuleTable::read(g.kg.k, *layout, OrcFormat::v64(), lim);
  if (t.ok()) {
    if (t->modules().size() > lim.max_modules || t->bytes() > lim.max_total_bytes) __builtin_trap();
    for (const auto& m : t->modules()) {
      if (m.text_end <= m.text_start || m.symbols.size() > lim.max_symbols_per_module) __builtin_trap();
      for (const auto& s : m.symbols)
        if (s.name.empty() || s.name.size() > lim.max_name_len || s.address < m.text_start || s.address >= m.text_end)
          __builtin_trap();
      if (m.orc.size() && (m.orc.first_ip() < m.text_start || m.orc.last_ip() > m.text_end)) __builtin_trap();
      (void)t->lookup(m.text_start + (m.text_end - m.text_start) / 2);
    }
  }
  BacktraceOptions o;
  o.orc.budget = lim.budget;
  auto r = BacktraceReader::create(g.kg.k, o);
  if (!r.ok()) return 0;
  auto bt = (*r)->backtrace_task(g.kg.g.task);
  if (!bt.ok()) return 0;
  if (bt->frames.size() > o.max_frames + 1) __builtin_trap();  // + the inferred threadfn
  for (const Frame& f : bt->frames) {
    if (!(*r)->in_text(f.address) && f.verification != Verification::kScannedUnverified) __builtin_trap();
    (void)f.format();
  }
  return 0;
}
