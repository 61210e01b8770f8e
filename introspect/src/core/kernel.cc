// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/kernel.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <list>
#include <mutex>
#include <thread>

#include "content_hash.h"
#include "stallmon/introspect/dwarf_types.h"
#include "stallmon/introspect/type_profile.h"
#include "text.h"

namespace stallmon::introspect {
namespace {

using detail::hex;

// Default direct-map bases without CONFIG_RANDOMIZE_MEMORY (Documentation/x86/x86_64/mm.rst).
constexpr uint64_t kPageOffset4 = 0xffff888000000000ull;
constexpr uint64_t kPageOffset5 = 0xff11000000000000ull;

// Process-wide cache: guests whose kernels have byte-identical kallsyms tables / BTF share the
// decoded symbols / parsed types. Keys are SHA-256 digests of the bytes read from each guest
// (or host file paths), never anything the guest merely claims (BUILD-ID, KERNELOFFSET), so
// a guest can only ever get its own tables back. Least recently used entries go first.
class SharedCache {
 public:
  static SharedCache& get() {
    static SharedCache cache;
    return cache;
  }
  std::shared_ptr<const SymbolTable> symbols(const std::string& key) { return find(symbols_, key); }
  void put_symbols(const std::string& key, std::shared_ptr<const SymbolTable> s) { insert(symbols_, key, std::move(s)); }
  std::shared_ptr<const Types> types(const std::string& key) { return find(types_, key); }
  void put_types(const std::string& key, std::shared_ptr<const Types> t) { insert(types_, key, std::move(t)); }
  void clear() {
    std::lock_guard lock(mu_);
    symbols_.clear();
    types_.clear();
  }

