// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/symbols.h"

#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "stallmon/introspect/kernel_memory.h"
#include "stallmon/introspect/vmcoreinfo.h"

#include "content_hash.h"
#include "text.h"

namespace stallmon::introspect {
namespace {

using detail::hex;

bool is_absolute(char type) { return type == 'A' || type == 'a'; }

// Heap bytes of a name beyond the std::string itself (short names live inline).
uint64_t name_heap_bytes(size_t len) { return len < sizeof(std::string) / 2 ? 0 : len + 1; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// kallsyms decoding (kernel/kallsyms.c: kallsyms_expand_symbol, kallsyms_sym_address)

Result<std::vector<Symbol>> decode_kallsyms(const KallsymsTables& t, const SymbolLimits& limits) {
  if (t.num_syms == 0) return Error(ErrorCode::kCorrupt, "kallsyms: no symbols");
  if (t.num_syms > limits.max_symbols) {
    return Error(ErrorCode::kLimit, "kallsyms: kallsyms_num_syms " + std::to_string(t.num_syms) + " above the limit");
  }
  if (t.token_index.size() < 256) return Error(ErrorCode::kCorrupt, "kallsyms: token index truncated");
  const bool relative = !t.offsets.empty();
  if (relative ? t.offsets.size() < t.num_syms : t.addresses.size() < t.num_syms) {
    return Error(ErrorCode::kCorrupt, "kallsyms: address table shorter than kallsyms_num_syms");
  }
  // Expand the 256 tokens once.
  std::array<std::string_view, 256> tokens;
  const char* table = reinterpret_cast<const char*>(t.token_table.data());
  for (size_t b = 0; b < 256; ++b) {
    size_t off = t.token_index[b];
    if (off >= t.token_table.size()) {
      return Error(ErrorCode::kCorrupt, "kallsyms: token " + std::to_string(b) + " outside the token table");
    }
    const void* nul = std::memchr(table + off, 0, t.token_table.size() - off);
    if (!nul) return Error(ErrorCode::kCorrupt, "kallsyms: token " + std::to_string(b) + " not terminated");
    tokens[b] = std::string_view(table + off, static_cast<const char*>(nul) - (table + off));
  }
  bool absolute_percpu = false;
  if (relative) {
    if (t.absolute_percpu) {
      absolute_percpu = *t.absolute_percpu;
    } else {
      for (uint32_t i = 0; i < t.num_syms && !absolute_percpu; ++i) absolute_percpu = t.offsets[i] < 0;
    }
  }

  // The symbols are charged before they exist: the fixed part now, the names as they are
  // expanded (in steps, not per symbol). The table built from them is charged by its user.
  MemoryCharge charge;
  if (limits.budget) {
    STALLMON_TRY(charge, MemoryCharge::take(limits.budget, "kallsyms symbols",
                                            uint64_t{t.num_syms} * kSymbolOverheadBytes));
  }
  constexpr uint64_t kChargeStep = 256u << 10;
  uint64_t name_bytes_uncharged = 0;
  std::vector<Symbol> out;
  out.reserve(t.num_syms);
  size_t off = 0;
  std::string expanded;
  for (uint32_t i = 0; i < t.num_syms; ++i) {
    if (off >= t.names.size()) return Error(ErrorCode::kCorrupt, "kallsyms: names truncated at symbol " + std::to_string(i));
    size_t len = t.names[off++];
    // Since 6.1 (commit 73bbb94466fd, "kallsyms: support big kernel symbols") a length with
    // bit 7 set continues in a second byte (ULEB128, two bytes at most).
    if (len & 0x80) {
      if (off >= t.names.size()) return Error(ErrorCode::kCorrupt, "kallsyms: names truncated at symbol " + std::to_string(i));
      len = (len & 0x7f) | (static_cast<size_t>(t.names[off++]) << 7);
    }
    if (len == 0 || len > t.names.size() - off) {
      return Error(ErrorCode::kCorrupt, "kallsyms: name " + std::to_string(i) + " truncated or empty");
    }
    expanded.clear();
    for (size_t k = 0; k < len; ++k) {
      expanded += tokens[t.names[off + k]];
      if (expanded.size() > limits.max_name_len + 1) {
        return Error(ErrorCode::kLimit, "kallsyms: name " + std::to_string(i) + " longer than " + std::to_string(limits.max_name_len));
      }
    }
    off += len;
    if (expanded.size() < 2) return Error(ErrorCode::kCorrupt, "kallsyms: empty name at symbol " + std::to_string(i));
    name_bytes_uncharged += name_heap_bytes(expanded.size() - 1);
    if (name_bytes_uncharged >= kChargeStep) {
      STALLMON_TRY_VOID(charge.add(name_bytes_uncharged));
      name_bytes_uncharged = 0;
    }
    Symbol s;
    s.type = expanded[0];
    s.name = expanded.substr(1);
    if (!relative) {
      s.address = t.addresses[i];
    } else if (!absolute_percpu) {
      s.address = t.relative_base + static_cast<uint32_t>(t.offsets[i]);
    } else if (t.offsets[i] >= 0) {
      s.address = static_cast<uint64_t>(t.offsets[i]);
    } else {
      s.address = t.relative_base - 1 - static_cast<uint64_t>(static_cast<int64_t>(t.offsets[i]));
    }
    out.push_back(std::move(s));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// SymbolTable

SymbolTable::SymbolTable(std::vector<Symbol> symbols) : symbols_(std::move(symbols)) { index(); }

SymbolTable::SymbolTable(const SymbolTable& other) : symbols_(other.symbols_) { index(); }

SymbolTable& SymbolTable::operator=(const SymbolTable& other) {
  if (this != &other) {
    symbols_ = other.symbols_;
    index();
  }
  return *this;
}

void SymbolTable::index() {
  by_name_.clear();
  by_address_.clear();
  memory_bytes_ = 0;
  for (const Symbol& s : symbols_) memory_bytes_ += kSymbolOverheadBytes + name_heap_bytes(s.name.size());
  by_name_.reserve(symbols_.size());
  for (uint32_t i = 0; i < symbols_.size(); ++i) {
    by_name_.emplace(std::string_view(symbols_[i].name), i);  // keeps the first occurrence
    if (!is_absolute(symbols_[i].type)) by_address_.push_back(i);
  }
  std::stable_sort(by_address_.begin(), by_address_.end(),
                   [this](uint32_t a, uint32_t b) { return symbols_[a].address < symbols_[b].address; });
}

const Symbol* SymbolTable::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &symbols_[it->second];
}

Result<uint64_t> SymbolTable::address(std::string_view name) const {
  const Symbol* s = find(name);
  if (!s) return Error(ErrorCode::kNotFound, "symbol " + std::string(name) + " not found");
  return s->address;
}

std::optional<SymbolLookup> SymbolTable::lookup(uint64_t addr, uint64_t max_offset) const {
  auto it = std::upper_bound(by_address_.begin(), by_address_.end(), addr,
                             [this](uint64_t a, uint32_t i) { return a < symbols_[i].address; });
  if (it == by_address_.begin()) return std::nullopt;
  --it;
  // Several symbols can share an address: report the first of them in table order.
  uint64_t base = symbols_[*it].address;
  while (it != by_address_.begin() && symbols_[*(it - 1)].address == base) --it;
  const Symbol& s = symbols_[*it];
  if (addr - s.address > max_offset) return std::nullopt;
  auto next = std::upper_bound(it, by_address_.end(), base,
                               [this](uint64_t a, uint32_t i) { return a < symbols_[i].address; });
  const uint64_t size = next == by_address_.end() ? 0 : symbols_[*next].address - base;
  return SymbolLookup{&s, addr - s.address, size};
}

std::string SymbolTable::format(uint64_t addr) const {
  auto l = lookup(addr);
  if (!l) return hex(addr);
  if (l->offset == 0) return l->symbol->name;
  return l->symbol->name + "+" + hex(l->offset);
}

SymbolTable SymbolTable::relocate(uint64_t delta) const {
  std::vector<Symbol> syms = symbols_;
  for (Symbol& s : syms) {
    if (!is_absolute(s.type)) s.address += delta;
  }
  return SymbolTable(std::move(syms));
}

// ---------------------------------------------------------------------------------------------
// kallsyms from guest memory

namespace {

// Reads kallsyms_names incrementally: its length is not recorded anywhere, so follow the
// length prefixes, reading 256 KiB at a time, until num_syms names are covered.
Result<std::vector<uint8_t>> read_kallsyms_names(KernelMemory& mem, uint64_t va, uint32_t num_syms,
                                                 const SymbolLimits& limits, MemoryCharge& charge) {
  constexpr size_t kChunk = 256u << 10;
  std::vector<uint8_t> names;
  auto ensure = [&](size_t n) -> Result<void> {
    while (names.size() < n) {
      if (names.size() >= limits.max_names_bytes) {
        return Error(ErrorCode::kLimit, "kallsyms_names larger than " + std::to_string(limits.max_names_bytes) + " bytes");
      }
      size_t old = names.size();
      size_t want = std::min<size_t>(kChunk, limits.max_names_bytes - old);
      STALLMON_TRY_VOID(charge.add(want));
      names.resize(old + want);
      auto r = mem.read(va + old, names.data() + old, want);
      if (!r.ok()) {
        // Near the end of mapped memory: retry page by page so the tail still counts.
        size_t got = 0;
        while (got < want) {
          size_t n1 = std::min<size_t>(4096 - ((va + old + got) & 4095), want - got);
          if (!mem.read(va + old + got, names.data() + old + got, n1).ok()) break;
          got += n1;
        }
        names.resize(old + got);
        if (names.size() < n) return std::move(r).error().context("kallsyms_names truncated");
      }
    }
    return Ok();
  };
  size_t off = 0;
  for (uint32_t i = 0; i < num_syms; ++i) {
    STALLMON_TRY_VOID(ensure(off + 2));
    size_t len = names[off++];
    if (len & 0x80) len = (len & 0x7f) | (static_cast<size_t>(names[off++]) << 7);
    off += len;
  }
  STALLMON_TRY_VOID(ensure(off));
  names.resize(off);
  return names;
}

}  // namespace

KallsymsTables GuestKallsyms::view() const {
  KallsymsTables t;
  t.num_syms = num_syms;
  t.names = names;
  t.token_table = token_table;
  t.token_index = token_index;
  t.offsets = offsets;
  t.relative_base = relative_base;
  t.addresses = addresses;
  return t;
}

std::string GuestKallsyms::sha256() const {
  detail::Sha256 h;
  // Lengths first, so that moving bytes from one table to the next changes the hash.
  for (uint64_t n : {uint64_t{num_syms}, uint64_t{names.size()}, uint64_t{token_table.size()},
                     uint64_t{offsets.size()}, uint64_t{addresses.size()}, relative_base}) {
    h.update_value(n);
  }
  auto bytes = [](const auto& v) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(v[0]));
  };
  h.update(bytes(names));
  h.update(bytes(token_table));
  h.update(bytes(token_index));
  h.update(bytes(offsets));
  h.update(bytes(addresses));
  return h.hex_digest();
}

Result<GuestKallsyms> read_guest_kallsyms(KernelMemory& mem, const VmcoreInfo& info, const SymbolLimits& limits) {
  auto names_va = info.symbol("kallsyms_names");
  if (!names_va.ok()) return std::move(names_va).error().context("kallsyms (needs Linux 6.0+ VMCOREINFO)");
  STALLMON_TRY(uint64_t num_va, info.symbol("kallsyms_num_syms"));
  STALLMON_TRY(uint64_t table_va, info.symbol("kallsyms_token_table"));
  STALLMON_TRY(uint64_t index_va, info.symbol("kallsyms_token_index"));

  GuestKallsyms g;
  STALLMON_TRY(g.charge, MemoryCharge::take(limits.budget, "kallsyms tables", 0));
  STALLMON_TRY(g.num_syms, mem.read_u32(num_va));
  const uint32_t num_syms = g.num_syms;
  if (num_syms == 0) return Error(ErrorCode::kCorrupt, "kallsyms_num_syms is 0");
  if (num_syms > limits.max_symbols) {
    return Error(ErrorCode::kLimit, "kallsyms_num_syms " + std::to_string(num_syms) + " above the limit");
  }
  // Refuse early a count whose symbols alone could not fit (decoding charges them for real).
  if (limits.budget) {
    STALLMON_TRY_VOID(limits.budget->check("kallsyms symbols", uint64_t{num_syms} * kSymbolOverheadBytes));
  }

  g.token_index.resize(256);
  STALLMON_TRY_VOID(mem.read(index_va, g.token_index.data(), 512));
  uint16_t max_index = *std::max_element(g.token_index.begin(), g.token_index.end());
  // Tokens are short; read past the last token start until its NUL (bounded: 64 KiB + 256).
  g.token_table.resize(static_cast<size_t>(max_index) + 256);
  auto tt = mem.read(table_va, g.token_table.data(), g.token_table.size());
  if (!tt.ok()) return std::move(tt).error().context("kallsyms_token_table");

  if (auto off_va = info.symbol("kallsyms_offsets"); off_va.ok()) {
    STALLMON_TRY(uint64_t base_va, info.symbol("kallsyms_relative_base"));
    STALLMON_TRY_VOID(g.charge.add(uint64_t{num_syms} * 4));
    g.offsets.resize(num_syms);
    auto r = mem.read(*off_va, g.offsets.data(), g.offsets.size() * 4);
    if (!r.ok()) return std::move(r).error().context("kallsyms_offsets");
    STALLMON_TRY(g.relative_base, mem.read_u64(base_va));
  } else {
    STALLMON_TRY(uint64_t addr_va, info.symbol("kallsyms_addresses"));
    STALLMON_TRY_VOID(g.charge.add(uint64_t{num_syms} * 8));
    g.addresses.resize(num_syms);
    auto r = mem.read(addr_va, g.addresses.data(), g.addresses.size() * 8);
    if (!r.ok()) return std::move(r).error().context("kallsyms_addresses");
  }
  auto names = read_kallsyms_names(mem, *names_va, num_syms, limits, g.charge);
  if (!names.ok()) return std::move(names).error();
  g.names = std::move(*names);
  return g;
}

Result<SymbolTable> SymbolTable::from_kallsyms(KernelMemory& mem, const VmcoreInfo& info, const SymbolLimits& limits) {
  STALLMON_TRY(GuestKallsyms g, read_guest_kallsyms(mem, info, limits));
  auto syms = decode_kallsyms(g.view(), limits);
  if (!syms.ok()) return std::move(syms).error();
  return SymbolTable(std::move(*syms));
}

// ---------------------------------------------------------------------------------------------
// vmlinux .symtab

Result<SymbolTable> SymbolTable::from_vmlinux(const std::string& path, const SymbolLimits& limits) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return Error(ErrorCode::kNotFound, path + ": no such file");
    return Error::io("open " + path, err);
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } fd_closer{fd};
  if (elf_version(EV_CURRENT) == EV_NONE) return Error(ErrorCode::kInternal, "libelf version mismatch");
  Elf* elf = elf_begin(fd, ELF_C_READ, nullptr);
  if (!elf || elf_kind(elf) != ELF_K_ELF) {
    if (elf) elf_end(elf);
    return Error(ErrorCode::kCorrupt, path + ": not an ELF file");
  }
  struct ElfCloser {
    Elf* e;
    ~ElfCloser() { elf_end(e); }
  } elf_closer{elf};

