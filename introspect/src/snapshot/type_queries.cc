// SPDX-License-Identifier: Apache-2.0
// record_reader_types (type_profile.h): the readers' layout planning run against a recording
// KernelAccess, so that a type profile holds what the readers ask for and nothing else.
#include <algorithm>
#include <map>
#include <set>

#include "printk.h"
#include "stallmon/introspect/backtrace.h"
#include "stallmon/introspect/modules.h"
#include "stallmon/introspect/snapshot.h"
#include "stallmon/introspect/type_profile.h"

namespace stallmon::introspect {

namespace {

// Types from `source`; every symbol exists (so that every reader plans every part) and memory
// reads as a one-CPU kernel (nr_cpu_ids 1, everything else 0). Records each answered query.
class Recorder final : public KernelAccess {
 public:
  explicit Recorder(const KernelAccess& source) : source_(source) {}
  Result<void> read(uint64_t, void* buf, size_t len) override {
    std::fill_n(static_cast<uint8_t*>(buf), len, uint8_t{0});
    if (len == 4) static_cast<uint8_t*>(buf)[0] = 1;  // nr_cpu_ids
    return Ok();
  }
  Result<uint64_t> symbol(std::string_view) const override { return uint64_t{0xffffffff82000000ULL}; }
  std::string symbolize(uint64_t) const override { return {}; }
  Result<MemberLayout> member(std::string_view type, std::string_view path) const override {
    auto m = source_.member(type, path);
    if (m) {
      auto size = source_.type_size(type);
      if (!size) return std::move(size).error().context("size of " + std::string(type) + " for " + std::string(path));
      sizes_[std::string(type)] = *size;
      members_[std::string(type)][std::string(path)] = *m;
    } else if (m.error().code != ErrorCode::kNotFound) {
      failures_.push_back(m.error());
    }
    return m;
  }
  Result<uint64_t> type_size(std::string_view type) const override {
    auto s = source_.type_size(type);
    if (s) sizes_[std::string(type)] = *s;
    else if (s.error().code != ErrorCode::kNotFound) failures_.push_back(s.error());
    return s;
  }
  Result<uint64_t> variable_size(std::string_view name) const override {
    auto s = source_.variable_size(name);
    if (s) variables_[std::string(name)] = *s;
    else if (s.error().code != ErrorCode::kNotFound) failures_.push_back(s.error());
    return s;
  }

  Result<TypeProfile> profile() const {
    if (!failures_.empty()) return Error(failures_.front()).context("recording the readers' types");
    TypeProfile p;
    for (const auto& [name, size] : sizes_) {
      ProfileType t{name, size, {}};
      if (auto it = members_.find(name); it != members_.end())
        for (const auto& [path, layout] : it->second) t.members.push_back(ProfileMember{path, layout});
      p.types.push_back(std::move(t));
    }
    for (const auto& [name, size] : variables_) p.variables.push_back(ProfileVariable{name, size});
    return p;
  }

 private:
  const KernelAccess& source_;
  mutable std::map<std::string, uint64_t> sizes_, variables_;
  mutable std::map<std::string, std::map<std::string, MemberLayout>> members_;
  mutable std::vector<Error> failures_;
};

}  // namespace

Result<TypeProfile> record_reader_types(const KernelAccess& source) {
  Recorder r(source);
  SnapshotOptions options;
  options.max_cpus = 1;
  options.read_printk = true;
  auto reader = SnapshotReader::create(r, options);
  if (!reader.ok() && reader.error().code != ErrorCode::kUnsupported) return std::move(reader).error().context("recording the readers' types");
  (void)OrcFormat::from_btf(r);
  (void)ModuleLayout::resolve(r);
  (void)KthreadLayout::resolve(r);
  (void)IrqStackLayout::resolve(r);
  (void)ExceptionStackLayout::resolve(r);
  (void)snapshot_detail::resolve_printk_layout(r);
  // Every symbol exists here, prb included: ask for log_buf's record type too (before 5.10).
  (void)snapshot_detail::resolve_log_buf(r);
  // A reader that cannot plan without a member (rq.nr_running) says so when the profile is
  // used, naming the member; recording what exists is still right.
  return r.profile();
}

}  // namespace stallmon::introspect
