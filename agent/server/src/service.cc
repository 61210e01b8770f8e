// SPDX-License-Identifier: Apache-2.0
#include "stallmon/server/service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <ctime>
#include <map>
#include <optional>

#include "stallmon/server/convert.h"
#include "stallmon/server/validate.h"

namespace stallmon::server {
namespace {

using std::chrono::steady_clock;

bool matches(const diagnosis::Finding& f, const WatchParams& p) {
  if (!p.domain.empty() && f.domain != p.domain && f.domain_uuid != p.domain) return false;
  if (!p.kinds.empty() && std::find(p.kinds.begin(), p.kinds.end(), f.kind) == p.kinds.end()) return false;
  return true;
}

v1::Severity max_severity(v1::Severity a, v1::Severity b) { return a > b ? a : b; }

// Decrements the watcher count however the stream ends.
struct WatcherSlot {
  std::atomic<int>& n;
  ~WatcherSlot() { n.fetch_sub(1); }
};

}  // namespace

grpc::Status to_grpc_status(const Error& e) {
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  switch (e.code) {
    case ErrorCode::kInvalidArgument: code = grpc::StatusCode::INVALID_ARGUMENT; break;
    case ErrorCode::kNotFound: code = grpc::StatusCode::NOT_FOUND; break;
    case ErrorCode::kUnsupported: code = grpc::StatusCode::FAILED_PRECONDITION; break;
    case ErrorCode::kTimeout: code = grpc::StatusCode::DEADLINE_EXCEEDED; break;
    case ErrorCode::kLimit:
    case ErrorCode::kOverBudget: code = grpc::StatusCode::RESOURCE_EXHAUSTED; break;
    case ErrorCode::kUnmapped:
    case ErrorCode::kCorrupt:
    case ErrorCode::kIo: code = grpc::StatusCode::UNAVAILABLE; break;
    case ErrorCode::kInternal: code = grpc::StatusCode::INTERNAL; break;
  }
  return grpc::Status(code, sanitize_utf8(e.message));
}

StallmonService::StallmonService(Backend& backend, FindingFeed& feed, ServiceOptions options)
    : backend_(backend), feed_(feed), options_(options), inspects_(options.max_inspect_in_flight) {}

std::string StallmonService::flight_key(const std::string& name_or_uuid) const {
  for (const auto& d : backend_.domains()) {
    if (d.name == name_or_uuid || (!d.uuid.empty() && d.uuid == name_or_uuid)) {
      return d.uuid.empty() ? d.name : d.uuid;
    }
  }
  return name_or_uuid;
}

std::map<std::string, v1::Severity> StallmonService::worst_severities() const {
  diagnosis::FindingQuery q;
  q.active_only = true;
  q.limit = SIZE_MAX;
  std::map<std::string, v1::Severity> out;
  for (const auto& f : backend_.list_findings(q)) {
    auto s = to_proto(f.severity);
    for (const auto& key : {f.domain_uuid, f.domain}) {
      if (key.empty()) continue;
      auto& w = out[key];
      w = max_severity(w, s);
    }
  }
  return out;
}

static v1::Severity lookup(const std::map<std::string, v1::Severity>& m, const core::DomainSummary& d) {
  auto it = m.find(d.uuid.empty() ? d.name : d.uuid);
  if (it == m.end()) it = m.find(d.name);
  return it == m.end() ? v1::SEVERITY_UNSPECIFIED : it->second;
}

grpc::Status StallmonService::GetAgentInfo(grpc::ServerContext*, const v1::GetAgentInfoRequest*,
                                           v1::AgentInfo* resp) {
  auto a = backend_.agent();
  resp->set_version(a.version);
  resp->set_hostname(sanitize_utf8(a.hostname));
  resp->set_libvirt_uri(sanitize_utf8(a.libvirt_uri));
  resp->set_libvirt_connected(a.libvirt_connected);
  resp->set_libvirt_error(sanitize_utf8(a.libvirt_error));
  to_proto(a.started_at, resp->mutable_started_at());
  resp->set_effective_config(sanitize_utf8(a.effective_config));
  resp->set_api_version("stallmon.v1");
  resp->set_incarnation(options_.incarnation);
  resp->set_revision(backend_.revision());
  resp->set_sampling_alive(a.sampling_alive);
  to_proto(a.sampling_interval, resp->mutable_sampling_interval());
  resp->set_ticks(a.ticks);
  resp->set_thread_stats_source(sanitize_utf8(a.thread_stats_source));
  resp->set_thread_stats_reason(sanitize_utf8(a.thread_stats_reason));
  resp->set_thread_stats_passes(a.thread_stats_passes);
  resp->set_thread_stats_fallbacks(a.thread_stats_fallbacks);
  for (const auto& d : backend_.domains()) to_proto(d, resp->add_domains());
  return grpc::Status::OK;
}

grpc::Status StallmonService::ListDomains(grpc::ServerContext*, const v1::ListDomainsRequest*,
                                          v1::ListDomainsResponse* resp) {
  auto worst = worst_severities();
  for (const auto& d : backend_.domains()) to_proto(d, lookup(worst, d), resp->add_domains());
  return grpc::Status::OK;
}

grpc::Status StallmonService::GetDomain(grpc::ServerContext*, const v1::GetDomainRequest* req, v1::Domain* resp) {
  std::string domain;
  if (auto st = parse(*req, &domain); !st.ok()) return st;
  auto d = backend_.domain(domain);
  if (!d.ok()) return to_grpc_status(d.error());
  to_proto(*d, lookup(worst_severities(), d->summary), resp);
  return grpc::Status::OK;
}

grpc::Status StallmonService::GetVcpuHistory(grpc::ServerContext*, const v1::GetVcpuHistoryRequest* req,
                                             v1::GetVcpuHistoryResponse* resp) {
  HistoryParams p;
  if (auto st = parse(*req, &p); !st.ok()) return st;
  auto d = backend_.domain(p.domain);
  if (!d.ok()) return to_grpc_status(d.error());
  std::vector<int> vcpus = p.vcpus;
  if (vcpus.empty()) {
    for (const auto& v : d->vcpus) vcpus.push_back(v.index);
  }
  for (int v : vcpus) {
    // The uuid, not the name: the domain could be redefined under the same name meanwhile.
    auto h = backend_.vcpu_history(d->summary.uuid.empty() ? p.domain : d->summary.uuid, v, p.window);
    if (!h.ok()) {
      if (h.error().code == ErrorCode::kNotFound) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND,
                            "vcpus: domain '" + sanitize_utf8(d->summary.name) + "' has no vCPU " +
                                std::to_string(v) + " (it has " + std::to_string(d->vcpus.size()) + ")");
      }
      return to_grpc_status(h.error());
    }
    to_proto(*h, p.max_samples, resp->add_vcpus());
  }
  to_proto(p.window, resp->mutable_window());
  return grpc::Status::OK;
}

