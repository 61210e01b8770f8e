// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/type_profile.h"

#include <bpf/btf.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <map>
#include <set>

namespace stallmon::introspect {

namespace {

constexpr std::string_view kMagic = "stallmon-type-profile";

struct KindName {
  MemberLayout::Kind kind;
  std::string_view name;
};
constexpr KindName kKinds[] = {
    {MemberLayout::Kind::kInt, "int"},     {MemberLayout::Kind::kPointer, "ptr"},
    {MemberLayout::Kind::kArray, "array"}, {MemberLayout::Kind::kStruct, "struct"},
    {MemberLayout::Kind::kUnion, "union"}, {MemberLayout::Kind::kEnum, "enum"},
};

std::string_view kind_name(MemberLayout::Kind k) {
  for (const KindName& n : kKinds)
    if (n.kind == k) return n.name;
  return "?";
}

bool is_identifier(std::string_view s) {
  if (s.empty() || s.size() > TypeProfile::kMaxNameBytes) return false;
  if (s[0] >= '0' && s[0] <= '9') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  });
}

bool is_path(std::string_view s) {
  size_t components = 0;
  while (true) {
    size_t dot = s.find('.');
    if (!is_identifier(s.substr(0, dot)) || ++components > TypeProfile::kMaxPathComponents) return false;
    if (dot == std::string_view::npos) return true;
    s.remove_prefix(dot + 1);
  }
}

bool is_hex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::vector<std::string_view> split(std::string_view line) {
  std::vector<std::string_view> out;
  while (!line.empty() && out.size() <= 8) {
    size_t sp = line.find(' ');
    out.push_back(line.substr(0, sp));
    if (sp == std::string_view::npos) break;
    line.remove_prefix(sp + 1);
  }
  return out;
}

