// SPDX-License-Identifier: Apache-2.0
// The diagnosis engine's output. Mirrors stallmon.v1.Finding / FindingEvent field for field
// (enum values are the proto's numbers), so the gRPC adapter is a copy.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "stallmon/diagnosis/time.h"

namespace stallmon::diagnosis {

enum class FindingKind {
  kUnspecified = 0,
  kVcpuHostBlocked = 1,
  kVcpuHostStarved = 2,
  kGuestIpiStall = 3,
  kGuestIdleWithPendingWork = 4,
  kGuestSoftlockupImminent = 5,
  kGuestSoftlockup = 6,
  kGuestIrqsOff = 7,
  kGuestPanic = 8,
  kHostMonitorUnresponsive = 9,
  kVmWideStall = 10,
  kGuestStackOverflow = 11,
};
const char* to_string(FindingKind k);  // the proto name: "GUEST_IPI_STALL"

enum class Severity { kUnspecified = 0, kInfo = 1, kWarning = 2, kCritical = 3 };
const char* to_string(Severity s);

enum class Cause {
  kUnspecified = 0,
  kHostBlocked = 1,
  kHostStarved = 2,
  kGuestIrqsOff = 3,
  kGuestOther = 4,
  kUnknown = 5,
};
const char* to_string(Cause c);

struct Evidence {
  std::string text;                          // one human-readable link of the chain
  std::map<std::string, std::string> facts;  // the same link, structured
  std::vector<std::string> host_stack;       // innermost first
};

struct Finding {
  std::string id;  // stable for the life of the condition; a recurrence gets a new id
  FindingKind kind = FindingKind::kUnspecified;
  Severity severity = Severity::kUnspecified;
  Cause cause = Cause::kUnspecified;
  std::string domain;
  std::string domain_uuid;
  std::vector<int> cpus;  // guest CPUs (== vCPU indexes) involved, sorted
  // When the condition began, as best the evidence dates it (e.g. when the thread was first
  // seen without run progress). Earlier than opened_at by at least the rule's threshold.
  Timestamp onset{};
  Timestamp opened_at{};    // when the engine raised it
  Timestamp last_update{};  // the last tick that confirmed it
  std::optional<Timestamp> resolved_at;
  bool active = true;
  Duration duration{0};  // last_update (or resolved_at) - onset
  std::string summary;
  std::vector<Evidence> evidence;
  // Time until the guest's own soft-lockup report; unset when the guest cannot report
  // (its vCPU does not run, or its interrupts are off) or the kind has no prediction.
  std::optional<Duration> predicted_guest_report_in;
  // The id of a finding that explains this one (a VM_WIDE_STALL, or the IPI stall whose root
  // holds this CPU up); empty if none.
  std::string explained_by;

  // Incidents: findings that share a root cause. Following explained_by to its end gives the
  // incident's root finding; incident_id is that root's id (== id for the root itself). It
  // keeps naming a root that has resolved while this symptom winds down.
  std::string incident_id;
  // On a root: the ids of the active findings of its incident (its symptoms), sorted; empty on
  // a symptom.
  std::vector<std::string> symptom_ids;
  // How often the condition ended and came back within its kind's recurrence hold and was
  // continued as this finding (0: it never stopped).
  uint32_t recurrences = 0;
  // The evidence does not decide the cause yet (e.g. the vCPU is throttled or its steal is
  // rising, and the starvation window has not closed): cause is kUnknown and will be updated in
  // place (an UPDATED event) once it is certain. The summary says "Cause: undetermined,
  // evaluating."
  bool cause_evaluating = false;

  bool is_incident_root() const { return incident_id.empty() || incident_id == id; }
};

struct FindingEvent {
  enum class Type { kUnspecified = 0, kOpened = 1, kUpdated = 2, kResolved = 3 };
  Type type = Type::kUnspecified;
  uint64_t revision = 0;  // strictly increasing over the engine's life, starting at 1
  Finding finding;        // the finding as of this event
};
const char* to_string(FindingEvent::Type t);

// Whether findings of this kind carry a kernel trace (KernelTrace, observation.h) of each of
// their CPUs as evidence: the kinds whose CPUs are stuck somewhere in the guest kernel. The
// daemon traces exactly the CPUs of active findings of these kinds.
bool carries_kernel_traces(FindingKind k);

}  // namespace stallmon::diagnosis
