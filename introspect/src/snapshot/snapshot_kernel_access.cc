// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/snapshot_kernel_access.h"

#include "stallmon/introspect/snapshot_btf.h"

namespace stallmon::introspect {

namespace {

class KernelAdapter final : public KernelAccess {
 public:
  explicit KernelAdapter(Kernel& k) : k_(k) {}

  Result<void> read(uint64_t va, void* buf, size_t len) override { return k_.memory().read(va, buf, len); }
  Result<void> read_batch(std::span<ReadRequest> requests) override { return k_.memory().read_batch(requests); }
  Result<uint64_t> symbol(std::string_view name) const override { return k_.symbol(name); }
  std::string symbolize(uint64_t address) const override {
    auto l = k_.symbols().lookup(address);
    if (!l || !l->symbol) return {};
    if (l->offset == 0) return l->symbol->name;
    char off[24];
    snprintf(off, sizeof off, "+0x%llx", static_cast<unsigned long long>(l->offset));
    return l->symbol->name + off;
  }
  Result<MemberLayout> member(std::string_view type, std::string_view path) const override {
    if (!k_.has_types()) return Error(ErrorCode::kNotFound, "kernel has no types loaded");
    return btf_member_layout(k_.types().raw_btf(), type, path);
  }
  Result<uint64_t> type_size(std::string_view type) const override {
    if (!k_.has_types()) return Error(ErrorCode::kNotFound, "kernel has no types loaded");
    return btf_type_size(k_.types().raw_btf(), type);
  }
  void begin_snapshot() override { k_.begin_snapshot(); }

 private:
  Kernel& k_;
};

}  // namespace

std::unique_ptr<KernelAccess> make_kernel_access(Kernel& kernel) { return std::make_unique<KernelAdapter>(kernel); }

}  // namespace stallmon::introspect