grpc::Status StallmonService::ListFindings(grpc::ServerContext*, const v1::ListFindingsRequest* req,
                                           v1::ListFindingsResponse* resp) {
  FindingsParams p;
  if (auto st = parse(*req, &p); !st.ok()) return st;
  // Read the revision first: findings listed after it are at least that recent, so a watcher
  // resuming from it may see an event again but never misses one.
  resp->set_revision(backend_.revision());
  resp->set_incarnation(options_.incarnation);
  size_t n = 0;
  for (const auto& f : backend_.list_findings(p.query)) {
    if (p.state == StateFilter::kResolved && f.active) continue;
    if (n++ >= p.limit) break;
    to_proto(f, resp->add_findings());
  }
  return grpc::Status::OK;
}

grpc::Status StallmonService::WatchFindings(grpc::ServerContext* ctx, const v1::WatchFindingsRequest* req,
                                            grpc::ServerWriter<v1::FindingEvent>* writer) {
  WatchParams p;
  if (auto st = parse(*req, &p); !st.ok()) return st;
  if (watchers_.fetch_add(1) >= options_.max_watchers) {
    watchers_.fetch_sub(1);
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "too many WatchFindings streams (max " + std::to_string(options_.max_watchers) + ")");
  }
  WatcherSlot slot{watchers_};
  const uint64_t inc = options_.incarnation;

  auto marker = [&](v1::FindingEvent::Type type, uint64_t rev) {
    v1::FindingEvent e;
    e.set_type(type);
    e.set_revision(rev);
    e.set_incarnation(inc);
    return writer->Write(e);
  };
  // The active findings as CURRENT events; returns the revision they are as of, or 0 if the
  // client went away.
  auto send_current = [&]() -> std::optional<uint64_t> {
    // Revision first (see ListFindings): events after it may repeat what CURRENT shows.
    uint64_t rev = backend_.revision();
    diagnosis::FindingQuery q;
    q.active_only = true;
    q.limit = SIZE_MAX;
    for (const auto& f : backend_.list_findings(q)) {
      if (!matches(f, p)) continue;
      v1::FindingEvent e;
      e.set_type(v1::FindingEvent::CURRENT);
      e.set_revision(rev);
      e.set_incarnation(inc);
      to_proto(f, e.mutable_finding());
      if (!writer->Write(e)) return std::nullopt;
    }
    return rev;
  };

  uint64_t rev = p.after_revision;
  bool resync = false;
  if (rev != 0) {
    auto probe = backend_.events_since(rev);
    resync = (p.incarnation != 0 && p.incarnation != inc) || !probe.complete || rev > probe.revision;
  }
  if (rev == 0 || resync) {
    if (resync && !marker(v1::FindingEvent::RESYNC, backend_.revision())) return grpc::Status::CANCELLED;
    auto r = send_current();
    if (!r) return grpc::Status::CANCELLED;
    rev = *r;
  }

  bool synced = false;
  for (;;) {
    auto ev = backend_.events_since(rev);
    if (!ev.complete) {
      // This stream fell behind the engine's bounded log: start over from the current state.
      spdlog::warn("WatchFindings {}: fell behind the event log at revision {}; resyncing", ctx->peer(), rev);
      if (!marker(v1::FindingEvent::RESYNC, ev.revision)) return grpc::Status::CANCELLED;
      auto r = send_current();
      if (!r) return grpc::Status::CANCELLED;
      rev = *r;
      continue;
    }
    for (const auto& e : ev.events) {
      if (e.revision <= rev) continue;
      rev = e.revision;
      if (!matches(e.finding, p)) continue;
      v1::FindingEvent out;
      to_proto(e, inc, &out);
      if (!writer->Write(out)) return grpc::Status::CANCELLED;
    }
    rev = std::max(rev, ev.revision);
    if (!synced) {
      if (!marker(v1::FindingEvent::SYNCED, rev)) return grpc::Status::CANCELLED;
      synced = true;
    }
    // Wake on new events, on shutdown, or periodically to notice a cancelled client (the sync
    // API has no cancellation callback) and the client's own deadline.
    auto until = steady_clock::now() + options_.watch_poll;
    // The client's own deadline, if sooner (gRPC cancels the call then; we notice at once).
    auto left = ctx->deadline() - std::chrono::system_clock::now();
    if (left < options_.watch_poll) until = steady_clock::now() + std::max(left, decltype(left)::zero());
    auto wake = feed_.wait(rev, until);
    if (wake == FindingFeed::Wake::kShutdown) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "stallmond is shutting down");
    }
    if (ctx->IsCancelled()) return grpc::Status::CANCELLED;
  }
}

