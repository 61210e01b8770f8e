// SPDX-License-Identifier: Apache-2.0
// Loaded modules from guest memory (kernel/module/main.c, kernel/module/kallsyms.c).
//
// The kernel adds a module at the head of `modules` (add_unformed_module: list_add_rcu), keeps
// its symbols in mod->kallsyms (after init: &mod->core_kallsyms, the Elf64_Syms and strtab
// add_kallsyms copied into the module's core data) and its ORC table in mod->arch, sorted at load
// time (unwind_module_init), with ips relative to their own slot like vmlinux's.
#include "stallmon/introspect/modules.h"

#include <algorithm>
#include <cstring>

namespace stallmon::introspect {

namespace {

constexpr uint64_t kMaxModuleStruct = 16u << 10;  // sizeof(struct module) is ~1.3 KiB on 6.1/6.12
constexpr uint32_t kModuleStateUnformed = 3;      // MODULE_STATE_UNFORMED
constexpr size_t kMaxNotes = 8;
constexpr uint64_t kElfSymSize = 24;  // Elf64_Sym: st_name u32, st_info u8, st_other u8, st_shndx u16, st_value, st_size
constexpr uint8_t kSttNotype = 0, kSttFunc = 2;

std::string hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

bool kernel_pointer(uint64_t p) { return p >= 0xffff800000000000ULL; }

template <typename T>
T get(const std::vector<uint8_t>& b, uint64_t off) {
  T v{};
  if (off + sizeof(T) <= b.size()) std::memcpy(&v, b.data() + off, sizeof(T));
  return v;
}

uint64_t get_uint(const std::vector<uint8_t>& b, uint64_t off, uint32_t size) {
  return size == 8 ? get<uint64_t>(b, off) : size == 4 ? get<uint32_t>(b, off) : 0;
}

// A printable module name from the fixed-size array (no NUL inside it: refused).
std::optional<std::string> module_name(const std::vector<uint8_t>& b, uint64_t off, uint64_t len) {
  if (off + len > b.size()) return std::nullopt;
  const char* p = reinterpret_cast<const char*>(b.data() + off);
  const void* nul = std::memchr(p, 0, len);
  if (!nul) return std::nullopt;
  std::string n(p, static_cast<const char*>(nul));
  if (n.empty()) return std::nullopt;
  for (char c : n)
    if (c <= ' ' || c > '~') return std::nullopt;
  return n;
}

// Reads `len` bytes, or as many whole pages from the start as are readable (a strtab read with
// a margin may run past the end of the module's mapped data).
std::vector<uint8_t> read_prefix(KernelAccess& k, uint64_t va, uint64_t len) {
  std::vector<uint8_t> out(len);
  if (k.read(va, out.data(), out.size())) return out;
  uint64_t got = 0;
  while (got < len) {
    const uint64_t n = std::min<uint64_t>(4096 - ((va + got) & 4095), len - got);
    if (!k.read(va + got, out.data() + got, n)) break;
    got += n;
  }
  out.resize(got);
  return out;
}

}  // namespace

Result<ModuleLayout> ModuleLayout::resolve(const KernelAccess& k) {
  auto ctx = [](Error e) { return std::move(e).context("modules"); };
  ModuleLayout l;
  auto head = k.symbol("modules");
  if (!head) return ctx(std::move(head).error());
  l.modules = *head;
  auto size = k.type_size("module");
  if (!size) return ctx(std::move(size).error());
  if (*size == 0 || *size > kMaxModuleStruct)
    return Error(ErrorCode::kCorrupt, "modules: sizeof(struct module) " + std::to_string(*size) + " implausible");
  l.size = *size;
  auto list = k.member("module", "list");
  auto name = k.member("module", "name");
  auto state = k.member("module", "state");
  if (!list) return ctx(std::move(list).error());
  if (!name) return ctx(std::move(name).error());
  if (!state) return ctx(std::move(state).error());
  l.list = list->offset();
  l.name = name->offset();
  l.name_len = std::min<uint64_t>(name->size, 256);
  l.state = state->offset();
  if (auto mem = k.member("module", "mem"); mem) {
    // 6.4+: struct module_memory mem[MOD_MEM_NUM_TYPES], MOD_TEXT = 0.
    auto base = k.member("module_memory", "base");
    auto msize = k.member("module_memory", "size");
    if (!base) return ctx(std::move(base).error());
    if (!msize) return ctx(std::move(msize).error());
    l.text_base = mem->offset() + base->offset();
    l.text_size = mem->offset() + msize->offset();
    l.text_size_bytes = msize->size;
  } else {
    // 6.1: struct module_layout core_layout { base; size; text_size; ... }.
    auto base = k.member("module", "core_layout.base");
    if (!base) return ctx(std::move(base).error());
    auto tsize = k.member("module", "core_layout.text_size");
    if (!tsize) tsize = k.member("module", "core_layout.size");
    if (!tsize) return ctx(std::move(tsize).error());
    l.text_base = base->offset();
    l.text_size = tsize->offset();
    l.text_size_bytes = tsize->size;
  }
  if (l.text_size_bytes != 4 && l.text_size_bytes != 8)
    return Error(ErrorCode::kCorrupt, "modules: module text size is a " + std::to_string(l.text_size_bytes) + "-byte member");
  if (auto p = k.member("module", "kallsyms"); p && p->kind == MemberLayout::Kind::kPointer) l.kallsyms_ptr = p->offset();
  if (auto c = k.member("module", "core_kallsyms")) l.kallsyms_inline = c->offset();
  auto symtab = k.member("mod_kallsyms", "symtab");
  auto num = k.member("mod_kallsyms", "num_symtab");
  auto strtab = k.member("mod_kallsyms", "strtab");
  if ((l.kallsyms_ptr || l.kallsyms_inline) && symtab && num && strtab && num->size == 4) {
    l.ks_symtab = symtab->offset();
    l.ks_num_symtab = num->offset();
    l.ks_strtab = strtab->offset();
  } else {
    l.kallsyms_ptr.reset();
    l.kallsyms_inline.reset();
  }
  auto oip = k.member("module", "arch.orc_unwind_ip");
  auto oe = k.member("module", "arch.orc_unwind");
  auto on = k.member("module", "arch.num_orcs");
  if (oip && oe && on && on->size == 4) {
    l.orc_ip = oip->offset();
    l.orc_entries = oe->offset();
    l.num_orcs = on->offset();
  }
  // Every field read must lie inside the struct read.
  for (uint64_t end : {l.list + 16, l.name + l.name_len, l.state + 4, l.text_base + 8, l.text_size + l.text_size_bytes,
                       l.kallsyms_ptr.value_or(0) + 8, l.kallsyms_inline.value_or(0) + 32, l.orc_ip.value_or(0) + 8,
                       l.orc_entries.value_or(0) + 8, l.num_orcs.value_or(0) + 4})
    if (end > l.size) return Error(ErrorCode::kCorrupt, "modules: a struct module member lies outside it");
  return l;
}

namespace {

struct Reader {
  KernelAccess& k;
  const ModuleLayout& L;
  const OrcFormat& format;
  const ModuleLimits& limits;
  MemoryCharge& held;  // the table's charge: what it keeps
  std::vector<std::string>& notes;

