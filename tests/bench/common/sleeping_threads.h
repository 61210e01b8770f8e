// SPDX-License-Identifier: Apache-2.0
// Benchmark helper: N threads of this process that block on a condition variable until
// destroyed. They stand in for idle vCPU threads, so /proc sampling costs are measured on real
// /proc files without a guest.
#pragma once

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

namespace stallmon::bench {

class SleepingThreads {
 public:
  explicit SleepingThreads(int n) : tids_(static_cast<size_t>(n)) {
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([this, i] {
        tids_[static_cast<size_t>(i)] = static_cast<pid_t>(syscall(SYS_gettid));
        ready_.fetch_add(1);
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [this] { return stop_; });
      });
    }
    while (ready_.load() < n) std::this_thread::yield();
  }
  ~SleepingThreads() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  SleepingThreads(const SleepingThreads&) = delete;
  SleepingThreads& operator=(const SleepingThreads&) = delete;

  const std::vector<pid_t>& tids() const { return tids_; }
  // Thread i as vCPU i, the shape ProcessSampler takes.
  std::map<int32_t, int32_t> as_vcpus() const {
    std::map<int32_t, int32_t> m;
    for (size_t i = 0; i < tids_.size(); ++i) m[static_cast<int32_t>(i)] = tids_[i];
    return m;
  }

 private:
  std::vector<pid_t> tids_;
  std::vector<std::thread> threads_;
  std::atomic<int> ready_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
};

}  // namespace stallmon::bench
