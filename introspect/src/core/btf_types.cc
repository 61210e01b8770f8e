// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/btf_types.h"

#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <mutex>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "btf_member_search.h"
#include "stallmon/introspect/kernel_memory.h"
#include "stallmon/introspect/symbols.h"

namespace stallmon::introspect {
namespace {

// Bound on typedef/modifier chains and anonymous-member nesting: BTF from a guest may loop.
constexpr int kMaxDepth = 32;

std::string_view strip_tag(std::string_view name) {
  for (std::string_view tag : {"struct ", "union ", "enum "}) {
    if (name.starts_with(tag)) return name.substr(tag.size());
  }
  return name;
}

Result<std::vector<uint8_t>> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error(ErrorCode::kNotFound, path + ": cannot open");
  in.seekg(0, std::ios::end);
  std::streamoff size = in.tellg();
  if (size < 0) return Error(ErrorCode::kIo, path + ": cannot determine size");
  // A vmlinux with DWARF can be ~800 MB; read it whole only below 2 GiB.
  if (static_cast<uint64_t>(size) > (2ull << 30)) return Error(ErrorCode::kLimit, path + ": file too large");
  in.seekg(0);
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  if (!in.read(reinterpret_cast<char*>(bytes.data()), size)) return Error(ErrorCode::kIo, path + ": read failed");
  return bytes;
}

// The .BTF section of an ELF file image.
Result<std::vector<uint8_t>> btf_section(const std::string& path, std::vector<uint8_t>& file) {
  if (elf_version(EV_CURRENT) == EV_NONE) return Error(ErrorCode::kInternal, "libelf version mismatch");
  Elf* elf = elf_memory(reinterpret_cast<char*>(file.data()), file.size());
  if (!elf) return Error(ErrorCode::kCorrupt, path + ": bad ELF");
  struct Closer {
    Elf* e;
    ~Closer() { elf_end(e); }
  } closer{elf};
  size_t shstrndx = 0;
  if (elf_getshdrstrndx(elf, &shstrndx) != 0) return Error(ErrorCode::kCorrupt, path + ": bad section headers");
  Elf_Scn* scn = nullptr;
  while ((scn = elf_nextscn(elf, scn)) != nullptr) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh)) continue;
    const char* name = elf_strptr(elf, shstrndx, sh.sh_name);
    if (!name || std::strcmp(name, ".BTF") != 0) continue;
    Elf_Data* data = elf_rawdata(scn, nullptr);
    if (!data || !data->d_buf) return Error(ErrorCode::kCorrupt, path + ": unreadable .BTF section");
    const auto* p = static_cast<const uint8_t*>(data->d_buf);
    return std::vector<uint8_t>(p, p + data->d_size);
  }
  return Error(ErrorCode::kNotFound, path + ": no .BTF section");
}

}  // namespace

Types::~Types() {
  if (btf_) btf__free(btf_);
}

namespace {
// libbpf prints its parse errors to stderr by default; for BTF that comes from a guest those
// lines are guest-controlled noise (the error is returned as a value instead). This silences
// libbpf process-wide: introspect is its only user in stallmon.
int silent_libbpf_print(enum libbpf_print_level, const char*, va_list) { return 0; }
void silence_libbpf() {
  static std::once_flag once;
  std::call_once(once, [] { libbpf_set_print(silent_libbpf_print); });
}
}  // namespace

uint64_t Types::estimated_memory(uint64_t btf_bytes, uint64_t types) {
  // libbpf keeps a copy of the blob plus per-type offsets; our indexes hold about one node
  // (with its name) per named type.
  return 2 * btf_bytes + types * (4 + 96);  // what from_btf_bytes charges while it builds
}