bool number(std::string_view s, uint64_t& v) {
  if (s.empty() || s.size() > 20) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

const ProfileType* TypeProfile::find_type(std::string_view name) const {
  for (const ProfileType& t : types)
    if (t.name == name) return &t;
  return nullptr;
}

std::string TypeProfile::label() const { return "profile " + build_id.substr(0, 8); }

Result<TypeProfile> parse_type_profile(std::string_view text) {
  if (text.size() > TypeProfile::kMaxBytes)
    return Error(ErrorCode::kLimit, "type profile of " + std::to_string(text.size()) + " bytes, above " +
                                        std::to_string(TypeProfile::kMaxBytes));
  TypeProfile p;
  std::set<std::string, std::less<>> member_keys, variable_names;
  size_t members = 0;
  bool header = false;
  size_t lineno = 0;
  while (!text.empty()) {
    ++lineno;
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    auto err = [&](std::string what) {
      return Error(ErrorCode::kCorrupt, "type profile line " + std::to_string(lineno) + ": " + what);
    };
    if (line.empty() || line[0] == '#') continue;
    const auto f = split(line);
    if (!header) {
      uint64_t version = 0;
      if (f.size() != 2 || f[0] != kMagic || !number(f[1], version)) return err("not a stallmon type profile");
      if (version != TypeProfile::kVersion)
        return Error(ErrorCode::kUnsupported, "type profile version " + std::to_string(version) + " (this stallmon reads " +
                                                  std::to_string(TypeProfile::kVersion) + ")");
      header = true;
      continue;
    }
    if (f[0] == "build-id") {
      if (f.size() != 2 || f[1].size() < 2 || f[1].size() > 128 || f[1].size() % 2 || !is_hex(f[1]))
        return err("bad build-id");
      if (!p.build_id.empty()) return err("second build-id");
      p.build_id = f[1];
    } else if (f[0] == "type") {
      uint64_t size = 0;
      if (f.size() != 3 || !is_identifier(f[1]) || !number(f[2], size)) return err("expected: type NAME SIZE");
      if (size == 0 || size > TypeProfile::kMaxTypeBytes)
        return err("type " + std::string(f[1]) + " of " + std::to_string(size) + " bytes");
      if (p.find_type(f[1])) return err("type " + std::string(f[1]) + " twice");
      if (p.types.size() >= TypeProfile::kMaxTypes) return err("more than " + std::to_string(TypeProfile::kMaxTypes) + " types");
      p.types.push_back(ProfileType{std::string(f[1]), size, {}});
    } else if (f[0] == "member") {
      uint64_t size = 0, bit_offset = 0, bit_size = 0;
      if (f.size() != 7 || !is_identifier(f[1]) || !is_path(f[2]) || !number(f[4], size) ||
          !number(f[5], bit_offset) || !number(f[6], bit_size))
        return err("expected: member TYPE PATH KIND SIZE BIT_OFFSET BIT_SIZE");
      const std::string what = std::string(f[1]) + "." + std::string(f[2]);
      auto* t = p.types.empty() || p.types.back().name != f[1] ? nullptr : &p.types.back();
      if (!t) return err("member " + what + " not right after its type");
      auto kind = std::find_if(std::begin(kKinds), std::end(kKinds), [&](const KindName& k) { return k.name == f[3]; });
      if (kind == std::end(kKinds)) return err("member " + what + ": unknown kind " + std::string(f[3]));
      const bool scalar = kind->kind == MemberLayout::Kind::kInt || kind->kind == MemberLayout::Kind::kPointer ||
                          kind->kind == MemberLayout::Kind::kEnum;
      if (size == 0 || (scalar && (size > 8 || (size & (size - 1)))) || (kind->kind == MemberLayout::Kind::kPointer && size != 8))
        return err("member " + what + ": a " + std::string(f[3]) + " of " + std::to_string(size) + " bytes");
      if (bit_size > 64 || (bit_size && (kind->kind != MemberLayout::Kind::kInt && kind->kind != MemberLayout::Kind::kEnum)))
        return err("member " + what + ": bit size " + std::to_string(bit_size));
      if (!bit_size && bit_offset % 8) return err("member " + what + ": unaligned");
      const uint64_t end_bits = bit_size ? bit_offset + bit_size : bit_offset + size * 8;
      if (size > t->size || bit_offset > t->size * 8 || end_bits > t->size * 8)
        return err("member " + what + " (bit " + std::to_string(bit_offset) + ", " + std::to_string(size) +
                   " bytes) lies outside " + t->name + " (" + std::to_string(t->size) + " bytes)");
      if (++members > TypeProfile::kMaxMembers) return err("more than " + std::to_string(TypeProfile::kMaxMembers) + " members");
      if (!member_keys.insert(what).second) return err("member " + what + " twice");
      MemberLayout m;
      m.kind = kind->kind;
      m.size = static_cast<uint32_t>(size);
      m.bit_offset = bit_offset;
      m.bit_size = static_cast<uint32_t>(bit_size);
      t->members.push_back(ProfileMember{std::string(f[2]), m});
    } else if (f[0] == "var") {
      uint64_t size = 0;
      if (f.size() != 3 || !is_identifier(f[1]) || !number(f[2], size)) return err("expected: var NAME SIZE");
      if (size == 0 || size > TypeProfile::kMaxTypeBytes) return err("var " + std::string(f[1]) + " of " + std::to_string(size) + " bytes");
      if (!variable_names.insert(std::string(f[1])).second) return err("var " + std::string(f[1]) + " twice");
      if (p.variables.size() >= TypeProfile::kMaxVariables) return err("more than " + std::to_string(TypeProfile::kMaxVariables) + " variables");
      p.variables.push_back(ProfileVariable{std::string(f[1]), size});
    } else {
      return err("unknown entry " + std::string(f[0].substr(0, 32)));
    }
  }
  if (!header) return Error(ErrorCode::kCorrupt, "type profile: empty");
  if (p.build_id.empty()) return Error(ErrorCode::kCorrupt, "type profile: no build-id");
  return p;
}

Result<TypeProfile> load_type_profile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error(ErrorCode::kNotFound, path + ": cannot open");
  std::string text(TypeProfile::kMaxBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  auto p = parse_type_profile(text);
  if (!p.ok()) return std::move(p).error().context(path);
  return p;
}

std::string format_type_profile(const TypeProfile& p) {
  std::string out = std::string(kMagic) + " " + std::to_string(TypeProfile::kVersion) + "\n";
  out += "# made by stallctl profile make: the types stallmon's readers ask for\n";
  out += "build-id " + p.build_id + "\n";
  for (const ProfileType& t : p.types) {
    out += "type " + t.name + " " + std::to_string(t.size) + "\n";
    for (const ProfileMember& m : t.members) {
      out += "member " + t.name + " " + m.path + " " + std::string(kind_name(m.layout.kind)) + " " +
             std::to_string(m.layout.size) + " " + std::to_string(m.layout.bit_offset) + " " +
             std::to_string(m.layout.bit_size) + "\n";
    }
  }
  for (const ProfileVariable& v : p.variables) out += "var " + v.name + " " + std::to_string(v.size) + "\n";
  return out;
}

std::string debug_file_for_build_id(const std::string& debug_dir, std::string_view build_id) {
  if (build_id.size() < 3) return {};
  return debug_dir + "/.build-id/" + std::string(build_id.substr(0, 2)) + "/" + std::string(build_id.substr(2)) + ".debug";
}

namespace {

// Member paths of one type as a tree: "node.llist" and "node.u_flags" share the composite
// "node". A component that is only a prefix becomes an unnamed-type composite at the parent's
// start and of the parent's size (its children keep their absolute offsets); a component that
// is itself listed (a struct/union member) sits at its own offset with its own size.
struct Node {
  const MemberLayout* leaf = nullptr;
  std::map<std::string, Node, std::less<>> children;
};

class BtfWriter {
 public:
  explicit BtfWriter(std::string label) : label_(std::move(label)), btf_(btf__new_empty()) {}
  ~BtfWriter() { btf__free(btf_); }
  bool ok() const { return btf_ != nullptr; }
  struct btf* btf() { return btf_; }

  Result<int> scalar(MemberLayout::Kind kind, uint32_t size) {
    if (kind == MemberLayout::Kind::kPointer) return check(btf__add_ptr(btf_, 0), "pointer");
    auto& cache = kind == MemberLayout::Kind::kEnum ? enums_ : ints_;
    if (auto it = cache.find(size); it != cache.end()) return it->second;
    const std::string name = std::string(kind == MemberLayout::Kind::kEnum ? "stallmon_profile_e" : "stallmon_profile_u") + std::to_string(size * 8);
    STALLMON_TRY(int id, check(kind == MemberLayout::Kind::kEnum ? btf__add_enum(btf_, name.c_str(), size)
                                                                 : btf__add_int(btf_, name.c_str(), size, 0),
                               name));
    cache[size] = id;
    return id;
  }
  Result<int> bytes(uint32_t size) {
    STALLMON_TRY(int u8, scalar(MemberLayout::Kind::kInt, 1));
    if (!index_) {
      STALLMON_TRY(int u32, scalar(MemberLayout::Kind::kInt, 4));
      index_ = u32;
    }
    return check(btf__add_array(btf_, index_, u8, size), "array");
  }
  // The BTF type of a listed member (not a composite with listed children).
  Result<int> leaf_type(const MemberLayout& m) {
    switch (m.kind) {
      case MemberLayout::Kind::kInt:
      case MemberLayout::Kind::kEnum:
      case MemberLayout::Kind::kPointer: return scalar(m.kind, m.size);
      case MemberLayout::Kind::kArray: return bytes(m.size);
      case MemberLayout::Kind::kStruct: return check(btf__add_struct(btf_, nullptr, m.size), "struct");
      case MemberLayout::Kind::kUnion: return check(btf__add_union(btf_, nullptr, m.size), "union");
      default: return Error(ErrorCode::kCorrupt, label_ + ": member of kind other");
    }
  }
  // A composite of `size` bytes starting at absolute bit `base`, holding `node`'s children.
  Result<int> composite(const std::string& name, const std::string& what, bool is_union, uint64_t base, uint64_t size,
                        const Node& node) {
    // Children's types first: libbpf adds fields to the type added last.
    struct Field {
      std::string name;
      int type;
      uint64_t bit;
      uint32_t bits;
    };
    std::vector<Field> fields;
    for (const auto& [child_name, child] : node.children) {
      const std::string child_what = what + "." + child_name;
      uint64_t at = base, child_size = size;
      bool child_union = false;
      if (child.leaf) {
        at = child.leaf->bit_offset;
        child_size = child.leaf->size;
        child_union = child.leaf->kind == MemberLayout::Kind::kUnion;
      }
      if (at < base || (at - base) / 8 + (child.leaf && child.leaf->bit_size ? 0 : child_size) > size)
        return Error(ErrorCode::kCorrupt, label_ + ": member " + child_what + " lies outside " + what);
      int type = 0;
      if (child.children.empty()) {
        STALLMON_TRY(type, leaf_type(*child.leaf));
      } else {
        if (child.leaf && child.leaf->kind != MemberLayout::Kind::kStruct && child.leaf->kind != MemberLayout::Kind::kUnion)
          return Error(ErrorCode::kCorrupt, label_ + ": member " + child_what + " is a " +
                                                std::string(kind_name(child.leaf->kind)) + " but has members");
        STALLMON_TRY(type, composite("", child_what, child_union, at, child_size, child));
      }
      fields.push_back(Field{child_name, type, at - base, child.leaf ? child.leaf->bit_size : 0});
    }
    STALLMON_TRY(int id, check(is_union ? btf__add_union(btf_, name.empty() ? nullptr : name.c_str(), static_cast<uint32_t>(size))
                                        : btf__add_struct(btf_, name.empty() ? nullptr : name.c_str(), static_cast<uint32_t>(size)),
                               what));
    for (const Field& f : fields) {
      if (btf__add_field(btf_, f.name.c_str(), f.type, static_cast<uint32_t>(f.bit), f.bits) < 0)
        return Error(ErrorCode::kCorrupt, label_ + ": libbpf refused member " + what + "." + f.name);
    }
    return id;
  }

 private:
  Result<int> check(int id, const std::string& what) {
    if (id < 0) return Error(ErrorCode::kCorrupt, label_ + ": libbpf refused " + what);
    return id;
  }
  std::string label_;
  struct btf* btf_;
  std::map<uint32_t, int> ints_, enums_;
  int index_ = 0;
};

}  // namespace

Result<std::shared_ptr<const Types>> types_from_profile(const TypeProfile& profile,
                                                        const std::shared_ptr<MemoryBudget>& budget) {
  const std::string label = profile.label();
  BtfWriter w(label);
  if (!w.ok()) return Error(ErrorCode::kInternal, label + ": libbpf could not create BTF");
  for (const ProfileType& t : profile.types) {
    Node root;
    for (const ProfileMember& m : t.members) {
      Node* n = &root;
      std::string_view rest = m.path;
      while (!rest.empty()) {
        size_t dot = rest.find('.');
        n = &n->children[std::string(rest.substr(0, dot))];
        rest = dot == std::string_view::npos ? std::string_view{} : rest.substr(dot + 1);
      }
      n->leaf = &m.layout;
    }
    STALLMON_TRY_VOID(w.composite(t.name, t.name, false, 0, t.size, root));
  }
  for (const ProfileVariable& v : profile.variables) {
    Result<int> type = (v.size == 1 || v.size == 2 || v.size == 4 || v.size == 8)
                           ? w.scalar(MemberLayout::Kind::kInt, static_cast<uint32_t>(v.size))
                           : w.bytes(static_cast<uint32_t>(v.size));
    if (!type.ok()) return std::move(type).error();
    if (btf__add_var(w.btf(), v.name.c_str(), BTF_VAR_GLOBAL_ALLOCATED, *type) < 0)
      return Error(ErrorCode::kCorrupt, label + ": libbpf refused variable " + v.name);
  }
  uint32_t size = 0;
  const void* raw = btf__raw_data(w.btf(), &size);
  if (!raw) return Error(ErrorCode::kInternal, label + ": libbpf could not write BTF");
  const auto* b = static_cast<const uint8_t*>(raw);
  auto t = Types::from_btf_bytes(std::vector<uint8_t>(b, b + size), budget, label);
  if (!t.ok()) return std::move(t).error().context(label);
  return t;
}

}  // namespace stallmon::introspect
