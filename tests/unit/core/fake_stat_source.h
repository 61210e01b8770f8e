// SPDX-License-Identifier: Apache-2.0
// A ThreadStatSource for unit tests of the logic around it (who runs a pass, how often, what a
// failed pass does): its passes are built from the FakeQemus' thread tables, not from the fake
// /proc files, so a test can tell which path a sample came from (FakeHostFs::reads). It can be
// told to fail passes or to refuse watching more processes.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "fake_domain.h"
#include "stallmon/host/thread_stat_source.h"

namespace stallmon::core::testing {

class FakeStatSource final : public host::ThreadStatSource {
 public:
  FakeStatSource() = default;
  // Also finds processes in `qemus` (a test's list that grows after the source was made).
  explicit FakeStatSource(const std::vector<std::unique_ptr<FakeQemu>>* qemus) : list_(qemus) {}

  std::string_view kind() const override { return "bpf-task-iter"; }
  std::string description() const override { return "fake passes over the fake qemus"; }

  // Makes q's threads visible to passes (by its pid).
  void add(const FakeQemu& q) {
    std::lock_guard<std::mutex> l(mu_);
    qemus_[q.pid()] = &q;
  }
  // The next n passes fail (kIo, "fake pass failure").
  void fail_next(int n) {
    std::lock_guard<std::mutex> l(mu_);
    fail_left_ = n;
  }
  // watch() refuses processes beyond this many.
  void set_capacity(size_t n) {
    std::lock_guard<std::mutex> l(mu_);
    capacity_ = n;
  }
  int attempts() const {
    std::lock_guard<std::mutex> l(mu_);
    return attempts_;
  }
  std::set<int32_t> watched() const {
    std::lock_guard<std::mutex> l(mu_);
    return watched_;
  }

  Result<void> watch(int32_t tgid) override {
    std::lock_guard<std::mutex> l(mu_);
    if (!watched_.count(tgid) && watched_.size() >= capacity_) {
      return Error(ErrorCode::kLimit, "fake source full (" + std::to_string(capacity_) + " processes)");
    }
    watched_.insert(tgid);
    return Ok();
  }
  void unwatch(int32_t tgid) override {
    std::lock_guard<std::mutex> l(mu_);
    watched_.erase(tgid);
  }

 protected:
  Result<void> run_pass(host::ThreadStatPass& out) override {
    std::lock_guard<std::mutex> l(mu_);
    ++attempts_;
    if (fail_left_ > 0) {
      --fail_left_;
      return Error(ErrorCode::kIo, "fake pass failure");
    }
    for (int32_t tgid : watched_) {
      out.watched.push_back(tgid);
      const FakeQemu* q = find(tgid);
      if (q == nullptr) continue;  // not running: the pass has no thread of it
      for (const host::testing::FakeThread& t : q->threads()) {
        out.threads.push_back(host::testing::thread_stat(tgid, t));
      }
    }
    return Ok();
  }

 private:
  const FakeQemu* find(int32_t pid) const {
    if (auto it = qemus_.find(pid); it != qemus_.end()) return it->second;
    if (list_ != nullptr) {
      for (const auto& q : *list_) {
        if (q->pid() == pid) return q.get();
      }
    }
    return nullptr;
  }

  mutable std::mutex mu_;
  const std::vector<std::unique_ptr<FakeQemu>>* list_ = nullptr;
  std::map<int32_t, const FakeQemu*> qemus_;
  std::set<int32_t> watched_;
  size_t capacity_ = 1024;
  int fail_left_ = 0;
  int attempts_ = 0;
};

}  // namespace stallmon::core::testing