Result<std::shared_ptr<const Types>> Types::from_btf_bytes(std::vector<uint8_t> bytes,
                                                           const std::shared_ptr<MemoryBudget>& budget,
                                                           std::string origin) {
  silence_libbpf();
  if (bytes.size() > kMaxBtfBytes) return Error(ErrorCode::kLimit, "BTF larger than 64 MiB");
  if (bytes.size() < 24) return Error(ErrorCode::kCorrupt, "BTF too short");
  // Before libbpf parses: its copy of the blob and its per-type offsets (a type is at least 12
  // bytes); after: our name indexes, per type actually present.
  STALLMON_TRY(MemoryCharge parse_charge,
               MemoryCharge::take(budget, "BTF types", 2 * bytes.size() + bytes.size() / 12 * 4));
  std::shared_ptr<Types> t(new Types());
  t->raw_ = std::move(bytes);
  t->origin_ = std::move(origin);
  errno = 0;
  struct btf* b = btf__new(t->raw_.data(), static_cast<uint32_t>(t->raw_.size()));
  if (!b || libbpf_get_error(b)) {
    int err = b ? static_cast<int>(-libbpf_get_error(b)) : errno;
    return Error(ErrorCode::kCorrupt, std::string("libbpf rejected the BTF: ") + std::strerror(err));
  }
  t->btf_ = b;
  const uint32_t n = btf__type_cnt(b);
  if (n > kMaxBtfTypes) {
    return Error(ErrorCode::kLimit, "BTF has " + std::to_string(n) + " types, above " + std::to_string(kMaxBtfTypes));
  }
  STALLMON_TRY_VOID(parse_charge.add(uint64_t{n} * 96));
  // Pass 1: structs/unions (the one with most members wins over forward-like duplicates),
  // ints, enums, VARs. Pass 2: typedefs for names not taken.
  for (uint32_t id = 1; id < n; ++id) {
    const struct btf_type* ty = btf__type_by_id(b, id);
    if (!ty) continue;
    const char* name = btf__name_by_offset(b, ty->name_off);
    if (!name || !*name) continue;
    switch (btf_kind(ty)) {
      case BTF_KIND_STRUCT:
      case BTF_KIND_UNION: {
        auto [it, inserted] = t->named_.emplace(name, id);
        if (!inserted) {
          const struct btf_type* old = btf__type_by_id(b, it->second);
          if (old && btf_is_composite(old) && btf_vlen(ty) > btf_vlen(old)) it->second = id;
        }
        break;
      }
      case BTF_KIND_INT:
      case BTF_KIND_ENUM:
      case BTF_KIND_ENUM64:
      case BTF_KIND_FLOAT:
        t->named_.emplace(name, id);
        break;
      case BTF_KIND_VAR:
        t->vars_.emplace(name, id);
        break;
      default:
        break;
    }
  }
  for (uint32_t id = 1; id < n; ++id) {
    const struct btf_type* ty = btf__type_by_id(b, id);
    if (!ty || btf_kind(ty) != BTF_KIND_TYPEDEF) continue;
    const char* name = btf__name_by_offset(b, ty->name_off);
    if (name && *name) t->named_.emplace(name, id);
  }
  return std::shared_ptr<const Types>(std::move(t));
}

Result<std::shared_ptr<const Types>> Types::from_file(const std::string& path) {
  STALLMON_TRY(auto bytes, read_file(path));
  if (bytes.size() >= 4 && std::memcmp(bytes.data(), "\x7f" "ELF", 4) == 0) {
    STALLMON_TRY(auto section, btf_section(path, bytes));
    auto r = from_btf_bytes(std::move(section));
    if (!r.ok()) return std::move(r).error().context(path);
    return r;
  }
  auto r = from_btf_bytes(std::move(bytes));
  if (!r.ok()) return std::move(r).error().context(path);
  return r;
}

Result<std::vector<uint8_t>> Types::read_guest_btf(KernelMemory& mem, const SymbolTable& syms, MemoryCharge& charge) {
  STALLMON_TRY(uint64_t start, syms.address("__start_BTF"));
  STALLMON_TRY(uint64_t stop, syms.address("__stop_BTF"));
  if (stop <= start) return Error(ErrorCode::kCorrupt, "__stop_BTF is not above __start_BTF", stop);
  if (stop - start > kMaxBtfBytes) return Error(ErrorCode::kLimit, "guest BTF larger than 64 MiB", start);
  STALLMON_TRY_VOID(charge.add(stop - start));
  std::vector<uint8_t> bytes(stop - start);
  auto r = mem.read(start, bytes.data(), bytes.size());
  if (!r.ok()) return std::move(r).error().context("reading guest BTF");
  return bytes;
}

Result<std::shared_ptr<const Types>> Types::from_guest(KernelMemory& mem, const SymbolTable& syms,
                                                       const std::shared_ptr<MemoryBudget>& budget) {
  STALLMON_TRY(MemoryCharge charge, MemoryCharge::take(budget, "BTF blob", 0));
  STALLMON_TRY(auto bytes, read_guest_btf(mem, syms, charge));
  auto t = from_btf_bytes(std::move(bytes), budget);
  if (!t.ok()) return std::move(t).error().context("guest BTF at __start_BTF");
  return t;
}