  void note(std::string n) {
    if (notes.size() < kMaxNotes) notes.push_back(std::move(n));
  }
  // Charges `bytes` more to what the table keeps, under the bound for all modules and the budget.
  Result<void> keep(uint64_t bytes, const std::string& what) {
    if (bytes > limits.max_total_bytes || held.bytes() > limits.max_total_bytes - bytes)
      return Error(ErrorCode::kLimit, "modules: " + what + " would pass the bound of " +
                                          std::to_string(limits.max_total_bytes) + " bytes for all module tables");
    return held.add(bytes);
  }

  // A table of `count` entries at `a` (and its companion at `b`): non-empty, within `max`, at
  // kernel addresses. Otherwise skipped for this module (with a note when it is not just empty).
  bool usable(const GuestModule& g, const char* count_name, uint32_t count, uint32_t max, uint64_t a, uint64_t b) {
    if (count == 0) return false;
    if (count > max) {
      note("module " + g.name + ": " + count_name + " " + std::to_string(count) + " above the limit of " +
           std::to_string(max) + ", table skipped");
      return false;
    }
    if (!kernel_pointer(a) || !kernel_pointer(b)) {
      note("module " + g.name + ": the tables of " + count_name + " at " + hex(a) + " / " + hex(b) +
           " are not kernel pointers");
      return false;
    }
    return true;
  }

