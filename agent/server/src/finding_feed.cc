// SPDX-License-Identifier: Apache-2.0
#include "stallmon/server/finding_feed.h"

namespace stallmon::server {

void FindingFeed::on_finding_event(const diagnosis::FindingEvent& event) {
  {
    std::lock_guard lock(mu_);
    if (event.revision <= latest_) return;
    latest_ = event.revision;
  }
  cv_.notify_all();
}

FindingFeed::Wake FindingFeed::wait(uint64_t after_revision, std::chrono::steady_clock::time_point until) {
  std::unique_lock lock(mu_);
  bool woken = cv_.wait_until(lock, until, [&] { return shutdown_ || latest_ > after_revision; });
  if (shutdown_) return Wake::kShutdown;
  return woken ? Wake::kNewEvents : Wake::kTimeout;
}

void FindingFeed::shutdown() {
  {
    std::lock_guard lock(mu_);
    shutdown_ = true;
  }
  cv_.notify_all();
}

bool FindingFeed::is_shutdown() const {
  std::lock_guard lock(mu_);
  return shutdown_;
}

uint64_t FindingFeed::latest() const {
  std::lock_guard lock(mu_);
  return latest_;
}

}  // namespace stallmon::server