uint32_t Types::type_count() const { return btf__type_cnt(btf_); }

Result<uint32_t> Types::find_type(std::string_view name) const {
  auto it = named_.find(std::string(strip_tag(name)));
  if (it == named_.end())
    return Error(ErrorCode::kNotFound, origin_.empty() ? "type " + std::string(name) + " not in BTF"
                                                       : origin_ + ": no type " + std::string(name));
  return it->second;
}

bool Types::has_type(std::string_view type) const { return find_type(type).ok(); }

namespace {

// Skips typedefs and const/volatile/restrict/type tags; bounded.
const struct btf_type* resolve(const struct btf* b, uint32_t id, uint32_t* out_id) {
  for (int depth = 0; depth < kMaxDepth; ++depth) {
    const struct btf_type* t = btf__type_by_id(b, id);
    if (!t) return nullptr;
    switch (btf_kind(t)) {
      case BTF_KIND_TYPEDEF:
      case BTF_KIND_CONST:
      case BTF_KIND_VOLATILE:
      case BTF_KIND_RESTRICT:
      case BTF_KIND_TYPE_TAG:
        id = t->type;
        continue;
      default:
        if (out_id) *out_id = id;
        return t;
    }
  }
  return nullptr;
}

std::string type_name(const struct btf* b, uint32_t id, int depth = 0) {
  if (id == 0) return "void";
  if (depth > kMaxDepth) return "?";
  const struct btf_type* t = btf__type_by_id(b, id);
  if (!t) return "?";
  const char* n = btf__name_by_offset(b, t->name_off);
  std::string name = n ? n : "";
  switch (btf_kind(t)) {
    case BTF_KIND_STRUCT: return "struct " + (name.empty() ? std::string("(anon)") : name);
    case BTF_KIND_UNION: return "union " + (name.empty() ? std::string("(anon)") : name);
    case BTF_KIND_ENUM:
    case BTF_KIND_ENUM64: return "enum " + (name.empty() ? std::string("(anon)") : name);
    case BTF_KIND_FWD: return (btf_kflag(t) ? "union " : "struct ") + name;
    case BTF_KIND_PTR: return type_name(b, t->type, depth + 1) + " *";
    case BTF_KIND_CONST: return "const " + type_name(b, t->type, depth + 1);
    case BTF_KIND_VOLATILE: return "volatile " + type_name(b, t->type, depth + 1);
    case BTF_KIND_RESTRICT:
    case BTF_KIND_TYPE_TAG: return type_name(b, t->type, depth + 1);
    case BTF_KIND_ARRAY: {
      const struct btf_array* a = btf_array(t);
      return type_name(b, a->type, depth + 1) + "[" + std::to_string(a->nelems) + "]";
    }
    case BTF_KIND_FUNC_PROTO: return "function";
    default: return name.empty() ? std::string("?") : name;
  }
}

}  // namespace

namespace detail {

namespace {

struct SearchState {
  int max_depth = 0;
  uint32_t visits_left = kMaxMemberVisits;
  std::vector<uint32_t> path;  // the composites being searched, outermost first
};

bool search_members(const struct btf* b, const struct btf_type* t, uint32_t id, std::string_view name,
                    uint64_t base_bits, BtfMemberHit& out, SearchState& search) {
  if (search.path.size() > static_cast<size_t>(search.max_depth) || !btf_is_composite(t)) return false;
  if (std::find(search.path.begin(), search.path.end(), id) != search.path.end()) return false;
  search.path.push_back(id);
  struct Pop {
    std::vector<uint32_t>& p;
    ~Pop() { p.pop_back(); }
  } pop{search.path};
  const struct btf_member* m = btf_members(t);
  const uint16_t vlen = btf_vlen(t);
  for (uint16_t i = 0; i < vlen; ++i) {
    if (search.visits_left == 0) return false;
    --search.visits_left;
    const char* mn = btf__name_by_offset(b, m[i].name_off);
    uint64_t bits = base_bits + btf_member_bit_offset(t, i);
    if (mn && *mn) {
      if (name == mn) {
        out = BtfMemberHit{bits, m[i].type, btf_member_bitfield_size(t, i)};
        return true;
      }
      continue;
    }
    uint32_t inner_id = 0;
    const struct btf_type* inner = resolve(b, m[i].type, &inner_id);
    if (inner && btf_is_composite(inner) && search_members(b, inner, inner_id, name, bits, out, search)) return true;
  }
  return false;
}

}  // namespace

MemberSearch find_btf_member(const struct btf* b, uint32_t id, std::string_view name, int max_depth,
                             BtfMemberHit& out) {
  uint32_t composite_id = id;
  const struct btf_type* t = resolve(b, id, &composite_id);
  if (!t) return MemberSearch::kNotFound;
  SearchState search;
  search.max_depth = max_depth;
  if (search_members(b, t, composite_id, name, 0, out, search)) return MemberSearch::kFound;
  return search.visits_left == 0 ? MemberSearch::kOverBudget : MemberSearch::kNotFound;
}

}  // namespace detail