  // Functions in the module's text, from mod->kallsyms (or core_kallsyms). Problems that
  // concern this module only are notes; running out of budget is an error.
  Result<void> symbols(const std::vector<uint8_t>& mod, GuestModule& g) {
    std::vector<uint8_t> ks(32);
    if (L.kallsyms_ptr) {
      const uint64_t p = get<uint64_t>(mod, *L.kallsyms_ptr);
      if (!kernel_pointer(p) || !k.read(p, ks.data(), ks.size())) {
        note("module " + g.name + ": mod->kallsyms " + hex(p) + " unreadable, no symbols");
        return Ok();
      }
    } else if (L.kallsyms_inline) {
      std::memcpy(ks.data(), mod.data() + *L.kallsyms_inline, ks.size());
    } else {
      return Ok();
    }
    const uint64_t symtab = get<uint64_t>(ks, L.ks_symtab), strtab = get<uint64_t>(ks, L.ks_strtab);
    const uint32_t num = get<uint32_t>(ks, L.ks_num_symtab);
    if (!usable(g, "num_symtab", num, limits.max_symbols_per_module, symtab, strtab)) return Ok();
    STALLMON_TRY(MemoryCharge raw, MemoryCharge::take(limits.budget, "module tables (raw)", uint64_t{num} * kElfSymSize));
    std::vector<uint8_t> syms(uint64_t{num} * kElfSymSize);
    if (!k.read(symtab, syms.data(), syms.size())) {
      note("module " + g.name + ": symtab at " + hex(symtab) + " unreadable");
      return Ok();
    }
    struct Raw {
      uint32_t name;
      uint64_t value, size;
    };
    std::vector<Raw> want;
    uint64_t strtab_need = 0;
    for (uint32_t i = 0; i < num; ++i) {
      const uint64_t o = uint64_t{i} * kElfSymSize;
      const uint32_t st_name = get<uint32_t>(syms, o);
      const uint8_t type = get<uint8_t>(syms, o + 4) & 0xf;
      const uint16_t shndx = get<uint16_t>(syms, o + 6);
      const uint64_t value = get<uint64_t>(syms, o + 8), size = get<uint64_t>(syms, o + 16);
      if (shndx == 0 || (type != kSttFunc && type != kSttNotype) || value < g.text_start || value >= g.text_end ||
          st_name == 0 || st_name >= limits.max_strtab_bytes)
        continue;
      want.push_back(Raw{st_name, value, size});
      strtab_need = std::max<uint64_t>(strtab_need, uint64_t{st_name} + limits.max_name_len + 1);
    }
    syms = {};
    if (want.empty()) return Ok();
    strtab_need = std::min<uint64_t>(strtab_need, limits.max_strtab_bytes);
    STALLMON_TRY_VOID(raw.add(strtab_need));
    const std::vector<uint8_t> str = read_prefix(k, strtab, strtab_need);
    uint64_t unnamed = 0;
    for (const Raw& r : want) {
      const char* p = reinterpret_cast<const char*>(str.data()) + r.name;
      const void* nul = r.name < str.size()
                            ? std::memchr(p, 0, std::min<uint64_t>(str.size() - r.name, limits.max_name_len + 1))
                            : nullptr;
      if (!nul || nul == p) {
        ++unnamed;  // unterminated within the bound, empty, or past what is readable
        continue;
      }
      const size_t len = static_cast<size_t>(static_cast<const char*>(nul) - p);
      STALLMON_TRY_VOID(keep(sizeof(ModuleSymbol) + len + 1, "the symbols of " + g.name));
      g.symbols.push_back(ModuleSymbol{r.value, r.size, std::string(p, len)});
    }
    if (unnamed) note("module " + g.name + ": " + std::to_string(unnamed) + " symbols without a readable name skipped");
    std::sort(g.symbols.begin(), g.symbols.end(),
              [](const ModuleSymbol& a, const ModuleSymbol& b) { return a.address < b.address; });
    // Sizes the ELF left 0: up to the next symbol, or the end of text.
    for (size_t i = 0; i < g.symbols.size(); ++i) {
      ModuleSymbol& s = g.symbols[i];
      const uint64_t limit = (i + 1 < g.symbols.size() ? g.symbols[i + 1].address : g.text_end) - s.address;
      if (s.size == 0 || s.size > g.text_end - s.address) s.size = limit;
    }
    return Ok();
  }

