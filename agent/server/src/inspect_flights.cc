// SPDX-License-Identifier: Apache-2.0
#include "stallmon/server/inspect_flights.h"

namespace stallmon::server {
namespace {

InspectFlights::Shared shared_error(ErrorCode code, std::string message) {
  return std::make_shared<const Result<core::InspectResult>>(Error(code, std::move(message)));
}

}  // namespace

int InspectFlights::calls() const {
  std::lock_guard l(mu_);
  return calls_;
}

int InspectFlights::flights() const {
  std::lock_guard l(mu_);
  return static_cast<int>(flights_.size());
}

InspectFlights::Shared InspectFlights::run(const std::string& key, std::chrono::milliseconds wait, const Read& read) {
  std::unique_lock l(mu_);
  ++calls_;
  struct Leave {
    int& calls;
    ~Leave() { --calls; }  // runs with mu_ held: declared after the lock, destroyed before it
  } leave{calls_};
  auto it = flights_.find(key);
  if (it == flights_.end()) {
    if (static_cast<int>(flights_.size()) >= max_in_flight_) {
      return shared_error(ErrorCode::kLimit,
                          "InspectDomain: " + std::to_string(flights_.size()) +
                              " guest reads already in flight, the most allowed (server.max_inspect_in_flight); "
                              "a call for a domain being read shares that read; retry later");
    }
    auto flight = std::make_shared<Flight>();
    flights_.emplace(key, flight);
    l.unlock();
    Shared r = lead(key, flight, read);
    l.lock();
    return r;
  }
  std::shared_ptr<Flight> flight = it->second;  // keeps it alive after the leader erases it
  if (!flight->cv.wait_for(l, wait, [&] { return flight->result != nullptr; })) {
    return shared_error(ErrorCode::kTimeout, "InspectDomain: the read of " + key +
                                                 " in flight (shared with this call) did not finish within " +
                                                 std::to_string(wait.count()) + " ms");
  }
  return flight->result;
}

InspectFlights::Shared InspectFlights::lead(const std::string& key, const std::shared_ptr<Flight>& flight,
                                            const Read& read) {
  Shared r;
  try {
    r = std::make_shared<const Result<core::InspectResult>>(read());
  } catch (const std::exception& e) {
    r = shared_error(ErrorCode::kInternal, std::string("InspectDomain: ") + e.what());
  } catch (...) {
    r = shared_error(ErrorCode::kInternal, "InspectDomain: unknown exception");
  }
  std::lock_guard l(mu_);
  flight->result = r;
  flights_.erase(key);
  flight->cv.notify_all();
  return r;
}

}  // namespace stallmon::server