Result<MemberInfo> Types::member(std::string_view type, std::string_view path) const {
  STALLMON_TRY(uint32_t id, find_type(type));
  if (path.empty()) return Error(ErrorCode::kInvalidArgument, "empty member path");
  uint64_t bits = 0;
  detail::BtfMemberHit f{};
  std::string_view rest = path;
  uint32_t cur = id;
  int components = 0;
  while (!rest.empty()) {
    if (++components > kMaxDepth) return Error(ErrorCode::kLimit, "member path too deep");
    size_t dot = rest.find('.');
    std::string_view comp = rest.substr(0, dot);
    rest = dot == std::string_view::npos ? std::string_view{} : rest.substr(dot + 1);
    const struct btf_type* t = resolve(btf_, cur, nullptr);
    if (!t || !btf_is_composite(t)) {
      return Error(ErrorCode::kNotFound, std::string(type) + "." + std::string(path) + ": " +
                                             type_name(btf_, cur) + " is not a struct or union");
    }
    switch (detail::find_btf_member(btf_, cur, comp, kMaxDepth, f)) {
      case detail::MemberSearch::kFound: break;
      case detail::MemberSearch::kOverBudget:
        return Error(ErrorCode::kLimit, std::string(type) + "." + std::string(path) + ": more than " +
                                            std::to_string(detail::kMaxMemberVisits) +
                                            " members searched (anonymous members nested too widely)");
      case detail::MemberSearch::kNotFound:
        return Error(ErrorCode::kNotFound, (origin_.empty() ? "" : origin_ + ": ") + "no member " + std::string(type) +
                                               "." + std::string(path));
    }
    bits += f.bit_offset;
    cur = f.type_id;
  }
  MemberInfo info;
  info.offset = bits / 8;
  info.type_id = f.type_id;
  info.bitfield_bits = f.bitfield_bits;
  info.type_name = type_name(btf_, f.type_id);
  long long sz = btf__resolve_size(btf_, f.type_id);
  info.size = sz > 0 ? static_cast<uint64_t>(sz) : 0;
  return info;
}

Result<uint64_t> Types::member_offset(std::string_view type, std::string_view path) const {
  STALLMON_TRY(MemberInfo m, member(type, path));
  return m.offset;
}

Result<uint64_t> Types::member_offset(std::string_view dotted) const {
  size_t dot = dotted.find('.');
  if (dot == std::string_view::npos || dot == 0) {
    return Error(ErrorCode::kInvalidArgument, "expected type.member, got " + std::string(dotted));
  }
  return member_offset(dotted.substr(0, dot), dotted.substr(dot + 1));
}

bool Types::has_member(std::string_view type, std::string_view path) const { return member(type, path).ok(); }

Result<uint64_t> Types::type_size(std::string_view type) const {
  STALLMON_TRY(uint32_t id, find_type(type));
  long long sz = btf__resolve_size(btf_, id);
  if (sz < 0) return Error(ErrorCode::kCorrupt, "cannot size type " + std::string(type));
  return static_cast<uint64_t>(sz);
}

Result<std::string> Types::variable_type_name(std::string_view variable) const {
  auto it = vars_.find(std::string(variable));
  if (it == vars_.end()) return Error(ErrorCode::kNotFound, "no BTF variable " + std::string(variable));
  const struct btf_type* t = btf__type_by_id(btf_, it->second);
  if (!t) return Error(ErrorCode::kCorrupt, "bad BTF variable " + std::string(variable));
  return type_name(btf_, t->type);
}

}  // namespace stallmon::introspect
