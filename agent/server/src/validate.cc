// SPDX-License-Identifier: Apache-2.0
#include "stallmon/server/validate.h"

#include <set>

#include "stallmon/server/convert.h"

namespace stallmon::server {
namespace {

grpc::Status invalid(const std::string& field, const std::string& why) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, field + ": " + why);
}

// google.protobuf.Duration's own validity rules (seconds within +-10000 years, nanos within
// +-999999999 and of the same sign): a hand-built message can break them.
bool valid_duration(const google::protobuf::Duration& d) {
  constexpr int64_t kMax = 315'576'000'000;
  if (d.seconds() < -kMax || d.seconds() > kMax) return false;
  if (d.nanos() <= -1'000'000'000 || d.nanos() >= 1'000'000'000) return false;
  return !((d.seconds() > 0 && d.nanos() < 0) || (d.seconds() < 0 && d.nanos() > 0));
}

bool valid_timestamp(const google::protobuf::Timestamp& t) {
  // 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z
  return t.seconds() >= -62'135'596'800 && t.seconds() <= 253'402'300'799 && t.nanos() >= 0 &&
         t.nanos() < 1'000'000'000;
}

grpc::Status parse_kinds(const google::protobuf::RepeatedField<int>& kinds, const char* field,
                         std::vector<diagnosis::FindingKind>* out) {
  std::set<int> seen;
  for (int k : kinds) {
    if (!v1::FindingKind_IsValid(k) || k == v1::FINDING_KIND_UNSPECIFIED) {
      return invalid(field, "unknown finding kind " + std::to_string(k));
    }
    if (seen.insert(k).second) out->push_back(from_proto(static_cast<v1::FindingKind>(k)));
  }
  return grpc::Status::OK;
}

}  // namespace

grpc::Status check_domain(const std::string& domain, const char* field, bool required) {
  if (domain.empty()) {
    return required ? invalid(field, "required (a domain name or uuid)") : grpc::Status::OK;
  }
  if (domain.size() > kMaxDomainNameBytes) {
    return invalid(field, "longer than " + std::to_string(kMaxDomainNameBytes) + " bytes");
  }
  for (unsigned char c : domain) {
    if (c < 0x20 || c == 0x7f) return invalid(field, "contains a control character");
  }
  // proto3 strings are UTF-8 already when parsed by the C++ runtime; a client that skipped the
  // check is still answered clearly.
  if (sanitize_utf8(domain) != domain) return invalid(field, "not valid UTF-8");
  return grpc::Status::OK;
}

grpc::Status parse(const v1::GetDomainRequest& req, std::string* domain) {
  auto st = check_domain(req.domain(), "domain", true);
  if (st.ok()) *domain = req.domain();
  return st;
}

grpc::Status parse(const v1::GetVcpuHistoryRequest& req, HistoryParams* out) {
  if (auto st = check_domain(req.domain(), "domain", true); !st.ok()) return st;
  out->domain = req.domain();
  std::set<int> seen;
  for (int v : req.vcpus()) {
    if (v < 0 || v > kMaxVcpuIndex) {
      return invalid("vcpus", "vCPU index " + std::to_string(v) + " out of range 0.." + std::to_string(kMaxVcpuIndex));
    }
    if (seen.insert(v).second) out->vcpus.push_back(v);
  }
  if (req.has_window()) {
    if (!valid_duration(req.window())) return invalid("window", "not a valid duration");
    auto w = from_proto(req.window());
    if (w <= std::chrono::nanoseconds(0) || w > kMaxHistoryWindow) {
      return invalid("window", "must be positive and at most " + std::to_string(kMaxHistoryWindow.count()) + " s");
    }
    out->window = w;
  }
  if (req.max_samples() < 0 || req.max_samples() > kMaxHistorySamples) {
    return invalid("max_samples", "must be 0 (default " + std::to_string(kDefaultHistorySamples) + ") to " +
                                      std::to_string(kMaxHistorySamples));
  }
  out->max_samples = req.max_samples() == 0 ? kDefaultHistorySamples : static_cast<size_t>(req.max_samples());
  return grpc::Status::OK;
}

