// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/dwarf_types.h"

#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwelf.h>
#include <fcntl.h>
#include <libelf.h>
#include <unistd.h>

#include <unordered_map>

#include "text.h"

namespace stallmon::introspect {

namespace {

constexpr int kMaxDepth = 32;                 // anonymous-member nesting, path components
constexpr uint32_t kMaxMemberVisits = 1u << 16;  // members looked at in one search

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

MemberLayout::Kind kind_of(int tag) {
  switch (tag) {
    case DW_TAG_base_type: return MemberLayout::Kind::kInt;
    case DW_TAG_pointer_type: return MemberLayout::Kind::kPointer;
    case DW_TAG_array_type: return MemberLayout::Kind::kArray;
    case DW_TAG_structure_type: return MemberLayout::Kind::kStruct;
    case DW_TAG_union_type: return MemberLayout::Kind::kUnion;
    case DW_TAG_enumeration_type: return MemberLayout::Kind::kEnum;
    default: return MemberLayout::Kind::kOther;
  }
}

bool type_of(Dwarf_Die* die, Dwarf_Die* out) {
  Dwarf_Attribute attr;
  return dwarf_attr_integrate(die, DW_AT_type, &attr) && dwarf_formref_die(&attr, out);
}

uint64_t size_of(Dwarf_Die* type) {
  Dwarf_Word size = 0;
  if (dwarf_aggregate_size(type, &size) != 0) return 0;  // flexible array, void
  return size;
}

// Bit offset of a member from the start of its composite (DWARF 2-5 encodings).
bool member_bit_offset(Dwarf_Die* m, uint64_t& bits, uint32_t& bit_size) {
  Dwarf_Attribute attr;
  Dwarf_Word v = 0;
  bit_size = 0;
  if (dwarf_hasattr(m, DW_AT_bit_size)) {
    int bs = dwarf_bitsize(m);
    if (bs <= 0 || bs > 64) return false;
    bit_size = static_cast<uint32_t>(bs);
  }
  if (dwarf_attr(m, DW_AT_data_bit_offset, &attr)) {
    if (dwarf_formudata(&attr, &v) != 0) return false;
    bits = v;
    return true;
  }
  uint64_t byte = 0;
  if (dwarf_attr(m, DW_AT_data_member_location, &attr)) {
    if (dwarf_formudata(&attr, &v) == 0) {
      byte = v;
    } else {
      Dwarf_Op* ops = nullptr;
      size_t n = 0;
      if (dwarf_getlocation(&attr, &ops, &n) != 0 || n != 1 || ops[0].atom != DW_OP_plus_uconst) return false;
      byte = ops[0].number;
    }
  }  // absent: a union member at 0
  bits = byte * 8;
  if (bit_size && dwarf_hasattr(m, DW_AT_bit_offset)) {
    // DWARF 2/3: bits from the most significant bit of the storage unit (little endian here).
    int storage = dwarf_bytesize(m);
    Dwarf_Die t;
    if (storage <= 0 && type_of(m, &t)) storage = static_cast<int>(size_of(&t));
    int bo = dwarf_bitoffset(m);
    if (storage <= 0 || bo < 0 || static_cast<uint64_t>(bo) + bit_size > static_cast<uint64_t>(storage) * 8) return false;
    bits += static_cast<uint64_t>(storage) * 8 - static_cast<uint64_t>(bo) - bit_size;
  }
  return true;
}

struct Hit {
  Dwarf_Die member;
  uint64_t bits = 0;
  uint32_t bit_size = 0;
};

enum class Found { kYes, kNo, kBad };

Found find_member(Dwarf_Die* composite, std::string_view name, uint64_t base, int depth, uint32_t& visits, Hit& out) {
  if (depth > kMaxDepth) return Found::kNo;
  Dwarf_Die child;
  if (dwarf_child(composite, &child) != 0) return Found::kNo;
  do {
    if (visits++ > kMaxMemberVisits) return Found::kBad;
    if (dwarf_tag(&child) != DW_TAG_member) continue;
    uint64_t bits = 0;
    uint32_t bit_size = 0;
    const char* n = dwarf_diename(&child);
    if (n && name == n) {
      if (!member_bit_offset(&child, bits, bit_size)) return Found::kBad;
      out = Hit{child, base + bits, bit_size};
      return Found::kYes;
    }
    if (n) continue;
    Dwarf_Die t, peeled;
    if (!type_of(&child, &t) || dwarf_peel_type(&t, &peeled) != 0) continue;
    const int tag = dwarf_tag(&peeled);
    if (tag != DW_TAG_structure_type && tag != DW_TAG_union_type) continue;
    if (!member_bit_offset(&child, bits, bit_size)) return Found::kBad;
    Found f = find_member(&peeled, name, base + bits, depth + 1, visits, out);
    if (f != Found::kNo) return f;
  } while (dwarf_siblingof(&child, &child) == 0);
  return Found::kNo;
}

class DwarfTypes final : public TypesOnlyAccess {
 public:
  DwarfTypes(std::string path, int fd, Dwarf* dw) : TypesOnlyAccess(path), path_(std::move(path)), fd_(fd), dw_(dw) {}
  ~DwarfTypes() override { dwarf_end(dw_); }

