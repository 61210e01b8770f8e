// SPDX-License-Identifier: Apache-2.0
// InspectFlights: InspectDomain's admission control. An inspect reads the whole guest snapshot
// on the domain's pipeline thread, between its ticks, so a flood of them would delay sampling.
// - Single flight per domain: a call for a domain whose read is in flight joins it and gets the
//   same result (errors included) instead of queueing another read.
// - A global cap on reads in flight at once (server.max_inspect_in_flight): a call that would
//   start one more is refused at once with kLimit (RESOURCE_EXHAUSTED on the wire); joining a
//   read in flight is always allowed (it costs no guest read).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "stallmon/base/result.h"
#include "stallmon/core/stall_monitor.h"

namespace stallmon::server {

class InspectFlights {
 public:
  using Shared = std::shared_ptr<const Result<core::InspectResult>>;
  using Read = std::function<Result<core::InspectResult>()>;

  explicit InspectFlights(int max_in_flight) : max_in_flight_(max_in_flight) {}

  // Starts `read` on the calling thread if no read of `key` (a canonical domain id) is in
  // flight and the cap allows, else waits for the read in flight, at most `wait` (kTimeout
  // after that; the read goes on for the others). Never throws: an exception from `read` is
  // every caller's kInternal error.
  Shared run(const std::string& key, std::chrono::milliseconds wait, const Read& read);

  int calls() const;    // callers inside run() now (starting, reading or waiting)
  int flights() const;  // distinct reads in flight now
  int max_in_flight() const { return max_in_flight_; }

 private:
  struct Flight {
    std::condition_variable cv;
    Shared result;  // set once, when the read returns
  };
  Shared lead(const std::string& key, const std::shared_ptr<Flight>& flight, const Read& read);

  const int max_in_flight_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Flight>> flights_;
  int calls_ = 0;
};

}  // namespace stallmon::server