  std::vector<Symbol> syms;
  Elf_Scn* scn = nullptr;
  bool found = false;
  while ((scn = elf_nextscn(elf, scn)) != nullptr) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_SYMTAB) continue;
    found = true;
    Elf_Data* data = elf_getdata(scn, nullptr);
    if (!data || sh.sh_entsize == 0) return Error(ErrorCode::kCorrupt, path + ": bad .symtab");
    size_t count = sh.sh_size / sh.sh_entsize;
    if (count > limits.max_symbols) return Error(ErrorCode::kLimit, path + ": too many symbols");
    for (size_t i = 1; i < count; ++i) {
      GElf_Sym sym;
      if (!gelf_getsym(data, static_cast<int>(i), &sym)) return Error(ErrorCode::kCorrupt, path + ": bad symbol");
      const char* name = elf_strptr(elf, sh.sh_link, sym.st_name);
      if (!name || !*name) continue;
      int type = GELF_ST_TYPE(sym.st_info);
      if (type == STT_SECTION || type == STT_FILE) continue;
      size_t nlen = strnlen(name, limits.max_name_len + 1);
      if (nlen > limits.max_name_len) continue;
      bool global = GELF_ST_BIND(sym.st_info) != STB_LOCAL;
      char t = '?';
      if (sym.st_shndx == SHN_ABS) t = 'a';
      else if (type == STT_FUNC) t = 't';
      else if (type == STT_OBJECT) t = 'd';
      else t = 't';
      if (global) t = static_cast<char>(t - 'a' + 'A');
      syms.push_back(Symbol{std::string(name, nlen), sym.st_value, t});
    }
  }
  if (!found) return Error(ErrorCode::kNotFound, path + ": no .symtab");
  return SymbolTable(std::move(syms));
}