 private:
  static constexpr size_t kCapacity = 8;  // distinct kernels on one host are few
  template <typename V>
  using Lru = std::list<std::pair<std::string, V>>;
  template <typename V>
  V find(Lru<V>& lru, const std::string& key) {
    std::lock_guard lock(mu_);
    for (auto it = lru.begin(); it != lru.end(); ++it) {
      if (it->first != key) continue;
      lru.splice(lru.begin(), lru, it);
      return it->second;
    }
    return nullptr;
  }
  template <typename V>
  void insert(Lru<V>& lru, const std::string& key, V value) {
    std::lock_guard lock(mu_);
    for (auto& [k, v] : lru) {
      if (k == key) return;
    }
    lru.emplace_front(key, std::move(value));
    if (lru.size() > kCapacity) lru.pop_back();
  }
  std::mutex mu_;
  Lru<std::shared_ptr<const SymbolTable>> symbols_;
  Lru<std::shared_ptr<const Types>> types_;
};

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// OSRELEASE comes from the guest: used in a host path only as one plain file name component.
bool plain_file_name(const std::string& s) {
  return !s.empty() && s.size() < 128 && s.find('/') == std::string::npos && s[0] != '.' &&
         s.find('\0') == std::string::npos;
}

Result<std::shared_ptr<const SymbolTable>> load_symbols(KernelMemory& kmem, const VmcoreInfo& info,
                                                        const DiscoverOptions& options, const SymbolLimits& limits) {
  SharedCache& cache = SharedCache::get();
  const bool shared = options.use_shared_cache;
  if (!options.vmlinux_path.empty() || !options.system_map_path.empty()) {
    // A host file, relocated by this guest's KERNELOFFSET: both are in the key.
    const bool vmlinux = !options.vmlinux_path.empty();
    const std::string key = (vmlinux ? "vmlinux:" + options.vmlinux_path : "system.map:" + options.system_map_path) +
                            "@" + hex(info.kernel_offset);
    if (auto hit = shared ? cache.symbols(key) : nullptr) return hit;
    auto t = vmlinux ? SymbolTable::from_vmlinux(options.vmlinux_path, limits)
                     : SymbolTable::from_system_map(options.system_map_path, limits);
    if (!t.ok()) return std::move(t).error();
    auto table = std::make_shared<const SymbolTable>(t->relocate(info.kernel_offset));
    if (shared) cache.put_symbols(key, table);
    return table;
  }
  auto from_kallsyms = [&]() -> Result<std::shared_ptr<const SymbolTable>> {
    STALLMON_TRY(GuestKallsyms g, read_guest_kallsyms(kmem, info, limits));
    const std::string key = "kallsyms:" + g.sha256();
    if (auto hit = shared ? cache.symbols(key) : nullptr) return hit;
    auto syms = decode_kallsyms(g.view(), limits);
    if (!syms.ok()) return std::move(syms).error();
    auto table = std::make_shared<const SymbolTable>(std::move(*syms));
    if (shared) cache.put_symbols(key, table);
    return std::shared_ptr<const SymbolTable>(std::move(table));
  };
  auto guest = from_kallsyms();
  if (guest.ok() || options.profile_dir.empty()) return guest;
  // Kallsyms that cannot be decoded (an older or unusual encoding, or not located: VMCOREINFO
  // names them from 6.0 on): the build's System.map kept beside its type profile, named by the
  // BUILD-ID, or by OSRELEASE for kernels whose VMCOREINFO has no BUILD-ID (before 5.9; as
  // /boot/System.map-OSRELEASE is named). Relocated like any System.map and validated like
  // kallsyms; a map of another build under the same release fails that check or, at the
  // latest, yields no build id from the guest's .notes to find types with.
  const bool by_id = !info.build_id.empty();
  if (!by_id && !plain_file_name(info.osrelease)) return guest;
  const std::string map =
      options.profile_dir + "/" + (by_id ? lower(info.build_id) : info.osrelease) + ".System.map";
  const std::string key = "system.map:" + map + "@" + hex(info.kernel_offset);
  if (auto hit = shared ? cache.symbols(key) : nullptr) return hit;
  auto t = SymbolTable::from_system_map(map, limits);
  if (!t.ok()) {
    Error e = std::move(guest).error();
    e.message += "; and no System.map for " + (by_id ? "BUILD-ID " + info.build_id : "OSRELEASE " + info.osrelease) +
                 " (" + t.error().message + ")";
    return e;
  }
  auto table = std::make_shared<const SymbolTable>(t->relocate(info.kernel_offset));
  if (shared) cache.put_symbols(key, table);
  return table;
}

// The checks that tie a symbol table (decoded or shared) to THIS guest, run for every guest:
// the symbols VMCOREINFO names agree with it, and the page tables VMCOREINFO points to map the
// kernel text where phys_base says it is.
Result<void> validate_kernel(const SymbolTable& symbols, const VmcoreInfo& info, KernelMemory& kmem) {
  // _stext is a text symbol, so it is in kallsyms even without CONFIG_KALLSYMS_ALL.
  for (const char* name : {"_stext", "init_top_pgt", "swapper_pg_dir"}) {
    auto expected = info.symbol(name);
    if (!expected.ok()) continue;
    auto actual = symbols.address(name);
    if (!actual.ok()) {
      if (std::string_view(name) == "_stext") {
        return Error(ErrorCode::kCorrupt, "symbols lack _stext: not this kernel's symbol table");
      }
      continue;
    }
    if (*actual != *expected) {
      return Error(ErrorCode::kCorrupt, std::string("symbol ") + name + " is " + hex(*actual) +
                                            " but VMCOREINFO says " + hex(*expected));
    }
  }
  STALLMON_TRY(uint64_t stext, symbols.address("_stext"));
  const PagingConfig& cfg = kmem.config();
  const uint64_t expected_pa = stext - kKernelImageVaBase + static_cast<uint64_t>(cfg.phys_base);
  auto walked = walk_page_tables(kmem.physical(), cfg.top_pgt_pa, cfg.l5, stext);
  if (!walked.ok()) return std::move(walked).error().context("page tables at " + hex(cfg.top_pgt_pa) + " do not map _stext");
  if (*walked != expected_pa) {
    return Error(ErrorCode::kCorrupt, "page tables at " + hex(cfg.top_pgt_pa) + " map _stext to " + hex(*walked) +
                                          ", phys_base says " + hex(expected_pa));
  }
  return Ok();
}

// The GNU build id in the kernel's own .notes section (__start_notes..__stop_notes: a few
// hundred bytes; more than 64 KiB is not a kernel's).
Result<std::string> notes_build_id(KernelMemory& kmem, const SymbolTable& symbols) {
  STALLMON_TRY(uint64_t start, symbols.address("__start_notes"));
  STALLMON_TRY(uint64_t stop, symbols.address("__stop_notes"));
  constexpr uint64_t kMaxNotes = 64 << 10;
  if (stop <= start || stop - start > kMaxNotes) {
    return Error(ErrorCode::kCorrupt, "implausible .notes " + hex(start) + ".." + hex(stop));
  }
  std::vector<uint8_t> notes(stop - start);
  STALLMON_TRY_VOID(kmem.read(start, notes.data(), notes.size()));
  return gnu_build_id_from_notes(notes);
}

}  // namespace

void clear_shared_kernel_cache() { SharedCache::get().clear(); }

Result<std::unique_ptr<Kernel>> Kernel::build(std::shared_ptr<PhysicalMemory> mem, VmcoreInfo vmcoreinfo,
                                              const DiscoverOptions& options) {
  std::unique_ptr<Kernel> k(new Kernel());
  k->phys_ = mem;
  k->info_ = std::move(vmcoreinfo);
  k->max_cpus_ = options.max_cpus;
  const VmcoreInfo& info = k->info_;

  // Paging: the top-level table is a kernel image symbol, so __pa_symbol() applies.
  if (info.top_pgt_va < kKernelImageVaBase) {
    return Error(ErrorCode::kCorrupt, "init_top_pgt " + hex(info.top_pgt_va) + " outside the kernel image",
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
    return Error(ErrorCode::kCorrupt, "page table " + hex(cfg.top_pgt_pa) + " outside guest RAM", cfg.top_pgt_pa);
  }
  k->kmem_ = std::make_unique<KernelMemory>(mem, cfg);

  // Symbols (shared between guests with identical tables), then the per-guest checks.
  SymbolLimits limits = options.limits;
  if (!limits.budget) limits.budget = options.budget;
  auto syms = load_symbols(*k->kmem_, info, options, limits);
  if (!syms.ok()) return std::move(syms).error().context("symbols");
  k->symbols_ = std::move(*syms);
  STALLMON_TRY(k->symbols_charge_, MemoryCharge::take(options.budget, "kernel symbols", k->symbols_->memory_bytes()));
  auto valid = validate_kernel(*k->symbols_, info, *k->kmem_);
  if (!valid.ok()) return std::move(valid).error();
  // Kernels before 5.9 write no BUILD-ID into VMCOREINFO; their .notes section, found through
  // the symbols just validated, carries it, and the type lookups key on it.
  if (info.build_id.empty()) {
    if (auto id = notes_build_id(*k->kmem_, *k->symbols_); id.ok()) k->info_.build_id = *id;
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

  // Direct map base (randomized with CONFIG_RANDOMIZE_MEMORY).
  if (auto pob = k->symbols_->address("page_offset_base"); pob.ok()) {
    auto v = k->kmem_->read_u64(*pob);
    if (!v.ok()) return std::move(v).error().context("page_offset_base");
    // The base is PUD-aligned (1 GiB) in the kernel half.
    if (*v < 0xff00000000000000ull || (*v & ((1ull << 30) - 1)) != 0) {
      return Error(ErrorCode::kCorrupt, "implausible page_offset_base " + hex(*v), *pob);
    }
    k->kmem_->set_page_offset_base(*v);
  } else {
    k->kmem_->set_page_offset_base(cfg.l5 ? kPageOffset5 : kPageOffset4);
  }
  return k;
}

Result<std::shared_ptr<const Types>> Kernel::guest_btf_types(const DiscoverOptions& options) {
  SharedCache& cache = SharedCache::get();
  const bool shared = options.use_shared_cache;
  STALLMON_TRY(MemoryCharge blob_charge, MemoryCharge::take(options.budget, "BTF blob", 0));
  STALLMON_TRY(auto bytes, Types::read_guest_btf(*kmem_, *symbols_, blob_charge));
  detail::Sha256 h;
  h.update(bytes);
  const std::string key = "btf:" + h.hex_digest();
  std::shared_ptr<const Types> types = shared ? cache.types(key) : nullptr;
  if (!types) {
    blob_charge.reset();  // the blob moves into the Types, which from_btf_bytes charges
    auto t = Types::from_btf_bytes(std::move(bytes), options.budget);
    if (!t.ok()) return std::move(t).error().context("guest BTF at __start_BTF");
    types = std::move(*t);
    if (shared) cache.put_types(key, types);
  }
  return types;
}

namespace {

// A profile file for the guest whose VMCOREINFO says `build_id`: another kernel's profile would
// give wrong offsets, so its BUILD-ID must match.
Result<std::shared_ptr<const Types>> profile_types(const std::string& path, const std::string& build_id,
                                                   const std::shared_ptr<MemoryBudget>& budget) {
  STALLMON_TRY(TypeProfile p, load_type_profile(path));
  if (build_id.empty()) return Error(ErrorCode::kNotFound, path + ": the guest's VMCOREINFO has no BUILD-ID to check it against");
  if (p.build_id != lower(build_id))
    return Error(ErrorCode::kInvalidArgument, path + ": " + p.label() + " is for another kernel (the guest's BUILD-ID is " + build_id + ")");
  auto t = types_from_profile(p, budget);
  if (!t.ok()) return std::move(t).error().context(path);
  return t;
}

// Where a host keeps the vmlinux of a kernel build under a debug directory: by BUILD-ID (the
// debuginfod / Fedora layout), then by release as Debian's -dbg (boot/vmlinux-REL, which has no
// .build-id link for vmlinux: 6.1.0-56's has links for the vDSOs only) and Fedora/Ubuntu
// (lib/modules/REL/vmlinux) install it. The BUILD-ID is checked on each.
std::vector<std::string> debug_vmlinux_candidates(const std::string& dir, const std::string& build_id,
                                                  const std::string& osrelease) {
  std::vector<std::string> out{debug_file_for_build_id(dir, lower(build_id))};
  if (plain_file_name(osrelease)) {
    out.push_back(dir + "/boot/vmlinux-" + osrelease);
    out.push_back(dir + "/lib/modules/" + osrelease + "/vmlinux");
  }
  return out;
}

// The readers' types recorded from a vmlinux's DWARF (host debuginfo with the guest's BUILD-ID).
Result<std::shared_ptr<const Types>> debuginfo_types(const std::string& path, const std::string& build_id,
                                                     const std::shared_ptr<MemoryBudget>& budget) {
  STALLMON_TRY(std::string id, elf_build_id(path));
  if (id != lower(build_id)) return Error(ErrorCode::kInvalidArgument, path + ": BUILD-ID " + id + " is not the guest's " + build_id);
  STALLMON_TRY(auto dwarf, open_dwarf_types(path));
  auto p = record_reader_types(*dwarf);
  if (!p.ok()) return std::move(p).error().context(path);
  p->build_id = id;
  auto t = types_from_profile(*p, budget);
  if (!t.ok()) return std::move(t).error().context(path);
  return t;
}

}  // namespace

Result<void> Kernel::load_types(const DiscoverOptions& options) {
  SharedCache& cache = SharedCache::get();
  const bool shared = options.use_shared_cache;
  const std::string& build_id = info_.build_id;
  // A file named by the caller decides; the fallbacks are tried in order, each failure kept.
  auto cached = [&](const std::string& key, auto make) -> Result<std::shared_ptr<const Types>> {
    if (auto t = shared ? cache.types(key) : nullptr) return t;
    STALLMON_TRY(std::shared_ptr<const Types> t, make());
    if (shared) cache.put_types(key, t);
    return t;
  };
  if (!options.btf_path.empty()) {
    STALLMON_TRY(types_, cached("btf-file:" + options.btf_path, [&] { return Types::from_file(options.btf_path); }));
  } else if (!options.profile_path.empty()) {
    STALLMON_TRY(types_, cached("profile:" + build_id + ":" + options.profile_path,
                                [&] { return profile_types(options.profile_path, build_id, options.budget); }));
  } else {
    std::vector<std::string> tried;
    ErrorCode code = ErrorCode::kNotFound;  // a guest BTF that is there but bad keeps its code
    if (!options.ignore_guest_btf) {
      auto t = guest_btf_types(options);
      if (t.ok()) {
        types_ = std::move(t).value();
      } else if (t.error().code == ErrorCode::kOverBudget || t.error().code == ErrorCode::kLimit) {
        return std::move(t).error();
      } else {
        code = t.error().code;
        tried.push_back("guest BTF: " + t.error().to_string());
      }
    } else {
      tried.push_back("guest BTF: ignored");
    }
    if (!types_ && !options.profile_dir.empty() && !build_id.empty()) {
      const std::string path = options.profile_dir + "/" + lower(build_id) + ".profile";
      auto t = cached("profile:" + build_id + ":" + path, [&] { return profile_types(path, build_id, options.budget); });
      if (t.ok()) types_ = std::move(t).value();
      else tried.push_back("profile directory: " + t.error().to_string());
    }
    if (!types_ && !options.debug_dir.empty() && !build_id.empty()) {
      for (const std::string& path : debug_vmlinux_candidates(options.debug_dir, build_id, info_.osrelease)) {
        auto t = cached("debuginfo:" + build_id + ":" + path, [&] { return debuginfo_types(path, build_id, options.budget); });
        if (t.ok()) {
          types_ = std::move(t).value();
          break;
        }
        tried.push_back("host debuginfo: " + t.error().to_string());
      }
    }
    if (!types_) {
      std::string why = "no type information for BUILD-ID " + (build_id.empty() ? std::string("(none)") : build_id);
      for (const std::string& t : tried) why += "; " + t;
      return Error(code, why);
    }
  }
  STALLMON_TRY(types_charge_, MemoryCharge::take(options.budget, "kernel types", types_->memory_bytes()));
  return Ok();
}

Result<uint64_t> Kernel::vmcoreinfo_note_gpa() {
  // u32 *vmcoreinfo_note (kernel/crash_core.c, a page allocated at boot since 4.15).
  STALLMON_TRY(uint64_t sym, symbol("vmcoreinfo_note"));
  STALLMON_TRY(uint64_t va, kmem_->read_u64(sym));
  auto pa = kmem_->translate(va);
  if (!pa.ok()) return std::move(pa).error().context("vmcoreinfo_note " + hex(va));
  return pa;
}

Result<uint64_t> Kernel::jiffies() {
  auto sym = symbol("jiffies_64");
  if (!sym.ok()) sym = symbol("jiffies");
  if (!sym.ok()) return std::move(sym).error();
  return kmem_->read_u64(*sym);
}

namespace {

// Proof 2 of a VMCOREINFO note: the kernel it describes is running. jiffies move only when some
// CPU takes a tick, and a tickless (NO_HZ) guest whose CPUs are all idle takes none until one
// wakes: 40 ms without an advance was seen on an idle 4-vCPU guest. So poll until the first
// advance, up to `wait`; a busy guest answers within a few ms.
bool jiffies_advance(Kernel& k, std::chrono::milliseconds wait) {
  auto j0 = k.jiffies();
  if (!j0.ok()) return false;
  const auto step = std::min<std::chrono::milliseconds>(wait, std::chrono::milliseconds(10));
  const auto end = std::chrono::steady_clock::now() + wait;
  do {
    std::this_thread::sleep_for(step);
    auto j1 = k.jiffies();
    if (!j1.ok()) return false;
    if (*j1 > *j0) return true;
  } while (std::chrono::steady_clock::now() < end);
  return false;
}

}  // namespace

Result<std::unique_ptr<Kernel>> Kernel::discover(std::shared_ptr<PhysicalMemory> mem, const DiscoverOptions& options,
                                                 DiscoveryReport* report) {
  if (!mem) return Error(ErrorCode::kInvalidArgument, "discover: no memory source");
  DiscoveryReport local;
  DiscoveryReport& rep = report ? *report : local;
  auto finish = [&](std::unique_ptr<Kernel> k) -> Result<std::unique_ptr<Kernel>> {
    if (options.load_types) {
      auto t = k->load_types(options);
      if (!t.ok()) return std::move(t).error().context("discover: types");
    }
    return k;
  };

  // A VMCOREINFO given by the caller, or the core file's own note: nothing to choose from.
  std::optional<VmcoreInfo> given = options.vmcoreinfo;
  if (!given) {
    if (auto* core = dynamic_cast<ElfCoreMemory*>(mem.get()); core && !core->vmcoreinfo_note().empty()) {
      auto parsed = parse_vmcoreinfo(core->vmcoreinfo_note());
      if (parsed.ok()) given = std::move(*parsed);
    }
  }
  if (given) {
    auto k = build(mem, std::move(*given), options);
    if (!k.ok()) return std::move(k).error().context("discover");
    return finish(std::move(*k));
  }

  // A RAM scan: every distinct note is a candidate; the running kernel decides which is its own.
  auto found = find_vmcoreinfo_candidates(*mem, options.scan);
  if (!found.ok()) return std::move(found).error().context("discover");
  rep.bytes_scanned = found->bytes_scanned;
  rep.notes_seen = found->notes_seen;
  rep.candidates = found->distinct.size() + found->dropped;
  const bool check_clock = options.clock_check == DiscoverOptions::ClockCheck::kAlways ||
                           (options.clock_check == DiscoverOptions::ClockCheck::kAuto && mem->live());
  std::optional<Error> last;
  auto reject = [&](uint64_t gpa, Error e) {
    rep.rejected.push_back(hex(gpa) + ": " + e.message);
    last = std::move(e);
  };
  for (VmcoreInfoCandidate& cand : found->distinct) {
    const uint64_t first_gpa = cand.gpas.front();
    auto built = build(mem, cand.info, options);
    if (!built.ok()) {
      reject(first_gpa, std::move(built).error());
      continue;
    }
    std::unique_ptr<Kernel> k = std::move(*built);
    // Proof 1: the kernel these tables describe keeps its note at one of this text's addresses.
    auto pointed = k->vmcoreinfo_note_gpa();
    if (pointed.ok()) {
      if (std::find(cand.gpas.begin(), cand.gpas.end(), *pointed) == cand.gpas.end()) {
        reject(first_gpa, Error(ErrorCode::kCorrupt, "the kernel it describes keeps its note at " + hex(*pointed)));
        continue;
      }
      k->info_.note_gpa = *pointed;
    } else if (pointed.error().code != ErrorCode::kNotFound || cand.gpas.size() != 1 ||
               found->distinct.size() + found->dropped != 1) {
      // Without the vmcoreinfo_note symbol (kallsyms without data symbols) a note is taken only
      // when it is the one note in RAM.
      reject(first_gpa, std::move(pointed).error().context("cannot prove the note"));
      continue;
    }
    // Proof 2: the kernel is running (a previous boot's memory does not tick).
    if (check_clock && !jiffies_advance(*k, options.clock_wait)) {
      reject(*k->info_.note_gpa,
             Error(ErrorCode::kCorrupt, "jiffies do not advance within " +
                                            std::to_string(options.clock_wait.count()) +
                                            " ms (stale memory, or a guest idle that long?)"));
      continue;
    }
    rep.accepted_gpa = k->info_.note_gpa;
    return finish(std::move(k));
  }
  std::string why = std::to_string(found->distinct.size()) + " VMCOREINFO candidate(s) rejected";
  if (found->dropped) why += " (" + std::to_string(found->dropped) + " more distinct notes not evaluated)";
  if (!rep.rejected.empty()) why += ": " + rep.rejected.front();
  return Error(last ? last->code : ErrorCode::kNotFound, "discover: " + why);
}

Result<uint32_t> Kernel::nr_cpu_ids() {
  if (nr_cpu_ids_) return *nr_cpu_ids_;
  STALLMON_TRY(uint64_t va, symbol("nr_cpu_ids"));
  auto n = kmem_->read_u32(va);
  if (!n.ok()) return std::move(n).error().context("nr_cpu_ids");
  if (*n == 0) return Error(ErrorCode::kCorrupt, "nr_cpu_ids is 0", va);
  if (*n > kMaxCpus) return Error(ErrorCode::kLimit, "nr_cpu_ids " + std::to_string(*n) + " above " + std::to_string(kMaxCpus), va);
  nr_cpu_ids_ = max_cpus_ ? std::min(*n, max_cpus_) : *n;
  return *nr_cpu_ids_;
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
