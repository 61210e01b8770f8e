// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/kernel.h"

#include <cstdio>
#include <deque>
#include <map>
#include <mutex>

#include "text.h"

namespace stallmon::introspect {
namespace {

using detail::hex;

// Default direct-map bases without CONFIG_RANDOMIZE_MEMORY (Documentation/x86/x86_64/mm.rst).
constexpr uint64_t kPageOffset4 = 0xffff888000000000ull;
constexpr uint64_t kPageOffset5 = 0xff11000000000000ull;

// Process-wide cache: guests running the same kernel build share the decoded symbols (per
// KASLR slide, since kallsyms addresses include it) and the parsed BTF (per build).
class SharedCache {
 public:
  static SharedCache& get() {
    static SharedCache cache;
    return cache;
  }
  std::shared_ptr<const SymbolTable> symbols(const std::string& key) {
    std::lock_guard lock(mu_);
    auto it = symbols_.find(key);
    return it == symbols_.end() ? nullptr : it->second;
  }
  void put_symbols(const std::string& key, std::shared_ptr<const SymbolTable> s) {
    std::lock_guard lock(mu_);
    insert(symbols_, symbol_order_, key, std::move(s));
  }
  std::shared_ptr<const Types> types(const std::string& key) {
    std::lock_guard lock(mu_);
    auto it = types_.find(key);
    return it == types_.end() ? nullptr : it->second;
  }
  void put_types(const std::string& key, std::shared_ptr<const Types> t) {
    std::lock_guard lock(mu_);
    insert(types_, type_order_, key, std::move(t));
  }
  void clear() {
    std::lock_guard lock(mu_);
    symbols_.clear();
    types_.clear();
    symbol_order_.clear();
    type_order_.clear();
  }