// ---------------------------------------------------------------------------------------------
// System.map / /proc/kallsyms

Result<SymbolTable> SymbolTable::from_system_map_text(std::string_view text, const SymbolLimits& limits) {
  std::vector<Symbol> syms;
  detail::LineReader reader(text);
  std::string_view line;
  while (reader.next(line)) {
    const size_t line_no = reader.line_no();
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    size_t sp1 = line.find(' ');
    if (sp1 == std::string_view::npos || sp1 + 3 > line.size() || line[sp1 + 2] != ' ') {
      return Error(ErrorCode::kCorrupt, "System.map line " + std::to_string(line_no) + " malformed");
    }
    uint64_t addr = 0;
    auto [p, ec] = std::from_chars(line.data(), line.data() + sp1, addr, 16);
    if (ec != std::errc() || p != line.data() + sp1) {
      return Error(ErrorCode::kCorrupt, "System.map line " + std::to_string(line_no) + ": bad address");
    }
    std::string_view name = line.substr(sp1 + 3);
    if (name.find('[') != std::string_view::npos) continue;  // module symbol ("\t[ext4]")
    while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
    if (name.empty() || name.size() > limits.max_name_len) continue;
    if (syms.size() >= limits.max_symbols) return Error(ErrorCode::kLimit, "System.map: too many symbols");
    syms.push_back(Symbol{std::string(name), addr, line[sp1 + 1]});
  }
  if (syms.empty()) return Error(ErrorCode::kCorrupt, "System.map has no symbols");
  return SymbolTable(std::move(syms));
}

Result<SymbolTable> SymbolTable::from_system_map(const std::string& path, const SymbolLimits& limits) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error(ErrorCode::kNotFound, path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  auto r = from_system_map_text(ss.str(), limits);
  if (!r.ok()) return std::move(r).error().context(path);
  return r;
}

}  // namespace stallmon::introspect
