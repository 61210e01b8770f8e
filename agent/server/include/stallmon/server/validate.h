// SPDX-License-Identifier: Apache-2.0
// Request validation: each parse_* checks a stallmon.v1 request and turns it into the plain
// parameters the service uses, with the documented defaults applied. A bad field gives
// INVALID_ARGUMENT with a message naming it ("window: must be positive, at most 3600 s"), so a
// control plane can tell its own bug from the daemon's. NOT_FOUND is decided later, by the
// service, against the domains actually watched.
#pragma once

#include <grpcpp/support/status.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "stallmon/diagnosis/engine.h"
#include "stallmon/v1/stallmon.pb.h"

namespace stallmon::server {

// Limits, also quoted in the proto's comments.
inline constexpr size_t kMaxDomainNameBytes = 256;
inline constexpr int kMaxVcpuIndex = 4095;
inline constexpr std::chrono::seconds kDefaultHistoryWindow{60};
inline constexpr std::chrono::seconds kMaxHistoryWindow{3600};
inline constexpr int kDefaultHistorySamples = 600;
inline constexpr int kMaxHistorySamples = 100000;
inline constexpr int kDefaultFindingsLimit = 1000;
inline constexpr int kMaxFindingsLimit = 10000;
inline constexpr int kDefaultPrintkRecords = 20;
inline constexpr int kMaxPrintkRecords = 1000;
inline constexpr std::chrono::seconds kDefaultInspectTimeout{5};
inline constexpr std::chrono::seconds kMaxInspectTimeout{60};
inline constexpr size_t kMaxFindingIdBytes = 512;
inline constexpr int kMaxIncidentPoints = 100000;

// A domain given by name or uuid: non-empty (unless optional), at most 256 bytes, valid UTF-8,
// no control characters. `field` names it in the error.
grpc::Status check_domain(const std::string& domain, const char* field, bool required);

grpc::Status parse(const v1::GetDomainRequest& req, std::string* domain);

struct HistoryParams {
  std::string domain;
  std::vector<int> vcpus;  // empty: all
  std::chrono::nanoseconds window{kDefaultHistoryWindow};
  size_t max_samples = kDefaultHistorySamples;
};
grpc::Status parse(const v1::GetVcpuHistoryRequest& req, HistoryParams* out);

enum class StateFilter { kAny, kActive, kResolved };
struct FindingsParams {
  diagnosis::FindingQuery query;  // domain, kinds, active_only, since; limit already applied
  StateFilter state = StateFilter::kAny;
  size_t limit = kDefaultFindingsLimit;
};
grpc::Status parse(const v1::ListFindingsRequest& req, FindingsParams* out);

struct WatchParams {
  std::string domain;  // empty: all
  std::vector<diagnosis::FindingKind> kinds;  // empty: all
  uint64_t after_revision = 0;
  uint64_t incarnation = 0;  // 0: not checked
};
grpc::Status parse(const v1::WatchFindingsRequest& req, WatchParams* out);

struct InspectParams {
  std::string domain;
  int printk_records = kDefaultPrintkRecords;
  std::chrono::milliseconds timeout{kDefaultInspectTimeout};
  bool include_json = false;
};
grpc::Status parse(const v1::InspectDomainRequest& req, InspectParams* out);

struct IncidentParams {
  std::string finding_id;
  size_t max_points = 0;  // per lane; 0: all
};
grpc::Status parse(const v1::GetIncidentRequest& req, IncidentParams* out);

}  // namespace stallmon::server