grpc::Status StallmonService::InspectDomain(grpc::ServerContext* ctx, const v1::InspectDomainRequest* req,
                                            v1::InspectDomainResponse* resp) {
  InspectParams p;
  if (auto st = parse(*req, &p); !st.ok()) return st;
  // Never wait past the client's own deadline.
  auto timeout = p.timeout;
  auto deadline = ctx->deadline();
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::system_clock::now());
  if (left < timeout) timeout = std::max(std::chrono::milliseconds(1), left);
  // One guest read per domain at a time; a call that arrives meanwhile shares it.
  auto shared = inspects_.run(flight_key(p.domain), timeout, [&] { return backend_.inspect(p.domain, timeout); });
  const Result<core::InspectResult>& r = *shared;
  if (!r.ok()) return to_grpc_status(r.error());

  InspectExtras x;
  x.domain = r->domain_name;
  x.domain_uuid = r->domain_uuid;
  x.kernel_release = r->kernel_release;
  x.printk_records = p.printk_records;
  x.include_json = p.include_json;
  diagnosis::FindingQuery q;
  q.domain = r->domain_uuid.empty() ? r->domain_name : r->domain_uuid;
  q.active_only = true;
  q.limit = SIZE_MAX;
  x.active_findings = backend_.list_findings(q);
  timespec mono{};
  clock_gettime(CLOCK_MONOTONIC, &mono);
  x.wall_now = std::chrono::system_clock::now();
  x.monotonic_now_ns = static_cast<uint64_t>(mono.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(mono.tv_nsec);
  to_proto(r->snapshot, x, resp);
  // The core stamps the result on the engine's clock; prefer it over the monotonic mapping.
  to_proto(r->taken_at, resp->mutable_taken_at());
  return grpc::Status::OK;
}

grpc::Status StallmonService::GetIncident(grpc::ServerContext*, const v1::GetIncidentRequest* req,
                                          v1::Incident* resp) {
  IncidentParams p;
  if (auto st = parse(*req, &p); !st.ok()) return st;
  auto b = backend_.incident(p.finding_id);
  if (!b.ok()) return to_grpc_status(b.error());
  to_proto(*b, p.max_points, resp);
  return grpc::Status::OK;
}

}  // namespace stallmon::server
