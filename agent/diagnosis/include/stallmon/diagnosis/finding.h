// SPDX-License-Identifier: Apache-2.0
// The diagnosis engine's output. Mirrors stallmon.v1.Finding / FindingEvent field for field
// (enum values are the proto's numbers), so the gRPC adapter is a copy.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "stallmon/diagnosis/observation.h"
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

// Typed evidence: what consumers (the gRPC adapter's wait graph, alerts, tests) read as values.
// evidence_facts() renders them, with `facts`, into the API's string map: the one place they
// become text.

// A csd wait: CPU waiter_cpu spins in csd_lock_wait() until CPU target_cpu runs `function`.
struct CsdWaitEvidence {
  int waiter_cpu = -1;
  int target_cpu = -1;
  Duration age{0};       // how long the wait has been seen (a lower bound)
  std::string function;  // the called function's symbol; empty if unknown
  uint64_t csd_address = 0;
  uint64_t csd_flags = 0;
};

// A CPU spinning in a spinlock slow path, and what is known of the lock's holder.
struct LockWaitEvidence {
  int waiter_cpu = -1;
  std::string frame;                   // the slow-path frame of the waiter's kernel trace
  std::optional<int> holder_cpu;       // when it could be inferred
  std::vector<int> holder_candidates;  // the CPUs that could hold it, sorted
  std::string inference;               // how the holder was (or could not be) inferred
};

// The root(s) of a wait graph component and the CPUs that wait on them.
struct WaitRootsEvidence {
  std::vector<int> roots;    // sorted
  std::vector<int> waiters;  // every CPU whose waits lead to the roots
  bool cycle = false;        // the roots wait on each other
};

// A guest CPU's kernel trace (its CPU is Evidence::cpu): the frames, or the error.
struct KernelTraceEvidence {
  KernelTrace trace;
  Duration age{0};  // since the daemon read it, as of the finding's tick
  // Confirmed across successive snapshots: the outermost `stable_frames` frames of `trace` were
  // the outer frames of every one of the `stable_snapshots` consecutive trace reads of the same
  // task (this one included), all verified (ORC chain or interrupt frame). 0 and 0 when nothing
  // is confirmed: the first read, another task, an unverified trace or an error, or no outer
  // frame shared with the previous read. Says the chain is consistent, not that the CPU has not
  // moved (the innermost frames may change between reads); the verification mark is unchanged.
  std::size_t stable_frames = 0;
  int stable_snapshots = 0;
};

// A kernel stack overflow the panic text of a GUEST_PANIC names.
struct StackOverflowEvidence {
  std::optional<int> cpu;  // the overflowing CPU: the oops header's, else the panicking one
  std::optional<int> pid;  // the task, when the text names it
  std::string comm;        // empty when the text names none
};

// The oops/panic text of a GUEST_PANIC.
struct PanicTextEvidence {
  std::size_t lines = 0;
  std::string message;  // "Kernel panic - not syncing: ..."; empty if the text has none
};

struct Evidence {
  std::string text;                          // one human-readable link of the chain
  std::optional<int> cpu;                    // the guest CPU this link is about
  std::optional<int> vcpu;                   // the vCPU whose host thread this link is about
  std::optional<CsdWaitEvidence> csd_wait;
  std::optional<LockWaitEvidence> lock_wait;
  std::optional<WaitRootsEvidence> wait_roots;
  std::optional<KernelTraceEvidence> kernel_trace;
  std::optional<PanicTextEvidence> panic_text;
  std::optional<StackOverflowEvidence> stack_overflow;
  // Ages and spans of this link by name ("unchanged" for an hrtimer count that stands still);
  // the API shows each as "<name>_ms".
  std::map<std::string, Duration> durations;
  // The link's other facts (counters, names, flags), already in their API form.
  std::map<std::string, std::string> facts;
  std::vector<std::string> host_stack;       // innermost first
};

// The link's facts as the API shows them (stallmon.v1.Evidence.facts): `facts` with the typed
// fields rendered under their stable keys ("waiter_cpu", "wait_ms", "trace", ...).
std::map<std::string, std::string> evidence_facts(const Evidence& e);

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
  // The engine's key of the condition ("<domain key>|<KIND>|<rule key>"): what a persistent
  // store keeps so that a restored active finding is continued under it. Not in the API.
  std::string condition_key;
};
const char* to_string(FindingEvent::Type t);

// Whether findings of this kind carry a kernel trace (KernelTrace, observation.h) of each of
// their CPUs as evidence: the kinds whose CPUs are stuck somewhere in the guest kernel. The
// daemon traces exactly the CPUs of active findings of these kinds.
bool carries_kernel_traces(FindingKind k);

}  // namespace stallmon::diagnosis