 private:
  static constexpr size_t kCapacity = 8;  // distinct kernels on one host are few
  template <typename M, typename V>
  static void insert(M& map, std::deque<std::string>& order, const std::string& key, V value) {
    if (map.count(key)) return;
    if (order.size() >= kCapacity) {
      map.erase(order.front());
      order.pop_front();
    }
    map.emplace(key, std::move(value));
    order.push_back(key);
  }
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<const SymbolTable>> symbols_;
  std::map<std::string, std::shared_ptr<const Types>> types_;
  std::deque<std::string> symbol_order_, type_order_;
};

Result<std::shared_ptr<const SymbolTable>> load_symbols(KernelMemory& kmem, const VmcoreInfo& info,
                                                        const DiscoverOptions& options) {
  if (!options.vmlinux_path.empty()) {
    STALLMON_TRY(SymbolTable t, SymbolTable::from_vmlinux(options.vmlinux_path, options.limits));
    return std::make_shared<const SymbolTable>(t.relocate(info.kernel_offset));
  }
  if (!options.system_map_path.empty()) {
    STALLMON_TRY(SymbolTable t, SymbolTable::from_system_map(options.system_map_path, options.limits));
    return std::make_shared<const SymbolTable>(t.relocate(info.kernel_offset));
  }
  STALLMON_TRY(SymbolTable t, SymbolTable::from_kallsyms(kmem, info, options.limits));
  return std::make_shared<const SymbolTable>(std::move(t));
}

}  // namespace

void clear_shared_kernel_cache() { SharedCache::get().clear(); }

Result<std::unique_ptr<Kernel>> Kernel::discover(std::shared_ptr<PhysicalMemory> mem, const DiscoverOptions& options) {
  if (!mem) return Error(ErrorCode::kInvalidArgument, "discover: no memory source");
  std::unique_ptr<Kernel> k(new Kernel());
  k->phys_ = mem;

  // 1. VMCOREINFO: given, from the core's note, or by scanning RAM.
  if (options.vmcoreinfo) {
    k->info_ = *options.vmcoreinfo;
  } else {
    std::optional<VmcoreInfo> from_note;
    if (auto* core = dynamic_cast<ElfCoreMemory*>(mem.get()); core && !core->vmcoreinfo_note().empty()) {
      auto parsed = parse_vmcoreinfo(core->vmcoreinfo_note());
      if (parsed.ok()) from_note = std::move(*parsed);
    }
    if (from_note) {
      k->info_ = std::move(*from_note);
    } else {
      auto found = find_vmcoreinfo(*mem, options.scan);
      if (!found.ok()) return std::move(found).error().context("discover");
      k->info_ = std::move(*found);
    }
  }
  const VmcoreInfo& info = k->info_;

  // 2. Paging: the top-level table is a kernel image symbol, so __pa_symbol() applies.
  if (info.top_pgt_va < kKernelImageVaBase) {
    return Error(ErrorCode::kCorrupt, "discover: init_top_pgt " + hex(info.top_pgt_va) + " outside the kernel image",
                 info.top_pgt_va);
  }
  PagingConfig cfg;
  // Until _text/_end are known: KERNEL_IMAGE_SIZE from VMCOREINFO (1 GiB with KASLR) bounds
  // the image window; the module area starts right after it.
  if (auto size = info.number("KERNEL_IMAGE_SIZE"); size.ok() && *size > 0 && *size <= (1ll << 30)) {
    cfg.kernel_image_end = kKernelImageVaBase + static_cast<uint64_t>(*size);
  }
  cfg.l5 = info.pgtable_l5;
  cfg.phys_base = info.phys_base;
  cfg.top_pgt_pa = info.top_pgt_va - kKernelImageVaBase + static_cast<uint64_t>(info.phys_base);
  if (!mem->contains(cfg.top_pgt_pa, 4096)) {
    return Error(ErrorCode::kCorrupt, "discover: page table " + hex(cfg.top_pgt_pa) + " outside guest RAM", cfg.top_pgt_pa);
  }
  k->kmem_ = std::make_unique<KernelMemory>(mem, cfg);

  // 3. Symbols (shared between guests of the same build and KASLR slide).
  const bool cacheable = options.use_shared_cache && !info.build_id.empty();
  const std::string sym_key = info.build_id + "/" + hex(info.kernel_offset) + "/" + options.vmlinux_path + "/" +
                              options.system_map_path;
  if (cacheable) k->symbols_ = SharedCache::get().symbols(sym_key);
  if (!k->symbols_) {
    auto syms = load_symbols(*k->kmem_, info, options);
    if (!syms.ok()) return std::move(syms).error().context("discover: symbols");
    k->symbols_ = std::move(*syms);
    // Cross-check: the symbols must describe this kernel (catches a wrong vmlinux/System.map,
    // a wrong KASLR relocation or a mis-decoded kallsyms table). _stext is a text symbol, so
    // it is in kallsyms even without CONFIG_KALLSYMS_ALL.
    for (const char* name : {"_stext", "init_top_pgt", "swapper_pg_dir"}) {
      auto expected = info.symbol(name);
      if (!expected.ok()) continue;
      auto actual = k->symbols_->address(name);
      if (!actual.ok()) {
        if (std::string_view(name) == "_stext") {
          return Error(ErrorCode::kCorrupt, "discover: symbols lack _stext: not this kernel's symbol table");
        }
        continue;
      }
      if (*actual != *expected) {
        return Error(ErrorCode::kCorrupt, std::string("discover: symbol ") + name + " is " + hex(*actual) +
                                              " but VMCOREINFO says " + hex(*expected));
      }
    }
    if (cacheable) SharedCache::get().put_symbols(sym_key, k->symbols_);
  }

  // The image's real extent: the kernel unmaps what lies outside [_text, _end) rounded to
  // 2 MiB (cleanup_highmap), so only that is translated without a walk.
  if (auto text = k->symbols_->address("_text"), end = k->symbols_->address("_end"); text.ok() && end.ok()) {
    constexpr uint64_t k2M = 2ull << 20;
    uint64_t start = *text & ~(k2M - 1), stop = (*end + k2M - 1) & ~(k2M - 1);
    if (start >= kKernelImageVaBase && stop > start && stop - kKernelImageVaBase <= (1ull << 30)) {
      k->kmem_->set_kernel_image_window(start, stop);
    }
  }

  // 4. Direct map base (randomized with CONFIG_RANDOMIZE_MEMORY).
  if (auto pob = k->symbols_->address("page_offset_base"); pob.ok()) {
    auto v = k->kmem_->read_u64(*pob);
    if (!v.ok()) return std::move(v).error().context("discover: page_offset_base");
    // The base is PUD-aligned (1 GiB) in the kernel half.
    if (*v < 0xff00000000000000ull || (*v & ((1ull << 30) - 1)) != 0) {
      return Error(ErrorCode::kCorrupt, "discover: implausible page_offset_base " + hex(*v), *pob);
    }
    k->kmem_->set_page_offset_base(*v);
  } else {
    k->kmem_->set_page_offset_base(cfg.l5 ? kPageOffset5 : kPageOffset4);
  }

  // 5. Types.
  if (options.load_types) {
    const std::string type_key = info.build_id + "/" + options.btf_path;
    if (cacheable) k->types_ = SharedCache::get().types(type_key);
    if (!k->types_) {
      auto types = options.btf_path.empty() ? Types::from_guest(*k->kmem_, *k->symbols_)
                                            : Types::from_file(options.btf_path);
      if (!types.ok()) return std::move(types).error().context("discover: types");
      k->types_ = std::move(*types);
      if (cacheable) SharedCache::get().put_types(type_key, k->types_);
    }
  }
  return k;
}

Result<uint32_t> Kernel::nr_cpu_ids() {
  if (nr_cpu_ids_) return *nr_cpu_ids_;
  STALLMON_TRY(uint64_t va, symbol("nr_cpu_ids"));
  auto n = kmem_->read_u32(va);
  if (!n.ok()) return std::move(n).error().context("nr_cpu_ids");
  if (*n == 0) return Error(ErrorCode::kCorrupt, "nr_cpu_ids is 0", va);
  if (*n > kMaxCpus) return Error(ErrorCode::kLimit, "nr_cpu_ids " + std::to_string(*n) + " above " + std::to_string(kMaxCpus), va);
  nr_cpu_ids_ = *n;
  return *n;
}

Result<const std::vector<uint64_t>*> Kernel::per_cpu_offsets() {
  if (!per_cpu_offsets_.empty()) return &per_cpu_offsets_;
  STALLMON_TRY(uint32_t n, nr_cpu_ids());
  STALLMON_TRY(uint64_t va, symbol("__per_cpu_offset"));
  std::vector<uint64_t> offs(n);
  auto r = kmem_->read(va, offs.data(), offs.size() * 8);
  if (!r.ok()) return std::move(r).error().context("__per_cpu_offset");
  per_cpu_offsets_ = std::move(offs);
  return &per_cpu_offsets_;
}

Result<uint64_t> Kernel::percpu_address(uint64_t symbol_address, uint32_t cpu) {
  STALLMON_TRY(const std::vector<uint64_t>* offs, per_cpu_offsets());
  if (cpu >= offs->size()) {
    return Error(ErrorCode::kInvalidArgument, "cpu " + std::to_string(cpu) + " >= nr_cpu_ids " + std::to_string(offs->size()));
  }
  return symbol_address + (*offs)[cpu];
}

Result<uint64_t> Kernel::percpu_address(std::string_view sym, uint32_t cpu) {
  STALLMON_TRY(uint64_t a, symbol(sym));
  auto r = percpu_address(a, cpu);
  if (!r.ok()) return std::move(r).error().context(std::string(sym));
  return r;
}

Result<std::vector<uint32_t>> Kernel::read_cpumask(uint64_t va) {
  STALLMON_TRY(uint32_t n, nr_cpu_ids());
  std::vector<uint64_t> words((n + 63) / 64);
  STALLMON_TRY_VOID(kmem_->read(va, words.data(), words.size() * 8));
  std::vector<uint32_t> cpus;
  for (uint32_t cpu = 0; cpu < n; ++cpu) {
    if (words[cpu / 64] & (1ull << (cpu % 64))) cpus.push_back(cpu);
  }
  return cpus;
}

Result<std::vector<uint32_t>> Kernel::online_cpus() {
  STALLMON_TRY(uint64_t va, symbol("__cpu_online_mask"));
  auto r = read_cpumask(va);
  if (!r.ok()) return std::move(r).error().context("__cpu_online_mask");
  return r;
}

Result<bool> Kernel::still_valid() {
  // A core file or an explicitly given VMCOREINFO has nothing to re-read: it cannot reboot.
  if (!info_.note_gpa) return true;
  return vmcoreinfo_still_valid(*phys_, info_);
}

}  // namespace stallmon::introspect
