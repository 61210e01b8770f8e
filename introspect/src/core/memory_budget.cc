// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/memory_budget.h"

#include <algorithm>

namespace stallmon::introspect {
namespace {

std::string mib(uint64_t bytes) {
  char buf[32];
  snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

}  // namespace

MemoryBudget::MemoryBudget(std::string owner, uint64_t limit_bytes) : owner_(std::move(owner)), limit_(limit_bytes) {}

Error MemoryBudget::over(std::string_view what, uint64_t bytes) const {
  return Error(ErrorCode::kOverBudget, std::string(what) + " needs " + mib(bytes) + " with " + mib(used_) +
                                           " already held: over the " + mib(limit_) + " memory budget" +
                                           (owner_.empty() ? std::string() : " of " + owner_));
}

Result<void> MemoryBudget::check(std::string_view what, uint64_t bytes) const {
  std::lock_guard lock(mu_);
  if (bytes > limit_ || used_ > limit_ - bytes) return over(what, bytes);
  return Ok();
}

Result<void> MemoryBudget::charge(std::string_view what, uint64_t bytes) {
  std::lock_guard lock(mu_);
  if (bytes > limit_ || used_ > limit_ - bytes) return over(what, bytes);
  if (bytes == 0) return Ok();
  used_ += bytes;
  peak_ = std::max(peak_, used_);
  auto it = by_name_.find(what);
  if (it == by_name_.end()) it = by_name_.emplace(std::string(what), 0).first;
  it->second += bytes;
  return Ok();
}

void MemoryBudget::release(std::string_view what, uint64_t bytes) {
  std::lock_guard lock(mu_);
  auto it = by_name_.find(what);
  if (it == by_name_.end()) return;
  bytes = std::min(bytes, it->second);
  it->second -= bytes;
  used_ -= std::min(bytes, used_);
  if (it->second == 0) by_name_.erase(it);
}

uint64_t MemoryBudget::used() const {
  std::lock_guard lock(mu_);
  return used_;
}

uint64_t MemoryBudget::peak() const {
  std::lock_guard lock(mu_);
  return peak_;
}

std::map<std::string, uint64_t, std::less<>> MemoryBudget::breakdown() const {
  std::lock_guard lock(mu_);
  return by_name_;
}

Result<MemoryCharge> MemoryCharge::take(const std::shared_ptr<MemoryBudget>& budget, std::string_view what,
                                        uint64_t bytes) {
  MemoryCharge c;
  c.budget_ = budget;
  c.what_ = std::string(what);
  STALLMON_TRY_VOID(c.add(bytes));
  return c;
}

MemoryCharge& MemoryCharge::operator=(MemoryCharge&& o) noexcept {
  if (this != &o) {
    reset();
    budget_ = std::move(o.budget_);
    what_ = std::move(o.what_);
    bytes_ = o.bytes_;
    o.bytes_ = 0;
    o.budget_.reset();
  }
  return *this;
}

Result<void> MemoryCharge::add(uint64_t bytes) {
  if (budget_) {
    STALLMON_TRY_VOID(budget_->charge(what_, bytes));
  }
  bytes_ += bytes;
  return Ok();
}

void MemoryCharge::reset() {
  if (budget_ && bytes_) budget_->release(what_, bytes_);
  bytes_ = 0;
}

}  // namespace stallmon::introspect
