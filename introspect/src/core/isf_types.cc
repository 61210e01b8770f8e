// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/isf_types.h"

#include <fstream>
#include <nlohmann/json.hpp>

namespace stallmon::introspect {

namespace {

using nlohmann::json;

constexpr uint64_t kMaxIsfBytes = 512ull << 20;
constexpr int kMaxDepth = 32;                    // type descriptor / anonymous member nesting
constexpr uint32_t kMaxMemberVisits = 1u << 16;  // fields looked at in one search
constexpr uint64_t kMaxTypeBytes = 1ull << 30;   // anything larger is not a kernel type

const json* get(const json& j, std::string_view key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

std::optional<uint64_t> get_u64(const json& j, std::string_view key) {
  const json* v = get(j, key);
  if (!v || !v->is_number_unsigned()) {
    if (v && v->is_number_integer() && v->get<int64_t>() >= 0) return static_cast<uint64_t>(v->get<int64_t>());
    return std::nullopt;
  }
  return v->get<uint64_t>();
}

std::string get_str(const json& j, std::string_view key) {
  const json* v = get(j, key);
  return v && v->is_string() ? v->get<std::string>() : std::string();
}

class IsfTypes final : public TypesOnlyAccess {
 public:
  IsfTypes(json doc, std::string origin) : TypesOnlyAccess(origin), doc_(std::move(doc)), origin_(std::move(origin)) {}

  Result<void> check() const {
    if (!get(doc_, "user_types") || !get(doc_, "base_types"))
      return Error(ErrorCode::kCorrupt, origin_ + ": not an ISF file (no user_types/base_types)");
    return Ok();
  }


  Result<MemberLayout> member(std::string_view type, std::string_view path) const override {
    const std::string what = std::string(type) + "." + std::string(path);
    const json* cur = user_type(type);
    if (!cur) return Error(ErrorCode::kNotFound, origin_ + ": no type " + std::string(type));
    uint64_t bits = 0;
    const json* desc = nullptr;
    uint32_t bit_size = 0;
    std::string_view rest = path;
    int components = 0;
    while (!rest.empty()) {
      if (++components > kMaxDepth) return Error(ErrorCode::kLimit, origin_ + ": member path too deep: " + what);
      size_t dot = rest.find('.');
      std::string_view name = rest.substr(0, dot);
      rest = dot == std::string_view::npos ? std::string_view{} : rest.substr(dot + 1);
      if (desc) {  // the previous component's type must be a struct/union
        const std::string kind = get_str(*desc, "kind");
        cur = kind == "struct" || kind == "union" ? user_type(get_str(*desc, "name")) : nullptr;
        if (!cur) return Error(ErrorCode::kNotFound, origin_ + ": " + what + ": not a struct or union before " + std::string(name));
      }
      uint32_t visits = 0;
      uint64_t at = 0;
      const json* field = find_field(*cur, name, 0, visits, at);
      if (visits > kMaxMemberVisits) return Error(ErrorCode::kLimit, origin_ + ": member " + what + ": too many fields searched");
      if (!field) return Error(ErrorCode::kNotFound, origin_ + ": no member " + what);
      desc = get(*field, "type");
      if (!desc) return Error(ErrorCode::kCorrupt, origin_ + ": member " + what + " has no type");
      bits += at * 8;
      bit_size = 0;
      if (get_str(*desc, "kind") == "bitfield") {
        auto pos = get_u64(*desc, "bit_position"), len = get_u64(*desc, "bit_length");
        const json* inner = get(*desc, "type");
        if (!pos || !len || !inner || *len == 0 || *len > 64 || *pos > 64)
          return Error(ErrorCode::kCorrupt, origin_ + ": member " + what + ": bad bitfield");
        bits += *pos;
        bit_size = static_cast<uint32_t>(*len);
        desc = inner;
      }
    }
    MemberLayout m;
    m.bit_offset = bits;
    m.bit_size = bit_size;
    m.kind = kind_of(*desc);
    STALLMON_TRY(uint64_t size, size_of(*desc, 0));
    if (size > UINT32_MAX) return Error(ErrorCode::kCorrupt, origin_ + ": member " + what + " too large");
    m.size = static_cast<uint32_t>(size);
    return m;
  }

  Result<uint64_t> type_size(std::string_view type) const override {
    const json* t = user_type(type);
    if (!t) return Error(ErrorCode::kNotFound, origin_ + ": no type " + std::string(type));
    auto size = get_u64(*t, "size");
    if (!size || *size == 0 || *size > kMaxTypeBytes) return Error(ErrorCode::kCorrupt, origin_ + ": bad size of " + std::string(type));
    return *size;
  }

  Result<uint64_t> variable_size(std::string_view name) const override {
    const json* syms = get(doc_, "symbols");
    const json* s = syms ? get(*syms, name) : nullptr;
    const json* t = s ? get(*s, "type") : nullptr;
    if (!t) return Error(ErrorCode::kNotFound, origin_ + ": no variable " + std::string(name));
    return size_of(*t, 0);
  }

 private:
  const json* user_type(std::string_view name) const {
    for (std::string_view tag : {"struct ", "union "})
      if (name.starts_with(tag)) name.remove_prefix(tag.size());
    const json* types = get(doc_, "user_types");
    const json* t = types ? get(*types, name) : nullptr;
    return t && t->is_object() ? t : nullptr;
  }

  // `name` among `type`'s fields, or inside its anonymous members (ISF marks them "anonymous").
  const json* find_field(const json& type, std::string_view name, int depth, uint32_t& visits, uint64_t& offset) const {
    const json* fields = get(type, "fields");
    if (!fields || !fields->is_object() || depth > kMaxDepth) return nullptr;
    if (const json* f = get(*fields, name); f && f->is_object()) {
      auto off = get_u64(*f, "offset");
      if (!off) return nullptr;
      offset = *off;
      return f;
    }
    for (const auto& [fname, f] : fields->items()) {
      if (++visits > kMaxMemberVisits) return nullptr;
      const json* anon = get(f, "anonymous");
      if (!anon || !anon->is_boolean() || !anon->get<bool>()) continue;
      const json* t = get(f, "type");
      auto off = get_u64(f, "offset");
      if (!t || !off) continue;
      const std::string kind = get_str(*t, "kind");
      if (kind != "struct" && kind != "union") continue;
      const json* inner = user_type(get_str(*t, "name"));
      uint64_t at = 0;
      if (inner && inner != &type) {
        if (const json* hit = find_field(*inner, name, depth + 1, visits, at)) {
          offset = *off + at;
          return hit;
        }
      }
    }
    return nullptr;
  }

  static MemberLayout::Kind kind_of(const json& desc) {
    const std::string kind = get_str(desc, "kind");
    if (kind == "base") return MemberLayout::Kind::kInt;
    if (kind == "pointer") return MemberLayout::Kind::kPointer;
    if (kind == "array") return MemberLayout::Kind::kArray;
    if (kind == "struct") return MemberLayout::Kind::kStruct;
    if (kind == "union") return MemberLayout::Kind::kUnion;
    if (kind == "enum") return MemberLayout::Kind::kEnum;
    return MemberLayout::Kind::kOther;
  }

  Result<uint64_t> size_of(const json& desc, int depth) const {
    if (depth > kMaxDepth) return Error(ErrorCode::kLimit, origin_ + ": type descriptors nested too deep");
    const std::string kind = get_str(desc, "kind");
    auto sized = [&](const char* table, const std::string& name) -> Result<uint64_t> {
      const json* t = get(doc_, table);
      const json* e = t ? get(*t, name) : nullptr;
      auto size = e ? get_u64(*e, "size") : std::nullopt;
      if (!size || *size > kMaxTypeBytes) return Error(ErrorCode::kCorrupt, origin_ + ": no size for " + kind + " " + name);
      return *size;
    };
    if (kind == "base") return sized("base_types", get_str(desc, "name"));
    if (kind == "pointer") return sized("base_types", "pointer");
    if (kind == "struct" || kind == "union") return sized("user_types", get_str(desc, "name"));
    if (kind == "enum") return sized("enums", get_str(desc, "name"));
    if (kind == "bitfield" && get(desc, "type")) return size_of(*get(desc, "type"), depth + 1);
    if (kind == "array") {
      auto count = get_u64(desc, "count");
      const json* sub = get(desc, "subtype");
      if (!count || !sub) return Error(ErrorCode::kCorrupt, origin_ + ": bad array descriptor");
      if (*count == 0) return uint64_t{0};  // flexible array
      STALLMON_TRY(uint64_t elem, size_of(*sub, depth + 1));
      if (elem != 0 && *count > kMaxTypeBytes / elem) return Error(ErrorCode::kCorrupt, origin_ + ": array too large");
      return *count * elem;
    }
    return uint64_t{0};  // function, void
  }

  json doc_;
  std::string origin_;
};

}  // namespace

Result<std::unique_ptr<KernelAccess>> isf_types_from_text(std::string_view text, std::string origin) {
  if (text.size() > kMaxIsfBytes) return Error(ErrorCode::kLimit, origin + ": ISF larger than 512 MiB");
  json doc = json::parse(text.begin(), text.end(), nullptr, false);
  if (doc.is_discarded()) return Error(ErrorCode::kCorrupt, origin + ": not JSON");
  auto t = std::make_unique<IsfTypes>(std::move(doc), std::move(origin));
  STALLMON_TRY_VOID(t->check());
  return std::unique_ptr<KernelAccess>(std::move(t));
}

Result<std::unique_ptr<KernelAccess>> open_isf_types(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error(ErrorCode::kNotFound, path + ": cannot open");
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) return Error(ErrorCode::kIo, path + ": cannot determine size");
  if (static_cast<uint64_t>(size) > kMaxIsfBytes) return Error(ErrorCode::kLimit, path + ": ISF larger than 512 MiB");
  in.seekg(0);
  std::string text(static_cast<size_t>(size), '\0');
  if (!in.read(text.data(), size)) return Error(ErrorCode::kIo, path + ": read failed");
  return isf_types_from_text(text, path);
}

}  // namespace stallmon::introspect
