// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/snapshot_kernel_access.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "stallmon/introspect/snapshot_btf.h"

namespace stallmon::introspect {

namespace {

// Types from a profile name it when something is missing ("profile 1a2b3c4d: no member rq.nr_running").
Result<MemberLayout> types_member(const Types& t, std::string_view type, std::string_view path) {
  auto m = btf_member_layout(t.raw_btf(), type, path);
  if (!m && m.error().code == ErrorCode::kNotFound && !t.origin().empty())
    return Error(ErrorCode::kNotFound, t.origin() + ": no member " + std::string(type) + "." + std::string(path));
  return m;
}
Result<uint64_t> types_type_size(const Types& t, std::string_view type) {
  auto s = btf_type_size(t.raw_btf(), type);
  if (!s && s.error().code == ErrorCode::kNotFound && !t.origin().empty())
    return Error(ErrorCode::kNotFound, t.origin() + ": no type " + std::string(type));
  return s;
}

class TypesAccess final : public TypesOnlyAccess {
 public:
  explicit TypesAccess(std::shared_ptr<const Types> t) : TypesOnlyAccess("BTF"), t_(std::move(t)) {}
  Result<MemberLayout> member(std::string_view type, std::string_view path) const override {
    return types_member(*t_, type, path);
  }
  Result<uint64_t> type_size(std::string_view type) const override { return types_type_size(*t_, type); }
  Result<uint64_t> variable_size(std::string_view name) const override {
    return btf_variable_size(t_->raw_btf(), name);
  }

 private:
  std::shared_ptr<const Types> t_;
};

class KernelAdapter final : public KernelAccess {
 public:
  explicit KernelAdapter(Kernel& k) : k_(k) {}

  Result<void> read(uint64_t va, void* buf, size_t len) override { return k_.memory().read(va, buf, len); }
  // Coalesces requests that are close in the kernel's address space (fields of one struct, the
  // per-cpu variables of one CPU) into one read each before handing the batch to KernelMemory:
  // on a live qemu every iovec of process_vm_readv costs a page pin, so fewer, larger iovecs
  // are what keeps a snapshot in the tens of microseconds. A merged read that fails (it may
  // span an unmapped gap) is retried request by request, so results equal the plain batch.
  Result<void> read_batch(std::span<ReadRequest> requests) override {
    if (requests.size() < 2) return k_.memory().read_batch(requests);
    order_.resize(requests.size());
    for (size_t i = 0; i < order_.size(); ++i) order_[i] = i;
    std::sort(order_.begin(), order_.end(), [&](size_t a, size_t b) { return requests[a].addr < requests[b].addr; });
    merged_.clear();
    group_of_.resize(requests.size());
    size_t scratch = 0;
    for (size_t i : order_) {
      const ReadRequest& r = requests[i];
      if (!merged_.empty()) {
        Merged& m = merged_.back();
        const uint64_t end = m.addr + m.len;
        if (r.addr >= m.addr && r.addr <= end + kMergeGap && r.addr + r.len >= r.addr &&
            r.addr + r.len - m.addr <= kMaxMerged) {
          const uint64_t new_end = std::max<uint64_t>(end, r.addr + r.len);
          scratch += new_end - end;
          m.len = new_end - m.addr;
          group_of_[i] = merged_.size() - 1;
          continue;
        }
      }
      merged_.push_back(Merged{r.addr, r.len, 0});
      scratch += r.len;
      group_of_[i] = merged_.size() - 1;
    }
    if (merged_.size() == requests.size()) return k_.memory().read_batch(requests);
    scratch_.resize(scratch);
    mreqs_.clear();
    size_t pos = 0;
    for (Merged& m : merged_) {
      m.scratch = pos;
      mreqs_.push_back(ReadRequest{m.addr, scratch_.data() + pos, m.len, false});
      pos += m.len;
    }
    (void)k_.memory().read_batch(mreqs_);
    Result<void> first;
    for (size_t i = 0; i < requests.size(); ++i) {
      ReadRequest& r = requests[i];
      const size_t g = group_of_[i];
      if (mreqs_[g].ok) {
        std::memcpy(r.buf, scratch_.data() + merged_[g].scratch + (r.addr - merged_[g].addr), r.len);
        r.ok = true;
        continue;
      }
      auto res = k_.memory().read(r.addr, r.buf, r.len);
      r.ok = res.ok();
      if (!res.ok() && first.ok()) first = std::move(res);
    }
    return first;
  }
  Result<uint64_t> symbol(std::string_view name) const override { return k_.symbol(name); }
  std::string symbolize(uint64_t address) const override {
    auto l = k_.symbols().lookup(address);
    if (!l || !l->symbol) return {};
    if (l->offset == 0) return l->symbol->name;
    char off[24];
    snprintf(off, sizeof off, "+0x%llx", static_cast<unsigned long long>(l->offset));
    return l->symbol->name + off;
  }
  std::optional<SymbolSpan> symbol_at(uint64_t address) const override {
    auto l = k_.symbols().lookup(address);
    if (!l || !l->symbol) return std::nullopt;
    return SymbolSpan{l->symbol->name, l->symbol->address, l->size};
  }
  Result<MemberLayout> member(std::string_view type, std::string_view path) const override {
    if (!k_.has_types()) return Error(ErrorCode::kNotFound, "kernel has no types loaded");
    return types_member(k_.types(), type, path);
  }
  Result<uint64_t> type_size(std::string_view type) const override {
    if (!k_.has_types()) return Error(ErrorCode::kNotFound, "kernel has no types loaded");
    return types_type_size(k_.types(), type);
  }
  Result<uint64_t> variable_size(std::string_view name) const override {
    if (!k_.has_types()) return Error(ErrorCode::kNotFound, "kernel has no types loaded");
    return btf_variable_size(k_.types().raw_btf(), name);
  }
  void begin_snapshot() override { k_.begin_snapshot(); }

 private:
  static constexpr uint64_t kMergeGap = 256;        // bytes read in vain to save an iovec
  static constexpr uint64_t kMaxMerged = 64 << 10;  // bound on one merged read
  struct Merged {
    uint64_t addr;
    size_t len;
    size_t scratch;
  };
  Kernel& k_;
  // Reused between batches (one KernelAccess per thread, like KernelMemory).
  std::vector<size_t> order_, group_of_;
  std::vector<Merged> merged_;
  std::vector<uint8_t> scratch_;
  std::vector<ReadRequest> mreqs_;
};

}  // namespace

std::unique_ptr<KernelAccess> make_kernel_access(Kernel& kernel) { return std::make_unique<KernelAdapter>(kernel); }

std::unique_ptr<KernelAccess> make_types_access(std::shared_ptr<const Types> types) {
  return std::make_unique<TypesAccess>(std::move(types));
}

}  // namespace stallmon::introspect