  Result<void> index() {
    Dwarf_CU* cu = nullptr;
    Dwarf_Die cudie;
    uint8_t unit_type = 0;
    Dwarf_Half version = 0;
    while (dwarf_get_units(dw_, cu, &cu, &version, &unit_type, &cudie, nullptr) == 0) {
      Dwarf_Die d;
      if (dwarf_child(&cudie, &d) != 0) continue;
      do {
        const int tag = dwarf_tag(&d);
        const char* name = dwarf_diename(&d);
        if (!name || (dwarf_hasattr(&d, DW_AT_declaration) && tag != DW_TAG_variable)) continue;
        switch (tag) {
          case DW_TAG_structure_type:
          case DW_TAG_union_type: composites_.emplace(name, dwarf_dieoffset(&d)); break;
          case DW_TAG_typedef: typedefs_.emplace(name, dwarf_dieoffset(&d)); break;
          case DW_TAG_variable:
            if (dwarf_hasattr(&d, DW_AT_type)) variables_.emplace(name, dwarf_dieoffset(&d));
            break;
          default: break;
        }
      } while (dwarf_siblingof(&d, &d) == 0);
    }
    if (composites_.empty()) return Error(ErrorCode::kNotFound, path_ + ": no DWARF types (a vmlinux built without debuginfo?)");
    return Ok();
  }


  Result<MemberLayout> member(std::string_view type, std::string_view path) const override {
    const std::string what = std::string(type) + "." + std::string(path);
    Dwarf_Die cur;
    STALLMON_TRY_VOID(find_type(type, cur));
    uint64_t bits = 0;
    Hit hit;
    std::string_view rest = path;
    int components = 0;
    while (!rest.empty()) {
      if (++components > kMaxDepth) return Error(ErrorCode::kLimit, path_ + ": member path too deep: " + what);
      size_t dot = rest.find('.');
      std::string_view name = rest.substr(0, dot);
      rest = dot == std::string_view::npos ? std::string_view{} : rest.substr(dot + 1);
      Dwarf_Die composite;
      const int tag = dwarf_peel_type(&cur, &composite) == 0 ? dwarf_tag(&composite) : 0;
      if (tag != DW_TAG_structure_type && tag != DW_TAG_union_type)
        return Error(ErrorCode::kNotFound, path_ + ": " + what + ": not a struct or union before " + std::string(name));
      uint32_t visits = 0;
      switch (find_member(&composite, name, 0, 0, visits, hit)) {
        case Found::kYes: break;
        case Found::kNo: return Error(ErrorCode::kNotFound, path_ + ": no member " + what);
        case Found::kBad: return Error(ErrorCode::kCorrupt, path_ + ": member " + what + ": unreadable DWARF");
      }
      bits += hit.bits;
      if (!type_of(&hit.member, &cur)) return Error(ErrorCode::kCorrupt, path_ + ": member " + what + " has no type");
    }
    Dwarf_Die peeled;
    if (dwarf_peel_type(&cur, &peeled) != 0) return Error(ErrorCode::kCorrupt, path_ + ": member " + what + ": bad type");
    MemberLayout m;
    m.bit_offset = bits;
    m.bit_size = hit.bit_size;
    m.kind = kind_of(dwarf_tag(&peeled));
    m.size = static_cast<uint32_t>(size_of(&peeled));
    return m;
  }

