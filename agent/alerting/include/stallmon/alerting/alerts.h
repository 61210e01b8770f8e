// SPDX-License-Identifier: Apache-2.0
// Findings as Alertmanager v2 alerts (`POST /api/v2/alerts`, a JSON array of postableAlert:
// labels, annotations, startsAt, endsAt, generatorURL). Pure functions: the pusher (pusher.h)
// decides when to send, the transport (http.h) how.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "stallmon/diagnosis/finding.h"
#include "stallmon/diagnosis/time.h"

namespace stallmon::alerting {

// Label values shared by /metrics and alerts, so a rule and a pushed alert say the same thing.
std::string kind_label(diagnosis::FindingKind k);    // "GUEST_IPI_STALL" (the proto name)
std::string severity_label(diagnosis::Severity s);   // "critical", "warning", "info", "unspecified"
std::string cause_label(diagnosis::Cause c);         // "host_blocked", ..., "unknown"
// "StallmonGuestIpiStall": one alertname per kind, so routes and silences can name a kind.
std::string alertname_for(diagnosis::FindingKind k);

struct AlertOptions {
  std::string host;           // label `host`: this hypervisor (default: gethostname())
  std::string generator_url;  // optional; a link for the operator (e.g. a dashboard)
  size_t max_evidence_lines = 12;
  size_t max_annotation_bytes = 4096;  // summary and evidence are each cut to this
};

struct PostableAlert {
  std::map<std::string, std::string> labels;
  std::map<std::string, std::string> annotations;
  diagnosis::Timestamp starts_at{};
  std::optional<diagnosis::Timestamp> ends_at;
  std::string generator_url;
};

// Labels: alertname, host, domain, kind, severity, cause, cpus ("0,2"), finding_id, and
// incident_role ("root" / "symptom") when the finding belongs to an incident. The id keeps two
// findings of one kind on one domain (vCPU 1 and vCPU 3 blocked) apart: Alertmanager identifies
// an alert by its label set. Annotations: summary, evidence (one line per link), onset,
// explained_by (when set), incident_id, recurrences (when > 0), cause_evaluating ("true" while
// the cause is undetermined). startsAt = onset; endsAt as given.
PostableAlert alert_from_finding(const diagnosis::Finding& f, const AlertOptions& options,
                                 std::optional<diagnosis::Timestamp> ends_at);

// RFC 3339 with milliseconds, UTC: "2026-11-21T07:40:12.345Z".
std::string format_rfc3339(diagnosis::Timestamp t);
// The request body: a JSON array of postableAlert.
std::string alerts_to_json(const std::vector<PostableAlert>& alerts);

}  // namespace stallmon::alerting