  // mod->arch's ORC table: entries whose ip lies outside the module's core text (its init text,
  // freed after init, or a forged ip) are dropped; an unsorted remainder is refused.
  Result<void> orc(const std::vector<uint8_t>& mod, GuestModule& g) {
    if (!L.orc_ip) return Ok();
    const uint64_t ipt = get<uint64_t>(mod, *L.orc_ip), et = get<uint64_t>(mod, *L.orc_entries);
    const uint32_t n = get<uint32_t>(mod, *L.num_orcs);
    if (!usable(g, "num_orcs", n, limits.max_orcs_per_module, ipt, et)) return Ok();
    const uint64_t es = format.entry_size;
    STALLMON_TRY(MemoryCharge raw, MemoryCharge::take(limits.budget, "module tables (raw)", uint64_t{n} * (4 + es)));
    std::vector<uint8_t> ipb(uint64_t{n} * 4), eb(uint64_t{n} * es);
    if (!k.read(ipt, ipb.data(), ipb.size()) || !k.read(et, eb.data(), eb.size())) {
      note("module " + g.name + ": ORC tables unreadable, frames unverified");
      return Ok();
    }
    std::vector<uint64_t> ips;
    std::vector<OrcEntry> entries;
    for (uint64_t i = 0; i < n; ++i) {
      int32_t rel;
      std::memcpy(&rel, ipb.data() + i * 4, 4);
      const uint64_t ip = ipt + i * 4 + static_cast<uint64_t>(static_cast<int64_t>(rel));
      if (ip < g.text_start || ip > g.text_end) continue;
      ips.push_back(ip);
      entries.push_back(format.decode(eb.data() + i * es));
    }
    if (ips.empty()) {
      note("module " + g.name + ": no ORC entry inside its text");
      return Ok();
    }
    if (!std::is_sorted(ips.begin(), ips.end())) {
      note("module " + g.name + ": ORC table not sorted, frames unverified");
      return Ok();
    }
    STALLMON_TRY_VOID(keep(ips.size() * (sizeof(uint64_t) + sizeof(OrcEntry)), "the ORC table of " + g.name));
    g.orc = OrcTable(std::move(ips), std::move(entries));
    return Ok();
  }
};

}  // namespace

Result<ModuleTable> ModuleTable::read(KernelAccess& k, const ModuleLayout& L, const OrcFormat& orc_format,
                                      const ModuleLimits& limits) {
  ModuleTable t;
  STALLMON_TRY(t.charge_, MemoryCharge::take(limits.budget, "module tables", 0));
  Reader rd{k, L, orc_format, limits, t.charge_, t.notes_};

  uint64_t head[2] = {0, 0};
  if (auto r = k.read(L.modules, head, sizeof head); !r) return std::move(r).error().context("modules: list head");
  std::vector<uint8_t> mod(L.size);
  uint64_t prev = L.modules, node = head[0];
  uint32_t walked = 0;
  while (node != L.modules) {
    if (walked++ >= limits.max_modules) {
      rd.note("more than " + std::to_string(limits.max_modules) + " modules (or a cycle): the walk stopped");
      break;
    }
    if (!kernel_pointer(node) || node < L.list) {
      rd.note("module list link " + hex(node) + " is not a kernel pointer: the walk stopped");
      break;
    }
    const uint64_t m = node - L.list;
    if (!k.read(m, mod.data(), mod.size())) {
      rd.note("struct module at " + hex(m) + " unreadable: the walk stopped");
      break;
    }
    // A forged or racing link: each node must point back where the walk came from.
    if (get<uint64_t>(mod, L.list + 8) != prev) {
      rd.note("module list node " + hex(node) + " does not point back to " + hex(prev) + ": the walk stopped");
      break;
    }
    prev = node;
    node = get<uint64_t>(mod, L.list);

    if (get<uint32_t>(mod, L.state) == kModuleStateUnformed) continue;
    GuestModule g;
    g.address = m;
    auto name = module_name(mod, L.name, L.name_len);
    if (!name) {
      rd.note("module at " + hex(m) + ": name not a terminated printable string, skipped");
      continue;
    }
    g.name = std::move(*name);
    g.text_start = get<uint64_t>(mod, L.text_base);
    const uint64_t tsize = get_uint(mod, L.text_size, L.text_size_bytes);
    if (!kernel_pointer(g.text_start) || tsize == 0 || tsize > limits.max_text_bytes ||
        g.text_start + tsize < g.text_start) {
      rd.note("module " + g.name + ": text " + hex(g.text_start) + " size " + std::to_string(tsize) +
              " implausible, skipped");
      continue;
    }
    g.text_end = g.text_start + tsize;
    STALLMON_TRY_VOID(rd.keep(sizeof(GuestModule) + g.name.size(), "module " + g.name));
    STALLMON_TRY_VOID(rd.symbols(mod, g));
    STALLMON_TRY_VOID(rd.orc(mod, g));
    t.mods_.push_back(std::move(g));
  }

  // Text ranges must be disjoint: of two that overlap (a forged module), both are dropped.
  std::sort(t.mods_.begin(), t.mods_.end(),
            [](const GuestModule& a, const GuestModule& b) { return a.text_start < b.text_start; });
  std::vector<bool> drop(t.mods_.size(), false);
  for (size_t i = 1; i < t.mods_.size(); ++i)
    if (t.mods_[i].text_start < t.mods_[i - 1].text_end) drop[i] = drop[i - 1] = true;
  size_t kept = 0;
  for (size_t i = 0; i < t.mods_.size(); ++i) {
    if (drop[i]) {
      rd.note("module " + t.mods_[i].name + ": text overlaps another module's, skipped");
      continue;
    }
    if (kept != i) t.mods_[kept] = std::move(t.mods_[i]);
    ++kept;
  }
  t.mods_.resize(kept);
  return t;
}

const GuestModule* ModuleTable::find(uint64_t ip) const {
  // The stack scan asks this of every word that is not core text: most are not module text either.
  if (mods_.empty() || ip < mods_.front().text_start || ip >= mods_.back().text_end) return nullptr;
  auto it = std::upper_bound(mods_.begin(), mods_.end(), ip,
                             [](uint64_t a, const GuestModule& m) { return a < m.text_start; });
  if (it == mods_.begin()) return nullptr;
  --it;
  return ip < it->text_end ? &*it : nullptr;
}

std::optional<ModuleTable::Hit> ModuleTable::lookup(uint64_t ip) const {
  const GuestModule* m = find(ip);
  if (!m) return std::nullopt;
  Hit h{m, nullptr};
  auto it = std::upper_bound(m->symbols.begin(), m->symbols.end(), ip,
                             [](uint64_t a, const ModuleSymbol& s) { return a < s.address; });
  if (it != m->symbols.begin() && ip - (it - 1)->address < (it - 1)->size) h.symbol = &*(it - 1);
  return h;
}

}  // namespace stallmon::introspect
