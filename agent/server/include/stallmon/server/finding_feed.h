// SPDX-License-Identifier: Apache-2.0
// FindingFeed: wakes WatchFindings streams when the engine emits events.
//
// It is a FindingListener that only records the newest revision and notifies a condition
// variable: the engine calls it with its own lock held, so it must not call back (and must not
// hold up a pipeline thread behind a slow client). Each stream then re-reads events_since()
// itself and writes at its own pace; a stream that falls behind the engine's bounded event log
// gets a RESYNC instead of unbounded buffering here.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "stallmon/diagnosis/engine.h"

namespace stallmon::server {

class FindingFeed final : public diagnosis::FindingListener {
 public:
  enum class Wake { kNewEvents, kTimeout, kShutdown };

  explicit FindingFeed(uint64_t initial_revision = 0) : latest_(initial_revision) {}

  void on_finding_event(const diagnosis::FindingEvent& event) override;

  // Returns kNewEvents as soon as a revision above `after_revision` is known, kShutdown once
  // shutdown() was called (also if it already was), else kTimeout at `until`.
  Wake wait(uint64_t after_revision, std::chrono::steady_clock::time_point until);

  // Wakes every waiter for good: streams end (UNAVAILABLE) so that the server can shut down.
  void shutdown();
  bool is_shutdown() const;
  uint64_t latest() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t latest_;
  bool shutdown_ = false;
};

}  // namespace stallmon::server