  Result<uint64_t> type_size(std::string_view type) const override {
    Dwarf_Die d, peeled;
    STALLMON_TRY_VOID(find_type(type, d));
    if (dwarf_peel_type(&d, &peeled) != 0) return Error(ErrorCode::kCorrupt, path_ + ": bad type " + std::string(type));
    const uint64_t size = size_of(&peeled);
    if (size == 0) return Error(ErrorCode::kCorrupt, path_ + ": no size for type " + std::string(type));
    return size;
  }

  Result<uint64_t> variable_size(std::string_view name) const override {
    auto it = variables_.find(std::string(name));
    Dwarf_Die d, t, peeled;
    if (it == variables_.end() || !dwarf_offdie(dw_, it->second, &d) || !type_of(&d, &t) || dwarf_peel_type(&t, &peeled) != 0)
      return Error(ErrorCode::kNotFound, path_ + ": no variable " + std::string(name));
    const uint64_t size = size_of(&peeled);
    if (size == 0) return Error(ErrorCode::kCorrupt, path_ + ": no size for variable " + std::string(name));
    return size;
  }

 private:
  Result<void> find_type(std::string_view type, Dwarf_Die& out) const {
    for (std::string_view tag : {"struct ", "union "})
      if (type.starts_with(tag)) type.remove_prefix(tag.size());
    const std::string name(type);
    for (const auto* map : {&composites_, &typedefs_}) {
      auto it = map->find(name);
      if (it != map->end() && dwarf_offdie(dw_, it->second, &out)) return Ok();
    }
    return Error(ErrorCode::kNotFound, path_ + ": no type " + name);
  }

  std::string path_;
  Fd fd_;
  Dwarf* dw_;
  std::unordered_map<std::string, Dwarf_Off> composites_, typedefs_, variables_;
};

}  // namespace

Result<std::string> elf_build_id(const std::string& path) {
  if (elf_version(EV_CURRENT) == EV_NONE) return Error(ErrorCode::kInternal, "libelf version mismatch");
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return Error(ErrorCode::kNotFound, path + ": cannot open");
  Elf* elf = elf_begin(fd.get(), ELF_C_READ_MMAP, nullptr);
  if (!elf) return Error(ErrorCode::kCorrupt, path + ": not an ELF file");
  const void* id = nullptr;
  ssize_t n = dwelf_elf_gnu_build_id(elf, &id);
  std::string out = n > 0 && n <= 64 ? detail::hex_bytes(std::span<const uint8_t>(static_cast<const uint8_t*>(id), static_cast<size_t>(n))) : std::string();
  elf_end(elf);
  if (out.empty()) return Error(ErrorCode::kNotFound, path + ": no .note.gnu.build-id");
  return out;
}

Result<std::unique_ptr<KernelAccess>> open_dwarf_types(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error(ErrorCode::kNotFound, path + ": cannot open");
  Dwarf* dw = dwarf_begin(fd, DWARF_C_READ);
  if (!dw) {
    ::close(fd);
    return Error(ErrorCode::kNotFound, path + ": no DWARF (" + dwarf_errmsg(-1) + ")");
  }
  auto t = std::make_unique<DwarfTypes>(path, fd, dw);
  STALLMON_TRY_VOID(t->index());
  return std::unique_ptr<KernelAccess>(std::move(t));
}

}  // namespace stallmon::introspect
