// SPDX-License-Identifier: Apache-2.0
#include "stallmon/alerting/alerts.h"

#include <cctype>
#include <ctime>

#include <nlohmann/json.hpp>

#include "stallmon/alerting/exposition.h"
#include "stallmon/base/utf8.h"

namespace stallmon::alerting {

namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Cut to at most `max` bytes on a UTF-8 boundary, marking the cut.
std::string cut(std::string s, size_t max) {
  if (s.size() <= max) return s;
  size_t n = max > 3 ? max - 3 : 0;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  s.resize(n);
  return s + "...";
}

// Valid UTF-8 for JSON: nlohmann throws on invalid UTF-8 at dump time.
std::string utf8(const std::string& s) { return sanitize_utf8(s); }

}  // namespace

std::string kind_label(diagnosis::FindingKind k) { return diagnosis::to_string(k); }

std::string severity_label(diagnosis::Severity s) {
  switch (s) {
    case diagnosis::Severity::kCritical: return "critical";
    case diagnosis::Severity::kWarning: return "warning";
    case diagnosis::Severity::kInfo: return "info";
    case diagnosis::Severity::kUnspecified: break;
  }
  return "unspecified";
}

std::string cause_label(diagnosis::Cause c) {
  std::string s = lower(diagnosis::to_string(c));
  if (s.rfind("cause_", 0) == 0) s = s.substr(6);
  return s;
}

std::string alertname_for(diagnosis::FindingKind k) {
  std::string out = "Stallmon";
  bool up = true;
  for (char c : std::string(diagnosis::to_string(k))) {
    if (c == '_') {
      up = true;
      continue;
    }
    out += up ? c : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    up = false;
  }
  return out;
}

std::string format_rfc3339(diagnosis::Timestamp t) {
  using namespace std::chrono;
  const auto ms = duration_cast<milliseconds>(t.time_since_epoch()).count();
  const time_t secs = static_cast<time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  const int frac = static_cast<int>(ms - static_cast<int64_t>(secs) * 1000);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  char buf[64];
  snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
  return buf;
}

PostableAlert alert_from_finding(const diagnosis::Finding& f, const AlertOptions& options,
                                 std::optional<diagnosis::Timestamp> ends_at) {
  PostableAlert a;
  std::string cpus;
  for (int c : f.cpus) cpus += (cpus.empty() ? "" : ",") + std::to_string(c);
  a.labels = {
      {"alertname", alertname_for(f.kind)},
      {"host", utf8(options.host)},
      {"domain", utf8(f.domain)},
      {"kind", kind_label(f.kind)},
      {"severity", severity_label(f.severity)},
      {"cause", cause_label(f.cause)},
      {"finding_id", utf8(f.id)},
      {"source", "stallmond"},
  };
  if (!cpus.empty()) a.labels["cpus"] = cpus;
  a.annotations["summary"] = cut(utf8(f.summary), options.max_annotation_bytes);
  std::string ev;
  for (size_t i = 0; i < f.evidence.size() && i < options.max_evidence_lines; ++i) {
    ev += (ev.empty() ? "" : "\n") + f.evidence[i].text;
  }
  if (f.evidence.size() > options.max_evidence_lines) {
    ev += "\n(" + std::to_string(f.evidence.size() - options.max_evidence_lines) + " more)";
  }
  a.annotations["evidence"] = cut(utf8(ev), options.max_annotation_bytes);
  // A panic's own words ("Kernel panic - not syncing: Fatal exception"), whatever the evidence
  // lines above were cut to.
  for (const auto& e : f.evidence)
    if (e.panic_text && !e.panic_text->message.empty())
      a.annotations["panic_message"] = cut(utf8(e.panic_text->message), options.max_annotation_bytes);
  a.annotations["onset"] = format_rfc3339(f.onset);
  if (!f.explained_by.empty()) a.annotations["explained_by"] = utf8(f.explained_by);
  if (!f.incident_id.empty()) {
    a.labels["incident_role"] = f.is_incident_root() ? "root" : "symptom";
    a.annotations["incident_id"] = utf8(f.incident_id);
  }
  if (f.recurrences > 0) a.annotations["recurrences"] = std::to_string(f.recurrences);
  if (f.cause_evaluating) a.annotations["cause_evaluating"] = "true";
  a.starts_at = f.onset;
  a.ends_at = ends_at;
  a.generator_url = options.generator_url;
  return a;
}

std::string alerts_to_json(const std::vector<PostableAlert>& alerts) {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& a : alerts) {
    nlohmann::json j;
    j["labels"] = a.labels;
    j["annotations"] = a.annotations;
    j["startsAt"] = format_rfc3339(a.starts_at);
    if (a.ends_at) j["endsAt"] = format_rfc3339(*a.ends_at);
    if (!a.generator_url.empty()) j["generatorURL"] = a.generator_url;
    arr.push_back(std::move(j));
  }
  // Replace rather than throw on any byte that slipped through as invalid UTF-8.
  return arr.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace stallmon::alerting
