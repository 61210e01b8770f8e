// SPDX-License-Identifier: Apache-2.0
// StallmonService: the stallmon.v1.Stallmon gRPC service on top of a Backend. Validates every
// request (validate.h), maps backend errors to gRPC codes (kNotFound → NOT_FOUND, kUnsupported
// → FAILED_PRECONDITION, kTimeout → DEADLINE_EXCEEDED), and adapts results (convert.h).
//
// Uses gRPC's synchronous API: each WatchFindings stream holds one server thread while it is
// open, so the number of concurrent watchers is capped (RESOURCE_EXHAUSTED beyond).
// InspectDomain goes through InspectFlights: one guest read per domain at a time, shared by
// the calls that arrive meanwhile, and at most max_inspect_in_flight reads at once.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "stallmon/server/backend.h"
#include "stallmon/server/finding_feed.h"
#include "stallmon/server/inspect_flights.h"
#include "stallmon/v1/stallmon.grpc.pb.h"

namespace stallmon::server {

struct ServiceOptions {
  uint64_t incarnation = 1;  // AgentInfo.incarnation: changes on every daemon start
  int max_watchers = 64;
  int max_inspect_in_flight = 2;  // distinct guest reads of InspectDomain at once
  // How often a waiting WatchFindings stream checks for client cancellation even without events.
  std::chrono::milliseconds watch_poll{1000};
};

grpc::Status to_grpc_status(const Error& error);

class StallmonService final : public v1::Stallmon::Service {
 public:
  // `backend` and `feed` must outlive the service. The feed must be registered as a finding
  // listener of the backend (GrpcServer does both).
  StallmonService(Backend& backend, FindingFeed& feed, ServiceOptions options);

  grpc::Status GetAgentInfo(grpc::ServerContext* ctx, const v1::GetAgentInfoRequest* req,
                            v1::AgentInfo* resp) override;
  grpc::Status ListDomains(grpc::ServerContext* ctx, const v1::ListDomainsRequest* req,
                           v1::ListDomainsResponse* resp) override;
  grpc::Status GetDomain(grpc::ServerContext* ctx, const v1::GetDomainRequest* req, v1::Domain* resp) override;
  grpc::Status GetVcpuHistory(grpc::ServerContext* ctx, const v1::GetVcpuHistoryRequest* req,
                              v1::GetVcpuHistoryResponse* resp) override;
  grpc::Status ListFindings(grpc::ServerContext* ctx, const v1::ListFindingsRequest* req,
                            v1::ListFindingsResponse* resp) override;
  grpc::Status WatchFindings(grpc::ServerContext* ctx, const v1::WatchFindingsRequest* req,
                             grpc::ServerWriter<v1::FindingEvent>* writer) override;
  grpc::Status InspectDomain(grpc::ServerContext* ctx, const v1::InspectDomainRequest* req,
                             v1::InspectDomainResponse* resp) override;
  grpc::Status GetIncident(grpc::ServerContext* ctx, const v1::GetIncidentRequest* req,
                           v1::Incident* resp) override;

  int active_watchers() const { return watchers_.load(); }
  int inspect_calls() const { return inspects_.calls(); }  // InspectDomain calls being served

 private:
  // The most severe active finding per domain (keyed by uuid and by name).
  std::map<std::string, v1::Severity> worst_severities() const;
  // The single-flight key of a domain named by name or uuid: its uuid when it is watched (a
  // call by name and one by uuid share a read), else what the caller gave.
  std::string flight_key(const std::string& name_or_uuid) const;

  Backend& backend_;
  FindingFeed& feed_;
  ServiceOptions options_;
  std::atomic<int> watchers_{0};
  InspectFlights inspects_;
};

}  // namespace stallmon::server
