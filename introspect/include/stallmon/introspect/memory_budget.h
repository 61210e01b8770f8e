// SPDX-License-Identifier: Apache-2.0
// Per-domain memory budget: everything whose size or count a guest decides (decoded symbols,
// parsed types, snapshot buffers, printk text) is charged to its domain's budget BEFORE it is
// allocated. Over budget, the charge fails with ErrorCode::kOverBudget naming what was too big,
// so one hostile guest can make its own introspection stop but never grow the daemon.
//
//   auto budget = std::make_shared<MemoryBudget>("vm1");        // 64 MiB by default
//   STALLMON_TRY(MemoryCharge c, MemoryCharge::take(budget, "kallsyms names", bytes));
//   ... allocate; `c` gives the bytes back when destroyed (or keep it as long as the data).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "stallmon/base/result.h"

namespace stallmon::introspect {

class MemoryBudget {
 public:
  inline static constexpr uint64_t kDefaultLimit = 64ull << 20;

  explicit MemoryBudget(std::string owner = {}, uint64_t limit_bytes = kDefaultLimit);

  // Adds `bytes` under `what` ("kallsyms symbols", "BTF blob", ...). kOverBudget (nothing
  // charged) when the total would pass the limit; the message names `what`, its size, what is
  // already held and the limit. Thread-safe.
  Result<void> charge(std::string_view what, uint64_t bytes);
  // Whether `bytes` more would fit now, without charging (an early, cheap refusal before work
  // whose allocations are charged as they happen).
  Result<void> check(std::string_view what, uint64_t bytes) const;
  // Gives back bytes charged under `what` (clamped: never below zero).
  void release(std::string_view what, uint64_t bytes);

  uint64_t limit() const { return limit_; }
  uint64_t used() const;
  uint64_t peak() const;
  // Bytes held per name (for status pages and tests).
  std::map<std::string, uint64_t, std::less<>> breakdown() const;
  const std::string& owner() const { return owner_; }

 private:
  Error over(std::string_view what, uint64_t bytes) const;  // mu_ held
  const std::string owner_;
  const uint64_t limit_;
  mutable std::mutex mu_;
  uint64_t used_ = 0, peak_ = 0;
  std::map<std::string, uint64_t, std::less<>> by_name_;
};

// A charge that is given back when destroyed. Empty (a no-op) without a budget, so that every
// call site charges unconditionally and callers without a budget (tools, tests) pay nothing.
class MemoryCharge {
 public:
  MemoryCharge() = default;
  static Result<MemoryCharge> take(const std::shared_ptr<MemoryBudget>& budget, std::string_view what,
                                   uint64_t bytes);
  ~MemoryCharge() { reset(); }
  MemoryCharge(MemoryCharge&& o) noexcept { *this = std::move(o); }
  MemoryCharge& operator=(MemoryCharge&& o) noexcept;
  MemoryCharge(const MemoryCharge&) = delete;
  MemoryCharge& operator=(const MemoryCharge&) = delete;

  // Grows this charge by `bytes` (kOverBudget leaves it as it was).
  Result<void> add(uint64_t bytes);
  void reset();
  uint64_t bytes() const { return bytes_; }

 private:
  std::shared_ptr<MemoryBudget> budget_;
  std::string what_;
  uint64_t bytes_ = 0;
};

}  // namespace stallmon::introspect