grpc::Status parse(const v1::ListFindingsRequest& req, FindingsParams* out) {
  if (auto st = check_domain(req.domain(), "domain", false); !st.ok()) return st;
  out->query.domain = req.domain();
  if (auto st = parse_kinds(req.kinds(), "kinds", &out->query.kinds); !st.ok()) return st;
  if (req.has_since()) {
    if (!valid_timestamp(req.since())) return invalid("since", "not a valid timestamp");
    out->query.since = from_proto(req.since());
  }
  if (req.limit() < 0 || req.limit() > kMaxFindingsLimit) {
    return invalid("limit", "must be 0 (default " + std::to_string(kDefaultFindingsLimit) + ") to " +
                                std::to_string(kMaxFindingsLimit));
  }
  out->limit = req.limit() == 0 ? kDefaultFindingsLimit : static_cast<size_t>(req.limit());
  switch (req.state()) {
    case v1::FINDING_STATE_FILTER_ANY: out->state = StateFilter::kAny; break;
    case v1::FINDING_STATE_FILTER_ACTIVE: out->state = StateFilter::kActive; break;
    case v1::FINDING_STATE_FILTER_RESOLVED: out->state = StateFilter::kResolved; break;
    default: return invalid("state", "unknown state filter " + std::to_string(req.state()));
  }
  out->query.active_only = out->state == StateFilter::kActive;
  // The engine lists active findings first: a resolved-only query must see past them, so the
  // limit is applied after filtering (see the service).
  out->query.limit = out->state == StateFilter::kResolved ? SIZE_MAX : out->limit;
  return grpc::Status::OK;
}

grpc::Status parse(const v1::WatchFindingsRequest& req, WatchParams* out) {
  if (auto st = check_domain(req.domain(), "domain", false); !st.ok()) return st;
  out->domain = req.domain();
  if (auto st = parse_kinds(req.kinds(), "kinds", &out->kinds); !st.ok()) return st;
  out->after_revision = req.after_revision();
  out->incarnation = req.incarnation();
  return grpc::Status::OK;
}

grpc::Status parse(const v1::GetIncidentRequest& req, IncidentParams* out) {
  const std::string& id = req.finding_id();
  if (id.empty()) return invalid("finding_id", "required (a finding id, as ListFindings shows it)");
  if (id.size() > kMaxFindingIdBytes) return invalid("finding_id", "longer than " + std::to_string(kMaxFindingIdBytes) + " bytes");
  for (unsigned char c : id) {
    if (c < 0x20 || c == 0x7f) return invalid("finding_id", "contains a control character");
  }
  if (sanitize_utf8(id) != id) return invalid("finding_id", "not valid UTF-8");
  if (req.max_points() < 0 || req.max_points() > kMaxIncidentPoints) {
    return invalid("max_points", "must be 0 (all) to " + std::to_string(kMaxIncidentPoints));
  }
  out->finding_id = id;
  out->max_points = static_cast<size_t>(req.max_points());
  return grpc::Status::OK;
}

grpc::Status parse(const v1::InspectDomainRequest& req, InspectParams* out) {
  if (auto st = check_domain(req.domain(), "domain", true); !st.ok()) return st;
  out->domain = req.domain();
  if (req.printk_records() < 0 || req.printk_records() > kMaxPrintkRecords) {
    return invalid("printk_records", "must be 0 (default " + std::to_string(kDefaultPrintkRecords) + ") to " +
                                         std::to_string(kMaxPrintkRecords));
  }
  out->printk_records = req.printk_records() == 0 ? kDefaultPrintkRecords : req.printk_records();
  if (req.has_timeout()) {
    if (!valid_duration(req.timeout())) return invalid("timeout", "not a valid duration");
    auto t = from_proto(req.timeout());
    if (t < std::chrono::nanoseconds(0) || t > kMaxInspectTimeout) {
      return invalid("timeout", "must be 0 (default " + std::to_string(kDefaultInspectTimeout.count()) +
                                    " s) to " + std::to_string(kMaxInspectTimeout.count()) + " s");
    }
    if (t > std::chrono::nanoseconds(0)) {
      out->timeout = std::max(std::chrono::milliseconds(1), std::chrono::duration_cast<std::chrono::milliseconds>(t));
    }
  }
  out->include_json = req.include_json();
  return grpc::Status::OK;
}

}  // namespace stallmon::server
