// SPDX-License-Identifier: Apache-2.0
// stallctl's human-readable rendering of stallmon.v1 messages: aligned tables, one fact per
// column, durations as an operator reads them ("850 ms", "1.4 s", "3 min 20 s"). Pure functions
// of the message (and "now" where an age is shown), so they are unit-tested.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "grpc/health/v1/health.pb.h"
#include "stallmon/v1/stallmon.pb.h"

namespace stallmon::server::client {

using Clock = std::chrono::system_clock;

// Columns padded to their widest cell; the last column is not padded.
std::string format_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows);

std::string human_duration(const google::protobuf::Duration& d);
std::string human_duration(std::chrono::nanoseconds d);
// "2026-11-21 07:41:02" in UTC ("-" when unset).
std::string human_time(const google::protobuf::Timestamp& t);
// "critical", "warning", "info", "-"
std::string severity_name(v1::Severity s);

std::string format_status(const v1::AgentInfo& info, const std::string& health, Clock::time_point now);
std::string format_domains(const v1::ListDomainsResponse& r);
std::string format_vcpus(const v1::Domain& d);
// One line per finding; with `evidence`, the causal chain under each.
std::string format_findings(const v1::ListFindingsResponse& r, bool evidence, Clock::time_point now);
// One line per event for `findings --watch`.
std::string format_event(const v1::FindingEvent& e);
std::string format_inspect(const v1::InspectDomainResponse& r);
// `stallctl incident ID`: the finding, its window, one line per vCPU lane and guest CPU lane
// (what each went through), the snapshots at onset and at the worst point, the host stacks, the
// related findings, the printk tail and what the daemon's bounds dropped.
std::string format_incident(const v1::Incident& r);

// proto3 JSON (field names as in the .proto), one object; pretty when `indent`.
std::string to_json(const google::protobuf::Message& m, bool indent = true);

}  // namespace stallmon::server::client
